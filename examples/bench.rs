//! The performance benchmark: the release binary, driven over loopback by its own load
//! generator, measured against a bare tiny_http server and against bcrypt itself.
//!
//! ```text
//! cargo run --release --example bench                     # everything; also target/bench.json
//! cargo run --release --example bench -- --only requests  # one section
//! cargo run --release --features postgres --example bench   # and the PostgreSQL column
//! ```
//!
//! It builds `target/release/auth-service` (with `cargo build --release --bin auth-service`),
//! then starts it as a child process on fresh temporary databases and:
//!
//! 1. floods `GET /` and `GET /profile` from keep-alive connections and compares the rates
//!    with a bare tiny_http server (this program re-run with `--bare-server`) answering a fixed
//!    JSON body with as many workers, driven by the same generator in the same run (and, for
//!    reference, with the same server writing a prepared response in one write);
//! 2. compares `GET /profile` on a database of 1,000,000 users with one of 10;
//! 3. measures logins per second at bcrypt cost 10 and 12 against the machine's bcrypt limit
//!    (cores divided by the time of one verification, timed here);
//! 4. measures `GET /profile` latency while 32 clients flood `POST /sessions`;
//! 5. reads the server's peak RSS holding 256 connections, the stripped binary's size, and the
//!    time from spawn to the "listening" line on the 1,000,000-user database;
//! 6. built with `--features postgres`: `GET /profile` and logins with the state in PostgreSQL,
//!    on one instance and on two sharing the database, beside SQLite (`bench/postgres.rs`).
//!
//! Request loads also report the CPU time each process spent per answer (from `/proc`): the
//! server, the load generator and, in 6, PostgreSQL. They share the cores, so these say where
//! the time goes when the rates alone cannot.
//!
//! Rates that are compared (in 1, 2 and 6) are measured in interleaved rounds, the best round of
//! each kept, so that another process busy for a while skews neither side.
//!
//! Flags: `--secs N` (measured seconds of each load, default 3, after 1 s of warm-up),
//! `--rounds N` (default 3), `--connections N` (default 16), `--users N` (the large database,
//! default 1,000,000), `--workers N` (both servers; default the service's own), `--out PATH`
//! (default `target/bench.json`), `--only requests,large,logins,memory,postgres`, `--binary PATH`
//! (another build of the service, to compare builds), `--no-build`, `--postgres URL` (a server
//! for 6, whose user may create databases; by default 6 starts a throwaway cluster).
//!
//! Everything binds 127.0.0.1 and every load stops by itself. Run it on a quiet machine: the
//! servers and the load generator share the same cores.

#[path = "bench/client.rs"]
mod client;
#[cfg(feature = "postgres")]
#[path = "bench/postgres.rs"]
mod postgres_column;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auth_service::Db;
use serde_json::{json, Value};

use client::Conn;

/// The password of every seeded user.
const PASSWORD: &str = "bench password";
/// The fixed body of the bare server: what `GET /` answers.
const BARE_BODY: &str = r#"{"message":"Bienvenue"}"#;
const WARMUP: Duration = Duration::from_secs(1);

struct Options {
    secs: f64,
    rounds: usize,
    connections: usize,
    users: usize,
    workers: usize,
    out: PathBuf,
    build: bool,
    /// Another auth-service binary to measure (comparing builds).
    binary: Option<PathBuf>,
    /// Only these sections (`requests`, `large`, `logins`, `memory`, `postgres`).
    only: Option<Vec<String>>,
    /// A PostgreSQL server for the `postgres` section, instead of a throwaway cluster.
    postgres: Option<String>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--bare-server") {
        let workers = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(8);
        bare_server(
            workers,
            args.get(2).map(String::as_str) == Some("one-write"),
        );
        return ExitCode::SUCCESS;
    }
    let options = match parse(&args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        secs: 3.0,
        rounds: 3,
        connections: 16,
        users: 1_000_000,
        workers: auth_service::config::default_workers(),
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench.json"),
        build: true,
        binary: None,
        only: None,
        postgres: None,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value"))
                .cloned()
        };
        let number = |v: String| v.parse::<f64>().map_err(|_| format!("bad {flag}: {v}"));
        match flag.as_str() {
            "--secs" => options.secs = number(value()?)?.max(0.5),
            "--rounds" => options.rounds = number(value()?)?.max(1.0) as usize,
            "--connections" => options.connections = number(value()?)?.max(1.0) as usize,
            "--users" => options.users = number(value()?)?.max(10.0) as usize,
            "--workers" => options.workers = number(value()?)?.max(1.0) as usize,
            "--out" => options.out = PathBuf::from(value()?),
            "--no-build" => options.build = false,
            "--binary" => options.binary = Some(PathBuf::from(value()?)),
            "--only" => options.only = Some(value()?.split(',').map(str::to_owned).collect()),
            "--postgres" => options.postgres = Some(value()?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

/// One part of the benchmark, adding its rows and figures to the run.
type Section = fn(&mut Run) -> Fallible<()>;

/// What every section shares, and what they add to.
struct Run<'a> {
    o: &'a Options,
    binary: PathBuf,
    scratch: Scratch,
    cores: usize,
    rows: Vec<Row>,
    report: serde_json::Map<String, Value>,
}

impl Run<'_> {
    fn measure(&self) -> Duration {
        Duration::from_secs_f64(self.o.secs)
    }

    fn service(&self, db: &Path, cost: u32) -> Fallible<Server> {
        Server::service(&self.binary, db, cost, self.o.workers)
    }

    /// A database of ten users, made once.
    fn small_db(&self) -> Fallible<PathBuf> {
        let path = self.scratch.path("small.db");
        if !path.exists() {
            seed(&path, 10, &bcrypt::hash(PASSWORD, 4)?)?;
        }
        Ok(path)
    }
}

