//! Tenants, admin keys, tenant isolation and the audit log — on both
//! backends.

mod common;

use axum::http::{Method, StatusCode};
use common::*;
use serde_json::json;

async fn tenants_never_see_each_other(h: &Harness) {
    h.device("shared-id").await;
    h.post("/api/v1/device-groups", json!({"id": "g", "name": "G"}))
        .await;
    let theirs = h.app("Theirs", &["shared-id"], &["g"], false).await;
    let tid = theirs.str("id");

    let acme = h.admin.create_tenant("acme").await.unwrap();
    assert_eq!(acme.id, "acme");
    let key = h.admin.create_admin_key("ACME").await.unwrap();
    assert!(key.starts_with("sga_"));
    let as_acme = |m: Method, p: &str, b: Option<serde_json::Value>| {
        let key = key.clone();
        let p = p.to_string();
        async move { h.call_as(Some(&key), m, &p, b).await }
    };

    // Lists are empty; reads, writes and actions on the other tenant's
    // objects are 404; references to them are unknown ids.
    for p in [
        "/api/v1/devices",
        "/api/v1/applications",
        "/api/v1/device-groups",
        "/api/v1/audit",
    ] {
        let r = as_acme(Method::GET, p, None).await;
        assert_eq!(r.status, StatusCode::OK, "{p}");
        let items = r.body["items"].as_array().unwrap();
        assert!(
            items
                .iter()
                .all(|i| i["id"] != json!(tid) && i["id"] != "shared-id" && i["id"] != "g"),
            "{p}: {items:?}"
        );
        if p != "/api/v1/audit" {
            assert!(items.is_empty(), "{p}");
        }
    }
    let app_path = format!("/api/v1/applications/{tid}");
    for (m, p, b) in [
        (Method::GET, app_path.clone(), None),
        (
            Method::PATCH,
            app_path.clone(),
            Some(json!({"name": "pwned"})),
        ),
        (Method::DELETE, app_path.clone(), None),
        (Method::POST, format!("{app_path}/rotate-secret"), None),
        (Method::POST, format!("{app_path}/disable"), None),
        (Method::GET, "/api/v1/devices/shared-id".into(), None),
        (
            Method::PATCH,
            "/api/v1/devices/shared-id".into(),
            Some(json!({"name": "x"})),
        ),
        (
            Method::POST,
            "/api/v1/devices/shared-id/rotate-key".into(),
            None,
        ),
        (
            Method::POST,
            "/api/v1/devices/shared-id/disable".into(),
            None,
        ),
        (Method::DELETE, "/api/v1/devices/shared-id".into(), None),
        (Method::GET, "/api/v1/device-groups/g".into(), None),
        (
            Method::PATCH,
            "/api/v1/device-groups/g".into(),
            Some(json!({"devices": []})),
        ),
        (Method::DELETE, "/api/v1/device-groups/g".into(), None),
    ] {
        let r = as_acme(m.clone(), &p, b).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m} {p}: {r:?}");
    }
    let r = as_acme(
        Method::POST,
        "/api/v1/applications",
        Some(json!({"name": "Sneaky", "expiresAt": in_days(1), "devices": ["shared-id"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["field"], "devices");
    let r = as_acme(
        Method::POST,
        "/api/v1/device-groups",
        Some(json!({"name": "Sneaky", "devices": ["shared-id"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // The same ids and names are free in another tenant.
    let r = as_acme(
        Method::POST,
        "/api/v1/devices",
        Some(json!({"id": "shared-id", "name": "Mine"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = as_acme(
        Method::POST,
        "/api/v1/applications",
        Some(json!({"name": "Theirs", "expiresAt": in_days(1), "devices": ["shared-id"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let claims = h
        .verify(
            &h.access_token(&r.str("clientId"), &r.str("clientSecret"))
                .await,
        )
        .unwrap();
    assert_eq!(claims.tenant, "acme");
    assert_eq!(claims.devices, ["shared-id"]);
    // Each tenant's device is its own in the broker's view.
    let snap = h.sink.last();
    let owners: Vec<&str> = snap
        .devices
        .iter()
        .filter(|d| d.id == "shared-id")
        .map(|d| d.tenant.as_str())
        .collect();
    assert_eq!(owners, ["acme", "default"]);
    // The default tenant's objects are untouched.
    let v = h.get(&app_path).await;
    assert_eq!(v.body["name"], "Theirs");
    assert_eq!(v.body["status"], "enabled");
}

async fn admin_keys_are_listed_and_revoked(h: &Harness) {
    h.admin.create_tenant("ops").await.unwrap();
    assert!(matches!(
        h.admin.create_tenant("OPS").await,
        Err(sensegate_admin::AdminError::Conflict(_))
    ));
    assert!(matches!(
        h.admin.create_tenant("bad name").await,
        Err(sensegate_admin::AdminError::Invalid { .. })
    ));
    assert!(matches!(
        h.admin.create_admin_key("nobody").await,
        Err(sensegate_admin::AdminError::NotFound(_))
    ));
    let key = h.admin.create_admin_key("ops").await.unwrap();
    let keys = h.admin.list_admin_keys(Some("ops")).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].tenant, "ops");
    assert!(key.starts_with(&keys[0].hint));
    assert!(keys[0].revoked_at.is_none());
    assert_eq!(h.admin.list_admin_keys(None).await.unwrap().len(), 2);
    let tenants: Vec<String> = h
        .admin
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(tenants, ["default", "ops"]);

    assert_eq!(
        h.call_as(Some(&key), Method::GET, "/api/v1/devices", None)
            .await
            .status,
        StatusCode::OK
    );
    h.admin.revoke_admin_key(&keys[0].id).await.unwrap();
    let r = h
        .call_as(Some(&key), Method::GET, "/api/v1/devices", None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(h.admin.list_admin_keys(Some("ops")).await.unwrap()[0]
        .revoked_at
        .is_some());
    assert!(matches!(
        h.admin.revoke_admin_key("no-such-key").await,
        Err(sensegate_admin::AdminError::NotFound(_))
    ));
    // Stored hashed: the key itself appears nowhere in what can be listed.
    let listed = serde_json::to_string(&h.admin.list_admin_keys(None).await.unwrap()).unwrap();
    assert!(!listed.contains(&key));
}

async fn the_audit_log_records_who_did_what_without_secrets(h: &Harness) {
    h.device("d1").await;
    let app = h.app("Audited", &["d1"], &[], false).await;
    let id = app.str("id");
    let (cid, secret) = (app.str("clientId"), app.str("clientSecret"));
    h.patch(
        &format!("/api/v1/applications/{id}"),
        json!({"includeAnomalies": true}),
    )
    .await;
    let rotated = h
        .action(&format!("/api/v1/applications/{id}/rotate-secret"))
        .await
        .str("clientSecret");
    h.action(&format!("/api/v1/applications/{id}/disable"))
        .await;
    h.action(&format!("/api/v1/applications/{id}/enable")).await;
    h.access_token(&cid, &rotated).await;
    assert_eq!(
        h.token(&cid, &secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    h.delete(&format!("/api/v1/applications/{id}")).await;

    let r = h.get(&format!("/api/v1/audit?targetId={id}")).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let entries = r.body["items"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "application.delete",
            "token.refuse",
            "token.issue",
            "application.enable",
            "application.disable",
            "application.rotate_secret",
            "application.update",
            "application.create",
        ]
    );
    let refuse = &entries[1];
    assert_eq!(refuse["detail"]["reason"], "wrong_secret");
    assert_eq!(refuse["actor"], format!("client:{cid}"));
    assert!(entries[7]["actor"]
        .as_str()
        .unwrap()
        .starts_with("admin-key:"));
    assert_eq!(entries[6]["detail"]["fields"], json!(["includeAnomalies"]));
    assert!(entries
        .iter()
        .all(|e| e["at"].as_str().unwrap().ends_with('Z')));

    let all = h.get("/api/v1/audit?limit=200").await.body.to_string();
    for s in [&secret, &rotated, &h.key] {
        assert!(
            !all.contains(s.as_str()),
            "a secret leaked into the audit log"
        );
    }
    let devices = h.get("/api/v1/audit?action=device.create").await;
    assert_eq!(devices.body["items"][0]["targetId"], "d1");
    assert_eq!(devices.body["items"].as_array().unwrap().len(), 1);
    let page = h.get("/api/v1/audit?limit=3").await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 3);
    let next = page.str("nextCursor");
    let rest = h.get(&format!("/api/v1/audit?limit=3&cursor={next}")).await;
    assert_ne!(rest.body["items"][0]["id"], page.body["items"][0]["id"]);
    // A cursor this API did not hand out is refused, not read as a position.
    let simple = next.replace('-', "");
    let upper = next.to_uppercase();
    let bad_cursors = ["garbage", "-5", &simple, &upper];
    for bad in bad_cursors.into_iter().filter(|c| *c != next) {
        let r = h.get(&format!("/api/v1/audit?cursor={bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {r:?}");
        assert_eq!(r.body["field"], "cursor", "{bad}");
    }
    let future = h
        .get(&format!(
            "/api/v1/audit?since={}",
            in_days(1).replace('+', "%2B")
        ))
        .await;
    assert_eq!(future.body["items"], json!([]));
    let past = h
        .get(&format!(
            "/api/v1/audit?until={}",
            in_days(-1).replace('+', "%2B")
        ))
        .await;
    assert_eq!(past.body["items"], json!([]));
    assert_eq!(
        h.get("/api/v1/audit?since=yesterday").await.body["field"],
        "since"
    );
    assert_eq!(
        h.get("/api/v1/audit?bogus=1").await.status,
        StatusCode::BAD_REQUEST
    );
}

both_backends!(
    tenants_never_see_each_other,
    admin_keys_are_listed_and_revoked,
    the_audit_log_records_who_did_what_without_secrets,
);
