//! Micro-benchmarks of the hot path: frame encode and validate, event JSON
//! rendering, router fan-out and SSE chunk assembly. Token issuance and
//! verification are in `benches/tokens.rs`.
//!
//! `cargo bench --bench hot_path` (add `-- --quick` for a short run).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sensegate_broker::access::DeviceKey;
use sensegate_broker::chunk;
use sensegate_broker::event::{Event, EventIds, PendingEvent};
use sensegate_broker::router::{RingConfig, Router};
use sensegate_broker::subscriber::Subscriber;
use sensegate_ingest_proto::{
    encode_frame, validate_telemetry, Kind, Reading, Telemetry, FRAME_HEADER_LEN,
};

fn sample(seq: u64) -> Telemetry {
    Telemetry {
        seq,
        ts_ms: 1_386_018_900_000,
        kind: Kind::Reading,
        readings: vec![
            Reading {
                name: "temperature".into(),
                value: 73.967_322_07,
            },
            Reading {
                name: "vibration".into(),
                value: 0.213,
            },
        ],
    }
}

fn frame(seq: u64) -> Bytes {
    let mut buf = Vec::new();
    encode_frame(&sample(seq), &mut buf);
    Bytes::from(buf).slice(FRAME_HEADER_LEN..)
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let event = sample(1);
    let mut buf = Vec::with_capacity(256);
    g.bench_function("encode_frame", |b| {
        b.iter(|| {
            buf.clear();
            encode_frame(&event, &mut buf);
        })
    });
    let payload = frame(1);
    g.bench_function("validate_telemetry", |b| {
        b.iter(|| validate_telemetry(&payload).unwrap().seq)
    });
    g.bench_function("render_event", |b| {
        b.iter(|| {
            let t = validate_telemetry(&payload).unwrap();
            PendingEvent::render("machine-1", t, &payload)
        })
    });
    g.finish();
}

/// Events per publish call in the fan-out benches (one ingest read's worth).
const BATCH: u64 = 64;

fn pendings(payload: &Bytes, first_seq: u64) -> Vec<PendingEvent> {
    let t = validate_telemetry(payload).unwrap();
    (0..BATCH)
        .map(|i| {
            let mut p = PendingEvent::render("machine-1", t, payload);
            p.seq = first_seq + i;
            p
        })
        .collect()
}

/// The consumer's side of a delivery, as a stream does it: take what is
/// queued into the stream's own deque (swapped, so both keep their storage),
/// hand the events out (here: drop them).
fn drain(s: &Subscriber, local: &mut VecDeque<Arc<Event>>) {
    s.take(local, usize::MAX);
    local.clear();
}

/// A router with `subs` subscribers of one device, and that device's slot.
fn one_device(
    subs: usize,
) -> (
    Router,
    Vec<Arc<Subscriber>>,
    Arc<sensegate_broker::router::DeviceSlot>,
) {
    let router = Router::new(64, EventIds::with_epoch(1), RingConfig::default());
    let device = DeviceKey::new("t", "machine-1");
    let subscribers: Vec<Arc<Subscriber>> = (0..subs)
        .map(|_| Arc::new(Subscriber::new(1024, true, true, true)))
        .collect();
    for s in &subscribers {
        router.subscribe(s, [&device]);
    }
    let slot = router.slot_or_create(&device);
    (router, subscribers, slot)
}

