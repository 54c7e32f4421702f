//! Concurrency keys and rate limits through the engine: real Redis, real sled,
//! real actors and workers.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dagflow_actors::testing;
use dagflow_actors::{handler_fn, FlowStatus, NodeStatus};
use serde_json::json;

/// Running jobs per key now, and the most ever seen per key.
#[derive(Default)]
struct Gauge {
    now: HashMap<String, usize>,
    max: HashMap<String, usize>,
    starts: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_key_never_runs_more_than_its_limit() {
    let prefix = testing::unique_prefix();
    let gauge = Arc::new(Mutex::new(Gauge::default()));
    let total = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = {
        let gauge = Arc::clone(&gauge);
        let (total, most) = (Arc::clone(&total), Arc::clone(&most));
        let gate = Arc::clone(&gate);
        handler_fn(move |ctx| {
            let gauge = Arc::clone(&gauge);
            let (total, most) = (Arc::clone(&total), Arc::clone(&most));
            let gate = Arc::clone(&gate);
            async move {
                // Nothing runs before every flow exists.
                gate.acquire().await.unwrap().forget();
                gate.add_permits(1);
                let key = ctx.data["tenant"].as_str().unwrap().to_owned();
                {
                    let mut g = gauge.lock().unwrap();
                    let n = g.now.entry(key.clone()).or_default();
                    *n += 1;
                    let n = *n;
                    let m = g.max.entry(key.clone()).or_default();
                    *m = (*m).max(n);
                    g.starts.push(key.clone());
                }
                let running = total.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(running, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(25)).await;
                total.fetch_sub(1, Ordering::SeqCst);
                *gauge.lock().unwrap().now.get_mut(&key).unwrap() -= 1;
                Ok(json!(null))
            }
        })
    };
    let engine = builder(&prefix)
        .queue("default", 12)
        .handler("work", handler)
        .build()
        .await
        .unwrap();
    // 4 keys, 10 jobs each, created key by key: a plain FIFO queue would run the
    // first key's jobs first.
    let mut ids = Vec::new();
    for tenant in 0..4 {
        for _ in 0..10 {
            let flow = spec(json!({"nodes": [{
                "name": "job", "handler": "work", "data": {"tenant": format!("t{tenant}")},
                "concurrency": {"key": "data.tenant", "limit": 2}
            }]}));
            ids.push(engine.create(&flow, None).await.unwrap());
        }
    }
    gate.add_permits(1);
    for id in &ids {
        let view = engine.wait(*id, WAIT).await.unwrap();
        assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    }
    let g = std::mem::take(&mut *gauge.lock().unwrap());
    for tenant in 0..4 {
        assert_eq!(g.max[&format!("t{tenant}")], 2, "{:?}", g.max);
    }
    // Keys ran side by side (12 slots, 4 keys at 2 each).
    assert!(most.load(Ordering::SeqCst) > 2);
    // Keys took turns: at every point, the keys with jobs left had started within
    // two rounds of each other (a queue in creation order would run all of t0's
    // jobs, two at a time, before any of t1's).
    let mut started: HashMap<&str, usize> = HashMap::new();
    for key in &g.starts {
        *started.entry(key).or_default() += 1;
        let left: Vec<usize> = (0..4)
            .map(|t| started.get(format!("t{t}").as_str()).copied().unwrap_or(0))
            .filter(|n| *n < 10)
            .collect();
        if let (Some(most), Some(least)) = (left.iter().max(), left.iter().min()) {
            assert!(most - least <= 4, "{:?}", g.starts);
        }
    }
    engine.shutdown(Duration::from_secs(5)).await;
    only_global_keys_left(&prefix).await;
}

/// An engine whose `block` handler runs until released or cancelled (counted).
async fn blocking_engine(
    prefix: &str,
) -> (
    dagflow_actors::Engine,
    Arc<tokio::sync::Notify>,
    Arc<AtomicUsize>,
) {
    let release = Arc::new(tokio::sync::Notify::new());
    let cancelled = Arc::new(AtomicUsize::new(0));
    let engine = builder(prefix)
        .queue("default", 4)
        .handler(
            "block",
            blocking_handler(Arc::clone(&release), Arc::clone(&cancelled)),
        )
        .build()
        .await
        .unwrap();
    (engine, release, cancelled)
}

/// A handler that runs until released or cancelled, counting its runs.
fn blocking_handler(
    release: Arc<tokio::sync::Notify>,
    cancelled: Arc<AtomicUsize>,
) -> impl dagflow_actors::Handler {
    handler_fn(move |ctx| {
        let release = Arc::clone(&release);
        let cancelled = Arc::clone(&cancelled);
        async move {
            tokio::select! {
                _ = release.notified() => Ok(json!({"done": true})),
                _ = ctx.cancel.cancelled() => {
                    cancelled.fetch_add(1, Ordering::SeqCst);
                    Ok(json!({"cancelled": true}))
                }
            }
        }
    })
}

fn keyed(strategy: &str) -> serde_json::Value {
    json!({"nodes": [{
        "name": "job", "handler": "block", "data": {"k": "same"},
        "concurrency": {"key": "data.k", "limit": 1, "strategy": strategy}
    }]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_newest_cancels_the_new_job_with_a_reason() {
    let prefix = testing::unique_prefix();
    let (engine, release, cancelled) = blocking_engine(&prefix).await;
    let first = create_running(&engine, &spec(keyed("cancelNewest"))).await;
    let second = engine
        .create(&spec(keyed("cancelNewest")), None)
        .await
        .unwrap();
    let view = engine.wait(second, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Cancelled, "{view:?}");
    let job = view.node("job").unwrap();
    assert_eq!(job.status, NodeStatus::Cancelled);
    let reason = job.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("cancelNewest") && reason.contains("same"),
        "{reason}"
    );
    // The first one was not touched, and finishes.
    release.notify_waiters();
    let view = engine.wait(first, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    assert_eq!(cancelled.load(Ordering::SeqCst), 0);
    engine.shutdown(Duration::from_secs(5)).await;
    only_global_keys_left(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_progress_cancels_the_running_job_for_the_new_one() {
    let prefix = testing::unique_prefix();
    let (engine, release, cancelled) = blocking_engine(&prefix).await;
    let first = create_running(&engine, &spec(keyed("cancelInProgress"))).await;
    let second = engine
        .create(&spec(keyed("cancelInProgress")), None)
        .await
        .unwrap();
    let view = engine.wait(first, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Cancelled, "{view:?}");
    let job = view.node("job").unwrap();
    assert_eq!(job.status, NodeStatus::Cancelled);
    let reason = job.reason.clone().unwrap_or_default();
    assert!(reason.contains("cancelInProgress"), "{reason}");
    // Its handler was told to stop.
    eventually("the first handler to see its cancel", || {
        let cancelled = Arc::clone(&cancelled);
        async move { cancelled.load(Ordering::SeqCst) == 1 }
    })
    .await;
    // The new job took the slot and runs to its end.
    eventually("the second job to run", || {
        let engine = engine.clone();
        async move {
            engine
                .get(second)
                .await
                .unwrap()
                .node("job")
                .unwrap()
                .status
                == NodeStatus::Active
        }
    })
    .await;
    release.notify_waiters();
    let view = engine.wait(second, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    // The cancelled handler's own report (through Redis, after the cancel record)
    // is applied, or dropped as stale, before the engine stops.
    until_empty(
        "the completions stream to drain",
        "XLEN",
        format!("{prefix}:completions"),
    )
    .await;
    engine.shutdown(Duration::from_secs(5)).await;
    only_global_keys_left(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_spaces_the_starts_and_fails_nothing() {
    let prefix = testing::unique_prefix();
    let starts = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let handler = {
        let starts = Arc::clone(&starts);
        handler_fn(move |_ctx| {
            let starts = Arc::clone(&starts);
            async move {
                starts.lock().unwrap().push(Instant::now());
                Ok(json!(null))
            }
        })
    };
    let engine = builder(&prefix)
        .queue("default", 8)
        .handler("call", handler)
        .build()
        .await
        .unwrap();
    // 5 per 500 ms: one every 100 ms.
    let began = Instant::now();
    let mut ids = Vec::new();
    for i in 0..15 {
        let flow = spec(json!({"nodes": [{
            "name": "job", "handler": "call", "data": {"i": i},
            "rateLimit": {"key": "'payments'", "limit": 5, "perMs": 500}
        }]}));
        ids.push(engine.create(&flow, None).await.unwrap());
    }
    for id in &ids {
        let view = engine.wait(*id, WAIT).await.unwrap();
        assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    }
    let mut starts = starts.lock().unwrap().clone();
    starts.sort();
    assert_eq!(starts.len(), 15);
    // 14 intervals of 100 ms (minus timer slack).
    let spread = starts[14] - starts[0];
    assert!(spread >= Duration::from_millis(1_300), "{spread:?}");
    assert!(began.elapsed() < Duration::from_secs(10));
    // No window of 500 ms saw more than 5 starts (plus one of timing slack).
    for (i, a) in starts.iter().enumerate() {
        let within = starts[i..]
            .iter()
            .take_while(|b| **b - *a < Duration::from_millis(450))
            .count();
        assert!(within <= 6, "{within} starts within 450 ms from start {i}");
    }
    engine.shutdown(Duration::from_secs(5)).await;
    only_global_keys_left(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_cannot_be_evaluated_fails_the_node_and_a_bad_key_is_refused() {
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    let flow = spec(json!({"nodes": [{
        "name": "job", "handler": "sum",
        "concurrency": {"key": "data.missing.field", "limit": 1}
    }]}));
    let id = engine.create(&flow, None).await.unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Failed, "{view:?}");
    let error = view.node("job").unwrap().error.clone().unwrap_or_default();
    assert!(error.contains("concurrency key"), "{error}");
    engine.shutdown(Duration::from_secs(5)).await;
    only_global_keys_left(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_concurrency_key_runs_one_flow_of_a_key_at_a_time() {
    let prefix = testing::unique_prefix();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let handler = {
        let log = Arc::clone(&log);
        handler_fn(move |ctx| {
            let log = Arc::clone(&log);
            async move {
                let tag = format!("{}{}", ctx.node, ctx.data["flow"]);
                log.lock().unwrap().push(format!("+{tag}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
                log.lock().unwrap().push(format!("-{tag}"));
                Ok(json!(null))
            }
        })
    };
    let engine = builder(&prefix)
        .queue("default", 8)
        .handler("step", handler)
        .build()
        .await
        .unwrap();
    let flow = |i: u32, tenant: &str| {
        spec(json!({
            "nodes": [
                {"name": "a", "handler": "step", "data": {"flow": i, "tenant": tenant}},
                {"name": "b", "handler": "step", "parents": ["a"], "data": {"flow": i}}
            ],
            "opts": {"concurrency": {"key": "data.a.tenant", "limit": 1}}
        }))
    };
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(engine.create(&flow(i, "acme"), None).await.unwrap());
    }
    // Another key is not held back by acme's flows.
    let other = engine.create(&flow(9, "globex"), None).await.unwrap();
    for id in ids.iter().chain([&other]) {
        let view = engine.wait(*id, WAIT).await.unwrap();
        assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    }
    let log = log.lock().unwrap().clone();
    // acme's flows never overlap: each one's last step ends before the next one's
    // first step starts.
    let at = |what: &str| log.iter().position(|e| e == what).unwrap();
    let mut ends: Vec<(usize, usize)> = (0..3)
        .map(|i| (at(&format!("+a{i}")), at(&format!("-b{i}"))))
        .collect();
    ends.sort();
    for pair in ends.windows(2) {
        assert!(pair[0].1 < pair[1].0, "{log:?}");
    }
    // globex ran while acme's flows waited.
    assert!(at("+a9") < ends[2].0, "{log:?}");
    engine.shutdown(Duration::from_secs(5)).await;
    only_global_keys_left(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_concurrency_key_with_cancel_newest_cancels_the_new_flow() {
    let prefix = testing::unique_prefix();
    let (engine, release, cancelled) = blocking_engine(&prefix).await;
    let flow = spec(json!({
        "name": "nightly",
        "nodes": [{"name": "job", "handler": "block"}],
        "opts": {"concurrency": {"key": "name", "limit": 1, "strategy": "cancelNewest"}}
    }));
    let first = create_running(&engine, &flow).await;
    let second = engine.create(&flow, None).await.unwrap();
    let view = engine.wait(second, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Cancelled, "{view:?}");
    let reason = view.node("job").unwrap().reason.clone().unwrap_or_default();
    assert!(reason.contains("flow concurrency key"), "{reason}");
    // The running flow was left alone: only the new one was cancelled.
    assert_eq!(cancelled.load(Ordering::SeqCst), 0);
    release.notify_waiters();
    let view = engine.wait(first, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    // Its slot is free again once its jobs are cleaned up (a moment after it
    // ended): a third flow runs.
    until_empty(
        "the first flow's slot to be given back",
        "ZCARD",
        format!("{prefix}:fk:nightly:run"),
    )
    .await;
    let third = create_running(&engine, &flow).await;
    release.notify_waiters();
    let view = engine.wait(third, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    engine.shutdown(Duration::from_secs(5)).await;
    only_global_keys_left(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_key_value_cannot_take_the_name_of_another_key() {
    // `due` and `y:wait` were names of the engine's own keys (`P:rl:due`, key y's
    // waiting list) when a token time lived at `P:rl:{key}`.
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 4)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for key in ["due", "y:wait"] {
        let flow = spec(json!({"nodes": [{
            "name": "a", "handler": "sum",
            "rateLimit": {"key": format!("'{key}'"), "limit": 1, "perMs": 20_000}
        }]}));
        ids.push(engine.create(&flow, None).await.unwrap());
    }
    // Key y, two jobs 300 ms apart: the second waits for its token, released by
    // the engine's timer through `P:rl:due`.
    let flow = spec(json!({"nodes": [
        {"name": "a", "handler": "sum", "rateLimit": {"key": "'y'", "limit": 1, "perMs": 300}},
        {"name": "b", "handler": "sum", "rateLimit": {"key": "'y'", "limit": 1, "perMs": 300}}
    ]}));
    ids.push(engine.create(&flow, None).await.unwrap());
    for id in ids {
        let view = engine.wait(id, WAIT).await.unwrap();
        assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    }
    engine.shutdown(Duration::from_secs(5)).await;
    only_global_keys_left(&prefix).await;
}

/// Creates a flow and waits until its node `job` runs.
async fn create_running(
    engine: &dagflow_actors::Engine,
    flow: &dagflow_actors::FlowSpec,
) -> dagflow_actors::FlowId {
    let id = engine.create(flow, None).await.unwrap();
    eventually("the job to run", || {
        let engine = engine.clone();
        async move { engine.get(id).await.unwrap().node("job").unwrap().status == NodeStatus::Active }
    })
    .await;
    id
}

/// Waits until a Redis length command (`XLEN`, `ZCARD`) on `key` answers 0.
async fn until_empty(what: &str, command: &'static str, key: String) {
    eventually(what, || {
        let key = key.clone();
        async move {
            let mut conn = redis::Client::open(testing::redis().url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            redis::cmd(command)
                .arg(&key)
                .query_async::<usize>(&mut conn)
                .await
                .unwrap()
                == 0
        }
    })
    .await;
}
