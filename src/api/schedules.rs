//! The schedule routes: `POST/GET /schedules`, `GET/PATCH/DELETE
//! /schedules/{name}`, `GET /schedules/{name}/runs`; their wire types for the
//! OpenAPI description, and how a [`ScheduleError`] becomes an answer.
//!
//! Schedules are stored in the engine's sled store; none of these routes needs
//! Redis (a tick whose flow cannot be created while Redis is down waits, pending,
//! and is fired when Redis is back).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use dagflow_actors::schedule::{SchedulePatch, MAX_RUNS};
use dagflow_actors::{ScheduleError, ScheduleRun, ScheduleSpec};
use serde::Serialize;
use serde_json::json;
use utoipa::{OpenApi, ToSchema};
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::errors::{self, HttpError};
use super::filters::{auth, body_within_deadline, get_or_head, methods, with_state};
use super::models::{ErrorBody, FlowSpecSchema, FlowStatusSchema};
use super::ApiState;

/// The routes, unrecovered; [`super::filters::api`] adds them to the others.
pub(crate) fn routes(state: &Arc<ApiState>) -> BoxedFilter<(Response,)> {
    let limit = state.cfg.body_limit;
    let all = || warp::path!("schedules").and(auth(state));
    let create = all()
        .and(warp::post())
        .and(with_state(state))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::content_length_limit(limit))
        .and(body_within_deadline())
        .then(create);
    let list = all().and(get_or_head()).and(with_state(state)).then(list);
    let all = create
        .or(list)
        .unify()
        .or(all().and(methods("GET, HEAD, POST, OPTIONS")))
        .unify();

    let one = || warp::path!("schedules" / String).and(auth(state));
    let get = one().and(get_or_head()).and(with_state(state)).then(get);
    let patch = one()
        .and(warp::patch())
        .and(with_state(state))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::content_length_limit(limit))
        .and(body_within_deadline())
        .then(patch);
    let delete = one()
        .and(warp::delete())
        .and(with_state(state))
        .then(delete);
    let one = get
        .or(patch)
        .unify()
        .or(delete)
        .unify()
        .or(one()
            .and(methods("GET, HEAD, PATCH, DELETE, OPTIONS"))
            .map(|_: String, r| r))
        .unify();

    let runs_path = || warp::path!("schedules" / String / "runs").and(auth(state));
    let runs = runs_path()
        .and(get_or_head())
        .and(with_state(state))
        .and(warp::query::<HashMap<String, String>>())
        .then(runs)
        .or(runs_path()
            .and(methods("GET, HEAD, OPTIONS"))
            .map(|_: String, r| r))
        .unify();
    all.boxed()
        .or(one.boxed())
        .unify()
        .or(runs.boxed())
        .unify()
        .boxed()
}

/// The OpenAPI description of these routes, merged into the API's.
#[derive(OpenApi)]
#[openapi(
    paths(create, list, get, patch, delete, runs),
    components(schemas(
        ScheduleSpecSchema,
        SchedulePatchSchema,
        ScheduleViewSchema,
        ScheduleList,
        ScheduleRunSchema,
        ScheduleRunList,
        OverlapSchema,
        CatchUpSchema,
        RunOutcomeSchema,
    )),
    tags((name = "schedules", description = "start flows on a cron timetable"))
)]
pub(crate) struct ScheduleDoc;

fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::Reply::into_response(warp::reply::with_status(warp::reply::json(body), status))
}

fn respond(result: Result<Response, HttpError>) -> Response {
    result.unwrap_or_else(HttpError::into_response)
}

