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
use crate::ws::{self, WsFramer};

/// How to open one subscription.
#[derive(Debug, Clone)]
pub(crate) enum SubSpec {
    /// SenseGate SSE with an access token.
    Sse { addr: SocketAddr, token: String },
    /// SenseGate WebSocket (`sensegate.v1.json`) with an access token.
    Ws { addr: SocketAddr, token: String },
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
    Ws(Reassembler, WsFramer),
    Mqtt(Reassembler, MqttFramer),
    Nats(Reassembler, NatsFramer),
}

impl Decoder {
    fn feed(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Decoder::Sse(d) => d.feed(data),
            Decoder::Ws(r, f) => r.feed(data, f),
            Decoder::Mqtt(r, f) => r.feed(data, f),
            Decoder::Nats(r, f) => r.feed(data, f),
        }
    }

    fn tally(&mut self) -> &mut Tally {
        match self {
            Decoder::Sse(d) => &mut d.sse.tally,
            Decoder::Ws(_, f) => &mut f.tally,
            Decoder::Mqtt(_, f) => &mut f.tally,
            Decoder::Nats(_, f) => &mut f.tally,
        }
    }

    /// Whether the subscription is confirmed.
    fn ready(&self) -> bool {
        match self {
            Decoder::Sse(_) | Decoder::Ws(..) => true,
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

/// Reads until `parse` finds a whole HTTP response head; returns what was
/// read and what `parse` made of it (frames may follow the head).
async fn read_head<T>(
    stream: &mut TcpStream,
    buf: &mut [u8],
    parse: impl Fn(&[u8]) -> Result<Option<T>>,
) -> Result<(Vec<u8>, T)> {
    let mut head = Vec::new();
    loop {
        let n = stream.read(buf).await?;
        if n == 0 {
            bail!("closed by the server before answering");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(parsed) = parse(&head)? {
            return Ok((head, parsed));
        }
    }
}

async fn handshake(spec: &SubSpec, buf: &mut [u8], every: u64) -> Result<(TcpStream, Decoder)> {
    let addr = match spec {
        SubSpec::Sse { addr, .. }
        | SubSpec::Ws { addr, .. }
        | SubSpec::Mqtt { addr, .. }
        | SubSpec::Nats { addr, .. } => *addr,
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
            let (head, (framing, len)) = read_head(&mut stream, buf, sse::parse_head).await?;
            let mut d = SseDecoder::new(framing, tally);
            d.feed(&head[len..])?;
            Decoder::Sse(Box::new(d))
        }
        SubSpec::Ws { token, .. } => {
            let key = ws::new_key();
            stream
                .write_all(&ws::request(
                    &addr.to_string(),
                    "/v1/stream/telemetry",
                    token,
                    &key,
                ))
                .await?;
            let (head, len) = read_head(&mut stream, buf, |h| ws::parse_head(h, &key)).await?;
            let mut d = Decoder::Ws(Reassembler::default(), WsFramer::new(tally));
            d.feed(&head[len..])?;
            d
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
    // What arrived with the handshake may hold pings already.
    answer_pings(&mut stream, &mut decoder).await?;
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
        answer_pings(&mut stream, &mut decoder).await?;
    }
}

/// Writes the pongs owed for the pings `decoder` has seen.
async fn answer_pings(stream: &mut TcpStream, decoder: &mut Decoder) -> Result<()> {
    match decoder {
        Decoder::Nats(_, f) => {
            for _ in 0..std::mem::take(&mut f.pings) {
                stream.write_all(b"PONG\r\n").await?;
            }
        }
        Decoder::Ws(_, f) if !f.pongs.is_empty() => {
            stream.write_all(&f.pongs).await?;
            f.pongs.clear();
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::{stamp, STAMP_BASE};
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};

    /// A one-connection fake broker: reads until `until` has been seen,
    /// writes `greeting` first (before reading) and `reply` after, then
    /// holds the connection open until the test ends.
    fn fake_broker(
        greeting: Vec<u8>,
        until: &'static [u8],
        reply: Vec<u8>,
    ) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(&greeting).unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while memchr::memmem::find(&seen, until).is_none() {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "client hung up: {}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
            }
            s.write_all(&reply).unwrap();
            // Wait for the client to close.
            let _ = BufReader::new(s).lines().count();
            seen
        });
        (addr, handle)
    }

    fn run_one(spec: SubSpec, expect: u64) -> (Arc<Shared>, Histogram<u64>) {
        let shared = Arc::new(Shared::new(Arc::new(Counters::default())));
        let (stop_tx, stop_rx) = watch::channel(false);
        let cfg = ReaderConfig {
            read_buffer: 4096,
            sample_every: 1,
            connect_parallel: 4,
        };
        let readers = spawn_readers(vec![spec], 1, cfg, &shared, &stop_rx).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while shared.counters.delivered.load(Relaxed) < expect
            && shared.finished.load(Relaxed) == 0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop_tx.send(true).unwrap();
        let mut hist = new_histogram();
        for r in readers {
            hist.add(r.join().unwrap()).unwrap();
        }
        (shared, hist)
    }

    #[test]
    fn sse_subscriber_counts_and_samples() {
        let event = |id: u64| {
            let record = format!(
                "id: {id}\nevent: telemetry\ndata: {{\"readings\":{{\"sent_ns\":{}.0}}}}\n\n",
                stamp()
            );
            format!("{:x}\r\n{record}\r\n", record.len())
        };
        let body: String =
            (1..=3).map(event).collect::<String>() + &format!("{:x}\r\n: keep-alive\n\n\r\n", 14);
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let (addr, broker) = fake_broker(
            Vec::new(),
            b"\r\n\r\n",
            format!("{head}{body}").into_bytes(),
        );
        let (shared, hist) = run_one(
            SubSpec::Sse {
                addr,
                token: "tok".into(),
            },
            3,
        );
        assert_eq!(shared.counters.delivered.load(Relaxed), 3);
        assert_eq!(shared.ready.load(Relaxed), 1);
        assert_eq!(hist.len(), 3, "every event sampled");
        assert!(hist.max() < 10_000_000_000, "latency is sane");
        let request = String::from_utf8(broker.join().unwrap()).unwrap();
        assert!(
            request.starts_with("GET /v1/stream/telemetry HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Authorization: Bearer tok\r\n"));
        assert!(shared.errors.lock().unwrap().is_empty());
    }

    #[test]
    fn websocket_subscriber_counts_samples_and_answers_pings() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let broker = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while memchr::memmem::find(&request, b"\r\n\r\n").is_none() {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "client hung up");
                request.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8(request).unwrap();
            let key = request
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let accept = ws::tests::accept(key);
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                 sec-websocket-accept: {accept}\r\nsec-websocket-protocol: sensegate.v1.json\r\n\r\n"
            )
            .into_bytes();
            // The ping first: the test stops reading once the events are in.
            out.extend(ws::tests::frame(0x9, b"hb"));
            for id in 1..=3 {
                let json = format!(
                    "{{\"id\":\"{id}\",\"event\":\"telemetry\",\"data\":{{\"readings\":{{\"sent_ns\":{}.0}}}}}}",
                    stamp()
                );
                out.extend(ws::tests::frame(0x1, json.as_bytes()));
            }
            s.write_all(&out).unwrap();
            // The pong: header, mask, two masked bytes.
            let mut pong = [0u8; 8];
            s.read_exact(&mut pong).unwrap();
            // Hold the connection until the client leaves.
            while s.read(&mut buf).is_ok_and(|n| n > 0) {}
            (request, pong)
        });
        let (shared, hist) = run_one(
            SubSpec::Ws {
                addr,
                token: "tok".into(),
            },
            3,
        );
        assert_eq!(shared.counters.delivered.load(Relaxed), 3);
        assert_eq!(hist.len(), 3, "every event sampled");
        assert!(shared.errors.lock().unwrap().is_empty());
        let (request, pong) = broker.join().unwrap();
        assert!(request.starts_with("GET /v1/stream/telemetry HTTP/1.1\r\n"));
        assert!(request.contains("Authorization: Bearer tok\r\n"));
        assert!(request.contains("Upgrade: websocket\r\n"));
        assert_eq!(&pong[..2], &[0x8a, 0x82], "a masked two-byte pong");
        let unmasked: Vec<u8> = pong[6..]
            .iter()
            .zip(&pong[2..6])
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(unmasked, b"hb");
    }

    #[test]
    fn nats_subscriber_waits_for_its_pong() {
        let payload = format!("{{\"sent_ns\":{}}}", STAMP_BASE + crate::tally::now_ns());
        let msgs = format!(
            "PONG\r\nMSG lt.d 1 {}\r\n{payload}\r\nPING\r\n",
            payload.len()
        );
        let (addr, broker) = fake_broker(b"INFO {}\r\n".to_vec(), b"PING\r\n", msgs.into_bytes());
        let spec = SubSpec::Nats {
            addr,
            name: "t".into(),
            subjects: vec!["lt.d".into()],
        };
        let (shared, hist) = run_one(spec, 1);
        assert_eq!((shared.ready.load(Relaxed), hist.len()), (1, 1));
        let seen = String::from_utf8(broker.join().unwrap()).unwrap();
        assert!(seen.contains("SUB lt.d 1\r\n"), "{seen}");
    }

    #[test]
    fn refused_streams_are_reported() {
        let (addr, broker) = fake_broker(
            Vec::new(),
            b"\r\n\r\n",
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
        );
        let (shared, _) = run_one(
            SubSpec::Sse {
                addr,
                token: "t".into(),
            },
            1,
        );
        assert_eq!(shared.ready.load(Relaxed), 0);
        assert_eq!(shared.finished.load(Relaxed), 1);
        let errors = shared.errors.lock().unwrap().clone();
        assert!(errors[0].contains("429"), "{errors:?}");
        broker.join().unwrap();
    }
}
