//! `sensegate publish`: one device from the shell.
//!
//! Reads JSON lines (`{"ts": …, "kind": "reading"|"anomaly", "readings":
//! {"name": number}, "seq": optional}`), checks every line before sending
//! anything, sends them in batches over QUIC and waits until the broker has
//! acknowledged all of them.

use std::io::Read as _;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use sensegate_ingest_proto::client::{client_config, endpoint_for, DeviceSession, Trust};
use sensegate_ingest_proto::{Kind, Reading, Telemetry, MAX_READINGS, MAX_SEQ};
use serde_json::Value;

/// Flags of `sensegate publish`.
#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    /// Broker QUIC address, HOST:PORT.
    #[arg(long, env = "SENSEGATE_SERVER")]
    server: String,
    /// Device id.
    #[arg(long, env = "SENSEGATE_DEVICE")]
    device: String,
    /// Device ingest key.
    #[arg(long, env = "SENSEGATE_DEVICE_KEY", hide_env_values = true)]
    key: String,
    /// PEM certificate to trust (the broker's `cert.pem`).
    #[arg(
        long,
        conflicts_with = "insecure",
        required_unless_present = "insecure"
    )]
    ca: Option<PathBuf>,
    /// Accept any broker certificate (local experiments only).
    #[arg(long)]
    insecure: bool,
    /// TLS server name to expect in the certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Events per batch.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// Seconds to wait for the final acknowledgement.
    #[arg(long, default_value_t = 30)]
    ack_timeout: u64,
    /// JSON-lines file; standard input if absent or `-`.
    file: Option<PathBuf>,
}

/// One parsed input line, before it has a sequence number.
#[derive(Debug)]
struct Line {
    seq: Option<u64>,
    ts_ms: i64,
    kind: Kind,
    readings: Vec<Reading>,
}

