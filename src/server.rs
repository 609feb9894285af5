//! The HTTP side: a tiny_http server shared by N worker threads, each with its own `Auth` and
//! database connection; the bcrypt slow lane; graceful shutdown. Its lines go through
//! [`crate::log`].
//!
//! Only this module touches tiny_http. A connection's own thread (inside the vendored
//! tiny_http) reads each request in full, within the bounds and deadlines of
//! [`tiny_http::Limits`], before a worker sees it, and the worker's answer is sent without
//! waiting on the client: so no client, however slow or silent, holds a worker. A worker
//! hands the app a [`Request`] and writes the [`Reply`] it gets back. A handler that panics is
//! answered 500 and the worker carries on.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::app::{self, AppError, Context, Reply, Request};
use crate::auth::{Auth, Shared};
use crate::config::{self, Config};
use crate::db::{Db, DbError};
use crate::log;
use crate::metrics::{Connections, Metrics};
use crate::slow_lane::{self, SlowLane};
use crate::user::ClientAddress;

/// How often a stopping server looks whether its in-flight requests are done.
const STOP_POLL: Duration = Duration::from_millis(5);

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
    /// A worker or bcrypt thread could not be started (a limit on threads, or memory).
    Spawn(io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Db(e) => write!(f, "database: {e}"),
            ServerError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ServerError::Accept(e) => write!(f, "the server stopped accepting requests: {e}"),
            ServerError::Spawn(e) => write!(f, "cannot start a thread: {e}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Db(e) => Some(e),
            ServerError::Bind(_, e) | ServerError::Accept(e) | ServerError::Spawn(e) => Some(e),
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
    threads: Vec<JoinHandle<()>>,
    lane: Arc<SlowLane<Job>>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    shutdown_grace: Duration,
}

/// Stops a server from any thread (a signal handler's, a test's).
#[derive(Clone)]
pub struct Stopper(Arc<StopState>);

struct StopState {
    http: Arc<tiny_http::Server>,
    /// Set by `stop`, which then notifies `stop_signal`.
    stopping: Mutex<bool>,
    stop_signal: Condvar,
    fatal: Mutex<Option<io::Error>>,
}

impl Stopper {
    /// Stops accepting connections; requests already received are still answered, and
    /// [`Server::wait`] returns once they are (or the shutdown grace has passed).
    pub fn stop(&self) {
        let mut stopping = self
            .0
            .stopping
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !*stopping {
            *stopping = true;
            self.0.http.stop_accepting();
            self.0.stop_signal.notify_all();
        }
    }

    fn stopping(&self) -> bool {
        *self
            .0
            .stopping
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until `stop` has been called.
    fn wait_for_stop(&self) {
        let mut stopping = self
            .0
            .stopping
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while !*stopping {
            stopping = self
                .0
                .stop_signal
                .wait(stopping)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Server {
    /// Opens the database, binds, and starts the workers with the app's router.
    pub fn start(config: Config) -> Result<Server, ServerError> {
        Server::start_with(config, app::handle)
    }

    /// [`Server::start`] with another handler (tests use one that panics).
    pub fn start_with(config: Config, handler: Handler) -> Result<Server, ServerError> {
        log::set_format(config.log_format);
        let metrics = Arc::new(Metrics::default());
        let shared = Arc::new(Shared::new(config.policy.clone(), Arc::clone(&metrics)));
        // One connection per worker and per slow-lane thread, opened before binding, so a bad
        // path or a too-new schema fails the start; the first open also runs the migrations.
        let lane_threads = config::cores();
        let dbs = (0..config.workers + lane_threads)
            .map(|_| Db::open(&config.db))
            .collect::<Result<Vec<_>, _>>()?;

        let bind_error = |e| ServerError::Bind(config.bind, e);
        let listener = listen(config.bind).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let http = tiny_http::Server::from_listener_with_limits(listener, limits(&config))
            .map_err(bind_error)?;
        let http = Arc::new(http);
        let connections: Arc<dyn Connections> = Arc::clone(&http) as _;
        metrics.watch_connections(Arc::downgrade(&connections));
        let stopper = Stopper(Arc::new(StopState {
            http,
            stopping: Mutex::new(false),
            stop_signal: Condvar::new(),
            fatal: Mutex::new(None),
        }));

        let shutdown_grace = config.shutdown_grace;
        let config = Arc::new(config);
        // The slow lane: requests that run bcrypt wait here for one of `cores` threads, so the
        // workers go straight back to cheap requests.
        let lane = Arc::new(SlowLane::new(lane_threads, shared.bcrypt_estimate()));
        let http = Arc::clone(&stopper.0.http);
        let mut dbs = dbs.into_iter();
        let mut threads = Vec::new();
        let mut start = |name: String, db: Db, body: Box<dyn FnOnce(&Context<'_>) + Send>| {
            let auth = Auth::new(db, Arc::clone(&shared));
            let (config, metrics) = (Arc::clone(&config), Arc::clone(&metrics));
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                body(&Context {
                    auth: &auth,
                    config: &config,
                    metrics: &metrics,
                })
            });
            threads.push(spawned.map_err(|e| abandon(&http, &lane, e))?);
            Ok::<(), ServerError>(())
        };
        for (i, db) in dbs.by_ref().take(config.workers).enumerate() {
            let (stopper, lane) = (stopper.clone(), Arc::clone(&lane));
            let work = move |ctx: &Context<'_>| worker_loop(ctx, handler, &stopper, &lane);
            start(format!("worker-{i}"), db, Box::new(work))?;
        }
        for (i, db) in dbs.enumerate() {
            let lane = Arc::clone(&lane);
            let work = move |ctx: &Context<'_>| lane_loop(ctx, handler, &lane);
            start(format!("bcrypt-{i}"), db, Box::new(work))?;
        }
        // Announced once every thread of its own runs: a client that connects as soon as it
        // reads this line (port 0) cannot take the threads the server needs to start.
        log::info(format_args!(
            "auth-service listening on http://{addr} (db {})",
            crate::db::display_location(&config.db)
        ));
        if config.policy.reset_command.is_none() {
            log::warning(format_args!(
                "POST /reset_password returns reset tokens in its response, as the reference \
                 does; this is for development: set --reset-command to deliver them out of band"
            ));
        }
        Ok(Server {
            addr,
            stopper,
            threads,
            lane,
            shared,
            metrics,
            shutdown_grace,
        })
    }

    /// The address it listens on, with the real port when port 0 was asked for.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// The counters `GET /metrics` shows.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What its workers' `Auth`s share (tests read the dummy hash's cost from it).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Stops accepting; requests already received are answered. See [`Stopper::stop`].
    pub fn shutdown(&self) {
        self.stopper.stop();
    }

    /// Waits until the server is stopped and its in-flight requests are answered, or the
    /// shutdown grace has passed since the stop, whichever comes first; then ends the workers.
    /// An error when the server stopped on its own because it could no longer accept.
    pub fn wait(self) -> Result<(), ServerError> {
        self.stopper.wait_for_stop();
        let http = &self.stopper.0.http;
        let deadline = Instant::now() + self.shutdown_grace;
        while http.requests_in_progress() > 0 && Instant::now() < deadline {
            std::thread::sleep(STOP_POLL);
        }
        // What is still queued (only when the grace ran out) is answered 503 by tiny_http as
        // it is dropped; the workers and the lane's threads see their queues closed, finish
        // the request in hand (none waits on a client) and end.
        http.close();
        self.lane.close();
        for thread in self.threads {
            let _ = thread.join();
        }
        let fatal = self
            .stopper
            .0
            .fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        fatal.map_or(Ok(()), |e| Err(ServerError::Accept(e)))
    }
}

/// Ends what a start that failed half way had begun: the threads already started see their
/// queues closed and end.
fn abandon(http: &tiny_http::Server, lane: &SlowLane<Job>, e: io::Error) -> ServerError {
    http.close();
    lane.close();
    ServerError::Spawn(e)
}

/// Runs the service until SIGTERM or SIGINT, then finishes in-flight requests and returns.
pub fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    // Caught from before the listening line on: a signal sent as soon as that line shows
    // must not find the default action (death by signal) still in place.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    log::report_panics_in_format();
    // The thread that waits for them starts before the server, so that every thread of the
    // process runs by the time the listening line shows; it gets the stopper once there is one.
    let (stopper_to, stopper) = std::sync::mpsc::channel::<Stopper>();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                if let Ok(stopper) = stopper.recv() {
                    log::info(format_args!(
                        "auth-service: signal {signal}, finishing in-flight requests"
                    ));
                    stopper.stop();
                }
            }
        })
        .map_err(ServerError::Spawn)?;
    let server = Server::start(config)?;
    let _ = stopper_to.send(server.stopper());
    server.wait()?;
    Ok(())
}

