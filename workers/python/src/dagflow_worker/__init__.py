"""dagflow_worker: run dagflow nodes in Python, and submit and follow flows.

- :class:`Worker` serves dagflow queues with async handlers over Redis, speaking the
  protocol of ``docs/PROTOCOL.md`` (leases, reclaim, cancel, timeouts, progress,
  heartbeats, reports that are never lost).
- :class:`Client` talks to a dagflow server's REST and WebSocket API.
"""

from .client import Client
from .errors import DagflowError, Fatal, JobError, Retryable
from . import tracing
from .job import Job, StopReason
from .types import (
    AttemptOutcome,
    AttemptView,
    Backoff,
    FlowOpts,
    FlowPage,
    FlowSpec,
    FlowStatus,
    FlowSummary,
    FlowView,
    MapSpec,
    MapView,
    NodeOpts,
    NodeSpec,
    NodeStatus,
    NodeView,
    TriggerRule,
    UpdatedMessage,
    WaitSpec,
    WaitView,
    WatchMessage,
)
from .worker import Handler, Worker

__version__ = "0.1.0"

__all__ = [
    "AttemptOutcome",
    "AttemptView",
    "Backoff",
    "Client",
    "DagflowError",
    "Fatal",
    "FlowOpts",
    "FlowPage",
    "FlowSpec",
    "FlowStatus",
    "FlowSummary",
    "FlowView",
    "Handler",
    "Job",
    "JobError",
    "MapSpec",
    "MapView",
    "NodeOpts",
    "NodeSpec",
    "NodeStatus",
    "NodeView",
    "Retryable",
    "StopReason",
    "TriggerRule",
    "UpdatedMessage",
    "WaitSpec",
    "WaitView",
    "WatchMessage",
    "Worker",
]
