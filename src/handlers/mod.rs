//! Built-in handlers: what a flow can run on a bare `dagflow serve`, for demos,
//! tests and simple integrations.
//!
//! | name    | `data`                                   | result |
//! |---------|------------------------------------------|--------|
//! | `noop`  | ignored                                  | `null` |
//! | `echo`  | anything                                 | its whole input, `{"data": ..., "parents": {...}}` |
//! | `sleep` | `{"ms": 250}`                            | `{"sleptMs": 250}`; stops early (failing with `cancelled`) when the job is cancelled |
//! | `fail`  | `{"message": "boom", "times": 2}`        | fails (retryable) while `attempt <= times`, then `{"attempt": n}`; without `times` it always fails |
//! | `http`  | `{"url", "method", "headers", "timeoutMs"}` | the JSON reply; see [`Http`] |
//!
//! A node picks one with `"handler": "echo"` (the handler defaults to the node's
//! name). Delivery is at-least-once, so a handler may run twice for one attempt;
//! these are idempotent except `http`, which sends the job id as `Idempotency-Key`
//! so that the receiving service can deduplicate.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dagflow_actors::{Handler, JobContext, JobError};
use serde_json::{json, Value};

pub mod http;
#[cfg(test)]
mod tests;

pub use http::Http;

/// The longest `sleep` accepted: a day. A larger value is almost certainly a unit
/// mistake (seconds for milliseconds), and is refused rather than parked forever.
pub const MAX_SLEEP_MS: u64 = 24 * 3600 * 1000;

/// Every built-in handler by the name nodes use for it.
pub fn builtin() -> Vec<(&'static str, Arc<dyn Handler>)> {
    vec![
        ("noop", Arc::new(Noop) as Arc<dyn Handler>),
        ("echo", Arc::new(Echo)),
        ("sleep", Arc::new(Sleep)),
        ("fail", Arc::new(Fail)),
        ("http", Arc::new(Http::new())),
    ]
}

/// Does nothing and returns `null`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

#[async_trait]
impl Handler for Noop {
    async fn run(&self, _ctx: JobContext) -> Result<Value, JobError> {
        Ok(Value::Null)
    }
}

/// Returns its input, `{"data": <own data>, "parents": {<name>: <result>...}}`: shows
/// exactly what a node received.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn run(&self, ctx: JobContext) -> Result<Value, JobError> {
        Ok(ctx.input())
    }
}

/// Waits `data.ms` milliseconds (default 0), watching the cancellation token so that
/// a cancelled flow does not wait for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sleep;

#[async_trait]
impl Handler for Sleep {
    async fn run(&self, ctx: JobContext) -> Result<Value, JobError> {
        let ms = match ctx.data.get("ms") {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_u64().filter(|ms| *ms <= MAX_SLEEP_MS).ok_or_else(|| {
                JobError::fatal(format!(
                    "sleep: `ms` must be an integer from 0 to {MAX_SLEEP_MS}, got {v}"
                ))
            })?,
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({ "sleptMs": ms })),
            _ = ctx.cancel.cancelled() => Err(JobError::fatal("cancelled")),
        }
    }
}

/// Fails on purpose: attempts `1..=data.times` fail with `data.message` (retryable),
/// later attempts return `{"attempt": n}`. Without `times` every attempt fails.
///
/// Attempts keep counting across a flow retry, so `{"times": 1}` on a node with one
/// attempt fails the flow, and retrying the flow completes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fail;

#[async_trait]
impl Handler for Fail {
    async fn run(&self, ctx: JobContext) -> Result<Value, JobError> {
        let times = match ctx.data.get("times") {
            None | Some(Value::Null) => u64::MAX,
            Some(v) => v.as_u64().ok_or_else(|| {
                JobError::fatal(format!(
                    "fail: `times` must be a non-negative integer, got {v}"
                ))
            })?,
        };
        if u64::from(ctx.attempt) <= times {
            let message = ctx
                .data
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("failed on purpose");
            return Err(JobError::retryable(message));
        }
        Ok(json!({ "attempt": ctx.attempt }))
    }
}
