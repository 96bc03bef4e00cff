//! Length-prefixed framing and validation of untrusted archives.

use rkyv::api::high::HighSerializer;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;

use crate::schema::{
    ArchivedHello, ArchivedServerMsg, ArchivedTelemetry, MAX_NAME_LEN, MAX_READINGS,
};

/// Bytes of the length prefix in front of every frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// Largest telemetry payload the broker accepts. 64 readings of 64-byte names
/// fit in about 5 KiB; 16 KiB leaves room without letting one frame pin much
/// memory.
pub const MAX_TELEMETRY_FRAME_LEN: usize = 16 * 1024;

/// Largest hello or server message. A hello carries two short strings.
pub const MAX_CONTROL_FRAME_LEN: usize = 1024;

/// Latest timestamp accepted: 9999-12-31T23:59:59.999Z.
const MAX_TS_MS: i64 = 253_402_300_799_999;

/// The largest sequence number, 2^53 − 1: every event's JSON carries `seq`,
/// and JavaScript (like any reader that parses numbers as doubles) cannot
/// tell larger integers apart. It also keeps a device from jumping to the
/// end of the sequence space, after which it could send nothing new.
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// Longest device id or key in a hello, in bytes.
const MAX_HELLO_FIELD_LEN: usize = 256;

/// Why bytes were not a valid frame. Every variant is the peer's fault; none
/// leaves the decoder in a state that needs resetting.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than the receiver allows.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// Announced length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// A zero-length frame (never valid: every archive has a root).
    #[error("empty frame")]
    Empty,
    /// The payload is not a valid archive of the expected type.
    #[error("invalid archive: {0}")]
    Invalid(String),
    /// More readings than [`MAX_READINGS`].
    #[error("{0} readings exceed the limit of {MAX_READINGS}")]
    TooManyReadings(usize),
    /// A reading has no name, or one longer than [`MAX_NAME_LEN`].
    #[error("reading {index} has an empty name or one longer than {MAX_NAME_LEN} bytes")]
    BadName {
        /// Index of the reading.
        index: usize,
    },
    /// A reading repeats the name of an earlier one: the event's JSON object
    /// would have a duplicate key, which readers resolve differently.
    #[error("reading {index} repeats an earlier reading's name")]
    DuplicateName {
        /// Index of the repeating reading.
        index: usize,
    },
    /// A reading is NaN or infinite (not representable in JSON).
    #[error("reading {index} is not a finite number")]
    NonFinite {
        /// Index of the reading.
        index: usize,
    },
    /// The timestamp is before 1970 or after 9999.
    #[error("timestamp {0} ms is out of range")]
    TimestampOutOfRange(i64),
    /// A hello field is empty or too long.
    #[error("hello field {0} is empty or longer than {MAX_HELLO_FIELD_LEN} bytes")]
    BadHelloField(&'static str),
    /// The sequence number 0 is reserved for "nothing yet".
    #[error("sequence number 0 is reserved")]
    ZeroSeq,
    /// The sequence number is above [`MAX_SEQ`].
    #[error("sequence number {0} is above 2^53 - 1")]
    SeqOutOfRange(u64),
}

/// Appends one frame (length prefix + archive of `value`) to `buf`.
///
/// The caller owns the buffer, so a sender can encode a whole batch into one
/// allocation and hand it to the transport in one write.
pub fn encode_frame<T>(value: &T, buf: &mut Vec<u8>)
where
    T: for<'a> rkyv::Serialize<HighSerializer<Vec<u8>, ArenaHandle<'a>, rancor::Panic>>,
{
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    // Serialising into a Vec cannot fail: the only fallible step would be the
    // writer, and Vec grows. `Panic` makes that explicit in the type.
    let out = match rkyv::api::high::to_bytes_in::<_, rancor::Panic>(value, std::mem::take(buf)) {
        Ok(out) => out,
        Err(never) => match never {},
    };
    *buf = out;
    let len = (buf.len() - start - FRAME_HEADER_LEN) as u32;
    buf[start..start + FRAME_HEADER_LEN].copy_from_slice(&len.to_le_bytes());
}

/// Finds the first complete frame in `buf`.
///
/// Returns `Ok(None)` while the frame is incomplete, otherwise the payload's
/// byte range within `buf`; the frame occupies `..range.end`. The length is
/// checked against `max_len` as soon as the 4-byte prefix is there, so an
/// oversized frame is refused before its payload is buffered.
pub fn decode_frame(
    buf: &[u8],
    max_len: usize,
) -> Result<Option<std::ops::Range<usize>>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max_len {
        return Err(FrameError::TooLong { len, max: max_len });
    }
    let end = FRAME_HEADER_LEN + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(FRAME_HEADER_LEN..end))
}

