//! Fair, controlled queues across processes: a real `dagflow serve` (no local
//! workers for the queue under test) and three `dagflow worker` processes on one
//! Redis.
//!
//! - Concurrency keys: 200 jobs over 10 keys with limit 2. Redis's running set of
//!   every key is sampled every few ms, and the jobs' own start and end times are
//!   checked afterwards: never more than 2 of a key at once, and the keys take
//!   turns.
//! - Rate limit: 20 per second, across the three processes, within ±10% over 10 s.
//! - Priorities: under load the high priority goes first and the low one still
//!   progresses (its share turns).
//! - A Redis wipe in the middle: the limits' Redis state is rebuilt from the
//!   engine's snapshots (the running sets stay within their limit while it is),
//!   and every flow completes.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::process::{blocking, Deployment, Proc, ServeArgs, WorkerArgs};
use common::Api;
use dagflow::engine::testing::TestRedis;
use serde_json::{json, Value};

/// Longest a batch of flows gets to finish.
const FINISH: Duration = Duration::from_secs(120);

/// A server without workers for `limited`.
fn deploy(redis: &TestRedis) -> (Deployment, Proc, Api) {
    let mut deployment = Deployment::new(&redis.url);
    let server = deployment.serve(&ServeArgs::new("other=1"));
    let api = Api::new(&server.url, None);
    (deployment, server.proc, api)
}

/// Three worker processes serving `limited` with `concurrency` slots each. Tests
/// start them once their flows exist, so that what runs first does not depend on
/// how fast the flows were created.
fn workers(deployment: &mut Deployment, concurrency: usize) -> Vec<Proc> {
    let queues = format!("limited={concurrency}");
    (0..3)
        .map(|_| deployment.worker(&WorkerArgs::new(&queues)))
        .collect()
}

/// Waits for every flow to complete; returns their views.
async fn all_completed(api: &Api, ids: &[String]) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + FINISH;
    let mut views = Vec::new();
    for id in ids {
        loop {
            let view = api.flow(id).await;
            match view["status"].as_str() {
                Some("completed") => {
                    views.push(view);
                    break;
                }
                Some("running") if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => panic!("flow {id} did not complete: {view}"),
            }
        }
    }
    views
}

/// (started, finished) of the flow's only node, in ms.
fn times(view: &Value) -> (u64, u64) {
    let node = &view["nodes"][0];
    (
        node["startedAt"].as_u64().unwrap(),
        node["finishedAt"].as_u64().unwrap(),
    )
}

