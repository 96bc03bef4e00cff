//! Two admin processes on one database (two `sensegate admin serve` on one
//! PostgreSQL, or the server and the CLI on one SQLite file): each one's
//! token endpoint and broker feed follow the other's changes within the
//! feed poll interval, and each one's token audit entries are all written.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use sensegate_admin::Admin;

const POLL: Duration = Duration::from_millis(200);
/// What "within the poll interval" may take on a loaded test machine.
const SLACK: Duration = Duration::from_secs(3);

/// A second admin on `h`'s database with its own broker sink and router.
async fn other(h: &Harness) -> (Admin, Arc<RecordingSink>, Harness2) {
    let sink = Arc::new(RecordingSink::default());
    let (admin, _) = Admin::open(h.cfg.clone(), sink.clone()).await.unwrap();
    let router = admin.router();
    (admin, sink, Harness2 { router })
}

/// Just enough of a [`Harness`] to send token requests to another admin.
struct Harness2 {
    router: axum::Router,
}

impl Harness2 {
    async fn token(&self, h: &Harness, cid: &str, secret: &str) -> Reply {
        // Borrow the request plumbing of `h` with this router.
        let body = form(&[
            ("grant_type", "client_credentials"),
            ("client_id", cid),
            ("client_secret", secret),
        ]);
        let req = axum::http::Request::post("/connect/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(body))
            .unwrap();
        h.send_to(&self.router, req).await
    }
}

/// Polls `f` until it holds; panics with `what` after `POLL + SLACK`.
async fn within_poll<F, Fut>(what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < POLL + SLACK,
            "{what}: not seen after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn changes_in_one_admin_reach_the_other(h: &Harness) {
    let (b, b_sink, b_http) = other(h).await;
    let verify_b = |token: &str| {
        let table = sensegate_broker::access::AccessTable::compile(&b_sink.last()).unwrap();
        sensegate_broker::token::verify(token, ISSUER, &table, now_ms()).map(|(c, _)| c)
    };

    // An application created through A: B issues tokens for it, and B's
    // broker knows it.
    h.device("d1").await;
    let app = h.app("Shared", &["d1"], &[], false).await;
    let (id, cid, secret) = (app.str("id"), app.str("clientId"), app.str("clientSecret"));
    // (Watched on B's broker first: until B knows the client, each request
    // would count as a failure against the brute-force limiter.)
    within_poll("application created in A, in B's broker", || async {
        b_sink.last().applications.iter().any(|a| a.id == id)
    })
    .await;
    // B's token view is swapped in right after that install.
    let mut reply = b_http.token(h, &cid, &secret).await;
    for _ in 0..3 {
        if reply.status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        reply = b_http.token(h, &cid, &secret).await;
    }
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let token = reply.str("access_token");
    let claims = verify_b(&token).unwrap();
    assert_eq!(claims.devices, ["d1"]);

    // A signing key rotated through A: B signs with it soon, and every
    // token B hands out meanwhile verifies against B's broker.
    let old_kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let new_kid = h.admin.rotate_signing_key().await.unwrap();
    assert_ne!(new_kid, old_kid);
    within_poll("key rotated in A, used by B", || async {
        let t = b_http.token(h, &cid, &secret).await.str("access_token");
        verify_b(&t).expect("B signs only with keys its broker knows");
        jsonwebtoken::decode_header(&t).unwrap().kid.unwrap() == new_kid
    })
    .await;
    assert!(b_sink
        .last()
        .verification_keys
        .iter()
        .any(|k| k.kid == old_kid));

    // Disabled through A: B's token endpoint refuses it, B's broker stops
    // its tokens.
    let r = h
        .action(&format!("/api/v1/applications/{id}/disable"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    within_poll("application disabled in A, refused by B", || async {
        b_http.token(h, &cid, &secret).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(verify_b(&token).is_err());

    // And the other way round: enabled through B, A issues again.
    let caller_key = h.key.clone();
    let req = axum::http::Request::post(format!("/api/v1/applications/{id}/enable"))
        .header("authorization", format!("Bearer {caller_key}"))
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(h.send_to(&b_http.router, req).await.status, StatusCode::OK);
    within_poll(
        "application enabled in B, at A's token endpoint",
        || async { h.token(&cid, &secret).await.status == StatusCode::OK },
    )
    .await;
    // Dropping B stops its poll: nothing keeps B alive, nothing more is
    // installed into its broker.
    drop(b_http);
    drop(b);
    // (A poll in progress may hold B a moment longer.)
    within_poll("B dropped", || async { Arc::strong_count(&b_sink) == 1 }).await;
    let installed = b_sink.snapshots.lock().len();
    h.action(&format!("/api/v1/applications/{id}/disable"))
        .await;
    tokio::time::sleep(POLL * 3).await;
    assert_eq!(b_sink.snapshots.lock().len(), installed);
}

async fn token_audit_entries_are_all_written(h: &Harness) {
    let app = h.app("Audited", &[], &[], false).await;
    let (id, cid, secret) = (app.str("id"), app.str("clientId"), app.str("clientSecret"));
    // Through A, concurrently: every answered request is in the log when
    // the log is read right after.
    let requests = (0..120).map(|i| {
        let (cid, secret) = (cid.clone(), secret.clone());
        async move {
            let wrong = format!("{secret}x");
            // A few wrong secrets: fewer than the limiter's 5 per client.
            h.token(&cid, if i % 30 == 0 { &wrong } else { &secret })
                .await
        }
    });
    let replies = futures_util::future::join_all(requests).await;
    let issued = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let refused = replies.len() - issued;
    assert_eq!(issued, 116);
    let count = |action: &'static str| {
        let id = id.clone();
        async move {
            let r = h
                .get(&format!(
                    "/api/v1/audit?targetId={id}&action={action}&limit=200"
                ))
                .await;
            assert_eq!(r.status, StatusCode::OK, "{r:?}");
            r.body["items"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("token.issue").await, issued);
    assert_eq!(count("token.refuse").await, refused);

    // Through another admin that is then dropped: its pending entries are
    // written on the way out (A's flush does not cover them).
    let (b, _sink, b_http) = other(h).await;
    for _ in 0..50 {
        assert_eq!(b_http.token(h, &cid, &secret).await.status, StatusCode::OK);
    }
    drop(b_http);
    drop(b);
    assert_eq!(count("token.issue").await, issued + 50);
}

mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_in_one_admin_reach_the_other() {
        let h = harness_opts(Backend::Sqlite, Duration::from_secs(3600), POLL)
            .await
            .unwrap();
        super::changes_in_one_admin_reach_the_other(&h).await;
        h.finish().await;
    }

    #[tokio::test]
    async fn token_audit_entries_are_all_written() {
        let h = harness_opts(Backend::Sqlite, Duration::from_secs(3600), POLL)
            .await
            .unwrap();
        super::token_audit_entries_are_all_written(&h).await;
        h.finish().await;
    }
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_in_one_admin_reach_the_other() {
        let Some(h) = harness_opts(Backend::Postgres, Duration::from_secs(3600), POLL).await else {
            return;
        };
        super::changes_in_one_admin_reach_the_other(&h).await;
        h.finish().await;
    }

    #[tokio::test]
    async fn token_audit_entries_are_all_written() {
        let Some(h) = harness_opts(Backend::Postgres, Duration::from_secs(3600), POLL).await else {
            return;
        };
        super::token_audit_entries_are_all_written(&h).await;
        h.finish().await;
    }
}
