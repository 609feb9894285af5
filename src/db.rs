//! `Db`: the users, their sessions, and the counters of the login throttle and the abuse
//! limits (the reference's `db.py`, which had the users alone).
//!
//! Two stores stand behind the same methods. `src/db/sqlite.rs` is the embedded default: a
//! file that each worker opens with its own connection. With the cargo feature `postgres`, a
//! `--db` of the form `postgres://...` selects `src/db/postgres.rs` instead, so that any
//! number of instances can share one database: its schema is `schema.postgres.sql`, its
//! version a row in `schema_version`, and a connection the server dropped is reopened (and
//! the statement retried once). Either way each worker owns its own `Db`, and every piece of
//! state that must hold across workers or instances (sessions, reset tokens, the unique email,
//! the throttle's counts) lives in the database, never in the process.
//!
//! The public API speaks in column names, [`Value`]s and [`User`]s, never in a driver's types.
//! SQL is built only from the column whitelist here; values are always bound as parameters.

mod sqlite;

#[cfg(feature = "postgres")]
mod postgres;

use std::fmt;
use std::path::Path;

use crate::user::{Session, User};

/// A value to filter on or store in a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Integer(i64),
    Text(String),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Integer(n)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Everything that can go wrong in the store.
#[derive(Debug)]
pub enum DbError {
    /// `find_user_by` (or `update_user`) matched no user.
    NoResultFound,
    /// A filter or change named a column `users` does not have, or no filter was given.
    InvalidRequest(String),
    /// `add_user` hit the unique email: that address (in any ASCII case) is taken.
    AlreadyExists,
    /// The database was written by a newer auth-service than this one.
    SchemaTooNew { found: i64, supported: i64 },
    /// The database itself failed: I/O, corruption, a lock held too long, a lost connection.
    Storage(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::NoResultFound => write!(f, "no result found"),
            DbError::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            DbError::AlreadyExists => write!(f, "already exists"),
            DbError::SchemaTooNew { found, supported } => write!(
                f,
                "database schema version {found} is newer than this binary supports \
                 ({supported}); run a newer auth-service"
            ),
            DbError::Storage(e) => write!(f, "storage error: {e}"),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Storage(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// A connection to the store. Not shared between threads: each worker opens its own.
pub struct Db {
    store: Store,
}

enum Store {
    Sqlite(sqlite::Sqlite),
    // Boxed: the connection's driver state is several times the size of SQLite's handle.
    #[cfg(feature = "postgres")]
    Postgres(Box<postgres::Postgres>),
}

/// Runs the same call on whichever store this is.
macro_rules! on_store {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            Store::Sqlite($s) => $call,
            #[cfg(feature = "postgres")]
            Store::Postgres($s) => $call,
        }
    };
}

impl Db {
    /// Opens the store `path` names and migrates its schema forward.
    ///
    /// A path is a SQLite file, created when missing and never wiped. A `postgres://` or
    /// `postgresql://` URL is a PostgreSQL database (with the `postgres` feature; without it,
    /// an error that says so).
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let store = match postgres_url(path) {
            None => Store::Sqlite(sqlite::Sqlite::open(path)?),
            #[cfg(feature = "postgres")]
            Some(url) => Store::Postgres(Box::new(postgres::Postgres::open(url)?)),
            #[cfg(not(feature = "postgres"))]
            Some(_) => {
                return Err(DbError::Storage(
                    "a postgres:// database needs PostgreSQL support, but this auth-service \
                     was built without the postgres feature (cargo build --features postgres)"
                        .into(),
                ))
            }
        };
        Ok(Db { store })
    }

    /// The schema version this binary writes (the same number for either store).
    pub fn schema_version() -> i64 {
        sqlite::MIGRATIONS.len() as i64
    }

    /// Saves a new user and returns it. [`DbError::AlreadyExists`] when the email is taken in
    /// any ASCII case: the unique constraint decides, so two racing calls cannot both succeed.
    pub fn add_user(&self, email: &str, hashed_password: &str) -> Result<User, DbError> {
        let id = on_store!(&self.store, s => s.add_user(email, hashed_password))?;
        Ok(User {
            id,
            email: email.to_owned(),
            hashed_password: hashed_password.to_owned(),
            session_id: None,
            reset_token: None,
            reset_expires_at: None,
        })
    }

