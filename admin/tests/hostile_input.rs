//! Input that must never become a 500 — PostgreSQL in particular refuses
//! text with NUL bytes, so none may reach it.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
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

/// A body over the limit is `413` and one that is not JSON is `415`, each
/// with the API's JSON error body, and neither creates anything.
async fn oversized_or_non_json_bodies_get_their_own_status(h: &Harness) {
    let request = |content_type: &str, body: Body, length: Option<usize>| {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/devices")
            .header(header::AUTHORIZATION, format!("Bearer {}", h.key))
            .header(header::CONTENT_TYPE, content_type);
        if let Some(n) = length {
            b = b.header(header::CONTENT_LENGTH, n);
        }
        b.body(body).unwrap()
    };
    let huge = format!(
        r#"{{"id":"big","name":"Big","metadata":{{"pad":"{}"}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    // Declared up front, and streamed without a length.
    let declared = request(
        "application/json",
        Body::from(huge.clone()),
        Some(huge.len()),
    );
    let chunks: Vec<Result<String, std::io::Error>> = huge
        .as_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let streamed = request(
        "application/json",
        Body::from_stream(futures_util::stream::iter(chunks)),
        None,
    );
    for req in [declared, streamed] {
        let r = h.send(req).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{r:?}");
        assert_eq!(r.body["error"], "payload_too_large");
    }
    let r = h
        .send(request(
            "text/plain",
            Body::from(r#"{"id":"plain","name":"Plain"}"#),
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{r:?}");
    assert_eq!(r.body["error"], "unsupported_media_type");
    for id in ["big", "plain"] {
        assert_eq!(
            h.get(&format!("/api/v1/devices/{id}")).await.status,
            StatusCode::NOT_FOUND
        );
    }
    // A body within the limit still works.
    h.device("fits").await;
}

/// Admin keys cannot be guessed at leisure: wrong keys from one address
/// are throttled like the token endpoint's guesses; other addresses, and
/// the right key from elsewhere, are unaffected.
async fn wrong_admin_keys_are_throttled_per_address(h: &Harness) {
    let get = |key: &str, peer: &str| {
        let mut req = Request::builder()
            .uri("/api/v1/devices")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(
            peer.parse::<std::net::SocketAddr>().unwrap(),
        ));
        req
    };
    for i in 0..20 {
        let r = h.send(get(&format!("sga_guess{i}"), "192.0.2.50:1")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{i}");
    }
    let r = h.send(get(BOOTSTRAP_KEY, "192.0.2.50:1")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert_eq!(r.body["error"], "too_many_requests");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let r = h.send(get(BOOTSTRAP_KEY, "192.0.2.51:1")).await;
    assert_eq!(r.status, StatusCode::OK, "another address is not throttled");
}

both_backends!(
    nul_bytes_and_odd_ids_never_reach_sql,
    oversized_or_non_json_bodies_get_their_own_status,
    wrong_admin_keys_are_throttled_per_address,
);
