//! Micro-benchmarks of the token path: issuing an access token at
//! `POST /connect/token` (through the admin's router, in process: parsing,
//! throttling check, the in-memory client view, secret hash compare,
//! Ed25519 signature, batched audit entry) and verifying one as a stream
//! request does (`sensegate_broker::token::verify`).
//!
//! `cargo bench --bench tokens` (add `-- --quick` for a short run). The
//! HTTP-level figure, with connections and concurrency, is
//! `sensegate-loadtest token`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sensegate_admin::{Admin, AdminConfig, DiscardSink};
use sensegate_broker::access::AccessTable;
use tower::ServiceExt as _;

const ISSUER: &str = "http://127.0.0.1:8080";

fn token_request(client_id: &str, client_secret: &str) -> Request<Body> {
    Request::post("/connect/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!(
            "grant_type=client_credentials&client_id={client_id}&client_secret={client_secret}"
        )))
        .expect("a valid request")
}

fn tokens(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cfg = AdminConfig {
        database_url: format!("sqlite://{}/bench.db?mode=rwc", dir.path().display()),
        issuer: ISSUER.into(),
        token_ttl: Duration::from_secs(3600),
        bootstrap_admin_key: None,
        feed_poll: Duration::ZERO,
    };
    let (admin, seed, table) = rt.block_on(async {
        let (admin, _) = Admin::open(cfg, Arc::new(DiscardSink))
            .await
            .expect("admin opens");
        let seed = admin.seed_demo().await.expect("demo seeded");
        let table = AccessTable::compile(&admin.snapshot().await.expect("a snapshot"))
            .expect("the snapshot compiles");
        (admin, seed, table)
    });
    let router = admin.router();

    let mut g = c.benchmark_group("token");
    g.throughput(Throughput::Elements(1));
    g.bench_function("issue", |b| {
        b.iter(|| {
            let res = rt
                .block_on(
                    router
                        .clone()
                        .oneshot(token_request(&seed.client_id, &seed.client_secret)),
                )
                .expect("infallible");
            assert_eq!(res.status(), StatusCode::OK);
        })
    });

    let res = rt
        .block_on(
            router
                .clone()
                .oneshot(token_request(&seed.client_id, &seed.client_secret)),
        )
        .expect("infallible");
    let body = rt
        .block_on(axum::body::to_bytes(res.into_body(), 64 * 1024))
        .expect("a body");
    let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let token = body["access_token"].as_str().expect("a token").to_string();
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("in range");
    g.bench_function("verify", |b| {
        b.iter(|| {
            sensegate_broker::token::verify(&token, ISSUER, &table, now_ms)
                .expect("the token verifies")
                .0
                .exp
        })
    });
    g.finish();
    rt.block_on(admin.flush_audit()).expect("audit flushed");
}

criterion_group!(benches, tokens);
criterion_main!(benches);
