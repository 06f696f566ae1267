//! A work queue of keys for level-triggered controllers: a key waiting is queued once however
//! often it is added, a key being worked on is never handed to a second worker (added again, it
//! comes back when the first is done), and failures come back after an exponential back-off.
//! A queue given [`QueueMetrics`] reports Kubernetes' work-queue metrics under its name.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::metrics::{Counter, Family, Gauge, Histogram, OneLabel, Registry, label, secs};

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<String>,
    /// Queued, or to be queued again when its worker is done.
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
    /// When each dirty key was added (kept only with metrics).
    added: HashMap<String, Instant>,
    /// When each key being worked on was handed out (kept only with metrics).
    started: HashMap<String, Instant>,
    shut: bool,
}

/// Kubernetes' work-queue metrics, one series per queue `name`: `workqueue_depth`,
/// `workqueue_adds_total`, `workqueue_retries_total`, `workqueue_queue_duration_seconds` and
/// `workqueue_work_duration_seconds`. Register once per process; queues built later (a new
/// leadership term) take their series by name.
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    depth: Family<OneLabel, Gauge>,
    adds: Family<OneLabel, Counter>,
    retries: Family<OneLabel, Counter>,
    queue_duration: Family<OneLabel, Histogram>,
    work_duration: Family<OneLabel, Histogram>,
}

/// Kubernetes' work-queue buckets: 1 µs to 1000 s, a factor of ten apart (written out, so the
/// bounds print as round numbers rather than accumulated rounding).
const DURATION_BUCKETS: [f64; 10] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Default for QueueMetrics {
    fn default() -> Self {
        QueueMetrics {
            depth: Family::default(),
            adds: Family::default(),
            retries: Family::default(),
            queue_duration: Family::new_with_constructor(duration_histogram),
            work_duration: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl QueueMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "workqueue_depth",
            "Keys waiting in the work queue, including those to be queued again once their worker is done",
            self.depth.clone(),
        );
        registry.register(
            "workqueue_adds",
            "Keys added to the work queue (an add of a key already waiting is not counted)",
            self.adds.clone(),
        );
        registry.register(
            "workqueue_retries",
            "Keys the work queue was asked to add again after a delay (back-off or requeue-after)",
            self.retries.clone(),
        );
        registry.register(
            "workqueue_queue_duration_seconds",
            "How long a key waits in the work queue before a worker takes it",
            self.queue_duration.clone(),
        );
        registry.register(
            "workqueue_work_duration_seconds",
            "How long a worker takes to sync one key",
            self.work_duration.clone(),
        );
    }

    fn series(&self, name: &str) -> QueueSeries {
        let l = label("name", name.to_owned());
        QueueSeries {
            depth: self.depth.get_or_create_owned(&l),
            adds: self.adds.get_or_create_owned(&l),
            retries: self.retries.get_or_create_owned(&l),
            queue_duration: self.queue_duration.get_or_create_owned(&l),
            work_duration: self.work_duration.get_or_create_owned(&l),
        }
    }
}

/// One queue's series.
#[derive(Debug)]
struct QueueSeries {
    depth: Gauge,
    adds: Counter,
    retries: Counter,
    queue_duration: Histogram,
    work_duration: Histogram,
}

/// Cheap to clone; clones share the queue.
#[derive(Debug, Clone)]
pub struct Queue {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    base_delay: Duration,
    max_delay: Duration,
    metrics: Option<Arc<QueueSeries>>,
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
            metrics: None,
        }
    }

    /// Reports this queue's metrics in `metrics` as the queue `name` (`replicaset`).
    pub fn with_metrics(mut self, name: &str, metrics: &QueueMetrics) -> Queue {
        self.metrics = Some(Arc::new(metrics.series(name)));
        self
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
        if let Some(m) = &self.metrics {
            m.adds.inc();
            m.depth.set(gauge(s.dirty.len()));
            s.added.insert(key.clone(), Instant::now());
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
        if let Some(m) = &self.metrics {
            m.retries.inc();
        }
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
                    if let Some(m) = &self.metrics {
                        let now = Instant::now();
                        m.depth.set(gauge(s.dirty.len()));
                        if let Some(at) = s.added.remove(&key) {
                            m.queue_duration.observe(secs(now - at));
                        }
                        s.started.insert(key.clone(), now);
                    }
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
        if let Some(m) = &self.metrics
            && let Some(at) = s.started.remove(key)
        {
            m.work_duration.observe(secs(at.elapsed()));
        }
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

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{
        encode,
        tests::{sample, samples},
    };

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

    #[tokio::test(start_paused = true)]
    async fn a_named_queue_reports_kubernetes_work_queue_metrics() {
        let mut registry = Registry::default();
        let metrics = QueueMetrics::default();
        metrics.register(&mut registry);
        let q = Queue::default().with_metrics("replicaset", &metrics);
        q.add("a");
        q.add("a");
        q.add("b");
        let text = encode(&registry);
        let get = |text: &str, series: &str| sample(text, series).unwrap_or(-1.0);
        assert_eq!(get(&text, "workqueue_depth{name=\"replicaset\"}"), 2.0);
        // The second add of a waiting key is no add.
        assert_eq!(get(&text, "workqueue_adds_total{name=\"replicaset\"}"), 2.0);

        tokio::time::advance(Duration::from_millis(3)).await;
        let k = q.next().await.unwrap();
        tokio::time::advance(Duration::from_millis(40)).await;
        q.done(&k);
        q.add_rate_limited("c");
        let text = encode(&registry);
        assert_eq!(get(&text, "workqueue_depth{name=\"replicaset\"}"), 1.0);
        assert_eq!(
            get(&text, "workqueue_retries_total{name=\"replicaset\"}"),
            1.0
        );
        // 3 ms waiting falls in the bucket up to 10 ms, 40 ms of work in the one up to 100 ms.
        let bucket = |h: &str, le: &str| {
            get(
                &text,
                &format!(
                    "workqueue_{h}_duration_seconds_bucket{{name=\"replicaset\",le=\"{le}\"}}"
                ),
            )
        };
        assert_eq!(bucket("queue", "0.001"), 0.0);
        assert_eq!(bucket("queue", "0.01"), 1.0);
        assert_eq!(bucket("work", "0.01"), 0.0);
        assert_eq!(bucket("work", "0.1"), 1.0);
        assert_eq!(bucket("work", "1000"), 1.0);
        assert_eq!(bucket("work", "+Inf"), 1.0);
        assert_eq!(
            get(
                &text,
                "workqueue_work_duration_seconds_count{name=\"replicaset\"}"
            ),
            1.0
        );
        let sum = get(
            &text,
            "workqueue_queue_duration_seconds_sum{name=\"replicaset\"}",
        );
        assert!((sum - 0.003).abs() < 1e-9, "{sum}");
        // Kubernetes' bounds: 1e-06 up to 1000, ten buckets and +Inf.
        let bounds = samples(&text)
            .into_iter()
            .filter(|(s, _)| s.starts_with("workqueue_work_duration_seconds_bucket"))
            .count();
        assert_eq!(bounds, 11, "{text}");
        assert!(text.contains("le=\"1e-06\""), "{text}");
    }

    #[tokio::test]
    async fn a_queue_without_metrics_keeps_no_timestamps() {
        let q = Queue::default();
        q.add("a");
        let k = q.next().await.unwrap();
        q.done(&k);
        let s = q.lock();
        assert!(s.added.is_empty() && s.started.is_empty());
    }
}
