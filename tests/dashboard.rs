//! The dashboard end to end: real servers (test Redis, temp sled dir, built-in
//! handlers), the embedded page served at `/`, and a real headless Chromium driven
//! by `tests/dashboard/e2e.mjs` (playwright-core with the system Chromium).
//!
//! Needs `chromium` (Debian package; or `CHROMIUM_PATH`), `node` and
//! `npm ci --prefix tests/dashboard`. When one is missing the test fails and says
//! what to install: it never skips.
//!
//! `DASHBOARD_SCREENSHOT=docs/dashboard.png cargo test --test dashboard` also saves
//! the README's screenshot of a flow page from the run, and
//! `DASHBOARD_MAP_SCREENSHOT=docs/dashboard-map.png` one of a map group expanded mid-run,
//! `DASHBOARD_TIMELINE_SCREENSHOT=docs/dashboard-timeline.png` one of a flow's timeline,
//! and `DASHBOARD_BIG_SCREENSHOT=docs/dashboard-big.png` one of a 1,000-node flow at Fit
//! mid-run.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

/// The token of the guarded server.
const TOKEN: &str = "dashboard-test-token";
/// Longest the browser script may take (it normally takes well under a minute).
const BROWSER_DEADLINE: Duration = Duration::from_secs(300);

/// Kills the browser script if the test ends early (a panic while it runs).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

