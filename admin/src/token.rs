//! `POST /connect/token`: the OAuth2 client-credentials grant (RFC 6749
//! §4.4), with errors as §5.2 says.
//!
//! Order of checks, each answered before the next is looked at:
//! 1. media type `application/x-www-form-urlencoded` (charset, if given,
//!    UTF-8), body at most [`MAX_BODY`] → else `400 invalid_request`;
//! 2. no parameter twice (§3.2) → else `invalid_request`; parameters with an
//!    empty value count as omitted (§3.1);
//! 3. one client authentication method: HTTP Basic (each part form-decoded
//!    after splitting at the first colon, §2.3.1) *or* `client_id` +
//!    `client_secret` in the body → both: `invalid_request`;
//! 4. `grant_type` present (`invalid_request`) and `client_credentials`
//!    (`unsupported_grant_type`);
//! 5. brute-force throttle ([`crate::limiter`]) → `429` + `Retry-After`;
//! 6. the client: unknown, wrong secret, disabled, deleted or expired all
//!    give the very same `401 invalid_client` body (with
//!    `WWW-Authenticate: Basic`), so nothing can be learnt about which.
//!
//! Every response carries `Cache-Control: no-store` and `Pragma: no-cache`.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sensegate_broker::token::{Claims, AUDIENCE};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::extract::{read_body, timed_out_message, BodyError};
use crate::audit;
use crate::error::AdminError;
use crate::limiter::Key;
use crate::{secret, Admin};

/// Largest accepted request body: a client-credentials request is a few
/// hundred bytes.
pub(crate) const MAX_BODY: usize = 16 * 1024;
/// Longest client id worth looking up (ours are 26 characters).
const MAX_CLIENT_ID: usize = 128;
/// What [`Event`]s about token requests name as their target type.
const TARGET: &str = "application";
const FORM: &str = "application/x-www-form-urlencoded";

/// The form parameters of a token request (RFC 6749 §4.4.2). Parameters
/// with an empty value count as omitted; `scope` is accepted and ignored
/// (an application's scope is its configured devices).
#[derive(Debug, ToSchema)]
pub(crate) struct TokenForm {
    /// Must be `client_credentials`.
    grant_type: Option<String>,
    /// The Client ID, unless sent with HTTP Basic.
    client_id: Option<String>,
    /// The Client Secret, unless sent with HTTP Basic.
    client_secret: Option<String>,
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenResponse {
    /// A JWT signed with EdDSA; its `kid` is in the JWKS.
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the token expires (never after the application does).
    expires_in: i64,
}

/// An error response (RFC 6749 §5.2).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `unsupported_grant_type` or
    /// `server_error`.
    error: &'static str,
    /// What went wrong, for a human.
    error_description: String,
}

/// A refusal, per RFC 6749 §5.2.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OAuthError {
    InvalidRequest(String),
    /// The body did not arrive within [`crate::api::extract::BODY_READ_TIMEOUT`] (`408`).
    TimedOut,
    InvalidClient,
    UnsupportedGrantType,
    TooManyFailures {
        retry_after: u64,
    },
    Server,
}

impl OAuthError {
    /// The label of `sensegate_tokens_refused_total`.
    fn metric_reason(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) | OAuthError::TimedOut => "invalid_request",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::TooManyFailures { .. } => "throttled",
            OAuthError::Server => "server_error",
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let (status, code, description) = match &self {
            OAuthError::InvalidRequest(m) => {
                (StatusCode::BAD_REQUEST, "invalid_request", m.clone())
            }
            OAuthError::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request",
                timed_out_message(),
            ),
            OAuthError::InvalidClient => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed".to_string(),
            ),
            OAuthError::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only grant_type=client_credentials is supported".to_string(),
            ),
            OAuthError::TooManyFailures { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_request",
                "too many failed authentication attempts; retry later".to_string(),
            ),
            OAuthError::Server => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error".to_string(),
            ),
        };
        let body = OAuthErrorBody {
            error: code,
            error_description: description,
        };
        let mut res = (status, axum::Json(body)).into_response();
        let h = res.headers_mut();
        match self {
            OAuthError::InvalidClient => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"sensegate\", charset=\"UTF-8\""),
                );
            }
            OAuthError::TooManyFailures { retry_after } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            _ => {}
        }
        no_store(res)
    }
}

