//! Nobody streams without a valid token, and nothing of a stream is sent
//! before the token is checked.

use base64::Engine as _;
use serde_json::Value;

use crate::harness::Server;

async fn assert_invalid_token(server: &Server, auth: Option<&str>, query: &str) {
    let mut req = server
        .client
        .get(server.url(&format!("/v1/stream/telemetry{query}")))
        .header("Accept", "text/event-stream");
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 401, "auth {auth:?}");
    assert_eq!(
        resp.headers()["www-authenticate"].to_str().unwrap(),
        "Bearer error=\"invalid_token\""
    );
    assert_ne!(
        resp.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("text/event-stream")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
    // A short reason, not the JWT library's parser diagnostics.
    let why = body["error_description"].as_str().unwrap_or_default();
    assert!(
        why.len() < 80 && !why.contains("line ") && !why.contains("variant"),
        "{why:?}"
    );
}

/// Re-encodes a JWT's payload with `change` applied, keeping the signature.
fn tamper(token: &str, change: impl FnOnce(&mut Value)) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims: Value = serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
    change(&mut claims);
    parts[1] = b64.encode(claims.to_string());
    parts.join(".")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_refuses_bad_credentials() {
    let server = Server::start(&["--token-ttl", "2"]);
    server.create_device("d1").await;
    let (id, secret) = server.create_app("app", &["d1"], false).await;
    let token = server.token(&id, &secret).await;

    assert_invalid_token(&server, None, "").await;
    assert_invalid_token(&server, Some("Bearer"), "").await;
    assert_invalid_token(&server, Some("Bearer not.a.jwt"), "").await;
    assert_invalid_token(&server, Some("Basic dXNlcjpwYXNz"), "").await;
    let forged = tamper(&token, |c| c["devices"] = serde_json::json!(["d1", "d2"]));
    assert_invalid_token(&server, Some(&format!("Bearer {forged}")), "").await;
    let unsigned = {
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[2] = "";
        parts.join(".")
    };
    assert_invalid_token(&server, Some(&format!("Bearer {unsigned}")), "").await;
    assert_invalid_token(&server, None, "?access_token=garbage").await;
    // alg "none" (the JWT library's parser rejects the header).
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let alg_none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        token.split('.').nth(1).unwrap()
    );
    assert_invalid_token(&server, Some(&format!("Bearer {alg_none}")), "").await;

    // The genuine token works, also as a query parameter…
    drop(server.open_stream(&token, "").await);
    let resp = server
        .client
        .get(server.url(&format!("/v1/stream/telemetry?access_token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    // …until it expires.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert_invalid_token(&server, Some(&format!("Bearer {token}")), "").await;

    // The admin API and the token endpoint refuse bad credentials too.
    let resp = server
        .client
        .get(server.url("/api/v1/applications"))
        .bearer_auth("wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());
    let resp = server
        .client
        .post(server.url("/connect/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id.as_str()),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    // RFC 6749 §5.2: 401 is required only for HTTP Basic; body auth may get 400.
    assert!(
        matches!(resp.status().as_u16(), 400 | 401),
        "{}",
        resp.status()
    );
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
}
