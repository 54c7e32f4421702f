//! WebSocket sessions: every connection is one [`WsSession`] actor that holds the
//! client's subscriptions and decides what the client sees.
//!
//! Three tasks serve the actor, and every hop between them is bounded:
//!
//! ```text
//! client ──frames──► reader task ──(≤ 8 in flight)──► WsSession ──bounded mpsc (256)──► writer (this connection's task) ──► client
//!                                                        ▲
//! engine EventHub ──broadcast──► pump task ──(≤ 64 in flight)──┘
//! ```
//!
//! ractor mailboxes are unbounded, so the reader and the pump each hold a small
//! semaphore and put a permit into every message they send; the actor drops it once
//! the message is handled. When the client stops reading, the writer blocks, the
//! outgoing buffer fills, the actor waits on it, the pump runs out of permits and
//! stops taking events, and the engine's broadcast channel (bounded, shared by
//! every subscriber) moves on without it. When the pump reads again it is told how
//! many events it lost; the actor sends `lagged` and a fresh snapshot of each
//! subscribed flow, and only events after that snapshot. The engine never waits for
//! a session, and a session's memory is bounded by the buffers above.
//!
//! The event receiver is created on the first subscribe, before the first snapshot
//! is read: an event that changes the flow after the snapshot is then certainly in
//! the receiver, and every event already in the snapshot (`seq` at or below the
//! snapshot's) is dropped. That is [`dagflow_actors::Subscription::wants`]'s rule,
//! applied to one receiver shared by all of the session's flows.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dagflow_actors::{Engine, EngineError, FlowEvent, FlowId};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::ws::{Message, WebSocket, Ws};

use super::errors::HttpError;
use super::models::{ClientMessage, ServerMessage};
use super::ApiState;

/// Messages waiting for the writer, per session.
const OUT_BUFFER: usize = 256;
/// Engine events handed to the actor and not yet handled, per session.
const EVENT_CREDITS: usize = 64;
/// Client messages handed to the actor and not yet handled, per session.
const CLIENT_CREDITS: usize = 8;
/// Frames a session reads from its client per second, sustained ...
const CLIENT_RATE: f64 = 100.0;
/// ... and at once after a quiet spell. Past that the reader waits, and TCP holds
/// the client back.
const CLIENT_BURST: f64 = 100.0;
/// Largest message a client may send; subscribe messages are tiny.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// How often the server pings.
const PING_EVERY: Duration = Duration::from_secs(20);
/// A client silent this long (no frame, not even a pong), or one that has not taken
/// a frame for this long, is disconnected.
const DEAD_AFTER: Duration = Duration::from_secs(60);
/// How long a Close frame may take to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Messages written before a flush, when several are waiting.
const WRITE_BATCH: usize = 64;
/// Close code for "going away" (server shutdown, dead peer).
const GOING_AWAY: u16 = 1001;
/// Close code for a session that ended normally.
const NORMAL: u16 = 1000;
/// Close code for a frame that breaks the WebSocket protocol (RFC 6455, 7.4.1).
const PROTOCOL_ERROR: u16 = 1002;
/// Close code for a text message that is not UTF-8.
const INVALID_PAYLOAD: u16 = 1007;
/// Close code for a message over [`MAX_CLIENT_MESSAGE`].
const MESSAGE_TOO_BIG: u16 = 1009;

/// Answers an upgrade request: 503 when the connection limit is reached, otherwise
/// `101` and a session.
pub(crate) fn upgrade(state: Arc<ApiState>, ws: Ws) -> Response {
    let Ok(permit) = Arc::clone(&state.sessions).try_acquire_owned() else {
        return HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!(
                "the server already has {} WebSocket connections",
                state.max_sessions
            ),
        )
        .into_response();
    };
    let reply = ws
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| connection(socket, state, permit));
    warp::Reply::into_response(reply)
}

