//! The PostgreSQL column (the bench built with `--features postgres`): `GET /profile` and
//! logins with the state in PostgreSQL, on one instance and on two sharing the database, beside
//! the same binary on SQLite, each with the CPU time the server, the database and the load
//! generator spent per answer: on one host they share the cores, so those times say where a
//! request's cost goes, and what a database core can serve once the instances move to hosts of
//! their own.
//!
//! The binary is `target/pg/release/auth-service` in the repository, built with the service's
//! `postgres` feature (the target directory keeps it apart from the default build the other
//! sections measure). The database is
//! a fresh one on the server `--postgres URL` names (its user must be allowed to create
//! databases), or else on a throwaway cluster of the newest PostgreSQL installed under
//! `/usr/lib/postgresql` (Debian's `postgresql` package), started on a free loopback port with
//! PostgreSQL's durable defaults (fsync and synchronous commit on, as a deployment runs it) and
//! removed at the end. The database's CPU time is known only for that throwaway cluster.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

// `::`: the crate, not this module of the same name.
use ::postgres::{Client, NoTls};
use serde_json::json;

use crate::data::{create_schema, email, log_in_users, login_requests, profile_requests, seed};
use crate::load::{cpu_note, Load, LoadResult, Processes};
use crate::report::{thousands, Row};
use crate::sections::{best_of, time_verify};
use crate::server::{self, Server};
use crate::{Fallible, Run, PASSWORD};

/// The bcrypt cost of the seeded users: the logins section's cheaper cost, so that a login's
/// database work is a visible share of it.
const COST: u32 = 10;
/// Users seeded in each store: the login load uses the first eight, `GET /profile` the last
/// ten (a login replaces the user's session, so the two must not share users).
const USERS: usize = 40;
const LOGIN_CLIENTS: usize = 8;

