//! The REST API end to end: a real server on port 0 over a real engine (test Redis
//! with a unique prefix, temp sled dir, built-in handlers), driven over HTTP.
//!
//! Every answer goes through [`schema::Checked`]: its status, content type,
//! headers and body are held against the `/openapi.json` the same server
//! publishes, so a test that passes also shows the document tells the truth.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/schema.rs"]
mod schema;

use common::*;
use dagflow::engine::testing;
use reqwest::{Method, StatusCode};
use schema::{Checked, CheckedWs, OpenApi};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pipeline_completes_and_save_gets_both_results() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let id = api.create_flow(&image_pipeline()).await;
    let flow = api.wait_for_status(&id, "completed").await;

    assert_eq!(flow["id"], id);
    assert_eq!(flow["name"], "image pipeline");
    let nodes = flow["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    for node in nodes {
        assert_eq!(node["status"], "completed", "{node}");
        assert_eq!(node["attempt"], 1);
        assert_eq!(node["queue"], "default");
        assert_eq!(node["handler"], "echo");
        assert!(node["jobId"].as_str().unwrap().starts_with(&id));
        assert!(node["finishedAt"].as_u64().unwrap() >= node["startedAt"].as_u64().unwrap());
    }
    assert_eq!(
        nodes[3]["parents"],
        json!(["resize-image", "add-watermark"])
    );
    assert_eq!(
        nodes[0]["children"],
        json!(["resize-image", "add-watermark"])
    );
    // Start, then queued + active + completed for each node, then the end.
    assert_eq!(flow["seq"], 1 + 4 * 3 + 1);

    let (status, save) = api.get(&format!("/flows/{id}/nodes/save-to-s3")).await;
    assert_eq!(status, StatusCode::OK, "{save}");
    let input = &save["input"];
    assert_eq!(input["data"], json!({"bucket": "images"}));
    let url = json!("https://example.com/a.png");
    for parent in ["resize-image", "add-watermark"] {
        // Each parent echoed its own input, which held download-image's result.
        let result = &input["parents"][parent];
        assert_eq!(
            result["parents"]["download-image"]["data"]["url"], url,
            "{parent}: {result}"
        );
    }
    assert_eq!(
        input["parents"]["resize-image"]["data"],
        json!({"width": 800})
    );
    assert_eq!(
        input["parents"]["add-watermark"]["data"],
        json!({"text": "(c)"})
    );
    assert_eq!(save["result"], *input, "echo returns its input");

    // A node name with a space, percent-encoded in the path.
    let spaced = json!({"nodes": [{"name": "a b", "handler": "noop"}]});
    let id2 = api.create_flow(&spaced).await;
    api.wait_for_status(&id2, "completed").await;
    let (status, node) = api.get(&format!("/flows/{id2}/nodes/a%20b")).await;
    assert_eq!(status, StatusCode::OK, "{node}");
    assert_eq!(node["name"], "a b");
    server.stop().await;
}

