"""Traces in the Python worker, against a real redis-server with jobs added by the
engine's own ``enqueue.lua``: the envelope's traceparent reaches the handler as
``job.traceparent``, and with ``opentelemetry-api`` installed (the ``otel`` extra)
the handler runs in a span that is the traceparent's child, exported through the
real SDK with its in-memory exporter."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from conftest import Enqueuer, RedisServer, completion_records, eventually, running_worker
from dagflow_worker import Fatal, Job, Worker, tracing
from dagflow_worker.protocol import EnvelopeError, Keys, parse_envelope

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

EXPORTER = InMemorySpanExporter()
# The global provider can be set once per process; every test here shares it.
trace.set_tracer_provider(TracerProvider())
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(EXPORTER))  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _fresh_exporter() -> None:
    EXPORTER.clear()


async def _run(r: redis.asyncio.Redis, url: str, prefix: str, jobs: list[tuple[str, Any]],
               fail: bool = False) -> dict[str, Any]:
    """Runs one job per ``(node, traceparent)``; returns each node's traceparent as its
    handler saw it."""
    seen: dict[str, Any] = {}

    async def handler(job: Job) -> Any:
        seen[job.node] = job.traceparent
        # The worker's span is current while the handler runs.
        seen[job.node + ".current"] = trace.get_current_span().get_span_context().trace_id
        if fail:
            raise Fatal("it broke")
        return None

    keys = Keys(prefix)
    enq = Enqueuer(r, keys)
    await enq.add(*[enq.envelope(node, "h", "py", traceparent=tp) for node, tp in jobs])
    worker = Worker(url, {"py": 4}, {"h": handler}, prefix=prefix)

    async def finals() -> bool:
        recs = await completion_records(r, keys)
        return sum(rec["outcome"]["kind"] in ("completed", "failed") for rec in recs) == len(jobs)

    async with running_worker(worker):
        await eventually(finals, what="every job's final record")
    return seen


def _span(node: str) -> Any:
    return next(s for s in EXPORTER.get_finished_spans() if s.attributes["dagflow.node"] == node)


async def test_the_handler_gets_the_traceparent_and_runs_in_its_child_span(
        r: redis.asyncio.Redis, shared_redis: RedisServer, prefix: str) -> None:
    assert tracing.AVAILABLE
    seen = await _run(r, shared_redis.url, prefix, [("traced", PARENT)])
    assert seen["traced"] == PARENT
    span = _span("traced")
    assert span.name == "h"
    assert span.context.trace_id == 0x4bf92f3577b34da6a3ce929d0e0e4736
    assert span.parent is not None and span.parent.span_id == 0x00f067aa0ba902b7
    assert span.parent.is_remote
    assert seen["traced.current"] == span.context.trace_id
    assert span.attributes["dagflow.attempt"] == 1
    assert span.status.status_code != StatusCode.ERROR


async def test_no_or_a_malformed_traceparent_gives_a_root_span(
        r: redis.asyncio.Redis, shared_redis: RedisServer, prefix: str) -> None:
    seen = await _run(r, shared_redis.url, prefix, [("plain", None), ("junk", "00-xyz-01")])
    assert seen["plain"] is None
    assert seen["junk"] == "00-xyz-01"
    assert _span("plain").parent is None
    assert _span("junk").parent is None


async def test_a_failure_is_recorded_on_the_span(
        r: redis.asyncio.Redis, shared_redis: RedisServer, prefix: str) -> None:
    await _run(r, shared_redis.url, prefix, [("boom", PARENT)], fail=True)
    span = _span("boom")
    assert span.status.status_code == StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_traceparent_parsing() -> None:
    assert tracing.parse_traceparent(PARENT) == (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1)
    for bad in (None, "", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"):
        assert tracing.parse_traceparent(bad) is None, bad


def test_the_envelope_field_must_be_a_string() -> None:
    env = {"v": 1, "id": "f:n:1", "flowId": "f", "node": "n", "attempt": 1, "handler": "n",
           "queue": "q", "input": {}, "maxStalled": 1, "enqueuedAtMs": 1}
    import json
    assert parse_envelope(json.dumps({**env, "traceparent": PARENT})).traceparent == PARENT
    assert parse_envelope(json.dumps(env)).traceparent is None
    with pytest.raises(EnvelopeError, match="traceparent"):
        parse_envelope(json.dumps({**env, "traceparent": 7}))
