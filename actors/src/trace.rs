//! Traces: an OpenTelemetry trace per flow and a span per node attempt, built after
//! the fact from the engine's events, and the W3C `traceparent` that job envelopes
//! carry so that handlers anywhere continue the same trace.
//!
//! Ids are deterministic, so nothing about a trace has to be stored or survive in
//! memory: the trace id is the flow id (a v7 UUID, 16 bytes like a trace id) or,
//! when the flow was created with a caller's `traceparent`, the caller's trace id;
//! the flow span's id and each attempt's span id are a hash of (flow, node,
//! attempt). The flow actor can therefore name an attempt's span in its envelope
//! before the span exists, and a restarted engine names the same spans again.
//!
//! Spans are not opened on the hot path. The [`TraceExporter`] task subscribes to
//! the engine's [`EventHub`] and, off the flow actors, turns `queued` → `active` →
//! `completed`/`failed`/`cancelled` events into spans with explicit start and end
//! times, exported through the SDK's span processor (a batch processor for OTLP).
//! With traces off the task does not exist and envelopes only carry a caller's
//! `traceparent` unchanged: no hash, no span, no allocation per job.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Link, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::hub::EventHub;
use crate::ids::FlowId;
use crate::state::{FlowStatus, NodeStatus};
use crate::store::Store;
use crate::view::FlowEvent;

/// The instrumentation scope of the engine's spans.
pub const TRACER_NAME: &str = "dagflow";

/// Most flows whose spans are being assembled at once. A flow seen beyond this is
/// not traced (counted in [`TraceStats::flows_untraced`]): memory stays bounded
/// whatever the number of running flows.
pub const MAX_TRACKED_FLOWS: usize = 100_000;

/// How many ended flows are remembered, so that events trailing a flow's end do not
/// open it again.
const RECENTLY_ENDED: usize = 16 * 1024;

/// Why traces could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TraceError {
    /// The OTLP exporter could not be built (a bad endpoint URL, most often).
    #[error("otlp exporter: {0}")]
    Exporter(String),
}

/// Parses a W3C `traceparent` (`00-{32 hex}-{16 hex}-{2 hex}`), or `None` when it is
/// malformed, names the all-zero trace or span, or uses an unknown version's
/// shape. A malformed header is ignored, as the W3C recommendation asks, never an
/// error: the flow then starts its own trace.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    // The SDK's parser accepts short hex fields ("00-1-1-01"); the W3C format has
    // fixed widths, checked first.
    let value = value.trim();
    let parts: Vec<&str> = value.split('-').collect();
    let widths_ok = parts.len() >= 4
        && parts[0].len() == 2
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts
            .iter()
            .take(4)
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !widths_ok {
        return None;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), value.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.clone())
}

/// The `traceparent` naming `sc`.
pub fn format_traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// The trace id of a flow started without a caller's trace: its own id.
pub fn flow_trace_id(flow: FlowId) -> TraceId {
    TraceId::from_bytes(*flow.as_bytes())
}

/// The id of a flow's span: the same on every engine and after every restart.
pub fn flow_span_id(flow: FlowId) -> SpanId {
    span_id(flow, b"\x00flow", 0)
}

/// The id of one attempt's span, derived from (flow, node, attempt).
pub fn attempt_span_id(flow: FlowId, node: &str, attempt: u32) -> SpanId {
    span_id(flow, node.as_bytes(), attempt)
}

/// FNV-1a (64 bits) over the flow id, the name and the attempt. Stable across
/// builds and platforms (unlike std's hasher, whose algorithm may change), and a
/// span id only has to be unique within its trace, which the flow id scopes.
fn span_id(flow: FlowId, name: &[u8], attempt: u32) -> SpanId {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let attempt = attempt.to_be_bytes();
    let bytes = flow
        .as_bytes()
        .iter()
        .chain([0xffu8].iter())
        .chain(name.iter())
        .chain([0xffu8].iter())
        .chain(attempt.iter());
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(PRIME);
    }
    // The all-zero span id is invalid in W3C trace context.
    SpanId::from_bytes(hash.max(1).to_be_bytes())
}

