//! The transport-neutral core of one stream: its subscriber queue, replay,
//! live permission changes, token expiry and loss reports.
//!
//! [`Session::next_batch`] waits until there is something to say and then
//! hands the transport a batch of [`Item`]s; SSE turns a batch into one body
//! chunk, WebSocket into messages flushed once.
//!
//! `next_batch` is cancel-safe: items are only moved into the caller's vector
//! synchronously, after the last await, so a transport may `select!` on it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use sensegate_ingest_proto::Kind;
use serde_json::json;
use tokio::time::Instant;

use crate::access::{AccessTable, DeviceKey};
use crate::event::Event;
use crate::subscriber::{OverflowPolicy, Subscriber};
use crate::token::Claims;
use crate::{now_ms, Shared};

/// How often a stream records its sampled metrics (delivery latency, queue
/// depth, last delivery time).
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Most events handed over in one batch: bounds the chunk size (~64 KiB at
/// ~250-byte events) and the time one stream holds a worker.
pub(crate) const MAX_BATCH: usize = 256;

/// One thing to tell the client.
#[derive(Debug)]
pub(crate) enum Item {
    /// A telemetry or anomaly event.
    Event(Arc<Event>),
    /// A control record (`gap`, `permissions`, `revoked`, `token-expired`).
    Control {
        event: &'static str,
        data: serde_json::Value,
    },
    /// Nothing happened for a heartbeat interval.
    KeepAlive,
}

/// Why a stream ends (the last item of the batch already says so in-band).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The access token reached `exp`.
    TokenExpired,
    /// The application may no longer stream.
    Revoked,
    /// The queue overflowed and the policy is to disconnect.
    SlowConsumer,
}

/// Where a client asked to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResumeFrom {
    Live,
    After(u64),
    Malformed,
}

/// Events queued before a permission change that the change took away:
/// skipped while draining up to `through`, then forgotten.
struct Purge {
    through: u64,
    devices: HashSet<DeviceKey>,
    anomalies: bool,
}

/// What a stream was opened with.
pub(crate) struct Opened {
    pub(crate) claims: Claims,
    pub(crate) devices: HashSet<DeviceKey>,
    pub(crate) filter: Option<HashSet<DeviceKey>>,
    pub(crate) include_anomalies: bool,
    pub(crate) want_readings: bool,
    pub(crate) want_anomalies: bool,
    pub(crate) resume: ResumeFrom,
    pub(crate) now_ms: i64,
    /// When the application expires (its streams end then, unprompted).
    pub(crate) app_expires_at_ms: i64,
    /// Held for the stream's lifetime (per-application stream count).
    pub(crate) permit: super::StreamPermit,
}

/// One stream's state; dropping it unsubscribes.
pub(crate) struct Session {
    shared: Arc<Shared>,
    sub: Arc<Subscriber>,
    /// Events taken from the queue and not yet handed out (at most one
    /// [`MAX_BATCH`]; see [`Subscriber::take`]).
    taken: VecDeque<Arc<Event>>,
    claims: Claims,
    devices: HashSet<DeviceKey>,
    filter: Option<HashSet<DeviceKey>>,
    pending: VecDeque<Item>,
    deadline: Instant,
    app_expiry: Instant,
    versions: tokio::sync::watch::Receiver<u64>,
    purge: Option<Purge>,
    ended: Option<End>,
    /// When latency, queue depth and last delivery were last recorded.
    sampled_at: Instant,
    transport: &'static str,
    gauge: prometheus::IntGauge,
    app_metrics: crate::metrics::AppMetrics,
    _permit: super::StreamPermit,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared
            .router
            .unsubscribe(&self.sub, self.devices.iter());
        self.gauge.dec();
        self.app_metrics.streams.dec();
        let reason = match self.ended {
            None => "client went away",
            Some(End::TokenExpired) => "token expired",
            Some(End::Revoked) => "revoked",
            Some(End::SlowConsumer) => "slow consumer",
        };
        tracing::info!(client_id = %self.claims.sub, transport = self.transport, reason, "stream closed");
    }
}

impl Session {
    /// Subscribes and prepares the replay; the caller has authorised `o`.
    pub(crate) fn open(shared: Arc<Shared>, o: Opened, transport: &'static str) -> Session {
        let sub = Arc::new(Subscriber::new(
            shared.cfg.subscriber_queue,
            o.include_anomalies,
            o.want_readings,
            o.want_anomalies,
        ));
        // Watch for table changes from before the subscription on, so none is missed.
        let versions = shared.access_version.subscribe();
        let gauge = shared.metrics.subscribers(transport);
        let app_metrics = shared.metrics.app(&o.claims.sub);
        let ttl_ms = u64::try_from(o.claims.exp * 1000 - o.now_ms).unwrap_or(0);
        let joined_at = shared.router.subscribe(&sub, o.devices.iter());
        // From here on the subscription is owned by the session, whose Drop
        // undoes it whatever happens next.
        gauge.inc();
        app_metrics.streams.inc();
        let mut session = Session {
            deadline: Instant::now() + Duration::from_millis(ttl_ms),
            app_expiry: instant_at(o.app_expires_at_ms),
            shared,
            sub,
            taken: VecDeque::new(),
            claims: o.claims,
            devices: o.devices,
            filter: o.filter,
            pending: VecDeque::new(),
            versions,
            purge: None,
            ended: None,
            sampled_at: Instant::now() - SAMPLE_EVERY,
            transport,
            gauge,
            app_metrics,
            _permit: o.permit,
        };
        session.replay(o.resume, joined_at);
        tracing::info!(
            client_id = %session.claims.sub,
            transport,
            devices = session.devices.len(),
            resume = ?o.resume,
            "stream opened"
        );
        session
    }

