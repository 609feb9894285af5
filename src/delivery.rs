//! Reset-token delivery through the operator's `--reset-command`, off the request workers.
//!
//! A reset request queues a delivery and is answered at once; a few threads of their own run
//! the command, each at most [`COMMAND_TIMEOUT`], so a slow mail script costs those threads and
//! never a worker. The queue is bounded: when it is full the request is refused (503 with
//! `Retry-After`) before a token is made, so no token is issued that cannot be sent. A failed or
//! timed-out delivery is logged (without the token) and counted in `/metrics`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::user::Email;

/// Deliveries waiting at most, beyond the ones running.
pub const QUEUE_CAPACITY: usize = 64;
/// Commands running at once.
const THREADS: usize = 2;
/// A command that has not finished after this long is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The delivery queue, shared by every worker.
pub struct Deliveries {
    command: PathBuf,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

struct State {
    queue: VecDeque<Delivery>,
    /// Slots handed out by `reserve` and not yet queued.
    reserved: usize,
    /// Threads running (started on demand, gone when the queue is empty).
    threads: usize,
}

struct Delivery {
    email: Email,
    token: String,
}

/// A place in the queue, held while the token is made.
pub struct Slot<'a> {
    deliveries: &'a Arc<Deliveries>,
    used: bool,
}

impl Deliveries {
    pub fn new(command: PathBuf, metrics: Arc<Metrics>) -> Arc<Deliveries> {
        Arc::new(Deliveries {
            command,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                reserved: 0,
                threads: 0,
            }),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place in the queue, or `None` when it is full.
    pub fn reserve(self: &Arc<Self>) -> Option<Slot<'_>> {
        let mut state = self.lock();
        if state.queue.len() + state.reserved >= QUEUE_CAPACITY {
            return None;
        }
        state.reserved += 1;
        Some(Slot {
            deliveries: self,
            used: false,
        })
    }

    /// One delivery thread: runs queued deliveries until there are none.
    fn run(self: Arc<Self>) {
        loop {
            let delivery = {
                let mut state = self.lock();
                match state.queue.pop_front() {
                    Some(delivery) => delivery,
                    None => {
                        state.threads -= 1;
                        return;
                    }
                }
            };
            let outcome = run_command(&self.command, &delivery);
            if let Err(why) = &outcome {
                // The email and the token stay out of the log line; the command's own output
                // goes where the server's does.
                crate::log::error(format_args!("reset delivery failed: {why}"));
            }
            self.metrics.reset_delivered(outcome.is_ok());
        }
    }
}

impl Slot<'_> {
    /// Queues the delivery of `token` to `email`.
    pub fn send(mut self, email: &Email, token: String) {
        self.used = true;
        let deliveries = self.deliveries;
        let start_thread = {
            let mut state = deliveries.lock();
            state.reserved -= 1;
            state.queue.push_back(Delivery {
                email: email.clone(),
                token,
            });
            let start = state.threads < THREADS;
            state.threads += usize::from(start);
            start
        };
        if start_thread {
            let runner = Arc::clone(deliveries);
            let started = std::thread::Builder::new()
                .name("reset-delivery".into())
                .spawn(move || runner.run());
            if started.is_err() {
                // No thread now: the next delivery tries again; this one waits for it.
                deliveries.lock().threads -= 1;
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.deliveries.lock().reserved -= 1;
        }
    }
}

/// Runs the command with the email and token in its environment (not its arguments, which
/// `ps` shows), at most [`COMMAND_TIMEOUT`].
fn run_command(command: &PathBuf, delivery: &Delivery) -> Result<(), String> {
    let mut child = Command::new(command)
        .env("AUTH_EMAIL", delivery.email.as_str())
        .env("AUTH_RESET_TOKEN", &delivery.token)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not start the reset command: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("the reset command exited with {status}")),
            Ok(None) if started.elapsed() > COMMAND_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the reset command timed out".into());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("could not wait for the reset command: {e}")),
        }
    }
}
