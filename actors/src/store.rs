//! The sled snapshot store: the durable truth about every flow.
//!
//! Layout (one sled tree each):
//! - `flows`: flow id (16 bytes, time-ordered) → flow record (status, seq, times)
//! - `specs`: flow id → the submitted spec as JSON text, written once
//! - `nodes`: flow id ++ node index (u32, big-endian) → node record
//! - `idempotency`: client key → flow id
//! - `meta`: engine-wide values (the engine's stable consumer id)
//! - `schedules`, `schedule_runs`: the schedules (see [`schedules`])
//!
//! Records are bincode with a leading format version byte. A completion rewrites
//! the flow record and the nodes it changed, never the spec or the other nodes, so
//! its cost does not grow with the size of the flow. Nothing here flushes on its
//! own: [`Store::flush`] is called by the group-commit writer, once per batch.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

pub mod schedules;

use crate::ids::{FlowId, NodeIdx};
pub use crate::records::{status_code, status_from, FlowRecord, NodeRecord, UnknownStatus};
use crate::state::{FlowStatus, NodeState};

/// Version byte in front of every record; bump it when a record's shape changes and
/// keep a decoder for the old one.
pub const FORMAT_VERSION: u8 = 2;

/// Default sled page cache, far below sled's own 1 GiB default.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an I/O or corruption error.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be encoded.
    #[error("encoding record: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// A record on disk could not be decoded.
    #[error("decoding record: {0}")]
    Decode(String),
    /// A failpoint (feature `failpoints`, tests only) made this write fail.
    #[error("injected fault at {0}")]
    Injected(&'static str),
    /// A record holds a status number this build does not know.
    #[error("decoding record: {0}")]
    Status(#[from] UnknownStatus),
    /// A record has a format version this build does not know.
    #[error("record format version {0} is not supported (this build writes {FORMAT_VERSION})")]
    Version(u8),
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![FORMAT_VERSION];
    out.extend(bincode::serde::encode_to_vec(
        value,
        bincode::config::standard(),
    )?);
    Ok(out)
}

/// Decodes a node record of either format version.
fn decode_node(bytes: &[u8]) -> Result<NodeRecord, StoreError> {
    match bytes.split_first() {
        Some((&1, rest)) => bincode::serde::decode_from_slice::<crate::records::NodeRecordV1, _>(
            rest,
            bincode::config::standard(),
        )
        .map(|(v, _)| v.into())
        .map_err(|e| StoreError::Decode(e.to_string())),
        _ => decode(bytes),
    }
}

/// Decodes a record whose shape is the same in every format version (all but the
/// node record, see [`decode_node`]).
fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&(1 | FORMAT_VERSION), rest)) => {
            bincode::serde::decode_from_slice(rest, bincode::config::standard())
                .map(|(v, _)| v)
                .map_err(|e| StoreError::Decode(e.to_string()))
        }
        Some((&v, _)) => Err(StoreError::Version(v)),
        None => Err(StoreError::Decode("empty record".to_owned())),
    }
}

fn node_key(flow: FlowId, node: NodeIdx) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..16].copy_from_slice(flow.as_bytes());
    key[16..].copy_from_slice(&node.get().to_be_bytes());
    key
}

/// One write, as the group-commit writer receives it.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Create or replace a flow record.
    Flow(FlowId, FlowRecord),
    /// Store a flow's spec (JSON text); written once, at creation.
    Spec(FlowId, String),
    /// Create or replace a node record.
    Node(FlowId, NodeIdx, NodeRecord),
    /// Map an idempotency key to its flow.
    Idempotency(String, FlowId),
    /// Remove every record of a flow (flow record, spec, node records, its
    /// idempotency key) in the same transaction as the rest of the batch, so a
    /// crash never leaves a flow without its nodes or a record without its spec.
    Delete(FlowId),
}

/// The record a [`WriteOp`] writes.
#[derive(PartialEq, Eq, Hash)]
enum RecordKey<'a> {
    Flow(FlowId),
    Spec(FlowId),
    Node(FlowId, NodeIdx),
    Idempotency(&'a str),
    Delete(FlowId),
}

