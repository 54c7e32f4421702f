//! `FlowActor`: one per running flow. It owns the flow's [`FlowState`], turns every
//! input into effects, and carries the effects out in the durability order:
//!
//! 1. apply the input to the state (pure);
//! 2. send the changed records to the [`SnapshotWriter`](super::writer);
//! 3. only after the flush that holds them: publish the events, answer the callers,
//!    and do the Redis work (enqueue ready jobs, acknowledge what was applied,
//!    publish cancels, clean up a finished flow).
//!
//! Several writes may be in flight at once (pipelining); their outside effects are
//! released strictly in order as the flushes complete. Redis work that fails (Redis
//! down) stays in an ordered outbox and is retried: the state on disk already says
//! what must happen, and every Redis step is idempotent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::value::RawValue;
use tracing::{debug, warn};

pub use super::delivery::Ack;
use super::delivery::Receipt;
use super::supervisor::SupervisorMsg;
use super::writer::WriterMsg;
use super::{now_ms, Shared};
use crate::error::EngineError;
use crate::ids::{FlowId, JobId, NodeIdx};
use crate::outbox::{OutboxKey, OutboxRecord};
use crate::queue::{JobEnvelope, LocalAck, NewJob, Outcome, ENVELOPE_VERSION};
use crate::records::{status_code, FlowRecord, NodeRecord};
use crate::spec::Dag;
use crate::state::{Effect, EnqueueJob, FlowState, FlowStatus, Input};
use crate::store::WriteOp;
use crate::view::{FlowEvent, FlowView, NodeView};

/// How long to wait before retrying Redis work that failed.
const OUTBOX_RETRY: Duration = Duration::from_millis(500);
/// How long a hibernating actor, already out of the directory, still takes what
/// was sent to it by someone who found it there just before.
const HIBERNATE_GRACE: Duration = Duration::from_secs(1);

/// Longest an ended flow's actor, restored for a client's request, waits for that
/// request (the supervisor casts it right after the start; this bounds an actor
/// whose request never came).
const REQUEST_OVERDUE: Duration = Duration::from_secs(10);

/// The actor of one flow.
pub struct FlowActor;

/// A client's operation on one node of a flow.
#[derive(Debug, Clone)]
pub enum FlowOp {
    /// Deliver a signal to a wait node; the payload (JSON text) becomes its result.
    Signal {
        /// The node's name.
        node: String,
        /// The payload.
        payload: Arc<str>,
    },
    /// Give the node and everything downstream of it fresh attempts.
    Rerun {
        /// The node's name.
        node: String,
    },
}

impl FlowOp {
    /// Whether the operation applies to a flow that ended (a re-run does; a signal
    /// only reaches a running flow).
    pub fn wakes_ended_flows(&self) -> bool {
        matches!(self, FlowOp::Rerun { .. })
    }
}

/// How a flow actor begins.
pub enum FlowInit {
    /// A new flow: persist it whole, then queue its roots.
    Create {
        /// The new flow's id.
        id: FlowId,
        /// Its validated DAG.
        dag: Arc<Dag>,
        /// The spec as submitted (JSON text), stored once.
        spec_json: String,
        /// The client's idempotency key.
        idempotency_key: Option<String>,
        /// Answered with the id once the flow is durable.
        reply: tokio::sync::oneshot::Sender<Result<FlowId, EngineError>>,
    },
    /// A flow from its snapshot (engine restart, actor restart, retry of an ended
    /// flow): re-enqueue its queued jobs after a flush barrier.
    Restore {
        /// The rebuilt state.
        state: FlowState,
        /// Its stored idempotency key.
        idempotency_key: Option<String>,
        /// The engine error it ended with, if any.
        engine_error: Option<String>,
        /// Fail the flow at once with this reason (restarted too often).
        abort: Option<String>,
    },
}

/// What the supervisor starts a flow actor with.
pub struct FlowArgs {
    /// Engine-wide handles.
    pub shared: Arc<Shared>,
    /// The supervisor, for the hibernation handshake (typed, rather than
    /// ractor's untyped `try_get_supervisor`).
    pub supervisor: ActorRef<SupervisorMsg>,
    /// How to begin.
    pub init: FlowInit,
}

/// A Redis step to take once the state that implies it is durable.
#[derive(Default)]
struct RedisWork {
    enqueue: Vec<NewJob>,
    cancel: Vec<String>,
    /// Reports whose acks this step carries out; settled once the acks succeeded,
    /// handed back to the router if the step is dropped (the actor failed).
    receipts: Vec<Receipt>,
    /// The flow ended: remove everything Redis holds for it.
    cleanup: bool,
}

impl RedisWork {
    fn is_empty(&self) -> bool {
        self.enqueue.is_empty()
            && self.cancel.is_empty()
            && self.receipts.is_empty()
            && !self.cleanup
    }

    fn add_receipt(&mut self, receipt: Option<Receipt>) {
        if let Some(r) = receipt {
            if matches!(r.report().ack, Ack::None) {
                r.settle();
            } else {
                self.receipts.push(r);
            }
        }
    }
}

/// A caller waiting for the flush that makes its answer true.
enum Reply {
    Created(
        tokio::sync::oneshot::Sender<Result<FlowId, EngineError>>,
        FlowId,
    ),
    Done(RpcReplyPort<Result<(), EngineError>>),
    Flow(RpcReplyPort<FlowView>, FlowView),
    Node(RpcReplyPort<Option<NodeView>>, Option<Box<NodeView>>),
}

impl Reply {
    fn send(self) {
        // A caller that gave up (timeout) is not an error of the flow.
        match self {
            Reply::Created(tx, id) => {
                let _ = tx.send(Ok(id));
            }
            Reply::Done(port) => {
                let _ = port.send(Ok(()));
            }
            Reply::Flow(port, view) => {
                let _ = port.send(view);
            }
            Reply::Node(port, view) => {
                let _ = port.send(view.map(|v| *v));
            }
        }
    }
}

