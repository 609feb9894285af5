//! Section 4 of the spec, "security beyond the reference", proved over real HTTP: the cookie's
//! attributes, tokens hashed at rest, expiry, one-time reset tokens, out-of-band delivery, the
//! dummy bcrypt verification, the login throttle, password and email bounds, and no secret in
//! the output.
//!
//! Most tests run the real binary through [`Watched`], which collects every password, reset
//! token and session id the test sends or receives and, when the test ends, checks that none of
//! them reached the server's output or an error body. Time-bound tests use windows of one to
//! three seconds and poll with a bound; none asserts how long anything took.

mod support;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use auth_service::auth::{digest, Policy, Shared};
use auth_service::user::{Email, Password};
use support::*;

const HERE: &str = "127.0.0.1";
const ELSEWHERE: &str = "127.0.0.2";

/// A password no log line could contain by chance.
fn pw(tag: &str) -> String {
    format!("{tag}-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// The real binary, and every secret a test has used with it.
struct Watched {
    server: ChildServer,
    secrets: RefCell<Vec<String>>,
    checked: bool,
    /// Whether it logs with `--log-format json`.
    json: bool,
}

impl std::ops::Deref for Watched {
    type Target = ChildServer;
    fn deref(&self) -> &ChildServer {
        &self.server
    }
}

impl Watched {
    fn start(args: &[&str]) -> Watched {
        Watched {
            server: ChildServer::start(args),
            secrets: RefCell::new(Vec::new()),
            checked: false,
            json: args.windows(2).any(|w| w == ["--log-format", "json"]),
        }
    }

    /// Records a secret: from now on it must appear in no error body, and at the end nowhere
    /// in the server's output.
    fn keep(&self, secret: &str) {
        if !secret.is_empty() {
            self.secrets.borrow_mut().push(secret.to_owned());
        }
    }

    fn assert_clean(&self, what: &str, text: &str) {
        for secret in self.secrets.borrow().iter() {
            assert!(
                !text.contains(secret.as_str()),
                "{what} holds the secret {secret:?}:\n{text}"
            );
        }
    }

    /// Sends through `client`, recording the secrets the request carries (a session cookie,
    /// a form's passwords and reset token) and those the answer hands out, and checking that
    /// an error body holds none.
    fn watch(
        &self,
        client: &Client,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("cookie") {
                self.keep(value.strip_prefix("session_id=").unwrap_or(value));
            }
        }
        for (key, value) in form_urlencoded::parse(body) {
            if ["password", "new_password", "reset_token"].contains(&&*key) {
                self.keep(&value);
            }
        }
        let r = client.send(method, path, headers, body);
        if let Some(session) = r.session_cookie() {
            self.keep(&session);
        }
        if let Some(token) = r.json["reset_token"].as_str() {
            self.keep(token);
        }
        if r.status >= 400 {
            self.assert_clean(&format!("a {} body", r.status), &r.text);
        }
        r
    }

    /// This server's client sending from source address `from`, watched as well.
    fn from(&self, from: &str) -> WatchedFrom<'_> {
        WatchedFrom {
            watched: self,
            client: self.server.from(from.parse().unwrap()),
        }
    }

    /// Stops the server and checks that its output holds none of the secrets; the output.
    fn stop(&mut self) -> String {
        let output = self.server.stop_and_collect();
        self.checked = true;
        let access = if self.json {
            "\"addr\":\"127.0.0."
        } else {
            "ms 127.0.0."
        };
        assert!(
            output.contains("listening on http://") && output.contains(access),
            "the server's output, with its access log, was captured:\n{output}"
        );
        self.assert_clean("the server's output", &output);
        output
    }
}

impl Api for Watched {
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.watch(&self.server.client, method, path, headers, body)
    }
}

/// A [`Watched`] server's client from another source address.
struct WatchedFrom<'a> {
    watched: &'a Watched,
    client: Client,
}

impl Api for WatchedFrom<'_> {
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.watched
            .watch(&self.client, method, path, headers, body)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.checked && !std::thread::panicking() {
            self.stop();
        }
    }
}

/// The `Retry-After` of a 429: whole seconds, at least one, at most the window.
fn retry_after(r: &Resp, window: u64) -> u64 {
    assert_eq!(r.status, 429, "{}", r.text);
    let value = r.header("retry-after").expect("a Retry-After header");
    let secs: u64 = value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is whole seconds"));
    assert!(
        (1..=window).contains(&secs),
        "Retry-After {secs} of {window}"
    );
    secs
}

