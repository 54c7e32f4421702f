//! Errors of the API: [`ApiError`] for starting the server, [`HttpError`] for one
//! request, and [`recover`], the one place where every warp rejection becomes the
//! JSON error shape `{"error": {"code", "message", "details"}}`.
//!
//! Handlers answer business errors (unknown flow, invalid spec...) as replies, not
//! rejections: a rejection makes warp try the next route, and the error that wins
//! is then whichever warp ranks highest, not the one that happened.

use std::convert::Infallible;
use std::net::SocketAddr;

use dagflow_actors::EngineError;
use serde_json::{json, Value};
use tracing::{error, warn};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reject::Rejection;
use warp::reply::Response;

/// Seconds a client is told to wait before retrying a 503.
const RETRY_AFTER_SECS: u64 = 1;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// One failed request, as the client will see it.
#[derive(Debug, Clone)]
pub(crate) struct HttpError {
    /// The HTTP status.
    pub(crate) status: StatusCode,
    /// Stable, machine-readable: `flow_not_found`, `invalid_flow`, ...
    pub(crate) code: &'static str,
    /// For people; never holds internal details (those are logged).
    pub(crate) message: String,
    /// Structured context: the spec's problems, the JSON error's position...
    pub(crate) details: Value,
    /// The methods the path takes, sent as `Allow` with a 405.
    pub(crate) allow: Option<&'static str>,
}

impl warp::reject::Reject for HttpError {}

impl HttpError {
    /// An error without details.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            message: message.into(),
            details: Value::Null,
            allow: None,
        }
    }

    /// 405 naming, in `Allow`, the methods the path does take.
    pub(crate) fn method_not_allowed(allow: &'static str) -> Self {
        HttpError {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this path does not take this method; it takes {allow}"),
            )
        }
    }

    /// Adds structured details.
    pub(crate) fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// 400 with a code saying what was wrong.
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: the token is missing or wrong (which one is not said).
    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API token is required: send `Authorization: Bearer <token>`",
        )
    }

    /// 500 for a failure whose cause must not reach the client; the cause is logged.
    pub(crate) fn internal(cause: &dyn std::fmt::Display) -> Self {
        error!(error = %cause, "internal error answering a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error; the cause is in the server's log",
        )
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> Value {
        json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
            }
        })
    }

    /// The full response, with `Retry-After` on a 503.
    pub(crate) fn into_response(self) -> Response {
        let mut response = warp::Reply::into_response(warp::reply::with_status(
            warp::reply::json(&self.body()),
            self.status,
        ));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: the connection cannot
            // carry another request, and the client should know it.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<EngineError> for HttpError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Spec(mut spec) => {
                // Problems quote the client's names, and only node and flow names are
                // length-checked: a 1 MB parent name came back twice (2 MB), and a
                // long node name once per problem about it. Quote at most
                // MAX_QUOTED bytes of each (`tests/hostile.rs`).
                for problem in &mut spec.problems {
                    clip_in_place(&mut problem.message);
                    if let Some(node) = &mut problem.node {
                        clip_in_place(node);
                    }
                }
                HttpError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_flow",
                    spec.to_string(),
                )
                .with_details(json!({ "problems": spec.problems }))
            }
            EngineError::NotFound(id) => HttpError::new(
                StatusCode::NOT_FOUND,
                "flow_not_found",
                format!("flow {id} not found"),
            ),
            e @ EngineError::NodeNotFound { .. } => {
                HttpError::new(StatusCode::NOT_FOUND, "node_not_found", e.to_string())
            }
            EngineError::Conflict(message) => {
                HttpError::new(StatusCode::CONFLICT, "conflict", message)
            }
            EngineError::Unavailable(cause) => {
                warn!(error = %cause, "redis unavailable");
                redis_unavailable()
            }
            EngineError::NotRunning(message) => {
                HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "not_running", message)
            }
            EngineError::Timeout(what) => {
                warn!(waiting_for = %what, "engine timed out answering a request");
                HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "the engine did not answer in time; try again",
                )
            }
            e @ (EngineError::Store(_) | EngineError::Internal(_) | EngineError::Trace(_)) => {
                HttpError::internal(&e)
            }
        }
    }
}

/// Longest piece of client text (a name in a problem, serde's quote of a field)
/// echoed back in an error, in bytes.
const MAX_QUOTED: usize = 1024;

/// Cuts `text` to at most [`MAX_QUOTED`] bytes (at a character boundary), marking
/// the cut with `…`.
pub(crate) fn clip_in_place(text: &mut String) {
    if text.len() > MAX_QUOTED {
        let mut end = MAX_QUOTED;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// 503 for Redis being unreachable.
pub(crate) fn redis_unavailable() -> HttpError {
    HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "redis_unavailable",
        "redis is unreachable; try again later",
    )
}

/// Turns every rejection into the JSON error shape. Several routes may reject one
/// request; the most specific cause wins: a handler's own error (401...), then a
/// problem with the request (body, query, header), then 405, then 404.
pub(crate) async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(classify(&rejection).into_response())
}

