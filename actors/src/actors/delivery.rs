//! Who owns a worker's report, from the moment it exists until its ack.
//!
//! A report (a job's outcome or progress, from a worker of this process or read
//! from `P:completions`) travels to its flow actor inside a [`Receipt`]. A receipt
//! ends in exactly one of two ways:
//!
//! - the flow actor carries out its ack after the flush that holds what it applied
//!   ([`Receipt::settle`]); or
//! - it is handed back to the [`CompletionRouter`](super::router), which routes it
//!   again (to the flow's next actor, or acks and drops it when the flow ended or
//!   was deleted).
//!
//! Dropping a receipt in any other way hands it back by itself (its `Drop`): a
//! mailbox that ractor drops when an actor stops or fails, the pending writes of an
//! actor that failed on a flush error, a cast to an actor that is already gone. So
//! a report is never lost in memory; and for what a crash of the whole process
//! takes, Redis is the owner: a record stays pending in `P:completions` until acked
//! and is claimed again after [`REDELIVER_AFTER`] (`EngineBuilder::redeliver_after`); a local job stays pending in
//! its queue stream and is reclaimed after its lease.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::OwnedSemaphorePermit;

use crate::ids::FlowId;
use crate::queue::{LocalAck, Outcome};

/// Records of `P:completions` read but not acknowledged for this long are read
/// again by the router (taken over from whichever consumer holds them), by default.
pub const REDELIVER_AFTER: Duration = Duration::from_secs(15);

/// How to acknowledge a report once what it says is durable.
#[derive(Debug)]
pub enum Ack {
    /// Nothing to acknowledge: a `started` or `progress` report of a worker in this
    /// process (losing one loses only a progress value; the final report follows).
    None,
    /// A job finished by a worker of this process: `XACK` + `XDEL` its stream entry
    /// and mark it done.
    Local(LocalAck),
    /// A record of the completions stream, by its entry id.
    Completion(String),
}

/// A worker's report on one job attempt.
#[derive(Debug)]
pub struct Report {
    /// The job's flow.
    pub flow: FlowId,
    /// The node's name.
    pub node: String,
    /// The attempt reported on.
    pub attempt: u32,
    /// What happened.
    pub outcome: Outcome,
    /// What to acknowledge once the report is applied durably.
    pub ack: Ack,
}

/// Where dropped receipts go: the router's hand-back channel. Unbounded because a
/// `Drop` cannot wait; what it carries is bounded by the reports in flight (the
/// router's read window plus one per local worker).
pub type HandBack = mpsc::UnboundedSender<Report>;

/// A report that must be acknowledged or handed back; see the module docs.
#[derive(Debug)]
pub struct Receipt {
    report: Option<Report>,
    handback: Option<HandBack>,
    /// The router's read window: a record read from Redis holds a permit until it
    /// is settled or handed back, so the router cannot read without bound ahead of
    /// the flow actors.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Receipt {
    /// A receipt that hands `report` back through `handback` unless settled.
    pub fn new(report: Report, handback: Option<HandBack>) -> Self {
        Receipt {
            report: Some(report),
            handback,
            _permit: None,
        }
    }

    /// Holds a permit of the router's read window until settled or handed back.
    pub fn with_permit(mut self, permit: OwnedSemaphorePermit) -> Self {
        self._permit = Some(permit);
        self
    }

    /// The report.
    pub fn report(&self) -> &Report {
        // Only `settle` and `into_report` take the report, and both consume `self`.
        self.report
            .as_ref()
            .unwrap_or_else(|| unreachable!("a receipt holds its report until consumed"))
    }

    /// The ack was carried out: nothing is left to own.
    pub fn settle(mut self) {
        self.report = None;
    }

    /// Takes the report out; the caller owns it from now on.
    pub fn into_report(mut self) -> Report {
        self.report
            .take()
            .unwrap_or_else(|| unreachable!("a receipt holds its report until consumed"))
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        let Some(report) = self.report.take() else {
            return;
        };
        if matches!(report.ack, Ack::None) {
            return;
        }
        match &self.handback {
            Some(handback) => {
                if handback.send(report).is_err() {
                    // The router is gone (shutdown): Redis still holds the record or
                    // the job pending, and they come back after a restart.
                    tracing::debug!("report dropped during shutdown; redis keeps it pending");
                }
            }
            None => tracing::debug!(
                "report dropped without a hand-back channel; redis keeps it pending"
            ),
        }
    }
}
