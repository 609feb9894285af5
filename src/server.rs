//! The HTTP side: a tiny_http server shared by N worker threads, each with its own `Auth` and
//! database connection; bounded body reading; the access log; graceful shutdown.
//!
//! Only this module touches sockets. A worker reads and bounds a request, hands the
//! app a [`Request`], and writes the [`Reply`] it gets back. A handler that panics is answered
//! 500 and the worker carries on.

use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::app::{self, AppError, Context, Reply, Request};
use crate::auth::{Auth, AuthError, Shared};
use crate::config::{self, Config};
use crate::db::{Db, DbError};

/// How long a connection may sit without sending a byte (idle keep-alive, a stalled header
/// or body) before it is closed. Accepted sockets inherit it from the listening socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);
/// The most time one request's body may take to arrive, however it trickles in.
const BODY_DEADLINE: Duration = Duration::from_secs(30);

/// Requests that may wait for a slow-lane thread, per thread; beyond that they are shed.
/// At bcrypt cost 12 (about a quarter second a check) that is a wait of eight seconds at most.
const SLOW_LANE_QUEUE_PER_THREAD: usize = 32;

/// A request handler: the app's router, or a stand-in in tests.
pub type Handler = fn(&Context<'_>, &Request<'_>) -> Reply;

/// Why the server could not start, or stopped on its own.
#[derive(Debug)]
pub enum ServerError {
    /// The database could not be opened or migrated.
    Db(DbError),
    /// The address could not be bound.
    Bind(SocketAddr, io::Error),
    /// tiny_http stopped delivering requests (its accept loop failed).
    Accept(io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Db(e) => write!(f, "database: {e}"),
            ServerError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ServerError::Accept(e) => write!(f, "the server stopped accepting requests: {e}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Db(e) => Some(e),
            ServerError::Bind(_, e) | ServerError::Accept(e) => Some(e),
        }
    }
}

impl From<DbError> for ServerError {
    fn from(e: DbError) -> ServerError {
        ServerError::Db(e)
    }
}

/// A running server. Dropping it does not stop it: call [`Server::shutdown`], then
/// [`Server::wait`].
pub struct Server {
    addr: SocketAddr,
    stopper: Stopper,
    workers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// Stops a server from any thread (a signal handler's, a test's).
#[derive(Clone)]
pub struct Stopper(Arc<StopState>);

struct StopState {
    http: Arc<tiny_http::Server>,
    listener: TcpListener,
    stopping: AtomicBool,
    workers: usize,
    fatal: Mutex<Option<io::Error>>,
}

impl Stopper {
    /// Stops accepting connections and wakes every idle worker; requests already received are
    /// still answered.
    pub fn stop(&self) {
        if self.0.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Shutting the listening socket down makes tiny_http's blocked accept() fail, so no
        // new connection is taken from here on.
        let _ = SockRef::from(&self.0.listener).shutdown(std::net::Shutdown::Read);
        for _ in 0..self.0.workers {
            self.0.http.unblock();
        }
    }

    fn stopping(&self) -> bool {
        self.0.stopping.load(Ordering::SeqCst)
    }
}

impl Server {
    /// Opens the database, binds, and starts the workers with the app's router.
    pub fn start(config: Config) -> Result<Server, ServerError> {
        Server::start_with(config, app::handle)
    }

