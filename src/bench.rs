//! `dagflow bench`: the end-to-end benchmark of the engine.
//!
//! One run starts an engine with its workers in this process (or, with
//! `--over-http`, drives a running server), submits flows of one [`Shape`] with the
//! built-in `noop` handler, follows the event feed until every flow ended, and
//! prints one JSON line ([`BenchResult`]) to stdout: throughput, flow and edge
//! latencies, peak memory and Redis commands per node.
//!
//! An embedded run is self-contained and leaves nothing behind: a fresh key prefix
//! (its keys are removed afterwards with `SCAN` + `UNLINK`) and a fresh sled
//! directory on disk (a real one, not sled's in-memory temporary mode, so that the
//! fsyncs of the group commit cost what they cost in production).
//!
//! What is measured, exactly:
//! - `wall_s`: first `create` called → last flow's terminal event seen.
//! - `flow_latency_ms`: `create` called → the flow's `completed` event `ts`.
//! - `edge_latency_ms`: for every node with parents, its last parent's `completed`
//!   event `ts` (the engine applied the completion) → its own `active` event `ts`
//!   (the engine heard a worker start it). Event times have a 1 ms resolution.
//! - `peak_rss_mb`: `VmHWM` of this process (engine, workers and the benchmark's
//!   own bookkeeping), reset before each run through `/proc/self/clear_refs`.
//! - `redis_cmds_per_node`: `INFO commandstats` calls (every command, including
//!   those Lua scripts run, minus the `INFO` calls themselves) from just before the
//!   first submission to the moment every flow actor is gone, divided by the nodes.
//!   The counters are server-wide: anything else using the same Redis meanwhile
//!   counts too.
//! - `cpu_us_per_node`: CPU time of this process (`/proc/self/stat`) and of the
//!   Redis server (`INFO cpu`) over the same window, per node: where a node's cost
//!   goes.
//!
//! Two more modes measure what a flow costs while it waits rather than how fast
//! flows run: `--idle` (memory of many flows waiting on a queue no worker serves)
//! and `--restart` (how long a new engine takes to resume many unfinished flows).
//! Both are in `bench/unserved.rs` and `bench/restart.rs`; they print the same
//! JSON line with `parameters.mode` `idle` or `restart` and extra fields.

mod http;
mod redis_probe;
mod restart;
mod shapes;
pub use shapes::splitmix64;
mod tracker;
mod unserved;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_trait::async_trait;
use dagflow_actors::retention::{Keep, Retention};
use dagflow_actors::{Engine, FlowId, FlowSpec, FlowStatus};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use shapes::Shape;
pub use tracker::Percentiles;

use redis_probe::{RedisProbe, RedisSnapshot};
use shapes::{ShapeParams, Topology};
use tracker::Tracker;

/// Queue every benchmark node runs on.
const QUEUE: &str = "default";
/// Flows submitted when neither `--flows` nor `--rate` is given.
const DEFAULT_FLOWS: usize = 200;
/// How often the wait for the last flows looks at the tracker.
const POLL: Duration = Duration::from_millis(5);
/// After a lag, how often flows not seen ending are asked for their status.
const LAG_POLL: Duration = Duration::from_secs(1);
/// How long the engine gets to finish its Redis work and stop after the last flow.
const SETTLE: Duration = Duration::from_secs(5);

