//! `dagflow bench --restart`: how long a new engine takes to resume many unfinished
//! flows, and proof that it really did.
//!
//! 1. Engine A creates `--flows` flows on the unserved queue (see [`super::unserved`])
//!    and every root job is seen in Redis.
//! 2. A stops. With `--stop kill` (the default) A is a `dagflow serve` process the
//!    benchmark started, fed over HTTP, and it is SIGKILLed: the engine's public API
//!    has no way to crash an engine inside a process (dropping the handle leaves its
//!    actors running and the sled directory locked), so a real process stands in.
//!    With `--stop graceful` A is an engine in this process and stops with
//!    `Engine::shutdown`.
//! 3. Engine B starts in this process on the same data dir and prefix, with no
//!    workers. `restart_build_s` is its `build()`; `restart_s` runs from the same
//!    start until the engine counts a live actor for every flow and each flow has
//!    answered `get` as running (the answer comes from its actor, after the write
//!    that a restored actor makes first, so the actor is really working).
//! 4. Workers for the unserved queue start (a worker-only engine in this process,
//!    so completions travel the remote path through Redis), and every flow must
//!    complete: `resumed_complete_s`, `flows_completed`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dagflow_actors::store::{Store, DEFAULT_CACHE_BYTES};
use dagflow_actors::{Engine, FlowId, FlowSpec, FlowStatus};
use futures::StreamExt;

use super::http::HttpTarget;
use super::redis_probe::RedisProbe;
use super::shapes::Topology;
use super::unserved::{
    connect_queue, create_phase, creation_result, CreationPhase, RunScope, ENGINE_STOP,
    UNSERVED_QUEUE,
};
use super::{
    peak_rss_mb, round3, rss_mb, BenchArgs, BenchResult, EngineTarget, Stop, Target, POLL,
};

/// Longest the `dagflow serve` of `--stop kill` may take to answer `/readyz`.
const SERVER_START: Duration = Duration::from_secs(60);
/// Longest the first engine may hold its store after a graceful shutdown.
const STORE_RELEASE: Duration = Duration::from_secs(10);
/// How much of that server's log an error quotes.
const LOG_TAIL_BYTES: u64 = 4096;

/// Runs one restart benchmark.
pub(super) async fn run_restart(
    args: &BenchArgs,
    run: u32,
    topology: &Topology,
    spec: FlowSpec,
) -> anyhow::Result<BenchResult> {
    // The run's directory holds the sled directory and, with `--stop kill`, the
    // server's log.
    let scope = RunScope::new(args)?;
    let rss_reset = scope.rss_reset;
    let result = restart(
        args,
        run,
        topology,
        spec,
        &scope.probe,
        &scope.prefix,
        &scope.dir.path,
    )
    .await;
    scope.finish().await;
    let mut result = result?;
    if rss_reset {
        result.peak_rss_mb = peak_rss_mb();
    }
    Ok(result)
}

