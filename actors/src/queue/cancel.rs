//! Listens on the cancel channel for ids of jobs whose running handlers must stop.
//!
//! Pub/sub is fire-and-forget: a worker that is disconnected when a cancel is published
//! misses it. That is acceptable because cancellation only saves work: the flow actor
//! has already recorded the job as cancelled and ignores whatever the job reports.

use futures::StreamExt;
use redis::aio::PubSubStream;

use super::error::QueueError;
use super::keys::Keys;

/// A subscription to `P:cancel` on its own connection (a subscribed connection can do
/// nothing else).
pub struct CancelListener {
    /// The subscribed connection's messages.
    messages: PubSubStream,
}

impl CancelListener {
    /// Connects and subscribes; cancels published before this returns are not seen.
    pub async fn connect(redis_url: &str, keys: Keys) -> Result<CancelListener, QueueError> {
        let client = redis::Client::open(redis_url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(keys.cancel_channel()).await?;
        Ok(CancelListener {
            messages: pubsub.into_on_message(),
        })
    }

    /// The next cancelled job id; `None` when the connection ended (reconnect to go on).
    pub async fn next(&mut self) -> Option<String> {
        loop {
            let message = self.messages.next().await?;
            match message.get_payload::<String>() {
                Ok(job_id) => return Some(job_id),
                Err(e) => tracing::warn!(error = %e, "ignoring undecodable cancel message"),
            }
        }
    }
}
