//! Device groups: a named set of devices. An application that names a group
//! sees its members as they are now, including devices added later (the
//! broker resolves membership from every snapshot).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use crate::db::Page;
use crate::error::{conflict_on_unique, AdminError};
use crate::lifecycle::{self, Kind, Links};
use crate::tenants::Caller;
use crate::validate::{self, Name};
use crate::Admin;

/// A group as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GroupView {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) devices: Vec<String>,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
}

/// A validated create request.
pub(crate) struct NewGroup {
    /// Chosen by the operator, or generated.
    pub(crate) id: Option<String>,
    pub(crate) name: Name,
    pub(crate) devices: Vec<String>,
}

/// A validated edit: `None` leaves the field as it is; `devices` replaces
/// the whole member list.
pub(crate) struct GroupPatch {
    pub(crate) name: Option<Name>,
    pub(crate) devices: Option<Vec<String>>,
}

const KIND: Kind = Kind {
    table: "device_groups",
    cols: "id, name, created_at, updated_at",
    noun: "device group",
    audit: "device_group",
    name_taken: Some("a device group with this name already exists"),
};

/// A group's members.
const MEMBERS: Links = Links {
    table: "group_members",
    owner: "group_id",
    member: "device_id",
    members: "devices",
    field: "devices",
    noun: "device",
};

async fn view(conn: &mut AnyConnection, tenant: &str, r: &AnyRow) -> Result<GroupView, AdminError> {
    let id: String = r.try_get("id")?;
    let devices = lifecycle::linked(conn, &MEMBERS, tenant, &id).await?;
    Ok(GroupView {
        name: r.try_get("name")?,
        devices,
        created_at: validate::format_ms(r.try_get("created_at")?),
        updated_at: validate::format_ms(r.try_get("updated_at")?),
        id,
    })
}

async fn fetch(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<GroupView, AdminError> {
    let row = lifecycle::fetch_row(conn, &KIND, tenant, id).await?;
    view(conn, tenant, &row).await
}

/// Inserts a group with its members; returns its id.
pub(crate) async fn insert(
    conn: &mut AnyConnection,
    tenant: &str,
    g: &NewGroup,
    now: i64,
) -> Result<String, AdminError> {
    let id =
        g.id.clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    sqlx::query(
        "INSERT INTO device_groups (tenant_id, id, name, name_key, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant)
    .bind(&id)
    .bind(&g.name.display)
    .bind(&g.name.key)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(|e| conflict_on_unique(e, "a device group with this id or name already exists"))?;
    lifecycle::replace_links(conn, &MEMBERS, tenant, &id, &g.devices).await?;
    Ok(id)
}

impl Admin {
    pub(crate) async fn create_group(
        &self,
        caller: &Caller,
        g: NewGroup,
    ) -> Result<GroupView, AdminError> {
        let now = self.now_ms();
        let mut change = self.change().await?;
        let id = insert(change.conn(), &caller.tenant, &g, now).await?;
        lifecycle::record(change.conn(), &KIND, caller, "create", &id).await?;
        let v = fetch(change.conn(), &caller.tenant, &id).await?;
        change.commit().await?;
        Ok(v)
    }

    pub(crate) async fn list_groups(
        &self,
        tenant: &str,
        page: &Page,
    ) -> Result<(Vec<GroupView>, Option<String>), AdminError> {
        let mut conn = self.inner.pool.acquire().await?;
        let rows = lifecycle::page_rows(&mut conn, &KIND, tenant, page).await?;
        let mut keyed = Vec::with_capacity(rows.len());
        for r in &rows {
            keyed.push((
                r.try_get::<i64, _>("created_at")?,
                view(&mut conn, tenant, r).await?,
            ));
        }
        Ok(lifecycle::finish_page(keyed, page.limit, |v| &v.id))
    }

    pub(crate) async fn get_group(&self, tenant: &str, id: &str) -> Result<GroupView, AdminError> {
        let mut conn = self.inner.pool.acquire().await?;
        fetch(&mut conn, tenant, id).await
    }

    pub(crate) async fn update_group(
        &self,
        caller: &Caller,
        id: &str,
        patch: GroupPatch,
    ) -> Result<GroupView, AdminError> {
        let now = self.now_ms();
        let mut change = self.change().await?;
        fetch(change.conn(), &caller.tenant, id).await?;
        let mut fields = Vec::new();
        if let Some(n) = &patch.name {
            lifecycle::rename(change.conn(), &KIND, &caller.tenant, id, n).await?;
            fields.push("name");
        }
        if let Some(devices) = &patch.devices {
            lifecycle::replace_links(change.conn(), &MEMBERS, &caller.tenant, id, devices).await?;
            fields.push("devices");
        }
        lifecycle::finish_update(change.conn(), &KIND, caller, id, now, &fields).await?;
        let v = fetch(change.conn(), &caller.tenant, id).await?;
        change.commit().await?;
        Ok(v)
    }

    pub(crate) async fn delete_group(&self, caller: &Caller, id: &str) -> Result<(), AdminError> {
        self.delete_one(&KIND, caller, id).await
    }
}
