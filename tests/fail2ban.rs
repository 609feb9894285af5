//! deploy/fail2ban's filter against a log the service wrote: the real binary with
//! `--log-format json`, failed logins from two loopback addresses among requests that must not
//! count, and `fail2ban-regex` (Debian's fail2ban) finding exactly those failures, with the
//! right hosts, in the log as a file holds it and as fail2ban reads it from the journal.
//!
//! Without `fail2ban-regex` the test says so and passes, unless `AUTH_TEST_FAIL2BAN` is set:
//! `.ci/fail2ban.sh` installs fail2ban and sets it, so CI runs the test for real.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

use support::*;

const FILTER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/fail2ban/filter.d/auth-service.conf"
);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn log_in_from(from: &str, to: SocketAddr, email: &str, password: &str) -> u16 {
    Client::new(to)
        .from(ip(from))
        .log_in(email, password)
        .status
}

/// The hosts `fail2ban-regex` finds in `log` with the filter, one per matched line, sorted.
fn matched_hosts(log: &Path) -> Vec<String> {
    let out = Command::new("fail2ban-regex")
        .args(["-o", "ip"])
        .arg(log)
        .arg(FILTER)
        .output()
        .expect("fail2ban-regex runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fail2ban-regex failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut hosts: Vec<String> = stdout.lines().map(str::to_owned).collect();
    hosts.sort();
    hosts
}

#[test]
fn the_filter_finds_exactly_the_failed_logins_and_their_hosts() {
    if Command::new("fail2ban-regex")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("AUTH_TEST_FAIL2BAN").is_none(),
            "AUTH_TEST_FAIL2BAN is set, but fail2ban-regex is not installed"
        );
        println!("skipped: fail2ban-regex is not installed (apt-get install fail2ban)");
        return;
    }
    let mut server = ChildServer::start(&["--log-format", "json", "--max-login-failures", "4"]);
    let to = server.addr;
    let r = server.post(
        "/users",
        &[("email", "victim@example.com"), ("password", "right")],
    );
    assert_eq!(r.status, 200);

    // Four failures from .2, the fifth attempt throttled (not a failure); two from .3, one of
    // them for an unknown email; a success from each.
    for _ in 0..4 {
        assert_eq!(
            log_in_from("127.0.0.2", to, "victim@example.com", "guess"),
            401
        );
    }
    assert_eq!(
        log_in_from("127.0.0.2", to, "victim@example.com", "right"),
        429
    );
    assert_eq!(
        log_in_from("127.0.0.3", to, "victim@example.com", "guess"),
        401
    );
    assert_eq!(
        log_in_from("127.0.0.3", to, "nobody@example.com", "guess"),
        401
    );
    assert_eq!(
        log_in_from("127.0.0.3", to, "victim@example.com", "right"),
        200
    );
    assert_eq!(
        log_in_from("127.0.0.4", to, "victim@example.com", "right"),
        200
    );
    // A path dressed as a failure of another address counts for nobody.
    let forged = "/x\",\"event\":\"login_failed\",\"addr\":\"6.6.6.6\"}";
    let request = format!("GET {forged} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(
        raw_request(ip("127.0.0.5"), to, request.as_bytes()).status,
        404
    );

    let output = server.stop_and_collect();
    let failures = output.matches("\"event\":\"login_failed\"").count();
    assert_eq!(failures, 6, "the log has the failures:\n{output}");

    let dir = TempDir::new();
    let file = dir.path().join("auth-service.log");
    std::fs::write(&file, &output).unwrap();
    // The journal's form of the same lines, as fail2ban's systemd backend hands them over.
    let journal = dir.path().join("journal.log");
    let prefixed: String = output
        .lines()
        .map(|line| format!("host1 auth-service[4242]: {line}\n"))
        .collect();
    std::fs::write(&journal, prefixed).unwrap();

    let expected = [
        "127.0.0.2",
        "127.0.0.2",
        "127.0.0.2",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.3",
    ];
    assert_eq!(matched_hosts(&file), expected, "in the file:\n{output}");
    assert_eq!(matched_hosts(&journal), expected, "in the journal's form");
}
