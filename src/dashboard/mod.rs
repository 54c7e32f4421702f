//! The web dashboard: a single-page app served at `/`, built only on the REST and
//! WebSocket API (it has no route of its own besides its files).
//!
//! The files in `assets/` are compiled into the binary, so the dashboard works with
//! no internet and no files next to the server. `index.html` names the other files
//! by content hash (`/dashboard/app.3f2a9c1b0d4e5f67.js`): those URLs never change
//! meaning, so browsers may keep them for a year, while `index.html` itself is
//! revalidated on every load (`no-cache` with an `ETag`) and a new binary's page is
//! seen at once.
//!
//! These routes need no token: the page holds no data. It asks for the token when
//! the API answers 401, keeps it in `sessionStorage` and sends it with every API
//! call (`Authorization: Bearer`, or `?token=` on `/ws`).

use std::sync::LazyLock;

use bytes::Bytes;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, Response as HttpResponse, StatusCode};
use warp::reply::Response;
use warp::Filter;

/// The path under which the assets are served.
const ASSET_PREFIX: &str = "dashboard";
/// For content-hashed URLs: their content never changes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// For the page and plain asset names: keep, but ask the server every time.
const REVALIDATE: &str = "no-cache";
/// What the page may load and connect to: only this server (the WebSocket included).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    /// The name in `assets/` (`app.js`).
    name: &'static str,
    /// The content-hashed name index.html uses (`app.<hash>.js`).
    hashed_name: String,
    /// `Content-Type`.
    content_type: &'static str,
    /// The bytes served.
    body: Bytes,
    /// Quoted strong ETag, from the content hash.
    etag: String,
}

impl Asset {
    fn new(name: &'static str, content_type: &'static str, body: Bytes) -> Asset {
        let hash = format!("{:016x}", fnv1a(&body));
        let hashed_name = match name.rsplit_once('.') {
            Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
            None => format!("{name}.{hash}"),
        };
        Asset {
            name,
            hashed_name,
            content_type,
            body,
            etag: format!("\"{hash}\""),
        }
    }
}