impl Connections for tiny_http::Server {
    fn open(&self) -> usize {
        self.num_connections()
    }

    fn refused(&self) -> u64 {
        self.refused_connections()
    }

    fn requests_in_progress(&self) -> usize {
        self.requests_in_progress()
    }
}

/// What tiny_http holds every connection to: SPEC section 9's bounds and deadlines.
fn limits(config: &Config) -> tiny_http::Limits {
    tiny_http::Limits {
        max_connections: config.max_connections,
        max_body: config.max_body_bytes,
        head_timeout: config.header_timeout,
        ..tiny_http::Limits::default()
    }
}

/// A listening socket with the options every accepted connection should inherit.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Linux copies it to accepted sockets: small responses leave at once instead of waiting
    // on Nagle.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One worker: take a request, answer it (or hand it to the slow lane), until the server
/// stops.
fn worker_loop(ctx: &Context<'_>, handler: Handler, stopper: &Stopper, lane: &SlowLane<Job>) {
    let http = &stopper.0.http;
    loop {
        // Waiting for work is when the access log goes out: while requests keep coming, their
        // lines gather into one write.
        let next = match http.try_recv() {
            Ok(Some(request)) => Ok(request),
            Ok(None) => {
                log::flush();
                http.recv()
            }
            Err(e) => Err(e),
        };
        match next {
            Ok(request) => dispatch(ctx, handler, request, lane),
            Err(_) if stopper.stopping() => {
                log::flush();
                return;
            }
            Err(e) => {
                // tiny_http's accept loop has died; no request will come again. Stop the whole
                // server so the process exits non-zero rather than idling forever.
                log::error(format_args!("accepting failed: {e}"));
                *stopper
                    .0
                    .fatal
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(e);
                stopper.stop();
                return;
            }
        }
    }
}

