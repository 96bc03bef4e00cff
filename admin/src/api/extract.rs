//! Request extractors whose every rejection is a JSON [`ApiError`] that
//! names the offending field, never a framework's plain-text rejection.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::error::AdminError;

/// Largest admin request body.
const MAX_BODY: usize = 1024 * 1024;

/// How long a client may take to send a request body once its headers are
/// in. Without it, a body dripped a byte at a time holds a connection slot
/// for as long as the client likes (the server's header timeout covers only
/// the head), and enough of them lock everyone out.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Longer than the limit.
    TooLarge,
    /// Not complete within [`BODY_READ_TIMEOUT`]; both the admin API and the
    /// token endpoint answer `408` with [`timed_out_message`].
    TimedOut,
    /// The connection failed mid-body.
    Unreadable,
}

/// What a `408` for a body that did not arrive in time says.
pub(crate) fn timed_out_message() -> String {
    format!(
        "request body not received within {} s",
        BODY_READ_TIMEOUT.as_secs()
    )
}

/// Reads a whole request body of at most `limit` bytes within
/// [`BODY_READ_TIMEOUT`].
pub(crate) async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            Err(if too_large {
                BodyError::TooLarge
            } else {
                BodyError::Unreadable
            })
        }
    }
}

/// The `{id}` path segment. Every id this API hands out (device and group
/// ids, UUIDs) is 1..=64 of `[A-Za-z0-9._-]`; anything else cannot name an
/// object, so it is a 404 before it reaches SQL (PostgreSQL refuses text
/// with NUL bytes, which must not turn into a 500).
pub(crate) struct Id(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("bad path: {e}")))
            .and_then(|Path(id)| match crate::validate::id("id", &id) {
                Ok(()) => Ok(Id(id)),
                Err(_) => Err(AdminError::NotFound(format!("object {id:?}")).into()),
            })
    }
}

/// A request body type: JSON, unknown fields refused.
pub(crate) trait JsonRequest: DeserializeOwned {
    /// Fields that exist elsewhere in the API but may not be sent here,
    /// with the reason to give.
    const REFUSED: &'static [(&'static str, &'static str)] = &[];
}

/// A JSON request body of type `T` (`Content-Type: application/json`).
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: JsonRequest> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !json {
            return Err(ApiError::unsupported_media_type());
        }
        // A declared length over the limit is refused before reading; a
        // chunked body is cut off at the limit.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(ApiError::payload_too_large(MAX_BODY));
        }
        let bytes = read_body(req.into_body(), MAX_BODY)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => ApiError::payload_too_large(MAX_BODY),
                BodyError::TimedOut => ApiError::request_timeout(),
                BodyError::Unreadable => ApiError::bad_request("request body unreadable"),
            })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value =
            serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| json_error::<T>(&e))?;
        de.end()
            .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
        Ok(Body(value))
    }
}

/// The first path segment of a deserialisation error: the top-level field.
fn top_field(path: &serde_path_to_error::Path) -> Option<String> {
    path.iter().find_map(|s| match s {
        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
        _ => None,
    })
}

/// The first `` `quoted` `` word of a serde message (the field of "missing
/// field `x`" or "unknown field `x`, expected …").
fn quoted(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

fn json_error<T: JsonRequest>(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner();
    if !inner.is_data() {
        return ApiError::bad_request(format!("malformed JSON: {inner}"));
    }
    let message = inner.to_string();
    if message.starts_with("unknown field") {
        if let Some(field) = quoted(&message) {
            let why = T::REFUSED
                .iter()
                .find(|(f, _)| *f == field)
                .map_or("unknown field", |(_, why)| *why);
            return AdminError::invalid(field, why).into();
        }
    }
    if message.starts_with("missing field") {
        if let Some(field) = quoted(&message) {
            return AdminError::invalid(field, "is required").into();
        }
    }
    if let Some(field) = top_field(e.path()) {
        return AdminError::invalid(&field, strip_position(&message)).into();
    }
    ApiError::bad_request("body must be a JSON object with the documented fields")
}

/// serde_json appends " at line L column C"; the field name says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Parses a query string into `T`; a bad, unknown or repeated parameter is
/// a 400 naming it.
pub(crate) fn query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, AdminError> {
    let raw = raw.unwrap_or_default();
    // Control characters match nothing we store, and PostgreSQL refuses NUL.
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        if v.chars().any(char::is_control) {
            return Err(AdminError::invalid(
                &k,
                "must not contain control characters",
            ));
        }
    }
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let message = e.inner().to_string();
        let field = top_field(e.path())
            .or_else(|| quoted(&message).map(str::to_string))
            .unwrap_or_else(|| "query".to_string());
        AdminError::invalid(&field, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_takes_the_first_backticked_word() {
        assert_eq!(
            quoted("unknown field `colour`, expected `id`"),
            Some("colour")
        );
        assert_eq!(quoted("missing field `name`"), Some("name"));
        assert_eq!(quoted("no quotes"), None);
    }
}
