//! The three process shapes: `serve` (broker + admin in one process),
//! `broker` (data plane following a remote admin's feed) and `admin serve`
//! (control plane serving the feed). They share flag groups, each flag also
//! read from the environment variable named.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sensegate_admin::{Admin, AdminConfig};
use sensegate_broker::access::AccessSink;
use sensegate_broker::feed::FeedHub;
use sensegate_broker::router::RingConfig;
use sensegate_broker::subscriber::OverflowPolicy;
use sensegate_broker::{Broker, BrokerConfig, Listener, ReadinessProbe};
use tracing::info;

/// Where a process listens and keeps its state.
#[derive(Debug, clap::Args)]
pub(crate) struct NodeArgs {
    /// HTTP address: admin API, token endpoint, streams, /metrics, /healthz, /readyz.
    #[arg(long, env = "SENSEGATE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Directory for all state (SQLite database, certificate, boot epoch).
    #[arg(long, env = "SENSEGATE_DATA_DIR", default_value = "./sensegate-data")]
    pub(crate) data_dir: PathBuf,
    /// Most HTTP connections served at once; further ones wait in the
    /// kernel's accept queue. Keep it below the open-file limit so a flood
    /// of idle connections cannot starve the process of descriptors.
    #[arg(long, env = "SENSEGATE_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds an HTTP connection may go without a request in flight (an
    /// open stream is one) before it is closed, HTTP/2 included, so idle
    /// connections cannot hold `--max-connections` slots.
    #[arg(long, env = "SENSEGATE_HTTP_IDLE_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    http_idle_timeout: u64,
}

/// The admin's storage.
#[derive(Debug, clap::Args)]
pub(crate) struct StoreArgs {
    /// Database URL; defaults to a SQLite file in the data dir.
    /// `postgres://…` selects PostgreSQL.
    #[arg(long, env = "SENSEGATE_DATABASE_URL")]
    database_url: Option<String>,
    /// Milliseconds between checks for changes other admin processes made
    /// to the same database (they then reach this process's broker feed
    /// and token endpoint); 0 turns the check off.
    #[arg(long, env = "SENSEGATE_FEED_POLL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    feed_poll_ms: u64,
}

impl StoreArgs {
    /// Like [`StoreArgs::prepare`] for a database that must exist already
    /// (the management commands): a mistyped `--data-dir` would otherwise
    /// create and bootstrap a new database and seem to succeed.
    pub(crate) fn existing(&self, data_dir: &std::path::Path) -> anyhow::Result<String> {
        let db = data_dir.join("sensegate.db");
        if self.database_url.is_none() && !db.exists() {
            anyhow::bail!(
                "no database at {}: pass the server's --data-dir (or --database-url) \
                 before the command's verb, e.g. `sensegate admin key --data-dir DIR list`",
                db.display()
            );
        }
        self.prepare(data_dir)
    }

    /// The database URL, after making sure the data dir (mode 0700) and the
    /// default SQLite file and its journals (mode 0600) are private: the
    /// database holds the token signing key.
    pub(crate) fn prepare(&self, data_dir: &std::path::Path) -> anyhow::Result<String> {
        private_dir(data_dir)?;
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        let db = data_dir.join("sensegate.db");
        for suffix in ["", "-wal", "-shm"] {
            let mut path = db.clone().into_os_string();
            path.push(suffix);
            private_file(std::path::Path::new(&path), suffix.is_empty())?;
        }
        Ok(format!("sqlite://{}?mode=rwc", db.display()))
    }
}

/// Creates `dir` (and parents) if needed and restricts it to its owner.
pub(crate) fn private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    Ok(())
}

/// Restricts `path` to its owner, creating it empty first if `create`.
fn private_file(path: &std::path::Path, create: bool) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        if create && !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
        }
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {}", path.display()))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, create);
    Ok(())
}

/// Token issuance.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// Token issuer (`iss`); defaults to `http://<bound http address>`.
    #[arg(long, env = "SENSEGATE_ISSUER")]
    issuer: Option<String>,
    /// Access-token lifetime in seconds.
    #[arg(long, env = "SENSEGATE_TOKEN_TTL", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) token_ttl: u64,
}

impl TokenArgs {
    /// The configured issuer, or this process's own base URL.
    fn issuer_for(&self, http_addr: SocketAddr) -> String {
        self.issuer
            .clone()
            .unwrap_or_else(|| format!("http://{http_addr}"))
    }
}

