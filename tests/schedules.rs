//! Schedules over the REST API of a real server (test Redis with a unique prefix,
//! temp sled dir): every answer is held against the server's own /openapi.json,
//! and a server restarted on the same data fires each tick once.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/schema.rs"]
mod schema;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use schema::Checked;
use serde_json::{json, Value};

fn every_second(name: &str, extra: Value) -> Value {
    let mut v = json!({
        "name": name,
        "cron": "* * * * * *",
        "flow": {"nodes": [{"name": "tick", "handler": "noop"}]},
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

async fn runs(api: &Checked, name: &str) -> Vec<Value> {
    let (status, body) = api.get(&format!("/schedules/{name}/runs")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut runs = body["runs"].as_array().unwrap().clone();
    runs.reverse(); // oldest first
    runs
}

async fn patch(api: &Checked, name: &str, body: &Value) -> (StatusCode, Value) {
    api.send(
        api.request(Method::PATCH, &format!("/schedules/{name}"))
            .json(body),
    )
    .await
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_pause_resume_delete() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let spec = json!({
        "name": "nightly", "cron": "30 2 * * *", "timezone": "America/New_York",
        "flow": {"nodes": [{"name": "report", "handler": "noop"}]},
        "overlap": "cancelPrevious", "catchUp": "none"
    });
    let (status, headers, created) = api
        .send_full(api.request(Method::POST, "/schedules").json(&spec))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(headers["location"], "/schedules/nightly");
    assert_eq!(created["timezone"], "America/New_York");
    assert_eq!(created["overlap"], "cancelPrevious");
    assert_eq!(created["catchUp"], "none");
    assert_eq!(created["paused"], false);
    // 02:30 in New York is 06:30 or 07:30 UTC.
    let next = created["nextFireAt"].as_u64().unwrap();
    let secs_of_day = next / 1000 % 86_400;
    assert!(
        secs_of_day == 6 * 3600 + 1800 || secs_of_day == 7 * 3600 + 1800,
        "{next}"
    );

    let (status, one) = api.get("/schedules/nightly").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["nextFireAt"], next);
    let (status, list) = api.get("/schedules").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1);

    let (status, paused) = patch(&api, "nightly", &json!({"paused": true})).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["paused"], true);
    assert!(paused.get("nextFireAt").is_none(), "{paused}");
    let (status, resumed) = patch(
        &api,
        "nightly",
        &json!({"paused": false, "cron": "0 9 * * 1-5"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["paused"], false);
    assert_eq!(resumed["cron"], "0 9 * * 1-5");
    assert!(resumed["nextFireAt"].as_u64().is_some());

    let (status, none) = api.get("/schedules/nightly/runs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(none["runs"], json!([]));
    assert!(none["nextFireAt"].as_u64().is_some(), "{none}");

    let (status, _) = api.delete("/schedules/nightly").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, gone) = api.get("/schedules/nightly").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&gone), "schedule_not_found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly_and_stores_nothing() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    // Malformed JSON.
    let (status, body) = api
        .send(
            api.request(Method::POST, "/schedules")
                .header("content-type", "application/json")
                .body("{\"name\": "),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "malformed_json");
    // Not declared JSON.
    let (status, body) = api
        .send(api.request(Method::POST, "/schedules").body("{}"))
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    // A bad cron, an unknown zone and an invalid flow: every problem at once.
    let bad = json!({
        "name": "bad", "cron": "61 * * * *", "timezone": "Moon/Base",
        "flow": {"nodes": [{"name": "a", "parents": ["ghost"]}]}
    });
    let (status, body) = api.post("/schedules", &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "invalid_schedule");
    let codes: Vec<&str> = body["error"]["details"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["bad_cron", "unknown_timezone", "unknown_parent"]);
    // Seven fields, an unknown field, a bad overlap, a bad name.
    for (spec, code) in [
        (
            every_second("x", json!({"cron": "0 0 0 1 1 * 2030"})),
            "invalid_schedule",
        ),
        (every_second("x", json!({"extra": 1})), "invalid_schedule"),
        (
            every_second("x", json!({"overlap": "sometimes"})),
            "invalid_schedule",
        ),
        (every_second("no/slash", json!({})), "invalid_schedule"),
        (json!(["x", "* * * * *"]), "invalid_schedule"),
    ] {
        let (status, body) = api.post("/schedules", &spec).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{spec}: {body}");
        assert_eq!(error_code(&body), code, "{body}");
    }
    let (_, list) = api.get("/schedules").await;
    assert_eq!(
        list["schedules"],
        json!([]),
        "a refused schedule was stored"
    );
    // A duplicate name.
    let ok = every_second("dup", json!({"paused": true}));
    assert_eq!(api.post("/schedules", &ok).await.0, StatusCode::CREATED);
    let (status, body) = api.post("/schedules", &ok).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "schedule_exists");
    // Unknown names.
    for (method, path) in [
        (Method::GET, "/schedules/ghost"),
        (Method::DELETE, "/schedules/ghost"),
        (Method::GET, "/schedules/ghost/runs"),
    ] {
        let (status, body) = api.send(api.request(method, path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(&body), "schedule_not_found");
    }
    let (status, _) = patch(&api, "ghost", &json!({"paused": true})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A bad change leaves the schedule as it was.
    let (status, body) = patch(&api, "dup", &json!({"cron": "nope", "paused": false})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, still) = api.get("/schedules/dup").await;
    assert_eq!(still["paused"], true);
    assert_eq!(still["cron"], "* * * * * *");
    let (status, _) = patch(&api, "dup", &json!({"paused": "yes"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // serde reads a struct from an array too: only an object is a change.
    let (status, body) = patch(&api, "dup", &json!([null, null])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "invalid_schedule");
    let (status, _) = api.get("/schedules/dup/runs?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api.get("/schedules/dup/runs?bogus=1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Wrong methods.
    let (status, _) = api.send(api.request(Method::PUT, "/schedules/dup")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_flows_through_the_server_and_once_across_a_restart() {
    let grace = || -> Option<Box<dyn FnOnce(_) -> _ + Send>> {
        Some(Box::new(|b: dagflow::engine::EngineBuilder| {
            b.schedule_grace(Duration::from_millis(400))
        }))
    };
    let server = start_server(ServerOpts {
        engine: grace(),
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    let (status, body) = api
        .post(
            "/schedules",
            &every_second("ticker", json!({"catchUp": "all", "overlap": "allow"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    eventually("three completed runs", || async {
        runs(&api, "ticker")
            .await
            .iter()
            .filter(|r| r["flowStatus"] == "completed")
            .count()
            >= 3
    })
    .await;
    let before = runs(&api, "ticker").await;
    let flow_id = before[0]["flowId"].as_str().unwrap();
    let flow = api.flow(flow_id).await;
    assert_eq!(flow["nodes"][0]["name"], "tick");
    let (_, metrics) = api.get("/metrics").await;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    assert!(text.contains("dagflow_schedules 1"), "{text}");
    assert!(
        text.contains("dagflow_schedule_ticks_total{outcome=\"fired\"}"),
        "{text}"
    );

    // Down for 3 s: the ticks that fell due are fired on restart (catchUp: all).
    let (prefix, dir) = (server.prefix.clone(), Arc::clone(&server.data_dir));
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let server = start_server(ServerOpts {
        engine: grace(),
        prefix: Some(prefix),
        data_dir: Some(dir),
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    let count = before.len();
    eventually("runs after the restart", || async {
        runs(&api, "ticker").await.len() >= count + 5
    })
    .await;
    let (status, _) = patch(&api, "ticker", &json!({"paused": true})).await;
    assert_eq!(status, StatusCode::OK);
    let after = runs(&api, "ticker").await;
    let ticks: Vec<u64> = after
        .iter()
        .map(|r| r["tickAt"].as_u64().unwrap())
        .collect();
    assert!(
        ticks.windows(2).all(|w| w[1] - w[0] == 1000),
        "a tick lost or fired twice: {ticks:?}"
    );
    // Caught-up ticks fire back to back: with `overlap: skip` most would be skipped
    // because the previous one had not finished; `allow` starts them all.
    let run_flows: BTreeSet<&str> = after
        .iter()
        .map(|r| r["flowId"].as_str().unwrap_or_else(|| panic!("{r}")))
        .collect();
    assert_eq!(run_flows.len(), after.len());
    let (_, page) = api.get("/flows?limit=1000").await;
    let flows: BTreeSet<&str> = page["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        flows, run_flows,
        "flows without a run or runs without a flow"
    );
    server.stop().await;
}

/// Runs the `dagflow` binary against `server`; returns exit code, stdout, stderr.
fn cli(server: &TestServer, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dagflow"))
        .args(args)
        .arg("--server")
        .arg(&server.base_url)
        .env_remove("DAGFLOW_API_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_lists_pauses_resumes_and_deletes() {
    let server = start_server(ServerOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("flow.json");
    std::fs::write(
        &flow,
        json!({"nodes": [{"name": "tick", "handler": "noop"}]}).to_string(),
    )
    .unwrap();
    let flow = flow.to_str().unwrap().to_owned();
    // The binary blocks; the server runs on the other worker threads.
    let run = |args: Vec<&str>| tokio::task::block_in_place(|| cli(&server, &args));
    let (code, out, err) = run(vec![
        "schedule",
        "create",
        "cli-every-second",
        "--cron",
        "* * * * * *",
        "--flow",
        &flow,
        "--overlap",
        "allow",
        "--catch-up",
        "none",
        "--timezone",
        "Europe/Berlin",
    ]);
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["overlap"], "allow");
    assert_eq!(created["catchUp"], "none");
    assert!(created["nextFireAt"].as_u64().is_some());
    // It fires through the server.
    let api = Checked::new(&server).await;
    eventually("a run", || async {
        !runs(&api, "cli-every-second").await.is_empty()
    })
    .await;

    let (code, out, _) = run(vec!["schedule", "list"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["schedules"][0]["name"], "cli-every-second");

    let (code, out, _) = run(vec!["schedule", "pause", "cli-every-second"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["paused"], true);
    let (code, out, _) = run(vec!["schedule", "resume", "cli-every-second"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["paused"],
        false
    );

    let (code, out, _) = run(vec!["schedule", "runs", "cli-every-second"]);
    assert_eq!(code, 0);
    assert!(!serde_json::from_str::<Value>(&out).unwrap()["runs"]
        .as_array()
        .unwrap()
        .is_empty());

    // Errors: a bad cron and an unknown name exit 3 with the server's message.
    let (code, _, err) = run(vec![
        "schedule", "create", "bad", "--cron", "nope", "--flow", &flow,
    ]);
    assert_eq!(code, 3);
    assert!(
        err.contains("invalid_schedule") && err.contains("cron"),
        "{err}"
    );
    let (code, _, err) = run(vec!["schedule", "pause", "ghost"]);
    assert_eq!(code, 3);
    assert!(err.contains("schedule_not_found"), "{err}");

    let (code, out, _) = run(vec!["schedule", "delete", "cli-every-second"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "cli-every-second");
    let (code, _, _) = run(vec!["schedule", "delete", "cli-every-second"]);
    assert_eq!(code, 3);
    server.stop().await;
}