impl From<ScheduleError> for HttpError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::Invalid { mut problems } => {
                for problem in &mut problems {
                    errors::clip_in_place(&mut problem.message);
                    if let Some(node) = &mut problem.node {
                        errors::clip_in_place(node);
                    }
                }
                let mut message = ScheduleError::Invalid {
                    problems: problems.clone(),
                }
                .to_string();
                errors::clip_in_place(&mut message);
                HttpError::bad_request("invalid_schedule", message)
                    .with_details(json!({ "problems": problems }))
            }
            e @ ScheduleError::NotFound(_) => {
                HttpError::new(StatusCode::NOT_FOUND, "schedule_not_found", e.to_string())
            }
            e @ ScheduleError::Exists(_) => {
                HttpError::new(StatusCode::CONFLICT, "schedule_exists", e.to_string())
            }
            e @ ScheduleError::Full(_) => {
                HttpError::new(StatusCode::CONFLICT, "too_many_schedules", e.to_string())
            }
            ScheduleError::Engine(e) => e.into(),
            e @ (ScheduleError::Store(_) | ScheduleError::Corrupt(_)) => HttpError::internal(&e),
        }
    }
}

/// The body of a POST or PATCH: declared JSON, then parsed into `T`. Malformed JSON
/// is a 400 `malformed_json` naming where; JSON of the wrong shape (not an object —
/// serde would read a struct from an array —, a missing field, an unknown one, a
/// bad `overlap`) a 400 `invalid_schedule`.
fn parse_body<T: serde::de::DeserializeOwned>(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<T, HttpError> {
    if !content_type.is_some_and(super::handlers::is_json) {
        return Err(errors::unsupported_media_type());
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        let mut message = e.to_string();
        errors::clip_in_place(&mut message);
        HttpError::bad_request(
            "malformed_json",
            format!("malformed JSON at line {line}, column {column}: {message}"),
        )
        .with_details(json!({ "line": line, "column": column }))
    })?;
    let bad_shape = |mut message: String| {
        errors::clip_in_place(&mut message);
        HttpError::bad_request("invalid_schedule", format!("invalid schedule: {message}"))
            .with_details(json!({ "problems": [{ "code": "bad_shape", "message": message }] }))
    };
    if !value.is_object() {
        return Err(bad_shape("the body must be a JSON object".to_owned()));
    }
    serde_json::from_value(value).map_err(|e| bad_shape(e.to_string()))
}

/// Links from a created or shown schedule to what can be done with it, so that a
/// client (and Schemathesis's stateful phase) can follow a schedule from creation
/// to deletion.
pub(crate) fn add_links(doc: &mut serde_json::Value) {
    let by_name = json!({ "name": "$response.body#/name" });
    let link = |operation: &str, description: &str| json!({ "operationId": operation, "parameters": by_name, "description": description });
    let links = json!({
        "GetSchedule": link("getSchedule", "the schedule"),
        "UpdateSchedule": link("updateSchedule", "pause, resume or change it"),
        "ListScheduleRuns": link("listScheduleRuns", "its runs"),
        "DeleteSchedule": link("deleteSchedule", "delete it"),
    });
    for (path, method, status) in [
        ("/schedules", "post", "201"),
        ("/schedules/{name}", "get", "200"),
        ("/schedules/{name}", "patch", "200"),
    ] {
        if let Some(response) = doc["paths"][path][method]["responses"][status].as_object_mut() {
            response.insert("links".to_owned(), links.clone());
        }
    }
}

/// Creates a schedule; it fires from its next tick on.
#[utoipa::path(post, path = "/schedules", tag = "schedules", operation_id = "createSchedule",
    request_body(content = ScheduleSpecSchema, content_type = "application/json"),
    responses(
        (status = 201, description = "stored (durably), with its next fire time", body = ScheduleViewSchema,
            headers(("Location" = String, description = "`/schedules/{name}`"))),
        (status = 400, description = "malformed JSON, or an invalid schedule: `details.problems` lists every problem (`bad_name`, `bad_cron`, `unknown_timezone`, `bad_shape`, and the flow's own codes)", body = ErrorBody),
        (status = 408, description = "the body did not arrive within 30 s", body = ErrorBody),
        (status = 409, description = "a schedule of this name exists (`schedule_exists`), or the server holds 1,000 schedules already (`too_many_schedules`)", body = ErrorBody),
        (status = 411, description = "no Content-Length (a chunked body)", body = ErrorBody),
        (status = 413, description = "body over the limit", body = ErrorBody),
        (status = 415, description = "no `Content-Type: application/json`", body = ErrorBody),
        (status = 500, description = "internal error; the cause is in the server's log", body = ErrorBody),
        (status = 503, description = "the engine is stopping", body = ErrorBody)))]