/// A reset command that writes what it received (`$AUTH_EMAIL` and `$AUTH_RESET_TOKEN`, one a
/// line) to `out`, whole: through a file moved into place, since it runs while the test reads.
fn delivery_script(dir: &Path, out: &Path, fail: bool) -> PathBuf {
    let exit = if fail { "; exit 3" } else { "" };
    script(
        dir,
        "deliver.sh",
        &format!(
            "printf '%s\\n%s\\n' \"$AUTH_EMAIL\" \"$AUTH_RESET_TOKEN\" > '{out}.tmp' && \
             mv '{out}.tmp' '{out}'{exit}",
            out = out.display()
        ),
    )
}

/// The (email, token) the delivery script last wrote to `out`, once it differs from `before`:
/// the command runs after the answer, off the request's worker.
fn delivered(out: &Path, before: Option<&(String, String)>) -> (String, String) {
    eventually(
        "the reset command to deliver a token",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(out).unwrap_or_default();
            let mut lines = text.lines().map(str::to_owned);
            let pair = (
                lines.next().unwrap_or_default(),
                lines.next().unwrap_or_default(),
            );
            (is_uuid_v4(&pair.1) && before != Some(&pair)).then_some(pair)
        },
    )
}

// ---------------------------------------------------------------------------------------------
// The cookie

#[test]
fn session_cookie_carries_its_attributes_and_logout_clears_it() {
    let s = Watched::start(&["--session-ttl", "1234"]);
    let password = pw("cookie");
    s.register_ok("c@example.com", &password);
    let r = s.log_in("c@example.com", &password);
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.session_cookie().unwrap();
    assert!(is_uuid_v4(&id), "{id}");
    assert_eq!(
        r.header("set-cookie").unwrap(),
        format!("session_id={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age=1234")
    );

    let r = s.log_out(&id);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/"));
    assert_eq!(
        r.header("set-cookie").unwrap(),
        "session_id=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
    );
    assert_eq!(s.profile(&id).status, 403);
}

#[test]
fn session_cookie_lasts_a_day_by_default() {
    let s = Watched::start(&[]);
    let password = pw("day");
    s.register_ok("d@example.com", &password);
    let r = s.log_in("d@example.com", &password);
    assert!(r.header("set-cookie").unwrap().ends_with("; Max-Age=86400"));
}

#[test]
fn secure_cookies_adds_secure_to_both_cookies() {
    let s = Watched::start(&["--secure-cookies"]);
    let password = pw("secure");
    s.register_ok("s@example.com", &password);
    let r = s.log_in("s@example.com", &password);
    let id = r.session_cookie().unwrap();
    assert_eq!(
        r.header("set-cookie").unwrap(),
        format!("session_id={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400; Secure")
    );
    let r = s.log_out(&id);
    assert_eq!(
        r.header("set-cookie").unwrap(),
        "session_id=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; Secure"
    );

    // The library's Config field does the same in process.
    let t = TestServer::with(|c| c.secure_cookies = true);
    let id = t.register_and_log_in("t@example.com", "in-process");
    let r = t.log_out(&id);
    assert!(r
        .header("set-cookie")
        .unwrap()
        .ends_with("; Max-Age=0; Secure"));
}

// ---------------------------------------------------------------------------------------------
// Tokens at rest

#[test]
fn session_ids_and_reset_tokens_are_not_in_the_database_files() {
    let mut s = Watched::start(&[]);
    let db = s.dir.path().join("auth.db");
    let (first, second) = (pw("first"), pw("second"));
    s.register_ok("rest@example.com", &first);
    let ended = s.log_in_ok("rest@example.com", &first);
    let spent = s.reset_token_ok("rest@example.com");
    assert_eq!(s.reset("rest@example.com", &spent, &second).status, 200);
    let session = s.log_in_ok("rest@example.com", &second);
    let pending = s.reset_token_ok("rest@example.com");
    assert_eq!(s.profile(&session).status, 200);

    // On SQLite the bytes of the file, its WAL and its shared-memory index; on PostgreSQL
    // every row.
    let check = |when: &str| {
        let stored = stored_text(&db).to_lowercase();
        // The digests are there, so this is where the tokens would be.
        assert!(
            stored.contains(&digest(&session)) && stored.contains(&digest(&pending)),
            "{when}: the digests are stored"
        );
        for token in [&ended, &spent, &session, &pending] {
            let bare = token.replace('-', "");
            assert!(
                !stored.contains(token.as_str()) && !stored.contains(&bare),
                "{when}: {token} is stored in the clear"
            );
        }
        for password in [&first, &second] {
            assert!(
                !stored.contains(&password.to_lowercase()),
                "{when}: a password is stored"
            );
        }
    };
    if !on_postgres() {
        assert!(Path::new(&format!("{}-wal", db.display())).exists());
    }
    check("while running");
    s.stop();
    check("after stopping");
}

