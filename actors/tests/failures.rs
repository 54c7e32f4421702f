//! Retries, permanent failures under both policies, continueOnFailure, cancel and
//! delete, through the real engine.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dagflow_actors::queue::Keys;
use dagflow_actors::testing;
use dagflow_actors::{handler_fn, FlowStatus, JobError, NodeStatus};
use serde_json::json;

/// Fails `times` attempts (retryable), then succeeds; records when each attempt ran.
fn flaky(times: u32, log: Arc<Mutex<Vec<(u32, Instant)>>>) -> impl dagflow_actors::Handler {
    handler_fn(move |ctx| {
        let log = Arc::clone(&log);
        async move {
            log.lock().unwrap().push((ctx.attempt, Instant::now()));
            if ctx.attempt <= times {
                Err(JobError::retryable(format!(
                    "flaky attempt {}",
                    ctx.attempt
                )))
            } else {
                Ok(json!({"attempt": ctx.attempt}))
            }
        }
    })
}

fn always_fails() -> impl dagflow_actors::Handler {
    handler_fn(
        |_ctx| async move { Err::<serde_json::Value, _>(JobError::fatal("broken on purpose")) },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_with_backoff_then_success() {
    let prefix = testing::unique_prefix();
    let log = Arc::new(Mutex::new(Vec::new()));
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler("flaky", flaky(2, Arc::clone(&log)))
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [{"name": "f", "handler": "flaky",
                "opts": {"attempts": 3, "backoff": {"type": "exponential", "delayMs": 200}}}]})),
            None,
        )
        .await
        .unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    let f = view.node("f").unwrap();
    assert_eq!(f.attempt, 3);
    assert_eq!(f.result, Some(json!({"attempt": 3})));
    let log = log.lock().unwrap().clone();
    assert_eq!(log.iter().map(|l| l.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    // Exponential: >= 200 ms before the 2nd try, >= 400 ms before the 3rd.
    assert!(log[1].1 - log[0].1 >= Duration::from_millis(200), "{log:?}");
    assert!(log[2].1 - log[1].1 >= Duration::from_millis(400), "{log:?}");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_under_continue_skips_descendants_only() {
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 4)
        .handler("sum", sum_handler())
        .handler("bad", always_fails())
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "root", "handler": "sum"},
                {"name": "bad", "handler": "bad", "parents": ["root"], "opts": {"attempts": 3}},
                {"name": "after-bad", "handler": "sum", "parents": ["bad"]},
                {"name": "deeper", "handler": "sum", "parents": ["after-bad", "ok"]},
                {"name": "ok", "handler": "sum", "parents": ["root"]},
                {"name": "ok-child", "handler": "sum", "parents": ["ok"]}
            ]})),
            None,
        )
        .await
        .unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Failed);
    let status = |n: &str| view.node(n).unwrap().status;
    assert_eq!(status("bad"), NodeStatus::Failed);
    // A fatal error is not retried, whatever the attempts.
    assert_eq!(view.node("bad").unwrap().attempt, 1);
    assert_eq!(
        view.node("bad").unwrap().error.as_deref(),
        Some("broken on purpose")
    );
    assert_eq!(status("after-bad"), NodeStatus::Skipped);
    assert_eq!(status("deeper"), NodeStatus::Skipped);
    assert_eq!(status("ok"), NodeStatus::Completed);
    assert_eq!(status("ok-child"), NodeStatus::Completed);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_cancels_the_rest_and_stops_running_handlers() {
    let prefix = testing::unique_prefix();
    let fired = Arc::new(AtomicUsize::new(0));
    let fired2 = Arc::clone(&fired);
    let engine = builder(&prefix)
        .queue("default", 4)
        .handler("bad", always_fails())
        .handler(
            "slow",
            handler_fn(move |ctx| {
                let fired = Arc::clone(&fired2);
                async move {
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => { fired.fetch_add(1, Ordering::SeqCst); Err(JobError::fatal("stopped")) }
                        _ = tokio::time::sleep(Duration::from_secs(20)) => Ok(json!("slept")),
                    }
                }
            }),
        )
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"opts": {"onFailure": "failFast"}, "nodes": [
                {"name": "slow", "handler": "slow"},
                {"name": "gate", "handler": "sum"},
                {"name": "bad", "handler": "bad", "parents": ["gate"]},
                {"name": "never", "handler": "sum", "parents": ["slow"]}
            ]})),
            None,
        )
        .await
        .unwrap();
    let start = Instant::now();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "failFast must not wait for the slow node"
    );
    assert_eq!(view.status, FlowStatus::Failed);
    assert_eq!(view.node("bad").unwrap().status, NodeStatus::Failed);
    assert_eq!(view.node("slow").unwrap().status, NodeStatus::Cancelled);
    assert_eq!(view.node("never").unwrap().status, NodeStatus::Cancelled);
    eventually("the slow handler's token to fire", || {
        let fired = Arc::clone(&fired);
        async move { fired.load(Ordering::SeqCst) == 1 }
    })
    .await;
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_on_failure_hands_the_error_to_children() {
    let prefix = testing::unique_prefix();
    let seen = Arc::new(Mutex::new(serde_json::Value::Null));
    let seen2 = Arc::clone(&seen);
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler("bad", always_fails())
        .handler("sum", sum_handler())
        .handler(
            "collect",
            handler_fn(move |ctx| {
                let seen = Arc::clone(&seen2);
                async move {
                    *seen.lock().unwrap() = ctx.input();
                    Ok::<_, JobError>(json!("collected"))
                }
            }),
        )
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "bad", "handler": "bad", "continueOnFailure": true},
                {"name": "good", "handler": "sum", "data": {"n": 5}},
                {"name": "join", "handler": "collect", "parents": ["bad", "good"]}
            ]})),
            None,
        )
        .await
        .unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(
        view.status,
        FlowStatus::Completed,
        "continueOnFailure does not fail the flow"
    );
    assert_eq!(view.node("bad").unwrap().status, NodeStatus::Failed);
    assert_eq!(view.node("join").unwrap().status, NodeStatus::Completed);
    let input = seen.lock().unwrap().clone();
    assert_eq!(
        input["parents"]["bad"],
        json!({"error": "broken on purpose"})
    );
    assert_eq!(input["parents"]["good"]["sum"], json!(5));
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_handler_and_retry_reruns() {
    let prefix = testing::unique_prefix();
    let fired = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (f2, s2) = (Arc::clone(&fired), Arc::clone(&started));
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler("sum", sum_handler())
        .handler(
            "slow",
            handler_fn(move |ctx| {
                let (fired, started) = (Arc::clone(&f2), Arc::clone(&s2));
                async move {
                    let run = started.fetch_add(1, Ordering::SeqCst);
                    if run > 0 {
                        // The re-run after the retry finishes at once.
                        return Ok(json!({"run": run}));
                    }
                    ctx.cancel.cancelled().await;
                    fired.fetch_add(1, Ordering::SeqCst);
                    Err(JobError::fatal("cancelled"))
                }
            }),
        )
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "slow", "handler": "slow"},
                {"name": "after", "handler": "sum", "parents": ["slow"]}
            ]})),
            None,
        )
        .await
        .unwrap();
    eventually("the slow handler to start", || {
        let started = Arc::clone(&started);
        async move { started.load(Ordering::SeqCst) == 1 }
    })
    .await;
    // A running flow cannot be retried.
    assert!(matches!(
        engine.retry(id).await,
        Err(dagflow_actors::EngineError::Conflict(_))
    ));
    engine.cancel(id).await.unwrap();
    let view = engine.get(id).await.unwrap();
    assert_eq!(view.status, FlowStatus::Cancelled);
    assert_eq!(view.node("slow").unwrap().status, NodeStatus::Cancelled);
    assert_eq!(view.node("after").unwrap().status, NodeStatus::Cancelled);
    eventually("the handler's token to fire", || {
        let fired = Arc::clone(&fired);
        async move { fired.load(Ordering::SeqCst) == 1 }
    })
    .await;
    // Cancelling twice is a conflict, not a crash.
    assert!(matches!(
        engine.cancel(id).await,
        Err(dagflow_actors::EngineError::Conflict(_))
    ));

    engine.retry(id).await.unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    assert_eq!(
        view.node("slow").unwrap().attempt,
        2,
        "a retry runs a fresh attempt"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_no_key_and_no_record() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let engine = builder(&prefix)
        .data_dir(dir.path())
        .queue("default", 2)
        .handler("sum", sum_handler())
        .handler(
            "slow",
            handler_fn(|ctx| async move {
                ctx.cancel.cancelled().await;
                Err::<serde_json::Value, _>(JobError::fatal("cancelled"))
            }),
        )
        .build()
        .await
        .unwrap();
    // One running flow (jobs in Redis) and one finished flow.
    let running = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "slow", "handler": "slow"},
                {"name": "later", "handler": "sum", "parents": ["slow"]},
                {"name": "wait", "handler": "sum", "opts": {"attempts": 3}}
            ]})),
            Some("delete-me".into()),
        )
        .await
        .unwrap();
    let done = engine
        .create(
            &spec(json!({"nodes": [{"name": "a", "handler": "sum"}]})),
            None,
        )
        .await
        .unwrap();
    engine.wait(done, WAIT).await.unwrap();
    eventually("the slow job to start", || {
        let engine = engine.clone();
        async move {
            engine
                .get(running)
                .await
                .unwrap()
                .node("slow")
                .unwrap()
                .status
                == NodeStatus::Active
        }
    })
    .await;
    for id in [running, done] {
        engine.delete(id).await.unwrap();
        assert!(matches!(
            engine.get(id).await,
            Err(dagflow_actors::EngineError::NotFound(_))
        ));
        assert!(matches!(
            engine.delete(id).await,
            Err(dagflow_actors::EngineError::NotFound(_))
        ));
        let left: Vec<String> = keys(&prefix).await;
        assert!(
            !left.iter().any(|k| k.contains(&id.to_string())),
            "{left:?}"
        );
    }
    // Nothing at all is left in Redis but the keys every deployment keeps: no job,
    // no jobs hash, no completion record (the cancelled slow job's report included),
    // nothing pending.
    only_global_keys_left(&prefix).await;
    let mut conn = redis::Client::open(testing::redis().url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for stream in Keys::new(&prefix).lanes("default") {
        let entries: redis::Value = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        let text = format!("{entries:?}");
        assert!(!text.contains(&running.to_string()), "{stream}: {text}");
    }
    // The idempotency key is free again: the same key makes a new flow.
    let again = engine
        .create(
            &spec(json!({"nodes": [{"name": "a", "handler": "sum"}]})),
            Some("delete-me".into()),
        )
        .await
        .unwrap();
    assert_ne!(again, running);
    engine.wait(again, WAIT).await.unwrap();
    engine.delete(again).await.unwrap();
    only_global_keys_left(&prefix).await;
    engine.shutdown(Duration::from_secs(5)).await;
    drop(engine);
    // On disk: no record of any kind is left (flow records, specs, node records,
    // idempotency keys).
    let store = dagflow_actors::store::Store::open(dir.path(), 1 << 20).unwrap();
    for id in [running, done, again] {
        assert!(store.load(id).unwrap().is_none());
        assert_eq!(store.node_record_count(id), 0);
    }
    assert_eq!(store.record_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_over_its_timeout_fails_the_attempt_and_is_retried() {
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler(
            "slow-first",
            handler_fn(|ctx| async move {
                if ctx.attempt == 1 {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                }
                Ok::<_, JobError>(json!({"attempt": ctx.attempt}))
            }),
        )
        .build()
        .await
        .unwrap();
    let start = Instant::now();
    // With a second attempt the node completes; a timeout is retryable.
    let retried = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "t", "handler": "slow-first", "opts": {"timeoutMs": 300, "attempts": 2}}
            ]})),
            None,
        )
        .await
        .unwrap();
    // With one attempt it fails with the timeout.
    let failed = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "t", "handler": "slow-first", "opts": {"timeoutMs": 300}}
            ]})),
            None,
        )
        .await
        .unwrap();
    let view = engine.wait(retried, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    assert_eq!(view.node("t").unwrap().result, Some(json!({"attempt": 2})));
    let view = engine.wait(failed, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Failed);
    assert_eq!(
        view.node("t").unwrap().error.as_deref(),
        Some("timed out after 300 ms")
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the timeout cut the slow runs short"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}