fn run(o: &Options) -> Fallible<()> {
    let machine = machine();
    let busy = loadavg();
    let mut run = Run {
        o,
        binary: match &o.binary {
            Some(binary) => binary.clone(),
            None => service_binary(o.build)?,
        },
        scratch: Scratch::new()?,
        cores: auth_service::config::cores(),
        rows: Vec::new(),
        report: serde_json::Map::new(),
    };
    eprintln!(
        "bench: {machine}; load average {busy:.2}{}",
        if busy > 0.5 {
            " (busy: the figures will be low)"
        } else {
            ""
        }
    );
    let sections: [(&str, Option<Section>); 5] = [
        ("requests", Some(requests)),
        ("large", Some(large)),
        ("logins", Some(logins)),
        ("memory", Some(memory)),
        #[cfg(feature = "postgres")]
        ("postgres", Some(postgres_column::postgres)),
        #[cfg(not(feature = "postgres"))]
        ("postgres", None),
    ];
    let chosen = |name: &str| o.only.as_ref().map(|only| only.iter().any(|s| s == name));
    for (name, section) in sections {
        match (section, chosen(name)) {
            (Some(section), None | Some(true)) => section(&mut run)?,
            (None, Some(true)) => {
                return Err(format!(
                    "the {name} section needs the bench built with --features {name}"
                )
                .into())
            }
            _ => {}
        }
    }

    let when = utc_now();
    print_table(&when, &machine, o, &run.rows);
    run.report.insert(
        "run".into(),
        json!({ "date": when, "machine": machine, "cores": run.cores, "load_average_at_start": busy,
                "connections": o.connections, "secs": o.secs, "workers": o.workers }),
    );
    run.report.insert(
        "goals".into(),
        Value::Array(run.rows.iter().filter_map(Row::goal_json).collect()),
    );
    if let Some(dir) = o.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &o.out,
        serde_json::to_string_pretty(&Value::Object(run.report))? + "\n",
    )?;
    println!("\nfigures written to {}", o.out.display());
    Ok(())
}

/// 1. `GET /` and `GET /profile` against the bare tiny_http server, in interleaved rounds.
fn requests(run: &mut Run) -> Fallible<()> {
    let o = run.o;
    let exe = std::env::current_exe()?;
    let workers = o.workers.to_string();
    let bare_server = Server::spawn(Command::new(&exe).args(["--bare-server", &workers]))?;
    let one_write_server =
        Server::spawn(Command::new(&exe).args(["--bare-server", &workers, "one-write"]))?;
    let service = run.service(&run.small_db()?, 10)?;
    let sessions = log_in_users(service.addr, &user_indices(10))?;
    let get = |server: &Server, requests| Load {
        cpu_of: vec![
            ("server", Processes::Pids(vec![server.pid()])),
            ("load generator", Processes::Myself),
        ],
        ..Load::new(server.addr, o.connections, run.measure(), requests)
    };
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
    Ok(())
}

/// Runs the loads one after the other, `rounds` times over, and keeps each one's best round
/// (the highest rate): another process taking the CPU for a while can only lower a rate, and
/// interleaving puts the loads under the same conditions.
fn best_of<const N: usize>(rounds: usize, loads: [(&str, Load); N]) -> [LoadResult; N] {
    let mut best: [Option<LoadResult>; N] = std::array::from_fn(|_| None);
    for round in 1..=rounds {
        for ((name, spec), best) in loads.iter().zip(&mut best) {
            eprintln!("bench: {name} (round {round} of {rounds})");
            let result = load(spec);
            if best.as_ref().is_none_or(|b| result.rps > b.rps) {
                *best = Some(result);
            }
        }
    }
    best.map(|b| b.expect("at least one round"))
}

