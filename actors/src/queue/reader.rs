//! Blocking readers of the queue streams and of the completions stream.
//!
//! Each reader owns a dedicated connection: a blocking `XREADGROUP` on the shared
//! multiplexed connection would stall every other command of the process behind it.
//! Each read first returns this consumer's own pending entries, so a restarted engine
//! or worker with the same consumer name resumes its jobs at once instead of waiting
//! for their lease to expire.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, Value};

use super::envelope::{CompletionRecord, Delivery, JobEnvelope, ENVELOPE_FIELD};
use super::error::QueueError;
use super::keys::{Keys, ENGINE_GROUP, LANES, WORKERS_GROUP};
use super::reply::{self, RawEntry};
use super::scripts;

/// How long a reader waits to establish its connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Response timeout of non-blocking commands on a reader's connection.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Added to the block time of a blocking read to get its response timeout: redis-rs
/// applies its response timeout to blocking commands too (500 ms by default), so it
/// must exceed the block time or every long poll fails.
const BLOCK_MARGIN: Duration = Duration::from_secs(5);

/// Most `XAUTOCLAIM` calls one `reclaim` makes; each scans up to ten times its count of
/// pending entries, so this bounds the work of one call on a long pending list.
const MAX_AUTOCLAIM_ROUNDS: usize = 10;

/// One consumer's dedicated connection to the streams of one group.
struct StreamConn {
    /// Opens the connection again after it broke.
    client: redis::Client,
    /// The live connection; `None` after a connection error, reopened on next use.
    conn: Option<MultiplexedConnection>,
    /// The consumer group.
    group: &'static str,
    /// This consumer's name within the group.
    consumer: String,
}

impl StreamConn {
    /// A connection for `consumer` of `group`, opened on first use.
    fn new(redis_url: &str, group: &'static str, consumer: &str) -> Result<Self, QueueError> {
        Ok(StreamConn {
            client: redis::Client::open(redis_url)?,
            conn: None,
            group,
            consumer: consumer.to_owned(),
        })
    }

