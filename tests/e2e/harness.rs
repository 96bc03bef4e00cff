//! One harness for every end-to-end test: starts the real `sensegate`
//! binary on ephemeral ports with a temporary data dir, and talks to it over
//! real sockets (HTTP with reqwest, QUIC through `sensegate publish`).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{json, Value};

/// The admin key every test server is bootstrapped with.
pub(crate) const ADMIN_KEY: &str = "sg-test-admin-key-0123456789abcdef0123456789abcdef";

/// A running `sensegate serve`.
pub(crate) struct Server {
    /// The processes: one (`serve`), or the admin then the broker.
    children: Vec<Child>,
    /// The admin API and token endpoint.
    pub(crate) http: SocketAddr,
    /// The stream endpoint (the broker's HTTP address).
    pub(crate) stream_http: SocketAddr,
    pub(crate) quic: SocketAddr,
    pub(crate) data_dir: Arc<tempfile::TempDir>,
    /// Everything the process wrote to stdout and stderr so far.
    pub(crate) output: Arc<Mutex<String>>,
    pub(crate) client: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How the control and data planes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `sensegate serve`.
    OneProcess,
    /// `sensegate admin serve` and `sensegate broker` following its feed.
    Split,
}

/// The cluster key split-mode tests use.
pub(crate) const CLUSTER_KEY: &str = "sg-test-cluster-key-0123456789abcdef";

/// Spawns `sensegate ARGS` with [`ADMIN_KEY`] as the bootstrap key.
fn spawn(args: &[String], output: &Arc<Mutex<String>>) -> (Child, String) {
    spawn_with_key(args, ADMIN_KEY, output)
}

/// Spawns `sensegate ARGS` with `admin_key` as the bootstrap key, collecting
/// its output into `output`; returns the child and the text after
/// `listening ` on its first such line.
fn spawn_with_key(
    args: &[String],
    admin_key: &str,
    output: &Arc<Mutex<String>>,
) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sensegate"))
        .args(args)
        .env("SENSEGATE_BOOTSTRAP_ADMIN_KEY", admin_key)
        .env("SENSEGATE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sensegate");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    for (pipe, tx) in [
        (Box::new(stdout) as Box<dyn std::io::Read + Send>, Some(tx)),
        (Box::new(stderr), None),
    ] {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let (Some(tx), Some(rest)) = (&tx, line.strip_prefix("listening ")) {
                    let _ = tx.send(rest.to_owned());
                }
                let mut out = output.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
    }
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => (child, line),
        Err(_) => panic!(
            "{args:?} did not print its listening line; output:\n{}",
            output.lock().unwrap()
        ),
    }
}

/// `sensegate admin serve` on `http` with its data under `root/admin`.
fn admin_args(http: &str, root: &tempfile::TempDir) -> Vec<String> {
    let dir = root.path().join("admin").display().to_string();
    [
        "admin",
        "serve",
        "--http-addr",
        http,
        "--cluster-key",
        CLUSTER_KEY,
        "--data-dir",
        &dir,
    ]
    .map(String::from)
    .into()
}

