//! The log on stderr: one access line per request, the security events of SPEC section 10, and
//! the service's own messages, as text (the default) or as one compact JSON object a line
//! (`--log-format json`, for log shippers and fail2ban).
//!
//! ```text
//! GET /profile 200 0.3ms 127.0.0.1
//! event login_failed addr=127.0.0.1
//! {"ts":"2026-12-01T23:40:01.123Z","method":"GET","path":"/profile","status":200,"ms":0.31,"addr":"127.0.0.1"}
//! {"ts":"2026-12-01T23:40:01.125Z","event":"login_ok","user_id":3,"addr":"127.0.0.1"}
//! ```
//!
//! The format belongs to the process, not to a server: stderr is one stream, and whoever reads
//! it must be able to parse every line of it the same way. [`set_format`] sets it once, at
//! start.
//!
//! What a client sent (a method, a path) is escaped in either format, so that no request can
//! forge a line or reach a terminal with a control character. Nothing here takes a password, a
//! token, a session id or an email: a line names a user by id and a client by address.
//!
//! Each thread gathers whole lines and writes them to stderr in one call, when it is about to
//! wait for work ([`flush`]) or has gathered a few KiB. Under load that is one `write` for
//! dozens of lines, where `eprintln!` made one for each piece of each line; with no queue, each
//! line still goes out as soon as its response has. Messages, which are rare and which an
//! operator waits for (the listening line), go out at once.

use std::cell::RefCell;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `GET / 200 0.1ms 127.0.0.1`: for a person reading the journal.
    #[default]
    Text,
    /// One JSON object a line, keys in a fixed order.
    Json,
}

impl Format {
    /// `text` or `json`, as `--log-format` takes it.
    pub fn parse(value: &str) -> Result<Format, String> {
        match value.trim() {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!("{value:?} is not text or json")),
        }
    }
}

static JSON: AtomicBool = AtomicBool::new(false);

/// Sets the format of every line this process writes from now on.
pub fn set_format(format: Format) {
    JSON.store(format == Format::Json, Ordering::Relaxed);
}

/// The format lines are written in.
pub fn format() -> Format {
    if JSON.load(Ordering::Relaxed) {
        Format::Json
    } else {
        Format::Text
    }
}

/// A security event: SPEC section 10's list, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    LoginOk,
    LoginFailed,
    LoginThrottled,
    Registered,
    ResetRequested,
    ResetCompleted,
    PasswordChanged,
    SessionEnded,
    SessionsRevoked,
    UserDeleted,
    RateLimited,
}

impl Event {
    /// Every event, in SPEC section 10's order.
    pub const ALL: [Event; 11] = [
        Event::LoginOk,
        Event::LoginFailed,
        Event::LoginThrottled,
        Event::Registered,
        Event::ResetRequested,
        Event::ResetCompleted,
        Event::PasswordChanged,
        Event::SessionEnded,
        Event::SessionsRevoked,
        Event::UserDeleted,
        Event::RateLimited,
    ];

    /// The event's name in a line.
    pub fn name(self) -> &'static str {
        match self {
            Event::LoginOk => "login_ok",
            Event::LoginFailed => "login_failed",
            Event::LoginThrottled => "login_throttled",
            Event::Registered => "registered",
            Event::ResetRequested => "reset_requested",
            Event::ResetCompleted => "reset_completed",
            Event::PasswordChanged => "password_changed",
            Event::SessionEnded => "session_ended",
            Event::SessionsRevoked => "sessions_revoked",
            Event::UserDeleted => "user_deleted",
            Event::RateLimited => "rate_limited",
        }
    }
}

/// The access line of one request: method, path without query, status, time, client address
/// (the peer, or under `--trust-proxy` the forwarded one).
pub fn access(method: &str, path: &str, status: u16, elapsed: Duration, addr: IpAddr) {
    let ms = elapsed.as_secs_f64() * 1000.0;
    gather(|out| match format() {
        Format::Text => {
            let (method, path) = (Printable(method), Printable(path));
            let _ = writeln!(out, "{method} {path} {status} {ms:.1}ms {addr}");
        }
        Format::Json => {
            open(out);
            out.extend_from_slice(b",\"method\":");
            string(out, method);
            out.extend_from_slice(b",\"path\":");
            string(out, path);
            // Hundredths of a millisecond: finer is noise, and shorter lines are cheaper.
            let ms = (ms * 100.0).round() / 100.0;
            let _ = writeln!(
                out,
                ",\"status\":{status},\"ms\":{ms},\"addr\":\"{addr}\"}}"
            );
        }
    });
}

