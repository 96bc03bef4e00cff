//! The subscriber side of SenseGate's SSE stream, over a raw HTTP/1.1
//! connection: the request, the response head, the chunked body and the
//! SSE records inside it.
//!
//! Cheap by construction: chunk data is passed on as slices of the read
//! buffer, lines are found with `memchr`, and only the `data:` line of a
//! sampled event is searched for the send stamp.

use anyhow::{bail, Result};

use crate::framing::{response_head, Frame, Framer, Reassembler};
use crate::tally::Tally;

/// The request line and headers for one stream.
pub(crate) fn request(host: &str, path: &str, token: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
         Authorization: Bearer {token}\r\nUser-Agent: sensegate-loadtest\r\n\r\n"
    )
    .into_bytes()
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the connection closes.
    UntilClose,
}

/// Parses a response head if `buf` holds all of it: returns the framing and
/// the head's length. `Ok(None)` means read more.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(BodyFraming, usize)>> {
    let Some((headers, len)) = response_head(buf, "200", "stream refused")? else {
        return Ok(None);
    };
    let mut framing = BodyFraming::UntilClose;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            framing = BodyFraming::Chunked;
        } else if name.eq_ignore_ascii_case("content-type")
            && !value.starts_with("text/event-stream")
        {
            bail!("not an event stream: content-type {value}");
        }
    }
    Ok(Some((framing, len)))
}

/// The state of a chunked body between reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In the hex size of the next chunk.
    Size { size: usize, digits: u8 },
    /// After the size, skipping extensions up to the line end.
    SizeLineEnd { size: usize },
    /// Inside chunk data, this many bytes left.
    Data(usize),
    /// Skipping the CRLF after chunk data (`true` once the CR is seen).
    DataEnd(bool),
    /// The last chunk arrived.
    Done,
}

/// Decodes `Transfer-Encoding: chunked` into body slices.
#[derive(Debug)]
pub(crate) struct Dechunker {
    state: Chunk,
}

impl Default for Dechunker {
    fn default() -> Self {
        Dechunker {
            state: Chunk::Size { size: 0, digits: 0 },
        }
    }
}