impl From<AdminError> for OAuthError {
    fn from(e: AdminError) -> Self {
        tracing::error!(error = %e, "token endpoint failed");
        OAuthError::Server
    }
}

/// Adds the no-cache headers every token endpoint response carries.
pub(crate) fn no_store(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

/// Any method but POST.
pub(crate) async fn method_not_allowed() -> Response {
    let mut res = (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({
            "error": "invalid_request",
            "error_description": "the token endpoint accepts POST only",
        })),
    )
        .into_response();
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    no_store(res)
}

/// Issues an access token for the client-credentials grant.
#[utoipa::path(post, path = "/connect/token", tag = "oauth2",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, body = TokenResponse, description = "Issued (`Cache-Control: no-store`)."),
        (status = 400, body = OAuthErrorBody, description = "`invalid_request` or `unsupported_grant_type`."),
        (status = 401, body = OAuthErrorBody, description = "`invalid_client`, with `WWW-Authenticate: Basic`; identical for every cause."),
        (status = 429, body = OAuthErrorBody, description = "Too many failed attempts; see `Retry-After`."),
    ))]
pub(crate) async fn endpoint(State(admin): State<Admin>, req: Request) -> Response {
    let basic = req.headers().contains_key(header::AUTHORIZATION);
    let result = issue(&admin, req).await;
    if let Some(m) = admin.metrics() {
        match &result {
            Ok(_) => m.token_issued(),
            Err(e) => m.token_refused(e.metric_reason()),
        }
    }
    match result {
        Ok(res) => res,
        Err(e) => {
            let mut res = e.into_response();
            // RFC 6749 §5.2: the Basic challenge answers a Basic attempt only.
            if !basic {
                res.headers_mut().remove(header::WWW_AUTHENTICATE);
            }
            res
        }
    }
}

/// Client credentials as presented.
#[derive(Debug, PartialEq, Eq)]
struct Credentials {
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// The parsed, shape-checked request.
#[derive(Debug, PartialEq, Eq)]
struct TokenRequest {
    creds: Credentials,
}

async fn issue(admin: &Admin, req: Request) -> Result<Response, OAuthError> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (parts, body) = req.into_parts();
    check_media_type(&parts.headers)?;
    let body = read_body(body, MAX_BODY).await.map_err(|e| match e {
        BodyError::TimedOut => OAuthError::TimedOut,
        BodyError::TooLarge | BodyError::Unreadable => {
            OAuthError::InvalidRequest(format!("request body over {MAX_BODY} bytes or unreadable"))
        }
    })?;
    let request = parse(&parts.headers, &body)?;
    let (Some(client_id), Some(client_secret)) =
        (request.creds.client_id, request.creds.client_secret)
    else {
        // No (complete) client authentication: nothing to count against.
        return Err(OAuthError::InvalidClient);
    };
    let client_key = Key::Client(client_id.clone(), peer);
    let mut keys = vec![client_key.clone()];
    if let Some(ip) = peer {
        keys.push(Key::Addr(ip));
    }
    // A client id we could never have issued: refused without touching the
    // database (PostgreSQL refuses NUL bytes) or the audit log, counted
    // against the address only.
    let plausible = client_id.len() <= MAX_CLIENT_ID
        && client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plausible {
        if let Some(addr) = keys.get(1) {
            let now = Instant::now();
            if let Some(retry_after) = admin.inner.limiter.locked(std::slice::from_ref(addr), now) {
                return Err(OAuthError::TooManyFailures { retry_after });
            }
            admin.inner.limiter.failure(std::slice::from_ref(addr), now);
        }
        tracing::info!(reason = "malformed_client_id", "token request refused");
        return Err(OAuthError::InvalidClient);
    }
    if let Some(retry_after) = admin.inner.limiter.locked(&keys, Instant::now()) {
        tracing::info!(retry_after, "token request throttled");
        return Err(OAuthError::TooManyFailures { retry_after });
    }

