//! The shared store: a PostgreSQL database that any number of instances use at once (the cargo
//! feature `postgres`).
//!
//! Each worker owns one connection. Nothing about users, sessions, tokens or the throttle is
//! kept in the process, so instances behind a load balancer agree as if they were one: the
//! unique email is a unique index, a token is spent by a conditional `UPDATE`, and the
//! throttle's counts are one upsert each.
//!
//! A connection that the database dropped (a restart, `pg_terminate_backend`, a failover) is
//! reopened on its next use, and the statement that found it dead is run once more on the new
//! one. Each statement is one round trip in its own transaction, and one sent on a connection
//! that was already gone never ran, so the retry is what makes a restart invisible. Only a
//! connection lost between the server's commit and its answer can make the retry repeat a
//! write: then a failed login may count twice, or a registration that did succeed answers
//! "already registered"; nothing is ever half-applied.
//!
//! Emails compare in any ASCII case, exactly as SQLite's `NOCASE` does: the column is
//! `COLLATE "C"`, under which PostgreSQL's `lower()` folds only ASCII, and the unique index is
//! on `lower(email)`. `É` and `é` are therefore two addresses in both stores.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row, Statement};

use super::{column, count_sql, select_user, DbError, Dialect, Value, SELECT_USERS};
use super::{Count, Counts, EndSessions, NewSession, PasswordChange, Session, User};

/// Schema steps, oldest first; the one row of `schema_version` is the number applied. The
/// same rules as SQLite's list (append only), and always as long as it.
const MIGRATIONS: &[&str] = &[include_str!("../../schema.postgres.sql"), SESSIONS];

/// Version 2, as SQLite's: sessions of their own, several per user, in milliseconds, the ones
/// open before the upgrade carried over; the login failures' table becomes the counters of
/// the throttle and the abuse limits.
const SESSIONS: &str = "
CREATE TABLE sessions (
    digest     TEXT   PRIMARY KEY,
    handle     TEXT   NOT NULL UNIQUE,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id, seen_at);
CREATE INDEX sessions_seen ON sessions (seen_at);
INSERT INTO sessions (digest, handle, user_id, created_at, seen_at)
    SELECT session_id, md5(random()::text || clock_timestamp()::text || id::text), id,
           coalesce(session_created_at, 0) * 1000, coalesce(session_seen_at, 0) * 1000
    FROM users WHERE session_id IS NOT NULL;
ALTER TABLE users DROP COLUMN session_id, DROP COLUMN session_created_at,
    DROP COLUMN session_seen_at;
ALTER TABLE login_failures RENAME TO counters;
ALTER TABLE counters RENAME COLUMN failures TO count;
";

const _: () = assert!(
    MIGRATIONS.len() == super::sqlite::MIGRATIONS.len(),
    "each schema step exists for both stores"
);

/// The advisory lock key that serialises migrations across instances starting at once
/// ("auth" in ASCII).
const MIGRATION_LOCK: i64 = 0x6175_7468;

/// How long opening a connection may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection; past this the cache starts over. `find_user_by`
/// builds one statement per combination of filter columns, so in practice a dozen.
const STATEMENT_CACHE: usize = 64;

/// Columns that hold integers; the rest hold text.
const INTEGER_COLUMNS: &[&str] = &["id", "reset_expires_at"];

/// PostgreSQL numbers parameters `$1`, `$2`...; the email compares folded, as the unique
/// index does.
struct Pg;

impl Dialect for Pg {
    fn param(n: usize) -> String {
        format!("${n}")
    }

    fn equals(col: &'static str, n: usize) -> String {
        if col.ends_with("email") {
            format!("lower({col}) = lower(${n} COLLATE \"C\")")
        } else {
            format!("{col} = ${n}")
        }
    }

    fn integer(expr: &str) -> String {
        format!("{expr}::bigint")
    }

    fn text(expr: &str) -> String {
        format!("{expr}::text")
    }
}

pub(super) struct Postgres {
    config: postgres::Config,
    conn: RefCell<Conn>,
}

