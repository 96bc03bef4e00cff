//! The admin's Prometheus metrics: tokens, API requests, applications.
//!
//! Registered on demand ([`Admin::register_metrics`]) into the registry the
//! process serves at `/metrics`. Every label set is bounded: token refusals
//! by OAuth2 error code, API requests by method, route template and status,
//! applications by status.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use sensegate_broker::access::Snapshot;

use crate::{Admin, AdminError};

/// How often the application gauges are recomputed without any change
/// (applications expire on their own).
const REFRESH: Duration = Duration::from_secs(30);

/// An application "expires soon" within this many milliseconds.
const SOON_MS: i64 = 7 * 86_400_000;

/// Handles to the admin's metrics.
pub(crate) struct AdminMetrics {
    tokens_issued: IntCounter,
    tokens_refused: IntCounterVec,
    api_requests: IntCounterVec,
    applications: IntGaugeVec,
    expiring_soon: IntGauge,
}

impl AdminMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = AdminMetrics {
            tokens_issued: IntCounter::new(
                "sensegate_tokens_issued_total",
                "Access tokens issued at /connect/token",
            )?,
            tokens_refused: IntCounterVec::new(
                Opts::new(
                    "sensegate_tokens_refused_total",
                    "Token requests refused, by OAuth2 error (throttled = 429)",
                ),
                &["reason"],
            )?,
            api_requests: IntCounterVec::new(
                Opts::new(
                    "sensegate_admin_requests_total",
                    "Admin API and token endpoint requests by method, route template and status",
                ),
                &["method", "route", "status"],
            )?,
            applications: IntGaugeVec::new(
                Opts::new(
                    "sensegate_applications",
                    "External applications by status (enabled, disabled, expired)",
                ),
                &["status"],
            )?,
            expiring_soon: IntGauge::new(
                "sensegate_applications_expiring_soon",
                "Enabled applications expiring within 7 days",
            )?,
        };
        for reason in [
            "invalid_request",
            "invalid_client",
            "unsupported_grant_type",
            "throttled",
            "server_error",
        ] {
            m.tokens_refused.with_label_values(&[reason]);
        }
        registry.register(Box::new(m.tokens_issued.clone()))?;
        registry.register(Box::new(m.tokens_refused.clone()))?;
        registry.register(Box::new(m.api_requests.clone()))?;
        registry.register(Box::new(m.applications.clone()))?;
        registry.register(Box::new(m.expiring_soon.clone()))?;
        Ok(m)
    }

    pub(crate) fn token_issued(&self) {
        self.tokens_issued.inc();
    }

    pub(crate) fn token_refused(&self, reason: &'static str) {
        self.tokens_refused.with_label_values(&[reason]).inc();
    }

    /// Recomputes the application gauges from a snapshot.
    pub(crate) fn observe(&self, s: &Snapshot, now_ms: i64) {
        let (mut enabled, mut disabled, mut expired, mut soon) = (0, 0, 0, 0);
        for a in &s.applications {
            if now_ms >= a.expires_at_ms {
                expired += 1;
            } else if !a.enabled {
                disabled += 1;
            } else {
                enabled += 1;
                if a.expires_at_ms - now_ms <= SOON_MS {
                    soon += 1;
                }
            }
        }
        for (status, n) in [
            ("enabled", enabled),
            ("disabled", disabled),
            ("expired", expired),
        ] {
            self.applications.with_label_values(&[status]).set(n);
        }
        self.expiring_soon.set(soon);
    }
}

impl Admin {
    /// Registers the admin's metrics into `registry` (once) and keeps the
    /// application gauges fresh in the background.
    pub async fn register_metrics(&self, registry: &Registry) -> Result<(), AdminError> {
        let m = AdminMetrics::new(registry).map_err(|e| AdminError::Config(e.to_string()))?;
        m.observe(&self.snapshot().await?, crate::now_ms());
        if self.inner.metrics.set(m).is_err() {
            return Err(AdminError::Config("metrics already registered".into()));
        }
        let admin = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            loop {
                tick.tick().await;
                if let (Ok(s), Some(m)) = (admin.snapshot().await, admin.inner.metrics.get()) {
                    m.observe(&s, crate::now_ms());
                }
            }
        });
        Ok(())
    }

    pub(crate) fn metrics(&self) -> Option<&AdminMetrics> {
        self.inner.metrics.get()
    }
}

/// Middleware counting every request by method, route template and status.
pub(crate) async fn track(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let res = next.run(req).await;
    if let Some(m) = admin.metrics() {
        let method = match method.as_str() {
            "GET" | "POST" | "PATCH" | "PUT" | "DELETE" | "OPTIONS" | "HEAD" => method,
            _ => "other".to_owned(),
        };
        m.api_requests
            .with_label_values(&[&method, &route, res.status().as_str()])
            .inc();
    }
    res
}
