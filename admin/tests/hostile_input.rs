//! Input that must never become a 500 — PostgreSQL in particular refuses
//! text with NUL bytes, so none may reach it.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::json;

async fn nul_bytes_and_odd_ids_never_reach_sql(h: &Harness) {
    h.app("Real", &[], &[], false).await;
    for cid in ["%00abc", "sgc_%00", "%C3%BC", "a%0Ab", &"x".repeat(200)] {
        let body = format!("grant_type=client_credentials&client_id={cid}&client_secret=s");
        let r = h
            .token_raw(
                &[("content-type", "application/x-www-form-urlencoded")],
                &body,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{cid}: {r:?}");
        assert_eq!(r.body["error"], "invalid_client");
    }
    for path in [
        "/api/v1/applications/%00",
        "/api/v1/devices/%00x",
        "/api/v1/device-groups/a%00",
        "/api/v1/devices/%C3%BC",
        "/api/v1/applications/..%2F..",
    ] {
        let r = h.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {r:?}");
        let r = h.patch(path, json!({"name": "x"})).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {r:?}");
    }
    for q in [
        "/api/v1/audit?actor=%00",
        "/api/v1/audit?targetId=a%00",
        "/api/v1/applications?name=%00",
        "/api/v1/devices?cursor=%00",
    ] {
        let r = h.get(q).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {r:?}");
    }
    let r = h
        .post("/api/v1/devices", json!({"id": "d\u{0}", "name": "n"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h
        .post("/api/v1/devices", json!({"id": "d", "name": "n\u{0}"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h
        .post(
            "/api/v1/devices",
            json!({"id": "d", "name": "n", "metadata": {"k\u{0}": "v\u{0}"}}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "metadata is stored as escaped JSON"
    );
    assert_eq!(
        h.get("/api/v1/devices/d").await.body["metadata"],
        json!({"k\u{0}": "v\u{0}"})
    );
}

both_backends!(nul_bytes_and_odd_ids_never_reach_sql);
