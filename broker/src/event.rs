//! An accepted event, as shared by the ring and every subscriber queue, and
//! the event-id allocator.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use sensegate_ingest_proto::Kind;

use crate::access::DeviceKey;

/// Bits of an event id that count events within one boot.
const COUNTER_BITS: u32 = 40;

/// One accepted telemetry event. Built once at ingest and shared by pointer
/// (`Arc<Event>`) with the replay ring and every subscriber: nothing in it is
/// ever rendered again per subscriber.
#[derive(Debug)]
pub struct Event {
    /// Broker-assigned id, strictly increasing across the whole broker and
    /// across restarts.
    pub id: u64,
    /// The device that sent it (from the session, never from the frame).
    pub device: DeviceKey,
    /// Reading or anomaly.
    pub kind: Kind,
    /// `event: …\ndata: {json}\n\n`: the SSE record minus its `id:` line,
    /// which egress writes in front.
    pub sse_tail: Bytes,
    /// Where the JSON object sits inside `sse_tail`.
    pub json_range: std::ops::Range<usize>,
    /// The archived frame exactly as the device sent it (zero-copy consumers).
    pub frame: Bytes,
    /// When the broker accepted it (for the ingest → egress latency metric).
    pub accepted_at: Instant,
}

impl Event {
    /// The event's JSON object.
    pub fn json(&self) -> &[u8] {
        &self.sse_tail[self.json_range.clone()]
    }
}

/// The rendered parts of an event before it has an id.
#[derive(Debug)]
pub struct PendingEvent {
    /// Device sequence number.
    pub seq: u64,
    /// Reading or anomaly.
    pub kind: Kind,
    /// See [`Event::sse_tail`].
    pub sse_tail: Bytes,
    /// See [`Event::json_range`].
    pub json_range: std::ops::Range<usize>,
    /// See [`Event::frame`].
    pub frame: Bytes,
}

impl PendingEvent {
    /// Renders the SSE tail for a validated frame, once.
    pub fn render(
        device_id: &str,
        t: &sensegate_ingest_proto::ArchivedTelemetry,
        frame: Bytes,
    ) -> Self {
        let kind = t.kind.to_native();
        let mut out = Vec::with_capacity(64 + 32 * t.readings.len());
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.event_name().as_bytes());
        out.extend_from_slice(b"\ndata: ");
        let start = out.len();
        sensegate_ingest_proto::render_event_json(device_id, t, &mut out);
        let end = out.len();
        out.extend_from_slice(b"\n\n");
        PendingEvent {
            seq: t.seq.to_native(),
            kind,
            sse_tail: Bytes::from(out),
            json_range: start..end,
            frame,
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
