#![allow(clippy::unwrap_used, missing_docs)]
//! Schedules end to end on a real engine: real Redis, a real sled directory,
//! engines dropped and reopened on it. Each tick must fire once: the runs, the
//! flows the engine holds and the ticks' seconds are compared.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{builder, eventually, temp_dir};
use dagflow_actors::schedule::{RunOutcome, ScheduleError};
use dagflow_actors::{handler_fn, testing, Engine, FlowStatus, JobError, ListQuery, ScheduleRun};
use dagflow_actors::{ScheduleSpec, ScheduleView};
use serde_json::{json, Value};

/// An engine on `dir` whose `slow` handler takes `data.ms` milliseconds.
async fn engine(prefix: &str, dir: &Path) -> Engine {
    builder(prefix)
        .data_dir(dir)
        .queue("default", 16)
        .schedule_grace(Duration::from_millis(400))
        .handler(
            "slow",
            handler_fn(|ctx| async move {
                let ms = ctx.data.get("ms").and_then(Value::as_u64).unwrap_or(0);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    () = ctx.cancel.cancelled() => return Err(JobError::fatal("cancelled")),
                }
                Ok::<_, JobError>(json!({}))
            }),
        )
        .build()
        .await
        .unwrap()
}

fn schedule(name: &str, cron: &str, extra: Value) -> ScheduleSpec {
    let mut v = json!({
        "name": name,
        "cron": cron,
        "flow": {"nodes": [{"name": "work", "handler": "slow", "data": {"ms": 0}}]},
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

async fn runs(engine: &Engine, name: &str) -> Vec<ScheduleRun> {
    let mut runs = engine.schedule_runs(name, 100).await.unwrap();
    runs.reverse(); // oldest first
    runs
}

async fn flow_ids(engine: &Engine) -> BTreeSet<String> {
    let page = engine
        .list(&ListQuery {
            limit: Some(1000),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    page.flows.iter().map(|f| f.id.to_string()).collect()
}

/// Every started run has its own flow, every flow of the engine belongs to one run,
/// and no tick appears twice: nothing fired twice.
async fn fired_once(engine: &Engine, names: &[&str]) -> Vec<Vec<ScheduleRun>> {
    let mut all = Vec::new();
    let mut run_flows = Vec::new();
    for name in names {
        let runs = runs(engine, name).await;
        let ticks: BTreeSet<u64> = runs.iter().map(|r| r.tick_at).collect();
        assert_eq!(ticks.len(), runs.len(), "{name}: a tick recorded twice");
        for r in &runs {
            assert_eq!(r.tick_at % 1000, 0, "ticks are whole seconds");
            run_flows.extend(r.flow_id.clone());
        }
        all.push(runs);
    }
    let distinct: BTreeSet<String> = run_flows.iter().cloned().collect();
    assert_eq!(distinct.len(), run_flows.len(), "two runs share a flow");
    assert_eq!(
        flow_ids(engine).await,
        distinct,
        "flows without a run, or runs without a flow"
    );
    all
}

fn contiguous(runs: &[ScheduleRun]) -> bool {
    runs.windows(2).all(|w| w[1].tick_at - w[0].tick_at == 1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_every_second_schedule_fires_flows_that_complete() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let engine = engine(&prefix, dir.path()).await;
    let view = engine
        .create_schedule(schedule("every-second", "* * * * * *", json!({})))
        .await
        .unwrap();
    let next = view.next_fire_at.unwrap();
    assert!(next % 1000 == 0 && next > view.created_at && next <= view.created_at + 1000);
    eventually("three completed runs", || async {
        let runs = runs(&engine, "every-second").await;
        runs.iter()
            .filter(|r| r.flow_status == Some(FlowStatus::Completed))
            .count()
            >= 3
    })
    .await;
    let runs = &fired_once(&engine, &["every-second"]).await[0];
    assert!(contiguous(runs), "a tick was lost: {runs:?}");
    for r in runs {
        assert_eq!(r.outcome, RunOutcome::Started);
        assert!(r.tick_at > view.created_at);
        // Fired at the tick, not polled for.
        assert!(
            r.fired_at >= r.tick_at && r.fired_at - r.tick_at < 500,
            "{r:?}"
        );
    }
    let listed = engine.list_schedules().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].last_tick_at,
        runs.last().map(|r| r.tick_at).max(listed[0].last_tick_at)
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_schedules_are_refused_with_every_problem() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let engine = engine(&prefix, dir.path()).await;
    let bad = schedule("bad name", "* * *", json!({"timezone": "Atlantis/Nowhere"}));
    match engine.create_schedule(bad).await {
        Err(ScheduleError::Invalid { problems }) => {
            let codes: Vec<_> = problems.iter().map(|p| p.code).collect();
            assert_eq!(codes, ["bad_name", "bad_cron", "unknown_timezone"]);
        }
        other => panic!("{other:?}"),
    }
    let ok = schedule("twice", "0 0 * * *", json!({"paused": true}));
    engine.create_schedule(ok.clone()).await.unwrap();
    assert!(matches!(
        engine.create_schedule(ok).await,
        Err(ScheduleError::Exists(name)) if name == "twice"
    ));
    assert!(matches!(
        engine.schedule("ghost"),
        Err(ScheduleError::NotFound(_))
    ));
    assert!(matches!(
        engine.pause_schedule("ghost").await,
        Err(ScheduleError::NotFound(_))
    ));
    assert!(matches!(
        engine.delete_schedule("ghost").await,
        Err(ScheduleError::NotFound(_))
    ));
    // A paused schedule has no next fire time; nothing was stored for the refused one.
    let listed = engine.list_schedules().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].next_fire_at, None);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_stops_firing_and_resume_starts_again_without_catching_up() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let engine = engine(&prefix, dir.path()).await;
    engine
        .create_schedule(schedule("p", "* * * * * *", json!({"catchUp": "all"})))
        .await
        .unwrap();
    eventually("two runs", || async { runs(&engine, "p").await.len() >= 2 }).await;
    let paused = engine.pause_schedule("p").await.unwrap();
    assert!(paused.paused && paused.next_fire_at.is_none());
    let before = runs(&engine, "p").await.len();
    let paused_at = dagflow_actors::clock::now_ms();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(runs(&engine, "p").await.len(), before, "fired while paused");
    let resumed = engine.resume_schedule("p").await.unwrap();
    let resumed_at = dagflow_actors::clock::now_ms();
    assert!(!resumed.paused && resumed.next_fire_at.is_some());
    eventually("runs after resume", || async {
        runs(&engine, "p").await.len() >= before + 2
    })
    .await;
    let all = &fired_once(&engine, &["p"]).await[0];
    // Even with catchUp "all", the ticks it was paused through are not fired.
    assert!(
        all.iter()
            .all(|r| r.tick_at <= paused_at || r.tick_at > resumed_at),
        "a tick from the pause fired: {all:?}"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_stops_the_schedule_and_keeps_its_flows() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let engine = engine(&prefix, dir.path()).await;
    engine
        .create_schedule(schedule("d", "* * * * * *", json!({})))
        .await
        .unwrap();
    eventually("a run", || async { !runs(&engine, "d").await.is_empty() }).await;
    engine.delete_schedule("d").await.unwrap();
    let flows = flow_ids(&engine).await;
    assert!(!flows.is_empty());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(flow_ids(&engine).await, flows, "a deleted schedule fired");
    assert!(matches!(
        engine.schedule("d"),
        Err(ScheduleError::NotFound(_))
    ));
    assert!(matches!(
        engine.schedule_runs("d", 10).await,
        Err(ScheduleError::NotFound(_))
    ));
    // The name is free again, and the new schedule starts from scratch.
    let again = engine
        .create_schedule(schedule("d", "0 0 1 1 *", json!({})))
        .await
        .unwrap();
    assert_eq!(again.last_tick_at, None);
    assert!(runs(&engine, "d").await.is_empty());
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlap_skip_allow_and_cancel_previous() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let engine = engine(&prefix, dir.path()).await;
    // Each flow runs 2.5 s; a tick comes every second.
    let long = json!({"nodes": [{"name": "work", "handler": "slow", "data": {"ms": 2500}}]});
    for (name, overlap) in [
        ("skip", "skip"),
        ("allow", "allow"),
        ("cancel", "cancelPrevious"),
    ] {
        engine
            .create_schedule(schedule(
                name,
                "* * * * * *",
                json!({"overlap": overlap, "flow": long}),
            ))
            .await
            .unwrap();
    }
    eventually("six ticks of each", || async {
        let mut ok = true;
        for name in ["skip", "allow", "cancel"] {
            ok &= runs(&engine, name).await.len() >= 6;
        }
        ok
    })
    .await;
    for name in ["skip", "allow", "cancel"] {
        engine.pause_schedule(name).await.unwrap();
    }
    let all = fired_once(&engine, &["skip", "allow", "cancel"]).await;
    let (skip, allow, cancel) = (&all[0], &all[1], &all[2]);
    for runs in [skip, allow, cancel] {
        assert!(contiguous(runs), "a tick was lost: {runs:?}");
    }
    // skip: a tick while the last started flow runs starts nothing.
    assert!(
        skip.iter().any(|r| r.outcome == RunOutcome::SkippedOverlap),
        "{skip:?}"
    );
    let mut running_until = 0;
    for r in skip {
        match r.outcome {
            RunOutcome::Started => {
                assert!(
                    r.tick_at >= running_until,
                    "started while the previous ran: {skip:?}"
                );
                running_until = r.tick_at + 2500;
            }
            RunOutcome::SkippedOverlap => {
                assert!(r.flow_id.is_none() && r.previous_flow_id.is_some());
            }
            other => panic!("{other:?}"),
        }
    }
    // allow: every tick starts a flow, and they overlap.
    assert!(allow
        .iter()
        .all(|r| r.outcome == RunOutcome::Started && r.flow_id.is_some()));
    // cancelPrevious: from the second tick on, each one cancels the one before.
    assert_eq!(cancel[0].outcome, RunOutcome::Started);
    for pair in cancel.windows(2) {
        assert_eq!(pair[1].outcome, RunOutcome::CancelledPrevious, "{cancel:?}");
        assert_eq!(pair[1].previous_flow_id, pair[0].flow_id);
        let previous = pair[0].flow_id.as_deref().unwrap().parse().unwrap();
        let view = engine.get(previous).await.unwrap();
        assert_eq!(view.status, FlowStatus::Cancelled);
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

/// The ticks an engine fired after it was restarted at `restarted_at`, given
/// what it had fired before.
fn after_restart(runs: &[ScheduleRun], restarted_at: u64) -> Vec<&ScheduleRun> {
    runs.iter().filter(|r| r.fired_at >= restarted_at).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarts_follow_catch_up_and_never_fire_a_tick_twice() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let names = ["none", "latest", "all"];
    let mut engine = engine(&prefix, dir.path()).await;
    for name in names {
        engine
            .create_schedule(schedule(name, "* * * * * *", json!({"catchUp": name})))
            .await
            .unwrap();
    }
    for round in 0..2 {
        eventually("two more runs of each", || async {
            let mut ok = true;
            for name in names {
                ok &= after_restart(&runs(&engine, name).await, 0).len() >= 2 * (round + 1);
            }
            ok
        })
        .await;
        engine.shutdown(Duration::from_secs(5)).await;
        drop(engine);
        let stopped_at = dagflow_actors::clock::now_ms();
        // Down for 3.5 s: three or four ticks fall due unseen.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let restarted_at = dagflow_actors::clock::now_ms();
        engine = self::engine(&prefix, dir.path()).await;
        eventually("runs after the restart", || async {
            let mut ok = true;
            for name in names {
                ok &= after_restart(&runs(&engine, name).await, restarted_at).len() >= 2;
            }
            ok
        })
        .await;
        let all = fired_once(&engine, &names).await;
        let (none, latest, every) = (&all[0], &all[1], &all[2]);
        // Ticks that fell while it was down (more than the grace before the restart).
        let missed = |r: &&ScheduleRun| r.tick_at > stopped_at && r.tick_at + 400 < restarted_at;
        // none: none of them.
        assert!(
            none.iter().filter(missed).count() == 0,
            "round {round}: none fired a missed tick: {none:?}"
        );
        assert!(!contiguous(none));
        // latest: exactly the last of them, fired after the restart.
        let caught: Vec<_> = latest.iter().filter(missed).collect();
        assert_eq!(caught.len(), 1, "round {round}: latest: {latest:?}");
        assert!(caught[0].fired_at >= restarted_at);
        assert!(
            caught[0].tick_at + 1000 + 400 >= restarted_at,
            "not the latest: {caught:?}"
        );
        // all: every one of them, nothing lost, nothing twice.
        assert!(
            every.iter().filter(missed).count() >= 3,
            "round {round}: all: {every:?}"
        );
        assert!(
            contiguous(every),
            "round {round}: all lost a tick: {every:?}"
        );
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A crash after the flow was created but before the tick was recorded: the tick
/// stays pending, every retry (and the restarted engine) comes back to the same
/// key, which names the same flow, and the tick is recorded once with it.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_create_and_record_refires_the_same_key() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let scenario = fail::FailScenario::setup();
    fail::cfg("schedule::before_record", "return").unwrap();
    let engine1 = engine(&prefix, dir.path()).await;
    // One tick, three seconds from now (and then not for a year).
    let at = dagflow_actors::clock::now_ms() / 1000 + 3;
    let (s, m, h) = (at % 60, at / 60 % 60, at / 3600 % 24);
    let (day, month) = civil_day_month(at / 86_400);
    let cron = format!("{s} {m} {h} {day} {month} *");
    engine1
        .create_schedule(schedule("crash-me", &cron, json!({})))
        .await
        .unwrap();
    eventually("the tick's flow", || async {
        !flow_ids(&engine1).await.is_empty()
    })
    .await;
    // The scheduler retries the pending tick every second; each retry finds the
    // same flow and "crashes" again before recording it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let flows = flow_ids(&engine1).await;
    assert_eq!(flows.len(), 1, "a retry created another flow: {flows:?}");
    assert!(runs(&engine1, "crash-me").await.is_empty());
    assert_eq!(engine1.schedule("crash-me").unwrap().last_tick_at, None);
    engine1.shutdown(Duration::from_secs(5)).await;
    drop(engine1);
    fail::remove("schedule::before_record");
    let engine2 = engine(&prefix, dir.path()).await;
    eventually("the pending tick recorded", || async {
        !runs(&engine2, "crash-me").await.is_empty()
    })
    .await;
    let recorded = runs(&engine2, "crash-me").await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].outcome, RunOutcome::Started);
    assert_eq!(
        recorded[0].flow_id.as_ref(),
        flows.iter().next(),
        "the pending tick got a new flow"
    );
    let view: ScheduleView = engine2.schedule("crash-me").unwrap();
    assert_eq!(view.last_tick_at, Some(recorded[0].tick_at));
    fired_once(&engine2, &["crash-me"]).await;
    engine2.shutdown(Duration::from_secs(5)).await;
    scenario.teardown();
}

/// Day of month and month of a day count since 1970-01-01 (UTC), by Howard
/// Hinnant's `civil_from_days`.
#[cfg(feature = "failpoints")]
fn civil_day_month(days: u64) -> (u64, u64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (day as u64, month as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_number_of_schedules_is_bounded() {
    use dagflow_actors::schedule::MAX_SCHEDULES;
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let engine = engine(&prefix, dir.path()).await;
    for i in 0..MAX_SCHEDULES {
        let spec = schedule(&format!("s{i}"), "0 0 1 1 *", json!({"paused": true}));
        engine.create_schedule(spec).await.unwrap();
    }
    let one_more = schedule("one-more", "0 0 1 1 *", json!({}));
    assert!(matches!(
        engine.create_schedule(one_more.clone()).await,
        Err(ScheduleError::Full(n)) if n == MAX_SCHEDULES
    ));
    assert_eq!(engine.list_schedules().unwrap().len(), MAX_SCHEDULES);
    engine.delete_schedule("s0").await.unwrap();
    engine.create_schedule(one_more).await.unwrap();
    engine.shutdown(Duration::from_secs(5)).await;
}
