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
use super::keys::{Keys, ENGINE_GROUP, WORKERS_GROUP};
use super::reply::{self, RawEntry};

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

/// One consumer's dedicated connection to one stream of one group, with the state of its
/// pending-first reading.
struct StreamConn {
    /// Opens the connection again after it broke.
    client: redis::Client,
    /// The live connection; `None` after a connection error, reopened on next use.
    conn: Option<MultiplexedConnection>,
    /// The stream key.
    key: String,
    /// The consumer group.
    group: &'static str,
    /// This consumer's name within the group.
    consumer: String,
    /// Where reading this consumer's own pending entries goes on from; `None` once they
    /// are exhausted and reads wait for new entries (`>`).
    pending_cursor: Option<String>,
}

impl StreamConn {
    /// Connects and makes sure the group exists.
    async fn open(
        redis_url: &str,
        key: String,
        group: &'static str,
        consumer: &str,
    ) -> Result<Self, QueueError> {
        let mut stream = StreamConn {
            client: redis::Client::open(redis_url)?,
            conn: None,
            key,
            group,
            consumer: consumer.to_owned(),
            pending_cursor: Some("0".to_owned()),
        };
        stream.ensure_group().await?;
        Ok(stream)
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
    async fn ensure_group(&mut self) -> Result<(), QueueError> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&self.key)
            .arg(self.group)
            .arg("0")
            .arg("MKSTREAM");
        match self.query::<Value>(&cmd, COMMAND_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(QueueError::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs a group command; on `NOGROUP` (Redis restarted empty) recreates the group and
    /// returns `None`, since a fresh group holds nothing for this consumer.
    async fn group_query(
        &mut self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<Option<Value>, QueueError> {
        match self.query::<Value>(cmd, timeout).await {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_no_group() => {
                tracing::warn!(stream = %self.key, group = self.group, "consumer group missing, recreating it");
                self.ensure_group().await?;
                self.pending_cursor = None;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads a batch: this consumer's own pending entries while there are any (the flag
    /// is then true), afterwards new entries, blocking up to `block_ms` (0: no block).
    async fn read_raw(
        &mut self,
        count: usize,
        block_ms: u64,
    ) -> Result<(Vec<RawEntry>, bool), QueueError> {
        let count = count.max(1);
        if let Some(cursor) = self.pending_cursor.clone() {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(count)
                .arg("STREAMS")
                .arg(&self.key)
                .arg(&cursor);
            let entries = match self.group_query(&cmd, COMMAND_TIMEOUT).await? {
                Some(value) => reply::read_reply(value)?,
                None => Vec::new(),
            };
            if let Some(last) = entries.last() {
                self.pending_cursor = Some(last.id.clone());
                return Ok((entries, true));
            }
            self.pending_cursor = None;
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        let mut timeout = COMMAND_TIMEOUT;
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
            timeout = Duration::from_millis(block_ms) + BLOCK_MARGIN;
        }
        cmd.arg("STREAMS").arg(&self.key).arg(">");
        let entries = match self.group_query(&cmd, timeout).await? {
            Some(value) => reply::read_reply(value)?,
            None => Vec::new(),
        };
        Ok((entries, false))
    }

    /// Takes over up to `count` entries of the group pending for more than
    /// `min_idle_ms` (`XAUTOCLAIM`, a claim that counts as a delivery), scanning on
    /// from `cursor` for at most [`MAX_AUTOCLAIM_ROUNDS`] calls and leaving the cursor
    /// where the next scan goes on (`0-0` after a full pass).
    async fn autoclaim(
        &mut self,
        min_idle_ms: u64,
        count: usize,
        cursor: &mut String,
    ) -> Result<Vec<RawEntry>, QueueError> {
        let mut raw = Vec::new();
        for _ in 0..MAX_AUTOCLAIM_ROUNDS {
            if raw.len() >= count {
                break;
            }
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&self.key)
                .arg(self.group)
                .arg(&self.consumer)
                .arg(min_idle_ms)
                .arg(cursor.as_str())
                .arg("COUNT")
                .arg(count - raw.len());
            let Some(value) = self.group_query(&cmd, COMMAND_TIMEOUT).await? else {
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

    /// Acknowledges entries; with `delete`, also removes them from the stream.
    async fn ack(&mut self, ids: &[String], delete: bool) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&self.key)
            .arg(self.group)
            .arg(ids)
            .ignore();
        if delete {
            pipe.cmd("XDEL").arg(&self.key).arg(ids).ignore();
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
    async fn clean(&self, stream: &mut StreamConn) -> Result<(), QueueError> {
        stream.ack(&self.deleted, false).await?;
        stream.ack(&self.malformed, true).await
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

/// Reads one queue's stream as one consumer of group `workers`, on its own connection.
pub struct QueueReader {
    /// The dedicated connection and pending-first state.
    stream: StreamConn,
    /// The queue served.
    queue: String,
    /// Where the next `XAUTOCLAIM` scan of the pending list goes on from.
    autoclaim_cursor: String,
}

impl QueueReader {
    /// Connects a consumer of `queue` named `consumer`, creating the group if missing.
    ///
    /// Reuse the consumer name across restarts of the same worker: its pending jobs are
    /// then returned by the first reads.
    pub async fn connect(
        redis_url: &str,
        keys: Keys,
        queue: &str,
        consumer: &str,
    ) -> Result<QueueReader, QueueError> {
        let stream =
            StreamConn::open(redis_url, keys.queue(queue), WORKERS_GROUP, consumer).await?;
        Ok(QueueReader {
            stream,
            queue: queue.to_owned(),
            autoclaim_cursor: "0-0".to_owned(),
        })
    }

    /// The queue this reader serves.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Reads up to `count` jobs: first this consumer's own pending ones, then new ones,
    /// waiting up to `block_ms` for them (0: do not wait). An empty result means nothing
    /// arrived in time. Entries that cannot be decoded are acknowledged, deleted and
    /// logged, never returned.
    pub async fn read(&mut self, count: usize, block_ms: u64) -> Result<Vec<Delivery>, QueueError> {
        loop {
            let (entries, from_pending) = self.stream.read_raw(count, block_ms).await?;
            let triage = Triage::of(&self.stream.key, entries, |entry| {
                Ok(Delivery {
                    queue: self.queue.clone(),
                    entry_id: entry.id.clone(),
                    envelope: decode_envelope(entry)?,
                })
            });
            triage.clean(&mut self.stream).await?;
            if from_pending && !triage.good.is_empty() {
                // On Redis 7.0 reading pending entries resets their idle time and counts
                // a delivery (checked); renewing them at once keeps that true on versions
                // that do not, so that another consumer's reclaim does not take them
                // while they rerun.
                let ids: Vec<String> = triage.good.iter().map(|d| d.entry_id.clone()).collect();
                self.renew(&ids).await?;
            }
            // A page of pending entries that were all deleted or malformed says nothing
            // about the next page: keep going rather than report "nothing arrived".
            if !from_pending || !triage.good.is_empty() {
                return Ok(triage.good);
            }
        }
    }

    /// Removes consumers of this queue's group that hold no pending job and have
    /// been idle for more than `idle_ms` (every worker process that started under a
    /// fresh name left one behind). Returns how many were removed.
    pub async fn remove_idle_consumers(&mut self, idle_ms: u64) -> Result<usize, QueueError> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("CONSUMERS")
            .arg(&self.stream.key)
            .arg(WORKERS_GROUP);
        let Some(value) = self.stream.group_query(&cmd, COMMAND_TIMEOUT).await? else {
            return Ok(0);
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
                .arg(&self.stream.key)
                .arg(WORKERS_GROUP)
                .arg(name);
            self.stream.query::<Value>(&cmd, COMMAND_TIMEOUT).await?;
        }
        Ok(stale.len())
    }

    /// Takes over jobs idle for more than `lease_ms` (their consumer died or stopped
    /// renewing), up to `count`. A job claimed more often than its envelope's
    /// `max_stalled` allows is returned in `stalled` for the caller to fail.
    pub async fn reclaim(&mut self, lease_ms: u64, count: usize) -> Result<Reclaimed, QueueError> {
        let raw = self
            .stream
            .autoclaim(lease_ms, count, &mut self.autoclaim_cursor)
            .await?;
        let triage = Triage::of(&self.stream.key, raw, |entry| {
            Ok(Delivery {
                queue: self.queue.clone(),
                entry_id: entry.id.clone(),
                envelope: decode_envelope(entry)?,
            })
        });
        triage.clean(&mut self.stream).await?;
        if triage.good.is_empty() {
            return Ok(Reclaimed::default());
        }

        // XAUTOCLAIM counted this claim as a delivery; read the counts back.
        let mut pipe = redis::pipe();
        for delivery in &triage.good {
            pipe.cmd("XPENDING")
                .arg(&self.stream.key)
                .arg(WORKERS_GROUP)
                .arg(&delivery.entry_id)
                .arg(&delivery.entry_id)
                .arg(1);
        }
        let replies: Vec<Value> = self.stream.query_pipe(&pipe).await?;
        let mut reclaimed = Reclaimed::default();
        for (delivery, pending) in triage.good.into_iter().zip(replies) {
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
        Ok(reclaimed)
    }

    /// Renews the lease of jobs this consumer is running: resets their idle time so
    /// that no one reclaims them. Call it well within the lease.
    pub async fn renew(&mut self, entry_ids: &[String]) -> Result<(), QueueError> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.stream.key)
            .arg(WORKERS_GROUP)
            .arg(&self.stream.consumer)
            .arg(0)
            .arg(entry_ids)
            .arg("JUSTID");
        self.stream.group_query(&cmd, COMMAND_TIMEOUT).await?;
        Ok(())
    }
}

/// Reads `P:completions` as one consumer of group `engine`, on its own connection.
pub struct CompletionReader {
    /// The dedicated connection and pending-first state.
    stream: StreamConn,
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
        let stream =
            StreamConn::open(redis_url, keys.completions(), ENGINE_GROUP, consumer).await?;
        Ok(CompletionReader {
            stream,
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
            .autoclaim(min_idle_ms, count, &mut self.stale_cursor)
            .await?;
        let triage = Triage::of(&self.stream.key, raw, |entry| {
            CompletionRecord::from_fields(&entry.id, entry.fields.as_deref().unwrap_or(&[]))
        });
        triage.clean(&mut self.stream).await?;
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
        loop {
            let (entries, from_pending) = self.stream.read_raw(count, block_ms).await?;
            let triage = Triage::of(&self.stream.key, entries, |entry| {
                CompletionRecord::from_fields(&entry.id, entry.fields.as_deref().unwrap_or(&[]))
            });
            triage.clean(&mut self.stream).await?;
            if !from_pending || !triage.good.is_empty() {
                return Ok(triage.good);
            }
        }
    }
}
