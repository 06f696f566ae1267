//! A work queue of keys for level-triggered controllers: a key waiting is queued once however
//! often it is added, a key being worked on is never handed to a second worker (added again, it
//! comes back when the first is done), and failures come back after an exponential back-off.
//! A queue given [`QueueMetrics`] reports Kubernetes' work-queue metrics under its name.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, OnceLock, Weak},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, gauge::ConstGauge},
};
use tokio::{sync::Notify, time::Instant};

use crate::metrics::{Counter, Family, Histogram, OneLabel, Registry, label, secs};

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
/// `workqueue_adds_total`, `workqueue_retries_total`, `workqueue_queue_duration_seconds`,
/// `workqueue_work_duration_seconds`, `workqueue_unfinished_work_seconds` and
/// `workqueue_longest_running_processor_seconds`. Register once per process; queues built
/// later (a new leadership term) take their series by name.
///
/// The three gauges are read from the queue at scrape time, from the newest queue of each
/// name: a queue shut down, or dropped at the end of a term, reads 0 rather than its last
/// values, and a queue left over from an earlier term never writes over its successor's.
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    adds: Family<OneLabel, Counter>,
    retries: Family<OneLabel, Counter>,
    queue_duration: Family<OneLabel, Histogram>,
    work_duration: Family<OneLabel, Histogram>,
    live: Arc<LiveQueues>,
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
            adds: Family::default(),
            retries: Family::default(),
            queue_duration: Family::new_with_constructor(duration_histogram),
            work_duration: Family::new_with_constructor(duration_histogram),
            live: Arc::default(),
        }
    }
}

impl QueueMetrics {
    pub fn register(&self, registry: &mut Registry) {
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
        registry.register_collector(Box::new(self.live.clone()));
    }

    fn series(&self, name: &str) -> QueueSeries {
        let l = label("name", name.to_owned());
        QueueSeries {
            adds: self.adds.get_or_create_owned(&l),
            retries: self.retries.get_or_create_owned(&l),
            queue_duration: self.queue_duration.get_or_create_owned(&l),
            work_duration: self.work_duration.get_or_create_owned(&l),
        }
    }
}

/// The newest queue of each name, read at scrape time. A queue is held weakly: the end of a
/// term drops it, and its gauges read 0 from then on.
#[derive(Debug, Default)]
struct LiveQueues(Mutex<Vec<(String, Weak<Inner>)>>);

/// What [`LiveQueues`] reads from one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Gauges {
    depth: f64,
    unfinished: f64,
    longest: f64,
}

impl LiveQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Weak<Inner>)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `queue` the one reported as `name`.
    fn set(&self, name: &str, queue: &Arc<Inner>) {
        let mut all = self.lock();
        match all.iter_mut().find(|(n, _)| n == name) {
            Some((_, q)) => *q = Arc::downgrade(queue),
            None => all.push((name.to_owned(), Arc::downgrade(queue))),
        }
    }

    fn read(&self) -> Vec<(String, Gauges)> {
        let now = Instant::now();
        self.lock()
            .iter()
            .map(|(name, q)| {
                let g = q.upgrade().map_or_else(Gauges::default, |q| q.gauges(now));
                (name.clone(), g)
            })
            .collect()
    }
}

/// A gauge family read at scrape time: its name, help text (ending in a full stop: a collector
/// writes it as given) and how to read it.
type GaugeFamily = (&'static str, &'static str, fn(&Gauges) -> f64);

const GAUGES: [GaugeFamily; 3] = [
    (
        "workqueue_depth",
        "Keys waiting in the work queue, including those to be queued again once their worker is done.",
        |g| g.depth,
    ),
    (
        "workqueue_unfinished_work_seconds",
        "Seconds of work in progress not yet observed by workqueue_work_duration_seconds; a large value that keeps growing suggests stuck workers.",
        |g| g.unfinished,
    ),
    (
        "workqueue_longest_running_processor_seconds",
        "How long the longest running worker of the work queue has been working on its key.",
        |g| g.longest,
    ),
];

