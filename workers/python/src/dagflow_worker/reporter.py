"""Writes every report (started, progress, completed, failed) to Redis with
``report.lua``, in order, batched, and never drops one.

One task owns the shared connection's report traffic: whatever reports piled up while
the previous batch was in flight go out together as one pipeline of ``EVALSHA`` calls,
so the cost per job is a share of one round trip whatever the concurrency. A batch
that fails (Redis unreachable, ``NOSCRIPT``, ``OOM``, ``READONLY``...) is sent again
from its first failed report, with backoff, until it succeeds: a report is written or
the process stops; it is never given up. Re-sending may write a report twice, which
the protocol allows (the engine ignores an outcome it already applied).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable, Optional

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import protocol, scripts
from .protocol import ENGINE_GROUP, WORKERS_GROUP, Envelope, Keys

log = logging.getLogger("dagflow_worker")

#: Most reports in one pipeline: bounds one round trip's size and Redis's time on it.
MAX_BATCH = 512
#: First and longest wait between attempts of a failed batch.
BACKOFF_START = 0.05
BACKOFF_MAX = 5.0


class Report:
    """One completion record to write, with what to do once it is in Redis."""

    __slots__ = ("stream", "entry_id", "envelope", "final", "outcome", "taken", "on_written")

    def __init__(
        self,
        stream: str,
        entry_id: str,
        envelope: Envelope,
        final: bool,
        outcome: str,
        on_written: Optional[Callable[[], None]] = None,
    ) -> None:
        self.stream = stream
        self.entry_id = entry_id
        self.envelope = envelope
        self.final = final
        #: The outcome JSON; a progress report not yet taken may be replaced.
        self.outcome = outcome
        #: True once a batch holds it: from then on it is no longer replaced.
        self.taken = False
        self.on_written = on_written


class Reporter:
    """The single writer of reports (see the module doc)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._queue: deque[Report] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._failing_since: Optional[float] = None
        self._in_flight = 0

    def submit(self, report: Report) -> None:
        """Queues a report; it is written after every report queued before it."""
        self._queue.append(report)
        self._idle.clear()
        self._wake.set()

    @property
    def backlog(self) -> int:
        """Reports queued and not yet written (the batch in flight included)."""
        return len(self._queue) + self._in_flight

    async def wait_idle(self) -> None:
        """Returns once every report submitted so far is written."""
        await self._idle.wait()

    async def run(self) -> None:
        """Writes batches until cancelled."""
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch: list[Report] = []
            while self._queue and len(batch) < MAX_BATCH:
                report = self._queue.popleft()
                report.taken = True
                batch.append(report)
            self._in_flight = len(batch)
            await self._write(batch)
            self._in_flight = 0
            for report in batch:
                if report.on_written is not None:
                    try:
                        report.on_written()
                    except Exception:  # a bug in a callback must not stop reporting
                        log.exception("callback after a report failed")

    def _args(self, report: Report) -> list[Any]:
        env = report.envelope
        return [
            "EVALSHA", scripts.REPORT.sha, 3,
            self._keys.completions, report.stream, self._keys.flow_jobs(env.flow_id),
            WORKERS_GROUP, ENGINE_GROUP, report.entry_id, env.field,
            "1" if report.final else "0",
            *protocol.record_args(env, report.outcome),
        ]  # fmt: skip

    async def _write(self, batch: list[Report]) -> None:
        """Sends the batch until every report in it is written."""
        start = 0
        delay = BACKOFF_START
        loop = asyncio.get_running_loop()
        while start < len(batch):
            failure: Optional[BaseException] = None
            try:
                pipe = self._redis.pipeline(transaction=False)
                for report in batch[start:]:
                    pipe.execute_command(*self._args(report))
                results = await pipe.execute(raise_on_error=False)
                failed_at = next(
                    (i for i, r in enumerate(results) if isinstance(r, BaseException)), None
                )
                if failed_at is None:
                    start = len(batch)
                    break
                # Commands run in order: those before the first failure are written.
                start += failed_at
                failure = results[failed_at]
                if failure is not None and scripts.is_noscript(failure):
                    await self._redis.execute_command("SCRIPT", "LOAD", scripts.REPORT.source)
                    continue
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                failure = e
            except RedisError as e:
                failure = e
            if self._failing_since is None:
                self._failing_since = loop.time()
                log.warning("writing %d job reports failed (%s); retrying until Redis takes them",
                            len(batch) - start, failure)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        if self._failing_since is not None:
            log.info("job reports written again after %.1f s", loop.time() - self._failing_since)
            self._failing_since = None
