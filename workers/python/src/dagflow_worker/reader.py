"""Reading one queue's stream as one consumer of group ``workers``, on a dedicated
connection.

A blocked ``XREADGROUP`` holds its connection for the whole block, so each queue gets
its own connection (``single_connection_client``), with a socket timeout longer than
the block time so that a long poll is never mistaken for a dead Redis. Replies are
parsed here from the raw RESP2 arrays (redis-py's parsers choke on the nil fields of
an entry deleted while pending).

A reader may serve several stream keys of one queue, read in the order given (a
later protocol version may add a continuation stream read before the main one);
today every queue has one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Collection, Optional, Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from .protocol import WORKERS_GROUP

log = logging.getLogger("dagflow_worker")

#: Added to the block time to get the socket timeout of a blocking read.
BLOCK_MARGIN_S = 5.0
#: Socket timeout of the non-blocking commands of a reader.
COMMAND_TIMEOUT_S = 10.0
#: Most ``XAUTOCLAIM`` calls of one reclaim, each scanning up to 10 x COUNT entries.
MAX_AUTOCLAIM_ROUNDS = 10

#: Commands whose replies this package parses itself.
RAW_COMMANDS = ("XREADGROUP", "XAUTOCLAIM", "XPENDING", "XCLAIM", "XACK", "XDEL", "XRANGE")


def raw_replies(client: Redis) -> Redis:
    """Turns off redis-py's reply parsing of the stream commands on ``client``."""
    for name in RAW_COMMANDS:
        client.set_response_callback(name, lambda response, **options: response)
    return client


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def is_group_lost(error: BaseException) -> bool:
    """True when Redis says the stream or its group is gone: it lost its data
    (``FLUSHALL``, restart without persistence). A blocked ``XREADGROUP`` answers
    ``UNBLOCKED the stream key no longer exists`` on Redis 7.0, later commands
    ``NOGROUP``."""
    if not isinstance(error, ResponseError):
        return False
    text = str(error)
    return text.startswith("NOGROUP") or text.startswith("UNBLOCKED")


@dataclass
class Entry:
    """One stream entry as read: ``fields`` is ``None`` for an entry deleted while
    pending (only its pending record is left)."""

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


