//! The embedded store: one SQLite file, a connection per worker.
//!
//! SQLite in WAL mode lets readers run beside the one writer, and the busy timeout queues
//! writers instead of failing them. With `synchronous=FULL` a write is on disk before the call
//! that made it returns, so an acknowledged registration, login or reset survives `kill -9` and
//! power loss.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::ToSqlOutput;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, ToSql};

use super::PasswordChange;
use super::Value;
use super::{bound_values, count_sql, select_user, update_sql, update_values};
use super::{ChangeToken, Count, Counts, DbError, Dialect, EndSessions, NewSession};
use super::{Session, User, SELECT_USERS};

/// Schema steps, oldest first; `PRAGMA user_version` is the number applied.
///
/// Rules: append only. A released step is never edited or removed, since databases in the
/// field have already run it; a change to the schema is a new step at the end, here and in
/// `postgres::MIGRATIONS` alike, so that a version number means the same schema in both.
pub(super) const MIGRATIONS: &[&str] = &[include_str!("../../schema.sql"), SESSIONS];

/// Version 2: sessions of their own, several per user, each with its own clock in
/// milliseconds; the sessions open before the upgrade carry over. And one table of counters
/// for the login throttle and the abuse limits, which the login failures' table becomes.
const SESSIONS: &str = "
CREATE TABLE sessions (
    digest     TEXT    PRIMARY KEY,
    handle     TEXT    NOT NULL UNIQUE,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_user ON sessions (user_id, seen_at);
CREATE INDEX sessions_seen ON sessions (seen_at);
INSERT INTO sessions (digest, handle, user_id, created_at, seen_at)
    SELECT session_id, lower(hex(randomblob(16))), id,
           coalesce(session_created_at, 0) * 1000, coalesce(session_seen_at, 0) * 1000
    FROM users WHERE session_id IS NOT NULL;
DROP INDEX users_session_id;
ALTER TABLE users DROP COLUMN session_id;
ALTER TABLE users DROP COLUMN session_created_at;
ALTER TABLE users DROP COLUMN session_seen_at;
ALTER TABLE login_failures RENAME TO counters;
ALTER TABLE counters RENAME COLUMN failures TO count;
";

/// A session and its user by the session's digest. `+?1`, not `?1`: with a bare parameter
/// compared to the joined table's key, SQLite's planner marks the statement as depending on
/// the parameter's value, and prepares it again at every run (the SQL parser became the
/// largest cost of `GET /profile`); the unary plus keeps the primary-key search and the
/// prepared statement.
const SELECT_SESSION: &str = "SELECT u.id, u.email, u.hashed_password, s.digest, \
     u.reset_token, u.reset_expires_at, s.handle, s.created_at, s.seen_at \
     FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.digest = +?1";

/// Ends a user's (?1) least recently used sessions beyond the newest ?3 others, never the one
/// just started (?2): a login in the same millisecond as an older one must keep its own.
const EVICT_SESSIONS: &str = "DELETE FROM sessions WHERE user_id = ?1 AND digest <> ?2 \
     AND digest NOT IN (SELECT digest FROM sessions WHERE user_id = ?1 AND digest <> ?2 \
     ORDER BY seen_at DESC, created_at DESC LIMIT ?3)";

/// The WAL index header's `iVersion`, the only one SQLite has written since 3.7.0.
const WAL_INDEX_VERSION: u32 = 3_007_000;
/// The size of one copy of the WAL index header; the file starts with two.
const WAL_INDEX_HEADER: usize = 48;

/// The checksum SQLite keeps in the WAL index header over its first 40 bytes (`walChecksumBytes`
/// in wal.c, always in the machine's own byte order there): pairs of words, each sum feeding
/// the other.
fn wal_index_checksum(bytes: &[u8]) -> (u32, u32) {
    let word = |chunk: &[u8]| u32::from_ne_bytes(chunk.try_into().expect("4 bytes"));
    bytes.chunks_exact(8).fold((0u32, 0u32), |(s1, s2), pair| {
        let s1 = s1.wrapping_add(word(&pair[..4])).wrapping_add(s2);
        let s2 = s2.wrapping_add(word(&pair[4..])).wrapping_add(s1);
        (s1, s2)
    })
}

/// The WAL index (`<db>-shm`) of the database at `path`, opened once per process and never
/// closed. Closing any descriptor of a file drops every POSIX lock the process holds on that
/// file (fcntl(2)), and SQLite holds its locks on this one (that a connection is open, which
/// snapshot a reader is on) through descriptors of its own: a descriptor of ours closed while
/// another connection of this process reads would let another process checkpoint and restart
/// the WAL under that reader (sqlite.org/howtocorrupt.html, 2.2). So every connection to one
/// file shares one descriptor, kept for the life of the process.
fn wal_index(path: &Path) -> Option<Arc<File>> {
    /// A file's device and inode.
    type FileId = (u64, u64);
    static OPENED: Mutex<Vec<(FileId, Arc<File>)>> = Mutex::new(Vec::new());
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    let mut opened = OPENED.lock().unwrap_or_else(PoisonError::into_inner);
    let here = std::fs::metadata(&shm).ok()?;
    let id = |m: &std::fs::Metadata| (m.dev(), m.ino());
    if let Some((_, file)) = opened.iter().find(|(known, _)| *known == id(&here)) {
        return Some(Arc::clone(file));
    }
    let file = Arc::new(File::open(&shm).ok()?);
    // Under the descriptor's own identity, in case the file was replaced since the look.
    let key = file.metadata().map_or(id(&here), |m| id(&m));
    opened.push((key, Arc::clone(&file)));
    Some(file)
}

/// The token in the WAL index's two header copies, if they are one intact header (see
/// [`Sqlite::change_token`]).
fn change_token(header: &[u8; 2 * WAL_INDEX_HEADER]) -> Option<ChangeToken> {
    let (first, second) = header.split_at(WAL_INDEX_HEADER);
    let word = |at: usize| u32::from_ne_bytes(first[at..at + 4].try_into().expect("4 bytes"));
    let initialised = first[12] == 1;
    let intact = wal_index_checksum(&first[..40]) == (word(40), word(44));
    (first == second && word(0) == WAL_INDEX_VERSION && initialised && intact)
        .then(|| ChangeToken(first.try_into().expect("one header")))
}

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

    /// `col = +?n`: with the unary plus no plan depends on a bound value (see SELECT_SESSION;
    /// the index on `col` serves as before).
    fn equals(col: &'static str, n: usize) -> String {
        format!("{col} = +?{n}")
    }
}