pub fn postgres(run: &mut Run) -> Fallible<()> {
    let o = run.o;
    let target = server::repository().join("target/pg");
    let binary = server::service_binary(&target, &["--features", "postgres"], o.build)?;
    let (cluster, server_url) = match &o.postgres {
        Some(url) => (None, url.clone()),
        None => {
            let cluster = Cluster::start(&run.scratch.path("postgres"))?;
            let url = cluster.url.clone();
            (Some(cluster), url)
        }
    };

    let hash = bcrypt::hash(PASSWORD, COST)?;
    let sqlite = run.scratch.path("postgres-column.db");
    seed(&binary, &sqlite, USERS, &hash)?;
    let database = Database::create(&server_url)?;
    let shared = PathBuf::from(&database.url);
    create_schema(&binary, &shared)?;
    database.add_users(USERS, &hash)?;

    let on_sqlite = Server::service(&binary, &sqlite, COST, o.workers)?;
    let first = Server::service(&binary, &shared, COST, o.workers)?;
    let second = Server::service(&binary, &shared, COST, o.workers)?;
    let profile_users: Vec<usize> = (USERS - 10..USERS).collect();
    let sqlite_sessions = log_in_users(on_sqlite.addr, &profile_users)?;
    // Logged in through the first instance; valid on both.
    let shared_sessions = log_in_users(first.addr, &profile_users)?;

    let postmaster = cluster.as_ref().map(|c| c.postmaster);
    let watching = |servers: &[&Server]| {
        let mut cpu_of = vec![
            (
                "server",
                Processes::Pids(servers.iter().map(|s| s.pid()).collect()),
            ),
            ("load generator", Processes::Myself),
        ];
        if let Some(postmaster) = postmaster {
            cpu_of.push(("PostgreSQL", Processes::Tree(postmaster)));
        }
        cpu_of
    };
    let load = |servers: &[&Server], connections, measure, requests| Load {
        addrs: servers.iter().map(|s| s.addr).collect(),
        cpu_of: watching(servers),
        ..Load::new(servers[0].addr, connections, measure, requests)
    };

    let (c, measure) = (o.connections, run.measure());
    let profiles = [
        (
            "GET /profile, SQLite, 1 instance",
            load(
                &[&on_sqlite],
                c,
                measure,
                profile_requests(&sqlite_sessions),
            ),
        ),
        (
            "GET /profile, PostgreSQL, 1 instance",
            load(&[&first], c, measure, profile_requests(&shared_sessions)),
        ),
        (
            "GET /profile, PostgreSQL, 2 instances",
            load(
                &[&first, &second],
                c,
                measure,
                profile_requests(&shared_sessions),
            ),
        ),
    ];
    let [p_sqlite, p_one, p_two] = best_of(o.rounds, profiles);

    let measure = measure.max(Duration::from_secs(5));
    let logins = |servers: &[&Server]| Load {
        backoff: true,
        ..load(
            servers,
            LOGIN_CLIENTS,
            measure,
            login_requests(0..LOGIN_CLIENTS),
        )
    };
    let [l_sqlite, l_one, l_two] = best_of(
        o.rounds,
        [
            ("POST /sessions, SQLite, 1 instance", logins(&[&on_sqlite])),
            ("POST /sessions, PostgreSQL, 1 instance", logins(&[&first])),
            (
                "POST /sessions, PostgreSQL, 2 instances",
                logins(&[&first, &second]),
            ),
        ],
    );
    let verify = time_verify(&hash);
    let limit = run.cores as f64 / verify.as_secs_f64();

    let row = |name: String, r: &LoadResult| Row::load(name, r).note(cpu_note(r));
    run.rows
        .push(row("GET /profile, SQLite, 1 instance".into(), &p_sqlite));
    run.rows.push(
        row("GET /profile, PostgreSQL, 1 instance".into(), &p_one)
            .versus(p_one.ok_rps / p_sqlite.ok_rps, "÷ SQLite")
            .note(per_database_core(&p_one)),
    );
    run.rows.push(
        row("GET /profile, PostgreSQL, 2 instances".into(), &p_two)
            .versus(p_two.ok_rps / p_one.ok_rps, "÷ 1 instance"),
    );
    let logins_name = |store: &str| format!("POST /sessions, cost {COST}, {store}");
    run.rows.push(
        row(logins_name("SQLite, 1 instance"), &l_sqlite)
            .versus(l_sqlite.ok_rps / limit, "÷ bcrypt limit")
            .note(format!(
                "limit {limit:.1}/s: {} cores, 1 verify {:.1} ms",
                run.cores,
                verify.as_secs_f64() * 1000.0
            )),
    );
    run.rows.push(
        row(logins_name("PostgreSQL, 1 instance"), &l_one)
            .versus(l_one.ok_rps / l_sqlite.ok_rps, "÷ SQLite"),
    );
    run.rows.push(
        row(logins_name("PostgreSQL, 2 instances"), &l_two)
            .versus(l_two.ok_rps / l_one.ok_rps, "÷ 1 instance"),
    );

    run.report.insert(
        "postgres".into(),
        json!({
            "server": if cluster.is_some() { "throwaway cluster on loopback" } else { "--postgres" },
            "profile": { "sqlite": p_sqlite.json(), "postgres_1": p_one.json(), "postgres_2": p_two.json() },
            "logins": { "cost": COST, "clients": LOGIN_CLIENTS, "bcrypt_limit_per_s": limit,
                        "sqlite": l_sqlite.json(), "postgres_1": l_one.json(), "postgres_2": l_two.json() },
        }),
    );
    // Dropped in reverse order of declaration, here or at an early return: the servers end,
    // then their database is dropped, then the cluster stops.
    Ok(())
}

/// What one core of the database would serve of this load alone, from its CPU per answer.
fn per_database_core(r: &LoadResult) -> String {
    match r.cpu_us_per_answer("PostgreSQL") {
        Some(us) if us > 0.0 => format!(
            "one PostgreSQL core serves at most {}/s of these",
            thousands(1e6 / us)
        ),
        _ => String::new(),
    }
}

/// A database of its own on a PostgreSQL server, dropped at the end.
struct Database {
    server: String,
    name: String,
    url: String,
}

