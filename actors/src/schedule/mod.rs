//! Schedules: start a flow on a cron timetable, durably, each tick exactly once.
//!
//! A schedule is `{name, cron, timezone, flow, overlap, catchUp, paused}`. Its
//! record lives in sled (JSON text, see [`crate::store::schedules`]) with the last
//! tick it decided and, while a tick is being fired, that tick as `pendingTick`.
//! The [`scheduler`] task, which every full engine runs, sleeps until the earliest
//! next tick and fires each through [`Engine::create`] with the idempotency key
//! `schedule:{name}:{tick_ms}`: a crash after the flow was created but before the
//! tick was recorded fires the same key again on restart, which returns the same
//! flow. Ticks missed while the engine was down follow `catchUp`.
//!
//! - [`cron`]: the timetable (croner + chrono-tz), pure.
//! - [`scheduler`]: the task that fires ticks and the embedding API.

pub mod cron;
pub mod scheduler;

use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::spec::{self, FlowSpec, Limits, Problem};
use crate::state::FlowStatus;
use crate::store::StoreError;

pub use cron::{Timetable, TimetableError};
pub use scheduler::{ScheduleStats, Schedules};

/// Runs kept per schedule; older ones are dropped as new ones are recorded.
pub const MAX_RUNS: usize = 100;
/// Most missed ticks one schedule fires after downtime with `catchUp: "all"`; older
/// missed ticks are dropped (counted as missed). Bounds the burst of flows a long
/// outage of an every-second schedule would otherwise start.
pub const MAX_CATCH_UP: usize = 100;
/// Most schedules an engine keeps: each pass of the scheduler reads every one, and
/// `GET /schedules` lists them all with their flows, so their number is bounded.
pub const MAX_SCHEDULES: usize = 1000;
/// Longest schedule name.
pub const MAX_NAME_LEN: usize = 128;
/// Default of [`crate::EngineBuilder::schedule_grace`]: a tick found due less than
/// this late is on time, not missed (the scheduler wakes at the tick, so this only
/// covers slow passes and short restarts).
pub const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What a tick does while the previous tick's flow is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Overlap {
    /// Do not start a flow for this tick (the run is recorded as `skippedOverlap`).
    #[default]
    Skip,
    /// Start it anyway; runs overlap.
    Allow,
    /// Cancel the running flow, then start the new one.
    CancelPrevious,
}

/// Which ticks that fell due while the engine was down (or the schedule's pass was
/// late by more than the grace) are fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum CatchUp {
    /// None: missed ticks are skipped; the next on-time tick fires.
    None,
    /// Only the most recent missed tick fires.
    #[default]
    Latest,
    /// Every missed tick fires, oldest first, at most [`MAX_CATCH_UP`].
    All,
}

/// A schedule as a client submits it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique; `[A-Za-z0-9][A-Za-z0-9._-]*`, at most [`MAX_NAME_LEN`] bytes, so that
    /// it is safe in a URL path and in the idempotency key.
    pub name: String,
    /// Five fields (minute hour day month weekday), or six with seconds first.
    pub cron: String,
    /// IANA zone the cron expression is read in; default `UTC`.
    #[serde(default = "utc")]
    pub timezone: String,
    /// The flow each tick starts.
    pub flow: FlowSpec,
    /// What a tick does while the previous run is still going; default `skip`.
    #[serde(default)]
    pub overlap: Overlap,
    /// Which missed ticks fire after downtime; default `latest`.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// A paused schedule fires nothing; resuming does not fire the ticks it missed.
    #[serde(default)]
    pub paused: bool,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// A change to a schedule: each field given replaces the schedule's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulePatch {
    /// New cron expression.
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    pub cron: Option<String>,
    /// New zone.
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    pub timezone: Option<String>,
    /// New flow for the ticks from now on.
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    pub flow: Option<FlowSpec>,
    /// New overlap policy.
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    pub overlap: Option<Overlap>,
    /// New catch-up policy.
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    pub catch_up: Option<CatchUp>,
    /// Pause (`true`) or resume (`false`).
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    pub paused: Option<bool>,
}

