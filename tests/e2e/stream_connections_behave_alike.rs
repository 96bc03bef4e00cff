//! A stream request on a fresh connection is served by the broker straight on
//! the socket; on a connection that already carried another request it goes
//! through hyper. Clients must not be able to tell, except that the direct
//! path closes the connection once the stream ends.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Server;

/// A raw HTTP/1.1 connection, read by hand so the test sees the exact framing.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(server: &Server) -> Raw {
        Raw {
            tcp: TcpStream::connect(server.stream_http).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), self.tcp.read(&mut chunk))
            .await
            .expect("server went quiet")
            .unwrap();
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The response head, lower-cased.
    async fn head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf.drain(..end + 4).collect()).unwrap();
                return head.to_ascii_lowercase();
            }
            assert!(self.fill().await, "closed before the head");
        }
    }

    /// One chunk of a chunked body (empty for the last one).
    async fn chunk(&mut self) -> Vec<u8> {
        loop {
            if let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let size = std::str::from_utf8(&self.buf[..eol]).unwrap();
                let size = usize::from_str_radix(size, 16).unwrap();
                if self.buf.len() >= eol + 2 + size + 2 {
                    let data = self.buf[eol + 2..eol + 2 + size].to_vec();
                    assert_eq!(&self.buf[eol + 2 + size..eol + 4 + size], b"\r\n");
                    self.buf.drain(..eol + 4 + size);
                    return data;
                }
            }
            assert!(self.fill().await, "closed inside a chunk");
        }
    }

    /// Body text until it holds `n` event records.
    async fn records(&mut self, n: usize) -> Vec<String> {
        let mut text = String::new();
        loop {
            let records: Vec<String> = text
                .split("\n\n")
                .filter(|r| r.starts_with("id: "))
                .map(str::to_owned)
                .collect();
            if records.len() >= n {
                return records;
            }
            let chunk = self.chunk().await;
            assert!(!chunk.is_empty(), "body ended after {text:?}");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

fn stream_request(token: &str) -> String {
    format!("GET /v1/stream/telemetry HTTP/1.1\r\nHost: sensegate\r\nAuthorization: Bearer {token}\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_and_reused_connections_stream_the_same_records() {
    let server = Server::start(&[]);
    let key = server.create_device("d1").await;
    let (id, secret) = server.create_app("app", &["d1"], false).await;
    let token = server.token(&id, &secret).await;

    // Fresh connection: served directly.
    let mut direct = Raw::connect(&server).await;
    direct
        .tcp
        .write_all(stream_request(&token).as_bytes())
        .await
        .unwrap();
    let head = direct.head().await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    for line in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "transfer-encoding: chunked",
        "connection: close",
    ] {
        assert!(head.contains(line), "direct head lacks {line:?}: {head}");
    }
    assert!(!head.contains("content-length"), "{head}");
    let preamble = direct.chunk().await;
    assert!(preamble.starts_with(b": connected\n"), "{preamble:?}");

    // Reused connection: another request first, then the stream via hyper.
    let mut routed = Raw::connect(&server).await;
    routed
        .tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: sensegate\r\n\r\n")
        .await
        .unwrap();
    let health = routed.head().await;
    assert!(health.starts_with("http/1.1 200"), "{health}");
    routed.buf.drain(..3); // "ok\n"
    routed
        .tcp
        .write_all(stream_request(&token).as_bytes())
        .await
        .unwrap();
    let head = routed.head().await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");

    let open = server
        .metric("sensegate_stream_subscribers{transport=\"sse\"}")
        .await;
    assert_eq!(open, Some(2.0));
    server.publish_n("d1", &key, 50);
    let a = direct.records(50).await;
    let b = routed.records(50).await;
    assert_eq!(a, b, "both paths carry byte-identical records");

    // A client that goes away is noticed without anything to send.
    drop(direct);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server
        .metric("sensegate_stream_subscribers{transport=\"sse\"}")
        .await
        != Some(1.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "closed stream still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Refusals on a fresh connection: the router's exact answer, then close.
    let mut refused = Raw::connect(&server).await;
    refused
        .tcp
        .write_all(stream_request("not.a.token").as_bytes())
        .await
        .unwrap();
    let head = refused.head().await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(
        head.contains("www-authenticate: bearer error=\"invalid_token\""),
        "{head}"
    );
    assert!(head.contains("connection: close"), "{head}");
    while refused.fill().await {}
    let body: serde_json::Value = serde_json::from_slice(&refused.buf).unwrap();
    assert_eq!(body["error"], "invalid_token");

    // A head sent in pieces is still one request.
    let mut slow = Raw::connect(&server).await;
    let req = stream_request(&token);
    for piece in req.as_bytes().chunks(7) {
        slow.tcp.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(slow.head().await.starts_with("http/1.1 200"));
}
