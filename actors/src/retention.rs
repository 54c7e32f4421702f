//! Retention: how long finished flows are kept, and the sweeper that deletes them.
//!
//! A server that runs for months must not keep every finished flow for ever. Each
//! flow that ends gets an entry in the store's `expiry` index, written in the same
//! transaction as the flow's terminal record (so no crash leaves an ended flow
//! without one). The sweeper walks the index in time order and deletes what is due
//! through the supervisor's delete path, at a bounded rate.
//!
//! The index holds *when a flow finished*, not when it expires, for the flows that
//! follow the engine's flags: an operator who lowers `--retain-completed` to reclaim
//! disk expects it to apply to the flows already kept. Only a flow with its own
//! `opts.retention` has its expiry time in the index.

use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tracing::{debug, warn};

use crate::actors::supervisor::SupervisorMsg;
use crate::actors::{now_ms, Shared};
use crate::ids::FlowId;
use crate::state::FlowStatus;

/// How long a finished flow is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Deleted this long after it finished (`0` deletes it at the next sweep).
    For(Duration),
    /// Never deleted by the sweeper.
    Forever,
}

impl Keep {
    /// The time before which a flow must have finished to be due now.
    fn cutoff(self, now: u64) -> Option<u64> {
        match self {
            Keep::For(d) => Some(now.saturating_sub(d.as_millis() as u64)),
            Keep::Forever => None,
        }
    }
}

impl FromStr for Keep {
    type Err = String;

    /// `forever`, a plain number of seconds, or a duration such as `90s`, `12h`,
    /// `7d`, `1h 30m` (humantime's syntax).
    fn from_str(s: &str) -> Result<Keep, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("forever") {
            return Ok(Keep::Forever);
        }
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(Keep::For(Duration::from_secs(secs)));
        }
        humantime::parse_duration(s)
            .map(Keep::For)
            .map_err(|e| format!("'{s}' is not a retention (e.g. 90s, 12h, 7d or forever): {e}"))
    }
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keep::Forever => f.write_str("forever"),
            Keep::For(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// Default time a completed flow is kept: a week, long enough to look into last
/// week's runs, short enough that a busy server's disk stays bounded.
pub const DEFAULT_RETAIN_COMPLETED: &str = "7d";
/// Default time a failed or cancelled flow is kept: a month, because these are the
/// ones somebody comes back to.
pub const DEFAULT_RETAIN_FAILED: &str = "30d";
/// Default most flows the sweeper deletes per second; above a busy server's rate of
/// ending flows, far below what would slow the engine.
pub const DEFAULT_SWEEP_RATE: u32 = 2_000;

/// The engine's retention policy; a flow's `opts.retention` overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long completed flows are kept.
    pub completed: Keep,
    /// How long failed and cancelled flows are kept.
    pub failed: Keep,
    /// Most flows deleted per second.
    pub sweep_rate: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            completed: Keep::For(Duration::from_secs(7 * 24 * 3600)),
            failed: Keep::For(Duration::from_secs(30 * 24 * 3600)),
            sweep_rate: DEFAULT_SWEEP_RATE,
        }
    }
}

/// The index's classes: which cutoff an entry is compared with.
const CLASS_COMPLETED: u8 = 0;
const CLASS_FAILED: u8 = 1;
/// Flows with their own `opts.retention`: the entry's time is the expiry itself.
const CLASS_OWN: u8 = 2;

/// An entry of the `expiry` index: class, a time (big-endian, so the tree is in time
/// order within a class) and the flow id.
pub type ExpiryKey = [u8; 25];

fn key(class: u8, at: u64, id: FlowId) -> ExpiryKey {
    let mut key = [0u8; 25];
    key[0] = class;
    key[1..9].copy_from_slice(&at.to_be_bytes());
    key[9..].copy_from_slice(id.as_bytes());
    key
}

/// The index entry of a flow that finished with `status` at `finished_at`, with its
/// own retention if its spec sets one; `None` when it is kept for ever by its own
/// setting.
pub fn expiry_entry(
    id: FlowId,
    status: FlowStatus,
    finished_at: u64,
    own: Option<Keep>,
) -> Option<ExpiryKey> {
    match own {
        Some(Keep::Forever) => None,
        Some(Keep::For(d)) => Some(key(
            CLASS_OWN,
            finished_at.saturating_add(d.as_millis() as u64),
            id,
        )),
        None if status == FlowStatus::Completed => Some(key(CLASS_COMPLETED, finished_at, id)),
        None => Some(key(CLASS_FAILED, finished_at, id)),
    }
}

