"""Traces: the W3C ``traceparent`` a job's envelope carries, and, when the optional
``opentelemetry-api`` package is installed, a span around each handler run that is
a child of it, so that the handler's own spans join the flow's trace.

The package is optional (``pip install dagflow-worker[otel]``): without it the
worker runs exactly as before and :attr:`Job.traceparent` is there either way.
With it but without an SDK configured, its tracer is a no-op. The span's parent is
built from the envelope's traceparent directly, so no global propagator is needed.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

if TYPE_CHECKING:
    from .job import Job

try:
    from opentelemetry import trace as _trace
except ImportError:  # the optional dependency is absent: no spans
    _trace = None  # type: ignore[assignment]

#: Whether handler runs get a span (``opentelemetry-api`` is importable).
AVAILABLE = _trace is not None

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


class TraceParent(NamedTuple):
    """What a valid traceparent holds."""

    trace_id: int
    span_id: int
    #: Bit 0: sampled.
    trace_flags: int


def parse_traceparent(value: Optional[str]) -> Optional[TraceParent]:
    """Parses a W3C traceparent (``00-{trace id}-{span id}-{flags}``); ``None`` when
    it is malformed, names an all-zero id or uses the forbidden version ``ff``."""
    if value is None:
        return None
    m = _TRACEPARENT.match(value.strip())
    if m is None or m.group(1) == "ff":
        return None
    trace_id, span_id = int(m.group(2), 16), int(m.group(3), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return TraceParent(trace_id, span_id, int(m.group(4), 16) & 1)


def handler_span(job: "Job") -> AbstractContextManager[Any]:
    """A span named after the handler, current while it runs, a child of the job's
    traceparent (a root span when it has none or a malformed one). Exceptions are
    recorded on it and passed on. Only call when :data:`AVAILABLE`."""
    assert _trace is not None
    parent = parse_traceparent(job.traceparent)
    context = None
    if parent is not None:
        remote = _trace.SpanContext(parent.trace_id, parent.span_id, is_remote=True,
                                    trace_flags=_trace.TraceFlags(parent.trace_flags))
        context = _trace.set_span_in_context(_trace.NonRecordingSpan(remote))
    tracer = _trace.get_tracer("dagflow-worker")
    return tracer.start_as_current_span(
        job.handler,
        context=context,
        kind=_trace.SpanKind.CONSUMER,
        attributes={
            "dagflow.job.id": job.id,
            "dagflow.flow.id": job.flow_id,
            "dagflow.node": job.node,
            "dagflow.attempt": job.attempt,
            "dagflow.queue": job.queue,
        },
    )
