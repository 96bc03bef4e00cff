//! The fan-out engine behind `fleet`, `subscribers`, `e2e` and `baseline`:
//! provision, connect subscribers, then publishers, send for the duration,
//! drain, and report.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use sensegate_ingest_proto::client::{client_config, endpoint_for, DeviceSession};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::monitor;
use crate::payload::{EventTemplate, StampedPayload, Values};
use crate::publisher::{self, Pace, Publisher};
use crate::report::{thousands, Report, Shape};
use crate::server::{Server, ServerArgs};
use crate::stats::{new_histogram, Counters, Latency, ProcWatch};
use crate::subscriber::{spawn_readers, ReaderConfig, Shared, SubSpec};
use crate::{Transport, Tuning};

/// Who publishes to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Devices (topics) that exist.
    pub(crate) devices: usize,
    /// Whether each device also publishes.
    pub(crate) publish: bool,
    pub(crate) subscribers: usize,
    /// Subscribers are spread over this many groups (SenseGate: one
    /// application each).
    pub(crate) groups: usize,
    /// Each group sees only devices `d` with `d % groups == group`
    /// (otherwise every group sees every device).
    pub(crate) partition: bool,
}

impl Plan {
    fn group_of(&self, subscriber: usize) -> usize {
        subscriber % self.groups
    }

    fn subscribers_in(&self, group: usize) -> usize {
        self.subscribers / self.groups + usize::from(group < self.subscribers % self.groups)
    }

    /// The devices group `g` sees.
    pub(crate) fn devices_of(&self, g: usize) -> Vec<usize> {
        (0..self.devices)
            .filter(|d| !self.partition || d % self.groups == g)
            .collect()
    }

    /// How many subscribers receive each event of device `d`.
    pub(crate) fn fanout(&self, d: usize) -> u64 {
        let n = if self.partition {
            self.subscribers_in(d % self.groups)
        } else {
            self.subscribers
        };
        n as u64
    }

    pub(crate) fn publishers(&self) -> usize {
        if self.publish {
            self.devices
        } else {
            0
        }
    }
}

/// The broker under test.
pub(crate) enum Target {
    SenseGate(ServerArgs, Transport),
    Mqtt(SocketAddr),
    Nats(SocketAddr),
}

impl Target {
    /// Parses `mqtt://host:port` or `nats://host:port` (loopback only).
    pub(crate) fn parse_url(url: &str) -> Result<Target> {
        let (scheme, rest) = url
            .split_once("://")
            .context("expected mqtt://HOST:PORT or nats://HOST:PORT")?;
        let rest = rest.trim_end_matches('/');
        let rest = if rest.starts_with("localhost:") {
            rest.replacen("localhost", "127.0.0.1", 1)
        } else {
            rest.to_owned()
        };
        let addr: SocketAddr = rest
            .parse()
            .with_context(|| format!("{rest:?} is not IP:PORT"))?;
        if !addr.ip().is_loopback() {
            bail!("load is only ever pointed at loopback; {addr} is not");
        }
        match scheme {
            "mqtt" | "tcp" => Ok(Target::Mqtt(addr)),
            "nats" => Ok(Target::Nats(addr)),
            other => bail!("unsupported scheme {other:?}: use mqtt:// or nats://"),
        }
    }
}

/// A random run id for device names, so runs against one server never collide.
pub(crate) fn run_prefix() -> String {
    format!("lt-{:06x}-", rand::random::<u32>() & 0xff_ffff)
}

