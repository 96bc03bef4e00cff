//! The QUIC device client (feature `client`).
//!
//! One [`DeviceSession`] is one device's connection: it says hello, sends
//! telemetry frames in batches and tracks the broker's cumulative
//! acknowledgements. `sensegate publish` and the load tester both use it, so
//! the protocol has exactly one encoder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;

use crate::{
    decode_frame, encode_frame, validate_server_msg, ArchivedServerMsg, Hello, RejectCode,
    ServerMsg, Telemetry, ALPN, MAX_CONTROL_FRAME_LEN, PROTOCOL_VERSION,
};

/// How the client decides to trust the broker's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Trust certificates chaining to these roots (e.g. the broker's
    /// self-signed certificate, `cert.pem` in its data dir).
    Roots(Vec<CertificateDer<'static>>),
    /// Accept any certificate. For local experiments only: it defeats TLS
    /// authentication (signatures are still checked, identities are not).
    Insecure,
}

impl Trust {
    /// Reads PEM certificates from `pem`.
    pub fn from_pem(pem: &[u8]) -> Result<Self, ClientError> {
        let certs = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Config(format!("reading certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::Config("no certificate in PEM".into()));
        }
        Ok(Trust::Roots(certs))
    }
}

/// Everything that can go wrong for a device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Bad local configuration (certificate, address).
    #[error("configuration: {0}")]
    Config(String),
    /// The QUIC connection could not be made or was lost.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Could not start connecting.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// Writing to the stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading the stream failed.
    #[error("read: {0}")]
    Read(String),
    /// The broker refused or ended the session.
    #[error("rejected by broker{}: {reason}", code.map(|c| format!(" ({c:?})")).unwrap_or_default())]
    Rejected {
        /// Why, if the code is known.
        code: Option<RejectCode>,
        /// The broker's explanation.
        reason: String,
    },
    /// The broker sent bytes that are not a valid server message.
    #[error("protocol violation by broker: {0}")]
    Protocol(String),
    /// Waiting for acknowledgements took too long.
    #[error("timed out after {0:?} waiting for the broker")]
    Timeout(Duration),
}

