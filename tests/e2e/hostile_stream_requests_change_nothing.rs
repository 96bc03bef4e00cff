//! Hostile stream requests get a clear JSON error (or an in-band gap), and
//! leave nothing behind: no leaked subscriber, no panic.

use serde_json::Value;

use crate::harness::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_stream_requests_get_json_errors_and_leak_nothing() {
    let server = Server::start(&[]);
    server.create_device("d").await;
    let (id, secret) = server.create_app("target", &["d"], false).await;
    let token = server.token(&id, &secret).await;

    // The largest possible resume point: a gap, not a panic.
    for _ in 0..3 {
        let mut s = server
            .open_stream(&token, &format!("?lastEventId={}", u64::MAX))
            .await;
        let got = s
            .collect_until(std::time::Duration::from_secs(10), |e| !e.is_empty())
            .await;
        assert_eq!(got[0].event, "gap");
        assert_eq!(got[0].json()["reason"], "unknown-last-event-id");
    }
    // Every subscription went away with its stream.
    let mut left = f64::MAX;
    for _ in 0..50 {
        left = server
            .metric("sensegate_stream_subscribers{transport=\"sse\"}")
            .await
            .unwrap_or(0.0);
        if left == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0.0, "streams leaked");

    let json_error = |resp: reqwest::Response, status: u16| async move {
        assert_eq!(resp.status().as_u16(), status);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
        body
    };
    // A token in the header and the query at once.
    let resp = server
        .stream_request(&token, &format!("?access_token={token}"), &[])
        .await;
    json_error(resp, 400).await;
    // Repeated parameters.
    let resp = server
        .stream_request(&token, "?devices=d&devices=d", &[])
        .await;
    json_error(resp, 400).await;
    // Another method.
    let resp = server
        .client
        .post(server.url("/v1/stream/telemetry"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "GET");
    json_error(resp, 405).await;
    // A WebSocket upgrade with an unsupported version.
    let resp = server
        .stream_request(
            &token,
            "",
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "8"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
        )
        .await;
    assert!(resp.status().is_client_error());
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_at_rest_are_readable_by_the_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let server = Server::start(&[]);
    server.create_device("d").await;
    let dir = server.data_dir.path();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700, "data dir");
    // The database holds the token signing key; key.pem the QUIC key.
    for file in ["sensegate.db", "key.pem"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    for journal in ["sensegate.db-wal", "sensegate.db-shm"] {
        let p = dir.join(journal);
        if p.exists() {
            assert_eq!(mode(&p) & 0o077, 0, "{journal}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = Server::start(&[]);
    let mut slow = tokio::net::TcpStream::connect(server.http).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    // The server closes (possibly after a 408) within its header timeout.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow connection was never closed");
    assert!(started.elapsed() >= std::time::Duration::from_secs(5));
    // Everyone else is served meanwhile and after.
    assert_eq!(
        server
            .client
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_get_json_404s() {
    let server = Server::start(&[]);
    for path in [
        "/etc/passwd",
        "/api/v1/",
        "/v1/stream",
        "/v1/stream/telemetry/x",
    ] {
        let resp = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let body: Value = resp.json().await.unwrap_or_else(|e| {
            panic!("{path}: not a JSON body: {e}");
        });
        assert_eq!(body["error"], "not_found", "{path}");
    }
}
