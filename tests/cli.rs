//! The operator's commands (`auth-service users ...`, `backup`, `check`) run as an operator
//! runs them: the real binary, against the database a running server (the real binary too)
//! is using, and the effect seen over HTTP at once. Passwords go in on standard input, or
//! typed at a prompt on a pseudo-terminal, and never come back out.

mod support;

use std::net::SocketAddr;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auth_service::Db;
use serde_json::Value;
use support::*;

/// What a run of a command left behind.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `auth-service ARGS --db DB` with `stdin` on its standard input (a pipe, so never a
/// terminal) and bcrypt at cost 4 through the variable (read only by the commands that hash).
fn cli(db: &Path, args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .args(args)
        .arg("--db")
        .arg(test_db(db))
        .env("AUTH_BCRYPT_COST", "4")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // A command that does not read its input may have exited already.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = wait_bounded(child);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits for `child` at most 30 s (killing it then), and collects its output.
fn wait_bounded(child: std::process::Child) -> std::process::Output {
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let watch = Arc::clone(&done);
    std::thread::spawn(move || {
        let started = Instant::now();
        while !watch.load(Ordering::Relaxed) {
            if started.elapsed() > Duration::from_secs(30) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, Ordering::Relaxed);
    out
}

/// Asserts `run` succeeded, and that no password of `secrets` is in anything it printed.
fn ok(run: &Run, secrets: &[&str]) {
    assert_eq!(run.code, Some(0), "{run:?}");
    clean(run, secrets);
}

fn clean(run: &Run, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{secret:?} printed: {run:?}"
        );
    }
}

/// Asserts `run` failed with exit `code` and one line on stderr that says `why`.
fn refused(run: &Run, code: i32, why: &str) {
    assert_eq!(run.code, Some(code), "{run:?}");
    assert!(run.stderr.starts_with("auth-service: "), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one line: {run:?}");
    assert!(run.stderr.contains(why), "{why:?} in {run:?}");
}

/// A server on a database of its own, and that database's path (as given to [`test_db`]).
fn serving(args: &[&str]) -> (ChildServer, PathBuf) {
    let dir = TempDir::new();
    let db = dir.path().join("auth.db");
    (ChildServer::start_on(dir, &db, args), db)
}

#[test]
fn users_add_then_the_server_logs_the_user_in() {
    let (server, db) = serving(&[]);
    let run = cli(&db, &["users", "add", "Alice@Example.com"], "s3cret-add\n");
    ok(&run, &["s3cret-add"]);
    assert!(
        run.stdout.starts_with("user ") && run.stdout.ends_with(" Alice@Example.com added\n"),
        "{run:?}"
    );
    let r = server.log_in("alice@example.com", "s3cret-add");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        server.log_in("alice@example.com", "s3cret-add\n").status,
        401
    );

    // Taken, in any case: refused before a password is asked for.
    refused(
        &cli(&db, &["users", "add", "ALICE@example.com"], "other\n"),
        1,
        "ALICE@example.com is already registered",
    );
    // A line ending of either kind is not part of the password.
    ok(
        &cli(&db, &["users", "add", "crlf@example.com"], "crlf-pw\r\n"),
        &[],
    );
    assert_eq!(server.log_in("crlf@example.com", "crlf-pw").status, 200);
    // The policy's minimum applies, from the flag.
    refused(
        &cli(
            &db,
            &[
                "users",
                "add",
                "short@example.com",
                "--min-password-length",
                "8",
            ],
            "short\n",
        ),
        1,
        "password is shorter than 8 characters",
    );
    refused(
        &cli(
            &db,
            &["users", "add", "long@example.com"],
            &format!("{}\n", "x".repeat(73)),
        ),
        1,
        "password is longer than 72 bytes",
    );
    refused(
        &cli(&db, &["users", "add", "empty@example.com"], ""),
        1,
        "standard input is empty",
    );
    refused(
        &cli(&db, &["users", "add", "blank@example.com"], "\n"),
        1,
        "password is required",
    );
    assert_eq!(server.log_in("short@example.com", "short").status, 401);
}

#[test]
fn users_set_password_ends_sessions_and_spends_the_reset_token() {
    let (server, db) = serving(&[]);
    server.register_ok("bob@example.com", "old-pw");
    let session = server
        .log_in("bob@example.com", "old-pw")
        .session_cookie()
        .unwrap();
    let r = server.post("/reset_password", &[("email", "bob@example.com")]);
    let token = r.json["reset_token"].as_str().unwrap().to_owned();

    let run = cli(
        &db,
        &["users", "set-password", "bob@example.com"],
        "new-pw\n",
    );
    ok(&run, &["new-pw", "old-pw", &token]);
    assert!(run.stdout.contains("password set"), "{run:?}");

    assert_eq!(server.log_in("bob@example.com", "old-pw").status, 401);
    assert_eq!(server.log_in("bob@example.com", "new-pw").status, 200);
    assert_eq!(server.get("/profile", Some(&session)).status, 403);
    let r = server.put(
        "/reset_password",
        &[
            ("email", "bob@example.com"),
            ("reset_token", &token),
            ("new_password", "thief"),
        ],
    );
    assert_eq!(r.status, 403, "the reset token is spent: {}", r.text);

    refused(
        &cli(&db, &["users", "set-password", "nobody@example.com"], "x\n"),
        1,
        "no user nobody@example.com",
    );
}

#[test]
fn users_logout_ends_the_session_the_server_holds() {
    let (server, db) = serving(&[]);
    server.register_ok("carol@example.com", "pw");
    let session = server
        .log_in("carol@example.com", "pw")
        .session_cookie()
        .unwrap();
    assert_eq!(server.get("/profile", Some(&session)).status, 200);

    let run = cli(&db, &["users", "logout", "carol@example.com"], "");
    ok(&run, &[&session]);
    assert!(run.stdout.contains(": 1 live session ended"), "{run:?}");
    assert_eq!(server.get("/profile", Some(&session)).status, 403);
    assert_eq!(server.delete("/sessions", Some(&session)).status, 403);

    let run = cli(&db, &["users", "logout", "CAROL@example.com"], "");
    ok(&run, &[]);
    assert!(run.stdout.contains(": 0 live sessions ended"), "{run:?}");
    // The password still works.
    assert_eq!(server.log_in("carol@example.com", "pw").status, 200);
    refused(
        &cli(&db, &["users", "logout", "nobody@example.com"], ""),
        1,
        "no user nobody@example.com",
    );
}

#[test]
fn users_delete_then_the_email_registers_again() {
    let (server, db) = serving(&[]);
    server.register_ok("dave@example.com", "pw");
    let session = server
        .log_in("dave@example.com", "pw")
        .session_cookie()
        .unwrap();

    let run = cli(&db, &["users", "delete", "dave@example.com"], "");
    ok(&run, &[]);
    assert!(
        run.stdout.ends_with(" dave@example.com deleted\n"),
        "{run:?}"
    );
    assert_eq!(server.get("/profile", Some(&session)).status, 403);
    assert_eq!(server.log_in("dave@example.com", "pw").status, 401);
    server.register_ok("dave@example.com", "pw2");
    assert_eq!(server.log_in("dave@example.com", "pw2").status, 200);

    refused(
        &cli(&db, &["users", "delete", "nobody@example.com"], ""),
        1,
        "no user nobody@example.com",
    );
}

#[test]
fn users_list_shows_what_is_there_and_no_secret() {
    let (server, db) = serving(&[]);
    let run = cli(&db, &["users", "list"], "");
    ok(&run, &[]);
    assert_eq!(run.stdout, "", "an empty database lists nobody");

    for (email, password) in [
        ("erin@example.com", "pw-erin"),
        ("frank@example.com", "pw-frank"),
        ("grace@example.com", "pw-grace"),
    ] {
        server.register_ok(email, password);
    }
    let session = server
        .log_in("frank@example.com", "pw-frank")
        .session_cookie()
        .unwrap();
    let secrets = ["pw-erin", "pw-frank", "pw-grace", session.as_str(), "$2b$"];

    let run = cli(&db, &["users", "list"], "");
    ok(&run, &secrets);
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|l| l.split('\t').collect())
        .collect();
    let listed: Vec<(&str, &str)> = rows.iter().map(|r| (r[1], r[2])).collect();
    assert_eq!(
        listed,
        [
            ("erin@example.com", "0"),
            ("frank@example.com", "1"),
            ("grace@example.com", "0")
        ],
        "{run:?}"
    );
    let ids: Vec<i64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in id order: {ids:?}");

    let run = cli(&db, &["users", "list", "--json"], "");
    ok(&run, &secrets);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{run:?}");
    for (line, (id, (email, sessions))) in lines.iter().zip(ids.iter().zip(&listed)) {
        let fields = line.as_object().unwrap();
        assert_eq!(fields.len(), 3, "{line}");
        assert_eq!(line["id"], *id);
        assert_eq!(line["email"], *email);
        assert_eq!(line["sessions"].to_string(), *sessions);
    }

    // A session past its idle time is no longer live, by the flag's measure.
    std::thread::sleep(Duration::from_millis(1100));
    let run = cli(&db, &["users", "list", "--session-idle", "1"], "");
    ok(&run, &[]);
    assert!(run.stdout.contains("frank@example.com\t0"), "{run:?}");
}

