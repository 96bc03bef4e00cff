//! External applications: OAuth2 clients that stream the devices they are
//! allowed to see.
//!
//! Lifecycle and what it does to access tokens already issued (the broker
//! checks every token against the live snapshot, see
//! `sensegate_broker::token::verify`):
//! - **disable** / **delete** / **expiry**: the token endpoint refuses the
//!   client (`invalid_client`) and every token already issued stops working.
//! - **rotate secret**: the old secret stops working at once, and so do the
//!   access tokens issued under it — the secret generation is bumped and
//!   tokens carry the generation they were issued under (`sgen`). A leaked
//!   secret therefore cannot keep a stream alive past the rotation.
//! - **edit** (devices, groups, anomalies): open streams follow the new
//!   permissions at once; the token's `devices` claim is informational.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use crate::db::{flag, Page};
use crate::error::{conflict_on_unique, AdminError};
use crate::lifecycle::{self, Kind, Links};
use crate::tenants::Caller;
use crate::validate::{self, Name};
use crate::{secret, Admin};

/// A list row.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AppSummary {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) created_at: String,
    /// `enabled` or `disabled`.
    #[schema(value_type = String)]
    pub(crate) status: &'static str,
    pub(crate) expires_at: String,
    /// Whether `expiresAt` has passed.
    pub(crate) expired: bool,
}

/// Every configured property (never the secret, except once at creation or
/// rotation in `client_secret`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AppView {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    /// `enabled` or `disabled`.
    #[schema(value_type = String)]
    pub(crate) status: &'static str,
    pub(crate) expires_at: String,
    pub(crate) expired: bool,
    pub(crate) include_anomalies: bool,
    pub(crate) devices: Vec<String>,
    pub(crate) device_groups: Vec<String>,
    pub(crate) client_id: String,
    /// Only in the responses of create and rotate-secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client_secret: Option<String>,
}

/// A validated create request.
pub(crate) struct NewApp {
    pub(crate) name: Name,
    pub(crate) expires_at_ms: i64,
    pub(crate) include_anomalies: bool,
    pub(crate) devices: Vec<String>,
    pub(crate) groups: Vec<String>,
}

/// A validated edit: `None` leaves the field as it is.
pub(crate) struct AppPatch {
    pub(crate) name: Option<Name>,
    pub(crate) include_anomalies: Option<bool>,
    pub(crate) devices: Option<Vec<String>>,
    pub(crate) groups: Option<Vec<String>>,
}

/// What the token endpoint needs to know about a client (kept in memory,
/// see `feed::TokenView`).
pub(crate) struct Client {
    pub(crate) tenant: String,
    pub(crate) id: String,
    pub(crate) secret_sha256: String,
    pub(crate) enabled: bool,
    pub(crate) expires_at_ms: i64,
    pub(crate) include_anomalies: bool,
    pub(crate) secret_generation: u64,
    /// The devices it sees now: direct ones plus current group members,
    /// sorted (the token's informational `devices` claim).
    pub(crate) devices: Vec<String>,
}

const NAME_TAKEN: &str = "an application with this name already exists";

const KIND: Kind = Kind {
    table: "applications",
    cols: "id, name, client_id, enabled, include_anomalies, expires_at, created_at, updated_at",
    noun: "application",
    audit: "application",
    name_taken: Some(NAME_TAKEN),
};

/// The devices an application names directly.
const DEVICES: Links = Links {
    table: "application_devices",
    owner: "app_id",
    member: "device_id",
    members: "devices",
    field: "devices",
    noun: "device",
};

/// The groups an application names.
const GROUPS: Links = Links {
    table: "application_groups",
    owner: "app_id",
    member: "group_id",
    members: "device_groups",
    field: "deviceGroups",
    noun: "device group",
};

fn status(enabled: bool) -> &'static str {
    if enabled {
        "enabled"
    } else {
        "disabled"
    }
}

fn summary(r: &AnyRow, now: i64) -> Result<AppSummary, AdminError> {
    let expires: i64 = r.try_get("expires_at")?;
    Ok(AppSummary {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created_at: validate::format_ms(r.try_get("created_at")?),
        status: status(flag(r, "enabled")?),
        expires_at: validate::format_ms(expires),
        expired: now >= expires,
    })
}

async fn fetch(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    now: i64,
) -> Result<AppView, AdminError> {
    let r = lifecycle::fetch_row(conn, &KIND, tenant, id).await?;
    let expires: i64 = r.try_get("expires_at")?;
    let devices = lifecycle::linked(conn, &DEVICES, tenant, id).await?;
    let device_groups = lifecycle::linked(conn, &GROUPS, tenant, id).await?;
    Ok(AppView {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created_at: validate::format_ms(r.try_get("created_at")?),
        updated_at: validate::format_ms(r.try_get("updated_at")?),
        status: status(flag(&r, "enabled")?),
        expires_at: validate::format_ms(expires),
        expired: now >= expires,
        include_anomalies: flag(&r, "include_anomalies")?,
        devices,
        device_groups,
        client_id: r.try_get("client_id")?,
        client_secret: None,
    })
}

