//! A client that reconnects with `Last-Event-ID` gets every event after it,
//! once, in order — even while events keep arriving during the reconnect —
//! and is told in-band when its resume point cannot be honoured.

use std::time::Duration;

use crate::harness::{readings, Server};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_events_arriving_during_reconnect_is_exactly_once() {
    let server = Server::start(&[]);
    let key_a = server.create_device("a").await;
    let key_b = server.create_device("b").await;
    let (id, secret) = server.create_app("resumer", &["a", "b"], false).await;
    let token = server.token(&id, &secret).await;

    let mut stream = server.open_stream(&token, "").await;
    server.publish_n("a", &key_a, 300);
    let first = stream.collect_until(WAIT, |e| e.len() == 120).await;
    let resume_at = first.last().unwrap().id();
    drop(stream);

    // Two devices publish while the client is away and while it reconnects.
    let mut pub_a = server
        .publish_command("a", &key_a, &readings(300))
        .spawn()
        .unwrap();
    let mut pub_b = server
        .publish_command("b", &key_b, &readings(300))
        .spawn()
        .unwrap();
    let resume = resume_at.to_string();
    let mut stream = server
        .open_stream_with(&token, "", &[("Last-Event-ID", resume.as_str())])
        .await;
    assert!(pub_a.wait().unwrap().success());
    assert!(pub_b.wait().unwrap().success());
    // 180 left of the first batch, 300 more from each device.
    let rest = stream.collect_until(WAIT, |e| e.len() == 180 + 600).await;
    assert!(
        stream.next(Duration::from_millis(500)).await.is_none(),
        "no extra events"
    );

    let ids: Vec<u64> = rest.iter().map(|e| e.id()).collect();
    assert!(ids[0] > resume_at);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing ids"
    );
    for device in ["a", "b"] {
        let seqs: Vec<u64> = first
            .iter()
            .chain(&rest)
            .map(|e| e.json())
            .filter(|d| d["deviceId"] == device)
            .map(|d| d["seq"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = if device == "a" {
            (1..=600).collect()
        } else {
            (1..=300).collect()
        };
        assert_eq!(
            seqs, expected,
            "device {device}: every event exactly once, in order"
        );
    }
    assert!(rest.iter().all(|e| e.event == "telemetry"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_too_old_or_malformed_last_event_id_gets_a_gap_first() {
    let server = Server::start(&["--ring-events", "50"]);
    let key = server.create_device("d").await;
    let (id, secret) = server.create_app("resumer", &["d"], false).await;
    let token = server.token(&id, &secret).await;
    let mut live = server.open_stream(&token, "").await;
    server.publish_n("d", &key, 200);
    let all = live.collect_until(WAIT, |e| e.len() == 200).await;

    // Older than the ring: a gap, then what the ring still holds (the last 50).
    let old = all[10].id().to_string();
    let mut s = server
        .open_stream_with(&token, "", &[("Last-Event-ID", &old)])
        .await;
    let got = s.collect_until(WAIT, |e| e.len() == 51).await;
    assert_eq!(got[0].event, "gap");
    assert_eq!(got[0].json()["reason"], "replay-evicted");
    assert_eq!(got[0].json()["lastEventId"], old.as_str());
    let replayed: Vec<u64> = got[1..]
        .iter()
        .map(|e| e.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(replayed, (151..=200).collect::<Vec<_>>());

    // Inside the ring: no gap, exactly what followed.
    let recent = all[179].id().to_string();
    let mut s = server
        .open_stream_with(&token, "", &[("Last-Event-ID", &recent)])
        .await;
    let got = s.collect_until(WAIT, |e| e.len() == 20).await;
    assert!(got.iter().all(|e| e.event == "telemetry"));
    assert_eq!(got[0].json()["seq"], 181);

    // From the future (unknown) and malformed: a gap and nothing else.
    for (value, reason) in [
        ("999999999999999999", "unknown-last-event-id"),
        ("abc", "malformed-last-event-id"),
    ] {
        let mut s = server
            .open_stream_with(&token, "", &[("Last-Event-ID", value)])
            .await;
        let got = s.collect_until(WAIT, |e| !e.is_empty()).await;
        assert_eq!(got[0].event, "gap", "{value}");
        assert_eq!(got[0].json()["reason"], reason);
        assert!(
            s.next(Duration::from_millis(300)).await.is_none(),
            "no flood of history"
        );
    }
    // The query-parameter form works the same.
    let mut s = server
        .open_stream(&token, &format!("?lastEventId={recent}"))
        .await;
    let got = s.collect_until(WAIT, |e| e.len() == 20).await;
    assert_eq!(got[0].json()["seq"], 181);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_keep_increasing_across_a_restart() {
    let first_boot = Server::start(&[]);
    let key = first_boot.create_device("d").await;
    let (id, secret) = first_boot.create_app("app", &["d"], false).await;
    let mut s = first_boot
        .open_stream(&first_boot.token(&id, &secret).await, "")
        .await;
    first_boot.publish_n("d", &key, 3);
    let before = s
        .collect_until(WAIT, |e| e.len() == 3)
        .await
        .last()
        .unwrap()
        .id();
    drop(s);
    // Same data dir, new process.
    let second_boot = first_boot.restart(&[]);
    let mut s = second_boot
        .open_stream(&second_boot.token(&id, &secret).await, "")
        .await;
    second_boot.publish_n("d", &key, 1);
    let after = s.collect_until(WAIT, |e| !e.is_empty()).await[0].id();
    assert!(after > before, "{after} must be above {before}");
}
