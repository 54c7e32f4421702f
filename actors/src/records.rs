//! The records a flow is stored as, and the stable numbers of its statuses: the
//! disk format's types, without the disk. Pure (no sled), so that the views
//! (`view.rs`) and the state machine's users can read a record without depending
//! on the store; `store.rs` encodes them (bincode, behind a version byte).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::state::{
    Attempt, AttemptOutcome, FailureCause, FlowHeader, FlowStatus, NodeState, NodeStatus,
};

/// A stored status number this build does not know (a newer build wrote it, or the
/// record is damaged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown {0} status {1}")]
pub struct UnknownStatus(pub &'static str, pub u8);

/// The flow record as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowRecord {
    /// The flow's name, copied from the spec for listing without reading the spec.
    pub name: String,
    /// `FlowStatus` as a number (see `status_code`).
    pub status: u8,
    /// Last event number.
    pub seq: u64,
    /// Creation time (ms).
    pub created_at: u64,
    /// Last change (ms).
    pub updated_at: u64,
    /// When the flow ended.
    pub finished_at: Option<u64>,
    /// Number of nodes.
    pub node_count: u32,
    /// Nodes terminal so far, for progress in listings.
    pub done_count: u32,
    /// The client's idempotency key, so that deleting the flow frees it.
    pub idempotency_key: Option<String>,
    /// Why the engine itself failed the flow, if it did.
    pub engine_error: Option<String>,
}

/// The node record as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    /// `NodeStatus` as a number.
    pub status: u8,
    /// Current attempt.
    pub attempt: u32,
    /// First attempt of the current run.
    pub run_first_attempt: u32,
    /// Result, as JSON text (bincode cannot carry `serde_json::Value`).
    pub result: Option<String>,
    /// Last error.
    pub error: Option<String>,
    /// Last progress, as JSON text.
    pub progress: Option<String>,
    /// Times, in ms.
    pub queued_at: Option<u64>,
    /// When a delayed retry is due.
    pub due_at: Option<u64>,
    /// When the attempt started.
    pub started_at: Option<u64>,
    /// When the node ended.
    pub finished_at: Option<u64>,
    /// Why the node was skipped.
    pub reason: Option<String>,
    /// A map element's item, as JSON text.
    pub item: Option<String>,
    /// A map node's elements: first index and count.
    pub elements: Option<(u32, u32)>,
    /// The worker (consumer name) that started the current attempt.
    pub worker: Option<String>,
    /// Why the current attempt failed, when the worker said (0 stalled, 1 timed
    /// out; see `cause_code`).
    pub cause: Option<u8>,
    /// The earlier attempts, oldest first (at most `MAX_ATTEMPTS_KEPT - 1`).
    pub history: Vec<AttemptRecord>,
}

/// Stable number of a failure cause on disk (never reorder).
fn cause_code(c: FailureCause) -> u8 {
    match c {
        FailureCause::Stalled => 0,
        FailureCause::TimedOut => 1,
    }
}

fn cause_from(c: u8) -> Result<FailureCause, UnknownStatus> {
    match c {
        0 => Ok(FailureCause::Stalled),
        1 => Ok(FailureCause::TimedOut),
        other => Err(UnknownStatus("failure cause", other)),
    }
}

/// One earlier attempt of a node, as stored (format version 3 on).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptRecord {
    /// Its number.
    pub attempt: u32,
    /// When it was queued (ms).
    pub queued_at: Option<u64>,
    /// When a worker started it.
    pub started_at: Option<u64>,
    /// When it ended.
    pub finished_at: Option<u64>,
    /// The worker that started it.
    pub worker: Option<String>,
    /// `AttemptOutcome` as a number (see `AttemptOutcome::code`).
    pub outcome: u8,
    /// Its error or why it was stopped.
    pub error: Option<String>,
}

/// The node record of format version 2 (before the attempt history): read from
/// stores an older build wrote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecordV2 {
    /// `NodeStatus` as a number.
    pub status: u8,
    /// Current attempt.
    pub attempt: u32,
    /// First attempt of the current run.
    pub run_first_attempt: u32,
    /// Result, as JSON text.
    pub result: Option<String>,
    /// Last error.
    pub error: Option<String>,
    /// Last progress, as JSON text.
    pub progress: Option<String>,
    /// Times, in ms.
    pub queued_at: Option<u64>,
    /// When a delayed retry is due.
    pub due_at: Option<u64>,
    /// When the attempt started.
    pub started_at: Option<u64>,
    /// When the node ended.
    pub finished_at: Option<u64>,
    /// Why the node was skipped.
    pub reason: Option<String>,
    /// A map element's item, as JSON text.
    pub item: Option<String>,
    /// A map node's elements: first index and count.
    pub elements: Option<(u32, u32)>,
}

impl From<NodeRecordV2> for NodeRecord {
    fn from(r: NodeRecordV2) -> Self {
        // The record kept only the current attempt: the history starts empty, and
        // the current attempt shows as it always did.
        NodeRecord {
            status: r.status,
            attempt: r.attempt,
            run_first_attempt: r.run_first_attempt,
            result: r.result,
            error: r.error,
            progress: r.progress,
            queued_at: r.queued_at,
            due_at: r.due_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            reason: r.reason,
            item: r.item,
            elements: r.elements,
            worker: None,
            cause: None,
            history: Vec::new(),
        }
    }
}

