//! Flows that wait: the parts the `--idle` and `--restart` modes share, and the
//! idle mode itself.
//!
//! Both modes put every node on [`UNSERVED_QUEUE`], a queue no worker of the run
//! serves, so each flow stops right after it started: durable in sled, its root
//! jobs in the queue's Redis stream, its actor alive and waiting. That is the state
//! a deployment is in when its workers fall behind or are down, and the one issue 5
//! sets targets for: 100,000 such flows of 10 nodes in at most 1 GiB of RSS, and
//! 10,000 of them resumed at most 5 s after a restart.
//!
//! A flow counts as created when `create` answered (the flow is durable and its
//! actor started) and its roots as enqueued when the stream holds one entry per root
//! of every flow created: the figures are taken only once both are true. The
//! benchmark keeps as little per flow as it can (one latency sample, and the id in
//! restart runs), so that the memory measured is the engine's.
//!
//! The idle run's engine keeps the default event capacity (no one subscribes, so
//! the feed holds nothing) rather than the larger one burst runs give their
//! subscriber: the memory is what a server would use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use dagflow_actors::queue::{Keys, Queue};
use dagflow_actors::{Engine, FlowId, FlowSpec};
use futures::StreamExt;
use indicatif::ProgressBar;

use super::redis_probe::RedisProbe;
use super::shapes::Topology;
use super::{
    parameters, peak_rss_mb, progress_bar, reset_peak_rss, round3, rss_mb, BenchArgs, BenchResult,
    Counters, EngineTarget, Percentiles, Target, TempDir, WindowFigures, DEFAULT_FLOWS,
};

/// The queue the flows of idle and restart runs wait on; no worker serves it until
/// a restart run lets its flows finish.
pub(super) const UNSERVED_QUEUE: &str = "bench-unserved";
/// How often the wait for the root jobs asks Redis for the queue's length.
const ENQUEUE_POLL: Duration = Duration::from_millis(20);
/// Idle mode: how long past `--hibernate-after` the flows get to hibernate.
const HIBERNATE_SLACK: Duration = Duration::from_secs(30);
/// How long the engine gets to stop at the end of a run.
pub(super) const ENGINE_STOP: Duration = Duration::from_secs(10);

/// What the creation of the flows did.
#[derive(Debug, Default)]
pub(super) struct Creation {
    /// The flows created, when asked to keep them.
    pub(super) ids: Vec<FlowId>,
    /// Flows created.
    pub(super) created: usize,
    /// Creates that failed.
    pub(super) errors: usize,
    /// The first failure.
    pub(super) first_error: Option<String>,
    /// `create` called → answered, per flow created, in ms.
    pub(super) latencies_ms: Vec<f64>,
    /// First `create` called → last one answered.
    pub(super) took: Duration,
}

