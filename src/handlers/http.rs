//! The `http` built-in handler: sends the job's input as JSON to a URL and makes the
//! JSON reply the node's result.

use std::time::Duration;

use async_trait::async_trait;
use dagflow_actors::{Handler, JobContext, JobError};
use serde_json::Value;

/// Time limit of one request when the node sets no `timeoutMs`.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// Largest reply body read; a bigger reply fails the job (not retryable), because the
/// result is stored in the flow's snapshot and sent to every child.
pub const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;

/// How much of an error reply's body goes into the node's error message.
const ERROR_BODY_CHARS: usize = 300;

/// Calls an HTTP endpoint.
///
/// `data`: `url` (required, `http` or `https`), `method` (default `POST`), `headers`
/// (an object of strings), `timeoutMs` (default [`DEFAULT_TIMEOUT_MS`]).
///
/// The request body is the job's input, `{"data": ..., "parents": {...}}`, as JSON
/// (none for `GET` and `HEAD`); the job id goes along as `Idempotency-Key` unless
/// `headers` sets one, because a job may be delivered more than once. A 2xx reply's
/// body is the result: parsed as JSON, `null` when empty, a string otherwise.
/// Timeouts, connection errors, 408, 429 and 5xx replies fail the attempt as
/// retryable; every other status fails the node at once.
///
/// The URL comes from the flow spec: whoever may submit flows may make the server
/// send requests anywhere it can reach. Guard the API with a token accordingly.
#[derive(Debug, Clone)]
pub struct Http {
    /// One client for every job, so connections are pooled; `None` if the TLS
    /// backend could not start, in which case every job fails with the reason.
    client: Result<reqwest::Client, String>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    /// A handler with its own connection pool.
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .user_agent(concat!("dagflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("http: cannot build an HTTP client: {e}"));
        Http { client }
    }
}

/// A node's `data` for the `http` handler, checked.
struct Request {
    url: reqwest::Url,
    method: reqwest::Method,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

fn parse_request(data: &Value) -> Result<Request, JobError> {
    let url = data
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| JobError::fatal("http: `url` (a string) is required"))?;
    let url = reqwest::Url::parse(url)
        .map_err(|e| JobError::fatal(format!("http: `url` is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(JobError::fatal(format!(
            "http: only http and https URLs are supported, not {}",
            url.scheme()
        )));
    }
    let method = match data.get("method") {
        None | Some(Value::Null) => reqwest::Method::POST,
        Some(Value::String(m)) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| JobError::fatal(format!("http: `method` '{m}' is not an HTTP method")))?,
        Some(other) => {
            return Err(JobError::fatal(format!(
                "http: `method` must be a string, got {other}"
            )))
        }
    };
    let mut headers = Vec::new();
    match data.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let value = value.as_str().ok_or_else(|| {
                    JobError::fatal(format!("http: header '{name}' must be a string"))
                })?;
                headers.push((name.clone(), value.to_owned()));
            }
        }
        Some(_) => {
            return Err(JobError::fatal(
                "http: `headers` must be an object of strings",
            ))
        }
    }
    let timeout_ms = match data.get("timeoutMs") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT_MS,
        Some(v) => v.as_u64().filter(|ms| *ms > 0).ok_or_else(|| {
            JobError::fatal(format!(
                "http: `timeoutMs` must be a positive integer, got {v}"
            ))
        })?,
    };
    Ok(Request {
        url,
        method,
        headers,
        timeout: Duration::from_millis(timeout_ms),
    })
}

#[async_trait]
impl Handler for Http {
    async fn run(&self, ctx: JobContext) -> Result<Value, JobError> {
        let client = self
            .client
            .as_ref()
            .map_err(|e| JobError::fatal(e.clone()))?;
        let req = parse_request(&ctx.data)?;
        let mut builder = client
            .request(req.method.clone(), req.url.clone())
            .timeout(req.timeout);
        let mut has_key = false;
        for (name, value) in &req.headers {
            has_key |= name.eq_ignore_ascii_case("idempotency-key");
            builder = builder.header(name.as_str(), value.as_str());
        }
        if !has_key {
            builder = builder.header("idempotency-key", ctx.job_id.to_string());
        }
        if !matches!(req.method, reqwest::Method::GET | reqwest::Method::HEAD) {
            builder = builder.json(&ctx.input());
        }
        let call = async {
            let response = builder
                .send()
                .await
                .map_err(|e| request_error(e, req.timeout))?;
            let status = response.status();
            let body = read_body(response, req.timeout).await?;
            if status.is_success() {
                return Ok(parse_reply(&body));
            }
            let text: String = String::from_utf8_lossy(&body)
                .chars()
                .take(ERROR_BODY_CHARS)
                .collect();
            let message = format!("http: {} {} answered {status}: {text}", req.method, req.url);
            let retryable = status.is_server_error()
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
            Err(JobError { message, retryable })
        };
        tokio::select! {
            result = call => result,
            _ = ctx.cancel.cancelled() => Err(JobError::fatal("cancelled")),
        }
    }
}

/// Reads a reply body, refusing one over [`MAX_REPLY_BYTES`].
async fn read_body(
    mut response: reqwest::Response,
    timeout: Duration,
) -> Result<Vec<u8>, JobError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_REPLY_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| request_error(e, timeout))?
    {
        if body.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn too_big() -> JobError {
    JobError::fatal(format!(
        "http: the reply is larger than {MAX_REPLY_BYTES} bytes"
    ))
}

/// The result of a 2xx body: JSON if it is JSON, `null` if empty, else the text.
fn parse_reply(body: &[u8]) -> Value {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// Whether a failed request may succeed when tried again.
fn request_error(e: reqwest::Error, timeout: Duration) -> JobError {
    if e.is_timeout() {
        return JobError::retryable(format!("http: timed out after {} ms", timeout.as_millis()));
    }
    // reqwest's own message is terse ("error sending request"); the cause says why.
    let mut message = format!("http: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if e.is_builder() || e.is_redirect() {
        JobError::fatal(message)
    } else {
        // Timeouts, refused or dropped connections, a body cut short: the service
        // may well answer next time.
        JobError::retryable(message)
    }
}
