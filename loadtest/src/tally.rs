//! What a subscriber connection counts, and the send-time stamp every event
//! carries for end-to-end latency.
//!
//! Publishers of every target put the same stamp in the event: the reading
//! `"sent_ns"`, [`STAMP_BASE`] plus nanoseconds on this process's monotonic
//! clock. The base keeps the number at exactly 16 digits (so a baseline
//! payload can be patched in place) and below 2^53 (so it survives the
//! broker's `f64` round trip exactly) for 90 days of uptime.

use std::sync::OnceLock;
use std::time::Instant;

/// Added to every stamp; see the module doc.
pub(crate) const STAMP_BASE: u64 = 1_000_000_000_000_000;
/// The JSON key that precedes the stamp in an event.
pub(crate) const STAMP_KEY: &[u8] = b"\"sent_ns\":";

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since this process first asked.
pub(crate) fn now_ns() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The stamp for an event sent now.
pub(crate) fn stamp() -> u64 {
    STAMP_BASE + now_ns()
}

/// Finds the stamp in an event's JSON and returns it as [`now_ns`] time.
pub(crate) fn parse_stamp(json: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(json, STAMP_KEY)? + STAMP_KEY.len();
    let mut v: u64 = 0;
    let mut digits = 0;
    for &b in &json[at..] {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(())?;
    v.checked_sub(STAMP_BASE)
}

/// Per-connection counts, filled by a protocol decoder as frames arrive.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Telemetry events received.
    pub(crate) events: u64,
    /// Loss reports received (`event: gap`).
    pub(crate) gaps: u64,
    /// Other control records (comments, keep-alives, permissions, pings).
    pub(crate) controls: u64,
    /// Why the server ended the stream, if it said so in-band.
    pub(crate) ended: Option<String>,
    /// Stamps of the sampled events since the caller last drained them.
    pub(crate) stamps: Vec<u64>,
    every: u64,
    countdown: u64,
}

impl Tally {
    /// Samples the stamp of one event in `every`; 0 samples none (for
    /// events stamped by another process, whose clock is not ours).
    pub(crate) fn new(every: u64) -> Tally {
        Tally {
            events: 0,
            gaps: 0,
            controls: 0,
            ended: None,
            stamps: Vec::with_capacity(1024),
            every,
            countdown: 0,
        }
    }

    /// Whether the next event is one to sample.
    pub(crate) fn take_sample(&mut self) -> bool {
        if self.every == 0 {
            return false;
        }
        let sample = self.countdown == 0;
        if sample {
            self.countdown = self.every;
        }
        self.countdown -= 1;
        sample
    }

    /// Counts one event whose JSON (or payload) is `json`.
    pub(crate) fn event(&mut self, json: &[u8]) {
        self.events += 1;
        if self.take_sample() {
            if let Some(s) = parse_stamp(json) {
                self.stamps.push(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_parses_as_the_broker_renders_it() {
        // serde_json renders an integral f64 with a trailing ".0".
        let v = (STAMP_BASE + 123_456_789) as f64;
        let json = format!(
            r#"{{"readings":{{"sent_ns":{},"v":1.5}}}}"#,
            serde_json::json!(v)
        );
        assert!(json.contains("1000000123456789.0"), "{json}");
        assert_eq!(parse_stamp(json.as_bytes()), Some(123_456_789));
        assert_eq!(parse_stamp(b"{\"sent_ns\":12}"), None, "below the base");
        assert_eq!(parse_stamp(b"{\"sent_ns\":x}"), None);
        assert_eq!(parse_stamp(b"{}"), None);
        assert_eq!(parse_stamp(b"{\"sent_ns\":99999999999999999999999}"), None);
    }

    #[test]
    fn stamps_stay_sixteen_digits() {
        assert_eq!(stamp().to_string().len(), 16);
        const { assert!(STAMP_BASE * 9 < (1 << 53), "exact through f64") };
    }

    #[test]
    fn tally_samples_one_in_n() {
        let mut t = Tally::new(4);
        let json = format!("{{\"sent_ns\":{}}}", STAMP_BASE + 7);
        for _ in 0..10 {
            t.event(json.as_bytes());
        }
        assert_eq!(t.events, 10);
        assert_eq!(t.stamps, vec![7, 7, 7], "events 1, 5 and 9");
        let mut none = Tally::new(0);
        none.event(json.as_bytes());
        assert_eq!((none.events, none.stamps.len()), (1, 0));
    }
}
