//! The worker pool: per queue, a `QueueFetcher` actor reads jobs (on its own Redis
//! connection) and hands each to an idle `WorkerActor`; there are exactly
//! `concurrency` workers per queue, so at most that many jobs of the queue run at
//! once and no job is read before a worker is free to take it.
//!
//! A worker runs the handler in its own task, so a panic fails the job and not the
//! worker, with the node's timeout and a cancellation token. It reports:
//! - in the engine's process, straight to the flow actor (a message, no Redis); the
//!   job is acknowledged by the flow actor after the flush that holds the result;
//! - elsewhere (or when the flow has no actor here), through the completions stream
//!   with one atomic script.
//!
//! The fetcher also promotes due retries, renews the lease of running jobs, and
//! reclaims jobs of workers that vanished (failing those reclaimed too often).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::delivery::{Ack, HandBack, Receipt, Report};
use super::flow::FlowMsg;
use super::Directory;
use crate::handler::{Handlers, JobContext};
use crate::ids::{FlowId, JobId};
use crate::queue::{CancelListener, Delivery, Keys, LocalAck, Outcome, Queue, QueueReader};
use crate::state::FailureCause;

/// How long one read blocks.
const BLOCK_MS: u64 = 250;
/// How long the fetcher sleeps at most while every worker is busy (lease renewals
/// and reclaims still happen on time).
const TICK: Duration = Duration::from_millis(100);
/// A job's progress goes out at most this often; values in between are coalesced
/// (the latest wins), so a handler reporting in a tight loop costs bounded memory
/// and writes.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// How often a fetcher removes consumers of its group that hold nothing and have
/// been idle for [`CONSUMER_IDLE_MS`] (every `dagflow worker` start adds one).
const JANITOR_EVERY: Duration = Duration::from_secs(600);
/// Idle time after which a consumer with no pending job is removed from its group.
const CONSUMER_IDLE_MS: u64 = 3_600_000;
/// How often a worker process announces itself in `P:workers`.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// What every worker of a process shares.
pub struct WorkerCtx {
    /// The shared Redis client.
    pub queue: Queue,
    /// Redis URL, for the connections of readers and the cancel listener.
    pub redis_url: String,
    /// Key names.
    pub keys: Keys,
    /// Handlers by name.
    pub handlers: Handlers,
    /// The flow actors of this process, when it runs an engine (the fast path).
    pub directory: Option<Directory>,
    /// Where a report handed to a flow actor goes back if the actor drops it.
    pub handback: Option<HandBack>,
    /// Running jobs' cancellation tokens by job id.
    pub cancels: Mutex<HashMap<String, CancellationToken>>,
    /// Time a cancelled handler gets to return before its task is aborted.
    pub cancel_grace: Duration,
    /// Finished jobs not yet applied by the engine before a queue takes no fresh job
    /// (`EngineBuilder::backlog_limit`); `None`: the default per slot.
    pub backlog_limit: Option<usize>,
    /// A job reclaimed from a dead worker after this long.
    pub lease: Duration,
    /// Jobs running now, across queues.
    pub running: AtomicUsize,
    /// Consumer name of this process in every queue's group.
    pub consumer: String,
    /// Fires when shutdown's deadline passes: running jobs are abandoned unreported,
    /// so they stay pending in Redis and run again (after a restart, at once).
    pub abandon: CancellationToken,
}

