//! The queue's error type: what went wrong talking to Redis, and whether it is worth
//! retrying or telling the client that Redis is down.

/// Everything the queue can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis refused the command or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A job envelope could not be encoded or decoded.
    #[error("malformed job envelope: {0}")]
    Envelope(String),
    /// An outcome or heartbeat could not be encoded as JSON.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Redis answered with something the protocol does not allow; a bug or a foreign
    /// writer on our keys.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// A failpoint (feature `failpoints`, tests only) made this step fail as if
    /// Redis had dropped the connection.
    #[error("injected fault at {0}")]
    Injected(String),
}

impl QueueError {
    /// True when Redis is unreachable (refused, dropped, timed out), as opposed to Redis
    /// rejecting a command; the API answers 503 for these, and a reader reconnects.
    pub fn is_connection(&self) -> bool {
        match self {
            QueueError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
            }
            QueueError::Injected(_) => true,
            _ => false,
        }
    }

    /// True when Redis refuses writes for lack of memory (`maxmemory` reached):
    /// reads still work, and the refusal ends when memory is freed, so a step that
    /// gets it is retried rather than treated as fatal.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, QueueError::Redis(e) if e.code() == Some("OOM"))
    }

    /// True when Redis says the consumer group (or its stream) does not exist, which
    /// happens after Redis restarted without persistence. A read blocked while the
    /// stream was removed (`FLUSHALL`, `DEL`) fails with `UNBLOCKED` on Redis 7.0
    /// instead, and means the same.
    pub(crate) fn is_no_group(&self) -> bool {
        matches!(self, QueueError::Redis(e) if matches!(e.code(), Some("NOGROUP" | "UNBLOCKED")))
    }
}

/// Makes the enclosing function return `Err(QueueError::Injected)` when the named
/// failpoint is set; compiles to nothing without the `failpoints` feature.
macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name, |_| Err($crate::queue::QueueError::Injected(
            $name.to_owned()
        )))
    };
}
pub(crate) use failpoint;