pub(super) struct Sqlite {
    conn: Connection,
    /// The WAL index (`<file>-shm`), read to tell whether anything was committed since.
    wal_index: Option<Arc<File>>,
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
        // A deleted user's sessions go with it (ON DELETE CASCADE).
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(64);
        let mut db = Sqlite {
            conn,
            wal_index: None,
        };
        db.migrate()?;
        // Once the database is in WAL mode its index exists while a connection is open.
        db.wal_index = wal_index(path);
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
        let mut stmt = self.conn.prepare_cached(&select_user::<Sql>(filters)?)?;
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

    pub(super) fn delete_user(&self, user_id: i64) -> Result<bool, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM users WHERE id = ?1")?;
        Ok(stmt.execute([user_id])? == 1)
    }

    pub(super) fn replace_password(&self, change: &PasswordChange<'_>) -> Result<bool, DbError> {
        // Immediate: a login's conditional session insert waits behind it, or it behind the
        // login, never in between.
        let tx = self.immediate()?;
        let args = params![change.user_id, change.new_hash, change.if_still.value()];
        let replaced = tx.prepare_cached(&change.sql::<Sql>())?.execute(args)? == 1;
        if replaced {
            end_sessions(&tx, change.user_id, change.end)?;
        }
        tx.commit()?;
        Ok(replaced)
    }

    pub(super) fn add_session(&self, new: &NewSession<'_>) -> Result<Option<usize>, DbError> {
        let tx = self.immediate()?;
        let started =
            tx.prepare_cached(
                "INSERT INTO sessions (digest, handle, user_id, created_at, seen_at) \
                 SELECT ?1, ?2, id, ?3, ?3 FROM users WHERE id = ?4 AND hashed_password = ?5",
            )?
            .execute(params![
                new.digest,
                new.handle,
                new.now,
                new.user_id,
                new.verified_hash
            ])? == 1;
        if !started {
            return Ok(None);
        }
        let evicted = tx.prepare_cached(EVICT_SESSIONS)?.execute(params![
            new.user_id,
            new.digest,
            new.max_sessions - 1
        ])?;
        tx.commit()?;
        Ok(Some(evicted))
    }

    pub(super) fn session(&self, digest: &str) -> Result<Option<(User, Session)>, DbError> {
        let mut stmt = self.conn.prepare_cached(SELECT_SESSION)?;
        Ok(stmt
            .query_row([digest], |r| {
                let user = read_user(r)?;
                let session = Session {
                    handle: r.get(6)?,
                    user_id: user.id,
                    created_at: r.get(7)?,
                    seen_at: r.get(8)?,
                };
                Ok((user, session))
            })
            .optional()?)
    }

    pub(super) fn touch_session(&self, digest: &str, now: i64) -> Result<(), DbError> {
        self.conn
            .prepare_cached("UPDATE sessions SET seen_at = ?2 WHERE digest = ?1")?
            .execute(params![digest, now])?;
        Ok(())
    }

    pub(super) fn sessions(&self, user_id: i64) -> Result<Vec<Session>, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT handle, created_at, seen_at FROM sessions WHERE user_id = ?1 \
             ORDER BY seen_at DESC, created_at DESC",
        )?;
        let rows = stmt.query_map([user_id], |r| {
            Ok(Session {
                handle: r.get(0)?,
                user_id,
                created_at: r.get(1)?,
                seen_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(super) fn end_session(&self, digest: &str) -> Result<bool, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM sessions WHERE digest = ?1")?;
        Ok(stmt.execute([digest])? == 1)
    }

    pub(super) fn end_session_by_handle(
        &self,
        user_id: i64,
        handle: &str,
    ) -> Result<bool, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM sessions WHERE user_id = ?1 AND handle = ?2")?;
        Ok(stmt.execute(params![user_id, handle])? == 1)
    }

    pub(super) fn end_sessions(&self, user_id: i64, keep: Option<&str>) -> Result<usize, DbError> {
        let end = keep.map_or(EndSessions::All, EndSessions::AllBut);
        end_sessions(&self.conn, user_id, end)
    }

    pub(super) fn prune_sessions(&self, seen_before: i64, limit: usize) -> Result<usize, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "DELETE FROM sessions WHERE digest IN \
             (SELECT digest FROM sessions WHERE seen_at < ?1 LIMIT ?2)",
        )?;
        Ok(stmt.execute(params![seen_before, limit as i64])?)
    }

    /// The WAL index's header as it stands (walformat.html, "The WAL-Index Header"): SQLite
    /// changes it with every commit, whichever connection or process makes it (its `iChange`
    /// counts transactions), and writes its two copies one after the other. Read as SQLite's
    /// own readers do (`walIndexTryHdr`): `None` unless both copies are equal, initialised, of
    /// the one known version and carry their checksum, so a header caught mid-write is never
    /// taken for a token.
    pub(super) fn change_token(&self) -> Option<ChangeToken> {
        let mut header = [0u8; 2 * WAL_INDEX_HEADER];
        self.wal_index
            .as_ref()?
            .read_exact_at(&mut header, 0)
            .ok()?;
        change_token(&header)
    }

    pub(super) fn ping(&self) -> Result<(), DbError> {
        self.conn
            .prepare_cached("SELECT count(*) FROM users WHERE id = 0")?
            .query_row([], |r| r.get::<_, i64>(0))?;
        Ok(())
    }

    pub(super) fn count(
        &self,
        scopes: &[&str],
        now: i64,
        window: i64,
    ) -> Result<Vec<(String, Count)>, DbError> {
        let sql = count_sql::<Sql>(scopes.len());
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut args: Vec<&dyn ToSql> = vec![&now, &window];
        args.extend(scopes.iter().map(|s| s as &dyn ToSql));
        let rows = stmt.query_map(args.as_slice(), |r| {
            Ok((
                r.get::<_, String>(0)?,
                Count {
                    n: r.get(1)?,
                    window_ends: r.get(2)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(super) fn count_back(&self, clear: &str, decrement: &str, now: i64) -> Result<(), DbError> {
        self.conn
            .prepare_cached(
                "UPDATE counters SET count = CASE WHEN scope = ?1 THEN 0 ELSE count - 1 END \
                 WHERE scope IN (?1, ?2) AND window_ends > ?3 AND count > 0",
            )?
            .execute(params![clear, decrement, now])?;
        Ok(())
    }

    pub(super) fn prune_counters(&self, now: i64) -> Result<usize, DbError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM counters WHERE window_ends <= ?1")?
            .execute([now])?)
    }

    /// A write transaction that takes the write lock at once.
    fn immediate(&self) -> Result<rusqlite::Transaction<'_>, DbError> {
        Ok(rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?)
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
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(Sqlite {
            conn,
            wal_index: None,
        })
    }

    pub(super) fn stored_schema_version(&self) -> Result<i64, DbError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    pub(super) fn list_users(&self, after: i64, limit: i64) -> Result<Vec<User>, DbError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "{SELECT_USERS} WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))?;
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
               (SELECT count(*) FROM sessions WHERE created_at > ?2 AND seen_at > ?3), \
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

/// Ends `user_id`'s sessions as `end` says; how many.
fn end_sessions(conn: &Connection, user_id: i64, end: EndSessions<'_>) -> Result<usize, DbError> {
    Ok(match end {
        EndSessions::None => 0,
        EndSessions::All => conn
            .prepare_cached("DELETE FROM sessions WHERE user_id = ?1")?
            .execute([user_id])?,
        EndSessions::AllBut(keep) => conn
            .prepare_cached("DELETE FROM sessions WHERE user_id = ?1 AND digest != ?2")?
            .execute(params![user_id, keep])?,
    })
}

fn read_user(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        email: row.get(1)?,
        hashed_password: row.get(2)?,
        session_id: row.get(3)?,
        reset_token: row.get(4)?,
        reset_expires_at: row.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    #[test]
    fn a_session_lookup_is_prepared_once() {
        let dir = std::env::temp_dir().join(format!("auth-sqlite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Sqlite::open(&dir.join("auth.db")).unwrap();
        let user = db.add_user("bob@example.com", "hash").unwrap();
        db.conn
            .execute(
                "INSERT INTO sessions VALUES ('digest', 'handle', ?1, 0, 0)",
                [user],
            )
            .unwrap();
        let by_session = [("session_id", Value::from("digest"))];
        for _ in 0..3 {
            assert!(db.session("digest").unwrap().is_some());
            assert!(db.find_user_by(&by_session).unwrap().is_some());
        }
        for sql in [SELECT_SESSION, &select_user::<Sql>(&by_session).unwrap()] {
            let stmt = db.conn.prepare_cached(sql).unwrap();
            assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0, "{sql}");
            assert_eq!(stmt.get_status(StatementStatus::Run), 3, "{sql}");
        }
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_change_token_moves_with_every_commit_of_any_connection_and_only_then() {
        let dir = std::env::temp_dir().join(format!("auth-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Sqlite::open(&dir.join("auth.db")).unwrap();
        let other = Sqlite::open(&dir.join("auth.db")).unwrap();
        let token = db
            .change_token()
            .expect("a WAL index with an intact header");
        assert_eq!(
            other.change_token(),
            Some(token),
            "one index for every connection"
        );

        assert!(db.session("digest").unwrap().is_none());
        assert_eq!(db.change_token(), Some(token), "a read commits nothing");

        let user = db.add_user("bob@example.com", "hash").unwrap();
        let after_own = db.change_token().unwrap();
        assert_ne!(after_own, token, "this connection's commit");

        other.delete_user(user).unwrap();
        let after_other = db.change_token().unwrap();
        assert_ne!(after_other, after_own, "another connection's commit");

        db.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        db.add_user("bob@example.com", "hash").unwrap();
        assert_ne!(
            db.change_token().unwrap(),
            after_other,
            "a commit after a checkpoint"
        );
        drop((db, other));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_header_caught_mid_write_or_damaged_is_no_token() {
        let dir = std::env::temp_dir().join(format!("auth-header-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Sqlite::open(&dir.join("auth.db")).unwrap();
        db.add_user("bob@example.com", "hash").unwrap();
        let mut header = [0u8; 2 * WAL_INDEX_HEADER];
        std::fs::File::open(dir.join("auth.db-shm"))
            .unwrap()
            .read_exact_at(&mut header, 0)
            .unwrap();
        assert!(change_token(&header).is_some(), "SQLite's own header");

        // The second copy already rewritten, the first not yet (SQLite writes them in turn).
        let mut torn = header;
        torn[WAL_INDEX_HEADER + 16] ^= 1;
        assert_eq!(change_token(&torn), None);
        // Both copies alike but a word changed under the checksum; and an unknown version.
        let mut damaged = header;
        damaged[16] ^= 1;
        damaged[WAL_INDEX_HEADER + 16] ^= 1;
        assert_eq!(change_token(&damaged), None);
        let mut other_version = header;
        other_version[0] ^= 1;
        other_version[WAL_INDEX_HEADER] ^= 1;
        assert_eq!(change_token(&other_version), None);
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A connection closed while another of this process reads must leave that reader's
    /// locks: another process (SQLite from Python here) then cannot restart the WAL under it.
    #[test]
    fn closing_a_connection_leaves_the_locks_of_the_others() {
        let dir = std::env::temp_dir().join(format!("auth-locks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth.db");
        let reader = Sqlite::open(&path).unwrap();
        let other = Sqlite::open(&path).unwrap();
        other.add_user("bob@example.com", "hash").unwrap();
        reader.conn.execute_batch("BEGIN").unwrap();
        let users: i64 = reader
            .conn
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(users, 1);
        drop(other);

        let checkpoint = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1], timeout=0)\n\
                 print(c.execute('PRAGMA wal_checkpoint(RESTART)').fetchone()[0])",
            )
            .arg(&path)
            .output()
            .expect("python3 runs (the test needs it for a second process)");
        let busy = String::from_utf8_lossy(&checkpoint.stdout);
        assert_eq!(
            busy.trim(),
            "1",
            "the reader's snapshot held: {checkpoint:?}"
        );
        reader.conn.execute_batch("COMMIT").unwrap();
        drop(reader);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