/// Runs one fan-out scenario and reports.
pub(crate) async fn run(scenario: &str, target: Target, plan: Plan, t: &Tuning) -> Result<Report> {
    if plan.groups == 0 {
        bail!("--groups/--apps must be at least 1");
    }
    let started_at =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    let prefix = t.device_prefix.clone().unwrap_or_else(run_prefix);
    let device = |d: usize| format!("{prefix}{d}");
    let values = match &t.csv {
        Some(p) => Values::from_csv(p)?,
        None => Values::Synthetic,
    };
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared::new(counters.clone()));

    // SenseGate caps the streams one application may hold: spread the
    // subscribers over enough applications (each sees the same devices, so
    // the workload does not change).
    let needed = plan.subscribers.div_ceil(t.streams_per_app);
    let plan = match target {
        Target::SenseGate(..) if plan.groups < needed => {
            if plan.partition {
                bail!(
                    "{} subscribers over {} partitioned applications exceed --streams-per-app {}",
                    plan.subscribers,
                    plan.groups,
                    t.streams_per_app
                );
            }
            Plan {
                groups: needed,
                ..plan
            }
        }
        _ => plan,
    };

    // Provision and describe every subscription.
    let mut server = None;
    let (target_name, address, specs, keys) = match &target {
        Target::SenseGate(args, transport) => {
            let s = Server::start(args).await?;
            let pid = s.pid.or(t.server_pid);
            eprintln!(
                "sensegate: http={} quic={} pid={}",
                s.http,
                s.quic,
                pid.map_or_else(|| "unknown (--server-pid)".to_owned(), |p| p.to_string())
            );
            let keys: Vec<String> = stream::iter(0..plan.devices)
                .map(|d| {
                    let (s, id) = (&s, device(d));
                    async move {
                        if plan.publish {
                            s.device_key(&id).await
                        } else {
                            s.ensure_device(&id).await.map(|()| String::new())
                        }
                    }
                })
                .buffered(16)
                .try_collect()
                .await?;
            // Application names are unique per run even when runs share
            // their devices (--device-prefix).
            let run = rand::random::<u32>();
            let tokens: Vec<String> = stream::iter(0..plan.groups.min(plan.subscribers))
                .map(|g| {
                    let (s, prefix) = (&s, &prefix);
                    let ids: Vec<String> = plan.devices_of(g).into_iter().map(device).collect();
                    async move {
                        let (id, secret) = s
                            .application(&format!("{prefix}app-{g}-{run:08x}"), &ids)
                            .await?;
                        s.token(&id, &secret).await
                    }
                })
                .buffered(16)
                .try_collect()
                .await?;
            let specs = (0..plan.subscribers)
                .map(|j| {
                    let (addr, token) = (s.http, tokens[plan.group_of(j)].clone());
                    match transport {
                        Transport::Sse => SubSpec::Sse { addr, token },
                        Transport::Ws => SubSpec::Ws { addr, token },
                    }
                })
                .collect();
            let addr = format!("http={} quic={}", s.http, s.quic);
            server = Some(s);
            let name = match transport {
                Transport::Sse => "sensegate",
                Transport::Ws => "sensegate-ws",
            };
            (name, addr, specs, keys)
        }
        Target::Mqtt(addr) => {
            let specs = (0..plan.subscribers)
                .map(|j| SubSpec::Mqtt {
                    addr: *addr,
                    client_id: format!("{prefix}sub-{j}"),
                    topics: plan
                        .devices_of(plan.group_of(j))
                        .into_iter()
                        .map(|d| format!("sensegate-lt/{}", device(d)))
                        .collect(),
                })
                .collect();
            ("mosquitto", format!("mqtt://{addr}"), specs, Vec::new())
        }
        Target::Nats(addr) => {
            let specs = (0..plan.subscribers)
                .map(|j| SubSpec::Nats {
                    addr: *addr,
                    name: format!("{prefix}sub-{j}"),
                    subjects: plan
                        .devices_of(plan.group_of(j))
                        .into_iter()
                        .map(|d| format!("sensegate-lt.{}", device(d)))
                        .collect(),
                })
                .collect();
            ("nats", format!("nats://{addr}"), specs, Vec::new())
        }
    };
    let server_pid = server.as_ref().and_then(|s| s.pid).or(t.server_pid);

    // Subscribers first, so that every event sent has its full audience.
    let rss_before = server_pid
        .and_then(|p| ProcWatch::start(&p.to_string()))
        .map(|w| w.rss_kib());
    let (stop_tx, stop_rx) = watch::channel(false);
    // Stamps from another process's clock mean nothing here.
    let sample_every = if plan.publish { t.sample_every } else { 0 };
    let reader_cfg = ReaderConfig {
        read_buffer: t.read_buffer,
        sample_every,
        connect_parallel: 64,
    };
    let connect_start = Instant::now();
    let readers = spawn_readers(specs, t.reader_threads, reader_cfg, &shared, &stop_rx)?;
    while shared.ready.load(Relaxed) < plan.subscribers {
        if shared.finished.load(Relaxed) > 0 || connect_start.elapsed() > Duration::from_secs(120) {
            let _ = stop_tx.send(true);
            let errors = shared
                .errors
                .lock()
                .map(|e| e.join("; "))
                .unwrap_or_default();
            bail!(
                "only {} of {} subscribers connected: {errors}",
                shared.ready.load(Relaxed),
                plan.subscribers
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    let mut extra = Vec::new();
    if plan.subscribers > 0 {
        extra.push((
            "subscribers connected in".into(),
            format!("{connect_s:.2} s"),
        ));
        let rss_after = server_pid
            .and_then(|p| ProcWatch::start(&p.to_string()))
            .map(|w| w.rss_kib());
        if let (Some(a), Some(b)) = (rss_before, rss_after) {
            extra.push((
                "server RSS per subscription".into(),
                format!(
                    "{:.1} KiB ({} → {} MiB)",
                    (b as f64 - a as f64) / plan.subscribers as f64,
                    a / 1024,
                    b / 1024
                ),
            ));
        }
    }

    // Publishers.
    let template = EventTemplate::new(&device(0), t.payload_bytes);
    let mut publishers = Vec::new();
    // QUIC client endpoints live until the run ends.
    let mut endpoints = Vec::new();
    if plan.publish {
        match (&target, &server) {
            (Target::SenseGate(..), Some(s)) => {
                let config = client_config(s.trust.clone())?;
                for _ in 0..t.endpoints.clamp(1, plan.devices.max(1)) {
                    endpoints.push(endpoint_for(s.quic)?);
                }
                let sessions: Vec<DeviceSession> = stream::iter(0..plan.devices)
                    .map(|d| {
                        let (ep, config, key, id) = (
                            &endpoints[d % endpoints.len()],
                            config.clone(),
                            &keys[d],
                            device(d),
                        );
                        async move {
                            DeviceSession::connect(ep, config, s.quic, "localhost", &id, key)
                                .await
                                .with_context(|| format!("device {id}"))
                        }
                    })
                    .buffered(32)
                    .try_collect()
                    .await?;
                for (d, session) in sessions.into_iter().enumerate() {
                    publishers.push((
                        d,
                        Publisher::quic(
                            session,
                            EventTemplate::new(&device(d), t.payload_bytes),
                            values.clone(),
                        ),
                    ));
                }
            }
            (Target::Mqtt(addr), _) => {
                for d in 0..plan.devices {
                    let payload = StampedPayload::new(&template, &device(d));
                    let p = Publisher::mqtt(
                        *addr,
                        &format!("{prefix}pub-{d}"),
                        format!("sensegate-lt/{}", device(d)),
                        payload,
                    )
                    .await?;
                    publishers.push((d, p));
                }
            }
            (Target::Nats(addr), _) => {
                for d in 0..plan.devices {
                    let payload = StampedPayload::new(&template, &device(d));
                    let p = Publisher::nats(
                        *addr,
                        &format!("{prefix}pub-{d}"),
                        format!("sensegate-lt.{}", device(d)),
                        payload,
                        counters.clone(),
                    )
                    .await?;
                    publishers.push((d, p));
                }
            }
            (Target::SenseGate(..), None) => unreachable!("a SenseGate target always has a server"),
        }
    }

    // Measure.
    let (mon_stop_tx, mon_stop_rx) = watch::channel(false);
    let monitor = monitor::spawn(counters.clone(), server_pid, mon_stop_rx);
    let start = Instant::now();
    let until = start + t.duration;
    let window = t.window * plan.subscribers as u64;
    let mut tasks = Vec::new();
    let count = publishers.len().max(1) as f64;
    for (i, (d, p)) in publishers.into_iter().enumerate() {
        let pace = Pace {
            batch: t.batch,
            rate: t.rate,
            fanout: plan.fanout(d),
            window,
            drain: t.drain,
            ack_window: t.ack_window,
            phase: i as f64 / count,
        };
        tasks.push(tokio::spawn(publisher::run(
            p,
            pace,
            until,
            counters.clone(),
        )));
    }
    // The window ends on time: publishers abandon a send still blocked at
    // the deadline, then wait (at most --drain) for the broker's acks.
    tokio::time::sleep_until(until).await;
    let duration_s = t.duration.as_secs_f64();
    let at_end = counters.snapshot();
    for task in tasks {
        if let Err(e) = task.await.context("publisher task")? {
            shared.error(format!("publisher: {e:#}"));
        }
    }

    // Drain: wait for what is still on its way, while it keeps coming.
    let drain_until = Instant::now() + t.drain;
    let mut last = counters.delivered.load(Relaxed);
    let mut last_progress = Instant::now();
    while Instant::now() < drain_until {
        let d = counters.delivered.load(Relaxed);
        if d >= counters.expected.load(Relaxed) || last_progress.elapsed() > Duration::from_secs(1)
        {
            break;
        }
        if d != last {
            last = d;
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let _ = mon_stop_tx.send(true);
    let mut hist = new_histogram();
    for r in readers {
        let h = tokio::task::spawn_blocking(move || r.join())
            .await?
            .map_err(|_| anyhow::anyhow!("a reader thread panicked"))?;
        hist.add(&h).context("merging histograms")?;
    }
    let watched = monitor.await?;
    let totals = counters.snapshot();
    drop(endpoints);
    drop(server);

    let errors = shared.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let mut settings = vec![("device prefix".to_owned(), prefix.clone())];
    if plan.subscribers > 0 {
        let partitioned = if plan.partition { " (partitioned)" } else { "" };
        settings.push(("groups".to_owned(), format!("{}{partitioned}", plan.groups)));
        let sampled = match sample_every {
            0 => "latency not sampled (events stamped by another process)".to_owned(),
            n => format!("latency sampled 1 in {n}"),
        };
        settings.push((
            "readers".to_owned(),
            format!(
                "{} thread(s), {} KiB buffers, {sampled}",
                t.reader_threads,
                t.read_buffer / 1024
            ),
        ));
    }
    if let Some(p) = &t.csv {
        settings.push(("values".into(), p.display().to_string()));
    }
    if plan.publishers() > 0 && plan.subscribers > 0 {
        extra.push((
            "delivered within the window".into(),
            format!(
                "{} of {}",
                thousands(at_end.delivered as f64),
                thousands(at_end.expected as f64)
            ),
        ));
    }
    Ok(Report {
        scenario: scenario.into(),
        target: target_name.into(),
        address,
        started_at,
        duration_s,
        shape: (plan.subscribers > 0 && plan.publishers() > 0).then(|| Shape {
            publishers: plan.publishers(),
            subscribers: plan.subscribers,
            payload_bytes: template.render_json(&device(0)).len(),
            batch: t.batch,
            rate: t.rate,
            window: t.window,
        }),
        settings,
        totals,
        sent_per_s: at_end.sent as f64 / duration_s,
        acked_per_s: at_end.acked as f64 / duration_s,
        delivered_per_s: at_end.delivered as f64 / duration_s,
        lost: totals.expected.saturating_sub(totals.delivered),
        wire_bytes_per_event: if totals.delivered > 0 {
            totals.bytes as f64 / totals.delivered as f64
        } else {
            0.0
        },
        latency: Latency::from_histogram(&hist),
        server: watched.server.map(|w| w.report(duration_s)),
        client: watched.client.map(|w| w.report(duration_s)),
        extra,
        errors,
        timeline: watched.timeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_spread_subscribers_and_devices() {
        let all = Plan {
            devices: 4,
            publish: true,
            subscribers: 10,
            groups: 3,
            partition: false,
        };
        assert_eq!(all.devices_of(2), vec![0, 1, 2, 3]);
        assert!((0..4).all(|d| all.fanout(d) == 10));
        let part = Plan {
            partition: true,
            ..all
        };
        assert_eq!(part.devices_of(0), vec![0, 3]);
        assert_eq!(part.devices_of(2), vec![2]);
        assert_eq!(
            (0..3).map(|g| part.subscribers_in(g)).collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
        assert_eq!(
            part.fanout(3),
            4,
            "device 3 is in group 0 with 4 subscribers"
        );
        // Expected deliveries count each subscriber once per event it sees.
        let by_sub: usize = (0..10)
            .map(|j| part.devices_of(part.group_of(j)).len())
            .sum();
        assert_eq!(by_sub as u64, (0..4).map(|d| part.fanout(d)).sum::<u64>());
        assert_eq!(
            Plan {
                publish: false,
                ..all
            }
            .publishers(),
            0
        );
    }

    #[test]
    fn target_urls() {
        assert!(
            matches!(Target::parse_url("mqtt://127.0.0.1:1883").unwrap(), Target::Mqtt(a) if a.port() == 1883)
        );
        assert!(
            matches!(Target::parse_url("nats://localhost:4222/").unwrap(), Target::Nats(a) if a.ip().is_loopback())
        );
        assert!(
            Target::parse_url("nats://10.0.0.1:4222").is_err(),
            "loopback only"
        );
        assert!(Target::parse_url("amqp://127.0.0.1:5672").is_err());
        assert!(Target::parse_url("127.0.0.1:1883").is_err());
        assert!(run_prefix().starts_with("lt-"));
    }
}
