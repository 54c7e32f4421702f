//! A redis-server of the test's own that can be SIGKILLed and brought back from
//! an older snapshot: what the chaos test (`tests/chaos/`) needs to roll Redis back in time.
//!
//! It runs with a data dir of its own, `appendonly no` and no automatic saves
//! (`save ""`), so its only RDB files are the ones the test asks for with
//! [`RedisServer::snapshot`] (`SAVE`, then a copy kept aside). [`RedisServer::
//! restart_from`] SIGKILLs it (nothing is saved on the way down) and starts it
//! again on the same port from such a copy: Redis comes back as it was at that
//! moment — the engine's `P:marker` still there, everything written since gone —
//! which is what a restart from an old RDB, or a failover to a replica that lagged,
//! does to a deployment.
//!
//! redis-server is started by a shell that holds a pipe from this process and
//! SIGKILLs the server when the pipe closes, so no server outlives its test however
//! the test process ends.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server may take to answer.
const READY: Duration = Duration::from_secs(10);

/// A redis-server with a data dir, SIGKILLable and restartable.
pub struct RedisServer {
    /// `redis://127.0.0.1:{port}`.
    pub url: String,
    port: u16,
    /// Its data dir: `dump.rdb` (what it loads at start) and the saved snapshots.
    dir: tempfile::TempDir,
    /// The shell that owns the server, and the server's pid, while it runs.
    running: Option<(Child, u32)>,
}

impl RedisServer {
    /// Starts an empty server on a free port.
    ///
    /// # Panics
    ///
    /// If redis-server cannot be started.
    pub fn start() -> RedisServer {
        let mut last = String::new();
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap();
            let mut server = RedisServer {
                url: format!("redis://127.0.0.1:{port}"),
                port,
                dir: tempfile::tempdir().unwrap(),
                running: None,
            };
            match server.launch() {
                Ok(()) => return server,
                // Another process took the port between the probe and the bind.
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server (is it installed?): {last}");
    }

    /// Starts redis-server on this port and dir (loading `dump.rdb` if there is
    /// one) and waits until it answers as ours.
    fn launch(&mut self) -> Result<(), String> {
        let dir = self.dir.path().to_str().unwrap().to_owned();
        // `kill -9` on the way out: a server stopped by the test's end must not
        // write a dump that a later start would load. Its output goes to a file:
        // the shell's stdout is a pipe this process stops reading after the pid,
        // and a write to it would kill the server (SIGPIPE).
        let script = format!(
            "redis-server --port {} --bind 127.0.0.1 --save '' --appendonly no \
             --dir '{dir}' --dbfilename dump.rdb --loglevel warning \
             >> '{dir}/redis.log' 2>&1 & echo $!; read _; kill -9 $! 2>/dev/null",
            self.port
        );
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run sh: {e}"))?;
        let mut line = String::new();
        BufReader::new(shell.stdout.take().unwrap())
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let pid: u32 = line
            .trim()
            .parse()
            .map_err(|_| format!("no pid from the shell: {line:?}"))?;
        self.running = Some((shell, pid));
        let deadline = Instant::now() + READY;
        while Instant::now() < deadline {
            // Ours if it serves our dir (not someone else's server on the port);
            // a server still loading its RDB answers LOADING and is not ready.
            let dir_reply: Result<Vec<String>, _> = self
                .connection()
                .and_then(|mut c| redis::cmd("CONFIG").arg("GET").arg("dir").query(&mut c));
            if let Ok(reply) = dir_reply {
                if reply.get(1).map(String::as_str) == Some(dir.as_str())
                    || reply.get(1).is_some_and(|d| {
                        std::fs::canonicalize(d).ok() == std::fs::canonicalize(&dir).ok()
                    })
                {
                    let ping: Result<String, _> = self
                        .connection()
                        .and_then(|mut c| redis::cmd("PING").query(&mut c));
                    if ping.is_ok() {
                        return Ok(());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(format!(
            "redis-server on port {} did not become ready",
            self.port
        ))
    }

    /// A new blocking connection (each call connects: the server comes and goes).
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url.as_str())?;
        client.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// SIGKILLs the server (no save on the way down) and waits until its port is
    /// free. Clients see connection errors until the next start.
    pub fn kill(&mut self) {
        if let Some((mut shell, pid)) = self.running.take() {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
            if let Some(mut stdin) = shell.stdin.take() {
                let _ = stdin.write_all(b"\n");
            }
            let _ = shell.wait();
            let deadline = Instant::now() + READY;
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Whether the server runs (as started here).
    pub fn running(&self) -> bool {
        self.running.is_some()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `SAVE`s the data set now and keeps the RDB aside as `name`.
    ///
    /// # Errors
    ///
    /// When Redis does not answer or the copy fails.
    pub fn snapshot(&self, name: &str) -> Result<(), String> {
        let mut conn = self.connection().map_err(|e| e.to_string())?;
        redis::cmd("SAVE")
            .query::<()>(&mut conn)
            .map_err(|e| format!("SAVE: {e}"))?;
        std::fs::copy(self.file("dump.rdb"), self.file(name))
            .map_err(|e| format!("keeping the RDB as {name}: {e}"))?;
        Ok(())
    }

    /// SIGKILLs the server and starts it again from the snapshot `name`: the data
    /// set as it was when the snapshot was taken.
    ///
    /// # Panics
    ///
    /// If there is no such snapshot or the server does not come back.
    pub fn restart_from(&mut self, name: &str) {
        self.kill();
        std::fs::copy(self.file(name), self.file("dump.rdb"))
            .unwrap_or_else(|e| panic!("restoring snapshot {name}: {e}"));
        self.launch()
            .unwrap_or_else(|e| panic!("restart from {name} failed: {e}"));
    }

    /// SIGKILLs the server and starts it again empty.
    ///
    /// # Panics
    ///
    /// If it does not come back.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.file("dump.rdb"));
        self.launch()
            .unwrap_or_else(|e| panic!("restart failed: {e}"));
    }

    /// `FLUSHALL`.
    ///
    /// # Errors
    ///
    /// When Redis does not answer.
    pub fn flushall(&self) -> Result<(), String> {
        let mut conn = self.connection().map_err(|e| e.to_string())?;
        redis::cmd("FLUSHALL")
            .query::<()>(&mut conn)
            .map_err(|e| e.to_string())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
