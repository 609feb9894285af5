//! The client's side of the black-box tests: what a client sees ([`Resp`], however it was
//! read), the HTTP client ([`Client`]), and raw connections for tests that write the bytes
//! themselves.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use auth_service::app::Reply;
use serde_json::Value;
use ureq::Agent;

/// The content type of every form the tests send.
pub const FORM: &str = "application/x-www-form-urlencoded";

/// What a client saw.
#[derive(Debug, Clone)]
#[must_use = "a test that ignores an answer checks nothing: assert on it, or use an _ok method"]
pub struct Resp {
    /// The status line's version (`HTTP/1.1`); empty when there was none (or no HTTP at all:
    /// the app in process).
    pub version: String,
    /// 0 when there was no status line.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
    /// The body as JSON; `Value::Null` when it is not JSON.
    pub json: Value,
}

impl Resp {
    fn new(version: String, status: u16, headers: Vec<(String, String)>, body: &[u8]) -> Resp {
        let text = String::from_utf8_lossy(body).into_owned();
        Resp {
            version,
            status,
            headers,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

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

    /// A response head (the status line and the header lines, without the blank line), and
    /// `body`.
    fn from_head(head: &[u8], body: &[u8]) -> Resp {
        let head = String::from_utf8_lossy(head);
        let mut lines = head.split("\r\n");
        let mut status_line = lines.next().unwrap_or_default().split_whitespace();
        let version = status_line
            .next()
            .filter(|v| v.starts_with("HTTP/"))
            .unwrap_or_default();
        let status = match version {
            "" => 0,
            _ => status_line.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        };
        let headers = lines
            .filter_map(|line| {
                let (key, value) = line.split_once(':')?;
                Some((key.trim().to_owned(), value.trim().to_owned()))
            })
            .collect();
        Resp::new(version.to_owned(), status, headers, body)
    }

    /// The whole response at the start of `bytes` (its body as long as its `Content-Length`
    /// says), and how many bytes it takes; `None` until all of it is there.
    pub fn parse(bytes: &[u8]) -> Option<(Resp, usize)> {
        let (head, start) = Resp::parse_head(bytes)?;
        let length = head
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let body = bytes.get(start..start + length)?;
        Some((
            Resp::new(head.version, head.status, head.headers, body),
            start + length,
        ))
    }

    /// The head at the start of `bytes` alone, as the answer to a `HEAD` (whose
    /// `Content-Length` is GET's, with no body), and how many bytes it takes.
    pub fn parse_head(bytes: &[u8]) -> Option<(Resp, usize)> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        Some((Resp::from_head(&bytes[..end], b""), end + 4))
    }

    /// Every whole response in `bytes`, in order.
    pub fn all(mut bytes: &[u8]) -> Vec<Resp> {
        let mut all = Vec::new();
        while let Some((resp, size)) = Resp::parse(bytes) {
            bytes = &bytes[size..];
            all.push(resp);
        }
        all
    }

    /// Whatever a connection gave, read as one response: the head as far as it came, and
    /// everything after the blank line as the body.
    pub fn of(bytes: &[u8]) -> Resp {
        match bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => Resp::from_head(&bytes[..end], &bytes[end + 4..]),
            None => Resp::from_head(bytes, b""),
        }
    }

    fn of_ureq(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
        let mut response = result.expect("the request got an HTTP answer");
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = response.body_mut().read_to_vec().unwrap_or_default();
        Resp::new(
            format!("{:?}", response.version()),
            response.status().as_u16(),
            headers,
            &body,
        )
    }
}

/// Asserts the status, that the body is JSON, and its exact text (compact, keys sorted: what
/// the reference's `jsonify` sends).
#[track_caller]
pub fn expect(r: &Resp, status: u16, body: &str) {
    assert_eq!(
        (r.status, r.text.as_str()),
        (status, body),
        "unexpected answer: {r:?}"
    );
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
}

/// A reply of the app in this process, as a client would read it: the server sends its content
/// type as `Content-Type` and its headers as they are.
impl From<Reply> for Resp {
    fn from(reply: Reply) -> Resp {
        let mut headers = vec![("Content-Type".to_owned(), reply.content_type.to_owned())];
        headers.extend(reply.headers.into_iter().map(|(k, v)| (k.to_owned(), v)));
        Resp::new(String::new(), reply.status, headers, reply.body.as_bytes())
    }
}

/// An HTTP client that reports every status as an answer and follows no redirect.
fn agent() -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A client of the service at `addr`.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    /// The source address of each request, sent on a connection of its own that closes after
    /// it; `None`: ureq's pooled connections, from whatever address the system picks.
    from: Option<IpAddr>,
    agent: Agent,
}

