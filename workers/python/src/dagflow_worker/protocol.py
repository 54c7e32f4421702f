"""The wire side of dagflow's Redis queue protocol (``docs/PROTOCOL.md``): key names,
the job envelope, outcomes and completion records.

Everything here is pure (no I/O), so it is unit-tested without Redis. Key names are
built only here, as the engine builds them only in ``actors/src/queue/keys.rs``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Optional, cast

#: The key prefix used when none is configured (the engine's default too).
DEFAULT_PREFIX = "dagflow"
#: The consumer group on every lane stream.
WORKERS_GROUP = "workers"
#: The consumer group on the completions stream (created by ``report.lua`` if needed).
ENGINE_GROUP = "engine"
#: Envelope format this code reads; entries with another ``v`` are removed.
ENVELOPE_VERSION = 1
#: Completion record format this code writes.
COMPLETION_VERSION = 1
#: The stream entry field holding the envelope.
ENVELOPE_FIELD = b"envelope"
#: Lease assumed when ``P:config`` has no ``leaseMs`` (the engine's default).
DEFAULT_LEASE_MS = 30_000
#: Heartbeat interval of this worker; also what ``heartbeat.lua`` assumes for
#: entries that do not say.
HEARTBEAT_INTERVAL_MS = 5_000
#: Priorities go from 0 (lowest) to this (highest).
MAX_PRIORITY = 9
#: The priority of an envelope that carries none (written before priorities).
DEFAULT_PRIORITY = 5
#: Lane streams per queue: two per priority (started flows, then new ones).
LANES = 2 * (MAX_PRIORITY + 1)


def lane_index(priority: int, new: bool) -> int:
    """A lane's position in the order a queue serves its lanes: 0 is
    ``P:q:{queue}:9``, 1 ``P:q:{queue}:9:new``, ..., 19 ``P:q:{queue}:0:new``."""
    return 2 * (MAX_PRIORITY - priority) + (1 if new else 0)

_QUEUE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def check_queue_name(name: str) -> str:
    """Returns ``name`` if the engine would accept it as a queue name, else raises.

    The engine (``actors/src/spec.rs``) allows ASCII letters, digits, ``-``, ``_`` and
    ``.``; anything else could never receive a job, so a typo fails loudly here.
    """
    if not name or not set(name) <= _QUEUE_CHARS:
        raise ValueError(
            f"queue name {name!r} is not valid: use ASCII letters, digits, '-', '_' or '.'"
        )
    return name


@dataclass(frozen=True)
class Keys:
    """Every Redis key of one deployment, under its prefix ``P``."""

    prefix: str = DEFAULT_PREFIX

    def lane(self, queue: str, priority: int, new: bool) -> str:
        """A lane stream (group ``workers``): ``P:q:{queue}:{priority}`` holds ready and
        running jobs of flows that have started, ``P:q:{queue}:{priority}:new`` the
        first jobs of flows that have not."""
        return f"{self.prefix}:q:{queue}:{priority}:new" if new else f"{self.prefix}:q:{queue}:{priority}"

    def lanes(self, queue: str) -> list[str]:
        """The queue's 20 lane streams in the order they are served (lane index 0 to
        19): what ``take.lua`` takes, and the order every per-lane step goes in."""
        return [self.lane(queue, MAX_PRIORITY - i // 2, i % 2 == 1) for i in range(LANES)]

    def takes(self, queue: str) -> str:
        """``P:q:{queue}:takes``: how many jobs the queue handed out (``take.lua``
        counts them to give lower priorities their share turns)."""
        return f"{self.prefix}:q:{queue}:takes"

    def delayed(self, queue: str) -> str:
        """``P:q:{queue}:delayed``: retries waiting out their backoff."""
        return f"{self.prefix}:q:{queue}:delayed"

    def flow_jobs(self, flow_id: str) -> str:
        """``P:flow:{flowId}:jobs``: one field per job of the flow."""
        return f"{self.prefix}:flow:{flow_id}:jobs"

    @property
    def completions(self) -> str:
        """``P:completions``: outcome records read by the engine."""
        return f"{self.prefix}:completions"

    @property
    def cancel(self) -> str:
        """``P:cancel``: pub/sub channel of job ids to stop."""
        return f"{self.prefix}:cancel"

    @property
    def workers(self) -> str:
        """``P:workers``: heartbeats."""
        return f"{self.prefix}:workers"

    @property
    def delayed_queues(self) -> str:
        """``P:queues:delayed``: names of queues that have had delayed jobs (the engine
        promotes due retries of each)."""
        return f"{self.prefix}:queues:delayed"

    @property
    def config(self) -> str:
        """``P:config``: the engine's published settings (``leaseMs``, ``maxStalled``)."""
        return f"{self.prefix}:config"


#: Largest map element index the engine writes (a ``u32``).
MAX_INDEX = 0xFFFF_FFFF


