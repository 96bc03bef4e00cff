//! QUIC device ingest.
//!
//! One task per connection. The device's first bidirectional stream carries
//! its hello and then telemetry frames; the broker answers on the same
//! stream with `HelloAck`, cumulative `Ack`s, or a `Reject` followed by a
//! connection close whose application error code is the [`RejectCode`].
//!
//! # Invariants
//! - The session's identity comes from the hello's key, never from a frame.
//! - Nothing a device sends can make the broker buffer more than one
//!   maximum-size frame plus one read chunk, or panic.
//! - A malformed frame ends that device's session with a reason; nobody else
//!   notices.
//! - At most one session per device: a new one replaces the old.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use sensegate_ingest_proto::{
    decode_frame, encode_frame, validate_hello, validate_telemetry, FrameError, RejectCode,
    ServerMsg, MAX_CONTROL_FRAME_LEN, MAX_TELEMETRY_FRAME_LEN, PROTOCOL_VERSION,
};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::access::DeviceKey;
use crate::event::PendingEvent;
use crate::router::DeviceSlot;
use crate::Shared;

/// How long a device has to open its stream and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Most frames processed before an acknowledgement is sent and the session
/// yields: bounds the work per wake-up and the ack latency under load.
const MAX_FRAMES_PER_ROUND: usize = 1024;

/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// Accepts connections until the endpoint closes.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => run_connection(conn, shared).await,
                Err(e) => debug!(%remote, error = %e, "QUIC handshake failed"),
            }
        });
    }
}

/// Why a session ended.
struct End {
    code: RejectCode,
    reason: String,
}

impl End {
    fn new(code: RejectCode, reason: impl Into<String>) -> Self {
        End {
            code,
            reason: reason.into(),
        }
    }
}

async fn run_connection(conn: quinn::Connection, shared: Arc<Shared>) {
    let remote = conn.remote_address();
    let (mut send, mut recv) = match tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "device left before opening a stream");
            return;
        }
        Err(_) => {
            shared.metrics.session("timeout");
            conn.close(RejectCode::Malformed.as_u32().into(), b"no hello");
            return;
        }
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let (device, key_hash) =
        match tokio::time::timeout(HELLO_TIMEOUT, hello(&mut recv, &mut buf, &shared)).await {
            Ok(Ok(authenticated)) => authenticated,
            Ok(Err(end)) => {
                shared.metrics.session(match end.code {
                    RejectCode::Unauthorized => "unauthorized",
                    RejectCode::UnsupportedVersion => "unsupported_version",
                    _ => "malformed",
                });
                info!(%remote, reason = %end.reason, "device session refused");
                reject(&conn, &mut send, end).await;
                return;
            }
            Err(_) => {
                shared.metrics.session("timeout");
                reject(
                    &conn,
                    &mut send,
                    End::new(RejectCode::Malformed, "hello timed out"),
                )
                .await;
                return;
            }
        };
    let slot = shared.router.slot_or_create(&device);
    if let Some(old) = slot.session.lock().replace(conn.clone()) {
        old.close(
            RejectCode::Replaced.as_u32().into(),
            b"replaced by a newer session",
        );
    }
    shared.metrics.session("accepted");
    shared.metrics.devices_connected.inc();
    info!(%remote, tenant = %device.tenant, device = %device.id, "device connected");
    let mut out = Vec::with_capacity(64);
    encode_frame(
        &ServerMsg::HelloAck {
            last_seq: slot.last_seq(),
        },
        &mut out,
    );
    let end = match send.write_all(&out).await {
        Ok(()) => telemetry(&conn, &mut send, &mut recv, buf, &slot, &key_hash, &shared).await,
        Err(e) => Some(End::new(RejectCode::Malformed, e.to_string())),
    };
    shared.metrics.devices_connected.dec();
    {
        let mut current = slot.session.lock();
        if current
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            *current = None;
        }
    }
    match end {
        Some(end) => {
            info!(%remote, device = %device.id, reason = %end.reason, "device session closed by broker");
            reject(&conn, &mut send, end).await;
        }
        None => info!(%remote, device = %device.id, "device disconnected"),
    }
}