// ---------------------------------------------------------------------------------------------
// Expiry

#[test]
fn a_session_ends_after_its_ttl_even_in_use_and_then_reads_as_unknown() {
    let s = Watched::start(&["--session-ttl", "2", "--session-idle", "3600"]);
    let password = pw("ttl");
    s.register_ok("ttl@example.com", &password);
    let r = s.log_in("ttl@example.com", &password);
    assert!(r.header("set-cookie").unwrap().ends_with("; Max-Age=2"));
    let id = r.session_cookie().unwrap();
    assert_eq!(s.profile(&id).status, 200);

    // Used all along, it still ends.
    eventually(
        "the session to end at --session-ttl",
        Duration::from_secs(6),
        || (s.profile(&id).status == 403).then_some(()),
    );

    let unknown = uuid::Uuid::new_v4().to_string();
    let (expired, stranger) = (s.profile(&id), s.profile(&unknown));
    assert_eq!((expired.status, expired.text), (403, stranger.text));
    let (expired, stranger) = (s.log_out(&id), s.log_out(&unknown));
    assert_eq!(expired.header("set-cookie"), None);
    assert_eq!((expired.status, expired.text), (403, stranger.text));
}

#[test]
fn an_idle_session_ends_while_an_active_one_lives_on() {
    let s = Watched::start(&["--session-idle", "3", "--session-ttl", "3600"]);
    let (a, b) = (pw("active"), pw("idle"));
    s.register_ok("active@example.com", &a);
    s.register_ok("idle@example.com", &b);
    let active = s.log_in_ok("active@example.com", &a);
    let idle = s.log_in_ok("idle@example.com", &b);

    // Well past the idle time, in use every 300 ms.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(4500) {
        let r = s.profile(&active);
        assert_eq!(r.status, 200, "an active session ended: {}", r.text);
        sleep(Duration::from_millis(300));
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    let (expired, stranger) = (s.profile(&idle), s.profile(&unknown));
    assert_eq!((expired.status, expired.text), (403, stranger.text));
    assert_eq!(s.profile(&active).status, 200);
}

#[test]
fn a_reset_token_expires_after_reset_ttl_and_then_reads_as_unknown() {
    let s = Watched::start(&["--reset-ttl", "2"]);
    let (old, new) = (pw("old"), pw("new"));
    s.register_ok("late@example.com", &old);
    s.register_ok("prompt@example.com", &old);
    let late = s.reset_token_ok("late@example.com");
    // The same setting lets a token used at once work (so what follows is expiry).
    let prompt = s.reset_token_ok("prompt@example.com");
    assert_eq!(s.reset("prompt@example.com", &prompt, &new).status, 200);

    sleep(Duration::from_millis(2100));
    let expired = s.reset("late@example.com", &late, &new);
    let unknown = uuid::Uuid::new_v4().to_string();
    let stranger = s.reset("late@example.com", &unknown, &new);
    assert_eq!((expired.status, expired.text), (403, stranger.text));
    assert_eq!(s.from(HERE).log_in("late@example.com", &old).status, 200);
}

// ---------------------------------------------------------------------------------------------
// Reset tokens

#[test]
fn a_reset_token_works_once_with_its_own_email_and_only_while_newest() {
    let s = Watched::start(&[]);
    let (old, other, new, newer) = (pw("old"), pw("other"), pw("new"), pw("newer"));
    s.register_ok("ann@example.com", &old);
    s.register_ok("bob@example.com", &other);
    let unknown = s.reset("ann@example.com", &uuid::Uuid::new_v4().to_string(), &new);
    assert_eq!(unknown.status, 403);

    let replaced = s.reset_token_ok("ann@example.com");
    let token = s.reset_token_ok("ann@example.com");
    assert_ne!(replaced, token);
    assert!(is_uuid_v4(&token));
    let refused = [
        s.reset("ann@example.com", &replaced, &new),
        s.reset("bob@example.com", &token, &new),
    ];
    for r in refused {
        assert_eq!((r.status, &r.text), (403, &unknown.text));
    }
    // Bob keeps his password; Ann's token survived the attempt with Bob's email.
    assert_eq!(s.from(HERE).log_in("bob@example.com", &other).status, 200);
    let r = s.reset("ann@example.com", &token, &new);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.text,
        r#"{"email":"ann@example.com","message":"Password updated"}"#
    );
    let spent = s.reset("ann@example.com", &token, &newer);
    assert_eq!((spent.status, spent.text), (403, unknown.text));

    assert_eq!(s.from(HERE).log_in("ann@example.com", &old).status, 401);
    assert_eq!(s.from(HERE).log_in("ann@example.com", &newer).status, 401);
    assert_eq!(s.from(HERE).log_in("ann@example.com", &new).status, 200);
}

