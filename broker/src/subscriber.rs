//! A subscriber's bounded queue.
//!
//! # Overflow policy
//! The queue holds at most `capacity` events (pointers). A publisher never
//! waits: when the queue is full the **oldest** event is dropped, the drop is
//! counted, and the lost id range is remembered. The egress task reports it
//! in-band as a `gap` event before the next events it delivers, so the client
//! knows exactly what it missed and can resume from the replay ring with
//! `Last-Event-ID`. With [`OverflowPolicy::Disconnect`] the stream is instead
//! closed once it has lost events. Memory per subscriber is therefore bounded by
//! `capacity` pointers plus the shared events they point to.
//!
//! # Invariants
//! - `push` never waits: a push onto a lock-free segmented queue, at most one
//!   pop of the oldest event, and one `notify_one`.
//! - Memory grows with what is queued, not with the bound: an idle stream
//!   holds no queue storage (the segmented queue allocates 31-slot blocks
//!   as events arrive and frees them as they leave).
//! - Events leave the queue in the order they entered it. All pushes for a
//!   subscriber happen under the router's sequencer lock, so there is one
//!   producer at a time and the length bound holds exactly.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::SegQueue;
use sensegate_ingest_proto::Kind;
use tokio::sync::Notify;

use crate::event::Event;

/// What a subscriber whose queue overflows gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Drop the oldest queued events and send a `gap` event naming them.
    #[default]
    DropOldest,
    /// Close the stream (after a final `gap` event) once anything was lost.
    Disconnect,
}

/// Events lost to overflow since the last report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// How many.
    pub count: u64,
    /// Lowest lost id.
    pub from_id: u64,
    /// Highest lost id.
    pub to_id: u64,
}

/// One stream's queue, shared between the router (producer) and the stream's
/// egress task (consumer).
#[derive(Debug)]
pub struct Subscriber {
    queue: SegQueue<Arc<Event>>,
    len: AtomicUsize,
    capacity: usize,
    notify: Notify,
    lost_count: AtomicU64,
    lost_from: AtomicU64,
    lost_to: AtomicU64,
    include_anomalies: AtomicBool,
    want_readings: bool,
    want_anomalies: bool,
}

impl Subscriber {
    /// A queue of `capacity` events. `want_*` are the stream's fixed `kinds`
    /// filter; `include_anomalies` is the application's live setting.
    pub fn new(
        capacity: usize,
        include_anomalies: bool,
        want_readings: bool,
        want_anomalies: bool,
    ) -> Self {
        Subscriber {
            queue: SegQueue::new(),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
            notify: Notify::new(),
            lost_count: AtomicU64::new(0),
            lost_from: AtomicU64::new(u64::MAX),
            lost_to: AtomicU64::new(0),
            include_anomalies: AtomicBool::new(include_anomalies),
            want_readings,
            want_anomalies,
        }
    }

    /// Changes the live include-anomalies setting.
    pub fn set_include_anomalies(&self, on: bool) {
        self.include_anomalies.store(on, Ordering::Relaxed);
    }

    /// Whether this subscriber takes events of `kind`.
    #[inline]
    pub fn wants(&self, kind: Kind) -> bool {
        match kind {
            Kind::Reading => self.want_readings,
            Kind::Anomaly => self.want_anomalies && self.include_anomalies.load(Ordering::Relaxed),
        }
    }

    /// Enqueues without waiting. Returns `false` if an older event had to be dropped.
    #[inline]
    pub fn push(&self, ev: Arc<Event>) -> bool {
        self.queue.push(ev);
        let mut kept = true;
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            // Full: the oldest goes (the consumer may have taken it first,
            // in which case there is room after all).
            if let Some(old) = self.pop() {
                self.lost_count.fetch_add(1, Ordering::Relaxed);
                self.lost_from.fetch_min(old.id, Ordering::Relaxed);
                self.lost_to.fetch_max(old.id, Ordering::Relaxed);
                kept = false;
            }
        }
        self.notify.notify_one();
        kept
    }

    /// Takes the next queued event.
    #[inline]
    pub fn pop(&self) -> Option<Arc<Event>> {
        let ev = self.queue.pop()?;
        self.len.fetch_sub(1, Ordering::AcqRel);
        Some(ev)
    }

    /// Events currently queued.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the loss report, if anything was lost since the last call.
    pub fn take_lost(&self) -> Option<Lost> {
        let count = self.lost_count.swap(0, Ordering::Relaxed);
        if count == 0 {
            return None;
        }
        let from_id = self.lost_from.swap(u64::MAX, Ordering::Relaxed);
        let to_id = self.lost_to.swap(0, Ordering::Relaxed);
        Some(Lost {
            count,
            from_id,
            to_id,
        })
    }

    /// Resolves when something was pushed since the last call (or now).
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Wakes the consumer without an event (control changes).
    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::DeviceKey;

    fn event(id: u64, kind: Kind) -> Arc<Event> {
        Arc::new(
            crate::event::PendingEvent::from_json(1, kind, b"{}").into_event(
                id,
                DeviceKey::new("t", "d"),
                std::time::Instant::now(),
            ),
        )
    }

    #[test]
    fn overflow_drops_oldest_and_reports_the_range() {
        let s = Subscriber::new(3, true, true, true);
        for id in 1..=5 {
            s.push(event(id, Kind::Reading));
        }
        assert_eq!(
            s.take_lost(),
            Some(Lost {
                count: 2,
                from_id: 1,
                to_id: 2
            })
        );
        assert_eq!(s.take_lost(), None);
        let ids: Vec<u64> = std::iter::from_fn(|| s.pop()).map(|e| e.id).collect();
        assert_eq!(ids, [3, 4, 5]);
    }

    #[test]
    fn anomalies_follow_the_live_setting_and_the_kinds_filter() {
        let s = Subscriber::new(4, false, true, true);
        assert!(s.wants(Kind::Reading));
        assert!(!s.wants(Kind::Anomaly));
        s.set_include_anomalies(true);
        assert!(s.wants(Kind::Anomaly));
        let only_anomalies = Subscriber::new(4, true, false, true);
        assert!(!only_anomalies.wants(Kind::Reading));
    }
}