/// Where a flow's spans hang: its trace id, its own span and the caller's span
/// above it, if any.
#[derive(Clone, Debug)]
pub struct FlowTrace {
    /// The flow span's context (trace id, span id, sampled flag).
    pub flow_span: SpanContext,
    /// The caller's span the flow span is a child of, from a valid `traceparent`.
    pub parent: Option<SpanContext>,
}

impl FlowTrace {
    /// The trace of `flow`, continuing `traceparent` when it is valid.
    pub fn new(flow: FlowId, traceparent: Option<&str>) -> Self {
        let parent = traceparent.and_then(parse_traceparent);
        let (trace_id, flags) = match &parent {
            Some(p) => (p.trace_id(), p.trace_flags()),
            None => (flow_trace_id(flow), TraceFlags::SAMPLED),
        };
        let flow_span = SpanContext::new(
            trace_id,
            flow_span_id(flow),
            flags,
            false,
            TraceState::default(),
        );
        FlowTrace { flow_span, parent }
    }

    /// The context of one attempt's span (a child of the flow span).
    pub fn attempt(&self, flow: FlowId, node: &str, attempt: u32) -> SpanContext {
        SpanContext::new(
            self.flow_span.trace_id(),
            attempt_span_id(flow, node, attempt),
            self.flow_span.trace_flags(),
            false,
            TraceState::default(),
        )
    }
}

/// The `traceparent` a job's envelope carries.
///
/// With traces on it names the attempt's span, so a handler's span is its child.
/// With traces off there is no attempt span to name: a caller's valid
/// `traceparent` is passed on as is (the handler's span joins the caller's trace
/// directly), and a flow without one costs a single branch.
pub(crate) fn job_traceparent(
    traces: bool,
    flow: FlowId,
    caller: Option<&str>,
    node: &str,
    attempt: u32,
) -> Option<String> {
    if traces {
        let sc = FlowTrace::new(flow, caller).attempt(flow, node, attempt);
        return Some(format_traceparent(&sc));
    }
    let caller = caller?;
    parse_traceparent(caller).map(|sc| format_traceparent(&sc))
}

/// A tracer provider exporting over OTLP/HTTP (protobuf) to `endpoint` through the
/// SDK's batch span processor (its own thread, a bounded queue of 2,048 spans that
/// drops beyond, an export every 5 s or 512 spans).
///
/// `endpoint` is the collector's base URL (`http://localhost:4318`); spans go to
/// its `/v1/traces` unless the URL already has a path.
pub fn otlp_provider(endpoint: &str) -> Result<SdkTracerProvider, TraceError> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
    let url = otlp_traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_headers(HashMap::new())
        .build()
        .map_err(|e| TraceError::Exporter(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("dagflow").build())
        .build())
}

/// `endpoint` with `/v1/traces` added when it has no path of its own.
fn otlp_traces_url(endpoint: &str) -> Result<String, TraceError> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| {
            TraceError::Exporter(format!(
                "endpoint {endpoint:?} is not an http:// or https:// URL"
            ))
        })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(TraceError::Exporter(format!(
            "endpoint {endpoint:?} has no host"
        )));
    }
    Ok(match rest.split_once('/') {
        Some((_, path)) if !path.is_empty() => endpoint.to_owned(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    })
}

/// Counters of the trace exporter task, for `/metrics`.
#[derive(Debug, Default)]
pub struct TraceStats {
    /// Spans handed to the span processor (flow and attempt spans).
    pub spans: AtomicU64,
    /// Events the task missed because it fell more than the hub's capacity behind;
    /// the attempts they ended have no span.
    pub events_lost: AtomicU64,
    /// Flows whose spans are being assembled now.
    pub flows_open: AtomicU64,
    /// Flows not traced because [`MAX_TRACKED_FLOWS`] were open.
    pub flows_untraced: AtomicU64,
    /// Attempt spans made without their queued and started times (their events
    /// were lost): they start and end at the attempt's end.
    pub partial: AtomicU64,
}

