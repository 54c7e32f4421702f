//! `FlowSupervisor`: spawns one [`FlowActor`] per running flow, linked to itself,
//! and keeps the [`Directory`](super::Directory) that finds them.
//!
//! ractor has no restart policies and its default supervisor stops when a child
//! fails, so both are written here: a flow actor that fails is restarted from its
//! last snapshot, at most [`MAX_RESTARTS`] times within [`RESTART_WINDOW`]; past
//! that the flow is failed with an engine error and other flows go on untouched.
//! At start it resumes every unfinished flow from the store.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{debug, error, info, warn};

use super::flow::{delete_flow, FlowActor, FlowArgs, FlowInit, FlowMsg, FlowOp};
use super::{load_state, Shared};
use crate::error::EngineError;
use crate::ids::FlowId;
use crate::retention::Expired;
use crate::spec::Dag;

/// Restarts of one flow's actor allowed within [`RESTART_WINDOW`].
pub const MAX_RESTARTS: u32 = 3;
/// Window in which restarts are counted.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// The supervisor of all flow actors.
pub struct FlowSupervisor;

/// What the supervisor starts with.
pub struct SupervisorArgs {
    /// Engine-wide handles.
    pub shared: Arc<Shared>,
}

/// The supervisor's state.
pub struct SupervisorState {
    shared: Arc<Shared>,
    /// Which flow each child actor runs.
    children: HashMap<ActorId, FlowId>,
    /// Recent restarts per flow: count and start of the window. Entries whose
    /// window has passed are pruned at every failure, and a flow's entry goes when
    /// its actor ends normally.
    restarts: HashMap<FlowId, (u32, Instant)>,
    /// Idempotency keys of flows being created, not yet durable in the store, with
    /// every caller waiting for that flow: all of them are answered after the flush
    /// that holds it (or with its error).
    creating: HashMap<String, (FlowId, Vec<CreateReply>)>,
    /// Flows without an actor being deleted, with every caller waiting for that:
    /// nothing restores such a flow (wake, retry, cancel, resync) meanwhile.
    deleting: HashMap<FlowId, Vec<RpcReplyPort<Result<(), EngineError>>>>,
    /// Flow actors out of the directory and about to stop (hibernating), until
    /// they stop or are taken back. The supervisor alone decides which actor is a
    /// flow's: never two at once.
    hibernating: HashMap<FlowId, ActorRef<FlowMsg>>,
    /// Wake times of hibernated flows that wait for a time (a timer, a signal's
    /// timeout): one ordered set for every flow, and one pending wake-up message
    /// for its earliest entry, so a million sleeping flows cost no task each.
    timers: BTreeSet<(u64, FlowId)>,
    /// The time the pending `TimersDue` is for.
    timers_armed: Option<u64>,
}

/// Where the answer to a create goes.
pub type CreateReply = tokio::sync::oneshot::Sender<Result<FlowId, EngineError>>;

