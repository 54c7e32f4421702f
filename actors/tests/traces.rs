//! Traces end to end: a real engine (Redis, sled, actors, workers) exporting to the
//! OpenTelemetry SDK's in-memory exporter. The spans' parent links must form the
//! flow's DAG as ARCHITECTURE.md documents it: one trace per flow, each attempt's
//! span a child of the flow's span, linked to the spans of its parents' attempts,
//! and every handler handed the `traceparent` of its own attempt's span.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use dagflow_actors::trace::{
    attempt_span_id, flow_span_id, flow_trace_id, format_traceparent, parse_traceparent,
};
use dagflow_actors::{handler_fn, testing, FlowId, FlowStatus, JobError};
use opentelemetry::trace::{SpanId, Status, TraceId};
use opentelemetry::Value as OtelValue;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;

/// The caller's context of the tests that continue a trace.
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A provider that hands every ended span to `exporter` at once.
fn in_memory() -> (SdkTracerProvider, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (provider, exporter)
}

/// What handlers saw: `(node, attempt)` → the envelope's traceparent.
type Seen = Arc<Mutex<HashMap<(String, u32), Option<String>>>>;

/// A handler that records its traceparent and fails retryably while
/// `attempt < data.failUntil`.
fn recording(seen: Seen) -> impl dagflow_actors::Handler {
    handler_fn(move |ctx| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock()
                .unwrap()
                .insert((ctx.node.clone(), ctx.attempt), ctx.traceparent.clone());
            let fail_until = ctx
                .data
                .get("failUntil")
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            if u64::from(ctx.attempt) < fail_until {
                return Err(JobError::retryable(format!(
                    "attempt {} fails",
                    ctx.attempt
                )));
            }
            Ok::<_, JobError>(json!({"node": ctx.node}))
        }
    })
}

/// Waits until the exporter holds `n` spans, and returns them.
async fn exported(exporter: &InMemorySpanExporter, n: usize) -> Vec<SpanData> {
    eventually(&format!("{n} spans"), || async {
        exporter.get_finished_spans().unwrap().len() >= n
    })
    .await;
    // Nothing more arrives: the count is exact, not a lower bound.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), n, "{:#?}", names(&spans));
    spans
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a OtelValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// The span of `node`'s `attempt`, found by its attributes.
fn attempt<'a>(spans: &'a [SpanData], node: &str, attempt: i64) -> &'a SpanData {
    spans
        .iter()
        .find(|s| {
            attr(s, "dagflow.node").map(|v| v.as_str().to_string()) == Some(node.to_owned())
                && attr(s, "dagflow.attempt") == Some(&OtelValue::I64(attempt))
        })
        .unwrap_or_else(|| panic!("no span for {node} attempt {attempt}: {:#?}", names(spans)))
}

fn linked(span: &SpanData) -> Vec<SpanId> {
    let mut ids: Vec<SpanId> = span
        .links
        .iter()
        .map(|l| l.span_context.span_id())
        .collect();
    ids.sort_by_key(|id| id.to_bytes());
    ids
}

fn sorted(mut ids: Vec<SpanId>) -> Vec<SpanId> {
    ids.sort_by_key(|id| id.to_bytes());
    ids
}

