//! The performance benchmark of auth-service: the release binary, driven over loopback by its
//! own load generator, measured against a bare tiny_http server and against bcrypt itself.
//!
//! ```text
//! cargo run --release --manifest-path bench/Cargo.toml                       # everything
//! cargo run --release --manifest-path bench/Cargo.toml -- --only requests    # one section
//! cargo run --release --manifest-path bench/Cargo.toml --features postgres   # and PostgreSQL
//! ```
//!
//! It builds `target/release/auth-service` in the repository (with `cargo build --release --bin
//! auth-service`), then starts it as a child process on fresh temporary databases and:
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
//!    on one instance and on two sharing the database, beside SQLite (`postgres.rs`).
//!
//! It is a crate of its own, not an example of the service, so that the bare server is the
//! unpatched tiny_http 0.12 from crates.io: the service's vendored tiny_http is measured
//! against upstream, not against itself. For the same reason it does not link the service's
//! library (which would then be built against the unpatched tiny_http): it runs the binary,
//! and seeds the databases with SQL of its own once the binary has created their schema.
//!
//! Request loads also report the CPU time each process spent per answer (from `/proc`): the
//! server, the load generator and, in 6, PostgreSQL. They share the cores, so these say where
//! the time goes when the rates alone cannot.
//!
//! Rates that are compared (in 1, 2 and 6) are measured in interleaved rounds, the best round of
//! each kept, so that another process busy for a while skews neither side.
//!
//! Everything binds 127.0.0.1 and every load stops by itself. Run it on a quiet machine: the
//! servers and the load generator share the same cores. `--help` lists the flags.

mod client;
mod data;
mod load;
#[cfg(feature = "postgres")]
mod postgres;
mod report;
mod sections;
mod server;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use data::Scratch;
use report::Row;
use server::Server;

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

/// The password of every seeded user.
const PASSWORD: &str = "bench password";

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

impl Default for Options {
    fn default() -> Options {
        Options {
            secs: 3.0,
            rounds: 3,
            connections: 16,
            users: 1_000_000,
            // The service's own default (`default_workers` in src/config.rs), so that an
            // unflagged run measures the service as it is deployed, and the bare server alike.
            workers: (cores() * 4).max(8),
            out: server::repository().join("target/bench.json"),
            build: true,
            binary: None,
            only: None,
            postgres: None,
        }
    }
}

/// One flag: its name without dashes, its value's name (`None` for a switch), what it does,
/// and how it sets its option from the value (an error says why the value is wrong).
struct Flag {
    name: &'static str,
    value: Option<&'static str>,
    help: &'static str,
    set: fn(&mut Options, &str) -> Result<(), String>,
}

// Numbers below a flag's floor are raised to it rather than refused: `--rounds 0` means as few
// as there can be.
#[rustfmt::skip]
const FLAGS: &[Flag] = &[
    Flag { name: "secs", value: Some("N"), help: "measured seconds of each load, after 1 s of warm-up [3; at least 0.5]",
           set: |o, v| { o.secs = number(v)?.max(0.5); Ok(()) } },
    Flag { name: "rounds", value: Some("N"), help: "interleaved rounds of compared loads, the best kept [3]",
           set: |o, v| { o.rounds = number(v)?.max(1.0) as usize; Ok(()) } },
    Flag { name: "connections", value: Some("N"), help: "keep-alive connections of each request load [16]",
           set: |o, v| { o.connections = number(v)?.max(1.0) as usize; Ok(()) } },
    Flag { name: "users", value: Some("N"), help: "users in the large database [1000000; at least 10]",
           set: |o, v| { o.users = number(v)?.max(10.0) as usize; Ok(()) } },
    Flag { name: "workers", value: Some("N"), help: "request workers of the service and of the bare server [the service's default]",
           set: |o, v| { o.workers = number(v)?.max(1.0) as usize; Ok(()) } },
    Flag { name: "out", value: Some("PATH"), help: "where the figures go as JSON [target/bench.json in the repository]",
           set: |o, v| { o.out = PathBuf::from(v); Ok(()) } },
    Flag { name: "only", value: Some("LIST"), help: "only these sections, comma-separated: requests,large,logins,memory,postgres",
           set: |o, v| { o.only = Some(v.split(',').map(str::to_owned).collect()); Ok(()) } },
    Flag { name: "binary", value: Some("PATH"), help: "measure this build of the service instead (to compare builds)",
           set: |o, v| { o.binary = Some(PathBuf::from(v)); Ok(()) } },
    Flag { name: "no-build", value: None, help: "use the binaries already built",
           set: |o, _| { o.build = false; Ok(()) } },
    Flag { name: "postgres", value: Some("URL"), help: "a PostgreSQL server whose user may create databases [a throwaway cluster]",
           set: |o, v| { o.postgres = Some(v.to_owned()); Ok(()) } },
];

fn number(value: &str) -> Result<f64, String> {
    value.parse().map_err(|_| "not a number".to_owned())
}

/// What the command line asks for.
enum Command {
    Run(Options),
    Help,
    /// The bare reference server with this many workers, writing once per response or not.
    BareServer {
        workers: usize,
        one_write: bool,
    },
}

fn parse(args: &[String]) -> Result<Command, String> {
    if args.first().map(String::as_str) == Some("--bare-server") {
        // Not a flag of the table: how the `requests` section starts this program as a server.
        return Ok(Command::BareServer {
            workers: args.get(1).and_then(|n| n.parse().ok()).unwrap_or(8),
            one_write: args.get(2).map(String::as_str) == Some("one-write"),
        });
    }
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            return Ok(Command::Help);
        }
        let flag = arg
            .strip_prefix("--")
            .and_then(|name| FLAGS.iter().find(|f| f.name == name))
            .ok_or_else(|| format!("unknown flag {arg}"))?;
        let value = match flag.value {
            Some(_) => args.next().ok_or_else(|| format!("{arg} needs a value"))?,
            None => "",
        };
        (flag.set)(&mut options, value).map_err(|why| format!("bad {arg} {value:?}: {why}"))?;
    }
    Ok(Command::Run(options))
}

fn help() -> String {
    let mut out = String::from(
        "the auth-service benchmark (bench/README.md)\n\n\
         usage: cargo run --release --manifest-path bench/Cargo.toml [--features postgres] -- [FLAGS]\n\nflags:\n",
    );
    for flag in FLAGS {
        let left = match flag.value {
            Some(v) => format!("--{} {v}", flag.name),
            None => format!("--{}", flag.name),
        };
        out.push_str(&format!("  {left:<20} {}\n", flag.help));
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        Ok(Command::BareServer { workers, one_write }) => {
            server::bare_server(workers, one_write);
            return ExitCode::SUCCESS;
        }
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
            data::seed(&self.binary, &path, 10, &bcrypt::hash(PASSWORD, 4)?)?;
        }
        Ok(path)
    }
}

fn run(o: &Options) -> Fallible<()> {
    let machine = report::machine();
    let busy = report::loadavg();
    let mut run = Run {
        o,
        binary: match &o.binary {
            Some(binary) => binary.clone(),
            None => server::service_binary(&server::repository().join("target"), &[], o.build)?,
        },
        scratch: Scratch::new()?,
        cores: cores(),
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
        ("requests", Some(sections::requests)),
        ("large", Some(sections::large)),
        ("logins", Some(sections::logins)),
        ("memory", Some(sections::memory)),
        #[cfg(feature = "postgres")]
        ("postgres", Some(postgres::postgres)),
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

    let when = httpdate::fmt_http_date(SystemTime::now());
    report::print_table(&when, &machine, o, &run.rows);
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

/// The cores this process may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