/// One slow-lane thread: answer the bcrypt requests the workers hand over, until the lane is
/// closed. A request that has waited past the lane's bound anyway (the machine slowed down
/// after it was admitted) is refused as it would have been at the door, rather than kept
/// waiting longer than promised.
fn lane_loop(ctx: &Context<'_>, handler: Handler, lane: &SlowLane<Job>) {
    while let Some(job) = lane.pop() {
        if job.started.elapsed() > slow_lane::MAX_WAIT {
            send_reply(ctx, job, app::error_reply(AppError::Busy));
            continue;
        }
        let started = Instant::now();
        run_handler(ctx, handler, job);
        lane.record(started.elapsed());
        log::flush();
    }
}

/// A request tiny_http has read in full, waiting for its handler.
struct Job {
    request: tiny_http::Request,
    started: Instant,
    method: String,
    path: String,
    query: Option<String>,
    cookie: Option<String>,
    forwarded_for: Option<String>,
    peer: IpAddr,
    body: Result<Vec<u8>, AppError>,
}

impl Job {
    fn new(mut request: tiny_http::Request, max_body_bytes: usize) -> Job {
        let started = Instant::now();
        let method = request.method().as_str().to_owned();
        let (path, query) = match request.url().split_once('?') {
            Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
            None => (request.url().to_owned(), None),
        };
        let header = |name: &'static str| {
            request
                .headers()
                .iter()
                .filter(move |h| h.field.equiv(name))
                .map(|h| h.value.as_str())
        };
        let cookie = header("Cookie").next().map(str::to_owned);
        // Every X-Forwarded-For line, joined in order (RFC 9110 5.3): a proxy that adds its own
        // line instead of extending the client's must still have the last hop.
        let forwarded_for = header("X-Forwarded-For").collect::<Vec<_>>().join(", ");
        let forwarded_for = (!forwarded_for.is_empty()).then_some(forwarded_for);
        let peer = request
            .remote_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let body = match request.body_problem() {
            None => {
                let mut body = Vec::with_capacity(request.body_length().unwrap_or(0));
                let _ = request.as_reader().read_to_end(&mut body);
                Ok(body)
            }
            Some(tiny_http::BodyProblem::TooLarge) => Err(AppError::BodyTooLarge(max_body_bytes)),
            Some(tiny_http::BodyProblem::BadFraming) => Err(AppError::BadFraming),
            Some(tiny_http::BodyProblem::TimedOut) => Err(AppError::BodyTimeout),
        };
        Job {
            request,
            started,
            method,
            path,
            query,
            cookie,
            forwarded_for,
            peer,
            body,
        }
    }

    /// The request as the handlers see it (the body only when it was read).
    fn request<'a>(&'a self, body: &'a [u8]) -> Request<'a> {
        Request {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            cookie: self.cookie.as_deref(),
            forwarded_for: self.forwarded_for.as_deref(),
            peer: self.peer,
            body,
        }
    }
}