/// A security event from client `addr`, about user `user_id` where that is known.
pub fn event(event: Event, user_id: Option<i64>, addr: IpAddr) {
    let name = event.name();
    gather(|out| match (format(), user_id) {
        (Format::Text, Some(id)) => {
            let _ = writeln!(out, "event {name} user_id={id} addr={addr}");
        }
        (Format::Text, None) => {
            let _ = writeln!(out, "event {name} addr={addr}");
        }
        (Format::Json, user_id) => {
            open(out);
            let _ = write!(out, ",\"event\":\"{name}\"");
            if let Some(id) = user_id {
                let _ = write!(out, ",\"user_id\":{id}");
            }
            let _ = writeln!(out, ",\"addr\":\"{addr}\"}}");
        }
    });
}

/// An internal error while answering a request (the cause of a 500, a failed health check).
/// The cause is this crate's own text, never a client's or a secret.
pub fn request_error(method: &str, path: &str, status: u16, cause: &dyn fmt::Display) {
    gather(|out| match format() {
        Format::Text => {
            let (method, path) = (Printable(method), Printable(path));
            let _ = writeln!(out, "error: {method} {path} {status}: {cause}");
        }
        Format::Json => {
            open(out);
            out.extend_from_slice(b",\"level\":\"error\",\"message\":");
            string(out, &cause.to_string());
            out.extend_from_slice(b",\"method\":");
            string(out, method);
            out.extend_from_slice(b",\"path\":");
            string(out, path);
            let _ = writeln!(out, ",\"status\":{status}}}");
        }
    });
    flush();
}

/// How much a message matters; its text form's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Info,
    Warning,
    Error,
    /// The process is about to exit on it.
    Fatal,
}

/// A message: `auth-service listening on ...`.
pub fn info(message: fmt::Arguments<'_>) {
    say(Level::Info, message);
}

/// `warning: ...`
pub fn warning(message: fmt::Arguments<'_>) {
    say(Level::Warning, message);
}

/// `error: ...`: something failed and the service carries on.
pub fn error(message: fmt::Arguments<'_>) {
    say(Level::Error, message);
}

/// `auth-service: ...`: why the process is about to exit non-zero.
pub fn fatal(message: fmt::Arguments<'_>) {
    say(Level::Fatal, message);
}

fn say(level: Level, message: fmt::Arguments<'_>) {
    gather(|out| match format() {
        Format::Text => {
            let prefix = match level {
                Level::Info => "",
                Level::Warning => "warning: ",
                Level::Error => "error: ",
                Level::Fatal => "auth-service: ",
            };
            let _ = writeln!(out, "{prefix}{message}");
        }
        Format::Json => {
            let level = match level {
                Level::Info => "info",
                Level::Warning => "warning",
                Level::Error => "error",
                Level::Fatal => "fatal",
            };
            open(out);
            let _ = write!(out, ",\"level\":\"{level}\",\"message\":");
            string(out, &message.to_string());
            out.extend_from_slice(b"}\n");
        }
    });
    flush();
}

/// Under `--log-format json`, a panic's report becomes an error line like any other (Rust's
/// default report is two lines of text); in text, the default report stands.
pub fn report_panics_in_format() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if format() == Format::Text {
            return default(info);
        }
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("Box<dyn Any>");
        match info.location() {
            Some(at) => error(format_args!("thread '{name}' panicked at {at}: {payload}")),
            None => error(format_args!("thread '{name}' panicked: {payload}")),
        }
    }));
}

/// Below PIPE_BUF (4 KiB), so that one write of whole lines to a pipe is atomic and lines of
/// different threads never interleave.
const FLUSH_AT: usize = 3 * 1024;

thread_local! {
    static LINES: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(4 * 1024));
}

/// Adds the line `write` makes (ending in a newline), writing the gathered ones when there are
/// enough.
fn gather(write: impl FnOnce(&mut Vec<u8>)) {
    let mut write = Some(write);
    let full = LINES.try_with(|lines| {
        let mut lines = lines.try_borrow_mut().ok()?;
        (write.take()?)(&mut lines);
        Some(lines.len() >= FLUSH_AT)
    });
    match (full, write) {
        (Ok(Some(true)), _) => flush(),
        // The buffer is gone (the thread is ending) or in use (a panic's report, from inside
        // a line being written): this line goes out on its own.
        (_, Some(write)) => {
            let mut line = Vec::new();
            write(&mut line);
            let _ = std::io::stderr().write_all(&line);
        }
        _ => {}
    }
}

/// Writes this thread's gathered lines.
pub fn flush() {
    let _ = LINES.try_with(|lines| {
        if let Ok(mut lines) = lines.try_borrow_mut() {
            if !lines.is_empty() {
                let _ = std::io::stderr().write_all(&lines);
                lines.clear();
            }
        }
    });
}

