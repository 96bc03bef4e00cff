//! SenseGate's control plane: tenants, devices, device groups, external
//! applications and their OAuth2 client credentials, access-token issuance,
//! the admin REST API, storage, and the permission feed pushed into the
//! broker.
//!
//! # Invariants
//!
//! - Every mutation runs in one SQL transaction that also bumps the feed
//!   version (`feed_state`), and the resulting full [`Snapshot`] is installed
//!   into the broker's [`AccessSink`] **before** the HTTP response is sent,
//!   under one async mutex, so snapshots reach the broker in version order and
//!   a client that got its answer sees the change on the data plane.
//! - Secrets (client secrets, device ingest keys, admin keys) carry 256 bits
//!   from the OS CSPRNG, are shown once, stored as SHA-256 only, compared in
//!   constant time and never logged.
//! - The token endpoint reads no SQL: it uses an in-memory view of the
//!   clients and the active signing key built with each installed snapshot
//!   (so it signs only with keys the broker knows); another process's
//!   changes arrive by polling the feed version. Its audit entries are
//!   written in batches by a background writer that audit reads flush.
//! - Every API call is scoped to the tenant of the admin key that made it.
//! - The schema is portable: the same SQL runs on SQLite and PostgreSQL
//!   through sqlx's `Any` driver.
#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use sensegate_broker::access::{AccessSink, Snapshot};

mod api;
mod apps;
mod audit;
mod db;
mod demo;
mod devices;
mod error;
mod feed;
mod groups;
mod keys;
mod lifecycle;
mod limiter;
mod metrics;
mod secret;
mod tenants;
mod token;
mod ui;
mod validate;

pub use audit::AuditEntry;
pub use error::AdminError;
pub use tenants::{AdminKeyInfo, TenantInfo};

/// How the admin is set up. Built by the binary from its flags/environment.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `sqlite://<data_dir>/sensegate.db?mode=rwc` (the embedded default) or
    /// `postgres://…`.
    pub database_url: String,
    /// The public base URL, e.g. `http://127.0.0.1:8080`: the tokens' `iss`,
    /// and the base of the URLs in the discovery document.
    pub issuer: String,
    /// Lifetime of an access token (3600 s by default).
    pub token_ttl: Duration,
    /// On first start, the admin key to create (from
    /// `SENSEGATE_BOOTSTRAP_ADMIN_KEY`); a random one is generated if `None`.
    pub bootstrap_admin_key: Option<String>,
    /// How often to check whether another process sharing the database
    /// changed it (`feed_state.version` ahead of what this process
    /// published) and, if so, rebuild and republish the snapshot and the
    /// token endpoint's view. [`AdminConfig::DEFAULT_FEED_POLL`] by default;
    /// zero turns the poll off (for a process that serves no tokens and no
    /// broker, such as the CLI).
    pub feed_poll: Duration,
}

impl AdminConfig {
    /// The default of [`AdminConfig::feed_poll`]: one second.
    pub const DEFAULT_FEED_POLL: Duration = Duration::from_secs(1);
}

/// The control plane. Cheap to clone: every clone shares one state.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

struct Inner {
    pool: sqlx::AnyPool,
    /// SQLite needs `BEGIN IMMEDIATE` for write transactions (see
    /// [`Admin::begin_write`]).
    sqlite: bool,
    cfg: AdminConfig,
    sink: Arc<dyn AccessSink>,
    /// Serialises mutations in this process, from their first statement to
    /// their commit. Held across `.await` (it is async).
    changes: tokio::sync::Mutex<()>,
    /// Serialises "build snapshot, install" so snapshots are installed in
    /// version order; a change waits here after its commit (see
    /// [`feed::Change::commit`]).
    feed: tokio::sync::Mutex<()>,
    /// What the token endpoint reads per request (clients and the active
    /// signing key), built with the last installed snapshot; read without
    /// a lock.
    view: arc_swap::ArcSwap<feed::TokenView>,
    /// Version of the last snapshot installed into `sink`: the feed poll
    /// republishes when the database is ahead of it.
    published_version: std::sync::atomic::AtomicU64,
    /// The feed poll task, stopped when the admin is dropped.
    poll: parking_lot::Mutex<Option<tokio::task::AbortHandle>>,
    limiter: limiter::Limiter,
    /// Writes token requests' audit rows in batches.
    audit: audit::Writer,
    /// Set once the composing binary registers metrics.
    metrics: std::sync::OnceLock<metrics::AdminMetrics>,
}

