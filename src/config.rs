//! `Config`: every flag, the environment variable behind it, its default and its check.
//!
//! Each flag is one row of `FLAGS`: its name, its value's name, its default, its meaning and
//! the setter that checks a value and puts it in a `Config`. `Config::default()` is every
//! row's default put through that row's setter, so the default `--help` shows is the one
//! applied, and the README's table is checked against `--help` (tests/flags.rs).
//!
//! A flag beats its variable, which beats the default. Each flag `--some-name` reads the
//! variable `AUTH_SOME_NAME`. Parsing is a pure function of the arguments and an environment
//! lookup, so it is tested without touching the process's environment.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Policy;
use crate::log;

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
    pub log_format: log::Format,
    pub policy: Policy,
}

impl Default for Config {
    /// Every flag's default, from its row in `FLAGS`.
    fn default() -> Config {
        with_defaults(placeholder())
    }
}

/// A `Config` whose every field some row of `FLAGS` overwrites; none of these values is
/// ever seen (a test checks that).
fn placeholder() -> Config {
    Config {
        bind: SocketAddr::from(([0, 0, 0, 0], 0)),
        db: PathBuf::new(),
        workers: 0,
        max_body_bytes: 0,
        secure_cookies: false,
        trust_proxy: false,
        metrics: false,
        max_connections: 0,
        header_timeout: Duration::ZERO,
        shutdown_grace: Duration::ZERO,
        log_format: log::Format::Text,
        // Not `Policy::default()`: that is built from here.
        policy: Policy {
            bcrypt_cost: 0,
            session_ttl: 0,
            session_idle: 0,
            reset_ttl: 0,
            reset_command: None,
            max_login_failures: 0,
            login_window: 0,
            min_password_length: 0,
            max_sessions: 0,
            reset_keeps_sessions: false,
            max_registrations: 0,
            registration_window: 0,
            max_reset_requests: 0,
            reset_window: 0,
        },
    }
}

