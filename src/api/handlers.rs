//! What each route does: check the request, call the engine, shape the answer.
//!
//! Every handler returns a full response, errors included (as [`HttpError`]
//! replies, not rejections), so that the error a client sees is the one that
//! happened. The `#[utoipa::path]` attributes are the OpenAPI description of each
//! route.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dagflow_actors::FlowId;
use serde::Serialize;
use serde_json::json;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

use super::errors::{self, HttpError};
use super::models::{self, CreatedFlow, ErrorBody, Health, MAX_IDEMPOTENCY_KEY_LEN};
use super::models::{
    FlowCountsSchema, FlowPageSchema, FlowSpecSchema, FlowStatusSchema, FlowViewSchema,
    NodeViewSchema, QueueInfo, QueueList,
};
use super::{queues, ApiState};

/// How long a readiness or pre-write Redis check may take before Redis counts as down.
const REDIS_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::Reply::into_response(warp::reply::with_status(warp::reply::json(body), status))
}

fn respond(result: Result<Response, HttpError>) -> Response {
    result.unwrap_or_else(HttpError::into_response)
}

/// A flow id from the path; one that is not even an id names no flow: 404.
fn flow_id(raw: &str) -> Result<FlowId, HttpError> {
    FlowId::from_str(raw).map_err(|_| {
        HttpError::new(
            StatusCode::NOT_FOUND,
            "flow_not_found",
            format!("flow {} not found", clip(raw)),
        )
    })
}

/// Refuses a write while Redis is unreachable: the engine would keep the change on
/// disk and apply it to Redis later, but a client is better told to retry now than
/// left with a flow that silently waits.
async fn require_redis(state: &ApiState) -> Result<(), HttpError> {
    match tokio::time::timeout(REDIS_CHECK_TIMEOUT, state.engine.check_redis()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(errors::redis_unavailable()),
    }
}

/// The outcome of an action on a flow. The engine answers "actor unavailable"
/// (`NotRunning`) when the flow's actor went away with the request in its mailbox;
/// that happens when the flow is deleted at the same moment (Schemathesis, with
/// two workers, retried a flow another request was deleting). If the flow is gone
/// now, the truthful answer is 404, not a 503 that invites a retry that can only
/// 404; if it is still there, the 503 stands.
async fn settle(
    state: &ApiState,
    id: FlowId,
    outcome: Result<(), dagflow_actors::EngineError>,
) -> Result<(), HttpError> {
    use dagflow_actors::EngineError;
    match outcome {
        Err(EngineError::NotRunning(cause)) => match state.engine.get(id).await {
            Err(EngineError::NotFound(_)) => Err(EngineError::NotFound(id.to_string()).into()),
            _ => Err(EngineError::NotRunning(cause).into()),
        },
        other => other.map_err(HttpError::from),
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "healthz",
    responses((status = 200, description = "alive", body = Health)))]
pub(crate) async fn healthz() -> Response {
    json_reply(
        StatusCode::OK,
        &Health {
            status: "ok".to_owned(),
            checks: HashMap::new(),
        },
    )
}

/// Readiness: Redis and the snapshot store answer.
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "readyz", responses(
    (status = 200, description = "ready", body = Health),
    (status = 503, description = "Redis or the store failed; `details` names which", body = ErrorBody)))]
pub(crate) async fn readyz(state: Arc<ApiState>) -> Response {
    let redis = match tokio::time::timeout(REDIS_CHECK_TIMEOUT, state.engine.check_redis()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer within {} ms",
            REDIS_CHECK_TIMEOUT.as_millis()
        )),
    };
    let store = state.engine.check_store().map_err(|e| e.to_string());
    let checks: HashMap<String, String> = [("redis", &redis), ("store", &store)]
        .into_iter()
        .map(|(name, r)| {
            let outcome = match r {
                Ok(()) => "ok".to_owned(),
                Err(e) => e.clone(),
            };
            (name.to_owned(), outcome)
        })
        .collect();
    if redis.is_ok() && store.is_ok() {
        return json_reply(
            StatusCode::OK,
            &Health {
                status: "ready".to_owned(),
                checks,
            },
        );
    }
    HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "not ready")
        .with_details(json!({ "checks": checks }))
        .into_response()
}

