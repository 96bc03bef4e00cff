//! Shared harness: an [`Admin`] on a temp SQLite file or a throwaway
//! PostgreSQL database, its router driven with `oneshot`, and a sink that
//! records every installed snapshot.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use parking_lot::Mutex;
use sensegate_admin::{Admin, AdminConfig};
use sensegate_broker::access::{AccessSink, AccessTable, Snapshot, SnapshotError};
use sensegate_broker::token::{Claims, TokenError};
use serde_json::Value;
use sqlx::Connection as _;
use tower::ServiceExt as _;

pub const ISSUER: &str = "http://sensegate.test";
pub const BOOTSTRAP_KEY: &str = "sga_test-bootstrap-admin-key-0123456789abcdef";
pub const PG_ENV: &str = "SENSEGATE_TEST_PG_URL";

/// Records snapshots; refuses (like the broker ignores) non-increasing
/// versions so a test sees ordering bugs.
#[derive(Default)]
pub struct RecordingSink {
    pub snapshots: Mutex<Vec<Snapshot>>,
}

impl AccessSink for RecordingSink {
    fn install(&self, snapshot: Snapshot) -> Result<(), SnapshotError> {
        AccessTable::compile(&snapshot)?;
        let mut s = self.snapshots.lock();
        if let Some(last) = s.last() {
            assert!(
                snapshot.version > last.version,
                "snapshot version {} not above {}",
                snapshot.version,
                last.version
            );
        }
        s.push(snapshot);
        Ok(())
    }
}

