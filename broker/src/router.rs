//! The router: per-device subscriber sets, replay rings and the sequencer.
//!
//! Devices are spread over shards by hash; each shard's device map is
//! copy-on-write behind an [`ArcSwap`], so finding a device's slot takes no
//! lock. Each slot's subscriber list is copy-on-write as well: subscribe and
//! unsubscribe are rare and pay for a copy, publishing just loads a pointer.
//!
//! # Invariants
//! - **Ordering.** Assigning an event its id, appending it to the ring and
//!   pushing it into subscriber queues happen under one short sequencer lock,
//!   taken once per *batch*. So every subscriber receives events in strictly
//!   increasing id order, whatever the number of devices publishing at once,
//!   and a client's `Last-Event-ID` is an exact resume point. The lock is
//!   held only for pointer pushes into non-blocking queues; nobody ever waits
//!   on a subscriber while holding it.
//! - **Subscribing is atomic with respect to publishing.** A subscriber is
//!   added under the same lock and learns the last id published before it
//!   joined: everything at or below it comes from the rings, everything above
//!   it from the queue, with no gap and no duplicate.
//! - Rings are bounded by count per device, and all of them together by age
//!   and by memory ([`RingConfig::max_bytes`]): the sequencer keeps every
//!   retained event in one id-ordered list, so the globally oldest event is
//!   the one that goes when the budget is exceeded. Why a global bound: the
//!   per-device count alone let 1,000 busy devices hold 10 million events
//!   (~6 GiB), and growing the heap that far cost more CPU than ingest.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::access::DeviceKey;
use crate::event::{Event, EventIds, PendingEvent};
use crate::subscriber::Subscriber;

/// Replay ring bounds.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Most events kept per device.
    pub max_events: usize,
    /// Oldest event kept.
    pub max_age: Duration,
    /// Most memory all retained events may take together (their buffers and
    /// bookkeeping, see [`Event::retained_bytes`]); past it the oldest go.
    pub max_bytes: usize,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            max_events: 10_000,
            max_age: Duration::from_secs(15 * 60),
            max_bytes: 1 << 30,
        }
    }
}

/// Everything the router keeps for one device.
#[derive(Debug)]
pub struct DeviceSlot {
    /// The device.
    pub key: DeviceKey,
    subscribers: ArcSwap<Vec<Arc<Subscriber>>>,
    ring: Mutex<Ring>,
    /// Highest sequence number accepted from the device (0 = none).
    last_seq: AtomicU64,
    /// The connection currently ingesting for this device, so a new session
    /// can replace it.
    pub session: Mutex<Option<quinn::Connection>>,
}

impl DeviceSlot {
    /// Highest sequence number accepted so far.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Number of current subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.load().len()
    }
}

/// A device's retained events plus the highest id it has let go of.
#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<Arc<Event>>,
    evicted_through: u64,
}

impl Ring {
    fn evict_front(&mut self) {
        if let Some(e) = self.events.pop_front() {
            self.evicted_through = e.id;
        }
    }
}

#[derive(Default)]
struct Shard {
    slots: ArcSwap<HashMap<DeviceKey, Arc<DeviceSlot>>>,
    /// Serialises writers of `slots`; readers never take it.
    write: Mutex<()>,
}

/// Outcome of publishing one batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Events accepted (assigned an id).
    pub accepted: u64,
    /// Events dropped as duplicates (seq not above the last accepted).
    pub duplicates: u64,
    /// Queue pushes that displaced an older event (slow consumers).
    pub overflowed: u64,
    /// Subscribers of the device that did not take an event (kind filters).
    pub filtered: u64,
}

/// What the sequencer lock protects: the id allocator and every retained
/// event in id order (for the global age and memory bounds).
struct Sequencer {
    ids: EventIds,
    retained: VecDeque<(Arc<Event>, Arc<DeviceSlot>)>,
    retained_bytes: usize,
}

/// The router. One per broker.
pub struct Router {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    sequencer: Mutex<Sequencer>,
    ring: RingConfig,
}