/// Every file of the dashboard, index.html with its asset URLs filled in.
struct Assets {
    /// The page at `/`.
    index: Asset,
    /// Scripts and styles under `/dashboard/`.
    files: Vec<Asset>,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

static ASSETS: LazyLock<Assets> = LazyLock::new(|| {
    let files = vec![
        Asset::new(
            "layout.js",
            JS,
            Bytes::from_static(include_bytes!("assets/layout.js")),
        ),
        Asset::new(
            "schedules.js",
            JS,
            Bytes::from_static(include_bytes!("assets/schedules.js")),
        ),
        Asset::new(
            "page.js",
            JS,
            Bytes::from_static(include_bytes!("assets/page.js")),
        ),
        Asset::new(
            "timeline.js",
            JS,
            Bytes::from_static(include_bytes!("assets/timeline.js")),
        ),
        Asset::new(
            "bigflow.js",
            JS,
            Bytes::from_static(include_bytes!("assets/bigflow.js")),
        ),
        Asset::new(
            "flowlist.js",
            JS,
            Bytes::from_static(include_bytes!("assets/flowlist.js")),
        ),
        Asset::new(
            "submit.js",
            JS,
            Bytes::from_static(include_bytes!("assets/submit.js")),
        ),
        Asset::new(
            "app.js",
            JS,
            Bytes::from_static(include_bytes!("assets/app.js")),
        ),
        Asset::new(
            "app.css",
            CSS,
            Bytes::from_static(include_bytes!("assets/app.css")),
        ),
        Asset::new(
            "timeline.css",
            CSS,
            Bytes::from_static(include_bytes!("assets/timeline.css")),
        ),
        Asset::new(
            "listsubmit.css",
            CSS,
            Bytes::from_static(include_bytes!("assets/listsubmit.css")),
        ),
    ];
    // index.html names each file as `{{name}}`; the page's own hash then covers
    // the hashes of everything it loads.
    let mut index = include_str!("assets/index.html").to_owned();
    for file in &files {
        let url = format!("/{ASSET_PREFIX}/{}", file.hashed_name);
        index = index.replace(&format!("{{{{{}}}}}", file.name), &url);
    }
    Assets {
        index: Asset::new("index.html", HTML, Bytes::from(index)),
        files,
    }
});

/// The dashboard's routes: `GET /` (the page) and `GET /dashboard/{file}`. Paths
/// are matched before methods, so every other path is a plain "not found" that
/// loses to whatever the API's routes say about it.
pub fn routes() -> BoxedFilter<(Response,)> {
    let if_none_match = warp::header::optional::<String>("if-none-match");
    let index = warp::path::end()
        .and(warp::get())
        .and(if_none_match)
        .map(|etag: Option<String>| respond(&ASSETS.index, REVALIDATE, etag.as_deref()));
    let file = warp::path!("dashboard" / String)
        .and(warp::get())
        .and(if_none_match)
        .and_then(|name: String, etag: Option<String>| async move {
            asset(&name, etag.as_deref()).ok_or_else(warp::reject::not_found)
        });
    index.or(file).unify().boxed()
}

/// The response for one asset name, hashed (cached for good) or plain (revalidated).
fn asset(name: &str, if_none_match: Option<&str>) -> Option<Response> {
    ASSETS.files.iter().find_map(|a| {
        if a.hashed_name == name {
            Some(respond(a, IMMUTABLE, if_none_match))
        } else if a.name == name {
            Some(respond(a, REVALIDATE, if_none_match))
        } else {
            None
        }
    })
}

/// 200 with the body, or 304 when the client already has this version.
fn respond(asset: &Asset, cache_control: &'static str, if_none_match: Option<&str>) -> Response {
    let fresh = if_none_match.is_some_and(|header| {
        header
            .split(',')
            .any(|tag| tag.trim().trim_start_matches("W/") == asset.etag || tag.trim() == "*")
    });
    let (status, body) = if fresh {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        (StatusCode::OK, asset.body.clone())
    };
    let mut response = HttpResponse::new(body.into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type == HTML {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

/// 64-bit FNV-1a: a content hash for cache busting (not for security), the same
/// in every build of the same bytes.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn index_names_every_asset_by_hash_and_revalidates() {
        let filter = routes();
        let res = warp::test::request().path("/").reply(&filter).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], HTML);
        assert_eq!(res.headers()["cache-control"], REVALIDATE);
        assert!(res.headers().contains_key("content-security-policy"));
        let html = std::str::from_utf8(res.body()).unwrap();
        assert!(!html.contains("{{"), "a placeholder was left: {html}");
        for file in &ASSETS.files {
            let url = format!("/dashboard/{}", file.hashed_name);
            assert!(html.contains(&url), "{url} missing from index.html");
            let res = warp::test::request().path(&url).reply(&filter).await;
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers()["content-type"], file.content_type);
            assert_eq!(res.headers()["cache-control"], IMMUTABLE);
            assert_eq!(res.body().len(), file.body.len());
        }

        let etag = ASSETS.index.etag.clone();
        let res = warp::test::request()
            .path("/")
            .header("if-none-match", &etag)
            .reply(&filter)
            .await;
        assert_eq!(res.status(), 304);
        assert!(res.body().is_empty());
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_not_taken() {
        let filter = routes();
        for path in ["/dashboard/nope.js", "/flows", "/index.html", "/dashboard"] {
            let res = warp::test::request().path(path).filter(&filter).await;
            assert!(res.is_err(), "{path} was served");
        }
        let res = warp::test::request()
            .method("POST")
            .path("/")
            .filter(&filter)
            .await;
        assert!(res.is_err());
    }

    #[test]
    fn hashed_names_keep_the_extension() {
        let a = Asset::new("app.js", JS, Bytes::from_static(b"x"));
        assert!(a.hashed_name.starts_with("app.") && a.hashed_name.ends_with(".js"));
        assert_eq!(a.hashed_name.len(), "app..js".len() + 16);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
