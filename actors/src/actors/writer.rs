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

/// A read of the store that must see only durable state: it runs when every write
/// applied to sled so far has been flushed (`Err` when the flush failed).
pub type DurableRead = Box<dyn FnOnce(Result<&Store, String>) + Send>;

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
    /// Reads waiting for the running flush: run before the next batch is applied.
    reads: Vec<DurableRead>,
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
    /// Run this read once everything applied to sled so far is durable. A list
    /// read straight from sled could show a write that the running flush has not
    /// made durable yet (a crash would take it back).
    Read(DurableRead),
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
            reads: Vec::new(),
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
            WriterMsg::Read(read) => {
                if state.flushing.is_none() {
                    // No flush runs, so nothing is applied that is not durable.
                    read(Ok(&state.store));
                } else {
                    state.reads.push(read);
                }
            }
            WriterMsg::Flushed(result) => {
                state.flushes += 1;
                if let Err(e) = &result {
                    error!(error = %e, "snapshot flush failed");
                }
                fail::fail_point!("writer::callback");
                for done in state.flushing.take().unwrap_or_default() {
                    done(result.clone());
                }
                // Between two batches everything applied is durable.
                for read in std::mem::take(&mut state.reads) {
                    read(result.clone().map(|()| &state.store));
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
    // A panic here (a bug, or sled's) must not take the writer with it: every flow
    // would then wait forever for its writes. It fails this batch instead, like an
    // I/O error: every writer in it restarts from its snapshot.
    let store = &state.store;
    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        apply(store, &ops)?;
        fail::fail_point!("writer::after_apply");
        Ok::<(), crate::store::StoreError>(())
    }));
    let failure = match applied {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("the snapshot writer panicked applying a batch".to_owned()),
    };
    if let Some(reason) = failure {
        // The flow actors treat a failed write as a failure of their own.
        error!(error = %reason, "applying snapshot writes failed");
        for done in batch {
            done(Err(reason.clone()));
        }
        return;
    }
    state.flushing = Some(batch);
    let store = state.store.clone();
    let me = myself.clone();
    tokio::spawn(async move {
        let flush = tokio::spawn(async move {
            fail::fail_point!("writer::flush", |_| Err(
                "injected fault at writer::flush".to_owned()
            ));
            store.flush().await.map_err(|e| e.to_string())
        });
        // A flush that panicked is a failed flush, not a writer waiting forever.
        let result = flush
            .await
            .unwrap_or_else(|e| Err(format!("the snapshot flush panicked: {e}")));
        // If the writer is gone the engine is shutting down; nobody waits any more.
        let _ = me.cast(WriterMsg::Flushed(result));
    });
}

/// Waits until everything sent to the writer before is applied and durable: a
/// reader of the store then sees the last write of a flow actor that just failed.
pub async fn barrier(writer: &ActorRef<WriterMsg>) -> Result<(), String> {
    write(writer, Vec::new()).await
}

/// Writes `ops` through the group commit and waits until they are durable.
pub async fn write(writer: &ActorRef<WriterMsg>, ops: Vec<WriteOp>) -> Result<(), String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done: Durable = Box::new(move |result| {
        let _ = tx.send(result);
    });
    writer
        .cast(WriterMsg::Write { ops, done })
        .map_err(|e| format!("snapshot writer is gone: {e}"))?;
    rx.await
        .map_err(|_| "snapshot writer stopped before the write was durable".to_owned())?
}

/// Runs `read` on the store once everything applied so far is durable, and returns
/// its answer.
pub async fn read_durable<T: Send + 'static>(
    writer: &ActorRef<WriterMsg>,
    read: impl FnOnce(&Store) -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: DurableRead = Box::new(move |store| {
        let _ = tx.send(store.map(read));
    });
    writer
        .cast(WriterMsg::Read(job))
        .map_err(|e| format!("snapshot writer is gone: {e}"))?;
    rx.await
        .map_err(|_| "snapshot writer stopped before the read".to_owned())?
}

/// Applies a batch to sled (failpoint `writer::before_apply` makes it fail whole).
fn apply(store: &Store, ops: &[WriteOp]) -> Result<(), crate::store::StoreError> {
    fail::fail_point!("writer::before_apply", |_| Err(
        crate::store::StoreError::Injected("writer::before_apply")
    ));
    store.apply(ops)
}