impl Router {
    /// A router with `shards` shards (rounded up to at least 1).
    pub fn new(shards: usize, ids: EventIds, ring: RingConfig) -> Self {
        Router {
            shards: (0..shards.max(1)).map(|_| Shard::default()).collect(),
            hasher: Default::default(),
            sequencer: Mutex::new(Sequencer {
                ids,
                retained: VecDeque::new(),
                retained_bytes: 0,
            }),
            ring,
        }
    }

    fn shard(&self, key: &DeviceKey) -> &Shard {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    /// The device's slot, if it exists.
    pub fn slot(&self, key: &DeviceKey) -> Option<Arc<DeviceSlot>> {
        self.shard(key).slots.load().get(key).cloned()
    }

    /// The device's slot, created if needed.
    pub fn slot_or_create(&self, key: &DeviceKey) -> Arc<DeviceSlot> {
        let shard = self.shard(key);
        if let Some(s) = shard.slots.load().get(key) {
            return s.clone();
        }
        let _w = shard.write.lock();
        let current = shard.slots.load_full();
        if let Some(s) = current.get(key) {
            return s.clone();
        }
        let slot = Arc::new(DeviceSlot {
            key: key.clone(),
            subscribers: ArcSwap::from_pointee(Vec::new()),
            ring: Mutex::new(Ring::default()),
            last_seq: AtomicU64::new(0),
            session: Mutex::new(None),
        });
        let mut next = HashMap::clone(&current);
        next.insert(key.clone(), slot.clone());
        shard.slots.store(Arc::new(next));
        slot
    }

    /// Accepts a batch from one device: drops duplicates, assigns ids,
    /// appends to the ring and fans out. Never waits on a subscriber.
    pub fn publish(
        &self,
        slot: &Arc<DeviceSlot>,
        batch: impl IntoIterator<Item = PendingEvent>,
    ) -> Published {
        let now = Instant::now();
        let mut out = Published::default();
        let subscribers = slot.subscribers.load();
        let mut seq = self.sequencer.lock();
        let mut ring = slot.ring.lock();
        let mut last_seq = slot.last_seq.load(Ordering::Relaxed);
        let mut accepted = Vec::new();
        for p in batch {
            if p.seq <= last_seq {
                out.duplicates += 1;
                continue;
            }
            last_seq = p.seq;
            let ev = Arc::new(p.into_event(seq.ids.next_id(), slot.key.clone(), now));
            if ring.events.len() >= self.ring.max_events {
                ring.evict_front();
            }
            if !subscribers.is_empty() {
                accepted.push(ev.clone());
            }
            seq.retained_bytes += ev.retained_bytes();
            seq.retained.push_back((ev.clone(), slot.clone()));
            ring.events.push_back(ev);
            out.accepted += 1;
        }
        // Whole batch per subscriber: one lock and one wake-up each.
        for s in subscribers.iter() {
            let pushed = s.push_batch(&accepted);
            out.filtered += pushed.filtered;
            out.overflowed += pushed.overflowed;
        }
        slot.last_seq.store(last_seq, Ordering::Release);
        // Our own ring may hold the oldest event: unlock it before evicting.
        drop(ring);
        self.evict(&mut seq, now);
        out
    }

    /// Lets go of the oldest retained events while they are too old or
    /// together take more than the memory budget. Runs under the sequencer,
    /// holding no ring lock: it takes one ring lock at a time.
    fn evict(&self, seq: &mut Sequencer, now: Instant) {
        while let Some((ev, slot)) = seq.retained.front() {
            let too_old = now.saturating_duration_since(ev.accepted_at) > self.ring.max_age;
            if !too_old && seq.retained_bytes <= self.ring.max_bytes {
                break;
            }
            {
                // Per-device rings evict in id order too, so the event is
                // either still at its ring's front or already gone (count bound).
                let mut ring = slot.ring.lock();
                if ring.events.front().is_some_and(|f| f.id == ev.id) {
                    ring.evict_front();
                }
            }
            seq.retained_bytes -= ev.retained_bytes();
            seq.retained.pop_front();
        }
    }

    /// Adds `sub` to every device in `devices`. Returns the last id published
    /// before the subscription took effect: later events arrive in the queue.
    pub fn subscribe<'a>(
        &self,
        sub: &Arc<Subscriber>,
        devices: impl IntoIterator<Item = &'a DeviceKey>,
    ) -> u64 {
        let slots: Vec<_> = devices
            .into_iter()
            .map(|d| self.slot_or_create(d))
            .collect();
        let seq = self.sequencer.lock();
        for slot in slots {
            let mut next = Vec::clone(&slot.subscribers.load());
            next.push(sub.clone());
            slot.subscribers.store(Arc::new(next));
        }
        seq.ids.last()
    }