/// Outside effects waiting for one write to become durable.
struct Pending {
    token: u64,
    redis: RedisWork,
    events: Vec<FlowEvent>,
    replies: Vec<Reply>,
    /// How the write changes the number of running flows (+1 created or retried,
    /// -1 ended), counted once it is durable.
    running_delta: i64,
    /// Callbacks this write owes (outbox records); the deliverer is woken once it
    /// is durable.
    notify: u64,
}

/// The flow actor's state.
pub struct FlowActorState {
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    flow: FlowState,
    idempotency_key: Option<String>,
    engine_error: Option<String>,
    next_token: u64,
    pending: VecDeque<Pending>,
    outbox: VecDeque<RedisWork>,
    outbox_retry_scheduled: bool,
    /// Set when a delete was asked for: carried out once no write is in flight.
    deleting: Option<RpcReplyPort<Result<(), EngineError>>>,
    /// Reports that arrived while the flow was being deleted: acknowledged once the
    /// delete is done, handed back if it fails.
    held: Vec<Receipt>,
    /// When the actor last handled something that concerns the flow.
    last_active: Instant,
    /// A `HibernateCheck` is on its way.
    check_scheduled: bool,
    /// Out of the directory, waiting out the grace before it stops.
    in_grace: bool,
    /// The deadline a `Tick` is on its way for.
    tick_at: Option<u64>,
    /// An ended flow is restored only for a client's request (a retry, a re-run),
    /// which the supervisor casts right after the start: the restore's own flush
    /// must not stop the actor before that request was handled.
    awaiting_request: bool,
}

/// Messages of a flow actor.
pub enum FlowMsg {
    /// A worker reported on one of this flow's jobs. The receipt is acknowledged
    /// after the flush that holds what it changed, or handed back if this actor
    /// stops or fails first.
    JobReported(Receipt),
    /// Cancel the flow.
    Cancel(RpcReplyPort<Result<(), EngineError>>),
    /// Re-run the failed, skipped and cancelled nodes.
    Retry(RpcReplyPort<Result<(), EngineError>>),
    /// A client's operation on one node (a signal, a re-run).
    Op(FlowOp, RpcReplyPort<Result<(), EngineError>>),
    /// A wait may be due: fire what is.
    Tick,
    /// The request an ended flow was restored for never came.
    RequestOverdue,
    /// Remove the flow from Redis and disk, then stop.
    Delete(RpcReplyPort<Result<(), EngineError>>),
    /// The flow as of its last durable state.
    GetFlow(RpcReplyPort<FlowView>),
    /// One node (with input and result) as of the last durable state.
    GetNode(String, RpcReplyPort<Option<NodeView>>),
    /// Answers once every write sent so far is durable and its Redis work done
    /// (graceful shutdown).
    Drain(RpcReplyPort<Result<(), EngineError>>),
    /// Redis lost its data: enqueue every queued or running job again.
    Resync,
    /// The reconciliation pass found these jobs (`{node}:{attempt}` fields) lost in
    /// Redis: put back those that are still queued or running.
    Repair(Vec<String>),
    /// The write with this token (and every earlier one) is durable, or failed.
    Flushed {
        /// The write's token.
        token: u64,
        /// `Err` when the flush failed.
        result: Result<(), String>,
    },
    /// Retry the Redis work that failed.
    RetryOutbox,
    /// Fault injection for supervision tests: the actor fails with this reason.
    #[doc(hidden)]
    InjectFailure(String),
    /// Time to look whether the flow has been quiet long enough to hibernate.
    HibernateCheck,
    /// The supervisor's answer to `RequestHibernation`: the flow is out of the
    /// directory; the grace starts, after which the actor stops unless something
    /// still arrives.
    HibernationGranted,
    /// The grace after `HibernationGranted` ended.
    GraceEnded,
    /// From the supervisor: the flow is back in the directory (taken back during
    /// its grace).
    Rejoined,
}

