//! The permission feed: every change becomes a full [`Snapshot`] installed
//! into the broker before the change is acknowledged.
//!
//! Full snapshots (not deltas) keep the in-process feed trivially correct:
//! the broker swaps tables atomically, and admin changes are rare next to
//! data-plane traffic.

use std::collections::HashMap;

use sensegate_broker::access::{
    ApplicationEntry, DeviceEntry, GroupEntry, Snapshot, VerificationKey,
};
use sqlx::{AnyConnection, Row};

use crate::db::{self, flag};
use crate::error::AdminError;
use crate::Admin;

/// One mutation in flight: holds the feed lock and an open transaction.
/// [`Change::commit`] bumps the feed version in the same transaction,
/// commits, and installs the resulting snapshot before returning.
pub(crate) struct Change<'a> {
    _guard: tokio::sync::MutexGuard<'a, ()>,
    tx: sqlx::Transaction<'static, sqlx::Any>,
    admin: &'a Admin,
}

impl Change<'_> {
    /// The transaction's connection.
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Commits the change and publishes it to the broker.
    pub(crate) async fn commit(self) -> Result<(), AdminError> {
        let Change {
            _guard,
            mut tx,
            admin,
        } = self;
        db::bump_version(&mut tx).await?;
        tx.commit().await?;
        admin.publish_locked().await
    }
}

impl Admin {
    /// Starts a mutation (see [`Change`]).
    pub(crate) async fn change(&self) -> Result<Change<'_>, AdminError> {
        let guard = self.inner.feed.lock().await;
        let tx = self.begin_write().await?;
        Ok(Change {
            _guard: guard,
            tx,
            admin: self,
        })
    }

    /// Builds and installs the current snapshot. The caller holds the feed
    /// lock.
    async fn publish_locked(&self) -> Result<(), AdminError> {
        let snapshot = {
            let mut conn = self.inner.pool.acquire().await?;
            build(&mut conn, self.now_ms(), self.ttl_ms()).await?
        };
        let kids = snapshot
            .verification_keys
            .iter()
            .map(|k| k.kid.clone())
            .collect();
        let version = snapshot.version;
        if let Some(m) = self.metrics() {
            m.observe(&snapshot, self.now_ms());
        }
        self.inner.sink.install(snapshot)?;
        *self.inner.published_kids.lock() = kids;
        tracing::debug!(version, "permission snapshot installed");
        Ok(())
    }

    /// Bumps the version and republishes without any other change: used at
    /// start and when a signing key appeared that the broker does not know.
    pub(crate) async fn republish(&self) -> Result<(), AdminError> {
        self.change().await?.commit().await
    }

    /// Whether the last installed snapshot carries `kid`.
    pub(crate) fn is_published(&self, kid: &str) -> bool {
        self.inner.published_kids.lock().iter().any(|k| k == kid)
    }
}

/// Reads the whole permission state in one transaction.
pub(crate) async fn build(
    conn: &mut AnyConnection,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Snapshot, AdminError> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let version = sqlx::query("SELECT version FROM feed_state WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?
        .try_get::<i64, _>(0)?;
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
            .remove(&(tenant.clone(), id.clone()))
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
    for r in sqlx::query(
        "SELECT tenant_id, id, client_id, enabled, expires_at, include_anomalies, \
         secret_generation FROM applications ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await?
    {
        let id: String = r.try_get("id")?;
        applications.push(ApplicationEntry {
            tenant: r.try_get("tenant_id")?,
            client_id: r.try_get("client_id")?,
            enabled: flag(&r, "enabled")?,
            expires_at_ms: r.try_get("expires_at")?,
            include_anomalies: flag(&r, "include_anomalies")?,
            devices: app_devices.remove(&id).unwrap_or_default(),
            groups: app_groups.remove(&id).unwrap_or_default(),
            secret_generation: u64::try_from(r.try_get::<i64, _>("secret_generation")?)
                .unwrap_or(0),
            id,
        });
    }
    tx.commit().await?;
    Ok(Snapshot {
        version: u64::try_from(version).unwrap_or(0),
        verification_keys,
        devices,
        groups,
        applications,
    })
}
