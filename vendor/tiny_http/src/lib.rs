//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
//! # auth-service's copy
//!
//! This is tiny_http 0.12.0 with its connection handling rewritten so that no client can hold
//! a worker, memory or the accept loop (`README.auth-service.md` in this folder lists every
//! change). A connection's own thread reads each request in full, head and body, within the
//! bounds and deadlines of [`Limits`], before a worker can `recv()` it; the worker's answer is
//! sent without waiting on the client. HTTPS and `Request::upgrade` are gone: the service
//! speaks plain HTTP behind a TLS proxy.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

use std::error::Error;
use std::fs::File;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use client::ClientConnection;
use util::MessagesQueue;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use limits::Limits;
pub use request::Request;
pub use response::{Response, ResponseBox};

mod client;
mod common;
mod connection;
mod limits;
mod request;
mod response;
mod util;

/// auth-service: why a request's body was not read in full. The request still reaches a
/// worker, to be answered (with the status each variant names), and the connection closes
/// after that answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyProblem {
    /// Longer than [`Limits::max_body`]: declared so, or found so while reading chunks (413).
    TooLarge,
    /// The body's length cannot be told safely: a `Content-Length` that is not a number, two
    /// that differ, a `Transfer-Encoding` other than `chunked` alone, both headers at once, or
    /// a malformed chunk (400).
    BadFraming,
    /// It did not arrive within [`Limits::body_timeout`] (408).
    TimedOut,
}

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket and the reading
/// part of all the client's connections. Requests that have already been returned by
/// the `recv()` function will not close and the responses will be transferred to the client.
pub struct Server {
    shared: Arc<Shared>,

    // the listening socket, also held by the accept thread
    listener: Arc<Listener>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,
}

/// What the accept thread, the connections' threads and the `Server` share.
pub(crate) struct Shared {
    // queue for messages received by child threads
    pub(crate) messages: MessagesQueue<Message>,
    pub(crate) limits: Limits,
    // set once the server stops accepting: connections close after their current answer
    draining: AtomicBool,
    // requests from the first byte of their head until their answer is out
    in_progress: AtomicUsize,
    open: AtomicUsize,
    refused: AtomicU64,
}

impl Shared {
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(SeqCst)
    }

    pub(crate) fn request_started(&self) {
        self.in_progress.fetch_add(1, SeqCst);
    }

    pub(crate) fn request_finished(&self) {
        self.in_progress.fetch_sub(1, SeqCst);
    }
}

/// One open connection, counted against [`Limits::max_connections`] until dropped.
struct OpenConnection(Arc<Shared>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, SeqCst);
    }
}

pub(crate) enum Message {
    Error(IoError),
    NewRequest(Request),
}

impl From<IoError> for Message {
    fn from(e: IoError) -> Message {
        Message::Error(e)
    }
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,

    /// If `Some`, then the server will use SSL to encode the communications. auth-service:
    /// this copy has no TLS, so `Some` is an error.
    pub ssl: Option<SslConfig>,
}

