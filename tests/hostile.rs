//! Hostile HTTP input against a real server on `127.0.0.1`, over real TCP: what
//! reqwest will not send (bad framing, invalid UTF-8, lying lengths, trickles) goes
//! out as raw bytes. Every request must get a clean 4xx (our JSON error shape, or
//! hyper's own bare 400/431 for what is not HTTP at all) or be cut off within a
//! bounded time; the server must stay healthy throughout and still run a flow at
//! the end. Each case prints what it measured.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a request that is refused by its headers alone may take, in a debug
/// build on a busy two-core machine. The server answers these in milliseconds.
const FAST: Duration = Duration::from_secs(2);
/// Slack on top of a server timeout before the test calls the connection not cut.
const CUT_SLACK: Duration = Duration::from_secs(5);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How one raw exchange ended.
#[derive(Debug)]
struct Raw {
    /// The status of the first response, if one came.
    status: Option<u16>,
    /// The response head.
    head: String,
    /// The response body (as far as its `Content-Length` says).
    body: String,
    /// Time from connecting to the end of the response, or to the cut.
    elapsed: Duration,
}

impl Raw {
    /// The body as JSON; panics when it is not.
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// Asserts the status and, for our own errors, the JSON error shape and code.
    fn expect(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, Some(status), "{self:?}");
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{self:?}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{self:?}"
        );
        body
    }

    /// A clean refusal: a 4xx whose body, if any, is our JSON error shape; or no
    /// response at all (the connection was cut).
    fn assert_clean(&self, what: &str) {
        let Some(status) = self.status else {
            return;
        };
        assert!((400..500).contains(&status), "{what}: {self:?}");
        if !self.body.is_empty() {
            let body: Value = serde_json::from_str(&self.body)
                .unwrap_or_else(|e| panic!("{what}: body not JSON ({e}): {self:?}"));
            assert!(body["error"]["code"].is_string(), "{what}: {self:?}");
        }
    }
}

/// Sends `head` and then `body` (from a separate task, so that a server that
/// answers before the body is in is seen doing so), and reads the first response
/// or the end of the connection. `body_pause` holds the body back (to show that the
/// answer needs only the head). Gives up after [`WAIT`].
async fn raw(addr: SocketAddr, head: &[u8], body: Vec<u8>, body_pause: Duration) -> Raw {
    let start = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(head).await.unwrap();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(body_pause).await;
        // The server may refuse and close before the body is in: not an error here.
        for chunk in body.chunks(64 * 1024) {
            if wr.write_all(chunk).await.is_err() {
                return;
            }
        }
        // Keep the write half open; dropping it would half-close the connection.
        std::future::pending::<()>().await;
    });
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if response_complete(&buf) {
                return;
            }
        }
    };
    let finished = tokio::time::timeout(WAIT, read).await.is_ok();
    writer.abort();
    assert!(finished, "no response and no cut within {WAIT:?}");
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Raw {
        status: head.split_whitespace().nth(1).and_then(|s| s.parse().ok()),
        head: head.to_owned(),
        body: body.to_owned(),
        elapsed,
    }
}

/// Whether `buf` holds a whole response (head and `Content-Length` bytes of body).
fn response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    body.len() >= len
}

