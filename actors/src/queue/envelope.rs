//! The wire formats that travel through Redis: the job envelope on the queue streams,
//! the outcome a worker reports, and the completion record on `P:completions`.
//!
//! These are read by workers in other languages (`docs/PROTOCOL.md`), so they are
//! versioned JSON; changing a field is a compatibility decision.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::QueueError;
use super::keys::Lane;
use crate::spec::DEFAULT_PRIORITY;
use crate::state::{FailureCause, JobLimits};

/// The envelope format version written by this code; readers reject other versions.
pub const ENVELOPE_VERSION: u8 = 1;

/// The completion record format version written by this code.
pub const COMPLETION_VERSION: u8 = 1;

/// Name of the stream entry field that holds the envelope JSON.
pub const ENVELOPE_FIELD: &str = "envelope";

/// The deterministic job id `{flow_id}:{node}:{attempt}`.
///
/// Because it is derived, re-enqueueing a job after a crash names the same job, and a
/// handler can use it as its idempotency key.
pub fn job_id(flow_id: &str, node: &str, attempt: u32) -> String {
    format!("{flow_id}:{node}:{attempt}")
}

/// The field `{node}:{attempt}` of a job in its flow's jobs hash.
pub fn job_field(node: &str, attempt: u32) -> String {
    format!("{node}:{attempt}")
}

/// The job as it travels through Redis: everything a worker needs to run it.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct JobEnvelope {
    /// Format version, [`ENVELOPE_VERSION`]; lets a reader refuse what it cannot read.
    pub v: u8,
    /// `{flow_id}:{node}:{attempt}`, the idempotency key of this run.
    pub id: String,
    /// The flow the job belongs to; routes its completion back to the flow's actor.
    pub flow_id: String,
    /// The node's name within the flow.
    pub node: String,
    /// Which attempt this is, from 1; a completion for another attempt is ignored.
    pub attempt: u32,
    /// The handler a worker must run.
    pub handler: String,
    /// The queue the job was put on; a worker only serves the queues it was told to.
    pub queue: String,
    /// 0 (lowest) to 9 (highest): which lane of its queue the job waits in, and so
    /// which jobs it goes before. Envelopes written before priorities existed read
    /// as [`DEFAULT_PRIORITY`].
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// `{"data": ..., "parents": {...}}` built by the engine, passed through unparsed so
    /// large parent results are not re-encoded on every hop.
    pub input: Box<RawValue>,
    /// How long the handler may run before it is failed as timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// How many times the job may be reclaimed from a dead worker before it fails as
    /// stalled.
    pub max_stalled: u32,
    /// When the engine enqueued it (ms since the epoch), for queue-latency metrics.
    pub enqueued_at_ms: u64,
    /// The W3C trace context a handler's own span continues: the attempt's span
    /// when the engine exports traces, the caller's context (from `POST /flows`)
    /// when it does not, absent when there is neither. Optional, so envelope
    /// version 1 readers that do not know it are unaffected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl JobEnvelope {
    /// The job's field in its flow's jobs hash.
    pub fn job_field(&self) -> String {
        job_field(&self.node, self.attempt)
    }

    /// Encodes the envelope as the JSON stored in Redis.
    pub fn to_json(&self) -> Result<String, QueueError> {
        serde_json::to_string(self).map_err(|e| QueueError::Envelope(e.to_string()))
    }

    /// Decodes an envelope read from Redis, refusing versions this code does not know.
    pub fn from_json(json: &[u8]) -> Result<Self, QueueError> {
        let envelope: JobEnvelope =
            serde_json::from_slice(json).map_err(|e| QueueError::Envelope(e.to_string()))?;
        if envelope.v != ENVELOPE_VERSION {
            return Err(QueueError::Envelope(format!(
                "unsupported version {} (this reader knows {ENVELOPE_VERSION})",
                envelope.v
            )));
        }
        Ok(envelope)
    }
}

/// The priority of envelopes that carry none.
fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}

