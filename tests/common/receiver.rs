//! A real HTTP receiver for callbacks (`opts.notify`): a warp server on a loopback
//! port that records every POST (path, headers, raw body) and answers as its path
//! says, so that one receiver plays every part a test needs:
//!
//! - `/ok/{tag}`: 200 at once;
//! - `/fail/{n}/{tag}`: 500 for the first `n` POSTs to this path, then 200;
//! - `/slow/{n}/{ms}/{tag}`: the first `n` POSTs to this path sleep `ms` before their
//!   200 (past the engine's timeout, so they count as failed), then 200 at once.
//!
//! A receiver can be started on a port chosen earlier ([`free_port`]): a test points
//! a flow at a receiver that is down, and starts it later.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use warp::Filter;

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The request path.
    pub path: String,
    /// Headers, names lowercase.
    pub headers: HashMap<String, String>,
    /// The raw body (what the signature covers).
    pub body: Bytes,
    /// Whether the receiver answered (or will answer) 200 at once: the sender saw a
    /// success. A slow answer past the sender's timeout is `false`.
    pub answered_ok: bool,
    /// When it arrived.
    pub at: Instant,
}

impl Hit {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// A header's value, or `""`.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A running receiver; stops when dropped or with [`Receiver::stop`].
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

impl Receiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts a receiver on `addr` (retrying for a while if the port is still busy).
    pub async fn start_on(addr: SocketAddr) -> Receiver {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let recorded = Arc::clone(&hits);
        let route = warp::post()
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(
                move |path: warp::path::FullPath, headers: warp::http::HeaderMap, body: Bytes| {
                    let hits = Arc::clone(&recorded);
                    let counts = Arc::clone(&counts);
                    async move {
                        let path = path.as_str().to_owned();
                        let n = {
                            let mut counts = counts.lock().unwrap();
                            let n = counts.entry(path.clone()).or_insert(0);
                            *n += 1;
                            *n
                        };
                        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                        let arg = |i: usize| parts.get(i).and_then(|p| p.parse::<u64>().ok());
                        let (status, sleep) = match parts.first().copied() {
                            Some("fail") if n <= arg(1).unwrap_or(0) => (500, None),
                            Some("slow") if n <= arg(1).unwrap_or(0) => {
                                (200, Some(Duration::from_millis(arg(2).unwrap_or(0))))
                            }
                            _ => (200, None),
                        };
                        hits.lock().unwrap().push(Hit {
                            path,
                            headers: headers
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect(),
                            body,
                            answered_ok: status == 200 && sleep.is_none(),
                            at: Instant::now(),
                        });
                        if let Some(sleep) = sleep {
                            tokio::time::sleep(sleep).await;
                        }
                        warp::reply::with_status(
                            "",
                            warp::http::StatusCode::from_u16(status).unwrap(),
                        )
                    }
                },
            );
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("binding the receiver on {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async {
                    let _ = rx.await;
                })
                .run(),
        );
        Receiver {
            addr,
            hits,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// `http://{addr}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every POST so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// The POSTs to `path` so far.
    pub fn hits_on(&self, path: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.path == path).collect()
    }

    /// Stops listening and waits for it (a slow answer in progress is cut short).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
