//! Bad days that are not crashes of the engine: Redis going away mid-run, a worker
//! process dying with a job in its hands, a handler that panics.
//!
//! - A Redis outage (10 s) with flows running, on real `dagflow serve` and
//!   `dagflow worker` processes: readiness says not ready, new flows get 503, reads
//!   are still answered from the snapshots, no process dies; Redis comes back empty
//!   and every flow completes with the right results.
//! - A worker process SIGKILLed while it runs long jobs: once their lease (30 s, the
//!   engine's default; the CLI has no flag for it) expires, another worker reclaims
//!   them; a job with `maxStalled: 1` runs again and completes, one with
//!   `maxStalled: 0` fails with a "stalled" error.
//! - A handler that panics (no built-in handler does, so this one runs in-process
//!   with a handler of its own): its job fails, or is retried, and the single worker
//!   of the queue keeps running jobs.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::node;
use common::process::{blocking, Deployment, Proc, ServeArgs, WorkerArgs};
use dagflow::engine::testing::TestRedis;
use dagflow::engine::{handler_fn, Handler, JobError};
use serde_json::{json, Map, Value};

/// Longest one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest flows get to finish.
const FINISH: Duration = Duration::from_secs(90);

/// `dagflow serve` with local workers for `queues`, once it listens; returns it and
/// its base URL.
fn start_server(deployment: &mut Deployment, queues: &str) -> (Proc, String) {
    let server = deployment.serve(&ServeArgs::new(queues));
    (server.proc, server.url)
}

/// `dagflow worker` for `queues`, once it runs.
fn start_worker(deployment: &mut Deployment, queues: &str) -> Proc {
    deployment.worker(&WorkerArgs::new(queues))
}

