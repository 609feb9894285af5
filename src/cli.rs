//! The command line: `auth-service [FLAGS]` serves HTTP; `auth-service users ...`,
//! `auth-service backup FILE` and `auth-service check [FILE]` are the operator's commands, run
//! on the same database (`--db`, `AUTH_DB`) while the server runs, so that nobody has to write
//! SQL against a live file (SPEC section 10).
//!
//! Each command is one row of [`COMMANDS`]: its words, its operands, what it does, and which
//! of `config`'s flag rows it takes. Parsing ([`parse`]) is a pure function of the arguments
//! and an environment lookup, as [`Config::parse`] is; [`run`] does the work.
//!
//! A command is a few short statements through [`Auth`] and [`Db`], each of which waits on the
//! server's writes (the busy timeout) rather than failing, and what it changes the server's
//! workers see on their next request: a user deleted or logged out from the shell is logged
//! out at once. It never migrates the database (a newer binary's command must not change a
//! schema under an older server) nor creates one from a mistyped path.
//!
//! A password comes from standard input (one line, its line ending not part of it) or, when
//! that is a terminal, is asked for twice without echo; never from the command line, where
//! `ps` and the shell's history would show it. No command prints a password, a hash or a
//! token. Exit status: 0 done, 1 failed (with a one-line reason on stderr), 2 a usage error.

use std::fmt;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;

use crate::auth::{Auth, AuthError, Shared};
use crate::config::{self, Command as ServerCommand, Config, ConfigError, Parsed};
use crate::db::{self, Db, DbError};
use crate::log::{self, Printable};
use crate::metrics::Metrics;
use crate::user::{Email, InputError, Password};

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Serve HTTP (no command word): the server's flags.
    Serve(Box<Config>),
    /// Print this page and exit 0 (`--help` anywhere).
    Help(String),
    /// Print the version and exit 0.
    Version,
    /// An operator's command, with the settings of the flags it takes.
    Operate(Box<Config>, Op),
}

/// An operator's command, its operands parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddUser(Email),
    ListUsers {
        json: bool,
    },
    DeleteUser(Email),
    SetPassword(Email),
    LogOut(Email),
    Backup(PathBuf),
    /// The file to check; `--db` when `None`.
    Check(Option<PathBuf>),
}

/// One command, written once.
struct Spec {
    /// The words that name it: `users add`.
    words: &'static str,
    /// Its operands as its usage line shows them.
    operands: &'static str,
    /// What it does, for `--help`.
    about: &'static str,
    /// The rows of `config::FLAGS` it takes.
    flags: &'static [&'static str],
    /// Whether it takes `--json`.
    json: bool,
    /// Its operands (and `--json`) into an [`Op`].
    make: fn(&Spec, Vec<String>, bool) -> Result<Op, UsageError>,
}

/// Every command, in the order `--help` lists them.
const COMMANDS: &[Spec] = &[
    Spec {
        words: "users add",
        operands: "EMAIL",
        about: "register a user; the password is read from standard input (one line), or \
                asked for twice without echo when that is a terminal",
        flags: &["db", "bcrypt-cost", "min-password-length"],
        json: false,
        make: |spec, operands, _| spec.email(operands).map(Op::AddUser),
    },
    Spec {
        words: "users list",
        operands: "",
        about: "list the users, one a line: id, email, live sessions (tab-separated); with \
                --json, one JSON object a line",
        flags: &["db", "session-ttl", "session-idle"],
        json: true,
        make: |spec, operands, json| spec.none(operands).map(|()| Op::ListUsers { json }),
    },
    Spec {
        words: "users delete",
        operands: "EMAIL",
        about: "delete a user, with their sessions and reset token; the email can register \
                again",
        flags: &["db"],
        json: false,
        make: |spec, operands, _| spec.email(operands).map(Op::DeleteUser),
    },
    Spec {
        words: "users set-password",
        operands: "EMAIL",
        about: "set a user's password (read as users add reads it); their sessions end and \
                any reset token is spent",
        flags: &["db", "bcrypt-cost", "min-password-length"],
        json: false,
        make: |spec, operands, _| spec.email(operands).map(Op::SetPassword),
    },
    Spec {
        words: "users logout",
        operands: "EMAIL",
        about: "end every session of a user",
        flags: &["db", "session-ttl", "session-idle"],
        json: false,
        make: |spec, operands, _| spec.email(operands).map(Op::LogOut),
    },
    Spec {
        words: "backup",
        operands: "FILE",
        about: "copy the SQLite database to FILE, consistently, while the server writes \
                (SQLite's online backup); never overwrites FILE. On PostgreSQL use pg_dump",
        flags: &["db"],
        json: false,
        make: |spec, operands, _| spec.file(operands).map(Op::Backup),
    },
    Spec {
        words: "check",
        operands: "[FILE]",
        about: "check a database (FILE, or --db): SQLite's integrity check, the schema \
                version, and how many users, live sessions and reset tokens it holds",
        flags: &["db", "session-ttl", "session-idle"],
        json: false,
        make: |spec, operands, _| match operands.len() {
            0 => Ok(Op::Check(None)),
            _ => spec.file(operands).map(|file| Op::Check(Some(file))),
        },
    },
];