/// A patch field that is given: `null` is refused like any other wrong type (the
/// schema says so), instead of passing for "not given".
fn given<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// What happened at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunOutcome {
    /// A flow was started (`flowId`).
    Started,
    /// The previous run's flow was still running and `overlap` is `skip`: nothing
    /// was started.
    SkippedOverlap,
    /// The previous run's flow (`previousFlowId`) was cancelled and a new one
    /// started (`flowId`).
    CancelledPrevious,
    /// The flow could not be started (`error` says why); the tick is not retried.
    Failed,
}

/// One tick of a schedule, as recorded (and as `GET /schedules/{name}/runs` shows
/// it, with the flow's status added when read).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRun {
    /// The tick (ms since the epoch) this run is for.
    pub tick_at: u64,
    /// When it was fired (ms since the epoch); later than `tickAt` after downtime.
    pub fired_at: u64,
    /// What happened.
    pub outcome: RunOutcome,
    /// The flow started for this tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    /// The flow cancelled for it (`cancelledPrevious`), or that made it skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_flow_id: Option<String>,
    /// Why the flow could not be started (`failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The flow's status when the runs were read; absent when no flow was started
    /// or the flow was deleted since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_status: Option<FlowStatus>,
}

/// A schedule as the API and the embedding API show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleView {
    /// The schedule's name.
    pub name: String,
    /// Its cron expression.
    pub cron: String,
    /// Its zone.
    pub timezone: String,
    /// The flow each tick starts.
    pub flow: FlowSpec,
    /// Its overlap policy.
    pub overlap: Overlap,
    /// Its catch-up policy.
    pub catch_up: CatchUp,
    /// Whether it is paused.
    pub paused: bool,
    /// When it was created (ms since the epoch).
    pub created_at: u64,
    /// When it was last changed.
    pub updated_at: u64,
    /// When it fires next (ms since the epoch); absent while paused or when the
    /// expression has no further occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire_at: Option<u64>,
    /// The last tick it decided (fired, skipped, or dropped as missed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tick_at: Option<u64>,
    /// The flow of its last started run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_flow_id: Option<String>,
}

/// Why a schedule operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScheduleError {
    /// The schedule is invalid; every problem is listed (codes `bad_name`,
    /// `bad_cron`, `unknown_timezone`, and the flow's own codes).
    #[error("invalid schedule: {}", summary(.problems))]
    Invalid {
        /// Everything wrong with it.
        problems: Vec<Problem>,
    },
    /// No schedule has this name.
    #[error("schedule '{0}' not found")]
    NotFound(String),
    /// A schedule of this name exists already.
    #[error("schedule '{0}' already exists")]
    Exists(String),
    /// The engine holds [`MAX_SCHEDULES`] schedules already.
    #[error("there are already {0} schedules, the most an engine keeps; delete one first")]
    Full(usize),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// A stored record could not be read.
    #[error("schedule record: {0}")]
    Corrupt(String),
    /// The engine cannot do it (shutting down, worker-only).
    #[error(transparent)]
    Engine(#[from] EngineError),
}

fn summary(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<StoreError> for ScheduleError {
    fn from(e: StoreError) -> Self {
        ScheduleError::Store(e.to_string())
    }
}

impl ScheduleError {
    /// Whether the same request may succeed later without change.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ScheduleError::Engine(e) if e.is_retryable())
    }
}

