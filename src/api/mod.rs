//! The warp REST and WebSocket API of a dagflow server.
//!
//! Laid out as warp's `todos` example: `filters` matches requests and extracts
//! their parts, `handlers` turns them into engine calls, `models` holds the wire
//! types, `errors` the one JSON error shape and the `recover` that produces it,
//! `ws` the WebSocket session actor, `queues` what the queue routes and gauges
//! read from Redis, `metrics` the Prometheus text and `openapi` the generated API
//! description.
//!
//! # Endpoints
//!
//! | method and path                 | answer |
//! |---------------------------------|--------|
//! | `POST /flows`                   | `201 {"flowId"}` and `Location`; an `Idempotency-Key` header returns the first flow's id (again 201) |
//! | `GET /flows`                    | `{"flows": [...], "nextCursor"?}`, newest first; `?status=running&limit=50&cursor=<nextCursor>` |
//! | `GET /flows/{id}`               | the flow with every node and its `seq` |
//! | `GET /flows/{id}/nodes/{name}`  | one node with its input and result |
//! | `POST /flows/{id}/cancel`       | `200` with the flow, now `cancelled`: running jobs are told to stop, the rest never run |
//! | `POST /flows/{id}/retry`        | `200` with the flow, `running` again: its failed, skipped and cancelled nodes run again |
//! | `DELETE /flows/{id}`            | `204`: its jobs leave Redis, its snapshot the disk |
//! | `GET /queues`                   | `{"queues": [...]}`: every queue Redis knows, with its ready jobs by priority, running, delayed and held-back jobs and live workers |
//! | `GET /queues/{name}`            | one queue; `404 unknown_queue` when nothing is known about it |
//! | `POST /schedules`               | `201` with the schedule and its `nextFireAt`; `400 invalid_schedule` lists every problem, `409 schedule_exists` (see `schedules`) |
//! | `GET /schedules`                | `{"schedules": [...]}`, by name |
//! | `GET/PATCH/DELETE /schedules/{name}` | one schedule; PATCH `{"paused": bool}` (and other fields) pauses, resumes or changes it |
//! | `GET /schedules/{name}/runs`    | `{"runs": [...]}`: its last ticks, newest first, with each flow's status |
//! | `GET /ws`                       | WebSocket, see below |
//! | `GET /healthz`                  | `200 {"status":"ok"}` while the process serves |
//! | `GET /readyz`                   | `200` when Redis and the store answer, else `503` naming the failing check |
//! | `GET /metrics`                  | Prometheus text (`dagflow_*`) |
//! | `GET /openapi.json`             | OpenAPI 3.1 description of this server as configured: bearer auth and 401s only with a token |
//!
//! # Errors
//!
//! Every failure, whether warp rejected the request or the engine refused it, is
//! `{"error": {"code", "message", "details"}}`: 400 (malformed JSON with its line and
//! column, bad query, bad header), 401 (missing or wrong token), 404 (unknown flow,
//! node or route), 405 (with `Allow`), 408 (body not sent within
//! [`BODY_READ_TIMEOUT`]), 409 (the action does not fit the flow's state), 411 and
//! 413 (body without length or over [`ApiConfig::body_limit`]), 415 (a body not
//! declared `Content-Type: application/json`, optionally with `charset=utf-8`), 422
//! (the flow is invalid; `details.problems` lists every problem, at most 100), 503 (Redis
//! unreachable, engine stopping; with `Retry-After`), 500 (logged; the message says
//! nothing of the cause). JSON that parses but is not a flow spec (a missing `nodes`,
//! an unknown field) is a 422 with one problem, not a 400. A `POST /flows` without
//! `Content-Type` is a 415, like one with another type.
//!
//! Every GET route also answers HEAD (the same head, no body), and every path
//! answers OPTIONS with 204 and `Allow`.
//!
//! The server speaks HTTP/1.1 (WebSocket by upgrade). A connection that does not
//! send a request head within [`HEADER_READ_TIMEOUT`] (idle, or trickling it) is
//! closed without an answer.
//!
//! Writes (create, cancel, retry, delete) first check that Redis answers and are
//! refused with 503 when it does not, so that a client retries rather than leaving
//! work that waits silently; reads are served from the snapshots and keep working.
//! The queue routes read Redis itself, and answer 503 while it is unreachable.
//!
//! # Auth
//!
//! With [`ApiConfig::api_token`] set, every route but `/healthz` and `/readyz` wants
//! `Authorization: Bearer <token>`; `/ws` also takes `?token=<token>`, because
//! browsers cannot set headers on a WebSocket. The token is compared in constant
//! time. The check runs after the path matched, so an unknown path is a 404 with or
//! without a token.
//!
//! # WebSocket protocol
//!
//! Client messages are JSON text frames:
//! `{"type":"subscribe","flowId":"<id>"}`, `{"type":"unsubscribe","flowId":"<id>"}`,
//! with `"*"` for every flow. The server sends:
//!
//! - `{"type":"snapshot","flow":<flow>}` on subscribing to a flow, then
//!   `{"type":"flow:updated","flowId","node"?,"status","attempt","seq","ts","progress"?,"error"?}`
//!   for each change after it: each `seq` is the previous one plus one, starting
//!   right after the snapshot's `seq` — no gap, no duplicate. Subscribing again sends
//!   a fresh snapshot.
//! - `{"type":"subscribed","flowId":"*"}` on subscribing to every flow; that sends no
//!   snapshot (fetch the flows you care about with `GET /flows`), then every event of
//!   every flow.
//! - `{"type":"unsubscribed","flowId"}` when an unsubscribe is done.
//! - `{"type":"lagged","missed":n}` when the client read so slowly that `n` engine
//!   events (of any flow) went by unseen; a fresh snapshot of each subscribed flow
//!   follows, and events continue after it without gap.
//! - `{"type":"error","message","flowId"?}` for a frame that is not a valid message,
//!   an unknown flow, or too many subscriptions; the connection stays open.
//!
//! The server pings every 20 s and closes a connection that has been silent (or has
//! not taken a frame) for 60 s. On shutdown every session gets a Close frame (1001).

