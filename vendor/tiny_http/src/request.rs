use std::io::{self, Cursor, Read, Write};

use std::fmt;
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::Thread;

use crate::connection::Connection;
use crate::{BodyProblem, HTTPVersion, Header, Method, Response, Shared};

/// Represents an HTTP request made by a client.
///
/// A `Request` object is what is produced by the server, and is your what your code must
/// analyse and answer.
///
/// This object implements the `Send` trait, therefore you can dispatch your requests to
/// worker threads.
///
/// # auth-service: complete requests
///
/// The request arrives with its body already read in full by its connection's thread, so
/// nothing a worker does with it waits on the client: [`as_reader`](Request::as_reader) reads
/// from memory, and the answer ([`respond`](Request::respond) or what is written to
/// [`into_writer`](Request::into_writer)) is sent when it is complete, without waiting (see
/// [`Answer`]). A body that could not be read is reported by
/// [`body_problem`](Request::body_problem), and the connection closes after the answer.
///
/// If a `Request` object is dropped without `respond` being called, a JSON 503 is sent.
pub struct Request {
    body: Cursor<Vec<u8>>,
    body_problem: Option<BodyProblem>,

    // if this writer is empty, then the request has been answered
    answer: Option<AnswerWriter>,

    remote_addr: Option<SocketAddr>,

    method: Method,

    path: String,

    http_version: HTTPVersion,

    headers: Vec<Header>,

    closes_connection: bool,
}

/// auth-service: what a connection's thread and the worker answering its request share.
pub(crate) struct Link {
    pub(crate) stream: Connection,
    answer: Mutex<Answer>,
    /// The connection's thread, woken when an answer is done.
    thread: Thread,
}

/// auth-service: where a connection's last request stands.
pub(crate) enum Answer {
    /// No request of this connection is with a worker.
    Idle,
    /// A worker has the request.
    Pending,
    /// The worker's answer went out whole.
    Sent,
    /// The socket would not take the whole answer without waiting: the rest, for the
    /// connection's thread to write (the connection then closes), and the count of requests
    /// in progress that it still belongs to.
    Unsent(Vec<u8>, InFlight),
}