/// The running trace exporter: owns the task and the provider, flushed at shutdown.
pub(crate) struct TraceExporter {
    task: JoinHandle<()>,
    provider: SdkTracerProvider,
    /// Shared with the task; read by the engine for `/metrics`.
    pub(crate) stats: Arc<TraceStats>,
}

impl TraceExporter {
    /// Starts the task: it reads every event from `hub` from now on.
    pub(crate) fn start(hub: &EventHub, store: Store, provider: SdkTracerProvider) -> Self {
        let stats = Arc::new(TraceStats::default());
        let builder = SpanAssembler {
            tracer: provider.tracer(TRACER_NAME),
            store,
            flows: HashMap::new(),
            ended: HashSet::new(),
            ended_order: VecDeque::new(),
            stats: Arc::clone(&stats),
        };
        let task = tokio::spawn(builder.run(hub.subscribe()));
        TraceExporter {
            task,
            provider,
            stats,
        }
    }

    /// Stops the task, then exports what the span processor still holds. Events not
    /// read yet when the engine stops are not turned into spans.
    pub(crate) async fn shutdown(&self) {
        self.task.abort();
        let provider = self.provider.clone();
        // The batch processor's flush blocks its caller until its thread exported.
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = provider.force_flush() {
                warn!(error = %e, "flushing spans at shutdown");
            }
            let _ = provider.shutdown();
        })
        .await;
    }
}

/// What the assembler knows about one flow between its events.
struct OpenFlow {
    trace: FlowTrace,
    name: String,
    created_at: u64,
    /// Parent names of each node, from the spec (both `parents` and `children`).
    parents: HashMap<String, Vec<String>>,
    /// The last attempt of each node that ended: what its children's links name.
    ended: HashMap<String, u32>,
    /// Attempts queued or running: (node, attempt) → (queued at, started at).
    open: HashMap<(String, u32), (Option<u64>, Option<u64>)>,
}

/// Turns events into spans; the body of the exporter task.
struct SpanAssembler {
    tracer: SdkTracer,
    store: Store,
    flows: HashMap<FlowId, OpenFlow>,
    /// Flows that ended lately (at most [`RECENTLY_ENDED`]), oldest first in
    /// `ended_order`.
    ended: HashSet<FlowId>,
    ended_order: VecDeque<FlowId>,
    stats: Arc<TraceStats>,
}

