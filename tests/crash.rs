//! The crash test: real `dagflow serve` and `dagflow worker` processes on a Redis of
//! their own, running a seeded mix of flows (chains, diamonds, wide fan-out/fan-in,
//! random DAGs, nodes that fail before they succeed, sleeps that keep jobs running)
//! while the test SIGKILLs the server (and restarts it on the same data dir),
//! SIGKILLs workers (and starts new ones) and restarts Redis empty. At the end every
//! flow must have completed with exactly the results computed here: `echo` returns
//! its input, so a node's result nests the results of all its ancestors, and one
//! wrong or missing edge anywhere shows.
//!
//! Every handler run logs `running job job=<id>` (debug, target
//! `dagflow_actors::actors::worker`); the test counts them in the stderr of every
//! process it started, killed ones included, and reports how many ran more than
//! once (delivery is at-least-once). Every flow is submitted with an
//! Idempotency-Key (retried with it through the crashes) and a name of its own, and
//! the test counts the flows of each name through `GET /flows` (every page): each
//! key must have made exactly one flow, the one it was answered. It prints one line:
//! `crash: flows N, kills K, lost 0, wrong 0, duplicate executions D, keys not listed
//! as exactly their one flow 0`.
//!
//! Every third flow also names a callback (`opts.notify`) to an HTTP receiver in
//! the test; at the end each of those flows' callback must have arrived at least
//! once, signed, through all the kills (`callbacks lost 0`).
//!
//! A second test cuts one snapshot write short, as a crash can (sled writes its log
//! buffers out as they fill, so part of a write may be on disk before the flush
//! that covers it), and checks that the flow still completes.
//!
//! A schedule fires every two seconds (`catchUp: "all"`) through all the kills:
//! each tick must have fired exactly once, none lost (see [`ScheduleCheck`]).
//!
//! `DAGFLOW_SOAK=1` runs a larger and longer version (`DAGFLOW_SOAK_FLOWS` flows,
//! 400 by default); `DAGFLOW_CRASH_SEED` replays a run.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::http::{get, ids_by_name, list_all};
use common::process::{blocking, Deployment, Proc, ServeArgs, Server, WorkerArgs};
use common::receiver::Receiver;
use common::rng::{clock_seed, Rng};
use dagflow::engine::store::{NodeRecord, Store, WriteOp, DEFAULT_CACHE_BYTES};
use dagflow::engine::testing::{self, TestRedis};
use dagflow::engine::{Engine, FlowStatus, NodeIdx, NodeStatus};
use serde_json::{json, Map, Value};

/// `--hibernate-after` of the servers: short, so that hibernation and waking run
/// all through the test.
const HIBERNATE_AFTER: &str = "300ms";
/// Longest one HTTP request may take before it is given up and retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a flow submission may keep failing (server restarting, Redis down).
const SUBMIT_DEADLINE: Duration = Duration::from_secs(120);

/// How big a run is.
struct Size {
    /// Flows submitted.
    flows: usize,
    /// SIGKILLs of the server (each followed by a restart on the same data dir).
    server_kills: usize,
    /// SIGKILLs of a worker process (each followed by a new one).
    worker_kills: usize,
    /// Restarts of Redis, empty.
    redis_restarts: usize,
    /// Everything at once, as in a power loss: server and workers SIGKILLed, Redis
    /// restarted empty, then all of them started again.
    power_losses: usize,
    /// Pause between two flow submissions, ms (inclusive range).
    submit_pause: (u64, u64),
    /// How long the flows get to finish once the chaos is over. A worker killed at
    /// the end leaves its jobs to be reclaimed after the lease (30 s, plus up to 15 s
    /// until the next reclaim scan).
    drain: Duration,
}

