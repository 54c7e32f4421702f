//! `CompletionRouter`: carries reports to their flow actors: the records of workers
//! in other processes (the `P:completions` stream), and every report handed back
//! by an actor that stopped or failed before acknowledging it (see
//! [`delivery`](super::delivery)).
//!
//! The blocking read runs in a task the actor owns, on its own connection, so the
//! shared connection never blocks. A record is acknowledged by the flow actor only
//! after the flush that applies it; a record for a flow that no longer exists (or
//! has ended) is acknowledged and dropped here. A record for a flow that exists but
//! has no actor at this instant (it hibernates, or is being restarted) is parked
//! and tried again with a growing delay while the supervisor wakes the flow; past
//! a bound it is let go to Redis, which still holds it pending (a local report is
//! handed to the completions stream first).
//!
//! Bounds: at most [`WINDOW`] records read from Redis are in flight (routed, not
//! yet acknowledged) at once, at most [`MAX_PARKED`] reports wait here, and records
//! that stay unacknowledged for `redeliver_after` (default
//! [`REDELIVER_AFTER`](super::delivery::REDELIVER_AFTER)) are claimed and routed again.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::delivery::{Ack, HandBack, Receipt, Report};
use super::flow::FlowMsg;
use super::supervisor::SupervisorMsg;
use super::Shared;
use crate::ids::FlowId;
use crate::queue::{CompletionReader, CompletionRecord, Keys};
use crate::state::FlowStatus;

/// Records read per round trip.
const BATCH: usize = 256;
/// How long one read blocks; bounds how long a stop waits for the reader, and how
/// long a handed-back report waits before it is routed again.
const BLOCK_MS: u64 = 250;
/// Records read from Redis and not yet settled or handed back, at most.
pub const WINDOW: usize = 4096;
/// Reports parked (their flow has no actor yet), at most; more are let go to Redis.
pub const MAX_PARKED: usize = 10_000;
/// How often a parked report is tried before it is let go to Redis.
const MAX_TRIES: u32 = 8;
/// How often stale records are looked for.
const CLAIM_EVERY: Duration = Duration::from_secs(5);

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
    /// Reports handed back by actors that dropped them.
    pub handback: mpsc::UnboundedReceiver<Report>,
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

/// A report whose flow had no actor when it was routed.
struct Parked {
    report: Report,
    tries: u32,
    due: Instant,
}

/// The reading task's state.
struct Routing {
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    handback_tx: HandBack,
    window: Arc<Semaphore>,
    parked: VecDeque<Parked>,
}

async fn read_loop(args: RouterArgs, mut reader: CompletionReader, stop: CancellationToken) {
    let RouterArgs {
        shared,
        supervisor,
        redis_url,
        keys,
        consumer,
        mut handback,
    } = args;
    let Some(handback_tx) = shared.handback.clone() else {
        warn!("completion router started without a hand-back channel");
        return;
    };
    let mut routing = Routing {
        shared,
        supervisor,
        handback_tx,
        window: Arc::new(Semaphore::new(WINDOW)),
        parked: VecDeque::new(),
    };
    let mut last_claim = Instant::now();
    while !stop.is_cancelled() {
        while let Ok(report) = handback.try_recv() {
            routing
                .shared
                .stats
                .handed_back
                .fetch_add(1, Ordering::Relaxed);
            routing.route(report, None, 0).await;
        }
        routing.retry_parked().await;
        let result: Result<(), crate::queue::QueueError> = async {
            if last_claim.elapsed() >= CLAIM_EVERY.min(routing.shared.redeliver_after / 2) {
                last_claim = Instant::now();
                let stale = reader
                    .claim_stale(routing.shared.redeliver_after.as_millis() as u64, BATCH)
                    .await?;
                if !stale.is_empty() {
                    debug!(
                        records = stale.len(),
                        "routing completion records again that were not acknowledged in time"
                    );
                    routing
                        .shared
                        .stats
                        .redelivered
                        .fetch_add(stale.len() as u64, Ordering::Relaxed);
                }
                for record in stale {
                    let permit = Arc::clone(&routing.window).try_acquire_owned().ok();
                    routing.route_record(record, permit).await;
                }
            }
            let room = routing.window.available_permits().min(BATCH);
            if room == 0 {
                // The flow actors are behind: wait for acks to free the window.
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
                return Ok(());
            }
            let block = if routing.parked.is_empty() {
                BLOCK_MS
            } else {
                50
            };
            let records = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                r = reader.read(room, block) => r?,
            };
            for record in records {
                let permit = Arc::clone(&routing.window).try_acquire_owned().ok();
                routing.route_record(record, permit).await;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            warn!(error = %e, "reading completions failed; reconnecting");
            tokio::time::sleep(Duration::from_millis(500)).await;
            match CompletionReader::connect(&redis_url, keys.clone(), &consumer).await {
                Ok(r) => reader = r,
                Err(e) => debug!(error = %e, "reconnecting the completion reader failed"),
            }
        }
    }
}

