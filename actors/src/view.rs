//! What the engine shows of a flow: the JSON shapes of the REST API, the WebSocket
//! snapshots and events, and the library's return values. One set of types for all
//! three, so that an embedding program and an HTTP client see the same thing.
//! Changing a field is an API change.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{FlowId, JobId, NodeIdx};
use crate::records::FlowRecord;
use crate::spec::{TriggerRule, WaitDef};
use crate::state::{Event, FlowState, FlowStatus, NodeStatus};

/// A flow with every node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FlowView {
    /// The flow's id.
    pub id: FlowId,
    /// Its name from the spec.
    pub name: String,
    /// Where it is.
    pub status: FlowStatus,
    /// Number of events so far; events after this snapshot have a larger `seq`.
    pub seq: u64,
    /// Creation time (ms since the epoch).
    pub created_at: u64,
    /// Last change (ms).
    pub updated_at: u64,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub finished_at: Option<u64>,
    /// Why the engine failed the flow, when it did (not a node's error).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Every node, in spec order.
    pub nodes: Vec<NodeView>,
}

/// One node of a flow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Unique within the flow.
    pub name: String,
    /// Where it is.
    pub status: NodeStatus,
    /// Current attempt (0 before the first).
    pub attempt: u32,
    /// Queue it runs on.
    pub queue: String,
    /// Handler that runs it.
    pub handler: String,
    /// Parent names.
    pub parents: Vec<String>,
    /// Child names.
    pub children: Vec<String>,
    /// The current attempt's job id, once it has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub job_id: Option<String>,
    /// When the current attempt was queued.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub queued_at: Option<u64>,
    /// When a delayed retry is due, or a wait node's deadline.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub due_at: Option<u64>,
    /// When a worker started it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub started_at: Option<u64>,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub finished_at: Option<u64>,
    /// Last progress reported.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub progress: Option<serde_json::Value>,
    /// Last error (also while a retry is waiting).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// The handler's result, once completed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result: Option<serde_json::Value>,
    /// The input its handler gets; only in the single-node view, once all parents are done.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub input: Option<serde_json::Value>,
    /// Why the node was skipped (its trigger rule or its condition) or cancelled
    /// (the flow was cancelled or failed fast, or its concurrency key cancelled it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Its trigger rule, when not the default `allSuccess`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trigger: Option<String>,
    /// Its condition, as written.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub when: Option<String>,
    /// On a wait node: what it waits for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub wait: Option<WaitView>,
    /// On a map node: its source and, once expanded, its elements' counts.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub map: Option<MapView>,
    /// On a map element: the map node it belongs to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub map_of: Option<String>,
    /// On a map element: its position in the map's array.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub index: Option<u32>,
    /// 0 (lowest) to 9 (highest): which of its queue's jobs it goes before.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Its concurrency key, when it has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub concurrency: Option<LimitView>,
    /// Its rate limit, when it has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rate_limit: Option<LimitView>,
    /// Every attempt kept, oldest first, the current one last (at most
    /// `MAX_ATTEMPTS_KEPT`, 20): only in the single-node view, so that a flow's
    /// view and WebSocket snapshots do not grow with its retries.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attempts: Option<Vec<AttemptView>>,
}

/// One attempt of a node: when it ran, where, and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    /// Its number (job ids end with it).
    pub attempt: u32,
    /// When it was queued (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub queued_at: Option<u64>,
    /// When a worker started it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub started_at: Option<u64>,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub finished_at: Option<u64>,
    /// The consumer name of the worker that started it, when the worker said.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub worker: Option<String>,
    /// `queued`, `running` or `waiting` while it is the current attempt;
    /// `completed`, `failed`, `cancelled`, `stalled` or `timedOut` once it is over.
    pub outcome: String,
    /// Its error (a failure), or why it was stopped (a cancellation).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl From<crate::state::Attempt> for AttemptView {
    fn from(a: crate::state::Attempt) -> Self {
        AttemptView {
            attempt: a.attempt,
            queued_at: a.queued_at,
            started_at: a.started_at,
            finished_at: a.finished_at,
            worker: a.worker.as_deref().map(str::to_owned),
            outcome: a.outcome.as_str().to_owned(),
            error: a.error,
        }
    }
}

fn default_priority() -> u8 {
    crate::spec::DEFAULT_PRIORITY
}

