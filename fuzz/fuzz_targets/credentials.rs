//! `Email::parse` and `Password::parse_new` on any text: each accepts exactly what it
//! promises. An email: trimmed, 1 to 254 bytes, with `@`. A new password: 1 to 72 bytes,
//! never altered, at least `min` characters. The first byte picks `min`.

#![no_main]

use auth_service::user::{Email, Password, MAX_EMAIL_BYTES, MAX_PASSWORD_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&min, rest)) = data.split_first() else {
        return;
    };
    let min = usize::from(min % 16);
    let Ok(raw) = std::str::from_utf8(rest) else {
        return;
    };

    let trimmed = raw.trim();
    let email_ok = !trimmed.is_empty() && trimmed.len() <= MAX_EMAIL_BYTES && trimmed.contains('@');
    match Email::parse(raw) {
        Ok(email) => {
            assert!(email_ok, "accepted {raw:?}");
            assert_eq!(email.as_str(), trimmed);
        }
        Err(e) => {
            assert!(!email_ok, "refused {raw:?}: {e}");
            // A fixed message that names the field and never quotes the value.
            let message = e.to_string();
            let known = [
                "email is required",
                "email must contain @",
                "email is longer than 254 bytes",
            ];
            assert!(known.contains(&message.as_str()), "{message}");
        }
    }

    let password_ok = (1..=MAX_PASSWORD_BYTES).contains(&raw.len()) && raw.chars().count() >= min;
    match Password::parse_new(raw, min) {
        Ok(password) => {
            assert!(password_ok, "accepted {raw:?} with min {min}");
            assert_eq!(password.as_str(), raw);
            assert_eq!(format!("{password:?}"), "Password(<redacted>)");
        }
        Err(e) => assert!(!password_ok, "refused {raw:?} with min {min}: {e}"),
    }
});