pub(crate) async fn create(
    state: Arc<ApiState>,
    content_type: Option<String>,
    body: Bytes,
) -> Response {
    respond(
        async {
            let spec: ScheduleSpec = parse_body(content_type.as_deref(), &body)?;
            let view = state.engine.create_schedule(spec).await?;
            let mut response = json_reply(StatusCode::CREATED, &view);
            if let Ok(location) = HeaderValue::from_str(&format!("/schedules/{}", view.name)) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Ok(response)
        }
        .await,
    )
}

/// Every schedule, by name, each with its next fire time.
#[utoipa::path(get, path = "/schedules", tag = "schedules", operation_id = "listSchedules",
    responses(
        (status = 200, description = "the schedules, by name", body = ScheduleList),
        (status = 500, description = "internal error; the cause is in the server's log", body = ErrorBody),
        (status = 503, description = "the engine is stopping", body = ErrorBody)))]
pub(crate) async fn list(state: Arc<ApiState>) -> Response {
    respond(
        state
            .engine
            .list_schedules()
            .map(|schedules| json_reply(StatusCode::OK, &json!({ "schedules": schedules })))
            .map_err(HttpError::from),
    )
}

/// One schedule, with its next fire time.
#[utoipa::path(get, path = "/schedules/{name}", tag = "schedules", operation_id = "getSchedule",
    params(("name" = String, Path, description = "the schedule's name")),
    responses(
        (status = 200, description = "the schedule", body = ScheduleViewSchema),
        (status = 404, description = "no schedule of this name (`schedule_not_found`)", body = ErrorBody),
        (status = 500, description = "internal error; the cause is in the server's log", body = ErrorBody),
        (status = 503, description = "the engine is stopping", body = ErrorBody)))]
pub(crate) async fn get(name: String, state: Arc<ApiState>) -> Response {
    respond(
        state
            .engine
            .schedule(&name)
            .map(|view| json_reply(StatusCode::OK, &view))
            .map_err(HttpError::from),
    )
}

/// Changes a schedule: `{"paused": true}` pauses it, `{"paused": false}` resumes it
/// (from its next tick: the ticks it was paused through are not fired); `cron`,
/// `timezone`, `flow`, `overlap` and `catchUp` may change too.
#[utoipa::path(patch, path = "/schedules/{name}", tag = "schedules", operation_id = "updateSchedule",
    params(("name" = String, Path, description = "the schedule's name")),
    request_body(content = SchedulePatchSchema, content_type = "application/json"),
    responses(
        (status = 200, description = "the schedule as changed", body = ScheduleViewSchema),
        (status = 400, description = "malformed JSON or an invalid change (`details.problems`)", body = ErrorBody),
        (status = 404, description = "no schedule of this name (`schedule_not_found`)", body = ErrorBody),
        (status = 408, description = "the body did not arrive within 30 s", body = ErrorBody),
        (status = 411, description = "no Content-Length (a chunked body)", body = ErrorBody),
        (status = 413, description = "body over the limit", body = ErrorBody),
        (status = 415, description = "no `Content-Type: application/json`", body = ErrorBody),
        (status = 500, description = "internal error; the cause is in the server's log", body = ErrorBody),
        (status = 503, description = "the engine is stopping", body = ErrorBody)))]
pub(crate) async fn patch(
    name: String,
    state: Arc<ApiState>,
    content_type: Option<String>,
    body: Bytes,
) -> Response {
    respond(
        async {
            let patch: SchedulePatch = parse_body(content_type.as_deref(), &body)?;
            let view = state.engine.update_schedule(&name, patch).await?;
            Ok(json_reply(StatusCode::OK, &view))
        }
        .await,
    )
}

/// Deletes a schedule and its runs; the flows it started stay.
#[utoipa::path(delete, path = "/schedules/{name}", tag = "schedules", operation_id = "deleteSchedule",
    params(("name" = String, Path, description = "the schedule's name")),
    responses(
        (status = 204, description = "deleted; it fires no more"),
        (status = 404, description = "no schedule of this name (`schedule_not_found`)", body = ErrorBody),
        (status = 500, description = "internal error; the cause is in the server's log", body = ErrorBody),
        (status = 503, description = "the engine is stopping", body = ErrorBody)))]
