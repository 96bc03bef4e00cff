//! A client that connects and then does nothing useful (an HTTP/2 preface
//! answered with pings and no stream, or a request body dripped a byte at a
//! time) must not keep a connection slot for ever: with `--max-connections`
//! of them nobody else gets in. Streams, which are requests in flight, and
//! upgraded WebSockets must stay open however quiet they are.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Server, SseStream, ADMIN_KEY};
use crate::websocket_streams_behave::{connect, next};

/// One HTTP/2 frame: 9-byte header, then the payload.
fn h2_frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

const PING: u8 = 0x6;
const SETTINGS: u8 = 0x4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_without_streams_is_closed_even_if_it_pings() {
    let server = Server::start(&["--http-idle-timeout", "2"]);
    let mut conn = TcpStream::connect(server.http).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    conn.write_all(&h2_frame(SETTINGS, 0, &[])).await.unwrap();
    let opened = Instant::now();
    let mut buf = [0u8; 4096];
    let closed_after = loop {
        assert!(
            opened.elapsed() < Duration::from_secs(15),
            "an idle HTTP/2 connection stayed open"
        );
        // Keep pinging: activity that is not a request does not count.
        if conn.write_all(&h2_frame(PING, 0, &[7; 8])).await.is_err() {
            break opened.elapsed();
        }
        let read = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            break opened.elapsed();
        }
    };
    assert!(
        closed_after >= Duration::from_millis(1500),
        "closed after {closed_after:?}, before the idle timeout"
    );
    // The server itself is fine.
    let health = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// Sends a request head declaring a long body, and only the start of it.
async fn drip(server: &Server, path: &str, content_type: &str, auth: &str) -> String {
    let mut conn = TcpStream::connect(server.http).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\n{auth}\
         Content-Length: 16000\r\n\r\n{{",
        server.http
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "{path}: no answer to a dripped body within 30 s"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{path}: answered before the body could have arrived"
    );
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripped_request_body_times_out_with_408() {
    let server = Server::start(&[]);
    let token = drip(
        &server,
        "/connect/token",
        "application/x-www-form-urlencoded",
        "",
    );
    let auth = format!("Authorization: Bearer {ADMIN_KEY}\r\n");
    let admin = drip(&server, "/api/v1/devices", "application/json", &auth);
    let (token, admin) = tokio::join!(token, admin);
    assert!(token.starts_with("HTTP/1.1 408"), "{token}");
    assert!(token.contains(r#""error":"invalid_request""#), "{token}");
    assert!(admin.starts_with("HTTP/1.1 408"), "{admin}");
    assert!(admin.contains(r#""error":"request_timeout""#), "{admin}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_streams_outlive_the_idle_timeout() {
    let server = Server::start(&["--http-idle-timeout", "1", "--heartbeat", "60"]);
    let key = server.create_device("d").await;
    let (id, secret) = server.create_app("quiet", &["d"], false).await;
    let token = server.token(&id, &secret).await;
    let (_h2, resp) = server.h2_stream_request(&token).await;
    let mut sse = SseStream::new(resp);
    let (mut ws, _) = connect(&server, &token, "", None).await;

    // Three idle timeouts with nothing on either connection.
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.publish_n("d", &key, 1);
    let got = sse
        .collect_until(Duration::from_secs(10), |e| !e.is_empty())
        .await;
    assert_eq!(got[0].json()["seq"], 1, "the HTTP/2 stream was closed");
    match next(&mut ws).await {
        Message::Text(t) => assert!(t.contains(r#""seq":1"#), "{t}"),
        other => panic!("the WebSocket was closed: {other:?}"),
    }
}
