//! The embedded store: one SQLite file, a connection per worker.
//!
//! SQLite in WAL mode lets readers run beside the one writer, and the busy timeout queues
//! writers instead of failing them. With `synchronous=FULL` a write is on disk before the call
//! that made it returns, so an acknowledged registration, login or reset survives `kill -9` and
//! power loss.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::ToSqlOutput;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, ToSql};

use super::{bound_values, update_sql, update_values, where_clause, DbError, Dialect, Value};
use super::{User, SELECT_USER};

/// Schema steps, oldest first; `PRAGMA user_version` is the number applied.
///
/// Rules: append only. A released step is never edited or removed, since databases in the
/// field have already run it; a change to the schema is a new step at the end, here and in
/// `postgres::MIGRATIONS` alike, so that a version number means the same schema in both.
pub(super) const MIGRATIONS: &[&str] = &[include_str!("../../schema.sql")];

/// How long a connection waits on another's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Value::Null => rusqlite::types::Null.to_sql(),
            Value::Integer(n) => n.to_sql(),
            Value::Text(s) => s.to_sql(),
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

/// SQLite numbers parameters `?1`, `?2`...; the email column folds case itself (`NOCASE`).
struct Sql;

impl Dialect for Sql {
    fn param(n: usize) -> String {
        format!("?{n}")
    }
}

pub(super) struct Sqlite {
    conn: Connection,
}

impl Sqlite {
    /// Opens (creating when missing, never wiping) the file at `path`, sets it up for
    /// durability and concurrency, and migrates its schema forward.
    pub(super) fn open(path: &Path) -> Result<Sqlite, DbError> {
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
        let mut db = Sqlite { conn };
        db.migrate()?;
        Ok(db)
    }

    /// Applies the schema steps this database has not seen, all in one transaction, so that
    /// several processes starting at once apply each step exactly once.
    fn migrate(&mut self) -> Result<(), DbError> {
        let supported = MIGRATIONS.len() as i64;
        // A current database is only read: no write lock, no commit, no disk flush for each of
        // the connections the server opens at start.
        let current: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current == supported {
            return Ok(());
        }
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

    pub(super) fn add_user(&self, email: &str, hashed_password: &str) -> Result<i64, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached("INSERT INTO users (email, hashed_password) VALUES (?1, ?2)")?;
        stmt.execute(params![email, hashed_password])?;
        Ok(self.conn.last_insert_rowid())
    }

    pub(super) fn find_user_by(&self, filters: &[(&str, Value)]) -> Result<Option<User>, DbError> {
        let sql = format!(
            "{SELECT_USER} WHERE {} ORDER BY id LIMIT 1",
            where_clause::<Sql>(filters, 1)?
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let args = bound_values(filters);
        Ok(stmt
            .query_row(rusqlite::params_from_iter(args), read_user)
            .optional()?)
    }

    pub(super) fn update_user_if(
        &self,
        user_id: i64,
        expected: &[(&str, Value)],
        changes: &[(&str, Value)],
    ) -> Result<bool, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached(&update_sql::<Sql>(expected, changes)?)?;
        let id = Value::Integer(user_id);
        let args = update_values(&id, expected, changes);
        Ok(stmt.execute(rusqlite::params_from_iter(args))? == 1)
    }

    pub(super) fn ping(&self) -> Result<(), DbError> {
        self.conn
            .prepare_cached("SELECT count(*) FROM users WHERE id = 0")?
            .query_row([], |r| r.get::<_, i64>(0))?;
        Ok(())
    }

    pub(super) fn login_failures(
        &self,
        scope: &str,
        now: i64,
    ) -> Result<Option<(u32, i64)>, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT failures, window_ends FROM login_failures \
             WHERE scope = ?1 AND window_ends > ?2",
        )?;
        Ok(stmt
            .query_row(params![scope, now], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    pub(super) fn record_login_failure(
        &self,
        scope: &str,
        now: i64,
        window: i64,
    ) -> Result<u32, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO login_failures (scope, failures, window_ends) VALUES (?1, 1, ?2 + ?3) \
             ON CONFLICT (scope) DO UPDATE SET \
               failures = CASE WHEN window_ends > ?2 THEN failures + 1 ELSE 1 END, \
               window_ends = CASE WHEN window_ends > ?2 THEN window_ends ELSE ?2 + ?3 END \
             RETURNING failures",
        )?;
        Ok(stmt.query_row(params![scope, now, window], |r| r.get(0))?)
    }

    pub(super) fn clear_login_failures(&self, scope: &str) -> Result<(), DbError> {
        self.conn
            .prepare_cached("DELETE FROM login_failures WHERE scope = ?1")?
            .execute([scope])?;
        Ok(())
    }

    pub(super) fn prune_login_failures(&self, now: i64) -> Result<usize, DbError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM login_failures WHERE window_ends <= ?1")?
            .execute([now])?)
    }
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
