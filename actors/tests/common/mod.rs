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
