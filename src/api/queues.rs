//! What `GET /queues`, `GET /queues/{name}` and the queue gauges of `/metrics`
//! read: every queue Redis knows, and each one's figures.
//!
//! A queue is known when a live worker's heartbeat names it, when it is in
//! `P:queues:delayed`, or when it has keys (`P:q:{queue}:...`). The last are found
//! with `SCAN`, which walks the whole keyspace: each listing examines at most
//! [`SCAN_BUDGET`] batches and the next one resumes where it stopped, the names found
//! kept in a [`Directory`]; in a Redis of millions of keys a queue known only by its
//! keys shows up after a few listings rather than making one listing slow.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use dagflow_actors::queue::{HeldKind, LiveWorker, Queue, QueueError, QueueStats};
use futures::{StreamExt, TryStreamExt};
use warp::http::StatusCode;

use super::errors::{self, HttpError};
use super::models::{
    HeldBackKey, HeldKindSchema, PriorityReady, QueueInfo, QueueWorker, ReadyCounts,
};

/// `SCAN` calls per listing (each examines about 1000 keys).
const SCAN_BUDGET: usize = 20;
/// Most queue names a [`Directory`] keeps from scans.
const MAX_SCANNED: usize = 1000;
/// Held-back keys detailed per queue.
pub(crate) const TOP_HELD: usize = 20;
/// Queues read at once.
const PARALLEL: usize = 8;
/// How long a listing may take before Redis counts as unavailable.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// The queue names found by scanning so far, and where the scan goes on.
#[derive(Default)]
pub(crate) struct Directory {
    state: Mutex<Scanned>,
}

#[derive(Default)]
struct Scanned {
    /// Where the next `SCAN` starts (0: a new pass).
    cursor: u64,
    /// Names seen, not yet found gone.
    names: BTreeSet<String>,
}

impl Directory {
    /// Every name worth looking at: scanned ones (after one more bounded scan step),
    /// `P:queues:delayed`, and the queues `workers` serve.
    async fn candidates(
        &self,
        queue: &Queue,
        workers: &[LiveWorker],
    ) -> Result<BTreeSet<String>, QueueError> {
        let cursor = self.lock().cursor;
        let (next, found) = queue.scan_queue_names(cursor, SCAN_BUDGET).await?;
        let mut names = {
            let mut state = self.lock();
            state.cursor = next;
            for name in found {
                if state.names.len() >= MAX_SCANNED {
                    break;
                }
                state.names.insert(name);
            }
            state.names.clone()
        };
        names.extend(queue.delayed_queue_names().await?);
        for worker in workers {
            names.extend(worker.queues.iter().map(|(name, _)| name.clone()));
        }
        // A foreign worker's heartbeat may name anything: only queue names are
        // looked up, so that no name reaches into another key.
        names.retain(|name| engine_queue_name(name));
        Ok(names)
    }

