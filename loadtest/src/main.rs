//! `sensegate-loadtest`: load scenarios against SenseGate, and the same
//! fan-out workload against Mosquitto and NATS for side-by-side numbers.
//!
//! Every scenario is bounded by `--duration`, prints a progress line each
//! second on stderr and ends with a report (a table, or `--json`; `--report
//! FILE.html` adds a self-contained page with charts). Load is only ever
//! pointed at loopback addresses.

mod fanout;
mod framing;
mod monitor;
mod mqtt;
mod nats;
mod payload;
mod publisher;
mod report;
mod server;
mod sse;
mod stats;
mod subscriber;
mod tally;
mod token;
mod ws;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};

use crate::fanout::{Plan, Target};
use crate::report::Report;
use crate::server::ServerArgs;

#[derive(Debug, Parser)]
#[command(
    name = "sensegate-loadtest",
    version,
    about = "Load scenarios for SenseGate, and the same fan-out against Mosquitto and NATS"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// N devices publishing over QUIC, at a rate or as fast as acks allow.
    Fleet {
        #[command(flatten)]
        server: ServerArgs,
        /// Simulated devices.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        devices: u32,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        out: Output,
    },
    /// M SSE or WebSocket subscribers over K applications, counting what
    /// arrives (run a `fleet` with the same --device-prefix to feed them).
    Subscribers {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        fan: FanArgs,
        /// How the subscribers read the stream.
        #[arg(long, value_enum, default_value_t = Transport::Sse)]
        transport: Transport,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        out: Output,
    },
    /// Devices and subscribers at once: end-to-end latency, throughput,
    /// drops, server CPU and memory.
    E2e {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        fan: FanArgs,
        /// How the subscribers read the stream.
        #[arg(long, value_enum, default_value_t = Transport::Sse)]
        transport: Transport,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        out: Output,
    },
    /// Token endpoint requests per second and latency.
    Token {
        #[command(flatten)]
        server: ServerArgs,
        /// Concurrent requesters.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
        concurrency: u32,
        /// Applications the requests are spread over.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
        apps: u32,
        /// How long to send (e.g. 10s, 500ms, 1m; at most 1h).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Report this process's CPU and memory as the server's (a spawned
        /// server is watched automatically).
        #[arg(long, value_name = "PID")]
        server_pid: Option<u32>,
        #[command(flatten)]
        out: Output,
    },
    /// The `e2e` fan-out workload against an MQTT or NATS broker.
    Baseline {
        /// mqtt://127.0.0.1:1883 or nats://127.0.0.1:4222.
        #[arg(long)]
        target: String,
        #[command(flatten)]
        fan: FanArgs,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        out: Output,
    },
    /// A Markdown table comparing JSON reports (from --json-out).
    Compare {
        /// Report files.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
}

/// How SenseGate subscribers read `/v1/stream/telemetry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Transport {
    /// Server-Sent Events over HTTP/1.1.
    Sse,
    /// WebSocket, subprotocol `sensegate.v1.json`.
    Ws,
}

/// Who publishes to whom in a fan-out.
#[derive(Debug, Clone, Args)]
struct FanArgs {
    /// Publishing devices (one topic each).
    #[arg(long, visible_alias = "publishers", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    devices: u32,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    subscribers: u32,
    /// Subscribers are spread over this many applications (MQTT/NATS:
    /// groups of identical subscriptions).
    #[arg(long, visible_alias = "groups", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    apps: u32,
    /// Give each application only its share of the devices (device d goes
    /// to application d mod apps) instead of all of them.
    #[arg(long)]
    partition: bool,
}