fn access<T>(payload: &[u8]) -> Result<&T, FrameError>
where
    T: rkyv::Portable
        + for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Failure>>,
{
    // The validator's own message names memory addresses: never echo it to
    // the peer (or the logs), which would hand out the heap layout.
    rkyv::access::<T, rancor::Failure>(payload)
        .map_err(|_| FrameError::Invalid("archive failed validation".into()))
}

/// Validates a telemetry payload in place: structure (bytecheck) and meaning.
pub fn validate_telemetry(payload: &[u8]) -> Result<&ArchivedTelemetry, FrameError> {
    let t: &ArchivedTelemetry = access(payload)?;
    match t.seq.to_native() {
        0 => return Err(FrameError::ZeroSeq),
        seq if seq > MAX_SEQ => return Err(FrameError::SeqOutOfRange(seq)),
        _ => {}
    }
    let ts = t.ts_ms.to_native();
    if !(0..=MAX_TS_MS).contains(&ts) {
        return Err(FrameError::TimestampOutOfRange(ts));
    }
    if t.readings.len() > MAX_READINGS {
        return Err(FrameError::TooManyReadings(t.readings.len()));
    }
    for (index, r) in t.readings.iter().enumerate() {
        let name = r.name.as_str();
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(FrameError::BadName { index });
        }
        if !r.value.to_native().is_finite() {
            return Err(FrameError::NonFinite { index });
        }
        // At most MAX_READINGS (64), usually a handful: a scan beats hashing.
        if t.readings[..index].iter().any(|e| e.name.as_str() == name) {
            return Err(FrameError::DuplicateName { index });
        }
    }
    Ok(t)
}

/// Validates a hello payload.
pub fn validate_hello(payload: &[u8]) -> Result<&ArchivedHello, FrameError> {
    let h: &ArchivedHello = access(payload)?;
    for (field, value) in [("device_id", h.device_id.as_str()), ("key", h.key.as_str())] {
        if value.is_empty() || value.len() > MAX_HELLO_FIELD_LEN {
            return Err(FrameError::BadHelloField(field));
        }
    }
    Ok(h)
}

