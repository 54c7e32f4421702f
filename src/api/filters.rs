//! The routes: which request reaches which handler, with what extracted.
//!
//! Every route matches its path first, then checks the token, then the method:
//! an unknown path is a 404 (not a 405, and not a 401), a known path with the
//! wrong method a 405 with `Allow` once the caller is authenticated. GET routes
//! answer HEAD too, and every path answers OPTIONS with 204 and `Allow`. Routes
//! are boxed so that the combined filter type stays small and quick to compile.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use subtle::ConstantTimeEq;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::errors::HttpError;
use super::{handlers, ws, ApiState, BODY_READ_TIMEOUT};

/// Every route of the API, unrecovered.
///
/// Each path is a group of branches, one per method, and a last one from
/// [`methods`] for OPTIONS and the methods the path does not take. Every branch
/// matches the path and checks the token itself, so that whichever branch
/// rejects, the rejection is about this request's path.
pub(crate) fn api(state: Arc<ApiState>) -> BoxedFilter<(Response,)> {
    let health = warp::path!("healthz")
        .and(get_or_head())
        .then(handlers::healthz)
        .or(warp::path!("healthz").and(methods(GET_ONLY)))
        .unify();
    let ready = warp::path!("readyz")
        .and(get_or_head())
        .and(with_state(&state))
        .then(handlers::readyz)
        .or(warp::path!("readyz").and(methods(GET_ONLY)))
        .unify();

    let flows = || warp::path!("flows").and(auth(&state));
    let create = flows()
        .and(warp::post())
        .and(with_state(&state))
        .and(warp::header::optional::<String>("idempotency-key"))
        // A traceparent that is not even a header string (non-ASCII bytes) is
        // ignored like any other malformed one, not a 400.
        .and(
            warp::header::optional::<String>("traceparent")
                .or(warp::any().map(|| None))
                .unify(),
        )
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::content_length_limit(state.cfg.body_limit))
        .and(body_within_deadline())
        .then(
            |state, key, traceparent, content_type, body: Bytes| async move {
                handlers::create(state, key, traceparent, content_type, body).await
            },
        );
    let list = flows()
        .and(get_or_head())
        .and(with_state(&state))
        .and(warp::query::<HashMap<String, String>>())
        .then(handlers::list);
    let flows = create
        .or(list)
        .unify()
        .or(flows().and(methods("GET, HEAD, POST, OPTIONS")))
        .unify();

    // Before `flows/{id}`, which would take "counts" for an id.
    let counts_path = || warp::path!("flows" / "counts").and(auth(&state));
    let counts = counts_path()
        .and(get_or_head())
        .and(with_state(&state))
        .and(warp::query::<HashMap<String, String>>())
        .then(handlers::count)
        .or(counts_path().and(methods(GET_ONLY)))
        .unify();

    let flow = || warp::path!("flows" / String).and(auth(&state));
    let get = flow()
        .and(get_or_head())
        .and(with_state(&state))
        .then(handlers::get_flow);
    let delete = flow()
        .and(warp::delete())
        .and(with_state(&state))
        .then(handlers::delete);
    let flow = get
        .or(delete)
        .unify()
        .or(flow()
            .and(methods("GET, HEAD, DELETE, OPTIONS"))
            .map(|_: String, r| r))
        .unify();

    let spec_path = || warp::path!("flows" / String / "spec").and(auth(&state));
    let spec = spec_path()
        .and(get_or_head())
        .and(with_state(&state))
        .then(handlers::get_flow_spec)
        .or(spec_path().and(methods(GET_ONLY)).map(|_: String, r| r))
        .unify();

    let node_path = || warp::path!("flows" / String / "nodes" / String).and(auth(&state));
    let node = node_path()
        .and(get_or_head())
        .and(with_state(&state))
        .then(handlers::get_node)
        .or(node_path()
            .and(methods(GET_ONLY))
            .map(|_: String, _: String, r| r))
        .unify();

    let cancel_path = || warp::path!("flows" / String / "cancel").and(auth(&state));
    let cancel = cancel_path()
        .and(warp::post())
        .and(with_state(&state))
        .then(handlers::cancel)
        .or(cancel_path().and(methods(POST_ONLY)).map(|_: String, r| r))
        .unify();
    let retry_path = || warp::path!("flows" / String / "retry").and(auth(&state));
    let retry = retry_path()
        .and(warp::post())
        .and(with_state(&state))
        .then(handlers::retry)
        .or(retry_path().and(methods(POST_ONLY)).map(|_: String, r| r))
        .unify();

    let signal_path =
        || warp::path!("flows" / String / "nodes" / String / "signal").and(auth(&state));
    let signal = signal_path()
        .and(warp::post())
        .and(with_state(&state))
        .and(warp::header::optional::<String>("content-type"))
        .and(optional_body(state.cfg.body_limit))
        .then(handlers::signal)
        .or(signal_path()
            .and(methods(POST_ONLY))
            .map(|_: String, _: String, r| r))
        .unify();
    let rerun_path =
        || warp::path!("flows" / String / "nodes" / String / "rerun").and(auth(&state));
    let rerun = rerun_path()
        .and(warp::post())
        .and(with_state(&state))
        .then(handlers::rerun)
        .or(rerun_path()
            .and(methods(POST_ONLY))
            .map(|_: String, _: String, r| r))
        .unify();

    let queues_path = || warp::path!("queues").and(auth(&state));
    let queues = queues_path()
        .and(get_or_head())
        .and(with_state(&state))
        .then(handlers::list_queues)
        .or(queues_path().and(methods(GET_ONLY)))
        .unify();
    let queue_path = || warp::path!("queues" / String).and(auth(&state));
    let queue = queue_path()
        .and(get_or_head())
        .and(with_state(&state))
        .then(handlers::get_queue)
        .or(queue_path().and(methods(GET_ONLY)).map(|_: String, r| r))
        .unify();

    let metrics_path = || warp::path!("metrics").and(auth(&state));
    let metrics = metrics_path()
        .and(get_or_head())
        .and(with_state(&state))
        .then(handlers::metrics)
        .or(metrics_path().and(methods(GET_ONLY)))
        .unify();
    let openapi_path = || warp::path!("openapi.json").and(auth(&state));
    let openapi = openapi_path()
        .and(get_or_head())
        .and(with_state(&state))
        .then(handlers::openapi)
        .or(openapi_path().and(methods(GET_ONLY)))
        .unify();
    let socket_path = || warp::path!("ws").and(ws_auth(&state));
    let socket = socket_path()
        .and(warp::get())
        .and(with_state(&state))
        .and(warp::ws())
        .map(ws::upgrade)
        .or(socket_path().and(methods("GET, OPTIONS")))
        .unify();
    health
        .boxed()
        .or(ready.boxed())
        .unify()
        .or(flows.boxed())
        .unify()
        .or(counts.boxed())
        .unify()
        .or(flow.boxed())
        .unify()
        .or(spec.boxed())
        .unify()
        .or(node.boxed())
        .unify()
        .or(cancel.boxed())
        .unify()
        .or(retry.boxed())
        .unify()
        .or(signal.boxed())
        .unify()
        .or(rerun.boxed())
        .unify()
        .or(queues.boxed())
        .unify()
        .or(queue.boxed())
        .unify()
        .or(metrics.boxed())
        .unify()
        .or(openapi.boxed())
        .unify()
        .or(socket.boxed())
        .unify()
        .or(super::schedules::routes(&state))
        .unify()
        .boxed()
}

