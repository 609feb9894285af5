//! `Config`: every flag, the environment variable behind it, its default and its check.
//!
//! A flag beats its variable, which beats the default. Each flag `--some-name` reads the
//! variable `AUTH_SOME_NAME`. Parsing is a pure function of the arguments and an environment
//! lookup, so it is tested without touching the process's environment.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Policy;

/// The running service's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub db: PathBuf,
    pub workers: usize,
    pub max_body_bytes: usize,
    pub secure_cookies: bool,
    pub trust_proxy: bool,
    pub metrics: bool,
    /// Open connections at once; past it a new connection is closed at once.
    pub max_connections: usize,
    /// Time for a whole request head to arrive, from its first byte.
    pub header_timeout: Duration,
    /// Time in-flight requests get after SIGTERM before the process exits anyway.
    pub shutdown_grace: Duration,
    pub policy: Policy,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 5000)),
            db: PathBuf::from("auth.db"),
            workers: default_workers(),
            max_body_bytes: 65_536,
            secure_cookies: false,
            trust_proxy: false,
            metrics: false,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            policy: Policy::default(),
        }
    }
}

/// Request workers: enough that cheap requests find a free one while every core runs bcrypt.
pub fn default_workers() -> usize {
    (cores() * 4).max(8)
}

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

