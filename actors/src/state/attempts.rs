//! A node's attempt history: why each earlier attempt ended, kept next to the
//! current one so that a retry does not erase why the first attempt failed.
//!
//! The current attempt lives in `NodeState`'s own fields (`attempt`, `queued_at`,
//! `started_at`, `finished_at`, `worker`, `error`, `status`); only attempts that are
//! over are copied into `NodeState::history`, when the next one begins or a flow
//! retry or re-run resets the node. The node record is rewritten on every
//! transition, so the list is bounded: the last [`MAX_ATTEMPTS_KEPT`] attempts in
//! all (the current one included), each error cut to [`MAX_ATTEMPT_ERROR_BYTES`].
//! A node that never retried carries an empty list: the common path pays nothing.
//!
//! What counts as an attempt: each number the node's `attempt` takes, that is each
//! job put on a queue (a retry after a failure, a flow retry, a re-run), each run of
//! a map node over its elements, and each wait of a wait node. A skipped node, or a
//! node cancelled before it was ever queued, has no attempt.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{NodeState, NodeStatus};

/// How many attempts of a node are kept, the current one included; older ones are
/// dropped, oldest first. 20 covers every retry policy we have seen in use (a few
/// attempts, a few flow retries) while a node record stays a few KB at most.
pub const MAX_ATTEMPTS_KEPT: usize = 20;

/// Longest error kept per earlier attempt, in bytes; a longer one is cut at a
/// character boundary and ends with `…`. The current attempt's error is kept whole
/// (it is the node's `error`).
pub const MAX_ATTEMPT_ERROR_BYTES: usize = 2048;

/// The error of an attempt that a flow retry or re-run stopped before it ended.
pub const REPLACED_BY_RETRY: &str = "replaced by a flow retry or re-run before it ended";

/// Why a job failed, when the worker knows more than the handler's error. It
/// decides the attempt's outcome (`stalled`, `timedOut`) instead of `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureCause {
    /// Claimed from workers that stopped responding more often than `maxStalled`
    /// allows: the job was lost with them.
    Stalled,
    /// The handler ran past the node's `timeoutMs`.
    TimedOut,
}

impl FailureCause {
    /// The cause of its wire name (`stalled`, `timedOut`); `None` for a name this
    /// build does not know, which reads as a plain failure.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stalled" => Some(FailureCause::Stalled),
            "timedOut" => Some(FailureCause::TimedOut),
            _ => None,
        }
    }

    /// The outcome of an attempt that failed for this cause.
    pub fn outcome(self) -> AttemptOutcome {
        match self {
            FailureCause::Stalled => AttemptOutcome::Stalled,
            FailureCause::TimedOut => AttemptOutcome::TimedOut,
        }
    }
}

/// How an attempt ended, or where it stands while it is the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// Current attempt, in its queue (or waiting out a backoff).
    Queued,
    /// Current attempt, a worker runs it (a map node: its elements run).
    Running,
    /// Current attempt of a wait node, waiting for its signal or its time.
    Waiting,
    /// Ended with a result.
    Completed,
    /// Ended with an error (a retry may have followed).
    Failed,
    /// Stopped before it ended: the flow was cancelled or failed fast, its
    /// concurrency key cancelled it, or a flow retry or re-run replaced it.
    Cancelled,
    /// Failed because it stalled: the workers that took it stopped responding
    /// more often than `maxStalled` allows.
    Stalled,
    /// Failed because the handler ran past `timeoutMs` (a retry may follow).
    TimedOut,
}

