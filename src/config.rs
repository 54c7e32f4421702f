//! Configuration: every flag of the `dagflow` binary, its `DAGFLOW_*` environment twin
//! and its default, in one [`Config`] parsed once in `main`.
//!
//! Nothing else in the crate reads the environment; the rest of the program gets the
//! values from here. The defaults are named constants so that the README, `--help`
//! and the code cannot drift apart.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dagflow_actors::retention::{Keep, Retention};

/// Address `dagflow serve` listens on: loopback only, so that an instance without a
/// token is not reachable from the network by accident.
pub const DEFAULT_BIND: &str = "127.0.0.1:7700";
/// Redis of the queues, completions and worker heartbeats.
pub const DEFAULT_REDIS_URL: &str = dagflow_actors::engine::DEFAULT_REDIS_URL;
/// Prefix of every Redis key, so that several deployments share one Redis.
pub const DEFAULT_PREFIX: &str = dagflow_actors::engine::DEFAULT_PREFIX;
/// Where `dagflow serve` keeps its sled snapshots.
pub const DEFAULT_DATA_DIR: &str = "./dagflow-data";
/// Queues served when none are given.
pub const DEFAULT_QUEUES: &str = "default";
/// Jobs of one queue that run at once in one process, for a queue given without
/// `=concurrency`.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Largest request body the API accepts (1 MiB).
pub const DEFAULT_BODY_LIMIT: u64 = crate::api::DEFAULT_BODY_LIMIT;
/// How long a graceful shutdown lets running jobs finish before they are cancelled.
pub const DEFAULT_SHUTDOWN_TIMEOUT: &str = "30s";
/// Default of `--hibernate-after` (the engine's own default).
pub const DEFAULT_HIBERNATE_AFTER: &str = "10s";
/// Default of `--reconcile-every` (the engine's own default).
pub const DEFAULT_RECONCILE_EVERY: &str = "30s";
/// Default job lease (the engine's own default).
pub const DEFAULT_LEASE: &str = "30s";
/// Default of `--retain-completed`.
pub const DEFAULT_RETAIN_COMPLETED: &str = dagflow_actors::retention::DEFAULT_RETAIN_COMPLETED;
/// Default of `--retain-failed`.
pub const DEFAULT_RETAIN_FAILED: &str = dagflow_actors::retention::DEFAULT_RETAIN_FAILED;
/// Default of `--sweep-rate`.
pub const DEFAULT_SWEEP_RATE: u32 = dagflow_actors::retention::DEFAULT_SWEEP_RATE;
/// Default of `--webhook-timeout` (the engine's own default).
pub const DEFAULT_WEBHOOK_TIMEOUT: &str = "10s";
/// Default of `--webhook-max-age`: a day (the engine's own default).
pub const DEFAULT_WEBHOOK_MAX_AGE: &str = "24h";
/// Server the client commands talk to.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7700";
/// Log filter when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// The `dagflow` command line.
#[derive(Debug, Clone, Parser)]
#[command(name = "dagflow", version, about = "DAG workflow orchestrator", long_about = None)]
pub struct Config {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing-subscriber `EnvFilter` syntax, e.g. `info,dagflow=debug`).
    #[arg(long, global = true, env = "RUST_LOG", default_value = DEFAULT_LOG_FILTER)]
    pub log_filter: String,
    /// Log one JSON object per line instead of human-readable text.
    #[arg(long, global = true, env = "DAGFLOW_LOG_JSON")]
    pub log_json: bool,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the API, the engine and local workers.
    Serve(ServeConfig),
    /// Run workers only, for more processes or machines on the same Redis.
    Worker(WorkerConfig),
    /// Submit a flow spec (JSON file, `-` for stdin) and print its id.
    Submit(SubmitConfig),
    /// Print a flow with every node as JSON.
    Status(StatusConfig),
    /// Print a flow's live events as JSON lines until it ends.
    Watch(WatchConfig),
    /// Deliver a signal to a node that waits for one (`wait.signal`); prints the node.
    Signal(SignalConfig),
    /// Re-run a node and everything after it; prints the flow.
    Rerun(RerunConfig),
    /// Create, list, pause, resume or delete schedules (flows started on a cron
    /// timetable).
    Schedule(crate::cli::client::schedule::ScheduleArgs),
    /// Benchmark an engine in this process (or a server, `--over-http`): one JSON
    /// line of throughput, latencies, memory and Redis commands per run.
    Bench(crate::bench::BenchArgs),
}

