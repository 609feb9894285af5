//! Raw bytes through the whole service: a real server on a loopback port (started once, with
//! its own temporary database) gets each input on a fresh connection, which is then closed
//! for writing. Whatever the bytes, the server answers with a status below 500 (or 505 for an
//! HTTP version it does not speak) and a JSON body, or closes without an answer when the bytes
//! end before a request does; it never hangs, and it keeps serving.

#![no_main]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use auth_service::{Config, Server};
use libfuzzer_sys::fuzz_target;
use socket2::{Domain, Socket, Type};

fn server() -> SocketAddr {
    // Runs for the life of the fuzzing process (held here, so no leak is reported at exit).
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("auth-fuzz-http-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut config = Config {
                bind: "127.0.0.1:0".parse().unwrap(),
                db: dir.join("auth.db"),
                workers: 4,
                metrics: true,
                ..Config::default()
            };
            config.policy.bcrypt_cost = 4;
            Server::start(config).expect("the server starts")
        })
        .addr()
}

/// A connection from the next of 65536 loopback addresses in turn: a thousand connections a
/// second from one address would use up its ephemeral ports within a minute, each closed one
/// waiting out TIME_WAIT.
fn connect(to: SocketAddr) -> TcpStream {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let from = Ipv4Addr::new(127, 1, (n >> 8) as u8, n as u8);
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    let mut result = socket.connect(&to.into());
    // libFuzzer's timer signal can interrupt connect(), which then goes on by itself: wait
    // for it to finish (EALREADY while it is in progress, EISCONN once it is done).
    while let Err(e) = &result {
        match e.raw_os_error() {
            Some(4 | 114) => {
                // EINTR, EALREADY
                std::thread::sleep(Duration::from_micros(100));
                result = socket.connect(&to.into());
            }
            Some(106) => result = Ok(()), // EISCONN
            _ => panic!("the server no longer accepts: {e}"),
        }
    }
    socket.into()
}

fuzz_target!(|data: &[u8]| {
    let mut stream = connect(server());
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The server may answer and close before reading everything: a failed write is fine.
    let _ = stream.write_all(data);
    let _ = stream.shutdown(Shutdown::Write);
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response) {
        let reset = e.kind() == std::io::ErrorKind::ConnectionReset;
        assert!(reset, "no answer and no close within 10 s: {e}");
    }
    let text = String::from_utf8_lossy(&response);
    // Skip interim answers (100 Continue); check the first final one.
    let mut rest: &str = &text;
    while let Some(after) = rest.strip_prefix("HTTP/1.1 1") {
        rest = after.split_once("\r\n\r\n").map_or("", |(_, r)| r);
    }
    if rest.is_empty() {
        return;
    }
    let status: u16 = rest
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {rest:?}"));
    assert!(
        status < 500 || status == 505,
        "{status} for {data:?}: {rest:?}"
    );
    let (head, body) = rest.split_once("\r\n\r\n").expect("a complete head");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Content-Length");
    let text_plain = head.contains("Content-Type: text/plain");
    if status != 200 || !text_plain {
        assert!(head.contains("Content-Type: application/json"), "{head:?}");
        // A HEAD request's answer has no body: what follows is the next answer.
        let head_request = data.trim_ascii_start().starts_with(b"HEAD ");
        if !head_request && body.len() >= length && length > 0 {
            serde_json::from_str::<serde_json::Value>(&body[..length])
                .unwrap_or_else(|e| panic!("body is not JSON ({e}): {rest:?}"));
        }
    }
});