/// 2. `GET /profile` on a large database against a small one, in interleaved rounds; and
/// 5. the start time on the large one.
fn large(run: &mut Run) -> Fallible<()> {
    let o = run.o;
    let path = run.scratch.path("large.db");
    eprintln!("bench: seeding {} users", o.users);
    let seeded = Instant::now();
    seed(&path, o.users, &bcrypt::hash(PASSWORD, 4)?)?;
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
            Load::new(
                small_service.addr,
                o.connections,
                run.measure(),
                profile_requests(&small_sessions),
            ),
        ),
        (
            "auth-service, GET /profile on the large database",
            Load::new(
                large_service.addr,
                o.connections,
                run.measure(),
                profile_requests(&large_sessions),
            ),
        ),
    ];
    let [small, large] = best_of(o.rounds, loads);
    let ratio = large.rps / small.rps;
    run.rows
        .push(Row::load("GET /profile, 10 users (again)".into(), &small));
    run.rows.push(
        Row::load(format!("GET /profile, {users} users"), &large).ratio(
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
fn logins(run: &mut Run) -> Fallible<()> {
    let cores = run.cores;
    for cost in [10, 12] {
        let hash = bcrypt::hash(PASSWORD, cost)?;
        let verify = time_verify(&hash);
        let limit = cores as f64 / verify.as_secs_f64();
        let parallel = parallel_verify_rate(&hash, cores, if cost <= 10 { 6 } else { 2 });
        let db = run.scratch.path(&format!("cost{cost}.db"));
        seed(&db, 40, &hash)?;
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
fn memory(run: &mut Run) -> Fallible<()> {
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

// ---------------------------------------------------------------------------------------------
// The servers.

/// `cargo build --release --bin auth-service` with `extra` arguments.
fn cargo_build(extra: &[&str]) -> Fallible<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "auth-service"])
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()?;
    if !status.success() {
        return Err(format!("cargo build --release --bin auth-service {extra:?} failed").into());
    }
    Ok(())
}

/// `target/release/auth-service`, built first unless `--no-build`.
fn service_binary(build: bool) -> Fallible<PathBuf> {
    if build {
        cargo_build(&[])?;
    }
    // This example runs from target/release/examples/; the binary sits one folder up.
    let exe = std::env::current_exe()?;
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("auth-service"))
        .filter(|p| p.exists())
        .ok_or("no target/release/auth-service: build it, or drop --no-build")?;
    Ok(binary)
}

/// A server child process, killed when dropped. Its stderr (the access log) goes to a pipe
/// that a thread drains, as a service manager's journal would.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// From spawn to the "listening" line.
    started: Duration,
}

impl Server {
    fn service(binary: &Path, db: &Path, cost: u32, workers: usize) -> Fallible<Server> {
        Server::spawn(Command::new(binary).args([
            "--bind",
            "127.0.0.1:0",
            "--db",
            &db.display().to_string(),
            "--bcrypt-cost",
            &cost.to_string(),
            "--workers",
            &workers.to_string(),
        ]))
    }

    fn spawn(command: &mut Command) -> Fallible<Server> {
        let spawned = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut stderr = BufReader::with_capacity(64 * 1024, stderr);
            let mut line = String::new();
            while stderr.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(rest) = line.split_once("listening on http://") {
                    let addr = rest.1.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send((addr.parse::<SocketAddr>().ok(), spawned.elapsed()));
                    break;
                }
                eprint!("server: {line}");
                line.clear();
            }
            let mut sink = vec![0; 64 * 1024];
            while stderr.get_mut().read(&mut sink).unwrap_or(0) > 0 {}
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((Some(addr), started)) => Ok(Server {
                child,
                addr,
                started,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err("the server did not start listening".into())
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reference point: tiny_http with `workers` threads answering a fixed JSON body with
/// tiny_http's own `Response`, as its hello-world example does. With `one_write`, the same
/// server writes a prepared response in one write instead, as auth-service does: the most a
/// tiny_http server can do. Stops when the parent kills it, or after ten minutes.
fn bare_server(workers: usize, one_write: bool) {
    use std::io::Write;

    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("binding the bare server"));
    eprintln!(
        "bare tiny_http listening on http://{}",
        server.server_addr()
    );
    let content_type =
        tiny_http::Header::from_bytes("Content-Type", "application/json").expect("an ASCII header");
    let prepared = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BARE_BODY}",
        BARE_BODY.len()
    );
    for _ in 0..workers {
        let server = Arc::clone(&server);
        let content_type = content_type.clone();
        let prepared = prepared.clone();
        thread::spawn(move || {
            for request in server.incoming_requests() {
                if one_write {
                    let mut writer = request.into_writer();
                    let _ = writer.write_all(prepared.as_bytes());
                    let _ = writer.flush();
                } else {
                    let response = tiny_http::Response::from_string(BARE_BODY)
                        .with_header(content_type.clone());
                    let _ = request.respond(response);
                }
            }
        });
    }
    thread::sleep(Duration::from_secs(600));
}

