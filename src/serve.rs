//! `sensegate serve`: broker + admin in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sensegate_admin::{Admin, AdminConfig};
use sensegate_broker::router::RingConfig;
use sensegate_broker::subscriber::OverflowPolicy;
use sensegate_broker::{Broker, BrokerConfig};
use tracing::info;

/// Flags of `sensegate serve`; each also reads the environment variable named.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// HTTP address: admin API, token endpoint, streams, /metrics, /healthz.
    #[arg(long, env = "SENSEGATE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// UDP address of the QUIC device listener.
    #[arg(long, env = "SENSEGATE_QUIC_ADDR", default_value = "127.0.0.1:4433")]
    quic_addr: SocketAddr,
    /// Directory for all state (SQLite database, certificate, boot epoch).
    #[arg(long, env = "SENSEGATE_DATA_DIR", default_value = "./sensegate-data")]
    data_dir: PathBuf,
    /// Database URL; defaults to a SQLite file in the data dir.
    /// `postgres://…` selects PostgreSQL.
    #[arg(long, env = "SENSEGATE_DATABASE_URL")]
    database_url: Option<String>,
    /// Token issuer (`iss`); defaults to `http://<bound http address>`.
    #[arg(long, env = "SENSEGATE_ISSUER")]
    issuer: Option<String>,
    /// Access-token lifetime in seconds.
    #[arg(long, env = "SENSEGATE_TOKEN_TTL", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    token_ttl: u64,
    /// Seconds of silence before a stream gets a keep-alive comment.
    #[arg(long, env = "SENSEGATE_HEARTBEAT", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    heartbeat: u64,
    /// Events kept per device for `Last-Event-ID` resume.
    #[arg(long, env = "SENSEGATE_RING_EVENTS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    ring_events: u64,
    /// Seconds an event stays resumable.
    #[arg(long, env = "SENSEGATE_RING_AGE", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    ring_age: u64,
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
    /// Also seed a demo tenant setup and run simulated devices.
    #[arg(long, env = "SENSEGATE_DEMO")]
    demo: bool,
}

/// The slow-consumer policy, as spelled on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SlowConsumer {
    DropOldest,
    Disconnect,
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let http = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding HTTP on {}", args.http_addr))?;
    let http_addr = http.local_addr()?;
    let issuer = args
        .issuer
        .clone()
        .unwrap_or_else(|| format!("http://{http_addr}"));

    let mut broker_cfg = BrokerConfig::new(args.data_dir.clone(), args.quic_addr, issuer.clone());
    broker_cfg.heartbeat = Duration::from_secs(args.heartbeat);
    broker_cfg.ring = RingConfig {
        max_events: args.ring_events as usize,
        max_age: Duration::from_secs(args.ring_age),
    };
    broker_cfg.subscriber_queue = args.subscriber_queue as usize;
    broker_cfg.overflow = match args.slow_consumer {
        SlowConsumer::DropOldest => OverflowPolicy::DropOldest,
        SlowConsumer::Disconnect => OverflowPolicy::Disconnect,
    };
    broker_cfg.max_streams_per_app = args.max_streams_per_app as usize;
    broker_cfg.cors_origins = args.cors_origin.clone();
    let broker = Broker::new(broker_cfg)?;

    let database_url = args.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            args.data_dir.join("sensegate.db").display()
        )
    });
    let (admin, generated_key) = Admin::open(
        AdminConfig {
            database_url,
            issuer: issuer.clone(),
            token_ttl: Duration::from_secs(args.token_ttl),
            bootstrap_admin_key: std::env::var("SENSEGATE_BOOTSTRAP_ADMIN_KEY").ok(),
        },
        Arc::new(broker.clone()),
    )
    .await?;

    let listener = broker.start_ingest()?;
    if listener.generated_cert {
        info!(path = %listener.cert_path.display(), "generated a self-signed QUIC certificate");
    }
    info!(sha256 = %listener.fingerprint, path = %listener.cert_path.display(), "QUIC certificate");

    let app = broker.routes().merge(admin.router());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });

    // One line a script can parse, on stdout.
    println!("listening http={http_addr} quic={}", listener.addr);
    if let Some(key) = generated_key {
        println!("admin key (shown once, store it now): {key}");
    }
    if args.demo {
        crate::demo::start(&admin, http_addr, &listener).await?;
    }

    tokio::select! {
        result = &mut server => {
            result??;
            anyhow::bail!("HTTP server stopped unexpectedly");
        }
        _ = shutdown_signal() => {}
    }
    info!("shutting down");
    listener.close();
    let _ = stop_tx.send(());
    // Open streams never end by themselves: give requests in flight a moment.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
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
