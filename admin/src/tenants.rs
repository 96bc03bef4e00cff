//! Tenants, admin API keys, and the first-start bootstrap.
//!
//! A tenant's id is its name (an id-safe string, unique case-insensitively):
//! operators type it in `sensegate admin key create --tenant NAME`. Every
//! admin key belongs to one tenant and every API call it makes is confined to
//! that tenant.

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use crate::audit::{self, Event};
use crate::error::{conflict_on_unique, AdminError};
use crate::secret;
use crate::validate;
use crate::Admin;

/// The tenant created on first start.
pub(crate) const DEFAULT_TENANT: &str = "default";

/// A tenant.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TenantInfo {
    /// Tenant id (equal to its name).
    pub id: String,
    /// When it was created, RFC 3339 UTC.
    pub created_at: String,
}

/// An admin API key, without the key itself.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdminKeyInfo {
    /// Key id (what `revoke_admin_key` takes).
    pub id: String,
    /// Owning tenant id.
    pub tenant: String,
    /// The key's first characters, to tell keys apart.
    pub hint: String,
    /// When it was created, RFC 3339 UTC.
    pub created_at: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
}

/// Who is calling the admin API: resolved from the bearer admin key.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The tenant every call is confined to.
    pub(crate) tenant: String,
    /// Who, for the audit log: `admin-key:<key id>`, or `demo` for the seed.
    pub(crate) actor: String,
}

/// Characters of an admin key kept as its hint: the prefix plus four.
const HINT_CHARS: usize = 8;

impl Admin {
    /// First start: tenant `default` and an admin key on an empty database,
    /// a signing key if none, then the first snapshot.
    pub(crate) async fn bootstrap(&self) -> Result<Option<String>, AdminError> {
        let now = self.now_ms();
        let mut change = self.change().await?;
        let tenants = sqlx::query("SELECT COUNT(*) FROM tenants")
            .fetch_one(change.conn())
            .await?
            .try_get::<i64, _>(0)?;
        let mut generated = None;
        if tenants == 0 {
            insert_tenant(change.conn(), DEFAULT_TENANT, now).await?;
            let key = match &self.inner.cfg.bootstrap_admin_key {
                Some(k) => {
                    check_bootstrap_key(k)?;
                    k.clone()
                }
                None => {
                    let k = secret::generate(secret::ADMIN_KEY_PREFIX);
                    generated = Some(k.clone());
                    k
                }
            };
            let id = insert_admin_key(change.conn(), DEFAULT_TENANT, &key, now).await?;
            audit::record(
                change.conn(),
                &Event::new(
                    DEFAULT_TENANT,
                    "system".into(),
                    "admin_key.create",
                    "admin_key",
                    &id,
                ),
            )
            .await?;
            tracing::info!(tenant = DEFAULT_TENANT, key_id = %id, "bootstrapped tenant and admin key");
        }
        crate::keys::ensure(change.conn(), now).await?;
        change.commit().await?;
        if tenants != 0 {
            self.warn_if_bootstrap_key_unknown().await?;
        }
        Ok(generated)
    }

    /// The bootstrap key only takes effect on an empty database. An operator
    /// who sets it against a database bootstrapped earlier (say, a data
    /// directory left by `serve --demo`) would otherwise get a 401 on every
    /// call with no hint why; say so once at start. The key is never logged.
    async fn warn_if_bootstrap_key_unknown(&self) -> Result<(), AdminError> {
        let Some(key) = &self.inner.cfg.bootstrap_admin_key else {
            return Ok(());
        };
        if self.authenticate(key).await?.is_none() {
            tracing::warn!(
                "SENSEGATE_BOOTSTRAP_ADMIN_KEY is ignored: this database was bootstrapped \
                 earlier and the key is not one of its admin keys, so requests using it get 401; \
                 use the admin key printed at first start, create one with \
                 `sensegate admin key create`, or start on a fresh --data-dir"
            );
        }
        Ok(())
    }

    /// Creates a tenant (`sensegate admin tenant create NAME`). The name is
    /// an id: 1..=64 of `[A-Za-z0-9._-]`, unique ignoring case.
    pub async fn create_tenant(&self, name: &str) -> Result<TenantInfo, AdminError> {
        validate::id("name", name)?;
        let now = self.now_ms();
        let mut tx = self.begin_write().await?;
        insert_tenant(&mut tx, name, now).await?;
        audit::record(
            &mut tx,
            &Event::new(name, "cli".into(), "tenant.create", "tenant", name),
        )
        .await?;
        tx.commit().await?;
        Ok(TenantInfo {
            id: name.to_string(),
            created_at: validate::format_ms(now),
        })
    }