#[test]
fn a_successful_reset_ends_the_session() {
    let s = Watched::start(&[]);
    let (old, new) = (pw("old"), pw("new"));
    s.register_ok("sam@example.com", &old);
    let session = s.log_in_ok("sam@example.com", &old);
    let token = s.reset_token_ok("sam@example.com");
    // Asking for a token, or failing to use one, leaves the session alone.
    let wrong = uuid::Uuid::new_v4().to_string();
    assert_eq!(s.reset("sam@example.com", &wrong, &new).status, 403);
    assert_eq!(s.profile(&session).status, 200);

    assert_eq!(s.reset("sam@example.com", &token, &new).status, 200);
    assert_eq!(s.profile(&session).status, 403);
    assert_eq!(s.log_out(&session).status, 403);
}

#[test]
fn the_reset_command_delivers_the_token_and_the_response_holds_none() {
    let dir = TempDir::new();
    let out = dir.path().join("delivered");
    let command = delivery_script(dir.path(), &out, false);
    let mut s = Watched::start(&["--reset-command", command.to_str().unwrap()]);
    let (old, new) = (pw("old"), pw("new"));
    s.register_ok("mail@example.com", &old);
    let session = s.log_in_ok("mail@example.com", &old);

    let r = s.reset_token(" mail@example.com ");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.text,
        r#"{"email":"mail@example.com","message":"reset token sent"}"#
    );
    let (email, token) = delivered(&out, None);
    s.keep(&token);
    assert_eq!(email, "mail@example.com");
    assert!(!r.text.contains(&token));

    let r = s.reset("mail@example.com", &token, &new);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.profile(&session).status, 403);
    s.log_in_ok("mail@example.com", &new);

    let output = s.stop();
    assert!(
        !output.to_lowercase().contains("warning"),
        "no development warning with --reset-command:\n{output}"
    );
}