/// The engines of one run, on the sled directory `run_dir/data`; each is stopped
/// before this returns, whatever happened.
async fn restart(
    args: &BenchArgs,
    run: u32,
    topology: &Topology,
    spec: FlowSpec,
    probe: &RedisProbe,
    prefix: &str,
    run_dir: &Path,
) -> anyhow::Result<BenchResult> {
    let data_dir = &run_dir.join("data");
    let queue = connect_queue(&args.redis_url, prefix).await?;
    // 1 and 2: engine A creates the flows and stops.
    let phase = match args.stop {
        Stop::Kill => {
            let bin = match &args.server_bin {
                Some(bin) => bin.clone(),
                None => std::env::current_exe().context("finding this program's path")?,
            };
            let mut server = ServerProcess::start(
                &bin,
                &args.redis_url,
                prefix,
                data_dir,
                &run_dir.join("server-a.log"),
            )
            .await?;
            let target: Arc<dyn Target> = Arc::new(HttpTarget::new(
                server.base.clone(),
                None,
                &spec,
                args.in_flight,
            )?);
            let phase = create_phase(args, probe, &queue, topology, target, true).await;
            server.kill()?;
            phase?
        }
        Stop::Graceful => {
            let engine = Engine::builder()
                .redis_url(args.redis_url.clone())
                .prefix(prefix.to_owned())
                .data_dir(data_dir)
                .build()
                .await
                .context("starting the first engine")?;
            let target: Arc<dyn Target> = Arc::new(EngineTarget {
                engine: engine.clone(),
                specs: vec![spec],
                next: Default::default(),
            });
            let phase = create_phase(args, probe, &queue, topology, target, true).await;
            engine.shutdown(ENGINE_STOP).await;
            drop(engine);
            wait_store_released(data_dir).await?;
            phase?
        }
    };
    let mut result = creation_result(args, run, topology, &phase, prefix);
    if phase.timed_out {
        // Not every root job reached Redis: the restart would measure a broken run.
        return Ok(result);
    }

    // 3: engine B resumes them.
    let baseline = rss_mb();
    let started = Instant::now();
    let engine = Engine::builder()
        .redis_url(args.redis_url.clone())
        .prefix(prefix.to_owned())
        .data_dir(data_dir)
        // Resumed flows are counted, and their end awaited, by their live actors.
        .hibernate_after(None)
        .build()
        .await
        .context("starting the second engine on the first one's data dir")?;
    let build = started.elapsed();
    let outcome = resume_and_complete(args, &engine, prefix, &phase, started, build).await;
    engine.shutdown(ENGINE_STOP).await;
    let outcome = outcome?;
    result.timed_out = outcome.timed_out;
    result.restart_build_s = Some(round3(build.as_secs_f64()));
    result.restart_s = outcome.resumed_after.map(|d| round3(d.as_secs_f64()));
    result.resumed_flows = Some(outcome.resumed);
    // No per-flow figure: the growth from the baseline is the whole second engine
    // (store, runtime, actors), and with `--stop graceful` the first engine's
    // memory, freed into this process's allocator, is reused by it. `--idle`
    // measures what a waiting flow costs.
    result.rss_baseline_mb = baseline;
    result.rss_mb = outcome.rss_mb;
    result.resumed_complete_s = outcome.complete_after.map(|d| round3(d.as_secs_f64()));
    result.flows_completed = outcome.completed;
    result.flows_failed = outcome.ended.saturating_sub(outcome.completed);
    Ok(result)
}

