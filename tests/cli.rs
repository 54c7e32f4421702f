//! The `dagflow` binary as a user runs it: real `serve` and `worker` processes on the
//! test Redis (a unique key prefix per test) and a temp data dir, driven by the
//! client commands and by HTTP. Every child process is killed when its guard drops,
//! so a failing test leaves nothing running.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use dagflow::engine::testing;
use serde_json::{json, Value};

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_dagflow");
/// Longest a server may take to start listening (the machine is busy in CI).
const START: Duration = Duration::from_secs(30);
/// Longest a flow or a command may take.
const WAIT: Duration = Duration::from_secs(60);
/// Pause between two looks at something we wait for.
const POLL: Duration = Duration::from_millis(50);

/// The image pipeline of the README.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/image-pipeline.json")
}

/// A running `dagflow` process, killed (SIGKILL) when dropped; its stderr is kept,
/// and shown when the test fails.
struct Proc {
    /// What it runs, for messages.
    name: String,
    /// The process.
    child: Child,
    /// Every stderr line so far.
    log: Arc<Mutex<Vec<String>>>,
    /// Each stderr line as it arrives.
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let kept = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Proc {
            name: args.join(" "),
            child,
            log,
            lines,
        }
    }

    /// Waits for the JSON log line with this message and returns it.
    fn wait_for_log(&mut self, message: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v["fields"]["message"] == message {
                            return v;
                        }
                    }
                }
                Err(_) => panic!(
                    "`{}` did not log '{message}' in {timeout:?}; exit: {:?}; log:\n{}",
                    self.name,
                    self.child.try_wait(),
                    self.log()
                ),
            }
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "`{}` did not exit in {timeout:?}; log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of `{}` ---\n{}", self.name, self.log());
        }
    }
}

/// The binary with a clean environment: no `DAGFLOW_*` of the developer's shell
/// leaks into the test.
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DAGFLOW_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG").args(args);
    cmd
}

/// What a finished client command left.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs a client command to its end (with a deadline).
fn run(args: &[&str]) -> Output {
    let child = command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(output) => {
            let output = output.unwrap();
            Output {
                status: output.status,
                stdout: String::from_utf8(output.stdout).unwrap(),
                stderr: String::from_utf8(output.stderr).unwrap(),
            }
        }
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("`dagflow {}` did not finish in {WAIT:?}", args.join(" "));
        }
    }
}