impl Spec {
    fn usage(&self) -> String {
        let json = if self.json { " [--json]" } else { "" };
        let operands = if self.operands.is_empty() {
            String::new()
        } else {
            format!(" {}", self.operands)
        };
        format!("auth-service {}{operands}{json} [FLAGS]", self.words)
    }

    fn help(&self) -> String {
        config::help_page(
            &format!("usage: {}\n\n{}.", self.usage(), self.about),
            Some(self.flags),
        )
    }

    fn wrong_operands(&self, got: usize) -> UsageError {
        UsageError::Operands {
            command: self.words,
            expected: self.operands,
            got,
        }
    }

    fn none(&self, operands: Vec<String>) -> Result<(), UsageError> {
        match operands.len() {
            0 => Ok(()),
            n => Err(self.wrong_operands(n)),
        }
    }

    fn email(&self, operands: Vec<String>) -> Result<Email, UsageError> {
        match &operands[..] {
            [email] => Email::parse(email).map_err(|e| UsageError::Email(self.words, e)),
            _ => Err(self.wrong_operands(operands.len())),
        }
    }

    fn file(&self, operands: Vec<String>) -> Result<PathBuf, UsageError> {
        match &operands[..] {
            [file] if !file.is_empty() => Ok(PathBuf::from(file)),
            _ => Err(self.wrong_operands(operands.len())),
        }
    }
}

/// A command line that is wrong: exit 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageError {
    /// A flag or value of the server's command line.
    Flags(ConfigError),
    /// A flag or value of a command's (the command's words, what is wrong).
    CommandFlags(&'static str, ConfigError),
    /// `users` without one of its commands, or with one it does not have.
    UnknownCommand(String),
    /// Too few or too many operands.
    Operands {
        command: &'static str,
        expected: &'static str,
        got: usize,
    },
    /// The EMAIL operand is not an email address.
    Email(&'static str, InputError),
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::Flags(e) => write!(f, "{e}"),
            UsageError::CommandFlags(command, e) => write!(f, "{command}: {e}"),
            UsageError::UnknownCommand(words) => {
                write!(
                    f,
                    "unknown command {words:?} (see auth-service users --help)"
                )
            }
            UsageError::Operands {
                command,
                expected,
                got,
            } => {
                let expected = if expected.is_empty() {
                    "no operand"
                } else {
                    expected
                };
                write!(
                    f,
                    "{command} takes {expected}, not {got} operand{} \
                     (see auth-service {command} --help)",
                    if *got == 1 { "" } else { "s" }
                )
            }
            UsageError::Email(command, e) => write!(f, "{command}: {e}"),
        }
    }
}

impl std::error::Error for UsageError {}