    /// Removes `sub` from every device in `devices`.
    pub fn unsubscribe<'a>(
        &self,
        sub: &Arc<Subscriber>,
        devices: impl IntoIterator<Item = &'a DeviceKey>,
    ) {
        let _seq = self.sequencer.lock();
        for d in devices {
            if let Some(slot) = self.slot(d) {
                let current = slot.subscribers.load();
                if current.iter().any(|s| Arc::ptr_eq(s, sub)) {
                    let next: Vec<_> = current
                        .iter()
                        .filter(|s| !Arc::ptr_eq(s, sub))
                        .cloned()
                        .collect();
                    slot.subscribers.store(Arc::new(next));
                }
            }
        }
    }

    /// Events of `devices` with `after < id <= up_to`, in id order, as far as
    /// the rings still hold them, and the highest id any of those rings has
    /// already evicted, so the caller can tell whether `after` is too old.
    pub fn replay<'a>(
        &self,
        devices: impl IntoIterator<Item = &'a DeviceKey>,
        after: u64,
        up_to: u64,
    ) -> Replay {
        let mut events = Vec::new();
        let mut evicted_through = 0u64;
        for d in devices {
            let Some(slot) = self.slot(d) else { continue };
            let ring = slot.ring.lock();
            evicted_through = evicted_through.max(ring.evicted_through);
            let start = ring.events.partition_point(|e| e.id <= after);
            events.extend(
                ring.events
                    .range(start..)
                    .take_while(|e| e.id <= up_to)
                    .cloned(),
            );
        }
        events.sort_unstable_by_key(|e| e.id);
        Replay {
            events,
            evicted_through,
        }
    }

    /// The first id of this boot (see [`EventIds::boot_floor`]).
    pub fn boot_floor(&self) -> u64 {
        self.sequencer.lock().ids.boot_floor()
    }

    /// The last id handed out.
    pub fn last_id(&self) -> u64 {
        self.sequencer.lock().ids.last()
    }
}

/// Result of [`Router::replay`].
#[derive(Debug)]
pub struct Replay {
    /// The events, in id order.
    pub events: Vec<Arc<Event>>,
    /// Highest id that may have been evicted from the rings asked; an
    /// `after` below it means the client may have missed events.
    pub evicted_through: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensegate_ingest_proto::Kind;

    fn pending(seq: u64, kind: Kind) -> PendingEvent {
        PendingEvent::from_json(seq, kind, b"{}")
    }

    fn router() -> Router {
        Router::new(4, EventIds::with_epoch(1), RingConfig::default())
    }

    fn drain(s: &Subscriber) -> Vec<u64> {
        let mut out = std::collections::VecDeque::new();
        s.take(&mut out, usize::MAX);
        out.iter().map(|e| e.id).collect()
    }

    #[test]
    fn fan_out_reaches_every_subscriber_of_the_device_only() {
        let r = router();
        let a = DeviceKey::new("t", "a");
        let b = DeviceKey::new("t", "b");
        let s1 = Arc::new(Subscriber::new(16, false, true, true));
        let s2 = Arc::new(Subscriber::new(16, false, true, true));
        let s3 = Arc::new(Subscriber::new(16, false, true, true));
        r.subscribe(&s1, [&a]);
        r.subscribe(&s2, [&a, &b]);
        r.subscribe(&s3, [&b]);
        let slot_a = r.slot_or_create(&a);
        let p = r.publish(&slot_a, (1..=3).map(|s| pending(s, Kind::Reading)));
        assert_eq!(p.accepted, 3);
        assert_eq!(drain(&s1).len(), 3);
        assert_eq!(drain(&s2).len(), 3);
        assert!(drain(&s3).is_empty());
    }

