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
mod stats;

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;

pub use cancel::CancelListener;
pub use envelope::{
    job_field, job_id, CompletionRecord, Delivery, JobEnvelope, LocalAck, NewJob, Outcome,
    COMPLETION_VERSION, ENVELOPE_FIELD, ENVELOPE_VERSION,
};
pub use error::QueueError;
pub use keys::{Keys, Lane, DEFAULT_PREFIX, ENGINE_GROUP, LANES, WORKERS_GROUP};
pub use reader::{CompletionReader, QueueReader, Reclaimed};
pub use stats::{HeldKey, HeldKind, LiveWorker, PriorityCounts, QueueStats};

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

/// Due retries moved per promote script call.
const PROMOTE_BATCH: usize = 256;

/// Most promotion batches one `promote_due` call runs, so a huge backlog is promoted
/// over several ticks rather than in one long call.
const MAX_PROMOTE_BATCHES: usize = 16;

/// What Redis holds for a job the snapshot says is queued or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobCheck {
    /// Its stream entry or delayed member is there.
    Present,
    /// Gone: no field, or a field whose entry or member is missing.
    Lost,
    /// Its field says a worker reported it, but the snapshot does not hold the
    /// outcome: in flight, or its completion record was lost.
    ReportedNotApplied,
}

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

