//! Read-only figures about queues, for the API's `GET /queues` and its metrics:
//! ready jobs per lane, running and delayed jobs, the limit keys holding jobs back,
//! the live workers serving each queue, and the names of the queues Redis knows.
//!
//! Nothing here writes. Every read is bounded: one atomic pipeline of fixed size per
//! queue, at most [`HELD_READ`] members of a queue's `held` index, and a `SCAN` that
//! examines at most `budget` batches per call and resumes where the previous call
//! stopped, so that a scrape of a large Redis never walks its whole keyspace at once.

use std::collections::BTreeSet;

use redis::Value;

use super::error::QueueError;
use super::keys::{Lane, LANES, WORKERS_GROUP};
use super::reply;
use super::{Queue, DEFAULT_HEARTBEAT_INTERVAL_MS};
use crate::spec::MAX_PRIORITY;

/// Most members of a queue's `held` index read at once: the held-back totals are
/// summed over these (the keys holding back the most jobs first).
const HELD_READ: usize = 1000;

/// Keys examined per `SCAN` call (its `COUNT`).
const SCAN_COUNT: usize = 1000;

/// Ready jobs of one priority of a queue, by lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityCounts {
    /// 0 (lowest) to 9 (highest).
    pub priority: u8,
    /// Jobs of flows that have started (`P:q:{queue}:{priority}`).
    pub started: u64,
    /// First jobs of flows that have not (`P:q:{queue}:{priority}:new`).
    pub fresh: u64,
}

/// What kind of limit holds jobs back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldKind {
    /// A concurrency key at its limit (`c:{key}` in the `held` index).
    Concurrency,
    /// A rate limit out of tokens (`r:{key}`).
    RateLimit,
    /// A flow concurrency key at its limit (`f:{key}`): the jobs' flows wait for
    /// a flow slot.
    FlowConcurrency,
}

/// One limit key holding back jobs of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldKey {
    /// Concurrency key or rate limit.
    pub kind: HeldKind,
    /// The evaluated key.
    pub key: String,
    /// Jobs of this queue it holds back.
    pub waiting: u64,
    /// A concurrency key: the jobs holding one of its slots, of every queue
    /// (`ZCARD P:ck:{key}:run`); a flow concurrency key: the flows holding one
    /// (`ZCARD P:fk:{key}:run`).
    pub running: Option<u64>,
    /// A rate limit: when its next token frees (ms since the epoch, Redis clock),
    /// while jobs wait for it: the limit's GCRA time (`P:rl:{key}:tat`), or, once that
    /// passed (a token is free), when the engine looks at the key next to release
    /// them (`P:rl:due`).
    pub next_token_at: Option<u64>,
}

/// A live worker, from its heartbeat in `P:workers`.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveWorker {
    /// The worker id (the field of `P:workers`).
    pub id: String,
    /// The queues it serves, with the concurrency it gives each when it says.
    pub queues: Vec<(String, Option<u64>)>,
    /// Its handler names.
    pub handlers: Vec<String>,
    /// Its last heartbeat (ms since the epoch, Redis clock).
    pub last_seen_ms: u64,
}

/// Everything Redis holds about one queue, read in one atomic pipeline (plus one
/// round trip for the top held-back keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue.
    pub name: String,
    /// Ready jobs (in a lane, not yet handed to a worker), priority 9 first.
    pub ready: Vec<PriorityCounts>,
    /// Jobs handed to a worker and not yet acknowledged, over all lanes.
    pub running: u64,
    /// Retries waiting for their backoff (`P:q:{queue}:delayed`).
    pub delayed: u64,
    /// The keys holding back the most jobs, most first (at most the `top` asked for).
    pub held_back: Vec<HeldKey>,
    /// How many keys hold back jobs of this queue.
    pub held_back_keys: u64,
    /// Jobs held back by concurrency keys, summed over the 1000 keys holding back
    /// the most (of every kind).
    pub held_by_concurrency: u64,
    /// Jobs held back by rate limits, summed over the same keys.
    pub held_by_rate: u64,
    /// Jobs held back by flow concurrency keys, summed over the same keys.
    pub held_by_flow: u64,
    /// Whether Redis knows the queue at all: a lane stream, a delayed job, a held
    /// job, or its name in `P:queues:delayed`.
    pub known: bool,
}