impl Size {
    fn from_env() -> (Size, bool) {
        let soak = std::env::var("DAGFLOW_SOAK").is_ok_and(|v| !v.is_empty() && v != "0");
        if !soak {
            return (
                Size {
                    flows: 40,
                    server_kills: 4,
                    worker_kills: 2,
                    redis_restarts: 1,
                    power_losses: 1,
                    submit_pause: (200, 1000),
                    drain: Duration::from_secs(120),
                },
                false,
            );
        }
        let flows: usize = std::env::var("DAGFLOW_SOAK_FLOWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400);
        // About one action every 2.5 s over the time the submissions take.
        let actions = (flows * 600 / 2500).max(10);
        (
            Size {
                flows,
                server_kills: actions / 2,
                worker_kills: actions * 3 / 10,
                redis_restarts: (actions / 6).max(2),
                power_losses: (actions / 12).max(1),
                submit_pause: (200, 1000),
                drain: Duration::from_secs(300),
            },
            true,
        )
    }
}

// ---------------------------------------------------------------------------------
// Flows and their expected results.
// ---------------------------------------------------------------------------------

/// One node as the generator builds it.
struct GenNode {
    name: String,
    parents: Vec<String>,
    /// The node's spec (JSON).
    spec: Value,
    /// What its result must be, given its parents' expected results.
    expect: Expect,
}

/// How a node's result follows from its definition.
enum Expect {
    /// `echo`: `{"data": data, "parents": {p: result of p}}`.
    Echo(Value),
    /// `sleep`: `{"sleptMs": ms}`.
    Sleep(u64),
    /// `fail` with `times`: succeeds on attempt `times + 1` with `{"attempt": n}`.
    Fail(u64),
    /// A durable timer: `{"firedAt": <time>}`, any time.
    Timer,
    /// A map over its first parent's `data.items`, each element `echo`.
    Map(Value),
}

/// Stands for "any number" in an expected result (a timer's firing time).
const ANY_NUMBER: &str = "<any number>";

/// Whether a result fits its expectation: equal, except that [`ANY_NUMBER`] takes
/// any number.
fn fits(result: &Value, expected: &Value) -> bool {
    match (result, expected) {
        (r, Value::String(s)) if s == ANY_NUMBER => r.is_number(),
        (Value::Object(r), Value::Object(e)) => {
            r.len() == e.len()
                && e.iter()
                    .all(|(k, v)| r.get(k).is_some_and(|rv| fits(rv, v)))
        }
        (Value::Array(r), Value::Array(e)) => {
            r.len() == e.len() && r.iter().zip(e).all(|(rv, ev)| fits(rv, ev))
        }
        (r, e) => r == e,
    }
}

/// A flow to submit and the result every node must end with.
struct GenFlow {
    spec: Value,
    expected: BTreeMap<String, Value>,
}

/// Builds a node with a random handler and queue.
fn gen_node(rng: &mut Rng, flow: usize, name: String, parents: Vec<String>) -> GenNode {
    let queue = if rng.chance(30) { "other" } else { "default" };
    let roll = rng.next() % 100;
    if roll >= 95 && !parents.is_empty() {
        // A durable timer between jobs: it survives the kills in the snapshot.
        let spec = json!({
            "name": name,
            "parents": parents,
            "wait": { "forMs": rng.range(300, 3000) },
        });
        return GenNode {
            name,
            parents,
            spec,
            expect: Expect::Timer,
        };
    }
    let (handler, data, opts, expect) = if roll < 14 {
        let ms = rng.range(200, 1500);
        ("sleep", json!({ "ms": ms }), Value::Null, Expect::Sleep(ms))
    } else if roll < 28 {
        let times = rng.range(1, 2);
        (
            "fail",
            json!({ "times": times, "message": "flaky on purpose" }),
            json!({ "attempts": 3, "backoff": { "type": "fixed", "delayMs": 100 } }),
            Expect::Fail(times),
        )
    } else {
        let data = json!({ "flow": flow, "node": name, "x": rng.next() % 1_000_000 });
        ("echo", data.clone(), Value::Null, Expect::Echo(data))
    };
    let mut spec = json!({
        "name": name,
        "handler": handler,
        "queue": queue,
        "parents": parents,
        "data": data,
    });
    if !opts.is_null() {
        spec["opts"] = opts;
    }
    // Priorities and limits go through the kills too: a job's slot, its place
    // among the waiting, and the lanes are Redis's, rebuilt from the snapshots
    // after the empty Redis.
    if rng.chance(30) {
        spec["priority"] = json!(rng.range(0, 9));
    }
    if rng.chance(25) {
        let key = format!("'crash-{}'", rng.next() % 4);
        spec["concurrency"] = json!({ "key": key, "limit": 2 });
    }
    if rng.chance(10) {
        spec["rateLimit"] = json!({ "key": "'crash-rate'", "limit": 200, "perMs": 1000 });
    }
    GenNode {
        name,
        parents,
        spec,
        expect,
    }
}

/// The `index`th flow of the run: a chain, a diamond, a fan-out/fan-in or a random
/// DAG. Nodes come in topological order.
fn gen_flow(rng: &mut Rng, index: usize) -> GenFlow {
    let mut nodes: Vec<GenNode> = Vec::new();
    let kind = rng.next() % 5;
    let kind_name = match kind {
        0 => {
            let len = rng.range(3, 8) as usize;
            for i in 0..len {
                let parents = if i == 0 {
                    vec![]
                } else {
                    vec![format!("c{}", i - 1)]
                };
                nodes.push(gen_node(rng, index, format!("c{i}"), parents));
            }
            "chain"
        }
        1 => {
            let width = rng.range(2, 4) as usize;
            nodes.push(gen_node(rng, index, "top".into(), vec![]));
            let mut middle = Vec::new();
            for i in 0..width {
                let name = format!("mid{i}");
                nodes.push(gen_node(rng, index, name.clone(), vec!["top".into()]));
                middle.push(name);
            }
            nodes.push(gen_node(rng, index, "bottom".into(), middle));
            "diamond"
        }
        2 => {
            let width = rng.range(8, 24) as usize;
            nodes.push(gen_node(rng, index, "root".into(), vec![]));
            let mut leaves = Vec::new();
            for i in 0..width {
                let name = format!("leaf{i}");
                nodes.push(gen_node(rng, index, name.clone(), vec!["root".into()]));
                leaves.push(name);
            }
            nodes.push(gen_node(rng, index, "sink".into(), leaves));
            "fan"
        }
        3 => {
            // A map over a list only known at run time, crashed in the middle.
            let count = rng.range(0, 40) as usize;
            let items: Vec<u64> = (0..count).map(|_| rng.next() % 1000).collect();
            let data = json!({ "flow": index, "items": items });
            nodes.push(GenNode {
                name: "list".into(),
                parents: vec![],
                spec: json!({"name": "list", "handler": "echo", "data": data}),
                expect: Expect::Echo(data),
            });
            let queue = if rng.chance(50) { "other" } else { "default" };
            let each_data = json!({ "flow": index, "node": "each" });
            nodes.push(GenNode {
                name: "each".into(),
                parents: vec!["list".into()],
                spec: json!({
                    "name": "each", "handler": "echo", "queue": queue,
                    "parents": ["list"], "data": each_data,
                    "map": {"from": "list", "path": "/data/items", "maxParallel": rng.range(1, 8)},
                }),
                expect: Expect::Map(each_data),
            });
            nodes.push(gen_node(rng, index, "gather".into(), vec!["each".into()]));
            "map"
        }
        _ => {
            let n = rng.range(5, 12) as usize;
            for i in 0..n {
                let mut parents: Vec<String> = Vec::new();
                if i > 0 {
                    for _ in 0..rng.range(1, 3) {
                        let p = format!("r{}", rng.next() as usize % i);
                        if !parents.contains(&p) {
                            parents.push(p);
                        }
                    }
                }
                nodes.push(gen_node(rng, index, format!("r{i}"), parents));
            }
            "random"
        }
    };
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    for node in &nodes {
        let result = match &node.expect {
            Expect::Echo(data) => {
                let parents: Map<String, Value> = node
                    .parents
                    .iter()
                    .map(|p| (p.clone(), expected[p].clone()))
                    .collect();
                json!({ "data": data, "parents": parents })
            }
            Expect::Sleep(ms) => json!({ "sleptMs": ms }),
            Expect::Fail(times) => json!({ "attempt": times + 1 }),
            Expect::Timer => json!({ "firedAt": ANY_NUMBER }),
            Expect::Map(data) => {
                let source = &node.parents[0];
                // An element gets its map's parents but the source (its item is
                // its piece of it).
                let parents: Map<String, Value> = node
                    .parents
                    .iter()
                    .filter(|p| *p != source)
                    .map(|p| (p.clone(), expected[p].clone()))
                    .collect();
                let items = expected[source]["data"]["items"]
                    .as_array()
                    .unwrap()
                    .clone();
                let results: Vec<Value> = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| {
                        json!({ "data": data, "parents": parents, "item": item, "index": i })
                    })
                    .collect();
                for (i, r) in results.iter().enumerate() {
                    expected.insert(format!("{}[{i}]", node.name), r.clone());
                }
                Value::Array(results)
            }
        };
        expected.insert(node.name.clone(), result);
    }
    let spec = json!({
        "name": format!("crash-{index}-{kind_name}"),
        "nodes": nodes.iter().map(|n| n.spec.clone()).collect::<Vec<_>>(),
    });
    GenFlow { spec, expected }
}