/// Configuration of the server for SSL.
#[derive(Debug, Clone)]
pub struct SslConfig {
    /// Contains the public certificate to send to clients.
    pub certificate: Vec<u8>,
    /// Contains the ultra-secret private key used to decode communications.
    pub private_key: Vec<u8>,
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: None,
        })
    }

    /// Shortcut for a UNIX socket server at a specific path
    #[cfg(unix)]
    #[inline]
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
            ssl: None,
        })
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener, config.ssl)
    }

    /// Builds a new server using the specified TCP listener, with the default [`Limits`].
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        if ssl_config.is_some() {
            return Err("this tiny_http (auth-service's copy) has no TLS".into());
        }
        Ok(Self::from_listener_with_limits(
            listener,
            Limits::default(),
        )?)
    }

    /// auth-service: builds a server on `listener` whose connections are held to `limits`.
    pub fn from_listener_with_limits<L: Into<Listener>>(
        listener: L,
        limits: Limits,
    ) -> IoResult<Server> {
        let listener = Arc::new(listener.into());
        let listening_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            messages: MessagesQueue::with_capacity(8),
            limits,
            draining: AtomicBool::new(false),
            in_progress: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        });

        // The connections' pool starts its idle threads here, not in the accept loop, so that
        // every thread the server starts with runs when this returns.
        let pool = util::TaskPool::new(shared.limits.connection_stack);
        let accept_shared = Arc::clone(&shared);
        let accept_listener = Arc::clone(&listener);
        thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || accept_loop(&accept_listener, &accept_shared, &pool))?;

        Ok(Server {
            shared,
            listener,
            listening_addr,
        })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Returns the number of clients currently connected to the server.
    pub fn num_connections(&self) -> usize {
        self.shared.open.load(Relaxed)
    }

    /// auth-service: connections closed as soon as they were accepted, since start: past
    /// [`Limits::max_connections`], or when no thread or descriptor was left for them.
    pub fn refused_connections(&self) -> u64 {
        self.shared.refused.load(Relaxed)
    }

    /// auth-service: requests from the first byte of their head until their answer is out
    /// (what a graceful stop waits for).
    pub fn requests_in_progress(&self) -> usize {
        self.shared.in_progress.load(SeqCst)
    }

    /// auth-service: stops accepting connections. Connections already open close after
    /// their current answer; requests already received are still answered.
    pub fn stop_accepting(&self) {
        self.shared.draining.store(true, SeqCst);
        let _ = self.listener.shutdown();
    }

    /// auth-service: takes no more requests: what is still queued is dropped (each answered
    /// 503) and every thread blocked in `recv` returns an error.
    pub fn close(&self) {
        self.stop_accepting();
        self.shared.messages.close();
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.shared.messages.pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(rq),
            None => Err(IoError::new(IoErrorKind::Other, "thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.shared.messages.pop_timeout(timeout) {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.shared.messages.try_pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Unblock one thread stuck in recv() or incoming_requests().
    pub fn unblock(&self) {
        self.shared.messages.unblock();
    }
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

/// auth-service: accepts connections until the server stops, each served by a thread of a
/// pool. Past `max_connections`, or when no thread or descriptor is left, the new connection
/// is closed at once and the loop goes on. An error that says the listening socket itself is
/// gone ends the loop, and then `recv` reports it, so that the program can stop rather than
/// wait for requests that will never come; a panic does the same.
fn accept_loop(listener: &Listener, shared: &Arc<Shared>, pool: &util::TaskPool) {
    /// Reports the end of the loop to `recv` unless the server is stopping.
    struct Ended<'a>(&'a Shared);
    impl Drop for Ended<'_> {
        fn drop(&mut self) {
            if !self.0.draining() {
                let e = IoError::new(IoErrorKind::Other, "the accept loop ended");
                let _ = self.0.messages.push(e.into());
            }
        }
    }
    let ended = Ended(shared);

    // A descriptor kept in reserve: when accept() fails for want of descriptors, closing this
    // one lets the waiting connection be accepted and closed, instead of left in the backlog.
    let mut spare = File::open("/dev/null").ok();
    loop {
        let (stream, remote_addr) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(_) if shared.draining() => break,
            Err(e) if is_out_of_descriptors(&e) => {
                shared.refused.fetch_add(1, Relaxed);
                match spare.take() {
                    Some(file) => {
                        drop(file);
                        drop(listener.accept());
                    }
                    None => thread::sleep(Duration::from_millis(50)),
                }
                spare = File::open("/dev/null").ok();
                continue;
            }
            Err(e) if is_transient_accept_error(&e) => {
                if is_out_of_memory(&e) {
                    thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
            Err(e) => {
                let _ = shared.messages.push(e.into());
                std::mem::forget(ended);
                return;
            }
        };
        if shared.draining() {
            break;
        }
        if shared.open.fetch_add(1, SeqCst) >= shared.limits.max_connections {
            shared.open.fetch_sub(1, SeqCst);
            shared.refused.fetch_add(1, Relaxed);
            continue;
        }
        let open = OpenConnection(Arc::clone(shared));
        let connection_shared = Arc::clone(shared);
        let task = Box::new(move || {
            let _open = open;
            ClientConnection::new(stream, remote_addr, connection_shared).serve();
        });
        // No thread for it: the task, and the connection in it, are dropped (closed).
        if pool.spawn(task).is_err() {
            shared.refused.fetch_add(1, Relaxed);
        }
    }
    drop(ended);
}

/// auth-service: accept() errors that say nothing about the listening socket. Upstream
/// stopped the server for good on any error, such as a client gone before its connection was
/// accepted.
fn is_transient_accept_error(e: &IoError) -> bool {
    matches!(
        e.kind(),
        IoErrorKind::WouldBlock
            | IoErrorKind::TimedOut
            | IoErrorKind::Interrupted
            | IoErrorKind::ConnectionAborted
            | IoErrorKind::ConnectionReset
    ) || is_out_of_memory(e)
}

/// EMFILE or ENFILE.
fn is_out_of_descriptors(e: &IoError) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// ENOBUFS or ENOMEM: passes once connections close.
fn is_out_of_memory(e: &IoError) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ENOMEM))
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close();

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
