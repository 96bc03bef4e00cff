//! The `token` scenario: client-credentials requests against
//! `/connect/token` from concurrent workers, for requests/s and latency.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::monitor;
use crate::report::Report;
use crate::server::{Server, ServerArgs};
use crate::stats::{new_histogram, record, Counters, Latency};
use crate::subscriber::Shared;
use crate::tally::now_ns;

/// The shape of a token run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// Concurrent requesters.
    pub(crate) concurrency: usize,
    /// Applications the requests are spread over.
    pub(crate) apps: usize,
    pub(crate) duration: std::time::Duration,
    /// The server's pid when it was not spawned.
    pub(crate) server_pid: Option<u32>,
}

/// Runs `load.concurrency` workers over `load.apps` applications.
pub(crate) async fn run(args: &ServerArgs, load: &Load) -> Result<Report> {
    let Load {
        concurrency,
        apps,
        duration,
        server_pid,
    } = *load;
    let started_at =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    let server = Server::start(args).await?;
    let prefix = crate::fanout::run_prefix();
    let mut creds = Vec::new();
    for a in 0..apps.max(1) {
        let device = format!("{prefix}{a}");
        server.ensure_device(&device).await?;
        creds.push(
            server
                .application(&format!("{prefix}app-{a}"), &[device])
                .await?,
        );
    }
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared::new(counters.clone()));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let url = server.token_url();
    let (stop_tx, stop_rx) = watch::channel(false);
    let monitor = monitor::spawn(counters.clone(), server.pid.or(server_pid), stop_rx);
    let start = Instant::now();
    let until = start + duration;
    let mut workers = Vec::new();
    for w in 0..concurrency.max(1) {
        let (client, url, shared) = (client.clone(), url.clone(), shared.clone());
        let (id, secret) = creds[w % creds.len()].clone();
        workers.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
            ];
            while Instant::now() < until {
                let t0 = now_ns();
                let result = async {
                    let resp = client.post(&url).form(&form).send().await?;
                    let status = resp.status();
                    let body = resp.bytes().await?;
                    anyhow::ensure!(
                        status.is_success(),
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    Ok(())
                }
                .await;
                shared.counters.sent.fetch_add(1, Relaxed);
                match result {
                    Ok(()) => {
                        record(&mut hist, now_ns() - t0);
                        shared.counters.delivered(1);
                    }
                    Err(e) => shared.error(format!("{e:#}")),
                }
            }
            hist
        }));
    }
    let mut hist = new_histogram();
    for w in workers {
        hist.add(&w.await.context("token worker")?)?;
    }
    let duration_s = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let watched = monitor.await?;
    let totals = counters.snapshot();
    let address = server.http.to_string();
    drop(server);
    Ok(Report {
        scenario: "token".into(),
        target: "sensegate".into(),
        address,
        started_at,
        duration_s,
        shape: None,
        settings: vec![
            ("concurrency".into(), concurrency.to_string()),
            ("applications".into(), apps.to_string()),
        ],
        totals,
        sent_per_s: totals.sent as f64 / duration_s,
        acked_per_s: 0.0,
        delivered_per_s: totals.delivered as f64 / duration_s,
        lost: 0,
        wire_bytes_per_event: 0.0,
        latency: Latency::from_histogram(&hist),
        server: watched.server.map(|w| w.report(duration_s)),
        client: watched.client.map(|w| w.report(duration_s)),
        extra: vec![],
        errors: shared.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        timeline: watched.timeline,
    })
}
