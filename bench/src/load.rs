//! The load generator: closed-loop loads of prepared requests over keep-alive connections,
//! their latencies and statuses, and the CPU time the processes watched spent on them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::Conn;

const WARMUP: Duration = Duration::from_secs(1);

/// A closed-loop load: `connections` threads, each with one keep-alive connection, sending
/// `requests[i % len]` back to back (or every `pace`) for `warmup + measure`; only what is
/// sent after the warm-up counts.
pub struct Load {
    /// Connection `i` goes to `addrs[i % len]`: two instances share the load evenly.
    pub addrs: Vec<SocketAddr>,
    pub connections: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub requests: Vec<Vec<u8>>,
    pub pace: Option<Duration>,
    /// Wait a second after a 503, as its `Retry-After: 1` asks.
    pub backoff: bool,
    /// Processes whose CPU time over the measured window the result reports.
    pub cpu_of: Vec<(&'static str, Processes)>,
}

impl Load {
    pub fn new(
        addr: SocketAddr,
        connections: usize,
        measure: Duration,
        requests: Vec<Vec<u8>>,
    ) -> Load {
        Load {
            addrs: vec![addr],
            connections,
            warmup: WARMUP,
            measure,
            requests,
            pace: None,
            backoff: false,
            cpu_of: Vec::new(),
        }
    }
}

pub struct LoadResult {
    pub connections: usize,
    pub secs: f64,
    /// Every answer per second, whatever its status.
    pub rps: f64,
    /// 200s per second.
    pub ok_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: u64,
    /// CPU seconds each watched group of processes used in the measured window.
    pub cpu: Vec<(&'static str, f64)>,
}

impl LoadResult {
    /// Takes, for each watched group, `other`'s CPU per answer where it is less than this
    /// round's: of several rounds of one load, the least CPU any needed is its cost, what
    /// other processes and the scheduler add on a shared machine only ever raises it.
    pub fn keep_least_cpu(&mut self, other: &LoadResult) {
        let answers = self.rps * self.secs;
        for (name, secs) in &mut self.cpu {
            if let (Some(mine), Some(theirs)) = (
                (answers > 0.0).then(|| *secs / answers),
                other.cpu_us_per_answer(name).map(|us| us / 1e6),
            ) {
                *secs = answers * mine.min(theirs);
            }
        }
    }

    /// Microseconds of CPU the group `name` spent per answer.
    pub fn cpu_us_per_answer(&self, name: &str) -> Option<f64> {
        let answers = self.rps * self.secs;
        let (_, secs) = self.cpu.iter().find(|(n, _)| *n == name)?;
        (answers > 0.0).then(|| secs / answers * 1e6)
    }

    pub fn status_rps(&self, status: u16) -> f64 {
        self.statuses.get(&status).copied().unwrap_or(0) as f64 / self.secs
    }

