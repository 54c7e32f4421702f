//! Traces through the server: the `traceparent` header of `POST /flows` (an API
//! with an in-memory span exporter, responses checked against the OpenAPI
//! document), and `dagflow serve --otlp-endpoint` exporting to a real HTTP
//! receiver started by the test.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/schema.rs"]
mod schema;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::process::{blocking, Deployment, ServeArgs};
use common::*;
use dagflow::engine::trace::{attempt_span_id, flow_span_id, flow_trace_id, parse_traceparent};
use dagflow::engine::{handler_fn, testing, FlowId, JobError};
use opentelemetry::trace::SpanId;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use reqwest::{Method, StatusCode};
use schema::Checked;
use serde_json::json;

const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Each job's `traceparent` as its handler saw it, by node name.
type Seen = Arc<Mutex<HashMap<String, Option<String>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traceparent_header_makes_the_flow_a_child_of_the_callers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let seen = Seen::default();
    let recorder = Arc::clone(&seen);
    let server = start_server(ServerOpts {
        handlers: vec![(
            "rec".to_owned(),
            Arc::new(handler_fn(move |ctx| {
                let seen = Arc::clone(&recorder);
                async move {
                    seen.lock()
                        .unwrap()
                        .insert(ctx.node.clone(), ctx.traceparent);
                    Ok::<_, JobError>(json!(null))
                }
            })),
        )],
        engine: Some(Box::new(move |b| b.tracer_provider(provider))),
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    let create = |traceparent: &'static [u8], node: &str| {
        let mut rb = api
            .request(Method::POST, "/flows")
            .json(&json!({"name": node, "nodes": [{"name": node, "handler": "rec"}]}));
        if !traceparent.is_empty() {
            rb = rb.header(
                "traceparent",
                reqwest::header::HeaderValue::from_bytes(traceparent).unwrap(),
            );
        }
        rb
    };

    let (status, body) = api.send(create(CALLER.as_bytes(), "child")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let child: FlowId = body["flowId"].as_str().unwrap().parse().unwrap();
    // Malformed headers are ignored, not refused: the flow starts its own trace.
    let (status, body) = api.send(create(b"00-abc-def-01", "malformed")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let malformed: FlowId = body["flowId"].as_str().unwrap().parse().unwrap();
    let (status, body) = api.send(create(b"00-\xff\xfe-01", "not-ascii")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let not_ascii: FlowId = body["flowId"].as_str().unwrap().parse().unwrap();
    for id in [child, malformed, not_ascii] {
        api.wait_for_status(&id.to_string(), "completed").await;
    }
    // Two spans per flow: the flow's and its one attempt's.
    eventually("six spans", || async {
        exporter.get_finished_spans().unwrap().len() >= 6
    })
    .await;
    let spans = exporter.get_finished_spans().unwrap();
    let caller = parse_traceparent(CALLER).unwrap();
    // The flow span and its node's attempt span share the name `child`.
    let flow = spans
        .iter()
        .find(|s| s.span_context.span_id() == flow_span_id(child))
        .unwrap();
    assert_eq!(flow.name, "child");
    assert_eq!(flow.span_context.trace_id(), caller.trace_id());
    assert_eq!(flow.parent_span_id, caller.span_id());
    let attempt = spans
        .iter()
        .find(|s| s.parent_span_id == flow_span_id(child))
        .unwrap();
    assert_eq!(attempt.span_context.trace_id(), caller.trace_id());
    assert_eq!(
        attempt.span_context.span_id(),
        attempt_span_id(child, "child", 1)
    );
    assert_eq!(
        seen.lock().unwrap()["child"],
        Some(format!(
            "00-{}-{}-01",
            caller.trace_id(),
            attempt_span_id(child, "child", 1)
        ))
    );
    for (id, name) in [(malformed, "malformed"), (not_ascii, "not-ascii")] {
        let roots: Vec<_> = spans
            .iter()
            .filter(|s| s.name == name && s.parent_span_id == SpanId::INVALID)
            .collect();
        assert_eq!(roots.len(), 1, "{name}: one root span");
        assert_eq!(roots[0].span_context.trace_id(), flow_trace_id(id));
    }
    // The exporter's task is visible in /metrics.
    let text = api
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let spans_line = text
        .lines()
        .find(|l| l.starts_with("dagflow_trace_spans_total "))
        .unwrap_or_else(|| panic!("no dagflow_trace_spans_total in\n{text}"));
    assert_eq!(spans_line, "dagflow_trace_spans_total 6");
    assert!(text.contains("dagflow_trace_events_lost_total 0"), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traces_metrics_have_no_trace_series() {
    let server = start_server(ServerOpts::default()).await;
    let id = server
        .api()
        .create_flow(&json!({"nodes": [{"name": "n", "handler": "noop"}]}))
        .await;
    server.api().wait_for_status(&id, "completed").await;
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("dagflow_trace_"), "{text}");
    server.stop().await;
}

/// A minimal OTLP/HTTP collector: answers 200 to `POST /v1/traces` and keeps each
/// body with its content type.
async fn collector() -> (String, Arc<Mutex<Vec<(String, Bytes)>>>) {
    use warp::Filter;
    let received: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
    let sink = Arc::clone(&received);
    let route = warp::post()
        .and(warp::path!("v1" / "traces"))
        .and(warp::header::<String>("content-type"))
        .and(warp::body::bytes())
        .map(move |content_type: String, body: Bytes| {
            sink.lock().unwrap().push((content_type, body));
            warp::reply()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (format!("http://{addr}"), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_otlp_endpoint_exports_to_a_collector() {
    let (endpoint, received) = collector().await;
    let mut deployment = Deployment::new(&testing::redis().url);
    let mut args = ServeArgs::new("default=2");
    args.env = vec![
        ("DAGFLOW_OTLP_ENDPOINT".to_owned(), endpoint),
        // The batch processor's export interval (5 s by default).
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ];
    let server = blocking(|| deployment.serve(&args));
    let api = Api::new(&server.url, None);
    let (status, body) = send(
        api.request(Method::POST, "/flows")
            .header("traceparent", CALLER)
            .json(&json!({"name": "exported", "nodes": [
                {"name": "a", "handler": "noop"},
                {"name": "b", "handler": "noop", "parents": ["a"]}
            ]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id: FlowId = body["flowId"].as_str().unwrap().parse().unwrap();
    api.wait_for_status(&id.to_string(), "completed").await;
    // OTLP protobuf carries ids as raw bytes: the caller's trace id, the flow span
    // and both attempt spans must all have reached the collector.
    let caller = parse_traceparent(CALLER).unwrap();
    let wanted: Vec<Vec<u8>> = vec![
        caller.trace_id().to_bytes().to_vec(),
        flow_span_id(id).to_bytes().to_vec(),
        attempt_span_id(id, "a", 1).to_bytes().to_vec(),
        attempt_span_id(id, "b", 1).to_bytes().to_vec(),
    ];
    eventually("the collector to receive every span", || {
        let received = Arc::clone(&received);
        let wanted = wanted.clone();
        async move {
            let bodies = received.lock().unwrap();
            wanted.iter().all(|id| {
                bodies
                    .iter()
                    .any(|(_, body)| body.windows(id.len()).any(|w| w == id.as_slice()))
            })
        }
    })
    .await;
    for (content_type, _) in received.lock().unwrap().iter() {
        assert_eq!(content_type, "application/x-protobuf");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}
