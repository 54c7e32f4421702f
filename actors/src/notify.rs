//! The callback deliverer: POSTs every owed callback in the sled outbox
//! (`crate::outbox`) to its URL, at least once, and forgets it only after a 2xx.
//!
//! How a callback travels:
//!
//! 1. A flow ends. Its actor writes one outbox record per `opts.notify` target that
//!    wants this end (`on`), in the same sled batch as the terminal state: the flow
//!    never ends on disk without them. The record holds the body (the final view).
//! 2. After the flush that holds them, the actor wakes this task ([`NotifyWake`]).
//!    Nothing polls: an idle deliverer sleeps until a wake or its next retry is due.
//! 3. The task reads the outbox between two group commits (only durable records;
//!    a record a crash could take back is never sent), keeps at most [`WINDOW`]
//!    keys in memory and sends at most `concurrency` at once, each with its own
//!    timeout, so a slow receiver holds one slot for at most the timeout.
//! 4. A 2xx removes the record. Anything else (an error, a timeout, any other
//!    status) is retried with exponential backoff and jitter up to the cap. A record
//!    older than `max_age` after a failed attempt is dropped with a warning and
//!    counted: a receiver gone for good must not keep work forever.
//!
//! After a restart the task starts by reading the outbox, so callbacks owed before a
//! crash are sent (again, if the crash came between the POST and the removal: the
//! receiver de-duplicates on `X-Dagflow-Flow` + `X-Dagflow-Seq`). This task never
//! runs on a flow actor's path: the actor only writes a record and wakes it.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::actors::Shared;
use crate::clock::now_ms;
use crate::outbox::{OutboxKey, OutboxRecord};

/// Default time one POST may take, connect to last byte of the answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of POSTs in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Default age after which a callback that still fails is dropped: a day covers a
/// receiver's weekend-long outage badly and a deploy or a restart well; operators
/// who need longer set `--webhook-max-age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Default delay before the first retry; doubles with each failure.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Default longest delay between two attempts.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Most outbox keys held in memory at once (the rest wait in sled): bounds the
/// deliverer's memory whatever the backlog (bodies are read from sled per attempt).
pub const WINDOW: usize = 1024;
/// Keys read from sled per page while filling the window.
const PAGE: usize = 256;
/// Wait after a store error before reading the outbox again.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Least time between two reads of the outbox: flows ending by the thousand wake the
/// deliverer as often, and each read runs inside the group-commit writer; wakes in
/// between are served by one read at the end of the gap.
const FILL_GAP: Duration = Duration::from_millis(20);

/// How callbacks are sent; see the module's documentation.
#[derive(Debug, Clone)]
pub struct NotifyOptions {
    /// The HMAC-SHA256 key of `X-Dagflow-Signature`. Without one, callbacks are
    /// sent unsigned (no signature header) and the engine logs a warning at start.
    pub secret: Option<String>,
    /// Longest time one POST may take.
    pub timeout: Duration,
    /// Most POSTs in flight at once.
    pub concurrency: usize,
    /// A callback still failing after this long (from the flow's end) is dropped.
    pub max_age: Duration,
    /// Delay before the first retry; doubles per failure, with jitter.
    pub backoff_base: Duration,
    /// Longest delay between attempts.
    pub backoff_cap: Duration,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            secret: None,
            timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            max_age: DEFAULT_MAX_AGE,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_cap: DEFAULT_BACKOFF_CAP,
        }
    }
}

/// Counters of the deliverer, for `/metrics`.
#[derive(Debug, Default)]
pub struct NotifyStats {
    /// Callbacks a receiver answered with a 2xx (and that were then forgotten).
    pub delivered: AtomicU64,
    /// Attempts that failed (error, timeout, or a status other than 2xx).
    pub failed_attempts: AtomicU64,
    /// Callbacks given up on after `max_age`.
    pub dropped: AtomicU64,
    /// Callbacks owed now (in the outbox).
    pub pending: AtomicU64,
    /// POSTs in flight now.
    pub in_flight: AtomicU64,
}

/// Wakes the deliverer once new outbox records are durable. A wake that comes
/// while the deliverer is busy is kept (one permit), so none is lost.
#[derive(Debug, Clone, Default)]
pub struct NotifyWake(Arc<tokio::sync::Notify>);

impl NotifyWake {
    /// Tells the deliverer that `added` new records are durable in the outbox.
    pub(crate) fn wake(&self, stats: &NotifyStats, added: u64) {
        stats.pending.fetch_add(added, Ordering::Relaxed);
        self.0.notify_one();
    }
}

/// Why the deliverer could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The HTTP client could not be built (TLS set-up).
    #[error("building the callback HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// What one attempt came to.