/// A flag or value the command line got wrong; `main` prints it and exits 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    UnknownFlag(String),
    MissingValue(&'static str),
    UnexpectedValue(&'static str),
    BadValue {
        flag: &'static str,
        source: &'static str,
        why: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownFlag(flag) => write!(f, "unknown flag {flag} (see --help)"),
            ConfigError::MissingValue(flag) => write!(f, "--{flag} needs a value"),
            ConfigError::UnexpectedValue(flag) => write!(f, "--{flag} takes no value"),
            ConfigError::BadValue { flag, source, why } => {
                write!(f, "bad value for --{flag} (from {source}): {why}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// One flag: its name without dashes, its value's name (`None` for a switch), its default as
/// shown, and what it means.
struct Flag {
    name: &'static str,
    value: Option<&'static str>,
    default: &'static str,
    help: &'static str,
}

#[rustfmt::skip]
const FLAGS: &[Flag] = &[
    Flag { name: "bind", value: Some("ADDR"), default: "127.0.0.1:5000", help: "where to listen (port 0: any free port)" },
    Flag { name: "db", value: Some("PATH"), default: "auth.db", help: "the SQLite file, created when missing, never wiped; or a postgres:// URL (feature postgres)" },
    Flag { name: "bcrypt-cost", value: Some("N"), default: "12", help: "bcrypt work factor (4 to 31)" },
    Flag { name: "workers", value: Some("N"), default: "4 per core, at least 8", help: "request worker threads" },
    Flag { name: "max-body-bytes", value: Some("N"), default: "65536", help: "largest accepted request body" },
    Flag { name: "session-ttl", value: Some("SECS"), default: "86400", help: "absolute session lifetime" },
    Flag { name: "session-idle", value: Some("SECS"), default: "7200", help: "a session unused this long ends" },
    Flag { name: "reset-ttl", value: Some("SECS"), default: "3600", help: "reset token lifetime" },
    Flag { name: "reset-command", value: Some("PATH"), default: "none", help: "deliver reset tokens by running PATH with AUTH_EMAIL and AUTH_RESET_TOKEN" },
    Flag { name: "secure-cookies", value: None, default: "off", help: "add Secure to the session cookie (serve behind TLS)" },
    Flag { name: "trust-proxy", value: None, default: "off", help: "take the client address from the last X-Forwarded-For hop" },
    Flag { name: "max-login-failures", value: Some("N"), default: "5", help: "failed logins per (client address, email) before 429" },
    Flag { name: "login-window", value: Some("SECS"), default: "900", help: "the window those failures are counted in" },
    Flag { name: "min-password-length", value: Some("N"), default: "1", help: "shortest accepted new password, in characters" },
    Flag { name: "metrics", value: None, default: "off", help: "serve GET /metrics (Prometheus text format)" },
    Flag { name: "max-connections", value: Some("N"), default: "1024", help: "open connections at once; past it a new one is closed at once" },
    Flag { name: "header-timeout", value: Some("SECS"), default: "10", help: "time for a whole request head to arrive" },
    Flag { name: "shutdown-grace", value: Some("SECS"), default: "10", help: "time in-flight requests get after SIGTERM" },
];

/// The `--help` text.
pub fn help() -> String {
    let mut out = format!(
        "auth-service {}: user registration, login sessions and password resets over HTTP\n\n\
         usage: auth-service [FLAGS]\n\n\
         Each flag also reads AUTH_<NAME> (for --bind, AUTH_BIND); a flag beats its variable.\n\
         Switches read 1, true, yes or on (0, false, no, off) from their variable.\n\nflags:\n",
        env!("CARGO_PKG_VERSION")
    );
    for flag in FLAGS {
        let left = match flag.value {
            Some(v) => format!("--{} {v}", flag.name),
            None => format!("--{}", flag.name),
        };
        out.push_str(&format!(
            "  {left:<26} {} [default: {}]\n",
            flag.help, flag.default
        ));
    }
    out.push_str("  --help                     print this and exit\n");
    out.push_str("  --version                  print the version and exit\n");
    out
}

/// The variable behind a flag: `bcrypt-cost` reads `AUTH_BCRYPT_COST`.
pub fn env_name(flag: &str) -> String {
    format!("AUTH_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

impl Config {
    /// Parses `args` (without the program name), falling back on `env` for each flag not
    /// given, then on the default.
    pub fn parse<I, S>(
        args: I,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Command, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut given: Vec<(&'static Flag, Option<String>)> = Vec::new();
        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--help" | "-h" => return Ok(Command::Help),
                "--version" | "-V" => return Ok(Command::Version),
                _ => {}
            }
            let (name, inline) = match arg.strip_prefix("--") {
                Some(rest) => match rest.split_once('=') {
                    Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                    None => (rest.to_owned(), None),
                },
                None => return Err(ConfigError::UnknownFlag(arg)),
            };
            let flag = FLAGS
                .iter()
                .find(|f| f.name == name)
                .ok_or_else(|| ConfigError::UnknownFlag(arg.clone()))?;
            let value = match (flag.value, inline) {
                (Some(_), Some(v)) => Some(v),
                (Some(_), None) => Some(args.next().ok_or(ConfigError::MissingValue(flag.name))?),
                (None, Some(_)) => return Err(ConfigError::UnexpectedValue(flag.name)),
                (None, None) => None,
            };
            given.push((flag, value));
        }

        let mut config = Config::default();
        for flag in FLAGS {
            // The last occurrence of a flag wins, as with most command lines.
            let from_args = given.iter().rev().find(|(f, _)| f.name == flag.name);
            let (value, source) = match from_args {
                Some((_, value)) => (value.clone().or(Some(String::new())), "the command line"),
                None => match env(&env_name(flag.name)) {
                    Some(v) => (Some(v), "the environment"),
                    None => continue,
                },
            };
            let value = value.unwrap_or_default();
            let bad = |why: String| ConfigError::BadValue {
                flag: flag.name,
                source,
                why,
            };
            config
                .apply(flag, &value, source == "the command line")
                .map_err(bad)?;
        }
        Ok(Command::Run(Box::new(config)))
    }

    fn apply(&mut self, flag: &Flag, value: &str, from_args: bool) -> Result<(), String> {
        let policy = &mut self.policy;
        match flag.name {
            "bind" => self.bind = parse_addr(value)?,
            "db" => {
                if value.is_empty() {
                    return Err("a path is required".into());
                }
                self.db = PathBuf::from(value);
                if crate::db::is_postgres_url(&self.db) && !cfg!(feature = "postgres") {
                    return Err("a postgres:// database needs PostgreSQL support, but this \
                                auth-service was built without the postgres feature \
                                (cargo build --features postgres)"
                        .into());
                }
            }
            "bcrypt-cost" => policy.bcrypt_cost = number(value, 4, 31)?,
            "workers" => self.workers = number(value, 1, 1024)?,
            "max-body-bytes" => self.max_body_bytes = number(value, 1, 1 << 30)?,
            "session-ttl" => policy.session_ttl = number(value, 1, i64::from(u32::MAX))?,
            "session-idle" => policy.session_idle = number(value, 1, i64::from(u32::MAX))?,
            "reset-ttl" => policy.reset_ttl = number(value, 1, i64::from(u32::MAX))?,
            "reset-command" => {
                policy.reset_command = match value {
                    "" => None,
                    path => Some(PathBuf::from(path)),
                }
            }
            "max-login-failures" => policy.max_login_failures = number(value, 1, 1_000_000)?,
            "login-window" => policy.login_window = number(value, 1, i64::from(u32::MAX))?,
            "min-password-length" => policy.min_password_length = number(value, 1, 72)?,
            "secure-cookies" => self.secure_cookies = switch(value, from_args)?,
            "trust-proxy" => self.trust_proxy = switch(value, from_args)?,
            "metrics" => self.metrics = switch(value, from_args)?,
            "max-connections" => self.max_connections = number(value, 1, 1_000_000)?,
            "header-timeout" => self.header_timeout = Duration::from_secs(number(value, 1, 3600)?),
            "shutdown-grace" => self.shutdown_grace = Duration::from_secs(number(value, 0, 3600)?),
            other => unreachable!("flag {other} is in FLAGS but not applied"),
        }
        Ok(())
    }
}

fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value
        .to_socket_addrs()
        .map_err(|e| format!("{value:?} is not an address to listen on ({e})"))?
        .next()
        .ok_or_else(|| format!("{value:?} resolves to no address"))
}

fn number<T>(value: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let n: T = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a whole number"))?;
    if n < min || n > max {
        return Err(format!("{n} is not between {min} and {max}"));
    }
    Ok(n)
}

/// A switch on the command line is on; in the environment it says which.
fn switch(value: &str, from_args: bool) -> Result<bool, String> {
    if from_args {
        return Ok(true);
    }
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(format!(
            "{value:?} is not one of 1, true, yes, on, 0, false, no, off"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match Config::parse(args.iter().copied(), |k| {
            env.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        })? {
            Command::Run(config) => Ok(*config),
            other => panic!("expected a config, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = parse(&[], &[]).unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:5000");
        assert_eq!(c.db, PathBuf::from("auth.db"));
        assert_eq!(c.policy.bcrypt_cost, 12);
        assert_eq!(c.max_body_bytes, 65_536);
        assert_eq!(c.policy.session_ttl, 86_400);
        assert_eq!(c.policy.session_idle, 7_200);
        assert_eq!(c.policy.reset_ttl, 3_600);
        assert_eq!(c.policy.max_login_failures, 5);
        assert_eq!(c.policy.login_window, 900);
        assert_eq!(c.policy.min_password_length, 1);
        assert!(!c.secure_cookies && !c.trust_proxy && !c.metrics);
        assert!(c.policy.reset_command.is_none());
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn flag_beats_variable_beats_default() {
        let c = parse(&["--bcrypt-cost", "5"], &[("AUTH_BCRYPT_COST", "6")]).unwrap();
        assert_eq!(c.policy.bcrypt_cost, 5);
        let c = parse(
            &[],
            &[("AUTH_BCRYPT_COST", "6"), ("AUTH_BIND", "127.0.0.1:0")],
        )
        .unwrap();
        assert_eq!(c.policy.bcrypt_cost, 6);
        assert_eq!(c.bind.port(), 0);
        let c = parse(
            &["--workers=3", "--secure-cookies"],
            &[("AUTH_TRUST_PROXY", "yes")],
        )
        .unwrap();
        assert_eq!(c.workers, 3);
        assert!(c.secure_cookies && c.trust_proxy);
    }

    #[test]
    fn every_flag_has_a_variable_and_parses() {
        for flag in FLAGS {
            let value = match flag.name {
                "bind" => "127.0.0.1:0",
                "db" | "reset-command" => "/tmp/x",
                _ if flag.value.is_none() => "true",
                _ => "7",
            };
            let c = parse(&[], &[(&env_name(flag.name), value)]);
            assert!(
                c.is_ok(),
                "{} from {}: {c:?}",
                flag.name,
                env_name(flag.name)
            );
        }
        assert!(help().contains("--min-password-length"));
    }

    #[test]
    fn bad_flags_and_values_are_refused() {
        assert_eq!(
            parse(&["--nope"], &[]).unwrap_err(),
            ConfigError::UnknownFlag("--nope".into())
        );
        assert_eq!(
            parse(&["--bind"], &[]).unwrap_err(),
            ConfigError::MissingValue("bind")
        );
        assert!(matches!(
            parse(&["--bcrypt-cost", "3"], &[]),
            Err(ConfigError::BadValue {
                flag: "bcrypt-cost",
                ..
            })
        ));
        assert!(matches!(
            parse(&[], &[("AUTH_WORKERS", "many")]),
            Err(ConfigError::BadValue {
                flag: "workers",
                source: "the environment",
                ..
            })
        ));
        assert!(parse(&["--metrics=yes"], &[]).is_err());
        assert!(parse(&["positional"], &[]).is_err());
    }

    #[test]
    fn a_postgres_url_needs_the_feature() {
        let url = "postgres://auth@127.0.0.1:5432/auth";
        let parsed = parse(&["--db", url], &[]);
        if cfg!(feature = "postgres") {
            assert_eq!(parsed.unwrap().db, PathBuf::from(url));
        } else {
            let err = parsed.unwrap_err().to_string();
            assert!(err.contains("built without the postgres feature"), "{err}");
        }
    }
}
