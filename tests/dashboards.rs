//! The dashboards and alert rules in `dashboards/` against the real thing.
//!
//! With `SENSEGATE_TEST_PROMETHEUS` set (the path of a `prometheus` binary),
//! this starts `sensegate serve --demo` and a real Prometheus scraping it
//! every second, puts a short load on it (the demo devices, one SSE stream,
//! token requests including refused ones, a device with a wrong key), and then evaluates every panel
//! target of every dashboard and every alert rule through Prometheus' HTTP
//! API: each must parse, panels must return data, alert rules (which only
//! return data when something is wrong) must evaluate without error, and
//! every metric any of them names must be one the binary exports. With
//! `SENSEGATE_TEST_PROMTOOL` set, `promtool check rules` / `check config`
//! must accept `alerts.yml` and `prometheus.yml`.
//!
//! The static checks (valid JSON, datasource variable, no undefined
//! template variable) need neither and always run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::Value;

const ADMIN_KEY: &str = "sg-dashboards-test-admin-key-0123456789abcdef0123";
/// The scrape job name `dashboards/prometheus.yml` uses and alerts match.
const JOB: &str = "sensegate";
/// Metric names Prometheus makes itself rather than scraping them.
const SYNTHETIC: &[&str] = &["up", "scrape_duration_seconds", "scrape_samples_scraped"];
/// Bounds for the live test (kept under 60 s in total).
const START_TIMEOUT: Duration = Duration::from_secs(15);
const LIVE_TIMEOUT: Duration = Duration::from_secs(40);
/// Successful scrapes to wait for before evaluating (one per second).
const SCRAPES: f64 = 6.0;

// ---------------------------------------------------------------------------
// Static checks
// ---------------------------------------------------------------------------

