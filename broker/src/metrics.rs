//! The broker's Prometheus metrics.
//!
//! Every labelled child used on a hot path is resolved once here, so
//! recording is a single atomic add: no lookup, lock or allocation per event.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Handles to every broker metric.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders (the admin registers into it too).
    pub registry: Registry,
    /// QUIC sessions currently authenticated.
    pub devices_connected: IntGauge,
    sessions: IntCounterVec,
    /// Telemetry frames accepted.
    pub frames_accepted: IntCounter,
    /// Payload bytes of accepted frames.
    pub bytes_accepted: IntCounter,
    frames_rejected: IntCounterVec,
    /// Events dropped as duplicates of an already accepted `(device, seq)`.
    pub duplicates: IntCounter,
    subscribers: IntGaugeVec,
    /// Events written to streams.
    pub events_delivered: IntCounter,
    /// Events lost to a full subscriber queue.
    pub dropped_slow_consumer: IntCounter,
    /// `gap` events sent.
    pub gaps_sent: IntCounter,
    /// Time from acceptance at ingest to the write of the batch holding it.
    pub delivery_latency: Histogram,
    stream_refusals: IntCounterVec,
    /// 1 while following the admin's feed (separate processes), else 0.
    pub feed_connected: IntGauge,
    /// Feed (re)connection attempts.
    pub feed_reconnects: IntCounter,
    /// Versions the broker is behind the admin, as of the last heartbeat.
    pub feed_lag: IntGauge,
    /// Version of the permission table in force.
    pub feed_version: IntGauge,
    /// Time to compile and swap in a new permission table.
    pub feed_reload_seconds: Histogram,
}

impl Metrics {
    /// Creates and registers the metrics in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            devices_connected: IntGauge::new(
                "sensegate_ingest_devices_connected",
                "Devices with an authenticated QUIC session",
            )
            .expect("valid metric"),
            sessions: IntCounterVec::new(
                Opts::new(
                    "sensegate_ingest_sessions_total",
                    "QUIC device sessions by outcome",
                ),
                &["result"],
            )
            .expect("valid metric"),
            frames_accepted: IntCounter::new(
                "sensegate_ingest_frames_total",
                "Telemetry frames accepted",
            )
            .expect("valid metric"),
            bytes_accepted: IntCounter::new(
                "sensegate_ingest_bytes_total",
                "Payload bytes of accepted telemetry frames",
            )
            .expect("valid metric"),
            frames_rejected: IntCounterVec::new(
                Opts::new(
                    "sensegate_ingest_frames_rejected_total",
                    "Frames rejected, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            duplicates: IntCounter::new(
                "sensegate_ingest_duplicates_total",
                "Events dropped as duplicates by (device, seq)",
            )
            .expect("valid metric"),
            subscribers: IntGaugeVec::new(
                Opts::new(
                    "sensegate_stream_subscribers",
                    "Open telemetry streams by transport",
                ),
                &["transport"],
            )
            .expect("valid metric"),
            events_delivered: IntCounter::new(
                "sensegate_stream_events_delivered_total",
                "Events written to telemetry streams",
            )
            .expect("valid metric"),
            dropped_slow_consumer: IntCounter::new(
                "sensegate_stream_events_dropped_slow_consumer_total",
                "Events dropped because a subscriber's queue was full",
            )
            .expect("valid metric"),
            gaps_sent: IntCounter::new("sensegate_stream_gaps_total", "gap events sent to streams")
                .expect("valid metric"),
            delivery_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "sensegate_delivery_latency_seconds",
                    "Ingest acceptance to stream write, per written batch",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ]),
            )
            .expect("valid metric"),
            stream_refusals: IntCounterVec::new(
                Opts::new(
                    "sensegate_stream_refusals_total",
                    "Stream requests refused, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            feed_connected: IntGauge::new(
                "sensegate_feed_connected",
                "1 while the broker follows the admin's permission feed",
            )
            .expect("valid metric"),
            feed_reconnects: IntCounter::new(
                "sensegate_feed_reconnects_total",
                "Permission feed (re)connection attempts",
            )
            .expect("valid metric"),
            feed_lag: IntGauge::new(
                "sensegate_feed_lag_versions",
                "Permission versions the broker is behind the admin",
            )
            .expect("valid metric"),
            feed_version: IntGauge::new(
                "sensegate_feed_version",
                "Version of the permission table in force",
            )
            .expect("valid metric"),
            feed_reload_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "sensegate_feed_reload_seconds",
                    "Time to compile and swap in a permission table",
                )
                .buckets(vec![0.0001, 0.001, 0.01, 0.1, 1.0]),
            )
            .expect("valid metric"),
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 17] = [
            Box::new(m.devices_connected.clone()),
            Box::new(m.sessions.clone()),
            Box::new(m.frames_accepted.clone()),
            Box::new(m.bytes_accepted.clone()),
            Box::new(m.frames_rejected.clone()),
            Box::new(m.duplicates.clone()),
            Box::new(m.subscribers.clone()),
            Box::new(m.events_delivered.clone()),
            Box::new(m.dropped_slow_consumer.clone()),
            Box::new(m.gaps_sent.clone()),
            Box::new(m.delivery_latency.clone()),
            Box::new(m.stream_refusals.clone()),
            Box::new(m.feed_connected.clone()),
            Box::new(m.feed_reconnects.clone()),
            Box::new(m.feed_lag.clone()),
            Box::new(m.feed_version.clone()),
            Box::new(m.feed_reload_seconds.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// Counts a session outcome (`accepted`, `unauthorized`, …; a fixed set).
    pub fn session(&self, result: &'static str) {
        self.sessions.with_label_values(&[result]).inc();
    }

    /// Counts a rejected frame (reason from a fixed set).
    pub fn frame_rejected(&self, reason: &'static str) {
        self.frames_rejected.with_label_values(&[reason]).inc();
    }

    /// The open-streams gauge for a transport (`sse` or `ws`).
    pub fn subscribers(&self, transport: &'static str) -> IntGauge {
        self.subscribers.with_label_values(&[transport])
    }

    /// Counts a refused stream request.
    pub fn stream_refused(&self, reason: &'static str) {
        self.stream_refusals.with_label_values(&[reason]).inc();
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