/// Runs one connection: spawns its actor, writes to the client until the session
/// ends, then lets the permit go.
async fn connection(socket: WebSocket, state: Arc<ApiState>, permit: OwnedSemaphorePermit) {
    let (sink, stream) = socket.split();
    let (out, out_rx) = mpsc::channel(OUT_BUFFER);
    let activity = Arc::new(Activity::new());
    let args = SessionArgs {
        engine: state.engine.clone(),
        out,
        stream,
        activity: Arc::clone(&activity),
        max_subscriptions: state.cfg.max_subscriptions_per_connection,
        texts: Arc::clone(&state.event_texts),
    };
    let (actor, mut handle) = match Actor::spawn(None, WsSession, args).await {
        Ok(spawned) => spawned,
        Err(e) => {
            // The socket went with the arguments; dropping it closes the connection.
            HttpError::internal(&format!("spawning a websocket session: {e}"));
            return;
        }
    };
    let writer = write_loop(sink, out_rx, state.shutdown.clone(), activity);
    tokio::pin!(writer);
    tokio::select! {
        reason = &mut writer => {
            actor.stop(Some(reason.to_owned()));
            let _ = handle.await;
        }
        _ = &mut handle => {
            // The actor is gone with its sender: the writer sends what is left and Close.
            let _ = tokio::time::timeout(CLOSE_GRACE * 2, writer).await;
        }
    }
    drop(permit);
}

/// When the client was last heard from, for the keepalive, and the close code the
/// reader chose when the client broke the protocol (the writer sends the Close).
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    close_code: AtomicU16,
}

