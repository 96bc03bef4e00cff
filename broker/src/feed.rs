//! The permission feed across processes.
//!
//! In one process the admin installs snapshots straight into the broker. When
//! they run apart, the admin installs them into a [`FeedHub`] instead, which
//! serves them at `GET /internal/v1/feed` (protected by a cluster key) as
//! newline-delimited JSON [`FeedMessage`]s, and each broker runs
//! [`follow`] against it.
//!
//! # Guarantees
//! - A follower first gets a full snapshot, then ordered deltas, each naming
//!   the version it applies to (`fromVersion`); it never applies a delta to a
//!   table it does not have.
//! - After a disconnect the follower resumes with `?after=<its version>`: the
//!   hub answers with the deltas since then if it still holds them (the last
//!   [`DELTA_HISTORY`]), otherwise with a fresh snapshot.
//! - While the admin is unreachable the broker keeps serving with the last
//!   table it had (metrics `sensegate_feed_connected` = 0 and `/readyz` say
//!   so) and retries with capped exponential backoff.
//! - The hub sends a heartbeat line every [`HEARTBEAT`]; a follower that hears
//!   nothing for [`SILENCE_LIMIT`] reconnects, so a half-open connection
//!   cannot freeze permissions.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::access::{
    AccessSink, ApplicationEntry, DeviceEntry, GroupEntry, Snapshot, SnapshotError, VerificationKey,
};

/// Deltas the hub keeps for resuming followers.
pub const DELTA_HISTORY: usize = 1024;
/// How often the hub says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Silence after which a follower gives up on a connection.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(15);

/// One line of the feed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum FeedMessage {
    /// Everything, at one version.
    Snapshot(Snapshot),
    /// What changed from one version to the next.
    Delta(Delta),
    /// Nothing changed; the hub is at `version`.
    Heartbeat {
        /// The hub's current version.
        version: u64,
    },
}

/// The difference between two snapshots.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Delta {
    /// The version this delta applies to.
    pub from_version: u64,
    /// The version it produces.
    pub version: u64,
    /// The full key list, when it changed.
    pub verification_keys: Option<Vec<VerificationKey>>,
    /// Devices added or changed.
    pub upsert_devices: Vec<DeviceEntry>,
    /// Devices removed, as `[tenant, id]`.
    pub remove_devices: Vec<(String, String)>,
    /// Groups added or changed.
    pub upsert_groups: Vec<GroupEntry>,
    /// Groups removed, as `[tenant, id]`.
    pub remove_groups: Vec<(String, String)>,
    /// Applications added or changed.
    pub upsert_applications: Vec<ApplicationEntry>,
    /// Applications removed, as `[tenant, id]`.
    pub remove_applications: Vec<(String, String)>,
}

/// Why a delta could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("delta from version {delta_from} does not apply to version {have}")]
pub struct DeltaMismatch {
    /// The follower's version.
    pub have: u64,
    /// The delta's base.
    pub delta_from: u64,
}

/// Upserts and removals between two keyed lists.
fn diff_entries<T: Clone + PartialEq>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> (String, String),
) -> (Vec<T>, Vec<(String, String)>) {
    let before: HashMap<(String, String), &T> = old.iter().map(|e| (key(e), e)).collect();
    let after: HashMap<(String, String), &T> = new.iter().map(|e| (key(e), e)).collect();
    let upserts = new
        .iter()
        .filter(|e| before.get(&key(e)) != Some(e))
        .cloned()
        .collect();
    let removals = old
        .iter()
        .map(&key)
        .filter(|k| !after.contains_key(k))
        .collect();
    (upserts, removals)
}

fn apply_entries<T>(
    list: &mut Vec<T>,
    upserts: &[T],
    removals: &[(String, String)],
    key: impl Fn(&T) -> (String, String),
) where
    T: Clone,
{
    let mut index: HashMap<(String, String), usize> =
        list.iter().enumerate().map(|(i, e)| (key(e), i)).collect();
    for u in upserts {
        match index.get(&key(u)) {
            Some(&i) => list[i] = u.clone(),
            None => {
                index.insert(key(u), list.len());
                list.push(u.clone());
            }
        }
    }
    if !removals.is_empty() {
        let gone: std::collections::HashSet<&(String, String)> = removals.iter().collect();
        list.retain(|e| !gone.contains(&key(e)));
    }
}