    /// The first user matching every `(column, value)` filter. Emails match in any ASCII case;
    /// a `session_id` filter matches the user who holds that session (its digest), and a NULL
    /// one a user who holds none.
    ///
    /// Errors: [`DbError::NoResultFound`] when none matches; [`DbError::InvalidRequest`] when a
    /// filter names an unknown column or there is no filter.
    pub fn find_user_by(&self, filters: &[(&str, Value)]) -> Result<User, DbError> {
        self.find_user(filters)?.ok_or(DbError::NoResultFound)
    }

    /// [`Db::find_user_by`] for callers to whom no match is an answer rather than an error:
    /// `None` when no user matches.
    pub fn find_user(&self, filters: &[(&str, Value)]) -> Result<Option<User>, DbError> {
        if filters.is_empty() {
            return Err(DbError::InvalidRequest("no filter given".into()));
        }
        check_columns(filters)?;
        on_store!(&self.store, s => s.find_user_by(filters))
    }

    /// Applies `(column, value)` changes to the user with `user_id`, found through
    /// `find_user_by`. An unknown column is [`DbError::InvalidRequest`] and nothing is written.
    /// `session_id` keeps the reference's meaning: NULL ends every session of the user, a
    /// digest starts one more.
    pub fn update_user(&self, user_id: i64, changes: &[(&str, Value)]) -> Result<(), DbError> {
        check_columns(changes)?;
        let user = self.find_user_by(&[("id", Value::Integer(user_id))])?;
        let (session, columns): (Vec<_>, Vec<_>) = changes
            .iter()
            .cloned()
            .partition(|(col, _)| *col == SESSION_ID);
        if !columns.is_empty() {
            self.update_user_if(user.id, &[], &columns)?;
        }
        for (_, value) in session {
            match value {
                Value::Text(digest) => {
                    let handle = uuid::Uuid::new_v4().simple().to_string();
                    let now = now_millis();
                    let user = self.find_user_by(&[("id", Value::Integer(user_id))])?;
                    let hash = &user.hashed_password;
                    self.add_session(user.id, &digest, &handle, now, hash, u32::MAX)?;
                }
                Value::Null | Value::Integer(_) => {
                    self.end_sessions(user.id, None)?;
                }
            }
        }
        Ok(())
    }

    /// Applies `changes` to user `user_id` only while every `(column, value)` in `expected`
    /// still holds, in one statement; returns whether it did. This is how a token is spent
    /// exactly once when two requests race to use it, on one instance or several. Sessions are
    /// not columns of the user: see the session methods.
    pub fn update_user_if(
        &self,
        user_id: i64,
        expected: &[(&str, Value)],
        changes: &[(&str, Value)],
    ) -> Result<bool, DbError> {
        if changes.is_empty() {
            return Err(DbError::InvalidRequest("no change given".into()));
        }
        check_columns(changes)?;
        check_columns(expected)?;
        if changes
            .iter()
            .chain(expected)
            .any(|(col, _)| *col == SESSION_ID)
        {
            return Err(DbError::InvalidRequest(
                "sessions are not changed through update_user_if".into(),
            ));
        }
        on_store!(&self.store, s => s.update_user_if(user_id, expected, changes))
    }

    /// Deletes the user and everything of theirs (sessions, reset token); whether there was
    /// one. The email is free again.
    pub fn delete_user(&self, user_id: i64) -> Result<bool, DbError> {
        on_store!(&self.store, s => s.delete_user(user_id))
    }

    /// Replaces user `user_id`'s password hash with `new_hash` while `if_still` holds, spends
    /// any reset token, and ends the sessions `end` names, in one transaction; whether it did.
    ///
    /// The sessions end after the hash changes and in the same transaction, and a session is
    /// only ever started while the hash it was verified against is still stored (see
    /// [`Db::add_session`]): so a login that checked the old password while this ran cannot
    /// keep a session, on one instance or several.
    pub fn replace_password(
        &self,
        user_id: i64,
        if_still: IfStill<'_>,
        new_hash: &str,
        end: EndSessions<'_>,
    ) -> Result<bool, DbError> {
        let change = PasswordChange {
            user_id,
            if_still,
            new_hash,
            end,
        };
        on_store!(&self.store, s => s.replace_password(&change))
    }

    /// Starts a session for `user_id` (`digest` of its id, a public `handle`, at `now` in Unix
    /// milliseconds) only if the user's stored hash is still `verified_hash`, and ends the
    /// user's least recently used other sessions so that `max_sessions` remain (never the new
    /// one, whatever the clock says), in one transaction. `None` when the hash has changed (a
    /// reset or a password change got there first); otherwise how many sessions were evicted.
    pub fn add_session(
        &self,
        user_id: i64,
        digest: &str,
        handle: &str,
        now: i64,
        verified_hash: &str,
        max_sessions: u32,
    ) -> Result<Option<usize>, DbError> {
        let new = NewSession {
            user_id,
            digest,
            handle,
            now,
            verified_hash,
            max_sessions: max_sessions.max(1),
        };
        on_store!(&self.store, s => s.add_session(&new))
    }

