//! Two instances of the real binary on different ports, one PostgreSQL database between them:
//! what a user sees does not depend on which instance a load balancer picks.
//!
//! These need a PostgreSQL server, so they are ignored by a plain `cargo test` (which lists them
//! as ignored rather than passing them unrun). `.ci/postgres.sh` runs them:
//!
//! ```text
//! AUTH_TEST_POSTGRES=postgres://... cargo test --features postgres --test multi_instance -- --include-ignored
//! ```
//!
//! (see `tests/support/store.rs`). Run without `AUTH_TEST_POSTGRES`, each fails saying so.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

/// Fails the test unless the tests run on PostgreSQL: one database between instances needs it.
#[track_caller]
fn need_postgres() {
    assert!(
        on_postgres(),
        "set {POSTGRES_VAR} (and --features postgres) to run this test: see .ci/postgres.sh"
    );
}

/// Two instances (A, B) on one database.
#[track_caller]
fn two_instances(args: &[&str]) -> (ChildServer, ChildServer, PathBuf) {
    need_postgres();
    let dir = TempDir::new();
    let db = dir.path().join("auth.db");
    let a = ChildServer::start_on(dir, &db, args);
    let b = ChildServer::start_on(TempDir::new(), &db, args);
    assert_ne!(a.addr, b.addr);
    (a, b, db)
}

#[test]
#[ignore = "needs AUTH_TEST_POSTGRES: run by .ci/postgres.sh"]
fn a_session_from_one_instance_is_valid_on_the_other_until_ended_on_either() {
    let (a, b, _db) = two_instances(&[]);
    let session = a.register_and_log_in("bob@example.com", "hunter2");
    let r = b.profile(&session);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["email"], "bob@example.com");

    // A logout through B ends the session on A too.
    assert_eq!(b.log_out(&session).status, 302);
    assert_eq!(a.profile(&session).status, 403);
    assert_eq!(b.profile(&session).status, 403);
    assert_eq!(a.log_out(&session).status, 403);

    // A login through B adds a session beside the one A handed out (several per user), and
    // ending one through either instance leaves the other.
    let on_a = a.log_in_ok("bob@example.com", "hunter2");
    let on_b = b.log_in_ok("bob@example.com", "hunter2");
    assert_eq!(a.profile(&on_a).status, 200);
    assert_eq!(a.profile(&on_b).status, 200);
    assert_eq!(a.log_out(&on_b).status, 302);
    assert_eq!(b.profile(&on_b).status, 403);
    assert_eq!(b.profile(&on_a).status, 200);
}

#[test]
#[ignore = "needs AUTH_TEST_POSTGRES: run by .ci/postgres.sh"]
fn a_password_reset_through_one_instance_holds_on_the_other() {
    let (a, b, _db) = two_instances(&[]);
    let session = a.register_and_log_in("carol@example.com", "old password");
    let token = a.reset_token_ok("carol@example.com");

    // The token A issued is good on B, and the reset there ends the session A started.
    let reset = |server: &ChildServer| server.reset("carol@example.com", &token, "new password");
    assert_eq!(reset(&b).status, 200);
    assert_eq!(a.profile(&session).status, 403);
    assert_eq!(b.profile(&session).status, 403);

    // Spent everywhere: a replay on A is refused; only the new password logs in, on either.
    assert_eq!(reset(&a).status, 403);
    assert_eq!(a.log_in("carol@example.com", "old password").status, 401);
    a.log_in_ok("carol@example.com", "new password");
    b.log_in_ok("carol@example.com", "new password");

    // A newer token requested on B replaces the one requested on A.
    let stale = a.reset_token_ok("carol@example.com");
    let fresh = b.reset_token_ok("carol@example.com");
    assert_eq!(a.reset("carol@example.com", &stale, "x").status, 403);
    assert_eq!(a.reset("carol@example.com", &fresh, "x").status, 200);
}