/// `Allow` of a path served by GET (and so HEAD).
const GET_ONLY: &str = "GET, HEAD, OPTIONS";
/// `Allow` of a path served by POST alone.
const POST_ONLY: &str = "POST, OPTIONS";

/// GET, or HEAD answered as GET: hyper sends the head of the GET response (its
/// status, headers and `Content-Length`) without the body, as RFC 9110 asks of
/// every resource that serves GET.
pub(crate) fn get_or_head() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// The last branch of a path: OPTIONS answers 204 with `allow`, a method not in
/// `allow` is refused with 405 and `Allow` (RFC 9110 wants the header on every 405).
/// A method in `allow` reaching this branch means its own branch rejected the
/// request (a body too large, a bad header...): this branch then rejects as "not
/// found", the weakest rejection, so that the real one is what the client sees.
pub(crate) fn methods(allow: &'static str) -> BoxedFilter<(Response,)> {
    warp::method()
        .and_then(move |method: Method| async move {
            if method == Method::OPTIONS {
                let mut response = warp::Reply::into_response(StatusCode::NO_CONTENT);
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                return Ok(response);
            }
            if allow.split(", ").any(|m| m == method.as_str()) {
                return Err(warp::reject::not_found());
            }
            Err(warp::reject::custom(HttpError::method_not_allowed(allow)))
        })
        .boxed()
}

