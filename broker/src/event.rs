//! An accepted event, as shared by the ring and every subscriber queue, and
//! the event-id allocator.

use std::path::Path;
use std::time::Instant;

use sensegate_ingest_proto::Kind;

use crate::access::DeviceKey;

/// Bits of an event id that count events within one boot.
const COUNTER_BITS: u32 = 40;

/// Room reserved in front of a rendered record for its `id: N\n` line:
/// `id: ` + up to 20 digits + `\n`. Filled in once the id is known, so the
/// complete SSE record exists once and egress copies it whole.
const ID_ROOM: usize = 25;

/// One accepted telemetry event. Built once at ingest and shared by pointer
/// (`Arc<Event>`) with the replay ring and every subscriber: nothing in it is
/// ever rendered again per subscriber.
///
/// The SSE record and the archived frame live in **one** buffer owned by the
/// event (`[unused id room][id: N\nevent: …\ndata: {json}\n\n][frame]`).
/// Why: a frame kept as a slice of the session's receive buffer pinned that
/// whole buffer for as long as the ring held any event read into it (so every
/// read allocated a fresh 64 KiB buffer), and a separately allocated record
/// cost a second allocation per event. Now an event is two allocations (this
/// struct behind its `Arc`, and the buffer) and the receive buffer is reused.
#[derive(Debug)]
pub struct Event {
    /// Broker-assigned id, strictly increasing across the whole broker and
    /// across restarts.
    pub id: u64,
    /// The device that sent it (from the session, never from the frame).
    pub device: DeviceKey,
    /// Reading or anomaly.
    pub kind: Kind,
    buf: Vec<u8>,
    sse_start: u32,
    json: (u32, u32),
    frame_start: u32,
    /// When the broker accepted it (for the ingest → egress latency metric).
    pub accepted_at: Instant,
}

impl Event {
    /// The complete SSE record: `id: N\nevent: …\ndata: {json}\n\n`.
    #[inline]
    pub fn sse(&self) -> &[u8] {
        &self.buf[self.sse_start as usize..self.frame_start as usize]
    }

    /// The event's JSON object.
    #[inline]
    pub fn json(&self) -> &[u8] {
        &self.buf[self.json.0 as usize..self.json.1 as usize]
    }

    /// The archived frame exactly as the device sent it (zero-copy consumers).
    #[inline]
    pub fn frame(&self) -> &[u8] {
        &self.buf[self.frame_start as usize..]
    }

    /// Memory this event holds while the router retains it: its buffer, the
    /// struct behind its `Arc` (with the two reference counts), its slot in
    /// the device ring and its entry in the router's id-ordered list.
    pub fn retained_bytes(&self) -> usize {
        const WORD: usize = std::mem::size_of::<usize>();
        self.buf.capacity() + std::mem::size_of::<Event>() + 2 * WORD + WORD + 2 * WORD
    }
}

/// The rendered parts of an event before it has an id.
#[derive(Debug)]
pub struct PendingEvent {
    /// Device sequence number.
    pub seq: u64,
    /// Reading or anomaly.
    pub kind: Kind,
    /// `[ID_ROOM free bytes]event: …\ndata: {json}\n\n[frame]`.
    buf: Vec<u8>,
    /// Where the JSON object sits inside `buf`.
    json: (u32, u32),
    /// Where the frame starts inside `buf`.
    frame_start: u32,
}

impl PendingEvent {
    /// Renders the record for a validated frame, once, and keeps a copy of
    /// the frame's archive (`frame`, the bytes `t` was validated from).
    pub fn render(
        device_id: &str,
        t: &sensegate_ingest_proto::ArchivedTelemetry,
        frame: &[u8],
    ) -> Self {
        Self::with_json(
            t.seq.to_native(),
            t.kind.to_native(),
            frame,
            device_id.len() + 32 * t.readings.len(),
            |out| sensegate_ingest_proto::render_event_json(device_id, t, out),
        )
    }

    /// Renders a record around the JSON `write_json` appends.
    fn with_json(
        seq: u64,
        kind: Kind,
        frame: &[u8],
        size_hint: usize,
        write_json: impl FnOnce(&mut Vec<u8>),
    ) -> Self {
        // Frames are at most a few KiB (`MAX_TELEMETRY_FRAME_LEN`), so every
        // offset fits in a u32 with room to spare.
        let mut out = Vec::with_capacity(ID_ROOM + 96 + size_hint + frame.len());
        out.resize(ID_ROOM, 0);
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.event_name().as_bytes());
        out.extend_from_slice(b"\ndata: ");
        let start = out.len() as u32;
        write_json(&mut out);
        let end = out.len() as u32;
        out.extend_from_slice(b"\n\n");
        let frame_start = out.len() as u32;
        out.extend_from_slice(frame);
        PendingEvent {
            seq,
            kind,
            buf: out,
            json: (start, end),
            frame_start,
        }
    }

    /// A pending event with a fixed JSON body and no frame (tests and benches).
    pub fn from_json(seq: u64, kind: Kind, json: &[u8]) -> Self {
        Self::with_json(seq, kind, &[], json.len(), |out| {
            out.extend_from_slice(json)
        })
    }

    /// Completes the record with its id line.
    pub fn into_event(self, id: u64, device: DeviceKey, accepted_at: Instant) -> Event {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(id).as_bytes();
        let start = ID_ROOM - (4 + digits.len() + 1);
        let mut buf = self.buf;
        buf[start..start + 4].copy_from_slice(b"id: ");
        buf[start + 4..ID_ROOM - 1].copy_from_slice(digits);
        buf[ID_ROOM - 1] = b'\n';
        Event {
            id,
            device,
            kind: self.kind,
            buf,
            sse_start: start as u32,
            json: self.json,
            frame_start: self.frame_start,
            accepted_at,
        }
    }
}

