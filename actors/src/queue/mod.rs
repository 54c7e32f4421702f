//! The Redis queue: ready jobs on one stream per queue, retries in a delayed set per
//! queue, one jobs hash per flow, completions from remote workers on one stream, cancel
//! on a pub/sub channel, worker heartbeats in a hash.
//!
//! This is the only module that imports redis. The protocol it speaks is documented for
//! workers in other languages in `docs/PROTOCOL.md`; anything multi-key and atomic is a
//! Lua script in `lua/`. [`Queue`] is the shared, non-blocking client; blocking reads go
//! through [`QueueReader`], [`CompletionReader`] and [`CancelListener`], each on its own
//! connection.

mod cancel;
mod envelope;
mod error;
mod keys;
mod reader;
mod reply;
mod scripts;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;

pub use cancel::CancelListener;
pub use envelope::{
    job_field, job_id, CompletionRecord, Delivery, JobEnvelope, LocalAck, NewJob, Outcome,
    COMPLETION_VERSION, ENVELOPE_FIELD, ENVELOPE_VERSION,
};
pub use error::QueueError;
pub use keys::{Keys, DEFAULT_PREFIX, ENGINE_GROUP, WORKERS_GROUP};
pub use reader::{CompletionReader, QueueReader, Reclaimed};

/// How long the shared client waits to establish a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Response timeout of the shared client. Above redis-rs's 500 ms default so that a
/// large flow's enqueue or cleanup script is not cut off; nothing blocks on this client.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Heartbeat interval assumed for workers whose heartbeat does not say (`intervalMs`).
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 5_000;

/// Most jobs acknowledged by one script call, so that a huge batch does not hold Redis
/// for long.
const ACK_CHUNK: usize = 512;

/// How often `cleanup_flow` re-reads a flow that gained a queue while being removed.
const CLEANUP_ATTEMPTS: usize = 5;

/// The shared client for everything that does not block: enqueue, acknowledge, report,
/// clean up, publish. Cheap to clone; all clones share one multiplexed connection that
/// reconnects by itself.
#[derive(Clone)]
pub struct Queue {
    /// The multiplexed connection; never given a blocking command.
    conn: ConnectionManager,
    /// Key names.
    keys: Keys,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("keys", &self.keys).finish()
    }
}