impl WriteOp {
    fn record(&self) -> RecordKey<'_> {
        match self {
            WriteOp::Flow(id, _) => RecordKey::Flow(*id),
            WriteOp::Spec(id, _) => RecordKey::Spec(*id),
            WriteOp::Node(id, idx, _) => RecordKey::Node(*id, *idx),
            WriteOp::Idempotency(key, _) => RecordKey::Idempotency(key),
            WriteOp::Delete(id) => RecordKey::Delete(*id),
        }
    }
}

/// For each op, whether it is the last in `ops` to write its record.
fn last_of_each_record(ops: &[WriteOp]) -> Vec<bool> {
    let mut seen = std::collections::HashSet::with_capacity(ops.len());
    let mut latest: Vec<bool> = ops
        .iter()
        .rev()
        .map(|op| seen.insert(op.record()))
        .collect();
    latest.reverse();
    latest
}

/// Everything stored about one flow, as loaded.
#[derive(Debug, Clone)]
pub struct StoredFlow {
    /// The flow's id.
    pub id: FlowId,
    /// The flow record.
    pub record: FlowRecord,
    /// The spec, as JSON text.
    pub spec_json: String,
    /// Node records by index; a node with no record yet is fresh.
    pub nodes: Vec<NodeState>,
}

/// The sled database of one engine.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    flows: sled::Tree,
    specs: sled::Tree,
    nodes: sled::Tree,
    idempotency: sled::Tree,
    meta: sled::Tree,
}

