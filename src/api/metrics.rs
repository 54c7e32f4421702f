//! Prometheus metrics, served as text on `GET /metrics`.
//!
//! Counters and the run-time histogram are fed by a task that reads the engine's
//! event feed, so they count what happened whichever worker (local or remote) did
//! the work. Gauges (queue depth, running flows, WebSocket sessions) are read when
//! scraped. The recorder is this API's own, not the process-global one, so several
//! servers in one process (tests) keep separate numbers.
//!
//! Every family, and every label value known up front (the outcomes, the default
//! queue's states), is registered at zero when the API starts: a dashboard or an
//! alert on `rate(...)` sees each series from the first scrape, not from its first
//! occurrence.
//!
//! Run times are measured with a monotonic clock as the attempt's start and end
//! events reach the metrics task, so they keep sub-millisecond precision; the
//! events' own `ts` are whole milliseconds, and four `echo` runs of a fraction of a
//! millisecond each summed to 0 with them.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `dagflow_flows_started_total` | counter | |
//! | `dagflow_flows_retried_total` | counter | |
//! | `dagflow_flows_finished_total` | counter | `outcome`: completed, failed, cancelled |
//! | `dagflow_nodes_finished_total` | counter | `outcome`: completed, failed, skipped, cancelled |
//! | `dagflow_node_retries_total` | counter | |
//! | `dagflow_node_run_seconds` | histogram | `outcome`: completed, failed, retried |
//! | `dagflow_flows_running` | gauge | |
//! | `dagflow_queue_depth` | gauge | `queue`, `state`: ready (in the lanes, running jobs included), delayed (backoff) |
//! | `dagflow_queue_ready` | gauge | `queue`, `priority` (0-9), `lane`: started, new — jobs not yet taken |
//! | `dagflow_queue_running` | gauge | `queue` — jobs taken and not yet acknowledged |
//! | `dagflow_queue_delayed` | gauge | `queue` — retries waiting for their backoff |
//! | `dagflow_queue_held_back` | gauge | `queue`, `kind`: concurrency, rateLimit, flowConcurrency — jobs held back by limit keys |
//! | `dagflow_queue_held_back_key` | gauge | `queue`, `kind`, `key` — the 20 keys holding back the most jobs of each queue |
//! | `dagflow_queue_workers` | gauge | `queue` — live workers serving it |
//! | `dagflow_queue_worker_concurrency` | gauge | `queue` — the jobs they may run at once, together |
//! | `dagflow_ws_sessions` | gauge | |
//! | `dagflow_event_subscribers` | gauge | |
//! | `dagflow_metrics_events_missed_total` | counter | events the metrics task fell behind on |
//! | `dagflow_flows_awake` | gauge | running flows that have a live actor (the rest hibernate) |
//! | `dagflow_reports_handed_back_total` | counter | reports a flow actor dropped (it stopped or failed) and the router routed again |
//! | `dagflow_completions_redelivered_total` | counter | completion records read again after staying unacknowledged too long |
//! | `dagflow_reports_parked` | gauge | reports waiting in the router for their flow's actor |
//! | `dagflow_reconcile_passes_total` | counter | reconciliation passes over the unfinished flows |
//! | `dagflow_reconcile_flows_checked_total` | counter | flows compared with Redis |
//! | `dagflow_reconcile_jobs_repaired_total` | counter | jobs Redis had lost, put back |
//! | `dagflow_retries_promoted_total` | counter | due retries moved into their streams |
//! | `dagflow_flow_actor_restarts_total` | counter | flow actors restarted from their snapshot after a failure |
//! | `dagflow_schedules` | gauge | schedules stored |
//! | `dagflow_schedule_ticks_total` | counter | `outcome`: fired, skipped (overlap), missed (catch-up), failed |
//! | `dagflow_schedule_cancelled_previous_total` | counter | running flows cancelled by `overlap: cancelPrevious` |
//! | `dagflow_scheduler_passes_total` | counter | passes of the scheduler task |
//! | `dagflow_flows_swept_total` | counter | finished flows the retention sweeper deleted |
//! | `dagflow_store_bytes` | gauge | bytes sled's files take on disk |
//! | `dagflow_callbacks_delivered_total` | counter | callbacks (`opts.notify`) a receiver answered with a 2xx |
//! | `dagflow_callback_attempts_failed_total` | counter | callback POSTs that failed (error, timeout, non-2xx) and will be retried or dropped |
//! | `dagflow_callbacks_dropped_total` | counter | callbacks given up on past `--webhook-max-age` |
//! | `dagflow_callbacks_pending` | gauge | callbacks owed (in the sled outbox) |
//! | `dagflow_callbacks_in_flight` | gauge | callback POSTs under way |
//! | `dagflow_trace_spans_total` | counter | spans the trace exporter built (with `--otlp-endpoint` only, as every `dagflow_trace_*`) |
//! | `dagflow_trace_spans_partial_total` | counter | attempt spans built without their queued/started times (their events were lost) |
//! | `dagflow_trace_events_lost_total` | counter | events the trace exporter fell behind on |
//! | `dagflow_trace_flows_open` | gauge | flows whose spans are being assembled |
//! | `dagflow_trace_flows_untraced_total` | counter | flows not traced because 100,000 were open |
//!
//! `dagflow_flows_running` counts every flow whose durable status is `running`,
//! hibernating ones included.
//!
//! The `dagflow_queue_*` gauges but `dagflow_queue_depth` are read from Redis at
//! each scrape (`GET /queues` reads the same, see `queues.rs`) and written as text
//! after the recorder's: a key that no longer holds jobs back, or a queue Redis
//! forgot, leaves the output at once instead of staying at its last value. Their
//! label sets are bounded: 20 lanes per queue, three kinds, the top 20 keys, and the
//! queues Redis knows (a scrape scans at most 20,000 keys for queue names and keeps
//! at most 1,000 names from scans). `dagflow_queue_held_back` sums the 1,000 keys
//! holding back the most jobs of the queue. When Redis does not answer within 2 s
//! these families have no samples, and the scrape still succeeds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dagflow_actors::{Engine, FlowEvent, FlowId, FlowStatus, NodeStatus};
use metrics::{counter, gauge, histogram, with_local_recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::sync::broadcast;
use tracing::debug;

use super::queues::{self, QueueReport, TOP_HELD};
use super::ApiState;

/// Upper bounds of the run-time histogram's buckets, in seconds.
const RUN_SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];
/// How long a scrape waits for Redis to report queue depths.
const DEPTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The API's metrics.
pub(crate) struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Metrics {
    /// A recorder, and (inside a Tokio runtime) the task feeding it from `engine`'s
    /// events; the task ends with the engine's event hub.
    pub(crate) fn start(engine: &Engine) -> Self {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets(&RUN_SECONDS_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = Arc::new(builder.build_recorder());
        let handle = recorder.handle();
        with_local_recorder(&*recorder, || {
            describe();
            register_at_zero();
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(feed(engine.events(), Arc::clone(&recorder)));
        }
        Metrics { recorder, handle }
    }

    /// The Prometheus text, with the gauges read now.
    pub(crate) async fn render(&self, state: &ApiState) -> String {
        let reports = queue_reports(state).await;
        with_local_recorder(&*self.recorder, || {
            engine_stats(&state.engine);
            super::schedules::record_metrics(&state.engine);
            gauge!("dagflow_ws_sessions").set(state.open_sessions() as f64);
            gauge!("dagflow_event_subscribers").set(state.engine.subscribers() as f64);
            for report in &reports {
                let s = &report.stats;
                let queue = s.name.clone();
                gauge!("dagflow_queue_depth", "queue" => queue.clone(), "state" => "ready")
                    .set((s.ready_total() + s.running) as f64);
                gauge!("dagflow_queue_depth", "queue" => queue, "state" => "delayed")
                    .set(s.delayed as f64);
            }
        });
        self.handle.run_upkeep();
        let mut text = self.handle.render();
        queue_text(&mut text, &reports);
        text
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("dagflow_flows_started_total", "flows started");
    describe_counter!("dagflow_flows_retried_total", "flow retries requested");
    describe_counter!(
        "dagflow_flows_finished_total",
        "flows that ended, by outcome"
    );
    describe_counter!(
        "dagflow_nodes_finished_total",
        "nodes that ended, by outcome"
    );
    describe_counter!("dagflow_node_retries_total", "failed attempts queued again");
    describe_histogram!(
        "dagflow_node_run_seconds",
        Unit::Seconds,
        "time from an attempt's start to its end, as the engine published them (monotonic clock, sub-millisecond)"
    );
    describe_gauge!(
        "dagflow_flows_running",
        "flows whose durable status is running, hibernating ones included"
    );
    describe_gauge!(
        "dagflow_queue_depth",
        "jobs in a queue's lanes (ready, running ones included) and delayed set"
    );
    describe_gauge!("dagflow_ws_sessions", "open WebSocket sessions");
    describe_gauge!(
        "dagflow_flows_awake",
        "running flows with a live actor (the rest hibernate)"
    );
    describe_gauge!(
        "dagflow_reports_parked",
        "reports waiting in the router for their flow's actor"
    );
    describe_counter!(
        "dagflow_reports_handed_back_total",
        "reports a flow actor dropped and the router routed again"
    );
    describe_counter!(
        "dagflow_completions_redelivered_total",
        "completion records read again after staying unacknowledged too long"
    );
    describe_counter!(
        "dagflow_reconcile_passes_total",
        "reconciliation passes over the unfinished flows"
    );
    describe_counter!(
        "dagflow_reconcile_flows_checked_total",
        "flows the reconciliation compared with Redis"
    );
    describe_counter!(
        "dagflow_reconcile_jobs_repaired_total",
        "jobs Redis had lost, put back by reconciliation"
    );
    describe_counter!(
        "dagflow_retries_promoted_total",
        "due retries moved into their streams"
    );
    describe_counter!(
        "dagflow_flow_actor_restarts_total",
        "flow actors restarted from their snapshot after a failure"
    );
    describe_counter!(
        "dagflow_flows_swept_total",
        "finished flows the retention sweeper deleted"
    );
    describe_gauge!("dagflow_store_bytes", "bytes sled's files take on disk");
    describe_counter!(
        "dagflow_callbacks_delivered_total",
        "callbacks (opts.notify) a receiver answered with a 2xx"
    );
    describe_counter!(
        "dagflow_callback_attempts_failed_total",
        "callback POSTs that failed (error, timeout or a status other than 2xx)"
    );
    describe_counter!(
        "dagflow_callbacks_dropped_total",
        "callbacks given up on after the maximum age (--webhook-max-age)"
    );
    describe_gauge!(
        "dagflow_callbacks_pending",
        "callbacks owed, in the sled outbox"
    );
    describe_gauge!("dagflow_callbacks_in_flight", "callback POSTs under way");
    describe_counter!(
        "dagflow_trace_spans_total",
        "spans the trace exporter built (flow and attempt spans)"
    );
    describe_counter!(
        "dagflow_trace_spans_partial_total",
        "attempt spans built without their queued and started times"
    );
    describe_counter!(
        "dagflow_trace_events_lost_total",
        "events the trace exporter missed because it fell behind"
    );
    describe_gauge!(
        "dagflow_trace_flows_open",
        "flows whose spans the trace exporter is assembling"
    );
    describe_counter!(
        "dagflow_trace_flows_untraced_total",
        "flows not traced because the exporter's bound of open flows was reached"
    );
    describe_gauge!(
        "dagflow_event_subscribers",
        "receivers of the engine's event feed"
    );
    describe_counter!(
        "dagflow_metrics_events_missed_total",
        "events the metrics task missed because it fell behind"
    );
}

/// Outcomes of `dagflow_flows_finished_total`.
const FLOW_OUTCOMES: [FlowStatus; 3] = [
    FlowStatus::Completed,
    FlowStatus::Failed,
    FlowStatus::Cancelled,
];
/// Outcomes of `dagflow_nodes_finished_total`.
const NODE_OUTCOMES: [NodeStatus; 4] = [
    NodeStatus::Completed,
    NodeStatus::Failed,
    NodeStatus::Skipped,
    NodeStatus::Cancelled,
];
/// Outcomes of `dagflow_node_run_seconds`.
const RUN_OUTCOMES: [&str; 3] = ["completed", "failed", "retried"];

/// Creates every series whose labels are known up front, at zero.
fn register_at_zero() {
    gauge!("dagflow_flows_awake").set(0.0);
    gauge!("dagflow_reports_parked").set(0.0);
    gauge!("dagflow_callbacks_pending").set(0.0);
    gauge!("dagflow_callbacks_in_flight").set(0.0);
    for name in [
        "dagflow_reports_handed_back_total",
        "dagflow_completions_redelivered_total",
        "dagflow_reconcile_passes_total",
        "dagflow_reconcile_flows_checked_total",
        "dagflow_reconcile_jobs_repaired_total",
        "dagflow_retries_promoted_total",
        "dagflow_flow_actor_restarts_total",
        "dagflow_flows_swept_total",
        "dagflow_callbacks_delivered_total",
        "dagflow_callback_attempts_failed_total",
        "dagflow_callbacks_dropped_total",
    ] {
        counter!(name).increment(0);
    }
    counter!("dagflow_flows_started_total").increment(0);
    counter!("dagflow_flows_retried_total").increment(0);
    counter!("dagflow_node_retries_total").increment(0);
    counter!("dagflow_metrics_events_missed_total").increment(0);
    for outcome in FLOW_OUTCOMES {
        counter!("dagflow_flows_finished_total", "outcome" => outcome.as_str()).increment(0);
    }
    for outcome in NODE_OUTCOMES {
        counter!("dagflow_nodes_finished_total", "outcome" => outcome.as_str()).increment(0);
    }
    for outcome in RUN_OUTCOMES {
        // Registering is enough: the exporter renders a histogram without samples
        // as zero buckets, a zero sum and a zero count.
        let _ = histogram!("dagflow_node_run_seconds", "outcome" => outcome);
    }
    gauge!("dagflow_flows_running").set(0.0);
    gauge!("dagflow_store_bytes").set(0.0);
    gauge!("dagflow_ws_sessions").set(0.0);
    gauge!("dagflow_event_subscribers").set(0.0);
    for state in ["ready", "delayed"] {
        gauge!("dagflow_queue_depth", "queue" => dagflow_actors::spec::DEFAULT_QUEUE, "state" => state)
            .set(0.0);
    }
}

/// Every queue Redis knows (as `GET /queues` lists them); empty when Redis does
/// not answer in time (the scrape still succeeds).
async fn queue_reports(state: &ApiState) -> Vec<QueueReport> {
    let work = queues::all(state.engine.queue(), &state.queues);
    match tokio::time::timeout(DEPTH_TIMEOUT, work).await {
        Ok(Ok(reports)) => reports,
        Ok(Err(e)) => {
            debug!(error = %e, "queue figures unavailable for metrics");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// The per-scrape queue families (see the module's documentation), appended to
/// `out` in the Prometheus text format.
fn queue_text(out: &mut String, reports: &[QueueReport]) {
    use std::fmt::Write;
    let mut family = |name: &str, help: &str, samples: &mut dyn Iterator<Item = (String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
        out.push('\n');
    };
    let q = |r: &QueueReport| format!("queue=\"{}\"", label(&r.stats.name));
    family(
        "dagflow_queue_ready",
        "ready jobs of a queue (in a lane, not yet taken), by priority and lane: started flows, new flows",
        &mut reports.iter().flat_map(|r| {
            r.stats.ready.iter().flat_map(move |p| {
                [("started", p.started), ("new", p.fresh)].map(|(lane, n)| {
                    (format!("{},priority=\"{}\",lane=\"{lane}\"", q(r), p.priority), n)
                })
            })
        }),
    );
    family(
        "dagflow_queue_running",
        "jobs of a queue taken by a worker and not yet acknowledged",
        &mut reports.iter().map(|r| (q(r), r.stats.running)),
    );
    family(
        "dagflow_queue_delayed",
        "retries of a queue waiting for their backoff",
        &mut reports.iter().map(|r| (q(r), r.stats.delayed)),
    );
    family(
        "dagflow_queue_held_back",
        "jobs of a queue held back by concurrency keys at their limit, rate limits out of tokens or flow concurrency keys at their limit (the 1000 keys holding back the most)",
        &mut reports.iter().flat_map(|r| {
            [
                ("concurrency", r.stats.held_by_concurrency),
                ("rateLimit", r.stats.held_by_rate),
                ("flowConcurrency", r.stats.held_by_flow),
            ]
            .map(|(kind, n)| (format!("{},kind=\"{kind}\"", q(r)), n))
        }),
    );
    family(
        "dagflow_queue_held_back_key",
        &format!(
            "jobs of a queue held back by one key, for the {TOP_HELD} keys holding back the most"
        ),
        &mut reports.iter().flat_map(|r| {
            r.stats.held_back.iter().map(move |h| {
                let kind = match h.kind {
                    dagflow_actors::queue::HeldKind::Concurrency => "concurrency",
                    dagflow_actors::queue::HeldKind::RateLimit => "rateLimit",
                    dagflow_actors::queue::HeldKind::FlowConcurrency => "flowConcurrency",
                };
                let labels = format!("{},kind=\"{kind}\",key=\"{}\"", q(r), label(&h.key));
                (labels, h.waiting)
            })
        }),
    );
    family(
        "dagflow_queue_workers",
        "live workers serving a queue, by their heartbeats",
        &mut reports.iter().map(|r| (q(r), r.workers.len() as u64)),
    );
    family(
        "dagflow_queue_worker_concurrency",
        "jobs of a queue its live workers may run at once, together",
        &mut reports.iter().map(|r| (q(r), r.total_concurrency())),
    );
}

/// A label value, escaped as the text format wants (`\`, `"`, newline).
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The engine's own counters (background work) and the running-flow gauges.
fn engine_stats(engine: &Engine) {
    use std::sync::atomic::Ordering::Relaxed;
    gauge!("dagflow_flows_awake").set(engine.running_flows() as f64);
    let Some(stats) = engine.stats() else {
        return;
    };
    gauge!("dagflow_flows_running").set(stats.running_flows.load(Relaxed).max(0) as f64);
    gauge!("dagflow_reports_parked").set(stats.parked.load(Relaxed) as f64);
    counter!("dagflow_reports_handed_back_total").absolute(stats.handed_back.load(Relaxed));
    counter!("dagflow_completions_redelivered_total").absolute(stats.redelivered.load(Relaxed));
    counter!("dagflow_reconcile_passes_total").absolute(stats.reconcile_passes.load(Relaxed));
    counter!("dagflow_reconcile_flows_checked_total")
        .absolute(stats.reconcile_checked.load(Relaxed));
    counter!("dagflow_reconcile_jobs_repaired_total")
        .absolute(stats.reconcile_repaired.load(Relaxed));
    counter!("dagflow_retries_promoted_total").absolute(stats.promoted.load(Relaxed));
    counter!("dagflow_flow_actor_restarts_total").absolute(stats.actor_restarts.load(Relaxed));
    counter!("dagflow_flows_swept_total").absolute(stats.flows_swept.load(Relaxed));
    if let Some(bytes) = engine.store_size() {
        gauge!("dagflow_store_bytes").set(bytes as f64);
    }
    let notify = &stats.notify;
    counter!("dagflow_callbacks_delivered_total").absolute(notify.delivered.load(Relaxed));
    counter!("dagflow_callback_attempts_failed_total")
        .absolute(notify.failed_attempts.load(Relaxed));
    counter!("dagflow_callbacks_dropped_total").absolute(notify.dropped.load(Relaxed));
    gauge!("dagflow_callbacks_pending").set(notify.pending.load(Relaxed) as f64);
    gauge!("dagflow_callbacks_in_flight").set(notify.in_flight.load(Relaxed) as f64);
    if let Some(traces) = engine.trace_stats() {
        counter!("dagflow_trace_spans_total").absolute(traces.spans.load(Relaxed));
        counter!("dagflow_trace_spans_partial_total").absolute(traces.partial.load(Relaxed));
        counter!("dagflow_trace_events_lost_total").absolute(traces.events_lost.load(Relaxed));
        gauge!("dagflow_trace_flows_open").set(traces.flows_open.load(Relaxed) as f64);
        counter!("dagflow_trace_flows_untraced_total")
            .absolute(traces.flows_untraced.load(Relaxed));
    }
}

/// Attempt starts older than this are forgotten: their flow was deleted while they
/// ran (a deleted flow sends no end event), or they run longer than any run-time
/// bucket anyway.
const STARTED_TTL: Duration = Duration::from_secs(6 * 3600);
/// How often forgotten starts are looked for.
const STARTED_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// When each running attempt's start event arrived, by flow, so that a flow's
/// entries go when it ends and the map stays as small as the work in flight.
type Started = HashMap<FlowId, HashMap<(String, u32), Instant>>;

async fn feed(mut events: broadcast::Receiver<Arc<FlowEvent>>, recorder: Arc<PrometheusRecorder>) {
    let mut started = Started::new();
    let mut last_prune = Instant::now();
    loop {
        if last_prune.elapsed() >= STARTED_PRUNE_EVERY {
            last_prune = Instant::now();
            prune(&mut started, last_prune);
        }
        match events.recv().await {
            Ok(event) => {
                with_local_recorder(&*recorder, || observe(&event, Instant::now(), &mut started))
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                with_local_recorder(&*recorder, || {
                    counter!("dagflow_metrics_events_missed_total").increment(missed)
                });
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Forgets attempt starts older than [`STARTED_TTL`] (and flows left without any),
/// so the map is bounded by the work in flight even when flows are deleted.
fn prune(started: &mut Started, now: Instant) {
    started.retain(|_, nodes| {
        nodes.retain(|_, at| now.saturating_duration_since(*at) < STARTED_TTL);
        !nodes.is_empty()
    });
}

/// Counts one event that arrived at `now`.
fn observe(event: &FlowEvent, now: Instant, started: &mut Started) {
    let Some(node) = &event.node else {
        match FlowStatus::parse(&event.status) {
            Some(FlowStatus::Running) if event.seq <= 1 => {
                counter!("dagflow_flows_started_total").increment(1)
            }
            Some(FlowStatus::Running) => counter!("dagflow_flows_retried_total").increment(1),
            Some(status) => {
                counter!("dagflow_flows_finished_total", "outcome" => status.as_str()).increment(1);
                started.remove(&event.flow_id);
            }
            None => {}
        }
        return;
    };
    let mut run_time = |attempt: u32, outcome: &'static str| {
        let start = started
            .get_mut(&event.flow_id)
            .and_then(|nodes| nodes.remove(&(node.clone(), attempt)));
        if let Some(start) = start {
            let seconds = now.saturating_duration_since(start).as_secs_f64();
            histogram!("dagflow_node_run_seconds", "outcome" => outcome).record(seconds);
        }
    };
    match node_status(&event.status) {
        Some(NodeStatus::Active) => {
            // Progress events repeat `active`; the first one is the start.
            started
                .entry(event.flow_id)
                .or_default()
                .entry((node.clone(), event.attempt))
                .or_insert(now);
        }
        Some(NodeStatus::Queued) if event.error.is_some() => {
            // A failed attempt queued again: the previous attempt ended here.
            counter!("dagflow_node_retries_total").increment(1);
            run_time(event.attempt.saturating_sub(1), "retried");
        }
        Some(status @ (NodeStatus::Completed | NodeStatus::Failed)) => {
            run_time(event.attempt, status.as_str());
            counter!("dagflow_nodes_finished_total", "outcome" => status.as_str()).increment(1);
        }
        Some(status @ (NodeStatus::Skipped | NodeStatus::Cancelled)) => {
            counter!("dagflow_nodes_finished_total", "outcome" => status.as_str()).increment(1);
        }
        _ => {}
    }
}

fn node_status(s: &str) -> Option<NodeStatus> {
    [
        NodeStatus::Pending,
        NodeStatus::Queued,
        NodeStatus::Active,
        NodeStatus::Completed,
        NodeStatus::Failed,
        NodeStatus::Skipped,
        NodeStatus::Cancelled,
    ]
    .into_iter()
    .find(|n| n.as_str() == s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn event(v: serde_json::Value) -> FlowEvent {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn counts_outcomes_and_run_times() {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&RUN_SECONDS_BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        let id = FlowId::new().to_string();
        let mut started = Started::new();
        let t0 = Instant::now();
        let at = |micros: u64| t0 + Duration::from_micros(micros);
        // `ts` are whole milliseconds and equal here: the run time comes from the
        // arrival clock, 0.25 ms for `a` and 0.5 s for `b`.
        let events = [
            (
                0,
                json!({"flowId": id, "status": "running", "attempt": 0, "seq": 1, "ts": 7}),
            ),
            (
                0,
                json!({"flowId": id, "node": "a", "status": "queued", "attempt": 1, "seq": 2, "ts": 7}),
            ),
            (
                100,
                json!({"flowId": id, "node": "a", "status": "active", "attempt": 1, "seq": 3, "ts": 7}),
            ),
            (
                200,
                json!({"flowId": id, "node": "a", "status": "active", "attempt": 1, "seq": 4, "ts": 7, "progress": 5}),
            ),
            (
                350,
                json!({"flowId": id, "node": "a", "status": "completed", "attempt": 1, "seq": 5, "ts": 7}),
            ),
            (
                400,
                json!({"flowId": id, "node": "b", "status": "active", "attempt": 1, "seq": 6, "ts": 7}),
            ),
            (
                500_400,
                json!({"flowId": id, "node": "b", "status": "completed", "attempt": 1, "seq": 7, "ts": 7}),
            ),
            (
                500_400,
                json!({"flowId": id, "status": "completed", "attempt": 0, "seq": 8, "ts": 7}),
            ),
        ];
        with_local_recorder(&recorder, || {
            register_at_zero();
            for (micros, e) in events {
                observe(&event(e), at(micros), &mut started);
            }
        });
        assert!(started.is_empty());
        let text = handle.render();
        for line in [
            "dagflow_flows_started_total 1",
            "dagflow_flows_finished_total{outcome=\"completed\"} 1",
            "dagflow_flows_finished_total{outcome=\"cancelled\"} 0",
            "dagflow_nodes_finished_total{outcome=\"completed\"} 2",
            "dagflow_nodes_finished_total{outcome=\"skipped\"} 0",
            "dagflow_node_run_seconds_bucket{outcome=\"completed\",le=\"0.001\"} 1",
            "dagflow_node_run_seconds_bucket{outcome=\"completed\",le=\"0.5\"} 2",
            "dagflow_node_run_seconds_sum{outcome=\"completed\"} 0.50025",
            "dagflow_node_run_seconds_count{outcome=\"retried\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }

    #[test]
    fn every_family_is_there_before_anything_happened() {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&RUN_SECONDS_BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        with_local_recorder(&recorder, || {
            describe();
            register_at_zero();
        });
        let text = handle.render();
        for family in [
            "dagflow_flows_started_total",
            "dagflow_flows_retried_total",
            "dagflow_flows_finished_total",
            "dagflow_nodes_finished_total",
            "dagflow_node_retries_total",
            "dagflow_node_run_seconds",
            "dagflow_flows_running",
            "dagflow_queue_depth",
            "dagflow_ws_sessions",
            "dagflow_event_subscribers",
            "dagflow_metrics_events_missed_total",
            "dagflow_flows_awake",
            "dagflow_reports_parked",
            "dagflow_reports_handed_back_total",
            "dagflow_completions_redelivered_total",
            "dagflow_reconcile_passes_total",
            "dagflow_reconcile_flows_checked_total",
            "dagflow_reconcile_jobs_repaired_total",
            "dagflow_retries_promoted_total",
            "dagflow_flow_actor_restarts_total",
            "dagflow_flows_swept_total",
            "dagflow_store_bytes",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "no {family} in:\n{text}"
            );
        }
        for outcome in RUN_OUTCOMES {
            let line = format!("dagflow_node_run_seconds_count{{outcome=\"{outcome}\"}} 0");
            assert!(text.contains(&line), "missing {line} in:\n{text}");
        }
    }
}

#[cfg(test)]
mod queue_text_tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_families_typed_without_samples() {
        assert_eq!(label("plain"), "plain");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut text = String::new();
        queue_text(&mut text, &[]);
        for family in [
            "dagflow_queue_ready",
            "dagflow_queue_running",
            "dagflow_queue_delayed",
            "dagflow_queue_held_back",
            "dagflow_queue_held_back_key",
            "dagflow_queue_workers",
            "dagflow_queue_worker_concurrency",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} gauge\n")),
                "{family} in:\n{text}"
            );
        }
        assert!(!text.contains('{'), "no samples without queues: {text}");
    }
}

#[cfg(test)]
mod prune_tests {
    use super::*;

    #[test]
    fn starts_of_deleted_flows_are_forgotten_after_the_ttl() {
        let t0 = Instant::now();
        let mut started = Started::new();
        let (old, new) = (FlowId::new(), FlowId::new());
        started.entry(old).or_default().insert(("a".into(), 1), t0);
        started
            .entry(new)
            .or_default()
            .insert(("a".into(), 1), t0 + STARTED_TTL);
        prune(&mut started, t0 + STARTED_TTL + Duration::from_secs(1));
        assert!(!started.contains_key(&old));
        assert!(started.contains_key(&new));
    }
}