impl RecordingSink {
    pub fn last(&self) -> Snapshot {
        self.snapshots.lock().last().cloned().expect("a snapshot")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Harness {
    pub admin: Admin,
    pub router: Router,
    pub sink: Arc<RecordingSink>,
    pub key: String,
    pub cfg: AdminConfig,
    pub backend: Backend,
    pg: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

/// The URL of database `db` on the server of `base`.
fn pg_url_for(base: &str, db: &str) -> String {
    let (no_query, query) = match base.split_once('?') {
        Some((a, q)) => (a, format!("?{q}")),
        None => (base, String::new()),
    };
    let scheme_end = no_query.find("://").map_or(0, |i| i + 3);
    let host_part = match no_query[scheme_end..].find('/') {
        Some(i) => &no_query[..scheme_end + i],
        None => no_query,
    };
    format!("{host_part}/{db}{query}")
}

/// A harness on `backend`; `None` (after saying so) when PostgreSQL is not
/// configured.
pub async fn harness(backend: Backend) -> Option<Harness> {
    harness_with(backend, Duration::from_secs(3600)).await
}

pub async fn harness_with(backend: Backend, ttl: Duration) -> Option<Harness> {
    harness_opts(backend, ttl, AdminConfig::DEFAULT_FEED_POLL).await
}

/// A harness whose admin polls the database for other processes' changes
/// every `feed_poll`.
pub async fn harness_opts(backend: Backend, ttl: Duration, feed_poll: Duration) -> Option<Harness> {
    let (url, pg, dir) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/sensegate.db?mode=rwc", dir.path().display());
            (url, None, Some(dir))
        }
        Backend::Postgres => {
            let Ok(base) = std::env::var(PG_ENV) else {
                println!("{PG_ENV} not set: PostgreSQL pass skipped");
                return None;
            };
            let name = format!("sg_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
            (pg_url_for(&base, &name), Some((base, name)), None)
        }
    };
    let cfg = AdminConfig {
        database_url: url,
        issuer: ISSUER.into(),
        token_ttl: ttl,
        bootstrap_admin_key: Some(BOOTSTRAP_KEY.into()),
        feed_poll,
    };
    let sink = Arc::new(RecordingSink::default());
    let (admin, generated) = Admin::open(cfg.clone(), sink.clone()).await.unwrap();
    assert!(generated.is_none());
    Some(Harness {
        router: admin.router(),
        admin,
        sink,
        key: BOOTSTRAP_KEY.into(),
        cfg,
        backend,
        pg,
        _dir: dir,
    })
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

impl Reply {
    pub fn str(&self, field: &str) -> String {
        self.body[field]
            .as_str()
            .unwrap_or_else(|| panic!("no string {field} in {}", self.body))
            .to_string()
    }
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 `days` from now.
pub fn in_days(days: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::days(days))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

impl Harness {
    /// Sends a raw request.
    pub async fn send(&self, req: Request<Body>) -> Reply {
        self.send_to(&self.router, req).await
    }

    /// Sends a raw request to `router` (another admin's, say).
    pub async fn send_to(&self, router: &Router, req: Request<Body>) -> Reply {
        let res = router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "non-JSON body ({status}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// An admin API call with `key` (none if `None`).
    pub async fn call_as(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        let req = match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        }
        .unwrap();
        self.send(req).await
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call_as(Some(&self.key.clone()), method, path, body)
            .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn action(&self, path: &str) -> Reply {
        self.call(Method::POST, path, None).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, None).await
    }

    /// Creates a device; returns its ingest key.
    pub async fn device(&self, id: &str) -> String {
        let r = self
            .post(
                "/api/v1/devices",
                serde_json::json!({"id": id, "name": format!("Device {id}")}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        r.str("ingestKey")
    }

    /// Creates an application; returns the 201 reply.
    pub async fn app(
        &self,
        name: &str,
        devices: &[&str],
        groups: &[&str],
        anomalies: bool,
    ) -> Reply {
        let r = self
            .post(
                "/api/v1/applications",
                serde_json::json!({
                    "name": name,
                    "expiresAt": in_days(30),
                    "includeAnomalies": anomalies,
                    "devices": devices,
                    "deviceGroups": groups,
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        r
    }

    /// A token request with a form body and extra headers, from `peer`.
    pub async fn token_raw(
        &self,
        headers: &[(&str, &str)],
        body: &str,
        peer: Option<SocketAddr>,
    ) -> Reply {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/connect/token");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = b.body(Body::from(body.to_string())).unwrap();
        if let Some(p) = peer {
            req.extensions_mut().insert(ConnectInfo(p));
        }
        let r = self.send(req).await;
        assert_eq!(r.headers["cache-control"], "no-store", "{r:?}");
        assert_eq!(r.headers["pragma"], "no-cache", "{r:?}");
        r
    }

    /// A client-credentials request with credentials in the body.
    pub async fn token(&self, client_id: &str, secret: &str) -> Reply {
        let body = form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
        ]);
        self.token_raw(
            &[("content-type", "application/x-www-form-urlencoded")],
            &body,
            None,
        )
        .await
    }

    /// Gets a token that must succeed.
    pub async fn access_token(&self, client_id: &str, secret: &str) -> String {
        let r = self.token(client_id, secret).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        r.str("access_token")
    }

    /// Verifies a token as the broker would, against the last installed
    /// snapshot.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let table = AccessTable::compile(&self.sink.last()).unwrap();
        sensegate_broker::token::verify(token, ISSUER, &table, now_ms()).map(|(c, _)| c)
    }

    /// The device ids the broker would stream to application `app` now.
    pub fn live_devices(&self, app: &str) -> Vec<String> {
        let table = AccessTable::compile(&self.sink.last()).unwrap();
        let mut v: Vec<String> = table.apps[app]
            .devices
            .iter()
            .map(|d| d.id.to_string())
            .collect();
        v.sort();
        v
    }

    /// Drops the throwaway PostgreSQL database.
    pub async fn finish(self) {
        let Harness {
            admin, router, pg, ..
        } = self;
        drop(router);
        drop(admin);
        if let Some((base, name)) = pg {
            let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

pub fn basic(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

/// Runs each listed `async fn(&Harness)` once per backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let h = $crate::common::harness($crate::common::Backend::Sqlite).await.unwrap();
                    super::$name(&h).await;
                    h.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(h) = $crate::common::harness($crate::common::Backend::Postgres).await else {
                        return;
                    };
                    super::$name(&h).await;
                    h.finish().await;
                }
            )*
        }
    };
}
