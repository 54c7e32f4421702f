"""End to end: a real ``dagflow serve`` (Rust built-in handlers on queue ``default``),
a real redis-server, and Python workers (in this process, or as
``python -m dagflow_worker`` processes) serving queue ``py``, which the server does
not serve."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import redis.asyncio

from conftest import DagflowServer, WorkerProcess, eventually, running_worker
from dagflow_worker import Client, DagflowError, Fatal, FlowSpec, Job, Retryable, Worker
from dagflow_worker.protocol import Keys


async def node_of(client: Client, flow_id: str, name: str) -> dict[str, Any]:
    flow = await client.get(flow_id)
    return next(dict(n) for n in flow["nodes"] if n["name"] == name)


async def test_rust_feeds_python_feeds_rust(dagflow_server: Callable[..., DagflowServer]) -> None:
    server = dagflow_server()
    seen: dict[str, Any] = {}

    async def double(job: Job) -> Any:
        seen["id"], seen["data"], seen["parents"] = job.id, job.data, job.parents
        return {"doubled": job.parents["first"]["data"]["n"] * 2, "attempt": job.attempt}

    async def inspect(job: Job) -> Any:
        return {"dataIsNone": job.data is None, "parents": job.parents}

    spec: FlowSpec = {"name": "mixed", "nodes": [
        {"name": "first", "handler": "echo", "data": {"n": 21}},
        {"name": "double", "queue": "py", "parents": ["first"], "data": {"own": True}},
        {"name": "last", "handler": "echo", "parents": ["double"]},
        {"name": "lonely", "handler": "inspect", "queue": "py"},
    ]}
    worker = Worker(server.redis_url, {"py": 4}, {"double": double, "inspect": inspect}, prefix=server.prefix)
    async with Client(server.base_url) as client, running_worker(worker):
        flow_id = await client.submit(spec)
        flow = await client.wait(flow_id, timeout=30)
    assert flow["status"] == "completed", flow
    nodes = {n["name"]: n for n in flow["nodes"]}
    assert seen["id"] == f"{flow_id}:double:1"
    assert seen["data"] == {"own": True}
    assert seen["parents"] == {"first": {"data": {"n": 21}, "parents": {}}}
    assert nodes["double"]["result"] == {"doubled": 42, "attempt": 1}
    # The Rust child received the Python result.
    assert nodes["last"]["result"] == {"data": None, "parents": {"double": {"doubled": 42, "attempt": 1}}}
    assert nodes["lonely"]["result"] == {"dataIsNone": True, "parents": {}}
    # `started` was reported: the engine knows when the Python node began.
    assert nodes["double"]["startedAt"] <= nodes["double"]["finishedAt"]


async def test_retry_on_a_queue_only_python_serves(dagflow_server: Callable[..., DagflowServer]) -> None:
    """Needs the engine to promote due retries of every queue (not only its own)."""
    server = dagflow_server()
    attempts: list[int] = []

    async def flaky(job: Job) -> Any:
        attempts.append(job.attempt)
        if job.attempt < 3:
            raise Retryable(f"not yet ({job.attempt})")
        return {"attempt": job.attempt}

    async def broken(job: Job) -> Any:
        raise Fatal("bad input")

    spec: FlowSpec = {"nodes": [
        {"name": "flaky", "queue": "py", "opts": {"attempts": 3, "backoff": {"type": "fixed", "delayMs": 100}}},
        {"name": "broken", "queue": "py", "opts": {"attempts": 3}},
    ]}
    worker = Worker(server.redis_url, {"py": 4}, {"flaky": flaky, "broken": broken}, prefix=server.prefix)
    async with Client(server.base_url) as client, running_worker(worker):
        flow_id = await client.submit(spec)
        flow = await client.wait(flow_id, timeout=20)
    nodes = {n["name"]: n for n in flow["nodes"]}
    assert attempts == [1, 2, 3]
    assert nodes["flaky"]["status"] == "completed" and nodes["flaky"]["attempt"] == 3
    assert nodes["flaky"]["result"] == {"attempt": 3}
    # Fatal: failed for good on the first attempt although attempts were left.
    assert nodes["broken"]["status"] == "failed" and nodes["broken"]["attempt"] == 1
    assert nodes["broken"]["error"] == "bad input"
    assert flow["status"] == "failed"


async def test_a_killed_workers_job_is_reclaimed_by_another_process(
        dagflow_server: Callable[..., DagflowServer], worker_process: Callable[..., WorkerProcess],
        tmp_path: Path) -> None:
    server = dagflow_server(lease="2s")
    marks = tmp_path / "marks"
    marks.mkdir()
    spec: FlowSpec = {"nodes": [
        {"name": "slow", "handler": "slow", "queue": "py", "data": {"dir": str(marks), "ms": 1500}},
        {"name": "after", "handler": "echo", "parents": ["slow"]},
    ]}
    first = worker_process(server.redis_url, server.prefix, "py=2")
    async with Client(server.base_url) as client:
        flow_id = await client.submit(spec)
        await eventually(lambda: _glob(marks, "slow.*.started"), timeout=20, what="the first run to start")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        killed_at = time.monotonic()
        second = worker_process(server.redis_url, server.prefix, "py=2")
        flow = await client.wait(flow_id, timeout=30)
        took = time.monotonic() - killed_at
    assert flow["status"] == "completed", (flow, second.log()[-2000:])
    nodes = {n["name"]: n for n in flow["nodes"]}
    assert nodes["slow"]["result"]["pid"] == second.proc.pid
    assert nodes["slow"]["attempt"] == 1, "a reclaim is not a retry"
    started = {p.name.split(".")[1] for p in marks.glob("slow.*.started")}
    finished = {p.name.split(".")[1] for p in marks.glob("slow.*.finished")}
    assert started == {str(first.proc.pid), str(second.proc.pid)}
    assert finished == {str(second.proc.pid)}
    assert "reclaimed" in second.log()
    # Lease 2 s (read from P:config), reclaim every lease/2, then 1.5 s of work.
    assert took < 8, f"the job came back after {took:.1f} s"


async def _glob(path: Path, pattern: str) -> list[Path]:
    return list(path.glob(pattern))


async def test_jobs_are_taken_in_lane_order(dagflow_server: Callable[..., DagflowServer]) -> None:
    """Flows created while no worker serves ``py``; then a worker with one slot runs
    their jobs best lane first: higher priority first (a node's ``priority`` over its
    flow's ``opts.priority``), and within a priority the job of a flow that has
    started before the root of a new flow, although that root was enqueued first."""
    server = dagflow_server()
    order: list[tuple[str, int]] = []

    async def rec(job: Job) -> Any:
        order.append((job.data["tag"], job.priority))
        return job.data["tag"]

    def py_node(tag: str, **extra: Any) -> Any:
        return {"name": "n", "handler": "rec", "queue": "py", "data": {"tag": tag}, **extra}

    specs: list[tuple[str, FlowSpec]] = [
        ("new-5", {"nodes": [py_node("new-5")]}),
        ("low-1", {"nodes": [py_node("low-1")], "opts": {"priority": 1}}),
        # Its root runs on the server's queue, so its py job is a started flow's.
        ("started-5", {"nodes": [{"name": "first", "handler": "echo"}, py_node("started-5", parents=["first"])]}),
        ("flow-8", {"nodes": [py_node("flow-8")], "opts": {"priority": 8}}),
        ("node-9", {"nodes": [py_node("node-9", priority=9)], "opts": {"priority": 1}}),
    ]
    keys = Keys(server.prefix)
    r = redis.asyncio.Redis.from_url(server.redis_url)
    async with Client(server.base_url) as client:
        ids = {tag: await client.submit(spec) for tag, spec in specs}
        for tag, flow_id in ids.items():
            await eventually(lambda flow_id=flow_id: _status(client, flow_id, "n", "queued"), what=f"{tag} queued")
        # Each on the lane its priority and its flow's progress say.
        lanes = {lane: await r.xlen(lane) for lane in keys.lanes("py")}
        assert {lane: n for lane, n in lanes.items() if n} == {
            keys.lane("py", 9, True): 1, keys.lane("py", 8, True): 1, keys.lane("py", 5, False): 1,
            keys.lane("py", 5, True): 1, keys.lane("py", 1, True): 1}
        worker = Worker(server.redis_url, {"py": 1}, {"rec": rec}, prefix=server.prefix)
        async with running_worker(worker):
            flows = [await client.wait(flow_id, timeout=30) for flow_id in ids.values()]
    await r.aclose()
    assert [f["status"] for f in flows] == ["completed"] * len(specs)
    assert order == [("node-9", 9), ("flow-8", 8), ("started-5", 5), ("new-5", 5), ("low-1", 1)]


async def test_a_waiting_worker_wakes_up_for_a_new_job(dagflow_server: Callable[..., DagflowServer]) -> None:
    """With a free slot and nothing to take, the worker waits in XREAD on every lane
    (block 30 s); a job of a new flow starts within a couple of seconds, on the lane
    where another job of this worker is running."""
    server = dagflow_server()
    started: dict[str, float] = {}
    release = asyncio.Event()

    async def hold(job: Job) -> Any:
        started["hold"] = time.monotonic()
        await release.wait()
        return "held"

    async def quick(job: Job) -> Any:
        started["quick"] = time.monotonic()
        return "quick"

    r = redis.asyncio.Redis.from_url(server.redis_url)
    worker = Worker(server.redis_url, {"py": 2}, {"hold": hold, "quick": quick}, prefix=server.prefix,
                    block_ms=30_000)
    async with Client(server.base_url) as client, running_worker(worker):
        first = await client.submit({"nodes": [{"name": "hold", "queue": "py"}]})
        await eventually(lambda: _true("hold" in started), what="the first job running")
        reader = worker._queues["py"].reader

        async def blocked_in_xread() -> bool:
            if reader.client_id is None:
                return False
            [info] = await r.client_list(client_id=[reader.client_id])
            return info["cmd"] == "xread" and "b" in info["flags"]

        await eventually(blocked_in_xread, what="the reader blocked in XREAD")
        submitted = time.monotonic()
        second = await client.submit({"nodes": [{"name": "quick", "queue": "py"}]})
        flow = await client.wait(second, timeout=20)
        release.set()
        assert (await client.wait(first, timeout=20))["status"] == "completed"
    await r.aclose()
    assert flow["status"] == "completed" and flow["nodes"][0]["result"] == "quick"
    woke = started["quick"] - submitted
    assert woke < 2.0, f"the new job started after {woke:.2f} s (the wait was 30 s)"


async def test_a_killed_workers_job_is_reclaimed_from_its_lane(
        dagflow_server: Callable[..., DagflowServer], worker_process: Callable[..., WorkerProcess],
        tmp_path: Path) -> None:
    """A job on lane ``P:q:py:2`` (a started flow of priority 2) whose worker was
    killed is reclaimed from that lane by another worker process, and leaves it."""
    server = dagflow_server(lease="2s")
    marks = tmp_path / "marks"
    marks.mkdir()
    spec: FlowSpec = {"opts": {"priority": 2}, "nodes": [
        {"name": "root", "handler": "echo"},
        {"name": "slow", "handler": "slow", "queue": "py", "parents": ["root"],
         "data": {"dir": str(marks), "ms": 1000}},
    ]}
    lane = Keys(server.prefix).lane("py", 2, False)
    r = redis.asyncio.Redis.from_url(server.redis_url)
    first = worker_process(server.redis_url, server.prefix, "py=1")
    async with Client(server.base_url) as client:
        flow_id = await client.submit(spec)
        await eventually(lambda: _glob(marks, "slow.*.started"), timeout=20, what="the first run to start")
        [pending] = await r.xpending_range(lane, "workers", "-", "+", 10)
        assert f"-{first.proc.pid}-" in pending["consumer"].decode()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        second = worker_process(server.redis_url, server.prefix, "py=1")
        flow = await client.wait(flow_id, timeout=30)
    assert flow["status"] == "completed", (flow, second.log()[-2000:])
    nodes = {n["name"]: n for n in flow["nodes"]}
    assert nodes["slow"]["result"]["pid"] == second.proc.pid
    assert nodes["slow"]["attempt"] == 1, "a reclaim is not a retry"
    assert "reclaimed" in second.log()
    assert (await r.xpending(lane, "workers"))["pending"] == 0 and await r.xlen(lane) == 0
    await r.aclose()


async def test_cancel_reaches_the_running_handler(dagflow_server: Callable[..., DagflowServer]) -> None:
    server = dagflow_server()
    seen: list[Any] = []

    async def waits(job: Job) -> Any:
        await job.cancelled.wait()
        seen.append(job.stop_reason)
        return "stopped"

    worker = Worker(server.redis_url, {"py": 2}, {"waits": waits}, prefix=server.prefix)
    async with Client(server.base_url) as client, running_worker(worker):
        flow_id = await client.submit({"nodes": [{"name": "waits", "queue": "py"},
                                                 {"name": "child", "handler": "echo", "parents": ["waits"]}]})
        await eventually(lambda: _status(client, flow_id, "waits", "active"), what="the node running")
        cancelled = await client.cancel(flow_id)
        assert cancelled["status"] == "cancelled"
        await eventually(lambda: _true(seen == ["cancelled"]), what="the handler to see the cancel")
        await eventually(lambda: _true(worker.running == 0), what="the job reported")
        flow = await client.get(flow_id)
    nodes = {n["name"]: n for n in flow["nodes"]}
    assert nodes["waits"]["status"] == "cancelled" and nodes["child"]["status"] == "cancelled"
    assert worker.stats["failed"] == 1


async def _status(client: Client, flow_id: str, node: str, status: str) -> bool:
    return (await node_of(client, flow_id, node))["status"] == status


async def _true(value: bool) -> bool:
    return value


async def test_timeout_fails_the_attempt(dagflow_server: Callable[..., DagflowServer]) -> None:
    server = dagflow_server()

    async def hangs(job: Job) -> Any:
        await asyncio.sleep(60)

    worker = Worker(server.redis_url, {"py": 1}, {"hangs": hangs}, prefix=server.prefix)
    async with Client(server.base_url) as client, running_worker(worker):
        t0 = time.monotonic()
        flow_id = await client.submit({"nodes": [{"name": "hangs", "queue": "py", "opts": {"timeoutMs": 300}}]})
        flow = await client.wait(flow_id, timeout=20)
        took = time.monotonic() - t0
    node = flow["nodes"][0]
    assert flow["status"] == "failed"
    assert node["status"] == "failed" and node["error"] == "timed out after 300 ms"
    assert took < 5


async def test_progress_reaches_watchers(dagflow_server: Callable[..., DagflowServer]) -> None:
    server = dagflow_server()
    go = asyncio.Event()

    async def steps(job: Job) -> Any:
        await go.wait()
        for pct in (25, 50, 75):
            await job.progress({"pct": pct})
            await asyncio.sleep(0.15)
        return "done"

    worker = Worker(server.redis_url, {"py": 1}, {"steps": steps}, prefix=server.prefix)
    async with Client(server.base_url) as client, running_worker(worker):
        flow_id = await client.submit({"nodes": [{"name": "steps", "queue": "py"}]})
        messages = []
        seqs = []
        async for message in client.watch(flow_id):
            messages.append(message)
            if message["type"] == "snapshot":
                seqs.append(message["flow"]["seq"])
                go.set()
            elif message["type"] == "flow:updated":
                seqs.append(message["seq"])
        node = await client.node(flow_id, "steps")
    progress = [m["progress"] for m in messages if m["type"] == "flow:updated" and "progress" in m]
    assert progress == [{"pct": 25}, {"pct": 50}, {"pct": 75}]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq goes up by one"
    assert messages[-1]["type"] == "flow:updated" and messages[-1]["status"] == "completed"
    assert node["progress"] == {"pct": 75} and node["result"] == "done"
    assert node["input"] == {"data": None, "parents": {}}
    # Its one attempt names this worker (its ``started`` report carries the consumer name).
    assert [(a["attempt"], a["outcome"], a.get("worker")) for a in node["attempts"]] == [
        (1, "completed", worker.consumer)]


async def test_sigterm_lets_the_running_job_finish(
        dagflow_server: Callable[..., DagflowServer], worker_process: Callable[..., WorkerProcess],
        tmp_path: Path) -> None:
    server = dagflow_server()
    marks = tmp_path / "marks"
    marks.mkdir()
    wp = worker_process(server.redis_url, server.prefix, "py=1")
    async with Client(server.base_url) as client:
        flow_id = await client.submit({"nodes": [
            {"name": "slow", "handler": "slow", "queue": "py", "data": {"dir": str(marks), "ms": 1500}}]})
        await eventually(lambda: _glob(marks, "slow.*.started"), timeout=20, what="the job to start")
        wp.proc.send_signal(signal.SIGTERM)
        later = await client.submit({"nodes": [
            {"name": "slow", "handler": "slow", "queue": "py", "data": {"dir": str(marks), "ms": 0}}]})
        code = await asyncio.to_thread(wp.proc.wait, 15)
        flow = await client.wait(flow_id, timeout=10)
        waiting = await client.get(later)
    assert code == 0, wp.log()[-2000:]
    assert flow["status"] == "completed"
    assert flow["nodes"][0]["result"]["pid"] == wp.proc.pid
    assert len(list(marks.glob("slow.*.started"))) == 1, "no job taken after SIGTERM"
    assert waiting["status"] == "running" and waiting["nodes"][0]["status"] == "queued"
    assert "finishing running jobs" in wp.log()


async def test_client_submit_get_list_errors(dagflow_server: Callable[..., DagflowServer]) -> None:
    server = dagflow_server()
    async with Client(server.base_url) as client:
        spec: FlowSpec = {"name": "c", "nodes": [{"name": "a", "handler": "noop"}]}
        first = await client.submit(spec, idempotency_key="key-1")
        assert await client.submit(spec, idempotency_key="key-1") == first
        flow = await client.wait(first, timeout=20)
        assert flow["status"] == "completed" and flow["name"] == "c"
        page = await client.list_flows(status="completed", limit=10)
        assert first in [f["id"] for f in page["flows"]]
        with pytest.raises(DagflowError) as invalid:
            await client.submit({"nodes": [{"name": "a", "parents": ["b"]}, {"name": "b", "parents": ["a"]}]})
        assert invalid.value.status == 422 and invalid.value.code == "invalid_flow"
        assert any(p["code"] == "cycle" for p in invalid.value.details["problems"])
        with pytest.raises(DagflowError) as missing:
            await client.get("0194e5c2-7b1d-7c3e-9a40-2f6c1d8e9b10")
        assert missing.value.status == 404
        with pytest.raises(DagflowError) as unknown_ws:
            async for _ in client.watch("0194e5c2-7b1d-7c3e-9a40-2f6c1d8e9b10"):
                pass
        assert unknown_ws.value.status == 404
        await client.delete(first)
        with pytest.raises(DagflowError):
            await client.get(first)
        with pytest.raises(TimeoutError):
            slow = await client.submit({"nodes": [{"name": "s", "handler": "sleep", "data": {"ms": 5000}}]})
            await client.wait(slow, timeout=0.3)


async def test_the_readme_example_runs_as_written(dagflow_server: Callable[..., DagflowServer],
                                                  tmp_path: Path) -> None:
    server = dagflow_server()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## A worker in Python"):]
    code = section[section.index("```python\n") + len("```python\n"):]
    code = code[:code.index("```")]
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "DAGFLOW_REDIS_URL": server.redis_url, "DAGFLOW_SERVER": server.base_url,
           "DAGFLOW_PREFIX": server.prefix,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-3000:]
    lines = out.decode().splitlines()
    print("\n".join(lines))
    assert lines[-1].startswith("completed {'job': '"), lines
    assert lines[-1].endswith(":resize-image:1', 'resized': 'https://example.com/a.png', 'width': 800}"), lines
    assert any("resize-image active" in line for line in lines), lines
    assert any("{'pct': 100}" in line for line in lines), lines


async def test_map_elements_run_on_python_with_item_and_index(dagflow_server: Callable[..., DagflowServer]) -> None:
    """A map over three items, each element a job on the Python worker whose handler
    returns ``job.item * 10``; the map's result keeps the array's order."""
    server = dagflow_server()
    seen: list[tuple[str, Any, Any, Any, Any, str]] = []

    async def times10(job: Job) -> Any:
        seen.append((job.node, job.item, job.index, job.data, job.parents, job.id))
        # Later elements finish first: the order of the result comes from the index.
        assert job.index is not None
        await asyncio.sleep(0.15 * (2 - job.index))
        return job.item * 10

    spec: FlowSpec = {"nodes": [
        {"name": "src", "handler": "echo", "data": {"items": [1, 2, 3]}},
        {"name": "m", "handler": "times10", "queue": "py", "parents": ["src"], "data": {"factor": 10},
         "map": {"from": "src", "path": "/data/items"}},
        {"name": "after", "handler": "echo", "parents": ["m"]},
    ]}
    worker = Worker(server.redis_url, {"py": 3}, {"times10": times10}, prefix=server.prefix)
    async with Client(server.base_url) as client, running_worker(worker):
        flow_id = await client.submit(spec)
        flow = await client.wait(flow_id, timeout=30)
        element = await client.node(flow_id, "m[1]")
    assert flow["status"] == "completed", flow
    nodes = {n["name"]: n for n in flow["nodes"]}
    assert nodes["m"]["result"] == [10, 20, 30]
    assert nodes["m"]["map"] == {"from": "src", "path": "/data/items", "total": 3, "done": 3, "running": 0,
                                 "failed": 0}
    assert nodes["after"]["result"] == {"data": None, "parents": {"m": [10, 20, 30]}}
    for i in range(3):
        el = nodes[f"m[{i}]"]
        assert (el["status"], el["mapOf"], el["index"], el["result"]) == ("completed", "m", i, (i + 1) * 10)
    # An element gets its map's parents but the source, whose piece is `item`.
    assert sorted(seen, key=lambda s: s[2]) == [
        (f"m[{i}]", i + 1, i, {"factor": 10}, {}, f"{flow_id}:m[{i}]:1") for i in range(3)]
    assert element["input"] == {"data": {"factor": 10}, "parents": {}, "item": 2, "index": 1}


async def test_a_null_element_is_an_element(dagflow_server: Callable[..., DagflowServer]) -> None:
    server = dagflow_server()

    async def kind(job: Job) -> Any:
        return {"item": job.item, "index": job.index}

    spec: FlowSpec = {"nodes": [
        {"name": "src", "handler": "echo", "data": [None, "a"]},
        {"name": "k", "handler": "kind", "queue": "py", "parents": ["src"], "map": {"from": "src", "path": "/data"}},
        {"name": "plain", "handler": "kind", "queue": "py"},
    ]}
    worker = Worker(server.redis_url, {"py": 2}, {"kind": kind}, prefix=server.prefix)
    async with Client(server.base_url) as client, running_worker(worker):
        flow = await client.wait(await client.submit(spec), timeout=30)
    nodes = {n["name"]: n for n in flow["nodes"]}
    assert nodes["k"]["result"] == [{"item": None, "index": 0}, {"item": "a", "index": 1}]
    assert nodes["plain"]["result"] == {"item": None, "index": None}


async def test_signal_completes_a_waiting_node(dagflow_server: Callable[..., DagflowServer]) -> None:
    server = dagflow_server()

    async def after(job: Job) -> Any:
        return {"approved": job.parents["gate"]}

    spec: FlowSpec = {"nodes": [
        {"name": "gate", "wait": {"signal": "approve"}},
        {"name": "after", "queue": "py", "parents": ["gate"]},
        {"name": "bare", "wait": {"signal": "go"}},
    ]}
    worker = Worker(server.redis_url, {"py": 1}, {"after": after}, prefix=server.prefix)
    async with Client(server.base_url) as client, running_worker(worker):
        flow_id = await client.submit(spec)
        gate = await eventually(lambda: _waiting(client, flow_id, "gate"), what="gate waiting")
        assert gate["wait"] == {"kind": "signal", "signal": "approve"}
        assert (await node_of(client, flow_id, "after"))["status"] == "pending"
        with pytest.raises(DagflowError) as unknown:
            await client.signal(flow_id, "nobody", 1)
        assert unknown.value.status == 404
        with pytest.raises(DagflowError) as not_waiting:
            await client.signal(flow_id, "after", 1)
        assert not_waiting.value.status == 409
        node = await client.signal(flow_id, "gate", {"ok": True, "by": "python"})
        assert (node["name"], node["status"], node["result"]) == ("gate", "completed", {"ok": True, "by": "python"})
        with pytest.raises(DagflowError) as again:
            await client.signal(flow_id, "gate", 2)
        assert again.value.status == 409
        await eventually(lambda: _waiting(client, flow_id, "bare"), what="bare waiting")
        bare = await client.signal(flow_id, "bare")
        assert bare["status"] == "completed" and bare["result"] is None
        flow = await client.wait(flow_id, timeout=30)
    assert flow["status"] == "completed"
    nodes = {n["name"]: n for n in flow["nodes"]}
    assert nodes["after"]["result"] == {"approved": {"ok": True, "by": "python"}}


async def _waiting(client: Client, flow_id: str, name: str) -> Any:
    node = await node_of(client, flow_id, name)
    return node if node["status"] == "waiting" else None


async def test_rerun_runs_a_node_and_its_descendants_again(dagflow_server: Callable[..., DagflowServer]) -> None:
    """Re-runs an ended node of a flow that a signal wait holds running, so that the
    re-run goes to the flow's live actor."""
    server = dagflow_server()
    runs: list[tuple[str, int]] = []

    async def stamp(job: Job) -> Any:
        runs.append((job.node, job.attempt))
        return {"run": sum(1 for node, _ in runs if node == job.node)}

    spec: FlowSpec = {"nodes": [
        {"name": "root", "handler": "echo", "data": [1]},
        {"name": "a", "handler": "stamp", "queue": "py", "parents": ["root"]},
        {"name": "b", "handler": "stamp", "queue": "py", "parents": ["a"]},
        {"name": "els", "handler": "stamp", "queue": "py", "parents": ["root"],
         "map": {"from": "root", "path": "/data"}},
        {"name": "hold", "wait": {"signal": "done"}},
    ]}

    async def ran(client: Client, flow_id: str, name: str, run: int) -> bool:
        node = await node_of(client, flow_id, name)
        return node["status"] == "completed" and node["result"] == {"run": run}

    worker = Worker(server.redis_url, {"py": 2}, {"stamp": stamp}, prefix=server.prefix)
    async with Client(server.base_url) as client, running_worker(worker):
        flow_id = await client.submit(spec)
        await eventually(lambda: ran(client, flow_id, "b", 1), what="b ran once")
        await eventually(lambda: ran(client, flow_id, "els[0]", 1), what="els[0] ran once")
        for name, status in (("els[0]", 409), ("nobody", 404), ("hold", 409)):
            with pytest.raises(DagflowError) as refused:
                await client.rerun(flow_id, name)
            assert refused.value.status == status, (name, refused.value)
        view = await client.rerun(flow_id, "a")
        assert view["id"] == flow_id and view["status"] == "running"
        await eventually(lambda: ran(client, flow_id, "b", 2), what="b ran again after a")
        await client.signal(flow_id, "hold")
        flow = await client.wait(flow_id, timeout=30)
    assert flow["status"] == "completed", flow
    nodes = {n["name"]: n for n in flow["nodes"]}
    assert nodes["a"]["result"] == {"run": 2} and nodes["b"]["result"] == {"run": 2}
    assert nodes["els"]["result"] == [{"run": 1}], "a node outside the re-run keeps its result"
    a_attempts = [attempt for node, attempt in runs if node == "a"]
    assert len(a_attempts) == 2 and a_attempts[1] > a_attempts[0], a_attempts
