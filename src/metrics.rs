//! Counters shared by every worker, and their Prometheus text exposition (`GET /metrics`).
//!
//! Plain atomics: a request touches two or three of them, never a lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{OnceLock, Weak};
use std::time::Duration;

/// The routes requests are counted under; anything else is `other`.
pub const ROUTES: &[&str] = &[
    "/",
    "/users",
    "/sessions",
    "/profile",
    "/reset_password",
    "/health",
    "/metrics",
    "other",
];

/// Statuses the service answers with; anything else is counted under the last slot.
const STATUSES: &[u16] = &[200, 302, 400, 401, 403, 404, 405, 413, 429, 500, 503];

/// Upper bounds, in seconds, of the bcrypt histogram's buckets: cost 4 to cost 14 or so.
const BCRYPT_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    Ok,
    Failed,
    Throttled,
}

/// What the HTTP server reports of its connections, read at each scrape.
pub trait Connections: Send + Sync {
    /// Connections open now.
    fn open(&self) -> usize;
    /// Connections closed as soon as they were accepted (over the limit, or no thread or
    /// descriptor left), since start.
    fn refused(&self) -> u64;
    /// Requests from the first byte of their head until their answer is out.
    fn requests_in_progress(&self) -> usize;
}

#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len() + 1]; ROUTES.len()],
    connections: OnceLock<Weak<dyn Connections>>,
    logins: [AtomicU64; 3],
    registrations: AtomicU64,
    resets_requested: AtomicU64,
    resets_completed: AtomicU64,
    /// Reset tokens handed to the reset command: [sent, failed].
    reset_deliveries: [AtomicU64; 2],
    bcrypt_buckets: [AtomicU64; BCRYPT_BUCKETS.len()],
    bcrypt_count: AtomicU64,
    bcrypt_micros: AtomicU64,
}

impl Metrics {
    /// Where the connection gauges come from (the server, once it listens).
    pub fn watch_connections(&self, connections: Weak<dyn Connections>) {
        let _ = self.connections.set(connections);
    }

    pub fn request_finished(&self, path: &str, status: u16) {
        let route = ROUTES
            .iter()
            .position(|r| *r == path)
            .unwrap_or(ROUTES.len() - 1);
        let status = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        self.requests[route][status].fetch_add(1, Relaxed);
    }

    pub fn login(&self, outcome: LoginOutcome) {
        self.logins[outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn registration(&self) {
        self.registrations.fetch_add(1, Relaxed);
    }

    pub fn reset_requested(&self) {
        self.resets_requested.fetch_add(1, Relaxed);
    }

    pub fn reset_completed(&self) {
        self.resets_completed.fetch_add(1, Relaxed);
    }

    /// Counts one run of the reset command, by whether it succeeded.
    pub fn reset_delivered(&self, ok: bool) {
        self.reset_deliveries[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    /// Records one bcrypt verification (a login's, real or against the dummy hash).
    pub fn bcrypt_verified(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bucket, le) in self.bcrypt_buckets.iter().zip(BCRYPT_BUCKETS) {
            if secs <= *le {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.bcrypt_count.fetch_add(1, Relaxed);
        self.bcrypt_micros
            .fetch_add(took.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// How many bcrypt verifications have run since start.
    pub fn bcrypt_verifications(&self) -> u64 {
        self.bcrypt_count.load(Relaxed)
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP auth_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE auth_requests_total counter\n");
        for (route, row) in ROUTES.iter().zip(&self.requests) {
            for (i, n) in row.iter().enumerate() {
                let n = n.load(Relaxed);
                if n == 0 {
                    continue;
                }
                let status = STATUSES.get(i).map_or("other".to_owned(), u16::to_string);
                let _ = writeln!(
                    out,
                    "auth_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let connections = self.connections.get().and_then(Weak::upgrade);
        let (in_flight, open, refused) = connections.map_or((0, 0, 0), |c| {
            (c.requests_in_progress(), c.open(), c.refused())
        });
        out.push_str(
            "# HELP auth_requests_in_flight Requests from their first byte until answered.\n",
        );
        out.push_str("# TYPE auth_requests_in_flight gauge\n");
        let _ = writeln!(out, "auth_requests_in_flight {in_flight}");
        out.push_str("# HELP auth_connections_open Client connections open now.\n");
        out.push_str("# TYPE auth_connections_open gauge\n");
        let _ = writeln!(out, "auth_connections_open {open}");
        out.push_str(
            "# HELP auth_connections_refused_total Connections closed as soon as accepted: \
             over --max-connections, or no thread or descriptor left.\n",
        );
        out.push_str("# TYPE auth_connections_refused_total counter\n");
        let _ = writeln!(out, "auth_connections_refused_total {refused}");
        out.push_str("# HELP auth_logins_total Login attempts, by outcome.\n");
        out.push_str("# TYPE auth_logins_total counter\n");
        for (name, n) in ["ok", "failed", "throttled"].iter().zip(&self.logins) {
            let _ = writeln!(
                out,
                "auth_logins_total{{outcome=\"{name}\"}} {}",
                n.load(Relaxed)
            );
        }
        out.push_str("# HELP auth_registrations_total Users registered.\n");
        out.push_str("# TYPE auth_registrations_total counter\n");
        let _ = writeln!(
            out,
            "auth_registrations_total {}",
            self.registrations.load(Relaxed)
        );
        out.push_str("# HELP auth_password_resets_total Password resets, by stage.\n");
        out.push_str("# TYPE auth_password_resets_total counter\n");
        let _ = writeln!(
            out,
            "auth_password_resets_total{{stage=\"requested\"}} {}",
            self.resets_requested.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "auth_password_resets_total{{stage=\"completed\"}} {}",
            self.resets_completed.load(Relaxed)
        );
        out.push_str("# HELP auth_reset_deliveries_total Runs of the reset command, by outcome.\n");
        out.push_str("# TYPE auth_reset_deliveries_total counter\n");
        for (outcome, n) in ["sent", "failed"].iter().zip(&self.reset_deliveries) {
            let _ = writeln!(
                out,
                "auth_reset_deliveries_total{{outcome=\"{outcome}\"}} {}",
                n.load(Relaxed)
            );
        }
        out.push_str("# HELP auth_bcrypt_verify_seconds Time of one bcrypt verification.\n");
        out.push_str("# TYPE auth_bcrypt_verify_seconds histogram\n");
        for (le, n) in BCRYPT_BUCKETS.iter().zip(&self.bcrypt_buckets) {
            let _ = writeln!(
                out,
                "auth_bcrypt_verify_seconds_bucket{{le=\"{le}\"}} {}",
                n.load(Relaxed)
            );
        }
        // Read after the buckets, so +Inf is never below a bucket that a racing
        // verification has already incremented.
        let count = self.bcrypt_count.load(Relaxed);
        let _ = writeln!(
            out,
            "auth_bcrypt_verify_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "auth_bcrypt_verify_seconds_sum {}",
            self.bcrypt_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "auth_bcrypt_verify_seconds_count {count}");
        out
    }
}