/// One live connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    fn connect(config: &postgres::Config) -> Result<Conn, DbError> {
        Ok(Conn {
            client: config.connect(NoTls).map_err(storage)?,
            statements: HashMap::new(),
        })
    }

    /// The prepared statement for `sql`, preparing it on first use.
    fn prepare(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(stmt) = self.statements.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = self.client.prepare(sql)?;
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

impl Postgres {
    /// Connects to the database `url` names and migrates its schema forward.
    pub(super) fn open(url: &str) -> Result<Postgres, DbError> {
        let config = connect_config(url)?;
        let mut conn = Conn::connect(&config)?;
        migrate(&mut conn.client)?;
        Ok(Postgres {
            config,
            conn: RefCell::new(conn),
        })
    }

    /// Runs `f` on this worker's connection; when the connection turns out to be lost, opens
    /// a new one and runs `f` once more.
    fn run<T>(
        &self,
        mut f: impl FnMut(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, DbError> {
        let mut conn = self.conn.borrow_mut();
        if conn.client.is_closed() {
            *conn = Conn::connect(&self.config)?;
        }
        match f(&mut conn) {
            Err(e) if connection_lost(&e) => {
                *conn = Conn::connect(&self.config)?;
                f(&mut conn).map_err(storage)
            }
            result => result.map_err(storage),
        }
    }

    /// One statement, prepared once per connection, with its rows.
    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, DbError> {
        self.run(|c| {
            let stmt = c.prepare(sql)?;
            c.client.query(&stmt, params)
        })
    }

    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError> {
        self.run(|c| {
            let stmt = c.prepare(sql)?;
            c.client.execute(&stmt, params)
        })
    }

    pub(super) fn add_user(&self, email: &str, hashed_password: &str) -> Result<i64, DbError> {
        let rows = self.query(
            "INSERT INTO users (email, hashed_password) VALUES ($1, $2) RETURNING id",
            &[&email, &hashed_password],
        )?;
        first(rows).map(|row| row.get(0))
    }

    pub(super) fn find_user_by(&self, filters: &[(&str, Value)]) -> Result<Option<User>, DbError> {
        // A value that cannot be of its column's type matches no row, as in SQLite.
        let Some(params) = filters
            .iter()
            .filter(|(_, v)| *v != Value::Null)
            .map(|(col, v)| Param::of(col, v))
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(None);
        };
        let sql = select_user::<Pg>(filters)?;
        let rows = self.query(&sql, &Param::refs(&params))?;
        Ok(rows.first().map(read_user))
    }

    pub(super) fn update_user_if(
        &self,
        user_id: i64,
        expected: &[(&str, Value)],
        changes: &[(&str, Value)],
    ) -> Result<bool, DbError> {
        let mut params = Vec::with_capacity(changes.len() + 1 + expected.len());
        for (col, value) in changes {
            let param = Param::of(col, value)
                .ok_or_else(|| DbError::InvalidRequest(format!("column {col:?} holds integers")))?;
            params.push(param);
        }
        params.push(Param::Int(Some(user_id)));
        for (col, value) in expected.iter().filter(|(_, v)| *v != Value::Null) {
            match Param::of(col, value) {
                Some(param) => params.push(param),
                None => return Ok(false),
            }
        }
        let sql = super::update_sql::<Pg>(expected, changes)?;
        Ok(self.execute(&sql, &Param::refs(&params))? == 1)
    }

    pub(super) fn delete_user(&self, user_id: i64) -> Result<bool, DbError> {
        // The user's sessions go with it (ON DELETE CASCADE).
        Ok(self.execute("DELETE FROM users WHERE id = $1", &[&user_id])? == 1)
    }

    pub(super) fn replace_password(&self, change: &PasswordChange<'_>) -> Result<bool, DbError> {
        let sql = change.sql::<Pg>();
        let (user_id, value) = (change.user_id, change.if_still.value());
        self.run(|c| {
            let update = c.prepare(&sql)?;
            let end = EndingSessions::prepare(c, change.end)?;
            // The update takes the user's row lock: a login's conditional session insert
            // (which reads that row FOR SHARE) waits for this transaction, and the sessions
            // are ended by a statement of its own, which sees any session committed before.
            let mut tx = c.client.transaction()?;
            let replaced = tx.execute(&update, &[&user_id, &change.new_hash, &value])? == 1;
            if replaced {
                end.run(&mut tx, user_id)?;
            }
            tx.commit()?;
            Ok(replaced)
        })
    }

    pub(super) fn add_session(&self, new: &NewSession<'_>) -> Result<Option<usize>, DbError> {
        self.run(|c| {
            let insert = c.prepare(
                "INSERT INTO sessions (digest, handle, user_id, created_at, seen_at) \
                 SELECT $1, $2, id, $3, $3 FROM users \
                 WHERE id = $4 AND hashed_password = $5 FOR SHARE",
            )?;
            // Never the session just started ($2): see the SQLite store's EVICT_SESSIONS.
            let evict = c.prepare(
                "DELETE FROM sessions WHERE user_id = $1 AND digest IN \
                 (SELECT digest FROM sessions WHERE user_id = $1 AND digest <> $2 \
                  ORDER BY seen_at DESC, created_at DESC OFFSET $3)",
            )?;
            let mut tx = c.client.transaction()?;
            let args: [&(dyn ToSql + Sync); 5] = [
                &new.digest,
                &new.handle,
                &new.now,
                &new.user_id,
                &new.verified_hash,
            ];
            if tx.execute(&insert, &args)? == 0 {
                return Ok(None);
            }
            let others = i64::from(new.max_sessions - 1);
            let evicted = tx.execute(&evict, &[&new.user_id, &new.digest, &others])?;
            tx.commit()?;
            Ok(Some(evicted as usize))
        })
    }

    pub(super) fn session(&self, digest: &str) -> Result<Option<(User, Session)>, DbError> {
        let rows = self.query(
            "SELECT u.id, u.email, u.hashed_password, s.digest, u.reset_token, \
             u.reset_expires_at, s.handle, s.created_at, s.seen_at \
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.digest = $1",
            &[&digest],
        )?;
        Ok(rows.first().map(|r| {
            let user = read_user(r);
            let session = Session {
                handle: r.get(6),
                user_id: user.id,
                created_at: r.get(7),
                seen_at: r.get(8),
            };
            (user, session)
        }))
    }

    pub(super) fn touch_session(&self, digest: &str, now: i64) -> Result<(), DbError> {
        self.execute(
            "UPDATE sessions SET seen_at = $2 WHERE digest = $1",
            &[&digest, &now],
        )?;
        Ok(())
    }

    pub(super) fn sessions(&self, user_id: i64) -> Result<Vec<Session>, DbError> {
        let rows = self.query(
            "SELECT handle, created_at, seen_at FROM sessions WHERE user_id = $1 \
             ORDER BY seen_at DESC, created_at DESC",
            &[&user_id],
        )?;
        Ok(rows
            .iter()
            .map(|r| Session {
                handle: r.get(0),
                user_id,
                created_at: r.get(1),
                seen_at: r.get(2),
            })
            .collect())
    }

    pub(super) fn end_session(&self, digest: &str) -> Result<bool, DbError> {
        Ok(self.execute("DELETE FROM sessions WHERE digest = $1", &[&digest])? == 1)
    }

    pub(super) fn end_session_by_handle(
        &self,
        user_id: i64,
        handle: &str,
    ) -> Result<bool, DbError> {
        let sql = "DELETE FROM sessions WHERE user_id = $1 AND handle = $2";
        Ok(self.execute(sql, &[&user_id, &handle])? == 1)
    }

    pub(super) fn end_sessions(&self, user_id: i64, keep: Option<&str>) -> Result<usize, DbError> {
        let end = keep.map_or(EndSessions::All, EndSessions::AllBut);
        self.run(|c| {
            let end = EndingSessions::prepare(c, end)?;
            end.run(&mut c.client, user_id)
        })
    }

    pub(super) fn prune_sessions(&self, seen_before: i64, limit: usize) -> Result<usize, DbError> {
        let n = self.execute(
            "DELETE FROM sessions WHERE digest IN \
             (SELECT digest FROM sessions WHERE seen_at < $1 LIMIT $2)",
            &[&seen_before, &(limit as i64)],
        )?;
        Ok(n as usize)
    }

    pub(super) fn ping(&self) -> Result<(), DbError> {
        self.query("SELECT count(*) FROM users WHERE id = 0", &[])?;
        Ok(())
    }

    pub(super) fn count(
        &self,
        scopes: &[&str],
        now: i64,
        window: i64,
    ) -> Result<Vec<(String, Count)>, DbError> {
        let sql = count_sql::<Pg>(scopes.len());
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&now, &window];
        args.extend(scopes.iter().map(|s| s as &(dyn ToSql + Sync)));
        let rows = self.query(&sql, &args)?;
        Ok(rows
            .iter()
            .map(|r| {
                let count = Count {
                    n: to_u32(r.get(1)),
                    window_ends: r.get(2),
                };
                (r.get(0), count)
            })
            .collect())
    }

    pub(super) fn count_back(&self, clear: &str, decrement: &str, now: i64) -> Result<(), DbError> {
        self.execute(
            "UPDATE counters SET count = CASE WHEN scope = $1 THEN 0 ELSE count - 1 END \
             WHERE scope IN ($1, $2) AND window_ends > $3 AND count > 0",
            &[&clear, &decrement, &now],
        )?;
        Ok(())
    }

    pub(super) fn prune_counters(&self, now: i64) -> Result<usize, DbError> {
        let n = self.execute("DELETE FROM counters WHERE window_ends <= $1", &[&now])?;
        Ok(n as usize)
    }

    /// Connects to the database `url` names, applying no schema step.
    pub(super) fn open_existing(url: &str) -> Result<Postgres, DbError> {
        let config = connect_config(url)?;
        let conn = Conn::connect(&config)?;
        Ok(Postgres {
            config,
            conn: RefCell::new(conn),
        })
    }

    pub(super) fn stored_schema_version(&self) -> Result<i64, DbError> {
        let rows = self.query("SELECT to_regclass('schema_version') IS NOT NULL", &[])?;
        if !first(rows)?.get::<_, bool>(0) {
            return Ok(0);
        }
        let rows = self.query("SELECT max(version) FROM schema_version", &[])?;
        Ok(first(rows)?.get::<_, Option<i64>>(0).unwrap_or(0))
    }

    pub(super) fn list_users(&self, after: i64, limit: i64) -> Result<Vec<User>, DbError> {
        let rows = self.query(
            &format!("{SELECT_USERS} WHERE id > $1 ORDER BY id LIMIT $2"),
            &[&after, &limit],
        )?;
        Ok(rows.iter().map(read_user).collect())
    }

    pub(super) fn counts(
        &self,
        now: i64,
        created_after: i64,
        seen_after: i64,
    ) -> Result<Counts, DbError> {
        let rows = self.query(
            "SELECT count(*), \
               (SELECT count(*) FROM sessions WHERE created_at > $2 AND seen_at > $3), \
               count(*) FILTER (WHERE reset_token IS NOT NULL AND reset_expires_at > $1) \
             FROM users",
            &[&now, &created_after, &seen_after],
        )?;
        let row = first(rows)?;
        Ok(Counts {
            users: row.get(0),
            live_sessions: row.get(1),
            reset_tokens: row.get(2),
        })
    }
}

/// The statement that ends a user's sessions as an [`EndSessions`] says, prepared.
struct EndingSessions<'a> {
    statement: Option<Statement>,
    keep: Option<&'a str>,
}

