//! auth-service: one connection, served by a thread of its own. A rewrite of upstream's
//! `ClientConnection`, which handed a request to a worker as soon as its head was parsed and
//! let the worker read the body from the socket and write the answer to it: a client that sent
//! slowly, or did not read, held the worker.
//!
//! Here the connection's thread reads each request in full, head and body, under the bounds
//! and deadlines of [`Limits`], and only then queues it for the workers. A worker's answer is
//! sent without waiting (see [`crate::request::Answer`]): whatever the socket will not take at
//! once comes back to this thread, which writes it under the write deadline and then closes
//! the connection. So no client, however slow, holds a worker; it holds its own thread, and
//! the accept loop caps how many of those there are.
//!
//! Requests on one connection are answered one at a time, in order: the next one is read while
//! a worker answers the last, but queued only once that answer is out.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ascii::AsciiString;

use crate::common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
use crate::connection::Connection;
use crate::request::{Answer, InFlight, Link, Request};
use crate::{BodyProblem, Limits, Shared};

/// How long a closing connection keeps reading (and discarding) what the client still sends
/// after an error answer, so that the close does not reset the connection before the client
/// has read the answer; and the most it reads meanwhile.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// The smallest read; and the largest for a head, so a head is never read far past its bound.
const READ_CHUNK: usize = 4 * 1024;
/// The largest read, for a body.
const MAX_READ: usize = 16 * 1024;

/// A connection and what its thread knows of it.
pub(crate) struct ClientConnection {
    link: Arc<Link>,
    remote_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    input: Input,
    /// The receive timeout the socket has now, to set it only when it changes.
    read_timeout: Option<Duration>,
}

/// Why the connection stops: after an answer it was asked to close after, or without one.
enum Stop {
    /// Close now.
    Close,
    /// Close after reading off, for a moment, what the client may still be sending (a body
    /// that was refused).
    Linger,
}

/// What reading a request head produced.
struct Head {
    method: Method,
    target: String,
    version: HTTPVersion,
    headers: Vec<Header>,
}

/// A head this thread answers itself (it never reaches a worker), then closes.
#[derive(Debug, PartialEq, Eq)]
struct Refusal(u16, &'static str);

impl Refusal {
    const BAD_REQUEST: Refusal = Refusal(400, "bad request");
    const TIMEOUT: Refusal = Refusal(408, "request timeout");
}

/// How the body's length is known (RFC 9112 section 6.3).
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
}

/// Why reading stopped short.
enum Short {
    /// The client closed the connection, or the socket failed.
    Closed,
    /// A deadline passed.
    TimedOut,
}

impl ClientConnection {
    pub(crate) fn new(
        stream: Connection,
        remote_addr: Option<SocketAddr>,
        shared: Arc<Shared>,
    ) -> ClientConnection {
        ClientConnection {
            link: Arc::new(Link::new(stream)),
            remote_addr,
            shared,
            input: Input::default(),
            read_timeout: None,
        }
    }

    /// Serves the connection's requests until it closes.
    pub(crate) fn serve(mut self) {
        let mut first = true;
        let stop = loop {
            match self.serve_one(first) {
                Ok(()) if !self.shared.draining() => first = false,
                // The server is stopping: this connection takes no further request.
                Ok(()) => break self.last_answer_then_close(),
                Err(stop) => break stop,
            }
        };
        self.close(stop);
    }

    fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Reads one request and queues it for the workers (or answers its head itself).
    fn serve_one(&mut self, first: bool) -> Result<(), Stop> {
        // Waiting for a request: on a new connection the head's deadline runs from the start,
        // on a kept-alive one the idle deadline does until its first byte.
        let wait = if first {
            self.limits().head_timeout
        } else {
            self.limits().idle_timeout
        };
        self.input.skip_empty_lines();
        if self.input.unread().is_empty() {
            self.input.shrink_when_idle();
            if self.fill_by(Instant::now() + wait).is_err() {
                return Err(self.last_answer_then_close());
            }
            self.input.skip_empty_lines();
        }
        let in_flight = InFlight::new(&self.shared);
        let head = match self.read_head() {
            Ok(head) => head,
            Err(refusal) => return self.refuse(refusal),
        };
        let mut closes = closes_after(&head);
        let body = match framing(&head) {
            Err(problem) => Err(problem),
            Ok(Framing::Length(n)) if n > self.limits().max_body as u64 => {
                Err(BodyProblem::TooLarge)
            }
            Ok(framing) => {
                let expects_continue = match expects_continue(&head) {
                    Ok(expects) => expects,
                    Err(refusal) => return self.refuse(refusal),
                };
                match self.read_body(&framing, expects_continue) {
                    Ok(body) => Ok(body),
                    Err(Some(problem)) => Err(problem),
                    // The client left mid-body: no one to answer.
                    Err(None) => return Err(self.last_answer_then_close()),
                }
            }
        };
        let refused = body.is_err();
        closes |= refused;
        // One request at a time: this one goes to the workers once the last one is answered.
        self.finish_previous()?;
        *self.link.lock() = Answer::Pending;
        let request = Request::new(
            Arc::clone(&self.link),
            in_flight,
            head.method,
            head.target,
            head.version,
            head.headers,
            self.remote_addr,
            body,
            closes,
        );
        if let Err(request) = self.shared.messages.push(request.into()) {
            // The server has stopped: nobody will answer.
            drop(request);
            return Err(Stop::Close);
        }
        if closes {
            return Err(match self.finish_previous() {
                Ok(()) if refused => Stop::Linger,
                Ok(()) => Stop::Close,
                Err(stop) => stop,
            });
        }
        Ok(())
    }

    /// Waits until the worker that has this connection's last request has answered it. When
    /// the socket did not take the whole answer at once, writes the rest here, under the write
    /// deadline, and asks the caller to close (the worker has already stopped reading).
    fn finish_previous(&mut self) -> Result<(), Stop> {
        loop {
            let mut answer = self.link.lock();
            match std::mem::replace(&mut *answer, Answer::Idle) {
                Answer::Idle | Answer::Sent => return Ok(()),
                Answer::Pending => {
                    *answer = Answer::Pending;
                    drop(answer);
                    // Woken by the worker's answer (spurious wake-ups only loop once more).
                    std::thread::park();
                }
                Answer::Unsent(rest, in_flight) => {
                    drop(answer);
                    let _ = self.write_by(&rest, Instant::now() + self.limits().write_timeout);
                    drop(in_flight);
                    return Err(Stop::Close);
                }
            }
        }
    }

    /// The connection ends once its last answer is out.
    fn last_answer_then_close(&mut self) -> Stop {
        self.finish_previous().err().unwrap_or(Stop::Close)
    }

    /// Answers a head that never reaches a worker, then closes.
    fn refuse(&mut self, Refusal(status, message): Refusal) -> Result<(), Stop> {
        self.finish_previous()?;
        let body = format!("{{\"message\":\"{message}\"}}");
        let answer = format!(
            "HTTP/1.1 {status} {}\r\nDate: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            StatusCode(status).default_reason_phrase(),
            httpdate::fmt_http_date(SystemTime::now()),
            body.len()
        );
        let _ = self.write_by(
            answer.as_bytes(),
            Instant::now() + self.limits().write_timeout,
        );
        Err(Stop::Linger)
    }

    /// Reads up to the end of the head and parses it, within the head's bounds and deadline.
    fn read_head(&mut self) -> Result<Head, Refusal> {
        let deadline = Instant::now() + self.limits().head_timeout;
        let mut scan = HeadScan::default();
        loop {
            let unread = self.input.unread();
            if let Some(end) = scan.find_end(unread) {
                if scan.request_line_len > self.limits().max_request_line {
                    return Err(Refusal(414, "request line too long"));
                }
                if end > self.limits().max_head {
                    return Err(Refusal(431, "request head too large"));
                }
                let head = parse_head(&unread[..end], self.limits().max_header_fields);
                self.input.consume(end);
                return head;
            }
            if scan.in_request_line() && unread.len() > self.limits().max_request_line {
                return Err(Refusal(414, "request line too long"));
            }
            if unread.len() > self.limits().max_head {
                return Err(Refusal(431, "request head too large"));
            }
            match self.fill_by(deadline) {
                Ok(()) => {}
                Err(Short::TimedOut) => return Err(Refusal::TIMEOUT),
                // Gone mid-head: an answer would reach no one, and the write fails quietly.
                Err(Short::Closed) => return Err(Refusal::BAD_REQUEST),
            }
        }
    }

