//! The SQLite sections, 1 to 5 of the list in main.rs: request rates against the bare server,
//! the large database, logins against bcrypt, and memory; with the single figures they read.

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{self, Conn};
use crate::data::{log_in_users, login_requests, profile_requests, seed, user_indices};
use crate::load::{cpu_note, load, Load, LoadResult, Processes};
use crate::report::{thousands, Row};
use crate::server::Server;
use crate::{Fallible, Run, PASSWORD};

/// 1. `GET /` and `GET /profile` against the bare tiny_http server, in interleaved rounds.
pub fn requests(run: &mut Run) -> Fallible<()> {
    let o = run.o;
    let exe = std::env::current_exe()?;
    let workers = o.workers.to_string();
    let bare_server = Server::spawn(Command::new(&exe).args(["--bare-server", &workers]))?;
    let one_write_server =
        Server::spawn(Command::new(&exe).args(["--bare-server", &workers, "one-write"]))?;
    let service = run.service(&run.small_db()?, 10)?;
    let sessions = log_in_users(service.addr, &user_indices(10))?;
    let get = |server: &Server, requests| watched(server, run, requests);
    let root_request = || vec![client::get("/", None)];
    let loads = [
        ("bare tiny_http, GET /", get(&bare_server, root_request())),
        (
            "bare tiny_http writing once, GET /",
            get(&one_write_server, root_request()),
        ),
        ("auth-service, GET /", get(&service, root_request())),
        (
            "auth-service, GET /profile on 10 users",
            get(&service, profile_requests(&sessions)),
        ),
    ];
    let [bare, one_write, root, profile] = best_of(o.rounds, loads);

    run.rows.push(
        Row::load(
            format!("GET /  bare tiny_http, {} workers", o.workers),
            &bare,
        )
        .note(cpu_note(&bare)),
    );
    run.rows.push(
        Row::load(
            "GET /  bare tiny_http, one write per response".into(),
            &one_write,
        )
        .versus(one_write.rps / bare.rps, "÷ bare")
        .note("for reference: the fastest a tiny_http server answers".into())
        .note(cpu_note(&one_write)),
    );
    let ratio = root.rps / bare.rps;
    run.rows.push(
        Row::load("GET /".into(), &root)
            .ratio(ratio, "÷ bare", 0.95, true)
            .note(cpu_note(&root)),
    );
    run.report.insert(
        "get_root".into(),
        json!({ "bare": bare.json(), "bare_one_write": one_write.json(), "service": root.json(),
                "ratio": ratio, "ratio_to_one_write": root.rps / one_write.rps }),
    );
    let ratio = profile.rps / bare.rps;
    run.rows.push(
        Row::load("GET /profile, 10 users".into(), &profile)
            .ratio(ratio, "÷ bare", 0.90, true)
            .note(cpu_note(&profile)),
    );
    run.report.insert(
        "get_profile".into(),
        json!({ "bare": bare.json(), "service": profile.json(), "ratio": ratio,
                "ratio_to_one_write": profile.rps / one_write.rps }),
    );
    // The session check's own cost: what a `/profile` takes beyond a `GET /`, on the server.
    let server_cpu = |r: &LoadResult| r.cpu_us_per_answer("server");
    if let (Some(profile_us), Some(root_us)) = (server_cpu(&profile), server_cpu(&root)) {
        let ratio = profile_us / root_us;
        run.rows.push(
            Row::value(
                "server CPU per GET /profile".into(),
                format!("{profile_us:.1} µs"),
            )
            .ratio(ratio, "÷ GET /", 1.15, false)
            .note(format!("GET /: {root_us:.1} µs")),
        );
        run.report.insert(
            "server_cpu_profile_to_root".into(),
            json!({ "profile_us": profile_us, "root_us": root_us, "ratio": ratio }),
        );
    }
    Ok(())
}

/// A request load on `server` that reports its CPU and the load generator's per answer.
fn watched(server: &Server, run: &Run, requests: Vec<Vec<u8>>) -> Load {
    Load {
        cpu_of: vec![
            ("server", Processes::Pids(vec![server.pid()])),
            ("load generator", Processes::Myself),
        ],
        ..Load::new(server.addr, run.o.connections, run.measure(), requests)
    }
}