mod errors;
mod filters;
mod handlers;
mod metrics;
mod models;
mod openapi;
mod queues;
mod schedules;
mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dagflow_actors::Engine;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warp::Filter;

pub use errors::ApiError;
#[doc(hidden)]
pub use ws::fuzz_client_message;

/// Default largest request body: 1 MiB.
pub const DEFAULT_BODY_LIMIT: u64 = 1024 * 1024;
/// Default most WebSocket connections at once.
pub const DEFAULT_MAX_WS_CONNECTIONS: usize = 1024;
/// Default most flows one WebSocket connection may subscribe to.
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 1000;
/// How long [`serve`] waits after shutdown for WebSocket sessions to close.
const SESSION_DRAIN: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's head (request line and headers).
/// The clock starts when the server begins waiting for a head: at connect, and on a
/// kept-alive connection right after the previous response. A connection that sends
/// nothing, or trickles its headers a byte at a time (slowloris), is closed after
/// this; without it each such connection held a task and a buffer for ever
/// (`tests/hostile.rs`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body once its head is in (the
/// body is at most [`ApiConfig::body_limit`]): past it the request is answered 408
/// and the connection closed. 30 s lets a full 1 MiB body through at 35 KB/s.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How the API behaves; the engine is configured separately.
#[derive(Clone)]
pub struct ApiConfig {
    /// When set, every route but the health checks wants `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    /// Largest request body in bytes; a larger one is refused with 413 before it is read.
    pub body_limit: u64,
    /// Most WebSocket connections at once; one more is refused with 503, so that
    /// sessions (each with its own buffer) cannot exhaust memory.
    pub max_ws_connections: usize,
    /// Most flows one connection may subscribe to; bounds the snapshots a `lagged`
    /// recovery fetches.
    pub max_subscriptions_per_connection: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            api_token: None,
            body_limit: DEFAULT_BODY_LIMIT,
            max_ws_connections: DEFAULT_MAX_WS_CONNECTIONS,
            max_subscriptions_per_connection: DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION,
        }
    }
}

impl std::fmt::Debug for ApiConfig {
    /// Never prints the token, so that logging the configuration cannot leak it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("body_limit", &self.body_limit)
            .field("max_ws_connections", &self.max_ws_connections)
            .field(
                "max_subscriptions_per_connection",
                &self.max_subscriptions_per_connection,
            )
            .finish()
    }
}

/// What every request handler shares.
pub(crate) struct ApiState {
    /// The engine the API drives.
    pub(crate) engine: Engine,
    /// The configuration, read once.
    pub(crate) cfg: ApiConfig,
    /// Counters and histograms fed from the engine's events.
    pub(crate) metrics: metrics::Metrics,
    /// One permit per open WebSocket connection; its size is the connection limit.
    pub(crate) sessions: Arc<Semaphore>,
    /// The connection limit, as the semaphore holds it.
    pub(crate) max_sessions: u32,
    /// Cancelled when the server shuts down: every session sends Close and ends.
    pub(crate) shutdown: CancellationToken,
    /// Each event's WebSocket text, serialized once for every session.
    pub(crate) event_texts: Arc<ws::EventTexts>,
    /// `GET /openapi.json`: the description of this server as configured (with or
    /// without the token, with the engine's limits), rendered once.
    pub(crate) openapi: String,
    /// The queue names found in Redis so far, for `GET /queues` and the metrics.
    pub(crate) queues: queues::Directory,
}