#[test]
#[ignore = "needs AUTH_TEST_POSTGRES: run by .ci/postgres.sh"]
fn racing_registrations_of_one_email_across_instances_admit_exactly_one() {
    let (a, b, db) = two_instances(&[]);
    let addrs = [a.addr, b.addr];
    let start = std::sync::Barrier::new(40);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let (addr, start) = (addrs[i % 2], &start);
                scope.spawn(move || {
                    let client = Client::new(addr);
                    // The same address in a different ASCII case each time.
                    let email = if i % 3 == 0 {
                        "Race@Example.com"
                    } else if i % 3 == 1 {
                        "race@example.com"
                    } else {
                        "RACE@EXAMPLE.COM"
                    };
                    start.wait();
                    register_until_answered(&client, email)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 400).count();
    assert_eq!((created, refused), (1, 39), "statuses: {statuses:?}");
    let rows = postgres_query(
        &db,
        "SELECT count(*) FROM users WHERE lower(email) = 'race@example.com'",
    );
    assert_eq!(rows, ["1"]);
}

#[test]
#[ignore = "needs AUTH_TEST_POSTGRES: run by .ci/postgres.sh"]
fn failed_logins_split_across_instances_are_throttled_at_the_same_count_as_on_one() {
    let (a, b, _db) = two_instances(&["--max-login-failures", "4"]);
    let one = ChildServer::start(&["--max-login-failures", "4"]);
    let alone = failures_until_throttled(&[&one]);
    let split = failures_until_throttled(&[&a, &b]);
    assert_eq!(alone, 4, "one instance lets through exactly the limit");
    assert_eq!(split, alone, "two instances count as one");

    // Throttled on both now, even with the right password, and for this pair only.
    for server in [&a, &b] {
        let r = server.log_in("dave@example.com", "right");
        assert_eq!(r.status, 429, "{}", r.text);
        assert!(r.header("retry-after").is_some());
    }
    let from_elsewhere = b
        .from("127.0.0.2".parse().unwrap())
        .log_in("dave@example.com", "right");
    assert_eq!(from_elsewhere.status, 200, "{from_elsewhere:?}");
}

#[test]
#[ignore = "needs AUTH_TEST_POSTGRES: run by .ci/postgres.sh"]
fn an_active_session_stays_alive_across_instances_and_idles_out_on_both() {
    let (a, b, _db) = two_instances(&["--session-idle", "6"]);
    let session = a.register_and_log_in("erin@example.com", "pw");
    // Used every second, alternately on each instance, for longer than the idle limit: each
    // instance's refresh of the idle clock (written every half idle time) is seen by the
    // other. The margins hold with a second of delay per request on a loaded machine.
    for server in [&b, &a, &b, &a, &b, &a, &b, &a] {
        std::thread::sleep(Duration::from_secs(1));
        let r = server.profile(&session);
        assert_eq!(r.status, 200, "{}", r.text);
    }
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(a.profile(&session).status, 403);
    assert_eq!(b.profile(&session).status, 403);
}

#[test]
#[ignore = "needs AUTH_TEST_POSTGRES: run by .ci/postgres.sh"]
fn requests_succeed_after_the_database_ends_every_connection() {
    let (a, b, db) = two_instances(&[]);
    let session = a.register_and_log_in("frank@example.com", "pw");
    let kill_all = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                    WHERE datname = current_database() AND pid <> pg_backend_pid()";
    let killed = postgres_query(&db, kill_all);
    assert!(
        killed.len() >= 16,
        "both instances' workers were connected: {killed:?}"
    );
    // Every worker finds its connection gone, reconnects and answers as if nothing happened.
    for i in 0..40 {
        let server = if i % 2 == 0 { &a } else { &b };
        let r = server.profile(&session);
        assert_eq!(r.status, 200, "request {i}: {}", r.text);
    }
    postgres_query(&db, kill_all);
    assert_eq!(a.get("/health", None).status, 200);
    b.register_ok("grace@example.com", "pw");
    for server in [&a, &b] {
        assert!(!server.output().contains(" 500 "), "{}", server.output());
    }
}

#[test]
#[ignore = "needs AUTH_TEST_POSTGRES: run by .ci/postgres.sh"]
fn instances_starting_together_on_an_empty_database_migrate_it_once() {
    need_postgres();
    let dir = TempDir::new();
    let db = dir.path().join("auth.db");
    let servers: Vec<ChildServer> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| ChildServer::start_on(TempDir::new(), &db, &[])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(schema_version(&db), auth_service::Db::schema_version());
    for (i, server) in servers.iter().enumerate() {
        let email = format!("user{i}@example.com");
        server.register_and_log_in(&email, "pw");
    }
    // And one more, later, finds it current and changes nothing.
    let late = ChildServer::start_on(dir, &db, &[]);
    assert_eq!(late.log_in("user0@example.com", "pw").status, 200);
    assert_eq!(
        postgres_query(&db, "SELECT count(*) FROM schema_version"),
        ["1"]
    );
}

#[test]
#[ignore = "needs AUTH_TEST_POSTGRES: run by .ci/postgres.sh"]
fn an_instance_refuses_a_database_that_a_newer_version_migrated() {
    need_postgres();
    let dir = TempDir::new();
    let db = dir.path().join("auth.db");
    ChildServer::start_on(TempDir::new(), &db, &[]).register_and_log_in("hal@example.com", "pw");
    let newer = auth_service::Db::schema_version() + 1;
    set_schema_version(&db, newer);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .args(["--bind", "127.0.0.1:0", "--db"])
        .arg(test_db(&db))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "database schema version {newer} is newer than this binary supports"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
    // Refused, not touched.
    assert_eq!(schema_version(&db), newer);
    let users = postgres_query(&db, "SELECT email FROM users");
    assert_eq!(users, ["hal@example.com"]);
}

/// Registers `email`, waiting out 503s (the bcrypt queue shedding load, as a client that
/// honours `Retry-After` would); the final status.
fn register_until_answered(client: &Client, email: &str) -> u16 {
    let register = || client.register(email, "pw").status;
    poll(Duration::from_secs(30), || {
        Some(register()).filter(|s| *s != 503)
    })
    .unwrap_or_else(register)
}

/// Registers dave on the first server, then fails to log in as him round-robin across
/// `servers` until one answers 429; how many failures were let through (answered 401).
fn failures_until_throttled(servers: &[&ChildServer]) -> usize {
    servers[0].register_ok("dave@example.com", "right");
    for attempt in 0..50 {
        let r = servers[attempt % servers.len()].log_in("dave@example.com", "wrong");
        match r.status {
            401 => continue,
            429 => return attempt,
            other => panic!("attempt {attempt}: {other} {}", r.text),
        }
    }
    panic!("never throttled");
}
