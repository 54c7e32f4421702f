//! The client commands: `submit`, `status` and `watch`, talking to a dagflow server
//! over its REST API and its WebSocket.
//!
//! What they print is meant for scripts: stdout carries only the flow id, the flow's
//! JSON or event lines; the progress bar and logs go to stderr.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use dagflow_actors::FlowStatus;
use futures::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tracing::warn;

pub mod schedule;

use super::{flow_exit_code, CliError};
use crate::config::{
    ClientConfig, RerunConfig, SignalConfig, StatusConfig, SubmitConfig, WatchConfig,
};

/// How long to wait for the server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one REST request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How often `submit --wait` asks for the flow when it cannot use the WebSocket.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// `dagflow submit FILE [--wait]`: prints the new flow's id; with `--wait`, follows it
/// with a progress bar, prints the final flow and exits with its outcome.
pub async fn submit(config: SubmitConfig) -> Result<ExitCode, CliError> {
    let spec = read_spec(&config.file).await?;
    let client = Client::new(&config.client)?;
    let mut request = client
        .http
        .post(client.url("/flows"))
        .header(CONTENT_TYPE, "application/json")
        .body(spec);
    if let Some(key) = &config.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let created = client.send(request, "/flows").await?;
    let id = created
        .get("flowId")
        .and_then(Value::as_str)
        .ok_or_else(|| CliError::Protocol(format!("no flowId in {created}")))?
        .to_owned();
    println!("{id}");
    if !config.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let view = wait_for_end(&client, &id).await?;
    print_pretty(&view);
    Ok(flow_exit_code(flow_status(&view)?))
}

/// `dagflow status ID`: the flow with every node, as pretty JSON.
pub async fn status(config: StatusConfig) -> Result<ExitCode, CliError> {
    let client = Client::new(&config.client)?;
    let view = client.flow(&config.id).await?;
    print_pretty(&view);
    Ok(ExitCode::SUCCESS)
}

/// `dagflow signal ID NODE [JSON]`: delivers the payload (JSON text, `-` for
/// stdin, `null` without one) to a waiting node and prints the node.
pub async fn signal(config: SignalConfig) -> Result<ExitCode, CliError> {
    let payload = match config.payload.as_deref() {
        None => b"null".to_vec(),
        Some("-") => read_spec(Path::new("-")).await?,
        Some(text) => text.as_bytes().to_vec(),
    };
    if let Err(e) = serde_json::from_slice::<Value>(&payload) {
        return Err(CliError::Protocol(format!(
            "the payload is not JSON: {e} (a JSON string needs its quotes: '\"text\"')"
        )));
    }
    let client = Client::new(&config.client)?;
    let path = format!(
        "/flows/{}/nodes/{}/signal",
        encode_segment(&config.id),
        encode_segment(&config.node)
    );
    let request = client
        .http
        .post(client.url(&path))
        .header(CONTENT_TYPE, "application/json")
        .body(payload);
    let node = client.send(request, &path).await?;
    print_pretty(&node);
    Ok(ExitCode::SUCCESS)
}

/// `dagflow rerun ID NODE`: re-runs the node and everything downstream of it and
/// prints the flow.
pub async fn rerun(config: RerunConfig) -> Result<ExitCode, CliError> {
    let client = Client::new(&config.client)?;
    let path = format!(
        "/flows/{}/nodes/{}/rerun",
        encode_segment(&config.id),
        encode_segment(&config.node)
    );
    let flow = client
        .send(client.http.post(client.url(&path)), &path)
        .await?;
    print_pretty(&flow);
    Ok(ExitCode::SUCCESS)
}

/// `dagflow watch ID`: every WebSocket message about the flow (its snapshot first) as
/// one JSON line, until the flow ends; exits with the flow's outcome.
pub async fn watch(config: WatchConfig) -> Result<ExitCode, CliError> {
    let client = Client::new(&config.client)?;
    let mut feed = Feed::subscribe(&client, &config.id).await?;
    loop {
        let Some((line, message)) = feed.next().await? else {
            return Err(CliError::WebSocket {
                url: feed.url.clone(),
                message: "the server closed the connection before the flow ended".to_owned(),
            });
        };
        println!("{line}");
        match message {
            FeedMessage::Snapshot(view) => {
                let status = flow_status(&view)?;
                if status.is_terminal() {
                    return Ok(flow_exit_code(status));
                }
            }
            FeedMessage::Event(event) => {
                if let Some(status) = flow_end(&event) {
                    return Ok(flow_exit_code(status));
                }
            }
            FeedMessage::Other | FeedMessage::Error(_) => {}
        }
    }
}