impl QueueStats {
    /// Ready jobs over every lane.
    pub fn ready_total(&self) -> u64 {
        self.ready.iter().map(|p| p.started + p.fresh).sum()
    }
}

impl Queue {
    /// The workers whose last heartbeat is recent enough (within three of their
    /// intervals, as `heartbeat.lua` judges), by the Redis clock. Entries that are
    /// not JSON objects with a `ts` are left out.
    pub async fn live_workers(&self) -> Result<Vec<LiveWorker>, QueueError> {
        let mut conn = self.conn.clone();
        let (time, all): ((u64, u64), Vec<(String, String)>) = redis::pipe()
            .cmd("TIME")
            .cmd("HGETALL")
            .arg(self.keys.workers())
            .query_async(&mut conn)
            .await?;
        let now = time.0 * 1000 + time.1 / 1000;
        let mut workers: Vec<LiveWorker> = all
            .into_iter()
            .filter_map(|(id, json)| {
                let info: serde_json::Value = serde_json::from_str(&json).ok()?;
                let ts = info.get("ts")?.as_u64()?;
                let interval = info
                    .get("intervalMs")
                    .and_then(serde_json::Value::as_u64)
                    .filter(|i| *i > 0)
                    .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL_MS);
                if now.saturating_sub(ts) > interval.saturating_mul(3) {
                    return None;
                }
                Some(LiveWorker {
                    id,
                    queues: heartbeat_queues(&info),
                    handlers: info
                        .get("handlers")
                        .and_then(serde_json::Value::as_array)
                        .map(|hs| {
                            hs.iter()
                                .filter_map(|h| h.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                    last_seen_ms: ts,
                })
            })
            .collect();
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(workers)
    }

    /// The queues named in `P:queues:delayed` (every queue that ever had a retry
    /// waiting for its backoff).
    pub async fn delayed_queue_names(&self) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("SMEMBERS")
            .arg(self.keys.delayed_queues())
            .query_async(&mut conn)
            .await?)
    }

    /// Names of queues that have keys (`P:q:{queue}:...`), from at most `budget`
    /// `SCAN` calls starting at `cursor`. Returns the cursor to resume from (0 once a
    /// full pass ended) and the names found.
    pub async fn scan_queue_names(
        &self,
        mut cursor: u64,
        budget: usize,
    ) -> Result<(u64, BTreeSet<String>), QueueError> {
        let head = format!("{}:q:", self.keys.prefix());
        let pattern = format!("{}*", glob_escape(&head));
        let mut conn = self.conn.clone();
        let mut names = BTreeSet::new();
        for _ in 0..budget.max(1) {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn)
                .await?;
            names.extend(
                batch
                    .iter()
                    .filter_map(|key| queue_of_key(key.strip_prefix(&head)?)),
            );
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok((cursor, names))
    }