#[test]
fn dashboards_are_provisioning_ready() {
    let dashboards = load_dashboards();
    assert!(
        dashboards.len() >= 3,
        "expected the overview, application and admin dashboards"
    );
    let mut uids = BTreeSet::new();
    for d in &dashboards {
        let json = &d.json;
        let uid = json["uid"].as_str().expect("dashboard uid");
        assert!(
            uids.insert(uid.to_owned()),
            "{}: duplicate uid {uid}",
            d.file
        );
        assert!(json["title"].is_string(), "{}: no title", d.file);
        assert!(
            json["id"].is_null(),
            "{}: `id` must be null for provisioning",
            d.file
        );
        let ds = d
            .variables
            .iter()
            .find(|v| v["type"] == "datasource")
            .unwrap_or_else(|| panic!("{}: no datasource variable", d.file));
        assert_eq!(
            ds["name"], "datasource",
            "{}: datasource variable name",
            d.file
        );
        assert_eq!(ds["query"], "prometheus", "{}: datasource type", d.file);
        let mut ids = BTreeSet::new();
        for p in &d.panels {
            let title = p["title"].as_str().unwrap_or("?");
            assert!(
                ids.insert(p["id"].as_i64().expect("panel id")),
                "{}: duplicate panel id in {title:?}",
                d.file
            );
            assert!(
                p["gridPos"].is_object(),
                "{}: {title:?} has no gridPos",
                d.file
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{}: panel {title:?} must use the datasource variable",
                d.file
            );
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{}: panel {title:?} should say what it answers (description)",
                d.file
            );
            let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            assert!(
                !targets.is_empty(),
                "{}: panel {title:?} has no query",
                d.file
            );
            for t in targets {
                if let Some(uid) = t.get("datasource").map(|ds| &ds["uid"]) {
                    assert_eq!(uid, "${datasource}", "{}: target of {title:?}", d.file);
                }
            }
        }
        for q in &d.queries {
            if let Some(var) = d.undefined_variable(&q.expr) {
                panic!("{}: {}: undefined variable {var}", d.file, q.label);
            }
            let expr = d.substitute(&q.expr);
            assert!(
                !metric_names(&expr).is_empty(),
                "{}: {} names no metric: {expr}",
                d.file,
                q.label
            );
        }
        for (name, definition) in d.variable_queries() {
            let (selector, label) = parse_label_values(&definition)
                .unwrap_or_else(|| panic!("{}: variable {name}: {definition:?}", d.file));
            assert!(!label.is_empty() && !selector.is_empty());
        }
    }
    let config = std::fs::read_to_string(dashboards_dir().join("prometheus.yml")).unwrap();
    assert!(
        config.contains(&format!("job_name: {JOB}")),
        "prometheus.yml must scrape with job_name {JOB}"
    );
    assert!(
        config.contains("alerts.yml"),
        "prometheus.yml must load alerts.yml"
    );
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, job) (rate(a_bucket{x=~"y}", b!="c"}[5m] offset 1h)))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names("sum by (c) (rate(b[1m])) / on (c) group_left (d) x:y:rate5m > bool 1e3"),
        ["b", "x:y:rate5m"]
    );
    assert_eq!(
        names(r#"time() - max(t{job="a"}) and on () count_values("v", z) or vector(0)"#),
        ["t", "z"]
    );
    assert_eq!(
        names(r#"label_replace(m, "dst", "$1", "src", "(.*)") unless ignoring (q) n @ end()"#),
        ["m", "n"]
    );
    assert_eq!(
        names("topk(10, sum without (instance) (foo)) # comment bar"),
        ["foo"]
    );
    assert_eq!(
        names(r#"{__name__=~"p_info|q_total", job=~"$job"} or {__name__ = "r"}"#),
        ["p_info", "q_total", "r"]
    );
}

#[test]
fn template_variables_are_substituted() {
    let d = Dashboard {
        file: "test".into(),
        json: Value::Null,
        panels: vec![],
        queries: vec![],
        variables: vec![
            serde_json::json!({"name": "datasource", "type": "datasource", "query": "prometheus"}),
            serde_json::json!({"name": "application", "type": "query", "allValue": ".*"}),
            serde_json::json!({"name": "job", "type": "query"}),
        ],
    };
    assert_eq!(
        d.substitute(
            r#"rate(a{client_id=~"$application", job=~"${job:regex}"}[$__rate_interval])"#
        ),
        r#"rate(a{client_id=~".*", job=~".*"}[1m])"#
    );
    assert_eq!(
        d.substitute(r#"label_replace(x[$__interval], "d", "$1", "s", "(.*)")"#),
        r#"label_replace(x[15s], "d", "$1", "s", "(.*)")"#
    );
    assert_eq!(
        d.undefined_variable("a{b=~\"$nope\"}"),
        Some("$nope".into())
    );
    assert_eq!(d.undefined_variable(r#"a{b=~"$job"}"#), None);
}

// ---------------------------------------------------------------------------
// promtool
// ---------------------------------------------------------------------------

#[test]
fn promtool_accepts_rules_and_config() {
    let Some(promtool) = std::env::var_os("SENSEGATE_TEST_PROMTOOL") else {
        println!("SENSEGATE_TEST_PROMTOOL not set: promtool check skipped");
        return;
    };
    let dir = dashboards_dir();
    for args in [
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args[..2])
            .arg(dir.join(args[2]))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------
// The live test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_alert_works_against_prometheus() {
    let Some(prometheus) = std::env::var_os("SENSEGATE_TEST_PROMETHEUS") else {
        println!("SENSEGATE_TEST_PROMETHEUS not set: dashboard test skipped");
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = tokio::task::spawn_blocking({
        let data = dir.path().join("sensegate");
        move || SenseGate::start(&data)
    })
    .await
    .expect("start sensegate");
    let prometheus = PathBuf::from(prometheus);
    let work = async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let load = Load::start(&server, &http).await;
        let prom = Prometheus::start(&prometheus, dir.path(), server.http).await;
        prom.wait_for_scrapes(&http).await;
        let report = check_everything(&server, &prom, &http).await;
        drop(load);
        (report, prom)
    };
    let (report, prom) = match tokio::time::timeout(LIVE_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => panic!(
            "dashboard test timed out after {:?}; sensegate output:\n{}",
            started.elapsed(),
            server.output()
        ),
    };
    println!(
        "checked {} dashboard queries, {} variables and {} alert rules in {:?}",
        report.queries,
        report.variables,
        report.rules,
        started.elapsed()
    );
    assert!(
        report.failures.is_empty(),
        "{} problem(s) with dashboards/:\n  - {}\n\nmetrics sensegate exports: {:?}\n\nprometheus log tail:\n{}",
        report.failures.len(),
        report.failures.join("\n  - "),
        report.exported,
        prom.log_tail()
    );
}

#[derive(Default)]
struct Report {
    failures: Vec<String>,
    exported: BTreeSet<String>,
    queries: usize,
    variables: usize,
    rules: usize,
}

async fn check_everything(server: &SenseGate, prom: &Prometheus, http: &reqwest::Client) -> Report {
    let mut report = Report::default();
    let metrics = http
        .get(format!("http://{}/metrics", server.http))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("GET /metrics")
        .text()
        .await
        .expect("/metrics body");
    report.exported = exported_names(&metrics);
    let exported = report.exported.clone();
    let check_names = |failures: &mut Vec<String>, what: &str, expr: &str| {
        for name in metric_names(expr) {
            if !exported.contains(&name) && !SYNTHETIC.contains(&name.as_str()) {
                failures.push(format!(
                    "{what}: metric {name} is not exported by sensegate's /metrics"
                ));
            }
        }
    };

    // Every panel target: parses and returns data.
    for d in load_dashboards() {
        for q in &d.queries {
            report.queries += 1;
            let what = format!("{}: {}", d.file, q.label);
            if let Some(var) = d.undefined_variable(&q.expr) {
                report
                    .failures
                    .push(format!("{what}: undefined template variable {var}"));
                continue;
            }
            let expr = d.substitute(&q.expr);
            check_names(&mut report.failures, &what, &expr);
            match prom.query(http, &expr).await {
                Err(e) => report.failures.push(format!("{what}: {e}\n      {expr}")),
                Ok(0) => report
                    .failures
                    .push(format!("{what}: returned no data\n      {expr}")),
                Ok(_) => {}
            }
        }
        // Every query variable: its selector matches series carrying the label.
        for (name, definition) in d.variable_queries() {
            report.variables += 1;
            let what = format!("{}: variable ${name}", d.file);
            let Some((selector, label)) = parse_label_values(&d.substitute(&definition)) else {
                report.failures.push(format!(
                    "{what}: not label_values(selector, label): {definition}"
                ));
                continue;
            };
            check_names(&mut report.failures, &what, &selector);
            match prom.series(http, &selector).await {
                Err(e) => report.failures.push(format!("{what}: {e}")),
                Ok(series) if !series.iter().any(|s| s.get(&label).is_some()) => report
                    .failures
                    .push(format!("{what}: no series of {selector} has label {label}")),
                Ok(_) => {}
            }
        }
    }

    // Every alert rule, as Prometheus loaded and evaluated it: healthy, its
    // query parses, and every metric it names is exported and scraped. They
    // return data only when something is wrong, and nothing is wrong here,
    // so they must return nothing.
    let alerts_yml = std::fs::read_to_string(dashboards_dir().join("alerts.yml")).unwrap();
    let declared = alerts_yml
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("- alert:") || l.starts_with("- record:")
        })
        .count();
    let rules = prom.rules(http).await;
    report.rules = rules.len();
    if rules.len() != declared {
        report.failures.push(format!(
            "alerts.yml declares {declared} rules but Prometheus loaded {}",
            rules.len()
        ));
    }
    for rule in &rules {
        let name = rule["name"].as_str().unwrap_or("?");
        let expr = rule["query"].as_str().unwrap_or_default();
        let what = format!("alerts.yml: {name}");
        if rule["health"] != "ok" {
            report.failures.push(format!(
                "{what}: health {} ({})",
                rule["health"], rule["lastError"]
            ));
        }
        check_names(&mut report.failures, &what, expr);
        match prom.query(http, expr).await {
            Err(e) => report.failures.push(format!("{what}: {e}\n      {expr}")),
            Ok(0) => {}
            Ok(n) => report.failures.push(format!(
                "{what}: returns {n} series on a healthy server: it would fire\n      {expr}"
            )),
        }
        for metric in metric_names(expr) {
            match prom.series(http, &metric).await {
                Ok(s) if s.is_empty() => report
                    .failures
                    .push(format!("{what}: Prometheus scraped no series of {metric}")),
                Ok(_) => {}
                Err(e) => report.failures.push(format!("{what}: {metric}: {e}")),
            }
        }
    }
    report
}

/// The sample names in a text exposition (`foo_bucket`, `foo_sum`, … as
/// written, so a query of `foo_bucket` matches).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------
// Dashboards
// ---------------------------------------------------------------------------

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

struct Dashboard {
    file: String,
    json: Value,
    /// Every panel, rows' nested panels included.
    panels: Vec<Value>,
    queries: Vec<Query>,
    variables: Vec<Value>,
}

struct Query {
    /// `panel "Title" target A`, for messages.
    label: String,
    expr: String,
}

fn load_dashboards() -> Vec<Dashboard> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .expect("dashboards/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"));
            let mut panels = Vec::new();
            collect_panels(&json["panels"], &mut panels);
            let mut queries = Vec::new();
            for p in &panels {
                let title = p["title"].as_str().unwrap_or("?");
                for t in p["targets"].as_array().into_iter().flatten() {
                    if let Some(expr) = t["expr"].as_str() {
                        queries.push(Query {
                            label: format!("panel {title:?} target {}", t["refId"]),
                            expr: expr.to_owned(),
                        });
                    }
                }
            }
            let variables = json["templating"]["list"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            Dashboard {
                file,
                json,
                panels,
                queries,
                variables,
            }
        })
        .collect()
}

