//! The once-a-second monitor: the progress line on stderr, the timeline of
//! the report, and server / load-tester CPU and memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::report::{thousands, Tick};
use crate::stats::{Counters, ProcWatch};

/// What the monitor hands back when the run ends.
pub(crate) struct Watched {
    pub(crate) timeline: Vec<Tick>,
    pub(crate) server: Option<ProcWatch>,
    pub(crate) client: Option<ProcWatch>,
}

/// Samples every second until `stop` turns true.
pub(crate) fn spawn(
    counters: Arc<Counters>,
    server_pid: Option<u32>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Watched> {
    let mut server = server_pid.and_then(|p| ProcWatch::start(&p.to_string()));
    let mut client = ProcWatch::start("self");
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = counters.snapshot();
        let mut last_t = start;
        let mut timeline = Vec::new();
        let mut tick =
            tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.changed() => true,
            };
            let now = Instant::now();
            let secs = (now - last_t).as_secs_f64();
            if secs < 0.05 && stopping {
                break;
            }
            let snap = counters.snapshot();
            let delta = snap.since(&last);
            let server_cpu = server.as_mut().and_then(|w| w.sample(secs));
            let client_cpu = client.as_mut().and_then(|w| w.sample(secs));
            let t_s = (now - start).as_secs_f64();
            let deficit = snap.expected.saturating_sub(snap.delivered);
            let per = |v: u64| thousands(v as f64 / secs);
            let mut line = format!("[{t_s:5.1}s] sent {}/s", per(delta.sent));
            if snap.acked > 0 {
                line += &format!("  acked {}/s", per(delta.acked));
            }
            if snap.delivered > 0 || snap.expected > 0 {
                line += &format!("  delivered {}/s", per(delta.delivered));
            }
            if snap.expected > 0 {
                line += &format!("  behind {}", thousands(deficit as f64));
            }
            if snap.gaps > 0 || snap.errors > 0 {
                line += &format!("  gaps {}  errors {}", snap.gaps, snap.errors);
            }
            if let (Some(cpu), Some(w)) = (server_cpu, &server) {
                line += &format!(
                    "  | server {cpu:.0}% {:.0} MiB",
                    w.rss_kib() as f64 / 1024.0
                );
            }
            if let Some(cpu) = client_cpu {
                line += &format!("  | loadtest {cpu:.0}%");
            }
            eprintln!("{line}");
            timeline.push(Tick {
                t_s,
                delta,
                deficit,
                server_cpu_pct: server_cpu,
                client_cpu_pct: client_cpu,
            });
            last = snap;
            last_t = now;
            if stopping {
                break;
            }
        }
        Watched {
            timeline,
            server,
            client,
        }
    })
}
