//! The user record (the reference's `user.py`) and the inputs every route trusts only after
//! parsing: an email address, a password, and the client's address as the limits count it.
//!
//! Input is parsed into these types once, at the edge; past that point the rest of the code can
//! rely on an `Email` being trimmed, bounded and plausible, and on a `Password` fitting bcrypt.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// A row of the `users` table.
///
/// `session_id` and `reset_token` hold SHA-256 digests (lowercase hex) of the tokens handed to
/// the client, never the tokens themselves. A user holds any number of sessions (the
/// `sessions` table); `session_id` is the digest of the one the user was found through (a
/// `session_id` filter of `Db::find_user_by`), and `None` otherwise. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub hashed_password: String,
    pub session_id: Option<String>,
    pub reset_token: Option<String>,
    pub reset_expires_at: Option<i64>,
}

/// A row of the `sessions` table, as a user may see it: a public handle (neither the session
/// id nor its digest), and when it began and was last used, in Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub handle: String,
    pub user_id: i64,
    pub created_at: i64,
    pub seen_at: i64,
}

/// The longest address SMTP can carry (RFC 5321 path limit less the angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;
/// bcrypt reads at most 72 bytes; anything longer is refused rather than silently truncated.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// Why an email or password was refused. Each message names the field, is lowercase and holds
/// nothing of the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputError {
    /// The email is missing, empty or only white space.
    EmptyEmail,
    /// The email has no `@`.
    EmailWithoutAt,
    /// The email is longer than [`MAX_EMAIL_BYTES`] once trimmed.
    EmailTooLong,
    /// The email holds a control character or white space inside it.
    EmailWithSpaceOrControl,
    /// The password is empty.
    EmptyPassword,
    /// The password is longer than [`MAX_PASSWORD_BYTES`].
    PasswordTooLong,
    /// The password has fewer characters than the configured minimum.
    PasswordTooShort(usize),
}

impl InputError {
    /// The refusal without the field's name, for callers whose field is called otherwise
    /// (`new_password`).
    pub fn reason(&self) -> String {
        match self {
            InputError::EmptyEmail | InputError::EmptyPassword => "is required".into(),
            InputError::EmailWithoutAt => "must contain @".into(),
            InputError::EmailTooLong => format!("is longer than {MAX_EMAIL_BYTES} bytes"),
            InputError::EmailWithSpaceOrControl => {
                "must not contain white space or control characters".into()
            }
            InputError::PasswordTooLong => format!("is longer than {MAX_PASSWORD_BYTES} bytes"),
            InputError::PasswordTooShort(n) => format!("is shorter than {n} characters"),
        }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = match self {
            InputError::EmptyEmail
            | InputError::EmailWithoutAt
            | InputError::EmailTooLong
            | InputError::EmailWithSpaceOrControl => "email",
            _ => "password",
        };
        write!(f, "{field} {}", self.reason())
    }
}

impl std::error::Error for InputError {}

