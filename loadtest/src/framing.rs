//! Splitting a byte stream into frames without copying what arrives whole.
//!
//! Subscribers read with large buffers (tens of KiB per `read`), so nearly
//! every frame lies entirely inside one read and is handed out as a slice of
//! it. Only the partial frame at the end of a read is copied into a small
//! carry buffer and completed from the start of the next read.

use anyhow::{bail, Context as _, Result};

/// What a framer says about the bytes at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// The first frame is complete and this long.
    Complete(usize),
    /// The frame is at least this long in total; wait for that many bytes.
    NeedBytes(usize),
    /// The frame's length is not known until this delimiter arrives.
    NeedDelim(u8),
}

/// A protocol's frame splitter plus what it does with each frame.
pub(crate) trait Framer {
    /// Measures the frame at the start of `buf` (never empty).
    fn measure(&mut self, buf: &[u8]) -> Result<Frame>;
    /// Consumes one complete frame.
    fn frame(&mut self, frame: &[u8]) -> Result<()>;
}

/// Frames larger than this are a protocol error (the peers send ~200-byte
/// events; this only stops a runaway carry buffer).
pub(crate) const MAX_FRAME: usize = 1 << 20;

/// Reassembles frames split across reads.
#[derive(Debug, Default)]
pub(crate) struct Reassembler {
    carry: Vec<u8>,
}

impl Reassembler {
    /// Feeds one read's bytes; every complete frame goes to `framer`.
    pub(crate) fn feed<F: Framer>(&mut self, mut data: &[u8], framer: &mut F) -> Result<()> {
        // First complete the frame carried over from the previous read,
        // copying only as many bytes as it needs.
        while !self.carry.is_empty() {
            let need = framer.measure(&self.carry)?;
            if data.is_empty() && !matches!(need, Frame::Complete(_)) {
                return Ok(());
            }
            let take = match need {
                Frame::Complete(n) => {
                    framer.frame(&self.carry[..n])?;
                    self.carry.drain(..n);
                    continue;
                }
                Frame::NeedBytes(n) => (n - self.carry.len()).min(data.len()),
                Frame::NeedDelim(d) => match memchr::memchr(d, data) {
                    Some(i) => i + 1,
                    None => data.len(),
                },
            };
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() > MAX_FRAME {
                bail!("frame longer than {MAX_FRAME} bytes");
            }
        }
        while !data.is_empty() {
            match framer.measure(data)? {
                Frame::Complete(n) => {
                    framer.frame(&data[..n])?;
                    data = &data[n..];
                }
                Frame::NeedBytes(_) | Frame::NeedDelim(_) => {
                    self.carry.extend_from_slice(data);
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Header lines of a response head: (name, value), trimmed.
pub(crate) type Headers<'b> = Vec<(&'b str, &'b str)>;

/// An HTTP response head at the start of `buf`, if all of it has arrived:
/// its header lines (name, value; trimmed) and its length, after which the
/// body or frames follow. A status other than `expect` is an error
/// starting with `refused` and quoting the status line and what followed
/// it (the server's reason).
pub(crate) fn response_head<'b>(
    buf: &'b [u8],
    expect: &str,
    refused: &str,
) -> Result<Option<(Headers<'b>, usize)>> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            bail!("response head longer than 16 KiB");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some(expect) {
        let body = String::from_utf8_lossy(&buf[end + 4..]);
        bail!("{refused}: {status} {}", body.trim());
    }
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.trim(), value.trim()))
        .collect();
    Ok(Some((headers, end + 4)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Newline-terminated lines, recorded.
    #[derive(Default)]
    struct Lines(Vec<Vec<u8>>);

    impl Framer for Lines {
        fn measure(&mut self, buf: &[u8]) -> Result<Frame> {
            Ok(match memchr::memchr(b'\n', buf) {
                Some(i) => Frame::Complete(i + 1),
                None => Frame::NeedDelim(b'\n'),
            })
        }
        fn frame(&mut self, frame: &[u8]) -> Result<()> {
            self.0.push(frame.to_vec());
            Ok(())
        }
    }

    /// Feeds `input` cut at every possible pair of split points and checks
    /// the framer saw the same thing each time.
    pub(crate) fn every_split<F: Framer, T: PartialEq + std::fmt::Debug>(
        input: &[u8],
        make: impl Fn() -> F,
        seen: impl Fn(&F) -> T,
    ) {
        let mut whole = make();
        Reassembler::default().feed(input, &mut whole).unwrap();
        let expected = seen(&whole);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let mut f = make();
                let mut r = Reassembler::default();
                for part in [&input[..a], &input[a..b], &input[b..]] {
                    r.feed(part, &mut f).unwrap();
                }
                assert_eq!(seen(&f), expected, "split at {a},{b}");
            }
        }
    }

    #[test]
    fn lines_survive_every_split() {
        every_split(b"one\ntwo\n\nthree\nfour", Lines::default, |l| l.0.clone());
        let mut l = Lines::default();
        Reassembler::default()
            .feed(b"one\ntwo\n\nthree\nfour", &mut l)
            .unwrap();
        assert_eq!(l.0.len(), 4, "the unterminated tail is held back");
    }

    #[test]
    fn runaway_frame_is_an_error() {
        let mut r = Reassembler::default();
        let mut l = Lines::default();
        r.feed(b"x", &mut l).unwrap();
        let big = vec![b'x'; MAX_FRAME + 1];
        assert!(r.feed(&big, &mut l).is_err());
    }
}
