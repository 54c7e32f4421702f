//! Real `dagflow serve` and `dagflow worker` processes for the tests that kill
//! them (`crash.rs`, `outage.rs`, `chaos/`): one copy of the harness.
//!
//! - [`Deployment`] is one test's deployment: a Redis URL, a key prefix of its
//!   own, a sled data dir, and every process started on them so far.
//! - [`Deployment::serve`] and [`Deployment::worker`] start the binary under test
//!   (`env!("CARGO_BIN_EXE_dagflow")`) with JSON logs and wait for the line that
//!   says it is ready (the server's names the port it bound: `--bind 127.0.0.1:0`).
//! - A thread per process reads its stderr: it counts handler runs (the debug line
//!   `running job job=<id>`) and hibernations, and keeps the last lines, which a
//!   failing test prints. The counts include processes that were SIGKILLed.
//! - [`Proc`] is SIGKILLed when dropped, so no process outlives its test.
//!
//! Inherited `DAGFLOW_*`, `RUST_LOG` and `FAILPOINTS` variables are removed from
//! every child: the test says exactly what each process gets.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_dagflow");
/// Debug for the one line per handler run and the supervisor's hibernation lines,
/// info for the rest.
pub const LOG_FILTER: &str =
    "info,dagflow_actors::actors::worker=debug,dagflow_actors::actors::supervisor=debug";
/// Longest a process may take to start (the machine is busy in CI).
pub const START: Duration = Duration::from_secs(60);
/// Lines of a process's stderr kept to show when something fails.
pub const TAIL: usize = 400;
/// The log line of a server that listens (it carries the address in `addr`).
pub const SERVER_READY: &str = "dagflow is listening";
/// The log line of a worker process that runs.
pub const WORKER_READY: &str = "dagflow worker is running";

/// Handler runs per job id, counted from the stderr of every process.
pub type Runs = Arc<Mutex<HashMap<String, u32>>>;

