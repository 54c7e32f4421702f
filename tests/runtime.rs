//! Flows that decide at run time, end to end through the API of a real engine
//! (real Redis, real sled, real HTTP): maps, conditions and trigger rules, waits
//! and signals, durable timers, re-runs. Every answer is checked against the
//! published OpenAPI document (`Checked`). Restarts reuse the data dir and the
//! Redis prefix, as a crashed-and-restarted server would.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/schema.rs"]
mod schema;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{node, start_server, ServerOpts, TestServer};
use dagflow::engine::{handler_fn, Handler, JobError};
use reqwest::{Method, StatusCode};
use schema::Checked;
use serde_json::{json, Value};

/// `times10`: a map element's item times ten.
fn times10() -> (String, Arc<dyn Handler>) {
    let handler = handler_fn(|ctx| async move {
        let (item, index) = ctx
            .item
            .clone()
            .ok_or_else(|| JobError::fatal("not a map element"))?;
        let n = item
            .as_i64()
            .ok_or_else(|| JobError::fatal("item is not a number"))?;
        Ok(json!({"value": n * 10, "index": index}))
    });
    ("times10".to_owned(), Arc::new(handler))
}

async fn restart(server: TestServer, opts: ServerOpts) -> TestServer {
    let (prefix, data_dir) = (server.prefix.clone(), Arc::clone(&server.data_dir));
    server.stop().await;
    start_server(ServerOpts {
        prefix: Some(prefix),
        data_dir: Some(data_dir),
        ..opts
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crawler_maps_over_a_thousand_items_and_the_collector_gets_them_in_order() {
    let server = start_server(ServerOpts {
        handlers: vec![times10()],
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    let items: Vec<u32> = (0..1000).collect();
    let id = api
        .create_flow(&json!({"name": "crawl-resize-collect", "nodes": [
            {"name": "crawl", "handler": "echo", "data": {"found": items}},
            {"name": "resize", "handler": "times10", "parents": ["crawl"],
             "map": {"from": "crawl", "path": "/data/found", "maxParallel": 50}},
            {"name": "collect", "handler": "echo", "parents": ["resize"]}
        ]}))
        .await;
    let flow = api.wait_for_status(&id, "completed").await;
    let resize = node(&flow, "resize");
    assert_eq!(resize["map"]["total"], 1000);
    assert_eq!(resize["map"]["done"], 1000);
    assert_eq!(resize["map"]["failed"], 0);
    let expected: Vec<Value> = (0..1000)
        .map(|i| json!({"value": i * 10, "index": i}))
        .collect();
    assert_eq!(resize["result"], Value::Array(expected.clone()));
    // The collector received the array, in input order.
    assert_eq!(
        node(&flow, "collect")["result"]["parents"]["resize"],
        Value::Array(expected)
    );
    // Every element is in the view, named `resize[i]`, completed, once.
    let elements: Vec<&Value> = flow["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["mapOf"] == "resize")
        .collect();
    assert_eq!(elements.len(), 1000);
    for (i, el) in elements.iter().enumerate() {
        assert_eq!(el["name"], format!("resize[{i}]"));
        assert_eq!(el["index"], i);
        assert_eq!(el["status"], "completed");
        assert_eq!(el["attempt"], 1);
    }
    // One element by its wire name, with its input.
    let (status, el) = api.get(&format!("/flows/{id}/nodes/resize%5B7%5D")).await;
    assert_eq!(status, StatusCode::OK, "{el}");
    assert_eq!(el["input"]["item"], 7);
    assert_eq!(el["input"]["index"], 7);
    assert_eq!(el["result"]["value"], 70);
    // Nothing is left in Redis once the flow ended.
    common::eventually("the flow's keys are cleaned up", || async {
        server.redis_keys().await.iter().all(|k| !k.contains(&id))
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_over_something_that_is_not_an_array_fails_with_a_clear_error() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let id = api
        .create_flow(&json!({"nodes": [
            {"name": "src", "handler": "echo", "data": {"items": {"a": 1}}},
            {"name": "each", "handler": "echo", "parents": ["src"],
             "map": {"from": "src", "path": "/data/items"}},
            {"name": "empty", "handler": "echo", "parents": ["src"],
             "map": {"from": "src", "path": "/data/none"}},
        ]}))
        .await;
    let flow = api.wait_for_status(&id, "failed").await;
    let each = node(&flow, "each");
    assert_eq!(each["status"], "failed");
    assert_eq!(
        each["error"],
        "path '/data/items' in the result of 'src' is an object, not an array"
    );
    assert_eq!(
        node(&flow, "empty")["error"],
        "path '/data/none' is not found in the result of 'src'"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_takes_one_branch_or_the_other_and_the_join_runs_either_way() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    for (score, taken, skipped) in [(12, "big", "small"), (5, "small", "big")] {
        let id = api
            .create_flow(&json!({"nodes": [
                {"name": "score", "handler": "echo", "data": {"value": score}},
                {"name": "big", "handler": "echo", "parents": ["score"],
                 "when": "parents.score.data.value > 10"},
                {"name": "small", "handler": "echo", "parents": ["score"],
                 "when": "parents.score.data.value <= 10"},
                {"name": "join", "handler": "echo", "parents": ["big", "small"],
                 "trigger": "noneFailed"},
                {"name": "strict", "handler": "echo", "parents": ["big", "small"]},
            ]}))
            .await;
        let flow = api.wait_for_status(&id, "completed").await;
        assert_eq!(node(&flow, taken)["status"], "completed", "{flow}");
        let not_taken = node(&flow, skipped);
        assert_eq!(not_taken["status"], "skipped");
        let cond = not_taken["when"].as_str().unwrap();
        assert_eq!(
            not_taken["reason"],
            format!("condition `{cond}` is false"),
            "{not_taken}"
        );
        let join = node(&flow, "join");
        assert_eq!(join["status"], "completed");
        assert_eq!(join["trigger"], "noneFailed");
        // The skipped branch's slot is null; the taken one has its result.
        assert!(join["result"]["parents"][skipped].is_null());
        assert_eq!(
            join["result"]["parents"][taken]["parents"]["score"]["data"]["value"],
            score
        );
        // allSuccess (the default) does not run after a skipped parent.
        let strict = node(&flow, "strict");
        assert_eq!(strict["status"], "skipped");
        assert_eq!(
            strict["reason"],
            format!("parent '{skipped}' skipped (trigger allSuccess)")
        );
    }
    // A condition that does not parse is a 422 naming the node.
    let (status, body) = api
        .post(
            "/flows",
            &json!({"nodes": [{"name": "a", "handler": "echo", "when": "parents.x >"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let problems = body["error"]["details"]["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["code"] == "bad_condition" && p["node"] == "a"),
        "{body}"
    );
    // A condition that cannot be evaluated fails the node at run time.
    let id = api
        .create_flow(&json!({"nodes": [
            {"name": "a", "handler": "echo"},
            {"name": "b", "handler": "echo", "parents": ["a"], "when": "parents.a.nope.deeper > 1"},
        ]}))
        .await;
    let flow = api.wait_for_status(&id, "failed").await;
    let b = node(&flow, "b");
    assert_eq!(b["status"], "failed");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .starts_with("condition `parents.a.nope.deeper > 1` could not be evaluated"),
        "{b}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_rules_run_error_handlers_and_first_results() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let id = api
        .create_flow(&json!({"nodes": [
            {"name": "boom", "handler": "fail", "data": {"message": "no"}},
            {"name": "fine", "handler": "echo"},
            {"name": "on-error", "handler": "echo", "parents": ["boom"], "trigger": "allFailed"},
            {"name": "not-on-error", "handler": "echo", "parents": ["fine"], "trigger": "allFailed"},
            {"name": "cleanup", "handler": "echo", "parents": ["boom", "fine"], "trigger": "allDone"},
            {"name": "first", "handler": "echo", "parents": ["boom", "fine"], "trigger": "oneSuccess"},
        ], "opts": {"onFailure": "continue"}}))
        .await;
    let flow = api.wait_for_status(&id, "failed").await;
    assert_eq!(node(&flow, "on-error")["status"], "completed");
    assert_eq!(
        node(&flow, "on-error")["result"]["parents"]["boom"]["error"],
        "no"
    );
    assert_eq!(node(&flow, "not-on-error")["status"], "skipped");
    assert_eq!(node(&flow, "cleanup")["status"], "completed");
    assert_eq!(node(&flow, "first")["status"], "completed");
    server.stop().await;
}

fn approval_flow() -> Value {
    json!({"name": "approval", "nodes": [
        {"name": "draft", "handler": "echo", "data": {"doc": 1}},
        {"name": "approve", "parents": ["draft"], "wait": {"signal": "approved"}},
        {"name": "publish", "handler": "echo", "parents": ["approve"]},
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_after_a_server_restart_completes_the_wait() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let id = api.create_flow(&approval_flow()).await;
    // Too early: the node is not waiting yet, or a node that takes no signal.
    let (status, body) = api
        .post(&format!("/flows/{id}/nodes/publish/signal"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = api
        .post(&format!("/flows/{id}/nodes/nobody/signal"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let flow = api.wait_for_node(&id, "approve", "waiting").await;
    let approve = node(&flow, "approve");
    assert_eq!(approve["wait"]["kind"], "signal");
    assert_eq!(approve["wait"]["signal"], "approved");
    assert!(
        approve.get("jobId").is_none(),
        "a wait has no job: {approve}"
    );
    // Nothing for a worker: no job of the wait node in Redis.
    assert!(server
        .redis_keys()
        .await
        .iter()
        .all(|k| !k.ends_with(":approve:1")));

    let server = restart(server, ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    assert_eq!(node(&api.flow(&id).await, "approve")["status"], "waiting");
    // A body that is not JSON is a 400 and changes nothing.
    let (status, body) = api
        .send(
            api.request(Method::POST, &format!("/flows/{id}/nodes/approve/signal"))
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = api
        .post(
            &format!("/flows/{id}/nodes/approve/signal"),
            &json!({"by": "ann", "ok": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["result"], json!({"by": "ann", "ok": true}));
    let flow = api.wait_for_status(&id, "completed").await;
    assert_eq!(
        node(&flow, "publish")["result"]["parents"]["approve"],
        json!({"by": "ann", "ok": true})
    );
    // A second signal is refused: the node is done.
    let (status, body) = api
        .post(&format!("/flows/{id}/nodes/approve/signal"), &json!(1))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // On the ended flow, an unknown node is still a 404.
    let (status, body) = api
        .post(&format!("/flows/{id}/nodes/nobody/signal"), &json!(1))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // A signal without a body (and without Content-Length, as `curl -X POST`
    // sends it) is a `null` payload, not a 411.
    let id = api.create_flow(&approval_flow()).await;
    api.wait_for_node(&id, "approve", "waiting").await;
    let (status, code) = common::raw_http(
        server.addr,
        format!(
            "POST /flows/{id}/nodes/approve/signal HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{code}");
    let flow = api.wait_for_status(&id, "completed").await;
    assert!(node(&flow, "approve")["result"].is_null());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_wait_times_out_to_its_default_or_fails() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let id = api
        .create_flow(&json!({"nodes": [
            {"name": "with-default", "wait": {"signal": "go", "timeoutMs": 300, "default": {"auto": true}}},
            {"name": "without", "wait": {"signal": "go", "timeoutMs": 300}},
        ]}))
        .await;
    let flow = api.wait_for_status(&id, "failed").await;
    assert_eq!(node(&flow, "with-default")["status"], "completed");
    assert_eq!(node(&flow, "with-default")["result"], json!({"auto": true}));
    assert_eq!(node(&flow, "without")["status"], "failed");
    assert_eq!(
        node(&flow, "without")["error"],
        "no signal 'go' within 300 ms"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_fires_after_a_restart_and_wakes_a_hibernated_flow_on_time() {
    let hibernating = || ServerOpts {
        engine: Some(Box::new(|b: dagflow::engine::EngineBuilder| {
            b.hibernate_after(Some(Duration::from_millis(200)))
        })),
        ..ServerOpts::default()
    };
    let server = start_server(hibernating()).await;
    let api = Checked::new(&server).await;
    let id = api
        .create_flow(&json!({"nodes": [
            {"name": "nap", "wait": {"forMs": 2500}},
            {"name": "after", "handler": "echo", "parents": ["nap"]},
        ]}))
        .await;
    let flow = api.wait_for_node(&id, "nap", "waiting").await;
    let due = node(&flow, "nap")["dueAt"].as_u64().unwrap();
    let started = node(&flow, "nap")["startedAt"].as_u64().unwrap();
    assert_eq!(due - started, 2500);
    // The engine goes down while the timer runs, and comes back before it is due;
    // the flow hibernates again (200 ms) and the supervisor's timer wakes it.
    let server = restart(server, hibernating()).await;
    let api = Checked::new(&server).await;
    let flow = api.wait_for_status(&id, "completed").await;
    let nap = node(&flow, "nap");
    let finished = nap["finishedAt"].as_u64().unwrap();
    assert!(finished >= due, "fired early: {finished} < {due}");
    assert!(
        finished < due + 1000,
        "fired {} ms late",
        finished.saturating_sub(due)
    );
    assert_eq!(nap["result"]["firedAt"], finished);

    // A timer that fell due while the engine was down fires as it starts.
    let id = api
        .create_flow(&json!({"nodes": [{"name": "nap", "wait": {"forMs": 300}}]}))
        .await;
    api.wait_for_node(&id, "nap", "waiting").await;
    let (prefix, data_dir) = (server.prefix.clone(), Arc::clone(&server.data_dir));
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let server = start_server(ServerOpts {
        prefix: Some(prefix),
        data_dir: Some(data_dir),
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    let begin = Instant::now();
    api.wait_for_status(&id, "completed").await;
    assert!(begin.elapsed() < Duration::from_secs(5));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_from_a_node_reruns_it_and_its_descendants_only() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = {
        let calls = Arc::clone(&calls);
        handler_fn(move |_ctx| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(json!({"model": n})) }
        })
    };
    let server = start_server(ServerOpts {
        handlers: vec![("train".to_owned(), Arc::new(counter))],
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    let id = api
        .create_flow(&json!({"nodes": [
            {"name": "data", "handler": "echo"},
            {"name": "train", "handler": "train", "parents": ["data"]},
            {"name": "evaluate", "handler": "echo", "parents": ["train"]},
            {"name": "side", "handler": "echo", "parents": ["data"]},
        ]}))
        .await;
    let before = api.wait_for_status(&id, "completed").await;
    assert_eq!(
        node(&before, "evaluate")["result"]["parents"]["train"]["model"],
        1
    );

    let (status, body) = api
        .post_empty(&format!("/flows/{id}/nodes/train/rerun"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "running");
    let after = api.wait_for_status(&id, "completed").await;
    // The re-run node and its descendant got fresh attempts and the new result.
    assert_eq!(node(&after, "train")["attempt"], 2);
    assert_eq!(node(&after, "train")["result"]["model"], 2);
    assert_eq!(node(&after, "evaluate")["attempt"], 2);
    assert_eq!(
        node(&after, "evaluate")["result"]["parents"]["train"]["model"],
        2
    );
    // Nodes that are not downstream kept everything.
    for name in ["data", "side"] {
        let (b, a) = (node(&before, name), node(&after, name));
        assert_eq!(a["attempt"], 1);
        assert_eq!(a["result"], b["result"]);
        assert_eq!(a["finishedAt"], b["finishedAt"]);
    }
    // Unknown node: 404; a map element: 409.
    let (status, _) = api
        .post_empty(&format!("/flows/{id}/nodes/nope/rerun"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_on_a_failed_node_of_a_running_flow_retries_just_it() {
    let tries = Arc::new(AtomicU32::new(0));
    let flaky = {
        let tries = Arc::clone(&tries);
        handler_fn(move |_ctx| {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(JobError::fatal("first try fails"))
                } else {
                    Ok(json!("fixed"))
                }
            }
        })
    };
    let server = start_server(ServerOpts {
        handlers: vec![("flaky".to_owned(), Arc::new(flaky))],
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    let id = api
        .create_flow(&json!({"nodes": [
            {"name": "flaky", "handler": "flaky"},
            {"name": "after", "handler": "echo", "parents": ["flaky"]},
            {"name": "gate", "wait": {"signal": "go"}},
        ], "opts": {"onFailure": "continue"}}))
        .await;
    // The wait keeps the flow running while `flaky` has failed.
    let flow = api.wait_for_node(&id, "flaky", "failed").await;
    assert_eq!(flow["status"], "running");
    assert_eq!(node(&flow, "after")["status"], "skipped");
    let (status, body) = api
        .post_empty(&format!("/flows/{id}/nodes/flaky/rerun"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.wait_for_node(&id, "after", "completed").await;
    let (status, _) = api
        .post(&format!("/flows/{id}/nodes/gate/signal"), &json!(null))
        .await;
    assert_eq!(status, StatusCode::OK);
    let flow = api.wait_for_status(&id, "completed").await;
    assert_eq!(node(&flow, "flaky")["result"], "fixed");
    // A node that has not ended cannot be re-run.
    let id = api
        .create_flow(&json!({"nodes": [{"name": "gate", "wait": {"signal": "go"}}]}))
        .await;
    api.wait_for_node(&id, "gate", "waiting").await;
    let (status, body) = api
        .post_empty(&format!("/flows/{id}/nodes/gate/rerun"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_api_signals_and_reruns() {
    let server = start_server(ServerOpts::default()).await;
    let engine = server.engine.clone();
    let spec = dagflow::engine::spec::parse(approval_flow().to_string().as_bytes()).unwrap();
    let id = engine.create(&spec, None).await.unwrap();
    common::eventually("approve waits", || async {
        engine
            .node(id, "approve")
            .await
            .is_ok_and(|n| n.status == dagflow::engine::NodeStatus::Waiting)
    })
    .await;
    engine.signal(id, "approve", &json!("yes")).await.unwrap();
    common::eventually("the flow completes", || async {
        engine
            .get(id)
            .await
            .is_ok_and(|f| f.status == dagflow::engine::FlowStatus::Completed)
    })
    .await;
    engine.rerun(id, "publish").await.unwrap();
    common::eventually("publish ran again", || async {
        engine
            .node(id, "publish")
            .await
            .is_ok_and(|n| n.attempt == 2 && n.status == dagflow::engine::NodeStatus::Completed)
    })
    .await;
    let err = engine.signal(id, "approve", &json!(1)).await.unwrap_err();
    assert!(
        matches!(err, dagflow::engine::EngineError::Conflict(_)),
        "{err}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_nest_a_map_over_a_maps_results() {
    let server = start_server(ServerOpts {
        handlers: vec![times10()],
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    // `pages` lists pages; `links` maps over them (each element's result holds that
    // page's links); `fetch` maps over the array of `links` results, so each of its
    // elements is one of `links`' elements.
    let id = api
        .create_flow(&json!({"nodes": [
            {"name": "pages", "handler": "echo", "data": {"list": [[1, 2], [3], []]}},
            {"name": "links", "handler": "echo", "parents": ["pages"],
             "map": {"from": "pages", "path": "/data/list"}},
            {"name": "fetch", "handler": "echo", "parents": ["links"],
             "map": {"from": "links", "path": ""}},
            {"name": "first-links", "handler": "times10", "parents": ["pages"],
             "map": {"from": "pages", "path": "/data/list/0"}},
        ]}))
        .await;
    let flow = api.wait_for_status(&id, "completed").await;
    assert_eq!(node(&flow, "links")["map"]["total"], 3);
    assert_eq!(node(&flow, "fetch")["map"]["total"], 3);
    let fetched: Vec<Value> = node(&flow, "fetch")["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["item"]["item"].clone())
        .collect();
    assert_eq!(fetched, vec![json!([1, 2]), json!([3]), json!([])]);
    // A pointer into an array inside the result.
    assert_eq!(
        node(&flow, "first-links")["result"],
        json!([{"value": 10, "index": 0}, {"value": 20, "index": 1}])
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_rerun_gets_new_job_ids_and_a_partial_rerun_of_a_cancelled_flow_stays_cancelled() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    // A re-run map's elements get attempts past the earlier run's: new job ids, so
    // a late report or a worker's idempotency key of the first run never meets them.
    let id = api
        .create_flow(&json!({"nodes": [
            {"name": "src", "handler": "echo", "data": ["a", "b"]},
            {"name": "m", "handler": "echo", "parents": ["src"], "map": {"from": "src", "path": "/data"}},
        ]}))
        .await;
    let first = api.wait_for_status(&id, "completed").await;
    let (status, body) = api.post_empty(&format!("/flows/{id}/nodes/m/rerun")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = api.wait_for_status(&id, "completed").await;
    for i in 0..2 {
        let name = format!("m[{i}]");
        let (a, b) = (node(&first, &name), node(&second, &name));
        assert_eq!(a["attempt"], 1);
        assert_eq!(b["attempt"], 2, "{b}");
        assert_ne!(a["jobId"], b["jobId"]);
    }
    assert_eq!(node(&second, "m")["result"], node(&first, "m")["result"]);

    // Re-running part of a cancelled flow: a node left cancelled keeps the flow
    // cancelled (and retryable), it does not read `completed`.
    let id = api
        .create_flow(&json!({"nodes": [
            {"name": "x", "handler": "echo"},
            {"name": "b", "handler": "sleep", "data": {"ms": 5000}},
        ]}))
        .await;
    api.wait_for_node(&id, "b", "active").await;
    let (status, _) = api.post_empty(&format!("/flows/{id}/cancel")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api.post_empty(&format!("/flows/{id}/nodes/x/rerun")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let flow = api.wait_for_status(&id, "cancelled").await;
    assert_eq!(node(&flow, "x")["attempt"], 2);
    assert_eq!(node(&flow, "b")["status"], "cancelled");
    let (status, body) = api.post_empty(&format!("/flows/{id}/retry")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_after_a_branch_not_taken_is_skipped_and_a_null_default_is_a_default() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let id = api
        .create_flow(&json!({"nodes": [
            {"name": "src", "handler": "echo", "data": [1], "when": "false"},
            {"name": "m", "handler": "echo", "parents": ["src"], "trigger": "allDone",
             "map": {"from": "src", "path": "/data"}},
            {"name": "w", "wait": {"signal": "s", "timeoutMs": 200, "default": null}},
        ]}))
        .await;
    let flow = api.wait_for_status(&id, "completed").await;
    assert_eq!(node(&flow, "m")["status"], "skipped");
    assert_eq!(node(&flow, "m")["reason"], "map source 'src' was skipped");
    assert_eq!(node(&flow, "w")["status"], "completed");
    assert!(node(&flow, "w")["result"].is_null());
    // `default` (null included) only goes with a signal's timeout.
    let (status, body) = api
        .post(
            "/flows",
            &json!({"nodes": [{"name": "w", "wait": {"forMs": 5, "default": null}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    server.stop().await;
}
