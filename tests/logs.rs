//! The log as SPEC section 10 has it, read from the real binary's stderr: in `--log-format
//! json` every line is one JSON object (access lines, messages); in either format an access
//! line names the client's address, the proxied one under `--trust-proxy`; and nothing a client
//! sends can forge a line.

mod support;

use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value};
use support::*;

/// Every line of `output` as a JSON object; fails naming the first line that is not one.
fn json_lines(output: &str) -> Vec<Map<String, Value>> {
    output
        .lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(fields)) => fields,
            _ => panic!("not a JSON object: {line:?}\n--- the whole output:\n{output}"),
        })
        .collect()
}

/// Whether `line` (raw text) holds `keys` in this order, and no others.
fn keys_in_order(line: &Map<String, Value>, raw: &str, keys: &[&str]) -> bool {
    let mut at = 0;
    for key in keys {
        match raw[at..].find(&format!("\"{key}\":")) {
            Some(found) => at += found + key.len() + 3,
            None => return false,
        }
    }
    line.len() == keys.len()
}

/// `ts` as RFC 3339 in UTC to the millisecond, and within a minute of now.
fn assert_timestamp(line: &Map<String, Value>) {
    let ts = line["ts"].as_str().unwrap_or_default();
    let b = ts.as_bytes();
    let shape = ts.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z';
    assert!(shape, "ts {ts:?} is RFC 3339 UTC with milliseconds");
    let n = |range: std::ops::Range<usize>| ts[range].parse::<i64>().unwrap();
    let secs = days_from_civil(n(0..4), n(5..7), n(8..10)) * 86_400
        + n(11..13) * 3600
        + n(14..16) * 60
        + n(17..19);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let skew = std::time::Duration::from_secs((now - secs).unsigned_abs());
    assert!(skew.as_secs() < 60, "ts {ts} is about now");
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar (Howard
/// Hinnant's `days_from_civil`: the inverse of what the service computes, so a check of it).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The access lines of a JSON log: (method, path, status, addr).
fn json_access(lines: &[Map<String, Value>]) -> Vec<(String, String, u64, String)> {
    lines
        .iter()
        .filter(|l| l.contains_key("method") && l.contains_key("ms"))
        .map(|l| {
            (
                l["method"].as_str().unwrap().to_owned(),
                l["path"].as_str().unwrap().to_owned(),
                l["status"].as_u64().unwrap(),
                l["addr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn get_from(from: &str, to: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    Client::new(to)
        .from(ip(from))
        .send("GET", path, headers, b"")
}

#[test]
fn every_line_of_a_json_run_is_one_json_object() {
    let mut server = ChildServer::start(&["--log-format", "json"]);
    assert_eq!(server.get("/?token=sekrit", None).status, 200);
    assert_eq!(get_from("127.0.0.2", server.addr, "/nope", &[]).status, 404);
    let r = server.post(
        "/users",
        &[("email", "json@example.com"), ("password", "pw")],
    );
    assert_eq!(r.status, 200);
    // A path built to look like a login failure of someone else's address must stay inside
    // the path's string; an escape sequence (refused, or logged escaped) never reaches it raw.
    let forged = "/x\",\"event\":\"login_failed\",\"addr\":\"6.6.6.6";
    let request = format!("GET {forged} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = raw_request(ip("127.0.0.1"), server.addr, request.as_bytes());
    assert_eq!(answer.status, 404, "{answer:?}");
    let escape = b"GE\x1b[31mT /e\x1b[31mx HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(
        raw_request(ip("127.0.0.1"), server.addr, escape).status,
        400
    );

    let output = server.stop_and_collect();
    assert!(!output.contains('\x1b'), "no raw escape: {output}");
    let lines = json_lines(&output);
    let raw: Vec<&str> = output.lines().collect();
    for (line, raw) in lines.iter().zip(&raw) {
        assert_timestamp(line);
        assert!(raw.starts_with("{\"ts\":\""), "ts comes first: {raw}");
        // The registration's is the only event: the forged path made none.
        let event = line.get("event").and_then(Value::as_str);
        assert!(matches!(event, None | Some("registered")), "{raw}");
    }

    // The messages: the listening line, the development-mode warning, and the signal.
    let message = |level: &str, text: &str| {
        lines.iter().zip(&raw).any(|(l, raw)| {
            l.get("level").and_then(Value::as_str) == Some(level)
                && l.get("message")
                    .and_then(Value::as_str)
                    .is_some_and(|m| m.contains(text))
                && keys_in_order(l, raw, &["ts", "level", "message"])
        })
    };
    assert!(message("info", "listening on http://"), "{output}");
    assert!(
        message("warning", "POST /reset_password returns"),
        "{output}"
    );
    assert!(message("info", "finishing in-flight requests"), "{output}");

    // The access lines: ts, method, path, status, ms, addr, in that order.
    for (line, raw) in lines.iter().zip(&raw).filter(|(l, _)| l.contains_key("ms")) {
        let keys = ["ts", "method", "path", "status", "ms", "addr"];
        assert!(keys_in_order(line, raw, &keys), "{raw}");
        assert!(line["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{raw}");
    }
    let access = json_access(&lines);
    let has = |method: &str, path: &str, status: u64, addr: &str| {
        access
            .iter()
            .any(|(m, p, s, a)| m == method && p == path && *s == status && a == addr)
    };
    assert!(has("GET", "/", 200, "127.0.0.1"), "{access:?}");
    assert!(has("GET", "/nope", 404, "127.0.0.2"), "{access:?}");
    assert!(has("POST", "/users", 200, "127.0.0.1"), "{access:?}");
    assert!(
        access.iter().any(|(_, p, _, _)| p == forged),
        "the forged path is logged as a path: {access:?}"
    );
    assert!(!output.contains("sekrit"), "{output}");
}

#[test]
fn the_text_log_names_the_client_and_under_trust_proxy_the_forwarded_one() {
    let mut server = ChildServer::start(&[]);
    assert_eq!(get_from("127.0.0.2", server.addr, "/", &[]).status, 200);
    let forwarded = [("X-Forwarded-For", "198.51.100.7")];
    assert_eq!(
        get_from("127.0.0.3", server.addr, "/", &forwarded).status,
        200
    );
    let output = server.stop_and_collect();
    assert!(output.contains("\nGET / 200 "), "{output}");
    let line = |addr: &str| {
        output
            .lines()
            .any(|l| l.starts_with("GET / 200 ") && l.ends_with(&format!("ms {addr}")))
    };
    assert!(line("127.0.0.2"), "{output}");
    // Without --trust-proxy the header is nobody's word.
    assert!(line("127.0.0.3"), "{output}");
    assert!(!output.contains("198.51.100.7"), "{output}");

    let mut server = ChildServer::start(&["--trust-proxy"]);
    assert_eq!(
        get_from("127.0.0.3", server.addr, "/", &forwarded).status,
        200
    );
    let output = server.stop_and_collect();
    assert!(
        output
            .lines()
            .any(|l| l.starts_with("GET / 200 ") && l.ends_with("ms 198.51.100.7")),
        "{output}"
    );

    let mut server = ChildServer::start(&["--trust-proxy", "--log-format", "json"]);
    assert_eq!(
        get_from("127.0.0.3", server.addr, "/", &forwarded).status,
        200
    );
    let output = server.stop_and_collect();
    let access = json_access(&json_lines(&output));
    assert_eq!(
        access,
        [("GET".into(), "/".into(), 200, "198.51.100.7".into())],
        "{output}"
    );
}

#[test]
fn a_bad_log_format_is_a_usage_error() {
    let dir = TempDir::new();
    let out = std::process::Command::new(server_binary())
        .args(["--bind", "127.0.0.1:0", "--log-format", "yaml", "--db"])
        .arg(dir.path().join("auth.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad value for --log-format") && stderr.contains("not text or json"),
        "{stderr}"
    );
}

/// A form request from source address `from`, with a session cookie when given.
fn form_from(
    from: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
    session: Option<&str>,
    form: &[(&str, &str)],
) -> Resp {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let cookie = session.map(|s| format!("session_id={s}"));
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(cookie) = &cookie {
        headers.push(("Cookie", cookie.as_str()));
    }
    Client::new(to)
        .from(ip(from))
        .send(method, path, &headers, body.as_bytes())
}

/// Each request that has an event, from an address of its own, so that each event line can be
/// told to be where it happened: registration, a failed login, a throttled one, a login, a
/// logout, a reset requested and completed, other sessions ended, a password changed, a
/// registration past the limit, an account deleted: every event of SPEC section 10. Every line parses; each event is there once, with
/// the user's id where the handler knows it, and is written with its own request's access line.
#[test]
fn each_event_is_logged_once_where_it_happened() {
    let mut server = ChildServer::start(&[
        "--log-format",
        "json",
        "--max-login-failures",
        "1",
        "--max-registrations",
        "1",
    ]);
    let to = server.addr;
    let email = "events@example.com";
    let r = form_from(
        "127.0.0.2",
        to,
        "POST",
        "/users",
        None,
        &[("email", email), ("password", "right")],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let login = |from: &str, password: &str| {
        form_from(
            from,
            to,
            "POST",
            "/sessions",
            None,
            &[("email", email), ("password", password)],
        )
    };
    assert_eq!(login("127.0.0.3", "wrong").status, 401);
    assert_eq!(login("127.0.0.3", "right").status, 429);
    let r = login("127.0.0.4", "right");
    assert_eq!(r.status, 200, "{}", r.text);
    let session = r.session_cookie().unwrap();
    let r = form_from("127.0.0.5", to, "DELETE", "/sessions", Some(&session), &[]);
    assert_eq!(r.status, 302, "{}", r.text);
    let r = form_from(
        "127.0.0.6",
        to,
        "POST",
        "/reset_password",
        None,
        &[("email", email)],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.json["reset_token"].as_str().unwrap().to_owned();
    let r = form_from(
        "127.0.0.7",
        to,
        "PUT",
        "/reset_password",
        None,
        &[
            ("email", email),
            ("reset_token", &token),
            ("new_password", "new"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    // The routes beyond the reference: two sessions, the other one ended, the password
    // changed, a registration past the limit, the account deleted.
    let log_in_new = |from: &str| {
        let r = form_from(
            from,
            to,
            "POST",
            "/sessions",
            None,
            &[("email", email), ("password", "new")],
        );
        assert_eq!(r.status, 200, "{}", r.text);
        r.session_cookie().unwrap()
    };
    let kept = log_in_new("127.0.0.9");
    let other = log_in_new("127.0.0.10");
    let r = form_from(
        "127.0.0.11",
        to,
        "DELETE",
        "/sessions?scope=others",
        Some(&kept),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let r = form_from(
        "127.0.0.12",
        to,
        "PUT",
        "/password",
        Some(&kept),
        &[("password", "new"), ("new_password", "newer")],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let r = form_from(
        "127.0.0.2",
        to,
        "POST",
        "/users",
        None,
        &[("email", "second@example.com"), ("password", "pw")],
    );
    assert_eq!(r.status, 429, "{}", r.text);
    let r = form_from(
        "127.0.0.14",
        to,
        "DELETE",
        "/profile",
        Some(&kept),
        &[("password", "newer")],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    // Requests that are no event: a profile without a session, a refused registration.
    assert_eq!(server.get("/profile", None).status, 403);
    let r = server.post("/users", &[("email", "no-at-sign"), ("password", "again")]);
    assert_eq!(r.status, 400);

    let output = server.stop_and_collect();
    for secret in [
        email, "right", "wrong", "\"new\"", "newer", &session, &token, &kept, &other,
    ] {
        assert!(!output.contains(secret), "{secret:?} in the log:\n{output}");
    }
    let lines = json_lines(&output);
    let raw: Vec<&str> = output.lines().collect();
    let events: Vec<(usize, &Map<String, Value>)> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains_key("event"))
        .collect();
    let user_id = events
        .iter()
        .find(|(_, l)| l["event"] == "registered")
        .and_then(|(_, l)| l["user_id"].as_i64())
        .unwrap_or_else(|| panic!("a registered event with the user's id:\n{output}"));
    let mut found: Vec<(String, Option<i64>, String)> = Vec::new();
    for (n, line) in &events {
        assert_timestamp(line);
        let keys: &[&str] = if line.contains_key("user_id") {
            &["ts", "event", "user_id", "addr"]
        } else {
            &["ts", "event", "addr"]
        };
        assert!(keys_in_order(line, raw[*n], keys), "{}", raw[*n]);
        // The same request's access line follows it: one batch, one write.
        let next = &lines[n + 1];
        assert!(
            next.contains_key("ms") && next["addr"] == line["addr"],
            "{} is followed by its access line, not {}",
            raw[*n],
            raw[n + 1]
        );
        found.push((
            line["event"].as_str().unwrap().to_owned(),
            line.get("user_id").and_then(Value::as_i64),
            line["addr"].as_str().unwrap().to_owned(),
        ));
    }
    found.sort();
    let id = Some(user_id);
    let mut expected = vec![
        ("registered".to_owned(), id, "127.0.0.2".to_owned()),
        ("login_failed".to_owned(), None, "127.0.0.3".to_owned()),
        ("login_throttled".to_owned(), None, "127.0.0.3".to_owned()),
        ("login_ok".to_owned(), id, "127.0.0.4".to_owned()),
        ("session_ended".to_owned(), id, "127.0.0.5".to_owned()),
        ("reset_requested".to_owned(), id, "127.0.0.6".to_owned()),
        ("reset_completed".to_owned(), id, "127.0.0.7".to_owned()),
        ("login_ok".to_owned(), id, "127.0.0.9".to_owned()),
        ("login_ok".to_owned(), id, "127.0.0.10".to_owned()),
        ("sessions_revoked".to_owned(), id, "127.0.0.11".to_owned()),
        ("password_changed".to_owned(), id, "127.0.0.12".to_owned()),
        ("rate_limited".to_owned(), None, "127.0.0.2".to_owned()),
        ("user_deleted".to_owned(), id, "127.0.0.14".to_owned()),
    ];
    expected.sort();
    assert_eq!(found, expected, "{output}");
}

#[test]
fn events_in_the_text_log() {
    let mut server = ChildServer::start(&[]);
    let to = server.addr;
    let form = [("email", "text@example.com"), ("password", "pw")];
    assert_eq!(
        form_from("127.0.0.2", to, "POST", "/users", None, &form).status,
        200
    );
    let wrong = [("email", "text@example.com"), ("password", "nope")];
    assert_eq!(
        form_from("127.0.0.3", to, "POST", "/sessions", None, &wrong).status,
        401
    );
    let output = server.stop_and_collect();
    let registered = output
        .lines()
        .find(|l| l.starts_with("event registered "))
        .unwrap_or_else(|| panic!("{output}"));
    let (_, rest) = registered.split_once("user_id=").expect("a user id");
    let (id, addr) = rest.split_once(' ').unwrap();
    assert!(id.parse::<i64>().is_ok(), "{registered}");
    assert_eq!(addr, "addr=127.0.0.2");
    assert!(
        output.contains("\nevent login_failed addr=127.0.0.3\nPOST /sessions 401 "),
        "{output}"
    );
    assert!(!output.contains("text@example.com"), "{output}");
}