pub(crate) async fn delete(name: String, state: Arc<ApiState>) -> Response {
    respond(
        state
            .engine
            .delete_schedule(&name)
            .await
            .map(|()| warp::Reply::into_response(StatusCode::NO_CONTENT))
            .map_err(HttpError::from),
    )
}

/// A schedule's last runs, newest first (the last 100 are kept), each with its
/// flow's status now.
#[utoipa::path(get, path = "/schedules/{name}/runs", tag = "schedules", operation_id = "listScheduleRuns",
    params(("name" = String, Path, description = "the schedule's name"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "most runs to return (default 100)")),
    responses(
        (status = 200, description = "the runs, newest first", body = ScheduleRunList),
        (status = 400, description = "bad or unknown query parameter", body = ErrorBody),
        (status = 404, description = "no schedule of this name (`schedule_not_found`)", body = ErrorBody),
        (status = 500, description = "internal error; the cause is in the server's log", body = ErrorBody),
        (status = 503, description = "the engine is stopping", body = ErrorBody)))]
pub(crate) async fn runs(
    name: String,
    state: Arc<ApiState>,
    query: HashMap<String, String>,
) -> Response {
    respond(
        async {
            let mut limit = MAX_RUNS;
            for (key, value) in &query {
                match key.as_str() {
                    "limit" => {
                        limit = value
                            .parse::<usize>()
                            .ok()
                            .filter(|l| (1..=MAX_RUNS).contains(l))
                            .ok_or_else(|| {
                                HttpError::bad_request(
                                    "invalid_query",
                                    format!("limit must be a number from 1 to {MAX_RUNS}"),
                                )
                            })?;
                    }
                    other => {
                        let mut other = other.to_owned();
                        errors::clip_in_place(&mut other);
                        return Err(HttpError::bad_request(
                            "invalid_query",
                            format!("unknown query parameter '{other}'"),
                        ));
                    }
                }
            }
            let runs: Vec<ScheduleRun> = state.engine.schedule_runs(&name, limit).await?;
            let next = state.engine.schedule(&name)?.next_fire_at;
            let mut body = json!({ "runs": runs });
            if let Some(next) = next {
                body["nextFireAt"] = json!(next);
            }
            Ok(json_reply(StatusCode::OK, &body))
        }
        .await,
    )
}

// ---- Schema mirrors: the engine's types, described for OpenAPI. ----

/// What a tick does while the previous run's flow is still running.
#[derive(ToSchema)]
#[schema(as = Overlap)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) enum OverlapSchema {
    /// Start nothing (the run is `skippedOverlap`).
    Skip,
    /// Start it anyway.
    Allow,
    /// Cancel the running flow, then start the new one.
    CancelPrevious,
}

/// Which ticks missed while the server was down are fired.
#[derive(ToSchema)]
#[schema(as = CatchUp)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) enum CatchUpSchema {
    /// None of them.
    None,
    /// The most recent one.
    Latest,
    /// All of them, oldest first (at most 100).
    All,
}

/// What happened at a tick.
#[derive(ToSchema)]
#[schema(as = RunOutcome)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) enum RunOutcomeSchema {
    /// A flow was started.
    Started,
    /// The previous run was still going; nothing was started.
    SkippedOverlap,
    /// The previous run was cancelled and a flow started.
    CancelledPrevious,
    /// The flow could not be started (`error`).
    Failed,
}

