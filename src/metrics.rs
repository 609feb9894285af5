//! Counters shared by every worker, and their Prometheus text exposition (`GET /metrics`).
//!
//! Plain atomics: a request touches two or three of them, never a lock.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{OnceLock, Weak};
use std::time::Duration;

/// The routes requests are counted under (`app::route`'s names); anything else is `other`.
pub const ROUTES: &[&str] = &[
    "/",
    "/users",
    "/sessions",
    "/sessions/{id}",
    "/profile",
    "/password",
    "/reset_password",
    "/health",
    "/metrics",
    "other",
];

/// Statuses the service answers with; anything else is counted under the last slot.
const STATUSES: &[u16] = &[200, 302, 400, 401, 403, 404, 405, 408, 413, 429, 500, 503];

/// Upper bounds, in seconds, of the bcrypt histogram's buckets: cost 4 to cost 14 or so.
const BCRYPT_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// How sessions end, besides expiring unused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// `DELETE /sessions` with the session's own cookie.
    Logout,
    /// Ended by its user from another session (`DELETE /sessions/<id>`, `?scope=`).
    Revoked,
    /// The least recently used, past `--max-sessions`.
    Evicted,
    /// Found expired (absolute lifetime or idle time) and deleted.
    Expired,
}

/// Which abuse limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Registration,
    Reset,
}

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
    sessions_ended: [AtomicU64; 4],
    rate_limited: [AtomicU64; 2],
    password_changes: AtomicU64,
    /// Session lookups answered by the cache: [hit, miss].
    session_cache: [AtomicU64; 2],
    users_deleted: AtomicU64,
    rehashes: AtomicU64,
    bcrypt_buckets: [AtomicU64; BCRYPT_BUCKETS.len()],
    bcrypt_count: AtomicU64,
    bcrypt_micros: AtomicU64,
}

impl Metrics {
    /// Where the connection gauges come from (the server, once it listens).
    pub fn watch_connections(&self, connections: Weak<dyn Connections>) {
        let _ = self.connections.set(connections);
    }

