//! `FlowState`: the whole scheduling logic of one flow, as a pure state machine.
//!
//! `apply(input, now)` returns the effects the owner must carry out; it does no I/O
//! and reads no clock, so it is deterministic and can be replayed. It is idempotent:
//! an input for an attempt that is not the node's current one, or for a node that is
//! already terminal, changes nothing and returns no effect.
//!
//! Invariants (checked by the property tests in `state/tests.rs`):
//! - a node is enqueued only when every parent is completed (or failed with
//!   `continueOnFailure`), and at most once per attempt;
//! - `seq` grows by exactly one per emitted event;
//! - the flow is terminal exactly when every node is terminal;
//! - a node runs only when its trigger rule holds and its condition is true;
//! - a map's result has one entry per element, in order;
//! - a re-run changes only the node and its descendants;
//! - a node keeps at most `MAX_ATTEMPTS_KEPT` attempts, in order, and a retry, a
//!   flow retry or a re-run keeps the earlier ones with their errors
//!   (`state/attempts.rs`, checked in `state/tests/attempt_history.rs`).
//!
//! A map node's elements are nodes too, kept after the DAG's own in `nodes` (a
//! range per map node): each has its own attempts, job and record, so an element's
//! completion rewrites one small record however large the map.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::ids::{FlowId, NodeIdx};
use crate::spec::{element_name, Dag, OnFailure, TriggerRule, WaitDef};

pub mod attempts;

pub use attempts::{
    Attempt, AttemptOutcome, FailureCause, MAX_ATTEMPTS_KEPT, MAX_ATTEMPT_ERROR_BYTES,
};

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NodeStatus {
    /// Waiting for its parents.
    #[default]
    Pending,
    /// In a queue (or waiting out a retry backoff), not yet picked up.
    Queued,
    /// A worker is running it; for a map node, its elements are running.
    Active,
    /// A wait node waiting for its signal or its time.
    Waiting,
    /// Finished with a result.
    Completed,
    /// Failed for good (attempts exhausted or not retryable).
    Failed,
    /// Will never run: its trigger rule or its condition ruled it out (the
    /// node's `reason` says which).
    Skipped,
    /// Will never run: the flow was cancelled.
    Cancelled,
}

impl NodeStatus {
    /// No further input changes a terminal node (short of a flow retry).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            NodeStatus::Completed
                | NodeStatus::Failed
                | NodeStatus::Skipped
                | NodeStatus::Cancelled
        )
    }

    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Pending => "pending",
            NodeStatus::Queued => "queued",
            NodeStatus::Active => "active",
            NodeStatus::Waiting => "waiting",
            NodeStatus::Completed => "completed",
            NodeStatus::Failed => "failed",
            NodeStatus::Skipped => "skipped",
            NodeStatus::Cancelled => "cancelled",
        }
    }
}

/// Where a flow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FlowStatus {
    /// Some node is not terminal yet.
    Running,
    /// Every node completed (failures with `continueOnFailure` allowed).
    Completed,
    /// Some node failed for good.
    Failed,
    /// A client cancelled it.
    Cancelled,
}

impl FlowStatus {
    /// Completed, failed or cancelled.
    pub fn is_terminal(self) -> bool {
        self != FlowStatus::Running
    }

    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowStatus::Running => "running",
            FlowStatus::Completed => "completed",
            FlowStatus::Failed => "failed",
            FlowStatus::Cancelled => "cancelled",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<FlowStatus> {
        match s {
            "running" => Some(FlowStatus::Running),
            "completed" => Some(FlowStatus::Completed),
            "failed" => Some(FlowStatus::Failed),
            "cancelled" => Some(FlowStatus::Cancelled),
            _ => None,
        }
    }
}

/// Everything known about one node; what the store persists per node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeState {
    /// Where the node is.
    pub status: NodeStatus,
    /// Current attempt, 1-based; 0 before the node was first queued. Grows across
    /// flow retries too, so that every attempt has its own job id.
    pub attempt: u32,
    /// First attempt of the current run; attempts left are counted from here.
    pub run_first_attempt: u32,
    /// The handler's result, as JSON text.
    pub result: Option<Arc<str>>,
    /// The last error, kept across a retry so a client sees why it is retrying.
    pub error: Option<String>,
    /// The last progress reported, as JSON text.
    pub progress: Option<Arc<str>>,
    /// When the current attempt was queued (ms since the epoch).
    pub queued_at: Option<u64>,
    /// When a delayed retry becomes due; `None` when due at once.
    pub due_at: Option<u64>,
    /// When a worker started the current attempt.
    pub started_at: Option<u64>,
    /// When the node became terminal.
    pub finished_at: Option<u64>,
    /// Why a node was skipped (its trigger rule or its condition), for people.
    pub reason: Option<String>,
    /// A map element's item, as JSON text.
    pub item: Option<Arc<str>>,
    /// A map node's elements: the index of the first in the flow's node list, and
    /// how many there are. Elements live after the DAG's nodes.
    pub elements: Option<(u32, u32)>,
    /// The worker (its consumer name) that started the current attempt, when it
    /// said; `None` before the start or for a worker that does not send it.
    pub worker: Option<Arc<str>>,
    /// Why the current attempt failed, when the worker said more than its error
    /// (it stalled, it timed out); `None` otherwise.
    pub cause: Option<FailureCause>,
    /// The node's earlier attempts, oldest first, at most `MAX_ATTEMPTS_KEPT - 1`
    /// (the current one is in the fields above): see [`attempts`].
    pub history: Vec<Attempt>,
}

/// The flow-level fields; what the store persists per flow besides the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowHeader {
    /// Where the flow is.
    pub status: FlowStatus,
    /// Number of events so far; the last event's `seq`.
    pub seq: u64,
    /// Creation time (ms).
    pub created_at: u64,
    /// Time of the last change (ms).
    pub updated_at: u64,
    /// When the flow became terminal.
    pub finished_at: Option<u64>,
}

/// What can happen to a flow.
#[derive(Debug, Clone)]
pub enum Input {
    /// Queue the roots. Only the first `Start` of a flow does anything.
    Start,
    /// A worker picked up an attempt.
    JobStarted {
        /// The node.
        node: NodeIdx,
        /// The attempt that started.
        attempt: u32,
        /// The worker's consumer name, kept in the attempt's history; `None` when
        /// the report did not carry it (an older worker or record).
        worker: Option<Arc<str>>,
    },
    /// An attempt finished with a result (JSON text).
    JobCompleted {
        /// The node.
        node: NodeIdx,
        /// The attempt that finished.
        attempt: u32,
        /// The handler's result.
        result: Arc<str>,
    },
    /// An attempt failed.
    JobFailed {
        /// The node.
        node: NodeIdx,
        /// The attempt that failed.
        attempt: u32,
        /// Why, for people.
        error: String,
        /// Whether another attempt may succeed; `false` fails the node at once.
        retryable: bool,
        /// Why, when the worker knows more than the error (stalled, timed out):
        /// the attempt's outcome in its history.
        cause: Option<FailureCause>,
    },
    /// A client reported progress of a running attempt (JSON text).
    Progress {
        /// The node.
        node: NodeIdx,
        /// The attempt reporting.
        attempt: u32,
        /// The progress value.
        progress: Arc<str>,
    },
    /// An attempt was cancelled by its concurrency key's strategy (a newer job took
    /// its slot, or it was the newest at the limit): the node ends `cancelled` with
    /// the reason.
    JobCancelled {
        /// The node.
        node: NodeIdx,
        /// The attempt cancelled.
        attempt: u32,
        /// Why, for people.
        reason: String,
    },
    /// Stop the flow: cancel everything not yet terminal.
    Cancel,
    /// Re-run the failed, skipped and cancelled nodes of a terminal flow.
    Retry,
    /// A signal for a wait node; its payload (JSON text) becomes the node's result.
    Signal {
        /// The wait node.
        node: NodeIdx,
        /// The payload.
        payload: Arc<str>,
    },
    /// Time passed: fire every wait whose deadline is due.
    Tick,
    /// Give a node and every node downstream of it fresh attempts; the others keep
    /// their results.
    Rerun {
        /// The node to re-run from.
        node: NodeIdx,
    },
    /// The engine cannot run the flow any more (its actor kept failing): cancel what
    /// is left and end the flow `failed` with this reason on the flow event.
    Abort {
        /// Why, for people.
        reason: String,
    },
}

thread_local! {
    /// CEL's standard library, built once per thread; each evaluation adds its
    /// variables in a scope over it.
    static CEL_ROOT: cel::Context<'static, 'static> = cel::Context::default();
}