impl Link {
    /// A link for `stream`, whose answers wake the calling thread.
    pub(crate) fn new(stream: Connection) -> Link {
        Link {
            stream,
            answer: Mutex::new(Answer::Idle),
            thread: std::thread::current(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Answer> {
        self.answer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// auth-service: one request counted as in progress (see `Server::requests_in_progress`) from
/// the first byte of its head until its answer is out.
pub(crate) struct InFlight(Arc<Shared>);

impl InFlight {
    pub(crate) fn new(shared: &Arc<Shared>) -> InFlight {
        shared.request_started();
        InFlight(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// auth-service: a worker's answer, gathered in memory and sent when the writer is dropped.
///
/// The bytes go out in one `send` that does not wait: a client that reads its answers (and
/// one that does not, while its socket buffers have room) gets them from the worker at once,
/// with no further hand-off. When the socket will not take them all, the rest goes back to
/// the connection's thread, which writes it under the write deadline and closes the
/// connection; reading is shut down here so that a thread blocked reading the next request
/// wakes up to do so. The worker never waits.
struct AnswerWriter {
    link: Arc<Link>,
    bytes: Vec<u8>,
    in_flight: Option<InFlight>,
}

impl Write for AnswerWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for AnswerWriter {
    fn drop(&mut self) {
        let sent = self.link.stream.send_without_waiting(&self.bytes);
        let mut answer = self.link.lock();
        if sent == self.bytes.len() {
            *answer = Answer::Sent;
        } else {
            let rest = self.bytes.split_off(sent);
            let in_flight = self.in_flight.take().expect("an answer is sent once");
            *answer = Answer::Unsent(rest, in_flight);
            let _ = self.link.stream.shutdown(Shutdown::Read);
        }
        drop(answer);
        self.link.thread.unpark();
    }
}

impl Request {
    /// auth-service: a request read in full by its connection's thread.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        link: Arc<Link>,
        in_flight: InFlight,
        method: Method,
        path: String,
        http_version: HTTPVersion,
        headers: Vec<Header>,
        remote_addr: Option<SocketAddr>,
        body: Result<Vec<u8>, BodyProblem>,
        closes_connection: bool,
    ) -> Request {
        let (body, body_problem) = match body {
            Ok(body) => (body, None),
            Err(problem) => (Vec::new(), Some(problem)),
        };
        Request {
            body: Cursor::new(body),
            body_problem,
            answer: Some(AnswerWriter {
                link,
                bytes: Vec::new(),
                in_flight: Some(in_flight),
            }),
            remote_addr,
            method,
            path,
            http_version,
            headers,
            closes_connection,
        }
    }

    /// Returns true if the request was made through HTTPS. auth-service: never (this copy
    /// serves plain HTTP only, behind a TLS proxy).
    #[inline]
    pub fn secure(&self) -> bool {
        false
    }

    /// Returns the method requested by the client (eg. `GET`, `POST`, etc.).
    #[inline]
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Returns the resource requested by the client.
    #[inline]
    pub fn url(&self) -> &str {
        &self.path
    }

    /// Returns a list of all headers sent by client.
    #[inline]
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Returns the HTTP version of the request.
    #[inline]
    pub fn http_version(&self) -> &HTTPVersion {
        &self.http_version
    }

    /// Returns the length of the body in bytes; `None` when it could not be read (see
    /// [`body_problem`](Request::body_problem)).
    #[inline]
    pub fn body_length(&self) -> Option<usize> {
        match self.body_problem {
            None => Some(self.body.get_ref().len()),
            Some(_) => None,
        }
    }

    /// auth-service: why the body could not be read in full, if it could not. The request is
    /// then answered without one, and the connection closes after the answer.
    #[inline]
    pub fn body_problem(&self) -> Option<BodyProblem> {
        self.body_problem
    }

    /// auth-service: whether the connection closes after this request's answer (the client
    /// asked for it, spoke HTTP/1.0 without keep-alive, or its body was refused): an answer
    /// may say so with `Connection: close`.
    #[inline]
    pub fn closes_connection(&self) -> bool {
        self.closes_connection
    }

    /// Returns the address of the client that sent this request.
    ///
    /// The address is always `Some` for TCP listeners, but always `None` for UNIX listeners
    /// (as the remote address of a UNIX client is almost always unnamed).
    #[inline]
    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    /// Allows to read the body of the request (already in memory).
    #[inline]
    pub fn as_reader(&mut self) -> &mut dyn Read {
        &mut self.body
    }

    /// Turns the `Request` into a writer for a raw answer (status line, headers and body),
    /// which is sent when the writer is dropped.
    #[inline]
    pub fn into_writer(mut self) -> Box<dyn Write + Send + 'static> {
        Box::new(self.answer.take().expect("a request is answered once"))
    }

    /// Sends a response to this request.
    #[inline]
    pub fn respond<R>(mut self, response: Response<R>) -> Result<(), io::Error>
    where
        R: Read,
    {
        self.respond_impl(response)
    }

    fn respond_impl<R>(&mut self, response: Response<R>) -> Result<(), io::Error>
    where
        R: Read,
    {
        let mut writer = self.answer.take().expect("a request is answered once");
        let do_not_send_body = self.method == Method::Head;
        response.raw_print(
            &mut writer,
            self.http_version.clone(),
            &self.headers,
            do_not_send_body,
            None,
        )
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(
            formatter,
            "Request({} {} from {:?})",
            self.method, self.path, self.remote_addr
        )
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.answer.is_some() {
            let body = r#"{"message":"service unavailable"}"#;
            let response = Response::from_string(body)
                .with_status_code(503)
                .with_header(crate::Header {
                    field: "Content-Type".parse().expect("a valid header name"),
                    value: "application/json".parse().expect("a valid header value"),
                });
            let _ = self.respond_impl(response); // ignoring any potential error
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Request;

    #[test]
    fn must_be_send() {
        #![allow(dead_code)]
        fn f<T: Send>(_: &T) {}
        fn bar(rq: &Request) {
            f(rq);
        }
    }
}