/// The flags of `dagflow bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Shape of every flow.
    #[arg(value_enum, default_value = "diamond")]
    pub shape: Shape,
    /// Chain length (`chain`).
    #[arg(long, default_value_t = 100)]
    pub depth: usize,
    /// Middle nodes (`diamond`, `wide`), roots (`fanin`) or nodes per layer
    /// (`layered`); default 10, 1000 for `wide`.
    #[arg(long)]
    pub width: Option<usize>,
    /// Layers (`layered`).
    #[arg(long, default_value_t = 10)]
    pub layers: usize,
    /// Seed of the random DAG (`layered`).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Flows submitted at once (at most `--in-flight` creates outstanding); default 200.
    #[arg(long, conflicts_with = "rate")]
    pub flows: Option<usize>,
    /// Open loop: submit this many flows per second, for `--duration`, whether or
    /// not earlier ones finished.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of submission at `--rate`.
    #[arg(long, default_value_t = 10.0, requires = "rate")]
    pub duration: f64,
    /// Creates outstanding at once (`--flows`); over HTTP, also the connections.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Worker concurrency of the queue (embedded runs; a server has its own).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Repeat the run this many times, one JSON line each.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Redis of the engine; over HTTP, the server's Redis, for command counts.
    #[arg(long, env = "DAGFLOW_REDIS_URL", default_value = dagflow_actors::engine::DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Parent directory of each run's fresh sled directory (default: the system's
    /// temp dir). Put it on the disk whose fsync cost you want to measure.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Events the engine keeps for the benchmark's subscriber before it lags.
    #[arg(long, default_value_t = 256 * 1024)]
    pub event_capacity: usize,
    /// Drive a running server at this URL (`POST /flows`, `/ws`) instead of an
    /// engine in this process.
    #[arg(long, value_name = "URL")]
    pub over_http: Option<String>,
    /// API token of that server.
    #[arg(long, env = "DAGFLOW_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Give up waiting for the flows this many seconds after the last one was
    /// submitted (in `--idle` and `--restart` runs, on each wait: for the root
    /// jobs, for the resumption, for the flows to end).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// No progress bar on stderr.
    #[arg(long)]
    pub no_progress: bool,
    /// Idle mode: create `--flows` flows on a queue no worker serves, wait until
    /// every root job is in Redis, then report this process's memory (`rss_mb`,
    /// `rss_per_flow_kb`) with all of them waiting. The diamond's default width is 8
    /// here (10 nodes per flow).
    #[arg(long, conflicts_with_all = ["rate", "over_http", "restart"])]
    pub idle: bool,
    /// Idle mode: seconds a waiting flow keeps its actor before it hibernates (the
    /// engine's default is 10; 0: never). Memory is read again once they all did
    /// (`hibernated_rss_mb`, `hibernated_rss_per_flow_kb`).
    #[arg(long, value_name = "SECONDS", requires = "idle")]
    pub hibernate_after: Option<f64>,
    /// The engine's backlog limit (`EngineBuilder::backlog_limit`): finished jobs
    /// not yet applied before its workers take no first job of a new flow; 0: off.
    /// Default: the engine's (2 per worker slot).
    #[arg(long, value_name = "JOBS")]
    pub backlog_limit: Option<usize>,
    /// Restart mode: create `--flows` flows on a queue no worker serves with a first
    /// engine, stop it (`--stop`), start a second engine on the same data dir and
    /// prefix and report how long it took to resume them all (`restart_s`); then
    /// start workers and check that every flow completes. The diamond's default
    /// width is 8 here (10 nodes per flow).
    #[arg(long, conflicts_with_all = ["rate", "over_http"])]
    pub restart: bool,
    /// Give every node a concurrency key (`data.k`), spreading the flows over this
    /// many keys in turn (0: no limits), to measure what the limits cost.
    #[arg(long, default_value_t = 0, conflicts_with_all = ["over_http", "idle", "restart"])]
    pub keys: usize,
    /// The limit of each key of `--keys`.
    #[arg(long, default_value_t = 2)]
    pub key_limit: u32,
    /// How long the engine keeps ended flows (embedded runs): `90s`, `1m`,
    /// `forever`... (default: the engine's, 7 days for completed flows). With
    /// `--disk-every`, shows whether the store's size stays flat under retention.
    #[arg(long, conflicts_with_all = ["over_http", "idle", "restart"])]
    pub retain: Option<Keep>,
    /// Every this many seconds, record the sled directory's size and the flows
    /// swept so far (`disk` in the result; each sample also goes to stderr).
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["over_http", "idle", "restart"])]
    pub disk_every: Option<f64>,
    /// How the first engine of a `--restart` run stops: `kill` runs it as a
    /// `dagflow serve` process and SIGKILLs it (a crash), `graceful` runs it in this
    /// process and calls `Engine::shutdown`.
    #[arg(long, value_enum, default_value = "kill", requires = "restart")]
    pub stop: Stop,
    /// The `dagflow` binary that runs the first engine of `--restart --stop kill`
    /// (default: this program, which must then be `dagflow`).
    #[arg(long, value_name = "PATH", requires = "restart")]
    pub server_bin: Option<PathBuf>,
    /// Export traces of the in-process engine over OTLP/HTTP to this collector, to
    /// measure what traces cost (off when absent, as in `dagflow serve`).
    #[arg(long, value_name = "URL", conflicts_with = "over_http")]
    pub otlp_endpoint: Option<String>,
}

/// How the first engine of a `--restart` run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stop {
    /// SIGKILL of a `dagflow serve` process: nothing is drained or flushed beyond
    /// what each `create` answer already made durable, as in a crash.
    Kill,
    /// `Engine::shutdown` of an engine in this process: every flow drained, the
    /// store flushed.
    Graceful,
}

impl Stop {
    /// The name the JSON output uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Stop::Kill => "kill",
            Stop::Graceful => "graceful",
        }
    }
}

/// Parses `BenchArgs` on its own, for the example and tests.
#[derive(clap::Parser)]
#[command(name = "dagflow-bench")]
struct BenchCli {
    #[command(flatten)]
    args: BenchArgs,
}

impl BenchArgs {
    /// Parses flags as `dagflow bench` would (the first item is the program name).
    pub fn try_parse_from<I, T>(args: I) -> Result<BenchArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        <BenchCli as clap::Parser>::try_parse_from(args).map(|cli| cli.args)
    }

    fn shape_params(&self) -> ShapeParams {
        // Issue 5 states its idle and restart targets for flows of 10 nodes: a
        // diamond of width 8.
        let default_width = if self.unserved() && self.shape == Shape::Diamond {
            8
        } else {
            self.shape.default_width()
        };
        ShapeParams {
            depth: self.depth,
            width: self.width.unwrap_or(default_width),
            layers: self.layers,
            seed: self.seed,
        }
    }

    /// Whether this is a run whose flows wait on an unserved queue (`--idle`,
    /// `--restart`).
    fn unserved(&self) -> bool {
        self.idle || self.restart
    }

    /// The run's mode as `parameters.mode` spells it.
    fn mode(&self) -> &'static str {
        if self.idle {
            "idle"
        } else if self.restart {
            "restart"
        } else if self.rate.is_some() {
            "rate"
        } else {
            "burst"
        }
    }
}

/// The parameters a run used, echoed in its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameters {
    /// `burst` (`--flows`), `rate` (`--rate`), `idle` (`--idle`) or `restart`
    /// (`--restart`).
    pub mode: String,
    /// Flows submitted at once (burst, idle, restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<usize>,
    /// Flows per second (rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Seconds of submission (rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// Chain length (chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// Width (all shapes but chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    /// Layers (layered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    /// Seed (layered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Worker concurrency (embedded runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Creates outstanding at once.
    pub in_flight: usize,
    /// The server driven, for `--over-http` runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over_http: Option<String>,
    /// How the first engine stopped (`restart`): `kill` or `graceful`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    /// `--keys` and `--key-limit`, when the nodes had concurrency keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<(usize, u32)>,
    /// Which run of `--runs` this is (from 1).
    pub run: u32,
}