/// Longest key a limit's expression may give, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// A job's limits with their keys evaluated: what Redis enforces for it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLimits {
    /// Concurrency key, limit and strategy.
    pub concurrency: Option<(String, u32, crate::spec::ConcurrencyStrategy)>,
    /// Rate-limit key, limit and period (ms).
    pub rate: Option<(String, u32, u64)>,
    /// The flow's concurrency key, limit and strategy: every job of the flow passes
    /// its gate.
    pub flow: Option<(String, u32, crate::spec::ConcurrencyStrategy)>,
}

/// One job to put on its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnqueueJob {
    /// The node.
    pub node: NodeIdx,
    /// Its attempt; with the flow id and node name it makes the job id.
    pub attempt: u32,
    /// Backoff before the job may run.
    pub delay_ms: u64,
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// A node changed (or reported progress).
    Node(NodeStatus),
    /// The flow changed.
    Flow(FlowStatus),
}

impl EventStatus {
    /// The wire name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Node(s) => s.as_str(),
            EventStatus::Flow(s) => s.as_str(),
        }
    }
}

/// One state change, numbered by the flow's `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Strictly increasing per flow, without gaps.
    pub seq: u64,
    /// Time of the change (ms).
    pub ts: u64,
    /// The node; `None` for a flow-level change.
    pub node: Option<NodeIdx>,
    /// The new status.
    pub status: EventStatus,
    /// The node's attempt (0 for flow events).
    pub attempt: u32,
    /// Progress, on progress events.
    pub progress: Option<Arc<str>>,
    /// The error, on failures and on retries.
    pub error: Option<String>,
    /// Why a node was skipped, on skip events.
    pub reason: Option<String>,
}

/// Which records an `apply` changed, for the store to rewrite. The header always
/// changes with `seq`; only the listed nodes are rewritten, so the cost of a
/// completion does not grow with the size of the flow.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Changes {
    /// Nodes whose record changed, each once.
    pub nodes: Vec<NodeIdx>,
}

/// What the owner of a `FlowState` must do after an `apply`, in this order:
/// persist, then (after the flush) everything else.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write these records; always the first effect when there are any.
    Persist(Changes),
    /// Put a job on its queue.
    Enqueue(EnqueueJob),
    /// Stop a queued or running job.
    CancelJob {
        /// The node.
        node: NodeIdx,
        /// The attempt to stop.
        attempt: u32,
    },
    /// Tell subscribers.
    Emit(Event),
    /// The flow reached a terminal status.
    Finished(FlowStatus),
}

/// Per DAG node: how its parents have ended so far. Derived, never persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Parents {
    /// Parents not terminal yet.
    open: u32,
    /// Parents completed.
    completed: u32,
    /// Parents failed, with or without `continueOnFailure`.
    failed: u32,
    /// Parents failed with `continueOnFailure`.
    tolerated: u32,
}

impl Parents {
    fn count(&mut self, status: NodeStatus, tolerated: bool) {
        match status {
            NodeStatus::Completed => self.completed += 1,
            NodeStatus::Failed => {
                self.failed += 1;
                self.tolerated += u32::from(tolerated);
            }
            NodeStatus::Skipped | NodeStatus::Cancelled => {}
            _ => self.open += 1,
        }
    }
}

/// Per live map node: how its elements stand. Derived, never persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct MapRun {
    /// Elements queued or running.
    running: u32,
    /// Elements terminal.
    done: u32,
    /// Elements failed for good.
    failed: u32,
    /// Offset from which to look for elements not yet queued in this run.
    next: u32,
}

/// What a node's parents allow, once known.
enum Verdict {
    /// Not decided yet: a parent that matters is still open.
    Wait,
    /// The trigger rule holds.
    Run,
    /// The trigger rule can no longer hold; the reason is for people.
    Skip(String),
}

/// The state of one flow and its scheduling rules.
#[derive(Debug, Clone)]
pub struct FlowState {
    id: FlowId,
    dag: Arc<Dag>,
    header: FlowHeader,
    /// The DAG's nodes by index, then the elements of map nodes.
    nodes: Vec<NodeState>,
    /// Per DAG node: its parents' outcomes so far. Derived.
    parents: Vec<Parents>,
    /// Per live map node (by index): its elements' counts. Derived.
    maps: BTreeMap<u32, MapRun>,
    /// First element index of each live map → the map node. Derived.
    ranges: BTreeMap<u32, NodeIdx>,
    /// DAG nodes not terminal. Derived.
    remaining: usize,
    /// DAG nodes failed for good without `continueOnFailure`. Derived.
    hard_failures: usize,
    /// DAG nodes waiting for a signal or a time. Derived.
    waits: usize,
}

impl FlowState {
    /// A new flow; nothing runs until `Start`.
    pub fn new(id: FlowId, dag: Arc<Dag>, now: u64) -> Self {
        let nodes = vec![NodeState::default(); dag.len()];
        let header = FlowHeader {
            status: FlowStatus::Running,
            seq: 0,
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        Self::restore(id, dag, header, nodes)
    }

    /// Rebuilds a flow from its persisted records.
    ///
    /// `nodes` holds the DAG's nodes by index, then any map elements; missing DAG
    /// entries are treated as fresh.
    pub fn restore(
        id: FlowId,
        dag: Arc<Dag>,
        header: FlowHeader,
        mut nodes: Vec<NodeState>,
    ) -> Self {
        if nodes.len() < dag.len() {
            nodes.resize(dag.len(), NodeState::default());
        }
        let mut state = FlowState {
            id,
            dag,
            header,
            nodes,
            parents: Vec::new(),
            maps: BTreeMap::new(),
            ranges: BTreeMap::new(),
            remaining: 0,
            hard_failures: 0,
            waits: 0,
        };
        state.recount();
        state
    }

    fn recount(&mut self) {
        let dag = Arc::clone(&self.dag);
        self.parents = dag
            .nodes
            .iter()
            .map(|n| {
                let mut c = Parents::default();
                for p in &n.parents {
                    c.count(
                        self.nodes[p.as_usize()].status,
                        dag.node(*p).opts.continue_on_failure,
                    );
                }
                c
            })
            .collect();
        let own = &self.nodes[..dag.len()];
        self.remaining = own.iter().filter(|n| !n.status.is_terminal()).count();
        self.waits = own
            .iter()
            .filter(|n| n.status == NodeStatus::Waiting)
            .count();
        self.hard_failures = dag.indices().filter(|&i| self.is_hard_failure(i)).count();
        self.maps.clear();
        self.ranges.clear();
        for i in dag.indices() {
            let Some((first, len)) = self.nodes[i.as_usize()].elements else {
                continue;
            };
            let end = first as usize + len as usize;
            if dag.node(i).map.is_none() || (first as usize) < dag.len() || end > self.nodes.len() {
                // A damaged record: the range cannot be right. Forget it.
                self.nodes[i.as_usize()].elements = None;
                continue;
            }
            let mut run = MapRun::default();
            for el in &self.nodes[first as usize..end] {
                match el.status {
                    NodeStatus::Queued | NodeStatus::Active => run.running += 1,
                    NodeStatus::Failed => {
                        run.done += 1;
                        run.failed += 1;
                    }
                    s if s.is_terminal() => run.done += 1,
                    _ => {}
                }
            }
            self.maps.insert(i.get(), run);
            if len > 0 {
                self.ranges.insert(first, i);
            }
        }
    }

    fn is_hard_failure(&self, node: NodeIdx) -> bool {
        self.nodes[node.as_usize()].status == NodeStatus::Failed
            && !self.dag.node(node).opts.continue_on_failure
    }

    /// The flow's id.
    pub fn id(&self) -> FlowId {
        self.id
    }

    /// The validated DAG.
    pub fn dag(&self) -> &Arc<Dag> {
        &self.dag
    }

    /// Flow-level fields.
    pub fn header(&self) -> &FlowHeader {
        &self.header
    }

    /// The flow's status.
    pub fn status(&self) -> FlowStatus {
        self.header.status
    }

    /// Number of events so far.
    pub fn seq(&self) -> u64 {
        self.header.seq
    }

    /// One node's state (a DAG node or a map element).
    pub fn node(&self, idx: NodeIdx) -> &NodeState {
        &self.nodes[idx.as_usize()]
    }

    /// Every node's state, by index: the DAG's nodes, then map elements (some of
    /// which may belong to an earlier run of their map; see [`FlowState::owner`]).
    pub fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }

    /// DAG nodes not yet terminal.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// The map node and the offset of a live element; `None` for a DAG node or a
    /// slot left from an earlier run of a map.
    pub fn owner(&self, idx: NodeIdx) -> Option<(NodeIdx, u32)> {
        let (&first, &map) = self.ranges.range(..=idx.get()).next_back()?;
        let (_, len) = self.nodes[map.as_usize()].elements?;
        let offset = idx.get() - first;
        (offset < len).then_some((map, offset))
    }