    /// The session with this digest and the user who holds it, expired or not.
    pub fn session(&self, digest: &str) -> Result<Option<(User, Session)>, DbError> {
        on_store!(&self.store, s => s.session(digest))
    }

    /// Records that the session with this digest was used at `now` (Unix milliseconds).
    pub fn touch_session(&self, digest: &str, now: i64) -> Result<(), DbError> {
        on_store!(&self.store, s => s.touch_session(digest, now))
    }

    /// The sessions of `user_id`, most recently used first.
    pub fn sessions(&self, user_id: i64) -> Result<Vec<Session>, DbError> {
        on_store!(&self.store, s => s.sessions(user_id))
    }

    /// Ends the session with this digest; whether there was one.
    pub fn end_session(&self, digest: &str) -> Result<bool, DbError> {
        on_store!(&self.store, s => s.end_session(digest))
    }

    /// Ends `user_id`'s session with this public handle; whether the user had one.
    pub fn end_session_by_handle(&self, user_id: i64, handle: &str) -> Result<bool, DbError> {
        on_store!(&self.store, s => s.end_session_by_handle(user_id, handle))
    }

    /// Ends every session of `user_id` but the one with digest `keep`; how many.
    pub fn end_sessions(&self, user_id: i64, keep: Option<&str>) -> Result<usize, DbError> {
        on_store!(&self.store, s => s.end_sessions(user_id, keep))
    }

    /// Deletes up to `limit` sessions last used before `seen_before` (Unix milliseconds), so
    /// that sessions nobody ends do not pile up; how many.
    pub fn prune_sessions(&self, seen_before: i64, limit: usize) -> Result<usize, DbError> {
        on_store!(&self.store, s => s.prune_sessions(seen_before, limit))
    }

    /// A token that changes whenever anything is committed to the store, by any connection or
    /// process, read without a transaction: two equal tokens mean nothing was written in
    /// between, so what was read before is still what the store holds. `None` when the store
    /// cannot tell so cheaply (PostgreSQL; or SQLite in the middle of recording a commit).
    pub fn change_token(&self) -> Option<ChangeToken> {
        match &self.store {
            Store::Sqlite(s) => s.change_token(),
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => None,
        }
    }

    /// Answers when the database can run a query: the health check.
    pub fn ping(&self) -> Result<(), DbError> {
        on_store!(&self.store, s => s.ping())
    }

    /// Counts one more event in each of `scopes`, opening a window of `window` seconds for a
    /// scope with none open at `now`; the count in each window and when it ends, in the
    /// order of `scopes`. One statement (an upsert), so counts from racing workers or
    /// instances add up, and a caller that checks the counts it gets back checks and counts in
    /// one step.
    pub fn count(&self, scopes: &[&str], now: i64, window: i64) -> Result<Vec<Count>, DbError> {
        let mut counts = on_store!(&self.store, s => s.count(scopes, now, window))?;
        counts.sort_by_key(|(scope, _)| scopes.iter().position(|s| s == scope));
        Ok(counts.into_iter().map(|(_, count)| count).collect())
    }

    /// Takes counted events back, in one statement: all of `clear`'s and one of
    /// `decrement`'s, in windows still open at `now` (a login that succeeded clears its
    /// (address, email) pair, and was no failure of its address).
    pub fn count_back(&self, clear: &str, decrement: &str, now: i64) -> Result<(), DbError> {
        on_store!(&self.store, s => s.count_back(clear, decrement, now))
    }

    /// Deletes counters whose window closed before `now`, so the table stays as small as the
    /// set of scopes counted right now.
    pub fn prune_counters(&self, now: i64) -> Result<usize, DbError> {
        on_store!(&self.store, s => s.prune_counters(now))
    }

    // For the operator's commands (src/cli.rs).

