//! Accounts and sessions as a real auth service has them (SPEC sections 2, 4 and 8): several
//! sessions per user, listing and ending them, changing a password, deleting an account, the
//! abuse limits, re-hashing, and the races a login can run against a reset or against itself.
//! Every test runs over HTTP on whichever store the suite runs on (SQLite, or PostgreSQL with
//! `AUTH_TEST_POSTGRES`).

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Barrier};
use std::thread::{self, sleep};
use std::time::Duration;

use auth_service::auth::digest;
use auth_service::Db;
use support::*;

const BOB: &str = "bob@example.com";

fn address(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `GET /sessions` for `session`: each session's (handle, current).
fn listed(s: &Client, session: &str) -> Vec<(String, bool)> {
    let r = s.get("/sessions", Some(session));
    assert_eq!(r.status, 200, "{r:?}");
    r.json["sessions"]
        .as_array()
        .expect("a list of sessions")
        .iter()
        .map(|s| {
            let handle = s["id"].as_str().expect("an id").to_owned();
            (handle, s["current"].as_bool().expect("current"))
        })
        .collect()
}

/// The statuses of `GET /profile` for each session.
fn alive(s: &Client, sessions: &[&str]) -> Vec<u16> {
    sessions.iter().map(|id| s.profile(id).status).collect()
}

#[test]
fn two_sessions_live_at_once_and_the_least_recently_used_is_evicted() {
    // An idle clock refreshed every second (a quarter of the idle time), so that use counts.
    let s = TestServer::with(|c| {
        c.policy.max_sessions = 2;
        c.policy.session_idle = 4;
    });
    let phone = s.register_and_log_in(BOB, "pw");
    let laptop = s.log_in_ok(BOB, "pw");
    assert_eq!(alive(&s, &[&phone, &laptop]), [200, 200]);

    // The phone is used after the laptop; a third login ends the laptop, the least recently
    // used, not the oldest.
    sleep(Duration::from_millis(1100));
    assert_eq!(s.profile(&phone).status, 200);
    let tablet = s.log_in_ok(BOB, "pw");
    assert_eq!(alive(&s, &[&phone, &laptop, &tablet]), [200, 403, 200]);
}

#[test]
fn logout_ends_only_the_cookies_session() {
    let s = TestServer::start();
    let phone = s.register_and_log_in(BOB, "pw");
    let laptop = s.log_in_ok(BOB, "pw");
    let r = s.log_out(&phone);
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(alive(&s, &[&phone, &laptop]), [403, 200]);
}

#[test]
fn delete_sessions_ends_others_or_all_by_scope() {
    let s = TestServer::start();
    let a = s.register_and_log_in(BOB, "pw");
    let b = s.log_in_ok(BOB, "pw");
    let c = s.log_in_ok(BOB, "pw");

    let r = s.delete("/sessions?scope=nonsense", Some(&a));
    expect(&r, 400, r#"{"message":"scope must be others or all"}"#);
    assert_eq!(alive(&s, &[&a, &b, &c]), [200, 200, 200]);

    let r = s.delete("/sessions?scope=others", Some(&a));
    expect(&r, 200, r#"{"ended":2,"message":"other sessions ended"}"#);
    assert_eq!(alive(&s, &[&a, &b, &c]), [200, 403, 403]);

    let d = s.log_in_ok(BOB, "pw");
    let r = s.delete("/sessions?scope=all", Some(&a));
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(r.header("location"), Some("/"));
    assert_eq!(
        r.session_cookie().as_deref(),
        Some(""),
        "the cookie is cleared"
    );
    assert_eq!(alive(&s, &[&a, &d]), [403, 403]);

    for scope in ["", "?scope=others", "?scope=all"] {
        let r = s.delete(&format!("/sessions{scope}"), Some(&a));
        assert_eq!(r.status, 403, "{scope}: {r:?}");
        assert_eq!(s.delete(&format!("/sessions{scope}"), None).status, 403);
    }
}

#[test]
fn the_session_list_shows_public_handles_never_ids_or_digests() {
    let s = TestServer::start();
    let first = s.register_and_log_in(BOB, "pw");
    let second = s.log_in_ok(BOB, "pw");
    let r = s.get("/sessions", Some(&second));
    assert_eq!(r.status, 200, "{r:?}");
    for secret in [&first, &second, &digest(&first), &digest(&second)] {
        assert!(!r.text.contains(secret.as_str()), "{secret} in {}", r.text);
    }
    let sessions = r.json["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    for session in sessions {
        let handle = session["id"].as_str().unwrap();
        assert!(
            handle.len() == 32 && handle.bytes().all(|b| b.is_ascii_hexdigit()),
            "{handle}"
        );
        for time in ["created_at", "last_seen_at"] {
            let text = session[time].as_str().unwrap();
            // 2026-12-01T23:59:07Z
            assert!(
                text.len() == 20 && text.as_bytes()[10] == b'T' && text.ends_with('Z'),
                "{time}: {text}"
            );
        }
    }
    // Most recent first: the one asking was made last, and is marked.
    assert_eq!(sessions[0]["current"], true);
    assert_eq!(sessions[1]["current"], false);
    assert_eq!(
        listed(&s, &first)
            .iter()
            .filter(|(_, current)| *current)
            .count(),
        1
    );
    assert_eq!(s.get("/sessions", None).status, 403);
}

#[test]
fn a_session_ends_by_its_handle_and_only_its_owner_can_end_it() {
    let s = TestServer::start();
    let phone = s.register_and_log_in(BOB, "pw");
    let laptop = s.log_in_ok(BOB, "pw");
    let eve = s.register_and_log_in("eve@example.com", "pw");
    let handles = listed(&s, &phone);
    let laptop_handle = &handles.iter().find(|(_, current)| !current).unwrap().0;
    let phone_handle = &handles.iter().find(|(_, current)| *current).unwrap().0;

    // Eve cannot end Bob's session, even knowing its handle.
    let r = s.delete(&format!("/sessions/{phone_handle}"), Some(&eve));
    expect(&r, 404, r#"{"message":"session not found"}"#);
    let r = s.delete("/sessions/0123456789abcdef0123456789abcdef", Some(&phone));
    expect(&r, 404, r#"{"message":"session not found"}"#);
    assert_eq!(
        s.delete(&format!("/sessions/{laptop_handle}"), None).status,
        403
    );
    assert_eq!(alive(&s, &[&phone, &laptop, &eve]), [200, 200, 200]);

    let r = s.delete(&format!("/sessions/{laptop_handle}"), Some(&phone));
    expect(&r, 200, r#"{"message":"session ended"}"#);
    assert_eq!(alive(&s, &[&phone, &laptop, &eve]), [200, 403, 200]);
    assert_eq!(listed(&s, &phone).len(), 1);
}

#[test]
fn a_password_change_ends_the_other_sessions_and_keeps_this_one() {
    let s = TestServer::with(|c| c.policy.min_password_length = 4);
    let phone = s.register_and_log_in(BOB, "old-pw");
    let laptop = s.log_in_ok(BOB, "old-pw");
    let change = |session: Option<&str>, current: &str, new: &str| {
        let mut headers = Vec::new();
        let cookie = session.map(|id| format!("session_id={id}"));
        if let Some(cookie) = &cookie {
            headers.push(("Cookie", cookie.as_str()));
        }
        let body = form(&[("password", current), ("new_password", new)]);
        s.send("PUT", "/password", &headers, body.as_bytes())
    };

    assert_eq!(change(None, "old-pw", "new-pw").status, 403);
    let r = change(Some(&phone), "wrong", "new-pw");
    expect(&r, 401, r#"{"message":"wrong email or password"}"#);
    let r = change(Some(&phone), "old-pw", "new");
    expect(
        &r,
        400,
        r#"{"message":"new_password is shorter than 4 characters"}"#,
    );
    assert_eq!(alive(&s, &[&phone, &laptop]), [200, 200], "nothing changed");

    let r = change(Some(&phone), "old-pw", "new-pw");
    expect(
        &r,
        200,
        r#"{"email":"bob@example.com","message":"Password updated"}"#,
    );
    assert_eq!(alive(&s, &[&phone, &laptop]), [200, 403]);
    assert_eq!(s.log_in(BOB, "old-pw").status, 401);
    assert_eq!(s.log_in(BOB, "new-pw").status, 200);
}

#[test]
fn deleting_the_account_ends_everything_and_frees_the_email() {
    let s = TestServer::start();
    let phone = s.register_and_log_in(BOB, "pw");
    let laptop = s.log_in_ok(BOB, "pw");
    let delete = |session: &str, password: &str| {
        let cookie = format!("session_id={session}");
        let body = form(&[("password", password)]);
        s.send(
            "DELETE",
            "/profile",
            &[("Cookie", &cookie)],
            body.as_bytes(),
        )
    };
    expect(
        &delete(&phone, "wrong"),
        401,
        r#"{"message":"wrong email or password"}"#,
    );
    assert_eq!(alive(&s, &[&phone, &laptop]), [200, 200]);

    let r = delete(&phone, "pw");
    expect(
        &r,
        200,
        r#"{"email":"bob@example.com","message":"user deleted"}"#,
    );
    assert_eq!(
        r.session_cookie().as_deref(),
        Some(""),
        "the cookie is cleared"
    );
    assert_eq!(alive(&s, &[&phone, &laptop]), [403, 403]);
    assert_eq!(delete(&laptop, "pw").status, 403);
    assert_eq!(s.log_in(BOB, "pw").status, 401);
    assert_eq!(s.reset_token(BOB).status, 403, "no user, no token");
    assert_eq!(s.register(BOB, "another").status, 200, "the email is free");
    assert_eq!(s.log_in(BOB, "another").status, 200);
}

#[test]
fn wrong_current_passwords_are_throttled_as_logins_are() {
    let s = TestServer::with(|c| c.policy.max_login_failures = 2);
    let session = s.register_and_log_in(BOB, "pw");
    let cookie = format!("session_id={session}");
    let wrong = form(&[("password", "wrong"), ("new_password", "new-pw")]);
    let put = || s.send("PUT", "/password", &[("Cookie", &cookie)], wrong.as_bytes());
    assert_eq!(put().status, 401);
    assert_eq!(put().status, 401);
    let r = put();
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    // The same count as logins: the pair is throttled for both.
    let body = form(&[("password", "pw")]);
    let r = s.send(
        "DELETE",
        "/profile",
        &[("Cookie", &cookie)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(s.log_in(BOB, "pw").status, 429);
}

#[test]
fn a_login_rehashes_a_stored_hash_of_another_cost() {
    let cost_of = |s: &TestServer| {
        let db = Db::open(&s.db_path()).unwrap();
        let user = db.find_user_by(&[("email", BOB.into())]).unwrap();
        user.hashed_password[4..6].to_owned()
    };
    let mut s = TestServer::start();
    s.register_ok(BOB, "pw");
    assert_eq!(cost_of(&s), "04");

    s.config.policy.bcrypt_cost = 5;
    let s = s.restart();
    assert_eq!(s.log_in(BOB, "pw").status, 200);
    assert_eq!(cost_of(&s), "05", "the login raised the stored cost");
    assert_eq!(s.log_in(BOB, "pw").status, 200, "the password still works");
    assert_eq!(s.log_in(BOB, "wrong").status, 401);
}

#[test]
fn registrations_are_limited_per_address() {
    let s = TestServer::with(|c| {
        c.policy.max_registrations = 3;
        c.policy.registration_window = 300;
    });
    let flooder = s.from(address(2));
    for i in 0..3 {
        let r = flooder.register(&format!("u{i}@example.com"), "pw");
        assert_eq!(r.status, 200, "{r:?}");
    }
    // Every attempt counts, a refused one too.
    let r = flooder.register("u9@example.com", "pw");
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.json["message"], "too many requests, try again later");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        s.from(address(3))
            .register("other@example.com", "pw")
            .status,
        200,
        "another address is not affected"
    );
}

#[test]
fn reset_requests_are_limited_per_email_and_per_address() {
    let s = TestServer::with(|c| {
        c.policy.max_reset_requests = 2;
        c.policy.reset_window = 900;
    });
    s.register_ok(BOB, "pw");
    s.register_ok("carol@example.com", "pw");
    let here = s.from(address(2));
    assert_eq!(here.reset_token(BOB).status, 200);
    assert_eq!(here.reset_token(BOB).status, 200);
    let r = s.from(address(3)).reset_token(BOB);
    assert_eq!(r.status, 429, "per email, whatever the address: {r:?}");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    assert_eq!(
        here.reset_token("carol@example.com").status,
        200,
        "another email is not affected"
    );

    // Ten times the per-email limit per address, known emails or not.
    for i in 0..17 {
        let r = here.reset_token(&format!("nobody{i}@example.com"));
        assert_eq!(r.status, 403, "{i}: {r:?}");
    }
    let r = here.reset_token("nobody-more@example.com");
    assert_eq!(r.status, 429, "20 from one address: {r:?}");
    assert_eq!(
        s.from(address(4)).reset_token("carol@example.com").status,
        200,
        "another address is not affected"
    );
}

#[test]
fn forty_parallel_wrong_passwords_get_exactly_five_401s() {
    let s = TestServer::start();
    s.register_ok(BOB, "right");
    let barrier = Arc::new(Barrier::new(40));
    let attempts: Vec<_> = (0..40)
        .map(|_| {
            let (client, barrier) = (s.from(address(2)), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                client.log_in(BOB, "wrong").status
            })
        })
        .collect();
    let mut statuses: Vec<u16> = attempts.into_iter().map(|t| t.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 401).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        35,
        "{statuses:?}"
    );
}

#[test]
fn an_ipv6_64_and_a_mapped_ipv4_address_count_as_one_address() {
    let s = TestServer::with(|c| {
        c.trust_proxy = true;
        c.policy.max_login_failures = 3;
    });
    s.register_ok(BOB, "right");
    let from = |hop: &str| {
        let form = [("email", BOB), ("password", "wrong")];
        s.post_with("/sessions", &[("X-Forwarded-For", hop)], &form)
            .status
    };
    for hop in [
        "2001:db8:1:2::1",
        "2001:db8:1:2:aaaa::2",
        "2001:db8:1:2:ffff:ffff:ffff:3",
    ] {
        assert_eq!(from(hop), 401, "{hop}");
    }
    assert_eq!(from("2001:db8:1:2::99"), 429, "the same /64");
    assert_eq!(from("2001:db8:1:3::1"), 401, "another /64");

    for _ in 0..3 {
        assert_eq!(from("::ffff:192.0.2.9"), 401);
    }
    assert_eq!(from("192.0.2.9"), 429, "the mapped address is the IPv4 one");
}

/// A login that checked the old password while a reset replaced it never keeps a session: at
/// a cost where bcrypt runs long enough for the two to overlap, each login either fails or
/// gets a session the reset has ended. (Writing the session unconditionally after bcrypt left
/// a working session in 6 trials of 6 at cost 12.)
#[test]
fn a_login_racing_a_reset_never_keeps_a_session() {
    let s = TestServer::with(|c| c.policy.bcrypt_cost = 8);
    for trial in 0..12 {
        let email = format!("racer{trial}@example.com");
        s.register_ok(&email, "old password");
        let token = s.reset_token_ok(&email);
        let login = {
            let (client, email) = (s.from(address(2)), email.clone());
            thread::spawn(move || client.log_in(&email, "old password"))
        };
        // The reset lands while the login is in bcrypt (a verification takes about as long
        // as the reset's hash, so the two overlap one way or the other).
        sleep(Duration::from_millis(trial % 4 * 3));
        assert_eq!(s.reset(&email, &token, "new password").status, 200);
        let r = login.join().unwrap();
        if let Some(session) = r.session_cookie().filter(|_| r.status == 200) {
            assert_eq!(
                s.profile(&session).status,
                403,
                "trial {trial}: a live session"
            );
        } else {
            assert_eq!(r.status, 401, "trial {trial}: {r:?}");
        }
        assert_eq!(s.log_in(&email, "new password").status, 200);
    }
}

#[test]
fn with_reset_keeps_sessions_a_client_logs_out_with_its_old_cookie_after_a_reset() {
    // The reference's client order: log in, reset, then log out with the cookie it holds.
    let client = |s: &TestServer| {
        let session = s.register_and_log_in(BOB, "old");
        let token = s.reset_token_ok(BOB);
        assert_eq!(s.reset(BOB, &token, "new").status, 200);
        s.log_out(&session).status
    };
    let kept = TestServer::with(|c| c.policy.reset_keeps_sessions = true);
    assert_eq!(client(&kept), 302, "the reference's behaviour");
    let ended = TestServer::start();
    assert_eq!(client(&ended), 403, "by default a reset ends every session");
}

#[test]
fn the_idle_clock_runs_from_each_sessions_last_use_to_the_millisecond() {
    let s = TestServer::with(|c| c.policy.session_idle = 3);
    let used = s.register_and_log_in(BOB, "pw");
    let unused = s.log_in_ok(BOB, "pw");
    sleep(Duration::from_millis(1500));
    assert_eq!(s.profile(&used).status, 200);
    // 3.3 s after login: the used one is 1.8 s idle, the unused one 3.3 s.
    sleep(Duration::from_millis(1800));
    assert_eq!(alive(&s, &[&used, &unused]), [200, 403]);
    sleep(Duration::from_millis(3200));
    assert_eq!(s.profile(&used).status, 403);
}

#[test]
fn an_upgrade_from_schema_version_1_keeps_the_sessions_open_before_it() {
    let dir = TempDir::new();
    let db = dir.path().join("auth.db");
    // A database as version 1 left it, with a user logged in.
    let session = auth_service::Auth::generate_uuid();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let (schema, version) = if on_postgres() {
        (
            include_str!("../schema.postgres.sql"),
            "CREATE TABLE schema_version (version BIGINT NOT NULL); \
             INSERT INTO schema_version (version) VALUES (1);",
        )
    } else {
        (include_str!("../schema.sql"), "PRAGMA user_version = 1;")
    };
    execute(
        &db,
        &format!(
            "{schema}\n{version}\nINSERT INTO users (email, hashed_password, session_id, \
             session_created_at, session_seen_at) VALUES ('{BOB}', '{hash}', '{}', {now}, {now});",
            digest(&session)
        ),
    );
    assert_eq!(schema_version(&db), 1);

    let s = TestServer::with(|c| c.db = test_db(&db));
    assert_eq!(schema_version(&db), Db::schema_version());
    expect(&s.profile(&session), 200, r#"{"email":"bob@example.com"}"#);
    assert_eq!(listed(&s, &session).len(), 1);
    assert_eq!(s.log_out(&session).status, 302);
    assert_eq!(s.profile(&session).status, 403);
    assert_eq!(s.log_in(BOB, "pw").status, 200);
}
