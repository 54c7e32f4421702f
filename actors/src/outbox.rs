//! The callback outbox's disk format: one record per callback to send, written in
//! the same sled batch as the flow's terminal state and removed only after the
//! receiver answered 2xx (or the record grew too old, see `crate::notify`).
//!
//! Plain data, no sled: `store.rs` keeps the records in its `outbox` tree, the
//! deliverer reads them. The record holds everything the POST needs (the body is
//! the flow's final view as JSON text), so that deleting the flow, or a retention
//! sweep, never loses a callback that is still owed.

use serde::{Deserialize, Serialize};

use crate::ids::FlowId;

/// Key of one outbox record: flow id (16 bytes) ++ the flow's `seq` at its end
/// (u64, big-endian) ++ the target's index in `opts.notify` (u16, big-endian).
///
/// The `seq` makes a flow that ends, is retried and ends again owe a second
/// callback instead of overwriting the first; big-endian numbers after a
/// time-ordered flow id make sled's key order the order the flows ended in, for
/// one flow, and roughly oldest first across flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutboxKey([u8; 26]);

impl OutboxKey {
    /// The key of target `target` of flow `flow`'s end at `seq`.
    pub fn new(flow: FlowId, seq: u64, target: u16) -> Self {
        let mut key = [0u8; 26];
        key[..16].copy_from_slice(flow.as_bytes());
        key[16..24].copy_from_slice(&seq.to_be_bytes());
        key[24..].copy_from_slice(&target.to_be_bytes());
        OutboxKey(key)
    }

    /// The key's bytes, as sled stores them.
    pub fn as_bytes(&self) -> &[u8; 26] {
        &self.0
    }

    /// A key read back from sled; `None` when it is not 26 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 26]>::try_from(bytes).ok().map(OutboxKey)
    }

    /// The flow the callback is about.
    pub fn flow(&self) -> FlowId {
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.0[..16]);
        FlowId::from_bytes(id)
    }
}

/// One callback owed: what to POST, where, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// The flow's `seq` at its end (sent in `X-Dagflow-Seq` for de-duplication).
    pub seq: u64,
    /// How the flow ended: `completed`, `failed` or `cancelled`.
    pub event: String,
    /// Where to POST.
    pub url: String,
    /// The flow's final view, as JSON text: the exact bytes that are sent and signed.
    pub body: String,
    /// When the flow ended (ms since the epoch): the record is dropped once it is
    /// older than the deliverer's maximum age.
    pub created_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_flow_then_seq_and_give_the_flow_back() {
        let (a, b) = (FlowId::new(), FlowId::new());
        let keys = [
            OutboxKey::new(a, 3, 1),
            OutboxKey::new(a, 300, 0),
            OutboxKey::new(b, 1, 0),
        ];
        let mut sorted = keys;
        sorted.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
        assert_eq!(sorted, keys);
        assert_eq!(keys[1].flow(), a);
        assert_eq!(OutboxKey::from_slice(keys[2].as_bytes()), Some(keys[2]));
        assert_eq!(OutboxKey::from_slice(&[0; 25]), None);
    }
}
