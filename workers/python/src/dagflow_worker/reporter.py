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
import math
from collections import deque
from typing import Callable, Optional

from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import scripts
from .protocol import ReportWire

log = logging.getLogger("dagflow_worker")

#: Most reports in one pipeline: bounds one round trip's size and Redis's time on it.
MAX_BATCH = 512
#: First and longest wait between attempts of a failed batch.
BACKOFF_START = 0.05
BACKOFF_MAX = 5.0
#: Longest wait for the replies of one batch before the connection is given up.
REPLY_TIMEOUT_S = 10.0


class Report:
    """One completion record to write, with what to do once it is in Redis."""

    __slots__ = ("wire", "final", "outcome", "taken", "on_written")

    def __init__(
        self,
        wire: ReportWire,
        final: bool,
        outcome: str,
        on_written: Optional[Callable[[], None]] = None,
    ) -> None:
        #: The job's encoded command parts.
        self.wire = wire
        self.final = final
        #: The outcome JSON; a progress report not yet taken may be replaced.
        self.outcome = outcome
        #: True once a batch holds it: from then on it is no longer replaced.
        self.taken = False
        self.on_written = on_written


class Reporter:
    """The single writer of reports (see the module doc).

    It speaks to Redis on a connection of its own, writing pre-encoded commands and
    reading their replies (``redis.asyncio.Connection``'s ``send_packed_command`` and
    ``read_response``): redis-py's own command encoding would cost more per report
    than everything else the worker does for a job.
    """

    def __init__(self, redis_url: str) -> None:
        self._pool = ConnectionPool.from_url(redis_url, socket_timeout=10.0, socket_connect_timeout=10.0,
                                             protocol=2)
        self._conn: Connection = self._pool.make_connection()
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

    async def close(self) -> None:
        """Closes the connection."""
        await self._conn.disconnect()
        await self._pool.disconnect()

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

    async def _send(self, batch: list[Report]) -> tuple[int, Optional[BaseException]]:
        """Sends the reports as one pipeline; returns how many in a row, from the
        first, Redis confirmed, and the error of the first one it did not."""
        await self._conn.send_packed_command(
            b"".join([r.wire.command(r.final, r.outcome) for r in batch]), check_health=False)
        try:
            return await asyncio.wait_for(self._replies(len(batch)), REPLY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise RedisTimeoutError(f"no reply to {len(batch)} reports within {REPLY_TIMEOUT_S} s") from None

    async def _replies(self, count: int) -> tuple[int, Optional[BaseException]]:
        # One timeout for the whole batch (the caller's) instead of redis-py's timeout
        # context per reply, which cost six times the read itself.
        confirmed = 0
        failure: Optional[BaseException] = None
        for _ in range(count):
            try:
                await self._conn.read_response(timeout=math.inf)
            except ResponseError as e:  # the connection is fine: read the other replies
                if failure is None:
                    failure = e
                continue
            if failure is None:
                confirmed += 1
        return confirmed, failure

    async def _write(self, batch: list[Report]) -> None:
        """Sends the batch until every report in it is written."""
        start = 0
        delay = BACKOFF_START
        loop = asyncio.get_running_loop()
        while start < len(batch):
            failure: Optional[BaseException]
            try:
                confirmed, failure = await self._send(batch[start:])
                # Commands run in order: those before the first failure are written.
                start += confirmed
                if failure is None:
                    break
                if scripts.is_noscript(failure):
                    await self._conn.send_command("SCRIPT", "LOAD", scripts.REPORT.source)
                    await self._conn.read_response()
                    continue
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                # Which of the unconfirmed reports Redis ran is unknown: all are sent
                # again, and a report written twice is harmless.
                failure = e
                await self._conn.disconnect()
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
