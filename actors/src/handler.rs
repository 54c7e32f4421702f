//! What a job runs: the [`Handler`] trait, its [`JobContext`] and [`JobError`].
//!
//! Delivery is at-least-once: a handler can run again for the same job after a crash
//! or a lease expiry, so handlers should be idempotent. [`JobContext::job_id`] is
//! stable across those re-runs and is the key to deduplicate side effects with.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::ids::{FlowId, JobId};

/// A named piece of work that a node runs.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt of a job. `Ok` is the node's result, handed to its children.
    async fn run(&self, ctx: JobContext) -> Result<serde_json::Value, JobError>;
}

/// Why an attempt failed, and whether another attempt may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    /// What went wrong, for people; stored as the node's error.
    pub message: String,
    /// `false` fails the node at once, whatever attempts are left.
    pub retryable: bool,
}

impl JobError {
    /// A failure that another attempt may fix (a timeout, a 503).
    pub fn retryable(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry can fix (bad input, a 404).
    pub fn fatal(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Sends a running job's progress to its flow.
pub(crate) type ProgressSink = Arc<dyn Fn(serde_json::Value) + Send + Sync>;

/// Everything a handler knows about its job.
#[derive(Clone)]
pub struct JobContext {
    /// Stable across re-deliveries of this attempt: the idempotency key for side effects.
    pub job_id: JobId,
    /// The flow the job belongs to.
    pub flow_id: FlowId,
    /// The node's name.
    pub node: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// The node's own `data` from the spec.
    pub data: serde_json::Value,
    /// Each parent's result by parent name (`{"error": ...}` for a parent that failed
    /// with `continueOnFailure`).
    pub parents: serde_json::Map<String, serde_json::Value>,
    /// On an element of a map node: its element of the mapped array and its
    /// position. `None` for every other job.
    pub item: Option<(serde_json::Value, u32)>,
    /// Fires when the job is cancelled or the engine shuts down; long handlers should
    /// watch it and return early.
    pub cancel: CancellationToken,
    /// The W3C trace context from the job's envelope (`00-{trace}-{span}-{flags}`):
    /// the attempt's span when the engine exports traces, else the flow creator's
    /// context, else `None`. A handler that traces starts its span as a child of it
    /// (see README, "Traces").
    pub traceparent: Option<String>,
    pub(crate) progress: ProgressSink,
}

impl JobContext {
    /// Builds a context outside a worker, for unit-testing a handler.
    pub fn for_test(
        data: serde_json::Value,
        parents: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        let flow_id = FlowId::new();
        JobContext {
            job_id: JobId::new(flow_id, "test", 1),
            flow_id,
            node: "test".to_owned(),
            attempt: 1,
            data,
            parents,
            item: None,
            cancel: CancellationToken::new(),
            traceparent: None,
            progress: Arc::new(|_| {}),
        }
    }

    /// Reports progress (any JSON); subscribers see it as an event on the node.
    pub fn progress(&self, value: serde_json::Value) {
        (self.progress)(value)
    }

    /// The input as one value: `{"data": ..., "parents": {...}}`, plus `"item"` and
    /// `"index"` on a map element, as workers in other languages receive it.
    pub fn input(&self) -> serde_json::Value {
        match &self.item {
            Some((item, index)) => serde_json::json!({
                "data": self.data, "parents": self.parents, "item": item, "index": index
            }),
            None => serde_json::json!({ "data": self.data, "parents": self.parents }),
        }
    }
}

/// A handler made from an async closure, for embedding without a struct.
pub struct FnHandler<F>(F);

/// Wraps an async closure as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<serde_json::Value, JobError>> + Send + 'static,
{
    FnHandler(f)
}

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<serde_json::Value, JobError>> + Send + 'static,
{
    async fn run(&self, ctx: JobContext) -> Result<serde_json::Value, JobError> {
        (self.0)(ctx).await
    }
}

/// Handlers by name, shared by the workers of one process.
#[derive(Clone, Default)]
pub struct Handlers {
    by_name: HashMap<String, Arc<dyn Handler>>,
}

impl Handlers {
    /// Adds (or replaces) a handler.
    pub fn insert(&mut self, name: impl Into<String>, handler: Arc<dyn Handler>) {
        self.by_name.insert(name.into(), handler);
    }

    /// The handler of this name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Handler>> {
        self.by_name.get(name)
    }

    /// Every handler name, sorted (for worker heartbeats).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_name.keys().cloned().collect();
        names.sort();
        names
    }
}
