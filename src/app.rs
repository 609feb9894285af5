//! The routes (the reference's `app.py`): one `match` on method and path into handlers that
//! turn a parsed [`Request`] into a [`Reply`], and the one function that turns errors into
//! statuses.
//!
//! Handlers never touch a socket or SQL: the server reads and bounds the request, `Auth`
//! decides, and only the worker loop writes the reply. So every handler runs in a unit test.

use std::fmt;
use std::net::IpAddr;

use serde_json::json;

use crate::auth::{Auth, AuthError, ResetDelivery};
use crate::config::Config;
use crate::log::{self, Event};
use crate::metrics::Metrics;
use crate::user::{Email, InputError, Password};

/// The cookie that carries the session id.
pub const SESSION_COOKIE: &str = "session_id";

/// Every (method, path) the router answers; `/metrics` only with `--metrics`. The OpenAPI
/// document is tested against this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("POST", "/users"),
    ("POST", "/sessions"),
    ("DELETE", "/sessions"),
    ("GET", "/profile"),
    ("POST", "/reset_password"),
    ("PUT", "/reset_password"),
    ("GET", "/health"),
    ("GET", "/metrics"),
];

/// Whether a route runs bcrypt (hashing or verifying a password): the server answers these on
/// threads of their own so that they never hold up cheap requests.
pub fn runs_bcrypt(method: &str, path: &str) -> bool {
    matches!(
        (method, path),
        ("POST", "/users") | ("POST", "/sessions") | ("PUT", "/reset_password")
    )
}

/// A request as the handlers see it: already read and bounded by the server.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without its query string.
    pub path: &'a str,
    /// The raw `Cookie` header, if any.
    pub cookie: Option<&'a str>,
    /// The `X-Forwarded-For` header lines, if any, joined with commas in order (used only with
    /// `--trust-proxy`).
    pub forwarded_for: Option<&'a str>,
    /// The TCP peer's address.
    pub peer: IpAddr,
    pub body: &'a [u8],
}

/// A response, written to the socket by the worker loop alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
    /// A line for the server's log (an internal error's cause); never sent to the client.
    pub log: Option<String>,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: body.to_string(),
            headers: Vec::new(),
            log: None,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// `{"message": "..."}`, the body of every error: made by `error_reply` alone.
    fn message(status: u16, message: &str) -> Reply {
        Reply::json(status, json!({ "message": message }))
    }

    /// The same reply, with `cause` for the server's log (never for the client).
    fn logging(mut self, cause: impl fmt::Display) -> Reply {
        self.log = Some(cause.to_string());
        self
    }

    /// The 500 reply: an opaque body, the cause for the log only.
    fn internal_error(cause: impl fmt::Display) -> Reply {
        Reply::message(500, "internal error").logging(cause)
    }
}

/// What a worker's handlers need: its `Auth`, the settings, and the counters `/metrics` shows.
pub struct Context<'a> {
    pub auth: &'a Auth,
    pub config: &'a Config,
    pub metrics: &'a Metrics,
}