impl<'a> EndingSessions<'a> {
    fn prepare(c: &mut Conn, end: EndSessions<'a>) -> Result<Self, postgres::Error> {
        let (sql, keep) = match end {
            EndSessions::None => {
                return Ok(EndingSessions {
                    statement: None,
                    keep: None,
                })
            }
            EndSessions::All => ("DELETE FROM sessions WHERE user_id = $1", None),
            EndSessions::AllBut(keep) => (
                "DELETE FROM sessions WHERE user_id = $1 AND digest <> $2",
                Some(keep),
            ),
        };
        Ok(EndingSessions {
            statement: Some(c.prepare(sql)?),
            keep,
        })
    }

    /// Runs it for `user_id`; how many sessions ended.
    fn run(&self, client: &mut impl GenericClient, user_id: i64) -> Result<usize, postgres::Error> {
        let Some(statement) = &self.statement else {
            return Ok(0);
        };
        let n = match self.keep {
            Some(keep) => client.execute(statement, &[&user_id, &keep])?,
            None => client.execute(statement, &[&user_id])?,
        };
        Ok(n as usize)
    }
}

/// The connection settings `url` gives, with a connect timeout and the application name
/// filled in when it does not say.
fn connect_config(url: &str) -> Result<postgres::Config, DbError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| DbError::Storage(format!("the postgres URL cannot be used: {e}").into()))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("auth-service");
    }
    Ok(config)
}

