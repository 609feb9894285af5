//! The `auth-service` binary as an operator runs it: flags and variables, exit codes, what it
//! prints, the access log, signals, and the database it refuses.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_auth-service");

/// What a run of the binary that is expected to end left behind.
#[derive(Debug)]
struct Run {
    /// The exit code; `None` when it had to be killed (it did not end within 20 s) or died
    /// of a signal.
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` and `env` and waits (boundedly) for it to end.
fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut child = spawn(Command::new(BIN).args(args).envs(env.iter().copied()));
    let code = match poll(Duration::from_secs(20), || child.try_wait().unwrap()) {
        Some(status) => status.code(),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Run {
        code,
        stdout,
        stderr,
    }
}

/// The flags every run that might start serving gets, so that none of them ever listens on
/// the default port or writes `./auth.db`.
fn safe_args<'a>(dir: &'a Path, extra: &[&'a str]) -> Vec<String> {
    let mut args = vec![
        "--bind".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--db".to_owned(),
        dir.join("auth.db").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn help_lists_every_flag_and_exits_0() {
    for flag in ["--help", "-h"] {
        let r = run(&[flag], &[]);
        assert_eq!(r.code, Some(0), "{r:?}");
        assert!(r.stdout.contains("usage: auth-service"), "{r:?}");
        for name in [
            "--bind",
            "--db",
            "--bcrypt-cost",
            "--workers",
            "--max-body-bytes",
            "--session-ttl",
            "--session-idle",
            "--reset-ttl",
            "--reset-command",
            "--secure-cookies",
            "--trust-proxy",
            "--max-login-failures",
            "--login-window",
            "--min-password-length",
            "--metrics",
            "--version",
            "AUTH_BIND",
        ] {
            assert!(r.stdout.contains(name), "--help mentions {name}: {r:?}");
        }
    }
}

#[test]
fn version_prints_the_version_and_exits_0() {
    let r = run(&["--version"], &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(
        r.stdout,
        format!("auth-service {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// Arguments, environment, and what stderr must say.
type BadCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn a_bad_flag_or_value_exits_2_saying_what_is_wrong() {
    let dir = TempDir::new();
    let cases: &[BadCase] = &[
        (&["--nope"], &[], "unknown flag --nope"),
        (&["serve"], &[], "unknown flag serve"),
        (&["--bcrypt-cost", "3"], &[], "bad value for --bcrypt-cost"),
        (&["--bcrypt-cost", "many"], &[], "is not a whole number"),
        (&["--workers", "0"], &[], "bad value for --workers"),
        (&["--bind", "nowhere"], &[], "bad value for --bind"),
        (&["--metrics=yes"], &[], "--metrics takes no value"),
        (
            &[],
            &[("AUTH_BCRYPT_COST", "99")],
            "bad value for --bcrypt-cost (from the environment)",
        ),
        (
            &[],
            &[("AUTH_METRICS", "maybe")],
            "bad value for --metrics (from the environment)",
        ),
    ];
    for (extra, env, message) in cases {
        let args = safe_args(dir.path(), extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run(&args, env);
        assert_eq!(r.code, Some(2), "{extra:?} {env:?}: {r:?}");
        assert!(r.stderr.starts_with("auth-service: "), "{r:?}");
        assert!(
            r.stderr.contains(message),
            "{extra:?}: {message:?} in {r:?}"
        );
        assert!(!r.stderr.contains("listening"), "{r:?}");
    }
    // A flag given without its value, last on the line.
    let r = run(&["--bind"], &[]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("--bind needs a value"), "{r:?}");
    // None of them got as far as creating the database.
    assert!(!dir.path().join("auth.db").exists());
}

#[test]
fn the_startup_line_shows_the_real_port() {
    let server = ChildServer::start(&[]);
    assert_ne!(server.addr.port(), 0);
    assert_eq!(server.addr.ip().to_string(), "127.0.0.1");
    // The file, or with AUTH_TEST_POSTGRES the database URL standing for it.
    let db = test_db(&server.dir.path().join("auth.db"));
    let first = server
        .output()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        first,
        format!(
            "auth-service listening on http://{} (db {})",
            server.addr,
            db.display()
        )
    );
    assert_eq!(server.get("/", None).status, 200);
    if !on_postgres() {
        assert!(db.exists(), "the database file is created");
    }
}

/// The access-log lines in `output`, as (method, path, status); panics on a line that looks
/// like one but has no duration in milliseconds or no client address.
fn access_lines(output: &str) -> Vec<(String, String, u16)> {
    output
        .lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            let [method, path, status, ms, addr] = parts[..] else {
                return None;
            };
            if !method.chars().all(|c| c.is_ascii_uppercase()) || !path.starts_with('/') {
                return None;
            }
            let millis = ms.strip_suffix("ms").and_then(|n| n.parse::<f64>().ok());
            assert!(
                millis.is_some_and(|n| n >= 0.0),
                "{line:?} has milliseconds"
            );
            assert_eq!(
                addr.parse::<std::net::IpAddr>().ok(),
                Some([127, 0, 0, 1].into()),
                "{line:?} ends in the client's address"
            );
            Some((method.to_owned(), path.to_owned(), status.parse().ok()?))
        })
        .collect()
}

/// Polls `server`'s output until it holds `n` access-log lines (or 10 s pass).
fn wait_for_access_lines(server: &ChildServer, n: usize) -> Vec<(String, String, u16)> {
    poll(Duration::from_secs(10), || {
        Some(access_lines(&server.output())).filter(|lines| lines.len() >= n)
    })
    .unwrap_or_else(|| access_lines(&server.output()))
}

#[test]
fn each_request_gets_one_access_log_line_without_its_query() {
    let server = ChildServer::start(&[]);
    assert_eq!(server.get("/?token=sekrit-query", None).status, 200);
    let r = server.post(
        "/users?next=x",
        &[("email", "bob@example.com"), ("password", "hunter2")],
    );
    assert_eq!(r.status, 200);
    let r = server.log_in("bob@example.com", "wrong-pw");
    assert_eq!(r.status, 401);
    assert_eq!(server.get("/nope?q=1", None).status, 404);
    assert_eq!(server.send("PATCH", "/profile", &[], b"").status, 405);

    let mut lines = wait_for_access_lines(&server, 5);
    // Workers log as they finish, so lines may come in another order than the requests.
    lines.sort();
    let mut expected = vec![
        ("GET".to_owned(), "/".to_owned(), 200),
        ("POST".to_owned(), "/users".to_owned(), 200),
        ("POST".to_owned(), "/sessions".to_owned(), 401),
        ("GET".to_owned(), "/nope".to_owned(), 404),
        ("PATCH".to_owned(), "/profile".to_owned(), 405),
    ];
    expected.sort();
    assert_eq!(lines, expected, "{}", server.output());

    let output = server.output();
    for secret in ["sekrit-query", "hunter2", "wrong-pw", "next=x"] {
        assert!(!output.contains(secret), "{secret} is not logged: {output}");
    }
}

#[test]
fn variables_configure_and_flags_beat_them() {
    // From the environment: a small body limit, metrics on, and a broken bind address that
    // the --bind flag ChildServer passes overrides.
    let env = [
        ("AUTH_MAX_BODY_BYTES", "100"),
        ("AUTH_METRICS", "1"),
        ("AUTH_BIND", "not an address"),
    ];
    let db = |dir: &TempDir| dir.path().join("auth.db");
    let dir = TempDir::new();
    let path = db(&dir);
    let server = ChildServer::start_with_env(dir, &path, &[], &env);
    let padding = "x".repeat(200);
    let form = [
        ("email", "bob@example.com"),
        ("password", "pw"),
        ("pad", padding.as_str()),
    ];
    let r = server.post("/users", &form);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(
        r.text,
        r#"{"message":"request body is larger than 100 bytes"}"#
    );
    let r = server.get("/metrics", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    assert!(r.text.contains("auth_requests_total"), "{}", r.text);
    drop(server);

    // The flag beats its variable.
    let dir = TempDir::new();
    let path = db(&dir);
    let server = ChildServer::start_with_env(
        dir,
        &path,
        &["--max-body-bytes", "1000"],
        &[("AUTH_MAX_BODY_BYTES", "100"), ("AUTH_METRICS", "0")],
    );
    let r = server.post("/users", &form);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(server.get("/metrics", None).status, 404);
}

#[test]
fn a_database_from_a_newer_version_is_refused_and_kept() {
    // SQLite's file on either run, on purpose (safe_args passes the path itself, and the
    // version is PRAGMA user_version); PostgreSQL's twin is in tests/multi_instance.rs.
    let dir = TempDir::new();
    let path = dir.path().join("auth.db");
    {
        let db = auth_service::Db::open(&path).unwrap();
        db.add_user("bob@example.com", "hash").unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);

    let args = safe_args(dir.path(), &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run(&args, &[]);
    assert!(
        r.code.is_some_and(|c| c != 0),
        "it exits non-zero on its own: {r:?}"
    );
    assert!(
        r.stderr
            .contains("database schema version 99 is newer than this binary supports"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("listening"), "{r:?}");

    // The file is as it was: same version, same user.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 99);
    let users: i64 = conn
        .query_row(
            "SELECT count(*) FROM users WHERE email = 'bob@example.com'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(users, 1);
}

/// The `auth_requests_in_flight` gauge of a server started with `--metrics`.
fn in_flight(server: &ChildServer) -> u64 {
    let r = server.get("/metrics", None);
    r.text
        .lines()
        .find_map(|l| l.strip_prefix("auth_requests_in_flight "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no in-flight gauge in {}", r.text))
}

#[test]
fn sigterm_lets_in_flight_logins_finish_then_exits_0() {
    // A real bcrypt cost makes each login take a while (cost 10 is about a third of a second
    // in a debug build), so they are still running when the signal comes.
    let mut server = ChildServer::start(&["--bcrypt-cost", "10", "--metrics"]);
    server.register_ok("bob@example.com", "pw");

    // No more logins than bcrypt has slots and queue for (the core count each), so that none
    // is shed with 503 and every one is genuinely in flight.
    let n = (2 * auth_service::config::cores()).min(4);
    let barrier = Arc::new(Barrier::new(n));
    let logins: Vec<_> = (0..n)
        .map(|_| {
            let client = Client::new(server.addr);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                client.log_in("bob@example.com", "pw")
            })
        })
        .collect();

    // Wait until the server holds all of them (plus the /metrics request asking).
    let all_in_flight = poll(Duration::from_secs(10), || {
        (in_flight(&server) > n as u64).then_some(())
    })
    .is_some();
    server.signal("TERM");

    let answers: Vec<Resp> = logins.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        all_in_flight,
        "the logins were never all in flight at once: {answers:?}\n{}",
        server.output()
    );
    for r in &answers {
        assert_eq!(r.status, 200, "an in-flight login finishes: {r:?}");
        assert_eq!(
            r.text,
            r#"{"email":"bob@example.com","message":"logged in"}"#
        );
    }
    assert_eq!(
        server.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        server.output()
    );
    let output = server.output();
    assert!(output.contains("finishing in-flight requests"), "{output}");
    assert_eq!(
        access_lines(&output)
            .iter()
            .filter(|(m, p, s)| m == "POST" && p == "/sessions" && *s == 200)
            .count(),
        n,
        "{output}"
    );
}

#[test]
fn sigint_exits_0() {
    let mut server = ChildServer::start(&[]);
    assert_eq!(server.get("/", None).status, 200);
    server.signal("INT");
    assert_eq!(
        server.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        server.output()
    );
}

#[test]
fn sigterm_when_idle_exits_0_and_keeps_the_data() {
    let dir = TempDir::new();
    let path = dir.path().join("auth.db");
    let mut server = ChildServer::start_on(dir, &path, &[]);
    let id = server.register_and_log_in("bob@example.com", "pw");
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));

    // A new process on the same file knows the user and the session.
    let dir = std::mem::replace(&mut server.dir, TempDir::new());
    let again = ChildServer::start_on(dir, &path, &[]);
    let r = again.profile(&id);
    assert_eq!(
        (r.status, r.text.as_str()),
        (200, r#"{"email":"bob@example.com"}"#)
    );
}