pub(crate) async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let input = match args.file.as_deref() {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
    };
    let lines = parse_lines(&input)?;
    let addr = resolve(&args.server)?;
    let trust = match &args.ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Trust::from_pem(&pem)?
        }
        None => Trust::Insecure,
    };
    let config = client_config(trust)?;
    let endpoint = endpoint_for(addr)?;
    let mut session = DeviceSession::connect(
        &endpoint,
        config,
        addr,
        &args.server_name,
        &args.device,
        &args.key,
    )
    .await
    .with_context(|| format!("connecting to {addr} as device {}", args.device))?;

    // Lines without an explicit seq continue after what the broker already has.
    // The broker never acknowledges beyond MAX_SEQ, so this cannot overflow.
    let mut next_seq = session.resume_after().saturating_add(1);
    let mut events = Vec::with_capacity(lines.len());
    for line in lines {
        let seq = line.seq.unwrap_or(next_seq);
        if seq > MAX_SEQ {
            bail!(
                "the device's sequence numbers would pass 2^53 - 1 (the broker has up to {})",
                session.resume_after()
            );
        }
        next_seq = seq.saturating_add(1);
        events.push(Telemetry {
            seq,
            ts_ms: line.ts_ms,
            kind: line.kind,
            readings: line.readings,
        });
    }
    let skipped = events
        .iter()
        .filter(|e| e.seq <= session.resume_after())
        .count();
    let to_send: Vec<Telemetry> = events
        .into_iter()
        .filter(|e| e.seq > session.resume_after())
        .collect();
    for chunk in to_send.chunks(args.batch as usize) {
        session.send(chunk).await.context("sending telemetry")?;
    }
    let last = to_send.last().map_or(session.resume_after(), |e| e.seq);
    session
        .wait_acked(last, Duration::from_secs(args.ack_timeout))
        .await
        .context("waiting for acknowledgements")?;
    let acked = session.acked();
    session.close().await;
    endpoint.wait_idle().await;
    println!(
        "sent {} events, acknowledged {} (up to seq {acked}){}",
        to_send.len(),
        to_send.len(),
        if skipped > 0 {
            format!(", skipped {skipped} the broker already had")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn read_stdin() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading standard input")?;
    Ok(s)
}

fn resolve(server: &str) -> anyhow::Result<SocketAddr> {
    server
        .to_socket_addrs()
        .with_context(|| format!("resolving {server:?} (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("{server:?} resolved to no address"))
}

fn parse_lines(input: &str) -> anyhow::Result<Vec<Line>> {
    let mut out = Vec::new();
    for (i, raw) in input.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        out.push(parse_line(raw).with_context(|| format!("line {}", i + 1))?);
    }
    Ok(out)
}

fn parse_line(raw: &str) -> anyhow::Result<Line> {
    let v: Value = serde_json::from_str(raw).context("not a JSON object")?;
    let obj = v.as_object().context("not a JSON object")?;
    let ts_ms = match obj.get("ts") {
        Some(Value::String(s)) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("ts {s:?} is not RFC 3339"))?;
            i64::try_from(t.unix_timestamp_nanos() / 1_000_000)?
        }
        Some(Value::Number(n)) => n
            .as_i64()
            .context("ts must be an integer number of epoch milliseconds")?,
        Some(_) => bail!("ts must be an RFC 3339 string or epoch milliseconds"),
        None => bail!("missing ts"),
    };
    let kind = match obj.get("kind").and_then(Value::as_str) {
        None | Some("reading") => Kind::Reading,
        Some("anomaly") => Kind::Anomaly,
        Some(other) => bail!("kind {other:?} is not \"reading\" or \"anomaly\""),
    };
    let readings_obj = obj
        .get("readings")
        .and_then(Value::as_object)
        .context("readings must be an object of name → number")?;
    if readings_obj.len() > MAX_READINGS {
        bail!("more than {MAX_READINGS} readings");
    }
    let mut readings = Vec::with_capacity(readings_obj.len());
    for (name, value) in readings_obj {
        let value = value
            .as_f64()
            .with_context(|| format!("reading {name:?} is not a number"))?;
        readings.push(Reading {
            name: name.clone(),
            value,
        });
    }
    let seq = match obj.get("seq") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|s| (1..=MAX_SEQ).contains(s))
                .context("seq must be an integer from 1 to 2^53 - 1")?,
        ),
    };
    // Run the same checks the broker will, so a bad line fails here with its
    // line number instead of ending the session half-way.
    let t = Telemetry {
        seq: seq.unwrap_or(1),
        ts_ms,
        kind,
        readings,
    };
    let mut buf = Vec::new();
    sensegate_ingest_proto::encode_frame(&t, &mut buf);
    sensegate_ingest_proto::validate_telemetry(&buf[sensegate_ingest_proto::FRAME_HEADER_LEN..])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Line {
        seq,
        ts_ms: t.ts_ms,
        kind: t.kind,
        readings: t.readings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_accept_rfc3339_or_epoch_ms() {
        let a =
            parse_line(r#"{"ts":"2013-12-02T21:15:00Z","kind":"anomaly","readings":{"t":1.5}}"#)
                .unwrap();
        assert_eq!(a.ts_ms, 1_386_018_900_000);
        assert_eq!(a.kind, Kind::Anomaly);
        let b = parse_line(r#"{"ts":1386018900000,"readings":{"t":1}}"#).unwrap();
        assert_eq!(b.ts_ms, 1_386_018_900_000);
        assert_eq!(b.kind, Kind::Reading);
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let err = parse_lines("{\"ts\":1,\"readings\":{}}\n\nnot json\n").unwrap_err();
        assert_eq!(err.to_string(), "line 3");
        let err = parse_lines(r#"{"ts":1,"readings":{"x":"y"}}"#).unwrap_err();
        assert!(format!("{err:#}").contains("not a number"));
        let err = parse_lines(r#"{"ts":"yesterday","readings":{}}"#).unwrap_err();
        assert!(format!("{err:#}").contains("RFC 3339"));
        let err = parse_lines(r#"{"ts":1,"kind":"alarm","readings":{}}"#).unwrap_err();
        assert!(format!("{err:#}").contains("alarm"));
        for seq in ["0", "9007199254740992", "18446744073709551615"] {
            let line = format!(r#"{{"ts":1,"seq":{seq},"readings":{{}}}}"#);
            let err = parse_lines(&line).unwrap_err();
            assert!(format!("{err:#}").contains("2^53"), "seq {seq}: {err:#}");
        }
        assert!(parse_lines(r#"{"ts":1,"seq":9007199254740991,"readings":{}}"#).is_ok());
    }
}
