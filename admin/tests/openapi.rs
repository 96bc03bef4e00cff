//! The OpenAPI document matches the routes, and the checked-in copy
//! (`admin/openapi.json`) matches the document.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;

/// Every operation the document lists is routed (no 404 from routing, no
/// 405), and every operation we serve is listed.
#[tokio::test]
async fn the_document_lists_exactly_the_served_operations() {
    let h = harness(Backend::Sqlite).await.unwrap();
    let doc = h
        .call_as(None, Method::GET, "/api/v1/openapi.json", None)
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let mut listed = Vec::new();
    for (path, item) in doc.body["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Ok(m) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            listed.push(format!("{m} {path}"));
            let uri = path.replace("{id}", "nope");
            let mut b = Request::builder().method(m.clone()).uri(&uri);
            let body = if path == "/connect/token" {
                b = b.header("content-type", "application/x-www-form-urlencoded");
                Body::from("grant_type=client_credentials&client_id=x&client_secret=y")
            } else {
                b = b.header("authorization", format!("Bearer {}", h.key));
                b = b.header("content-type", "application/json");
                Body::from(if matches!(m, Method::POST | Method::PATCH) {
                    "{}"
                } else {
                    ""
                })
            };
            let r = h.send(b.body(body).unwrap()).await;
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
            let unrouted = r.status == StatusCode::NOT_FOUND
                && (r.body.is_null()
                    || r.body["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("no such API route")));
            assert!(!unrouted, "{m} {path} is documented but not routed");
            let security = op["security"][0].as_object().unwrap();
            let want = if path.starts_with("/api/v1") {
                "adminKey"
            } else {
                "clientBasic"
            };
            assert!(security.contains_key(want), "{m} {path}");
        }
    }
    listed.sort();
    let mut want = vec![
        "POST /connect/token",
        "GET /api/v1/devices",
        "POST /api/v1/devices",
        "GET /api/v1/devices/{id}",
        "PATCH /api/v1/devices/{id}",
        "DELETE /api/v1/devices/{id}",
        "POST /api/v1/devices/{id}/rotate-key",
        "POST /api/v1/devices/{id}/disable",
        "POST /api/v1/devices/{id}/enable",
        "GET /api/v1/device-groups",
        "POST /api/v1/device-groups",
        "GET /api/v1/device-groups/{id}",
        "PATCH /api/v1/device-groups/{id}",
        "DELETE /api/v1/device-groups/{id}",
        "GET /api/v1/applications",
        "POST /api/v1/applications",
        "GET /api/v1/applications/{id}",
        "PATCH /api/v1/applications/{id}",
        "DELETE /api/v1/applications/{id}",
        "POST /api/v1/applications/{id}/rotate-secret",
        "POST /api/v1/applications/{id}/disable",
        "POST /api/v1/applications/{id}/enable",
        "GET /api/v1/audit",
    ];
    want.sort();
    assert_eq!(listed, want);
    h.finish().await;
}

/// `admin/openapi.json` is what clients and the web page build against;
/// regenerate it with `SENSEGATE_UPDATE_OPENAPI=1 cargo test -p
/// sensegate-admin --test openapi`.
#[tokio::test]
async fn the_checked_in_document_is_current() {
    let h = harness(Backend::Sqlite).await.unwrap();
    let req = Request::get("/api/v1/openapi.json")
        .body(Body::empty())
        .unwrap();
    let doc = h.send(req).await.body;
    let generated = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var_os("SENSEGATE_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "admin/openapi.json is stale: run SENSEGATE_UPDATE_OPENAPI=1 cargo test -p sensegate-admin --test openapi"
    );
    h.finish().await;
}

/// Unknown API paths and methods get JSON errors, and the admin router
/// merges into a router that has its own fallback (the broker's).
#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let h = harness(Backend::Sqlite).await.unwrap();
    let r = h.get("/api/v1/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error"], "not_found");
    let r = h.call(Method::PUT, "/api/v1/devices", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.body["error"], "method_not_allowed");
    let allow = r.headers["allow"].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");

    use tower::ServiceExt as _;
    let merged = axum::Router::new()
        .route("/v1/other", axum::routing::get(|| async { "other" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "broker fallback") })
        .merge(h.admin.router());
    let res = merged
        .clone()
        .oneshot(Request::get("/v1/other").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = merged
        .oneshot(
            Request::get("/.well-known/jwks.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    h.finish().await;
}
