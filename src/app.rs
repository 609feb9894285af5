//! The routes (the reference's `app.py`): one `match` on method and path into handlers that
//! turn a parsed [`Request`] into a [`Reply`], and the one function that turns errors into
//! statuses.
//!
//! Handlers never touch a socket or SQL: the server reads and bounds the request, `Auth`
//! decides, and only the worker loop writes the reply. So every handler runs in a unit test.

use std::fmt;
use std::net::IpAddr;

use serde_json::json;

use crate::auth::{Auth, AuthError, LiveSession, ResetDelivery};
use crate::config::Config;
use crate::log::{self, Event};
use crate::metrics::Metrics;
use crate::user::{ClientAddress, Email, InputError, Password};

/// The cookie that carries the session id.
pub const SESSION_COOKIE: &str = "session_id";

/// Every (method, path) the router answers; `/metrics` only with `--metrics`. The OpenAPI
/// document is tested against this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("POST", "/users"),
    ("POST", "/sessions"),
    ("DELETE", "/sessions"),
    ("GET", "/sessions"),
    ("DELETE", "/sessions/{id}"),
    ("GET", "/profile"),
    ("DELETE", "/profile"),
    ("PUT", "/password"),
    ("POST", "/reset_password"),
    ("PUT", "/reset_password"),
    ("GET", "/health"),
    ("GET", "/metrics"),
];

/// The route a path belongs to, as [`ROUTES`] writes it (`/sessions/{id}` for any session's
/// path); `None` for a path no route has.
pub fn route(path: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .map(|(_, route)| *route)
        .find(|route| match route.strip_suffix("{id}") {
            Some(prefix) => path
                .strip_prefix(prefix)
                .is_some_and(|id| !id.is_empty() && !id.contains('/')),
            None => *route == path,
        })
}

/// Whether a route runs bcrypt (hashing or verifying a password): the server answers these on
/// threads of their own so that they never hold up cheap requests.
pub fn runs_bcrypt(method: &str, path: &str) -> bool {
    matches!(
        (method, path),
        ("POST", "/users")
            | ("POST", "/sessions")
            | ("PUT", "/reset_password")
            | ("PUT", "/password")
            | ("DELETE", "/profile")
    )
}

/// A request as the handlers see it: already read and bounded by the server.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without its query string.
    pub path: &'a str,
    /// The query string (after `?`), if any.
    pub query: Option<&'a str>,
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
    /// `DELETE /sessions?scope=` with a scope that is neither `others` nor `all`.
    BadScope,
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
        AppError::BadScope => Reply::message(400, "scope must be others or all"),
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
            AuthError::RateLimited { retry_after } => {
                Reply::message(429, "too many requests, try again later")
                    .with_header("Retry-After", retry_after.to_string())
            }
            AuthError::UnknownSession => Reply::message(404, "session not found"),
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
        ("GET", "/sessions") => sessions(ctx, rq),
        ("DELETE", path) if route(path) == Some("/sessions/{id}") => end_session(ctx, rq),
        ("GET", "/profile") => profile(ctx, rq),
        ("DELETE", "/profile") => delete_profile(ctx, rq),
        ("PUT", "/password") => change_password(ctx, rq),
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
    let route = route(path)?;
    let methods: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, r)| *r == route && (metrics || *r != "/metrics"))
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
        .sign_up(client(ctx, rq), &email, &password)
        .inspect_err(|e| limited(ctx, rq, e))
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
    let login = ctx
        .auth
        .log_in(client(ctx, rq), &email, &password)
        .inspect_err(|e| password_refused(ctx, rq, e, None))?;
    event(ctx, rq, Event::LoginOk, Some(login.user_id));
    let session_id = login.session_id;
    let max_age = ctx.config.policy.session_ttl;
    Ok(Reply::json(
        200,
        json!({ "email": email.as_str(), "message": "logged in" }),
    )
    .with_header("Set-Cookie", session_cookie(ctx, &session_id, max_age)))
}

/// `DELETE /sessions`: log out (this session, or with `?scope=all` every one of the user's),
/// clearing the cookie, and go home; with `?scope=others`, end every other session.
fn logout(ctx: &Context<'_>, rq: &Request<'_>) -> Result<Reply, AppError> {
    let live = live_session(ctx, rq)?;
    let user = Some(live.user.id);
    let query = Form::parse(rq.query.unwrap_or_default().as_bytes())?;
    match query.get("scope") {
        None => {
            ctx.auth.log_out(&live)?;
            event(ctx, rq, Event::SessionEnded, user);
        }
        Some("all") => {
            ctx.auth.end_all_sessions(&live)?;
            event(ctx, rq, Event::SessionsRevoked, user);
        }
        Some("others") => {
            let ended = ctx.auth.end_other_sessions(&live)?;
            event(ctx, rq, Event::SessionsRevoked, user);
            let body = json!({ "ended": ended, "message": "other sessions ended" });
            return Ok(Reply::json(200, body));
        }
        Some(_) => return Err(AppError::BadScope),
    }
    Ok(Reply::json(302, json!({ "message": "logged out" }))
        .with_header("Location", "/")
        .with_header("Set-Cookie", session_cookie(ctx, "", 0)))
}