impl Actor for FlowActor {
    type Msg = FlowMsg;
    type State = FlowActorState;
    type Arguments = FlowArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: FlowArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let now = now_ms();
        match args.init {
            FlowInit::Create {
                id,
                dag,
                spec_json,
                idempotency_key,
                reply,
            } => {
                let mut flow = FlowState::new(id, dag, now);
                let effects = flow.apply(Input::Start, now);
                let mut ops = vec![WriteOp::Spec(id, spec_json)];
                if let Some(key) = &idempotency_key {
                    ops.push(WriteOp::Idempotency(key.clone(), id));
                }
                let mut actor =
                    FlowActorState::new(args.shared, args.supervisor, flow, idempotency_key);
                // `Start`'s `Persist` names the nodes it changed (the roots); the
                // others get no record and load as fresh. The creator hears of the
                // flow only once it is durable.
                actor.persist_new_flow(&myself, effects, ops, Reply::Created(reply, id));
                Ok(actor)
            }
            FlowInit::Restore {
                state,
                idempotency_key,
                engine_error,
                abort,
            } => {
                let mut actor =
                    FlowActorState::new(args.shared, args.supervisor, state, idempotency_key);
                actor.engine_error = engine_error;
                if actor.flow.status().is_terminal() {
                    actor.awaiting_request = true;
                    myself.send_after(REQUEST_OVERDUE, || FlowMsg::RequestOverdue);
                }
                if let Some(reason) = abort {
                    actor.engine_error = Some(reason.clone());
                    let effects = actor.flow.apply(Input::Abort { reason }, now);
                    actor.persist(&myself, effects);
                } else {
                    // The supervisor read the snapshot after a writer barrier, so it
                    // holds every write of a previous actor; the empty write here
                    // orders the re-enqueues after anything still in flight.
                    let jobs = actor.flow.resume(now);
                    let mut work = RedisWork::default();
                    for job in jobs {
                        work.enqueue.push(actor.new_job(job, now));
                    }
                    actor.send_write(&myself, Vec::new(), work, Vec::new(), Vec::new());
                    // A snapshot a crash cut short (see `FlowState::repair`) gets the
                    // steps that should have followed, persisted like any transition.
                    let repaired = actor.flow.repair(now);
                    if !repaired.is_empty() {
                        warn!(flow = %actor.flow.id(), "repairing a snapshot cut short by a crash");
                        actor.persist(&myself, repaired);
                    }
                    // Waits that fell due while the flow slept (or the engine was down).
                    let fired = actor.flow.apply(Input::Tick, now);
                    actor.persist(&myself, fired);
                    actor.arm_tick(&myself);
                }
                Ok(actor)
            }
        }
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: FlowMsg,
        state: &mut FlowActorState,
    ) -> Result<(), ActorProcessingErr> {
        fail::fail_point!("flow::handle");
        match message {
            FlowMsg::HibernateCheck => {
                state.check_scheduled = false;
                state.consider_hibernating(&myself);
                return Ok(());
            }
            FlowMsg::HibernationGranted => {
                if state.is_quiet() {
                    state.in_grace = true;
                    myself.send_after(HIBERNATE_GRACE, || FlowMsg::GraceEnded);
                } else {
                    // Something came in between asking and being told: a write or a
                    // Redis step is in flight, whose effects only this actor holds.
                    state.to_supervisor(SupervisorMsg::RejoinRequested(
                        state.flow.id(),
                        myself.clone(),
                    ));
                }
                return Ok(());
            }
            FlowMsg::GraceEnded => {
                if state.in_grace {
                    let msg = if state.is_quiet() {
                        SupervisorMsg::GraceEndedQuietly(state.flow.id(), myself.clone())
                    } else {
                        state.in_grace = false;
                        SupervisorMsg::RejoinRequested(state.flow.id(), myself.clone())
                    };
                    state.to_supervisor(msg);
                }
                return Ok(());
            }
            FlowMsg::Rejoined => {
                state.in_grace = false;
                return Ok(());
            }
            FlowMsg::RequestOverdue => {
                if state.awaiting_request {
                    state.awaiting_request = false;
                    state.stop_if_done(&myself);
                }
                return Ok(());
            }
            _ => {}
        }
        if state.in_grace {
            // Sent by someone who found the actor in the directory just before it
            // left: the flow stays awake.
            state.in_grace = false;
            state.to_supervisor(SupervisorMsg::RejoinRequested(
                state.flow.id(),
                myself.clone(),
            ));
        }
        state.last_active = Instant::now();
        let result = Box::pin(self.dispatch(&myself, message, state)).await;
        state.arm_tick(&myself);
        state.schedule_hibernate_check(&myself);
        result
    }
}

