//! Which store the tests run on. By default every test database is a SQLite file in the test's
//! temporary directory. With `AUTH_TEST_POSTGRES` set to a PostgreSQL server URL (and the
//! tests built with `--features postgres`), each such file stands for a fresh database on that
//! server instead, created on first use and dropped with the directory: the same tests, on
//! the other store.
//!
//! ```text
//! AUTH_TEST_POSTGRES=postgres://postgres@127.0.0.1:55432/postgres cargo test --features postgres
//! ```
//!
//! Tests name databases by path as before and pass them through [`test_db`]; the few that
//! look inside a store use [`stored_text`], [`schema_version`] and [`set_schema_version`],
//! which do the same on either.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The variable that switches the tests to PostgreSQL: a server URL whose user may create
/// databases.
pub const POSTGRES_VAR: &str = "AUTH_TEST_POSTGRES";

/// The PostgreSQL server the tests use, when they use one.
pub fn postgres_server() -> Option<String> {
    std::env::var(POSTGRES_VAR).ok().filter(|s| !s.is_empty())
}

/// Whether the tests run on PostgreSQL.
pub fn on_postgres() -> bool {
    postgres_server().is_some()
}

/// Each SQLite path that stands for a PostgreSQL database, and that database's name.
static DATABASES: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

/// The `--db` for the test database at `path`: `path` itself on SQLite; on PostgreSQL the URL
/// of a database of its own (the same one each time for the same path, as a file would be).
pub fn test_db(path: &Path) -> PathBuf {
    let Some(server) = postgres_server() else {
        return path.to_owned();
    };
    if auth_service::db::is_postgres_url(path) {
        return path.to_owned();
    }
    let mut databases = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, name)) = databases.iter().find(|(p, _)| p == path) {
        return PathBuf::from(with_database(&server, name));
    }
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!(
        "auth_test_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    pg::execute(&server, &format!("CREATE DATABASE {name}"));
    databases.push((path.to_owned(), name.clone()));
    PathBuf::from(with_database(&server, &name))
}

/// Drops the PostgreSQL databases that stand for paths under `dir` (its `TempDir` is gone).
pub fn drop_test_dbs_under(dir: &Path) {
    let Some(server) = postgres_server() else {
        return;
    };
    let gone: Vec<String> = {
        let mut databases = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
        let (gone, kept) = databases.drain(..).partition(|(p, _)| p.starts_with(dir));
        *databases = kept;
        gone.into_iter().map(|(_, name)| name).collect()
    };
    for name in gone {
        // FORCE: a child server that was killed may not have closed its connections yet.
        pg::execute(
            &server,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
    }
}

/// `server` (a URL) pointing at database `name` instead of its own.
fn with_database(server: &str, name: &str) -> String {
    let (scheme, rest) = server
        .split_once("://")
        .unwrap_or_else(|| panic!("{POSTGRES_VAR} must be a postgres:// URL"));
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or_default();
    let mut url = format!("{scheme}://{authority}/{name}");
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// Everything the store at `db` (a path given to [`test_db`], or what it returned) holds
/// about users and logins, as text, for tests that look for secrets at rest: on SQLite the
/// bytes of the file and its journals, on PostgreSQL every row of every table.
pub fn stored_text(db: &Path) -> String {
    let db = test_db(db);
    if auth_service::db::is_postgres_url(&db) {
        return pg::query_text(
            db.to_str().unwrap(),
            "SELECT u::text FROM users u UNION ALL SELECT s::text FROM sessions s \
             UNION ALL SELECT c::text FROM counters c",
        )
        .join("\n");
    }
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-journal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(b) = std::fs::read(&name) {
            bytes.extend_from_slice(&b);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The schema version the store at `db` records (`PRAGMA user_version`, or PostgreSQL's
/// `schema_version` row).
pub fn schema_version(db: &Path) -> i64 {
    let db = test_db(db);
    if auth_service::db::is_postgres_url(&db) {
        let rows = pg::query_text(db.to_str().unwrap(), "SELECT version FROM schema_version");
        return rows.first().and_then(|v| v.parse().ok()).unwrap_or(0);
    }
    rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

/// Records schema version `version` in the store at `db`, as a newer (or older) binary would.
pub fn set_schema_version(db: &Path, version: i64) {
    let db = test_db(db);
    if auth_service::db::is_postgres_url(&db) {
        pg::execute(
            db.to_str().unwrap(),
            &format!("UPDATE schema_version SET version = {version}"),
        );
        return;
    }
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", version)
        .unwrap();
}

/// Runs `sql` (statements separated by `;`) on the store behind `db`, from outside the
/// server.
pub fn execute(db: &Path, sql: &str) {
    let db = test_db(db);
    if auth_service::db::is_postgres_url(&db) {
        pg::execute(db.to_str().unwrap(), sql);
    } else {
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
    }
}

/// Runs `sql` on the PostgreSQL database behind `db` (as its owner), for tests that only make
/// sense there: ending a server's connections, reading what the instances share.
pub fn postgres_execute(db: &Path, sql: &str) {
    pg::execute(test_db(db).to_str().unwrap(), sql);
}

/// Each row `sql` returns on the PostgreSQL database behind `db`, its first column as text.
pub fn postgres_query(db: &Path, sql: &str) -> Vec<String> {
    pg::query_text(test_db(db).to_str().unwrap(), sql)
}

#[cfg(feature = "postgres")]
mod pg {
    fn connect(url: &str) -> postgres::Client {
        postgres::Client::connect(url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url}: {e}"))
    }

    pub fn execute(url: &str, sql: &str) {
        connect(url)
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Each row's first column, as text (`NULL` as an empty string).
    pub fn query_text(url: &str, sql: &str) -> Vec<String> {
        connect(url)
            .simple_query(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(row) => {
                    Some(row.get(0).unwrap_or_default().to_owned())
                }
                _ => None,
            })
            .collect()
    }
}

#[cfg(not(feature = "postgres"))]
mod pg {
    const WHY: &str = "AUTH_TEST_POSTGRES is set, but the tests were built without the \
                       postgres feature: run cargo test --features postgres";

    pub fn execute(_url: &str, _sql: &str) {
        panic!("{WHY}");
    }

    pub fn query_text(_url: &str, _sql: &str) -> Vec<String> {
        panic!("{WHY}");
    }
}