/// Follows a flow until it ends, with a progress bar of its finished nodes, and
/// returns its final state from the REST API (which has every result). Uses the
/// WebSocket; if that fails, polls.
async fn wait_for_end(client: &Client, id: &str) -> Result<Value, CliError> {
    let mut progress = Progress::new();
    match Feed::subscribe(client, id).await {
        Ok(mut feed) => loop {
            match feed.next().await {
                Ok(Some((_, FeedMessage::Snapshot(view)))) => {
                    progress.snapshot(&view);
                    if flow_status(&view)?.is_terminal() {
                        break;
                    }
                }
                Ok(Some((_, FeedMessage::Event(event)))) => {
                    progress.event(&event);
                    if flow_end(&event).is_some() {
                        break;
                    }
                }
                Ok(Some((_, FeedMessage::Other | FeedMessage::Error(_)))) => {}
                Ok(None) => {
                    warn!("the server closed the websocket; polling instead");
                    poll_until_end(client, id, &mut progress).await?;
                    break;
                }
                Err(e @ CliError::Server { .. }) => return Err(e),
                Err(e) => {
                    warn!(error = %e, "websocket failed; polling instead");
                    poll_until_end(client, id, &mut progress).await?;
                    break;
                }
            }
        },
        Err(e @ CliError::Server { .. }) => return Err(e),
        Err(e) => {
            warn!(error = %e, "cannot follow the flow over the websocket; polling instead");
            poll_until_end(client, id, &mut progress).await?;
        }
    }
    let view = client.flow(id).await?;
    progress.finish(&view);
    Ok(view)
}

/// Asks for the flow until it is terminal.
async fn poll_until_end(
    client: &Client,
    id: &str,
    progress: &mut Progress,
) -> Result<(), CliError> {
    loop {
        let view = client.flow(id).await?;
        progress.snapshot(&view);
        if flow_status(&view)?.is_terminal() {
            return Ok(());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The progress bar of `submit --wait`: finished nodes of all nodes, on stderr (and
/// only when stderr is a terminal).
struct Progress {
    /// The bar.
    bar: ProgressBar,
    /// Each node's last known status, by name.
    nodes: std::collections::HashMap<String, String>,
}

impl Progress {
    fn new() -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} nodes {msg}",
        ) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress {
            bar,
            nodes: Default::default(),
        }
    }

    /// Starts over from a full view of the flow.
    fn snapshot(&mut self, view: &Value) {
        self.nodes.clear();
        for node in view
            .get("nodes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(status)) = (
                node.get("name").and_then(Value::as_str),
                node.get("status").and_then(Value::as_str),
            ) {
                self.nodes.insert(name.to_owned(), status.to_owned());
            }
        }
        self.bar.set_length(self.nodes.len() as u64);
        self.redraw();
    }

    /// Applies one event.
    fn event(&mut self, event: &Value) {
        if let (Some(node), Some(status)) = (
            event.get("node").and_then(Value::as_str),
            event.get("status").and_then(Value::as_str),
        ) {
            // Progress events repeat the node's status, so this is right for them too.
            self.nodes.insert(node.to_owned(), status.to_owned());
            self.redraw();
        }
    }

    fn redraw(&self) {
        let done = self.nodes.values().filter(|s| is_node_terminal(s)).count();
        let mut active: Vec<&str> = self
            .nodes
            .iter()
            .filter(|(_, s)| s.as_str() == "active")
            .map(|(n, _)| n.as_str())
            .collect();
        active.sort_unstable();
        self.bar.set_position(done as u64);
        self.bar.set_message(if active.is_empty() {
            String::new()
        } else {
            format!("running: {}", active.join(", "))
        });
    }

    fn finish(&mut self, view: &Value) {
        self.snapshot(view);
        let status = view
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        self.bar.finish_with_message(status.to_owned());
    }
}

/// Whether a node's status is final (until a retry of the flow).
fn is_node_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "skipped" | "cancelled")
}