#[test]
fn without_a_reset_command_the_server_warns_once() {
    let mut s = Watched::start(&[]);
    let password = pw("warn");
    s.register_ok("w@example.com", &password);
    s.reset_token_ok("w@example.com");
    s.reset_token_ok("w@example.com");
    let output = s.stop();
    let warnings: Vec<&str> = output
        .lines()
        .filter(|l| l.to_lowercase().contains("warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "{output}");
    assert!(warnings[0].contains("--reset-command"), "{}", warnings[0]);
}

/// The answer does not wait for the command, so a failing one cannot turn it into an error:
/// the failure is logged (naming neither the email nor the token) and counted.
#[test]
fn a_failing_reset_command_is_logged_and_counted_not_answered() {
    let dir = TempDir::new();
    let out = dir.path().join("delivered");
    let failing = delivery_script(dir.path(), &out, true);
    let missing = dir.path().join("no-such-command");
    for command in [failing, missing] {
        let mut s = Watched::start(&["--reset-command", command.to_str().unwrap(), "--metrics"]);
        s.register_ok("fail@example.com", &pw("fail"));
        let r = s.reset_token("fail@example.com");
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            r.text,
            r#"{"email":"fail@example.com","message":"reset token sent"}"#
        );
        let failed = r#"auth_reset_deliveries_total{outcome="failed"} 1"#;
        eventually("the failure to be counted", Duration::from_secs(20), || {
            s.get("/metrics", None).text.contains(failed).then_some(())
        });
        if out.exists() {
            s.keep(&delivered(&out, None).1);
        }
        let output = s.stop();
        assert!(
            output.contains("error: reset delivery failed"),
            "the failure is logged:\n{output}"
        );
        assert!(!output.contains("fail@example.com"), "{output}");
    }
}

// ---------------------------------------------------------------------------------------------
// Timing: the dummy verification

#[test]
fn an_unknown_email_costs_one_bcrypt_verification_like_a_wrong_password() {
    let s = TestServer::start();
    s.register_and_log_in("known@example.com", "right-password");
    let count = || s.server().metrics().bcrypt_verifications();
    let log_in = |email: &str, password: &str| {
        let before = count();
        let r = s.log_in(email, password);
        (r.status, count() - before)
    };
    assert_eq!(log_in("known@example.com", "wrong-password"), (401, 1));
    assert_eq!(log_in("unknown@example.com", "wrong-password"), (401, 1));
    assert_eq!(log_in("known@example.com", "right-password"), (200, 1));

    // The same in the Auth layer.
    let app = App::new();
    let known = Email::parse("known@example.com").unwrap();
    let unknown = Email::parse("unknown@example.com").unwrap();
    let right = Password::parse("right-password").unwrap();
    let wrong = Password::parse("wrong-password").unwrap();
    app.auth.register_user(&known, &right).unwrap();
    let count = || app.metrics.bcrypt_verifications();
    assert_eq!(count(), 0);
    assert!(!app.auth.valid_login(&known, &wrong).unwrap());
    assert_eq!(count(), 1);
    assert!(!app.auth.valid_login(&unknown, &wrong).unwrap());
    assert_eq!(count(), 2);
    assert!(!app.auth.valid_login(&unknown, &right).unwrap());
    assert_eq!(count(), 3);
}

#[test]
fn the_dummy_hash_is_well_formed_at_the_configured_cost() {
    let cost_of = |hash: &str| hash.parse::<bcrypt::HashParts>().unwrap().get_cost();
    for cost in [4, 5, 12, 31] {
        let policy = Policy {
            bcrypt_cost: cost,
            ..Policy::default()
        };
        let shared = Shared::new(policy, Arc::default());
        assert_eq!(cost_of(shared.dummy_hash()), cost);
    }
    // A real hash that matches nothing: verifying it runs bcrypt, and fails.
    let shared = Shared::new(
        Policy {
            bcrypt_cost: 5,
            ..Policy::default()
        },
        Arc::default(),
    );
    for password in ["", "auth-service dummy password", "password"] {
        assert!(!bcrypt::verify(password, shared.dummy_hash()).unwrap());
    }
    // The running server's is at its configured cost.
    let s = TestServer::with(|c| c.policy.bcrypt_cost = 6);
    assert_eq!(cost_of(s.server().shared().dummy_hash()), 6);
}

// ---------------------------------------------------------------------------------------------
// The login throttle

#[test]
fn failures_throttle_the_address_and_email_pair_but_not_the_account() {
    let s = Watched::start(&[]);
    let (right, other) = (pw("right"), pw("other"));
    s.register_ok("pat@example.com", &right);
    s.register_ok("quin@example.com", &other);
    // Case and white space do not make another pair.
    for email in [
        "pat@example.com",
        "PAT@example.com",
        " pat@example.com ",
        "Pat@Example.com",
        "pat@EXAMPLE.COM",
    ] {
        let r = s.from(HERE).log_in(email, &pw("wrong"));
        assert_eq!(r.status, 401, "{}", r.text);
    }
    let r = s.from(HERE).log_in("pat@example.com", &right);
    retry_after(&r, 900);
    assert_eq!(r.json["message"].as_str().map(str::is_empty), Some(false));
    assert_eq!(r.session_cookie(), None);

    // The account logs in from elsewhere; that does not lift the throttle here.
    assert_eq!(
        s.from(ELSEWHERE).log_in("pat@example.com", &right).status,
        200
    );
    assert_eq!(s.from(HERE).log_in("pat@example.com", &right).status, 429);
    // Another email from the same address is not throttled.
    assert_eq!(s.from(HERE).log_in("quin@example.com", &other).status, 200);
}

#[test]
fn a_success_clears_the_pair() {
    let s = Watched::start(&[]);
    let right = pw("right");
    s.register_ok("rae@example.com", &right);
    for _ in 0..3 {
        for _ in 0..4 {
            let r = s.from(HERE).log_in("rae@example.com", &pw("wrong"));
            assert_eq!(r.status, 401, "{}", r.text);
        }
        assert_eq!(s.from(HERE).log_in("rae@example.com", &right).status, 200);
    }
}

#[test]
fn an_address_is_capped_across_emails() {
    // Two per pair, so twenty per address.
    let s = Watched::start(&["--max-login-failures", "2"]);
    let right = pw("right");
    s.register_ok("vic@example.com", &right);
    let mut spray = (0..20).map(|i| format!("user{i}@example.com"));
    for email in spray.by_ref().take(19) {
        let r = s.from(HERE).log_in(&email, &pw("guess"));
        assert_eq!(r.status, 401, "{email}: {}", r.text);
    }
    // A success clears the pair, not the address's count.
    assert_eq!(s.from(HERE).log_in("vic@example.com", &right).status, 200);
    let email = spray.next().unwrap();
    assert_eq!(s.from(HERE).log_in(&email, &pw("guess")).status, 401);

    for email in ["vic@example.com", "fresh@example.com"] {
        let r = s.from(HERE).log_in(email, &right);
        retry_after(&r, 900);
    }
    assert_eq!(
        s.from(ELSEWHERE).log_in("vic@example.com", &right).status,
        200
    );
}

#[test]
fn the_throttle_lifts_when_the_window_passes() {
    let s = Watched::start(&["--login-window", "2"]);
    let right = pw("right");
    s.register_ok("win@example.com", &right);
    // Five failures in one window throttle; should a slow machine let the window pass between
    // them, the count starts again, so fail until throttled.
    let mut throttled = None;
    for _ in 0..30 {
        let r = s.from(HERE).log_in("win@example.com", &pw("wrong"));
        if r.status == 429 {
            throttled = Some(r);
            break;
        }
        assert_eq!(r.status, 401, "{}", r.text);
    }
    let wait = retry_after(&throttled.expect("throttled"), 2);
    // Retry-After is honest: waiting that long is enough.
    sleep(Duration::from_secs(wait) + Duration::from_millis(100));
    let r = s.from(HERE).log_in("win@example.com", &right);
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Five failures for `email` from behind a proxy that sent `forwarded`.
fn fail_five_times(s: &Watched, forwarded: &str, email: &str) {
    for _ in 0..5 {
        let r = log_in_forwarded(s, &[forwarded], email, &pw("wrong"));
        assert_eq!(r.status, 401, "{}", r.text);
    }
}

/// A login from behind a proxy that sent one `X-Forwarded-For` line for each of `forwarded`.
fn log_in_forwarded(s: &Watched, forwarded: &[&str], email: &str, password: &str) -> Resp {
    let headers: Vec<(&str, &str)> = forwarded.iter().map(|f| ("X-Forwarded-For", *f)).collect();
    s.from(HERE).post_with(
        "/sessions",
        &headers,
        &[("email", email), ("password", password)],
    )
}

#[test]
fn behind_a_trusted_proxy_the_last_forwarded_hop_is_the_client() {
    let s = Watched::start(&["--trust-proxy"]);
    let right = pw("right");
    s.register_ok("xff@example.com", &right);
    // The client forged the first hop; the proxy appended the address it saw.
    fail_five_times(&s, "203.0.113.9, 198.51.100.7", "xff@example.com");

    let email = "xff@example.com";
    assert_eq!(
        log_in_forwarded(&s, &["198.51.100.7"], email, &right).status,
        429
    );
    assert_eq!(
        log_in_forwarded(&s, &["10.1.1.1, 198.51.100.7"], email, &right).status,
        429,
        "forging an earlier hop does not escape the throttle"
    );
    // A proxy that adds its own header line instead of extending the client's.
    assert_eq!(
        log_in_forwarded(&s, &["10.1.1.1", "198.51.100.7"], email, &right).status,
        429,
        "a forged header line before the proxy's does not escape the throttle"
    );
    // Another client behind the same proxy (the same TCP peer) logs in.
    assert_eq!(
        log_in_forwarded(&s, &["198.51.100.8"], email, &right).status,
        200
    );
    assert_eq!(
        log_in_forwarded(&s, &["198.51.100.7, 203.0.113.9"], email, &right).status,
        200
    );
}

#[test]
fn without_trust_proxy_the_forwarded_header_is_ignored() {
    let s = Watched::start(&[]);
    let right = pw("right");
    s.register_ok("peer@example.com", &right);
    fail_five_times(&s, "198.51.100.7", "peer@example.com");
    let email = "peer@example.com";
    assert_eq!(
        log_in_forwarded(&s, &["198.51.100.8"], email, &right).status,
        429
    );
    assert_eq!(log_in_forwarded(&s, &[], email, &right).status, 429);
    assert_eq!(s.from(ELSEWHERE).log_in(email, &right).status, 200);
}

// ---------------------------------------------------------------------------------------------
// Passwords and emails

#[test]
fn passwords_over_72_bytes_are_refused_never_truncated() {
    let s = Watched::start(&[]);
    let ascii_73 = format!("{}x", pw("long").repeat(4)).as_bytes()[..73].to_vec();
    let ascii_73 = String::from_utf8(ascii_73).unwrap();
    let euros_72 = "€".repeat(24);
    let euros_73 = format!("{}éé", "€".repeat(23));
    assert_eq!(
        (ascii_73.len(), euros_72.len(), euros_73.len()),
        (73, 72, 73)
    );

    for long in [&ascii_73, &euros_73] {
        let r = s.register("long@example.com", long);
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.text, r#"{"message":"password is longer than 72 bytes"}"#);
    }
    s.register_ok("euro@example.com", &euros_72);
    let session = s.log_in_ok("euro@example.com", &euros_72);
    assert_eq!(s.profile(&session).status, 200);
    // Its first 72 bytes are the whole registered password: truncation would let this in.
    let r = s.log_in("euro@example.com", &format!("{euros_72}!"));
    assert_eq!(r.status, 400, "{}", r.text);

    let token = s.reset_token_ok("euro@example.com");
    let r = s.reset("euro@example.com", &token, &ascii_73);
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.text,
        r#"{"message":"new_password is longer than 72 bytes"}"#
    );
}

#[test]
fn min_password_length_applies_to_new_passwords_but_not_to_login() {
    let mut s = TestServer::start();
    s.register_and_log_in("early@example.com", "abc");
    s.config.policy.min_password_length = 8;
    let s = s.restart();

    // Seven characters, and four characters in nine bytes.
    for short in ["seven77", "ééé€"] {
        let r = s.register("new@example.com", short);
        assert_eq!(r.status, 400, "{short}: {}", r.text);
        assert_eq!(
            r.text,
            r#"{"message":"password is shorter than 8 characters"}"#
        );
    }
    // Characters, not bytes: eight euro signs are 24 bytes and enough.
    s.register_and_log_in("new@example.com", &"€".repeat(8));

    // A password set before the minimum still logs in.
    let r = s.log_in("early@example.com", "abc");
    assert_eq!(r.status, 200, "{}", r.text);

    let r = s.reset_token("early@example.com");
    let token = r.json["reset_token"].as_str().unwrap().to_owned();
    let reset = |new: &str| s.reset("early@example.com", &token, new);
    let r = reset("abcdefg");
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.text,
        r#"{"message":"new_password is shorter than 8 characters"}"#
    );
    assert_eq!(reset("abcdefgh").status, 200, "the refusal spent no token");
}

