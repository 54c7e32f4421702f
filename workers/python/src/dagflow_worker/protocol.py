"""The wire side of dagflow's Redis queue protocol (``docs/PROTOCOL.md``): key names,
the job envelope, outcomes and completion records.

Everything here is pure (no I/O), so it is unit-tested without Redis. Key names are
built only here, as the engine builds them only in ``actors/src/queue/keys.rs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

#: The key prefix used when none is configured (the engine's default too).
DEFAULT_PREFIX = "dagflow"
#: The consumer group on every queue stream.
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

    def queue(self, queue: str) -> str:
        """``P:q:{queue}``: ready and running jobs of a queue (group ``workers``)."""
        return f"{self.prefix}:q:{queue}"

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

    @property
    def field(self) -> str:
        """The job's field ``{node}:{attempt}`` in its flow's jobs hash."""
        return f"{self.node}:{self.attempt}"


def _require(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(name)
    # bool is an int in Python; a boolean is never a valid number here.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EnvelopeError(f"field {name!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


def parse_envelope(raw: bytes | str | None) -> Envelope:
    """Decodes an envelope, refusing what the protocol says to refuse.

    Unknown fields are ignored (adding a field is compatible); a missing or unknown
    ``v``, or a missing required field, raises :class:`EnvelopeError`.
    """
    if raw is None:
        raise EnvelopeError("no envelope field")
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise EnvelopeError(f"envelope is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise EnvelopeError("envelope is not a JSON object")
    if obj.get("v") != ENVELOPE_VERSION:
        raise EnvelopeError(f"unsupported envelope version {obj.get('v')!r} (this worker reads 1)")
    job_input = obj.get("input")
    if not isinstance(job_input, dict):
        raise EnvelopeError("field 'input' missing or not an object")
    parents = job_input.get("parents")
    if parents is None:
        parents = {}
    if not isinstance(parents, dict):
        raise EnvelopeError("input.parents is not an object")
    timeout = obj.get("timeoutMs")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
        raise EnvelopeError("field 'timeoutMs' is not a non-negative integer")
    attempt = _require(obj, "attempt", int)
    if attempt < 1:
        raise EnvelopeError("field 'attempt' is below 1")
    max_stalled = _require(obj, "maxStalled", int)
    enqueued = obj.get("enqueuedAtMs", 0)
    return Envelope(
        id=_require(obj, "id", str),
        flow_id=_require(obj, "flowId", str),
        node=_require(obj, "node", str),
        attempt=attempt,
        handler=_require(obj, "handler", str),
        queue=_require(obj, "queue", str),
        data=job_input.get("data"),
        parents=parents,
        timeout_ms=timeout,
        max_stalled=max_stalled,
        enqueued_at_ms=enqueued if isinstance(enqueued, int) else 0,
    )


def _dumps(value: Any) -> str:
    # Compact, and NaN/Infinity refused: the engine's JSON parser rejects them.
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def completed(result: Any) -> str:
    """The outcome JSON of a job that returned ``result``; raises ``ValueError`` or
    ``TypeError`` when the result is not JSON."""
    return '{"kind":"completed","result":' + _dumps(result) + "}"


def failed(message: str, retryable: bool) -> str:
    """The outcome JSON of a failed job."""
    return _dumps({"kind": "failed", "message": message, "retryable": retryable})


def progress(value: Any) -> str:
    """The outcome JSON of a progress report; raises when ``value`` is not JSON."""
    return '{"kind":"progress","progress":' + _dumps(value) + "}"


#: The outcome JSON of a job a worker began.
STARTED = '{"kind":"started"}'


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