// ---------------------------------------------------------------------------------
// Processes.
// ---------------------------------------------------------------------------------

/// Queues of the server's local workers: it runs `default` only, so that the nodes
/// on `other` always go through worker processes and the completions stream.
const SERVER_QUEUES: &str = "default=8";
/// Queues of each worker process.
const WORKER_QUEUES: &str = "default=4,other=4";

/// How every server of the test starts: on the deployment's data dir, flows
/// waiting on a sleep or a backoff hibernating and being woken by their reports,
/// cancels and resyncs, all under the kills.
fn server_args() -> ServeArgs {
    ServeArgs {
        hibernate_after: Some(HIBERNATE_AFTER.to_owned()),
        shutdown_timeout: Some("5s".to_owned()),
        env: vec![(
            "DAGFLOW_WEBHOOK_SECRET".to_owned(),
            CALLBACK_SECRET.to_owned(),
        )],
        ..ServeArgs::new(SERVER_QUEUES)
    }
}

// ---------------------------------------------------------------------------------
// Callbacks.
// ---------------------------------------------------------------------------------

/// `--webhook-secret` of every server of the test.
const CALLBACK_SECRET: &str = "crash-callback-secret";

/// The receiver path of flow `i`'s callback, for every third flow.
fn callback_path(i: usize) -> Option<String> {
    i.is_multiple_of(3).then(|| format!("/ok/crash-{i}"))
}

/// The flows whose callback never arrived signed, as "completed", with their id:
/// a description of each.
fn missing_callbacks(receiver: &Receiver, ids: &[String]) -> Vec<String> {
    use hmac::Mac;
    let hits = receiver.hits();
    ids.iter()
        .enumerate()
        .filter_map(|(i, id)| Some((callback_path(i)?, id)))
        .filter(|(path, id)| {
            !hits.iter().any(|h| {
                let mut mac =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(CALLBACK_SECRET.as_bytes()).unwrap();
                mac.update(&h.body);
                let signed = format!("sha256={:x}", mac.finalize().into_bytes());
                &h.path == path
                    && h.header("x-dagflow-flow") == id.as_str()
                    && h.header("x-dagflow-event") == "completed"
                    && h.header("x-dagflow-signature") == signed
            })
        })
        .map(|(path, id)| format!("flow {id}: no signed callback on {path}"))
        .collect()
}

