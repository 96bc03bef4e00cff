//! Server-Sent Events written straight to the socket, for HTTP/1.1
//! connections whose first request is a stream (see [`crate::conn`]).
//!
//! Why not through hyper: a body chunk there is a buffer the stream fills by
//! copying every record into it, and every connection keeps hyper's read
//! and write buffers (≥ 8 KiB each) for as long as it is open. Here one
//! `writev` per batch gathers the shared, pre-rendered records of up to
//! [`MAX_BATCH`](super::session::MAX_BATCH) events with no copy, framed as
//! one HTTP chunk, and an idle stream holds no buffer at all.

use std::io::{self, IoSlice, Write as _};
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use axum::response::Response;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::session::{Item, Session};
use super::sse::{write_item, PREAMBLE};
use crate::chunk;
use crate::conn::StreamHead;
use crate::Shared;

/// Most bytes of an error response body the broker sends.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A batch vector grown past this is given back while the stream is idle.
const KEEP_ITEMS: usize = 16;

/// Serves one stream request to its end.
pub(crate) async fn serve(shared: Arc<Shared>, tcp: TcpStream, head: StreamHead) {
    // Authorised in a future of its own that is gone before the stream's
    // starts: the two never take room in the task at the same time.
    let opened = open(shared, head).await;
    stream(tcp, opened).await
}

async fn stream(mut tcp: TcpStream, mut opened: Result<Session, Box<Response>>) {
    // Used in place (not moved out) so the session is stored once.
    let session = match &mut opened {
        Ok(session) => session,
        Err(refusal) => {
            let _ = refuse(&mut tcp, std::mem::take(&mut **refusal)).await;
            return;
        }
    };
    let heartbeat = session.heartbeat();
    if tcp.write_all(&response_head()).await.is_err() {
        return;
    }
    let mut items = Vec::new();
    let mut scratch = BytesMut::new();
    loop {
        let end = tokio::select! {
            end = session.next_batch(&mut items, Some(heartbeat)) => end,
            () = client_gone(&tcp) => return,
        };
        if write_batch(&mut tcp, &items, &mut scratch).await.is_err() {
            return;
        }
        items.clear();
        if end.is_some() {
            // The last chunk: the response ends cleanly, then the connection.
            let _ = tcp.write_all(b"0\r\n\r\n").await;
            let _ = tcp.shutdown().await;
            return;
        }
        if items.capacity() > KEEP_ITEMS && session.is_idle() {
            items = Vec::new();
        }
    }
}

/// Authorises the request and opens its session.
async fn open(shared: Arc<Shared>, head: StreamHead) -> Result<Session, Box<Response>> {
    let opened = super::authorize(&shared, head.query.as_deref(), &head.headers).await?;
    Ok(Session::open(shared, opened, "sse"))
}

/// The `200` head and the preamble chunk.
fn response_head() -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // `connection: close`: the stream is this connection's last request,
    // so a client must not pool it once the stream ends.
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
          x-accel-buffering: no\r\ntransfer-encoding: chunked\r\nconnection: close\r\ndate: ",
    );
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    let _ = write!(out, "{:x}\r\n", PREAMBLE.len());
    out.extend_from_slice(PREAMBLE);
    out.extend_from_slice(b"\r\n");
    out
}

/// Resolves when the client closed its side (or the socket failed). Bytes a
/// client sends after its request are read and ignored.
async fn client_gone(tcp: &TcpStream) {
    loop {
        // Readiness only: no read future or buffer is kept while idle.
        if std::future::poll_fn(|cx| tcp.poll_read_ready(cx))
            .await
            .is_err()
        {
            return;
        }
        let mut sink = [0u8; 64];
        match tcp.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Writes `items` as one HTTP chunk with one `writev` (more only if the
/// socket takes part of it). Events are written from their shared record;
/// only control items are rendered, into `scratch`.
async fn write_batch(
    tcp: &mut TcpStream,
    items: &[Item],
    scratch: &mut BytesMut,
) -> io::Result<()> {
    scratch.clear();
    let mut spans = Vec::new();
    for item in items {
        if !matches!(item, Item::Event(_)) {
            let start = scratch.len();
            write_item(scratch, item);
            spans.push(start..scratch.len());
        }
    }
    let mut spans = spans.into_iter();
    let parts = items.iter().map(|item| match item {
        Item::Event(ev) => ev.sse(),
        _ => &scratch[spans.next().unwrap_or_default()],
    });
    let mut size = [0u8; chunk::SIZE_LINE_MAX];
    let mut slices = Vec::with_capacity(items.len() + 2);
    if chunk::gather(parts, &mut size, &mut slices) == 0 {
        return Ok(());
    }
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = tcp.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Sends a refusal (401, 403, 429, …) as built by the router's handler,
/// then closes the connection.
async fn refuse(tcp: &mut TcpStream, refusal: Response) -> io::Result<()> {
    let (parts, body) = refusal.into_parts();
    let body = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let mut out = Vec::with_capacity(256 + body.len());
    write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )?;
    write_headers(&mut out, &parts.headers);
    write!(
        out,
        "content-length: {}\r\nconnection: close\r\ndate: {}\r\n\r\n",
        body.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now())
    )?;
    out.extend_from_slice(&body);
    tcp.write_all(&out).await?;
    tcp.shutdown().await
}

fn write_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        // Framing is this function's caller's to say.
        if name == header::CONTENT_LENGTH || name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}