impl AttemptOutcome {
    /// The name used on the wire (the API's `outcome`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Queued => "queued",
            AttemptOutcome::Running => "running",
            AttemptOutcome::Waiting => "waiting",
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Stalled => "stalled",
            AttemptOutcome::TimedOut => "timedOut",
        }
    }

    /// Stable number on disk (never reorder).
    pub fn code(self) -> u8 {
        match self {
            AttemptOutcome::Queued => 0,
            AttemptOutcome::Running => 1,
            AttemptOutcome::Waiting => 2,
            AttemptOutcome::Completed => 3,
            AttemptOutcome::Failed => 4,
            AttemptOutcome::Cancelled => 5,
            AttemptOutcome::Stalled => 6,
            AttemptOutcome::TimedOut => 7,
        }
    }

    /// The outcome of a stored number; `None` for a number this build does not know.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => AttemptOutcome::Queued,
            1 => AttemptOutcome::Running,
            2 => AttemptOutcome::Waiting,
            3 => AttemptOutcome::Completed,
            4 => AttemptOutcome::Failed,
            5 => AttemptOutcome::Cancelled,
            6 => AttemptOutcome::Stalled,
            7 => AttemptOutcome::TimedOut,
            _ => return None,
        })
    }

    /// Whether the attempt is over.
    pub fn is_over(self) -> bool {
        matches!(
            self,
            AttemptOutcome::Completed
                | AttemptOutcome::Failed
                | AttemptOutcome::Cancelled
                | AttemptOutcome::Stalled
                | AttemptOutcome::TimedOut
        )
    }
}

/// One attempt of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Its number (the node's `attempt` while it was current).
    pub attempt: u32,
    /// When it was queued (ms since the epoch).
    pub queued_at: Option<u64>,
    /// When a worker started it.
    pub started_at: Option<u64>,
    /// When it ended.
    pub finished_at: Option<u64>,
    /// The worker (its consumer name) that started it, when the worker said.
    pub worker: Option<Arc<str>>,
    /// How it ended, or where it stands.
    pub outcome: AttemptOutcome,
    /// Its error (a failure) or why it was stopped (a cancellation).
    pub error: Option<String>,
}

impl NodeState {
    /// The current attempt as an [`Attempt`]; `None` when the node has none (never
    /// queued, skipped, or reset by a retry and not queued again).
    pub fn current_attempt(&self) -> Option<Attempt> {
        if self.attempt == 0 || self.queued_at.is_none() {
            return None;
        }
        let (outcome, error) = match self.status {
            NodeStatus::Queued => (AttemptOutcome::Queued, None),
            NodeStatus::Active => (AttemptOutcome::Running, None),
            NodeStatus::Waiting => (AttemptOutcome::Waiting, None),
            NodeStatus::Completed => (AttemptOutcome::Completed, None),
            NodeStatus::Failed => (
                self.cause
                    .map_or(AttemptOutcome::Failed, FailureCause::outcome),
                self.error.clone(),
            ),
            NodeStatus::Cancelled => (AttemptOutcome::Cancelled, self.reason.clone()),
            NodeStatus::Pending | NodeStatus::Skipped => return None,
        };
        Some(Attempt {
            attempt: self.attempt,
            queued_at: self.queued_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            worker: self.worker.clone(),
            outcome,
            error,
        })
    }

