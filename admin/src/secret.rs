//! Secret generation, hashing and comparison.
//!
//! Every secret is 32 bytes (256 bits) from the OS CSPRNG, written as
//! unpadded base64url (43 characters, URL-safe) behind a short prefix that
//! tells a human which kind of credential it is. Because a secret has full
//! entropy, a plain SHA-256 is a safe way to store and index it (a slow
//! password hash buys nothing against a 256-bit search space).

use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Prefix of an application's Client Secret.
pub(crate) const CLIENT_SECRET_PREFIX: &str = "sgs_";
/// Prefix of a device's ingest key.
pub(crate) const DEVICE_KEY_PREFIX: &str = "sgd_";
/// Prefix of an admin API key.
pub(crate) const ADMIN_KEY_PREFIX: &str = "sga_";
/// Prefix of a Client ID (an identifier, not a secret).
pub(crate) const CLIENT_ID_PREFIX: &str = "sgc_";

/// `prefix` + 43 base64url characters of fresh CSPRNG output.
pub(crate) fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A new Client ID: unguessable too (128 bits), so ids do not leak how many
/// applications exist.
pub(crate) fn client_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{CLIENT_ID_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Lower-case hex SHA-256 of `secret`'s UTF-8 bytes.
pub(crate) fn sha256_hex(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `secret` hashes to `stored_hex`, compared in constant time.
pub(crate) fn matches(secret: &str, stored_hex: &str) -> bool {
    sha256_hex(secret)
        .as_bytes()
        .ct_eq(stored_hex.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_256_bit_url_safe_and_distinct() {
        let a = generate(CLIENT_SECRET_PREFIX);
        let b = generate(CLIENT_SECRET_PREFIX);
        assert_ne!(a, b);
        let body = a.strip_prefix(CLIENT_SECRET_PREFIX).unwrap();
        assert_eq!(body.len(), 43);
        assert!(body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn hashes_match_only_their_secret() {
        let s = generate(DEVICE_KEY_PREFIX);
        let h = sha256_hex(&s);
        assert_eq!(h.len(), 64);
        assert!(matches(&s, &h));
        assert!(!matches("other", &h));
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
