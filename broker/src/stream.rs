//! `GET /v1/stream/telemetry`: Server-Sent Events egress.
//!
//! Each stream owns one [`Subscriber`] queue and one egress future (the
//! response body). The body drains the queue in batches and yields **one
//! chunk per batch**, so the cost per event per subscriber is a pointer pop
//! and a memcpy of the pre-rendered record into the batch.
//!
//! # What a client sees
//! - At once: `200`, `Content-Type: text/event-stream`, `Cache-Control:
//!   no-cache`, `X-Accel-Buffering: no`, then `: connected` and `retry:`.
//! - `event: telemetry` / `event: anomaly` records with `id:` = event id.
//! - `event: gap` when events could not be delivered (slow consumer, or a
//!   `Last-Event-ID` older than the replay rings or malformed).
//! - `event: permissions` when the application's device set or anomaly
//!   setting changed while the stream was open.
//! - `event: revoked` (then close) when the application was disabled,
//!   deleted, expired or its secret rotated.
//! - `event: token-expired` (then close) at the token's `exp`.
//! - `: keep-alive` comments after `heartbeat` of silence.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::time::Instant;

use crate::access::{AccessTable, DeviceKey};
use crate::event::Event;
use crate::subscriber::{OverflowPolicy, Subscriber};
use crate::token::{self, Claims};
use crate::{now_ms, Shared};

/// Most events written in one chunk: bounds the chunk size (~64 KiB at
/// ~250-byte events) and the time one stream holds a worker.
const MAX_BATCH: usize = 256;

/// Query parameters of the stream endpoint.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamParams {
    /// Token for clients that cannot set headers (EventSource).
    access_token: Option<String>,
    /// Comma-separated subset of the permitted devices.
    devices: Option<String>,
    /// Comma-separated subset of `telemetry,anomaly`.
    kinds: Option<String>,
    /// Resume point for clients that cannot send `Last-Event-ID`.
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

/// A JSON error response with the given status.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "error_description": message });
    (status, axum::Json(body)).into_response()
}

fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, "invalid_token", message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    r
}

/// The bearer token from the `Authorization` header (scheme is
/// case-insensitive) or, failing that, the `access_token` parameter.
fn bearer<'a>(headers: &'a HeaderMap, params: &'a StreamParams) -> Option<&'a str> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    params.access_token.as_deref().filter(|t| !t.is_empty())
}

/// Where a client asked to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResumeFrom {
    Live,
    After(u64),
    Malformed,
}

fn resume_from(headers: &HeaderMap, params: &StreamParams) -> ResumeFrom {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(params.last_event_id.as_deref());
    match raw.map(str::trim) {
        None | Some("") => ResumeFrom::Live,
        Some(s) => s.parse().map_or(ResumeFrom::Malformed, ResumeFrom::After),
    }
}

