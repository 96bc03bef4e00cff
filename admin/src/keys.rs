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

use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use ed25519_dalek::SigningKey;
use sha2::{Digest as _, Sha256};
use sqlx::{AnyConnection, Row};

use crate::error::AdminError;
use crate::Admin;

/// The parsed active signing key, cached by kid so a token request does not
/// re-parse PKCS#8 each time.
#[derive(Default)]
pub(crate) struct SignerCache(parking_lot::Mutex<Option<(String, Arc<jsonwebtoken::EncodingKey>)>>);

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

    /// The active signing key (newest, unretired), published to the broker
    /// first if another process created it.
    pub(crate) async fn signer(
        &self,
    ) -> Result<(String, Arc<jsonwebtoken::EncodingKey>), AdminError> {
        let row = {
            let mut conn = self.inner.pool.acquire().await?;
            sqlx::query(
                "SELECT kid, private_pkcs8 FROM signing_keys WHERE retired_at IS NULL \
                 ORDER BY created_at DESC, kid LIMIT 1",
            )
            .fetch_optional(&mut *conn)
            .await?
        };
        let row = row.ok_or_else(|| AdminError::Signing("no active signing key".into()))?;
        let kid: String = row.try_get("kid")?;
        if !self.is_published(&kid) {
            self.republish().await?;
        }
        let mut cache = self.inner.signer.0.lock();
        if let Some((cached, key)) = cache.as_ref() {
            if *cached == kid {
                return Ok((kid, key.clone()));
            }
        }
        let der = STANDARD
            .decode(row.try_get::<String, _>("private_pkcs8")?)
            .map_err(|e| AdminError::Signing(e.to_string()))?;
        let key = Arc::new(jsonwebtoken::EncodingKey::from_ed_der(&der));
        *cache = Some((kid.clone(), key.clone()));
        Ok((kid, key))
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

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 8037 appendix A.3.
        assert_eq!(
            thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