use crate::clock::now_ms;

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
        error::failpoint!("queue::enqueue");
        if jobs.is_empty() {
            return Ok(());
        }
        self.invoke_jobs(&scripts::ENQUEUE, flow_id, jobs).await?;
        Ok(())
    }

    /// Puts back jobs that Redis lost although the flow's snapshot says they are
    /// queued or running: a missing field, a field whose stream entry or delayed
    /// member is gone, or a field marked done whose outcome the engine never applied
    /// (its completion record was lost). Jobs that are fine are left alone. Returns
    /// how many were put back.
    pub async fn repair_jobs(&self, flow_id: &str, jobs: &[NewJob]) -> Result<usize, QueueError> {
        error::failpoint!("queue::enqueue");
        if jobs.is_empty() {
            return Ok(0);
        }
        let repaired = self.invoke_jobs(&scripts::REPAIR, flow_id, jobs).await?;
        Ok(usize::try_from(repaired).unwrap_or(0))
    }

    /// Runs `enqueue.lua` or `repair.lua`, which take the same keys and arguments.
    async fn invoke_jobs(
        &self,
        script: &redis::Script,
        flow_id: &str,
        jobs: &[NewJob],
    ) -> Result<i64, QueueError> {
        let now = now_ms();
        let mut invocation = script.prepare_invoke();
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
            let lane = job.lane();
            invocation
                .key(self.keys.lane(&envelope.queue, lane))
                .key(self.keys.delayed(&envelope.queue))
                .arg(envelope.job_field())
                .arg(&envelope.queue)
                .arg(due)
                .arg(lane.index())
                .arg(job.limits_json())
                .arg(envelope.to_json()?);
        }
        invocation.key(self.keys.delayed_queues());
        let mut conn = self.conn.clone();
        Ok(invocation.invoke_async::<i64>(&mut conn).await?)
    }

    /// Compares jobs a flow's snapshot says are queued or running (`(field, queue,
    /// lane)`) with what Redis holds for them; one [`JobCheck`] per job, in order.
    pub async fn check_jobs(
        &self,
        flow_id: &str,
        jobs: &[(String, String, Lane)],
    ) -> Result<Vec<JobCheck>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = scripts::CHECK.prepare_invoke();
        invocation.key(self.keys.flow_jobs(flow_id));
        for (field, queue, lane) in jobs {
            invocation
                .key(self.keys.lane(queue, *lane))
                .key(self.keys.delayed(queue))
                .arg(field);
        }
        let mut conn = self.conn.clone();
        let codes: Vec<i64> = invocation.invoke_async(&mut conn).await?;
        Ok(codes
            .into_iter()
            .map(|c| match c {
                0 => JobCheck::Present,
                4 => JobCheck::ReportedNotApplied,
                _ => JobCheck::Lost,
            })
            .collect())
    }

    /// Acknowledges jobs that workers of this process finished, after the flow actor
    /// made their results durable: `XACK` + `XDEL` each entry and mark its job "done"
    /// (unless its flow was deleted meanwhile). Idempotent.
    ///
    /// Takes the acks or references to them (a flow actor acks from the reports it
    /// holds, without copying them).
    pub async fn ack_local<A: std::borrow::Borrow<LocalAck>>(
        &self,
        acks: &[A],
    ) -> Result<(), QueueError> {
        error::failpoint!("queue::ack_local");
        let mut conn = self.conn.clone();
        for chunk in acks.chunks(ACK_CHUNK) {
            let mut invocation = scripts::ACK.prepare_invoke();
            invocation.arg(WORKERS_GROUP);
            for ack in chunk {
                let ack = ack.borrow();
                invocation
                    .key(&ack.stream)
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
    pub async fn ack_completions<S: AsRef<str>>(&self, entry_ids: &[S]) -> Result<(), QueueError> {
        error::failpoint!("queue::ack_completions");
        if entry_ids.is_empty() {
            return Ok(());
        }
        let key = self.keys.completions();
        let ids: Vec<&str> = entry_ids.iter().map(AsRef::as_ref).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&key)
            .arg(ENGINE_GROUP)
            .arg(&ids)
            .ignore();
        pipe.cmd("XDEL").arg(&key).arg(&ids).ignore();
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
        error::failpoint!("queue::cleanup");
        // One script: it finds every key of the flow's jobs from their fields.
        let mut invocation = scripts::CLEANUP.prepare_invoke();
        invocation
            .key(self.keys.flow_jobs(flow_id))
            .arg(WORKERS_GROUP);
        let mut conn = self.conn.clone();
        invocation.invoke_async::<i64>(&mut conn).await?;
        Ok(())
    }

    /// Tells every worker to stop the running handlers of these jobs (`PUBLISH` on
    /// `P:cancel`, one message per job id).
    pub async fn publish_cancel(&self, job_ids: &[String]) -> Result<(), QueueError> {
        error::failpoint!("queue::publish_cancel");
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
        self.report_job(
            &delivery.stream,
            &delivery.entry_id,
            &envelope.flow_id,
            &envelope.node,
            envelope.attempt,
            outcome,
        )
        .await
    }

    /// [`Queue::report_remote`] from the job's parts: a report that a flow actor of
    /// this process could not take (it stopped or failed with the report in its
    /// mailbox) is handed to the completions stream this way, where Redis owns it.
    pub async fn report_job(
        &self,
        stream: &str,
        entry_id: &str,
        flow_id: &str,
        node: &str,
        attempt: u32,
        outcome: &Outcome,
    ) -> Result<(), QueueError> {
        error::failpoint!("queue::report");
        let outcome_json = serde_json::to_string(outcome)?;
        let mut invocation = scripts::REPORT.prepare_invoke();
        invocation
            .key(self.keys.completions())
            .key(stream)
            .key(self.keys.flow_jobs(flow_id))
            .arg(WORKERS_GROUP)
            .arg(ENGINE_GROUP)
            .arg(entry_id)
            .arg(job_field(node, attempt))
            .arg(if outcome.is_final() { "1" } else { "0" })
            .arg("v")
            .arg(COMPLETION_VERSION)
            .arg("flow")
            .arg(flow_id)
            .arg("node")
            .arg(node)
            .arg("attempt")
            .arg(attempt)
            .arg("job")
            .arg(job_id(flow_id, node, attempt))
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

    /// Moves the due retries of every queue that has delayed jobs into its stream,
    /// whoever serves the queue (a queue served only by workers in other processes
    /// or languages included). Returns how many moved.
    pub async fn promote_all_due(&self, now_ms: u64) -> Result<usize, QueueError> {
        let mut conn = self.conn.clone();
        let queues: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.delayed_queues())
            .query_async(&mut conn)
            .await?;
        let mut moved = 0;
        for queue in queues {
            moved += self.promote_due(&queue, now_ms).await?;
        }
        Ok(moved)
    }

    /// Moves jobs of `queue` whose retry backoff ended by `now_ms` from the delayed
    /// set into their lane streams, atomically per batch. Returns how many moved.
    pub async fn promote_due(&self, queue: &str, now_ms: u64) -> Result<usize, QueueError> {
        error::failpoint!("queue::promote");
        let delayed = self.keys.delayed(queue);
        let mut conn = self.conn.clone();
        let mut moved = 0usize;
        for _ in 0..MAX_PROMOTE_BATCHES {
            let members: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
                .arg(&delayed)
                .arg("-inf")
                .arg(now_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(PROMOTE_BATCH)
                .query_async(&mut conn)
                .await?;
            if members.is_empty() {
                break;
            }
            let mut invocation = scripts::PROMOTE.prepare_invoke();
            invocation.key(&delayed).arg(WORKERS_GROUP).arg(queue);
            for member in &members {
                match JobEnvelope::from_json(member) {
                    Ok(envelope) => {
                        // A retry: its flow has started, so never the fresh lane.
                        let lane = Lane::new(envelope.priority, false);
                        invocation
                            .key(self.keys.flow_jobs(&envelope.flow_id))
                            .key(self.keys.lane(queue, lane))
                            .arg(member.as_slice())
                            .arg(envelope.job_field())
                            .arg(lane.index());
                    }
                    Err(e) => {
                        tracing::warn!(delayed = %delayed, error = %e, "dropping malformed delayed job");
                        invocation
                            .key(&delayed)
                            .key(&delayed)
                            .arg(member.as_slice())
                            .arg("")
                            .arg(0);
                    }
                }
            }
            let batch: i64 = invocation.invoke_async(&mut conn).await?;
            moved += usize::try_from(batch).unwrap_or(0);
            if members.len() < PROMOTE_BATCH {
                break;
            }
        }
        Ok(moved)
    }

    /// Releases jobs waiting for rate-limit tokens whose tokens are free now (at most
    /// `budget`). Returns how many were released and when (ms since the epoch, by
    /// the Redis clock) the next waiting key's token frees, if any: the caller sleeps
    /// until then.
    pub async fn release_rate_due(
        &self,
        budget: usize,
    ) -> Result<(usize, Option<u64>), QueueError> {
        error::failpoint!("queue::rate");
        let mut invocation = scripts::RATE.prepare_invoke();
        invocation
            .key(self.keys.rate_due())
            .arg(WORKERS_GROUP)
            .arg(budget);
        let mut conn = self.conn.clone();
        let (released, next): (i64, i64) = invocation.invoke_async(&mut conn).await?;
        Ok((
            usize::try_from(released).unwrap_or(0),
            u64::try_from(next).ok(),
        ))
    }

    /// Publishes the settings that workers in other processes must share with the
    /// engine (`P:config`: `leaseMs`, `maxStalled`), so that a worker in another
    /// language can read the lease instead of being told it by hand.
    pub async fn publish_config(&self, lease_ms: u64, max_stalled: u32) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(self.keys.config())
            .arg("leaseMs")
            .arg(lease_ms)
            .arg("maxStalled")
            .arg(max_stalled)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Ids of a flow's jobs that are not done (queued, delayed or running), from its
    /// jobs hash: what a delete of a flow without an actor tells workers to stop.
    pub async fn unfinished_jobs(&self, flow_id: &str) -> Result<Vec<String>, QueueError> {
        Ok(self
            .job_states(flow_id)
            .await?
            .into_iter()
            // A field starting with ':' is the flow's own (its flow slot), not a job.
            .filter(|(field, state)| state != "done" && !field.starts_with(':'))
            .map(|(field, _)| format!("{flow_id}:{field}"))
            .collect())
    }

    /// How many entries the queue's lane streams hold together (ready or running)
    /// and how many jobs wait in its delayed set, for metrics and the benchmark.
    pub async fn depth(&self, queue: &str) -> Result<(u64, u64), QueueError> {
        let mut pipe = redis::pipe();
        for lane in self.keys.lanes(queue) {
            pipe.cmd("XLEN").arg(lane);
        }
        pipe.cmd("ZCARD").arg(self.keys.delayed(queue));
        let mut conn = self.conn.clone();
        let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
        let delayed = counts.last().copied().unwrap_or(0);
        let ready = counts.iter().take(LANES).sum();
        Ok((ready, delayed))
    }
}
