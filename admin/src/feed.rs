//! The permission feed: every change becomes a full [`Snapshot`] installed
//! into the broker before the change is acknowledged.
//!
//! Full snapshots (not deltas) keep the in-process feed trivially correct:
//! the broker swaps tables atomically, and admin changes are rare next to
//! data-plane traffic.
//!
//! The same read also yields the token endpoint's [`TokenView`] (clients by
//! Client ID, the active signing key), swapped in after the snapshot is
//! installed. Changes made by another process on the same database are
//! picked up by a poll of the feed version ([`Admin::catch_up`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sensegate_broker::access::{
    ApplicationEntry, DeviceEntry, GroupEntry, Snapshot, VerificationKey,
};
use sqlx::{AnyConnection, Row};

use crate::apps::Client;
use crate::db::{self, flag};
use crate::error::AdminError;
use crate::keys::Signer;
use crate::Admin;

/// One mutation in flight: holds the change lock and an open transaction.
/// [`Change::commit`] bumps the feed version in the same transaction,
/// commits, and returns once a snapshot at least that new is installed.
pub(crate) struct Change<'a> {
    guard: tokio::sync::MutexGuard<'a, ()>,
    tx: sqlx::Transaction<'static, sqlx::Any>,
    admin: &'a Admin,
}

impl Change<'_> {
    /// The transaction's connection.
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Commits the change and publishes it to the broker.
    ///
    /// The change lock is let go at the commit, before the snapshot is
    /// built: changes that commit while one snapshot is being built are
    /// all published by the next build (group commit), so provisioning
    /// N devices concurrently costs far fewer than N full snapshots.
    pub(crate) async fn commit(self) -> Result<(), AdminError> {
        let Change {
            guard,
            mut tx,
            admin,
        } = self;
        let version = db::bump_version(&mut tx).await?;
        tx.commit().await?;
        drop(guard);
        admin
            .publish_through(u64::try_from(version).unwrap_or(0))
            .await
    }
}

impl Admin {
    /// Starts a mutation (see [`Change`]).
    pub(crate) async fn change(&self) -> Result<Change<'_>, AdminError> {
        let guard = self.inner.changes.lock().await;
        let tx = self.begin_write().await?;
        Ok(Change {
            guard,
            tx,
            admin: self,
        })
    }

    /// Returns once a snapshot of at least `version` is installed: at once
    /// if one is, after the build in progress if that covered it, else
    /// after building and installing the current one.
    async fn publish_through(&self, version: u64) -> Result<(), AdminError> {
        if self.inner.published_version.load(Ordering::Acquire) >= version {
            return Ok(());
        }
        let _guard = self.inner.feed.lock().await;
        let published = self.inner.published_version.load(Ordering::Acquire);
        if published >= version {
            return Ok(());
        }
        self.publish_if(published).await.map(|_| ())
    }

    /// Builds and installs the current snapshot, and the token endpoint's
    /// view from the same read, unless the database's version is not above
    /// `floor` (nothing new to publish). Returns whether it published. The
    /// caller holds the feed lock.
    async fn publish_if(&self, floor: u64) -> Result<bool, AdminError> {
        let built = {
            let mut conn = self.inner.pool.acquire().await?;
            build_all(&mut conn, self.now_ms(), self.ttl_ms()).await?
        };
        let Built {
            snapshot,
            clients,
            active_key,
        } = built;
        let version = snapshot.version;
        if version <= floor {
            return Ok(false);
        }
        let previous = self.inner.view.load_full();
        let signer = match active_key {
            None => None,
            // Never sign with a key the snapshot does not carry (it always
            // does: both come from one consistent read).
            Some((kid, _)) if !snapshot.verification_keys.iter().any(|k| k.kid == kid) => {
                tracing::error!(%kid, "active signing key missing from the snapshot");
                previous.signer.clone()
            }
            Some((kid, _)) if previous.signer.as_ref().is_some_and(|s| s.kid == kid) => {
                previous.signer.clone()
            }
            Some((kid, pkcs8)) => match Signer::decode(kid.clone(), &pkcs8) {
                Ok(signer) => Some(Arc::new(signer)),
                Err(e) => {
                    tracing::error!(%kid, error = %e, "active signing key does not decode");
                    None
                }
            },
        };
        if let Some(m) = self.metrics() {
            m.observe(&snapshot, self.now_ms());
        }
        if let Err(e) = self.inner.sink.install(snapshot) {
            // The database changed all the same: refuse what it refuses now,
            // but sign only with a key the broker already knows. The poll
            // retries the install (the published version stayed behind).
            self.inner.view.store(Arc::new(TokenView {
                clients,
                signer: previous.signer.clone(),
            }));
            return Err(e.into());
        }
        self.inner
            .view
            .store(Arc::new(TokenView { clients, signer }));
        self.inner
            .published_version
            .store(version, Ordering::Release);
        tracing::debug!(version, "permission snapshot installed");
        Ok(true)
    }

    /// Republishes if another process sharing the database changed it
    /// (its version is ahead of the last one installed here). One cheap
    /// read when nothing changed.
    pub(crate) async fn catch_up(&self) -> Result<bool, AdminError> {
        let db_version = {
            let mut conn = self.inner.pool.acquire().await?;
            current_version(&mut conn).await?
        };
        let published = self.inner.published_version.load(Ordering::Acquire);
        if db_version <= published {
            return Ok(false);
        }
        let _guard = self.inner.feed.lock().await;
        // Re-read under the lock: a change of our own may have published it.
        let published = self.inner.published_version.load(Ordering::Acquire);
        let done = self.publish_if(published).await?;
        if done {
            tracing::info!(
                version = self.inner.published_version.load(Ordering::Acquire),
                "republished a change made by another process"
            );
        }
        Ok(done)
    }

    /// Starts the feed poll ([`crate::AdminConfig::feed_poll`]); it holds
    /// the admin weakly and is aborted when the admin is dropped.
    pub(crate) fn start_feed_poll(&self) {
        let every = self.inner.cfg.feed_poll;
        if every.is_zero() {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else {
                    break;
                };
                let admin = Admin { inner };
                if let Err(e) = admin.catch_up().await {
                    tracing::warn!(error = %e, "feed poll failed");
                }
            }
        });
        *self.inner.poll.lock() = Some(task.abort_handle());
    }
}