/// Waits until the sled directory can be opened, and closes it again: after
/// `Engine::shutdown` an actor may still be letting go of the store for a moment
/// (the completion router is told to stop, not waited for), and engine B's start
/// must measure B, not that.
async fn wait_store_released(data_dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + STORE_RELEASE;
    loop {
        match Store::open(data_dir, DEFAULT_CACHE_BYTES) {
            Ok(store) => {
                drop(store);
                return Ok(());
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| {
                    format!(
                        "the first engine still holds {} after {STORE_RELEASE:?}",
                        data_dir.display()
                    )
                })
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// What engine B did with the flows.
struct Resumed {
    /// Flows with a live actor that answered as running.
    resumed: usize,
    /// B's start → all of them resumed (`None` if they were not, in time).
    resumed_after: Option<Duration>,
    /// `VmRSS` once they were.
    rss_mb: Option<f64>,
    /// Workers started → every flow ended (`None` if not, in time).
    complete_after: Option<Duration>,
    /// Flows that ended.
    ended: usize,
    /// Of those, completed.
    completed: usize,
    /// Whether a wait gave up.
    timed_out: bool,
}

/// Waits until engine B resumed every flow, then runs them to the end with workers.
async fn resume_and_complete(
    args: &BenchArgs,
    engine: &Engine,
    prefix: &str,
    phase: &CreationPhase,
    started: Instant,
    build: Duration,
) -> anyhow::Result<Resumed> {
    let ids = &phase.creation.ids;
    let timeout = Duration::from_secs(args.timeout.max(1));
    // The supervisor may resume flows after `build` returned (it does not today):
    // wait for the engine's own count first.
    let deadline = started + build + timeout;
    while engine.running_flows() < ids.len() && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    let running = count_status(engine, ids, args.in_flight, |s| s == FlowStatus::Running).await;
    let resumed = running.min(engine.running_flows());
    let resumed_after = (resumed == ids.len()).then(|| started.elapsed());
    let rss = rss_mb();
    if resumed_after.is_none() {
        return Ok(Resumed {
            resumed,
            resumed_after,
            rss_mb: rss,
            complete_after: None,
            ended: 0,
            completed: 0,
            timed_out: true,
        });
    }

    // 4: workers on the unserved queue; the flows must all complete.
    let workers = Engine::builder()
        .redis_url(args.redis_url.clone())
        .prefix(prefix.to_owned())
        .worker_only()
        .queue(UNSERVED_QUEUE, args.concurrency)
        .handler("noop", crate::handlers::Noop)
        .build()
        .await
        .context("starting the workers")?;
    let workers_started = Instant::now();
    let deadline = workers_started + timeout;
    while engine.running_flows() > 0 && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    let complete_after = (engine.running_flows() == 0).then(|| workers_started.elapsed());
    workers.shutdown(ENGINE_STOP).await;
    let completed = count_status(engine, ids, args.in_flight, |s| s == FlowStatus::Completed).await;
    let ended = count_status(engine, ids, args.in_flight, |s| s.is_terminal()).await;
    Ok(Resumed {
        resumed,
        resumed_after,
        rss_mb: rss,
        complete_after,
        ended,
        completed,
        timed_out: complete_after.is_none(),
    })
}

/// How many of `ids` the engine reports in a status `wanted` accepts (a flow it
/// cannot answer for counts as not).
async fn count_status(
    engine: &Engine,
    ids: &[FlowId],
    in_flight: usize,
    wanted: impl Fn(FlowStatus) -> bool,
) -> usize {
    let mut answers = futures::stream::iter(ids.iter().copied())
        .map(|id| async move { engine.get(id).await.map(|view| view.status) })
        .buffer_unordered(in_flight.max(1));
    let mut n = 0;
    while let Some(answer) = answers.next().await {
        if answer.is_ok_and(&wanted) {
            n += 1;
        }
    }
    n
}

/// A `dagflow serve` process: engine A of `--stop kill`. Killed when dropped.
struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:{port}`.
    base: String,
    /// Its stderr.
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `bin serve` with no workers on the run's Redis, prefix and data dir
    /// and waits until it answers `/readyz`. The server inherits no `DAGFLOW_*`
    /// variable, so that the caller's environment (an API token, queues) cannot
    /// change it.
    async fn start(
        bin: &Path,
        redis_url: &str,
        prefix: &str,
        data_dir: &Path,
        log: &Path,
    ) -> anyhow::Result<ServerProcess> {
        // A port the system just handed out and took back: free unless something
        // grabs it in between, in which case the server fails and says so.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port for the server")?
            .port();
        let bind = format!("127.0.0.1:{port}");
        let stderr = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(bin);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("DAGFLOW_") {
                command.env_remove(name);
            }
        }
        command
            .args(["serve", "--bind", &bind, "--redis-url", redis_url])
            .args(["--prefix", prefix, "--queues", "", "--log-filter", "warn"])
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command
            .spawn()
            .with_context(|| format!("starting {} serve", bin.display()))?;
        let mut server = ServerProcess {
            child,
            base: format!("http://{bind}"),
            log: log.to_owned(),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + SERVER_START;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "{} serve exited ({status}) before it was ready; its log ends with:\n{}",
                    bin.display(),
                    server.log_tail()
                );
            }
            let ready = client
                .get(format!("{}/readyz", server.base))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} serve was not ready after {SERVER_START:?}; its log ends with:\n{}",
                    bin.display(),
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the server and reaps it.
    fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("killing the server")?;
        self.child.wait().context("reaping the server")?;
        Ok(())
    }

    /// The last few KiB of the server's log.
    fn log_tail(&self) -> String {
        let read = || -> std::io::Result<String> {
            let mut file = File::open(&self.log)?;
            let len = file.metadata()?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        read().unwrap_or_else(|e| format!("(could not read {}: {e})", self.log.display()))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
