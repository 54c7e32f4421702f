//! Slow and hostile WebSocket clients against a real server: a hundred clients on
//! `"*"`, thirty of which never read and five of which only write, while a thousand
//! flows run. The engine must not wait for any of them (flows finish at the
//! speed of a run without clients), the server's memory must stay bounded, and a
//! client that stopped reading and resumes must be told it lagged and get a fresh
//! snapshot. Also the connection and subscription limits and their errors.
//!
//! The server runs in this process, so its memory is this process's `VmRSS`.
//! `DAGFLOW_SOAK=1` runs 5,000 flows instead of 1,000.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dagflow::engine::{handler_fn, Engine, FlowId, Handler, JobContext, JobError};
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// WebSocket clients on `"*"` during the loaded run.
const CLIENTS: usize = 100;
/// Of those, clients that never read a byte (one of them is the lag probe).
const NEVER_READING: usize = 30;
/// Of those, clients that only write (subscribe and junk frames), never read.
const FLOODERS: usize = 5;
/// The engine's event feed in these tests. Small, so that a client that stops
/// reading lags within a CI-sized run (the default, 16,384, needs thousands of
/// flows); the readers must keep up with it all the same.
const EVENT_CAPACITY: usize = 1024;
/// Most a loaded run may take relative to the same run with the reading clients
/// alone (timing noise on a shared 2-core machine, not a cost of the clients).
const SLOWDOWN_BOUND: f64 = 1.5;
/// Most the process's resident memory may grow under the clients.
const RSS_GROWTH_BOUND_MB: u64 = 200;
/// Held by every test of this file, so that the timed runs of the first do not
/// share the two cores with the others' servers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// The probe resumes reading at the latest this long after it stalled, so that the
/// server (which drops a client that has taken nothing for 60 s) still serves it.
const PROBE_RESUME_AT_LATEST: Duration = Duration::from_secs(40);
/// Events of the probe's flow (failures of its children), and the size of each: 12 MB in all
/// (the flow's snapshot holds every child's error, and the test's WebSocket client takes
/// messages of at most 16 MiB),
/// against 4 MB of socket buffer (Linux's `tcp_wmem` maximum), 256 queued messages
/// and a feed of [`EVENT_CAPACITY`] events.
const PROBE_EVENTS: usize = 3000;
/// See [`PROBE_EVENTS`].
const PROBE_EVENT_BYTES: usize = 4 * 1024;

/// Flows per run: 1,000, or 5,000 with `DAGFLOW_SOAK=1`.
fn flow_count() -> usize {
    if std::env::var("DAGFLOW_SOAK").is_ok_and(|v| v == "1") {
        5000
    } else {
        1000
    }
}

/// This process's resident memory in MiB, from `/proc/self/status`.
fn rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

/// Name of the threads that run the working clients.
const CLIENT_THREAD: &str = "ws-client";

/// CPU time of this process in ms, split between the client threads and the rest
/// (the server, and the test's own bookkeeping).
#[derive(Clone, Copy)]
struct Cpu {
    server: u64,
    clients: u64,
}

impl Cpu {
    fn since(self, start: Cpu) -> Cpu {
        Cpu {
            server: self.server - start.server,
            clients: self.clients - start.clients,
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ms server, {} ms clients", self.server, self.clients)
    }
}

/// Sums `utime + stime` of every thread of this process (`/proc/self/task`).
/// Threads that ended are left out, so only differences between runtimes that
/// stay up mean anything.
fn cpu_ms() -> Cpu {
    // Linux reports these in USER_HZ ticks, 100 a second on every architecture.
    const TICK_MS: u64 = 10;
    let mut cpu = Cpu {
        server: 0,
        clients: 0,
    };
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // The name is in parentheses and may hold spaces; the fields follow it.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        if name.starts_with(CLIENT_THREAD) {
            cpu.clients += ticks * TICK_MS;
        } else {
            cpu.server += ticks * TICK_MS;
        }
    }
    cpu
}

/// A small flow: a no-op and an echo that gets its result.
fn small_flow(i: usize) -> Value {
    json!({"name": format!("small-{i}"), "nodes": [
        {"name": "a", "handler": "noop"},
        {"name": "b", "handler": "echo", "parents": ["a"], "data": {"i": i}}
    ]})
}