/// A schedule as submitted to `POST /schedules`.
#[derive(ToSchema)]
#[schema(as = ScheduleSpec, example = json!({
    "name": "nightly-report", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
    "flow": {"nodes": [{"name": "report", "handler": "noop"}]},
    "overlap": "skip", "catchUp": "latest", "paused": false
}))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct ScheduleSpecSchema {
    /// Unique: a letter or digit, then letters, digits, `.`, `_`, `-`; at most 128 bytes.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
    )]
    name: String,
    /// Five fields (minute hour day-of-month month day-of-week), or six with seconds
    /// first; `@hourly`-style aliases too.
    #[schema(example = "*/10 * * * * *")]
    cron: String,
    /// IANA time zone the expression is read in (default `UTC`).
    #[schema(nullable = false, example = "America/New_York")]
    timezone: Option<String>,
    /// The flow each tick starts.
    flow: FlowSpecSchema,
    /// Default `skip`.
    #[schema(nullable = false)]
    overlap: Option<OverlapSchema>,
    /// Default `latest`.
    #[schema(nullable = false)]
    catch_up: Option<CatchUpSchema>,
    /// Create it paused (default `false`).
    #[schema(nullable = false)]
    paused: Option<bool>,
}

/// A change to a schedule; each field given replaces the schedule's.
#[derive(ToSchema)]
#[schema(as = SchedulePatch, example = json!({"paused": true}))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct SchedulePatchSchema {
    /// Pause (`true`) or resume (`false`).
    #[schema(nullable = false)]
    paused: Option<bool>,
    /// A new cron expression (the timetable restarts from now).
    #[schema(nullable = false)]
    cron: Option<String>,
    /// A new zone (the timetable restarts from now).
    #[schema(nullable = false)]
    timezone: Option<String>,
    /// A new flow for the ticks to come.
    #[schema(nullable = false)]
    flow: Option<FlowSpecSchema>,
    /// A new overlap policy.
    #[schema(nullable = false)]
    overlap: Option<OverlapSchema>,
    /// A new catch-up policy.
    #[schema(nullable = false)]
    catch_up: Option<CatchUpSchema>,
}

/// A schedule as stored, with its next fire time.
#[derive(ToSchema)]
#[schema(as = Schedule)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct ScheduleViewSchema {
    /// Its name.
    name: String,
    /// Its cron expression.
    cron: String,
    /// Its zone.
    timezone: String,
    /// The flow each tick starts.
    flow: FlowSpecSchema,
    /// Its overlap policy.
    overlap: OverlapSchema,
    /// Its catch-up policy.
    catch_up: CatchUpSchema,
    /// Whether it is paused.
    paused: bool,
    /// Creation time, ms since the epoch.
    created_at: u64,
    /// Last change, ms since the epoch.
    updated_at: u64,
    /// Next tick, ms since the epoch; absent while paused or when there is none.
    #[schema(nullable = false)]
    next_fire_at: Option<u64>,
    /// The last tick decided (fired, skipped or missed), ms since the epoch.
    #[schema(nullable = false)]
    last_tick_at: Option<u64>,
    /// The flow of the last started run.
    #[schema(nullable = false, format = "uuid")]
    last_flow_id: Option<String>,
}

/// `GET /schedules`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ScheduleList {
    /// Every schedule, by name.
    schedules: Vec<ScheduleViewSchema>,
}

/// One tick of a schedule.
#[derive(ToSchema)]
#[schema(as = ScheduleRun)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct ScheduleRunSchema {
    /// The tick, ms since the epoch.
    tick_at: u64,
    /// When it was fired (later than `tickAt` when caught up after downtime).
    fired_at: u64,
    /// What happened.
    outcome: RunOutcomeSchema,
    /// The flow started for this tick.
    #[schema(nullable = false, format = "uuid")]
    flow_id: Option<String>,
    /// The running flow that was cancelled for it, or that made it skip.
    #[schema(nullable = false, format = "uuid")]
    previous_flow_id: Option<String>,
    /// Why no flow could be started (`failed`).
    #[schema(nullable = false)]
    error: Option<String>,
    /// The flow's status now; absent when no flow was started or it was deleted.
    #[schema(nullable = false)]
    flow_status: Option<FlowStatusSchema>,
}

/// `GET /schedules/{name}/runs`.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct ScheduleRunList {
    /// Newest first.
    runs: Vec<ScheduleRunSchema>,
    /// The schedule's next tick, ms since the epoch; absent while paused.
    #[schema(nullable = false)]
    next_fire_at: Option<u64>,
}

