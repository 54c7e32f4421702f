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


async def test_a_real_server_hands_its_exported_attempt_span_to_the_handler(
        shared_redis: RedisServer, prefix: str, dagflow_server: Any) -> None:
    """``dagflow serve --otlp-endpoint`` exporting to a real HTTP receiver started
    here; a flow created with a ``traceparent`` header; its node run by this worker.
    The handler's span is the child of the engine's attempt span, which reached the
    collector."""
    import asyncio
    import http.server
    import threading

    import httpx

    bodies: list[bytes] = []

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path == "/v1/traces":
                bodies.append(body)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        server = dagflow_server(extra_args=("--otlp-endpoint", f"http://127.0.0.1:{sink.server_port}"),
                                env={"OTEL_BSP_SCHEDULE_DELAY": "100"})

        async def traced(job: Job) -> Any:
            return job.traceparent

        worker = Worker(shared_redis.url, {"py-traced": 1}, {"traced": traced}, prefix=prefix)
        async with running_worker(worker), httpx.AsyncClient(base_url=server.base_url) as http:
            created = await http.post("/flows", headers={"traceparent": caller}, json={
                "name": "traced", "nodes": [{"name": "src", "handler": "noop"},
                                            {"name": "traced", "queue": "py-traced", "parents": ["src"]}]})
            assert created.status_code == 201, created.text
            flow_id = created.json()["flowId"]

            async def ended() -> Any:
                flow = (await http.get(f"/flows/{flow_id}")).json()
                return flow if flow["status"] != "running" else None

            flow = await eventually(ended, what="the flow to end")
        assert flow["status"] == "completed", flow
        result = next(n for n in flow["nodes"] if n["name"] == "traced")["result"]
        seen = tracing.parse_traceparent(result)
        assert seen is not None
        assert seen.trace_id == 0x0af7651916cd43dd8448eb211c80319c, "the caller's trace"
        assert seen.span_id != 0xb7ad6b7169203331, "a span of the engine's"
        span = _span("traced")
        assert span.parent is not None and span.parent.span_id == seen.span_id
        span_bytes = seen.span_id.to_bytes(8, "big")
        for _ in range(200):
            if any(span_bytes in b for b in bodies):
                break
            await asyncio.sleep(0.05)
        assert any(span_bytes in b for b in bodies), "the attempt span reached the collector"
    finally:
        sink.shutdown()