/// Validates a flow and starts it.
#[utoipa::path(post, path = "/flows", tag = "flows", operation_id = "createFlow",
    request_body(content = FlowSpecSchema, content_type = "application/json",
        description = "the flow; `Content-Type: application/json` (optionally with `charset=utf-8`) is required"),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256,
        pattern = r"^[\t\x20-\x7E]*[\x21-\x7E][\t\x20-\x7E]*$",
        description = "a repeated key returns the first flow's id and starts nothing: 1 to 256 bytes of visible ASCII"),
        ("traceparent" = Option<String>, Header,
        description = "W3C trace context: the flow's trace continues the caller's (its span becomes the parent of the flow's span, and job envelopes carry the trace on). One that is not a valid traceparent (`00-{32 hex}-{16 hex}-{2 hex}`, not all zeros) is ignored, never an error")),
    responses(
        (status = 201, description = "started (or, with a known Idempotency-Key, the earlier flow)", body = CreatedFlow,
            headers(("Location" = String, description = "`/flows/{flowId}`"))),
        (status = 400, description = "malformed JSON (`details` has `line` and `column`), or a bad Idempotency-Key", body = ErrorBody),
        (status = 408, description = "the body did not arrive within 30 s; the connection is closed", body = ErrorBody),
        (status = 411, description = "no Content-Length (a chunked body)", body = ErrorBody),
        (status = 413, description = "body over the limit", body = ErrorBody),
        (status = 415, description = "no `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "invalid flow; `details.problems` lists every problem (at most 100, then a count), each with its `code` (see ErrorObject: `cycle`, `unknown_parent`, `bad_priority`, `bad_concurrency`, `bad_rate_limit`...)", body = ErrorBody),
        (status = 503, description = "Redis unreachable or the engine stopping", body = ErrorBody)))]
pub(crate) async fn create(
    state: Arc<ApiState>,
    idempotency_key: Option<String>,
    traceparent: Option<String>,
    content_type: Option<String>,
    body: Bytes,
) -> Response {
    respond(create_inner(state, idempotency_key, traceparent, content_type, body).await)
}

async fn create_inner(
    state: Arc<ApiState>,
    idempotency_key: Option<String>,
    traceparent: Option<String>,
    content_type: Option<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    // The body must be declared JSON: a missing type, curl's default for `-d` (a
    // form) or another JSON-ish type is refused, so that a client learns the
    // contract from its first request rather than from a proxy that treats the
    // body by its declared type.
    if !content_type.as_deref().is_some_and(is_json) {
        return Err(errors::unsupported_media_type());
    }
    if let Some(key) = &idempotency_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(HttpError::bad_request(
                "invalid_header",
                format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"),
            ));
        }
    }
    let mut spec = dagflow_actors::spec::parse(&body).map_err(spec_parse_error)?;
    // A valid header makes the flow a child of the caller's trace; a malformed one
    // is ignored (W3C trace context asks receivers to restart the trace).
    if let Some(sc) = traceparent
        .as_deref()
        .and_then(dagflow_actors::trace::parse_traceparent)
    {
        spec.traceparent = Some(dagflow_actors::trace::format_traceparent(&sc));
    }
    // No PING here: the engine refuses new flows (`redis_unavailable`) as soon as
    // its watchdog, which looks every 500 ms, finds Redis gone, and a round trip
    // per create cost more than a quarter of the create rate.
    let id = state.engine.create(&spec, idempotency_key).await?;
    let mut response = json_reply(
        StatusCode::CREATED,
        &CreatedFlow {
            flow_id: id.to_string(),
        },
    );
    if let Ok(location) = HeaderValue::from_str(&format!("/flows/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `application/json`, alone or with `charset=utf-8` (JSON is UTF-8, RFC 8259), in
/// any case and with optional whitespace and quotes around the charset.
pub(crate) fn is_json(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|param| {
        let Some((name, value)) = param.split_once('=') else {
            return param.trim().is_empty();
        };
        let value = value.trim().trim_matches('"');
        name.trim().eq_ignore_ascii_case("charset") && value.eq_ignore_ascii_case("utf-8")
    })
}

/// Malformed JSON is a 400 that says where; JSON that parses but does not describe
/// a flow (missing `nodes`, an unknown field, a string for a number) is a 422,
/// like every other reason a flow is refused.
/// A 400 naming where the JSON broke (line and column), with a bounded echo.
fn malformed_json(e: &serde_json::Error) -> HttpError {
    let (line, column) = (e.line(), e.column());
    let mut message = e.to_string();
    errors::clip_in_place(&mut message);
    HttpError::bad_request(
        "malformed_json",
        format!("malformed JSON at line {line}, column {column}: {message}"),
    )
    .with_details(json!({ "line": line, "column": column }))
}

fn spec_parse_error(e: serde_json::Error) -> HttpError {
    use serde_json::error::Category;
    let (line, column) = (e.line(), e.column());
    // serde quotes the offending text (an unknown field's name, a wrong variant):
    // a 1 MB field name came back twice. Echo a bounded piece of it.
    let mut message = e.to_string();
    errors::clip_in_place(&mut message);
    match e.classify() {
        Category::Data => HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flow",
            format!("invalid flow: {message}"),
        )
        .with_details(json!({
            "problems": [{
                "code": "invalid_spec",
                "message": message,
                "line": line,
                "column": column,
            }]
        })),
        Category::Syntax | Category::Eof | Category::Io => malformed_json(&e),
    }
}