impl SpanAssembler {
    async fn run(mut self, mut events: tokio::sync::broadcast::Receiver<Arc<FlowEvent>>) {
        loop {
            match events.recv().await {
                Ok(event) => self.on_event(&event),
                Err(RecvError::Lagged(n)) => {
                    // The hub keeps a bounded backlog; a task that fell behind loses
                    // the oldest events. Their attempts have no span, the flow's
                    // span still comes at its end.
                    self.stats.events_lost.fetch_add(n, Ordering::Relaxed);
                    warn!(
                        lost = n,
                        "trace exporter fell behind; some attempts have no span"
                    );
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    fn on_event(&mut self, event: &FlowEvent) {
        if event.progress.is_some() {
            return;
        }
        let flow_id = event.flow_id;
        if !self.flows.contains_key(&flow_id) {
            // An event that trails its flow's end (a cancelled node after the flow's
            // final event) must not open the flow again: the entry would never be
            // closed. A flow that runs again (retry, re-run) starts with `running`.
            let restarts = event.node.is_none() && event.status == FlowStatus::Running.as_str();
            if !restarts && self.ended.contains(&flow_id) {
                return;
            }
            if self.flows.len() >= MAX_TRACKED_FLOWS {
                self.stats.flows_untraced.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let Some(open) = self.load(flow_id, event.ts) else {
                return;
            };
            self.flows.insert(flow_id, open);
            self.stats
                .flows_open
                .store(self.flows.len() as u64, Ordering::Relaxed);
        }
        let Some(node) = &event.node else {
            if event.is_flow_end() {
                if let Some(flow) = self.flows.remove(&flow_id) {
                    self.flow_span(flow_id, &flow, event);
                }
                if self.ended.len() >= RECENTLY_ENDED {
                    if let Some(old) = self.ended_order.pop_front() {
                        self.ended.remove(&old);
                    }
                }
                if self.ended.insert(flow_id) {
                    self.ended_order.push_back(flow_id);
                }
                self.stats
                    .flows_open
                    .store(self.flows.len() as u64, Ordering::Relaxed);
            }
            return;
        };
        let Some(status) = node_status(&event.status) else {
            return;
        };
        match status {
            NodeStatus::Queued => {
                // A retry: the attempt before ended with this event's error.
                let earlier: Vec<u32> = self.flows[&flow_id]
                    .open
                    .keys()
                    .filter(|(n, a)| n == node && *a < event.attempt)
                    .map(|(_, a)| *a)
                    .collect();
                for attempt in earlier {
                    self.attempt_span(flow_id, node, attempt, event, "retried");
                }
                if let Some(flow) = self.flows.get_mut(&flow_id) {
                    flow.open
                        .insert((node.clone(), event.attempt), (Some(event.ts), None));
                }
            }
            NodeStatus::Active => {
                if let Some(flow) = self.flows.get_mut(&flow_id) {
                    let times = flow
                        .open
                        .entry((node.clone(), event.attempt))
                        .or_insert((None, None));
                    times.1 = Some(event.ts);
                }
            }
            NodeStatus::Completed | NodeStatus::Failed | NodeStatus::Cancelled => {
                let outcome = status.as_str();
                self.attempt_span(flow_id, node, event.attempt, event, outcome);
            }
            NodeStatus::Pending | NodeStatus::Waiting | NodeStatus::Skipped => {}
        }
    }

    /// What the store says about a flow first seen now: its spec (parents, the
    /// caller's traceparent), its creation time, and the times of attempts already
    /// in flight (a restarted engine, or events this task missed).
    fn load(&self, flow_id: FlowId, ts: u64) -> Option<OpenFlow> {
        let stored = match self.store.load(flow_id) {
            Ok(Some(stored)) => stored,
            // Deleted since: nothing to trace.
            Ok(None) => return None,
            Err(e) => {
                warn!(flow = %flow_id, error = %e, "trace exporter could not read a flow");
                return None;
            }
        };
        let spec = crate::spec::parse(stored.spec_json.as_bytes()).ok()?;
        let mut parents: HashMap<String, Vec<String>> = HashMap::new();
        for node in &spec.nodes {
            parents
                .entry(node.name.clone())
                .or_default()
                .extend(node.parents.iter().cloned());
            for child in &node.children {
                parents
                    .entry(child.clone())
                    .or_default()
                    .push(node.name.clone());
            }
        }
        for list in parents.values_mut() {
            list.sort();
            list.dedup();
        }
        let mut open = HashMap::new();
        let mut ended = HashMap::new();
        for (i, node) in stored.nodes.iter().enumerate() {
            let Some(spec_node) = spec.nodes.get(i) else {
                continue;
            };
            // The store may be ahead of the event being handled (one flush
            // holds several events): a node it shows ended may still have its
            // `active` and `completed` events to come, so its last attempt's times
            // are kept too. An entry no event closes goes with the flow's end.
            if node.queued_at.is_some() || node.started_at.is_some() {
                open.insert(
                    (spec_node.name.clone(), node.attempt),
                    (node.queued_at, node.started_at),
                );
            }
            if matches!(node.status, NodeStatus::Completed | NodeStatus::Failed) {
                ended.insert(spec_node.name.clone(), node.attempt);
            }
        }
        Some(OpenFlow {
            trace: FlowTrace::new(flow_id, spec.traceparent.as_deref()),
            name: spec.name,
            created_at: stored.record.created_at.min(ts),
            parents,
            ended,
            open,
        })
    }

    /// Ends one attempt's span at `event`: a child of the flow span, linked to the
    /// spans of its parents' last attempts.
    fn attempt_span(
        &mut self,
        flow_id: FlowId,
        node: &str,
        attempt: u32,
        event: &FlowEvent,
        outcome: &str,
    ) {
        let Some(flow) = self.flows.get_mut(&flow_id) else {
            return;
        };
        let times = flow.open.remove(&(node.to_owned(), attempt));
        if times.is_none() && outcome == "cancelled" {
            // Cancelled before it was ever queued: no attempt ran.
            return;
        }
        flow.ended.insert(node.to_owned(), attempt);
        let (queued_at, started_at) = times.unwrap_or((None, None));
        if times.is_none() {
            self.stats.partial.fetch_add(1, Ordering::Relaxed);
        }
        let end = event.ts;
        let start = queued_at.or(started_at).unwrap_or(end);
        let sc = flow.trace.attempt(flow_id, node, attempt);
        let parent_names = flow.parents.get(node).cloned().unwrap_or_default();
        let links: Vec<Link> = parent_names
            .iter()
            .filter_map(|p| flow.ended.get(p).map(|a| (p, *a)))
            .map(|(p, a)| Link::with_context(flow.trace.attempt(flow_id, p, a)))
            .collect();
        let mut attributes = vec![
            KeyValue::new("dagflow.flow.id", flow_id.to_string()),
            KeyValue::new("dagflow.node", node.to_owned()),
            KeyValue::new("dagflow.attempt", i64::from(attempt)),
            KeyValue::new("dagflow.outcome", outcome.to_owned()),
            KeyValue::new(
                "dagflow.parents",
                opentelemetry::Value::Array(
                    parent_names
                        .iter()
                        .map(|p| opentelemetry::StringValue::from(p.clone()))
                        .collect::<Vec<_>>()
                        .into(),
                ),
            ),
        ];
        if let (Some(q), Some(s)) = (queued_at, started_at) {
            attributes.push(KeyValue::new(
                "dagflow.queue_wait_ms",
                s.saturating_sub(q) as i64,
            ));
        }
        if let Some(s) = started_at {
            attributes.push(KeyValue::new(
                "dagflow.run_ms",
                end.saturating_sub(s) as i64,
            ));
        }
        let mut events = Vec::new();
        if let Some(s) = started_at {
            events.push(opentelemetry::trace::Event::new(
                "started",
                at(s),
                Vec::new(),
                0,
            ));
        }
        let status = match (outcome, &event.error) {
            ("completed", _) => Status::Ok,
            (_, Some(error)) => Status::error(error.clone()),
            (_, None) => Status::error(outcome.to_owned()),
        };
        if let Some(error) = &event.error {
            attributes.push(KeyValue::new("error.message", error.clone()));
        }
        let builder = SpanBuilder::from_name(node.to_owned())
            .with_kind(SpanKind::Internal)
            .with_span_id(sc.span_id())
            .with_start_time(at(start))
            .with_attributes(attributes)
            .with_links(links)
            .with_events(events)
            .with_status(status);
        let parent = Context::new().with_remote_span_context(flow.trace.flow_span.clone());
        let mut span = self.tracer.build_with_context(builder, &parent);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, at(end));
        self.stats.spans.fetch_add(1, Ordering::Relaxed);
        debug!(flow = %flow_id, node, attempt, outcome, "attempt span");
    }

    /// Ends the flow's span at its final event: a child of the caller's span, or
    /// the root of the flow's own trace.
    fn flow_span(&self, flow_id: FlowId, flow: &OpenFlow, event: &FlowEvent) {
        let name = if flow.name.is_empty() {
            "flow".to_owned()
        } else {
            flow.name.clone()
        };
        let status = match FlowStatus::parse(&event.status) {
            Some(FlowStatus::Completed) => Status::Ok,
            _ => Status::error(event.error.clone().unwrap_or_else(|| event.status.clone())),
        };
        let mut builder = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Internal)
            .with_span_id(flow.trace.flow_span.span_id())
            .with_start_time(at(flow.created_at))
            .with_attributes(vec![
                KeyValue::new("dagflow.flow.id", flow_id.to_string()),
                KeyValue::new("dagflow.flow.status", event.status.clone()),
            ])
            .with_status(status);
        let parent = match &flow.trace.parent {
            Some(caller) => Context::new().with_remote_span_context(caller.clone()),
            None => {
                builder = builder.with_trace_id(flow.trace.flow_span.trace_id());
                Context::new()
            }
        };
        let mut span = self.tracer.build_with_context(builder, &parent);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, at(event.ts));
        self.stats.spans.fetch_add(1, Ordering::Relaxed);
    }
}

/// A node status from its wire name.
fn node_status(name: &str) -> Option<NodeStatus> {
    [
        NodeStatus::Pending,
        NodeStatus::Queued,
        NodeStatus::Active,
        NodeStatus::Waiting,
        NodeStatus::Completed,
        NodeStatus::Failed,
        NodeStatus::Skipped,
        NodeStatus::Cancelled,
    ]
    .into_iter()
    .find(|s| s.as_str() == name)
}

/// Milliseconds since the epoch as a `SystemTime`.
fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses_and_formats_back() {
        let sc = parse_traceparent(GOOD).unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_sampled());
        assert_eq!(format_traceparent(&sc), GOOD);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-1-1-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let flow = FlowId::new();
        assert_eq!(attempt_span_id(flow, "a", 1), attempt_span_id(flow, "a", 1));
        assert_ne!(attempt_span_id(flow, "a", 1), attempt_span_id(flow, "a", 2));
        assert_ne!(attempt_span_id(flow, "a", 1), attempt_span_id(flow, "b", 1));
        assert_ne!(attempt_span_id(flow, "a", 1), flow_span_id(flow));
        assert_ne!(
            attempt_span_id(flow, "a", 1),
            attempt_span_id(FlowId::new(), "a", 1)
        );
        assert_eq!(flow_trace_id(flow).to_bytes(), *flow.as_bytes());
    }