    /// Reads the body the framing announces, within `max_body` and the body's deadline.
    /// `Err(None)` when the client went away.
    fn read_body(
        &mut self,
        framing: &Framing,
        expects_continue: bool,
    ) -> Result<Vec<u8>, Option<BodyProblem>> {
        let deadline = Instant::now() + self.limits().body_timeout;
        if expects_continue
            && !matches!(framing, Framing::Length(0))
            && self.input.unread().is_empty()
        {
            // RFC 9110 10.1.1: the client waits for this before sending the body. A 100 is
            // an interim status line and nothing else.
            self.finish_previous().map_err(|_| None)?;
            self.write_by(b"HTTP/1.1 100 Continue\r\n\r\n", deadline)
                .map_err(|_| None)?;
        }
        let short = |s: Short| match s {
            Short::Closed => None,
            Short::TimedOut => Some(BodyProblem::TimedOut),
        };
        match *framing {
            Framing::Length(n) => {
                let n = n as usize; // checked against max_body before
                self.need(n, deadline).map_err(short)?;
                Ok(self.input.take(n))
            }
            Framing::Chunked => {
                let mut body = Vec::new();
                loop {
                    let line = self.line(self.limits().max_chunk_line, deadline)?;
                    let size = chunk_size(&line).ok_or(Some(BodyProblem::BadFraming))?;
                    if size == 0 {
                        self.skip_trailers(deadline)?;
                        return Ok(body);
                    }
                    if size > (self.limits().max_body - body.len()) as u64 {
                        return Err(Some(BodyProblem::TooLarge));
                    }
                    let size = size as usize;
                    self.need(size + 2, deadline).map_err(short)?;
                    let data = self.input.unread();
                    if &data[size..size + 2] != b"\r\n" {
                        return Err(Some(BodyProblem::BadFraming));
                    }
                    body.extend_from_slice(&data[..size]);
                    self.input.consume(size + 2);
                }
            }
        }
    }

    /// The next line of a chunked body, without its line ending; at most `max` bytes.
    fn line(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>, Option<BodyProblem>> {
        let mut scanned = 0;
        loop {
            let unread = self.input.unread();
            if let Some(i) = unread[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + i;
                if end > max {
                    return Err(Some(BodyProblem::BadFraming));
                }
                let line = unread[..end].strip_suffix(b"\r").unwrap_or(&unread[..end]);
                let line = line.to_vec();
                self.input.consume(end + 1);
                return Ok(line);
            }
            scanned = unread.len();
            if scanned > max {
                return Err(Some(BodyProblem::BadFraming));
            }
            self.fill_by(deadline).map_err(|s| match s {
                Short::Closed => None,
                Short::TimedOut => Some(BodyProblem::TimedOut),
            })?;
        }
    }

    /// Reads past a chunked body's trailer section, which this server ignores; as bounded as
    /// a head.
    fn skip_trailers(&mut self, deadline: Instant) -> Result<(), Option<BodyProblem>> {
        let (max_head, max_fields) = (self.limits().max_head, self.limits().max_header_fields);
        let mut size = 0;
        for _ in 0..=max_fields {
            let line = self.line(max_head, deadline)?;
            if line.is_empty() {
                return Ok(());
            }
            size += line.len();
            if size > max_head {
                break;
            }
        }
        Err(Some(BodyProblem::BadFraming))
    }

    /// Reads until `n` bytes are unread, the buffer growing as they arrive (not by what was
    /// declared: a client that declares 64 KiB and sends 10 costs 10).
    fn need(&mut self, n: usize, deadline: Instant) -> Result<(), Short> {
        while self.input.unread().len() < n {
            self.input
                .reserve((n - self.input.unread().len()).min(MAX_READ));
            self.fill_by(deadline)?;
        }
        Ok(())
    }

    /// One read into the input, waiting at most until `deadline` (rounded up to a whole
    /// second: setting the socket's timeout is a system call, and in whole seconds it is the
    /// same for every read of a request that arrives at once, so such a request costs none).
    fn fill_by(&mut self, deadline: Instant) -> Result<(), Short> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Short::TimedOut);
            }
            let timeout = Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0));
            if self.read_timeout != Some(timeout) {
                let _ = self.link.stream.set_read_timeout(Some(timeout));
                self.read_timeout = Some(timeout);
            }
            match self.input.fill(&self.link.stream) {
                Ok(0) => return Err(Short::Closed),
                Ok(_) => return Ok(()),
                // Interrupted, or timed out: the deadline check above says which (a timeout is
                // rounded up, so by then the deadline has passed).
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Err(Short::Closed),
            }
        }
    }

    /// Writes all of `bytes` by `deadline`.
    fn write_by(&self, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
        while !bytes.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ErrorKind::TimedOut.into());
            }
            self.link.stream.set_write_timeout(Some(left))?;
            match (&self.link.stream).write(bytes) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Closes the connection; after a refused body, reads off for a moment what the client is
    /// still sending, so that the answer is read before the close rather than lost to a reset.
    fn close(mut self, stop: Stop) {
        if let Stop::Linger = stop {
            let _ = self.link.stream.shutdown(Shutdown::Write);
            let deadline = Instant::now() + LINGER;
            let mut discarded = 0;
            while discarded < LINGER_BYTES {
                self.input.clear();
                match self.fill_by(deadline) {
                    Ok(()) => discarded += self.input.unread().len(),
                    Err(_) => break,
                }
            }
        }
        let _ = self.link.stream.shutdown(Shutdown::Both);
    }
}

