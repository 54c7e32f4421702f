//! Newtypes for the ids that travel between the parts, so that a flow id is never
//! mistaken for a node name or a job id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Identifies one flow for its whole life: in the API, in Redis keys and in sled keys.
///
/// A UUIDv7, so ids sort by creation time; that makes sled's key order the listing order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FlowId(uuid::Uuid);

impl FlowId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        FlowId(uuid::Uuid::now_v7())
    }

    /// The 16 bytes used as the sled key; big-endian, so they sort like the id.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuilds an id from its sled key.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        FlowId(uuid::Uuid::from_bytes(bytes))
    }

    /// Milliseconds since the epoch at which the id was made.
    pub fn created_ms(&self) -> u64 {
        self.0
            .get_timestamp()
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                secs * 1000 + u64::from(nanos) / 1_000_000
            })
            .unwrap_or(0)
    }
}

impl Default for FlowId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

impl fmt::Debug for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlowId({self})")
    }
}

/// The text was not a flow id.
#[derive(Debug, Clone, thiserror::Error)]
#[error("'{0}' is not a flow id")]
pub struct BadFlowId(pub String);

impl FromStr for FlowId {
    type Err = BadFlowId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(FlowId)
            .map_err(|_| BadFlowId(s.chars().take(64).collect()))
    }
}

/// Position of a node in its flow's spec; stable for the life of the flow.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeIdx(u32);

impl NodeIdx {
    /// Index from a position; flows are limited far below `u32::MAX` nodes.
    pub fn from_usize(i: usize) -> Self {
        NodeIdx(i as u32)
    }

    /// Position, for indexing vectors.
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }

    /// The raw number, for sled keys.
    pub fn get(self) -> u32 {
        self.0
    }

    /// From the raw number of a sled key.
    pub fn from_u32(i: u32) -> Self {
        NodeIdx(i)
    }
}

/// Identifies one attempt of one node: `{flow_id}:{node}:{attempt}`.
///
/// Deterministic, so that enqueueing the same attempt twice (after a crash) is a
/// no-op, and handlers can use it as an idempotency key.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// The id of `attempt` of `node` in `flow`.
    pub fn new(flow: FlowId, node: &str, attempt: u32) -> Self {
        JobId(format!("{flow}:{node}:{attempt}"))
    }

    /// Wraps a job id read from the wire.
    pub fn from_wire(s: String) -> Self {
        JobId(s)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
