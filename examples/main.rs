//! The reference's `main.py` scenario, step by step, over real HTTP with ureq.
//!
//! With no argument it starts the service in this process, on a free port with a temporary
//! database, and drives that. With a URL it drives a server that is already running:
//!
//! ```text
//! cargo run --example main
//! cargo run --example main -- http://127.0.0.1:5000
//! ```
//!
//! Each step asserts the status and the JSON body the reference promises; the first step that
//! fails is named and the process exits 1. Each run registers a fresh address, so it can be
//! repeated against the same server.
//!
//! An `https://` server whose certificate a private CA signed (a test proxy, as in
//! `.ci/nginx.sh`) is trusted through that CA's PEM file alone:
//!
//! ```text
//! AUTH_CA_CERT=ca.pem cargo run --example main -- https://127.0.0.1:8443
//! ```

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use ureq::http::Response;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::{Agent, Body};

const PASSWD: &str = "b4l0u";
const NEW_PASSWD: &str = "t4rt1fl3tt3";

/// A failed step: its name and what was wrong.
type Step<T> = Result<T, String>;

struct Client {
    agent: Agent,
    base: String,
}

impl Client {
    fn new(base: &str) -> Step<Client> {
        let mut config = Agent::config_builder()
            // Statuses are what is being checked, so 4xx is an answer, not an error; and the
            // logout redirect is checked as such rather than followed.
            .http_status_as_error(false)
            .max_redirects(0);
        if let Some(path) = std::env::var_os("AUTH_CA_CERT") {
            let shown = path.to_string_lossy().into_owned();
            let pem =
                std::fs::read(&path).map_err(|e| format!("setup: AUTH_CA_CERT {shown}: {e}"))?;
            let ca = Certificate::from_pem(&pem)
                .map_err(|e| format!("setup: AUTH_CA_CERT {shown}: {e}"))?;
            let roots = RootCerts::new_with_certs(&[ca]);
            config = config.tls_config(TlsConfig::builder().root_certs(roots).build());
        }
        Ok(Client {
            agent: config.build().into(),
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Status, body as JSON, and the response (for headers).
fn read(result: Result<Response<Body>, ureq::Error>) -> Step<(u16, Value, Response<Body>)> {
    let mut response = result.map_err(|e| format!("request failed: {e}"))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("reading the body failed: {e}"))?;
    let body = serde_json::from_str(&text).map_err(|_| format!("body is not JSON: {text:?}"))?;
    Ok((status, body, response))
}

fn expect(step: &str, got: (u16, &Value), want: (u16, Option<&Value>)) -> Step<()> {
    if got.0 != want.0 {
        return Err(format!(
            "{step}: status {} (body {}), expected {}",
            got.0, got.1, want.0
        ));
    }
    if let Some(body) = want.1 {
        if got.1 != body {
            return Err(format!("{step}: body {}, expected {body}", got.1));
        }
    }
    Ok(())
}

fn register_user(c: &Client, email: &str, password: &str) -> Step<()> {
    let r = c
        .agent
        .post(c.url("/users"))
        .send_form([("email", email), ("password", password)]);
    let (status, body, _) = read(r)?;
    let want = json!({"email": email, "message": "user created"});
    expect("register_user", (status, &body), (200, Some(&want)))
}

fn log_in_wrong_password(c: &Client, email: &str, password: &str) -> Step<()> {
    let r = c
        .agent
        .post(c.url("/sessions"))
        .send_form([("email", email), ("password", password)]);
    let (status, body, _) = read(r)?;
    expect("log_in_wrong_password", (status, &body), (401, None))
}

fn log_in(c: &Client, email: &str, password: &str) -> Step<String> {
    let r = c
        .agent
        .post(c.url("/sessions"))
        .send_form([("email", email), ("password", password)]);
    let (status, body, response) = read(r)?;
    let want = json!({"email": email, "message": "logged in"});
    expect("log_in", (status, &body), (200, Some(&want)))?;
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("session_id="))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| "log_in: no session_id cookie in the response".to_owned())
}

fn profile_unlogged(c: &Client) -> Step<()> {
    let (status, body, _) = read(c.agent.get(c.url("/profile")).call())?;
    expect("profile_unlogged", (status, &body), (403, None))
}

fn profile_logged(c: &Client, session_id: &str, email: &str) -> Step<()> {
    let r = c
        .agent
        .get(c.url("/profile"))
        .header("Cookie", format!("session_id={session_id}"))
        .call();
    let (status, body, _) = read(r)?;
    expect(
        "profile_logged",
        (status, &body),
        (200, Some(&json!({ "email": email }))),
    )
}

fn log_out(c: &Client, session_id: &str) -> Step<()> {
    let r = c
        .agent
        .delete(c.url("/sessions"))
        .header("Cookie", format!("session_id={session_id}"))
        .call();
    let (status, body, response) = read(r)?;
    expect("log_out", (status, &body), (302, None))?;
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok());
    if location != Some("/") {
        return Err(format!(
            "log_out: redirects to {location:?}, expected \"/\""
        ));
    }
    // Where the reference's client ends up after following the redirect.
    let (status, body, _) = read(c.agent.get(c.url("/")).call())?;
    let want = json!({"message": "Bienvenue"});
    expect("log_out (GET /)", (status, &body), (200, Some(&want)))?;
    // And the session is over.
    let r = c
        .agent
        .get(c.url("/profile"))
        .header("Cookie", format!("session_id={session_id}"))
        .call();
    let (status, body, _) = read(r)?;
    expect("log_out (profile after)", (status, &body), (403, None))
}