/// Where the engine's shared state lives.
#[derive(Debug, Clone, Args)]
pub struct RedisConfig {
    /// Redis URL (`redis://[:password@]host:port[/db]`).
    #[arg(long, env = "DAGFLOW_REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Prefix of every Redis key; processes that work together use the same one.
    #[arg(long, env = "DAGFLOW_PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// Lease of a running job: a job whose worker stops renewing it for this long
    /// (it died) is reclaimed by another worker. Same value on every process.
    #[arg(long, env = "DAGFLOW_LEASE", default_value = DEFAULT_LEASE)]
    pub lease: HumanDuration,
}

/// `dagflow serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address of the REST and WebSocket API.
    #[arg(long, env = "DAGFLOW_BIND", default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,
    /// Redis and key prefix.
    #[command(flatten)]
    pub redis: RedisConfig,
    /// Directory of the sled snapshots; one server process per directory.
    #[arg(long, env = "DAGFLOW_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Bearer token every route but /healthz and /readyz requires; none by default.
    #[arg(long, env = "DAGFLOW_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Queues the local workers serve: comma list of `name` or `name=concurrency`
    /// (empty for none).
    #[arg(long, env = "DAGFLOW_QUEUES", default_value = DEFAULT_QUEUES)]
    pub queues: QueueList,
    /// Largest request body in bytes.
    #[arg(long, env = "DAGFLOW_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: u64,
    /// Time running jobs get to finish on SIGINT/SIGTERM (`500ms`, `30s`, `2m`, or
    /// plain seconds).
    #[arg(long, env = "DAGFLOW_SHUTDOWN_TIMEOUT", default_value = DEFAULT_SHUTDOWN_TIMEOUT)]
    pub shutdown_timeout: HumanDuration,
    /// A running flow with nothing in flight for this long gives up its actor and
    /// waits on disk (a waiting flow then costs a few hundred bytes instead of
    /// ~14 KiB); whatever concerns it next wakes it. `0` keeps every flow awake.
    #[arg(long, env = "DAGFLOW_HIBERNATE_AFTER", default_value = DEFAULT_HIBERNATE_AFTER)]
    pub hibernate_after: HumanDuration,
    /// How often a reconciliation pass starts at most: it compares every unfinished
    /// flow's queued and running jobs with Redis and puts back what Redis lost
    /// (a restart from an older snapshot, a failover), at up to 1,000 flows a second.
    #[arg(long, env = "DAGFLOW_RECONCILE_EVERY", default_value = DEFAULT_RECONCILE_EVERY)]
    pub reconcile_every: HumanDuration,
    /// How long a completed flow is kept before it is deleted with everything it
    /// holds (`90s`, `12h`, `7d`, or `forever`). A flow's `opts.retention` overrides it.
    #[arg(long, env = "DAGFLOW_RETAIN_COMPLETED", default_value = DEFAULT_RETAIN_COMPLETED)]
    pub retain_completed: Keep,
    /// How long a failed or cancelled flow is kept (`90s`, `12h`, `30d`, or `forever`).
    #[arg(long, env = "DAGFLOW_RETAIN_FAILED", default_value = DEFAULT_RETAIN_FAILED)]
    pub retain_failed: Keep,
    /// Most expired flows deleted per second; the sweeper never takes more.
    #[arg(long, env = "DAGFLOW_SWEEP_RATE", default_value_t = DEFAULT_SWEEP_RATE)]
    pub sweep_rate: u32,
    /// How flows' callbacks (`opts.notify`) are sent.
    #[command(flatten)]
    pub webhooks: WebhookConfig,
    /// Export an OpenTelemetry trace per flow (a span per node attempt) over
    /// OTLP/HTTP to this collector, e.g. `http://localhost:4318` (spans go to its
    /// `/v1/traces`). Off by default, and free when off.
    #[arg(long, env = "DAGFLOW_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// How `dagflow serve` sends flows' callbacks (`opts.notify`).