/// The node record of format version 1 (before maps, conditions and waits): read
/// from stores an older build wrote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecordV1 {
    /// `NodeStatus` as a number.
    pub status: u8,
    /// Current attempt.
    pub attempt: u32,
    /// First attempt of the current run.
    pub run_first_attempt: u32,
    /// Result, as JSON text.
    pub result: Option<String>,
    /// Last error.
    pub error: Option<String>,
    /// Last progress, as JSON text.
    pub progress: Option<String>,
    /// Times, in ms.
    pub queued_at: Option<u64>,
    /// When a delayed retry is due.
    pub due_at: Option<u64>,
    /// When the attempt started.
    pub started_at: Option<u64>,
    /// When the node ended.
    pub finished_at: Option<u64>,
}

impl From<NodeRecordV1> for NodeRecord {
    fn from(r: NodeRecordV1) -> Self {
        NodeRecordV2 {
            status: r.status,
            attempt: r.attempt,
            run_first_attempt: r.run_first_attempt,
            result: r.result,
            error: r.error,
            progress: r.progress,
            queued_at: r.queued_at,
            due_at: r.due_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            reason: None,
            item: None,
            elements: None,
        }
        .into()
    }
}

/// Stable numbers for statuses on disk (never reorder).
fn node_status_code(s: NodeStatus) -> u8 {
    match s {
        NodeStatus::Pending => 0,
        NodeStatus::Queued => 1,
        NodeStatus::Active => 2,
        NodeStatus::Completed => 3,
        NodeStatus::Failed => 4,
        NodeStatus::Skipped => 5,
        NodeStatus::Cancelled => 6,
        NodeStatus::Waiting => 7,
    }
}

fn node_status_from(c: u8) -> Result<NodeStatus, UnknownStatus> {
    Ok(match c {
        0 => NodeStatus::Pending,
        1 => NodeStatus::Queued,
        2 => NodeStatus::Active,
        3 => NodeStatus::Completed,
        4 => NodeStatus::Failed,
        5 => NodeStatus::Skipped,
        6 => NodeStatus::Cancelled,
        7 => NodeStatus::Waiting,
        other => return Err(UnknownStatus("node", other)),
    })
}

/// Stable number of a flow status on disk.
pub fn status_code(s: FlowStatus) -> u8 {
    match s {
        FlowStatus::Running => 0,
        FlowStatus::Completed => 1,
        FlowStatus::Failed => 2,
        FlowStatus::Cancelled => 3,
    }
}

/// The flow status of a stored number.
pub fn status_from(c: u8) -> Result<FlowStatus, UnknownStatus> {
    Ok(match c {
        0 => FlowStatus::Running,
        1 => FlowStatus::Completed,
        2 => FlowStatus::Failed,
        3 => FlowStatus::Cancelled,
        other => return Err(UnknownStatus("flow", other)),
    })
}

impl NodeRecord {
    /// The record of a node's state.
    pub fn from_state(n: &NodeState) -> Self {
        NodeRecord {
            status: node_status_code(n.status),
            attempt: n.attempt,
            run_first_attempt: n.run_first_attempt,
            result: n.result.as_deref().map(str::to_owned),
            error: n.error.clone(),
            progress: n.progress.as_deref().map(str::to_owned),
            queued_at: n.queued_at,
            due_at: n.due_at,
            started_at: n.started_at,
            finished_at: n.finished_at,
            reason: n.reason.clone(),
            item: n.item.as_deref().map(str::to_owned),
            elements: n.elements,
            worker: n.worker.as_deref().map(str::to_owned),
            cause: n.cause.map(cause_code),
            history: n
                .history
                .iter()
                .map(|a| AttemptRecord {
                    attempt: a.attempt,
                    queued_at: a.queued_at,
                    started_at: a.started_at,
                    finished_at: a.finished_at,
                    worker: a.worker.as_deref().map(str::to_owned),
                    outcome: a.outcome.code(),
                    error: a.error.clone(),
                })
                .collect(),
        }
    }

    /// The node state this record holds.
    pub fn into_state(self) -> Result<NodeState, UnknownStatus> {
        Ok(NodeState {
            status: node_status_from(self.status)?,
            attempt: self.attempt,
            run_first_attempt: self.run_first_attempt,
            result: self.result.map(Arc::from),
            error: self.error,
            progress: self.progress.map(Arc::from),
            queued_at: self.queued_at,
            due_at: self.due_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            reason: self.reason,
            item: self.item.map(Arc::from),
            elements: self.elements,
            worker: self.worker.map(Arc::from),
            cause: self.cause.map(cause_from).transpose()?,
            history: self
                .history
                .into_iter()
                .map(|a| {
                    Ok(Attempt {
                        attempt: a.attempt,
                        queued_at: a.queued_at,
                        started_at: a.started_at,
                        finished_at: a.finished_at,
                        worker: a.worker.map(Arc::from),
                        outcome: AttemptOutcome::from_code(a.outcome)
                            .ok_or(UnknownStatus("attempt", a.outcome))?,
                        error: a.error,
                    })
                })
                .collect::<Result<_, UnknownStatus>>()?,
        })
    }
}

impl FlowRecord {
    /// The header this record holds.
    pub fn header(&self) -> Result<FlowHeader, UnknownStatus> {
        Ok(FlowHeader {
            status: status_from(self.status)?,
            seq: self.seq,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        })
    }

    /// The flow's status.
    pub fn flow_status(&self) -> Result<FlowStatus, UnknownStatus> {
        status_from(self.status)
    }
}