    /// Counts an answer to a request of `route` (one of [`ROUTES`]).
    pub fn request_finished(&self, route: &str, status: u16) {
        let route = ROUTES
            .iter()
            .position(|r| *r == route)
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

    pub fn session_ended(&self, how: SessionEnd, n: usize) {
        self.sessions_ended[how as usize].fetch_add(n as u64, Relaxed);
    }

    pub fn rate_limited(&self, limit: Limit) {
        self.rate_limited[limit as usize].fetch_add(1, Relaxed);
    }

    /// Counts a session lookup, by whether the cache answered it.
    pub fn session_cache(&self, hit: bool) {
        self.session_cache[usize::from(!hit)].fetch_add(1, Relaxed);
    }

    pub fn password_changed(&self) {
        self.password_changes.fetch_add(1, Relaxed);
    }

    pub fn user_deleted(&self) {
        self.users_deleted.fetch_add(1, Relaxed);
    }

    /// A stored hash of another cost replaced by one at the configured cost.
    pub fn rehashed(&self) {
        self.rehashes.fetch_add(1, Relaxed);
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
        let mut out = Exposition(String::with_capacity(4096));
        out.family(
            "auth_requests_total",
            "counter",
            "HTTP requests answered, by route and status.",
        );
        for (route, row) in ROUTES.iter().zip(&self.requests) {
            for (i, n) in row.iter().enumerate() {
                let n = n.load(Relaxed);
                if n > 0 {
                    let status = STATUSES.get(i).map_or("other".to_owned(), u16::to_string);
                    let labels = format!("route=\"{route}\",status=\"{status}\"");
                    out.sample("auth_requests_total", &labels, n);
                }
            }
        }
        let connections = self.connections.get().and_then(Weak::upgrade);
        let (in_flight, open, refused) = connections.map_or((0, 0, 0), |c| {
            (c.requests_in_progress(), c.open(), c.refused())
        });
        out.single(
            "auth_requests_in_flight",
            "gauge",
            "Requests from their first byte until answered.",
            in_flight,
        );
        out.single(
            "auth_connections_open",
            "gauge",
            "Client connections open now.",
            open,
        );
        out.single(
            "auth_connections_refused_total",
            "counter",
            "Connections closed as soon as accepted: over --max-connections, or no thread or \
             descriptor left.",
            refused,
        );
        out.by_label(
            "auth_logins_total",
            "Login attempts, by outcome.",
            "outcome",
            ["ok", "failed", "throttled"].into_iter().zip(&self.logins),
        );
        out.single(
            "auth_registrations_total",
            "counter",
            "Users registered.",
            self.registrations.load(Relaxed),
        );
        out.by_label(
            "auth_password_resets_total",
            "Password resets, by stage.",
            "stage",
            [
                ("requested", &self.resets_requested),
                ("completed", &self.resets_completed),
            ],
        );
        out.by_label(
            "auth_reset_deliveries_total",
            "Runs of the reset command, by outcome.",
            "outcome",
            ["sent", "failed"].into_iter().zip(&self.reset_deliveries),
        );
        out.by_label(
            "auth_sessions_ended_total",
            "Sessions ended, by how (expired ones when found so).",
            "how",
            ["logout", "revoked", "evicted", "expired"]
                .into_iter()
                .zip(&self.sessions_ended),
        );
        out.by_label(
            "auth_rate_limited_total",
            "Requests refused by an abuse limit (429), by limit.",
            "limit",
            ["registration", "reset"]
                .into_iter()
                .zip(&self.rate_limited),
        );
        out.by_label(
            "auth_session_cache_total",
            "Session lookups, by whether the cache of live sessions answered (SQLite only).",
            "result",
            ["hit", "miss"].into_iter().zip(&self.session_cache),
        );
        out.single(
            "auth_password_changes_total",
            "counter",
            "Passwords changed by their users (PUT /password).",
            self.password_changes.load(Relaxed),
        );
        out.single(
            "auth_users_deleted_total",
            "counter",
            "Accounts deleted.",
            self.users_deleted.load(Relaxed),
        );
        out.single(
            "auth_rehashes_total",
            "counter",
            "Stored hashes of another cost re-hashed at --bcrypt-cost at login.",
            self.rehashes.load(Relaxed),
        );
        let name = "auth_bcrypt_verify_seconds";
        out.family(name, "histogram", "Time of one bcrypt verification.");
        for (le, n) in BCRYPT_BUCKETS.iter().zip(&self.bcrypt_buckets) {
            out.sample(
                &format!("{name}_bucket"),
                &format!("le=\"{le}\""),
                n.load(Relaxed),
            );
        }
        // Read after the buckets, so +Inf is never below a bucket that a racing
        // verification has already incremented.
        let count = self.bcrypt_count.load(Relaxed);
        out.sample(&format!("{name}_bucket"), "le=\"+Inf\"", count);
        let sum = self.bcrypt_micros.load(Relaxed) as f64 / 1e6;
        out.sample(&format!("{name}_sum"), "", sum);
        out.sample(&format!("{name}_count"), "", count);
        out.0
    }
}

/// The text exposition being written: families (`# HELP`, `# TYPE`) and their samples.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; `labels` as they go between the braces, or empty for none.
    fn sample(&mut self, name: &str, labels: &str, value: impl fmt::Display) {
        let _ = match labels {
            "" => writeln!(self.0, "{name} {value}"),
            labels => writeln!(self.0, "{name}{{{labels}}} {value}"),
        };
    }

    /// A family of one sample without labels.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }

    /// A counter with one sample per value of `label`.
    fn by_label<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (&'a str, &'a AtomicU64)>,
    ) {
        self.family(name, "counter", help);
        for (value, n) in samples {
            self.sample(name, &format!("{label}=\"{value}\""), n.load(Relaxed));
        }
    }
}