/// Messages of the supervisor.
pub enum SupervisorMsg {
    /// Start a new flow; `reply` gets its id once it is durable.
    CreateFlow {
        /// The validated DAG.
        dag: Arc<Dag>,
        /// The spec as submitted.
        spec_json: String,
        /// Returns the same flow for the same key.
        idempotency_key: Option<String>,
        /// Answered once the flow is durable.
        reply: tokio::sync::oneshot::Sender<Result<FlowId, EngineError>>,
    },
    /// Re-run a flow's failed, skipped and cancelled nodes (its actor is started
    /// from the snapshot if the flow had ended).
    RetryFlow(FlowId, RpcReplyPort<Result<(), EngineError>>),
    /// Remove a flow everywhere.
    DeleteFlow(FlowId, RpcReplyPort<Result<(), EngineError>>),
    /// The retention sweeper found this flow due: delete it if it is still the
    /// flow that ended at this time and has no actor (a retry brings it back to
    /// life; the sweeper must never delete a running flow).
    Expire(FlowId, u64, RpcReplyPort<Expired>),
    /// Redis lost its data: every flow enqueues its jobs again.
    Resync,
    /// A create with an idempotency key became durable (or failed): answer every
    /// caller that asked with that key, and forget it.
    Created {
        /// The key.
        key: String,
        /// The flow's id once durable, or why it is not.
        result: Result<FlowId, EngineError>,
    },
    /// A delete of a flow without an actor finished.
    Deleted(FlowId, Result<(), EngineError>),
    /// Cancel a running flow, waking it if it hibernates.
    CancelFlow(FlowId, RpcReplyPort<Result<(), EngineError>>),
    /// Something concerns this flow: start it again if it hibernates.
    Wake(FlowId),
    /// The reconciliation pass found these jobs (`{node}:{attempt}` fields) lost in
    /// Redis: wake the flow and have its actor put them back.
    Repair(FlowId, Vec<String>),
    /// A flow actor with nothing in flight asks to hibernate; answered with
    /// `FlowMsg::HibernationGranted` once it is out of the directory. The time is
    /// its earliest wait deadline: the supervisor wakes it then.
    RequestHibernation(FlowId, ActorRef<FlowMsg>, Option<u64>),
    /// A client's signal or re-run for one node, waking the flow if it hibernates
    /// (and, for a re-run, starting an ended flow's actor).
    FlowOp(FlowId, FlowOp, RpcReplyPort<Result<(), EngineError>>),
    /// The earliest timer may be due: wake the flows whose time has come.
    TimersDue,
    /// A hibernating actor's grace ended with nothing received: stop it.
    GraceEndedQuietly(FlowId, ActorRef<FlowMsg>),
    /// A hibernating actor received something during its grace: it asks to be put
    /// back in the directory.
    RejoinRequested(FlowId, ActorRef<FlowMsg>),
}