impl FlowActor {
    // The Redis and flush paths are boxed: ractor keeps an actor's whole message
    // loop, sized for its largest `handle` future, allocated for as long as the
    // actor lives, and most flow actors spend their life idle (docs/PERFORMANCE.md).
    async fn dispatch(
        &self,
        myself: &ActorRef<FlowMsg>,
        message: FlowMsg,
        state: &mut FlowActorState,
    ) -> Result<(), ActorProcessingErr> {
        let myself = myself.clone();
        let now = now_ms();
        let request = matches!(
            message,
            FlowMsg::Retry(_) | FlowMsg::Op(..) | FlowMsg::Cancel(_) | FlowMsg::Delete(_)
        );
        if request && std::mem::take(&mut state.awaiting_request) {
            // Handled (or refused) below; the actor of an ended flow stops once
            // what it did is out (`on_flushed`), or now if it did nothing.
            let result = Box::pin(self.dispatch(&myself, message, state)).await;
            state.stop_if_done(&myself);
            return result;
        }
        if state.deleting.is_some() {
            // Being deleted: only the flushes still matter. Reports are held and
            // acknowledged once the delete is done (everything Redis holds for the
            // flow goes with it), or handed back if the delete fails.
            return match message {
                FlowMsg::Flushed { token, result } => {
                    Box::pin(state.on_flushed(&myself, token, result)).await
                }
                FlowMsg::JobReported(receipt) => {
                    state.held.push(receipt);
                    Ok(())
                }
                FlowMsg::Cancel(reply)
                | FlowMsg::Retry(reply)
                | FlowMsg::Op(_, reply)
                | FlowMsg::Drain(reply)
                | FlowMsg::Delete(reply) => {
                    let _ = reply.send(Err(EngineError::NotFound(state.flow.id().to_string())));
                    Ok(())
                }
                FlowMsg::GetFlow(reply) => {
                    // Dropping the port tells the caller the flow is going away; it
                    // then reads the store, which no longer has it.
                    drop(reply);
                    Ok(())
                }
                _ => Ok(()),
            };
        }
        match message {
            FlowMsg::JobReported(receipt) => {
                let report = receipt.report();
                let Some(idx) = state.flow.lookup(&report.node) else {
                    warn!(flow = %state.flow.id(), node = %report.node, "report for an unknown node dropped");
                    state.persist_report(&myself, Vec::new(), receipt);
                    return Ok(());
                };
                let attempt = report.attempt;
                let input = match &report.outcome {
                    Outcome::Started { worker } => Input::JobStarted {
                        node: idx,
                        attempt,
                        worker: worker.as_deref().map(Arc::from),
                    },
                    Outcome::Completed { result } => Input::JobCompleted {
                        node: idx,
                        attempt,
                        result: Arc::from(result.get()),
                    },
                    Outcome::Failed {
                        message,
                        retryable,
                        cause,
                    } => Input::JobFailed {
                        node: idx,
                        attempt,
                        error: message.clone(),
                        retryable: *retryable,
                        cause: *cause,
                    },
                    Outcome::Progress { progress } => Input::Progress {
                        node: idx,
                        attempt,
                        progress: Arc::from(progress.get()),
                    },
                    Outcome::Cancelled { message } => Input::JobCancelled {
                        node: idx,
                        attempt,
                        reason: message.clone(),
                    },
                };
                let effects = state.flow.apply(input, now);
                state.persist_report(&myself, effects, receipt);
            }
            FlowMsg::Cancel(reply) => state.request(&myself, Input::Cancel, reply, now),
            FlowMsg::Retry(reply) => {
                debug!(flow = %state.flow.id(), actor = %myself.get_id(), "retry");
                state.request(&myself, Input::Retry, reply, now)
            }
            FlowMsg::Op(op, reply) => state.node_op(&myself, op, reply, now),
            FlowMsg::Tick => {
                state.tick_at = None;
                let effects = state.flow.apply(Input::Tick, now);
                state.persist(&myself, effects);
            }
            FlowMsg::Delete(reply) => {
                // Stop running jobs now; the rest waits for writes in flight, which
                // would otherwise land after the delete and resurrect the records.
                let cancels = state.running_job_ids();
                if !cancels.is_empty() {
                    if let Err(e) = Box::pin(state.shared.queue.publish_cancel(&cancels)).await {
                        debug!(error = %e, "publishing cancels of a deleted flow failed");
                    }
                }
                state.deleting = Some(reply);
                if state.pending.is_empty() {
                    Box::pin(state.finish_delete(&myself)).await;
                }
            }
            FlowMsg::GetFlow(reply) => {
                let view = FlowView::from_state(&state.flow, state.engine_error.clone());
                state.reply_when_durable(Reply::Flow(reply, view));
            }
            FlowMsg::GetNode(name, reply) => {
                let view = state
                    .flow
                    .lookup(&name)
                    .map(|i| Box::new(NodeView::from_state(&state.flow, i, true)));
                state.reply_when_durable(Reply::Node(reply, view));
            }
            FlowMsg::Drain(reply) => {
                if state.pending.is_empty() && state.outbox.is_empty() {
                    let _ = reply.send(Ok(()));
                } else {
                    state.reply_when_durable(Reply::Done(reply));
                }
            }
            FlowMsg::Resync => {
                let mut work = RedisWork::default();
                for job in state.flow.resume(now) {
                    work.enqueue.push(state.new_job(job, now));
                }
                state.send_write(&myself, Vec::new(), work, Vec::new(), Vec::new());
            }
            FlowMsg::Repair(fields) => Box::pin(state.repair_jobs(&fields, now)).await,
            FlowMsg::Flushed { token, result } => {
                Box::pin(state.on_flushed(&myself, token, result)).await?;
            }
            FlowMsg::InjectFailure(reason) => return Err(reason.into()),
            FlowMsg::HibernateCheck
            | FlowMsg::HibernationGranted
            | FlowMsg::GraceEnded
            | FlowMsg::Rejoined
            | FlowMsg::RequestOverdue => {}
            FlowMsg::RetryOutbox => {
                state.outbox_retry_scheduled = false;
                Box::pin(state.drain_outbox(&myself)).await;
                state.stop_if_done(&myself);
            }
        }
        Ok(())
    }
}

impl FlowActorState {
    fn new(
        shared: Arc<Shared>,
        supervisor: ActorRef<SupervisorMsg>,
        flow: FlowState,
        idempotency_key: Option<String>,
    ) -> Self {
        FlowActorState {
            shared,
            supervisor,
            flow,
            idempotency_key,
            engine_error: None,
            next_token: 0,
            pending: VecDeque::new(),
            outbox: VecDeque::new(),
            outbox_retry_scheduled: false,
            deleting: None,
            held: Vec::new(),
            last_active: Instant::now(),
            check_scheduled: false,
            in_grace: false,
            tick_at: None,
            awaiting_request: false,
        }
    }

    /// Nothing in flight: no write, no Redis step, no delete, and still running.
    fn is_quiet(&self) -> bool {
        self.pending.is_empty()
            && self.outbox.is_empty()
            && !self.outbox_retry_scheduled
            && self.deleting.is_none()
            && self.flow.status() == FlowStatus::Running
    }

    fn schedule_hibernate_check(&mut self, myself: &ActorRef<FlowMsg>) {
        if let Some(after) = self.shared.hibernate_after {
            if !self.check_scheduled && !self.in_grace && self.is_quiet() {
                self.check_scheduled = true;
                myself.send_after(after, || FlowMsg::HibernateCheck);
            }
        }
    }

    /// Asks the supervisor to hibernate the flow if it has been quiet long enough,
    /// or looks again when it will have been.
    fn consider_hibernating(&mut self, myself: &ActorRef<FlowMsg>) {
        let Some(after) = self.shared.hibernate_after else {
            return;
        };
        if self.in_grace || !self.is_quiet() {
            // Looked at again once it is quiet (after its next message).
            return;
        }
        let quiet_for = self.last_active.elapsed();
        if quiet_for < after {
            self.check_scheduled = true;
            myself.send_after(after - quiet_for, || FlowMsg::HibernateCheck);
            return;
        }
        self.to_supervisor(SupervisorMsg::RequestHibernation(
            self.flow.id(),
            myself.clone(),
            self.flow.next_deadline(),
        ));
    }

    fn to_supervisor(&self, msg: SupervisorMsg) {
        if let Err(e) = self.supervisor.send_message(msg) {
            debug!(error = %e, "flow supervisor gone");
        }
    }