/// Hands out event ids: `boot_epoch << 40 | counter`.
///
/// The boot epoch is persisted in the data dir and bumped on every start, so
/// ids keep increasing across restarts and an id from an earlier boot is
/// recognisably older than anything in the rings. 40 bits of counter allow
/// 10^12 events per boot.
#[derive(Debug)]
pub struct EventIds {
    epoch: u64,
    next: u64,
}

/// Why the boot epoch could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("boot epoch file {path}: {source}")]
pub struct EpochError {
    path: String,
    #[source]
    source: std::io::Error,
}

impl EventIds {
    /// Reads, bumps and persists the boot epoch in `data_dir/boot-epoch`.
    pub fn load(data_dir: &Path) -> Result<Self, EpochError> {
        let path = data_dir.join("boot-epoch");
        let err = |source| EpochError {
            path: path.display().to_string(),
            source,
        };
        let previous = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err(e)),
        };
        let epoch = previous + 1;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, epoch.to_string()).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        Ok(Self::with_epoch(epoch))
    }

    /// An allocator for a given epoch (tests, benches).
    pub fn with_epoch(epoch: u64) -> Self {
        EventIds {
            epoch: epoch << COUNTER_BITS,
            next: 1,
        }
    }

    /// The next id.
    pub fn next_id(&mut self) -> u64 {
        let id = self.epoch | self.next;
        self.next += 1;
        id
    }

    /// The first id of this boot: anything below it is from an earlier boot,
    /// whose events the rings no longer hold.
    pub fn boot_floor(&self) -> u64 {
        self.epoch | 1
    }

    /// The last id handed out (or the epoch base if none): every later id is greater.
    pub fn last(&self) -> u64 {
        self.epoch | (self.next - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_their_id_line_and_json() {
        let p = PendingEvent::from_json(3, Kind::Anomaly, b"{\"a\":1}");
        let e = p.into_event(u64::MAX, DeviceKey::new("t", "d"), Instant::now());
        assert_eq!(
            e.sse(),
            format!("id: {}\nevent: anomaly\ndata: {{\"a\":1}}\n\n", u64::MAX).as_bytes()
        );
        assert_eq!(e.json(), b"{\"a\":1}");
        let e = PendingEvent::from_json(1, Kind::Reading, b"{}").into_event(
            7,
            DeviceKey::new("t", "d"),
            Instant::now(),
        );
        assert_eq!(e.sse(), b"id: 7\nevent: telemetry\ndata: {}\n\n");
    }

    #[test]
    fn an_event_keeps_its_frame_and_record_in_one_buffer() {
        use sensegate_ingest_proto::{encode_frame, validate_telemetry, Reading, Telemetry};
        let mut wire = vec![0xAA; 3];
        encode_frame(
            &Telemetry {
                seq: 9,
                ts_ms: 1_000,
                kind: Kind::Reading,
                readings: vec![Reading {
                    name: "t".into(),
                    value: 1.5,
                }],
            },
            &mut wire,
        );
        // At an odd offset inside a larger receive buffer, as ingest sees it.
        let payload = &wire[3 + sensegate_ingest_proto::FRAME_HEADER_LEN..];
        let t = validate_telemetry(payload).unwrap();
        let p = PendingEvent::render("d-1", t, payload);
        let e = p.into_event(42, DeviceKey::new("t", "d-1"), Instant::now());
        assert_eq!(e.frame(), payload);
        assert_eq!(validate_telemetry(e.frame()).unwrap().seq.to_native(), 9);
        let json: serde_json::Value = serde_json::from_slice(e.json()).unwrap();
        assert_eq!(json["deviceId"], "d-1");
        assert_eq!(json["readings"]["t"], 1.5);
        let sse = std::str::from_utf8(e.sse()).unwrap();
        assert!(
            sse.starts_with("id: 42\nevent: telemetry\ndata: {"),
            "{sse}"
        );
        assert!(sse.ends_with("}\n\n"), "{sse}");
    }

    #[test]
    fn ids_increase_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = EventIds::load(dir.path()).unwrap();
        let first = a.next_id();
        let second = a.next_id();
        assert!(second > first);
        let mut b = EventIds::load(dir.path()).unwrap();
        assert!(b.last() > second);
        assert!(b.next_id() > second);
    }
}
