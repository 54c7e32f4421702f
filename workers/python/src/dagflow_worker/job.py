"""The job a handler receives."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal, Optional

from .protocol import Envelope, ReportWire

if TYPE_CHECKING:
    from .worker import Worker

#: Why a job was told to stop: a client cancelled its flow, it ran past its
#: ``timeoutMs``, or the worker shut down and its deadline passed.
StopReason = Literal["cancelled", "timeout", "shutdown"]


class Job:
    """One run of one node: what a handler gets.

    Delivery is at-least-once: a job may run again after a worker died or its lease
    expired, so make side effects idempotent, keyed by :attr:`id`, which is the same
    for every run of the same attempt.
    """

    __slots__ = (
        "envelope",
        "entry_id",
        "stream",
        "wire",
        "_worker",
        "_cancelled",
        "_stop",
        "_finished",
        "_task",
        "_timer",
        "_progress_report",
    )

    def __init__(self, envelope: Envelope, entry_id: str, stream: str, wire: ReportWire,
                 worker: "Worker") -> None:
        #: The decoded envelope.
        self.envelope = envelope
        #: The stream entry id: the delivery handle renewed and reported on.
        self.entry_id = entry_id
        #: The lane stream it was taken from (``P:q:{queue}:{priority}[:new]``), where
        #: it is renewed and reported.
        self.stream = stream
        #: Its report command's encoded parts.
        self.wire = wire
        self._worker = worker
        # Created on first use: most handlers never look at it, and an Event per job
        # is a measurable share of the per-job cost at thousands of jobs per second.
        self._cancelled: Optional[asyncio.Event] = None
        self._stop: Optional[StopReason] = None
        self._finished = False
        self._task: Optional["asyncio.Task[None]"] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._progress_report: Any = None

    @property
    def id(self) -> str:
        """``{flowId}:{node}:{attempt}``: the idempotency key of this attempt, stable
        across re-deliveries of it."""
        return self.envelope.id

    @property
    def flow_id(self) -> str:
        """The flow the job belongs to."""
        return self.envelope.flow_id

    @property
    def node(self) -> str:
        """The node's name in the flow."""
        return self.envelope.node

    @property
    def handler(self) -> str:
        """The handler name the node asked for."""
        return self.envelope.handler

    @property
    def queue(self) -> str:
        """The queue the job came from."""
        return self.envelope.queue

    @property
    def priority(self) -> int:
        """0 (lowest) to 9 (highest): the node's ``priority``, else its flow's
        ``opts.priority``, else 5. Jobs of higher priority are taken first."""
        return self.envelope.priority

    @property
    def attempt(self) -> int:
        """Which attempt this is, from 1; a retry is a new job with ``attempt + 1``."""
        return self.envelope.attempt

    @property
    def traceparent(self) -> Optional[str]:
        """The W3C trace context of this attempt (``00-{trace id}-{span id}-{flags}``):
        the attempt's span when the server exports traces (``--otlp-endpoint``), else
        the context the flow was created with; ``None`` when there is neither. With
        ``opentelemetry-api`` installed the worker already runs the handler in a span
        that is its child."""
        return self.envelope.traceparent

    @property
    def data(self) -> Any:
        """The node's own ``data`` from the flow spec; ``None`` when it has none."""
        return self.envelope.data

    @property
    def parents(self) -> dict[str, Any]:
        """Every parent's result by parent name. A parent that failed with
        ``continueOnFailure`` has ``{"error": "<message>"}`` in its slot."""
        return self.envelope.parents

    @property
    def item(self) -> Any:
        """On an element of a map node (:attr:`node` is ``{map}[{index}]``, e.g.
        ``resize[17]``): its element of the mapped array, any JSON value. ``None`` on
        every other job, and for a JSON ``null`` element: test :attr:`index` to tell
        an element from a plain job."""
        return self.envelope.item

    @property
    def index(self) -> Optional[int]:
        """On an element of a map node: its position in the array, from 0; ``None``
        on every other job. The map node's result is the list of its elements'
        results in this order."""
        return self.envelope.index

    @property
    def timeout_ms(self) -> Optional[int]:
        """The node's ``timeoutMs``: after this long :attr:`cancelled` is set, the
        handler's task is cancelled and the attempt fails (retryable)."""
        return self.envelope.timeout_ms

    @property
    def cancelled(self) -> asyncio.Event:
        """Set when the job must stop: its flow was cancelled, it ran past
        ``timeoutMs``, or the worker's shutdown deadline passed. See :attr:`stop_reason`.

        A handler that awaits (network, ``asyncio.sleep``) is also interrupted by
        ``asyncio.CancelledError`` (at once on timeout and shutdown, after the worker's
        ``cancel_grace`` on cancel); code running in a thread should poll
        ``job.cancelled.is_set()``.
        """
        if self._cancelled is None:
            self._cancelled = asyncio.Event()
            if self._stop is not None:
                self._cancelled.set()
        return self._cancelled

    @property
    def stop_reason(self) -> Optional[StopReason]:
        """Why :attr:`cancelled` was set, or ``None`` while the job may go on."""
        return self._stop

    async def progress(self, value: Any) -> None:
        """Reports progress (any JSON value); the node's ``progress`` shows it and
        subscribers get an event.

        Returns at once: the report is written in the background, in order with the
        job's other reports. Reports not yet written when the next one comes are
        replaced by it, so a tight loop of progress calls costs nothing extra.
        Raises ``TypeError``/``ValueError`` when ``value`` is not JSON-serializable.
        """
        self._worker._report_progress(self, value)

    def _request_stop(self, reason: StopReason) -> None:
        """Records why the job must stop and fires :attr:`cancelled` (first reason wins)."""
        if self._stop is None:
            self._stop = reason
            if self._cancelled is not None:
                self._cancelled.set()

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, handler={self.handler!r}, entry={self.entry_id!r})"
