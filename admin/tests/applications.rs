//! External applications: validation, conflicts, every lifecycle action
//! followed by a token request that proves its effect — on both backends.

mod common;

use std::collections::HashSet;

use axum::http::StatusCode;
use common::*;
use sensegate_broker::token::TokenError;
use serde_json::json;

fn app_path(id: &str) -> String {
    format!("/api/v1/applications/{id}")
}

async fn names_are_unique_after_nfc_trim_and_case_folding(h: &Harness) {
    h.app("Café Dashboard", &[], &[], false).await;
    for clash in [
        "café dashboard",
        "  CAFE\u{301} DASHBOARD ",
        "Cafe\u{301} Dashboard",
    ] {
        let r = h
            .post(
                "/api/v1/applications",
                json!({"name": clash, "expiresAt": in_days(1)}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{clash:?}: {r:?}");
        assert_eq!(r.body["error"], "conflict");
    }
    // Folding is full Unicode case folding.
    h.app("STRASSE", &[], &[], false).await;
    let r = h
        .post(
            "/api/v1/applications",
            json!({"name": "straße", "expiresAt": in_days(1)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Stored trimmed.
    let r = h.app("  Spaced  ", &[], &[], false).await;
    assert_eq!(r.body["name"], "Spaced");
    // A rename onto another name clashes too.
    let r = h
        .patch(&app_path(&r.str("id")), json!({"name": "cafÉ dashboard"}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

async fn bad_names_and_dates_are_refused(h: &Harness) {
    let long = "x".repeat(101);
    for name in [
        "",
        "   ",
        long.as_str(),
        "bell\u{7}",
        "zero\u{200B}width",
        "rtl\u{202E}gnp",
        "line\nbreak",
    ] {
        let r = h
            .post(
                "/api/v1/applications",
                json!({"name": name, "expiresAt": in_days(1)}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name:?}");
        assert_eq!(r.body["field"], "name", "{name:?}");
    }
    h.app(&"y".repeat(100), &[], &[], false).await;
    for when in [
        in_days(-1),
        "2020-01-01T00:00:00Z".to_string(),
        "2030-13-01T00:00:00Z".into(),
        "2030-01-01 00:00".into(),
    ] {
        let r = h
            .post(
                "/api/v1/applications",
                json!({"name": "when", "expiresAt": when}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{when}");
        assert_eq!(r.body["field"], "expiresAt");
    }
    // Any offset is accepted and returned in UTC.
    let r = h
        .post(
            "/api/v1/applications",
            json!({"name": "offset", "expiresAt": "2999-06-01T12:30:00.250+02:00"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["expiresAt"], "2999-06-01T10:30:00.250Z");
    assert_eq!(r.body["includeAnomalies"], false);
}

async fn unknown_devices_and_groups_are_named(h: &Harness) {
    h.device("d1").await;
    let r = h
        .post(
            "/api/v1/applications",
            json!({"name": "a", "expiresAt": in_days(1), "devices": ["d1", "ghost-2", "ghost-1"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["field"], "devices");
    let msg = r.str("message");
    assert!(
        msg.contains("ghost-1") && msg.contains("ghost-2") && !msg.contains("d1"),
        "{msg}"
    );
    let r = h
        .post(
            "/api/v1/applications",
            json!({"name": "a", "expiresAt": in_days(1), "deviceGroups": ["nope"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["field"], "deviceGroups");
    assert!(r.str("message").contains("nope"));
    // Nothing was created.
    assert_eq!(h.get("/api/v1/applications").await.body["items"], json!([]));
}

async fn concurrent_creates_with_one_name_yield_one_application(h: &Harness) {
    let body = json!({"name": "Race", "expiresAt": in_days(1)});
    let (a, b, c) = tokio::join!(
        h.post("/api/v1/applications", body.clone()),
        h.post(
            "/api/v1/applications",
            json!({"name": "race ", "expiresAt": in_days(1)})
        ),
        h.post("/api/v1/applications", body.clone()),
    );
    let mut statuses = [a.status, b.status, c.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [
            StatusCode::CREATED,
            StatusCode::CONFLICT,
            StatusCode::CONFLICT
        ]
    );
    assert_eq!(
        h.get("/api/v1/applications").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn view_shows_every_property_but_the_secret(h: &Harness) {
    h.device("d1").await;
    h.post("/api/v1/device-groups", json!({"id": "g", "name": "G"}))
        .await;
    let app = h.app("Viewer", &["d1"], &["g"], true).await;
    let v = h.get(&app_path(&app.str("id"))).await;
    assert_eq!(v.status, StatusCode::OK);
    assert_eq!(v.body["name"], "Viewer");
    assert_eq!(v.body["includeAnomalies"], true);
    assert_eq!(v.body["devices"], json!(["d1"]));
    assert_eq!(v.body["deviceGroups"], json!(["g"]));
    assert_eq!(v.body["status"], "enabled");
    assert_eq!(v.body["clientId"], app.body["clientId"]);
    for f in ["expiresAt", "createdAt", "updatedAt"] {
        assert!(v.str(f).ends_with('Z'));
    }
    assert!(v.body.get("clientSecret").is_none());
    assert!(!v.body.to_string().contains(&app.str("clientSecret")));
    assert_eq!(
        h.get(&app_path("no-such-app")).await.status,
        StatusCode::NOT_FOUND
    );
}

async fn edit_changes_only_given_fields_and_bites_at_once(h: &Harness) {
    for d in ["d1", "d2", "d3"] {
        h.device(d).await;
    }
    h.post(
        "/api/v1/device-groups",
        json!({"id": "g", "name": "G", "devices": ["d3"]}),
    )
    .await;
    let app = h.app("Editable", &["d1"], &[], false).await;
    let id = app.str("id");
    let token = h
        .access_token(&app.str("clientId"), &app.str("clientSecret"))
        .await;

    let r = h
        .patch(
            &app_path(&id),
            json!({"devices": ["d2"], "deviceGroups": ["g"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["name"], "Editable");
    assert_eq!(r.body["devices"], json!(["d2"]));
    assert_eq!(r.body["includeAnomalies"], false);
    assert_eq!(h.live_devices(&id), ["d2", "d3"]);
    // The token issued before the edit still works and follows the live set.
    h.verify(&token).unwrap();

    let r = h
        .patch(
            &app_path(&id),
            json!({"name": "Renamed", "includeAnomalies": true}),
        )
        .await;
    assert_eq!(r.body["name"], "Renamed");
    assert_eq!(r.body["devices"], json!(["d2"]));
    assert_eq!(r.body["deviceGroups"], json!(["g"]));
    let entry = h
        .sink
        .last()
        .applications
        .into_iter()
        .find(|a| a.id == id)
        .unwrap();
    assert!(entry.include_anomalies);

    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"devices": ["ghost"]}), "devices"),
        (json!({"deviceGroups": ["ghost"]}), "deviceGroups"),
        (json!({"includeAnomalies": 1}), "includeAnomalies"),
        (json!({"expiresAt": in_days(9)}), "expiresAt"),
        (json!({"clientSecret": "x"}), "clientSecret"),
    ] {
        let r = h.patch(&app_path(&id), body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.body["field"], field);
    }
    // Failed edits changed nothing.
    assert_eq!(h.get(&app_path(&id)).await.body["devices"], json!(["d2"]));
    assert_eq!(
        h.patch(&app_path("ghost"), json!({"name": "x"}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

async fn delete_removes_the_application_and_its_tokens(h: &Harness) {
    let app = h.app("Doomed", &[], &[], false).await;
    let (cid, secret) = (app.str("clientId"), app.str("clientSecret"));
    let token = h.access_token(&cid, &secret).await;
    let r = h.delete(&app_path(&app.str("id"))).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(h.verify(&token), Err(TokenError::AppGone));
    assert_eq!(
        h.token(&cid, &secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.get(&app_path(&app.str("id"))).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.delete(&app_path(&app.str("id"))).await.status,
        StatusCode::NOT_FOUND
    );
    // The name is free again.
    h.app("Doomed", &[], &[], false).await;
}

async fn rotation_replaces_the_secret_and_revokes_old_tokens(h: &Harness) {
    let app = h.app("Rotating", &[], &[], false).await;
    let (id, cid, old) = (app.str("id"), app.str("clientId"), app.str("clientSecret"));
    let token = h.access_token(&cid, &old).await;
    let r = h.action(&format!("{}/rotate-secret", app_path(&id))).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.str("clientId"), cid);
    let new = r.str("clientSecret");
    assert_ne!(new, old);
    assert!(new.starts_with("sgs_"));
    assert_eq!(h.token(&cid, &old).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.verify(&token), Err(TokenError::SecretRotated));
    let fresh = h.access_token(&cid, &new).await;
    assert_eq!(h.verify(&fresh).unwrap().sgen, 2);
    assert!(h
        .get(&app_path(&id))
        .await
        .body
        .get("clientSecret")
        .is_none());
    let r = h
        .action(&format!("{}/rotate-secret", app_path("ghost")))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

async fn concurrent_rotations_leave_exactly_one_valid_secret(h: &Harness) {
    let app = h.app("Contended", &[], &[], false).await;
    let (id, cid) = (app.str("id"), app.str("clientId"));
    let path = format!("{}/rotate-secret", app_path(&id));
    let (a, b, c, d) = tokio::join!(
        h.action(&path),
        h.action(&path),
        h.action(&path),
        h.action(&path)
    );
    let secrets: Vec<String> = [a, b, c, d].iter().map(|r| r.str("clientSecret")).collect();
    assert_eq!(secrets.iter().collect::<HashSet<_>>().len(), 4);
    let mut valid = Vec::new();
    for s in &secrets {
        if h.token(&cid, s).await.status == StatusCode::OK {
            valid.push(s.clone());
        }
    }
    assert_eq!(valid.len(), 1, "exactly one secret works");
    let entry = h
        .sink
        .last()
        .applications
        .into_iter()
        .find(|a| a.id == id)
        .unwrap();
    assert_eq!(entry.secret_generation, 5);
}

async fn disable_and_enable_flip_tokens_off_and_on(h: &Harness) {
    let app = h.app("Switch", &[], &[], false).await;
    let (id, cid, secret) = (app.str("id"), app.str("clientId"), app.str("clientSecret"));
    let token = h.access_token(&cid, &secret).await;
    let r = h.action(&format!("{}/disable", app_path(&id))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "disabled");
    assert!(r.body.get("clientSecret").is_none());
    assert_eq!(
        h.verify(&token),
        Err(TokenError::AppRefused("application disabled"))
    );
    assert_eq!(
        h.token(&cid, &secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    let list = h.get("/api/v1/applications").await;
    assert_eq!(list.body["items"][0]["status"], "disabled");

    let r = h.action(&format!("{}/enable", app_path(&id))).await;
    assert_eq!(r.body["status"], "enabled");
    h.verify(&token).unwrap();
    h.access_token(&cid, &secret).await;
    assert_eq!(
        h.action(&format!("{}/disable", app_path("ghost")))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

async fn expiry_refuses_tokens_without_operator_action(h: &Harness) {
    let expires = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let r = h
        .post(
            "/api/v1/applications",
            json!({
                "name": "Short-lived",
                "expiresAt": expires.format(&time::format_description::well_known::Rfc3339).unwrap(),
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (cid, secret) = (r.str("clientId"), r.str("clientSecret"));
    let t = h.token(&cid, &secret).await;
    assert_eq!(t.status, StatusCode::OK);
    // A token never outlives its application.
    assert!(t.body["expires_in"].as_i64().unwrap() <= 2);
    let token = t.str("access_token");
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    assert_eq!(
        h.token(&cid, &secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(h.verify(&token).is_err());
    let list = h.get("/api/v1/applications").await;
    assert_eq!(list.body["items"][0]["expired"], true);
    assert_eq!(list.body["items"][0]["status"], "enabled");
}

async fn lists_page_newest_first_and_filter_by_name(h: &Harness) {
    for i in 0..5 {
        h.app(&format!("App {i}"), &[], &[], false).await;
    }
    h.app("Other thing", &[], &[], false).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/applications?limit=2&name=app&cursor={c}"),
            None => "/api/v1/applications?limit=2&name=app".to_string(),
        };
        let r = h.get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        let items = r.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_string()),
        );
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ["App 4", "App 3", "App 2", "App 1", "App 0"]);
    // The filter folds case and normalises like uniqueness does.
    let r = h.get("/api/v1/applications?name=OTHER%20").await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    for bad in [
        "limit=0",
        "limit=201",
        "limit=x",
        "cursor=garbage!",
        "sort=name",
        "limit=1&limit=2",
    ] {
        let r = h.get(&format!("/api/v1/applications?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

both_backends!(
    names_are_unique_after_nfc_trim_and_case_folding,
    bad_names_and_dates_are_refused,
    unknown_devices_and_groups_are_named,
    concurrent_creates_with_one_name_yield_one_application,
    view_shows_every_property_but_the_secret,
    edit_changes_only_given_fields_and_bites_at_once,
    delete_removes_the_application_and_its_tokens,
    rotation_replaces_the_secret_and_revokes_old_tokens,
    concurrent_rotations_leave_exactly_one_valid_secret,
    disable_and_enable_flip_tokens_off_and_on,
    expiry_refuses_tokens_without_operator_action,
    lists_page_newest_first_and_filter_by_name,
);

/// Token requests write audit rows while the admin edits: on SQLite a
/// deferred write transaction that read first would fail with
/// SQLITE_BUSY_SNAPSHOT; every request must succeed.
async fn edits_and_token_requests_run_concurrently(h: &Harness) {
    h.device("d1").await;
    h.device("d2").await;
    let app = h.app("Busy", &["d1"], &[], false).await;
    let (id, cid, secret) = (app.str("id"), app.str("clientId"), app.str("clientSecret"));
    let path = app_path(&id);
    let edits = async {
        for i in 0..20 {
            let devices = if i % 2 == 0 {
                json!(["d1", "d2"])
            } else {
                json!(["d2"])
            };
            let r = h.patch(&path, json!({"devices": devices})).await;
            assert_eq!(r.status, StatusCode::OK, "edit {i}: {r:?}");
        }
    };
    let tokens = async {
        let mut set = Vec::new();
        for _ in 0..40 {
            set.push(h.token(&cid, &secret));
        }
        for r in futures_util::future::join_all(set).await {
            assert_eq!(r.status, StatusCode::OK, "{r:?}");
        }
    };
    tokio::join!(edits, tokens);
}

mod concurrency {
    use super::*;

    /// On a multi-threaded runtime, so requests really overlap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        let h = harness(Backend::Sqlite).await.unwrap();
        edits_and_token_requests_run_concurrently(&h).await;
        h.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        let Some(h) = harness(Backend::Postgres).await else {
            return;
        };
        edits_and_token_requests_run_concurrently(&h).await;
        h.finish().await;
    }
}

/// Two admin processes on one database (PostgreSQL in production): the
/// SQL unique constraint, not the in-process lock, decides the race.
async fn concurrent_creates_across_processes_yield_one_application(h: &Harness) {
    let other_sink = std::sync::Arc::new(RecordingSink::default());
    let (other, _) = sensegate_admin::Admin::open(h.cfg.clone(), other_sink)
        .await
        .unwrap();
    let other_router = other.router();
    for round in 0..5 {
        let name = format!("Contested {round}");
        let req = || {
            axum::http::Request::post("/api/v1/applications")
                .header("authorization", format!("Bearer {}", h.key))
                .header("content-type", "application/json")
                .body(axum::body::Body::from(
                    json!({"name": name, "expiresAt": in_days(1)}).to_string(),
                ))
                .unwrap()
        };
        use tower::ServiceExt as _;
        let (a, b) = tokio::join!(
            h.router.clone().oneshot(req()),
            other_router.clone().oneshot(req())
        );
        let mut statuses = [a.unwrap().status(), b.unwrap().status()];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "round {round}"
        );
    }
    assert_eq!(
        h.get("/api/v1/applications").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

mod across_processes {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        let h = harness(Backend::Sqlite).await.unwrap();
        concurrent_creates_across_processes_yield_one_application(&h).await;
        h.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        let Some(h) = harness(Backend::Postgres).await else {
            return;
        };
        concurrent_creates_across_processes_yield_one_application(&h).await;
        h.finish().await;
    }
}
