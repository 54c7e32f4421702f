//! `Engine`: the handle an embedding program (and the server) holds.
//!
//! Built with [`EngineBuilder`]; cheap to clone. A full engine runs flows (the
//! supervisor, its flow actors, the snapshot writer, the completion router) and,
//! when given queues, workers for them. A worker-only engine runs just workers, for
//! extra processes or machines on the same Redis.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{call_t, Actor, ActorRef};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::actors::delivery::REDELIVER_AFTER;
use crate::actors::flow::{FlowMsg, FlowOp};
use crate::actors::reconcile::{reconcile_loop, DEFAULT_RECONCILE_EVERY};
use crate::actors::router::{CompletionRouter, RouterArgs};
use crate::actors::supervisor::{FlowSupervisor, SupervisorArgs, SupervisorMsg};
use crate::actors::worker::{WorkerCtx, WorkerPool};
use crate::actors::writer::{SnapshotWriter, WriterArgs, WriterMsg};
use crate::actors::{load_state, now_ms, Directory, EngineStats, Shared};
use crate::error::EngineError;
use crate::filter::{FlowCounts, FlowFilter};
use crate::handler::{Handler, Handlers};
use crate::hub::{EventHub, DEFAULT_EVENT_CAPACITY};
use crate::ids::FlowId;
use crate::queue::{Keys, Queue};
use crate::retention::Retention;
use crate::schedule::Schedules;
use crate::spec::{self, FlowSpec, Limits, DEFAULT_MAX_STALLED};
use crate::state::FlowStatus;
use crate::store::{Store, DEFAULT_CACHE_BYTES};
use crate::trace::{TraceExporter, TraceStats};
use crate::view::{FlowEvent, FlowPage, FlowSummary, FlowView, NodeView};

/// Default Redis.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "dagflow";
/// Default lease: a job whose worker has not renewed it for this long is reclaimed.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default time a cancelled handler gets to return before it is aborted.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Default backlog limit per worker slot of a queue ([`EngineBuilder::backlog_limit`]).
pub const DEFAULT_BACKLOG_PER_SLOT: usize = 2;
/// How long a running flow with nothing in flight keeps its actor by default.
pub const DEFAULT_HIBERNATE_AFTER: Duration = Duration::from_secs(10);
/// How long API calls wait for an actor's answer (it comes after a flush).
const CALL_TIMEOUT_MS: u64 = 30_000;
/// Largest page of a listing.
pub const MAX_PAGE: usize = 1000;

/// Configures and starts an [`Engine`].
pub struct EngineBuilder {
    redis_url: String,
    prefix: String,
    data_dir: Option<PathBuf>,
    queues: Vec<(String, usize)>,
    handlers: Handlers,
    limits: Limits,
    lease: Duration,
    cancel_grace: Duration,
    backlog_limit: Option<usize>,
    cache_bytes: u64,
    max_stalled: u32,
    event_capacity: usize,
    worker_only: bool,
    hibernate_after: Option<Duration>,
    reconcile_every: Duration,
    redeliver_after: Duration,
    schedule_grace: Duration,
    notify: crate::notify::NotifyOptions,
    retention: Retention,
    tracer_provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    otlp_endpoint: Option<String>,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            redis_url: DEFAULT_REDIS_URL.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            data_dir: None,
            queues: Vec::new(),
            handlers: Handlers::default(),
            limits: Limits::default(),
            lease: DEFAULT_LEASE,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            backlog_limit: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_stalled: DEFAULT_MAX_STALLED,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            worker_only: false,
            hibernate_after: Some(DEFAULT_HIBERNATE_AFTER),
            reconcile_every: DEFAULT_RECONCILE_EVERY,
            redeliver_after: REDELIVER_AFTER,
            schedule_grace: crate::schedule::DEFAULT_GRACE,
            notify: crate::notify::NotifyOptions::default(),
            retention: Retention::default(),
            tracer_provider: None,
            otlp_endpoint: None,
        }
    }
}

