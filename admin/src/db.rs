//! Connection, migrations and the small SQL helpers every module shares.
//!
//! One schema serves SQLite and PostgreSQL through sqlx's `Any` driver, so
//! every statement here and elsewhere sticks to the common subset: `$n`
//! placeholders (SQLite accepts them too), TEXT, BIGINT, and 0/1 BIGINT flags
//! (the drivers decode BOOLEAN differently).

use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Executor, Row};

use crate::error::AdminError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connections for SQLite: one writer at a time anyway, a few readers.
const SQLITE_POOL: u32 = 4;
/// Connections for PostgreSQL: admin traffic is light.
const PG_POOL: u32 = 8;

/// Whether `url` names a SQLite database.
pub(crate) fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Opens the pool and applies pending migrations.
pub(crate) async fn connect(url: &str) -> Result<AnyPool, AdminError> {
    let pool = open(url, None).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Opens a pool of at most `max` connections (the default for the backend
/// if `None`), without migrating.
pub(crate) async fn open(url: &str, max: Option<u32>) -> Result<AnyPool, AdminError> {
    sqlx::any::install_default_drivers();
    let is_sqlite = is_sqlite(url);
    let url = if is_sqlite {
        sqlite_url(url)?
    } else {
        url.to_string()
    };
    let opts = AnyConnectOptions::from_str(&url)
        .map_err(|e| AdminError::Config(format!("database URL: {e}")))?;
    let pool = AnyPoolOptions::new()
        .max_connections(max.unwrap_or(if is_sqlite { SQLITE_POOL } else { PG_POOL }))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                if conn.backend_name().eq_ignore_ascii_case("sqlite") {
                    // WAL lets readers (lists, feed builds) run beside the
                    // writer; foreign keys enforce cascades; busy_timeout
                    // waits out another writer instead of failing.
                    // synchronous = NORMAL is WAL's recommended setting: a
                    // commit survives a process crash, and only a power loss
                    // can drop the last commits; it spares an fsync per
                    // commit (one per batch of token requests' audit rows).
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .connect_with(opts)
        .await?;
    Ok(pool)
}

/// Rewrites a `sqlite:` URL so that it survives the `Any` driver's round
/// trip through a generic URL parser, which would resolve `..` segments of
/// a relative path against the "host" and mangle unusual characters: the
/// path is made absolute and percent-encoded. Adds `mode=rwc` (create the
/// file on first start) unless a mode is given.
fn sqlite_url(url: &str) -> Result<String, AdminError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, params) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() || path == ":memory:" {
        return Ok(url.to_string());
    }
    let path = std::path::Path::new(path);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| AdminError::Config(format!("database path: {e}")))?
            .join(path)
    };
    let absolute = absolute
        .to_str()
        .ok_or_else(|| AdminError::Config("database path is not UTF-8".into()))?;
    let mut out = String::from("sqlite://");
    for b in absolute.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    let mut params: Vec<&str> = params
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .collect();
    if !params.iter().any(|p| p.starts_with("mode=")) {
        params.push("mode=rwc");
    }
    out.push('?');
    out.push_str(&params.join("&"));
    Ok(out)
}

