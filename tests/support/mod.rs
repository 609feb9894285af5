//! What the tests share: a server on port 0 with its own temporary database (in this process,
//! or the real binary as a child), the app alone in this process for route tests that need no
//! socket, and (in `http`) what a client does and sees.

#![allow(dead_code)] // each test file uses its own part of this module

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auth_service::app::{Reply, Request};
use auth_service::auth::{Auth, Shared};
use auth_service::metrics::Metrics;
use auth_service::server::Handler;
use auth_service::{Config, Db, Server};

// What a client does and sees: Resp, Client, raw connections.
mod http;
pub use http::*;

// The store under test: SQLite files, or PostgreSQL databases with AUTH_TEST_POSTGRES.
mod store;
pub use store::*;

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "auth-test-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        store::drop_test_dbs_under(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The configuration tests start from: port 0, bcrypt cost 4, a database in `dir` (or, with
/// `AUTH_TEST_POSTGRES`, a PostgreSQL database standing for it: see [`test_db`]).
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        db: test_db(&dir.join("auth.db")),
        workers: 8,
        ..Config::default()
    };
    config.policy.bcrypt_cost = 4;
    // Tests register and reset from one address, many times: the abuse limits are off unless
    // a test turns them on (tests/accounts.rs does).
    config.policy.max_registrations = 0;
    config.policy.max_reset_requests = 0;
    config
}

/// The service in this process, on a free port, with its own database.
pub struct TestServer {
    pub client: Client,
    pub addr: SocketAddr,
    pub config: Config,
    server: Option<Server>,
    dir: Arc<TempDir>,
}

impl std::ops::Deref for TestServer {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::with(|_| {})
    }

    /// A server whose configuration `adjust` changes first.
    pub fn with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::with_config_and_handler(adjust, auth_service::app::handle)
    }

    /// A server that routes through `handler` instead of the app.
    pub fn with_handler(handler: Handler) -> TestServer {
        TestServer::with_config_and_handler(|_| {}, handler)
    }

    /// A server whose configuration `adjust` changes first and that routes through `handler`
    /// (for example one worker and a handler that panics).
    pub fn with_config_and_handler(
        adjust: impl FnOnce(&mut Config),
        handler: Handler,
    ) -> TestServer {
        let dir = Arc::new(TempDir::new());
        let mut config = test_config(dir.path());
        adjust(&mut config);
        TestServer::launch(config, dir, handler)
    }

    fn launch(config: Config, dir: Arc<TempDir>, handler: Handler) -> TestServer {
        let server = Server::start_with(config.clone(), handler).expect("the server starts");
        let addr = server.addr();
        TestServer {
            client: Client::new(addr),
            addr,
            config,
            server: Some(server),
            dir,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.config.db.clone()
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    /// Stops this server and starts another on the same database file.
    pub fn restart(mut self) -> TestServer {
        let server = self.server.take().unwrap();
        server.shutdown();
        server.wait().unwrap();
        let mut config = self.config.clone();
        config.bind = "127.0.0.1:0".parse().unwrap();
        TestServer::launch(config, Arc::clone(&self.dir), auth_service::app::handle)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            let _ = server.wait();
        }
    }
}

/// The app in this process with no server around it: `app::handle` on an `Auth` over a fresh
/// store, as `fuzz/fuzz_targets/request.rs` drives it, for route tests that need no socket.
/// What the server does around it (reading and bounding the body, taking the query off the
/// path, writing the reply) is not here: tests of that go over HTTP.
pub struct App {
    pub auth: Auth,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    // Dropped after `auth`, which holds the store open.
    _dir: TempDir,
}

impl App {
    pub fn new() -> App {
        App::with(|_| {})
    }

    /// The app with the configuration [`test_config`] gives, which `adjust` changes first.
    pub fn with(adjust: impl FnOnce(&mut Config)) -> App {
        let dir = TempDir::new();
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let metrics = Arc::new(Metrics::default());
        let shared = Shared::new(config.policy.clone(), Arc::clone(&metrics));
        let db = Db::open(&config.db).expect("the store opens");
        App {
            auth: Auth::new(db, Arc::new(shared)),
            config,
            metrics,
            _dir: dir,
        }
    }

    /// Routes one request as the server hands it over: `path` split from its query, the
    /// `Cookie` header if any, the body read in full, from 127.0.0.1.
    pub fn handle(&self, method: &str, target: &str, cookie: Option<&str>, body: &[u8]) -> Reply {
        let ctx = auth_service::app::Context {
            auth: &self.auth,
            config: &self.config,
            metrics: &self.metrics,
        };
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let rq = Request {
            method,
            path,
            query,
            cookie,
            forwarded_for: None,
            peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
            body,
        };
        auth_service::app::handle(&ctx, &rq)
    }
}

impl Api for App {
    /// [`App::handle`], with the `Cookie` among `headers` (the others go nowhere, as in the
    /// server), and the reply as a client would read it.
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let cookie = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("cookie"))
            .map(|(_, value)| *value);
        Resp::from(self.handle(method, path, cookie, body))
    }
}

/// The binary [`ChildServer`] runs: this package's `auth-service`, or the path in the
/// environment variable `AUTH_TEST_BINARY` when it is set, so that the black-box tests can
/// judge another build, for example an older binary that must fail `tests/hostile.rs`:
/// `AUTH_TEST_BINARY=/path/to/old/auth-service cargo test --test hostile`. Settings that an
/// old binary may not know go to the child as `AUTH_*` variables, which it ignores, rather
/// than as flags, which it would refuse.
pub fn server_binary() -> PathBuf {
    std::env::var_os("AUTH_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_auth-service")))
}