/// An [`AccessSink`] that drops every snapshot: for a process that changes
/// the database without serving the data plane (the `sensegate admin …`
/// CLI). A running server picks such changes up within its feed poll
/// ([`AdminConfig::feed_poll`]), and signs only with keys it has published.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardSink;

impl AccessSink for DiscardSink {
    fn install(&self, _snapshot: Snapshot) -> Result<(), sensegate_broker::access::SnapshotError> {
        Ok(())
    }
}

/// Fresh credentials of the demo setup, for the binary to print.
#[derive(Debug, Clone)]
pub struct DemoSeed {
    /// The demo application's Client ID.
    pub client_id: String,
    /// The demo application's Client Secret (just rotated).
    pub client_secret: String,
    /// `(device id, ingest key)` of each demo device (keys just rotated).
    pub devices: Vec<(String, String)>,
}

impl Admin {
    /// Connects, runs the embedded migrations, and on an empty database
    /// creates tenant `default` and one admin key (the configured bootstrap
    /// key, or a random one); creates the Ed25519 signing key if there is
    /// none; installs the first snapshot into `sink`.
    ///
    /// Returns the admin and, when a random admin key was generated now,
    /// that key (the caller prints it once: only its hash is stored).
    pub async fn open(
        cfg: AdminConfig,
        sink: Arc<dyn AccessSink>,
    ) -> Result<(Admin, Option<String>), AdminError> {
        if cfg.token_ttl.as_secs() == 0 {
            return Err(AdminError::Config(
                "token TTL must be at least one second".into(),
            ));
        }
        let pool = db::connect(&cfg.database_url).await?;
        let audit = audit::Writer::start(&cfg.database_url).await?;
        let admin = Admin {
            inner: Arc::new(Inner {
                pool,
                sqlite: db::is_sqlite(&cfg.database_url),
                cfg,
                sink,
                changes: tokio::sync::Mutex::new(()),
                feed: tokio::sync::Mutex::new(()),
                view: arc_swap::ArcSwap::from_pointee(feed::TokenView::default()),
                published_version: std::sync::atomic::AtomicU64::new(0),
                poll: parking_lot::Mutex::new(None),
                limiter: limiter::Limiter::default(),
                audit,
                metrics: std::sync::OnceLock::new(),
            }),
        };
        let generated = admin.bootstrap().await?;
        admin.start_feed_poll();
        Ok((admin, generated))
    }

    /// The axum router for the admin API (`/api/v1/…`), the token endpoint
    /// (`/connect/token`) and the discovery documents
    /// (`/.well-known/jwks.json`, `/.well-known/openid-configuration`),
    /// and the operator's web page (`/admin/`, embedded in the binary).
    ///
    /// The token endpoint's per-address brute-force limit needs the peer
    /// address: serve with
    /// `into_make_service_with_connect_info::<std::net::SocketAddr>()`.
    pub fn router(&self) -> axum::Router {
        api::router(self.clone()).merge(ui::routes())
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), AdminError> {
        sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
        Ok(())
    }

    /// Waits until every audit entry of a token request answered so far is
    /// in the database (they are written in batches, in the background).
    /// Audit reads do this themselves; dropping the last clone of the admin
    /// writes whatever is pending too.
    pub async fn flush_audit(&self) -> Result<(), AdminError> {
        self.inner.audit.flush().await
    }

    /// The full current permission snapshot, read from the database.
    pub async fn snapshot(&self) -> Result<Snapshot, AdminError> {
        let mut conn = self.inner.pool.acquire().await?;
        feed::build(&mut conn, self.now_ms(), self.ttl_ms()).await
    }

    /// Starts a write transaction. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`): a deferred transaction that reads first and
    /// writes later fails outright (`SQLITE_BUSY_SNAPSHOT`, no retry) if
    /// another connection — a token request's audit row — committed in
    /// between, whereas waiting for the lock up front is covered by
    /// `busy_timeout`.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, AdminError> {
        Ok(if self.inner.sqlite {
            self.inner.pool.begin_with("BEGIN IMMEDIATE").await?
        } else {
            self.inner.pool.begin().await?
        })
    }

    fn now_ms(&self) -> i64 {
        now_ms()
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.inner.cfg.token_ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(poll) = self.poll.get_mut().take() {
            poll.abort();
        }
    }
}

/// Milliseconds since the Unix epoch, from the wall clock.
pub(crate) fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
