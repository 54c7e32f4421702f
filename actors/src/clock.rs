//! The one clock: milliseconds since the epoch by this machine's wall clock.
//!
//! The pure core never reads it (time is an argument of `FlowState::apply`); the
//! actors, the queue and the benchmark read it here, so that every timestamp the
//! engine writes (records, envelopes, due times, events) comes from one place.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch; 0 if the clock is before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
