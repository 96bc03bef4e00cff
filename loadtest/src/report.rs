//! The final report of a run: a human table, JSON, a self-contained HTML
//! page with charts, and the Markdown comparison of several JSON reports.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::stats::{Latency, ProcReport, Snapshot};

/// The shape of a fan-out workload: identical across targets for a fair
/// comparison.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Shape {
    pub(crate) publishers: usize,
    pub(crate) subscribers: usize,
    /// Bytes of event JSON (the MQTT/NATS payload, the SSE `data:` line).
    pub(crate) payload_bytes: usize,
    pub(crate) batch: usize,
    /// Events/s per publisher; `None` is as fast as the window allows.
    pub(crate) rate: Option<f64>,
    /// Deliveries in flight per subscriber (max-rate mode).
    pub(crate) window: u64,
}

impl Shape {
    /// A short label that is the same for every target.
    pub(crate) fn label(&self) -> String {
        let rate = match self.rate {
            Some(r) => format!("{r} ev/s/pub"),
            None => "max rate".into(),
        };
        format!(
            "{} pub → {} sub, {} B, {rate}",
            self.publishers, self.subscribers, self.payload_bytes
        )
    }
}

/// One second of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Tick {
    /// Seconds since the measurement started.
    pub(crate) t_s: f64,
    /// What happened during this second.
    pub(crate) delta: Snapshot,
    /// Deliveries expected so far but not (yet) made.
    pub(crate) deficit: u64,
    pub(crate) server_cpu_pct: Option<f64>,
    pub(crate) client_cpu_pct: Option<f64>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Report {
    /// `fleet`, `subscribers`, `e2e`, `token` or `baseline`.
    pub(crate) scenario: String,
    /// `sensegate`, `mosquitto` or `nats`.
    pub(crate) target: String,
    /// Where the target was.
    pub(crate) address: String,
    /// RFC 3339, UTC.
    pub(crate) started_at: String,
    /// The measured window (sending), seconds.
    pub(crate) duration_s: f64,
    /// Fan-out scenarios only.
    pub(crate) shape: Option<Shape>,
    /// Other settings, for the record.
    pub(crate) settings: Vec<(String, String)>,
    /// Totals at the end, including what arrived while draining.
    pub(crate) totals: Snapshot,
    /// Sent per second over the window.
    pub(crate) sent_per_s: f64,
    /// Acknowledged by the broker per second (QUIC ingest).
    pub(crate) acked_per_s: f64,
    /// Delivered per second over the window.
    pub(crate) delivered_per_s: f64,
    /// Expected deliveries that never arrived (after draining).
    pub(crate) lost: u64,
    /// Received bytes per delivered event, protocol framing included.
    pub(crate) wire_bytes_per_event: f64,
    pub(crate) latency: Option<Latency>,
    pub(crate) server: Option<ProcReport>,
    /// The load tester itself.
    pub(crate) client: Option<ProcReport>,
    /// Scenario-specific results.
    pub(crate) extra: Vec<(String, String)>,
    /// The first errors seen (at most 10).
    pub(crate) errors: Vec<String>,
    pub(crate) timeline: Vec<Tick>,
}

/// `1234567.8` → `1,234,568`.
pub(crate) fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

impl Report {
    fn labels(&self) -> (&'static str, &'static str) {
        match self.scenario.as_str() {
            "token" => ("requests", "successful"),
            "fleet" => ("events sent", "events delivered"),
            _ => ("events published", "events delivered"),
        }
    }