/// Runs the loads one after the other, `rounds` times over, and keeps each one's best round
/// (the highest rate) with the least CPU per answer any of its rounds needed: another process
/// taking the CPU for a while can only lower a rate and raise a cost, and interleaving puts the
/// loads under the same conditions.
pub fn best_of<const N: usize>(rounds: usize, loads: [(&str, Load); N]) -> [LoadResult; N] {
    let mut best: [Option<LoadResult>; N] = std::array::from_fn(|_| None);
    for round in 1..=rounds {
        for ((name, spec), best) in loads.iter().zip(&mut best) {
            eprintln!("bench: {name} (round {round} of {rounds})");
            let mut result = load(spec);
            *best = Some(match best.take() {
                None => result,
                Some(mut kept) if kept.rps >= result.rps => {
                    kept.keep_least_cpu(&result);
                    kept
                }
                Some(kept) => {
                    result.keep_least_cpu(&kept);
                    result
                }
            });
        }
    }
    best.map(|b| b.expect("at least one round"))
}

/// 2. `GET /profile` on a large database against a small one, in interleaved rounds; and
/// 5. the start time on the large one.
pub fn large(run: &mut Run) -> Fallible<()> {
    let o = run.o;
    let path = run.scratch.path("large.db");
    eprintln!("bench: seeding {} users", o.users);
    let seeded = Instant::now();
    seed(&run.binary, &path, o.users, &bcrypt::hash(PASSWORD, 4)?)?;
    eprintln!("bench: seeded in {:.1} s", seeded.elapsed().as_secs_f64());

    let mut starts = Vec::new();
    for _ in 0..5 {
        let server = run.service(&path, 10)?;
        starts.push(server.started.as_secs_f64() * 1000.0);
    }
    starts.sort_by(f64::total_cmp);
    let start_ms = starts[starts.len() / 2];

    let small_service = run.service(&run.small_db()?, 10)?;
    let small_sessions = log_in_users(small_service.addr, &user_indices(10))?;
    let large_service = run.service(&path, 10)?;
    let large_sessions = log_in_users(large_service.addr, &user_indices(o.users))?;
    let users = thousands(o.users as f64);
    let loads = [
        (
            "auth-service, GET /profile on 10 users",
            watched(&small_service, run, profile_requests(&small_sessions)),
        ),
        (
            "auth-service, GET /profile on the large database",
            watched(&large_service, run, profile_requests(&large_sessions)),
        ),
    ];
    let [small, large] = best_of(o.rounds, loads);
    let ratio = large.rps / small.rps;
    run.rows
        .push(Row::load("GET /profile, 10 users (again)".into(), &small));
    run.rows.push(
        Row::load(format!("GET /profile, {users} users and sessions"), &large).ratio(
            ratio,
            "÷ 10 users",
            0.95,
            true,
        ),
    );
    run.rows.push(
        Row::figure(
            &format!("start to listening, {users} users"),
            start_ms,
            "ms",
            20.0,
        )
        .note(format!("median of 5; min {:.1} ms", starts[0])),
    );
    run.report.insert(
        "get_profile_large".into(),
        json!({ "users": o.users, "small": small.json(), "large": large.json(), "ratio": ratio }),
    );
    run.report.insert(
        "start_to_listening_ms".into(),
        json!({ "users": o.users, "median": start_ms, "all": starts }),
    );
    Ok(())
}

/// 3. Logins against the bcrypt limit; 4. `GET /profile` while logins flood.
pub fn logins(run: &mut Run) -> Fallible<()> {
    let cores = run.cores;
    for cost in [10, 12] {
        let hash = bcrypt::hash(PASSWORD, cost)?;
        let verify = time_verify(&hash);
        let limit = cores as f64 / verify.as_secs_f64();
        let parallel = parallel_verify_rate(&hash, cores, if cost <= 10 { 6 } else { 2 });
        let db = run.scratch.path(&format!("cost{cost}.db"));
        seed(&run.binary, &db, 40, &hash)?;
        let service = run.service(&db, cost)?;
        let clients = 8;
        eprintln!("bench: auth-service, POST /sessions at cost {cost}, {clients} clients");
        let measure = run.measure().max(Duration::from_secs(10));
        let mut logins = Load::new(service.addr, clients, measure, login_requests(0..clients));
        logins.backoff = true;
        let logins = load(&logins);
        let ratio = logins.ok_rps / limit;
        run.rows.push(
            Row::load(
                format!("POST /sessions, cost {cost}, {clients} clients"),
                &logins,
            )
            .ratio(ratio, "÷ bcrypt limit", 0.95, true)
            .note(format!(
                "limit {limit:.1}/s: {cores} cores, 1 verify {:.1} ms; {cores} verifying at once \
                 here do {parallel:.1}/s, so logins ÷ that = {:.3}",
                verify.as_secs_f64() * 1000.0,
                logins.ok_rps / parallel
            )),
        );
        run.report.insert(
            format!("logins_cost_{cost}"),
            json!({ "clients": clients, "logins": logins.json(), "verify_ms": verify.as_secs_f64() * 1000.0,
                    "parallel_verifications_per_s": parallel,
                    "cores": cores, "limit_per_s": limit, "ratio": ratio }),
        );

        if cost == 12 {
            let flooders = 32;
            eprintln!(
                "bench: auth-service, GET /profile while {flooders} clients flood POST /sessions"
            );
            let sessions = log_in_users(service.addr, &[39])?;
            let mut flood = Load::new(
                service.addr,
                flooders,
                run.measure() + Duration::from_secs(1),
                login_requests(0..flooders),
            );
            flood.warmup = Duration::ZERO;
            let mut probe = Load::new(service.addr, 4, run.measure(), profile_requests(&sessions));
            probe.pace = Some(Duration::from_millis(2));
            let (flood, probe) = thread::scope(|s| {
                let flood = s.spawn(|| load(&flood));
                let probe = load(&probe);
                (flood.join().expect("flood thread"), probe)
            });
            run.rows.push(
                Row::load(
                    format!("GET /profile, 4 paced clients, during {flooders}-client login flood"),
                    &probe,
                )
                .goal_p99(10.0)
                .note(format!(
                    "flood: {:.0} logins/s, {:.0} answers 503/s",
                    flood.ok_rps,
                    flood.status_rps(503)
                )),
            );
            run.report.insert(
                "profile_during_login_flood".into(),
                json!({ "flooders": flooders, "flood": flood.json(), "profile": probe.json(),
                        "p99_ms": probe.p99_ms, "goal_p99_ms": 10.0 }),
            );
        }
    }
    Ok(())
}