    pub fn json(&self) -> Value {
        json!({
            "connections": self.connections, "secs": self.secs, "requests_per_s": self.rps,
            "ok_per_s": self.ok_rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "statuses": self.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "errors": self.errors,
            "cpu_us_per_answer": self.cpu.iter().map(|(n, _)| (n.to_string(), json!(self.cpu_us_per_answer(n)))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

pub fn load(spec: &Load) -> LoadResult {
    let start = Instant::now() + Duration::from_millis(50);
    let from = start + spec.warmup;
    let until = from + spec.measure;
    let (per_thread, cpu) = thread::scope(|s| {
        let cpu = s.spawn(|| {
            thread::sleep(from.saturating_duration_since(Instant::now()));
            let before: Vec<_> = spec.cpu_of.iter().map(|(_, p)| p.cpu_ticks()).collect();
            thread::sleep(until.saturating_duration_since(Instant::now()));
            spec.cpu_of
                .iter()
                .zip(before)
                .map(|((name, p), before)| (*name, cpu_seconds_between(&before, &p.cpu_ticks())))
                .collect::<Vec<_>>()
        });
        let handles: Vec<_> = (0..spec.connections)
            .map(|i| {
                let request = &spec.requests[i % spec.requests.len()];
                s.spawn(move || {
                    drive(
                        spec.addrs[i % spec.addrs.len()],
                        request,
                        (start, from, until),
                        spec.pace,
                        spec.backoff,
                    )
                })
            })
            .collect();
        let per_thread: Vec<(Vec<u64>, BTreeMap<u16, u64>, u64)> = handles
            .into_iter()
            .map(|h| h.join().expect("a load thread"))
            .collect();
        (per_thread, cpu.join().expect("the CPU sampler"))
    });
    let mut latencies = Vec::new();
    let mut statuses = BTreeMap::new();
    let mut errors = 0;
    for (l, s, e) in per_thread {
        latencies.extend(l);
        for (status, n) in s {
            *statuses.entry(status).or_insert(0) += n;
        }
        errors += e;
    }
    latencies.sort_unstable();
    let secs = spec.measure.as_secs_f64();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q).round() as usize)
            .map_or(f64::NAN, |ns| *ns as f64 / 1e6)
    };
    LoadResult {
        connections: spec.connections,
        secs,
        rps: latencies.len() as f64 / secs,
        ok_rps: statuses.get(&200).copied().unwrap_or(0) as f64 / secs,
        p50_ms: quantile(0.50),
        p99_ms: quantile(0.99),
        statuses,
        errors,
        cpu,
    }
}

/// "CPU per answer: server 45 µs, load generator 20 µs", from the processes a load watched.
pub fn cpu_note(r: &LoadResult) -> String {
    let parts: Vec<String> = r
        .cpu
        .iter()
        .filter_map(|(name, _)| {
            let us = r.cpu_us_per_answer(name)?;
            Some(if us >= 1000.0 {
                format!("{name} {:.1} ms", us / 1000.0)
            } else {
                format!("{name} {us:.0} µs")
            })
        })
        .collect();
    if parts.is_empty() {
        return String::new();
    }
    format!("CPU per answer: {}", parts.join(", "))
}

/// Processes to charge CPU time to.
pub enum Processes {
    /// These processes (the servers).
    Pids(Vec<u32>),
    /// A process and its children: a PostgreSQL server's postmaster and its backends.
    // Only the postgres section watches a server's tree.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Tree(u32),
    /// The benchmark itself: the load generator (with the threads that drain the servers'
    /// access logs, as a journal would).
    Myself,
}

impl Processes {
    /// CPU time (user + system) of each process, in clock ticks, read from `/proc`.
    fn cpu_ticks(&self) -> BTreeMap<u32, u64> {
        let pids = match self {
            Processes::Pids(pids) => pids.clone(),
            Processes::Myself => vec![std::process::id()],
            Processes::Tree(root) => {
                let mut pids = vec![*root];
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let pid = entry.file_name().to_str().and_then(|n| n.parse().ok());
                    if let Some(pid) = pid.filter(|&pid| stat(pid).is_some_and(|s| s.0 == *root)) {
                        pids.push(pid);
                    }
                }
                pids
            }
        };
        pids.into_iter()
            .filter_map(|pid| Some((pid, stat(pid)?.1)))
            .collect()
    }
}

/// A process's parent and its CPU time in clock ticks, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: the fields start after its end.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let parent = fields.get(1)?.parse().ok()?;
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((parent, user + system))
}

/// The CPU seconds spent between two readings (a process that appeared in between counts from
/// zero; one that ended is lost).
fn cpu_seconds_between(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> f64 {
    // /proc reports times in USER_HZ, which Linux fixes at 100 on x86 and ARM.
    const TICKS_PER_SECOND: f64 = 100.0;
    let ticks: u64 = after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks as f64 / TICKS_PER_SECOND
}

/// One connection's loop: latencies in nanoseconds and statuses of the responses received
/// within `[from, until)` (so a slow request sent before the warm-up ended, or one still
/// queued at the end, does not count), and the number of failed requests.
fn drive(
    addr: SocketAddr,
    request: &[u8],
    (start, from, until): (Instant, Instant, Instant),
    pace: Option<Duration>,
    backoff: bool,
) -> (Vec<u64>, BTreeMap<u16, u64>, u64) {
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut statuses = BTreeMap::new();
    let mut errors = 0;
    let mut conn = None;
    thread::sleep(start.saturating_duration_since(Instant::now()));
    let mut next = Instant::now();
    loop {
        if let Some(pace) = pace {
            thread::sleep(next.saturating_duration_since(Instant::now()));
            next += pace;
        }
        let sent = Instant::now();
        if sent >= until {
            break;
        }
        let c = match &mut conn {
            Some(c) => c,
            None => match Conn::connect(addr) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    errors += 1;
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        match c.status(request) {
            Ok(status) => {
                let received = Instant::now();
                if received >= from && received < until {
                    latencies.push((received - sent).as_nanos() as u64);
                    *statuses.entry(status).or_insert(0) += 1;
                }
                if status == 503 && backoff {
                    thread::sleep(Duration::from_secs(1));
                }
            }
            Err(_) => {
                errors += 1;
                conn = None;
            }
        }
    }
    (latencies, statuses, errors)
}
