"""Reading one queue's 20 lane streams as one consumer of group ``workers``, on a
dedicated connection.

New jobs are taken only with ``take.lua``, which serves the lanes in their order
(higher priority first and, within a priority, started flows before new ones); when
it finds nothing, a plain ``XREAD BLOCK`` on all 20 lanes waits for the next entry.
That blocked read holds its connection for the whole block, so each queue gets its
own connection (``single_connection_client``), with a socket timeout longer than the
block time so that a long poll is never mistaken for a dead Redis. Every other step
(this consumer's pending entries, reclaim, lost replies, the janitor) goes lane by
lane, and every job is held as (lane stream, entry id). Replies are parsed here from
the raw RESP2 arrays (redis-py's parsers choke on the nil fields of an entry deleted
while pending).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Collection, Optional, Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from . import scripts
from .protocol import LANES, WORKERS_GROUP, Keys

log = logging.getLogger("dagflow_worker")

#: Added to the block time to get the socket timeout of a blocking read.
BLOCK_MARGIN_S = 5.0
#: Socket timeout of the non-blocking commands of a reader.
COMMAND_TIMEOUT_S = 10.0
#: Most ``XAUTOCLAIM`` calls of one reclaim per lane, each scanning up to 10 x COUNT
#: entries.
MAX_AUTOCLAIM_ROUNDS = 10

#: Commands whose replies this package parses itself.
RAW_COMMANDS = ("XREADGROUP", "XREAD", "XAUTOCLAIM", "XPENDING", "XCLAIM", "XACK", "XDEL", "XRANGE")


def raw_replies(client: Redis) -> Redis:
    """Turns off redis-py's reply parsing of the stream commands on ``client``."""
    for name in RAW_COMMANDS:
        client.set_response_callback(name, lambda response, **options: response)
    return client


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def is_no_group(error: BaseException) -> bool:
    """True when Redis says a lane has no stream or no group: it was never used, or
    Redis lost its data (``FLUSHALL``, restart without persistence). Group commands
    answer ``NOGROUP`` (for a missing key too); either way the lane holds nothing for
    this consumer. (The blocking read is a plain ``XREAD``, which has no group, so
    the ``UNBLOCKED`` reply of a blocked ``XREADGROUP`` never comes.)"""
    return isinstance(error, ResponseError) and str(error).startswith("NOGROUP")


@dataclass
class Entry:
    """One lane stream entry as read: ``deleted`` for an entry deleted while pending
    (only its pending record is left); ``envelope`` is ``None`` when it has none."""

    #: The lane stream it is on: where it is renewed, reclaimed and reported.
    stream: str
    id: str
    envelope: Optional[bytes]
    deleted: bool


def parse_entries(stream: str, raw: Any) -> list[Entry]:
    """``[[id, [field, value, ...] | nil], ...]`` -> entries."""
    out: list[Entry] = []
    for item in raw or []:
        if item is None:
            continue
        entry_id = _text(item[0])
        fields = item[1] if len(item) > 1 else None
        if fields is None:
            out.append(Entry(stream, entry_id, None, True))
            continue
        envelope = None
        for i in range(0, len(fields) - 1, 2):
            if fields[i] == b"envelope":
                envelope = fields[i + 1]
                break
        out.append(Entry(stream, entry_id, envelope, False))
    return out


