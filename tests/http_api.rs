//! Every route of the HTTP API as a client of the reference would see it: the status, the exact
//! JSON body, the headers that matter. What a user does (registering, logging in, the session
//! cookie, resets), bodies and connections, restarts and concurrency go over real HTTP, each
//! test on a server of its own on a free port with its own temporary database; routing and the
//! validation of fields, which need no socket, go straight through `app::handle` in this
//! process (the last section).

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use auth_service::app::{Context, Reply, Request};
use support::*;

fn created(email: &str) -> String {
    format!(r#"{{"email":"{email}","message":"user created"}}"#)
}

fn logged_in(email: &str) -> String {
    format!(r#"{{"email":"{email}","message":"logged in"}}"#)
}

#[test]
fn root_greets_in_french() {
    let s = TestServer::start();
    expect(&s.get("/", None), 200, r#"{"message":"Bienvenue"}"#);
}

#[test]
fn health_answers_ok_while_the_database_does() {
    let s = TestServer::start();
    expect(&s.get("/health", None), 200, r#"{"status":"ok"}"#);
}

#[test]
fn register_creates_a_user_once_in_any_case() {
    let s = TestServer::start();
    let r = s.register("Bob@Example.com", "hunter2");
    expect(&r, 200, &created("Bob@Example.com"));

    for taken in ["Bob@Example.com", "bob@example.com", "BOB@EXAMPLE.COM"] {
        let r = s.register(taken, "other");
        expect(&r, 400, r#"{"message":"email already registered"}"#);
    }
    // The first registration still holds: its password logs in, the others' do not.
    let r = s.log_in("bob@example.com", "hunter2");
    assert_eq!(r.status, 200, "{r:?}");
    let r = s.log_in("bob@example.com", "other");
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn log_in_sets_the_session_cookie() {
    let s = TestServer::start();
    s.register_ok("bob@example.com", "pw");
    let r = s.log_in("bob@example.com", "pw");
    expect(&r, 200, &logged_in("bob@example.com"));

    let cookie = r.header("set-cookie").expect("a Set-Cookie header");
    let id = r.session_cookie().unwrap();
    assert!(is_uuid_v4(&id), "session id {id:?} is a UUID v4");
    assert_eq!(
        cookie,
        format!("session_id={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400")
    );
    expect(&s.profile(&id), 200, r#"{"email":"bob@example.com"}"#);
}

#[test]
fn log_in_in_another_case_answers_with_the_email_as_given() {
    let s = TestServer::start();
    s.register_ok("bob@example.com", "pw");
    let r = s.log_in("BOB@example.com", "pw");
    expect(&r, 200, &logged_in("BOB@example.com"));
    // The profile shows the address as registered.
    let id = r.session_cookie().unwrap();
    expect(&s.profile(&id), 200, r#"{"email":"bob@example.com"}"#);
}

#[test]
fn log_in_refuses_a_wrong_password_and_an_unknown_email_alike() {
    let s = TestServer::start();
    s.register_ok("bob@example.com", "pw");
    let wrong = s.log_in("bob@example.com", "nope");
    let unknown = s.log_in("eve@example.com", "pw");
    expect(&wrong, 401, r#"{"message":"wrong email or password"}"#);
    expect(&unknown, 401, &wrong.text);
    assert_eq!(wrong.header("set-cookie"), None);
    assert_eq!(unknown.header("set-cookie"), None);
}

#[test]
fn with_max_sessions_1_a_new_login_replaces_the_old_session() {
    let s = TestServer::with(|c| c.policy.max_sessions = 1);
    let first = s.register_and_log_in("bob@example.com", "pw");
    let r = s.log_in("bob@example.com", "pw");
    let second = r.session_cookie().unwrap();
    assert_ne!(first, second);
    assert_eq!(s.profile(&first).status, 403);
    assert_eq!(s.profile(&second).status, 200);
}

#[test]
fn log_out_redirects_home_and_clears_the_cookie() {
    let s = TestServer::start();
    let id = s.register_and_log_in("bob@example.com", "pw");
    let r = s.log_out(&id);
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(r.header("location"), Some("/"));
    assert_eq!(
        r.header("set-cookie"),
        Some("session_id=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));

    // The session is over on the server, not only in the browser.
    expect(&s.profile(&id), 403, r#"{"message":"no valid session"}"#);
    expect(&s.log_out(&id), 403, r#"{"message":"no valid session"}"#);
}

#[test]
fn log_out_without_a_live_session_is_forbidden() {
    let s = TestServer::start();
    s.register_and_log_in("bob@example.com", "pw");
    let forbidden = r#"{"message":"no valid session"}"#;
    expect(&s.delete("/sessions", None), 403, forbidden);
    expect(&s.log_out("not-a-session"), 403, forbidden);
    expect(
        &s.log_out(&auth_service::Auth::generate_uuid()),
        403,
        forbidden,
    );
}

#[test]
fn profile_needs_a_live_session() {
    let s = TestServer::start();
    let id = s.register_and_log_in("bob@example.com", "pw");
    expect(&s.profile(&id), 200, r#"{"email":"bob@example.com"}"#);
    let forbidden = r#"{"message":"no valid session"}"#;
    expect(&s.get("/profile", None), 403, forbidden);
    expect(&s.profile(""), 403, forbidden);
    expect(
        &s.profile(&auth_service::Auth::generate_uuid()),
        403,
        forbidden,
    );
}

#[test]
fn profile_finds_the_cookie_among_others() {
    let s = TestServer::start();
    let id = s.register_and_log_in("bob@example.com", "pw");
    let cookie = format!("theme=dark; session_id={id}; lang=fr");
    let r = s.send("GET", "/profile", &[("Cookie", &cookie)], b"");
    expect(&r, 200, r#"{"email":"bob@example.com"}"#);
}

#[test]
fn reset_password_token_is_issued_for_a_known_email_only() {
    let s = TestServer::start();
    s.register_ok("bob@example.com", "pw");
    let r = s.reset_token("bob@example.com");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let token = r.json["reset_token"]
        .as_str()
        .expect("a reset_token")
        .to_owned();
    assert!(is_uuid_v4(&token), "token {token:?} is a UUID v4");
    assert_eq!(
        r.text,
        format!(r#"{{"email":"bob@example.com","reset_token":"{token}"}}"#)
    );

    let r = s.reset_token("eve@example.com");
    expect(&r, 403, r#"{"message":"email not registered"}"#);
    let r = s.post("/reset_password", &[]);
    expect(&r, 400, r#"{"message":"email is required"}"#);
}

#[test]
fn update_password_spends_the_token_on_a_new_password() {
    let s = TestServer::start();
    s.register_ok("bob@example.com", "old");
    let token = s.reset_token_ok("bob@example.com");

    let r = s.reset("bob@example.com", &token, "new");
    expect(
        &r,
        200,
        r#"{"email":"bob@example.com","message":"Password updated"}"#,
    );

    let old = s.log_in("bob@example.com", "old");
    assert_eq!(old.status, 401, "the old password no longer works: {old:?}");
    let new = s.log_in("bob@example.com", "new");
    assert_eq!(new.status, 200, "the new password works: {new:?}");

    // A token is good once.
    expect(
        &s.reset("bob@example.com", &token, "newer"),
        403,
        r#"{"message":"invalid reset token"}"#,
    );
}

#[test]
fn update_password_refuses_a_bad_token() {
    let s = TestServer::start();
    s.register_ok("bob@example.com", "pw");
    s.reset_token_ok("bob@example.com");
    let unknown = auth_service::Auth::generate_uuid();
    for token in [unknown.as_str(), "not-a-token"] {
        expect(
            &s.reset("bob@example.com", token, "new"),
            403,
            r#"{"message":"invalid reset token"}"#,
        );
    }
    // The password is unchanged.
    let r = s.log_in("bob@example.com", "pw");
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn routing_ignores_the_query_string() {
    let s = TestServer::start();
    expect(&s.get("/?lang=fr", None), 200, r#"{"message":"Bienvenue"}"#);
    let r = s.post(
        "/users?next=/profile",
        &[("email", "bob@example.com"), ("password", "pw")],
    );
    expect(&r, 200, &created("bob@example.com"));
    let r = s.post(
        "/sessions?x=1",
        &[("email", "bob@example.com"), ("password", "pw")],
    );
    let id = r.session_cookie().expect("logged in through /sessions?x=1");
    expect(
        &s.get("/profile?tab=1", Some(&id)),
        200,
        r#"{"email":"bob@example.com"}"#,
    );
    // The query is not a form: the fields must come in the body.
    let r = s.post("/users?email=eve@example.com&password=pw", &[]);
    expect(&r, 400, r#"{"message":"email is required"}"#);
    expect(&s.get("/nope?x=/", None), 404, r#"{"message":"not found"}"#);
    let r = s.get("/users?x=1", None);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")), "{r:?}");
}

#[test]
fn concurrent_registrations_of_one_email_have_one_winner() {
    const N: usize = 40;
    // The default server: the forty hashes queue on the slow lane (its capacity is well above
    // forty), so none is shed and what is tested is the race for the address.
    let s = TestServer::start();
    let barrier = Arc::new(Barrier::new(N));
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let addr = s.addr;
            // The same address, in several ASCII cases: still one address.
            let email = match i % 3 {
                0 => "race@example.com",
                1 => "RACE@example.com",
                _ => "Race@Example.COM",
            };
            std::thread::spawn(move || {
                // A client (and so a connection) of its own.
                let client = Client::new(addr);
                barrier.wait();
                client.register(email, "pw")
            })
        })
        .collect();
    let answers: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let winners: Vec<&Resp> = answers.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one registration wins: {answers:?}"
    );
    let losers = answers
        .iter()
        .filter(|r| r.status == 400 && r.text == r#"{"message":"email already registered"}"#)
        .count();
    assert_eq!(
        losers,
        N - 1,
        "every other one is told it is taken: {answers:?}"
    );
    let winner_email = winners[0].json["email"].as_str().unwrap();
    let r = s.log_in(winner_email, "pw");
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn users_and_sessions_survive_a_restart() {
    let s = TestServer::start();
    let id = s.register_and_log_in("bob@example.com", "pw");
    let db = s.db_path();
    let s = s.restart();
    assert_eq!(s.db_path(), db);

    // The same user, the same session: nothing was wiped.
    expect(&s.profile(&id), 200, r#"{"email":"bob@example.com"}"#);
    let r = s.register("bob@example.com", "x");
    expect(&r, 400, r#"{"message":"email already registered"}"#);
    let r = s.log_in("bob@example.com", "pw");
    expect(&r, 200, &logged_in("bob@example.com"));

    // And once more, after a second restart, with a user added in between.
    s.register_ok("eve@example.com", "pw2");
    let s = s.restart();
    for (email, password) in [("bob@example.com", "pw"), ("eve@example.com", "pw2")] {
        let r = s.log_in(email, password);
        expect(&r, 200, &logged_in(email));
    }
}

/// Connects to `s` and sends the head of a form POST declaring `length` body bytes, plus
/// `body` (which may be far fewer).
fn start_post(s: &TestServer, head_extra: &str, body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(s.addr).unwrap();
    let head = format!(
        "POST /users HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n{head_extra}\r\n",
        s.addr
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream
}

const TOO_LARGE: &str = r#"{"message":"request body is larger than 65536 bytes"}"#;

#[test]
fn a_4_mib_body_is_refused_before_it_is_read() {
    let s = TestServer::start();
    // Declares 4 MiB, sends a few bytes, and never the rest: the 413 can only come from a
    // server that answers without reading the body.
    let mut stream = start_post(
        &s,
        "Content-Length: 4194304\r\n",
        b"email=bob%40example.com&password=",
    );
    let r = read_response(&mut stream, Duration::from_secs(10));
    expect(&r, 413, TOO_LARGE);
    drop(stream);

    expect(&s.get("/", None), 200, r#"{"message":"Bienvenue"}"#);
    // Nothing was registered from the part that was sent.
    let r = s.register("bob@example.com", "pw");
    expect(&r, 200, &created("bob@example.com"));
}

#[test]
fn a_huge_content_length_is_refused_and_the_server_lives_on() {
    // One worker: the one that refused the request must be the one that answers the next.
    let s = TestServer::with(|c| c.workers = 1);
    let mut stream = start_post(&s, "Content-Length: 1000000000000000\r\n", b"email=");
    let r = read_response(&mut stream, Duration::from_secs(10));
    expect(&r, 413, TOO_LARGE);
    drop(stream);

    expect(&s.get("/", None), 200, r#"{"message":"Bienvenue"}"#);
    expect(&s.get("/health", None), 200, r#"{"status":"ok"}"#);
}

#[test]
fn a_chunked_body_over_the_limit_is_refused() {
    let s = TestServer::with(|c| c.workers = 1);
    // 16 chunks of 4 KiB and one of a byte: the limit plus one, with no last chunk, so the
    // 413 comes before the body is complete.
    let mut body = Vec::new();
    for _ in 0..16 {
        body.extend_from_slice(b"1000\r\n");
        body.extend_from_slice(&[b'a'; 4096]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"1\r\na\r\n");
    let mut stream = start_post(&s, "Transfer-Encoding: chunked\r\n", &body);
    let r = read_response(&mut stream, Duration::from_secs(10));
    expect(&r, 413, TOO_LARGE);
    drop(stream);

    expect(&s.get("/", None), 200, r#"{"message":"Bienvenue"}"#);
}

#[test]
fn a_chunked_body_under_the_limit_is_read() {
    let s = TestServer::start();
    let form = b"email=bob%40example.com&password=pw";
    let mut body = format!("{:x}\r\n", form.len()).into_bytes();
    body.extend_from_slice(form);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut stream = start_post(&s, "Transfer-Encoding: chunked\r\n", &body);
    let r = read_response(&mut stream, Duration::from_secs(10));
    expect(&r, 200, &created("bob@example.com"));
}

#[test]
fn a_body_at_the_limit_is_accepted() {
    let s = TestServer::start();
    let mut body = b"email=bob%40example.com&password=pw&pad=".to_vec();
    body.resize(65_536, b'x');
    let r = s.send("POST", "/users", &[("Content-Type", FORM)], &body);
    expect(&r, 200, &created("bob@example.com"));
    body.push(b'x');
    let r = s.send("POST", "/users", &[("Content-Type", FORM)], &body);
    expect(&r, 413, TOO_LARGE);
}

/// The app, except that `/panic` panics.
fn panicking(ctx: &Context<'_>, rq: &Request<'_>) -> Reply {
    if rq.path == "/panic" {
        panic!("a handler bug");
    }
    auth_service::app::handle(ctx, rq)
}

#[test]
fn a_panicking_handler_is_a_500_and_the_worker_lives_on() {
    // One worker: the one that panicked must answer what comes next.
    let s = TestServer::with_config_and_handler(|c| c.workers = 1, panicking);
    for _ in 0..3 {
        expect(
            &s.get("/panic", None),
            500,
            r#"{"message":"internal error"}"#,
        );
        expect(&s.get("/", None), 200, r#"{"message":"Bienvenue"}"#);
    }
    let id = s.register_and_log_in("bob@example.com", "pw");
    expect(&s.profile(&id), 200, r#"{"email":"bob@example.com"}"#);
}

#[test]
fn a_burst_of_new_connections_is_served_while_they_all_stay_open() {
    // Each client keeps its connection open until every client has its answer (or 10 s have
    // passed): a connection the server left queued until another one closed would not be
    // answered in that time.
    const N: usize = 12;
    let s = TestServer::start();
    let answered = Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
    let barrier = Arc::new(Barrier::new(N));
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let client = Client::new(s.addr);
            let answered = Arc::clone(&answered);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let r = client.get("/", None);
                let (count, all) = &*answered;
                let mut count = count.lock().unwrap();
                *count += 1;
                all.notify_all();
                let (count, _) = all
                    .wait_timeout_while(count, Duration::from_secs(10), |n| *n < N)
                    .unwrap();
                // Only now may this client's connection close.
                (r.status, *count == N, client)
            })
        })
        .collect();
    for t in threads {
        let (status, all_answered, _client) = t.join().unwrap();
        assert_eq!(status, 200);
        assert!(
            all_answered,
            "every connection was answered while all were open"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// In process: routing and validation, straight through `app::handle`

#[test]
fn register_names_the_missing_or_empty_field() {
    let app = App::new();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("password", "pw")], "email"),
        (&[("email", ""), ("password", "pw")], "email"),
        (&[("email", "   "), ("password", "pw")], "email"),
        (&[("email", "a@b.c")], "password"),
        (&[("email", "a@b.c"), ("password", "")], "password"),
        (&[], "email"),
    ];
    for (form, field) in cases {
        let r = app.post("/users", form);
        expect(&r, 400, &format!(r#"{{"message":"{field} is required"}}"#));
    }
    // Nothing was registered along the way.
    expect(&app.register("a@b.c", "pw"), 200, &created("a@b.c"));
}

#[test]
fn register_refuses_a_malformed_email_or_password() {
    let app = App::new();
    let r = app.register("bob.example.com", "pw");
    expect(&r, 400, r#"{"message":"email must contain @"}"#);

    // 254 bytes is the limit; one more is refused.
    let at_limit = format!("{}@example.com", "a".repeat(254 - 12));
    assert_eq!(at_limit.len(), 254);
    let over = format!("a{at_limit}");
    let r = app.register(&over, "pw");
    expect(&r, 400, r#"{"message":"email is longer than 254 bytes"}"#);
    let r = app.register(&at_limit, "pw");
    expect(&r, 200, &created(&at_limit));

    // bcrypt reads 72 bytes: a longer password is refused, never truncated.
    let long = "p".repeat(73);
    let r = app.register("c@d.e", &long);
    expect(&r, 400, r#"{"message":"password is longer than 72 bytes"}"#);
}

#[test]
fn register_trims_the_email() {
    let app = App::new();
    let r = app.register("  eve@example.com ", "pw");
    expect(&r, 200, &created("eve@example.com"));
    let r = app.log_in("eve@example.com", "pw");
    expect(&r, 200, &logged_in("eve@example.com"));
}

#[test]
fn log_in_names_a_missing_field() {
    let app = App::new();
    let r = app.post("/sessions", &[("email", "bob@example.com")]);
    expect(&r, 400, r#"{"message":"password is required"}"#);
    let r = app.post("/sessions", &[("password", "pw")]);
    expect(&r, 400, r#"{"message":"email is required"}"#);
}

#[test]
fn update_password_names_a_missing_field() {
    let app = App::new();
    app.register_ok("bob@example.com", "pw");
    let token = app.reset_token_ok("bob@example.com");
    let full = [
        ("email", "bob@example.com"),
        ("reset_token", token.as_str()),
        ("new_password", "new"),
    ];
    for missing in ["email", "reset_token", "new_password"] {
        let without: Vec<(&str, &str)> = full
            .iter()
            .copied()
            .filter(|(k, _)| *k != missing)
            .collect();
        expect(
            &app.put("/reset_password", &without),
            400,
            &format!(r#"{{"message":"{missing} is required"}}"#),
        );
        let empty: Vec<(&str, &str)> = full
            .iter()
            .map(|&(k, v)| (k, if k == missing { "" } else { v }))
            .collect();
        expect(
            &app.put("/reset_password", &empty),
            400,
            &format!(r#"{{"message":"{missing} is required"}}"#),
        );
    }
    // None of those spent the token.
    expect(
        &app.reset("bob@example.com", &token, "new"),
        200,
        r#"{"email":"bob@example.com","message":"Password updated"}"#,
    );
}

#[test]
fn unknown_paths_are_404_in_json() {
    let app = App::new();
    for path in ["/nope", "/users/1", "/profile/", "//", "/metrics"] {
        expect(&app.get(path, None), 404, r#"{"message":"not found"}"#);
    }
    let r = app.post("/nope", &[("email", "a@b.c")]);
    expect(&r, 404, r#"{"message":"not found"}"#);
}

#[test]
fn known_paths_with_another_method_are_405_with_allow() {
    let app = App::new();
    let cases = [
        ("POST", "/", "GET, HEAD"),
        ("GET", "/users", "POST"),
        ("DELETE", "/users", "POST"),
        ("PUT", "/sessions", "POST, DELETE, GET, HEAD"),
        ("PATCH", "/sessions", "POST, DELETE, GET, HEAD"),
        ("GET", "/sessions/4b1c", "DELETE"),
        ("POST", "/profile", "GET, HEAD, DELETE"),
        ("GET", "/password", "PUT"),
        ("GET", "/reset_password", "POST, PUT"),
        ("DELETE", "/health", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let r = app.send(method, path, &[], b"");
        expect(&r, 405, r#"{"message":"method not allowed"}"#);
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
}

#[test]
fn a_body_that_is_not_utf8_is_400() {
    let app = App::new();
    let form = [("Content-Type", FORM)];
    for body in [
        &b"email=bob%40example.com&password=\xff\xfe"[..],
        &b"email=bob%40example.com&password=%FF%FE"[..],
        &b"email=b\xc3ob%40example.com&password=pw"[..],
    ] {
        let r = app.send("POST", "/users", &form, body);
        expect(&r, 400, r#"{"message":"body is not valid form data"}"#);
    }
    // Nobody was registered by any of them.
    let r = app.register("bob@example.com", "pw");
    expect(&r, 200, &created("bob@example.com"));
}

#[test]
fn form_fields_are_percent_decoded() {
    let app = App::new();
    let r = app.send(
        "POST",
        "/users",
        &[("Content-Type", FORM)],
        b"email=bob%2Btag%40example.com&password=p+w%C3%A9",
    );
    expect(&r, 200, &created("bob+tag@example.com"));
    let r = app.log_in("bob+tag@example.com", "p w\u{e9}");
    assert_eq!(r.status, 200, "{r:?}");
}