impl Actor for FlowSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            shared: args.shared,
            children: HashMap::new(),
            restarts: HashMap::new(),
            creating: HashMap::new(),
            deleting: HashMap::new(),
            hibernating: HashMap::new(),
            timers: BTreeSet::new(),
            timers_armed: None,
        };
        let unfinished = state.shared.store.unfinished()?;
        let count = unfinished.len();
        state
            .shared
            .stats
            .running_flows
            .store(count as i64, std::sync::atomic::Ordering::Relaxed);
        for id in unfinished {
            // Nothing was written yet: no barrier needed.
            if let Err(e) = state.spawn_restored(&myself, id, None, false).await {
                error!(flow = %id, error = %e, "could not resume flow");
            }
        }
        if count > 0 {
            info!(flows = count, "resumed unfinished flows");
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::CreateFlow {
                dag,
                spec_json,
                idempotency_key,
                reply,
            } => {
                if let Some(key) = &idempotency_key {
                    if let Some((_, waiting)) = state.creating.get_mut(key) {
                        // The first flow with this key is not durable yet: this caller
                        // hears of it when it is.
                        waiting.push(reply);
                        return Ok(());
                    }
                    // A key whose flow is gone (deleted, being deleted, or a data dir
                    // from before writes were atomic) does not count.
                    let existing = match state.shared.store.idempotent_flow(key) {
                        Ok(found) => found.filter(|id| {
                            !state.deleting.contains_key(id)
                                && matches!(state.shared.store.flow_record(*id), Ok(Some(_)))
                        }),
                        Err(e) => {
                            let _ = reply.send(Err(e.into()));
                            return Ok(());
                        }
                    };
                    if let Some(id) = existing {
                        let _ = reply.send(Ok(id));
                        return Ok(());
                    }
                }
                let id = FlowId::new();
                let (tx, rx) = tokio::sync::oneshot::channel();
                let init = FlowInit::Create {
                    id,
                    dag,
                    spec_json,
                    idempotency_key: idempotency_key.clone(),
                    reply: tx,
                };
                if let Err(e) = state.spawn(&myself, id, init).await {
                    let _ = reply.send(Err(EngineError::Internal(format!(
                        "spawning flow actor: {e}"
                    ))));
                    return Ok(());
                }
                let me = myself.clone();
                match idempotency_key {
                    Some(key) => {
                        state.creating.insert(key.clone(), (id, vec![reply]));
                        tokio::spawn(async move {
                            let result = created(rx).await;
                            let _ = me.cast(SupervisorMsg::Created { key, result });
                        });
                    }
                    None => {
                        tokio::spawn(async move {
                            let _ = reply.send(created(rx).await);
                        });
                    }
                }
            }
            SupervisorMsg::Created { key, result } => {
                if let Some((_, waiting)) = state.creating.remove(&key) {
                    for reply in waiting {
                        let _ = reply.send(result.clone());
                    }
                }
            }
            SupervisorMsg::Deleted(id, result) => {
                for reply in state.deleting.remove(&id).unwrap_or_default() {
                    let _ = reply.send(result.clone());
                }
            }
            SupervisorMsg::RetryFlow(id, reply) => {
                let actor = match state.take_back(id) {
                    Some(actor) => actor,
                    None => match state.spawn_restored(&myself, id, None, true).await {
                        Ok(Some(actor)) => actor,
                        Ok(None) => {
                            let _ = reply.send(Err(EngineError::NotFound(id.to_string())));
                            return Ok(());
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            return Ok(());
                        }
                    },
                };
                if let Err(e) = actor.cast(FlowMsg::Retry(reply)) {
                    warn!(flow = %id, error = %e, "flow actor vanished during retry");
                }
            }
            SupervisorMsg::DeleteFlow(id, reply) => {
                if let Some(waiting) = state.deleting.get_mut(&id) {
                    waiting.push(reply);
                    return Ok(());
                }
                match state.take_back(id) {
                    Some(actor) => {
                        if let Err(e) = actor.cast(FlowMsg::Delete(reply)) {
                            warn!(flow = %id, error = %e, "flow actor vanished during delete");
                        }
                    }
                    None => state.delete_without_actor(&myself, id, reply),
                }
            }
            SupervisorMsg::Expire(id, finished_at, reply) => {
                if state.deleting.contains_key(&id)
                    || state.live_actor(id).is_some()
                    || state.hibernating.contains_key(&id)
                {
                    let _ = reply.send(Expired::Busy);
                    return Ok(());
                }
                // Without an actor nothing changes the record but this supervisor's
                // own messages, handled one at a time: the check holds for the delete.
                let still_due = match state.shared.store.flow_record(id) {
                    Ok(Some(rec)) => {
                        rec.finished_at == Some(finished_at)
                            && rec.flow_status().is_ok_and(|s| s.is_terminal())
                    }
                    Ok(None) => false,
                    Err(e) => {
                        let _ = reply.send(Expired::Failed(e.to_string()));
                        return Ok(());
                    }
                };
                if !still_due {
                    let _ = reply.send(Expired::Stale);
                    return Ok(());
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                state.delete_without_actor(&myself, id, tx.into());
                tokio::spawn(async move {
                    let outcome = match rx.await {
                        Ok(Ok(())) => Expired::Deleted,
                        Ok(Err(e)) => Expired::Failed(e.to_string()),
                        Err(_) => Expired::Failed("the delete was dropped".to_owned()),
                    };
                    let _ = reply.send(outcome);
                });
            }
            SupervisorMsg::Resync => {
                let ids: Vec<FlowId> = state.hibernating.keys().copied().collect();
                for id in ids {
                    state.take_back(id);
                }
                for actor in state.shared.directory.all() {
                    let _ = actor.cast(FlowMsg::Resync);
                }
                // Hibernating flows enqueue their jobs again as they start. One
                // barrier serves them all: none of them has an actor that could
                // write meanwhile (and the supervisor handles nothing else now).
                if let Err(e) = super::writer::barrier(&state.shared.writer).await {
                    warn!(error = %e, "snapshot barrier failed before a resync");
                }
                match state.shared.store.unfinished() {
                    Ok(unfinished) => {
                        for id in unfinished {
                            if state.shared.directory.get(id).is_none() {
                                if let Err(e) = state.spawn_restored(&myself, id, None, false).await
                                {
                                    error!(flow = %id, error = %e, "could not wake flow for a resync");
                                }
                            }
                        }
                    }
                    Err(e) => error!(error = %e, "listing unfinished flows for a resync failed"),
                }
            }
            SupervisorMsg::CancelFlow(id, reply) => match state.wake(&myself, id).await {
                Ok(Some(actor)) => {
                    if let Err(e) = actor.cast(FlowMsg::Cancel(reply)) {
                        warn!(flow = %id, error = %e, "flow actor vanished during cancel");
                    }
                }
                Ok(None) => {
                    let _ = reply.send(Err(match state.shared.store.flow_record(id) {
                        Ok(Some(rec)) => EngineError::Conflict(format!(
                            "flow {id} is {}, only a running flow can be cancelled",
                            rec.flow_status().map(|s| s.as_str()).unwrap_or("unknown")
                        )),
                        Ok(None) => EngineError::NotFound(id.to_string()),
                        Err(e) => e.into(),
                    }));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            SupervisorMsg::Repair(id, fields) => match state.wake(&myself, id).await {
                Ok(Some(actor)) => {
                    let _ = actor.cast(FlowMsg::Repair(fields));
                }
                Ok(None) => {}
                Err(e) => warn!(flow = %id, error = %e, "could not wake a flow to repair its jobs"),
            },
            SupervisorMsg::Wake(id) => {
                if let Err(e) = state.wake(&myself, id).await {
                    warn!(flow = %id, error = %e, "could not wake a hibernating flow");
                }
            }
            SupervisorMsg::FlowOp(id, op, reply) => {
                let woken = if op.wakes_ended_flows() {
                    match state.take_back(id) {
                        Some(actor) => Ok(Some(actor)),
                        None => state.spawn_restored(&myself, id, None, true).await,
                    }
                } else {
                    state.wake(&myself, id).await
                };
                match woken {
                    Ok(Some(actor)) => {
                        if let Err(e) = actor.cast(FlowMsg::Op(op, reply)) {
                            warn!(flow = %id, error = %e, "flow actor vanished during a node operation");
                        }
                    }
                    Ok(None) => {
                        // An ended flow (only a signal gets here): an unknown node is
                        // still a 404, a known one a conflict.
                        let node = match &op {
                            FlowOp::Signal { node, .. } | FlowOp::Rerun { node } => node,
                        };
                        let _ = reply.send(Err(match load_state(&state.shared.store, id) {
                            Ok(Some((flow, _))) if flow.lookup(node).is_none() => {
                                EngineError::NodeNotFound {
                                    flow: id.to_string(),
                                    node: node.clone(),
                                }
                            }
                            Ok(Some((flow, _))) => EngineError::Conflict(format!(
                                "flow {id} is {}, only a running flow takes a signal",
                                flow.status().as_str()
                            )),
                            Ok(None) => EngineError::NotFound(id.to_string()),
                            Err(e) => e,
                        }));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            SupervisorMsg::TimersDue => {
                state.timers_armed = None;
                let now = super::now_ms();
                let mut cold = Vec::new();
                while let Some(&(at, id)) = state.timers.first() {
                    if at > now {
                        break;
                    }
                    state.timers.pop_first();
                    // Awake (or in its grace), the flow fires its waits by its own
                    // tick; the others are started below.
                    if state.take_back(id).is_none() {
                        cold.push(id);
                    }
                }
                if !cold.is_empty() {
                    // One barrier serves every flow started here, as for a resync:
                    // 10,000 timers falling due in the same second were 3.5 s late
                    // with a barrier (a flush round trip) per flow.
                    if let Err(e) = super::writer::barrier(&state.shared.writer).await {
                        warn!(error = %e, "snapshot barrier failed before waking timers");
                    }
                }
                for id in cold {
                    let running = matches!(
                        state.shared.store.flow_record(id),
                        Ok(Some(rec)) if rec.flow_status().ok() == Some(crate::state::FlowStatus::Running)
                    );
                    // Started, the flow fires its due waits (`FlowInit::Restore`).
                    if running {
                        if let Err(e) = state.spawn_restored(&myself, id, None, false).await {
                            // The set is the only thing that would wake it: keep the
                            // entry and try again in a second.
                            warn!(flow = %id, error = %e, "could not wake a flow for its timer; retrying");
                            state.timers.insert((now + 1000, id));
                        }
                    }
                }
                state.arm_timers(&myself);
            }
            SupervisorMsg::RequestHibernation(id, actor, wake_at) => {
                let current = state.live_actor(id);
                if let Some(at) = wake_at {
                    state.timers.insert((at, id));
                    state.arm_timers(&myself);
                }
                if current.is_some_and(|a| a.get_id() == actor.get_id()) {
                    state.shared.directory.remove_if(id, actor.get_id());
                    state.hibernating.insert(id, actor.clone());
                    let _ = actor.cast(FlowMsg::HibernationGranted);
                }
            }
            SupervisorMsg::GraceEndedQuietly(id, actor) => {
                if state.forget_hibernating(id, actor.get_id()) {
                    actor.stop(Some("hibernating".to_owned()));
                    debug!(flow = %id, "flow hibernated");
                }
            }
            SupervisorMsg::RejoinRequested(id, actor) => {
                if state.forget_hibernating(id, actor.get_id()) {
                    state.shared.directory.insert(id, actor);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(id) = state.children.remove(&cell.get_id()) {
                    state.shared.directory.remove_if(id, cell.get_id());
                    state.forget_hibernating(id, cell.get_id());
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(id) = state.children.remove(&cell.get_id()) else {
                    return Ok(());
                };
                state.shared.directory.remove_if(id, cell.get_id());
                state.forget_hibernating(id, cell.get_id());
                let now = Instant::now();
                state
                    .restarts
                    .retain(|_, (_, since)| now.duration_since(*since) <= RESTART_WINDOW);
                let entry = state.restarts.entry(id).or_insert((0, now));
                if now.duration_since(entry.1) > RESTART_WINDOW {
                    *entry = (0, now);
                }
                entry.0 += 1;
                let restarts = entry.0;
                let abort = (restarts > MAX_RESTARTS).then(|| {
                    format!("engine error: the flow's actor failed {restarts} times within {RESTART_WINDOW:?}, last: {err}")
                });
                warn!(flow = %id, restarts, error = %err, "flow actor failed; restarting from its snapshot");
                state
                    .shared
                    .stats
                    .actor_restarts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // The failed actor's last writes may still wait in the group commit:
                // the snapshot is read once they are in the store. A failing flush
                // (often why the actor failed) does not stop the restart: the
                // restarted actor then fails too, and the bound ends the flow.
                if let Err(e) = super::writer::barrier(&state.shared.writer).await {
                    warn!(flow = %id, error = %e, "snapshot barrier failed before a restart");
                }
                // The barrier was just taken.
                if let Err(e) = state.spawn_restored(&myself, id, abort, false).await {
                    error!(flow = %id, error = %e, "could not restart flow actor");
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether an actor takes messages: ractor's active states. An actor just spawned
/// is still `Starting` (its status turns `Running` only once its processing task
/// has run `post_start`): treating it as gone let a delete racing a retry delete
/// the flow under the new actor's feet, which then wrote its header back.
fn is_live(actor: &ActorRef<FlowMsg>) -> bool {
    ractor::ACTIVE_STATES.contains(&actor.get_status())
}

/// Waits for a new flow's actor to say the flow is durable.
async fn created(
    rx: tokio::sync::oneshot::Receiver<Result<FlowId, EngineError>>,
) -> Result<FlowId, EngineError> {
    rx.await.unwrap_or_else(|_| {
        Err(EngineError::Internal(
            "flow actor stopped before the flow was durable".to_owned(),
        ))
    })
}

impl SupervisorState {
    /// The flow's actor if one is running and not stopping.
    /// Deletes a flow that has no actor. The supervisor owns "being deleted" until
    /// the delete is done, so nothing restores the flow meanwhile; later deletes of
    /// it wait for the same answer.
    fn delete_without_actor(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: FlowId,
        reply: RpcReplyPort<Result<(), EngineError>>,
    ) {
        debug!(flow = %id, "deleting a flow that has no actor");
        self.deleting.insert(id, vec![reply]);
        let shared = Arc::clone(&self.shared);
        let me = myself.clone();
        tokio::spawn(async move {
            // A hibernating flow may have jobs running: tell them to stop.
            let cancels = match shared.queue.unfinished_jobs(&id.to_string()).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    let _ = me.cast(SupervisorMsg::Deleted(id, Err(e.into())));
                    return;
                }
            };
            let was_running = matches!(
                shared.store.flow_record(id),
                Ok(Some(rec)) if rec.flow_status().ok() == Some(crate::state::FlowStatus::Running)
            );
            let result = delete_flow(&shared, id, cancels).await;
            if result.is_ok() && was_running {
                shared
                    .stats
                    .running_flows
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = me.cast(SupervisorMsg::Deleted(id, result));
        });
    }

    fn live_actor(&self, id: FlowId) -> Option<ActorRef<FlowMsg>> {
        self.shared.directory.get(id).filter(is_live)
    }

    /// The flow's actor if it has one, taking a hibernating one back into the
    /// directory.
    fn take_back(&mut self, id: FlowId) -> Option<ActorRef<FlowMsg>> {
        if let Some(actor) = self.live_actor(id) {
            return Some(actor);
        }
        let actor = self.hibernating.remove(&id)?;
        if !is_live(&actor) {
            // Ended meanwhile (its supervision event is still on its way).
            return None;
        }
        self.shared.directory.insert(id, actor.clone());
        let _ = actor.cast(FlowMsg::Rejoined);
        Some(actor)
    }

    /// The flow's actor, started from its snapshot if the flow is running and has
    /// none (it hibernated); `None` for an ended or unknown flow.
    async fn wake(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: FlowId,
    ) -> Result<Option<ActorRef<FlowMsg>>, EngineError> {
        if let Some(actor) = self.take_back(id) {
            return Ok(Some(actor));
        }
        match self.shared.store.flow_record(id)? {
            Some(rec) if rec.flow_status().ok() == Some(crate::state::FlowStatus::Running) => {
                self.spawn_restored(myself, id, None, true).await
            }
            _ => Ok(None),
        }
    }

    /// Makes sure a `TimersDue` is on its way for the earliest timer.
    fn arm_timers(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let Some(&(at, _)) = self.timers.first() else {
            return;
        };
        if self.timers_armed.is_some_and(|armed| armed <= at) {
            return;
        }
        self.timers_armed = Some(at);
        let after = Duration::from_millis(at.saturating_sub(super::now_ms()));
        myself.send_after(after, || SupervisorMsg::TimersDue);
    }

    /// Takes `actor` off the hibernating list if it is the flow's entry there;
    /// returns whether it was.
    fn forget_hibernating(&mut self, id: FlowId, actor: ActorId) -> bool {
        let listed = self
            .hibernating
            .get(&id)
            .is_some_and(|a| a.get_id() == actor);
        if listed {
            self.hibernating.remove(&id);
        }
        listed
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: FlowId,
        init: FlowInit,
    ) -> Result<ActorRef<FlowMsg>, ractor::SpawnErr> {
        let args = FlowArgs {
            shared: Arc::clone(&self.shared),
            supervisor: myself.clone(),
            init,
        };
        let (actor, _) = Actor::spawn_linked(None, FlowActor, args, myself.get_cell()).await?;
        self.children.insert(actor.get_id(), id);
        self.shared.directory.insert(id, actor.clone());
        Ok(actor)
    }

    /// Starts a flow's actor from its snapshot; `None` when the flow does not exist
    /// or is being deleted.
    ///
    /// With `barrier`, the snapshot is read only after every write sent to the
    /// writer so far is applied and durable: a previous actor of the flow (one that
    /// failed, and whose supervision event may not have arrived yet) can have writes
    /// still queued in the group commit, and a state read without them would run
    /// the flow from a stale snapshot and later overwrite them.
    async fn spawn_restored(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: FlowId,
        abort: Option<String>,
        barrier: bool,
    ) -> Result<Option<ActorRef<FlowMsg>>, EngineError> {
        if self.deleting.contains_key(&id) {
            return Ok(None);
        }
        // Never two actors for one flow: a `Wake` or a retry handled between an
        // actor's failure and its supervision event may have started one already.
        if let Some(actor) = self.live_actor(id) {
            return Ok(Some(actor));
        }
        if barrier {
            super::writer::barrier(&self.shared.writer)
                .await
                .map_err(EngineError::Store)?;
        }
        let Some((state, record)) = load_state(&self.shared.store, id)? else {
            return Ok(None);
        };
        let init = FlowInit::Restore {
            state,
            idempotency_key: record.idempotency_key,
            engine_error: record.engine_error,
            abort,
        };
        let actor = self
            .spawn(myself, id, init)
            .await
            .map_err(|e| EngineError::Internal(format!("spawning flow actor: {e}")))?;
        debug!(flow = %id, actor = %actor.get_id(), "flow actor restored from the snapshot");
        Ok(Some(actor))
    }
}
