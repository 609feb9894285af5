use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

enum Control<T> {
    Elem(T),
    Unblock,
}

/// The queue of requests between the connections' threads and the workers.
///
/// auth-service: it can be closed. A closed queue takes nothing more (`push` hands the value
/// back), drops what it held, and wakes every thread waiting on it: so a server that stops can
/// neither leave a worker waiting nor a request unanswered in the queue.
pub struct MessagesQueue<T>
where
    T: Send,
{
    queue: Mutex<State<T>>,
    condvar: Condvar,
}

struct State<T> {
    items: VecDeque<Control<T>>,
    closed: bool,
}

impl<T> MessagesQueue<T>
where
    T: Send,
{
    pub fn with_capacity(capacity: usize) -> MessagesQueue<T> {
        MessagesQueue {
            queue: Mutex::new(State {
                items: VecDeque::with_capacity(capacity),
                closed: false,
            }),
            condvar: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pushes an element to the queue; hands it back when the queue is closed.
    pub fn push(&self, value: T) -> Result<(), T> {
        let mut queue = self.lock();
        if queue.closed {
            return Err(value);
        }
        queue.items.push_back(Control::Elem(value));
        self.condvar.notify_one();
        Ok(())
    }

    /// Wakes up one thread blocked in `pop`, which returns `None`.
    pub fn unblock(&self) {
        let mut queue = self.lock();
        queue.items.push_back(Control::Unblock);
        self.condvar.notify_one();
    }

    /// Takes nothing more, drops what is queued, and wakes every waiting thread.
    pub fn close(&self) {
        let dropped = {
            let mut queue = self.lock();
            queue.closed = true;
            std::mem::take(&mut queue.items)
        };
        self.condvar.notify_all();
        // Dropped outside the lock: dropping a request answers it.
        drop(dropped);
    }

    /// Pops an element from the queue; `None` when unblocked or closed.
    pub fn pop(&self) -> Option<T> {
        let mut queue = self.lock();

        loop {
            match queue.items.pop_front() {
                Some(Control::Elem(value)) => return Some(value),
                Some(Control::Unblock) => return None,
                None if queue.closed => return None,
                None => (),
            }

            queue = self
                .condvar
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Tries to pop an element without blocking.
    pub fn try_pop(&self) -> Option<T> {
        let mut queue = self.lock();
        match queue.items.pop_front() {
            Some(Control::Elem(value)) => Some(value),
            Some(Control::Unblock) | None => None,
        }
    }

    /// Tries to pop an element, waiting at most `timeout`.
    pub fn pop_timeout(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut queue = self.lock();
        loop {
            match queue.items.pop_front() {
                Some(Control::Elem(value)) => return Some(value),
                Some(Control::Unblock) => return None,
                None if queue.closed => return None,
                None => (),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            queue = self
                .condvar
                .wait_timeout(queue, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