impl Client {
    /// A client with connections of its own.
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            from: None,
            agent: agent(),
        }
    }

    /// This client sending from `from` (any 127.0.0.0/8 address works on Linux), for what the
    /// server counts per address.
    pub fn from(&self, from: IpAddr) -> Client {
        Client {
            from: Some(from),
            ..self.clone()
        }
    }
}

/// What a client of the service can do: one method per thing a user does, each a request made
/// through [`Api::send`], so that every way of reaching the service (HTTP, from a chosen source
/// address, the app in this process, a server whose secrets a test watches) speaks the same
/// words.
pub trait Api {
    /// One request: any method, extra headers, a raw body.
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp;

    /// A request with no body and, if there is a `session`, its cookie.
    fn get(&self, path: &str, session: Option<&str>) -> Resp {
        let cookie = session.map(|s| format!("session_id={s}"));
        self.send("GET", path, &cookie_header(&cookie), b"")
    }

    /// [`Api::get`] with `DELETE`.
    fn delete(&self, path: &str, session: Option<&str>) -> Resp {
        let cookie = session.map(|s| format!("session_id={s}"));
        self.send("DELETE", path, &cookie_header(&cookie), b"")
    }

    /// A form POST.
    fn post(&self, path: &str, pairs: &[(&str, &str)]) -> Resp {
        self.post_with(path, &[], pairs)
    }

    /// A form POST with extra headers.
    fn post_with(&self, path: &str, headers: &[(&str, &str)], pairs: &[(&str, &str)]) -> Resp {
        let mut all = vec![("Content-Type", FORM)];
        all.extend_from_slice(headers);
        self.send("POST", path, &all, form(pairs).as_bytes())
    }

    /// A form PUT.
    fn put(&self, path: &str, pairs: &[(&str, &str)]) -> Resp {
        self.send(
            "PUT",
            path,
            &[("Content-Type", FORM)],
            form(pairs).as_bytes(),
        )
    }

    /// `POST /users`: sign up.
    fn register(&self, email: &str, password: &str) -> Resp {
        self.post("/users", &[("email", email), ("password", password)])
    }

    /// `POST /sessions`: log in.
    fn log_in(&self, email: &str, password: &str) -> Resp {
        self.post("/sessions", &[("email", email), ("password", password)])
    }

    /// `GET /profile` with `session`'s cookie.
    fn profile(&self, session: &str) -> Resp {
        self.get("/profile", Some(session))
    }

    /// `DELETE /sessions` with `session`'s cookie: log out.
    fn log_out(&self, session: &str) -> Resp {
        self.delete("/sessions", Some(session))
    }

    /// `POST /reset_password`: ask for a reset token.
    fn reset_token(&self, email: &str) -> Resp {
        self.post("/reset_password", &[("email", email)])
    }

    /// `PUT /reset_password`: spend a reset token on a new password.
    fn reset(&self, email: &str, token: &str, new_password: &str) -> Resp {
        self.put(
            "/reset_password",
            &[
                ("email", email),
                ("reset_token", token),
                ("new_password", new_password),
            ],
        )
    }

    /// [`Api::register`], which must succeed.
    #[track_caller]
    fn register_ok(&self, email: &str, password: &str) {
        let r = self.register(email, password);
        assert_eq!(r.status, 200, "register {email}: {}", r.text);
    }

    /// [`Api::log_in`], which must succeed; the session id.
    #[track_caller]
    fn log_in_ok(&self, email: &str, password: &str) -> String {
        let r = self.log_in(email, password);
        assert_eq!(r.status, 200, "log in {email}: {}", r.text);
        r.session_cookie().expect("a session cookie")
    }

    /// Registers `email` and logs in; the session id.
    #[track_caller]
    fn register_and_log_in(&self, email: &str, password: &str) -> String {
        self.register_ok(email, password);
        self.log_in_ok(email, password)
    }

    /// [`Api::reset_token`], which must succeed; the token from the answer.
    #[track_caller]
    fn reset_token_ok(&self, email: &str) -> String {
        let r = self.reset_token(email);
        assert_eq!(r.status, 200, "reset token for {email}: {}", r.text);
        r.json["reset_token"].as_str().expect("a token").to_owned()
    }
}

impl Api for Client {
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        if let Some(from) = self.from {
            let request = request(method, path, headers, body);
            return match exchange(from, self.addr, &request, Duration::from_secs(30)) {
                Ok((resp, _)) => resp,
                Err(e) => panic!("{method} {path} from {from}: {e}"),
            };
        }
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        Resp::of_ureq(self.agent.run(builder.body(body.to_vec()).unwrap()))
    }
}