class QueueReader:
    """One consumer of one queue's lanes: pending-first reads, ``take.lua``, reclaim,
    removal."""

    def __init__(self, redis_url: str, keys: Keys, queue: str, consumer: str, block_ms: int) -> None:
        self.queue = queue
        #: The lane streams in lane order: a lane index is a position here.
        self.lanes = keys.lanes(queue)
        self._takes = keys.takes(queue)
        self.consumer = consumer
        self.block_ms = block_ms
        self._redis: Redis = raw_replies(
            Redis.from_url(
                redis_url,
                single_connection_client=True,
                socket_timeout=block_ms / 1000 + BLOCK_MARGIN_S,
                socket_connect_timeout=COMMAND_TIMEOUT_S,
                # Errors are handled by the fetcher, which looks for lost deliveries
                # after one; a silent retry would hide that a reply was lost.
                retry=Retry(NoBackoff(), 0),
                protocol=2,
            )
        )
        # Where reading this consumer's own pending entries goes on from (a lane index
        # and an entry id), or None once every lane is exhausted.
        self._pending: Optional[tuple[int, str]] = (0, "0")
        # Per lane, where the next XAUTOCLAIM scan goes on from.
        self._autoclaim: list[str] = ["0-0"] * LANES
        #: Redis's id of the connection (``CLIENT ID``), so that a shutdown can end
        #: a blocked read at once with ``CLIENT UNBLOCK``; None until known.
        self.client_id: Optional[int] = None
        self._recover = False

    async def close(self) -> None:
        """Closes the connection."""
        await self._redis.aclose()

    def recover(self) -> None:
        """Looks for lost deliveries before the next new read.

        Called after an error: a ``take.lua`` call whose reply was lost on the way
        still moved its entries into this consumer's pending lists. They are found
        with ``XPENDING`` and fetched with ``XRANGE``, lane by lane, which touch
        nothing; re-reading the pending lists with ``XREADGROUP`` would also count a
        delivery of every job running here (toward its ``maxStalled``).
        """
        self._recover = True
        self.client_id = None  # the next connection is another client

    async def read(self, count: int, running: Collection[tuple[str, str]]) -> list[Entry]:
        """Up to ``count`` entries: lost deliveries after an error (entries pending
        here that are not in ``running``, given as (lane stream, entry id)), this
        consumer's own pending entries after a start, lane by lane, then the best
        ready jobs (``take.lua``), waiting up to ``block_ms`` for one when none is
        ready. Empty when nothing came in time.

        Reading the pending list at start (``XREADGROUP ... 0``) resets the idle time
        of those entries and counts a delivery of each (Redis 7.0): a restart under
        the same name counts toward ``maxStalled`` like a reclaim.
        """
        if self._recover:
            lost = await self._lost(count, running)
            if lost:
                return lost
            self._recover = False
        while self._pending is not None:
            lane, cursor = self._pending
            try:
                reply = await self._redis.execute_command(
                    "XREADGROUP", "GROUP", WORKERS_GROUP, self.consumer,
                    "COUNT", count, "STREAMS", self.lanes[lane], cursor,
                )  # fmt: skip
            except ResponseError as e:
                if not is_no_group(e):
                    raise
                reply = None  # no stream or no group: nothing pending there
            entries = parse_entries(self.lanes[lane], reply[0][1]) if reply else []
            if not entries:
                self._pending = (lane + 1, "0") if lane + 1 < LANES else None
                continue
            self._pending = (lane, entries[-1].id)
            return entries
        taken, wait = await self._take(count)
        if taken:
            return taken
        if self.client_id is None:
            self.client_id = int(await self._redis.execute_command("CLIENT", "ID"))
        # Nothing ready: wait for an entry newer than what take.lua saw, in any lane
        # (XREAD consumes nothing), then take again; another worker may have taken it
        # meanwhile. ``CLIENT UNBLOCK`` ends the wait as a timeout (nil).
        woke = await self._redis.execute_command(
            "XREAD", "COUNT", 1, "BLOCK", self.block_ms, "STREAMS", *self.lanes, *wait)
        if woke is None:
            return []
        taken, _ = await self._take(count)
        return taken

    async def _take(self, count: int) -> tuple[list[Entry], list[str]]:
        """Runs ``take.lua`` for up to ``count`` jobs: the entries taken, in the order
        to start them, and, when there are none, the 20 ids to wait after."""
        reply = await scripts.TAKE.call(
            self._redis, [*self.lanes, self._takes], [WORKERS_GROUP, self.consumer, count])
        jobs, wait = reply[0] or [], reply[1] or []
        taken: list[Entry] = []
        for i in range(0, len(jobs) - 2, 3):
            lane = int(jobs[i])
            if not 0 <= lane < LANES:
                raise ResponseError(f"take.lua returned lane index {lane}")
            # A Lua false (an entry without an envelope field) arrives as nil:
            # malformed, removed by the caller.
            envelope = jobs[i + 2] if isinstance(jobs[i + 2], bytes) else None
            taken.append(Entry(self.lanes[lane], _text(jobs[i + 1]), envelope, False))
        if not taken and len(wait) != LANES:
            raise ResponseError(f"take.lua returned {len(wait)} ids to wait after, not {LANES}")
        return taken, [_text(w) for w in wait]

    async def _lost(self, count: int, running: Collection[tuple[str, str]]) -> list[Entry]:
        """Entries pending on this consumer that are not running here, up to ``count``,
        in lane order."""
        pipe = self._redis.pipeline(transaction=False)
        for lane in self.lanes:
            # Sorted by id, running ones among them: asking for as many more as there
            # are running jobs shows ``count`` unknown ones if there are that many.
            pipe.execute_command("XPENDING", lane, WORKERS_GROUP, "-", "+", count + len(running) + 1, self.consumer)
        ids: list[tuple[str, str]] = []
        for lane, rows in zip(self.lanes, await pipe.execute(raise_on_error=False)):
            if isinstance(rows, BaseException):
                if is_no_group(rows):
                    continue  # no stream or no group: nothing pending there
                raise rows
            ids.extend((lane, i) for i in (_text(row[0]) for row in rows or []) if (lane, i) not in running)
        ids = ids[:count]
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for lane, entry_id in ids:
            pipe.execute_command("XRANGE", lane, entry_id, entry_id)
        found: list[Entry] = []
        for (lane, entry_id), reply in zip(ids, await pipe.execute()):
            entries = parse_entries(lane, reply)
            # Gone from the stream but still pending: deleted while pending.
            found.extend(entries or [Entry(lane, entry_id, None, True)])
        log.info("found %d jobs delivered to %s on a lost reply", len(found), self.consumer)
        return found

    async def reclaim(self, lease_ms: int, count: int) -> list[tuple[Entry, int]]:
        """Claims up to ``count`` entries idle for more than ``lease_ms`` (their worker
        died or stopped renewing), lane by lane in lane order, with how often each was
        delivered (this claim included). Entries deleted while pending are returned
        with ``deleted`` set."""
        claimed: list[Entry] = []
        for index, lane in enumerate(self.lanes):
            for _ in range(MAX_AUTOCLAIM_ROUNDS):
                if len(claimed) >= count:
                    break
                try:
                    reply = await self._redis.execute_command(
                        "XAUTOCLAIM", lane, WORKERS_GROUP, self.consumer, lease_ms,
                        self._autoclaim[index], "COUNT", count - len(claimed),
                    )  # fmt: skip
                except ResponseError as e:
                    if not is_no_group(e):
                        raise
                    # A lane never used (or lost with Redis's data): nothing to claim.
                    self._autoclaim[index] = "0-0"
                    break
                # [next cursor, entries, ids deleted while pending (7.0+)]. Redis
                # already removed the deleted ids from the pending list: nothing to do.
                cursor = _text(reply[0])
                claimed.extend(parse_entries(lane, reply[1]))
                self._autoclaim[index] = cursor
                if cursor == "0-0":
                    break
        live = [entry for entry in claimed if not entry.deleted]
        out: list[tuple[Entry, int]] = [(entry, 0) for entry in claimed if entry.deleted]
        if not live:
            return out
        pipe = self._redis.pipeline(transaction=False)
        for entry in live:
            pipe.execute_command("XPENDING", entry.stream, WORKERS_GROUP, entry.id, entry.id, 1)
        rows = await pipe.execute()
        for entry, row in zip(live, rows):
            # [[id, consumer, idle ms, times delivered]]; empty: finished meanwhile.
            if row:
                out.append((entry, int(row[0][3])))
        return out

    async def remove_idle_consumers(self, idle_ms: int) -> int:
        """Removes the consumers of every lane's group, other than this one, that hold
        no pending job there and have been idle for more than ``idle_ms`` (workers
        that stopped); returns how many."""
        removed = 0
        for lane in self.lanes:
            try:
                consumers = await self._redis.execute_command("XINFO", "CONSUMERS", lane, WORKERS_GROUP)
            except ResponseError:
                continue  # a lane with no stream or no group yet
            for row in consumers or []:
                info = {_text(row[i]): row[i + 1] for i in range(0, len(row) - 1, 2)}
                name = _text(info.get("name", b""))
                if name and name != self.consumer and int(info.get("pending", 1)) == 0 \
                        and int(info.get("idle", 0)) > idle_ms:
                    await self._redis.execute_command("XGROUP", "DELCONSUMER", lane, WORKERS_GROUP, name)
                    removed += 1
        return removed

    async def remove(self, entries: Sequence[Entry]) -> None:
        """Acknowledges entries on their lanes; deletes those still in the stream
        (malformed ones), so that they are not delivered forever."""
        if not entries:
            return
        pipe = self._redis.pipeline(transaction=False)
        for e in entries:
            pipe.execute_command("XACK", e.stream, WORKERS_GROUP, e.id)
            if not e.deleted:
                pipe.execute_command("XDEL", e.stream, e.id)
        await pipe.execute(raise_on_error=False)