fn device_key(d: &DeviceEntry) -> (String, String) {
    (d.tenant.clone(), d.id.clone())
}
fn group_key(g: &GroupEntry) -> (String, String) {
    (g.tenant.clone(), g.id.clone())
}
fn app_key(a: &ApplicationEntry) -> (String, String) {
    (a.tenant.clone(), a.id.clone())
}

impl Delta {
    /// What turns `old` into `new`.
    pub fn between(old: &Snapshot, new: &Snapshot) -> Delta {
        let (upsert_devices, remove_devices) = diff_entries(&old.devices, &new.devices, device_key);
        let (upsert_groups, remove_groups) = diff_entries(&old.groups, &new.groups, group_key);
        let (upsert_applications, remove_applications) =
            diff_entries(&old.applications, &new.applications, app_key);
        Delta {
            from_version: old.version,
            version: new.version,
            verification_keys: (old.verification_keys != new.verification_keys)
                .then(|| new.verification_keys.clone()),
            upsert_devices,
            remove_devices,
            upsert_groups,
            remove_groups,
            upsert_applications,
            remove_applications,
        }
    }

    /// Applies the delta to `s` (which must be at `from_version`).
    pub fn apply_to(&self, s: &mut Snapshot) -> Result<(), DeltaMismatch> {
        if s.version != self.from_version {
            return Err(DeltaMismatch {
                have: s.version,
                delta_from: self.from_version,
            });
        }
        if let Some(keys) = &self.verification_keys {
            s.verification_keys = keys.clone();
        }
        apply_entries(
            &mut s.devices,
            &self.upsert_devices,
            &self.remove_devices,
            device_key,
        );
        apply_entries(
            &mut s.groups,
            &self.upsert_groups,
            &self.remove_groups,
            group_key,
        );
        apply_entries(
            &mut s.applications,
            &self.upsert_applications,
            &self.remove_applications,
            app_key,
        );
        s.version = self.version;
        Ok(())
    }
}

/// A rendered feed line, shared by every connected follower.
type Line = Arc<Bytes>;

