//! The event every target carries: SenseGate's own event JSON, padded to a
//! target size, with the send stamp as a reading.
//!
//! A SenseGate device sends it as a `Telemetry` frame and the broker renders
//! the JSON; Mosquitto and NATS publishers send the JSON bytes the broker
//! would have rendered (made with the same `render_event_json`), so every
//! target moves the same application bytes.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use sensegate_ingest_proto::{
    encode_frame, render_event_json, validate_telemetry, Kind, Reading, Telemetry,
    FRAME_HEADER_LEN, MAX_READINGS,
};

use crate::tally::{STAMP_BASE, STAMP_KEY};

/// Where reading values come from.
#[derive(Debug, Clone)]
pub(crate) enum Values {
    /// A slow sine wave around 70.
    Synthetic,
    /// The `value` column of a NAB-style CSV (`timestamp,value`), replayed
    /// in order and looped.
    Csv(Vec<f64>),
}

impl Values {
    /// Loads the value column of `path`.
    pub(crate) fn from_csv(path: &Path) -> Result<Values> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let values = parse_csv(&text)?;
        if values.is_empty() {
            bail!("{} has no values", path.display());
        }
        Ok(Values::Csv(values))
    }

    /// The `i`-th value.
    pub(crate) fn get(&self, i: u64) -> f64 {
        match self {
            Values::Synthetic => 70.0 + 5.0 * (i as f64 / 100.0).sin(),
            Values::Csv(v) => v[(i % v.len() as u64) as usize],
        }
    }
}

/// The second column of every data row; a header row is skipped.
fn parse_csv(text: &str) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some((_, value)) = line.split_once(',') else {
            continue;
        };
        match value.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => out.push(v),
            _ if n == 0 => {}
            _ => bail!("line {}: {value:?} is not a number", n + 1),
        }
    }
    Ok(out)
}

/// One device's reusable event: encode it with a new seq, stamp and value
/// without allocating.
#[derive(Debug, Clone)]
pub(crate) struct EventTemplate {
    telemetry: Telemetry,
}

impl EventTemplate {
    /// An event whose rendered JSON for `device_id` is at least
    /// `json_bytes` long (padding readings `p0`, `p1`, … make up the size).
    pub(crate) fn new(device_id: &str, json_bytes: usize) -> EventTemplate {
        let mut t = EventTemplate {
            telemetry: Telemetry {
                seq: 1,
                ts_ms: 1_700_000_000_000,
                kind: Kind::Reading,
                readings: vec![
                    Reading {
                        name: "sent_ns".into(),
                        value: STAMP_BASE as f64,
                    },
                    Reading {
                        name: "value".into(),
                        value: 73.96732207,
                    },
                ],
            },
        };
        while t.render_json(device_id).len() < json_bytes
            && t.telemetry.readings.len() < MAX_READINGS
        {
            let name = format!("p{}", t.telemetry.readings.len() - 2);
            t.telemetry.readings.push(Reading { name, value: 0.0 });
        }
        t
    }

    /// Sets the fields that change per event.
    pub(crate) fn set(&mut self, seq: u64, ts_ms: i64, stamp: u64, value: f64) {
        self.telemetry.seq = seq;
        self.telemetry.ts_ms = ts_ms;
        self.telemetry.readings[0].value = stamp as f64;
        self.telemetry.readings[1].value = value;
    }

    /// Appends the event as one frame.
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) {
        encode_frame(&self.telemetry, buf);
    }

    /// The JSON SenseGate renders for this event (what an SSE `data:` line
    /// carries).
    pub(crate) fn render_json(&self, device_id: &str) -> Vec<u8> {
        let mut frame = Vec::new();
        encode_frame(&self.telemetry, &mut frame);
        let archived =
            validate_telemetry(&frame[FRAME_HEADER_LEN..]).expect("an encoded template validates");
        let mut json = Vec::new();
        render_event_json(device_id, archived, &mut json);
        json
    }
}

/// A baseline message: the rendered JSON with the stamp digits patched in
/// place per message.
#[derive(Debug, Clone)]
pub(crate) struct StampedPayload {
    bytes: Vec<u8>,
    at: usize,
}

impl StampedPayload {
    /// The JSON of `template` for `device_id`.
    pub(crate) fn new(template: &EventTemplate, device_id: &str) -> StampedPayload {
        let bytes = template.render_json(device_id);
        let at = memchr::memmem::find(&bytes, STAMP_KEY).expect("the template has a stamp")
            + STAMP_KEY.len();
        debug_assert!(bytes[at..at + 16].iter().all(u8::is_ascii_digit));
        StampedPayload { bytes, at }
    }

    /// The payload stamped with `stamp` (16 digits, see [`crate::tally`]).
    pub(crate) fn stamped(&mut self, stamp: u64) -> &[u8] {
        let mut v = stamp;
        for b in self.bytes[self.at..self.at + 16].iter_mut().rev() {
            *b = b'0' + (v % 10) as u8;
            v /= 10;
        }
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::parse_stamp;

    #[test]
    fn template_reaches_the_requested_size() {
        let t = EventTemplate::new("lt-abc-0", 200);
        let json = t.render_json("lt-abc-0");
        assert!((200..215).contains(&json.len()), "{} bytes", json.len());
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["deviceId"], "lt-abc-0");
        assert!(v["readings"]["p0"].is_number());
    }

    #[test]
    fn stamped_payload_round_trips() {
        let mut t = EventTemplate::new("d", 200);
        t.set(5, 1_700_000_000_000, STAMP_BASE + 77, 1.0);
        let mut p = StampedPayload::new(&t, "d");
        let bytes = p.stamped(STAMP_BASE + 123_456).to_vec();
        assert_eq!(parse_stamp(&bytes), Some(123_456));
        assert_eq!(
            bytes.len(),
            t.render_json("d").len(),
            "patching keeps the size"
        );
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap();
        // The broker's rendering of the same stamp parses the same way.
        let json = t.render_json("d");
        assert_eq!(parse_stamp(&json), Some(77));
    }

    #[test]
    fn csv_values() {
        let v = parse_csv("timestamp,value\n2013-12-02 21:15:00,73.5\n2013-12-02 21:20:00,74\n")
            .unwrap();
        assert_eq!(v, vec![73.5, 74.0]);
        assert!(parse_csv("t,v\n1,x\n").is_err());
        let values = Values::Csv(v);
        assert_eq!(values.get(3), 74.0);
        assert!((Values::Synthetic.get(0) - 70.0).abs() < 1e-9);
    }

    #[test]
    fn nab_data_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/nab/machine_temperature_system_failure.csv");
        let Values::Csv(v) = Values::from_csv(&path).unwrap() else {
            unreachable!()
        };
        assert_eq!(v.len(), 22_695);
    }
}
