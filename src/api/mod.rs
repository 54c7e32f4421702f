//! The warp REST and WebSocket API of a dagflow server.
//!
//! Laid out as warp's `todos` example: `filters` matches requests and extracts
//! their parts, `handlers` turns them into engine calls, `models` holds the wire
//! types, `errors` the one JSON error shape and the `recover` that produces it,
//! `ws` the WebSocket session actor, `metrics` the Prometheus text and
//! `openapi` the generated API description.
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
//! | `GET /ws`                       | WebSocket, see below |
//! | `GET /healthz`                  | `200 {"status":"ok"}` while the process serves |
//! | `GET /readyz`                   | `200` when Redis and the store answer, else `503` naming the failing check |
//! | `GET /metrics`                  | Prometheus text (`dagflow_*`) |
//! | `GET /openapi.json`             | OpenAPI 3.1 description generated from the types |
//!
//! # Errors
//!
//! Every failure, whether warp rejected the request or the engine refused it, is
//! `{"error": {"code", "message", "details"}}`: 400 (malformed JSON with its line and
//! column, bad query, bad header), 401 (missing or wrong token), 404 (unknown flow,
//! node or route), 405, 409 (the action does not fit the flow's state), 411 and 413
//! (body without length or over [`ApiConfig::body_limit`]), 415 (not JSON), 422
//! (the flow is invalid; `details.problems` lists every problem, at most 100), 503 (Redis
//! unreachable, engine stopping; with `Retry-After`), 500 (logged; the message says
//! nothing of the cause). JSON that parses but is not a flow spec (a missing `nodes`,
//! an unknown field) is a 422 with one problem, not a 400. A request without
//! `Content-Type` is read as JSON.
//!
//! Writes (create, cancel, retry, delete) first check that Redis answers and are
//! refused with 503 when it does not, so that a client retries rather than leaving
//! work that waits silently; reads are served from the snapshots and keep working.
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
mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dagflow_actors::Engine;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
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
        sessions: Arc::new(Semaphore::new(max_sessions as usize)),
        max_sessions,
        shutdown: CancellationToken::new(),
        engine,
        cfg,
    });
    let filter = filters::api(Arc::clone(&state))
        .or(crate::dashboard::routes())
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
        warp::serve(filter)
            .incoming(listener)
            .graceful(signal)
            .run()
            .await;
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
