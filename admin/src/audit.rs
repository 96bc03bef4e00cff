//! The audit log: who did what to which object, and when. Mutations write
//! their entry in the same transaction as the change, so the log never
//! claims a change that was rolled back, nor misses one that committed.
//! Entries never carry a secret: at most ids, field names and reasons.
//!
//! Token requests (one entry per issued or refused token) go through the
//! [`Writer`] instead: a bounded queue drained by a background thread that
//! writes them in batches, one transaction per batch. A request's entry is
//! queued before its response is sent (a full queue makes the request
//! wait, so memory is bounded and nothing is dropped); reads of the log
//! first wait for the queue to be written up to that point ([`Writer::flush`]);
//! dropping the writer writes what is pending.

use std::time::Duration;

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use tokio::sync::{mpsc, oneshot};
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
    /// One page of `tenant`'s audit log, including every token request
    /// answered before the call.
    pub(crate) async fn audit(
        &self,
        tenant: &str,
        f: &Filter,
    ) -> Result<(Vec<AuditEntry>, Option<String>), AdminError> {
        self.inner.audit.flush().await?;
        let mut conn = self.inner.pool.acquire().await?;
        list(&mut conn, tenant, f).await
    }
}

/// An entry for the [`Writer`]: id and time are taken when it is queued.
pub(crate) struct Record {
    id: String,
    tenant: Option<String>,
    at: i64,
    actor: String,
    action: &'static str,
    target_type: Option<&'static str>,
    target_id: Option<String>,
    detail: Option<String>,
}

impl Record {
    /// An entry about now.
    pub(crate) fn new(
        tenant: Option<String>,
        actor: String,
        action: &'static str,
        target_type: &'static str,
        target_id: Option<String>,
        detail: serde_json::Value,
    ) -> Self {
        Record {
            id: uuid::Uuid::now_v7().to_string(),
            tenant,
            at: crate::now_ms(),
            actor,
            action,
            target_type: Some(target_type),
            target_id,
            detail: Some(detail.to_string()),
        }
    }
}

enum Msg {
    Record(Record),
    /// Answered once every record queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// Entries waiting to be written, at most: senders wait beyond.
const QUEUE: usize = 8192;
/// Entries per transaction, at most.
const BATCH: usize = 2048;
/// Rows per `INSERT` statement: 8 parameters each, 4,000 in all, far below
/// every backend's bind limit (SQLite 32,766, PostgreSQL 65,535).
const ROWS_PER_INSERT: usize = 500;
/// After a batch that did not fill up, how long the writer lets entries
/// gather before it looks again. Waking a sleeping thread for every entry
/// costs more than writing it; this bounds the wake-ups to about one per
/// millisecond under load, at the price of up to about a millisecond more
/// before an audit read's flush is answered.
const LINGER: Duration = Duration::from_millis(1);
/// How long a request waits for room in the queue, or an audit read for
/// the queue to be written, before it fails.
const STALL: Duration = Duration::from_secs(10);
/// Attempts at a batch once the writer is closing (while running, it
/// retries until the database answers).
const CLOSING_ATTEMPTS: u32 = 5;

/// The background audit writer of one admin. Runs on its own thread with
/// its own runtime and one connection, so that dropping it (even while the
/// caller's runtime shuts down) can wait for the last batch.
pub(crate) struct Writer {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Connects to `database_url` and starts the thread.
    pub(crate) async fn start(database_url: &str) -> Result<Writer, AdminError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (ready_tx, ready_rx) = oneshot::channel();
        let url = database_url.to_string();
        let thread = std::thread::Builder::new()
            .name("sensegate-audit".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ =
                            ready_tx.send(Err(AdminError::Audit(format!("writer runtime: {e}"))));
                        return;
                    }
                };
                rt.block_on(async move {
                    let pool = match crate::db::open(&url, Some(1)).await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    run(&pool, crate::db::is_sqlite(&url), rx).await;
                    pool.close().await;
                });
            })
            .map_err(|e| AdminError::Audit(format!("writer thread: {e}")))?;
        let started = ready_rx
            .await
            .unwrap_or_else(|_| Err(AdminError::Audit("writer did not start".into())));
        if let Err(e) = started {
            let _ = thread.join();
            return Err(e);
        }
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `r`, waiting while the queue is full — at most [`STALL`]:
    /// then the database has been failing for a while, and the caller
    /// fails (a token request answers `server_error` and issues nothing).
    pub(crate) async fn record(&self, r: Record) -> Result<(), AdminError> {
        let send = self.sender()?.send(Msg::Record(r));
        match tokio::time::timeout(STALL, send).await {
            Ok(sent) => sent.map_err(|_| stopped()),
            Err(_) => Err(stalled()),
        }
    }

    /// Waits until every record queued before this call is written (at
    /// most [`STALL`]).
    pub(crate) async fn flush(&self) -> Result<(), AdminError> {
        let (done_tx, done_rx) = oneshot::channel();
        let flushed = async {
            self.sender()?
                .send(Msg::Flush(done_tx))
                .await
                .map_err(|_| stopped())?;
            done_rx.await.map_err(|_| stopped())
        };
        tokio::time::timeout(STALL, flushed)
            .await
            .unwrap_or_else(|_| Err(stalled()))
    }

    fn sender(&self) -> Result<&mpsc::Sender<Msg>, AdminError> {
        self.tx.as_ref().ok_or_else(stopped)
    }
}