impl Dechunker {
    /// Feeds raw bytes; `body` gets each run of body bytes, in order.
    /// Returns `true` once the terminating chunk has been seen.
    pub(crate) fn feed(
        &mut self,
        mut data: &[u8],
        mut body: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<bool> {
        while !data.is_empty() {
            match self.state {
                Chunk::Data(left) => {
                    let n = left.min(data.len());
                    body(&data[..n])?;
                    data = &data[n..];
                    self.state = if n == left {
                        Chunk::DataEnd(false)
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::Done => return Ok(true),
                _ => {
                    let b = data[0];
                    data = &data[1..];
                    self.state = self.header_byte(b)?;
                }
            }
        }
        Ok(self.state == Chunk::Done)
    }

    fn header_byte(&self, b: u8) -> Result<Chunk> {
        Ok(match (self.state, b) {
            (Chunk::Size { size, digits }, _) if b.is_ascii_hexdigit() => {
                if digits >= 15 {
                    bail!("chunk size too long");
                }
                let d = (b as char).to_digit(16).unwrap_or(0) as usize;
                Chunk::Size {
                    size: size * 16 + d,
                    digits: digits + 1,
                }
            }
            (Chunk::Size { size, digits }, _) if digits > 0 => match b {
                b'\n' => Self::after_size(size),
                _ => Chunk::SizeLineEnd { size },
            },
            (Chunk::SizeLineEnd { size }, b'\n') => Self::after_size(size),
            (Chunk::SizeLineEnd { size }, _) => Chunk::SizeLineEnd { size },
            (Chunk::DataEnd(false), b'\r') => Chunk::DataEnd(true),
            (Chunk::DataEnd(_), b'\n') => Chunk::Size { size: 0, digits: 0 },
            (state, _) => bail!("bad chunked encoding at byte {b:#04x} in {state:?}"),
        })
    }

    fn after_size(size: usize) -> Chunk {
        if size == 0 {
            Chunk::Done
        } else {
            Chunk::Data(size)
        }
    }
}

/// The kind of the record being read, from its `event:` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No `event:` line yet (SSE's default type is `message`).
    Message,
    Telemetry,
    Gap,
    /// The server ends the stream after this one.
    Final,
    Other,
}

/// Splits the body into SSE lines and counts records into a [`Tally`].
#[derive(Debug)]
pub(crate) struct SseFramer {
    /// What has been counted so far.
    pub(crate) tally: Tally,
    kind: Kind,
    fields: bool,
    /// The `data:` line of the current record, if sampled later. Only its
    /// stamp matters, so it is parsed on the spot.
    stamp_seen: Option<u64>,
    sample: bool,
    final_event: Option<String>,
}

impl SseFramer {
    /// A framer counting into `tally`.
    pub(crate) fn new(tally: Tally) -> SseFramer {
        SseFramer {
            tally,
            kind: Kind::Message,
            fields: false,
            stamp_seen: None,
            sample: false,
            final_event: None,
        }
    }

    fn dispatch(&mut self) {
        if !self.fields {
            return;
        }
        match self.kind {
            Kind::Telemetry => {
                // The data line was already sampled (or not) by `frame`.
                self.tally.events += 1;
                if let Some(s) = self.stamp_seen.take() {
                    self.tally.stamps.push(s);
                }
            }
            Kind::Gap => self.tally.gaps += 1,
            Kind::Final => {
                self.tally.controls += 1;
                self.tally.ended = self.final_event.take();
            }
            Kind::Message | Kind::Other => self.tally.controls += 1,
        }
        self.kind = Kind::Message;
        self.fields = false;
        self.stamp_seen = None;
    }
}

impl Framer for SseFramer {
    fn measure(&mut self, buf: &[u8]) -> Result<Frame> {
        Ok(match memchr::memchr(b'\n', buf) {
            Some(i) => Frame::Complete(i + 1),
            None => Frame::NeedDelim(b'\n'),
        })
    }

    fn frame(&mut self, line: &[u8]) -> Result<()> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        if line[0] == b':' {
            self.tally.controls += 1;
            return Ok(());
        }
        self.fields = true;
        if let Some(v) = line.strip_prefix(b"event:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            self.kind = match v {
                b"telemetry" | b"anomaly" => Kind::Telemetry,
                b"gap" => Kind::Gap,
                b"revoked" | b"token-expired" => {
                    self.final_event = Some(String::from_utf8_lossy(v).into_owned());
                    Kind::Final
                }
                _ => Kind::Other,
            };
            if self.kind == Kind::Telemetry {
                self.sample = self.tally.take_sample();
            }
        } else if let Some(v) = line.strip_prefix(b"data:") {
            if self.kind == Kind::Telemetry && self.sample {
                self.stamp_seen = crate::tally::parse_stamp(v);
            }
        }
        Ok(())
    }
}

/// A whole stream body: framing, then SSE.
#[derive(Debug)]
pub(crate) struct SseDecoder {
    /// The SSE layer (and its counts).
    pub(crate) sse: SseFramer,
    chunks: Option<Dechunker>,
    lines: Reassembler,
    /// The body ended (last chunk seen).
    pub(crate) finished: bool,
}

impl SseDecoder {
    /// A decoder for a body framed as `framing`.
    pub(crate) fn new(framing: BodyFraming, tally: Tally) -> SseDecoder {
        SseDecoder {
            sse: SseFramer::new(tally),
            chunks: (framing == BodyFraming::Chunked).then(Dechunker::default),
            lines: Reassembler::default(),
            finished: false,
        }
    }

