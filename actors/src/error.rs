//! `EngineError`: what the engine's public API can fail with. Each variant maps to
//! one kind of answer a client needs (fix the input, retry later, give up), which is
//! how the server picks its HTTP status.

use crate::queue::QueueError;
use crate::spec::SpecError;
use crate::store::StoreError;

/// Why an engine operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The flow spec is invalid; every problem is listed.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No flow has this id.
    #[error("flow {0} not found")]
    NotFound(String),
    /// The flow has no node of this name.
    #[error("flow {flow} has no node '{node}'")]
    NodeNotFound {
        /// The flow.
        flow: String,
        /// The missing node.
        node: String,
    },
    /// The operation does not fit the flow's state (retrying a running flow...).
    #[error("{0}")]
    Conflict(String),
    /// Redis cannot be reached; retrying later may work.
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    /// The snapshot store failed.
    #[error("store: {0}")]
    Store(String),
    /// The engine is shutting down or was built without flows (worker-only).
    #[error("{0}")]
    NotRunning(String),
    /// An internal step did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// Anything else; a bug.
    #[error("internal error: {0}")]
    Internal(String),
    /// Traces could not be set up (a bad OTLP endpoint); only from `build`.
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
}

impl EngineError {
    /// Whether the same request may succeed later without change.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EngineError::Unavailable(_) | EngineError::Timeout(_) | EngineError::NotRunning(_)
        )
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e.to_string())
    }
}

impl From<QueueError> for EngineError {
    fn from(e: QueueError) -> Self {
        if e.is_connection() {
            EngineError::Unavailable(e.to_string())
        } else {
            EngineError::Internal(e.to_string())
        }
    }
}

impl<T> From<ractor::RactorErr<T>> for EngineError {
    fn from(e: ractor::RactorErr<T>) -> Self {
        match e {
            ractor::RactorErr::Timeout => EngineError::Timeout("an engine actor".to_owned()),
            other => EngineError::NotRunning(format!("engine actor unavailable: {other}")),
        }
    }
}
