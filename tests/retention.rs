//! Retention as an operator sets it: a real `dagflow serve` process with
//! `--retain-completed` / `--retain-failed` given through their environment
//! variables, driven over HTTP. Ended flows go when their time comes, with every
//! record and key; `/metrics` counts them and shows the store's size.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::process::{Deployment, ServeArgs};
use common::Api;
use dagflow::engine::testing;
use reqwest::StatusCode;
use serde_json::json;

/// The value of a metric line `name value` in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics(api: &Api) -> String {
    let response = api
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_retention_flags_delete_ended_flows_and_keep_the_others() {
    let redis = testing::redis();
    let mut deployment = Deployment::new(&redis.url);
    let mut args = ServeArgs::new("default=4");
    args.env = vec![
        ("DAGFLOW_RETAIN_COMPLETED".to_owned(), "1s".to_owned()),
        ("DAGFLOW_RETAIN_FAILED".to_owned(), "forever".to_owned()),
    ];
    let server = deployment.serve(&args);
    let api = Api::new(&server.url, None);

    let (status, body) = api
        .post(
            "/flows",
            &json!({"nodes": [{"name": "a", "handler": "echo"}], "opts": {"retention": "soon"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["details"]["problems"][0]["code"],
        "bad_retention"
    );

    let done = api
        .create_flow(&json!({"name": "short", "nodes": [{"name": "a", "handler": "echo"}]}))
        .await;
    let kept = api
        .create_flow(
            &json!({"name": "kept", "nodes": [{"name": "a", "handler": "echo"}],
            "opts": {"retention": "1h"}}),
        )
        .await;
    let failed = api
        .create_flow(
            &json!({"name": "broken", "nodes": [{"name": "a", "handler": "fail",
            "opts": {"attempts": 1}}]}),
        )
        .await;
    api.wait_for_status(&done, "completed").await;
    api.wait_for_status(&kept, "completed").await;
    api.wait_for_status(&failed, "failed").await;

    common::eventually("the completed flow to be swept", || async {
        api.get(&format!("/flows/{done}")).await.0 == StatusCode::NOT_FOUND
    })
    .await;
    // Counted once the sweep's batch is done, a moment after the flow went.
    common::eventually("the sweep to be counted", || async {
        metric(&metrics(&api).await, "dagflow_flows_swept_total") == Some(1.0)
    })
    .await;
    let text = metrics(&api).await;
    assert!(
        metric(&text, "dagflow_store_bytes").is_some_and(|b| b > 0.0),
        "{text}"
    );
    // Its own retention keeps one; the flag keeps failed flows for ever.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(api.get(&format!("/flows/{kept}")).await.0, StatusCode::OK);
    let (status, flow) = api.get(&format!("/flows/{failed}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(flow["status"], "failed");
    let (_, page) = api.get("/flows?limit=10").await;
    let names: Vec<&str> = page["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(!names.contains(&"short"), "{page}");
}
