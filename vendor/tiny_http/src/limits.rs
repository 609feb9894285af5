//! auth-service: the bounds and deadlines every connection is held to.
//!
//! Upstream bounds neither a request head nor the time a client takes to send one, reads a
//! body on the worker that answers it, and spawns a thread for every connection until
//! `thread::spawn` panics. With these limits a connection's own thread reads the whole request
//! (see `client.rs`) and gives up on it at the first bound it passes, so a client that is slow,
//! broken or hostile costs its own connection and never a worker.

use std::time::Duration;

/// The bounds and deadlines of [`Server::from_listener_with_limits`](crate::Server).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once. Past it a new connection is closed as soon as it is accepted.
    pub max_connections: usize,
    /// The longest request line; a longer one is answered 414.
    pub max_request_line: usize,
    /// The longest request head (request line and header fields); a longer one is 431.
    pub max_head: usize,
    /// The most header fields in a head; more is 431.
    pub max_header_fields: usize,
    /// The largest body. A `Content-Length` above it is refused before a byte of the body is
    /// read, a chunked body as soon as it passes it ([`BodyProblem::TooLarge`]).
    ///
    /// [`BodyProblem::TooLarge`]: crate::BodyProblem::TooLarge
    pub max_body: usize,
    /// The longest chunk-size line of a chunked body (with its extensions).
    pub max_chunk_line: usize,
    /// Time for a whole head to arrive, from its first byte (or, on a new connection, from
    /// the connection). Past it the client gets 408 and the connection closes.
    pub head_timeout: Duration,
    /// Time for a whole body to arrive once its head has.
    pub body_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time an answer may take to be written out (a client that does not read it).
    pub write_timeout: Duration,
    /// Stack size of a connection's thread: it parses and buffers, nothing deeper.
    pub connection_stack: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_request_line: 8 * 1024,
            max_head: 16 * 1024,
            max_header_fields: 100,
            max_body: 64 * 1024,
            max_chunk_line: 4 * 1024,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            connection_stack: 256 * 1024,
        }
    }
}