/// One test's deployment: its Redis prefix and data dir, shared by the processes it
/// starts.
struct Setup {
    prefix: String,
    data: tempfile::TempDir,
    files: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            prefix: testing::unique_prefix(),
            data: tempfile::tempdir().unwrap(),
            files: tempfile::tempdir().unwrap(),
        }
    }

    fn redis_url(&self) -> &'static str {
        &testing::redis().url
    }

    /// `dagflow serve` on a free port, once it listens.
    fn serve(&self, queues: &str) -> Server {
        let data_dir = self.data.path().to_str().unwrap();
        let mut proc = Proc::spawn(&[
            "serve",
            "--log-json",
            "--bind",
            "127.0.0.1:0",
            "--redis-url",
            self.redis_url(),
            "--prefix",
            &self.prefix,
            "--data-dir",
            data_dir,
            "--queues",
            queues,
            "--shutdown-timeout",
            "10s",
        ]);
        let line = proc.wait_for_log("dagflow is listening", START);
        let addr = line["fields"]["addr"].as_str().unwrap().to_owned();
        Server {
            proc,
            url: format!("http://{addr}"),
        }
    }

    /// `dagflow worker` for `queues`, once it runs.
    fn worker(&self, queues: &str) -> Proc {
        let mut proc = Proc::spawn(&[
            "worker",
            "--log-json",
            "--redis-url",
            self.redis_url(),
            "--prefix",
            &self.prefix,
            "--queues",
            queues,
        ]);
        proc.wait_for_log("dagflow worker is running", START);
        proc
    }

    /// Writes a flow spec to a file and returns its path.
    fn flow_file(&self, name: &str, spec: &Value) -> String {
        let path = self.files.path().join(format!("{name}.json"));
        std::fs::write(&path, spec.to_string()).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

/// A running `dagflow serve`.
struct Server {
    proc: Proc,
    /// `http://127.0.0.1:{port}`.
    url: String,
}

impl Server {
    async fn get(&self, path: &str) -> (u16, Value) {
        let response = reqwest::get(format!("{}{path}", self.url)).await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn flow(&self, id: &str) -> Value {
        let (status, flow) = self.get(&format!("/flows/{id}")).await;
        assert_eq!(status, 200, "GET /flows/{id}: {flow}");
        flow
    }

    /// Polls the flow until `done` says so.
    async fn wait_flow(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let flow = self.flow(id).await;
            if done(&flow) {
                return flow;
            }
            assert!(
                Instant::now() < deadline,
                "flow {id} never got {what}: {flow:#}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `dagflow submit FILE` against this server; the flow id.
    fn submit(&self, file: &str) -> String {
        let out = run(&["submit", file, "--server", &self.url]);
        assert!(out.status.success(), "submit failed: {}", out.stderr);
        out.stdout.trim().to_owned()
    }
}

fn node<'a>(flow: &'a Value, name: &str) -> &'a Value {
    flow["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {flow:#}"))
}

/// stdout of `submit --wait`: the flow id on the first line, the flow after it.
fn split_wait_output(stdout: &str) -> (String, Value) {
    let (id, rest) = stdout.split_once('\n').unwrap();
    (id.trim().to_owned(), serde_json::from_str(rest).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pipeline_runs_from_the_cli() {
    let setup = Setup::new();
    let server = setup.serve("default");
    let example = example();
    let example = example.to_str().unwrap();

    let out = run(&["submit", example, "--wait", "--server", &server.url]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    let (id, flow) = split_wait_output(&out.stdout);
    assert_eq!(flow["id"], id.as_str());
    assert_eq!(flow["status"], "completed", "{flow:#}");
    // echo returns its input: save-to-s3's result holds both parents' results, and
    // through them the download's data.
    let save = node(&flow, "save-to-s3");
    let parents = save["result"]["parents"].as_object().unwrap();
    let mut names: Vec<&String> = parents.keys().collect();
    names.sort();
    assert_eq!(names, ["add-watermark", "resize-image"]);
    assert_eq!(
        parents["resize-image"]["parents"]["download-image"]["data"]["url"],
        "https://example.com/a.png"
    );
    let (status, saved) = server.get(&format!("/flows/{id}/nodes/save-to-s3")).await;
    assert_eq!(status, 200);
    assert_eq!(saved["input"]["data"], json!({"bucket": "images"}));
    assert!(saved["input"]["parents"]["add-watermark"].is_object());

    // The same idempotency key gives the same flow.
    let first = run(&[
        "submit",
        example,
        "--idempotency-key",
        "k1",
        "--server",
        &server.url,
    ]);
    let again = run(&[
        "submit",
        example,
        "--idempotency-key",
        "k1",
        "--server",
        &server.url,
    ]);
    assert!(first.status.success(), "{}", first.stderr);
    assert_eq!(first.stdout, again.stdout);

    // An invalid flow: exit 3, and the problems on one line.
    let bad = setup.flow_file(
        "cycle",
        &json!({"nodes": [{"name": "a", "parents": ["b"]}, {"name": "b", "parents": ["a"]}]}),
    );
    let out = run(&["submit", &bad, "--server", &server.url]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stderr.contains("422"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_watch_print_the_flow_and_its_events() {
    let setup = Setup::new();
    let server = setup.serve("default");
    // Long enough first node that `watch` subscribes while the flow runs.
    let file = setup.flow_file(
        "slow",
        &json!({"name": "slow", "nodes": [
            {"name": "a", "handler": "sleep", "data": {"ms": 2500}},
            {"name": "b", "handler": "echo", "parents": ["a"]}
        ]}),
    );
    let id = server.submit(&file);

    let out = run(&["watch", &id, "--server", &server.url]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "snapshot", "{lines:#?}");
    assert_eq!(lines[0]["flow"]["status"], "running", "{lines:#?}");
    let mut seq = lines[0]["flow"]["seq"].as_u64().unwrap();
    for event in &lines[1..] {
        assert_eq!(event["type"], "flow:updated", "{event}");
        assert_eq!(event["flowId"], id.as_str());
        let next = event["seq"].as_u64().unwrap();
        assert_eq!(
            next,
            seq + 1,
            "events follow the snapshot without a gap: {lines:#?}"
        );
        seq = next;
    }
    let last = lines.last().unwrap();
    assert!(last.get("node").is_none(), "{last}");
    assert_eq!(last["status"], "completed");
    assert!(
        lines
            .iter()
            .any(|l| l["node"] == "b" && l["status"] == "completed"),
        "{lines:#?}"
    );

    let out = run(&["status", &id, "--server", &server.url]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stdout.lines().count() > 10,
        "pretty JSON: {}",
        out.stdout
    );
    let flow: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(flow["id"], id.as_str());
    assert_eq!(flow["status"], "completed");
    assert_eq!(flow["seq"].as_u64(), Some(seq));
    assert_eq!(node(&flow, "a")["result"], json!({"sleptMs": 2500}));

    // A finished flow: watch prints its snapshot and ends.
    let out = run(&["watch", &id, "--server", &server.url]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);

    // An unknown flow is an error.
    let out = run(&[
        "status",
        "0190d0c0-0000-7000-8000-000000000000",
        "--server",
        &server.url,
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stderr.contains("404"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_worker_serves_a_queue_the_server_does_not() {
    let setup = Setup::new();
    let server = setup.serve("default");
    let mut worker = setup.worker("other=2");
    let file = setup.flow_file(
        "split",
        &json!({"name": "split", "nodes": [
            {"name": "a", "handler": "echo", "data": {"n": 1}},
            {"name": "b", "handler": "echo", "queue": "other", "parents": ["a"], "data": {"n": 2}},
            {"name": "c", "handler": "echo", "parents": ["b"]}
        ]}),
    );
    let out = run(&["submit", &file, "--wait", "--server", &server.url]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    let (_, flow) = split_wait_output(&out.stdout);
    assert_eq!(node(&flow, "b")["queue"], "other");
    assert_eq!(
        node(&flow, "b")["result"]["parents"]["a"]["data"],
        json!({"n": 1})
    );
    assert_eq!(
        node(&flow, "c")["result"]["parents"]["b"]["data"],
        json!({"n": 2})
    );

    worker.signal("TERM");
    let status = worker.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "log:\n{}", worker.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_resumes_its_flows_from_the_data_dir() {
    let setup = Setup::new();
    let server = setup.serve("default");
    let done = setup.flow_file(
        "done",
        &json!({"nodes": [{"name": "only", "handler": "echo", "data": 7}]}),
    );
    let out = run(&["submit", &done, "--wait", "--server", &server.url]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    let (done_id, _) = split_wait_output(&out.stdout);

    let file = setup.flow_file(
        "long",
        &json!({"name": "long", "nodes": [
            {"name": "a", "handler": "echo", "data": {"n": 1}},
            {"name": "b", "handler": "sleep", "parents": ["a"], "data": {"ms": 1500}},
            {"name": "c", "handler": "echo", "parents": ["b"]}
        ]}),
    );
    let id = server.submit(&file);
    server
        .wait_flow(&id, "b running", |f| node(f, "b")["status"] == "active")
        .await;
    let Server { mut proc, .. } = server;
    proc.signal("KILL");
    proc.wait_exit(WAIT);
    drop(proc);

    let server = setup.serve("default");
    let flow = server
        .wait_flow(&id, "completed", |f| f["status"] == "completed")
        .await;
    assert_eq!(node(&flow, "b")["result"], json!({"sleptMs": 1500}));
    assert_eq!(
        node(&flow, "c")["result"]["parents"]["b"],
        json!({"sleptMs": 1500})
    );
    let earlier = server.flow(&done_id).await;
    assert_eq!(earlier["status"], "completed");
    assert_eq!(node(&earlier, "only")["result"]["data"], json!(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly() {
    let setup = Setup::new();
    let mut server = setup.serve("default");
    // A job running when the signal comes gets to finish.
    let file = setup.flow_file(
        "sleepy",
        &json!({"nodes": [{"name": "a", "handler": "sleep", "data": {"ms": 500}}]}),
    );
    let id = server.submit(&file);
    server
        .wait_flow(&id, "a running", |f| node(f, "a")["status"] == "active")
        .await;
    server.proc.signal("TERM");
    let status = server.proc.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "log:\n{}", server.proc.log());
    server.proc.wait_for_log("dagflow stopped", START);

    // The finished job was flushed before the exit.
    let server = setup.serve("default");
    let flow = server.flow(&id).await;
    assert_eq!(flow["status"], "completed", "{flow:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_failures_are_one_clear_line() {
    let setup = Setup::new();
    let data_dir = setup.data.path().to_str().unwrap().to_owned();

    // Nothing listens on port 1.
    let out = run(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--redis-url",
        "redis://127.0.0.1:1",
        "--data-dir",
        &data_dir,
    ]);
    assert_eq!(out.status.code(), Some(3));
    let last = out.stderr.trim().lines().last().unwrap();
    assert!(
        last.starts_with("dagflow: cannot reach redis at redis://127.0.0.1:1"),
        "{}",
        out.stderr
    );

    // One server per data dir.
    let _server = setup.serve("default");
    let out = run(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--redis-url",
        setup.redis_url(),
        "--prefix",
        &setup.prefix,
        "--data-dir",
        &data_dir,
    ]);
    assert_eq!(out.status.code(), Some(3));
    let last = out.stderr.trim().lines().last().unwrap();
    assert!(
        last.contains("is locked by another dagflow process"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_and_rerun_drive_the_run_time_example_from_the_cli() {
    let setup = Setup::new();
    let server = setup.serve("default");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/crawl-review.json");
    let id = server.submit(file.to_str().unwrap());
    let status = |id: &str| -> Value {
        let out = run(&["status", id, "--server", &server.url]);
        assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    };
    let deadline = Instant::now() + WAIT;
    while node(&status(&id), "approve")["status"] != "waiting" {
        assert!(Instant::now() < deadline, "approve never waited");
        std::thread::sleep(POLL);
    }
    let flow = status(&id);
    assert_eq!(node(&flow, "resize")["map"]["total"], 3);
    assert_eq!(node(&flow, "no-report")["status"], "skipped");

    let out = run(&[
        "signal",
        &id,
        "approve",
        r#"{"by": "ann"}"#,
        "--server",
        &server.url,
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    let approve: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(approve["status"], "completed");
    assert_eq!(approve["result"], json!({"by": "ann"}));

    let deadline = Instant::now() + WAIT;
    while status(&id)["status"] != "completed" {
        assert!(Instant::now() < deadline, "the flow never completed");
        std::thread::sleep(POLL);
    }
    // A second signal: the node is done, a 409 and exit 3.
    let out = run(&["signal", &id, "approve", "1", "--server", &server.url]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stderr.contains("409"), "{}", out.stderr);
    // A payload that is not JSON never leaves the CLI.
    let out = run(&["signal", &id, "approve", "yes", "--server", &server.url]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stderr.contains("not JSON"), "{}", out.stderr);

    let out = run(&["rerun", &id, "resize", "--server", &server.url]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    let flow: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(flow["status"], "running");
    // The re-run reaches approve again, which waits for a new signal.
    let deadline = Instant::now() + WAIT;
    loop {
        let flow = status(&id);
        let approve = node(&flow, "approve");
        if approve["status"] == "waiting" {
            assert_eq!(approve["attempt"], 2);
            assert_eq!(node(&flow, "resize")["attempt"], 2);
            assert_eq!(node(&flow, "crawl")["attempt"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "approve never waited again");
        std::thread::sleep(POLL);
    }
}
