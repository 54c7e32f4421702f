//! Who owns a report until it is acknowledged, and the races around delete, create
//! and restore: one test per defect of the review (issue 10), each driven by the
//! engine's failpoints (feature `failpoints`) rather than by sleeps where a fault or
//! an interleaving has to be forced.
//!
//! Failpoints are process-wide: every test here holds a `fail::FailScenario`, which
//! runs them one at a time and clears every failpoint at the end, so that no test's
//! engine consumes a failpoint another test set.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dagflow_actors::queue::{Keys, Outcome, QueueReader};
use dagflow_actors::testing;
use dagflow_actors::{handler_fn, EngineError, FlowStatus, JobError, ListQuery, NodeStatus};
use serde_json::json;

async fn conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(testing::redis().url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Length and pending count of the completions stream.
async fn completions(prefix: &str) -> (i64, i64) {
    let mut c = conn().await;
    let key = Keys::new(prefix).completions();
    let len: i64 = redis::cmd("XLEN")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&key)
        .arg("engine")
        .query_async(&mut c)
        .await
        .unwrap_or(redis::Value::Nil);
    let pending = match pending {
        redis::Value::Array(v) => match v.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    };
    (len, pending)
}

/// Stops the engine, then clears the failpoints (in that order: a failpoint still set
/// must not fire in a shutdown).
async fn stop(engine: dagflow_actors::Engine, scenario: fail::FailScenario<'_>) {
    engine.shutdown(Duration::from_secs(5)).await;
    scenario.teardown();
}

/// Waits until the completions stream is empty with nothing pending: every report
/// applied and acknowledged.
async fn nothing_pending(prefix: &str) {
    eventually(
        "every completion record applied and acknowledged",
        || async { completions(prefix).await == (0, 0) },
    )
    .await;
}

/// Plays a worker of another process finishing `job` with `result` (JSON text).
async fn complete(
    engine: &dagflow_actors::Engine,
    job: &dagflow_actors::queue::Delivery,
    result: &str,
) {
    let outcome = Outcome::Completed {
        result: dagflow_actors::actors::worker::raw(result).unwrap(),
    };
    engine.queue().report_remote(job, &outcome).await.unwrap();
}

fn one_remote_node() -> dagflow_actors::FlowSpec {
    spec(json!({"nodes": [{"name": "a", "queue": "remote"}]}))
}

