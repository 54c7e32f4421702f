//! The Lua scripts, one per atomic operation, loaded from `lua/*.lua`.
//!
//! The scripts that put jobs on lanes or end them are prefixed with
//! `lua/limits.lua` (concurrency keys and rate limits); `lua/report.lua`, which
//! workers in other languages ship as it is, carries its own copy of the part it
//! needs, kept equal by a test below.
//!
//! `redis::Script` sends `EVALSHA` and loads the script on `NOSCRIPT`, so a Redis that
//! restarted (and forgot its script cache) is handled without any setup step.

use std::sync::LazyLock;

use redis::Script;

/// Adds a flow's jobs idempotently (`lua/enqueue.lua`).
pub(crate) static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/limits.lua"),
        include_str!("lua/enqueue.lua")
    ))
});

/// Hands a consumer the best ready jobs of a queue (`lua/take.lua`).
pub(crate) static TAKE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/take.lua")));

/// Acknowledges jobs finished by local workers (`lua/ack.lua`).
pub(crate) static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/limits.lua"),
        include_str!("lua/ack.lua")
    ))
});

/// Reports a remote worker's outcome (`lua/report.lua`).
pub(crate) static REPORT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/report.lua")));

/// Moves due delayed jobs into their stream (`lua/promote.lua`).
pub(crate) static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/limits.lua"),
        include_str!("lua/promote.lua")
    ))
});

/// Removes everything Redis holds for a flow (`lua/cleanup.lua`).
pub(crate) static CLEANUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/limits.lua"),
        include_str!("lua/cleanup.lua")
    ))
});

/// Releases jobs waiting for rate-limit tokens (`lua/limits.lua` + `lua/rate.lua`).
pub(crate) static RATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/limits.lua"),
        include_str!("lua/rate.lua")
    ))
});

/// Records a worker heartbeat and prunes dead workers (`lua/heartbeat.lua`).
pub(crate) static HEARTBEAT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/heartbeat.lua")));

/// Compares a flow's jobs with what Redis holds for them (`lua/check.lua`).
pub(crate) static CHECK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/check.lua")));

/// Puts back jobs that Redis lost (`lua/repair.lua`).
pub(crate) static REPAIR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/limits.lua"),
        include_str!("lua/repair.lua")
    ))
});

#[cfg(test)]
mod tests {
    /// The part of `limits.lua` between the markers.
    fn block(text: &str) -> Option<&str> {
        let start = text.find("-- BEGIN limits_release")?;
        let end = text.find("-- END limits_release")?;
        Some(&text[start..end])
    }

    #[test]
    fn report_lua_carries_the_same_release_as_limits_lua() {
        let limits = block(include_str!("lua/limits.lua"));
        let report = block(include_str!("lua/report.lua"));
        assert!(limits.is_some());
        assert_eq!(limits, report);
    }
}