/// A `POST /flows` head for a body of `len` bytes.
fn post_head(len: usize) -> Vec<u8> {
    format!(
        "POST /flows HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Sends `body` as `POST /flows` in one piece.
async fn post_raw(addr: SocketAddr, body: &[u8]) -> Raw {
    let mut request = post_head(body.len());
    request.extend_from_slice(body);
    raw(addr, &request, Vec::new(), Duration::ZERO).await
}

/// A request line and headers, with `Connection: close`.
async fn request_raw(addr: SocketAddr, method: &str, path: &str) -> Raw {
    let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    raw(addr, head.as_bytes(), Vec::new(), Duration::ZERO).await
}

/// A flow of `n` no-op nodes, as JSON text.
fn many_nodes(n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n * 40);
    s.push_str(r#"{"name":"big","nodes":["#);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(r#"{{"name":"n{i}","handler":"noop"}}"#));
    }
    s.push_str("]}");
    s.into_bytes()
}

/// `depth` nested arrays as node data.
fn nested(depth: usize) -> String {
    format!(
        r#"{{"nodes":[{{"name":"deep","handler":"echo","data":{}{}}}]}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

/// Checks `/healthz` answers 200 quickly.
async fn assert_healthy(api: &Api) {
    let start = Instant::now();
    let (status, body) = api.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        start.elapsed() < FAST,
        "/healthz took {:?}",
        start.elapsed()
    );
}

/// A two-node echo flow, run to completion: the server still runs flows.
async fn assert_runs_flows(api: &Api) {
    let id = api
        .create_flow(&json!({"name": "after the barrage", "nodes": [
            {"name": "a", "handler": "echo", "data": {"n": 1}},
            {"name": "b", "handler": "echo", "parents": ["a"], "data": {"n": 2}}
        ]}))
        .await;
    let flow = api.wait_for_status(&id, "completed").await;
    let b = flow["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "b")
        .unwrap();
    assert_eq!(b["result"]["data"], json!({"n": 2}), "{flow:#}");
    assert_eq!(
        b["result"]["parents"]["a"]["data"],
        json!({"n": 1}),
        "{flow:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_mistyped_bodies_are_clean_4xx() {
    let server = start_server(ServerOpts::default()).await;
    let addr = server.addr;
    let api = server.api();

    // Malformed JSON: 400 naming the line and column.
    for (what, body) in [
        ("truncated", &br#"{"nodes": [{"name": "a""#[..]),
        ("trailing comma", br#"{"nodes": [{"name": "a",}]}"#),
        ("single quotes", br#"{'nodes': []}"#),
        ("bare word", b"nodes"),
        ("NaN", br#"{"nodes": [{"name": "a", "data": NaN}]}"#),
        ("empty body", b""),
        ("NUL bytes", b"\0\0\0\0"),
        ("two documents", br#"{"nodes": []} {"nodes": []}"#),
    ] {
        let r = post_raw(addr, body).await;
        let e = r.expect(400, "malformed_json");
        assert!(e["error"]["details"]["line"].is_u64(), "{what}: {r:?}");
        println!("malformed JSON ({what}): {:?} in {:?}", r.status, r.elapsed);
    }

    // Invalid UTF-8, inside a string and outside one: malformed JSON, 400.
    for (what, body) in [
        (
            "in a name",
            &b"{\"nodes\": [{\"name\": \"\xff\xfe\", \"handler\": \"noop\"}]}"[..],
        ),
        (
            "lone continuation byte",
            b"{\"nodes\": [{\"name\": \"a\x80b\"}]}",
        ),
        (
            "overlong encoding",
            b"{\"nodes\": [{\"name\": \"\xc0\xaf\"}]}",
        ),
        (
            "surrogate in UTF-8",
            b"{\"nodes\": [{\"name\": \"\xed\xa0\x80\"}]}",
        ),
        ("outside a string", b"\xff{\"nodes\": []}"),
    ] {
        let r = post_raw(addr, body).await;
        r.expect(400, "malformed_json");
        println!("invalid UTF-8 ({what}): {:?} in {:?}", r.status, r.elapsed);
    }
    // An escaped lone surrogate is valid JSON syntax but not a Rust string.
    let r = post_raw(
        addr,
        br#"{"nodes": [{"name": "\ud800", "handler": "noop"}]}"#,
    )
    .await;
    r.assert_clean("escaped lone surrogate");
    println!("escaped lone surrogate: {:?} in {:?}", r.status, r.elapsed);

    // JSON of the wrong shape or types: 422 with one problem that says where.
    for (what, body) in [
        ("nodes as a string", json!({"nodes": "a,b,c"})),
        ("nodes as an object", json!({"nodes": {"a": {}}})),
        (
            "attempts as a string",
            json!({"nodes": [{"name": "a", "handler": "noop", "opts": {"attempts": "3"}}]}),
        ),
        (
            "attempts negative",
            json!({"nodes": [{"name": "a", "handler": "noop", "opts": {"attempts": -1}}]}),
        ),
        (
            "attempts huge",
            json!({"nodes": [{"name": "a", "handler": "noop", "opts": {"attempts": 1e300}}]}),
        ),
        (
            "name as a number",
            json!({"nodes": [{"name": 7, "handler": "noop"}]}),
        ),
        (
            "parents as a string",
            json!({"nodes": [{"name": "a", "handler": "noop", "parents": "b"}]}),
        ),
        ("a node as null", json!({"nodes": [null]})),
        ("top-level array", json!([{"name": "a"}])),
        ("top-level string", json!("flow")),
        ("top-level null", Value::Null),
        (
            "unknown field",
            json!({"nodes": [{"name": "a", "handler": "noop"}], "evil": true}),
        ),
    ] {
        let r = post_raw(addr, body.to_string().as_bytes()).await;
        let e = r.expect(422, "invalid_flow");
        assert!(
            e["error"]["details"]["problems"]
                .as_array()
                .is_some_and(|p| !p.is_empty()),
            "{what}: {r:?}"
        );
        println!("wrong type ({what}): {:?} in {:?}", r.status, r.elapsed);
    }

    // Deep nesting: serde_json's recursion limit refuses it without recursing far.
    for depth in [1_000, 100_000] {
        let start = Instant::now();
        let r = post_raw(addr, nested(depth).as_bytes()).await;
        let e = r.expect(400, "malformed_json");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("recursion"),
            "{r:?}"
        );
        assert!(
            start.elapsed() < FAST,
            "{depth} levels took {:?}",
            start.elapsed()
        );
        println!(
            "{depth} nested arrays in data: {:?} in {:?}",
            r.status, r.elapsed
        );
    }
    let objects = format!(
        r#"{{"nodes":[{{"name":"deep","handler":"echo","data":{}1{}}}]}}"#,
        r#"{"a":"#.repeat(100_000),
        "}".repeat(100_000)
    );
    let r = post_raw(addr, objects.as_bytes()).await;
    r.expect(400, "malformed_json");
    println!(
        "100000 nested objects in data: {:?} in {:?}",
        r.status, r.elapsed
    );
    // Nesting as the whole body: refused as soon as it is seen not to be a flow
    // (a flow may be written as an array of its fields, so `[` starts a 422) or at
    // the recursion limit.
    let top = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let unclosed = "[".repeat(500_000);
    let objects = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    for (what, body) in [
        ("100000 nested arrays as the body", top),
        ("500000 unclosed brackets as the body", unclosed),
        ("100000 nested objects as the body", objects),
    ] {
        let r = post_raw(addr, body.as_bytes()).await;
        assert!(matches!(r.status, Some(400 | 422)), "{what}: {r:?}");
        r.assert_clean(what);
        assert!(r.elapsed < FAST, "{what} took {:?}", r.elapsed);
        println!("{what}: {:?} in {:?}", r.status, r.elapsed);
    }

    // Deep but within the limit: accepted, and the flow runs (echo returns it).
    let r = post_raw(addr, nested(100).as_bytes()).await;
    assert_eq!(r.status, Some(201), "{r:?}");
    let id = r.json()["flowId"].as_str().unwrap().to_owned();
    let flow = api.wait_for_status(&id, "completed").await;
    let mut v = &flow["nodes"][0]["result"]["data"];
    let mut depth = 0;
    while let Some(inner) = v.as_array().and_then(|a| a.first()) {
        v = inner;
        depth += 1;
    }
    assert_eq!(depth, 99, "the nested data came back changed");
    println!("100 nested arrays: 201, the flow completed with its data intact");

    assert_healthy(&api).await;
    assert_runs_flows(&api).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_names_are_refused_fast() {
    let server = start_server(ServerOpts::default()).await;
    let addr = server.addr;
    let api = server.api();

    // 10 MiB: refused from Content-Length alone, answered while the body is held
    // back, so the server cannot have buffered it.
    let ten = 10 * 1024 * 1024;
    let r = raw(
        addr,
        &post_head(ten),
        vec![b' '; ten],
        Duration::from_secs(60),
    )
    .await;
    r.expect(413, "payload_too_large");
    assert!(r.elapsed < FAST, "413 took {:?}", r.elapsed);
    println!("10 MiB body (held back): {:?} in {:?}", r.status, r.elapsed);
    // The same, the body sent at once.
    let r = raw(addr, &post_head(ten), vec![b' '; ten], Duration::ZERO).await;
    r.expect(413, "payload_too_large");
    assert!(r.elapsed < FAST, "413 took {:?}", r.elapsed);
    println!(
        "10 MiB body (sent at once): {:?} in {:?}",
        r.status, r.elapsed
    );
    // A Content-Length past u64: hyper refuses the head.
    let head =
        b"POST /flows HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n";
    let r = raw(addr, head, Vec::new(), Duration::ZERO).await;
    r.assert_clean("content-length past u64");
    println!("Content-Length past u64: {:?} in {:?}", r.status, r.elapsed);

    // 100,000 nodes (3.7 MB): over the 1 MiB default limit, 413 at once.
    let body = many_nodes(100_000);
    let r = raw(addr, &post_head(body.len()), body.clone(), Duration::ZERO).await;
    r.expect(413, "payload_too_large");
    assert!(r.elapsed < FAST, "413 took {:?}", r.elapsed);
    println!(
        "100000 nodes ({} bytes), default limit: {:?} in {:?}",
        body.len(),
        r.status,
        r.elapsed
    );

    // Huge names, each within the body limit: 422, and the answer does not echo
    // the megabyte back.
    let mb = "n".repeat(1_000_000);
    for (what, spec) in [
        (
            "node name",
            json!({"nodes": [{"name": mb, "handler": "noop"}]}),
        ),
        (
            "flow name",
            json!({"name": mb, "nodes": [{"name": "a", "handler": "noop"}]}),
        ),
        (
            "parent name",
            json!({"nodes": [{"name": "a", "handler": "noop", "parents": [mb]}]}),
        ),
        (
            "child name",
            json!({"nodes": [{"name": "a", "handler": "noop", "children": [mb]}]}),
        ),
        (
            "handler name",
            json!({"nodes": [{"name": "a", "handler": mb}]}),
        ),
        (
            "queue name",
            json!({"nodes": [{"name": "a", "handler": "noop", "queue": mb}]}),
        ),
        (
            "node name, with bad options",
            json!({"nodes": [{"name": mb, "handler": "", "queue": "",
                "opts": {"attempts": 0, "timeoutMs": 0}}]}),
        ),
        (
            "unknown field",
            json!({"nodes": [{"name": "a", "handler": "noop", mb.as_str(): 1}]}),
        ),
        (
            "backoff type",
            json!({"nodes": [{"name": "a", "handler": "noop",
                "opts": {"backoff": {"type": mb, "delayMs": 1}}}]}),
        ),
    ] {
        let r = post_raw(addr, spec.to_string().as_bytes()).await;
        r.assert_clean(what);
        assert!(r.status.is_some(), "{what}: cut off instead of answered");
        assert!(
            r.body.len() < 16 * 1024,
            "a 1 MB {what} was answered with {} bytes",
            r.body.len()
        );
        assert!(r.elapsed < FAST, "1 MB {what} took {:?}", r.elapsed);
        println!(
            "1 MB {what}: {:?} ({} bytes of answer) in {:?}",
            r.status,
            r.body.len(),
            r.elapsed
        );
    }
    // A 1 MB node name in the path, and a 1 MB header: hyper refuses the head (431
    // or 414) or cuts the connection, without the server reading on.
    let id = dagflow::engine::FlowId::new();
    let r = request_raw(addr, "GET", &format!("/flows/{id}/nodes/{mb}")).await;
    r.assert_clean("1 MB path");
    println!("1 MB path: {:?} in {:?}", r.status, r.elapsed);
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {mb}\r\n\r\n");
    let r = raw(addr, head.as_bytes(), Vec::new(), Duration::ZERO).await;
    r.assert_clean("1 MB header");
    println!("1 MB header: {:?} in {:?}", r.status, r.elapsed);
    let many: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let r = raw(addr, head.as_bytes(), Vec::new(), Duration::ZERO).await;
    r.assert_clean("10000 headers");
    println!("10000 headers: {:?} in {:?}", r.status, r.elapsed);

    assert_healthy(&api).await;
    assert_runs_flows(&api).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_nodes_under_a_large_limit_are_422_quickly() {
    // A limit large enough for the body to be read and parsed: the node limit
    // refuses it before any per-node work.
    let server = start_server(ServerOpts {
        body_limit: Some(16 * 1024 * 1024),
        ..ServerOpts::default()
    })
    .await;
    let body = many_nodes(100_000);
    let r = post_raw(server.addr, &body).await;
    let e = r.expect(422, "invalid_flow");
    let problems = e["error"]["details"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{e}");
    assert_eq!(problems[0]["code"], "too_many_nodes", "{e}");
    assert!(
        r.elapsed < Duration::from_secs(5),
        "100000 nodes took {:?} to refuse",
        r.elapsed
    );
    println!(
        "100000 nodes ({} bytes), 16 MiB limit: {:?} too_many_nodes in {:?}",
        body.len(),
        r.status,
        r.elapsed
    );
    assert_healthy(&server.api()).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_routes_methods_and_bad_framing() {
    let server = start_server(ServerOpts::default()).await;
    let addr = server.addr;
    let api = server.api();
    let unknown = dagflow::engine::FlowId::new();
    let long = "x".repeat(16 * 1024);

    // Unknown ids, valid or not: 404 flow_not_found on every flow route.
    for id in [
        unknown.to_string(),
        "not-a-uuid".to_owned(),
        "00000000-0000-0000-0000-000000000000".to_owned(),
        "%ff%fe".to_owned(),
        "%00".to_owned(),
        "..%2f..%2fetc".to_owned(),
        long.clone(),
    ] {
        for (method, path) in [
            ("GET", format!("/flows/{id}")),
            ("DELETE", format!("/flows/{id}")),
            ("POST", format!("/flows/{id}/cancel")),
            ("POST", format!("/flows/{id}/retry")),
            ("GET", format!("/flows/{id}/nodes/a")),
        ] {
            let r = request_raw(addr, method, &path).await;
            let e = r.expect(404, "flow_not_found");
            let message = e["error"]["message"].as_str().unwrap();
            assert!(message.len() < 512, "the id was echoed whole: {message}");
            assert!(r.elapsed < FAST, "{method} took {:?}", r.elapsed);
        }
    }
    println!("unknown ids (valid, invalid, percent-garbage, 16 KiB): 404 flow_not_found");
    // Past hyper's URI limit (64 KiB) the head itself is refused.
    let r = request_raw(addr, "GET", &format!("/flows/{}", "x".repeat(70_000))).await;
    r.assert_clean("70 KB id");
    println!("70 KB id: {:?} in {:?}", r.status, r.elapsed);
    // A node name that is not valid percent-encoded UTF-8: 400, not a crash.
    let id = api.create_flow(&single("noop", Value::Null)).await;
    let r = request_raw(addr, "GET", &format!("/flows/{id}/nodes/%ff%fe")).await;
    r.assert_clean("invalid node name");
    println!("node name %ff%fe: {:?}", r.status);

    // Unknown routes: 404.
    for path in [
        "/nope",
        "/flows/a/b/c/d/e",
        "/../../etc/passwd",
        "//flows",
        "/%00",
        "/flows?",
    ] {
        let r = request_raw(addr, "GET", path).await;
        if path == "/flows?" {
            assert_eq!(r.status, Some(200), "{r:?}");
            continue;
        }
        r.expect(404, "not_found");
    }
    let r = request_raw(addr, "OPTIONS", "*").await;
    r.assert_clean("OPTIONS *");
    println!("unknown routes: 404 not_found; OPTIONS *: {:?}", r.status);

    // Known paths, wrong methods: 405, extension methods included.
    for (method, path) in [
        ("PUT", "/flows".to_owned()),
        ("PATCH", format!("/flows/{unknown}")),
        ("DELETE", "/flows".to_owned()),
        ("GET", format!("/flows/{unknown}/cancel")),
        ("POST", "/healthz".to_owned()),
        ("POST", "/ws".to_owned()),
        ("BREW", "/flows".to_owned()),
        ("TRACE", "/flows".to_owned()),
    ] {
        let r = request_raw(addr, method, &path).await;
        r.expect(405, "method_not_allowed");
    }
    println!("wrong methods (PUT, PATCH, DELETE, GET, POST, BREW, TRACE): 405");

    // Chunked bodies: 411 as documented, answered before the body arrives.
    let chunked = b"POST /flows HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                    Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let mut body = Vec::new();
    for _ in 0..160 {
        body.extend_from_slice(b"10000\r\n");
        body.extend_from_slice(&[b' '; 0x10000]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let r = raw(addr, chunked, body.clone(), Duration::from_secs(60)).await;
    r.expect(411, "length_required");
    assert!(r.elapsed < FAST, "411 took {:?}", r.elapsed);
    println!(
        "chunked 10 MiB (held back): {:?} in {:?}",
        r.status, r.elapsed
    );
    let r = raw(addr, chunked, body, Duration::ZERO).await;
    r.expect(411, "length_required");
    println!(
        "chunked 10 MiB (sent at once): {:?} in {:?}",
        r.status, r.elapsed
    );
    // Both Transfer-Encoding and Content-Length (request smuggling): refused.
    let smuggle = b"POST /flows HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
                    Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let r = raw(addr, smuggle, Vec::new(), Duration::ZERO).await;
    r.assert_clean("TE + CL");
    assert_ne!(r.status, Some(200), "{r:?}");
    println!("Transfer-Encoding + Content-Length: {:?}", r.status);
    // Bad chunk framing.
    let bad = b"POST /flows HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n";
    let r = raw(addr, bad, Vec::new(), Duration::ZERO).await;
    r.assert_clean("bad chunk size");
    println!("bad chunk size: {:?}", r.status);
    // A body shorter than its Content-Length, then the client half-closes.
    let short = {
        let stream = TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        let (mut rd, mut wr) = stream.into_split();
        wr.write_all(&post_head(1000)).await.unwrap();
        wr.write_all(b"{\"nodes\":").await.unwrap();
        wr.shutdown().await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, rd.read_to_end(&mut buf))
            .await
            .expect("a half-closed short body was never answered or closed")
            .ok();
        (String::from_utf8_lossy(&buf).into_owned(), start.elapsed())
    };
    assert!(
        short.0.is_empty() || short.0.starts_with("HTTP/1.1 4"),
        "{short:?}"
    );
    println!("body shorter than Content-Length, half-closed: {short:?}");

    // Not HTTP at all: hyper's bare 400, or a cut.
    for (what, bytes) in [
        (
            "binary",
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        ),
        ("bad request line", b"HELLO\r\n\r\n"),
        ("HTTP/9.9", b"GET / HTTP/9.9\r\n\r\n"),
        ("bad header", b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n"),
        (
            "NUL in header",
            b"GET /healthz HTTP/1.1\r\nHost: \0\r\n\r\n",
        ),
        (
            "h2 preface then junk",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\ngarbage-garbage-garbage",
        ),
    ] {
        let r = raw(addr, bytes, Vec::new(), Duration::ZERO).await;
        r.assert_clean(what);
        assert!(r.elapsed < FAST, "{what} took {:?}", r.elapsed);
        println!("{what}: {:?} in {:?}", r.status, r.elapsed);
    }
    // A non-UTF-8 Idempotency-Key: 400.
    let mut head = b"POST /flows HTTP/1.1\r\nHost: x\r\nIdempotency-Key: \xff\xfe\r\n\
                     Content-Type: application/json\r\nConnection: close\r\n"
        .to_vec();
    let body = single("noop", Value::Null).to_string();
    head.extend_from_slice(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    let r = raw(addr, &head, Vec::new(), Duration::ZERO).await;
    r.expect(400, "invalid_header");
    println!("non-UTF-8 Idempotency-Key: {:?}", r.status);

    assert_healthy(&api).await;
    assert_runs_flows(&api).await;
    server.stop().await;
}

/// How a trickling connection ended.
#[derive(Debug)]
struct Trickle {
    /// When the server closed the connection (or refused a write), if it did.
    cut_after: Option<Duration>,
    /// Bytes the client got through.
    sent: usize,
    /// What the server answered before closing, if anything.
    answer: String,
}

/// Sends `prefix`, then one byte of `drip` (cycled) every `every`, until the server
/// closes the connection or `give_up` passes.
async fn trickle(
    addr: SocketAddr,
    prefix: Vec<u8>,
    drip: &'static [u8],
    every: Duration,
    give_up: Duration,
) -> Trickle {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&prefix).await.unwrap();
    let mut sent = prefix.len();
    let mut answer = Vec::new();
    let mut tick = tokio::time::interval(every);
    let mut buf = [0u8; 4096];
    let mut i = 0;
    let cut_after = loop {
        if start.elapsed() > give_up {
            break None;
        }
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => break Some(start.elapsed()),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick(), if !drip.is_empty() => {
                if stream.write_all(&drip[i % drip.len()..][..1]).await.is_err() {
                    break Some(start.elapsed());
                }
                sent += 1;
                i += 1;
            }
            _ = tokio::time::sleep(every), if drip.is_empty() => {}
        }
    };
    Trickle {
        cut_after,
        sent,
        answer: String::from_utf8_lossy(&answer).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_and_others_are_served() {
    let server = start_server(ServerOpts::default()).await;
    let addr = server.addr;
    let api = server.api();
    let header_bound = HEADER_READ_TIMEOUT + CUT_SLACK;
    let body_bound = BODY_READ_TIMEOUT + CUT_SLACK;
    let give_up = body_bound + CUT_SLACK;
    let every = Duration::from_millis(200);

    let idle = tokio::spawn(trickle(addr, Vec::new(), b"", every, give_up));
    let headers = tokio::spawn(trickle(
        addr,
        b"GET /flows HTTP/1.1\r\nHost: x\r\n".to_vec(),
        b"X-Slow: aaaaaaaaaaaaaaaa\r\n",
        every,
        give_up,
    ));
    let request_line = tokio::spawn(trickle(addr, Vec::new(), b"GET /flows", every, give_up));
    // "P" could be the start of HTTP/2's preface: the protocol is not known yet.
    let h2_prefix = tokio::spawn(trickle(addr, b"PRI * HTT".to_vec(), b"", every, give_up));
    let body = tokio::spawn(trickle(
        addr,
        post_head(100_000),
        b"{\"nodes\": [                ",
        every,
        give_up,
    ));
    // Between requests on a kept-alive connection: the next head must come in time too.
    let keep_alive = tokio::spawn(trickle(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"",
        every,
        give_up,
    ));

    // Meanwhile everyone else is served promptly.
    let served = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(AtomicU64::new(0));
    let others = {
        let (api, served, slowest) = (api.clone(), Arc::clone(&served), Arc::clone(&slowest));
        tokio::spawn(async move {
            loop {
                let start = Instant::now();
                let (status, _) = api.get("/flows?limit=5").await;
                assert_eq!(status, StatusCode::OK);
                let ms = u64::try_from(start.elapsed().as_millis()).unwrap();
                slowest.fetch_max(ms, Ordering::Relaxed);
                served.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut failures = Vec::new();
    for (what, task, bound) in [
        ("idle connection", idle, header_bound),
        ("request line trickle", request_line, header_bound),
        ("header trickle", headers, header_bound),
        ("h2-preface prefix, then silence", h2_prefix, header_bound),
        (
            "idle after one kept-alive request",
            keep_alive,
            header_bound,
        ),
        ("body trickle", body, body_bound),
    ] {
        let t = task.await.unwrap();
        let status = t.answer.split_whitespace().nth(1).unwrap_or("-").to_owned();
        match t.cut_after {
            Some(cut) if cut <= bound => println!(
                "slowloris {what}: cut after {cut:?} ({} bytes sent, answer status {status})",
                t.sent
            ),
            Some(cut) => {
                failures.push(format!("{what}: cut after {cut:?}, bound {bound:?}: {t:?}"))
            }
            None => failures.push(format!("{what}: not cut after {give_up:?}: {t:?}")),
        }
    }
    others.abort();
    let (served, slowest) = (
        served.load(Ordering::Relaxed),
        slowest.load(Ordering::Relaxed),
    );
    println!("meanwhile: {served} other requests served, slowest {slowest} ms");
    assert!(served >= 20, "only {served} requests served meanwhile");
    assert!(slowest < 2000, "a request took {slowest} ms meanwhile");
    assert!(
        failures.is_empty(),
        "not cut in time:\n{}",
        failures.join("\n")
    );

    assert_healthy(&api).await;
    assert_runs_flows(&api).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrage_of_garbage_connections_leaves_the_server_healthy() {
    let server = start_server(ServerOpts {
        body_limit: Some(64 * 1024),
        ..ServerOpts::default()
    })
    .await;
    let addr = server.addr;
    let api = server.api();
    const CONNECTIONS: usize = 300;

    let health_checks = Arc::new(AtomicU64::new(0));
    let slowest_health = Arc::new(AtomicU64::new(0));
    let health = {
        let (api, count, slowest) = (
            api.clone(),
            Arc::clone(&health_checks),
            Arc::clone(&slowest_health),
        );
        tokio::spawn(async move {
            loop {
                let start = Instant::now();
                let (status, body) = api.get("/healthz").await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let ms = u64::try_from(start.elapsed().as_millis()).unwrap();
                slowest.fetch_max(ms, Ordering::Relaxed);
                count.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let big = vec![b'x'; 1024 * 1024];
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let big = big.clone();
            tokio::spawn(async move {
                let (what, r) = match i % 10 {
                    0 => ("binary", raw(addr, &[0x16, 0x03, 0x01, 0xff, 0x00, 0xff], Vec::new(), Duration::ZERO).await),
                    1 => ("malformed JSON", post_raw(addr, b"{\"nodes\": [").await),
                    2 => ("wrong types", post_raw(addr, br#"{"nodes": "x"}"#).await),
                    3 => ("over the limit", raw(addr, &post_head(big.len()), big, Duration::ZERO).await),
                    4 => ("invalid UTF-8", post_raw(addr, b"{\"nodes\": [{\"name\": \"\xff\"}]}").await),
                    5 => ("deep nesting", post_raw(addr, nested(50_000).as_bytes()).await),
                    6 => ("unknown flow", request_raw(addr, "GET", "/flows/nope").await),
                    7 => ("wrong method", request_raw(addr, "PATCH", "/flows").await),
                    8 => {
                        let head = b"POST /flows HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
                        ("chunked", raw(addr, head, b"5\r\nhello\r\n0\r\n\r\n".to_vec(), Duration::ZERO).await)
                    }
                    _ => {
                        // Half a request, then nothing: cut by the header timeout.
                        ("half a head", raw(addr, b"GET /flows HTTP/1.1\r\nHo", Vec::new(), Duration::ZERO).await)
                    }
                };
                r.assert_clean(what);
                if i % 10 != 9 {
                    assert!(r.status.is_some(), "{what}: no answer: {r:?}");
                }
                (what, r.status, r.elapsed)
            })
        })
        .collect();
    let mut worst: std::collections::BTreeMap<&str, (Option<u16>, Duration)> = Default::default();
    for task in tasks {
        let (what, status, elapsed) = task.await.unwrap();
        let entry = worst.entry(what).or_insert((status, elapsed));
        entry.1 = entry.1.max(elapsed);
    }
    let total = start.elapsed();
    assert!(
        !health.is_finished(),
        "the health check failed: {:?}",
        health.await
    );
    health.abort();
    let (checks, slowest) = (
        health_checks.load(Ordering::Relaxed),
        slowest_health.load(Ordering::Relaxed),
    );
    println!("meanwhile /healthz: {checks} checks, all 200, slowest {slowest} ms");
    assert!(
        slowest < 2000,
        "/healthz took {slowest} ms during the barrage"
    );
    for (what, (status, slowest)) in &worst {
        println!("barrage {what}: {status:?}, slowest {slowest:?}");
    }
    println!("barrage: {CONNECTIONS} hostile connections done in {total:?}");
    assert!(
        total <= HEADER_READ_TIMEOUT + CUT_SLACK,
        "the barrage took {total:?}"
    );

    assert_healthy(&api).await;
    assert_runs_flows(&api).await;
    server.stop().await;
}