/// Plays a worker of another process: reads the one job of queue `remote`.
async fn take_remote_job(prefix: &str) -> dagflow_actors::queue::Delivery {
    let mut reader = QueueReader::connect(
        &testing::redis().url,
        Keys::new(prefix),
        "remote",
        "outside-worker",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut got = reader.read(1, 200).await.unwrap();
        if let Some(d) = got.pop() {
            return d;
        }
        assert!(Instant::now() < deadline, "no job on queue remote");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_dropped_with_an_actor_is_delivered_again() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix).build().await.unwrap();
    let id = engine.create(&one_remote_node(), None).await.unwrap();
    let job = take_remote_job(&prefix).await;
    // The router's cast is lost as if the actor had died with the record in its
    // mailbox; the record must still be applied and acknowledged.
    fail::cfg("router::cast", "1*return").unwrap();
    complete(&engine, &job, "7").await;
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    assert_eq!(view.node("a").unwrap().result, Some(json!(7)));
    nothing_pending(&prefix).await;
    assert!(engine.stats().unwrap().handed_back.load(Ordering::Relaxed) >= 1);
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_reaches_a_flow_being_deleted_is_acknowledged() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix).build().await.unwrap();
    let id = engine.create(&one_remote_node(), None).await.unwrap();
    let job = take_remote_job(&prefix).await;
    // Hold the flow's next write in the group commit so that the delete has to
    // wait for it, and the worker's final report arrives while it waits.
    fail::cfg("writer::callback", "1*sleep(1500)").unwrap();
    engine
        .queue()
        .report_remote(&job, &Outcome::Started { worker: None })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deleting = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.delete(id).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled = Outcome::Failed {
        message: "cancelled".into(),
        retryable: false,
        cause: None,
    };
    engine
        .queue()
        .report_remote(&job, &cancelled)
        .await
        .unwrap();
    deleting.await.unwrap().unwrap();
    nothing_pending(&prefix).await;
    assert!(matches!(
        engine.get(id).await,
        Err(EngineError::NotFound(_))
    ));
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_left_pending_by_another_consumer_is_claimed_after_the_bound() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .redeliver_after(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let id = engine.create(&one_remote_node(), None).await.unwrap();
    take_remote_job(&prefix).await;
    // An engine that crashed right after reading a record (another consumer of the
    // group) holds it pending: it is added and read by that consumer in one script,
    // so this engine's router never reads it as new.
    let mut c = conn().await;
    let key = Keys::new(&prefix).completions();
    let script = redis::Script::new(
        r#"
        local id = redis.call('XADD', KEYS[1], '*', 'v', '1', 'flow', ARGV[1], 'node', 'a',
            'attempt', '1', 'job', ARGV[1] .. ':a:1', 'outcome', '{"kind":"completed","result":2}')
        redis.call('XREADGROUP', 'GROUP', 'engine', 'crashed-engine', 'COUNT', '1000', 'STREAMS', KEYS[1], '>')
        return id
        "#,
    );
    let _: String = script
        .key(&key)
        .arg(id.to_string())
        .invoke_async(&mut c)
        .await
        .unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    assert_eq!(view.node("a").unwrap().result, Some(json!(2)));
    nothing_pending(&prefix).await;
    assert!(engine.stats().unwrap().redelivered.load(Ordering::Relaxed) >= 1);
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_create_with_the_same_key_waits_for_the_first_to_be_durable() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix).build().await.unwrap();
    // The first flow never becomes durable.
    fail::cfg("writer::before_apply", "1*return").unwrap();
    let spec = one_remote_node();
    let key = Some("same-key".to_owned());
    let (first, second) = tokio::join!(
        engine.create(&spec, key.clone()),
        engine.create(&spec, key.clone())
    );
    assert!(
        first.is_err(),
        "the first create was not durable: {first:?}"
    );
    // Before the fix a second caller that came while the first flow was being
    // created got its id at once, the id of a flow that never existed. Now it
    // waits for the first and shares its error; one that came after the first
    // failed makes a flow of its own, which exists.
    if let Ok(id) = second {
        assert!(
            engine.get(id).await.is_ok(),
            "the second create answered with a flow that never became durable"
        );
    }
    fail::cfg("writer::before_apply", "off").unwrap();
    let third = engine.create(&spec, key.clone()).await.unwrap();
    let fourth = engine.create(&spec, key).await.unwrap();
    assert_eq!(third, fourth);
    engine.get(third).await.unwrap();
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_shows_only_what_is_on_disk() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix).build().await.unwrap();
    fail::cfg("writer::flush", "1*sleep(1500)").unwrap();
    let creating = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.create(&one_remote_node(), None).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The new flow is applied to sled but its flush has 1.2 s to go: a list may
    // show it only once that flush is done, so it waits for it (it used to answer
    // at once from sled's memory).
    let asked = Instant::now();
    let page = engine.list(&ListQuery::default()).await.unwrap();
    let waited = asked.elapsed();
    let id = creating.await.unwrap().unwrap();
    if page.flows.iter().any(|f| f.id == id) {
        assert!(
            waited >= Duration::from_millis(1000),
            "a list showed a flow {waited:?} into a flush of 1.5 s"
        );
    }
    let page = engine.list(&ListQuery::default()).await.unwrap();
    assert!(page.flows.iter().any(|f| f.id == id));
    stop(engine, scenario).await;
}

