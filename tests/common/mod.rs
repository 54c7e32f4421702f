#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]
//! Helpers shared by the end-to-end tests in `tests/`.
//!
//! - [`start_server`] starts an engine (real Redis from `dagflow::engine::testing`,
//!   a fresh key prefix, a temp sled dir, the built-in handlers on queue `default`)
//!   and the API on `127.0.0.1:0`; [`ServerOpts`] changes any of that.
//! - [`Api`] is an HTTP client bound to one server (token included) whose calls
//!   return `(status, JSON body)`.
//! - [`WsClient`] is a WebSocket client that reads JSON messages with a deadline.
//! - [`eventually`] polls a condition until a deadline: tests wait with it (or
//!   with [`Api::wait_for_status`]), never with a bare sleep.
//!
//! Every wait panics with a message after [`WAIT`], so a broken test fails
//! instead of hanging.
//!
//! Tests that run the real binary instead of an in-process engine use the
//! submodules: [`process`] (the `dagflow serve`/`dagflow worker` harness),
//! [`http`] (requests that survive a server restart, the paged list),
//! [`receiver`] (an HTTP receiver of callbacks that can fail, be slow or be down),
//! [`redis_server`] (a Redis that can be killed and rolled back to a snapshot) and
//! [`rng`] (the seeded generator every randomized test uses).

pub mod http;
pub mod process;
pub mod receiver;
pub mod redis_server;
pub mod rng;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dagflow::api::{self, ApiConfig};
use dagflow::engine::{testing, Engine, EngineBuilder, Handler};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The node of this name in a flow view (its JSON), or a panic that shows the flow.
pub fn node<'a>(flow: &'a Value, name: &str) -> &'a Value {
    flow["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {flow:#}"))
}

/// Longest any wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(30);
/// Pause between two looks at something being waited for.
pub const POLL: Duration = Duration::from_millis(20);

/// Changes to the default test server. `ServerOpts::default()` is: no token, the
/// API's default limits, the shared test Redis, a fresh prefix and data dir, queue
/// `default` with 4 workers, the built-in handlers.
#[derive(Default)]
pub struct ServerOpts {
    /// Require this API token.
    pub api_token: Option<String>,
    /// Override [`ApiConfig::body_limit`].
    pub body_limit: Option<u64>,
    /// Override [`ApiConfig::max_ws_connections`].
    pub max_ws_connections: Option<usize>,
    /// Override [`ApiConfig::max_subscriptions_per_connection`].
    pub max_subscriptions: Option<usize>,
    /// Another Redis (e.g. a `testing::TestRedis::dedicated()` a test stops).
    pub redis_url: Option<String>,
    /// Reuse a key prefix (to restart a server on the same Redis data).
    pub prefix: Option<String>,
    /// Reuse a data dir (to restart a server on the same snapshots); keep the
    /// previous [`TestServer::data_dir`] and pass it here.
    pub data_dir: Option<Arc<tempfile::TempDir>>,
    /// Worker queues and their concurrency; empty means `[("default", 4)]`.
    pub queues: Vec<(String, usize)>,
    /// Handlers besides the built-in ones.
    pub handlers: Vec<(String, Arc<dyn Handler>)>,
    /// Last changes to the engine builder (event capacity, lease...).
    pub engine: Option<Box<dyn FnOnce(EngineBuilder) -> EngineBuilder + Send>>,
}