/// Answers a request here, or hands it to the slow lane when it runs bcrypt.
fn dispatch(
    ctx: &Context<'_>,
    handler: Handler,
    request: tiny_http::Request,
    lane: &SlowLane<Job>,
) {
    let job = Job::new(request, ctx.config.max_body_bytes);
    if job.body.is_err() || !app::runs_bcrypt(&job.method, &job.path) {
        return run_handler(ctx, handler, job);
    }
    let client = ClientAddress::new(app::client_address(ctx, &job.request(&[])));
    if let Err(job) = lane.push(client, job) {
        send_reply(ctx, job, app::error_reply(AppError::Busy));
    }
}

/// Runs the handler on a job (a panic becomes a 500) and sends its reply.
fn run_handler(ctx: &Context<'_>, handler: Handler, mut job: Job) {
    let reply = match std::mem::replace(&mut job.body, Ok(Vec::new())) {
        Err(refused) => app::error_reply(refused),
        Ok(body) => {
            let rq = job.request(&body);
            catch_unwind(AssertUnwindSafe(|| handler(ctx, &rq)))
                .unwrap_or_else(|_| app::error_reply(AppError::Panicked))
        }
    };
    send_reply(ctx, job, reply);
}

/// Writes the reply, counts it, and writes the access-log line.
fn send_reply(ctx: &Context<'_>, job: Job, reply: Reply) {
    let status = reply.status;
    if let Some(cause) = &reply.log {
        log::request_error(&job.method, &job.path, status, cause);
    }
    let client = app::client_address(ctx, &job.request(&[]));
    let _ = write_response(job.request, &reply);
    ctx.metrics
        .request_finished(app::route(&job.path).unwrap_or("other"), status);
    log::access(
        &job.method,
        &job.path,
        status,
        job.started.elapsed(),
        client,
    );
}

/// Writes `reply` as one HTTP response, head and body in a single buffer handed to tiny_http
/// in one piece. (tiny_http's own `Response` writes each header piece by piece, which cost more
/// than all of `GET /`'s handling.) The connection's framing stays tiny_http's: it has already
/// decided from the request whether the connection stays open, and says so.
fn write_response(request: tiny_http::Request, reply: &Reply) -> io::Result<()> {
    use std::io::Write;

    let common = [
        ("Content-Type", reply.content_type),
        // Nothing here may be cached by a browser or a proxy: profiles, tokens, cookies.
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ];
    let closing = request
        .closes_connection()
        .then_some(("Connection", "close"));
    let headers = common
        .into_iter()
        .chain(closing)
        .chain(
            reply
                .headers
                .iter()
                .map(|(name, value)| (*name, value.as_str())),
        )
        // Values are built by this crate, never copied from a request; a line break would
        // still end the header early, so it is refused here rather than trusted.
        .filter(|(_, value)| !value.bytes().any(|b| b == b'\r' || b == b'\n'));

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
    // Sent when the writer is dropped, without waiting on the client.
    request.into_writer().write_all(&out)
}

/// The `Date` header's value (RFC 9110 5.6.7), formatted (by `httpdate`) once a second per
/// thread.
mod http_date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static LAST: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    /// Appends the current time as `Sun, 06 Nov 1994 08:49:37 GMT`.
    pub fn push_now(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        LAST.with_borrow_mut(|(last, text)| {
            if *last != secs {
                *last = secs;
                *text = httpdate::fmt_http_date(now);
            }
            out.extend_from_slice(text.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_header_is_now_as_an_imf_fixdate() {
        let mut out = Vec::new();
        http_date::push_now(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.len(), 29, "{text}");
        assert!(text.ends_with(" GMT"), "{text}");
        let date = httpdate::parse_http_date(&text).unwrap();
        let skew = std::time::SystemTime::now().duration_since(date).unwrap();
        assert!(skew < Duration::from_secs(2), "{text}");
    }
}
