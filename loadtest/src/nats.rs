//! The NATS client protocol subset the baseline needs: CONNECT, SUB, PUB,
//! PING/PONG out; INFO, MSG, PING, PONG, +OK and -ERR in.
//!
//! Hand-rolled for the same reason as [`crate::mqtt`]: equal, minimal client
//! cost per message for every broker compared.

use anyhow::{bail, Context as _, Result};

use crate::framing::{Frame, Framer};
use crate::tally::Tally;

/// The handshake after the server's INFO: CONNECT, the subscriptions and a
/// PING whose PONG proves the subscriptions are in place.
pub(crate) fn handshake(name: &str, subjects: &[String]) -> Vec<u8> {
    let mut out = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"{name}\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1}}\r\n"
    );
    for (sid, s) in subjects.iter().enumerate() {
        out.push_str(&format!("SUB {s} {}\r\n", sid + 1));
    }
    out.push_str("PING\r\n");
    out.into_bytes()
}

/// Appends one PUB of `payload` on `subject`.
pub(crate) fn publish(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Splits server operations and counts MSG payloads.
#[derive(Debug)]
pub(crate) struct NatsFramer {
    /// What has been counted so far.
    pub(crate) tally: Tally,
    /// PONGs received (the first answers the handshake's PING).
    pub(crate) pongs: u32,
    /// Server PINGs not yet answered; the reader owes a PONG for each.
    pub(crate) pings: u32,
}

impl NatsFramer {
    /// A framer counting into `tally`.
    pub(crate) fn new(tally: Tally) -> NatsFramer {
        NatsFramer {
            tally,
            pongs: 0,
            pings: 0,
        }
    }
}

/// The payload size on a `MSG subject sid [reply] size` line.
fn msg_size(line: &[u8]) -> Result<usize> {
    let last = line
        .rsplit(|&b| b == b' ')
        .next()
        .filter(|s| !s.is_empty())
        .context("MSG without a size")?;
    std::str::from_utf8(last)?
        .parse()
        .context("MSG size is not a number")
}

impl Framer for NatsFramer {
    fn measure(&mut self, buf: &[u8]) -> Result<Frame> {
        let Some(nl) = memchr::memchr(b'\n', buf) else {
            return Ok(Frame::NeedDelim(b'\n'));
        };
        let line_len = nl + 1;
        if buf.starts_with(b"MSG ") {
            let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
            let total = line_len + msg_size(line)? + 2;
            return Ok(if buf.len() >= total {
                Frame::Complete(total)
            } else {
                Frame::NeedBytes(total)
            });
        }
        Ok(Frame::Complete(line_len))
    }

    fn frame(&mut self, f: &[u8]) -> Result<()> {
        if f.starts_with(b"MSG ") {
            let nl = memchr::memchr(b'\n', f).unwrap_or(0);
            let payload = &f[nl + 1..f.len() - 2];
            self.tally.event(payload);
        } else if f.starts_with(b"PING") {
            self.pings += 1;
            self.tally.controls += 1;
        } else if f.starts_with(b"PONG") {
            self.pongs += 1;
        } else if f.starts_with(b"-ERR") {
            bail!("NATS error: {}", String::from_utf8_lossy(f).trim());
        } else if f.starts_with(b"INFO") || f.starts_with(b"+OK") {
            self.tally.controls += 1;
        } else {
            bail!("unexpected NATS operation {:?}", String::from_utf8_lossy(f));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::{tests::every_split, Reassembler};
    use crate::tally::STAMP_BASE;

    #[test]
    fn encodes_operations() {
        let h = String::from_utf8(handshake("lt", &["a.b".into(), "c".into()])).unwrap();
        assert!(h.starts_with("CONNECT {\"verbose\":false"));
        assert!(h.ends_with("\r\nSUB a.b 1\r\nSUB c 2\r\nPING\r\n"), "{h}");
        let mut p = Vec::new();
        publish(&mut p, "x.y", b"hello");
        assert_eq!(p, b"PUB x.y 5\r\nhello\r\n");
    }

    #[test]
    fn splits_operations_across_every_boundary() {
        let payload = format!("{{\"sent_ns\":{}}}\r\nnot a line", STAMP_BASE + 9);
        let stream = format!(
            "INFO {{\"server_id\":\"x\"}}\r\nPONG\r\nMSG lt.d0 1 {}\r\n{payload}\r\nPING\r\nMSG lt.d0 1 reply.to 3\r\nabc\r\n+OK\r\n",
            payload.len()
        );
        every_split(
            stream.as_bytes(),
            || NatsFramer::new(Tally::new(1)),
            |f| {
                (
                    f.pongs,
                    f.pings,
                    f.tally.events,
                    f.tally.stamps.clone(),
                    f.tally.controls,
                )
            },
        );
        let mut f = NatsFramer::new(Tally::new(1));
        Reassembler::default()
            .feed(stream.as_bytes(), &mut f)
            .unwrap();
        assert_eq!((f.pongs, f.pings, f.tally.events), (1, 1, 2));
        assert_eq!(f.tally.stamps, vec![9], "payload may contain CRLF");
    }

    #[test]
    fn errors_surface() {
        let mut f = NatsFramer::new(Tally::new(1));
        let e = Reassembler::default()
            .feed(b"-ERR 'Authorization Violation'\r\n", &mut f)
            .unwrap_err();
        assert!(e.to_string().contains("Authorization"));
        assert!(f.measure(b"MSG a 1 x\r\n").is_err());
    }
}