/// Checks everything about a schedule (name, cron, zone, flow) and lists every
/// problem; returns its timetable when it is valid.
pub fn validate(spec: &ScheduleSpec, limits: &Limits) -> Result<Timetable, ScheduleError> {
    let mut problems = Vec::new();
    if let Err(message) = check_name(&spec.name) {
        problems.push(Problem {
            code: "bad_name",
            message,
            node: None,
        });
    }
    let timetable = match Timetable::new(&spec.cron, &spec.timezone) {
        Ok(t) => Some(t),
        Err(TimetableError::Cron(message)) => {
            problems.push(Problem {
                code: "bad_cron",
                message,
                node: None,
            });
            // Still check the zone on its own, so that both problems are listed.
            if let Err(e @ TimetableError::Zone(_)) = Timetable::new("* * * * *", &spec.timezone) {
                problems.push(Problem {
                    code: "unknown_timezone",
                    message: e.to_string(),
                    node: None,
                });
            }
            None
        }
        Err(e @ TimetableError::Zone(_)) => {
            problems.push(Problem {
                code: "unknown_timezone",
                message: e.to_string(),
                node: None,
            });
            None
        }
    };
    if let Err(e) = spec::validate(&spec.flow, limits) {
        for mut p in e.problems {
            p.message = format!("flow: {}", p.message);
            problems.push(p);
        }
    }
    match timetable {
        Some(t) if problems.is_empty() => Ok(t),
        _ => Err(ScheduleError::Invalid { problems }),
    }
}

/// `Ok` when `name` is a valid schedule name, else why not.
fn check_name(name: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() {
        return Err("schedule name is empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "schedule name is {} bytes; at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) || !name.chars().all(valid_char) {
        let shown: String = name.chars().take(64).collect();
        return Err(format!(
            "schedule name '{shown}' must start with a letter or digit and hold only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_patch_refuses_null_fields_and_round_trips() {
        for field in ["cron", "timezone", "flow", "overlap", "catchUp", "paused"] {
            let patch = serde_json::json!({ field: null });
            let e = serde_json::from_value::<SchedulePatch>(patch).unwrap_err();
            assert!(e.to_string().contains("null"), "{field}: {e}");
        }
        assert_eq!(
            serde_json::from_value::<SchedulePatch>(serde_json::json!({})).unwrap(),
            SchedulePatch::default()
        );
        let paused = SchedulePatch {
            paused: Some(true),
            ..SchedulePatch::default()
        };
        let text = serde_json::to_string(&paused).unwrap();
        assert_eq!(text, r#"{"paused":true}"#);
        assert_eq!(
            serde_json::from_str::<SchedulePatch>(&text).unwrap(),
            paused
        );
    }

    fn spec(json: serde_json::Value) -> ScheduleSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn defaults_and_wire_names() {
        let s = spec(serde_json::json!({
            "name": "nightly", "cron": "0 3 * * *", "flow": {"nodes": [{"name": "a"}]}
        }));
        assert_eq!(s.timezone, "UTC");
        assert_eq!(s.overlap, Overlap::Skip);
        assert_eq!(s.catch_up, CatchUp::Latest);
        assert!(!s.paused);
        let s = spec(serde_json::json!({
            "name": "n", "cron": "0 3 * * *", "flow": {"nodes": [{"name": "a"}]},
            "overlap": "cancelPrevious", "catchUp": "all", "timezone": "Europe/Berlin"
        }));
        assert_eq!(s.overlap, Overlap::CancelPrevious);
        assert_eq!(s.catch_up, CatchUp::All);
        assert!(serde_json::from_value::<ScheduleSpec>(serde_json::json!({
            "name": "n", "cron": "* * * * *", "flow": {"nodes": []}, "extra": 1
        }))
        .is_err());
    }

    #[test]
    fn validation_lists_every_problem() {
        let s = spec(serde_json::json!({
            "name": "bad name!", "cron": "* * *", "timezone": "Nowhere/Land",
            "flow": {"nodes": [{"name": "a", "parents": ["ghost"]}]}
        }));
        let ScheduleError::Invalid { problems } = validate(&s, &Limits::default()).unwrap_err()
        else {
            panic!("not invalid")
        };
        let codes: Vec<_> = problems.iter().map(|p| p.code).collect();
        assert_eq!(
            codes,
            ["bad_name", "bad_cron", "unknown_timezone", "unknown_parent"]
        );
        let ok = spec(serde_json::json!({
            "name": "ok.name_1-x", "cron": "*/5 * * * * *",
            "flow": {"nodes": [{"name": "a"}]}
        }));
        assert!(validate(&ok, &Limits::default()).is_ok());
        assert!(check_name(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(check_name("-lead").is_err());
        assert!(check_name("a/b").is_err());
    }
}