impl Collector for LiveQueues {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let read = self.read();
        for (name, help, value) in GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (queue, g) in &read {
                let labels = label("name", queue.clone());
                ConstGauge::new(value(g)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// One queue's series.
#[derive(Debug)]
struct QueueSeries {
    adds: Counter,
    retries: Counter,
    queue_duration: Histogram,
    work_duration: Histogram,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    notify: Notify,
    base_delay: Duration,
    max_delay: Duration,
    /// Set once, by [`Queue::with_metrics`].
    metrics: OnceLock<QueueSeries>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The queue's gauges at `now`; a queue shut down has no keys waiting.
    fn gauges(&self, now: Instant) -> Gauges {
        let s = self.lock();
        let mut g = Gauges {
            depth: if s.shut { 0.0 } else { s.dirty.len() as f64 },
            ..Gauges::default()
        };
        for at in s.started.values() {
            let running = secs(now.saturating_duration_since(*at));
            g.unfinished += running;
            g.longest = g.longest.max(running);
        }
        g
    }
}

/// Cheap to clone; clones share the queue.
#[derive(Debug, Clone)]
pub struct Queue {
    inner: Arc<Inner>,
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
            inner: Arc::new(Inner {
                state: Mutex::default(),
                notify: Notify::new(),
                base_delay,
                max_delay,
                metrics: OnceLock::new(),
            }),
        }
    }

    /// Reports this queue's metrics in `metrics` as the queue `name` (`replicaset`), taking
    /// the name over from any earlier queue. A queue reports under one name: the first given.
    pub fn with_metrics(self, name: &str, metrics: &QueueMetrics) -> Queue {
        if self.inner.metrics.set(metrics.series(name)).is_ok() {
            metrics.live.set(name, &self.inner);
        }
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock()
    }

    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut s = self.lock();
        if s.shut || !s.dirty.insert(key.clone()) {
            return;
        }
        if let Some(m) = self.inner.metrics.get() {
            m.adds.inc();
            s.added.insert(key.clone(), Instant::now());
        }
        if !s.processing.contains(&key) {
            s.queue.push_back(key);
            drop(s);
            self.inner.notify.notify_one();
        }
    }