/// Everything a request can be refused for, before or after `Auth` has its say.
#[derive(Debug)]
pub enum AppError {
    /// The body is longer than `--max-body-bytes` (declared so, or found so while reading a
    /// chunked one); it was not read.
    BodyTooLarge(usize),
    /// The body's length cannot be told safely (RFC 9112 6.3): a bad or conflicting
    /// `Content-Length`, a `Transfer-Encoding` other than chunked, both, or a broken chunk.
    BadFraming,
    /// The body did not arrive within its deadline.
    BodyTimeout,
    /// The bcrypt lane cannot take the request: its expected wait is too long.
    Busy,
    /// The store does not answer (`GET /health`); the cause goes to the log.
    Unhealthy(AuthError),
    /// The handler panicked; the worker lives on.
    Panicked,
    /// The body is not `application/x-www-form-urlencoded` text.
    BadForm,
    /// A required form field is missing or empty.
    MissingField(&'static str),
    /// A field is present but refused by its parser.
    Invalid(&'static str, InputError),
    /// No session cookie, or one that names no live session.
    NoSession,
    /// No route has this path.
    NotFound,
    /// The path is routed, for other methods: these (the `Allow` header).
    MethodNotAllowed(String),
    /// `Auth` refused: each of its errors has its own status.
    Auth(AuthError),
}

impl From<AuthError> for AppError {
    fn from(e: AuthError) -> AppError {
        AppError::Auth(e)
    }
}

/// The one place errors become statuses and bodies.
pub fn error_reply(error: AppError) -> Reply {
    match error {
        AppError::BodyTooLarge(limit) => {
            Reply::message(413, &format!("request body is larger than {limit} bytes"))
        }
        AppError::BadFraming => Reply::message(400, "request body framing is invalid"),
        AppError::BodyTimeout => Reply::message(408, "request body took too long to arrive"),
        AppError::Busy => Reply::message(503, "too many password checks waiting, try again")
            .with_header("Retry-After", "1"),
        AppError::Unhealthy(e) => Reply::message(503, "database unavailable")
            .logging(format_args!("health check failed: {e}")),
        AppError::Panicked => Reply::internal_error("the handler panicked"),
        AppError::BadForm => Reply::message(400, "body is not valid form data"),
        AppError::MissingField(field) => Reply::message(400, &format!("{field} is required")),
        AppError::Invalid(field, e) => Reply::message(400, &format!("{field} {}", e.reason())),
        AppError::NoSession => Reply::message(403, "no valid session"),
        AppError::NotFound => Reply::message(404, "not found"),
        AppError::MethodNotAllowed(allow) => {
            Reply::message(405, "method not allowed").with_header("Allow", allow)
        }
        AppError::Auth(e) => match e {
            AuthError::UserExists(_) => Reply::message(400, "email already registered"),
            AuthError::InvalidLogin => Reply::message(401, "wrong email or password"),
            AuthError::UnknownUser => Reply::message(403, "email not registered"),
            AuthError::InvalidToken => Reply::message(403, "invalid reset token"),
            AuthError::Throttled { retry_after } => {
                Reply::message(429, "too many failed logins, try again later")
                    .with_header("Retry-After", retry_after.to_string())
            }
            AuthError::DeliveryQueueFull => {
                Reply::message(503, "too many reset tokens waiting to be sent, try again")
                    .with_header("Retry-After", "1")
            }
            AuthError::Input(e) => Reply::message(400, &e.to_string()),
            // The cause of a bcrypt error can quote a stored hash: log only its kind.
            AuthError::Hash(_) => Reply::internal_error("bcrypt failed"),
            e @ AuthError::Db(_) => Reply::internal_error(e),
        },
    }
}

/// Routes one request. Errors from handlers become replies through [`error_reply`]. `HEAD` is
/// routed as `GET` (the server sends no body for it).
pub fn handle(ctx: &Context<'_>, rq: &Request<'_>) -> Reply {
    let method = if rq.method == "HEAD" {
        "GET"
    } else {
        rq.method
    };
    let result = match (method, rq.path) {
        ("GET", "/") => Ok(index()),
        ("POST", "/users") => users(ctx, rq),
        ("POST", "/sessions") => login(ctx, rq),
        ("DELETE", "/sessions") => logout(ctx, rq),
        ("GET", "/profile") => profile(ctx, rq),
        ("POST", "/reset_password") => get_reset_password_token(ctx, rq),
        ("PUT", "/reset_password") => update_password(ctx, rq),
        ("GET", "/health") => health(ctx),
        ("GET", "/metrics") if ctx.config.metrics => Ok(metrics(ctx)),
        (_, path) => Err(match allowed_methods(path, ctx.config.metrics) {
            Some(allow) => AppError::MethodNotAllowed(allow),
            None => AppError::NotFound,
        }),
    };
    result.unwrap_or_else(error_reply)
}

/// The `Allow` header's value for a known path; `None` for an unknown one.
fn allowed_methods(path: &str, metrics: bool) -> Option<String> {
    let methods: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, p)| *p == path && (metrics || *p != "/metrics"))
        .flat_map(|(m, _)| match *m {
            "GET" => &["GET", "HEAD"][..],
            _ => std::slice::from_ref(m),
        })
        .copied()
        .collect();
    (!methods.is_empty()).then(|| methods.join(", "))
}

/// `GET /`: the greeting.
fn index() -> Reply {
    Reply::json(200, json!({ "message": "Bienvenue" }))
}

/// `POST /users`: register.
fn users(ctx: &Context<'_>, rq: &Request<'_>) -> Result<Reply, AppError> {
    let form = Form::parse(rq.body)?;
    let email = form.email("email")?;
    let password = form.password("password")?;
    let user = ctx
        .auth
        .register_user(&email, &password)
        .map_err(about("password"))?;
    event(ctx, rq, Event::Registered, Some(user.id));
    Ok(Reply::json(
        200,
        json!({ "email": email.as_str(), "message": "user created" }),
    ))
}

