//! What applications, devices and device groups have in common: reading one
//! row, renaming, enabling, deleting, replacing a link table, listing a page
//! and writing the audit entry of each step.
//!
//! Every helper is parameterised by a [`Kind`] (and [`Links`]) of fixed
//! table, column and type names written in code; requests only ever reach
//! the SQL as bound `$n` parameters.

use sqlx::any::{AnyQueryResult, AnyRow};
use sqlx::{AnyConnection, Row};

use crate::audit::{self, Event};
use crate::db::{self, Page};
use crate::error::{conflict_on_unique, AdminError};
use crate::tenants::Caller;
use crate::validate::Name;
use crate::Admin;

/// One kind of tenant-owned object, keyed by `(tenant_id, id)`.
pub(crate) struct Kind {
    /// Its table, e.g. `device_groups`.
    pub(crate) table: &'static str,
    /// The columns a view is built from.
    pub(crate) cols: &'static str,
    /// As named in a not-found error, e.g. `device group`.
    pub(crate) noun: &'static str,
    /// The audit log's target type and action prefix, e.g. `device_group`.
    pub(crate) audit: &'static str,
    /// The conflict message when a rename clashes with another name; `None`
    /// where names need not be unique.
    pub(crate) name_taken: Option<&'static str>,
}

impl Kind {
    /// The not-found error for `id`.
    pub(crate) fn not_found(&self, id: &str) -> AdminError {
        AdminError::NotFound(format!("{} {id}", self.noun))
    }

    /// `Ok` if the statement touched a row, else not found.
    pub(crate) fn found(&self, done: AnyQueryResult, id: &str) -> Result<(), AdminError> {
        if done.rows_affected() == 0 {
            return Err(self.not_found(id));
        }
        Ok(())
    }
}

/// A link table from an owner (application, group) to the members it names
/// (devices, groups), rows keyed by `tenant_id`, owner and member.
pub(crate) struct Links {
    /// The link table, e.g. `group_members`.
    pub(crate) table: &'static str,
    /// Its column naming the owner, e.g. `group_id`.
    pub(crate) owner: &'static str,
    /// Its column naming the member, e.g. `device_id`.
    pub(crate) member: &'static str,
    /// The members' own table, e.g. `devices`.
    pub(crate) members: &'static str,
    /// The request field that lists the members, e.g. `deviceGroups`.
    pub(crate) field: &'static str,
    /// What a member is called in an error, e.g. `device group`.
    pub(crate) noun: &'static str,
}

/// Writes the audit entry `{kind}.{verb}` about `id`.
pub(crate) async fn record(
    conn: &mut AnyConnection,
    kind: &Kind,
    caller: &Caller,
    verb: &str,
    id: &str,
) -> Result<(), AdminError> {
    record_detail(conn, kind, caller, verb, id, None).await
}

/// [`record`] with the entry's detail.
async fn record_detail(
    conn: &mut AnyConnection,
    kind: &Kind,
    caller: &Caller,
    verb: &str,
    id: &str,
    detail: Option<serde_json::Value>,
) -> Result<(), AdminError> {
    let action = format!("{}.{verb}", kind.audit);
    let mut event = Event::new(
        &caller.tenant,
        caller.actor.clone(),
        &action,
        kind.audit,
        id,
    );
    event.detail = detail;
    audit::record(conn, &event).await
}

/// The row of `id` in `tenant` (columns [`Kind::cols`]), or not found.
pub(crate) async fn fetch_row(
    conn: &mut AnyConnection,
    kind: &Kind,
    tenant: &str,
    id: &str,
) -> Result<AnyRow, AdminError> {
    sqlx::query(&format!(
        "SELECT {} FROM {} WHERE tenant_id = $1 AND id = $2",
        kind.cols, kind.table
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| kind.not_found(id))
}

/// Renames `id` (display name and uniqueness key).
pub(crate) async fn rename(
    conn: &mut AnyConnection,
    kind: &Kind,
    tenant: &str,
    id: &str,
    name: &Name,
) -> Result<(), AdminError> {
    let done = sqlx::query(&format!(
        "UPDATE {} SET name = $1, name_key = $2 WHERE tenant_id = $3 AND id = $4",
        kind.table
    ))
    .bind(&name.display)
    .bind(&name.key)
    .bind(tenant)
    .bind(id)
    .execute(&mut *conn)
    .await;
    match kind.name_taken {
        Some(taken) => done.map_err(|e| conflict_on_unique(e, taken))?,
        None => done?,
    };
    Ok(())
}

/// The end of an edit: stamps `updated_at` and writes the `{kind}.update`
/// audit entry naming the changed `fields`.
pub(crate) async fn finish_update(
    conn: &mut AnyConnection,
    kind: &Kind,
    caller: &Caller,
    id: &str,
    now: i64,
    fields: &[&str],
) -> Result<(), AdminError> {
    sqlx::query(&format!(
        "UPDATE {} SET updated_at = $1 WHERE tenant_id = $2 AND id = $3",
        kind.table
    ))
    .bind(now)
    .bind(&caller.tenant)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let detail = serde_json::json!({ "fields": fields });
    record_detail(conn, kind, caller, "update", id, Some(detail)).await
}

/// Enables or disables `id` and writes the `{kind}.enable` / `.disable`
/// audit entry.
pub(crate) async fn set_enabled(
    conn: &mut AnyConnection,
    kind: &Kind,
    caller: &Caller,
    id: &str,
    enabled: bool,
    now: i64,
) -> Result<(), AdminError> {
    let done = sqlx::query(&format!(
        "UPDATE {} SET enabled = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
        kind.table
    ))
    .bind(i64::from(enabled))
    .bind(now)
    .bind(&caller.tenant)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    kind.found(done, id)?;
    let verb = if enabled { "enable" } else { "disable" };
    record(conn, kind, caller, verb, id).await
}

/// The members `owner` links to, sorted.
pub(crate) async fn linked(
    conn: &mut AnyConnection,
    links: &Links,
    tenant: &str,
    owner: &str,
) -> Result<Vec<String>, AdminError> {
    let rows = sqlx::query(&format!(
        "SELECT {m} FROM {t} WHERE tenant_id = $1 AND {o} = $2 ORDER BY {m}",
        m = links.member,
        t = links.table,
        o = links.owner,
    ))
    .bind(tenant)
    .bind(owner)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<String, _>(0)?))
        .collect()
}