/// One job to add to a queue.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// The job itself.
    pub envelope: JobEnvelope,
    /// Retry backoff: above 0 the job waits in the delayed set this long before it
    /// becomes readable; 0 puts it straight on the stream.
    pub delay_ms: u64,
    /// Whether this is a first job of a flow that has not started (a root's first
    /// attempt): such jobs wait in the fresh lane of their priority, behind the jobs
    /// of flows already running.
    pub fresh: bool,
    /// Its concurrency key and rate limit, enforced in Redis before it reaches its
    /// lane; `None` for a job without limits (the fast path).
    pub limits: Option<JobLimits>,
}

impl NewJob {
    /// The limits as the JSON object the scripts keep in the job's field
    /// (`{"ck","cl","cs","rk","rn","rp"}`, see `lua/limits.lua`), or `""`.
    pub(crate) fn limits_json(&self) -> String {
        let Some(limits) = &self.limits else {
            return String::new();
        };
        let mut object = serde_json::Map::new();
        if let Some((key, limit, strategy)) = &limits.concurrency {
            object.insert("ck".into(), key.as_str().into());
            object.insert("cl".into(), (*limit).into());
            object.insert("cs".into(), strategy.as_str().into());
        }
        if let Some((key, limit, per_ms)) = &limits.rate {
            object.insert("rk".into(), key.as_str().into());
            object.insert("rn".into(), (*limit).into());
            object.insert("rp".into(), (*per_ms).into());
        }
        if let Some((key, limit, strategy)) = &limits.flow {
            object.insert("fk".into(), key.as_str().into());
            object.insert("fl".into(), (*limit).into());
            object.insert("fs".into(), strategy.as_str().into());
        }
        serde_json::Value::Object(object).to_string()
    }

    /// The lane the job goes to when it is ready: its envelope's priority, fresh or
    /// not. A delayed job is a retry, so it is never fresh.
    pub fn lane(&self) -> Lane {
        Lane::new(self.envelope.priority, self.fresh && self.delay_ms == 0)
    }
}

/// A job read from a queue stream.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The queue it was read from.
    pub queue: String,
    /// The lane stream it was read from (`P:q:{queue}:{priority}[:new]`): what its
    /// entry id is acknowledged, renewed and reported on.
    pub stream: String,
    /// Its stream entry id: what gets acknowledged, renewed and deleted.
    pub entry_id: String,
    /// The job.
    pub envelope: JobEnvelope,
}

/// What a worker reports about a job; also the payload of a completion record.
///
/// JSON with a `kind` tag: `{"kind":"completed","result":...}`,
/// `{"kind":"failed","message":"...","retryable":true}`,
/// `{"kind":"progress","progress":...}`, `{"kind":"started","worker":"..."}`.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase", tag = "kind", try_from = "OutcomeWire")]
pub enum Outcome {
    /// The handler returned a result; ends the job.
    Completed {
        /// The handler's result, passed through unparsed.
        result: Box<RawValue>,
    },
    /// The handler failed; ends the job. The flow actor decides about a retry.
    Failed {
        /// What went wrong, for people.
        message: String,
        /// Whether another attempt may succeed.
        retryable: bool,
        /// Why, when it is more than the handler's error: the job stalled or timed
        /// out. Optional on the wire (`"cause": "stalled" | "timedOut"`); an
        /// unknown cause reads as none. Shown as the attempt's outcome.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<FailureCause>,
    },
    /// The handler reported progress; the job goes on.
    Progress {
        /// Whatever the handler reported.
        progress: Box<RawValue>,
    },
    /// A worker began running the job; the job goes on.
    Started {
        /// The worker's consumer name, shown in the node's attempt history;
        /// optional on the wire (workers that predate it leave it out).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
    },
    /// The job's concurrency key cancelled it (strategy `cancelNewest` or
    /// `cancelInProgress`); ends the job. Only the engine's scripts write it.
    Cancelled {
        /// Why, for people.
        message: String,
    },
}