/// Applies the schema steps this database has not seen, in one transaction that first takes
/// an advisory lock: instances starting together queue on it, and each step runs once. A
/// current database is only read, so a role without the right to create tables can run on it.
fn migrate(client: &mut Client) -> Result<(), DbError> {
    let supported = MIGRATIONS.len() as i64;
    let mut tx = client.transaction().map_err(storage)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(storage)?;
    let versioned: bool = tx
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .map_err(storage)?
        .get(0);
    let found: i64 = if versioned {
        tx.query_one("SELECT max(version) FROM schema_version", &[])
            .map_err(storage)?
            .get::<_, Option<i64>>(0)
            .unwrap_or(0)
    } else {
        0
    };
    if found > supported {
        return Err(DbError::SchemaTooNew { found, supported });
    }
    if found == supported {
        return Ok(());
    }
    if !versioned {
        tx.batch_execute("CREATE TABLE schema_version (version BIGINT NOT NULL)")
            .map_err(storage)?;
    }
    for step in &MIGRATIONS[found as usize..] {
        tx.batch_execute(step).map_err(storage)?;
    }
    tx.execute("DELETE FROM schema_version", &[])
        .map_err(storage)?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES ($1)",
        &[&supported],
    )
    .map_err(storage)?;
    tx.commit().map_err(storage)
}