/// The entry a stored flow has now, if it ended: from its record and its spec's
/// `opts.retention` (a delete and a retry remove it, so that nothing is left).
pub(crate) fn entry_of_stored(
    id: FlowId,
    record: &crate::records::FlowRecord,
    spec_json: &[u8],
) -> Option<ExpiryKey> {
    /// Only the one field, so that this reads any spec cheaply.
    #[derive(serde::Deserialize, Default)]
    struct Opts {
        #[serde(default)]
        retention: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        opts: Opts,
    }
    let status = record.flow_status().ok().filter(|s| s.is_terminal())?;
    let finished_at = record.finished_at?;
    let own = serde_json::from_slice::<Spec>(spec_json)
        .ok()
        .and_then(|s| s.opts.retention)
        .and_then(|r| r.parse::<Keep>().ok());
    expiry_entry(id, status, finished_at, own)
}

/// The flow an index entry names.
pub(crate) fn entry_flow(key: &[u8]) -> Option<FlowId> {
    let bytes: [u8; 16] = key.get(9..25)?.try_into().ok()?;
    Some(FlowId::from_bytes(bytes))
}

/// The ranges of index keys due at `now` under `policy`, one per class.
pub(crate) fn due_ranges(policy: &Retention, now: u64) -> Vec<(ExpiryKey, ExpiryKey)> {
    let mut out = Vec::with_capacity(3);
    for (class, cutoff) in [
        (CLASS_COMPLETED, policy.completed.cutoff(now)),
        (CLASS_FAILED, policy.failed.cutoff(now)),
        (CLASS_OWN, Some(now)),
    ] {
        if let Some(cutoff) = cutoff {
            // Inclusive of `cutoff`: every id after the time.
            let start = key(class, 0, FlowId::from_bytes([0; 16]));
            let end = key(class, cutoff, FlowId::from_bytes([0xff; 16]));
            out.push((start, end));
        }
    }
    out
}

/// How often the sweeper looks; its budget is `sweep_rate` flows per look.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Flows the supervisor is asked to delete together: their Redis cleanups are
/// pipelined and their records leave in one write, so a sweep costs a few group
/// commits a second, not one per flow.
const SWEEP_BATCH: usize = 256;

/// Deletes due flows, at most `policy.sweep_rate` a second, for the life of the engine.
pub(crate) async fn sweep_loop(
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    policy: Retention,
) {
    // A scan of every flow record on a store written before retention existed:
    // off the runtime's threads, so that it never stalls the engine at start.
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || store.build_expiry_index()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(error = %e, "indexing the finished flows for retention failed; older flows will not expire");
        }
        Err(e) => warn!(error = %e, "indexing the finished flows for retention panicked"),
    }
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let budget = policy.sweep_rate as usize;
        if budget == 0 {
            continue;
        }
        let due = match shared
            .store
            .due_expiries(&due_ranges(&policy, now_ms()), budget)
        {
            Ok(due) => due,
            Err(e) => {
                warn!(error = %e, "reading the retention index failed");
                continue;
            }
        };
        // One batch after the other: each is a few milliseconds (one write, one
        // flush shared with the engine's group commit), so the budget is done in a
        // fraction of the second and the engine's own writes never queue behind it.
        for batch in due.chunks(SWEEP_BATCH) {
            sweep_batch(&shared, &supervisor, batch).await;
        }
    }
}

