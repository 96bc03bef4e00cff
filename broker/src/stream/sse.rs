//! Server-Sent Events framing of a [`Session`]: one body chunk per batch.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};

use super::session::{Item, Opened, Session};
use crate::event::Event;
use crate::Shared;

/// The first bytes of every stream, sent at once so proxies and clients see
/// the stream is open even if no device is talking. `retry:` tells
/// EventSource how soon to reconnect.
pub(super) const PREAMBLE: &[u8] = b": connected\nretry: 2000\n\n";

struct Egress {
    session: Session,
    items: Vec<Item>,
    heartbeat: std::time::Duration,
    preamble: bool,
    done: bool,
}

impl Egress {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if std::mem::take(&mut self.preamble) {
            return Some(Bytes::from_static(PREAMBLE));
        }
        let mut out = BytesMut::new();
        let end = self
            .session
            .next_batch(&mut self.items, Some(self.heartbeat))
            .await;
        for item in self.items.drain(..) {
            write_item(&mut out, &item);
        }
        self.done = end.is_some();
        Some(out.freeze())
    }
}

/// Appends one item in SSE framing.
pub(super) fn write_item(out: &mut BytesMut, item: &Item) {
    match item {
        Item::Event(ev) => write_event(out, ev),
        Item::Control { event, data } => {
            out.put_slice(b"event: ");
            out.put_slice(event.as_bytes());
            out.put_slice(b"\ndata: ");
            out.put_slice(data.to_string().as_bytes());
            out.put_slice(b"\n\n");
        }
        Item::KeepAlive => out.put_slice(b": keep-alive\n\n"),
    }
}

fn write_event(out: &mut BytesMut, ev: &Event) {
    out.put_slice(ev.sse());
}

/// The `200 text/event-stream` response for an authorised stream.
pub(super) fn respond(shared: Arc<Shared>, opened: Opened) -> Response {
    let heartbeat = shared.cfg.heartbeat;
    let egress = Egress {
        session: Session::open(shared, opened, "sse"),
        items: Vec::with_capacity(super::session::MAX_BATCH + 2),
        heartbeat,
        preamble: true,
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(egress, |mut e| async move {
        e.next_chunk().await.map(|c| (Ok::<_, Infallible>(c), e))
    }));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
