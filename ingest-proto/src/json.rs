//! The JSON shape of an event, as every SSE and WebSocket consumer sees it.
//!
//! ```json
//! {"deviceId":"machine-1","seq":17,"ts":"2013-12-02T21:15:00.000Z","kind":"reading","readings":{"temperature":73.96}}
//! ```
//!
//! Rendered straight from the validated archive into a caller-owned buffer,
//! once per event, whatever the number of subscribers.

use crate::schema::ArchivedTelemetry;

/// Appends the event's JSON object to `out`.
///
/// `t` must have passed [`crate::validate_telemetry`] (finite values, sane
/// timestamp); `device_id` is the session's identity, never a field of the frame.
pub fn render_event_json(device_id: &str, t: &ArchivedTelemetry, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"deviceId\":");
    write_json_str(device_id, out);
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(itoa::Buffer::new().format(t.seq.to_native()).as_bytes());
    out.extend_from_slice(b",\"ts\":\"");
    write_rfc3339_millis(t.ts_ms.to_native(), out);
    out.extend_from_slice(b"\",\"kind\":\"");
    out.extend_from_slice(t.kind.to_native().as_str().as_bytes());
    out.extend_from_slice(b"\",\"readings\":{");
    for (i, r) in t.readings.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(r.name.as_str(), out);
        out.push(b':');
        write_json_f64(r.value.to_native(), out);
    }
    out.extend_from_slice(b"}}");
}

fn write_json_str(s: &str, out: &mut Vec<u8>) {
    // Device ids and reading names almost never need escaping: copy those
    // as they are (one scan, no serializer) and leave the rest to
    // serde_json's exact escaper (control characters, quotes, backslashes);
    // writing a &str into a Vec cannot fail.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn write_json_f64(v: f64, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, &v);
}

/// Appends `ms` (milliseconds since the Unix epoch, 0..=year 9999) as
/// RFC 3339 UTC with exactly three fractional digits, e.g.
/// `2013-12-02T21:15:00.000Z`.
///
/// Hand-rolled because it runs once per event on the ingest path and a
/// general-purpose formatter costs several times more; it is checked against
/// the `time` crate in the tests.
pub fn write_rfc3339_millis(ms: i64, out: &mut Vec<u8>) {
    let ms = ms.max(0);
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (hh, rem) = (in_day / 3_600_000, in_day % 3_600_000);
    let (mm, rem) = (rem / 60_000, rem % 60_000);
    let (ss, milli) = (rem / 1000, rem % 1000);
    let mut b = [0u8; 24];
    put4(&mut b[0..4], y);
    b[4] = b'-';
    put2(&mut b[5..7], m);
    b[7] = b'-';
    put2(&mut b[8..10], d);
    b[10] = b'T';
    put2(&mut b[11..13], hh);
    b[13] = b':';
    put2(&mut b[14..16], mm);
    b[16] = b':';
    put2(&mut b[17..19], ss);
    b[19] = b'.';
    b[20] = b'0' + (milli / 100) as u8;
    b[21] = b'0' + (milli / 10 % 10) as u8;
    b[22] = b'0' + (milli % 10) as u8;
    b[23] = b'Z';
    out.extend_from_slice(&b);
}

fn put2(b: &mut [u8], v: i64) {
    b[0] = b'0' + (v / 10) as u8;
    b[1] = b'0' + (v % 10) as u8;
}

fn put4(b: &mut [u8], v: i64) {
    put2(&mut b[0..2], v / 100);
    put2(&mut b[2..4], v % 100);
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_frame, validate_telemetry, Kind, Reading, Telemetry, FRAME_HEADER_LEN};

    #[test]
    fn timestamps_match_the_time_crate() {
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let mut ms = 0i64;
        while ms < 253_402_300_799_999 {
            let expected = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
                .unwrap()
                .format(&fmt)
                .unwrap();
            let mut out = Vec::new();
            write_rfc3339_millis(ms, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "ms={ms}");
            ms = ms * 3 + 86_399_999 + 7;
        }
        let mut out = Vec::new();
        write_rfc3339_millis(951_782_400_001, &mut out); // leap day 2000
        assert_eq!(out, b"2000-02-29T00:00:00.001Z");
    }

    #[test]
    fn json_escapes_names_and_is_valid() {
        let t = Telemetry {
            seq: 9,
            ts_ms: 1_386_018_900_000,
            kind: Kind::Reading,
            readings: vec![
                Reading {
                    name: "te\"mp\n".into(),
                    value: 73.96,
                },
                Reading {
                    name: "n".into(),
                    value: 2.0,
                },
            ],
        };
        let mut buf = Vec::new();
        encode_frame(&t, &mut buf);
        let a = validate_telemetry(&buf[FRAME_HEADER_LEN..]).unwrap();
        let mut out = Vec::new();
        render_event_json("dev\\1", a, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["deviceId"], "dev\\1");
        assert_eq!(v["seq"], 9);
        assert_eq!(v["ts"], "2013-12-02T21:15:00.000Z");
        assert_eq!(v["kind"], "reading");
        assert_eq!(v["readings"]["te\"mp\n"], 73.96);
        assert_eq!(v["readings"]["n"], 2.0);
    }

    #[test]
    fn strings_render_as_serde_json_renders_them() {
        for s in [
            "",
            "plain",
            "machine_temperature",
            "quo\"te",
            "back\\slash",
            "tab\there",
            "nul\0",
            "\u{1f}unit",
            "\u{7f}del",
            "ünïcödé ✓",
            "\u{2028}line",
            "</script>",
        ] {
            let mut out = Vec::new();
            write_json_str(s, &mut out);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }
}
