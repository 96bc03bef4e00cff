//! SenseGate's data plane: QUIC ingest, the router and its replay rings, SSE
//! egress, and the plugin API ([`access`]) through which the control plane
//! tells it who may do what.
//!
//! The broker knows nothing of SQL, secrets or the admin. A [`Broker`] is
//! built from a [`BrokerConfig`], fed [`access::Snapshot`]s through its
//! [`access::AccessSink`] implementation, and exposes its HTTP surface as an
//! axum router that the binary merges with the admin's.
#![warn(missing_docs)]

pub mod access;
pub mod chunk;
pub mod conn;
pub mod event;
pub mod feed;
mod ingest;
pub mod metrics;
pub mod router;
mod stream;
pub mod subscriber;
pub mod tls;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::access::{AccessSink, AccessTable, Snapshot, SnapshotError};
use crate::event::EventIds;
use crate::metrics::Metrics;
use crate::router::{RingConfig, Router};
use crate::subscriber::OverflowPolicy;

/// Broker configuration. Defaults are stated on each field.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where the boot epoch and the QUIC certificate live.
    pub data_dir: PathBuf,
    /// UDP address of the QUIC listener (port 0 picks one).
    pub quic_addr: SocketAddr,
    /// Expected `iss` of access tokens.
    pub issuer: String,
    /// Silence after which a stream gets a keep-alive comment (default 15 s).
    pub heartbeat: Duration,
    /// Replay ring bounds (default 10,000 events per device, 15 minutes, 1 GiB in all).
    pub ring: RingConfig,
    /// Events a subscriber's queue holds before it drops the oldest (default 8,192).
    pub subscriber_queue: usize,
    /// What a subscriber whose queue overflowed gets (default drop-oldest + gap).
    pub overflow: OverflowPolicy,
    /// Router shards (default 64).
    pub shards: usize,
    /// Concurrent streams one application may hold (default 64).
    pub max_streams_per_app: usize,
    /// Browser origins allowed to open streams (CORS); empty = none.
    pub cors_origins: Vec<String>,
}

impl BrokerConfig {
    /// Defaults for everything but the data dir, addresses and issuer.
    pub fn new(data_dir: PathBuf, quic_addr: SocketAddr, issuer: String) -> Self {
        BrokerConfig {
            data_dir,
            quic_addr,
            issuer,
            heartbeat: Duration::from_secs(15),
            ring: RingConfig::default(),
            subscriber_queue: 8192,
            overflow: OverflowPolicy::DropOldest,
            shards: 64,
            max_streams_per_app: 64,
            cors_origins: Vec::new(),
        }
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The data dir could not be used.
    #[error("data dir: {0}")]
    DataDir(#[from] event::EpochError),
    /// The data dir could not be created.
    #[error("creating data dir {0}: {1}")]
    CreateDir(String, #[source] std::io::Error),
    /// Certificate problems.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The QUIC socket could not be bound.
    #[error("binding QUIC on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// State shared by the ingest tasks and the HTTP handlers.
pub(crate) struct Shared {
    pub(crate) cfg: BrokerConfig,
    pub(crate) router: Router,
    pub(crate) access: ArcSwap<AccessTable>,
    /// Bumped after every table swap; open sessions and streams re-check.
    pub(crate) access_version: tokio::sync::watch::Sender<u64>,
    pub(crate) metrics: Metrics,
    pub(crate) stream_counts: stream::StreamCounts,
    /// Whether the QUIC listener is accepting.
    pub(crate) ingest_up: std::sync::atomic::AtomicBool,
    /// Whether permissions come from a remote feed (then its state is reported).
    pub(crate) following: std::sync::atomic::AtomicBool,
    /// Extra readiness checks registered by the composing binary.
    pub(crate) probes: parking_lot::Mutex<Vec<(&'static str, ReadinessProbe)>>,
}

/// A readiness check: `Err(reason)` when not ready.
pub type ReadinessProbe = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// The broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

/// A running QUIC listener.
pub struct Listener {
    /// The bound address.
    pub addr: SocketAddr,
    /// SHA-256 fingerprint of the certificate it presents.
    pub fingerprint: String,
    /// Whether the certificate was generated during this start.
    pub generated_cert: bool,
    /// Path of the certificate (PEM) devices can trust.
    pub cert_path: PathBuf,
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

impl Listener {
    /// Stops accepting and closes every device session.
    pub fn close(&self) {
        self.shared
            .ingest_up
            .store(false, std::sync::atomic::Ordering::Release);
        self.endpoint.close(
            sensegate_ingest_proto::RejectCode::ShuttingDown
                .as_u32()
                .into(),
            b"broker shutting down",
        );
    }
}

impl Broker {
    /// Prepares the broker (data dir, boot epoch); nothing is bound yet.
    pub fn new(cfg: BrokerConfig) -> Result<Self, BrokerError> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| BrokerError::CreateDir(cfg.data_dir.display().to_string(), e))?;
        let ids = EventIds::load(&cfg.data_dir)?;
        let router = Router::new(cfg.shards, ids, cfg.ring);
        let (access_version, _) = tokio::sync::watch::channel(0);
        Ok(Broker {
            shared: Arc::new(Shared {
                router,
                access: ArcSwap::from_pointee(AccessTable::default()),
                access_version,
                metrics: Metrics::new(),
                stream_counts: Default::default(),
                ingest_up: Default::default(),
                following: Default::default(),
                probes: Default::default(),
                cfg,
            }),
        })
    }

    /// The metrics registry, for other components to register into.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The version of the permission table in force.
    pub fn access_version(&self) -> u64 {
        self.shared.access.load().version
    }

    /// Binds the QUIC listener (creating the certificate on first start) and
    /// starts accepting devices.
    pub fn start_ingest(&self) -> Result<Listener, BrokerError> {
        let identity = tls::load_or_create(&self.shared.cfg.data_dir)?;
        let server = identity.server_config()?;
        let addr = self.shared.cfg.quic_addr;
        let socket = udp_socket(addr).map_err(|e| BrokerError::Bind(addr, e))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| BrokerError::Bind(addr, e))?;
        let bound = endpoint
            .local_addr()
            .map_err(|e| BrokerError::Bind(addr, e))?;
        tokio::spawn(ingest::accept_loop(endpoint.clone(), self.shared.clone()));
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(READINESS_REFRESH);
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                readiness(&shared).await;
            }
        });
        self.shared
            .ingest_up
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(Listener {
            shared: self.shared.clone(),
            addr: bound,
            fingerprint: identity.fingerprint,
            generated_cert: identity.generated,
            cert_path: self.shared.cfg.data_dir.join("cert.pem"),
            endpoint,
        })
    }