/// A node's concurrency key or rate limit: the spec, and the key its job runs
/// under once the node is ready.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LimitView {
    /// The key expression, as written.
    pub key: String,
    /// The evaluated key, once the node's job exists (for a map node: absent; each
    /// element has its own).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<String>,
    /// Jobs at once (concurrency) or per period (rate limit).
    pub limit: u32,
    /// A concurrency key's strategy: `queue`, `cancelNewest` or `cancelInProgress`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub strategy: Option<String>,
    /// A rate limit's period in ms.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub per_ms: Option<u64>,
}

/// What a wait node waits for; its deadline is the node's `dueAt`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WaitView {
    /// `signal` or `timer`.
    pub kind: String,
    /// The signal's name, on a signal wait.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signal: Option<String>,
    /// A signal wait's timeout.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timeout_ms: Option<u64>,
}

/// A map node's source and progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MapView {
    /// The parent whose result holds the array.
    pub from: String,
    /// The JSON Pointer into it.
    pub path: String,
    /// Elements in all, once expanded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total: Option<u32>,
    /// Elements ended.
    pub done: u32,
    /// Elements queued or running.
    pub running: u32,
    /// Elements failed for good.
    pub failed: u32,
}

/// A flow in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FlowSummary {
    /// The flow's id.
    pub id: FlowId,
    /// Its name.
    pub name: String,
    /// Where it is.
    pub status: FlowStatus,
    /// Number of events so far.
    pub seq: u64,
    /// Creation time (ms).
    pub created_at: u64,
    /// Last change (ms).
    pub updated_at: u64,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub finished_at: Option<u64>,
    /// Number of nodes.
    pub nodes_total: u32,
    /// Nodes that reached a terminal status.
    pub nodes_done: u32,
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FlowPage {
    /// The flows, newest first.
    pub flows: Vec<FlowSummary>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_cursor: Option<String>,
}

/// One state change of one flow, as subscribers receive it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FlowEvent {
    /// The flow.
    pub flow_id: FlowId,
    /// The node; absent for a flow-level change.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<String>,
    /// The node's (or the flow's) new status.
    pub status: String,
    /// The node's attempt (0 for flow events).
    pub attempt: u32,
    /// Strictly increasing per flow, without gaps.
    pub seq: u64,
    /// Time of the change (ms).
    pub ts: u64,
    /// Progress, on progress events.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub progress: Option<serde_json::Value>,
    /// The error, on failures and retries.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Why the node was skipped, on skip events; why it was cancelled, on cancel
    /// events.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

impl FlowEvent {
    /// Whether this event ends the flow.
    pub fn is_flow_end(&self) -> bool {
        self.node.is_none() && FlowStatus::parse(&self.status).is_some_and(FlowStatus::is_terminal)
    }
}

fn json(text: &Option<Arc<str>>) -> Option<serde_json::Value> {
    text.as_deref().and_then(|t| serde_json::from_str(t).ok())
}

impl FlowEvent {
    /// The wire form of a state machine event.
    pub fn from_event(state: &FlowState, event: &Event) -> Self {
        FlowEvent {
            flow_id: state.id(),
            node: event.node.map(|i| state.node_name(i).into_owned()),
            status: event.status.as_str().to_owned(),
            attempt: event.attempt,
            seq: event.seq,
            ts: event.ts,
            progress: json(&event.progress),
            error: event.error.clone(),
            reason: event.reason.clone(),
        }
    }
}