#[test]
fn check_counts_what_the_server_holds() {
    let (server, db) = serving(&[]);
    server.register_ok("hal@example.com", "pw");
    server.register_ok("ivy@example.com", "pw");
    server.log_in_ok("hal@example.com", "pw");
    let r = server.post("/reset_password", &[("email", "ivy@example.com")]);
    let token = r.json["reset_token"].as_str().unwrap().to_owned();
    let run = cli(&db, &["check"], "");
    ok(&run, &[&token, "$2b$"]);
    let integrity = if on_postgres() {
        "integrity: not checked (PostgreSQL)"
    } else {
        "integrity: ok"
    };
    let expected = [
        integrity,
        &format!("schema version: {} (this binary's)", Db::schema_version()),
        "users: 2",
        "live sessions: 1",
        "reset tokens: 1",
    ];
    let lines: Vec<&str> = run.stdout.lines().skip(1).collect();
    assert_eq!(lines, expected, "{run:?}");
    assert!(run.stdout.starts_with("database: "), "{run:?}");
    // Sessions idle past --session-idle are not live.
    std::thread::sleep(Duration::from_millis(1100));
    let run = cli(&db, &["check", "--session-idle", "1"], "");
    ok(&run, &[]);
    assert!(run.stdout.contains("\nlive sessions: 0\n"), "{run:?}");
}

