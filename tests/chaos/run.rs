//! The processes of one seed and the phases of its run: the window of faults
//! and requests, the last faults, the last requests, the drain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::clients::{
    create, remote_job_running, run_ops, target, CreateOutcome, GetRecord, OpRecord, Shared,
    WsRecord,
};
use crate::common::http::list_all;
use crate::common::process::{blocking, Deployment, Proc, ServeArgs, Server, WorkerArgs};
use crate::common::redis_server::RedisServer;
use crate::common::rng::Rng;
use crate::plan::{make_plan, pick_failpoints, Fault, Plan, PlannedFlow};
use crate::{
    Size, HIBERNATE_AFTER, LEASE, RECONCILE_EVERY, REQUEST_TIMEOUT, SERVER_QUEUES, SNAPSHOT,
    WORKERS, WORKER_QUEUES,
};
// ---------------------------------------------------------------------------------
// Processes and faults.
// ---------------------------------------------------------------------------------

/// Counts of what was done to the deployment and through the API.
#[derive(Debug, Default, Clone)]
pub(crate) struct Faults {
    pub(crate) kill_server: usize,
    pub(crate) kill_worker: usize,
    pub(crate) flushall: usize,
    pub(crate) rollback: usize,
    /// Server starts with a `FAILPOINTS` setting.
    pub(crate) failpoints: usize,
    pub(crate) cancel: usize,
    pub(crate) retry: usize,
    pub(crate) delete: usize,
}

/// The processes of one seed, and what happened to them.
pub(crate) struct Fleet {
    pub(crate) deployment: Deployment,
    pub(crate) server: Server,
    /// The `FAILPOINTS` of the running server, if any.
    pub(crate) server_failpoints: Option<String>,
    pub(crate) workers: Vec<Proc>,
    pub(crate) faults: Faults,
    /// Processes that exited on their own, and what they had (for the report).
    pub(crate) exits: Vec<String>,
    /// Problems with the processes themselves (a worker died, a server would not start).
    pub(crate) problems: Vec<String>,
    /// The last lines of the log of every process replaced so far (name, lines),
    /// written out when a seed fails.
    pub(crate) logs: Vec<(String, String)>,
}

pub(crate) fn server_args(failpoints: Option<&str>) -> ServeArgs {
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

pub(crate) fn worker_args() -> WorkerArgs {
    WorkerArgs {
        shutdown_timeout: Some("2s".to_owned()),
        lease: Some(LEASE.to_owned()),
        ..WorkerArgs::new(WORKER_QUEUES)
    }
}

/// The last lines of a log, for a report.
pub(crate) fn last_lines(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Fleet {
    /// Starts a server with `failpoints`; if it will not start with them, notes it
    /// and starts one without.
    pub(crate) fn start_server(
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
    pub(crate) fn restart_server(&mut self, shared: &Shared, failpoints: Option<String>) {
        if failpoints.is_some() {
            self.faults.failpoints += 1;
        }
        let (server, failpoints) =
            Self::start_server(&mut self.deployment, failpoints, &mut self.problems);
        let old = std::mem::replace(&mut self.server, server);
        self.logs.push((
            format!(
                "{} (FAILPOINTS={:?})",
                old.proc.name, self.server_failpoints
            ),
            old.proc.tail(),
        ));
        self.server_failpoints = failpoints;
        *shared.url.write().unwrap() = self.server.url.clone();
    }

    /// SIGKILLs worker `i` (if it still runs) and starts a new one in its place,
    /// keeping the old one's log.
    pub(crate) fn replace_worker(&mut self, i: usize) {
        self.workers[i].kill();
        let worker = self.deployment.worker(&worker_args());
        let old = std::mem::replace(&mut self.workers[i], worker);
        self.logs.push((old.name.clone(), old.tail()));
    }

    /// Writes the log of every process of the seed (replaced ones included) into
    /// a directory of its own; returns its path.
    pub(crate) fn write_logs(&self, seed: u64) -> std::io::Result<std::path::PathBuf> {
        let dir = std::env::temp_dir().join(format!("dagflow-chaos-{seed}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let current = [(
            format!(
                "{} (FAILPOINTS={:?}, the last server)",
                self.server.proc.name, self.server_failpoints
            ),
            self.server.proc.tail(),
        )]
        .into_iter()
        .chain(self.workers.iter().map(|w| (w.name.clone(), w.tail())));
        for (i, (name, log)) in self.logs.iter().cloned().chain(current).enumerate() {
            let file = dir.join(format!("{i:02}.log"));
            std::fs::write(file, format!("{name}\n{log}\n"))?;
        }
        Ok(dir)
    }

    /// Restarts processes that exited on their own. A server that dies while it has
    /// failpoints may have been told to (a `panic` failpoint); any other exit is a
    /// problem.
    pub(crate) fn revive(&mut self, shared: &Shared, rng: &mut Rng, chance: u64) {
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
                self.replace_worker(i);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// One seed.
// ---------------------------------------------------------------------------------

/// One seed's run: the plan, the Redis, the processes and what was recorded.
pub(crate) struct Run {
    pub(crate) seed: u64,
    pub(crate) size: Size,
    pub(crate) plan: Plan,
    pub(crate) planned: Arc<Vec<PlannedFlow>>,
    pub(crate) redis: RedisServer,
    pub(crate) fleet: Fleet,
    pub(crate) shared: Arc<Shared>,
    /// Choices made while faults run (pauses, failpoints, which worker).
    pub(crate) fault_rng: Rng,
    /// When the window began.
    pub(crate) start: Instant,
}

/// What the run recorded, taken out of [`Shared`] once the clients stopped.
pub(crate) struct Recorded {
    pub(crate) creates: HashMap<usize, CreateOutcome>,
    pub(crate) ops: Vec<OpRecord>,
    pub(crate) gets: Vec<GetRecord>,
    pub(crate) ws: Vec<WsRecord>,
}

impl Run {
    /// Redis, a server and the workers, and the WebSocket recorder.
    pub(crate) fn start(seed: u64, size: &Size) -> Run {
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
            logs: Vec::new(),
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
    pub(crate) fn log(&self, what: &str) {
        println!(
            "chaos: seed {}: {:>5.1}s {what}",
            self.seed,
            self.start.elapsed().as_secs_f64()
        );
    }

    /// Waits until `due`, restarting processes that exit on their own meanwhile
    /// (with failpoints at `chance` % for a server).
    pub(crate) async fn wait_until(&mut self, due: Instant, chance: u64) {
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
    pub(crate) async fn window(&mut self) {
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
    pub(crate) async fn fault(&mut self, fault: Fault, have_snapshot: &mut bool) -> String {
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
                blocking(|| fleet.replace_worker(i));
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
    pub(crate) async fn last_faults(&mut self) {
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
            blocking(|| fleet.replace_worker(i));
        }
        self.log("workers back; no more faults");
    }

    /// The last requests, with no restart after them: the late flows are created,
    /// and each is cancelled or deleted (in turn) once its job runs on `remote`,
    /// in a worker process that then reports the job cancelled through the
    /// completions stream, a record the engine must still acknowledge.
    pub(crate) async fn last_requests(&mut self) {
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
    pub(crate) async fn drain(&mut self, drain: Duration) -> Vec<Value> {
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
    pub(crate) async fn stop_recording(&self, recorder: JoinHandle<()>) -> Recorded {
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
