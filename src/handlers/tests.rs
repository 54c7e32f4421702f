//! Unit tests of the built-in handlers, outside any engine: each runs on a
//! [`JobContext::for_test`]; `http` talks to a small warp server on port 0.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use warp::Filter;

use super::*;

fn ctx(data: Value) -> JobContext {
    JobContext::for_test(data, Map::new())
}

#[tokio::test]
async fn noop_returns_null() {
    assert_eq!(Noop.run(ctx(json!({"x": 1}))).await.unwrap(), Value::Null);
}

#[tokio::test]
async fn echo_returns_data_and_parents() {
    let mut parents = Map::new();
    parents.insert("a".to_owned(), json!({"v": 1}));
    let out = Echo
        .run(JobContext::for_test(json!({"n": 2}), parents))
        .await
        .unwrap();
    assert_eq!(out, json!({"data": {"n": 2}, "parents": {"a": {"v": 1}}}));
}

#[tokio::test]
async fn sleep_sleeps_and_stops_on_cancel() {
    let out = Sleep.run(ctx(json!({"ms": 20}))).await.unwrap();
    assert_eq!(out, json!({"sleptMs": 20}));

    let c = ctx(json!({"ms": 60_000}));
    let token = c.cancel.clone();
    let started = Instant::now();
    let run = tokio::spawn(async move { Sleep.run(c).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    token.cancel();
    let err = run.await.unwrap().unwrap_err();
    assert_eq!(err.message, "cancelled");
    assert!(started.elapsed() < Duration::from_secs(5));

    let err = Sleep.run(ctx(json!({"ms": "soon"}))).await.unwrap_err();
    assert!(!err.retryable, "{err:?}");
}

#[tokio::test]
async fn fail_fails_the_first_times_attempts() {
    let mut c = ctx(json!({"message": "boom", "times": 2}));
    for attempt in 1..=2 {
        c.attempt = attempt;
        let err = Fail.run(c.clone()).await.unwrap_err();
        assert_eq!(err, JobError::retryable("boom"));
    }
    c.attempt = 3;
    assert_eq!(Fail.run(c).await.unwrap(), json!({"attempt": 3}));

    let mut always = ctx(json!({}));
    always.attempt = 1000;
    assert!(Fail.run(always).await.unwrap_err().retryable);
}

/// A server answering on `/ok` with the request it got, `/down` with 503, `/gone`
/// with 404, `/slow` after 2 s, `/text` with plain text.
async fn upstream() -> SocketAddr {
    let ok = warp::path("ok")
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(warp::header::optional::<String>("x-test"))
        .and(warp::body::json())
        .map(|key: Option<String>, x: Option<String>, body: Value| {
            warp::reply::json(&json!({"key": key, "x": x, "got": body}))
        });
    let down = warp::path("down").map(|| {
        warp::reply::with_status("overloaded", warp::http::StatusCode::SERVICE_UNAVAILABLE)
    });
    let gone = warp::path("gone")
        .map(|| warp::reply::with_status("no", warp::http::StatusCode::NOT_FOUND));
    let slow = warp::path("slow").then(|| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        "late"
    });
    let text = warp::path("text").map(|| "hello");
    let routes = ok.or(down).or(gone).or(slow).or(text);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    addr
}

#[tokio::test]
async fn http_posts_the_input_and_returns_the_reply() {
    let addr = upstream().await;
    let http = Http::new();
    let c = ctx(json!({"url": format!("http://{addr}/ok"), "headers": {"x-test": "yes"}}));
    let job_id = c.job_id.to_string();
    let out = http.run(c).await.unwrap();
    assert_eq!(out["key"], json!(job_id));
    assert_eq!(out["x"], json!("yes"));
    assert_eq!(
        out["got"]["data"]["url"],
        json!(format!("http://{addr}/ok"))
    );
    assert_eq!(out["got"]["parents"], json!({}));

    let text = http
        .run(ctx(
            json!({"url": format!("http://{addr}/text"), "method": "get"}),
        ))
        .await
        .unwrap();
    assert_eq!(text, json!("hello"));
}

#[tokio::test]
async fn http_classifies_failures() {
    let addr = upstream().await;
    let http = Http::new();
    let down = http
        .run(ctx(json!({"url": format!("http://{addr}/down")})))
        .await
        .unwrap_err();
    assert!(down.retryable, "{down:?}");
    assert!(down.message.contains("503"), "{down:?}");

    let gone = http
        .run(ctx(json!({"url": format!("http://{addr}/gone")})))
        .await
        .unwrap_err();
    assert!(!gone.retryable, "{gone:?}");

    let slow = http
        .run(ctx(
            json!({"url": format!("http://{addr}/slow"), "timeoutMs": 100}),
        ))
        .await
        .unwrap_err();
    assert!(slow.retryable, "{slow:?}");
    assert!(slow.message.contains("timed out"), "{slow:?}");

    for bad in [
        json!({}),
        json!({"url": "ftp://example.com/"}),
        json!({"url": "http://x/", "method": "NOT A METHOD"}),
        json!({"url": "http://x/", "headers": {"a": 1}}),
        json!({"url": "http://x/", "timeoutMs": 0}),
    ] {
        let err = http.run(ctx(bad.clone())).await.unwrap_err();
        assert!(!err.retryable, "{bad}: {err:?}");
    }
}

#[test]
fn builtin_names() {
    let names: Vec<&str> = builtin().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["noop", "echo", "sleep", "fail", "http"]);
}
