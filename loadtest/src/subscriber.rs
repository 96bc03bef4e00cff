//! The subscriber swarm: a few reader threads, each a single-threaded
//! runtime driving many connections, with one large read buffer per
//! connection and one latency histogram per thread.
//!
//! Per read (tens of KiB), a connection takes one clock reading, splits the
//! bytes in place and adds its counts to the shared atomics once; per event
//! it does a `memchr` for the line or frame end and, for one event in
//! `--sample-every`, a search for the send stamp.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use crate::framing::Reassembler;
use crate::mqtt::{self, MqttFramer};
use crate::nats::{self, NatsFramer};
use crate::sse::{self, SseDecoder};
use crate::stats::{new_histogram, record, Counters};
use crate::tally::{now_ns, Tally};

/// How to open one subscription.
#[derive(Debug, Clone)]
pub(crate) enum SubSpec {
    /// SenseGate SSE with an access token.
    Sse { addr: SocketAddr, token: String },
    /// MQTT, QoS 0, one topic per device.
    Mqtt {
        addr: SocketAddr,
        client_id: String,
        topics: Vec<String>,
    },
    /// NATS, one subject per device.
    Nats {
        addr: SocketAddr,
        name: String,
        subjects: Vec<String>,
    },
}

/// Settings every reader thread shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReaderConfig {
    /// Bytes per connection read buffer.
    pub(crate) read_buffer: usize,
    /// Sample the stamp of one event in this many.
    pub(crate) sample_every: u64,
    /// Connections a thread opens at once.
    pub(crate) connect_parallel: usize,
}

/// What the threads share with the coordinator.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) counters: Arc<Counters>,
    /// Subscriptions in place.
    pub(crate) ready: AtomicUsize,
    /// Connections that ended (error or server close).
    pub(crate) finished: AtomicUsize,
    /// The first errors (at most 10).
    pub(crate) errors: Mutex<Vec<String>>,
}

impl Shared {
    pub(crate) fn new(counters: Arc<Counters>) -> Shared {
        Shared {
            counters,
            ready: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            errors: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn error(&self, e: String) {
        self.counters.errors.fetch_add(1, Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < 10 {
            errors.push(e);
        }
    }
}

/// Starts `threads` reader threads over `specs`; each returns its histogram.
pub(crate) fn spawn_readers(
    specs: Vec<SubSpec>,
    threads: usize,
    cfg: ReaderConfig,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<std::thread::JoinHandle<Histogram<u64>>>> {
    let threads = threads.clamp(1, specs.len().max(1));
    let mut parts: Vec<Vec<SubSpec>> = vec![Vec::new(); threads];
    for (i, s) in specs.into_iter().enumerate() {
        parts[i % threads].push(s);
    }
    let mut handles = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        let (shared, stop) = (shared.clone(), stop.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("lt-reader-{i}"))
                .spawn(move || reader_thread(part, cfg, &shared, stop))?,
        );
    }
    Ok(handles)
}

fn reader_thread(
    specs: Vec<SubSpec>,
    cfg: ReaderConfig,
    shared: &Shared,
    stop: watch::Receiver<bool>,
) -> Histogram<u64> {
    let hist = RefCell::new(new_histogram());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            shared.error(format!("reader runtime: {e}"));
            return hist.into_inner();
        }
    };
    rt.block_on(async {
        let gate = Semaphore::new(cfg.connect_parallel.max(1));
        let mut conns: FuturesUnordered<_> = specs
            .into_iter()
            .map(|spec| subscribe(spec, cfg, shared, &gate, &hist, stop.clone()))
            .collect();
        while let Some(result) = conns.next().await {
            shared.finished.fetch_add(1, Relaxed);
            if let Err(e) = result {
                shared.error(format!("{e:#}"));
            }
        }
    });
    hist.into_inner()
}

/// One connection's protocol decoder.
enum Decoder {
    Sse(Box<SseDecoder>),
    Mqtt(Reassembler, MqttFramer),
    Nats(Reassembler, NatsFramer),
}

impl Decoder {
    fn feed(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Decoder::Sse(d) => d.feed(data),
            Decoder::Mqtt(r, f) => r.feed(data, f),
            Decoder::Nats(r, f) => r.feed(data, f),
        }
    }

    fn tally(&mut self) -> &mut Tally {
        match self {
            Decoder::Sse(d) => &mut d.sse.tally,
            Decoder::Mqtt(_, f) => &mut f.tally,
            Decoder::Nats(_, f) => &mut f.tally,
        }
    }

    /// Whether the subscription is confirmed.
    fn ready(&self) -> bool {
        match self {
            Decoder::Sse(_) => true,
            Decoder::Mqtt(_, f) => f.connected && f.subacks > 0,
            Decoder::Nats(_, f) => f.pongs > 0,
        }
    }
}