/// Builds a quinn client configuration for the given trust.
pub fn client_config(trust: Trust) -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut tls = match trust {
        Trust::Roots(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| ClientError::Config(format!("bad CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A client endpoint on an ephemeral local UDP port, of the same address
/// family as `server`.
pub fn endpoint_for(server: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
    let bind: SocketAddr = if server.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    quinn::Endpoint::client(bind)
        .map_err(|e| ClientError::Config(format!("opening a UDP socket: {e}")))
}

/// One device's live session with the broker.
pub struct DeviceSession {
    conn: quinn::Connection,
    send: quinn::SendStream,
    acked: watch::Receiver<u64>,
    /// The broker's `Reject`, once it sent one.
    rejected: Arc<std::sync::Mutex<Option<ClientError>>>,
    resume_after: u64,
    buf: Vec<u8>,
}

impl DeviceSession {
    /// Connects, says hello and waits for the broker's verdict.
    ///
    /// `server_name` must match the broker certificate (`localhost` for the
    /// self-signed default).
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        config: quinn::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
        device_id: &str,
        key: &str,
    ) -> Result<Self, ClientError> {
        let conn = endpoint.connect_with(config, addr, server_name)?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut buf = Vec::with_capacity(256);
        encode_frame(
            &Hello {
                device_id: device_id.to_owned(),
                key: key.to_owned(),
                version: PROTOCOL_VERSION,
            },
            &mut buf,
        );
        send.write_all(&buf).await?;
        let mut rx = Vec::new();
        let first = match read_msg(&mut recv, &mut rx).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(close_error(&conn)),
            Err(e) => {
                // A refused hello is followed by a close: prefer its reason.
                return Err(match conn.close_reason() {
                    Some(_) => close_error(&conn),
                    None => e,
                });
            }
        };
        let resume_after = match first {
            ServerMsg::HelloAck { last_seq } => last_seq,
            ServerMsg::Reject { code, reason } => {
                return Err(ClientError::Rejected {
                    code: RejectCode::from_u32(code),
                    reason,
                })
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected HelloAck, got {other:?}"
                )))
            }
        };
        let (ack_tx, acked) = watch::channel(resume_after);
        let rejected = Arc::new(std::sync::Mutex::new(None));
        let slot = rejected.clone();
        tokio::spawn(async move {
            // Ends when the stream or connection ends; `wait_acked` then
            // reports the broker's Reject, or the connection's close reason.
            loop {
                match read_msg(&mut recv, &mut rx).await {
                    Ok(Some(ServerMsg::Ack { up_to_seq })) => {
                        ack_tx.send_if_modified(|v| {
                            let newer = up_to_seq > *v;
                            if newer {
                                *v = up_to_seq;
                            }
                            newer
                        });
                    }
                    Ok(Some(ServerMsg::Reject { code, reason })) => {
                        if let Ok(mut r) = slot.lock() {
                            *r = Some(ClientError::Rejected {
                                code: RejectCode::from_u32(code),
                                reason,
                            });
                        }
                        break;
                    }
                    _ => break,
                }
            }
        });
        Ok(DeviceSession {
            conn,
            send,
            acked,
            rejected,
            resume_after,
            buf,
        })
    }

    /// The highest sequence number the broker already had when this session
    /// started: events at or below it must not be sent again.
    pub fn resume_after(&self) -> u64 {
        self.resume_after
    }

    /// Highest sequence number acknowledged so far.
    pub fn acked(&self) -> u64 {
        *self.acked.borrow()
    }

    /// Sends `events` as one batch (one frame each, one write).
    pub async fn send(&mut self, events: &[Telemetry]) -> Result<(), ClientError> {
        self.buf.clear();
        for e in events {
            encode_frame(e, &mut self.buf);
        }
        self.send_encoded().await
    }

    /// Sends frames already encoded (with [`encode_frame`]) into [`Self::buffer`].
    /// Lets a high-rate sender reuse its own encoding loop.
    pub async fn send_encoded(&mut self) -> Result<(), ClientError> {
        match self.send.write_all(&self.buf).await {
            Ok(()) => Ok(()),
            Err(e) => Err(match self.conn.close_reason() {
                Some(_) => close_error(&self.conn),
                None => ClientError::Write(e),
            }),
        }
    }

    /// The reusable encode buffer for [`Self::send_encoded`].
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Waits until everything up to `seq` is acknowledged.
    pub async fn wait_acked(&mut self, seq: u64, timeout: Duration) -> Result<(), ClientError> {
        let outcome = {
            let wait = self.acked.wait_for(|v| *v >= seq);
            tokio::time::timeout(timeout, wait).await.map(|r| r.is_ok())
        };
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.ended().await),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Why the session ended: the broker's Reject if it sent one, else the
    /// connection's close reason (waited for briefly: it follows the stream's end).
    async fn ended(&self) -> ClientError {
        if let Some(e) = self.rejected.lock().ok().and_then(|mut r| r.take()) {
            return e;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.conn.closed()).await;
        close_error(&self.conn)
    }

    /// Finishes the stream and closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.send.finish();
        self.conn.close(0u32.into(), b"done");
    }
}

fn close_error(conn: &quinn::Connection) -> ClientError {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
            let code = u32::try_from(c.error_code.into_inner()).ok();
            ClientError::Rejected {
                code: code.and_then(RejectCode::from_u32),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            }
        }
        Some(other) => ClientError::Connection(other),
        None => ClientError::Read("stream ended".into()),
    }
}

/// Reads one server message; `Ok(None)` at a clean end of stream.
async fn read_msg(
    recv: &mut quinn::RecvStream,
    buf: &mut Vec<u8>,
) -> Result<Option<ServerMsg>, ClientError> {
    loop {
        if let Some(range) = decode_frame(buf, MAX_CONTROL_FRAME_LEN)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            let msg = match validate_server_msg(&buf[range.clone()])
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                ArchivedServerMsg::HelloAck { last_seq } => ServerMsg::HelloAck {
                    last_seq: last_seq.to_native(),
                },
                ArchivedServerMsg::Ack { up_to_seq } => ServerMsg::Ack {
                    up_to_seq: up_to_seq.to_native(),
                },
                ArchivedServerMsg::Reject { code, reason } => ServerMsg::Reject {
                    code: code.to_native(),
                    reason: reason.as_str().to_owned(),
                },
            };
            buf.drain(..range.end);
            return Ok(Some(msg));
        }
        match recv.read_chunk(4096, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return Ok(None),
            Err(e) => return Err(ClientError::Read(e.to_string())),
        }
    }
}

/// Certificate verifier for [`Trust::Insecure`].
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
