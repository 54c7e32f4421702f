#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]
//! Helpers of the engine's integration tests: an engine on the test Redis with a
//! unique key prefix and a temp sled dir, and handlers that compute from their input.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dagflow_actors::testing;
use dagflow_actors::{handler_fn, Engine, EngineBuilder, FlowSpec, JobError};
use serde_json::{json, Value};

/// A builder on the test Redis with a fresh prefix.
pub fn builder(prefix: &str) -> EngineBuilder {
    Engine::builder()
        .redis_url(testing::redis().url.clone())
        .prefix(prefix)
        .lease(Duration::from_millis(1500))
        .cancel_grace(Duration::from_millis(500))
}

/// Sums the `n` of its data and every parent's `sum`: a result that proves which
/// parents' results reached it.
pub fn sum_handler() -> impl dagflow_actors::Handler {
    handler_fn(|ctx| async move {
        let own = ctx.data.get("n").and_then(Value::as_i64).unwrap_or(0);
        let from_parents: i64 = ctx
            .parents
            .values()
            .map(|p| p.get("sum").and_then(Value::as_i64).unwrap_or(0))
            .sum();
        let mut seen: Vec<String> = ctx.parents.keys().cloned().collect();
        seen.sort();
        Ok::<_, JobError>(json!({ "sum": own + from_parents, "parents": seen }))
    })
}

/// A handler counting its runs.
pub fn counting(counter: Arc<AtomicUsize>) -> impl dagflow_actors::Handler {
    handler_fn(move |_ctx| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok::<_, JobError>(json!({}))
        }
    })
}

/// A flow spec from JSON.
pub fn spec(v: Value) -> FlowSpec {
    serde_json::from_value(v).unwrap()
}

/// Fails a test that waits too long, instead of hanging CI.
pub const WAIT: Duration = Duration::from_secs(30);

/// A temp dir that lives as long as the returned guard.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Polls `f` until it returns true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Redis keys under a prefix.
pub async fn keys(prefix: &str) -> Vec<String> {
    testing::keys_matching(&testing::redis().url, &format!("{prefix}:*")).await
}

/// Whether a path exists (silences unused warnings in some test files).
pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// Waits until the prefix holds nothing but the keys every deployment keeps (the
/// marker, heartbeats, the published config, the set of queues with delayed jobs,
/// and queue streams and the completions stream that are empty with nothing
/// pending): what a deleted or finished flow must leave behind.
pub async fn only_global_keys_left(prefix: &str) {
    let mut last = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        last = leftovers(prefix).await;
        if last.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("keys left behind under {prefix}: {last:?}");
}

/// What [`only_global_keys_left`] finds that should not be there.
pub async fn leftovers(prefix: &str) -> Vec<String> {
    let url = &testing::redis().url;
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut out = Vec::new();
    for key in testing::keys_matching(url, &format!("{prefix}:*")).await {
        let name = &key[prefix.len() + 1..];
        if matches!(name, "marker" | "workers" | "config" | "queues:delayed") {
            continue;
        }
        // A queue's counter of jobs handed out (take.lua) lives as long as the queue,
        // the limits' counter as long as the deployment, and a rate limit's state
        // expires by itself one period after its last job.
        if (name.starts_with("q:") && name.ends_with(":takes"))
            || name == "limits:seq"
            || (name.starts_with("rl:") && name.ends_with(":tat"))
        {
            continue;
        }
        let is_stream =
            name == "completions" || (name.starts_with("q:") && !name.ends_with(":delayed"));
        if !is_stream {
            out.push(key);
            continue;
        }
        let len: i64 = redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if len != 0 {
            out.push(format!("{key} (XLEN {len})"));
            continue;
        }
        let groups: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        for group in groups {
            let text = format!("{group:?}");
            // [name, n, consumers, n, pending, n, ...]
            if let redis::Value::Array(fields) = group {
                let mut it = fields.iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if matches!(k, redis::Value::BulkString(b) if b == b"pending")
                        && !matches!(v, redis::Value::Int(0))
                    {
                        out.push(format!("{key} (pending in {text})"));
                    }
                }
            }
        }
    }
    out
}