    /// Rows of the human table.
    pub(crate) fn rows(&self) -> Vec<(String, String)> {
        let (sent, delivered) = self.labels();
        let t = &self.totals;
        let mut rows = vec![
            (
                "scenario".into(),
                format!("{} → {} ({})", self.scenario, self.target, self.address),
            ),
            ("started".into(), self.started_at.clone()),
            ("measured for".into(), format!("{:.1} s", self.duration_s)),
        ];
        if let Some(s) = &self.shape {
            rows.push(("workload".into(), s.label()));
        }
        for (k, v) in &self.settings {
            rows.push((k.clone(), v.clone()));
        }
        // A subscribers-only run sends nothing itself.
        if self.scenario != "subscribers" {
            rows.push((
                sent.into(),
                format!(
                    "{} ({}/s)",
                    thousands(t.sent as f64),
                    thousands(self.sent_per_s)
                ),
            ));
        }
        if t.acked > 0 {
            rows.push((
                "acked by broker".into(),
                format!(
                    "{} ({}/s)",
                    thousands(t.acked as f64),
                    thousands(self.acked_per_s)
                ),
            ));
        }
        if t.expected > 0 || t.delivered > 0 {
            rows.push((
                delivered.into(),
                format!(
                    "{} ({}/s)",
                    thousands(t.delivered as f64),
                    thousands(self.delivered_per_s)
                ),
            ));
        }
        if t.expected > 0 {
            rows.push(("expected deliveries".into(), thousands(t.expected as f64)));
            rows.push((
                "lost".into(),
                format!(
                    "{} ({:.3} %)",
                    thousands(self.lost as f64),
                    100.0 * self.lost as f64 / t.expected as f64
                ),
            ));
            rows.push(("gap reports".into(), thousands(t.gaps as f64)));
        }
        if self.wire_bytes_per_event > 0.0 {
            rows.push((
                "wire bytes/event".into(),
                format!("{:.0}", self.wire_bytes_per_event),
            ));
        }
        if let Some(l) = &self.latency {
            rows.push((
                "latency µs".into(),
                format!(
                    "p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  ({} samples)",
                    l.p50_us,
                    l.p90_us,
                    l.p99_us,
                    l.p999_us,
                    l.max_us,
                    thousands(l.samples as f64)
                ),
            ));
        }
        for (who, p) in [("server", &self.server), ("load tester", &self.client)] {
            if let Some(p) = p {
                rows.push((
                    format!("{who} (pid {})", p.pid),
                    format!(
                        "CPU {:.0} % of a core ({:.1} s), RSS {:.1} → peak {:.1} MiB",
                        p.cpu_pct,
                        p.cpu_s,
                        p.rss_start_kib as f64 / 1024.0,
                        p.rss_peak_kib as f64 / 1024.0
                    ),
                ));
            }
        }
        for (k, v) in &self.extra {
            rows.push((k.clone(), v.clone()));
        }
        if t.errors > 0 {
            rows.push(("errors".into(), thousands(t.errors as f64)));
        }
        for e in &self.errors {
            rows.push(("  error".into(), e.clone()));
        }
        rows
    }