/// How every worker process of the test starts.
fn worker_args() -> WorkerArgs {
    WorkerArgs {
        shutdown_timeout: Some("5s".to_owned()),
        ..WorkerArgs::new(WORKER_QUEUES)
    }
}

// ---------------------------------------------------------------------------------
// HTTP.
// ---------------------------------------------------------------------------------

/// Submits a flow with an idempotency key, retrying through server restarts and
/// Redis outages (the key makes a retry of a request that did create the flow
/// return that flow). Returns the flow id.
async fn submit(client: &reqwest::Client, url: &RwLock<String>, spec: &Value, key: &str) -> String {
    let deadline = Instant::now() + SUBMIT_DEADLINE;
    let mut last = String::new();
    while Instant::now() < deadline {
        let base = url.read().unwrap().clone();
        let sent = client
            .post(format!("{base}/flows"))
            .header("Idempotency-Key", key)
            .json(spec)
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                match status {
                    201 => return body["flowId"].as_str().unwrap().to_owned(),
                    // Redis down, engine stopping, a timeout while it restarts.
                    503 => last = format!("503 {body}"),
                    _ => panic!("POST /flows answered {status}: {body}\nspec: {spec}"),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("flow {key} could not be submitted in {SUBMIT_DEADLINE:?}; last: {last}");
}

/// Ids of the flows still running (every page).
async fn running_flows(client: &reqwest::Client, base: &str) -> Option<Vec<String>> {
    let flows = list_all(client, base, Some("running")).await?;
    flows
        .iter()
        .map(|f| f["id"].as_str().map(str::to_owned))
        .collect()
}

/// The flows submitted last (the ones most likely still running).
fn recent(submitted: &Mutex<Vec<String>>) -> Vec<String> {
    let ids = submitted.lock().unwrap();
    ids.iter().rev().take(25).cloned().collect()
}

/// The flows as a client sees them now (those the server answers for).
async fn observe(client: &reqwest::Client, base: &str, ids: &[String]) -> Vec<Value> {
    let mut seen = Vec::new();
    for id in ids {
        if let Some((200, flow)) = get(client, base, &format!("/flows/{id}")).await {
            seen.push(flow);
        }
    }
    seen
}

/// Compares flows seen before a crash with what the restarted server shows: the
/// same flow, a `seq` no lower, and every node that had ended ended the same way
/// with the same result. Returns what was taken back.
async fn compare_after_crash(client: &reqwest::Client, base: &str, seen: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for before in seen {
        let id = before["id"].as_str().unwrap();
        let Some((200, after)) = get(client, base, &format!("/flows/{id}")).await else {
            problems.push(format!("flow {id} was seen before the crash, not after it"));
            continue;
        };
        if after["seq"].as_u64() < before["seq"].as_u64() {
            problems.push(format!(
                "flow {id}: seq {} before the crash, {} after it",
                before["seq"], after["seq"]
            ));
        }
        if before["status"] != "running" && after["status"] != before["status"] {
            problems.push(format!(
                "flow {id}: {} before the crash, {} after it",
                before["status"], after["status"]
            ));
        }
        let nodes_after = after["nodes"].as_array().unwrap();
        for node in before["nodes"].as_array().unwrap() {
            let ended = matches!(
                node["status"].as_str(),
                Some("completed" | "failed" | "skipped" | "cancelled")
            );
            if !ended {
                continue;
            }
            let same = nodes_after.iter().find(|n| n["name"] == node["name"]);
            let kept = same.is_some_and(|n| {
                n["status"] == node["status"]
                    && n["result"] == node["result"]
                    && n["attempt"] == node["attempt"]
            });
            if !kept {
                problems.push(format!(
                    "flow {id} node {}: {node} before the crash, {:?} after it",
                    node["name"], same
                ));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------

/// What the chaos does next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chaos {
    KillServer,
    KillWorker,
    RestartRedis,
    PowerLoss,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_survive_killed_servers_killed_workers_and_an_empty_redis() {
    let (size, soak) = Size::from_env();
    let seed = std::env::var("DAGFLOW_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(clock_seed);
    println!(
        "crash: seed {seed}{} (DAGFLOW_CRASH_SEED={seed} replays it)",
        if soak { ", soak" } else { "" }
    );
    let began = Instant::now();
    let mut rng = Rng(seed);
    let flows: Vec<GenFlow> = (0..size.flows).map(|i| gen_flow(&mut rng, i)).collect();
    let node_count: usize = flows.iter().map(|f| f.expected.len()).sum();

    let redis = blocking(TestRedis::dedicated);
    let mut deployment = Deployment::new(&redis.url);
    let mut server: Server = blocking(|| deployment.serve(&server_args()));
    let mut workers: Vec<Proc> =
        blocking(|| (0..2).map(|_| deployment.worker(&worker_args())).collect());
    let url = Arc::new(RwLock::new(server.url.clone()));
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let ticks = ScheduleCheck::start(&client, &server.url, soak).await;

    // The submitter runs on its own while the chaos goes on: a client retrying
    // through crashes, as a real one would.
    let receiver = Receiver::start().await;
    let specs: Vec<Value> = flows
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut spec = f.spec.clone();
            if let Some(path) = callback_path(i) {
                spec["opts"] = json!({"notify": [{"url": receiver.url(&path)}]});
            }
            spec
        })
        .collect();
    let mut submit_rng = Rng(seed ^ 0x5EED);
    let pauses: Vec<u64> = (0..specs.len())
        .map(|_| submit_rng.range(size.submit_pause.0, size.submit_pause.1))
        .collect();
    let submitted: Arc<Mutex<Vec<String>>> = Arc::default();
    let submitter = {
        let pauses = pauses.clone();
        let (client, url, submitted) = (client.clone(), Arc::clone(&url), Arc::clone(&submitted));
        tokio::spawn(async move {
            for (i, spec) in specs.iter().enumerate() {
                let id = submit(&client, &url, spec, &format!("crash-{seed}-{i}")).await;
                submitted.lock().unwrap().push(id);
                tokio::time::sleep(Duration::from_millis(pauses[i])).await;
            }
        })
    };
    // What a client saw just before each server crash, to compare with what the
    // restarted server shows: a crash may not take back anything a client saw.
    let mut taken_back: Vec<String> = Vec::new();
    let mut compared = 0usize;

    let mut schedule: Vec<Chaos> = std::iter::repeat_n(Chaos::KillServer, size.server_kills)
        .chain(std::iter::repeat_n(Chaos::KillWorker, size.worker_kills))
        .chain(std::iter::repeat_n(
            Chaos::RestartRedis,
            size.redis_restarts,
        ))
        .chain(std::iter::repeat_n(Chaos::PowerLoss, size.power_losses))
        .collect();
    for i in (1..schedule.len()).rev() {
        let j = rng.next() as usize % (i + 1);
        schedule.swap(i, j);
    }
    let (mut server_kills, mut worker_kills, mut redis_restarts) = (0, 0, 0);
    // The actions are spread over the time the submissions take, so that every one
    // of them lands while flows run (an action itself takes about a second).
    let submit_ms: u64 = pauses.iter().sum();
    let gap = (submit_ms / (schedule.len() as u64 + 1))
        .saturating_sub(800)
        .max(300);
    for action in &schedule {
        let pause = rng.range(gap / 2, gap * 3 / 2);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        match action {
            Chaos::KillServer => {
                let seen = observe(&client, &server.url, &recent(&submitted)).await;
                server.proc.kill();
                server_kills += 1;
                // Sometimes the server stays down a moment, as after a real crash.
                let down = if rng.chance(50) {
                    rng.range(0, 1500)
                } else {
                    0
                };
                tokio::time::sleep(Duration::from_millis(down)).await;
                server = blocking(|| deployment.serve(&server_args()));
                *url.write().unwrap() = server.url.clone();
                compared += seen.len();
                taken_back.extend(compare_after_crash(&client, &server.url, &seen).await);
            }
            Chaos::KillWorker => {
                let i = rng.next() as usize % workers.len();
                workers[i].kill();
                worker_kills += 1;
                let down = rng.range(0, 1500);
                tokio::time::sleep(Duration::from_millis(down)).await;
                workers[i] = blocking(|| deployment.worker(&worker_args()));
            }
            Chaos::RestartRedis => {
                let down = rng.range(0, 1000);
                blocking(|| {
                    redis.stop();
                    std::thread::sleep(Duration::from_millis(down));
                    redis.start();
                });
                redis_restarts += 1;
            }
            Chaos::PowerLoss => {
                let seen = observe(&client, &server.url, &recent(&submitted)).await;
                server.proc.kill();
                for worker in &mut workers {
                    worker.kill();
                }
                blocking(|| {
                    redis.stop();
                    redis.start();
                });
                server_kills += 1;
                worker_kills += workers.len();
                redis_restarts += 1;
                server = blocking(|| deployment.serve(&server_args()));
                *url.write().unwrap() = server.url.clone();
                for worker in &mut workers {
                    *worker = blocking(|| deployment.worker(&worker_args()));
                }
                compared += seen.len();
                taken_back.extend(compare_after_crash(&client, &server.url, &seen).await);
            }
        }
        println!("crash: {:>6.1}s {action:?}", began.elapsed().as_secs_f64());
    }
    submitter.await.unwrap();
    let ids = submitted.lock().unwrap().clone();
    let ticks = ticks.pause(&client, &url).await;
    let chaos_over = Instant::now();

    // Every flow must finish; nothing is killed any more.
    let deadline = chaos_over + size.drain;
    let mut still_running = Vec::new();
    while Instant::now() < deadline {
        match running_flows(&client, &server.url).await {
            Some(running) if running.is_empty() => {
                still_running.clear();
                break;
            }
            Some(running) => still_running = running,
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained_in = chaos_over.elapsed();

    // Exactly one flow per Idempotency-Key, counted through the list: every flow
    // was submitted under its own key with a name of its own (`crash-{i}-{kind}`),
    // and retried with that key through every crash and outage, so each name must
    // be listed once, as the id the submitter was answered.
    let listed = loop {
        if let Some(listed) = list_all(&client, &server.url, None).await {
            break listed;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "GET /flows keeps failing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_name = ids_by_name(&listed);
    let mut key_problems: Vec<String> = Vec::new();
    for (i, (id, gen)) in ids.iter().zip(&flows).enumerate() {
        let name = gen.spec["name"].as_str().unwrap();
        let listed_ids = by_name.get(name).cloned().unwrap_or_default();
        if listed_ids != [id.clone()] {
            key_problems.push(format!(
                "key crash-{seed}-{i} (flow {name}): answered {id}, listed as {listed_ids:?}"
            ));
        }
    }
    let ours: std::collections::HashSet<&str> = flows
        .iter()
        .map(|f| f.spec["name"].as_str().unwrap())
        .chain([SCHEDULED_FLOW])
        .collect();
    let tick_problems = ticks.check(&client, &server.url, &by_name).await;
    for name in by_name.keys().filter(|n| !ours.contains(n.as_str())) {
        key_problems.push(format!("listed flow {name} was never submitted"));
    }

    // Check every node of every flow against its expected result.
    let mut lost = 0;
    let mut wrong = 0;
    let mut problems: Vec<String> = Vec::new();
    let mut final_jobs: Vec<String> = Vec::new();
    for (id, gen) in ids.iter().zip(&flows) {
        let (status, flow) = get(&client, &server.url, &format!("/flows/{id}"))
            .await
            .unwrap_or_else(|| panic!("GET /flows/{id}: the server does not answer"));
        assert_eq!(status, 200, "GET /flows/{id}: {flow}");
        if flow["status"] != "completed" {
            lost += 1;
            problems.push(format!("flow {id} is {}: {flow}", flow["status"]));
        }
        let nodes = flow["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), gen.expected.len(), "{flow}");
        for node in nodes {
            let name = node["name"].as_str().unwrap();
            if let Some(job) = node["jobId"].as_str() {
                final_jobs.push(job.to_owned());
            }
            match node.get("result") {
                Some(result) if fits(result, &gen.expected[name]) => {}
                Some(result) => {
                    wrong += 1;
                    problems.push(format!(
                        "flow {id} node {name}: result {result}, expected {}",
                        gen.expected[name]
                    ));
                }
                // Only in a flow that is already counted as lost.
                None => {}
            }
        }
    }
    // Every ended flow that names a callback got it at least once, whatever was
    // killed between its end and the POST.
    let callbacks_deadline = Instant::now() + Duration::from_secs(60);
    let mut callbacks_lost = missing_callbacks(&receiver, &ids);
    while !callbacks_lost.is_empty() && Instant::now() < callbacks_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        callbacks_lost = missing_callbacks(&receiver, &ids);
    }
    let callbacks = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| callback_path(*i).is_some())
        .count();
    let (server_alive, workers_alive) = (
        server.proc.alive(),
        workers.iter_mut().map(|w| w.alive()).filter(|a| *a).count(),
    );
    if lost > 0 || wrong > 0 {
        eprintln!("--- last lines of the server ---\n{}", server.proc.tail());
    }
    drop(server);
    drop(workers);
    let runs = blocking(|| deployment.finish());
    let hibernations = deployment.hibernations();
    let executions: u32 = runs.values().sum();
    let duplicates: u32 = runs.values().map(|n| n.saturating_sub(1)).sum();
    let unlogged = final_jobs.iter().filter(|j| !runs.contains_key(*j)).count();

    println!(
        "crash: seed {seed}, {} nodes, server kills {server_kills}, worker kills {worker_kills}, \
         redis restarts {redis_restarts}, {executions} handler runs of {} jobs, {compared} flow views \
         compared across crashes ({} taken back), {hibernations} hibernations, drained in {:.1}s, \
         took {:.1}s",
        node_count,
        runs.len(),
        taken_back.len(),
        drained_in.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    println!(
        "crash: flows {}, kills {}, lost {lost}, wrong {wrong}, duplicate executions {duplicates}, \
         keys not listed as exactly their one flow {}, callbacks {callbacks} ({} POSTs), \
         callbacks lost {}",
        ids.len(),
        server_kills + worker_kills,
        key_problems.len(),
        receiver.hits().len(),
        callbacks_lost.len()
    );
    for p in problems
        .iter()
        .chain(&key_problems)
        .chain(&callbacks_lost)
        .take(20)
    {
        eprintln!("{p}");
    }
    assert!(server_alive, "the server died on its own");
    assert_eq!(workers_alive, 2, "a worker died on its own");
    assert!(
        still_running.is_empty() || lost > 0,
        "flows still running: {still_running:?}"
    );
    assert!(
        taken_back.is_empty(),
        "a crash took back what a client saw:\n{}",
        taken_back.join("\n")
    );
    assert!(
        key_problems.is_empty(),
        "not exactly one listed flow per Idempotency-Key (seed {seed}):\n{}",
        key_problems.join("\n")
    );
    assert!(
        tick_problems.is_empty(),
        "schedule ticks lost or fired twice (seed {seed}):\n{}",
        tick_problems.join("\n")
    );
    assert_eq!(lost, 0, "flows that did not complete (seed {seed})");
    assert!(
        callbacks_lost.is_empty(),
        "callbacks that never arrived (seed {seed}):\n{}",
        callbacks_lost.join("\n")
    );
    assert_eq!(wrong, 0, "nodes with a wrong result (seed {seed})");
    // Every slot, waiting list and held-back count was given back: the limits kept
    // nothing of flows that all ended.
    let limit_keys: Vec<String> =
        testing::keys_matching(&redis.url, &format!("{}:*", deployment.prefix))
            .await
            .into_iter()
            .filter(|k| {
                k.contains(":ck:")
                    || k.contains(":fk:")
                    || k.ends_with(":wait")
                    || k.ends_with(":held")
            })
            .collect();
    assert!(
        limit_keys.is_empty(),
        "limit state left behind: {limit_keys:?}"
    );
    assert_eq!(
        unlogged, 0,
        "jobs whose run left no log line: the run count is not to be trusted"
    );
    assert!(
        hibernations > 0,
        "no flow hibernated: the test did not exercise waking under crashes"
    );
}

// ---------------------------------------------------------------------------------
// A write cut short.
// ---------------------------------------------------------------------------------

/// An engine on `dir` with the built-in handlers, and workers for `default` if asked.
async fn engine_on(dir: &std::path::Path, prefix: &str, workers: bool) -> Engine {
    let mut builder = Engine::builder()
        .redis_url(testing::redis().url.clone())
        .prefix(prefix)
        .data_dir(dir)
        .lease(Duration::from_secs(2));
    for (name, handler) in dagflow::handlers::builtin() {
        builder = builder.handler_arc(name, handler);
    }
    if workers {
        builder = builder.queue("default", 2);
    }
    builder.build().await.unwrap()
}

/// Opens the store once the engine that had it let go of it.
async fn open_store(dir: &std::path::Path) -> Store {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(dir, DEFAULT_CACHE_BYTES) {
            Ok(store) => return store,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the store stays locked: {e}"),
        }
    }
}

/// The write that completes a node holds that node's record, its children's
/// (now `queued`) and the flow header, applied one insert after the other
/// (`Store::apply`). sled writes a log buffer out whenever it fills, flush or not,
/// so a SIGKILL between those inserts and the group flush can leave the first of
/// them on disk and not the rest (seen with sled 0.34.7 and the store's settings:
/// pairs of inserts into two trees, a flush every 20 pairs, SIGKILLed 30 times,
/// left 2 torn pairs): here,
/// `a` completed and `b` still `pending`. The job of `a` is still in Redis (it is
/// acknowledged only after the flush), so it runs again after the restart and is
/// ignored as a duplicate; the flow must still go on to `b`, not wait forever.
///
/// This test builds that state by hand; it holds the engine to repairing such a
/// snapshot on restore. (Writing each snapshot atomically would keep it from
/// arising in the first place.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_write_cut_short_by_a_crash_does_not_strand_the_flow() {
    let prefix = testing::unique_prefix();
    let data = tempfile::tempdir().unwrap();
    // No workers: `a` is queued and stays so.
    let engine = engine_on(data.path(), &prefix, false).await;
    let id = engine
        .create_json(
            r#"{"nodes": [
                {"name": "a", "handler": "echo", "data": 1},
                {"name": "b", "handler": "echo", "parents": ["a"], "data": 2}
            ]}"#,
            None,
        )
        .await
        .unwrap();
    engine.shutdown(Duration::from_secs(5)).await;
    drop(engine);

    // The first record of the write that completes `a`, and nothing after it.
    let store = open_store(data.path()).await;
    let stored = store.load(id).unwrap().unwrap();
    assert_eq!(stored.nodes[0].status, NodeStatus::Queued);
    let mut a = stored.nodes[0].clone();
    a.status = NodeStatus::Completed;
    a.result = Some(Arc::from(r#"{"data":1,"parents":{}}"#));
    a.started_at = a.queued_at;
    a.finished_at = a.queued_at;
    store
        .apply(&[WriteOp::Node(
            id,
            NodeIdx::from_usize(0),
            NodeRecord::from_state(&a),
        )])
        .unwrap();
    store.flush().await.unwrap();
    drop(stored);
    drop(store);

    let engine = engine_on(data.path(), &prefix, true).await;
    let view = engine.wait(id, Duration::from_secs(20)).await;
    let view = match view {
        Ok(view) => view,
        Err(e) => {
            let now = engine.get(id).await.unwrap();
            let nodes: Vec<String> = now
                .nodes
                .iter()
                .map(|n| format!("{} {:?} attempt {}", n.name, n.status, n.attempt))
                .collect();
            panic!(
                "the flow never ended ({e}): it is {:?} with {}",
                now.status,
                nodes.join(", ")
            );
        }
    };
    assert_eq!(view.status, FlowStatus::Completed, "{view:#?}");
    assert_eq!(
        view.node("b").unwrap().result,
        Some(json!({"data": 2, "parents": {"a": {"data": 1, "parents": {}}}}))
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------
// The schedule that runs through the kills.
// ---------------------------------------------------------------------------------

/// Name of the flows the schedule starts.
const SCHEDULED_FLOW: &str = "crash-scheduled-tick";
/// Runs a schedule keeps (`dagflow_actors::schedule::MAX_RUNS`).
const KEPT_RUNS: usize = 100;

/// A schedule firing every `every_ms` with `catchUp: "all"` while the server is
/// killed: afterwards its runs must be every tick from its creation to its pause,
/// each once, and each listed flow of its name must be one run's flow.
struct ScheduleCheck {
    every_ms: u64,
    created_at: u64,
    paused_at: u64,
}

impl ScheduleCheck {
    async fn start(client: &reqwest::Client, base: &str, soak: bool) -> ScheduleCheck {
        // A soak run lasts minutes: a tick every 5 s keeps it under the kept runs.
        let every_ms = if soak { 5000 } else { 2000 };
        let spec = json!({
            "name": "crash-ticks",
            "cron": format!("*/{} * * * * *", every_ms / 1000),
            "catchUp": "all",
            "overlap": "allow",
            "flow": {"name": SCHEDULED_FLOW, "nodes": [{"name": "tick", "handler": "noop"}]},
        });
        let response = client
            .post(format!("{base}/schedules"))
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let view: Value = response.json().await.unwrap();
        ScheduleCheck {
            every_ms,
            created_at: view["createdAt"].as_u64().unwrap(),
            paused_at: 0,
        }
    }

    /// Pauses it (retrying while the server restarts), so that the flows drain.
    async fn pause(mut self, client: &reqwest::Client, base: &RwLock<String>) -> ScheduleCheck {
        let deadline = Instant::now() + SUBMIT_DEADLINE;
        loop {
            let url = format!("{}/schedules/crash-ticks", base.read().unwrap());
            let sent = client
                .patch(url)
                .json(&json!({"paused": true}))
                .send()
                .await;
            if let Ok(response) = sent {
                if response.status().is_success() {
                    let view: Value = response.json().await.unwrap();
                    self.paused_at = view["updatedAt"].as_u64().unwrap();
                    return self;
                }
            }
            assert!(Instant::now() < deadline, "cannot pause the schedule");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What is wrong with its runs, compared with the flows listed by name.
    async fn check(
        &self,
        client: &reqwest::Client,
        base: &str,
        by_name: &BTreeMap<String, Vec<String>>,
    ) -> Vec<String> {
        let (status, body) = get(client, base, "/schedules/crash-ticks/runs")
            .await
            .expect("GET runs: the server does not answer");
        assert_eq!(status, 200, "{body}");
        let mut runs = body["runs"].as_array().unwrap().clone();
        runs.reverse();
        let ticks: Vec<u64> = runs.iter().map(|r| r["tickAt"].as_u64().unwrap()).collect();
        let mut problems = Vec::new();
        // Every tick from creation to pause, each once: ticks step by `every_ms`.
        for pair in ticks.windows(2) {
            if pair[1] - pair[0] != self.every_ms {
                problems.push(format!(
                    "ticks {} then {}: lost or repeated",
                    pair[0], pair[1]
                ));
            }
        }
        let first_due = (self.created_at / self.every_ms + 1) * self.every_ms;
        let last_due = self.paused_at / self.every_ms * self.every_ms;
        let whole = runs.len() < KEPT_RUNS;
        if whole && ticks.first() != Some(&first_due) {
            problems.push(format!("first tick {:?}, due {first_due}", ticks.first()));
        }
        // The pause may land just as the last tick fires, either side of it.
        if ticks.last().is_none_or(|t| *t + self.every_ms < last_due) {
            problems.push(format!("last tick {:?}, due {last_due}", ticks.last()));
        }
        // One flow per started run, and (when no run was dropped) one run per flow.
        let run_flows: std::collections::BTreeSet<String> = runs
            .iter()
            .filter_map(|r| r["flowId"].as_str().map(str::to_owned))
            .collect();
        if run_flows.len() != runs.len() {
            problems.push(format!(
                "{} runs but {} distinct flows",
                runs.len(),
                run_flows.len()
            ));
        }
        let listed: std::collections::BTreeSet<String> = by_name
            .get(SCHEDULED_FLOW)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        if !run_flows.is_subset(&listed) || (whole && run_flows != listed) {
            problems.push(format!(
                "runs' flows and listed {SCHEDULED_FLOW} flows differ: {} runs' flows, {} listed",
                run_flows.len(),
                listed.len()
            ));
        }
        println!(
            "crash: schedule fired {} ticks every {} ms, {} problems",
            ticks.len(),
            self.every_ms,
            problems.len()
        );
        problems
    }
}
