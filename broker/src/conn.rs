//! New HTTP connections, before hyper sees them.
//!
//! Nearly every SSE client opens a connection for one stream and keeps it for
//! hours. The broker reads the first request head of each connection itself
//! ([`StreamAcceptor::accept`]): a plain HTTP/1.1 `GET /v1/stream/telemetry`
//! is served straight on the socket (`stream::h1`, one `writev` per batch
//! of shared records, no per-connection buffers while idle); anything else
//! (other paths, HTTP/2, WebSocket upgrades, cross-origin requests, HTTP/1.0)
//! goes to hyper and the router with the bytes already read put back in
//! front ([`Rewound`]). Both paths run the same authorisation and the same
//! stream session, so clients cannot tell them apart.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::HeaderMap;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::Shared;

/// The stream endpoint's path.
const STREAM_PATH: &str = "/v1/stream/telemetry";

/// Longest request head the broker reads itself; longer ones go to hyper,
/// whose limits and error answers then apply.
const MAX_HEAD: usize = 16 * 1024;

/// Most header fields in a stream request the broker parses itself.
const MAX_HEADERS: usize = 64;

/// Hands each new HTTP connection to the direct SSE path or back to hyper.
#[derive(Clone)]
pub struct StreamAcceptor {
    pub(crate) shared: Arc<Shared>,
    /// How long a client may take to send its first request head.
    pub(crate) head_timeout: Duration,
}

impl std::fmt::Debug for StreamAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamAcceptor")
            .field("head_timeout", &self.head_timeout)
            .finish_non_exhaustive()
    }
}

impl StreamAcceptor {
    /// Reads the first request head of `tcp`. A stream request is served to
    /// its end and `None` returned; so is a connection that closes or stalls
    /// before sending a head. Anything else comes back for hyper to serve.
    pub async fn accept(&self, mut tcp: TcpStream) -> Option<Rewound> {
        let mut buf = BytesMut::with_capacity(2048);
        let deadline = tokio::time::Instant::now() + self.head_timeout;
        let head = loop {
            match classify(&buf) {
                Head::Incomplete => {}
                Head::Other => return Some(Rewound::new(buf.freeze(), tcp)),
                Head::Stream(head) => break head,
            }
            if buf.capacity() == buf.len() {
                buf.reserve(buf.len());
            }
            match tokio::time::timeout_at(deadline, tcp.read_buf(&mut buf)).await {
                Ok(Ok(0)) if buf.is_empty() => return None,
                // A partial head then EOF: hyper answers it as it sees fit.
                Ok(Ok(0)) => return Some(Rewound::new(buf.freeze(), tcp)),
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        };
        drop(buf);
        crate::stream::serve_h1(self.shared.clone(), tcp, head).await;
        None
    }
}

/// A parsed stream request head.
pub(crate) struct StreamHead {
    pub(crate) query: Option<String>,
    pub(crate) headers: HeaderMap,
}

enum Head {
    Incomplete,
    Other,
    Stream(StreamHead),
}

/// Decides as early as the bytes allow: the request line alone rules most
/// requests out.
fn classify(buf: &[u8]) -> Head {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let Ok(status) = req.parse(buf) else {
        return Head::Other;
    };
    let query = match (req.method, req.path) {
        (Some("GET"), Some(path)) => match path.strip_prefix(STREAM_PATH) {
            Some("") => None,
            Some(rest) if rest.starts_with('?') => Some(rest[1..].to_owned()),
            _ => return Head::Other,
        },
        (Some(_), Some(_)) => return Head::Other,
        _ if buf.len() >= MAX_HEAD => return Head::Other,
        _ => return Head::Incomplete,
    };
    if status.is_partial() {
        return if buf.len() >= MAX_HEAD {
            Head::Other
        } else {
            Head::Incomplete
        };
    }
    if req.version != Some(1) {
        return Head::Other;
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for f in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) else {
            return Head::Other;
        };
        headers.append(name, value);
    }
    // Left to the router: WebSocket upgrades, browsers' cross-origin
    // requests (CORS) and anything announcing a request body.
    let routed = [
        header::UPGRADE,
        header::ORIGIN,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::EXPECT,
    ];
    if routed.iter().any(|h| headers.contains_key(h)) {
        return Head::Other;
    }
    Head::Stream(StreamHead { query, headers })
}