/// A pool of workers: one fetcher per queue plus the process-wide tasks.
pub struct WorkerPool {
    ctx: Arc<WorkerCtx>,
    fetchers: Vec<(ActorRef<()>, CancellationToken)>,
    tasks: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts fetchers and workers for `queues` (name, concurrency).
    pub async fn start(
        ctx: Arc<WorkerCtx>,
        queues: &[(String, usize)],
    ) -> Result<WorkerPool, crate::error::EngineError> {
        let mut fetchers = Vec::new();
        for (queue, concurrency) in queues {
            let stop = CancellationToken::new();
            // Creating the group is a write: a Redis out of memory refuses it until
            // memory is freed. Wait for that instead of exiting (PROTOCOL.md: every
            // start step is retried).
            let reader = loop {
                match QueueReader::connect(&ctx.redis_url, ctx.keys.clone(), queue, &ctx.consumer)
                    .await
                {
                    Ok(reader) => break reader,
                    Err(e) if e.is_out_of_memory() => {
                        warn!(queue, error = %e, "redis refuses writes (out of memory); retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let mut reader = reader;
            let concurrency = (*concurrency).max(1);
            reader.limit_backlog(
                ctx.backlog_limit
                    .unwrap_or(crate::engine::DEFAULT_BACKLOG_PER_SLOT * concurrency),
                &ctx.keys,
            );
            let args = FetcherArgs {
                ctx: Arc::clone(&ctx),
                reader: Mutex::new(Some(reader)),
                concurrency,
                stop: stop.clone(),
            };
            let (actor, _) = Actor::spawn(None, QueueFetcher, args).await.map_err(|e| {
                crate::error::EngineError::Internal(format!("spawning fetcher: {e}"))
            })?;
            fetchers.push((actor, stop));
        }
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(cancel_loop(Arc::clone(&ctx))));
        let info = serde_json::json!({
            "queues": queues.iter().map(|(q, c)| serde_json::json!({"name": q, "concurrency": c})).collect::<Vec<_>>(),
            "handlers": ctx.handlers.names(),
            "pid": std::process::id(),
        });
        tasks.push(tokio::spawn(heartbeat_loop(Arc::clone(&ctx), info)));
        info!(queues = queues.len(), consumer = %ctx.consumer, "worker pool started");
        Ok(WorkerPool {
            ctx,
            fetchers,
            tasks,
        })
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.ctx.running.load(Ordering::Relaxed)
    }

    /// Stops taking jobs, lets running ones finish until `deadline`, then cancels the
    /// rest (they stay pending in Redis and run again elsewhere or after a restart).
    pub async fn shutdown(self, deadline: Duration) {
        for (_, stop) in &self.fetchers {
            stop.cancel();
        }
        let until = Instant::now() + deadline;
        while self.running() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.running() > 0 {
            warn!(
                running = self.running(),
                "shutdown deadline passed; abandoning running jobs"
            );
            self.ctx.abandon.cancel();
            let until = Instant::now() + self.ctx.cancel_grace + Duration::from_millis(200);
            while self.running() > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for (actor, _) in &self.fetchers {
            let _ = actor
                .stop_and_wait(None, Some(Duration::from_secs(5)))
                .await;
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Reads one queue and dispatches to its workers.
pub struct QueueFetcher;

/// What a fetcher starts with.
pub struct FetcherArgs {
    ctx: Arc<WorkerCtx>,
    /// Taken by the read loop at start (an `Option` because `Arguments` must be moved in).
    reader: Mutex<Option<QueueReader>>,
    concurrency: usize,
    stop: CancellationToken,
}

/// The fetcher's state.
pub struct FetcherState {
    ctx: Arc<WorkerCtx>,
    idle_tx: mpsc::Sender<ActorRef<WorkerMsg>>,
    task: JoinHandle<()>,
}

impl Actor for QueueFetcher {
    type Msg = ();
    type State = FetcherState;
    type Arguments = FetcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: FetcherArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (idle_tx, idle_rx) = mpsc::channel(args.concurrency + 1);
        let running: Arc<Mutex<HashSet<RunningJob>>> = Arc::default();
        for _ in 0..args.concurrency {
            let worker = spawn_worker(&myself, &args.ctx, &idle_tx).await?;
            idle_tx.send(worker).await?;
        }
        let reader = args
            .reader
            .lock()
            .ok()
            .and_then(|mut r| r.take())
            .ok_or("fetcher started without a reader")?;
        let task = tokio::spawn(fetch_loop(
            Arc::clone(&args.ctx),
            reader,
            idle_rx,
            running,
            args.stop,
        ));
        Ok(FetcherState {
            ctx: args.ctx,
            idle_tx,
            task,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut FetcherState,
    ) -> Result<(), ActorProcessingErr> {
        state.task.abort();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut FetcherState,
    ) -> Result<(), ActorProcessingErr> {
        // A worker only fails through a bug of its own (handlers run in their own
        // task); replace it so the pool keeps its size.
        if let SupervisionEvent::ActorFailed(_, err) = event {
            warn!(error = %err, "worker actor failed; replacing it");
            // The failed worker's job left the running set with its guard, so it
            // is reclaimed after the lease; the replacement starts empty-handed.
            let worker = spawn_worker(&myself, &state.ctx, &state.idle_tx).await?;
            state.idle_tx.send(worker).await?;
        }
        Ok(())
    }
}

async fn spawn_worker(
    fetcher: &ActorRef<()>,
    ctx: &Arc<WorkerCtx>,
    idle_tx: &mpsc::Sender<ActorRef<WorkerMsg>>,
) -> Result<ActorRef<WorkerMsg>, ActorProcessingErr> {
    let args = WorkerArgs {
        ctx: Arc::clone(ctx),
        idle_tx: idle_tx.clone(),
    };
    let (worker, _) = Actor::spawn_linked(None, WorkerActor, args, fetcher.get_cell()).await?;
    Ok(worker)
}

async fn fetch_loop(
    ctx: Arc<WorkerCtx>,
    mut reader: QueueReader,
    mut idle_rx: mpsc::Receiver<ActorRef<WorkerMsg>>,
    running: Arc<Mutex<HashSet<RunningJob>>>,
    stop: CancellationToken,
) {
    let lease_ms = ctx.lease.as_millis() as u64;
    let renew_every = ctx.lease / 3;
    let reclaim_every = (ctx.lease / 2).max(Duration::from_millis(50));
    let mut idle: Vec<ActorRef<WorkerMsg>> = Vec::new();
    let mut last_renew = Instant::now();
    let mut last_reclaim = Instant::now();
    let mut last_janitor = Instant::now();
    while !stop.is_cancelled() {
        while let Ok(w) = idle_rx.try_recv() {
            idle.push(w);
        }
        let result: Result<(), crate::queue::QueueError> = async {
            // Due retries are promoted by the engine, for every queue.
            let now = Instant::now();
            if now.duration_since(last_janitor) >= JANITOR_EVERY {
                last_janitor = now;
                let removed = reader.remove_idle_consumers(CONSUMER_IDLE_MS).await?;
                if removed > 0 {
                    info!(queue = reader.queue(), removed, "removed idle consumers with no pending job");
                }
            }
            if now.duration_since(last_renew) >= renew_every {
                last_renew = now;
                let ids: Vec<RunningJob> = running.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default();
                if !ids.is_empty() {
                    reader.renew(&ids).await?;
                }
            }
            if !idle.is_empty() && now.duration_since(last_reclaim) >= reclaim_every {
                last_reclaim = now;
                let reclaimed = reader.reclaim(lease_ms, idle.len()).await?;
                for delivery in reclaimed.stalled {
                    let claims = delivery.envelope.max_stalled;
                    warn!(job = %delivery.envelope.id, "job stalled too often; failing it");
                    let outcome = Outcome::Failed {
                        message: format!(
                            "job stalled: claimed from workers that stopped responding more often than maxStalled ({claims}) allows (lease {lease_ms} ms)"
                        ),
                        retryable: false,
                        cause: Some(FailureCause::Stalled),
                    };
                    report(&ctx, &delivery, outcome).await;
                }
                for delivery in reclaimed.claimed {
                    info!(job = %delivery.envelope.id, "reclaimed a job whose lease expired");
                    dispatch(&ctx, &mut idle, &running, delivery);
                }
            }
            if idle.is_empty() {
                // Every worker is busy: wait for one, waking up for the timers.
                tokio::select! {
                    _ = stop.cancelled() => {}
                    w = idle_rx.recv() => { if let Some(w) = w { idle.push(w) } }
                    _ = tokio::time::sleep(TICK) => {}
                }
                return Ok(());
            }
            let deliveries = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                r = reader.read_running(idle.len(), running_count(&running), BLOCK_MS) => r?,
            };
            for delivery in deliveries {
                dispatch(&ctx, &mut idle, &running, delivery);
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            warn!(queue = reader.queue(), error = %e, "queue read failed; retrying");
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
    debug!(queue = reader.queue(), "fetcher stopped");
}

/// How many jobs this fetcher's workers hold now.
fn running_count(running: &Mutex<HashSet<RunningJob>>) -> usize {
    running.lock().map(|r| r.len()).unwrap_or(0)
}

fn dispatch(
    ctx: &Arc<WorkerCtx>,
    idle: &mut Vec<ActorRef<WorkerMsg>>,
    running: &Arc<Mutex<HashSet<RunningJob>>>,
    delivery: Delivery,
) {
    let Some(worker) = idle.pop() else {
        // Cannot happen: reads ask for at most as many jobs as there are idle workers.
        // The job stays pending and is reclaimed after its lease.
        warn!(job = %delivery.envelope.id, "no idle worker for a job read");
        return;
    };
    let job = (delivery.stream.clone(), delivery.entry_id.clone());
    let guard = RunningGuard::new(ctx, running, job);
    if worker.cast(WorkerMsg::Run(delivery, guard)).is_err() {
        // The message (and its guard) is dropped: the job is not renewed any more,
        // so it is reclaimed after the lease.
        warn!("worker gone; its job will be reclaimed after the lease");
    }
}

/// A job's place in its fetcher's running set (whose leases the fetch loop renews)
/// and in the process's running count, for exactly as long as the job is in a
/// worker's hands: dropped when the job ends, and also when the message carrying
/// it is dropped or the worker panics with it. A job renewed by nobody is
/// reclaimed after its lease; one renewed forever by mistake would never be.
pub struct RunningGuard {
    set: Arc<Mutex<HashSet<RunningJob>>>,
    ctx: Arc<WorkerCtx>,
    entry: RunningJob,
}

/// A running job's lane stream and entry id: what its lease is renewed on.
type RunningJob = (String, String);

impl RunningGuard {
    fn new(ctx: &Arc<WorkerCtx>, set: &Arc<Mutex<HashSet<RunningJob>>>, entry: RunningJob) -> Self {
        if let Ok(mut r) = set.lock() {
            r.insert(entry.clone());
        }
        ctx.running.fetch_add(1, Ordering::Relaxed);
        RunningGuard {
            set: Arc::clone(set),
            ctx: Arc::clone(ctx),
            entry,
        }
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Ok(mut r) = self.set.lock() {
            r.remove(&self.entry);
        }
        self.ctx.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one job at a time.
pub struct WorkerActor;

/// What a worker starts with.
pub struct WorkerArgs {
    ctx: Arc<WorkerCtx>,
    idle_tx: mpsc::Sender<ActorRef<WorkerMsg>>,
}

/// Messages of a worker.
pub enum WorkerMsg {
    /// Run this job, report it, then offer yourself again. The guard keeps the
    /// job's lease renewed while it is held.
    Run(Delivery, RunningGuard),
}

impl Actor for WorkerActor {
    type Msg = WorkerMsg;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WorkerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: WorkerMsg,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        let WorkerMsg::Run(delivery, guard) = message;
        fail::fail_point!("worker::run");
        match run_job(&state.ctx, &delivery).await {
            // A job stopped through `P:cancel` may have been cancelled by its
            // concurrency key: the cancel record is on the completions stream, and
            // this report must come after it, not overtake it on the fast path
            // (the node would end completed instead of cancelled).
            Some((outcome, true)) => report_through_redis(&state.ctx, &delivery, outcome).await,
            Some((outcome, false)) => report(&state.ctx, &delivery, outcome).await,
            None => {}
        }
        drop(guard);
        // The fetcher is gone only during shutdown; then nobody needs this worker.
        let _ = state.idle_tx.send(myself).await;
        Ok(())
    }
}

/// The input a job carries.
#[derive(Deserialize, Default)]
struct JobInput {
    #[serde(default)]
    data: serde_json::Value,
    #[serde(default)]
    parents: serde_json::Map<String, serde_json::Value>,
    /// A map element's item; present (even as `null`) only on elements.
    #[serde(default, deserialize_with = "crate::spec::present")]
    item: Option<serde_json::Value>,
    #[serde(default)]
    index: Option<u32>,
}

/// Runs a job; `None` when it was abandoned by shutdown and must not be reported.
/// Runs a job's handler; the outcome to report (none when abandoned at shutdown),
/// and whether the job was stopped through `P:cancel`.
async fn run_job(ctx: &Arc<WorkerCtx>, delivery: &Delivery) -> Option<(Outcome, bool)> {
    let env = &delivery.envelope;
    let Some(handler) = ctx.handlers.get(&env.handler).cloned() else {
        let message = format!(
            "no handler named '{}' on worker {} (queue '{}')",
            env.handler, ctx.consumer, env.queue
        );
        return Some((
            Outcome::Failed {
                message,
                retryable: false,
                cause: None,
            },
            false,
        ));
    };
    let Ok(flow_id) = FlowId::from_str(&env.flow_id) else {
        let message = format!("job {} has a malformed flow id", env.id);
        return Some((
            Outcome::Failed {
                message,
                retryable: false,
                cause: None,
            },
            false,
        ));
    };
    let input: JobInput = match serde_json::from_str(env.input.get()) {
        Ok(i) => i,
        Err(e) => {
            let message = format!("job input is not an object with data and parents: {e}");
            return Some((
                Outcome::Failed {
                    message,
                    retryable: false,
                    cause: None,
                },
                false,
            ));
        }
    };
    let token = CancellationToken::new();
    if let Ok(mut c) = ctx.cancels.lock() {
        c.insert(env.id.clone(), token.clone());
    }
    // One line per handler run: the crash tests count executions from these.
    debug!(job = %env.id, handler = %env.handler, "running job");
    report(
        ctx,
        delivery,
        Outcome::Started {
            worker: Some(ctx.consumer.clone()),
        },
    )
    .await;
    let progress = Arc::new(ProgressSlot::default());
    let progress_slot = Arc::clone(&progress);
    let progress_ctx = Arc::clone(ctx);
    let progress_delivery = delivery.clone();
    let job = JobContext {
        job_id: JobId::from_wire(env.id.clone()),
        flow_id,
        node: env.node.clone(),
        attempt: env.attempt,
        data: input.data,
        parents: input.parents,
        item: input.item.zip(input.index),
        cancel: token.clone(),
        traceparent: env.traceparent.clone(),
        progress: Arc::new(move |value: serde_json::Value| {
            // The latest value waits in the slot; one sender task per job at a time
            // sends it, at most every PROGRESS_EVERY.
            if progress.put(value) {
                let ctx = Arc::clone(&progress_ctx);
                let delivery = progress_delivery.clone();
                let slot = Arc::clone(&progress);
                let sender = tokio::spawn(async move {
                    loop {
                        {
                            // Held while sending: the job's end waits for it.
                            let _sending = slot.send_lock.lock().await;
                            let Some(value) = slot.take() else { break };
                            if let Ok(progress) = serde_json::value::to_raw_value(&value) {
                                report(&ctx, &delivery, Outcome::Progress { progress }).await;
                            }
                        }
                        tokio::time::sleep(PROGRESS_EVERY).await;
                    }
                });
                progress.set_sender(sender);
            }
        }),
    };
    let mut task = tokio::spawn(async move { handler.run(job).await });
    let timeout = env.timeout_ms.map(Duration::from_millis);
    let mut stopped = false;
    let outcome = tokio::select! {
        joined = &mut task => Some(joined_outcome(joined)),
        _ = ctx.abandon.cancelled() => {
            token.cancel();
            if tokio::time::timeout(ctx.cancel_grace, &mut task).await.is_err() {
                task.abort();
            }
            None
        }
        _ = sleep_opt(timeout) => {
            task.abort();
            Some(Outcome::Failed {
                message: format!("timed out after {} ms", env.timeout_ms.unwrap_or_default()),
                retryable: true,
                cause: Some(FailureCause::TimedOut),
            })
        }
        _ = token.cancelled() => {
            stopped = true;
            // Cooperative first: the handler sees its token and may return; after
            // the grace period its task is aborted.
            Some(match tokio::time::timeout(ctx.cancel_grace, &mut task).await {
                Ok(joined) => match joined_outcome(joined) {
                    Outcome::Completed { result } => Outcome::Completed { result },
                    _ => cancelled(),
                },
                Err(_) => {
                    task.abort();
                    cancelled()
                }
            })
        }
    };
    if let Ok(mut c) = ctx.cancels.lock() {
        c.remove(&env.id);
    }
    // No progress may follow the final report: drop what is not sent yet and wait
    // for a send in flight.
    progress_slot.close().await;
    outcome.map(|o| (o, stopped))
}

fn cancelled() -> Outcome {
    Outcome::Failed {
        message: "cancelled".to_owned(),
        retryable: false,
        cause: None,
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn joined_outcome(
    joined: Result<Result<serde_json::Value, crate::handler::JobError>, tokio::task::JoinError>,
) -> Outcome {
    match joined {
        Ok(Ok(value)) => match serde_json::value::to_raw_value(&value) {
            Ok(result) => Outcome::Completed { result },
            Err(e) => Outcome::Failed {
                message: format!("result is not serializable: {e}"),
                retryable: false,
                cause: None,
            },
        },
        Ok(Err(e)) => Outcome::Failed {
            message: e.message,
            retryable: e.retryable,
            cause: None,
        },
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Outcome::Failed {
                message: format!("handler panicked: {msg}"),
                retryable: true,
                cause: None,
            }
        }
        Err(_) => cancelled(),
    }
}

/// Hands a report to the flow actor of this process when there is one (the fast
/// path); otherwise writes it to the completions stream, retrying while Redis is
/// unreachable.
async fn report(ctx: &WorkerCtx, delivery: &Delivery, outcome: Outcome) {
    let env = &delivery.envelope;
    let mut outcome = outcome;
    if let Some(directory) = &ctx.directory {
        if let Some((flow, actor)) = FlowId::from_str(&env.flow_id)
            .ok()
            .and_then(|id| directory.get(id).map(|a| (id, a)))
        {
            let ack = if outcome.is_final() {
                Ack::Local(LocalAck {
                    stream: delivery.stream.clone(),
                    entry_id: delivery.entry_id.clone(),
                    flow_id: env.flow_id.clone(),
                    job_field: env.job_field(),
                })
            } else {
                Ack::None
            };
            let report = Report {
                flow,
                node: env.node.clone(),
                attempt: env.attempt,
                outcome,
                ack,
            };
            // From here the receipt owns the report: acknowledged by the flow actor
            // after its flush, or handed back to the router if the actor drops it.
            let receipt = Receipt::new(report, ctx.handback.clone());
            match actor.cast(FlowMsg::JobReported(receipt)) {
                Ok(()) => return,
                Err(ractor::MessagingErr::SendErr(FlowMsg::JobReported(back))) => {
                    outcome = back.into_report().outcome;
                }
                // Consumed by the error; its drop handed it to the router.
                Err(_) => return,
            }
        }
        // No actor here: the flow hibernates (the report wakes it through the
        // completions stream), or it ended (the router drops the record).
    }
    report_through_redis(ctx, delivery, outcome).await;
}

/// Writes a report to the completions stream, retrying until Redis takes it.
async fn report_through_redis(ctx: &WorkerCtx, delivery: &Delivery, outcome: Outcome) {
    let env = &delivery.envelope;
    // A report is never dropped: it is retried (backing off to 5 s) until Redis
    // takes it. Only a shutdown past its deadline gives up, and then the job is
    // still pending in Redis and runs again after the restart or the lease.
    let mut delay = Duration::from_millis(100);
    let mut tries = 0u32;
    loop {
        match ctx.queue.report_remote(delivery, &outcome).await {
            Ok(()) => return,
            Err(e) => {
                if tries.is_multiple_of(20) {
                    warn!(job = %env.id, tries, error = %e, "reporting a job failed; retrying");
                }
                tries += 1;
                tokio::select! {
                    _ = ctx.abandon.cancelled() => {
                        warn!(job = %env.id, "shutting down with a report not delivered; the job runs again");
                        return;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn cancel_loop(ctx: Arc<WorkerCtx>) {
    loop {
        match CancelListener::connect(&ctx.redis_url, ctx.keys.clone()).await {
            Ok(mut listener) => {
                while let Some(job_id) = listener.next().await {
                    let token = ctx
                        .cancels
                        .lock()
                        .ok()
                        .and_then(|c| c.get(&job_id).cloned());
                    if let Some(token) = token {
                        debug!(job = %job_id, "cancelling running job");
                        token.cancel();
                    }
                }
            }
            Err(e) => debug!(error = %e, "cancel listener could not connect"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn heartbeat_loop(ctx: Arc<WorkerCtx>, info: serde_json::Value) {
    loop {
        if let Err(e) = ctx.queue.heartbeat(&ctx.consumer, &info).await {
            debug!(error = %e, "heartbeat failed");
        }
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

/// The latest progress value of a running job, not yet sent.
#[derive(Default)]
struct ProgressSlot {
    /// The value, whether a sender task is running, and whether the job ended.
    inner: Mutex<SlotState>,
    /// The sender task, stopped when the job ends.
    sender: Mutex<Option<JoinHandle<()>>>,
    /// Held by the sender task while it sends, so that the job's end waits for a
    /// send in flight but not for the pause between sends.
    send_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct SlotState {
    value: Option<serde_json::Value>,
    sending: bool,
    closed: bool,
}

impl ProgressSlot {
    /// Stores the latest value; true when the caller must start the sender task.
    fn put(&self, value: serde_json::Value) -> bool {
        match self.inner.lock() {
            Ok(mut slot) if !slot.closed => {
                slot.value = Some(value);
                let start = !slot.sending;
                slot.sending = true;
                start
            }
            _ => false,
        }
    }

    fn set_sender(&self, task: JoinHandle<()>) {
        if let Ok(mut sender) = self.sender.lock() {
            *sender = Some(task);
        }
    }

    /// The value to send next; `None` ends the sender task.
    fn take(&self) -> Option<serde_json::Value> {
        let mut slot = self.inner.lock().ok()?;
        let value = if slot.closed { None } else { slot.value.take() };
        if value.is_none() {
            slot.sending = false;
        }
        value
    }

    /// The job ended: nothing more is sent, and a send in flight is waited for, so
    /// that no progress record follows the job's final report.
    async fn close(&self) {
        if let Ok(mut slot) = self.inner.lock() {
            slot.closed = true;
            slot.value = None;
        }
        let _in_flight_done = self.send_lock.lock().await;
        if let Some(task) = self.sender.lock().ok().and_then(|mut s| s.take()) {
            task.abort();
        }
    }
}

/// Makes a `RawValue` out of JSON text the engine produced.
pub fn raw(text: &str) -> Option<Box<RawValue>> {
    RawValue::from_string(text.to_owned()).ok()
}