    #[test]
    fn duplicates_by_seq_are_dropped() {
        let r = router();
        let a = DeviceKey::new("t", "a");
        let slot = r.slot_or_create(&a);
        r.publish(&slot, (1..=5).map(|s| pending(s, Kind::Reading)));
        let p = r.publish(&slot, (3..=7).map(|s| pending(s, Kind::Reading)));
        assert_eq!(p.accepted, 2);
        assert_eq!(p.duplicates, 3);
        assert_eq!(slot.last_seq(), 7);
    }

    #[test]
    fn anomalies_are_filtered_per_subscriber() {
        let r = router();
        let a = DeviceKey::new("t", "a");
        let with = Arc::new(Subscriber::new(16, true, true, true));
        let without = Arc::new(Subscriber::new(16, false, true, true));
        r.subscribe(&with, [&a]);
        r.subscribe(&without, [&a]);
        let slot = r.slot_or_create(&a);
        r.publish(
            &slot,
            [pending(1, Kind::Reading), pending(2, Kind::Anomaly)],
        );
        assert_eq!(drain(&with).len(), 2);
        assert_eq!(drain(&without).len(), 1);
    }

    #[test]
    fn unsubscribed_streams_receive_nothing_more() {
        let r = router();
        let a = DeviceKey::new("t", "a");
        let s = Arc::new(Subscriber::new(16, false, true, true));
        r.subscribe(&s, [&a]);
        let slot = r.slot_or_create(&a);
        r.publish(&slot, [pending(1, Kind::Reading)]);
        r.unsubscribe(&s, [&a]);
        r.publish(&slot, [pending(2, Kind::Reading)]);
        assert_eq!(drain(&s).len(), 1);
        assert_eq!(slot.subscriber_count(), 0);
    }