fn classify(rejection: &Rejection) -> HttpError {
    use warp::reject::{
        InvalidHeader, InvalidQuery, LengthRequired, MethodNotAllowed, MissingHeader,
        PayloadTooLarge, UnsupportedMediaType,
    };
    if let Some(e) = rejection.find::<HttpError>() {
        return e.clone();
    }
    if rejection.find::<PayloadTooLarge>().is_some() {
        return HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than the server accepts",
        );
    }
    if rejection.find::<LengthRequired>().is_some() {
        return HttpError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "the request needs a Content-Length header (chunked bodies are not accepted)",
        );
    }
    if rejection.find::<UnsupportedMediaType>().is_some() {
        return unsupported_media_type();
    }
    if let Some(e) = rejection.find::<warp::body::BodyDeserializeError>() {
        return HttpError::bad_request("malformed_body", e.to_string());
    }
    if rejection.find::<InvalidQuery>().is_some() {
        return HttpError::bad_request("invalid_query", "the query string is not valid");
    }
    if let Some(name) = rejection
        .find::<InvalidHeader>()
        .map(InvalidHeader::name)
        .or(rejection.find::<MissingHeader>().map(MissingHeader::name))
    {
        // `warp::ws()` checks these headers; a plain GET on /ws lands here.
        let websocket = [
            "connection",
            "upgrade",
            "sec-websocket-key",
            "sec-websocket-version",
        ];
        if websocket.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            return HttpError::bad_request(
                "websocket_upgrade_required",
                "this endpoint speaks WebSocket only: send an upgrade request",
            );
        }
    }
    if let Some(e) = rejection.find::<InvalidHeader>() {
        return HttpError::bad_request(
            "invalid_header",
            format!("header '{}' is not valid", e.name()),
        );
    }
    if let Some(e) = rejection.find::<MissingHeader>() {
        return HttpError::bad_request(
            "missing_header",
            format!("header '{}' is required", e.name()),
        );
    }
    if rejection
        .find::<warp::ws::MissingConnectionUpgrade>()
        .is_some()
    {
        return HttpError::bad_request(
            "websocket_upgrade_required",
            "this endpoint speaks WebSocket only: send an upgrade request",
        );
    }
    if rejection.find::<MethodNotAllowed>().is_some() {
        return HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path does not take this method",
        );
    }
    if rejection.is_not_found() {
        return HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such route");
    }
    // warp's body read error is not public; a client that disconnected or sent a
    // body shorter than its Content-Length ends up here.
    if format!("{rejection:?}").contains("BodyReadError") {
        return HttpError::bad_request("body_read_error", "the request body could not be read");
    }
    HttpError::internal(&format!("unhandled rejection: {rejection:?}"))
}

/// 415: the body is not declared as JSON.
pub(crate) fn unsupported_media_type() -> HttpError {
    HttpError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "the request body must be JSON: send `Content-Type: application/json`",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_whole_characters() {
        let mut short = "é".repeat(10);
        clip_in_place(&mut short);
        assert_eq!(short, "é".repeat(10));
        // 'é' is two bytes: the cut falls inside one and moves back.
        let mut long = format!("x{}", "é".repeat(MAX_QUOTED));
        clip_in_place(&mut long);
        assert!(long.len() <= MAX_QUOTED + '…'.len_utf8(), "{}", long.len());
        assert!(long.ends_with("é…"));
    }

    #[test]
    fn engine_errors_map_to_statuses() {
        let cases = [
            (EngineError::NotFound("x".into()), 404, "flow_not_found"),
            (
                EngineError::NodeNotFound {
                    flow: "f".into(),
                    node: "n".into(),
                },
                404,
                "node_not_found",
            ),
            (EngineError::Conflict("no".into()), 409, "conflict"),
            (
                EngineError::Unavailable("down".into()),
                503,
                "redis_unavailable",
            ),
            (EngineError::NotRunning("stop".into()), 503, "not_running"),
            (EngineError::Timeout("x".into()), 503, "timeout"),
            (EngineError::Store("disk on fire".into()), 500, "internal"),
            (EngineError::Internal("secret".into()), 500, "internal"),
        ];
        for (e, status, code) in cases {
            let h = HttpError::from(e);
            assert_eq!(h.status.as_u16(), status);
            assert_eq!(h.code, code);
            assert!(!h.message.contains("secret") && !h.message.contains("disk"));
        }
    }
}
