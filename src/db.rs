//! `Db`: the users table and the login throttle's counters (the reference's `db.py`), on SQLite.
//!
//! Each worker thread opens its own `Db`; SQLite in WAL mode lets readers run beside the one
//! writer, and the busy timeout queues writers instead of failing them. With
//! `synchronous=FULL` a write is on disk before the call that made it returns, so an
//! acknowledged registration, login or reset survives `kill -9` and power loss.
//!
//! The public API speaks in column names, [`Value`]s and [`User`]s, never in rusqlite types, so
//! that another store can stand behind the same methods.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rusqlite::types::ToSqlOutput;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, ToSql};

use crate::user::User;

/// Schema steps, oldest first; `PRAGMA user_version` is the number applied.
///
/// Rules: append only. A released step is never edited or removed, since databases in the
/// field have already run it; a change to the schema is a new step at the end.
const MIGRATIONS: &[&str] = &[include_str!("../schema.sql")];

/// The columns of `users`, the only names `find_user_by` and `update_user` accept. SQL is built
/// from these constants, never from a caller's string.
const COLUMNS: &[&str] = &[
    "id",
    "email",
    "hashed_password",
    "session_id",
    "session_created_at",
    "session_seen_at",
    "reset_token",
    "reset_expires_at",
];

const SELECT_USER: &str = "SELECT id, email, hashed_password, session_id, session_created_at, \
     session_seen_at, reset_token, reset_expires_at FROM users";

/// How long a connection waits on another's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Value::Null => rusqlite::types::Null.to_sql(),
            Value::Integer(n) => n.to_sql(),
            Value::Text(s) => s.to_sql(),
        }
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
    /// The database itself failed: I/O, corruption, a lock held too long.
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

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> DbError {
        if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
            DbError::AlreadyExists
        } else {
            DbError::Storage(Box::new(e))
        }
    }
}

/// A connection to the store. Not shared between threads: each worker opens its own.
pub struct Db {
    conn: Connection,
}