/// The handler.
pub(crate) async fn stream_telemetry(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<StreamParams>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = bearer(&headers, &params) else {
        shared.metrics.stream_refused("missing_token");
        return unauthorized("a bearer access token is required");
    };
    let table = shared.access.load_full();
    let now = now_ms();
    let (claims, app) = match token::verify(token, &shared.cfg.issuer, &table, now) {
        Ok(ok) => ok,
        Err(e) => {
            shared.metrics.stream_refused(e.reason());
            return unauthorized(&e.to_string());
        }
    };
    let filter = match params.devices.as_deref() {
        None => None,
        Some(list) => {
            let wanted: HashSet<DeviceKey> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|id| DeviceKey::new(&app.entry.tenant, id))
                .collect();
            if let Some(denied) = wanted.iter().find(|d| !app.devices.contains(*d)) {
                shared.metrics.stream_refused("device_forbidden");
                return error(
                    StatusCode::FORBIDDEN,
                    "forbidden_device",
                    &format!("this application may not stream device {:?}", &*denied.id),
                );
            }
            Some(wanted)
        }
    };
    let (want_readings, want_anomalies) = match params.kinds.as_deref() {
        None => (true, true),
        Some(list) => {
            let mut kinds = (false, false);
            for k in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match k {
                    "telemetry" | "reading" => kinds.0 = true,
                    "anomaly" => kinds.1 = true,
                    other => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "invalid_request",
                            &format!("unknown kind {other:?}: use telemetry and/or anomaly"),
                        )
                    }
                }
            }
            kinds
        }
    };
    let resume = resume_from(&headers, &params);
    let sub = Arc::new(Subscriber::new(
        shared.cfg.subscriber_queue,
        app.entry.include_anomalies,
        want_readings,
        want_anomalies,
    ));
    let devices: HashSet<DeviceKey> = match &filter {
        Some(f) => f.clone(),
        None => app.devices.clone(),
    };
    let joined_at = shared.router.subscribe(&sub, devices.iter());
    let mut first = BytesMut::with_capacity(256);
    first.put_slice(b": connected\nretry: 2000\n\n");
    let replay = match resume {
        ResumeFrom::Live => Vec::new(),
        ResumeFrom::Malformed => {
            write_gap(&mut first, "malformed-last-event-id", None, joined_at);
            shared.metrics.gaps_sent.inc();
            Vec::new()
        }
        ResumeFrom::After(after) => {
            let r = shared.router.replay(devices.iter(), after, joined_at);
            // A resume point from an earlier boot, or one the rings no longer
            // reach, cannot be replayed exactly: say so before anything else.
            let unknown = after > joined_at;
            let evicted = r.evicted_through > after || after + 1 < shared.router.boot_floor();
            if unknown || evicted {
                let reason = if unknown {
                    "unknown-last-event-id"
                } else {
                    "replay-evicted"
                };
                write_gap(
                    &mut first,
                    reason,
                    Some(after),
                    r.evicted_through.max(after),
                );
                shared.metrics.gaps_sent.inc();
            }
            r.events.into_iter().filter(|e| sub.wants(e.kind)).collect()
        }
    };
    let gauge = shared.metrics.subscribers("sse");
    gauge.inc();
    let deadline =
        Instant::now() + Duration::from_millis(u64::try_from(claims.exp * 1000 - now).unwrap_or(0));
    let egress = Egress {
        versions: shared.access_version.subscribe(),
        shared: shared.clone(),
        sub,
        claims,
        devices,
        filter,
        replay: replay.into(),
        first: Some(first),
        deadline,
        purge: None,
        done: false,
        gauge,
    };
    let body = Body::from_stream(futures_util::stream::unfold(egress, |mut e| async move {
        e.next_chunk().await.map(|c| (Ok::<_, Infallible>(c), e))
    }));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Writes an `event: gap` record.
