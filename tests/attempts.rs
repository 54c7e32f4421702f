//! A node's attempt history end to end: a real server on a real Redis and sled dir,
//! handlers that fail on purpose, a worker in another engine (reports through the
//! completions stream), and server restarts on the same data. Every answer is
//! held against the server's own `/openapi.json` ([`schema::Checked`]).

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/schema.rs"]
mod schema;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use dagflow_actors::{handler_fn, Engine, Handler, JobContext, JobError};
use reqwest::StatusCode;
use schema::Checked;
use serde_json::{json, Value};

/// Fails (retryable) with `boom on attempt {n}` while the attempt is at most
/// `data.times`, then returns `{"attempt": n}`: each failure has its own error.
fn flaky() -> (String, Arc<dyn Handler>) {
    let handler = handler_fn(|ctx: JobContext| async move {
        let times = ctx.data["times"].as_u64().unwrap_or(0);
        if u64::from(ctx.attempt) <= times {
            Err(JobError::retryable(format!(
                "boom on attempt {}",
                ctx.attempt
            )))
        } else {
            Ok(json!({ "attempt": ctx.attempt }))
        }
    });
    ("flaky".to_owned(), Arc::new(handler))
}

fn server_opts(prefix: Option<String>, dir: Option<Arc<tempfile::TempDir>>) -> ServerOpts {
    ServerOpts {
        prefix,
        data_dir: dir,
        handlers: vec![flaky()],
        ..ServerOpts::default()
    }
}

/// The node's attempts, from the single-node view (checked against the schema).
async fn attempts(api: &Checked, id: &str, node: &str) -> Vec<Value> {
    let (status, view) = api.get(&format!("/flows/{id}/nodes/{node}")).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    view["attempts"].as_array().cloned().unwrap_or_default()
}

/// The id of the one worker serving `queue`, as `GET /queues/{queue}` shows it.
async fn worker_of(api: &Checked, queue: &str) -> String {
    let (status, q) = api.get(&format!("/queues/{queue}")).await;
    assert_eq!(status, StatusCode::OK, "{q}");
    let workers = q["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{q}");
    workers[0]["id"].as_str().unwrap().to_owned()
}

