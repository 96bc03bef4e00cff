//! The first slice: bootstrap, devices, applications, tokens, JWKS, the
//! permission feed and the demo seed — on SQLite and PostgreSQL.

mod common;

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use common::*;
use sensegate_admin::{Admin, AdminConfig};
use serde_json::json;

async fn admin_key_is_required(h: &Harness) {
    for key in [None, Some("wrong"), Some("")] {
        let r = h.call_as(key, Method::GET, "/api/v1/devices", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(r.body["error"], "unauthorized");
        assert!(r.body["message"].is_string());
    }
    let r = h
        .call_as(
            Some("wrong"),
            Method::POST,
            "/api/v1/applications",
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn devices_are_created_with_a_key_shown_once(h: &Harness) {
    let r = h
        .post(
            "/api/v1/devices",
            json!({"id": "machine-1", "name": "Press 1", "metadata": {"line": 3}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["id"], "machine-1");
    assert_eq!(r.body["name"], "Press 1");
    assert_eq!(r.body["metadata"], json!({"line": 3}));
    assert_eq!(r.body["enabled"], true);
    assert!(r.str("createdAt").ends_with('Z'));
    let key = r.str("ingestKey");
    assert!(key.starts_with("sgd_") && key.len() == 47, "{key}");

    let list = h.get("/api/v1/devices").await;
    assert_eq!(list.status, StatusCode::OK);
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert!(items[0].get("ingestKey").is_none());
    assert!(!list.body.to_string().contains(&key));

    let snap = h.sink.last();
    let d = snap.devices.iter().find(|d| d.id == "machine-1").unwrap();
    assert_eq!(d.tenant, "default");
    assert!(d.enabled);
    use sha2::Digest as _;
    let want: String = sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(d.key_sha256, want);
}

async fn invalid_bodies_get_json_400_naming_the_field(h: &Harness) {
    let cases = [
        (json!({"name": "x"}), "id"),
        (json!({"id": "a b", "name": "x"}), "id"),
        (json!({"id": "ok"}), "name"),
        (json!({"id": "ok", "name": 7}), "name"),
        (
            json!({"id": "ok", "name": "x", "metadata": [1]}),
            "metadata",
        ),
        (json!({"id": "ok", "name": "x", "colour": "red"}), "colour"),
    ];
    for (body, field) in cases {
        let r = h.post("/api/v1/devices", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.body["error"], "invalid_request");
        assert_eq!(r.body["field"], field, "{body}: {r:?}");
    }
    let app_cases = [
        (json!({"expiresAt": in_days(1)}), "name"),
        (json!({"name": "a"}), "expiresAt"),
        (json!({"name": "a", "expiresAt": "tomorrow"}), "expiresAt"),
        (
            json!({"name": "a", "expiresAt": in_days(1), "includeAnomalies": "yes"}),
            "includeAnomalies",
        ),
        (
            json!({"name": "a", "expiresAt": in_days(1), "devices": "d1"}),
            "devices",
        ),
        (
            json!({"name": "a", "expiresAt": in_days(1), "deviceGroups": [1]}),
            "deviceGroups",
        ),
    ];
    for (body, field) in app_cases {
        let r = h.post("/api/v1/applications", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.body["field"], field, "{body}: {r:?}");
    }
}

async fn malformed_requests_get_json_errors_never_plain_text(h: &Harness) {
    use axum::body::Body;
    use axum::http::Request;
    let auth = format!("Bearer {}", h.key);
    let cases = [
        (
            Some("application/json"),
            "{not json",
            StatusCode::BAD_REQUEST,
        ),
        (Some("application/json"), "[1,2]", StatusCode::BAD_REQUEST),
        (Some("application/json"), "", StatusCode::BAD_REQUEST),
        (Some("text/plain"), "{}", StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            Some("application/x-www-form-urlencoded"),
            "id=a&name=b",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            None,
            r#"{"id":"a","name":"b"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ];
    for (ct, body, status) in cases {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/devices")
            .header("authorization", &auth);
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        let r = h.send(b.body(Body::from(body)).unwrap()).await;
        assert_eq!(r.status, status, "{ct:?} {body}");
        let code = if status == StatusCode::BAD_REQUEST {
            "invalid_request"
        } else {
            "unsupported_media_type"
        };
        assert_eq!(r.body["error"], code);
    }
}

async fn application_token_carries_the_documented_claims(h: &Harness) {
    h.device("d1").await;
    h.device("d2").await;
    h.device("d3").await;
    let g = h
        .post(
            "/api/v1/device-groups",
            json!({"id": "g1", "name": "Group", "devices": ["d2"]}),
        )
        .await;
    assert_eq!(g.status, StatusCode::CREATED, "{g:?}");
    let app = h.app("Dashboard", &["d1"], &["g1"], true).await;
    for f in [
        "id",
        "name",
        "createdAt",
        "clientId",
        "clientSecret",
        "expiresAt",
    ] {
        assert!(app.body[f].is_string(), "{f}: {app:?}");
    }
    assert_eq!(app.body["status"], "enabled");
    let (client_id, secret) = (app.str("clientId"), app.str("clientSecret"));
    assert!(client_id.starts_with("sgc_"));
    assert!(secret.starts_with("sgs_") && secret.len() == 47);

    let r = h.token(&client_id, &secret).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let keys: Vec<&String> = r.body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 3, "{r:?}");
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 3600);
    let claims = h.verify(&r.str("access_token")).unwrap();
    assert_eq!(claims.iss, ISSUER);
    assert_eq!(claims.aud, sensegate_broker::token::AUDIENCE);
    assert_eq!(claims.sub, client_id);
    assert_eq!(claims.tenant, "default");
    assert_eq!(claims.app, app.str("id"));
    assert_eq!(claims.devices, ["d1", "d2"]);
    assert!(claims.include_anomalies);
    assert_eq!(claims.exp - claims.iat, 3600);
    assert!(!claims.jti.is_empty());
    let header = jsonwebtoken::decode_header(r.str("access_token")).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(
        header.kid.as_deref(),
        Some(h.sink.last().verification_keys[0].kid.as_str())
    );

    // The list shows the application, never its secret.
    let list = h.get("/api/v1/applications").await;
    let row = &list.body["items"][0];
    assert_eq!(row["name"], "Dashboard");
    assert_eq!(row["status"], "enabled");
    assert_eq!(row["expired"], false);
    for f in ["id", "createdAt", "expiresAt"] {
        assert!(row[f].is_string(), "{f}");
    }
    assert!(!list.body.to_string().contains(&secret));
    assert_eq!(h.live_devices(&app.str("id")), ["d1", "d2"]);
}

async fn jwks_and_discovery_publish_the_verification_key(h: &Harness) {
    let r = h
        .call_as(None, Method::GET, "/.well-known/jwks.json", None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let keys = r.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let snap = h.sink.last();
    assert_eq!(keys[0]["kid"], snap.verification_keys[0].kid.as_str());
    assert_eq!(keys[0]["x"], snap.verification_keys[0].ed25519_x.as_str());
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");
    assert_eq!(keys[0]["alg"], "EdDSA");

    let d = h
        .call_as(None, Method::GET, "/.well-known/openid-configuration", None)
        .await;
    assert_eq!(d.body["issuer"], ISSUER);
    assert_eq!(d.body["token_endpoint"], format!("{ISSUER}/connect/token"));
    assert_eq!(
        d.body["jwks_uri"],
        format!("{ISSUER}/.well-known/jwks.json")
    );
    assert_eq!(
        d.body["grant_types_supported"],
        json!(["client_credentials"])
    );
    assert_eq!(
        d.body["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
}

async fn every_mutation_installs_a_newer_snapshot_first(h: &Harness) {
    let v0 = h.sink.last().version;
    h.device("d1").await;
    let v1 = h.sink.last().version;
    assert!(v1 > v0);
    assert!(h.sink.last().devices.iter().any(|d| d.id == "d1"));
    let app = h.app("A", &["d1"], &[], false).await;
    let snap = h.sink.last();
    assert!(snap.version > v1);
    let entry = snap
        .applications
        .iter()
        .find(|a| a.id == app.str("id"))
        .unwrap();
    assert_eq!(entry.client_id, app.str("clientId"));
    assert_eq!(entry.devices, ["d1"]);
    assert_eq!(entry.secret_generation, 1);
    assert!(entry.enabled);
    // Failed requests install nothing.
    let n = h.sink.snapshots.lock().len();
    let r = h
        .post("/api/v1/devices", json!({"id": "d1", "name": "dup"}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(h.sink.snapshots.lock().len(), n);
    // snapshot() reads the same state.
    assert_eq!(h.admin.snapshot().await.unwrap(), h.sink.last());
}

async fn versions_keep_increasing_across_restarts(h: &Harness) {
    h.device("d1").await;
    let before = h.sink.last().version;
    let sink = Arc::new(RecordingSink::default());
    let (again, generated) = Admin::open(h.cfg.clone(), sink.clone()).await.unwrap();
    assert!(
        generated.is_none(),
        "bootstrap runs only on an empty database"
    );
    assert!(sink.last().version > before);
    assert_eq!(sink.last().devices, h.sink.last().devices);
    assert_eq!(again.snapshot().await.unwrap().version, sink.last().version);
}

async fn demo_seed_is_idempotent_and_rotates_credentials(h: &Harness) {
    let first = h.admin.seed_demo().await.unwrap();
    let ids: Vec<&str> = first.devices.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(ids, ["demo-press-1", "demo-press-2", "demo-oven-1"]);
    let claims = h
        .verify(&h.access_token(&first.client_id, &first.client_secret).await)
        .unwrap();
    assert_eq!(
        claims.devices,
        ["demo-oven-1", "demo-press-1", "demo-press-2"]
    );
    assert!(claims.include_anomalies);

    let second = h.admin.seed_demo().await.unwrap();
    assert_eq!(second.client_id, first.client_id);
    assert_ne!(second.client_secret, first.client_secret);
    assert_eq!(
        h.token(&first.client_id, &first.client_secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    h.access_token(&second.client_id, &second.client_secret)
        .await;
    for ((_, k1), (_, k2)) in first.devices.iter().zip(&second.devices) {
        assert_ne!(k1, k2);
    }
    let apps = h.get("/api/v1/applications").await;
    assert_eq!(apps.body["items"].as_array().unwrap().len(), 1);
    let app = h.get(&format!("/api/v1/applications/{}", claims.app)).await;
    assert_eq!(app.body["name"], "Demo dashboard");
    assert_eq!(app.body["devices"], json!(["demo-oven-1"]));
    assert_eq!(app.body["deviceGroups"], json!(["presses"]));
    assert_eq!(
        h.get("/api/v1/devices").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

both_backends!(
    admin_key_is_required,
    devices_are_created_with_a_key_shown_once,
    invalid_bodies_get_json_400_naming_the_field,
    malformed_requests_get_json_errors_never_plain_text,
    application_token_carries_the_documented_claims,
    jwks_and_discovery_publish_the_verification_key,
    every_mutation_installs_a_newer_snapshot_first,
    versions_keep_increasing_across_restarts,
    demo_seed_is_idempotent_and_rotates_credentials,
);

#[tokio::test]
async fn a_random_admin_key_is_generated_once_when_none_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AdminConfig {
        database_url: format!("sqlite://{}/sensegate.db", dir.path().display()),
        issuer: ISSUER.into(),
        token_ttl: std::time::Duration::from_secs(3600),
        bootstrap_admin_key: None,
        feed_poll: AdminConfig::DEFAULT_FEED_POLL,
    };
    let sink = Arc::new(RecordingSink::default());
    let (admin, key) = Admin::open(cfg.clone(), sink.clone()).await.unwrap();
    let key = key.expect("a generated key");
    assert!(key.starts_with("sga_") && key.len() == 47);
    let router = admin.router();
    use tower::ServiceExt as _;
    let res = router
        .oneshot(
            axum::http::Request::get("/api/v1/devices")
                .header("authorization", format!("Bearer {key}"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop(admin);
    let (_, again) = Admin::open(cfg, sink).await.unwrap();
    assert!(again.is_none());
}
