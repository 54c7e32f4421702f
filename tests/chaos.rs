//! The chaos test: a seeded run of real `dagflow serve` and `dagflow worker`
//! processes on a Redis of the test's own, with every fault the engine promises to
//! survive injected while flows run, and the invariants checked once the faults
//! stop.
//!
//! # What one seed does
//!
//! One redis-server (its own data dir, `appendonly no`, no automatic saves), one
//! key prefix, one sled data dir; `dagflow serve --queues default=4
//! --hibernate-after 200ms` and two `dagflow worker --queues default=2,remote=4`
//! (every process with `--lease 3s`, so that a killed worker's jobs come back
//! within seconds; the server with `--reconcile-every 3s`, so that a Redis rollback
//! is repaired within seconds). Then, for a window of a few seconds, all at once:
//!
//! - **flows** of mixed shapes (chains, diamonds, fan-out/fan-in, random DAGs) are
//!   created: `echo` nodes (on `default` or `remote`) whose results carry their
//!   input, so that a completed node's result says exactly which parent results it
//!   got; `sleep` nodes on `remote`, a queue only the worker processes serve, so
//!   that jobs run in other processes while they are cancelled or deleted; `fail`
//!   nodes with attempts and backoff, some of which fail for good. Some creates
//!   carry no `Idempotency-Key`; the others carry one, sent once, twice in a row,
//!   or twice concurrently, and are retried with it through every outage;
//! - **requests**: cancel (preferring flows with a job running on `remote`), retry
//!   (of failed or cancelled flows), delete (half of them of flows with a running
//!   remote job), and DELETE racing `POST /retry` on a failed flow that has had time
//!   to hibernate;
//! - **faults**: SIGKILL of the server (restarted on the same data dir) and of a
//!   worker (restarted), Redis `FLUSHALL`, and Redis rolled back: an RDB snapshot
//!   is `SAVE`d at some moment, Redis keeps running, and later it is SIGKILLed and
//!   started again from that older snapshot (the engine's `P:marker` survives, the
//!   jobs enqueued since are gone). Server (re)starts get a random `FAILPOINTS`
//!   setting (names in `ENGINE_FAILPOINTS`; they act only in a binary built with
//!   the `failpoints` feature, and are ignored otherwise);
//! - **a WebSocket client** subscribed to `*` (and to each created flow, whose
//!   subscribe answers with a snapshot holding results) records every message,
//!   reconnecting to each new server.
//!
//! Then the last faults, in an order no restart can hide: the server is restarted
//! without failpoints if it had any; Redis is snapshotted; both workers are
//! SIGKILLed; a few more flows are created (their `remote` jobs wait, nobody
//! serves that queue); Redis is rolled back to the snapshot (marker kept, those
//! jobs gone) and the workers start again: only the engine's own repair of a
//! partial Redis loss can finish these flows. Last of all a few flows whose first
//! job sleeps on `remote` are cancelled or deleted while that job runs in a worker
//! process, which then reports it cancelled through `P:completions`: the engine
//! must still acknowledge that record, with no restart to re-read it.
//!
//! The seed fixes every choice (which flows, which requests and faults, when);
//! the interleaving with the processes is up to the machine, so a replay re-runs
//! the same plan, not the same schedule.
//!
//! # What is checked when the faults stop
//!
//! A server without failpoints and both workers run, and so does Redis. Then,
//! waiting with a deadline:
//!
//! 1. **Nothing lost, nothing stuck.** Every flow answered `201` (and not deleted)
//!    is listed, answers GET with 200, and ends (`completed`, `failed` or
//!    `cancelled`); no request about it answered 404 before a DELETE was sent.
//! 2. **Right results.** Every completed node of every flow: an `echo` node's
//!    result is `{"data": <its data>, "parents": {<p>: <p's durable result>}}`
//!    with every parent completed; a `sleep` node's `{"sleptMs": ms}`; a `fail`
//!    node's `{"attempt": a}` with `a` its current attempt and above its `times`.
//! 3. **One flow per Idempotency-Key, counted through the list.** Every flow has a
//!    name of its own; `GET /flows` (all pages) must list each name once when it
//!    was answered 201 (as the id it was answered; every answer for one key names
//!    the same flow), at most once when its create had no clear answer, never
//!    when it was deleted.
//! 4. **No zombie.** Every listed flow answers GET with 200; a flow whose DELETE
//!    answered 204 is not listed, answers 404, and shows no WebSocket event with a
//!    time after the 204 nor a GET 200 sent after it.
//! 5. **What a client saw holds** (every WebSocket event and snapshot, and every
//!    flow view a GET returned during the run, against the final durable flow,
//!    read after the last restart). The engine emits and answers only what is on
//!    disk, so:
//!    - a `seq` seen is at most the final `seq`; two events of one flow with one
//!      `seq` are the same event (same node, status, attempt);
//!    - a node's attempt never goes down;
//!    - a node seen `completed` is `completed` at the end with the same attempt
//!      and, when a snapshot showed its result, the same result. Retry re-runs
//!      only failed, skipped and cancelled nodes and their descendants, and none
//!      of these flows uses `continueOnFailure`, so a completed node has no such
//!      ancestor: nothing may re-run it;
//!    - a flow seen `completed` is `completed` at the end;
//!    - a node seen `failed`, `skipped` or `cancelled`, and a flow seen `failed` or
//!      `cancelled`, is still so at the end (same attempt for the node) unless a
//!      retry of that flow was answered (or left without an answer) at or after
//!      the time of what was seen (an event's `ts`, a view's `updatedAt`: the state
//!      held from then on, so a retry that undid it must have been handled later);
//!    - a flow ends `cancelled` only if a cancel was sent for it.
//! 6. **Nothing left behind.** All flows are then deleted (every DELETE answers
//!    204 or 404), the list becomes empty, and Redis holds no key of the prefix but
//!    `P:marker`, `P:workers`, `P:config`, `P:queues:delayed`, `P:completions` and
//!    the queue streams `P:q:{queue}`, the streams with XLEN 0 and no pending entry
//!    in any group.
//!    Finally the server and workers are killed and the data dir is opened with
//!    sled: every tree but `meta` (the engine's own id) is empty.
//!
//! Each seed prints one line:
//! `chaos: seed S, flows N, faults {kill_server: a, ...}, lost 0, wrong 0, keys left 0, zombies 0`
//! and one with the rest (WebSocket messages checked, inconsistencies, hibernations,
//! ...). A failing seed prints its problems and the command that replays it.
//!
//! # Running it
//!
//! - `cargo test --test chaos` runs the fixed seeds of `CI_SEEDS`;
//! - `DAGFLOW_CHAOS_SEED=S` runs seed `S` only (the replay);
//! - `DAGFLOW_CHAOS_SEEDS=N` runs `N` seeds (from `DAGFLOW_CHAOS_SEED`, or the
//!   clock, on): a soak;
//! - `DAGFLOW_CHAOS_SCALE=K` makes each seed `K` times bigger (flows, window,
//!   faults, requests);
//! - `DAGFLOW_CHAOS_DRAIN_SECS` is how long flows get to end once the faults stop
//!   (90 by default: far more than the repair of a Redis rollback needs).
//!
//! The failpoints act only with `--features failpoints` (as `scripts/test.sh`
//! runs the tests); the first line printed says whether they are compiled in.
//! Needs `redis-server` on the PATH (Redis 7.0 or newer).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::http::{get, ids_by_name, list_all};
use common::process::{blocking, Deployment, Proc, ServeArgs, Server, WorkerArgs};
use common::redis_server::RedisServer;
use common::rng::{clock_seed, Rng};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------
// Settings.
// ---------------------------------------------------------------------------------

/// The seeds CI runs (any seed is as good as another; these are fixed so that CI
/// runs the same plans every time).
const CI_SEEDS: [u64; 3] = [1_000_001, 1_000_002, 1_000_003];
/// `--hibernate-after` of the servers: flows waiting on a sleep or a backoff give
/// up their actor all through the run, and are woken by reports, cancels,
/// retries, deletes and resyncs.
const HIBERNATE_AFTER: &str = "200ms";
/// `--lease` of every process: a killed worker's jobs are reclaimed after this.
const LEASE: &str = "3s";
/// `--reconcile-every` of the servers: how soon a partial loss of Redis data (the
/// rollbacks) must be repaired. Short, so that a seed drains in seconds; the
/// repair is the same at the 30 s default.
const RECONCILE_EVERY: &str = "3s";
/// Local workers of the server. It does not serve `remote`.
const SERVER_QUEUES: &str = "default=4";
/// Queues of each worker process.
const WORKER_QUEUES: &str = "default=2,remote=4";
/// Worker processes.
const WORKERS: usize = 2;
/// Longest one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a create with an Idempotency-Key is retried through outages.
const CREATE_DEADLINE: Duration = Duration::from_secs(60);
/// How long flows get to end once the faults stop, unless
/// `DAGFLOW_CHAOS_DRAIN_SECS` says otherwise.
const DRAIN: Duration = Duration::from_secs(90);
/// How long the deletes at the end get to leave nothing behind (a cancelled
/// remote job reports within the cancel grace, its record must then be acked).
const CLEAN: Duration = Duration::from_secs(30);
/// How long a failed flow must have been over before the DELETE/retry race is
/// run on it: hibernation after 200 ms plus its one-second grace.
const HIBERNATED_AFTER_MS: u64 = 1_500;
/// Keys of the prefix that may stay when every flow is deleted (besides the
/// queue streams and `P:completions`, which must be empty): the marker, the
/// workers' heartbeats, the deployment's shared settings, and the set of queue
/// names that have had delayed jobs (the engine promotes those queues' retries).
const GLOBAL_KEYS: [&str; 4] = ["marker", "workers", "config", "queues:delayed"];
/// The snapshot file a rollback returns to.
const SNAPSHOT: &str = "older.rdb";

/// Failpoints of the engine (`fail` crate syntax), with the actions this test
/// picks from for each: rare errors of each step, short sleeps, a few panics.
const ENGINE_FAILPOINTS: &[(&str, &[&str])] = &[
    ("writer::before_apply", &["2%return", "5%return"]),
    ("writer::after_apply", &["5%sleep(50)", "1*panic"]),
    ("writer::flush", &["2%return", "5%return"]),
    ("writer::callback", &["10%sleep(100)"]),
    ("flow::handle", &["1%panic", "3%panic"]),
    ("flow::redis", &["5%return", "10%return"]),
    ("queue::enqueue", &["5%return"]),
    ("queue::ack_local", &["5%return"]),
    ("queue::ack_completions", &["5%return"]),
    ("queue::publish_cancel", &["30%return"]),
    ("queue::cleanup", &["10%return"]),
    ("queue::report", &["5%return"]),
    ("queue::promote", &["10%return"]),
    ("router::cast", &["5%return"]),
    ("store::delete", &["10%return"]),
];

