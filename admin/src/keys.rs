//! The Ed25519 keys that sign access tokens.
//!
//! One key is active (signs new tokens); after a rotation the previous key
//! is *retired*: it signs nothing new but stays in the JWKS and in the
//! broker's verification set for one token lifetime, so tokens it signed
//! keep working until they expire. The key id is the key's RFC 7638 JWK
//! thumbprint, so it is stable and says nothing but which key it is.
//!
//! Private keys live in the database (PKCS#8, base64): whoever can read the
//! database can already mint credentials, so it is the trust root anyway.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ed25519_dalek::SigningKey;
use sha2::{Digest as _, Sha256};
use sqlx::{AnyConnection, Row};

use crate::error::AdminError;
use crate::Admin;

/// The RFC 7638 thumbprint of an Ed25519 JWK with public key `x`.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// Generates a key and stores it as the active one. Returns its kid.
pub(crate) async fn create(conn: &mut AnyConnection, now_ms: i64) -> Result<String, AdminError> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let der = key
        .to_pkcs8_der()
        .map_err(|e| AdminError::Signing(e.to_string()))?;
    let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
    let kid = thumbprint(&x);
    sqlx::query(
        "INSERT INTO signing_keys (kid, private_pkcs8, public_x, created_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&kid)
    .bind(STANDARD.encode(der.as_bytes()))
    .bind(&x)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    Ok(kid)
}

/// Creates the first key if there is no active one.
pub(crate) async fn ensure(conn: &mut AnyConnection, now_ms: i64) -> Result<(), AdminError> {
    let active = sqlx::query("SELECT COUNT(*) FROM signing_keys WHERE retired_at IS NULL")
        .fetch_one(&mut *conn)
        .await?
        .try_get::<i64, _>(0)?;
    if active == 0 {
        let kid = create(conn, now_ms).await?;
        tracing::info!(%kid, "created token signing key");
    }
    Ok(())
}

/// `(kid, x)` of every key that may have signed a still-valid token: the
/// active key(s) and keys retired less than one token lifetime ago.
pub(crate) async fn verification_keys(
    conn: &mut AnyConnection,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Vec<(String, String)>, AdminError> {
    let rows = sqlx::query(
        "SELECT kid, public_x FROM signing_keys \
         WHERE retired_at IS NULL OR retired_at > $1 ORDER BY created_at DESC, kid",
    )
    .bind(now_ms.saturating_sub(ttl_ms))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("kid")?, r.try_get("public_x")?)))
        .collect()
}

/// The active signing key, parsed once (the feed keeps it in the token
/// endpoint's view), with its encoded JWT header.
///
/// Signs exactly as `jsonwebtoken::encode` with an EdDSA header carrying
/// the kid would (Ed25519 signatures are deterministic: the output is
/// byte-identical), without re-parsing PKCS#8 and re-deriving the public
/// key for every token as that function does.
pub(crate) struct Signer {
    pub(crate) kid: String,
    key: SigningKey,
    /// `base64url(JSON header) "."`.
    header_b64: String,
}

impl Signer {
    /// Parses a stored private key (base64 PKCS#8 DER).
    pub(crate) fn decode(kid: String, pkcs8_b64: &str) -> Result<Signer, AdminError> {
        let der = STANDARD
            .decode(pkcs8_b64)
            .map_err(|e| AdminError::Signing(e.to_string()))?;
        let key =
            SigningKey::from_pkcs8_der(&der).map_err(|e| AdminError::Signing(e.to_string()))?;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        let json = serde_json::to_vec(&header).map_err(|e| AdminError::Signing(e.to_string()))?;
        let mut header_b64 = URL_SAFE_NO_PAD.encode(json);
        header_b64.push('.');
        Ok(Signer {
            kid,
            key,
            header_b64,
        })
    }

    /// The compact JWS of `claims`.
    pub(crate) fn sign<T: serde::Serialize>(&self, claims: &T) -> Result<String, AdminError> {
        use ed25519_dalek::Signer as _;
        let json = serde_json::to_vec(claims).map_err(|e| AdminError::Signing(e.to_string()))?;
        let mut out = String::with_capacity(self.header_b64.len() + json.len() * 4 / 3 + 90);
        out.push_str(&self.header_b64);
        URL_SAFE_NO_PAD.encode_string(json, &mut out);
        let signature = self.key.sign(out.as_bytes());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut out);
        Ok(out)
    }
}

impl Admin {
    /// Rotates the token signing key: new tokens carry the new `kid`; the
    /// previous key keeps verifying until the tokens it signed expire (one
    /// token TTL). Returns the new key id.
    pub async fn rotate_signing_key(&self) -> Result<String, AdminError> {
        let now = self.now_ms();
        let mut change = self.change().await?;
        // Keys retired more than a lifetime ago verify nothing any more:
        // drop their private halves.
        sqlx::query("DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at <= $1")
            .bind(now.saturating_sub(self.ttl_ms()))
            .execute(change.conn())
            .await?;
        sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
            .bind(now)
            .execute(change.conn())
            .await?;
        let kid = create(change.conn(), now).await?;
        crate::audit::record(
            change.conn(),
            &crate::audit::Event::system("signing_key.rotate", "signing_key", &kid),
        )
        .await?;
        change.commit().await?;
        tracing::info!(%kid, "rotated token signing key");
        Ok(kid)
    }

    /// The JWKS document: every key that may have signed a valid token.
    pub(crate) async fn jwks(&self) -> Result<serde_json::Value, AdminError> {
        let mut conn = self.inner.pool.acquire().await?;
        let keys = verification_keys(&mut conn, self.now_ms(), self.ttl_ms()).await?;
        Ok(serde_json::json!({
            "keys": keys.into_iter().map(|(kid, x)| serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": x,
                "kid": kid,
                "use": "sig",
                "alg": "EdDSA",
            })).collect::<Vec<_>>()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached signer produces exactly what `jsonwebtoken::encode` does.
    #[test]
    fn signer_matches_jsonwebtoken() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let der = key.to_pkcs8_der().unwrap();
        let signer = Signer::decode("kid-1".into(), &STANDARD.encode(der.as_bytes())).unwrap();
        let claims =
            serde_json::json!({"sub": "sgc_x", "exp": 2_000_000_000i64, "devices": ["a", "é"]});
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("kid-1".into());
        let want = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
        )
        .unwrap();
        assert_eq!(signer.sign(&claims).unwrap(), want);
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 8037 appendix A.3.
        assert_eq!(
            thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
