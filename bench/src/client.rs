//! The load generator's HTTP/1.1 client: one keep-alive connection on a plain `TcpStream`,
//! requests written from prepared bytes, responses parsed just enough to find the status, the
//! `Set-Cookie` header and the end of the body. Fast enough that on a 2-core machine it costs
//! the server as little CPU as a client can.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One response: its status, the session cookie it set (if any) and its body.
pub struct Response {
    pub status: u16,
    pub session_cookie: Option<String>,
    pub body: Vec<u8>,
}

/// A keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        // A stalled server fails the run instead of hanging it.
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            stream,
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
        })
    }

    /// Sends a prepared request and returns the response's status, skipping its body.
    pub fn status(&mut self, request: &[u8]) -> io::Result<u16> {
        self.stream.write_all(request)?;
        let head = self.read_head()?;
        self.start += head.head_len + head.body_len;
        Ok(head.status)
    }

    /// Sends a prepared request and returns the whole response.
    pub fn send(&mut self, request: &[u8]) -> io::Result<Response> {
        self.stream.write_all(request)?;
        let head = self.read_head()?;
        let head_text = String::from_utf8_lossy(&self.buf[self.start..self.start + head.head_len]);
        let session_cookie = head_text.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            if !name.eq_ignore_ascii_case("set-cookie") {
                return None;
            }
            let value = value.trim().strip_prefix("session_id=")?;
            Some(value.split(';').next().unwrap_or_default().to_owned())
        });
        let body_at = self.start + head.head_len;
        let body = self.buf[body_at..body_at + head.body_len].to_vec();
        self.start = body_at + head.body_len;
        Ok(Response {
            status: head.status,
            session_cookie,
            body,
        })
    }

    /// Reads until the head and the whole body are in the buffer; returns their lengths.
    fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if let Some(head) = parse_head(&self.buf[self.start..self.end])? {
                if self.end - self.start >= head.head_len + head.body_len {
                    return Ok(head);
                }
                if head.head_len + head.body_len > self.buf.len() {
                    self.buf.resize(head.head_len + head.body_len, 0);
                }
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.end += n;
        Ok(())
    }
}

struct Head {
    status: u16,
    head_len: usize,
    body_len: usize,
}

/// The status and lengths of a response whose head is complete in `bytes`; `None` while the
/// head is still arriving. Only `Content-Length` bodies are understood: tiny_http sends one for
/// every body it knows the size of, which is every body this service sends.
fn parse_head(bytes: &[u8]) -> io::Result<Option<Head>> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| bad("response head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut body_len = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            body_len = value
                .trim()
                .parse()
                .map_err(|_| bad("bad content-length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked responses are not expected"));
        }
    }
    Ok(Some(Head {
        status,
        head_len: end + 4,
        body_len,
    }))
}

/// A prepared `GET` with an optional session cookie.
pub fn get(path: &str, session: Option<&str>) -> Vec<u8> {
    let cookie = session.map_or(String::new(), |s| format!("Cookie: session_id={s}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{cookie}\r\n").into_bytes()
}

/// A prepared form `POST`.
pub fn post_form(path: &str, form: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .into_bytes()
}
