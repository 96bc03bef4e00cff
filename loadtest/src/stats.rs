//! Counters shared by the workers, latency histograms, and process CPU and
//! memory read from `/proc`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Latencies are recorded in nanoseconds, 3 significant digits, 1 µs to 60 s.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("static histogram bounds")
}

/// Records `ns`, clamped into the histogram's range.
pub(crate) fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.clamp(1_000, 60_000_000_000));
}

/// Counters every worker adds to; the monitor reads them once a second.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Events (or requests) sent.
    pub(crate) sent: AtomicU64,
    /// Events the broker acknowledged (QUIC ingest only).
    pub(crate) acked: AtomicU64,
    /// Deliveries expected: each sent event times the subscribers it goes to.
    pub(crate) expected: AtomicU64,
    /// Events received by subscribers (or successful requests).
    pub(crate) delivered: AtomicU64,
    /// Loss reports received.
    pub(crate) gaps: AtomicU64,
    /// Bytes received by subscribers.
    pub(crate) bytes: AtomicU64,
    /// Failed operations.
    pub(crate) errors: AtomicU64,
    /// A publisher is waiting for deliveries to catch up.
    waiting: AtomicBool,
    /// Wakes that publisher.
    caught_up: Notify,
}

/// A copy of [`Counters`] at one instant.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) gaps: u64,
    pub(crate) bytes: u64,
    pub(crate) errors: u64,
}

impl Counters {
    /// Counts `n` deliveries and wakes a publisher waiting for them (one
    /// relaxed load per read when nobody waits).
    pub(crate) fn delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Relaxed);
        if self.waiting.load(Relaxed) && self.waiting.swap(false, Relaxed) {
            self.caught_up.notify_waiters();
        }
    }

    /// Deliveries expected but not yet made.
    pub(crate) fn in_flight(&self) -> u64 {
        self.expected
            .load(Relaxed)
            .saturating_sub(self.delivered.load(Relaxed))
    }

    /// Waits until at most `window` deliveries are in flight (or `limit`
    /// passes, whatever happens to the subscribers).
    pub(crate) async fn wait_in_flight(&self, window: u64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.in_flight() > window && tokio::time::Instant::now() < deadline {
            let woken = self.caught_up.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.waiting.store(true, Relaxed);
            // Deliveries may have landed between the check and `enable`.
            if self.in_flight() <= window {
                break;
            }
            // A reader that saw `waiting` before it was set would not wake
            // us: the 1 ms timeout bounds that race.
            let _ = tokio::time::timeout(Duration::from_millis(1), woken).await;
        }
    }

    /// Reads every counter.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            sent: self.sent.load(Relaxed),
            acked: self.acked.load(Relaxed),
            expected: self.expected.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            gaps: self.gaps.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

impl Snapshot {
    /// The change from `earlier` to `self`.
    pub(crate) fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            sent: self.sent - earlier.sent,
            acked: self.acked - earlier.acked,
            expected: self.expected - earlier.expected,
            delivered: self.delivered - earlier.delivered,
            gaps: self.gaps - earlier.gaps,
            bytes: self.bytes - earlier.bytes,
            errors: self.errors - earlier.errors,
        }
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Latency {
    pub(crate) samples: u64,
    pub(crate) mean_us: f64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
    /// (percentile, µs) points for the distribution chart.
    pub(crate) curve: Vec<(f64, f64)>,
}

impl Latency {
    /// Summarises `h`; `None` when it is empty.
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        // 0, 50, 75, 87.5, … percent: each step halves what is left, the
        // usual way to show a latency tail.
        let mut curve = Vec::new();
        let mut rest = 100.0f64;
        while rest > 0.0005 {
            let p = 100.0 - rest;
            curve.push((p, us(h.value_at_quantile(p / 100.0))));
            rest /= 2.0;
        }
        curve.push((100.0, us(h.max())));
        Some(Latency {
            samples: h.len(),
            mean_us: h.mean() / 1_000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            curve,
        })
    }
}

/// CPU time and memory of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProcSample {
    /// User plus system time, in clock ticks.
    pub(crate) cpu_ticks: u64,
    /// Resident set size now, KiB.
    pub(crate) rss_kib: u64,
    /// Peak resident set size since the process started, KiB.
    pub(crate) hwm_kib: u64,
}

/// Linux reports `/proc/<pid>/stat` times in USER_HZ, which is 100 on every
/// architecture Linux supports (it is part of the ABI, unlike CONFIG_HZ).
pub(crate) const TICKS_PER_SEC: f64 = 100.0;