/// The pages `users list` reads (a thousand users each) join up: nobody twice, nobody missed.
#[test]
fn users_list_reads_past_a_page() {
    if on_postgres() {
        // The paging is the same SQL shape on both stores; filling a PostgreSQL database
        // from here would need the driver the tests only have with the feature.
        println!("skipped on PostgreSQL: filled through rusqlite");
        return;
    }
    let (server, db) = serving(&[]);
    server.register_ok("first@example.com", "pw");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute_batch(
            "BEGIN; \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500) \
             INSERT INTO users (email, hashed_password) \
             SELECT 'bulk' || i || '@example.com', 'x' FROM n; \
             COMMIT;",
        )
        .unwrap();
    }
    let run = cli(&db, &["users", "list"], "");
    ok(&run, &[]);
    let emails: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap())
        .collect();
    assert_eq!(emails.len(), 2501);
    let mut unique = emails.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 2501);
}

#[test]
fn bad_input_exits_2_for_usage_and_1_for_failure_with_one_line() {
    let (_server, db) = serving(&[]);
    let usage: &[(&[&str], &str)] = &[
        (&["users"], "unknown command"),
        (
            &["users", "rename", "a@b.c"],
            "unknown command \"users rename\"",
        ),
        (&["users", "add"], "users add takes EMAIL"),
        (&["users", "add", "not-an-email"], "email must contain @"),
        (
            &["users", "add", "a@b.c", "a-password"],
            "takes EMAIL, not 2 operands",
        ),
        (
            &["users", "add", "a@b.c", "--password", "x"],
            "unknown flag --password",
        ),
        (
            &["users", "list", "--bind", "127.0.0.1:0"],
            "unknown flag --bind",
        ),
        (
            &["users", "list", "--session-idle", "soon"],
            "bad value for --session-idle",
        ),
        (
            &["users", "delete", "a@b.c", "--json"],
            "unknown flag --json",
        ),
        (&["backup"], "backup takes FILE"),
        (&["check", "a.db", "b.db"], "check takes [FILE]"),
    ];
    for (args, why) in usage {
        let run = cli(&db, args, "");
        refused(&run, 2, why);
        assert_eq!(run.stdout, "", "{args:?}: {run:?}");
    }
    // A password given on the command line is refused before it can go anywhere, and is not
    // repeated in the message.
    let run = cli(&db, &["users", "add", "a@b.c", "hunter2-on-argv"], "");
    clean(&run, &["hunter2-on-argv"]);

    let dir = TempDir::new();
    let missing = dir.path().join("missing.db");
    for args in [
        &["users", "list"][..],
        &["users", "add", "a@b.c"],
        &["check"],
        &["backup", "copy.db"],
    ] {
        if on_postgres() {
            break;
        }
        refused(&cli(&missing, args, "pw\n"), 1, "no database at");
        assert!(!missing.exists(), "{args:?} created no database");
    }

    // A file that is not a database fails the check, and nothing else is claimed.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 8192]).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .args(["check"])
        .arg(&junk)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.starts_with("auth-service: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["users", "--help"],
        &["users", "add", "--help"],
        &["users", "list", "--help"],
        &["users", "delete", "--help"],
        &["users", "set-password", "--help"],
        &["users", "logout", "--help"],
        &["backup", "--help"],
        &["check", "-h"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_auth-service"))
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(stdout.contains("usage:"), "{args:?}: {stdout}");
        let words = args[..args.len() - 1].join(" ");
        assert!(
            stdout.contains(&format!("auth-service {words}")),
            "{stdout}"
        );
    }
}

/// Registers users from four threads until told to stop; each email acknowledged (200) is
/// recorded, in order.
struct Load {
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..4)
            .map(|t| {
                let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
                let client = Client::new(addr);
                std::thread::spawn(move || {
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let email = format!("load-{t}-{n}@example.com");
                        let r = client.post("/users", &[("email", &email), ("password", "pw")]);
                        if r.status == 200 {
                            acked.lock().unwrap().push(email);
                        }
                    }
                })
            })
            .collect();
        Load {
            acked,
            stop,
            threads,
        }
    }

    fn acked(&self) -> Vec<String> {
        self.acked.lock().unwrap().clone()
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// `backup FILE` of a database the server is writing to: the copy passes `check`, holds every
/// registration acknowledged before the backup started, and serves once restored.
#[test]
fn backup_under_write_load_is_consistent_complete_and_serves() {
    // All the load comes from one address: no per-address limit on registrations (a variable,
    // which a binary without such a limit ignores).
    let dir = TempDir::new();
    let db = dir.path().join("auth.db");
    let server = ChildServer::start_with_env(dir, &db, &[], &[("AUTH_MAX_REGISTRATIONS", "0")]);
    let dir = TempDir::new();
    let copy = dir.path().join("copy.db");
    if on_postgres() {
        let run = cli(&db, &["backup", copy.to_str().unwrap()], "");
        refused(&run, 1, "pg_dump");
        assert!(!copy.exists());
        return;
    }
    // Bulk, so that the copy takes a while, and registrations arriving all along.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute_batch(
            "BEGIN; \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60000) \
             INSERT INTO users (email, hashed_password) \
             SELECT 'bulk' || i || '@example.com', hex(randomblob(30)) FROM n; \
             COMMIT;",
        )
        .unwrap();
    }
    let load = Load::start(server.addr);
    let started = Instant::now();
    while load.acked().len() < 20 && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = load.acked();
    assert!(before.len() >= 20, "the load is running: {}", before.len());
    let run = cli(&db, &["backup", copy.to_str().unwrap()], "");
    let during = load.acked().len() - before.len();
    let after = load.stop();
    ok(&run, &[]);
    println!("{during} registrations acknowledged while the backup ran");
    assert!(run.stdout.starts_with("backed up "), "{run:?}");
    assert!(
        during > 0,
        "registrations were acknowledged while the backup ran"
    );

    // A second backup to the same name is refused, and the first is left as it was.
    let bytes = std::fs::read(&copy).unwrap();
    refused(
        &cli(&db, &["backup", copy.to_str().unwrap()], ""),
        1,
        "already exists; not overwritten",
    );
    assert_eq!(std::fs::read(&copy).unwrap(), bytes);

    let check = cli(&copy, &["check"], "");
    ok(&check, &[]);
    assert!(check.stdout.contains("integrity: ok\n"), "{check:?}");
    let version = format!("schema version: {} ", Db::schema_version());
    assert!(check.stdout.contains(&version), "{check:?}");
    let users: usize = check
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("users: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count of users: {check:?}"));
    assert!(users >= 60_000 + before.len(), "{check:?}");
    assert!(users <= 60_000 + after.len(), "{check:?}");
    // check FILE is the same as check --db FILE.
    let run = Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .arg("check")
        .arg(&copy)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), check.stdout);

    let listed = cli(&copy, &["users", "list", "--json"], "");
    ok(&listed, &[]);
    let in_copy: std::collections::HashSet<String> = listed
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["email"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(in_copy.len(), users);
    for email in &before {
        assert!(
            in_copy.contains(email),
            "{email}, acknowledged before the backup, is in it"
        );
    }

    // Restored: a server on the copy logs in a user from before the backup.
    drop(server);
    let restored = ChildServer::start_on(TempDir::new(), &copy, &[]);
    assert_eq!(restored.log_in(&before[0], "pw").status, 200);
    assert_eq!(restored.log_in(&before[before.len() - 1], "pw").status, 200);
}