/// `POST /sessions`: log in, setting the session cookie.
fn login(ctx: &Context<'_>, rq: &Request<'_>) -> Result<Reply, AppError> {
    let form = Form::parse(rq.body)?;
    let email = form.email("email")?;
    let password = form.password("password")?;
    let session_id = ctx
        .auth
        .log_in(client_address(ctx, rq), &email, &password)
        .inspect_err(|e| match e {
            AuthError::InvalidLogin => event(ctx, rq, Event::LoginFailed, None),
            AuthError::Throttled { .. } => event(ctx, rq, Event::LoginThrottled, None),
            _ => {}
        })?;
    event(ctx, rq, Event::LoginOk, user_id(ctx, &email));
    let max_age = ctx.config.policy.session_ttl;
    Ok(Reply::json(
        200,
        json!({ "email": email.as_str(), "message": "logged in" }),
    )
    .with_header("Set-Cookie", session_cookie(ctx, &session_id, max_age)))
}

/// `DELETE /sessions`: log out, clearing the cookie, and go home.
fn logout(ctx: &Context<'_>, rq: &Request<'_>) -> Result<Reply, AppError> {
    let user = ctx
        .auth
        .get_user_from_session_id(session_id(rq))?
        .ok_or(AppError::NoSession)?;
    ctx.auth.destroy_session(user.id)?;
    event(ctx, rq, Event::SessionEnded, Some(user.id));
    Ok(Reply::json(302, json!({ "message": "logged out" }))
        .with_header("Location", "/")
        .with_header("Set-Cookie", session_cookie(ctx, "", 0)))
}

/// `GET /profile`: who the session belongs to.
fn profile(ctx: &Context<'_>, rq: &Request<'_>) -> Result<Reply, AppError> {
    let user = ctx
        .auth
        .get_user_from_session_id(session_id(rq))?
        .ok_or(AppError::NoSession)?;
    Ok(Reply::json(200, json!({ "email": user.email })))
}

/// `POST /reset_password`: issue a reset token, in the response or through the command.
fn get_reset_password_token(ctx: &Context<'_>, rq: &Request<'_>) -> Result<Reply, AppError> {
    let form = Form::parse(rq.body)?;
    let email = form.email("email")?;
    let body = match ctx.auth.request_password_reset(&email)? {
        ResetDelivery::Token(token) => json!({ "email": email.as_str(), "reset_token": token }),
        ResetDelivery::Sent => json!({ "email": email.as_str(), "message": "reset token sent" }),
    };
    event(ctx, rq, Event::ResetRequested, user_id(ctx, &email));
    Ok(Reply::json(200, body))
}

/// `PUT /reset_password`: spend a reset token on a new password.
fn update_password(ctx: &Context<'_>, rq: &Request<'_>) -> Result<Reply, AppError> {
    let form = Form::parse(rq.body)?;
    let email = form.email("email")?;
    let token = form.required("reset_token")?;
    let password = form.password("new_password")?;
    ctx.auth
        .update_password_for(&email, token, &password)
        .map_err(about("new_password"))?;
    event(ctx, rq, Event::ResetCompleted, user_id(ctx, &email));
    Ok(Reply::json(
        200,
        json!({ "email": email.as_str(), "message": "Password updated" }),
    ))
}

/// `GET /health`: 200 while the database answers a query.
fn health(ctx: &Context<'_>) -> Result<Reply, AppError> {
    ctx.auth.healthy().map_err(AppError::Unhealthy)?;
    Ok(Reply::json(200, json!({ "status": "ok" })))
}

/// `GET /metrics`: the Prometheus text exposition.
fn metrics(ctx: &Context<'_>) -> Reply {
    Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        body: ctx.metrics.render(),
        headers: Vec::new(),
        log: None,
    }
}

/// The `Set-Cookie` value for a session id (empty and `Max-Age=0` to clear it).
fn session_cookie(ctx: &Context<'_>, value: &str, max_age: i64) -> String {
    let secure = if ctx.config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
}

/// The `session_id` cookie's value, if the request carries one.
pub fn session_id<'a>(rq: &Request<'a>) -> Option<&'a str> {
    cookie_value(rq.cookie?, SESSION_COOKIE)
}

/// The first value of cookie `name` in a `Cookie` header (RFC 6265 section 5.4 form).
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
    })
}

/// The client's address: the TCP peer, or behind a trusted proxy the last hop the proxy
/// appended to `X-Forwarded-For` (earlier hops are the client's to forge).
pub fn client_address(ctx: &Context<'_>, rq: &Request<'_>) -> IpAddr {
    if !ctx.config.trust_proxy {
        return rq.peer;
    }
    rq.forwarded_for
        .and_then(|xff| xff.rsplit(',').next())
        .and_then(|hop| hop.trim().parse().ok())
        .unwrap_or(rq.peer)
}