/// Knobs shared by the load scenarios.
#[derive(Debug, Clone, Args)]
pub(crate) struct Tuning {
    /// How long to send (e.g. 10s, 500ms, 1m; at most 1h).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Events per second per device; without it, as fast as the delivery
    /// window (or, without subscribers, the broker's acks) allow.
    #[arg(long, value_parser = parse_rate)]
    pub(crate) rate: Option<f64>,
    /// Events per write (1 = one event per packet, unbatched).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024).map(|v| v as usize))]
    pub(crate) batch: usize,
    /// Size of each event's JSON (the MQTT/NATS payload, the SSE data line).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(100..=700).map(|v| v as usize))]
    pub(crate) payload_bytes: usize,
    /// Max-rate mode: deliveries in flight per subscriber before publishers wait.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) window: u64,
    /// QUIC devices: events sent beyond the broker's last acknowledgement
    /// before a device waits (bounds what a device buffers).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) ack_window: u64,
    /// Replay reading values from this CSV (`timestamp,value`, e.g.
    /// tests/data/nab/machine_temperature_system_failure.csv).
    #[arg(long, value_name = "FILE")]
    pub(crate) csv: Option<PathBuf>,
    /// Device id prefix (default: lt-<random>-, unique per run).
    #[arg(long)]
    pub(crate) device_prefix: Option<String>,
    /// Threads reading the subscriber connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64).map(|v| v as usize))]
    pub(crate) reader_threads: usize,
    /// Read buffer per subscriber connection, bytes.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(4096..=16_777_216).map(|v| v as usize))]
    pub(crate) read_buffer: usize,
    /// Measure the latency of one event in this many (per connection).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) sample_every: u64,
    /// After sending stops, wait at most this long for the broker's acks and
    /// for deliveries still on their way (after UDP drops under overload,
    /// QUIC loss recovery can back off for seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) drain: Duration,
    /// QUIC client endpoints (UDP sockets) the devices share.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024).map(|v| v as usize))]
    pub(crate) endpoints: usize,
    /// SenseGate's --max-streams-per-app (default 64): subscribers are
    /// spread over enough applications to stay within it.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000).map(|v| v as usize))]
    pub(crate) streams_per_app: usize,
    /// Report this process's CPU and memory as the broker's (a spawned
    /// SenseGate is watched automatically).
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Option<u32>,
}

/// Where the report goes.
#[derive(Debug, Clone, Args)]
struct Output {
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
    /// Write a self-contained HTML report with charts to this file.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
}