impl NodeView {
    /// The view of one node (a DAG node or a live map element); `with_input` adds
    /// the input its handler gets (and an element's item) and its attempts.
    pub fn from_state(state: &FlowState, idx: NodeIdx, with_input: bool) -> Self {
        let dag = state.dag();
        let owner = state.owner(idx);
        let def = dag.node(state.job_node(idx));
        let n = state.node(idx);
        let name = state.node_name(idx).into_owned();
        let names = |ids: &[NodeIdx]| ids.iter().map(|i| dag.node(*i).name.to_string()).collect();
        let input_ready = def.parents.iter().all(|p| {
            matches!(
                state.node(*p).status,
                NodeStatus::Completed | NodeStatus::Failed
            )
        });
        let (parents, children) = match owner {
            Some(_) => (Vec::new(), Vec::new()),
            None => (names(&def.parents), names(&def.children)),
        };
        let map = match (&def.map, owner) {
            (Some(m), None) => {
                let counts = state.map_counts(idx);
                Some(MapView {
                    from: dag.node(m.from).name.to_string(),
                    path: m.path.clone(),
                    total: counts.map(|c| c.total),
                    done: counts.map_or(0, |c| c.done),
                    running: counts.map_or(0, |c| c.running),
                    failed: counts.map_or(0, |c| c.failed),
                })
            }
            _ => None,
        };
        let wait = def.wait.as_ref().map(|w| match w {
            WaitDef::Signal {
                name, timeout_ms, ..
            } => WaitView {
                kind: "signal".to_owned(),
                signal: Some(name.clone()),
                timeout_ms: *timeout_ms,
            },
            WaitDef::For(_) | WaitDef::Until(_) => WaitView {
                kind: "timer".to_owned(),
                signal: None,
                timeout_ms: None,
            },
        });
        let is_job = state.is_job(idx);
        // The keys a job runs under, once it exists.
        let keys = (is_job && n.attempt > 0)
            .then(|| state.job_limits(idx).ok().flatten())
            .flatten();
        NodeView {
            job_id: (n.attempt > 0 && is_job)
                .then(|| JobId::new(state.id(), &name, n.attempt).to_string()),
            name,
            status: n.status,
            attempt: n.attempt,
            queue: def.queue.to_string(),
            handler: def.handler.to_string(),
            parents,
            children,
            queued_at: n.queued_at,
            due_at: n.due_at,
            started_at: n.started_at,
            finished_at: n.finished_at,
            progress: json(&n.progress),
            error: n.error.clone(),
            result: json(&n.result),
            input: (with_input && input_ready && is_job)
                .then(|| serde_json::from_str(&state.job_input(idx)).ok())
                .flatten(),
            reason: n.reason.clone(),
            trigger: (owner.is_none() && def.trigger != TriggerRule::AllSuccess)
                .then(|| def.trigger.as_str().to_owned()),
            when: owner
                .is_none()
                .then(|| def.when.as_ref().map(|c| c.source.clone()))
                .flatten(),
            wait,
            map,
            map_of: owner.map(|(m, _)| dag.node(m).name.to_string()),
            index: owner.map(|(_, i)| i),
            priority: def.priority,
            concurrency: def.concurrency.as_ref().map(|c| LimitView {
                key: c.key.source.clone(),
                value: keys
                    .as_ref()
                    .and_then(|k| k.concurrency.as_ref().map(|c| c.0.clone())),
                limit: c.limit,
                strategy: Some(c.strategy.as_str().to_owned()),
                per_ms: None,
            }),
            rate_limit: def.rate_limit.as_ref().map(|r| LimitView {
                key: r.key.source.clone(),
                value: keys
                    .as_ref()
                    .and_then(|k| k.rate.as_ref().map(|r| r.0.clone())),
                limit: r.limit,
                strategy: None,
                per_ms: Some(r.per_ms),
            }),
            attempts: with_input.then(|| n.attempts().map(AttemptView::from).collect()),
        }
    }
}

impl FlowView {
    /// The view of a whole flow.
    pub fn from_state(state: &FlowState, error: Option<String>) -> Self {
        let h = state.header();
        FlowView {
            id: state.id(),
            name: state.dag().name.clone(),
            status: h.status,
            seq: h.seq,
            created_at: h.created_at,
            updated_at: h.updated_at,
            finished_at: h.finished_at,
            error,
            // The DAG's nodes in spec order, then each map's live elements.
            nodes: state
                .dag()
                .indices()
                .chain(state.dag().indices().flat_map(|m| state.elements(m)))
                .map(|i| NodeView::from_state(state, i, false))
                .collect(),
        }
    }

    /// The node of this name.
    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

impl FlowSummary {
    /// The summary of a stored flow record.
    pub fn from_record(id: FlowId, rec: &FlowRecord) -> Option<Self> {
        Some(FlowSummary {
            id,
            name: rec.name.clone(),
            status: rec.flow_status().ok()?,
            seq: rec.seq,
            created_at: rec.created_at,
            updated_at: rec.updated_at,
            finished_at: rec.finished_at,
            nodes_total: rec.node_count,
            nodes_done: rec.done_count,
        })
    }
}