    /// Opens the store `path` names as it is, applying no schema step: a SQLite file must
    /// already exist (a mistyped path is an error, not a new empty database). The operator's
    /// commands open it so, to never migrate a database behind a running server's back, nor
    /// change a backup they are asked to check.
    pub fn open_existing(path: &Path) -> Result<Db, DbError> {
        let store = match postgres_url(path) {
            None => Store::Sqlite(sqlite::Sqlite::open_existing(path)?),
            #[cfg(feature = "postgres")]
            Some(url) => Store::Postgres(Box::new(postgres::Postgres::open_existing(url)?)),
            #[cfg(not(feature = "postgres"))]
            Some(_) => return Db::open(path),
        };
        Ok(Db { store })
    }

    /// The schema version the database records (0 for one no auth-service has set up).
    pub fn stored_schema_version(&self) -> Result<i64, DbError> {
        on_store!(&self.store, s => s.stored_schema_version())
    }

    /// Up to `limit` users whose id is above `after`, in id order: a page of the whole list,
    /// each its own short statement however many users there are.
    pub fn list_users(&self, after: i64, limit: usize) -> Result<Vec<User>, DbError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        on_store!(&self.store, s => s.list_users(after, limit))
    }

    /// How many users, live sessions (created after `created_after` and last used after
    /// `seen_after`, in Unix milliseconds) and reset tokens still valid at `now` (Unix
    /// seconds) the database holds.
    pub fn counts(&self, now: i64, created_after: i64, seen_after: i64) -> Result<Counts, DbError> {
        on_store!(&self.store, s => s.counts(now, created_after, seen_after))
    }

    /// SQLite's `PRAGMA integrity_check`: `["ok"]`, or the problems it found. `None` on
    /// PostgreSQL, which has no such check of its own.
    pub fn integrity_check(&self) -> Result<Option<Vec<String>>, DbError> {
        match &self.store {
            Store::Sqlite(s) => s.integrity_check().map(Some),
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => Ok(None),
        }
    }

    /// Copies the SQLite database into the empty file `to`, consistently, while others keep
    /// writing (SQLite's online backup). On PostgreSQL, an error: `pg_dump` is the tool.
    pub fn backup(&self, to: &Path) -> Result<(), DbError> {
        match &self.store {
            Store::Sqlite(s) => s.backup(to),
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => Err(DbError::Storage(
                "a PostgreSQL database is backed up with pg_dump".into(),
            )),
        }
    }
}

/// What a database holds, as `auth-service check` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub users: i64,
    pub live_sessions: i64,
    pub reset_tokens: i64,
}

/// What [`Db::change_token`] returns: opaque, and equal only while nothing was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeToken([u8; 48]);

#[cfg(test)]
impl ChangeToken {
    /// A token of 48 equal bytes, for the session cache's own tests.
    pub(crate) fn of(byte: u8) -> ChangeToken {
        ChangeToken([byte; 48])
    }
}

/// What [`Db::replace_password`] requires to still hold.
#[derive(Debug, Clone, Copy)]
pub enum IfStill<'a> {
    /// The stored hash is this one: the one just verified.
    Hash(&'a str),
    /// The user's reset token is this digest: the one just presented.
    ResetToken(&'a str),
    /// Nothing: an operator sets the password.
    Always,
}

/// Which of the user's sessions [`Db::replace_password`] ends.
#[derive(Debug, Clone, Copy)]
pub enum EndSessions<'a> {
    All,
    /// All but the one with this digest (the one changing its password).
    AllBut(&'a str),
    None,
}

/// A counter's state after [`Db::count`]: the count in its window, and when the window ends
/// (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub n: u32,
    pub window_ends: i64,
}

/// A password about to change (the arguments of [`Db::replace_password`]).
struct PasswordChange<'a> {
    user_id: i64,
    if_still: IfStill<'a>,
    new_hash: &'a str,
    end: EndSessions<'a>,
}

impl PasswordChange<'_> {
    /// The update, with the user's id as its first parameter, the new hash as its second, and
    /// what must still hold ([`IfStill::value`]) as its third.
    fn sql<D: Dialect>(&self) -> String {
        let (n1, n2, n3) = (D::param(1), D::param(2), D::param(3));
        let condition = match self.if_still {
            IfStill::Hash(_) => format!("hashed_password = {n3}"),
            IfStill::ResetToken(_) => format!("reset_token = {n3}"),
            IfStill::Always => format!("{} IS NULL", D::text(&n3)),
        };
        format!(
            "UPDATE users SET hashed_password = {n2}, reset_token = NULL, \
             reset_expires_at = NULL WHERE id = {n1} AND {condition}"
        )
    }
}

impl<'a> IfStill<'a> {
    /// The value bound for it.
    fn value(&self) -> Option<&'a str> {
        match *self {
            IfStill::Hash(value) | IfStill::ResetToken(value) => Some(value),
            IfStill::Always => None,
        }
    }
}