/// Logs security event `event` of this request, from the client's address (SPEC section 10).
fn event(ctx: &Context<'_>, rq: &Request<'_>, event: Event, user_id: Option<i64>) {
    log::event(event, user_id, client_address(ctx, rq));
}

/// The id of `email`'s user, for an event line after `Auth` has said yes without naming
/// them; `None` (the line goes out without it) when the lookup fails or the user is gone.
fn user_id(ctx: &Context<'_>, email: &Email) -> Option<i64> {
    ctx.auth.find_user(email).ok().flatten().map(|user| user.id)
}

/// A decoded `application/x-www-form-urlencoded` body. Percent-escapes must decode to UTF-8:
/// a password is never silently altered by lossy decoding.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Result<Form, AppError> {
        let body = std::str::from_utf8(body).map_err(|_| AppError::BadForm)?;
        let mut fields = Vec::new();
        for pair in body.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            fields.push((decode(key)?, decode(value)?));
        }
        Ok(Form(fields))
    }

    /// The first value of `name`, when present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The first value of `name`; missing or empty is [`AppError::MissingField`].
    fn required(&self, name: &'static str) -> Result<&str, AppError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or(AppError::MissingField(name))
    }

    fn email(&self, name: &'static str) -> Result<Email, AppError> {
        let raw = self.required(name)?;
        Email::parse(raw).map_err(|e| match e {
            InputError::EmptyEmail => AppError::MissingField(name),
            e => AppError::Invalid(name, e),
        })
    }

    /// A password within bcrypt's bounds (how long a new one must be is `Auth`'s rule).
    fn password(&self, name: &'static str) -> Result<Password, AppError> {
        Password::parse(self.required(name)?).map_err(|e| AppError::Invalid(name, e))
    }
}

/// Names the form field an `Auth` refusal of input is about.
fn about(field: &'static str) -> impl Fn(AuthError) -> AppError {
    move |e| match e {
        AuthError::Input(e) => AppError::Invalid(field, e),
        e => AppError::Auth(e),
    }
}

fn decode(raw: &str) -> Result<String, AppError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| AppError::BadForm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decodes_plus_and_escapes_and_keeps_the_first_value() {
        let form = Form::parse(b"email=a%2Bb%40c.d&password=p+w%C3%A9&email=second").unwrap();
        assert_eq!(form.get("email"), Some("a+b@c.d"));
        assert_eq!(form.get("password"), Some("p w\u{e9}"));
        assert_eq!(form.get("nope"), None);
        assert_eq!(Form::parse(b"").unwrap(), Form::default());
        assert_eq!(Form::parse(b"flag").unwrap().get("flag"), Some(""));
    }

    #[test]
    fn form_refuses_what_is_not_utf8() {
        assert!(matches!(
            Form::parse(b"password=%FF"),
            Err(AppError::BadForm)
        ));
        assert!(matches!(
            Form::parse(b"password=\xff"),
            Err(AppError::BadForm)
        ));
    }

    #[test]
    fn cookie_value_finds_the_named_cookie() {
        assert_eq!(
            cookie_value("a=1; session_id=xyz; b=2", "session_id"),
            Some("xyz")
        );
        assert_eq!(cookie_value("session_id=\"q\"", "session_id"), Some("q"));
        assert_eq!(
            cookie_value("session_idx=1; xsession_id=2", "session_id"),
            None
        );
        assert_eq!(cookie_value("", "session_id"), None);
    }

    #[test]
    fn allowed_methods_lists_every_method_of_a_path() {
        assert_eq!(
            allowed_methods("/sessions", false).as_deref(),
            Some("POST, DELETE")
        );
        assert_eq!(allowed_methods("/metrics", false), None);
        assert_eq!(
            allowed_methods("/metrics", true).as_deref(),
            Some("GET, HEAD")
        );
        assert_eq!(allowed_methods("/nope", true), None);
    }

    #[test]
    fn every_error_is_a_json_message() {
        let errors = [
            AppError::BadForm,
            AppError::MissingField("email"),
            AppError::NoSession,
            AppError::NotFound,
            AppError::MethodNotAllowed("GET".into()),
            AppError::Busy,
            AppError::BodyTooLarge(10),
            AppError::BadFraming,
            AppError::BodyTimeout,
            AppError::Auth(AuthError::DeliveryQueueFull),
            AppError::Auth(AuthError::Throttled { retry_after: 3 }),
        ];
        for e in errors {
            let reply = error_reply(e);
            let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert!(body["message"].is_string(), "{reply:?}");
            assert!(reply.status >= 400);
        }
    }
}
