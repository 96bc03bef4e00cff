//! Validation and normalisation of what operators type.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use unicode_normalization::UnicodeNormalization as _;

use crate::error::AdminError;

/// Longest display name, in characters (after trimming).
pub(crate) const MAX_NAME_CHARS: usize = 100;
/// Longest device or group id.
pub(crate) const MAX_ID_CHARS: usize = 64;
/// Most ids in one `devices` / `deviceGroups` list.
pub(crate) const MAX_LIST: usize = 10_000;
/// Largest serialised device metadata.
pub(crate) const MAX_METADATA_BYTES: usize = 16 * 1024;

/// A display name, cleaned, plus the key that makes names unique: NFC,
/// trimmed, case-folded (full Unicode folding, so `Straße` and `STRASSE`
/// clash), NFC again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name {
    /// What is stored and shown: trimmed and NFC-normalised.
    pub(crate) display: String,
    /// What uniqueness is decided on.
    pub(crate) key: String,
}

/// Validates a display name for `field`: not blank, at most
/// [`MAX_NAME_CHARS`], no control or invisible characters.
pub(crate) fn name(field: &str, raw: &str) -> Result<Name, AdminError> {
    let display: String = raw.trim().nfc().collect();
    if display.is_empty() {
        return Err(AdminError::invalid(field, "must not be blank"));
    }
    if display.chars().count() > MAX_NAME_CHARS {
        return Err(AdminError::invalid(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if let Some(c) = display.chars().find(|&c| c.is_control() || is_invisible(c)) {
        return Err(AdminError::invalid(
            field,
            format!(
                "must not contain control or invisible characters (U+{:04X})",
                u32::from(c)
            ),
        ));
    }
    Ok(Name {
        key: name_key(&display),
        display,
    })
}

/// The uniqueness key of an already-clean display name (also used for the
/// name filter of lists).
pub(crate) fn name_key(display: &str) -> String {
    let nfc: String = display.trim().nfc().collect();
    caseless::default_case_fold_str(&nfc).nfc().collect()
}

/// Characters that render as nothing (or reorder text) and would let two
/// names look identical: Unicode general category Cf, the line/paragraph
/// separators, and the Hangul fillers.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Device and group ids: 1..=64 of `[A-Za-z0-9._-]`, so they are safe in
/// URLs, logs and SSE payloads without escaping; `.` and `..` are refused
/// because clients normalise them out of URL paths (`/devices/..`).
pub(crate) fn id(field: &str, raw: &str) -> Result<(), AdminError> {
    let ok_len = !raw.is_empty() && raw.len() <= MAX_ID_CHARS;
    let ok_chars = raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let dot_segment = raw == "." || raw == "..";
    if ok_len && ok_chars && !dot_segment {
        Ok(())
    } else {
        Err(AdminError::invalid(
            field,
            format!("must be 1 to {MAX_ID_CHARS} characters of A-Z a-z 0-9 . _ -"),
        ))
    }
}

/// Parses an RFC 3339 instant (any offset) to epoch milliseconds.
pub(crate) fn rfc3339_ms(field: &str, raw: &str) -> Result<i64, AdminError> {
    let t = OffsetDateTime::parse(raw, &Rfc3339)
        .map_err(|_| AdminError::invalid(field, "must be an RFC 3339 timestamp"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| AdminError::invalid(field, "out of range"))
}

/// Formats epoch milliseconds as RFC 3339 in UTC with milliseconds,
/// e.g. `2025-01-02T03:04:05.678Z`.
pub(crate) fn format_ms(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Sorts and de-duplicates a list of ids, checking each.
pub(crate) fn id_list(field: &str, ids: Vec<String>) -> Result<Vec<String>, AdminError> {
    if ids.len() > MAX_LIST {
        return Err(AdminError::invalid(
            field,
            format!("at most {MAX_LIST} entries"),
        ));
    }
    let mut ids = ids;
    ids.sort();
    ids.dedup();
    for i in &ids {
        id(field, i)?;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_clash_after_nfc_trim_and_case_folding() {
        let a = name("name", "  Café Dashboard ").unwrap();
        let b = name("name", "CAFE\u{301} dashboard").unwrap();
        assert_eq!(a.display, "Café Dashboard");
        assert_eq!(a.key, b.key);
        assert_eq!(
            name("name", "Straße").unwrap().key,
            name("name", "STRASSE").unwrap().key
        );
        assert_ne!(
            name("name", "a b").unwrap().key,
            name("name", "ab").unwrap().key
        );
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            "   ",
            "a\u{0}b",
            "tab\there",
            "zero\u{200B}width",
            "bidi\u{202E}x",
            "\u{FEFF}bom",
        ] {
            assert!(name("name", bad).is_err(), "{bad:?}");
        }
        assert!(name("name", &"x".repeat(100)).is_ok());
        assert!(name("name", &"é".repeat(101)).is_err());
    }

    #[test]
    fn ids_are_restricted() {
        for ok in ["a", "machine-1", "A.b_c-9", "...", ".a", &"x".repeat(64)] {
            assert!(id("id", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "ü", ".", "..", &"x".repeat(65)] {
            assert!(id("id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_round_trip_in_utc() {
        let ms = rfc3339_ms("t", "2030-01-01T02:00:00.5+02:00").unwrap();
        assert_eq!(format_ms(ms), "2030-01-01T00:00:00.500Z");
        assert!(rfc3339_ms("t", "2030-01-01").is_err());
    }
}
