//! How fast admin changes reach open streams, and whether they disturb the
//! streams they do not touch.
//!
//! `cargo bench --bench permission_latency` starts the real binary (one
//! process, then admin + broker as separate processes), opens 1,000 SSE
//! streams over 100 applications, applies 100 random admin changes (a device
//! added to or removed from an application, or its include-anomalies flag
//! flipped) and reports, per mode, the p50/p99/max time from the admin's
//! response to the `permissions` event on every affected stream; and the
//! publish → delivery latency of streams no change touches, before and during
//! the changes. Bounded: about 30 s per mode, loopback only.

#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{Mode, Server};
use rand::seq::SliceRandom as _;
use rand::Rng as _;
use reqwest::Method;
use serde_json::json;
use tokio::sync::mpsc;

const APPS: usize = 100;
const STREAMS_PER_APP: usize = 10;
const DEVICES_PER_APP: usize = 2;
const CHANGES: usize = 100;
/// Applications no change touches; their streams measure disturbance.
const CONTROL_APPS: usize = 10;
/// How often the control device publishes.
const PUBLISH_EVERY: Duration = Duration::from_millis(5);

/// What a stream task reports.
enum Seen {
    Permissions { app: usize, at: Instant },
    Latency { during_changes: bool, micros: u64 },
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<u64>, unit: &str) {
    v.sort_unstable();
    println!(
        "  {name:<44} n={:<6} p50={:>7}{unit} p99={:>7}{unit} max={:>7}{unit}",
        v.len(),
        percentile(&v, 50.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(0)
    );
}

async fn run(mode: Mode) {
    let server = Arc::new(Server::start_mode(mode, &["--max-streams-per-app", "64"]));
    let base = Instant::now();
    // Devices: a pool per application plus one control device.
    let control_key = server.create_device("control").await;
    let mut app_ids = Vec::new();
    let mut tokens = Vec::new();
    let mut pools: Vec<Vec<String>> = Vec::new();
    for a in 0..APPS {
        let pool: Vec<String> = (0..DEVICES_PER_APP).map(|d| format!("a{a}-d{d}")).collect();
        for d in &pool {
            server.create_device(d).await;
        }
        let mut devices: Vec<&str> = vec![pool[0].as_str()];
        if a < CONTROL_APPS {
            devices.push("control");
        }
        let app = server
            .create_app_full(&format!("app {a}"), &devices, &[], false)
            .await;
        tokens.push(server.token(&app.client_id, &app.secret).await);
        app_ids.push(app.id);
        pools.push(pool);
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let changing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (a, token) in tokens.iter().enumerate() {
        for _ in 0..STREAMS_PER_APP {
            let mut stream = server.open_stream(token, "").await;
            let tx = tx.clone();
            let changing = changing.clone();
            tokio::spawn(async move {
                while let Some(ev) = stream.next(Duration::from_secs(120)).await {
                    let msg = match ev.event.as_str() {
                        "permissions" => Seen::Permissions {
                            app: a,
                            at: Instant::now(),
                        },
                        "telemetry" => {
                            let sent = ev.json()["readings"]["sent_us"].as_f64().unwrap_or(0.0);
                            let now = base.elapsed().as_micros() as f64;
                            Seen::Latency {
                                during_changes: changing.load(std::sync::atomic::Ordering::Relaxed),
                                micros: (now - sent).max(0.0) as u64,
                            }
                        }
                        _ => continue,
                    };
                    if tx.send(msg).is_err() {
                        break;
                    }
                }
            });
        }
    }
    drop(tx);
    // The control device publishes throughout, carrying its send time.
    let publisher = {
        let server = server.clone();
        tokio::spawn(async move {
            use sensegate_ingest_proto::client::{
                client_config, endpoint_for, DeviceSession, Trust,
            };
            use sensegate_ingest_proto::{Kind, Reading, Telemetry};
            let trust = Trust::from_pem(&std::fs::read(server.cert_path()).unwrap()).unwrap();
            let endpoint = endpoint_for(server.quic).unwrap();
            let mut session = DeviceSession::connect(
                &endpoint,
                client_config(trust).unwrap(),
                server.quic,
                "localhost",
                "control",
                &control_key,
            )
            .await
            .unwrap();
            let mut tick = tokio::time::interval(PUBLISH_EVERY);
            for seq in 1.. {
                tick.tick().await;
                let event = Telemetry {
                    seq,
                    ts_ms: 1,
                    kind: Kind::Reading,
                    readings: vec![Reading {
                        name: "sent_us".into(),
                        value: base.elapsed().as_micros() as f64,
                    }],
                };
                if session.send(&[event]).await.is_err() {
                    break;
                }
            }
        })
    };
    // Baseline disturbance-free latency.
    tokio::time::sleep(Duration::from_secs(3)).await;
    changing.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut effect_ms: Vec<u64> = Vec::new();
    let mut latency_before = Vec::new();
    let mut latency_during = Vec::new();
    let mut rng = rand::thread_rng();
    let mut include: Vec<bool> = vec![false; APPS];
    let mut members: Vec<Vec<String>> = pools.iter().map(|p| vec![p[0].clone()]).collect();
    for _ in 0..CHANGES {
        let a = rng.gen_range(CONTROL_APPS..APPS);
        let body = if rng.gen_bool(0.3) {
            include[a] = !include[a];
            json!({ "includeAnomalies": include[a] })
        } else {
            let d = pools[a].choose(&mut rng).unwrap().clone();
            if let Some(i) = members[a].iter().position(|m| *m == d) {
                members[a].remove(i);
            } else {
                members[a].push(d);
            }
            json!({ "devices": members[a] })
        };
        let (status, resp) = server
            .admin(
                Method::PATCH,
                &format!("/api/v1/applications/{}", app_ids[a]),
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{resp}");
        let t0 = Instant::now();
        let mut seen = 0;
        let deadline = t0 + Duration::from_secs(5);
        while seen < STREAMS_PER_APP {
            let msg = tokio::time::timeout_at(deadline.into(), rx.recv())
                .await
                .expect("every affected stream hears of the change within 5 s")
                .expect("streams alive");
            match msg {
                Seen::Permissions { app, at } if app == a => {
                    seen += 1;
                    effect_ms.push(at.saturating_duration_since(t0).as_micros() as u64);
                }
                Seen::Permissions { .. } => panic!("an unaffected application heard of a change"),
                Seen::Latency {
                    during_changes,
                    micros,
                } => {
                    if during_changes {
                        latency_during.push(micros)
                    } else {
                        latency_before.push(micros)
                    }
                }
            }
        }
    }
    changing.store(false, std::sync::atomic::Ordering::Relaxed);
    publisher.abort();
    while let Ok(msg) = rx.try_recv() {
        if let Seen::Latency {
            during_changes,
            micros,
        } = msg
        {
            if during_changes {
                latency_during.push(micros)
            } else {
                latency_before.push(micros)
            }
        }
    }
    println!(
        "{mode:?}: {APPS} applications, {} streams, {CHANGES} changes",
        APPS * STREAMS_PER_APP
    );
    summary("admin response -> permissions event (µs)", effect_ms, "µs");
    summary(
        "unaffected streams, before changes (µs)",
        latency_before,
        "µs",
    );
    summary(
        "unaffected streams, during changes (µs)",
        latency_during,
        "µs",
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for mode in [Mode::OneProcess, Mode::Split] {
            run(mode).await;
        }
    });
}