impl Outcome {
    /// True for outcomes that end the job (completed or failed): those acknowledge and
    /// delete the job's stream entry.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Outcome::Completed { .. } | Outcome::Failed { .. } | Outcome::Cancelled { .. }
        )
    }
}

/// The flat shape `Outcome` is decoded through.
///
/// serde cannot decode a `RawValue` inside an internally tagged enum (it buffers the
/// content first and loses the raw text), so the tag is dispatched by hand.
#[derive(Deserialize)]
struct OutcomeWire {
    /// The variant name.
    kind: String,
    /// Set for `completed`.
    #[serde(default)]
    result: Option<Box<RawValue>>,
    /// Set for `failed`.
    #[serde(default)]
    message: Option<String>,
    /// Set for `failed`.
    #[serde(default)]
    retryable: Option<bool>,
    /// Set for `progress`.
    #[serde(default)]
    progress: Option<Box<RawValue>>,
    /// Optional for `started`.
    #[serde(default)]
    worker: Option<String>,
    /// Optional for `failed`.
    #[serde(default)]
    cause: Option<String>,
}

impl TryFrom<OutcomeWire> for Outcome {
    type Error = String;

    fn try_from(wire: OutcomeWire) -> Result<Self, Self::Error> {
        match wire.kind.as_str() {
            // `"result": null` reads as no result (serde's `Option`), and a handler
            // may well return null (`noop` does): both mean the JSON `null`.
            "completed" => Ok(Outcome::Completed {
                result: wire.result.unwrap_or_else(json_null),
            }),
            "failed" => Ok(Outcome::Failed {
                message: wire.message.unwrap_or_default(),
                retryable: wire.retryable.unwrap_or(false),
                cause: wire.cause.as_deref().and_then(FailureCause::parse),
            }),
            "progress" => Ok(Outcome::Progress {
                progress: wire.progress.unwrap_or_else(json_null),
            }),
            "started" => Ok(Outcome::Started {
                worker: wire.worker,
            }),
            "cancelled" => Ok(Outcome::Cancelled {
                message: wire.message.unwrap_or_default(),
            }),
            other => Err(format!("unknown outcome kind {other:?}")),
        }
    }
}

/// The JSON `null`, as a raw value.
fn json_null() -> Box<RawValue> {
    serde_json::value::to_raw_value(&()).unwrap_or_default()
}

/// A record read from `P:completions`.
#[derive(Clone, Debug)]
pub struct CompletionRecord {
    /// Its entry id in the completions stream; acknowledge it once applied durably.
    pub entry_id: String,
    /// The flow the job belongs to; records of unknown flows are acked and dropped.
    pub flow_id: String,
    /// The node's name.
    pub node: String,
    /// The attempt reported on; a stale attempt is ignored by the state machine.
    pub attempt: u32,
    /// `{flow_id}:{node}:{attempt}`.
    pub job_id: String,
    /// What happened.
    pub outcome: Outcome,
}

impl CompletionRecord {
    /// Decodes a completions-stream entry from its fields; the error says what is wrong.
    pub(crate) fn from_fields(
        entry_id: &str,
        fields: &[(String, Vec<u8>)],
    ) -> Result<Self, String> {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_slice())
        };
        let text = |name: &str| -> Result<String, String> {
            let bytes = get(name).ok_or_else(|| format!("missing field {name}"))?;
            String::from_utf8(bytes.to_vec()).map_err(|_| format!("field {name} is not utf-8"))
        };
        if let Some(v) = get("v") {
            if v != COMPLETION_VERSION.to_string().as_bytes() {
                return Err(format!(
                    "unsupported version {}",
                    String::from_utf8_lossy(v)
                ));
            }
        }
        let attempt = text("attempt")?
            .parse::<u32>()
            .map_err(|_| "field attempt is not a number".to_owned())?;
        let outcome_json = get("outcome").ok_or("missing field outcome")?;
        let outcome: Outcome =
            serde_json::from_slice(outcome_json).map_err(|e| format!("bad outcome: {e}"))?;
        Ok(CompletionRecord {
            entry_id: entry_id.to_owned(),
            flow_id: text("flow")?,
            node: text("node")?,
            attempt,
            job_id: text("job")?,
            outcome,
        })
    }
}

