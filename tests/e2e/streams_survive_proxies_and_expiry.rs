//! Streams stay open through idle periods, over HTTP/1.1 and HTTP/2, and end
//! exactly at token expiry in a way the client can resume from.

use std::time::{Duration, Instant};

use crate::harness::Server;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_gets_headers_at_once_and_heartbeats() {
    let server = Server::start(&["--heartbeat", "1"]);
    server.create_device("quiet").await;
    let (id, secret) = server.create_app("idle", &["quiet"], false).await;
    let token = server.token(&id, &secret).await;
    let started = Instant::now();
    let resp = server.stream_request(&token, "", &[]).await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "headers must not wait for data"
    );
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    assert!(h.get("content-length").is_none());
    let mut stream = crate::harness::SseStream::new(resp);
    // No events, but comments keep arriving.
    assert!(stream.next(Duration::from_millis(2_500)).await.is_none());
    assert!(stream.comments.iter().any(|c| c == "connected"));
    assert!(
        stream
            .comments
            .iter()
            .filter(|c| *c == "keep-alive")
            .count()
            >= 2,
        "{:?}",
        stream.comments
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_closes_at_exp_and_a_new_token_resumes_the_gap() {
    let server = Server::start(&["--token-ttl", "3"]);
    let key = server.create_device("d").await;
    let (id, secret) = server.create_app("expiring", &["d"], false).await;
    let token = server.token(&id, &secret).await;
    let opened = Instant::now();
    let mut stream = server.open_stream(&token, "").await;
    server.publish_n("d", &key, 5);
    let got = stream.collect_until(WAIT, |e| e.len() == 5).await;
    let last = got.last().unwrap().id();
    let end = stream.collect_until(WAIT, |e| !e.is_empty()).await;
    assert_eq!(end[0].event, "token-expired");
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(1_500) && lived < Duration::from_secs(5),
        "closed after {lived:?}"
    );
    assert!(
        stream.next(Duration::from_secs(2)).await.is_none(),
        "stream must end after token-expired"
    );

    // Events published while the client had no stream are not lost.
    server.publish_n("d", &key, 5);
    let fresh = server.token(&id, &secret).await;
    let mut stream = server
        .open_stream_with(&fresh, "", &[("Last-Event-ID", &last.to_string())])
        .await;
    let resumed = stream.collect_until(WAIT, |e| e.len() == 5).await;
    let seqs: Vec<u64> = resumed
        .iter()
        .map(|e| e.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [6, 7, 8, 9, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_leaves_the_connection_usable() {
    let server = Server::start(&[]);
    let key = server.create_device("d").await;
    let (id, secret) = server.create_app("h2", &["d"], false).await;
    let token = server.token(&id, &secret).await;
    let (h2, resp) = server.h2_stream_request(&token).await;
    assert_eq!(resp.status(), 200);
    for forbidden in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
        assert!(resp.headers().get(forbidden).is_none(), "{forbidden} on h2");
    }
    let mut stream = crate::harness::SseStream::new(resp);
    // Other requests on the same h2 connection keep working while it streams.
    let health = h2.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    assert_eq!(health.status(), 200);
    server.publish_n("d", &key, 3);
    let got = stream.collect_until(WAIT, |e| e.len() == 3).await;
    assert_eq!(got[2].json()["seq"], 3);
}