/// Inserts an application; returns `(id, client id, client secret)`.
pub(crate) async fn insert(
    conn: &mut AnyConnection,
    tenant: &str,
    a: &NewApp,
    now: i64,
) -> Result<(String, String, String), AdminError> {
    let id = uuid::Uuid::now_v7().to_string();
    let client_id = secret::client_id();
    let client_secret = secret::generate(secret::CLIENT_SECRET_PREFIX);
    sqlx::query(
        "INSERT INTO applications (id, tenant_id, name, name_key, client_id, secret_sha256, \
         secret_generation, enabled, include_anomalies, expires_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 1, 1, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(tenant)
    .bind(&a.name.display)
    .bind(&a.name.key)
    .bind(&client_id)
    .bind(secret::sha256_hex(&client_secret))
    .bind(i64::from(a.include_anomalies))
    .bind(a.expires_at_ms)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(|e| conflict_on_unique(e, NAME_TAKEN))?;
    lifecycle::replace_links(conn, &DEVICES, tenant, &id, &a.devices).await?;
    lifecycle::replace_links(conn, &GROUPS, tenant, &id, &a.groups).await?;
    Ok((id, client_id, client_secret))
}

/// Gives the application a new secret and bumps its secret generation;
/// returns the new secret.
pub(crate) async fn rotate_secret(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    now: i64,
) -> Result<String, AdminError> {
    let client_secret = secret::generate(secret::CLIENT_SECRET_PREFIX);
    let done = sqlx::query(
        "UPDATE applications SET secret_sha256 = $1, secret_generation = secret_generation + 1, \
         updated_at = $2 WHERE tenant_id = $3 AND id = $4",
    )
    .bind(secret::sha256_hex(&client_secret))
    .bind(now)
    .bind(tenant)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    KIND.found(done, id)?;
    Ok(client_secret)
}

/// The application named `name_key` in `tenant`, if any.
pub(crate) async fn find_by_name(
    conn: &mut AnyConnection,
    tenant: &str,
    name_key: &str,
) -> Result<Option<String>, AdminError> {
    Ok(
        sqlx::query("SELECT id FROM applications WHERE tenant_id = $1 AND name_key = $2")
            .bind(tenant)
            .bind(name_key)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?,
    )
}

impl Admin {
    pub(crate) async fn create_app(
        &self,
        caller: &Caller,
        a: NewApp,
    ) -> Result<AppView, AdminError> {
        let now = self.now_ms();
        if a.expires_at_ms <= now {
            return Err(AdminError::invalid("expiresAt", "must be in the future"));
        }
        let mut change = self.change().await?;
        let (id, _, client_secret) = insert(change.conn(), &caller.tenant, &a, now).await?;
        lifecycle::record(change.conn(), &KIND, caller, "create", &id).await?;
        let mut v = fetch(change.conn(), &caller.tenant, &id, now).await?;
        change.commit().await?;
        v.client_secret = Some(client_secret);
        Ok(v)
    }

    pub(crate) async fn list_apps(
        &self,
        tenant: &str,
        page: &Page,
    ) -> Result<(Vec<AppSummary>, Option<String>), AdminError> {
        let now = self.now_ms();
        self.list_page(&KIND, tenant, page, |r| summary(r, now), |v| &v.id)
            .await
    }

    pub(crate) async fn get_app(&self, tenant: &str, id: &str) -> Result<AppView, AdminError> {
        let mut conn = self.inner.pool.acquire().await?;
        fetch(&mut conn, tenant, id, self.now_ms()).await
    }

    pub(crate) async fn update_app(
        &self,
        caller: &Caller,
        id: &str,
        p: AppPatch,
    ) -> Result<AppView, AdminError> {
        let now = self.now_ms();
        let mut change = self.change().await?;
        fetch(change.conn(), &caller.tenant, id, now).await?;
        let mut fields = Vec::new();
        if let Some(n) = &p.name {
            lifecycle::rename(change.conn(), &KIND, &caller.tenant, id, n).await?;
            fields.push("name");
        }
        if let Some(inc) = p.include_anomalies {
            sqlx::query(
                "UPDATE applications SET include_anomalies = $1 WHERE tenant_id = $2 AND id = $3",
            )
            .bind(i64::from(inc))
            .bind(&caller.tenant)
            .bind(id)
            .execute(change.conn())
            .await?;
            fields.push("includeAnomalies");
        }
        if let Some(d) = &p.devices {
            lifecycle::replace_links(change.conn(), &DEVICES, &caller.tenant, id, d).await?;
            fields.push("devices");
        }
        if let Some(g) = &p.groups {
            lifecycle::replace_links(change.conn(), &GROUPS, &caller.tenant, id, g).await?;
            fields.push("deviceGroups");
        }
        lifecycle::finish_update(change.conn(), &KIND, caller, id, now, &fields).await?;
        let v = fetch(change.conn(), &caller.tenant, id, now).await?;
        change.commit().await?;
        Ok(v)
    }

    pub(crate) async fn delete_app(&self, caller: &Caller, id: &str) -> Result<(), AdminError> {
        self.delete_one(&KIND, caller, id).await
    }

    pub(crate) async fn rotate_app_secret(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<AppView, AdminError> {
        let now = self.now_ms();
        let mut change = self.change().await?;
        let client_secret = rotate_secret(change.conn(), &caller.tenant, id, now).await?;
        lifecycle::record(change.conn(), &KIND, caller, "rotate_secret", id).await?;
        let mut v = fetch(change.conn(), &caller.tenant, id, now).await?;
        change.commit().await?;
        v.client_secret = Some(client_secret);
        Ok(v)
    }

    pub(crate) async fn set_app_enabled(
        &self,
        caller: &Caller,
        id: &str,
        enabled: bool,
    ) -> Result<AppView, AdminError> {
        let now = self.now_ms();
        let mut change = self.change().await?;
        lifecycle::set_enabled(change.conn(), &KIND, caller, id, enabled, now).await?;
        let v = fetch(change.conn(), &caller.tenant, id, now).await?;
        change.commit().await?;
        Ok(v)
    }
}