    /// Serves HTTP/1.1 stream requests directly on new connections and
    /// hands everything else back for hyper (see [`conn`]).
    pub fn stream_acceptor(&self, head_timeout: Duration) -> conn::StreamAcceptor {
        conn::StreamAcceptor {
            shared: self.shared.clone(),
            head_timeout,
        }
    }

    /// The broker's HTTP surface: `/v1/stream/telemetry`, `/metrics`, `/healthz`.
    pub fn routes(&self) -> axum::Router {
        let stream = axum::Router::new()
            .route(
                "/v1/stream/telemetry",
                get(stream::stream_telemetry).fallback(stream::method_not_allowed),
            )
            .layer(self.cors());
        axum::Router::new()
            .merge(stream)
            .route("/metrics", get(metrics_handler))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(self.shared.clone())
    }
}

impl Broker {
    /// Adds a check `/readyz` runs (e.g. "database").
    pub fn add_readiness_check(&self, name: &'static str, probe: ReadinessProbe) {
        self.shared.probes.lock().push((name, probe));
    }

    /// Follows the admin's permission feed in the background (separate
    /// processes); see [`feed`].
    pub fn follow_feed(&self, admin_url: String, cluster_key: String) {
        self.shared
            .following
            .store(true, std::sync::atomic::Ordering::Release);
        tokio::spawn(feed::follow(self.clone(), admin_url, cluster_key));
    }

    /// CORS for browsers' EventSource/WebSocket on the configured origins.
    fn cors(&self) -> tower_http::cors::CorsLayer {
        use axum::http::{header, HeaderValue, Method};
        let origins: Vec<HeaderValue> = self
            .shared
            .cfg
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET])
            .allow_headers([
                header::AUTHORIZATION,
                header::ACCEPT,
                "last-event-id".parse().expect("valid header name"),
            ])
            .max_age(Duration::from_secs(600))
    }
}

impl AccessSink for Broker {
    fn install(&self, snapshot: Snapshot) -> Result<(), SnapshotError> {
        let table = AccessTable::compile(&snapshot)?;
        let current = self.shared.access.load();
        if table.version <= current.version && current.version != 0 {
            return Ok(());
        }
        self.shared.access.store(Arc::new(table));
        self.shared
            .metrics
            .feed_version
            .set(snapshot.version as i64);
        self.shared.access_version.send_replace(snapshot.version);
        Ok(())
    }
}

/// Socket buffer the QUIC listener asks the kernel for. Many devices
/// sending at once overflow the default (~208 KiB) receive buffer and every
/// dropped datagram costs a QUIC loss-recovery round; the kernel caps the
/// request at `net.core.rmem_max` / `wmem_max` (raise those for large fleets).
const UDP_BUFFER: usize = 8 * 1024 * 1024;

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a smaller buffer still works.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// `/readyz`: 200 when the broker can do its job, 503 naming what is not
/// ready. A disconnected feed is reported but does not fail readiness: the
/// broker keeps serving with the last table it had.
async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let (ready, checks) = readiness(&shared).await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "ready": ready, "checks": checks })),
    )
}

/// How often `sensegate_ready` is re-evaluated.
const READINESS_REFRESH: Duration = Duration::from_secs(5);

/// Evaluates every readiness check; also updates `sensegate_ready`.
async fn readiness(shared: &Shared) -> (bool, serde_json::Map<String, serde_json::Value>) {
    use std::sync::atomic::Ordering;
    let mut ready = true;
    let mut checks = serde_json::Map::new();
    let version = shared.access.load().version;
    let mut check = |name: &str, result: Result<String, String>| {
        let value = match result {
            Ok(s) => s,
            Err(e) => {
                ready = false;
                e
            }
        };
        checks.insert(name.to_owned(), value.into());
    };
    check(
        "permissions",
        if version > 0 {
            Ok(format!("ok (version {version})"))
        } else {
            Err("no permission table loaded yet".into())
        },
    );
    check(
        "quic",
        if shared.ingest_up.load(Ordering::Acquire) {
            Ok("ok".into())
        } else {
            Err("QUIC listener not running".into())
        },
    );
    if shared.following.load(Ordering::Acquire) {
        let connected = shared.metrics.feed_connected.get() == 1;
        check(
            "feed",
            Ok(if connected {
                "ok".into()
            } else {
                format!("disconnected from the admin; serving version {version}")
            }),
        );
    }
    let probes: Vec<_> = shared.probes.lock().clone();
    for (name, probe) in probes {
        check(name, probe().await.map(|()| "ok".into()));
    }
    shared.metrics.ready.set(i64::from(ready));
    (ready, checks)
}

async fn metrics_handler(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