    /// Queues what a resuming client missed (or says why it cannot).
    fn replay(&mut self, resume: ResumeFrom, joined_at: u64) {
        let shared = &self.shared;
        match resume {
            ResumeFrom::Live => {}
            ResumeFrom::Malformed => {
                self.pending
                    .push_back(gap("malformed-last-event-id", None, joined_at));
                shared.metrics.gaps_sent.inc();
            }
            ResumeFrom::After(after) => {
                let r = shared.router.replay(self.devices.iter(), after, joined_at);
                // A resume point from the future (another broker), from an
                // earlier boot, or older than the rings cannot be replayed
                // exactly: say so before anything else.
                let unknown = after > joined_at;
                let evicted = r.evicted_through > after
                    || after.saturating_add(1) < shared.router.boot_floor();
                if unknown || evicted {
                    let reason = if unknown {
                        "unknown-last-event-id"
                    } else {
                        "replay-evicted"
                    };
                    self.pending
                        .push_back(gap(reason, Some(after), r.evicted_through.max(after)));
                    shared.metrics.gaps_sent.inc();
                }
                let sub = &self.sub;
                self.pending.extend(
                    r.events
                        .into_iter()
                        .filter(|e| sub.wants(e.kind))
                        .map(Item::Event),
                );
            }
        }
    }

    /// The silence after which the stream gets a keep-alive.
    pub(crate) fn heartbeat(&self) -> Duration {
        self.shared.cfg.heartbeat
    }