/// An HTTP client for one server, timing every request.
struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn new(base: &str) -> Http {
        Http {
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap(),
            base: base.to_owned(),
        }
    }

    /// `GET path` → (status, body, how long it took).
    async fn get(&self, path: &str) -> (u16, Value, Duration) {
        let began = Instant::now();
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body, began.elapsed())
    }

    /// `POST /flows` → (status, body).
    async fn post_flow(&self, spec: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/flows", self.base))
            .json(spec)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /flows: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET /flows/{id}`, asserting 200.
    async fn flow(&self, id: &str) -> Value {
        let (status, body, _) = self.get(&format!("/flows/{id}")).await;
        assert_eq!(status, 200, "GET /flows/{id}: {body}");
        body
    }

    /// Polls the flow until `done` says so, for at most `within`.
    async fn wait_flow(
        &self,
        id: &str,
        what: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let flow = self.flow(id).await;
            if done(&flow) {
                return flow;
            }
            assert!(
                Instant::now() < deadline,
                "flow {id} never got {what}: {flow:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Checks every node's result against the expected one (echo nests its parents'
/// results), naming the first difference.
fn assert_results(flow: &Value, expected: &BTreeMap<String, Value>) {
    assert_eq!(flow["status"], "completed", "{flow:#}");
    for (name, want) in expected {
        assert_eq!(&node(flow, name)["result"], want, "node {name} of {flow:#}");
    }
}

// ---------------------------------------------------------------------------------
// Redis outage.
// ---------------------------------------------------------------------------------

/// A flow that runs for several seconds on both queues (`default` on the server,
/// `other` on the worker), with what each node must end with.
fn outage_flow(i: usize) -> (Value, BTreeMap<String, Value>) {
    let sleep_queue = ["default", "other"][i % 2];
    let nodes = vec![
        (
            "a",
            "echo",
            "default",
            json!({"flow": i, "node": "a"}),
            vec![],
        ),
        ("s1", "sleep", "default", json!({"ms": 1500}), vec!["a"]),
        ("s2", "sleep", "other", json!({"ms": 2000}), vec!["a"]),
        (
            "m",
            "echo",
            "other",
            json!({"flow": i, "node": "m"}),
            vec!["s1", "s2"],
        ),
        ("t", "sleep", sleep_queue, json!({"ms": 2500}), vec!["m"]),
        (
            "z",
            "echo",
            "default",
            json!({"flow": i, "node": "z"}),
            vec!["m", "t", "a"],
        ),
    ];
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    let mut specs = Vec::new();
    for (name, handler, queue, data, parents) in nodes {
        let result = match handler {
            "sleep" => json!({"sleptMs": data["ms"]}),
            _ => {
                let parents: Map<String, Value> = parents
                    .iter()
                    .map(|p| (p.to_string(), expected[*p].clone()))
                    .collect();
                json!({"data": data, "parents": parents})
            }
        };
        expected.insert(name.to_owned(), result);
        specs.push(json!({
            "name": name, "handler": handler, "queue": queue, "data": data, "parents": parents,
        }));
    }
    (
        json!({"name": format!("outage-{i}"), "nodes": specs}),
        expected,
    )
}

/// How long Redis stays down.
const OUTAGE: Duration = Duration::from_secs(10);
/// How long after Redis went down the server must say so (readiness, 503): its
/// watchdog looks every 500 ms, and a refused connection fails at once.
const NOTICE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_refuses_new_flows_keeps_reads_and_every_flow_completes() {
    let redis = blocking(TestRedis::dedicated);
    let mut deployment = Deployment::new(&redis.url);
    let (mut server, url) = blocking(|| start_server(&mut deployment, "default=4"));
    let mut worker = blocking(|| start_worker(&mut deployment, "other=4"));
    let http = Http::new(&url);

    let mut flows: Vec<(String, BTreeMap<String, Value>)> = Vec::new();
    for i in 0..6 {
        let (spec, expected) = outage_flow(i);
        let (status, body) = http.post_flow(&spec).await;
        assert_eq!(status, 201, "{body}");
        flows.push((body["flowId"].as_str().unwrap().to_owned(), expected));
    }
    // Stop Redis with every flow past its first node and jobs running.
    for (id, _) in &flows {
        http.wait_flow(id, "a running sleep", FINISH, |f| {
            node(f, "a")["status"] == "completed"
                && (node(f, "s1")["status"] == "active" || node(f, "s2")["status"] == "active")
        })
        .await;
    }
    let before: HashMap<String, Value> = {
        let mut m = HashMap::new();
        for (id, _) in &flows {
            m.insert(id.clone(), http.flow(id).await);
        }
        m
    };

    blocking(|| redis.stop());
    let stopped = Instant::now();
    let mut not_ready_after: Option<Duration> = None;
    let mut refused_after: Option<Duration> = None;
    let mut accepted_during_outage = Vec::new();
    let (mut reads, mut slowest_read) = (0usize, Duration::ZERO);
    let mut extra = 100;
    while stopped.elapsed() < OUTAGE {
        let now = stopped.elapsed();
        let (status, body, _) = http.get("/readyz").await;
        match (status, not_ready_after) {
            (503, None) => {
                assert_eq!(body["error"]["code"], "not_ready", "{body}");
                assert_ne!(body["error"]["details"]["checks"]["redis"], "ok", "{body}");
                assert_eq!(body["error"]["details"]["checks"]["store"], "ok", "{body}");
                not_ready_after = Some(now);
            }
            (503, Some(_)) => {}
            (200, None) => assert!(now < NOTICE, "still ready {now:?} into the outage: {body}"),
            _ => panic!("/readyz answered {status} {now:?} into the outage: {body}"),
        }

        let (spec, expected) = outage_flow(extra);
        let (status, body) = http.post_flow(&spec).await;
        match (status, refused_after) {
            (503, _) => {
                assert_eq!(body["error"]["code"], "redis_unavailable", "{body}");
                refused_after.get_or_insert(now);
            }
            // The watchdog has not noticed yet: the flow is accepted, kept on disk,
            // and must complete once Redis is back like the others.
            (201, None) if now < NOTICE => {
                accepted_during_outage
                    .push((body["flowId"].as_str().unwrap().to_owned(), expected));
                extra += 1;
            }
            _ => panic!("POST /flows answered {status} {now:?} into the outage: {body}"),
        }

        // Reads come from the snapshots, without Redis, and promptly.
        for (id, _) in &flows {
            let (status, flow, took) = http.get(&format!("/flows/{id}")).await;
            assert_eq!(status, 200, "GET /flows/{id} during the outage: {flow}");
            assert_eq!(flow["id"], id.as_str());
            assert!(
                flow["seq"].as_u64() >= before[id]["seq"].as_u64(),
                "a read went back in time: {flow:#}"
            );
            reads += 1;
            slowest_read = slowest_read.max(took);
        }
        let (status, _, _) = http.get("/healthz").await;
        assert_eq!(status, 200, "liveness during the outage");
        server.assert_alive("during the outage");
        worker.assert_alive("during the outage");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let not_ready_after = not_ready_after.expect("/readyz never said not ready");
    let refused_after = refused_after.expect("POST /flows was never refused");
    assert!(not_ready_after < NOTICE, "{not_ready_after:?}");
    assert!(refused_after < NOTICE, "{refused_after:?}");
    // Far below the 30 s an API call may wait for a flow actor: reads do not wait
    // for Redis. (Generous, for a busy CI machine.)
    assert!(
        slowest_read < Duration::from_secs(5),
        "a read took {slowest_read:?} during the outage"
    );

    // Redis comes back without its data.
    blocking(|| redis.start());
    let back = Instant::now();
    let deadline = back + Duration::from_secs(30);
    loop {
        let (status, body, _) = http.get("/readyz").await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready after Redis came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_again = back.elapsed();
    // New flows are taken again once the watchdog saw Redis back.
    let (spec, expected) = outage_flow(extra);
    loop {
        let (status, body) = http.post_flow(&spec).await;
        if status == 201 {
            flows.push((body["flowId"].as_str().unwrap().to_owned(), expected));
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "flows still refused: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accepting_again = back.elapsed();
    flows.extend(accepted_during_outage.iter().cloned());
    for (id, expected) in &flows {
        let flow = http
            .wait_flow(id, "an end", FINISH, |f| f["status"] != "running")
            .await;
        assert_results(&flow, expected);
    }
    let completed_after = back.elapsed();
    server.assert_alive("after the outage");
    worker.assert_alive("after the outage");
    drop(server);
    drop(worker);
    let runs = blocking(|| deployment.finish());
    let duplicates: u32 = runs.values().map(|n| n.saturating_sub(1)).sum();
    println!(
        "outage: redis down {:.1}s; readyz 503 after {} ms, POST /flows 503 after {} ms \
         ({} accepted before that); {reads} reads during the outage, slowest {} ms; \
         ready {} ms and accepting {} ms after redis came back (empty); {} flows completed \
         {:.1}s after it; duplicate executions {duplicates}",
        OUTAGE.as_secs_f64(),
        not_ready_after.as_millis(),
        refused_after.as_millis(),
        accepted_during_outage.len(),
        slowest_read.as_millis(),
        ready_again.as_millis(),
        accepting_again.as_millis(),
        flows.len(),
        completed_after.as_secs_f64(),
    );
}

// ---------------------------------------------------------------------------------
// A worker that dies with its jobs.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_jobs_are_reclaimed_after_the_lease_or_fail_as_stalled() {
    let redis = blocking(TestRedis::dedicated);
    let mut deployment = Deployment::new(&redis.url);
    // The server does not serve `slow`: only worker processes run those jobs.
    let (server, url) = blocking(|| start_server(&mut deployment, "default=2"));
    let mut doomed = blocking(|| start_worker(&mut deployment, "slow=2"));
    let http = Http::new(&url);
    let spec = json!({"name": "stalls", "nodes": [
        {"name": "again", "handler": "sleep", "queue": "slow", "data": {"ms": 3000},
         "opts": {"maxStalled": 1}},
        {"name": "never", "handler": "sleep", "queue": "slow", "data": {"ms": 600_000},
         "opts": {"maxStalled": 0}},
        {"name": "after", "handler": "echo", "parents": ["again"], "data": {"n": 1}}
    ]});
    let (status, body) = http.post_flow(&spec).await;
    assert_eq!(status, 201, "{body}");
    let id = body["flowId"].as_str().unwrap().to_owned();
    http.wait_flow(&id, "both slow jobs running", FINISH, |f| {
        node(f, "again")["status"] == "active" && node(f, "never")["status"] == "active"
    })
    .await;
    blocking(|| doomed.kill());
    let killed = Instant::now();
    let rescuer = blocking(|| start_worker(&mut deployment, "slow=2"));

    let flow = http
        .wait_flow(&id, "an end", FINISH, |f| f["status"] != "running")
        .await;
    let ended_after = killed.elapsed();
    assert_eq!(flow["status"], "failed", "{flow:#}");
    let again = node(&flow, "again");
    assert_eq!(again["status"], "completed", "{flow:#}");
    assert_eq!(again["result"], json!({"sleptMs": 3000}));
    assert_eq!(again["attempt"], 1, "a reclaim is not a new attempt");
    assert_eq!(
        node(&flow, "after")["result"],
        json!({"data": {"n": 1}, "parents": {"again": {"sleptMs": 3000}}})
    );
    let never = node(&flow, "never");
    assert_eq!(never["status"], "failed", "{flow:#}");
    let error = never["error"].as_str().unwrap();
    assert!(error.contains("stalled"), "{error}");
    // The jobs were renewed at most lease/3 (10 s) before the kill, so nothing can
    // have been reclaimed sooner than 20 s after it.
    assert!(
        ended_after >= Duration::from_secs(20),
        "reclaimed {ended_after:?} after the kill, before the lease expired"
    );

    // Every process must be gone before its whole log can be read.
    drop((server, rescuer, doomed));
    let runs = blocking(|| deployment.finish());
    let job = |n: &str| format!("{id}:{n}:1");
    assert_eq!(
        runs.get(&job("again")),
        Some(&2),
        "ran in the killed worker, then in the rescuer: {runs:?}"
    );
    assert_eq!(
        runs.get(&job("never")),
        Some(&1),
        "a stalled job is failed, not run again: {runs:?}"
    );
    println!(
        "stalled: jobs of the killed worker reclaimed {:.1}s after the kill (lease 30 s); \
         maxStalled 1 ran again and completed, maxStalled 0 failed: {error}",
        ended_after.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------
// A handler that panics.
// ---------------------------------------------------------------------------------

/// How the panics of [`panicky`] begin.
const PANIC_MESSAGE: &str = "boom at attempt";

/// Panics while `attempt <= data.times`, then returns `{"attempt": n}`.
fn panicky() -> Arc<dyn Handler> {
    Arc::new(handler_fn(|ctx| async move {
        let times = ctx.data["times"].as_u64().unwrap_or(u64::MAX);
        if u64::from(ctx.attempt) <= times {
            panic!("{PANIC_MESSAGE} {}", ctx.attempt);
        }
        Ok::<_, JobError>(json!({"attempt": ctx.attempt}))
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_its_job_not_the_worker_pool() {
    // The panics below are expected: keep their messages and backtraces out of the
    // test output, and let every other panic through as usual.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let ours = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.starts_with(PANIC_MESSAGE));
        if !ours {
            default_hook(info);
        }
    }));
    // One worker for the queue: if a panic took it down, nothing would run after.
    let server = common::start_server(common::ServerOpts {
        queues: vec![("default".to_owned(), 1)],
        handlers: vec![("panicky".to_owned(), panicky())],
        ..common::ServerOpts::default()
    })
    .await;
    let api = server.api();

    // Panics on its first attempt, succeeds on the retry.
    let recovers = api
        .create_flow(&json!({"nodes": [
            {"name": "p", "handler": "panicky", "data": {"times": 1},
             "opts": {"attempts": 2, "backoff": {"type": "fixed", "delayMs": 50}}},
            {"name": "e", "handler": "echo", "parents": ["p"], "data": 1}
        ]}))
        .await;
    // Panics on every attempt: fails with the panic's message.
    let fails = api
        .create_flow(&json!({"nodes": [
            {"name": "q", "handler": "panicky", "data": {"times": 99},
             "opts": {"attempts": 2, "backoff": {"type": "fixed", "delayMs": 50}}},
            {"name": "skipped", "handler": "echo", "parents": ["q"]}
        ]}))
        .await;

    let flow = api.wait_for_status(&recovers, "completed").await;
    let p = node(&flow, "p");
    assert_eq!(p["attempt"], 2, "{flow:#}");
    assert_eq!(p["result"], json!({"attempt": 2}));
    assert_eq!(
        node(&flow, "e")["result"],
        json!({"data": 1, "parents": {"p": {"attempt": 2}}})
    );

    let flow = api.wait_for_status(&fails, "failed").await;
    let q = node(&flow, "q");
    assert_eq!(q["status"], "failed");
    assert_eq!(q["attempt"], 2, "a panic is retryable: {flow:#}");
    let error = q["error"].as_str().unwrap();
    assert!(error.contains("handler panicked"), "{error}");
    assert!(error.contains("boom at attempt 2"), "{error}");
    assert_eq!(node(&flow, "skipped")["status"], "skipped");

    // The queue's only worker still runs jobs.
    let after = api
        .create_flow(&json!({"nodes": [
            {"name": "a", "handler": "echo", "data": "still here"},
            {"name": "b", "handler": "echo", "parents": ["a"]}
        ]}))
        .await;
    let flow = api.wait_for_status(&after, "completed").await;
    assert_eq!(
        node(&flow, "b")["result"]["parents"]["a"]["data"],
        "still here"
    );
    server.stop().await;
}
