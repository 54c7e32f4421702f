//! The scheduler task and the embedding API of schedules.
//!
//! One task per full engine. Each pass loads every schedule, fires the ticks that
//! are due and sleeps until the earliest next tick, or until a schedule is created
//! or changed ([`tokio::sync::Notify`]); there is no polling, only a wake-up at
//! least every [`MAX_SLEEP`] so that a wall clock that jumps is noticed.
//!
//! # Firing a tick, exactly once
//!
//! 1. Under the schedule lock, the tick is written as the record's `pendingTick`
//!    and flushed.
//! 2. If the engine already has a flow for the key `schedule:{name}:{tick_ms}` (a
//!    crash came after step 3), that is the run's flow. Otherwise the overlap
//!    policy is applied against the last run's flow, and the flow is created with
//!    that key ([`Engine::create`] is idempotent: a repeated key returns the first
//!    flow and starts nothing).
//! 3. Under the lock, `lastTick` becomes the tick, `pendingTick` is cleared and the
//!    run is appended, in one sled transaction, flushed.
//!
//! A restart finds a `pendingTick` and repeats steps 2 and 3 for it, whatever the
//! catch-up policy: a tick whose firing began is finished. Ticks up to `lastTick`
//! are never looked at again, so none fires twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{
    validate, CatchUp, Overlap, RunOutcome, ScheduleError, SchedulePatch, ScheduleRun,
    ScheduleSpec, ScheduleView, Timetable, MAX_CATCH_UP, MAX_RUNS, MAX_SCHEDULES,
};
use crate::actors::Shared;
use crate::clock::now_ms;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::ids::FlowId;
use crate::records::status_from;

/// Longest sleep between passes, whatever the next tick: a wall clock that jumps
/// (NTP, a suspended VM) is noticed within this.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Pause after a pass that could not fire a tick (Redis down, store error).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Counters of the scheduler, for `/metrics`.
#[derive(Debug, Default)]
pub struct ScheduleStats {
    /// Ticks that started a flow (`started` and `cancelledPrevious` runs).
    pub fired: AtomicU64,
    /// Ticks skipped because the previous run was still going (`overlap: skip`).
    pub skipped_overlap: AtomicU64,
    /// Ticks missed during downtime and not fired (by the catch-up policy or past
    /// [`MAX_CATCH_UP`]).
    pub missed: AtomicU64,
    /// Ticks whose flow could not be created for good (`failed` runs).
    pub failed: AtomicU64,
    /// Previous runs cancelled by `overlap: cancelPrevious`.
    pub cancelled_previous: AtomicU64,
    /// Passes of the scheduler loop.
    pub passes: AtomicU64,
}

/// The stored form of a schedule (JSON text in the `schedules` tree).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScheduleRecord {
    /// Format of this record; bump when its shape changes.
    version: u8,
    spec: ScheduleSpec,
    created_at: u64,
    updated_at: u64,
    /// Ticks at or before this are not fired: the creation, the last resume, or the
    /// last change of the timetable. Keeps a resumed schedule from catching up on
    /// the ticks it was paused through.
    since: u64,
    /// The last tick decided (fired, skipped, or dropped as missed).
    last_tick: Option<u64>,
    /// A tick whose firing began and is not recorded yet (see the module doc).
    pending_tick: Option<u64>,
    /// The flow of the last started run, for the overlap policy.
    last_flow: Option<String>,
}

const RECORD_VERSION: u8 = 1;

impl ScheduleRecord {
    fn from_json(json: &str) -> Result<ScheduleRecord, ScheduleError> {
        serde_json::from_str(json).map_err(|e| ScheduleError::Corrupt(e.to_string()))
    }

    fn to_json(&self) -> Result<String, ScheduleError> {
        serde_json::to_string(self).map_err(|e| ScheduleError::Corrupt(e.to_string()))
    }

    /// Ticks after this may fire.
    fn fire_after(&self) -> u64 {
        self.since.max(self.last_tick.unwrap_or(0))
    }

    fn view(&self, now: u64) -> ScheduleView {
        let next_fire_at = if self.spec.paused {
            None
        } else {
            Timetable::new(&self.spec.cron, &self.spec.timezone)
                .ok()
                .and_then(|t| t.next_after(self.fire_after().max(now)))
        };
        ScheduleView {
            name: self.spec.name.clone(),
            cron: self.spec.cron.clone(),
            timezone: self.spec.timezone.clone(),
            flow: self.spec.flow.clone(),
            overlap: self.spec.overlap,
            catch_up: self.spec.catch_up,
            paused: self.spec.paused,
            created_at: self.created_at,
            updated_at: self.updated_at,
            next_fire_at,
            last_tick_at: self.last_tick,
            last_flow_id: self.last_flow.clone(),
        }
    }
}

