//! What the benchmark asks Redis itself, outside the engine: the command counters
//! (`INFO commandstats`), CPU and memory (`INFO cpu`, `INFO memory`) before and after
//! a run, and the removal of a run's keys (`SCAN` + `UNLINK`).
//!
//! This is a few lines of RESP over a plain TCP socket rather than the `redis`
//! crate: only the engine's `queue` module talks to Redis through that crate, and
//! these three commands, run a handful of times per benchmark, do not need a client
//! library. The calls block, so they run on tokio's blocking pool.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// How long one command may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys asked for per `SCAN` call and removed per `UNLINK`.
const SCAN_COUNT: usize = 1000;

/// Where a Redis is and how to log in, parsed from a `redis://` URL.
#[derive(Debug, Clone)]
pub(crate) struct RedisProbe {
    /// `host:port`.
    addr: String,
    /// `AUTH` arguments: optional user name, password.
    auth: Option<(Option<String>, String)>,
    /// Database number, when the URL names one.
    db: Option<u32>,
}

/// Counters of a Redis server at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct RedisSnapshot {
    /// Calls by command name (`xadd`, `client|setname`, …).
    pub(crate) calls: BTreeMap<String, u64>,
    /// CPU seconds the server used (user + system, main thread and others).
    pub(crate) cpu_s: Option<f64>,
    /// Bytes the server's allocator holds for data (`used_memory` of `INFO memory`).
    pub(crate) used_memory: Option<u64>,
}

/// One RESP reply.
#[derive(Debug)]
enum Reply {
    /// `+OK` and other simple strings (their text is not needed).
    Simple,
    /// `:n`.
    Int(i64),
    /// `$n` bulk string; `None` for nil.
    Bulk(Option<Vec<u8>>),
    /// `*n` array; `None` for nil.
    Array(Option<Vec<Reply>>),
}

impl RedisProbe {
    /// Parses `redis://[[user]:password@]host[:port][/db]`.
    pub(crate) fn parse(url: &str) -> anyhow::Result<RedisProbe> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("redis url '{url}'"))?;
        if parsed.scheme() != "redis" {
            bail!("redis url '{url}': only redis:// is supported by the benchmark's probe");
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| anyhow!("redis url '{url}' has no host"))?;
        let port = parsed.port().unwrap_or(6379);
        let addr = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let auth = parsed.password().map(|password| {
            let user = Some(percent_decode(parsed.username())).filter(|u| !u.is_empty());
            (user, percent_decode(password))
        });
        let db = match parsed.path().trim_start_matches('/') {
            "" => None,
            db => Some(
                db.parse()
                    .with_context(|| format!("redis url '{url}': database '{db}'"))?,
            ),
        };
        Ok(RedisProbe { addr, auth, db })
    }

    /// The server's counters now: calls of every command since it started (or its
    /// last `CONFIG RESETSTAT`) as `INFO commandstats` reports them, where commands
    /// that Lua scripts run count under their own names; and its CPU time.
    pub(crate) async fn snapshot(&self) -> anyhow::Result<RedisSnapshot> {
        let probe = self.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<RedisSnapshot> {
            let mut conn = probe.connect()?;
            let mut info = |section: &str| match conn.call(&["INFO", section])? {
                Reply::Bulk(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
                other => bail!("INFO {section} answered {other:?}"),
            };
            let calls = parse_commandstats(&info("commandstats")?);
            let cpu_s = parse_cpu(&info("cpu")?);
            let used_memory = info_field(&info("memory")?, "used_memory");
            Ok(RedisSnapshot {
                calls,
                cpu_s,
                used_memory,
            })
        })
        .await?
    }

    /// Removes every key that starts with `{prefix}:`; returns how many went.
    pub(crate) async fn delete_prefix(&self, prefix: &str) -> anyhow::Result<u64> {
        self.scan_prefix(prefix, true).await
    }

    /// Counts the keys that start with `{prefix}:`.
    pub(crate) async fn count_prefix(&self, prefix: &str) -> anyhow::Result<u64> {
        self.scan_prefix(prefix, false).await
    }

    async fn scan_prefix(&self, prefix: &str, delete: bool) -> anyhow::Result<u64> {
        let probe = self.clone();
        let pattern = format!("{}:*", escape_glob(prefix));
        tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            let mut conn = probe.connect()?;
            let count = SCAN_COUNT.to_string();
            let mut cursor = "0".to_owned();
            let mut total = 0;
            loop {
                let reply = conn.call(&["SCAN", &cursor, "MATCH", &pattern, "COUNT", &count])?;
                let Reply::Array(Some(mut parts)) = reply else {
                    bail!("SCAN answered {reply:?}");
                };
                let (Some(Reply::Array(Some(keys))), Some(Reply::Bulk(Some(next)))) =
                    (parts.pop(), parts.pop())
                else {
                    bail!("SCAN answered an unexpected shape");
                };
                let keys: Vec<String> = keys
                    .into_iter()
                    .filter_map(|k| match k {
                        Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                        _ => None,
                    })
                    .collect();
                if delete && !keys.is_empty() {
                    let mut args = vec!["UNLINK"];
                    args.extend(keys.iter().map(String::as_str));
                    match conn.call(&args)? {
                        Reply::Int(n) => total += n.max(0) as u64,
                        other => bail!("UNLINK answered {other:?}"),
                    }
                } else {
                    total += keys.len() as u64;
                }
                cursor = String::from_utf8_lossy(&next).into_owned();
                if cursor == "0" {
                    return Ok(total);
                }
            }
        })
        .await?
    }

    /// A connection, logged in and on the right database.
    fn connect(&self) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(&self.addr)
            .with_context(|| format!("connecting to redis at {}", self.addr))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        match &self.auth {
            Some((Some(user), password)) => {
                conn.call(&["AUTH", user, password])?;
            }
            Some((None, password)) => {
                conn.call(&["AUTH", password])?;
            }
            None => {}
        }
        if let Some(db) = self.db {
            conn.call(&["SELECT", &db.to_string()])?;
        }
        Ok(conn)
    }
}