    #[test]
    fn subscribe_point_splits_replay_and_live_exactly() {
        let r = router();
        let a = DeviceKey::new("t", "a");
        let b = DeviceKey::new("t", "b");
        let (sa, sb) = (r.slot_or_create(&a), r.slot_or_create(&b));
        r.publish(&sa, [pending(1, Kind::Reading)]);
        r.publish(&sb, [pending(1, Kind::Reading)]);
        r.publish(&sa, [pending(2, Kind::Reading)]);
        let s = Arc::new(Subscriber::new(16, false, true, true));
        let joined_at = r.subscribe(&s, [&a, &b]);
        r.publish(&sb, [pending(2, Kind::Reading)]);
        let replay = r.replay([&a, &b], 0, joined_at);
        let replayed: Vec<u64> = replay.events.iter().map(|e| e.id).collect();
        let live = drain(&s);
        assert_eq!(replayed.len(), 3);
        assert!(replayed.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(live.len(), 1);
        assert!(live[0] > *replayed.last().unwrap());
        // Resuming after the second event replays only the third.
        let later = r.replay([&a, &b], replayed[1], joined_at);
        assert_eq!(later.events.len(), 1);
        assert_eq!(later.evicted_through, 0);
    }

    #[test]
    fn rings_are_bounded_and_report_eviction() {
        let r = Router::new(
            1,
            EventIds::with_epoch(1),
            RingConfig {
                max_events: 4,
                max_age: Duration::from_secs(60),
                ..RingConfig::default()
            },
        );
        let a = DeviceKey::new("t", "a");
        let slot = r.slot_or_create(&a);
        r.publish(&slot, (1..=10).map(|s| pending(s, Kind::Reading)));
        let all = r.replay([&a], 0, u64::MAX);
        assert_eq!(all.events.len(), 4);
        assert_eq!(all.evicted_through, all.events[0].id - 1);
    }

    #[test]
    fn the_memory_budget_lets_the_globally_oldest_events_go() {
        let one = pending(1, Kind::Reading);
        let size =
            Arc::new(one.into_event(1, DeviceKey::new("t", "x"), Instant::now())).retained_bytes();
        // Room for five events in all.
        let r = Router::new(
            4,
            EventIds::with_epoch(1),
            RingConfig {
                max_bytes: 5 * size,
                ..RingConfig::default()
            },
        );
        let (a, b) = (DeviceKey::new("t", "a"), DeviceKey::new("t", "b"));
        let (sa, sb) = (r.slot_or_create(&a), r.slot_or_create(&b));
        r.publish(&sa, (1..=3).map(|s| pending(s, Kind::Reading)));
        r.publish(&sb, (1..=3).map(|s| pending(s, Kind::Reading)));
        // Six events, room for five: a's first went, nothing of b's.
        let ra = r.replay([&a], 0, u64::MAX);
        let rb = r.replay([&b], 0, u64::MAX);
        assert_eq!((ra.events.len(), rb.events.len()), (2, 3));
        assert_eq!(ra.evicted_through, ra.events[0].id - 1);
        assert_eq!(rb.evicted_through, 0);
        r.publish(&sb, (4..=6).map(|s| pending(s, Kind::Reading)));
        let (ra, rb) = (r.replay([&a], 0, u64::MAX), r.replay([&b], 0, u64::MAX));
        assert_eq!((ra.events.len(), rb.events.len()), (0, 5));
        assert_eq!(r.sequencer.lock().retained_bytes, 5 * size);
    }

    #[test]
    fn aged_events_go_even_when_their_device_is_quiet() {
        let r = Router::new(
            4,
            EventIds::with_epoch(1),
            RingConfig {
                max_age: Duration::from_millis(1),
                ..RingConfig::default()
            },
        );
        let (a, b) = (DeviceKey::new("t", "a"), DeviceKey::new("t", "b"));
        let (sa, sb) = (r.slot_or_create(&a), r.slot_or_create(&b));
        r.publish(&sa, (1..=3).map(|s| pending(s, Kind::Reading)));
        std::thread::sleep(Duration::from_millis(5));
        // Only b publishes; a's events are past the age bound all the same.
        r.publish(&sb, [pending(1, Kind::Reading)]);
        let ra = r.replay([&a], 0, u64::MAX);
        assert!(ra.events.is_empty());
        assert!(ra.evicted_through > 0);
        assert_eq!(r.replay([&b], 0, u64::MAX).events.len(), 1);
    }

    #[test]
    fn events_past_the_count_bound_stay_counted_until_the_budget_drops_them() {
        let r = Router::new(
            1,
            EventIds::with_epoch(1),
            RingConfig {
                max_events: 2,
                ..RingConfig::default()
            },
        );
        let a = DeviceKey::new("t", "a");
        let slot = r.slot_or_create(&a);
        r.publish(&slot, (1..=4).map(|s| pending(s, Kind::Reading)));
        assert_eq!(r.replay([&a], 0, u64::MAX).events.len(), 2);
        // The list still holds all four (memory is bounded by max_bytes).
        assert_eq!(r.sequencer.lock().retained.len(), 4);
    }

    #[test]
    fn concurrent_publishers_keep_every_queue_in_id_order() {
        let r = Arc::new(router());
        let devices: Vec<_> = (0..4)
            .map(|i| DeviceKey::new("t", &format!("d{i}")))
            .collect();
        let s = Arc::new(Subscriber::new(100_000, false, true, true));
        r.subscribe(&s, devices.iter());
        let handles: Vec<_> = devices
            .iter()
            .map(|d| {
                let (r, d) = (r.clone(), d.clone());
                std::thread::spawn(move || {
                    let slot = r.slot_or_create(&d);
                    for seq in 1..=2_000 {
                        r.publish(&slot, [pending(seq, Kind::Reading)]);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let ids = drain(&s);
        assert_eq!(ids.len(), 8_000);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