/// What the token endpoint needs per request, built in the same read as
/// the snapshot it was installed with, so a change is visible to it by the
/// time the change is acknowledged.
#[derive(Default)]
pub(crate) struct TokenView {
    /// Applications by Client ID.
    pub(crate) clients: HashMap<String, Arc<Client>>,
    /// The active signing key, `None` if there is none (or it does not
    /// decode): tokens are then refused with a server error.
    pub(crate) signer: Option<Arc<Signer>>,
}

/// Everything one read of the database yields.
pub(crate) struct Built {
    pub(crate) snapshot: Snapshot,
    pub(crate) clients: HashMap<String, Arc<Client>>,
    /// `(kid, base64 PKCS#8)` of the active signing key.
    pub(crate) active_key: Option<(String, String)>,
}

async fn current_version(conn: &mut AnyConnection) -> Result<u64, AdminError> {
    let v = sqlx::query("SELECT version FROM feed_state WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?
        .try_get::<i64, _>(0)?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// The permission snapshot alone (see [`build_all`]).
pub(crate) async fn build(
    conn: &mut AnyConnection,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Snapshot, AdminError> {
    Ok(build_all(conn, now_ms, ttl_ms).await?.snapshot)
}

/// Reads the whole permission state in one transaction: the snapshot, the
/// token endpoint's clients (with each application's resolved devices) and
/// the active signing key.
pub(crate) async fn build_all(
    conn: &mut AnyConnection,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Built, AdminError> {
    let postgres = conn.backend_name().eq_ignore_ascii_case("postgresql");
    let mut tx = sqlx::Connection::begin(conn).await?;
    if postgres {
        // One consistent view for every statement below (READ COMMITTED
        // would let another process's commit land between them, e.g. a
        // rotation between the verification keys and the active key).
        // SQLite's read transaction is a consistent snapshot already.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
    }
    let version = current_version(&mut tx).await?;
    let verification_keys = crate::keys::verification_keys(&mut tx, now_ms, ttl_ms)
        .await?
        .into_iter()
        .map(|(kid, ed25519_x)| VerificationKey { kid, ed25519_x })
        .collect();

    let mut devices = Vec::new();
    for r in
        sqlx::query("SELECT tenant_id, id, key_sha256, enabled FROM devices ORDER BY tenant_id, id")
            .fetch_all(&mut *tx)
            .await?
    {
        devices.push(DeviceEntry {
            tenant: r.try_get("tenant_id")?,
            id: r.try_get("id")?,
            key_sha256: r.try_get("key_sha256")?,
            enabled: flag(&r, "enabled")?,
        });
    }

    let mut members: HashMap<(String, String), Vec<String>> = HashMap::new();
    for r in sqlx::query(
        "SELECT tenant_id, group_id, device_id FROM group_members \
         ORDER BY tenant_id, group_id, device_id",
    )
    .fetch_all(&mut *tx)
    .await?
    {
        members
            .entry((r.try_get("tenant_id")?, r.try_get("group_id")?))
            .or_default()
            .push(r.try_get("device_id")?);
    }
    let mut groups = Vec::new();
    for r in sqlx::query("SELECT tenant_id, id FROM device_groups ORDER BY tenant_id, id")
        .fetch_all(&mut *tx)
        .await?
    {
        let tenant: String = r.try_get("tenant_id")?;
        let id: String = r.try_get("id")?;
        let devices = members
            .get(&(tenant.clone(), id.clone()))
            .cloned()
            .unwrap_or_default();
        groups.push(GroupEntry {
            tenant,
            id,
            devices,
        });
    }

    let mut app_devices: HashMap<String, Vec<String>> = HashMap::new();
    for r in sqlx::query("SELECT app_id, device_id FROM application_devices ORDER BY device_id")
        .fetch_all(&mut *tx)
        .await?
    {
        app_devices
            .entry(r.try_get("app_id")?)
            .or_default()
            .push(r.try_get("device_id")?);
    }
    let mut app_groups: HashMap<String, Vec<String>> = HashMap::new();
    for r in sqlx::query("SELECT app_id, group_id FROM application_groups ORDER BY group_id")
        .fetch_all(&mut *tx)
        .await?
    {
        app_groups
            .entry(r.try_get("app_id")?)
            .or_default()
            .push(r.try_get("group_id")?);
    }
    let mut applications = Vec::new();
    let mut clients = HashMap::new();
    for r in sqlx::query(
        "SELECT tenant_id, id, client_id, secret_sha256, enabled, expires_at, \
         include_anomalies, secret_generation FROM applications ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await?
    {
        let id: String = r.try_get("id")?;
        let tenant: String = r.try_get("tenant_id")?;
        let client_id: String = r.try_get("client_id")?;
        let direct = app_devices.remove(&id).unwrap_or_default();
        let via = app_groups.remove(&id).unwrap_or_default();
        // What the token's `devices` claim lists: direct devices plus the
        // current members of its groups, sorted, each once.
        let mut resolved: BTreeSet<&str> = direct.iter().map(String::as_str).collect();
        for g in &via {
            if let Some(m) = members.get(&(tenant.clone(), g.clone())) {
                resolved.extend(m.iter().map(String::as_str));
            }
        }
        let client = Client {
            tenant: tenant.clone(),
            id: id.clone(),
            secret_sha256: r.try_get("secret_sha256")?,
            enabled: flag(&r, "enabled")?,
            expires_at_ms: r.try_get("expires_at")?,
            include_anomalies: flag(&r, "include_anomalies")?,
            secret_generation: u64::try_from(r.try_get::<i64, _>("secret_generation")?)
                .unwrap_or(0),
            devices: resolved.into_iter().map(str::to_string).collect(),
        };
        applications.push(ApplicationEntry {
            tenant,
            client_id: client_id.clone(),
            enabled: client.enabled,
            expires_at_ms: client.expires_at_ms,
            include_anomalies: client.include_anomalies,
            devices: direct,
            groups: via,
            secret_generation: client.secret_generation,
            id,
        });
        clients.insert(client_id, Arc::new(client));
    }
    let active_key = sqlx::query(
        "SELECT kid, private_pkcs8 FROM signing_keys WHERE retired_at IS NULL \
         ORDER BY created_at DESC, kid LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| Ok::<_, sqlx::Error>((r.try_get("kid")?, r.try_get("private_pkcs8")?)))
    .transpose()?;
    tx.commit().await?;
    Ok(Built {
        snapshot: Snapshot {
            version,
            verification_keys,
            devices,
            groups,
            applications,
        },
        clients,
        active_key,
    })
}