/// The result of one run: what `dagflow bench` prints, one JSON line per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// `chain`, `diamond`, `wide`, `fanin` or `layered`.
    pub shape: String,
    /// The flags that shaped the run.
    pub parameters: Parameters,
    /// Nodes in one flow.
    pub nodes_per_flow: usize,
    /// Edges in one flow.
    pub edges_per_flow: usize,
    /// Flows created (a failed `create` is in `create_errors` instead).
    pub flows_submitted: usize,
    /// Flows that ended `completed`.
    pub flows_completed: usize,
    /// Flows that ended otherwise (failed or cancelled).
    pub flows_failed: usize,
    /// `create` calls that failed.
    pub create_errors: usize,
    /// The first of those errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Whether the run gave up waiting (`--timeout`) before every flow ended.
    pub timed_out: bool,
    /// Nodes of the flows created: `flows_submitted × nodes_per_flow`.
    pub nodes_total: usize,
    /// First `create` called → last flow ended, in seconds.
    pub wall_s: f64,
    /// `nodes_total / wall_s`.
    pub nodes_per_s: f64,
    /// `flows_submitted / wall_s`.
    pub flows_per_s: f64,
    /// Flows created per second: `flows_submitted` over the time from the first
    /// `create` called to the last one answered (in a burst, the rate at which the
    /// engine, or the server's `POST /flows`, accepts flows).
    pub creates_per_s: f64,
    /// `create` called → flow completed event.
    pub flow_latency_ms: Percentiles,
    /// Last parent's completed event → child's active event.
    pub edge_latency_ms: Percentiles,
    /// `create` called → `create` answered (flow durable and started).
    pub create_latency_ms: Percentiles,
    /// Peak resident memory of this process during the run (`None` over HTTP,
    /// where the engine is another process, or where `/proc` is missing).
    pub peak_rss_mb: Option<f64>,
    /// Redis commands per node (`None` when Redis could not be asked).
    pub redis_cmds_per_node: Option<f64>,
    /// The same, by command name (`xadd`, `evalsha`, …); commands below 0.001 per
    /// node are left out.
    pub redis_cmds_by_name: BTreeMap<String, f64>,
    /// CPU time per node, in µs, over the same window as the Redis commands.
    pub cpu_us_per_node: CpuPerNode,
    /// Cores kept busy by other processes than this one and Redis during the run,
    /// on average: a figure far above 0 means the run shared the machine and its
    /// throughput is not the engine's. Over HTTP the server is one of those others.
    pub background_cpu_cores: Option<f64>,
    /// Events the benchmark's subscriber lost because it fell behind; latencies of
    /// what it missed are not in the figures.
    pub events_lagged: u64,
    /// The run's Redis key prefix (embedded runs; its keys are gone afterwards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The store's size over the run (`--disk-every`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk: Vec<DiskSample>,
    // The fields below are only in `idle` and `restart` runs. There, `wall_s`,
    // `flows_per_s` and `nodes_per_s` cover the creation of the flows (first
    // `create` called → every root job seen in Redis), and the Redis command and
    // CPU figures the same window.
    /// Idle: flows waiting on the unserved queue (every created flow, its roots
    /// in Redis), awake or hibernating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_flows: Option<usize>,
    /// Idle: of those, flows with a live actor when memory was read (the others
    /// had hibernated already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awake_flows: Option<usize>,
    /// Idle and restart: entries in the unserved queue's stream once the flows were
    /// created (one per root node of each flow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_jobs: Option<u64>,
    /// `VmRSS` of this process, MiB. Idle: with every flow created and waiting.
    /// Restart: once every flow resumed (with `--stop graceful` this includes what
    /// the first engine left in the allocator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_mb: Option<f64>,
    /// `VmRSS` before the flows, MiB. Idle: the engine started, no flow created.
    /// Restart: just before the second engine starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_baseline_mb: Option<f64>,
    /// Idle: `(rss_mb − rss_baseline_mb) / idle_flows`, KiB: the memory one waiting
    /// flow costs, the engine's fixed cost left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_per_flow_kb: Option<f64>,
    /// Idle: flows that hibernated (`--hibernate-after`) by the time memory was
    /// read again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernated_flows: Option<usize>,
    /// Idle: VmRSS once the flows hibernated, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernated_rss_mb: Option<f64>,
    /// Idle: `(hibernated_rss_mb − rss_baseline_mb) / idle_flows`, KiB: what a
    /// hibernating flow costs, as far as the allocator gave memory back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernated_rss_per_flow_kb: Option<f64>,
    /// Growth of Redis's `used_memory` while the flows were created, MiB (the whole
    /// server's: anything else using it counts too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_mem_mb: Option<f64>,
    /// That growth per flow, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_mem_per_flow_kb: Option<f64>,
    /// Restart: the second engine's `build()` called → returned (store opened,
    /// unfinished flows loaded), s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_build_s: Option<f64>,
    /// Restart: the second engine's `build()` called → every flow has a live actor
    /// and each answered `get` as running, s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_s: Option<f64>,
    /// Restart: flows resumed by the second engine (live actor, answered running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_flows: Option<usize>,
    /// Restart: workers started on the unserved queue → every flow ended, s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_complete_s: Option<f64>,
}