/// Checks that the browser, node and playwright-core are there, with a message
/// saying how to install whichever is not.
fn require_tools() -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists(),
        "Chromium not found at {}: install it (`apt-get install -y chromium chromium-driver`) \
         or set CHROMIUM_PATH",
        chromium.display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "`node` is not runnable ({node:?}): install Node.js 20 or later (`apt-get install -y nodejs npm`)"
    );
    let playwright = script_dir().join("node_modules/playwright-core/package.json");
    if !playwright.exists() {
        // `cargo test --workspace` is the whole test command: fetch the script's one
        // npm dependency (pinned by package-lock.json) instead of failing on it.
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(script_dir())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "`npm ci --prefix tests/dashboard` failed: install npm and check the registry"
        );
    }
    assert!(
        playwright.exists(),
        "playwright-core is not installed: run `npm ci --prefix tests/dashboard`"
    );
    chromium
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let chromium = require_tools();
    let plain = start_server(ServerOpts::default()).await;
    let guarded = start_server(ServerOpts {
        api_token: Some(TOKEN.to_owned()),
        ..ServerOpts::default()
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let stdout_path = out.path().join("stdout.log");
    let stderr_path = out.path().join("stderr.log");
    let mut cmd = Command::new("node");
    cmd.arg("e2e.mjs")
        .current_dir(script_dir())
        .env("DAGFLOW_URL", &plain.base_url)
        .env("DAGFLOW_TOKEN_URL", &guarded.base_url)
        .env("DAGFLOW_TOKEN", TOKEN)
        .env("CHROMIUM_PATH", &chromium)
        .env("DASHBOARD_ARTIFACTS", out.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    for var in [
        "DASHBOARD_SCREENSHOT",
        "DASHBOARD_MAP_SCREENSHOT",
        "DASHBOARD_NARROW_SCREENSHOT",
        "DASHBOARD_DARK_SCREENSHOT",
        "DASHBOARD_TIMELINE_SCREENSHOT",
        "DASHBOARD_BIG_SCREENSHOT",
    ] {
        if let Some(shot) = std::env::var_os(var) {
            // Relative to the crate, not to the script's directory.
            cmd.env(var, Path::new(env!("CARGO_MANIFEST_DIR")).join(shot));
        }
    }
    let started = Instant::now();
    let mut child = KillOnDrop(cmd.spawn().expect("spawning `node e2e.mjs`"));
    // Poll, so that this runtime keeps serving the page while the browser works.
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > BROWSER_DEADLINE {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(child);
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    println!("{stdout}");
    let report = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    let status = status.unwrap_or_else(|| {
        panic!("the browser test did not finish within {BROWSER_DEADLINE:?}\n{report}",)
    });
    assert!(
        status.success(),
        "the browser test failed ({status})\n{report}"
    );
    let result: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|json| serde_json::from_str(json).unwrap())
        .unwrap_or_else(|| panic!("no RESULT line\n{report}"));
    println!("browser test took {:.1} s", started.elapsed().as_secs_f64());

    // What the page did, seen from the API.
    let api = plain.api();
    let id = |key: &str| result[key].as_str().unwrap().to_owned();
    let diamond = api.flow(&id("diamond")).await;
    assert_eq!(diamond["status"], "completed");
    let (status, d) = api.get(&format!("/flows/{}/nodes/d", id("diamond"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(d["result"]["parents"]["b"]["sleptMs"], 600, "{d}");
    let flaky = api.flow(&id("flaky")).await;
    assert_eq!(flaky["status"], "completed", "retried from the page");
    let (status, _) = api.get(&format!("/flows/{}", id("slow"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleted from the page");
    let big = api.flow(&id("big")).await;
    assert_eq!(big["status"], "completed");
    assert_eq!(big["nodes"].as_array().unwrap().len(), 1000);
    assert_eq!(api.flow(&id("liveRow")).await["status"], "completed");
    // Big flows (bigflow.mjs): the runs the page watched, as the API saw them.
    assert_eq!(api.flow(&id("bigFanOut")).await["status"], "completed");
    let ten = api.flow(&id("bigTenThousand")).await;
    assert_eq!(
        ten["status"], "cancelled",
        "cancelled from the page's test once measured"
    );
    assert_eq!(ten["nodes"].as_array().unwrap().len(), 10_000);

    // The map, wait and re-run flow, as the page left it.
    let map_flow = api.flow(&id("mapFlow")).await;
    assert_eq!(map_flow["status"], "completed", "{map_flow}");
    let nodes = map_flow["nodes"].as_array().unwrap();
    let node = |name: &str| nodes.iter().find(|n| n["name"] == name).unwrap();
    // Re-run from the page from collect, then from the map node above it.
    assert_eq!(node("collect")["attempt"], 3, "re-run from the page twice");
    assert_eq!(node("resize")["attempt"], 2, "the map re-run from the page");
    assert_eq!(node("crawl")["attempt"], 1, "upstream of both re-runs");
    assert_eq!(node("resize")["map"]["total"], 20);
    assert_eq!(node("resize")["map"]["done"], 20);
    let elements: Vec<&Value> = nodes.iter().filter(|n| n["mapOf"] == "resize").collect();
    assert_eq!(elements.len(), 20);
    assert!(elements.iter().all(|e| e["status"] == "completed"));
    assert_eq!(node("audit")["status"], "skipped");
    assert!(node("audit")["reason"]
        .as_str()
        .unwrap()
        .contains("is false"));
    // The last signal came over REST, after the map's re-run.
    assert_eq!(
        node("approve")["result"],
        serde_json::json!({ "ok": "final" })
    );
    assert_eq!(node("approve")["attempt"], 3);
    assert_eq!(node("publish")["status"], "completed");
    let failing = api.flow(&id("failingMap")).await;
    assert_eq!(failing["status"], "completed", "retried from the page");
    let nodes = failing["nodes"].as_array().unwrap();
    let flaky: Vec<&Value> = nodes.iter().filter(|n| n["mapOf"] == "flaky").collect();
    assert_eq!(flaky.len(), 6);
    assert!(
        flaky
            .iter()
            .all(|e| e["status"] == "completed" && e["attempt"] == 2),
        "every element ran again: {flaky:?}"
    );
    let wide = api.flow(&id("wideMap")).await;
    assert_eq!(wide["status"], "completed");
    assert_eq!(wide["nodes"].as_array().unwrap().len(), 4 + 1000);
    let huge = api.flow(&id("hugeMap")).await;
    assert_eq!(huge["status"], "cancelled", "cancelled from the page");
    assert_eq!(huge["nodes"].as_array().unwrap().len(), 3 + 10_000);
    // The queues scenario: a node its concurrency key cancelled keeps the reason,
    // and the queue the page showed is one the API knows.
    let by_key = api.flow(&id("cancelledByKey")).await;
    let job = common::node(&by_key, "job");
    assert_eq!(job["status"], "cancelled", "{by_key}");
    assert!(
        job["reason"].as_str().unwrap().contains("cancelNewest"),
        "{job}"
    );
    assert_eq!(job["concurrency"]["value"], "solo", "{job}");
    let (status, queue) = api.get("/queues/e2e-unserved").await;
    assert_eq!(status, StatusCode::OK, "{queue}");
    assert_eq!(queue["workers"], serde_json::json!([]), "{queue}");
    // The schedule the Schedules page paused, resumed and paused again.
    let (status, schedule) = api.get(&format!("/schedules/{}", id("schedule"))).await;
    assert_eq!(status, StatusCode::OK, "{schedule}");
    assert_eq!(schedule["paused"], true, "paused from the page: {schedule}");
    let (_, runs) = api
        .get(&format!("/schedules/{}/runs", id("schedule")))
        .await;
    assert!(runs["runs"].as_array().unwrap().len() >= 3, "{runs}");
    let (status, page) = guarded.api().get("/flows").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page["flows"][0]["name"], "guarded",
        "submitted with the token"
    );

    plain.stop().await;
    guarded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_assets_are_served_without_a_token() {
    let server = start_server(ServerOpts {
        api_token: Some(TOKEN.to_owned()),
        ..ServerOpts::default()
    })
    .await;
    let client = reqwest::Client::new();
    let res = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let header = |res: &reqwest::Response, name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header(&res, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&res, "cache-control"), "no-cache");
    assert!(header(&res, "content-security-policy").contains("script-src 'self'"));
    let etag = header(&res, "etag");
    let html = res.text().await.unwrap();

    let res = client
        .get(server.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);

    // Every asset the page names: the right type, cached for good, no token needed.
    let urls: Vec<&str> = html
        .split('"')
        .filter(|s| s.starts_with("/dashboard/"))
        .collect();
    // One per `{{name}}` placeholder of index.html, so adding an asset file needs
    // no change here.
    let placeholders = include_str!("../src/dashboard/assets/index.html")
        .matches("{{")
        .count();
    assert!(placeholders >= 4, "index.html names its assets");
    assert_eq!(urls.len(), placeholders, "{html}");
    for url in urls {
        let res = client.get(server.url(url)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{url}");
        let expected = if url.ends_with(".css") {
            "text/css; charset=utf-8"
        } else {
            "text/javascript; charset=utf-8"
        };
        assert_eq!(header(&res, "content-type"), expected, "{url}");
        assert_eq!(
            header(&res, "cache-control"),
            "public, max-age=31536000, immutable"
        );
        assert!(!res.bytes().await.unwrap().is_empty());
    }

    // The API itself still wants the token; unknown files and methods get the API's errors.
    let api = Api::new(&server.base_url, None);
    let (status, body) = api.get("/flows").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = api.get("/dashboard/missing.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = api.post("/", &serde_json::json!({})).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    let (status, _) = api.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}