    /// Job ids of the attempts that may be running or queued: what a delete or a
    /// cancel tells workers to stop.
    fn running_job_ids(&self) -> Vec<String> {
        let dag = self.flow.dag();
        dag.indices()
            .chain(dag.indices().flat_map(|m| self.flow.elements(m)))
            .filter(|&i| {
                let n = self.flow.node(i);
                self.flow.is_job(i) && !n.status.is_terminal() && n.attempt > 0
            })
            .map(|i| self.job_id(i, self.flow.node(i).attempt))
            .collect()
    }

    /// A client's cancel or retry: refused with `Conflict` when the flow's status
    /// does not allow it, otherwise applied and answered after the flush.
    fn request(
        &mut self,
        myself: &ActorRef<FlowMsg>,
        input: Input,
        reply: RpcReplyPort<Result<(), EngineError>>,
        now: u64,
    ) {
        let status = self.flow.status();
        let refusal = match input {
            Input::Cancel if status != FlowStatus::Running => {
                Some("only a running flow can be cancelled")
            }
            Input::Retry if !self.flow.can_retry() => {
                Some("only a failed or cancelled flow can be retried")
            }
            _ => None,
        };
        if let Some(why) = refusal {
            let _ = reply.send(Err(EngineError::Conflict(format!(
                "flow {} is {}, {why}",
                self.flow.id(),
                status.as_str()
            ))));
            return;
        }
        let was_terminal = status.is_terminal();
        let entry = self.expiry_entry();
        if matches!(input, Input::Retry) {
            self.engine_error = None;
        }
        let effects = self.flow.apply(input, now);
        self.persist_revived(myself, effects, Reply::Done(reply), was_terminal, entry);
    }

    /// The flow's retention entry while it is ended, with the time it finished.
    fn expiry_entry(&self) -> Option<(crate::retention::ExpiryKey, u64)> {
        let h = self.flow.header();
        if !h.status.is_terminal() {
            return None;
        }
        let finished_at = h.finished_at?;
        let own = self.flow.dag().retention;
        let key = crate::retention::expiry_entry(self.flow.id(), h.status, finished_at, own)?;
        Some((key, finished_at))
    }

    /// Persists a client's operation on a flow, which may have brought an ended flow
    /// back to life: then it counts as running again, and its retention entry
    /// (`entry`, taken before) goes in the same write, so the sweeper has nothing
    /// left to find and a later delete leaves nothing behind.
    fn persist_revived(
        &mut self,
        myself: &ActorRef<FlowMsg>,
        effects: Vec<Effect>,
        reply: Reply,
        was_terminal: bool,
        entry: Option<(crate::retention::ExpiryKey, u64)>,
    ) {
        let revived = was_terminal && !self.flow.status().is_terminal();
        let commit = Commit {
            reply: Some(reply),
            running_delta: i64::from(revived),
            ops: entry
                .filter(|_| revived)
                .map(|(key, _)| WriteOp::Unexpire(key))
                .into_iter()
                .collect(),
            ..Commit::default()
        };
        self.commit(myself, effects, commit);
    }

    /// A client's signal or re-run: refused with `NodeNotFound` or `Conflict` when
    /// it does not apply, otherwise applied and answered after the flush.
    fn node_op(
        &mut self,
        myself: &ActorRef<FlowMsg>,
        op: FlowOp,
        reply: RpcReplyPort<Result<(), EngineError>>,
        now: u64,
    ) {
        let name = match &op {
            FlowOp::Signal { node, .. } | FlowOp::Rerun { node } => node.clone(),
        };
        let Some(idx) = self.flow.lookup(&name) else {
            let _ = reply.send(Err(EngineError::NodeNotFound {
                flow: self.flow.id().to_string(),
                node: name,
            }));
            return;
        };
        let (refusal, input) = match op {
            FlowOp::Signal { payload, .. } => (
                self.flow.signal_refusal(idx),
                Input::Signal { node: idx, payload },
            ),
            FlowOp::Rerun { .. } => (self.flow.rerun_refusal(idx), Input::Rerun { node: idx }),
        };
        if let Some(why) = refusal {
            let _ = reply.send(Err(EngineError::Conflict(why)));
            return;
        }
        let was_terminal = self.flow.status().is_terminal();
        let entry = self.expiry_entry();
        if matches!(input, Input::Rerun { .. }) {
            self.engine_error = None;
        }
        let effects = self.flow.apply(input, now);
        self.persist_revived(myself, effects, Reply::Done(reply), was_terminal, entry);
    }

    /// Arranges a `Tick` for the earliest wait deadline, unless one is on its way
    /// for that time or earlier. A flow that hibernates meanwhile is woken by the
    /// supervisor's timers instead.
    fn arm_tick(&mut self, myself: &ActorRef<FlowMsg>) {
        let Some(due) = self.flow.next_deadline() else {
            return;
        };
        if self.tick_at.is_some_and(|armed| armed <= due) {
            return;
        }
        self.tick_at = Some(due);
        let after = Duration::from_millis(due.saturating_sub(now_ms()));
        myself.send_after(after, || FlowMsg::Tick);
    }

    fn job_id(&self, node: NodeIdx, attempt: u32) -> String {
        JobId::new(self.flow.id(), &self.flow.node_name(node), attempt).to_string()
    }