impl BenchResult {
    /// Why the run does not count as a success, or `None` when it does: every flow
    /// created and, by mode, completed, waiting, or resumed and then completed.
    pub fn failure(&self) -> Option<String> {
        let created = self.flows_submitted;
        if self.timed_out {
            return Some(format!(
                "timed out: {} of {created} flows completed ({} failed){}",
                self.flows_completed,
                self.flows_failed,
                match (self.idle_flows, self.resumed_flows) {
                    (Some(idle), _) => format!(", {idle} waiting"),
                    (_, Some(resumed)) => format!(", {resumed} resumed"),
                    _ => String::new(),
                }
            ));
        }
        if self.create_errors > 0 {
            return Some(format!(
                "{} creates failed, first: {}",
                self.create_errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        match self.parameters.mode.as_str() {
            "idle" if self.idle_flows != Some(created) => Some(format!(
                "{} of {created} flows waiting",
                self.idle_flows.unwrap_or(0)
            )),
            "idle" => None,
            "restart" if self.resumed_flows != Some(created) => Some(format!(
                "{} of {created} flows resumed",
                self.resumed_flows.unwrap_or(0)
            )),
            _ if self.flows_completed < created => Some(format!(
                "{} of {created} flows completed ({} failed)",
                self.flows_completed, self.flows_failed
            )),
            _ => None,
        }
    }
}

/// CPU time per node, in microseconds: where a node's cost is spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuPerNode {
    /// This process: engine, workers and the benchmark itself in an embedded run;
    /// only the benchmark's client over HTTP.
    pub process: Option<f64>,
    /// The Redis server (`INFO cpu`, user + system).
    pub redis: Option<f64>,
}

/// Runs the benchmark `args` describes, `--runs` times, printing one JSON line per
/// run to stdout. Fails if a run fails, or if not every flow of a run completed
/// (the line is printed first).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    for run in 1..=args.runs.max(1) {
        let result = run_one(&args, run).await?;
        let line = serde_json::to_string(&result)?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
        drop(stdout);
        if let Some(failure) = result.failure() {
            bail!("run {run}: {failure}");
        }
    }
    Ok(())
}

/// Runs the benchmark once (`run` is its number, for the output) and returns its
/// result.
pub async fn run_one(args: &BenchArgs, run: u32) -> anyhow::Result<BenchResult> {
    let topology = Topology::new(args.shape, args.shape_params());
    let queue = args.unserved().then_some(unserved::UNSERVED_QUEUE);
    let spec = topology.spec(&format!("bench-{}", args.shape.as_str()), queue)?;
    dagflow_actors::spec::validate(&spec, &Default::default()).map_err(|e| {
        anyhow::anyhow!("the {} shape is not a valid flow: {e}", args.shape.as_str())
    })?;
    if args.idle {
        return unserved::run_idle(args, run, &topology, spec).await;
    }
    if args.restart {
        return restart::run_restart(args, run, &topology, spec).await;
    }
    let load = match args.rate {
        Some(rate) if !(rate > 0.0 && rate.is_finite()) => bail!("--rate must be positive"),
        Some(rate) => Load::Rate {
            rate,
            total: ((rate * args.duration).round() as usize).max(1),
        },
        None => Load::Burst(args.flows.unwrap_or(DEFAULT_FLOWS).max(1)),
    };
    let progress = progress_bar(args, load.total());
    let tracker = Arc::new(Mutex::new(Tracker::new(topology.len(), progress.clone())));
    let probe = RedisProbe::parse(&args.redis_url)?;
    let timeout = Duration::from_secs(args.timeout.max(1));

    let outcome = match &args.over_http {
        None => embedded(args, &probe, spec, &load, &tracker, timeout).await?,
        Some(url) => http::drive(args, url, &probe, spec, &load, &tracker, timeout).await?,
    };
    progress.finish_and_clear();

    let t = lock(&tracker);
    let latencies = t.latencies(&topology);
    let wall = t
        .last_end()
        .map(|end| end.saturating_duration_since(outcome.started))
        .unwrap_or_else(|| outcome.started.elapsed())
        .as_secs_f64()
        .max(1e-6);
    let submitted = outcome.submitted.created;
    let nodes_total = submitted * topology.jobs();
    let window = WindowFigures::between(&outcome.before, &outcome.after, nodes_total);
    Ok(BenchResult {
        shape: args.shape.as_str().to_owned(),
        parameters: parameters(
            args,
            run,
            match load {
                Load::Burst(n) => Some(n),
                Load::Rate { .. } => None,
            },
        ),
        nodes_per_flow: topology.jobs(),
        edges_per_flow: topology.edges(),
        flows_submitted: submitted,
        flows_completed: t.ended() - t.not_completed(),
        flows_failed: t.not_completed(),
        create_errors: outcome.submitted.errors,
        first_error: outcome.submitted.first_error.clone(),
        timed_out: outcome.timed_out,
        nodes_total,
        wall_s: round3(wall),
        nodes_per_s: round3(nodes_total as f64 / wall),
        flows_per_s: round3(submitted as f64 / wall),
        creates_per_s: round3(submitted as f64 / outcome.submitted.took.as_secs_f64().max(1e-6)),
        flow_latency_ms: latencies.flow,
        edge_latency_ms: latencies.edge,
        create_latency_ms: latencies.create,
        peak_rss_mb: outcome.peak_rss_mb,
        redis_cmds_per_node: window.cmds_per_node,
        redis_cmds_by_name: window.by_name,
        cpu_us_per_node: window.cpu,
        background_cpu_cores: window.background_cores,
        events_lagged: t.lagged,
        prefix: outcome.prefix.clone(),
        disk: outcome.disk.clone(),
        ..BenchResult::empty()
    })
}