/// Reads into `buf` until `decoder` is ready, feeding it as it goes.
async fn read_until_ready(
    stream: &mut TcpStream,
    buf: &mut [u8],
    decoder: &mut Decoder,
) -> Result<()> {
    while !decoder.ready() {
        let n = stream.read(buf).await?;
        if n == 0 {
            bail!("closed by the server during the handshake");
        }
        decoder.feed(&buf[..n])?;
    }
    Ok(())
}

async fn handshake(spec: &SubSpec, buf: &mut [u8], every: u64) -> Result<(TcpStream, Decoder)> {
    let addr = match spec {
        SubSpec::Sse { addr, .. } | SubSpec::Mqtt { addr, .. } | SubSpec::Nats { addr, .. } => {
            *addr
        }
    };
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let tally = Tally::new(every);
    let decoder = match spec {
        SubSpec::Sse { token, .. } => {
            stream
                .write_all(&sse::request(
                    &addr.to_string(),
                    "/v1/stream/telemetry",
                    token,
                ))
                .await?;
            let mut head = Vec::new();
            loop {
                let n = stream.read(buf).await?;
                if n == 0 {
                    bail!("closed by the server before answering");
                }
                head.extend_from_slice(&buf[..n]);
                if let Some((framing, len)) = sse::parse_head(&head)? {
                    let mut d = SseDecoder::new(framing, tally);
                    d.feed(&head[len..])?;
                    break Decoder::Sse(Box::new(d));
                }
            }
        }
        SubSpec::Mqtt {
            client_id, topics, ..
        } => {
            let mut hello = mqtt::connect(client_id);
            hello.extend_from_slice(&mqtt::subscribe(1, topics));
            stream.write_all(&hello).await?;
            let mut d = Decoder::Mqtt(Reassembler::default(), MqttFramer::new(tally));
            read_until_ready(&mut stream, buf, &mut d).await?;
            d
        }
        SubSpec::Nats { name, subjects, .. } => {
            stream.write_all(&nats::handshake(name, subjects)).await?;
            let mut d = Decoder::Nats(Reassembler::default(), NatsFramer::new(tally));
            read_until_ready(&mut stream, buf, &mut d).await?;
            d
        }
    };
    Ok((stream, decoder))
}

/// Counts already added to the shared counters.
#[derive(Default)]
struct Reported {
    events: u64,
    gaps: u64,
}

fn report(
    decoder: &mut Decoder,
    reported: &mut Reported,
    bytes: usize,
    now: u64,
    shared: &Shared,
    hist: &RefCell<Histogram<u64>>,
) {
    let t = decoder.tally();
    let c = &shared.counters;
    c.delivered(t.events - reported.events);
    c.bytes.fetch_add(bytes as u64, Relaxed);
    if t.gaps != reported.gaps {
        c.gaps.fetch_add(t.gaps - reported.gaps, Relaxed);
    }
    reported.events = t.events;
    reported.gaps = t.gaps;
    if !t.stamps.is_empty() {
        let mut h = hist.borrow_mut();
        for s in t.stamps.drain(..) {
            record(&mut h, now.saturating_sub(s));
        }
    }
}

async fn subscribe(
    spec: SubSpec,
    cfg: ReaderConfig,
    shared: &Shared,
    gate: &Semaphore,
    hist: &RefCell<Histogram<u64>>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut buf = vec![0u8; cfg.read_buffer.max(4096)];
    let (mut stream, mut decoder) = {
        let _permit = gate.acquire().await?;
        tokio::time::timeout(
            Duration::from_secs(30),
            handshake(&spec, &mut buf, cfg.sample_every),
        )
        .await
        .context("subscription handshake timed out")??
    };
    shared.ready.fetch_add(1, Relaxed);
    let mut reported = Reported::default();
    report(&mut decoder, &mut reported, 0, now_ns(), shared, hist);
    loop {
        let n = tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            n = stream.read(&mut buf) => n?,
        };
        if n == 0 {
            if *stop.borrow() {
                return Ok(());
            }
            let why = decoder
                .tally()
                .ended
                .clone()
                .unwrap_or_else(|| "no reason given".into());
            bail!("the server closed a subscription ({why})");
        }
        let now = now_ns();
        decoder.feed(&buf[..n])?;
        report(&mut decoder, &mut reported, n, now, shared, hist);
        if let Decoder::Nats(_, f) = &mut decoder {
            for _ in 0..std::mem::take(&mut f.pings) {
                stream.write_all(b"PONG\r\n").await?;
            }
        }
    }
}
