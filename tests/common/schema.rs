#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]
//! Checks what a running server sends against the OpenAPI document that same
//! server publishes at `/openapi.json`.
//!
//! - [`OpenApi`] holds the document and validates a value against any schema in
//!   it (JSON Schema 2020-12, `$ref`s resolved within the document, formats
//!   checked), or a whole response against its operation: the status must be
//!   documented, the content type must be the documented one, the documented
//!   required headers must be there, and the body must fit the schema.
//! - [`Checked`] is an HTTP client whose every call goes through that check, and
//!   [`CheckedWs`] a WebSocket client whose every message is checked against
//!   `ServerMessage`. The API and WebSocket tests use only these, so every answer
//!   they see has been held against the published contract.
//!
//! Included by `#[path = "common/schema.rs"] mod schema;` next to `mod common;`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonschema::{Draft, Validator};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Api, TestServer, WsClient, POLL, WAIT};

/// The published document and the validators built from it so far.
pub struct OpenApi {
    /// The document as `/openapi.json` served it.
    pub doc: Value,
    validators: Mutex<HashMap<String, Arc<Validator>>>,
}

/// Where a request went, as the document names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The path template (`/flows/{id}`), or `None` for a path the document does not have.
    pub template: Option<&'static str>,
    /// Lower-case method, as a key of the path item.
    pub method: String,
}

/// The paths the document describes, as templates; the first that fits is taken,
/// so a concrete path comes before a template it also fits (as OpenAPI matches).
const TEMPLATES: [&str; 14] = [
    "/flows",
    "/flows/counts",
    "/flows/{id}",
    "/flows/{id}/nodes/{name}",
    "/flows/{id}/nodes/{name}/signal",
    "/flows/{id}/nodes/{name}/rerun",
    "/flows/{id}/cancel",
    "/flows/{id}/retry",
    "/queues",
    "/queues/{name}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

impl Route {
    /// The template a concrete path (query string allowed) matches.
    pub fn of(method: &Method, path: &str) -> Route {
        let path = path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let template = TEMPLATES.into_iter().find(|t| {
            let parts: Vec<&str> = t.trim_start_matches('/').split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| p.starts_with('{') && !s.is_empty() || p == s)
        });
        Route {
            template,
            method: method.as_str().to_ascii_lowercase(),
        }
    }
}