impl BenchResult {
    /// A result with every figure zero or absent, for the drivers to fill in.
    fn empty() -> BenchResult {
        BenchResult {
            shape: String::new(),
            parameters: Parameters {
                mode: String::new(),
                flows: None,
                rate: None,
                duration_s: None,
                depth: None,
                width: None,
                layers: None,
                seed: None,
                concurrency: None,
                in_flight: 0,
                over_http: None,
                stop: None,
                keys: None,
                run: 0,
            },
            nodes_per_flow: 0,
            edges_per_flow: 0,
            flows_submitted: 0,
            flows_completed: 0,
            flows_failed: 0,
            create_errors: 0,
            first_error: None,
            timed_out: false,
            nodes_total: 0,
            wall_s: 0.0,
            nodes_per_s: 0.0,
            flows_per_s: 0.0,
            creates_per_s: 0.0,
            flow_latency_ms: Percentiles::default(),
            edge_latency_ms: Percentiles::default(),
            create_latency_ms: Percentiles::default(),
            peak_rss_mb: None,
            redis_cmds_per_node: None,
            redis_cmds_by_name: BTreeMap::new(),
            cpu_us_per_node: CpuPerNode::default(),
            background_cpu_cores: None,
            events_lagged: 0,
            prefix: None,
            disk: Vec::new(),
            idle_flows: None,
            awake_flows: None,
            queued_jobs: None,
            rss_mb: None,
            rss_baseline_mb: None,
            rss_per_flow_kb: None,
            hibernated_flows: None,
            hibernated_rss_mb: None,
            hibernated_rss_per_flow_kb: None,
            redis_mem_mb: None,
            redis_mem_per_flow_kb: None,
            restart_build_s: None,
            restart_s: None,
            resumed_flows: None,
            resumed_complete_s: None,
        }
    }
}

/// The flags of a run as its result echoes them.
fn parameters(args: &BenchArgs, run: u32, flows: Option<usize>) -> Parameters {
    let p = args.shape_params();
    let is = |shapes: &[Shape]| shapes.contains(&args.shape);
    Parameters {
        mode: args.mode().to_owned(),
        flows,
        rate: args.rate,
        duration_s: args.rate.map(|_| args.duration),
        depth: is(&[Shape::Chain]).then_some(p.depth),
        width: (!is(&[Shape::Chain])).then_some(p.width),
        layers: is(&[Shape::Layered]).then_some(p.layers),
        seed: is(&[Shape::Layered]).then_some(p.seed),
        concurrency: (args.over_http.is_none() && !args.idle).then_some(args.concurrency),
        in_flight: args.in_flight,
        over_http: args.over_http.clone(),
        stop: args.restart.then(|| args.stop.as_str().to_owned()),
        keys: (args.keys > 0).then_some((args.keys, args.key_limit)),
        run,
    }
}

/// What Redis and the CPUs did between two [`Counters`], per node.
struct WindowFigures {
    /// Redis commands per node.
    cmds_per_node: Option<f64>,
    /// The same by command name.
    by_name: BTreeMap<String, f64>,
    /// CPU time per node of this process and of Redis.
    cpu: CpuPerNode,
    /// Cores other processes kept busy, on average.
    background_cores: Option<f64>,
    /// Growth of Redis's `used_memory`, in bytes (negative if it shrank).
    redis_memory_bytes: Option<f64>,
}

impl WindowFigures {
    fn between(before: &Counters, after: &Counters, nodes_total: usize) -> WindowFigures {
        let (cmds_per_node, by_name) = match (&before.redis, &after.redis) {
            (Some(b), Some(a)) => command_delta(&b.calls, &a.calls, nodes_total),
            _ => (None, BTreeMap::new()),
        };
        let per_node_us = |before: Option<f64>, after: Option<f64>| {
            let cpu_s = after? - before?;
            (nodes_total > 0).then(|| round3(cpu_s * 1e6 / nodes_total as f64))
        };
        // What the rest of the machine did meanwhile: a benchmark sharing its cores
        // with a compiler measures the compiler too.
        let delta = |f: fn(&Counters) -> Option<f64>| Some(f(after)? - f(before)?);
        let background_cores = (|| {
            let window = after.at.duration_since(before.at).as_secs_f64();
            let others = delta(|c| c.machine_busy_s)?
                - delta(|c| c.process_cpu_s)?
                - delta(|c| c.redis.as_ref()?.cpu_s)?;
            (window > 0.0).then(|| round3((others / window).max(0.0)))
        })();
        WindowFigures {
            cmds_per_node,
            by_name,
            cpu: CpuPerNode {
                process: per_node_us(before.process_cpu_s, after.process_cpu_s),
                redis: per_node_us(
                    before.redis.as_ref().and_then(|r| r.cpu_s),
                    after.redis.as_ref().and_then(|r| r.cpu_s),
                ),
            },
            background_cores,
            redis_memory_bytes: delta(|c| Some(c.redis.as_ref()?.used_memory? as f64)),
        }
    }
}

/// Counts the keys a run left under `prefix` on the Redis at `redis_url` (for the
/// smoke test: an embedded run leaves none).
#[doc(hidden)]
pub async fn count_keys(redis_url: &str, prefix: &str) -> anyhow::Result<u64> {
    RedisProbe::parse(redis_url)?.count_prefix(prefix).await
}

/// How flows are submitted.
enum Load {
    /// This many, at once (bounded by `--in-flight`).
    Burst(usize),
    /// `total` flows, `rate` per second, open loop.
    Rate {
        /// Flows per second.
        rate: f64,
        /// `rate × duration`.
        total: usize,
    },
}

impl Load {
    fn total(&self) -> usize {
        match self {
            Load::Burst(n) => *n,
            Load::Rate { total, .. } => *total,
        }
    }
}

/// What a driver hands back to [`run_one`].
struct Outcome {
    /// When the first `create` was called.
    started: Instant,
    /// What the submission did.
    submitted: Submitted,
    /// Whether the wait for the flows gave up.
    timed_out: bool,
    /// Counters just before the first submission.
    before: Counters,
    /// Counters once every flow ended (and, embedded, every flow actor stopped).
    after: Counters,
    /// `VmHWM` of this process.
    peak_rss_mb: Option<f64>,
    /// The key prefix of an embedded run.
    prefix: Option<String>,
    /// The store's size over the run (`--disk-every`).
    disk: Vec<DiskSample>,
}