    /// [`Server::start`] with another handler (tests use one that panics).
    pub fn start_with(config: Config, handler: Handler) -> Result<Server, ServerError> {
        let shared = Arc::new(Shared::new(config.policy.clone()));
        // One connection per worker and per slow-lane thread, opened before binding, so a bad
        // path or a too-new schema fails the start; the first open also runs the migrations.
        let lane_threads = config::cores();
        let dbs = (0..config.workers + lane_threads)
            .map(|_| Db::open(&config.db))
            .collect::<Result<Vec<_>, _>>()?;

        let listener = listen(config.bind).map_err(|e| ServerError::Bind(config.bind, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServerError::Bind(config.bind, e))?;
        let control = listener
            .try_clone()
            .map_err(|e| ServerError::Bind(config.bind, e))?;
        let http = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| ServerError::Bind(config.bind, io::Error::other(e.to_string())))?;
        let stopper = Stopper(Arc::new(StopState {
            http: Arc::new(http),
            listener: control,
            stopping: AtomicBool::new(false),
            workers: config.workers,
            fatal: Mutex::new(None),
        }));

        eprintln!(
            "auth-service listening on http://{addr} (db {})",
            crate::db::display_location(&config.db)
        );
        if config.policy.reset_command.is_none() {
            eprintln!(
                "warning: POST /reset_password returns reset tokens in its response, as the \
                 reference does; this is for development: set --reset-command to deliver them \
                 out of band"
            );
        }

        let config = Arc::new(config);
        // The slow lane: requests that run bcrypt wait here for one of `cores` threads, so the
        // workers go straight back to cheap requests. Past its capacity they are shed with 503.
        let (lane, jobs) = mpsc::sync_channel::<Job>(lane_threads * SLOW_LANE_QUEUE_PER_THREAD);
        let jobs = Arc::new(Mutex::new(jobs));
        let mut dbs = dbs.into_iter();
        let mut threads: Vec<JoinHandle<()>> = dbs
            .by_ref()
            .take(config.workers)
            .enumerate()
            .map(|(i, db)| {
                let auth = Auth::new(db, Arc::clone(&shared));
                let config = Arc::clone(&config);
                let stopper = stopper.clone();
                let lane = lane.clone();
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || work(auth, &config, handler, &stopper, &lane))
                    .expect("spawning a worker thread")
            })
            .collect();
        drop(lane);
        threads.extend(dbs.enumerate().map(|(i, db)| {
            let auth = Auth::new(db, Arc::clone(&shared));
            let config = Arc::clone(&config);
            let jobs = Arc::clone(&jobs);
            std::thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(move || slow_lane(auth, &config, handler, &jobs))
                .expect("spawning a bcrypt thread")
        }));
        let workers = threads;
        Ok(Server {
            addr,
            stopper,
            workers,
            shared,
        })
    }

    /// The address it listens on, with the real port when port 0 was asked for.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// The state all workers share (metrics among it).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Stops accepting; requests already received are answered. See [`Stopper::stop`].
    pub fn shutdown(&self) {
        self.stopper.stop();
    }

    /// Waits for every worker to finish. An error when the server stopped on its own because
    /// tiny_http could no longer accept.
    pub fn wait(self) -> Result<(), ServerError> {
        for worker in self.workers {
            let _ = worker.join();
        }
        let fatal = self
            .stopper
            .0
            .fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        fatal.map_or(Ok(()), |e| Err(ServerError::Accept(e)))
    }
}

/// Runs the service until SIGTERM or SIGINT, then finishes in-flight requests and returns.
pub fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    // Caught from before the listening line on: a signal sent as soon as that line shows
    // must not find the default action (death by signal) still in place.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let server = Server::start(config)?;
    let stopper = server.stopper();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("auth-service: signal {signal}, finishing in-flight requests");
            stopper.stop();
        }
    });
    server.wait()?;
    Ok(())
}

/// A listening socket with the options every accepted connection should inherit.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Linux copies these to accepted sockets: a stalled client costs a worker at most the
    // timeout, and small responses leave at once instead of waiting on Nagle.
    socket.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    socket.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One worker: take a request, answer it, until the server stops.
fn work(auth: Auth, config: &Config, handler: Handler, stopper: &Stopper, lane: &SyncSender<Job>) {
    let ctx = Context {
        auth: &auth,
        config,
    };
    loop {
        // Waiting for work is when the access log goes out: while requests keep coming, their
        // lines gather into one write. try_recv can swallow the wake-up that stop() queues for
        // this worker, so an empty queue is also where a stopping worker leaves.
        let next = match stopper.0.http.try_recv() {
            Ok(Some(request)) => Ok(request),
            Ok(None) => {
                access_log::flush();
                if stopper.stopping() {
                    return;
                }
                stopper.0.http.recv()
            }
            Err(e) => Err(e),
        };
        match next {
            Ok(request) => serve(&ctx, handler, request, lane),
            Err(_) if stopper.stopping() => {
                access_log::flush();
                return;
            }
            Err(e) => {
                // tiny_http's accept loop has died; no request will come again. Stop the whole
                // server so the process exits non-zero rather than idling forever.
                eprintln!("auth-service: accepting failed: {e}");
                *stopper.0.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                stopper.stop();
                return;
            }
        }
    }
}

/// One slow-lane thread: answer the bcrypt requests the workers hand over, until every worker
/// has stopped and the queue is empty.
fn slow_lane(auth: Auth, config: &Config, handler: Handler, jobs: &Mutex<Receiver<Job>>) {
    let ctx = Context {
        auth: &auth,
        config,
    };
    loop {
        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        match job {
            Ok(job) => {
                answer(&ctx, handler, job);
                access_log::flush();
            }
            Err(_) => return,
        }
    }
}