impl OpenApi {
    /// Fetches the document from a running server (with its token, if any).
    pub async fn fetch(base_url: &str, token: Option<&str>) -> Arc<OpenApi> {
        let mut request = reqwest::Client::new().get(format!("{base_url}/openapi.json"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        OpenApi::from_doc(response.json().await.unwrap())
    }

    /// A document obtained some other way (`warp::test`).
    pub fn from_doc(doc: Value) -> Arc<OpenApi> {
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
        Arc::new(OpenApi {
            doc,
            validators: Mutex::new(HashMap::new()),
        })
    }

    /// The validator of `schema`, a schema whose `$ref`s point into the document.
    fn validator(&self, schema: &Value) -> Arc<Validator> {
        let key = schema.to_string();
        if let Some(v) = self.validators.lock().unwrap().get(&key) {
            return Arc::clone(v);
        }
        // The document is the root resource, so that `#/components/...` resolves;
        // its own keys (`openapi`, `paths`...) are no JSON Schema keywords and are
        // ignored. The schema to apply comes in through `allOf`.
        let mut root = self.doc.clone();
        root["allOf"] = json!([schema]);
        let validator = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("the published schema {schema} does not compile: {e}"));
        let validator = Arc::new(validator);
        self.validators
            .lock()
            .unwrap()
            .insert(key, Arc::clone(&validator));
        validator
    }

    /// Panics, listing every violation, unless `instance` fits `schema`.
    pub fn assert_fits(&self, schema: &Value, instance: &Value, what: &str) {
        let validator = self.validator(schema);
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("at {}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what} does not fit the published schema {schema}:\n{}\n{instance:#}",
            errors.join("\n")
        );
    }

    /// Whether `instance` fits the component schema `name`.
    pub fn component_fits(&self, name: &str, instance: &Value) -> bool {
        let schema = json!({ "$ref": format!("#/components/schemas/{name}") });
        self.validator(&schema).is_valid(instance)
    }

    /// Panics unless `instance` fits the component schema `name`.
    pub fn assert_component(&self, name: &str, instance: &Value) {
        let schema = json!({ "$ref": format!("#/components/schemas/{name}") });
        self.assert_fits(&schema, instance, name);
    }

    /// The documented response of an operation for `status`.
    fn response(&self, route: &Route, status: StatusCode) -> Option<&Value> {
        let template = route.template?;
        let responses = &self.doc["paths"][template][&route.method]["responses"];
        responses
            .get(status.as_str())
            .or_else(|| responses.get(format!("{}XX", status.as_u16() / 100)))
            .or_else(|| responses.get("default"))
    }

    /// Checks one response: status, content type, required headers and body.
    /// `body` is the parsed JSON (`Value::Null` for an empty body) or the text.
    pub fn check_response(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &Value,
    ) {
        let route = Route::of(method, path);
        let what = format!("{} {path} → {status}", method.as_str());
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
        let path_item = route.template.map(|t| &self.doc["paths"][t]);
        let documented_op = path_item.is_some_and(|item| item.get(&route.method).is_some());
        if !documented_op || *method == Method::HEAD {
            // Not an operation of the document: an unknown path, a method the path
            // does not take, or HEAD/OPTIONS, which the document leaves implicit.
            match status.as_u16() {
                405 => {
                    let allow = headers.get("allow").map(|v| v.to_str().unwrap().to_owned());
                    let allow = allow.unwrap_or_else(|| panic!("{what}: 405 without Allow"));
                    if let Some(item) = path_item {
                        for m in item.as_object().unwrap().keys() {
                            assert!(
                                allow.contains(&m.to_ascii_uppercase()),
                                "{what}: Allow {allow} lacks {m}"
                            );
                        }
                    }
                }
                204 if *method == Method::OPTIONS => {
                    assert!(
                        headers.contains_key("allow"),
                        "{what}: OPTIONS without Allow"
                    );
                }
                _ => {}
            }
            if status.as_u16() >= 400 && *method != Method::HEAD {
                assert_eq!(content_type.as_deref(), Some("application/json"), "{what}");
                self.assert_component("ErrorBody", body);
            }
            return;
        }
        let response = self
            .response(&route, status)
            .unwrap_or_else(|| panic!("{what}: status {status} is not documented"));
        let content = response.get("content").and_then(Value::as_object);
        match content {
            None => {
                assert_eq!(
                    *body,
                    Value::Null,
                    "{what}: a body where none is documented"
                );
            }
            Some(content) => {
                let ct = content_type
                    .unwrap_or_else(|| panic!("{what}: no Content-Type, documented {content:?}"));
                let media = content
                    .get(&ct)
                    .unwrap_or_else(|| panic!("{what}: Content-Type {ct} is not documented"));
                if ct == "application/json" {
                    self.assert_fits(&media["schema"], body, &what);
                }
            }
        }
        if let Some(documented) = response.get("headers").and_then(Value::as_object) {
            for (name, header) in documented {
                let value = headers.get(name.as_str());
                if header["required"] == true {
                    assert!(value.is_some(), "{what}: required header {name} missing");
                }
                if let Some(value) = value {
                    let value = json!(value.to_str().unwrap());
                    self.assert_fits(&header["schema"], &value, &format!("{what}: header {name}"));
                }
            }
        }
    }
}

/// Parses a response body as the tests see it: JSON, `Null` when empty, else the text.
fn body_value(text: String) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}

/// An HTTP client for one server that checks every response against the document.
#[derive(Clone)]
pub struct Checked {
    /// The plain client (token included), for building requests.
    pub api: Api,
    /// The server's document.
    pub openapi: Arc<OpenApi>,
}

impl Checked {
    /// A checked client for `server`, with the document the server publishes.
    pub async fn new(server: &TestServer) -> Checked {
        let api = server.api();
        let openapi = OpenApi::fetch(&api.base_url, api.token.as_deref()).await;
        Checked { api, openapi }
    }