impl EngineBuilder {
    /// Redis to use (`redis://host:port/db`).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = url.into();
        self
    }

    /// Exports a trace per flow and a span per node attempt over OTLP/HTTP to this
    /// collector (`http://host:4318`; see `trace.rs`). Off by default, and free
    /// when off. A full engine only: a worker-only engine has no flows to trace.
    pub fn otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// Exports traces through this tracer provider instead (an embedder's own
    /// pipeline, or the SDK's in-memory exporter in tests); wins over
    /// [`EngineBuilder::otlp_endpoint`]. The engine shuts it down when it stops.
    pub fn tracer_provider(
        mut self,
        provider: opentelemetry_sdk::trace::SdkTracerProvider,
    ) -> Self {
        self.tracer_provider = Some(provider);
        self
    }

    /// Prefix of every Redis key, so several deployments (or tests) share one Redis.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Directory of the sled snapshots; without one the engine keeps them in a
    /// temporary directory that vanishes with it (tests, benchmarks).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Runs workers for `queue`, at most `concurrency` jobs at once.
    pub fn queue(mut self, queue: impl Into<String>, concurrency: usize) -> Self {
        self.queues.push((queue.into(), concurrency.max(1)));
        self
    }

    /// Registers the handler nodes name in their `handler` (or `name`).
    pub fn handler(mut self, name: impl Into<String>, handler: impl Handler) -> Self {
        self.handlers.insert(name, Arc::new(handler));
        self
    }

    /// Registers an already shared handler.
    pub fn handler_arc(mut self, name: impl Into<String>, handler: Arc<dyn Handler>) -> Self {
        self.handlers.insert(name, handler);
        self
    }

    /// Spec limits for new flows.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Lease of a running job; a job not renewed for this long is reclaimed.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// Time a cancelled handler gets to return before its task is aborted.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// How far the engine may fall behind its own workers before they stop taking
    /// the first jobs of flows not yet started: a queue's workers take no fresh job
    /// while this many of their finished jobs wait for the engine to apply them.
    /// Jobs of started flows are always taken. 0 turns the limit off; the default is
    /// [`DEFAULT_BACKLOG_PER_SLOT`] times the queue's concurrency.
    ///
    /// Without it, a burst of new flows starts as fast as workers free up while the
    /// engine is still behind on the flows already started, and every started flow's
    /// next node then waits for the engine to get through all of them.
    pub fn backlog_limit(mut self, limit: usize) -> Self {
        self.backlog_limit = Some(limit);
        self
    }

    /// sled page cache size.
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Default `maxStalled` of nodes that set none.
    pub fn max_stalled(mut self, n: u32) -> Self {
        self.max_stalled = n;
        self
    }

    /// Events kept for slow subscribers before they are told they lagged.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// How long a running flow with nothing in flight keeps its actor before it
    /// hibernates (`None`: never). A hibernating flow costs a directory entry
    /// instead of an actor (~14 KiB for a 10-node flow); the next report, request
    /// or Redis resync that concerns it starts it again from its snapshot.
    pub fn hibernate_after(mut self, after: Option<Duration>) -> Self {
        self.hibernate_after = after;
        self
    }

    /// How often a reconciliation pass (which puts back jobs Redis lost, whatever
    /// the marker says) starts at most. Repairs happen within this plus the number
    /// of unfinished flows / 1,000 seconds.
    pub fn reconcile_every(mut self, every: Duration) -> Self {
        self.reconcile_every = every.max(Duration::from_millis(100));
        self
    }

    /// How long a completion record may stay read but unacknowledged before the
    /// router reads it again (its flow actor stopped or the engine that read it
    /// crashed). Redelivering a record still in flight is harmless, only wasted work.
    pub fn redeliver_after(mut self, after: Duration) -> Self {
        self.redeliver_after = after.max(Duration::from_millis(100));
        self
    }

    /// How late a schedule's tick may be found and still count as on time rather
    /// than missed (which `catchUp` then decides about); see
    /// [`crate::schedule::DEFAULT_GRACE`].
    pub fn schedule_grace(mut self, grace: Duration) -> Self {
        self.schedule_grace = grace;
        self
    }

    /// The key that signs callbacks (`opts.notify`): `X-Dagflow-Signature` is
    /// `sha256=` and the hex HMAC-SHA256 of the body. Without one, callbacks go
    /// out unsigned.
    pub fn webhook_secret(mut self, secret: impl Into<String>) -> Self {
        self.notify.secret = Some(secret.into());
        self
    }

    /// How callbacks are delivered (timeout, concurrency, backoff, maximum age;
    /// the secret too, as with [`EngineBuilder::webhook_secret`]).
    pub fn notify_options(mut self, options: crate::notify::NotifyOptions) -> Self {
        self.notify = options;
        self
    }

    /// How long finished flows are kept before the sweeper deletes them, and how
    /// many it deletes a second at most. The default keeps completed flows 7 days
    /// and failed or cancelled ones 30 ([`Retention::default`]); a flow's
    /// `opts.retention` overrides both for itself.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Runs only workers: no flows, no store (for extra worker processes).
    pub fn worker_only(mut self) -> Self {
        self.worker_only = true;
        self
    }

    /// Connects, opens the store, resumes unfinished flows and starts the workers.
    pub async fn build(self) -> Result<Engine, EngineError> {
        let keys = Keys::new(&self.prefix);
        let queue = Queue::connect(&self.redis_url, keys.clone()).await?;
        let hub = EventHub::new(self.event_capacity);
        let directory = Directory::default();
        let mut flows = None;
        let redis_up = Arc::new(AtomicBool::new(true));
        let consumer;
        let tracer_provider = match (self.tracer_provider, &self.otlp_endpoint) {
            (Some(provider), _) => Some(provider),
            (None, Some(endpoint)) if !self.worker_only => {
                Some(crate::trace::otlp_provider(endpoint)?)
            }
            (None, _) => None,
        };
        if self.worker_only {
            consumer = format!("worker-{}", uuid::Uuid::now_v7());
        } else {
            let store = match &self.data_dir {
                Some(dir) => Store::open(dir, self.cache_bytes)?,
                None => Store::temporary()?,
            };
            // A stable consumer name lets a restarted engine re-read its own pending
            // jobs and completions at once instead of waiting out their lease.
            let engine_id = match store.meta("engine-id")? {
                Some(id) => id,
                None => {
                    let id = format!("engine-{}", uuid::Uuid::now_v7());
                    store.set_meta("engine-id", &id).await?;
                    id
                }
            };
            consumer = engine_id;
            let (writer, _) = Actor::spawn(
                None,
                SnapshotWriter,
                WriterArgs {
                    store: store.clone(),
                },
            )
            .await
            .map_err(|e| EngineError::Internal(format!("spawning snapshot writer: {e}")))?;
            let (handback_tx, handback_rx) = tokio::sync::mpsc::unbounded_channel();
            let notify_client = crate::notify::client(&self.notify)
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            let notify_wake = crate::notify::NotifyWake::default();
            let shared = Arc::new(Shared {
                store,
                queue: queue.clone(),
                writer: writer.clone(),
                hub: hub.clone(),
                directory: directory.clone(),
                limits: self.limits.clone(),
                max_stalled: self.max_stalled,
                hibernate_after: self.hibernate_after,
                redeliver_after: self.redeliver_after,
                handback: Some(handback_tx),
                stats: EngineStats::default(),
                notify_wake: notify_wake.clone(),
                traces: tracer_provider.is_some(),
            });
            // Subscribed before the supervisor recovers a single flow, so that no
            // event of this run is missed.
            let traces = tracer_provider
                .map(|provider| TraceExporter::start(&shared.hub, shared.store.clone(), provider));
            // Mark this Redis as known before anything is enqueued; a missing marker
            // later means Redis lost its data.
            // Both are writes, which a Redis out of memory refuses until memory is
            // freed: wait for that rather than exit.
            let lease_ms = self.lease.as_millis() as u64;
            loop {
                let result = async {
                    queue.ensure_marker(&consumer).await?;
                    // Workers in other processes read the lease from here.
                    queue.publish_config(lease_ms, self.max_stalled).await
                }
                .await;
                match result {
                    Ok(_) => break,
                    Err(e) if e.is_out_of_memory() => {
                        warn!(error = %e, "redis refuses writes (out of memory); retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let (supervisor, _) = Actor::spawn(
                None,
                FlowSupervisor,
                SupervisorArgs {
                    shared: Arc::clone(&shared),
                },
            )
            .await
            .map_err(|e| EngineError::Internal(format!("spawning flow supervisor: {e}")))?;
            let (router, _) = Actor::spawn(
                None,
                CompletionRouter,
                RouterArgs {
                    shared: Arc::clone(&shared),
                    supervisor: supervisor.clone(),
                    redis_url: self.redis_url.clone(),
                    keys: keys.clone(),
                    consumer: consumer.clone(),
                    handback: handback_rx,
                },
            )
            .await
            .map_err(|e| EngineError::Internal(format!("spawning completion router: {e}")))?;
            let background = vec![
                tokio::spawn(promote_loop(Arc::clone(&shared))),
                tokio::spawn(rate_loop(Arc::clone(&shared))),
                tokio::spawn(crate::retention::sweep_loop(
                    Arc::clone(&shared),
                    supervisor.clone(),
                    self.retention,
                )),
                tokio::spawn(reconcile_loop(
                    Arc::clone(&shared),
                    supervisor.clone(),
                    self.reconcile_every,
                )),
                tokio::spawn(crate::notify::deliver_loop(
                    Arc::clone(&shared),
                    self.notify.clone(),
                    notify_client,
                    notify_wake,
                )),
            ];
            let watchdog = tokio::spawn(watch_redis(
                queue.clone(),
                consumer.clone(),
                supervisor.clone(),
                Arc::clone(&redis_up),
                (self.lease.as_millis() as u64, self.max_stalled),
            ));
            flows = Some(Flows {
                traces,
                shared,
                supervisor,
                router,
                writer,
                watchdog,
                background,
            });
        }
        let pool = if self.queues.is_empty() {
            None
        } else {
            let ctx = Arc::new(WorkerCtx {
                queue: queue.clone(),
                redis_url: self.redis_url.clone(),
                keys: keys.clone(),
                handlers: self.handlers,
                directory: flows.as_ref().map(|_| directory.clone()),
                handback: flows.as_ref().and_then(|f| f.shared.handback.clone()),
                cancels: Mutex::default(),
                cancel_grace: self.cancel_grace,
                backlog_limit: self.backlog_limit,
                lease: self.lease,
                running: Default::default(),
                consumer: consumer.clone(),
                abandon: Default::default(),
            });
            Some(WorkerPool::start(ctx, &self.queues).await?)
        };
        info!(prefix = %self.prefix, worker_only = self.worker_only, "engine started");
        let schedules = flows
            .as_ref()
            .map(|f| Arc::new(Schedules::new(Arc::clone(&f.shared), self.schedule_grace)));
        let engine = Engine {
            inner: Arc::new(Inner {
                schedules,
                flows,
                pool: tokio::sync::Mutex::new(pool),
                queue,
                hub,
                limits: self.limits,
                stopping: AtomicBool::new(false),
                redis_up,
            }),
        };
        if let Some(schedules) = &engine.inner.schedules {
            schedules.start(engine.clone());
        }
        Ok(engine)
    }
}

/// The parts of an engine that run flows.
struct Flows {
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    router: ActorRef<()>,
    writer: ActorRef<WriterMsg>,
    watchdog: JoinHandle<()>,
    /// The promoter and the reconciliation pass.
    background: Vec<JoinHandle<()>>,
    /// The span assembler and its provider, when traces are exported.
    traces: Option<TraceExporter>,
}

struct Inner {
    flows: Option<Flows>,
    /// The schedules and their scheduler task (full engines only).
    schedules: Option<Arc<Schedules>>,
    pool: tokio::sync::Mutex<Option<WorkerPool>>,
    queue: Queue,
    hub: EventHub,
    limits: Limits,
    stopping: AtomicBool,
    /// Whether the watchdog reached Redis on its last check (every 500 ms).
    redis_up: Arc<AtomicBool>,
}

/// A running dagflow engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// What [`Engine::list`] returns: which flows, from where.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only flows in this status.
    pub status: Option<FlowStatus>,
    /// Continue after this cursor (from the previous page's `next_cursor`).
    pub cursor: Option<String>,
    /// Page size (1 to [`MAX_PAGE`]; default 50).
    pub limit: Option<usize>,
    /// Only flows this search takes (name, creation time).
    pub filter: FlowFilter,
}

/// A live feed of events, with the snapshot it continues from.
pub struct Subscription {
    /// Every event from the moment of subscribing on; filter with [`Subscription::wants`].
    pub receiver: broadcast::Receiver<Arc<FlowEvent>>,
    /// Only this flow's events, or all when `None`.
    pub flow: Option<FlowId>,
    /// The flow's state when subscribing (`None` for all flows); events with a `seq`
    /// at or below its `seq` are already in it.
    pub snapshot: Option<FlowView>,
}

impl Subscription {
    /// Whether an event belongs to this subscription and is newer than its snapshot.
    pub fn wants(&self, event: &FlowEvent) -> bool {
        match self.flow {
            None => true,
            Some(id) => {
                event.flow_id == id && self.snapshot.as_ref().is_none_or(|s| event.seq > s.seq)
            }
        }
    }
}

impl Engine {
    /// A builder with the defaults.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    fn flows(&self) -> Result<&Flows, EngineError> {
        if self.inner.stopping.load(Ordering::Relaxed) {
            return Err(EngineError::NotRunning(
                "the engine is shutting down".to_owned(),
            ));
        }
        self.inner
            .flows
            .as_ref()
            .ok_or_else(|| EngineError::NotRunning("this engine runs workers only".to_owned()))
    }

    /// The schedules, unless this engine runs workers only or is stopping.
    pub(crate) fn schedules(&self) -> Result<&Arc<Schedules>, EngineError> {
        self.flows()?;
        self.inner
            .schedules
            .as_ref()
            .ok_or_else(|| EngineError::NotRunning("this engine runs workers only".to_owned()))
    }

    /// The spec limits new flows are checked against.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Validates and starts a flow. With an idempotency key, a second call with the
    /// same key returns the first flow's id and starts nothing.
    pub async fn create(
        &self,
        spec: &FlowSpec,
        idempotency_key: Option<String>,
    ) -> Result<FlowId, EngineError> {
        let flows = self.flows()?;
        let dag = spec::validate(spec, &self.inner.limits)?;
        // A new flow would be accepted and persisted without Redis, its jobs queued
        // once Redis is back; refusing it instead tells the client at once and keeps
        // a long outage from piling up work nobody is watching.
        if !self.inner.redis_up.load(Ordering::Relaxed) {
            return Err(EngineError::Unavailable(
                "redis is unreachable; try again later".to_owned(),
            ));
        }
        let spec_json =
            serde_json::to_string(spec).map_err(|e| EngineError::Internal(e.to_string()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        flows
            .supervisor
            .cast(SupervisorMsg::CreateFlow {
                dag: Arc::new(dag),
                spec_json,
                idempotency_key,
                reply: tx,
            })
            .map_err(|e| EngineError::NotRunning(format!("flow supervisor unavailable: {e}")))?;
        match tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(EngineError::Internal(
                "flow creation was dropped".to_owned(),
            )),
            Err(_) => Err(EngineError::Timeout(
                "the new flow to become durable".to_owned(),
            )),
        }
    }

    /// Parses JSON text and creates the flow it describes.
    pub async fn create_json(
        &self,
        json: &str,
        idempotency_key: Option<String>,
    ) -> Result<FlowId, EngineError> {
        let spec = spec::parse(json.as_bytes()).map_err(|e| {
            EngineError::Spec(spec::SpecError {
                problems: vec![spec::Problem {
                    code: "malformed_json",
                    message: e.to_string(),
                    node: None,
                }],
            })
        })?;
        self.create(&spec, idempotency_key).await
    }

    /// The flow as of its last durable state.
    pub async fn get(&self, id: FlowId) -> Result<FlowView, EngineError> {
        let flows = self.flows()?;
        if let Some(actor) = flows.shared.directory.get(id) {
            if let Ok(view) = call_t!(actor, FlowMsg::GetFlow, CALL_TIMEOUT_MS) {
                return Ok(view);
            }
        }
        // No actor: the flow ended (or was just restarting); the store has it.
        let (state, record) = load_view_state(&flows.shared, id)?;
        Ok(FlowView::from_state(&state, record.engine_error))
    }

    /// One node with its input and result.
    pub async fn node(&self, id: FlowId, name: &str) -> Result<NodeView, EngineError> {
        let flows = self.flows()?;
        let missing = || EngineError::NodeNotFound {
            flow: id.to_string(),
            node: name.chars().take(256).collect(),
        };
        if let Some(actor) = flows.shared.directory.get(id) {
            if let Ok(view) = call_t!(actor, FlowMsg::GetNode, CALL_TIMEOUT_MS, name.to_owned()) {
                return view.ok_or_else(missing);
            }
        }
        let (state, _) = load_view_state(&flows.shared, id)?;
        let idx = state.lookup(name).ok_or_else(missing)?;
        Ok(NodeView::from_state(&state, idx, true))
    }

    /// The spec the flow was submitted with, as the engine parsed it (with the
    /// defaults it filled in, and `data` keys sorted), for a client to show it or to
    /// edit it into a new flow. Read from the store, not from the flow's actor (which
    /// may be hibernating): the spec never changes after creation, and a client
    /// learns a flow's id only once its creation is durable.
    pub async fn spec(&self, id: FlowId) -> Result<Box<serde_json::value::RawValue>, EngineError> {
        let flows = self.flows()?;
        let text = flows
            .shared
            .store
            .spec_json(id)?
            .ok_or_else(|| EngineError::NotFound(id.to_string()))?;
        serde_json::value::RawValue::from_string(text)
            .map_err(|e| EngineError::Internal(format!("the spec of flow {id} is not JSON: {e}")))
    }

    /// A page of flows, newest first, as they are on disk: read between two group
    /// commits, so a list never shows a state (a new flow, a flow completed) that a
    /// crash could still take back.
    pub async fn list(&self, query: &ListQuery) -> Result<FlowPage, EngineError> {
        let flows = self.flows()?;
        let limit = query.limit.unwrap_or(50).clamp(1, MAX_PAGE);
        let after = match &query.cursor {
            Some(c) => Some(
                FlowId::from_str(c)
                    .map_err(|_| EngineError::Conflict(format!("'{c}' is not a valid cursor")))?,
            ),
            None => None,
        };
        let status = query.status;
        let filter = query.filter.clone();
        let records = durable_read(&flows.shared, move |store| {
            store.list(status, &filter, after, limit + 1)
        })
        .await??;
        let more = records.len() > limit;
        let flows: Vec<FlowSummary> = records
            .iter()
            .take(limit)
            .filter_map(|(id, rec)| FlowSummary::from_record(*id, rec))
            .collect();
        let next_cursor = if more {
            flows.last().map(|f| f.id.to_string())
        } else {
            None
        };
        Ok(FlowPage { flows, next_cursor })
    }

    /// How many flows `filter` takes, per status. One pass over every flow record,
    /// on a blocking thread rather than the snapshot writer (which `list` reads on),
    /// so that counting a large store never holds up a group commit; the counts may
    /// so include a change not yet durable.
    pub async fn count(&self, filter: FlowFilter) -> Result<FlowCounts, EngineError> {
        let store = self.flows()?.shared.store.clone();
        tokio::task::spawn_blocking(move || store.count(&filter))
            .await
            .map_err(|e| EngineError::Store(format!("counting flows stopped: {e}")))?
            .map_err(EngineError::from)
    }

    /// Cancels a running flow: running jobs are told to stop, the rest never run.
    pub async fn cancel(&self, id: FlowId) -> Result<(), EngineError> {
        let flows = self.flows()?;
        if let Some(actor) = flows.shared.directory.get(id) {
            match call_t!(actor, FlowMsg::Cancel, CALL_TIMEOUT_MS) {
                Ok(result) => return result,
                Err(ractor::RactorErr::Timeout) => {
                    return Err(EngineError::Timeout("the flow to cancel".to_owned()))
                }
                Err(_) => {} // the actor just ended; the supervisor knows why
            }
        }
        // No actor: the flow ended, hibernates, or is unknown; the supervisor wakes
        // a hibernating one and answers for the others.
        call_flow_op(&flows.supervisor, id, |r| SupervisorMsg::CancelFlow(id, r)).await
    }

    /// Re-runs the failed, skipped and cancelled nodes of a failed or cancelled flow.
    pub async fn retry(&self, id: FlowId) -> Result<(), EngineError> {
        let flows = self.flows()?;
        call_flow_op(&flows.supervisor, id, |r| SupervisorMsg::RetryFlow(id, r)).await
    }

    /// Delivers a signal to a wait node of a running flow: the payload becomes the
    /// node's result and the flow goes on. Answered once that is durable; a node
    /// that is not waiting for a signal (yet, or any more) is a `Conflict`.
    pub async fn signal(
        &self,
        id: FlowId,
        node: &str,
        payload: &serde_json::Value,
    ) -> Result<(), EngineError> {
        let op = FlowOp::Signal {
            node: node.to_owned(),
            payload: Arc::from(payload.to_string().as_str()),
        };
        self.node_op(id, op).await
    }

    /// Re-runs a node and everything downstream of it with fresh attempts; the
    /// other nodes keep their results. Works on an ended flow, or on a running one
    /// in `continue` mode for a node that ended (on a failed node that retries just
    /// it).
    pub async fn rerun(&self, id: FlowId, node: &str) -> Result<(), EngineError> {
        self.node_op(
            id,
            FlowOp::Rerun {
                node: node.to_owned(),
            },
        )
        .await
    }

    async fn node_op(&self, id: FlowId, op: FlowOp) -> Result<(), EngineError> {
        let flows = self.flows()?;
        call_flow_op(&flows.supervisor, id, |reply| {
            SupervisorMsg::FlowOp(id, op.clone(), reply)
        })
        .await
    }

    /// Removes a flow: its jobs leave Redis, its records leave the disk.
    pub async fn delete(&self, id: FlowId) -> Result<(), EngineError> {
        let flows = self.flows()?;
        call_flow_op(&flows.supervisor, id, |r| SupervisorMsg::DeleteFlow(id, r)).await
    }

    /// Events of one flow (with its current snapshot), or of all flows (`None`).
    pub async fn subscribe(&self, flow: Option<FlowId>) -> Result<Subscription, EngineError> {
        // Subscribe before taking the snapshot: an event in between is then both in
        // the feed and (possibly) in the snapshot, and `wants` drops the duplicate.
        let receiver = self.inner.hub.subscribe();
        let snapshot = match flow {
            Some(id) => Some(self.get(id).await?),
            None => None,
        };
        Ok(Subscription {
            receiver,
            flow,
            snapshot,
        })
    }

    /// The raw event feed of every flow (for servers that do their own filtering).
    pub fn events(&self) -> broadcast::Receiver<Arc<FlowEvent>> {
        self.inner.hub.subscribe()
    }

    /// Waits until the flow ends (or `timeout` passes) and returns its final state.
    pub async fn wait(&self, id: FlowId, timeout: Duration) -> Result<FlowView, EngineError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut sub = self.subscribe(Some(id)).await?;
        if let Some(view) = sub.snapshot.take().filter(|v| v.status.is_terminal()) {
            return Ok(view);
        }
        loop {
            match tokio::time::timeout_at(deadline, sub.receiver.recv()).await {
                Err(_) => return Err(EngineError::Timeout(format!("flow {id} to finish"))),
                Ok(Ok(event)) => {
                    if event.flow_id == id && event.is_flow_end() {
                        return self.get(id).await;
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    let view = self.get(id).await?;
                    if view.status.is_terminal() {
                        return Ok(view);
                    }
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err(EngineError::NotRunning("the engine stopped".to_owned()))
                }
            }
        }
    }

    /// Whether Redis answers (readiness).
    pub async fn check_redis(&self) -> Result<(), EngineError> {
        Ok(self.inner.queue.ping().await?)
    }

    /// Whether the store answers (readiness).
    pub fn check_store(&self) -> Result<(), EngineError> {
        match &self.inner.flows {
            Some(f) => Ok(f.shared.store.check()?),
            None => Ok(()),
        }
    }

    /// The shared Redis client (metrics, tests).
    pub fn queue(&self) -> &Queue {
        &self.inner.queue
    }

    /// Number of running flows that are awake (have a live actor); hibernating
    /// flows, which wait with nothing in flight, are not counted.
    pub fn running_flows(&self) -> usize {
        self.inner
            .flows
            .as_ref()
            .map_or(0, |f| f.shared.directory.len())
    }

    /// Retention entries in the store (tests check that a revived flow has none).
    #[doc(hidden)]
    pub fn retention_entries(&self) -> usize {
        self.inner
            .flows
            .as_ref()
            .map_or(0, |f| f.shared.store.expiry_count())
    }

    /// Fault injection for retention tests: writes a retention entry for a flow as
    /// if it had ended with `status` at `finished_at` (a stale entry, such as one
    /// left by a crash), so that the sweeper's own check is what must keep the flow.
    #[doc(hidden)]
    pub fn inject_retention_entry(
        &self,
        id: FlowId,
        status: FlowStatus,
        finished_at: u64,
    ) -> Result<(), EngineError> {
        let flows = self.flows()?;
        let key = crate::retention::expiry_entry(id, status, finished_at, None)
            .ok_or_else(|| EngineError::Internal("no retention entry".to_owned()))?;
        flows
            .shared
            .store
            .apply(&[crate::store::WriteOp::Expiry(key, finished_at)])?;
        Ok(())
    }

    /// Fault injection for supervision tests: makes the flow's actor fail as if it
    /// had a bug. Returns whether the flow had a live actor.
    #[doc(hidden)]
    pub fn inject_flow_failure(&self, id: FlowId) -> bool {
        let actor = self
            .inner
            .flows
            .as_ref()
            .and_then(|f| f.shared.directory.get(id));
        actor.is_some_and(|a| {
            a.cast(FlowMsg::InjectFailure("injected failure".to_owned()))
                .is_ok()
        })
    }

    /// Counters of the engine's background work (hand-backs, redeliveries,
    /// reconciliation repairs, promotions); `None` for a worker-only engine.
    pub fn stats(&self) -> Option<&EngineStats> {
        self.inner.flows.as_ref().map(|f| &f.shared.stats)
    }

    /// Bytes the store's files take on disk; `None` for a worker-only engine.
    pub fn store_size(&self) -> Option<u64> {
        let flows = self.inner.flows.as_ref()?;
        flows.shared.store.size_on_disk().ok()
    }

    /// Counters of the trace exporter; `None` when traces are off (or for a
    /// worker-only engine).
    pub fn trace_stats(&self) -> Option<&TraceStats> {
        self.inner
            .flows
            .as_ref()
            .and_then(|f| f.traces.as_ref())
            .map(|t| t.stats.as_ref())
    }

    /// Number of event subscribers.
    pub fn subscribers(&self) -> usize {
        self.inner.hub.subscriber_count()
    }

    /// Stops gracefully: no new jobs are taken, running jobs get until `deadline`,
    /// every flow's last writes are flushed and their Redis work done.
    pub async fn shutdown(&self, deadline: Duration) {
        if self.inner.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(pool) = self.inner.pool.lock().await.take() {
            pool.shutdown(deadline).await;
        }
        if let Some(schedules) = &self.inner.schedules {
            // Its task holds an engine handle and the store; a firing cut short
            // here is finished by the next start (its tick is pending).
            schedules.stop().await;
        }
        if let Some(flows) = &self.inner.flows {
            flows.watchdog.abort();
            for task in &flows.background {
                task.abort();
            }
            // They hold the store; a caller may reopen it once shutdown returns.
            while flows.background.iter().any(|t| !t.is_finished()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for actor in flows.shared.directory.all() {
                if let Err(e) = call_t!(actor, FlowMsg::Drain, 5_000) {
                    warn!(error = %e, "a flow did not drain before shutdown");
                }
            }
            let _ = flows
                .router
                .stop_and_wait(None, Some(Duration::from_secs(5)))
                .await;
            let _ = flows
                .supervisor
                .stop_children_and_wait(None, Some(Duration::from_secs(5)))
                .await;
            let _ = flows
                .supervisor
                .stop_and_wait(None, Some(Duration::from_secs(5)))
                .await;
            let _ = flows
                .writer
                .stop_and_wait(None, Some(Duration::from_secs(5)))
                .await;
            if let Err(e) = flows.shared.store.flush().await {
                warn!(error = %e, "final flush failed");
            }
            if let Some(traces) = &flows.traces {
                traces.shutdown().await;
            }
        }
        info!("engine stopped");
    }
}

/// Runs a store read between two group commits (see [`crate::actors::writer::read_durable`]).
async fn durable_read<T: Send + 'static>(
    shared: &Shared,
    read: impl FnOnce(&crate::store::Store) -> T + Send + 'static,
) -> Result<T, EngineError> {
    crate::actors::writer::read_durable(&shared.writer, read)
        .await
        .map_err(EngineError::Store)
}

fn load_view_state(
    shared: &Shared,
    id: FlowId,
) -> Result<(crate::state::FlowState, crate::store::FlowRecord), EngineError> {
    load_state(&shared.store, id)?.ok_or_else(|| EngineError::NotFound(id.to_string()))
}

/// Asks the supervisor for an operation on one flow (cancel, retry, delete, a
/// signal, a re-run). The supervisor forwards it to the flow's actor; an actor that
/// was just stopping (its flow ended a moment ago) drops it unapplied (an actor
/// stops only with every applied request answered), and the reply port closes.
/// Asking again then reaches the supervisor after it saw the actor stop, and it
/// works from the snapshot.
async fn call_flow_op(
    supervisor: &ActorRef<SupervisorMsg>,
    id: FlowId,
    msg: impl Fn(ractor::RpcReplyPort<Result<(), EngineError>>) -> SupervisorMsg,
) -> Result<(), EngineError> {
    use ractor::rpc::CallResult;
    let mut tries = 0;
    loop {
        tries += 1;
        let call = supervisor.call(&msg, Some(Duration::from_millis(CALL_TIMEOUT_MS)));
        match call.await {
            Ok(CallResult::Success(result)) => return result,
            Ok(CallResult::Timeout) => return Err(EngineError::Timeout(format!("flow {id}"))),
            Ok(CallResult::SenderError) if tries >= 5 => {
                return Err(EngineError::Internal(format!(
                    "the actor of flow {id} kept ending before answering"
                )))
            }
            Err(e) if tries >= 5 => return Err(ractor::RactorErr::from(e).into()),
            Ok(CallResult::SenderError) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(20 * tries)).await
            }
        }
    }
}