/// Parses `args` (without the program name), with `env` for the variables behind the flags.
/// Without a command word, the server's flags (see [`Config::parse`]).
pub fn parse<I, S>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let args: Vec<String> = args.into_iter().map(Into::into).collect();
    let first = args.first().map(String::as_str);
    if first == Some("users") {
        let second = args.get(1).map(String::as_str);
        let asks_help = matches!(second, None | Some("--help" | "-h"));
        let spec = COMMANDS
            .iter()
            .find(|spec| second.is_some_and(|s| spec.words == format!("users {s}")));
        return match spec {
            Some(spec) => parse_command(spec, &args[2..], env),
            None if asks_help && second.is_some() => Ok(Command::Help(group_help())),
            None => Err(UsageError::UnknownCommand(
                format!("users {}", second.unwrap_or_default())
                    .trim_end()
                    .to_owned(),
            )),
        };
    }
    if let Some(spec) = COMMANDS.iter().find(|spec| Some(spec.words) == first) {
        return parse_command(spec, &args[1..], env);
    }
    match Config::parse(args, env).map_err(UsageError::Flags)? {
        ServerCommand::Run(config) => Ok(Command::Serve(config)),
        ServerCommand::Help => Ok(Command::Help(help())),
        ServerCommand::Version => Ok(Command::Version),
    }
}

