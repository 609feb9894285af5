//! `Form::parse` on any body: it never panics, accepts only UTF-8, and agrees with
//! `form_urlencoded::parse` (which decodes lossily) on every body it accepts.

#![no_main]

use auth_service::app::Form;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(form) = Form::parse(data) else {
        return;
    };
    let text = std::str::from_utf8(data).expect("an accepted body is UTF-8");
    for (key, value) in form_urlencoded::parse(data) {
        let first = form_urlencoded::parse(data)
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v);
        assert_eq!(form.get(&key), first.as_deref(), "{text:?}");
        assert!(value.len() <= text.len(), "decoding never grows a value");
    }
});
