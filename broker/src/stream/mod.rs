//! `GET /v1/stream/telemetry`: authorisation, parameters and limits, then
//! Server-Sent Events ([`sse`]) or, on an upgrade request, WebSocket ([`ws`])
//! over the same [`session::Session`] core.

mod h1;
mod session;
mod sse;
mod ws;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{FromRequestParts, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::Deserialize;

use crate::access::DeviceKey;
use crate::token;
use crate::{now_ms, Shared};
pub(crate) use h1::serve as serve_h1;
use session::{Opened, ResumeFrom};

/// Query parameters of the stream endpoint.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamParams {
    /// Token for clients that cannot set headers (EventSource, browsers' WebSocket).
    access_token: Option<String>,
    /// Comma-separated subset of the permitted devices.
    devices: Option<String>,
    /// Comma-separated subset of `telemetry,anomaly`.
    kinds: Option<String>,
    /// Resume point for clients that cannot send `Last-Event-ID`.
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

/// Open streams per application, for `max_streams_per_app`.
#[derive(Debug, Default)]
pub(crate) struct StreamCounts(Mutex<HashMap<String, usize>>);

/// One open stream's place in [`StreamCounts`]; released on drop.
pub(crate) struct StreamPermit {
    shared: Arc<Shared>,
    app: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut counts = self.shared.stream_counts.0.lock();
        if let Some(n) = counts.get_mut(&self.app) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.app);
            }
        }
    }
}

fn acquire(shared: &Arc<Shared>, app: &str) -> Option<StreamPermit> {
    let mut counts = shared.stream_counts.0.lock();
    let n = counts.entry(app.to_owned()).or_default();
    if *n >= shared.cfg.max_streams_per_app {
        return None;
    }
    *n += 1;
    Some(StreamPermit {
        shared: shared.clone(),
        app: app.to_owned(),
    })
}

/// A JSON error response.
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

/// Where the bearer token came from.
#[derive(Debug, PartialEq, Eq)]
enum Bearer<'a> {
    Token(&'a str),
    Missing,
    /// Header and query parameter at once (RFC 6750 §2: one method only).
    Both,
}

/// The bearer token from the `Authorization` header (scheme is
/// case-insensitive) or the `access_token` parameter.
fn bearer<'a>(headers: &'a HeaderMap, params: &'a StreamParams) -> Bearer<'a> {
    let query = params.access_token.as_deref();
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return query
            .filter(|t| !t.is_empty())
            .map_or(Bearer::Missing, Bearer::Token);
    };
    if query.is_some() {
        return Bearer::Both;
    }
    v.to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .map_or(Bearer::Missing, Bearer::Token)
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

/// Parses `kinds=`: `(readings, anomalies)`, or what is wrong with it.
fn kinds(list: Option<&str>) -> Result<(bool, bool), String> {
    let Some(list) = list else {
        return Ok((true, true));
    };
    let mut kinds = (false, false);
    for k in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match k {
            "telemetry" | "reading" => kinds.0 = true,
            "anomaly" => kinds.1 = true,
            other => {
                return Err(format!(
                    "unknown kind {other:?}: use telemetry and/or anomaly"
                ))
            }
        }
    }
    if kinds == (false, false) {
        return Err("kinds names no kind: use telemetry and/or anomaly".into());
    }
    Ok(kinds)
}

/// Any other method on the stream path.
pub(crate) async fn method_not_allowed() -> Response {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "the stream endpoint answers GET only",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET"));
    r
}

/// The handler: checks everything, then hands the stream to SSE or WebSocket.
pub(crate) async fn stream_telemetry(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let (mut parts, _body) = req.into_parts();
    let opened = match authorize(&shared, query.as_deref(), &parts.headers).await {
        Ok(opened) => opened,
        Err(refusal) => return *refusal,
    };
    let upgrade = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade {
        match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => ws::respond(shared, opened, upgrade),
            Err(rejection) => error(
                rejection.status(),
                "invalid_request",
                &rejection.body_text(),
            ),
        }
    } else {
        sse::respond(shared, opened)
    }
}