fn write_gap(out: &mut BytesMut, reason: &str, after: Option<u64>, through: u64) {
    let data = serde_json::json!({
        "reason": reason,
        "lastEventId": after.map(|a| a.to_string()),
        "missedThrough": through.to_string(),
    });
    out.put_slice(b"event: gap\ndata: ");
    out.put_slice(data.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

fn write_event(out: &mut BytesMut, ev: &Event) {
    let mut id = itoa::Buffer::new();
    out.put_slice(b"id: ");
    out.put_slice(id.format(ev.id).as_bytes());
    out.put_u8(b'\n');
    out.put_slice(&ev.sse_tail);
}

fn write_control(out: &mut BytesMut, event: &str, data: &serde_json::Value) {
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

/// Events queued before a permission change that the change took away:
/// skipped while draining up to `through`, then forgotten.
struct Purge {
    through: u64,
    devices: HashSet<DeviceKey>,
    anomalies: bool,
}

/// One stream's egress state; dropping it unsubscribes.
struct Egress {
    shared: Arc<Shared>,
    sub: Arc<Subscriber>,
    claims: Claims,
    devices: HashSet<DeviceKey>,
    filter: Option<HashSet<DeviceKey>>,
    replay: std::collections::VecDeque<Arc<Event>>,
    first: Option<BytesMut>,
    deadline: Instant,
    versions: tokio::sync::watch::Receiver<u64>,
    purge: Option<Purge>,
    done: bool,
    gauge: prometheus::IntGauge,
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.shared
            .router
            .unsubscribe(&self.sub, self.devices.iter());
        self.gauge.dec();
    }
}

impl Egress {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let heartbeat = self.shared.cfg.heartbeat;
        let mut out = self.first.take().unwrap_or_default();
        loop {
            if Instant::now() >= self.deadline {
                return Some(self.finish(out, "token-expired", "access token expired"));
            }
            self.fill(&mut out);
            if self.done {
                return Some(out.freeze());
            }
            if !out.is_empty() {
                return Some(out.freeze());
            }
            tokio::select! {
                _ = self.sub.ready() => {}
                _ = tokio::time::sleep(heartbeat) => {
                    out.put_slice(b": keep-alive\n\n");
                }
                _ = tokio::time::sleep_until(self.deadline) => {}
                changed = self.versions.changed() => {
                    if changed.is_err() {
                        return Some(self.finish(out, "revoked", "broker shutting down"));
                    }
                    let table = self.shared.access.load_full();
                    if let Err(why) = self.apply(&table, &mut out) {
                        return Some(self.finish(out, "revoked", &why));
                    }
                }
            }
        }
    }

    /// Moves replayed and queued events (and any loss report) into `out`.
    fn fill(&mut self, out: &mut BytesMut) {
        let mut n = 0;
        while n < MAX_BATCH {
            let Some(ev) = self.replay.pop_front() else {
                break;
            };
            write_event(out, &ev);
            n += 1;
        }
        if let Some(lost) = self.sub.take_lost() {
            write_gap(
                out,
                "slow-consumer",
                Some(lost.from_id.saturating_sub(1)),
                lost.to_id,
            );
            self.shared.metrics.gaps_sent.inc();
            if self.shared.cfg.overflow == OverflowPolicy::Disconnect {
                self.done = true;
                return;
            }
        }
        let mut oldest = None;
        while n < MAX_BATCH {
            let Some(ev) = self.sub.pop() else { break };
            if self.purged(&ev) {
                continue;
            }
            oldest.get_or_insert(ev.accepted_at);
            write_event(out, &ev);
            n += 1;
        }
        if let Some(t) = oldest {
            self.shared
                .metrics
                .delivery_latency
                .observe(t.elapsed().as_secs_f64());
        }
        self.shared.metrics.events_delivered.inc_by(n as u64);
    }

    fn purged(&mut self, ev: &Event) -> bool {
        let Some(p) = &self.purge else { return false };
        if ev.id > p.through {
            self.purge = None;
            return false;
        }
        p.devices.contains(&ev.device)
            || (p.anomalies && ev.kind == sensegate_ingest_proto::Kind::Anomaly)
    }

    /// Re-resolves the stream against a new table. `Err` means revoked.
    fn apply(&mut self, table: &AccessTable, out: &mut BytesMut) -> Result<(), String> {
        let Some(app) = table.apps.get(&self.claims.app) else {
            return Err("application deleted".into());
        };
        if let Some(why) = app.refusal(now_ms()) {
            return Err(why.into());
        }
        if app.entry.secret_generation != self.claims.sgen {
            return Err("client secret rotated".into());
        }
        let next: HashSet<DeviceKey> = match &self.filter {
            Some(f) => f.intersection(&app.devices).cloned().collect(),
            None => app.devices.clone(),
        };
        let anomalies_before = self.sub.wants(sensegate_ingest_proto::Kind::Anomaly);
        self.sub.set_include_anomalies(app.entry.include_anomalies);
        let anomalies_now = self.sub.wants(sensegate_ingest_proto::Kind::Anomaly);
        let removed: HashSet<DeviceKey> = self.devices.difference(&next).cloned().collect();
        let added: Vec<DeviceKey> = next.difference(&self.devices).cloned().collect();
        if removed.is_empty() && added.is_empty() && anomalies_before == anomalies_now {
            return Ok(());
        }
        self.shared.router.unsubscribe(&self.sub, removed.iter());
        self.shared.router.subscribe(&self.sub, added.iter());
        if !removed.is_empty() || (anomalies_before && !anomalies_now) {
            self.replay.retain(|e| !removed.contains(&e.device));
            self.purge = Some(Purge {
                through: self.shared.router.last_id(),
                devices: removed,
                anomalies: !anomalies_now,
            });
        }
        self.devices = next;
        let mut ids: Vec<&str> = self.devices.iter().map(|d| &*d.id).collect();
        ids.sort_unstable();
        write_control(
            out,
            "permissions",
            &serde_json::json!({ "devices": ids, "includeAnomalies": app.entry.include_anomalies }),
        );
        Ok(())
    }

    fn finish(&mut self, mut out: BytesMut, event: &str, reason: &str) -> Bytes {
        self.done = true;
        write_control(&mut out, event, &serde_json::json!({ "reason": reason }));
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_comes_from_the_header_first_then_the_query() {
        let mut h = HeaderMap::new();
        let q = StreamParams {
            access_token: Some("q".into()),
            ..Default::default()
        };
        assert_eq!(bearer(&h, &q), Some("q"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bEaReR abc"),
        );
        assert_eq!(bearer(&h, &q), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h, &q), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h, &q), None);
    }

    #[test]
    fn resume_points_parse_or_are_flagged() {
        let mut h = HeaderMap::new();
        let q = StreamParams::default();
        assert_eq!(resume_from(&h, &q), ResumeFrom::Live);
        h.insert("last-event-id", HeaderValue::from_static("42"));
        assert_eq!(resume_from(&h, &q), ResumeFrom::After(42));
        h.insert("last-event-id", HeaderValue::from_static("x1"));
        assert_eq!(resume_from(&h, &q), ResumeFrom::Malformed);
        let q = StreamParams {
            last_event_id: Some("7".into()),
            ..Default::default()
        };
        assert_eq!(resume_from(&HeaderMap::new(), &q), ResumeFrom::After(7));
    }
}