    /// The live elements of a map node, as node indices.
    pub fn elements(&self, map: NodeIdx) -> impl Iterator<Item = NodeIdx> + '_ {
        let (first, len) = self
            .maps
            .contains_key(&map.get())
            .then(|| self.nodes[map.as_usize()].elements)
            .flatten()
            .unwrap_or((0, 0));
        (first..first + len).map(NodeIdx::from_u32)
    }

    /// The node of element `offset` of map `map`, if it is live.
    pub fn element(&self, map: NodeIdx, offset: u32) -> Option<NodeIdx> {
        let (first, len) = self.nodes.get(map.as_usize())?.elements?;
        (self.maps.contains_key(&map.get()) && offset < len)
            .then(|| NodeIdx::from_u32(first + offset))
    }

    /// Finds a node by its wire name: a DAG node's name, or `{map}[{offset}]` for a
    /// live map element.
    pub fn lookup(&self, name: &str) -> Option<NodeIdx> {
        if let Some(i) = self.dag.lookup(name) {
            return Some(i);
        }
        let (map, offset) = element_name(name)?;
        self.element(self.dag.lookup(map)?, offset)
    }

    /// The node's wire name: its own, or `{map}[{offset}]` for an element.
    pub fn node_name(&self, idx: NodeIdx) -> Cow<'_, str> {
        if idx.as_usize() < self.dag.len() {
            return Cow::Borrowed(&self.dag.node(idx).name);
        }
        match self.owner(idx) {
            Some((map, offset)) => Cow::Owned(format!("{}[{offset}]", self.dag.node(map).name)),
            None => Cow::Owned(format!("#{}", idx.get())),
        }
    }

    /// The DAG node whose handler, queue and options a node's job uses: itself, or
    /// its map for an element.
    pub fn job_node(&self, idx: NodeIdx) -> NodeIdx {
        if idx.as_usize() < self.dag.len() {
            idx
        } else {
            self.owner(idx).map_or(idx, |(map, _)| map)
        }
    }

    /// Whether a job is one of the first jobs of its flow: a root's first attempt.
    /// Such jobs wait behind the jobs of flows that have started (the fresh lane of
    /// their queue), so that a burst of new flows does not hold up running ones.
    pub fn is_fresh_job(&self, idx: NodeIdx, attempt: u32) -> bool {
        attempt == 1 && idx.as_usize() < self.dag.len() && self.dag.node(idx).parents.is_empty()
    }

    /// Whether the node runs as a job on a queue: not a map node (its elements are
    /// the jobs), not a wait, not a stale element slot.
    pub fn is_job(&self, idx: NodeIdx) -> bool {
        if idx.as_usize() < self.dag.len() {
            let node = self.dag.node(idx);
            node.map.is_none() && node.wait.is_none()
        } else {
            self.owner(idx).is_some()
        }
    }

    /// Done, running and failed elements of a live map node, and how many it has.
    pub fn map_counts(&self, map: NodeIdx) -> Option<MapCounts> {
        let run = self.maps.get(&map.get())?;
        let (_, len) = self.nodes[map.as_usize()].elements?;
        Some(MapCounts {
            total: len,
            done: run.done,
            running: run.running,
            failed: run.failed,
        })
    }

    /// When the earliest wait falls due, if any node waits with a deadline: the
    /// owner arranges an `Input::Tick` then.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.waits == 0 || self.header.status != FlowStatus::Running {
            return None;
        }
        self.nodes[..self.dag.len()]
            .iter()
            .filter(|n| n.status == NodeStatus::Waiting)
            .filter_map(|n| n.due_at)
            .min()
    }

    /// Whether `Retry` would do anything: the flow ended without completing.
    pub fn can_retry(&self) -> bool {
        matches!(
            self.header.status,
            FlowStatus::Failed | FlowStatus::Cancelled
        )
    }

    /// Why a signal to this node would be refused, if it would.
    pub fn signal_refusal(&self, idx: NodeIdx) -> Option<String> {
        let name = self.node_name(idx);
        if idx.as_usize() >= self.dag.len()
            || !matches!(self.dag.node(idx).wait, Some(WaitDef::Signal { .. }))
        {
            return Some(format!("node '{name}' does not wait for a signal"));
        }
        let status = self.nodes[idx.as_usize()].status;
        (self.header.status != FlowStatus::Running || status != NodeStatus::Waiting).then(|| {
            format!(
                "node '{name}' is {} in a {} flow; only a waiting node takes a signal",
                status.as_str(),
                self.header.status.as_str()
            )
        })
    }

    /// Why a re-run from this node would be refused, if it would.
    pub fn rerun_refusal(&self, idx: NodeIdx) -> Option<String> {
        let name = self.node_name(idx);
        if idx.as_usize() >= self.dag.len() {
            return Some(format!(
                "'{name}' is an element of a map: re-run the map node instead"
            ));
        }
        let status = self.nodes[idx.as_usize()].status;
        if self.header.status == FlowStatus::Running {
            if self.dag.opts.on_failure == OnFailure::FailFast {
                return Some(
                    "a running flow in failFast mode cannot re-run a node; wait for it to end"
                        .to_owned(),
                );
            }
            if self.header.seq == 0 || !status.is_terminal() {
                return Some(format!(
                    "node '{name}' is {}; only a node that ended can be re-run",
                    status.as_str()
                ));
            }
        }
        if self.dag.opts.on_failure == OnFailure::FailFast {
            // Fix (found by the state tests): a failFast flow running again with a
            // failure it does not re-run is what `repair` takes for a cancellation
            // a crash cut short, so the next restore (a restart, a wake-up from
            // hibernation) cancelled the re-run. A re-run must cover every failure.
            let reset = self.downstream(&[idx]);
            if let Some(f) = self
                .dag
                .indices()
                .find(|&i| self.is_hard_failure(i) && !reset[i.as_usize()])
            {
                return Some(format!(
                    "node '{}' failed and is not downstream of '{name}': a failFast flow \
                     would stop again at once; re-run from a node it depends on, or retry the flow",
                    self.dag.node(f).name
                ));
            }
        }
        None
    }

    /// The input a node's handler receives: `{"data": ..., "parents": {name: result}}`,
    /// built from JSON text without re-parsing any of it; a map element also gets
    /// `"item"` and `"index"`, and its map's other parents but not the source. A
    /// parent that failed contributes `{"error": "..."}` (a failed map its array of
    /// results, with errors in the failed slots).
    pub fn job_input(&self, idx: NodeIdx) -> String {
        let element = (idx.as_usize() >= self.dag.len())
            .then(|| self.owner(idx))
            .flatten();
        let owner = element.map_or(idx, |(map, _)| map);
        let node = self.dag.node(owner);
        let item = element.and_then(|_| self.nodes[idx.as_usize()].item.as_deref());
        let mut out = String::with_capacity(
            48 + node.data.len()
                + item.map_or(0, str::len)
                + node
                    .parents
                    .iter()
                    .map(|p| {
                        self.nodes[p.as_usize()]
                            .result
                            .as_ref()
                            .map_or(16, |r| r.len())
                            + self.dag.node(*p).name.len()
                            + 4
                    })
                    .sum::<usize>(),
        );
        out.push_str("{\"data\":");
        out.push_str(&node.data);
        out.push_str(",\"parents\":{");
        // An element does not get its map's source in full: N elements each carrying
        // the whole array would make a map quadratic in its size (a 10,000-item list
        // of 5 bytes each was 500 MB of job inputs). Its own piece is `item`.
        let source = element.and_then(|_| node.map.as_ref().map(|m| m.from));
        let mut first = true;
        for p in node.parents.iter().filter(|p| Some(**p) != source) {
            if !std::mem::replace(&mut first, false) {
                out.push(',');
            }
            push_json_string(&mut out, &self.dag.node(*p).name);
            out.push(':');
            self.push_parent_value(&mut out, *p);
        }
        out.push('}');
        if let Some((_, offset)) = element {
            out.push_str(",\"item\":");
            out.push_str(item.unwrap_or("null"));
            out.push_str(",\"index\":");
            out.push_str(&offset.to_string());
        }
        out.push('}');
        out
    }

    fn push_parent_value(&self, out: &mut String, p: NodeIdx) {
        let parent = &self.nodes[p.as_usize()];
        match (&parent.result, parent.status) {
            (Some(result), NodeStatus::Completed | NodeStatus::Failed) => out.push_str(result),
            (_, NodeStatus::Failed) => {
                out.push_str("{\"error\":");
                push_json_string(out, parent.error.as_deref().unwrap_or("failed"));
                out.push('}');
            }
            _ => out.push_str("null"),
        }
    }

    /// The jobs to put back on their queues after a restart: every queued or active
    /// job's current attempt, with what is left of its backoff. Enqueueing is
    /// idempotent (deterministic job ids), so jobs that survived in Redis stay single.
    pub fn resume(&self, now: u64) -> Vec<EnqueueJob> {
        if self.header.status.is_terminal() {
            return Vec::new();
        }
        let live_elements = self
            .maps
            .keys()
            .flat_map(|&m| self.elements(NodeIdx::from_u32(m)));
        self.dag
            .indices()
            .filter(|&i| self.is_job(i))
            .chain(live_elements)
            .filter(|&i| {
                matches!(
                    self.nodes[i.as_usize()].status,
                    NodeStatus::Queued | NodeStatus::Active
                )
            })
            .map(|i| {
                let n = &self.nodes[i.as_usize()];
                EnqueueJob {
                    node: i,
                    attempt: n.attempt,
                    delay_ms: n.due_at.map_or(0, |due| due.saturating_sub(now)),
                }
            })
            .collect()
    }

    /// Completes a snapshot that a crash cut short. Each write of a transition is
    /// atomic, but a snapshot from an older build or a damaged disk may hold a
    /// parent's outcome without what followed from it: a child left `pending` although
    /// its trigger rule is decided, a map whose elements all ended still running, a
    /// flow whose nodes are all terminal still `running`. This derives the missing
    /// steps from the records, exactly as `apply` would have, so the flow goes on
    /// instead of waiting forever. On a consistent snapshot it returns nothing.
    pub fn repair(&mut self, now: u64) -> Vec<Effect> {
        let mut tx = Tx::default();
        if self.header.status == FlowStatus::Running && self.header.seq > 0 {
            let dag = Arc::clone(&self.dag);
            if dag.opts.on_failure == OnFailure::FailFast
                && dag.indices().any(|i| self.is_hard_failure(i))
            {
                self.cancel_rest(&mut tx, now, "the flow stopped at a failure (failFast)");
            } else {
                let maps: Vec<u32> = self.maps.keys().copied().collect();
                for m in maps {
                    let m = NodeIdx::from_u32(m);
                    if self.nodes[m.as_usize()].status == NodeStatus::Active {
                        self.fill_map(&mut tx, m, now);
                        if self.map_settled(m) && self.finish_map(&mut tx, m, now) {
                            self.settle(&mut tx, vec![m], now);
                        }
                    }
                }
                self.decide_all(&mut tx, dag.indices(), now);
            }
            self.check_finished(&mut tx, now);
        }
        tx.into_effects()
    }

    /// Applies one input and returns what to do about it; nothing when the input
    /// changes nothing (stale, duplicate, or not allowed in the current status).
    pub fn apply(&mut self, input: Input, now: u64) -> Vec<Effect> {
        let mut tx = Tx::default();
        match input {
            Input::Start => self.start(&mut tx, now),
            Input::JobStarted {
                node,
                attempt,
                worker,
            } => {
                if let Some(n) = self.current(node, attempt) {
                    if n.status == NodeStatus::Queued {
                        let n = &mut self.nodes[node.as_usize()];
                        n.status = NodeStatus::Active;
                        n.started_at = Some(now);
                        n.due_at = None;
                        n.worker = worker;
                        self.node_event(&mut tx, node, now, None);
                    }
                }
            }
            Input::JobCompleted {
                node,
                attempt,
                result,
            } => {
                if self.current(node, attempt).is_some() {
                    self.complete(&mut tx, node, result, now);
                }
            }
            Input::JobFailed {
                node,
                attempt,
                error,
                retryable,
                cause,
            } => {
                if self.current(node, attempt).is_some() {
                    self.nodes[node.as_usize()].cause = cause;
                    self.fail(&mut tx, node, error, retryable, now);
                }
            }
            Input::JobCancelled {
                node,
                attempt,
                reason,
            } => {
                if self.current(node, attempt).is_some() {
                    self.cancel_job(&mut tx, node, reason, now);
                }
            }
            Input::Progress {
                node,
                attempt,
                progress,
            } => {
                if self.current(node, attempt).is_some() {
                    let n = &mut self.nodes[node.as_usize()];
                    if n.status == NodeStatus::Queued {
                        n.status = NodeStatus::Active;
                        n.started_at = Some(now);
                        n.due_at = None;
                    }
                    n.progress = Some(progress.clone());
                    tx.touch(node);
                    self.push_event(
                        &mut tx,
                        Some(node),
                        EventStatus::Node(NodeStatus::Active),
                        attempt,
                        now,
                        Some(progress),
                        None,
                    );
                }
            }
            Input::Signal { node, payload } => {
                if self.signal_refusal(node).is_none() {
                    self.end_wait(&mut tx, node, Ok(payload), now);
                    self.check_finished(&mut tx, now);
                }
            }
            Input::Tick => {
                if self.header.status == FlowStatus::Running && self.waits > 0 {
                    self.fire_due(&mut tx, now);
                    self.check_finished(&mut tx, now);
                }
            }
            Input::Rerun { node } => {
                if node.as_usize() < self.nodes.len() && self.rerun_refusal(node).is_none() {
                    self.rerun(&mut tx, node, now);
                }
            }
            Input::Cancel => {
                if self.header.status == FlowStatus::Running && self.header.seq > 0 {
                    self.cancel_rest(&mut tx, now, "the flow was cancelled");
                    self.finish(&mut tx, FlowStatus::Cancelled, now);
                }
            }
            Input::Retry => {
                if self.can_retry() {
                    self.retry(&mut tx, now);
                }
            }
            Input::Abort { reason } => {
                if self.header.status == FlowStatus::Running {
                    self.cancel_rest(&mut tx, now, &format!("the flow was aborted: {reason}"));
                    self.header.status = FlowStatus::Failed;
                    self.header.finished_at = Some(now);
                    self.push_event(
                        &mut tx,
                        None,
                        EventStatus::Flow(FlowStatus::Failed),
                        0,
                        now,
                        None,
                        Some(reason),
                    );
                    tx.finished = Some(FlowStatus::Failed);
                }
            }
        }
        tx.into_effects()
    }

    /// The node's state when `attempt` is its current, not yet terminal attempt of a
    /// job (a worker's report can only be about a job).
    fn current(&self, node: NodeIdx, attempt: u32) -> Option<&NodeState> {
        let n = self.nodes.get(node.as_usize())?;
        (self.header.status == FlowStatus::Running
            && n.attempt == attempt
            && matches!(n.status, NodeStatus::Queued | NodeStatus::Active)
            && self.is_job(node))
        .then_some(n)
    }

    fn start(&mut self, tx: &mut Tx, now: u64) {
        if self.header.seq != 0 || self.header.status != FlowStatus::Running {
            return;
        }
        self.flow_event(tx, FlowStatus::Running, now);
        let roots: Vec<NodeIdx> = self
            .dag
            .indices()
            .filter(|&i| self.dag.node(i).parents.is_empty())
            .collect();
        self.decide_all(tx, roots.into_iter(), now);
        self.check_finished(tx, now);
    }

    /// Queues the next attempt of a job. `new_run` starts counting attempts afresh.
    fn queue(
        &mut self,
        tx: &mut Tx,
        idx: NodeIdx,
        new_run: bool,
        delay_ms: u64,
        now: u64,
        error: Option<String>,
    ) {
        let n = &mut self.nodes[idx.as_usize()];
        n.archive();
        n.attempt += 1;
        if new_run {
            n.run_first_attempt = n.attempt;
        }
        n.status = NodeStatus::Queued;
        n.queued_at = Some(now);
        n.due_at = (delay_ms > 0).then(|| now + delay_ms);
        n.started_at = None;
        n.finished_at = None;
        n.progress = None;
        n.worker = None;
        n.cause = None;
        let attempt = n.attempt;
        tx.effects.push(Effect::Enqueue(EnqueueJob {
            node: idx,
            attempt,
            delay_ms,
        }));
        tx.touch(idx);
        self.push_event(
            tx,
            Some(idx),
            EventStatus::Node(NodeStatus::Queued),
            attempt,
            now,
            None,
            error,
        );
    }

    /// What the node's parents allow under its trigger rule.
    fn verdict(&self, i: NodeIdx) -> Verdict {
        let node = self.dag.node(i);
        let n = node.parents.len() as u32;
        if n == 0 {
            return Verdict::Run;
        }
        let c = self.parents[i.as_usize()];
        let terminal = n - c.open;
        let rule = node.trigger;
        let first = |pred: &dyn Fn(NodeStatus, bool) -> bool| -> String {
            node.parents
                .iter()
                .find(|p| {
                    pred(
                        self.nodes[p.as_usize()].status,
                        self.dag.node(**p).opts.continue_on_failure,
                    )
                })
                .map_or_else(String::new, |p| {
                    format!(
                        "parent '{}' {}",
                        self.dag.node(*p).name,
                        self.nodes[p.as_usize()].status.as_str()
                    )
                })
        };
        let skip = |why: String| Verdict::Skip(format!("{why} (trigger {})", rule.as_str()));
        match rule {
            TriggerRule::AllSuccess => {
                if terminal > c.completed + c.tolerated {
                    skip(first(&|s, tol| {
                        s.is_terminal()
                            && s != NodeStatus::Completed
                            && !(s == NodeStatus::Failed && tol)
                    }))
                } else if c.open == 0 {
                    Verdict::Run
                } else {
                    Verdict::Wait
                }
            }
            TriggerRule::AllDone => {
                if c.open == 0 {
                    Verdict::Run
                } else {
                    Verdict::Wait
                }
            }
            TriggerRule::OneSuccess => {
                if c.completed > 0 {
                    Verdict::Run
                } else if c.open == 0 {
                    skip("no parent completed".to_owned())
                } else {
                    Verdict::Wait
                }
            }
            TriggerRule::NoneFailed => {
                if c.failed > 0 {
                    skip(first(&|s, _| s == NodeStatus::Failed))
                } else if c.open == 0 {
                    Verdict::Run
                } else {
                    Verdict::Wait
                }
            }
            TriggerRule::AllFailed => {
                if terminal > c.failed {
                    skip(first(&|s, _| s.is_terminal() && s != NodeStatus::Failed))
                } else if c.open == 0 {
                    Verdict::Run
                } else {
                    Verdict::Wait
                }
            }
        }
    }

    /// Decides each pending node in `nodes` whose trigger rule can be decided, and
    /// everything that follows from it downstream (iteratively: a chain of ten
    /// thousand skips must not overflow the stack).
    fn decide_all(&mut self, tx: &mut Tx, nodes: impl Iterator<Item = NodeIdx>, now: u64) {
        let mut ended = Vec::new();
        for i in nodes {
            if self.header.status != FlowStatus::Running {
                return;
            }
            if self.decide(tx, i, now) {
                ended.push(i);
            }
        }
        self.settle(tx, ended, now);
    }

    /// These nodes just ended: tell their children, decide those that can now be,
    /// and go on downstream with the ones that ended in turn.
    fn settle(&mut self, tx: &mut Tx, mut ended: Vec<NodeIdx>, now: u64) {
        let dag = Arc::clone(&self.dag);
        while let Some(node) = ended.pop() {
            if self.header.status != FlowStatus::Running {
                return;
            }
            let status = self.nodes[node.as_usize()].status;
            let tolerated = dag.node(node).opts.continue_on_failure;
            for &child in &dag.node(node).children {
                let c = &mut self.parents[child.as_usize()];
                c.open = c.open.saturating_sub(1);
                c.count(status, tolerated);
                // `count` saw a terminal status, so it did not add to `open`.
                if self.decide(tx, child, now) {
                    ended.push(child);
                }
            }
        }
    }

    /// Runs, skips or fails a pending node whose trigger rule is decided; returns
    /// whether the node ended (so that its children are told).
    fn decide(&mut self, tx: &mut Tx, i: NodeIdx, now: u64) -> bool {
        if self.nodes[i.as_usize()].status != NodeStatus::Pending {
            return false;
        }
        match self.verdict(i) {
            Verdict::Wait => false,
            Verdict::Skip(reason) => {
                self.skip(tx, i, reason, now);
                true
            }
            Verdict::Run => self.begin(tx, i, now),
        }
    }

    /// A node whose trigger rule holds: check its condition, then wait, expand its
    /// map or queue its job. Returns whether it ended at once.
    fn begin(&mut self, tx: &mut Tx, i: NodeIdx, now: u64) -> bool {
        let dag = Arc::clone(&self.dag);
        let node = dag.node(i);
        if let Some(cond) = &node.when {
            match self.evaluate(i, &cond.program) {
                Ok(true) => {}
                Ok(false) => {
                    self.skip(tx, i, format!("condition `{}` is false", cond.source), now);
                    return true;
                }
                Err(e) => {
                    let error = format!("condition `{}` could not be evaluated: {e}", cond.source);
                    return self.fail_now(tx, i, error, now);
                }
            }
        }
        if let Some(wait) = &node.wait {
            let n = &mut self.nodes[i.as_usize()];
            n.archive();
            n.attempt += 1;
            n.run_first_attempt = n.attempt;
            n.status = NodeStatus::Waiting;
            n.worker = None;
            n.queued_at = Some(now);
            n.started_at = Some(now);
            n.finished_at = None;
            n.due_at = match wait {
                WaitDef::Signal { timeout_ms, .. } => timeout_ms.map(|t| now.saturating_add(t)),
                WaitDef::For(ms) => Some(now.saturating_add(*ms)),
                WaitDef::Until(at) => Some(*at),
            };
            self.waits += 1;
            self.node_event(tx, i, now, None);
            return false;
        }
        if node.map.is_some() {
            return self.expand(tx, i, now);
        }
        if let Err(e) = self.limits_with(i, None) {
            return self.fail_now(tx, i, e, now);
        }
        self.queue(tx, i, true, 0, now, None);
        false
    }

    /// Runs `f` with the CEL variables of DAG node `i`: `parents` (results by name,
    /// without `skip`) and `data`, and `item` and `index` for a map's element. The
    /// variables live in a scope over one root context per thread: building a root
    /// (cel's standard library) costs more than evaluating most expressions.
    fn with_cel<T>(
        &self,
        i: NodeIdx,
        skip: Option<NodeIdx>,
        item: Option<(serde_json::Value, u32)>,
        f: impl FnOnce(&cel::Context<'_, 'static>) -> T,
    ) -> Result<T, String> {
        let node = self.dag.node(i);
        let mut parents = serde_json::Map::new();
        for p in node.parents.iter().filter(|p| Some(**p) != skip) {
            let mut text = String::new();
            self.push_parent_value(&mut text, *p);
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("parent result: {e}"))?;
            parents.insert(self.dag.node(*p).name.to_string(), value);
        }
        let data: serde_json::Value =
            serde_json::from_str(&node.data).map_err(|e| format!("data: {e}"))?;
        CEL_ROOT.with(|root| {
            let mut ctx = root.new_inner_scope();
            ctx.add_variable("parents", serde_json::Value::Object(parents))
                .map_err(|e| e.to_string())?;
            ctx.add_variable("data", data).map_err(|e| e.to_string())?;
            if let Some((item, index)) = item {
                ctx.add_variable("item", item).map_err(|e| e.to_string())?;
                ctx.add_variable("index", u64::from(index))
                    .map_err(|e| e.to_string())?;
            }
            Ok(f(&ctx))
        })
    }

    /// The keys of a job's limits (concurrency key, rate limit), evaluated; `None`
    /// when its node has neither. The same inputs give the same keys, so a job put
    /// back after a crash or a Redis loss goes under the same keys.
    pub fn job_limits(&self, i: NodeIdx) -> Result<Option<JobLimits>, String> {
        let j = self.job_node(i);
        let node = self.dag.node(j);
        if node.concurrency.is_none() && node.rate_limit.is_none() {
            return Ok(self.dag.flow_key.clone().map(|flow| JobLimits {
                concurrency: None,
                rate: None,
                flow: Some(flow),
            }));
        }
        let item = match self.owner(i) {
            Some((_, index)) if j != i => {
                let text = self.nodes[i.as_usize()].item.as_deref().unwrap_or("null");
                let value = serde_json::from_str(text).map_err(|e| format!("item: {e}"))?;
                Some((value, index))
            }
            _ => None,
        };
        self.limits_with(j, item)
    }

    /// [`FlowState::job_limits`] for DAG node `j`, with an element's item if any.
    fn limits_with(
        &self,
        j: NodeIdx,
        item: Option<(serde_json::Value, u32)>,
    ) -> Result<Option<JobLimits>, String> {
        let node = self.dag.node(j);
        if node.concurrency.is_none() && node.rate_limit.is_none() {
            // No key to evaluate: no CEL context to build (each parent's result
            // would be parsed for nothing on every job).
            return Ok(self.dag.flow_key.clone().map(|flow| JobLimits {
                concurrency: None,
                rate: None,
                flow: Some(flow),
            }));
        }
        let skip = item.as_ref().and(node.map.as_ref().map(|m| m.from));
        self.with_cel(j, skip, item, |ctx| self.keys_in(j, ctx))?
    }

    /// The limit keys of DAG node `j`, evaluated in `ctx`.
    fn keys_in(
        &self,
        j: NodeIdx,
        ctx: &cel::Context<'_, 'static>,
    ) -> Result<Option<JobLimits>, String> {
        let node = self.dag.node(j);
        let key = |program: &crate::spec::Condition, what: &str| -> Result<String, String> {
            let value = program.program.execute(ctx).map_err(|e| {
                format!(
                    "{what} key `{}` could not be evaluated: {e}",
                    program.source
                )
            })?;
            crate::spec::key_text(value)
                .map_err(|e| format!("{what} key `{}`: {e}", program.source))
        };
        Ok(Some(JobLimits {
            concurrency: match &node.concurrency {
                Some(c) => Some((key(&c.key, "concurrency")?, c.limit, c.strategy)),
                None => None,
            },
            rate: match &node.rate_limit {
                Some(r) => Some((key(&r.key, "rateLimit")?, r.limit, r.per_ms)),
                None => None,
            },
            flow: self.dag.flow_key.clone(),
        }))
    }

    /// Evaluates a condition with `parents` (results by name) and `data` bound.
    fn evaluate(&self, i: NodeIdx, program: &cel::Program) -> Result<bool, String> {
        self.with_cel(i, None, None, |ctx| match program.execute(ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "it must give a boolean, it gave {:?}",
                other.type_of()
            )),
            Err(e) => Err(e.to_string()),
        })?
    }

    /// Ends a pending node as skipped, with the reason.
    fn skip(&mut self, tx: &mut Tx, i: NodeIdx, reason: String, now: u64) {
        let n = &mut self.nodes[i.as_usize()];
        n.status = NodeStatus::Skipped;
        n.reason = Some(reason.clone());
        n.finished_at = Some(now);
        self.remaining -= 1;
        self.node_event(tx, i, now, None);
        if let Some(event) = tx.events.last_mut() {
            event.reason = Some(reason);
        }
    }

    /// Fails a DAG node for good without a job (a condition or a map that cannot be
    /// evaluated). Returns whether its children must be told (not under failFast,
    /// which cancels the rest instead).
    fn fail_now(&mut self, tx: &mut Tx, i: NodeIdx, error: String, now: u64) -> bool {
        let n = &mut self.nodes[i.as_usize()];
        n.status = NodeStatus::Failed;
        n.error = Some(error.clone());
        n.due_at = None;
        n.finished_at = Some(now);
        self.remaining -= 1;
        self.node_event(tx, i, now, Some(error));
        self.after_failure(tx, i, now)
    }

    /// What a DAG node's failure for good does to the rest: counted as hard unless
    /// it has `continueOnFailure`, and under failFast cancels the rest. Returns
    /// whether its children must be told.
    fn after_failure(&mut self, tx: &mut Tx, i: NodeIdx, now: u64) -> bool {
        if self.dag.node(i).opts.continue_on_failure {
            return true;
        }
        self.hard_failures += 1;
        if self.dag.opts.on_failure == OnFailure::FailFast {
            let reason = format!("node '{}' failed (failFast)", self.node_name(i));
            self.cancel_rest(tx, now, &reason);
            return false;
        }
        true
    }

    /// A job completed: a DAG node or a map element.
    fn complete(&mut self, tx: &mut Tx, node: NodeIdx, result: Arc<str>, now: u64) {
        let n = &mut self.nodes[node.as_usize()];
        n.status = NodeStatus::Completed;
        n.result = Some(result);
        n.error = None;
        n.due_at = None;
        n.started_at.get_or_insert(now);
        n.finished_at = Some(now);
        if node.as_usize() >= self.dag.len() {
            self.node_event(tx, node, now, None);
            self.element_ended(tx, node, now);
        } else {
            self.remaining -= 1;
            self.node_event(tx, node, now, None);
            self.settle(tx, vec![node], now);
        }
        self.check_finished(tx, now);
    }

    /// A job cancelled by its concurrency key. A DAG node ends `cancelled` with the
    /// reason; like a failure, it stops a `failFast` flow (the rest is cancelled),
    /// and its children see a parent that did not complete. A map element fails
    /// for good instead, with the reason as its error (its slot in the map's result
    /// needs one).
    fn cancel_job(&mut self, tx: &mut Tx, node: NodeIdx, reason: String, now: u64) {
        if node.as_usize() >= self.dag.len() {
            self.fail(tx, node, reason, false, now);
            return;
        }
        let n = &mut self.nodes[node.as_usize()];
        n.status = NodeStatus::Cancelled;
        n.reason = Some(reason.clone());
        n.due_at = None;
        n.finished_at = Some(now);
        self.remaining -= 1;
        self.node_event(tx, node, now, None);
        if let Some(event) = tx.events.last_mut() {
            event.reason = Some(reason);
        }
        if self.dag.opts.on_failure == OnFailure::FailFast
            && !self.dag.node(node).opts.continue_on_failure
        {
            let reason = format!(
                "node '{}' was cancelled by its concurrency key (failFast)",
                self.node_name(node)
            );
            self.cancel_rest(tx, now, &reason);
        } else {
            self.settle(tx, vec![node], now);
        }
        self.check_finished(tx, now);
    }

    fn fail(&mut self, tx: &mut Tx, node: NodeIdx, error: String, retryable: bool, now: u64) {
        let dag = Arc::clone(&self.dag);
        let opts = &dag.node(self.job_node(node)).opts;
        let n = &self.nodes[node.as_usize()];
        let tries = n.attempt - n.run_first_attempt + 1;
        if retryable && tries < opts.attempts {
            let delay = opts.backoff.map_or(0, |b| b.delay_for(tries));
            let n = &mut self.nodes[node.as_usize()];
            n.error = Some(error.clone());
            n.finished_at = Some(now);
            let outcome = n
                .cause
                .map_or(AttemptOutcome::Failed, FailureCause::outcome);
            n.archive_as(outcome, Some(error.clone()));
            self.queue(tx, node, false, delay, now, Some(error));
            return;
        }
        let n = &mut self.nodes[node.as_usize()];
        n.status = NodeStatus::Failed;
        n.error = Some(error.clone());
        n.due_at = None;
        n.finished_at = Some(now);
        if node.as_usize() >= self.dag.len() {
            self.node_event(tx, node, now, Some(error));
            self.element_ended(tx, node, now);
        } else {
            self.remaining -= 1;
            self.node_event(tx, node, now, Some(error));
            if self.after_failure(tx, node, now) {
                self.settle(tx, vec![node], now);
            }
        }
        self.check_finished(tx, now);
    }

    /// Expands a map node whose trigger rule holds into its elements. Returns
    /// whether the node ended at once (an empty array, or a source that is not one).
    fn expand(&mut self, tx: &mut Tx, m: NodeIdx, now: u64) -> bool {
        let dag = Arc::clone(&self.dag);
        let Some(map) = &dag.node(m).map else {
            return false;
        };
        let source = &dag.node(map.from).name;
        let source_status = self.nodes[map.from.as_usize()].status;
        if matches!(source_status, NodeStatus::Skipped | NodeStatus::Cancelled) {
            // A map after a branch not taken (joined with `noneFailed` or `allDone`)
            // has nothing to map over: it is skipped, like the branch.
            let reason = format!("map source '{source}' was {}", source_status.as_str());
            self.skip(tx, m, reason, now);
            return true;
        }
        let items = {
            let from = &self.nodes[map.from.as_usize()];
            let parsed = from
                .result
                .as_deref()
                .filter(|_| from.status == NodeStatus::Completed)
                .map(serde_json::from_str::<serde_json::Value>);
            match parsed {
                None => Err(format!(
                    "map source '{source}' has no result (it is {})",
                    from.status.as_str()
                )),
                Some(Err(e)) => Err(format!(
                    "the result of map source '{source}' is not JSON: {e}"
                )),
                Some(Ok(mut value)) => {
                    match value.pointer_mut(&map.path).map(serde_json::Value::take) {
                        Some(serde_json::Value::Array(items)) => Ok(items),
                        Some(other) => Err(format!(
                            "path '{}' in the result of '{source}' is {}, not an array",
                            map.path,
                            json_kind(&other)
                        )),
                        None => Err(format!(
                            "path '{}' is not found in the result of '{source}'",
                            map.path
                        )),
                    }
                }
            }
        };
        let items = match items {
            Ok(items) if items.len() > map.max_items as usize => Err(format!(
                "map over '{source}' has {} elements, more than maxItems {}",
                items.len(),
                map.max_items
            )),
            other => other,
        };
        let items = match items {
            Ok(items) => items,
            Err(error) => return self.fail_now(tx, m, error, now),
        };
        // Every element's limit keys must evaluate, or the map fails before any runs.
        if dag.node(m).concurrency.is_some() || dag.node(m).rate_limit.is_some() {
            for (index, item) in items.iter().enumerate() {
                if let Err(e) = self.limits_with(m, Some((item.clone(), index as u32))) {
                    return self.fail_now(tx, m, format!("element {index}: {e}"), now);
                }
            }
        }
        let first = self.nodes.len() as u32;
        let len = items.len() as u32;
        // Element attempts continue past every attempt any element of this flow had
        // (the slots of a map's earlier runs stay in `nodes`): a re-run's elements
        // get new job ids, so a late report or a worker's idempotency key of an
        // earlier run never meets them.
        let base = self.nodes[self.dag.len()..]
            .iter()
            .map(|n| n.attempt)
            .max()
            .unwrap_or(0);
        for item in items {
            self.nodes.push(NodeState {
                item: Some(Arc::from(item.to_string().as_str())),
                attempt: base,
                run_first_attempt: base,
                ..NodeState::default()
            });
        }
        let n = &mut self.nodes[m.as_usize()];
        n.archive();
        n.attempt += 1;
        n.run_first_attempt = n.attempt;
        n.status = NodeStatus::Active;
        n.worker = None;
        n.elements = Some((first, len));
        n.queued_at = Some(now);
        n.started_at = Some(now);
        n.finished_at = None;
        self.maps.insert(m.get(), MapRun::default());
        if len > 0 {
            self.ranges.insert(first, m);
        }
        self.node_event(tx, m, now, None);
        for el in first..first + len {
            tx.touch(NodeIdx::from_u32(el));
        }
        if len == 0 {
            // Fix (found by the state tests): the caller tells the children that the
            // map ended; `finish_map` used to tell them too, so they counted it twice
            // (a child ran with another parent still open) and a chain of empty maps
            // recursed once per map (a stack overflow at 10,000 nodes).
            return self.finish_map(tx, m, now);
        }
        self.fill_map(tx, m, now);
        false
    }

    /// Queues pending elements of a live map while fewer than `maxParallel` run.
    fn fill_map(&mut self, tx: &mut Tx, m: NodeIdx, now: u64) {
        let cap = self
            .dag
            .node(m)
            .map
            .as_ref()
            .map_or(u32::MAX, |d| d.max_parallel);
        let Some((first, len)) = self.nodes[m.as_usize()].elements else {
            return;
        };
        let Some(mut run) = self.maps.get(&m.get()).copied() else {
            return;
        };
        while run.running < cap && run.next < len {
            let el = NodeIdx::from_u32(first + run.next);
            run.next += 1;
            if self.nodes[el.as_usize()].status == NodeStatus::Pending {
                run.running += 1;
                self.queue(tx, el, true, 0, now, None);
            }
        }
        self.maps.insert(m.get(), run);
    }

    fn map_settled(&self, m: NodeIdx) -> bool {
        match (self.maps.get(&m.get()), self.nodes[m.as_usize()].elements) {
            (Some(run), Some((_, len))) => run.done >= len,
            _ => false,
        }
    }

    /// An element ended (completed or failed for good): count it, queue the next,
    /// and end the map when it was the last (or at once, under failFast, on a
    /// failure).
    fn element_ended(&mut self, tx: &mut Tx, el: NodeIdx, now: u64) {
        let Some((m, _)) = self.owner(el) else {
            return;
        };
        let failed = self.nodes[el.as_usize()].status == NodeStatus::Failed;
        if let Some(run) = self.maps.get_mut(&m.get()) {
            run.running = run.running.saturating_sub(1);
            run.done += 1;
            run.failed += u32::from(failed);
        }
        let fail_fast = self.dag.opts.on_failure == OnFailure::FailFast
            && !self.dag.node(m).opts.continue_on_failure;
        if failed && fail_fast {
            if self.finish_map(tx, m, now) {
                self.settle(tx, vec![m], now);
            }
            return;
        }
        self.fill_map(tx, m, now);
        if self.map_settled(m) && self.finish_map(tx, m, now) {
            self.settle(tx, vec![m], now);
        }
    }

    /// Ends a map node: completed with the array of its elements' results in order,
    /// or failed when an element failed (its slot then holds `{"error": ...}`).
    /// Returns whether its children must be told (by the caller, with `settle`).
    fn finish_map(&mut self, tx: &mut Tx, m: NodeIdx, now: u64) -> bool {
        if self.nodes[m.as_usize()].status != NodeStatus::Active {
            return false;
        }
        let (first, len) = self.nodes[m.as_usize()].elements.unwrap_or((0, 0));
        let mut result = String::from("[");
        let mut failed = 0u32;
        let mut first_error = None;
        for (k, el) in self.nodes[first as usize..(first + len) as usize]
            .iter()
            .enumerate()
        {
            if k > 0 {
                result.push(',');
            }
            match (el.status, &el.result) {
                (NodeStatus::Completed, Some(r)) => result.push_str(r),
                (NodeStatus::Failed, _) => {
                    failed += 1;
                    if first_error.is_none() {
                        first_error = Some((k, el.error.clone().unwrap_or_default()));
                    }
                    result.push_str("{\"error\":");
                    push_json_string(&mut result, el.error.as_deref().unwrap_or("failed"));
                    result.push('}');
                }
                _ => result.push_str("null"),
            }
        }
        result.push(']');
        let name = self.dag.node(m).name.clone();
        let n = &mut self.nodes[m.as_usize()];
        n.result = Some(Arc::from(result.as_str()));
        n.finished_at = Some(now);
        self.remaining -= 1;
        if let Some((k, error)) = first_error {
            let error = format!("{failed} of {len} elements failed; first {name}[{k}]: {error}");
            n.status = NodeStatus::Failed;
            n.error = Some(error.clone());
            self.node_event(tx, m, now, Some(error));
            self.after_failure(tx, m, now)
        } else {
            n.status = NodeStatus::Completed;
            n.error = None;
            self.node_event(tx, m, now, None);
            true
        }
    }

    /// Ends a waiting node: with a result (signal, timer, default) or failed.
    fn end_wait(&mut self, tx: &mut Tx, w: NodeIdx, outcome: Result<Arc<str>, String>, now: u64) {
        self.waits = self.waits.saturating_sub(1);
        let n = &mut self.nodes[w.as_usize()];
        n.due_at = None;
        n.finished_at = Some(now);
        self.remaining -= 1;
        match outcome {
            Ok(result) => {
                n.status = NodeStatus::Completed;
                n.result = Some(result);
                n.error = None;
                self.node_event(tx, w, now, None);
                self.settle(tx, vec![w], now);
            }
            Err(error) => {
                n.status = NodeStatus::Failed;
                n.error = Some(error.clone());
                self.node_event(tx, w, now, Some(error));
                if self.after_failure(tx, w, now) {
                    self.settle(tx, vec![w], now);
                }
            }
        }
    }

    /// Fires every wait whose deadline has come.
    fn fire_due(&mut self, tx: &mut Tx, now: u64) {
        let dag = Arc::clone(&self.dag);
        let due: Vec<NodeIdx> = dag
            .indices()
            .filter(|&i| {
                let n = &self.nodes[i.as_usize()];
                n.status == NodeStatus::Waiting && n.due_at.is_some_and(|d| d <= now)
            })
            .collect();
        for w in due {
            if self.nodes[w.as_usize()].status != NodeStatus::Waiting {
                continue;
            }
            let started = self.nodes[w.as_usize()].started_at.unwrap_or(now);
            let outcome = match &dag.node(w).wait {
                Some(WaitDef::Signal {
                    name,
                    default,
                    timeout_ms,
                }) => match default {
                    Some(d) => Ok(Arc::clone(d)),
                    None => Err(format!(
                        "no signal '{name}' within {} ms",
                        timeout_ms.unwrap_or(now.saturating_sub(started))
                    )),
                },
                _ => Ok(Arc::from(format!("{{\"firedAt\":{now}}}").as_str())),
            };
            self.end_wait(tx, w, outcome, now);
        }
    }

    /// Cancels everything not yet terminal: DAG nodes and live map elements.
    /// Cancels every node not yet ended, each with `reason` (on the node and its
    /// event), and tells workers to stop their jobs.
    fn cancel_rest(&mut self, tx: &mut Tx, now: u64, reason: &str) {
        let live: Vec<NodeIdx> = self
            .maps
            .keys()
            .flat_map(|&m| self.elements(NodeIdx::from_u32(m)))
            .collect();
        let dag = Arc::clone(&self.dag);
        let dag_len = dag.len();
        for i in dag.indices().chain(live) {
            let is_job = self.is_job(i);
            let n = &mut self.nodes[i.as_usize()];
            let was_running = matches!(n.status, NodeStatus::Queued | NodeStatus::Active);
            match n.status {
                NodeStatus::Queued | NodeStatus::Active if is_job => {
                    tx.effects.push(Effect::CancelJob {
                        node: i,
                        attempt: n.attempt,
                    })
                }
                NodeStatus::Waiting => self.waits = self.waits.saturating_sub(1),
                s if s.is_terminal() => continue,
                _ => {}
            }
            let n = &mut self.nodes[i.as_usize()];
            n.status = NodeStatus::Cancelled;
            n.reason = Some(reason.to_owned());
            n.due_at = None;
            n.finished_at = Some(now);
            if i.as_usize() < dag_len {
                self.remaining -= 1;
            } else if let Some((m, _)) = self.owner(i) {
                // Fix (found by the state tests): a cancelled element is done and no
                // longer running in its map's counts (`map_counts`), as `recount`
                // finds after a restart; they were left as they stood.
                if let Some(run) = self.maps.get_mut(&m.get()) {
                    run.running = run.running.saturating_sub(u32::from(was_running));
                    run.done += 1;
                }
            }
            self.node_event(tx, i, now, None);
            if let Some(event) = tx.events.last_mut() {
                event.reason = Some(reason.to_owned());
            }
        }
    }

    fn check_finished(&mut self, tx: &mut Tx, now: u64) {
        if self.remaining == 0 && self.header.status == FlowStatus::Running {
            // A node left cancelled (a re-run of part of a cancelled flow) keeps the
            // flow cancelled, so that a retry can still run it.
            let status = if self.hard_failures > 0 {
                FlowStatus::Failed
            } else if self.nodes[..self.dag.len()]
                .iter()
                .any(|n| n.status == NodeStatus::Cancelled)
            {
                FlowStatus::Cancelled
            } else {
                FlowStatus::Completed
            };
            self.finish(tx, status, now);
        }
    }

    fn finish(&mut self, tx: &mut Tx, status: FlowStatus, now: u64) {
        self.header.status = status;
        self.header.finished_at = Some(now);
        self.flow_event(tx, status, now);
        tx.finished = Some(status);
    }

    /// Resets DAG nodes to pending (cancelling their jobs and dropping their map
    /// elements), except the maps in `partial`, whose failed and cancelled elements
    /// alone start again. Then the flow runs again and every reset node is decided.
    fn reset_and_run(&mut self, tx: &mut Tx, reset: &[bool], partial: &[NodeIdx], now: u64) {
        let dag = Arc::clone(&self.dag);
        let was_terminal = self.header.status.is_terminal();
        for i in dag.indices().filter(|i| reset[i.as_usize()]) {
            if partial.contains(&i) {
                continue;
            }
            let elements: Vec<NodeIdx> = self.elements(i).collect();
            for el in elements {
                let n = &self.nodes[el.as_usize()];
                if matches!(n.status, NodeStatus::Queued | NodeStatus::Active) {
                    tx.effects.push(Effect::CancelJob {
                        node: el,
                        attempt: n.attempt,
                    });
                }
            }
            let is_job = self.is_job(i);
            let n = &mut self.nodes[i.as_usize()];
            if is_job && matches!(n.status, NodeStatus::Queued | NodeStatus::Active) {
                tx.effects.push(Effect::CancelJob {
                    node: i,
                    attempt: n.attempt,
                });
            }
            if let Some((first, _)) = n.elements.take() {
                self.ranges.remove(&first);
            }
            n.archive_replaced(now);
            *n = NodeState {
                attempt: n.attempt,
                run_first_attempt: n.run_first_attempt,
                history: std::mem::take(&mut n.history),
                ..NodeState::default()
            };
            tx.touch(i);
        }
        for &m in partial {
            let (first, len) = self.nodes[m.as_usize()].elements.unwrap_or((0, 0));
            for el in first..first + len {
                let n = &mut self.nodes[el as usize];
                if n.status != NodeStatus::Completed {
                    n.archive_replaced(now);
                    *n = NodeState {
                        attempt: n.attempt,
                        run_first_attempt: n.run_first_attempt,
                        item: n.item.take(),
                        history: std::mem::take(&mut n.history),
                        ..NodeState::default()
                    };
                    tx.touch(NodeIdx::from_u32(el));
                }
            }
            // The map's run that failed is an attempt of its own: it keeps its
            // error in the history, and the run of the elements left is the next.
            let n = &mut self.nodes[m.as_usize()];
            n.archive();
            n.attempt += 1;
            n.run_first_attempt = n.attempt;
            n.status = NodeStatus::Active;
            n.error = None;
            n.result = None;
            n.reason = None;
            n.queued_at = Some(now);
            n.started_at = Some(now);
            n.finished_at = None;
        }
        self.recount();
        self.header.status = FlowStatus::Running;
        self.header.finished_at = None;
        if was_terminal {
            self.flow_event(tx, FlowStatus::Running, now);
        }
        for &m in partial {
            self.node_event(tx, m, now, None);
            self.fill_map(tx, m, now);
            // Fix (found by the state tests): every state change is one event, so an
            // element reset that must wait for a free slot shows as pending again.
            let waiting: Vec<NodeIdx> = self
                .elements(m)
                .filter(|e| self.nodes[e.as_usize()].status == NodeStatus::Pending)
                .collect();
            for el in waiting {
                self.node_event(tx, el, now, None);
            }
            if self.map_settled(m) && self.finish_map(tx, m, now) {
                self.settle(tx, vec![m], now);
            }
        }
        let mut ended = Vec::new();
        for i in dag
            .indices()
            .filter(|i| reset[i.as_usize()] && !partial.contains(i))
        {
            if self.decide(tx, i, now) {
                ended.push(i);
            } else if self.nodes[i.as_usize()].status == NodeStatus::Pending {
                // Every state change is one event: a reset node that must wait for
                // its parents shows as pending again.
                self.node_event(tx, i, now, None);
            }
        }
        self.settle(tx, ended, now);
        self.check_finished(tx, now);
    }

    fn retry(&mut self, tx: &mut Tx, now: u64) {
        // Re-run every failed, skipped or cancelled node, and every descendant of
        // one: a child that completed from a `continueOnFailure` parent's error must
        // see the parent's new result. A map whose own source is not re-run keeps
        // its completed elements and re-runs only the others.
        let dag = Arc::clone(&self.dag);
        let roots: Vec<NodeIdx> = dag
            .indices()
            .filter(|&i| {
                matches!(
                    self.nodes[i.as_usize()].status,
                    NodeStatus::Failed | NodeStatus::Skipped | NodeStatus::Cancelled
                )
            })
            .collect();
        let reset = self.downstream(&roots);
        let partial: Vec<NodeIdx> = roots
            .iter()
            .copied()
            .filter(|&m| {
                self.maps.contains_key(&m.get())
                    && dag.node(m).parents.iter().all(|p| !reset[p.as_usize()])
            })
            .collect();
        self.reset_and_run(tx, &reset, &partial, now);
    }

    fn rerun(&mut self, tx: &mut Tx, node: NodeIdx, now: u64) {
        let reset = self.downstream(&[node]);
        self.reset_and_run(tx, &reset, &[], now);
    }

    /// The given nodes and every node downstream of them, as a mask.
    fn downstream(&self, roots: &[NodeIdx]) -> Vec<bool> {
        let mut reset = vec![false; self.dag.len()];
        let mut stack = roots.to_vec();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut reset[i.as_usize()], true) {
                stack.extend(self.dag.node(i).children.iter().copied());
            }
        }
        reset
    }

    fn flow_event(&mut self, tx: &mut Tx, status: FlowStatus, now: u64) {
        self.push_event(tx, None, EventStatus::Flow(status), 0, now, None, None);
    }

    fn node_event(&mut self, tx: &mut Tx, node: NodeIdx, now: u64, error: Option<String>) {
        let n = &self.nodes[node.as_usize()];
        let (status, attempt) = (n.status, n.attempt);
        tx.touch(node);
        self.push_event(
            tx,
            Some(node),
            EventStatus::Node(status),
            attempt,
            now,
            None,
            error,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn push_event(
        &mut self,
        tx: &mut Tx,
        node: Option<NodeIdx>,
        status: EventStatus,
        attempt: u32,
        now: u64,
        progress: Option<Arc<str>>,
        error: Option<String>,
    ) {
        self.header.seq += 1;
        self.header.updated_at = now;
        tx.events.push(Event {
            seq: self.header.seq,
            ts: now,
            node,
            status,
            attempt,
            progress,
            error,
            reason: None,
        });
    }
}

/// A live map node's counts, for views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapCounts {
    /// Elements in all.
    pub total: u32,
    /// Elements ended.
    pub done: u32,
    /// Elements queued or running.
    pub running: u32,
    /// Elements failed for good.
    pub failed: u32,
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Collects the effects of one `apply`, then orders them: persist first.
#[derive(Default)]
struct Tx {
    touched: Vec<NodeIdx>,
    effects: Vec<Effect>,
    events: Vec<Event>,
    finished: Option<FlowStatus>,
}

impl Tx {
    fn touch(&mut self, node: NodeIdx) {
        // A transition touches a handful of nodes, except cancel/skip/retry which
        // touch each node once: a linear check of the last entry is enough to dedupe
        // the common repeated touch of the same node.
        if self.touched.last() != Some(&node) {
            self.touched.push(node);
        }
    }

    fn into_effects(mut self) -> Vec<Effect> {
        if self.events.is_empty() {
            return Vec::new();
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        let mut out = Vec::with_capacity(2 + self.effects.len() + self.events.len());
        out.push(Effect::Persist(Changes {
            nodes: self.touched,
        }));
        out.append(&mut self.effects);
        out.extend(self.events.into_iter().map(Effect::Emit));
        if let Some(status) = self.finished {
            out.push(Effect::Finished(status));
        }
        out
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_string(out: &mut String, s: &str) {
    // serde_json's escaping of a &str cannot fail.
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

#[cfg(test)]
mod tests;
