//! The subscriber side of SenseGate's WebSocket stream (`sensegate.v1.json`)
//! over a raw TCP connection: the upgrade request, the `101` answer, and the
//! server's frames.
//!
//! Hand-rolled like [`crate::sse`], [`crate::mqtt`] and [`crate::nats`] so
//! every subscriber costs the same per message: frames are measured from
//! their header and handed out as slices of the read buffer; only a sampled
//! event is searched for its send stamp. Server pings are answered with
//! masked pongs (the broker closes a silent client after two heartbeats).

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use sha1::{Digest as _, Sha1};

use crate::framing::{response_head, Frame, Framer};
use crate::tally::Tally;

/// The subprotocol the load tester reads: one JSON text message per event.
const PROTOCOL: &str = "sensegate.v1.json";

/// RFC 6455 §1.3: appended to the client's key before hashing.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Control frames may carry at most this much (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub(crate) fn new_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

/// The upgrade request for one stream.
pub(crate) fn request(host: &str, path: &str, token: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Protocol: {PROTOCOL}\r\nAuthorization: Bearer {token}\r\n\
         User-Agent: sensegate-loadtest\r\n\r\n"
    )
    .into_bytes()
}

/// What the server must answer in `Sec-WebSocket-Accept` for `key`.
fn accept_for(key: &str) -> String {
    let digest = Sha1::new()
        .chain_update(key.as_bytes())
        .chain_update(ACCEPT_GUID.as_bytes())
        .finalize();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Parses the upgrade answer if `buf` holds all of its head: returns the
/// head's length (frames follow it). `Ok(None)` means read more.
pub(crate) fn parse_head(buf: &[u8], key: &str) -> Result<Option<usize>> {
    let Some((headers, len)) = response_head(buf, "101", "upgrade refused")? else {
        return Ok(None);
    };
    let (mut accept, mut protocol) = (None, None);
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            protocol = Some(value);
        }
    }
    if accept != Some(accept_for(key).as_str()) {
        bail!("wrong Sec-WebSocket-Accept {accept:?}");
    }
    if protocol != Some(PROTOCOL) {
        bail!("the server chose subprotocol {protocol:?}, not {PROTOCOL}");
    }
    Ok(Some(len))
}

/// A masked pong echoing `payload` (client frames must be masked).
pub(crate) fn pong(out: &mut Vec<u8>, payload: &[u8]) {
    let mask: [u8; 4] = rand::random();
    out.push(0x8a);
    // Ping payloads are at most 125 bytes, so the length fits one byte.
    out.push(0x80 | payload.len().min(MAX_CONTROL) as u8);
    out.extend_from_slice(&mask);
    out.extend(
        payload
            .iter()
            .take(MAX_CONTROL)
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m),
    );
}

/// Splits server frames and counts event messages.
#[derive(Debug)]
pub(crate) struct WsFramer {
    /// What has been counted so far.
    pub(crate) tally: Tally,
    /// Pongs owed for the server's pings, ready to write.
    pub(crate) pongs: Vec<u8>,
}

impl WsFramer {
    /// A framer counting into `tally`.
    pub(crate) fn new(tally: Tally) -> WsFramer {
        WsFramer {
            tally,
            pongs: Vec::new(),
        }
    }

    /// One complete text message: an event or a control record.
    fn message(&mut self, json: &[u8]) {
        const KEY: &[u8] = b"\"event\":\"";
        let name = memchr::memmem::find(json, KEY).and_then(|at| {
            let rest = &json[at + KEY.len()..];
            memchr::memchr(b'"', rest).map(|end| &rest[..end])
        });
        match name {
            Some(b"telemetry" | b"anomaly") => self.tally.event(json),
            Some(b"gap") => self.tally.gaps += 1,
            Some(end @ (b"revoked" | b"token-expired")) => {
                self.tally.controls += 1;
                self.tally.ended = Some(String::from_utf8_lossy(end).into_owned());
            }
            _ => self.tally.controls += 1,
        }
    }
}