impl Activity {
    fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            close_code: AtomicU16::new(NORMAL),
        }
    }

    /// The code the Close frame will carry when the session ends.
    fn close_with(&self, code: u16) {
        self.close_code.store(code, Ordering::Relaxed);
    }

    fn close_code(&self) -> u16 {
        self.close_code.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// The session actor of one WebSocket connection.
pub(crate) struct WsSession;

/// What a session starts with.
pub(crate) struct SessionArgs {
    /// Where snapshots and events come from.
    engine: Engine,
    /// Frames for the writer; bounded, so a slow client holds this actor back
    /// rather than growing a queue.
    out: mpsc::Sender<Message>,
    /// The client's frames, read by the reader task the actor starts.
    stream: SplitStream<WebSocket>,
    /// Touched by the reader on every frame.
    activity: Arc<Activity>,
    /// Most flows this client may follow.
    max_subscriptions: usize,
    /// The text of each event, shared by every session.
    texts: Arc<EventTexts>,
}

/// A session's state.
pub(crate) struct SessionState {
    engine: Engine,
    out: mpsc::Sender<Message>,
    /// Followed flows and the last `seq` the client has of each (in a snapshot or an
    /// event); events at or below it are not sent.
    flows: HashMap<FlowId, u64>,
    /// Subscribed to `*`: every event of every flow.
    all: bool,
    max_subscriptions: usize,
    texts: Arc<EventTexts>,
    /// Reads the client's frames.
    reader: JoinHandle<()>,
    /// Reads the engine's events; started by the first subscribe.
    pump: Option<JoinHandle<()>>,
}

/// A place in one of the session's bounded queues, released when the message that
/// holds it is handled.
pub(crate) type Credit = OwnedSemaphorePermit;

/// Messages of a session.
pub(crate) enum SessionMsg {
    /// The client sent a message (or something that is not one: the reason).
    ClientSent(Result<ClientMessage, String>, Credit),
    /// The engine published an event.
    EventPublished(Arc<FlowEvent>, Credit),
    /// The session fell behind the engine's feed by this many events.
    Lagged(u64, Credit),
}

impl Actor for WsSession {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let reader = tokio::spawn(read_loop(args.stream, myself, args.activity));
        Ok(SessionState {
            engine: args.engine,
            out: args.out,
            flows: HashMap::new(),
            all: false,
            max_subscriptions: args.max_subscriptions,
            texts: args.texts,
            reader,
            pump: None,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.reader.abort();
        if let Some(pump) = &state.pump {
            pump.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        let delivered = match message {
            SessionMsg::ClientSent(Ok(ClientMessage::Subscribe { flow_id }), _credit) => {
                state.subscribe(&myself, &flow_id).await
            }
            SessionMsg::ClientSent(Ok(ClientMessage::Unsubscribe { flow_id }), _credit) => {
                state.unsubscribe(&flow_id).await
            }
            SessionMsg::ClientSent(Err(reason), _credit) => {
                state
                    .send(&ServerMessage::Error {
                        message: reason,
                        flow_id: None,
                    })
                    .await
            }
            SessionMsg::EventPublished(event, _credit) => state.event(&event).await,
            SessionMsg::Lagged(missed, _credit) => state.lagged(missed).await,
        };
        if delivered.is_err() {
            // The writer is gone (client disconnected, or shutdown): nothing more to do.
            myself.stop(Some("connection closed".to_owned()));
        }
        Ok(())
    }
}

/// The writer went away; the session should end.
struct Closed;

impl SessionState {
    /// Queues one message for the client, waiting while its buffer is full.
    async fn send(&self, msg: &ServerMessage<'_>) -> Result<(), Closed> {
        let text = match serde_json::to_string(msg) {
            Ok(text) => text,
            Err(e) => {
                HttpError::internal(&format!("serializing a websocket message: {e}"));
                return Ok(());
            }
        };
        self.out.send(Message::text(text)).await.map_err(|_| Closed)
    }

    async fn error(&self, message: String, flow_id: Option<&str>) -> Result<(), Closed> {
        self.send(&ServerMessage::Error { message, flow_id }).await
    }

    fn subscriptions(&self) -> usize {
        self.flows.len() + usize::from(self.all)
    }

    /// Starts reading the engine's events, once.
    fn ensure_pump(&mut self, myself: &ActorRef<SessionMsg>) {
        if self.pump.is_none() {
            let events = self.engine.events();
            self.pump = Some(tokio::spawn(pump(events, myself.clone())));
        }
    }

    async fn subscribe(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        target: &str,
    ) -> Result<(), Closed> {
        if target == "*" {
            if !self.all && self.subscriptions() >= self.max_subscriptions {
                return self.too_many(target).await;
            }
            self.ensure_pump(myself);
            self.all = true;
            return self.send(&ServerMessage::Subscribed { flow_id: "*" }).await;
        }
        let Ok(id) = FlowId::from_str(target) else {
            return self
                .error(
                    format!("'{}' is not a flow id or \"*\"", clip(target)),
                    None,
                )
                .await;
        };
        if !self.flows.contains_key(&id) && self.subscriptions() >= self.max_subscriptions {
            return self.too_many(target).await;
        }
        // The receiver must exist before the snapshot is read; see the module docs.
        self.ensure_pump(myself);
        match self.engine.get(id).await {
            Ok(view) => {
                self.flows.insert(id, view.seq);
                self.send(&ServerMessage::Snapshot { flow: &view }).await
            }
            Err(e) => self.error(flow_error(e), Some(target)).await,
        }
    }

    async fn too_many(&self, target: &str) -> Result<(), Closed> {
        let message = format!(
            "too many subscriptions: a connection may follow at most {} flows",
            self.max_subscriptions
        );
        self.error(message, Some(clip(target))).await
    }

    async fn unsubscribe(&mut self, target: &str) -> Result<(), Closed> {
        if target == "*" {
            self.all = false;
        } else if let Ok(id) = FlowId::from_str(target) {
            self.flows.remove(&id);
        } else {
            return self
                .error(
                    format!("'{}' is not a flow id or \"*\"", clip(target)),
                    None,
                )
                .await;
        }
        self.send(&ServerMessage::Unsubscribed { flow_id: target })
            .await
    }

    async fn event(&mut self, event: &Arc<FlowEvent>) -> Result<(), Closed> {
        let wanted = match self.flows.get_mut(&event.flow_id) {
            // Already in the client's snapshot, or sent: never twice.
            Some(seen) if event.seq <= *seen => false,
            Some(seen) => {
                *seen = event.seq;
                true
            }
            None => self.all,
        };
        if wanted {
            match self.texts.text(event) {
                Some(text) => self
                    .out
                    .send(Message::text(&*text))
                    .await
                    .map_err(|_| Closed),
                None => Ok(()),
            }
        } else {
            Ok(())
        }
    }

    /// The client missed events: say so, then start each followed flow afresh.
    async fn lagged(&mut self, missed: u64) -> Result<(), Closed> {
        debug!(missed, "websocket session lagged");
        self.send(&ServerMessage::Lagged { missed }).await?;
        let ids: Vec<FlowId> = self.flows.keys().copied().collect();
        for id in ids {
            match self.engine.get(id).await {
                Ok(view) => {
                    self.flows.insert(id, view.seq);
                    self.send(&ServerMessage::Snapshot { flow: &view }).await?;
                }
                Err(e) => {
                    // Deleted meanwhile (or the engine is stopping): stop following it.
                    self.flows.remove(&id);
                    let id = id.to_string();
                    self.error(flow_error(e), Some(&id)).await?;
                }
            }
        }
        Ok(())
    }
}

/// What a client is told about a flow it cannot follow; internal causes stay in the log.
fn flow_error(e: EngineError) -> String {
    HttpError::from(e).message
}

/// A client's text, shortened for echoing it back.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Reads the client's frames and hands each message to the actor, at most
/// [`CLIENT_CREDITS`] at a time; stops the session when the client goes away.
async fn read_loop(
    mut stream: SplitStream<WebSocket>,
    actor: ActorRef<SessionMsg>,
    activity: Arc<Activity>,
) {
    let credits = Arc::new(Semaphore::new(CLIENT_CREDITS));
    let mut pace = Pace::new();
    while let Some(frame) = stream.next().await {
        // The credits bound what a client has in flight, not how fast it is served:
        // a client that wrote without reading had ~35,000 frames handled (each an
        // error reply or a store lookup) before its unread replies filled the socket
        // buffers, and five of them slowed every flow sixfold (`tests/slow_clients.rs`).
        pace.next().await;
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                debug!(error = %e, "websocket read failed");
                if let Some(code) = close_code_for(&e) {
                    activity.close_with(code);
                }
                break;
            }
        };
        activity.touch();
        if frame.is_close() {
            break;
        }
        if frame.is_ping() || frame.is_pong() {
            continue;
        }
        let parsed = parse_client_frame(frame.to_str().ok());
        let Ok(credit) = Arc::clone(&credits).acquire_owned().await else {
            break;
        };
        if actor.cast(SessionMsg::ClientSent(parsed, credit)).is_err() {
            break;
        }
    }
    actor.stop(Some("client went away".to_owned()));
}

/// The Close code for a failed read, when the client is still there to be told:
/// 1009 for a message over [`MAX_CLIENT_MESSAGE`], 1007 for a text message that is
/// not UTF-8, 1002 for any other breach of the protocol. `None` when the
/// connection itself is gone.
fn close_code_for(e: &warp::Error) -> Option<u16> {
    use tokio_tungstenite::tungstenite::Error;
    let inner = std::error::Error::source(e)?.downcast_ref::<Error>()?;
    match inner {
        Error::Capacity(_) => Some(MESSAGE_TOO_BIG),
        Error::Utf8(_) => Some(INVALID_PAYLOAD),
        Error::Protocol(_) => Some(PROTOCOL_ERROR),
        _ => None,
    }
}

/// Why a session closed with `code`, for the Close frame.
fn close_reason(code: u16) -> &'static str {
    match code {
        MESSAGE_TOO_BIG => "message too big",
        INVALID_PAYLOAD => "text message is not valid UTF-8",
        PROTOCOL_ERROR => "protocol error",
        _ => "",
    }
}

