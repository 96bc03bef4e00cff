//! Devices and device groups, and what their changes do to the broker's
//! view — on both backends.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::json;

async fn device_view_edit_and_validation(h: &Harness) {
    h.device("d1").await;
    let v = h.get("/api/v1/devices/d1").await;
    assert_eq!(v.status, StatusCode::OK);
    assert_eq!(v.body["name"], "Device d1");
    assert_eq!(v.body["metadata"], json!({}));
    assert!(v.body.get("ingestKey").is_none());

    let r = h
        .patch("/api/v1/devices/d1", json!({"metadata": {"site": "north"}}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["name"], "Device d1");
    assert_eq!(r.body["metadata"], json!({"site": "north"}));
    let r = h
        .patch("/api/v1/devices/d1", json!({"name": " Press 9 "}))
        .await;
    assert_eq!(r.body["name"], "Press 9");
    assert_eq!(r.body["metadata"], json!({"site": "north"}));

    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"metadata": "x"}), "metadata"),
        (json!({"id": "d2"}), "id"),
        (json!({"enabled": false}), "enabled"),
    ] {
        let r = h.patch("/api/v1/devices/d1", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.body["field"], field);
    }
    let big = json!({"id": "d9", "name": "n", "metadata": {"blob": "x".repeat(20_000)}});
    assert_eq!(
        h.post("/api/v1/devices", big).await.body["field"],
        "metadata"
    );
    assert_eq!(
        h.get("/api/v1/devices/ghost").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.patch("/api/v1/devices/ghost", json!({"name": "x"}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let dup = h
        .post("/api/v1/devices", json!({"id": "d1", "name": "again"}))
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    // Ids are case-sensitive and limited to 64 characters.
    h.device("D1").await;
    let long = "x".repeat(65);
    assert_eq!(
        h.post("/api/v1/devices", json!({"id": long, "name": "n"}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

async fn device_key_rotation_and_disable_reach_the_broker(h: &Harness) {
    let old = h.device("d1").await;
    let hash = |id: &str| {
        h.sink
            .last()
            .devices
            .into_iter()
            .find(|d| d.id == id)
            .map(|d| (d.key_sha256, d.enabled))
    };
    let (old_hash, _) = hash("d1").unwrap();
    let r = h.action("/api/v1/devices/d1/rotate-key").await;
    assert_eq!(r.status, StatusCode::OK);
    let new = r.str("ingestKey");
    assert_ne!(new, old);
    let (new_hash, enabled) = hash("d1").unwrap();
    assert_ne!(new_hash, old_hash);
    assert!(enabled);
    assert!(h
        .get("/api/v1/devices/d1")
        .await
        .body
        .get("ingestKey")
        .is_none());

    let r = h.action("/api/v1/devices/d1/disable").await;
    assert_eq!(r.body["enabled"], false);
    assert!(!hash("d1").unwrap().1);
    let r = h.action("/api/v1/devices/d1/enable").await;
    assert_eq!(r.body["enabled"], true);
    assert!(hash("d1").unwrap().1);
    assert_eq!(
        h.action("/api/v1/devices/ghost/rotate-key").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.action("/api/v1/devices/ghost/disable").await.status,
        StatusCode::NOT_FOUND
    );
}

async fn deleting_a_device_removes_it_everywhere(h: &Harness) {
    h.device("d1").await;
    h.device("d2").await;
    h.post(
        "/api/v1/device-groups",
        json!({"id": "g", "name": "G", "devices": ["d1", "d2"]}),
    )
    .await;
    let app = h.app("A", &["d1"], &["g"], false).await;
    assert_eq!(h.live_devices(&app.str("id")), ["d1", "d2"]);
    assert_eq!(
        h.delete("/api/v1/devices/d1").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.live_devices(&app.str("id")), ["d2"]);
    assert!(h.sink.last().devices.iter().all(|d| d.id != "d1"));
    assert_eq!(
        h.get("/api/v1/device-groups/g").await.body["devices"],
        json!(["d2"])
    );
    assert_eq!(
        h.get(&format!("/api/v1/applications/{}", app.str("id")))
            .await
            .body["devices"],
        json!([])
    );
    assert_eq!(
        h.delete("/api/v1/devices/d1").await.status,
        StatusCode::NOT_FOUND
    );
}

async fn groups_follow_their_members_including_later_ones(h: &Harness) {
    h.device("d1").await;
    let g = h
        .post(
            "/api/v1/device-groups",
            json!({"name": "Line A", "devices": ["d1"]}),
        )
        .await;
    assert_eq!(g.status, StatusCode::CREATED, "{g:?}");
    let gid = g.str("id");
    let app = h.app("Watcher", &[], &[&gid], false).await;
    let token = h
        .access_token(&app.str("clientId"), &app.str("clientSecret"))
        .await;
    assert_eq!(h.live_devices(&app.str("id")), ["d1"]);

    h.device("d2").await;
    let r = h
        .patch(
            &format!("/api/v1/device-groups/{gid}"),
            json!({"devices": ["d1", "d2", "d2"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["devices"], json!(["d1", "d2"]));
    assert_eq!(r.body["name"], "Line A");
    assert_eq!(h.live_devices(&app.str("id")), ["d1", "d2"]);
    h.verify(&token).unwrap();

    let r = h
        .patch(
            &format!("/api/v1/device-groups/{gid}"),
            json!({"name": "Line B"}),
        )
        .await;
    assert_eq!(r.body["devices"], json!(["d1", "d2"]));
    let r = h
        .patch(
            &format!("/api/v1/device-groups/{gid}"),
            json!({"devices": ["ghost"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["field"], "devices");
    assert!(r.str("message").contains("ghost"));

    let list = h.get("/api/v1/device-groups?name=line").await;
    assert_eq!(list.body["items"][0]["id"], gid.as_str());
    assert_eq!(
        h.get(&format!("/api/v1/device-groups/{gid}")).await.body["name"],
        "Line B"
    );

    assert_eq!(
        h.delete(&format!("/api/v1/device-groups/{gid}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert!(h.live_devices(&app.str("id")).is_empty());
    assert_eq!(
        h.get(&format!("/api/v1/applications/{}", app.str("id")))
            .await
            .body["deviceGroups"],
        json!([])
    );
    assert_eq!(
        h.get(&format!("/api/v1/device-groups/{gid}")).await.status,
        StatusCode::NOT_FOUND
    );
}

async fn group_names_are_unique_and_validated(h: &Harness) {
    let r = h
        .post(
            "/api/v1/device-groups",
            json!({"id": "g1", "name": "Ovens"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    for (body, status) in [
        (json!({"name": "OVENS"}), StatusCode::CONFLICT),
        (json!({"id": "g1", "name": "Other"}), StatusCode::CONFLICT),
        (json!({"name": ""}), StatusCode::BAD_REQUEST),
        (
            json!({"id": "bad id", "name": "x"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "devices": ["ghost"]}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({}), StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(
            h.post("/api/v1/device-groups", body.clone()).await.status,
            status,
            "{body}"
        );
    }
    let r = h
        .post("/api/v1/device-groups", json!({"name": "Presses"}))
        .await;
    let r = h
        .patch(
            &format!("/api/v1/device-groups/{}", r.str("id")),
            json!({"name": "ovens"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

/// Changes made at once are published together by one snapshot build
/// (group commit); each must still be in the broker's view by the time its
/// request is answered, and snapshots must still arrive in version order
/// (the recording sink asserts that).
async fn concurrent_changes_are_each_published_before_they_are_answered(h: &Harness) {
    const N: usize = 32;
    let before = h.sink.snapshots.lock().len();
    futures_util::future::join_all((0..N).map(|i| async move {
        let id = format!("burst-{i}");
        h.device(&id).await;
        let last = h.sink.last();
        assert!(
            last.devices.iter().any(|d| d.id == id),
            "{id} answered before a snapshot carrying it was installed"
        );
    }))
    .await;
    let last = h.sink.last();
    assert_eq!(
        last.devices
            .iter()
            .filter(|d| d.id.starts_with("burst-"))
            .count(),
        N
    );
    let installed = h.sink.snapshots.lock().len() - before;
    assert!(
        (1..=N).contains(&installed),
        "{installed} snapshots for {N} changes"
    );
}

both_backends!(
    concurrent_changes_are_each_published_before_they_are_answered,
    device_view_edit_and_validation,
    device_key_rotation_and_disable_reach_the_broker,
    deleting_a_device_removes_it_everywhere,
    groups_follow_their_members_including_later_ones,
    group_names_are_unique_and_validated,
);