/// How big one seed's run is.
#[derive(Debug, Clone)]
struct Size {
    /// Flows created during the window.
    flows: usize,
    /// Flows created at the end, while no worker process runs, between the last
    /// snapshot and the last rollback (see [`Run::last_faults`]).
    tail_flows: usize,
    /// Flows created last of all, each cancelled or deleted while its job runs on
    /// `remote`, with no restart after (see [`Run::last_requests`]).
    late_flows: usize,
    /// How long faults and requests go on.
    window: Duration,
    kill_server: usize,
    kill_worker: usize,
    flushall: usize,
    /// Rollbacks during the window (the last one, at the end, comes on top).
    rollback: usize,
    cancel: usize,
    retry: usize,
    delete: usize,
    /// DELETE and retry sent together on a hibernated failed flow.
    race: usize,
    /// Chance (%) that a server start in the window gets failpoints.
    failpoint_chance: u64,
}

impl Size {
    fn scaled(k: usize) -> Size {
        Size {
            flows: 20 * k,
            tail_flows: 4 * k,
            late_flows: 4 * k,
            window: Duration::from_secs(16 * k as u64),
            kill_server: 3 * k,
            kill_worker: 2 * k,
            flushall: k,
            rollback: k,
            cancel: 4 * k,
            retry: 4 * k,
            delete: 4 * k,
            race: 2 * k,
            failpoint_chance: 80,
        }
    }
}

/// Reads a positive number from the environment.
fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")),
    )
}

/// Milliseconds since the epoch: the engine stamps events with the same clock.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------
// The plan: flows, requests and faults, all from the seed.
// ---------------------------------------------------------------------------------

/// What a node does, and so what its result must be.
#[derive(Debug, Clone)]
enum Kind {
    /// `echo` with this data: the result is its input.
    Echo(Value),
    /// `sleep` for this many ms: `{"sleptMs": ms}`.
    Sleep(u64),
    /// `fail` while `attempt <= times`, then `{"attempt": attempt}`.
    Fail { times: u64 },
}

#[derive(Debug, Clone)]
struct PlannedNode {
    name: String,
    parents: Vec<String>,
    kind: Kind,
}

/// How a flow is created.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CreateMode {
    /// One POST without a key; not repeated when it gets no answer.
    NoKey,
    /// With a key, repeated until answered.
    KeyOnce,
    /// With a key, twice in a row.
    KeyTwice,
    /// With a key, twice at the same time.
    KeyTwiceConcurrent,
}

#[derive(Debug, Clone)]
struct PlannedFlow {
    index: usize,
    /// Unique in the run: how the list is counted per key.
    name: String,
    key: Option<String>,
    mode: CreateMode,
    spec: Value,
    nodes: Vec<PlannedNode>,
}

/// A fault, done by the test's main task.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    KillServer,
    KillWorker,
    FlushAll,
    /// `SAVE` now, keep the RDB for a later rollback.
    Snapshot,
    /// Restart Redis from the snapshot.
    Rollback,
}

/// A request about an existing flow.
#[derive(Debug, Clone, Copy, PartialEq)]
enum OpKind {
    Cancel,
    Retry,
    Delete,
    DeleteRetryRace,
}

struct Plan {
    /// Every flow: those created in the window, then the tail.
    flows: Vec<PlannedFlow>,
    /// (ms into the window, flow index) of the flows created in the window.
    creates: Vec<(u64, usize)>,
    faults: Vec<(u64, Fault)>,
    ops: Vec<(u64, OpKind)>,
    /// Drives the choices made while the plan runs (targets, pauses, failpoints).
    fault_rng: Rng,
    op_rng: Rng,
}

fn gen_node(rng: &mut Rng, flow: &str, name: String, parents: Vec<String>) -> (Value, PlannedNode) {
    let roll = rng.next() % 100;
    let (spec, kind) = if roll < 18 {
        let ms = rng.range(500, 4000);
        (
            json!({"name": name, "handler": "sleep", "queue": "remote", "data": {"ms": ms}}),
            Kind::Sleep(ms),
        )
    } else if roll < 30 {
        let times = rng.range(1, 3);
        let attempts = rng.range(1, 3);
        let backoff = if rng.chance(50) {
            "fixed"
        } else {
            "exponential"
        };
        let queue = if rng.chance(50) { "remote" } else { "default" };
        (
            json!({"name": name, "handler": "fail", "queue": queue,
                   "data": {"times": times, "message": "failing on purpose"},
                   "opts": {"attempts": attempts,
                            "backoff": {"type": backoff, "delayMs": rng.range(20, 150)}}}),
            Kind::Fail { times },
        )
    } else {
        let data = json!({"flow": flow, "node": name, "x": rng.next() % 1_000_000});
        let queue = if rng.chance(35) { "remote" } else { "default" };
        (
            json!({"name": name, "handler": "echo", "queue": queue, "data": data}),
            Kind::Echo(data),
        )
    };
    let mut spec = spec;
    spec["parents"] = json!(parents);
    (
        spec,
        PlannedNode {
            name,
            parents,
            kind,
        },
    )
}

fn gen_flow(rng: &mut Rng, seed: u64, index: usize) -> PlannedFlow {
    let shape = ["chain", "diamond", "fan", "random"][rng.index(4)];
    let name = format!("chaos-{seed}-{index}-{shape}");
    let mut layout: Vec<(String, Vec<String>)> = Vec::new();
    match shape {
        "chain" => {
            for i in 0..rng.range(3, 6) {
                let parents = if i == 0 {
                    vec![]
                } else {
                    vec![format!("c{}", i - 1)]
                };
                layout.push((format!("c{i}"), parents));
            }
        }
        "diamond" => {
            layout.push(("top".into(), vec![]));
            let mids: Vec<String> = (0..rng.range(2, 4)).map(|i| format!("mid{i}")).collect();
            for m in &mids {
                layout.push((m.clone(), vec!["top".into()]));
            }
            layout.push(("bottom".into(), mids));
        }
        "fan" => {
            layout.push(("root".into(), vec![]));
            let leaves: Vec<String> = (0..rng.range(4, 10)).map(|i| format!("leaf{i}")).collect();
            for l in &leaves {
                layout.push((l.clone(), vec!["root".into()]));
            }
            layout.push(("sink".into(), leaves));
        }
        _ => {
            for i in 0..rng.range(4, 8) as usize {
                let mut parents: Vec<String> = Vec::new();
                if i > 0 {
                    for _ in 0..rng.range(1, 2) {
                        let p = format!("r{}", rng.index(i));
                        if !parents.contains(&p) {
                            parents.push(p);
                        }
                    }
                }
                layout.push((format!("r{i}"), parents));
            }
        }
    }
    let mut specs = Vec::new();
    let mut nodes = Vec::new();
    for (node, parents) in layout {
        let (spec, planned) = gen_node(rng, &name, node, parents);
        specs.push(spec);
        nodes.push(planned);
    }
    let mode = match rng.next() % 100 {
        0..=34 => CreateMode::NoKey,
        35..=59 => CreateMode::KeyOnce,
        60..=79 => CreateMode::KeyTwice,
        _ => CreateMode::KeyTwiceConcurrent,
    };
    let key = (mode != CreateMode::NoKey).then(|| format!("chaos-{seed}-{index}-key"));
    PlannedFlow {
        index,
        spec: json!({"name": name, "nodes": specs}),
        name,
        key,
        mode,
        nodes,
    }
}

/// A flow whose first job sleeps 3 to 5 s on `remote` (in a worker process), for
/// the last requests: `wait` → `after`.
fn gen_late_flow(rng: &mut Rng, seed: u64, index: usize) -> PlannedFlow {
    let name = format!("chaos-{seed}-{index}-late");
    let ms = rng.range(3_000, 5_000);
    let data = json!({"flow": name, "node": "after"});
    let nodes = vec![
        PlannedNode {
            name: "wait".into(),
            parents: vec![],
            kind: Kind::Sleep(ms),
        },
        PlannedNode {
            name: "after".into(),
            parents: vec!["wait".into()],
            kind: Kind::Echo(data.clone()),
        },
    ];
    // With a key, so that it is created for sure (retried through the 503s of the
    // moments after the last rollback).
    PlannedFlow {
        index,
        spec: json!({"name": name, "nodes": [
            {"name": "wait", "handler": "sleep", "queue": "remote", "data": {"ms": ms}},
            {"name": "after", "handler": "echo", "parents": ["wait"], "data": data},
        ]}),
        name,
        mode: CreateMode::KeyOnce,
        key: Some(format!("chaos-{seed}-{index}-key")),
        nodes,
    }
}

fn make_plan(seed: u64, size: &Size) -> Plan {
    let mut rng = Rng(seed);
    let mut flow_rng = rng.fork(0xF10E);
    let mut flows: Vec<PlannedFlow> = (0..size.flows + size.tail_flows)
        .map(|i| gen_flow(&mut flow_rng, seed, i))
        .collect();
    let first_late = flows.len();
    flows.extend((0..size.late_flows).map(|i| gen_late_flow(&mut flow_rng, seed, first_late + i)));
    let window = size.window.as_millis() as u64;
    // Creates over the first 80% of the window, in order.
    let mut creates: Vec<(u64, usize)> = (0..size.flows)
        .map(|i| (rng.range(0, window * 8 / 10), i))
        .collect();
    creates.sort();
    let mut faults: Vec<(u64, Fault)> = Vec::new();
    for (count, fault) in [
        (size.kill_server, Fault::KillServer),
        (size.kill_worker, Fault::KillWorker),
        (size.flushall, Fault::FlushAll),
    ] {
        for _ in 0..count {
            faults.push((rng.range(1_000, window), fault));
        }
    }
    // Each rollback returns to a snapshot taken 2 to 6 s before it. (The flows
    // after `size.flows` are created at the end, by `Run::last_faults`.)
    for _ in 0..size.rollback {
        let at = rng.range(window / 3, window);
        faults.push((
            at.saturating_sub(rng.range(2_000, 6_000)).max(500),
            Fault::Snapshot,
        ));
        faults.push((at, Fault::Rollback));
    }
    faults.sort_by_key(|(at, _)| *at);
    let mut ops: Vec<(u64, OpKind)> = Vec::new();
    for (count, kind) in [
        (size.cancel, OpKind::Cancel),
        (size.retry, OpKind::Retry),
        (size.delete, OpKind::Delete),
        (size.race, OpKind::DeleteRetryRace),
    ] {
        for _ in 0..count {
            ops.push((rng.range(1_500, window), kind));
        }
    }
    ops.sort_by_key(|(at, _)| *at);
    Plan {
        flows,
        creates,
        faults,
        ops,
        fault_rng: rng.fork(0xFA17),
        op_rng: rng.fork(0x0B5),
    }
}

