//! The broker's Prometheus metrics.
//!
//! Every labelled child used on a hot path is resolved once here, so
//! recording is a single atomic add: no lookup, lock or allocation per event.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

/// The `reason` values of `sensegate_ingest_frames_rejected_total`.
pub const FRAME_REJECT_REASONS: [&str; 6] = [
    "too_long",
    "empty",
    "invalid_archive",
    "zero_seq",
    "bad_timestamp",
    "bad_value",
];

/// The `result` values of `sensegate_ingest_sessions_total`.
pub const SESSION_RESULTS: [&str; 5] = [
    "accepted",
    "unauthorized",
    "malformed",
    "unsupported_version",
    "timeout",
];

/// The `reason` values of `sensegate_stream_refusals_total`.
pub const STREAM_REFUSAL_REASONS: [&str; 11] = [
    "missing_token",
    "two_tokens",
    "invalid",
    "unknown_key",
    "app_deleted",
    "app_expired",
    "app_disabled",
    "secret_rotated",
    "secret_not_yet_known",
    "device_forbidden",
    "too_many_streams",
];

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
    /// Events of a subscribed device a stream did not take (kind filter,
    /// include-anomalies off).
    pub dropped_filtered: IntCounter,
    /// Events queued for a stream when its egress wakes up.
    pub queue_depth: Histogram,
    /// From the start of processing a read to its acknowledgement being written.
    pub ack_latency: Histogram,
    app_streams: IntGaugeVec,
    app_delivered: IntCounterVec,
    app_dropped: IntCounterVec,
    app_last_delivery: GaugeVec,
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
    /// 1 when `/readyz` would answer 200, re-evaluated every few seconds.
    pub ready: IntGauge,
    /// Time to compile and swap in a new permission table.
    pub feed_reload_seconds: Histogram,
}

impl Metrics {
    /// Creates and registers the metrics in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let dropped = IntCounterVec::new(
            Opts::new(
                "sensegate_stream_events_dropped_total",
                "Events not delivered to a stream, by reason (slow_consumer, filtered)",
            ),
            &["reason"],
        )
        .expect("valid metric");
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
            dropped_slow_consumer: dropped.with_label_values(&["slow_consumer"]),
            dropped_filtered: dropped.with_label_values(&["filtered"]),
            queue_depth: Histogram::with_opts(
                HistogramOpts::new(
                    "sensegate_stream_queue_depth_events",
                    "Events waiting in a stream's queue when its egress wakes up",
                )
                .buckets(vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0]),
            )
            .expect("valid metric"),
            ack_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "sensegate_ingest_ack_latency_seconds",
                    "From processing a device's read to writing its cumulative acknowledgement",
                )
                .buckets(vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025, 0.1,
                ]),
            )
            .expect("valid metric"),
            app_streams: IntGaugeVec::new(
                Opts::new(
                    "sensegate_app_streams_open",
                    "Open streams per external application",
                ),
                &["client_id"],
            )
            .expect("valid metric"),
            app_delivered: IntCounterVec::new(
                Opts::new(
                    "sensegate_app_events_delivered_total",
                    "Events delivered per external application",
                ),
                &["client_id"],
            )
            .expect("valid metric"),
            app_dropped: IntCounterVec::new(
                Opts::new(
                    "sensegate_app_events_dropped_total",
                    "Events lost to slow consumption per external application",
                ),
                &["client_id"],
            )
            .expect("valid metric"),
            app_last_delivery: GaugeVec::new(
                Opts::new(
                    "sensegate_app_last_delivery_timestamp_seconds",
                    "Unix time of the last delivery to each external application",
                ),
                &["client_id"],
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
            ready: IntGauge::new(
                "sensegate_ready",
                "1 when every readiness check passes (see /readyz), else 0",
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
        let build_info = IntGaugeVec::new(
            Opts::new(
                "sensegate_build_info",
                "Build information (value is always 1)",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Every series of a fixed label set exists from the start, so a
        // dashboard or alert sees 0 rather than nothing.
        for reason in FRAME_REJECT_REASONS {
            m.frames_rejected.with_label_values(&[reason]);
        }
        for result in SESSION_RESULTS {
            m.sessions.with_label_values(&[result]);
        }
        for transport in ["sse", "ws"] {
            m.subscribers.with_label_values(&[transport]);
        }
        for reason in STREAM_REFUSAL_REASONS {
            m.stream_refusals.with_label_values(&[reason]);
        }
        let collectors: [Box<dyn prometheus::core::Collector>; 26] = [
            Box::new(m.ready.clone()),
            Box::new(dropped),
            Box::new(m.queue_depth.clone()),
            Box::new(m.ack_latency.clone()),
            Box::new(m.app_streams.clone()),
            Box::new(m.app_delivered.clone()),
            Box::new(m.app_dropped.clone()),
            Box::new(m.app_last_delivery.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
            Box::new(m.devices_connected.clone()),
            Box::new(m.sessions.clone()),
            Box::new(m.frames_accepted.clone()),
            Box::new(m.bytes_accepted.clone()),
            Box::new(m.frames_rejected.clone()),
            Box::new(m.duplicates.clone()),
            Box::new(m.subscribers.clone()),
            Box::new(m.events_delivered.clone()),
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

    /// The per-application series of one application (resolved once per stream).
    pub fn app(&self, client_id: &str) -> AppMetrics {
        AppMetrics {
            streams: self.app_streams.with_label_values(&[client_id]),
            delivered: self.app_delivered.with_label_values(&[client_id]),
            dropped: self.app_dropped.with_label_values(&[client_id]),
            last_delivery: self.app_last_delivery.with_label_values(&[client_id]),
        }
    }

    /// Drops an application's series (it was deleted).
    pub fn forget_app(&self, client_id: &str) {
        let _ = self.app_streams.remove_label_values(&[client_id]);
        let _ = self.app_delivered.remove_label_values(&[client_id]);
        let _ = self.app_dropped.remove_label_values(&[client_id]);
        let _ = self.app_last_delivery.remove_label_values(&[client_id]);
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// One application's series: "is this integration healthy?".
#[derive(Clone)]
pub struct AppMetrics {
    /// Open streams.
    pub streams: IntGauge,
    /// Events delivered.
    pub delivered: IntCounter,
    /// Events lost to slow consumption.
    pub dropped: IntCounter,
    /// Unix time of the last delivery.
    pub last_delivery: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