fn collect_panels(panels: &Value, out: &mut Vec<Value>) {
    for p in panels.as_array().into_iter().flatten() {
        out.push(p.clone());
        collect_panels(&p["panels"], out);
    }
}

/// Grafana's built-in interval variables, as the test fixes them.
const BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval_ms", "15000"),
    ("__interval", "15s"),
    ("__range_ms", "300000"),
    ("__range_s", "300"),
    ("__range", "5m"),
];

impl Dashboard {
    /// The value a variable takes in the test: "All" for query variables.
    fn value_of(&self, name: &str) -> Option<String> {
        if let Some((_, v)) = BUILTINS.iter().find(|(n, _)| *n == name) {
            return Some((*v).to_owned());
        }
        let var = self.variables.iter().find(|v| v["name"] == name)?;
        Some(match var["type"].as_str() {
            Some("datasource") => var["query"].as_str().unwrap_or("prometheus").to_owned(),
            Some("interval") => "1m".to_owned(),
            _ => var["allValue"].as_str().unwrap_or(".*").to_owned(),
        })
    }

    /// Replaces `$name`, `${name}`, `${name:format}` and `[[name]]` of the
    /// dashboard's variables and Grafana's built-ins, as Grafana does:
    /// anything else (`"$1"` in `label_replace`) is left alone.
    fn substitute(&self, expr: &str) -> String {
        let mut out = String::with_capacity(expr.len());
        let mut rest = expr;
        while let Some(i) = rest.find(['$', '[']) {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some((name, len)) = variable_at(tail) {
                if let Some(value) = self.value_of(name) {
                    out.push_str(&value);
                    rest = &tail[len..];
                    continue;
                }
            }
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
        out.push_str(rest);
        out
    }

    /// The first `$name` reference that is not a known variable.
    fn undefined_variable(&self, expr: &str) -> Option<String> {
        let mut rest = expr;
        while let Some(i) = rest.find('$') {
            let tail = &rest[i..];
            if let Some((name, len)) = variable_at(tail) {
                if self.value_of(name).is_none() {
                    return Some(tail[..len].to_owned());
                }
                rest = &tail[len..];
            } else {
                rest = &tail[1..];
            }
        }
        None
    }

    /// `(name, label_values(…) definition)` of every query variable.
    fn variable_queries(&self) -> Vec<(String, String)> {
        self.variables
            .iter()
            .filter(|v| v["type"] == "query")
            .map(|v| {
                let def = v["definition"]
                    .as_str()
                    .or_else(|| v["query"]["query"].as_str())
                    .or_else(|| v["query"].as_str())
                    .unwrap_or_default();
                (v["name"].as_str().unwrap_or("?").to_owned(), def.to_owned())
            })
            .collect()
    }
}

/// A variable reference at the start of `s`: its name and length.
fn variable_at(s: &str) -> Option<(&str, usize)> {
    let ident_len = |t: &str| {
        t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(t.len())
    };
    let starts_ident = |t: &str| t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    if let Some(t) = s.strip_prefix("${") {
        let n = ident_len(t);
        let end = t.find('}')?;
        (n > 0 && (t[n..].starts_with('}') || t[n..].starts_with(':'))).then(|| (&t[..n], end + 3))
    } else if let Some(t) = s.strip_prefix("[[") {
        let n = ident_len(t);
        (starts_ident(t) && t[n..].starts_with("]]")).then(|| (&t[..n], n + 4))
    } else if let Some(t) = s.strip_prefix('$') {
        starts_ident(t).then(|| (&t[..ident_len(t)], ident_len(t) + 1))
    } else {
        None
    }
}

/// Splits Grafana's `label_values(selector, label)`.
fn parse_label_values(def: &str) -> Option<(String, String)> {
    let inner = def
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim().to_owned(), label.trim().to_owned()))
}