    let now_ms = admin.now_ms();
    // The in-memory view the feed installed with the last snapshot: no
    // database read per request.
    let view = admin.inner.view.load_full();
    let client = view.clients.get(&client_id).cloned();
    // Hash and compare even for an unknown client, so timing does not tell
    // whether the id exists.
    let stored = client
        .as_ref()
        .map_or(UNKNOWN_CLIENT_HASH, |c| c.secret_sha256.as_str());
    let secret_ok = secret::matches(&client_secret, stored);
    let refusal = match &client {
        None => Some("unknown_client"),
        Some(_) if !secret_ok => Some("wrong_secret"),
        Some(c) if !c.enabled => Some("disabled"),
        Some(c) if now_ms >= c.expires_at_ms => Some("expired"),
        Some(_) => None,
    };
    let c = match (client, refusal) {
        (Some(c), None) => c,
        (client, reason) => {
            let reason = reason.unwrap_or("unknown_client");
            if matches!(reason, "unknown_client" | "wrong_secret") {
                admin.inner.limiter.failure(&keys, Instant::now());
            }
            let (tenant, app) = client.map(|c| (c.tenant.clone(), c.id.clone())).unzip();
            admin
                .inner
                .audit
                .record(audit::Record::new(
                    tenant,
                    format!("client:{client_id}"),
                    "token.refuse",
                    TARGET,
                    app,
                    serde_json::json!({ "reason": reason }),
                ))
                .await?;
            tracing::info!(reason, "token request refused");
            return Err(OAuthError::InvalidClient);
        }
    };
    admin.inner.limiter.success(&client_key);

    let now_s = now_ms.div_euclid(1000);
    let ttl_s = i64::try_from(admin.inner.cfg.token_ttl.as_secs()).unwrap_or(i64::MAX);
    // Never outlive the application itself.
    let exp = now_s
        .saturating_add(ttl_s)
        .min(c.expires_at_ms.div_euclid(1000));
    if exp <= now_s {
        return Err(OAuthError::InvalidClient);
    }
    let jti = uuid::Uuid::new_v4().to_string();
    let claims = Claims {
        iss: admin.inner.cfg.issuer.clone(),
        aud: AUDIENCE.to_string(),
        sub: client_id.clone(),
        exp,
        iat: now_s,
        jti: jti.clone(),
        tenant: c.tenant.clone(),
        app: c.id.clone(),
        devices: c.devices.clone(),
        include_anomalies: c.include_anomalies,
        sgen: c.secret_generation,
    };
    // The key published with the same snapshot: the broker knows it.
    let signer = view
        .signer
        .clone()
        .ok_or_else(|| AdminError::Signing("no active signing key".into()))?;
    drop(view);
    let token = signer.sign(&claims)?;
    // Queued before the response is sent; written in a batch (see
    // `audit::Writer`).
    admin
        .inner
        .audit
        .record(audit::Record::new(
            Some(c.tenant.clone()),
            format!("client:{client_id}"),
            "token.issue",
            TARGET,
            Some(c.id.clone()),
            serde_json::json!({ "jti": jti, "expiresAt": crate::validate::format_ms(exp * 1000) }),
        ))
        .await?;
    let body = TokenResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in: exp - now_s,
    };
    Ok(no_store((StatusCode::OK, axum::Json(body)).into_response()))
}

/// SHA-256 of no secret anyone can present (a hash of a value that is not
/// a valid UTF-8 secret would do too): compared against for unknown clients.
const UNKNOWN_CLIENT_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