/// Bumps and returns the feed version, inside the caller's transaction.
pub(crate) async fn bump_version(conn: &mut AnyConnection) -> Result<i64, AdminError> {
    sqlx::query("UPDATE feed_state SET version = version + 1 WHERE id = 1")
        .execute(&mut *conn)
        .await?;
    let row = sqlx::query("SELECT version FROM feed_state WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get::<i64, _>(0)?)
}

/// `LIKE` pattern matching `needle` anywhere, with the wildcards escaped
/// (use with `ESCAPE '\'`).
pub(crate) fn like_contains(needle: &str) -> String {
    let mut p = String::with_capacity(needle.len() + 2);
    p.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Reads a 0/1 flag column.
pub(crate) fn flag(row: &sqlx::any::AnyRow, col: &str) -> Result<bool, sqlx::Error> {
    Ok(row.try_get::<i64, _>(col)? != 0)
}

/// Opaque list cursor for "newest first" pages ordered by
/// `(created_at DESC, id DESC)`.
pub(crate) fn encode_cursor(created_at: i64, id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

/// The inverse of [`encode_cursor`]; `None` for anything it did not make.
pub(crate) fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (at, id) = s.split_once(':')?;
    Some((at.parse().ok()?, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let c = encode_cursor(1_700_000_000_123, "dev.1:x");
        assert_eq!(
            decode_cursor(&c),
            Some((1_700_000_000_123, "dev.1:x".into()))
        );
        assert_eq!(decode_cursor("!!"), None);
        assert_eq!(
            decode_cursor(&encode_cursor(1, "")),
            Some((1, String::new()))
        );
    }

    /// The binary builds `sqlite://{data_dir}/sensegate.db` from whatever
    /// directory it is given: relative, or with spaces.
    #[tokio::test]
    async fn sqlite_files_are_created_where_the_url_says() {
        let dir = tempfile::tempdir().unwrap();
        let spaced = dir.path().join("my data %41 #x");
        std::fs::create_dir(&spaced).unwrap();
        let pool = connect(&format!("sqlite://{}/sg.db", spaced.display()))
            .await
            .unwrap();
        pool.close().await;
        assert!(spaced.join("sg.db").exists());

        let cwd = std::env::current_dir().unwrap();
        let up = "../".repeat(cwd.components().count() - 1);
        let target = dir.path().join("rel.db");
        let relative = format!(
            "{up}{}",
            target.display().to_string().trim_start_matches('/')
        );
        let pool = connect(&format!("sqlite://{relative}?mode=rwc"))
            .await
            .unwrap();
        pool.close().await;
        assert!(target.exists(), "{relative}");
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_contains("a%b_c\\"), "%a\\%b\\_c\\\\%");
    }
}

/// A bind value for statements assembled at run time.
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

/// Binds `args` in order.
pub(crate) fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    args: &'q [Arg],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s.as_str()),
            Arg::Int(i) => q.bind(*i),
        };
    }
    q
}

/// One page request of a "newest first" list.
#[derive(Debug, Default)]
pub(crate) struct Page {
    /// Rows per page.
    pub(crate) limit: i64,
    /// Continue after this `(created_at, id)`.
    pub(crate) after: Option<(i64, String)>,
    /// Only names whose uniqueness key contains this (already folded).
    pub(crate) name_contains: Option<String>,
}

/// `SELECT {cols} FROM {table} WHERE tenant_id = $1 …` with the page's
/// filter, keyset cursor, order and `limit + 1` (to learn whether there is a
/// next page).
pub(crate) fn page_query(cols: &str, table: &str, tenant: &str, page: &Page) -> (String, Vec<Arg>) {
    let mut sql = format!("SELECT {cols} FROM {table} WHERE tenant_id = $1");
    let mut args = vec![Arg::Text(tenant.to_string())];
    if let Some(n) = &page.name_contains {
        args.push(Arg::Text(like_contains(n)));
        sql.push_str(&format!(" AND name_key LIKE ${} ESCAPE '\\'", args.len()));
    }
    if let Some((at, id)) = &page.after {
        let i = args.len();
        sql.push_str(&format!(
            " AND (created_at < ${} OR (created_at = ${} AND id < ${}))",
            i + 1,
            i + 2,
            i + 3
        ));
        args.push(Arg::Int(*at));
        args.push(Arg::Int(*at));
        args.push(Arg::Text(id.clone()));
    }
    args.push(Arg::Int(page.limit + 1));
    sql.push_str(&format!(
        " ORDER BY created_at DESC, id DESC LIMIT ${}",
        args.len()
    ));
    (sql, args)
}

/// Which of `ids` do not exist in `table` for `tenant`.
pub(crate) async fn missing_ids(
    conn: &mut AnyConnection,
    table: &str,
    tenant: &str,
    ids: &[String],
) -> Result<Vec<String>, AdminError> {
    /// Ids per statement: far below every backend's bind limit.
    const CHUNK: usize = 500;
    let mut found = std::collections::HashSet::new();
    for chunk in ids.chunks(CHUNK) {
        let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT id FROM {table} WHERE tenant_id = $1 AND id IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(tenant);
        for id in chunk {
            q = q.bind(id.as_str());
        }
        for r in q.fetch_all(&mut *conn).await? {
            found.insert(r.try_get::<String, _>(0)?);
        }
    }
    Ok(ids
        .iter()
        .filter(|i| !found.contains(*i))
        .cloned()
        .collect())
}