    /// The connection, opened if needed.
    async fn connection(&mut self) -> Result<&mut MultiplexedConnection, QueueError> {
        if self.conn.is_none() {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(COMMAND_TIMEOUT));
            let conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| QueueError::Protocol("connection vanished".into()))
    }

    /// Forgets a broken connection so that the next call opens a new one.
    fn check<T>(&mut self, result: redis::RedisResult<T>) -> Result<T, QueueError> {
        result.map_err(|e| {
            let err = QueueError::from(e);
            if err.is_connection() {
                self.conn = None;
            }
            err
        })
    }

    /// Runs one command with the given response timeout.
    async fn query<T: FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<T, QueueError> {
        let conn = self.connection().await?;
        conn.set_response_timeout(timeout);
        let result = cmd.query_async(conn).await;
        self.check(result)
    }

    /// Runs a script invocation.
    async fn invoke<T: FromRedisValue>(
        &mut self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, QueueError> {
        let conn = self.connection().await?;
        conn.set_response_timeout(COMMAND_TIMEOUT);
        let result = invocation.invoke_async(conn).await;
        self.check(result)
    }

    /// Runs a pipeline.
    async fn query_pipe<T: FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<T, QueueError> {
        let conn = self.connection().await?;
        conn.set_response_timeout(COMMAND_TIMEOUT);
        let result = pipe.query_async(conn).await;
        self.check(result)
    }

    /// Creates the group (and the stream) if missing, from the start of the stream so
    /// that entries added before the group existed are delivered too.
    async fn ensure_group(&mut self, key: &str) -> Result<(), QueueError> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(key)
            .arg(self.group)
            .arg("0")
            .arg("MKSTREAM");
        match self.query::<Value>(&cmd, COMMAND_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(QueueError::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs a group command on `key`. On `NOGROUP` (Redis restarted empty, or a lane
    /// never used) returns `None`, since a missing group holds nothing for this
    /// consumer; with `create`, the group is created first.
    async fn group_query(
        &mut self,
        key: &str,
        cmd: &redis::Cmd,
        timeout: Duration,
        create: bool,
    ) -> Result<Option<Value>, QueueError> {
        match self.query::<Value>(cmd, timeout).await {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_no_group() => {
                if create {
                    tracing::warn!(
                        stream = key,
                        group = self.group,
                        "consumer group missing, recreating it"
                    );
                    self.ensure_group(key).await?;
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads up to `count` entries of `key` for this consumer after `from`: its own
    /// pending entries past a cursor (entries it received before a restart and
    /// never finished), or new ones (`>`), blocking up to `block_ms` (0: no block).
    async fn read_group(
        &mut self,
        key: &str,
        from: &str,
        count: usize,
        block_ms: u64,
        create: bool,
    ) -> Result<Vec<RawEntry>, QueueError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count.max(1));
        let mut timeout = COMMAND_TIMEOUT;
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
            timeout = Duration::from_millis(block_ms) + BLOCK_MARGIN;
        }
        cmd.arg("STREAMS").arg(key).arg(from);
        match self.group_query(key, &cmd, timeout, create).await? {
            Some(value) => reply::read_reply(value),
            None => Ok(Vec::new()),
        }
    }

    /// Takes over up to `count` entries of `key` pending for more than
    /// `min_idle_ms` (`XAUTOCLAIM`, a claim that counts as a delivery), scanning on
    /// from `cursor` for at most [`MAX_AUTOCLAIM_ROUNDS`] calls and leaving the cursor
    /// where the next scan goes on (`0-0` after a full pass).
    async fn autoclaim(
        &mut self,
        key: &str,
        min_idle_ms: u64,
        count: usize,
        cursor: &mut String,
        create: bool,
    ) -> Result<Vec<RawEntry>, QueueError> {
        let mut raw = Vec::new();
        for _ in 0..MAX_AUTOCLAIM_ROUNDS {
            if raw.len() >= count {
                break;
            }
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(key)
                .arg(self.group)
                .arg(&self.consumer)
                .arg(min_idle_ms)
                .arg(cursor.as_str())
                .arg("COUNT")
                .arg(count - raw.len());
            let Some(value) = self.group_query(key, &cmd, COMMAND_TIMEOUT, create).await? else {
                break;
            };
            // [next cursor, claimed entries, ids deleted meanwhile (Redis 7; already
            // removed from the pending list by Redis)]
            let mut parts = reply::array(value)?.into_iter();
            let next = match parts.next() {
                Some(v) => reply::text(&v)?,
                None => return Err(QueueError::Protocol("empty xautoclaim reply".into())),
            };
            raw.extend(reply::entries(parts.next().unwrap_or(Value::Nil))?);
            let wrapped = next == "0-0";
            *cursor = next;
            if wrapped {
                break;
            }
        }
        Ok(raw)
    }

    /// Acknowledges entries of `key`; with `delete`, also removes them from the stream.
    async fn ack(&mut self, key: &str, ids: &[String], delete: bool) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("XACK").arg(key).arg(self.group).arg(ids).ignore();
        if delete {
            pipe.cmd("XDEL").arg(key).arg(ids).ignore();
        }
        self.query_pipe::<()>(&pipe).await
    }
}

/// Sorts raw entries into the good ones and the ones to clean up.
struct Triage<T> {
    /// Decoded entries.
    good: Vec<T>,
    /// Entries deleted while pending: only the pending record is left to clear.
    deleted: Vec<String>,
    /// Entries that cannot be decoded: acknowledged and deleted, never returned.
    malformed: Vec<String>,
}

impl<T> Triage<T> {
    /// Decodes every entry with `decode`, logging the ones it rejects.
    fn of(
        stream: &str,
        entries: Vec<RawEntry>,
        mut decode: impl FnMut(&RawEntry) -> Result<T, String>,
    ) -> Self {
        let mut triage = Triage {
            good: Vec::with_capacity(entries.len()),
            deleted: Vec::new(),
            malformed: Vec::new(),
        };
        for entry in entries {
            if entry.fields.is_none() {
                triage.deleted.push(entry.id);
                continue;
            }
            match decode(&entry) {
                Ok(item) => triage.good.push(item),
                Err(reason) => {
                    tracing::warn!(stream, entry = %entry.id, %reason, "dropping malformed stream entry");
                    triage.malformed.push(entry.id);
                }
            }
        }
        triage
    }

    /// Clears the pending records of deleted entries and removes malformed ones.
    async fn clean(&self, stream: &mut StreamConn, key: &str) -> Result<(), QueueError> {
        stream.ack(key, &self.deleted, false).await?;
        stream.ack(key, &self.malformed, true).await
    }
}

/// Decodes the job envelope of a queue-stream entry.
fn decode_envelope(entry: &RawEntry) -> Result<JobEnvelope, String> {
    let json = entry
        .field(ENVELOPE_FIELD)
        .ok_or_else(|| format!("no {ENVELOPE_FIELD} field"))?;
    JobEnvelope::from_json(json).map_err(|e| e.to_string())
}

/// The outcome of [`QueueReader::reclaim`].
#[derive(Debug, Default)]
pub struct Reclaimed {
    /// Jobs taken over from a consumer that stopped renewing them; run them again.
    pub claimed: Vec<Delivery>,
    /// Jobs claimed more than their `max_stalled` allows; fail them as stalled. They
    /// are pending on this consumer until acknowledged.
    pub stalled: Vec<Delivery>,
}

/// Reads one queue as one consumer of group `workers`, on its own connection: its own
/// pending jobs first (after a restart), then the best ready jobs through `take.lua`,
/// lane by lane in priority order.
pub struct QueueReader {
    /// The dedicated connection.
    stream: StreamConn,
    /// The queue served.
    queue: String,
    /// Its lane streams, in the order they are served ([`Lane::ALL`]).
    lanes: Vec<String>,
    /// `P:q:{queue}:takes`.
    takes: String,
    /// Where reading this consumer's own pending entries goes on from (a lane index
    /// and an entry id); `None` once they are exhausted.
    pending: Option<(usize, String)>,
    /// Per lane, where the next `XAUTOCLAIM` scan of its pending list goes on from.
    autoclaim_cursors: Vec<String>,
    /// The backlog limit, when set ([`QueueReader::limit_backlog`]).
    backlog: Option<BacklogLimit>,
}

/// A `take.lua` reply: the jobs taken and, when there were none, the ids to wait
/// after, and whether the backlog limit held a fresh job back.
type TakeReply = (Vec<RawEntry>, Vec<usize>, Vec<String>, bool);

/// Longest a reader waits for a new entry while the backlog limit holds fresh jobs
/// back: the backlog clears without any entry being added (the last jobs of the
/// started flows end them), so only a new look at it can let the fresh jobs go.
const HELD_RECHECK_MS: u64 = 10;

/// The engine's own readers' backlog limit (see [`QueueReader::limit_backlog`]).
#[derive(Clone, Debug)]
struct BacklogLimit {
    /// Most finished, unapplied reports before fresh jobs wait.
    limit: usize,
    /// `P:completions`.
    completions: String,
}

impl QueueReader {
    /// Connects a consumer of `queue` named `consumer`; fails if Redis cannot be
    /// reached now. Groups are created with the lane streams, by whoever adds the
    /// first job (`enqueue.lua`) or takes from a stream without one (`take.lua`).
    ///
    /// Reuse the consumer name across restarts of the same worker: its pending jobs are
    /// then returned by the first reads.
    pub async fn connect(
        redis_url: &str,
        keys: Keys,
        queue: &str,
        consumer: &str,
    ) -> Result<QueueReader, QueueError> {
        let mut stream = StreamConn::new(redis_url, WORKERS_GROUP, consumer)?;
        stream
            .query::<Value>(&redis::cmd("PING"), COMMAND_TIMEOUT)
            .await?;
        Ok(QueueReader {
            stream,
            queue: queue.to_owned(),
            lanes: keys.lanes(queue),
            takes: keys.takes(queue),
            pending: Some((0, "0".to_owned())),
            autoclaim_cursors: vec!["0-0".to_owned(); LANES],
            backlog: None,
        })
    }

    /// Takes no fresh job (the first job of a flow not yet started) while `limit`
    /// or more of the jobs this consumer was handed are finished but not yet
    /// acknowledged, counting the completion records not yet applied too.
    ///
    /// For the engine's own workers, whose finished jobs are acknowledged once the
    /// engine has applied their reports: a backlog there means the engine is behind,
    /// and starting new flows then only makes every started flow's next node wait
    /// longer (issue 13's burst). Started flows' jobs are never held back.
    pub fn limit_backlog(&mut self, limit: usize, keys: &Keys) {
        self.backlog = (limit > 0).then(|| BacklogLimit {
            limit,
            completions: keys.completions(),
        });
    }

    /// The queue this reader serves.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Decodes raw entries of lane `lane` into deliveries, cleaning up the ones that
    /// cannot be run.
    async fn deliveries(
        &mut self,
        lane: usize,
        entries: Vec<RawEntry>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let Some(key) = self.lanes.get(lane).cloned() else {
            return Err(QueueError::Protocol(format!("no lane {lane}")));
        };
        let triage = Triage::of(&key, entries, |entry| {
            Ok(Delivery {
                queue: self.queue.clone(),
                stream: key.clone(),
                entry_id: entry.id.clone(),
                envelope: decode_envelope(entry)?,
            })
        });
        triage.clean(&mut self.stream, &key).await?;
        Ok(triage.good)
    }

    /// Reads up to `count` jobs: first this consumer's own pending ones, then the best
    /// ready ones (`take.lua`), waiting up to `block_ms` for one to arrive when none is
    /// ready (0: do not wait). An empty result means nothing arrived in time. Entries
    /// that cannot be decoded are acknowledged, deleted and logged, never returned.
    pub async fn read(&mut self, count: usize, block_ms: u64) -> Result<Vec<Delivery>, QueueError> {
        self.read_running(count, 0, block_ms).await
    }

    /// [`QueueReader::read`] for a consumer running `running` of the jobs it was
    /// handed: what the backlog limit leaves out of the backlog.
    pub async fn read_running(
        &mut self,
        count: usize,
        running: usize,
        block_ms: u64,
    ) -> Result<Vec<Delivery>, QueueError> {
        let count = count.max(1);
        while let Some((lane, cursor)) = self.pending.clone() {
            let Some(key) = self.lanes.get(lane).cloned() else {
                self.pending = None;
                break;
            };
            let entries = self
                .stream
                .read_group(&key, &cursor, count, 0, false)
                .await?;
            let Some(last) = entries.last() else {
                self.pending = (lane + 1 < LANES).then(|| (lane + 1, "0".to_owned()));
                continue;
            };
            self.pending = Some((lane, last.id.clone()));
            let good = self.deliveries(lane, entries).await?;
            if !good.is_empty() {
                // On Redis 7.0 reading pending entries resets their idle time and
                // counts a delivery (checked); renewing them at once keeps that true
                // on versions that do not, so that another consumer's reclaim does
                // not take them while they rerun.
                let ids: Vec<(String, String)> = good
                    .iter()
                    .map(|d| (d.stream.clone(), d.entry_id.clone()))
                    .collect();
                self.renew(&ids).await?;
                return Ok(good);
            }
            // A page of pending entries that were all deleted or malformed says
            // nothing about the next page: keep going.
        }
        let (entries, lanes, wait, held) = self.take(count, running).await?;
        if !entries.is_empty() || block_ms == 0 {
            return self.sort_taken(entries, lanes).await;
        }
        let block_ms = if held {
            block_ms.min(HELD_RECHECK_MS)
        } else {
            block_ms
        };
        // Nothing ready: wait for an entry newer than what take.lua saw, in any lane,
        // then take again (someone else may have taken it meanwhile).
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS");
        cmd.arg(&self.lanes);
        cmd.arg(&wait);
        let timeout = Duration::from_millis(block_ms) + BLOCK_MARGIN;
        let woke: Value = self.stream.query(&cmd, timeout).await?;
        if matches!(woke, Value::Nil) {
            return Ok(Vec::new());
        }
        let (entries, lanes, _, _) = self.take(count, running).await?;
        self.sort_taken(entries, lanes).await
    }

    /// Runs `take.lua` for up to `count` jobs.
    async fn take(&mut self, count: usize, running: usize) -> Result<TakeReply, QueueError> {
        let mut invocation = scripts::TAKE.prepare_invoke();
        for lane in &self.lanes {
            invocation.key(lane);
        }
        invocation
            .key(&self.takes)
            .arg(WORKERS_GROUP)
            .arg(&self.stream.consumer)
            .arg(count);
        if let Some(backlog) = &self.backlog {
            invocation
                .key(&backlog.completions)
                .arg(backlog.limit)
                .arg(running);
        }
        let reply: Value = self.stream.invoke(&invocation).await?;
        let mut parts = reply::array(reply)?.into_iter();
        let jobs = reply::array(parts.next().unwrap_or(Value::Nil))?;
        let wait = reply::array(parts.next().unwrap_or(Value::Nil))?
            .iter()
            .map(reply::text)
            .collect::<Result<Vec<_>, _>>()?;
        let held = match parts.next() {
            Some(flag) => reply::int(&flag)? == 1,
            None => false,
        };
        let mut entries = Vec::with_capacity(jobs.len() / 3);
        let mut lanes = Vec::with_capacity(jobs.len() / 3);
        let mut items = jobs.into_iter();
        while let (Some(lane), Some(id), Some(envelope)) =
            (items.next(), items.next(), items.next())
        {
            let lane = usize::try_from(reply::int(&lane)?).unwrap_or(usize::MAX);
            let fields = match envelope {
                Value::BulkString(bytes) => Some(vec![(ENVELOPE_FIELD.to_owned(), bytes)]),
                // An entry without an envelope field: malformed, removed below.
                _ => Some(Vec::new()),
            };
            lanes.push(lane);
            entries.push(RawEntry {
                id: reply::text(&id)?,
                fields,
            });
        }
        if wait.len() != self.lanes.len() && entries.is_empty() {
            return Err(QueueError::Protocol(format!(
                "take.lua returned {} wait ids for {} lanes",
                wait.len(),
                self.lanes.len()
            )));
        }
        Ok((entries, lanes, wait, held))
    }

    /// Decodes the entries `take.lua` returned, lane by lane, keeping their order.
    async fn sort_taken(
        &mut self,
        entries: Vec<RawEntry>,
        lanes: Vec<usize>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut out = Vec::with_capacity(entries.len());
        for (entry, lane) in entries.into_iter().zip(lanes) {
            out.extend(self.deliveries(lane, vec![entry]).await?);
        }
        Ok(out)
    }

    /// Removes consumers of this queue's groups that hold no pending job and have
    /// been idle for more than `idle_ms` (every worker process that started under a
    /// fresh name left one behind). Returns how many were removed.
    pub async fn remove_idle_consumers(&mut self, idle_ms: u64) -> Result<usize, QueueError> {
        let mut removed = 0;
        for key in self.lanes.clone() {
            let mut cmd = redis::cmd("XINFO");
            cmd.arg("CONSUMERS").arg(&key).arg(WORKERS_GROUP);
            let value = match self.stream.query::<Value>(&cmd, COMMAND_TIMEOUT).await {
                Ok(value) => value,
                // A lane never used has no stream (ERR no such key) or no group.
                Err(QueueError::Redis(_)) => continue,
                Err(e) => return Err(e),
            };
            let mut stale = Vec::new();
            for consumer in reply::array(value)? {
                // [name, <name>, pending, <n>, idle, <ms>, ...] (a map in RESP3)
                let fields = reply::array(consumer)?;
                let mut name = None;
                let (mut pending, mut idle) = (1i64, 0i64);
                for pair in fields.chunks(2) {
                    if let [key, value] = pair {
                        match reply::text(key)?.as_str() {
                            "name" => name = Some(reply::text(value)?),
                            "pending" => pending = reply::int(value)?,
                            "idle" => idle = reply::int(value)?,
                            _ => {}
                        }
                    }
                }
                if let Some(name) = name {
                    if pending == 0
                        && u64::try_from(idle).unwrap_or(0) > idle_ms
                        && name != self.stream.consumer
                    {
                        stale.push(name);
                    }
                }
            }
            for name in &stale {
                let mut cmd = redis::cmd("XGROUP");
                cmd.arg("DELCONSUMER")
                    .arg(&key)
                    .arg(WORKERS_GROUP)
                    .arg(name);
                self.stream.query::<Value>(&cmd, COMMAND_TIMEOUT).await?;
            }
            removed += stale.len();
        }
        Ok(removed)
    }

    /// Takes over jobs idle for more than `lease_ms` (their consumer died or stopped
    /// renewing), up to `count`, from every lane. A job claimed more often than its
    /// envelope's `max_stalled` allows is returned in `stalled` for the caller to fail.
    pub async fn reclaim(&mut self, lease_ms: u64, count: usize) -> Result<Reclaimed, QueueError> {
        let mut reclaimed = Reclaimed::default();
        for lane in 0..self.lanes.len() {
            let wanted = count.saturating_sub(reclaimed.claimed.len() + reclaimed.stalled.len());
            if wanted == 0 {
                break;
            }
            let key = self.lanes[lane].clone();
            let mut cursor = std::mem::take(&mut self.autoclaim_cursors[lane]);
            let raw = self
                .stream
                .autoclaim(&key, lease_ms, wanted, &mut cursor, false)
                .await;
            self.autoclaim_cursors[lane] = if cursor.is_empty() {
                "0-0".to_owned()
            } else {
                cursor
            };
            let good = self.deliveries(lane, raw?).await?;
            if good.is_empty() {
                continue;
            }
            // XAUTOCLAIM counted this claim as a delivery; read the counts back.
            let mut pipe = redis::pipe();
            for delivery in &good {
                pipe.cmd("XPENDING")
                    .arg(&key)
                    .arg(WORKERS_GROUP)
                    .arg(&delivery.entry_id)
                    .arg(&delivery.entry_id)
                    .arg(1);
            }
            let replies: Vec<Value> = self.stream.query_pipe(&pipe).await?;
            for (delivery, pending) in good.into_iter().zip(replies) {
                // [[id, consumer, idle ms, delivery count]]
                let times_delivered = match reply::array(pending)?.into_iter().next() {
                    Some(row) => match reply::array(row)?.get(3) {
                        Some(n) => u64::try_from(reply::int(n)?).unwrap_or(0),
                        None => 0,
                    },
                    // Acknowledged meanwhile: someone finished it, nothing to do.
                    None => continue,
                };
                if times_delivered > u64::from(delivery.envelope.max_stalled) + 1 {
                    reclaimed.stalled.push(delivery);
                } else {
                    reclaimed.claimed.push(delivery);
                }
            }
        }
        Ok(reclaimed)
    }

    /// Renews the lease of jobs this consumer is running, given as (lane stream,
    /// entry id): resets their idle time so that no one reclaims them. Call it well
    /// within the lease.
    pub async fn renew(&mut self, jobs: &[(String, String)]) -> Result<(), QueueError> {
        let mut by_stream: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for (stream, id) in jobs {
            by_stream.entry(stream).or_default().push(id);
        }
        for (stream, ids) in by_stream {
            let mut cmd = redis::cmd("XCLAIM");
            cmd.arg(stream)
                .arg(WORKERS_GROUP)
                .arg(&self.stream.consumer)
                .arg(0)
                .arg(&ids)
                .arg("JUSTID");
            self.stream
                .group_query(stream, &cmd, COMMAND_TIMEOUT, false)
                .await?;
        }
        Ok(())
    }
}

/// Reads `P:completions` as one consumer of group `engine`, on its own connection.
pub struct CompletionReader {
    /// The dedicated connection.
    stream: StreamConn,
    /// `P:completions`.
    key: String,
    /// Where reading this consumer's own unacknowledged records goes on from; `None`
    /// once they are exhausted and reads wait for new records (`>`).
    pending_cursor: Option<String>,
    /// Where the next pass over stale records goes on (`0-0`: from the start).
    stale_cursor: String,
}

impl CompletionReader {
    /// Connects the consumer `consumer`, creating the group if missing. Reuse the name
    /// across restarts so that unacknowledged records are read again first.
    pub async fn connect(
        redis_url: &str,
        keys: Keys,
        consumer: &str,
    ) -> Result<CompletionReader, QueueError> {
        let mut stream = StreamConn::new(redis_url, ENGINE_GROUP, consumer)?;
        let key = keys.completions();
        stream.ensure_group(&key).await?;
        Ok(CompletionReader {
            stream,
            key,
            pending_cursor: Some("0".to_owned()),
            stale_cursor: "0-0".to_owned(),
        })
    }

    /// Records read (by any consumer of the group, this one included) but not
    /// acknowledged for more than `min_idle_ms`: taken over by this consumer and
    /// returned to be routed again, up to `count` per call.
    ///
    /// This is what owns a record between a read and its ack: a record handed to a
    /// flow actor that then stopped or failed (its mailbox dropped) would otherwise
    /// stay pending forever. Routing it twice is harmless; the state machine ignores
    /// a report it already applied, and the ack is idempotent.
    pub async fn claim_stale(
        &mut self,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<CompletionRecord>, QueueError> {
        let raw = self
            .stream
            .autoclaim(&self.key, min_idle_ms, count, &mut self.stale_cursor, true)
            .await?;
        self.records(raw).await
    }

    /// Decodes records, cleaning up the ones that cannot be.
    async fn records(&mut self, raw: Vec<RawEntry>) -> Result<Vec<CompletionRecord>, QueueError> {
        let triage = Triage::of(&self.key, raw, |entry| {
            CompletionRecord::from_fields(&entry.id, entry.fields.as_deref().unwrap_or(&[]))
        });
        triage.clean(&mut self.stream, &self.key).await?;
        Ok(triage.good)
    }

    /// Reads up to `count` records: first this consumer's unacknowledged ones, then new
    /// ones, waiting up to `block_ms` (0: do not wait). Malformed records are
    /// acknowledged, deleted and logged, never returned.
    pub async fn read(
        &mut self,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<CompletionRecord>, QueueError> {
        while let Some(cursor) = self.pending_cursor.clone() {
            let entries = self
                .stream
                .read_group(&self.key, &cursor, count, 0, true)
                .await?;
            let Some(last) = entries.last() else {
                self.pending_cursor = None;
                break;
            };
            self.pending_cursor = Some(last.id.clone());
            let good = self.records(entries).await?;
            if !good.is_empty() {
                return Ok(good);
            }
        }
        let entries = self
            .stream
            .read_group(&self.key, ">", count, block_ms, true)
            .await?;
        self.records(entries).await
    }
}
