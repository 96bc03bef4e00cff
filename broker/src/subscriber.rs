//! A subscriber's bounded queue.
//!
//! # Overflow policy
//! The queue holds at most `capacity` events (pointers). A publisher never
//! waits for the consumer to make room: when the queue is full the **oldest**
//! event is dropped, the drop is counted, and the lost id range is remembered.
//! The egress task reports it in-band as a `gap` event before the next events
//! it delivers, so the client knows exactly what it missed and can resume
//! from the replay ring with `Last-Event-ID`. With [`OverflowPolicy::Disconnect`]
//! the stream is instead closed once it has lost events. Memory per
//! subscriber is therefore bounded by `capacity` pointers (plus the at most
//! one batch its egress task holds) and the shared events they point to.
//!
//! # Why a short lock and whole batches
//! The router hands a subscriber a whole ingest batch at once
//! ([`Subscriber::push_batch`]): one lock, one pointer copy per event, one
//! wake-up. The egress task takes everything queued with one lock and an
//! O(1) swap of the deque ([`Subscriber::take`]). Both critical sections are
//! bounded pointer moves, never I/O, never a wait for the consumer to make
//! progress. This replaced a lock-free segmented queue whose per-event push
//! and pop (several contended atomics each, plus one `notify` per event)
//! cost more than the rest of the fan-out per delivery.
//!
//! # Invariants
//! - `push_batch` never waits for the consumer: at most `capacity` pointers
//!   are kept, the oldest give way.
//! - Memory grows with what is queued, not with the bound: an idle stream
//!   holds no queue storage beyond what its last batch needed.
//! - Events leave the queue in the order they entered it. All pushes for a
//!   subscriber happen under the router's sequencer lock, so batches arrive
//!   in id order.
//! - A loss report is taken together with the events queued after the loss,
//!   so the `gap` precedes exactly the events that followed it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
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
    queue: Mutex<Queue>,
    capacity: usize,
    notify: Notify,
    include_anomalies: AtomicBool,
    want_readings: bool,
    want_anomalies: bool,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Arc<Event>>,
    lost: Option<Lost>,
}

/// What [`Subscriber::push_batch`] did with a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// Events the subscriber's kind filters refused.
    pub filtered: u64,
    /// Older events dropped to make room (slow consumer).
    pub overflowed: u64,
}

/// What [`Subscriber::take`] handed over besides the events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Events lost to overflow since the last take, if any.
    pub lost: Option<Lost>,
    /// Events that were queued at the take (the queue-depth metric).
    pub depth: usize,
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
            queue: Mutex::new(Queue::default()),
            capacity: capacity.max(1),
            notify: Notify::new(),
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

    /// Enqueues the events of `batch` this subscriber wants, in order,
    /// without waiting for the consumer, and wakes it once.
    pub fn push_batch(&self, batch: &[Arc<Event>]) -> Pushed {
        let (readings, anomalies) = (self.wants(Kind::Reading), self.wants(Kind::Anomaly));
        let mut out = Pushed::default();
        let mut pushed = false;
        {
            let mut q = self.queue.lock();
            for ev in batch {
                let wanted = match ev.kind {
                    Kind::Reading => readings,
                    Kind::Anomaly => anomalies,
                };
                if !wanted {
                    out.filtered += 1;
                    continue;
                }
                if q.events.len() >= self.capacity {
                    if let Some(old) = q.events.pop_front() {
                        out.overflowed += 1;
                        let lost = q.lost.get_or_insert(Lost {
                            count: 0,
                            from_id: old.id,
                            to_id: old.id,
                        });
                        lost.count += 1;
                        lost.to_id = old.id;
                    }
                }
                q.events.push_back(ev.clone());
                pushed = true;
            }
        }
        if pushed {
            self.notify.notify_one();
        }
        out
    }

    /// Moves up to `max` of the oldest queued events to the back of `out`
    /// and takes the loss report. When everything queued fits and `out` is
    /// empty the two deques are swapped, so the lock is held for O(1).
    pub fn take(&self, out: &mut VecDeque<Arc<Event>>, max: usize) -> Taken {
        let mut q = self.queue.lock();
        let depth = q.events.len();
        if depth <= max && out.is_empty() {
            std::mem::swap(&mut q.events, out);
        } else {
            out.extend(q.events.drain(..depth.min(max)));
        }
        Taken {
            lost: q.lost.take(),
            depth,
        }
    }

    /// Events currently queued.
    pub fn len(&self) -> usize {
        self.queue.lock().events.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    fn ids(q: &VecDeque<Arc<Event>>) -> Vec<u64> {
        q.iter().map(|e| e.id).collect()
    }

    #[test]
    fn overflow_drops_oldest_and_reports_the_range() {
        let s = Subscriber::new(3, true, true, true);
        let batch: Vec<_> = (1..=5).map(|id| event(id, Kind::Reading)).collect();
        assert_eq!(
            s.push_batch(&batch),
            Pushed {
                filtered: 0,
                overflowed: 2
            }
        );
        let mut out = VecDeque::new();
        let taken = s.take(&mut out, 256);
        assert_eq!(
            taken.lost,
            Some(Lost {
                count: 2,
                from_id: 1,
                to_id: 2
            })
        );
        assert_eq!(taken.depth, 3);
        assert_eq!(ids(&out), [3, 4, 5]);
        assert_eq!(s.take(&mut VecDeque::new(), 256).lost, None);
    }

    #[test]
    fn take_moves_at_most_max_in_order_and_keeps_the_rest() {
        let s = Subscriber::new(100, true, true, true);
        let batch: Vec<_> = (1..=10).map(|id| event(id, Kind::Reading)).collect();
        s.push_batch(&batch[..4]);
        s.push_batch(&batch[4..]);
        let mut out = VecDeque::new();
        s.take(&mut out, 3);
        assert_eq!(ids(&out), [1, 2, 3]);
        // `out` is not empty: appended, not swapped.
        s.take(&mut out, 3);
        assert_eq!(ids(&out), [1, 2, 3, 4, 5, 6]);
        out.clear();
        let taken = s.take(&mut out, 256);
        assert_eq!(taken.depth, 4);
        assert_eq!(ids(&out), [7, 8, 9, 10]);
        assert!(s.is_empty());
    }

    #[test]
    fn anomalies_follow_the_live_setting_and_the_kinds_filter() {
        let s = Subscriber::new(4, false, true, true);
        assert!(s.wants(Kind::Reading));
        assert!(!s.wants(Kind::Anomaly));
        let batch = [event(1, Kind::Reading), event(2, Kind::Anomaly)];
        assert_eq!(s.push_batch(&batch).filtered, 1);
        s.set_include_anomalies(true);
        assert!(s.wants(Kind::Anomaly));
        assert_eq!(s.push_batch(&batch).filtered, 0);
        let mut out = VecDeque::new();
        s.take(&mut out, 256);
        assert_eq!(ids(&out), [1, 1, 2]);
        let only_anomalies = Subscriber::new(4, true, false, true);
        assert!(!only_anomalies.wants(Kind::Reading));
    }
}