/// A request read off the socket and bounded, waiting for its handler.
struct Job {
    request: tiny_http::Request,
    started: Instant,
    method: String,
    path: String,
    cookie: Option<String>,
    forwarded_for: Option<String>,
    peer: IpAddr,
    body: Result<Vec<u8>, BodyError>,
}

impl Job {
    fn read(mut request: tiny_http::Request, max_body_bytes: usize) -> Job {
        let started = Instant::now();
        let method = request.method().as_str().to_owned();
        let path = request
            .url()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        let cookie = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Cookie"))
            .map(|h| h.value.as_str().to_owned());
        // Every X-Forwarded-For line, joined in order (RFC 9110 5.3): a proxy that adds its own
        // line instead of extending the client's must still have the last hop.
        let forwarded_for = request
            .headers()
            .iter()
            .filter(|h| h.field.equiv("X-Forwarded-For"))
            .map(|h| h.value.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let forwarded_for = (!forwarded_for.is_empty()).then_some(forwarded_for);
        let peer = request
            .remote_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let body = read_body(&mut request, max_body_bytes);
        Job {
            request,
            started,
            method,
            path,
            cookie,
            forwarded_for,
            peer,
            body,
        }
    }
}

/// Reads one request, then answers it here or hands it to the slow lane.
fn serve(ctx: &Context<'_>, handler: Handler, request: tiny_http::Request, lane: &SyncSender<Job>) {
    ctx.auth.shared().metrics.request_started();
    let job = Job::read(request, ctx.config.max_body_bytes);
    if job.body.is_ok() && app::runs_bcrypt(&job.method, &job.path) {
        match lane.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                let busy = app::error_reply(AppError::Auth(AuthError::Busy));
                respond(ctx, job, busy);
            }
            Err(TrySendError::Disconnected(job)) => answer(ctx, handler, job),
        }
    } else {
        answer(ctx, handler, job);
    }
}

/// Runs the handler on a job (a panic becomes a 500) and responds.
fn answer(ctx: &Context<'_>, handler: Handler, job: Job) {
    let reply = match &job.body {
        Err(BodyError::TooLarge) => Reply::body_too_large(ctx.config.max_body_bytes),
        Err(BodyError::Unreadable) => Reply::message(400, "request body could not be read"),
        Ok(body) => {
            let rq = Request {
                method: &job.method,
                path: &job.path,
                cookie: job.cookie.as_deref(),
                forwarded_for: job.forwarded_for.as_deref(),
                peer: job.peer,
                body,
            };
            catch_unwind(AssertUnwindSafe(|| handler(ctx, &rq)))
                .unwrap_or_else(|_| Reply::internal_error("the handler panicked"))
        }
    };
    respond(ctx, job, reply);
}

/// Writes the reply, counts it, and writes the access-log line.
fn respond(ctx: &Context<'_>, job: Job, reply: Reply) {
    let status = reply.status;
    let path = printable(&job.path);
    let failed = reply.log.is_some();
    if let Some(cause) = &reply.log {
        access_log::line(format_args!(
            "error: {} {path} {status}: {cause}\n",
            job.method
        ));
    }
    let _ = write_response(job.request, &reply, job.body.is_ok());
    ctx.auth
        .shared()
        .metrics
        .request_finished(&job.path, status);
    access_log::line(format_args!(
        "{} {path} {status} {:.1}ms\n",
        job.method,
        job.started.elapsed().as_secs_f64() * 1000.0
    ));
    if failed {
        access_log::flush();
    }
}

/// The access log: each thread gathers whole lines and writes them to stderr in one call,
/// when it is about to wait for work or has gathered a few KiB. Under load that is one
/// `write` for dozens of lines, where `eprintln!` made one for each piece of each line; with
/// no queue, each line still goes out as soon as its response has.
mod access_log {
    use std::cell::RefCell;
    use std::fmt;
    use std::io::Write;

    /// Below PIPE_BUF (4 KiB), so that one write of whole lines to a pipe is atomic and lines
    /// of different threads never interleave.
    const FLUSH_AT: usize = 3 * 1024;

    thread_local! {
        static LINES: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(4 * 1024));
    }

    /// Adds a line (ending in a newline), writing the gathered ones when there are enough.
    pub fn line(line: fmt::Arguments<'_>) {
        let full = LINES.with_borrow_mut(|lines| {
            let _ = lines.write_fmt(line);
            lines.len() >= FLUSH_AT
        });
        if full {
            flush();
        }
    }

    /// Writes this thread's gathered lines.
    pub fn flush() {
        LINES.with_borrow_mut(|lines| {
            if !lines.is_empty() {
                let _ = std::io::stderr().write_all(lines);
                lines.clear();
            }
        });
    }
}

enum BodyError {
    TooLarge,
    Unreadable,
}