/// One blocking RESP connection.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    /// Sends one command and reads its reply; a Redis error reply is an `Err`.
    fn call(&mut self, args: &[&str]) -> anyhow::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out)?;
        self.read_reply()
            .with_context(|| format!("redis {}", args.first().copied().unwrap_or("")))
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("connection closed");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn read_reply(&mut self) -> anyhow::Result<Reply> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        Ok(match kind {
            "+" => Reply::Simple,
            "-" => bail!("{rest}"),
            ":" => Reply::Int(rest.parse()?),
            "$" => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut buf = vec![0; len as usize + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(len as usize);
                    Reply::Bulk(Some(buf))
                }
            }
            "*" => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    Reply::Array(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.read_reply()?);
                    }
                    Reply::Array(Some(items))
                }
            }
            _ => bail!("unexpected RESP line '{line}'"),
        })
    }
}

/// `cmdstat_xadd:calls=12,usec=…` lines into `{"xadd": 12, …}`.
fn parse_commandstats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// `used_cpu_sys` + `used_cpu_user` of `INFO cpu`.
fn parse_cpu(text: &str) -> Option<f64> {
    Some(info_field::<f64>(text, "used_cpu_sys")? + info_field::<f64>(text, "used_cpu_user")?)
}

/// The value of `name:value` in an `INFO` section.
fn info_field<T: std::str::FromStr>(text: &str, name: &str) -> Option<T> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
        .trim()
        .parse()
        .ok()
}

/// Escapes the characters `SCAN MATCH` treats as a pattern.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Decodes `%xx` escapes of a URL's user name or password.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let p = RedisProbe::parse("redis://127.0.0.1:6390/2").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.addr, "127.0.0.1:6390");
        assert_eq!(p.db, Some(2));
        assert!(p.auth.is_none());
        let p = RedisProbe::parse("redis://u:p%40ss@localhost").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.addr, "localhost:6379");
        assert_eq!(p.auth, Some((Some("u".to_owned()), "p@ss".to_owned())));
        assert!(RedisProbe::parse("rediss://x").is_err());
    }

    #[test]
    fn parses_commandstats() {
        let text = "# Commandstats\r\ncmdstat_xadd:calls=12,usec=30,usec_per_call=2.5\r\n\
                    cmdstat_client|setname:calls=2,usec=1\r\n";
        let stats = parse_commandstats(text);
        assert_eq!(stats.get("xadd"), Some(&12));
        assert_eq!(stats.get("client|setname"), Some(&2));
    }

    #[test]
    fn parses_cpu() {
        let text = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9\r\n";
        assert_eq!(parse_cpu(text), Some(3.75));
    }

    #[test]
    fn parses_used_memory() {
        let text = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n";
        assert_eq!(info_field::<u64>(text, "used_memory"), Some(1_048_576));
    }

    #[test]
    fn escapes_glob_characters() {
        assert_eq!(escape_glob("a*b[c]"), "a\\*b\\[c\\]");
    }
}