/// Asserts the JSON error shape and returns `error`.
fn error_of(status: StatusCode, body: &Value, expected: StatusCode, code: &str) -> Value {
    assert_eq!(status, expected, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error.get("details").is_some(), "{body}");
    error.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_its_status_and_the_json_shape() {
    let server = start_server(ServerOpts {
        body_limit: Some(4096),
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;

    // 400: malformed JSON, saying where.
    let (s, b) = api
        .send(
            api.request(Method::POST, "/flows")
                .header("content-type", "application/json")
                .body("{\n  \"nodes\": [\n    {\"name\": \"a\",}\n  ]\n}"),
        )
        .await;
    let e = error_of(s, &b, StatusCode::BAD_REQUEST, "malformed_json");
    assert_eq!(e["details"]["line"], 3, "{e}");
    assert!(e["details"]["column"].as_u64().unwrap() > 0);
    assert!(e["message"].as_str().unwrap().contains("line 3"), "{e}");

    // 415: not declared as JSON: curl -d's form type, no type at all, another
    // JSON-ish type, JSON in another charset. The body is a valid flow each time.
    let valid = single("noop", Value::Null).to_string();
    for content_type in [
        Some("application/x-www-form-urlencoded"),
        None,
        Some("text/plain"),
        Some("application/vnd.dagflow+json"),
        Some("text/json"),
        Some("application/json; charset=iso-8859-1"),
    ] {
        let mut request = api.request(Method::POST, "/flows").body(valid.clone());
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let (s, b) = api.send(request).await;
        let e = error_of(
            s,
            &b,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
        assert!(
            e["message"].as_str().unwrap().contains("application/json"),
            "{content_type:?}: {e}"
        );
    }
    // application/json with a UTF-8 charset, in any case: accepted.
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON;Charset=\"UTF-8\"",
    ] {
        let (s, b) = api
            .send(
                api.request(Method::POST, "/flows")
                    .header("content-type", content_type)
                    .body(valid.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{content_type}: {b}");
    }

    // 413: over the configured limit, refused from Content-Length alone.
    let big = json!({"nodes": [{"name": "a", "data": {"pad": "x".repeat(8000)}}]});
    let (s, b) = api.post("/flows", &big).await;
    error_of(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // 411: a chunked body has no length to check against the limit.
    let (status, text) = raw_http(
        server.addr,
        b"POST /flows HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 411, "{text}");
    assert!(text.contains("\"length_required\""), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let body: Value = serde_json::from_str(body).unwrap();
    let documented = &api.openapi.doc["paths"]["/flows"]["post"]["responses"]["411"];
    api.openapi.assert_fits(
        &documented["content"]["application/json"]["schema"],
        &body,
        "411",
    );

    // 422: an invalid DAG, every problem listed.
    let bad = json!({"nodes": [
        {"name": "a", "parents": ["c"]},
        {"name": "b", "parents": ["a"]},
        {"name": "c", "parents": ["b"]},
        {"name": "d", "parents": ["ghost"]},
        {"name": "d"}
    ]});
    let (s, b) = api.post("/flows", &bad).await;
    let e = error_of(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_flow");
    let codes: Vec<&str> = e["details"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert!(codes.len() >= 3, "{e}");
    assert!(codes.iter().any(|c| c.contains("cycle")), "{codes:?}");
    assert!(codes.iter().any(|c| c.contains("duplicate")), "{codes:?}");
    assert!(codes.iter().any(|c| c.contains("unknown")), "{codes:?}");
    // JSON that is not a flow spec at all: also 422.
    let (s, b) = api.post("/flows", &json!({"nodez": []})).await;
    error_of(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_flow");
    let (s, b) = api.post("/flows", &json!({"nodes": []})).await;
    error_of(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_flow");

    // 404: unknown flow (well-formed or not), node, route.
    let unknown = dagflow::engine::FlowId::new();
    let (s, b) = api.get(&format!("/flows/{unknown}")).await;
    error_of(s, &b, StatusCode::NOT_FOUND, "flow_not_found");
    let (s, b) = api.get("/flows/not-an-id").await;
    error_of(s, &b, StatusCode::NOT_FOUND, "flow_not_found");
    let (s, b) = api.post_empty(&format!("/flows/{unknown}/cancel")).await;
    error_of(s, &b, StatusCode::NOT_FOUND, "flow_not_found");
    let id = api.create_flow(&single("noop", Value::Null)).await;
    api.wait_for_status(&id, "completed").await;
    let (s, b) = api.get(&format!("/flows/{id}/nodes/nope")).await;
    error_of(s, &b, StatusCode::NOT_FOUND, "node_not_found");
    let (s, b) = api.get("/no/such/route").await;
    error_of(s, &b, StatusCode::NOT_FOUND, "not_found");

    // 405: a known path, a method it does not take; `Allow` names the ones it does.
    for (method, path, allow) in [
        (Method::PUT, "/flows".to_owned(), "GET, HEAD, POST, OPTIONS"),
        (
            Method::PATCH,
            format!("/flows/{id}"),
            "GET, HEAD, DELETE, OPTIONS",
        ),
        (Method::POST, "/healthz".to_owned(), "GET, HEAD, OPTIONS"),
        (Method::GET, format!("/flows/{id}/cancel"), "POST, OPTIONS"),
        (
            Method::DELETE,
            format!("/flows/{id}/nodes/only"),
            "GET, HEAD, OPTIONS",
        ),
        (Method::HEAD, "/ws".to_owned(), "GET, OPTIONS"),
        (Method::POST, "/".to_owned(), "GET, OPTIONS"),
    ] {
        let (s, headers, b) = api.send_full(api.request(method.clone(), &path)).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if method != Method::HEAD {
            error_of(s, &b, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        }
        assert_eq!(headers["allow"], allow, "{method} {path}");
    }

    // 409: actions that do not fit the flow's state.
    let (s, b) = api.post_empty(&format!("/flows/{id}/cancel")).await;
    error_of(s, &b, StatusCode::CONFLICT, "conflict");
    let (s, b) = api.post_empty(&format!("/flows/{id}/retry")).await;
    error_of(s, &b, StatusCode::CONFLICT, "conflict");

    // 400: bad query parameters and headers.
    for query in [
        "status=bogus",
        "limit=0",
        "limit=x",
        "cursor=nope",
        "colour=red",
    ] {
        let (s, b) = api.get(&format!("/flows?{query}")).await;
        error_of(s, &b, StatusCode::BAD_REQUEST, "invalid_query");
    }
    let (s, b) = api
        .send(
            api.request(Method::POST, "/flows")
                .header("idempotency-key", "k".repeat(300))
                .json(&single("noop", Value::Null)),
        )
        .await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "invalid_header");
    // A plain GET on the WebSocket endpoint.
    let (s, b) = api.get("/ws").await;
    error_of(s, &b, StatusCode::BAD_REQUEST, "websocket_upgrade_required");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_options_are_served_on_every_path() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let id = api.create_flow(&single("noop", Value::Null)).await;
    api.wait_for_status(&id, "completed").await;
    // HEAD: GET's status and headers, no body.
    for path in [
        "/healthz".to_owned(),
        "/readyz".to_owned(),
        "/flows?limit=1".to_owned(),
        "/flows/counts".to_owned(),
        format!("/flows/{id}"),
        format!("/flows/{id}/nodes/only"),
        "/metrics".to_owned(),
        "/openapi.json".to_owned(),
    ] {
        let (get_status, get_headers, _) = api.send_full(api.request(Method::GET, &path)).await;
        let (s, headers, body) = api.send_full(api.request(Method::HEAD, &path)).await;
        assert_eq!(s, get_status, "HEAD {path}");
        assert_eq!(body, Value::Null, "HEAD {path} sent a body");
        assert_eq!(
            headers.get("content-type"),
            get_headers.get("content-type"),
            "HEAD {path}"
        );
    }
    let unknown = dagflow::engine::FlowId::new();
    let (s, _, body) = api
        .send_full(api.request(Method::HEAD, &format!("/flows/{unknown}")))
        .await;
    assert_eq!((s, body), (StatusCode::NOT_FOUND, Value::Null));
    // OPTIONS: 204 and `Allow`, listing every method the document has for the path.
    for (path, allow) in [
        ("/flows".to_owned(), "GET, HEAD, POST, OPTIONS"),
        ("/flows/counts".to_owned(), "GET, HEAD, OPTIONS"),
        (format!("/flows/{id}"), "GET, HEAD, DELETE, OPTIONS"),
        (format!("/flows/{id}/nodes/only"), "GET, HEAD, OPTIONS"),
        (format!("/flows/{id}/cancel"), "POST, OPTIONS"),
        (format!("/flows/{id}/retry"), "POST, OPTIONS"),
        ("/healthz".to_owned(), "GET, HEAD, OPTIONS"),
        ("/metrics".to_owned(), "GET, HEAD, OPTIONS"),
        ("/ws".to_owned(), "GET, OPTIONS"),
    ] {
        let (s, headers, body) = api.send_full(api.request(Method::OPTIONS, &path)).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "OPTIONS {path}");
        assert_eq!(body, Value::Null);
        assert_eq!(headers["allow"], allow, "OPTIONS {path}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_accepted_exactly_as_published() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let doc = &api.openapi.doc;
    let list_params = doc["paths"]["/flows"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let param = |name: &str| {
        list_params
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))["schema"]
            .clone()
    };
    assert_eq!(param("limit")["minimum"], 1);
    assert_eq!(param("limit")["maximum"], 1000);
    let id = api.create_flow(&single("noop", Value::Null)).await;
    // Inside the published bounds: accepted. Outside: 400.
    for query in [
        "limit=1".to_owned(),
        "limit=1000".to_owned(),
        format!("cursor={id}"),
        format!("cursor={}", id.to_uppercase()),
        "status=running".to_owned(),
    ] {
        let (s, b) = api.get(&format!("/flows?{query}")).await;
        assert_eq!(s, StatusCode::OK, "{query}: {b}");
    }
    let simple = id.replace('-', "");
    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=1.5",
        &format!("cursor={simple}"),
    ] {
        let (s, b) = api.get(&format!("/flows?{query}")).await;
        error_of(s, &b, StatusCode::BAD_REQUEST, "invalid_query");
    }
    // The Idempotency-Key: 1 to 256 visible ASCII bytes.
    let key = &doc["paths"]["/flows"]["post"]["parameters"][0];
    assert_eq!(key["name"], "Idempotency-Key");
    assert_eq!(key["schema"]["minLength"], 1);
    assert_eq!(key["schema"]["maxLength"], 256);
    for (value, ok) in [
        ("k".repeat(256), true),
        ("a b".to_owned(), true),
        (String::new(), false),
        ("k".repeat(257), false),
    ] {
        let (s, b) = api
            .send(
                api.request(Method::POST, "/flows")
                    .header("idempotency-key", value.clone())
                    .json(&single("noop", Value::Null)),
            )
            .await;
        if ok {
            assert_eq!(s, StatusCode::CREATED, "{value:?}: {b}");
        } else {
            error_of(s, &b, StatusCode::BAD_REQUEST, "invalid_header");
        }
    }
    // The checker is not toothless: what the schema forbids does not pass.
    let openapi = &api.openapi;
    let node = json!({"name": "a", "status": "pending", "attempt": 0, "queue": "default",
        "handler": "a", "parents": [], "children": []});
    assert!(openapi.component_fits("NodeView", &node));
    for (field, bad) in [
        ("status", json!("sleeping")),
        ("jobId", Value::Null),
        ("attempt", json!(-1)),
    ] {
        let mut wrong = node.clone();
        wrong[field] = bad;
        assert!(!openapi.component_fits("NodeView", &wrong), "{wrong}");
    }
    let mut missing = node.clone();
    missing.as_object_mut().unwrap().remove("queue");
    assert!(!openapi.component_fits("NodeView", &missing));
    let event = json!({"type": "flow:updated", "flowId": id, "status": "active", "attempt": 1,
        "seq": 2, "ts": 3, "progress": null});
    assert!(openapi.component_fits("ServerMessage", &event));
    assert!(!openapi.component_fits("ServerMessage", &json!({"type": "flow:updated"})));
    assert!(!openapi.component_fits("ServerMessage", &json!({"type": "dance"})));
    // `nodes` must not be empty, as `minItems` says.
    let spec = &doc["components"]["schemas"]["FlowSpec"];
    assert_eq!(spec["properties"]["nodes"]["minItems"], 1);
    let (s, b) = api.post("/flows", &json!({"nodes": []})).await;
    error_of(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_flow");
    // Optional fields absent and the full form: both accepted, both fit the schema.
    let full = json!({
        "name": "full",
        "nodes": [
            {"name": "a", "handler": "noop", "queue": "default", "data": null, "children": ["b"],
             "opts": {"attempts": 2, "backoff": {"type": "fixed", "delayMs": 0}, "timeoutMs": 1000,
                      "continueOnFailure": true, "maxStalled": 1}},
            {"name": "b", "handler": "echo", "parents": ["a"], "continueOnFailure": false}
        ],
        "opts": {"onFailure": "failFast"}
    });
    for spec in [json!({"nodes": [{"name": "x", "handler": "noop"}]}), full] {
        api.openapi.assert_component("FlowSpec", &spec);
        let id = api.create_flow(&spec).await;
        api.wait_for_status(&id, "completed").await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_503_and_readiness_follows_it() {
    let redis = testing::TestRedis::dedicated();
    let server = start_server(ServerOpts {
        redis_url: Some(redis.url.clone()),
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    let (s, b) = api.get("/readyz").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["checks"], json!({"redis": "ok", "store": "ok"}));
    let done = api.create_flow(&single("noop", Value::Null)).await;
    api.wait_for_status(&done, "completed").await;

    redis.stop();
    // The engine's watchdog looks every 500 ms: a create in that gap is accepted
    // (durable, run once Redis is back); after it, every create is refused.
    let stopped = tokio::time::Instant::now();
    let mut accepted = Vec::new();
    let e = loop {
        let (s, b) = api.post("/flows", &single("noop", Value::Null)).await;
        if s == StatusCode::CREATED {
            assert!(
                stopped.elapsed() < std::time::Duration::from_secs(3),
                "still accepting flows {:?} after redis stopped",
                stopped.elapsed()
            );
            accepted.push(b["flowId"].as_str().unwrap().to_owned());
            tokio::time::sleep(POLL).await;
            continue;
        }
        break error_of(s, &b, StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable");
    };
    assert!(!e["message"].as_str().unwrap().contains("127.0.0.1"), "{e}");
    let (s, b) = api.delete(&format!("/flows/{done}")).await;
    error_of(s, &b, StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable");
    let (s, b) = api.get("/readyz").await;
    let e = error_of(s, &b, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    assert_eq!(e["details"]["checks"]["store"], "ok");
    assert_ne!(e["details"]["checks"]["redis"], "ok");
    // Liveness and reads do not need Redis.
    assert_eq!(api.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(api.flow(&done).await["status"], "completed");

    redis.start();
    eventually("readiness after redis is back", || async {
        api.get("/readyz").await.0 == StatusCode::OK
    })
    .await;
    // The engine notices on its own schedule (a watchdog) that Redis is back.
    let deadline = tokio::time::Instant::now() + WAIT;
    let id = loop {
        let (s, b) = api.post("/flows", &single("noop", Value::Null)).await;
        if s == StatusCode::CREATED {
            break b["flowId"].as_str().unwrap().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "flows still refused: {b}"
        );
        tokio::time::sleep(POLL).await;
    };
    api.wait_for_status(&id, "completed").await;
    for id in &accepted {
        api.wait_for_status(id, "completed").await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_same_flow() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let spec = single("noop", Value::Null);
    let create = |key: &'static str| {
        let api = api.clone();
        let spec = spec.clone();
        async move {
            api.send(
                api.request(Method::POST, "/flows")
                    .header("idempotency-key", key)
                    .json(&spec),
            )
            .await
        }
    };
    let (s1, b1) = create("order-42").await;
    let (s2, b2) = create("order-42").await;
    assert_eq!(s1, StatusCode::CREATED, "{b1}");
    assert_eq!(s2, StatusCode::CREATED, "{b2}");
    assert_eq!(b1["flowId"], b2["flowId"]);
    let (_, b3) = create("order-43").await;
    assert_ne!(b1["flowId"], b3["flowId"]);
    let (_, page) = api.get("/flows").await;
    assert_eq!(page["flows"].as_array().unwrap().len(), 2, "{page}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_with_a_cursor_and_filters_by_status() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(api.create_flow(&single("noop", Value::Null)).await);
    }
    for id in &ids {
        api.wait_for_status(id, "completed").await;
    }
    let sleeping = api
        .create_flow(&single("sleep", json!({"ms": 60_000})))
        .await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/flows?status=completed&limit=2&cursor={c}"),
            None => "/flows?status=completed&limit=2".to_owned(),
        };
        let (s, page) = api.get(&path).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        pages += 1;
        let flows = page["flows"].as_array().unwrap();
        assert!(flows.len() <= 2);
        for f in flows {
            assert_eq!(f["status"], "completed");
            assert_eq!(f["nodesTotal"], 1);
            assert_eq!(f["nodesDone"], 1);
            seen.push(f["id"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    // Newest first, each once.
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);

    let (_, running) = api.get("/flows?status=running").await;
    let running: Vec<&str> = running["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(running, [sleeping.as_str()]);
    let (_, all) = api.get("/flows").await;
    assert_eq!(all["flows"].as_array().unwrap().len(), 6);
    assert!(all.get("nextCursor").is_none(), "{all}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_searches_names_and_times_and_counts_per_status() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let named = |name: &str, handler: &str| json!({"name": name, "nodes": [{"name": "only", "handler": handler}]});
    let etl = api.create_flow(&named("Nightly-ETL", "noop")).await;
    api.wait_for_status(&etl, "completed").await;
    let broken = api.create_flow(&named("etl-broken", "fail")).await;
    api.wait_for_status(&broken, "failed").await;
    let report = api.create_flow(&named("report", "noop")).await;
    let report_flow = api.wait_for_status(&report, "completed").await;

    let ids = |page: &Value| -> Vec<String> {
        page["flows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // The name search ignores case, and goes with the status filter.
    let (s, page) = api.get("/flows?q=eTl").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), [broken.clone(), etl.clone()]);
    let (_, page) = api.get("/flows?q=etl&status=failed").await;
    assert_eq!(ids(&page), [broken.as_str()]);
    let (_, page) = api.get("/flows?q=etl&limit=1").await;
    assert_eq!(ids(&page), [broken.as_str()]);
    let cursor = page["nextCursor"].as_str().unwrap().to_owned();
    let (_, page) = api
        .get(&format!("/flows?q=etl&limit=1&cursor={cursor}"))
        .await;
    assert_eq!(ids(&page), [etl.as_str()]);
    assert!(page.get("nextCursor").is_none(), "{page}");
    // Creation times: `createdAfter` takes its own ms, `createdBefore` does not.
    let at = report_flow["createdAt"].as_u64().unwrap();
    let (_, page) = api.get(&format!("/flows?createdAfter={at}")).await;
    assert_eq!(ids(&page), [report.as_str()]);
    let (_, page) = api
        .get(&format!("/flows?createdBefore={at}&q=report"))
        .await;
    assert_eq!(ids(&page), Vec::<String>::new());

    let (s, counts) = api.get("/flows/counts").await;
    assert_eq!(s, StatusCode::OK, "{counts}");
    assert_eq!(
        counts,
        json!({"running": 0, "completed": 2, "failed": 1, "cancelled": 0})
    );
    let (_, counts) = api.get("/flows/counts?q=ETL").await;
    assert_eq!(
        counts,
        json!({"running": 0, "completed": 1, "failed": 1, "cancelled": 0})
    );
    let (_, counts) = api
        .get(&format!("/flows/counts?createdAfter={}", at + 1))
        .await;
    assert_eq!(
        counts,
        json!({"running": 0, "completed": 0, "failed": 0, "cancelled": 0})
    );
    for bad in [
        "/flows/counts?status=failed",
        "/flows/counts?createdAfter=soon",
        "/flows?createdBefore=-5",
    ] {
        let (s, body) = api.get(bad).await;
        error_of(s, &body, StatusCode::BAD_REQUEST, "invalid_query");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_sleeping_flow() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let spec = json!({"nodes": [
        {"name": "nap", "handler": "sleep", "data": {"ms": 60_000}},
        {"name": "after", "handler": "noop", "parents": ["nap"]}
    ]});
    let id = api.create_flow(&spec).await;
    api.wait_for_node(&id, "nap", "active").await;
    let started = std::time::Instant::now();
    let (s, flow) = api.post_empty(&format!("/flows/{id}/cancel")).await;
    assert_eq!(s, StatusCode::OK, "{flow}");
    let flow = api.wait_for_status(&id, "cancelled").await;
    assert!(
        started.elapsed().as_secs() < 20,
        "cancel waited for the sleep"
    );
    for node in flow["nodes"].as_array().unwrap() {
        assert_eq!(node["status"], "cancelled", "{node}");
    }
    let (s, b) = api.post_empty(&format!("/flows/{id}/cancel")).await;
    error_of(s, &b, StatusCode::CONFLICT, "conflict");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_reruns_a_failed_flow() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let spec = json!({"nodes": [
        {"name": "flaky", "handler": "fail", "data": {"message": "first try fails", "times": 1}},
        {"name": "after", "handler": "echo", "parents": ["flaky"]}
    ]});
    let id = api.create_flow(&spec).await;
    let failed = api.wait_for_status(&id, "failed").await;
    assert_eq!(failed["nodes"][0]["status"], "failed");
    assert_eq!(failed["nodes"][0]["attempt"], 1);
    assert_eq!(failed["nodes"][0]["error"], "first try fails");
    assert_eq!(failed["nodes"][1]["status"], "skipped");

    let (s, b) = api.post_empty(&format!("/flows/{id}/retry")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let done = api.wait_for_status(&id, "completed").await;
    assert_eq!(done["nodes"][0]["attempt"], 2);
    let (_, after) = api.get(&format!("/flows/{id}/nodes/after")).await;
    assert_eq!(after["input"]["parents"]["flaky"], json!({"attempt": 2}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_flow_and_its_redis_keys() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let id = api
        .create_flow(&single("sleep", json!({"ms": 60_000})))
        .await;
    api.wait_for_node(&id, "only", "active").await;
    assert!(
        server.redis_keys().await.iter().any(|k| k.contains(&id)),
        "a running flow has keys"
    );
    let (s, b) = api.delete(&format!("/flows/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    assert_eq!(b, Value::Null);
    eventually("the flow's keys to vanish", || async {
        !server.redis_keys().await.iter().any(|k| k.contains(&id))
    })
    .await;
    let (s, b) = api.get(&format!("/flows/{id}")).await;
    error_of(s, &b, StatusCode::NOT_FOUND, "flow_not_found");
    let (s, b) = api.delete(&format!("/flows/{id}")).await;
    error_of(s, &b, StatusCode::NOT_FOUND, "flow_not_found");
    let (_, page) = api.get("/flows").await;
    assert_eq!(page["flows"], json!([]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_everything_but_health() {
    let server = start_server(ServerOpts {
        api_token: Some("s3cret-token".to_owned()),
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    let anonymous = api.with_token(None);
    let wrong = api.with_token(Some("s3cret-tokeN"));
    for client in [&anonymous, &wrong] {
        for path in ["/flows", "/metrics", "/openapi.json", "/flows/x", "/ws"] {
            let (s, b) = client.get(path).await;
            error_of(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
        }
        let (s, b) = client.post("/flows", &single("noop", Value::Null)).await;
        error_of(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let (s, _) = anonymous
        .send(
            anonymous
                .request(Method::GET, "/flows")
                .header("authorization", "Basic czNjcmV0LXRva2Vu"),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(anonymous.get("/readyz").await.0, StatusCode::OK);

    let id = api.create_flow(&single("noop", Value::Null)).await;
    api.wait_for_status(&id, "completed").await;
    assert_eq!(api.get("/metrics").await.0, StatusCode::OK);

    // WebSocket: refused without the token, accepted with the header or `?token=`.
    let refused = WsClient::connect(&server.ws_url, None).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("connected without a token"),
    }
    assert!(
        WsClient::connect(&format!("{}?token=nope", server.ws_url), None)
            .await
            .is_err()
    );
    let by_query = WsClient::connect(&format!("{}?token=s3cret-token", server.ws_url), None)
        .await
        .unwrap();
    let mut by_query = CheckedWs::wrap(by_query, &api.openapi);
    by_query.subscribe(&id).await;
    assert_eq!(by_query.recv_json().await["type"], "snapshot");
    let mut by_header = CheckedWs::connect(&server, &api.openapi).await;
    by_header.subscribe(&id).await;
    assert_eq!(by_header.recv_json().await["flow"]["status"], "completed");

    // The document says so: every operation but the health checks wants the
    // bearer token and documents its 401 (the checked client above held every 401
    // against that).
    let doc = &api.openapi.doc;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let open = path == "/healthz" || path == "/readyz";
            assert_eq!(op.get("security").is_none(), open, "{method} {path}");
            assert_eq!(
                op["responses"].get("401").is_none(),
                open,
                "{method} {path}"
            );
        }
    }
    server.stop().await;

    // Without a token configured, no header is needed, and the document names no
    // scheme and no 401.
    let open = start_server(ServerOpts::default()).await;
    let open_api = Checked::new(&open).await;
    assert_eq!(open_api.get("/flows").await.0, StatusCode::OK);
    let doc = open_api.openapi.doc.to_string();
    assert!(!doc.contains("securitySchemes") && !doc.contains("\"security\""));
    assert!(!doc.contains("\"401\""));
    open.stop().await;
}

/// The value of the sample `series` (name and labels, exactly) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_openapi() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let metrics = || async {
        let (s, headers, body) = api.send_full(api.request(Method::GET, "/metrics")).await;
        assert_eq!(s, StatusCode::OK);
        let content_type = headers["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        body.as_str().unwrap().to_owned()
    };
    // Before anything happened, every family and every known label value is there, at zero.
    let first = metrics().await;
    for series in [
        "dagflow_flows_started_total",
        "dagflow_flows_retried_total",
        "dagflow_node_retries_total",
        "dagflow_metrics_events_missed_total",
        "dagflow_flows_finished_total{outcome=\"completed\"}",
        "dagflow_flows_finished_total{outcome=\"failed\"}",
        "dagflow_flows_finished_total{outcome=\"cancelled\"}",
        "dagflow_nodes_finished_total{outcome=\"completed\"}",
        "dagflow_nodes_finished_total{outcome=\"failed\"}",
        "dagflow_nodes_finished_total{outcome=\"skipped\"}",
        "dagflow_nodes_finished_total{outcome=\"cancelled\"}",
        "dagflow_node_run_seconds_count{outcome=\"completed\"}",
        "dagflow_node_run_seconds_count{outcome=\"failed\"}",
        "dagflow_node_run_seconds_count{outcome=\"retried\"}",
        "dagflow_node_run_seconds_sum{outcome=\"completed\"}",
        "dagflow_node_run_seconds_bucket{outcome=\"completed\",le=\"+Inf\"}",
        "dagflow_flows_running",
        "dagflow_ws_sessions",
        "dagflow_queue_depth{queue=\"default\",state=\"ready\"}",
        "dagflow_queue_depth{queue=\"default\",state=\"delayed\"}",
    ] {
        assert_eq!(sample(&first, series), Some(0.0), "{series} in:\n{first}");
    }
    // The metrics task itself reads the event feed.
    assert!(
        sample(&first, "dagflow_event_subscribers").is_some_and(|n| n >= 1.0),
        "{first}"
    );
    let ok = api.create_flow(&image_pipeline()).await;
    api.wait_for_status(&ok, "completed").await;
    let bad = api
        .create_flow(&single("fail", json!({"message": "no"})))
        .await;
    api.wait_for_status(&bad, "failed").await;
    let _ws = CheckedWs::connect(&server, &api.openapi).await;

    eventually("metrics to count both flows", || async {
        let text = metrics().await;
        text.contains("dagflow_flows_finished_total{outcome=\"failed\"} 1")
            && text.contains("dagflow_flows_finished_total{outcome=\"completed\"} 1")
            && text.contains("dagflow_flows_running 0")
    })
    .await;
    let text = metrics().await;
    for series in [
        "dagflow_flows_started_total 2",
        "dagflow_nodes_finished_total{outcome=\"completed\"} 4",
        "dagflow_nodes_finished_total{outcome=\"failed\"} 1",
        "dagflow_node_run_seconds_bucket{outcome=\"completed\",le=\"+Inf\"} 4",
        "dagflow_node_run_seconds_count{outcome=\"failed\"} 1",
        "dagflow_queue_depth{queue=\"default\",state=\"ready\"}",
        "dagflow_queue_depth{queue=\"default\",state=\"delayed\"} 0",
        "dagflow_ws_sessions 1",
        "# TYPE dagflow_node_run_seconds histogram",
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    // Four echo runs of well under a millisecond each: their sum is not rounded
    // away to 0.
    let sum = sample(&text, "dagflow_node_run_seconds_sum{outcome=\"completed\"}").unwrap();
    assert!(sum > 0.0 && sum < 4.0, "{sum} in:\n{text}");

    let (s, b) = api.get("/healthz").await;
    assert_eq!((s, b), (StatusCode::OK, json!({"status": "ok"})));
    let (s, doc) = api.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/flows/{id}/nodes/{name}"]["get"].is_object());
    assert!(doc["components"]["schemas"]["FlowView"]["properties"]["seq"].is_object());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_work_under_warp_test() {
    let server = start_server(ServerOpts::default()).await;
    let routes = dagflow::api::routes(
        server.engine.clone(),
        dagflow::api::ApiConfig {
            api_token: Some("t".to_owned()),
            ..dagflow::api::ApiConfig::default()
        },
    );
    // Each answer is checked against the document these routes publish.
    let doc = warp::test::request()
        .path("/openapi.json")
        .header("authorization", "Bearer t")
        .reply(&routes)
        .await;
    assert_eq!(doc.status(), 200);
    let openapi = OpenApi::from_doc(serde_json::from_slice(doc.body()).unwrap());
    let check = |method: Method, path: &str, response: &warp::http::Response<bytes::Bytes>| {
        let body = if response.body().is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(response.body()).unwrap()
        };
        let headers = response.headers().clone();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        openapi.check_response(&method, path, status, &headers, &body);
        body
    };
    let health = warp::test::request().path("/healthz").reply(&routes).await;
    assert_eq!(health.status(), 200);
    check(Method::GET, "/healthz", &health);
    let denied = warp::test::request().path("/flows").reply(&routes).await;
    assert_eq!(denied.status(), 401);
    check(Method::GET, "/flows", &denied);
    let created = warp::test::request()
        .method("POST")
        .path("/flows")
        .header("authorization", "Bearer t")
        .json(&single("noop", Value::Null))
        .reply(&routes)
        .await;
    assert_eq!(created.status(), 201);
    let body = check(Method::POST, "/flows", &created);
    let id = body["flowId"].as_str().unwrap();
    Checked::new(&server)
        .await
        .wait_for_status(id, "completed")
        .await;
    let debug = format!(
        "{:?}",
        dagflow::api::ApiConfig {
            api_token: Some("hunter2".to_owned()),
            ..dagflow::api::ApiConfig::default()
        }
    );
    assert!(!debug.contains("hunter2"), "{debug}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_submitted_spec_is_served_as_parsed() {
    let server = start_server(ServerOpts::default()).await;
    let api = Checked::new(&server).await;
    let spec = json!({
        "name": "spec back",
        "nodes": [
            {"name": "first", "handler": "echo", "data": {"n": 1, "nested": {"list": [1, 2]}}},
            {"name": "second", "handler": "noop", "parents": ["first"], "queue": "default",
             "opts": {"attempts": 2, "backoff": {"type": "fixed", "delayMs": 10}}}
        ],
        "opts": {"onFailure": "continue"}
    });
    let id = api.create_flow(&spec).await;
    // `Checked` holds the answer against the documented FlowSpec schema.
    let (status, served) = api.get(&format!("/flows/{id}/spec")).await;
    assert_eq!(status, StatusCode::OK, "{served}");
    assert_eq!(served["name"], "spec back");
    let nodes = served["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{served}");
    assert_eq!(nodes[0]["name"], "first");
    assert_eq!(nodes[0]["data"], spec["nodes"][0]["data"]);
    assert_eq!(nodes[1]["parents"], json!(["first"]));
    assert_eq!(nodes[1]["opts"]["attempts"], 2, "{served}");
    assert_eq!(served["opts"]["onFailure"], "continue", "{served}");
    // It is a spec the server takes again as it is: the same flow.
    let again = api.create_flow(&served).await;
    let (_, again_spec) = api.get(&format!("/flows/{again}/spec")).await;
    assert_eq!(again_spec, served);
    // HEAD as GET; OPTIONS lists GET alone.
    let (s, _, body) = api
        .send_full(api.request(Method::HEAD, &format!("/flows/{id}/spec")))
        .await;
    assert_eq!((s, body), (StatusCode::OK, Value::Null));
    let (s, headers, _) = api
        .send_full(api.request(Method::OPTIONS, &format!("/flows/{id}/spec")))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(headers["allow"], "GET, HEAD, OPTIONS");
    // An unknown id and a string that is no id: 404, as for the flow itself.
    let unknown = dagflow::engine::FlowId::new();
    let (s, b) = api.get(&format!("/flows/{unknown}/spec")).await;
    error_of(s, &b, StatusCode::NOT_FOUND, "flow_not_found");
    let (s, b) = api.get("/flows/not-an-id/spec").await;
    error_of(s, &b, StatusCode::NOT_FOUND, "flow_not_found");
    // A deleted flow's spec is gone with it.
    api.wait_for_status(&id, "completed").await;
    let (s, _) = api.delete(&format!("/flows/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = api.get(&format!("/flows/{id}/spec")).await;
    error_of(s, &b, StatusCode::NOT_FOUND, "flow_not_found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_route_wants_the_token() {
    let server = start_server(ServerOpts {
        api_token: Some("spec-token".to_owned()),
        ..ServerOpts::default()
    })
    .await;
    let api = Checked::new(&server).await;
    let id = api.create_flow(&single("noop", Value::Null)).await;
    let (s, b) = api.with_token(None).get(&format!("/flows/{id}/spec")).await;
    error_of(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, b) = api.get(&format!("/flows/{id}/spec")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    server.stop().await;
}
