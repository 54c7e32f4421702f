//! Which flows a listing or a count takes, besides their status: a name search and
//! a creation-time range, checked against the stored flow record alone (no spec,
//! no node read), so that filtering costs one record decode per flow scanned.

use serde::{Deserialize, Serialize};

use crate::records::FlowRecord;
use crate::state::FlowStatus;

/// A search over flow records; the default takes every flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// Lowercase, so that matching ignores case without lowering it per record;
    /// built by [`FlowFilter::name_contains`].
    name: Option<String>,
    /// Only flows created at or after this time (ms since the epoch).
    pub created_after: Option<u64>,
    /// Only flows created before this time (ms since the epoch, exclusive), so that
    /// two adjacent ranges never share a flow.
    pub created_before: Option<u64>,
}

impl FlowFilter {
    /// Takes only flows whose name contains `needle`, ignoring case (an empty
    /// needle takes every flow).
    pub fn name_contains(mut self, needle: &str) -> Self {
        self.name = (!needle.is_empty()).then(|| needle.to_lowercase());
        self
    }

    /// Whether the flow of this record is taken.
    pub fn matches(&self, rec: &FlowRecord) -> bool {
        self.created_after.is_none_or(|t| rec.created_at >= t)
            && self.created_before.is_none_or(|t| rec.created_at < t)
            && self
                .name
                .as_deref()
                .is_none_or(|n| rec.name.to_lowercase().contains(n))
    }
}

/// How many flows are in each status (what [`crate::Engine::count`] answers).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FlowCounts {
    /// Flows still running (hibernating ones included).
    pub running: u64,
    /// Flows whose every node ended well.
    pub completed: u64,
    /// Flows that failed.
    pub failed: u64,
    /// Flows that were cancelled.
    pub cancelled: u64,
}

impl FlowCounts {
    /// Counts one more flow in `status`.
    pub fn add(&mut self, status: FlowStatus) {
        let slot = match status {
            FlowStatus::Running => &mut self.running,
            FlowStatus::Completed => &mut self.completed,
            FlowStatus::Failed => &mut self.failed,
            FlowStatus::Cancelled => &mut self.cancelled,
        };
        *slot += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, created_at: u64) -> FlowRecord {
        FlowRecord {
            name: name.to_owned(),
            status: 0,
            seq: 0,
            created_at,
            updated_at: created_at,
            finished_at: None,
            node_count: 1,
            done_count: 0,
            idempotency_key: None,
            engine_error: None,
        }
    }

    #[test]
    fn name_ignores_case_and_times_are_half_open() {
        let etl = record("Nightly-ETL", 100);
        assert!(FlowFilter::default().matches(&etl));
        assert!(FlowFilter::default().name_contains("etl").matches(&etl));
        assert!(FlowFilter::default().name_contains("").matches(&etl));
        assert!(!FlowFilter::default().name_contains("report").matches(&etl));
        let range = |after, before| FlowFilter {
            created_after: after,
            created_before: before,
            ..FlowFilter::default()
        };
        assert!(range(Some(100), Some(101)).matches(&etl));
        assert!(!range(Some(101), None).matches(&etl));
        assert!(!range(None, Some(100)).matches(&etl));
    }

    #[test]
    fn counts_add_to_their_status() {
        let mut counts = FlowCounts::default();
        counts.add(FlowStatus::Failed);
        counts.add(FlowStatus::Failed);
        counts.add(FlowStatus::Running);
        assert_eq!(
            counts,
            FlowCounts {
                running: 1,
                failed: 2,
                ..FlowCounts::default()
            }
        );
    }
}
