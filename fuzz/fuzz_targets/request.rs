//! `app::handle` on any request as the service sees it once tiny_http has parsed it: method,
//! path, `Cookie`, `X-Forwarded-For` and body, against a real `Auth` on an in-memory SQLite
//! store. Nothing a client sends is a 500; every answer but the metrics is JSON; each status
//! carries the headers it promises.
//!
//! Input: byte 0 picks the method, byte 1 the path (a route, or the text that follows), then
//! newline-separated path, cookie, forwarded-for and body.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use auth_service::app::{handle, Context, Request, ROUTES};
use auth_service::auth::{Auth, Policy, Shared};
use auth_service::metrics::Metrics;
use auth_service::{Config, Db};
use libfuzzer_sys::fuzz_target;

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

thread_local! {
    static SERVICE: (Auth, Config, Arc<Metrics>) = {
        let mut config = Config { metrics: true, trust_proxy: true, ..Config::default() };
        config.policy = Policy { bcrypt_cost: 4, ..Policy::default() };
        let db = Db::open(Path::new(":memory:")).expect("an in-memory store");
        let metrics = Arc::new(Metrics::default());
        let auth = Auth::new(db, Arc::new(Shared::new(config.policy.clone(), Arc::clone(&metrics))));
        (auth, config, metrics)
    };
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let mut parts = data[2..].splitn(4, |b| *b == b'\n');
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (raw_path, cookie, forwarded_for) = (next(), next(), next());
    let body = data[2..]
        .splitn(4, |b| *b == b'\n')
        .nth(3)
        .unwrap_or_default();
    let method = METHODS.get(usize::from(data[0])).copied().unwrap_or("BREW");
    let path = ROUTES
        .get(usize::from(data[1]))
        .map_or(raw_path.as_str(), |(_, p)| p);

    SERVICE.with(|(auth, config, metrics)| {
        let ctx = Context { auth, config, metrics };
        let rq = Request {
            method,
            path,
            cookie: Some(cookie.as_str()).filter(|c| !c.is_empty()),
            forwarded_for: Some(forwarded_for.as_str()).filter(|f| !f.is_empty()),
            peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
            body,
        };
        let reply = handle(&ctx, &rq);
        assert!(reply.status < 500, "{rq:?} -> {reply:?}");
        let header = |name: &str| reply.headers.iter().any(|(n, _)| *n == name);
        if (method, path, reply.status) == ("GET", "/metrics", 200) {
            assert!(reply.content_type.starts_with("text/plain"));
        } else {
            assert_eq!(reply.content_type, "application/json");
            let json: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
            if reply.status >= 400 {
                assert!(json["message"].is_string(), "{reply:?}");
            }
        }
        match reply.status {
            405 => assert!(header("Allow")),
            429 | 503 => assert!(header("Retry-After")),
            302 => assert!(header("Location") && header("Set-Cookie")),
            _ => {}
        }
        if header("Set-Cookie") {
            assert!(matches!(
                (method, path, reply.status),
                ("POST", "/sessions", 200) | ("DELETE", "/sessions", 302)
            ));
        }
    });
});