/// A handler that fails once and is never retried: flows end `failed`.
fn broken() -> impl dagflow_actors::Handler {
    handler_fn(|_ctx| async move { Err::<serde_json::Value, _>(JobError::fatal("broken")) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_a_retry_never_brings_the_flow_back() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 4)
        .handler("broken", broken())
        .hibernate_after(Some(Duration::from_millis(100)))
        .build()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        // Half of them fail at once; the others keep a node running (and hibernate).
        let nodes = if i % 2 == 0 {
            json!([{"name": "a", "handler": "broken"}, {"name": "b", "handler": "broken", "parents": ["a"]}])
        } else {
            json!([{"name": "a", "handler": "broken"}, {"name": "c", "queue": "remote"}])
        };
        let id = engine
            .create(&spec(json!({"nodes": nodes})), None)
            .await
            .unwrap();
        ids.push(id);
    }
    for id in &ids {
        let engine = engine.clone();
        let id = *id;
        eventually("node a to fail", move || {
            let engine = engine.clone();
            async move {
                engine.get(id).await.is_ok_and(|v| {
                    v.node("a").unwrap().status == dagflow_actors::NodeStatus::Failed
                })
            }
        })
        .await;
    }
    // The running ones hibernate; the failed ones have no actor either.
    eventually("every flow without an actor", || async {
        engine.running_flows() == 0
    })
    .await;
    let mut deleted = Vec::new();
    for id in &ids {
        // Every request a client could send at that moment, at once; the retry
        // first, so that the delete comes while the retry's actor is starting (a
        // just-spawned actor was taken for none, and the delete went ahead under it).
        let (_, d, _, _) = tokio::join!(
            engine.retry(*id),
            engine.delete(*id),
            engine.cancel(*id),
            engine.get(*id)
        );
        if d.is_ok() {
            deleted.push(*id);
        }
    }
    assert!(!deleted.is_empty());
    // Let any retried run play out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listed: Vec<_> = engine
        .list(&ListQuery {
            limit: Some(1000),
            ..ListQuery::default()
        })
        .await
        .unwrap()
        .flows
        .into_iter()
        .map(|f| f.id)
        .collect();
    for id in &deleted {
        assert!(
            matches!(engine.get(*id).await, Err(EngineError::NotFound(_))),
            "deleted flow {id} answers"
        );
        assert!(!listed.contains(id), "deleted flow {id} is listed");
        let left = testing::keys_matching(&testing::redis().url, &format!("{prefix}:*{id}*")).await;
        assert!(left.is_empty(), "deleted flow {id} left keys {left:?}");
    }
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_redis_lost_without_losing_the_marker_are_put_back() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .reconcile_every(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            engine
                .create(
                    &spec(json!({"nodes": [{"name": "a", "queue": "later", "handler": "sum"}]})),
                    None,
                )
                .await
                .unwrap(),
        );
    }
    // Redis restarted from an older snapshot: the queue's stream and the flows'
    // jobs hashes are gone, the marker is still there.
    let keys = Keys::new(&prefix);
    let mut c = conn().await;
    let mut del = redis::cmd("DEL");
    del.arg(keys.lanes("later"));
    for id in &ids {
        del.arg(keys.flow_jobs(&id.to_string()));
    }
    let _: i64 = del.query_async(&mut c).await.unwrap();
    let marker: Option<String> = redis::cmd("GET")
        .arg(keys.marker())
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(marker.is_some());
    let worker = builder(&prefix)
        .worker_only()
        .queue("later", 2)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    for id in &ids {
        assert_eq!(
            engine.wait(*id, WAIT).await.unwrap().status,
            FlowStatus::Completed
        );
    }
    assert!(
        engine
            .stats()
            .unwrap()
            .reconcile_repaired
            .load(Ordering::Relaxed)
            >= 5
    );
    worker.shutdown(Duration::from_secs(5)).await;
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_element_jobs_redis_lost_are_put_back() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .reconcile_every(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    // The source is a signal wait (no worker needed), the elements go to a queue
    // nobody serves yet: they stay queued.
    let id = engine
        .create(
            &spec(json!({"nodes": [
                {"name": "src", "wait": {"signal": "go"}},
                {"name": "each", "queue": "later", "handler": "sum", "parents": ["src"],
                 "map": {"from": "src", "path": "/items"}},
            ]})),
            None,
        )
        .await
        .unwrap();
    let waiting = async {
        loop {
            if engine.node(id, "src").await.unwrap().status == NodeStatus::Waiting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, waiting).await.unwrap();
    engine
        .signal(id, "src", &json!({"items": [1, 2, 3]}))
        .await
        .unwrap();
    let keys = Keys::new(&prefix);
    let mut c = conn().await;
    // The elements' jobs reached Redis; then Redis loses them (marker kept).
    let expanded = async {
        loop {
            let fields: Vec<String> = redis::cmd("HKEYS")
                .arg(keys.flow_jobs(&id.to_string()))
                .query_async(&mut c)
                .await
                .unwrap();
            if fields.len() == 3 {
                assert!(fields.iter().all(|f| f.starts_with("each[")), "{fields:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, expanded).await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(keys.lanes("later"))
        .arg(keys.flow_jobs(&id.to_string()))
        .query_async(&mut c)
        .await
        .unwrap();
    let worker = builder(&prefix)
        .worker_only()
        .queue("later", 2)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    let flow = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(flow.status, FlowStatus::Completed);
    assert_eq!(
        flow.node("each").unwrap().result,
        Some(json!([
            {"sum": 0, "parents": []}, {"sum": 0, "parents": []}, {"sum": 0, "parents": []}
        ]))
    );
    assert!(
        engine
            .stats()
            .unwrap()
            .reconcile_repaired
            .load(Ordering::Relaxed)
            >= 3
    );
    worker.shutdown(Duration::from_secs(5)).await;
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_completion_record_was_lost_runs_again() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .reconcile_every(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let id = engine.create(&one_remote_node(), None).await.unwrap();
    let job = take_remote_job(&prefix).await;
    // The worker's report marks the job done, but its record is lost with Redis
    // (rolled back to a snapshot that had the hash update but not the record).
    let mut c = conn().await;
    let keys = Keys::new(&prefix);
    let _: redis::Value = redis::cmd("XACK")
        .arg(&job.stream)
        .arg("workers")
        .arg(&job.entry_id)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XDEL")
        .arg(&job.stream)
        .arg(&job.entry_id)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("HSET")
        .arg(keys.flow_jobs(&id.to_string()))
        .arg("a:1")
        .arg("done")
        .query_async(&mut c)
        .await
        .unwrap();
    // Two passes later the job is on its queue again.
    let again = take_remote_job(&prefix).await;
    assert_eq!(again.envelope.id, job.envelope.id);
    assert_ne!(again.entry_id, job.entry_id);
    complete(&engine, &again, "3").await;
    assert_eq!(
        engine.wait(id, WAIT).await.unwrap().status,
        FlowStatus::Completed
    );
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_keeps_the_flow_and_its_actor() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .hibernate_after(None)
        .build()
        .await
        .unwrap();
    let id = engine.create(&one_remote_node(), None).await.unwrap();
    let job = take_remote_job(&prefix).await;
    fail::cfg("queue::cleanup", "1*return").unwrap();
    assert!(engine.delete(id).await.is_err());
    fail::cfg("queue::cleanup", "off").unwrap();
    assert_eq!(
        engine.running_flows(),
        1,
        "the failed delete stopped the flow's actor"
    );
    complete(&engine, &job, "5").await;
    assert_eq!(
        engine.wait(id, WAIT).await.unwrap().status,
        FlowStatus::Completed
    );
    engine.delete(id).await.unwrap();
    assert!(matches!(
        engine.get(id).await,
        Err(EngineError::NotFound(_))
    ));
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_delete_that_fails_leaves_the_flow_whole() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let dir = temp_dir();
    let engine = builder(&prefix).data_dir(dir.path()).build().await.unwrap();
    let id = engine
        .create(&spec(json!({"nodes": [{"name": "a", "queue": "remote"}, {"name": "b", "queue": "remote", "parents": ["a"]}]})), None)
        .await
        .unwrap();
    fail::cfg("store::delete", "1*return").unwrap();
    assert!(engine.delete(id).await.is_err());
    fail::cfg("store::delete", "off").unwrap();
    // Nothing of the flow is gone: it reads whole (a record without its spec would
    // answer 500, a flow without its nodes would run again).
    let view = engine.get(id).await.unwrap();
    assert_eq!(view.nodes.len(), 2);
    engine.delete(id).await.unwrap();
    engine.shutdown(Duration::from_secs(5)).await;
    drop(engine);
    let store = dagflow_actors::store::Store::open(dir.path(), 8 << 20).unwrap();
    assert_eq!(store.record_count(), 0, "records left after a delete");
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_in_a_tight_loop_is_coalesced() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 1)
        .handler(
            "chatty",
            handler_fn(|ctx| async move {
                for i in 0..20_000 {
                    ctx.progress(json!(i));
                    if i % 1000 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, JobError>(json!("done"))
            }),
        )
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [{"name": "a", "handler": "chatty"}]})),
            None,
        )
        .await
        .unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    // Each progress value is a transition (seq); 20,000 of them would be 20,000
    // writes, events and tasks. Coalesced, a few per 100 ms of running.
    assert!(
        view.seq < 100,
        "progress was not coalesced: seq {}",
        view.seq
    );
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_redis_loses_is_promoted_for_a_queue_no_engine_worker_serves() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix).build().await.unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [{"name": "a", "queue": "remote",
                "opts": {"attempts": 2, "backoff": {"type": "fixed", "delayMs": 200}}}]})),
            None,
        )
        .await
        .unwrap();
    let first = take_remote_job(&prefix).await;
    let failed = Outcome::Failed {
        message: "try again".into(),
        retryable: true,
        cause: None,
    };
    engine.queue().report_remote(&first, &failed).await.unwrap();
    // The engine serves no worker of `remote`, yet it promotes the due retry.
    let second = take_remote_job(&prefix).await;
    assert_eq!(second.envelope.attempt, 2);
    complete(&engine, &second, "1").await;
    assert_eq!(
        engine.wait(id, WAIT).await.unwrap().status,
        FlowStatus::Completed
    );
    let mut c = conn().await;
    let lease: Option<u64> = redis::cmd("HGET")
        .arg(Keys::new(&prefix).config())
        .arg("leaseMs")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        lease,
        Some(1500),
        "the lease is published for outside workers"
    );
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_hands_its_reports_to_the_restarted_actor() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let runs = Arc::new(AtomicUsize::new(0));
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler("count", counting(Arc::clone(&runs)))
        .build()
        .await
        .unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [{"name": "a", "queue": "remote"},
                {"name": "b", "handler": "count", "parents": ["a"]}]})),
            None,
        )
        .await
        .unwrap();
    let job = take_remote_job(&prefix).await;
    // The flush that would hold `a`'s result fails: the actor restarts from its
    // snapshot, and the report must reach the new actor (report.lua already
    // marked the job done, so re-enqueueing it would be a no-op).
    fail::cfg("writer::flush", "1*return").unwrap();
    complete(&engine, &job, "1").await;
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    assert!(runs.load(Ordering::SeqCst) >= 1);
    nothing_pending(&prefix).await;
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_published_only_after_the_flush_that_holds_it() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix).build().await.unwrap();
    let id = engine.create(&one_remote_node(), None).await.unwrap();
    let job = take_remote_job(&prefix).await;
    let mut events = engine.events();
    // The flush that holds the completion takes a second.
    fail::cfg("writer::flush", "1*sleep(1000)").unwrap();
    let reported = Instant::now();
    complete(&engine, &job, "7").await;
    let event = tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.unwrap();
            if event.flow_id == id {
                return event;
            }
        }
    })
    .await
    .unwrap();
    assert!(
        reported.elapsed() >= Duration::from_millis(900),
        "an event went out {:?} into a one-second flush",
        reported.elapsed()
    );
    assert_eq!(event.seq, engine.get(id).await.unwrap().seq.min(event.seq));
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_of_a_worker_that_failed_is_reclaimed_not_renewed_forever() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let runs = Arc::new(AtomicUsize::new(0));
    let engine = builder(&prefix)
        .queue("default", 1)
        .handler("count", counting(Arc::clone(&runs)))
        .build()
        .await
        .unwrap();
    // The worker actor that takes the first job fails (a bug of the worker, not of
    // the handler). Its fetcher replaces it; the job must leave the set whose
    // leases are renewed, so that it is reclaimed after the lease (1.5 s here).
    fail::cfg("worker::run", "1*panic").unwrap();
    let id = engine
        .create(
            &spec(json!({"nodes": [{"name": "a", "handler": "count"}]})),
            None,
        )
        .await
        .unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_flows_counts_hibernating_flows_too() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .hibernate_after(Some(Duration::from_millis(100)))
        .build()
        .await
        .unwrap();
    let stats = || engine.stats().unwrap().running_flows.load(Ordering::SeqCst);
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(engine.create(&one_remote_node(), None).await.unwrap());
    }
    assert_eq!(stats(), 6);
    eventually("the flows to hibernate", || async {
        engine.running_flows() == 0
    })
    .await;
    assert_eq!(stats(), 6, "hibernating flows still run");
    engine.cancel(ids[0]).await.unwrap();
    engine.delete(ids[1]).await.unwrap();
    assert_eq!(stats(), 4);
    engine.retry(ids[0]).await.unwrap();
    assert_eq!(stats(), 5);
    stop(engine, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_writing_fails_the_batch_not_the_engine() {
    let scenario = fail::FailScenario::setup();
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    fail::cfg("writer::after_apply", "1*panic").unwrap();
    // The batch that panics belongs to some flow's creation or transition: that
    // flow's actor restarts from its snapshot; every flow still completes, and new
    // writes keep being made durable.
    let mut ids = Vec::new();
    for _ in 0..5 {
        if let Ok(id) = engine
            .create(
                &spec(json!({"nodes": [{"name": "a", "handler": "sum"}]})),
                None,
            )
            .await
        {
            ids.push(id);
        }
    }
    for id in &ids {
        assert_eq!(
            engine.wait(*id, WAIT).await.unwrap().status,
            FlowStatus::Completed
        );
    }
    let id = engine
        .create(
            &spec(json!({"nodes": [{"name": "a", "handler": "sum"}]})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        engine.wait(id, WAIT).await.unwrap().status,
        FlowStatus::Completed
    );
    stop(engine, scenario).await;
}
