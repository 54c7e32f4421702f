//! The clients of one seed: the creates, the requests about flows and the
//! WebSocket recorder, and what each of them saw, kept in [`Shared`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::http::get;
use crate::common::rng::Rng;
use crate::plan::{CreateMode, OpKind, PlannedFlow};
use crate::{now_ms, CREATE_DEADLINE, HIBERNATED_AFTER_MS};
// ---------------------------------------------------------------------------------
// What the run records.
// ---------------------------------------------------------------------------------

/// How the creates of one flow went.
#[derive(Debug, Clone, Default)]
pub(crate) struct CreateOutcome {
    /// Every id a 201 named (one per 201).
    pub(crate) ids: Vec<String>,
    /// Some POST got no clear answer (no response, a timeout, a 5xx): it may or may
    /// not have created the flow.
    pub(crate) unclear: bool,
    /// Clear refusals (4xx), with their bodies.
    pub(crate) refused: Vec<String>,
    /// The last answer that was not clear (a 5xx and its body, or the error of a
    /// request that got no response), for the report.
    pub(crate) last_unclear: Option<String>,
}

/// A request about a flow, and its answer.
#[derive(Debug, Clone)]
pub(crate) struct OpRecord {
    pub(crate) flow: String,
    pub(crate) kind: &'static str,
    pub(crate) sent_ms: u64,
    pub(crate) done_ms: u64,
    /// `None`: no response.
    pub(crate) status: Option<u16>,
}

/// A flow view a GET returned during the run.
#[derive(Debug, Clone)]
pub(crate) struct GetRecord {
    pub(crate) flow: String,
    pub(crate) sent_ms: u64,
    pub(crate) status: u16,
    pub(crate) body: Value,
}

/// One WebSocket message.
#[derive(Debug, Clone)]
pub(crate) struct WsRecord {
    /// Which connection (they are numbered from 1; a new one after each server).
    pub(crate) conn: usize,
    pub(crate) msg: Value,
}

/// State shared by the tasks of one seed's run.
pub(crate) struct Shared {
    pub(crate) client: reqwest::Client,
    /// The current server's base URL.
    pub(crate) url: RwLock<String>,
    pub(crate) creates: Mutex<HashMap<usize, CreateOutcome>>,
    pub(crate) ops: Mutex<Vec<OpRecord>>,
    pub(crate) gets: Mutex<Vec<GetRecord>>,
    pub(crate) ws: Mutex<Vec<WsRecord>>,
    /// WebSocket connections made, and `lagged` notices received.
    pub(crate) ws_connections: Mutex<(usize, usize)>,
    pub(crate) stop_ws: AtomicBool,
}

impl Shared {
    pub(crate) fn url(&self) -> String {
        self.url.read().unwrap().clone()
    }

    /// Ids answered 201 so far.
    pub(crate) fn created_ids(&self) -> Vec<String> {
        let creates = self.creates.lock().unwrap();
        let mut ids: Vec<String> = creates
            .values()
            .flat_map(|c| c.ids.first().cloned())
            .collect();
        ids.sort();
        ids
    }

    /// Ids with a DELETE answered 204.
    pub(crate) fn deleted(&self) -> HashSet<String> {
        self.ops
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.kind == "delete" && o.status == Some(204))
            .map(|o| o.flow.clone())
            .collect()
    }

    pub(crate) fn record_op(
        &self,
        flow: &str,
        kind: &'static str,
        sent_ms: u64,
        status: Option<u16>,
    ) {
        self.ops.lock().unwrap().push(OpRecord {
            flow: flow.to_owned(),
            kind,
            sent_ms,
            done_ms: now_ms(),
            status,
        });
    }

    /// `GET /flows/{id}`, recorded.
    pub(crate) async fn get_flow(&self, id: &str) -> Option<(u16, Value)> {
        let sent_ms = now_ms();
        let answer = get(&self.client, &self.url(), &format!("/flows/{id}")).await;
        if let Some((status, body)) = &answer {
            self.gets.lock().unwrap().push(GetRecord {
                flow: id.to_owned(),
                sent_ms,
                status: *status,
                body: body.clone(),
            });
        }
        answer
    }

    /// Sends `method path` (no body), recorded as `kind`; returns the status.
    pub(crate) async fn op(
        &self,
        method: reqwest::Method,
        id: &str,
        path: &str,
        kind: &'static str,
    ) -> Option<u16> {
        let sent_ms = now_ms();
        let status = self
            .client
            .request(method, format!("{}{path}", self.url()))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16());
        self.record_op(id, kind, sent_ms, status);
        status
    }
}

// ---------------------------------------------------------------------------------
// Creates.
// ---------------------------------------------------------------------------------

