//! Workers elsewhere, workers that vanish, flow actors that fail, engines that
//! restart, and reports that arrive twice or late.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dagflow_actors::queue::{Delivery, JobEnvelope, Keys, Outcome, Queue};
use dagflow_actors::testing;
use dagflow_actors::{handler_fn, Engine, FlowStatus, JobError, NodeStatus};
use serde_json::json;

/// A handler that blocks until released, counting its runs.
fn gate(runs: Arc<AtomicUsize>, release: Arc<tokio::sync::Notify>) -> impl dagflow_actors::Handler {
    handler_fn(move |ctx| {
        let (runs, release) = (Arc::clone(&runs), Arc::clone(&release));
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                _ = release.notified() => Ok::<_, JobError>(json!({"gated": ctx.node})),
                _ = ctx.cancel.cancelled() => Err(JobError::retryable("stopped")),
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_served_only_by_a_worker_only_engine_completes() {
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    let worker = builder(&prefix)
        .worker_only()
        .queue("remote", 2)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "a", "handler": "sum", "data": {"n": 1}},
                {"name": "b", "handler": "sum", "queue": "remote", "parents": ["a"], "data": {"n": 2}},
                {"name": "c", "handler": "sum", "parents": ["b"], "data": {"n": 4}}
            ]})),
            None,
        )
        .await
        .unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    assert_eq!(
        view.node("c").unwrap().result.as_ref().unwrap()["sum"],
        json!(7)
    );
    // The worker-only engine has no flows.
    assert!(worker.get(id).await.is_err());
    worker.shutdown(Duration::from_secs(5)).await;
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_job_that_returns_null_completes_its_node() {
    // `"result": null` once read as "no result": the report was dropped after the
    // script had removed the job, and the flow waited for ever.
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    let worker = builder(&prefix)
        .worker_only()
        .queue("remote", 2)
        .handler(
            "nothing",
            handler_fn(|_ctx| async { Ok::<_, JobError>(serde_json::Value::Null) }),
        )
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "a", "handler": "nothing", "queue": "remote"},
                {"name": "b", "handler": "sum", "parents": ["a"], "data": {"n": 2}}
            ]})),
            None,
        )
        .await
        .unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    let a = engine.node(id, "a").await.unwrap();
    assert_eq!(a.result, Some(serde_json::Value::Null), "{a:?}");
    worker.shutdown(Duration::from_secs(5)).await;
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_workers_job_is_reclaimed_after_the_lease() {
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let never = Arc::new(tokio::sync::Notify::new());
    // The first worker takes the job and dies with it (abandons it unreported).
    let doomed = builder(&prefix)
        .worker_only()
        .queue("work", 1)
        .handler("gate", gate(Arc::clone(&runs), never))
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [{"name": "job", "handler": "gate", "queue": "work"}]})),
            None,
        )
        .await
        .unwrap();
    eventually("the first worker to take the job", || {
        let runs = Arc::clone(&runs);
        async move { runs.load(Ordering::SeqCst) == 1 }
    })
    .await;
    doomed.shutdown(Duration::ZERO).await;
    let died = Instant::now();
    // A second worker picks it up once the lease (1.5 s) has expired.
    let rescuer = builder(&prefix)
        .worker_only()
        .queue("work", 1)
        .handler(
            "gate",
            handler_fn(|_ctx| async move { Ok::<_, JobError>(json!("rescued")) }),
        )
        .build()
        .await
        .unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    assert_eq!(view.node("job").unwrap().result, Some(json!("rescued")));
    assert!(
        died.elapsed() >= Duration::from_millis(1000),
        "reclaimed only after the lease"
    );
    rescuer.shutdown(Duration::from_secs(5)).await;
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stalled_too_often_fails_with_a_clear_error() {
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix).build().await.unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [{"name": "job", "handler": "gate", "queue": "work", "opts": {"maxStalled": 1}}]})),
            None,
        )
        .await
        .unwrap();
    // Workers that take the job and vanish, over and over.
    for _ in 0..3 {
        let runs = Arc::new(AtomicUsize::new(0));
        let w = builder(&prefix)
            .worker_only()
            .queue("work", 1)
            .handler(
                "gate",
                gate(Arc::clone(&runs), Arc::new(tokio::sync::Notify::new())),
            )
            .build()
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while runs.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            if engine.get(id).await.unwrap().status.is_terminal() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        w.shutdown(Duration::ZERO).await;
    }
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Failed);
    let error = view.node("job").unwrap().error.clone().unwrap();
    assert!(error.contains("stalled"), "{error}");
    // Its attempt history says it stalled, not merely failed.
    let attempts = engine.node(id, "job").await.unwrap().attempts.unwrap();
    let last = attempts.last().unwrap();
    assert_eq!(last.outcome, "stalled", "{attempts:?}");
    assert_eq!(last.error.as_deref(), Some(error.as_str()));
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flow_actor_is_restarted_from_its_snapshot() {
    let prefix = testing::unique_prefix();
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler("sum", sum_handler())
        .handler("gate", gate(Arc::clone(&runs), Arc::clone(&release)))
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "a", "handler": "sum", "data": {"n": 1}},
                {"name": "g", "handler": "gate", "parents": ["a"]},
                {"name": "z", "handler": "sum", "parents": ["g", "a"], "data": {"n": 2}}
            ]})),
            None,
        )
        .await
        .unwrap();
    let other = engine
        .create(
            &spec(json!({"nodes": [{"name": "x", "handler": "sum"}]})),
            None,
        )
        .await
        .unwrap();
    eventually("the gate to start", || {
        let runs = Arc::clone(&runs);
        async move { runs.load(Ordering::SeqCst) >= 1 }
    })
    .await;
    engine.wait(other, WAIT).await.unwrap();
    assert!(engine.inject_flow_failure(id));
    // The supervisor itself restarts the actor: while the gate holds, no report
    // could wake the flow, yet it has a live actor again.
    eventually("the supervisor to restart the flow's actor", || {
        let engine = engine.clone();
        async move {
            engine
                .stats()
                .unwrap()
                .actor_restarts
                .load(Ordering::SeqCst)
                == 1
                && engine.running_flows() == 1
        }
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "no job ran in between");
    eventually("the restarted actor to answer", || {
        let engine = engine.clone();
        async move {
            engine
                .get(id)
                .await
                .is_ok_and(|v| v.node("a").unwrap().status == NodeStatus::Completed)
        }
    })
    .await;
    release.notify_waiters();
    // The gate may have been re-enqueued by the restart; release every run.
    let view = loop {
        release.notify_waiters();
        if let Ok(v) = engine.wait(id, Duration::from_millis(200)).await {
            break v;
        }
    };
    assert_eq!(view.status, FlowStatus::Completed);
    assert_eq!(
        view.node("z").unwrap().result.as_ref().unwrap()["sum"],
        json!(3)
    );
    assert_eq!(
        engine.wait(other, WAIT).await.unwrap().status,
        FlowStatus::Completed
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_actor_failing_past_the_bound_fails_the_flow_only() {
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler("sum", sum_handler())
        .handler(
            "gate",
            gate(Arc::default(), Arc::new(tokio::sync::Notify::new())),
        )
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [{"name": "g", "handler": "gate"}]})),
            None,
        )
        .await
        .unwrap();
    for _ in 0..4 {
        eventually("a live flow actor", || {
            let engine = engine.clone();
            async move { engine.inject_flow_failure(id) }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Failed);
    assert!(
        view.error.as_deref().unwrap_or("").contains("engine error"),
        "{view:?}"
    );
    assert_eq!(view.node("g").unwrap().status, NodeStatus::Cancelled);
    // Other flows are unaffected.
    let other = engine
        .create(
            &spec(json!({"nodes": [{"name": "x", "handler": "sum"}]})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        engine.wait(other, WAIT).await.unwrap().status,
        FlowStatus::Completed
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_flow_resumes_to_the_right_results_at_once() {
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let runs = Arc::new(AtomicUsize::new(0));
    let first = builder(&prefix)
        .data_dir(dir.path())
        .queue("default", 2)
        .handler("sum", sum_handler())
        .handler(
            "gate",
            gate(Arc::clone(&runs), Arc::new(tokio::sync::Notify::new())),
        )
        .build()
        .await
        .unwrap();
    let id = first
        .create(
            &spec(json!({"nodes": [
                {"name": "a", "handler": "sum", "data": {"n": 1}},
                {"name": "g", "handler": "gate", "parents": ["a"]},
                {"name": "z", "handler": "sum", "parents": ["g", "a"], "data": {"n": 2}}
            ]})),
            None,
        )
        .await
        .unwrap();
    eventually("the gate to start", || {
        let runs = Arc::clone(&runs);
        async move { runs.load(Ordering::SeqCst) == 1 }
    })
    .await;
    // Stop with the gate job running: it is abandoned, pending under this engine.
    first.shutdown(Duration::ZERO).await;
    drop(first);

    let second = builder(&prefix)
        .data_dir(dir.path())
        .queue("default", 2)
        .handler("sum", sum_handler())
        .handler(
            "gate",
            handler_fn(|_ctx| async move { Ok::<_, JobError>(json!({"sum": 10})) }),
        )
        // A long lease: the job must come back from the engine's own pending list,
        // not from a lease expiry.
        .lease(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let view = second.wait(id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    assert_eq!(
        view.node("z").unwrap().result.as_ref().unwrap()["sum"],
        json!(13)
    );
    second.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_stale_reports_change_nothing() {
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "a", "handler": "sum", "queue": "manual"},
                {"name": "b", "handler": "sum", "queue": "manual", "parents": ["a"]}
            ]})),
            None,
        )
        .await
        .unwrap();
    // Play a remote worker by hand on the "manual" queue.
    let url = testing::redis().url.clone();
    let queue = Queue::connect(&url, Keys::new(&prefix)).await.unwrap();
    let mut reader =
        dagflow_actors::queue::QueueReader::connect(&url, Keys::new(&prefix), "manual", "hand")
            .await
            .unwrap();
    let jobs = reader.read(10, 1000).await.unwrap();
    assert_eq!(jobs.len(), 1);
    let a: Delivery = jobs[0].clone();
    let done = |v: serde_json::Value| Outcome::Completed {
        result: serde_json::value::to_raw_value(&v).unwrap(),
    };
    queue
        .report_remote(&a, &done(json!({"sum": 1})))
        .await
        .unwrap();
    eventually("b to be queued", || {
        let engine = engine.clone();
        async move { engine.get(id).await.unwrap().node("b").unwrap().status == NodeStatus::Queued }
    })
    .await;
    let seq = engine.get(id).await.unwrap().seq;
    // The same completion again, a different result for it, and a stale attempt.
    queue
        .report_remote(&a, &done(json!({"sum": 999})))
        .await
        .unwrap();
    let mut stale: JobEnvelope = a.envelope.clone();
    stale.attempt = 7;
    let stale = Delivery {
        envelope: stale,
        ..a.clone()
    };
    queue
        .report_remote(&stale, &done(json!({"sum": 555})))
        .await
        .unwrap();
    queue
        .report_remote(
            &a,
            &Outcome::Failed {
                message: "late".into(),
                retryable: false,
                cause: None,
            },
        )
        .await
        .unwrap();
    // Give the router time to apply them, then check that nothing moved.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = engine.get(id).await.unwrap();
    assert_eq!(view.seq, seq, "no event for duplicate or stale reports");
    assert_eq!(view.node("a").unwrap().result, Some(json!({"sum": 1})));
    // And all of them were read, applied (as nothing) and acknowledged: the
    // completions stream is empty (XLEN, not only XPENDING, which is 0 as well
    // before the router has read anything) and nothing is pending.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    eventually("every report applied and acknowledged (XLEN 0)", || {
        let mut conn = conn.clone();
        let key = format!("{prefix}:completions");
        async move {
            let len: i64 = redis::cmd("XLEN")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            len == 0
        }
    })
    .await;
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(format!("{prefix}:completions"))
        .arg("engine")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        format!("{pending:?}")
            .to_lowercase()
            .starts_with("array([int(0)"),
        "{pending:?}"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_mid_flow_the_flow_still_completes() {
    let redis = testing::TestRedis::dedicated();
    let prefix = testing::unique_prefix();
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let engine = Engine::builder()
        .redis_url(redis.url.clone())
        .prefix(&prefix)
        .lease(Duration::from_millis(1500))
        .queue("default", 2)
        .handler("sum", sum_handler())
        .handler("gate", gate(Arc::clone(&runs), Arc::clone(&release)))
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "a", "handler": "sum", "data": {"n": 1}},
                {"name": "g", "handler": "gate", "parents": ["a"]},
                {"name": "z", "handler": "sum", "parents": ["g"], "data": {"n": 2}}
            ]})),
            None,
        )
        .await
        .unwrap();
    eventually("the gate to start", || {
        let runs = Arc::clone(&runs);
        async move { runs.load(Ordering::SeqCst) == 1 }
    })
    .await;
    // Redis restarts without persistence: every key is gone, the gate's job too.
    redis.stop();
    redis.start();
    // The engine notices the lost marker and enqueues the gate again.
    eventually("the gate to run again", || {
        let runs = Arc::clone(&runs);
        async move { runs.load(Ordering::SeqCst) >= 2 }
    })
    .await;
    let view = loop {
        release.notify_waiters();
        if let Ok(v) = engine.wait(id, Duration::from_millis(200)).await {
            break v;
        }
    };
    assert_eq!(view.status, FlowStatus::Completed);
    assert_eq!(
        view.node("z").unwrap().result.as_ref().unwrap()["sum"],
        json!(2)
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

/// An engine whose flows hibernate after 200 ms with nothing in flight.
async fn hibernating_engine(
    redis_url: &str,
    runs: &Arc<AtomicUsize>,
    release: &Arc<tokio::sync::Notify>,
) -> Engine {
    Engine::builder()
        .redis_url(redis_url)
        .prefix(testing::unique_prefix())
        .lease(Duration::from_millis(1500))
        .cancel_grace(Duration::from_millis(500))
        .hibernate_after(Some(Duration::from_millis(200)))
        .queue("default", 2)
        .handler("sum", sum_handler())
        .handler("gate", gate(Arc::clone(runs), Arc::clone(release)))
        .build()
        .await
        .unwrap()
}

/// `a` → gate `g` → `z`, with the gate running and the flow hibernating.
async fn hibernated_gate_flow(engine: &Engine, runs: &Arc<AtomicUsize>) -> dagflow_actors::FlowId {
    let id = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "a", "handler": "sum", "data": {"n": 1}},
                {"name": "g", "handler": "gate", "parents": ["a"]},
                {"name": "z", "handler": "sum", "parents": ["g"], "data": {"n": 2}}
            ]})),
            None,
        )
        .await
        .unwrap();
    eventually("the gate to start", || {
        let runs = Arc::clone(runs);
        async move { runs.load(Ordering::SeqCst) == 1 }
    })
    .await;
    eventually("the flow to hibernate", || {
        let awake = engine.running_flows();
        async move { awake == 0 }
    })
    .await;
    id
}

