//! Operating the service: `GET /health` (200 while the store answers, 503 when it cannot) and,
//! with `--metrics`, `GET /metrics`: a Prometheus text exposition that parses, and whose
//! counters move with what the service does.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use support::*;

/// One sample line: the series (`name{labels}` as written) and its value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn series(&self) -> String {
        if self.labels.is_empty() {
            return self.name.clone();
        }
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    let first_ok = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
    chars.next().is_some_and(first_ok) && chars.all(|c| first_ok(c) || c.is_ascii_digit())
}

/// A float as the exposition format writes one (Go's `ParseFloat` forms, `+Inf` among them).
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// `{a="1",b="x\"y"}` into pairs, unescaping `\\`, `\"` and `\n`.
fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or(format!("bad label in {s:?}"))?;
        if !is_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s:?}")),
            }
        };
        labels.push((name.to_owned(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(labels)
}

/// Parses a text exposition (format 0.0.4): every non-comment line is `name{labels} value`
/// (with an optional timestamp), every value a float, and every sample's metric has a `# TYPE`
/// line before it (a histogram's `_bucket`, `_sum` and `_count` under the histogram's name).
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    if !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            match words.as_slice() {
                ["TYPE", name, kind] => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind) {
                        return Err(format!("unknown type in {line:?}"));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(format!("second TYPE line for {name}"));
                    }
                }
                ["TYPE", ..] => return Err(format!("bad TYPE line {line:?}")),
                ["HELP", name, ..] if is_name(name, true) => {}
                ["HELP", ..] => return Err(format!("bad HELP line {line:?}")),
                _ => {}
            }
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(_) => {
                let close = line
                    .rfind('}')
                    .ok_or(format!("no closing brace: {line:?}"))?;
                (&line[..close + 1], &line[close + 1..])
            }
            None => line.split_at(line.find(' ').ok_or(format!("no value: {line:?}"))?),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, parse_labels(&labels[..labels.len() - 1])?),
            None => (series, Vec::new()),
        };
        if !is_name(name, true) {
            return Err(format!("bad metric name in {line:?}"));
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let value = match fields.as_slice() {
            [value] => value,
            [value, timestamp] if timestamp.parse::<i64>().is_ok() => value,
            _ => return Err(format!("not `name{{labels}} value`: {line:?}")),
        };
        let value = parse_value(value).ok_or(format!("value is not a float: {line:?}"))?;
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| types.get(*base).map(String::as_str) == Some("histogram"))
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(format!("{name} has no TYPE line before it"));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// The series of one scrape and their values; a series not shown is 0.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    fn of(server: &TestServer) -> Scrape {
        let r = server.get("/metrics", None);
        assert_eq!(r.status, 200, "{}", r.text);
        let samples = parse_exposition(&r.text).unwrap_or_else(|e| panic!("{e}\n{}", r.text));
        Scrape(samples.iter().map(|s| (s.series(), s.value)).collect())
    }

    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// Scrapes until `settled` holds of a scrape, for at most 10 s; the last scrape. A worker
    /// counts a request just after writing its answer, so the client can be a moment ahead.
    fn when(server: &TestServer, settled: impl Fn(&Scrape) -> bool) -> Scrape {
        poll(Duration::from_secs(10), || {
            Some(Scrape::of(server)).filter(|scrape| settled(scrape))
        })
        .unwrap_or_else(|| Scrape::of(server))
    }
}

/// How much each series named in `series` grew from `before` to `after`.
fn growth(before: &Scrape, after: &Scrape, series: &[&str]) -> Vec<f64> {
    series
        .iter()
        .map(|s| after.get(s) - before.get(s))
        .collect()
}

const LOGINS_OK: &str = r#"auth_logins_total{outcome="ok"}"#;
const LOGINS_FAILED: &str = r#"auth_logins_total{outcome="failed"}"#;
const LOGINS_THROTTLED: &str = r#"auth_logins_total{outcome="throttled"}"#;
const BCRYPT_COUNT: &str = "auth_bcrypt_verify_seconds_count";
const IN_FLIGHT: &str = "auth_requests_in_flight";

