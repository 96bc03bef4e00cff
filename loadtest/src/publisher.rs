//! Publishers: a SenseGate device over QUIC, or an MQTT / NATS client over
//! TCP, all sending the same event in batches of `--batch`, either at a
//! fixed rate or as fast as the delivery window allows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use sensegate_ingest_proto::client::DeviceSession;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::framing::Reassembler;
use crate::mqtt;
use crate::nats::{self, NatsFramer};
use crate::payload::{EventTemplate, StampedPayload, Values};
use crate::stats::Counters;
use crate::tally::{stamp, Tally};

/// One publisher's connection.
pub(crate) enum Publisher {
    Quic {
        session: Box<DeviceSession>,
        template: EventTemplate,
        values: Values,
        /// The last sequence number encoded.
        seq: u64,
        /// The last sequence number completely written to the stream.
        confirmed: u64,
        /// The last sequence number the broker acknowledged.
        acked: u64,
    },
    Mqtt {
        stream: TcpStream,
        topic: String,
        payload: StampedPayload,
        buf: Vec<u8>,
    },
    Nats {
        stream: OwnedWriteHalf,
        subject: String,
        payload: StampedPayload,
        buf: Vec<u8>,
        pings: Arc<AtomicU32>,
    },
}

impl Publisher {
    /// An MQTT publisher on `topic`.
    pub(crate) async fn mqtt(
        addr: SocketAddr,
        client_id: &str,
        topic: String,
        payload: StampedPayload,
    ) -> Result<Publisher> {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.write_all(&mqtt::connect(client_id)).await?;
        let mut ack = [0u8; 4];
        stream
            .read_exact(&mut ack)
            .await
            .context("waiting for CONNACK")?;
        if ack != [0x20, 2, 0, 0] {
            bail!("MQTT broker refused the publisher: {ack:02x?}");
        }
        Ok(Publisher::Mqtt {
            stream,
            topic,
            payload,
            buf: Vec::new(),
        })
    }

    /// A NATS publisher on `subject`. A background task answers the
    /// server's PINGs (through the next write) and reports `-ERR`s.
    pub(crate) async fn nats(
        addr: SocketAddr,
        name: &str,
        subject: String,
        payload: StampedPayload,
        counters: Arc<Counters>,
    ) -> Result<Publisher> {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.write_all(&nats::handshake(name, &[])).await?;
        let mut framer = NatsFramer::new(Tally::new(1));
        let mut r = Reassembler::default();
        let mut buf = vec![0u8; 4096];
        while framer.pongs == 0 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                bail!("NATS closed the publisher's connection");
            }
            r.feed(&buf[..n], &mut framer)?;
        }
        let (mut read, write) = stream.into_split();
        let pings = Arc::new(AtomicU32::new(0));
        let owed = pings.clone();
        tokio::spawn(async move {
            loop {
                let n = match read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if r.feed(&buf[..n], &mut framer).is_err() {
                    counters.errors.fetch_add(1, Relaxed);
                    return;
                }
                owed.fetch_add(std::mem::take(&mut framer.pings), Relaxed);
            }
        });
        Ok(Publisher::Nats {
            stream: write,
            subject,
            payload,
            buf: Vec::new(),
            pings,
        })
    }

    /// A SenseGate device publisher on an open session.
    pub(crate) fn quic(
        session: DeviceSession,
        template: EventTemplate,
        values: Values,
    ) -> Publisher {
        let seq = session.resume_after();
        Publisher::Quic {
            acked: seq,
            confirmed: seq,
            session: Box::new(session),
            template,
            values,
            seq,
        }
    }

    /// Sends `n` events in one write.
    async fn send(&mut self, n: usize, ack_window: u64, counters: &Counters) -> Result<()> {
        let s = stamp();
        match self {
            Publisher::Quic {
                session,
                template,
                values,
                seq,
                confirmed,
                acked,
            } => {
                let want = (*seq + n as u64).saturating_sub(ack_window);
                if want > session.acked() {
                    session.wait_acked(want, Duration::from_secs(10)).await?;
                }
                let ts_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
                let ts_ms = i64::try_from(ts_ms).unwrap_or(0);
                let buf = session.buffer();
                buf.clear();
                for _ in 0..n {
                    *seq += 1;
                    template.set(*seq, ts_ms, s, values.get(*seq));
                    template.encode(buf);
                }
                session.send_encoded().await?;
                *confirmed = *seq;
                let now = session.acked();
                counters.acked.fetch_add(now - *acked, Relaxed);
                *acked = now;
            }
            Publisher::Mqtt {
                stream,
                topic,
                payload,
                buf,
            } => {
                buf.clear();
                for _ in 0..n {
                    mqtt::publish(buf, topic, payload.stamped(s));
                }
                stream.write_all(buf).await?;
            }
            Publisher::Nats {
                stream,
                subject,
                payload,
                buf,
                pings,
            } => {
                buf.clear();
                for _ in 0..pings.swap(0, Relaxed) {
                    buf.extend_from_slice(b"PONG\r\n");
                }
                for _ in 0..n {
                    nats::publish(buf, subject, payload.stamped(s));
                }
                stream.write_all(buf).await?;
            }
        }
        Ok(())
    }

    /// Waits for the broker's acknowledgement of everything sent (QUIC) and
    /// closes.
    async fn finish(self, counters: &Counters, wait: Duration) -> Result<()> {
        match self {
            Publisher::Quic {
                mut session,
                confirmed,
                acked,
                ..
            } => {
                let waited = session.wait_acked(confirmed, wait).await;
                counters.acked.fetch_add(session.acked() - acked, Relaxed);
                session.close().await;
                waited?;
            }
            Publisher::Mqtt { mut stream, .. } => {
                stream.write_all(&[0xe0, 0]).await?;
            }
            Publisher::Nats { mut stream, .. } => stream.shutdown().await?,
        }
        Ok(())
    }
}