#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Key of the callbacks' `X-Dagflow-Signature` (`sha256=` + hex HMAC-SHA256 of
    /// the body). Without one, callbacks are sent unsigned.
    #[arg(long, env = "DAGFLOW_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Longest time one callback POST may take before it counts as failed.
    #[arg(long, env = "DAGFLOW_WEBHOOK_TIMEOUT", default_value = DEFAULT_WEBHOOK_TIMEOUT)]
    pub webhook_timeout: HumanDuration,
    /// A callback still failing this long after its flow ended is dropped (logged
    /// and counted in `dagflow_callbacks_dropped_total`).
    #[arg(long, env = "DAGFLOW_WEBHOOK_MAX_AGE", default_value = DEFAULT_WEBHOOK_MAX_AGE)]
    pub webhook_max_age: HumanDuration,
}

impl WebhookConfig {
    /// The engine's callback options.
    pub fn options(&self) -> dagflow_actors::notify::NotifyOptions {
        dagflow_actors::notify::NotifyOptions {
            secret: self.webhook_secret.clone().filter(|s| !s.is_empty()),
            timeout: self.webhook_timeout.0,
            max_age: self.webhook_max_age.0,
            ..dagflow_actors::notify::NotifyOptions::default()
        }
    }
}

impl ServeConfig {
    /// The retention the flags ask for.
    pub fn retention(&self) -> Retention {
        Retention {
            completed: self.retain_completed,
            failed: self.retain_failed,
            sweep_rate: self.sweep_rate,
        }
    }
}

/// `dagflow worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// Redis and key prefix (the same as the server's).
    #[command(flatten)]
    pub redis: RedisConfig,
    /// Queues to serve: comma list of `name` or `name=concurrency`.
    #[arg(long, env = "DAGFLOW_QUEUES", default_value = DEFAULT_QUEUES)]
    pub queues: QueueList,
    /// Time running jobs get to finish on SIGINT/SIGTERM.
    #[arg(long, env = "DAGFLOW_SHUTDOWN_TIMEOUT", default_value = DEFAULT_SHUTDOWN_TIMEOUT)]
    pub shutdown_timeout: HumanDuration,
}

/// Which server the client commands talk to, and how.
#[derive(Debug, Clone, Args)]
pub struct ClientConfig {
    /// Base URL of the dagflow server.
    #[arg(long, env = "DAGFLOW_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token, when the server requires one.
    #[arg(long, env = "DAGFLOW_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
}

/// `dagflow submit`.
#[derive(Debug, Clone, Args)]
pub struct SubmitConfig {
    /// The flow spec: a JSON file, or `-` for stdin.
    pub file: PathBuf,
    /// Wait for the flow to end, with a progress bar on stderr; print the final flow
    /// and exit 0 completed, 1 failed, 2 cancelled.
    #[arg(long, env = "DAGFLOW_WAIT")]
    pub wait: bool,
    /// Resubmitting with the same key returns the first flow instead of a new one.
    #[arg(long, env = "DAGFLOW_IDEMPOTENCY_KEY")]
    pub idempotency_key: Option<String>,
    /// Server and token.
    #[command(flatten)]
    pub client: ClientConfig,
}

/// `dagflow status`.
#[derive(Debug, Clone, Args)]
pub struct StatusConfig {
    /// The flow id.
    pub id: String,
    /// Server and token.
    #[command(flatten)]
    pub client: ClientConfig,
}

/// `dagflow signal`.
#[derive(Debug, Clone, Args)]
pub struct SignalConfig {
    /// The flow id.
    pub id: String,
    /// The waiting node's name.
    pub node: String,
    /// The payload, JSON text (`-` reads stdin); it becomes the node's result.
    /// Without it the payload is `null`.
    pub payload: Option<String>,
    /// Server and token.
    #[command(flatten)]
    pub client: ClientConfig,
}