/// Lists flows, newest first.
#[utoipa::path(get, path = "/flows", tag = "flows", operation_id = "listFlows",
    params(
        ("status" = Option<FlowStatusSchema>, Query, description = "only flows in this status"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "page size, 1 to 1000 (default 50)"),
        ("cursor" = Option<String>, Query, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
            description = "the nextCursor of the previous page (a flow id)"),
        ("q" = Option<String>, Query, max_length = 256, description = "only flows whose name contains this, ignoring case"),
        ("createdAfter" = Option<u64>, Query, minimum = 0, description = "only flows created at or after this time (ms since the epoch)"),
        ("createdBefore" = Option<u64>, Query, minimum = 0, description = "only flows created before this time (ms since the epoch)")),
    responses(
        (status = 200, description = "one page", body = FlowPageSchema),
        (status = 400, description = "bad or unknown query parameter", body = ErrorBody),
        (status = 503, description = "the engine is stopping", body = ErrorBody)))]
pub(crate) async fn list(state: Arc<ApiState>, params: HashMap<String, String>) -> Response {
    respond(
        async {
            let query = models::list_query(&params)?;
            let page = state.engine.list(&query).await?;
            Ok::<_, HttpError>(json_reply(StatusCode::OK, &page))
        }
        .await,
    )
}

/// How many flows are in each status, among those a search takes (every flow
/// without one). One pass over every flow record: cheap for thousands, about a
/// second for millions.
#[utoipa::path(get, path = "/flows/counts", tag = "flows", operation_id = "countFlows",
    params(
        ("q" = Option<String>, Query, max_length = 256, description = "only flows whose name contains this, ignoring case"),
        ("createdAfter" = Option<u64>, Query, minimum = 0, description = "only flows created at or after this time (ms since the epoch)"),
        ("createdBefore" = Option<u64>, Query, minimum = 0, description = "only flows created before this time (ms since the epoch)")),
    responses(
        (status = 200, description = "the counts", body = FlowCountsSchema),
        (status = 400, description = "bad or unknown query parameter", body = ErrorBody),
        (status = 503, description = "the engine is stopping", body = ErrorBody)))]
pub(crate) async fn count(state: Arc<ApiState>, params: HashMap<String, String>) -> Response {
    respond(
        async {
            let filter = models::counts_query(&params)?;
            let counts = state.engine.count(filter).await?;
            Ok::<_, HttpError>(json_reply(StatusCode::OK, &counts))
        }
        .await,
    )
}

/// One flow with every node.
#[utoipa::path(get, path = "/flows/{id}", tag = "flows", operation_id = "getFlow",
    params(("id" = String, Path, description = "flow id")),
    responses(
        (status = 200, description = "the flow", body = FlowViewSchema),
        (status = 404, description = "unknown flow", body = ErrorBody),
        (status = 503, description = "the engine did not answer in time, or is stopping", body = ErrorBody)))]