impl Routing {
    async fn route_record(
        &mut self,
        record: CompletionRecord,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let Ok(flow) = FlowId::from_str(&record.flow_id) else {
            debug!(flow = %record.flow_id, "dropping completion record with a malformed flow id");
            self.ack(&Ack::Completion(record.entry_id)).await;
            return;
        };
        let report = Report {
            flow,
            node: record.node,
            attempt: record.attempt,
            outcome: record.outcome,
            ack: Ack::Completion(record.entry_id),
        };
        self.route(report, permit, 0).await;
    }

    /// Hands a report to its flow's actor, or parks it, or acknowledges it when the
    /// flow ended or is gone.
    async fn route(&mut self, report: Report, permit: Option<OwnedSemaphorePermit>, tries: u32) {
        let flow = report.flow;
        let mut receipt = Receipt::new(report, Some(self.handback_tx.clone()));
        if let Some(permit) = permit {
            receipt = receipt.with_permit(permit);
        }
        if let Some(actor) = self.shared.directory.get(flow) {
            if cast_is_lost() {
                // As if the actor had died with the report in its mailbox: the
                // receipt's drop hands it back.
                drop(receipt);
                return;
            }
            match actor.cast(FlowMsg::JobReported(receipt)) {
                Ok(()) => return,
                Err(MessagingErr::SendErr(FlowMsg::JobReported(back))) => receipt = back,
                // Any other error consumed the message; its drop handed it back.
                Err(_) => return,
            }
        }
        let report = receipt.into_report();
        match self.shared.store.flow_record(flow) {
            Ok(Some(rec)) if rec.flow_status().ok() == Some(FlowStatus::Running) => {
                // Hibernating (or being restarted): the supervisor wakes it.
                let _ = self.supervisor.cast(SupervisorMsg::Wake(flow));
                self.park(report, tries).await;
            }
            Ok(_) => {
                debug!(flow = %flow, node = %report.node, "dropping a report of a flow that ended or was deleted");
                self.ack(&report.ack).await;
            }
            Err(e) => {
                warn!(error = %e, "store lookup failed while routing a report");
                self.park(report, tries).await;
            }
        }
    }

    /// A parked report holds no window permit: the window bounds what is in flight
    /// to the actors, [`MAX_PARKED`] what waits here.
    async fn park(&mut self, report: Report, tries: u32) {
        if tries >= MAX_TRIES || self.parked.len() >= MAX_PARKED {
            self.let_go(report).await;
            return;
        }
        let delay = Duration::from_millis(100u64 << tries.min(6)).min(Duration::from_secs(5));
        self.parked.push_back(Parked {
            report,
            tries: tries + 1,
            due: Instant::now() + delay,
        });
        self.shared
            .stats
            .parked
            .store(self.parked.len() as u64, Ordering::Relaxed);
    }

    async fn retry_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let now = Instant::now();
        let (due, waiting): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.due <= now);
        self.parked = waiting.into();
        for p in due {
            self.route(p.report, None, p.tries).await;
        }
        self.shared
            .stats
            .parked
            .store(self.parked.len() as u64, Ordering::Relaxed);
    }

    /// Gives a report that could not be delivered for a long time back to Redis:
    /// a record stays pending in `P:completions` and is claimed again after
    /// `redeliver_after`; a local report is written to the completions stream
    /// (which also acknowledges its job), where Redis owns it from then on.
    async fn let_go(&self, report: Report) {
        match &report.ack {
            Ack::Local(ack) => {
                let result = self
                    .shared
                    .queue
                    .report_job(
                        &ack.stream,
                        &ack.entry_id,
                        &ack.flow_id,
                        &report.node,
                        report.attempt,
                        &report.outcome,
                    )
                    .await;
                if let Err(e) = result {
                    // The job stays pending in its stream and runs again after its lease.
                    warn!(error = %e, job = %ack.entry_id, "could not hand a local report to the completions stream");
                }
            }
            Ack::Completion(_) | Ack::None => {}
        }
    }

    async fn ack(&self, ack: &Ack) {
        let result = match ack {
            Ack::None => Ok(()),
            Ack::Local(local) => {
                self.shared
                    .queue
                    .ack_local(std::slice::from_ref(local))
                    .await
            }
            Ack::Completion(id) => {
                self.shared
                    .queue
                    .ack_completions(std::slice::from_ref(id))
                    .await
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "acknowledging a dropped report failed; redis delivers it again");
        }
    }
}

/// Fault injection (failpoint `router::cast`): the cast is lost as if the actor had
/// died with the report in its mailbox. Always false in release builds.
fn cast_is_lost() -> bool {
    fail::fail_point!("router::cast", |_| true);
    false
}