/// The expected traceparent of an attempt of a flow in `trace`.
fn expected_traceparent(trace: TraceId, flow: FlowId, node: &str, attempt: u32) -> String {
    format!("00-{trace}-{}-01", attempt_span_id(flow, node, attempt))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamonds_spans_form_its_dag() {
    let (provider, exporter) = in_memory();
    let seen = Seen::default();
    let engine = builder(&testing::unique_prefix())
        .queue("default", 4)
        .handler("rec", recording(Arc::clone(&seen)))
        .tracer_provider(provider)
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({
                "name": "diamond",
                "nodes": [
                    {"name": "a", "handler": "rec"},
                    {"name": "b", "handler": "rec", "parents": ["a"]},
                    {"name": "c", "handler": "rec", "parents": ["a"]},
                    {"name": "d", "handler": "rec", "parents": ["b", "c"]}
                ]
            })),
            None,
        )
        .await
        .unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    let spans = exported(&exporter, 5).await;
    let trace = flow_trace_id(id);
    for span in &spans {
        assert_eq!(span.span_context.trace_id(), trace, "one trace per flow");
    }
    let flow = spans.iter().find(|s| s.name == "diamond").unwrap();
    assert_eq!(flow.span_context.span_id(), flow_span_id(id));
    assert_eq!(
        flow.parent_span_id,
        SpanId::INVALID,
        "a root without a caller"
    );
    assert_eq!(flow.status, Status::Ok);
    let span_of = |node: &str| attempt(&spans, node, 1);
    for node in ["a", "b", "c", "d"] {
        let span = span_of(node);
        assert_eq!(span.span_context.span_id(), attempt_span_id(id, node, 1));
        assert_eq!(
            span.parent_span_id,
            flow_span_id(id),
            "{node} under the flow"
        );
        assert_eq!(span.status, Status::Ok);
        assert!(span.start_time >= flow.start_time && span.end_time <= flow.end_time);
        assert!(attr(span, "dagflow.queue_wait_ms").is_some(), "{node}");
        assert!(attr(span, "dagflow.run_ms").is_some(), "{node}");
        assert_eq!(
            attr(span, "dagflow.outcome").map(|v| v.as_str().to_string()),
            Some("completed".to_owned())
        );
        // The handler was handed its own attempt's span.
        assert_eq!(
            seen.lock().unwrap()[&(node.to_owned(), 1)],
            Some(expected_traceparent(trace, id, node, 1)),
            "{node}"
        );
    }
    // The DAG's edges are the links: each span names its parents' spans.
    assert!(linked(span_of("a")).is_empty());
    assert_eq!(linked(span_of("b")), vec![attempt_span_id(id, "a", 1)]);
    assert_eq!(linked(span_of("c")), vec![attempt_span_id(id, "a", 1)]);
    assert_eq!(
        linked(span_of("d")),
        sorted(vec![
            attempt_span_id(id, "b", 1),
            attempt_span_id(id, "c", 1)
        ])
    );
    // A child starts after its parents ended (it was queued when they completed).
    assert!(span_of("d").start_time >= span_of("b").end_time);
    assert!(span_of("d").start_time >= span_of("c").end_time);
    let stats = engine.trace_stats().unwrap();
    assert_eq!(stats.spans.load(std::sync::atomic::Ordering::Relaxed), 5);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_node_has_a_span_per_attempt() {
    let (provider, exporter) = in_memory();
    let seen = Seen::default();
    let engine = builder(&testing::unique_prefix())
        .queue("default", 4)
        .handler("rec", recording(Arc::clone(&seen)))
        .tracer_provider(provider)
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({
                "nodes": [
                    {"name": "flaky", "handler": "rec", "data": {"failUntil": 3},
                     "opts": {"attempts": 3}},
                    {"name": "after", "handler": "rec", "parents": ["flaky"]}
                ]
            })),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        engine.wait(id, WAIT).await.unwrap().status,
        FlowStatus::Completed
    );
    // Three attempts of `flaky`, one of `after`, the flow.
    let spans = exported(&exporter, 5).await;
    let trace = flow_trace_id(id);
    for n in 1..=3 {
        let span = attempt(&spans, "flaky", n);
        assert_eq!(span.parent_span_id, flow_span_id(id));
        assert_eq!(
            span.span_context.span_id(),
            attempt_span_id(id, "flaky", n as u32)
        );
        assert_eq!(
            seen.lock().unwrap()[&("flaky".to_owned(), n as u32)],
            Some(expected_traceparent(trace, id, "flaky", n as u32))
        );
    }
    for n in 1..=2 {
        let span = attempt(&spans, "flaky", n);
        assert_eq!(
            attr(span, "dagflow.outcome").map(|v| v.as_str().to_string()),
            Some("retried".to_owned())
        );
        assert_eq!(
            span.status,
            Status::error(format!("attempt {n} fails")),
            "the failed attempt's error is on its span"
        );
    }
    assert_eq!(attempt(&spans, "flaky", 3).status, Status::Ok);
    // The child links to the attempt that produced its input.
    assert_eq!(
        linked(attempt(&spans, "after", 1)),
        vec![attempt_span_id(id, "flaky", 3)]
    );
    // Attempts follow each other in time.
    assert!(attempt(&spans, "flaky", 2).start_time >= attempt(&spans, "flaky", 1).end_time);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_traceparent_becomes_the_flows_parent() {
    let (provider, exporter) = in_memory();
    let seen = Seen::default();
    let engine = builder(&testing::unique_prefix())
        .queue("default", 4)
        .handler("rec", recording(Arc::clone(&seen)))
        .tracer_provider(provider)
        .build()
        .await
        .unwrap();
    let caller = parse_traceparent(CALLER).unwrap();
    let id = engine
        .create(
            &spec(json!({
                "name": "child",
                "traceparent": CALLER,
                "nodes": [{"name": "only", "handler": "rec"}]
            })),
            None,
        )
        .await
        .unwrap();
    engine.wait(id, WAIT).await.unwrap();
    let spans = exported(&exporter, 2).await;
    let flow = spans.iter().find(|s| s.name == "child").unwrap();
    assert_eq!(flow.span_context.trace_id(), caller.trace_id());
    assert_eq!(flow.parent_span_id, caller.span_id());
    assert!(flow.parent_span_is_remote);
    let only = attempt(&spans, "only", 1);
    assert_eq!(only.span_context.trace_id(), caller.trace_id());
    assert_eq!(only.parent_span_id, flow_span_id(id));
    assert_eq!(
        seen.lock().unwrap()[&("only".to_owned(), 1)],
        Some(expected_traceparent(caller.trace_id(), id, "only", 1))
    );
    // A malformed traceparent is ignored: the flow starts its own trace.
    exporter.reset();
    let own = engine
        .create(
            &spec(json!({
                "name": "own",
                "traceparent": "00-not-a-trace-01",
                "nodes": [{"name": "only", "handler": "rec"}]
            })),
            None,
        )
        .await
        .unwrap();
    engine.wait(own, WAIT).await.unwrap();
    let spans = exported(&exporter, 2).await;
    let flow = spans.iter().find(|s| s.name == "own").unwrap();
    assert_eq!(flow.span_context.trace_id(), flow_trace_id(own));
    assert_eq!(flow.parent_span_id, SpanId::INVALID);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traces_an_envelope_carries_only_the_callers_traceparent() {
    let seen = Seen::default();
    let engine = builder(&testing::unique_prefix())
        .queue("default", 4)
        .handler("rec", recording(Arc::clone(&seen)))
        .build()
        .await
        .unwrap();
    assert!(engine.trace_stats().is_none(), "no exporter task when off");
    let plain = engine
        .create(
            &spec(json!({"nodes": [{"name": "plain", "handler": "rec"}]})),
            None,
        )
        .await
        .unwrap();
    let traced = engine
        .create(
            &spec(json!({"traceparent": CALLER, "nodes": [{"name": "traced", "handler": "rec"}]})),
            None,
        )
        .await
        .unwrap();
    engine.wait(plain, WAIT).await.unwrap();
    engine.wait(traced, WAIT).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[&("plain".to_owned(), 1)], None);
    assert_eq!(seen[&("traced".to_owned(), 1)].as_deref(), Some(CALLER));
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_survive_a_restart() {
    let dir = temp_dir();
    let prefix = testing::unique_prefix();
    // No worker: the job waits in its queue while the engine stops.
    let first = builder(&prefix).data_dir(dir.path()).build().await.unwrap();
    let id = first
        .create(
            &spec(json!({
                "name": "across",
                "traceparent": CALLER,
                "nodes": [
                    {"name": "a", "handler": "rec"},
                    {"name": "b", "handler": "rec", "parents": ["a"]}
                ]
            })),
            None,
        )
        .await
        .unwrap();
    let queued = first.node(id, "a").await.unwrap().queued_at.unwrap();
    first.shutdown(Duration::from_secs(5)).await;
    drop(first);
    let restarted_at = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let (provider, exporter) = in_memory();
    let seen = Seen::default();
    let second = builder(&prefix)
        .data_dir(dir.path())
        .queue("default", 4)
        .handler("rec", recording(Arc::clone(&seen)))
        .tracer_provider(provider)
        .build()
        .await
        .unwrap();
    assert_eq!(
        second.wait(id, WAIT).await.unwrap().status,
        FlowStatus::Completed
    );
    let spans = exported(&exporter, 3).await;
    let caller = parse_traceparent(CALLER).unwrap();
    let a = attempt(&spans, "a", 1);
    // Same ids as before the restart, and the attempt's queue wait starts when it
    // was queued by the first engine.
    assert_eq!(a.span_context.trace_id(), caller.trace_id());
    assert_eq!(a.span_context.span_id(), attempt_span_id(id, "a", 1));
    assert!(
        a.start_time < restarted_at,
        "queued before the restart: {a:#?} queued {queued}"
    );
    assert_eq!(
        a.start_time,
        SystemTime::UNIX_EPOCH + Duration::from_millis(queued)
    );
    let flow = spans.iter().find(|s| s.name == "across").unwrap();
    assert_eq!(flow.parent_span_id, caller.span_id());
    assert!(flow.start_time < restarted_at);
    assert_eq!(
        linked(attempt(&spans, "b", 1)),
        vec![attempt_span_id(id, "a", 1)]
    );
    // The envelope is written when the job is queued: `a` was queued by the first
    // engine, which exported no traces, so its handler got the caller's context;
    // `b`, queued by the second, got its attempt's span.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[&("a".to_owned(), 1)].as_deref(), Some(CALLER));
    let trace = dagflow_actors::trace::FlowTrace::new(id, Some(CALLER));
    assert_eq!(
        seen[&("b".to_owned(), 1)],
        Some(format_traceparent(&trace.attempt(id, "b", 1)))
    );
    second.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_another_engine_continues_the_trace() {
    // The worker-only engine is what `dagflow worker` runs: it reads envelopes from
    // Redis and reports through the completions stream.
    let (provider, exporter) = in_memory();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .tracer_provider(provider)
        .build()
        .await
        .unwrap();
    let seen = Seen::default();
    let worker = builder(&prefix)
        .worker_only()
        .queue("remote", 2)
        .handler("rec", recording(Arc::clone(&seen)))
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "far", "handler": "rec", "queue": "remote"}
            ]})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        engine.wait(id, WAIT).await.unwrap().status,
        FlowStatus::Completed
    );
    assert_eq!(
        seen.lock().unwrap()[&("far".to_owned(), 1)],
        Some(expected_traceparent(flow_trace_id(id), id, "far", 1))
    );
    let spans = exported(&exporter, 2).await;
    let far = attempt(&spans, "far", 1);
    assert_eq!(far.parent_span_id, flow_span_id(id));
    assert!(attr(far, "dagflow.run_ms").is_some());
    worker.shutdown(Duration::from_secs(5)).await;
    engine.shutdown(Duration::from_secs(5)).await;
}
