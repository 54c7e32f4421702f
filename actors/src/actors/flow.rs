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

use super::supervisor::SupervisorMsg;
use super::writer::WriterMsg;
use super::{now_ms, Shared};
use crate::error::EngineError;
use crate::ids::{FlowId, JobId, NodeIdx};
use crate::queue::{JobEnvelope, LocalAck, NewJob, Outcome, ENVELOPE_VERSION};
use crate::spec::Dag;
use crate::state::{Effect, EnqueueJob, FlowState, FlowStatus, Input};
use crate::store::{status_code, FlowRecord, NodeRecord, WriteOp};
use crate::view::{FlowEvent, FlowView, NodeView};

/// How long to wait before retrying Redis work that failed.
const OUTBOX_RETRY: Duration = Duration::from_millis(500);
/// How long a hibernating actor, already out of the directory, still takes what
/// was sent to it by someone who found it there just before.
const HIBERNATE_GRACE: Duration = Duration::from_secs(1);

/// The actor of one flow.
pub struct FlowActor;

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
    /// How to begin.
    pub init: FlowInit,
}

/// A Redis step to take once the state that implies it is durable.
#[derive(Default)]
struct RedisWork {
    enqueue: Vec<NewJob>,
    cancel: Vec<String>,
    local_acks: Vec<LocalAck>,
    completion_acks: Vec<String>,
    /// The flow ended: remove everything Redis holds for it.
    cleanup: bool,
}

impl RedisWork {
    fn is_empty(&self) -> bool {
        self.enqueue.is_empty()
            && self.cancel.is_empty()
            && self.local_acks.is_empty()
            && self.completion_acks.is_empty()
            && !self.cleanup
    }