    /// The figures of one queue. `top` is how many held-back keys to detail.
    ///
    /// A lane's ready count is what its consumer group has not yet delivered: the
    /// group's `lag` (Redis 7.0), or, when Redis cannot tell it (after an entry that
    /// was never delivered is deleted, lag is nil), the stream's length minus the
    /// entries pending. Both are exact in this protocol, which deletes every entry
    /// whose job ends.
    pub async fn queue_stats(&self, queue: &str, top: usize) -> Result<QueueStats, QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors();
        for lane in self.keys.lanes(queue) {
            pipe.cmd("XLEN").arg(&lane);
            pipe.cmd("XINFO").arg("GROUPS").arg(&lane);
        }
        let held_key = self.keys.held(queue);
        pipe.cmd("ZCARD").arg(self.keys.delayed(queue));
        pipe.cmd("SISMEMBER")
            .arg(self.keys.delayed_queues())
            .arg(queue);
        pipe.cmd("ZCARD").arg(&held_key);
        pipe.cmd("ZREVRANGE")
            .arg(&held_key)
            .arg(0)
            .arg(HELD_READ - 1)
            .arg("WITHSCORES");
        let mut conn = self.conn.clone();
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        if replies.len() != 2 * LANES + 4 {
            return Err(QueueError::Protocol(format!(
                "queue stats: {} replies to {} commands",
                replies.len(),
                2 * LANES + 4
            )));
        }
        let mut ready: Vec<PriorityCounts> = (0..=MAX_PRIORITY)
            .rev()
            .map(|priority| PriorityCounts {
                priority,
                started: 0,
                fresh: 0,
            })
            .collect();
        let mut running = 0u64;
        let mut lanes_exist = false;
        for (i, lane) in Lane::ALL.iter().enumerate() {
            let len = count(&replies[2 * i])?;
            let Some(group) = workers_group(&replies[2 * i + 1])? else {
                // No stream (an error reply) or no group: nothing ready, nothing running.
                continue;
            };
            lanes_exist = true;
            let undelivered = group
                .lag
                .unwrap_or_else(|| len.saturating_sub(group.pending));
            running += group.pending;
            let slot = &mut ready[usize::from(MAX_PRIORITY - lane.priority)];
            if lane.fresh {
                slot.fresh = undelivered;
            } else {
                slot.started = undelivered;
            }
        }
        let tail = &replies[2 * LANES..];
        let delayed = count(&tail[0])?;
        let named = count(&tail[1])? == 1;
        let held_back_keys = count(&tail[2])?;
        let held = scored_members(&tail[3])?;
        let (mut held_by_concurrency, mut held_by_rate, mut held_by_flow) = (0u64, 0u64, 0u64);
        let mut top_keys = Vec::new();
        for (member, waiting) in held {
            let (kind, key) = match member.split_at_checked(2) {
                Some(("c:", key)) => (HeldKind::Concurrency, key),
                Some(("r:", key)) => (HeldKind::RateLimit, key),
                Some(("f:", key)) => (HeldKind::FlowConcurrency, key),
                _ => continue,
            };
            match kind {
                HeldKind::Concurrency => held_by_concurrency += waiting,
                HeldKind::RateLimit => held_by_rate += waiting,
                HeldKind::FlowConcurrency => held_by_flow += waiting,
            }
            if top_keys.len() < top {
                top_keys.push(HeldKey {
                    kind,
                    key: key.to_owned(),
                    waiting,
                    running: None,
                    next_token_at: None,
                });
            }
        }
        self.fill_held_keys(&mut top_keys).await?;
        Ok(QueueStats {
            name: queue.to_owned(),
            ready,
            running,
            delayed,
            known: lanes_exist || delayed > 0 || named || held_back_keys > 0,
            held_back: top_keys,
            held_back_keys,
            held_by_concurrency,
            held_by_rate,
            held_by_flow,
        })
    }

    /// Each concurrency key's running jobs (flows, for a flow key) and each rate
    /// limit's next token.
    ///
    /// A rate limit's score in `P:rl:due` is when the engine looks at the key next,
    /// which is not always when its token frees: a job that arrives while others
    /// wait sets it to "now", and the engine's next look moves it on to the token.
    /// The GCRA time in `P:rl:{key}:tat` (`lua/limits.lua`) is the token's own time;
    /// the later of the two is when a waiting job can go at the earliest.
    async fn fill_held_keys(&self, keys: &mut [HeldKey]) -> Result<(), QueueError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for held in keys.iter() {
            match held.kind {
                HeldKind::Concurrency => {
                    pipe.cmd("ZCARD")
                        .arg(self.keys.concurrency_running(&held.key));
                }
                HeldKind::FlowConcurrency => {
                    // `P:fk:{key}:run` (`lua/limits.lua`); keys.rs has no builder.
                    pipe.cmd("ZCARD")
                        .arg(format!("{}:fk:{}:run", self.keys.prefix(), held.key));
                }
                HeldKind::RateLimit => {
                    // `P:rl:{key}:tat` (`lua/limits.lua`).
                    pipe.cmd("GET").arg(self.keys.rate_token(&held.key));
                    pipe.cmd("ZSCORE").arg(self.keys.rate_due()).arg(&held.key);
                }
            }
        }
        let mut conn = self.conn.clone();
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let mut replies = replies.iter();
        let mut next = || {
            replies
                .next()
                .ok_or_else(|| QueueError::Protocol("held keys: a reply short".into()))
        };
        for held in keys.iter_mut() {
            match held.kind {
                HeldKind::Concurrency | HeldKind::FlowConcurrency => {
                    held.running = Some(count(next()?)?)
                }
                HeldKind::RateLimit => {
                    let (tat, due) = (score(next()?)?, score(next()?)?);
                    // Times are fractional ms (`limits.lua` keeps them to the
                    // microsecond): the token is free from the next whole ms.
                    let at = match (tat, due) {
                        (Some(t), Some(d)) => Some(t.max(d)),
                        (t, d) => t.or(d),
                    };
                    held.next_token_at = at.map(|ms| ms.max(0.0).ceil() as u64);
                }
            }
        }
        Ok(())
    }
}

