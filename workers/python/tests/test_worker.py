"""The worker against a real redis-server, with jobs added by the engine's own
``enqueue.lua``: everything of the protocol that does not need the engine itself
(that is in ``test_e2e.py``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio

from conftest import Enqueuer, RedisServer, completion_records, default_lane, eventually, running_worker
from dagflow_worker import Fatal, Job, Retryable, Worker
from dagflow_worker.protocol import Keys


async def echo(job: Job) -> Any:
    return {"data": job.data, "parents": job.parents, "id": job.id, "attempt": job.attempt}


async def outcomes(client: redis.asyncio.Redis, keys: Keys, final_only: bool = True) -> dict[str, Any]:
    """The outcome of each job id on P:completions (final ones, or the list of all)."""
    out: dict[str, Any] = {}
    for rec in await completion_records(client, keys):
        if final_only:
            if rec["outcome"]["kind"] in ("completed", "failed"):
                out[rec["job"]] = rec["outcome"]
        else:
            out.setdefault(rec["job"], []).append(rec["outcome"])
    return out


async def test_runs_a_job_and_reports_it_atomically(r: redis.asyncio.Redis, shared_redis: RedisServer,
                                                    prefix: str) -> None:
    keys = Keys(prefix)
    enq = Enqueuer(r, keys)
    env = enq.envelope("b", "echo", "py", data={"x": 1}, parents={"a": [1, 2]})
    await enq.add(env)
    worker = Worker(shared_redis.url, {"py": 2}, {"echo": echo}, prefix=prefix)
    async with running_worker(worker):
        done = await eventually(lambda: outcomes(r, keys), what="a completion record")
    assert done[env["id"]] == {"kind": "completed", "result": {
        "data": {"x": 1}, "parents": {"a": [1, 2]}, "id": env["id"], "attempt": 1}}
    records = await completion_records(r, keys)
    assert [rec["outcome"]["kind"] for rec in records] == ["started", "completed"]
    assert {k: records[1][k] for k in ("v", "flow", "node", "attempt", "job")} == {
        "v": "1", "flow": enq.flow_id, "node": "b", "attempt": "1", "job": env["id"]}
    # The final report removed the job from its lane and marked it done; take.lua
    # counted the take.
    assert await r.xlen(default_lane(keys, "py")) == 0
    assert await r.hget(keys.flow_jobs(enq.flow_id), "b:1") == b"done"
    pending = await r.xpending(default_lane(keys, "py"), "workers")
    assert pending["pending"] == 0
    assert await r.get(keys.takes("py")) == b"1"


async def test_map_elements_get_item_and_index(r: redis.asyncio.Redis, shared_redis: RedisServer,
                                              prefix: str) -> None:
    seen: dict[str, Any] = {}

    async def element(job: Job) -> Any:
        seen[job.node] = (job.item, job.index, job.data, job.parents)
        return {"item": job.item, "index": job.index}

    keys = Keys(prefix)
    enq = Enqueuer(r, keys)
    envs = [enq.envelope(name, "element", "py", data={"k": 1}, parents={"src": [7, None]})
            for name in ("el[0]", "el[1]", "plain")]
    envs[0]["input"].update(item=7, index=0)
    envs[1]["input"].update(item=None, index=1)
    await enq.add(*envs)
    worker = Worker(shared_redis.url, {"py": 4}, {"element": element}, prefix=prefix)
    async with running_worker(worker):
        done = await eventually(lambda: _at_least(outcomes(r, keys), 3), what="three outcomes")
    assert done[envs[0]["id"]] == {"kind": "completed", "result": {"item": 7, "index": 0}}
    assert done[envs[1]["id"]] == {"kind": "completed", "result": {"item": None, "index": 1}}
    assert done[envs[2]["id"]] == {"kind": "completed", "result": {"item": None, "index": None}}
    assert seen["el[0]"] == (7, 0, {"k": 1}, {"src": [7, None]})
    assert seen["el[1]"] == (None, 1, {"k": 1}, {"src": [7, None]})
    assert seen["plain"] == (None, None, {"k": 1}, {"src": [7, None]})


async def test_errors_map_to_retryable_or_not(r: redis.asyncio.Redis, shared_redis: RedisServer,
                                              prefix: str) -> None:
    async def fatal(job: Job) -> Any:
        raise Fatal("bad input")

    async def retry(job: Job) -> Any:
        raise Retryable("try later")

    async def other(job: Job) -> Any:
        raise KeyError("k")

    async def not_json(job: Job) -> Any:
        return {1, 2}

    def sync_handler(job: Job) -> Any:
        return job.data * 2

    keys = Keys(prefix)
    enq = Enqueuer(r, keys)
    envs = {n: enq.envelope(n, n, "py", data=21) for n in ("fatal", "retry", "other", "not_json", "sync", "missing")}
    await enq.add(*envs.values())
    handlers = {"fatal": fatal, "retry": retry, "other": other, "not_json": not_json, "sync": sync_handler}
    worker = Worker(shared_redis.url, {"py": 8}, handlers, prefix=prefix, consumer="c1")
    async with running_worker(worker):
        done = await eventually(lambda: _at_least(outcomes(r, keys), 6), what="six outcomes")
    assert done[envs["fatal"]["id"]] == {"kind": "failed", "message": "bad input", "retryable": False}
    assert done[envs["retry"]["id"]] == {"kind": "failed", "message": "try later", "retryable": True}
    assert done[envs["other"]["id"]] == {"kind": "failed", "message": "KeyError: 'k'", "retryable": True}
    assert done[envs["not_json"]["id"]]["retryable"] is False
    assert "not JSON" in done[envs["not_json"]["id"]]["message"]
    assert done[envs["sync"]["id"]] == {"kind": "completed", "result": 42}
    assert done[envs["missing"]["id"]] == {
        "kind": "failed", "retryable": False,
        "message": "no handler named 'missing' on worker c1 (queue 'py')"}


async def _at_least(aw: Any, n: int) -> Any:
    value = await aw
    return value if len(value) >= n else None


async def test_malformed_entries_are_removed_and_good_ones_run(r: redis.asyncio.Redis, shared_redis: RedisServer,
                                                               prefix: str) -> None:
    """Malformed entries are acknowledged and deleted on their own lane (here
    priority 7, new), ahead of which they are taken."""
    keys = Keys(prefix)
    stream = keys.lane("py", 7, True)
    await r.xgroup_create(stream, "workers", id="0", mkstream=True)
    bad_ids = [
        await r.xadd(stream, {"envelope": "{not json"}),
        await r.xadd(stream, {"other": "field"}),
        await r.xadd(stream, {"envelope": json.dumps({"v": 2, "id": "x"})}),
    ]
    enq = Enqueuer(r, keys)
    env = enq.envelope("a", "echo", "py")
    await enq.add(env)
    worker = Worker(shared_redis.url, {"py": 4}, {"echo": echo}, prefix=prefix)
    async with running_worker(worker):
        await eventually(lambda: outcomes(r, keys), what="the good job's outcome")
        await eventually(lambda: _is(r.xlen(stream), 0), what="an empty stream")
    assert (await r.xpending(stream, "workers"))["pending"] == 0
    for bad in bad_ids:
        assert await r.xrange(stream, bad, bad) == []
    assert await r.xlen(default_lane(keys, "py")) == 0


async def _is(aw: Any, expected: Any) -> bool:
    return bool(await aw == expected)


async def _true(value: bool) -> bool:
    return value


async def test_own_pending_jobs_run_first_after_a_restart(r: redis.asyncio.Redis, shared_redis: RedisServer,
                                                          prefix: str) -> None:
    """Jobs this consumer took before it died run at once when it comes back under
    the same name, long before the (30 s) lease would hand them to anyone: lane by
    lane, before any ready job, even one of a higher priority."""
    keys = Keys(prefix)
    order: list[str] = []

    async def record(job: Job) -> Any:
        order.append(job.node)
        return job.priority

    enq = Enqueuer(r, keys)
    low_new, low, high = (enq.envelope("low-new", "record", "py", priority=1),
                          enq.envelope("low", "record", "py", priority=3),
                          enq.envelope("high", "record", "py", priority=9))
    await enq.add(low_new, new=True)
    await enq.add(low)
    # The previous life of consumer "stable" took both and died.
    await r.xreadgroup("workers", "stable", {enq.lane(low_new, new=True): ">", enq.lane(low): ">"}, count=10)
    await enq.add(high)
    worker = Worker(shared_redis.url, {"py": 1}, {"record": record}, prefix=prefix, consumer="stable",
                    lease_ms=30_000)
    async with running_worker(worker):
        done = await eventually(lambda: _at_least(outcomes(r, keys), 3), timeout=5, what="three outcomes")
    assert order == ["low", "low-new", "high"], "own pending jobs first, in lane order"
    assert done[low["id"]] == {"kind": "completed", "result": 3}


async def test_reclaims_after_the_lease_and_fails_stalled_jobs(r: redis.asyncio.Redis, shared_redis: RedisServer,
                                                               prefix: str) -> None:
    keys = Keys(prefix)
    enq = Enqueuer(r, keys)
    again = enq.envelope("again", "echo", "py", max_stalled=1)
    stalled = enq.envelope("stalled", "echo", "py", max_stalled=0, priority=8)
    await enq.add(again)
    await enq.add(stalled, new=True)
    # A worker that died took both jobs, from two lanes.
    await r.xreadgroup("workers", "dead", {default_lane(keys, "py"): ">", enq.lane(stalled, new=True): ">"},
                       count=10)
    worker = Worker(shared_redis.url, {"py": 4}, {"echo": echo}, prefix=prefix, lease_ms=300)
    async with running_worker(worker):
        done = await eventually(lambda: _at_least(outcomes(r, keys), 2), what="two outcomes")
    assert done[again["id"]]["kind"] == "completed"
    assert done[stalled["id"]]["retryable"] is False
    assert done[stalled["id"]]["message"] == (
        "job stalled: claimed 1 times from workers that stopped responding, more than maxStalled 0 "
        "allows (lease 300 ms)")
    assert done[stalled["id"]]["cause"] == "stalled"
    assert worker.stats["reclaimed"] == 1 and worker.stats["stalled"] == 1
    for lane in (default_lane(keys, "py"), enq.lane(stalled, new=True)):
        assert (await r.xpending(lane, "workers"))["pending"] == 0
        assert await r.xlen(lane) == 0


async def test_leases_are_renewed_while_a_job_runs(r: redis.asyncio.Redis, shared_redis: RedisServer,
                                                   prefix: str) -> None:
    """A job running for four leases is never reclaimed by another worker."""
    keys = Keys(prefix)
    runs: list[str] = []

    async def long(job: Job) -> Any:
        runs.append(job.id)
        await asyncio.sleep(1.2)
        return "done"

    enq = Enqueuer(r, keys)
    await enq.add(enq.envelope("a", "long", "py", max_stalled=5))
    first = Worker(shared_redis.url, {"py": 1}, {"long": long}, prefix=prefix, lease_ms=300)
    second = Worker(shared_redis.url, {"py": 1}, {"long": long}, prefix=prefix, lease_ms=300)
    async with running_worker(first), running_worker(second):
        done = await eventually(lambda: outcomes(r, keys), what="the outcome")
        await asyncio.sleep(0.5)
    assert list(done.values()) == [{"kind": "completed", "result": "done"}]
    assert len(runs) == 1
    assert second.stats["reclaimed"] == 0 and first.stats["reclaimed"] == 0


async def test_progress_is_reported_in_order_and_coalesced(r: redis.asyncio.Redis, shared_redis: RedisServer,
                                                           prefix: str) -> None:
    keys = Keys(prefix)

    async def counting(job: Job) -> Any:
        await job.progress({"pct": 10})
        await asyncio.sleep(0.1)
        for i in range(1000):  # not yet sent ones are replaced by the newest
            await job.progress(i)
        await asyncio.sleep(0.1)
        await job.progress("last")
        return "ok"

    enq = Enqueuer(r, keys)
    env = enq.envelope("p", "counting", "py")
    await enq.add(env)
    worker = Worker(shared_redis.url, {"py": 1}, {"counting": counting}, prefix=prefix)
    async with running_worker(worker):
        await eventually(lambda: outcomes(r, keys), what="the outcome")
    kinds = (await outcomes(r, keys, final_only=False))[env["id"]]
    assert kinds[0] == {"kind": "started", "worker": worker.consumer}
    assert kinds[1] == {"kind": "progress", "progress": {"pct": 10}}
    assert kinds[-2] == {"kind": "progress", "progress": "last"}
    assert kinds[-1] == {"kind": "completed", "result": "ok"}
    assert len(kinds) < 100, "progress reports waiting to be written are coalesced"
    values = [k["progress"] for k in kinds if k["kind"] == "progress"][1:-1]
    assert values == sorted(values) and 999 in values


async def test_cancel_sets_the_event_and_reports_cancelled(r: redis.asyncio.Redis, shared_redis: RedisServer,
                                                           prefix: str) -> None:
    keys = Keys(prefix)
    seen: list[str | None] = []

    async def waits(job: Job) -> Any:
        await job.cancelled.wait()
        seen.append(job.stop_reason)
        return "finished anyway"

    async def stubborn(job: Job) -> Any:
        await asyncio.sleep(60)

    enq = Enqueuer(r, keys)
    polite = enq.envelope("polite", "waits", "py")
    rude = enq.envelope("rude", "stubborn", "py")
    await enq.add(polite, rude)
    worker = Worker(shared_redis.url, {"py": 2}, {"waits": waits, "stubborn": stubborn}, prefix=prefix,
                    cancel_grace=0.3)
    async with running_worker(worker):
        await eventually(lambda: _true(worker.running == 2), what="both jobs running")
        await eventually(lambda: _subscribed(r, keys), what="the cancel subscription")
        await r.publish(keys.cancel, polite["id"])
        await r.publish(keys.cancel, rude["id"])
        await r.publish(keys.cancel, "some:other:job")
        done = await eventually(lambda: _at_least(outcomes(r, keys), 2), what="two outcomes")
    cancelled = {"kind": "failed", "message": "cancelled", "retryable": False}
    assert done == {polite["id"]: cancelled, rude["id"]: cancelled}
    assert seen == ["cancelled"]


async def _subscribed(r: redis.asyncio.Redis, keys: Keys) -> bool:
    counts = await r.pubsub_numsub(keys.cancel)
    return bool(counts and counts[0][1] > 0)


async def test_timeout_interrupts_the_handler_and_fails_retryable(r: redis.asyncio.Redis,
                                                                  shared_redis: RedisServer, prefix: str) -> None:
    keys = Keys(prefix)
    interrupted: list[bool] = []

    async def sleepy(job: Job) -> Any:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            interrupted.append(job.cancelled.is_set() and job.stop_reason == "timeout")
            raise

    enq = Enqueuer(r, keys)
    env = enq.envelope("t", "sleepy", "py", timeout_ms=200)
    await enq.add(env)
    worker = Worker(shared_redis.url, {"py": 1}, {"sleepy": sleepy}, prefix=prefix)
    async with running_worker(worker):
        done = await eventually(lambda: outcomes(r, keys), timeout=5, what="the timeout")
    assert done[env["id"]] == {"kind": "failed", "message": "timed out after 200 ms", "retryable": True,
                                 "cause": "timedOut"}
    assert interrupted == [True]


async def test_heartbeat_announces_the_worker_and_a_clean_stop_removes_it(
        r: redis.asyncio.Redis, shared_redis: RedisServer, prefix: str) -> None:
    keys = Keys(prefix)
    await r.hset(keys.config, mapping={"leaseMs": 1234, "maxStalled": 2})
    worker = Worker(shared_redis.url, {"py": 3, "py.b": 1}, {"echo": echo}, prefix=prefix, consumer="hb-1")
    async with running_worker(worker):
        raw = await eventually(lambda: r.hget(keys.workers, "hb-1"), what="a heartbeat")
        assert worker.lease_ms == 1234, "the lease comes from P:config"
    info = json.loads(raw)
    assert info["queues"] == [{"name": "py", "concurrency": 3}, {"name": "py.b", "concurrency": 1}]
    assert info["handlers"] == ["echo"] and info["intervalMs"] == 5000 and info["lang"] == "python"
    assert isinstance(info["ts"], int)
    assert await r.hget(keys.workers, "hb-1") is None


async def test_graceful_close_finishes_short_jobs_and_abandons_long_ones(
        r: redis.asyncio.Redis, shared_redis: RedisServer, prefix: str) -> None:
    keys = Keys(prefix)

    async def sleeps(job: Job) -> Any:
        await asyncio.sleep(job.data)
        return job.data

    enq = Enqueuer(r, keys)
    short, long = enq.envelope("short", "sleeps", "py", data=0.3), enq.envelope("long", "sleeps", "py", data=30)
    await enq.add(short, long)
    worker = Worker(shared_redis.url, {"py": 2}, {"sleeps": sleeps}, prefix=prefix, consumer="g1",
                    shutdown_timeout=1.0)
    task = asyncio.create_task(worker.run(install_signal_handlers=False))
    await eventually(lambda: _true(worker.running == 2), what="both jobs running")
    later = enq.envelope("later", "sleeps", "py", data=0)
    worker.close()
    await asyncio.sleep(0.05)
    await enq.add(later)
    await asyncio.wait_for(task, 10)
    done = await outcomes(r, keys)
    assert done == {short["id"]: {"kind": "completed", "result": 0.3}}
    assert worker.stats["abandoned"] == 1
    # The long job stays pending on this consumer (it runs again after the lease);
    # the job added after close was never read.
    lane = default_lane(keys, "py")
    pending = await r.xpending_range(lane, "workers", "-", "+", 10)
    assert [(p["consumer"], p["message_id"]) for p in pending] == [(b"g1", (await r.xrange(lane))[0][0])]
    assert await r.xlen(lane) == 2


async def test_survives_flushall_while_blocked(own_redis: RedisServer, prefix: str) -> None:
    """FLUSHALL while the worker waits in XREAD (which has no group, so it just goes
    on waiting): jobs enqueued afterwards, on lanes created anew with their groups,
    still wake it and run."""
    client = redis.asyncio.Redis.from_url(own_redis.url)
    keys = Keys(prefix)
    worker = Worker(own_redis.url, {"py": 2}, {"echo": echo}, prefix=prefix, block_ms=2000)
    async with running_worker(worker):
        enq = Enqueuer(client, keys)
        first = enq.envelope("first", "echo", "py")
        await enq.add(first)
        await eventually(lambda: outcomes(client, keys), what="the first outcome")
        await asyncio.sleep(0.2)  # the fetcher is blocked in XREAD again
        await client.flushall()
        await asyncio.sleep(0.3)
        enq2 = Enqueuer(client, keys)
        second = enq2.envelope("second", "echo", "py")
        await enq2.add(second)
        done = await eventually(lambda: outcomes(client, keys), timeout=10, what="an outcome after FLUSHALL")
    assert done[second["id"]]["kind"] == "completed"
    await client.aclose()


async def test_no_report_is_lost_while_redis_is_down(own_redis: RedisServer, prefix: str) -> None:
    """A job that finishes while Redis is down is reported once Redis is back."""
    client = redis.asyncio.Redis.from_url(own_redis.url)
    keys = Keys(prefix)
    release = asyncio.Event()

    async def gated(job: Job) -> Any:
        await release.wait()
        return "survived"

    enq = Enqueuer(client, keys)
    env = enq.envelope("g", "gated", "py")
    await enq.add(env)
    worker = Worker(own_redis.url, {"py": 1}, {"gated": gated}, prefix=prefix, lease_ms=60_000)
    async with running_worker(worker):
        await eventually(lambda: _true(worker.running == 1), what="the job running")
        await client.aclose()
        own_redis.stop()
        release.set()
        await asyncio.sleep(1.5)  # several failed attempts
        assert worker.running == 1, "the slot is held until the report is written"
        own_redis.start()  # empty: no persistence
        client = redis.asyncio.Redis.from_url(own_redis.url)
        done = await eventually(lambda: outcomes(client, keys), timeout=15, what="the report after the outage")
    assert done[env["id"]] == {"kind": "completed", "result": "survived"}
    await client.aclose()


async def test_reports_survive_a_script_flush(r: redis.asyncio.Redis, shared_redis: RedisServer,
                                              prefix: str) -> None:
    keys = Keys(prefix)
    enq = Enqueuer(r, keys)
    await enq.add(enq.envelope("a", "echo", "py"))
    worker = Worker(shared_redis.url, {"py": 1}, {"echo": echo}, prefix=prefix)
    async with running_worker(worker):
        await eventually(lambda: outcomes(r, keys), what="the first outcome")
        await r.script_flush()
        second = enq.envelope("b", "echo", "py")
        await enq.add(second)
        done = await eventually(lambda: _at_least(outcomes(r, keys), 2), what="the outcome after SCRIPT FLUSH")
    assert done[second["id"]]["kind"] == "completed"


async def test_a_worker_started_before_redis_waits_for_it(own_redis: RedisServer, prefix: str) -> None:
    keys = Keys(prefix)
    own_redis.stop()
    worker = Worker(own_redis.url, {"py": 1}, {"echo": echo}, prefix=prefix)
    async with running_worker(worker):
        await asyncio.sleep(0.5)  # a few refused connections
        own_redis.start()
        client = redis.asyncio.Redis.from_url(own_redis.url)
        enq = Enqueuer(client, keys)
        env = enq.envelope("a", "echo", "py")
        await enq.add(env)
        done = await eventually(lambda: outcomes(client, keys), timeout=15, what="an outcome")
    assert done[env["id"]]["kind"] == "completed"
    await client.aclose()


async def test_consumers_of_stopped_workers_are_removed(r: redis.asyncio.Redis, shared_redis: RedisServer,
                                                        prefix: str) -> None:
    """Per lane: idle consumers with nothing pending go, in every lane that has a
    group; lanes without a stream are skipped."""
    from dagflow_worker.reader import QueueReader

    keys = Keys(prefix)
    stream = default_lane(keys, "py")
    enq = Enqueuer(r, keys)
    await enq.add(enq.envelope("a", "echo", "py"), enq.envelope("b", "echo", "py"))
    other = enq.envelope("c", "echo", "py", priority=2)
    await enq.add(other, new=True)
    await r.xreadgroup("workers", "busy", {stream: ">"}, count=1)  # holds a pending job
    # Ran a job, reported it, stopped; another did the same on the other lane.
    [[_, [(gone_id, _)]]] = await r.xreadgroup("workers", "gone", {stream: ">"}, count=1)
    await r.xack(stream, "workers", gone_id)
    [[_, [(gone2_id, _)]]] = await r.xreadgroup("workers", "gone2", {enq.lane(other, new=True): ">"}, count=1)
    await r.xack(enq.lane(other, new=True), "workers", gone2_id)
    reader = QueueReader(shared_redis.url, keys, "py", "me", 100)
    try:
        assert await reader.read(1, ()) == [], "nothing to take: a read that waited 100 ms"
        await asyncio.sleep(0.2)
        assert await reader.remove_idle_consumers(100) == 2
    finally:
        await reader.close()
    names = {c["name"] for c in await r.xinfo_consumers(stream, "workers")}
    assert names == {b"busy", b"me"}
    assert {c["name"] for c in await r.xinfo_consumers(enq.lane(other, new=True), "workers")} == {b"me"}


async def test_jobs_delivered_on_a_lost_reply_are_found_without_touching_running_ones(
        r: redis.asyncio.Redis, shared_redis: RedisServer, prefix: str) -> None:
    """A take whose reply is lost still left its entries pending on this consumer:
    after the connection error the worker finds them (XPENDING + XRANGE, lane by
    lane) and runs them, and the jobs it was running keep their delivery count."""
    keys = Keys(prefix)
    release = asyncio.Event()

    async def held(job: Job) -> Any:
        await release.wait()
        return job.node

    enq = Enqueuer(r, keys)
    a = enq.envelope("a", "held", "py")
    await enq.add(a)
    worker = Worker(shared_redis.url, {"py": 2}, {"held": held}, prefix=prefix, consumer="lossy")
    async with running_worker(worker):
        await eventually(lambda: _true(worker.running == 1), what="job a running")
        reader = worker._queues["py"].reader
        await eventually(lambda: _true(reader.client_id is not None), what="the reader's client id")
        await asyncio.sleep(0.1)  # blocked in XREAD
        b = enq.envelope("b", "held", "py", priority=6)
        await r.execute_command("CLIENT", "KILL", "ID", reader.client_id)
        await enq.add(b, new=True)
        # The delivery the worker never heard of, on another lane than a's:
        assert await r.xreadgroup("workers", "lossy", {enq.lane(b, new=True): ">"}, count=1), \
            "the test took b before the worker's next take"
        await eventually(lambda: _true(worker.running == 2), what="job b found and running")
        pending = [p["times_delivered"] for lane in (enq.lane(a), enq.lane(b, new=True))
                   for p in await r.xpending_range(lane, "workers", "-", "+", 10)]
        assert pending == [1, 1], "recovery counted no delivery"
        release.set()
        done = await eventually(lambda: _at_least(outcomes(r, keys), 2), what="both outcomes")
        assert worker.stats["completed"] == 2
    assert done == {a["id"]: {"kind": "completed", "result": "a"}, b["id"]: {"kind": "completed", "result": "b"}}


async def test_cancel_subscription_comes_back_after_a_redis_restart(own_redis: RedisServer, prefix: str) -> None:
    keys = Keys(prefix)
    seen: list[Any] = []

    async def waits(job: Job) -> Any:
        await job.cancelled.wait()
        seen.append(job.stop_reason)
        return None

    client = redis.asyncio.Redis.from_url(own_redis.url)
    enq = Enqueuer(client, keys)
    env = enq.envelope("w", "waits", "py")
    await enq.add(env)
    worker = Worker(own_redis.url, {"py": 1}, {"waits": waits}, prefix=prefix, cancel_grace=0.2)
    async with running_worker(worker):
        await eventually(lambda: _true(worker.running == 1), what="the job running")
        await client.aclose()
        own_redis.stop()
        await asyncio.sleep(0.3)
        own_redis.start()
        client = redis.asyncio.Redis.from_url(own_redis.url)
        await eventually(lambda: _subscribed(client, keys), timeout=15, what="the cancel subscription again")
        await client.publish(keys.cancel, env["id"])
        done = await eventually(lambda: outcomes(client, keys), timeout=10, what="the cancelled report")
    assert seen == ["cancelled"]
    assert done[env["id"]] == {"kind": "failed", "message": "cancelled", "retryable": False}
    await client.aclose()


async def test_a_full_redis_stops_nothing_for_good(own_redis: RedisServer, prefix: str) -> None:
    """At its maxmemory (noeviction) Redis refuses the heartbeat and every report
    (``OOM command not allowed``), and may refuse takes: the worker keeps running
    and retrying, and once memory is freed its heartbeat and the job's outcome land."""
    client = redis.asyncio.Redis.from_url(own_redis.url)
    keys = Keys(prefix)
    enq = Enqueuer(client, keys)
    env = enq.envelope("a", "echo", "py")
    await enq.add(env)
    await client.config_set("maxmemory", 1)
    worker = Worker(own_redis.url, {"py": 1}, {"echo": echo}, prefix=prefix, consumer="full")
    task = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        await asyncio.sleep(1.5)  # heartbeats, takes and reports meet OOM
        assert not task.done(), "the worker must not exit on OOM"
        assert await client.xlen(keys.completions) == 0 and await client.hget(keys.workers, "full") is None, \
            "Redis took a write at maxmemory: the test no longer exercises OOM"
        await client.config_set("maxmemory", 0)
        done = await eventually(lambda: outcomes(client, keys), timeout=15, what="the outcome once memory is free")
        await eventually(lambda: client.hget(keys.workers, "full"), timeout=10, what="a heartbeat")
    finally:
        worker.close()
        await asyncio.wait_for(task, 15)
        await client.aclose()
    assert done[env["id"]] == {"kind": "completed", "result": {
        "data": None, "parents": {}, "id": env["id"], "attempt": 1}}


async def test_the_same_entry_id_on_two_lanes_is_two_jobs(r: redis.asyncio.Redis, shared_redis: RedisServer,
                                                          prefix: str) -> None:
    """Entry ids are unique only within a stream: jobs added to two lanes in the same
    millisecond (one enqueue.lua call) can share one. Both run, and each report
    removes its own entry."""
    keys = Keys(prefix)
    enq = Enqueuer(r, keys)
    first, second = enq.envelope("a", "echo", "py", priority=4), enq.envelope("b", "echo", "py", priority=3)
    for env in (first, second):
        await r.xgroup_create(enq.lane(env), "workers", id="0", mkstream=True)
        await r.xadd(enq.lane(env), {"envelope": json.dumps(env)}, id="1-1")
    worker = Worker(shared_redis.url, {"py": 2}, {"echo": echo}, prefix=prefix)
    async with running_worker(worker):
        done = await eventually(lambda: _at_least(outcomes(r, keys), 2), what="both outcomes")
    assert set(done) == {first["id"], second["id"]}
    for env in (first, second):
        assert await r.xlen(enq.lane(env)) == 0
        assert (await r.xpending(enq.lane(env), "workers"))["pending"] == 0