impl ApiState {
    /// Open WebSocket sessions.
    pub(crate) fn open_sessions(&self) -> usize {
        (self.max_sessions as usize).saturating_sub(self.sessions.available_permits())
    }
}

/// The state and the filter of one API instance.
fn build(
    engine: Engine,
    cfg: ApiConfig,
) -> (
    Arc<ApiState>,
    impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone + Send + Sync + 'static,
) {
    let max_sessions = u32::try_from(cfg.max_ws_connections).unwrap_or(u32::MAX);
    let state = Arc::new(ApiState {
        metrics: metrics::Metrics::start(&engine),
        openapi: openapi::json(cfg.api_token.is_some(), engine.limits()),
        sessions: Arc::new(Semaphore::new(max_sessions as usize)),
        max_sessions,
        shutdown: CancellationToken::new(),
        event_texts: Arc::new(ws::EventTexts::new()),
        queues: queues::Directory::default(),
        engine,
        cfg,
    });
    // The dashboard's routes answer GET only; other methods on its paths get the
    // same 405 with `Allow` as the API's.
    let dashboard_methods = warp::path::end()
        .or(warp::path!("dashboard" / String).map(|_| ()).untuple_one())
        .unify()
        .and(filters::methods("GET, OPTIONS"));
    let filter = filters::api(Arc::clone(&state))
        .or(crate::dashboard::routes())
        .unify()
        .or(dashboard_methods)
        .unify()
        .recover(errors::recover)
        .unify();
    (state, filter)
}

/// Every route, with errors recovered into JSON; for `warp::test` and for embedding
/// into another warp server. Must be called inside a Tokio runtime (it starts the
/// task that feeds the metrics).
pub fn routes(
    engine: Engine,
    cfg: ApiConfig,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone + Send + Sync + 'static
{
    build(engine, cfg).1
}

/// Binds `addr` (port 0 picks a free port) and serves the API until `shutdown`
/// resolves. Then it stops accepting, lets requests in flight finish, sends Close to
/// every WebSocket session (warp does not wait for those) and waits up to 5 s for
/// them to end. Returns the bound address and the task running the server, which
/// ends after that. The engine is left running: shut it down after the task ends.
pub async fn serve(
    engine: Engine,
    cfg: ApiConfig,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ApiError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ApiError::Bind { addr, source })?;
    if cfg.api_token.is_none() && !local.ip().is_loopback() {
        warn!(%local, "serving without an API token on a non-loopback address: anyone who can reach it can run flows");
    }
    let (state, filter) = build(engine, cfg);
    let token = state.shutdown.clone();
    let signal = async move {
        shutdown.await;
        // Sessions close at once, in parallel with warp draining HTTP requests.
        token.cancel();
    };
    let task = tokio::spawn(async move {
        accept_loop(listener, filter, signal).await;
        state.shutdown.cancel();
        let all = state.max_sessions;
        match tokio::time::timeout(SESSION_DRAIN, state.sessions.acquire_many(all)).await {
            Ok(_) => {}
            Err(_) => warn!(
                open = state.open_sessions(),
                "websocket sessions still open after shutdown"
            ),
        }
        info!("api server stopped");
    });
    info!(%local, "api listening");
    Ok((local, task))
}

/// What `warp::serve(..).incoming(..).graceful(..)` does, plus the one setting warp
/// does not expose: hyper's [`HEADER_READ_TIMEOUT`], which needs a timer. HTTP/1.1
/// only, which is also what makes that timeout hold: hyper has none for HTTP/2, and
/// the auto builder warp uses first waits, with no timeout at all, for enough bytes
/// to tell the two apart (a client that connects and sends nothing, or `PRI`, kept
/// its connection for ever). Browsers and our CLI speak HTTP/2 only over TLS, which
/// this server does not terminate. Returns once `shutdown` resolved and every open
/// request finished; upgraded WebSocket connections are not waited for (`serve`
/// closes them).
async fn accept_loop<F>(
    listener: tokio::net::TcpListener,
    filter: F,
    shutdown: impl std::future::Future<Output = ()>,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let stopping = CancellationToken::new();
    // Every connection task holds a sender; `recv` returns `None` once all are gone.
    let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // As warp does: a reset before accept is nothing; anything else
                    // (out of file descriptors) is worth a pause rather than a spin.
                    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
                    if !matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
                        warn!(error = %e, "accepting a connection failed; pausing 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(warp::service(filter.clone()));
        let (stopping, alive) = (stopping.clone(), alive.clone());
        tokio::spawn(async move {
            let _alive = alive;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = stopping.cancelled() => {
                    // Finish the request in flight, take no other.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                // A header timeout or a client's garbage: theirs, not ours to log loudly.
                debug!(error = %e, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    stopping.cancel();
    drop(alive);
    let _ = all_closed.recv().await;
}
