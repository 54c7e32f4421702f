//! `EventHub`: fans flow events out to every subscriber without ever blocking a
//! flow actor.
//!
//! It is a bounded broadcast channel rather than an actor with a mailbox: a
//! mailbox would be one more hop per event and unbounded memory behind a slow
//! subscriber. Here every event is stored once (behind an `Arc`) whatever the
//! number of subscribers; a subscriber that falls more than the capacity behind
//! loses the oldest events and is told how many (`Lagged`), and is expected to
//! fetch a fresh snapshot. Memory is bounded by the capacity, never by the slowest
//! reader.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::view::FlowEvent;

/// Default number of events kept for slow subscribers.
pub const DEFAULT_EVENT_CAPACITY: usize = 16 * 1024;

/// The engine's event fan-out.
#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<FlowEvent>>,
}

impl EventHub {
    /// A hub that keeps up to `capacity` events for slow subscribers.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(16));
        EventHub { sender }
    }

    /// Sends an event to every current subscriber; never waits.
    pub fn publish(&self, event: FlowEvent) {
        // No subscriber is not an error: events are only for whoever listens now.
        let _ = self.sender.send(Arc::new(event));
    }

    /// A receiver of every event from now on (filter by flow on the receiving side).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FlowEvent>> {
        self.sender.subscribe()
    }

    /// Number of live subscribers (for metrics).
    pub fn subscriber_count(&self) -> usize {
        self.sender.receiver_count()
    }
}
