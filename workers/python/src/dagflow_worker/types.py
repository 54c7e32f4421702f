"""Types of the REST and WebSocket API: the flow spec a client submits and the views
and events the server sends (``GET /openapi.json`` is the reference).

TypedDicts, so the values are the plain dicts ``json`` produces and type checkers see
their keys. Keys marked optional are absent from the JSON when empty, as the server
sends them.
"""

from __future__ import annotations

import sys
from typing import Any, Literal, TypedDict, Union

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pragma: no cover - 3.10
    from typing_extensions import NotRequired

#: Where a node is. ``waiting``: a wait node waits for its signal or its time;
#: ``active`` on a map node: its elements run; ``skipped``: its trigger rule or its
#: condition ruled it out (``reason`` says which).
NodeStatus = Literal["pending", "queued", "active", "waiting", "completed", "failed", "skipped", "cancelled"]
#: What a node's parents' outcomes must be for it to run (default ``allSuccess``).
TriggerRule = Literal["allSuccess", "allDone", "oneSuccess", "noneFailed", "allFailed"]
#: Where a flow is.
FlowStatus = Literal["running", "completed", "failed", "cancelled"]


class Backoff(TypedDict):
    """Delay between attempts: ``fixed`` waits ``delayMs`` each time, ``exponential``
    ``delayMs * 2^(attempt-1)``."""

    type: Literal["fixed", "exponential"]
    delayMs: int


class NodeOpts(TypedDict, total=False):
    """Per-node behaviour."""

    #: Total tries, the first included (default 1).
    attempts: int
    backoff: Backoff
    #: Time limit of one try; past it the try fails (retryable).
    timeoutMs: int
    #: Children still run, with ``{"error": ...}`` in this node's slot, if it fails.
    continueOnFailure: bool
    #: How often the job may be reclaimed from a vanished worker before it fails as stalled.
    maxStalled: int


#: A dynamic fan-out: the node runs once per element of an array in a parent's
#: result. Each element is a job of its own named ``{node}[{index}]`` (e.g.
#: ``resize[17]``) with the node's handler, queue and opts; its handler sees the
#: element as ``job.item`` and its position as ``job.index``. The node completes with
#: the list of its elements' results, in order. ``from`` (a Python keyword, hence the
#: functional form) is the parent whose result holds the array; ``path`` a JSON
#: Pointer into it (``""``, the default, is the whole result); ``maxItems`` the most
#: elements (more fail the node; default 10000); ``maxParallel`` the most elements
#: queued or running at once (unlimited by default).
MapSpec = TypedDict("MapSpec", {
    "from": str,
    "path": NotRequired[str],
    "maxItems": NotRequired[int],
    "maxParallel": NotRequired[int],
})


class WaitSpec(TypedDict, total=False):
    """A node that needs no worker (it never reaches a queue): it waits for a
    signal (:meth:`dagflow_worker.Client.signal`), for ``forMs`` or until ``until``.
    Exactly one of ``signal``, ``forMs``, ``until``."""

    #: Completes when a signal delivers a payload, which becomes its result.
    signal: str
    #: With ``signal``: fail (or take ``default``) after this many ms.
    timeoutMs: int
    #: With ``signal`` and ``timeoutMs``: the result at the timeout instead of failing.
    default: Any
    #: A durable timer: completes this many ms after the node became ready.
    forMs: int
    #: A durable timer: completes at this time, ms since the epoch.
    until: int


class NodeSpec(TypedDict):
    """One node of a flow spec."""

    #: Unique within the flow.
    name: str
    parents: NotRequired[list[str]]
    children: NotRequired[list[str]]
    #: Defaults to ``name``.
    handler: NotRequired[str]
    #: Defaults to ``default``; ASCII letters, digits, ``-``, ``_``, ``.``.
    queue: NotRequired[str]
    #: The node's own input (``job.data``).
    data: NotRequired[Any]
    opts: NotRequired[NodeOpts]
    continueOnFailure: NotRequired[bool]
    #: A CEL condition over ``parents`` and ``data``, e.g. ``parents.score.value > 10``;
    #: false skips the node.
    when: NotRequired[str]
    trigger: NotRequired[TriggerRule]
    #: Run once per element of an array in a parent's result.
    map: NotRequired[MapSpec]
    #: Wait for a signal or a time instead of running a job.
    wait: NotRequired[WaitSpec]
    #: 0 (lowest) to 9 (highest): a queue hands out jobs of higher priority first.
    #: Overrides the flow's ``opts.priority``; the default is 5.
    priority: NotRequired[int]
    #: At most ``limit`` jobs of the same key run at once, across every worker.
    concurrency: NotRequired["ConcurrencySpec"]
    #: At most ``limit`` jobs of the same key start per ``perMs``; the others wait.
    rateLimit: NotRequired["RateLimitSpec"]


class ConcurrencySpec(TypedDict):
    """A concurrency key: at most ``limit`` jobs (or flows) with the same key at once."""

    #: CEL giving the key, e.g. ``data.tenant`` (a flow's key: over ``name`` and ``data``).
    key: str
    limit: int
    #: At the limit: wait (``queue``, default), cancel the new one, or the oldest running one.
    strategy: NotRequired[Literal["queue", "cancelNewest", "cancelInProgress"]]


