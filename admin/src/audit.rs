//! The audit log: who did what to which object, and when. Mutations write
//! their entry in the same transaction as the change, so the log never
//! claims a change that was rolled back, nor misses one that committed.
//! Entries never carry a secret: at most ids, field names and reasons.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use crate::error::AdminError;
use crate::validate;

/// One audit log entry as the API returns it.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Entry id (time-ordered).
    pub id: String,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// Who: `admin-key:<key id>`, `client:<client id>`, `cli` or `system`.
    pub actor: String,
    /// What, e.g. `application.create`, `token.issue`, `token.refuse`.
    pub action: String,
    /// The kind of object acted on, e.g. `application`.
    pub target_type: Option<String>,
    /// The object's id.
    pub target_id: Option<String>,
    /// Extra facts (changed field names, refusal reason…), never secrets.
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

/// An entry about to be written.
pub(crate) struct Event<'a> {
    pub(crate) tenant: Option<&'a str>,
    pub(crate) actor: String,
    pub(crate) action: &'a str,
    pub(crate) target_type: Option<&'a str>,
    pub(crate) target_id: Option<&'a str>,
    pub(crate) detail: Option<serde_json::Value>,
}

impl<'a> Event<'a> {
    /// An action by `actor` in `tenant` on one object.
    pub(crate) fn new(
        tenant: &'a str,
        actor: String,
        action: &'a str,
        target_type: &'a str,
        target_id: &'a str,
    ) -> Self {
        Event {
            tenant: Some(tenant),
            actor,
            action,
            target_type: Some(target_type),
            target_id: Some(target_id),
            detail: None,
        }
    }

    /// An action that belongs to no tenant, done by the system or the CLI.
    pub(crate) fn system(action: &'a str, target_type: &'a str, target_id: &'a str) -> Self {
        Event {
            tenant: None,
            actor: "system".into(),
            action,
            target_type: Some(target_type),
            target_id: Some(target_id),
            detail: None,
        }
    }

    /// Adds detail.
    pub(crate) fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// Writes `e` on `conn` (inside the caller's transaction, if any).
pub(crate) async fn record(conn: &mut AnyConnection, e: &Event<'_>) -> Result<(), AdminError> {
    sqlx::query(
        "INSERT INTO audit_log (id, tenant_id, at, actor, action, target_type, target_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(e.tenant.map(str::to_string))
    .bind(crate::now_ms())
    .bind(&e.actor)
    .bind(e.action)
    .bind(e.target_type.map(str::to_string))
    .bind(e.target_id.map(str::to_string))
    .bind(e.detail.as_ref().map(|d| d.to_string()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Filters of `GET /api/v1/audit`.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    pub(crate) action: Option<String>,
    pub(crate) actor: Option<String>,
    pub(crate) target_type: Option<String>,
    pub(crate) target_id: Option<String>,
    pub(crate) since_ms: Option<i64>,
    pub(crate) until_ms: Option<i64>,
    pub(crate) cursor: Option<String>,
    pub(crate) limit: i64,
}

/// One page of `tenant`'s entries, newest first. Returns the entries and the
/// cursor of the next page.
pub(crate) async fn list(
    conn: &mut AnyConnection,
    tenant: &str,
    f: &Filter,
) -> Result<(Vec<AuditEntry>, Option<String>), AdminError> {
    let mut sql = String::from(
        "SELECT id, at, actor, action, target_type, target_id, detail FROM audit_log \
         WHERE tenant_id = $1",
    );
    let mut texts: Vec<&str> = vec![tenant];
    let mut n = 1;
    for (col, val) in [
        ("action", &f.action),
        ("actor", &f.actor),
        ("target_type", &f.target_type),
        ("target_id", &f.target_id),
        ("id <", &f.cursor),
    ] {
        if let Some(v) = val {
            n += 1;
            if col.ends_with('<') {
                sql.push_str(&format!(" AND {col} ${n}"));
            } else {
                sql.push_str(&format!(" AND {col} = ${n}"));
            }
            texts.push(v);
        }
    }
    let mut ints = Vec::new();
    for (op, val) in [(">=", f.since_ms), ("<", f.until_ms)] {
        if let Some(v) = val {
            n += 1;
            sql.push_str(&format!(" AND at {op} ${n}"));
            ints.push(v);
        }
    }
    n += 1;
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${n}"));
    let mut q = sqlx::query(&sql);
    for t in texts {
        q = q.bind(t);
    }
    for i in ints {
        q = q.bind(i);
    }
    let rows = q.bind(f.limit + 1).fetch_all(&mut *conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let detail: Option<String> = r.try_get("detail")?;
        out.push(AuditEntry {
            id: r.try_get("id")?,
            at: validate::format_ms(r.try_get("at")?),
            actor: r.try_get("actor")?,
            action: r.try_get("action")?,
            target_type: r.try_get("target_type")?,
            target_id: r.try_get("target_id")?,
            detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
        });
    }
    let next = page_cursor(&mut out, f.limit, |e| e.id.clone());
    Ok((out, next))
}

/// Trims a `limit + 1` fetch to `limit` and returns the next page's cursor
/// (made from the last kept row) when there was more.
pub(crate) fn page_cursor<T>(
    rows: &mut Vec<T>,
    limit: i64,
    key: impl Fn(&T) -> String,
) -> Option<String> {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(key)
    } else {
        None
    }
}

impl crate::Admin {
    /// One page of `tenant`'s audit log.
    pub(crate) async fn audit(
        &self,
        tenant: &str,
        f: &Filter,
    ) -> Result<(Vec<AuditEntry>, Option<String>), AdminError> {
        let mut conn = self.inner.pool.acquire().await?;
        list(&mut conn, tenant, f).await
    }
}