/// Deletes the flows of due entries that are still the flows that ended then, and
/// drops the entries that have nothing left to do.
async fn sweep_batch(
    shared: &Shared,
    supervisor: &ActorRef<SupervisorMsg>,
    batch: &[(ExpiryKey, u64)],
) {
    let mut keys = Vec::with_capacity(batch.len());
    let mut due = Vec::with_capacity(batch.len());
    for (key, finished_at) in batch {
        match entry_flow(key) {
            Some(id) => {
                keys.push(*key);
                due.push((id, *finished_at));
            }
            None => {
                let _ = shared.store.remove_expiry(key);
            }
        }
    }
    if due.is_empty() {
        return;
    }
    let outcomes = match ractor::call_t!(supervisor, SupervisorMsg::Expire, 30_000, due) {
        Ok(outcomes) => outcomes,
        Err(e) => {
            debug!(error = %e, "the supervisor did not answer a sweep");
            return;
        }
    };
    for (key, outcome) in keys.iter().zip(outcomes) {
        match outcome {
            Expired::Deleted => {
                let _ = shared.store.remove_expiry(key);
                shared.stats.flows_swept.fetch_add(1, Ordering::Relaxed);
            }
            // Gone already, running again after a retry, or ended again later (with
            // its own entry): this entry has nothing left to do.
            Expired::Stale => {
                let _ = shared.store.remove_expiry(key);
            }
            Expired::Busy => {}
            Expired::Failed(e) => {
                debug!(error = %e, "deleting an expired flow failed; retrying at the next sweep");
            }
        }
    }
}

/// What the supervisor did with an expired flow.
#[derive(Debug)]
pub enum Expired {
    /// Deleted, records and keys.
    Deleted,
    /// The entry no longer describes the flow: drop it.
    Stale,
    /// The flow has an actor (it just ended, or someone is looking): try later.
    Busy,
    /// The delete failed; the entry stays for the next sweep.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_parse_like_the_other_durations() {
        let k = |s: &str| s.parse::<Keep>();
        assert_eq!(k("90s"), Ok(Keep::For(Duration::from_secs(90))));
        assert_eq!(k("7d"), Ok(Keep::For(Duration::from_secs(7 * 86_400))));
        assert_eq!(k("12h"), Ok(Keep::For(Duration::from_secs(12 * 3_600))));
        assert_eq!(k("1m"), Ok(Keep::For(Duration::from_secs(60))));
        assert_eq!(k("30"), Ok(Keep::For(Duration::from_secs(30))));
        assert_eq!(k("0"), Ok(Keep::For(Duration::ZERO)));
        assert_eq!(k("forever"), Ok(Keep::Forever));
        assert_eq!(k(" Forever "), Ok(Keep::Forever));
        assert!(k("soon").is_err());
        assert!(k("-1s").is_err());
        assert!(k("").is_err());
        assert_eq!(
            DEFAULT_RETAIN_COMPLETED.parse::<Keep>(),
            Ok(Retention::default().completed)
        );
        assert_eq!(
            DEFAULT_RETAIN_FAILED.parse::<Keep>(),
            Ok(Retention::default().failed)
        );
    }

    #[test]
    fn entries_sort_by_time_within_their_class_and_fall_in_the_due_ranges() {
        let id = FlowId::from_bytes([7; 16]);
        let policy = Retention {
            completed: Keep::For(Duration::from_secs(60)),
            failed: Keep::Forever,
            sweep_rate: 1,
        };
        let now = 1_000_000;
        let ranges = due_ranges(&policy, now);
        let due = |k: Option<ExpiryKey>| k.map(|k| ranges.iter().any(|(a, b)| a <= &k && &k <= b));
        let done_long_ago = expiry_entry(id, FlowStatus::Completed, now - 60_000, None);
        let done_just_now = expiry_entry(id, FlowStatus::Completed, now - 59_999, None);
        let failed_long_ago = expiry_entry(id, FlowStatus::Failed, 1, None);
        let own_due = expiry_entry(
            id,
            FlowStatus::Failed,
            now - 10,
            Some(Keep::For(Duration::from_millis(10))),
        );
        let own_later = expiry_entry(
            id,
            FlowStatus::Completed,
            now - 10,
            Some(Keep::For(Duration::from_millis(11))),
        );
        assert_eq!(due(done_long_ago), Some(true));
        assert_eq!(due(done_just_now), Some(false));
        assert_eq!(
            due(failed_long_ago),
            Some(false),
            "failed flows are kept for ever"
        );
        assert_eq!(due(own_due), Some(true));
        assert_eq!(due(own_later), Some(false));
        assert_eq!(
            expiry_entry(id, FlowStatus::Completed, now, Some(Keep::Forever)),
            None
        );
        assert_eq!(done_long_ago.and_then(|k| entry_flow(&k)), Some(id));
    }
}
