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
//!    `P:marker`, `P:workers`, `P:config`, `P:queues:delayed`, `P:completions`,
//!    each queue's counter `P:q:{queue}:takes` and its lane streams
//!    `P:q:{queue}:{priority}[:new]`, the streams with XLEN 0 and no pending entry
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
//! # Layout
//!
//! `plan.rs` draws the flows, requests and faults from the seed; `clients.rs` runs
//! the creates, the requests and the WebSocket recorder and keeps what they saw;
//! `run.rs` holds the processes and the phases of a run; `checks.rs` the
//! invariants above (and their own tests on made-up histories); this file the
//! settings, one seed from start to report, and the test.
//!
//! The failpoints act only with `--features failpoints` (as `scripts/test.sh`
//! runs the tests); the first line printed says whether they are compiled in.
//! Needs `redis-server` on the PATH (Redis 7.0 or newer).

#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod checks;
mod clients;
mod plan;
mod run;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use checks::{
    check_flows, check_presence, delete_everything, final_views, sled_leftovers, Findings,
};
use clients::record_ws;
use common::process::blocking;
use common::rng::{clock_seed, Rng};
use run::{last_lines, Run};
use serde_json::Value;

// ---------------------------------------------------------------------------------
// Settings.
// ---------------------------------------------------------------------------------

/// The seeds CI runs (any seed is as good as another; these are fixed so that CI
/// runs the same plans every time).
pub(crate) const CI_SEEDS: [u64; 3] = [1_000_001, 1_000_002, 1_000_003];
/// `--hibernate-after` of the servers: flows waiting on a sleep or a backoff give
/// up their actor all through the run, and are woken by reports, cancels,
/// retries, deletes and resyncs.
pub(crate) const HIBERNATE_AFTER: &str = "200ms";
/// `--lease` of every process: a killed worker's jobs are reclaimed after this.
pub(crate) const LEASE: &str = "3s";
/// `--reconcile-every` of the servers: how soon a partial loss of Redis data (the
/// rollbacks) must be repaired. Short, so that a seed drains in seconds; the
/// repair is the same at the 30 s default.
pub(crate) const RECONCILE_EVERY: &str = "3s";
/// Local workers of the server. It does not serve `remote`.
pub(crate) const SERVER_QUEUES: &str = "default=4";
/// Queues of each worker process.
pub(crate) const WORKER_QUEUES: &str = "default=2,remote=4";
/// Worker processes.
pub(crate) const WORKERS: usize = 2;
/// Longest one HTTP request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a create with an Idempotency-Key is retried through outages.
pub(crate) const CREATE_DEADLINE: Duration = Duration::from_secs(60);
/// How long flows get to end once the faults stop, unless
/// `DAGFLOW_CHAOS_DRAIN_SECS` says otherwise.
pub(crate) const DRAIN: Duration = Duration::from_secs(90);
/// How long the deletes at the end get to leave nothing behind (a cancelled
/// remote job reports within the cancel grace, its record must then be acked).
pub(crate) const CLEAN: Duration = Duration::from_secs(30);
/// How long a failed flow must have been over before the DELETE/retry race is
/// run on it: hibernation after 200 ms plus its one-second grace.
pub(crate) const HIBERNATED_AFTER_MS: u64 = 1_500;
/// Keys of the prefix that may stay when every flow is deleted (besides the
/// queue streams and `P:completions`, which must be empty): the marker, the
/// workers' heartbeats, the deployment's shared settings, and the set of queue
/// names that have had delayed jobs (the engine promotes those queues' retries).
pub(crate) const GLOBAL_KEYS: [&str; 4] = ["marker", "workers", "config", "queues:delayed"];
/// The snapshot file a rollback returns to.
pub(crate) const SNAPSHOT: &str = "older.rdb";

/// Failpoints of the engine (`fail` crate syntax), with the actions this test
/// picks from for each: rare errors of each step, short sleeps, a few panics.
pub(crate) const ENGINE_FAILPOINTS: &[(&str, &[&str])] = &[
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
pub(crate) struct Size {
    /// Flows created during the window.
    pub(crate) flows: usize,
    /// Flows created at the end, while no worker process runs, between the last
    /// snapshot and the last rollback (see [`Run::last_faults`]).
    pub(crate) tail_flows: usize,
    /// Flows created last of all, each cancelled or deleted while its job runs on
    /// `remote`, with no restart after (see [`Run::last_requests`]).
    pub(crate) late_flows: usize,
    /// How long faults and requests go on.
    pub(crate) window: Duration,
    pub(crate) kill_server: usize,
    pub(crate) kill_worker: usize,
    pub(crate) flushall: usize,
    /// Rollbacks during the window (the last one, at the end, comes on top).
    pub(crate) rollback: usize,
    pub(crate) cancel: usize,
    pub(crate) retry: usize,
    pub(crate) delete: usize,
    /// DELETE and retry sent together on a hibernated failed flow.
    pub(crate) race: usize,
    /// Chance (%) that a server start in the window gets failpoints.
    pub(crate) failpoint_chance: u64,
}

impl Size {
    pub(crate) fn scaled(k: usize) -> Size {
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
pub(crate) fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")),
    )
}

/// Milliseconds since the epoch: the engine stamps events with the same clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a seed's run ends with.
pub(crate) struct SeedReport {
    pub(crate) summary: String,
    pub(crate) detail: String,
    pub(crate) problems: Vec<String>,
}

pub(crate) async fn run_seed(seed: u64, size: &Size, drain: Duration) -> SeedReport {
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
        match fleet.write_logs(seed) {
            Ok(dir) => eprintln!(
                "--- seed {seed}: the log of every process is in {}",
                dir.display()
            ),
            Err(e) => eprintln!("--- seed {seed}: could not write the logs: {e}"),
        }
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
pub(crate) fn describe(flow: &Value) -> String {
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
pub(crate) fn failpoints_compiled() -> bool {
    cfg!(feature = "failpoints")
}

/// The command that runs `seed` again with the same settings.
pub(crate) fn replay_command(seed: u64, scale: usize, drain: Duration) -> String {
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