/// A running engine and API server; stop it with [`TestServer::stop`] (dropping
/// it only signals the API to stop).
pub struct TestServer {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:{port}`.
    pub base_url: String,
    /// `ws://127.0.0.1:{port}/ws`.
    pub ws_url: String,
    /// The engine behind the API.
    pub engine: Engine,
    /// The engine's Redis key prefix.
    pub prefix: String,
    /// The Redis the engine uses.
    pub redis_url: String,
    /// The sled directory; lives as long as any clone of this.
    pub data_dir: Arc<tempfile::TempDir>,
    /// The token the API wants, if any.
    pub token: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts an engine and the API on `127.0.0.1:0`.
pub async fn start_server(opts: ServerOpts) -> TestServer {
    let redis_url = opts
        .redis_url
        .unwrap_or_else(|| testing::redis().url.clone());
    let prefix = opts.prefix.unwrap_or_else(testing::unique_prefix);
    let data_dir = opts
        .data_dir
        .unwrap_or_else(|| Arc::new(tempfile::tempdir().unwrap()));
    let mut builder = Engine::builder()
        .redis_url(redis_url.clone())
        .prefix(prefix.clone())
        .data_dir(data_dir.path())
        .lease(Duration::from_millis(1500))
        .cancel_grace(Duration::from_millis(500));
    let queues = if opts.queues.is_empty() {
        vec![("default".to_owned(), 4)]
    } else {
        opts.queues
    };
    for (queue, concurrency) in queues {
        builder = builder.queue(queue, concurrency);
    }
    for (name, handler) in dagflow::handlers::builtin() {
        builder = builder.handler_arc(name, handler);
    }
    for (name, handler) in opts.handlers {
        builder = builder.handler_arc(name, handler);
    }
    if let Some(configure) = opts.engine {
        builder = configure(builder);
    }
    let engine = builder.build().await.unwrap();
    let defaults = ApiConfig::default();
    let cfg = ApiConfig {
        api_token: opts.api_token.clone(),
        body_limit: opts.body_limit.unwrap_or(defaults.body_limit),
        max_ws_connections: opts
            .max_ws_connections
            .unwrap_or(defaults.max_ws_connections),
        max_subscriptions_per_connection: opts
            .max_subscriptions
            .unwrap_or(defaults.max_subscriptions_per_connection),
    };
    let (tx, rx) = oneshot::channel::<()>();
    let (addr, task) = api::serve(engine.clone(), cfg, "127.0.0.1:0".parse().unwrap(), async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    TestServer {
        addr,
        base_url: format!("http://{addr}"),
        ws_url: format!("ws://{addr}/ws"),
        engine,
        prefix,
        redis_url,
        data_dir,
        token: opts.api_token,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl TestServer {
    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A client that sends this server's token.
    pub fn api(&self) -> Api {
        Api::new(&self.base_url, self.token.clone())
    }

    /// Stops the API (WebSockets get Close), waits for it, then shuts the engine down.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("the API server did not stop")
                .unwrap();
        }
        self.engine.shutdown(Duration::from_secs(5)).await;
    }

    /// Every Redis key under this server's prefix.
    pub async fn redis_keys(&self) -> Vec<String> {
        testing::keys_matching(&self.redis_url, &format!("{}:*", self.prefix)).await
    }

    /// Connects a WebSocket client (with the token, if any).
    pub async fn ws(&self) -> WsClient {
        WsClient::connect(&self.ws_url, self.token.as_deref())
            .await
            .unwrap_or_else(|e| panic!("websocket connect failed: {e}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An HTTP client for one server.
#[derive(Clone)]
pub struct Api {
    /// The underlying client.
    pub client: reqwest::Client,
    /// `http://host:port`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
}

impl Api {
    /// A client for `base_url`, sending `token` if given.
    pub fn new(base_url: &str, token: Option<String>) -> Api {
        Api {
            client: reqwest::Client::new(),
            base_url: base_url.to_owned(),
            token,
        }
    }

    /// The same server without a token (or with another one).
    pub fn with_token(&self, token: Option<&str>) -> Api {
        Api {
            token: token.map(str::to_owned),
            ..self.clone()
        }
    }

    /// A request to `path`, with the token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self
            .client
            .request(method, format!("{}{path}", self.base_url));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.request(Method::GET, path)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        send(self.request(Method::POST, path).json(body)).await
    }

    /// `POST path` without a body.
    pub async fn post_empty(&self, path: &str) -> (StatusCode, Value) {
        send(self.request(Method::POST, path)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        send(self.request(Method::DELETE, path)).await
    }

    /// Creates a flow, asserting 201, and returns its id.
    pub async fn create_flow(&self, spec: &Value) -> String {
        let (status, body) = self.post("/flows", spec).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["flowId"].as_str().unwrap().to_owned()
    }

    /// `GET /flows/{id}`, asserting 200.
    pub async fn flow(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/flows/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Polls the flow until its status is `status`; panics (showing the flow) if
    /// it ends in another status or the deadline passes.
    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let flow = self.flow(id).await;
            if flow["status"] == status {
                return flow;
            }
            let ended = matches!(
                flow["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            );
            assert!(
                !ended,
                "flow ended {} instead of {status}: {flow:#}",
                flow["status"]
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for flow {id} to be {status}: {flow:#}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls the flow until node `name` has `status`, and returns the flow.
    pub async fn wait_for_node(&self, id: &str, name: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let flow = self.flow(id).await;
            let node = flow["nodes"]
                .as_array()
                .and_then(|nodes| nodes.iter().find(|n| n["name"] == name));
            if node.is_some_and(|n| n["status"] == status) {
                return flow;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for node {name} to be {status}: {flow:#}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Sends a request; the body as JSON (`Value::Null` when empty, a string when not JSON).
pub async fn send(rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = rb.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// Polls `f` until it returns true; panics after [`WAIT`] saying what it waited for.
pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(poll_until(f).await, "timed out waiting for {what}");
}

/// Polls `f` until it returns true (→ true) or [`WAIT`] passes (→ false).
pub async fn poll_until<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Sends raw bytes as one HTTP/1.1 request and returns the status code and the
/// whole response text (for what reqwest will not send: chunked bodies, bad framing).
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    // One complete response is enough; the server may keep the connection.
                    let text = String::from_utf8_lossy(&buf);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    (status, text)
}

/// A WebSocket client speaking the server's JSON protocol.
pub struct WsClient {
    /// The connection, for tests that need raw frames.
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `url`, sending `token` as a bearer header when given.
    pub async fn connect(
        url: &str,
        token: Option<&str>,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(WsClient { stream })
    }

    /// Sends a JSON text frame.
    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends a text frame as is.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text.to_owned()))
            .await
            .unwrap();
    }

    /// `{"type":"subscribe","flowId":id}`.
    pub async fn subscribe(&mut self, id: &str) {
        self.send_json(&json!({"type": "subscribe", "flowId": id}))
            .await;
    }

    /// The next frame that is not a ping or pong, within [`WAIT`].
    pub async fn next_frame(&mut self) -> Message {
        loop {
            let frame = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("timed out waiting for a websocket frame")
                .expect("the websocket ended")
                .expect("websocket error");
            if !matches!(frame, Message::Ping(_) | Message::Pong(_)) {
                return frame;
            }
        }
    }

    /// The next JSON message; panics on anything else (a Close included).
    pub async fn recv_json(&mut self) -> Value {
        match self.next_frame().await {
            Message::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// Reads messages until one satisfies `done`; returns all of them, that one last.
    pub async fn recv_until(&mut self, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let msg = self.recv_json().await;
            let stop = done(&msg);
            seen.push(msg);
            if stop {
                return seen;
            }
        }
    }
}

/// The README's image pipeline on built-in handlers: download → resize + watermark
/// → save, each an `echo`, so every node's result is the input it got.
pub fn image_pipeline() -> Value {
    json!({
        "name": "image pipeline",
        "nodes": [
            {"name": "download-image", "handler": "echo", "data": {"url": "https://example.com/a.png"}},
            {"name": "resize-image", "handler": "echo", "parents": ["download-image"], "data": {"width": 800}},
            {"name": "add-watermark", "handler": "echo", "parents": ["download-image"], "data": {"text": "(c)"}},
            {"name": "save-to-s3", "handler": "echo", "parents": ["resize-image", "add-watermark"],
             "data": {"bucket": "images"},
             "opts": {"attempts": 3, "backoff": {"type": "exponential", "delayMs": 500}, "timeoutMs": 30000}}
        ]
    })
}

/// A one-node flow running `handler` with `data`.
pub fn single(handler: &str, data: Value) -> Value {
    json!({"name": handler, "nodes": [{"name": "only", "handler": handler, "data": data}]})
}