class RateLimitSpec(TypedDict):
    """At most ``limit`` jobs with the same key start per ``perMs``, evenly spaced."""

    #: CEL giving the key, e.g. ``'payments-api'``.
    key: str
    limit: int
    perMs: int


class FlowOpts(TypedDict, total=False):
    """Flow-wide behaviour."""

    onFailure: Literal["continue", "failFast"]
    #: The priority of every node that sets none (0 to 9, default 5).
    priority: int
    #: At most ``limit`` flows of the same key run at once.
    concurrency: ConcurrencySpec
    #: How long the flow is kept once it ended (``"90s"``, ``"7d"``, ``"forever"``);
    #: overrides the server's ``--retain-completed`` / ``--retain-failed``.
    retention: str


class FlowSpec(TypedDict):
    """What ``POST /flows`` takes."""

    nodes: list[NodeSpec]
    name: NotRequired[str]
    opts: NotRequired[FlowOpts]


class WaitView(TypedDict):
    """What a wait node waits for (its deadline, if any, is the node's ``dueAt``)."""

    kind: Literal["signal", "timer"]
    signal: NotRequired[str]
    timeoutMs: NotRequired[int]


#: A map node's source (``from``, ``path``) and how far its elements are: ``total``
#: once the map expanded, ``done`` ended, ``running`` queued or running, ``failed``
#: failed for good.
MapView = TypedDict("MapView", {
    "from": str,
    "path": str,
    "total": NotRequired[int],
    "done": int,
    "running": int,
    "failed": int,
})


class NodeView(TypedDict):
    """One node of a flow view."""

    name: str
    status: NodeStatus
    attempt: int
    queue: str
    handler: str
    parents: list[str]
    children: list[str]
    jobId: NotRequired[str]
    queuedAt: NotRequired[int]
    dueAt: NotRequired[int]
    startedAt: NotRequired[int]
    finishedAt: NotRequired[int]
    progress: NotRequired[Any]
    error: NotRequired[str]
    result: NotRequired[Any]
    #: Only in ``GET /flows/{id}/nodes/{name}``, once every parent is done: ``data``
    #: and ``parents``, and on a map element ``item`` and ``index``.
    input: NotRequired[Any]
    #: Why it was skipped (its trigger rule or its condition) or cancelled (its key).
    reason: NotRequired[str]
    trigger: NotRequired[TriggerRule]
    when: NotRequired[str]
    wait: NotRequired[WaitView]
    map: NotRequired[MapView]
    #: On a map element (``{map}[{index}]``): its map node, and its position.
    mapOf: NotRequired[str]
    index: NotRequired[int]
    #: 0 (lowest) to 9 (highest).
    priority: NotRequired[int]
    #: Its concurrency key and rate limit, with ``value``, the key its job runs under.
    concurrency: NotRequired["LimitView"]
    rateLimit: NotRequired["LimitView"]


class LimitView(TypedDict):
    """A node's concurrency key or rate limit as views show it."""

    key: str
    limit: int
    value: NotRequired[str]
    strategy: NotRequired[str]
    perMs: NotRequired[int]


class FlowView(TypedDict):
    """``GET /flows/{id}`` and WebSocket snapshots."""

    id: str
    name: str
    status: FlowStatus
    seq: int
    createdAt: int
    updatedAt: int
    finishedAt: NotRequired[int]
    #: Why the engine failed the flow (not a node's error).
    error: NotRequired[str]
    nodes: list[NodeView]


class FlowSummary(TypedDict):
    """A flow in ``GET /flows``."""

    id: str
    name: str
    status: FlowStatus
    seq: int
    createdAt: int
    updatedAt: int
    finishedAt: NotRequired[int]
    nodesTotal: int
    nodesDone: int


class FlowPage(TypedDict):
    """``GET /flows``."""

    flows: list[FlowSummary]
    nextCursor: NotRequired[str]


class SnapshotMessage(TypedDict):
    """The flow as it is when subscribing (and after ``lagged``)."""

    type: Literal["snapshot"]
    flow: FlowView


class UpdatedMessage(TypedDict):
    """One change (``type`` is ``flow:updated``); without ``node`` it is the flow's."""

    type: Literal["flow:updated"]
    flowId: str
    node: NotRequired[str]
    status: str
    attempt: int
    #: One more than the previous message's, no gaps.
    seq: int
    ts: int
    progress: NotRequired[Any]
    error: NotRequired[str]
    #: Why the node was skipped, on skip events.
    reason: NotRequired[str]


class LaggedMessage(TypedDict):
    """The client read too slowly; a fresh snapshot follows."""

    type: Literal["lagged"]
    missed: int


class ErrorMessage(TypedDict):
    """A frame the server could not act on; the connection stays open."""

    type: Literal["error"]
    message: str
    flowId: NotRequired[str]


#: What :meth:`dagflow_worker.Client.watch` yields.
WatchMessage = Union[SnapshotMessage, UpdatedMessage, LaggedMessage, ErrorMessage]

#: Flow statuses that end a flow.
TERMINAL_FLOW_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