impl Database {
    fn create(server: &str) -> Fallible<Database> {
        let name = format!("auth_bench_{}", std::process::id());
        let sql = format!("CREATE DATABASE {name}");
        Client::connect(server, NoTls)
            .and_then(|mut client| client.batch_execute(&sql))
            // postgres::Error shows only "db error"; the server's message says what went wrong.
            .map_err(|e| match e.as_db_error() {
                Some(db) => format!("{sql}: {}", db.message()),
                None => format!("{sql}: {e}"),
            })?;
        Ok(Database {
            url: with_database(server, &name),
            server: server.to_owned(),
            name,
        })
    }
}

impl Database {
    /// Adds `n` users as `data::seed` does in SQLite: `user{i}@bench.example`, all with the one
    /// `hash`, in one transaction; the other columns of `users` (schema.postgres.sql) are the
    /// id, which PostgreSQL assigns, and a session and a reset token, which start empty.
    fn add_users(&self, n: usize, hash: &str) -> Fallible<()> {
        let mut client = Client::connect(&self.url, NoTls)?;
        let mut tx = client.transaction()?;
        let insert = tx.prepare("INSERT INTO users (email, hashed_password) VALUES ($1, $2)")?;
        for i in 0..n {
            tx.execute(&insert, &[&email(i), &hash])?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Ok(mut client) = Client::connect(&self.server, NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// The server URL `server` with its database replaced by `name`.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = server.split_once('?').unwrap_or((server, ""));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let end = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{name}{query}", &base[..end])
}

/// A throwaway PostgreSQL cluster on loopback, stopped when dropped (its folder goes with the
/// benchmark's scratch folder).
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    url: String,
    postmaster: u32,
}

impl Cluster {
    fn start(data: &Path) -> Fallible<Cluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| "no PostgreSQL under /usr/lib/postgresql: apt-get install postgresql, or pass --postgres URL")?
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
            .max()
            .map(|(_, bin)| bin)
            .ok_or("no PostgreSQL version under /usr/lib/postgresql")?;
        std::fs::create_dir_all(data)?;
        if running_as_root()? {
            // PostgreSQL refuses to run as root: its files belong to the package's user.
            run_quietly(Command::new("chown").arg("postgres:").arg(data))?;
        }
        // A free port: the kernel's pick for a socket closed at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let data_arg = data.display().to_string();
        run_quietly(as_postgres(&bin.join("initdb"))?.args([
            "-D",
            &data_arg,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]))?;
        let options = format!("-h 127.0.0.1 -p {port} -k {data_arg} -c max_connections=200");
        let log = data.join("server.log").display().to_string();
        run_quietly(
            as_postgres(&bin.join("pg_ctl"))?
                .args(["-D", &data_arg, "-l", &log, "-w", "start", "-o", &options]),
        )?;
        let mut cluster = Cluster {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            postmaster: 0,
            bin,
            data: data.to_owned(),
        };
        // The first line of postmaster.pid is the server's process id.
        let pid_file = std::fs::read_to_string(data.join("postmaster.pid"))?;
        let postmaster = pid_file.lines().next().and_then(|l| l.trim().parse().ok());
        cluster.postmaster = postmaster.ok_or("no process id in postmaster.pid")?;
        eprintln!("bench: PostgreSQL on {} (durable defaults)", cluster.url);
        Ok(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(mut stop) = as_postgres(&self.bin.join("pg_ctl")) {
            let _ = run_quietly(stop.arg("-D").arg(&self.data).args(["-m", "fast", "stop"]));
        }
    }
}

fn running_as_root() -> Fallible<bool> {
    Ok(std::fs::metadata("/proc/self")?.uid() == 0)
}

/// `program`, run as the `postgres` user when this runs as root.
fn as_postgres(program: &Path) -> Fallible<Command> {
    Ok(if running_as_root()? {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    })
}

fn run_quietly(command: &mut Command) -> Fallible<()> {
    let output = command.stdin(Stdio::null()).output()?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(())
}