    /// The human table.
    pub(crate) fn table(&self) -> String {
        let rows = self.rows();
        let w = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<w$}  {v}");
        }
        out
    }

    /// A self-contained HTML page: the table and three inline SVG charts.
    pub(crate) fn html(&self) -> String {
        let (sent_label, delivered_label) = self.labels();
        let pts = |f: &dyn Fn(&Tick) -> f64| -> Vec<(f64, f64)> {
            self.timeline.iter().map(|t| (t.t_s, f(t))).collect()
        };
        let mut series = vec![Series {
            name: format!("{sent_label}/s"),
            color: "#1f77b4",
            points: pts(&|t| t.delta.sent as f64),
        }];
        if self.totals.acked > 0 {
            series.push(Series {
                name: "acked/s".into(),
                color: "#2ca02c",
                points: pts(&|t| t.delta.acked as f64),
            });
        }
        if self.totals.delivered > 0 {
            series.push(Series {
                name: format!("{delivered_label}/s"),
                color: "#d62728",
                points: pts(&|t| t.delta.delivered as f64),
            });
        }
        let throughput = svg_chart(
            "Throughput over time",
            "seconds",
            "per second",
            &series,
            false,
        );
        let latency = match &self.latency {
            Some(l) => svg_chart(
                "Latency distribution",
                "percentile (log scale of 1/(1-p): 90, 99, 99.9 …)",
                "µs",
                &[Series {
                    name: "latency µs".into(),
                    color: "#9467bd",
                    points: l.curve.iter().map(|&(p, v)| (nines(p), v)).collect(),
                }],
                true,
            ),
            None => "<p>No latency samples in this scenario.</p>".into(),
        };
        let drops = svg_chart(
            "Drops",
            "seconds",
            "count",
            &[
                Series {
                    name: "gap reports/s".into(),
                    color: "#ff7f0e",
                    points: pts(&|t| t.delta.gaps as f64),
                },
                Series {
                    name: "expected but not yet delivered".into(),
                    color: "#8c564b",
                    points: pts(&|t| t.deficit as f64),
                },
                Series {
                    name: "errors/s".into(),
                    color: "#7f7f7f",
                    points: pts(&|t| t.delta.errors as f64),
                },
            ],
            false,
        );
        let cpu = svg_chart(
            "CPU",
            "seconds",
            "% of one core",
            &[
                Series {
                    name: "broker".into(),
                    color: "#17becf",
                    points: pts(&|t| t.server_cpu_pct.unwrap_or(0.0)),
                },
                Series {
                    name: "load tester".into(),
                    color: "#bcbd22",
                    points: pts(&|t| t.client_cpu_pct.unwrap_or(0.0)),
                },
            ],
            false,
        );
        let mut table = String::from("<table>");
        for (k, v) in self.rows() {
            let _ = write!(table, "<tr><th>{}</th><td>{}</td></tr>", esc(&k), esc(&v));
        }
        table.push_str("</table>");
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>SenseGate load test: {title}</title>\
             <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}\
             th{{text-align:left;padding:2px 12px 2px 0;font-weight:600}}td{{font-family:monospace}}\
             svg{{margin:1em 0;background:#fafafa;border:1px solid #ddd}}</style></head><body>\
             <h1>{title}</h1>{table}{throughput}{latency}{drops}{cpu}</body></html>\n",
            title = esc(&format!("{} → {}", self.scenario, self.target)),
        )
    }

    /// Writes the HTML page to `path`.
    pub(crate) fn write_html(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.html()).with_context(|| format!("writing {}", path.display()))
    }
}

/// Maps a percentile to "nines": 90 → 1, 99 → 2, 99.9 → 3; 100 sits half a
/// step past the last finite point.
fn nines(p: f64) -> f64 {
    if p >= 100.0 {
        6.0
    } else {
        -(1.0 - p / 100.0).log10()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Series {
    name: String,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

/// An inline SVG line chart with axes, ticks and a legend.
fn svg_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    nines_axis: bool,
) -> String {
    let (w, h, l, r, t, b) = (860.0, 320.0, 80.0, 20.0, 40.0, 50.0);
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(0.0f64, f64::max).max(1.0);
    let x_min = all
        .clone()
        .map(|p| p.0)
        .fold(f64::INFINITY, f64::min)
        .min(x_max - 1.0)
        .min(0.0);
    let y_max = all.map(|p| p.1).fold(0.0f64, f64::max).max(1.0) * 1.05;
    let sx = |x: f64| l + (x - x_min) / (x_max - x_min) * (w - l - r);
    let sy = |y: f64| h - b - y / y_max * (h - t - b);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-size=\"12\">\
         <text x=\"{l}\" y=\"22\" font-size=\"15\" font-weight=\"600\">{}</text>\
         <line x1=\"{l}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#444\"/>\
         <line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{y0}\" stroke=\"#444\"/>\
         <text x=\"{xm}\" y=\"{xl}\" text-anchor=\"middle\">{}</text>\
         <text x=\"14\" y=\"{ym}\" transform=\"rotate(-90 14 {ym})\" text-anchor=\"middle\">{}</text>",
        esc(title),
        esc(x_label),
        esc(y_label),
        y0 = h - b,
        x1 = w - r,
        xm = (l + w - r) / 2.0,
        xl = h - 12.0,
        ym = (t + h - b) / 2.0,
    );
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<line x1=\"{l}\" y1=\"{py}\" x2=\"{x1}\" y2=\"{py}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{}</text>",
            short(y),
            py = sy(y),
            x1 = w - r,
            tx = l - 6.0,
            ty = sy(y) + 4.0,
        );
    }
    let x_ticks: Vec<(f64, String)> = if nines_axis {
        [
            (0.0, "0"),
            (1.0, "90"),
            (2.0, "99"),
            (3.0, "99.9"),
            (4.0, "99.99"),
            (5.0, "99.999"),
            (6.0, "max"),
        ]
        .iter()
        .filter(|(x, _)| *x <= x_max)
        .map(|(x, s)| (*x, (*s).to_owned()))
        .collect()
    } else {
        let step = (x_max / 10.0).ceil().max(1.0);
        (0..=((x_max / step) as i64))
            .map(|i| (i as f64 * step, short(i as f64 * step)))
            .collect()
    };
    for (x, label) in x_ticks {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            sx(x),
            h - b + 16.0,
            esc(&label)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\
             <rect x=\"{lx}\" y=\"{ly}\" width=\"10\" height=\"10\" fill=\"{c}\"/>\
             <text x=\"{tx}\" y=\"{ty}\">{}</text>",
            path.join(" "),
            esc(&s.name),
            c = s.color,
            lx = w - r - 260.0,
            ly = t + 4.0 + 16.0 * i as f64,
            tx = w - r - 245.0,
            ty = t + 13.0 + 16.0 * i as f64,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// `1234567` → `1.2M`.
fn short(v: f64) -> String {
    match v.abs() {
        a if a >= 1e6 => format!("{:.1}M", v / 1e6),
        a if a >= 1e3 => format!("{:.1}k", v / 1e3),
        a if a >= 10.0 || a == 0.0 => format!("{v:.0}"),
        _ => format!("{v:.1}"),
    }
}

/// The Markdown comparison of fan-out reports: one row per workload shape,
/// one column per target, SenseGate's ratio to each peer.
pub(crate) fn compare(paths: &[PathBuf]) -> Result<String> {
    let mut reports = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let r: Report =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        reports.push(r);
    }
    Ok(compare_reports(&reports))
}

