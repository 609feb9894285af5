//! Requests that run bcrypt wait on threads of their own: while every one of those is busy,
//! cheap requests are still answered, and past the lane's capacity bcrypt requests are shed
//! with 503 and `Retry-After` instead of piling up.

mod support;

use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use auth_service::app::{self, Context, Reply, Request};
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

fn release() {
    let (open, opened) = &HELD;
    *open.lock().unwrap() = true;
    opened.notify_all();
}

#[test]
fn cheap_requests_are_answered_while_bcrypt_is_saturated_and_the_overflow_is_shed() {
    let s = TestServer::with_handler(held_registrations);
    // More registrations than the lane's threads and queue can hold (32 a thread, one thread
    // a core), all held inside the handler or waiting for it.
    let n = auth_service::config::cores() * 33 + 20;
    let barrier = Arc::new(Barrier::new(n + 1));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let client = Client::new(s.base.clone());
            thread::spawn(move || {
                barrier.wait();
                let email = format!("user{i}@example.com");
                client.post("/users", &[("email", &email), ("password", "pw")])
            })
        })
        .collect();
    barrier.wait();

    // The lane holds at most its capacity; the rest come back 503 while it is still held.
    let mut shed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while shed < 20 {
        assert!(Instant::now() < deadline, "only {shed} requests were shed");
        // Every worker is free: GET / and GET /profile are answered with the lane full.
        assert_eq!(s.get("/", None).status, 200);
        assert_eq!(s.get("/profile", None).status, 403);
        shed = s
            .server()
            .shared()
            .metrics
            .render()
            .lines()
            .fold(0, |n, line| {
                if line.starts_with("auth_requests_total{route=\"/users\",status=\"503\"}") {
                    line.rsplit(' ').next().unwrap().parse().unwrap()
                } else {
                    n
                }
            });
        thread::sleep(Duration::from_millis(20));
    }
    release();

    let replies: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<&Resp> = replies.iter().filter(|r| r.status == 503).collect();
    let created = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(busy.len() + created, n, "only 200 and 503: {replies:?}");
    assert!(busy.len() >= 20 && created >= auth_service::config::cores() * 32);
    for r in busy {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.json["message"].is_string());
    }
}