/// The real `auth-service` binary (see [`server_binary`]) as a child process, its stderr
/// collected.
pub struct ChildServer {
    pub child: Child,
    pub addr: SocketAddr,
    pub client: Client,
    pub output: Arc<Mutex<String>>,
    pub dir: TempDir,
}

impl std::ops::Deref for ChildServer {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl ChildServer {
    /// Starts the binary with `--bind 127.0.0.1:0 --db <temp> --bcrypt-cost 4` and `args`,
    /// and waits for its "listening" line.
    pub fn start(args: &[&str]) -> ChildServer {
        let dir = TempDir::new();
        let db = dir.path().join("auth.db");
        ChildServer::start_on(dir, &db, args)
    }

    pub fn start_on(dir: TempDir, db: &Path, args: &[&str]) -> ChildServer {
        ChildServer::start_with_env(dir, db, args, &[])
    }

    /// [`ChildServer::start_on`] with extra environment variables (such as `AUTH_*`) for the
    /// child.
    pub fn start_with_env(
        dir: TempDir,
        db: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ChildServer {
        ChildServer::start_wrapped(dir, db, &[], &server_binary(), args, env)
    }

    /// [`ChildServer::start_with_env`] running `program` (the server binary, or a copy of it)
    /// through the command `wrapper`, which must exec it in place so that the child's pid is
    /// the server's: `["prlimit", "--nofile=64:64", "--"]` starts `prlimit --nofile=64:64 --
    /// <program> --bind ...`. An empty `wrapper` runs `program` itself.
    pub fn start_wrapped(
        dir: TempDir,
        db: &Path,
        wrapper: &[&str],
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ChildServer {
        let mut command = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(program);
                command
            }
            None => Command::new(program),
        };
        let mut child = spawn(
            command
                .args(["--bind", "127.0.0.1:0", "--bcrypt-cost", "4", "--db"])
                .arg(test_db(db))
                .args(args)
                // The abuse limits off, as in test_config (through variables, which an older
                // binary ignores): a test's own variables and flags win.
                .envs([
                    ("AUTH_MAX_REGISTRATIONS", "0"),
                    ("AUTH_MAX_RESET_REQUESTS", "0"),
                ])
                .envs(env.iter().copied()),
        );
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        collect(child.stderr.take().unwrap(), &output, move |line| {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(addr.to_owned());
            }
        });
        collect(child.stdout.take().unwrap(), &output, |_| {});
        let addr: SocketAddr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the server prints its listening line")
            .parse()
            .unwrap();
        ChildServer {
            child,
            addr,
            client: Client::new(addr),
            output,
            dir,
        }
    }

    /// Sends `signal` (a name kill(1) knows, such as TERM) to the child.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the child to exit; its exit code (`None` if it has not exited,
    /// or died of a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        poll(limit, || self.child.try_wait().unwrap())?.code()
    }

    /// Stops the child with SIGTERM, waits for it to exit 0, then for its output to be read
    /// to the end; everything it printed.
    pub fn stop_and_collect(&mut self) -> String {
        if self.child.try_wait().unwrap().is_none() {
            self.signal("TERM");
            assert_eq!(
                self.wait_exit(Duration::from_secs(20)),
                Some(0),
                "the server exits 0 on SIGTERM"
            );
        }
        self.drained_output(Duration::from_secs(10))
    }

    /// Everything the child printed, once both pipes are read to the end (each reader thread
    /// holds a clone of `output` until it reaches end of file, so the count falling to one
    /// means both are drained) or `limit` has passed.
    pub fn drained_output(&self, limit: Duration) -> String {
        poll(limit, || {
            (Arc::strong_count(&self.output) == 1).then_some(())
        });
        self.output()
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` with nothing on its standard input and its output piped to the test.
pub fn spawn(command: &mut Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// Appends each line of `pipe` to `output` on a thread of its own, then hands it to `seen`
/// (so that `output` holds a line by the time anyone hears of it). The thread holds a clone
/// of `output` until the pipe ends: see [`ChildServer::drained_output`].
fn collect(
    pipe: impl Read + Send + 'static,
    output: &Arc<Mutex<String>>,
    seen: impl Fn(&str) + Send + 'static,
) {
    let output = Arc::clone(output);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            {
                let mut out = output.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
            seen(&line);
        }
    });
}

/// Calls `check` until it gives a value or `limit` passes, every 10 ms: the value, or `None`
/// when the time ran out (for tests that report that themselves).
pub fn poll<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if started.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`poll`], failing the test, saying it waited for `what`, when `limit` passes first.
#[track_caller]
pub fn eventually<T>(what: &str, limit: Duration, check: impl FnMut() -> Option<T>) -> T {
    let value = poll(limit, check);
    assert!(value.is_some(), "waited {limit:?} for {what}");
    value.unwrap()
}

/// An executable shell script `name` in `dir` (for `--reset-command`); its path.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Whether `s` is a UUID version 4 in its hyphenated text form (the reference's
/// `str(uuid.uuid4())`).
pub fn is_uuid_v4(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    lengths == [8, 4, 4, 4, 12]
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}