/// How long a stream request whose token is newer than this broker's
/// permissions waits for the feed before it is refused. A client may open
/// its stream the moment the admin hands it a token, and a broker that
/// follows the admin's feed hears of the new application (or key, or
/// secret) a few milliseconds later.
const FEED_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// Everything a stream request must pass, whatever serves it: the query
/// string, the bearer token, the device and kind filters and the
/// per-application stream limit. `Err` is the response to send instead.
///
/// Returns at once unless the broker follows a feed and the token may be
/// ahead of its table; only that rare case allocates its waiting state, so
/// that the futures of the many idle streams stay small.
pub(crate) async fn authorize(
    shared: &Arc<Shared>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Opened, Box<Response>> {
    let following = shared.following.load(std::sync::atomic::Ordering::Relaxed);
    match check(shared, query, headers, following) {
        Ok(opened) => Ok(opened),
        Err(Refused::Final(response)) => Err(response),
        Err(Refused::Behind) => Box::pin(catch_up(shared, query, headers)).await,
    }
}

/// Re-checks after every table swap until the token passes, the table
/// proves it wrong or [`FEED_CATCH_UP`] runs out (then the refusal is final).
async fn catch_up(
    shared: &Arc<Shared>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Opened, Box<Response>> {
    let deadline = tokio::time::Instant::now() + FEED_CATCH_UP;
    let mut swaps = shared.access_version.subscribe();
    loop {
        let waiting = tokio::time::Instant::now() < deadline;
        match check(shared, query, headers, waiting) {
            Ok(opened) => return Ok(opened),
            Err(Refused::Final(response)) => return Err(response),
            Err(Refused::Behind) => {}
        }
        // A swap between the check and this wait is not missed: the receiver
        // subscribed before the check.
        let _ = tokio::time::timeout_at(deadline, swaps.changed()).await;
    }
}

/// Why [`check`] did not open the stream.
enum Refused {
    /// The token may be newer than the table: look again after the feed.
    Behind,
    /// The response to send.
    Final(Box<Response>),
}

impl From<Box<Response>> for Refused {
    fn from(response: Box<Response>) -> Self {
        Refused::Final(response)
    }
}

/// One look at the current table. With `may_wait`, a token that may be
/// ahead of the table is [`Refused::Behind`] rather than refused.
fn check(
    shared: &Arc<Shared>,
    query: Option<&str>,
    headers: &HeaderMap,
    may_wait: bool,
) -> Result<Opened, Refused> {
    let params: StreamParams = serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("bad query string: {e}"),
        ))
    })?;
    let token = match bearer(headers, &params) {
        Bearer::Token(t) => t,
        Bearer::Missing => {
            shared.metrics.stream_refused("missing_token");
            return Err(Box::new(unauthorized("a bearer access token is required")).into());
        }
        Bearer::Both => {
            shared.metrics.stream_refused("two_tokens");
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "send the access token in the Authorization header or the access_token parameter, not both",
            ))
            .into());
        }
    };
    let table = shared.access.load_full();
    let now = now_ms();
    let (claims, app) = token::verify(token, &shared.cfg.issuer, &table, now).map_err(|e| {
        if may_wait && e.may_be_ahead_of_table() {
            return Refused::Behind;
        }
        shared.metrics.stream_refused(e.reason());
        Refused::Final(Box::new(unauthorized(&e.to_string())))
    })?;
    let filter = match params.devices.as_deref() {
        None => None,
        Some(list) => {
            let wanted: HashSet<DeviceKey> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|id| DeviceKey::new(&app.entry.tenant, id))
                .collect();
            if wanted.is_empty() {
                // An empty filter would open a stream that can never carry
                // anything; `kinds=` with no kind is refused the same way.
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "devices names no device: omit it to stream every permitted device",
                ))
                .into());
            }
            if let Some(denied) = wanted.iter().find(|d| !app.devices.contains(*d)) {
                shared.metrics.stream_refused("device_forbidden");
                return Err(Box::new(error(
                    StatusCode::FORBIDDEN,
                    "forbidden_device",
                    &format!(
                        "this application may not stream device {:?}",
                        // Bounded: the id is the caller's, of any length.
                        denied.id.chars().take(64).collect::<String>()
                    ),
                ))
                .into());
            }
            Some(wanted)
        }
    };
    let (want_readings, want_anomalies) = kinds(params.kinds.as_deref())
        .map_err(|why| Box::new(error(StatusCode::BAD_REQUEST, "invalid_request", &why)))?;
    let Some(permit) = acquire(shared, &claims.app) else {
        shared.metrics.stream_refused("too_many_streams");
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            &format!(
                "this application already has {} open streams",
                shared.cfg.max_streams_per_app
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Err(Box::new(r).into());
    };
    Ok(Opened {
        devices: filter.clone().unwrap_or_else(|| app.devices.clone()),
        filter,
        include_anomalies: app.entry.include_anomalies,
        want_readings,
        want_anomalies,
        resume: resume_from(headers, &params),
        now_ms: now,
        app_expires_at_ms: app.entry.expires_at_ms,
        claims,
        permit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_comes_from_the_header_or_the_query_never_both() {
        let mut h = HeaderMap::new();
        let q = StreamParams {
            access_token: Some("q".into()),
            ..Default::default()
        };
        let none = StreamParams::default();
        assert_eq!(bearer(&h, &q), Bearer::Token("q"));
        assert_eq!(bearer(&h, &none), Bearer::Missing);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bEaReR abc"),
        );
        assert_eq!(bearer(&h, &none), Bearer::Token("abc"));
        assert_eq!(bearer(&h, &q), Bearer::Both);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h, &none), Bearer::Missing);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h, &none), Bearer::Missing);
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

    /// A broker that follows the admin's feed may hear of an application
    /// after its client got a token: the stream waits for the feed instead
    /// of refusing a token the admin just issued.
    #[tokio::test]
    async fn a_token_issued_before_the_feed_arrives_waits_for_it() {
        use crate::access::{AccessSink, ApplicationEntry, Snapshot, VerificationKey};
        use base64::Engine;
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        use std::sync::atomic::Ordering;
        use std::time::{Duration, Instant};

        let dir = tempfile::tempdir().unwrap();
        let broker = crate::Broker::new(crate::BrokerConfig::new(
            dir.path().to_owned(),
            "127.0.0.1:0".parse().unwrap(),
            "issuer".into(),
        ))
        .unwrap();
        let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let keys = vec![VerificationKey {
            kid: "k".into(),
            ed25519_x: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(signing.verifying_key().as_bytes()),
        }];
        let app = |sgen| ApplicationEntry {
            tenant: "t".into(),
            id: "a".into(),
            client_id: "c".into(),
            enabled: true,
            expires_at_ms: now_ms() + 3_600_000,
            include_anomalies: false,
            devices: vec![],
            groups: vec![],
            secret_generation: sgen,
        };
        let snapshot = |version, applications| Snapshot {
            version,
            verification_keys: keys.clone(),
            applications,
            ..Default::default()
        };
        let token = |sgen| {
            let now = now_ms() / 1000;
            let claims = token::Claims {
                iss: "issuer".into(),
                aud: token::AUDIENCE.into(),
                sub: "c".into(),
                exp: now + 600,
                iat: now,
                jti: "j".into(),
                tenant: "t".into(),
                app: "a".into(),
                devices: vec![],
                include_anomalies: false,
                sgen,
            };
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
            header.kid = Some("k".into());
            let der = signing.to_pkcs8_der().unwrap();
            let key = jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes());
            let mut headers = HeaderMap::new();
            let value = format!(
                "Bearer {}",
                jsonwebtoken::encode(&header, &claims, &key).unwrap()
            );
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        broker.install(snapshot(1, vec![])).unwrap();
        let shared = broker.shared.clone();

        // In one process the table is never behind: refused at once.
        let started = Instant::now();
        assert!(authorize(&shared, None, &token(1)).await.is_err());
        assert!(started.elapsed() < Duration::from_millis(500));

        shared.following.store(true, Ordering::Relaxed);
        let late = broker.clone();
        let installed = snapshot(2, vec![app(1)]);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            late.install(installed).unwrap();
        });
        let opened = authorize(&shared, None, &token(1)).await;
        assert!(
            opened.is_ok(),
            "the stream opens once the feed brings the application"
        );

        // A secret newer than the feed ever brings is refused after the wait.
        let started = Instant::now();
        let refused = authorize(&shared, None, &token(2)).await;
        assert_eq!(refused.err().unwrap().status(), StatusCode::UNAUTHORIZED);
        assert!(started.elapsed() >= FEED_CATCH_UP);
        // An older one is refused at once: the table proves it stale.
        broker.install(snapshot(3, vec![app(3)])).unwrap();
        let started = Instant::now();
        assert!(authorize(&shared, None, &token(2)).await.is_err());
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn kinds_filter_parses_strictly() {
        assert_eq!(kinds(None).ok(), Some((true, true)));
        assert_eq!(kinds(Some("anomaly")).ok(), Some((false, true)));
        assert_eq!(kinds(Some("telemetry, anomaly")).ok(), Some((true, true)));
        assert!(kinds(Some("alarm")).is_err());
        assert!(kinds(Some(",")).is_err());
    }
}