pub(crate) async fn get_flow(id: String, state: Arc<ApiState>) -> Response {
    respond(
        async {
            let view = state.engine.get(flow_id(&id)?).await?;
            Ok(json_reply(StatusCode::OK, &view))
        }
        .await,
    )
}

/// The spec the flow was submitted with, as the server parsed it: the body of a
/// `POST /flows` that makes the same flow again (the dashboard's "Clone and edit").
#[utoipa::path(get, path = "/flows/{id}/spec", tag = "flows", operation_id = "getFlowSpec",
    params(("id" = String, Path, description = "flow id")),
    responses(
        (status = 200, description = "the submitted spec", body = FlowSpecSchema),
        (status = 404, description = "unknown flow", body = ErrorBody),
        (status = 503, description = "the engine is stopping", body = ErrorBody)))]
pub(crate) async fn get_flow_spec(id: String, state: Arc<ApiState>) -> Response {
    respond(
        async {
            let spec = state.engine.spec(flow_id(&id)?).await?;
            Ok(json_reply(StatusCode::OK, &spec))
        }
        .await,
    )
}

/// One node, with its input (once its parents are done) and result.
#[utoipa::path(get, path = "/flows/{id}/nodes/{name}", tag = "flows", operation_id = "getNode",
    params(("id" = String, Path, description = "flow id"),
        ("name" = String, Path, description = "node name, percent-encoded")),
    responses(
        (status = 200, description = "the node", body = NodeViewSchema),
        (status = 400, description = "the name is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 404, description = "unknown flow or node", body = ErrorBody),
        (status = 503, description = "the engine did not answer in time, or is stopping", body = ErrorBody)))]
pub(crate) async fn get_node(id: String, name: String, state: Arc<ApiState>) -> Response {
    respond(
        async {
            let id = flow_id(&id)?;
            let name = node_name(&name)?;
            let view = state.engine.node(id, &name).await?;
            Ok(json_reply(StatusCode::OK, &view))
        }
        .await,
    )
}

/// Cancels a running flow: running jobs are told to stop, the rest never run.
#[utoipa::path(post, path = "/flows/{id}/cancel", tag = "flows", operation_id = "cancelFlow",
    params(("id" = String, Path, description = "flow id")),
    responses(
        (status = 200, description = "cancelled; the flow as it is now", body = FlowViewSchema),
        (status = 404, description = "unknown flow", body = ErrorBody),
        (status = 409, description = "the flow is not running", body = ErrorBody),
        (status = 503, description = "Redis unreachable, or the engine busy or stopping", body = ErrorBody)))]
pub(crate) async fn cancel(id: String, state: Arc<ApiState>) -> Response {
    respond(
        async {
            let id = flow_id(&id)?;
            require_redis(&state).await?;
            settle(&state, id, state.engine.cancel(id).await).await?;
            Ok(json_reply(StatusCode::OK, &state.engine.get(id).await?))
        }
        .await,
    )
}

/// Re-runs the failed, skipped and cancelled nodes of a failed or cancelled flow.
#[utoipa::path(post, path = "/flows/{id}/retry", tag = "flows", operation_id = "retryFlow",
    params(("id" = String, Path, description = "flow id")),
    responses(
        (status = 200, description = "running again; the flow as it is now", body = FlowViewSchema),
        (status = 404, description = "unknown flow", body = ErrorBody),
        (status = 409, description = "the flow is running or completed", body = ErrorBody),
        (status = 503, description = "Redis unreachable, or the engine busy or stopping", body = ErrorBody)))]
pub(crate) async fn retry(id: String, state: Arc<ApiState>) -> Response {
    respond(
        async {
            let id = flow_id(&id)?;
            require_redis(&state).await?;
            settle(&state, id, state.engine.retry(id).await).await?;
            Ok(json_reply(StatusCode::OK, &state.engine.get(id).await?))
        }
        .await,
    )
}