/// The store's size at one moment of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskSample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Bytes of every file in the sled directory, in MiB.
    pub dir_mb: f64,
    /// Flows the retention sweeper deleted so far.
    pub swept: u64,
    /// Flows ended so far, as the benchmark saw them.
    pub ended: usize,
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Samples the store's size every `every` until aborted.
async fn sample_disk(
    engine: Engine,
    dir: PathBuf,
    every: Duration,
    tracker: Arc<Mutex<Tracker>>,
    samples: Arc<Mutex<Vec<DiskSample>>>,
) {
    let start = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let sample = DiskSample {
            t_s: round3(start.elapsed().as_secs_f64()),
            dir_mb: round3(dir_bytes(&dir) as f64 / (1024.0 * 1024.0)),
            swept: engine
                .stats()
                .map(|s| s.flows_swept.load(std::sync::atomic::Ordering::Relaxed))
                .unwrap_or(0),
            ended: lock(&tracker).ended(),
        };
        eprintln!(
            "dagflow bench: t={:.0}s store={:.1} MiB swept={} ended={}",
            sample.t_s, sample.dir_mb, sample.swept, sample.ended
        );
        lock(&samples).push(sample);
    }
}

/// The counters read before and after a run.
struct Counters {
    /// Redis's command calls and CPU time.
    redis: Option<RedisSnapshot>,
    /// CPU seconds of this process.
    process_cpu_s: Option<f64>,
    /// CPU seconds every core of the machine spent busy, all processes.
    machine_busy_s: Option<f64>,
    /// When these were read.
    at: Instant,
}

impl Counters {
    async fn take(probe: &RedisProbe) -> Counters {
        Counters {
            redis: probe.snapshot().await.ok(),
            process_cpu_s: process_cpu_s(),
            machine_busy_s: machine_busy_s(),
            at: Instant::now(),
        }
    }
}

/// Creates flows and answers for their status: an engine here, or a server.
#[async_trait]
trait Target: Send + Sync + 'static {
    /// Creates one flow of the run's spec.
    async fn create(&self) -> anyhow::Result<FlowId>;
    /// `Some(completed)` once the flow ended, `None` while it runs.
    async fn ended(&self, id: FlowId) -> anyhow::Result<Option<bool>>;
}

/// The engine of an embedded run.
struct EngineTarget {
    engine: Engine,
    /// The specs flows take in turn: one, or one per concurrency key (`--keys`).
    specs: Vec<FlowSpec>,
    /// Flows created so far, which picks the next spec.
    next: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Target for EngineTarget {
    async fn create(&self) -> anyhow::Result<FlowId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let spec = &self.specs[n % self.specs.len().max(1)];
        Ok(self.engine.create(spec, None).await?)
    }

    async fn ended(&self, id: FlowId) -> anyhow::Result<Option<bool>> {
        let view = self.engine.get(id).await?;
        Ok(view
            .status
            .is_terminal()
            .then_some(view.status == FlowStatus::Completed))
    }
}

/// The spec as it is (`keys` 0), or one copy per key whose every node has the
/// concurrency key `data.k` with that key and `limit`.
fn keyed_specs(spec: &FlowSpec, keys: usize, limit: u32) -> anyhow::Result<Vec<FlowSpec>> {
    if keys == 0 {
        return Ok(vec![spec.clone()]);
    }
    let mut specs = Vec::with_capacity(keys);
    for k in 0..keys {
        let mut value = serde_json::to_value(spec)?;
        if let Some(nodes) = value["nodes"].as_array_mut() {
            for node in nodes {
                node["data"] = serde_json::json!({ "k": format!("key{k}") });
                node["concurrency"] = serde_json::json!({ "key": "data.k", "limit": limit });
            }
        }
        specs.push(serde_json::from_value(value)?);
    }
    Ok(specs)
}

/// An embedded run: engine and workers in this process, fresh prefix and data dir.
async fn embedded(
    args: &BenchArgs,
    probe: &RedisProbe,
    spec: FlowSpec,
    load: &Load,
    tracker: &Arc<Mutex<Tracker>>,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let prefix = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let data_dir = TempDir::new(parent.join(format!("dagflow-{prefix}")))?;
    let rss_reset = reset_peak_rss();
    let mut builder = Engine::builder()
        .redis_url(args.redis_url.clone())
        .prefix(prefix.clone())
        .data_dir(data_dir.path.clone())
        .queue(QUEUE, args.concurrency)
        .handler("noop", crate::handlers::Noop)
        .handler("echo", crate::handlers::Echo)
        .event_capacity(args.event_capacity)
        .retention(match args.retain {
            Some(keep) => Retention {
                completed: keep,
                failed: keep,
                ..Retention::default()
            },
            None => Retention::default(),
        });
    if let Some(endpoint) = &args.otlp_endpoint {
        builder = builder.otlp_endpoint(endpoint);
    }
    if let Some(limit) = args.backlog_limit {
        builder = builder.backlog_limit(limit);
    }
    let engine = builder.build().await.context("starting the engine")?;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = args.disk_every.filter(|s| *s > 0.0).map(|every| {
        tokio::spawn(sample_disk(
            engine.clone(),
            data_dir.path.clone(),
            Duration::from_secs_f64(every),
            Arc::clone(tracker),
            Arc::clone(&samples),
        ))
    });
    let result = async {
        let collector = tokio::spawn(collect(engine.events(), Arc::clone(tracker)));
        let before = Counters::take(probe).await;
        let target: Arc<dyn Target> = Arc::new(EngineTarget {
            engine: engine.clone(),
            specs: keyed_specs(&spec, args.keys, args.key_limit)?,
            next: Default::default(),
        });
        let started = Instant::now();
        let (submitted, timed_out) =
            submit_and_wait(Arc::clone(&target), tracker, load, args.in_flight, timeout).await;
        // The last flows' actors still ack and clean up in Redis after their final
        // event; their commands belong to the run.
        let settle = Instant::now() + SETTLE;
        while engine.running_flows() > 0 && Instant::now() < settle {
            tokio::time::sleep(POLL).await;
        }
        let after = Counters::take(probe).await;
        collector.abort();
        if let Some(sampler) = &sampler {
            sampler.abort();
        }
        let peak = if rss_reset { peak_rss_mb() } else { None };
        Ok::<_, anyhow::Error>(Outcome {
            started,
            submitted,
            timed_out,
            before,
            after,
            peak_rss_mb: peak,
            prefix: Some(prefix.clone()),
            disk: std::mem::take(&mut *lock(&samples)),
        })
    }
    .await;
    engine.shutdown(Duration::from_secs(10)).await;
    // The run's keys go whatever happened; a failure to remove them is reported
    // but does not hide the run's own error.
    if let Err(e) = probe.delete_prefix(&prefix).await {
        eprintln!("dagflow bench: could not remove the keys of prefix {prefix}: {e:#}");
    }
    drop(data_dir);
    result
}