/// Whether the connection ends after this request's answer: the client asked, or spoke
/// HTTP/1.0 without asking to keep it alive.
fn closes_after(head: &Head) -> bool {
    let connection = head
        .headers
        .iter()
        .filter(|h| h.field.equiv("Connection"))
        .map(|h| h.value.as_str().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    let option = |name: &str| connection.split(',').any(|o| o.trim() == name);
    option("close")
        || option("upgrade")
        || (head.version == HTTPVersion(1, 0) && !option("keep-alive"))
}

/// Whether the client waits for `100 Continue` before sending the body; 417 for any other
/// expectation. HTTP/1.0 clients' expectations are ignored (RFC 9110 10.1.1).
fn expects_continue(head: &Head) -> Result<bool, Refusal> {
    if head.version < (1, 1) {
        return Ok(false);
    }
    let mut expects = false;
    for h in head.headers.iter().filter(|h| h.field.equiv("Expect")) {
        if h.value.as_str().eq_ignore_ascii_case("100-continue") {
            expects = true;
        } else {
            return Err(Refusal(417, "expectation failed"));
        }
    }
    Ok(expects)
}

/// How the body's length is known, as RFC 9112 section 6.3 asks: `Transfer-Encoding: chunked`
/// alone, or `Content-Length` values that are all the same number, or no body. Anything else
/// (a transfer coding other than chunked alone, both headers, a length that is not digits, two
/// lengths that differ) cannot be framed safely, and guessing is how requests get smuggled.
fn framing(head: &Head) -> Result<Framing, BodyProblem> {
    let values = |name: &'static str| -> Vec<String> {
        head.headers
            .iter()
            .filter(|h| h.field.equiv(name))
            .flat_map(|h| {
                h.value
                    .as_str()
                    .split(',')
                    .map(|v| v.trim().to_ascii_lowercase())
            })
            .collect()
    };
    let codings = values("Transfer-Encoding");
    let lengths = values("Content-Length");
    if !codings.is_empty() {
        let only_chunked = codings.len() == 1 && codings[0] == "chunked";
        // HTTP/1.0 has no transfer codings: such a message is faulty (RFC 9112 6.1).
        if !only_chunked || !lengths.is_empty() || head.version < (1, 1) {
            return Err(BodyProblem::BadFraming);
        }
        return Ok(Framing::Chunked);
    }
    let mut length = None;
    for value in &lengths {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BodyProblem::BadFraming);
        }
        // Digits past what a u64 holds are simply too large.
        let n = value.bytes().fold(0u64, |n, d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
        if length.is_some_and(|l| l != n) {
            return Err(BodyProblem::BadFraming);
        }
        length = Some(n);
    }
    Ok(Framing::Length(length.unwrap_or(0)))
}