/// Samples the size of each key's running set in Redis every 3 ms until `stop`,
/// keeping the largest seen per key.
fn sample_running(
    url: &str,
    prefix: &str,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(HashMap<String, usize>, usize)> {
    let url = url.to_owned();
    let prefix = prefix.to_owned();
    tokio::spawn(async move {
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut most: HashMap<String, usize> = HashMap::new();
        let mut samples = 0;
        while !stop.load(Ordering::SeqCst) {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("ZCARD").arg(format!("{prefix}:ck:{key}:run"));
            }
            if let Ok(counts) = pipe.query_async::<Vec<usize>>(&mut conn).await {
                for (key, n) in keys.iter().zip(counts) {
                    let m = most.entry(key.clone()).or_default();
                    *m = (*m).max(n);
                }
                samples += 1;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        (most, samples)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_never_run_more_than_a_keys_limit_and_keys_take_turns() {
    let redis = blocking(TestRedis::dedicated);
    let (mut deployment, _server, api) = deploy(&redis);
    let keys: Vec<String> = (0..10).map(|k| format!("k{k}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_running(
        &redis.url,
        &deployment.prefix,
        keys.clone(),
        Arc::clone(&stop),
    );
    // 20 jobs per key, created key by key: in one FIFO queue k0's jobs would all
    // run before k1's.
    let mut ids = Vec::new();
    for key in &keys {
        for _ in 0..20 {
            ids.push(
                api.create_flow(&json!({"nodes": [{
                    "name": "job", "handler": "sleep", "queue": "limited",
                    "data": {"ms": 30, "tenant": key},
                    "concurrency": {"key": "data.tenant", "limit": 2}
                }]}))
                .await,
            );
        }
    }
    let _workers = workers(&mut deployment, 4);
    let views = all_completed(&api, &ids).await;
    stop.store(true, Ordering::SeqCst);
    let (most, samples) = sampler.await.unwrap();
    assert!(samples > 100, "only {samples} samples");
    for key in &keys {
        assert!(most.get(key).copied().unwrap_or(0) <= 2, "{most:?}");
    }
    assert!(
        most.values().any(|n| *n == 2),
        "no key ever reached its limit: {most:?}"
    );

    // The jobs' own times: never more than 2 of a key at once.
    let mut by_key: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    let mut starts = Vec::new();
    for view in &views {
        let key = view["nodes"][0]["concurrency"]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        let (start, end) = times(view);
        by_key.entry(key.clone()).or_default().push((start, end));
        starts.push((start, key));
    }
    for (key, spans) in &by_key {
        for (start, _) in spans {
            // A job that ended at the very ms another started has ended.
            let at_once = spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count();
            assert!(
                at_once <= 2,
                "{key}: {at_once} at once at {start}: {spans:?}"
            );
        }
    }
    // Keys take turns: at every point of the start order, the keys with jobs left
    // have started within a few rounds of each other.
    starts.sort();
    let mut started: HashMap<&str, usize> = HashMap::new();
    let mut widest = 0;
    for (_, key) in &starts {
        *started.entry(key).or_default() += 1;
        let left: Vec<usize> = keys
            .iter()
            .map(|k| started.get(k.as_str()).copied().unwrap_or(0))
            .filter(|n| *n < 20)
            .collect();
        if let (Some(most), Some(least)) = (left.iter().max(), left.iter().min()) {
            widest = widest.max(most - least);
        }
    }
    assert!(widest <= 6, "keys drifted {widest} rounds apart");
    only_global_keys(&redis.url, &deployment.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_within_ten_percent_across_processes() {
    let redis = blocking(TestRedis::dedicated);
    let (mut deployment, _server, api) = deploy(&redis);
    let _workers = workers(&mut deployment, 4);
    let mut ids = Vec::new();
    for i in 0..260 {
        ids.push(
            api.create_flow(&json!({"nodes": [{
                "name": "job", "handler": "echo", "queue": "limited", "data": {"i": i},
                "rateLimit": {"key": "'partner-api'", "limit": 20, "perMs": 1000}
            }]}))
            .await,
        );
    }
    let views = all_completed(&api, &ids).await;
    let mut starts: Vec<u64> = views.iter().map(|v| times(v).0).collect();
    starts.sort();
    // Over 10 s after the first second: 200 starts expected.
    let from = starts[0] + 1_000;
    let to = from + 10_000;
    let in_window = starts.iter().filter(|s| **s >= from && **s < to).count();
    assert!(
        (180..=220).contains(&in_window),
        "{in_window} starts in 10 s at 20/s"
    );
    only_global_keys(&redis.url, &deployment.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_the_high_priority_goes_first_and_the_low_one_still_progresses() {
    let redis = blocking(TestRedis::dedicated);
    let (mut deployment, _server, api) = deploy(&redis);
    // Everything is queued before any worker runs.
    let mut ids = Vec::new();
    for i in 0..300 {
        for priority in [1, 8] {
            ids.push(
                api.create_flow(&json!({"nodes": [{
                    "name": "job", "handler": "sleep", "queue": "limited",
                    "priority": priority, "data": {"ms": 2, "i": i}
                }]}))
                .await,
            );
        }
    }
    let _workers = workers(&mut deployment, 2);
    let views = all_completed(&api, &ids).await;
    let mut starts: Vec<(u64, u64)> = views
        .iter()
        .map(|v| (times(v).0, v["nodes"][0]["priority"].as_u64().unwrap()))
        .collect();
    starts.sort();
    let last_high = starts.iter().rposition(|(_, p)| *p == 8).unwrap();
    let low_before = starts[..last_high].iter().filter(|(_, p)| *p == 1).count();
    // 600 jobs: the highs go first, but share turns (1 take in 100 offered to each
    // priority in rotation) give the low priority a few starts meanwhile.
    assert!(last_high < 340, "the last high started at {last_high}");
    assert!(
        low_before >= 2,
        "{low_before} lows started before the last high"
    );
    only_global_keys(&redis.url, &deployment.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_wipe_the_limits_are_rebuilt_from_the_snapshots() {
    let redis = blocking(TestRedis::dedicated);
    let (mut deployment, _server, api) = deploy(&redis);
    let keys: Vec<String> = (0..3).map(|k| format!("w{k}")).collect();
    let mut ids = Vec::new();
    for key in &keys {
        for _ in 0..10 {
            ids.push(
                api.create_flow(&json!({"nodes": [{
                    "name": "job", "handler": "sleep", "queue": "limited",
                    "data": {"ms": 150, "tenant": key},
                    "concurrency": {"key": "data.tenant", "limit": 2}
                }]}))
                .await,
            );
        }
    }
    // Some jobs ran, most wait for their key.
    let finished = Arc::new(AtomicUsize::new(0));
    let _workers = workers(&mut deployment, 4);
    let deadline = tokio::time::Instant::now() + FINISH;
    loop {
        let mut done = 0;
        for id in &ids {
            done += usize::from(api.flow(id).await["status"] == "completed");
        }
        if done >= 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut conn = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let waiting: usize = redis::cmd("ZCARD")
        .arg(format!("{}:ck:w0:wait", deployment.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(waiting > 0, "nothing waited for its key before the wipe");
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_running(
        &redis.url,
        &deployment.prefix,
        keys.clone(),
        Arc::clone(&stop),
    );
    let views = all_completed(&api, &ids).await;
    finished.store(views.len(), Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let (most, _) = sampler.await.unwrap();
    // Rebuilt: every job went back under its key, and the keys' running sets never
    // went past their limit while they were.
    for key in &keys {
        assert!(most.get(key).copied().unwrap_or(0) <= 2, "{most:?}");
    }
    assert!(most.values().any(|n| *n == 2), "{most:?}");
    assert_eq!(finished.load(Ordering::SeqCst), 30);
    only_global_keys(&redis.url, &deployment.prefix).await;
}

/// After every flow completed (and was cleaned up), Redis holds no limit state:
/// no running set, no waiting list, nothing held back, no flow's jobs hash.
async fn only_global_keys(url: &str, prefix: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let keys = dagflow::engine::testing::keys_matching(url, &format!("{prefix}:*")).await;
        let left: Vec<&String> = keys
            .iter()
            .filter(|k| {
                let name = &k[prefix.len() + 1..];
                name.starts_with("ck:")
                    || name.starts_with("fk:")
                    || name.ends_with(":wait")
                    || name.ends_with(":held")
                    || name == "rl:due"
                    || name.starts_with("flow:")
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_of_limits_runs() {
    let redis = blocking(TestRedis::dedicated);
    let mut deployment = Deployment::new(&redis.url);
    let server = deployment.serve(&ServeArgs::new("default=4"));
    let api = Api::new(&server.url, None);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tenants.json");
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = [api.create_flow(&spec).await, api.create_flow(&spec).await];
    let views = all_completed(&api, &ids).await;
    let view = &views[0];
    let node = |name: &str| {
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(node("fetch")["priority"], 3);
    assert_eq!(node("charge")["priority"], 8);
    assert_eq!(node("fetch")["concurrency"]["value"], "acme");
    assert_eq!(node("charge")["rateLimit"]["value"], "payments-api");
    assert_eq!(node("charge")["rateLimit"]["perMs"], 60000);
    // One flow of tenant acme at a time: the second started after the first ended.
    let (a, b) = (&views[0], &views[1]);
    let first_end = a["finishedAt"]
        .as_u64()
        .unwrap()
        .min(b["finishedAt"].as_u64().unwrap());
    let second_start = [a, b]
        .iter()
        .map(|v| v["nodes"][0]["startedAt"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(second_start >= first_end, "the two acme flows overlapped");
    only_global_keys(&redis.url, &deployment.prefix).await;
}