/// `dagflow rerun`.
#[derive(Debug, Clone, Args)]
pub struct RerunConfig {
    /// The flow id.
    pub id: String,
    /// The node to re-run from.
    pub node: String,
    /// Server and token.
    #[command(flatten)]
    pub client: ClientConfig,
}

/// `dagflow watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchConfig {
    /// The flow id.
    pub id: String,
    /// Server and token.
    #[command(flatten)]
    pub client: ClientConfig,
}

/// One queue and how many of its jobs run at once in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// The queue's name, as nodes name it in `queue`.
    pub name: String,
    /// Jobs of it that run at once.
    pub concurrency: usize,
}

/// The `--queues` value: `default,gpu=2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueList(pub Vec<QueueSpec>);

impl FromStr for QueueList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut queues: Vec<QueueSpec> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, concurrency) = match item.split_once('=') {
                Some((name, n)) => {
                    let n: usize = n.trim().parse().map_err(|_| {
                        format!("queue '{item}': concurrency must be a whole number")
                    })?;
                    if n == 0 {
                        return Err(format!("queue '{item}': concurrency must be at least 1"));
                    }
                    (name.trim(), n)
                }
                None => (item, DEFAULT_CONCURRENCY),
            };
            if name.is_empty() {
                return Err(format!("queue '{item}' has no name"));
            }
            if queues.iter().any(|q| q.name == name) {
                return Err(format!("queue '{name}' is listed twice"));
            }
            queues.push(QueueSpec {
                name: name.to_owned(),
                concurrency,
            });
        }
        Ok(QueueList(queues))
    }
}

impl fmt::Display for QueueList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|q| format!("{}={}", q.name, q.concurrency))
            .collect();
        f.write_str(&items.join(","))
    }
}

/// A duration flag: `250ms`, `30s`, `2m`, `12h`, `7d`, `1h 30m`, or a plain number
/// of seconds (humantime's syntax, the same as `opts.retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(HumanDuration(Duration::from_secs(secs)));
        }
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("'{s}' is not a duration (e.g. 500ms, 30s, 2m, 7d): {e}"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn queue_lists_parse_with_default_concurrency() {
        let list: QueueList = "default, gpu=2,".parse().unwrap();
        assert_eq!(
            list.0,
            vec![
                QueueSpec {
                    name: "default".into(),
                    concurrency: DEFAULT_CONCURRENCY
                },
                QueueSpec {
                    name: "gpu".into(),
                    concurrency: 2
                },
            ]
        );
        assert_eq!("".parse::<QueueList>().unwrap().0, vec![]);
        assert!("gpu=0".parse::<QueueList>().is_err());
        assert!("gpu=x".parse::<QueueList>().is_err());
        assert!("=3".parse::<QueueList>().is_err());
        assert!("a,a".parse::<QueueList>().is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        let d = |s: &str| s.parse::<HumanDuration>().map(|d| d.0);
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(d("7"), Ok(Duration::from_secs(7)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(d("3h"), Ok(Duration::from_secs(3 * 3600)));
        assert_eq!(d("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(d("soon").is_err());
        assert!(d("-3s").is_err());
    }

    #[test]
    fn defaults_match_the_design() {
        let config = Config::try_parse_from(["dagflow", "serve"]).unwrap();
        let Command::Serve(serve) = config.command else {
            panic!("not serve");
        };
        assert_eq!(serve.bind.to_string(), DEFAULT_BIND);
        assert_eq!(serve.redis.prefix, "dagflow");
        assert_eq!(
            serve.queues.to_string(),
            format!("default={DEFAULT_CONCURRENCY}")
        );
        assert_eq!(serve.shutdown_timeout.0, Duration::from_secs(30));
        assert_eq!(serve.retention(), Retention::default());
        Config::command_for_tests().debug_assert();
    }

    impl Config {
        fn command_for_tests() -> clap::Command {
            <Config as clap::CommandFactory>::command()
        }
    }
}