enum Attempt {
    /// The receiver answered 2xx.
    Delivered,
    /// The attempt failed; why, for the log.
    Failed(String),
    /// The record is gone from the outbox (nothing to send).
    Gone,
}

/// A key in the window: how often it failed and when it is due.
struct Owed {
    failures: u32,
    due: Instant,
}

/// Builds the HTTP client the deliverer uses: per-request timeout, no redirects (a
/// POST redirected would become a GET or be re-sent unsigned somewhere else; a 3xx
/// counts as a failed attempt).
pub(crate) fn client(opts: &NotifyOptions) -> Result<reqwest::Client, NotifyError> {
    Ok(reqwest::Client::builder()
        .timeout(opts.timeout)
        .connect_timeout(opts.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dagflow/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// The deliverer task; runs until the engine aborts it at shutdown (dropping the
/// POSTs in flight with it: their records are still in the outbox).
pub(crate) async fn deliver_loop(
    shared: Arc<Shared>,
    opts: NotifyOptions,
    client: reqwest::Client,
    wake: NotifyWake,
) {
    if opts.secret.is_none() {
        warn!("no --webhook-secret: callbacks (opts.notify) are sent unsigned");
    }
    let stats = &shared.stats.notify;
    let mut owed: BTreeMap<OutboxKey, Owed> = BTreeMap::new();
    let mut in_flight: HashSet<OutboxKey> = HashSet::new();
    let mut tasks: JoinSet<(OutboxKey, Attempt, u64)> = JoinSet::new();
    // Read the outbox at start: callbacks owed before a restart.
    let mut rescan = true;
    // Whether the outbox held more than the window at the last read.
    let mut more_in_store = false;
    let concurrency = opts.concurrency.max(1);
    let secret = opts.secret.clone().map(Arc::<str>::from);
    let mut last_fill: Option<Instant> = None;
    loop {
        // When the next read of the outbox may run, if one is wanted and not yet due.
        let mut fill_at = None;
        if rescan && owed.len() < WINDOW {
            if let Some(at) = last_fill.map(|t| t + FILL_GAP) {
                if at > Instant::now() {
                    fill_at = Some(at);
                }
            }
        }
        if rescan && owed.len() < WINDOW && fill_at.is_none() {
            rescan = false;
            last_fill = Some(Instant::now());
            match fill(&shared, &owed).await {
                Ok((keys, more)) => {
                    more_in_store = more;
                    let now = Instant::now();
                    for key in keys {
                        owed.insert(
                            key,
                            Owed {
                                failures: 0,
                                due: now,
                            },
                        );
                    }
                    if !more {
                        // The whole outbox is in the window: the gauge is exact.
                        stats.pending.store(owed.len() as u64, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "reading the callback outbox failed; retrying");
                    tokio::time::sleep(STORE_RETRY).await;
                    rescan = true;
                    continue;
                }
            }
        }
        // Start what is due, oldest key first, up to the concurrency.
        let now = Instant::now();
        let due: Vec<(OutboxKey, u32)> = owed
            .iter()
            .filter(|(k, o)| o.due <= now && !in_flight.contains(*k))
            .take(concurrency.saturating_sub(in_flight.len()))
            .map(|(k, o)| (*k, o.failures))
            .collect();
        for (key, failures) in due {
            let record = match shared.store.outbox_record(&key) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "reading a callback record failed; retrying");
                    if let Some(o) = owed.get_mut(&key) {
                        o.due = now + STORE_RETRY;
                    }
                    continue;
                }
            };
            in_flight.insert(key);
            stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let client = client.clone();
            let secret = secret.clone();
            tasks.spawn(async move {
                let Some(record) = record else {
                    return (key, Attempt::Gone, 0);
                };
                let created_at = record.created_at;
                // A panic (a bug in a dependency) is a failed attempt, retried like
                // any other, not a key stuck "in flight" for ever.
                let attempt = post(&client, secret.as_deref(), &key, &record, failures + 1);
                let outcome = std::panic::AssertUnwindSafe(attempt)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Attempt::Failed("the POST panicked".to_owned()));
                (key, outcome, created_at)
            });
        }
        let next_due = owed
            .iter()
            .filter(|(k, _)| !in_flight.contains(*k))
            .map(|(_, o)| o.due)
            .min();
        // With every slot busy, only an ending POST can start the next one.
        let can_start = in_flight.len() < concurrency;
        tokio::select! {
            _ = wake.0.notified() => rescan = true,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok((key, outcome, created_at)) = joined else {
                    // Only a cancelled task ends without its key (panics are caught
                    // in it), and no task is cancelled before the loop itself ends.
                    warn!("a callback delivery task ended without a result");
                    continue;
                };
                in_flight.remove(&key);
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                let done = match outcome {
                    Attempt::Delivered => {
                        stats.delivered.fetch_add(1, Ordering::Relaxed);
                        debug!(flow = %key.flow(), "callback delivered");
                        true
                    }
                    Attempt::Gone => true,
                    Attempt::Failed(why) => {
                        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        let age = now_ms().saturating_sub(created_at);
                        if age >= opts.max_age.as_millis() as u64 {
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                            warn!(flow = %key.flow(), error = %why, age_ms = age,
                                "callback dropped: still failing past the maximum age");
                            true
                        } else {
                            let o = owed.entry(key).or_insert(Owed { failures: 0, due: now });
                            o.failures += 1;
                            o.due = Instant::now() + backoff(&opts, o.failures);
                            info!(flow = %key.flow(), error = %why, failures = o.failures,
                                "callback attempt failed; retrying");
                            false
                        }
                    }
                };
                if done {
                    owed.remove(&key);
                    match shared.store.remove_outbox(&key) {
                        Ok(true) => {
                            let _ = stats.pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed,
                                |n| Some(n.saturating_sub(1)));
                        }
                        Ok(false) => {}
                        Err(e) => warn!(error = %e, "removing a sent callback failed; it may be sent again"),
                    }
                    // Room in the window for records that did not fit.
                    rescan |= more_in_store;
                }
            }
            _ = sleep_until(next_due), if next_due.is_some() && can_start => {}
            _ = sleep_until(fill_at), if fill_at.is_some() => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Reads outbox keys not already in the window, up to the room left, between two
/// group commits (so only durable records); and whether more were left out.
async fn fill(
    shared: &Shared,
    owed: &BTreeMap<OutboxKey, Owed>,
) -> Result<(Vec<OutboxKey>, bool), String> {
    let known: HashSet<OutboxKey> = owed.keys().copied().collect();
    let room = WINDOW.saturating_sub(known.len());
    crate::actors::writer::read_durable(&shared.writer, move |store| {
        let mut found = Vec::new();
        let mut after = None;
        loop {
            let page = store.outbox_keys(after.as_ref(), PAGE)?;
            let Some(last) = page.last().copied() else {
                return Ok((found, false));
            };
            after = Some(last);
            for key in page {
                if known.contains(&key) {
                    continue;
                }
                if found.len() >= room {
                    return Ok((found, true));
                }
                found.push(key);
            }
        }
    })
    .await?
    .map_err(|e: crate::store::StoreError| e.to_string())
}

/// One POST of a callback.
async fn post(
    client: &reqwest::Client,
    secret: Option<&str>,
    key: &OutboxKey,
    record: &OutboxRecord,
    attempt: u32,
) -> Attempt {
    let mut request = client
        .post(&record.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Dagflow-Flow", key.flow().to_string())
        .header("X-Dagflow-Seq", record.seq.to_string())
        .header("X-Dagflow-Event", record.event.as_str())
        .header("X-Dagflow-Attempt", attempt.to_string());
    if let Some(secret) = secret {
        request = request.header("X-Dagflow-Signature", signature(secret, &record.body));
    }
    match request.body(record.body.clone()).send().await {
        Ok(response) if response.status().is_success() => Attempt::Delivered,
        Ok(response) => Attempt::Failed(format!("the receiver answered {}", response.status())),
        Err(e) if e.is_timeout() => Attempt::Failed("timed out".to_owned()),
        Err(e) => Attempt::Failed(e.to_string()),
    }
}

/// `sha256=` and the lowercase hex HMAC-SHA256 of `body` under `secret`: the value
/// of `X-Dagflow-Signature` (the format GitHub's webhooks use, so receivers' code
/// for those works unchanged).
pub fn signature(secret: &str, body: &str) -> String {
    use std::fmt::Write;
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body.as_bytes());
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * bytes.len());
    out.push_str("sha256=");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Delay after the `failures`-th failure: `base * 2^(failures-1)`, capped, with
/// "equal jitter" (half fixed, half random) so that callbacks that failed together
/// (a receiver restarting) do not all come back at the same moment.
fn backoff(opts: &NotifyOptions, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(30);
    let full = opts
        .backoff_base
        .saturating_mul(1u32 << shift)
        .min(opts.backoff_cap);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let opts = NotifyOptions {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(1),
            ..NotifyOptions::default()
        };
        for (failures, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let d = backoff(&opts, failures).as_millis() as u64;
            assert!(d >= full / 2 && d <= full, "failure {failures}: {d} ms");
        }
    }
}
