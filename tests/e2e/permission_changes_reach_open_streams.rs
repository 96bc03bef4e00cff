//! Every admin change reaches streams (and device sessions) that are already
//! open, within a second of the admin's answer, in one process and with the
//! admin and the broker as separate processes following the feed.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::harness::{Mode, Server, SseEvent, SseStream};

const MODES: [Mode; 2] = [Mode::OneProcess, Mode::Split];
const WAIT: Duration = Duration::from_secs(20);
/// The bar the issue sets for one process and across processes alike.
const WITHIN: Duration = Duration::from_secs(1);

async fn change(
    server: &Server,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Instant {
    let (status, resp) = server.admin(method, path, body).await;
    assert!((200..300).contains(&status), "{path}: {status} {resp}");
    Instant::now()
}

/// Waits for the next event named `name`; asserts it came within [`WITHIN`].
async fn expect_event(stream: &mut SseStream, name: &str, since: Instant) -> SseEvent {
    let evs = stream
        .collect_until(WAIT, |e| e.last().is_some_and(|e| e.event == name))
        .await;
    let took = since.elapsed();
    assert!(took < WITHIN, "{name} took {took:?}");
    evs.into_iter().last().unwrap()
}

fn one_reading(i: u32) -> String {
    format!("{{\"ts\":1,\"readings\":{{\"i\":{i}}}}}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_added_or_removed_directly_or_via_groups_take_effect_at_once() {
    for mode in MODES {
        let server = Server::start_mode(mode, &[]);
        let keys: Vec<String> =
            futures_util::future::join_all(["a", "b", "c"].map(|d| server.create_device(d))).await;
        let (status, group) = server
            .admin(
                Method::POST,
                "/api/v1/device-groups",
                Some(json!({"name": "g", "devices": ["b"]})),
            )
            .await;
        assert_eq!(status, 201, "{group}");
        let group_id = group["id"].as_str().unwrap().to_owned();
        let app = server
            .create_app_full("watcher", &["a"], &[&group_id], false)
            .await;
        let mut stream = server
            .open_stream(&server.token(&app.client_id, &app.secret).await, "")
            .await;

        // Remove the direct device: only the group's member keeps flowing.
        let t = change(
            &server,
            Method::PATCH,
            &format!("/api/v1/applications/{}", app.id),
            Some(json!({"devices": []})),
        )
        .await;
        let p = expect_event(&mut stream, "permissions", t).await;
        assert_eq!(p.json()["devices"], json!(["b"]), "{mode:?}");
        assert!(server
            .publish("a", &keys[0], &one_reading(1))
            .status
            .success());
        assert!(server
            .publish("b", &keys[1], &one_reading(2))
            .status
            .success());
        let got = stream.collect_until(WAIT, |e| !e.is_empty()).await;
        assert_eq!(
            got[0].json()["deviceId"],
            "b",
            "{mode:?}: a removed device must not flow"
        );

        // A device added to the group later is seen.
        let t = change(
            &server,
            Method::PATCH,
            &format!("/api/v1/device-groups/{group_id}"),
            Some(json!({"devices": ["b", "c"]})),
        )
        .await;
        let p = expect_event(&mut stream, "permissions", t).await;
        assert_eq!(p.json()["devices"], json!(["b", "c"]));
        assert!(server
            .publish("c", &keys[2], &one_reading(3))
            .status
            .success());
        let got = stream.collect_until(WAIT, |e| !e.is_empty()).await;
        assert_eq!(got[0].json()["deviceId"], "c");

        // Added back directly: it flows again.
        let t = change(
            &server,
            Method::PATCH,
            &format!("/api/v1/applications/{}", app.id),
            Some(json!({"devices": ["a"]})),
        )
        .await;
        expect_event(&mut stream, "permissions", t).await;
        assert!(server
            .publish("a", &keys[0], &one_reading(4))
            .status
            .success());
        let got = stream.collect_until(WAIT, |e| !e.is_empty()).await;
        assert_eq!(got[0].json()["deviceId"], "a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_anomalies_toggles_on_open_streams() {
    for mode in MODES {
        let server = Server::start_mode(mode, &[]);
        let key = server.create_device("d").await;
        let app = server.create_app_full("toggler", &["d"], &[], true).await;
        let mut stream = server
            .open_stream(&server.token(&app.client_id, &app.secret).await, "")
            .await;
        let path = format!("/api/v1/applications/{}", app.id);
        let both = "{\"ts\":1,\"kind\":\"anomaly\",\"readings\":{\"v\":1}}\n{\"ts\":2,\"kind\":\"reading\",\"readings\":{\"v\":2}}\n";

        let t = change(
            &server,
            Method::PATCH,
            &path,
            Some(json!({"includeAnomalies": false})),
        )
        .await;
        let p = expect_event(&mut stream, "permissions", t).await;
        assert_eq!(p.json()["includeAnomalies"], false);
        assert!(server.publish("d", &key, both).status.success());
        let got = stream.collect_until(WAIT, |e| !e.is_empty()).await;
        assert_eq!(
            got[0].event, "telemetry",
            "{mode:?}: anomaly delivered after it was turned off"
        );

        let t = change(
            &server,
            Method::PATCH,
            &path,
            Some(json!({"includeAnomalies": true})),
        )
        .await;
        expect_event(&mut stream, "permissions", t).await;
        assert!(server.publish("d", &key, both).status.success());
        let got = stream.collect_until(WAIT, |e| e.len() == 2).await;
        assert_eq!(got[0].event, "anomaly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_deleted_rotated_or_expired_applications_are_revoked_at_once() {
    for mode in MODES {
        let server = Server::start_mode(mode, &[]);
        server.create_device("d").await;
        for (action, method, suffix) in [
            ("disable", Method::POST, "/disable"),
            ("delete", Method::DELETE, ""),
            ("rotate", Method::POST, "/rotate-secret"),
        ] {
            let app = server
                .create_app_full(&format!("revoked by {action}"), &["d"], &[], false)
                .await;
            let token = server.token(&app.client_id, &app.secret).await;
            let mut stream = server.open_stream(&token, "").await;
            let t = change(
                &server,
                method,
                &format!("/api/v1/applications/{}{suffix}", app.id),
                None,
            )
            .await;
            let revoked = expect_event(&mut stream, "revoked", t).await;
            assert!(revoked.json()["reason"].is_string());
            assert!(
                stream.next(Duration::from_secs(2)).await.is_none(),
                "{mode:?} {action}: the stream must close"
            );
            let again = server.stream_request(&token, "", &[]).await;
            assert_eq!(
                again.status(),
                401,
                "{mode:?} {action}: the old token must be refused"
            );
        }
        // Expiry needs no operator action.
        let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
        let expires = expires
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let (status, body) = server
            .admin(
                Method::POST,
                "/api/v1/applications",
                Some(json!({"name": "short-lived", "expiresAt": expires, "includeAnomalies": false, "devices": ["d"], "deviceGroups": []})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let token = server
            .token(
                body["clientId"].as_str().unwrap(),
                body["clientSecret"].as_str().unwrap(),
            )
            .await;
        let mut stream = server.open_stream(&token, "").await;
        let ev = stream.collect_until(WAIT, |e| !e.is_empty()).await;
        assert_eq!(ev[0].event, "revoked", "{mode:?}");
        assert_eq!(ev[0].json()["reason"], "application expired");
        assert_eq!(server.stream_request(&token, "", &[]).await.status(), 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_or_rotated_devices_lose_their_quic_session() {
    use sensegate_ingest_proto::client::{
        client_config, endpoint_for, ClientError, DeviceSession, Trust,
    };
    use sensegate_ingest_proto::RejectCode;
    for mode in MODES {
        let server = Server::start_mode(mode, &[]);
        for (action, path_suffix) in [("disable", "/disable"), ("rotate", "/rotate-key")] {
            let device = format!("dev-{action}");
            let key = server.create_device(&device).await;
            let trust = Trust::from_pem(&std::fs::read(server.cert_path()).unwrap()).unwrap();
            let endpoint = endpoint_for(server.quic).unwrap();
            let mut session = DeviceSession::connect(
                &endpoint,
                client_config(trust).unwrap(),
                server.quic,
                "localhost",
                &device,
                &key,
            )
            .await
            .unwrap();
            change(
                &server,
                Method::POST,
                &format!("/api/v1/devices/{device}{path_suffix}"),
                None,
            )
            .await;
            match session.wait_acked(u64::MAX, WAIT).await {
                Err(ClientError::Rejected { code, .. }) => {
                    assert_eq!(
                        code,
                        Some(RejectCode::CredentialsRevoked),
                        "{mode:?} {action}"
                    )
                }
                other => panic!("{mode:?} {action}: expected a revocation close, got {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_rides_out_an_admin_restart_and_catches_up() {
    let mut server = Server::start_split(&[]);
    let key = server.create_device("d").await;
    let app = server.create_app_full("survivor", &["d"], &[], false).await;
    let mut stream = server
        .open_stream(&server.token(&app.client_id, &app.secret).await, "")
        .await;
    // The admin goes away: the broker keeps serving with the table it has.
    server.kill_admin();
    assert!(server.publish("d", &key, &one_reading(1)).status.success());
    assert_eq!(
        stream.collect_until(WAIT, |e| !e.is_empty()).await[0].event,
        "telemetry"
    );
    let ready: serde_json::Value = reqwest::get(format!("http://{}/readyz", server.stream_http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ready["checks"]["feed"]
            .as_str()
            .unwrap()
            .contains("disconnected"),
        "{ready}"
    );
    // It comes back on the same address and data: a change made now reaches the stream.
    server.restart_admin();
    let t = change(
        &server,
        Method::POST,
        &format!("/api/v1/applications/{}/disable", app.id),
        None,
    )
    .await;
    let evs = stream
        .collect_until(Duration::from_secs(20), |e| {
            e.last().is_some_and(|e| e.event == "revoked")
        })
        .await;
    assert_eq!(evs.last().unwrap().event, "revoked");
    // Reconnect backoff is at most 5 s.
    assert!(t.elapsed() < Duration::from_secs(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_started_before_the_admin_catches_up_when_it_comes() {
    let server = Server::start_split_broker_first();
    let key = server.create_device("d").await;
    let app = server.create_app_full("patient", &["d"], &[], false).await;
    let token = server.token(&app.client_id, &app.secret).await;
    // The broker learns of the application (and the signing key) from the
    // feed once the admin is up; allow for its reconnect backoff.
    let mut stream = server
        .open_stream_when_accepted(&token, Duration::from_secs(10))
        .await;
    assert!(server.publish("d", &key, &one_reading(7)).status.success());
    let got = stream.collect_until(WAIT, |e| !e.is_empty()).await;
    assert_eq!(got[0].json()["readings"]["i"], 7.0);
}

/// A TCP relay to the admin that, when armed, forwards half of the next
/// chunk carrying a feed delta and then cuts the connection.
struct CuttingRelay {
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CuttingRelay {
    fn start(upstream: std::net::SocketAddr) -> (Self, std::net::SocketAddr) {
        use std::sync::atomic::Ordering;
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cuts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (a, c) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((client, _)) = listener.accept().await {
                let (armed, cuts) = (a.clone(), c.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        let needle: &[u8] = b"\"type\":\"delta\"";
                        let delta = chunk.windows(needle.len()).any(|w| w == needle);
                        if delta && armed.swap(false, Ordering::SeqCst) {
                            let _ = cw.write_all(&chunk[..n / 2]).await;
                            cuts.fetch_add(1, Ordering::SeqCst);
                            return; // both halves dropped: the connection is cut mid-line
                        }
                        if cw.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (CuttingRelay { armed, cuts }, addr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_connection_cut_mid_delta_resumes_without_losing_the_change() {
    use std::sync::atomic::Ordering;
    let mut relay = None;
    let server = Server::start_split_through(|admin| {
        let (r, addr) = CuttingRelay::start(admin);
        relay = Some(r);
        addr
    });
    let relay = relay.unwrap();
    let keys: Vec<String> =
        futures_util::future::join_all(["a", "b"].map(|d| server.create_device(d))).await;
    let app = server.create_app_full("cut", &["a"], &[], false).await;
    let token = server.token(&app.client_id, &app.secret).await;
    // Wait until the broker knows the application.
    let mut stream = server
        .open_stream_when_accepted(&token, Duration::from_secs(10))
        .await;
    relay.armed.store(true, Ordering::SeqCst);
    let path = format!("/api/v1/applications/{}", app.id);
    change(
        &server,
        Method::PATCH,
        &path,
        Some(json!({"devices": ["a", "b"]})),
    )
    .await;
    let evs = stream
        .collect_until(Duration::from_secs(15), |e| {
            e.last().is_some_and(|e| e.event == "permissions")
        })
        .await;
    assert_eq!(evs.last().unwrap().json()["devices"], json!(["a", "b"]));
    assert_eq!(
        relay.cuts.load(Ordering::SeqCst),
        1,
        "the relay must have cut a delta in half"
    );
    assert!(server
        .publish("b", &keys[1], &one_reading(9))
        .status
        .success());
    let got = stream.collect_until(WAIT, |e| !e.is_empty()).await;
    assert_eq!(got[0].json()["deviceId"], "b");
}