/// The queues a heartbeat lists: `{"name", "concurrency"}` objects, or plain names
/// from workers that send only those.
fn heartbeat_queues(info: &serde_json::Value) -> Vec<(String, Option<u64>)> {
    info.get("queues")
        .and_then(serde_json::Value::as_array)
        .map(|queues| {
            queues
                .iter()
                .filter_map(|q| {
                    let name = q.get("name").and_then(|n| n.as_str()).or(q.as_str())?;
                    let concurrency = q.get("concurrency").and_then(serde_json::Value::as_u64);
                    Some((name.to_owned(), concurrency))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The queue a key under `P:q:` belongs to, given the rest of the key
/// (`gpu:5`, `gpu:5:new`, `gpu:takes`, `gpu:delayed`, `gpu:held`); `None` for a key
/// of another shape (another deployment whose prefix starts with ours and `:q:`).
fn queue_of_key(rest: &str) -> Option<String> {
    let (queue, suffix) = rest.split_once(':')?;
    let lane = |s: &str| s.len() == 1 && s.as_bytes()[0].is_ascii_digit();
    let known = matches!(suffix, "takes" | "delayed" | "held")
        || lane(suffix)
        || suffix.strip_suffix(":new").is_some_and(lane);
    (known && is_queue_name(queue)).then(|| queue.to_owned())
}

/// Whether `name` is a queue name the engine accepts (`docs/PROTOCOL.md`): ASCII
/// letters, digits, `-`, `_` or `.`.
fn is_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `text` with the characters `SCAN MATCH` treats as a pattern escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The consumer group `workers` of a lane, from its `XINFO GROUPS` reply.
struct GroupInfo {
    /// Entries delivered and not acknowledged.
    pending: u64,
    /// Entries not yet delivered, when Redis can tell.
    lag: Option<u64>,
}

/// `None` when the reply is an error (no such stream) or lists no `workers` group.
fn workers_group(value: &Value) -> Result<Option<GroupInfo>, QueueError> {
    let groups = match value {
        Value::ServerError(_) => return Ok(None),
        Value::Array(groups) | Value::Set(groups) => groups,
        other => {
            return Err(QueueError::Protocol(format!(
                "expected an XINFO GROUPS reply, got {other:?}"
            )))
        }
    };
    for group in groups {
        let pairs: Vec<(&Value, &Value)> = match group {
            Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
            Value::Array(items) => items.chunks_exact(2).map(|kv| (&kv[0], &kv[1])).collect(),
            _ => continue,
        };
        let field = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| reply::text(k).is_ok_and(|k| k == name))
                .map(|(_, v)| *v)
        };
        if !field("name").is_some_and(|n| reply::text(n).is_ok_and(|n| n == WORKERS_GROUP)) {
            continue;
        }
        let pending = field("pending").map(count).transpose()?.unwrap_or(0);
        let lag = match field("lag") {
            None | Some(Value::Nil) => None,
            Some(v) => Some(count(v)?),
        };
        return Ok(Some(GroupInfo { pending, lag }));
    }
    Ok(None)
}

/// A count reply (an integer, or nil for nothing).
fn count(value: &Value) -> Result<u64, QueueError> {
    match value {
        Value::Nil => Ok(0),
        Value::ServerError(e) => Err(QueueError::Protocol(format!("{e:?}"))),
        other => Ok(u64::try_from(reply::int(other)?).unwrap_or(0)),
    }
}

/// A score reply (`ZSCORE`), or a number kept as text (`GET`): nil when absent.
fn score(value: &Value) -> Result<Option<f64>, QueueError> {
    match value {
        Value::Nil => Ok(None),
        Value::Double(d) => Ok(Some(*d)),
        other => reply::text(other)?
            .parse()
            .map(Some)
            .map_err(|_| QueueError::Protocol(format!("expected a score, got {other:?}"))),
    }
}

/// `ZREVRANGE ... WITHSCORES`: members and their scores as counts, in reply order.
fn scored_members(value: &Value) -> Result<Vec<(String, u64)>, QueueError> {
    let items = match value {
        Value::Array(items) => items,
        Value::Nil => return Ok(Vec::new()),
        Value::ServerError(e) => return Err(QueueError::Protocol(format!("{e:?}"))),
        other => {
            return Err(QueueError::Protocol(format!(
                "expected a scored range, got {other:?}"
            )))
        }
    };
    let mut out = Vec::with_capacity(items.len() / 2);
    // RESP2: member, score, member, score...; RESP3: [member, score] pairs.
    let pairs: Vec<(&Value, &Value)> = if items.iter().all(|i| matches!(i, Value::Array(_))) {
        items
            .iter()
            .filter_map(|pair| match pair {
                Value::Array(p) if p.len() == 2 => Some((&p[0], &p[1])),
                _ => None,
            })
            .collect()
    } else {
        items.chunks_exact(2).map(|kv| (&kv[0], &kv[1])).collect()
    };
    for (member, score_value) in pairs {
        let n = score(score_value)?.unwrap_or(0.0);
        out.push((reply::text(member)?, n.max(0.0).round() as u64));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn keys_name_their_queue() {
        assert_eq!(queue_of_key("gpu:5").as_deref(), Some("gpu"));
        assert_eq!(queue_of_key("gpu:0:new").as_deref(), Some("gpu"));
        assert_eq!(queue_of_key("py.v2:takes").as_deref(), Some("py.v2"));
        assert_eq!(queue_of_key("a-b:delayed").as_deref(), Some("a-b"));
        assert_eq!(queue_of_key("a_b:held").as_deref(), Some("a_b"));
        for other in ["gpu", "gpu:10", "gpu:5:old", "x:q:gpu:5", "g*u:5", ":5"] {
            assert_eq!(queue_of_key(other), None, "{other}");
        }
        assert_eq!(glob_escape("t-1*[x]?\\:q:"), "t-1\\*\\[x\\]\\?\\\\:q:");
    }

    #[test]
    fn group_replies_with_and_without_lag() {
        let group = |name: &str, lag: Value| {
            Value::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("pending"),
                Value::Int(2),
                bulk("lag"),
                lag,
            ])
        };
        let reply = Value::Array(vec![
            group("other", Value::Int(9)),
            group("workers", Value::Int(3)),
        ]);
        let info = workers_group(&reply).unwrap().unwrap();
        assert_eq!((info.pending, info.lag), (2, Some(3)));
        let info = workers_group(&Value::Array(vec![group("workers", Value::Nil)]))
            .unwrap()
            .unwrap();
        assert_eq!(info.lag, None);
        assert!(workers_group(&Value::Array(vec![])).unwrap().is_none());
    }

    #[test]
    fn scored_ranges_in_both_protocols() {
        let resp2 = Value::Array(vec![bulk("c:a"), bulk("3"), bulk("r:b"), bulk("1")]);
        let resp3 = Value::Array(vec![
            Value::Array(vec![bulk("c:a"), Value::Double(3.0)]),
            Value::Array(vec![bulk("r:b"), Value::Double(1.0)]),
        ]);
        for reply in [resp2, resp3] {
            assert_eq!(
                scored_members(&reply).unwrap(),
                vec![("c:a".to_owned(), 3), ("r:b".to_owned(), 1)]
            );
        }
    }
}
