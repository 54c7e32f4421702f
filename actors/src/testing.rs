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

/// A Redis for tests: the shared one from [`redis`], or a private one from
/// [`TestRedis::dedicated`] for tests that stop or restart it.
pub struct TestRedis {
    /// Where to connect: `redis://127.0.0.1:{port}`.
    pub url: String,
    /// The server we started, if we started one (`None` for `REDIS_URL`).
    server: Option<Mutex<Server>>,
}

/// A redis-server we started, and how to stop it.
struct Server {
    /// Its port, kept so that a restart comes back at the same address.
    port: u16,
    /// The shell that owns redis-server, while it runs. Its stdin is a pipe held open
    /// here; when it closes (stop, drop, or the test process exiting however it exits)
    /// the shell kills redis-server, so no server outlives its tests.
    shell: Option<Child>,
}

impl Server {
    /// Stops redis-server and waits for it to be gone.
    fn stop(&mut self) {
        if let Some(mut shell) = self.shell.take() {
            drop(shell.stdin.take());
            let _ = shell.wait();
            // The shell returns once kill is sent; wait until the port is free.
            let deadline = Instant::now() + READY_TIMEOUT;
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl TestRedis {
    /// A redis-server of its own on a free port, stopped when this is dropped. For tests
    /// that stop or restart Redis, which must not disturb the shared one.
    ///
    /// # Panics
    ///
    /// If no redis-server can be started.
    pub fn dedicated() -> TestRedis {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match free_port().and_then(start_on) {
                Ok(server) => {
                    return TestRedis {
                        url: format!("redis://127.0.0.1:{}", server.port),
                        server: Some(Mutex::new(server)),
                    }
                }
                Err(e) => last_error = e,
            }
        }
        panic!(
            "could not start redis-server for the tests (install it, or set REDIS_URL): {last_error}"
        );
    }

    /// Stops the server (clients see connection errors until [`TestRedis::start`]).
    ///
    /// # Panics
    ///
    /// On a Redis this harness did not start (`REDIS_URL`).
    pub fn stop(&self) {
        self.with_server(Server::stop);
    }

    /// Starts the stopped server again on the same port, empty, as a Redis without
    /// persistence comes back after a restart.
    ///
    /// # Panics
    ///
    /// If it cannot be started, or on a Redis this harness did not start.
    pub fn start(&self) {
        self.with_server(|server| {
            server.stop();
            let port = server.port;
            *server = start_on(port).unwrap_or_else(|e| panic!("restart failed: {e}"));
        });
    }

    /// Runs `f` on the server this harness started.
    fn with_server(&self, f: impl FnOnce(&mut Server)) {
        let Some(server) = &self.server else {
            panic!("this redis was not started by the test harness");
        };
        let mut server = server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut server);
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .stop();
        }
    }
}

/// The Redis shared by all tests of this process: `REDIS_URL` if set, else a
/// redis-server started on a free port the first time this is called. Never stop it.
///
/// # Panics
///
/// If no redis-server can be started; install it (`apt-get install redis-server`) or
/// set `REDIS_URL`.
pub fn redis() -> &'static TestRedis {
    static REDIS: OnceLock<TestRedis> = OnceLock::new();
    REDIS.get_or_init(|| match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => TestRedis { url, server: None },
        _ => TestRedis::dedicated(),
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

/// A port nothing listens on right now.
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Starts redis-server on `port`, without persistence, and waits until it answers.
fn start_on(port: u16) -> Result<Server, String> {
    // A name only this server has, checked below, so that we never mistake another
    // process's server that grabbed the port for ours. Nothing is ever saved to it.
    let tag = format!("dagflow-test-{}.rdb", uuid::Uuid::now_v7().simple());
    let script = format!(
        "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no \
         --dbfilename {tag} --dir /tmp & pid=$!; read _; kill $pid"
    );
    let shell = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    let mut server = Server {
        port,
        shell: Some(shell),
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(reply) = command(port, &["CONFIG", "GET", "dbfilename"]) {
            if reply.contains(&tag) {
                return Ok(server);
            }
            // Someone else's server is on the port (ours failed to bind), or the
            // reply came in pieces: look again until the deadline.
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop();
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