/// Delivers a signal to a wait node: the JSON body (empty or absent means `null`)
/// becomes the node's result, and the flow goes on.
#[utoipa::path(post, path = "/flows/{id}/nodes/{name}/signal", tag = "flows", operation_id = "signalNode",
    params(("id" = String, Path, description = "flow id"),
        ("name" = String, Path, description = "name of a node with `wait.signal`, percent-encoded")),
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "the signal's payload, any JSON value; it becomes the node's result. An empty body is `null`"),
    responses(
        (status = 200, description = "delivered; the node as it is now", body = NodeViewSchema),
        (status = 400, description = "malformed JSON, or a name that is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 404, description = "unknown flow or node", body = ErrorBody),
        (status = 408, description = "the body did not arrive within 30 s; the connection is closed", body = ErrorBody),
        (status = 409, description = "the node does not wait for a signal now (not a signal wait, not yet waiting, already done, or the flow ended)", body = ErrorBody),
        (status = 413, description = "body over the limit (declared, or read from a chunked body)", body = ErrorBody),
        (status = 415, description = "a body without `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "Redis unreachable, or the engine busy or stopping", body = ErrorBody)))]
pub(crate) async fn signal(
    id: String,
    name: String,
    state: Arc<ApiState>,
    content_type: Option<String>,
    body: Bytes,
) -> Response {
    respond(
        async {
            let id = flow_id(&id)?;
            let name = node_name(&name)?;
            let payload = if body.iter().all(u8::is_ascii_whitespace) {
                serde_json::Value::Null
            } else {
                if !content_type.as_deref().is_some_and(is_json) {
                    return Err(errors::unsupported_media_type());
                }
                // Any JSON value is a payload: every error is a syntax error.
                serde_json::from_slice(&body).map_err(|e| malformed_json(&e))?
            };
            require_redis(&state).await?;
            settle(&state, id, state.engine.signal(id, &name, &payload).await).await?;
            Ok(json_reply(
                StatusCode::OK,
                &state.engine.node(id, &name).await?,
            ))
        }
        .await,
    )
}

/// Re-runs a node and everything downstream of it with fresh attempts; the other
/// nodes keep their results. On a failed node of a running flow, retries just it.
#[utoipa::path(post, path = "/flows/{id}/nodes/{name}/rerun", tag = "flows", operation_id = "rerunNode",
    params(("id" = String, Path, description = "flow id"),
        ("name" = String, Path, description = "node name, percent-encoded")),
    responses(
        (status = 200, description = "running again from that node; the flow as it is now", body = FlowViewSchema),
        (status = 400, description = "the name is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 404, description = "unknown flow or node", body = ErrorBody),
        (status = 409, description = "the node cannot be re-run now (it has not ended, the flow runs in failFast mode, or it is a map element)", body = ErrorBody),
        (status = 503, description = "Redis unreachable, or the engine busy or stopping", body = ErrorBody)))]
pub(crate) async fn rerun(id: String, name: String, state: Arc<ApiState>) -> Response {
    respond(
        async {
            let id = flow_id(&id)?;
            let name = node_name(&name)?;
            require_redis(&state).await?;
            settle(&state, id, state.engine.rerun(id, &name).await).await?;
            Ok(json_reply(StatusCode::OK, &state.engine.get(id).await?))
        }
        .await,
    )
}

fn node_name(raw: &str) -> Result<String, HttpError> {
    percent_decode(raw).ok_or_else(|| {
        HttpError::bad_request(
            "invalid_path",
            "the node name is not valid percent-encoded UTF-8",
        )
    })
}

/// Deletes a flow: its jobs leave Redis, its records leave the disk.
#[utoipa::path(delete, path = "/flows/{id}", tag = "flows", operation_id = "deleteFlow",
    params(("id" = String, Path, description = "flow id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "unknown flow", body = ErrorBody),
        (status = 409, description = "the flow cannot be deleted now", body = ErrorBody),
        (status = 503, description = "Redis unreachable, or the engine busy or stopping", body = ErrorBody)))]
pub(crate) async fn delete(id: String, state: Arc<ApiState>) -> Response {
    respond(
        async {
            let id = flow_id(&id)?;
            require_redis(&state).await?;
            settle(&state, id, state.engine.delete(id).await).await?;
            Ok(warp::Reply::into_response(StatusCode::NO_CONTENT))
        }
        .await,
    )
}

/// Every queue Redis knows, with its ready jobs by priority and lane, its running
/// and delayed jobs, the limit keys holding jobs back and its live workers.
#[utoipa::path(get, path = "/queues", tag = "queues", operation_id = "listQueues",
    responses(
        (status = 200, description = "the queues, by name", body = QueueList),
        (status = 500, description = "Redis answered something the protocol does not allow; the cause is in the server's log", body = ErrorBody),
        (status = 503, description = "Redis unreachable or too slow", body = ErrorBody)))]