/// The metric names a PromQL expression selects: identifiers that are not
/// functions, aggregations, keywords, label names in `by (…)`/`on (…)`, or
/// anything inside strings, `{…}` matchers, `[…]` ranges and numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Index just past the bracket that closes the one at `i`, honouring strings.
    let skip_group = |mut i: usize, open: u8, close: u8| {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                b'"' | b'\'' | b'`' => i = skip_string(b, i),
                c if c == open => {
                    depth += 1;
                    i += 1;
                }
                c if c == close => {
                    depth -= 1;
                    i += 1;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => i += 1,
            }
        }
        i
    };
    let next_non_space = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => i = skip_string(b, i),
            b'{' => i = skip_group(i, b'{', b'}'),
            b'[' => i = skip_group(i, b'[', b']'),
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            c if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let lower = word.to_ascii_lowercase();
                let next = next_non_space(i);
                if KEYWORDS.contains(&lower.as_str()) {
                    if LABEL_LISTS.contains(&lower.as_str()) && b.get(next) == Some(&b'(') {
                        i = skip_group(next, b'(', b')');
                    }
                } else if b.get(next) != Some(&b'(') {
                    names.insert(word.to_owned());
                }
            }
            _ => i += 1,
        }
    }
    // `{__name__=~"a|b"}` names metrics too.
    let mut rest = expr;
    while let Some(at) = rest.find("__name__") {
        rest = rest[at + 8..].trim_start();
        let Some(after) = rest.strip_prefix("=~").or_else(|| rest.strip_prefix('=')) else {
            continue;
        };
        let after = after.trim_start();
        let Some(value) = after.strip_prefix('"').and_then(|v| v.split_once('"')) else {
            continue;
        };
        names.extend(
            value
                .0
                .split('|')
                .filter(|n| {
                    !n.is_empty()
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                })
                .map(str::to_owned),
        );
    }
    names
}