/// A value bound as its column's type, so that NULLs and numbers type-check on the server.
enum Param {
    Int(Option<i64>),
    Text(Option<String>),
}

impl Param {
    /// `value` as `col`'s type; `None` when it cannot be one (text that is not a number, for
    /// an integer column).
    fn of(col: &str, value: &Value) -> Option<Param> {
        let integer = INTEGER_COLUMNS.contains(&column(col).ok()?);
        Some(match (integer, value) {
            (true, Value::Null) => Param::Int(None),
            (true, Value::Integer(n)) => Param::Int(Some(*n)),
            (true, Value::Text(s)) => Param::Int(Some(s.trim().parse().ok()?)),
            (false, Value::Null) => Param::Text(None),
            (false, Value::Integer(n)) => Param::Text(Some(n.to_string())),
            (false, Value::Text(s)) => Param::Text(Some(s.clone())),
        })
    }

    fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
        params
            .iter()
            .map(|p| match p {
                Param::Int(v) => v as &(dyn ToSql + Sync),
                Param::Text(v) => v as &(dyn ToSql + Sync),
            })
            .collect()
    }
}

/// Whether `e` means the connection is gone (as opposed to the statement failing): the
/// server shut down or ended this session, or the socket broke.
fn connection_lost(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        return code.code().starts_with("08") // connection_exception
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW;
    }
    // No SQLSTATE: not the server's answer, so the socket or the protocol failed.
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

fn storage(e: postgres::Error) -> DbError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        DbError::AlreadyExists
    } else {
        DbError::Storage(Box::new(e))
    }
}

fn first(rows: Vec<Row>) -> Result<Row, DbError> {
    rows.into_iter()
        .next()
        .ok_or_else(|| DbError::Storage("the statement returned no row".into()))
}

fn to_u32(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

fn read_user(row: &Row) -> User {
    User {
        id: row.get(0),
        email: row.get(1),
        hashed_password: row.get(2),
        session_id: row.get(3),
        reset_token: row.get(4),
        reset_expires_at: row.get(5),
    }
}
