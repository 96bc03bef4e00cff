//! The QUIC listener's certificate: loaded from the data dir, or made
//! self-signed on first start.

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Why the certificate could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Reading or writing the PEM files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The PEM files hold no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// rustls or rcgen refused the material.
    #[error("tls: {0}")]
    Tls(String),
}

/// The server certificate chain and key, with the leaf's SHA-256 fingerprint.
#[derive(Debug)]
pub struct Identity {
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Hex SHA-256 of the leaf certificate (for pinning and the log).
    pub fingerprint: String,
    /// Whether it was generated during this call.
    pub generated: bool,
}

/// Loads `cert.pem`/`key.pem` from `dir`, creating a self-signed pair for
/// `localhost` and `127.0.0.1` if they do not exist yet.
pub fn load_or_create(dir: &Path) -> Result<Identity, TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| TlsError::Io { path, source }
    };
    let generated = !cert_path.exists();
    if generated {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(|e| TlsError::Tls(e.to_string()))?;
        write_private(&key_path, ck.signing_key.serialize_pem().as_bytes())
            .map_err(io(&key_path))?;
        std::fs::write(&cert_path, ck.cert.pem()).map_err(io(&cert_path))?;
    }
    let cert_pem = std::fs::read(&cert_path).map_err(io(&cert_path))?;
    let key_pem = std::fs::read(&key_path).map_err(io(&key_path))?;
    let chain = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(io(&cert_path))?;
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::Pem(format!("no certificate in {}", cert_path.display())))?;
    let fingerprint = hex(&Sha256::digest(leaf));
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(io(&key_path))?
        .ok_or_else(|| TlsError::Pem(format!("no private key in {}", key_path.display())))?;
    Ok(Identity {
        chain,
        key,
        fingerprint,
        generated,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(bytes)
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl Identity {
    /// A quinn server configuration speaking [`sensegate_ingest_proto::ALPN`].
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![sensegate_ingest_proto::ALPN.to_vec()];
        tls.max_early_data_size = 0;
        let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        // A device needs one bidirectional stream; refuse more so a hostile
        // peer cannot make us buffer many.
        transport.max_concurrent_bidi_streams(1u32.into());
        transport.max_concurrent_uni_streams(0u32.into());
        transport.max_idle_timeout(Some(
            std::time::Duration::from_secs(30)
                .try_into()
                .map_err(|_| TlsError::Tls("idle timeout".into()))?,
        ));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_then_reuses_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        assert!(a.generated);
        let b = load_or_create(dir.path()).unwrap();
        assert!(!b.generated);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 64);
        a.server_config().unwrap();
    }
}
