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
    let opened = match authorize(&shared, query.as_deref(), &parts.headers) {
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

/// Everything a stream request must pass, whatever serves it: the query
/// string, the bearer token, the device and kind filters and the
/// per-application stream limit. `Err` is the response to send instead.
pub(crate) fn authorize(
    shared: &Arc<Shared>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Opened, Box<Response>> {
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
            return Err(Box::new(unauthorized("a bearer access token is required")));
        }
        Bearer::Both => {
            shared.metrics.stream_refused("two_tokens");
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "send the access token in the Authorization header or the access_token parameter, not both",
            )));
        }
    };
    let table = shared.access.load_full();
    let now = now_ms();
    let (claims, app) = token::verify(token, &shared.cfg.issuer, &table, now).map_err(|e| {
        shared.metrics.stream_refused(e.reason());
        Box::new(unauthorized(&e.to_string()))
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
            if let Some(denied) = wanted.iter().find(|d| !app.devices.contains(*d)) {
                shared.metrics.stream_refused("device_forbidden");
                return Err(Box::new(error(
                    StatusCode::FORBIDDEN,
                    "forbidden_device",
                    &format!("this application may not stream device {:?}", &*denied.id),
                )));
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
        return Err(Box::new(r));
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

    #[test]
    fn kinds_filter_parses_strictly() {
        assert_eq!(kinds(None).ok(), Some((true, true)));
        assert_eq!(kinds(Some("anomaly")).ok(), Some((false, true)));
        assert_eq!(kinds(Some("telemetry, anomaly")).ok(), Some((true, true)));
        assert!(kinds(Some("alarm")).is_err());
        assert!(kinds(Some(",")).is_err());
    }
}