class StreamReader:
    """One consumer of one queue: pending-first reads, reclaim, removal."""

    def __init__(self, redis_url: str, streams: Sequence[str], consumer: str, block_ms: int) -> None:
        self.streams = list(streams)
        self.consumer = consumer
        self.block_ms = block_ms
        self._redis: Redis = raw_replies(
            Redis.from_url(
                redis_url,
                single_connection_client=True,
                socket_timeout=block_ms / 1000 + BLOCK_MARGIN_S,
                socket_connect_timeout=COMMAND_TIMEOUT_S,
                # Errors are handled by the fetcher, which re-reads its pending
                # entries after one; a silent retry would hide that a read was lost.
                retry=Retry(NoBackoff(), 0),
                protocol=2,
            )
        )
        # Per stream: where reading this consumer's own pending entries goes on
        # from, or None once they are exhausted and reads wait for new entries.
        self._pending: dict[str, Optional[str]] = {s: "0" for s in self.streams}
        self._autoclaim: dict[str, str] = {s: "0-0" for s in self.streams}
        #: Redis's id of the connection (``CLIENT ID``), so that a shutdown can end
        #: a blocked read at once with ``CLIENT UNBLOCK``; None until known.
        self.client_id: Optional[int] = None
        self._recover = False

    async def close(self) -> None:
        """Closes the connection."""
        await self._redis.aclose()

    def recover(self) -> None:
        """Looks for lost deliveries before the next new read.

        Called after a connection error: a read whose reply was lost on the way still
        moved its entries into this consumer's pending list. They are found with
        ``XPENDING`` and fetched with ``XRANGE``, which touch nothing; re-reading the
        pending list with ``XREADGROUP`` would also count a delivery of every job
        running here (toward its ``maxStalled``).
        """
        self._recover = True
        self.client_id = None  # the next connection is another client

    async def ensure_groups(self) -> None:
        """Creates the group of every stream (and the stream), from its start so that
        no entry added earlier is invisible; ``BUSYGROUP`` means it exists already."""
        for stream in self.streams:
            await self._ensure_group(stream)

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self._redis.execute_command("XGROUP", "CREATE", stream, WORKERS_GROUP, "0", "MKSTREAM")
        except ResponseError as e:
            if not str(e).startswith("BUSYGROUP"):
                raise

    async def _group_lost(self, stream: str) -> None:
        log.warning("consumer group of %s is gone (Redis lost its data); recreating it", stream)
        await self._ensure_group(stream)
        # A fresh group holds nothing pending for this consumer.
        self._pending[stream] = None

    async def read(self, count: int, running: Collection[str]) -> list[Entry]:
        """Up to ``count`` entries, from the first stream that has any: lost
        deliveries after a connection error (entries pending here that are not in
        ``running``), this consumer's own pending entries after a start, then new
        ones; the last stream's read blocks up to ``block_ms``. Empty when nothing
        came in time.

        Reading the pending list at start (``XREADGROUP ... 0``) resets the idle time
        of those entries and counts a delivery of each (Redis 7.0): a restart under
        the same name counts toward ``maxStalled`` like a reclaim.
        """
        if self._recover:
            lost = await self._lost(count, running)
            if lost:
                return lost
            self._recover = False
        for stream in self.streams:
            cursor = self._pending[stream]
            while cursor is not None:
                try:
                    reply = await self._redis.execute_command(
                        "XREADGROUP", "GROUP", WORKERS_GROUP, self.consumer,
                        "COUNT", count, "STREAMS", stream, cursor,
                    )  # fmt: skip
                except ResponseError as e:
                    if not is_group_lost(e):
                        raise
                    await self._group_lost(stream)
                    break
                entries = parse_entries(stream, reply[0][1]) if reply else []
                if not entries:
                    self._pending[stream] = None
                    break
                self._pending[stream] = cursor = entries[-1].id
                return entries
        if self.client_id is None:
            self.client_id = int(await self._redis.execute_command("CLIENT", "ID"))
        for i, stream in enumerate(self.streams):
            args: list[Any] = ["XREADGROUP", "GROUP", WORKERS_GROUP, self.consumer, "COUNT", count]
            if i == len(self.streams) - 1:
                # Only the last stream's read waits: the earlier ones are read first
                # whenever they have something.
                args += ["BLOCK", self.block_ms]
            args += ["STREAMS", stream, ">"]
            try:
                reply = await self._redis.execute_command(*args)
            except ResponseError as e:
                if not is_group_lost(e):
                    raise
                await self._group_lost(stream)
                continue
            entries = parse_entries(stream, reply[0][1]) if reply else []
            if entries:
                return entries
        return []

    async def _lost(self, count: int, running: Collection[str]) -> list[Entry]:
        """Entries pending on this consumer that are not running here, up to ``count``."""
        for stream in self.streams:
            # Sorted by id, running ones among them: asking for as many more as there
            # are running jobs shows ``count`` unknown ones if there are that many.
            try:
                rows = await self._redis.execute_command(
                    "XPENDING", stream, WORKERS_GROUP, "-", "+", count + len(running) + 1, self.consumer)
            except ResponseError as e:
                if not is_group_lost(e):
                    raise
                await self._group_lost(stream)
                continue
            ids = [i for i in (_text(row[0]) for row in rows or []) if i not in running][:count]
            if not ids:
                continue
            pipe = self._redis.pipeline(transaction=False)
            for entry_id in ids:
                pipe.execute_command("XRANGE", stream, entry_id, entry_id)
            found: list[Entry] = []
            for entry_id, reply in zip(ids, await pipe.execute()):
                entries = parse_entries(stream, reply)
                # Gone from the stream but still pending: deleted while pending.
                found.extend(entries or [Entry(stream, entry_id, None, True)])
            log.info("found %d jobs delivered to %s on a lost reply", len(found), self.consumer)
            return found
        return []

    async def reclaim(self, lease_ms: int, count: int) -> list[tuple[Entry, int]]:
        """Claims up to ``count`` entries idle for more than ``lease_ms`` (their worker
        died or stopped renewing), with how often each was delivered (this claim
        included). Entries deleted while pending are returned with ``deleted`` set."""
        claimed: list[Entry] = []
        for stream in self.streams:
            for _ in range(MAX_AUTOCLAIM_ROUNDS):
                if len(claimed) >= count:
                    break
                try:
                    reply = await self._redis.execute_command(
                        "XAUTOCLAIM", stream, WORKERS_GROUP, self.consumer, lease_ms,
                        self._autoclaim[stream], "COUNT", count - len(claimed),
                    )  # fmt: skip
                except ResponseError as e:
                    if not is_group_lost(e):
                        raise
                    await self._group_lost(stream)
                    self._autoclaim[stream] = "0-0"
                    break
                # [next cursor, entries, ids deleted while pending (7.0+)]. Redis
                # already removed the deleted ids from the pending list: nothing to do.
                cursor = _text(reply[0])
                claimed.extend(parse_entries(stream, reply[1]))
                self._autoclaim[stream] = cursor
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
        """Removes the group's consumers, other than this one, that hold no pending job
        and have been idle for more than ``idle_ms`` (workers that stopped); returns
        how many."""
        removed = 0
        for stream in self.streams:
            try:
                consumers = await self._redis.execute_command("XINFO", "CONSUMERS", stream, WORKERS_GROUP)
            except ResponseError as e:
                if is_group_lost(e):
                    continue
                raise
            for row in consumers or []:
                info = {_text(row[i]): row[i + 1] for i in range(0, len(row) - 1, 2)}
                name = _text(info.get("name", b""))
                if name and name != self.consumer and int(info.get("pending", 1)) == 0 \
                        and int(info.get("idle", 0)) > idle_ms:
                    await self._redis.execute_command("XGROUP", "DELCONSUMER", stream, WORKERS_GROUP, name)
                    removed += 1
        return removed

    async def remove(self, entries: Sequence[Entry]) -> None:
        """Acknowledges entries; deletes those still in the stream (malformed ones),
        so that they are not delivered forever."""
        if not entries:
            return
        pipe = self._redis.pipeline(transaction=False)
        for e in entries:
            pipe.execute_command("XACK", e.stream, WORKERS_GROUP, e.id)
            if not e.deleted:
                pipe.execute_command("XDEL", e.stream, e.id)
        await pipe.execute(raise_on_error=False)
