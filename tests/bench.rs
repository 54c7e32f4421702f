//! Smoke tests of `dagflow bench`: every shape at a tiny size, the open-loop mode,
//! the HTTP mode, and the idle and restart modes (both ways of stopping the first
//! engine), against the test Redis. They check that the benchmark works and that its
//! figures are sane, not how fast anything is.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use dagflow::api::{self, ApiConfig};
use dagflow::bench::{self, BenchArgs, BenchResult};
use dagflow::engine::{testing, Engine};

/// Parses bench flags, pointing at the test Redis.
fn args(flags: &[&str]) -> BenchArgs {
    let url = testing::redis().url.clone();
    let mut all = vec!["bench", "--no-progress", "--redis-url", url.as_str()];
    all.extend_from_slice(flags);
    BenchArgs::try_parse_from(all).unwrap()
}

/// What every run must show: all flows completed, figures present and sane.
fn check(r: &BenchResult, flows: usize, nodes_per_flow: usize) {
    assert_eq!(r.flows_submitted, flows, "{r:?}");
    assert_eq!(r.flows_completed, flows, "{r:?}");
    assert_eq!((r.flows_failed, r.create_errors), (0, 0), "{r:?}");
    assert!(!r.timed_out, "{r:?}");
    assert_eq!(r.nodes_per_flow, nodes_per_flow, "{r:?}");
    assert_eq!(r.nodes_total, flows * nodes_per_flow, "{r:?}");
    assert!(
        r.wall_s > 0.0 && r.nodes_per_s > 0.0 && r.flows_per_s > 0.0,
        "{r:?}"
    );
    assert_eq!(r.events_lagged, 0, "{r:?}");
    // One flow latency per flow; one edge latency per node that has parents.
    assert_eq!(r.flow_latency_ms.samples, flows, "{r:?}");
    assert_eq!(r.create_latency_ms.samples, flows, "{r:?}");
    for p in [r.flow_latency_ms, r.edge_latency_ms, r.create_latency_ms] {
        assert!(p.p50 >= 0.0 && p.p50 <= p.p99 && p.p99 <= p.max, "{r:?}");
    }
    assert!(r.flow_latency_ms.p50 >= r.edge_latency_ms.p50, "{r:?}");
    assert!(r.redis_cmds_per_node.is_some_and(|c| c > 0.0), "{r:?}");
    assert!(!r.redis_cmds_by_name.is_empty(), "{r:?}");
    // CPU time comes in 10 ms ticks: a tiny run may show none.
    assert!(r.cpu_us_per_node.process.is_some_and(|c| c >= 0.0), "{r:?}");
    assert!(r.cpu_us_per_node.redis.is_some_and(|c| c >= 0.0), "{r:?}");
    assert!(r.background_cpu_cores.is_some_and(|c| c >= 0.0), "{r:?}");
    // The JSON line has the fields the issue names.
    let json = serde_json::to_value(r).unwrap();
    for field in [
        "shape",
        "parameters",
        "nodes_total",
        "wall_s",
        "nodes_per_s",
        "flows_per_s",
        "flow_latency_ms",
        "edge_latency_ms",
        "peak_rss_mb",
        "redis_cmds_per_node",
    ] {
        assert!(json.get(field).is_some(), "no {field} in {json}");
    }
    assert!(json["flow_latency_ms"].get("p99").is_some());
}