    /// Every tenant, oldest first.
    pub async fn list_tenants(&self) -> Result<Vec<TenantInfo>, AdminError> {
        let mut conn = self.inner.pool.acquire().await?;
        let rows = sqlx::query("SELECT id, created_at FROM tenants ORDER BY created_at, id")
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TenantInfo {
                    id: r.try_get("id")?,
                    created_at: validate::format_ms(r.try_get("created_at")?),
                })
            })
            .collect()
    }

    /// Creates an admin key for the tenant named `tenant` (matched ignoring
    /// case) and returns it: the only time it is shown.
    pub async fn create_admin_key(&self, tenant: &str) -> Result<String, AdminError> {
        let now = self.now_ms();
        let mut conn = self.inner.pool.acquire().await?;
        let tenant = tenant_id(&mut conn, tenant).await?;
        drop(conn);
        let key = secret::generate(secret::ADMIN_KEY_PREFIX);
        let mut tx = self.begin_write().await?;
        let id = insert_admin_key(&mut tx, &tenant, &key, now).await?;
        audit::record(
            &mut tx,
            &Event::new(&tenant, "cli".into(), "admin_key.create", "admin_key", &id),
        )
        .await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Admin keys, of one tenant or of all, oldest first.
    pub async fn list_admin_keys(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<AdminKeyInfo>, AdminError> {
        let mut conn = self.inner.pool.acquire().await?;
        let rows = match tenant {
            Some(t) => {
                let t = tenant_id(&mut conn, t).await?;
                sqlx::query(
                    "SELECT id, tenant_id, hint, created_at, revoked_at FROM admin_keys \
                     WHERE tenant_id = $1 ORDER BY created_at, id",
                )
                .bind(t)
                .fetch_all(&mut *conn)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT id, tenant_id, hint, created_at, revoked_at FROM admin_keys \
                     ORDER BY created_at, id",
                )
                .fetch_all(&mut *conn)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(AdminKeyInfo {
                    id: r.try_get("id")?,
                    tenant: r.try_get("tenant_id")?,
                    hint: r.try_get("hint")?,
                    created_at: validate::format_ms(r.try_get("created_at")?),
                    revoked_at: r
                        .try_get::<Option<i64>, _>("revoked_at")?
                        .map(validate::format_ms),
                })
            })
            .collect()
    }

    /// Revokes an admin key by id; it stops working at once. Revoking a
    /// revoked key is a no-op; an unknown id is [`AdminError::NotFound`].
    pub async fn revoke_admin_key(&self, key_id: &str) -> Result<(), AdminError> {
        let now = self.now_ms();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT tenant_id FROM admin_keys WHERE id = $1")
            .bind(key_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("admin key {key_id}")))?;
        let tenant: String = row.try_get(0)?;
        sqlx::query("UPDATE admin_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            &Event::new(
                &tenant,
                "cli".into(),
                "admin_key.revoke",
                "admin_key",
                key_id,
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Resolves a bearer admin key to its caller.
    pub(crate) async fn authenticate(&self, key: &str) -> Result<Option<Caller>, AdminError> {
        let hash = secret::sha256_hex(key);
        let mut conn = self.inner.pool.acquire().await?;
        let row = sqlx::query(
            "SELECT id, tenant_id, key_sha256 FROM admin_keys \
             WHERE key_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(&hash)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else { return Ok(None) };
        // The lookup was by hash; confirm in constant time all the same.
        if !secret::matches(key, &row.try_get::<String, _>("key_sha256")?) {
            return Ok(None);
        }
        Ok(Some(Caller {
            tenant: row.try_get("tenant_id")?,
            actor: format!("admin-key:{}", row.try_get::<String, _>("id")?),
        }))
    }
}

async fn insert_tenant(conn: &mut AnyConnection, name: &str, now: i64) -> Result<(), AdminError> {
    sqlx::query("INSERT INTO tenants (id, name, name_key, created_at) VALUES ($1, $1, $2, $3)")
        .bind(name)
        .bind(name.to_ascii_lowercase())
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| conflict_on_unique(e, "a tenant with this name already exists"))?;
    Ok(())
}

async fn insert_admin_key(
    conn: &mut AnyConnection,
    tenant: &str,
    key: &str,
    now: i64,
) -> Result<String, AdminError> {
    let id = uuid::Uuid::now_v7().to_string();
    let hint: String = key.chars().take(HINT_CHARS).collect();
    sqlx::query(
        "INSERT INTO admin_keys (id, tenant_id, key_sha256, hint, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(tenant)
    .bind(secret::sha256_hex(key))
    .bind(hint)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(|e| conflict_on_unique(e, "this admin key already exists"))?;
    Ok(id)
}

/// The id of the tenant named `name` (ignoring case).
async fn tenant_id(conn: &mut AnyConnection, name: &str) -> Result<String, AdminError> {
    sqlx::query("SELECT id FROM tenants WHERE name_key = $1")
        .bind(name.to_ascii_lowercase())
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?
        .ok_or_else(|| AdminError::NotFound(format!("tenant {name}")))
}

/// A bootstrap key must survive an `Authorization` header unchanged.
fn check_bootstrap_key(k: &str) -> Result<(), AdminError> {
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AdminError::Config(
            "SENSEGATE_BOOTSTRAP_ADMIN_KEY must be non-empty visible ASCII without spaces".into(),
        ));
    }
    if k.len() < 32 {
        tracing::warn!(
            "the bootstrap admin key is shorter than 32 characters; prefer a random one"
        );
    }
    Ok(())
}