    /// Whether nothing is waiting to be sent.
    pub(crate) fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.taken.is_empty() && self.sub.is_empty()
    }

    /// Waits for something to say, then moves it into `out`. Returns
    /// `Some(end)` once the stream is over (its final items are in `out`);
    /// every later call returns the same.
    pub(crate) async fn next_batch(
        &mut self,
        out: &mut Vec<Item>,
        heartbeat: Option<Duration>,
    ) -> Option<End> {
        if let Some(end) = self.ended {
            return Some(end);
        }
        loop {
            let now = Instant::now();
            // Tokens never outlive their application: a token ending with
            // it (to the second) ends because the application expired.
            if now >= self.app_expiry
                || (now >= self.deadline
                    && self.app_expiry <= self.deadline + Duration::from_secs(1))
            {
                return self.end(out, End::Revoked, "application expired");
            }
            if now >= self.deadline {
                return self.end(out, End::TokenExpired, "access token expired");
            }
            if let Some(end) = self.fill(out) {
                return Some(end);
            }
            if !out.is_empty() {
                return None;
            }
            // One timer for whichever comes first: the heartbeat or the end
            // of the token or application (an idle stream's task stays small).
            let ends = self.deadline.min(self.app_expiry);
            let wake = heartbeat.map_or(ends, |h| ends.min(now + h));
            tokio::select! {
                _ = self.sub.ready() => {}
                _ = tokio::time::sleep_until(wake) => {
                    if wake < ends {
                        out.push(Item::KeepAlive);
                        return None;
                    }
                }
                changed = self.versions.changed() => {
                    if changed.is_err() {
                        return self.end(out, End::Revoked, "broker shutting down");
                    }
                    let table = self.shared.access.load_full();
                    if let Err(why) = self.apply(&table) {
                        return self.end(out, End::Revoked, &why);
                    }
                }
            }
        }
    }

    /// Moves pending, then queued, events (and any loss report) into `out`.
    fn fill(&mut self, out: &mut Vec<Item>) -> Option<End> {
        let mut n = 0;
        while n < MAX_BATCH {
            let Some(item) = self.pending.pop_front() else {
                break;
            };
            out.push(item);
            n += 1;
        }
        let mut depth = None;
        if self.taken.is_empty() && n < MAX_BATCH {
            // Only when everything taken before is out: a loss report then
            // precedes exactly the events that followed the loss.
            if self.taken.capacity() > 2 * MAX_BATCH {
                self.taken = VecDeque::new();
            }
            let taken = self.sub.take(&mut self.taken, MAX_BATCH);
            depth = Some(taken.depth);
            if let Some(lost) = taken.lost {
                self.app_metrics.dropped.inc_by(lost.count);
                out.push(gap(
                    "slow-consumer",
                    Some(lost.from_id.saturating_sub(1)),
                    lost.to_id,
                ));
                self.shared.metrics.gaps_sent.inc();
                if self.shared.cfg.overflow == OverflowPolicy::Disconnect {
                    self.ended = Some(End::SlowConsumer);
                    return self.ended;
                }
            }
        }
        let mut oldest = None;
        let mut delivered = 0u64;
        while n < MAX_BATCH {
            let Some(ev) = self.taken.pop_front() else {
                break;
            };
            if self.purged(&ev) {
                continue;
            }
            oldest.get_or_insert(ev.accepted_at);
            out.push(Item::Event(ev));
            n += 1;
            delivered += 1;
        }
        if let Some(t) = oldest {
            self.shared.metrics.events_delivered.inc_by(delivered);
            self.app_metrics.delivered.inc_by(delivered);
            // Histograms and the wall clock cost far more than a counter:
            // sample them at most every SAMPLE_EVERY per stream, which is
            // plenty for scrape-interval dashboards.
            let now = Instant::now();
            if now.duration_since(self.sampled_at) >= SAMPLE_EVERY {
                self.sampled_at = now;
                let metrics = &self.shared.metrics;
                metrics
                    .delivery_latency
                    .observe(now.duration_since(t.into()).as_secs_f64());
                if let Some(depth) = depth {
                    metrics.queue_depth.observe(depth as f64);
                }
                self.app_metrics.last_delivery.set(now_ms() as f64 / 1000.0);
            }
        }
        None
    }

    fn purged(&mut self, ev: &Event) -> bool {
        let Some(p) = &self.purge else { return false };
        if ev.id > p.through {
            self.purge = None;
            return false;
        }
        p.devices.contains(&ev.device) || (p.anomalies && ev.kind == Kind::Anomaly)
    }

    /// Re-resolves the stream against a new table. `Err` means revoked.
    fn apply(&mut self, table: &AccessTable) -> Result<(), String> {
        let Some(app) = table.apps.get(&self.claims.app) else {
            return Err("application deleted".into());
        };
        if let Some(why) = app.refusal(now_ms()) {
            return Err(why.into());
        }
        if app.entry.secret_generation != self.claims.sgen {
            return Err("client secret rotated".into());
        }
        self.app_expiry = instant_at(app.entry.expires_at_ms);
        let next: HashSet<DeviceKey> = match &self.filter {
            Some(f) => f.intersection(&app.devices).cloned().collect(),
            None => app.devices.clone(),
        };
        let anomalies_before = self.sub.wants(Kind::Anomaly);
        self.sub.set_include_anomalies(app.entry.include_anomalies);
        let anomalies_now = self.sub.wants(Kind::Anomaly);
        let removed: HashSet<DeviceKey> = self.devices.difference(&next).cloned().collect();
        let added: Vec<DeviceKey> = next.difference(&self.devices).cloned().collect();
        if removed.is_empty() && added.is_empty() && anomalies_before == anomalies_now {
            return Ok(());
        }
        self.shared.router.unsubscribe(&self.sub, removed.iter());
        self.shared.router.subscribe(&self.sub, added.iter());
        if !removed.is_empty() || (anomalies_before && !anomalies_now) {
            self.pending.retain(|item| match item {
                Item::Event(e) => {
                    !removed.contains(&e.device) && (anomalies_now || e.kind != Kind::Anomaly)
                }
                _ => true,
            });
            self.purge = Some(Purge {
                through: self.shared.router.last_id(),
                devices: removed,
                anomalies: !anomalies_now,
            });
        }
        self.devices = next;
        let mut ids: Vec<&str> = self.devices.iter().map(|d| &*d.id).collect();
        ids.sort_unstable();
        self.pending.push_back(Item::Control {
            event: "permissions",
            data: json!({ "devices": ids, "includeAnomalies": app.entry.include_anomalies }),
        });
        Ok(())
    }

    fn end(&mut self, out: &mut Vec<Item>, end: End, reason: &str) -> Option<End> {
        self.ended = Some(end);
        let event = match end {
            End::TokenExpired => "token-expired",
            End::Revoked | End::SlowConsumer => "revoked",
        };
        out.push(Item::Control {
            event,
            data: json!({ "reason": reason }),
        });
        Some(end)
    }
}

/// The monotonic instant of a wall-clock time (ms since the epoch), capped a
/// year ahead so the timer arithmetic cannot overflow.
fn instant_at(at_ms: i64) -> Instant {
    let in_ms = at_ms.saturating_sub(now_ms()).clamp(0, 365 * 86_400_000);
    Instant::now() + Duration::from_millis(in_ms as u64)
}

/// A `gap` control item.
fn gap(reason: &str, after: Option<u64>, through: u64) -> Item {
    Item::Control {
        event: "gap",
        data: json!({
            "reason": reason,
            "lastEventId": after.map(|a| a.to_string()),
            "missedThrough": through.to_string(),
        }),
    }
}