/// One POST of a flow: `Ok((status, body))`, or why there was no response.
pub(crate) async fn post_flow(
    shared: &Shared,
    spec: &Value,
    key: Option<&str>,
) -> Result<(u16, Value), String> {
    let mut request = shared
        .client
        .post(format!("{}/flows", shared.url()))
        .json(spec);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// Notes one POST's answer in `outcome`; returns whether it was final (201 or a
/// clear refusal).
pub(crate) fn note_answer(
    outcome: &mut CreateOutcome,
    answer: Result<(u16, Value), String>,
) -> bool {
    match answer {
        Ok((201, body)) => {
            outcome
                .ids
                .push(body["flowId"].as_str().unwrap_or_default().to_owned());
            true
        }
        Ok((status, body)) if (400..500).contains(&status) && status != 408 && status != 429 => {
            outcome.refused.push(format!("{status} {body}"));
            true
        }
        Ok((status, body)) => {
            outcome.unclear = true;
            outcome.last_unclear = Some(format!("{status} {body}"));
            false
        }
        Err(error) => {
            outcome.unclear = true;
            outcome.last_unclear = Some(format!("no response: {error}"));
            false
        }
    }
}

/// POSTs with the key until it is answered (201 or a refusal) or the deadline.
pub(crate) async fn post_keyed(shared: &Shared, spec: &Value, key: &str) -> CreateOutcome {
    let mut outcome = CreateOutcome::default();
    let deadline = Instant::now() + CREATE_DEADLINE;
    while Instant::now() < deadline {
        if note_answer(&mut outcome, post_flow(shared, spec, Some(key)).await) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    outcome
}

pub(crate) fn merge(mut a: CreateOutcome, b: CreateOutcome) -> CreateOutcome {
    a.ids.extend(b.ids);
    a.unclear |= b.unclear;
    a.refused.extend(b.refused);
    a.last_unclear = b.last_unclear.or(a.last_unclear);
    a
}

/// Creates one flow as its plan says, and records how it went.
pub(crate) async fn create(shared: Arc<Shared>, flow: PlannedFlow) {
    let key = flow.key.as_deref();
    let outcome = match (flow.mode, key) {
        (CreateMode::KeyOnce, Some(key)) => post_keyed(&shared, &flow.spec, key).await,
        (CreateMode::KeyTwice, Some(key)) => {
            let first = post_keyed(&shared, &flow.spec, key).await;
            merge(first, post_keyed(&shared, &flow.spec, key).await)
        }
        (CreateMode::KeyTwiceConcurrent, Some(key)) => {
            let (a, b) = tokio::join!(
                post_keyed(&shared, &flow.spec, key),
                post_keyed(&shared, &flow.spec, key)
            );
            merge(a, b)
        }
        _ => {
            let mut outcome = CreateOutcome::default();
            note_answer(&mut outcome, post_flow(&shared, &flow.spec, None).await);
            outcome
        }
    };
    shared.creates.lock().unwrap().insert(flow.index, outcome);
}

// ---------------------------------------------------------------------------------
// Requests about flows.
// ---------------------------------------------------------------------------------

pub(crate) fn node_of<'a>(flow: &'a Value, name: &str) -> Option<&'a Value> {
    flow["nodes"].as_array()?.iter().find(|n| n["name"] == name)
}

/// Whether a job of the flow runs on `remote` (in a worker process) right now.
pub(crate) fn remote_job_running(flow: &Value) -> bool {
    flow["status"] == "running"
        && flow["nodes"].as_array().is_some_and(|nodes| {
            nodes
                .iter()
                .any(|n| n["queue"] == "remote" && n["status"] == "active")
        })
}

/// Looks at up to eight random created flows (GET) and returns the first `want`
/// accepts, else (if `fallback`) the last one seen; with the view that was seen.
pub(crate) async fn pick_flow(
    shared: &Shared,
    rng: &mut Rng,
    want: impl Fn(&Value) -> bool,
    fallback: bool,
) -> Option<(String, Value)> {
    let deleted = shared.deleted();
    let mut ids: Vec<String> = shared
        .created_ids()
        .into_iter()
        .filter(|id| !deleted.contains(id))
        .collect();
    rng.shuffle(&mut ids);
    let mut last = None;
    for id in ids.into_iter().take(8) {
        if let Some((200, flow)) = shared.get_flow(&id).await {
            if want(&flow) {
                return Some((id, flow));
            }
            last = Some((id, flow));
        }
    }
    if fallback {
        last
    } else {
        None
    }
}

/// What a request hit, for the timeline: `<id> (<status>, a remote job running)`.
pub(crate) fn target(id: &str, flow: &Value) -> String {
    format!(
        "{id} ({}{})",
        flow["status"].as_str().unwrap_or("?"),
        if remote_job_running(flow) {
            ", a remote job running"
        } else {
            ""
        }
    )
}