/// Reads one client frame (`None`: not text) as a [`ClientMessage`], or the error
/// message the client is sent back.
fn parse_client_frame(text: Option<&str>) -> Result<ClientMessage, String> {
    match text {
        Some(text) => serde_json::from_str::<ClientMessage>(text).map_err(|e| {
            format!(
                "not a valid message ({e}); send {{\"type\":\"subscribe\"|\"unsubscribe\",\"flowId\":\"<id>\"|\"*\"}}"
            )
        }),
        None => Err("binary frames are not understood: send JSON text".to_owned()),
    }
}

/// Fuzzing entry (`fuzz/fuzz_targets/ws_message.rs`, and the corpus replayed by
/// `tests/ws_fuzz_corpus.rs`): runs a frame through what a session does with it
/// before touching the engine — decode, parse the target, and build the error
/// reply — and panics if any of it misbehaves (the reply must be valid JSON, a
/// parsed target must be `*` or a flow id or be answered with an error).
#[doc(hidden)]
pub fn fuzz_client_message(data: &[u8]) {
    let text = std::str::from_utf8(data).ok();
    match parse_client_frame(text) {
        Ok(ClientMessage::Subscribe { flow_id } | ClientMessage::Unsubscribe { flow_id }) => {
            if flow_id != "*" {
                // Either a flow id, or the session answers with an error naming it.
                if FlowId::from_str(&flow_id).is_err() {
                    check_reply(&ServerMessage::Error {
                        message: format!("'{flow_id}' is not a flow id"),
                        flow_id: Some(&flow_id),
                    });
                }
            }
        }
        Err(reason) => check_reply(&ServerMessage::Error {
            message: reason,
            flow_id: None,
        }),
    }
}

