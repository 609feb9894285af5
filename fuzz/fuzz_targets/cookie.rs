//! `cookie_value` on any `Cookie` header: it never panics, returns a part of the header without
//! `;` (trimmed, or what was between quotes), and finds a cookie appended to a header that had
//! none.

#![no_main]

use auth_service::app::{cookie_value, SESSION_COOKIE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = String::from_utf8_lossy(data);
    match cookie_value(&header, SESSION_COOKIE) {
        Some(value) => {
            assert!(header.contains(value));
            assert!(!value.contains(';'));
            // Trimmed, unless it was quoted: quotes keep what is inside them.
            assert!(value == value.trim() || header.contains(&format!("\"{value}\"")));
        }
        None => {
            let appended = format!("{header};{SESSION_COOKIE}=abc-123");
            assert_eq!(
                cookie_value(&appended, SESSION_COOKIE),
                Some("abc-123"),
                "{appended:?}"
            );
        }
    }
});