/// On a terminal the password is asked for twice, without echo: run under `script`, which
/// gives the command a pseudo-terminal and copies everything the terminal shows to its own
/// output. The password is typed (after each prompt) and must not be among what it showed.
#[test]
fn on_a_terminal_the_password_is_asked_twice_and_never_echoed() {
    if Command::new("script").arg("--version").output().is_err() {
        println!("skipped: `script` (util-linux) is not installed, so no pseudo-terminal");
        return;
    }
    let (server, db) = serving(&[]);
    let typed = |email: &str, first: &str, second: &str| -> (Option<i32>, String) {
        let command = format!(
            "'{}' users add '{email}' --db '{}' --bcrypt-cost 4",
            env!("CARGO_BIN_EXE_auth-service"),
            test_db(&db).display()
        );
        let mut child = Command::new("script")
            .args(["--quiet", "--return", "--command", &command, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let shown = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&shown);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut stdin = child.stdin.take().unwrap();
        let wait_for = |text: &str, count: usize| {
            let started = Instant::now();
            loop {
                let seen = String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
                if seen.matches(text).count() >= count {
                    return;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "no prompt {text:?}: {seen:?}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        wait_for("password: ", 1);
        // The prompt is written just before echo is turned off: give it that moment.
        std::thread::sleep(Duration::from_millis(300));
        stdin.write_all(format!("{first}\n").as_bytes()).unwrap();
        wait_for("password again: ", 1);
        std::thread::sleep(Duration::from_millis(300));
        stdin.write_all(format!("{second}\n").as_bytes()).unwrap();
        let out = wait_bounded(child);
        drop(stdin);
        reader.join().unwrap();
        let shown = String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
        let all = format!("{shown}{}", String::from_utf8_lossy(&out.stderr));
        (out.status.code(), all)
    };

    let (code, shown) = typed("tty@example.com", "typed-Secret-1", "typed-Secret-1");
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("tty@example.com added"), "{shown}");
    assert!(
        !shown.contains("typed-Secret"),
        "the password was shown: {shown:?}"
    );
    assert_eq!(
        server.log_in("tty@example.com", "typed-Secret-1").status,
        200
    );

    let (code, shown) = typed("twice@example.com", "typed-Secret-2", "typed-Secret-3");
    assert_eq!(code, Some(1), "{shown}");
    assert!(shown.contains("the two passwords differ"), "{shown}");
    assert!(
        !shown.contains("typed-Secret"),
        "the password was shown: {shown:?}"
    );
    assert_eq!(
        server.log_in("twice@example.com", "typed-Secret-2").status,
        401
    );
}
