//! The operator's web page at `/admin/`: plain HTML, CSS and JavaScript
//! modules from `admin/ui/`, embedded in the binary at compile time (no
//! build step, no CDN, nothing fetched at run time). The page talks to the
//! admin REST API on the same origin with the admin key the operator signs in
//! with.
//!
//! Every response carries a strict Content-Security-Policy (same-origin
//! scripts, styles, images and fetches only; no inline code, no framing, no
//! DOM XSS sinks via Trusted Types) and `Cache-Control: no-cache` with an
//! `ETag`, so a new binary's assets are picked up at once while unchanged
//! ones revalidate with a `304`.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

/// The policy of every `/admin` response.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
                   require-trusted-types-for 'script'; trusted-types 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../ui/", $name)),
        }
    };
}

/// Every file of `admin/ui/` (a test checks that none is missing).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("apps.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("preview.js", "text/javascript; charset=utf-8"),
    asset!("resources.js", "text/javascript; charset=utf-8"),
    asset!("widgets.js", "text/javascript; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// `/admin` (redirects to `/admin/`), `/admin/` (the page) and
/// `/admin/<file>`.
pub(crate) fn routes() -> Router {
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/admin/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move { serve(&path, &headers) }),
        )
}

/// The strong `ETag` of each asset, in [`ASSETS`] order.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        let mut res = (StatusCode::NOT_FOUND, "not found\n").into_response();
        secure(res.headers_mut());
        return res;
    };
    let asset = &ASSETS[i];
    let etag = &etags()[i];
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(headers);
    res
}

fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(path: &str, etag: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(e) = etag {
            req = req.header(header::IF_NONE_MATCH, e);
        }
        routes()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    fn header(res: &Response, name: header::HeaderName) -> &str {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn serves_index_with_csp() {
        let res = get("/admin/", None).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            header(&res, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header(&res, header::CONTENT_SECURITY_POLICY), CSP);
        assert!(CSP.contains("default-src 'none'") && !CSP.contains("unsafe"));
        assert_eq!(header(&res, header::CACHE_CONTROL), "no-cache");
        assert_eq!(header(&res, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        let etag = header(&res, header::ETAG).to_string();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("<script type=\"module\" src=\"app.js\">"));

        let again = get("/admin/", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn serves_assets_with_their_types() {
        let res = get("/admin/app.js", None).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            header(&res, header::CONTENT_TYPE),
            "text/javascript; charset=utf-8"
        );
        let res = get("/admin/app.css", None).await;
        assert_eq!(
            header(&res, header::CONTENT_TYPE),
            "text/css; charset=utf-8"
        );
        let res = get("/admin", None).await;
        assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(header(&res, header::LOCATION), "/admin/");
    }

    #[tokio::test]
    async fn unknown_assets_are_404() {
        for path in [
            "/admin/nope.js",
            "/admin/../Cargo.toml",
            "/admin/ui/app.js",
            "/admin/app.js/x",
        ] {
            let res = get(path, None).await;
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(header(&res, header::CONTENT_SECURITY_POLICY), CSP);
        }
    }

    #[test]
    fn every_ui_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        for entry in std::fs::read_dir(dir).expect("admin/ui") {
            let name = entry.expect("entry").file_name();
            let name = name.to_string_lossy();
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "admin/ui/{name} is not in ui::ASSETS"
            );
        }
    }
}