/// Validates a broker → device message.
pub fn validate_server_msg(payload: &[u8]) -> Result<&ArchivedServerMsg, FrameError> {
    access(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ArchivedServerMsg, Hello, Kind, Reading, ServerMsg, Telemetry};

    fn sample(seq: u64) -> Telemetry {
        Telemetry {
            seq,
            ts_ms: 1_700_000_000_123,
            kind: Kind::Anomaly,
            readings: vec![
                Reading {
                    name: "temperature".into(),
                    value: 71.25,
                },
                Reading {
                    name: "rpm".into(),
                    value: -3.0,
                },
            ],
        }
    }

    fn frames(buf: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(r) = decode_frame(&buf[at..], MAX_TELEMETRY_FRAME_LEN).unwrap() {
            out.push(at + r.start..at + r.end);
            at += r.end;
        }
        assert_eq!(at, buf.len(), "trailing bytes");
        out
    }

    #[test]
    fn batch_round_trips_each_event_independently() {
        let mut buf = Vec::new();
        for seq in 1..=5 {
            encode_frame(&sample(seq), &mut buf);
        }
        let ranges = frames(&buf);
        assert_eq!(ranges.len(), 5);
        for (i, r) in ranges.into_iter().enumerate() {
            let t = validate_telemetry(&buf[r]).unwrap();
            assert_eq!(t.seq.to_native(), i as u64 + 1);
            assert_eq!(t.kind.to_native(), Kind::Anomaly);
            assert_eq!(t.readings[0].name.as_str(), "temperature");
            assert_eq!(t.readings[0].value.to_native(), 71.25);
        }
    }

    #[test]
    fn archives_validate_at_every_odd_offset() {
        let mut one = Vec::new();
        encode_frame(&sample(7), &mut one);
        let payload = &one[FRAME_HEADER_LEN..];
        for pad in 0..16 {
            let mut shifted = vec![0xAAu8; pad];
            shifted.extend_from_slice(payload);
            let t = validate_telemetry(&shifted[pad..]).unwrap();
            assert_eq!(t.seq.to_native(), 7);
        }
    }

    #[test]
    fn incomplete_frames_wait_for_more_bytes() {
        let mut buf = Vec::new();
        encode_frame(&sample(1), &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(decode_frame(&buf[..cut], MAX_TELEMETRY_FRAME_LEN), Ok(None));
        }
    }

    #[test]
    fn oversized_and_empty_frames_are_refused_from_the_header_alone() {
        let header = (MAX_TELEMETRY_FRAME_LEN as u32 + 1).to_le_bytes();
        assert!(matches!(
            decode_frame(&header, MAX_TELEMETRY_FRAME_LEN),
            Err(FrameError::TooLong { .. })
        ));
        assert_eq!(
            decode_frame(&u32::MAX.to_le_bytes(), MAX_TELEMETRY_FRAME_LEN),
            Err(FrameError::TooLong {
                len: u32::MAX as usize,
                max: MAX_TELEMETRY_FRAME_LEN
            })
        );
        assert_eq!(
            decode_frame(&[0, 0, 0, 0], MAX_TELEMETRY_FRAME_LEN),
            Err(FrameError::Empty)
        );
    }

    #[test]
    fn truncated_and_corrupted_archives_are_rejected_without_panic() {
        let mut buf = Vec::new();
        encode_frame(&sample(3), &mut buf);
        let payload = buf[FRAME_HEADER_LEN..].to_vec();
        for cut in 0..payload.len() {
            // Any prefix must fail cleanly (or, rarely, be a different valid archive).
            let _ = validate_telemetry(&payload[..cut]);
        }
        // Flip every byte to a few values: never a panic, and never a
        // non-finite value or bad name that slips through.
        for i in 0..payload.len() {
            for v in [0x00, 0xFF, 0x7F, 0x80] {
                let mut p = payload.clone();
                p[i] = v;
                if let Ok(t) = validate_telemetry(&p) {
                    for r in t.readings.iter() {
                        assert!(r.value.to_native().is_finite());
                        assert!(!r.name.is_empty());
                    }
                }
            }
        }
        assert!(validate_telemetry(&[]).is_err());
        assert!(validate_telemetry(&[1, 2, 3]).is_err());
        // The reason goes back to an unauthenticated peer: no addresses in it.
        let mut garbage = vec![0xC8u8; 200];
        garbage[0] = 0x7f;
        for reason in [
            validate_telemetry(&garbage),
            validate_telemetry(&payload[1..]),
        ]
        .into_iter()
        .filter_map(|r| r.err())
        .chain(validate_hello(&garbage).err())
        {
            assert!(!reason.to_string().contains("0x"), "{reason}");
        }
    }

    #[test]
    fn meaningless_values_are_rejected() {
        let check = |t: Telemetry| {
            let mut buf = Vec::new();
            encode_frame(&t, &mut buf);
            validate_telemetry(&buf[FRAME_HEADER_LEN..]).map(|_| ())
        };
        let mut t = sample(1);
        t.readings[1].value = f64::NAN;
        assert_eq!(check(t), Err(FrameError::NonFinite { index: 1 }));
        let mut t = sample(1);
        t.readings[1].name = t.readings[0].name.clone();
        assert_eq!(check(t), Err(FrameError::DuplicateName { index: 1 }));
        let mut t = sample(1);
        t.readings[0].name = String::new();
        assert_eq!(check(t), Err(FrameError::BadName { index: 0 }));
        let mut t = sample(1);
        t.readings[0].name = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(check(t), Err(FrameError::BadName { index: 0 }));
        let mut t = sample(1);
        t.readings = (0..=MAX_READINGS)
            .map(|i| Reading {
                name: format!("r{i}"),
                value: 1.0,
            })
            .collect();
        assert_eq!(check(t), Err(FrameError::TooManyReadings(MAX_READINGS + 1)));
        let mut t = sample(1);
        t.ts_ms = -1;
        assert_eq!(check(t), Err(FrameError::TimestampOutOfRange(-1)));
        assert_eq!(check(sample(0)), Err(FrameError::ZeroSeq));
        assert!(check(sample(MAX_SEQ)).is_ok());
        assert_eq!(
            check(sample(MAX_SEQ + 1)),
            Err(FrameError::SeqOutOfRange(MAX_SEQ + 1))
        );
        assert_eq!(
            check(sample(u64::MAX)),
            Err(FrameError::SeqOutOfRange(u64::MAX))
        );
    }

    #[test]
    fn a_hello_is_not_a_telemetry_event() {
        let mut buf = Vec::new();
        encode_frame(
            &Hello {
                device_id: "d".into(),
                key: "k".into(),
                version: 1,
            },
            &mut buf,
        );
        let h = validate_hello(&buf[FRAME_HEADER_LEN..]).unwrap();
        assert_eq!(h.device_id.as_str(), "d");
        let mut empty = Vec::new();
        encode_frame(
            &Hello {
                device_id: String::new(),
                key: "k".into(),
                version: 1,
            },
            &mut empty,
        );
        assert_eq!(
            validate_hello(&empty[FRAME_HEADER_LEN..]).map(|_| ()),
            Err(FrameError::BadHelloField("device_id"))
        );
    }

    #[test]
    fn server_messages_round_trip() {
        let mut buf = Vec::new();
        encode_frame(&ServerMsg::Ack { up_to_seq: 42 }, &mut buf);
        match validate_server_msg(&buf[FRAME_HEADER_LEN..]).unwrap() {
            ArchivedServerMsg::Ack { up_to_seq } => assert_eq!(up_to_seq.to_native(), 42),
            other => panic!("unexpected {other:?}"),
        }
    }
}