/// Starts a JSON line: `{"ts":"2026-12-01T23:40:01.123Z"`.
fn open(out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"ts\":\"");
    timestamp(out, SystemTime::now());
    out.push(b'"');
}

/// `text` as a JSON string, quoted, with `"`, `\\` and every control character escaped (C1
/// and DEL too, which JSON would allow raw: some terminals act on them).
fn string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let mut rest = text;
    while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c.is_control()) {
        out.extend_from_slice(&rest.as_bytes()[..at]);
        let c = rest[at..].chars().next().unwrap_or_default();
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            // Every control character is below U+00A0: one \u escape each.
            c => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.extend_from_slice(rest.as_bytes());
    out.push(b'"');
}

/// `at` in RFC 3339, UTC, to the millisecond: `2026-12-01T23:40:01.123Z`.
fn timestamp(out: &mut Vec<u8>, at: SystemTime) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_date((secs / 86_400) as i64);
    let (hour, minute, second) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let millis = since.subsec_millis();
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z"
    );
}

/// The (year, month, day) of the proleptic Gregorian calendar `days` after 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Text a client sent, with control characters escaped (`\n`, `\u{1b}`), so that a request
/// can neither forge a line of the text log nor drive the terminal that shows it.
pub struct Printable<'a>(pub &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(char::is_control) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            write!(f, "{}", c.escape_default())?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(Printable("/profile").to_string(), "/profile");
        assert_eq!(Printable("/a\nb").to_string(), "/a\\nb");
        assert_eq!(Printable("GE\x1b[31mT").to_string(), "GE\\u{1b}[31mT");
        assert_eq!(Printable("/é\r").to_string(), "/é\\r");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_and_agree_with_httpdate() {
        let mut out = Vec::new();
        timestamp(&mut out, UNIX_EPOCH);
        assert_eq!(out, b"1970-01-01T00:00:00.000Z");
        // Across leap years, century rules and month ends, against httpdate's calendar.
        for secs in [
            951_782_400u64,  // 2000-02-29
            1_709_251_199,   // 2024-02-29T23:59:59
            4_107_542_400,   // 2100-03-01
            1_796_168_401,   // 2026-12-01T23:40:01
            253_402_300_799, // 9999-12-31T23:59:59
        ] {
            let at = UNIX_EPOCH + Duration::from_millis(secs * 1000 + 123);
            let mut out = Vec::new();
            timestamp(&mut out, at);
            let ours = String::from_utf8(out).unwrap();
            // "Tue, 01 Dec 2026 23:40:01 GMT"
            let theirs = httpdate::fmt_http_date(at);
            let parts: Vec<&str> = theirs.split([' ', ':']).collect();
            let month = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ]
            .iter()
            .position(|m| *m == parts[2])
            .unwrap()
                + 1;
            let expected = format!(
                "{}-{month:02}-{}T{}:{}:{}.123Z",
                parts[3], parts[1], parts[4], parts[5], parts[6]
            );
            assert_eq!(ours, expected, "{secs}");
        }
    }

    #[test]
    fn json_strings_escape_what_a_client_could_send() {
        let mut out = Vec::new();
        string(&mut out, "/a\"b\\c\nd\x1b\u{7f}\u{9b}é");
        let text = String::from_utf8(out).unwrap();
        assert!(!text.chars().any(char::is_control), "{text}");
        let back: String = serde_json::from_str(&text).unwrap();
        assert_eq!(back, "/a\"b\\c\nd\x1b\u{7f}\u{9b}é");
    }

    #[test]
    fn a_line_made_while_another_is_being_made_goes_out_on_its_own() {
        // What a panic inside a line's making would do through the panic hook: before, the
        // buffer's second borrow panicked inside the hook, which aborts the process.
        gather(|outer| {
            gather(|inner| inner.extend_from_slice(b"inner line\n"));
            outer.extend_from_slice(b"outer line\n");
        });
        flush();
    }

    #[test]
    fn formats_parse() {
        assert_eq!(Format::parse("text"), Ok(Format::Text));
        assert_eq!(Format::parse("json"), Ok(Format::Json));
        assert!(Format::parse("JSON").is_err());
        assert!(Format::parse("").is_err());
        assert_eq!(Format::default(), Format::Text);
    }

    #[test]
    fn every_event_has_its_spec_name() {
        let names: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(
            names,
            [
                "login_ok",
                "login_failed",
                "login_throttled",
                "registered",
                "reset_requested",
                "reset_completed",
                "password_changed",
                "session_ended",
                "sessions_revoked",
                "user_deleted",
                "rate_limited"
            ]
        );
    }
}
