//! Callbacks (`opts.notify`) end to end: a real server (engine, test Redis, temp sled
//! dir) and a real HTTP receiver started by the test (`common/receiver.rs`), which
//! records every POST and can fail, answer slowly or be down.
//!
//! Every REST answer goes through [`schema::Checked`] (held against the server's own
//! `/openapi.json`); signatures are verified with the `hmac` crate, as a receiver
//! would.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/schema.rs"]
mod schema;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::receiver::{free_port, Receiver};
use common::*;
use dagflow::engine::notify::NotifyOptions;
use dagflow::engine::{Engine, EngineBuilder};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use schema::Checked;
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "test-webhook-secret";

/// Short timeouts and backoff, so that retries happen within a test's patience.
fn fast(secret: Option<&str>, timeout: Duration) -> ServerOpts {
    let options = NotifyOptions {
        secret: secret.map(str::to_owned),
        timeout,
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(400),
        ..NotifyOptions::default()
    };
    ServerOpts {
        engine: Some(Box::new(move |b: EngineBuilder| b.notify_options(options))),
        ..ServerOpts::default()
    }
}

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`.
fn signature_verifies(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(bytes) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

fn stats(engine: &Engine) -> (u64, u64, u64, u64) {
    let n = &engine.stats().unwrap().notify;
    (
        n.delivered.load(Relaxed),
        n.failed_attempts.load(Relaxed),
        n.dropped.load(Relaxed),
        n.pending.load(Relaxed),
    )
}

/// Waits until the engine delivered `n` callbacks and owes none.
async fn wait_delivered(engine: &Engine, n: u64) {
    eventually(
        &format!("{n} callbacks delivered, none pending"),
        || async {
            let (delivered, _, _, pending) = stats(engine);
            delivered == n && pending == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_flow_posts_its_final_view_signed_with_its_id_and_seq() {
    let receiver = Receiver::start().await;
    let server = start_server(fast(Some(SECRET), Duration::from_secs(5))).await;
    let api = Checked::new(&server).await;
    let spec = json!({
        "name": "with a callback",
        "nodes": [
            {"name": "a", "handler": "echo", "data": {"x": 1}},
            {"name": "b", "handler": "noop", "parents": ["a"]}
        ],
        "opts": {"notify": [{"url": receiver.url("/ok/one")}]}
    });
    let id = api.create_flow(&spec).await;
    let flow = api.wait_for_status(&id, "completed").await;
    wait_delivered(&server.engine, 1).await;

    let hits = receiver.hits_on("/ok/one");
    assert_eq!(hits.len(), 1, "one 2xx, one POST: {hits:?}");
    let hit = &hits[0];
    // The body is the final view, as GET /flows/{id} shows it.
    assert_eq!(hit.json(), flow);
    assert_eq!(hit.header("content-type"), "application/json");
    assert_eq!(hit.header("x-dagflow-flow"), id);
    assert_eq!(hit.header("x-dagflow-seq"), flow["seq"].to_string());
    assert_eq!(hit.header("x-dagflow-event"), "completed");
    assert_eq!(hit.header("x-dagflow-attempt"), "1");
    let signature = hit.header("x-dagflow-signature");
    assert!(
        signature_verifies(SECRET, &hit.body, signature),
        "{signature}"
    );
    let mut tampered = hit.body.to_vec();
    tampered.push(b' ');
    assert!(!signature_verifies(SECRET, &tampered, signature));
    assert!(!signature_verifies("another secret", &hit.body, signature));

    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "dagflow_callbacks_delivered_total 1",
        "dagflow_callback_attempts_failed_total 0",
        "dagflow_callbacks_dropped_total 0",
        "dagflow_callbacks_pending 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_events_listed_in_on_are_sent_and_unsigned_without_a_secret() {
    let receiver = Receiver::start().await;
    let server = start_server(fast(None, Duration::from_secs(5))).await;
    let api = Checked::new(&server).await;
    let targets = |tag: &str| {
        json!([
            {"url": receiver.url(&format!("/ok/{tag}-completed")), "on": ["completed"]},
            {"url": receiver.url(&format!("/ok/{tag}-failed")), "on": ["failed"]},
            {"url": receiver.url(&format!("/ok/{tag}-cancelled")), "on": ["cancelled"]},
        ])
    };
    let completes = api
        .create_flow(&json!({"nodes": [{"name": "a", "handler": "noop"}],
                             "opts": {"notify": targets("c")}}))
        .await;
    let fails = api
        .create_flow(&json!({"nodes": [{"name": "a", "handler": "fail"}],
                             "opts": {"notify": targets("f")}}))
        .await;
    let cancelled = api
        .create_flow(
            &json!({"nodes": [{"name": "a", "handler": "sleep", "data": {"ms": 60000}}],
                             "opts": {"notify": targets("x")}}),
        )
        .await;
    api.wait_for_status(&completes, "completed").await;
    api.wait_for_status(&fails, "failed").await;
    api.wait_for_node(&cancelled, "a", "active").await;
    let (status, body) = api.post_empty(&format!("/flows/{cancelled}/cancel")).await;
    assert!(status.is_success(), "{status} {body}");
    api.wait_for_status(&cancelled, "cancelled").await;
    wait_delivered(&server.engine, 3).await;

    let mut got: Vec<(String, String, String)> = receiver
        .hits()
        .iter()
        .map(|h| {
            assert_eq!(
                h.header("x-dagflow-signature"),
                "",
                "no secret, no signature"
            );
            assert_eq!(h.json()["status"], h.header("x-dagflow-event"));
            (
                h.path.clone(),
                h.header("x-dagflow-flow").to_owned(),
                h.header("x-dagflow-event").to_owned(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (
            "/ok/c-completed".to_owned(),
            completes,
            "completed".to_owned(),
        ),
        ("/ok/f-failed".to_owned(), fails, "failed".to_owned()),
        (
            "/ok/x-cancelled".to_owned(),
            cancelled,
            "cancelled".to_owned(),
        ),
    ];
    want.sort();
    assert_eq!(got, want);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_it_after_retries_and_a_retried_flow_owes_a_new_callback() {
    let receiver = Receiver::start().await;
    let server = start_server(fast(Some(SECRET), Duration::from_secs(5))).await;
    let api = Checked::new(&server).await;
    // The receiver answers 500 three times, then 200; the node fails its first
    // attempt only, so a retry of the flow completes it.
    let path = "/fail/3/flaky";
    let id = api
        .create_flow(&json!({
            "nodes": [{"name": "a", "handler": "fail", "data": {"times": 1}}],
            "opts": {"notify": [{"url": receiver.url(path)}]}
        }))
        .await;
    let failed = api.wait_for_status(&id, "failed").await;
    wait_delivered(&server.engine, 1).await;
    let hits = receiver.hits_on(path);
    assert_eq!(hits.len(), 4, "{hits:?}");
    assert_eq!(
        hits.iter().map(|h| h.answered_ok).collect::<Vec<_>>(),
        [false, false, false, true]
    );
    for (i, hit) in hits.iter().enumerate() {
        // The same callback each time: same flow, seq and signed body.
        assert_eq!(hit.header("x-dagflow-flow"), id);
        assert_eq!(hit.header("x-dagflow-seq"), failed["seq"].to_string());
        assert_eq!(hit.header("x-dagflow-attempt"), (i + 1).to_string());
        assert_eq!(hit.body, hits[0].body);
        assert!(signature_verifies(
            SECRET,
            &hit.body,
            hit.header("x-dagflow-signature")
        ));
    }
    // Backoff: the gaps grow (50 ms, then about twice, then four times, halved at
    // worst by the jitter), so the receiver is not hammered.
    assert!(hits[1].at - hits[0].at >= Duration::from_millis(25));
    let (_, failed_attempts, dropped, _) = stats(&server.engine);
    assert_eq!((failed_attempts, dropped), (3, 0));

    let (status, body) = api.post_empty(&format!("/flows/{id}/retry")).await;
    assert!(status.is_success(), "{status} {body}");
    let completed = api.wait_for_status(&id, "completed").await;
    wait_delivered(&server.engine, 2).await;
    let hits = receiver.hits_on(path);
    assert_eq!(hits.len(), 5, "{hits:?}");
    let last = &hits[4];
    assert_eq!(last.header("x-dagflow-event"), "completed");
    assert_eq!(last.header("x-dagflow-seq"), completed["seq"].to_string());
    assert!(completed["seq"].as_u64() > failed["seq"].as_u64());
    assert_eq!(last.json(), completed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_is_retried_and_does_not_delay_another_flows_callback() {
    let receiver = Receiver::start().await;
    let timeout = Duration::from_secs(3);
    let server = start_server(fast(Some(SECRET), timeout)).await;
    let api = Checked::new(&server).await;
    // The first POST to the slow path sleeps 10 s, far past the 3 s timeout.
    let slow_path = "/slow/1/10000/slow";
    let slow = api
        .create_flow(&json!({"nodes": [{"name": "a", "handler": "noop"}],
                             "opts": {"notify": [{"url": receiver.url(slow_path)}]}}))
        .await;
    eventually("the slow receiver's first POST", || async {
        !receiver.hits_on(slow_path).is_empty()
    })
    .await;
    let quick = api
        .create_flow(&json!({"nodes": [{"name": "a", "handler": "noop"}],
                             "opts": {"notify": [{"url": receiver.url("/ok/quick")}]}}))
        .await;
    eventually("the other flow's callback", || async {
        !receiver.hits_on("/ok/quick").is_empty()
    })
    .await;
    let first_slow = receiver.hits_on(slow_path)[0].clone();
    let quick_hit = receiver.hits_on("/ok/quick")[0].clone();
    // Sent while the slow POST still hung, not after its timeout.
    assert!(
        quick_hit.at < first_slow.at + timeout,
        "the other flow's callback came {:?} after the slow POST started",
        quick_hit.at - first_slow.at
    );
    assert_eq!(quick_hit.header("x-dagflow-flow"), quick);
    wait_delivered(&server.engine, 2).await;
    let slow_hits = receiver.hits_on(slow_path);
    assert_eq!(slow_hits.len(), 2, "{slow_hits:?}");
    assert!(slow_hits[1].answered_ok);
    assert_eq!(slow_hits[1].header("x-dagflow-flow"), slow);
    // The retry came after the timeout cut the first POST short, not 10 s later.
    let gap = slow_hits[1].at - slow_hits[0].at;
    assert!(gap >= timeout && gap < Duration::from_secs(8), "{gap:?}");
    assert_eq!(
        stats(&server.engine).1,
        1,
        "one failed attempt: the timeout"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_owed_when_the_engine_stops_is_delivered_after_a_restart_even_if_the_flow_was_deleted(
) {
    // The receiver is down: nothing listens on its port yet.
    let port = free_port();
    let url = format!("http://{port}/ok/after-restart");
    let server = start_server(fast(Some(SECRET), Duration::from_secs(2))).await;
    let api = Checked::new(&server).await;
    let id = api
        .create_flow(
            &json!({"nodes": [{"name": "a", "handler": "echo", "data": {"n": 7}}],
                             "opts": {"notify": [{"url": url}]}}),
        )
        .await;
    let flow = api.wait_for_status(&id, "completed").await;
    eventually("a refused attempt", || async {
        stats(&server.engine).1 >= 1
    })
    .await;
    assert_eq!(stats(&server.engine).3, 1, "one callback pending");
    // Deleting the flow does not lose the callback: the outbox holds its body.
    let (status, body) = api.delete(&format!("/flows/{id}")).await;
    assert!(status.is_success(), "{status} {body}");
    let (data_dir, prefix) = (server.data_dir.clone(), server.prefix.clone());
    server.stop().await;

    let receiver = Receiver::start_on(port).await;
    let mut opts = fast(Some(SECRET), Duration::from_secs(2));
    opts.data_dir = Some(data_dir);
    opts.prefix = Some(prefix);
    let server = start_server(opts).await;
    let api = Checked::new(&server).await;
    wait_delivered(&server.engine, 1).await;
    let hits = receiver.hits_on("/ok/after-restart");
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].json(), flow);
    assert_eq!(hits[0].header("x-dagflow-flow"), id);
    assert_eq!(hits[0].header("x-dagflow-seq"), flow["seq"].to_string());
    assert!(signature_verifies(
        SECRET,
        &hits[0].body,
        hits[0].header("x-dagflow-signature")
    ));
    let (status, _) = api.get(&format!("/flows/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the flow stays deleted");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_callback_targets_are_refused_with_every_problem_listed() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let (status, body) = api
        .post(
            "/flows",
            &json!({
                "nodes": [{"name": "a", "handler": "noop", "parents": ["missing"]}],
                "opts": {"notify": [
                    {"url": "ftp://example.com/x", "on": ["completed"]},
                    {"url": "https://example.com/x", "on": ["finished"]},
                    {"url": "/relative", "on": []}
                ]}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let problems = body["error"]["details"]["problems"].as_array().unwrap();
    let notify: Vec<&Value> = problems
        .iter()
        .filter(|p| p["code"] == "bad_notify")
        .collect();
    assert_eq!(notify.len(), 4, "{body:#}");
    assert!(problems.iter().any(|p| p["code"] == "unknown_parent"));
    // More targets than allowed: one problem, not one per target.
    let many: Vec<Value> = (0..6)
        .map(|i| json!({"url": format!("https://example.com/{i}")}))
        .collect();
    let (status, body) = api
        .post(
            "/flows",
            &json!({"nodes": [{"name": "a"}], "opts": {"notify": many}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["details"]["problems"][0]["code"],
        "bad_notify"
    );
    // An unknown field of a target is refused, as everywhere in the spec.
    let (status, body) = api
        .post(
            "/flows",
            &json!({"nodes": [{"name": "a"}],
                    "opts": {"notify": [{"url": "https://example.com/", "secret": "x"}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["details"]["problems"][0]["code"],
        "invalid_spec"
    );
    assert_eq!(
        server.engine.stats().unwrap().notify.pending.load(Relaxed),
        0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_still_failing_past_the_maximum_age_is_dropped_and_counted() {
    let receiver = Receiver::start().await;
    let options = NotifyOptions {
        secret: Some(SECRET.to_owned()),
        timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(100),
        max_age: Duration::from_millis(600),
        ..NotifyOptions::default()
    };
    let server = start_server(ServerOpts {
        engine: Some(Box::new(move |b: EngineBuilder| b.notify_options(options))),
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    // This receiver never answers 2xx; the other target of the same flow does.
    let (never, fine) = ("/fail/1000000/never", "/ok/fine");
    let id = api
        .create_flow(&json!({"nodes": [{"name": "a", "handler": "noop"}],
                             "opts": {"notify": [{"url": receiver.url(never)},
                                                 {"url": receiver.url(fine)}]}}))
        .await;
    api.wait_for_status(&id, "completed").await;
    eventually("the failing callback dropped", || async {
        let (delivered, _, dropped, pending) = stats(&server.engine);
        (delivered, dropped, pending) == (1, 1, 0)
    })
    .await;
    let attempts = receiver.hits_on(never).len();
    assert!(attempts >= 2, "retried before it was dropped: {attempts}");
    let first = receiver.hits_on(never)[0].at;
    let last = receiver.hits_on(never)[attempts - 1].at;
    assert!(last - first < Duration::from_secs(3), "{:?}", last - first);
    assert_eq!(receiver.hits_on(fine).len(), 1);
    // Dropped means gone: no more attempts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.hits_on(never).len(), attempts);
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "dagflow_callbacks_dropped_total 1"),
        "{metrics}"
    );
    server.stop().await;
}