    fn new_job(&self, job: EnqueueJob, now: u64) -> NewJob {
        let node = self.flow.dag().node(self.flow.job_node(job.node));
        let input = RawValue::from_string(self.flow.job_input(job.node)).unwrap_or_else(|e| {
            // The input is assembled from JSON the engine produced or validated.
            warn!(error = %e, "job input is not valid JSON; sending null");
            RawValue::from_string("null".to_owned()).unwrap_or_default()
        });
        NewJob {
            envelope: JobEnvelope {
                v: ENVELOPE_VERSION,
                id: self.job_id(job.node, job.attempt),
                flow_id: self.flow.id().to_string(),
                node: self.flow.node_name(job.node).into_owned(),
                attempt: job.attempt,
                handler: node.handler.to_string(),
                queue: node.queue.to_string(),
                priority: node.priority,
                input,
                timeout_ms: node.opts.timeout_ms,
                max_stalled: node.opts.max_stalled.unwrap_or(self.shared.max_stalled),
                enqueued_at_ms: now,
                // Off, and without a caller's trace, this is one branch: no
                // name, no hash, no allocation on the hot path.
                traceparent: match (self.shared.traces, &self.flow.dag().traceparent) {
                    (false, None) => None,
                    (traces, caller) => crate::trace::job_traceparent(
                        traces,
                        self.flow.id(),
                        caller.as_deref(),
                        &self.flow.node_name(job.node),
                        job.attempt,
                    ),
                },
            },
            delay_ms: job.delay_ms,
            fresh: self.flow.is_fresh_job(job.node, job.attempt),
            // The keys evaluated when the node became ready; they cannot fail now
            // (same inputs), but a job is never held back by a guess.
            limits: self.flow.job_limits(job.node).unwrap_or_else(|e| {
                warn!(error = %e, "a job's limit keys could not be evaluated; it runs without them");
                None
            }),
        }
    }

    fn header_record(&self) -> FlowRecord {
        let h = self.flow.header();
        FlowRecord {
            name: self.flow.dag().name.clone(),
            status: status_code(h.status),
            seq: h.seq,
            created_at: h.created_at,
            updated_at: h.updated_at,
            finished_at: h.finished_at,
            node_count: self.flow.dag().len() as u32,
            done_count: (self.flow.dag().len() - self.flow.remaining()) as u32,
            idempotency_key: self.idempotency_key.clone(),
            engine_error: self.engine_error.clone(),
        }
    }

    /// Carries out the effects of a transition nobody waits for (a restore's
    /// repair, an abort).
    fn persist(&mut self, myself: &ActorRef<FlowMsg>, effects: Vec<Effect>) {
        self.commit(myself, effects, Commit::default());
    }

    /// Carries out the effects of a worker's report; its receipt is settled after
    /// the flush that holds them (or, for a report that changed nothing, after the
    /// write in flight that holds the original).
    fn persist_report(
        &mut self,
        myself: &ActorRef<FlowMsg>,
        effects: Vec<Effect>,
        receipt: Receipt,
    ) {
        let commit = Commit {
            receipt: Some(receipt),
            ..Commit::default()
        };
        self.commit(myself, effects, commit);
    }

    /// Writes a new flow whole (spec, idempotency key, header, changed nodes) and
    /// answers its creator once durable.
    fn persist_new_flow(
        &mut self,
        myself: &ActorRef<FlowMsg>,
        effects: Vec<Effect>,
        ops: Vec<WriteOp>,
        reply: Reply,
    ) {
        let commit = Commit {
            reply: Some(reply),
            ops,
            force_write: true,
            running_delta: 1,
            ..Commit::default()
        };
        self.commit(myself, effects, commit);
    }

    /// Turns the effects of one `apply` into a write and the outside effects that
    /// wait for it.
    fn commit(&mut self, myself: &ActorRef<FlowMsg>, effects: Vec<Effect>, commit: Commit) {
        let Commit {
            receipt,
            reply,
            mut ops,
            force_write,
            mut running_delta,
        } = commit;
        let id = self.flow.id();
        let now = now_ms();
        let mut work = RedisWork::default();
        let mut events = Vec::new();
        let mut notify = 0;
        let changed = !effects.is_empty();
        for effect in effects {
            match effect {
                Effect::Persist(changes) => {
                    for n in changes.nodes {
                        ops.push(WriteOp::Node(
                            id,
                            n,
                            NodeRecord::from_state(self.flow.node(n)),
                        ));
                    }
                }
                Effect::Enqueue(job) => work.enqueue.push(self.new_job(job, now)),
                Effect::CancelJob { node, attempt } => work.cancel.push(self.job_id(node, attempt)),
                Effect::Emit(event) => events.push(FlowEvent::from_event(&self.flow, &event)),
                Effect::Finished(status) => {
                    work.cleanup = true;
                    running_delta -= 1;
                    notify += self.owe_callbacks(status, now, &mut ops);
                    // Its retention entry, in the same transaction as its end.
                    if let Some((key, finished_at)) = self.expiry_entry() {
                        ops.push(WriteOp::Expiry(key, finished_at));
                    }
                }
            }
        }
        work.add_receipt(receipt);
        if changed || force_write {
            ops.push(WriteOp::Flow(id, self.header_record()));
            self.send_write(myself, ops, work, events, reply.into_iter().collect());
            if let Some(last) = self.pending.back_mut() {
                last.running_delta = running_delta;
                last.notify = notify;
            }
            return;
        }
        // Nothing changed (a duplicate or stale report): its acknowledgement must
        // still wait for the write that holds the original, if one is in flight.
        match self.pending.back_mut() {
            Some(last) => {
                merge(&mut last.redis, work);
                last.replies.extend(reply);
            }
            None => {
                if !work.is_empty() {
                    self.outbox.push_back(work);
                    if !self.outbox_retry_scheduled {
                        // Carried out from the mailbox so that `commit` stays synchronous.
                        self.outbox_retry_scheduled = true;
                        let _ = myself.cast(FlowMsg::RetryOutbox);
                    }
                }
                if let Some(r) = reply {
                    r.send();
                }
            }
        }
    }

