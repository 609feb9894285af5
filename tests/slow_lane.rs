//! Requests that run bcrypt wait on threads of their own: while every one of those is busy,
//! cheap requests are still answered, and past the lane's capacity bcrypt requests are shed
//! with 503 and `Retry-After` instead of piling up. (What an expected wait past ten seconds
//! does, with real bcrypt, is in `tests/hostile.rs`; the lane's rules are unit-tested in
//! `src/slow_lane.rs`.)

mod support;

use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use auth_service::app::{self, Context, Reply, Request};
use auth_service::slow_lane::MAX_QUEUED_PER_THREAD;
use support::*;

/// Holds POST /users until the test opens it; everything else goes to the app.
static HELD: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

fn held_registrations(ctx: &Context<'_>, rq: &Request<'_>) -> Reply {
    if rq.path == "/users" {
        let (open, opened) = &HELD;
        let mut open = open.lock().unwrap();
        while !*open {
            open = opened.wait(open).unwrap();
        }
    }
    app::handle(ctx, rq)
}

/// Opens the held registrations when dropped, so that a failing test cannot leave the lane's
/// threads held and the server unable to stop.
struct Release;

impl Drop for Release {
    fn drop(&mut self) {
        let (open, opened) = &HELD;
        *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        opened.notify_all();
    }
}

#[test]
fn cheap_requests_are_answered_while_bcrypt_is_saturated_and_the_overflow_is_shed() {
    let s = TestServer::with_handler(held_registrations);
    let release = Release;
    // More registrations than the lane's threads and queue can hold (a thread a core, and
    // MAX_QUEUED_PER_THREAD waiting for each: at bcrypt cost 4 the count binds before the
    // expected wait does), all held inside the handler or waiting for it.
    let capacity = auth_service::config::cores() * (MAX_QUEUED_PER_THREAD + 1);
    let n = capacity + 20;
    let barrier = Arc::new(Barrier::new(n + 1));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let client = Client::new(s.addr);
            thread::spawn(move || {
                barrier.wait();
                let email = format!("user{i}@example.com");
                client.register(&email, "pw")
            })
        })
        .collect();
    barrier.wait();

    // The lane holds at most its capacity; the rest come back 503 while it is still held.
    eventually(
        "20 registrations to be shed",
        Duration::from_secs(60),
        || {
            // Every worker is free: GET / and GET /profile are answered with the lane full.
            assert_eq!(s.get("/", None).status, 200);
            assert_eq!(s.get("/profile", None).status, 403);
            let shed: u64 = s.server().metrics().render().lines().fold(0, |n, line| {
                if line.starts_with("auth_requests_total{route=\"/users\",status=\"503\"}") {
                    line.rsplit(' ').next().unwrap().parse().unwrap()
                } else {
                    n
                }
            });
            (shed >= 20).then_some(())
        },
    );
    drop(release);

    let replies: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<&Resp> = replies.iter().filter(|r| r.status == 503).collect();
    let created = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(busy.len() + created, n, "only 200 and 503: {replies:?}");
    assert!(busy.len() >= 20 && created >= capacity - auth_service::config::cores());
    for r in busy {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.json["message"].is_string());
    }
}