/// An email address: trimmed, non-empty, at most 254 bytes, with an `@`, and nothing inside
/// it that is white space or a control character. An email reaches mail commands (as
/// `AUTH_EMAIL`), log lines and the database: a NUL, a CR or an LF in it is never the user's
/// address, and would let a client write a mail header or end a string early.
///
/// Case is kept as given; comparisons are case-insensitive in the database (ASCII, as SQLite's
/// `NOCASE` and the throttle's key both fold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Email, InputError> {
        let email = raw.trim();
        if email.is_empty() {
            Err(InputError::EmptyEmail)
        } else if email.len() > MAX_EMAIL_BYTES {
            Err(InputError::EmailTooLong)
        } else if email.chars().any(|c| c.is_control() || c.is_whitespace()) {
            Err(InputError::EmailWithSpaceOrControl)
        } else if !email.contains('@') {
            Err(InputError::EmailWithoutAt)
        } else {
            Ok(Email(email.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client's address as the abuse limits count it (the login throttle, the bcrypt lane's
/// turns): an IPv4 address as it is, an IPv4-mapped IPv6 address as that IPv4 address, and any
/// other IPv6 address as its /64 network, since one host is commonly handed a whole /64 and
/// could otherwise count as billions of clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddress(IpAddr);

impl ClientAddress {
    pub fn new(ip: IpAddr) -> ClientAddress {
        ClientAddress(match ip {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let network = u128::from(v6) & !(u128::MAX >> 64);
                    IpAddr::V6(Ipv6Addr::from(network))
                }
            },
        })
    }

    pub fn ip(&self) -> IpAddr {
        self.0
    }
}

impl fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// A password as the user typed it: never trimmed, at most 72 bytes.
///
/// `Debug` is redacted so that a password cannot reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Parses a password offered at login: only bcrypt's bounds apply, so that a password set
    /// before a longer minimum was configured still works.
    pub fn parse(raw: &str) -> Result<Password, InputError> {
        Password::parse_new(raw, 1)
    }

    /// Parses a password being set (registration or reset): it must also have at least
    /// `min_chars` characters.
    pub fn parse_new(raw: &str, min_chars: usize) -> Result<Password, InputError> {
        if raw.is_empty() {
            Err(InputError::EmptyPassword)
        } else if raw.len() > MAX_PASSWORD_BYTES {
            Err(InputError::PasswordTooLong)
        } else if raw.chars().count() < min_chars {
            Err(InputError::PasswordTooShort(min_chars))
        } else {
            Ok(Password(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_needs_an_at() {
        assert_eq!(Email::parse("  a@b.c \t").unwrap().as_str(), "a@b.c");
        assert_eq!(Email::parse("   "), Err(InputError::EmptyEmail));
        assert_eq!(Email::parse("ab.c"), Err(InputError::EmailWithoutAt));
    }

    #[test]
    fn email_refuses_control_characters_and_inner_space() {
        for bad in [
            "a\0b@x.y",
            "a\r\nX-Evil: 1@x.y",
            "a b@x.y",
            "a@x\ty",
            "a\u{85}@x.y",
            "a\u{a0}b@x.y",
        ] {
            assert_eq!(
                Email::parse(bad),
                Err(InputError::EmailWithSpaceOrControl),
                "{bad:?}"
            );
        }
        assert!(Email::parse("é+tag@exämple.org").is_ok());
    }

    #[test]
    fn client_addresses_count_ipv6_per_64_and_mapped_ipv4_as_ipv4() {
        let key = |s: &str| ClientAddress::new(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(key("192.0.2.7").to_string(), "192.0.2.7");
    }

    #[test]
    fn email_is_bounded_in_bytes() {
        let at_limit = format!("{}@b.c", "a".repeat(MAX_EMAIL_BYTES - 4));
        assert!(Email::parse(&at_limit).is_ok());
        let over = format!("a{at_limit}");
        assert_eq!(Email::parse(&over), Err(InputError::EmailTooLong));
    }

    #[test]
    fn password_is_bounded_in_bytes_not_characters() {
        // 24 three-byte characters: 72 bytes, accepted; one byte more is refused.
        let multibyte = "€".repeat(24);
        assert_eq!(multibyte.len(), 72);
        assert!(Password::parse(&multibyte).is_ok());
        assert_eq!(
            Password::parse(&format!("{multibyte}a")),
            Err(InputError::PasswordTooLong)
        );
        assert_eq!(Password::parse(""), Err(InputError::EmptyPassword));
    }

    #[test]
    fn new_password_minimum_counts_characters() {
        assert!(Password::parse_new("€€€", 3).is_ok());
        assert_eq!(
            Password::parse_new("ab", 3),
            Err(InputError::PasswordTooShort(3))
        );
        assert!(
            Password::parse(" ").is_ok(),
            "white space is a password too"
        );
    }

    #[test]
    fn password_debug_is_redacted() {
        let p = Password::parse("hunter2").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