impl Framer for WsFramer {
    fn measure(&mut self, buf: &[u8]) -> Result<Frame> {
        if buf.len() < 2 {
            return Ok(Frame::NeedBytes(2));
        }
        if buf[1] & 0x80 != 0 {
            bail!("the server sent a masked frame");
        }
        let (header, len) = match buf[1] & 0x7f {
            126 if buf.len() < 4 => return Ok(Frame::NeedBytes(4)),
            126 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
            127 if buf.len() < 10 => return Ok(Frame::NeedBytes(10)),
            127 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[2..10]);
                let n = u64::from_be_bytes(n);
                (10, usize::try_from(n).context("frame length overflows")?)
            }
            n => (2, usize::from(n)),
        };
        let total = len
            .checked_add(header)
            .filter(|&t| t <= crate::framing::MAX_FRAME)
            .context("frame longer than the framer's limit")?;
        Ok(if buf.len() >= total {
            Frame::Complete(total)
        } else {
            Frame::NeedBytes(total)
        })
    }

    fn frame(&mut self, frame: &[u8]) -> Result<()> {
        let header = match frame[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let payload = &frame[header..];
        if frame[0] & 0x80 == 0 {
            bail!("fragmented message (the broker sends whole messages)");
        }
        match frame[0] & 0x0f {
            0x1 => self.message(payload),
            0x2 => bail!("binary message on {PROTOCOL}"),
            0x8 => {
                let code = payload
                    .get(..2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .unwrap_or(1005);
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                self.tally
                    .ended
                    .get_or_insert(format!("close {code} {reason}"));
            }
            0x9 => {
                self.tally.controls += 1;
                pong(&mut self.pongs, payload);
            }
            0xa => {}
            op => bail!("unknown opcode {op:#x}"),
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::framing::tests::every_split;
    use crate::framing::Reassembler;
    use crate::tally::STAMP_BASE;

    /// The server's `Sec-WebSocket-Accept` for `key`.
    pub(crate) fn accept(key: &str) -> String {
        accept_for(key)
    }

    /// An unmasked server frame.
    pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    fn event(id: u64, stamp: u64, pad: usize) -> Vec<u8> {
        let json = format!(
            "{{\"id\":\"{id}\",\"event\":\"telemetry\",\"data\":{{\"deviceId\":\"d\",\"pad\":\"{}\",\"readings\":{{\"sent_ns\":{}.0}}}}}}",
            "x".repeat(pad),
            STAMP_BASE + stamp
        );
        frame(0x1, json.as_bytes())
    }

    #[test]
    fn accept_matches_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn head_parsing() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok =
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                   sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
                   sec-websocket-protocol: sensegate.v1.json\r\n\r\n\x81\x00";
        assert_eq!(parse_head(ok, key).unwrap(), Some(ok.len() - 2));
        assert_eq!(parse_head(&ok[..30], key).unwrap(), None);
        let e = parse_head(ok, "another-key").unwrap_err().to_string();
        assert!(e.contains("Accept"), "{e}");
        let refused = b"HTTP/1.1 401 Unauthorized\r\n\r\n{\"error\":\"invalid_token\"}";
        let e = parse_head(refused, key).unwrap_err().to_string();
        assert!(e.contains("401") && e.contains("invalid_token"), "{e}");
    }

    #[test]
    fn counts_messages_across_every_split() {
        let mut input = event(1, 100, 0);
        input.extend(frame(0x9, b"hb"));
        input.extend(event(2, 200, 300)); // 16-bit length
        input.extend(frame(
            0x1,
            br#"{"data":{"reason":"slow-consumer"},"event":"gap"}"#,
        ));
        input.extend(event(3, 300, 70_000)); // 64-bit length
        input.extend(frame(
            0x1,
            br#"{"data":{"reason":"disabled"},"event":"revoked"}"#,
        ));
        input.extend(frame(0x8, b"\x03\xf0policy"));
        let mut whole = WsFramer::new(Tally::new(1));
        Reassembler::default().feed(&input, &mut whole).unwrap();
        let t = &whole.tally;
        assert_eq!((t.events, t.gaps, t.controls), (3, 1, 2));
        assert_eq!(t.stamps, vec![100, 200, 300]);
        assert_eq!(t.ended.as_deref(), Some("revoked"));
        assert_eq!(whole.pongs[0], 0x8a, "a pong is owed");
        assert_eq!(whole.pongs[1], 0x82, "masked, two bytes");
        let mask = &whole.pongs[2..6];
        let echoed: Vec<u8> = whole.pongs[6..]
            .iter()
            .zip(mask)
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(echoed, b"hb");

        // Every pair of split points of a 70 KB input is too many: the
        // long frame is covered whole above, a short input at every split.
        let mut small = event(1, 100, 0);
        small.extend(frame(0x9, b""));
        small.extend(event(2, 200, 130));
        small.extend(frame(0x8, b"\x0f\xa1"));
        every_split(
            &small,
            || WsFramer::new(Tally::new(1)),
            |f| {
                (
                    f.tally.events,
                    f.tally.controls,
                    f.tally.stamps.clone(),
                    f.tally.ended.clone(),
                )
            },
        );
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut f = WsFramer::new(Tally::new(1));
        assert!(f.measure(&[0x81, 0x85, 1, 2, 3, 4]).is_err(), "masked");
        let mut r = Reassembler::default();
        assert!(r.feed(&[0x01, 0x01, b'x'], &mut f).is_err(), "fragment");
        let mut r = Reassembler::default();
        assert!(r.feed(&frame(0x2, b"bin"), &mut f).is_err(), "binary");
        let huge = [0x81, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(f.measure(&huge).is_err(), "runaway length");
    }
}