impl Store {
    /// Opens (or creates) the store in `dir`. One process per directory: sled locks it.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // The group-commit writer flushes; sled's own timer would only add fsyncs.
            .flush_every_ms(None)
            .open()?;
        Self::from_db(db)
    }

    /// A store that lives in a temporary directory and vanishes on drop (tests, benchmarks).
    pub fn temporary() -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Store, StoreError> {
        Ok(Store {
            flows: db.open_tree("flows")?,
            specs: db.open_tree("specs")?,
            nodes: db.open_tree("nodes")?,
            idempotency: db.open_tree("idempotency")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// Applies writes (one transition's, or a group commit's many) to sled's memory,
    /// all or nothing; durable only after the next [`Store::flush`].
    ///
    /// All or nothing matters: sled writes its log out whenever a buffer fills, so
    /// without a transaction a crash could leave a parent `completed` on disk without
    /// the children that became ready with it (a flow that would wait for ever), or
    /// an idempotency key without its flow. One transaction over the trees makes a
    /// transition reach the disk whole or not at all.
    ///
    /// A record written more than once in `ops` is written once, with its last
    /// value: in a group commit a busy flow's header and a node's `active` then
    /// `completed` records usually come together, and sled's inserts were the
    /// largest share of the engine's CPU.
    pub fn apply(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        let latest = last_of_each_record(ops);
        // Encode outside the transaction: its closure may run more than once.
        // Tree 4 is a delete: `key` is the flow id, and the records to remove are
        // found inside the transaction (it sees the batch's own earlier writes).
        let mut encoded: Vec<(u8, Vec<u8>, Vec<u8>)> = Vec::with_capacity(ops.len());
        for (op, _) in ops.iter().zip(latest).filter(|(_, latest)| *latest) {
            encoded.push(match op {
                WriteOp::Flow(id, rec) => (0, id.as_bytes().to_vec(), encode(rec)?),
                WriteOp::Spec(id, json) => (1, id.as_bytes().to_vec(), json.as_bytes().to_vec()),
                WriteOp::Node(id, idx, rec) => (2, node_key(*id, *idx).to_vec(), encode(rec)?),
                WriteOp::Idempotency(key, id) => {
                    (3, key.as_bytes().to_vec(), id.as_bytes().to_vec())
                }
                WriteOp::Delete(id) => {
                    fail::fail_point!("store::delete", |_| Err(StoreError::Injected(
                        "store::delete"
                    )));
                    (4, id.as_bytes().to_vec(), Vec::new())
                }
            });
        }
        if encoded.is_empty() {
            // A barrier: a transaction would still seal and write sled's log buffer.
            return Ok(());
        }
        if let [(tree @ 0..=3, key, value)] = encoded.as_slice() {
            // A single insert is atomic by itself.
            self.tree(*tree).insert(key.as_slice(), value.as_slice())?;
            return Ok(());
        }
        (&self.flows, &self.specs, &self.nodes, &self.idempotency)
            .transaction(|(flows, specs, nodes, idempotency)| {
                for (tree, key, value) in &encoded {
                    let tree = match tree {
                        0 => flows,
                        1 => specs,
                        2 => nodes,
                        3 => idempotency,
                        _ => {
                            delete_in(key, flows, specs, nodes, idempotency)?;
                            continue;
                        }
                    };
                    tree.insert(key.as_slice(), value.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Sled(e),
            })
    }

    fn tree(&self, which: u8) -> &sled::Tree {
        match which {
            0 => &self.flows,
            1 => &self.specs,
            2 => &self.nodes,
            _ => &self.idempotency,
        }
    }

    /// Makes everything applied so far durable (one fsync for the whole batch).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// The flow record, if the flow exists.
    pub fn flow_record(&self, id: FlowId) -> Result<Option<FlowRecord>, StoreError> {
        self.flows
            .get(id.as_bytes())?
            .map(|b| decode(&b))
            .transpose()
    }

    /// Everything stored about a flow.
    pub fn load(&self, id: FlowId) -> Result<Option<StoredFlow>, StoreError> {
        let Some(record) = self.flow_record(id)? else {
            return Ok(None);
        };
        let spec_json = match self.specs.get(id.as_bytes())? {
            Some(b) => String::from_utf8(b.to_vec())
                .map_err(|e| StoreError::Decode(format!("spec of flow {id} is not UTF-8: {e}")))?,
            None => return Err(StoreError::Decode(format!("flow {id} has no spec"))),
        };
        let mut nodes = vec![NodeState::default(); record.node_count as usize];
        for item in self.nodes.scan_prefix(id.as_bytes()) {
            let (key, value) = item?;
            let idx = key
                .get(16..20)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| StoreError::Decode(format!("bad node key in flow {id}")))?;
            let state = decode_node(&value)?.into_state()?;
            // Map elements live after the DAG's nodes (`node_count`).
            if idx as usize >= nodes.len() {
                nodes.resize(idx as usize + 1, NodeState::default());
            }
            nodes[idx as usize] = state;
        }
        Ok(Some(StoredFlow {
            id,
            record,
            spec_json,
            nodes,
        }))
    }

    /// Ids of every flow still running, oldest first: what a restart must resume.
    pub fn unfinished(&self) -> Result<Vec<FlowId>, StoreError> {
        let mut out = Vec::new();
        for item in self.flows.iter() {
            let (key, value) = item?;
            let rec: FlowRecord = decode(&value)?;
            if rec.status == status_code(FlowStatus::Running) {
                out.push(flow_id_of(&key)?);
            }
        }
        Ok(out)
    }

    /// Up to `limit` ids of running flows after `after` (exclusive), oldest first: a
    /// page of the reconciliation pass, which walks them without holding them all.
    pub fn unfinished_page(
        &self,
        after: Option<FlowId>,
        limit: usize,
    ) -> Result<Vec<FlowId>, StoreError> {
        let iter = match after {
            Some(cursor) => {
                let mut start = cursor.as_bytes().to_vec();
                start.push(0);
                self.flows.range(start..)
            }
            None => self.flows.range::<Vec<u8>, _>(..),
        };
        let mut out = Vec::with_capacity(limit.min(1000));
        for item in iter {
            let (key, value) = item?;
            let rec: FlowRecord = decode(&value)?;
            if rec.status == status_code(FlowStatus::Running) {
                out.push(flow_id_of(&key)?);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// A page of flow records, newest first, starting after `after` (exclusive).
    pub fn list(
        &self,
        status: Option<FlowStatus>,
        after: Option<FlowId>,
        limit: usize,
    ) -> Result<Vec<(FlowId, FlowRecord)>, StoreError> {
        let iter = match after {
            Some(cursor) => self.flows.range(..cursor.as_bytes().to_vec()),
            None => self.flows.range::<Vec<u8>, _>(..),
        };
        let mut out = Vec::with_capacity(limit.min(1000));
        for item in iter.rev() {
            let (key, value) = item?;
            let rec: FlowRecord = decode(&value)?;
            if status.is_none_or(|s| status_code(s) == rec.status) {
                out.push((flow_id_of(&key)?, rec));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The flow created with this idempotency key, if any.
    pub fn idempotent_flow(&self, key: &str) -> Result<Option<FlowId>, StoreError> {
        self.idempotency
            .get(key.as_bytes())?
            .map(|b| flow_id_of(&b))
            .transpose()
    }

    /// Every record key of every tree but `meta` (tests and the chaos test check that
    /// deleted flows leave nothing behind).
    pub fn record_count(&self) -> usize {
        self.flows.len() + self.specs.len() + self.nodes.len() + self.idempotency.len()
    }

    /// Number of node records of a flow (tests check that delete leaves none).
    pub fn node_record_count(&self, id: FlowId) -> usize {
        self.nodes.scan_prefix(id.as_bytes()).count()
    }

    /// A value of the `meta` tree.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.meta
            .get(key.as_bytes())?
            .map(|b| String::from_utf8(b.to_vec()).map_err(|e| StoreError::Decode(e.to_string())))
            .transpose()
    }

    /// Sets a value of the `meta` tree and flushes.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.meta.insert(key.as_bytes(), value.as_bytes())?;
        self.flush().await
    }

    /// Whether sled answers; for readiness checks.
    pub fn check(&self) -> Result<(), StoreError> {
        self.meta.get(b"engine-id")?;
        Ok(())
    }
}

fn flow_id_of(bytes: &[u8]) -> Result<FlowId, StoreError> {
    <[u8; 16]>::try_from(bytes)
        .map(FlowId::from_bytes)
        .map_err(|_| StoreError::Decode("bad flow key".to_owned()))
}

/// Removes every record of the flow `id_bytes` inside a transaction: its node
/// records (the flow record says how many there can be), spec, idempotency key
/// (only while it still names this flow) and the flow record itself.
fn delete_in(
    id_bytes: &[u8],
    flows: &sled::transaction::TransactionalTree,
    specs: &sled::transaction::TransactionalTree,
    nodes: &sled::transaction::TransactionalTree,
    idempotency: &sled::transaction::TransactionalTree,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let Some(bytes) = flows.get(id_bytes)? else {
        return Ok(());
    };
    let record: FlowRecord = decode(&bytes).map_err(ConflictableTransactionError::Abort)?;
    for idx in 0..record.node_count {
        let mut key = Vec::with_capacity(20);
        key.extend_from_slice(id_bytes);
        key.extend_from_slice(&idx.to_be_bytes());
        nodes.remove(key)?;
    }
    specs.remove(id_bytes)?;
    if let Some(key) = &record.idempotency_key {
        if idempotency.get(key.as_bytes())?.as_deref() == Some(id_bytes) {
            idempotency.remove(key.as_bytes())?;
        }
    }
    flows.remove(id_bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::NodeStatus;
    use std::sync::Arc;

    fn record(status: FlowStatus) -> FlowRecord {
        FlowRecord {
            name: "f".into(),
            status: status_code(status),
            seq: 3,
            created_at: 1,
            updated_at: 2,
            finished_at: None,
            node_count: 2,
            done_count: 0,
            idempotency_key: Some("k".into()),
            engine_error: None,
        }
    }

    #[tokio::test]
    async fn records_round_trip_and_delete_removes_all() {
        let store = Store::temporary().unwrap();
        let id = FlowId::new();
        let node = NodeState {
            status: NodeStatus::Completed,
            attempt: 2,
            run_first_attempt: 1,
            result: Some(Arc::from("{\"a\":[1,2]}")),
            error: Some("boom".into()),
            progress: None,
            queued_at: Some(5),
            due_at: None,
            started_at: Some(6),
            finished_at: Some(7),
            ..NodeState::default()
        };
        store
            .apply(&[
                WriteOp::Flow(id, record(FlowStatus::Running)),
                WriteOp::Spec(id, "{\"nodes\":[]}".into()),
                WriteOp::Node(id, NodeIdx::from_u32(1), NodeRecord::from_state(&node)),
                WriteOp::Idempotency("k".into(), id),
            ])
            .unwrap();
        store.flush().await.unwrap();
        let loaded = store.load(id).unwrap().unwrap();
        assert_eq!(loaded.record, record(FlowStatus::Running));
        assert_eq!(loaded.nodes[1], node);
        assert_eq!(loaded.nodes[0], NodeState::default());
        assert_eq!(store.unfinished().unwrap(), vec![id]);
        assert_eq!(store.idempotent_flow("k").unwrap(), Some(id));
        store.apply(&[WriteOp::Delete(id)]).unwrap();
        assert!(store.load(id).unwrap().is_none());
        assert_eq!(store.node_record_count(id), 0);
        assert_eq!(store.idempotent_flow("k").unwrap(), None);
        assert_eq!(store.record_count(), 0);
    }

    #[test]
    fn a_delete_in_the_same_batch_as_the_flows_writes_removes_them_all() {
        let store = Store::temporary().unwrap();
        let (id, other) = (FlowId::new(), FlowId::new());
        let node = NodeRecord::from_state(&NodeState::default());
        store
            .apply(&[
                WriteOp::Flow(id, record(FlowStatus::Running)),
                WriteOp::Spec(id, "{}".into()),
                WriteOp::Node(id, NodeIdx::from_u32(0), node.clone()),
                WriteOp::Idempotency("k".into(), id),
                WriteOp::Flow(
                    other,
                    FlowRecord {
                        idempotency_key: None,
                        ..record(FlowStatus::Running)
                    },
                ),
                WriteOp::Node(id, NodeIdx::from_u32(1), node),
                WriteOp::Delete(id),
            ])
            .unwrap();
        assert!(store.load(id).unwrap().is_none());
        assert_eq!(store.node_record_count(id), 0);
        assert_eq!(store.idempotent_flow("k").unwrap(), None);
        assert!(store.flow_record(other).unwrap().is_some());
        // A key that a newer flow took over is not removed with the old flow.
        store
            .apply(&[
                WriteOp::Flow(id, record(FlowStatus::Failed)),
                WriteOp::Idempotency("k".into(), other),
                WriteOp::Delete(id),
            ])
            .unwrap();
        assert_eq!(store.idempotent_flow("k").unwrap(), Some(other));
    }

    #[tokio::test]
    async fn a_record_written_twice_in_one_apply_keeps_its_last_value() {
        let store = Store::temporary().unwrap();
        let (a, b) = (FlowId::new(), FlowId::new());
        let node = |status| NodeState {
            status,
            attempt: 1,
            ..NodeState::default()
        };
        let idx = NodeIdx::from_u32(0);
        store
            .apply(&[
                WriteOp::Flow(a, record(FlowStatus::Running)),
                WriteOp::Node(a, idx, NodeRecord::from_state(&node(NodeStatus::Active))),
                WriteOp::Flow(b, record(FlowStatus::Running)),
                WriteOp::Node(a, idx, NodeRecord::from_state(&node(NodeStatus::Completed))),
                WriteOp::Flow(a, record(FlowStatus::Completed)),
            ])
            .unwrap();
        store.flush().await.unwrap();
        assert_eq!(
            store.flow_record(a).unwrap(),
            Some(record(FlowStatus::Completed))
        );
        assert_eq!(
            store.flow_record(b).unwrap(),
            Some(record(FlowStatus::Running))
        );
        let raw = store.nodes.get(node_key(a, idx)).unwrap().unwrap();
        let back: NodeRecord = decode_node(&raw).unwrap();
        assert_eq!(back, NodeRecord::from_state(&node(NodeStatus::Completed)));
        assert_eq!(
            last_of_each_record(&[
                WriteOp::Idempotency("k".into(), a),
                WriteOp::Idempotency("j".into(), a),
                WriteOp::Idempotency("k".into(), b),
            ]),
            vec![false, true, true]
        );
    }

    #[test]
    fn unknown_version_is_refused() {
        let bytes = [9u8, 0, 0];
        assert!(matches!(
            decode::<FlowRecord>(&bytes),
            Err(StoreError::Version(9))
        ));
    }

    #[tokio::test]
    async fn list_is_newest_first_with_cursor_and_filter() {
        let store = Store::temporary().unwrap();
        let mut ids = Vec::new();
        for i in 0..5 {
            let id = FlowId::new();
            let status = if i % 2 == 0 {
                FlowStatus::Running
            } else {
                FlowStatus::Completed
            };
            store.apply(&[WriteOp::Flow(id, record(status))]).unwrap();
            ids.push(id);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let page = store.list(None, None, 2).unwrap();
        assert_eq!(
            page.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![ids[4], ids[3]]
        );
        let next = store.list(None, Some(ids[3]), 10).unwrap();
        assert_eq!(
            next.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![ids[2], ids[1], ids[0]]
        );
        let running = store.list(Some(FlowStatus::Running), None, 10).unwrap();
        assert_eq!(running.len(), 3);
    }
}