/// The upsert of [`Db::count`] for `scopes` scopes: the time as parameter 1, the window as 2,
/// then each scope; it returns each scope's count and window end.
fn count_sql<D: Dialect>(scopes: usize) -> String {
    let (now, window) = (D::param(1), D::param(2));
    let opened = format!("{} + {}", D::integer(&now), D::integer(&window));
    let rows: Vec<String> = (3..scopes + 3)
        .map(|n| format!("({}, 1, {opened})", D::param(n)))
        .collect();
    format!(
        "INSERT INTO counters AS c (scope, count, window_ends) VALUES {} \
         ON CONFLICT (scope) DO UPDATE SET \
           count = CASE WHEN c.window_ends > {now} THEN c.count + 1 ELSE 1 END, \
           window_ends = CASE WHEN c.window_ends > {now} THEN c.window_ends ELSE {opened} END \
         RETURNING scope, count, window_ends",
        rows.join(", ")
    )
}

/// A session about to start (the arguments of [`Db::add_session`]).
struct NewSession<'a> {
    user_id: i64,
    digest: &'a str,
    handle: &'a str,
    now: i64,
    verified_hash: &'a str,
    max_sessions: u32,
}

/// The time now in Unix milliseconds, as sessions are stored.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `path` as a PostgreSQL URL, when it is one.
fn postgres_url(path: &Path) -> Option<&str> {
    path.to_str()
        .filter(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

/// Whether `path` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(path: &Path) -> bool {
    postgres_url(path).is_some()
}

/// `path` as it may be shown in a log line: a URL's password is masked.
pub fn display_location(path: &Path) -> String {
    let shown = path.display().to_string();
    if postgres_url(path).is_none() {
        return shown;
    }
    // postgres://user:password@host/db: mask what lies between the first ':' after the scheme
    // and the last '@' of the authority.
    let (scheme, rest) = shown.split_once("://").unwrap_or(("", &shown));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{user}:***@{host}")
        }
        _ => authority.to_owned(),
    };
    // A password may also come as a query parameter.
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => kv.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&");
            format!("{path}?{query}")
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// The columns of a user, the only names `find_user_by` and `update_user` accept. SQL is built
/// from these constants, never from a caller's string. `session_id` is not a column of `users`
/// but the digest of one of the user's `sessions`.
const COLUMNS: &[&str] = &[
    "id",
    "email",
    "hashed_password",
    SESSION_ID,
    "reset_token",
    "reset_expires_at",
];

const SESSION_ID: &str = "session_id";

/// Users as a list shows them (`Db::list_users`), in [`User`]'s field order, without the
/// session they were not found through.
const SELECT_USERS: &str =
    "SELECT id, email, hashed_password, NULL, reset_token, reset_expires_at FROM users";

/// The whitelisted constant for a caller's column name.
fn column(name: &str) -> Result<&'static str, DbError> {
    COLUMNS
        .iter()
        .find(|c| **c == name)
        .copied()
        .ok_or_else(|| DbError::InvalidRequest(format!("users has no column {name:?}")))
}

fn check_columns(pairs: &[(&str, Value)]) -> Result<(), DbError> {
    pairs.iter().try_for_each(|(col, _)| column(col).map(drop))
}

/// `SELECT ... FROM users u ... WHERE <filters>`, with the user's columns in [`User`]'s field
/// order: through the user's sessions when a `session_id` filter asks for one (the session's
/// digest is then the user's `session_id`), or without any session when it asks for NULL.
/// Binds what [`bound_values`] gives for the same filters.
fn select_user<D: Dialect>(filters: &[(&str, Value)]) -> Result<String, DbError> {
    let session = filters.iter().find(|(col, _)| *col == SESSION_ID);
    let no_session = matches!(session, Some((_, Value::Null)));
    let (digest, join) = match session {
        Some(_) if !no_session => ("s.digest", " JOIN sessions s ON s.user_id = u.id"),
        _ => ("NULL", ""),
    };
    let others: Vec<(&str, Value)> = filters
        .iter()
        .filter(|(col, _)| !(no_session && *col == SESSION_ID))
        .cloned()
        .collect();
    let mut conditions = vec![where_clause::<D>(&others, 1, qualified)?];
    if no_session {
        conditions.push("NOT EXISTS (SELECT 1 FROM sessions WHERE user_id = u.id)".into());
    }
    conditions.retain(|c| !c.is_empty());
    Ok(format!(
        "SELECT u.id, u.email, u.hashed_password, {digest}, u.reset_token, u.reset_expires_at \
         FROM users u{join} WHERE {} ORDER BY u.id LIMIT 1",
        conditions.join(" AND ")
    ))
}

