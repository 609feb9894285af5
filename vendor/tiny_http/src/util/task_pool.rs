use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

/// Manages a collection of threads.
///
/// A new thread is created every time all the existing threads are full.
/// Any idle thread will automatically die after a few seconds.
///
/// auth-service: a thread that cannot be created is an error handed back to the caller (with
/// the task, which the caller drops), not a panic inside the pool that poisons its lock and
/// stops every later spawn; and threads get the stack size asked for.
pub struct TaskPool {
    sharing: Arc<Sharing>,
    stack_size: usize,
}

type Task = Box<dyn FnOnce() + Send>;

struct Sharing {
    // list of the tasks to be done by worker threads
    todo: Mutex<VecDeque<Task>>,

    // condvar that will be notified whenever a task is added to `todo`
    condvar: Condvar,

    // number of total worker threads running
    active_tasks: AtomicUsize,

    // number of idle worker threads
    waiting_tasks: AtomicUsize,
}

impl Sharing {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Task>> {
        self.todo.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Minimum number of active threads.
static MIN_THREADS: usize = 4;

struct Registration<'a> {
    nb: &'a AtomicUsize,
}

impl<'a> Registration<'a> {
    fn new(nb: &'a AtomicUsize) -> Registration<'a> {
        nb.fetch_add(1, Ordering::Release);
        Registration { nb }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.nb.fetch_sub(1, Ordering::Release);
    }
}

impl TaskPool {
    /// A pool whose threads have stacks of `stack_size` bytes.
    pub fn new(stack_size: usize) -> TaskPool {
        let pool = TaskPool {
            sharing: Arc::new(Sharing {
                todo: Mutex::new(VecDeque::new()),
                condvar: Condvar::new(),
                active_tasks: AtomicUsize::new(0),
                waiting_tasks: AtomicUsize::new(0),
            }),
            stack_size,
        };

        for _ in 0..MIN_THREADS {
            let _ = pool.add_thread(None);
        }

        pool
    }

    /// Executes a function in a thread. If no thread is available, spawns a new one; when
    /// that fails, hands the task back.
    pub fn spawn(&self, code: Task) -> Result<(), Task> {
        let mut queue = self.sharing.lock();

        // auth-service patch: a thread that was notified for a queued task but has not woken
        // yet still counts as waiting, so upstream's `== 0` let a new connection sit in the
        // queue, unserved, until some other connection closed. Only threads beyond the queued
        // tasks are free.
        if self.sharing.waiting_tasks.load(Ordering::Acquire) <= queue.len() {
            drop(queue);
            self.add_thread(Some(code))
        } else {
            queue.push_back(code);
            self.sharing.condvar.notify_one();
            Ok(())
        }
    }

    fn add_thread(&self, initial_fn: Option<Task>) -> Result<(), Task> {
        let sharing = self.sharing.clone();
        // The task goes through a slot so that it can be handed back if the thread never starts.
        let slot = Arc::new(Mutex::new(initial_fn));
        let task = Arc::clone(&slot);

        let spawned = thread::Builder::new()
            .name("http-connection".into())
            .stack_size(self.stack_size)
            .spawn(move || {
                let sharing = sharing;
                let _active_guard = Registration::new(&sharing.active_tasks);

                let first = task.lock().unwrap_or_else(PoisonError::into_inner).take();
                drop(task);
                if let Some(f) = first {
                    f();
                }

                loop {
                    let task: Task = {
                        let mut todo = sharing.lock();

                        let task;
                        loop {
                            if let Some(poped_task) = todo.pop_front() {
                                task = poped_task;
                                break;
                            }
                            let _waiting_guard = Registration::new(&sharing.waiting_tasks);

                            let received =
                                if sharing.active_tasks.load(Ordering::Acquire) <= MIN_THREADS {
                                    todo = sharing
                                        .condvar
                                        .wait(todo)
                                        .unwrap_or_else(PoisonError::into_inner);
                                    true
                                } else {
                                    let (new_lock, waitres) = sharing
                                        .condvar
                                        .wait_timeout(todo, Duration::from_millis(5000))
                                        .unwrap_or_else(PoisonError::into_inner);
                                    todo = new_lock;
                                    !waitres.timed_out()
                                };

                            if !received && todo.is_empty() {
                                return;
                            }
                        }

                        task
                    };

                    task();
                }
            });
        match spawned {
            Ok(_) => Ok(()),
            Err(_) => Err(hand_back(slot)),
        }
    }
}

/// The task a thread that never started was to run.
fn hand_back(slot: Arc<Mutex<Option<Task>>>) -> Task {
    let task = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    task.unwrap_or_else(|| Box::new(|| {}))
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        self.sharing
            .active_tasks
            .store(999_999_999, Ordering::Release);
        self.sharing.condvar.notify_all();
    }
}
