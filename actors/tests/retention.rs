//! Retention through the engine: real Redis, real sled directory, the real sweeper.
//! Finished flows go once their retention passed, with everything they hold; the
//! rest stay.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dagflow_actors::retention::{Keep, Retention};
use dagflow_actors::store::Store;
use dagflow_actors::testing;
use dagflow_actors::{handler_fn, Engine, EngineError, FlowId, FlowStatus, JobError};
use serde_json::json;

fn policy(completed: Keep, failed: Keep) -> Retention {
    Retention {
        completed,
        failed,
        sweep_rate: 1_000,
    }
}

fn secs(n: u64) -> Keep {
    Keep::For(Duration::from_secs(n))
}

/// One `ok` node, or one node whose handler fails for good, with `opts`.
fn flow(handler: &str, opts: serde_json::Value) -> dagflow_actors::FlowSpec {
    spec(json!({"name": "kept", "nodes": [{"name": "a", "handler": handler}], "opts": opts}))
}

async fn engine_with(prefix: &str, dir: &std::path::Path, retention: Retention) -> Engine {
    builder(prefix)
        .data_dir(dir)
        .queue("default", 4)
        .handler("ok", handler_fn(|_| async { Ok(json!({"ok": true})) }))
        .handler(
            "boom",
            handler_fn(|_| async { Err::<serde_json::Value, _>(JobError::fatal("boom")) }),
        )
        .retention(retention)
        .build()
        .await
        .unwrap()
}

async fn gone(engine: &Engine, id: FlowId) -> bool {
    matches!(engine.get(id).await, Err(EngineError::NotFound(_)))
}

