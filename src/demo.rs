//! `serve --demo`: seeds a demo setup and runs simulated devices that push
//! readings, with occasional anomalies, over real QUIC to this process.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng as _;
use sensegate_admin::Admin;
use sensegate_broker::Listener;
use sensegate_ingest_proto::client::{client_config, endpoint_for, DeviceSession, Trust};
use sensegate_ingest_proto::{Kind, Reading, Telemetry};
use tracing::{info, warn};

/// How often each simulated device sends a reading.
const INTERVAL: Duration = Duration::from_millis(500);

/// Seeds the demo, prints how to use it and starts the simulated devices.
pub(crate) async fn start(
    admin: &Admin,
    http: SocketAddr,
    listener: &Listener,
) -> anyhow::Result<()> {
    let seed = admin.seed_demo().await?;
    let cert = std::fs::read(&listener.cert_path)?;
    let trust = Trust::from_pem(&cert)?;
    let quic = SocketAddr::from(([127, 0, 0, 1], listener.addr.port()));
    println!();
    println!(
        "demo application \"Demo dashboard\" (a new secret at every start; the previous one stops working):"
    );
    println!("  client id:     {}", seed.client_id);
    println!("  client secret: {}", seed.client_secret);
    println!();
    println!("get a token:");
    println!(
        "  TOKEN=$(curl -s -X POST http://{http}/connect/token -d grant_type=client_credentials \\\n      -d client_id={} -d client_secret={} | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')",
        seed.client_id, seed.client_secret
    );
    println!("stream the telemetry:");
    println!(
        "  curl -N -H \"Accept: text/event-stream\" -H \"Authorization: Bearer $TOKEN\" http://{http}/v1/stream/telemetry"
    );
    println!();
    for (i, (device, key)) in seed.devices.into_iter().enumerate() {
        let trust = trust.clone();
        tokio::spawn(async move {
            simulate(quic, trust, device, key, 60.0 + 8.0 * i as f64).await;
        });
    }
    Ok(())
}

/// One simulated device: a slow sine around `base` with noise; about one
/// reading in forty is a spike flagged as an anomaly. Reconnects on failure.
async fn simulate(addr: SocketAddr, trust: Trust, device: String, key: String, base: f64) {
    let mut step = 0u64;
    loop {
        match run_device(addr, &trust, &device, &key, base, &mut step).await {
            Ok(()) => return,
            Err(e) => {
                warn!(device = %device, error = %e, "demo device disconnected; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

async fn run_device(
    addr: SocketAddr,
    trust: &Trust,
    device: &str,
    key: &str,
    base: f64,
    step: &mut u64,
) -> anyhow::Result<()> {
    let endpoint = endpoint_for(addr)?;
    let mut session = DeviceSession::connect(
        &endpoint,
        client_config(trust.clone())?,
        addr,
        "localhost",
        device,
        key,
    )
    .await?;
    info!(device, "demo device connected");
    let mut seq = session.resume_after();
    let mut ticker = tokio::time::interval(INTERVAL);
    loop {
        ticker.tick().await;
        *step += 1;
        seq += 1;
        let (kind, temperature, vibration): (Kind, f64, f64) = {
            let mut rng = rand::thread_rng();
            let wave = (*step as f64 / 40.0).sin() * 4.0;
            let anomaly = rng.gen_ratio(1, 40);
            let spike = if anomaly {
                rng.gen_range(15.0..25.0)
            } else {
                0.0
            };
            (
                if anomaly {
                    Kind::Anomaly
                } else {
                    Kind::Reading
                },
                base + wave + rng.gen_range(-0.5..0.5) + spike,
                rng.gen_range(0.1..0.4) + if anomaly { 2.0 } else { 0.0 },
            )
        };
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let event = Telemetry {
            seq,
            ts_ms,
            kind,
            readings: vec![
                Reading {
                    name: "temperature".into(),
                    value: (temperature * 100.0).round() / 100.0,
                },
                Reading {
                    name: "vibration".into(),
                    value: (vibration * 1000.0).round() / 1000.0,
                },
            ],
        };
        session.send(std::slice::from_ref(&event)).await?;
    }
}