/// A flow's status in its JSON view.
fn flow_status(view: &Value) -> Result<FlowStatus, CliError> {
    view.get("status")
        .and_then(Value::as_str)
        .and_then(FlowStatus::parse)
        .ok_or_else(|| CliError::Protocol(format!("a flow without a status: {view}")))
}

/// The flow's final status, if this event ends it (a flow-level event, without a
/// node, with a terminal status).
fn flow_end(event: &Value) -> Option<FlowStatus> {
    if event.get("node").is_some_and(|n| !n.is_null()) {
        return None;
    }
    let status = FlowStatus::parse(event.get("status")?.as_str()?)?;
    status.is_terminal().then_some(status)
}

fn print_pretty(value: &Value) {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    // A reader that went away (`| head`) is not an error of the command.
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Reads the spec from a file or, for `-`, from stdin.
async fn read_spec(path: &Path) -> Result<Vec<u8>, CliError> {
    let read_error = |source| CliError::ReadFile {
        path: path.to_owned(),
        source,
    };
    if path == Path::new("-") {
        // tokio's stdin needs a feature this crate does not otherwise use.
        let read = tokio::task::spawn_blocking(|| {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
        })
        .await
        .map_err(|e| read_error(std::io::Error::other(e)))?;
        read.map_err(read_error)
    } else {
        tokio::fs::read(path).await.map_err(read_error)
    }
}

/// A connection to one dagflow server.
struct Client {
    /// The HTTP client (keeps connections alive between requests).
    http: reqwest::Client,
    /// Base URL without a trailing slash.
    base: String,
    /// `Bearer …`, when a token is configured.
    authorization: Option<HeaderValue>,
}

impl Client {
    fn new(config: &ClientConfig) -> Result<Client, CliError> {
        let base = config.server.trim_end_matches('/').to_owned();
        let authorization = match &config.api_token {
            Some(token) => {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        CliError::Protocol(
                            "the API token holds characters a header cannot".to_owned(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) = &authorization {
            headers.insert(AUTHORIZATION, value.clone());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .default_headers(headers)
            .build()
            .map_err(|e| CliError::Http {
                url: base.clone(),
                message: e.to_string(),
            })?;
        Ok(Client {
            http,
            base,
            authorization,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET /flows/{id}`.
    async fn flow(&self, id: &str) -> Result<Value, CliError> {
        let path = format!("/flows/{}", encode_segment(id));
        self.send(self.http.get(self.url(&path)), &path).await
    }

    /// Sends a request; a success is its JSON body, anything else a [`CliError`].
    async fn send(&self, request: reqwest::RequestBuilder, path: &str) -> Result<Value, CliError> {
        let url = self.url(path);
        // The URL is already in the message; reqwest would repeat it.
        let http_error = |e: reqwest::Error| CliError::Http {
            url: url.clone(),
            message: error_chain(&e.without_url()),
        };
        let response = request.send().await.map_err(http_error)?;
        let status = response.status();
        let body = response.bytes().await.map_err(http_error)?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                CliError::Protocol(format!("{url} answered {status} with invalid JSON: {e}"))
            });
        }
        Err(server_error(status.as_u16(), &body))
    }
}

/// Turns an error reply (`{"error":{"code","message","details"}}`, or anything else)
/// into a [`CliError::Server`].
fn server_error(status: u16, body: &[u8]) -> CliError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    CliError::Server {
        status,
        code: field("code").unwrap_or_else(|| "error".to_owned()),
        message: field("message")
            .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect()),
        details: error
            .and_then(|e| e.get("details"))
            .cloned()
            .unwrap_or(Value::Null),
    }
}

/// The error and its causes on one line (reqwest hides the useful part in sources).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Percent-encodes what a path segment cannot hold, so that an odd id gives a 404
/// instead of another route.
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// What the server sent on the WebSocket, as far as the client commands care.
enum FeedMessage {
    /// The flow's full state (first after subscribing, and again after `lagged`).
    Snapshot(Value),
    /// One state change of the flow.
    Event(Value),
    /// The server refused something (an unknown flow, a malformed message).
    Error(String),
    /// Anything else (`lagged`, acknowledgements).
    Other,
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket subscribed to one flow.
struct Feed {
    /// The connection.
    ws: WsStream,
    /// Its URL, for messages.
    url: String,
}

impl Feed {
    /// Connects to `/ws` and subscribes to the flow.
    async fn subscribe(client: &Client, id: &str) -> Result<Feed, CliError> {
        let url = ws_url(&client.base);
        let ws_error = |message: String| CliError::WebSocket {
            url: url.clone(),
            message,
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ws_error(e.to_string()))?;
        if let Some(value) = &client.authorization {
            request.headers_mut().insert(AUTHORIZATION, value.clone());
        }
        let connect = tokio_tungstenite::connect_async(request);
        let (mut ws, _) = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => return Err(ws_error("timed out connecting".to_owned())),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let body = response.body().clone().unwrap_or_default();
                return Err(server_error(response.status().as_u16(), &body));
            }
            Ok(Err(e)) => return Err(ws_error(error_chain(&e))),
            Ok(Ok(connected)) => connected,
        };
        let subscribe = json!({ "type": "subscribe", "flowId": id }).to_string();
        ws.send(Message::text(subscribe))
            .await
            .map_err(|e| ws_error(e.to_string()))?;
        Ok(Feed { ws, url })
    }

    /// The next message (its text, compacted to one line, and what it means), or
    /// `None` once the server closed the connection.
    async fn next(&mut self) -> Result<Option<(String, FeedMessage)>, CliError> {
        loop {
            let frame = match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(CliError::WebSocket {
                        url: self.url.clone(),
                        message: error_chain(&e),
                    })
                }
                Some(Ok(frame)) => frame,
            };
            let text = match frame {
                Message::Text(text) => text.to_string(),
                Message::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Message::Close(_) => return Ok(None),
                // Pings are answered by tungstenite itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            let value: Value = serde_json::from_str(&text).map_err(|e| {
                CliError::Protocol(format!(
                    "a websocket message that is not JSON ({e}): {text}"
                ))
            })?;
            match classify(&value) {
                FeedMessage::Error(message) => {
                    return Err(CliError::WebSocket {
                        url: self.url.clone(),
                        message: format!("the server reported {message}"),
                    })
                }
                message => return Ok(Some((value.to_string(), message))),
            }
        }
    }
}

/// Reads a server message (see the protocol in [`crate::api`]): `snapshot` (the flow
/// under `flow`), `flow:updated` (the event's fields at the top level), `error`, or
/// anything else (`lagged` is followed by a snapshot, which is all that matters here).
fn classify(value: &Value) -> FeedMessage {
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "snapshot" => {
            FeedMessage::Snapshot(value.get("flow").cloned().unwrap_or_else(|| value.clone()))
        }
        "flow:updated" => {
            FeedMessage::Event(value.get("event").cloned().unwrap_or_else(|| value.clone()))
        }
        "error" => {
            let error = value.get("error").unwrap_or(value);
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("an error");
            FeedMessage::Error(message.to_owned())
        }
        _ => FeedMessage::Other,
    }
}

/// The WebSocket URL of a server: `http://h:p` becomes `ws://h:p/ws`.
fn ws_url(base: &str) -> String {
    let rest = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{rest}/ws")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn websocket_url_follows_the_server() {
        assert_eq!(ws_url("http://127.0.0.1:7700"), "ws://127.0.0.1:7700/ws");
        assert_eq!(
            ws_url("https://dagflow.example"),
            "wss://dagflow.example/ws"
        );
    }

    #[test]
    fn flow_end_is_a_terminal_flow_event() {
        assert_eq!(
            flow_end(&json!({"status": "completed", "seq": 9})),
            Some(FlowStatus::Completed)
        );
        assert_eq!(flow_end(&json!({"node": "a", "status": "failed"})), None);
        assert_eq!(flow_end(&json!({"status": "running"})), None);
    }

    #[test]
    fn error_replies_keep_code_and_details() {
        let body = br#"{"error":{"code":"invalid_flow","message":"invalid flow: cycle a -> a","details":{"problems":[]}}}"#;
        let error = server_error(422, body);
        assert_eq!(
            error.to_string(),
            "server answered 422 invalid_flow: invalid flow: cycle a -> a"
        );
        assert!(
            matches!(error, CliError::Server { details, .. } if details["problems"].is_array())
        );
        assert!(server_error(502, b"bad gateway")
            .to_string()
            .contains("bad gateway"));
    }

    #[test]
    fn odd_ids_stay_one_segment() {
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