/// `config` with every row's default applied.
fn with_defaults(mut config: Config) -> Config {
    for flag in FLAGS {
        let applied = match flag.default {
            Initial::Text(text) => (flag.set)(&mut config, text),
            Initial::Unset => (flag.set)(&mut config, ""),
            Initial::Computed { set, .. } => {
                set(&mut config);
                Ok(())
            }
        };
        if let Err(why) = applied {
            panic!(
                "the default of --{} is refused by its own setter: {why}",
                flag.name
            );
        }
    }
    config
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

/// One flag, written once: its name without dashes, its value's name (`None` for a switch),
/// its default, what it means, and how a value sets the config.
struct Flag {
    name: &'static str,
    value: Option<&'static str>,
    default: Initial,
    help: &'static str,
    /// Checks a value and stores it; the error says why the value is refused. A switch gets
    /// `on` from the command line and its variable's text from the environment.
    set: fn(&mut Config, &str) -> Result<(), String>,
}

/// Where a flag's default comes from.
enum Initial {
    /// This text, put through the row's setter: what `--help` shows is what is applied.
    Text(&'static str),
    /// No value (shown as `none`): the setter gets the empty text, as from an empty variable.
    Unset,
    /// Worked out at start from the machine; `--help` shows the rule.
    Computed {
        rule: &'static str,
        set: fn(&mut Config),
    },
}

impl Initial {
    /// The default as `--help` and the README show it.
    fn shown(&self) -> &'static str {
        match self {
            Initial::Text(text) => text,
            Initial::Unset => "none",
            Initial::Computed { rule, .. } => rule,
        }
    }
}

/// The longest session, token or throttle window a flag accepts, in seconds.
const MAX_SECS: i64 = u32::MAX as i64;

/// Every flag, in the order `--help` and the README list them.
const FLAGS: &[Flag] = &[
    Flag {
        name: "bind",
        value: Some("ADDR"),
        default: Initial::Text("127.0.0.1:5000"),
        help: "where to listen (port 0: any free port)",
        set: |c, v| parse_addr(v).map(|a| c.bind = a),
    },
    Flag {
        name: "db",
        value: Some("PATH"),
        default: Initial::Text("auth.db"),
        help: "the SQLite file, created when missing, never wiped; or a postgres:// URL (feature postgres)",
        set: |c, v| parse_db(v).map(|p| c.db = p),
    },
    Flag {
        name: "bcrypt-cost",
        value: Some("N"),
        default: Initial::Text("12"),
        help: "bcrypt work factor (4 to 31)",
        set: |c, v| number(v, 4, 31).map(|n| c.policy.bcrypt_cost = n),
    },
    Flag {
        name: "workers",
        value: Some("N"),
        default: Initial::Computed {
            rule: "4 per core, at least 8",
            set: |c| c.workers = default_workers(),
        },
        help: "request worker threads",
        set: |c, v| number(v, 1, 1024).map(|n| c.workers = n),
    },
    Flag {
        name: "max-body-bytes",
        value: Some("N"),
        default: Initial::Text("65536"),
        help: "largest accepted request body",
        set: |c, v| number(v, 1, 1 << 30).map(|n| c.max_body_bytes = n),
    },
    Flag {
        name: "session-ttl",
        value: Some("SECS"),
        default: Initial::Text("86400"),
        help: "absolute session lifetime",
        set: |c, v| number(v, 1, MAX_SECS).map(|n| c.policy.session_ttl = n),
    },
    Flag {
        name: "session-idle",
        value: Some("SECS"),
        default: Initial::Text("7200"),
        help: "a session unused this long ends",
        set: |c, v| number(v, 1, MAX_SECS).map(|n| c.policy.session_idle = n),
    },
    Flag {
        name: "reset-ttl",
        value: Some("SECS"),
        default: Initial::Text("3600"),
        help: "reset token lifetime",
        set: |c, v| number(v, 1, MAX_SECS).map(|n| c.policy.reset_ttl = n),
    },
    Flag {
        name: "reset-command",
        value: Some("PATH"),
        default: Initial::Unset,
        help: "deliver reset tokens by running PATH with AUTH_EMAIL and AUTH_RESET_TOKEN",
        set: |c, v| {
            c.policy.reset_command = (!v.is_empty()).then(|| PathBuf::from(v));
            Ok(())
        },
    },
    Flag {
        name: "secure-cookies",
        value: None,
        default: Initial::Text("off"),
        help: "add Secure to the session cookie (serve behind TLS)",
        set: |c, v| switch(v).map(|on| c.secure_cookies = on),
    },
    Flag {
        name: "trust-proxy",
        value: None,
        default: Initial::Text("off"),
        help: "take the client address from the last X-Forwarded-For hop",
        set: |c, v| switch(v).map(|on| c.trust_proxy = on),
    },
    Flag {
        name: "max-login-failures",
        value: Some("N"),
        default: Initial::Text("5"),
        help: "failed logins per (client address, email) before 429",
        set: |c, v| number(v, 1, 1_000_000).map(|n| c.policy.max_login_failures = n),
    },
    Flag {
        name: "login-window",
        value: Some("SECS"),
        default: Initial::Text("900"),
        help: "the window those failures are counted in",
        set: |c, v| number(v, 1, MAX_SECS).map(|n| c.policy.login_window = n),
    },
    Flag {
        name: "min-password-length",
        value: Some("N"),
        default: Initial::Text("1"),
        help: "shortest accepted new password, in characters",
        set: |c, v| number(v, 1, 72).map(|n| c.policy.min_password_length = n),
    },
    Flag {
        name: "metrics",
        value: None,
        default: Initial::Text("off"),
        help: "serve GET /metrics (Prometheus text format)",
        set: |c, v| switch(v).map(|on| c.metrics = on),
    },
    Flag {
        name: "max-sessions",
        value: Some("N"),
        default: Initial::Text("10"),
        help: "sessions one user may hold at once; a login past it ends the least recently used (1: the reference's model)",
        set: |c, v| number(v, 1, 1_000_000).map(|n| c.policy.max_sessions = n),
    },
    Flag {
        name: "reset-keeps-sessions",
        value: None,
        default: Initial::Text("off"),
        help: "sessions survive a password reset (the reference's behaviour)",
        set: |c, v| switch(v).map(|on| c.policy.reset_keeps_sessions = on),
    },
    Flag {
        name: "max-registrations",
        value: Some("N"),
        default: Initial::Text("30"),
        help: "registrations per client address per window (0: off)",
        set: |c, v| number(v, 0, 1_000_000).map(|n| c.policy.max_registrations = n),
    },
    Flag {
        name: "registration-window",
        value: Some("SECS"),
        default: Initial::Text("300"),
        help: "the window those are counted in",
        set: |c, v| number(v, 1, MAX_SECS).map(|n| c.policy.registration_window = n),
    },
    Flag {
        name: "max-reset-requests",
        value: Some("N"),
        default: Initial::Text("3"),
        help: "reset requests per email per window, ten times that per address (0: off)",
        set: |c, v| number(v, 0, 1_000_000).map(|n| c.policy.max_reset_requests = n),
    },
    Flag {
        name: "reset-window",
        value: Some("SECS"),
        default: Initial::Text("900"),
        help: "the window those are counted in",
        set: |c, v| number(v, 1, MAX_SECS).map(|n| c.policy.reset_window = n),
    },
    Flag {
        name: "max-connections",
        value: Some("N"),
        default: Initial::Text("1024"),
        help: "open connections at once; past it a new one is closed at once",
        set: |c, v| number(v, 1, 1_000_000).map(|n| c.max_connections = n),
    },
    Flag {
        name: "header-timeout",
        value: Some("SECS"),
        default: Initial::Text("10"),
        help: "time for a whole request head to arrive",
        set: |c, v| number(v, 1, 3600).map(|n| c.header_timeout = Duration::from_secs(n)),
    },
    Flag {
        name: "shutdown-grace",
        value: Some("SECS"),
        default: Initial::Text("10"),
        help: "time in-flight requests get after SIGTERM",
        set: |c, v| number(v, 0, 3600).map(|n| c.shutdown_grace = Duration::from_secs(n)),
    },
    Flag {
        name: "log-format",
        value: Some("FMT"),
        default: Initial::Text("text"),
        help: "text, or json: one JSON object a line, for log shippers and fail2ban",
        set: |c, v| log::Format::parse(v).map(|f| c.log_format = f),
    },
];

/// The `--help` text.
pub fn help() -> String {
    help_page("usage: auth-service [FLAGS]", None)
}

/// A `--help` page: the version line, `usage` (one or more lines), and the flags `names`
/// lists (every flag, and `--version`, when `None`).
pub fn help_page(usage: &str, names: Option<&[&str]>) -> String {
    let listed: Vec<&Flag> = FLAGS
        .iter()
        .filter(|f| names.is_none_or(|names| names.contains(&f.name)))
        .collect();
    let first = listed.first().map_or("db", |f| f.name);
    let mut out = format!(
        "auth-service {}: user registration, login sessions and password resets over HTTP\n\n\
         {usage}\n\n\
         Each flag also reads AUTH_<NAME> (for --{first}, {}); a flag beats its variable.\n",
        env!("CARGO_PKG_VERSION"),
        env_name(first),
    );
    if listed.iter().any(|f| f.value.is_none()) {
        out.push_str("Switches read 1, true, yes or on (0, false, no, off) from their variable.\n");
    }
    out.push_str("\nflags:\n");
    let left = |flag: &Flag| match flag.value {
        Some(v) => format!("--{} {v}", flag.name),
        None => format!("--{}", flag.name),
    };
    // Meanings start in one column, three spaces past the longest flag.
    let width = listed.iter().map(|f| left(f).len() + 4).max().unwrap_or(0);
    let width = width.max("--version".len() + 4);
    for flag in listed {
        let left = left(flag);
        let (help, default) = (flag.help, flag.default.shown());
        out.push_str(&format!("  {left:<width$}{help} [default: {default}]\n"));
    }
    out.push_str(&format!("  {:<width$}print this and exit\n", "--help"));
    if names.is_none() {
        out.push_str(&format!(
            "  {:<width$}print the version and exit\n",
            "--version"
        ));
    }
    out
}

/// The variable behind a flag: `bcrypt-cost` reads `AUTH_BCRYPT_COST`.
pub fn env_name(flag: &str) -> String {
    format!("AUTH_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// What a subcommand's command line asks for (see [`Config::parse_for`]).
#[derive(Debug)]
pub enum Parsed {
    /// `--help` or `-h`.
    Help,
    /// The settings its flags (or their variables, or the defaults) make, and its operands
    /// (the arguments that are not flags) in order.
    Run {
        config: Box<Config>,
        operands: Vec<String>,
    },
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
        let every = |_: &Flag| true;
        let given = match scan(args, every, false)? {
            Scanned::Help => return Ok(Command::Help),
            Scanned::Version => return Ok(Command::Version),
            Scanned::Flags { given, .. } => given,
        };
        let config = apply(&given, env, every)?;
        Ok(Command::Run(Box::new(config)))
    }

    /// Parses a subcommand's `args` (after its name) as [`Config::parse`] does, but knowing
    /// only the flags `names` lists and reading only their variables (so that a variable meant
    /// for the server, and bad for it, cannot fail a command that does not use it), and taking
    /// operands: any argument that is not a flag, and every argument after `--`.
    pub fn parse_for<I, S>(
        args: I,
        env: impl Fn(&str) -> Option<String>,
        names: &[&str],
    ) -> Result<Parsed, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let known = |f: &Flag| names.contains(&f.name);
        let (given, operands) = match scan(args, known, true)? {
            Scanned::Help => return Ok(Parsed::Help),
            Scanned::Version => return Err(ConfigError::UnknownFlag("--version".into())),
            Scanned::Flags { given, operands } => (given, operands),
        };
        let config = apply(&given, env, known)?;
        Ok(Parsed::Run {
            config: Box::new(config),
            operands,
        })
    }
}

/// A command line read, before any value is checked.
enum Scanned {
    Help,
    Version,
    /// Each flag given with its value (`on` for a switch), and the operands.
    Flags {
        given: Vec<(&'static Flag, String)>,
        operands: Vec<String>,
    },
}

/// Reads `args` into the flags `known` accepts and, with `operands`, the operands.
fn scan<I, S>(
    args: I,
    known: impl Fn(&Flag) -> bool,
    operands: bool,
) -> Result<Scanned, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut given: Vec<(&'static Flag, String)> = Vec::new();
    let mut found = Vec::new();
    let mut args = args.into_iter().map(Into::into);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--help" | "-h" => return Ok(Scanned::Help),
            "--version" | "-V" => return Ok(Scanned::Version),
            "--" if operands => {
                found.extend(args.by_ref());
                break;
            }
            _ => {}
        }
        let (name, inline) = match arg.strip_prefix("--") {
            Some(rest) => match rest.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (rest.to_owned(), None),
            },
            None if operands => {
                found.push(arg);
                continue;
            }
            None => return Err(ConfigError::UnknownFlag(arg)),
        };
        let flag = FLAGS
            .iter()
            .find(|f| f.name == name && known(f))
            .ok_or_else(|| ConfigError::UnknownFlag(arg.clone()))?;
        let value = match (flag.value, inline) {
            (Some(_), Some(v)) => v,
            (Some(_), None) => args.next().ok_or(ConfigError::MissingValue(flag.name))?,
            (None, Some(_)) => return Err(ConfigError::UnexpectedValue(flag.name)),
            // A switch given on the command line is on.
            (None, None) => "on".to_owned(),
        };
        given.push((flag, value));
    }
    Ok(Scanned::Flags {
        given,
        operands: found,
    })
}