fn check_media_type(headers: &HeaderMap) -> Result<(), OAuthError> {
    let wrong = || OAuthError::InvalidRequest(format!("Content-Type must be {FORM}"));
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(wrong)?;
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case(FORM) {
        return Err(wrong());
    }
    for p in parts {
        let Some((name, value)) = p.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset")
            && !(value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8"))
        {
            return Err(OAuthError::InvalidRequest(format!(
                "Content-Type must be {FORM} with charset UTF-8"
            )));
        }
    }
    Ok(())
}

/// Steps 2–4 of the module docs: parameters, client authentication method
/// and grant type.
fn parse(headers: &HeaderMap, body: &[u8]) -> Result<TokenRequest, OAuthError> {
    let mut params: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(body) {
        if params.iter().any(|(seen, _)| *seen == k) {
            return Err(OAuthError::InvalidRequest(format!(
                "parameter {k} is repeated"
            )));
        }
        params.push((k.into_owned(), v.into_owned()));
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    let form = TokenForm {
        grant_type: get("grant_type"),
        client_id: get("client_id"),
        client_secret: get("client_secret"),
    };
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    let basic = match (auth.next(), auth.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(OAuthError::InvalidRequest(
                "Authorization header is repeated".into(),
            ))
        }
        (Some(v), None) => Some(parse_basic(v)?),
    };
    let body_creds = Credentials {
        client_id: form.client_id,
        client_secret: form.client_secret,
    };
    let creds = match basic {
        Some(b) => {
            if body_creds.client_id.is_some() || body_creds.client_secret.is_some() {
                return Err(OAuthError::InvalidRequest(
                    "use one client authentication method: HTTP Basic or the request body, not both"
                        .into(),
                ));
            }
            b
        }
        None => body_creds,
    };
    match form.grant_type.as_deref() {
        None => Err(OAuthError::InvalidRequest("grant_type is required".into())),
        Some("client_credentials") => Ok(TokenRequest { creds }),
        Some(_) => Err(OAuthError::UnsupportedGrantType),
    }
}

/// `Authorization: Basic base64(form(client_id) ":" form(client_secret))`
/// (RFC 6749 §2.3.1). Any other scheme, or a malformed value, is a failed
/// client authentication.
fn parse_basic(v: &HeaderValue) -> Result<Credentials, OAuthError> {
    let s = v.to_str().map_err(|_| OAuthError::InvalidClient)?.trim();
    let (scheme, rest) = s.split_once(' ').ok_or(OAuthError::InvalidClient)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::InvalidClient);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| OAuthError::InvalidClient)?;
    let text = String::from_utf8(raw).map_err(|_| OAuthError::InvalidClient)?;
    let (id, secret) = text.split_once(':').ok_or(OAuthError::InvalidClient)?;
    let id = form_decode(id).ok_or(OAuthError::InvalidClient)?;
    let secret = form_decode(secret).ok_or(OAuthError::InvalidClient)?;
    Ok(Credentials {
        client_id: Some(id).filter(|s| !s.is_empty()),
        client_secret: Some(secret).filter(|s| !s.is_empty()),
    })
}