    /// Adds `key` once `delay` has passed, unless the queue is gone by then (a timer does not
    /// keep the queue of an ended term alive).
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        let key = key.into();
        if let Some(m) = self.inner.metrics.get() {
            m.retries.inc();
        }
        if delay.is_zero() {
            return self.add(key);
        }
        let q = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(inner) = q.upgrade() {
                Queue { inner }.add(key);
            }
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
            .inner
            .base_delay
            .saturating_mul(1 << (n - 1).min(20))
            .min(self.inner.max_delay);
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
            let notified = self.inner.notify.notified();
            {
                let mut s = self.lock();
                if let Some(key) = s.queue.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    if let Some(m) = self.inner.metrics.get() {
                        let now = Instant::now();
                        if let Some(at) = s.added.remove(&key) {
                            m.queue_duration.observe(secs(now - at));
                        }
                        s.started.insert(key.clone(), now);
                    }
                    if !s.queue.is_empty() {
                        self.inner.notify.notify_one();
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
        if let Some(m) = self.inner.metrics.get()
            && let Some(at) = s.started.remove(key)
        {
            m.work_duration.observe(secs(at.elapsed()));
        }
        // A key not being worked on (a repeated `done`) is already queued if it is dirty.
        if s.processing.remove(key) && s.dirty.contains(key) {
            s.queue.push_back(key.to_owned());
            drop(s);
            self.inner.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends the queue, as at the end of a leadership term: the keys waiting are dropped (the
    /// next term lists everything again), later adds are ignored, and every worker gets `None`
    /// from [`Queue::next`]. Keys being worked on finish as usual.
    pub fn shut_down(&self) {
        let mut s = self.lock();
        s.shut = true;
        s.queue.clear();
        s.dirty.clear();
        s.added.clear();
        drop(s);
        self.inner.notify.notify_waiters();
    }
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

    fn named(metrics: &QueueMetrics, name: &str) -> Queue {
        Queue::default().with_metrics(name, metrics)
    }

    fn registered() -> (Registry, QueueMetrics) {
        let mut registry = Registry::default();
        let metrics = QueueMetrics::default();
        metrics.register(&mut registry);
        (registry, metrics)
    }

    fn gauge_of(registry: &Registry, family: &str, name: &str) -> Option<f64> {
        sample(&encode(registry), &format!("{family}{{name=\"{name}\"}}"))
    }

    #[tokio::test]
    async fn a_queue_shut_down_or_dropped_at_the_end_of_a_term_reports_no_depth() {
        let (registry, metrics) = registered();
        let depth = |name| gauge_of(&registry, "workqueue_depth", name);
        let q = named(&metrics, "replicaset");
        let worker = q.clone();
        q.add("a");
        q.add("b");
        assert_eq!(depth("replicaset"), Some(2.0));
        q.shut_down();
        assert_eq!(depth("replicaset"), Some(0.0));
        // Adds after the end are ignored, and a worker is told the queue is over.
        q.add("c");
        assert_eq!(depth("replicaset"), Some(0.0));
        assert_eq!(worker.next().await, None);

        // The next term's queue takes the name over; the earlier one, still alive, no longer
        // writes into it.
        let old = named(&metrics, "deployment");
        old.add("x");
        let new = named(&metrics, "deployment");
        assert_eq!(depth("deployment"), Some(0.0));
        old.add("y");
        new.add("z");
        assert_eq!(depth("deployment"), Some(1.0));
        drop(old);
        assert_eq!(depth("deployment"), Some(1.0));
        // Dropping every handle (the term's workers and informers aborted) reads 0.
        let handle = new.clone();
        drop(new);
        assert_eq!(depth("deployment"), Some(1.0));
        drop(handle);
        assert_eq!(depth("deployment"), Some(0.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_delayed_add_does_not_keep_a_dropped_queue_reporting() {
        let (registry, metrics) = registered();
        let q = named(&metrics, "endpoints");
        q.add("a");
        q.add_after("b", Duration::from_secs(30));
        q.add_rate_limited("c");
        drop(q);
        assert_eq!(
            gauge_of(&registry, "workqueue_depth", "endpoints"),
            Some(0.0)
        );
        // The timers fire into nothing.
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(
            gauge_of(&registry, "workqueue_depth", "endpoints"),
            Some(0.0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unfinished_work_and_the_longest_running_processor_are_read_at_scrape_time() {
        let (registry, metrics) = registered();
        let unfinished = || gauge_of(&registry, "workqueue_unfinished_work_seconds", "gc");
        let longest = || {
            gauge_of(
                &registry,
                "workqueue_longest_running_processor_seconds",
                "gc",
            )
        };
        let q = named(&metrics, "gc");
        assert_eq!((unfinished(), longest()), (Some(0.0), Some(0.0)));
        q.add("a");
        q.add("b");
        let a = q.next().await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        let b = q.next().await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        // a has run 5 s, b 2 s.
        assert_eq!((unfinished(), longest()), (Some(7.0), Some(5.0)));
        q.done(&a);
        assert_eq!((unfinished(), longest()), (Some(2.0), Some(2.0)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((unfinished(), longest()), (Some(3.0), Some(3.0)));
        q.done(&b);
        assert_eq!((unfinished(), longest()), (Some(0.0), Some(0.0)));
        // Work in progress when the term ends is not reported after.
        q.add("c");
        let _c = q.next().await.unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(longest(), Some(4.0));
        drop(q);
        assert_eq!((unfinished(), longest()), (Some(0.0), Some(0.0)));
        let text = encode(&registry);
        for family in [
            "workqueue_depth",
            "workqueue_unfinished_work_seconds",
            "workqueue_longest_running_processor_seconds",
        ] {
            assert!(text.contains(&format!("# TYPE {family} gauge\n")), "{text}");
            let help = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# HELP {family} ")))
                .unwrap_or_else(|| panic!("no help for {family} in {text}"));
            assert!(help.ends_with('.') && !help.ends_with(".."), "{help}");
        }
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
