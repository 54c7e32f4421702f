//! The engine's actors, one per file, and what they share.
//!
//! Ownership: the [`supervisor::FlowSupervisor`] spawns one [`flow::FlowActor`] per
//! running flow and is the only writer of the [`Directory`]; the
//! [`writer::SnapshotWriter`] owns the group commit; the
//! [`router::CompletionRouter`] carries completions of workers in other processes;
//! the [`worker`] pool runs jobs.

pub mod delivery;
pub mod flow;
pub mod reconcile;
pub mod router;
pub mod supervisor;
pub mod worker;
pub mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, RwLock};

use ractor::ActorRef;

use crate::error::EngineError;
use crate::hub::EventHub;
use crate::ids::FlowId;
use crate::queue::Queue;
use crate::spec::{self, Limits};
use crate::state::FlowState;
use crate::store::{FlowRecord, Store};

/// Where each running flow's actor is, so that a worker in this process can hand a
/// completion straight to it (the fast path, no Redis round trip).
///
/// Written only by the supervisor; read by workers, the router and the engine. The
/// lock is never held across an `.await`.
#[derive(Clone, Default)]
pub struct Directory {
    flows: Arc<RwLock<HashMap<FlowId, ActorRef<flow::FlowMsg>>>>,
}

impl Directory {
    /// The actor of a running flow.
    pub fn get(&self, id: FlowId) -> Option<ActorRef<flow::FlowMsg>> {
        self.flows.read().ok()?.get(&id).cloned()
    }

    /// Every running flow's actor.
    pub fn all(&self) -> Vec<ActorRef<flow::FlowMsg>> {
        self.flows
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of running flows.
    pub fn len(&self) -> usize {
        self.flows.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no flow runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn insert(&self, id: FlowId, actor: ActorRef<flow::FlowMsg>) {
        if let Ok(mut m) = self.flows.write() {
            m.insert(id, actor);
        }
    }

    /// Removes the entry only if it still points at `actor` (a restarted flow's new
    /// actor must not be removed by the old one's termination).
    pub(crate) fn remove_if(&self, id: FlowId, actor: ractor::ActorId) {
        if let Ok(mut m) = self.flows.write() {
            if m.get(&id).is_some_and(|a| a.get_id() == actor) {
                m.remove(&id);
            }
        }
    }
}

/// What every engine actor needs; built once by the engine.
pub struct Shared {
    /// The snapshot store.
    pub store: Store,
    /// The shared, non-blocking Redis client.
    pub queue: Queue,
    /// The group-commit writer.
    pub writer: ActorRef<writer::WriterMsg>,
    /// Event fan-out.
    pub hub: EventHub,
    /// Running flows' actors.
    pub directory: Directory,
    /// Spec limits for new flows.
    pub limits: Limits,
    /// Default for nodes that set no `maxStalled`.
    pub max_stalled: u32,
    /// A running flow with nothing in flight for this long stops its actor (its
    /// snapshot holds everything) and is woken by the next thing that concerns
    /// it; `None` keeps every running flow's actor alive.
    pub hibernate_after: Option<std::time::Duration>,
    /// Completion records read but not acknowledged for this long are read again.
    pub redeliver_after: std::time::Duration,
    /// Where reports that a flow actor dropped go (the router); `None` only in
    /// engines that run no router.
    pub handback: Option<delivery::HandBack>,
    /// Counters of the background work (hand-backs, redeliveries, repairs), for
    /// `/metrics`.
    pub stats: EngineStats,
    /// Wakes the callback deliverer (`crate::notify`) once a flow's end that owes
    /// callbacks is durable.
    pub notify_wake: crate::notify::NotifyWake,
}

/// Counters of the engine's background work; every background task is visible.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Reports a flow actor dropped (it stopped or failed) and the router routed again.
    pub handed_back: AtomicU64,
    /// Completion records not acknowledged in time and read again.
    pub redelivered: AtomicU64,
    /// Reports waiting in the router for their flow's actor, now.
    pub parked: AtomicU64,
    /// Flows the reconciliation pass compared with Redis.
    pub reconcile_checked: AtomicU64,
    /// Jobs the reconciliation pass found missing in Redis and enqueued again.
    pub reconcile_repaired: AtomicU64,
    /// Full reconciliation passes over the unfinished flows.
    pub reconcile_passes: AtomicU64,
    /// Due retries the engine moved into their streams.
    pub promoted: AtomicU64,
    /// Jobs released when their rate-limit tokens freed up.
    pub rate_released: AtomicU64,
    /// Finished flows the retention sweeper deleted.
    pub flows_swept: AtomicU64,
    /// Flow actors the supervisor restarted from their snapshot after a failure.
    pub actor_restarts: AtomicU64,
    /// Flows whose durable status is `running`, awake or hibernating: counted at
    /// start from the store, then moved by each durable create, end, retry and
    /// delete.
    pub running_flows: AtomicI64,
    /// The callback deliverer's counters (`crate::notify`).
    pub notify: crate::notify::NotifyStats,
}

pub use crate::clock::now_ms;

/// Rebuilds a flow's state from the store; `None` when the flow does not exist.
pub(crate) fn load_state(
    store: &Store,
    id: FlowId,
) -> Result<Option<(FlowState, FlowRecord)>, EngineError> {
    let Some(stored) = store.load(id)? else {
        return Ok(None);
    };
    let spec = spec::parse(stored.spec_json.as_bytes())
        .map_err(|e| EngineError::Store(format!("stored spec of flow {id} does not parse: {e}")))?;
    // The flow was valid when it was created; today's limits may be lower.
    let unlimited = Limits {
        max_nodes: usize::MAX,
        max_name_len: usize::MAX,
        max_data_bytes: usize::MAX,
    };
    let dag = Arc::new(spec::validate(&spec, &unlimited)?);
    let state = FlowState::restore(
        id,
        dag,
        stored
            .record
            .header()
            .map_err(crate::store::StoreError::from)?,
        stored.nodes,
    );
    Ok(Some((state, stored.record)))
}