/// Milliseconds since the epoch by this machine's clock.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Queue {
    /// Connects to Redis; fails if it cannot be reached now.
    pub async fn connect(redis_url: &str, keys: Keys) -> Result<Queue, QueueError> {
        let client = redis::Client::open(redis_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Queue { conn, keys })
    }

    /// The key names this client uses.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Checks that Redis answers (readiness probe).
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Adds jobs of one flow, idempotently: a job whose `{node}:{attempt}` field already
    /// exists in the flow's jobs hash is left alone, whatever its state, so re-enqueueing
    /// after a crash never duplicates a job. A job with `delay_ms > 0` waits in its
    /// queue's delayed set until [`QueueReader::promote_delayed`] moves it. One atomic
    /// script for all the jobs.
    pub async fn enqueue(&self, flow_id: &str, jobs: &[NewJob]) -> Result<(), QueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut invocation = scripts::ENQUEUE.prepare_invoke();
        invocation
            .key(self.keys.flow_jobs(flow_id))
            .arg(WORKERS_GROUP);
        for job in jobs {
            let envelope = &job.envelope;
            if envelope.flow_id != flow_id {
                return Err(QueueError::Envelope(format!(
                    "job {} belongs to flow {}, not {flow_id}",
                    envelope.id, envelope.flow_id
                )));
            }
            let due = if job.delay_ms > 0 {
                now.saturating_add(job.delay_ms)
            } else {
                0
            };
            invocation
                .key(self.keys.queue(&envelope.queue))
                .key(self.keys.delayed(&envelope.queue))
                .arg(envelope.job_field())
                .arg(&envelope.queue)
                .arg(due)
                .arg(envelope.to_json()?);
        }
        let mut conn = self.conn.clone();
        invocation.invoke_async::<i64>(&mut conn).await?;
        Ok(())
    }

    /// Acknowledges jobs that workers of this process finished, after the flow actor
    /// made their results durable: `XACK` + `XDEL` each entry and mark its job "done"
    /// (unless its flow was deleted meanwhile). Idempotent.
    pub async fn ack_local(&self, acks: &[LocalAck]) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        for chunk in acks.chunks(ACK_CHUNK) {
            let mut invocation = scripts::ACK.prepare_invoke();
            invocation.arg(WORKERS_GROUP);
            for ack in chunk {
                invocation
                    .key(self.keys.queue(&ack.queue))
                    .key(self.keys.flow_jobs(&ack.flow_id))
                    .arg(&ack.entry_id)
                    .arg(&ack.job_field);
            }
            invocation.invoke_async::<i64>(&mut conn).await?;
        }
        Ok(())
    }

    /// Acknowledges and deletes completion records once the flow actors applied them
    /// durably. Idempotent.
    pub async fn ack_completions(&self, entry_ids: &[String]) -> Result<(), QueueError> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let key = self.keys.completions();
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&key)
            .arg(ENGINE_GROUP)
            .arg(entry_ids)
            .ignore();
        pipe.cmd("XDEL").arg(&key).arg(entry_ids).ignore();
        let mut conn = self.conn.clone();
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => Ok(()),
            // The group is gone only if Redis lost its data; then so are the records.
            Err(e) if e.code() == Some("NOGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes everything Redis holds for a flow: its entries in every queue stream
    /// (acknowledged first, so no consumer keeps them pending), its delayed entries and
    /// its jobs hash, atomically. Completion records already on `P:completions` stay:
    /// the router acknowledges and drops records of unknown flows.
    pub async fn cleanup_flow(&self, flow_id: &str) -> Result<(), QueueError> {
        let hash = self.keys.flow_jobs(flow_id);
        let mut conn = self.conn.clone();
        // The script must be told every queue the flow used, to declare their keys; read
        // them first. The script re-checks and asks again if a queue was added meanwhile.
        let values: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&hash)
            .query_async(&mut conn)
            .await?;
        let mut queues: BTreeSet<String> = values
            .values()
            .filter_map(|v| serde_json::from_str::<JobState>(v).ok())
            .map(|state| state.q)
            .collect();
        for _ in 0..CLEANUP_ATTEMPTS {
            let mut invocation = scripts::CLEANUP.prepare_invoke();
            invocation.key(&hash).arg(WORKERS_GROUP);
            for queue in &queues {
                invocation
                    .key(self.keys.queue(queue))
                    .key(self.keys.delayed(queue))
                    .arg(queue);
            }
            match invocation.invoke_async::<Value>(&mut conn).await? {
                Value::Int(_) => return Ok(()),
                missing => {
                    for value in reply::array(missing)? {
                        queues.insert(reply::text(&value)?);
                    }
                }
            }
        }
        Err(QueueError::CleanupContended(flow_id.to_owned()))
    }

    /// Tells every worker to stop the running handlers of these jobs (`PUBLISH` on
    /// `P:cancel`, one message per job id).
    pub async fn publish_cancel(&self, job_ids: &[String]) -> Result<(), QueueError> {
        if job_ids.is_empty() {
            return Ok(());
        }
        let channel = self.keys.cancel_channel();
        let mut pipe = redis::pipe();
        for id in job_ids {
            pipe.cmd("PUBLISH").arg(&channel).arg(id).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Reports, for a worker outside the engine's process, what happened to a job: adds
    /// a record to `P:completions` and, when the outcome ends the job, acknowledges,
    /// deletes and marks it done, all in one atomic script. Progress and started only
    /// add the record.
    pub async fn report_remote(
        &self,
        delivery: &Delivery,
        outcome: &Outcome,
    ) -> Result<(), QueueError> {
        let envelope = &delivery.envelope;
        let outcome_json = serde_json::to_string(outcome)?;
        let mut invocation = scripts::REPORT.prepare_invoke();
        invocation
            .key(self.keys.completions())
            .key(self.keys.queue(&delivery.queue))
            .key(self.keys.flow_jobs(&envelope.flow_id))
            .arg(WORKERS_GROUP)
            .arg(ENGINE_GROUP)
            .arg(&delivery.entry_id)
            .arg(envelope.job_field())
            .arg(if outcome.is_final() { "1" } else { "0" })
            .arg("v")
            .arg(COMPLETION_VERSION)
            .arg("flow")
            .arg(&envelope.flow_id)
            .arg("node")
            .arg(&envelope.node)
            .arg("attempt")
            .arg(envelope.attempt)
            .arg("job")
            .arg(&envelope.id)
            .arg("outcome")
            .arg(outcome_json);
        let mut conn = self.conn.clone();
        invocation.invoke_async::<Value>(&mut conn).await?;
        Ok(())
    }

    /// Sets `P:marker` to `value` unless it exists. Returns true when it was missing: Redis
    /// is new or lost its data since the engine last set it, so the jobs it held must be
    /// enqueued again from the snapshots.
    pub async fn ensure_marker(&self, value: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("SET")
            .arg(self.keys.marker())
            .arg(value)
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        Ok(!matches!(reply, Value::Nil))
    }

    /// Records that a worker is alive: `info` (a JSON object such as
    /// `{"queues":[...],"handlers":[...],"intervalMs":5000}`) is stored under its id with
    /// `ts` set from the Redis clock, and workers silent for more than three of their
    /// intervals are forgotten.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        info: &serde_json::Value,
    ) -> Result<(), QueueError> {
        let mut object = match info {
            serde_json::Value::Object(map) => map.clone(),
            other => {
                let mut map = serde_json::Map::new();
                map.insert("info".to_owned(), other.clone());
                map
            }
        };
        // The script sets ts; one given here would appear twice.
        object.remove("ts");
        let json = serde_json::to_string(&object)?;
        let mut invocation = scripts::HEARTBEAT.prepare_invoke();
        invocation
            .key(self.keys.workers())
            .arg(worker_id)
            .arg(json)
            .arg(DEFAULT_HEARTBEAT_INTERVAL_MS);
        let mut conn = self.conn.clone();
        invocation.invoke_async::<i64>(&mut conn).await?;
        Ok(())
    }

    /// The live workers' heartbeats, by worker id (for status pages and metrics).
    pub async fn workers(&self) -> Result<Vec<(String, serde_json::Value)>, QueueError> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.keys.workers())
            .query_async(&mut conn)
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|(id, json)| Some((id, serde_json::from_str(&json).ok()?)))
            .collect())
    }

    /// The raw state of each job of a flow, by `{node}:{attempt}`: `"done"` or a small
    /// JSON object (see `docs/PROTOCOL.md`). For diagnostics and tests.
    pub async fn job_states(&self, flow_id: &str) -> Result<HashMap<String, String>, QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("HGETALL")
            .arg(self.keys.flow_jobs(flow_id))
            .query_async(&mut conn)
            .await?)
    }

    /// How many entries the queue's stream holds (ready or running) and how many jobs
    /// wait in its delayed set, for metrics and the benchmark.
    pub async fn depth(&self, queue: &str) -> Result<(u64, u64), QueueError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN").arg(self.keys.queue(queue));
        pipe.cmd("ZCARD").arg(self.keys.delayed(queue));
        let mut conn = self.conn.clone();
        Ok(pipe.query_async(&mut conn).await?)
    }
}

/// The part of a jobs-hash value `cleanup_flow` needs: the queue the job is on.
#[derive(serde::Deserialize)]
struct JobState {
    /// The queue name.
    q: String,
}
