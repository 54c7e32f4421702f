//! `CompletionRouter`: carries the reports of workers in other processes (the
//! `P:completions` stream) to their flow actors.
//!
//! The blocking read runs in a task the actor owns, on its own connection, so the
//! shared connection never blocks. A record is acknowledged by the flow actor only
//! after the flush that applies it; a record for a flow that no longer exists (or
//! has ended) is acknowledged and dropped here. A record for a flow that exists but
//! has no actor at this instant (it hibernates, or is being restarted) is kept and
//! tried again, and the supervisor is asked to wake the flow.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::flow::{Ack, FlowMsg};
use super::supervisor::SupervisorMsg;
use super::Shared;
use crate::ids::FlowId;
use crate::queue::{CompletionReader, CompletionRecord, Keys};
use crate::state::FlowStatus;

/// Records read per round trip.
const BATCH: usize = 256;
/// How long one read blocks; bounds how long a stop waits for the reader.
const BLOCK_MS: u64 = 1000;

/// The router actor.
pub struct CompletionRouter;

/// What the router starts with.
pub struct RouterArgs {
    /// Engine-wide handles.
    pub shared: Arc<Shared>,
    /// Wakes hibernating flows that a record concerns.
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Redis to read from (the reader needs its own connection).
    pub redis_url: String,
    /// Key names.
    pub keys: Keys,
    /// This engine's stable consumer name, so a restart re-reads its own pending records.
    pub consumer: String,
}

/// The router's state: its reading task.
pub struct RouterState {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl Actor for CompletionRouter {
    type Msg = ();
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RouterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let reader =
            CompletionReader::connect(&args.redis_url, args.keys.clone(), &args.consumer).await?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(read_loop(args, reader, stop.clone()));
        Ok(RouterState { task, stop })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop.cancel();
        state.task.abort();
        // Wait until the task is gone: it holds the store, which a caller may open
        // again as soon as the engine says it stopped.
        let _ = (&mut state.task).await;
        Ok(())
    }
}

async fn read_loop(args: RouterArgs, mut reader: CompletionReader, stop: CancellationToken) {
    let shared = args.shared;
    let supervisor = args.supervisor;
    let mut parked: Vec<CompletionRecord> = Vec::new();
    while !stop.is_cancelled() {
        // Records of flows being restarted wait here, and stay pending in Redis so
        // that a crash does not lose them either.
        let retry = std::mem::take(&mut parked);
        for record in retry {
            route(&shared, &supervisor, record, &mut parked).await;
        }
        let block = if parked.is_empty() { BLOCK_MS } else { 100 };
        let records = tokio::select! {
            _ = stop.cancelled() => break,
            r = reader.read(BATCH, block) => r,
        };
        match records {
            Ok(records) => {
                for record in records {
                    route(&shared, &supervisor, record, &mut parked).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "reading completions failed; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
                match CompletionReader::connect(&args.redis_url, args.keys.clone(), &args.consumer)
                    .await
                {
                    Ok(r) => reader = r,
                    Err(e) => debug!(error = %e, "reconnecting the completion reader failed"),
                }
            }
        }
    }
}

async fn route(
    shared: &Shared,
    supervisor: &ActorRef<SupervisorMsg>,
    record: CompletionRecord,
    parked: &mut Vec<CompletionRecord>,
) {
    let Ok(flow) = FlowId::from_str(&record.flow_id) else {
        drop_record(shared, &record, "malformed flow id").await;
        return;
    };
    if let Some(actor) = shared.directory.get(flow) {
        let msg = FlowMsg::JobReported {
            node: record.node.clone(),
            attempt: record.attempt,
            outcome: record.outcome.clone(),
            ack: Ack::Completion(record.entry_id.clone()),
        };
        if actor.cast(msg).is_ok() {
            return;
        }
    }
    match shared.store.flow_record(flow) {
        Ok(Some(rec)) if rec.flow_status().ok() == Some(FlowStatus::Running) => {
            // Hibernating (or being restarted): the supervisor wakes it; the record
            // is routed again in 100 ms.
            let _ = supervisor.cast(SupervisorMsg::Wake(flow));
            parked.push(record);
        }
        Ok(_) => drop_record(shared, &record, "flow ended or deleted").await,
        Err(e) => {
            warn!(error = %e, "store lookup failed while routing a completion");
            parked.push(record);
        }
    }
}

async fn drop_record(shared: &Shared, record: &CompletionRecord, why: &str) {
    debug!(flow = %record.flow_id, node = %record.node, why, "dropping completion record");
    if let Err(e) = shared
        .queue
        .ack_completions(std::slice::from_ref(&record.entry_id))
        .await
    {
        debug!(error = %e, "acknowledging a dropped completion failed; it will be read again");
    }
}
