//! Reconciliation: Redis is a cache of the snapshots, and this pass keeps it so.
//!
//! The marker (`P:marker`) only tells that Redis lost everything. Redis restarted
//! from an older RDB or AOF, a failover to a replica that lagged, or keys removed
//! by hand keep the marker and lose recent jobs; without this pass their flows
//! would wait forever. The pass walks the unfinished flows in the store, a chunk at
//! a time, and compares each queued or running node's current attempt with Redis
//! (`check.lua`: the jobs-hash field, the stream entry or the delayed member). A
//! job that is gone is put back at once through its flow's actor (`repair.lua`); a
//! job whose field says a worker reported it although the snapshot does not hold
//! the outcome is put back only if it is still so one pass later (its completion
//! record was lost, not merely in flight).
//!
//! Cost is bounded and spread: [`FLOWS_PER_CHUNK`] flows every [`CHUNK_EVERY`]
//! (at most 1,000 flows a second, one read-only script call each), and a new pass
//! starts at most every `every` (default [`DEFAULT_RECONCILE_EVERY`]). So a loss
//! is repaired within `every + unfinished flows / 1,000` seconds (one pass more
//! for a lost completion record); no pause grows with the number of flows.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tracing::{debug, info, warn};

use super::supervisor::SupervisorMsg;
use super::{load_state, Shared};
use crate::ids::FlowId;
use crate::queue::{job_field, JobCheck, Lane};

/// How often a reconciliation pass starts at most, by default.
pub const DEFAULT_RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// Flows compared per chunk.
pub const FLOWS_PER_CHUNK: usize = 50;
/// Pause between chunks.
pub const CHUNK_EVERY: Duration = Duration::from_millis(50);

/// Runs passes until the task is aborted.
pub(crate) async fn reconcile_loop(
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    every: Duration,
) {
    // Jobs found reported-but-not-applied in the previous pass: (flow, field).
    let mut suspects: HashSet<(FlowId, String)> = HashSet::new();
    loop {
        let started = Instant::now();
        let mut seen: HashSet<(FlowId, String)> = HashSet::new();
        let mut cursor: Option<FlowId> = None;
        loop {
            let page = match shared.store.unfinished_page(cursor, FLOWS_PER_CHUNK) {
                Ok(page) => page,
                Err(e) => {
                    warn!(error = %e, "reconciliation could not list flows");
                    break;
                }
            };
            let done = page.len() < FLOWS_PER_CHUNK;
            cursor = page.last().copied();
            for id in page {
                match check_flow(&shared, id, &suspects, &mut seen).await {
                    Ok(fields) if !fields.is_empty() => {
                        info!(flow = %id, jobs = fields.len(), "reconciliation found jobs redis lost; putting them back");
                        let _ = supervisor.cast(SupervisorMsg::Repair(id, fields));
                    }
                    Ok(_) => {}
                    Err(e) => debug!(flow = %id, error = %e, "reconciliation skipped a flow"),
                }
                shared
                    .stats
                    .reconcile_checked
                    .fetch_add(1, Ordering::Relaxed);
            }
            if done {
                break;
            }
            tokio::time::sleep(CHUNK_EVERY).await;
        }
        suspects = seen;
        shared
            .stats
            .reconcile_passes
            .fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(every.saturating_sub(started.elapsed()).max(CHUNK_EVERY)).await;
    }
}

/// The fields of one flow's jobs to put back.
async fn check_flow(
    shared: &Shared,
    id: FlowId,
    suspects: &HashSet<(FlowId, String)>,
    seen: &mut HashSet<(FlowId, String)>,
) -> Result<Vec<String>, crate::error::EngineError> {
    let Some((state, _)) = load_state(&shared.store, id)? else {
        return Ok(Vec::new());
    };
    if state.status().is_terminal() {
        return Ok(Vec::new());
    }
    // Every job the snapshot says is queued or running: DAG nodes that are jobs and
    // live map elements (a map node or a wait is no job).
    let jobs: Vec<(String, String, Lane)> = state
        .resume(0)
        .into_iter()
        .map(|job| {
            let node = state.dag().node(state.job_node(job.node));
            let fresh = state.is_fresh_job(job.node, job.attempt) && job.delay_ms == 0;
            (
                job_field(&state.node_name(job.node), job.attempt),
                node.queue.to_string(),
                Lane::new(node.priority, fresh),
            )
        })
        .collect();
    let checks = shared.queue.check_jobs(&id.to_string(), &jobs).await?;
    let mut repair = Vec::new();
    for ((field, _, _), check) in jobs.into_iter().zip(checks) {
        match check {
            JobCheck::Present => {}
            JobCheck::Lost => repair.push(field),
            JobCheck::ReportedNotApplied => {
                let key = (id, field);
                if suspects.contains(&key) {
                    repair.push(key.1);
                } else {
                    seen.insert(key);
                }
            }
        }
    }
    Ok(repair)
}