/// The `Cookie` header for `cookie`, if there is one.
fn cookie_header(cookie: &Option<String>) -> Vec<(&str, &str)> {
    cookie.iter().map(|c| ("Cookie", c.as_str())).collect()
}

/// A form body from pairs, encoded.
pub fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The bytes of an HTTP/1.1 request that closes its connection: `headers`, and `body` with
/// its `Content-Length`.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    [request.as_bytes(), body].concat()
}

/// The bytes of a form POST that closes its connection.
pub fn form_post(path: &str, pairs: &[(&str, &str)]) -> Vec<u8> {
    request(
        "POST",
        path,
        &[("Content-Type", FORM)],
        form(pairs).as_bytes(),
    )
}

/// A connection from `from` (a 127.0.0.0/8 address on Linux) to `to`, made within `limit`.
pub fn connect(from: IpAddr, to: SocketAddr, limit: Duration) -> io::Result<TcpStream> {
    connect_with(from, to, limit, |_| Ok(()))
}

/// [`connect`], with `configure` applied to the socket before it connects.
pub fn connect_with(
    from: IpAddr,
    to: SocketAddr,
    limit: Duration,
    configure: impl FnOnce(&socket2::Socket) -> io::Result<()>,
) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    configure(&socket)?;
    socket.connect_timeout(&to.into(), limit)?;
    Ok(socket.into())
}

/// How a read of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server closed the connection (end of file).
    Eof,
    /// The server reset the connection.
    Reset,
    /// It was still open when the time was up.
    Open,
    /// The reader had what it wanted.
    Done,
}

impl End {
    pub fn closed(self) -> bool {
        matches!(self, End::Eof | End::Reset)
    }
}

/// What a client read.
#[derive(Debug)]
pub struct Got {
    pub bytes: Vec<u8>,
    pub end: End,
    pub after: Duration,
}

/// Whether a read or write failed only for want of time.
pub fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Reads until `done` says the bytes are enough, the connection ends, or `limit` passes.
pub fn read_until(stream: &mut TcpStream, limit: Duration, done: impl Fn(&[u8]) -> bool) -> Got {
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let end = loop {
        if done(&bytes) {
            break End::Done;
        }
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            break End::Open;
        }
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => break End::Eof,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if would_block(&e) => {}
            Err(_) => break End::Reset,
        }
    };
    Got {
        bytes,
        end,
        after: started.elapsed(),
    }
}

/// Reads everything until the server ends the connection or `limit` passes.
pub fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Got {
    read_until(stream, limit, |_| false)
}

/// Reads one whole response within `limit`; when none came whole, what did come (so that a
/// server that never answers fails the test instead of hanging it).
pub fn read_response(stream: &mut TcpStream, limit: Duration) -> Resp {
    let got = read_until(stream, limit, |b| Resp::parse(b).is_some());
    match Resp::parse(&got.bytes) {
        Some((resp, _)) => resp,
        None => Resp::of(&got.bytes),
    }
}

/// Sends `request` on a fresh connection from `from`, and reads one answer within `limit`
/// (counted from before connecting): the answer and how long it took, or what went wrong.
pub fn exchange(
    from: IpAddr,
    to: SocketAddr,
    request: &[u8],
    limit: Duration,
) -> Result<(Resp, Duration), String> {
    let started = Instant::now();
    let mut stream = connect(from, to, limit).map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .write_all(request)
        .map_err(|e| format!("cannot send: {e}"))?;
    let got = read_until(&mut stream, limit.saturating_sub(started.elapsed()), |b| {
        Resp::parse(b).is_some()
    });
    let took = started.elapsed();
    match Resp::parse(&got.bytes) {
        Some((resp, _)) => Ok((resp, took)),
        None => Err(format!(
            "no answer within {limit:?} (connection {:?} after {took:.2?}, read {:?})",
            got.end,
            String::from_utf8_lossy(&got.bytes)
        )),
    }
}

/// Sends raw bytes from `from` and reads, as one response, everything the server sends back
/// before closing or going quiet for a second: for requests whose answer may not be a whole
/// response (a `HEAD`, a malformed request).
pub fn raw_request(from: IpAddr, to: SocketAddr, request: &[u8]) -> Resp {
    let mut stream = connect(from, to, Duration::from_secs(15)).expect("the client connects");
    stream.write_all(request).unwrap();
    // The first byte may be slow on a loaded machine (the whole suite runs at once): wait
    // long for it, then stop after a second of quiet.
    let some = |b: &[u8]| !b.is_empty();
    let mut got = read_until(&mut stream, Duration::from_secs(15), some);
    while got.end == End::Done {
        let more = read_until(&mut stream, Duration::from_secs(1), some);
        got.bytes.extend_from_slice(&more.bytes);
        got.end = more.end;
    }
    Resp::of(&got.bytes)
}