fn check_reply(msg: &ServerMessage<'_>) {
    let text = serde_json::to_string(msg)
        .unwrap_or_else(|e| panic!("an error reply does not serialize: {e}"));
    let back: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("an error reply is not valid JSON: {e}: {text}"));
    assert_eq!(back["type"], "error", "{text}");
}

/// The `flow:updated` text of recent events, made once by the first session that
/// sends one and reused by every other. Serializing per session was the largest
/// share of the server's CPU with a hundred clients on `*` (`tests/slow_clients.rs`).
/// Entries are found by the address of the event's `Arc` (every session gets the
/// same one from the broadcast); the entry holds that `Arc`, so the address cannot
/// be reused by another event while it is listed.
pub(crate) struct EventTexts {
    recent: std::sync::Mutex<RecentTexts>,
}

#[derive(Default)]
struct RecentTexts {
    /// By `Arc::as_ptr` of the event.
    texts: HashMap<usize, Arc<str>>,
    /// Oldest first; keeps each listed event alive.
    order: std::collections::VecDeque<Arc<FlowEvent>>,
}

impl EventTexts {
    /// Events remembered; a session further behind than this serializes anew.
    const KEPT: usize = 1024;

    pub(crate) fn new() -> Self {
        EventTexts {
            recent: std::sync::Mutex::new(RecentTexts::default()),
        }
    }

    /// The event's text; `None` (logged) if it cannot be serialized.
    fn text(&self, event: &Arc<FlowEvent>) -> Option<Arc<str>> {
        let key = Arc::as_ptr(event) as usize;
        if let Some(text) = self.recent.lock().ok()?.texts.get(&key) {
            return Some(Arc::clone(text));
        }
        let text: Arc<str> = match serde_json::to_string(&ServerMessage::Updated(event)) {
            Ok(text) => text.into(),
            Err(e) => {
                HttpError::internal(&format!("serializing a websocket message: {e}"));
                return None;
            }
        };
        let mut recent = self.recent.lock().ok()?;
        if !recent.texts.contains_key(&key) {
            if recent.order.len() == Self::KEPT {
                if let Some(oldest) = recent.order.pop_front() {
                    recent.texts.remove(&(Arc::as_ptr(&oldest) as usize));
                }
            }
            recent.order.push_back(Arc::clone(event));
            recent.texts.insert(key, Arc::clone(&text));
        }
        Some(text)
    }
}

/// A token bucket over a client's frames: [`CLIENT_RATE`] a second, [`CLIENT_BURST`]
/// at once.
struct Pace {
    tokens: f64,
    last: Instant,
}

impl Pace {
    fn new() -> Self {
        Pace {
            tokens: CLIENT_BURST,
            last: Instant::now(),
        }
    }