/// Releases the gate until the flow ends.
async fn release_until_done(
    engine: &Engine,
    id: dagflow_actors::FlowId,
    release: &tokio::sync::Notify,
) -> dagflow_actors::FlowView {
    let deadline = Instant::now() + WAIT;
    loop {
        release.notify_waiters();
        if let Ok(v) = engine.wait(id, Duration::from_millis(200)).await {
            return v;
        }
        assert!(Instant::now() < deadline, "the flow never ended");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_flow_hibernates_and_its_jobs_report_wakes_it() {
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let engine = hibernating_engine(&testing::redis().url, &runs, &release).await;
    let id = hibernated_gate_flow(&engine, &runs).await;
    // Read from its snapshot while it sleeps.
    let view = engine.get(id).await.unwrap();
    assert_eq!(view.status, FlowStatus::Running);
    assert_eq!(view.node("a").unwrap().status, NodeStatus::Completed);
    assert_eq!(view.node("z").unwrap().status, NodeStatus::Pending);
    // The gate's completion (reported through Redis, no actor being there) wakes
    // the flow, which carries the result on.
    let view = release_until_done(&engine, id, &release).await;
    assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    assert_eq!(
        view.node("z").unwrap().result.as_ref().unwrap()["sum"],
        json!(2)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "waking ran the gate again");
    // A finished flow's actor is gone; it hibernates no more.
    eventually("the actor to stop", || {
        let awake = engine.running_flows();
        async move { awake == 0 }
    })
    .await;
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernating_flow_can_be_cancelled_and_retried() {
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let engine = hibernating_engine(&testing::redis().url, &runs, &release).await;
    let id = hibernated_gate_flow(&engine, &runs).await;
    engine.cancel(id).await.unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Cancelled, "{view:?}");
    // Cancel again: a conflict, not a lost request.
    assert!(matches!(
        engine.cancel(id).await,
        Err(dagflow_actors::EngineError::Conflict(_))
    ));
    engine.retry(id).await.unwrap();
    let view = release_until_done(&engine, id, &release).await;
    assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_while_a_flow_hibernates_the_flow_still_completes() {
    let redis = testing::TestRedis::dedicated();
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let engine = hibernating_engine(&redis.url, &runs, &release).await;
    let id = hibernated_gate_flow(&engine, &runs).await;
    // Every key is gone, the gate's job too; the resync wakes the flow, which
    // enqueues the gate again.
    redis.stop();
    redis.start();
    eventually("the gate to run again", || {
        let runs = Arc::clone(&runs);
        async move { runs.load(Ordering::SeqCst) >= 2 }
    })
    .await;
    let view = release_until_done(&engine, id, &release).await;
    assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_redis_is_out_of_memory_waits_for_it() {
    let redis = testing::TestRedis::dedicated();
    let prefix = testing::unique_prefix();
    let mut conn = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Any write is refused: the worker's takes (take.lua counts them) and its
    // heartbeats fail with OOM.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let starting = {
        let url = redis.url.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            Engine::builder()
                .redis_url(url)
                .prefix(&prefix)
                .worker_only()
                .queue("default", 1)
                .handler("sum", sum_handler())
                .build()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Starting writes nothing: the worker is up (or still starting), never failed.
    if starting.is_finished() {
        let started = starting.await.unwrap();
        assert!(
            started.is_ok(),
            "the worker gave up while Redis was out of memory"
        );
        let worker = started.unwrap();
        free_memory(&mut conn).await;
        runs_a_flow(&redis.url, &prefix).await;
        worker.shutdown(Duration::from_secs(5)).await;
        return;
    }
    free_memory(&mut conn).await;
    let worker = tokio::time::timeout(WAIT, starting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    runs_a_flow(&redis.url, &prefix).await;
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Lifts the `maxmemory` a test set.
async fn free_memory(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(conn)
        .await
        .unwrap();
}

/// Runs one `sum` flow on queue `default` through an engine without workers of its
/// own: only a worker-only process already serving the queue can complete it.
async fn runs_a_flow(url: &str, prefix: &str) {
    let engine = Engine::builder()
        .redis_url(url)
        .prefix(prefix)
        .data_dir(tempfile::tempdir().unwrap().keep())
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [{"name": "a", "handler": "sum"}]})),
            None,
        )
        .await
        .unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    engine.shutdown(Duration::from_secs(5)).await;
}