class EnvelopeError(ValueError):
    """A stream entry that is not a job this code can run; it gets removed."""


@dataclass(frozen=True)
class Envelope:
    """A job as it travels through Redis (envelope version 1)."""

    id: str
    flow_id: str
    node: str
    attempt: int
    handler: str
    queue: str
    data: Any
    parents: dict[str, Any]
    timeout_ms: int | None
    max_stalled: int
    enqueued_at_ms: int
    #: On an element of a map node: its element of the mapped array (``None`` for a
    #: JSON ``null`` element and on every other job; :attr:`index` tells them apart).
    item: Any = None
    #: On an element of a map node: its position in the array, from 0; ``None`` on
    #: every other job.
    index: int | None = None
    #: 0 (lowest) to 9 (highest); what decided its lane. 5 when the envelope has none.
    priority: int = DEFAULT_PRIORITY
    #: The W3C trace context the handler's span continues; ``None`` when the
    #: envelope has none.
    traceparent: Optional[str] = None

    @property
    def field(self) -> str:
        """The job's field ``{node}:{attempt}`` in its flow's jobs hash."""
        return f"{self.node}:{self.attempt}"


def _bad(name: str, what: str) -> EnvelopeError:
    return EnvelopeError(f"field {name!r} missing or not {what}")


def parse_envelope(raw: bytes | str | None) -> Envelope:
    """Decodes an envelope, refusing what the protocol says to refuse.

    Unknown fields are ignored (adding a field is compatible); a missing or unknown
    ``v``, or a missing or mistyped required field, raises :class:`EnvelopeError`.
    Checks are written out inline: this runs for every job.
    """
    if raw is None:
        raise EnvelopeError("no envelope field")
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise EnvelopeError(f"envelope is not JSON: {e}") from None
    if type(obj) is not dict:
        raise EnvelopeError("envelope is not a JSON object")
    get = obj.get
    if get("v") != ENVELOPE_VERSION or type(get("v")) is not int:
        raise EnvelopeError(f"unsupported envelope version {get('v')!r} (this worker reads 1)")
    job_input = get("input")
    if type(job_input) is not dict:
        raise _bad("input", "an object")
    parents = job_input.get("parents")
    if parents is None:
        parents = {}
    elif type(parents) is not dict:
        raise _bad("input.parents", "an object")
    # A map element's input also has "item" (any JSON, null included) and "index".
    item = index = None
    if "item" in job_input:
        item, index = job_input["item"], job_input.get("index")
        if type(index) is not int or not 0 <= index <= MAX_INDEX:
            raise _bad("input.index", "an integer >= 0 (the input has an item)")
    timeout = get("timeoutMs")
    if timeout is not None and (type(timeout) is not int or timeout < 0):
        raise _bad("timeoutMs", "a non-negative integer")
    attempt = get("attempt")
    if type(attempt) is not int or attempt < 1:
        raise _bad("attempt", "an integer >= 1")
    max_stalled = get("maxStalled")
    if type(max_stalled) is not int or max_stalled < 0:
        raise _bad("maxStalled", "a non-negative integer")
    priority = get("priority", DEFAULT_PRIORITY)
    if type(priority) is not int or not 0 <= priority <= MAX_PRIORITY:
        raise _bad("priority", f"an integer from 0 to {MAX_PRIORITY}")
    job_id, flow_id, node, handler, queue = get("id"), get("flowId"), get("node"), get("handler"), get("queue")
    for name, value in (("id", job_id), ("flowId", flow_id), ("node", node), ("handler", handler),
                        ("queue", queue)):
        if type(value) is not str:
            raise _bad(name, "a string")
    enqueued = get("enqueuedAtMs", 0)
    traceparent = get("traceparent")
    if traceparent is not None and type(traceparent) is not str:
        raise _bad("traceparent", "a string")
    return Envelope(
        id=cast(str, job_id),
        flow_id=cast(str, flow_id),
        node=cast(str, node),
        attempt=attempt,
        handler=cast(str, handler),
        queue=cast(str, queue),
        data=job_input.get("data"),
        parents=parents,
        timeout_ms=timeout,
        max_stalled=max_stalled,
        enqueued_at_ms=enqueued if type(enqueued) is int else 0,
        item=item,
        index=index,
        priority=priority,
        traceparent=traceparent,
    )


def _dumps(value: Any) -> str:
    # Compact, and NaN/Infinity refused: the engine's JSON parser rejects them.
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def completed(result: Any) -> str:
    """The outcome JSON of a job that returned ``result``; raises ``ValueError`` or
    ``TypeError`` when the result is not JSON."""
    return '{"kind":"completed","result":' + _dumps(result) + "}"