/// The data plane.
#[derive(Debug, clap::Args)]
pub(crate) struct BrokerArgs {
    /// UDP address of the QUIC device listener.
    #[arg(long, env = "SENSEGATE_QUIC_ADDR", default_value = "127.0.0.1:4433")]
    quic_addr: SocketAddr,
    /// Seconds of silence before a stream gets a keep-alive (SSE comment, WebSocket ping).
    #[arg(long, env = "SENSEGATE_HEARTBEAT", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    heartbeat: u64,
    /// Events kept per device for `Last-Event-ID` resume.
    #[arg(long, env = "SENSEGATE_RING_EVENTS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    ring_events: u64,
    /// Seconds an event stays resumable.
    #[arg(long, env = "SENSEGATE_RING_AGE", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    ring_age: u64,
    /// MiB all devices' replay rings may take together; past it the oldest
    /// events go first, whichever device sent them.
    #[arg(long, env = "SENSEGATE_RING_MEMORY_MIB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    ring_memory_mib: u64,
    /// Events a stream's queue holds before the slow-consumer policy applies.
    #[arg(long, env = "SENSEGATE_SUBSCRIBER_QUEUE", default_value_t = 8192, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    subscriber_queue: u64,
    /// What a stream whose queue overflows gets: drop the oldest events and
    /// send a `gap` event, or be disconnected (after the `gap` event).
    #[arg(
        long,
        env = "SENSEGATE_SLOW_CONSUMER",
        value_enum,
        default_value = "drop-oldest"
    )]
    slow_consumer: SlowConsumer,
    /// Concurrent streams one application may hold (over it: 429).
    #[arg(long, env = "SENSEGATE_MAX_STREAMS_PER_APP", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_streams_per_app: u64,
    /// Browser origin allowed to open streams (CORS); repeat or comma-separate.
    #[arg(long, env = "SENSEGATE_CORS_ORIGINS", value_delimiter = ',')]
    cors_origin: Vec<String>,
}

/// The slow-consumer policy, as spelled on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SlowConsumer {
    DropOldest,
    Disconnect,
}

impl BrokerArgs {
    fn config(&self, data_dir: PathBuf, issuer: String) -> BrokerConfig {
        let mut cfg = BrokerConfig::new(data_dir, self.quic_addr, issuer);
        cfg.heartbeat = Duration::from_secs(self.heartbeat);
        cfg.ring = RingConfig {
            max_events: self.ring_events as usize,
            max_age: Duration::from_secs(self.ring_age),
            max_bytes: (self.ring_memory_mib as usize).saturating_mul(1 << 20),
        };
        cfg.subscriber_queue = self.subscriber_queue as usize;
        cfg.overflow = match self.slow_consumer {
            SlowConsumer::DropOldest => OverflowPolicy::DropOldest,
            SlowConsumer::Disconnect => OverflowPolicy::Disconnect,
        };
        cfg.max_streams_per_app = self.max_streams_per_app as usize;
        cfg.cors_origins = self.cors_origin.clone();
        cfg
    }
}

/// Flags of `sensegate serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    token: TokenArgs,
    #[command(flatten)]
    broker: BrokerArgs,
    /// Also seed a demo tenant setup and run simulated devices.
    #[arg(long, env = "SENSEGATE_DEMO")]
    demo: bool,
}

/// Flags of `sensegate broker`.
#[derive(Debug, clap::Args)]
pub(crate) struct BrokerProcessArgs {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    broker: BrokerArgs,
    /// Base URL of the admin whose permission feed to follow.
    #[arg(long, env = "SENSEGATE_ADMIN_URL")]
    admin_url: String,
    /// Shared secret the admin's feed endpoint requires (16+ visible ASCII
    /// characters, no spaces).
    #[arg(long, env = "SENSEGATE_CLUSTER_KEY", hide_env_values = true, value_parser = cluster_key)]
    cluster_key: String,
    /// Expected token issuer (`iss`); defaults to the admin URL.
    #[arg(long, env = "SENSEGATE_ISSUER")]
    issuer: Option<String>,
}