/// A filter's column as [`select_user`] names it.
fn qualified(col: &'static str) -> &'static str {
    match col {
        "id" => "u.id",
        "email" => "u.email",
        "hashed_password" => "u.hashed_password",
        SESSION_ID => "s.digest",
        "reset_token" => "u.reset_token",
        "reset_expires_at" => "u.reset_expires_at",
        other => other,
    }
}

/// How a store writes the `n`th parameter and an equality test on a column.
trait Dialect {
    fn param(n: usize) -> String;
    fn equals(col: &'static str, n: usize) -> String {
        format!("{col} = {}", Self::param(n))
    }
    /// `expr` (a parameter) as an integer, where the store cannot tell its type otherwise.
    fn integer(expr: &str) -> String {
        expr.to_owned()
    }
    /// `expr` (a parameter) as text, likewise.
    fn text(expr: &str) -> String {
        expr.to_owned()
    }
}

/// `a = ?n AND b IS NULL ...`, numbering parameters from `first` and naming each column with
/// `name`; NULL filters bind nothing.
fn where_clause<D: Dialect>(
    filters: &[(&str, Value)],
    first: usize,
    name: fn(&'static str) -> &'static str,
) -> Result<String, DbError> {
    let mut n = first;
    let parts = filters
        .iter()
        .map(|(col, value)| {
            let col = name(column(col)?);
            Ok(if *value == Value::Null {
                format!("{col} IS NULL")
            } else {
                n += 1;
                D::equals(col, n - 1)
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    Ok(parts.join(" AND "))
}

/// `UPDATE users SET ... WHERE id = ... AND <expected>`, with `changes`' values bound first,
/// then the id, then `expected`'s non-NULL values (see [`update_values`]).
fn update_sql<D: Dialect>(
    expected: &[(&str, Value)],
    changes: &[(&str, Value)],
) -> Result<String, DbError> {
    let set = changes
        .iter()
        .enumerate()
        .map(|(i, (col, _))| Ok(format!("{} = {}", column(col)?, D::param(i + 1))))
        .collect::<Result<Vec<_>, DbError>>()?
        .join(", ");
    let id_param = changes.len() + 1;
    let mut sql = format!("UPDATE users SET {set} WHERE id = {}", D::param(id_param));
    if !expected.is_empty() {
        sql.push_str(" AND ");
        sql.push_str(&where_clause::<D>(expected, id_param + 1, |col| col)?);
    }
    Ok(sql)
}

/// The values `where_clause` binds, in its order (NULL filters bind nothing).
fn bound_values<'a>(filters: &'a [(&str, Value)]) -> impl Iterator<Item = &'a Value> {
    filters
        .iter()
        .map(|(_, v)| v)
        .filter(|v| **v != Value::Null)
}

/// The values [`update_sql`] binds, in its order.
fn update_values<'a>(
    id: &'a Value,
    expected: &'a [(&str, Value)],
    changes: &'a [(&str, Value)],
) -> impl Iterator<Item = &'a Value> {
    changes
        .iter()
        .map(|(_, v)| v)
        .chain(std::iter::once(id))
        .chain(bound_values(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths_and_passwords_never_shown() {
        assert!(is_postgres_url(Path::new("postgres://h/db")));
        assert!(is_postgres_url(Path::new("postgresql://u@h:5432/db")));
        assert!(!is_postgres_url(Path::new("auth.db")));
        assert!(!is_postgres_url(Path::new("./postgres/auth.db")));
        assert_eq!(display_location(Path::new("auth.db")), "auth.db");
        assert_eq!(
            display_location(Path::new("postgres://app:s3cr@t@db.internal:5432/auth?x=1")),
            "postgres://app:***@db.internal:5432/auth?x=1"
        );
        assert_eq!(
            display_location(Path::new("postgres://app@db/auth")),
            "postgres://app@db/auth"
        );
        assert_eq!(
            display_location(Path::new("postgres://db/auth?user=a&password=b")),
            "postgres://db/auth?user=a&password=***"
        );
    }

    #[cfg(not(feature = "postgres"))]
    #[test]
    fn a_postgres_url_without_the_feature_says_so() {
        let err = Db::open(Path::new("postgres://127.0.0.1/auth"))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("built without the postgres feature"),
            "{err}"
        );
    }
}