/// The idempotency key of a schedule's tick: the same tick always names the same
/// flow.
pub fn tick_key(name: &str, tick_ms: u64) -> String {
    format!("schedule:{name}:{tick_ms}")
}

/// The schedules of one engine: their records, the lock that orders changes to
/// them, and the task that fires them.
pub struct Schedules {
    shared: Arc<Shared>,
    /// Serializes read-modify-write of schedule records between the API and the
    /// scheduler, so that a pause or delete is never overwritten by a firing that
    /// read the record before it.
    lock: tokio::sync::Mutex<()>,
    /// Wakes the scheduler when a schedule is created or changed.
    wake: Notify,
    /// A tick less late than this is on time (see [`super::DEFAULT_GRACE`]).
    grace_ms: u64,
    /// The scheduler task, until shutdown.
    task: Mutex<Option<JoinHandle<()>>>,
    /// Counters for `/metrics`.
    pub stats: ScheduleStats,
}

impl Schedules {
    /// The schedules of the engine whose parts `shared` holds.
    pub(crate) fn new(shared: Arc<Shared>, grace: Duration) -> Schedules {
        Schedules {
            shared,
            lock: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            grace_ms: grace.as_millis() as u64,
            task: Mutex::new(None),
            stats: ScheduleStats::default(),
        }
    }