/// Feeds the engine's events into the tracker until aborted.
async fn collect(
    mut events: broadcast::Receiver<Arc<dagflow_actors::FlowEvent>>,
    tracker: Arc<Mutex<Tracker>>,
) {
    loop {
        let first = events.recv().await;
        let mut t = lock(&tracker);
        let mut next = first;
        // Take everything already waiting under one lock.
        loop {
            match next {
                Ok(e) => t.on_event(e.flow_id, e.node.as_deref(), &e.status, e.ts),
                Err(broadcast::error::RecvError::Lagged(n)) => t.lagged += n,
                Err(broadcast::error::RecvError::Closed) => return,
            }
            next = match events.try_recv() {
                Ok(e) => Ok(e),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(broadcast::error::RecvError::Lagged(n))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    Err(broadcast::error::RecvError::Closed)
                }
                Err(broadcast::error::TryRecvError::Empty) => break,
            };
        }
    }
}

/// What the submission did.
#[derive(Debug, Default)]
struct Submitted {
    /// Flows created.
    created: usize,
    /// Creates that failed.
    errors: usize,
    /// The first failure.
    first_error: Option<String>,
    /// How long from the first create called to the last one answered.
    took: Duration,
}

impl Submitted {
    fn add(&mut self, result: anyhow::Result<()>) {
        match result {
            Ok(()) => self.created += 1,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
}

/// Submits the load and returns once every `create` answered.
async fn submit(
    target: Arc<dyn Target>,
    tracker: &Arc<Mutex<Tracker>>,
    load: &Load,
    in_flight: usize,
) -> Submitted {
    let mut submitted = Submitted::default();
    let started = Instant::now();
    match *load {
        Load::Burst(n) => {
            let mut creates = futures::stream::iter(0..n)
                .map(|_| create_one(Arc::clone(&target), Arc::clone(tracker)))
                .buffer_unordered(in_flight.max(1));
            while let Some(result) = creates.next().await {
                submitted.add(result);
            }
        }
        Load::Rate { rate, total } => {
            // Open loop: each flow is due at start + i / rate and is created in a
            // task of its own, so a slow create never delays the next one.
            let start = tokio::time::Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..total {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                tasks.spawn(create_one(Arc::clone(&target), Arc::clone(tracker)));
                while let Some(done) = tasks.try_join_next() {
                    submitted.add(done.unwrap_or_else(|e| Err(e.into())));
                }
            }
            while let Some(done) = tasks.join_next().await {
                submitted.add(done.unwrap_or_else(|e| Err(e.into())));
            }
        }
    }
    submitted.took = started.elapsed();
    submitted
}

/// Submits the load, then waits for every flow created to end, for at most `timeout`
/// after the last submission (an open-loop run's submissions last its duration).
/// Returns what was submitted and whether the wait timed out.
async fn submit_and_wait(
    target: Arc<dyn Target>,
    tracker: &Arc<Mutex<Tracker>>,
    load: &Load,
    in_flight: usize,
    timeout: Duration,
) -> (Submitted, bool) {
    let submitted = submit(Arc::clone(&target), tracker, load, in_flight).await;
    let ended = wait_for_end(
        &*target,
        tracker,
        submitted.created,
        Instant::now() + timeout,
    )
    .await;
    (submitted, !ended)
}

/// Creates one flow and records when it was asked for and how long it took.
async fn create_one(target: Arc<dyn Target>, tracker: Arc<Mutex<Tracker>>) -> anyhow::Result<()> {
    let submitted_ms = now_ms();
    let t0 = Instant::now();
    let id = target.create().await?;
    let us = t0.elapsed().as_micros() as u64;
    lock(&tracker).on_created(id, submitted_ms, us);
    Ok(())
}

/// Waits until `expected` flows ended; false if `deadline` passed first. After the
/// feed lagged, flows not seen ending are asked for their status now and then.
async fn wait_for_end(
    target: &dyn Target,
    tracker: &Arc<Mutex<Tracker>>,
    expected: usize,
    deadline: Instant,
) -> bool {
    let mut next_lag_poll = Instant::now() + LAG_POLL;
    loop {
        let (ended, lagged) = {
            let t = lock(tracker);
            (t.ended(), t.lagged)
        };
        if ended >= expected {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        if lagged > 0 && Instant::now() >= next_lag_poll {
            let unfinished = lock(tracker).unfinished();
            for id in unfinished {
                if let Ok(Some(completed)) = target.ended(id).await {
                    lock(tracker).on_end(id, completed, None);
                }
            }
            next_lag_poll = Instant::now() + LAG_POLL;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Commands per node, total and by name, between two `INFO commandstats`.
fn command_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    nodes: usize,
) -> (Option<f64>, BTreeMap<String, f64>) {
    if nodes == 0 {
        return (None, BTreeMap::new());
    }
    let mut total = 0;
    let mut by_name = BTreeMap::new();
    for (name, calls) in after {
        // The INFO calls are the benchmark's, not the engine's, and so are the
        // queue depth polls of the idle and restart modes (the engine itself asks
        // for a queue's depth only when its metrics are scraped).
        if matches!(name.as_str(), "info" | "xlen" | "zcard") {
            continue;
        }
        let delta = calls.saturating_sub(before.get(name).copied().unwrap_or(0));
        total += delta;
        let per_node = round3(delta as f64 / nodes as f64);
        if per_node > 0.0 {
            by_name.insert(name.clone(), per_node);
        }
    }
    (Some(round3(total as f64 / nodes as f64)), by_name)
}

/// The progress bar on stderr: flows ended out of flows to submit. Hidden with
/// `--no-progress` and when stderr is not a terminal.
fn progress_bar(args: &BenchArgs, total: usize) -> ProgressBar {
    if args.no_progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} flows ({per_sec})",
    ) {
        bar.set_style(style);
    }
    bar.set_message(args.shape.as_str());
    bar
}

/// Resets this process's `VmHWM` to its current RSS; false where that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `VmHWM` of this process (its peak resident memory), in MiB.
fn peak_rss_mb() -> Option<f64> {
    proc_status_mb("VmHWM")
}

/// `VmRSS` of this process (its resident memory now), in MiB.
fn rss_mb() -> Option<f64> {
    proc_status_mb("VmRSS")
}

/// A memory field of `/proc/self/status` (given in kB), in MiB.
fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(round3(kb / 1024.0))
}

/// CPU seconds (user + system) this process used so far, from `/proc/self/stat`.
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces);
    // utime and stime are fields 14 and 15 of the whole line.
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // In clock ticks, which the kernel's ABI fixes at 100 per second (USER_HZ).
    Some((utime + stime) / 100.0)
}