/// A random `FAILPOINTS` value: one to three engine failpoints.
fn pick_failpoints(rng: &mut Rng) -> String {
    let mut names: Vec<usize> = (0..ENGINE_FAILPOINTS.len()).collect();
    rng.shuffle(&mut names);
    let count = rng.range(1, 3) as usize;
    let mut chosen: Vec<String> = names[..count]
        .iter()
        .map(|&i| {
            let (name, actions) = ENGINE_FAILPOINTS[i];
            format!("{name}={}", rng.pick(actions))
        })
        .collect();
    chosen.sort();
    chosen.join(";")
}

// ---------------------------------------------------------------------------------
// What the run records.
// ---------------------------------------------------------------------------------

/// How the creates of one flow went.
#[derive(Debug, Clone, Default)]
struct CreateOutcome {
    /// Every id a 201 named (one per 201).
    ids: Vec<String>,
    /// Some POST got no clear answer (no response, a timeout, a 5xx): it may or may
    /// not have created the flow.
    unclear: bool,
    /// Clear refusals (4xx), with their bodies.
    refused: Vec<String>,
}

/// A request about a flow, and its answer.
#[derive(Debug, Clone)]
struct OpRecord {
    flow: String,
    kind: &'static str,
    sent_ms: u64,
    done_ms: u64,
    /// `None`: no response.
    status: Option<u16>,
}

/// A flow view a GET returned during the run.
#[derive(Debug, Clone)]
struct GetRecord {
    flow: String,
    sent_ms: u64,
    status: u16,
    body: Value,
}

/// One WebSocket message.
#[derive(Debug, Clone)]
struct WsRecord {
    /// Which connection (they are numbered from 1; a new one after each server).
    conn: usize,
    msg: Value,
}

/// State shared by the tasks of one seed's run.
struct Shared {
    client: reqwest::Client,
    /// The current server's base URL.
    url: RwLock<String>,
    creates: Mutex<HashMap<usize, CreateOutcome>>,
    ops: Mutex<Vec<OpRecord>>,
    gets: Mutex<Vec<GetRecord>>,
    ws: Mutex<Vec<WsRecord>>,
    /// WebSocket connections made, and `lagged` notices received.
    ws_connections: Mutex<(usize, usize)>,
    stop_ws: AtomicBool,
}

impl Shared {
    fn url(&self) -> String {
        self.url.read().unwrap().clone()
    }

    /// Ids answered 201 so far.
    fn created_ids(&self) -> Vec<String> {
        let creates = self.creates.lock().unwrap();
        let mut ids: Vec<String> = creates
            .values()
            .flat_map(|c| c.ids.first().cloned())
            .collect();
        ids.sort();
        ids
    }

    /// Ids with a DELETE answered 204.
    fn deleted(&self) -> HashSet<String> {
        self.ops
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.kind == "delete" && o.status == Some(204))
            .map(|o| o.flow.clone())
            .collect()
    }

    fn record_op(&self, flow: &str, kind: &'static str, sent_ms: u64, status: Option<u16>) {
        self.ops.lock().unwrap().push(OpRecord {
            flow: flow.to_owned(),
            kind,
            sent_ms,
            done_ms: now_ms(),
            status,
        });
    }

    /// `GET /flows/{id}`, recorded.
    async fn get_flow(&self, id: &str) -> Option<(u16, Value)> {
        let sent_ms = now_ms();
        let answer = get(&self.client, &self.url(), &format!("/flows/{id}")).await;
        if let Some((status, body)) = &answer {
            self.gets.lock().unwrap().push(GetRecord {
                flow: id.to_owned(),
                sent_ms,
                status: *status,
                body: body.clone(),
            });
        }
        answer
    }

    /// Sends `method path` (no body), recorded as `kind`; returns the status.
    async fn op(
        &self,
        method: reqwest::Method,
        id: &str,
        path: &str,
        kind: &'static str,
    ) -> Option<u16> {
        let sent_ms = now_ms();
        let status = self
            .client
            .request(method, format!("{}{path}", self.url()))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16());
        self.record_op(id, kind, sent_ms, status);
        status
    }
}

// ---------------------------------------------------------------------------------
// Creates.
// ---------------------------------------------------------------------------------

/// One POST of a flow: `Some((status, body))`, or `None` without a response.
async fn post_flow(shared: &Shared, spec: &Value, key: Option<&str>) -> Option<(u16, Value)> {
    let mut request = shared
        .client
        .post(format!("{}/flows", shared.url()))
        .json(spec);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

/// Notes one POST's answer in `outcome`; returns whether it was final (201 or a
/// clear refusal).
fn note_answer(outcome: &mut CreateOutcome, answer: Option<(u16, Value)>) -> bool {
    match answer {
        Some((201, body)) => {
            outcome
                .ids
                .push(body["flowId"].as_str().unwrap_or_default().to_owned());
            true
        }
        Some((status, body)) if (400..500).contains(&status) && status != 408 && status != 429 => {
            outcome.refused.push(format!("{status} {body}"));
            true
        }
        _ => {
            outcome.unclear = true;
            false
        }
    }
}

/// POSTs with the key until it is answered (201 or a refusal) or the deadline.
async fn post_keyed(shared: &Shared, spec: &Value, key: &str) -> CreateOutcome {
    let mut outcome = CreateOutcome::default();
    let deadline = Instant::now() + CREATE_DEADLINE;
    while Instant::now() < deadline {
        if note_answer(&mut outcome, post_flow(shared, spec, Some(key)).await) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    outcome
}

fn merge(mut a: CreateOutcome, b: CreateOutcome) -> CreateOutcome {
    a.ids.extend(b.ids);
    a.unclear |= b.unclear;
    a.refused.extend(b.refused);
    a
}

/// Creates one flow as its plan says, and records how it went.
async fn create(shared: Arc<Shared>, flow: PlannedFlow) {
    let key = flow.key.as_deref();
    let outcome = match (flow.mode, key) {
        (CreateMode::KeyOnce, Some(key)) => post_keyed(&shared, &flow.spec, key).await,
        (CreateMode::KeyTwice, Some(key)) => {
            let first = post_keyed(&shared, &flow.spec, key).await;
            merge(first, post_keyed(&shared, &flow.spec, key).await)
        }
        (CreateMode::KeyTwiceConcurrent, Some(key)) => {
            let (a, b) = tokio::join!(
                post_keyed(&shared, &flow.spec, key),
                post_keyed(&shared, &flow.spec, key)
            );
            merge(a, b)
        }
        _ => {
            let mut outcome = CreateOutcome::default();
            note_answer(&mut outcome, post_flow(&shared, &flow.spec, None).await);
            outcome
        }
    };
    shared.creates.lock().unwrap().insert(flow.index, outcome);
}

// ---------------------------------------------------------------------------------
// Requests about flows.
// ---------------------------------------------------------------------------------

fn node_of<'a>(flow: &'a Value, name: &str) -> Option<&'a Value> {
    flow["nodes"].as_array()?.iter().find(|n| n["name"] == name)
}

/// Whether a job of the flow runs on `remote` (in a worker process) right now.
fn remote_job_running(flow: &Value) -> bool {
    flow["status"] == "running"
        && flow["nodes"].as_array().is_some_and(|nodes| {
            nodes
                .iter()
                .any(|n| n["queue"] == "remote" && n["status"] == "active")
        })
}

/// Looks at up to eight random created flows (GET) and returns the first `want`
/// accepts, else (if `fallback`) the last one seen; with the view that was seen.
async fn pick_flow(
    shared: &Shared,
    rng: &mut Rng,
    want: impl Fn(&Value) -> bool,
    fallback: bool,
) -> Option<(String, Value)> {
    let deleted = shared.deleted();
    let mut ids: Vec<String> = shared
        .created_ids()
        .into_iter()
        .filter(|id| !deleted.contains(id))
        .collect();
    rng.shuffle(&mut ids);
    let mut last = None;
    for id in ids.into_iter().take(8) {
        if let Some((200, flow)) = shared.get_flow(&id).await {
            if want(&flow) {
                return Some((id, flow));
            }
            last = Some((id, flow));
        }
    }
    if fallback {
        last
    } else {
        None
    }
}

/// What a request hit, for the timeline: `<id> (<status>, a remote job running)`.
fn target(id: &str, flow: &Value) -> String {
    format!(
        "{id} ({}{})",
        flow["status"].as_str().unwrap_or("?"),
        if remote_job_running(flow) {
            ", a remote job running"
        } else {
            ""
        }
    )
}

/// Runs the planned requests at their times, printing each on the timeline;
/// returns how many cancels, retries and deletes were sent.
async fn run_ops(
    shared: Arc<Shared>,
    seed: u64,
    ops: Vec<(u64, OpKind)>,
    mut rng: Rng,
    start: Instant,
) -> [usize; 3] {
    use reqwest::Method;
    let (mut cancels, mut retries, mut deletes) = (0, 0, 0);
    let log = |what: String| {
        println!(
            "chaos: seed {seed}: {:>5.1}s {what}",
            start.elapsed().as_secs_f64()
        );
    };
    let answer = |status: Option<u16>| status.map_or("no answer".to_owned(), |s| s.to_string());
    for (at, kind) in ops {
        tokio::time::sleep_until((start + Duration::from_millis(at)).into()).await;
        match kind {
            OpKind::Cancel => {
                let mut picked = pick_flow(&shared, &mut rng, remote_job_running, false).await;
                if picked.is_none() {
                    let running = |f: &Value| f["status"] == "running";
                    picked = pick_flow(&shared, &mut rng, running, true).await;
                }
                if let Some((id, flow)) = picked {
                    let path = format!("/flows/{id}/cancel");
                    let status = shared.op(Method::POST, &id, &path, "cancel").await;
                    log(format!(
                        "cancel {} -> {}",
                        target(&id, &flow),
                        answer(status)
                    ));
                    cancels += 1;
                }
            }
            OpKind::Retry => {
                let ended_badly = |f: &Value| f["status"] == "failed" || f["status"] == "cancelled";
                if let Some((id, flow)) = pick_flow(&shared, &mut rng, ended_badly, false).await {
                    let path = format!("/flows/{id}/retry");
                    let status = shared.op(Method::POST, &id, &path, "retry").await;
                    log(format!(
                        "retry {} -> {}",
                        target(&id, &flow),
                        answer(status)
                    ));
                    retries += 1;
                }
            }
            OpKind::Delete => {
                let picked = if rng.chance(50) {
                    pick_flow(&shared, &mut rng, remote_job_running, true).await
                } else {
                    pick_flow(&shared, &mut rng, |_| true, true).await
                };
                if let Some((id, flow)) = picked {
                    let path = format!("/flows/{id}");
                    let status = shared.op(Method::DELETE, &id, &path, "delete").await;
                    log(format!(
                        "delete {} -> {}",
                        target(&id, &flow),
                        answer(status)
                    ));
                    deletes += 1;
                }
            }
            OpKind::DeleteRetryRace => {
                let hibernated_failure = |f: &Value| {
                    f["status"] == "failed"
                        && f["finishedAt"]
                            .as_u64()
                            .is_some_and(|t| now_ms().saturating_sub(t) > HIBERNATED_AFTER_MS)
                };
                if let Some((id, flow)) =
                    pick_flow(&shared, &mut rng, hibernated_failure, false).await
                {
                    let delete_path = format!("/flows/{id}");
                    let retry_path = format!("/flows/{id}/retry");
                    let (deleted, retried) = tokio::join!(
                        shared.op(Method::DELETE, &id, &delete_path, "delete"),
                        shared.op(Method::POST, &id, &retry_path, "retry"),
                    );
                    log(format!(
                        "delete + retry at once {} -> {} and {}",
                        target(&id, &flow),
                        answer(deleted),
                        answer(retried)
                    ));
                    deletes += 1;
                    retries += 1;
                }
            }
        }
    }
    [cancels, retries, deletes]
}