/// `GET /sessions`: the caller's sessions, most recently used first, by their public handles.
fn sessions(ctx: &Context<'_>, rq: &Request<'_>) -> Result<Reply, AppError> {
    let live = live_session(ctx, rq)?;
    let sessions: Vec<serde_json::Value> = ctx
        .auth
        .sessions(&live)?
        .into_iter()
        .map(|(session, current)| {
            json!({
                "id": session.handle,
                "created_at": rfc3339(session.created_at),
                "last_seen_at": rfc3339(session.seen_at),
                "current": current,
            })
        })
        .collect();
    Ok(Reply::json(200, json!({ "sessions": sessions })))
}

/// `DELETE /sessions/<id>`: end one of the caller's sessions by its handle.
fn end_session(ctx: &Context<'_>, rq: &Request<'_>) -> Result<Reply, AppError> {
    let live = live_session(ctx, rq)?;
    let handle = rq.path.rsplit('/').next().unwrap_or_default();
    ctx.auth.end_session(&live, handle)?;
    event(ctx, rq, Event::SessionEnded, Some(live.user.id));
    Ok(Reply::json(200, json!({ "message": "session ended" })))
}

/// `GET /profile`: who the session belongs to.
fn profile(ctx: &Context<'_>, rq: &Request<'_>) -> Result<Reply, AppError> {
    let live = live_session(ctx, rq)?;
    Ok(Reply::json(200, json!({ "email": live.user.email })))
}

/// `DELETE /profile`: delete the caller's account, given its password.
fn delete_profile(ctx: &Context<'_>, rq: &Request<'_>) -> Result<Reply, AppError> {
    let live = live_session(ctx, rq)?;
    let form = Form::parse(rq.body)?;
    let password = form.password("password")?;
    let user = Some(live.user.id);
    ctx.auth
        .delete_account(client(ctx, rq), &live, &password)
        .inspect_err(|e| password_refused(ctx, rq, e, user))?;
    event(ctx, rq, Event::UserDeleted, user);
    Ok(Reply::json(
        200,
        json!({ "email": live.user.email, "message": "user deleted" }),
    )
    .with_header("Set-Cookie", session_cookie(ctx, "", 0)))
}

/// `PUT /password`: change the password, given the current one; the other sessions end.
fn change_password(ctx: &Context<'_>, rq: &Request<'_>) -> Result<Reply, AppError> {
    let live = live_session(ctx, rq)?;
    let form = Form::parse(rq.body)?;
    let current = form.password("password")?;
    let new = form.password("new_password")?;
    let user = Some(live.user.id);
    ctx.auth
        .change_password(client(ctx, rq), &live, &current, &new)
        .inspect_err(|e| password_refused(ctx, rq, e, user))
        .map_err(about("new_password"))?;
    event(ctx, rq, Event::PasswordChanged, user);
    Ok(Reply::json(
        200,
        json!({ "email": live.user.email, "message": "Password updated" }),
    ))
}

/// `POST /reset_password`: issue a reset token, in the response or through the command.
fn get_reset_password_token(ctx: &Context<'_>, rq: &Request<'_>) -> Result<Reply, AppError> {
    let form = Form::parse(rq.body)?;
    let email = form.email("email")?;
    let requested = ctx
        .auth
        .request_password_reset(client(ctx, rq), &email)
        .inspect_err(|e| limited(ctx, rq, e))?;
    let body = match requested {
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
    let user_id = ctx
        .auth
        .update_password_for(&email, token, &password)
        .map_err(about("new_password"))?;
    event(ctx, rq, Event::ResetCompleted, Some(user_id));
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

/// The live session the request's cookie names; [`AppError::NoSession`] without one.
fn live_session(ctx: &Context<'_>, rq: &Request<'_>) -> Result<LiveSession, AppError> {
    ctx.auth.session(session_id(rq))?.ok_or(AppError::NoSession)
}

/// The client as the abuse limits count it.
fn client(ctx: &Context<'_>, rq: &Request<'_>) -> ClientAddress {
    ClientAddress::new(client_address(ctx, rq))
}

/// A time in Unix milliseconds as RFC 3339 UTC, to the second: `2026-12-01T23:59:07Z`.
fn rfc3339(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
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

/// The event of a password that was refused (at login, or when a session confirms its own),
/// for fail2ban and the audit: a failure, or a throttled attempt.
fn password_refused(ctx: &Context<'_>, rq: &Request<'_>, e: &AuthError, user_id: Option<i64>) {
    match e {
        AuthError::InvalidLogin => event(ctx, rq, Event::LoginFailed, user_id),
        AuthError::Throttled { .. } => event(ctx, rq, Event::LoginThrottled, user_id),
        _ => {}
    }
}

/// The event of a request an abuse limit refused.
fn limited(ctx: &Context<'_>, rq: &Request<'_>, e: &AuthError) {
    if let AuthError::RateLimited { .. } = e {
        event(ctx, rq, Event::RateLimited, None);
    }
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
    fn times_are_rfc_3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(784_111_777_999), "1994-11-06T08:49:37Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn paths_find_their_routes() {
        assert_eq!(route("/sessions"), Some("/sessions"));
        assert_eq!(route("/sessions/4b1c"), Some("/sessions/{id}"));
        assert_eq!(route("/sessions/"), None);
        assert_eq!(route("/sessions/a/b"), None);
        assert_eq!(route("/nope"), None);
    }

    #[test]
    fn allowed_methods_lists_every_method_of_a_path() {
        assert_eq!(
            allowed_methods("/sessions", false).as_deref(),
            Some("POST, DELETE, GET, HEAD")
        );
        assert_eq!(
            allowed_methods("/sessions/abc", false).as_deref(),
            Some("DELETE")
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