#[test]
fn emails_are_trimmed_unique_in_any_case_and_log_in_in_any_case() {
    let s = Watched::start(&[]);
    let (password, new) = (pw("case"), pw("new"));
    let r = s.register("  Mixed.Case@Example.COM \t", &password);
    assert_eq!(
        r.text,
        r#"{"email":"Mixed.Case@Example.COM","message":"user created"}"#
    );
    for taken in ["mixed.case@example.com", " MIXED.CASE@EXAMPLE.COM "] {
        let r = s.register(taken, &pw("dup"));
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.text, r#"{"message":"email already registered"}"#);
    }
    let session = s.log_in_ok(" mixed.CASE@example.com ", &password);
    let r = s.profile(&session);
    assert_eq!(r.text, r#"{"email":"Mixed.Case@Example.COM"}"#);

    let token = s.reset_token_ok("MIXED.CASE@EXAMPLE.COM");
    assert_eq!(s.reset(" mixed.case@example.com", &token, &new).status, 200);
    s.log_in_ok("Mixed.Case@Example.COM", &new);

    let too_long = format!("{}@example.com", "a".repeat(243));
    assert_eq!(too_long.len(), 255);
    for bad in ["no-at-sign.example.com", too_long.as_str()] {
        let r = s.register(bad, &password);
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
}

// ---------------------------------------------------------------------------------------------
// No secret in the output

/// Every route, success and failure, throttling, and a reset with the token in the response;
/// then a reset through a command, and a failing command. [`Watched`] checks each server's
/// output for every password, token and session id used; the emails must not be in it either
/// (an event names a user by id).
#[test]
fn no_secret_reaches_the_output_on_any_route() {
    tour_every_route("text");
}

/// The same, with the JSON log and its security events.
#[test]
fn no_secret_reaches_the_json_log_on_any_route() {
    tour_every_route("json");
}

fn tour_every_route(log_format: &str) {
    let mut s = Watched::start(&[
        "--max-login-failures",
        "2",
        "--metrics",
        "--log-format",
        log_format,
    ]);
    let (right, new) = (pw("right"), pw("new"));
    let email = "tour@example.com";

    assert_eq!(s.get("/", None).status, 200);
    assert_eq!(s.get("/health", None).status, 200);
    s.register_ok(email, &right);
    assert_eq!(s.register(email, &pw("dup")).status, 400);
    let long = pw("long").repeat(4);
    assert_eq!(s.register("x@example.com", &long).status, 400);
    let garbled = pw("garbled");
    s.keep(&garbled);
    let body = format!("email=g%40example.com&password={garbled}%FF");
    let r = s.send("POST", "/users", &[("Content-Type", FORM)], body.as_bytes());
    assert_eq!(r.status, 400);
    let huge = pw("huge");
    s.keep(&huge);
    let body = format!("email={email}&password={huge}&pad={}", "p".repeat(70_000));
    let r = s.send("POST", "/users", &[("Content-Type", FORM)], body.as_bytes());
    assert_eq!(r.status, 413);

    // Logins: wrong, unknown, right, then throttled from one address.
    assert_eq!(s.from(HERE).log_in(email, &pw("wrong")).status, 401);
    assert_eq!(
        s.from(HERE)
            .log_in("nobody@example.com", &pw("wrong"))
            .status,
        401
    );
    let session = s.log_in_ok(email, &right);
    assert_eq!(s.from(ELSEWHERE).log_in(email, &pw("wrong")).status, 401);
    assert_eq!(s.from(ELSEWHERE).log_in(email, &pw("wrong")).status, 401);
    assert_eq!(s.from(ELSEWHERE).log_in(email, &right).status, 429);

    // Sessions: the profile and logout, with live, unknown and no cookies, and a query.
    assert_eq!(s.profile(&session).status, 200);
    assert_eq!(
        s.get(&format!("/profile?session_id={session}"), None)
            .status,
        403
    );
    let forged = uuid::Uuid::new_v4().to_string();
    assert_eq!(s.profile(&forged).status, 403);
    assert_eq!(s.get("/profile", None).status, 403);
    assert_eq!(s.log_out(&forged).status, 403);
    assert_eq!(s.log_out(&session).status, 302);
    assert_eq!(s.log_out(&session).status, 403);

    // Resets: unknown email, wrong token, another email's token, too long, right, reused.
    assert_eq!(s.reset_token("nobody@example.com").status, 403);
    let session = s.log_in_ok(email, &right);
    let token = s.reset_token_ok(email);
    assert_eq!(s.reset(email, &forged, &new).status, 403);
    assert_eq!(s.reset("nobody@example.com", &token, &new).status, 403);
    assert_eq!(s.reset(email, &token, &long).status, 400);
    assert_eq!(s.reset(email, &token, &new).status, 200);
    assert_eq!(s.reset(email, &token, &new).status, 403);
    assert_eq!(s.profile(&session).status, 403);
    let session = s.log_in_ok(email, &new);

    // Unknown paths and methods, with a token in the query.
    let r = s.get(&format!("/reset_password?reset_token={token}"), None);
    assert_eq!(r.status, 405);
    assert_eq!(s.get("/nowhere", Some(&session)).status, 404);
    let metrics = s.get("/metrics", None);
    assert_eq!(metrics.status, 200);
    s.assert_clean("/metrics", &metrics.text);

    let output = s.stop();
    for line in [
        "POST /users 200",
        "POST /users 413",
        "POST /sessions 429",
        "GET /profile 200",
        "DELETE /sessions 302",
        "PUT /reset_password 200",
        "GET /reset_password 405",
    ] {
        let line = match log_format {
            "json" => {
                let [method, path, status] = line.split(' ').collect::<Vec<_>>()[..] else {
                    unreachable!()
                };
                format!("\"method\":\"{method}\",\"path\":\"{path}\",\"status\":{status},")
            }
            _ => line.to_owned(),
        };
        assert!(
            output.contains(&line),
            "the access log has {line}:\n{output}"
        );
    }
    for event in [
        "login_ok",
        "login_failed",
        "login_throttled",
        "reset_completed",
    ] {
        let event = match log_format {
            "json" => format!("\"event\":\"{event}\""),
            _ => format!("event {event} "),
        };
        assert!(output.contains(&event), "the log has {event}:\n{output}");
    }
    for email in [email, "nobody@example.com", "x@example.com"] {
        assert!(!output.contains(email), "{email} in the log:\n{output}");
    }
    if log_format == "json" {
        for line in output.lines() {
            let parsed = serde_json::from_str::<serde_json::Value>(line);
            assert!(parsed.is_ok_and(|v| v.is_object()), "a JSON line: {line}");
        }
    }
}

#[test]
fn no_secret_reaches_the_output_of_a_reset_command_server() {
    let dir = TempDir::new();
    let out = dir.path().join("delivered");
    let deliver = delivery_script(dir.path(), &out, false);
    let mut s = Watched::start(&["--reset-command", deliver.to_str().unwrap()]);
    let (old, new) = (pw("old"), pw("new"));
    s.register_ok("cmd@example.com", &old);
    let session = s.log_in_ok("cmd@example.com", &old);
    let mut last = None;
    for _ in 0..2 {
        assert_eq!(s.reset_token("cmd@example.com").status, 200);
        let pair = delivered(&out, last.as_ref());
        s.keep(&pair.1);
        last = Some(pair);
    }
    let (_, token) = last.unwrap();
    assert_eq!(s.reset("cmd@example.com", &token, &new).status, 200);
    assert_eq!(s.profile(&session).status, 403);
    s.log_in_ok("cmd@example.com", &new);
    s.stop();

    // A command that fails after receiving the token: the log line names no token.
    std::fs::remove_file(&out).unwrap();
    let failing = delivery_script(dir.path(), &out, true);
    let mut s = Watched::start(&["--reset-command", failing.to_str().unwrap()]);
    s.register_ok("cmd@example.com", &old);
    let r = s.reset_token("cmd@example.com");
    assert_eq!(r.status, 200);
    s.keep(&delivered(&out, None).1);
    let output = s.stop();
    assert!(output.contains("POST /reset_password 200"), "{output}");
}
