//! Ending HTTP connections that carry no request.
//!
//! hyper closes an idle HTTP/1.1 connection through its header-read timeout,
//! but has no idle timeout for HTTP/2: a client that sends the preface, opens
//! no stream and answers the server's keep-alive pings holds a connection
//! slot for ever, and `--max-connections` of them lock everyone out. So each
//! connection counts its requests in flight (a request ends when its
//! response body is dropped, so an open stream is a request in flight), and
//! its transport reports end-of-stream to hyper on the first read after
//! `--http-idle-timeout` without one. The keep-alive ping every 20 s
//! guarantees that read on a client that is still there; one that is not is
//! closed by the ping timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One connection's requests in flight and when the last one ended.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when `in_flight` last dropped to zero.
    idle_since_ms: AtomicU64,
    /// The connection was upgraded (WebSocket): it is no longer HTTP, and
    /// the session on it keeps its own liveness rules.
    upgraded: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Whether the connection has carried no request for `timeout`.
    fn idle_for(&self, timeout: Duration) -> bool {
        !self.upgraded.load(Ordering::Acquire)
            && self.in_flight.load(Ordering::Acquire) == 0
            && self
                .now_ms()
                .saturating_sub(self.idle_since_ms.load(Ordering::Acquire))
                >= u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
    }
}

/// A request in flight; see [`Activity::start`].
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    /// Marks this request's connection as handed over to an upgraded
    /// protocol (its `101` answer was sent).
    pub(crate) fn upgraded(&self) {
        self.0.upgraded.store(true, Ordering::Release);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // Stamp before the count can read zero, so a reader never sees an
        // idle connection with a stale stamp.
        a.idle_since_ms.store(a.now_ms(), Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted until it is dropped.
pub(crate) fn guard_body(body: Body, guard: InFlight) -> Body {
    Body::new(Guarded {
        inner: body,
        _guard: guard,
    })
}

struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A transport that reads as closed once its connection has been idle for
/// its timeout.
#[derive(Debug)]
pub(crate) struct IdleIo<T> {
    io: T,
    activity: Arc<Activity>,
    timeout: Duration,
}

impl<T> IdleIo<T> {
    pub(crate) fn new(io: T, activity: Arc<Activity>, timeout: Duration) -> Self {
        IdleIo {
            io,
            activity,
            timeout,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.activity.idle_for(this.timeout) {
            // End of stream: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn a_connection_without_requests_reads_as_closed_after_the_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut io = IdleIo::new(server, activity.clone(), Duration::from_millis(50));
        let mut client = client;
        let mut buf = [0u8; 8];

        client.write_all(b"ping").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 4, "fresh: reads pass");

        // A request in flight (an open stream) keeps it open however long.
        let guard = activity.start();
        tokio::time::sleep(Duration::from_millis(80)).await;
        client.write_all(b"ack").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 3, "busy: reads pass");

        // Once it ends, the clock restarts from then.
        drop(guard);
        client.write_all(b"ack").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 3, "just idle: reads pass");
        tokio::time::sleep(Duration::from_millis(80)).await;
        client.write_all(b"ack").await.unwrap();
        assert_eq!(
            io.read(&mut buf).await.unwrap(),
            0,
            "idle too long: end of stream"
        );
    }

    #[tokio::test]
    async fn an_upgraded_connection_is_never_idle() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut io = IdleIo::new(server, activity.clone(), Duration::from_millis(20));
        activity.start().upgraded();
        tokio::time::sleep(Duration::from_millis(40)).await;
        client.write_all(b"frame").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_guarded_body_counts_its_request_until_dropped() {
        let activity = Activity::new();
        let body = guard_body(Body::from("x"), activity.start());
        assert_eq!(activity.in_flight.load(Ordering::Acquire), 1);
        let bytes = axum::body::to_bytes(body, 16).await.unwrap();
        assert_eq!(&bytes[..], b"x");
        assert_eq!(activity.in_flight.load(Ordering::Acquire), 0);
        assert!(!activity.idle_for(Duration::from_secs(1)));
    }
}
