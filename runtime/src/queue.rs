//! A work queue of keys for level-triggered controllers: a key waiting is queued once however
//! often it is added, a key being worked on is never handed to a second worker (added again, it
//! comes back when the first is done), and failures come back after an exponential back-off.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<String>,
    /// Queued, or to be queued again when its worker is done.
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
    shut: bool,
}

/// Cheap to clone; clones share the queue.
#[derive(Debug, Clone)]
pub struct Queue {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    base_delay: Duration,
    max_delay: Duration,
}

impl Default for Queue {
    fn default() -> Self {
        Queue::new(Duration::from_millis(5), Duration::from_secs(30))
    }
}

impl Queue {
    /// Failed keys come back after `base_delay * 2^failures`, at most `max_delay`.
    pub fn new(base_delay: Duration, max_delay: Duration) -> Queue {
        Queue {
            state: Arc::default(),
            notify: Arc::new(Notify::new()),
            base_delay,
            max_delay,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut s = self.lock();
        if s.shut || !s.dirty.insert(key.clone()) {
            return;
        }
        if !s.processing.contains(&key) {
            s.queue.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Adds `key` once `delay` has passed.
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        let key = key.into();
        if delay.is_zero() {
            return self.add(key);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Adds `key` after its back-off, which doubles with each call until [`Queue::forget`].
    pub fn add_rate_limited(&self, key: impl Into<String>) {
        let key = key.into();
        let n = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = self
            .base_delay
            .saturating_mul(1 << (n - 1).min(20))
            .min(self.max_delay);
        self.add_after(key, delay);
    }

    /// Clears `key`'s failure count.
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// How many times in a row `key` has failed.
    pub fn failures(&self, key: &str) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to work on; `None` once the queue is shut down. Call [`Queue::done`] after.
    pub async fn next(&self) -> Option<String> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(key) = s.queue.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    if !s.queue.is_empty() {
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
                if s.shut {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Marks `key` finished; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &str) {
        let mut s = self.lock();
        // A key not being worked on (a repeated `done`) is already queued if it is dirty.
        if s.processing.remove(key) && s.dirty.contains(key) {
            s.queue.push_back(key.to_owned());
            drop(s);
            self.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes every waiting worker with `None`.
    pub fn shut_down(&self) {
        self.lock().shut = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_queued_once_and_never_worked_on_twice_at_once() {
        let q = Queue::default();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let a = q.next().await.unwrap();
        assert_eq!(a, "a");
        // Added while being worked on: not handed out until done.
        q.add("a");
        assert_eq!(q.next().await.unwrap(), "b");
        assert!(q.is_empty());
        q.done("b");
        q.done("a");
        assert_eq!(q.next().await.unwrap(), "a");
        q.done("a");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_until_forgotten() {
        let q = Queue::new(Duration::from_millis(10), Duration::from_millis(35));
        for want in [10, 20, 35, 35] {
            let start = tokio::time::Instant::now();
            q.add_rate_limited("k");
            let k = q.next().await.unwrap();
            q.done(&k);
            // Paused time jumps straight to the timer, so the wait is exact.
            assert_eq!(start.elapsed(), Duration::from_millis(want));
        }
        assert_eq!(q.failures("k"), 4);
        q.forget("k");
        assert_eq!(q.failures("k"), 0);
    }

    #[tokio::test]
    async fn shut_down_releases_waiting_workers() {
        let q = Queue::default();
        let w = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(w.await.unwrap(), None);
    }
}