/// How often due retries are promoted.
const PROMOTE_EVERY: Duration = Duration::from_millis(100);

/// Moves due retries into their streams for every queue that has delayed jobs,
/// whoever serves it (a queue only workers in other languages serve included).
async fn promote_loop(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(PROMOTE_EVERY).await;
        match shared.queue.promote_all_due(now_ms()).await {
            Ok(n) => {
                shared.stats.promoted.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "promoting due retries failed"),
        }
    }
}

/// Most jobs waiting for rate-limit tokens released by one call.
const RATE_BUDGET: usize = 1_000;

/// Releases jobs waiting for rate-limit tokens when their tokens free up: it sleeps
/// until the earliest waiting key's next token (as Redis said), at most
/// [`PROMOTE_EVERY`] so that keys that start waiting meanwhile are seen.
async fn rate_loop(shared: Arc<Shared>) {
    let mut sleep = PROMOTE_EVERY;
    loop {
        tokio::time::sleep(sleep).await;
        sleep = PROMOTE_EVERY;
        match shared.queue.release_rate_due(RATE_BUDGET).await {
            Ok((released, next)) => {
                shared
                    .stats
                    .rate_released
                    .fetch_add(released as u64, Ordering::Relaxed);
                if released >= RATE_BUDGET {
                    sleep = Duration::from_millis(1);
                } else if let Some(next) = next {
                    let wait = next.saturating_sub(now_ms()).clamp(1, 100);
                    sleep = Duration::from_millis(wait);
                }
            }
            Err(e) => tracing::debug!(error = %e, "releasing rate-limited jobs failed"),
        }
    }
}

/// Notices Redis losing its data (restarted without persistence, flushed): the
/// marker key this engine set is gone. Every flow then enqueues its jobs again;
/// the snapshots are the source of truth.
async fn watch_redis(
    queue: Queue,
    marker: String,
    supervisor: ActorRef<SupervisorMsg>,
    redis_up: Arc<AtomicBool>,
    (lease_ms, max_stalled): (u64, u32),
) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match queue.ensure_marker(&marker).await {
            Ok(lost) => {
                if !redis_up.swap(true, Ordering::Relaxed) {
                    info!("redis is reachable again");
                }
                if lost {
                    warn!("redis lost its data; re-enqueueing the jobs of every running flow");
                    // Workers started from now on read the lease from here.
                    if let Err(e) = queue.publish_config(lease_ms, max_stalled).await {
                        warn!(error = %e, "publishing the config again failed");
                    }
                    let _ = supervisor.cast(SupervisorMsg::Resync);
                }
            }
            Err(e) => {
                if redis_up.swap(false, Ordering::Relaxed) {
                    warn!(error = %e, "redis is unreachable; new flows are refused until it is back");
                }
            }
        }
    }
}