    /// Drops a name Redis no longer has anything for.
    fn forget(&self, name: &str) {
        self.lock().names.remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Scanned> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One queue's figures and the live workers serving it.
pub(crate) struct QueueReport {
    /// What Redis holds for it.
    pub(crate) stats: QueueStats,
    /// The workers serving it, with the concurrency each gives it.
    pub(crate) workers: Vec<(LiveWorker, Option<u64>)>,
}

impl QueueReport {
    fn new(stats: QueueStats, all: &[LiveWorker]) -> QueueReport {
        let workers = all
            .iter()
            .filter_map(|w| {
                let (_, concurrency) = w.queues.iter().find(|(q, _)| *q == stats.name)?;
                Some((w.clone(), *concurrency))
            })
            .collect();
        QueueReport { stats, workers }
    }

    /// Whether anything at all is known about the queue.
    fn known(&self) -> bool {
        self.stats.known || !self.workers.is_empty()
    }

    /// The concurrency its workers give it, together.
    pub(crate) fn total_concurrency(&self) -> u64 {
        self.workers.iter().filter_map(|(_, c)| *c).sum()
    }

    /// The wire form.
    pub(crate) fn to_model(&self) -> QueueInfo {
        let s = &self.stats;
        QueueInfo {
            name: s.name.clone(),
            ready: ReadyCounts {
                total: s.ready_total(),
                by_priority: s
                    .ready
                    .iter()
                    .map(|p| PriorityReady {
                        priority: p.priority,
                        started: p.started,
                        new: p.fresh,
                    })
                    .collect(),
            },
            running: s.running,
            delayed: s.delayed,
            held_back_jobs: s.held_by_concurrency + s.held_by_rate + s.held_by_flow,
            held_back_keys: s.held_back_keys,
            held_back: s
                .held_back
                .iter()
                .map(|h| HeldBackKey {
                    kind: match h.kind {
                        HeldKind::Concurrency => HeldKindSchema::Concurrency,
                        HeldKind::RateLimit => HeldKindSchema::RateLimit,
                        HeldKind::FlowConcurrency => HeldKindSchema::FlowConcurrency,
                    },
                    key: h.key.clone(),
                    waiting: h.waiting,
                    running: h.running,
                    next_token_at: h.next_token_at,
                })
                .collect(),
            workers: self
                .workers
                .iter()
                .map(|(w, concurrency)| QueueWorker {
                    id: w.id.clone(),
                    concurrency: *concurrency,
                    handlers: w.handlers.clone(),
                    last_seen_ms: w.last_seen_ms,
                })
                .collect(),
            total_concurrency: self.total_concurrency(),
        }
    }
}

/// Every known queue, by name.
pub(crate) async fn all(
    queue: &Queue,
    directory: &Directory,
) -> Result<Vec<QueueReport>, QueueError> {
    let workers = queue.live_workers().await?;
    let names = directory.candidates(queue, &workers).await?;
    let stats: Vec<QueueStats> = futures::stream::iter(names)
        .map(|name| async move { queue.queue_stats(&name, TOP_HELD).await })
        .buffered(PARALLEL)
        .try_collect()
        .await?;
    let mut reports = Vec::with_capacity(stats.len());
    for stats in stats {
        let report = QueueReport::new(stats, &workers);
        if report.known() {
            reports.push(report);
        } else {
            directory.forget(&report.stats.name);
        }
    }
    Ok(reports)
}

/// One queue, `None` when nothing is known about it.
pub(crate) async fn one(queue: &Queue, name: &str) -> Result<Option<QueueReport>, QueueError> {
    let workers = queue.live_workers().await?;
    let stats = queue.queue_stats(name, TOP_HELD).await?;
    let report = QueueReport::new(stats, &workers);
    Ok(report.known().then_some(report))
}

/// Runs a read with the listing deadline; Redis being unreachable or slow is a
/// 503, a reply the protocol does not allow a 500 (logged).
pub(crate) async fn within_deadline<T>(
    read: impl std::future::Future<Output = Result<T, QueueError>>,
) -> Result<T, HttpError> {
    match tokio::time::timeout(LIST_TIMEOUT, read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.is_connection() => {
            tracing::warn!(error = %e, "redis unavailable reading queues");
            Err(errors::redis_unavailable())
        }
        Ok(Err(e)) => Err(HttpError::internal(&e)),
        Err(_) => Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "redis did not answer in time; try again",
        )),
    }
}

/// Whether `name` can name a queue: what the engine accepts as a queue name
/// (ASCII letters, digits, `-`, `_`, `.`; at most `max_len` bytes), with at least
/// one character that is not a dot (a path segment of dots is not a name a URL
/// can carry; see `GET /queues/{name}`).
pub(crate) fn is_queue_name(name: &str, max_len: usize) -> bool {
    engine_queue_name(name) && name.len() <= max_len && name.bytes().any(|b| b != b'.')
}

/// What the engine's flow validation accepts as a queue name, length aside.
fn engine_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_published_pattern() {
        for ok in ["default", "gpu", "py.v2", "image-resize", "a_b", ".x", "x."] {
            assert!(is_queue_name(ok, 256), "{ok}");
        }
        for bad in ["", ".", "..", "...", "a:b", "a b", "é", "g*", "a/b"] {
            assert!(!is_queue_name(bad, 256), "{bad}");
        }
        assert!(!is_queue_name("abc", 2));
    }
}
