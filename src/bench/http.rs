//! `dagflow bench --over-http URL`: the same runs against a server that is already
//! running, through its public API: flows go in with `POST /flows` (at most
//! `--in-flight` requests, hence connections, at once), events come back over one
//! WebSocket subscribed to every flow (`{"type":"subscribe","flowId":"*"}`, answered
//! by `subscribed`, then `flow:updated` messages carrying the event's fields).
//!
//! The server runs the flows with its own queues and workers: its nodes need the
//! built-in `noop` handler on queue `default`, as `dagflow serve` has. Memory is
//! the server's and is not measured here; Redis commands are, when `--redis-url`
//! is the server's Redis.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use dagflow_actors::{FlowId, FlowSpec};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use super::redis_probe::RedisProbe;
use super::tracker::Tracker;
use super::{lock, submit_and_wait, BenchArgs, Counters, Load, Outcome, Target};

/// How long the WebSocket may take to connect and confirm the subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server, as the benchmark talks to it.
pub(super) struct HttpTarget {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
    body: bytes::Bytes,
}

/// `201 {"flowId": ...}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    flow_id: FlowId,
}

/// The part of `GET /flows/{id}` the benchmark reads.
#[derive(Deserialize)]
struct Status {
    status: String,
}

/// Any server message, with the fields the benchmark reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    /// A flow id, or `*` in `subscribed`.
    #[serde(default)]
    flow_id: Option<String>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    ts: Option<u64>,
    #[serde(default)]
    missed: Option<u64>,
    #[serde(default)]
    message: Option<String>,
}

impl HttpTarget {
    /// A client of the server at `base` (no trailing slash) that creates flows of
    /// `spec`, with up to `in_flight` connections kept open.
    pub(super) fn new(
        base: String,
        token: Option<String>,
        spec: &FlowSpec,
        in_flight: usize,
    ) -> anyhow::Result<HttpTarget> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(in_flight.max(1))
            .tcp_nodelay(true)
            .build()?;
        Ok(HttpTarget {
            client,
            base,
            token,
            body: serde_json::to_vec(spec)?.into(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

#[async_trait]
impl Target for HttpTarget {
    async fn create(&self) -> anyhow::Result<FlowId> {
        let response = self
            .request(reqwest::Method::POST, "/flows")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .send()
            .await?;
        let status = response.status();
        if status != reqwest::StatusCode::CREATED {
            let text = response.text().await.unwrap_or_default();
            bail!("POST /flows answered {status}: {text}");
        }
        Ok(response.json::<Created>().await?.flow_id)
    }

    async fn ended(&self, id: FlowId) -> anyhow::Result<Option<bool>> {
        let response = self
            .request(reqwest::Method::GET, &format!("/flows/{id}"))
            .send()
            .await?
            .error_for_status()?;
        let status = response.json::<Status>().await?.status;
        Ok(match status.as_str() {
            "running" => None,
            other => Some(other == "completed"),
        })
    }
}

/// Runs the load against the server at `url`.
pub(super) async fn drive(
    args: &BenchArgs,
    url: &str,
    probe: &RedisProbe,
    spec: FlowSpec,
    load: &Load,
    tracker: &Arc<Mutex<Tracker>>,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let base = url.trim_end_matches('/').to_owned();
    let ws_url = match base.split_once("://") {
        Some(("http", rest)) => format!("ws://{rest}/ws"),
        Some(("https", rest)) => format!("wss://{rest}/ws"),
        _ => bail!("--over-http wants an http:// URL, got '{url}'"),
    };
    let ws_url = match &args.api_token {
        Some(token) => format!("{ws_url}?token={token}"),
        None => ws_url,
    };
    let (mut socket, _) = tokio::time::timeout(
        SUBSCRIBE_TIMEOUT,
        tokio_tungstenite::connect_async(ws_url.as_str()),
    )
    .await
    .map_err(|_| anyhow!("connecting to {base}/ws timed out"))?
    .with_context(|| format!("connecting to {base}/ws"))?;
    socket
        .send(Message::text(r#"{"type":"subscribe","flowId":"*"}"#))
        .await?;
    // Submitting before the subscription is confirmed would lose the first events.
    let confirmed = tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
        while let Some(message) = socket.next().await {
            if let Message::Text(text) = message? {
                let incoming: Incoming = serde_json::from_str(&text)?;
                match incoming.kind.as_str() {
                    "subscribed" => return Ok(()),
                    "error" => bail!(
                        "the server refused the subscription: {}",
                        incoming.message.unwrap_or_default()
                    ),
                    _ => {}
                }
            }
        }
        bail!("the server closed the WebSocket")
    })
    .await;
    confirmed.map_err(|_| anyhow!("no subscription confirmation from {base}/ws"))??;
    let reader = tokio::spawn(read_events(socket, Arc::clone(tracker)));

    let target: Arc<dyn Target> = Arc::new(HttpTarget::new(
        base,
        args.api_token.clone(),
        &spec,
        args.in_flight,
    )?);
    let before = Counters::take(probe).await;
    let started = Instant::now();
    let (submitted, timed_out) =
        submit_and_wait(Arc::clone(&target), tracker, load, args.in_flight, timeout).await;
    let after = Counters::take(probe).await;
    reader.abort();
    Ok(Outcome {
        disk: Vec::new(),
        started,
        submitted,
        timed_out,
        before,
        after,
        peak_rss_mb: None,
        prefix: None,
    })
}

/// Feeds the WebSocket's events into the tracker until the socket closes.
async fn read_events<S>(mut socket: S, tracker: Arc<Mutex<Tracker>>)
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(incoming) = serde_json::from_str::<Incoming>(&text) else {
            continue;
        };
        match incoming.kind.as_str() {
            "flow:updated" => {
                let id = incoming.flow_id.as_deref().and_then(|id| id.parse().ok());
                if let (Some(id), Some(status), Some(ts)) =
                    (id, incoming.status.as_deref(), incoming.ts)
                {
                    lock(&tracker).on_event(id, incoming.node.as_deref(), status, ts);
                }
            }
            "lagged" => lock(&tracker).lagged += incoming.missed.unwrap_or(1),
            _ => {}
        }
    }
}