fn fan_out(c: &mut Criterion) {
    let payload = frame(1);
    let mut g = c.benchmark_group("router_publish_one_device");
    for subs in [1usize, 100, 10_000] {
        let (router, subscribers, slot) = one_device(subs);
        let mut locals: Vec<VecDeque<Arc<Event>>> =
            subscribers.iter().map(|_| VecDeque::new()).collect();
        let mut seq = 1;
        // Deliveries per iteration: BATCH events to every subscriber, and
        // every subscriber drains its queue (the consumer's pop is part of
        // the per-subscriber cost).
        g.throughput(Throughput::Elements(BATCH * subs as u64));
        g.bench_function(format!("{subs}_subscribers"), |b| {
            b.iter_batched(
                || {
                    let p = pendings(&payload, seq);
                    seq += BATCH;
                    p
                },
                |batch| {
                    router.publish(&slot, batch);
                    for (s, local) in subscribers.iter().zip(locals.iter_mut()) {
                        drain(s, local);
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("router_publish_many_devices");
    let devices = 10_000usize;
    let router = Router::new(64, EventIds::with_epoch(1), RingConfig::default());
    let keys: Vec<DeviceKey> = (0..devices)
        .map(|i| DeviceKey::new("t", &format!("d{i}")))
        .collect();
    let subscribers: Vec<Arc<Subscriber>> = keys
        .iter()
        .map(|k| {
            let s = Arc::new(Subscriber::new(1024, true, true, true));
            router.subscribe(&s, [k]);
            s
        })
        .collect();
    let mut locals: Vec<VecDeque<Arc<Event>>> =
        subscribers.iter().map(|_| VecDeque::new()).collect();
    let slots: Vec<_> = keys.iter().map(|k| router.slot_or_create(k)).collect();
    let t = validate_telemetry(&payload).unwrap();
    let mut seq = 1;
    g.throughput(Throughput::Elements(devices as u64));
    g.bench_function("10000_devices_1_subscriber_each", |b| {
        b.iter(|| {
            for slot in &slots {
                let mut p = PendingEvent::render("d", t, &payload);
                p.seq = seq;
                router.publish(slot, [p]);
            }
            seq += 1;
            for (s, local) in subscribers.iter().zip(locals.iter_mut()) {
                drain(s, local);
            }
        })
    });
    g.finish();
}

/// The same fan-out as `router_publish_one_device/100_subscribers`, plus
/// every metric the ingest and egress paths record for it: per frame the
/// byte counter, per batch the ingest counters, per subscriber batch the
/// delivery counters, latency and queue-depth histograms and the
/// per-application series. The difference to the plain run is the cost of
/// the metrics.
fn fan_out_with_metrics(c: &mut Criterion) {
    let payload = frame(1);
    let metrics = sensegate_broker::metrics::Metrics::new();
    let app = metrics.app("sgc_bench");
    let mut g = c.benchmark_group("router_publish_one_device_with_metrics");
    let subs = 100usize;
    let (router, subscribers, slot) = one_device(subs);
    let mut locals: Vec<VecDeque<Arc<Event>>> =
        subscribers.iter().map(|_| VecDeque::new()).collect();
    let mut seq = 1;
    let mut sampled_at = std::time::Instant::now();
    g.throughput(Throughput::Elements(BATCH * subs as u64));
    g.bench_function(format!("{subs}_subscribers"), |b| {
        b.iter_batched(
            || {
                let p = pendings(&payload, seq);
                seq += BATCH;
                p
            },
            |batch| {
                for _ in 0..BATCH {
                    metrics.bytes_accepted.inc_by(payload.len() as u64);
                }
                let p = router.publish(&slot, batch);
                metrics.frames_accepted.inc_by(p.accepted);
                metrics.duplicates.inc_by(p.duplicates);
                metrics.dropped_slow_consumer.inc_by(p.overflowed);
                metrics.dropped_filtered.inc_by(p.filtered);
                for (s, local) in subscribers.iter().zip(locals.iter_mut()) {
                    let depth = s.take(local, usize::MAX).depth;
                    let n = local.len() as u64;
                    let oldest = local.front().map(|ev| ev.accepted_at);
                    local.clear();
                    if let Some(t) = oldest {
                        metrics.events_delivered.inc_by(n);
                        app.delivered.inc_by(n);
                        // Streams sample the histograms and the wall clock
                        // at most every 100 ms: here, one clock read per batch.
                        let now = std::time::Instant::now();
                        if now.duration_since(sampled_at) >= std::time::Duration::from_millis(100) {
                            sampled_at = now;
                            metrics
                                .delivery_latency
                                .observe(now.duration_since(t).as_secs_f64());
                            metrics.queue_depth.observe(depth as f64);
                            app.last_delivery.set(1.0);
                        }
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// One stream's batch framed as an HTTP chunk for one `writev`, as the
/// direct HTTP/1.1 path does it: a slice per pre-rendered record, no copy.
/// Per event this is the whole per-subscriber egress work before the kernel.
fn sse_chunk(c: &mut Criterion) {
    let payload = frame(1);
    let (router, subscribers, slot) = one_device(1);
    router.publish(&slot, pendings(&payload, 1));
    let mut batch = VecDeque::new();
    subscribers[0].take(&mut batch, usize::MAX);
    assert_eq!(batch.len() as u64, BATCH);
    let mut g = c.benchmark_group("sse_chunk");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function(format!("gather_{BATCH}_events"), |b| {
        b.iter(|| {
            // As in the stream: the slice list is built per batch.
            let mut size = [0u8; chunk::SIZE_LINE_MAX];
            let mut slices = Vec::with_capacity(batch.len() + 2);
            chunk::gather(batch.iter().map(|ev| ev.sse()), &mut size, &mut slices);
            slices.len()
        })
    });
    g.finish();
}

criterion_group!(benches, codec, fan_out, fan_out_with_metrics, sse_chunk);
criterion_main!(benches);
