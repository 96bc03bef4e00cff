//! WebSocket framing of a [`Session`] (same path, same auth, filters and resume).
//!
//! Subprotocols:
//! - `sensegate.v1.json` (default): one text message per event,
//!   `{"id":"N","event":"telemetry"|"anomaly","data":{…}}` with the same
//!   `data` object as SSE; control records the same way (`gap`,
//!   `permissions`, `revoked`, `token-expired`).
//! - `sensegate.v1.rkyv`: one binary message per event, the archived frame
//!   exactly as ingested behind a small header (see
//!   [`sensegate_ingest_proto::decode_ws_event`]); control records stay JSON
//!   text messages.
//!
//! Clients send only control messages, so incoming messages and frames are
//! capped at [`MAX_INCOMING`] bytes (close `1009` before the payload is
//! buffered). The server pings every heartbeat interval; a client silent
//! (no pong, no message) for [`idle_timeout`] is closed with `4000`.
//!
//! | close code | meaning |
//! | --- | --- |
//! | 1000 | the client closed |
//! | 1002 | protocol error (e.g. unmasked or malformed frame) |
//! | 1008 | policy: application revoked (disabled, deleted, expired, secret rotated) or slow consumer disconnected |
//! | 1009 | an incoming message or frame exceeded the limit |
//! | 4000 | idle timeout |
//! | 4001 | the access token expired |

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

use super::session::{End, Item, Opened, Session};
use crate::Shared;

/// Largest message or frame a client may send (they only send control).
pub(crate) const MAX_INCOMING: usize = 4 * 1024;

const JSON: &str = "sensegate.v1.json";
const RKYV: &str = "sensegate.v1.rkyv";

/// Close codes (see the module docs).
mod code {
    pub(super) const PROTOCOL: u16 = 1002;
    pub(super) const POLICY: u16 = 1008;
    pub(super) const TOO_BIG: u16 = 1009;
    pub(super) const IDLE: u16 = 4000;
    pub(super) const TOKEN_EXPIRED: u16 = 4001;
}

/// How long a client may stay silent: two missed pings plus slack.
fn idle_timeout(heartbeat: Duration) -> Duration {
    heartbeat * 2 + Duration::from_secs(5)
}

/// Answers the upgrade and runs the stream on the socket.
pub(super) fn respond(shared: Arc<Shared>, opened: Opened, upgrade: WebSocketUpgrade) -> Response {
    let upgrade = upgrade
        .protocols([JSON, RKYV])
        .max_message_size(MAX_INCOMING)
        .max_frame_size(MAX_INCOMING);
    let binary = upgrade
        .selected_protocol()
        .is_some_and(|p| p.as_bytes() == RKYV.as_bytes());
    upgrade.on_upgrade(move |socket| async move {
        let session = Session::open(shared.clone(), opened, "ws");
        run(socket, session, binary, shared.cfg.heartbeat).await;
    })
}

async fn run(socket: WebSocket, mut session: Session, binary: bool, heartbeat: Duration) {
    let (mut sink, mut incoming) = socket.split();
    let mut items = Vec::with_capacity(super::session::MAX_BATCH + 2);
    let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    let idle = idle_timeout(heartbeat);
    let mut last_heard = Instant::now();
    let close = loop {
        tokio::select! {
            end = session.next_batch(&mut items, None) => {
                for item in items.drain(..) {
                    if sink.feed(message(&item, binary)).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
                match end {
                    None => {}
                    Some(End::TokenExpired) => break (code::TOKEN_EXPIRED, "access token expired"),
                    Some(End::Revoked) => break (code::POLICY, "revoked"),
                    Some(End::SlowConsumer) => break (code::POLICY, "slow consumer"),
                }
            }
            msg = incoming.next() => match msg {
                None | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(e)) => break error_close(e),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > idle {
                    break (code::IDLE, "idle timeout");
                }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
        }
    };
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: close.0,
            reason: Utf8Bytes::from_static(close.1),
        })))
        .await;
    // Let the client answer the close handshake, briefly.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = incoming.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Maps a receive error to a close code.
fn error_close(e: axum::Error) -> (u16, &'static str) {
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) if matches!(*e, tungstenite::Error::Capacity(_)) => {
            (code::TOO_BIG, "message too big")
        }
        _ => (code::PROTOCOL, "protocol error"),
    }
}

fn message(item: &Item, binary: bool) -> Message {
    match item {
        Item::Event(ev) if binary => {
            let mut out = Vec::with_capacity(9 + ev.device.id.len() + ev.frame().len());
            sensegate_ingest_proto::encode_ws_event_header(ev.id, &ev.device.id, &mut out);
            out.extend_from_slice(ev.frame());
            Message::Binary(out.into())
        }
        Item::Event(ev) => {
            let mut id = itoa::Buffer::new();
            let json = ev.json();
            let mut out = Vec::with_capacity(json.len() + 48);
            out.extend_from_slice(b"{\"id\":\"");
            out.extend_from_slice(id.format(ev.id).as_bytes());
            out.extend_from_slice(b"\",\"event\":\"");
            out.extend_from_slice(ev.kind.event_name().as_bytes());
            out.extend_from_slice(b"\",\"data\":");
            out.extend_from_slice(json);
            out.push(b'}');
            text(out)
        }
        Item::Control { event, data } => text(
            serde_json::json!({ "event": event, "data": data })
                .to_string()
                .into_bytes(),
        ),
        Item::KeepAlive => Message::Ping(Bytes::new()),
    }
}

fn text(bytes: Vec<u8>) -> Message {
    // Everything we render is UTF-8 (JSON from UTF-8 parts).
    match Utf8Bytes::try_from(Bytes::from(bytes)) {
        Ok(t) => Message::Text(t),
        Err(_) => Message::Binary(Bytes::new()),
    }
}