    /// Feeds bytes read from the socket after the response head.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<()> {
        let (lines, sse) = (&mut self.lines, &mut self.sse);
        match &mut self.chunks {
            Some(c) => self.finished = c.feed(data, |body| lines.feed(body, sse))?,
            None => lines.feed(data, sse)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::tests::every_split;
    use crate::tally::STAMP_BASE;

    fn chunked(parts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(format!("{:x};ext=1\r\n{p}\r\n", p.len()).as_bytes());
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    fn event(id: u64, stamp: u64) -> String {
        format!(
            "id: {id}\nevent: telemetry\ndata: {{\"deviceId\":\"d\",\"readings\":{{\"sent_ns\":{}.0}}}}\n\n",
            STAMP_BASE + stamp
        )
    }

    #[test]
    fn head_parsing() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nxyz";
        assert_eq!(
            parse_head(ok).unwrap(),
            Some((BodyFraming::Chunked, ok.len() - 3))
        );
        assert_eq!(parse_head(&ok[..20]).unwrap(), None);
        let plain = b"HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
        assert_eq!(
            parse_head(plain).unwrap().unwrap().0,
            BodyFraming::UntilClose
        );
        let refused = b"HTTP/1.1 401 Unauthorized\r\n\r\n{\"error\":\"invalid_token\"}";
        let e = parse_head(refused).unwrap_err().to_string();
        assert!(e.contains("401") && e.contains("invalid_token"), "{e}");
        let json = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n";
        assert!(parse_head(json).is_err());
    }

    #[test]
    fn dechunks_across_every_split() {
        let body = chunked(&["hello ", "chunked ", "world"]);
        struct Collect(Dechunker, Vec<u8>, bool);
        // Drive the dechunker directly: it has no carry of its own.
        for a in 0..=body.len() {
            let mut c = Collect(Dechunker::default(), Vec::new(), false);
            for part in [&body[..a], &body[a..]] {
                let out = &mut c.1;
                c.2 =
                    c.0.feed(part, |b| {
                        out.extend_from_slice(b);
                        Ok(())
                    })
                    .unwrap();
            }
            assert_eq!(c.1, b"hello chunked world", "split at {a}");
            assert!(c.2, "end seen");
        }
        assert!(Dechunker::default().feed(b"zz\r\n", |_| Ok(())).is_err());
    }

    #[test]
    fn counts_records_and_samples_stamps() {
        let stream = format!(
            ": keep-alive\n\n{}{}event: gap\ndata: {{\"missedThrough\":\"9\"}}\n\n{}event: revoked\ndata: {{}}\n\n",
            event(1, 100),
            event(2, 200),
            event(3, 300)
        );
        let body = chunked(&[&stream[..50], &stream[50..]]);
        every_split(
            &body,
            || ChunkedHarness(SseDecoder::new(BodyFraming::Chunked, Tally::new(2))),
            |h| {
                let t = &h.0.sse.tally;
                (
                    t.events,
                    t.gaps,
                    t.controls,
                    t.stamps.clone(),
                    t.ended.clone(),
                    h.0.finished,
                )
            },
        );
        let mut d = SseDecoder::new(BodyFraming::Chunked, Tally::new(2));
        d.feed(&body).unwrap();
        let t = &d.sse.tally;
        assert_eq!((t.events, t.gaps, t.controls), (3, 1, 2));
        assert_eq!(t.stamps, vec![100, 300], "one event in two");
        assert_eq!(t.ended.as_deref(), Some("revoked"));
        assert!(d.finished);
    }

    #[test]
    fn crlf_lines_and_unchunked_bodies() {
        let mut d = SseDecoder::new(BodyFraming::UntilClose, Tally::new(1));
        d.feed(b"event: anomaly\r\ndata: {\"sent_ns\":1000000000000005}\r\n\r\nevent: x\n\n")
            .unwrap();
        assert_eq!(d.sse.tally.events, 1);
        assert_eq!(d.sse.tally.stamps, vec![5]);
        assert_eq!(d.sse.tally.controls, 1);
    }

    /// Lets `every_split` drive a whole decoder through the framer interface.
    struct ChunkedHarness(SseDecoder);

    impl Framer for ChunkedHarness {
        fn measure(&mut self, buf: &[u8]) -> Result<Frame> {
            Ok(Frame::Complete(buf.len()))
        }
        fn frame(&mut self, frame: &[u8]) -> Result<()> {
            self.0.feed(frame)
        }
    }
}