/// Creates `flows` flows, at most `in_flight` at once, ticking `progress` per flow.
pub(super) async fn create_flows(
    target: Arc<dyn Target>,
    flows: usize,
    in_flight: usize,
    keep_ids: bool,
    progress: &ProgressBar,
) -> Creation {
    let started = Instant::now();
    let mut c = Creation {
        ids: Vec::with_capacity(if keep_ids { flows } else { 0 }),
        latencies_ms: Vec::with_capacity(flows),
        ..Creation::default()
    };
    let mut creates = futures::stream::iter(0..flows)
        .map(|_| {
            let target = Arc::clone(&target);
            async move {
                let t0 = Instant::now();
                let result = target.create().await;
                (result, t0.elapsed())
            }
        })
        .buffer_unordered(in_flight.max(1));
    while let Some((result, took)) = creates.next().await {
        match result {
            Ok(id) => {
                c.created += 1;
                c.latencies_ms.push(took.as_micros() as f64 / 1000.0);
                if keep_ids {
                    c.ids.push(id);
                }
                progress.inc(1);
            }
            Err(e) => {
                c.errors += 1;
                c.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    c.took = started.elapsed();
    c
}

/// Waits until the unserved queue's stream holds `expected` jobs; returns how many
/// it held last and whether that was before `deadline`. Asks through the engine
/// crate's own client, which knows the key names.
pub(super) async fn wait_enqueued(
    queue: &Queue,
    expected: u64,
    deadline: Instant,
) -> anyhow::Result<(u64, bool)> {
    loop {
        let (ready, _delayed) = queue
            .depth(UNSERVED_QUEUE)
            .await
            .context("reading the length of the unserved queue")?;
        if ready >= expected {
            return Ok((ready, true));
        }
        if Instant::now() >= deadline {
            return Ok((ready, false));
        }
        tokio::time::sleep(ENQUEUE_POLL).await;
    }
}

/// A client of the run's queues, under its prefix.
pub(super) async fn connect_queue(redis_url: &str, prefix: &str) -> anyhow::Result<Queue> {
    Queue::connect(redis_url, Keys::new(prefix))
        .await
        .with_context(|| format!("connecting to redis at {redis_url}"))
}

/// A fresh key prefix for one run; its keys are removed at the end.
pub(super) fn fresh_prefix() -> String {
    format!("bench-{}", uuid::Uuid::now_v7().simple())
}

/// What an idle or restart run owns: its Redis probe, a fresh key prefix, a data
/// directory named after it, and whether the peak-RSS counter could be reset.
pub(super) struct RunScope {
    pub(super) probe: RedisProbe,
    pub(super) prefix: String,
    pub(super) dir: TempDir,
    pub(super) rss_reset: bool,
}

impl RunScope {
    pub(super) fn new(args: &BenchArgs) -> anyhow::Result<RunScope> {
        let probe = RedisProbe::parse(&args.redis_url)?;
        let prefix = fresh_prefix();
        let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        let dir = TempDir::new(parent.join(format!("dagflow-{prefix}")))?;
        let rss_reset = reset_peak_rss();
        Ok(RunScope {
            probe,
            prefix,
            dir,
            rss_reset,
        })
    }

    /// Removes the run's keys and directory, whatever happened; a failure to remove
    /// the keys is reported but does not hide the run's own result.
    pub(super) async fn finish(self) {
        if let Err(e) = self.probe.delete_prefix(&self.prefix).await {
            eprintln!(
                "dagflow bench: could not remove the keys of prefix {}: {e:#}",
                self.prefix
            );
        }
    }
}

/// The flows to create: `--flows`, at least one.
pub(super) fn flow_count(args: &BenchArgs) -> usize {
    args.flows.unwrap_or(DEFAULT_FLOWS).max(1)
}

/// The part of an idle or restart result that comes from creating the flows: the
/// shape, the creation counts and rates, and the Redis and CPU figures over the
/// creation window.
pub(super) struct CreationPhase {
    /// What the creates did.
    pub(super) creation: Creation,
    /// Jobs in the unserved queue at the end of the window.
    pub(super) queued_jobs: u64,
    /// Whether the wait for the root jobs gave up.
    pub(super) timed_out: bool,
    /// First `create` called → every root job seen in Redis.
    pub(super) wall: Duration,
    /// Counters just before the first `create`.
    pub(super) before: Counters,
    /// Counters once every root job was seen.
    pub(super) after: Counters,
}

/// Creates the flows through `target`, waits for their root jobs and reads the
/// counters around both.
pub(super) async fn create_phase(
    args: &BenchArgs,
    probe: &RedisProbe,
    queue: &Queue,
    topology: &Topology,
    target: Arc<dyn Target>,
    keep_ids: bool,
) -> anyhow::Result<CreationPhase> {
    let flows = flow_count(args);
    let progress = progress_bar(args, flows);
    let before = Counters::take(probe).await;
    let started = Instant::now();
    let creation = create_flows(target, flows, args.in_flight, keep_ids, &progress).await;
    progress.finish_and_clear();
    let expected = (creation.created * topology.roots()) as u64;
    let deadline = Instant::now() + Duration::from_secs(args.timeout.max(1));
    let (queued_jobs, reached) = wait_enqueued(queue, expected, deadline).await?;
    let wall = started.elapsed();
    let after = Counters::take(probe).await;
    Ok(CreationPhase {
        creation,
        queued_jobs,
        timed_out: !reached,
        wall,
        before,
        after,
    })
}

/// The result of an idle or restart run, with what the creation phase measured;
/// the mode adds its own fields.
pub(super) fn creation_result(
    args: &BenchArgs,
    run: u32,
    topology: &Topology,
    phase: &CreationPhase,
    prefix: &str,
) -> BenchResult {
    let created = phase.creation.created;
    let nodes_total = created * topology.len();
    let wall = phase.wall.as_secs_f64().max(1e-6);
    let window = WindowFigures::between(&phase.before, &phase.after, nodes_total);
    let redis_mem_mb = window
        .redis_memory_bytes
        .map(|b| round3(b / 1024.0 / 1024.0));
    BenchResult {
        shape: args.shape.as_str().to_owned(),
        parameters: parameters(args, run, Some(flow_count(args))),
        nodes_per_flow: topology.len(),
        edges_per_flow: topology.edges(),
        flows_submitted: created,
        create_errors: phase.creation.errors,
        first_error: phase.creation.first_error.clone(),
        timed_out: phase.timed_out,
        nodes_total,
        wall_s: round3(wall),
        nodes_per_s: round3(nodes_total as f64 / wall),
        flows_per_s: round3(created as f64 / wall),
        creates_per_s: round3(created as f64 / phase.creation.took.as_secs_f64().max(1e-6)),
        create_latency_ms: Percentiles::of(phase.creation.latencies_ms.clone()),
        redis_cmds_per_node: window.cmds_per_node,
        redis_cmds_by_name: window.by_name,
        cpu_us_per_node: window.cpu,
        background_cpu_cores: window.background_cores,
        prefix: Some(prefix.to_owned()),
        queued_jobs: Some(phase.queued_jobs),
        redis_mem_mb,
        redis_mem_per_flow_kb: redis_mem_mb
            .filter(|_| created > 0)
            .map(|mb| round3(mb * 1024.0 / created as f64)),
        ..BenchResult::empty()
    }
}

/// `(rss − baseline) / flows` in KiB.
fn per_flow_kb(rss: Option<f64>, baseline: Option<f64>, flows: usize) -> Option<f64> {
    let grown_mb = rss? - baseline?;
    (flows > 0).then(|| round3(grown_mb * 1024.0 / flows as f64))
}

/// `dagflow bench --idle`: an engine in this process with no workers, `--flows`
/// flows created on the unserved queue, memory read once every root job is in Redis.
pub(super) async fn run_idle(
    args: &BenchArgs,
    run: u32,
    topology: &Topology,
    spec: FlowSpec,
) -> anyhow::Result<BenchResult> {
    let scope = RunScope::new(args)?;
    let (probe, prefix, rss_reset) = (&scope.probe, scope.prefix.clone(), scope.rss_reset);
    let mut builder = Engine::builder()
        .redis_url(args.redis_url.clone())
        .prefix(prefix.clone())
        .data_dir(scope.dir.path.clone());
    let hibernate_after = match args.hibernate_after {
        Some(s) if s <= 0.0 => None,
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => Some(dagflow_actors::engine::DEFAULT_HIBERNATE_AFTER),
    };
    builder = builder.hibernate_after(hibernate_after);
    let engine = builder.build().await.context("starting the engine")?;
    let result = async {
        let queue = connect_queue(&args.redis_url, &prefix).await?;
        let baseline = rss_mb();
        let target: Arc<dyn Target> = Arc::new(EngineTarget {
            engine: engine.clone(),
            specs: vec![spec],
            next: Default::default(),
        });
        let phase = create_phase(args, probe, &queue, topology, target, false).await?;
        // Read at once: every flow created and waiting, nothing else going on.
        let rss = rss_mb();
        let peak = if rss_reset { peak_rss_mb() } else { None };
        let awake = engine.running_flows();
        let mut result = creation_result(args, run, topology, &phase, &prefix);
        // Every created flow waits (its roots are in Redis), awake or hibernating.
        let waiting = if phase.timed_out {
            awake
        } else {
            phase.creation.created
        };
        result.peak_rss_mb = peak;
        result.idle_flows = Some(waiting);
        result.awake_flows = Some(awake);
        result.rss_mb = rss;
        result.rss_baseline_mb = baseline;
        result.rss_per_flow_kb = per_flow_kb(rss, baseline, waiting);
        if let Some(after) = hibernate_after {
            // Every flow waits with nothing in flight: each hibernates `after` past
            // its last activity. Then give the allocator a moment to return pages.
            let deadline = Instant::now() + after + HIBERNATE_SLACK;
            while engine.running_flows() > 0 && Instant::now() < deadline {
                tokio::time::sleep(ENQUEUE_POLL).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let hibernated = waiting.saturating_sub(engine.running_flows());
            let rss_after = rss_mb();
            result.hibernated_flows = Some(hibernated);
            result.hibernated_rss_mb = rss_after;
            result.hibernated_rss_per_flow_kb = per_flow_kb(rss_after, baseline, waiting);
        }
        Ok::<_, anyhow::Error>(result)
    }
    .await;
    engine.shutdown(ENGINE_STOP).await;
    drop(engine);
    scope.finish().await;
    result
}
