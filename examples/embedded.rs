//! dagflow embedded in a program: the image pipeline, run by the engine in this
//! process with handlers written as closures.
//!
//! ```text
//! download-image ──► resize-image ───┐
//!        └─────────► add-watermark ──┴─► save-to-s3
//! ```
//!
//! Each handler computes its result from its input, so the saved result shows that
//! `save-to-s3` received the results of both of its parents. Needs a Redis at
//! `REDIS_URL` (default `redis://127.0.0.1:6379`).
//!
//! Run with `cargo run --example embedded`.

use std::time::Duration;

use dagflow::engine::{handler_fn, Engine, FlowSpec, FlowStatus, JobError};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let data_dir = tempfile::tempdir()?;

    let engine = Engine::builder()
        .redis_url(redis_url)
        .prefix("dagflow-example")
        .data_dir(data_dir.path())
        .queue("default", 4)
        .queue("gpu", 1)
        .handler(
            "download-image",
            handler_fn(|ctx| async move {
                let url = ctx.data["url"].as_str().unwrap_or_default().to_owned();
                // A stand-in for the download: the "image" is its url and a size.
                Ok::<_, JobError>(json!({ "image": url, "width": 1920, "height": 1080 }))
            }),
        )
        .handler(
            "resize-image",
            handler_fn(|ctx| async move {
                let image = &ctx.parents["download-image"];
                let width = image["width"].as_u64().unwrap_or(0) / 2;
                let height = image["height"].as_u64().unwrap_or(0) / 2;
                Ok::<_, JobError>(json!({ "image": format!("{}@{width}x{height}", image["image"].as_str().unwrap_or("")), "width": width, "height": height }))
            }),
        )
        .handler(
            "add-watermark",
            handler_fn(|ctx| async move {
                let image = ctx.parents["download-image"]["image"].as_str().unwrap_or("").to_owned();
                Ok::<_, JobError>(json!({ "image": format!("{image}+watermark"), "mark": "© dagflow" }))
            }),
        )
        .handler(
            "save-to-s3",
            handler_fn(|ctx| async move {
                let resized: &Value = &ctx.parents["resize-image"];
                let marked: &Value = &ctx.parents["add-watermark"];
                Ok::<_, JobError>(json!({
                    "saved": format!("s3://bucket/{}", ctx.job_id),
                    "resized": resized["image"],
                    "watermarked": marked["image"],
                    "fromParents": ctx.parents.keys().collect::<Vec<_>>(),
                }))
            }),
        )
        .build()
        .await?;

    let spec: FlowSpec = serde_json::from_value(json!({
        "name": "image pipeline",
        "nodes": [
            { "name": "download-image", "data": { "url": "https://example.com/a.png" } },
            { "name": "resize-image",   "parents": ["download-image"] },
            { "name": "add-watermark",  "parents": ["download-image"], "queue": "gpu" },
            { "name": "save-to-s3",     "parents": ["resize-image", "add-watermark"],
              "opts": { "attempts": 3, "backoff": { "type": "exponential", "delayMs": 500 }, "timeoutMs": 30000 } }
        ]
    }))?;
    let id = engine.create(&spec, None).await?;
    println!("flow {id} started");

    let flow = engine.wait(id, Duration::from_secs(30)).await?;
    for node in &flow.nodes {
        println!(
            "{:<15} {:?} (attempt {})",
            node.name, node.status, node.attempt
        );
    }
    let saved = flow
        .node("save-to-s3")
        .and_then(|n| n.result.clone())
        .unwrap_or(Value::Null);
    println!("saved result: {}", serde_json::to_string_pretty(&saved)?);

    engine.shutdown(Duration::from_secs(5)).await;
    anyhow::ensure!(
        flow.status == FlowStatus::Completed,
        "flow ended {:?}",
        flow.status
    );
    Ok(())
}