def failed(message: str, retryable: bool, cause: str | None = None) -> str:
    """The outcome JSON of a failed job; ``cause`` (``"stalled"`` or ``"timedOut"``)
    says why when it is more than the handler's error, and the engine shows it as
    the attempt's outcome."""
    if cause is None:
        return _dumps({"kind": "failed", "message": message, "retryable": retryable})
    return _dumps({"kind": "failed", "message": message, "retryable": retryable, "cause": cause})


def progress(value: Any) -> str:
    """The outcome JSON of a progress report; raises when ``value`` is not JSON."""
    return '{"kind":"progress","progress":' + _dumps(value) + "}"


#: The outcome JSON of a job a worker began, without the worker's name.
STARTED = '{"kind":"started"}'


def started(worker: str | None = None) -> str:
    """The outcome JSON of a job a worker began; ``worker`` (its consumer name) is
    kept by the engine in the node's attempt history."""
    return STARTED if worker is None else _dumps({"kind": "started", "worker": worker})


def record_args(envelope: Envelope, outcome: str) -> list[str | int]:
    """The completion record's field/value pairs, as ``report.lua`` takes them."""
    return [
        "v", COMPLETION_VERSION,
        "flow", envelope.flow_id,
        "node", envelope.node,
        "attempt", envelope.attempt,
        "job", envelope.id,
        "outcome", outcome,
    ]  # fmt: skip


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


#: ``"1"`` and ``"0"`` (the ``final`` argument of ``report.lua``) as RESP bulk strings.
_FINAL = {True: _bulk(b"1"), False: _bulk(b"0")}
#: The constant arguments between the keys and the entry id, and of the record.
_GROUPS = _bulk(WORKERS_GROUP.encode()) + _bulk(ENGINE_GROUP.encode())
_MIDDLE = (
    _bulk(b"v") + _bulk(str(COMPLETION_VERSION).encode()) + _bulk(b"flow") + b"$%d\r\n%s\r\n"
    + _bulk(b"node") + b"$%d\r\n%s\r\n" + _bulk(b"attempt") + b"$%d\r\n%s\r\n"
    + _bulk(b"job") + b"$%d\r\n%s\r\n" + _bulk(b"outcome")
)
#: Arguments of a report command: EVALSHA, sha, 3, three keys, two groups, entry id,
#: field, final, then six record pairs.
_REPORT_ARGS = 23


@dataclass(frozen=True)
class ReportWire:
    """The parts of a job's ``EVALSHA report.lua`` command that do not change between
    its reports, encoded once in RESP (the Redis wire format).

    Encoding a 23-argument command with redis-py costs more than everything else a
    report needs; a job's started and final reports share everything but the
    ``final`` flag and the outcome, so those are spliced in as bytes.
    """

    head: bytes
    middle: bytes

    @classmethod
    def of(cls, sha: str, keys: Keys, stream: str, entry_id: str, envelope: Envelope) -> "ReportWire":
        """The report command of the job held as entry ``entry_id`` of the lane stream
        ``stream``."""
        hash_key = keys.flow_jobs(envelope.flow_id).encode()
        entry = entry_id.encode()
        field = envelope.field.encode()
        flow = envelope.flow_id.encode()
        node = envelope.node.encode()
        attempt = str(envelope.attempt).encode()
        job = envelope.id.encode()
        return cls(
            _head(sha, keys.completions, stream) + _bulk(hash_key) + _GROUPS + _bulk(entry) + _bulk(field),
            _MIDDLE % (len(flow), flow, len(node), node, len(attempt), attempt, len(job), job),
        )

    def command(self, final: bool, outcome: str) -> bytes:
        """The whole command for one report."""
        data = outcome.encode()
        return self.head + _FINAL[final] + self.middle + b"$%d\r\n%s\r\n" % (len(data), data)


@functools.lru_cache(maxsize=256)
def _head(sha: str, completions: str, stream: str) -> bytes:
    """The start of every report command on one lane stream (cached: a few lanes per
    queue are in use)."""
    args = [b"EVALSHA", sha.encode(), b"3", completions.encode(), stream.encode()]
    return b"*%d\r\n" % _REPORT_ARGS + b"".join(map(_bulk, args))


def stalled_message(times_delivered: int, max_stalled: int, lease_ms: int) -> str:
    """The failure message of a job reclaimed more often than ``maxStalled`` allows.

    ``times_delivered`` counts the first delivery too, so the job was claimed from
    dead workers ``times_delivered - 1`` times; it is stalled when that exceeds
    ``max_stalled``.
    """
    return (
        f"job stalled: claimed {times_delivered - 1} times from workers that stopped "
        f"responding, more than maxStalled {max_stalled} allows (lease {lease_ms} ms)"
    )


def is_stalled(times_delivered: int, max_stalled: int) -> bool:
    """True when a job delivered this often was claimed more than ``max_stalled`` times."""
    return times_delivered > max_stalled + 1