/// Runs once embedded and checks the figures and that no key is left behind.
async fn embedded(flags: &[&str], flows: usize, nodes_per_flow: usize, edges_per_node: usize) {
    let r = bench::run_one(&args(flags), 1).await.unwrap();
    check(&r, flows, nodes_per_flow);
    assert_eq!(r.edge_latency_ms.samples, flows * edges_per_node, "{r:?}");
    assert!(r.peak_rss_mb.is_some_and(|mb| mb > 1.0), "{r:?}");
    let prefix = r.prefix.as_deref().unwrap();
    let left = bench::count_keys(&testing::redis().url, prefix)
        .await
        .unwrap();
    assert_eq!(left, 0, "keys of {prefix} left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain() {
    embedded(&["chain", "--depth", "4", "--flows", "5"], 5, 4, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond() {
    embedded(&["diamond", "--width", "3", "--flows", "5"], 5, 5, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide() {
    embedded(&["wide", "--width", "20", "--flows", "2"], 2, 22, 21).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanin() {
    embedded(&["fanin", "--width", "3", "--flows", "5"], 5, 4, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layered() {
    // Three layers of three: the six nodes past the first layer each start once.
    embedded(
        &["layered", "--layers", "3", "--width", "3", "--flows", "5"],
        5,
        9,
        6,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_rate() {
    let a = args(&[
        "diamond",
        "--width",
        "3",
        "--rate",
        "20",
        "--duration",
        "0.5",
    ]);
    let r = bench::run_one(&a, 1).await.unwrap();
    check(&r, 10, 5);
    assert_eq!(r.parameters.mode, "rate");
    // Ten flows 50 ms apart take at least 450 ms to submit.
    assert!(r.wall_s >= 0.45, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http() {
    let url = testing::redis().url.clone();
    let data = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .redis_url(url.clone())
        .prefix(testing::unique_prefix())
        .data_dir(data.path())
        .queue("default", 4)
        .handler("noop", dagflow::handlers::Noop)
        .build()
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (local, server) = api::serve(engine.clone(), ApiConfig::default(), addr, async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let base = format!("http://{local}");
    let a = args(&[
        "diamond",
        "--width",
        "3",
        "--flows",
        "5",
        "--over-http",
        &base,
    ]);
    let r = bench::run_one(&a, 1).await.unwrap();
    check(&r, 5, 5);
    assert_eq!(r.parameters.over_http.as_deref(), Some(base.as_str()));
    assert_eq!(r.peak_rss_mb, None);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    engine.shutdown(Duration::from_secs(5)).await;
}

/// What an idle or restart run must show about the creation of its flows.
fn check_created(r: &BenchResult, mode: &str, flows: usize, nodes_per_flow: usize, roots: u64) {
    assert_eq!(r.parameters.mode, mode, "{r:?}");
    assert_eq!(r.failure(), None, "{r:?}");
    assert_eq!(r.flows_submitted, flows, "{r:?}");
    assert_eq!(r.create_errors, 0, "{r:?}");
    assert!(!r.timed_out, "{r:?}");
    assert_eq!(r.nodes_per_flow, nodes_per_flow, "{r:?}");
    // Read from Redis: one job per root of every flow, no more.
    assert_eq!(r.queued_jobs, Some(roots * flows as u64), "{r:?}");
    assert!(
        r.wall_s > 0.0 && r.flows_per_s > 0.0 && r.creates_per_s > 0.0,
        "{r:?}"
    );
    assert_eq!(r.create_latency_ms.samples, flows, "{r:?}");
    assert!(r.redis_cmds_per_node.is_some_and(|c| c > 0.0), "{r:?}");
    assert!(
        r.redis_mem_mb.is_some() && r.redis_mem_per_flow_kb.is_some(),
        "{r:?}"
    );
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["parameters"]["mode"], mode, "{json}");
}

/// The run's keys are gone.
async fn no_keys_left(r: &BenchResult) {
    let prefix = r.prefix.as_deref().unwrap();
    let left = bench::count_keys(&testing::redis().url, prefix)
        .await
        .unwrap();
    assert_eq!(left, 0, "keys of {prefix} left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flows_wait_and_their_memory_is_read() {
    // The default idle shape: a diamond of width 8, 10 nodes, one root.
    let r = bench::run_one(
        &args(&["--idle", "--flows", "50", "--hibernate-after", "0.5"]),
        1,
    )
    .await
    .unwrap();
    check_created(&r, "idle", 50, 10, 1);
    assert_eq!(r.parameters.width, Some(8), "{r:?}");
    // Every flow still waits: no node ran. Then every one hibernated.
    assert_eq!(r.idle_flows, Some(50), "{r:?}");
    assert_eq!(r.hibernated_flows, Some(50), "{r:?}");
    assert!(r.hibernated_rss_mb.unwrap() > 1.0, "{r:?}");
    assert_eq!((r.flows_completed, r.flows_failed), (0, 0), "{r:?}");
    let (rss, baseline, peak) = (
        r.rss_mb.unwrap(),
        r.rss_baseline_mb.unwrap(),
        r.peak_rss_mb.unwrap(),
    );
    assert!(baseline > 1.0 && rss > 1.0 && peak >= rss, "{r:?}");
    let per_flow = r.rss_per_flow_kb.unwrap();
    assert_eq!(
        per_flow,
        ((rss - baseline) * 1024.0 / 50.0 * 1000.0).round() / 1000.0
    );
    no_keys_left(&r).await;

    // Three roots per flow: three jobs per flow in the queue.
    let r = bench::run_one(
        &args(&[
            "fanin",
            "--width",
            "3",
            "--idle",
            "--flows",
            "20",
            "--hibernate-after",
            "0",
        ]),
        1,
    )
    .await
    .unwrap();
    check_created(&r, "idle", 20, 4, 3);
    assert_eq!(r.idle_flows, Some(20), "{r:?}");
    assert_eq!(
        (r.awake_flows, r.hibernated_flows),
        (Some(20), None),
        "{r:?}"
    );
    no_keys_left(&r).await;
}

/// A restart run resumed every flow, and every flow then completed.
fn check_restart(r: &BenchResult, stop: &str, flows: usize) {
    assert_eq!(r.parameters.stop.as_deref(), Some(stop), "{r:?}");
    assert_eq!(r.resumed_flows, Some(flows), "{r:?}");
    assert_eq!((r.flows_completed, r.flows_failed), (flows, 0), "{r:?}");
    let (build, restart) = (r.restart_build_s.unwrap(), r.restart_s.unwrap());
    assert!(build > 0.0 && restart >= build, "{r:?}");
    assert!(r.resumed_complete_s.is_some_and(|s| s > 0.0), "{r:?}");
    assert!(r.rss_mb.is_some_and(|mb| mb > 1.0), "{r:?}");
    assert!(r.rss_baseline_mb.is_some_and(|mb| mb > 1.0), "{r:?}");
    assert_eq!(r.idle_flows, None, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_a_kill_resumes_every_flow() {
    let bin = env!("CARGO_BIN_EXE_dagflow");
    let r = bench::run_one(
        &args(&["--restart", "--flows", "50", "--server-bin", bin]),
        1,
    )
    .await
    .unwrap();
    check_created(&r, "restart", 50, 10, 1);
    check_restart(&r, "kill", 50);
    no_keys_left(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_a_graceful_stop_resumes_every_flow() {
    let r = bench::run_one(
        &args(&[
            "chain",
            "--depth",
            "3",
            "--restart",
            "--stop",
            "graceful",
            "--flows",
            "50",
        ]),
        1,
    )
    .await
    .unwrap();
    check_created(&r, "restart", 50, 3, 1);
    check_restart(&r, "graceful", 50);
    no_keys_left(&r).await;
}
