//! Access-token claims and their verification against the live table.
//!
//! The admin signs tokens (EdDSA, `kid` in the header); the broker verifies
//! the signature with the keys of the current [`AccessTable`] and then applies
//! the **live** application entry, not the claims' device list, so that an
//! edit, a disable or a secret rotation bites at once on tokens already issued.

use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};

use crate::access::{AccessTable, AppAccess};

/// The claims of a SenseGate access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer (the admin's public base URL).
    pub iss: String,
    /// Audience ([`AUDIENCE`]).
    pub aud: String,
    /// The OAuth2 client id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Unique token id.
    pub jti: String,
    /// Tenant id.
    pub tenant: String,
    /// Application id.
    pub app: String,
    /// Device ids the application could see when the token was issued
    /// (informational: the broker enforces the live set).
    pub devices: Vec<String>,
    /// Whether anomaly events were included when the token was issued.
    pub include_anomalies: bool,
    /// The application's secret generation at issue time.
    pub sgen: u64,
}

/// The `aud` every SenseGate access token carries.
pub const AUDIENCE: &str = "sensegate-stream";

/// Why a bearer token was refused. The HTTP layer answers all of them with
/// `401 invalid_token`; the variant is for logs and metrics.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a JWT, bad signature, wrong issuer/audience, or expired.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The `kid` names no current verification key.
    #[error("unknown signing key")]
    UnknownKey,
    /// The application no longer exists.
    #[error("application deleted")]
    AppGone,
    /// Disabled or expired application.
    #[error("{0}")]
    AppRefused(&'static str),
    /// The secret was rotated after this token was issued.
    #[error("secret rotated since issue")]
    SecretRotated,
    /// Issued under a secret generation newer than this broker has heard of.
    #[error("issued under a secret this broker has not seen yet")]
    SecretNotYetKnown,
}

impl TokenError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Invalid(_) => "invalid",
            TokenError::UnknownKey => "unknown_key",
            TokenError::AppGone => "app_deleted",
            TokenError::AppRefused(r) if r.contains("expired") => "app_expired",
            TokenError::AppRefused(_) => "app_disabled",
            TokenError::SecretRotated => "secret_rotated",
            TokenError::SecretNotYetKnown => "secret_not_yet_known",
        }
    }

    /// Whether a broker whose permissions lag the admin's could be the
    /// cause: the signing key, the application or its new secret may still
    /// be on their way through the feed.
    pub fn may_be_ahead_of_table(&self) -> bool {
        matches!(
            self,
            TokenError::UnknownKey | TokenError::AppGone | TokenError::SecretNotYetKnown
        )
    }
}

/// A short, fixed reason for a JWT library error: the caller sees it in the
/// `401` body, and the library's own text names its parser's internals.
fn invalid(e: &jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    TokenError::Invalid(
        match e.kind() {
            ErrorKind::ExpiredSignature => "token expired",
            ErrorKind::InvalidSignature => "bad signature",
            ErrorKind::InvalidIssuer => "wrong issuer",
            ErrorKind::InvalidAudience => "wrong audience",
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "unexpected algorithm",
            ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
            ErrorKind::ImmatureSignature => "token not yet valid",
            _ => "malformed token",
        }
        .into(),
    )
}

/// Verifies `token` and returns its claims and the live application.
pub fn verify<'t>(
    token: &str,
    issuer: &str,
    table: &'t AccessTable,
    now_ms: i64,
) -> Result<(Claims, &'t AppAccess), TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(&e))?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Invalid("unexpected algorithm".into()));
    }
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| table.keys.get(kid))
        .ok_or(TokenError::UnknownKey)?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[issuer]);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    // Same clock on both sides (or NTP across nodes): no grace period, so
    // that nothing is delivered after `exp`.
    v.leeway = 0;
    let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| invalid(&e))?;
    let claims = data.claims;
    if claims.exp * 1000 <= now_ms {
        return Err(TokenError::Invalid("token expired".into()));
    }
    let app = table.apps.get(&claims.app).ok_or(TokenError::AppGone)?;
    if app.entry.tenant != claims.tenant || app.entry.client_id != claims.sub {
        return Err(TokenError::AppGone);
    }
    if let Some(why) = app.refusal(now_ms) {
        return Err(TokenError::AppRefused(why));
    }
    match claims.sgen.cmp(&app.entry.secret_generation) {
        std::cmp::Ordering::Less => Err(TokenError::SecretRotated),
        std::cmp::Ordering::Greater => Err(TokenError::SecretNotYetKnown),
        std::cmp::Ordering::Equal => Ok((claims, app)),
    }
}