    /// Adds an outbox record for each `opts.notify` target that wants this end of
    /// the flow, to the write that holds the end itself; the number added. The body
    /// is the final view, taken now (the state already holds the end), so that a
    /// later delete of the flow does not lose it.
    fn owe_callbacks(&self, status: FlowStatus, now: u64, ops: &mut Vec<WriteOp>) -> u64 {
        let targets = &self.flow.dag().opts.notify;
        let event = status.as_str();
        if !targets.iter().any(|t| t.wants(event)) {
            return 0;
        }
        let view = FlowView::from_state(&self.flow, self.engine_error.clone());
        let body = match serde_json::to_string(&view) {
            Ok(body) => body,
            Err(e) => {
                warn!(flow = %view.id, error = %e, "the final view does not serialize; no callback");
                return 0;
            }
        };
        let mut added = 0;
        for (i, target) in targets.iter().enumerate() {
            if !target.wants(event) {
                continue;
            }
            let key = OutboxKey::new(view.id, view.seq, i as u16);
            let record = OutboxRecord {
                seq: view.seq,
                event: event.to_owned(),
                url: target.url.clone(),
                body: body.clone(),
                created_at: now,
            };
            ops.push(WriteOp::Notify(key, Box::new(record)));
            added += 1;
        }
        added
    }

    fn send_write(
        &mut self,
        myself: &ActorRef<FlowMsg>,
        ops: Vec<WriteOp>,
        redis: RedisWork,
        events: Vec<FlowEvent>,
        replies: Vec<Reply>,
    ) {
        self.next_token += 1;
        let token = self.next_token;
        let me = myself.clone();
        let done = Box::new(move |result: Result<(), String>| {
            let _ = me.cast(FlowMsg::Flushed { token, result });
        });
        if let Err(e) = self.shared.writer.cast(WriterMsg::Write { ops, done }) {
            warn!(error = %e, "snapshot writer is gone");
        }
        self.pending.push_back(Pending {
            token,
            redis,
            events,
            replies,
            running_delta: 0,
            notify: 0,
        });
    }

    fn reply_when_durable(&mut self, reply: Reply) {
        match self.pending.back_mut() {
            Some(last) => last.replies.push(reply),
            None => reply.send(),
        }
    }

    async fn on_flushed(
        &mut self,
        myself: &ActorRef<FlowMsg>,
        token: u64,
        result: Result<(), String>,
    ) -> Result<(), ActorProcessingErr> {
        if let Err(e) = result {
            // The state in memory is ahead of the disk; only a restart from the
            // snapshot makes them agree again. The supervisor does that. The
            // receipts of the writes that failed are handed back as this actor's
            // state is dropped, and reach the restarted actor.
            return Err(format!("snapshot flush failed: {e}").into());
        }
        while self.pending.front().is_some_and(|p| p.token <= token) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if p.notify != 0 {
                self.shared
                    .notify_wake
                    .wake(&self.shared.stats.notify, p.notify);
            }
            if p.running_delta != 0 {
                self.shared
                    .stats
                    .running_flows
                    .fetch_add(p.running_delta, std::sync::atomic::Ordering::Relaxed);
            }
            for event in p.events {
                self.shared.hub.publish(event);
            }
            for reply in p.replies {
                reply.send();
            }
            if !p.redis.is_empty() {
                self.outbox.push_back(p.redis);
            }
        }
        if self.deleting.is_some() {
            if self.pending.is_empty() {
                self.finish_delete(myself).await;
            }
            return Ok(());
        }
        if !self.outbox_retry_scheduled {
            self.drain_outbox(myself).await;
        }
        if self.pending.is_empty() && self.outbox.is_empty() {
            // A flow waiting on its jobs should not keep the buffers of its last burst.
            self.pending = VecDeque::new();
            self.outbox = VecDeque::new();
        }
        self.stop_if_done(myself);
        Ok(())
    }

    /// Carries out the outbox in order; on a Redis error keeps the rest and retries
    /// later.
    async fn drain_outbox(&mut self, myself: &ActorRef<FlowMsg>) {
        // Consecutive work items are merged so that a burst of completions costs one
        // round trip per kind of step, not one per completion. A cleanup closes a
        // batch: work after it (a retry's enqueues) must not be removed by it.
        while !self.outbox.is_empty() {
            let mut batch = RedisWork::default();
            while let Some(w) = self.outbox.pop_front() {
                let cleanup = w.cleanup;
                merge(&mut batch, w);
                if cleanup {
                    break;
                }
            }
            if let Err(e) = self.run_redis(&mut batch).await {
                warn!(flow = %self.flow.id(), error = %e, "redis work failed; retrying");
                self.outbox.push_front(batch);
                if !self.outbox_retry_scheduled {
                    self.outbox_retry_scheduled = true;
                    myself.send_after(OUTBOX_RETRY, || FlowMsg::RetryOutbox);
                }
                return;
            }
        }
    }

    /// Runs the steps, emptying each list as it succeeds so that a retry does not
    /// redo the steps that already happened (they are idempotent anyway).
    async fn run_redis(&self, work: &mut RedisWork) -> Result<(), crate::queue::QueueError> {
        fail::fail_point!("flow::redis", |_| Err(crate::queue::QueueError::Injected(
            "flow::redis".to_owned()
        )));
        let q = &self.shared.queue;
        let flow = self.flow.id().to_string();
        if !work.enqueue.is_empty() {
            q.enqueue(&flow, &work.enqueue).await?;
            work.enqueue.clear();
        }
        if !work.cancel.is_empty() {
            q.publish_cancel(&work.cancel).await?;
            work.cancel.clear();
        }
        if !work.receipts.is_empty() {
            ack_receipts(q, &work.receipts).await?;
            for receipt in work.receipts.drain(..) {
                receipt.settle();
            }
        }
        if work.cleanup {
            q.cleanup_flow(&flow).await?;
            work.cleanup = false;
        }
        Ok(())
    }

    /// Puts back the named jobs if their nodes are still queued or running at that
    /// attempt (the state in memory may be ahead of what the pass read). A failure
    /// is left to the next pass.
    async fn repair_jobs(&mut self, fields: &[String], now: u64) {
        let wanted: std::collections::HashSet<&str> = fields.iter().map(String::as_str).collect();
        let jobs: Vec<NewJob> = self
            .flow
            .resume(now)
            .into_iter()
            .filter(|job| {
                let name = self.flow.node_name(job.node);
                wanted.contains(crate::queue::job_field(&name, job.attempt).as_str())
            })
            .map(|job| self.new_job(job, now))
            .collect();
        match self
            .shared
            .queue
            .repair_jobs(&self.flow.id().to_string(), &jobs)
            .await
        {
            Ok(n) => {
                if n > 0 {
                    warn!(flow = %self.flow.id(), jobs = n, "put back jobs that redis had lost");
                }
                self.shared
                    .stats
                    .reconcile_repaired
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                debug!(flow = %self.flow.id(), error = %e, "repairing jobs failed; the next pass tries again")
            }
        }
    }

    /// A terminal flow stops its actor once its last effects are out; the snapshot
    /// keeps it readable.
    fn stop_if_done(&self, myself: &ActorRef<FlowMsg>) {
        if self.flow.status().is_terminal()
            && !self.awaiting_request
            && self.pending.is_empty()
            && self.outbox.is_empty()
            && !self.outbox_retry_scheduled
        {
            myself.stop(Some("flow finished".to_owned()));
        }
    }

    /// Carries out a delete once no write is in flight. On success the reports
    /// still held (the outbox's and those that came meanwhile) are acknowledged,
    /// and the actor stops; on failure the flow stays as it was, with its outbox,
    /// and the held reports go back to the router, which hands them to this actor
    /// again.
    async fn finish_delete(&mut self, myself: &ActorRef<FlowMsg>) {
        let id = self.flow.id();
        let result = delete_flow(&self.shared, id, Vec::new()).await;
        let Some(reply) = self.deleting.take() else {
            return;
        };
        match result {
            Ok(()) => {
                if self.flow.status() == FlowStatus::Running {
                    self.shared
                        .stats
                        .running_flows
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
                // Everything the flow had in Redis is gone; only the acks of the
                // reports it holds are still owed.
                let mut receipts: Vec<Receipt> = std::mem::take(&mut self.held);
                for work in std::mem::take(&mut self.outbox) {
                    receipts.extend(work.receipts);
                }
                self.outbox_retry_scheduled = false;
                if !receipts.is_empty() {
                    match ack_receipts(&self.shared.queue, &receipts).await {
                        Ok(()) => receipts.into_iter().for_each(Receipt::settle),
                        // Dropped: handed back; the router finds the flow gone and
                        // acknowledges them itself.
                        Err(e) => debug!(error = %e, "acking the reports of a deleted flow failed"),
                    }
                }
                debug!(flow = %id, actor = %myself.get_id(), "flow deleted by its actor");
                let _ = reply.send(Ok(()));
                myself.stop(Some("flow deleted".to_owned()));
            }
            Err(e) => {
                warn!(flow = %id, error = %e, "deleting a flow failed; it stays");
                let _ = reply.send(Err(e));
                // Handed back (their drop) and routed to this actor again.
                self.held.clear();
                if !self.outbox.is_empty() {
                    // A retry that came while deleting was ignored: schedule one
                    // (a second one is harmless).
                    self.outbox_retry_scheduled = true;
                    myself.send_after(OUTBOX_RETRY, || FlowMsg::RetryOutbox);
                }
            }
        }
    }
}

