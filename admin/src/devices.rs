//! Devices: identity, ingest key, enabled flag, free-form metadata.
//!
//! Deleting a device also removes it from every group and application that
//! named it (foreign keys cascade), so the broker stops routing it at once.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use crate::db::{flag, Page};
use crate::error::{conflict_on_unique, AdminError};
use crate::lifecycle::{self, Kind};
use crate::tenants::Caller;
use crate::validate::{self, Name};
use crate::{secret, Admin};

/// A device as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceView {
    pub(crate) id: String,
    pub(crate) name: String,
    #[schema(value_type = Object)]
    pub(crate) metadata: serde_json::Value,
    pub(crate) enabled: bool,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    /// Present only in the response that created or rotated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ingest_key: Option<String>,
}

/// A validated create request.
pub(crate) struct NewDevice {
    pub(crate) id: String,
    pub(crate) name: Name,
    pub(crate) metadata: serde_json::Value,
}

/// A validated edit: `None` leaves the field as it is.
pub(crate) struct DevicePatch {
    pub(crate) name: Option<Name>,
    pub(crate) metadata: Option<serde_json::Value>,
}

const KIND: Kind = Kind {
    table: "devices",
    cols: "id, name, metadata, enabled, created_at, updated_at",
    noun: "device",
    audit: "device",
    // Device names need not be unique: the id is.
    name_taken: None,
};

fn view(r: &AnyRow) -> Result<DeviceView, AdminError> {
    let metadata: String = r.try_get("metadata")?;
    Ok(DeviceView {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        enabled: flag(r, "enabled")?,
        created_at: validate::format_ms(r.try_get("created_at")?),
        updated_at: validate::format_ms(r.try_get("updated_at")?),
        ingest_key: None,
    })
}

/// Checks device metadata: a JSON object of bounded size.
pub(crate) fn metadata(v: serde_json::Value) -> Result<serde_json::Value, AdminError> {
    if !v.is_object() {
        return Err(AdminError::invalid("metadata", "must be a JSON object"));
    }
    if v.to_string().len() > validate::MAX_METADATA_BYTES {
        return Err(AdminError::invalid(
            "metadata",
            format!("must be at most {} bytes", validate::MAX_METADATA_BYTES),
        ));
    }
    Ok(v)
}

pub(crate) async fn fetch(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
) -> Result<DeviceView, AdminError> {
    view(&lifecycle::fetch_row(conn, &KIND, tenant, id).await?)
}

/// Inserts a device with a fresh ingest key; returns the key.
pub(crate) async fn insert(
    conn: &mut AnyConnection,
    tenant: &str,
    d: &NewDevice,
    now: i64,
) -> Result<String, AdminError> {
    let key = secret::generate(secret::DEVICE_KEY_PREFIX);
    sqlx::query(
        "INSERT INTO devices (tenant_id, id, name, name_key, metadata, key_sha256, enabled, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8)",
    )
    .bind(tenant)
    .bind(&d.id)
    .bind(&d.name.display)
    .bind(&d.name.key)
    .bind(d.metadata.to_string())
    .bind(secret::sha256_hex(&key))
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(|e| conflict_on_unique(e, "a device with this id already exists"))?;
    Ok(key)
}

/// Replaces a device's ingest key; returns the new key.
pub(crate) async fn rotate_key(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    now: i64,
) -> Result<String, AdminError> {
    let key = secret::generate(secret::DEVICE_KEY_PREFIX);
    let done = sqlx::query(
        "UPDATE devices SET key_sha256 = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
    )
    .bind(secret::sha256_hex(&key))
    .bind(now)
    .bind(tenant)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    KIND.found(done, id)?;
    Ok(key)
}

impl Admin {
    pub(crate) async fn create_device(
        &self,
        caller: &Caller,
        d: NewDevice,
    ) -> Result<DeviceView, AdminError> {
        let now = self.now_ms();
        let mut change = self.change().await?;
        let key = insert(change.conn(), &caller.tenant, &d, now).await?;
        lifecycle::record(change.conn(), &KIND, caller, "create", &d.id).await?;
        let mut v = fetch(change.conn(), &caller.tenant, &d.id).await?;
        change.commit().await?;
        v.ingest_key = Some(key);
        Ok(v)
    }

    pub(crate) async fn list_devices(
        &self,
        tenant: &str,
        page: &Page,
    ) -> Result<(Vec<DeviceView>, Option<String>), AdminError> {
        self.list_page(&KIND, tenant, page, view, |v| &v.id).await
    }

    pub(crate) async fn get_device(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<DeviceView, AdminError> {
        let mut conn = self.inner.pool.acquire().await?;
        fetch(&mut conn, tenant, id).await
    }

    pub(crate) async fn update_device(
        &self,
        caller: &Caller,
        id: &str,
        patch: DevicePatch,
    ) -> Result<DeviceView, AdminError> {
        let now = self.now_ms();
        let mut change = self.change().await?;
        fetch(change.conn(), &caller.tenant, id).await?;
        let mut fields = Vec::new();
        if let Some(n) = &patch.name {
            lifecycle::rename(change.conn(), &KIND, &caller.tenant, id, n).await?;
            fields.push("name");
        }
        if let Some(m) = &patch.metadata {
            sqlx::query("UPDATE devices SET metadata = $1 WHERE tenant_id = $2 AND id = $3")
                .bind(m.to_string())
                .bind(&caller.tenant)
                .bind(id)
                .execute(change.conn())
                .await?;
            fields.push("metadata");
        }
        lifecycle::finish_update(change.conn(), &KIND, caller, id, now, &fields).await?;
        let v = fetch(change.conn(), &caller.tenant, id).await?;
        change.commit().await?;
        Ok(v)
    }

    pub(crate) async fn delete_device(&self, caller: &Caller, id: &str) -> Result<(), AdminError> {
        self.delete_one(&KIND, caller, id).await
    }

    pub(crate) async fn rotate_device_key(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<DeviceView, AdminError> {
        let now = self.now_ms();
        let mut change = self.change().await?;
        let key = rotate_key(change.conn(), &caller.tenant, id, now).await?;
        lifecycle::record(change.conn(), &KIND, caller, "rotate_key", id).await?;
        let mut v = fetch(change.conn(), &caller.tenant, id).await?;
        change.commit().await?;
        v.ingest_key = Some(key);
        Ok(v)
    }

    pub(crate) async fn set_device_enabled(
        &self,
        caller: &Caller,
        id: &str,
        enabled: bool,
    ) -> Result<DeviceView, AdminError> {
        let now = self.now_ms();
        let mut change = self.change().await?;
        lifecycle::set_enabled(change.conn(), &KIND, caller, id, enabled, now).await?;
        let v = fetch(change.conn(), &caller.tenant, id).await?;
        change.commit().await?;
        Ok(v)
    }
}