// ---------------------------------------------------------------------------------
// The WebSocket recorder.
// ---------------------------------------------------------------------------------

/// Most flows the recorder follows one by one on a connection (the server allows
/// 1,000 subscriptions per connection; `*` is one).
const MAX_FLOW_SUBSCRIPTIONS: usize = 900;

/// Records every message of a WebSocket client subscribed to `*` and to every
/// created flow, reconnecting to the current server until told to stop.
async fn record_ws(shared: Arc<Shared>) {
    let mut conn = 0usize;
    while !shared.stop_ws.load(Ordering::Relaxed) {
        let url = format!("{}/ws", shared.url().replacen("http://", "ws://", 1));
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await;
        let Ok(Ok((mut stream, _))) = connected else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        conn += 1;
        shared.ws_connections.lock().unwrap().0 += 1;
        let subscribe = |target: &str| {
            Message::text(json!({"type": "subscribe", "flowId": target}).to_string())
        };
        if stream.send(subscribe("*")).await.is_err() {
            continue;
        }
        let mut followed: HashSet<String> = HashSet::new();
        'connection: loop {
            if shared.stop_ws.load(Ordering::Relaxed) {
                // Read what is already here, then stop.
                while let Ok(Some(Ok(frame))) =
                    tokio::time::timeout(Duration::from_millis(200), stream.next()).await
                {
                    record_frame(&shared, conn, frame);
                }
                break 'connection;
            }
            for id in shared.created_ids() {
                if followed.len() >= MAX_FLOW_SUBSCRIPTIONS {
                    break;
                }
                if followed.insert(id.clone()) && stream.send(subscribe(&id)).await.is_err() {
                    break 'connection;
                }
            }
            match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
                Err(_) => {}
                Ok(Some(Ok(frame))) => record_frame(&shared, conn, frame),
                Ok(Some(Err(_)) | None) => break 'connection,
            }
        }
    }
}

fn record_frame(shared: &Shared, conn: usize, frame: Message) {
    if let Message::Text(text) = frame {
        if let Ok(msg) = serde_json::from_str::<Value>(text.as_str()) {
            if msg["type"] == "lagged" {
                shared.ws_connections.lock().unwrap().1 += 1;
            }
            shared.ws.lock().unwrap().push(WsRecord { conn, msg });
        }
    }
}

// ---------------------------------------------------------------------------------
// Processes and faults.
// ---------------------------------------------------------------------------------

/// Counts of what was done to the deployment and through the API.
#[derive(Debug, Default, Clone)]
struct Faults {
    kill_server: usize,
    kill_worker: usize,
    flushall: usize,
    rollback: usize,
    /// Server starts with a `FAILPOINTS` setting.
    failpoints: usize,
    cancel: usize,
    retry: usize,
    delete: usize,
}

/// The processes of one seed, and what happened to them.
struct Fleet {
    deployment: Deployment,
    server: Server,
    /// The `FAILPOINTS` of the running server, if any.
    server_failpoints: Option<String>,
    workers: Vec<Proc>,
    faults: Faults,
    /// Processes that exited on their own, and what they had (for the report).
    exits: Vec<String>,
    /// Problems with the processes themselves (a worker died, a server would not start).
    problems: Vec<String>,
}

fn server_args(failpoints: Option<&str>) -> ServeArgs {
    ServeArgs {
        hibernate_after: Some(HIBERNATE_AFTER.to_owned()),
        shutdown_timeout: Some("2s".to_owned()),
        lease: Some(LEASE.to_owned()),
        reconcile_every: Some(RECONCILE_EVERY.to_owned()),
        env: failpoints
            .map(|f| vec![("FAILPOINTS".to_owned(), f.to_owned())])
            .unwrap_or_default(),
        ..ServeArgs::new(SERVER_QUEUES)
    }
}

fn worker_args() -> WorkerArgs {
    WorkerArgs {
        shutdown_timeout: Some("2s".to_owned()),
        lease: Some(LEASE.to_owned()),
        ..WorkerArgs::new(WORKER_QUEUES)
    }
}

