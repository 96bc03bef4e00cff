//! `POST /connect/token` to the letter of RFC 6749, brute-force throttling,
//! and signing-key rotation — on both backends.

mod common;

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use serde_json::json;

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// Headers, body, expected status, expected `error`.
type Case<'a> = (Vec<(&'a str, &'a str)>, String, StatusCode, &'a str);

async fn basic_and_body_authentication_both_work(h: &Harness) {
    let app = h.app("Auth", &[], &[], false).await;
    let (cid, secret) = (app.str("clientId"), app.str("clientSecret"));
    let auth = basic(&cid, &secret);
    let r = h
        .token_raw(
            &[FORM, ("authorization", &auth)],
            "grant_type=client_credentials",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    h.verify(&r.str("access_token")).unwrap();
    // Lower-case scheme, charset parameter.
    let lower = auth.replacen("Basic", "basic", 1);
    let r = h
        .token_raw(
            &[
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=UTF-8",
                ),
                ("authorization", &lower),
            ],
            "grant_type=client_credentials&scope=",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", &cid),
        ("client_secret", &secret),
    ]);
    let r = h.token_raw(&[FORM], &body, None).await;
    assert_eq!(r.status, StatusCode::OK);
}

async fn request_errors_follow_rfc6749(h: &Harness) {
    let app = h.app("Errors", &[], &[], false).await;
    let (cid, secret) = (app.str("clientId"), app.str("clientSecret"));
    let auth = basic(&cid, &secret);
    let body_creds = format!("client_id={cid}&client_secret={secret}");
    let cases: Vec<Case> = vec![
        // Both authentication methods at once.
        (
            vec![FORM, ("authorization", &auth)],
            format!("grant_type=client_credentials&{body_creds}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![FORM, ("authorization", &auth)],
            format!("grant_type=client_credentials&client_id={cid}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // Repeated parameters.
        (
            vec![FORM],
            format!("grant_type=client_credentials&grant_type=client_credentials&{body_creds}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![FORM],
            format!("grant_type=client_credentials&{body_creds}&client_id={cid}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // Missing or other grant types.
        (
            vec![FORM],
            body_creds.clone(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![FORM],
            format!("grant_type=&{body_creds}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![FORM],
            format!("grant_type=password&{body_creds}"),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            vec![FORM],
            format!("grant_type=authorization_code&{body_creds}"),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        // Wrong media types.
        (
            vec![("content-type", "application/json")],
            json!({"grant_type": "client_credentials", "client_id": cid, "client_secret": secret})
                .to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![("content-type", "multipart/form-data; boundary=x")],
            "--x\r\n".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![],
            format!("grant_type=client_credentials&{body_creds}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // No client authentication at all.
        (
            vec![FORM],
            "grant_type=client_credentials".into(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![FORM],
            format!("grant_type=client_credentials&client_id={cid}"),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        // Other schemes and malformed Basic.
        (
            vec![FORM, ("authorization", "Bearer abc")],
            "grant_type=client_credentials".into(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![FORM, ("authorization", "Basic %%%")],
            "grant_type=client_credentials".into(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        // Garbage bytes never make a 500.
        (
            vec![FORM],
            "%%%&&==\u{0}\u{ffff}".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (headers, body, status, error) in cases {
        let r = h.token_raw(&headers, &body, None).await;
        assert_eq!(r.status, status, "{headers:?} {body}: {r:?}");
        assert_eq!(r.body["error"], error, "{headers:?} {body}");
        assert!(r.body["error_description"].is_string());
    }
    let r = h
        .token_raw(&[("content-type", "application/json")], "{}", None)
        .await;
    assert!(r
        .str("error_description")
        .contains("application/x-www-form-urlencoded"));
    let big = format!("grant_type=client_credentials&pad={}", "x".repeat(100_000));
    assert_eq!(
        h.token_raw(&[FORM], &big, None).await.status,
        StatusCode::BAD_REQUEST
    );
}

async fn every_client_failure_looks_the_same(h: &Harness) {
    let mk = |n: &'static str| async move { h.app(n, &[], &[], false).await };
    let good = mk("good").await;
    let disabled = mk("disabled").await;
    h.action(&format!(
        "/api/v1/applications/{}/disable",
        disabled.str("id")
    ))
    .await;
    let deleted = mk("deleted").await;
    h.delete(&format!("/api/v1/applications/{}", deleted.str("id")))
        .await;
    let expiring = h
        .post(
            "/api/v1/applications",
            json!({"name": "expired", "expiresAt": (time::OffsetDateTime::now_utc() + time::Duration::milliseconds(300)).format(&time::format_description::well_known::Rfc3339).unwrap()}),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let cases = [
        (
            "unknown",
            "sgc_nobody".to_string(),
            "sgs_nothing".to_string(),
        ),
        (
            "wrong secret",
            good.str("clientId"),
            disabled.str("clientSecret"),
        ),
        (
            "disabled",
            disabled.str("clientId"),
            disabled.str("clientSecret"),
        ),
        (
            "deleted",
            deleted.str("clientId"),
            deleted.str("clientSecret"),
        ),
        (
            "expired",
            expiring.str("clientId"),
            expiring.str("clientSecret"),
        ),
    ];
    let mut bodies = Vec::new();
    for (what, cid, secret) in &cases {
        let r = h.token(cid, secret).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        // No Basic challenge when Basic was not used: a browser would
        // otherwise pop up its login dialog.
        assert!(r.headers.get("www-authenticate").is_none(), "{what}");
        bodies.push(r.body.to_string());
        let r = h
            .token_raw(
                &[FORM, ("authorization", &basic(cid, secret))],
                "grant_type=client_credentials",
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what} via Basic");
        assert!(r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        bodies.push(r.body.to_string());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert_eq!(
        bodies[0],
        r#"{"error":"invalid_client","error_description":"client authentication failed"}"#
    );
}

async fn only_post_is_allowed(h: &Harness) {
    for m in [Method::GET, Method::PUT, Method::DELETE] {
        let req = Request::builder()
            .method(m.clone())
            .uri("/connect/token")
            .body(Body::empty())
            .unwrap();
        let r = h.send(req).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert_eq!(r.headers["allow"], "POST");
        assert_eq!(r.headers["cache-control"], "no-store");
    }
}

async fn repeated_failures_are_throttled_per_client(h: &Harness) {
    let app = h.app("Target", &[], &[], false).await;
    let (cid, secret) = (app.str("clientId"), app.str("clientSecret"));
    for _ in 0..5 {
        assert_eq!(
            h.token(&cid, "sgs_guess").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let r = h.token(&cid, "sgs_guess").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    // Locked means locked, even for the right secret (no oracle).
    assert_eq!(
        h.token(&cid, &secret).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Other clients are unaffected.
    let other = h.app("Bystander", &[], &[], false).await;
    h.access_token(&other.str("clientId"), &other.str("clientSecret"))
        .await;
}

async fn repeated_failures_are_throttled_per_address(h: &Harness) {
    let attacker: SocketAddr = "192.0.2.7:5000".parse().unwrap();
    let neighbour: SocketAddr = "192.0.2.8:5000".parse().unwrap();
    let app = h.app("Innocent", &[], &[], false).await;
    let body = |cid: &str, s: &str| {
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", cid),
            ("client_secret", s),
        ])
    };
    for i in 0..20 {
        let r = h
            .token_raw(
                &[FORM],
                &body(&format!("sgc_spray{i}"), "x"),
                Some(attacker),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{i}");
    }
    let good = body(&app.str("clientId"), &app.str("clientSecret"));
    let r = h.token_raw(&[FORM], &good, Some(attacker)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(
        h.token_raw(&[FORM], &good, Some(neighbour)).await.status,
        StatusCode::OK
    );
}

/// Client ids are public (they label `/metrics`): guessing at one from
/// elsewhere must not lock the real client out.
async fn a_guesser_cannot_lock_out_the_real_client(h: &Harness) {
    let guesser: SocketAddr = "192.0.2.9:5000".parse().unwrap();
    let owner: SocketAddr = "192.0.2.10:5000".parse().unwrap();
    let app = h.app("Victim", &[], &[], false).await;
    let with = |s: &str| {
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &app.str("clientId")),
            ("client_secret", s),
        ])
    };
    for _ in 0..5 {
        let r = h
            .token_raw(&[FORM], &with("sgs_guess"), Some(guesser))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = h
        .token_raw(&[FORM], &with("sgs_guess"), Some(guesser))
        .await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the guesser is locked"
    );
    let r = h
        .token_raw(&[FORM], &with(&app.str("clientSecret")), Some(owner))
        .await;
    assert_eq!(r.status, StatusCode::OK, "the owner is not");
}

async fn successful_clients_are_not_slowed(h: &Harness) {
    let app = h.app("Busy", &[], &[], false).await;
    let peer: SocketAddr = "198.51.100.1:1".parse().unwrap();
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", &app.str("clientId")),
        ("client_secret", &app.str("clientSecret")),
    ]);
    for i in 0..40 {
        let r = h.token_raw(&[FORM], &body, Some(peer)).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
        // A mistyped secret now and then does not lock a client out.
        if i % 10 == 0 {
            let r = h.token(&app.str("clientId"), "sgs_typo").await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        }
    }
}

async fn signing_key_rotation_keeps_old_tokens_valid(h: &Harness) {
    let app = h.app("Keys", &[], &[], false).await;
    let (cid, secret) = (app.str("clientId"), app.str("clientSecret"));
    let old_token = h.access_token(&cid, &secret).await;
    let old_kid = jsonwebtoken::decode_header(&old_token)
        .unwrap()
        .kid
        .unwrap();
    let new_kid = h.admin.rotate_signing_key().await.unwrap();
    assert_ne!(new_kid, old_kid);
    let new_token = h.access_token(&cid, &secret).await;
    assert_eq!(
        jsonwebtoken::decode_header(&new_token)
            .unwrap()
            .kid
            .unwrap(),
        new_kid
    );
    h.verify(&old_token).unwrap();
    h.verify(&new_token).unwrap();
    let jwks = h
        .call_as(None, Method::GET, "/.well-known/jwks.json", None)
        .await;
    let kids: Vec<&str> = jwks.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [new_kid.as_str(), old_kid.as_str()]);
}

async fn retired_keys_leave_after_one_token_lifetime() {
    let h = harness_with(Backend::Sqlite, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    let app = h.app("Short", &[], &[], false).await;
    let token = h
        .access_token(&app.str("clientId"), &app.str("clientSecret"))
        .await;
    let old_kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    h.admin.rotate_signing_key().await.unwrap();
    assert!(h
        .sink
        .last()
        .verification_keys
        .iter()
        .any(|k| k.kid == old_kid));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let snap = h.admin.snapshot().await.unwrap();
    assert_eq!(snap.verification_keys.len(), 1);
    assert!(snap.verification_keys.iter().all(|k| k.kid != old_kid));
    h.finish().await;
}

#[tokio::test]
async fn retired_signing_keys_expire() {
    retired_keys_leave_after_one_token_lifetime().await;
}

async fn a_key_rotated_by_another_process_is_published_before_use(h: &Harness) {
    // The CLI rotates through its own Admin on the same database.
    let cli_sink = std::sync::Arc::new(sensegate_admin::DiscardSink);
    let (cli, _) = sensegate_admin::Admin::open(h.cfg.clone(), cli_sink)
        .await
        .unwrap();
    let app = h.app("Cross", &[], &[], false).await;
    let kid = cli.rotate_signing_key().await.unwrap();
    // Until the feed poll notices the rotation, tokens are still signed
    // with the previous key, which the broker knows; then the new key is
    // published and used.
    let start = std::time::Instant::now();
    loop {
        let token = h
            .access_token(&app.str("clientId"), &app.str("clientSecret"))
            .await;
        h.verify(&token).unwrap();
        if jsonwebtoken::decode_header(&token).unwrap().kid.unwrap() == kid {
            assert!(h.sink.last().verification_keys.iter().any(|k| k.kid == kid));
            break;
        }
        assert!(
            start.elapsed() < h.cfg.feed_poll + std::time::Duration::from_secs(3),
            "the rotated key is not used after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

both_backends!(
    basic_and_body_authentication_both_work,
    request_errors_follow_rfc6749,
    every_client_failure_looks_the_same,
    only_post_is_allowed,
    repeated_failures_are_throttled_per_client,
    repeated_failures_are_throttled_per_address,
    a_guesser_cannot_lock_out_the_real_client,
    successful_clients_are_not_slowed,
    signing_key_rotation_keeps_old_tokens_valid,
    a_key_rotated_by_another_process_is_published_before_use,
);
