//! `SnapshotWriter`: the group commit. Every flow's writes go through it; it holds
//! what arrived while a flush runs, then applies all of it to sled in one
//! transaction and flushes once, and only then tells each writer that its writes
//! are durable.
//!
//! An fsync costs about as much for one record as for a thousand, so throughput
//! comes from batching, never from skipping the flush. The same holds for sled's
//! transactions: each one seals and writes out sled's log buffer (a `pwrite` and a
//! `sync_file_range`, twice), so one transaction per transition cost four
//! syscalls per node and bound the engine to the disk (`docs/PERFORMANCE.md`). One
//! transaction per flush keeps every transition atomic (a batch of them is) at
//! the cost of one.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::error;

use crate::store::{Store, WriteOp};

/// Told once the writes it came with are durable (`Ok`) or could not be made so.
pub type Durable = Box<dyn FnOnce(Result<(), String>) + Send>;

/// The group-commit actor.
pub struct SnapshotWriter;

/// What the writer starts with.
pub struct WriterArgs {
    /// The store it writes to.
    pub store: Store,
}

/// The writer's state.
pub struct WriterState {
    store: Store,
    /// Ops that arrived since the last flush started, applied when the next starts.
    ops: Vec<WriteOp>,
    /// Writers of `ops`.
    waiting: Vec<Durable>,
    /// Writers whose ops the running flush holds; `None` when no flush runs.
    flushing: Option<Vec<Durable>>,
    /// Batches flushed so far (for metrics).
    flushes: u64,
}

/// Messages of the writer.
pub enum WriterMsg {
    /// Write these ops and call `done` once they are durable. An empty `ops` is a
    /// barrier: `done` runs after everything written before it is durable (and
    /// applied, so that reading the store sees it).
    Write {
        /// Records to write.
        ops: Vec<WriteOp>,
        /// Called after the flush that holds them.
        done: Durable,
    },
    /// The running flush ended.
    Flushed(Result<(), String>),
}

impl Actor for SnapshotWriter {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = WriterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WriterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(WriterState {
            store: args.store,
            ops: Vec::new(),
            waiting: Vec::new(),
            flushing: None,
            flushes: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: WriterMsg,
        state: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WriterMsg::Write { ops, done } => {
                state.ops.extend(ops);
                state.waiting.push(done);
                if state.flushing.is_none() {
                    start_flush(&myself, state);
                }
            }
            WriterMsg::Flushed(result) => {
                state.flushes += 1;
                if let Err(e) = &result {
                    error!(error = %e, "snapshot flush failed");
                }
                for done in state.flushing.take().unwrap_or_default() {
                    done(result.clone());
                }
                if !state.waiting.is_empty() {
                    start_flush(&myself, state);
                }
            }
        }
        Ok(())
    }
}

/// Applies everything that arrived since the last flush in one transaction and
/// starts one flush for it; the flush runs in its own task so that writes keep
/// arriving (and batching up) meanwhile.
fn start_flush(myself: &ActorRef<WriterMsg>, state: &mut WriterState) {
    let batch = std::mem::take(&mut state.waiting);
    let ops = std::mem::take(&mut state.ops);
    if let Err(e) = state.store.apply(&ops) {
        // Nothing of the batch is written: every writer in it restarts from its
        // snapshot (the flow actors treat a failed write as a failure).
        error!(error = %e, "applying snapshot writes failed");
        let reason = e.to_string();
        for done in batch {
            done(Err(reason.clone()));
        }
        return;
    }
    state.flushing = Some(batch);
    let store = state.store.clone();
    let me = myself.clone();
    tokio::spawn(async move {
        let result = store.flush().await.map_err(|e| e.to_string());
        // If the writer is gone the engine is shutting down; nobody waits any more.
        let _ = me.cast(WriterMsg::Flushed(result));
    });
}

/// Waits until everything sent to the writer before is applied and durable: a
/// reader of the store then sees the last write of a flow actor that just failed.
pub async fn barrier(writer: &ActorRef<WriterMsg>) -> Result<(), String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done: Durable = Box::new(move |result| {
        let _ = tx.send(result);
    });
    writer
        .cast(WriterMsg::Write {
            ops: Vec::new(),
            done,
        })
        .map_err(|e| format!("snapshot writer is gone: {e}"))?;
    rx.await
        .map_err(|_| "snapshot writer stopped before the barrier".to_owned())?
}