/// Flags of `sensegate admin serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct AdminServeArgs {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    token: TokenArgs,
    /// Shared secret brokers present to follow the permission feed (16+
    /// visible ASCII characters, no spaces).
    #[arg(long, env = "SENSEGATE_CLUSTER_KEY", hide_env_values = true, value_parser = cluster_key)]
    cluster_key: String,
}

/// A cluster key travels in an `Authorization` header: an empty one (an
/// unset shell variable) or one with spaces could never match, and the
/// broker would retry for ever against an admin that refuses it.
fn cluster_key(s: &str) -> Result<String, String> {
    if s.len() < 16 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "must be at least 16 visible ASCII characters without spaces \
             (e.g. CLUSTER_KEY=$(head -c 24 /dev/urandom | base64))"
                .into(),
        );
    }
    Ok(s.to_owned())
}

/// Binds the HTTP listener; returns it with its address.
async fn bind_http(addr: SocketAddr) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let http = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding HTTP on {addr}"))?;
    let bound = http.local_addr()?;
    Ok((http, bound))
}

async fn open_admin(
    store: &StoreArgs,
    token: &TokenArgs,
    data_dir: &std::path::Path,
    issuer: String,
    sink: Arc<dyn AccessSink>,
) -> anyhow::Result<Admin> {
    let (admin, generated_key) = Admin::open(
        AdminConfig {
            database_url: store.prepare(data_dir)?,
            issuer,
            token_ttl: Duration::from_secs(token.token_ttl),
            bootstrap_admin_key: std::env::var("SENSEGATE_BOOTSTRAP_ADMIN_KEY").ok(),
            feed_poll: Duration::from_millis(store.feed_poll_ms),
        },
        sink,
    )
    .await?;
    if let Some(key) = generated_key {
        println!("admin key (shown once, store it now): {key}");
    }
    Ok(admin)
}

fn database_probe(admin: &Admin) -> ReadinessProbe {
    let admin = admin.clone();
    Arc::new(move || {
        let admin = admin.clone();
        Box::pin(async move { admin.ping().await.map_err(|e| e.to_string()) })
    })
}

fn start_ingest(broker: &Broker) -> anyhow::Result<Listener> {
    let listener = broker.start_ingest()?;
    if listener.generated_cert {
        info!(path = %listener.cert_path.display(), "generated a self-signed QUIC certificate");
    }
    info!(sha256 = %listener.fingerprint, path = %listener.cert_path.display(), "QUIC certificate");
    Ok(listener)
}

/// `sensegate serve`: everything in one process.
pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (http, http_addr) = bind_http(args.node.http_addr).await?;
    let issuer = args.token.issuer_for(http_addr);
    let broker = Broker::new(
        args.broker
            .config(args.node.data_dir.clone(), issuer.clone()),
    )?;
    let admin = open_admin(
        &args.store,
        &args.token,
        &args.node.data_dir,
        issuer,
        Arc::new(broker.clone()),
    )
    .await?;
    broker.add_readiness_check("database", database_probe(&admin));
    admin.register_metrics(&broker.metrics().registry).await?;
    let listener = start_ingest(&broker)?;
    let app = broker.routes().merge(admin.router());
    println!("listening http={http_addr} quic={}", listener.addr);
    println!("web page: http://{http_addr}/admin/");
    if args.demo {
        crate::demo::start(&admin, http_addr, &listener).await?;
    }
    serve_until_signal(http, app, Some((&broker, &listener)), &args.node).await
}

/// `sensegate broker`: the data plane, following a remote admin.
pub(crate) async fn run_broker(args: BrokerProcessArgs) -> anyhow::Result<()> {
    let (http, http_addr) = bind_http(args.node.http_addr).await?;
    let issuer = args
        .issuer
        .clone()
        .unwrap_or_else(|| args.admin_url.trim_end_matches('/').to_owned());
    private_dir(&args.node.data_dir)?;
    let broker = Broker::new(args.broker.config(args.node.data_dir.clone(), issuer))?;
    broker.follow_feed(args.admin_url.clone(), args.cluster_key.clone());
    let listener = start_ingest(&broker)?;
    println!("listening http={http_addr} quic={}", listener.addr);
    serve_until_signal(
        http,
        broker.routes(),
        Some((&broker, &listener)),
        &args.node,
    )
    .await
}