// ---------------------------------------------------------------------------------------------
// Data.

/// A database of `n` users, `user{i}@bench.example`, all with the one `hash`, added in one
/// transaction through the library.
fn seed(path: &Path, n: usize, hash: &str) -> Fallible<()> {
    let mut db = Db::open(path)?;
    let emails: Vec<String> = (0..n).map(email).collect();
    db.add_users(emails.iter().map(|e| (e.as_str(), hash)))?;
    Ok(())
}

fn email(i: usize) -> String {
    format!("user{i}@bench.example")
}

/// Ten users spread over a database of `n`: the same work wherever they sit.
fn user_indices(n: usize) -> Vec<usize> {
    (0..10).map(|k| k * (n / 10)).collect()
}

fn login_form(i: usize) -> String {
    format!("email=user{i}%40bench.example&password=bench+password")
}

fn login_requests(users: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    users
        .map(|i| client::post_form("/sessions", &login_form(i)))
        .collect()
}

/// Logs each user in through `POST /sessions` and returns their session ids.
fn log_in_users(addr: SocketAddr, users: &[usize]) -> Fallible<Vec<String>> {
    let mut conn = Conn::connect(addr)?;
    users
        .iter()
        .map(|&i| {
            let response = conn.send(&client::post_form("/sessions", &login_form(i)))?;
            match (response.status, response.session_cookie) {
                (200, Some(cookie)) => Ok(cookie),
                (status, _) => Err(format!(
                    "logging in user {i}: {status} {}",
                    String::from_utf8_lossy(&response.body)
                )
                .into()),
            }
        })
        .collect()
}

fn profile_requests(sessions: &[String]) -> Vec<Vec<u8>> {
    sessions
        .iter()
        .map(|s| client::get("/profile", Some(s)))
        .collect()
}

/// A temporary folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Fallible<Scratch> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let dir = std::env::temp_dir().join(format!("auth-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator.