/// How a publisher paces itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    pub(crate) batch: usize,
    /// Events/s; `None` is as fast as the window allows.
    pub(crate) rate: Option<f64>,
    /// Deliveries this publisher's events go to (0 without subscribers).
    pub(crate) fanout: u64,
    /// In max-rate mode, the deliveries all publishers may have in flight.
    pub(crate) window: u64,
    /// After the deadline, how long to wait for the broker's acks.
    pub(crate) drain: Duration,
    /// QUIC: events a device may send beyond the broker's last ack.
    pub(crate) ack_window: u64,
    /// At a fixed rate, where in its period this publisher sends, as a
    /// fraction in `[0, 1)`. Publishers are spread evenly over the period:
    /// started in step, N devices at R events/s would send in bursts of N
    /// every 1/R s, and the latency measured would be the time the broker
    /// takes to work through a burst, not a fleet's steady state.
    pub(crate) phase: f64,
}

/// Sends until `until`, then finishes.
pub(crate) async fn run(
    mut p: Publisher,
    pace: Pace,
    until: Instant,
    counters: Arc<Counters>,
) -> Result<()> {
    let start = Instant::now();
    let mut sent: u64 = 0;
    let batch = pace.batch.max(1) as u64;
    while Instant::now() < until {
        let n = match pace.rate {
            Some(rate) => {
                let due = (start.elapsed().as_secs_f64() * rate + pace.phase) as u64;
                if due <= sent {
                    let next =
                        start + Duration::from_secs_f64(((sent + 1) as f64 - pace.phase) / rate);
                    tokio::time::sleep_until(next.min(until)).await;
                    continue;
                }
                (due - sent).min(batch)
            }
            None => {
                if pace.fanout > 0 && counters.in_flight() > pace.window {
                    // Subscribers are behind: wait for them to catch up.
                    counters
                        .wait_in_flight(
                            pace.window,
                            until.saturating_duration_since(Instant::now()),
                        )
                        .await;
                    continue;
                }
                batch
            }
        };
        // A send still blocked (flow control, acks) at the deadline is
        // abandoned: the window ends on time.
        match tokio::time::timeout_at(until, p.send(n as usize, pace.ack_window, &counters)).await {
            Ok(result) => result?,
            Err(_) => break,
        }
        sent += n;
        counters.sent.fetch_add(n, Relaxed);
        counters.expected.fetch_add(n * pace.fanout, Relaxed);
    }
    p.finish(&counters, pace.drain).await
}
