//! The servers: the service built in the repository and run as a child process, and the bare
//! tiny_http server it is compared with, which is this program re-run with `--bare-server`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::Fallible;

/// The fixed body of the bare server: what `GET /` answers.
const BARE_BODY: &str = r#"{"message":"Bienvenue"}"#;

/// The repository root: the service's crate, one folder above this one.
pub fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent folder")
}

/// The service's `release/auth-service` under the target folder `target`, built there first
/// (`cargo build --release --bin auth-service` in the repository, with `extra` arguments)
/// unless `--no-build`. The target folder is passed to cargo, so that the binary is where this
/// looks for it whatever `CARGO_TARGET_DIR` says.
pub fn service_binary(target: &Path, extra: &[&str], build: bool) -> Fallible<PathBuf> {
    if build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "auth-service"])
            .arg("--target-dir")
            .arg(target)
            .args(extra)
            .current_dir(repository())
            .status()?;
        if !status.success() {
            return Err(
                format!("cargo build --release --bin auth-service {extra:?} failed").into(),
            );
        }
    }
    let binary = target.join("release/auth-service");
    if !binary.exists() {
        return Err(format!("no {}: build it, or drop --no-build", binary.display()).into());
    }
    Ok(binary)
}

/// A server child process, killed when dropped. Its stderr (the access log) goes to a pipe
/// that a thread drains, as a service manager's journal would.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// From spawn to the "listening" line.
    pub started: Duration,
}

impl Server {
    pub fn service(binary: &Path, db: &Path, cost: u32, workers: usize) -> Fallible<Server> {
        Server::spawn(Command::new(binary).args([
            "--bind",
            "127.0.0.1:0",
            "--db",
            &db.display().to_string(),
            "--bcrypt-cost",
            &cost.to_string(),
            "--workers",
            &workers.to_string(),
        ]))
    }

    pub fn spawn(command: &mut Command) -> Fallible<Server> {
        let spawned = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut stderr = BufReader::with_capacity(64 * 1024, stderr);
            let mut line = String::new();
            while stderr.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(rest) = line.split_once("listening on http://") {
                    let addr = rest.1.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send((addr.parse::<SocketAddr>().ok(), spawned.elapsed()));
                    break;
                }
                eprint!("server: {line}");
                line.clear();
            }
            let mut sink = vec![0; 64 * 1024];
            while stderr.get_mut().read(&mut sink).unwrap_or(0) > 0 {}
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((Some(addr), started)) => Ok(Server {
                child,
                addr,
                started,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err("the server did not start listening".into())
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reference point: tiny_http with `workers` threads answering a fixed JSON body with
/// tiny_http's own `Response`, as its hello-world example does. With `one_write`, the same
/// server writes a prepared response in one write instead, as auth-service does: the most a
/// tiny_http server can do. Stops when the parent kills it, or after ten minutes.
pub fn bare_server(workers: usize, one_write: bool) {
    use std::io::Write;

    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("binding the bare server"));
    eprintln!(
        "bare tiny_http listening on http://{}",
        server.server_addr()
    );
    let content_type =
        tiny_http::Header::from_bytes("Content-Type", "application/json").expect("an ASCII header");
    let prepared = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BARE_BODY}",
        BARE_BODY.len()
    );
    for _ in 0..workers {
        let server = Arc::clone(&server);
        let content_type = content_type.clone();
        let prepared = prepared.clone();
        thread::spawn(move || {
            for request in server.incoming_requests() {
                if one_write {
                    let mut writer = request.into_writer();
                    let _ = writer.write_all(prepared.as_bytes());
                    let _ = writer.flush();
                } else {
                    let response = tiny_http::Response::from_string(BARE_BODY)
                        .with_header(content_type.clone());
                    let _ = request.respond(response);
                }
            }
        });
    }
    thread::sleep(Duration::from_secs(600));
}