fn metrics_server() -> TestServer {
    TestServer::with(|c| {
        c.metrics = true;
        c.policy.max_login_failures = 2;
    })
}

#[test]
fn metrics_are_served_only_with_the_flag() {
    let off = TestServer::start();
    let r = off.get("/metrics", None);
    assert_eq!(r.status, 404);
    assert_eq!(r.json["message"], "not found");

    let on = metrics_server();
    let r = on.get("/metrics", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    let samples = parse_exposition(&r.text).unwrap();
    let names: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    for name in [
        "auth_requests_in_flight",
        "auth_logins_total",
        "auth_registrations_total",
        "auth_password_resets_total",
        "auth_bcrypt_verify_seconds_bucket",
        "auth_bcrypt_verify_seconds_sum",
        "auth_bcrypt_verify_seconds_count",
    ] {
        assert!(names.contains(name), "{name} missing from\n{}", r.text);
    }
    assert!(samples.iter().all(|s| s.name.starts_with("auth_")));
}

#[test]
fn the_exposition_parser_refuses_what_prometheus_would() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n\
              # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n";
    let samples = parse_exposition(ok).unwrap();
    assert_eq!(samples.len(), 4);
    assert_eq!(samples[0].series(), "a_total{x=\"1\",y=\"q\"\"}");
    for bad in [
        "a_total 1\n",                                    // no TYPE line
        "# TYPE a_total counter\na_total one\n",          // not a float
        "# TYPE a_total counter\na_total{x=1} 1\n",       // unquoted label
        "# TYPE a_total counter\na_total 1 2 3\n",        // extra fields
        "# TYPE a_total counter\n9a_total 1\n",           // bad name
        "# TYPE a_total counter\na_total 1",              // no final newline
        "# TYPE a_total counter\n# TYPE a_total gauge\n", // two TYPE lines
        "# TYPE a_total thing\n",                         // unknown type
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn login_counters_and_the_bcrypt_histogram_move() {
    let s = metrics_server();
    let email = "metrics@example.com";
    let series = [LOGINS_OK, LOGINS_FAILED, LOGINS_THROTTLED, BCRYPT_COUNT];

    let before = Scrape::of(&s);
    assert_eq!(s.register(email, "right").status, 200);
    let after_register = Scrape::of(&s);
    // Registration hashes, it does not verify.
    assert_eq!(
        growth(&before, &after_register, &series),
        [0.0, 0.0, 0.0, 0.0]
    );

    let r = s.log_in(email, "wrong");
    assert_eq!(r.status, 401);
    let after_failed = Scrape::of(&s);
    assert_eq!(
        growth(&after_register, &after_failed, &series),
        [0.0, 1.0, 0.0, 1.0]
    );

    let r = s.log_in(email, "right");
    assert_eq!(r.status, 200);
    let after_ok = Scrape::of(&s);
    assert_eq!(
        growth(&after_failed, &after_ok, &series),
        [1.0, 0.0, 0.0, 1.0]
    );

    // An unknown email costs a verification too (against the dummy hash).
    let r = s.log_in("nobody@example.com", "x");
    assert_eq!(r.status, 401);
    for _ in 0..2 {
        assert_eq!(s.log_in(email, "wrong").status, 401);
    }
    let before_throttled = Scrape::of(&s);
    let r = s.log_in(email, "right");
    assert_eq!(r.status, 429, "{}", r.text);
    let after_throttled = Scrape::of(&s);
    assert_eq!(
        growth(&before_throttled, &after_throttled, &series),
        [0.0, 0.0, 1.0, 0.0],
        "a throttled login runs no bcrypt"
    );
    assert_eq!(
        growth(&after_ok, &before_throttled, &[LOGINS_FAILED]),
        [3.0]
    );

    // The histogram is whole: buckets never fall, +Inf equals the count, and the sum grew.
    let buckets: Vec<(f64, f64)> = parse_exposition(&s.get("/metrics", None).text)
        .unwrap()
        .into_iter()
        .filter(|x| x.name == "auth_bcrypt_verify_seconds_bucket")
        .map(|x| (x.labels[0].1.parse::<f64>().unwrap(), x.value))
        .collect();
    assert!(buckets.len() > 2);
    assert!(buckets
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    let (le, inf) = *buckets.last().unwrap();
    assert!(le.is_infinite());
    assert_eq!(inf, after_throttled.get(BCRYPT_COUNT));
    assert_eq!(inf, 5.0);
    assert!(after_throttled.get("auth_bcrypt_verify_seconds_sum") > 0.0);
}

#[test]
fn registration_and_reset_counters_move() {
    let s = metrics_server();
    let registered = "auth_registrations_total";
    let requested = r#"auth_password_resets_total{stage="requested"}"#;
    let completed = r#"auth_password_resets_total{stage="completed"}"#;
    let series = [registered, requested, completed];

    let before = Scrape::of(&s);
    s.register_ok("r@example.com", "p");
    // Refused registrations are not registrations.
    assert_eq!(s.register("r@example.com", "p").status, 400);
    assert_eq!(s.register("no-at", "p").status, 400);
    let after_register = Scrape::of(&s);
    assert_eq!(growth(&before, &after_register, &series), [1.0, 0.0, 0.0]);

    let token = s.reset_token_ok("r@example.com");
    assert_eq!(s.reset_token("unknown@example.com").status, 403);
    let after_request = Scrape::of(&s);
    assert_eq!(
        growth(&after_register, &after_request, &series),
        [0.0, 1.0, 0.0]
    );

    assert_eq!(s.reset("r@example.com", &token, "q").status, 200);
    assert_eq!(s.reset("r@example.com", &token, "q").status, 403, "spent");
    let after_reset = Scrape::of(&s);
    assert_eq!(
        growth(&after_request, &after_reset, &series),
        [0.0, 0.0, 1.0]
    );
}

#[test]
fn requests_are_counted_by_route_and_status() {
    let s = metrics_server();
    let before = Scrape::of(&s);
    // What counts here is the counters, not the answers.
    for path in ["/", "/", "/profile", "/health", "/nope", "/users"] {
        let _ = s.get(path, None);
    }
    let _ = s.post("/users", &[("email", "x")]);
    let counted = |after: &Scrape, route: &str, status: &str| {
        let series = format!("auth_requests_total{{route=\"{route}\",status=\"{status}\"}}");
        after.get(&series) - before.get(&series)
    };
    let expected = [
        ("/", "200", 2.0),
        ("/profile", "403", 1.0),
        ("/health", "200", 1.0),
        // Unknown paths share one series.
        ("other", "404", 1.0),
        ("/users", "405", 1.0),
        ("/users", "400", 1.0),
        ("/", "404", 0.0),
    ];
    let counts = |after: &Scrape| -> Vec<f64> {
        expected
            .iter()
            .map(|(route, status, _)| counted(after, route, status))
            .collect()
    };
    let want: Vec<f64> = expected.iter().map(|(_, _, n)| *n).collect();
    let after = Scrape::when(&s, |a| counts(a) == want);
    assert_eq!(counts(&after), want, "{expected:?}");
    // Scrapes are requests too: the first one (at least) shows in the last.
    assert!(counted(&after, "/metrics", "200") >= 1.0);
}

#[test]
fn the_in_flight_gauge_counts_requests_being_handled() {
    let s = metrics_server();
    // A scrape sees itself.
    assert_eq!(Scrape::of(&s).get(IN_FLIGHT), 1.0);

    // A request whose body has not all arrived is in flight from its first byte.
    let body = format!("email=slow@example.com&password=p&pad={}", "x".repeat(2000));
    let request = request("POST", "/users", &[("Content-Type", FORM)], body.as_bytes());
    let (first, rest) = request.split_at(request.len() - 1900);
    let mut slow = TcpStream::connect(s.addr).unwrap();
    slow.write_all(first).unwrap();
    eventually("the slow request to show", Duration::from_secs(10), || {
        (Scrape::of(&s).get(IN_FLIGHT) >= 2.0).then_some(())
    });
    slow.write_all(rest).unwrap();
    let r = read_response(&mut slow, Duration::from_secs(10));
    assert_eq!(r.status, 200, "{r:?}");
    let after = Scrape::when(&s, |a| a.get(IN_FLIGHT) == 1.0);
    assert_eq!(
        after.get(IN_FLIGHT),
        1.0,
        "the answered request is no longer in flight"
    );
}

#[test]
fn health_is_200_while_the_store_answers_and_503_when_it_cannot() {
    let s = TestServer::start();
    let r = s.get("/health", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.text, r#"{"status":"ok"}"#);

    // Each worker keeps its connection open, so deleting the file or taking away the
    // directory's permissions changes nothing it can see (and root ignores permissions). A
    // table the query needs going away is what every worker sees at once, on either store.
    execute(&s.db_path(), "ALTER TABLE users RENAME TO users_away");
    for _ in 0..3 {
        let r = s.get("/health", None);
        assert_eq!(r.status, 503, "{}", r.text);
        assert_eq!(r.json["message"], "database unavailable");
    }
    execute(&s.db_path(), "ALTER TABLE users_away RENAME TO users");
    assert_eq!(s.get("/health", None).status, 200, "it recovers by itself");
}

#[test]
fn account_and_session_counters_move() {
    const BOB: &str = "bob@example.com";
    let ended = |how: &str| format!(r#"auth_sessions_ended_total{{how="{how}"}}"#);
    let (logout, revoked, evicted, expired) = (
        ended("logout"),
        ended("revoked"),
        ended("evicted"),
        ended("expired"),
    );
    let limited = r#"auth_rate_limited_total{limit="registration"}"#;
    let (changed, deleted, rehashed) = (
        "auth_password_changes_total",
        "auth_users_deleted_total",
        "auth_rehashes_total",
    );
    let series = [
        logout.as_str(),
        revoked.as_str(),
        evicted.as_str(),
        expired.as_str(),
        limited,
        changed,
        deleted,
        rehashed,
    ];
    let mut s = TestServer::with(|c| {
        c.metrics = true;
        c.policy.max_sessions = 2;
        // Long enough for the first part on a busy machine; the second waits it out.
        c.policy.session_idle = 3;
        c.policy.max_registrations = 2;
    });
    let with_cookie = |session: &str, method: &str, path: &str, pairs: &[(&str, &str)]| {
        let cookie = format!("session_id={session}");
        s.send(method, path, &[("Cookie", &cookie)], form(pairs).as_bytes())
    };

    s.register_ok("carol@example.com", "pw");
    let before = Scrape::of(&s);
    let first = s.register_and_log_in(BOB, "pw");
    assert_eq!(s.register("eve@example.com", "pw").status, 429);
    let second = s.log_in_ok(BOB, "pw");
    let third = s.log_in_ok(BOB, "pw"); // evicts the first
    assert_eq!(s.log_out(&third).status, 302);
    let fourth = s.log_in_ok(BOB, "pw");
    let r = s.delete("/sessions?scope=others", Some(&fourth)); // revokes the second
    assert_eq!(r.status, 200, "{r:?}");
    let r = with_cookie(
        &fourth,
        "PUT",
        "/password",
        &[("password", "pw"), ("new_password", "pw2")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let after = Scrape::of(&s);
    assert_eq!(
        growth(&before, &after, &series),
        [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    );
    assert_eq!(s.profile(&first).status, 403, "evicted");
    assert_eq!(s.profile(&second).status, 403, "revoked");

    // Idle past --session-idle: found expired and deleted.
    std::thread::sleep(Duration::from_millis(3_100));
    assert_eq!(s.profile(&fourth).status, 403);
    let fifth = s.log_in_ok(BOB, "pw2");
    let r = with_cookie(&fifth, "DELETE", "/profile", &[("password", "pw2")]);
    assert_eq!(r.status, 200, "{r:?}");
    let later = Scrape::of(&s);
    assert_eq!(
        growth(&after, &later, &series),
        [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    );

    // Carol's hash, stored at cost 4, re-hashed at her first login at another cost.
    s.config.policy.bcrypt_cost = 5;
    let s = s.restart();
    let before = Scrape::of(&s);
    s.log_in_ok("carol@example.com", "pw");
    assert_eq!(growth(&before, &Scrape::of(&s), &[rehashed]), [1.0]);
}