/// Three attempts: two failures with their own errors, then the success; every
/// one run by `worker`, with its times in order.
fn assert_three_attempts(list: &[Value], worker: &str) {
    assert_eq!(list.len(), 3, "{list:#?}");
    for (k, a) in list.iter().enumerate() {
        let n = k as u64 + 1;
        assert_eq!(a["attempt"], n, "{a}");
        assert_eq!(a["worker"], worker, "{a}");
        let queued = a["queuedAt"].as_u64().unwrap();
        let started = a["startedAt"].as_u64().unwrap();
        let finished = a["finishedAt"].as_u64().unwrap();
        assert!(queued <= started && started <= finished, "{a}");
        if n < 3 {
            assert_eq!(a["outcome"], "failed", "{a}");
            assert_eq!(a["error"], format!("boom on attempt {n}"), "{a}");
        } else {
            assert_eq!(a["outcome"], "completed", "{a}");
            assert!(a.get("error").is_none(), "{a}");
        }
    }
    let ends: Vec<u64> = list
        .iter()
        .map(|a| a["finishedAt"].as_u64().unwrap())
        .collect();
    let next_queued: Vec<u64> = list[1..]
        .iter()
        .map(|a| a["queuedAt"].as_u64().unwrap())
        .collect();
    assert!(
        ends.iter().zip(&next_queued).all(|(e, q)| e <= q),
        "{list:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fails_twice_then_succeeds_shows_three_attempts_also_after_a_restart() {
    let server = start_server(server_opts(None, None)).await;
    let api = Checked::new(&server).await;
    let spec = json!({"nodes": [
        {"name": "flaky", "data": {"times": 2}, "opts": {"attempts": 3}},
        {"name": "after", "handler": "noop", "parents": ["flaky"]}
    ]});
    let id = api.create_flow(&spec).await;
    api.wait_for_status(&id, "completed").await;
    let worker = worker_of(&api, "default").await;
    let before = attempts(&api, &id, "flaky").await;
    assert_three_attempts(&before, &worker);
    // A node that ran once has one attempt, the current one.
    let after = attempts(&api, &id, "after").await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["outcome"], "completed");
    assert_eq!(after[0]["worker"], worker.as_str());
    // The flow's view does not carry them (it stays small for big flows).
    let flow = api.flow(&id).await;
    assert!(node(&flow, "flaky").get("attempts").is_none());

    let (prefix, dir) = (server.prefix.clone(), Arc::clone(&server.data_dir));
    server.stop().await;
    let server = start_server(server_opts(Some(prefix), Some(dir))).await;
    let api = Checked::new(&server).await;
    assert_eq!(attempts(&api, &id, "flaky").await, before);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_retry_keeps_the_earlier_attempts_through_a_restart() {
    let server = start_server(server_opts(None, None)).await;
    let api = Checked::new(&server).await;
    // One attempt per run: each failure fails the flow, a flow retry runs it again.
    let spec = json!({"nodes": [
        {"name": "flaky", "data": {"times": 2}},
        {"name": "child", "handler": "noop", "parents": ["flaky"]}
    ], "opts": {"onFailure": "continue"}});
    let id = api.create_flow(&spec).await;
    api.wait_for_status(&id, "failed").await;
    let worker = worker_of(&api, "default").await;
    let (status, body) = api.post_empty(&format!("/flows/{id}/retry")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.wait_for_status(&id, "failed").await;
    let two = attempts(&api, &id, "flaky").await;
    assert_eq!(two.len(), 2, "{two:#?}");
    assert_eq!(two[0]["error"], "boom on attempt 1");
    assert_eq!(two[1]["error"], "boom on attempt 2");
    // The child was skipped twice: a skip is not an attempt.
    assert!(attempts(&api, &id, "child").await.is_empty());

    // Restart between the failures and the retry that succeeds.
    let (prefix, dir) = (server.prefix.clone(), Arc::clone(&server.data_dir));
    server.stop().await;
    let server = start_server(server_opts(Some(prefix), Some(dir))).await;
    let api = Checked::new(&server).await;
    assert_eq!(attempts(&api, &id, "flaky").await, two);
    let (status, body) = api.post_empty(&format!("/flows/{id}/retry")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.wait_for_status(&id, "completed").await;
    assert_three_attempts(&attempts(&api, &id, "flaky").await, &worker);
    server.stop().await;
}

/// A handler past its `timeoutMs` shows as `timedOut`, each attempt with its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_that_time_out_say_so() {
    let server = start_server(server_opts(None, None)).await;
    let api = Checked::new(&server).await;
    let spec = json!({"nodes": [
        {"name": "slow", "handler": "sleep", "data": {"ms": 5000},
         "opts": {"attempts": 2, "timeoutMs": 200}}
    ]});
    let id = api.create_flow(&spec).await;
    api.wait_for_status(&id, "failed").await;
    let list = attempts(&api, &id, "slow").await;
    assert_eq!(list.len(), 2, "{list:#?}");
    for (k, a) in list.iter().enumerate() {
        assert_eq!(a["attempt"], k as u64 + 1, "{a}");
        assert_eq!(a["outcome"], "timedOut", "{a}");
        assert_eq!(a["error"], "timed out after 200 ms", "{a}");
    }
    server.stop().await;
}

/// A worker in another engine reports through the completions stream: its
/// consumer name reaches the attempt history all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_is_named_in_the_attempts_it_ran() {
    let server = start_server(ServerOpts {
        queues: vec![("default".to_owned(), 1)],
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    let (name, handler) = flaky();
    let remote = Engine::builder()
        .redis_url(server.redis_url.clone())
        .prefix(server.prefix.clone())
        .worker_only()
        .queue("remote", 1)
        .handler_arc(name, handler)
        .lease(Duration::from_millis(1500))
        .build()
        .await
        .unwrap();
    let spec = json!({"nodes": [
        {"name": "far", "handler": "flaky", "queue": "remote", "data": {"times": 1},
         "opts": {"attempts": 2}}
    ]});
    let id = api.create_flow(&spec).await;
    api.wait_for_status(&id, "completed").await;
    let remote_worker = worker_of(&api, "remote").await;
    assert!(remote_worker.starts_with("worker-"), "{remote_worker}");
    let list = attempts(&api, &id, "far").await;
    assert_eq!(list.len(), 2, "{list:#?}");
    assert_eq!(list[0]["outcome"], "failed");
    assert_eq!(list[0]["error"], "boom on attempt 1");
    assert_eq!(list[1]["outcome"], "completed");
    for a in &list {
        assert_eq!(a["worker"], remote_worker.as_str(), "{a}");
    }
    remote.shutdown(Duration::from_secs(5)).await;
    server.stop().await;
}