fn compare_reports(reports: &[Report]) -> String {
    let mut targets: Vec<&str> = Vec::new();
    let mut shapes: Vec<String> = Vec::new();
    for r in reports {
        if !targets.contains(&r.target.as_str()) {
            targets.push(&r.target);
        }
        let label = r
            .shape
            .as_ref()
            .map(Shape::label)
            .unwrap_or_else(|| r.scenario.clone());
        if !shapes.contains(&label) {
            shapes.push(label);
        }
    }
    let find = |shape: &str, target: &str| {
        reports.iter().find(|r| {
            r.target == target
                && r.shape
                    .as_ref()
                    .map(Shape::label)
                    .unwrap_or_else(|| r.scenario.clone())
                    == shape
        })
    };
    let peers: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| *t != "sensegate")
        .collect();
    let mut out = String::from(
        "Deliveries per second (every subscriber receives every event):\n\n| workload |",
    );
    for t in &targets {
        let _ = write!(out, " {t} |");
    }
    for p in &peers {
        let _ = write!(out, " sensegate / {p} |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(targets.len() + peers.len()));
    out.push('\n');
    for s in &shapes {
        let _ = write!(out, "| {s} |");
        for t in &targets {
            let cell = find(s, t)
                .map(|r| thousands(r.delivered_per_s))
                .unwrap_or_else(|| "–".into());
            let _ = write!(out, " {cell} |");
        }
        let sg = find(s, "sensegate").map(|r| r.delivered_per_s);
        for p in &peers {
            let cell = match (sg, find(s, p).map(|r| r.delivered_per_s)) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "–".into(),
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    out.push_str(
        "\nDetails (latency is publish → subscriber receive, sampled; lost = expected − delivered after a drain; \
         CPU is the broker's, % of one core):\n\n\
         | workload | target | delivered/s | p50 µs | p99 µs | p99.9 µs | lost | broker CPU % | broker peak RSS MiB | load tester CPU % |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in &shapes {
        for t in &targets {
            let Some(r) = find(s, t) else { continue };
            let lat = |f: fn(&Latency) -> f64| {
                r.latency
                    .as_ref()
                    .map(|l| format!("{:.0}", f(l)))
                    .unwrap_or_else(|| "–".into())
            };
            let _ = writeln!(
                out,
                "| {s} | {t} | {} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(r.delivered_per_s),
                lat(|l| l.p50_us),
                lat(|l| l.p99_us),
                lat(|l| l.p999_us),
                thousands(r.lost as f64),
                r.server
                    .as_ref()
                    .map(|p| format!("{:.0}", p.cpu_pct))
                    .unwrap_or_else(|| "–".into()),
                r.server
                    .as_ref()
                    .map(|p| format!("{:.1}", p.rss_peak_kib as f64 / 1024.0))
                    .unwrap_or_else(|| "–".into()),
                r.client
                    .as_ref()
                    .map(|p| format!("{:.0}", p.cpu_pct))
                    .unwrap_or_else(|| "–".into()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(target: &str, subs: usize, delivered_per_s: f64) -> Report {
        Report {
            scenario: if target == "sensegate" {
                "e2e"
            } else {
                "baseline"
            }
            .into(),
            target: target.into(),
            address: "127.0.0.1:1".into(),
            started_at: "2026-12-03T17:00:00Z".into(),
            duration_s: 10.0,
            shape: Some(Shape {
                publishers: 1,
                subscribers: subs,
                payload_bytes: 200,
                batch: 32,
                rate: None,
                window: 512,
            }),
            settings: vec![],
            totals: Snapshot {
                sent: 100,
                expected: 100 * subs as u64,
                delivered: 100 * subs as u64 - 3,
                gaps: 1,
                ..Snapshot::default()
            },
            sent_per_s: 10.0,
            acked_per_s: 0.0,
            delivered_per_s,
            lost: 3,
            wire_bytes_per_event: 250.0,
            latency: None,
            server: None,
            client: None,
            extra: vec![],
            errors: vec!["<boom>".into()],
            timeline: vec![Tick {
                t_s: 1.0,
                delta: Snapshot {
                    sent: 10,
                    delivered: 1000,
                    ..Snapshot::default()
                },
                deficit: 5,
                server_cpu_pct: Some(50.0),
                client_cpu_pct: None,
            }],
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.8), "1,234,568");
        assert_eq!(thousands(-1000.0), "-1,000");
    }

    #[test]
    fn nines_axis() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), 6.0);
    }

    #[test]
    fn compare_table_has_ratios() {
        let reports = vec![
            sample("sensegate", 100, 2_000_000.0),
            sample("mosquitto", 100, 400_000.0),
            sample("nats", 100, 4_000_000.0),
            sample("sensegate", 1000, 1_000_000.0),
            sample("nats", 1000, 0.0),
        ];
        let md = compare_reports(&reports);
        assert!(
            md.contains(
                "| sensegate | mosquitto | nats | sensegate / mosquitto | sensegate / nats |"
            ),
            "{md}"
        );
        assert!(md.contains("| 1 pub → 100 sub, 200 B, max rate | 2,000,000 | 400,000 | 4,000,000 | 5.00× | 0.50× |"), "{md}");
        assert!(
            md.contains("| 1 pub → 1000 sub, 200 B, max rate | 1,000,000 | – | 0 | – | – |"),
            "{md}"
        );
    }

    #[test]
    fn json_round_trip_and_html_is_self_contained() {
        let r = sample("sensegate", 10, 1.0);
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let html = r.html();
        assert_eq!(
            html.matches("<svg").count(),
            3,
            "no latency chart without samples"
        );
        assert!(
            html.contains("Throughput over time") && html.contains("Drops") && html.contains("CPU")
        );
        let mut with_latency = r.clone();
        let mut h = crate::stats::new_histogram();
        crate::stats::record(&mut h, 250_000);
        with_latency.latency = Latency::from_histogram(&h);
        assert_eq!(with_latency.html().matches("<svg").count(), 4);
        assert!(
            !html.contains("<script src") && !html.contains("<link"),
            "no external assets"
        );
        assert!(html.contains("&lt;boom&gt;"), "escaped");
        assert!(r.table().contains("lost"));
    }
}