    #[test]
    fn job_traceparent_names_the_attempt_only_when_traces_are_on() {
        let flow = FlowId::new();
        assert_eq!(job_traceparent(false, flow, None, "a", 1), None);
        assert_eq!(job_traceparent(false, flow, Some("junk"), "a", 1), None);
        assert_eq!(
            job_traceparent(false, flow, Some(GOOD), "a", 1).as_deref(),
            Some(GOOD)
        );
        let own = parse_traceparent(&job_traceparent(true, flow, None, "a", 2).unwrap()).unwrap();
        assert_eq!(own.trace_id(), flow_trace_id(flow));
        assert_eq!(own.span_id(), attempt_span_id(flow, "a", 2));
        let child =
            parse_traceparent(&job_traceparent(true, flow, Some(GOOD), "a", 2).unwrap()).unwrap();
        assert_eq!(
            child.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(child.span_id(), attempt_span_id(flow, "a", 2));
    }

    #[test]
    fn otlp_urls_get_the_traces_path_when_they_have_none() {
        assert_eq!(
            otlp_traces_url("http://localhost:4318").unwrap(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            otlp_traces_url("http://localhost:4318/").unwrap(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            otlp_traces_url("https://c.example/otel/v1/traces").unwrap(),
            "https://c.example/otel/v1/traces"
        );
        assert!(otlp_traces_url("localhost:4318").is_err());
        assert!(otlp_traces_url("http://").is_err());
    }
}