/// Reads the body, refusing before reading a byte when the declared length is over `limit`,
/// and stopping one byte past it when no length was declared (chunked).
fn read_body(request: &mut tiny_http::Request, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared = request.body_length();
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    // Neither a length nor chunked: no body (RFC 9112 6.3), so nothing to read. Most requests.
    let chunked = || {
        request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding"))
    };
    if declared == Some(0) || (declared.is_none() && !chunked()) {
        return Ok(Vec::new());
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    let deadline = Instant::now() + BODY_DEADLINE;
    let mut reader = request.as_reader().take(limit as u64 + 1);
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(BodyError::Unreadable),
        }
        if body.len() > limit {
            return Err(BodyError::TooLarge);
        }
        if Instant::now() > deadline {
            return Err(BodyError::Unreadable);
        }
    }
    Ok(body)
}

/// Writes `reply` as one HTTP response, head and body in a single buffer and a single write.
/// (tiny_http's own `Response` writes each header through a locked writer piece by piece,
/// which cost more than all of `GET /`'s handling.) The connection's framing stays tiny_http's:
/// it has already decided from the request whether the connection stays open.
fn write_response(request: tiny_http::Request, reply: &Reply, body_read: bool) -> io::Result<()> {
    use std::io::Write;

    let common = [
        ("Content-Type", reply.content_type),
        // Nothing here may be cached by a browser or a proxy: profiles, tokens, cookies.
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ];
    let headers = common
        .into_iter()
        .chain(
            reply
                .headers
                .iter()
                .map(|(name, value)| (*name, value.as_str())),
        )
        // Values are built by this crate, never copied from a request; a line break would
        // still end the header early, so it is refused here rather than trusted.
        .filter(|(_, value)| !value.bytes().any(|b| b == b'\r' || b == b'\n'));

    if !body_read {
        // Part of the body is unread (a 413, say). tiny_http's `respond` writes before the
        // request and its body reader are dropped, and that drop is what skips the unread
        // rest; `into_writer` would drop the reader first, and so wait for the whole body.
        let mut response =
            tiny_http::Response::from_data(reply.body.as_bytes()).with_status_code(reply.status);
        for (name, value) in headers {
            if let Ok(header) = tiny_http::Header::from_bytes(name, value) {
                response.add_header(header);
            }
        }
        return request.respond(response);
    }

    // tiny_http answers requests above HTTP/1.1 itself (505); never claim more than 1.1 anyway.
    let version = request.http_version();
    let (major, minor) = std::cmp::min((version.0, version.1), (1, 1));
    let status = tiny_http::StatusCode(reply.status);
    let mut out = Vec::with_capacity(320 + reply.body.len());
    let _ = write!(
        out,
        "HTTP/{major}.{minor} {} {}\r\nDate: ",
        status.0,
        status.default_reason_phrase()
    );
    http_date::push_now(&mut out);
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", reply.body.len());
    if request.method() != &tiny_http::Method::Head {
        out.extend_from_slice(reply.body.as_bytes());
    }
    let mut writer = request.into_writer();
    writer.write_all(&out)?;
    writer.flush()
}

/// The `Date` header's value (RFC 9110 5.6.7), formatted once a second per thread.
mod http_date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static LAST: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    /// Appends the current time as `Sun, 06 Nov 1994 08:49:37 GMT`.
    pub fn push_now(out: &mut Vec<u8>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        LAST.with_borrow_mut(|(secs, text)| {
            if *secs != now {
                *secs = now;
                *text = format(now);
            }
            out.extend_from_slice(text);
        });
    }

    pub fn format(secs: u64) -> [u8; 29] {
        const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Days to a civil date (Howard Hinnant's algorithm), from 1970-01-01, a Thursday.
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let text = std::format!(
            "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
            DAYS[(days % 7) as usize],
            MONTHS[(month - 1) as usize],
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        );
        let mut out = [b' '; 29];
        let n = text.len().min(29);
        out[..n].copy_from_slice(&text.as_bytes()[..n]);
        out
    }
}

/// The path for the log, with control characters escaped so a request cannot forge lines.
fn printable(path: &str) -> String {
    if !path.chars().any(char::is_control) {
        return path.to_owned();
    }
    path.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdate() {
        assert_eq!(
            &http_date::format(784_111_777),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(&http_date::format(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &http_date::format(951_782_400),
            b"Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            &http_date::format(4_102_444_799),
            b"Thu, 31 Dec 2099 23:59:59 GMT"
        );
    }

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("/profile"), "/profile");
        assert_eq!(printable("/a\nb"), "/a\\nb");
    }
}
