//! Filters, per-application limits, browser access and slow consumers.

use std::time::Duration;

use serde_json::Value;

use crate::harness::Server;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_kind_filters_narrow_the_stream() {
    let server = Server::start(&[]);
    let key_a = server.create_device("a").await;
    let key_b = server.create_device("b").await;
    server.create_device("secret").await;
    let (id, secret) = server.create_app("filtered", &["a", "b"], true).await;
    let token = server.token(&id, &secret).await;

    let resp = server
        .stream_request(&token, "?devices=a,secret", &[])
        .await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("secret"));
    assert_eq!(
        server
            .stream_request(&token, "?kinds=alarm", &[])
            .await
            .status(),
        400
    );
    for empty in ["?devices=", "?devices=,,,"] {
        let resp = server.stream_request(&token, empty, &[]).await;
        assert_eq!(resp.status(), 400, "{empty} would stream nothing, for ever");
    }
    let long = "x".repeat(5000);
    let resp = server
        .stream_request(&token, &format!("?devices={long}"), &[])
        .await;
    assert_eq!(resp.status(), 403);
    assert!(
        resp.text().await.unwrap().len() < 400,
        "the refusal echoes the whole id"
    );

    let mut only_b = server.open_stream(&token, "?devices=b").await;
    let mut only_anomalies = server.open_stream(&token, "?kinds=anomaly").await;
    let lines = |kind: &str| format!("{{\"ts\":1,\"kind\":\"{kind}\",\"readings\":{{\"v\":1}}}}\n");
    let out = server.publish("a", &key_a, &(lines("reading") + &lines("anomaly")));
    assert!(out.status.success());
    let out = server.publish("b", &key_b, &(lines("reading") + &lines("anomaly")));
    assert!(out.status.success());
    let b = only_b.collect_until(WAIT, |e| e.len() == 2).await;
    assert!(b.iter().all(|e| e.json()["deviceId"] == "b"));
    let anomalies = only_anomalies.collect_until(WAIT, |e| e.len() == 2).await;
    assert!(anomalies.iter().all(|e| e.event == "anomaly"));
    assert!(only_b.next(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_streams_for_one_application_get_429() {
    let server = Server::start(&["--max-streams-per-app", "2"]);
    server.create_device("d").await;
    let (id, secret) = server.create_app("limited", &["d"], false).await;
    let token = server.token(&id, &secret).await;
    let first = server.open_stream(&token, "").await;
    let _second = server.open_stream(&token, "").await;
    let third = server.stream_request(&token, "", &[]).await;
    assert_eq!(third.status(), 429);
    assert_eq!(
        third.json::<Value>().await.unwrap()["error"],
        "too_many_streams"
    );
    // Closing one frees its place.
    drop(first);
    for _ in 0..50 {
        if server.stream_request(&token, "", &[]).await.status() == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a closed stream must free its place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_use_the_query_token_and_cors() {
    let server = Server::start(&["--cors-origin", "https://dash.example"]);
    let key = server.create_device("d").await;
    let (id, secret) = server.create_app("browser", &["d"], false).await;
    let token = server.token(&id, &secret).await;
    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/v1/stream/telemetry"))
        .header("Origin", "https://dash.example")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "last-event-id")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://dash.example"
    );
    let resp = server
        .client
        .get(server.url(&format!("/v1/stream/telemetry?access_token={token}")))
        .header("Origin", "https://dash.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://dash.example"
    );
    let mut stream = crate::harness::SseStream::new(resp);
    server.publish_n("d", &key, 1);
    stream.collect_until(WAIT, |e| e.len() == 1).await;
    let other = server
        .client
        .get(server.url(&format!("/v1/stream/telemetry?access_token={token}")))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    drop(other);
    let logs = server.output.lock().unwrap().clone();
    assert!(
        !logs.contains(&token),
        "the query token must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_neither_grows_memory_nor_slows_a_healthy_one() {
    let server = Server::start(&["--subscriber-queue", "4096"]);
    let key = server.create_device("d").await;
    let (id, secret) = server.create_app("two readers", &["d"], false).await;
    let token = server.token(&id, &secret).await;
    // The stalled reader never reads after the headers; the kernel's socket
    // buffers fill first, then its queue, which then drops oldest.
    let mut stalled = server.open_stream(&token, "").await;
    let mut healthy = server.open_stream(&token, "").await;
    let rss_before = server.rss_kib();
    const N: usize = 40_000;
    let publisher = server
        .publish_command("d", &key, &crate::harness::readings(N))
        .spawn()
        .unwrap();
    let got = healthy
        .collect_until(WAIT, |e| {
            e.len() == N || e.last().is_some_and(|e| e.event == "gap")
        })
        .await;
    assert_eq!(got.len(), N, "the healthy reader must not lose anything");
    let seqs_ok = got
        .iter()
        .enumerate()
        .all(|(i, e)| e.json()["seq"] == i as u64 + 1);
    assert!(seqs_ok, "the healthy reader gets every event in order");
    let mut publisher = publisher;
    assert!(publisher.wait().unwrap().success());
    let rss_growth = server.rss_kib().saturating_sub(rss_before);
    // 10,000 of the events stay in the replay ring and the stalled queue
    // holds 4,096 pointers: far below what buffering everything would take.
    assert!(rss_growth < 64 * 1024, "RSS grew by {rss_growth} KiB");
    // The stalled reader, when it finally reads, is told what it lost.
    let mut saw_gap = None;
    while let Some(ev) = stalled.next(Duration::from_secs(2)).await {
        if ev.event == "gap" {
            saw_gap = Some(ev.json());
            break;
        }
    }
    let gap = saw_gap.expect("a gap event for the dropped events");
    assert_eq!(gap["reason"], "slow-consumer");
    let dropped = server
        .metric("sensegate_stream_events_dropped_total{reason=\"slow_consumer\"}")
        .await
        .expect("the drop counter");
    assert!(dropped > 0.0);
}
