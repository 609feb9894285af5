//! The embedded store: one SQLite file, a connection per worker.
//!
//! SQLite in WAL mode lets readers run beside the one writer, and the busy timeout queues
//! writers instead of failing them. With `synchronous=FULL` a write is on disk before the call
//! that made it returns, so an acknowledged registration, login or reset survives `kill -9` and
//! power loss.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::ToSqlOutput;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, ToSql};

use super::{bound_values, update_sql, update_values, where_clause, DbError, Dialect, Value};
use super::{Counts, User, SELECT_USER};

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

    /// Opens the file at `path`, which must exist, as it is: durable writes and the busy
    /// timeout as in [`Sqlite::open`], but no schema step and no change of journal mode.
    pub(super) fn open_existing(path: &Path) -> Result<Sqlite, DbError> {
        if !path.is_file() {
            return Err(DbError::Storage(
                format!("no database at {}", path.display()).into(),
            ));
        }
        // Without CREATE, so that a file removed since the look above is not made anew.
        let flags = OpenFlags::default().difference(OpenFlags::SQLITE_OPEN_CREATE);
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(Sqlite { conn })
    }

    pub(super) fn stored_schema_version(&self) -> Result<i64, DbError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    pub(super) fn delete_user(&self, user_id: i64) -> Result<bool, DbError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM users WHERE id = ?1")?
            .execute([user_id])?
            == 1)
    }

    pub(super) fn list_users(&self, after: i64, limit: i64) -> Result<Vec<User>, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{SELECT_USER} WHERE id > ?1 ORDER BY id LIMIT ?2"))?;
        let users = stmt.query_map(params![after, limit], read_user)?;
        Ok(users.collect::<Result<_, _>>()?)
    }

    pub(super) fn counts(
        &self,
        now: i64,
        created_after: i64,
        seen_after: i64,
    ) -> Result<Counts, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT count(*), \
               count(*) FILTER (WHERE session_id IS NOT NULL \
                 AND session_created_at > ?2 AND session_seen_at > ?3), \
               count(*) FILTER (WHERE reset_token IS NOT NULL AND reset_expires_at > ?1) \
             FROM users",
        )?;
        Ok(
            stmt.query_row(params![now, created_after, seen_after], |r| {
                Ok(Counts {
                    users: r.get(0)?,
                    live_sessions: r.get(1)?,
                    reset_tokens: r.get(2)?,
                })
            })?,
        )
    }

    pub(super) fn integrity_check(&self) -> Result<Vec<String>, DbError> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Copies this database, page by page, into the (empty) SQLite file `to`.
    ///
    /// All pages go in one step, that is inside one read transaction: a snapshot as of its
    /// start. In WAL mode a reader holds up no writer, so the server writes on meanwhile.
    /// Copying a few pages at a time instead would let writes in between, each of which
    /// restarts the copy, and under steady load it might never finish.
    pub(super) fn backup(&self, to: &Path) -> Result<(), DbError> {
        use rusqlite::backup::{Backup, StepResult};

        let mut copy = Connection::open(to)?;
        copy.pragma_update(None, "synchronous", "FULL")?;
        let started = std::time::Instant::now();
        {
            let backup = Backup::new(&self.conn, &mut copy)?;
            loop {
                match backup.step(-1)? {
                    StepResult::Done => break,
                    // A lock held by another connection (a checkpoint, a recovery): wait as
                    // a statement would.
                    _ if started.elapsed() < BUSY_TIMEOUT => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    other => {
                        return Err(DbError::Storage(
                            format!("the backup could not go on ({other:?})").into(),
                        ))
                    }
                }
            }
        }
        copy.close().map_err(|(_, e)| e)?;
        Ok(())
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