/// Replaces the members `owner` links to, after checking they exist in the
/// tenant.
pub(crate) async fn replace_links(
    conn: &mut AnyConnection,
    links: &Links,
    tenant: &str,
    owner: &str,
    ids: &[String],
) -> Result<(), AdminError> {
    let missing = db::missing_ids(conn, links.members, tenant, ids).await?;
    if !missing.is_empty() {
        return Err(AdminError::invalid(
            links.field,
            format!("unknown {} ids: {}", links.noun, missing.join(", ")),
        ));
    }
    sqlx::query(&format!(
        "DELETE FROM {} WHERE tenant_id = $1 AND {} = $2",
        links.table, links.owner
    ))
    .bind(tenant)
    .bind(owner)
    .execute(&mut *conn)
    .await?;
    let insert = format!(
        "INSERT INTO {} (tenant_id, {}, {}) VALUES ($1, $2, $3)",
        links.table, links.owner, links.member
    );
    for m in ids {
        sqlx::query(&insert)
            .bind(tenant)
            .bind(owner)
            .bind(m)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The rows of one page of `tenant`'s objects, newest first: `limit + 1`
/// of them at most (see [`finish_page`]).
pub(crate) async fn page_rows(
    conn: &mut AnyConnection,
    kind: &Kind,
    tenant: &str,
    page: &Page,
) -> Result<Vec<AnyRow>, AdminError> {
    let (sql, args) = db::page_query(kind.cols, kind.table, tenant, page);
    Ok(db::bind_all(sqlx::query(&sql), &args)
        .fetch_all(&mut *conn)
        .await?)
}

/// Trims `(created_at, view)` pairs from [`page_rows`] to the page and
/// returns the views with the next page's cursor.
pub(crate) fn finish_page<T>(
    mut keyed: Vec<(i64, T)>,
    limit: i64,
    id: impl Fn(&T) -> &str,
) -> (Vec<T>, Option<String>) {
    let next = audit::page_cursor(&mut keyed, limit, |(at, v)| db::encode_cursor(*at, id(v)));
    (keyed.into_iter().map(|(_, v)| v).collect(), next)
}

impl Admin {
    /// One page of `tenant`'s objects, each row turned into a view by `view`.
    pub(crate) async fn list_page<T>(
        &self,
        kind: &Kind,
        tenant: &str,
        page: &Page,
        view: impl Fn(&AnyRow) -> Result<T, AdminError>,
        id: impl Fn(&T) -> &str,
    ) -> Result<(Vec<T>, Option<String>), AdminError> {
        let mut conn = self.inner.pool.acquire().await?;
        let rows = page_rows(&mut conn, kind, tenant, page).await?;
        let mut keyed = Vec::with_capacity(rows.len());
        for r in &rows {
            keyed.push((r.try_get::<i64, _>("created_at")?, view(r)?));
        }
        Ok(finish_page(keyed, page.limit, id))
    }

    /// Deletes `id` (links cascade) and writes the `{kind}.delete` audit
    /// entry, in one change.
    pub(crate) async fn delete_one(
        &self,
        kind: &Kind,
        caller: &Caller,
        id: &str,
    ) -> Result<(), AdminError> {
        let mut change = self.change().await?;
        let done = sqlx::query(&format!(
            "DELETE FROM {} WHERE tenant_id = $1 AND id = $2",
            kind.table
        ))
        .bind(&caller.tenant)
        .bind(id)
        .execute(change.conn())
        .await?;
        kind.found(done, id)?;
        record(change.conn(), kind, caller, "delete", id).await?;
        change.commit().await
    }
}