pub(crate) async fn list_queues(state: Arc<ApiState>) -> Response {
    respond(
        async {
            let reports =
                queues::within_deadline(queues::all(state.engine.queue(), &state.queues)).await?;
            let list = QueueList {
                queues: reports.iter().map(queues::QueueReport::to_model).collect(),
            };
            Ok(json_reply(StatusCode::OK, &list))
        }
        .await,
    )
}

/// One queue, as in `GET /queues`.
#[utoipa::path(get, path = "/queues/{name}", tag = "queues", operation_id = "getQueue",
    params(("name" = String, Path, min_length = 1, max_length = 256, pattern = r"^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        description = "the queue's name: ASCII letters, digits, `-`, `_`, `.`, not dots alone")),
    responses(
        (status = 200, description = "the queue", body = QueueInfo),
        (status = 404, description = "nothing is known about this queue (no lane, no job, no worker), or the name cannot be a queue's", body = ErrorBody),
        (status = 500, description = "Redis answered something the protocol does not allow; the cause is in the server's log", body = ErrorBody),
        (status = 503, description = "Redis unreachable or too slow", body = ErrorBody)))]
pub(crate) async fn get_queue(name: String, state: Arc<ApiState>) -> Response {
    respond(
        async {
            let unknown = || {
                HttpError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_queue",
                    format!("queue {} is not known", clip(&name)),
                )
            };
            // Queue names need no escape: one that does is no queue's.
            let decoded = percent_decode(&name).ok_or_else(unknown)?;
            if !queues::is_queue_name(&decoded, state.engine.limits().max_name_len) {
                return Err(unknown());
            }
            let report = queues::within_deadline(queues::one(state.engine.queue(), &decoded))
                .await?
                .ok_or_else(unknown)?;
            Ok(json_reply(StatusCode::OK, &report.to_model()))
        }
        .await,
    )
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(state: Arc<ApiState>) -> Response {
    let text = state.metrics.render(&state).await;
    let mut response = warp::Reply::into_response(text);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// This API's OpenAPI description.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi",
    responses((status = 200, description = "this document, OpenAPI 3.1", content_type = "application/json", body = Object)))]
pub(crate) async fn openapi(state: Arc<ApiState>) -> Response {
    let mut response = warp::Reply::into_response(state.openapi.clone());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Decodes `%XX` escapes of a path segment (warp leaves them as they came).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("plain-name").as_deref(), Some("plain-name"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/json;charset=\"UTF-8\""));
        assert!(is_json("application/json;"));
        assert!(!is_json("application/json; charset=latin1"));
        assert!(!is_json("application/json; version=2"));
        assert!(!is_json("application/vnd.dagflow+json"));
        assert!(!is_json("application/json-patch+json"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("text/json"));
        assert!(!is_json(""));
    }

    #[test]
    fn parse_errors_say_where() {
        let e = dagflow_actors::spec::parse(b"{\n  \"nodes\": [,]\n}").unwrap_err();
        let h = spec_parse_error(e);
        assert_eq!(h.status, StatusCode::BAD_REQUEST);
        assert_eq!(h.details["line"], 2);
        let e = dagflow_actors::spec::parse(b"{\"nodez\": []}").unwrap_err();
        assert_eq!(spec_parse_error(e).status, StatusCode::UNPROCESSABLE_ENTITY);
        // An array is not a spec, though serde would read a struct from one.
        let e = dagflow_actors::spec::parse(br#"["x", [{"name": "a", "handler": "noop"}]]"#)
            .unwrap_err();
        assert_eq!(spec_parse_error(e).status, StatusCode::UNPROCESSABLE_ENTITY);
        let e = dagflow_actors::spec::parse(b"  7").unwrap_err();
        assert_eq!(spec_parse_error(e).status, StatusCode::UNPROCESSABLE_ENTITY);
    }
}