/// Runs blocking process work (spawning, waiting for log lines, restarting Redis)
/// without stalling the runtime (needs the multi-threaded runtime).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A `dagflow` process, SIGKILLed when dropped. Its stderr is read by a thread of
/// the [`Deployment`] that started it.
pub struct Proc {
    /// `#n dagflow serve|worker`, for messages.
    pub name: String,
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    /// SIGKILLs the process (if it still runs) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last [`TAIL`] lines of its stderr.
    pub fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap();
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Panics (with its log) unless the process still runs.
    pub fn assert_alive(&mut self, when: &str) {
        if !self.alive() {
            panic!(
                "`{}` died {when}: {:?}; log:\n{}",
                self.name,
                self.child.try_wait(),
                self.tail()
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- last lines of `{}` ---\n{}", self.name, self.tail());
        }
    }
}

/// A running `dagflow serve`.
pub struct Server {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:{port}`.
    pub url: String,
}

/// How to start `dagflow serve`; [`ServeArgs::new`] gives the queues, the rest is
/// left to the binary's defaults unless set.
#[derive(Debug, Clone, Default)]
pub struct ServeArgs {
    /// `--queues` of the local workers (`name=concurrency,...`).
    pub queues: String,
    /// `--hibernate-after`.
    pub hibernate_after: Option<String>,
    /// `--shutdown-timeout`.
    pub shutdown_timeout: Option<String>,
    /// `--lease`.
    pub lease: Option<String>,
    /// `--reconcile-every`.
    pub reconcile_every: Option<String>,
    /// Extra environment (e.g. `FAILPOINTS`).
    pub env: Vec<(String, String)>,
}

impl ServeArgs {
    /// A server for `queues`, everything else the binary's default.
    pub fn new(queues: &str) -> ServeArgs {
        ServeArgs {
            queues: queues.to_owned(),
            ..ServeArgs::default()
        }
    }
}

/// How to start `dagflow worker`.
#[derive(Debug, Clone, Default)]
pub struct WorkerArgs {
    /// `--queues` (`name=concurrency,...`).
    pub queues: String,
    /// `--shutdown-timeout`.
    pub shutdown_timeout: Option<String>,
    /// `--lease` (must match the server's).
    pub lease: Option<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl WorkerArgs {
    /// A worker for `queues`, everything else the binary's default.
    pub fn new(queues: &str) -> WorkerArgs {
        WorkerArgs {
            queues: queues.to_owned(),
            ..WorkerArgs::default()
        }
    }
}

/// One test's deployment: a Redis URL, a prefix, a data dir, and every process
/// started so far (their stderr readers, to count runs at the end).
pub struct Deployment {
    /// The Redis every process uses.
    pub redis_url: String,
    /// The key prefix of this deployment (unique per test).
    pub prefix: String,
    /// The server's sled directory, shared by every server started here (one at a
    /// time: sled locks it).
    pub data: tempfile::TempDir,
    /// Handler runs per job id, from every process's log.
    pub runs: Runs,
    /// Flows that hibernated, in every server process so far.
    pub hibernations: Arc<AtomicUsize>,
    readers: Vec<JoinHandle<()>>,
    /// Numbers the processes, for their names.
    started: usize,
}

impl Deployment {
    /// A deployment on `redis_url` with a fresh prefix and data dir.
    pub fn new(redis_url: &str) -> Deployment {
        Deployment {
            redis_url: redis_url.to_owned(),
            prefix: dagflow::engine::testing::unique_prefix(),
            data: tempfile::tempdir().unwrap(),
            runs: Arc::default(),
            hibernations: Arc::default(),
            readers: Vec::new(),
            started: 0,
        }
    }

    /// Starts `dagflow args...` with `env` and waits for the log line `ready`;
    /// returns the process and that line (parsed).
    ///
    /// # Panics
    ///
    /// If the process does not log `ready` within [`START`].
    pub fn spawn(&mut self, args: &[&str], env: &[(String, String)], ready: &str) -> (Proc, Value) {
        self.try_spawn(args, env, ready)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// [`Deployment::spawn`], or why the process did not get ready (it exited, or
    /// [`START`] passed; it is killed then), with its log.
    pub fn try_spawn(
        &mut self,
        args: &[&str],
        env: &[(String, String)],
        ready: &str,
    ) -> Result<(Proc, Value), String> {
        self.started += 1;
        let name = format!("#{} dagflow {}", self.started, args[0]);
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("DAGFLOW_") || key_text == "FAILPOINTS" {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("RUST_LOG")
            .args(args)
            .args(["--log-json", "--log-filter", LOG_FILTER])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let (tx, rx) = mpsc::channel::<Value>();
        let (runs, kept) = (Arc::clone(&self.runs), Arc::clone(&tail));
        let hibernations = Arc::clone(&self.hibernations);
        let ready_message = ready.to_owned();
        self.readers.push(std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let parsed: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                let message = parsed["fields"]["message"].as_str().unwrap_or("");
                if message == "flow hibernated" {
                    hibernations.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if message == "running job" {
                    if let Some(job) = parsed["fields"]["job"].as_str() {
                        *runs.lock().unwrap().entry(job.to_owned()).or_default() += 1;
                    }
                    continue;
                }
                if message == ready_message {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(parsed.clone());
                    }
                }
                let mut kept = kept.lock().unwrap();
                if kept.len() == TAIL {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        }));
        let mut proc = Proc { name, child, tail };
        // The reader drops the sender when the process's stderr closes: an exit
        // before the ready line is known at once, not after `START`.
        match rx.recv_timeout(START) {
            Ok(line) => Ok((proc, line)),
            Err(_) => {
                proc.kill();
                let exit = proc.child.try_wait();
                Err(format!(
                    "`{}` did not log '{ready}' (exit: {exit:?}); log:\n{}",
                    proc.name,
                    proc.tail()
                ))
            }
        }
    }

    /// `dagflow serve` on a free port and the deployment's data dir, once it listens.
    ///
    /// # Panics
    ///
    /// If it does not start.
    pub fn serve(&mut self, opts: &ServeArgs) -> Server {
        self.try_serve(opts)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// [`Deployment::serve`], or why the server did not start.
    pub fn try_serve(&mut self, opts: &ServeArgs) -> Result<Server, String> {
        let data_dir = self.data.path().to_str().unwrap().to_owned();
        let mut args: Vec<String> = [
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--redis-url",
            &self.redis_url,
            "--prefix",
            &self.prefix,
            "--data-dir",
            &data_dir,
            "--queues",
            &opts.queues,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (flag, value) in [
            ("--hibernate-after", &opts.hibernate_after),
            ("--shutdown-timeout", &opts.shutdown_timeout),
            ("--lease", &opts.lease),
            ("--reconcile-every", &opts.reconcile_every),
        ] {
            if let Some(value) = value {
                args.push(flag.to_owned());
                args.push(value.clone());
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (proc, line) = self.try_spawn(&args, &opts.env, SERVER_READY)?;
        let addr = line["fields"]["addr"].as_str().unwrap();
        Ok(Server {
            url: format!("http://{addr}"),
            proc,
        })
    }

    /// `dagflow worker`, once it runs.
    ///
    /// # Panics
    ///
    /// If it does not start.
    pub fn worker(&mut self, opts: &WorkerArgs) -> Proc {
        self.try_worker(opts)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// [`Deployment::worker`], or why the worker did not start.
    pub fn try_worker(&mut self, opts: &WorkerArgs) -> Result<Proc, String> {
        let mut args: Vec<String> = [
            "worker",
            "--redis-url",
            &self.redis_url,
            "--prefix",
            &self.prefix,
            "--queues",
            &opts.queues,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (flag, value) in [
            ("--shutdown-timeout", &opts.shutdown_timeout),
            ("--lease", &opts.lease),
        ] {
            if let Some(value) = value {
                args.push(flag.to_owned());
                args.push(value.clone());
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(self.try_spawn(&args, &opts.env, WORKER_READY)?.0)
    }

    /// Flows that hibernated so far, in every server process.
    pub fn hibernations(&self) -> usize {
        self.hibernations.load(Ordering::Relaxed)
    }

    /// Waits for every stderr reader (call after every process is gone) and returns
    /// the handler runs per job id.
    pub fn finish(&mut self) -> HashMap<String, u32> {
        // A reader ends when its process is gone; one that does not means a process
        // outlived the test's handles on it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.readers.iter().all(|r| r.is_finished()) {
            assert!(Instant::now() < deadline, "a process is still running");
            std::thread::sleep(Duration::from_millis(20));
        }
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        self.runs.lock().unwrap().clone()
    }
}