/// What a transition's write carries besides its effects.
#[derive(Default)]
struct Commit {
    /// The report it applied, acknowledged after the flush.
    receipt: Option<Receipt>,
    /// The caller waiting for it.
    reply: Option<Reply>,
    /// Records written with it (a new flow's spec and idempotency key).
    ops: Vec<WriteOp>,
    /// Write the header even if the effects changed nothing (a new flow).
    force_write: bool,
    /// +1 when the write makes the flow running (created, retried); an end
    /// (`Effect::Finished`) subtracts one by itself.
    running_delta: i64,
}

/// Carries out the acks of reports: local jobs (`ack.lua`) and completion records
/// (`XACK` + `XDEL`).
async fn ack_receipts(
    queue: &crate::queue::Queue,
    receipts: &[Receipt],
) -> Result<(), crate::queue::QueueError> {
    let mut local: Vec<&LocalAck> = Vec::new();
    let mut records: Vec<&str> = Vec::new();
    for receipt in receipts {
        match &receipt.report().ack {
            Ack::None => {}
            Ack::Local(ack) => local.push(ack),
            Ack::Completion(entry) => records.push(entry),
        }
    }
    if !local.is_empty() {
        queue.ack_local(&local).await?;
    }
    if !records.is_empty() {
        queue.ack_completions(&records).await?;
    }
    Ok(())
}

/// Removes a flow from Redis and from disk (used with and without a live actor):
/// running jobs are told to stop, everything Redis holds for the flow is removed,
/// then its records leave the store in one transaction of the group commit.
pub(crate) async fn delete_flow(
    shared: &Shared,
    id: FlowId,
    cancels: Vec<String>,
) -> Result<(), EngineError> {
    if !cancels.is_empty() {
        shared.queue.publish_cancel(&cancels).await?;
    }
    shared.queue.cleanup_flow(&id.to_string()).await?;
    if shared.store.flow_record(id)?.is_none() {
        return Err(EngineError::NotFound(id.to_string()));
    }
    super::writer::write(&shared.writer, vec![WriteOp::Delete(id)])
        .await
        .map_err(EngineError::Store)
}

fn merge(into: &mut RedisWork, from: RedisWork) {
    into.enqueue.extend(from.enqueue);
    into.cancel.extend(from.cancel);
    into.receipts.extend(from.receipts);
    into.cleanup |= from.cleanup;
}
