//! The WebSocket API end to end: real server, real engine, real WebSocket clients.
//!
//! Every message a client receives (and every REST answer) is checked against the
//! server's own `/openapi.json` by [`schema::CheckedWs`] and [`schema::Checked`].

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/schema.rs"]
mod schema;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dagflow::engine::{handler_fn, JobContext, JobError};
use futures::SinkExt;
use schema::{Checked, CheckedWs};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Checks a stream of messages about one flow: each `flow:updated` continues the
/// last snapshot or event without gap or repeat. Returns the flow's final status
/// once a message shows it ended.
#[derive(Default)]
struct SeqCheck {
    next: Option<u64>,
    /// `lagged` was seen, and the next message about the flow must be a snapshot.
    expect_snapshot: bool,
    updates: Vec<Value>,
}

impl SeqCheck {
    /// Feeds one message; returns the flow's end status when this message shows it.
    fn feed(&mut self, msg: &Value) -> Option<String> {
        match msg["type"].as_str().unwrap() {
            "snapshot" => {
                let flow = &msg["flow"];
                self.next = Some(flow["seq"].as_u64().unwrap() + 1);
                self.expect_snapshot = false;
                let status = flow["status"].as_str().unwrap();
                (status != "running").then(|| status.to_owned())
            }
            "flow:updated" => {
                assert!(
                    !self.expect_snapshot,
                    "an event between lagged and its snapshot: {msg}"
                );
                let seq = msg["seq"].as_u64().unwrap();
                assert_eq!(Some(seq), self.next, "gap or repeat at {msg}");
                self.next = Some(seq + 1);
                self.updates.push(msg.clone());
                let ended = msg.get("node").is_none() && msg["status"] != "running";
                ended.then(|| msg["status"].as_str().unwrap().to_owned())
            }
            "lagged" => {
                assert!(msg["missed"].as_u64().unwrap() > 0);
                self.expect_snapshot = true;
                None
            }
            other => panic!("unexpected message {other}: {msg}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_every_transition_in_seq_order() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let spec = json!({"nodes": [
        {"name": "first", "handler": "sleep", "data": {"ms": 300}},
        {"name": "left", "handler": "echo", "parents": ["first"]},
        {"name": "right", "handler": "echo", "parents": ["first"]},
        {"name": "last", "handler": "noop", "parents": ["left", "right"]}
    ]});
    let id = api.create_flow(&spec).await;
    let mut ws = CheckedWs::connect(&server, &api.openapi).await;
    ws.subscribe(&id).await;
    let snapshot = ws.recv_json().await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["flow"]["id"], id);
    assert_eq!(snapshot["flow"]["nodes"].as_array().unwrap().len(), 4);

    let mut check = SeqCheck::default();
    let mut end = check.feed(&snapshot);
    while end.is_none() {
        let msg = ws.recv_json().await;
        assert_eq!(msg["flowId"], id, "{msg}");
        end = check.feed(&msg);
    }
    assert_eq!(end.as_deref(), Some("completed"));
    let flow = api.flow(&id).await;
    assert_eq!(
        check.next,
        Some(flow["seq"].as_u64().unwrap() + 1),
        "saw up to the last seq"
    );

    // The sleeping root keeps the flow running past the subscription, so at least the
    // children's transitions arrived as events, in their order.
    let mut per_node: HashMap<String, Vec<String>> = HashMap::new();
    for u in &check.updates {
        if let Some(node) = u["node"].as_str() {
            per_node
                .entry(node.to_owned())
                .or_default()
                .push(u["status"].as_str().unwrap().to_owned());
        }
        assert!(u["ts"].as_u64().unwrap() > 0);
    }
    for node in ["left", "right", "last"] {
        assert_eq!(per_node[node], ["queued", "active", "completed"], "{node}");
    }

    // A late subscriber gets the final snapshot and nothing else.
    let mut late = CheckedWs::connect(&server, &api.openapi).await;
    late.subscribe(&id).await;
    let snap = late.recv_json().await;
    assert_eq!(snap["flow"]["status"], "completed");
    assert_eq!(snap["flow"]["seq"], flow["seq"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_subscription_sees_every_flow() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let mut ws = CheckedWs::connect(&server, &api.openapi).await;
    ws.subscribe("*").await;
    assert_eq!(
        ws.recv_json().await,
        json!({"type": "subscribed", "flowId": "*"})
    );
    let a = api.create_flow(&single("noop", Value::Null)).await;
    let b = api.create_flow(&image_pipeline()).await;
    let mut checks: HashMap<String, SeqCheck> = HashMap::new();
    for id in [&a, &b] {
        // Subscribed before the flows existed: their events start at seq 1.
        checks.insert(
            id.clone(),
            SeqCheck {
                next: Some(1),
                ..SeqCheck::default()
            },
        );
    }
    let mut ended = 0;
    while ended < 2 {
        let msg = ws.recv_json().await;
        let check = checks.get_mut(msg["flowId"].as_str().unwrap()).unwrap();
        if check.feed(&msg).is_some() {
            ended += 1;
        }
    }
    ws.send_json(&json!({"type": "unsubscribe", "flowId": "*"}))
        .await;
    assert_eq!(
        ws.recv_json().await,
        json!({"type": "unsubscribed", "flowId": "*"})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_errors_and_the_connection_lives_on() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let mut ws = CheckedWs::connect(&server, &api.openapi).await;
    for garbage in [
        "not json",
        "{\"type\":\"dance\"}",
        "{\"type\":\"subscribe\"}",
        "[1,2,3]",
    ] {
        ws.send_text(garbage).await;
        let msg = ws.recv_json().await;
        assert_eq!(msg["type"], "error", "{garbage}: {msg}");
        assert!(
            msg["message"]
                .as_str()
                .unwrap()
                .contains("not a valid message"),
            "{msg}"
        );
    }
    ws.ws
        .stream
        .send(Message::Binary(vec![0u8, 1, 2].into()))
        .await
        .unwrap();
    assert_eq!(ws.recv_json().await["type"], "error");

    let unknown = dagflow::engine::FlowId::new().to_string();
    ws.subscribe(&unknown).await;
    let msg = ws.recv_json().await;
    assert_eq!(msg["type"], "error");
    assert_eq!(msg["flowId"], unknown);
    assert!(
        msg["message"].as_str().unwrap().contains("not found"),
        "{msg}"
    );
    ws.subscribe("not-a-flow").await;
    assert_eq!(ws.recv_json().await["type"], "error");

    // Pings are answered.
    ws.ws
        .stream
        .send(Message::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Message::Pong(data))) = futures::StreamExt::next(&mut ws.ws.stream).await
            {
                return data;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"hi");

    // Still alive: a real subscription works.
    let id = api.create_flow(&single("noop", Value::Null)).await;
    api.wait_for_status(&id, "completed").await;
    ws.subscribe(&id).await;
    let snap = ws.recv_json().await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["flow"]["status"], "completed");
    assert_eq!(api.get("/healthz").await.0, reqwest::StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_subscription_limits() {
    let server = start_server(ServerOpts {
        max_ws_connections: Some(1),
        max_subscriptions: Some(1),
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    let a = api.create_flow(&single("noop", Value::Null)).await;
    let b = api.create_flow(&single("noop", Value::Null)).await;
    // Both ended: no update of `a` can slip in between the answers read below.
    api.wait_for_status(&a, "completed").await;
    api.wait_for_status(&b, "completed").await;
    let mut ws = CheckedWs::connect(&server, &api.openapi).await;
    match WsClient::connect(&server.ws_url, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a second connection was accepted"),
    }
    ws.subscribe(&a).await;
    assert_eq!(ws.recv_json().await["type"], "snapshot");
    ws.subscribe(&b).await;
    let msg = ws.recv_json().await;
    assert_eq!(msg["type"], "error");
    assert!(
        msg["message"].as_str().unwrap().contains("too many"),
        "{msg}"
    );
    ws.send_json(&json!({"type": "unsubscribe", "flowId": a}))
        .await;
    assert_eq!(ws.recv_json().await["type"], "unsubscribed");
    ws.subscribe(&b).await;
    assert_eq!(ws.recv_json().await["flow"]["id"], b);

    // Closing the first connection frees its place.
    ws.ws.stream.close(None).await.unwrap();
    drop(ws);
    eventually("the connection slot to free up", || async {
        WsClient::connect(&server.ws_url, None).await.is_ok()
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_close_to_every_session() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let id = api
        .create_flow(&single("sleep", json!({"ms": 60_000})))
        .await;
    let mut one = CheckedWs::connect(&server, &api.openapi).await;
    let mut two = CheckedWs::connect(&server, &api.openapi).await;
    one.subscribe(&id).await;
    assert_eq!(one.recv_json().await["type"], "snapshot");
    let stopping = tokio::spawn(server.stop());
    for ws in [&mut one, &mut two] {
        // Events already on their way may come first; then Close.
        let frame = loop {
            match ws.next_frame().await {
                Message::Text(_) => continue,
                other => break other,
            }
        };
        match frame {
            Message::Close(Some(close)) => assert_eq!(close.code, CloseCode::Away),
            other => panic!("expected Close, got {other:?}"),
        }
    }
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_lagged_then_a_fresh_snapshot() {
    let server = start_server(ServerOpts {
        // The smallest feed the engine allows, so that a stalled session lags soon.
        engine: Some(Box::new(|b| b.event_capacity(16))),
        body_limit: Some(16 * 1024 * 1024),
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    // Many large events: 1,500 nodes behind a gate, each failing with a 2 KB error
    // that its `failed` event carries (the worker sends a job's progress at most
    // every 100 ms, so progress can no longer flood a client).
    let mut nodes = vec![json!({"name": "gate", "handler": "sleep", "data": {"ms": 500}})];
    for i in 0..1500 {
        nodes.push(json!({"name": format!("loud-{i}"), "handler": "fail",
            "parents": ["gate"], "data": {"message": "x".repeat(2000)}}));
    }
    let id = api.create_flow(&json!({ "nodes": nodes })).await;

    // A client with a tiny receive window, so that unread data backs up quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let request = server.ws_url.as_str().into_client_request().unwrap();
    let (stream, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    let mut ws = CheckedWs::wrap(WsClient { stream }, &api.openapi);
    ws.subscribe(&id).await;

    // Stop reading until the flow is over: the engine must not wait for us.
    let done = api.wait_for_status(&id, "failed").await;
    assert!(done["seq"].as_u64().unwrap() > 1000, "{}", done["seq"]);

    let mut check = SeqCheck::default();
    let mut lagged = false;
    let mut end = None;
    while end.is_none() {
        let msg = ws.recv_json().await;
        lagged |= msg["type"] == "lagged";
        end = check.feed(&msg);
    }
    assert!(lagged, "the slow client was never told it lagged");
    assert_eq!(end.as_deref(), Some("failed"));
    assert!(check.next.is_some());
    // The session is still usable afterwards. (Another `lagged` and snapshot may
    // still be on their way: the session may have fallen behind more than once.)
    ws.subscribe(&id).await;
    let rest = ws
        .recv_until(|m| m["type"] == "snapshot" && m["flow"]["seq"] == done["seq"])
        .await;
    for msg in &rest {
        assert!(
            matches!(msg["type"].as_str(), Some("lagged" | "snapshot")),
            "{msg}"
        );
    }
    server.stop().await;
}

/// Reads until the server's Close frame and returns its code; text frames before
/// it are checked like every other message.
async fn close_code(ws: &mut CheckedWs) -> CloseCode {
    loop {
        match ws.next_frame().await {
            Message::Text(_) => continue,
            Message::Close(Some(close)) => return close.code,
            other => panic!("expected Close, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_breaches_close_with_their_rfc_6455_codes() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;

    // A message over the 64 KiB limit: 1009 (message too big).
    let mut ws = CheckedWs::connect(&server, &api.openapi).await;
    let big = json!({"type": "subscribe", "flowId": "x".repeat(70 * 1024)}).to_string();
    ws.send_text(&big).await;
    assert_eq!(close_code(&mut ws).await, CloseCode::Size);

    // A text frame that is not UTF-8: 1007 (invalid frame payload data).
    let mut ws = CheckedWs::connect(&server, &api.openapi).await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.ws.stream.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Invalid);

    // A client that closes normally gets 1000 back.
    let mut ws = CheckedWs::connect(&server, &api.openapi).await;
    ws.ws.stream.close(None).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut ws.ws.stream))
        .await
        .unwrap();
    match echoed {
        Some(Ok(Message::Close(close))) => {
            assert!(
                close.as_ref().is_none_or(|c| c.code == CloseCode::Normal),
                "{close:?}"
            )
        }
        other => panic!("expected Close, got {other:?}"),
    }

    // The server is unharmed.
    let mut ws = CheckedWs::connect(&server, &api.openapi).await;
    let id = api.create_flow(&single("noop", Value::Null)).await;
    api.wait_for_status(&id, "completed").await;
    ws.subscribe(&id).await;
    assert_eq!(ws.recv_json().await["type"], "snapshot");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_results_and_errors_fit_the_published_schema() {
    // Progress of every JSON type, results that are null, numbers and objects,
    // failures with errors and retries: each snapshot and event is checked.
    let progress_kinds = Arc::new(handler_fn(|ctx: JobContext| async move {
        for p in [
            json!(null),
            json!(1),
            json!(0.5),
            json!("half"),
            json!([1]),
            json!({"i": 1}),
        ] {
            // The worker sends a job's progress at most every 100 ms (the latest
            // value wins): spaced out, each value reaches clients.
            ctx.progress(p);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        Ok::<_, JobError>(ctx.data["result"].clone())
    }));
    let server = start_server(ServerOpts {
        handlers: vec![("progress-kinds".to_owned(), progress_kinds)],
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    let mut ws = CheckedWs::connect(&server, &api.openapi).await;
    ws.subscribe("*").await;
    assert_eq!(ws.recv_json().await["type"], "subscribed");
    let spec = json!({"nodes": [
        {"name": "null-result", "handler": "progress-kinds", "data": {"result": null}},
        {"name": "number-result", "handler": "progress-kinds", "data": {"result": 42}},
        {"name": "flaky", "handler": "fail", "data": {"message": "once", "times": 1},
         "opts": {"attempts": 2}},
        {"name": "broken", "handler": "fail", "data": {"message": "always"}},
        {"name": "after", "handler": "echo", "parents": ["null-result", "number-result", "flaky"]},
        {"name": "never", "handler": "echo", "parents": ["broken"]}
    ]});
    let id = api.create_flow(&spec).await;
    let mut seen_progress = Vec::new();
    let end = ws
        .recv_until(|m| {
            if m["type"] == "flow:updated" && m.get("progress").is_some() {
                seen_progress.push(m["progress"].clone());
            }
            m["type"] == "flow:updated" && m.get("node").is_none() && m["status"] != "running"
        })
        .await;
    assert_eq!(end.last().unwrap()["status"], "failed");
    for kind in [json!(1), json!("half"), json!({"i": 1})] {
        assert!(
            seen_progress.contains(&kind),
            "{kind} not in {seen_progress:?}"
        );
    }
    // The REST views of the same flow, every node included.
    let flow = api.flow(&id).await;
    for node in flow["nodes"].as_array().unwrap() {
        let name = node["name"].as_str().unwrap();
        let (s, _) = api.get(&format!("/flows/{id}/nodes/{name}")).await;
        assert_eq!(s, reqwest::StatusCode::OK);
    }
    let (_, null_node) = api.get(&format!("/flows/{id}/nodes/null-result")).await;
    assert_eq!(null_node["result"], Value::Null);
    assert!(null_node.get("result").is_some(), "{null_node}");
    // A fresh snapshot of the finished flow, too.
    ws.subscribe(&id).await;
    let snap = ws.recv_until(|m| m["type"] == "snapshot").await;
    assert_eq!(snap.last().unwrap()["flow"]["status"], "failed");
    server.stop().await;
}