    /// Starts the scheduler task; it fires flows through `engine`.
    pub(crate) fn start(self: &Arc<Self>, engine: Engine) {
        let this = Arc::clone(self);
        let task = tokio::spawn(async move { this.run(engine).await });
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// Stops the scheduler task and waits until it has let go of the store. Safe at
    /// any point of a firing: the next start finishes a pending tick.
    pub(crate) async fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    async fn run(&self, engine: Engine) {
        info!("scheduler started");
        loop {
            // Register interest before the pass: a change during the pass wakes the
            // sleep that follows it.
            let woken = self.wake.notified();
            let mut woken = std::pin::pin!(woken);
            woken.as_mut().enable();
            self.stats.passes.fetch_add(1, Ordering::Relaxed);
            let sleep = match self.pass(&engine).await {
                Ok(Some(next)) => {
                    Duration::from_millis(next.saturating_sub(now_ms())).min(MAX_SLEEP)
                }
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    warn!(error = %e, "scheduler pass failed; retrying");
                    RETRY_AFTER
                }
            };
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = woken => {}
            }
        }
    }

    /// Fires what is due; returns the earliest next tick of any schedule.
    async fn pass(&self, engine: &Engine) -> Result<Option<u64>, ScheduleError> {
        let mut earliest: Option<u64> = None;
        let mut failed = None;
        for name in self.shared.store.schedule_names()? {
            let record = match self.load(&name) {
                Ok(Some(r)) => r,
                Ok(None) => continue, // deleted since the names were read
                Err(e) => {
                    warn!(schedule = %name, error = %e, "unreadable schedule record; skipped");
                    continue;
                }
            };
            match self.serve(engine, record).await {
                Ok(Some(next)) => earliest = Some(earliest.map_or(next, |e| e.min(next))),
                Ok(None) => {}
                Err(e) => {
                    warn!(schedule = %name, error = %e, "firing a schedule failed; retrying");
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(earliest),
        }
    }

    /// Fires one schedule's due ticks; returns its next tick.
    async fn serve(
        &self,
        engine: &Engine,
        mut record: ScheduleRecord,
    ) -> Result<Option<u64>, ScheduleError> {
        let name = record.spec.name.clone();
        if let Some(tick) = record.pending_tick {
            self.fire(engine, &name, tick).await?;
            match self.load(&name)? {
                Some(r) => record = r,
                None => return Ok(None),
            }
        }
        if record.spec.paused {
            return Ok(None);
        }
        let timetable = Timetable::new(&record.spec.cron, &record.spec.timezone)
            .map_err(|e| ScheduleError::Corrupt(e.to_string()))?;
        let now = now_ms();
        let (due, dropped) = timetable.due(record.fire_after(), now, MAX_CATCH_UP);
        if let Some(&latest) = due.last() {
            let on_time = now.saturating_sub(latest) <= self.grace_ms;
            let fire: Vec<u64> = match record.spec.catch_up {
                CatchUp::None if on_time => vec![latest],
                CatchUp::None => Vec::new(),
                CatchUp::Latest => vec![latest],
                CatchUp::All => due.clone(),
            };
            let missed = dropped + (due.len() - fire.len()) as u64;
            if missed > 0 {
                self.stats.missed.fetch_add(missed, Ordering::Relaxed);
                info!(schedule = %name, missed, policy = ?record.spec.catch_up, "ticks missed while down are not fired");
            }
            if fire.is_empty() {
                // Nothing to fire: remember that these ticks are decided.
                self.advance(&name, latest).await?;
            }
            for tick in fire {
                self.fire(engine, &name, tick).await?;
            }
        }
        let after = self.load(&name)?.map_or(now, |r| r.fire_after().max(now));
        Ok(timetable.next_after(after))
    }

    /// Marks ticks up to `tick` decided without firing them.
    async fn advance(&self, name: &str, tick: u64) -> Result<(), ScheduleError> {
        let _guard = self.lock.lock().await;
        let Some(mut record) = self.load(name)? else {
            return Ok(());
        };
        record.last_tick = Some(record.last_tick.map_or(tick, |t| t.max(tick)));
        self.shared
            .store
            .put_schedule(name, &record.to_json()?, None, MAX_RUNS)
            .await?;
        Ok(())
    }

    /// Fires one tick, exactly once (see the module doc).
    async fn fire(&self, engine: &Engine, name: &str, tick: u64) -> Result<(), ScheduleError> {
        // Step 1: the tick is pending, durably, before anything is created.
        let record = {
            let _guard = self.lock.lock().await;
            let Some(mut record) = self.load(name)? else {
                return Ok(());
            };
            if record.pending_tick != Some(tick) {
                if record.spec.paused || record.last_tick.is_some_and(|t| t >= tick) {
                    // Paused or already decided since the pass read it.
                    return Ok(());
                }
                record.pending_tick = Some(tick);
                self.shared
                    .store
                    .put_schedule(name, &record.to_json()?, None, MAX_RUNS)
                    .await?;
            }
            record
        };
        // Step 2: the flow.
        let key = tick_key(name, tick);
        let previous = record
            .last_flow
            .as_deref()
            .and_then(|id| id.parse::<FlowId>().ok());
        let mut run = ScheduleRun {
            tick_at: tick,
            fired_at: now_ms(),
            outcome: RunOutcome::Started,
            flow_id: None,
            previous_flow_id: None,
            error: None,
            flow_status: None,
        };
        if let Some(existing) = self.shared.store.idempotent_flow(&key)? {
            // A crash came after the create: the tick already has its flow.
            run.flow_id = Some(existing.to_string());
        } else {
            let running = previous.filter(|id| self.is_running(*id));
            match (record.spec.overlap, running) {
                (Overlap::Skip, Some(prev)) => {
                    run.outcome = RunOutcome::SkippedOverlap;
                    run.previous_flow_id = Some(prev.to_string());
                }
                (overlap, running) => {
                    if let (Overlap::CancelPrevious, Some(prev)) = (overlap, running) {
                        match engine.cancel(prev).await {
                            // Ended or deleted meanwhile: nothing to cancel.
                            Ok(()) | Err(EngineError::Conflict(_) | EngineError::NotFound(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                        run.outcome = RunOutcome::CancelledPrevious;
                        run.previous_flow_id = Some(prev.to_string());
                        self.stats
                            .cancelled_previous
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    match engine.create(&record.spec.flow, Some(key.clone())).await {
                        Ok(id) => run.flow_id = Some(id.to_string()),
                        // Redis down, engine stopping: the tick stays pending and
                        // is fired again with the same key.
                        Err(e) if e.is_retryable() => return Err(e.into()),
                        Err(e) => {
                            run.outcome = RunOutcome::Failed;
                            run.error = Some(e.to_string());
                        }
                    }
                }
            }
        }
        // A crash between the create and step 3 (tests: only schedules whose name
        // starts with `crash`, so that other tests' engines are not touched).
        fail::fail_point!("schedule::before_record", name.starts_with("crash"), |_| {
            Err(ScheduleError::Store(
                "injected fault at schedule::before_record".to_owned(),
            ))
        });
        // Step 3: the tick is decided, with its run, durably.
        {
            let _guard = self.lock.lock().await;
            let Some(mut record) = self.load(name)? else {
                return Ok(()); // deleted meanwhile; its runs went with it
            };
            record.pending_tick = None;
            record.last_tick = Some(record.last_tick.map_or(tick, |t| t.max(tick)));
            if let Some(id) = &run.flow_id {
                record.last_flow = Some(id.clone());
            }
            let run_json =
                serde_json::to_string(&run).map_err(|e| ScheduleError::Corrupt(e.to_string()))?;
            self.shared
                .store
                .put_schedule(name, &record.to_json()?, Some((tick, &run_json)), MAX_RUNS)
                .await?;
        }
        let counter = match run.outcome {
            RunOutcome::Started | RunOutcome::CancelledPrevious => &self.stats.fired,
            RunOutcome::SkippedOverlap => &self.stats.skipped_overlap,
            RunOutcome::Failed => &self.stats.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        debug!(schedule = %name, tick, outcome = ?run.outcome, flow = ?run.flow_id, "tick fired");
        Ok(())
    }

    /// Whether the flow exists and is not terminal.
    fn is_running(&self, id: FlowId) -> bool {
        match self.shared.store.flow_record(id) {
            Ok(Some(rec)) => status_from(rec.status).is_ok_and(|s| !s.is_terminal()),
            _ => false,
        }
    }

    fn load(&self, name: &str) -> Result<Option<ScheduleRecord>, ScheduleError> {
        self.shared
            .store
            .schedule(name)?
            .map(|json| ScheduleRecord::from_json(&json))
            .transpose()
    }

    fn found(&self, name: &str) -> Result<ScheduleRecord, ScheduleError> {
        self.load(name)?
            .ok_or_else(|| ScheduleError::NotFound(name.chars().take(256).collect()))
    }

    /// Validates and stores a new schedule; durable when it returns.
    pub async fn create(&self, spec: ScheduleSpec) -> Result<ScheduleView, ScheduleError> {
        validate(&spec, &self.shared.limits)?;
        let now = now_ms();
        let record = ScheduleRecord {
            version: RECORD_VERSION,
            spec,
            created_at: now,
            updated_at: now,
            since: now,
            last_tick: None,
            pending_tick: None,
            last_flow: None,
        };
        let name = record.spec.name.clone();
        {
            let _guard = self.lock.lock().await;
            if self.count() >= MAX_SCHEDULES {
                return Err(ScheduleError::Full(MAX_SCHEDULES));
            }
            if !self
                .shared
                .store
                .insert_schedule(&name, &record.to_json()?)
                .await?
            {
                return Err(ScheduleError::Exists(name));
            }
        }
        self.wake.notify_one();
        info!(schedule = %name, cron = %record.spec.cron, "schedule created");
        Ok(record.view(now_ms()))
    }

    /// One schedule.
    pub fn get(&self, name: &str) -> Result<ScheduleView, ScheduleError> {
        Ok(self.found(name)?.view(now_ms()))
    }

    /// Every schedule, by name.
    pub fn list(&self) -> Result<Vec<ScheduleView>, ScheduleError> {
        let now = now_ms();
        self.shared
            .store
            .all_schedules()?
            .into_iter()
            .map(|(_, json)| Ok(ScheduleRecord::from_json(&json)?.view(now)))
            .collect()
    }

    /// Changes a schedule. Resuming, and changing its cron or zone, start its
    /// timetable afresh from now: the ticks it was paused through are not fired.
    pub async fn update(
        &self,
        name: &str,
        patch: SchedulePatch,
    ) -> Result<ScheduleView, ScheduleError> {
        let view = {
            let _guard = self.lock.lock().await;
            let mut record = self.found(name)?;
            let now = now_ms();
            let spec = &mut record.spec;
            let mut fresh = false;
            if let Some(cron) = patch.cron {
                fresh |= cron != spec.cron;
                spec.cron = cron;
            }
            if let Some(zone) = patch.timezone {
                fresh |= zone != spec.timezone;
                spec.timezone = zone;
            }
            if let Some(flow) = patch.flow {
                spec.flow = flow;
            }
            if let Some(overlap) = patch.overlap {
                spec.overlap = overlap;
            }
            if let Some(catch_up) = patch.catch_up {
                spec.catch_up = catch_up;
            }
            if let Some(paused) = patch.paused {
                fresh |= spec.paused && !paused;
                spec.paused = paused;
            }
            validate(spec, &self.shared.limits)?;
            if fresh {
                record.since = now;
            }
            record.updated_at = now;
            self.shared
                .store
                .put_schedule(name, &record.to_json()?, None, MAX_RUNS)
                .await?;
            record.view(now)
        };
        self.wake.notify_one();
        Ok(view)
    }

    /// Removes a schedule and its runs; the flows it started stay.
    pub async fn delete(&self, name: &str) -> Result<(), ScheduleError> {
        let existed = {
            let _guard = self.lock.lock().await;
            self.shared.store.delete_schedule(name).await?
        };
        if !existed {
            return Err(ScheduleError::NotFound(name.chars().take(256).collect()));
        }
        self.wake.notify_one();
        info!(schedule = %name, "schedule deleted");
        Ok(())
    }

    /// A schedule's last runs, newest first (at most [`MAX_RUNS`]), each with its
    /// flow's status as on disk now.
    pub async fn runs(&self, name: &str, limit: usize) -> Result<Vec<ScheduleRun>, ScheduleError> {
        self.found(name)?;
        let name = name.to_owned();
        let limit = limit.clamp(1, MAX_RUNS);
        // Read between two group commits: a status shown is one a crash cannot
        // take back.
        let read = crate::actors::writer::read_durable(&self.shared.writer, move |store| {
            let mut runs = Vec::new();
            for json in store.schedule_runs(&name, limit)? {
                let mut run: ScheduleRun = serde_json::from_str(&json)
                    .map_err(|e| ScheduleError::Corrupt(e.to_string()))?;
                run.flow_status = run
                    .flow_id
                    .as_deref()
                    .and_then(|id| id.parse::<FlowId>().ok())
                    .and_then(|id| store.flow_record(id).ok().flatten())
                    .and_then(|rec| status_from(rec.status).ok());
                runs.push(run);
            }
            Ok::<_, ScheduleError>(runs)
        });
        read.await.map_err(ScheduleError::Store)?
    }

    /// Number of schedules.
    pub fn count(&self) -> usize {
        self.shared.store.schedule_count().unwrap_or(0)
    }
}

/// The embedding API of schedules.
impl Engine {
    /// Validates and stores a schedule; it fires from its next tick on. Durable
    /// when it returns. A name in use is [`ScheduleError::Exists`].
    pub async fn create_schedule(&self, spec: ScheduleSpec) -> Result<ScheduleView, ScheduleError> {
        self.schedules()?.create(spec).await
    }

    /// One schedule, with its next fire time.
    pub fn schedule(&self, name: &str) -> Result<ScheduleView, ScheduleError> {
        self.schedules()?.get(name)
    }

    /// Every schedule, by name.
    pub fn list_schedules(&self) -> Result<Vec<ScheduleView>, ScheduleError> {
        self.schedules()?.list()
    }

    /// Stops a schedule from firing until it is resumed.
    pub async fn pause_schedule(&self, name: &str) -> Result<ScheduleView, ScheduleError> {
        let patch = SchedulePatch {
            paused: Some(true),
            ..SchedulePatch::default()
        };
        self.schedules()?.update(name, patch).await
    }

    /// Lets a paused schedule fire again, from its next tick (the ticks it was paused
    /// through are not fired).
    pub async fn resume_schedule(&self, name: &str) -> Result<ScheduleView, ScheduleError> {
        let patch = SchedulePatch {
            paused: Some(false),
            ..SchedulePatch::default()
        };
        self.schedules()?.update(name, patch).await
    }

    /// Changes any of a schedule's fields (see [`SchedulePatch`]).
    pub async fn update_schedule(
        &self,
        name: &str,
        patch: SchedulePatch,
    ) -> Result<ScheduleView, ScheduleError> {
        self.schedules()?.update(name, patch).await
    }

    /// Removes a schedule and its runs; flows it started are kept.
    pub async fn delete_schedule(&self, name: &str) -> Result<(), ScheduleError> {
        self.schedules()?.delete(name).await
    }

    /// A schedule's last runs, newest first, with each flow's status.
    pub async fn schedule_runs(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<ScheduleRun>, ScheduleError> {
        self.schedules()?.runs(name, limit).await
    }

    /// The scheduler's counters and the number of schedules; `None` for a
    /// worker-only engine.
    pub fn schedule_stats(&self) -> Option<(&ScheduleStats, usize)> {
        self.schedules().ok().map(|s| (&s.stats, s.count()))
    }
}
