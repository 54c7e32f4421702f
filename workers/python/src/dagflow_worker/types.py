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

#: Where a node is.
NodeStatus = Literal["pending", "queued", "active", "completed", "failed", "skipped", "cancelled"]
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


class FlowOpts(TypedDict, total=False):
    """Flow-wide behaviour."""

    onFailure: Literal["continue", "failFast"]


class FlowSpec(TypedDict):
    """What ``POST /flows`` takes."""

    nodes: list[NodeSpec]
    name: NotRequired[str]
    opts: NotRequired[FlowOpts]


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
    #: Only in ``GET /flows/{id}/nodes/{name}``, once every parent is done.
    input: NotRequired[Any]


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