/// Decodes one `application/x-www-form-urlencoded` value strictly: `+` is a
/// space, `%XX` a byte, a stray `%` or non-UTF-8 result is refused.
fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `GET /.well-known/openid-configuration`.
pub(crate) fn discovery(issuer: &str) -> serde_json::Value {
    let base = issuer.trim_end_matches('/');
    serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{base}/connect/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "response_types_supported": ["token"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "subject_types_supported": ["public"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        h
    }

    fn creds(id: &str, secret: &str) -> Result<TokenRequest, OAuthError> {
        Ok(TokenRequest {
            creds: Credentials {
                client_id: Some(id.into()),
                client_secret: Some(secret.into()),
            },
        })
    }

    #[test]
    fn basic_credentials_are_form_decoded_after_the_first_colon() {
        let grant = b"grant_type=client_credentials";
        let table: &[(&str, Result<TokenRequest, OAuthError>)] = &[
            ("id:secret", creds("id", "secret")),
            ("id:se:cr:et", creds("id", "se:cr:et")),
            ("i%3Ad:s%2Bx", creds("i:d", "s+x")),
            ("a+b:c+d", creds("a b", "c d")),
            ("%C3%A9:%25", creds("é", "%")),
            ("id:bad%zz", Err(OAuthError::InvalidClient)),
            ("id:trunc%4", Err(OAuthError::InvalidClient)),
            ("id:%FF", Err(OAuthError::InvalidClient)),
            ("nocolon", Err(OAuthError::InvalidClient)),
        ];
        for (raw, want) in table {
            assert_eq!(&parse(&basic(raw), grant), want, "{raw}");
        }
    }

    /// Property: whatever a client id and secret contain (colons, `%`, `+`,
    /// spaces, non-ASCII), encoding them as RFC 6749 §2.3.1 says and parsing
    /// gives them back.
    #[test]
    fn basic_round_trips_any_credentials() {
        use rand::seq::SliceRandom as _;
        use rand::{Rng as _, SeedableRng as _};
        let alphabet: Vec<char> = "aZ09:%+ &=/?#~-_.é€😀\"".chars().collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(6749);
        let word = |rng: &mut rand::rngs::StdRng| -> String {
            let len = rng.gen_range(1..24);
            (0..len).map(|_| *alphabet.choose(rng).unwrap()).collect()
        };
        for _ in 0..2000 {
            let (id, secret) = (word(&mut rng), word(&mut rng));
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let raw = format!("{}:{}", enc(&id), enc(&secret));
            assert_eq!(
                parse(&basic(&raw), b"grant_type=client_credentials"),
                creds(&id, &secret),
                "{id:?} {secret:?}"
            );
        }
    }

    #[test]
    fn basic_scheme_is_case_insensitive_and_others_refused() {
        let grant = b"grant_type=client_credentials";
        for scheme in ["basic", "BASIC", "bAsIc"] {
            let mut h = HeaderMap::new();
            let v = format!(
                "{scheme} {}",
                base64::engine::general_purpose::STANDARD.encode("a:b")
            );
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
            assert_eq!(parse(&h, grant), creds("a", "b"));
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(parse(&h, grant), Err(OAuthError::InvalidClient));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(parse(&h, grant), Err(OAuthError::InvalidClient));
    }

    #[test]
    fn body_rules() {
        let none = HeaderMap::new();
        assert_eq!(
            parse(
                &none,
                b"grant_type=client_credentials&client_id=a%20b&client_secret=s%2B"
            ),
            creds("a b", "s+")
        );
        assert!(matches!(
            parse(
                &none,
                b"grant_type=client_credentials&grant_type=client_credentials"
            ),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert!(matches!(
            parse(&none, b"client_id=a"),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert!(matches!(
            parse(&none, b"grant_type="),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert_eq!(
            parse(&none, b"grant_type=password"),
            Err(OAuthError::UnsupportedGrantType)
        );
        assert!(matches!(
            parse(
                &basic("a:b"),
                b"grant_type=client_credentials&client_secret=b"
            ),
            Err(OAuthError::InvalidRequest(_))
        ));
        // Empty values count as omitted.
        assert_eq!(
            parse(&basic("a:b"), b"grant_type=client_credentials&client_id="),
            creds("a", "b")
        );
    }

    #[test]
    fn media_type_rules() {
        let mut h = HeaderMap::new();
        for ok in [
            FORM,
            "application/x-www-form-urlencoded; charset=UTF-8",
            "Application/X-WWW-Form-Urlencoded;charset=\"utf-8\"",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ok).unwrap());
            assert_eq!(check_media_type(&h), Ok(()), "{ok}");
        }
        for bad in [
            "application/json",
            "multipart/form-data; boundary=x",
            "text/plain",
            "application/x-www-form-urlencoded; charset=latin1",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(bad).unwrap());
            assert!(check_media_type(&h).is_err(), "{bad}");
        }
        assert!(check_media_type(&HeaderMap::new()).is_err());
    }
}
