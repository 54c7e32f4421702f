"""The worker: serves dagflow queues with Python handlers, speaking the Redis protocol of
``docs/PROTOCOL.md``.

Shape, and why:

- **One fetcher task per queue**, each on its own Redis connection (a blocked
  ``XREAD`` can do nothing else). It takes jobs with ``take.lua``, which serves the
  queue's 20 lane streams best first (priority, then started flows before new ones),
  only as many as the queue has free slots, so a job is never taken before something
  can run it; with nothing ready it blocks in ``XREAD`` on every lane until one gets
  an entry. It first re-reads this consumer's own pending jobs, lane by lane (after a
  restart under the same consumer name, or after an error lost a reply).
- **One task per running job**, which runs the handler in place: no extra task or
  timer per job for leases or heartbeats. Only a job with ``timeoutMs`` gets a timer
  handle (cheap, no task).
- **Tickers shared by all jobs**: lease renewal of every running job every lease/3
  (one ``XCLAIM ... JUSTID`` per lane stream), reclaim of dead workers' jobs, heartbeat
  (which also re-reads the engine's lease from ``P:config``).
- **One reporter** writes every report in order, batched into pipelines, retrying
  until Redis takes it (``reporter.py``). A job's slot is freed only once its final
  report is in Redis: until then its lease keeps being renewed, so no other worker
  runs it again while its outcome waits for Redis to come back.
- **One pub/sub connection** for ``P:cancel``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import signal
import socket
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Optional, Union

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import protocol, scripts, tracing
from .errors import JobError
from .job import Job, StopReason
from .protocol import WORKERS_GROUP, Envelope, EnvelopeError, Keys
from .reader import Entry, QueueReader, is_no_group, raw_replies
from .reporter import Report, Reporter

log = logging.getLogger("dagflow_worker")

#: A handler: gets the job, returns its result (any JSON value). A plain function
#: works too, but it blocks the event loop while it runs (wrap blocking code in
#: ``asyncio.to_thread``).
Handler = Callable[[Job], Union[Awaitable[Any], Any]]

#: Errors that mean Redis is unreachable right now (retry later).
_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
#: How often each lane's group is cleared of consumers that stopped, and how long
#: such a consumer must have been idle (with nothing pending) to go.
JANITOR_EVERY_S = 600.0
CONSUMER_IDLE_MS = 3_600_000


@dataclass
class _Queue:
    """One served queue: its reader, its slots and its running jobs."""

    name: str
    concurrency: int
    reader: QueueReader
    #: Running jobs by (lane stream, entry id), renewed until their final report is
    #: written. Entry ids are unique only within a stream: two lanes may hold the same.
    running: dict[tuple[str, str], Job] = field(default_factory=dict)
    #: Set when a slot frees up, to wake a fetcher waiting for one.
    slot_freed: asyncio.Event = field(default_factory=asyncio.Event)


class Worker:
    """Runs handlers for jobs of one or more dagflow queues.

    ``queues`` maps each queue name to how many of its jobs run at once here;
    ``handlers`` maps handler names (a node's ``handler``, which defaults to its name)
    to async functions of a :class:`Job`. Every worker of a queue must have every
    handler that queue's nodes name: a job whose handler is missing fails for good.

    A handler's return value is the node's result (any JSON value). Raising
    :class:`~dagflow_worker.Fatal` fails the node for good; :class:`~dagflow_worker.Retryable`
    or **any other exception** fails the attempt as retryable (the engine retries if
    the node has attempts left).

    ``await worker.run()`` serves until SIGTERM/SIGINT (or :meth:`close`): it then
    stops fetching, lets running jobs finish until ``shutdown_timeout`` seconds have
    passed, and abandons the rest unreported: they stay pending in Redis and run again
    after the lease (at once if a worker with the same ``consumer`` name starts). A
    second signal abandons at once.

    The lease comes from the engine's ``P:config`` hash (``leaseMs``, 30 s if absent),
    re-read every heartbeat; pass ``lease_ms`` to override it. ``consumer`` is this
    worker's consumer name in every queue's group and its id in ``P:workers``: give a
    stable one (unique per worker process) to resume unfinished jobs at once after a
    restart; the default is unique per process.
    """

    def __init__(
        self,
        redis_url: str = "redis://127.0.0.1:6379",
        queues: Optional[Mapping[str, int]] = None,
        handlers: Optional[Mapping[str, Handler]] = None,
        *,
        prefix: str = protocol.DEFAULT_PREFIX,
        consumer: Optional[str] = None,
        lease_ms: Optional[int] = None,
        shutdown_timeout: float = 30.0,
        cancel_grace: float = 5.0,
        block_ms: int = 1000,
        heartbeat_interval_ms: int = protocol.HEARTBEAT_INTERVAL_MS,
    ) -> None:
        queues = dict(queues if queues is not None else {"default": 4})
        if not queues:
            raise ValueError("a worker needs at least one queue")
        for name, concurrency in queues.items():
            protocol.check_queue_name(name)
            if not isinstance(concurrency, int) or concurrency < 1:
                raise ValueError(f"queue {name!r}: concurrency must be an integer >= 1, not {concurrency!r}")
        self.handlers: dict[str, Handler] = dict(handlers or {})
        for name, fn in self.handlers.items():
            if not callable(fn):
                raise TypeError(f"handler {name!r} is not callable")
        if lease_ms is not None and lease_ms < 100:
            raise ValueError("lease_ms must be at least 100")
        self.redis_url = redis_url
        self.keys = Keys(prefix)
        self.consumer = consumer or f"py-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.shutdown_timeout = shutdown_timeout
        self.cancel_grace = cancel_grace
        self.block_ms = block_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._queue_conf = queues
        self._lease_override = lease_ms
        #: The lease in force (ms): the override, else the engine's.
        self.lease_ms = lease_ms or protocol.DEFAULT_LEASE_MS
        self._queues: dict[str, _Queue] = {}
        self._jobs: dict[str, Job] = {}
        self._redis: Optional[Redis] = None
        self._reporter: Optional[Reporter] = None
        self._stopping = False
        self._stop_requested: Optional[asyncio.Event] = None
        self._deadline_now: Optional[asyncio.Event] = None
        self._signals = 0
        #: Jobs this worker finished (final report written), by outcome kind.
        self.stats = {"completed": 0, "failed": 0, "abandoned": 0, "reclaimed": 0, "stalled": 0}

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> int:
        """Jobs taken and not yet reported (running, or their report waiting for Redis)."""
        return sum(len(q.running) for q in self._queues.values())

    def close(self, timeout: Optional[float] = None) -> None:
        """Asks :meth:`run` to shut down gracefully (``timeout`` overrides
        ``shutdown_timeout``; ``0`` abandons running jobs at once). Safe to call from a
        signal handler or before ``run`` started its loop."""
        if timeout is not None:
            self.shutdown_timeout = timeout
        self._stopping = True
        if self._stop_requested is not None:
            self._stop_requested.set()
        if timeout == 0 and self._deadline_now is not None:
            self._deadline_now.set()

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("signal %s: finishing running jobs (up to %.1f s), taking no new ones",
                     signal.Signals(signum).name, self.shutdown_timeout)
            self.close()
        else:
            log.warning("second signal: abandoning running jobs now")
            self.close(0)

    async def run(self, install_signal_handlers: bool = True) -> None:
        """Serves the queues until shut down (see the class doc)."""
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._deadline_now = asyncio.Event()
        if self._stopping:
            self._stop_requested.set()
        if install_signal_handlers:
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self._on_signal, sig)
            except (RuntimeError, ValueError, NotImplementedError) as e:
                # Not the main thread, or a loop without signal support: the caller
                # must call close() itself.
                log.warning("signal handlers not installed (%s); call close() to stop", e)
                install_signal_handlers = False
        self._redis = raw_replies(
            Redis.from_url(self.redis_url, socket_timeout=10.0, socket_connect_timeout=10.0, protocol=2)
        )
        self._reporter = Reporter(self.redis_url)
        tasks: list[asyncio.Task[Any]] = []
        try:
            for name, concurrency in self._queue_conf.items():
                reader = QueueReader(self.redis_url, self.keys, name, self.consumer, self.block_ms)
                self._queues[name] = _Queue(name, concurrency, reader)
            if not await self._connect():
                return
            tasks.append(loop.create_task(self._reporter.run(), name="dagflow-reporter"))
            tasks.append(loop.create_task(self._cancel_loop(), name="dagflow-cancel"))
            tasks.append(loop.create_task(self._renew_loop(), name="dagflow-renew"))
            tasks.append(loop.create_task(self._heartbeat_loop(), name="dagflow-heartbeat"))
            fetchers = [
                loop.create_task(self._fetch_loop(q), name=f"dagflow-fetch-{q.name}")
                for q in self._queues.values()
            ]
            log.info("worker %s serving %s (lease %d ms)", self.consumer,
                     ", ".join(f"{q.name}={q.concurrency}" for q in self._queues.values()), self.lease_ms)
            await self._stop_requested.wait()
            await self._shutdown(fetchers)
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._forget_heartbeat()
            for q in self._queues.values():
                await q.reader.close()
            await self._reporter.close()
            await self._redis.aclose()

    async def _connect(self) -> bool:
        """Reads the config, waiting for Redis as long as it takes (a worker may start
        before Redis does); False if closed meanwhile. There are no groups to create:
        each lane stream comes with its group."""
        assert self._stop_requested is not None
        delay = 0.1
        while not self._stopping:
            try:
                await self._read_config(starting=True)
                return True
            except (RedisError, *_CONNECTION_ERRORS) as e:
                log.warning("cannot reach Redis at start (%s); retrying in %.1f s", e, delay)
                try:
                    await asyncio.wait_for(self._stop_requested.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, 5.0)
        return False

    async def _shutdown(self, fetchers: list["asyncio.Task[None]"]) -> None:
        """Stops fetching, waits for running jobs and their reports until the
        deadline, then abandons what is left."""
        assert self._deadline_now is not None and self._reporter is not None
        # A fetcher stops after its current read (at most block_ms); jobs that read
        # brings still run, under the same deadline.
        for q in self._queues.values():
            q.slot_freed.set()
            await self._unblock(q)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout
        await self._wait_until(asyncio.gather(*fetchers, return_exceptions=True), deadline)
        for f in fetchers:
            f.cancel()

        async def drained() -> None:
            while self.running:
                await asyncio.sleep(0.02)

        await self._wait_until(drained(), deadline)
        if self.running:
            abandoned = [job for q in self._queues.values() for job in q.running.values()]
            log.warning("shutdown deadline passed: abandoning %d jobs unreported; they run again "
                        "after the lease", len(abandoned))
            self.stats["abandoned"] += len(abandoned)
            for job in abandoned:
                job._request_stop("shutdown")
                job._finished = True
                if job._timer is not None:
                    job._timer.cancel()
                if job._task is not None and not job._task.done():
                    job._task.cancel()
            for q in self._queues.values():
                q.running.clear()
        # Reports that hold no slot (stalled jobs) get the rest of the deadline too.
        await self._wait_until(self._reporter.wait_idle(), deadline)
        if self._reporter.backlog:
            log.warning("%d reports not written before the deadline; their jobs run again after "
                        "the lease", self._reporter.backlog)
        log.info("worker %s stopped", self.consumer)

    async def _unblock(self, q: _Queue) -> None:
        """Ends the fetcher's blocked read now (as if it timed out: nothing is
        delivered), so that shutdown does not wait out the block time."""
        assert self._redis is not None
        if q.reader.client_id is None:
            return
        try:
            await self._redis.execute_command("CLIENT", "UNBLOCK", q.reader.client_id)
        except (RedisError, *_CONNECTION_ERRORS) as e:
            log.debug("could not unblock the reader of %s: %s", q.name, e)

    async def _wait_until(self, aw: Awaitable[Any], deadline: float) -> None:
        """Waits for ``aw`` until ``deadline`` or a second signal, whichever first."""
        assert self._deadline_now is not None
        loop = asyncio.get_running_loop()
        main = asyncio.ensure_future(aw)
        now = asyncio.ensure_future(self._deadline_now.wait())
        await asyncio.wait([main, now], timeout=max(0.0, deadline - loop.time()),
                           return_when=asyncio.FIRST_COMPLETED)
        for f in (main, now):
            if not f.done():
                f.cancel()

    # --------------------------------------------------------------------- fetch

    async def _fetch_loop(self, q: _Queue) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.1
        next_reclaim = loop.time() + self._reclaim_every()
        next_janitor = loop.time() + JANITOR_EVERY_S
        while not self._stopping:
            try:
                free = q.concurrency - len(q.running)
                if free <= 0:
                    q.slot_freed.clear()
                    try:
                        await asyncio.wait_for(q.slot_freed.wait(), timeout=self._reclaim_every())
                    except asyncio.TimeoutError:
                        pass
                    continue
                if loop.time() >= next_janitor:
                    next_janitor = loop.time() + JANITOR_EVERY_S
                    removed = await q.reader.remove_idle_consumers(CONSUMER_IDLE_MS)
                    if removed:
                        log.info("queue %s: removed %d idle consumers with no pending job", q.name, removed)
                if loop.time() >= next_reclaim:
                    next_reclaim = loop.time() + self._reclaim_every()
                    free -= await self._reclaim(q, free)
                    if free <= 0:
                        continue
                await self._dispatch(q, await q.reader.read(free, q.running))
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except (RedisError, *_CONNECTION_ERRORS) as e:
                # A connection error, or an error reply (OOM...): never fatal. Either
                # may have cost the reply of a take.lua that moved entries to this
                # consumer, so look for them before taking more.
                if self._stopping:
                    break
                log.warning("queue %s: reading failed (%s); retrying in %.1f s", q.name, e, delay)
                q.reader.recover()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _reclaim_every(self) -> float:
        """Reclaim runs every half lease: a dead worker's job waits at most 1.5 leases."""
        return max(0.05, self.lease_ms / 2000)

    async def _dispatch(self, q: _Queue, entries: list[Entry]) -> None:
        bad: list[Entry] = []
        for entry in entries:
            if entry.deleted:
                bad.append(entry)
                continue
            if (entry.stream, entry.id) in q.running:
                continue  # running here already
            try:
                envelope = protocol.parse_envelope(entry.envelope)
            except EnvelopeError as e:
                log.warning("queue %s: removing malformed entry %s: %s", q.name, entry.id, e)
                bad.append(entry)
                continue
            self._start(q, entry, envelope)
        if bad:
            await q.reader.remove(bad)

    async def _reclaim(self, q: _Queue, count: int) -> int:
        """Claims jobs of dead workers; runs them, or fails those claimed too often."""
        claimed = await q.reader.reclaim(self.lease_ms, count)
        taken = 0
        deleted: list[Entry] = []
        for entry, times_delivered in claimed:
            if entry.deleted:
                deleted.append(entry)
                continue
            if (entry.stream, entry.id) in q.running:
                continue  # our own job, idle only because renewal could not reach Redis
            try:
                envelope = protocol.parse_envelope(entry.envelope)
            except EnvelopeError as e:
                log.warning("queue %s: removing malformed reclaimed entry %s: %s", q.name, entry.id, e)
                deleted.append(entry)
                continue
            if protocol.is_stalled(times_delivered, envelope.max_stalled):
                log.warning("job %s stalled (delivered %d times); failing it", envelope.id, times_delivered)
                self.stats["stalled"] += 1
                message = protocol.stalled_message(times_delivered, envelope.max_stalled, self.lease_ms)
                assert self._reporter is not None
                wire = protocol.ReportWire.of(scripts.REPORT.sha, self.keys, entry.stream, entry.id, envelope)
                self._reporter.submit(Report(wire, True, protocol.failed(message, False, "stalled")))
                continue
            log.info("job %s reclaimed from a worker that stopped renewing it", envelope.id)
            self.stats["reclaimed"] += 1
            self._start(q, entry, envelope)
            taken += 1
        if deleted:
            await q.reader.remove(deleted)
        return taken

    # ----------------------------------------------------------------------- run

    def _start(self, q: _Queue, entry: Entry, envelope: Envelope) -> Job:
        wire = protocol.ReportWire.of(scripts.REPORT.sha, self.keys, entry.stream, entry.id, envelope)
        job = Job(envelope, entry.id, entry.stream, wire, self)
        q.running[(entry.stream, entry.id)] = job
        self._jobs[envelope.id] = job
        loop = asyncio.get_running_loop()
        if sys.version_info >= (3, 12):
            # Runs the job at once, up to its first real wait: a handler that never
            # waits (a no-op, a pure computation) then costs no scheduling round.
            job._task = asyncio.Task(self._execute(q, job), loop=loop, eager_start=True)
        else:
            job._task = loop.create_task(self._execute(q, job))
        return job

    async def _execute(self, q: _Queue, job: Job) -> None:
        env = job.envelope
        handler = self.handlers.get(env.handler)
        if handler is None:
            self._finish(q, job, protocol.failed(
                f"no handler named '{env.handler}' on worker {self.consumer} (queue '{env.queue}')", False))
            return
        assert self._reporter is not None
        self._reporter.submit(Report(job.wire, False, protocol.started(self.consumer)))
        if env.timeout_ms is not None:
            job._timer = asyncio.get_running_loop().call_later(env.timeout_ms / 1000, self._expire, q, job)
        try:
            if tracing.AVAILABLE:
                with tracing.handler_span(job):
                    result = handler(job)
                    if inspect.isawaitable(result):
                        result = await result
            else:
                result = handler(job)
                if inspect.isawaitable(result):
                    result = await result
            try:
                outcome = protocol.completed(result)
            except (TypeError, ValueError) as e:
                outcome = protocol.failed(f"handler result is not JSON: {e}", False)
        except asyncio.CancelledError:
            if job._stop == "shutdown":
                raise  # abandoned: no report, the job runs again after the lease
            # Replaced below by the stop's outcome; without a stop, the handler itself
            # raised CancelledError (awaited something cancelled): a retryable failure.
            outcome = protocol.failed("handler raised CancelledError", True)
        except JobError as e:
            outcome = protocol.failed(str(e) or type(e).__name__, e.retryable)
        except Exception as e:  # any other exception: retryable, as documented
            outcome = protocol.failed(f"{type(e).__name__}: {e}", True)
        if job._stop is not None:
            outcome = self._stop_outcome(job, job._stop)
        self._finish(q, job, outcome)

    def _stop_outcome(self, job: Job, reason: StopReason) -> str:
        if reason == "timeout":
            return protocol.failed(f"timed out after {job.envelope.timeout_ms} ms", True, "timedOut")
        return protocol.failed("cancelled", False)

    def _expire(self, q: _Queue, job: Job) -> None:
        """``timeoutMs`` passed: the attempt fails now (retryable) and the handler is
        interrupted at once; the deadline is the node's, so there is no grace."""
        if job._finished:
            return
        job._request_stop("timeout")
        if job._task is not None:
            job._task.cancel()
        self._finish(q, job, self._stop_outcome(job, "timeout"))

    def _cancel(self, job: Job) -> None:
        """The engine cancelled the job: the handler sees ``job.cancelled`` and gets
        ``cancel_grace`` seconds to return before its task is cancelled."""
        if job._finished or job._stop is not None:
            return
        job._request_stop("cancelled")
        q = self._queues.get(job.envelope.queue) or next(
            (q for q in self._queues.values() if (job.stream, job.entry_id) in q.running), None)
        if q is None:
            return
        asyncio.get_running_loop().call_later(self.cancel_grace, self._force_stop, q, job)

    def _force_stop(self, q: _Queue, job: Job) -> None:
        if job._finished:
            return
        if job._task is not None:
            job._task.cancel()
        # Reported now even if the handler swallows the cancellation and runs on.
        self._finish(q, job, self._stop_outcome(job, job._stop or "cancelled"))

    def _finish(self, q: _Queue, job: Job, outcome: str) -> None:
        """Queues the final report once; the slot is freed when it is written."""
        if job._finished:
            return
        job._finished = True
        if job._timer is not None:
            job._timer.cancel()
        self._jobs.pop(job.id, None)
        self.stats["completed" if outcome.startswith('{"kind":"completed"') else "failed"] += 1

        def written() -> None:
            key = (job.stream, job.entry_id)
            if q.running.get(key) is job:
                del q.running[key]
                q.slot_freed.set()

        assert self._reporter is not None
        self._reporter.submit(Report(job.wire, True, outcome, written))

    def _report_progress(self, job: Job, value: Any) -> None:
        outcome = protocol.progress(value)
        if job._finished:
            return
        pending = job._progress_report
        if pending is not None and not pending.taken:
            pending.outcome = outcome  # not sent yet: the newest value replaces it
            return
        report = Report(job.wire, False, outcome)
        job._progress_report = report
        assert self._reporter is not None
        self._reporter.submit(report)

    # ------------------------------------------------------------------- tickers

    async def _renew(self, jobs: list[Job]) -> None:
        """Resets the idle time of running jobs (``XCLAIM ... JUSTID`` does not count a
        delivery), so no other worker reclaims them: one command per lane stream
        holding some, pipelined."""
        assert self._redis is not None
        by_stream: dict[str, list[str]] = {}
        for job in jobs:
            by_stream.setdefault(job.stream, []).append(job.entry_id)
        pipe = self._redis.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            for i in range(0, len(ids), 1000):
                pipe.execute_command("XCLAIM", stream, WORKERS_GROUP, self.consumer, 0, *ids[i:i + 1000], "JUSTID")
        for result in await pipe.execute(raise_on_error=False):
            # A lane without its group (Redis lost its data) holds nothing to renew.
            if isinstance(result, BaseException) and not is_no_group(result):
                raise result

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            jobs = [job for q in self._queues.values() for job in q.running.values()]
            if jobs:
                try:
                    await self._renew(jobs)
                except (RedisError, *_CONNECTION_ERRORS) as e:
                    log.warning("renewing the leases of %d jobs failed: %s", len(jobs), e)

    async def _read_config(self, starting: bool = False) -> None:
        """Takes the lease from the engine's ``P:config`` unless overridden.

        Missing at start (no engine yet, or an engine that does not publish it): the
        30 s default. Missing later (Redis lost its data; the engine writes it again
        once it notices): the last value stays. At start an error is raised (the
        caller waits for Redis); later it is logged and the last value stays.
        """
        if self._lease_override is not None:
            return
        assert self._redis is not None
        try:
            value = await self._redis.hget(self.keys.config, "leaseMs")
        except (RedisError, *_CONNECTION_ERRORS) as e:
            if starting:
                raise  # _connect waits for Redis
            log.warning("reading %s failed: %s", self.keys.config, e)
            return
        if value is None:
            if starting:
                log.info("no leaseMs in %s: assuming %d ms", self.keys.config, self.lease_ms)
            return
        try:
            lease = max(100, int(value))
        except ValueError:
            log.warning("%s leaseMs is not a number: %r", self.keys.config, value)
            return
        if lease != self.lease_ms:
            log.info("lease is now %d ms (from %s)", lease, self.keys.config)
            self.lease_ms = lease

    def _info(self) -> str:
        return json.dumps({
            "queues": [{"name": q.name, "concurrency": q.concurrency} for q in self._queues.values()],
            "handlers": sorted(self.handlers),
            "intervalMs": self.heartbeat_interval_ms,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "lang": "python",
            "running": self.running,
        }, separators=(",", ":"))

    async def _heartbeat_loop(self) -> None:
        assert self._redis is not None
        while True:
            try:
                await scripts.HEARTBEAT.call(
                    self._redis, [self.keys.workers],
                    [self.consumer, self._info(), protocol.HEARTBEAT_INTERVAL_MS])
                await self._read_config()
            except (RedisError, *_CONNECTION_ERRORS) as e:
                log.debug("heartbeat failed: %s", e)
            await asyncio.sleep(self.heartbeat_interval_ms / 1000)

    async def _forget_heartbeat(self) -> None:
        """A worker that stopped cleanly is not alive: remove its heartbeat at once."""
        if self._redis is None:
            return
        try:
            await self._redis.hdel(self.keys.workers, self.consumer)
        except (RedisError, *_CONNECTION_ERRORS):
            pass  # it expires after three intervals anyway

    async def _cancel_loop(self) -> None:
        """Listens on ``P:cancel``; reconnects when the connection breaks (cancels
        published meanwhile are lost, as the protocol allows)."""
        delay = 0.1
        while True:
            # No read timeout (it waits for messages), but TCP keepalive so that a
            # vanished Redis host is noticed and the subscription made again.
            client: Redis = Redis.from_url(self.redis_url, socket_connect_timeout=10.0, socket_keepalive=True,
                                           protocol=2)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.cancel)
                delay = 0.1
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None or message.get("type") != "message":
                        continue
                    data = message["data"]
                    job = self._jobs.get(data.decode() if isinstance(data, bytes) else str(data))
                    if job is not None:
                        log.info("job %s cancelled", job.id)
                        self._cancel(job)
            except asyncio.CancelledError:
                raise
            except (RedisError, *_CONNECTION_ERRORS) as e:
                log.debug("cancel listener: %s; reconnecting in %.1f s", e, delay)
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:
                    pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
