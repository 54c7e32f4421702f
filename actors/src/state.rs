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
//! - the flow is terminal exactly when every node is terminal.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{FlowId, NodeIdx};
use crate::spec::{Dag, OnFailure};

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NodeStatus {
    /// Waiting for its parents.
    #[default]
    Pending,
    /// In a queue (or waiting out a retry backoff), not yet picked up.
    Queued,
    /// A worker is running it.
    Active,
    /// Finished with a result.
    Completed,
    /// Failed for good (attempts exhausted or not retryable).
    Failed,
    /// Will never run: an ancestor failed.
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
    /// Stop the flow: cancel everything not yet terminal.
    Cancel,
    /// Re-run the failed, skipped and cancelled nodes of a terminal flow.
    Retry,
    /// The engine cannot run the flow any more (its actor kept failing): cancel what
    /// is left and end the flow `failed` with this reason on the flow event.
    Abort {
        /// Why, for people.
        reason: String,
    },
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

/// The state of one flow and its scheduling rules.
#[derive(Debug, Clone)]
pub struct FlowState {
    id: FlowId,
    dag: Arc<Dag>,
    header: FlowHeader,
    nodes: Vec<NodeState>,
    /// Per node: parents not yet satisfied (completed, or failed with
    /// `continueOnFailure`). Derived, never persisted.
    waiting: Vec<u32>,
    /// Nodes not terminal. Derived.
    remaining: usize,
    /// Nodes failed for good without `continueOnFailure`. Derived.
    hard_failures: usize,
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
    /// `nodes` must have one entry per DAG node; missing entries are treated as fresh.
    pub fn restore(
        id: FlowId,
        dag: Arc<Dag>,
        header: FlowHeader,
        mut nodes: Vec<NodeState>,
    ) -> Self {
        nodes.resize(dag.len(), NodeState::default());
        let mut state = FlowState {
            id,
            dag,
            header,
            nodes,
            waiting: Vec::new(),
            remaining: 0,
            hard_failures: 0,
        };
        state.recount();
        state
    }

    fn recount(&mut self) {
        let dag = &self.dag;
        self.waiting = dag
            .nodes
            .iter()
            .map(|n| {
                n.parents
                    .iter()
                    .filter(|p| !self.satisfies_children(**p))
                    .count() as u32
            })
            .collect();
        self.remaining = self
            .nodes
            .iter()
            .filter(|n| !n.status.is_terminal())
            .count();
        self.hard_failures = self
            .dag
            .indices()
            .filter(|&i| self.is_hard_failure(i))
            .count();
    }

    fn satisfies_children(&self, node: NodeIdx) -> bool {
        match self.nodes[node.as_usize()].status {
            NodeStatus::Completed => true,
            NodeStatus::Failed => self.dag.node(node).opts.continue_on_failure,
            _ => false,
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

    /// One node's state.
    pub fn node(&self, idx: NodeIdx) -> &NodeState {
        &self.nodes[idx.as_usize()]
    }

    /// Every node's state, by index.
    pub fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }

    /// Nodes not yet terminal.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Whether `Retry` would do anything: the flow ended without completing.
    pub fn can_retry(&self) -> bool {
        matches!(
            self.header.status,
            FlowStatus::Failed | FlowStatus::Cancelled
        )
    }

    /// The input a node's handler receives: `{"data": ..., "parents": {name: result}}`,
    /// built from JSON text without re-parsing any of it. A parent that failed with
    /// `continueOnFailure` contributes `{"error": "..."}`.
    pub fn job_input(&self, idx: NodeIdx) -> String {
        let node = self.dag.node(idx);
        let mut out = String::with_capacity(
            32 + node.data.len()
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
        for (i, p) in node.parents.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, &self.dag.node(*p).name);
            out.push(':');
            let parent = &self.nodes[p.as_usize()];
            match (&parent.result, parent.status) {
                (Some(result), NodeStatus::Completed) => out.push_str(result),
                (_, NodeStatus::Failed) => {
                    out.push_str("{\"error\":");
                    push_json_string(&mut out, parent.error.as_deref().unwrap_or("failed"));
                    out.push('}');
                }
                _ => out.push_str("null"),
            }
        }
        out.push_str("}}");
        out
    }

    /// The jobs to put back on their queues after a restart: every queued or active
    /// node's current attempt, with what is left of its backoff. Enqueueing is
    /// idempotent (deterministic job ids), so jobs that survived in Redis stay single.
    pub fn resume(&self, now: u64) -> Vec<EnqueueJob> {
        if self.header.status.is_terminal() {
            return Vec::new();
        }
        self.dag
            .indices()
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
    /// every parent is done, descendants of a failed node not yet skipped, a flow
    /// whose nodes are all terminal still `running`. This derives the missing steps
    /// from the records, exactly as `apply` would have, so the flow goes on instead
    /// of waiting forever. On a consistent snapshot it returns nothing.
    pub fn repair(&mut self, now: u64) -> Vec<Effect> {
        let mut tx = Tx::default();
        if self.header.status == FlowStatus::Running && self.header.seq > 0 {
            let dag = Arc::clone(&self.dag);
            for i in dag.indices() {
                if self.is_hard_failure(i) {
                    match dag.opts.on_failure {
                        OnFailure::Continue => self.skip_descendants(&mut tx, i, now),
                        OnFailure::FailFast => self.cancel_rest(&mut tx, now),
                    }
                }
            }
            for i in dag.indices() {
                if self.nodes[i.as_usize()].status == NodeStatus::Pending
                    && self.waiting[i.as_usize()] == 0
                {
                    self.queue(&mut tx, i, true, 0, now, None);
                }
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
            Input::JobStarted { node, attempt } => {
                if let Some(n) = self.current(node, attempt) {
                    if n.status == NodeStatus::Queued {
                        let n = &mut self.nodes[node.as_usize()];
                        n.status = NodeStatus::Active;
                        n.started_at = Some(now);
                        n.due_at = None;
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
                    let n = &mut self.nodes[node.as_usize()];
                    n.status = NodeStatus::Completed;
                    n.result = Some(result);
                    n.error = None;
                    n.due_at = None;
                    n.started_at.get_or_insert(now);
                    n.finished_at = Some(now);
                    self.remaining -= 1;
                    self.node_event(&mut tx, node, now, None);
                    self.release_children(&mut tx, node, now);
                }
            }
            Input::JobFailed {
                node,
                attempt,
                error,
                retryable,
            } => {
                if self.current(node, attempt).is_some() {
                    self.fail(&mut tx, node, error, retryable, now);
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
            Input::Cancel => {
                if self.header.status == FlowStatus::Running && self.header.seq > 0 {
                    self.cancel_rest(&mut tx, now);
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
                    self.cancel_rest(&mut tx, now);
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

    /// The node's state when `attempt` is its current, not yet terminal attempt.
    fn current(&self, node: NodeIdx, attempt: u32) -> Option<&NodeState> {
        let n = self.nodes.get(node.as_usize())?;
        (self.header.status == FlowStatus::Running
            && n.attempt == attempt
            && matches!(n.status, NodeStatus::Queued | NodeStatus::Active))
        .then_some(n)
    }

    fn start(&mut self, tx: &mut Tx, now: u64) {
        if self.header.seq != 0 || self.header.status != FlowStatus::Running {
            return;
        }
        self.push_event(
            tx,
            None,
            EventStatus::Flow(FlowStatus::Running),
            0,
            now,
            None,
            None,
        );
        for i in (0..self.dag.len()).map(NodeIdx::from_usize) {
            if self.waiting[i.as_usize()] == 0 {
                self.queue(tx, i, true, 0, now, None);
            }
        }
    }

    /// Queues the next attempt of a node. `new_run` starts counting attempts afresh.
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

    /// A node now satisfies its children: queue those whose last parent it was.
    fn release_children(&mut self, tx: &mut Tx, node: NodeIdx, now: u64) {
        let dag = Arc::clone(&self.dag);
        for &child in &dag.node(node).children {
            let w = &mut self.waiting[child.as_usize()];
            *w = w.saturating_sub(1);
            if *w == 0 && self.nodes[child.as_usize()].status == NodeStatus::Pending {
                self.queue(tx, child, true, 0, now, None);
            }
        }
        self.check_finished(tx, now);
    }

    fn fail(&mut self, tx: &mut Tx, node: NodeIdx, error: String, retryable: bool, now: u64) {
        let dag = Arc::clone(&self.dag);
        let opts = &dag.node(node).opts;
        let n = &self.nodes[node.as_usize()];
        let tries = n.attempt - n.run_first_attempt + 1;
        if retryable && tries < opts.attempts {
            let delay = opts.backoff.map_or(0, |b| b.delay_for(tries));
            self.nodes[node.as_usize()].error = Some(error.clone());
            self.queue(tx, node, false, delay, now, Some(error));
            return;
        }
        let n = &mut self.nodes[node.as_usize()];
        n.status = NodeStatus::Failed;
        n.error = Some(error.clone());
        n.due_at = None;
        n.finished_at = Some(now);
        self.remaining -= 1;
        self.node_event(tx, node, now, Some(error));
        if opts.continue_on_failure {
            self.release_children(tx, node, now);
            return;
        }
        self.hard_failures += 1;
        match dag.opts.on_failure {
            OnFailure::Continue => self.skip_descendants(tx, node, now),
            OnFailure::FailFast => self.cancel_rest(tx, now),
        }
        self.check_finished(tx, now);
    }

    fn skip_descendants(&mut self, tx: &mut Tx, node: NodeIdx, now: u64) {
        let dag = Arc::clone(&self.dag);
        let mut stack: Vec<NodeIdx> = dag.node(node).children.clone();
        while let Some(d) = stack.pop() {
            if self.nodes[d.as_usize()].status != NodeStatus::Pending {
                // Already skipped through another path (or, impossibly, running).
                continue;
            }
            let n = &mut self.nodes[d.as_usize()];
            n.status = NodeStatus::Skipped;
            n.finished_at = Some(now);
            self.remaining -= 1;
            self.node_event(tx, d, now, None);
            stack.extend(dag.node(d).children.iter().copied());
        }
    }

    fn cancel_rest(&mut self, tx: &mut Tx, now: u64) {
        for i in (0..self.dag.len()).map(NodeIdx::from_usize) {
            let n = &mut self.nodes[i.as_usize()];
            match n.status {
                NodeStatus::Queued | NodeStatus::Active => tx.effects.push(Effect::CancelJob {
                    node: i,
                    attempt: n.attempt,
                }),
                NodeStatus::Pending => {}
                _ => continue,
            }
            n.status = NodeStatus::Cancelled;
            n.due_at = None;
            n.finished_at = Some(now);
            self.remaining -= 1;
            self.node_event(tx, i, now, None);
        }
    }

    fn check_finished(&mut self, tx: &mut Tx, now: u64) {
        if self.remaining == 0 && self.header.status == FlowStatus::Running {
            let status = if self.hard_failures > 0 {
                FlowStatus::Failed
            } else {
                FlowStatus::Completed
            };
            self.finish(tx, status, now);
        }
    }

    fn finish(&mut self, tx: &mut Tx, status: FlowStatus, now: u64) {
        self.header.status = status;
        self.header.finished_at = Some(now);
        self.push_event(tx, None, EventStatus::Flow(status), 0, now, None, None);
        tx.finished = Some(status);
    }

    fn retry(&mut self, tx: &mut Tx, now: u64) {
        // Re-run every failed, skipped or cancelled node, and every descendant of
        // one: a child that completed from a `continueOnFailure` parent's error must
        // see the parent's new result.
        let dag = Arc::clone(&self.dag);
        let mut reset = vec![false; dag.len()];
        let mut stack: Vec<NodeIdx> = dag
            .indices()
            .filter(|&i| {
                matches!(
                    self.nodes[i.as_usize()].status,
                    NodeStatus::Failed | NodeStatus::Skipped | NodeStatus::Cancelled
                )
            })
            .collect();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut reset[i.as_usize()], true) {
                stack.extend(dag.node(i).children.iter().copied());
            }
        }
        for (n, _) in self.nodes.iter_mut().zip(&reset).filter(|(_, r)| **r) {
            {
                n.status = NodeStatus::Pending;
                n.result = None;
                n.error = None;
                n.progress = None;
                n.due_at = None;
                n.started_at = None;
                n.finished_at = None;
            }
        }
        for i in (0..self.dag.len()).map(NodeIdx::from_usize) {
            if self.nodes[i.as_usize()].status == NodeStatus::Pending {
                tx.touch(i);
            }
        }
        self.recount();
        self.header.status = FlowStatus::Running;
        self.header.finished_at = None;
        self.push_event(
            tx,
            None,
            EventStatus::Flow(FlowStatus::Running),
            0,
            now,
            None,
            None,
        );
        for i in (0..self.dag.len()).map(NodeIdx::from_usize) {
            if self.nodes[i.as_usize()].status == NodeStatus::Pending {
                if self.waiting[i.as_usize()] == 0 {
                    self.queue(tx, i, true, 0, now, None);
                } else {
                    // Fix (found by the state tests): a reset node that must wait for
                    // its parents went from failed, skipped or cancelled back to
                    // pending without an event, so a client following the events kept
                    // showing its old status. Every state change is one event.
                    self.node_event(tx, i, now, None);
                }
            }
        }
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
        });
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
