//! What the engine shows of a flow: the JSON shapes of the REST API, the WebSocket
//! snapshots and events, and the library's return values. One set of types for all
//! three, so that an embedding program and an HTTP client see the same thing.
//! Changing a field is an API change.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{FlowId, JobId, NodeIdx};
use crate::records::FlowRecord;
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
    /// When a delayed retry is due.
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
            node: event.node.map(|i| state.dag().node(i).name.to_string()),
            status: event.status.as_str().to_owned(),
            attempt: event.attempt,
            seq: event.seq,
            ts: event.ts,
            progress: json(&event.progress),
            error: event.error.clone(),
        }
    }
}

impl NodeView {
    /// The view of one node; `with_input` adds the input its handler gets.
    pub fn from_state(state: &FlowState, idx: NodeIdx, with_input: bool) -> Self {
        let dag = state.dag();
        let node = dag.node(idx);
        let n = state.node(idx);
        let names = |ids: &[NodeIdx]| ids.iter().map(|i| dag.node(*i).name.to_string()).collect();
        let input_ready = node.parents.iter().all(|p| {
            matches!(
                state.node(*p).status,
                NodeStatus::Completed | NodeStatus::Failed
            )
        });
        NodeView {
            name: node.name.to_string(),
            status: n.status,
            attempt: n.attempt,
            queue: node.queue.to_string(),
            handler: node.handler.to_string(),
            parents: names(&node.parents),
            children: names(&node.children),
            job_id: (n.attempt > 0)
                .then(|| JobId::new(state.id(), &node.name, n.attempt).to_string()),
            queued_at: n.queued_at,
            due_at: n.due_at,
            started_at: n.started_at,
            finished_at: n.finished_at,
            progress: json(&n.progress),
            error: n.error.clone(),
            result: json(&n.result),
            input: (with_input && input_ready)
                .then(|| serde_json::from_str(&state.job_input(idx)).ok())
                .flatten(),
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
            nodes: state
                .dag()
                .indices()
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