/// `sensegate admin serve`: the control plane, serving the feed.
pub(crate) async fn run_admin(args: AdminServeArgs) -> anyhow::Result<()> {
    let (http, http_addr) = bind_http(args.node.http_addr).await?;
    let issuer = args.token.issuer_for(http_addr);
    let hub = FeedHub::new(None);
    let admin = open_admin(
        &args.store,
        &args.token,
        &args.node.data_dir,
        issuer,
        hub.clone(),
    )
    .await?;
    let registry = prometheus::Registry::new();
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    admin.register_metrics(&registry).await?;
    let ready = admin.clone();
    let app = admin
        .router()
        .merge(hub.routes(&args.cluster_key))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    prometheus::TextEncoder::new()
                        .encode_to_string(&registry.gather())
                        .unwrap_or_default()
                }
            }),
        )
        .route(
            "/readyz",
            axum::routing::get(move || {
                let admin = ready.clone();
                async move {
                    match admin.ping().await {
                        Ok(()) => (
                            axum::http::StatusCode::OK,
                            axum::Json(serde_json::json!({"ready": true, "checks": {"database": "ok"}})),
                        ),
                        Err(e) => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(serde_json::json!({"ready": false, "checks": {"database": e.to_string()}})),
                        ),
                    }
                }
            }),
        );
    println!("listening http={http_addr}");
    serve_until_signal(http, app, None, &args.node).await
}

/// How long a client may take to send a request's headers (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 and HTTP/2 (cleartext) until SIGINT/SIGTERM, with the
/// peer address in each request's extensions (the token endpoint throttles
/// per address), a header-read timeout and a connection cap; then stops the
/// QUIC listener and gives requests in flight [`SHUTDOWN_GRACE`].
async fn serve_until_signal(
    http: tokio::net::TcpListener,
    app: axum::Router,
    node: Option<(&Broker, &Listener)>,
    limits: &NodeArgs,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;
    use sensegate_broker::conn::Rewound;

    // A path no router owns gets a JSON 404 like the API's, not an empty body.
    let app = app.fallback(|| async {
        (
            hyper::StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "error": "not_found",
                "message": "no such path; the API is under /api/v1 (see /api/v1/openapi.json)",
            })),
        )
    });
    // The broker serves plain HTTP/1.1 stream requests itself.
    let streams = node.map(|(broker, _)| broker.stream_acceptor(HEADER_READ_TIMEOUT));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections as usize));
    let idle_timeout = Duration::from_secs(limits.http_idle_timeout);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p?,
            _ = &mut signal => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = http.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or similar: back off, keep serving.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        // The router is shared (cloning it is a reference count); only a
        // thin wrapper per connection adds the peer address and counts the
        // requests in flight until their response bodies are dropped.
        let activity = crate::idle::Activity::new();
        let service = {
            let (app, activity) = (app.clone(), activity.clone());
            TowerToHyperService::new(tower::service_fn(
                move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    let guard = activity.start();
                    let call = tower::ServiceExt::oneshot(app.clone(), req);
                    async move {
                        let res = call.await?;
                        if res.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                            guard.upgraded();
                        }
                        Ok::<_, std::convert::Infallible>(
                            res.map(|body| crate::idle::guard_body(body, guard)),
                        )
                    }
                },
            ))
        };
        let (builder, watcher, streams) = (builder.clone(), graceful.watcher(), streams.clone());
        tokio::spawn(async move {
            let io = match streams {
                Some(streams) => match streams.accept(stream).await {
                    Some(io) => io,
                    None => return drop(permit),
                },
                None => Rewound::from(stream),
            };
            let io = crate::idle::IdleIo::new(io, activity, idle_timeout);
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned();
            let _ = watcher.watch(conn).await;
            drop(permit);
        });
    }
    info!("shutting down");
    if let Some((_, l)) = node {
        l.close();
    }
    // Open streams never end by themselves: give requests in flight a moment.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    info!("stopped");
    Ok(())
}

/// How long in-flight HTTP requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::cluster_key;

    #[test]
    fn cluster_keys_must_survive_an_authorization_header() {
        assert!(cluster_key("").is_err(), "an unset shell variable");
        assert!(cluster_key("short").is_err());
        assert!(cluster_key("has a space in it, sixteen+").is_err());
        assert!(cluster_key("sg-test-cluster-key-0123456789abcdef").is_ok());
    }
}
