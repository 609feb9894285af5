//! The data: seeded databases, the seeded users' requests, and the scratch folder they live in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::client::{self, Conn};
use crate::server::Server;
use crate::Fallible;

/// A SQLite database of `n` users, `user{i}@bench.example`, all with the one `hash`, and each
/// holding a live session (random digest and handle, begun now) that no request of the
/// benchmark uses: the sessions table a real service's users leave behind. `binary` creates the
/// schema; the rows then go in in one transaction (a commit per row would cost a disk flush per
/// row: minutes for a million). The other columns of `users` are the id, which SQLite assigns,
/// and a reset token, which starts empty.
pub fn seed(binary: &Path, path: &Path, n: usize, hash: &str) -> Fallible<()> {
    create_schema(binary, path)?;
    let mut conn = rusqlite::Connection::open(path)?;
    let tx = conn.transaction()?;
    {
        let mut insert =
            tx.prepare("INSERT INTO users (email, hashed_password) VALUES (?1, ?2)")?;
        for i in 0..n {
            insert.execute((email(i), hash))?;
        }
    }
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    tx.execute(
        "INSERT INTO sessions (digest, handle, user_id, created_at, seen_at) \
         SELECT lower(hex(randomblob(32))), lower(hex(randomblob(16))), id, ?1, ?1 FROM users",
        [now_ms],
    )?;
    tx.commit()?;
    Ok(())
}

/// Starts the service on `db` (a SQLite path or a PostgreSQL URL) and stops it. It creates or
/// migrates its schema before it listens, so the tables are those of the very binary measured,
/// and this crate needs no copy of the schema (nor the service's library, see main.rs).
pub fn create_schema(binary: &Path, db: &Path) -> Fallible<()> {
    drop(Server::service(binary, db, 4, 1)?);
    Ok(())
}

pub fn email(i: usize) -> String {
    format!("user{i}@bench.example")
}

/// Ten users spread over a database of `n`: the same work wherever they sit.
pub fn user_indices(n: usize) -> Vec<usize> {
    (0..10).map(|k| k * (n / 10)).collect()
}

fn login_form(i: usize) -> String {
    format!("email=user{i}%40bench.example&password=bench+password")
}

pub fn login_requests(users: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    users
        .map(|i| client::post_form("/sessions", &login_form(i)))
        .collect()
}

/// Logs each user in through `POST /sessions` and returns their session ids.
pub fn log_in_users(addr: SocketAddr, users: &[usize]) -> Fallible<Vec<String>> {
    let mut conn = Conn::connect(addr)?;
    users
        .iter()
        .map(|&i| {
            let response = conn.send(&client::post_form("/sessions", &login_form(i)))?;
            match (response.status, response.session_cookie) {
                (200, Some(cookie)) => Ok(cookie),
                (status, _) => Err(format!(
                    "logging in user {i}: {status} {}",
                    String::from_utf8_lossy(&response.body)
                )
                .into()),
            }
        })
        .collect()
}

pub fn profile_requests(sessions: &[String]) -> Vec<Vec<u8>> {
    sessions
        .iter()
        .map(|s| client::get("/profile", Some(s)))
        .collect()
}

/// A temporary folder, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Fallible<Scratch> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let dir = std::env::temp_dir().join(format!("auth-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