/// Reads and checks the hello; returns the authenticated device and the hash
/// of the key it used (to notice a rotation later).
async fn hello(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<(DeviceKey, [u8; 32]), End> {
    let range = loop {
        match decode_frame(buf, MAX_CONTROL_FRAME_LEN) {
            Ok(Some(r)) => break r,
            Ok(None) => {}
            Err(e) => return Err(End::new(RejectCode::Malformed, e.to_string())),
        }
        match recv.read_chunk(MAX_CONTROL_FRAME_LEN, true).await {
            Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
            Ok(None) => return Err(End::new(RejectCode::Malformed, "stream ended before hello")),
            Err(e) => return Err(End::new(RejectCode::Malformed, e.to_string())),
        }
    };
    let frame = buf.split_to(range.end);
    let h = validate_hello(&frame[range])
        .map_err(|e| End::new(RejectCode::Malformed, e.to_string()))?;
    if h.version.to_native() != PROTOCOL_VERSION {
        return Err(End::new(
            RejectCode::UnsupportedVersion,
            format!("protocol version {PROTOCOL_VERSION} required"),
        ));
    }
    let hash: [u8; 32] = Sha256::digest(h.key.as_bytes()).into();
    let table = shared.access.load();
    let unauthorized = || End::new(RejectCode::Unauthorized, "unknown device or wrong key");
    let device = table.devices_by_key.get(&hash).ok_or_else(unauthorized)?;
    if &*device.id != h.device_id.as_str() {
        return Err(unauthorized());
    }
    if table.devices.get(device) != Some(&true) {
        return Err(End::new(RejectCode::Unauthorized, "device disabled"));
    }
    Ok((device.clone(), hash))
}

/// Whether the live table still lets this device in with the key it used.
fn still_authorized(shared: &Shared, device: &DeviceKey, key_hash: &[u8; 32]) -> Result<(), End> {
    let table = shared.access.load();
    match table.devices_by_key.get(key_hash) {
        Some(d) if d == device && table.devices.get(device) == Some(&true) => Ok(()),
        Some(d) if d == device => Err(End::new(RejectCode::CredentialsRevoked, "device disabled")),
        _ => Err(End::new(
            RejectCode::CredentialsRevoked,
            "device key rotated or device deleted",
        )),
    }
}

/// The telemetry loop. Returns why the broker ended it, or `None` if the
/// device did.
async fn telemetry(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    mut buf: BytesMut,
    slot: &Arc<DeviceSlot>,
    key_hash: &[u8; 32],
    shared: &Shared,
) -> Option<End> {
    let mut versions = shared.access_version.subscribe();
    let mut pending = Vec::with_capacity(64);
    let mut ack = Vec::with_capacity(32);
    let mut acked = slot.last_seq();
    loop {
        // Process every complete frame already buffered.
        let round = std::time::Instant::now();
        let mut frames = 0;
        loop {
            let range = match decode_frame(&buf, MAX_TELEMETRY_FRAME_LEN) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    shared.metrics.frame_rejected(frame_reason(&e));
                    return Some(End::new(RejectCode::Malformed, e.to_string()));
                }
            };
            let payload = &buf[range.clone()];
            match validate_telemetry(payload) {
                Ok(t) => {
                    shared.metrics.bytes_accepted.inc_by(payload.len() as u64);
                    pending.push(PendingEvent::render(&slot.key.id, t, payload));
                    // The event keeps its own copy: the receive buffer stays
                    // unshared and is reused by the next read.
                    buf.advance(range.end);
                }
                Err(e) => {
                    shared.metrics.frame_rejected(frame_reason(&e));
                    // Accept what came before the bad frame, then end.
                    publish(shared, slot, &mut pending);
                    return Some(End::new(RejectCode::Malformed, e.to_string()));
                }
            }
            frames += 1;
            if frames == MAX_FRAMES_PER_ROUND {
                break;
            }
        }
        if !pending.is_empty() {
            publish(shared, slot, &mut pending);
        }
        let last = slot.last_seq();
        if last > acked {
            ack.clear();
            encode_frame(&ServerMsg::Ack { up_to_seq: last }, &mut ack);
            if let Err(e) = send.write_all(&ack).await {
                debug!(error = %e, "ack write failed");
                return None;
            }
            acked = last;
            shared
                .metrics
                .ack_latency
                .observe(round.elapsed().as_secs_f64());
        }
        if frames == MAX_FRAMES_PER_ROUND {
            tokio::task::yield_now().await;
            continue;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            chunk = recv.read_chunk(READ_CHUNK, true) => match chunk {
                Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
                Ok(None) => return None,
                Err(quinn::ReadError::ConnectionLost(_)) | Err(quinn::ReadError::Reset(_)) => return None,
                Err(e) => return Some(End::new(RejectCode::Malformed, e.to_string())),
            },
            changed = versions.changed() => {
                if changed.is_err() {
                    return Some(End::new(RejectCode::ShuttingDown, "broker shutting down"));
                }
                if let Err(end) = still_authorized(shared, &slot.key, key_hash) {
                    return Some(end);
                }
            }
            _ = conn.closed() => return None,
        }
    }
}

fn publish(shared: &Shared, slot: &Arc<DeviceSlot>, pending: &mut Vec<PendingEvent>) {
    let p = shared.router.publish(slot, pending.drain(..));
    shared.metrics.frames_accepted.inc_by(p.accepted);
    shared.metrics.duplicates.inc_by(p.duplicates);
    shared.metrics.dropped_slow_consumer.inc_by(p.overflowed);
    shared.metrics.dropped_filtered.inc_by(p.filtered);
}

fn frame_reason(e: &FrameError) -> &'static str {
    match e {
        FrameError::TooLong { .. } => "too_long",
        FrameError::Empty => "empty",
        FrameError::Invalid(_) => "invalid_archive",
        FrameError::ZeroSeq => "zero_seq",
        FrameError::SeqOutOfRange(_) => "seq_out_of_range",
        FrameError::TimestampOutOfRange(_) => "bad_timestamp",
        _ => "bad_value",
    }
}

async fn reject(conn: &quinn::Connection, send: &mut quinn::SendStream, end: End) {
    let mut out = Vec::with_capacity(64 + end.reason.len());
    encode_frame(
        &ServerMsg::Reject {
            code: end.code.as_u32(),
            reason: end.reason.clone(),
        },
        &mut out,
    );
    if send.write_all(&out).await.is_ok() {
        let _ = send.finish();
        // Give the reject frame a moment to reach the device before the close.
        let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
    }
    if end.code == RejectCode::Malformed {
        warn!(remote = %conn.remote_address(), reason = %end.reason, "closing device session on a protocol violation");
    }
    conn.close(end.code.as_u32().into(), end.reason.as_bytes());
}