fn line(msg: &FeedMessage) -> Bytes {
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

#[derive(Default)]
struct HubState {
    current: Option<Arc<Snapshot>>,
    deltas: VecDeque<(u64, Line)>,
}

/// The admin side of the feed: an [`AccessSink`] that keeps the current
/// snapshot and recent deltas and streams them to followers. It can also
/// pass every snapshot on to a broker in the same process.
pub struct FeedHub {
    state: Mutex<HubState>,
    tx: broadcast::Sender<(u64, Line)>,
    local: Option<Arc<dyn AccessSink>>,
}

impl FeedHub {
    /// A hub; `local` also receives every snapshot (e.g. an in-process broker).
    pub fn new(local: Option<Arc<dyn AccessSink>>) -> Arc<Self> {
        Arc::new(FeedHub {
            state: Mutex::new(HubState::default()),
            tx: broadcast::channel(256).0,
            local,
        })
    }

    /// `GET /internal/v1/feed`, for brokers presenting `cluster_key`.
    pub fn routes(self: &Arc<Self>, cluster_key: &str) -> axum::Router {
        let state = Arc::new(HubRoute {
            hub: self.clone(),
            key_sha256: Sha256::digest(cluster_key.as_bytes()).into(),
        });
        axum::Router::new()
            .route("/internal/v1/feed", axum::routing::get(serve_feed))
            .with_state(state)
    }

    /// What a follower at `after` must be sent first, and the version it
    /// will be at afterwards.
    fn catch_up(&self, after: Option<u64>) -> (Vec<Line>, u64) {
        let state = self.state.lock();
        let Some(current) = &state.current else {
            return (Vec::new(), 0);
        };
        if after == Some(current.version) {
            return (Vec::new(), current.version);
        }
        if let Some(after) = after {
            let first = state.deltas.iter().position(|(v, _)| *v == after + 1);
            if let Some(first) = first {
                let lines = state
                    .deltas
                    .iter()
                    .skip(first)
                    .map(|(_, l)| l.clone())
                    .collect();
                return (lines, current.version);
            }
        }
        let snapshot = FeedMessage::Snapshot(Snapshot::clone(current));
        (vec![Arc::new(line(&snapshot))], current.version)
    }
}

impl AccessSink for FeedHub {
    fn install(&self, snapshot: Snapshot) -> Result<(), SnapshotError> {
        // Validate before anyone else sees it.
        crate::access::AccessTable::compile(&snapshot)?;
        if let Some(local) = &self.local {
            local.install(snapshot.clone())?;
        }
        let mut state = self.state.lock();
        let version = snapshot.version;
        if state.current.as_ref().is_some_and(|c| c.version >= version) {
            return Ok(());
        }
        let message = match &state.current {
            Some(old) => FeedMessage::Delta(Delta::between(old, &snapshot)),
            None => FeedMessage::Snapshot(snapshot.clone()),
        };
        let rendered: Line = Arc::new(line(&message));
        if matches!(message, FeedMessage::Delta(_)) {
            if state.deltas.len() == DELTA_HISTORY {
                state.deltas.pop_front();
            }
            state.deltas.push_back((version, rendered.clone()));
        } else {
            state.deltas.clear();
        }
        state.current = Some(Arc::new(snapshot));
        // Sent under the lock so followers see versions in order.
        let _ = self.tx.send((version, rendered));
        Ok(())
    }
}

struct HubRoute {
    hub: Arc<FeedHub>,
    key_sha256: [u8; 32],
}

#[derive(Debug, Deserialize)]
struct FeedParams {
    after: Option<u64>,
}

async fn serve_feed(
    State(route): State<Arc<HubRoute>>,
    Query(params): Query<FeedParams>,
    headers: HeaderMap,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|k| <[u8; 32]>::from(Sha256::digest(k.as_bytes())));
    if presented != Some(route.key_sha256) {
        let body = serde_json::json!({"error": "unauthorized", "message": "a valid cluster key is required"});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    // Subscribe before catching up so nothing falls in between.
    let rx = route.hub.tx.subscribe();
    let (first, version) = route.hub.catch_up(params.after);
    let follower = Follower {
        hub: route.hub.clone(),
        rx,
        version,
        pending: first.iter().map(|l| Bytes::clone(l)).collect(),
    };
    let stream = futures_util::stream::unfold(follower, |mut f| async move {
        let next = f.next_line().await?;
        Some((Ok::<_, Infallible>(next), f))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// One connected follower's position in the feed.
struct Follower {
    hub: Arc<FeedHub>,
    rx: broadcast::Receiver<(u64, Line)>,
    version: u64,
    pending: VecDeque<Bytes>,
}

impl Follower {
    /// The next line to send: catch-up first, then live changes, a
    /// heartbeat after [`HEARTBEAT`] of quiet; `None` when the hub is gone.
    async fn next_line(&mut self) -> Option<Bytes> {
        if let Some(b) = self.pending.pop_front() {
            return Some(b);
        }
        loop {
            match tokio::time::timeout(HEARTBEAT, self.rx.recv()).await {
                Ok(Ok((v, l))) if v > self.version => {
                    self.version = v;
                    return Some(Bytes::clone(&l));
                }
                Ok(Ok(_)) => continue,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    // Too far behind for deltas: start over from a snapshot.
                    let (lines, v) = self.hub.catch_up(None);
                    self.version = v;
                    self.pending = lines.iter().map(|l| Bytes::clone(l)).collect();
                    if let Some(b) = self.pending.pop_front() {
                        return Some(b);
                    }
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Err(_) => {
                    return Some(line(&FeedMessage::Heartbeat {
                        version: self.version,
                    }))
                }
            }
        }
    }
}

/// Backoff between reconnects: doubles from the first to the last value.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// Follows the admin's feed at `admin_url` forever, installing what it
/// receives into `broker`. A refused cluster key is logged and retried at
/// the longest backoff, so fixing the key on either side heals the link.
pub async fn follow(broker: crate::Broker, admin_url: String, cluster_key: String) {
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot build the feed client");
            return;
        }
    };
    let url = format!("{}/internal/v1/feed", admin_url.trim_end_matches('/'));
    let metrics = broker.metrics().clone();
    let mut current: Option<Snapshot> = None;
    let mut backoff = BACKOFF.0;
    loop {
        let after = current.as_ref().map(|s| s.version);
        let mut req = client.get(&url).bearer_auth(&cluster_key);
        if let Some(v) = after {
            req = req.query(&[("after", v)]);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                info!(url = %url, after = ?after, "following the admin's permission feed");
                metrics.feed_connected.set(1);
                backoff = BACKOFF.0;
                let ended = read_feed(resp, &broker, &mut current).await;
                metrics.feed_connected.set(0);
                warn!(reason = %ended, "permission feed disconnected; serving the last table");
            }
            Ok(resp) if resp.status() == reqwest::StatusCode::UNAUTHORIZED => {
                warn!(url = %url, "the admin refused the cluster key");
                backoff = BACKOFF.1;
            }
            Ok(resp) => warn!(url = %url, status = %resp.status(), "unexpected feed response"),
            Err(e) => warn!(url = %url, error = %e, "admin unreachable; serving the last table"),
        }
        metrics.feed_reconnects.inc();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// Reads feed lines until the connection ends; returns why it ended.
async fn read_feed(
    resp: reqwest::Response,
    broker: &crate::Broker,
    current: &mut Option<Snapshot>,
) -> String {
    use futures_util::StreamExt as _;
    let metrics = broker.metrics();
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(SILENCE_LIMIT, body.next()).await {
            Err(_) => return format!("no heartbeat for {SILENCE_LIMIT:?}"),
            Ok(None) => return "stream ended".into(),
            Ok(Some(Err(e))) => return e.to_string(),
            Ok(Some(Ok(c))) => c,
        };
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let msg: Result<FeedMessage, _> = serde_json::from_slice(&buf[..nl]);
            buf.drain(..=nl);
            let started = std::time::Instant::now();
            let next = match msg {
                Ok(FeedMessage::Snapshot(s)) => s,
                Ok(FeedMessage::Delta(d)) => {
                    let Some(mut s) = current.clone() else {
                        *current = None;
                        return "delta before any snapshot".into();
                    };
                    if let Err(e) = d.apply_to(&mut s) {
                        // Start over from a snapshot.
                        *current = None;
                        return e.to_string();
                    }
                    s
                }
                Ok(FeedMessage::Heartbeat { version }) => {
                    let have = current.as_ref().map_or(0, |s| s.version);
                    metrics.feed_lag.set(version.saturating_sub(have) as i64);
                    continue;
                }
                Err(e) => return format!("malformed feed line: {e}"),
            };
            let version = next.version;
            if let Err(e) = broker.install(next.clone()) {
                *current = None;
                return format!("snapshot {version} refused: {e}");
            }
            metrics
                .feed_reload_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.feed_lag.set(0);
            *current = Some(next);
        }
        if buf.len() > 64 * 1024 * 1024 {
            return "feed line too long".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, enabled: bool) -> DeviceEntry {
        DeviceEntry {
            tenant: "t".into(),
            id: id.into(),
            key_sha256: format!("{:064x}", id.len()),
            enabled,
        }
    }

    fn snapshot(version: u64, devices: Vec<DeviceEntry>) -> Snapshot {
        Snapshot {
            version,
            devices,
            ..Default::default()
        }
    }

    #[test]
    fn deltas_turn_one_snapshot_into_the_next() {
        let a = snapshot(1, vec![device("x", true), device("y", true)]);
        let b = snapshot(2, vec![device("y", false), device("z", true)]);
        let d = Delta::between(&a, &b);
        assert_eq!(d.remove_devices, [("t".to_string(), "x".to_string())]);
        assert_eq!(d.upsert_devices.len(), 2);
        assert!(d.verification_keys.is_none());
        let mut c = a.clone();
        d.apply_to(&mut c).unwrap();
        let mut got = c.devices.clone();
        got.sort_by(|p, q| p.id.cmp(&q.id));
        assert_eq!(got, b.devices);
        assert_eq!(c.version, 2);
        // Not applicable to anything but its base.
        assert_eq!(
            d.apply_to(&mut c),
            Err(DeltaMismatch {
                have: 2,
                delta_from: 1
            })
        );
    }

    #[test]
    fn the_hub_serves_deltas_it_still_has_and_snapshots_otherwise() {
        let hub = FeedHub::new(None);
        hub.install(snapshot(1, vec![device("a", true)])).unwrap();
        hub.install(snapshot(2, vec![device("a", false)])).unwrap();
        hub.install(snapshot(3, vec![])).unwrap();
        let parse = |l: &Line| serde_json::from_slice::<FeedMessage>(l).unwrap();
        let (lines, v) = hub.catch_up(Some(1));
        assert_eq!(v, 3);
        assert!(lines
            .iter()
            .all(|l| matches!(parse(l), FeedMessage::Delta(_))));
        assert_eq!(lines.len(), 2);
        let (lines, _) = hub.catch_up(Some(3));
        assert!(lines.is_empty());
        for unknown in [None, Some(0), Some(99)] {
            let (lines, _) = hub.catch_up(unknown);
            assert!(matches!(parse(&lines[0]), FeedMessage::Snapshot(s) if s.version == 3));
        }
        // Older versions are ignored.
        hub.install(snapshot(2, vec![])).unwrap();
        assert_eq!(hub.catch_up(None).1, 3);
    }
}