/// The defaults, with each flag `known` accepts set from `given` or else from its variable.
fn apply(
    given: &[(&'static Flag, String)],
    env: impl Fn(&str) -> Option<String>,
    known: impl Fn(&Flag) -> bool,
) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    for flag in FLAGS.iter().filter(|f| known(f)) {
        // The last occurrence of a flag wins, as with most command lines.
        let from_args = given.iter().rev().find(|(f, _)| f.name == flag.name);
        let (value, source) = match from_args {
            Some((_, value)) => (value.clone(), "the command line"),
            None => match env(&env_name(flag.name)) {
                Some(v) => (v, "the environment"),
                None => continue,
            },
        };
        (flag.set)(&mut config, &value).map_err(|why| ConfigError::BadValue {
            flag: flag.name,
            source,
            why,
        })?;
    }
    Ok(config)
}

/// Whether `name` is the name of a flag (without its dashes).
pub fn is_flag(name: &str) -> bool {
    FLAGS.iter().any(|f| f.name == name)
}

fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value
        .to_socket_addrs()
        .map_err(|e| format!("{value:?} is not an address to listen on ({e})"))?
        .next()
        .ok_or_else(|| format!("{value:?} resolves to no address"))
}

fn parse_db(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("a path is required".into());
    }
    let db = PathBuf::from(value);
    if crate::db::is_postgres_url(&db) && !cfg!(feature = "postgres") {
        return Err("a postgres:// database needs PostgreSQL support, but this \
                    auth-service was built without the postgres feature \
                    (cargo build --features postgres)"
            .into());
    }
    Ok(db)
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