/// Reads `/proc/<pid>` (`"self"` for this process).
pub(crate) fn read_proc(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_proc(&stat, &status)
}

fn parse_proc(stat: &str, status: &str) -> Option<ProcSample> {
    // Fields after the parenthesised command name, which may hold spaces:
    // state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(ProcSample {
        cpu_ticks: utime + stime,
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:").unwrap_or(0),
    })
}

/// A process's resource use over a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ProcReport {
    /// `self` or the pid.
    pub(crate) pid: String,
    /// CPU seconds used during the run.
    pub(crate) cpu_s: f64,
    /// Average CPU during the run, % of one core.
    pub(crate) cpu_pct: f64,
    /// RSS when the run started, KiB.
    pub(crate) rss_start_kib: u64,
    /// Highest RSS sampled during the run, KiB.
    pub(crate) rss_peak_kib: u64,
    /// The kernel's peak RSS since the process started, KiB.
    pub(crate) rss_hwm_kib: u64,
}

/// Tracks one process between the start and the end of a run.
#[derive(Debug, Clone)]
pub(crate) struct ProcWatch {
    pid: String,
    first: ProcSample,
    last: ProcSample,
    peak: u64,
}

impl ProcWatch {
    /// Starts watching `pid`; `None` if it cannot be read.
    pub(crate) fn start(pid: &str) -> Option<ProcWatch> {
        let s = read_proc(pid)?;
        Some(ProcWatch {
            pid: pid.to_owned(),
            first: s,
            last: s,
            peak: s.rss_kib,
        })
    }

    /// Samples again; returns the CPU % of one core since the last sample
    /// over `secs`.
    pub(crate) fn sample(&mut self, secs: f64) -> Option<f64> {
        let s = read_proc(&self.pid)?;
        let pct = (s.cpu_ticks - self.last.cpu_ticks) as f64 / TICKS_PER_SEC / secs * 100.0;
        self.peak = self.peak.max(s.rss_kib);
        self.last = s;
        Some(pct)
    }

    /// Resource use from the start to the last sample, over `secs`.
    pub(crate) fn report(&self, secs: f64) -> ProcReport {
        let cpu_s = (self.last.cpu_ticks - self.first.cpu_ticks) as f64 / TICKS_PER_SEC;
        ProcReport {
            pid: self.pid.clone(),
            cpu_s,
            cpu_pct: if secs > 0.0 {
                cpu_s / secs * 100.0
            } else {
                0.0
            },
            rss_start_kib: self.first.rss_kib,
            rss_peak_kib: self.peak,
            rss_hwm_kib: self.last.hwm_kib,
        }
    }

    /// RSS at the last sample, KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        self.last.rss_kib
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_a_known_distribution() {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            record(&mut h, i * 1_000);
        }
        let l = Latency::from_histogram(&h).unwrap();
        assert_eq!(l.samples, 1000);
        assert!((l.p50_us - 500.0).abs() <= 1.0, "{}", l.p50_us);
        assert!((l.p99_us - 990.0).abs() <= 1.0, "{}", l.p99_us);
        assert!((l.max_us - 1000.0).abs() <= 1.0);
        assert!(l
            .curve
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(l.curve.last().unwrap().0, 100.0);
        assert!(Latency::from_histogram(&new_histogram()).is_none());
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 1002, "out of range values are clamped, not lost");
    }

    #[test]
    fn proc_files_parse() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 200";
        let status = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\n";
        let s = parse_proc(stat, status).unwrap();
        assert_eq!(
            s,
            ProcSample {
                cpu_ticks: 300,
                rss_kib: 1024,
                hwm_kib: 2048
            }
        );
        assert!(parse_proc("garbage", status).is_none());
        let me = read_proc("self").unwrap();
        assert!(me.rss_kib > 0);
    }

    #[test]
    fn snapshot_deltas() {
        let c = Counters::default();
        c.sent.fetch_add(5, Relaxed);
        let a = c.snapshot();
        c.sent.fetch_add(7, Relaxed);
        c.delivered(3);
        let d = c.snapshot().since(&a);
        assert_eq!((d.sent, d.delivered), (7, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn publishers_wait_for_the_window() {
        let c = std::sync::Arc::new(Counters::default());
        c.expected.fetch_add(100, Relaxed);
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.wait_in_flight(10, Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c.delivered(95);
        waiter.await.unwrap();
        assert_eq!(c.in_flight(), 5);
        // With nobody delivering, the limit ends the wait.
        c.expected.fetch_add(100, Relaxed);
        c.wait_in_flight(10, Duration::from_secs(1)).await;
    }
}