/// A chunk-size line's size (hex digits, then optional `;` extensions); `None` when malformed or
/// beyond a u64.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let digits = line[..end].trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// Where a request head ends, found as its bytes arrive without scanning any byte twice.
#[derive(Default)]
struct HeadScan {
    /// Bytes already looked at.
    pos: usize,
    /// Where the line being scanned starts.
    line_start: usize,
    /// The request line's length, once its end has been seen.
    request_line_len: usize,
}

impl HeadScan {
    fn in_request_line(&self) -> bool {
        self.line_start == 0
    }

    /// The index just past the empty line that ends the head, once it is in `bytes`.
    fn find_end(&mut self, bytes: &[u8]) -> Option<usize> {
        while let Some(i) = bytes[self.pos..].iter().position(|&b| b == b'\n') {
            let newline = self.pos + i;
            let line = &bytes[self.line_start..newline];
            self.pos = newline + 1;
            if self.line_start == 0 {
                self.request_line_len = line.strip_suffix(b"\r").unwrap_or(line).len();
            } else if line.is_empty() || line == b"\r" {
                return Some(newline + 1);
            }
            self.line_start = newline + 1;
        }
        self.pos = bytes.len();
        None
    }
}

/// `tchar` of RFC 9110 section 5.6.2: what a method or a field name is made of.
fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a whole head (its request line, header lines and the empty line). Strict where
/// leniency is how one message is read as two: no white space before a field's colon, no
/// line folding, no control characters, nothing but ASCII.
fn parse_head(head: &[u8], max_fields: usize) -> Result<Head, Refusal> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BAD_REQUEST);
    };
    if !is_token(method) || target.is_empty() || !target.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::BAD_REQUEST);
    }
    // A later version is refused only once the head is known to be well formed.
    let version = match version {
        b"HTTP/1.1" => Some(HTTPVersion(1, 1)),
        b"HTTP/1.0" => Some(HTTPVersion(1, 0)),
        b"HTTP/2.0" | b"HTTP/2" | b"HTTP/3.0" | b"HTTP/3" => None,
        _ => return Err(Refusal::BAD_REQUEST),
    };
    let ascii = |bytes: &[u8]| AsciiString::from_ascii(bytes).map_err(|_| Refusal::BAD_REQUEST);
    let method = Method::from_str(ascii(method)?.as_ref()).map_err(|_| Refusal::BAD_REQUEST)?;
    let target = ascii(target)?.to_string();

    let mut headers = Vec::new();
    for line in lines.take_while(|line| !line.is_empty()) {
        if headers.len() == max_fields {
            return Err(Refusal(431, "too many header fields"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Refusal::BAD_REQUEST)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.trim_ascii();
        let visible = |&b: &u8| b == b'\t' || (b' '..=b'~').contains(&b);
        if !is_token(name) || !value.iter().all(visible) {
            return Err(Refusal::BAD_REQUEST);
        }
        headers.push(Header {
            field: HeaderField::from_bytes(name).map_err(|_| Refusal::BAD_REQUEST)?,
            value: ascii(value)?,
        });
    }
    let version = version.ok_or(Refusal(505, "http version not supported"))?;
    Ok(Head {
        method,
        target,
        version,
        headers,
    })
}

/// What has been read from the socket and not yet consumed.
#[derive(Default)]
struct Input {
    buf: Vec<u8>,
    start: usize,
}

impl Input {
    fn unread(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// The first `n` unread bytes, consumed; without a copy when they are all there is.
    fn take(&mut self, n: usize) -> Vec<u8> {
        if self.start == 0 && self.buf.len() == n {
            return std::mem::take(&mut self.buf);
        }
        let taken = self.unread()[..n].to_vec();
        self.consume(n);
        taken
    }

    /// Drops the empty lines a client may send between requests (RFC 9112 2.2).
    fn skip_empty_lines(&mut self) {
        let n = self
            .unread()
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        self.consume(n);
    }

    /// Makes room for `n` more bytes, for a body of known length: exactly, so that the buffer
    /// is not doubled past what the body needs.
    fn reserve(&mut self, n: usize) {
        self.compact();
        self.buf.reserve_exact(n);
    }

    /// A connection waiting for its next request keeps no large buffer.
    fn shrink_when_idle(&mut self) {
        if self.buf.capacity() > 2 * READ_CHUNK {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// One read from `stream` into the spare room (at least `READ_CHUNK`, at most `MAX_READ`).
    fn fill(&mut self, mut stream: &Connection) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.compact();
            self.buf.reserve(READ_CHUNK);
        }
        let len = self.buf.len();
        let room = (self.buf.capacity() - len).min(MAX_READ);
        self.buf.resize(len + room, 0);
        let read = stream.read(&mut self.buf[len..]);
        self.buf.truncate(len + *read.as_ref().unwrap_or(&0));
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Head, Refusal> {
        parse_head(text.as_bytes(), 100)
    }

    fn framed(text: &str) -> Result<Framing, BodyProblem> {
        framing(&head(text).unwrap())
    }

    #[test]
    fn a_head_parses_into_its_parts() {
        let h = head("POST /users?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length:  5 \r\n\r\n").unwrap();
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.target, "/users?x=1");
        assert_eq!(h.version, HTTPVersion(1, 1));
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.headers[1].value.as_str(), "5");
        assert!(head("GET / HTTP/1.0\n\n").is_ok(), "bare line feeds");
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            "GET / HTTP/1.1 extra\r\n\r\n",
            "GET /\r\n\r\n",
            "G\x1bT / HTTP/1.1\r\n\r\n",
            "GET\tX / HTTP/1.1\r\n\r\n",
            "GET /a\x7fb HTTP/1.1\r\n\r\n",
            "GET / HTTP/0.9\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            "GET / HTTP/1.1\r\nX: caf\u{e9}\r\n\r\n",
        ] {
            assert_eq!(head(bad).err(), Some(Refusal::BAD_REQUEST), "{bad:?}");
        }
        assert_eq!(head("GET / HTTP/2.0\r\n\r\n").err().map(|r| r.0), Some(505));
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let refused = head(&format!("GET / HTTP/1.1\r\n{many}\r\n")).err();
        assert_eq!(refused.map(|r| r.0), Some(431));
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        assert_eq!(framed("GET / HTTP/1.1\r\n\r\n"), Ok(Framing::Length(0)));
        assert_eq!(
            framed("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framed("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\n"),
            Ok(Framing::Length(3))
        );
        assert_eq!(
            framed("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Ok(Framing::Length(u64::MAX))
        );
        assert_eq!(
            framed("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        for bad in [
            "Content-Length: -1",
            "Content-Length: abc",
            "Content-Length: 1e3",
            "Content-Length: +5",
            "Content-Length: ",
            "Content-Length: 5\r\nContent-Length: 6",
            "Content-Length: 5, 6",
            "Transfer-Encoding: gzip",
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 5",
        ] {
            let text = format!("POST / HTTP/1.1\r\n{bad}\r\n\r\n");
            assert_eq!(framed(&text), Err(BodyProblem::BadFraming), "{bad:?}");
        }
        assert_eq!(
            framed("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(BodyProblem::BadFraming)
        );
    }

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"A;name=value"), Some(10));
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"-1"), None);
        assert_eq!(chunk_size(b"0x10"), None);
        assert_eq!(chunk_size(b"11111111111111111"), None);
    }

    #[test]
    fn the_end_of_a_head_is_found_as_it_arrives() {
        let text = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nnext";
        let mut scan = HeadScan::default();
        for n in 0..text.len() - 4 {
            assert_eq!(scan.find_end(&text[..n]), None, "{n}");
        }
        assert_eq!(scan.find_end(text), Some(text.len() - 4));
        assert_eq!(scan.request_line_len, 14);
    }

    #[test]
    fn connection_options_decide_keep_alive() {
        let closes = |text: &str| closes_after(&head(text).unwrap());
        assert!(!closes("GET / HTTP/1.1\r\n\r\n"));
        assert!(closes("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(closes("GET / HTTP/1.0\r\n\r\n"));
        assert!(!closes("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }
}