/// A switch's value: `on` from the command line, its variable's text from the environment
/// (empty is off).
fn switch(value: &str) -> Result<bool, String> {
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
        assert_eq!(c.policy.max_sessions, 10);
        assert!(!c.policy.reset_keeps_sessions);
        assert_eq!(c.policy.max_registrations, 30);
        assert_eq!(c.policy.registration_window, 300);
        assert_eq!(c.policy.max_reset_requests, 3);
        assert_eq!(c.policy.reset_window, 900);
        assert!(!c.secure_cookies && !c.trust_proxy && !c.metrics);
        assert!(c.policy.reset_command.is_none());
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.log_format, log::Format::Text);
        assert_eq!(c.workers, default_workers());
        // The library's own default is the same one.
        assert_eq!(
            format!("{:?}", Policy::default()),
            format!("{:?}", c.policy)
        );
    }

    #[test]
    fn every_field_is_set_by_a_row() {
        // Two starting points that differ in every field: if some field had no row, its
        // placeholder would show through and the two would differ.
        let other = Config {
            bind: SocketAddr::from(([10, 9, 8, 7], 6)),
            db: PathBuf::from("elsewhere"),
            workers: 99_999,
            max_body_bytes: 99_999,
            secure_cookies: true,
            trust_proxy: true,
            metrics: true,
            max_connections: 99_999,
            header_timeout: Duration::from_secs(99_999),
            shutdown_grace: Duration::from_secs(99_999),
            log_format: log::Format::Json,
            policy: Policy {
                bcrypt_cost: 99,
                session_ttl: 99_999,
                session_idle: 99_999,
                reset_ttl: 99_999,
                reset_command: Some(PathBuf::from("elsewhere")),
                max_login_failures: 99_999,
                login_window: 99_999,
                min_password_length: 99_999,
                max_sessions: 99_999,
                reset_keeps_sessions: true,
                max_registrations: 99_999,
                registration_window: 99_999,
                max_reset_requests: 99_999,
                reset_window: 99_999,
            },
        };
        assert_eq!(
            format!("{:?}", with_defaults(placeholder())),
            format!("{:?}", with_defaults(other))
        );
    }

    #[test]
    fn the_last_occurrence_wins() {
        let c = parse(&["--bcrypt-cost", "5", "--bcrypt-cost=6"], &[]).unwrap();
        assert_eq!(c.policy.bcrypt_cost, 6);
        let c = parse(&["--reset-command", "/bin/x", "--reset-command="], &[]).unwrap();
        assert!(c.policy.reset_command.is_none());
        let c = parse(&["--reset-command=/bin/x"], &[]).unwrap();
        assert_eq!(c.policy.reset_command, Some(PathBuf::from("/bin/x")));
    }

    #[test]
    fn switches() {
        let c = parse(&["--metrics"], &[("AUTH_METRICS", "off")]).unwrap();
        assert!(c.metrics);
        for (text, on) in [("1", true), ("On", true), ("no", false), ("", false)] {
            let c = parse(&[], &[("AUTH_METRICS", text)]).unwrap();
            assert_eq!(c.metrics, on, "AUTH_METRICS={text:?}");
        }
        assert!(matches!(
            parse(&[], &[("AUTH_METRICS", "maybe")]),
            Err(ConfigError::BadValue {
                flag: "metrics",
                ..
            })
        ));
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
                "log-format" => "json",
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