/// Index just past the string literal starting at `i`.
fn skip_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == b'\\' && quote != b'`' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    j
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sensegate serve --demo` on ephemeral ports.
struct SenseGate {
    _child: Killed,
    http: SocketAddr,
    quic: SocketAddr,
    cert: PathBuf,
    client_id: String,
    client_secret: String,
    output: Arc<Mutex<String>>,
}

impl SenseGate {
    fn start(data_dir: &Path) -> SenseGate {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sensegate"))
            .args([
                "serve",
                "--http-addr",
                "127.0.0.1:0",
                "--quic-addr",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--demo")
            .env("SENSEGATE_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
            .env("SENSEGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sensegate");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        let pipes = [(stdout, Some(tx)), (stderr, None)];
        for (pipe, tx) in pipes {
            let output = output.clone();
            // Drains the pipe for the process's whole life.
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(tx) = &tx {
                        let _ = tx.send(line.clone());
                    }
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        let child = Killed(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut addrs, mut client_id, mut client_secret) = (None, None, None);
        while addrs.is_none() || client_id.is_none() || client_secret.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                panic!(
                    "sensegate did not print its address and demo credentials within {START_TIMEOUT:?}; output:\n{}",
                    output.lock().unwrap()
                );
            };
            if let Some(rest) = line.strip_prefix("listening ") {
                let addr = |key: &str| {
                    rest.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(key))
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                };
                addrs = Some((addr("http="), addr("quic=")));
            } else if let Some(v) = line.trim().strip_prefix("client id:") {
                client_id = Some(v.trim().to_owned());
            } else if let Some(v) = line.trim().strip_prefix("client secret:") {
                client_secret = Some(v.trim().to_owned());
            }
        }
        let (http, quic) = addrs.unwrap();
        SenseGate {
            _child: child,
            http,
            quic,
            cert: data_dir.join("cert.pem"),
            client_id: client_id.unwrap(),
            client_secret: client_secret.unwrap(),
            output,
        }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `sensegate publish` as a known device with a wrong key: a refused
    /// device session.
    fn publish_with_wrong_key(&self) {
        let mut child = Killed(
            Command::new(env!("CARGO_BIN_EXE_sensegate"))
                .arg("publish")
                .args(["--server", &self.quic.to_string()])
                .args(["--device", "demo-press-1", "--key", "sgd_not-the-key"])
                .arg("--ca")
                .arg(&self.cert)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sensegate publish"),
        );
        let line = b"{\"ts\":1796300000000,\"kind\":\"reading\",\"readings\":{\"t\":1.0}}\n";
        let mut stdin = child.0.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, line).unwrap();
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                assert!(!status.success(), "publish with a wrong key succeeded");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "publish with a wrong key did not finish in 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The short load: token requests (refused and throttled ones too), admin
/// API calls (one refused), a device with a wrong key, a refused stream and
/// one open SSE stream that keeps reading.
struct Load {
    stream: tokio::task::JoinHandle<()>,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stream.abort();
    }
}

impl Load {
    async fn start(server: &SenseGate, http: &reqwest::Client) -> Load {
        let token = |client_id: &str, secret: &str| {
            http.post(server.url("/connect/token"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_secret", secret),
                ])
                .send()
        };
        let refused = token(&server.client_id, "sgs_wrong-secret")
            .await
            .expect("token request");
        assert!(
            refused.status().is_client_error(),
            "a wrong secret got {}",
            refused.status()
        );
        let mut access_token = String::new();
        for _ in 0..3 {
            let resp = token(&server.client_id, &server.client_secret)
                .await
                .expect("token request");
            assert!(resp.status().is_success(), "token: {}", resp.status());
            let body: Value = resp.json().await.expect("token JSON");
            access_token = body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned();
        }
        // A guesser: an unknown client id failing until the throttle answers 429.
        let mut throttled = false;
        for _ in 0..10 {
            let resp = token("sgc_dashboards-test-guesser", "sgs_guess")
                .await
                .expect("token request");
            if resp.status() == 429 {
                throttled = true;
                break;
            }
        }
        assert!(throttled, "the token endpoint never throttled a guesser");
        for key in [ADMIN_KEY, "sg-not-the-admin-key"] {
            http.get(server.url("/api/v1/applications"))
                .bearer_auth(key)
                .send()
                .await
                .expect("admin API request");
        }
        tokio::task::block_in_place(|| server.publish_with_wrong_key());
        let refused = http
            .get(server.url("/v1/stream/telemetry"))
            .bearer_auth("not-a-token")
            .send()
            .await
            .expect("stream request");
        assert_eq!(refused.status(), 401, "a bad token must be refused");

        let stream_client = reqwest::Client::new();
        let resp = stream_client
            .get(server.url("/v1/stream/telemetry"))
            .header("Accept", "text/event-stream")
            .bearer_auth(&access_token)
            .send()
            .await
            .expect("open stream");
        assert!(resp.status().is_success(), "stream: {}", resp.status());
        let events = Arc::new(AtomicUsize::new(0));
        let stream = tokio::spawn({
            let events = events.clone();
            async move {
                let mut body = resp.bytes_stream();
                while let Some(Ok(chunk)) = body.next().await {
                    let n = chunk.windows(5).filter(|w| w == b"data:").count();
                    events.fetch_add(n, Ordering::Relaxed);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while events.load(Ordering::Relaxed) == 0 {
            assert!(
                Instant::now() < deadline,
                "the demo stream delivered no event in 10 s; output:\n{}",
                server.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Load { stream }
    }
}

/// A real Prometheus scraping the server every second and evaluating
/// `dashboards/alerts.yml` every second.
struct Prometheus {
    _child: Killed,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    async fn start(binary: &Path, dir: &Path, target: SocketAddr) -> Prometheus {
        let rules = dashboards_dir().join("alerts.yml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"{target}\"]\n",
            ),
        )
        .unwrap();
        let http = reqwest::Client::new();
        let mut last_error = String::new();
        // The free port is found by binding and releasing it; another
        // process may take it in between, so try a few.
        for attempt in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let log_file = std::fs::File::create(&log).unwrap();
            let mut child = Killed(
                Command::new(binary)
                    .arg(format!("--config.file={}", config.display()))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        dir.join(format!("tsdb-{attempt}")).display()
                    ))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .stdin(Stdio::null())
                    .stdout(log_file.try_clone().unwrap())
                    .stderr(log_file)
                    .spawn()
                    .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display())),
            );
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + START_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.0.try_wait() {
                    last_error = format!("exited with {status}");
                    break;
                }
                if let Ok(r) = http.get(format!("{url}/-/ready")).send().await {
                    if r.status().is_success() {
                        return Prometheus {
                            _child: child,
                            url,
                            log,
                        };
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            last_error = format!(
                "{} ({last_error}):\n{}",
                binary.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("Prometheus did not become ready: {last_error}");
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until Prometheus has scraped the server [`SCRAPES`] times and
    /// evaluated every rule once.
    async fn wait_for_scrapes(&self, http: &reqwest::Client) {
        let scrapes = format!("sum_over_time(up{{job=\"{JOB}\"}}[1m])");
        loop {
            let done = self
                .query_value(http, &scrapes)
                .await
                .is_some_and(|n| n >= SCRAPES);
            if done {
                let rules = self.rules(http).await;
                if !rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn api(
        &self,
        http: &reqwest::Client,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, String> {
        let resp = http
            .get(format!("{}{path}", self.url))
            .query(params)
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let body: Value = resp.json().await.map_err(|e| format!("GET {path}: {e}"))?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!(
                "Prometheus says {}: {}",
                body["errorType"].as_str().unwrap_or("error"),
                body["error"].as_str().unwrap_or("?")
            ))
        }
    }

    /// Evaluates an instant query; the number of results (1 for a scalar).
    async fn query(&self, http: &reqwest::Client, expr: &str) -> Result<usize, String> {
        let data = self.api(http, "/api/v1/query", &[("query", expr)]).await?;
        Ok(match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => data["result"].as_array().map_or(0, Vec::len),
            _ => 1,
        })
    }

    async fn query_value(&self, http: &reqwest::Client, expr: &str) -> Option<f64> {
        let data = self
            .api(http, "/api/v1/query", &[("query", expr)])
            .await
            .ok()?;
        data["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// The label sets of the series a selector matches.
    async fn series(
        &self,
        http: &reqwest::Client,
        selector: &str,
    ) -> Result<Vec<BTreeMap<String, Value>>, String> {
        let data = self
            .api(http, "/api/v1/series", &[("match[]", selector)])
            .await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| serde_json::from_value(s.clone()).ok())
            .collect())
    }

    /// Every loaded rule as `/api/v1/rules` describes it.
    async fn rules(&self, http: &reqwest::Client) -> Vec<Value> {
        let data = self
            .api(http, "/api/v1/rules", &[])
            .await
            .unwrap_or_default();
        data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}