    /// The same server without a token (or with another one), same document.
    pub fn with_token(&self, token: Option<&str>) -> Checked {
        Checked {
            api: self.api.with_token(token),
            openapi: Arc::clone(&self.openapi),
        }
    }

    /// A request to `path`, with the token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.api.request(method, path)
    }

    /// Sends a request and checks the response; returns status, headers and body.
    pub async fn send_full(&self, rb: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, Value) {
        let request = rb.build().unwrap();
        let method = request.method().clone();
        let url = request.url().clone();
        let response = self.api.client.execute(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = body_value(response.text().await.unwrap());
        self.openapi
            .check_response(&method, url.path(), status, &headers, &body);
        (status, headers, body)
    }

    /// Sends a request and checks the response.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let (status, _, body) = self.send_full(rb).await;
        (status, body)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(Method::GET, path)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    /// `POST path` without a body.
    pub async fn post_empty(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(Method::POST, path)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// Creates a flow, asserting 201, and returns its id.
    pub async fn create_flow(&self, spec: &Value) -> String {
        let (status, body) = self.post("/flows", spec).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["flowId"].as_str().unwrap().to_owned()
    }

    /// `GET /flows/{id}`, asserting 200.
    pub async fn flow(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/flows/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Polls the flow until its status is `status`; panics (showing the flow) if
    /// it ends in another status or the deadline passes.
    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let flow = self.flow(id).await;
            if flow["status"] == status {
                return flow;
            }
            let ended = matches!(
                flow["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            );
            assert!(
                !ended,
                "flow ended {} instead of {status}: {flow:#}",
                flow["status"]
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for flow {id} to be {status}: {flow:#}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls the flow until node `name` has `status`, and returns the flow.
    pub async fn wait_for_node(&self, id: &str, name: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let flow = self.flow(id).await;
            let node = flow["nodes"]
                .as_array()
                .and_then(|nodes| nodes.iter().find(|n| n["name"] == name));
            if node.is_some_and(|n| n["status"] == status) {
                return flow;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for node {name} to be {status}: {flow:#}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A WebSocket client whose every JSON message is checked against `ServerMessage`.
pub struct CheckedWs {
    /// The plain client, for raw frames.
    pub ws: WsClient,
    /// The server's document.
    pub openapi: Arc<OpenApi>,
}

impl CheckedWs {
    /// Connects to `server` (with its token) and checks with `openapi`.
    pub async fn connect(server: &TestServer, openapi: &Arc<OpenApi>) -> CheckedWs {
        CheckedWs {
            ws: server.ws().await,
            openapi: Arc::clone(openapi),
        }
    }

    /// Wraps a client connected some other way.
    pub fn wrap(ws: WsClient, openapi: &Arc<OpenApi>) -> CheckedWs {
        CheckedWs {
            ws,
            openapi: Arc::clone(openapi),
        }
    }

    /// Sends a JSON text frame, after checking it is a `ClientMessage`.
    pub async fn send_json(&mut self, v: &Value) {
        self.openapi.assert_component("ClientMessage", v);
        self.ws.send_json(v).await;
    }

    /// Sends a text frame as is (garbage included: it is not checked).
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send_text(text).await;
    }

    /// `{"type":"subscribe","flowId":id}`.
    pub async fn subscribe(&mut self, id: &str) {
        self.send_json(&json!({"type": "subscribe", "flowId": id}))
            .await;
    }

    /// The next frame that is not a ping or pong; a text frame is checked.
    pub async fn next_frame(&mut self) -> Message {
        let frame = self.ws.next_frame().await;
        if let Message::Text(text) = &frame {
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            self.openapi.assert_component("ServerMessage", &v);
        }
        frame
    }

    /// The next JSON message, checked; panics on anything else.
    pub async fn recv_json(&mut self) -> Value {
        match self.next_frame().await {
            Message::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// Reads messages until one satisfies `done`; returns all of them, that one last.
    pub async fn recv_until(&mut self, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let msg = self.recv_json().await;
            let stop = done(&msg);
            seen.push(msg);
            if stop {
                return seen;
            }
        }
    }
}