/// Acknowledges a job that a worker in this process finished, once the flow actor has
/// made its result durable.
#[derive(Clone, Debug)]
pub struct LocalAck {
    /// The lane stream the job was read from.
    pub stream: String,
    /// Its stream entry id.
    pub entry_id: String,
    /// Its flow, whose jobs hash records it as done.
    pub flow_id: String,
    /// `{node}:{attempt}`, its field in the jobs hash.
    pub job_field: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn outcome_round_trips_with_raw_values() {
        let cases = [
            Outcome::Completed {
                result: raw(r#"{"a":[1,2.5,"x"]}"#),
            },
            Outcome::Failed {
                message: "boom".into(),
                retryable: true,
                cause: None,
            },
            Outcome::Progress {
                progress: raw("42"),
            },
            Outcome::Started { worker: None },
            Outcome::Started {
                worker: Some("host-1".into()),
            },
        ];
        for outcome in cases {
            let json = serde_json::to_string(&outcome).unwrap();
            let back: Outcome = serde_json::from_str(&json).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), json);
        }
        let json = serde_json::to_string(&Outcome::Completed { result: raw("[1]") }).unwrap();
        assert_eq!(json, r#"{"kind":"completed","result":[1]}"#);
        assert_eq!(
            serde_json::to_string(&Outcome::Started { worker: None }).unwrap(),
            r#"{"kind":"started"}"#
        );
        assert_eq!(
            serde_json::to_string(&Outcome::Started {
                worker: Some("w-1".into())
            })
            .unwrap(),
            r#"{"kind":"started","worker":"w-1"}"#
        );
    }

    #[test]
    fn unknown_outcome_kind_is_an_error() {
        assert!(serde_json::from_str::<Outcome>(r#"{"kind":"exploded"}"#).is_err());
    }

    #[test]
    fn a_null_or_missing_result_is_the_json_null() {
        for json in [
            r#"{"kind":"completed"}"#,
            r#"{"kind":"completed","result":null}"#,
        ] {
            match serde_json::from_str::<Outcome>(json).unwrap() {
                Outcome::Completed { result } => assert_eq!(result.get(), "null", "{json}"),
                other => panic!("{json} read as {other:?}"),
            }
        }
        match serde_json::from_str::<Outcome>(r#"{"kind":"progress","progress":null}"#).unwrap() {
            Outcome::Progress { progress } => assert_eq!(progress.get(), "null"),
            other => panic!("read as {other:?}"),
        }
    }

    #[test]
    fn envelope_uses_camel_case_and_checks_version() {
        let env = JobEnvelope {
            v: ENVELOPE_VERSION,
            id: job_id("f", "n", 1),
            flow_id: "f".into(),
            node: "n".into(),
            attempt: 1,
            handler: "h".into(),
            queue: "default".into(),
            priority: 5,
            input: raw(r#"{"data":null,"parents":{}}"#),
            timeout_ms: None,
            max_stalled: 1,
            enqueued_at_ms: 5,
            traceparent: None,
        };
        let json = env.to_json().unwrap();
        assert!(json.contains(r#""flowId":"f""#));
        assert!(json.contains(r#""maxStalled":1"#));
        assert!(!json.contains("timeoutMs"));
        assert!(!json.contains("traceparent"), "absent, not null: {json}");
        let back = JobEnvelope::from_json(json.as_bytes()).unwrap();
        assert_eq!(back.id, "f:n:1");
        assert_eq!(back.job_field(), "n:1");
        let future = json.replace(r#""v":1"#, r#""v":2"#);
        assert!(JobEnvelope::from_json(future.as_bytes()).is_err());
    }
}
