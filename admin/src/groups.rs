//! Device groups: a named set of devices. An application that names a group
//! sees its members as they are now, including devices added later (the
//! broker resolves membership from every snapshot).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use crate::audit::{self, Event};
use crate::db::{self, Page};
use crate::error::{conflict_on_unique, AdminError};
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

const COLS: &str = "id, name, created_at, updated_at";
const NAME_TAKEN: &str = "a device group with this name already exists";

async fn view(conn: &mut AnyConnection, tenant: &str, r: &AnyRow) -> Result<GroupView, AdminError> {
    let id: String = r.try_get("id")?;
    let devices = members(conn, tenant, &id).await?;
    Ok(GroupView {
        name: r.try_get("name")?,
        devices,
        created_at: validate::format_ms(r.try_get("created_at")?),
        updated_at: validate::format_ms(r.try_get("updated_at")?),
        id,
    })
}

async fn members(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
) -> Result<Vec<String>, AdminError> {
    let rows = sqlx::query(
        "SELECT device_id FROM group_members WHERE tenant_id = $1 AND group_id = $2 \
         ORDER BY device_id",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<String, _>(0)?))
        .collect()
}

async fn fetch(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<GroupView, AdminError> {
    let row = sqlx::query(&format!(
        "SELECT {COLS} FROM device_groups WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| AdminError::NotFound(format!("device group {id}")))?;
    view(conn, tenant, &row).await
}

/// Replaces a group's members after checking they exist in the tenant.
async fn set_members(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    devices: &[String],
) -> Result<(), AdminError> {
    let missing = db::missing_ids(conn, "devices", tenant, devices).await?;
    if !missing.is_empty() {
        return Err(AdminError::invalid(
            "devices",
            format!("unknown device ids: {}", missing.join(", ")),
        ));
    }
    sqlx::query("DELETE FROM group_members WHERE tenant_id = $1 AND group_id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    for d in devices {
        sqlx::query(
            "INSERT INTO group_members (tenant_id, group_id, device_id) VALUES ($1, $2, $3)",
        )
        .bind(tenant)
        .bind(id)
        .bind(d)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
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
    set_members(conn, tenant, &id, &g.devices).await?;
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
        audit::record(
            change.conn(),
            &Event::new(
                &caller.tenant,
                caller.actor.clone(),
                "device_group.create",
                "device_group",
                &id,
            ),
        )
        .await?;
        let v = fetch(change.conn(), &caller.tenant, &id).await?;
        change.commit().await?;
        Ok(v)
    }

    pub(crate) async fn list_groups(
        &self,
        tenant: &str,
        page: &Page,
    ) -> Result<(Vec<GroupView>, Option<String>), AdminError> {
        let (sql, args) = db::page_query(COLS, "device_groups", tenant, page);
        let mut conn = self.inner.pool.acquire().await?;
        let rows = db::bind_all(sqlx::query(&sql), &args)
            .fetch_all(&mut *conn)
            .await?;
        let mut keyed = Vec::with_capacity(rows.len());
        for r in &rows {
            keyed.push((
                r.try_get::<i64, _>("created_at")?,
                view(&mut conn, tenant, r).await?,
            ));
        }
        let next = audit::page_cursor(&mut keyed, page.limit, |(at, v)| {
            db::encode_cursor(*at, &v.id)
        });
        Ok((keyed.into_iter().map(|(_, v)| v).collect(), next))
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
            sqlx::query(
                "UPDATE device_groups SET name = $1, name_key = $2 WHERE tenant_id = $3 AND id = $4",
            )
            .bind(&n.display)
            .bind(&n.key)
            .bind(&caller.tenant)
            .bind(id)
            .execute(change.conn())
            .await
            .map_err(|e| conflict_on_unique(e, NAME_TAKEN))?;
            fields.push("name");
        }
        if let Some(devices) = &patch.devices {
            set_members(change.conn(), &caller.tenant, id, devices).await?;
            fields.push("devices");
        }
        sqlx::query("UPDATE device_groups SET updated_at = $1 WHERE tenant_id = $2 AND id = $3")
            .bind(now)
            .bind(&caller.tenant)
            .bind(id)
            .execute(change.conn())
            .await?;
        audit::record(
            change.conn(),
            &Event::new(
                &caller.tenant,
                caller.actor.clone(),
                "device_group.update",
                "device_group",
                id,
            )
            .detail(serde_json::json!({ "fields": fields })),
        )
        .await?;
        let v = fetch(change.conn(), &caller.tenant, id).await?;
        change.commit().await?;
        Ok(v)
    }

    pub(crate) async fn delete_group(&self, caller: &Caller, id: &str) -> Result<(), AdminError> {
        let mut change = self.change().await?;
        let done = sqlx::query("DELETE FROM device_groups WHERE tenant_id = $1 AND id = $2")
            .bind(&caller.tenant)
            .bind(id)
            .execute(change.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(AdminError::NotFound(format!("device group {id}")));
        }
        audit::record(
            change.conn(),
            &Event::new(
                &caller.tenant,
                caller.actor.clone(),
                "device_group.delete",
                "device_group",
                id,
            ),
        )
        .await?;
        change.commit().await
    }
}