/// Runs the planned requests at their times, printing each on the timeline;
/// returns how many cancels, retries and deletes were sent.
pub(crate) async fn run_ops(
    shared: Arc<Shared>,
    seed: u64,
    ops: Vec<(u64, OpKind)>,
    mut rng: Rng,
    start: Instant,
) -> [usize; 3] {
    use reqwest::Method;
    let (mut cancels, mut retries, mut deletes) = (0, 0, 0);
    let log = |what: String| {
        println!(
            "chaos: seed {seed}: {:>5.1}s {what}",
            start.elapsed().as_secs_f64()
        );
    };
    let answer = |status: Option<u16>| status.map_or("no answer".to_owned(), |s| s.to_string());
    for (at, kind) in ops {
        tokio::time::sleep_until((start + Duration::from_millis(at)).into()).await;
        match kind {
            OpKind::Cancel => {
                let mut picked = pick_flow(&shared, &mut rng, remote_job_running, false).await;
                if picked.is_none() {
                    let running = |f: &Value| f["status"] == "running";
                    picked = pick_flow(&shared, &mut rng, running, true).await;
                }
                if let Some((id, flow)) = picked {
                    let path = format!("/flows/{id}/cancel");
                    let status = shared.op(Method::POST, &id, &path, "cancel").await;
                    log(format!(
                        "cancel {} -> {}",
                        target(&id, &flow),
                        answer(status)
                    ));
                    cancels += 1;
                }
            }
            OpKind::Retry => {
                let ended_badly = |f: &Value| f["status"] == "failed" || f["status"] == "cancelled";
                if let Some((id, flow)) = pick_flow(&shared, &mut rng, ended_badly, false).await {
                    let path = format!("/flows/{id}/retry");
                    let status = shared.op(Method::POST, &id, &path, "retry").await;
                    log(format!(
                        "retry {} -> {}",
                        target(&id, &flow),
                        answer(status)
                    ));
                    retries += 1;
                }
            }
            OpKind::Delete => {
                let picked = if rng.chance(50) {
                    pick_flow(&shared, &mut rng, remote_job_running, true).await
                } else {
                    pick_flow(&shared, &mut rng, |_| true, true).await
                };
                if let Some((id, flow)) = picked {
                    let path = format!("/flows/{id}");
                    let status = shared.op(Method::DELETE, &id, &path, "delete").await;
                    log(format!(
                        "delete {} -> {}",
                        target(&id, &flow),
                        answer(status)
                    ));
                    deletes += 1;
                }
            }
            OpKind::DeleteRetryRace => {
                let hibernated_failure = |f: &Value| {
                    f["status"] == "failed"
                        && f["finishedAt"]
                            .as_u64()
                            .is_some_and(|t| now_ms().saturating_sub(t) > HIBERNATED_AFTER_MS)
                };
                if let Some((id, flow)) =
                    pick_flow(&shared, &mut rng, hibernated_failure, false).await
                {
                    let delete_path = format!("/flows/{id}");
                    let retry_path = format!("/flows/{id}/retry");
                    let (deleted, retried) = tokio::join!(
                        shared.op(Method::DELETE, &id, &delete_path, "delete"),
                        shared.op(Method::POST, &id, &retry_path, "retry"),
                    );
                    log(format!(
                        "delete + retry at once {} -> {} and {}",
                        target(&id, &flow),
                        answer(deleted),
                        answer(retried)
                    ));
                    deletes += 1;
                    retries += 1;
                }
            }
        }
    }
    [cancels, retries, deletes]
}

// ---------------------------------------------------------------------------------
// The WebSocket recorder.
// ---------------------------------------------------------------------------------

/// Most flows the recorder follows one by one on a connection (the server allows
/// 1,000 subscriptions per connection; `*` is one).
pub(crate) const MAX_FLOW_SUBSCRIPTIONS: usize = 900;

/// Records every message of a WebSocket client subscribed to `*` and to every
/// created flow, reconnecting to the current server until told to stop.
pub(crate) async fn record_ws(shared: Arc<Shared>) {
    let mut conn = 0usize;
    while !shared.stop_ws.load(Ordering::Relaxed) {
        let url = format!("{}/ws", shared.url().replacen("http://", "ws://", 1));
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await;
        let Ok(Ok((mut stream, _))) = connected else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        conn += 1;
        shared.ws_connections.lock().unwrap().0 += 1;
        let subscribe = |target: &str| {
            Message::text(json!({"type": "subscribe", "flowId": target}).to_string())
        };
        if stream.send(subscribe("*")).await.is_err() {
            continue;
        }
        let mut followed: HashSet<String> = HashSet::new();
        'connection: loop {
            if shared.stop_ws.load(Ordering::Relaxed) {
                // Read what is already here, then stop.
                while let Ok(Some(Ok(frame))) =
                    tokio::time::timeout(Duration::from_millis(200), stream.next()).await
                {
                    record_frame(&shared, conn, frame);
                }
                break 'connection;
            }
            for id in shared.created_ids() {
                if followed.len() >= MAX_FLOW_SUBSCRIPTIONS {
                    break;
                }
                if followed.insert(id.clone()) && stream.send(subscribe(&id)).await.is_err() {
                    break 'connection;
                }
            }
            match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
                Err(_) => {}
                Ok(Some(Ok(frame))) => record_frame(&shared, conn, frame),
                Ok(Some(Err(_)) | None) => break 'connection,
            }
        }
    }
}

pub(crate) fn record_frame(shared: &Shared, conn: usize, frame: Message) {
    if let Message::Text(text) = frame {
        if let Ok(msg) = serde_json::from_str::<Value>(text.as_str()) {
            if msg["type"] == "lagged" {
                shared.ws_connections.lock().unwrap().1 += 1;
            }
            shared.ws.lock().unwrap().push(WsRecord { conn, msg });
        }
    }
}
