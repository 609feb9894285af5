//! What the black-box tests share: a server on port 0 with its own temporary database (in this
//! process, or the real binary as a child), and small HTTP helpers that return what a client
//! sees.

#![allow(dead_code)] // each test file uses its own part of this module

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auth_service::server::Handler;
use auth_service::{Config, Server};
use serde_json::Value;
use ureq::Agent;

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

/// What a client saw.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub text: String,
    /// The body as JSON; `Value::Null` when it is not JSON.
    pub json: Value,
    pub headers: Vec<(String, String)>,
}

impl Resp {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `session_id` value the response sets, if any (empty when it clears it).
    pub fn session_cookie(&self) -> Option<String> {
        let cookie = self.header("set-cookie")?;
        let value = cookie.strip_prefix("session_id=")?;
        Some(value.split(';').next().unwrap_or_default().to_owned())
    }
}

/// An HTTP client that reports every status as an answer and follows no redirect.
pub fn agent() -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn read(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
    let mut response = result.expect("the request got an HTTP answer");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        text,
        json,
        headers,
    }
}

/// HTTP verbs against a base URL.
pub struct Client {
    pub base: String,
    pub agent: Agent,
}

impl Client {
    pub fn new(base: impl Into<String>) -> Client {
        Client {
            base: base.into(),
            agent: agent(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str, session: Option<&str>) -> Resp {
        let mut rq = self.agent.get(self.url(path));
        if let Some(s) = session {
            rq = rq.header("Cookie", format!("session_id={s}"));
        }
        read(rq.call())
    }

    pub fn delete(&self, path: &str, session: Option<&str>) -> Resp {
        let mut rq = self.agent.delete(self.url(path));
        if let Some(s) = session {
            rq = rq.header("Cookie", format!("session_id={s}"));
        }
        read(rq.call())
    }

    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> Resp {
        read(
            self.agent
                .post(self.url(path))
                .send_form(form.iter().copied()),
        )
    }

    pub fn put(&self, path: &str, form: &[(&str, &str)]) -> Resp {
        read(
            self.agent
                .put(self.url(path))
                .send_form(form.iter().copied()),
        )
    }

    /// Any method, raw body, extra headers.
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(body.to_vec()).unwrap();
        read(self.agent.run(request))
    }

    /// Registers `email` and logs in; the session id.
    pub fn register_and_log_in(&self, email: &str, password: &str) -> String {
        let r = self.post("/users", &[("email", email), ("password", password)]);
        assert_eq!(r.status, 200, "register {email}: {}", r.text);
        let r = self.post("/sessions", &[("email", email), ("password", password)]);
        assert_eq!(r.status, 200, "log in {email}: {}", r.text);
        r.session_cookie().expect("a session cookie")
    }
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
        let dir = Arc::new(TempDir::new());
        let mut config = test_config(dir.path());
        adjust(&mut config);
        TestServer::launch(config, dir, auth_service::app::handle)
    }

    /// A server that routes through `handler` instead of the app.
    pub fn with_handler(handler: Handler) -> TestServer {
        let dir = Arc::new(TempDir::new());
        TestServer::launch(test_config(dir.path()), dir, handler)
    }

    fn launch(config: Config, dir: Arc<TempDir>, handler: Handler) -> TestServer {
        let server = Server::start_with(config.clone(), handler).expect("the server starts");
        let addr = server.addr();
        TestServer {
            client: Client::new(format!("http://{addr}")),
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
        let mut child = command
            .args(["--bind", "127.0.0.1:0", "--bcrypt-cost", "4", "--db"])
            .arg(test_db(db))
            .args(args)
            // The abuse limits off, as in test_config (through variables, which an older binary
            // ignores): a test's own variables and flags win.
            .envs([
                ("AUTH_MAX_REGISTRATIONS", "0"),
                ("AUTH_MAX_RESET_REQUESTS", "0"),
            ])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Collected before the address is handed over, so that `output()` holds the
                // listening line once `start` has returned.
                {
                    let mut out = sink.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut out = sink.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
        let addr: SocketAddr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the server prints its listening line")
            .parse()
            .unwrap();
        ChildServer {
            child,
            addr,
            client: Client::new(format!("http://{addr}")),
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

    /// Waits up to `limit` for the child to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
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

/// Sends raw bytes from source address `from` (any 127.0.0.0/8 address works on Linux) and
/// returns everything the server sends back before closing or going quiet for a second.
pub fn raw_request(from: IpAddr, to: SocketAddr, request: &[u8]) -> String {
    let mut stream = connect_from(from, to);
    stream.write_all(request).unwrap();
    // The first byte may be slow on a loaded machine (the whole suite runs at once): wait
    // long for it, then stop after a second of quiet.
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A TCP connection to `to` whose local address is `from`.
pub fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    socket.into()
}

/// A form-encoded HTTP/1.1 POST from `from`, closing the connection after it; the raw
/// response text.
pub fn post_from(from: IpAddr, to: SocketAddr, path: &str, form: &[(&str, &str)]) -> String {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw_request(from, to, request.as_bytes())
}

/// The status code of a raw HTTP response.
pub fn raw_status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl TestServer {
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

/// Reads one HTTP response from `stream`: the head, then as many body bytes as its
/// `Content-Length` says. Gives up (returning what it has) after `limit` without a byte, so a
/// server that never answers fails the test instead of hanging it.
pub fn read_one_response(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + length {
                out.truncate(end + 4 + length);
                break;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of a raw HTTP response (what follows the blank line).
pub fn raw_body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// The first header called `name` (any case) of a raw HTTP response.
pub fn raw_header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

impl ChildServer {
    /// Stops the child with SIGTERM, waits for it to exit 0, then for its output to be read
    /// to the end; everything it printed. (Each reader thread holds a clone of `output` until
    /// it reaches end of file, so the count falling to one means both pipes are drained.)
    pub fn stop_and_collect(&mut self) -> String {
        if self.child.try_wait().unwrap().is_none() {
            self.signal("TERM");
            assert_eq!(
                self.wait_exit(Duration::from_secs(20)),
                Some(0),
                "the server exits 0 on SIGTERM"
            );
        }
        let started = Instant::now();
        while Arc::strong_count(&self.output) > 1 && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.output()
    }
}

/// Any request from source address `from` (a 127.0.0.0/8 address on Linux), closing the
/// connection after it; the response as a [`Resp`].
pub fn request_from(
    from: IpAddr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    raw_resp(&raw_request(from, to, &request))
}

/// A raw HTTP response (as [`raw_request`] returns it) as a [`Resp`].
pub fn raw_resp(response: &str) -> Resp {
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            Some((key.trim().to_owned(), value.trim().to_owned()))
        })
        .collect();
    let text = raw_body(response).to_owned();
    Resp {
        status: raw_status(response),
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        headers,
    }
}