    /// Waits until one more frame may be handled, and takes its token.
    async fn next(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * CLIENT_RATE;
        self.tokens = (self.tokens + earned).min(CLIENT_BURST);
        self.last = now;
        if self.tokens < 1.0 {
            tokio::time::sleep(Duration::from_secs_f64((1.0 - self.tokens) / CLIENT_RATE)).await;
            self.tokens = 1.0;
            self.last = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// Hands the engine's events to the actor, at most [`EVENT_CREDITS`] at a time.
/// While the actor is held back by a slow client this task stops receiving, and
/// the broadcast channel reports the gap when it receives again.
async fn pump(mut events: broadcast::Receiver<Arc<FlowEvent>>, actor: ActorRef<SessionMsg>) {
    let credits = Arc::new(Semaphore::new(EVENT_CREDITS));
    loop {
        let Ok(credit) = Arc::clone(&credits).acquire_owned().await else {
            return;
        };
        let msg = match events.recv().await {
            Ok(event) => SessionMsg::EventPublished(event, credit),
            Err(broadcast::error::RecvError::Lagged(missed)) => SessionMsg::Lagged(missed, credit),
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if actor.cast(msg).is_err() {
            return;
        }
    }
}

/// Writes the session's messages to the client, pings it, and closes the
/// connection on shutdown, on a dead client, or when the session ends. Returns why
/// it stopped.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut out: mpsc::Receiver<Message>,
    shutdown: CancellationToken,
    activity: Arc<Activity>,
) -> &'static str {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                close(&mut sink, GOING_AWAY, "server shutting down").await;
                return "server shutting down";
            }
            msg = out.recv() => match msg {
                Some(msg) => msg,
                None => {
                    let code = activity.close_code();
                    close(&mut sink, code, close_reason(code)).await;
                    return "session ended";
                }
            },
            _ = ping.tick() => {
                if activity.silent_for() > DEAD_AFTER {
                    close(&mut sink, GOING_AWAY, "keepalive timeout").await;
                    return "keepalive timeout";
                }
                Message::ping(Vec::new())
            }
        };
        let write = async {
            sink.feed(first).await?;
            // Whatever else is already waiting goes out with the same flush.
            for _ in 1..WRITE_BATCH {
                match out.try_recv() {
                    Ok(msg) => sink.feed(msg).await?,
                    Err(_) => break,
                }
            }
            sink.flush().await
        };
        let written = tokio::select! {
            _ = shutdown.cancelled() => None,
            r = tokio::time::timeout(DEAD_AFTER, write) => Some(r),
        };
        match written {
            None => {
                close(&mut sink, GOING_AWAY, "server shutting down").await;
                return "server shutting down";
            }
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => {
                debug!(error = %e, "websocket write failed");
                return "write failed";
            }
            Some(Err(_)) => return "client stopped reading",
        }
    }
}

/// Sends Close, giving up after [`CLOSE_GRACE`] (a client that does not read).
/// When the client closed first, tungstenite refuses a second Close and holds the
/// echo of the client's one queued until a flush: closing the sink writes it, so
/// the client gets its closing handshake instead of a reset.
async fn close(sink: &mut SplitSink<WebSocket, Message>, code: u16, reason: &'static str) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if sink.send(Message::close_with(code, reason)).await.is_err() {
            let _ = SinkExt::close(sink).await;
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(seq: u64) -> Arc<FlowEvent> {
        Arc::new(FlowEvent {
            flow_id: FlowId::new(),
            node: Some("a".to_owned()),
            status: "active".to_owned(),
            attempt: 1,
            seq,
            ts: 0,
            progress: None,
            error: None,
            reason: None,
        })
    }

    #[test]
    fn event_texts_serialize_each_event_once() {
        let texts = EventTexts::new();
        let first = event(1);
        let a = texts.text(&first).unwrap();
        let b = texts.text(&first).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the second session serialized again");
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(v["type"], "flow:updated");
        assert_eq!(v["seq"], 1);
        // An equal but distinct event is its own entry; the oldest entries go first.
        for seq in 0..EventTexts::KEPT as u64 {
            texts.text(&event(seq)).unwrap();
        }
        let c = texts.text(&first).unwrap();
        assert!(!Arc::ptr_eq(&a, &c), "an evicted event was still listed");
        assert_eq!(a, c);
        let recent = texts.recent.lock().unwrap();
        assert_eq!(recent.order.len(), EventTexts::KEPT);
        assert_eq!(recent.texts.len(), EventTexts::KEPT);
    }

    #[tokio::test]
    async fn pace_lets_a_burst_through_then_holds_to_the_rate() {
        let mut pace = Pace::new();
        let start = Instant::now();
        for _ in 0..CLIENT_BURST as usize {
            pace.next().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(50),
            "{:?}",
            start.elapsed()
        );
        let start = Instant::now();
        for _ in 0..20 {
            pace.next().await;
        }
        // Twenty more at CLIENT_RATE (100/s): about 200 ms.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(180), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