fn reset_password_token(c: &Client, email: &str) -> Step<String> {
    let r = c
        .agent
        .post(c.url("/reset_password"))
        .send_form([("email", email)]);
    let (status, body, _) = read(r)?;
    expect("reset_password_token", (status, &body), (200, None))?;
    if body["email"] != email {
        return Err(format!(
            "reset_password_token: body {body} names another email"
        ));
    }
    body["reset_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "reset_password_token: no reset_token in {body} (is the server running with \
                 --reset-command?)"
            )
        })
}

fn update_password(c: &Client, email: &str, reset_token: &str, new_password: &str) -> Step<()> {
    let r = c.agent.put(c.url("/reset_password")).send_form([
        ("email", email),
        ("reset_token", reset_token),
        ("new_password", new_password),
    ]);
    let (status, body, _) = read(r)?;
    let want = json!({"email": email, "message": "Password updated"});
    expect("update_password", (status, &body), (200, Some(&want)))
}

fn scenario(base: &str) -> Step<()> {
    let c = Client::new(base)?;
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let email = format!("guillaume+{nonce}@holberton.io");

    register_user(&c, &email, PASSWD)?;
    log_in_wrong_password(&c, &email, NEW_PASSWD)?;
    profile_unlogged(&c)?;
    let session_id = log_in(&c, &email, PASSWD)?;
    profile_logged(&c, &session_id, &email)?;
    log_out(&c, &session_id)?;
    let reset_token = reset_password_token(&c, &email)?;
    update_password(&c, &email, &reset_token, NEW_PASSWD)?;
    log_in(&c, &email, NEW_PASSWD).map_err(|e| format!("{e} (with the new password)"))?;
    Ok(())
}

fn main() -> ExitCode {
    let result = match std::env::args().nth(1) {
        Some(url) => scenario(&url),
        None => self_hosted(),
    };
    match result {
        Ok(()) => {
            println!("scenario passed: all 9 steps");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scenario failed at {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the service in this process on a free port with a throwaway database, runs the
/// scenario against it, and shuts it down.
fn self_hosted() -> Step<()> {
    use auth_service::{Config, Server};

    let dir = std::env::temp_dir().join(format!("auth-service-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("setup: {e}"))?;
    let mut config = Config {
        bind: "127.0.0.1:0".parse().expect("a literal address"),
        db: dir.join("auth.db"),
        ..Config::default()
    };
    // The scenario checks behaviour, not bcrypt's strength: the cheapest cost keeps it quick.
    config.policy.bcrypt_cost = 4;
    let server = Server::start(config).map_err(|e| format!("setup: {e}"))?;
    let result = scenario(&format!("http://{}", server.addr()));
    server.shutdown();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
