//! A device's telemetry must reach exactly the applications allowed to see
//! it, exactly once, in order, with its values intact; anomalies only where
//! the application includes them.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{data, Server};

/// The first 2,000 rows of the NAB file hold no labelled anomaly window;
/// 2,400 rows reach into the first one, so both kinds are exercised.
const ROWS: usize = 2_400;

struct Row {
    ts: String,
    value: f64,
    anomaly: bool,
}

fn nab_rows() -> Vec<Row> {
    let csv = std::fs::read_to_string(data("nab/machine_temperature_system_failure.csv")).unwrap();
    let windows: Value =
        serde_json::from_str(&std::fs::read_to_string(data("nab/anomaly_windows.json")).unwrap())
            .unwrap();
    let windows: Vec<(String, String)> = windows
        ["realKnownCause/machine_temperature_system_failure.csv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let cut = |s: &Value| s.as_str().unwrap()[..19].to_owned();
            (cut(&w[0]), cut(&w[1]))
        })
        .collect();
    csv.lines()
        .skip(1)
        .take(ROWS)
        .map(|line| {
            let (ts, value) = line.split_once(',').unwrap();
            let anomaly = windows
                .iter()
                .any(|(a, b)| a.as_str() <= ts && ts <= b.as_str());
            Row {
                ts: format!("{}T{}.000Z", &ts[..10], &ts[11..]),
                value: value.parse().unwrap(),
                anomaly,
            }
        })
        .collect()
}

fn json_lines(rows: &[Row]) -> String {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "ts": r.ts,
                "kind": if r.anomaly { "anomaly" } else { "reading" },
                "readings": { "temperature": r.value },
            })
            .to_string()
                + "\n"
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_reaches_only_permitted_applications() {
    let server = Server::start(&[]);
    let key1 = server.create_device("machine-1").await;
    let key2 = server.create_device("machine-2").await;
    let (a_id, a_secret) = server
        .create_app("Sees machine-1 with anomalies", &["machine-1"], true)
        .await;
    let (b_id, b_secret) = server
        .create_app("Sees machine-2 only", &["machine-2"], true)
        .await;
    let (c_id, c_secret) = server
        .create_app("Sees machine-1 without anomalies", &["machine-1"], false)
        .await;
    let a_token = server.token(&a_id, &a_secret).await;
    let mut a = server.open_stream(&a_token, "").await;
    let mut b = server
        .open_stream(&server.token(&b_id, &b_secret).await, "")
        .await;
    let mut c = server
        .open_stream(&server.token(&c_id, &c_secret).await, "")
        .await;

    let rows = nab_rows();
    let anomalies = rows.iter().filter(|r| r.anomaly).count();
    assert!(anomalies > 100, "the slice must contain anomalies");
    let started = Instant::now();
    let out = server.publish("machine-1", &key1, &json_lines(&rows));
    let publish_time = started.elapsed();
    assert!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("sent {ROWS} events, acknowledged {ROWS}")),
        "{stdout}"
    );
    // A second run continues after what the broker acknowledged: the sentinel
    // gets seq ROWS + 1 and marks the end of machine-1's data.
    let sentinel =
        r#"{"ts":"2013-12-12T00:00:00Z","kind":"reading","readings":{"temperature":-1}}"#;
    let out = server.publish("machine-1", &key1, sentinel);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m2: String = (0..10)
        .map(|i| {
            format!(
                "{{\"ts\":{},\"readings\":{{\"rpm\":{i}}}}}\n",
                1_700_000_000_000i64 + i
            )
        })
        .collect();
    let out = server.publish("machine-2", &key2, &m2);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let is_sentinel = |evs: &[crate::harness::SseEvent]| {
        evs.last()
            .is_some_and(|e| e.json()["readings"]["temperature"] == -1.0)
    };
    let wait = Duration::from_secs(30);
    let got_a = a.collect_until(wait, is_sentinel).await;
    let delivered_in = started.elapsed();
    let got_c = c.collect_until(wait, is_sentinel).await;
    let got_b = b.collect_until(wait, |evs| evs.len() == 10).await;

    // A: every row, once, in order, values intact, kinds as labelled.
    assert_eq!(got_a.len(), ROWS + 1);
    let mut last_id = 0u64;
    for (i, (ev, row)) in got_a.iter().zip(&rows).enumerate() {
        let id: u64 = ev.id.as_deref().unwrap().parse().unwrap();
        assert!(id > last_id, "ids must increase");
        last_id = id;
        let d = ev.json();
        assert_eq!(d["deviceId"], "machine-1");
        assert_eq!(d["seq"], i as u64 + 1);
        assert_eq!(d["ts"], row.ts.as_str());
        assert_eq!(d["readings"]["temperature"].as_f64(), Some(row.value));
        let (event, kind) = if row.anomaly {
            ("anomaly", "anomaly")
        } else {
            ("telemetry", "reading")
        };
        assert_eq!(ev.event, event);
        assert_eq!(d["kind"], kind);
    }
    // C: the same device without anomalies.
    assert_eq!(got_c.len(), ROWS - anomalies + 1);
    assert!(got_c.iter().all(|e| e.event == "telemetry"));
    let expected_c: Vec<f64> = rows
        .iter()
        .filter(|r| !r.anomaly)
        .map(|r| r.value)
        .collect();
    let actual_c: Vec<f64> = got_c[..got_c.len() - 1]
        .iter()
        .map(|e| e.json()["readings"]["temperature"].as_f64().unwrap())
        .collect();
    assert_eq!(actual_c, expected_c);
    // B: machine-2 only; its events were published after machine-1's, so
    // anything of machine-1 would have arrived before them.
    assert!(got_b.iter().all(|e| e.json()["deviceId"] == "machine-2"));
    assert_eq!(
        got_b
            .iter()
            .map(|e| e.json()["readings"]["rpm"].as_f64().unwrap())
            .collect::<Vec<_>>(),
        (0..10).map(f64::from).collect::<Vec<_>>()
    );
    // Nothing secret ever reaches the logs.
    let logs = server.output.lock().unwrap().clone();
    for secret in [&key1, &key2, &a_secret, &b_secret, &c_secret, &a_token] {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret leaked into the logs"
        );
    }
    eprintln!(
        "replayed {ROWS} events: publish took {publish_time:?} ({:.0} events/s), all delivered after {delivered_in:?}",
        ROWS as f64 / publish_time.as_secs_f64()
    );
}