async fn ended(engine: &Engine, id: FlowId) -> FlowStatus {
    engine.wait(id, WAIT).await.unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_flows_go_after_their_retention_and_failed_ones_stay() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let engine = engine_with(&prefix, dir.path(), policy(secs(1), Keep::Forever)).await;
    let mut done = Vec::new();
    for _ in 0..5 {
        done.push(engine.create(&flow("ok", json!({})), None).await.unwrap());
    }
    let failed = engine.create(&flow("boom", json!({})), None).await.unwrap();
    let deleted_by_hand = engine.create(&flow("ok", json!({})), None).await.unwrap();
    for id in &done {
        assert_eq!(ended(&engine, *id).await, FlowStatus::Completed);
    }
    assert_eq!(ended(&engine, failed).await, FlowStatus::Failed);
    assert_eq!(ended(&engine, deleted_by_hand).await, FlowStatus::Completed);
    engine.delete(deleted_by_hand).await.unwrap();
    // Still there right after ending: kept for a second.
    assert!(!gone(&engine, done[0]).await);

    for id in &done {
        eventually("completed flows to be swept", || async {
            gone(&engine, *id).await
        })
        .await;
    }
    let swept = || engine.stats().unwrap().flows_swept.load(Ordering::Relaxed);
    // Counted as each delete's answer comes back, a moment after the flow went.
    eventually("the sweeps to be counted", || async { swept() >= 5 }).await;
    // Another sweep or two: the failed flow is kept for ever.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(engine.get(failed).await.unwrap().status, FlowStatus::Failed);
    assert_eq!(
        swept(),
        5,
        "the five completed flows, not the one deleted by hand"
    );
    only_global_keys_left(&prefix).await;
    engine.shutdown(Duration::from_secs(5)).await;
    drop(engine);

    // On disk: the failed flow's records and its entry, nothing of the others (the
    // hand-deleted flow's entry went when its time came, as stale).
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(store.load(failed).unwrap().is_some());
    let failed_records = 2 + store.node_record_count(failed);
    assert_eq!(
        store.record_count(),
        failed_records,
        "only the failed flow is left"
    );
    assert_eq!(
        store.expiry_count(),
        1,
        "only the failed flow's entry is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flows_own_retention_overrides_the_flags() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    // The flags delete every ended flow at the next sweep.
    let zero = Keep::For(Duration::ZERO);
    let engine = engine_with(&prefix, dir.path(), policy(zero, zero)).await;
    let plain = engine.create(&flow("ok", json!({})), None).await.unwrap();
    let kept = engine
        .create(&flow("boom", json!({"retention": "forever"})), None)
        .await
        .unwrap();
    let later = engine
        .create(&flow("ok", json!({"retention": "1h"})), None)
        .await
        .unwrap();
    let soon = engine
        .create(&flow("ok", json!({"retention": "1s"})), None)
        .await
        .unwrap();
    for id in [plain, kept, later, soon] {
        ended(&engine, id).await;
    }
    eventually("the plain flow to be swept", || async {
        gone(&engine, plain).await
    })
    .await;
    eventually("the flow kept 1s to be swept", || async {
        gone(&engine, soon).await
    })
    .await;
    assert_eq!(engine.get(kept).await.unwrap().status, FlowStatus::Failed);
    assert_eq!(
        engine.get(later).await.unwrap().status,
        FlowStatus::Completed
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_retention_is_refused_with_its_problem() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let engine = engine_with(&prefix, dir.path(), Retention::default()).await;
    let err = engine
        .create(&flow("ok", json!({"retention": "a while"})), None)
        .await
        .unwrap_err();
    match err {
        EngineError::Spec(e) => {
            assert_eq!(e.problems.len(), 1);
            assert_eq!(e.problems[0].code, "bad_retention");
            assert!(e.problems[0].message.contains("a while"), "{e:?}");
        }
        other => panic!("expected a spec error, got {other:?}"),
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flow_retried_before_its_expiry_is_not_swept_while_it_runs_again() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let fail = Arc::new(AtomicBool::new(true));
    let release = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (fail, release) = (Arc::clone(&fail), Arc::clone(&release));
        handler_fn(move |_| {
            let (fail, release) = (Arc::clone(&fail), Arc::clone(&release));
            async move {
                if fail.load(Ordering::SeqCst) {
                    return Err(JobError::fatal("first run fails"));
                }
                release.notified().await;
                Ok(json!({"second": true}))
            }
        })
    };
    let engine = builder(&prefix)
        .data_dir(dir.path())
        .queue("default", 2)
        .handler("flaky", handler)
        // The running flow hibernates: its actor goes, so the sweeper's check of
        // the durable record is what keeps it, not a live actor.
        .hibernate_after(Some(Duration::from_millis(100)))
        .retention(policy(Keep::Forever, secs(2)))
        .build()
        .await
        .unwrap();
    let id = engine
        .create(&flow("flaky", json!({})), None)
        .await
        .unwrap();
    assert_eq!(ended(&engine, id).await, FlowStatus::Failed);
    let failed_at = engine.get(id).await.unwrap().finished_at.unwrap();
    assert_eq!(engine.retention_entries(), 1);
    fail.store(false, Ordering::SeqCst);
    engine.retry(id).await.unwrap();
    // The retry took the failed run's entry away in the write that revived it...
    assert_eq!(engine.retention_entries(), 0);
    // ...and should one be left anyway (a stale entry), the sweeper's check of the
    // durable record is what keeps the running flow.
    engine
        .inject_retention_entry(id, FlowStatus::Failed, failed_at)
        .unwrap();
    // Past the failed run's expiry, with sweeps in between: it runs, so it stays.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(engine.get(id).await.unwrap().status, FlowStatus::Running);
    release.notify_one();
    assert_eq!(ended(&engine, id).await, FlowStatus::Completed);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(engine.get(id).await.unwrap().status, FlowStatus::Completed);
    assert_eq!(
        engine.stats().unwrap().flows_swept.load(Ordering::Relaxed),
        0
    );
    engine.shutdown(Duration::from_secs(5)).await;
    drop(engine);
    // The failed run's entry was found stale and dropped; the completed run's stays.
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(store.expiry_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_survives_a_restart_and_applies_the_new_flags_to_kept_flows() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let engine = engine_with(&prefix, dir.path(), policy(Keep::Forever, Keep::Forever)).await;
    let id = engine.create(&flow("ok", json!({})), None).await.unwrap();
    ended(&engine, id).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        !gone(&engine, id).await,
        "kept for ever under the first flags"
    );
    engine.shutdown(Duration::from_secs(5)).await;
    drop(engine);
    // An operator lowers the retention to reclaim disk: the flows already kept go.
    let engine = engine_with(&prefix, dir.path(), policy(secs(1), Keep::Forever)).await;
    eventually("the kept flow to be swept after the restart", || async {
        gone(&engine, id).await
    })
    .await;
    engine.shutdown(Duration::from_secs(5)).await;
}