/// `sensegate broker` following the admin at `admin`, data under `root/broker`.
fn broker_args(admin: SocketAddr, root: &tempfile::TempDir, extra: &[&str]) -> Vec<String> {
    let dir = root.path().join("broker").display().to_string();
    let url = format!("http://{admin}");
    let mut args: Vec<String> = [
        "broker",
        "--http-addr",
        "127.0.0.1:0",
        "--quic-addr",
        "127.0.0.1:0",
        "--cluster-key",
        CLUSTER_KEY,
        "--admin-url",
        &url,
        "--data-dir",
        &dir,
    ]
    .map(String::from)
    .into();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn addr_in(line: &str, key: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

impl Server {
    /// Starts `sensegate serve` with extra arguments.
    pub(crate) fn start(extra: &[&str]) -> Server {
        Self::start_in(
            Arc::new(tempfile::tempdir().expect("temp dir")),
            ADMIN_KEY,
            extra,
        )
    }

    /// Stops this process and starts a new one on the same data dir.
    pub(crate) fn restart(self, extra: &[&str]) -> Server {
        self.restart_with_admin_key(ADMIN_KEY, extra)
    }

    /// Like [`Server::restart`], with another bootstrap admin key in the
    /// environment.
    pub(crate) fn restart_with_admin_key(self, admin_key: &str, extra: &[&str]) -> Server {
        let dir = self.data_dir.clone();
        drop(self);
        Self::start_in(dir, admin_key, extra)
    }

    fn start_in(data_dir: Arc<tempfile::TempDir>, admin_key: &str, extra: &[&str]) -> Server {
        let output = Arc::new(Mutex::new(String::new()));
        let mut args: Vec<String> = [
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--quic-addr",
            "127.0.0.1:0",
            "--data-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(data_dir.path().display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let (child, line) = spawn_with_key(&args, admin_key, &output);
        let http = addr_in(&line, "http=");
        Server {
            http,
            stream_http: http,
            quic: addr_in(&line, "quic="),
            children: vec![child],
            data_dir,
            output,
            client: reqwest::Client::new(),
        }
    }

    /// Starts the admin and a broker following its feed, as two processes.
    /// `extra` goes to the broker.
    pub(crate) fn start_split(extra: &[&str]) -> Server {
        let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let output = Arc::new(Mutex::new(String::new()));
        let (admin, line) = spawn(&admin_args("127.0.0.1:0", &data_dir), &output);
        let http = addr_in(&line, "http=");
        let (broker, line) = spawn(&broker_args(http, &data_dir, extra), &output);
        Self::split(http, &line, [admin, broker], data_dir, output)
    }

    /// A split-mode server from its admin and broker processes.
    fn split(
        http: SocketAddr,
        broker_line: &str,
        children: [Child; 2],
        data_dir: Arc<tempfile::TempDir>,
        output: Arc<Mutex<String>>,
    ) -> Server {
        Server {
            http,
            stream_http: addr_in(broker_line, "http="),
            quic: addr_in(broker_line, "quic="),
            children: children.into(),
            data_dir,
            output,
            client: reqwest::Client::new(),
        }
    }

    /// Like [`Server::start_split`], but the broker reaches the admin's feed
    /// at the address `relay` returns for the admin's (e.g. a proxy).
    pub(crate) fn start_split_through(relay: impl FnOnce(SocketAddr) -> SocketAddr) -> Server {
        let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let output = Arc::new(Mutex::new(String::new()));
        let (admin, line) = spawn(&admin_args("127.0.0.1:0", &data_dir), &output);
        let http = addr_in(&line, "http=");
        let issuer = format!("http://{http}");
        let args = broker_args(relay(http), &data_dir, &["--issuer", &issuer]);
        let (broker, line) = spawn(&args, &output);
        Self::split(http, &line, [admin, broker], data_dir, output)
    }

    /// Like [`Server::start_split`], but the broker starts first, pointed
    /// at an address where no admin listens yet.
    pub(crate) fn start_split_broker_first() -> Server {
        let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let output = Arc::new(Mutex::new(String::new()));
        let http = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let (broker, line) = spawn(&broker_args(http, &data_dir, &[]), &output);
        let (admin, _) = spawn(&admin_args(&http.to_string(), &data_dir), &output);
        Self::split(http, &line, [admin, broker], data_dir, output)
    }

    /// Split mode: stops the admin process (the broker keeps running).
    pub(crate) fn kill_admin(&mut self) {
        let admin = &mut self.children[0];
        let _ = admin.kill();
        let _ = admin.wait();
    }

    /// Split mode: starts the admin again on the same address and data.
    pub(crate) fn restart_admin(&mut self) {
        let (admin, _) = spawn(
            &admin_args(&self.http.to_string(), &self.data_dir),
            &self.output,
        );
        self.children[0] = admin;
    }

    /// Starts a server in `mode`.
    pub(crate) fn start_mode(mode: Mode, extra: &[&str]) -> Server {
        match mode {
            Mode::OneProcess => Self::start(extra),
            Mode::Split => Self::start_split(extra),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub(crate) fn cert_path(&self) -> PathBuf {
        let split = self.data_dir.path().join("broker/cert.pem");
        if split.exists() {
            split
        } else {
            self.data_dir.path().join("cert.pem")
        }
    }

    /// An admin API call; returns status and JSON body (Null if none).
    pub(crate) async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a device; returns its ingest key.
    pub(crate) async fn create_device(&self, id: &str) -> String {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/api/v1/devices",
                Some(json!({ "id": id, "name": format!("Device {id}") })),
            )
            .await;
        assert_eq!(status, 201, "create device {id}: {body}");
        body["ingestKey"].as_str().expect("ingestKey").to_owned()
    }

    /// Creates an application; returns (client id, client secret).
    pub(crate) async fn create_app(
        &self,
        name: &str,
        devices: &[&str],
        include_anomalies: bool,
    ) -> (String, String) {
        let app = self
            .create_app_full(name, devices, &[], include_anomalies)
            .await;
        (app.client_id, app.secret)
    }

    /// Creates an application naming devices and groups.
    pub(crate) async fn create_app_full(
        &self,
        name: &str,
        devices: &[&str],
        groups: &[&str],
        include_anomalies: bool,
    ) -> App {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/api/v1/applications",
                Some(json!({
                    "name": name,
                    "expiresAt": "2099-01-01T00:00:00Z",
                    "includeAnomalies": include_anomalies,
                    "devices": devices,
                    "deviceGroups": groups,
                })),
            )
            .await;
        assert_eq!(status, 201, "create application {name}: {body}");
        let field = |k: &str| {
            body[k]
                .as_str()
                .unwrap_or_else(|| panic!("no {k}"))
                .to_owned()
        };
        App {
            id: field("id"),
            client_id: field("clientId"),
            secret: field("clientSecret"),
        }
    }

    /// Exchanges client credentials for an access token.
    pub(crate) async fn token(&self, client_id: &str, secret: &str) -> String {
        let resp = self
            .client
            .post(self.url("/connect/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
            ])
            .send()
            .await
            .expect("token request");
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.expect("token json");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// The process id of the process serving streams.
    pub(crate) fn pid(&self) -> u32 {
        self.children.last().expect("a process").id()
    }

    /// Sends a stream request with extra headers and returns the raw response.
    pub(crate) async fn stream_request(
        &self,
        token: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .client
            .get(format!(
                "http://{}/v1/stream/telemetry{query}",
                self.stream_http
            ))
            .header("Accept", "text/event-stream")
            .bearer_auth(token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("stream request")
    }

    /// Opens a stream as soon as the broker accepts the token (in split
    /// mode it learns of new applications and keys from the feed).
    pub(crate) async fn open_stream_when_accepted(
        &self,
        token: &str,
        within: Duration,
    ) -> SseStream {
        let deadline = std::time::Instant::now() + within;
        loop {
            let resp = self.stream_request(token, "", &[]).await;
            if resp.status() == 200 {
                return SseStream::new(resp);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the broker never accepted the token"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of one series on the stream side's `/metrics` (`name{labels}`).
    pub(crate) async fn metric(&self, series: &str) -> Option<f64> {
        let text = self
            .client
            .get(format!("http://{}/metrics", self.stream_http))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    /// Opens an SSE stream; panics unless it answers 200 text/event-stream.
    pub(crate) async fn open_stream(&self, token: &str, query: &str) -> SseStream {
        self.open_stream_with(token, query, &[]).await
    }

    /// [`Server::open_stream`] with extra request headers (e.g. `Last-Event-ID`).
    pub(crate) async fn open_stream_with(
        &self,
        token: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> SseStream {
        let resp = self.stream_request(token, query, headers).await;
        assert_eq!(resp.status(), 200, "stream status");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseStream::new(resp)
    }

    /// A stream request over cleartext HTTP/2 (prior knowledge) on a client
    /// of its own; returns the client too, for more requests on the same
    /// connection.
    pub(crate) async fn h2_stream_request(
        &self,
        token: &str,
    ) -> (reqwest::Client, reqwest::Response) {
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let resp = h2
            .get(self.url("/v1/stream/telemetry"))
            .bearer_auth(token)
            .header("Accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        (h2, resp)
    }

    /// Runs `sensegate publish` for `device` with the given JSON lines.
    pub(crate) fn publish(&self, device: &str, key: &str, lines: &str) -> std::process::Output {
        self.publish_command(device, key, lines)
            .output()
            .expect("run publish")
    }

    /// Publishes `n` readings (`value` = 0..n) for `device`; panics on failure.
    pub(crate) fn publish_n(&self, device: &str, key: &str, n: usize) {
        let out = self.publish(device, key, &readings(n));
        assert!(
            out.status.success(),
            "publish: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The `sensegate publish` command, not yet started.
    pub(crate) fn publish_command(&self, device: &str, key: &str, lines: &str) -> Command {
        static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = self
            .data_dir
            .path()
            .join(format!("publish-{device}-{run}.jsonl"));
        std::fs::write(&file, lines).expect("write lines");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sensegate"));
        cmd.arg("publish")
            .arg("--server")
            .arg(self.quic.to_string())
            .args(["--device", device, "--key", key, "--ca"])
            .arg(self.cert_path())
            .arg(&file);
        cmd
    }

    /// Resident memory of the server process, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// `n` JSON-lines readings, `{"value": i}` for i in 0..n.
pub(crate) fn readings(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"ts\":{},\"readings\":{{\"value\":{i}}}}}\n",
                1_700_000_000_000u64 + i as u64
            )
        })
        .collect()
}

/// A created application's identifiers.
pub(crate) struct App {
    pub(crate) id: String,
    pub(crate) client_id: String,
    pub(crate) secret: String,
}

/// One parsed SSE record.
#[derive(Debug, Clone, Default)]
pub(crate) struct SseEvent {
    pub(crate) id: Option<String>,
    pub(crate) event: String,
    pub(crate) data: String,
}

impl SseEvent {
    /// The numeric `id:`.
    pub(crate) fn id(&self) -> u64 {
        self.id
            .as_deref()
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("no id on {self:?}"))
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("bad data {:?}: {e}", self.data))
    }
}

/// An SSE response body, parsed incrementally.
pub(crate) struct SseStream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    pos: usize,
    /// Comment lines seen (heartbeats, `connected`).
    pub(crate) comments: Vec<String>,
}

impl SseStream {
    pub(crate) fn new(resp: reqwest::Response) -> Self {
        SseStream {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
            pos: 0,
            comments: Vec::new(),
        }
    }

    /// The next event (comments are collected, not returned); `None` at the
    /// end of the stream or when `timeout` passes without an event.
    pub(crate) async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf[self.pos..].find("\n\n") {
                let record = &self.buf[self.pos..self.pos + end];
                self.pos += end + 2;
                let mut ev = SseEvent::default();
                let mut is_event = false;
                for line in record.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        self.comments.push(c.trim().to_owned());
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "id" => ev.id = Some(value.to_owned()),
                            "event" => {
                                ev.event = value.to_owned();
                                is_event = true;
                            }
                            "data" => {
                                ev.data.push_str(value);
                                is_event = true;
                            }
                            _ => {}
                        }
                    }
                }
                if is_event {
                    return Some(ev);
                }
                continue;
            }
            // Keep the unparsed tail only.
            self.buf.drain(..self.pos);
            self.pos = 0;
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    /// Collects events until `done` says stop; panics after `timeout` of silence.
    pub(crate) async fn collect_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[SseEvent]) -> bool,
    ) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while !done(&out) {
            match self.next(timeout).await {
                Some(ev) => out.push(ev),
                None => panic!("stream went quiet after {} events", out.len()),
            }
        }
        out
    }
}

/// Path of a file under `tests/data`.
pub(crate) fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(path)
}