/// A TCP connection with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Rewound {
    prefix: Bytes,
    io: TcpStream,
}

impl Rewound {
    /// `io`, whose next reads return `prefix` first.
    pub fn new(prefix: Bytes, io: TcpStream) -> Self {
        Rewound { prefix, io }
    }
}

impl From<TcpStream> for Rewound {
    /// A connection nothing was read from yet.
    fn from(io: TcpStream) -> Self {
        Rewound::new(Bytes::new(), io)
    }
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(raw: &str) -> &'static str {
        match classify(raw.as_bytes()) {
            Head::Incomplete => "incomplete",
            Head::Other => "other",
            Head::Stream(_) => "stream",
        }
    }

    #[test]
    fn only_plain_http11_stream_requests_are_served_directly() {
        let get = "GET /v1/stream/telemetry?devices=a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n";
        assert_eq!(kind(get), "stream");
        assert_eq!(kind("GET /v1/stream/telemetry HTTP/1.1\r\n\r\n"), "stream");
        // Decided from the request line alone.
        assert_eq!(kind("GET /metrics HTTP/1.1\r\n"), "other");
        assert_eq!(kind("POST /v1/stream/telemetry HTTP/1.1\r\n"), "other");
        assert_eq!(kind("GET /v1/stream/telemetryx HTTP/1.1\r\n"), "other");
        assert_eq!(kind("GET /v1/stream/telemetry/ HTTP/1.1\r\n"), "other");
        // Waits for the rest of a stream request's head.
        assert_eq!(kind(""), "incomplete");
        assert_eq!(kind("GET /v1/str"), "incomplete");
        assert_eq!(
            kind("GET /v1/stream/telemetry HTTP/1.1\r\nHost: x\r\n"),
            "incomplete"
        );
        // Left to hyper and the router.
        assert_eq!(kind("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "other");
        assert_eq!(kind("GET /v1/stream/telemetry HTTP/1.0\r\n\r\n"), "other");
        for routed in [
            "Upgrade: websocket",
            "Origin: https://a.example",
            "Content-Length: 3",
            "Transfer-Encoding: chunked",
            "Expect: 100-continue",
        ] {
            let req = format!("GET /v1/stream/telemetry HTTP/1.1\r\n{routed}\r\n\r\n");
            assert_eq!(kind(&req), "other", "{routed}");
        }
        assert_eq!(kind("\u{0}\u{1}garbage\r\n\r\n"), "other");
        let huge = format!(
            "GET /v1/stream/telemetry HTTP/1.1\r\nX: {}",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(kind(&huge), "other");
    }

    /// A stream's whole per-connection state is this future (plus the
    /// subscriber queue): it must not grow buffers or duplicated state, or
    /// idle connections stop fitting in 4 KiB.
    #[tokio::test]
    async fn an_idle_stream_task_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let broker = crate::Broker::new(crate::BrokerConfig::new(
            dir.path().to_owned(),
            "127.0.0.1:0".parse().unwrap(),
            "issuer".into(),
        ))
        .unwrap();
        let acceptor = broker.stream_acceptor(std::time::Duration::from_secs(1));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let task = acceptor.accept(tcp);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2304, "a connection's task takes {size} bytes");
    }

    #[tokio::test]
    async fn rewound_replays_the_prefix_then_the_socket() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b" world").await.unwrap();
        });
        let (server, _) = listener.accept().await.unwrap();
        let mut r = Rewound::new(Bytes::from_static(b"hello"), server);
        let mut all = String::new();
        r.read_to_string(&mut all).await.unwrap();
        client.await.unwrap();
        assert_eq!(all, "hello world");
    }
}