/// `10s`, `1.5s`, `500ms`, `2m` or plain seconds; at most an hour.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let secs = num
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("{s:?} is not a duration like 10s or 500ms"))?
        * scale;
    if !(0.0..=3600.0).contains(&secs) || secs.is_nan() {
        return Err(format!("{s:?} is out of range (0 to 1h)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 100_000_000.0 => Ok(r),
        _ => Err(format!(
            "{s:?}: expected events per second, > 0 and ≤ 100,000,000"
        )),
    }
}

impl FanArgs {
    fn plan(&self, publish: bool) -> Plan {
        Plan {
            devices: self.devices as usize,
            publish,
            subscribers: self.subscribers as usize,
            groups: self.apps as usize,
            partition: self.partition,
        }
    }
}

fn emit(report: &Report, out: &Output) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    if let Some(p) = &out.json_out {
        std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &out.report {
        report.write_html(p)?;
        eprintln!("HTML report: {}", p.display());
    }
    if out.json {
        println!("{json}");
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

async fn run(cmd: Cmd) -> Result<()> {
    let (report, out) = match cmd {
        Cmd::Fleet {
            server,
            devices,
            tuning,
            out,
        } => {
            let plan = Plan {
                devices: devices as usize,
                publish: true,
                subscribers: 0,
                groups: 1,
                partition: false,
            };
            (
                fanout::run(
                    "fleet",
                    Target::SenseGate(server, Transport::Sse),
                    plan,
                    &tuning,
                )
                .await?,
                out,
            )
        }
        Cmd::Subscribers {
            server,
            fan,
            transport,
            tuning,
            out,
        } => (
            fanout::run(
                "subscribers",
                Target::SenseGate(server, transport),
                fan.plan(false),
                &tuning,
            )
            .await?,
            out,
        ),
        Cmd::E2e {
            server,
            fan,
            transport,
            tuning,
            out,
        } => (
            fanout::run(
                "e2e",
                Target::SenseGate(server, transport),
                fan.plan(true),
                &tuning,
            )
            .await?,
            out,
        ),
        Cmd::Token {
            server,
            concurrency,
            apps,
            duration,
            server_pid,
            out,
        } => {
            let load = token::Load {
                concurrency: concurrency as usize,
                apps: apps as usize,
                duration,
                server_pid,
            };
            (token::run(&server, &load).await?, out)
        }
        Cmd::Baseline {
            target,
            fan,
            tuning,
            out,
        } => {
            let target = Target::parse_url(&target)?;
            (
                fanout::run("baseline", target, fan.plan(true), &tuning).await?,
                out,
            )
        }
        Cmd::Compare { reports } => {
            print!("{}", report::compare(&reports)?);
            return Ok(());
        }
    };
    emit(&report, &out)?;
    if report.totals.errors > 0 && report.totals.delivered == 0 && report.totals.acked == 0 {
        bail!("the run failed: {}", report.errors.join("; "));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Thousands of subscribers need thousands of descriptors: raise this
    // process's soft limit (and so a spawned server's) to the hard limit.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the open-file limit: {e}");
    }
    run(cli.cmd).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sensegate-loadtest").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("61m").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn e2e_defaults_and_flags() {
        let cli = parse(&[
            "e2e",
            "--spawn",
            "target/release/sensegate",
            "--subscribers",
            "1000",
            "--rate",
            "5000",
            "--json",
        ])
        .unwrap();
        let Cmd::E2e {
            server,
            fan,
            transport,
            tuning,
            out,
        } = cli.cmd
        else {
            panic!("not e2e")
        };
        assert!(server.spawn.is_some());
        assert_eq!(transport, Transport::Sse, "SSE unless asked");
        assert_eq!((fan.devices, fan.subscribers, fan.apps), (1, 1000, 1));
        assert_eq!(tuning.rate, Some(5000.0));
        assert_eq!(
            (tuning.batch, tuning.payload_bytes, tuning.duration),
            (32, 200, Duration::from_secs(10))
        );
        assert!(out.json);
        let plan = fan.plan(true);
        assert_eq!(plan.fanout(0), 1000);
    }

    #[test]
    fn bounds_are_enforced() {
        assert!(parse(&["fleet", "--devices", "0"]).is_err());
        assert!(parse(&["e2e", "--subscribers", "100001"]).is_err());
        assert!(parse(&["e2e", "--duration", "5h"]).is_err());
        assert!(parse(&["e2e", "--rate", "0"]).is_err());
        assert!(
            parse(&["e2e", "--spawn", "x", "--http", "127.0.0.1:1"]).is_err(),
            "spawn or an address, not both"
        );
        assert!(parse(&["baseline"]).is_err(), "baseline needs --target");
        assert!(
            parse(&[
                "baseline",
                "--target",
                "nats://127.0.0.1:4222",
                "--transport",
                "ws"
            ])
            .is_err(),
            "--transport is SenseGate's"
        );
        assert!(parse(&["subscribers", "--transport", "ws"]).is_ok());
        assert!(parse(&["e2e", "--transport", "carrier-pigeon"]).is_err());
        assert!(parse(&["compare"]).is_err());
    }

    #[test]
    fn baseline_shares_the_workload_flags() {
        let cli = parse(&[
            "baseline",
            "--target",
            "nats://127.0.0.1:4222",
            "--publishers",
            "2",
            "--groups",
            "3",
            "--server-pid",
            "42",
        ])
        .unwrap();
        let Cmd::Baseline { fan, tuning, .. } = cli.cmd else {
            panic!("not baseline")
        };
        assert_eq!((fan.devices, fan.apps, tuning.server_pid), (2, 3, Some(42)));
    }
}