/// Submits `n` small flows over HTTP, eight at a time, and waits until every one
/// completed, watching the engine's own feed. Returns the ids and the time taken.
async fn run_flows(api: &Api, engine: &Engine, n: usize) -> (HashSet<String>, Duration) {
    let mut events = engine.events();
    let start = Instant::now();
    let ids: Vec<String> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move { api.create_flow(&small_flow(i)).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let ids: HashSet<String> = ids.into_iter().collect();
    assert_eq!(ids.len(), n);
    let mut pending = ids.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("{} of {n} flows still running after 300 s", pending.len()),
            Ok(Ok(event)) => {
                if event.is_flow_end() && pending.remove(&event.flow_id.to_string()) {
                    assert_eq!(event.status, "completed", "{event:?}");
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                // This waiter fell behind: look the rest up.
                let mut ended = Vec::new();
                for id in &pending {
                    let view = engine.get(id.parse::<FlowId>().unwrap()).await.unwrap();
                    if view.status.is_terminal() {
                        ended.push(id.clone());
                    }
                }
                for id in ended {
                    pending.remove(&id);
                }
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => panic!("the engine stopped"),
        }
    }
    (ids, start.elapsed())
}

/// Connects a client whose socket takes in little, so that a client that does not
/// read backs up at once instead of after megabytes of kernel buffer.
async fn connect_small_window(server: &TestServer) -> WsClient {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let request = server.ws_url.as_str().into_client_request().unwrap();
    let (stream, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    WsClient { stream }
}

/// Connects as soon as the server has a place, polling until [`WAIT`] passes.
async fn connect_when_free(url: &str) -> WsClient {
    let deadline = Instant::now() + WAIT;
    loop {
        match WsClient::connect(url, None).await {
            Ok(client) => return client,
            Err(e) if Instant::now() >= deadline => panic!("no place freed up: {e}"),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// The next message that is not a `flow:updated` (which a `"*"` subscriber gets
/// at any time): the answer to what the client last sent.
async fn reply(ws: &mut WsClient) -> Value {
    loop {
        let msg = ws.recv_json().await;
        if msg["type"] != "flow:updated" {
            return msg;
        }
    }
}

/// What a reading client saw.
#[derive(Default)]
struct ReaderStats {
    messages: usize,
    lagged: usize,
    /// Flows it saw complete.
    completed: HashSet<String>,
}

/// Reads every message until `stop`; `done` is set once it saw `expected` flows
/// complete, or lagged (after which it cannot expect to see them all).
async fn read_all(
    mut ws: WsClient,
    expected: usize,
    done: Arc<AtomicBool>,
    stop: CancellationToken,
) -> ReaderStats {
    let mut stats = ReaderStats::default();
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => return stats,
            frame = ws.stream.next() => frame,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("a reading client got {other:?}"),
        };
        stats.messages += 1;
        // Node events are most of the traffic and matter to no check here; parsing
        // each one would bill the server's CPU for the test's own work.
        if text.as_str().contains(r#""node":"#) {
            continue;
        }
        let msg: Value = serde_json::from_str(text.as_str()).unwrap();
        match msg["type"].as_str().unwrap() {
            "subscribed" => {}
            "lagged" => stats.lagged += 1,
            "flow:updated" => {
                if msg.get("node").is_none() && msg["status"] == "completed" {
                    stats
                        .completed
                        .insert(msg["flowId"].as_str().unwrap().to_owned());
                }
            }
            other => panic!("a '*' subscriber got {other}: {msg}"),
        }
        if stats.lagged > 0 || stats.completed.len() >= expected {
            done.store(true, Ordering::Relaxed);
        }
    }
}

/// Follows one flow's messages: each `flow:updated` continues the last snapshot or
/// event without gap or repeat, and `lagged` is followed at once by a snapshot.
#[derive(Default)]
struct FlowTrack {
    next_seq: Option<u64>,
    snapshots: usize,
    status: Option<String>,
}

impl FlowTrack {
    fn snapshot(&mut self, flow: &Value) {
        self.next_seq = Some(flow["seq"].as_u64().unwrap() + 1);
        self.status = flow["status"].as_str().map(str::to_owned);
        self.snapshots += 1;
    }

    fn event(&mut self, msg: &Value) {
        let seq = msg["seq"].as_u64().unwrap();
        assert_eq!(Some(seq), self.next_seq, "gap or repeat at {msg}");
        self.next_seq = Some(seq + 1);
        if msg.get("node").is_none() {
            self.status = msg["status"].as_str().map(str::to_owned);
        }
    }
}

/// The clients that read everything, on the client runtime.
struct Readers {
    tasks: Vec<tokio::task::JoinHandle<ReaderStats>>,
    done: Vec<Arc<AtomicBool>>,
}

impl Readers {
    /// Connects `count` clients on `"*"`, each expecting `expected` flows to end.
    async fn start(
        clients: &tokio::runtime::Runtime,
        url: &str,
        count: usize,
        expected: usize,
        stop: &CancellationToken,
    ) -> Readers {
        let mut readers = Readers {
            tasks: Vec::new(),
            done: Vec::new(),
        };
        for _ in 0..count {
            let done = Arc::new(AtomicBool::new(false));
            readers.done.push(Arc::clone(&done));
            let (url, stop) = (url.to_owned(), stop.clone());
            let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
            readers.tasks.push(clients.spawn(async move {
                let mut ws = WsClient::connect(&url, None).await.unwrap();
                ws.subscribe("*").await;
                assert_eq!(ws.recv_json().await["type"], "subscribed");
                subscribed_tx.send(()).unwrap();
                read_all(ws, expected, done, stop).await
            }));
            subscribed.await.unwrap();
        }
        readers
    }

    /// Waits until every reader saw the flows `ids` end (or lagged), disconnects
    /// them, and checks that those that never lagged saw every flow complete.
    async fn finish(self, stop: &CancellationToken, ids: &HashSet<String>) {
        eventually("every reader to see every flow end (or lag)", || {
            let all = self.done.iter().all(|d| d.load(Ordering::Relaxed));
            async move { all }
        })
        .await;
        stop.cancel();
        let count = self.tasks.len();
        let mut lagged_readers = 0;
        let mut messages = 0;
        for reader in self.tasks {
            let stats = reader.await.unwrap();
            messages += stats.messages;
            if stats.lagged > 0 {
                lagged_readers += 1;
            } else {
                assert_eq!(
                    &stats.completed, ids,
                    "a reader that never lagged missed flows"
                );
            }
        }
        println!(
            "readers: {count} read {messages} messages; {lagged_readers} lagged, \
             the others saw all {} flows complete",
            ids.len()
        );
    }
}

/// The probe flow's root: quiet until `go` fires, then it completes and releases
/// [`PROBE_EVENTS`] children that each fail with an error of [`PROBE_EVENT_BYTES`]
/// (more than a socket's buffers and the session's queues hold), and one child that
/// runs until cancelled. (Progress values would not do: a worker coalesces a job's
/// progress to one report every 100 ms.)
fn talker(go: CancellationToken) -> Arc<dyn Handler> {
    Arc::new(handler_fn(move |ctx: JobContext| {
        let go = go.clone();
        async move {
            tokio::select! {
                () = go.cancelled() => Ok(json!("go")),
                () = ctx.cancel.cancelled() => Err(JobError::fatal("cancelled")),
            }
        }
    }))
}

/// A probe child: fails at once with a big error, one large event.
fn shouter() -> Arc<dyn Handler> {
    Arc::new(handler_fn(move |_ctx: JobContext| async move {
        Err::<Value, _>(JobError::fatal("x".repeat(PROBE_EVENT_BYTES)))
    }))
}

/// The probe's last child: runs until the flow is cancelled.
fn holder() -> Arc<dyn Handler> {
    Arc::new(handler_fn(move |ctx: JobContext| async move {
        ctx.cancel.cancelled().await;
        Err::<Value, _>(JobError::fatal("cancelled"))
    }))
}

/// The probe flow: `talk`, then [`PROBE_EVENTS`] shouting children and a holder.
fn probe_spec() -> Value {
    let mut nodes = vec![
        json!({"name": "talk", "handler": "talk", "queue": "probe"}),
        json!({"name": "hold", "handler": "hold", "parents": ["talk"]}),
    ];
    for i in 0..PROBE_EVENTS {
        nodes.push(json!({"name": format!("shout-{i}"), "handler": "shout", "queue": "probe", "parents": ["talk"]}));
    }
    json!({"name": "probe", "nodes": nodes, "opts": {"onFailure": "continue"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_thirty_never_reading_do_not_slow_flows_or_grow_memory() {
    let _serial = SERIAL.lock().await;
    let go = CancellationToken::new();
    let server = start_server(ServerOpts {
        // The probe flow runs on its own queue, so that both runs have four workers.
        queues: vec![("default".to_owned(), 4), ("probe".to_owned(), 1)],
        handlers: vec![
            ("talk".to_owned(), talker(go.clone())),
            ("shout".to_owned(), shouter()),
            ("hold".to_owned(), holder()),
        ],
        engine: Some(Box::new(|b| b.event_capacity(EVENT_CAPACITY))),
        ..ServerOpts::default()
    })
    .await;
    let api = server.api();
    let n = flow_count();
    let rss_start = rss_mb();

    // Baseline: the same run with no WebSocket client at all.
    let cpu_start = cpu_ms();
    let (_, baseline) = run_flows(&api, &server.engine, n).await;
    let cpu_baseline = cpu_ms().since(cpu_start);
    println!("baseline: {n} flows in {baseline:?} without clients; CPU {cpu_baseline}");

    // The clients that do work (reading, flooding) run on their own threads, so
    // that the CPU they use can be told apart from the server's.
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(CLIENT_THREAD)
        .enable_all()
        .build()
        .unwrap();

    // The same run with only the clients that read: the speed the slow and hostile
    // clients are measured against. Sending every event to 65 clients costs CPU on
    // the same two cores whoever the other clients are; the claim is that the
    // clients that do not read add nothing to that.
    let readers_count = CLIENTS - NEVER_READING - FLOODERS;
    let stop = CancellationToken::new();
    let readers = Readers::start(&clients, &server.ws_url, readers_count, n, &stop).await;
    let cpu_start = cpu_ms();
    let (ids, reading) = run_flows(&api, &server.engine, n).await;
    let cpu_reading = cpu_ms().since(cpu_start);
    println!(
        "readers only: {n} flows in {reading:?} with {readers_count} reading clients \
         ({:.2}x the baseline); CPU {cpu_reading}",
        reading.as_secs_f64() / baseline.as_secs_f64()
    );
    readers.finish(&stop, &ids).await;

    // The probe's flow: quiet until `go`.
    let probe_flow = api.create_flow(&probe_spec()).await;
    api.wait_for_node(&probe_flow, "talk", "active").await;

    let rss_before = rss_mb();
    let rss_max = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let rss_max = Arc::clone(&rss_max);
        tokio::spawn(async move {
            loop {
                rss_max.fetch_max(rss_mb(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // The never-reading clients subscribe and then never read a byte; the probe
    // also follows one flow, so that it has a snapshot to get after lagging.
    let mut never_reading = Vec::new();
    for _ in 0..NEVER_READING - 1 {
        let mut ws = connect_small_window(&server).await;
        ws.subscribe("*").await;
        never_reading.push(ws);
    }
    let mut probe = connect_small_window(&server).await;
    probe.subscribe(&probe_flow).await;
    probe.subscribe("*").await;
    // A few small flows' worth of events would only sit in their sockets' buffers
    // (up to 4 MB each): the probe flow talks until those, the sessions' queues and
    // the engine's feed are all full, so that these clients are really stalled (and
    // behind the feed) while the flows run.
    let seq_before = api.flow(&probe_flow).await["seq"].as_u64().unwrap();
    let stalled_at = Instant::now();
    go.cancel();
    let talked = seq_before + PROBE_EVENTS as u64;
    // Every shouting child has failed (so none of them runs during the loaded run
    // below, which is timed).
    eventually("the probe flow's events to be published", || {
        let api = api.clone();
        let id = probe_flow.clone();
        async move {
            let flow = api.flow(&id).await;
            let failed = flow["nodes"]
                .as_array()
                .map(|nodes| nodes.iter().filter(|n| n["status"] == "failed").count())
                .unwrap_or(0);
            flow["seq"].as_u64().unwrap() >= talked && failed == PROBE_EVENTS
        }
    })
    .await;
    println!(
        "{NEVER_READING} never-reading clients stalled: {PROBE_EVENTS} events of \
         {PROBE_EVENT_BYTES} bytes sent their way in {:?}",
        stalled_at.elapsed()
    );

    // The probe resumes reading after the run, or earlier on a long (soak) run,
    // since the server drops a client that takes nothing for 60 s.
    let run_over = CancellationToken::new();
    let probe_task = {
        let (run_over, probe_flow) = (run_over.clone(), probe_flow.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = run_over.cancelled() => {}
                () = tokio::time::sleep_until((stalled_at + PROBE_RESUME_AT_LATEST).into()) => {}
            }
            let stalled_for = stalled_at.elapsed();
            // What was queued before it fell behind comes first, then `lagged`, and
            // at once the snapshot of the flow it follows.
            let mut track = FlowTrack::default();
            let mut queued = 0usize;
            loop {
                let msg = probe.recv_json().await;
                match msg["type"].as_str().unwrap() {
                    "lagged" => {
                        let missed = msg["missed"].as_u64().unwrap();
                        assert!(missed > 0, "{msg}");
                        let next = probe.recv_json().await;
                        assert_eq!(next["type"], "snapshot", "after lagged: {next}");
                        assert_eq!(next["flow"]["id"], probe_flow.as_str(), "{next}");
                        assert_eq!(next["flow"]["status"], "running", "{next}");
                        assert!(next["flow"]["seq"].as_u64().unwrap() >= talked, "{next}");
                        track.snapshot(&next["flow"]);
                        println!(
                            "probe: resumed after {stalled_for:?}; {queued} queued messages, \
                             then lagged (missed {missed}), then a snapshot at seq {}",
                            next["flow"]["seq"]
                        );
                        return (probe, track);
                    }
                    "snapshot" => {
                        assert_eq!(track.snapshots, 0, "a second snapshot before lagged: {msg}");
                        track.snapshot(&msg["flow"]);
                    }
                    "flow:updated" if msg["flowId"] == probe_flow.as_str() => track.event(&msg),
                    "flow:updated" | "subscribed" => {}
                    other => panic!("the probe got {other}: {msg}"),
                }
                queued += 1;
            }
        })
    };

    let stop = CancellationToken::new();
    let readers = Readers::start(&clients, &server.ws_url, readers_count, n, &stop).await;
    // The flooders write as fast as the server lets them and never read.
    let flood_frames = Arc::new(AtomicUsize::new(0));
    let mut flooders = Vec::new();
    for i in 0..FLOODERS {
        let mut ws = connect_small_window(&server).await;
        let sent = Arc::clone(&flood_frames);
        flooders.push(clients.spawn(async move {
            for j in 0usize.. {
                let text = match (i + j) % 3 {
                    0 => r#"{"type":"subscribe","flowId":"*"}"#.to_owned(),
                    1 => format!("junk {j} {}", "x".repeat(1000)),
                    _ => format!(r#"{{"type":"subscribe","flowId":"{}"}}"#, FlowId::new()),
                };
                if ws.stream.send(Message::text(text)).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    println!(
        "{CLIENTS} clients on '*': {readers_count} reading, {} stalled, 1 stalled probe, \
         {FLOODERS} flooding; engine feed subscribers: {}",
        NEVER_READING - 1,
        server.engine.subscribers()
    );

    let bound = reading.mul_f64(SLOWDOWN_BOUND).max(Duration::from_secs(3));
    let cpu_start = cpu_ms();
    let (mut ids, mut loaded) = run_flows(&api, &server.engine, n).await;
    if loaded > bound {
        // A run over the bound is run once more with the same clients, and the faster
        // of the two counts: a burst of other work on the machine rarely hits twice,
        // while clients that really slow the flows slow both runs.
        println!("loaded: {n} flows in {loaded:?}, over {bound:?}: once more");
        let (more, again) = run_flows(&api, &server.engine, n).await;
        ids.extend(more);
        loaded = loaded.min(again);
    }
    let cpu_loaded = cpu_ms().since(cpu_start);
    run_over.cancel();
    let rss_during = rss_max.load(Ordering::Relaxed);
    println!(
        "loaded: {n} flows in {loaded:?} with {CLIENTS} clients ({:.2}x the readers-only \
         run, {:.2}x the baseline); CPU {cpu_loaded}",
        loaded.as_secs_f64() / reading.as_secs_f64(),
        loaded.as_secs_f64() / baseline.as_secs_f64()
    );

    readers.finish(&stop, &ids).await;
    for flooder in flooders {
        flooder.abort();
    }
    println!(
        "flooders: {} frames written (the server reads each client's at 100/s; the \
         kernel holds the rest)",
        flood_frames.load(Ordering::Relaxed)
    );
    drop(never_reading);

    // The probe got `lagged` and a snapshot; its flow's events continue from that
    // snapshot, without a gap, to the end.
    let (mut probe, mut track) = tokio::time::timeout(WAIT, probe_task)
        .await
        .expect("the probe never got lagged and a snapshot")
        .unwrap();
    let (status, body) = api.post_empty(&format!("/flows/{probe_flow}/cancel")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    while track.status.as_deref() != Some("cancelled") {
        let msg = probe.recv_json().await;
        match msg["type"].as_str().unwrap() {
            "lagged" => {
                let next = probe.recv_json().await;
                assert_eq!(next["type"], "snapshot", "after lagged: {next}");
                track.snapshot(&next["flow"]);
            }
            "snapshot" => panic!("a snapshot without lagged: {msg}"),
            "flow:updated" if msg["flowId"] == probe_flow.as_str() => track.event(&msg),
            "flow:updated" => {}
            other => panic!("the probe got {other}: {msg}"),
        }
    }
    println!(
        "probe: its flow's events continued from the snapshot without a gap up to \
         cancelled ({} snapshots in all)",
        track.snapshots
    );

    // Memory and speed.
    sampler.abort();
    let rss_max = rss_max.load(Ordering::Relaxed);
    let rss_after = rss_mb();
    println!(
        "RSS: {rss_start} MiB at start, {rss_before} MiB before the clients, \
         {rss_during} MiB at most until the loaded run ended, {rss_max} MiB at most in \
         all, {rss_after} MiB at the end; growth {} MiB",
        rss_max.saturating_sub(rss_before)
    );
    assert!(
        rss_max.saturating_sub(rss_before) < RSS_GROWTH_BOUND_MB,
        "RSS grew from {rss_before} to {rss_max} MiB"
    );
    assert!(
        loaded <= bound,
        "flows ran at {loaded:?} with the slow and hostile clients, {reading:?} with \
         the readers alone"
    );
    let (status, _) = api.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    drop(probe);
    clients.shutdown_background();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_refuses_with_503_and_frees_places() {
    let _serial = SERIAL.lock().await;
    const LIMIT: usize = 5;
    let server = start_server(ServerOpts {
        max_ws_connections: Some(LIMIT),
        ..ServerOpts::default()
    })
    .await;
    let api = server.api();
    let flow = api.create_flow(&single("noop", Value::Null)).await;
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        let mut ws = server.ws().await;
        ws.subscribe("*").await;
        assert_eq!(ws.recv_json().await["type"], "subscribed");
        held.push(ws);
    }

    // Fifty more at once: each is refused before the upgrade, with a JSON reason.
    let attempts: Vec<_> = (0..50)
        .map(|_| {
            let url = server.ws_url.clone();
            tokio::spawn(async move { WsClient::connect(&url, None).await })
        })
        .collect();
    for attempt in attempts {
        match attempt.await.unwrap() {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 503);
                assert!(response.headers().contains_key("retry-after"));
                let body: Value = serde_json::from_slice(response.body().as_deref().unwrap())
                    .expect("the refusal is JSON");
                assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(message.contains(&LIMIT.to_string()), "{message}");
            }
            Err(e) => panic!("refused without a clear answer: {e}"),
            Ok(_) => panic!("a connection over the limit was accepted"),
        }
    }
    println!("connection limit {LIMIT}: 50 more attempts, each 503 too_many_connections");

    // The sessions held meanwhile work as before.
    for ws in &mut held {
        ws.subscribe(&flow).await;
        let msg = reply(ws).await;
        assert_eq!(msg["type"], "snapshot", "{msg}");
    }
    // Closing two frees exactly two places: refused attempts held none.
    for mut ws in held.drain(..2) {
        ws.stream.close(None).await.unwrap();
    }
    let mut reconnected = Vec::new();
    for _ in 0..2 {
        reconnected.push(connect_when_free(&server.ws_url).await);
    }
    match WsClient::connect(&server.ws_url, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        Err(e) => panic!("expected a 503 at the limit again, got {e}"),
        Ok(_) => panic!("a connection over the limit was accepted"),
    }
    println!("closing 2 freed exactly 2 places");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_limit_answers_an_error_and_the_connection_lives_on() {
    let _serial = SERIAL.lock().await;
    const LIMIT: usize = 3;
    let server = start_server(ServerOpts {
        max_subscriptions: Some(LIMIT),
        ..ServerOpts::default()
    })
    .await;
    let api = server.api();
    let running = |i: usize| {
        json!({"name": format!("s{i}"), "nodes": [
            {"name": "wait", "handler": "sleep", "data": {"ms": 60_000}}
        ]})
    };
    let a = api.create_flow(&running(0)).await;
    let b = api.create_flow(&running(1)).await;
    let c = api.create_flow(&running(2)).await;
    let mut ws = server.ws().await;

    ws.subscribe("*").await;
    assert_eq!(ws.recv_json().await["type"], "subscribed");
    // An unknown flow is an error and takes no place.
    ws.subscribe(&FlowId::new().to_string()).await;
    let msg = reply(&mut ws).await;
    assert_eq!(msg["type"], "error", "{msg}");
    assert!(
        msg["message"].as_str().unwrap().contains("not found"),
        "{msg}"
    );
    for id in [&a, &b] {
        ws.subscribe(id).await;
        assert_eq!(reply(&mut ws).await["type"], "snapshot");
    }
    // At the limit: the next one is refused, by name, with the limit in the message.
    ws.subscribe(&c).await;
    let msg = reply(&mut ws).await;
    assert_eq!(msg["type"], "error", "{msg}");
    assert_eq!(msg["flowId"], c.as_str(), "{msg}");
    let message = msg["message"].as_str().unwrap();
    assert!(
        message.contains("too many subscriptions") && message.contains(&LIMIT.to_string()),
        "{message}"
    );
    println!("subscription limit {LIMIT}: the next subscribe got: {message}");
    // Subscribing again to a followed flow is not a new place: a fresh snapshot.
    ws.subscribe(&a).await;
    assert_eq!(reply(&mut ws).await["flow"]["id"], a.as_str());

    // A burst of two hundred more: two hundred errors, and the connection lives on.
    for i in 0..200 {
        let target = if i % 2 == 0 {
            FlowId::new().to_string()
        } else {
            c.clone()
        };
        ws.subscribe(&target).await;
    }
    for _ in 0..200 {
        let msg = reply(&mut ws).await;
        assert_eq!(msg["type"], "error", "{msg}");
        assert!(
            msg["message"]
                .as_str()
                .unwrap()
                .contains("too many subscriptions"),
            "{msg}"
        );
    }
    // Still followed: an event of `a` arrives; a place freed is usable.
    let (status, body) = api.post_empty(&format!("/flows/{a}/cancel")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = ws
        .recv_until(|m| {
            m["type"] == "flow:updated"
                && m["flowId"] == a.as_str()
                && m.get("node").is_none()
                && m["status"] == "cancelled"
        })
        .await;
    assert!(seen.iter().all(|m| m["type"] == "flow:updated"), "{seen:?}");
    ws.send_json(&json!({"type": "unsubscribe", "flowId": b}))
        .await;
    let msg = reply(&mut ws).await;
    assert_eq!(msg["type"], "unsubscribed", "{msg}");
    ws.subscribe(&c).await;
    let msg = reply(&mut ws).await;
    assert_eq!(msg["type"], "snapshot", "{msg}");
    assert_eq!(msg["flow"]["id"], c.as_str());
    println!("after 200 refused subscribes the connection still follows its flows");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_binary_frames_do_not_hurt_the_server() {
    let _serial = SERIAL.lock().await;
    let server = start_server(ServerOpts::default()).await;
    let api = server.api();

    // A binary frame and a text frame that is not JSON: errors, connection lives.
    let mut ws = server.ws().await;
    ws.stream
        .send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    let msg = ws.recv_json().await;
    assert_eq!(msg["type"], "error", "{msg}");
    ws.send_text(&"{".repeat(10_000)).await;
    let msg = ws.recv_json().await;
    assert_eq!(msg["type"], "error", "{msg}");
    ws.subscribe("*").await;
    assert_eq!(ws.recv_json().await["type"], "subscribed");

    // A frame over the 64 KiB limit ends that connection, and only that one.
    let mut big = server.ws().await;
    let start = Instant::now();
    let sent = big
        .stream
        .send(Message::text("x".repeat(1024 * 1024)))
        .await;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match big.stream.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(close))) => return close,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("a 1 MiB frame did not end the connection");
    println!(
        "1 MiB frame: send {:?}, connection ended after {:?} with {end:?}",
        sent.map(|_| "ok"),
        start.elapsed()
    );
    let id = api.create_flow(&single("noop", Value::Null)).await;
    let seen = ws
        .recv_until(|m| {
            m["flowId"] == id.as_str() && m.get("node").is_none() && m["status"] == "completed"
        })
        .await;
    assert!(!seen.is_empty());
    let (status, _) = api.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}
