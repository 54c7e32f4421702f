//! Test support shared by the tests of both crates: one real Redis per test process and
//! a unique key prefix per test. Not part of the engine's API.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long to wait for a started redis-server to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many ports to try if a started server does not come up (another process may take
/// the free port between our probe and the server's bind).
const START_ATTEMPTS: usize = 3;

/// The Redis the tests of this process use.
pub struct TestRedis {
    /// Where to connect: `redis://127.0.0.1:{port}`.
    pub url: String,
    /// The shell that owns redis-server. Its stdin is a pipe held open by this static;
    /// when the test process exits, however it exits, the pipe closes and the shell
    /// kills redis-server, so no server outlives its tests.
    _guard: Option<Mutex<Child>>,
}

/// The Redis shared by all tests of this process: `REDIS_URL` if set, else a
/// redis-server started on a free port the first time this is called.
///
/// # Panics
///
/// If no redis-server can be started; install it (`apt-get install redis-server`) or
/// set `REDIS_URL`.
pub fn redis() -> &'static TestRedis {
    static REDIS: OnceLock<TestRedis> = OnceLock::new();
    REDIS.get_or_init(|| match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => TestRedis { url, _guard: None },
        _ => start(),
    })
}

/// A key prefix no other test uses: `t-{uuid}`.
pub fn unique_prefix() -> String {
    format!("t-{}", uuid::Uuid::now_v7().simple())
}

/// Every key matching `pattern` (SCAN, so it is safe on a shared server).
///
/// # Panics
///
/// If Redis cannot be reached: this is for tests only.
pub async fn keys_matching(url: &str, pattern: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("bad redis url {url}: {e}"));
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("scan failed: {e}"));
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys
}

/// Starts redis-server on a free port and waits until it answers.
fn start() -> TestRedis {
    let mut last_error = String::new();
    for _ in 0..START_ATTEMPTS {
        match try_start() {
            Ok(redis) => return redis,
            Err(e) => last_error = e,
        }
    }
    panic!("could not start redis-server for the tests (install it, or set REDIS_URL): {last_error}");
}

/// One attempt at [`start`].
fn try_start() -> Result<TestRedis, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    // A name only this server has, checked below, so that we never mistake another
    // process's server that grabbed the port for ours. Nothing is ever saved to it.
    let tag = format!("dagflow-test-{}.rdb", uuid::Uuid::now_v7().simple());
    let script = format!(
        "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no \
         --dbfilename {tag} --dir /tmp & pid=$!; read _; kill $pid"
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(reply) = command(port, &["CONFIG", "GET", "dbfilename"]) {
            if reply.contains(&tag) {
                return Ok(TestRedis {
                    url: format!("redis://127.0.0.1:{port}"),
                    _guard: Some(Mutex::new(child)),
                });
            }
            // Someone else's server is on the port (ours failed to bind), or the
            // reply came in pieces: look again until the deadline.
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Closing stdin makes the shell kill its redis-server, if it started at all.
    drop(child.stdin.take());
    let _ = child.wait();
    Err(format!("redis-server on port {port} did not become ready"))
}

/// Sends one command over a plain socket and returns the raw reply; used before any
/// runtime exists, and only for the readiness check.
fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