/// A closed-loop load: `connections` threads, each with one keep-alive connection, sending
/// `requests[i % len]` back to back (or every `pace`) for `warmup + measure`; only what is
/// sent after the warm-up counts.
struct Load {
    /// Connection `i` goes to `addrs[i % len]`: two instances share the load evenly.
    addrs: Vec<SocketAddr>,
    connections: usize,
    warmup: Duration,
    measure: Duration,
    requests: Vec<Vec<u8>>,
    pace: Option<Duration>,
    /// Wait a second after a 503, as its `Retry-After: 1` asks.
    backoff: bool,
    /// Processes whose CPU time over the measured window the result reports.
    cpu_of: Vec<(&'static str, Processes)>,
}

impl Load {
    fn new(
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

struct LoadResult {
    connections: usize,
    secs: f64,
    /// Every answer per second, whatever its status.
    rps: f64,
    /// 200s per second.
    ok_rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    /// CPU seconds each watched group of processes used in the measured window.
    cpu: Vec<(&'static str, f64)>,
}

impl LoadResult {
    /// Microseconds of CPU the group `name` spent per answer.
    fn cpu_us_per_answer(&self, name: &str) -> Option<f64> {
        let answers = self.rps * self.secs;
        let (_, secs) = self.cpu.iter().find(|(n, _)| *n == name)?;
        (answers > 0.0).then(|| secs / answers * 1e6)
    }

    fn status_rps(&self, status: u16) -> f64 {
        self.statuses.get(&status).copied().unwrap_or(0) as f64 / self.secs
    }

    fn json(&self) -> Value {
        json!({
            "connections": self.connections, "secs": self.secs, "requests_per_s": self.rps,
            "ok_per_s": self.ok_rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "statuses": self.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "errors": self.errors,
            "cpu_us_per_answer": self.cpu.iter().map(|(n, _)| (n.to_string(), json!(self.cpu_us_per_answer(n)))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

fn load(spec: &Load) -> LoadResult {
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
fn cpu_note(r: &LoadResult) -> String {
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
enum Processes {
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

// ---------------------------------------------------------------------------------------------
// Single figures.

/// The median time of one bcrypt verification of `hash`, here, on one core.
fn time_verify(hash: &str) -> Duration {
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

// ---------------------------------------------------------------------------------------------
// The report.

struct Row {
    name: String,
    value: String,
    p50: String,
    p99: String,
    versus: String,
    goal: Option<Goal>,
    note: String,
}

struct Goal {
    text: String,
    figure: f64,
    bound: f64,
    at_least: bool,
}

impl Goal {
    fn met(&self) -> bool {
        if self.at_least {
            self.figure >= self.bound
        } else {
            self.figure <= self.bound
        }
    }
}

impl Row {
    fn load(name: String, r: &LoadResult) -> Row {
        let errors = r.rps - r.ok_rps;
        Row {
            name,
            value: format!("{} /s", thousands(r.ok_rps)),
            p50: format!("{:.2}", r.p50_ms),
            p99: format!("{:.2}", r.p99_ms),
            versus: String::new(),
            goal: None,
            note: if errors > 0.0 || r.errors > 0 {
                format!("{} not 200 /s, {} I/O errors", thousands(errors), r.errors)
            } else {
                String::new()
            },
        }
    }

    fn figure(name: &str, value: f64, unit: &str, at_most: f64) -> Row {
        Row {
            name: name.into(),
            value: format!("{value:.1} {unit}"),
            p50: String::new(),
            p99: String::new(),
            versus: String::new(),
            goal: Some(Goal {
                text: format!("≤ {at_most} {unit}"),
                figure: value,
                bound: at_most,
                at_least: false,
            }),
            note: String::new(),
        }
    }

    fn ratio(mut self, ratio: f64, versus: &str, bound: f64, at_least: bool) -> Row {
        self.versus = format!("{ratio:.3} {versus}");
        self.goal = Some(Goal {
            text: format!("{} {bound}", if at_least { "≥" } else { "≤" }),
            figure: ratio,
            bound,
            at_least,
        });
        self
    }

    /// A comparison with no goal attached.
    fn versus(mut self, ratio: f64, versus: &str) -> Row {
        self.versus = format!("{ratio:.3} {versus}");
        self
    }

    fn goal_p99(mut self, at_most_ms: f64) -> Row {
        self.goal = Some(Goal {
            text: format!("p99 ≤ {at_most_ms} ms"),
            figure: self.p99.parse().unwrap_or(f64::NAN),
            bound: at_most_ms,
            at_least: false,
        });
        self
    }

    fn note(mut self, note: String) -> Row {
        if note.is_empty() {
            return self;
        }
        if self.note.is_empty() {
            self.note = note;
        } else {
            self.note = format!("{}; {note}", self.note);
        }
        self
    }

    fn goal_json(&self) -> Option<Value> {
        let goal = self.goal.as_ref()?;
        Some(
            json!({ "measure": self.name, "figure": goal.figure, "goal": goal.text, "met": goal.met() }),
        )
    }
}

fn print_table(when: &str, machine: &str, o: &Options, rows: &[Row]) {
    println!(
        "\nauth-service benchmark, {when}, {machine}\n\
         {} connections per request load, each measured {} s after 1 s of warm-up, best of {} \
         interleaved rounds; {} workers in both servers\n",
        o.connections, o.secs, o.rounds, o.workers
    );
    let width = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0);
    println!(
        "{:width$}  {:>12}  {:>7}  {:>7}  {:>22}  {:>14}",
        "measure", "value", "p50 ms", "p99 ms", "compared", "goal"
    );
    for r in rows {
        let (goal, verdict) = match &r.goal {
            Some(g) => (g.text.clone(), if g.met() { "met" } else { "NOT MET" }),
            None => (String::new(), ""),
        };
        println!(
            "{:width$}  {:>12}  {:>7}  {:>7}  {:>22}  {:>14}  {verdict}",
            r.name, r.value, r.p50, r.p99, r.versus, goal
        );
        if !r.note.is_empty() {
            println!("{:width$}    ({})", "", r.note);
        }
    }
}

/// `12,345`
fn thousands(n: f64) -> String {
    if n < 100.0 {
        return format!("{n:.1}");
    }
    let digits = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!(
        "{cpu}, {} cores, Linux {kernel}",
        auth_service::config::cores()
    )
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// `2025-01-31 12:00 UTC`, from the system clock (civil-from-days, proleptic Gregorian).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}
