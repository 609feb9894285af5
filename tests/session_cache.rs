//! The cache of live sessions (src/session_cache.rs) is exactly as correct as the store: what
//! this process writes, what another process writes, and the clock are each seen on the very
//! next request. Each test first shows the session served from the cache (the
//! `auth_session_cache_total` counters move), then changes the store, then asks again.

mod support;

use std::time::Duration;

use auth_service::auth::digest;
use support::*;

const BOB: &str = "bob@example.com";

/// `GET /profile` answers of `session` served from the cache so far.
fn hits(s: &TestServer) -> u64 {
    counter(s, r#"auth_session_cache_total{result="hit"}"#)
}

fn counter(s: &TestServer, series: &str) -> u64 {
    let text = s.server().metrics().render();
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A server with a logged-in Bob whose session has been read once, so the next request can be
/// a hit; and the session id.
fn cached() -> (TestServer, String) {
    let s = TestServer::start();
    let session = s.register_and_log_in(BOB, "pw");
    expect(&s.profile(&session), 200, r#"{"email":"bob@example.com"}"#);
    let before = hits(&s);
    expect(&s.profile(&session), 200, r#"{"email":"bob@example.com"}"#);
    if !on_postgres() {
        assert_eq!(hits(&s), before + 1, "the second read is the cache's");
    }
    (s, session)
}

#[test]
fn on_postgresql_nothing_is_cached() {
    let (s, _session) = cached();
    if on_postgres() {
        assert_eq!(hits(&s), 0);
    }
}

#[test]
fn every_write_of_this_process_is_seen_on_the_next_request() {
    // A logout.
    let (s, session) = cached();
    assert_eq!(s.log_out(&session).status, 302);
    assert_eq!(s.profile(&session).status, 403);

    // A reset ends every session.
    let (s, session) = cached();
    let token = s.reset_token_ok(BOB);
    assert_eq!(s.reset(BOB, &token, "new").status, 200);
    assert_eq!(s.profile(&session).status, 403);

    // Another session ends this one by its handle; a deleted account ends all.
    let (s, session) = cached();
    let other = s.log_in_ok(BOB, "pw");
    let handle = s.get("/sessions", Some(&session)).json["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(s.profile(&session).status, 200);
    let r = s.delete(&format!("/sessions/{handle}"), Some(&other));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.profile(&session).status, 403);
    let body = form(&[("password", "pw")]);
    let cookie = format!("session_id={other}");
    let r = s.send(
        "DELETE",
        "/profile",
        &[("Cookie", &cookie)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.profile(&other).status, 403);
}

#[test]
fn a_write_of_another_process_is_seen_on_the_next_request() {
    // Another connection, in this test's process: the session's row deleted behind the
    // server's back, as a shell command or a second instance would.
    let (s, session) = cached();
    execute(
        &s.db_path(),
        &format!("DELETE FROM sessions WHERE digest = '{}'", digest(&session)),
    );
    assert_eq!(s.profile(&session).status, 403);

    // The operator's own command, another process.
    let (s, session) = cached();
    let run = std::process::Command::new(server_binary())
        .args(["users", "logout", BOB, "--db"])
        .arg(test_db(&s.db_path()))
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    assert_eq!(s.profile(&session).status, 403);

    // A change that is not about sessions at all (the email of the user) shows too.
    let (s, session) = cached();
    execute(
        &s.db_path(),
        "UPDATE users SET email = 'robert@example.com' WHERE email = 'bob@example.com'",
    );
    expect(
        &s.profile(&session),
        200,
        r#"{"email":"robert@example.com"}"#,
    );
}

#[test]
fn expiry_is_judged_at_each_request_not_cached() {
    let s = TestServer::with(|c| c.policy.session_ttl = 2);
    let session = s.register_and_log_in(BOB, "pw");
    assert_eq!(s.profile(&session).status, 200);
    assert_eq!(s.profile(&session).status, 200);
    if !on_postgres() {
        assert!(hits(&s) > 0, "the session is in the cache");
    }
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(s.profile(&session).status, 403, "past --session-ttl");
}
