//! The SenseGate under test: spawned by the load tester or already running,
//! and its admin API (devices, applications, tokens).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use sensegate_ingest_proto::client::Trust;
use serde_json::{json, Value};

/// Where SenseGate is, or how to start it.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// Start this `sensegate` binary on ephemeral 127.0.0.1 ports with a
    /// temporary data dir, and stop it at the end.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["http", "quic"])]
    pub(crate) spawn: Option<PathBuf>,
    /// The running server's HTTP address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub(crate) http: SocketAddr,
    /// The running server's QUIC address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4433")]
    pub(crate) quic: SocketAddr,
    /// The admin key of a running server.
    #[arg(long, env = "SENSEGATE_ADMIN_KEY", hide_env_values = true)]
    pub(crate) admin_key: Option<String>,
    /// The running server's certificate (its data dir's cert.pem); without
    /// it the QUIC certificate is not checked.
    #[arg(long, value_name = "PEM")]
    pub(crate) cert: Option<PathBuf>,
}

/// A server to load, with what is needed to talk to it.
pub(crate) struct Server {
    pub(crate) http: SocketAddr,
    pub(crate) quic: SocketAddr,
    pub(crate) pid: Option<u32>,
    pub(crate) trust: Trust,
    admin_key: String,
    client: reqwest::Client,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Server {
    /// Spawns or connects to the server `args` describe.
    pub(crate) async fn start(args: &ServerArgs) -> Result<Server> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;
        let Some(bin) = &args.spawn else {
            let trust = match &args.cert {
                Some(p) => Trust::from_pem(
                    &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
                )?,
                None => Trust::Insecure,
            };
            return Ok(Server {
                http: args.http,
                quic: args.quic,
                pid: None,
                trust,
                admin_key: args
                    .admin_key
                    .clone()
                    .context("--admin-key (or SENSEGATE_ADMIN_KEY) is required without --spawn")?,
                client,
                child: None,
                _dir: None,
            });
        };
        let dir = tempfile::tempdir()?;
        let admin_key = format!("sg-loadtest-{:032x}", rand::random::<u128>());
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let mut child = Command::new(bin)
            .args([
                "serve",
                "--http-addr",
                "127.0.0.1:0",
                "--quic-addr",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path())
            .env("SENSEGATE_BOOTSTRAP_ADMIN_KEY", &admin_key)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let line = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || {
                let mut lines = BufReader::new(stdout).lines();
                let found = lines
                    .by_ref()
                    .map_while(Result::ok)
                    .find(|l| l.starts_with("listening "));
                // Keep draining so the server never blocks on a full pipe.
                std::thread::spawn(move || lines.for_each(drop));
                found
            }),
        )
        .await
        .context("the server did not print its listening line within 60 s")??;
        let Some(line) = line else {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            bail!("the server exited before listening:\n{log}");
        };
        let addr = |key: &str| -> Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {key} in {line:?}"))
        };
        let trust = Trust::from_pem(&std::fs::read(dir.path().join("cert.pem"))?)?;
        Ok(Server {
            http: addr("http=")?,
            quic: addr("quic=")?,
            pid: Some(child.id()),
            trust,
            admin_key,
            client,
            child: Some(child),
            _dir: Some(dir),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.admin_key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("admin API {path}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Creates device `id` (or, if it exists, rotates its key) and returns
    /// its ingest key.
    pub(crate) async fn device_key(&self, id: &str) -> Result<String> {
        let (mut status, mut body) = self
            .admin(
                reqwest::Method::POST,
                "/api/v1/devices",
                Some(json!({"id": id, "name": format!("loadtest {id}")})),
            )
            .await?;
        if status == 409 {
            (status, body) = self
                .admin(
                    reqwest::Method::POST,
                    &format!("/api/v1/devices/{id}/rotate-key"),
                    None,
                )
                .await?;
        }
        if !(200..300).contains(&status) {
            bail!("creating device {id}: HTTP {status}: {body}");
        }
        body["ingestKey"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no ingestKey in {body}"))
    }

    /// Creates device `id` unless it exists (its key is left alone, so a
    /// fleet publishing to it keeps working).
    pub(crate) async fn ensure_device(&self, id: &str) -> Result<()> {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/api/v1/devices",
                Some(json!({"id": id, "name": format!("loadtest {id}")})),
            )
            .await?;
        if status != 409 && !(200..300).contains(&status) {
            bail!("creating device {id}: HTTP {status}: {body}");
        }
        Ok(())
    }

    /// Creates an application allowed to see `devices`; returns its client
    /// id and secret.
    pub(crate) async fn application(
        &self,
        name: &str,
        devices: &[String],
    ) -> Result<(String, String)> {
        let expires = time::OffsetDateTime::now_utc() + time::Duration::days(1);
        let expires = expires.format(&time::format_description::well_known::Rfc3339)?;
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/api/v1/applications",
                Some(json!({
                    "name": name,
                    "expiresAt": expires,
                    "includeAnomalies": true,
                    "devices": devices,
                    "deviceGroups": [],
                })),
            )
            .await?;
        if status != 201 {
            bail!("creating application {name}: HTTP {status}: {body}");
        }
        let field = |k: &str| {
            body[k]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no {k} in {body}"))
        };
        Ok((field("clientId")?, field("clientSecret")?))
    }

    /// Exchanges client credentials for an access token.
    pub(crate) async fn token(&self, client_id: &str, secret: &str) -> Result<String> {
        let resp = self
            .client
            .post(self.url("/connect/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
            ])
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("token endpoint: HTTP {status}: {body}");
        }
        body["access_token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no access_token in {body}"))
    }

    /// The token endpoint's URL (for the `token` scenario's own client).
    pub(crate) fn token_url(&self) -> String {
        self.url("/connect/token")
    }
}
