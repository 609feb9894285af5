//! The bcrypt slow lane's queue: fair between clients, and bounded in time.
//!
//! Requests that run bcrypt (registration, login, reset) wait here for one of a few threads,
//! so that the workers stay free for cheap requests. Two rules keep one client from taking the
//! lane from everyone else:
//!
//! - **Fair**: each client address has a queue of its own, and the threads take one request
//!   from each address in turn. A newcomer waits behind one request of every other address,
//!   never behind a flood from one of them.
//! - **Bounded in time**: a request is refused (the server answers 503 with `Retry-After`) when
//!   its expected wait passes [`MAX_WAIT`]: the requests served before it, under the turn
//!   taking, times the measured time of one request, shared among the threads. So a flood
//!   fills its own address's share of the lane, and what is admitted is answered in seconds.
//!   (The server also refuses a request that has waited past the bound anyway, when its turn
//!   comes.)

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::user::ClientAddress;

/// The longest expected wait a request is admitted with.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// Requests queued at most, whatever their expected wait, per thread: a bound on memory
/// before the first request has been timed.
pub const MAX_QUEUED_PER_THREAD: usize = 64;

/// A queue of jobs of type `J`, served in turn per client address.
pub struct SlowLane<J> {
    state: Mutex<State<J>>,
    ready: Condvar,
    threads: usize,
    /// The time of one job, in microseconds: a moving average of the measured times.
    job_micros: AtomicU64,
}

struct State<J> {
    queues: HashMap<ClientAddress, VecDeque<J>>,
    /// The addresses with queued jobs, in the order of their next turn.
    turns: VecDeque<ClientAddress>,
    queued: usize,
    closed: bool,
}

impl<J> SlowLane<J> {
    /// A lane for `threads` threads whose jobs take about `job_time` each until measured.
    pub fn new(threads: usize, job_time: Duration) -> SlowLane<J> {
        SlowLane {
            state: Mutex::new(State {
                queues: HashMap::new(),
                turns: VecDeque::new(),
                queued: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            threads: threads.max(1),
            job_micros: AtomicU64::new(micros(job_time)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` for `client`, or hands it back when its expected wait is too long (or the
    /// lane is closed).
    pub fn push(&self, client: ClientAddress, job: J) -> Result<(), J> {
        let mut state = self.lock();
        if state.closed
            || state.queued >= self.threads * MAX_QUEUED_PER_THREAD
            || self.expected_wait(&state, &client) > MAX_WAIT
        {
            return Err(job);
        }
        let queue = state.queues.entry(client).or_default();
        queue.push_back(job);
        if queue.len() == 1 {
            state.turns.push_back(client);
        }
        state.queued += 1;
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// How long a new job of `client` would wait: it is served in the turn after `client`'s
    /// queued jobs, behind as many jobs of every other address (or all they have).
    fn expected_wait(&self, state: &State<J>, client: &ClientAddress) -> Duration {
        let own = state.queues.get(client).map_or(0, VecDeque::len);
        let ahead: usize = state
            .queues
            .iter()
            .map(|(address, queue)| {
                if address == client {
                    own
                } else {
                    queue.len().min(own + 1)
                }
            })
            .sum();
        // The jobs ahead, shared among the threads, after the ones running now.
        let rounds = ahead / self.threads + 1;
        Duration::from_micros(self.job_micros.load(Relaxed)).saturating_mul(rounds as u32)
    }

    /// The next job, taking addresses in turn; waits for one. `None` once the lane is closed
    /// and empty.
    pub fn pop(&self) -> Option<J> {
        let mut state = self.lock();
        loop {
            if let Some(client) = state.turns.pop_front() {
                let queue = state.queues.get_mut(&client).expect("a turn has a queue");
                let job = queue.pop_front().expect("a queue in turn is not empty");
                if queue.is_empty() {
                    state.queues.remove(&client);
                } else {
                    state.turns.push_back(client);
                }
                state.queued -= 1;
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Takes no more jobs and drops the queued ones; `pop` returns `None` from then on.
    pub fn close(&self) {
        let dropped = {
            let mut state = self.lock();
            state.closed = true;
            state.turns.clear();
            state.queued = 0;
            std::mem::take(&mut state.queues)
        };
        self.ready.notify_all();
        // Outside the lock: dropping a job answers it.
        drop(dropped);
    }

    /// Counts a job's measured time into the average (an eighth of each new one).
    pub fn record(&self, took: Duration) {
        let took = micros(took);
        let _ = self.job_micros.fetch_update(Relaxed, Relaxed, |average| {
            Some(average - average / 8 + took / 8)
        });
    }

    /// Jobs queued now.
    pub fn queued(&self) -> usize {
        self.lock().queued
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn client(last: u8) -> ClientAddress {
        ClientAddress::new(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn addresses_are_served_in_turn() {
        let lane = SlowLane::new(1, Duration::from_millis(1));
        for job in ["a1", "a2", "a3"] {
            lane.push(client(1), job).unwrap();
        }
        lane.push(client(2), "b1").unwrap();
        lane.push(client(3), "c1").unwrap();
        lane.push(client(2), "b2").unwrap();
        let order: Vec<_> = (0..6).map(|_| lane.pop().unwrap()).collect();
        assert_eq!(order, ["a1", "b1", "c1", "a2", "b2", "a3"]);
    }

    #[test]
    fn a_flood_is_shed_past_the_wait_bound_and_a_newcomer_still_gets_in() {
        // One second a job, one thread: the tenth job waits (at most) for the nine ahead and
        // the one running, 10 s; the eleventh would wait longer.
        let lane = SlowLane::new(1, Duration::from_secs(1));
        let admitted = (0..20).filter(|&i| lane.push(client(1), i).is_ok()).count();
        assert_eq!(admitted, 10);
        assert!(
            lane.push(client(2), 100).is_ok(),
            "a newcomer waits behind one job"
        );
        assert!(lane.push(client(2), 101).is_ok());
    }

    #[test]
    fn measured_times_move_the_bound() {
        let lane = SlowLane::new(2, Duration::from_secs(1));
        for _ in 0..64 {
            lane.record(Duration::from_millis(10));
        }
        let admitted = (0..2000)
            .filter(|&i| lane.push(client(1), i).is_ok())
            .count();
        assert_eq!(
            admitted,
            2 * MAX_QUEUED_PER_THREAD,
            "bounded by count once fast"
        );
    }

    #[test]
    fn a_closed_lane_takes_nothing_and_gives_nothing() {
        let lane = SlowLane::new(1, Duration::from_millis(1));
        lane.push(client(1), 1).unwrap();
        lane.close();
        assert!(lane.push(client(1), 2).is_err());
        assert_eq!(lane.pop(), None);
    }
}