impl Db {
    /// Opens (creating when missing, never wiping) the SQLite file at `path`, sets it up for
    /// durability and concurrency, and migrates its schema forward.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // journal_mode answers with a row, so it is read rather than executed; outside any
        // transaction, where SQLite can change it.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") && path != Path::new(":memory:") {
            return Err(DbError::Storage(
                format!("could not switch the database to WAL (got {mode})").into(),
            ));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.set_prepared_statement_cache_capacity(64);
        let mut db = Db { conn };
        db.migrate()?;
        Ok(db)
    }

    /// Applies the schema steps this database has not seen, all in one transaction, so that
    /// several processes starting at once apply each step exactly once.
    fn migrate(&mut self) -> Result<(), DbError> {
        let supported = MIGRATIONS.len() as i64;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > supported {
            return Err(DbError::SchemaTooNew { found, supported });
        }
        for step in &MIGRATIONS[found as usize..] {
            tx.execute_batch(step)?;
        }
        tx.pragma_update(None, "user_version", supported)?;
        tx.commit()?;
        Ok(())
    }

    /// The schema version this binary writes.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    /// Saves a new user and returns it. [`DbError::AlreadyExists`] when the email is taken in
    /// any ASCII case: the unique constraint decides, so two racing calls cannot both succeed.
    pub fn add_user(&self, email: &str, hashed_password: &str) -> Result<User, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached("INSERT INTO users (email, hashed_password) VALUES (?1, ?2)")?;
        stmt.execute(params![email, hashed_password])?;
        Ok(User {
            id: self.conn.last_insert_rowid(),
            email: email.to_owned(),
            hashed_password: hashed_password.to_owned(),
            session_id: None,
            session_created_at: None,
            session_seen_at: None,
            reset_token: None,
            reset_expires_at: None,
        })
    }

    /// Saves many users in one transaction: for seeding large databases (benchmarks, imports),
    /// where a commit per row would cost a disk flush per row.
    pub fn add_users<'a>(
        &mut self,
        users: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), DbError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("INSERT INTO users (email, hashed_password) VALUES (?1, ?2)")?;
            for (email, hash) in users {
                stmt.execute(params![email, hash])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The first user matching every `(column, value)` filter. Emails match in any ASCII case.
    ///
    /// Errors: [`DbError::NoResultFound`] when none matches; [`DbError::InvalidRequest`] when a
    /// filter names an unknown column or there is no filter.
    pub fn find_user_by(&self, filters: &[(&str, Value)]) -> Result<User, DbError> {
        if filters.is_empty() {
            return Err(DbError::InvalidRequest("no filter given".into()));
        }
        let sql = format!(
            "{SELECT_USER} WHERE {} ORDER BY id LIMIT 1",
            where_clause(filters, 1)?
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let args = bound_values(filters);
        stmt.query_row(rusqlite::params_from_iter(args), read_user)
            .optional()?
            .ok_or(DbError::NoResultFound)
    }

    /// Applies `(column, value)` changes to the user with `user_id`, found through
    /// `find_user_by`. An unknown column is [`DbError::InvalidRequest`] and nothing is written.
    pub fn update_user(&self, user_id: i64, changes: &[(&str, Value)]) -> Result<(), DbError> {
        check_columns(changes)?;
        let user = self.find_user_by(&[("id", Value::Integer(user_id))])?;
        self.update_user_if(user.id, &[], changes)?;
        Ok(())
    }

    /// Applies `changes` to user `user_id` only while every `(column, value)` in `expected`
    /// still holds, in one statement; returns whether it did. This is how a token is spent
    /// exactly once when two requests race to use it.
    pub fn update_user_if(
        &self,
        user_id: i64,
        expected: &[(&str, Value)],
        changes: &[(&str, Value)],
    ) -> Result<bool, DbError> {
        if changes.is_empty() {
            return Err(DbError::InvalidRequest("no change given".into()));
        }
        let set = changes
            .iter()
            .enumerate()
            .map(|(i, (col, _))| Ok(format!("{} = ?{}", column(col)?, i + 1)))
            .collect::<Result<Vec<_>, DbError>>()?
            .join(", ");
        let id_param = changes.len() + 1;
        let mut sql = format!("UPDATE users SET {set} WHERE id = ?{id_param}");
        if !expected.is_empty() {
            sql.push_str(" AND ");
            sql.push_str(&where_clause(expected, id_param + 1)?);
        }
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let id = Value::Integer(user_id);
        let args = changes
            .iter()
            .map(|(_, v)| v)
            .chain(std::iter::once(&id))
            .chain(bound_values(expected));
        Ok(stmt.execute(rusqlite::params_from_iter(args))? == 1)
    }

    /// Answers when the database can run a query: the health check.
    pub fn ping(&self) -> Result<(), DbError> {
        self.conn
            .prepare_cached("SELECT count(*) FROM users WHERE id = 0")?
            .query_row([], |r| r.get::<_, i64>(0))?;
        Ok(())
    }

    /// The failures counted for `scope` in a window still open at `now`, and when that window
    /// ends; `None` when there is no open window.
    pub fn login_failures(&self, scope: &str, now: i64) -> Result<Option<(u32, i64)>, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT failures, window_ends FROM login_failures \
             WHERE scope = ?1 AND window_ends > ?2",
        )?;
        Ok(stmt
            .query_row(params![scope, now], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// Counts one failed login for `scope`, opening a window of `window` seconds when none is
    /// open at `now`; returns the count in the window.
    pub fn record_login_failure(&self, scope: &str, now: i64, window: i64) -> Result<u32, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO login_failures (scope, failures, window_ends) VALUES (?1, 1, ?2 + ?3) \
             ON CONFLICT (scope) DO UPDATE SET \
               failures = CASE WHEN window_ends > ?2 THEN failures + 1 ELSE 1 END, \
               window_ends = CASE WHEN window_ends > ?2 THEN window_ends ELSE ?2 + ?3 END \
             RETURNING failures",
        )?;
        Ok(stmt.query_row(params![scope, now, window], |r| r.get(0))?)
    }

    /// Forgets the failures counted for `scope` (a successful login).
    pub fn clear_login_failures(&self, scope: &str) -> Result<(), DbError> {
        self.conn
            .prepare_cached("DELETE FROM login_failures WHERE scope = ?1")?
            .execute([scope])?;
        Ok(())
    }

    /// Deletes counters whose window closed before `now`, so the table stays as small as the
    /// set of addresses failing right now.
    pub fn prune_login_failures(&self, now: i64) -> Result<usize, DbError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM login_failures WHERE window_ends <= ?1")?
            .execute([now])?)
    }
}

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

/// `a = ?n AND b IS NULL ...`, numbering parameters from `first`; NULL filters bind nothing.
fn where_clause(filters: &[(&str, Value)], first: usize) -> Result<String, DbError> {
    let mut n = first;
    let parts = filters
        .iter()
        .map(|(col, value)| {
            let col = column(col)?;
            Ok(if *value == Value::Null {
                format!("{col} IS NULL")
            } else {
                n += 1;
                format!("{col} = ?{}", n - 1)
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    Ok(parts.join(" AND "))
}

/// The values `where_clause` binds, in its order (NULL filters bind nothing).
fn bound_values<'a>(filters: &'a [(&str, Value)]) -> impl Iterator<Item = &'a Value> {
    filters
        .iter()
        .map(|(_, v)| v)
        .filter(|v| **v != Value::Null)
}

fn read_user(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        email: row.get(1)?,
        hashed_password: row.get(2)?,
        session_id: row.get(3)?,
        session_created_at: row.get(4)?,
        session_seen_at: row.get(5)?,
        reset_token: row.get(6)?,
        reset_expires_at: row.get(7)?,
    })
}
