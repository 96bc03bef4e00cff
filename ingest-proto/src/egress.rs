//! The binary message of the `sensegate.v1.rkyv` WebSocket subprotocol.
//!
//! High-rate consumers get each event as the archive the device sent,
//! byte for byte, behind a small header:
//!
//! ```text
//! offset  size  field
//! 0       8     event id, u64 little-endian
//! 8       1     n = length of the device id in bytes (1..=255)
//! 9       n     device id, UTF-8
//! 9+n     …     the telemetry archive exactly as ingested (rkyv, unaligned format)
//! ```
//!
//! Decoding needs this crate only:
//!
//! ```
//! use sensegate_ingest_proto::{decode_ws_event, encode_frame, Kind, Reading, Telemetry, FRAME_HEADER_LEN};
//! # let mut frame = Vec::new();
//! # encode_frame(&Telemetry { seq: 1, ts_ms: 0, kind: Kind::Reading,
//! #     readings: vec![Reading { name: "t".into(), value: 1.5 }] }, &mut frame);
//! # let mut message = 42u64.to_le_bytes().to_vec();
//! # message.push(2);
//! # message.extend_from_slice(b"d1");
//! # message.extend_from_slice(&frame[FRAME_HEADER_LEN..]);
//! // `message` is one binary WebSocket message.
//! let ev = decode_ws_event(&message).expect("valid message");
//! assert_eq!(ev.id, 42);
//! assert_eq!(ev.device_id, "d1");
//! assert_eq!(ev.telemetry.readings[0].value.to_native(), 1.5);
//! ```

use crate::frame::{validate_telemetry, FrameError};
use crate::schema::ArchivedTelemetry;

/// One decoded `sensegate.v1.rkyv` message, borrowing from the message bytes.
#[derive(Debug)]
pub struct WsEvent<'a> {
    /// Broker event id (the SSE `id:`).
    pub id: u64,
    /// The device that sent it.
    pub device_id: &'a str,
    /// The validated archive.
    pub telemetry: &'a ArchivedTelemetry,
}

/// Appends the header for an event; the caller appends the archive.
pub fn encode_ws_event_header(id: u64, device_id: &str, out: &mut Vec<u8>) {
    let len = u8::try_from(device_id.len()).unwrap_or(u8::MAX);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(len);
    out.extend_from_slice(&device_id.as_bytes()[..usize::from(len)]);
}

/// Splits and validates one binary message.
pub fn decode_ws_event(message: &[u8]) -> Result<WsEvent<'_>, FrameError> {
    let short = || FrameError::Invalid("message shorter than its header".into());
    let id = u64::from_le_bytes(
        message
            .get(..8)
            .ok_or_else(short)?
            .try_into()
            .map_err(|_| short())?,
    );
    let n = usize::from(*message.get(8).ok_or_else(short)?);
    let device = message.get(9..9 + n).ok_or_else(short)?;
    let device_id = std::str::from_utf8(device)
        .map_err(|_| FrameError::Invalid("device id is not UTF-8".into()))?;
    let telemetry = validate_telemetry(&message[9 + n..])?;
    Ok(WsEvent {
        id,
        device_id,
        telemetry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_frame, Kind, Telemetry, FRAME_HEADER_LEN};

    #[test]
    fn header_round_trips_and_truncation_is_refused() {
        let mut frame = Vec::new();
        encode_frame(
            &Telemetry {
                seq: 3,
                ts_ms: 5,
                kind: Kind::Anomaly,
                readings: vec![],
            },
            &mut frame,
        );
        let mut msg = Vec::new();
        encode_ws_event_header(7, "dev-1", &mut msg);
        msg.extend_from_slice(&frame[FRAME_HEADER_LEN..]);
        let ev = decode_ws_event(&msg).unwrap();
        assert_eq!(
            (ev.id, ev.device_id, ev.telemetry.seq.to_native()),
            (7, "dev-1", 3)
        );
        for cut in 0..14 {
            assert!(decode_ws_event(&msg[..cut]).is_err());
        }
    }
}