fn parse_command(
    spec: &'static Spec,
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, UsageError> {
    // `--json` is the command's own switch, not a row of the server's flags.
    let json = spec.json && args.iter().any(|a| a == "--json");
    let args = args.iter().filter(|a| !(spec.json && *a == "--json"));
    match Config::parse_for(args, env, spec.flags) {
        Ok(Parsed::Help) => Ok(Command::Help(spec.help())),
        Ok(Parsed::Run { config, operands }) => {
            let op = (spec.make)(spec, operands, json)?;
            Ok(Command::Operate(config, op))
        }
        Err(e) => Err(UsageError::CommandFlags(spec.words, e)),
    }
}

/// `auth-service --help`: the commands, then the server's flags.
pub fn help() -> String {
    let mut usage = String::from("usage: auth-service [FLAGS]  (serve HTTP)\n");
    for spec in COMMANDS {
        usage.push_str(&format!("       {}\n", spec.usage()));
    }
    usage.push_str(
        "\nEach command has its own --help (auth-service users add --help). Commands run on \
         the same\ndatabase as the server, while it runs; no password is ever taken from the \
         command line.",
    );
    config::help_page(&usage, None)
}

/// `auth-service users --help`: the users commands.
fn group_help() -> String {
    let mut out = String::from("usage:\n");
    for spec in COMMANDS.iter().filter(|s| s.words.starts_with("users ")) {
        out.push_str(&format!("  {}\n      {}.\n", spec.usage(), spec.about));
    }
    out.push_str("\nEach has its own --help: auth-service users add --help.\n");
    out
}

/// Does what `command` asks; the exit status.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Help(page) => print!("{page}"),
        Command::Version => println!("auth-service {}", env!("CARGO_PKG_VERSION")),
        Command::Serve(config) => {
            if let Err(e) = crate::server::run(*config) {
                log::fatal(format_args!("{e}"));
                return ExitCode::FAILURE;
            }
        }
        Command::Operate(config, op) => {
            if let Err(e) = operate(&config, op, &mut io::stdout().lock()) {
                // A reader that went away (`users list | head`) is not a failure.
                if !matches!(&e, Failure::Output(e) if e.kind() == io::ErrorKind::BrokenPipe) {
                    eprintln!("auth-service: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}

/// Why a command failed: exit 1.
#[derive(Debug)]
pub enum Failure {
    /// There is no SQLite file at the path (commands never create one).
    NoDatabase(PathBuf),
    /// The database is of another schema version than this binary's.
    SchemaVersion { found: i64, supported: i64 },
    /// No user has this email.
    NoUser(String),
    /// `users add` of an email that is taken.
    UserExists(String),
    /// The password could not be read: no line, not UTF-8, or the terminal failed.
    PasswordInput(String),
    /// The two passwords typed at the prompt differ.
    PasswordsDiffer,
    /// The password is refused: empty, over 72 bytes, or under `--min-password-length`.
    Password(InputError),
    /// `backup`'s FILE already exists.
    FileExists(PathBuf),
    /// `backup` on PostgreSQL.
    BackupOnPostgres,
    /// `check` found the database damaged or unusable (what it found is on stdout).
    CheckFailed(&'static str),
    /// A file could not be made or written.
    File(PathBuf, io::Error),
    /// Standard output could not be written.
    Output(io::Error),
    /// `Auth` failed otherwise (bcrypt, the store).
    Auth(AuthError),
    /// The store failed.
    Db(DbError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoDatabase(path) => write!(
                f,
                "no database at {} (auth-service creates it when it first starts)",
                path.display()
            ),
            Failure::SchemaVersion { found, supported } => write!(
                f,
                "the database's schema version is {found}, this binary's is {supported}: \
                 run the auth-service that serves it"
            ),
            Failure::NoUser(email) => write!(f, "no user {}", Printable(email)),
            Failure::UserExists(email) => {
                write!(f, "{} is already registered", Printable(email))
            }
            Failure::PasswordInput(why) => write!(f, "cannot read the password: {why}"),
            Failure::PasswordsDiffer => write!(f, "the two passwords differ"),
            Failure::Password(e) => write!(f, "{e}"),
            Failure::FileExists(path) => {
                write!(f, "{} already exists; not overwritten", path.display())
            }
            Failure::BackupOnPostgres => write!(
                f,
                "backup copies a SQLite file; back a PostgreSQL database up with pg_dump \
                 (pg_dump --format=custom --file=FILE \"$AUTH_DB\")"
            ),
            Failure::CheckFailed(why) => write!(f, "{why}"),
            Failure::File(path, e) => write!(f, "{}: {e}", path.display()),
            Failure::Output(e) => write!(f, "cannot write the output: {e}"),
            Failure::Auth(e) => write!(f, "{e}"),
            Failure::Db(e) => write!(f, "database: {e}"),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::File(_, e) | Failure::Output(e) => Some(e),
            Failure::Auth(e) => Some(e),
            Failure::Db(e) => Some(e),
            Failure::Password(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DbError> for Failure {
    fn from(e: DbError) -> Failure {
        Failure::Db(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Output(e)
    }
}

/// `e`, with the refusals an operator can act on told apart; `email` is the user asked for.
fn auth_failure(email: &Email) -> impl Fn(AuthError) -> Failure + '_ {
    move |e| match e {
        AuthError::UnknownUser => Failure::NoUser(email.to_string()),
        AuthError::UserExists(email) => Failure::UserExists(email),
        AuthError::Input(e) => Failure::Password(e),
        e => Failure::Auth(e),
    }
}

/// Runs an operator's command, writing what it reports to `out`.
fn operate(config: &Config, op: Op, out: &mut dyn Write) -> Result<(), Failure> {
    match op {
        Op::Backup(to) => return backup(&config.db, &to, out),
        Op::Check(file) => return check(config, file.as_deref().unwrap_or(&config.db), out),
        _ => {}
    }
    let auth = open_auth(config)?;
    match op {
        Op::AddUser(email) => {
            if auth
                .find_user(&email)
                .map_err(auth_failure(&email))?
                .is_some()
            {
                return Err(Failure::UserExists(email.to_string()));
            }
            let password = read_password()?;
            let user = auth
                .register_user(&email, &password)
                .map_err(auth_failure(&email))?;
            writeln!(out, "user {} {} added", user.id, Printable(&user.email))?;
        }
        Op::ListUsers { json } => {
            // Pages of a thousand: short statements, and memory bounded however many users.
            let mut after = 0;
            loop {
                let page = auth.list_users(after, 1000).map_err(Failure::Auth)?;
                let Some(last) = page.last() else { break };
                after = last.id;
                for user in &page {
                    if json {
                        let line = json!({
                            "id": user.id,
                            "email": user.email,
                            "sessions": user.sessions,
                        });
                        writeln!(out, "{line}")?;
                    } else {
                        let email = Printable(&user.email);
                        writeln!(out, "{}\t{email}\t{}", user.id, user.sessions)?;
                    }
                }
            }
        }
        Op::DeleteUser(email) => {
            let user = auth.delete_user(&email).map_err(auth_failure(&email))?;
            writeln!(out, "user {} {} deleted", user.id, Printable(&user.email))?;
        }
        Op::SetPassword(email) => {
            // Asked only for a user who exists: nobody types a password for nothing.
            if auth
                .find_user(&email)
                .map_err(auth_failure(&email))?
                .is_none()
            {
                return Err(Failure::NoUser(email.to_string()));
            }
            let password = read_password()?;
            let user = auth
                .set_password(&email, &password)
                .map_err(auth_failure(&email))?;
            writeln!(
                out,
                "user {} {}: password set, sessions ended",
                user.id,
                Printable(&user.email)
            )?;
        }
        Op::LogOut(email) => {
            let (user, live) = auth.end_sessions(&email).map_err(auth_failure(&email))?;
            let s = if live == 1 { "" } else { "s" };
            writeln!(
                out,
                "user {} {}: {live} live session{s} ended",
                user.id,
                Printable(&user.email)
            )?;
        }
        Op::Backup(_) | Op::Check(_) => unreachable!("answered above"),
    }
    Ok(())
}

/// The database at `path` as the commands open it: it must exist, and be of this binary's
/// schema version.
fn open_db(path: &Path) -> Result<Db, Failure> {
    if !db::is_postgres_url(path) && !path.is_file() {
        return Err(Failure::NoDatabase(path.to_owned()));
    }
    Ok(Db::open_existing(path)?)
}

fn open_auth(config: &Config) -> Result<Auth, Failure> {
    let db = open_db(&config.db)?;
    let (found, supported) = (db.stored_schema_version()?, Db::schema_version());
    if found != supported {
        return Err(Failure::SchemaVersion { found, supported });
    }
    let metrics = Arc::new(Metrics::default());
    Ok(Auth::new(
        db,
        Arc::new(Shared::new(config.policy.clone(), metrics)),
    ))
}

/// The longest line read for a password: far past bcrypt's 72 bytes, which `Password` then
/// enforces, and short enough that a file piped in by mistake is not read whole.
const MAX_PASSWORD_LINE: u64 = 4096;

/// A password from standard input: one line, or asked for twice without echo when standard
/// input is a terminal. Only bcrypt's bounds are checked here; `Auth` applies the minimum.
fn read_password() -> Result<Password, Failure> {
    let stdin = io::stdin();
    let raw = if stdin.is_terminal() {
        let ask = |prompt: &str| {
            rpassword::prompt_password(prompt).map_err(|e| Failure::PasswordInput(e.to_string()))
        };
        let first = ask("password: ")?;
        if ask("the same password again: ")? != first {
            return Err(Failure::PasswordsDiffer);
        }
        first
    } else {
        password_line(&mut stdin.lock())?
    };
    Password::parse(&raw).map_err(Failure::Password)
}

/// The first line of `input`, without its line ending (`\n` or `\r\n`).
fn password_line(input: &mut dyn BufRead) -> Result<String, Failure> {
    let mut line = Vec::new();
    input
        .take(MAX_PASSWORD_LINE)
        .read_until(b'\n', &mut line)
        .map_err(|e| Failure::PasswordInput(e.to_string()))?;
    if line.is_empty() {
        return Err(Failure::PasswordInput(
            "standard input is empty (give the password as its first line)".into(),
        ));
    }
    if line.ends_with(b"\n") {
        line.pop();
        if line.ends_with(b"\r") {
            line.pop();
        }
    }
    String::from_utf8(line).map_err(|_| Failure::PasswordInput("it is not UTF-8 text".into()))
}

/// `backup FILE`: claims FILE (refusing one that exists), copies the database into it, and
/// makes the copy durable; a copy that failed half way is removed.
fn backup(db_path: &Path, to: &Path, out: &mut dyn Write) -> Result<(), Failure> {
    if db::is_postgres_url(db_path) {
        return Err(Failure::BackupOnPostgres);
    }
    let db = open_db(db_path)?;
    // create_new: the name is claimed atomically, so nothing that appeared since a look is
    // overwritten.
    let claimed = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to);
    match claimed {
        Ok(file) => drop(file),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(Failure::FileExists(to.to_owned()))
        }
        Err(e) => return Err(Failure::File(to.to_owned(), e)),
    }
    if let Err(e) = db
        .backup(to)
        .map_err(Failure::Db)
        .and_then(|()| sync_dir(to))
    {
        let _ = std::fs::remove_file(to);
        return Err(e);
    }
    let bytes = std::fs::metadata(to).map_or(0, |m| m.len());
    writeln!(
        out,
        "backed up {} to {} ({bytes} bytes)",
        db_path.display(),
        to.display()
    )?;
    Ok(())
}

/// Flushes the directory holding the new file `file`, so that its name survives a crash as
/// its contents do (SQLite flushed those).
fn sync_dir(file: &Path) -> Result<(), Failure> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Failure::File(dir.to_owned(), e))
}

/// `check [FILE]`: what is in the database at `path`, and whether it is sound.
fn check(config: &Config, path: &Path, out: &mut dyn Write) -> Result<(), Failure> {
    let db = open_db(path)?;
    writeln!(out, "database: {}", db::display_location(path))?;
    let mut problem = None;
    match db.integrity_check()? {
        Some(found) if found == ["ok"] => writeln!(out, "integrity: ok")?,
        Some(found) => {
            for line in &found {
                writeln!(out, "integrity: {}", Printable(line))?;
            }
            problem = Some("the integrity check found problems");
        }
        None => writeln!(out, "integrity: not checked (PostgreSQL)")?,
    }
    let (found, supported) = (db.stored_schema_version()?, Db::schema_version());
    let note = match found {
        0 => "not an auth-service database",
        _ if found > supported => "newer than this binary",
        _ if found < supported => "older: migrated when this version's server starts on it",
        _ => "this binary's",
    };
    writeln!(out, "schema version: {found} ({note})")?;
    if found == 0 || found > supported {
        return Err(Failure::CheckFailed(note));
    }
    if found == supported {
        let policy = &config.policy;
        let now = db::now_millis();
        let counts = db.counts(
            now / 1000,
            now - policy.session_ttl * 1000,
            now - policy.session_idle * 1000,
        )?;
        writeln!(out, "users: {}", counts.users)?;
        writeln!(out, "live sessions: {}", counts.live_sessions)?;
        writeln!(out, "reset tokens: {}", counts.reset_tokens)?;
    }
    match problem {
        Some(why) => Err(Failure::CheckFailed(why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Command, UsageError> {
        super::parse(args.iter().copied(), |k| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
    }

    fn op(args: &[&str], env: &[(&str, &str)]) -> (Config, Op) {
        match parse(args, env) {
            Ok(Command::Operate(config, op)) => (*config, op),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    #[test]
    fn every_command_parses_with_its_operands() {
        let cases: &[(&[&str], Op)] = &[
            (&["users", "add", "a@b.c"], Op::AddUser(email("a@b.c"))),
            (&["users", "list"], Op::ListUsers { json: false }),
            (&["users", "list", "--json"], Op::ListUsers { json: true }),
            (
                &["users", "delete", "a@b.c"],
                Op::DeleteUser(email("a@b.c")),
            ),
            (
                &["users", "set-password", "a@b.c"],
                Op::SetPassword(email("a@b.c")),
            ),
            (&["users", "logout", "a@b.c"], Op::LogOut(email("a@b.c"))),
            (&["backup", "/tmp/x.db"], Op::Backup("/tmp/x.db".into())),
            (&["check"], Op::Check(None)),
            (&["check", "copy.db"], Op::Check(Some("copy.db".into()))),
            (
                &["users", "add", "--", "a@b.c"],
                Op::AddUser(email("a@b.c")),
            ),
        ];
        for (args, expected) in cases {
            assert_eq!(&op(args, &[]).1, expected, "{args:?}");
        }
    }

    #[test]
    fn flags_and_variables_reach_the_command() {
        let (config, command) = op(
            &[
                "users",
                "add",
                "--db",
                "/tmp/x.db",
                " a@b.c ",
                "--bcrypt-cost=5",
            ],
            &[("AUTH_MIN_PASSWORD_LENGTH", "8")],
        );
        assert_eq!(command, Op::AddUser(email("a@b.c")));
        assert_eq!(config.db, PathBuf::from("/tmp/x.db"));
        assert_eq!(config.policy.bcrypt_cost, 5);
        assert_eq!(config.policy.min_password_length, 8);
        let (config, _) = op(&["users", "list"], &[("AUTH_DB", "/srv/auth.db")]);
        assert_eq!(config.db, PathBuf::from("/srv/auth.db"));
        let (config, _) = op(&["check", "--session-idle", "60"], &[]);
        assert_eq!(config.policy.session_idle, 60);
    }

    #[test]
    fn a_command_reads_only_the_variables_of_its_flags() {
        // A variable meant for the server, and bad, does not fail a command that ignores it.
        let (config, _) = op(&["users", "list"], &[("AUTH_WORKERS", "many")]);
        assert_eq!(config.workers, config::default_workers());
        let (config, _) = op(&["users", "delete", "a@b.c"], &[("AUTH_BCRYPT_COST", "9")]);
        assert_eq!(config.policy.bcrypt_cost, 12);
    }

    #[test]
    fn usage_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["users"], "unknown command \"users\""),
            (
                &["users", "frobnicate"],
                "unknown command \"users frobnicate\"",
            ),
            (&["users", "add"], "users add takes EMAIL, not 0 operands"),
            (
                &["users", "add", "a@b.c", "b@c.d"],
                "takes EMAIL, not 2 operands",
            ),
            (
                &["users", "add", "nobody"],
                "users add: email must contain @",
            ),
            (
                &["users", "add", "a@b.c", "--bind", "x"],
                "unknown flag --bind",
            ),
            (
                &["users", "delete", "a@b.c", "--bcrypt-cost", "5"],
                "unknown flag",
            ),
            (
                &["users", "list", "extra"],
                "takes no operand, not 1 operand",
            ),
            (
                &["users", "delete", "a@b.c", "--json"],
                "unknown flag --json",
            ),
            (&["backup"], "backup takes FILE, not 0 operands"),
            (&["backup", "a", "b"], "backup takes FILE, not 2 operands"),
            (&["check", "a", "b"], "check takes [FILE], not 2 operands"),
            (&["users", "add", "a@b.c", "--db"], "--db needs a value"),
            (
                &["users", "add", "a@b.c", "--bcrypt-cost", "3"],
                "bad value",
            ),
            (&["serve"], "unknown flag serve"),
        ];
        for (args, message) in cases {
            let e = parse(args, &[]).unwrap_err().to_string();
            assert!(e.contains(message), "{args:?}: {e:?} lacks {message:?}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
        // A password on the command line is no operand of users add.
        assert!(parse(&["users", "add", "a@b.c", "hunter2"], &[]).is_err());
    }

    #[test]
    fn help_for_each_command_lists_its_flags_only() {
        for spec in COMMANDS {
            let words: Vec<&str> = spec.words.split(' ').collect();
            let mut args = words.clone();
            args.push("--help");
            let Ok(Command::Help(page)) = parse(&args, &[]) else {
                panic!("{args:?} asks for help");
            };
            assert!(page.contains(&spec.usage()), "{page}");
            for flag in spec.flags {
                assert!(config::is_flag(flag), "{flag} is a row of config::FLAGS");
                assert!(page.contains(&format!("--{flag} ")), "{page}");
            }
            assert!(!page.contains("--workers"), "{page}");
            assert!(!page.contains("--version"), "{page}");
        }
        let Ok(Command::Help(page)) = parse(&["--help"], &[]) else {
            panic!("--help");
        };
        for spec in COMMANDS {
            assert!(page.contains(&spec.usage()), "{page}");
        }
        assert!(page.contains("--workers"), "{page}");
        let Ok(Command::Help(page)) = parse(&["users", "--help"], &[]) else {
            panic!("users --help");
        };
        assert!(page.contains("users set-password EMAIL"), "{page}");
    }

    #[test]
    fn without_a_command_it_serves() {
        match parse(&["--bind", "127.0.0.1:0", "--log-format", "json"], &[]) {
            Ok(Command::Serve(config)) => assert_eq!(config.log_format, log::Format::Json),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["--version"], &[]), Ok(Command::Version)));
    }

    #[test]
    fn a_password_is_the_first_line_without_its_ending() {
        let line = |input: &[u8]| password_line(&mut &input[..]).map_err(|e| e.to_string());
        assert_eq!(line(b"hunter2\n").unwrap(), "hunter2");
        assert_eq!(line(b"hunter2\r\nsecond line\n").unwrap(), "hunter2");
        assert_eq!(line(b"no newline").unwrap(), "no newline");
        assert_eq!(line(b" spaced \n").unwrap(), " spaced ");
        assert_eq!(line(b"\n").unwrap(), "");
        assert!(line(b"").unwrap_err().contains("standard input is empty"));
        assert!(line(b"\xff\n").unwrap_err().contains("not UTF-8"));
        let long = vec![b'a'; 10_000];
        assert_eq!(line(&long).unwrap().len(), MAX_PASSWORD_LINE as usize);
    }
}