/// The last lines of a log, for a report.
fn last_lines(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Fleet {
    /// Starts a server with `failpoints`; if it will not start with them, notes it
    /// and starts one without.
    fn start_server(
        deployment: &mut Deployment,
        failpoints: Option<String>,
        problems: &mut Vec<String>,
    ) -> (Server, Option<String>) {
        match deployment.try_serve(&server_args(failpoints.as_deref())) {
            Ok(server) => (server, failpoints),
            Err(why) => {
                problems.push(format!(
                    "a server with FAILPOINTS={failpoints:?} did not start: {}",
                    last_lines(&why, 30)
                ));
                (deployment.serve(&server_args(None)), None)
            }
        }
    }

    /// Replaces the server (already killed or dead) with a new one on the same
    /// data dir.
    fn restart_server(&mut self, shared: &Shared, failpoints: Option<String>) {
        if failpoints.is_some() {
            self.faults.failpoints += 1;
        }
        let (server, failpoints) =
            Self::start_server(&mut self.deployment, failpoints, &mut self.problems);
        self.server = server;
        self.server_failpoints = failpoints;
        *shared.url.write().unwrap() = self.server.url.clone();
    }

    /// Restarts processes that exited on their own. A server that dies while it has
    /// failpoints may have been told to (a `panic` failpoint); any other exit is a
    /// problem.
    fn revive(&mut self, shared: &Shared, rng: &mut Rng, chance: u64) {
        if !self.server.proc.alive() {
            let note = format!(
                "server exited on its own (FAILPOINTS={:?}):\n{}",
                self.server_failpoints,
                last_lines(&self.server.proc.tail(), 30)
            );
            if self.server_failpoints.is_none() {
                self.problems.push(note.clone());
            }
            self.exits.push(note);
            let failpoints = rng.chance(chance).then(|| pick_failpoints(rng));
            self.restart_server(shared, failpoints);
        }
        for i in 0..self.workers.len() {
            if !self.workers[i].alive() {
                let note = format!(
                    "worker exited on its own:\n{}",
                    last_lines(&self.workers[i].tail(), 30)
                );
                self.problems.push(note.clone());
                self.exits.push(note);
                self.workers[i] = self.deployment.worker(&worker_args());
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------------

/// The problems found, by the categories of the summary line.
#[derive(Debug, Default)]
struct Findings {
    lost: Vec<String>,
    wrong: Vec<String>,
    keys_left: Vec<String>,
    zombies: Vec<String>,
    /// More than one flow per key, or a key answered with two ids.
    duplicates: Vec<String>,
    /// What a client saw that the durable history contradicts.
    taken_back: Vec<String>,
    /// Records left in sled.
    records_left: Vec<String>,
    /// Everything else (processes, creates that never got an answer).
    other: Vec<String>,
}

impl Findings {
    fn all(&self) -> Vec<String> {
        let mut all = Vec::new();
        for (label, items) in [
            ("lost", &self.lost),
            ("wrong", &self.wrong),
            ("keys left", &self.keys_left),
            ("zombie", &self.zombies),
            ("duplicate", &self.duplicates),
            ("taken back", &self.taken_back),
            ("record left", &self.records_left),
            ("other", &self.other),
        ] {
            all.extend(items.iter().map(|p| format!("{label}: {p}")));
        }
        all
    }
}

/// Checks the results of every completed node of `flow` (see the module docs, 2).
fn check_results(planned: &PlannedFlow, flow: &Value, wrong: &mut Vec<String>) {
    let id = flow["id"].as_str().unwrap_or_default();
    for node in &planned.nodes {
        let Some(view) = node_of(flow, &node.name) else {
            wrong.push(format!(
                "flow {id} ({}) has no node {}",
                planned.name, node.name
            ));
            continue;
        };
        if view["status"] != "completed" {
            continue;
        }
        let attempt = view["attempt"].as_u64().unwrap_or(0);
        let expected = match &node.kind {
            Kind::Echo(data) => {
                let mut parents = Map::new();
                for p in &node.parents {
                    let parent = node_of(flow, p).cloned().unwrap_or(Value::Null);
                    if parent["status"] != "completed" {
                        wrong.push(format!(
                            "flow {id} node {} completed while its parent {p} is {}",
                            node.name, parent["status"]
                        ));
                    }
                    parents.insert(p.clone(), parent["result"].clone());
                }
                json!({"data": data, "parents": parents})
            }
            Kind::Sleep(ms) => json!({"sleptMs": ms}),
            Kind::Fail { times } => {
                if attempt <= *times {
                    wrong.push(format!(
                        "flow {id} node {} completed at attempt {attempt}, but `fail` fails up to attempt {times}",
                        node.name
                    ));
                }
                json!({"attempt": attempt})
            }
        };
        if view["result"] != expected {
            wrong.push(format!(
                "flow {id} node {}: result {}, expected {expected}",
                node.name, view["result"]
            ));
        }
    }
}

/// One thing a client saw about a flow.
#[derive(Debug)]
struct Seen {
    /// Where from: `ws event`, `ws snapshot`, `GET`.
    source: &'static str,
    /// A time from which the seen state held (an event's `ts`, a view's
    /// `updatedAt`).
    since_ms: u64,
    seq: u64,
    what: SeenState,
}

#[derive(Debug)]
enum SeenState {
    Flow(String),
    Node {
        name: String,
        status: String,
        attempt: u64,
        result: Option<Value>,
    },
}

/// Everything seen in one flow view (a snapshot or a GET).
fn seen_in_view(source: &'static str, view: &Value, out: &mut Vec<Seen>) {
    let since_ms = view["updatedAt"].as_u64().unwrap_or(0);
    let seq = view["seq"].as_u64().unwrap_or(0);
    out.push(Seen {
        source,
        since_ms,
        seq,
        what: SeenState::Flow(view["status"].as_str().unwrap_or_default().to_owned()),
    });
    for node in view["nodes"].as_array().into_iter().flatten() {
        out.push(Seen {
            source,
            since_ms,
            seq,
            what: SeenState::Node {
                name: node["name"].as_str().unwrap_or_default().to_owned(),
                status: node["status"].as_str().unwrap_or_default().to_owned(),
                attempt: node["attempt"].as_u64().unwrap_or(0),
                result: node.get("result").cloned(),
            },
        });
    }
}

/// Checks what was seen of one flow against its final durable view (module docs,
/// 5). `retries` are the times (ms) at which retries of the flow were answered,
/// or given up on without an answer.
fn check_seen(
    id: &str,
    seen: &[Seen],
    final_view: &Value,
    retries: &[u64],
    problems: &mut Vec<String>,
) {
    let final_seq = final_view["seq"].as_u64().unwrap_or(0);
    let final_status = final_view["status"].as_str().unwrap_or_default();
    let retried_since = |t: u64| retries.iter().any(|&r| r >= t);
    for s in seen {
        if s.seq > final_seq {
            problems.push(format!(
                "flow {id}: {} at seq {} but the durable flow is at seq {final_seq}",
                s.source, s.seq
            ));
        }
        match &s.what {
            SeenState::Flow(status) => {
                let undone = match status.as_str() {
                    "completed" => final_status != "completed",
                    "failed" | "cancelled" => final_status != status && !retried_since(s.since_ms),
                    _ => false,
                };
                if undone {
                    problems.push(format!(
                        "flow {id}: seen {status} ({} seq {}, since {}), ends {final_status}{}",
                        s.source,
                        s.seq,
                        s.since_ms,
                        if retries.is_empty() {
                            " without any retry"
                        } else {
                            " with no retry after it"
                        }
                    ));
                }
            }
            SeenState::Node {
                name,
                status,
                attempt,
                result,
            } => {
                let Some(fin) = node_of(final_view, name) else {
                    problems.push(format!(
                        "flow {id}: node {name} seen ({}) but not in the flow",
                        s.source
                    ));
                    continue;
                };
                let fin_status = fin["status"].as_str().unwrap_or_default();
                let fin_attempt = fin["attempt"].as_u64().unwrap_or(0);
                if fin_attempt < *attempt {
                    problems.push(format!(
                        "flow {id} node {name}: attempt {attempt} seen ({} seq {}), durable attempt {fin_attempt}",
                        s.source, s.seq
                    ));
                }
                match status.as_str() {
                    "completed" => {
                        if fin_status != "completed" || fin_attempt != *attempt {
                            problems.push(format!(
                                "flow {id} node {name}: seen completed at attempt {attempt} ({} seq {}), \
                                 ends {fin_status} at attempt {fin_attempt}",
                                s.source, s.seq
                            ));
                        } else if let Some(result) = result {
                            if fin.get("result") != Some(result) {
                                problems.push(format!(
                                    "flow {id} node {name}: result {result} seen ({} seq {}), durable result {}",
                                    s.source, s.seq, fin["result"]
                                ));
                            }
                        }
                    }
                    "failed" | "skipped" | "cancelled" => {
                        let same = fin_status == status && fin_attempt == *attempt;
                        if !same && !retried_since(s.since_ms) {
                            problems.push(format!(
                                "flow {id} node {name}: seen {status} at attempt {attempt} ({} seq {}, since {}), \
                                 ends {fin_status} at attempt {fin_attempt} with no retry after it",
                                s.source, s.seq, s.since_ms
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// What is left in Redis under `prefix` but the global keys (module docs, 6).
fn redis_leftovers(redis: &RedisServer, prefix: &str) -> Result<Vec<String>, String> {
    use redis::Commands;
    let mut conn = redis.connection().map_err(|e| e.to_string())?;
    let keys: Vec<String> = conn
        .scan_match::<_, String>(format!("{prefix}:*"))
        .map_err(|e| e.to_string())?
        .collect::<redis::RedisResult<Vec<String>>>()
        .map_err(|e| e.to_string())?;
    let mut left = Vec::new();
    for key in keys {
        let short = key
            .strip_prefix(&format!("{prefix}:"))
            .unwrap_or(&key)
            .to_owned();
        if GLOBAL_KEYS.contains(&short.as_str()) {
            continue;
        }
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query(&mut conn)
            .map_err(|e| e.to_string())?;
        let is_stream = kind == "stream"
            && (short == "completions"
                || (short.starts_with("q:") && !short.ends_with(":delayed")));
        if !is_stream {
            let what = match kind.as_str() {
                "hash" => format!(
                    "{} fields",
                    conn.hlen::<_, usize>(&key).map_err(|e| e.to_string())?
                ),
                "zset" => format!(
                    "{} members",
                    conn.zcard::<_, usize>(&key).map_err(|e| e.to_string())?
                ),
                _ => String::new(),
            };
            left.push(format!("key {key} ({kind} {what})"));
            continue;
        }
        let len: usize = conn.xlen(&key).map_err(|e| e.to_string())?;
        let groups: redis::streams::StreamInfoGroupsReply =
            conn.xinfo_groups(&key).map_err(|e| e.to_string())?;
        let pending: Vec<String> = groups
            .groups
            .iter()
            .filter(|g| g.pending > 0)
            .map(|g| format!("{} pending in group {}", g.pending, g.name))
            .collect();
        if len > 0 || !pending.is_empty() {
            let mut entries = String::new();
            if len > 0 {
                let range: redis::streams::StreamRangeReply = conn
                    .xrange_count(&key, "-", "+", 3)
                    .map_err(|e| e.to_string())?;
                let shown: Vec<String> = range
                    .ids
                    .iter()
                    .map(|e| {
                        let fields: BTreeMap<String, String> = e
                            .map
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.clone(),
                                    redis::from_redis_value::<String>(v.clone())
                                        .unwrap_or_default(),
                                )
                            })
                            .collect();
                        format!("{fields:?}")
                    })
                    .collect();
                entries = format!("; first entries: {}", shown.join(", "));
            }
            left.push(format!(
                "stream {key}: XLEN {len}, {}{entries}",
                pending.join(", ")
            ));
        }
    }
    Ok(left)
}

/// Records left in the server's sled data dir (the server must be gone): every
/// tree but `meta` and sled's default tree must be empty.
fn sled_leftovers(dir: &std::path::Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let db = loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => break db,
            Err(e) if Instant::now() > deadline => {
                return vec![format!("cannot open the data dir: {e}")]
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let mut left = Vec::new();
    for name in db.tree_names() {
        let tree_name = String::from_utf8_lossy(&name).into_owned();
        if tree_name == "meta" || tree_name == "__sled__default" {
            continue;
        }
        let tree = db.open_tree(&name).unwrap();
        let count = tree.len();
        if count > 0 {
            let keys: Vec<String> = tree
                .iter()
                .keys()
                .take(3)
                .filter_map(Result::ok)
                .map(|k| format!("{:02x?}", &k[..k.len().min(20)]))
                .collect();
            left.push(format!(
                "tree {tree_name}: {count} records, e.g. {}",
                keys.join(", ")
            ));
        }
    }
    left
}

// ---------------------------------------------------------------------------------
// One seed.
// ---------------------------------------------------------------------------------

/// One seed's run: the plan, the Redis, the processes and what was recorded.
struct Run {
    seed: u64,
    size: Size,
    plan: Plan,
    planned: Arc<Vec<PlannedFlow>>,
    redis: RedisServer,
    fleet: Fleet,
    shared: Arc<Shared>,
    /// Choices made while faults run (pauses, failpoints, which worker).
    fault_rng: Rng,
    /// When the window began.
    start: Instant,
}

/// What the run recorded, taken out of [`Shared`] once the clients stopped.
struct Recorded {
    creates: HashMap<usize, CreateOutcome>,
    ops: Vec<OpRecord>,
    gets: Vec<GetRecord>,
    ws: Vec<WsRecord>,
}

impl Run {
    /// Redis, a server and the workers, and the WebSocket recorder.
    fn start(seed: u64, size: &Size) -> Run {
        let plan = make_plan(seed, size);
        let mut fault_rng = plan.fault_rng.clone();
        let redis = RedisServer::start();
        let mut deployment = Deployment::new(&redis.url);
        let mut problems: Vec<String> = Vec::new();
        let failpoints = fault_rng
            .chance(size.failpoint_chance)
            .then(|| pick_failpoints(&mut fault_rng));
        let (server, failpoints) = Fleet::start_server(&mut deployment, failpoints, &mut problems);
        if let Some(f) = &failpoints {
            println!("chaos: seed {seed}:   0.0s the server starts with FAILPOINTS={f}");
        }
        let workers: Vec<Proc> = (0..WORKERS)
            .map(|_| deployment.worker(&worker_args()))
            .collect();
        let shared = Arc::new(Shared {
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap(),
            url: RwLock::new(server.url.clone()),
            creates: Mutex::default(),
            ops: Mutex::default(),
            gets: Mutex::default(),
            ws: Mutex::default(),
            ws_connections: Mutex::default(),
            stop_ws: AtomicBool::new(false),
        });
        let fleet = Fleet {
            deployment,
            server,
            faults: Faults {
                failpoints: usize::from(failpoints.is_some()),
                ..Faults::default()
            },
            server_failpoints: failpoints,
            workers,
            exits: Vec::new(),
            problems,
        };
        Run {
            seed,
            size: size.clone(),
            planned: Arc::new(plan.flows.clone()),
            plan,
            redis,
            fleet,
            shared,
            fault_rng,
            start: Instant::now(),
        }
    }

    /// Prints one line of the run's timeline.
    fn log(&self, what: &str) {
        println!(
            "chaos: seed {}: {:>5.1}s {what}",
            self.seed,
            self.start.elapsed().as_secs_f64()
        );
    }

    /// Waits until `due`, restarting processes that exit on their own meanwhile
    /// (with failpoints at `chance` % for a server).
    async fn wait_until(&mut self, due: Instant, chance: u64) {
        loop {
            let (fleet, shared, rng) = (&mut self.fleet, &self.shared, &mut self.fault_rng);
            blocking(|| fleet.revive(shared, rng, chance));
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
    }

    /// The window: creates, requests and faults at once, as planned.
    async fn window(&mut self) {
        self.start = Instant::now();
        let start = self.start;
        let creator: JoinHandle<Vec<JoinHandle<()>>> = {
            let shared = Arc::clone(&self.shared);
            let planned = Arc::clone(&self.planned);
            let creates = self.plan.creates.clone();
            tokio::spawn(async move {
                let mut tasks = Vec::new();
                for (at, index) in creates {
                    tokio::time::sleep_until((start + Duration::from_millis(at)).into()).await;
                    tasks.push(tokio::spawn(create(
                        Arc::clone(&shared),
                        planned[index].clone(),
                    )));
                }
                tasks
            })
        };
        let requester = tokio::spawn(run_ops(
            Arc::clone(&self.shared),
            self.seed,
            std::mem::take(&mut self.plan.ops),
            self.plan.op_rng.clone(),
            start,
        ));
        let mut have_snapshot = false;
        for (at, fault) in self.plan.faults.clone() {
            self.wait_until(
                start + Duration::from_millis(at),
                self.size.failpoint_chance,
            )
            .await;
            let note = self.fault(fault, &mut have_snapshot).await;
            self.log(&format!("{fault:?}{note}"));
        }
        self.wait_until(start + self.size.window, self.size.failpoint_chance)
            .await;
        let [cancels, retries, deletes] = requester.await.unwrap();
        self.fleet.faults.cancel = cancels;
        self.fleet.faults.retry = retries;
        self.fleet.faults.delete = deletes;
        for task in creator.await.unwrap() {
            task.await.unwrap();
        }
    }

    /// Does one fault; returns a note for the timeline.
    async fn fault(&mut self, fault: Fault, have_snapshot: &mut bool) -> String {
        let chance = self.size.failpoint_chance;
        match fault {
            Fault::KillServer => {
                self.fleet.server.proc.kill();
                self.fleet.faults.kill_server += 1;
                let down = self.fault_rng.range(0, 800);
                tokio::time::sleep(Duration::from_millis(down)).await;
                let failpoints = self
                    .fault_rng
                    .chance(chance)
                    .then(|| pick_failpoints(&mut self.fault_rng));
                let note = match &failpoints {
                    Some(f) => format!(" (down {down} ms; back with FAILPOINTS={f})"),
                    None => format!(" (down {down} ms)"),
                };
                let (fleet, shared) = (&mut self.fleet, &self.shared);
                blocking(|| fleet.restart_server(shared, failpoints));
                note
            }
            Fault::KillWorker => {
                let i = self.fault_rng.index(self.fleet.workers.len());
                self.fleet.workers[i].kill();
                self.fleet.faults.kill_worker += 1;
                let down = self.fault_rng.range(0, 1_000);
                tokio::time::sleep(Duration::from_millis(down)).await;
                let fleet = &mut self.fleet;
                fleet.workers[i] = blocking(|| fleet.deployment.worker(&worker_args()));
                format!(" (worker {i}, down {down} ms)")
            }
            Fault::FlushAll => match blocking(|| self.redis.flushall()) {
                Ok(()) => {
                    self.fleet.faults.flushall += 1;
                    String::new()
                }
                Err(e) => format!(" failed: {e}"),
            },
            Fault::Snapshot => match blocking(|| self.redis.snapshot(SNAPSHOT)) {
                Ok(()) => {
                    *have_snapshot = true;
                    String::new()
                }
                Err(e) => format!(" failed: {e}"),
            },
            Fault::Rollback => {
                if *have_snapshot {
                    let redis = &mut self.redis;
                    blocking(|| redis.restart_from(SNAPSHOT));
                    self.fleet.faults.rollback += 1;
                    String::new()
                } else {
                    " skipped: no snapshot".to_owned()
                }
            }
        }
    }

    /// The end of the faults, so that the last one cannot be healed by a restart:
    /// a server without failpoints (restarted if it had some), then a snapshot, the
    /// worker processes SIGKILLed, the tail flows created (their jobs on `remote`
    /// wait, nobody serves it), Redis rolled back to the snapshot (the marker is
    /// there, those jobs are not), and the workers started again. This is the
    /// partial loss the engine must repair on its own.
    async fn last_faults(&mut self) {
        if self.fleet.server_failpoints.is_some() {
            self.fleet.server.proc.kill();
            self.fleet.faults.kill_server += 1;
            let (fleet, shared) = (&mut self.fleet, &self.shared);
            blocking(|| fleet.restart_server(shared, None));
            self.log("KillServer (back without failpoints, for good)");
        }
        self.wait_until(Instant::now(), 0).await;
        if let Err(e) = blocking(|| self.redis.snapshot(SNAPSHOT)) {
            self.fleet
                .problems
                .push(format!("the last snapshot failed: {e}"));
            return;
        }
        self.log("Snapshot");
        for worker in &mut self.fleet.workers {
            worker.kill();
            self.fleet.faults.kill_worker += 1;
        }
        self.log("KillWorker (all of them)");
        let tail: Vec<JoinHandle<()>> = self.planned
            [self.size.flows..self.size.flows + self.size.tail_flows]
            .iter()
            .map(|flow| tokio::spawn(create(Arc::clone(&self.shared), flow.clone())))
            .collect();
        for task in tail {
            task.await.unwrap();
        }
        // Let the server enqueue what the tail flows start with.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let redis = &mut self.redis;
        blocking(|| redis.restart_from(SNAPSHOT));
        self.fleet.faults.rollback += 1;
        self.log(&format!(
            "Rollback (after {} more flows were created)",
            self.size.tail_flows
        ));
        let fleet = &mut self.fleet;
        for i in 0..fleet.workers.len() {
            fleet.workers[i] = blocking(|| fleet.deployment.worker(&worker_args()));
        }
        self.log("workers back; no more faults");
    }

    /// The last requests, with no restart after them: the late flows are created,
    /// and each is cancelled or deleted (in turn) once its job runs on `remote`,
    /// in a worker process that then reports the job cancelled through the
    /// completions stream, a record the engine must still acknowledge.
    async fn last_requests(&mut self) {
        let first = self.size.flows + self.size.tail_flows;
        let late: Vec<PlannedFlow> = self.planned[first..].to_vec();
        let creates: Vec<JoinHandle<()>> = late
            .iter()
            .map(|flow| tokio::spawn(create(Arc::clone(&self.shared), flow.clone())))
            .collect();
        for task in creates {
            task.await.unwrap();
        }
        for (i, flow) in late.iter().enumerate() {
            let created = self
                .shared
                .creates
                .lock()
                .unwrap()
                .get(&flow.index)
                .cloned();
            let Some(id) = created.and_then(|c| c.ids.first().cloned()) else {
                continue;
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut seen = Value::Null;
            while Instant::now() < deadline {
                match self.shared.get_flow(&id).await {
                    Some((200, view))
                        if remote_job_running(&view) || view["status"] != "running" =>
                    {
                        seen = view;
                        break;
                    }
                    Some((_, view)) => seen = view,
                    None => {}
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (method, path, kind) = if i % 2 == 0 {
                (
                    reqwest::Method::POST,
                    format!("/flows/{id}/cancel"),
                    "cancel",
                )
            } else {
                (reqwest::Method::DELETE, format!("/flows/{id}"), "delete")
            };
            let status = self.shared.op(method, &id, &path, kind).await;
            if kind == "cancel" {
                self.fleet.faults.cancel += 1;
            } else {
                self.fleet.faults.delete += 1;
            }
            self.log(&format!(
                "{kind} {} -> {}",
                target(&id, &seen),
                status.map_or("no answer".to_owned(), |s| s.to_string())
            ));
        }
    }

    /// Waits (at most `drain`) until no flow runs; returns those still running.
    async fn drain(&mut self, drain: Duration) -> Vec<Value> {
        let deadline = Instant::now() + drain;
        let mut running: Vec<Value> = Vec::new();
        loop {
            self.wait_until(Instant::now(), 0).await;
            if let Some(now) =
                list_all(&self.shared.client, &self.shared.url(), Some("running")).await
            {
                running = now;
                if running.is_empty() {
                    return running;
                }
            }
            if Instant::now() >= deadline {
                return running;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Stops the WebSocket recorder (after letting it read what is on its way) and
    /// takes what every client recorded.
    async fn stop_recording(&self, recorder: JoinHandle<()>) -> Recorded {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.shared.stop_ws.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(10), recorder).await;
        Recorded {
            creates: self.shared.creates.lock().unwrap().clone(),
            ops: self.shared.ops.lock().unwrap().clone(),
            gets: self.shared.gets.lock().unwrap().clone(),
            ws: self.shared.ws.lock().unwrap().clone(),
        }
    }
}

/// The final, durable state of every listed flow (GET of each), and the list.
async fn final_views(
    shared: &Shared,
    findings: &mut Findings,
) -> (Vec<Value>, HashMap<String, Value>) {
    let url = shared.url();
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        if let Some(listed) = list_all(&shared.client, &url, None).await {
            break listed;
        }
        assert!(Instant::now() < deadline, "GET /flows keeps failing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut finals: HashMap<String, Value> = HashMap::new();
    for flow in &listed {
        let id = flow["id"].as_str().unwrap_or_default().to_owned();
        match get(&shared.client, &url, &format!("/flows/{id}")).await {
            Some((200, view)) => {
                finals.insert(id, view);
            }
            other => findings.zombies.push(format!(
                "flow {id} ({}) is listed but GET answers {}",
                flow["name"],
                match other {
                    Some((status, body)) => format!("{status} {body}"),
                    None => "nothing".to_owned(),
                }
            )),
        }
    }
    (listed, finals)
}

/// Checks 1, 3 and 4 of the module docs: every created flow is there once (or
/// gone, if deleted), and deleted flows stay gone.
async fn check_presence(
    shared: &Shared,
    planned: &[PlannedFlow],
    listed: &[Value],
    rec: &Recorded,
    findings: &mut Findings,
) {
    let url = shared.url();
    let names: HashSet<&str> = planned.iter().map(|f| f.name.as_str()).collect();
    let listed_by_name = ids_by_name(listed);
    for name in listed_by_name.keys() {
        if !names.contains(name.as_str()) {
            findings.other.push(format!(
                "listed flow {name:?} was never created by the test"
            ));
        }
    }
    let deleted_at: HashMap<&str, u64> = rec
        .ops
        .iter()
        .filter(|o| o.kind == "delete" && o.status == Some(204))
        .map(|o| (o.flow.as_str(), o.done_ms))
        .collect();
    // A DELETE without a clear answer may or may not have deleted the flow.
    let maybe_deleted: HashSet<&str> = rec
        .ops
        .iter()
        .filter(|o| o.kind == "delete" && o.status != Some(204) && o.status != Some(404))
        .map(|o| o.flow.as_str())
        .collect();
    let mut first_delete_sent: HashMap<&str, u64> = HashMap::new();
    for o in rec.ops.iter().filter(|o| o.kind == "delete") {
        let t = first_delete_sent
            .entry(o.flow.as_str())
            .or_insert(o.sent_ms);
        *t = (*t).min(o.sent_ms);
    }
    for flow in planned {
        let outcome = rec.creates.get(&flow.index).cloned().unwrap_or_default();
        let listed_ids = listed_by_name.get(&flow.name).cloned().unwrap_or_default();
        let answered: HashSet<&String> = outcome.ids.iter().collect();
        if answered.len() > 1 {
            findings.duplicates.push(format!(
                "{} (key {:?}) was answered with different flows: {:?}",
                flow.name, flow.key, outcome.ids
            ));
        }
        if flow.key.is_some() && outcome.ids.is_empty() {
            findings.other.push(format!(
                "{} (key {:?}) was never answered 201 in {CREATE_DEADLINE:?}: {:?}",
                flow.name, flow.key, outcome.refused
            ));
        }
        let Some(id) = outcome.ids.first() else {
            // No 201: the flow may exist (a create without a clear answer), once.
            if listed_ids.len() > usize::from(outcome.unclear) {
                findings.duplicates.push(format!(
                    "{} was never answered 201 (unclear: {}) and is listed {} times",
                    flow.name,
                    outcome.unclear,
                    listed_ids.len()
                ));
            }
            continue;
        };
        if let Some(&done) = deleted_at.get(id.as_str()) {
            if !listed_ids.is_empty() {
                findings.zombies.push(format!(
                    "flow {id} ({}) was deleted (204) and is listed again",
                    flow.name
                ));
            }
            match get(&shared.client, &url, &format!("/flows/{id}")).await {
                Some((404, _)) => {}
                other => findings.zombies.push(format!(
                    "flow {id} ({}) was deleted (204) and GET answers {}",
                    flow.name,
                    match other {
                        Some((status, body)) => format!("{status} {}", describe(&body)),
                        None => "nothing".to_owned(),
                    }
                )),
            }
            for msg in rec.ws.iter().map(|r| &r.msg) {
                if msg["type"] == "flow:updated"
                    && msg["flowId"] == id.as_str()
                    && msg["ts"].as_u64() > Some(done)
                {
                    findings.zombies.push(format!(
                        "flow {id} was deleted (204 at {done}) and then sent an event: {msg}"
                    ));
                }
            }
            for g in rec
                .gets
                .iter()
                .filter(|g| &g.flow == id && g.status == 200 && g.sent_ms > done)
            {
                findings.zombies.push(format!(
                    "flow {id} was deleted (204 at {done}) and a GET sent at {} answered 200",
                    g.sent_ms
                ));
            }
            continue;
        }
        let allowed = if maybe_deleted.contains(id.as_str()) {
            0..=1
        } else {
            1..=1
        };
        if listed_ids.len() > 1 {
            findings.duplicates.push(format!(
                "{} (key {:?}) is listed {} times: {listed_ids:?}",
                flow.name,
                flow.key,
                listed_ids.len()
            ));
        } else if !allowed.contains(&listed_ids.len()) {
            let now = get(&shared.client, &url, &format!("/flows/{id}")).await;
            findings.lost.push(format!(
                "flow {id} ({}) was answered 201 and never deleted, but is not listed (GET: {:?})",
                flow.name,
                now.map(|(s, _)| s)
            ));
        } else if listed_ids.first().is_some_and(|l| l != id) {
            findings.duplicates.push(format!(
                "{} (key {:?}) was answered {id} but the list shows {listed_ids:?}",
                flow.name, flow.key
            ));
        }
        // A 404 before any DELETE was sent: the flow was lost, if only for a while.
        let first_delete = first_delete_sent
            .get(id.as_str())
            .copied()
            .unwrap_or(u64::MAX);
        let early_404 = rec
            .gets
            .iter()
            .filter(|g| &g.flow == id && g.status == 404)
            .map(|g| g.sent_ms)
            .chain(
                rec.ops
                    .iter()
                    .filter(|o| &o.flow == id && o.status == Some(404))
                    .map(|o| o.sent_ms),
            )
            .filter(|&t| t < first_delete)
            .min();
        if let Some(t) = early_404 {
            findings.lost.push(format!(
                "flow {id} ({}) answered 404 to a request sent at {t}, before any DELETE",
                flow.name
            ));
        }
    }
}

/// Numbers about what the clients saw, for the detail line.
#[derive(Debug, Default)]
struct SeenCounts {
    ws_events: usize,
    ws_snapshots: usize,
    get_views: usize,
}

/// Checks 2 and 5 of the module docs on every flow with a final view.
fn check_flows(
    planned: &[PlannedFlow],
    finals: &HashMap<String, Value>,
    rec: &Recorded,
    findings: &mut Findings,
) -> SeenCounts {
    let by_name: HashMap<&str, &PlannedFlow> =
        planned.iter().map(|f| (f.name.as_str(), f)).collect();
    let mut counts = SeenCounts::default();
    let mut seen: HashMap<String, Vec<Seen>> = HashMap::new();
    let mut events_by_seq: HashMap<(String, u64), Value> = HashMap::new();
    for record in &rec.ws {
        let msg = &record.msg;
        match msg["type"].as_str() {
            Some("flow:updated") => {
                counts.ws_events += 1;
                let id = msg["flowId"].as_str().unwrap_or_default().to_owned();
                let seq = msg["seq"].as_u64().unwrap_or(0);
                let essence = json!({"node": msg.get("node"), "status": msg["status"], "attempt": msg["attempt"]});
                if let Some(before) = events_by_seq.insert((id.clone(), seq), essence.clone()) {
                    if before != essence {
                        findings.taken_back.push(format!(
                            "flow {id} seq {seq}: two different events, {before} and {essence} \
                             (the second on connection {})",
                            record.conn
                        ));
                    }
                }
                let status = msg["status"].as_str().unwrap_or_default().to_owned();
                let what = match msg["node"].as_str() {
                    Some(node) => SeenState::Node {
                        name: node.to_owned(),
                        status,
                        attempt: msg["attempt"].as_u64().unwrap_or(0),
                        result: None,
                    },
                    None => SeenState::Flow(status),
                };
                seen.entry(id).or_default().push(Seen {
                    source: "ws event",
                    since_ms: msg["ts"].as_u64().unwrap_or(0),
                    seq,
                    what,
                });
            }
            Some("snapshot") => {
                counts.ws_snapshots += 1;
                let id = msg["flow"]["id"].as_str().unwrap_or_default().to_owned();
                seen_in_view("ws snapshot", &msg["flow"], seen.entry(id).or_default());
            }
            _ => {}
        }
    }
    for g in rec.gets.iter().filter(|g| g.status == 200) {
        counts.get_views += 1;
        seen_in_view("GET", &g.body, seen.entry(g.flow.clone()).or_default());
    }
    for (id, view) in finals {
        let name = view["name"].as_str().unwrap_or_default();
        if let Some(planned) = by_name.get(name) {
            check_results(planned, view, &mut findings.wrong);
        }
        let sent = |kind: &str| rec.ops.iter().any(|o| &o.flow == id && o.kind == kind);
        if view["status"] == "cancelled" && !sent("cancel") {
            findings.taken_back.push(format!(
                "flow {id} ({name}) ended cancelled, but no cancel was sent"
            ));
        }
        // Retries that may have been applied: answered 200 (or 5xx), or not at all.
        let retries: Vec<u64> = rec
            .ops
            .iter()
            .filter(|o| {
                &o.flow == id && o.kind == "retry" && o.status != Some(409) && o.status != Some(404)
            })
            .map(|o| o.done_ms)
            .collect();
        if let Some(seen) = seen.get(id) {
            check_seen(id, seen, view, &retries, &mut findings.taken_back);
        }
    }
    counts
}

/// Deletes every flow (each listed one and each answered 201), then waits until
/// the list is empty and Redis holds nothing but the global keys (check 6).
async fn delete_everything(
    run: &Run,
    finals: &HashMap<String, Value>,
    rec: &Recorded,
    findings: &mut Findings,
) {
    let shared = &run.shared;
    let url = shared.url();
    let mut ids: Vec<String> = finals.keys().cloned().collect();
    ids.extend(rec.creates.values().filter_map(|c| c.ids.first().cloned()));
    ids.sort();
    ids.dedup();
    for id in &ids {
        let mut answer = None;
        for _ in 0..5 {
            answer = shared
                .op(
                    reqwest::Method::DELETE,
                    id,
                    &format!("/flows/{id}"),
                    "final delete",
                )
                .await;
            if answer.is_some_and(|s| s < 500) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !matches!(answer, Some(204 | 404)) {
            findings
                .other
                .push(format!("the final DELETE of flow {id} answered {answer:?}"));
        }
    }
    let deadline = Instant::now() + CLEAN;
    loop {
        let listed = list_all(&shared.client, &url, None).await;
        let left = match blocking(|| redis_leftovers(&run.redis, &run.fleet.deployment.prefix)) {
            Ok(left) => left,
            Err(e) => vec![format!("cannot read Redis: {e}")],
        };
        let clean = listed.as_ref().is_some_and(Vec::is_empty) && left.is_empty();
        if clean || Instant::now() >= deadline {
            for flow in listed.into_iter().flatten() {
                findings.zombies.push(format!(
                    "flow {} ({}) is still listed {CLEAN:?} after its DELETE",
                    flow["id"], flow["name"]
                ));
            }
            findings.keys_left.extend(left);
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What a seed's run ends with.
struct SeedReport {
    summary: String,
    detail: String,
    problems: Vec<String>,
}

async fn run_seed(seed: u64, size: &Size, drain: Duration) -> SeedReport {
    let began = Instant::now();
    println!("chaos: seed {seed}: starting ({size:?})");
    let mut run = blocking(|| Run::start(seed, size));
    let recorder = tokio::spawn(record_ws(Arc::clone(&run.shared)));
    run.window().await;
    run.last_faults().await;
    run.last_requests().await;
    let faults_over = Instant::now();
    let still_running = run.drain(drain).await;
    let drained_in = faults_over.elapsed();
    let rec = run.stop_recording(recorder).await;

    let mut findings = Findings::default();
    let (listed, finals) = final_views(&run.shared, &mut findings).await;
    for flow in &still_running {
        let id = flow["id"].as_str().unwrap_or_default();
        findings.lost.push(format!(
            "flow {id} ({}) is still running {:.0} s after the faults stopped: {}",
            flow["name"],
            drain.as_secs_f64(),
            finals.get(id).map(describe).unwrap_or_default()
        ));
    }
    check_presence(&run.shared, &run.planned, &listed, &rec, &mut findings).await;
    let seen = check_flows(&run.planned, &finals, &rec, &mut findings);
    let mut ended: BTreeMap<String, usize> = BTreeMap::new();
    for view in finals.values() {
        let status = view["status"].as_str().unwrap_or_default().to_owned();
        *ended.entry(status).or_default() += 1;
    }
    let engine_failed = finals.values().filter(|v| v.get("error").is_some()).count();
    delete_everything(&run, &finals, &rec, &mut findings).await;

    if !run.fleet.server.proc.alive() {
        findings.other.push(format!(
            "the server died after the faults stopped:\n{}",
            last_lines(&run.fleet.server.proc.tail(), 30)
        ));
    }
    let server_tail = run.fleet.server.proc.tail();
    run.fleet.server.proc.kill();
    for worker in &mut run.fleet.workers {
        worker.kill();
    }
    let fleet = &mut run.fleet;
    findings
        .records_left
        .extend(blocking(|| sled_leftovers(fleet.deployment.data.path())));
    let runs = blocking(|| fleet.deployment.finish());
    findings.other.extend(fleet.problems.iter().cloned());

    let f = &fleet.faults;
    let created = rec.creates.values().filter(|c| !c.ids.is_empty()).count();
    let summary = format!(
        "chaos: seed {seed}, flows {created}, faults {{kill_server: {}, kill_worker: {}, flushall: {}, \
         rollback: {}, failpoints: {}, cancel: {}, retry: {}, delete: {}}}, lost {}, wrong {}, \
         keys left {}, zombies {}",
        f.kill_server,
        f.kill_worker,
        f.flushall,
        f.rollback,
        f.failpoints,
        f.cancel,
        f.retry,
        f.delete,
        findings.lost.len(),
        findings.wrong.len(),
        findings.keys_left.len(),
        findings.zombies.len(),
    );
    let (connections, lagged) = *run.shared.ws_connections.lock().unwrap();
    let detail = format!(
        "chaos: seed {seed}: duplicates {}, taken back {}, records left {}, other {}; ended {ended:?} \
         ({engine_failed} failed by the engine); checked {} ws events, {} ws snapshots ({connections} \
         connections, {lagged} lagged) and {} GET views; {} hibernations; {} handler runs of {} jobs; \
         {} process exits on their own; drained in {:.1}s; took {:.1}s",
        findings.duplicates.len(),
        findings.taken_back.len(),
        findings.records_left.len(),
        findings.other.len(),
        seen.ws_events,
        seen.ws_snapshots,
        seen.get_views,
        fleet.deployment.hibernations(),
        runs.values().sum::<u32>(),
        runs.len(),
        fleet.exits.len(),
        drained_in.as_secs_f64(),
        began.elapsed().as_secs_f64(),
    );
    let mut problems = findings.all();
    problems.extend(fleet.exits.iter().map(|e| format!("note: {e}")));
    let failed = problems.iter().any(|p| !p.starts_with("note: "));
    if failed {
        eprintln!(
            "--- seed {seed}: last lines of the last server ---\n{}",
            last_lines(&server_tail, 60)
        );
    } else {
        problems.clear();
    }
    SeedReport {
        summary,
        detail,
        problems,
    }
}

/// A flow in one line: status and each node's status and attempt.
fn describe(flow: &Value) -> String {
    let nodes: Vec<String> = flow["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            format!(
                "{}={}#{}",
                n["name"].as_str().unwrap_or("?"),
                n["status"].as_str().unwrap_or("?"),
                n["attempt"]
            )
        })
        .collect();
    format!("{} [{}]", flow["status"], nodes.join(" "))
}

/// Whether this build has the engine's failpoints (`--features failpoints`):
/// without them `FAILPOINTS` is set on the servers and ignored.
fn failpoints_compiled() -> bool {
    cfg!(feature = "failpoints")
}

/// The command that runs `seed` again with the same settings.
fn replay_command(seed: u64, scale: usize, drain: Duration) -> String {
    let mut env = format!("DAGFLOW_CHAOS_SEED={seed}");
    if scale > 1 {
        env.push_str(&format!(" DAGFLOW_CHAOS_SCALE={scale}"));
    }
    if drain != DRAIN {
        env.push_str(&format!(" DAGFLOW_CHAOS_DRAIN_SECS={}", drain.as_secs()));
    }
    let features = if failpoints_compiled() {
        " --features failpoints"
    } else {
        ""
    };
    format!("{env} cargo test{features} --test chaos -- --nocapture")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_flow_ends_right_and_nothing_is_left_behind() {
    let scale = env_number("DAGFLOW_CHAOS_SCALE").unwrap_or(1).max(1) as usize;
    let size = Size::scaled(scale);
    let drain = env_number("DAGFLOW_CHAOS_DRAIN_SECS")
        .map(Duration::from_secs)
        .unwrap_or(DRAIN);
    let seeds: Vec<u64> = match (
        env_number("DAGFLOW_CHAOS_SEED"),
        env_number("DAGFLOW_CHAOS_SEEDS"),
    ) {
        (Some(seed), None) => vec![seed],
        (first, Some(n)) => {
            let mut rng = Rng(first.unwrap_or_else(clock_seed));
            let mut seeds = vec![rng.0];
            while seeds.len() < n as usize {
                seeds.push(rng.next() >> 1);
            }
            seeds
        }
        (None, None) => CI_SEEDS.to_vec(),
    };
    println!(
        "chaos: seeds {seeds:?}, scale {scale}, drain {drain:?}, failpoints compiled in: {}",
        if failpoints_compiled() {
            "yes"
        } else {
            "no (FAILPOINTS is ignored)"
        }
    );
    let mut failed: Vec<u64> = Vec::new();
    for seed in seeds {
        let report = run_seed(seed, &size, drain).await;
        println!("{}", report.summary);
        println!("{}", report.detail);
        if !report.problems.is_empty() {
            for p in report.problems.iter().take(60) {
                eprintln!("chaos: seed {seed}: {p}");
            }
            if report.problems.len() > 60 {
                eprintln!(
                    "chaos: seed {seed}: ... and {} more",
                    report.problems.len() - 60
                );
            }
            eprintln!(
                "chaos: seed {seed} FAILED; replay it with:\n  {}",
                replay_command(seed, scale, drain)
            );
            failed.push(seed);
        }
    }
    let replays: Vec<String> = failed
        .iter()
        .map(|&seed| replay_command(seed, scale, drain))
        .collect();
    assert!(
        failed.is_empty(),
        "chaos: seeds {failed:?} failed (see above); replay with:\n{}",
        replays.join("\n")
    );
}

// ---------------------------------------------------------------------------------
// The checks themselves, on made-up histories: each must catch what it is for
// and let the legitimate cases through.
// ---------------------------------------------------------------------------------

/// A final flow view with `(name, status, attempt, result)` nodes.
fn view(status: &str, seq: u64, nodes: &[(&str, &str, u64, Option<Value>)]) -> Value {
    let nodes: Vec<Value> = nodes
        .iter()
        .map(|(name, status, attempt, result)| {
            let mut node = json!({"name": name, "status": status, "attempt": attempt});
            if let Some(result) = result {
                node["result"] = result.clone();
            }
            node
        })
        .collect();
    json!({"id": "f", "name": "t", "status": status, "seq": seq, "updatedAt": 1_000, "nodes": nodes})
}

fn node_seen(name: &str, status: &str, attempt: u64, since_ms: u64, seq: u64) -> Seen {
    Seen {
        source: "ws event",
        since_ms,
        seq,
        what: SeenState::Node {
            name: name.to_owned(),
            status: status.to_owned(),
            attempt,
            result: None,
        },
    }
}

#[test]
fn check_seen_catches_what_a_crash_took_back() {
    let fin = view("running", 5, &[("a", "queued", 2, None)]);
    let mut problems = Vec::new();
    // Seen completed, durable queued again: taken back, retry or not.
    check_seen(
        "f",
        &[node_seen("a", "completed", 1, 100, 3)],
        &fin,
        &[500],
        &mut problems,
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    // A seq beyond the durable one.
    problems.clear();
    check_seen(
        "f",
        &[node_seen("a", "queued", 2, 100, 6)],
        &fin,
        &[],
        &mut problems,
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    // An attempt that went down.
    problems.clear();
    check_seen(
        "f",
        &[node_seen("a", "active", 3, 100, 4)],
        &fin,
        &[],
        &mut problems,
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    // A flow seen failed, running at the end without a retry after it.
    problems.clear();
    let failed = Seen {
        source: "GET",
        since_ms: 200,
        seq: 4,
        what: SeenState::Flow("failed".to_owned()),
    };
    check_seen("f", &[failed], &fin, &[150], &mut problems);
    assert_eq!(problems.len(), 1, "{problems:?}");
}

#[test]
fn check_seen_lets_retries_and_progress_through() {
    let fin = view(
        "completed",
        9,
        &[("a", "completed", 2, Some(json!({"attempt": 2})))],
    );
    let mut problems = Vec::new();
    let seen = [
        // Failed at attempt 1 at 100; a retry answered at 150 re-ran it.
        node_seen("a", "failed", 1, 100, 3),
        Seen {
            source: "ws event",
            since_ms: 100,
            seq: 4,
            what: SeenState::Flow("failed".to_owned()),
        },
        node_seen("a", "queued", 2, 150, 6),
        node_seen("a", "completed", 2, 160, 8),
        Seen {
            source: "ws snapshot",
            since_ms: 160,
            seq: 8,
            what: SeenState::Node {
                name: "a".to_owned(),
                status: "completed".to_owned(),
                attempt: 2,
                result: Some(json!({"attempt": 2})),
            },
        },
    ];
    check_seen("f", &seen, &fin, &[150], &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    // The same history with a different result in the snapshot is caught.
    let other = [Seen {
        source: "ws snapshot",
        since_ms: 160,
        seq: 8,
        what: SeenState::Node {
            name: "a".to_owned(),
            status: "completed".to_owned(),
            attempt: 2,
            result: Some(json!({"attempt": 3})),
        },
    }];
    check_seen("f", &other, &fin, &[150], &mut problems);
    assert_eq!(problems.len(), 1, "{problems:?}");
}

#[test]
fn check_results_follows_echo_through_parents() {
    let planned = PlannedFlow {
        index: 0,
        name: "t".to_owned(),
        key: None,
        mode: CreateMode::NoKey,
        spec: Value::Null,
        nodes: vec![
            PlannedNode {
                name: "a".to_owned(),
                parents: vec![],
                kind: Kind::Fail { times: 1 },
            },
            PlannedNode {
                name: "b".to_owned(),
                parents: vec!["a".to_owned()],
                kind: Kind::Echo(json!({"x": 1})),
            },
        ],
    };
    let a = Some(json!({"attempt": 2}));
    let good = json!({"data": {"x": 1}, "parents": {"a": {"attempt": 2}}});
    let mut wrong = Vec::new();
    check_results(
        &planned,
        &view(
            "completed",
            9,
            &[
                ("a", "completed", 2, a.clone()),
                ("b", "completed", 1, Some(good)),
            ],
        ),
        &mut wrong,
    );
    assert!(wrong.is_empty(), "{wrong:?}");
    // `b` got another parent result than the durable one.
    let stale = json!({"data": {"x": 1}, "parents": {"a": {"attempt": 1}}});
    check_results(
        &planned,
        &view(
            "completed",
            9,
            &[("a", "completed", 2, a), ("b", "completed", 1, Some(stale))],
        ),
        &mut wrong,
    );
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    // `fail` cannot complete at an attempt it fails at.
    wrong.clear();
    check_results(
        &planned,
        &view(
            "failed",
            9,
            &[
                ("a", "completed", 1, Some(json!({"attempt": 1}))),
                ("b", "pending", 0, None),
            ],
        ),
        &mut wrong,
    );
    assert_eq!(wrong.len(), 1, "{wrong:?}");
}

#[test]
fn sled_leftovers_sees_every_tree_but_meta() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("engine-id", "x")
            .unwrap();
        db.flush().unwrap();
    }
    assert!(sled_leftovers(dir.path()).is_empty());
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("specs").unwrap().insert("f", "{}").unwrap();
        db.flush().unwrap();
    }
    let left = sled_leftovers(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("tree specs: 1 records"), "{left:?}");
}