    /// Every attempt kept, oldest first, the current one last: at most
    /// [`MAX_ATTEMPTS_KEPT`].
    pub fn attempts(&self) -> impl Iterator<Item = Attempt> + '_ {
        self.history.iter().cloned().chain(self.current_attempt())
    }

    /// Moves the current attempt into the history as it stands (its status says
    /// how it ended). Does nothing when there is no current attempt or it is
    /// already there.
    pub(super) fn archive(&mut self) {
        if let Some(a) = self.current_attempt() {
            self.push_history(a);
        }
    }

    /// Moves the current attempt into the history with this outcome and error:
    /// for an attempt that is over although the node's status does not say so yet
    /// (a failure that is retried, a running job a retry replaces).
    pub(super) fn archive_as(&mut self, outcome: AttemptOutcome, error: Option<String>) {
        if let Some(mut a) = self.current_attempt() {
            a.outcome = outcome;
            a.error = error;
            self.push_history(a);
        }
    }

    /// Moves the current attempt into the history before a flow retry or re-run
    /// resets the node: an attempt still queued, running or waiting is cancelled by
    /// the reset (its job is stopped), one that ended keeps its outcome.
    pub(super) fn archive_replaced(&mut self, now: u64) {
        match self.current_attempt() {
            Some(a) if !a.outcome.is_over() => {
                self.finished_at = Some(now);
                self.archive_as(
                    AttemptOutcome::Cancelled,
                    Some(REPLACED_BY_RETRY.to_owned()),
                );
            }
            Some(_) => self.archive(),
            None => {}
        }
    }

    fn push_history(&mut self, mut a: Attempt) {
        if self.history.last().is_some_and(|h| h.attempt >= a.attempt) {
            return;
        }
        if let Some(e) = a.error.as_mut() {
            truncate_error(e);
        }
        // Room for the current attempt too: MAX_ATTEMPTS_KEPT in all.
        let keep = MAX_ATTEMPTS_KEPT - 1;
        if self.history.len() >= keep {
            let drop = self.history.len() + 1 - keep;
            self.history.drain(..drop);
        }
        self.history.push(a);
    }
}

/// Cuts an error to [`MAX_ATTEMPT_ERROR_BYTES`] at a character boundary.
fn truncate_error(e: &mut String) {
    if e.len() <= MAX_ATTEMPT_ERROR_BYTES {
        return;
    }
    let mut end = MAX_ATTEMPT_ERROR_BYTES - '…'.len_utf8();
    while !e.is_char_boundary(end) {
        end -= 1;
    }
    e.truncate(end);
    e.push('…');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn failed(attempt: u32, error: &str) -> NodeState {
        NodeState {
            status: NodeStatus::Active,
            attempt,
            queued_at: Some(u64::from(attempt) * 10),
            started_at: Some(u64::from(attempt) * 10 + 1),
            finished_at: Some(u64::from(attempt) * 10 + 2),
            error: Some(error.to_owned()),
            ..NodeState::default()
        }
    }

    #[test]
    fn the_history_keeps_the_last_attempts_only() {
        let mut n = NodeState::default();
        for k in 1..=30u32 {
            let history = std::mem::take(&mut n.history);
            n = NodeState {
                history,
                ..failed(k, &format!("e{k}"))
            };
            n.archive_as(AttemptOutcome::Failed, n.error.clone());
        }
        assert_eq!(n.history.len(), MAX_ATTEMPTS_KEPT - 1);
        assert_eq!(n.history[0].attempt, 12);
        assert_eq!(n.history.last().unwrap().error.as_deref(), Some("e30"));
        // With the current attempt, never more than the cap.
        assert_eq!(n.attempts().count(), MAX_ATTEMPTS_KEPT);
    }

    #[test]
    fn archiving_the_same_attempt_twice_keeps_one() {
        let mut n = failed(1, "boom");
        n.archive_as(AttemptOutcome::Failed, Some("boom".into()));
        n.archive();
        assert_eq!(n.history.len(), 1);
    }

    #[test]
    fn a_long_error_is_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_ATTEMPT_ERROR_BYTES);
        let mut n = failed(1, &long);
        n.archive_as(AttemptOutcome::Failed, Some(long.clone()));
        let kept = n.history[0].error.as_deref().unwrap();
        assert!(kept.len() <= MAX_ATTEMPT_ERROR_BYTES);
        assert!(kept.ends_with('…'));
        assert!(long.starts_with(kept.trim_end_matches('…')));
    }

    #[test]
    fn no_attempt_before_the_node_was_queued() {
        assert!(NodeState::default().current_attempt().is_none());
        let skipped = NodeState {
            status: NodeStatus::Skipped,
            finished_at: Some(5),
            ..NodeState::default()
        };
        assert_eq!(skipped.attempts().count(), 0);
    }
}
