//! The sled snapshot store: the durable truth about every flow.
//!
//! Layout (one sled tree each):
//! - `flows`: flow id (16 bytes, time-ordered) → flow record (status, seq, times)
//! - `specs`: flow id → the submitted spec as JSON text, written once
//! - `nodes`: flow id ++ node index (u32, big-endian) → node record
//! - `idempotency`: client key → flow id
//! - `meta`: engine-wide values (the engine's stable consumer id)
//! - `schedules`, `schedule_runs`: the schedules (see [`schedules`])
//! - `outbox`: callbacks owed (`crate::outbox`), written with the flow's end and
//!   removed by the deliverer (`crate::notify`) once sent
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

use crate::filter::{FlowCounts, FlowFilter};
use crate::ids::{FlowId, NodeIdx};
use crate::outbox::{OutboxKey, OutboxRecord};
pub use crate::records::{status_code, status_from, FlowRecord, NodeRecord, UnknownStatus};
use crate::state::{FlowStatus, NodeState};

/// Version byte in front of every record; bump it when a record's shape changes and
/// keep a decoder for the old one.
pub const FORMAT_VERSION: u8 = 3;

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
        // Version 2: the node record before the attempt history.
        Some((&2, rest)) => bincode::serde::decode_from_slice::<crate::records::NodeRecordV2, _>(
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
        Some((&(1 | 2 | FORMAT_VERSION), rest)) => {
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
    /// A finished flow's retention entry (see [`crate::retention`]) with the time it
    /// finished, written with its terminal record so that no ended flow is missed.
    Expiry(crate::retention::ExpiryKey, u64),
    /// Removes a retention entry: the flow it names runs again (a retry, a re-run).
    Unexpire(crate::retention::ExpiryKey),
    /// Owe a callback: written in the same transaction as the flow's terminal
    /// record, so a flow never ends on disk without the callbacks it owes. A
    /// `Delete` of the flow leaves it (the record holds its own body).
    Notify(OutboxKey, Box<OutboxRecord>),
}

/// The record a [`WriteOp`] writes.
#[derive(PartialEq, Eq, Hash)]
enum RecordKey<'a> {
    Flow(FlowId),
    Spec(FlowId),
    Node(FlowId, NodeIdx),
    Idempotency(&'a str),
    Delete(FlowId),
    Expiry(crate::retention::ExpiryKey),
    Notify(OutboxKey),
}

impl WriteOp {
    fn record(&self) -> RecordKey<'_> {
        match self {
            WriteOp::Flow(id, _) => RecordKey::Flow(*id),
            WriteOp::Spec(id, _) => RecordKey::Spec(*id),
            WriteOp::Node(id, idx, _) => RecordKey::Node(*id, *idx),
            WriteOp::Idempotency(key, _) => RecordKey::Idempotency(key),
            WriteOp::Delete(id) => RecordKey::Delete(*id),
            WriteOp::Expiry(key, _) | WriteOp::Unexpire(key) => RecordKey::Expiry(*key),
            WriteOp::Notify(key, _) => RecordKey::Notify(*key),
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
    /// Retention entries of ended flows, in time order (see [`crate::retention`]).
    expiry: sled::Tree,
    /// Callbacks owed (see [`crate::outbox`]), until their receiver answered 2xx.
    outbox: sled::Tree,
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
            expiry: db.open_tree("expiry")?,
            outbox: db.open_tree("outbox")?,
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
                WriteOp::Expiry(key, finished_at) => {
                    (5, key.to_vec(), finished_at.to_be_bytes().to_vec())
                }
                // Tree 7 is a removal from `expiry`.
                WriteOp::Unexpire(key) => (7, key.to_vec(), Vec::new()),
                WriteOp::Notify(key, rec) => (6, key.as_bytes().to_vec(), encode(rec)?),
            });
        }
        if encoded.is_empty() {
            // A barrier: a transaction would still seal and write sled's log buffer.
            return Ok(());
        }
        if let [(tree @ (0..=3 | 5 | 6), key, value)] = encoded.as_slice() {
            // A single insert is atomic by itself.
            self.tree(*tree).insert(key.as_slice(), value.as_slice())?;
            return Ok(());
        }
        (
            &self.flows,
            &self.specs,
            &self.nodes,
            &self.idempotency,
            &self.expiry,
            &self.outbox,
        )
            .transaction(|(flows, specs, nodes, idempotency, expiry, outbox)| {
                for (tree, key, value) in &encoded {
                    let tree = match tree {
                        0 => flows,
                        1 => specs,
                        2 => nodes,
                        3 => idempotency,
                        5 => expiry,
                        7 => {
                            expiry.remove(key.as_slice())?;
                            continue;
                        }
                        6 => outbox,
                        _ => {
                            delete_in(key, flows, specs, nodes, idempotency, expiry)?;
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
            5 => &self.expiry,
            6 => &self.outbox,
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

    /// The spec a flow was submitted with, as the JSON text the engine wrote when
    /// it created the flow (the parsed spec, serialized once): what `GET
    /// /flows/{id}/spec` answers, so a client can show or resubmit it.
    pub fn spec_json(&self, id: FlowId) -> Result<Option<String>, StoreError> {
        self.specs
            .get(id.as_bytes())?
            .map(|b| {
                String::from_utf8(b.to_vec())
                    .map_err(|e| StoreError::Decode(format!("spec of flow {id} is not UTF-8: {e}")))
            })
            .transpose()
    }

    /// Everything stored about a flow.
    pub fn load(&self, id: FlowId) -> Result<Option<StoredFlow>, StoreError> {
        let Some(record) = self.flow_record(id)? else {
            return Ok(None);
        };
        let spec_json = self
            .spec_json(id)?
            .ok_or_else(|| StoreError::Decode(format!("flow {id} has no spec")))?;
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

    /// A page of flow records taken by `status` and `filter`, newest first,
    /// starting after `after` (exclusive).
    pub fn list(
        &self,
        status: Option<FlowStatus>,
        filter: &FlowFilter,
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
            if status.is_none_or(|s| status_code(s) == rec.status) && filter.matches(&rec) {
                out.push((flow_id_of(&key)?, rec));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// How many flows `filter` takes, per status: one pass over every flow record
    /// (a record of a status this build does not know is not counted).
    pub fn count(&self, filter: &FlowFilter) -> Result<FlowCounts, StoreError> {
        let mut counts = FlowCounts::default();
        for item in self.flows.iter() {
            let (_, value) = item?;
            let rec: FlowRecord = decode(&value)?;
            if let (true, Ok(status)) = (filter.matches(&rec), rec.flow_status()) {
                counts.add(status);
            }
        }
        Ok(counts)
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

    /// Up to `limit` retention entries inside `ranges` (oldest first in each), with
    /// the time their flow finished.
    pub(crate) fn due_expiries(
        &self,
        ranges: &[(crate::retention::ExpiryKey, crate::retention::ExpiryKey)],
        limit: usize,
    ) -> Result<Vec<(crate::retention::ExpiryKey, u64)>, StoreError> {
        let mut out = Vec::new();
        for (start, end) in ranges {
            for item in self.expiry.range(start.as_slice()..=end.as_slice()) {
                if out.len() >= limit {
                    return Ok(out);
                }
                let (key, value) = item?;
                let (Ok(key), Ok(at)) = (
                    <crate::retention::ExpiryKey>::try_from(key.as_ref()),
                    <[u8; 8]>::try_from(value.as_ref()),
                ) else {
                    return Err(StoreError::Decode("bad retention entry".to_owned()));
                };
                out.push((key, u64::from_be_bytes(at)));
            }
        }
        Ok(out)
    }

    /// Removes a retention entry. Not flushed: an entry that comes back after a crash
    /// is found stale (or due) again by the next sweep.
    pub(crate) fn remove_expiry(&self, key: &[u8]) -> Result<(), StoreError> {
        self.expiry.remove(key)?;
        Ok(())
    }

    /// Number of retention entries (tests check that sweeping leaves none behind).
    pub fn expiry_count(&self) -> usize {
        self.expiry.len()
    }

    /// Gives every ended flow written before retention existed its entry, once per
    /// store (the `meta` key `expiry-index` remembers it is done).
    pub(crate) fn build_expiry_index(&self) -> Result<(), StoreError> {
        const DONE: &str = "expiry-index";
        if self.meta(DONE)?.is_some() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for item in self.flows.iter() {
            let (key, value) = item?;
            let rec: FlowRecord = decode(&value)?;
            let (Ok(status), Some(finished_at)) = (rec.flow_status(), rec.finished_at) else {
                continue;
            };
            if status.is_terminal() {
                let id = flow_id_of(&key)?;
                if let Some(entry) = crate::retention::expiry_entry(id, status, finished_at, None) {
                    batch.insert(entry.as_slice(), finished_at.to_be_bytes().as_slice());
                }
            }
        }
        self.expiry.apply_batch(batch)?;
        self.meta.insert(DONE.as_bytes(), b"1".as_slice())?;
        Ok(())
    }

    /// Bytes sled's files take on disk, for `/metrics` and the retention benchmark.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
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

    /// Up to `limit` outbox keys after `after` (exclusive), in key order: a page of
    /// the callbacks owed, for the deliverer.
    pub fn outbox_keys(
        &self,
        after: Option<&OutboxKey>,
        limit: usize,
    ) -> Result<Vec<OutboxKey>, StoreError> {
        let iter = match after {
            Some(cursor) => {
                let mut start = cursor.as_bytes().to_vec();
                start.push(0);
                self.outbox.range(start..)
            }
            None => self.outbox.range::<Vec<u8>, _>(..),
        };
        let mut out = Vec::with_capacity(limit.min(1000));
        for item in iter.keys() {
            let key = item?;
            let key = OutboxKey::from_slice(&key)
                .ok_or_else(|| StoreError::Decode("bad outbox key".to_owned()))?;
            out.push(key);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// One owed callback, if it is still owed.
    pub fn outbox_record(&self, key: &OutboxKey) -> Result<Option<OutboxRecord>, StoreError> {
        self.outbox
            .get(key.as_bytes())?
            .map(|b| decode(&b))
            .transpose()
    }

    /// Forgets a callback (sent, or given up on); whether it was still there. Not
    /// flushed here: a crash that takes the removal back sends the callback again,
    /// which at-least-once allows.
    pub fn remove_outbox(&self, key: &OutboxKey) -> Result<bool, StoreError> {
        Ok(self.outbox.remove(key.as_bytes())?.is_some())
    }

    /// Number of callbacks owed (walks the tree: for start-up and the deliverer's
    /// occasional recount, not for every scrape).
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
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
/// (only while it still names this flow), retention entry and the flow record itself.
fn delete_in(
    id_bytes: &[u8],
    flows: &sled::transaction::TransactionalTree,
    specs: &sled::transaction::TransactionalTree,
    nodes: &sled::transaction::TransactionalTree,
    idempotency: &sled::transaction::TransactionalTree,
    expiry: &sled::transaction::TransactionalTree,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let Some(bytes) = flows.get(id_bytes)? else {
        return Ok(());
    };
    let record: FlowRecord = decode(&bytes).map_err(ConflictableTransactionError::Abort)?;
    let id = flow_id_of(id_bytes).map_err(ConflictableTransactionError::Abort)?;
    let spec = specs.get(id_bytes)?;
    let spec_json = spec.as_deref().unwrap_or_default();
    if let Some(entry) = crate::retention::entry_of_stored(id, &record, spec_json) {
        expiry.remove(entry.as_slice())?;
    }
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

    #[test]
    fn flows_ended_before_retention_existed_get_their_entry_once() {
        let store = Store::temporary().unwrap();
        let (done, failed, running) = (FlowId::new(), FlowId::new(), FlowId::new());
        let ended = |status, at| FlowRecord {
            finished_at: Some(at),
            ..record(status)
        };
        store
            .apply(&[
                WriteOp::Flow(done, ended(FlowStatus::Completed, 10)),
                WriteOp::Flow(failed, ended(FlowStatus::Cancelled, 20)),
                WriteOp::Flow(running, record(FlowStatus::Running)),
            ])
            .unwrap();
        assert_eq!(store.expiry_count(), 0);
        store.build_expiry_index().unwrap();
        assert_eq!(
            store.expiry_count(),
            2,
            "one per ended flow, none for the running one"
        );
        let policy = crate::retention::Retention {
            completed: crate::retention::Keep::For(std::time::Duration::ZERO),
            failed: crate::retention::Keep::For(std::time::Duration::ZERO),
            sweep_rate: 10,
        };
        let due = store
            .due_expiries(&crate::retention::due_ranges(&policy, 100), 10)
            .unwrap();
        let mut flows: Vec<(Option<FlowId>, u64)> = due
            .iter()
            .map(|(k, at)| (crate::retention::entry_flow(k), *at))
            .collect();
        flows.sort_by_key(|(_, at)| *at);
        assert_eq!(flows, vec![(Some(done), 10), (Some(failed), 20)]);
        // Once per store: an entry removed since is not brought back.
        store.remove_expiry(&due[0].0).unwrap();
        store.build_expiry_index().unwrap();
        assert_eq!(store.expiry_count(), 1);
    }

    #[test]
    fn a_delete_removes_the_flows_retention_entry_whichever_retention_it_has() {
        use crate::retention::{entry_of_stored, expiry_entry, Keep};
        let store = Store::temporary().unwrap();
        let ended = FlowRecord {
            finished_at: Some(50),
            ..record(FlowStatus::Failed)
        };
        for (spec, own) in [
            (r#"{"nodes":[]}"#, None),
            (
                r#"{"nodes":[],"opts":{"retention":"1h"}}"#,
                Some(Keep::For(std::time::Duration::from_secs(3600))),
            ),
        ] {
            let id = FlowId::new();
            let entry = expiry_entry(id, FlowStatus::Failed, 50, own).unwrap();
            assert_eq!(entry_of_stored(id, &ended, spec.as_bytes()), Some(entry));
            store
                .apply(&[
                    WriteOp::Flow(id, ended.clone()),
                    WriteOp::Spec(id, spec.to_owned()),
                    WriteOp::Expiry(entry, 50),
                ])
                .unwrap();
            assert_eq!(store.expiry_count(), 1);
            store.apply(&[WriteOp::Delete(id)]).unwrap();
            assert_eq!(store.expiry_count(), 0, "{spec}");
            assert_eq!(store.record_count(), 0);
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

    #[tokio::test]
    async fn an_owed_callback_is_written_with_the_end_and_outlives_a_delete_of_its_flow() {
        use crate::outbox::{OutboxKey, OutboxRecord};
        let store = Store::temporary().unwrap();
        let id = FlowId::new();
        let key = OutboxKey::new(id, 9, 0);
        let owed = OutboxRecord {
            seq: 9,
            event: "completed".into(),
            url: "https://example.com/h".into(),
            body: "{\"id\":1}".into(),
            created_at: 5,
        };
        store
            .apply(&[
                WriteOp::Flow(id, record(FlowStatus::Completed)),
                WriteOp::Spec(id, "{}".into()),
                WriteOp::Notify(key, Box::new(owed.clone())),
                WriteOp::Delete(id),
            ])
            .unwrap();
        store.flush().await.unwrap();
        assert!(store.load(id).unwrap().is_none());
        assert_eq!(store.outbox_keys(None, 10).unwrap(), vec![key]);
        assert_eq!(store.outbox_record(&key).unwrap(), Some(owed));
        assert_eq!(store.outbox_len(), 1);
        let later = OutboxKey::new(id, 20, 0);
        store
            .apply(&[WriteOp::Notify(
                later,
                Box::new(OutboxRecord {
                    seq: 20,
                    event: "failed".into(),
                    url: "https://example.com/h".into(),
                    body: "{}".into(),
                    created_at: 6,
                }),
            )])
            .unwrap();
        assert_eq!(store.outbox_keys(Some(&key), 10).unwrap(), vec![later]);
        assert!(store.remove_outbox(&key).unwrap());
        assert!(!store.remove_outbox(&key).unwrap());
        assert_eq!(store.outbox_keys(None, 10).unwrap(), vec![later]);
    }

    /// A store written by the build before the attempt history (format version 2)
    /// still loads: its node records read with an empty history, every other field
    /// as it was, and the flow record is read as it always was.
    #[tokio::test]
    async fn records_of_format_version_2_still_load() {
        let store = Store::temporary().unwrap();
        let id = FlowId::new();
        let old = crate::records::NodeRecordV2 {
            status: 4,
            attempt: 3,
            run_first_attempt: 1,
            result: None,
            error: Some("boom 3".into()),
            progress: Some("7".into()),
            queued_at: Some(10),
            due_at: None,
            started_at: Some(11),
            finished_at: Some(12),
            reason: None,
            item: Some("[1]".into()),
            elements: None,
        };
        let v2 = |bytes: Vec<u8>| {
            let mut out = vec![2u8];
            out.extend(bytes);
            out
        };
        let node_bytes =
            v2(bincode::serde::encode_to_vec(&old, bincode::config::standard()).unwrap());
        let flow_bytes = v2(bincode::serde::encode_to_vec(
            record(FlowStatus::Failed),
            bincode::config::standard(),
        )
        .unwrap());
        store.flows.insert(id.as_bytes(), flow_bytes).unwrap();
        store.specs.insert(id.as_bytes(), b"{}".to_vec()).unwrap();
        store
            .nodes
            .insert(node_key(id, NodeIdx::from_u32(0)), node_bytes)
            .unwrap();
        assert_eq!(
            store.flow_record(id).unwrap(),
            Some(record(FlowStatus::Failed))
        );
        let loaded = store.load(id).unwrap().unwrap();
        let node = &loaded.nodes[0];
        assert_eq!(node.status, NodeStatus::Failed);
        assert_eq!(node.attempt, 3);
        assert_eq!(node.error.as_deref(), Some("boom 3"));
        assert_eq!(node.item.as_deref(), Some("[1]"));
        assert!(node.history.is_empty());
        assert_eq!(node.worker, None);
        // The current attempt still shows, as the only one known.
        let attempts: Vec<_> = node.attempts().collect();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].attempt, 3);
        assert_eq!(attempts[0].error.as_deref(), Some("boom 3"));
        // Written again, it is a version 3 record with its history.
        let mut again = node.clone();
        again.history.push(crate::state::Attempt {
            attempt: 2,
            queued_at: Some(5),
            started_at: Some(6),
            finished_at: Some(7),
            worker: Some(Arc::from("w")),
            outcome: crate::state::AttemptOutcome::Failed,
            error: Some("boom 2".into()),
        });
        let rec = NodeRecord::from_state(&again);
        let bytes = encode(&rec).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode_node(&bytes).unwrap().into_state().unwrap(), again);
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
        let page = store.list(None, &FlowFilter::default(), None, 2).unwrap();
        assert_eq!(
            page.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![ids[4], ids[3]]
        );
        let next = store
            .list(None, &FlowFilter::default(), Some(ids[3]), 10)
            .unwrap();
        assert_eq!(
            next.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![ids[2], ids[1], ids[0]]
        );
        let running = store
            .list(Some(FlowStatus::Running), &FlowFilter::default(), None, 10)
            .unwrap();
        assert_eq!(running.len(), 3);
        let counts = store.count(&FlowFilter::default()).unwrap();
        assert_eq!((counts.running, counts.completed, counts.failed), (3, 2, 0));
        let none = FlowFilter::default().name_contains("no such flow");
        assert!(store.list(None, &none, None, 10).unwrap().is_empty());
        assert_eq!(store.count(&none).unwrap(), FlowCounts::default());
    }
}
