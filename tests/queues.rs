//! `GET /queues`, `GET /queues/{name}` and the queue gauges of `/metrics`, end to
//! end: a real server (test Redis with a unique prefix, temp sled dir, built-in
//! handlers on queue `default`), jobs put on queues nobody serves so that they stay
//! where the test looks at them, and every answer held against the `/openapi.json`
//! the same server publishes ([`schema::Checked`]).

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/schema.rs"]
mod schema;

use common::*;
use dagflow::engine::testing;
use reqwest::{Method, StatusCode};
use schema::Checked;
use serde_json::{json, Value};

/// `GET /queues/{name}`, asserting 200.
async fn queue(api: &Checked, name: &str) -> Value {
    let (status, body) = api.get(&format!("/queues/{name}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Polls `GET /queues/{name}` until `done` holds, and returns that answer; panics
/// with the last answer after [`WAIT`].
async fn wait_queue(api: &Checked, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = api.get(&format!("/queues/{name}")).await;
        if status == StatusCode::OK && done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting on queue {name}: {status} {body:#}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The ready counts of one priority: `(started, new)`.
fn ready_at(queue: &Value, priority: u64) -> (u64, u64) {
    let entry = queue["ready"]["byPriority"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["priority"] == priority)
        .unwrap_or_else(|| panic!("no priority {priority} in {queue:#}"));
    (
        entry["started"].as_u64().unwrap(),
        entry["new"].as_u64().unwrap(),
    )
}

/// A flow of one node on `queue`, with extra node fields.
fn on_queue(queue: &str, extra: Value) -> Value {
    let mut node = json!({"name": "job", "handler": "noop", "queue": queue});
    for (k, v) in extra.as_object().unwrap() {
        node[k] = v.clone();
    }
    json!({"nodes": [node]})
}

/// The value of the sample `series` (name and labels, exactly) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
}

async fn metrics(api: &Checked) -> String {
    let (status, body) = api.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    body.as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unserved_queue_shows_its_ready_jobs_by_priority_and_no_worker() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    // Roots, first attempts: the `new` lanes of their priority.
    for extra in [
        json!({}),
        json!({}),
        json!({"priority": 9}),
        json!({"priority": 0}),
    ] {
        api.create_flow(&on_queue("gpu", extra)).await;
    }
    let low = on_queue("gpu", json!({}));
    let mut low = low;
    low["opts"] = json!({"priority": 2});
    api.create_flow(&low).await;
    // A child whose parent ran on the served queue: its flow has started.
    let started = json!({"nodes": [
        {"name": "first", "handler": "noop"},
        {"name": "then", "handler": "noop", "queue": "gpu", "parents": ["first"], "priority": 7}
    ]});
    let started_id = api.create_flow(&started).await;
    api.wait_for_node(&started_id, "then", "queued").await;

    let gpu = wait_queue(&api, "gpu", |q| q["ready"]["total"] == 6).await;
    assert_eq!(gpu["name"], "gpu");
    assert_eq!(gpu["workers"], json!([]), "{gpu:#}");
    assert_eq!(gpu["totalConcurrency"], 0);
    assert_eq!(
        (gpu["running"].as_u64(), gpu["delayed"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(gpu["heldBack"], json!([]));
    let priorities: Vec<u64> = gpu["ready"]["byPriority"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["priority"].as_u64().unwrap())
        .collect();
    assert_eq!(
        priorities,
        (0..=9).rev().collect::<Vec<u64>>(),
        "served order"
    );
    assert_eq!(ready_at(&gpu, 9), (0, 1));
    assert_eq!(ready_at(&gpu, 7), (1, 0), "a started flow's job: {gpu:#}");
    assert_eq!(ready_at(&gpu, 5), (0, 2));
    assert_eq!(ready_at(&gpu, 2), (0, 1), "the flow's opts.priority");
    assert_eq!(ready_at(&gpu, 0), (0, 1));
    for p in [8, 6, 4, 3, 1] {
        assert_eq!(ready_at(&gpu, p), (0, 0), "priority {p}");
    }
    // The node view says the same priority.
    let flow = api.flow(&started_id).await;
    assert_eq!(node(&flow, "then")["priority"], 7);
    assert_eq!(node(&flow, "first")["priority"], 5);

    // The listing: `gpu` (known only by its keys) and `default` (served here).
    let (status, list) = api.get("/queues").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "gpu"], "{list:#}");
    let default = &list["queues"][0];
    let workers = default["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{default:#}");
    assert_eq!(workers[0]["concurrency"], 4);
    assert_eq!(default["totalConcurrency"], 4);
    let handlers = workers[0]["handlers"].as_array().unwrap();
    assert!(handlers.contains(&json!("noop")), "{handlers:?}");
    assert!(workers[0]["lastSeenMs"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(list["queues"][1]["ready"]["total"], 6);

    // The gauges agree.
    let text = metrics(&api).await;
    for (series, value) in [
        (
            "dagflow_queue_ready{queue=\"gpu\",priority=\"5\",lane=\"new\"}",
            2.0,
        ),
        (
            "dagflow_queue_ready{queue=\"gpu\",priority=\"7\",lane=\"started\"}",
            1.0,
        ),
        (
            "dagflow_queue_ready{queue=\"gpu\",priority=\"7\",lane=\"new\"}",
            0.0,
        ),
        (
            "dagflow_queue_ready{queue=\"gpu\",priority=\"9\",lane=\"new\"}",
            1.0,
        ),
        ("dagflow_queue_running{queue=\"gpu\"}", 0.0),
        ("dagflow_queue_delayed{queue=\"gpu\"}", 0.0),
        ("dagflow_queue_workers{queue=\"gpu\"}", 0.0),
        ("dagflow_queue_worker_concurrency{queue=\"gpu\"}", 0.0),
        ("dagflow_queue_workers{queue=\"default\"}", 1.0),
        ("dagflow_queue_worker_concurrency{queue=\"default\"}", 4.0),
        (
            "dagflow_queue_held_back{queue=\"gpu\",kind=\"concurrency\"}",
            0.0,
        ),
        ("dagflow_queue_depth{queue=\"gpu\",state=\"ready\"}", 6.0),
        (
            "dagflow_queue_depth{queue=\"default\",state=\"delayed\"}",
            0.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
    assert!(text.contains("# TYPE dagflow_queue_ready gauge"), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_at_their_limit_show_what_they_hold_back() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    // Concurrency key `acme`, one at a time: the first job takes the slot and waits
    // on the unserved queue; the two after it wait for the slot.
    let mut ck_ids = Vec::new();
    for _ in 0..3 {
        let spec = on_queue(
            "tenants",
            json!({"data": {"tenant": "acme"}, "concurrency": {"key": "data.tenant", "limit": 1}}),
        );
        ck_ids.push(api.create_flow(&spec).await);
    }
    // One token a minute for `api`: the first job goes, the next two wait for tokens.
    let before = redis_time_ms(&server).await;
    for _ in 0..3 {
        let spec = on_queue(
            "calls",
            json!({"rateLimit": {"key": "'api'", "limit": 1, "perMs": 60000}}),
        );
        api.create_flow(&spec).await;
    }

    let tenants = wait_queue(&api, "tenants", |q| q["heldBackJobs"] == 2).await;
    assert_eq!(tenants["ready"]["total"], 1, "{tenants:#}");
    assert_eq!(tenants["heldBackKeys"], 1);
    assert_eq!(
        tenants["heldBack"],
        json!([{"kind": "concurrency", "key": "acme", "waiting": 2, "running": 1}])
    );
    let flow = api.flow(&ck_ids[2]).await;
    let job = node(&flow, "job");
    assert_eq!(job["status"], "queued");
    assert_eq!(
        job["concurrency"],
        json!({"key": "data.tenant", "value": "acme", "limit": 1, "strategy": "queue"})
    );

    let calls = wait_queue(&api, "calls", |q| q["heldBackJobs"] == 2).await;
    assert_eq!(calls["ready"]["total"], 1, "{calls:#}");
    let held = &calls["heldBack"][0];
    assert_eq!(held["kind"], "rateLimit");
    assert_eq!(held["key"], "api");
    assert_eq!(held["waiting"], 2);
    assert!(held.get("running").is_none(), "{held}");
    let next = held["nextTokenAt"].as_u64().unwrap();
    let after = redis_time_ms(&server).await;
    // The first job took the only token; the next one frees a minute after it.
    assert!(
        next >= before + 60_000 && next <= after + 60_001,
        "{before} + 60 s <= {next} <= {after} + 60 s"
    );

    let text = metrics(&api).await;
    for (series, value) in [
        (
            "dagflow_queue_held_back{queue=\"tenants\",kind=\"concurrency\"}",
            2.0,
        ),
        (
            "dagflow_queue_held_back{queue=\"tenants\",kind=\"rateLimit\"}",
            0.0,
        ),
        (
            "dagflow_queue_held_back_key{queue=\"tenants\",kind=\"concurrency\",key=\"acme\"}",
            2.0,
        ),
        (
            "dagflow_queue_held_back{queue=\"calls\",kind=\"rateLimit\"}",
            2.0,
        ),
        (
            "dagflow_queue_held_back_key{queue=\"calls\",kind=\"rateLimit\",key=\"api\"}",
            2.0,
        ),
        (
            "dagflow_queue_ready{queue=\"calls\",priority=\"5\",lane=\"new\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }

    // A flow concurrency key of one: the second flow waits for the first, its job
    // held back in its queue.
    for _ in 0..2 {
        let mut spec = on_queue("batches", json!({}));
        spec["opts"] = json!({"concurrency": {"key": "'nightly'", "limit": 1}});
        api.create_flow(&spec).await;
    }
    let batches = wait_queue(&api, "batches", |q| q["heldBackJobs"] == 1).await;
    assert_eq!(batches["ready"]["total"], 1, "{batches:#}");
    assert_eq!(
        batches["heldBack"],
        json!([{"kind": "flowConcurrency", "key": "nightly", "waiting": 1, "running": 1}])
    );
    let text = metrics(&api).await;
    assert_eq!(
        sample(
            &text,
            "dagflow_queue_held_back{queue=\"batches\",kind=\"flowConcurrency\"}"
        ),
        Some(1.0),
        "{text}"
    );

    // Once the flows holding the key's slot end, the key holds nothing back: it
    // leaves the answer and the gauges at once.
    for id in &ck_ids {
        let (status, body) = api.post_empty(&format!("/flows/{id}/cancel")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let tenants = wait_queue(&api, "tenants", |q| q["heldBackKeys"] == 0).await;
    assert_eq!(tenants["heldBack"], json!([]));
    assert_eq!(tenants["ready"]["total"], 0, "{tenants:#}");
    let text = metrics(&api).await;
    assert_eq!(
        sample(
            &text,
            "dagflow_queue_held_back{queue=\"tenants\",kind=\"concurrency\"}"
        ),
        Some(0.0)
    );
    assert!(!text.contains("key=\"acme\""), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_delayed_and_workers_of_other_processes() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    // A job running on `default` (a local worker took it) and a retry waiting a
    // minute for its backoff.
    let nap = api
        .create_flow(&single("sleep", json!({"ms": 60000})))
        .await;
    let retry = json!({"nodes": [{"name": "only", "handler": "fail", "data": {"times": 1},
        "opts": {"attempts": 2, "backoff": {"type": "fixed", "delayMs": 60000}}}]});
    api.create_flow(&retry).await;
    let default = wait_queue(&api, "default", |q| q["running"] == 1 && q["delayed"] == 1).await;
    assert_eq!(default["ready"]["total"], 0, "{default:#}");
    let text = metrics(&api).await;
    assert_eq!(
        sample(&text, "dagflow_queue_running{queue=\"default\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "dagflow_queue_delayed{queue=\"default\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "dagflow_queue_depth{queue=\"default\",state=\"delayed\"}"
        ),
        Some(1.0)
    );
    api.post_empty(&format!("/flows/{nap}/cancel")).await;

    // A worker in another process beats for `py`; one that stopped beating long
    // ago is not listed, though its entry is still in the hash.
    server
        .engine
        .queue()
        .heartbeat(
            "py-worker-1",
            &json!({"queues": [{"name": "py", "concurrency": 3}], "handlers": ["resize"], "intervalMs": 60000}),
        )
        .await
        .unwrap();
    let mut conn = redis_conn(&server).await;
    let stale = json!({"ts": 1000, "queues": [{"name": "py", "concurrency": 8}], "handlers": []});
    redis::cmd("HSET")
        .arg(format!("{}:workers", server.prefix))
        .arg("gone")
        .arg(stale.to_string())
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let py = queue(&api, "py").await;
    assert_eq!(py["ready"]["total"], 0);
    let workers = py["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{py:#}");
    assert_eq!(workers[0]["id"], "py-worker-1");
    assert_eq!(workers[0]["concurrency"], 3);
    assert_eq!(workers[0]["handlers"], json!(["resize"]));
    assert_eq!(py["totalConcurrency"], 3);
    let text = metrics(&api).await;
    assert_eq!(
        sample(&text, "dagflow_queue_workers{queue=\"py\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "dagflow_queue_worker_concurrency{queue=\"py\"}"),
        Some(3.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_queues_are_404_and_the_routes_behave() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let long = "q".repeat(300);
    // (Names of dots alone are dot segments a client removes from the path; three
    // dots are not, and still name no queue.)
    for name in ["never-used", "a:b", "...", "g%2Au", "%ff", &long] {
        let (status, body) = api.get(&format!("/queues/{name}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}: {body}");
        assert_eq!(body["error"]["code"], "unknown_queue", "{name}: {body}");
    }
    // HEAD answers as GET; other methods get 405 with `Allow`.
    for path in ["/queues", "/queues/default"] {
        let (status, headers, body) = api.send_full(api.request(Method::HEAD, path)).await;
        assert_eq!((status, body), (StatusCode::OK, Value::Null), "{path}");
        assert_eq!(headers["content-type"], "application/json");
        let (status, headers, _) = api.send_full(api.request(Method::POST, path)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(headers["allow"], "GET, HEAD, OPTIONS");
    }
    // The document describes both operations, with the engine's name limit.
    let doc = &api.openapi.doc;
    assert!(doc["paths"]["/queues"]["get"].is_object());
    let param = &doc["paths"]["/queues/{name}"]["get"]["parameters"][0];
    assert_eq!(param["schema"]["maxLength"], 256);
    assert!(doc["paths"]["/queues/{name}"]["get"]["responses"]["404"].is_object());
    // Redis gone: 503 with Retry-After, as documented.
    server.stop().await;

    let redis = testing::TestRedis::dedicated();
    let down = start_server(ServerOpts {
        redis_url: Some(redis.url.clone()),
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&down).await;
    assert_eq!(api.get("/queues").await.0, StatusCode::OK);
    redis.stop();
    for path in ["/queues", "/queues/default"] {
        let (status, headers, body) = api.send_full(api.request(Method::GET, path)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert!(headers.contains_key("retry-after"));
    }
    // The scrape still succeeds, without the queue samples.
    let text = metrics(&api).await;
    assert!(text.contains("# TYPE dagflow_queue_ready gauge"));
    assert!(!text.contains("dagflow_queue_ready{"), "{text}");
    redis.start();
    eventually("the queues to answer again", || async {
        api.get("/queues").await.0 == StatusCode::OK
    })
    .await;
    down.stop().await;
}

async fn redis_conn(server: &TestServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The Redis clock, ms (the clock rate limits and heartbeats use).
async fn redis_time_ms(server: &TestServer) -> u64 {
    let mut conn = redis_conn(server).await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    secs * 1000 + micros / 1000
}