/// 5. Peak memory holding 256 connections, and the binary's size.
pub fn memory(run: &mut Run) -> Fallible<()> {
    eprintln!("bench: auth-service, 256 open connections");
    let service = run.service(&run.small_db()?, 10)?;
    let (hwm, threads) = hold_connections(&service, 256)?;
    drop(service);
    run.rows.push(
        Row::figure("peak RSS, 256 open connections", hwm / 1024.0, "MiB", 16.0)
            .note(format!("{threads} threads")),
    );
    let size = stripped_size(&run.binary)?;
    run.rows.push(Row::figure(
        "stripped release binary",
        size / (1024.0 * 1024.0),
        "MiB",
        3.0,
    ));
    run.report
        .insert("peak_rss_kib_256_connections".into(), json!(hwm));
    run.report
        .insert("server_threads_256_connections".into(), json!(threads));
    run.report
        .insert("stripped_binary_bytes".into(), json!(size));
    Ok(())
}

/// The median time of one bcrypt verification of `hash`, here, on one core.
pub fn time_verify(hash: &str) -> Duration {
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let ok = bcrypt::verify(PASSWORD, hash).expect("a well-formed hash");
            assert!(ok);
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Verifications per second with one thread per core verifying `each` at once: what the
/// machine really gives bcrypt when every core runs it (vCPUs that share a physical core, or
/// a host busy elsewhere, give less than `cores` times one), for comparison with the limit.
fn parallel_verify_rate(hash: &str, cores: usize, each: usize) -> f64 {
    let started = Instant::now();
    thread::scope(|s| {
        for _ in 0..cores {
            s.spawn(|| {
                for _ in 0..each {
                    assert!(bcrypt::verify(PASSWORD, hash).expect("a well-formed hash"));
                }
            });
        }
    });
    (cores * each) as f64 / started.elapsed().as_secs_f64()
}

/// Opens `n` connections to `server`, sends a `GET /profile` on each twice over, and reads
/// the server's peak resident memory (KiB) and thread count while they are all open.
fn hold_connections(server: &Server, n: usize) -> Fallible<(f64, usize)> {
    let session = log_in_users(server.addr, &[0])?.remove(0);
    let request = client::get("/profile", Some(&session));
    let mut conns = (0..n)
        .map(|_| Conn::connect(server.addr))
        .collect::<Result<Vec<_>, _>>()?;
    for _ in 0..2 {
        for conn in &mut conns {
            let status = conn.status(&request)?;
            if status != 200 {
                return Err(format!("GET /profile answered {status}").into());
            }
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let hwm = field("VmHWM:").ok_or("no VmHWM in /proc/PID/status")?;
    let threads = field("Threads:").unwrap_or(0.0) as usize;
    drop(conns);
    Ok((hwm, threads))
}

/// The size of the binary once stripped (a stripped copy is measured, the binary is left as
/// it is; the release profile strips already, so they are normally the same).
fn stripped_size(binary: &Path) -> Fallible<f64> {
    let copy = std::env::temp_dir().join(format!("auth-bench-strip-{}", std::process::id()));
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&copy)
        .arg(binary)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let size = if stripped {
        let size = std::fs::metadata(&copy)?.len();
        let _ = std::fs::remove_file(&copy);
        size
    } else {
        std::fs::metadata(binary)?.len()
    };
    Ok(size as f64)
}
