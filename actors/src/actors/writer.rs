//! `SnapshotWriter`: the group commit. Every flow's writes go through it; it applies
//! them to sled at once, flushes once for everything that arrived since the last
//! flush started, and only then tells each writer that its writes are durable.
//!
//! An fsync costs about as much for one record as for a thousand, so throughput
//! comes from batching, never from skipping the flush.

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
    /// Writers whose ops are applied but not part of a running flush.
    waiting: Vec<Durable>,
    /// Writers whose ops the running flush holds; `None` when no flush runs.
    flushing: Option<Vec<Durable>>,
    /// Batches flushed so far (for metrics).
    flushes: u64,
}

/// Messages of the writer.
pub enum WriterMsg {
    /// Apply these ops and call `done` once they are durable. An empty `ops` is a
    /// barrier: `done` runs after everything written before it is durable.
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
                if let Err(e) = state.store.apply(&ops) {
                    error!(error = %e, "applying snapshot writes failed");
                    done(Err(e.to_string()));
                    return Ok(());
                }
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

/// Starts one flush covering everything applied so far; the flush runs in its own
/// task so that writes keep arriving (and batching up) meanwhile.
fn start_flush(myself: &ActorRef<WriterMsg>, state: &mut WriterState) {
    let batch = std::mem::take(&mut state.waiting);
    state.flushing = Some(batch);
    let store = state.store.clone();
    let me = myself.clone();
    tokio::spawn(async move {
        let result = store.flush().await.map_err(|e| e.to_string());
        // If the writer is gone the engine is shutting down; nobody waits any more.
        let _ = me.cast(WriterMsg::Flushed(result));
    });
}