/// The whole request body, if it arrives within [`BODY_READ_TIMEOUT`]; otherwise
/// 408. `warp::body::bytes()` waits as long as the client likes: a body trickled a
/// byte at a time held a connection for ever (`tests/hostile.rs`).
/// A body that may be absent: a POST without `Content-Length` (`curl -X POST`) has
/// none, and reads as empty rather than a 411; one over `limit` (declared or read)
/// is a 413.
fn optional_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and_then(move |declared: Option<u64>| async move {
            match declared {
                Some(len) if len > limit => Err(warp::reject::custom(too_large(limit))),
                _ => Ok(()),
            }
        })
        .untuple_one()
        .and(warp::body::stream())
        .and_then(move |body| read_body(body, Some(limit)))
}

fn too_large(limit: u64) -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is over the limit of {limit} bytes"),
    )
}

pub(crate) fn body_within_deadline() -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::body::stream().and_then(|body| read_body(body, None))
}

/// Reads a body within [`BODY_READ_TIMEOUT`]; past `limit` bytes (a chunked body
/// has no length to check first) it stops reading with a 413.
async fn read_body(
    body: impl futures::Stream<Item = Result<impl Buf, warp::Error>>,
    limit: Option<u64>,
) -> Result<Bytes, Rejection> {
    let read = async move {
        let mut body = std::pin::pin!(body);
        let mut bytes = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|_| {
                warp::reject::custom(HttpError::bad_request(
                    "body_read_error",
                    "the request body could not be read",
                ))
            })?;
            bytes.put(chunk);
            if let Some(limit) = limit.filter(|l| bytes.len() as u64 > *l) {
                return Err(warp::reject::custom(too_large(limit)));
            }
        }
        Ok(bytes.freeze())
    };
    tokio::time::timeout(BODY_READ_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(warp::reject::custom(HttpError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            )))
        })
}

pub(crate) fn with_state(
    state: &Arc<ApiState>,
) -> impl Filter<Extract = (Arc<ApiState>,), Error = Infallible> + Clone {
    let state = Arc::clone(state);
    warp::any().map(move || Arc::clone(&state))
}

/// Lets the request through when no token is configured or it carries the token
/// as `Authorization: Bearer <token>`; otherwise rejects with 401.
pub(crate) fn auth(state: &Arc<ApiState>) -> BoxedFilter<()> {
    let Some(token) = state.cfg.api_token.clone() else {
        return warp::any().boxed();
    };
    let token = Arc::new(token);
    warp::header::headers_cloned()
        .and_then(move |headers: HeaderMap| {
            let ok = bearer(&headers).is_some_and(|given| token_matches(&token, given));
            async move { check(ok) }
        })
        .untuple_one()
        .boxed()
}

/// [`auth`] for `/ws`, which also takes the token as `?token=`, because browsers
/// cannot set headers on a WebSocket.
fn ws_auth(state: &Arc<ApiState>) -> BoxedFilter<()> {
    let Some(token) = state.cfg.api_token.clone() else {
        return warp::any().boxed();
    };
    let token = Arc::new(token);
    warp::header::headers_cloned()
        .and(warp::query::<HashMap<String, String>>())
        .and_then(move |headers: HeaderMap, query: HashMap<String, String>| {
            let given = bearer(&headers).or(query.get("token").map(|t| t.as_bytes()));
            let ok = given.is_some_and(|given| token_matches(&token, given));
            async move { check(ok) }
        })
        .untuple_one()
        .boxed()
}

fn check(ok: bool) -> Result<(), Rejection> {
    if ok {
        Ok(())
    } else {
        Err(warp::reject::custom(HttpError::unauthorized()))
    }
}

/// The credentials of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(warp::http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Compares in time that depends only on the lengths, so that the answer time does
/// not tell an attacker how much of a guess was right.
fn token_matches(expected: &str, given: &[u8]) -> bool {
    expected.as_bytes().ct_eq(given).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert("authorization", "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        assert!(token_matches("abc", b"abc"));
        assert!(!token_matches("abc", b"abd"));
        assert!(!token_matches("abc", b"abcd"));
    }
}