/// The scheduler's figures for `/metrics` (inside the API's recorder): the number
/// of schedules, and ticks by outcome — `fired` (a flow started), `skipped` (the
/// previous run still going, `overlap: skip`), `missed` (due while down and not
/// fired, by `catchUp`) and `failed` (the flow could not be created).
pub(crate) fn record_metrics(engine: &dagflow_actors::Engine) {
    use metrics::{counter, describe_counter, describe_gauge, gauge};
    use std::sync::atomic::Ordering::Relaxed;
    let Some((stats, count)) = engine.schedule_stats() else {
        return;
    };
    describe_gauge!("dagflow_schedules", "schedules stored");
    describe_counter!(
        "dagflow_schedule_ticks_total",
        "schedule ticks by outcome: fired, skipped (overlap), missed (catch-up), failed"
    );
    describe_counter!(
        "dagflow_schedule_cancelled_previous_total",
        "running flows cancelled by a schedule's cancelPrevious overlap policy"
    );
    describe_counter!(
        "dagflow_scheduler_passes_total",
        "passes of the scheduler task"
    );
    gauge!("dagflow_schedules").set(count as f64);
    for (outcome, value) in [
        ("fired", &stats.fired),
        ("skipped", &stats.skipped_overlap),
        ("missed", &stats.missed),
        ("failed", &stats.failed),
    ] {
        counter!("dagflow_schedule_ticks_total", "outcome" => outcome)
            .absolute(value.load(Relaxed));
    }
    counter!("dagflow_schedule_cancelled_previous_total")
        .absolute(stats.cancelled_previous.load(Relaxed));
    counter!("dagflow_scheduler_passes_total").absolute(stats.passes.load(Relaxed));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::super::models::mirror::{keys, schema_fields};
    use super::*;

    /// The mirrors name exactly the fields the engine's types have on the wire
    /// (every optional one set), so the description cannot drift from them.
    #[test]
    fn schema_mirrors_match_the_engine_types() {
        let flow = json!({"name": "f", "nodes": [{"name": "a"}]});
        let spec = json!({
            "name": "n", "cron": "* * * * *", "timezone": "UTC", "flow": flow,
            "overlap": "allow", "catchUp": "all", "paused": true
        });
        let parsed: ScheduleSpec = serde_json::from_value(spec).unwrap();
        assert_eq!(
            keys(&serde_json::to_value(parsed).unwrap()),
            schema_fields::<ScheduleSpecSchema>()
        );
        let patch = json!({
            "cron": "* * * * *", "timezone": "UTC", "flow": flow, "overlap": "skip",
            "catchUp": "none", "paused": false
        });
        let parsed: SchedulePatch = serde_json::from_value(patch).unwrap();
        assert_eq!(
            keys(&serde_json::to_value(parsed).unwrap()),
            schema_fields::<SchedulePatchSchema>()
        );
        let view: dagflow_actors::ScheduleView = serde_json::from_value(json!({
            "name": "n", "cron": "* * * * *", "timezone": "UTC", "flow": flow,
            "overlap": "cancelPrevious", "catchUp": "latest", "paused": false,
            "createdAt": 1, "updatedAt": 2, "nextFireAt": 3, "lastTickAt": 4,
            "lastFlowId": "x"
        }))
        .unwrap();
        assert_eq!(
            keys(&serde_json::to_value(view).unwrap()),
            schema_fields::<ScheduleViewSchema>()
        );
        let run: ScheduleRun = serde_json::from_value(json!({
            "tickAt": 1, "firedAt": 2, "outcome": "cancelledPrevious", "flowId": "a",
            "previousFlowId": "b", "error": "e", "flowStatus": "running"
        }))
        .unwrap();
        assert_eq!(
            keys(&serde_json::to_value(run).unwrap()),
            schema_fields::<ScheduleRunSchema>()
        );
        assert_eq!(
            schema_fields::<ScheduleRunList>(),
            ["nextFireAt", "runs"].map(String::from).into()
        );
        assert_eq!(
            schema_fields::<ScheduleList>(),
            ["schedules"].map(String::from).into()
        );
    }
}