    fn add_ack(&mut self, ack: Ack) {
        match ack {
            Ack::None => {}
            Ack::Local(a) => self.local_acks.push(a),
            Ack::Completion(id) => self.completion_acks.push(id),
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
    Node(RpcReplyPort<Option<NodeView>>, Option<NodeView>),
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
                let _ = port.send(view);
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
}

/// How to acknowledge the report a job came with, once applied durably.
#[derive(Debug)]
pub enum Ack {
    /// Nothing to acknowledge (progress, started).
    None,
    /// A job finished by a worker of this process: XACK + XDEL its stream entry.
    Local(LocalAck),
    /// A record of the completions stream.
    Completion(String),
}

/// The flow actor's state.
pub struct FlowActorState {
    shared: Arc<Shared>,
    state: FlowState,
    idempotency_key: Option<String>,
    engine_error: Option<String>,
    next_token: u64,
    pending: VecDeque<Pending>,
    outbox: VecDeque<RedisWork>,
    outbox_retry_scheduled: bool,
    /// Set when a delete was asked for: carried out once no write is in flight.
    deleting: Option<RpcReplyPort<Result<(), EngineError>>>,
    /// When the actor last handled something that concerns the flow.
    last_active: Instant,
    /// A `HibernateCheck` is on its way.
    check_scheduled: bool,
    /// Out of the directory, waiting out the grace before it stops.
    in_grace: bool,
}

/// Messages of a flow actor.
pub enum FlowMsg {
    /// A worker reported on one of this flow's jobs.
    JobReported {
        /// The node's name.
        node: String,
        /// The attempt reported on.
        attempt: u32,
        /// What happened.
        outcome: Outcome,
        /// What to acknowledge once the report is applied durably.
        ack: Ack,
    },
    /// Cancel the flow.
    Cancel(RpcReplyPort<Result<(), EngineError>>),
    /// Re-run the failed, skipped and cancelled nodes.
    Retry(RpcReplyPort<Result<(), EngineError>>),
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
    /// From the supervisor: the flow is out of the directory; stop after a grace
    /// unless something still arrives.
    Hibernate,
    /// The grace ended.
    HibernateNow,
    /// From the supervisor: the flow is back in the directory.
    Awake,
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
                let mut state = FlowState::new(id, dag, now);
                let effects = state.apply(Input::Start, now);
                let mut ops = vec![WriteOp::Spec(id, spec_json)];
                if let Some(key) = &idempotency_key {
                    ops.push(WriteOp::Idempotency(key.clone(), id));
                }
                let mut actor = FlowActorState::new(args.shared, state, idempotency_key);
                // `Start`'s `Persist` names the nodes it changed (the roots); the
                // others get no record and load as fresh.
                // The creator hears of the flow only once it is durable.
                actor.commit(
                    &myself,
                    effects,
                    Ack::None,
                    Some(Reply::Created(reply, id)),
                    ops,
                    true,
                );
                Ok(actor)
            }
            FlowInit::Restore {
                state,
                idempotency_key,
                engine_error,
                abort,
            } => {
                let mut actor = FlowActorState::new(args.shared, state, idempotency_key);
                actor.engine_error = engine_error;
                if let Some(reason) = abort {
                    actor.engine_error = Some(reason.clone());
                    let effects = actor.state.apply(Input::Abort { reason }, now);
                    actor.commit(&myself, effects, Ack::None, None, Vec::new(), false);
                } else {
                    // What was read may include writes of a previous actor that were
                    // applied but not yet flushed: a barrier makes them durable before
                    // anything is enqueued from them.
                    let jobs = actor.state.resume(now);
                    let mut work = RedisWork::default();
                    for job in jobs {
                        work.enqueue.push(actor.new_job(job, now));
                    }
                    actor.send_write(&myself, Vec::new(), work, Vec::new(), Vec::new());
                    // A snapshot a crash cut short (see `FlowState::repair`) gets the
                    // steps that should have followed, persisted like any transition.
                    let repaired = actor.state.repair(now);
                    if !repaired.is_empty() {
                        warn!(flow = %actor.state.id(), "repairing a snapshot cut short by a crash");
                        actor.commit(&myself, repaired, Ack::None, None, Vec::new(), false);
                    }
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
        match message {
            FlowMsg::HibernateCheck => {
                state.check_scheduled = false;
                state.consider_hibernating(&myself);
                return Ok(());
            }
            FlowMsg::Hibernate => {
                if state.is_quiet() {
                    state.in_grace = true;
                    myself.send_after(HIBERNATE_GRACE, || FlowMsg::HibernateNow);
                } else {
                    // Something came in between asking and being told: a write or a
                    // Redis step is in flight, whose effects only this actor holds.
                    state.to_supervisor(
                        &myself,
                        SupervisorMsg::Rejoin(state.state.id(), myself.clone()),
                    );
                }
                return Ok(());
            }
            FlowMsg::HibernateNow => {
                if state.in_grace {
                    let msg = if state.is_quiet() {
                        SupervisorMsg::HibernateDone(state.state.id(), myself.clone())
                    } else {
                        state.in_grace = false;
                        SupervisorMsg::Rejoin(state.state.id(), myself.clone())
                    };
                    state.to_supervisor(&myself, msg);
                }
                return Ok(());
            }
            FlowMsg::Awake => {
                state.in_grace = false;
                return Ok(());
            }
            _ => {}
        }
        if state.in_grace {
            // Sent by someone who found the actor in the directory just before it
            // left: the flow stays awake.
            state.in_grace = false;
            state.to_supervisor(
                &myself,
                SupervisorMsg::Rejoin(state.state.id(), myself.clone()),
            );
        }
        state.last_active = Instant::now();
        let result = Box::pin(self.dispatch(&myself, message, state)).await;
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
        if state.deleting.is_some() {
            // Being deleted: only the flushes still matter; everything Redis holds
            // for the flow is about to be removed, reports included.
            return match message {
                FlowMsg::Flushed { token, result } => {
                    Box::pin(state.on_flushed(&myself, token, result)).await
                }
                FlowMsg::Cancel(reply)
                | FlowMsg::Retry(reply)
                | FlowMsg::Drain(reply)
                | FlowMsg::Delete(reply) => {
                    let _ = reply.send(Err(EngineError::NotFound(state.state.id().to_string())));
                    Ok(())
                }
                _ => Ok(()),
            };
        }
        match message {
            FlowMsg::JobReported {
                node,
                attempt,
                outcome,
                ack,
            } => {
                let Some(idx) = state.state.dag().lookup(&node) else {
                    warn!(flow = %state.state.id(), node, "report for an unknown node dropped");
                    state.commit(&myself, Vec::new(), ack, None, Vec::new(), false);
                    return Ok(());
                };
                let input = match outcome {
                    Outcome::Started => Input::JobStarted { node: idx, attempt },
                    Outcome::Completed { result } => Input::JobCompleted {
                        node: idx,
                        attempt,
                        result: Arc::from(result.get()),
                    },
                    Outcome::Failed { message, retryable } => Input::JobFailed {
                        node: idx,
                        attempt,
                        error: message,
                        retryable,
                    },
                    Outcome::Progress { progress } => Input::Progress {
                        node: idx,
                        attempt,
                        progress: Arc::from(progress.get()),
                    },
                };
                let effects = state.state.apply(input, now);
                state.commit(&myself, effects, ack, None, Vec::new(), false);
            }
            FlowMsg::Cancel(reply) => state.request(&myself, Input::Cancel, reply, now),
            FlowMsg::Retry(reply) => state.request(&myself, Input::Retry, reply, now),
            FlowMsg::Delete(reply) => {
                // Stop running jobs now; the rest waits for writes in flight, which
                // would otherwise land after the delete and resurrect the records.
                let cancels: Vec<String> = state
                    .state
                    .dag()
                    .indices()
                    .filter(|&i| {
                        !state.state.node(i).status.is_terminal() && state.state.node(i).attempt > 0
                    })
                    .map(|i| state.job_id(i, state.state.node(i).attempt))
                    .collect();
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
                let view = FlowView::from_state(&state.state, state.engine_error.clone());
                state.reply_when_durable(Reply::Flow(reply, view));
            }
            FlowMsg::GetNode(name, reply) => {
                let view = state
                    .state
                    .dag()
                    .lookup(&name)
                    .map(|i| NodeView::from_state(&state.state, i, true));
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
                for job in state.state.resume(now) {
                    work.enqueue.push(state.new_job(job, now));
                }
                state.send_write(&myself, Vec::new(), work, Vec::new(), Vec::new());
            }
            FlowMsg::Flushed { token, result } => {
                Box::pin(state.on_flushed(&myself, token, result)).await?;
            }
            FlowMsg::InjectFailure(reason) => return Err(reason.into()),
            FlowMsg::HibernateCheck
            | FlowMsg::Hibernate
            | FlowMsg::HibernateNow
            | FlowMsg::Awake => {}
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
    fn new(shared: Arc<Shared>, state: FlowState, idempotency_key: Option<String>) -> Self {
        FlowActorState {
            shared,
            state,
            idempotency_key,
            engine_error: None,
            next_token: 0,
            pending: VecDeque::new(),
            outbox: VecDeque::new(),
            outbox_retry_scheduled: false,
            deleting: None,
            last_active: Instant::now(),
            check_scheduled: false,
            in_grace: false,
        }
    }

    /// Nothing in flight: no write, no Redis step, no delete, and still running.
    fn is_quiet(&self) -> bool {
        self.pending.is_empty()
            && self.outbox.is_empty()
            && !self.outbox_retry_scheduled
            && self.deleting.is_none()
            && self.state.status() == FlowStatus::Running
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
        self.to_supervisor(
            myself,
            SupervisorMsg::Hibernate(self.state.id(), myself.clone()),
        );
    }

    fn to_supervisor(&self, myself: &ActorRef<FlowMsg>, msg: SupervisorMsg) {
        match myself.try_get_supervisor() {
            Some(supervisor) => {
                if let Err(e) = supervisor.send_message(msg) {
                    debug!(error = %e, "flow supervisor gone");
                }
            }
            None => debug!("flow actor without a supervisor"),
        }
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
        let status = self.state.status();
        let refusal = match input {
            Input::Cancel if status != FlowStatus::Running => {
                Some("only a running flow can be cancelled")
            }
            Input::Retry if !self.state.can_retry() => {
                Some("only a failed or cancelled flow can be retried")
            }
            _ => None,
        };
        if let Some(why) = refusal {
            let _ = reply.send(Err(EngineError::Conflict(format!(
                "flow {} is {}, {why}",
                self.state.id(),
                status.as_str()
            ))));
            return;
        }
        if matches!(input, Input::Retry) {
            self.engine_error = None;
        }
        let effects = self.state.apply(input, now);
        self.commit(
            myself,
            effects,
            Ack::None,
            Some(Reply::Done(reply)),
            Vec::new(),
            false,
        );
    }

    fn job_id(&self, node: NodeIdx, attempt: u32) -> String {
        JobId::new(self.state.id(), &self.state.dag().node(node).name, attempt).to_string()
    }

    fn new_job(&self, job: EnqueueJob, now: u64) -> NewJob {
        let node = self.state.dag().node(job.node);
        let input = RawValue::from_string(self.state.job_input(job.node)).unwrap_or_else(|e| {
            // The input is assembled from JSON the engine produced or validated.
            warn!(error = %e, "job input is not valid JSON; sending null");
            RawValue::from_string("null".to_owned()).unwrap_or_default()
        });
        NewJob {
            envelope: JobEnvelope {
                v: ENVELOPE_VERSION,
                id: self.job_id(job.node, job.attempt),
                flow_id: self.state.id().to_string(),
                node: node.name.to_string(),
                attempt: job.attempt,
                handler: node.handler.to_string(),
                queue: node.queue.to_string(),
                input,
                timeout_ms: node.opts.timeout_ms,
                max_stalled: node.opts.max_stalled.unwrap_or(self.shared.max_stalled),
                enqueued_at_ms: now,
            },
            delay_ms: job.delay_ms,
        }
    }

    fn header_record(&self) -> FlowRecord {
        let h = self.state.header();
        FlowRecord {
            name: self.state.dag().name.clone(),
            status: status_code(h.status),
            seq: h.seq,
            created_at: h.created_at,
            updated_at: h.updated_at,
            finished_at: h.finished_at,
            node_count: self.state.dag().len() as u32,
            done_count: (self.state.dag().len() - self.state.remaining()) as u32,
            idempotency_key: self.idempotency_key.clone(),
            engine_error: self.engine_error.clone(),
        }
    }

    /// Turns the effects of one `apply` into a write and the outside effects that
    /// wait for it. `force_write` writes even when the state did not change.
    fn commit(
        &mut self,
        myself: &ActorRef<FlowMsg>,
        effects: Vec<Effect>,
        ack: Ack,
        reply: Option<Reply>,
        mut ops: Vec<WriteOp>,
        force_write: bool,
    ) {
        let id = self.state.id();
        let now = now_ms();
        let mut work = RedisWork::default();
        let mut events = Vec::new();
        let changed = !effects.is_empty();
        for effect in effects {
            match effect {
                Effect::Persist(changes) => {
                    for n in changes.nodes {
                        ops.push(WriteOp::Node(
                            id,
                            n,
                            NodeRecord::from_state(self.state.node(n)),
                        ));
                    }
                }
                Effect::Enqueue(job) => work.enqueue.push(self.new_job(job, now)),
                Effect::CancelJob { node, attempt } => work.cancel.push(self.job_id(node, attempt)),
                Effect::Emit(event) => events.push(FlowEvent::from_event(&self.state, &event)),
                Effect::Finished(_) => work.cleanup = true,
            }
        }
        work.add_ack(ack);
        if changed || force_write {
            ops.push(WriteOp::Flow(id, self.header_record()));
            self.send_write(myself, ops, work, events, reply.into_iter().collect());
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
            // snapshot makes them agree again. The supervisor does that.
            return Err(format!("snapshot flush failed: {e}").into());
        }
        while self.pending.front().is_some_and(|p| p.token <= token) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
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
                warn!(flow = %self.state.id(), error = %e, "redis work failed; retrying");
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
        let q = &self.shared.queue;
        let flow = self.state.id().to_string();
        if !work.enqueue.is_empty() {
            q.enqueue(&flow, &work.enqueue).await?;
            work.enqueue.clear();
        }
        if !work.cancel.is_empty() {
            q.publish_cancel(&work.cancel).await?;
            work.cancel.clear();
        }
        if !work.local_acks.is_empty() {
            q.ack_local(&work.local_acks).await?;
            work.local_acks.clear();
        }
        if !work.completion_acks.is_empty() {
            q.ack_completions(&work.completion_acks).await?;
            work.completion_acks.clear();
        }
        if work.cleanup {
            q.cleanup_flow(&flow).await?;
            work.cleanup = false;
        }
        Ok(())
    }

    /// A terminal flow stops its actor once its last effects are out; the snapshot
    /// keeps it readable.
    fn stop_if_done(&self, myself: &ActorRef<FlowMsg>) {
        if self.state.status().is_terminal()
            && self.pending.is_empty()
            && self.outbox.is_empty()
            && !self.outbox_retry_scheduled
        {
            myself.stop(Some("flow finished".to_owned()));
        }
    }

    async fn finish_delete(&mut self, myself: &ActorRef<FlowMsg>) {
        let id = self.state.id();
        let result = delete_flow(&self.shared, id).await;
        if let Some(reply) = self.deleting.take() {
            let _ = reply.send(result);
        }
        myself.stop(Some("flow deleted".to_owned()));
    }
}

/// Removes a flow from Redis and from disk (used with and without a live actor).
pub(crate) async fn delete_flow(shared: &Shared, id: FlowId) -> Result<(), EngineError> {
    shared.queue.cleanup_flow(&id.to_string()).await?;
    if shared.store.delete(id).await? {
        Ok(())
    } else {
        Err(EngineError::NotFound(id.to_string()))
    }
}

fn merge(into: &mut RedisWork, from: RedisWork) {
    into.enqueue.extend(from.enqueue);
    into.cancel.extend(from.cancel);
    into.local_acks.extend(from.local_acks);
    into.completion_acks.extend(from.completion_acks);
    into.cleanup |= from.cleanup;
}