/// CPU seconds all cores spent busy since boot, from `/proc/stat`: user, nice,
/// system, irq and softirq time (not idle, iowait, steal; guest time is already in
/// user time).
fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .map(|i| ticks.get(*i).unwrap_or(&0.0))
        .sum::<f64>();
    Some(busy / 100.0)
}

use dagflow_actors::clock::now_ms;

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The tracker, even if a task panicked while holding it (its data is still usable
/// for a benchmark).
fn lock<T>(tracker: &Mutex<T>) -> MutexGuard<'_, T> {
    tracker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A directory removed, with everything in it, when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(path: PathBuf) -> anyhow::Result<TempDir> {
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating data dir {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_delta_leaves_out_info() {
        let before = BTreeMap::from([("xadd".to_owned(), 10), ("info".to_owned(), 5)]);
        let after = BTreeMap::from([
            ("xadd".to_owned(), 30),
            ("info".to_owned(), 6),
            ("evalsha".to_owned(), 10),
        ]);
        let (total, by_name) = command_delta(&before, &after, 10);
        assert_eq!(total, Some(3.0));
        assert_eq!(by_name.get("xadd"), Some(&2.0));
        assert_eq!(by_name.get("evalsha"), Some(&1.0));
        assert!(!by_name.contains_key("info"));
    }

    #[test]
    fn args_parse_with_defaults() {
        let a = BenchArgs::try_parse_from(["b", "wide"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.shape, Shape::Wide);
        assert_eq!(a.shape_params().width, 1000);
        assert!(BenchArgs::try_parse_from(["b", "chain", "--flows", "1", "--rate", "5"]).is_err());
        assert!(BenchArgs::try_parse_from(["b", "--duration", "5"]).is_err());
    }

    #[test]
    fn peak_rss_is_read() {
        assert!(peak_rss_mb().is_some_and(|mb| mb > 0.0));
        let rss = rss_mb().unwrap_or_else(|| panic!("no VmRSS"));
        assert!(rss > 0.0 && peak_rss_mb().is_some_and(|peak| peak >= rss));
    }

    #[test]
    fn unserved_modes_parse() {
        let a = BenchArgs::try_parse_from(["b", "--idle"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.mode(), a.shape_params().width), ("idle", 8));
        let a = BenchArgs::try_parse_from(["b", "--restart", "--stop", "graceful"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.mode(), a.stop), ("restart", Stop::Graceful));
        let a = BenchArgs::try_parse_from(["b", "chain", "--restart", "--width", "3"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.shape_params().width, 3);
        assert!(BenchArgs::try_parse_from(["b", "--idle", "--restart"]).is_err());
        assert!(BenchArgs::try_parse_from(["b", "--idle", "--rate", "5"]).is_err());
        assert!(BenchArgs::try_parse_from(["b", "--restart", "--over-http", "http://x"]).is_err());
        assert!(BenchArgs::try_parse_from(["b", "--stop", "graceful"]).is_err());
        assert!(BenchArgs::try_parse_from(["b", "--server-bin", "/bin/true"]).is_err());
    }

    #[test]
    fn failure_by_mode() {
        let mut r = BenchResult::empty();
        r.parameters.mode = "idle".to_owned();
        r.flows_submitted = 3;
        r.idle_flows = Some(3);
        assert_eq!(r.failure(), None);
        r.idle_flows = Some(2);
        assert!(r.failure().is_some());
        r.parameters.mode = "restart".to_owned();
        r.resumed_flows = Some(3);
        r.flows_completed = 3;
        assert_eq!(r.failure(), None);
        r.flows_completed = 2;
        assert!(r.failure().is_some());
        r.parameters.mode = "burst".to_owned();
        r.flows_completed = 3;
        assert_eq!(r.failure(), None);
        r.timed_out = true;
        assert!(r.failure().is_some());
    }

    #[test]
    fn process_cpu_is_read() {
        let before = process_cpu_s().unwrap_or_else(|| panic!("no cpu time"));
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let after = process_cpu_s().unwrap_or_else(|| panic!("no cpu time"));
        assert!(after >= before && x > 0);
    }
}