impl Drop for Writer {
    /// Closes the queue and waits for the thread to write what is left.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("audit writer panicked");
            }
        }
    }
}

fn stopped() -> AdminError {
    AdminError::Audit("writer stopped".into())
}

fn stalled() -> AdminError {
    AdminError::Audit("writer stalled: the database is not taking entries".into())
}

/// The writer loop: takes whatever is queued (up to [`BATCH`]), writes it
/// in one transaction, answers the flushes that were waiting for it.
async fn run(pool: &sqlx::AnyPool, sqlite: bool, mut rx: mpsc::Receiver<Msg>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Record(r) => batch.push(r),
                Msg::Flush(f) => flushes.push(f),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        let full = batch.len() >= BATCH;
        if !batch.is_empty() {
            write_retrying(pool, sqlite, &batch, &rx).await;
            batch.clear();
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
        if !full {
            tokio::time::sleep(LINGER).await;
        }
    }
}

/// Writes `batch`, retrying with back-off while the database fails: as long
/// as the admin runs, nothing is given up (senders wait on the full queue
/// meanwhile). Once it is closing, gives up after [`CLOSING_ATTEMPTS`] and
/// says how many entries were lost.
async fn write_retrying(
    pool: &sqlx::AnyPool,
    sqlite: bool,
    batch: &[Record],
    rx: &mpsc::Receiver<Msg>,
) {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match write(pool, sqlite, batch).await {
            Ok(()) => return,
            Err(e) if rx.is_closed() && attempt >= CLOSING_ATTEMPTS => {
                tracing::error!(error = %e, lost = batch.len(), "audit entries could not be written");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, pending = batch.len(), attempt, "audit write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One transaction, multi-row `INSERT`s.
async fn write(pool: &sqlx::AnyPool, sqlite: bool, batch: &[Record]) -> Result<(), AdminError> {
    let mut tx = if sqlite {
        pool.begin_with("BEGIN IMMEDIATE").await?
    } else {
        pool.begin().await?
    };
    for rows in batch.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO audit_log (id, tenant_id, at, actor, action, target_type, target_id, detail) VALUES ",
        );
        for i in 0..rows.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            if sqlite {
                // Anonymous parameters: SQLite looks a named one (`$n`) up
                // by a linear scan, which makes binding a long statement
                // quadratic.
                sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?)");
            } else {
                let b = i * 8;
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8
                ));
            }
        }
        let mut q = sqlx::query(&sql);
        for r in rows {
            q = q
                .bind(r.id.as_str())
                .bind(r.tenant.as_deref())
                .bind(r.at)
                .bind(r.actor.as_str())
                .bind(r.action)
                .bind(r.target_type)
                .bind(r.target_id.as_deref())
                .bind(r.detail.as_deref());
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}
