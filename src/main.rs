//! The `sensegate` binary: composes the broker and the admin behind one CLI.
//!
//! - `sensegate serve [--demo]`: everything in one process on embedded
//!   defaults (SQLite file, self-signed QUIC certificate, 127.0.0.1).
//! - `sensegate admin serve` + `sensegate broker`: control plane and data
//!   plane as separate processes, joined by the permission feed.
//! - `sensegate admin tenant|key|signing-key`: management on the database.
//! - `sensegate publish`: a device from the shell (JSON lines over QUIC).

mod admin_cli;
mod demo;
mod idle;
mod publish;
mod serve;

use clap::{Parser, Subcommand, ValueEnum};

/// SenseGate: devices push telemetry over QUIC; external applications stream
/// exactly the devices they may see over Server-Sent Events.
#[derive(Debug, Parser)]
#[command(name = "sensegate", version, about)]
struct Cli {
    /// Log output format.
    #[arg(
        long,
        global = true,
        env = "SENSEGATE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker and the admin in one process.
    Serve(serve::ServeArgs),
    /// Run the broker alone, following a remote admin's permission feed.
    Broker(serve::BrokerProcessArgs),
    /// Run the admin alone, or manage tenants and keys.
    Admin(admin_cli::AdminArgs),
    /// Send JSON-lines telemetry as one device over QUIC and wait for the acks.
    Publish(publish::PublishArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SENSEGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes on one line, never a backtrace: these
            // are an operator's mistakes (a wrong key, a missing database),
            // and RUST_BACKTRACE=1 in a developer's shell would bury them.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Broker(args) => serve::run_broker(args).await,
            Command::Admin(args) => admin_cli::run(args).await,
            Command::Publish(args) => publish::run(args).await,
        }
    })
}
