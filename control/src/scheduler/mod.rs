//! The scheduler: finds a node for every pod that has none and binds it there.
//!
//! One loop owns the cache and the queue, so scheduling takes no locks. Informer handlers only
//! pass changes to the loop over a channel, and the loop applies everything already received
//! before each pod, so every decision sees the cluster as recently as it can. For each pod it
//! runs the [`framework`] (filter, score, pick), then *assumes* the pod on the chosen node in the
//! [`cache`] at once, so the next pod already sees those resources taken, and writes the binding
//! in a separate task, up to [`SchedulerConfig::parallel_binds`] at a time. The informer showing
//! the pod bound confirms the assumption; a failed binding forgets it and retries the pod with
//! back-off; an assumption neither confirmed nor failed lapses after
//! [`SchedulerConfig::assume_ttl`].
//!
//! A pod that fits nowhere gets `PodScheduled=False` (`Unschedulable`) with Kubernetes' message
//! ("0/5 nodes are available: 3 Insufficient memory, 2 node(s) were unschedulable.") and waits
//! until a node is added or changes, or a bound pod goes away, and its back-off has passed.

mod binder;
pub mod cache;
pub mod framework;
pub mod metrics;
pub mod plugins;
mod queue;

use std::{sync::Arc, time::Duration};

use skiff_api::{
    client::{Client, ClientError, ListParams},
    kinds::{Node, Pod},
};
use skiff_runtime::{Event, Flag, Informer, key_of};
use tokio::{
    sync::mpsc::{self, UnboundedReceiver, error::TryRecvError},
    task::{JoinError, JoinSet},
    time::Instant,
};

use self::{
    binder::BindResult,
    cache::Cache,
    framework::Framework,
    metrics::{AttemptResult, SchedulerMetrics},
    queue::{BackoffPolicy, SchedulingQueue, State},
};
use crate::controllers::podutil;

/// Tunables of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The most API writes (bindings and unschedulable conditions) in flight at once.
    pub parallel_binds: usize,
    /// The share of a large cluster's nodes to find feasible before ranking them; 0 adapts it
    /// to the cluster's size as Kubernetes does (50% less 1% per 125 nodes, at least 5%).
    pub percentage_of_nodes_to_score: u32,
    /// The back-off after a pod's first failed attempt; it doubles with each failure.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a binding may take, and then how long the informer may take to show the pod
    /// bound, before its assumption lapses.
    pub assume_ttl: Duration,
    /// An unschedulable pod is tried again after this long even if no change was seen.
    pub unschedulable_timeout: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            parallel_binds: 64,
            percentage_of_nodes_to_score: 0,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            assume_ttl: Duration::from_secs(30),
            unschedulable_timeout: Duration::from_secs(300),
        }
    }
}

/// A change the informers saw, handed to the scheduling loop.
#[derive(Debug)]
enum Change {
    Pod(Arc<Pod>),
    PodDeleted(Arc<Pod>),
    Node(Arc<Node>),
    NodeDeleted(Arc<Node>),
}

/// The scheduler's work while it leads: its own informers for nodes and pods, and the
/// scheduling loop, until the future is dropped (which stops every task it started). `synced`
/// reads false from the start until both informers hold their first list (or the work is
/// dropped); the scheduler reports into `metrics`, whose pending pods read 0 once the work is
/// dropped (a standby schedules nothing).
pub async fn run(client: Client, config: SchedulerConfig, metrics: SchedulerMetrics, synced: Flag) {
    let _term = metrics.pending_for_term();
    let syncing = synced.hold();
    let (tx, changes) = mpsc::unbounded_channel();
    let nodes = Informer::<Node>::new(client.clone(), "", ListParams::default());
    let pods = Informer::<Pod>::new(client.clone(), "", ListParams::default());
    let to_loop = tx.clone();
    nodes.on_event(move |e| {
        let _ = to_loop.send(match e {
            Event::Deleted(n) => Change::NodeDeleted(n.clone()),
            e => Change::Node(e.object().clone()),
        });
    });
    pods.on_event(move |e| {
        let _ = tx.send(match e {
            Event::Deleted(p) => Change::PodDeleted(p.clone()),
            e => Change::Pod(e.object().clone()),
        });
    });
    let mut informers = JoinSet::new();
    informers.spawn(nodes.clone().run());
    informers.spawn(pods.clone().run());
    // Scheduling on a partial picture could overcommit nodes whose pods are not listed yet.
    nodes.synced().await;
    pods.synced().await;
    drop(syncing);
    tracing::info!(
        nodes = nodes.len(),
        pods = pods.len(),
        "caches synced; scheduling"
    );
    let mut scheduler = Scheduler::new(client, config);
    scheduler.core.metrics = metrics;
    scheduler.run(changes).await;
    // The loop ends only if the informers' handlers are gone, which they never are while the
    // informers run; `informers` is dropped here, stopping them.
    drop(informers);
}

/// An API write the loop asks for.
#[derive(Debug)]
enum Write {
    Bind {
        key: String,
        pod: Arc<Pod>,
        node: Arc<str>,
        /// When the scheduling attempt started.
        started: Instant,
    },
    Unschedulable {
        key: String,
        pod: Arc<Pod>,
        message: String,
    },
}

/// What a finished API write reports back to the loop.
#[derive(Debug)]
enum Outcome {
    Bind {
        key: String,
        uid: String,
        node: Arc<str>,
        result: BindResult,
        started: Instant,
    },
    Status {
        key: String,
        uid: String,
        result: Result<(), ClientError>,
    },
}

/// Counts for the periodic log line.
#[derive(Debug)]
struct Stats {
    bound: u64,
    logged_bound: u64,
    logged_at: Instant,
}

/// How often the periodic work runs: lapsed assumptions, stale unschedulable pods, the log.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// A progress line at most this often, and after this many bindings.
const LOG_EVERY: Duration = Duration::from_secs(10);
const LOG_EVERY_BOUND: u64 = 1000;
/// Pods scheduled between yields to the runtime.
const BATCH: u32 = 32;

/// Everything the scheduler decides, with no I/O: changes in, writes out, outcomes in.
#[derive(Debug)]
struct Core {
    config: SchedulerConfig,
    cache: Cache,
    queue: SchedulingQueue,
    framework: Framework,
    /// Something changed that may let unschedulable pods fit (acted on once per pod
    /// scheduled, however many changes came in).
    move_requested: bool,
    next_housekeeping: Instant,
    stats: Stats,
    metrics: SchedulerMetrics,
}

impl Core {
    fn new(mut config: SchedulerConfig, now: Instant) -> Core {
        config.parallel_binds = config.parallel_binds.max(1);
        Core {
            queue: SchedulingQueue::new(BackoffPolicy {
                initial: config.initial_backoff,
                max: config.max_backoff.max(config.initial_backoff),
            }),
            framework: plugins::default_framework(config.percentage_of_nodes_to_score),
            config,
            cache: Cache::new(),
            move_requested: false,
            next_housekeeping: now + HOUSEKEEPING,
            stats: Stats {
                bound: 0,
                logged_bound: 0,
                logged_at: now,
            },
            metrics: SchedulerMetrics::default(),
        }
    }

    fn apply(&mut self, change: Change, now: Instant) {
        match change {
            Change::Node(n) => {
                if self.cache.upsert_node(n) {
                    self.move_requested = true;
                }
            }
            Change::NodeDeleted(n) => self.cache.remove_node(&n.metadata.name),
            Change::Pod(p) => self.observe_pod(p, now),
            Change::PodDeleted(p) => {
                let key = key_of(&p.metadata);
                self.dequeue(&key, &p.metadata.uid);
                if self.cache.remove_pod(&key, &p.metadata.uid) {
                    self.move_requested = true;
                }
            }
        }
    }

    /// Removes the pod from the queue if the queue has this very pod (not a newer namesake).
    fn dequeue(&mut self, key: &str, uid: &str) {
        if self
            .queue
            .get(key)
            .is_some_and(|e| e.info.pod.metadata.uid == uid)
        {
            self.queue.remove(key);
        }
    }

    fn observe_pod(&mut self, p: Arc<Pod>, now: Instant) {
        let key = key_of(&p.metadata);
        if self.cache.observe_pod(&key, &p) {
            self.move_requested = true;
        }
        if !p.spec.node_name.is_empty() {
            // Bound, by this scheduler or anyone: it no longer waits.
            self.dequeue(&key, &p.metadata.uid);
        } else if podutil::is_active(&p) {
            self.queue.upsert(&key, p, now);
        } else {
            self.dequeue(&key, &p.metadata.uid);
        }
    }

    /// When the loop next has timed work: a back-off ending, or housekeeping.
    fn wake_at(&self) -> Instant {
        self.queue
            .next_backoff()
            .map_or(self.next_housekeeping, |t| t.min(self.next_housekeeping))
    }

    /// Does what is due: housekeeping, sending unschedulable pods back after a change, and
    /// moving pods whose back-off ended to the active queue. Cheap when nothing is due.
    fn tick(&mut self, now: Instant) {
        if now >= self.next_housekeeping {
            self.housekeeping(now);
        }
        if std::mem::take(&mut self.move_requested) {
            self.queue.move_all_unschedulable(now);
        }
        self.queue.flush_backoff(now);
    }

    /// Schedules the next pod, if one is waiting (after [`Core::tick`]). `None` when no pod is
    /// waiting; `Some(None)` when a pod was handled with nothing to write.
    fn next(&mut self, now: Instant) -> Option<Option<Write>> {
        self.tick(now);
        let key = self.queue.pop()?;
        Some(self.schedule_one(&key, now))
    }

    fn schedule_one(&mut self, key: &str, now: Instant) -> Option<Write> {
        // One span per scheduling cycle; the binding it may start carries its own.
        let _cycle = tracing::debug_span!("schedule", pod = key).entered();
        let entry = self.queue.get(key)?;
        match self.framework.schedule(&entry.info, self.cache.nodes()) {
            Ok(slot) => {
                // Twice the TTL: the binding itself is cut off after one, and its outcome
                // (success or failure) then decides; this only covers a binding task lost.
                self.cache
                    .assume(key, &entry.info, slot, now + 2 * self.config.assume_ttl);
                let node = self.cache.nodes()[slot].name.clone();
                let pod = entry.info.pod.clone();
                self.queue.binding(key);
                tracing::debug!(pod = key, node = &*node, "assumed; binding");
                Some(Write::Bind {
                    key: key.to_owned(),
                    pod,
                    node,
                    started: now,
                })
            }
            Err(fit) => {
                // `now` was read just before the attempt; the attempt ends here.
                self.metrics.attempt(
                    AttemptResult::Unschedulable,
                    Instant::now().saturating_duration_since(now),
                );
                let message = fit.to_string();
                self.queue.unschedulable(key, now);
                let entry = self.queue.get_mut(key)?;
                let unchanged = entry.message.as_deref() == Some(message.as_str())
                    || binder::says_unschedulable(&entry.info.pod, &message);
                entry.message = Some(message.clone());
                if unchanged {
                    tracing::debug!(pod = key, attempts = entry.attempts, %message, "still unschedulable");
                    return None;
                }
                tracing::info!(pod = key, attempts = entry.attempts, %message, "unschedulable");
                Some(Write::Unschedulable {
                    key: key.to_owned(),
                    pod: entry.info.pod.clone(),
                    message,
                })
            }
        }
    }

    /// Whether the queue's entry for `key` is this pod and is being bound.
    fn binding(&self, key: &str, uid: &str) -> bool {
        self.queue
            .get(key)
            .is_some_and(|e| e.info.pod.metadata.uid == uid && e.state == State::Binding)
    }

    fn finish(&mut self, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Bind {
                key,
                uid,
                node,
                result,
                started,
            } => match result {
                BindResult::Bound => {
                    self.metrics.attempt(
                        AttemptResult::Scheduled,
                        now.saturating_duration_since(started),
                    );
                    tracing::debug!(pod = %key, node = &*node, "bound");
                    self.cache
                        .finish_binding(&key, &uid, now + self.config.assume_ttl);
                    self.stats.bound += 1;
                    if self.stats.bound - self.stats.logged_bound >= LOG_EVERY_BOUND {
                        self.log_progress(now);
                    }
                }
                BindResult::BoundElsewhere(other) => {
                    self.metrics
                        .attempt(AttemptResult::Error, now.saturating_duration_since(started));
                    tracing::info!(pod = %key, node = &*node, other, "pod was bound elsewhere meanwhile");
                    if self.cache.forget(&key, &uid, &node) {
                        self.move_requested = true;
                    }
                    self.dequeue(&key, &uid);
                }
                BindResult::Gone => {
                    self.metrics
                        .attempt(AttemptResult::Error, now.saturating_duration_since(started));
                    tracing::debug!(pod = %key, "pod went away while being bound");
                    if self.cache.forget(&key, &uid, &node) {
                        self.move_requested = true;
                    }
                    self.dequeue(&key, &uid);
                }
                BindResult::Failed(_) | BindResult::TimedOut => {
                    self.metrics
                        .attempt(AttemptResult::Error, now.saturating_duration_since(started));
                    let error = match &result {
                        BindResult::Failed(e) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(pod = %key, node = &*node, error, "binding failed; will retry");
                    if self.cache.forget(&key, &uid, &node) {
                        self.move_requested = true;
                    }
                    if self.binding(&key, &uid) {
                        self.queue.retry(&key, now);
                    }
                }
            },
            Outcome::Status { key, uid, result } => {
                if let Err(e) = result {
                    tracing::warn!(pod = %key, error = %e, "could not record that the pod is unschedulable");
                    if let Some(entry) = self.queue.get_mut(&key)
                        && entry.info.pod.metadata.uid == uid
                    {
                        // Written again at the next attempt.
                        entry.message = None;
                    }
                }
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.next_housekeeping = now + HOUSEKEEPING;
        for key in self.cache.expire(now) {
            tracing::warn!(pod = %key, "assumed pod not seen bound in time; trying it again");
            self.queue.binding_lapsed(&key);
            self.move_requested = true;
        }
        self.queue
            .flush_unschedulable(now, self.config.unschedulable_timeout);
        self.metrics.set_pending(self.queue.pending());
        if self.stats.bound > self.stats.logged_bound && now >= self.stats.logged_at + LOG_EVERY {
            self.log_progress(now);
        }
    }

    fn log_progress(&mut self, now: Instant) {
        let n = self.stats.bound - self.stats.logged_bound;
        let secs = now.duration_since(self.stats.logged_at).as_secs_f64();
        tracing::info!(
            bound = n,
            per_second = (n as f64 / secs.max(0.001)).round() as u64,
            pending = self.queue.len(),
            active = self.queue.active_len(),
            unschedulable = self.queue.unschedulable_len(),
            assumed = self.cache.assumed_count(),
            nodes = self.cache.nodes().len(),
            "scheduled pods"
        );
        self.stats.logged_bound = self.stats.bound;
        self.stats.logged_at = now;
    }
}

/// The core with its I/O: the channel from the informers and the API writes in flight.
#[derive(Debug)]
struct Scheduler {
    client: Client,
    core: Core,
    writes: JoinSet<Outcome>,
}

enum Wake {
    Change(Option<Change>),
    Written(Result<Outcome, JoinError>),
    Timer,
}

impl Scheduler {
    fn new(client: Client, config: SchedulerConfig) -> Scheduler {
        Scheduler {
            client,
            core: Core::new(config, Instant::now()),
            writes: JoinSet::new(),
        }
    }

    async fn run(mut self, mut changes: UnboundedReceiver<Change>) {
        let mut batch = 0;
        loop {
            // Take in everything already known before deciding anything.
            let now = Instant::now();
            loop {
                match changes.try_recv() {
                    Ok(c) => self.core.apply(c, now),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            while let Some(r) = self.writes.try_join_next() {
                self.finished(r);
            }
            // Even with every write slot taken, so that what is due is never left due (the
            // wait below would then end at once, again and again).
            let now = Instant::now();
            self.core.tick(now);
            if self.writes.len() < self.core.config.parallel_binds
                && let Some(write) = self.core.next(now)
            {
                if let Some(w) = write {
                    self.spawn(w);
                }
                batch += 1;
                if batch >= BATCH {
                    batch = 0;
                    tokio::task::yield_now().await;
                }
                continue;
            }
            batch = 0;
            let wake = tokio::select! {
                c = changes.recv() => Wake::Change(c),
                Some(r) = self.writes.join_next(), if !self.writes.is_empty() => Wake::Written(r),
                () = tokio::time::sleep_until(self.core.wake_at()) => Wake::Timer,
            };
            match wake {
                Wake::Change(Some(c)) => self.core.apply(c, Instant::now()),
                Wake::Change(None) => return,
                Wake::Written(r) => self.finished(r),
                Wake::Timer => {}
            }
        }
    }

    fn finished(&mut self, r: Result<Outcome, JoinError>) {
        match r {
            Ok(o) => self.core.finish(o, Instant::now()),
            // A lost binding's assumption lapses and the pod is tried again.
            Err(e) => tracing::error!(error = %e, "an API write task failed"),
        }
    }

    fn spawn(&mut self, w: Write) {
        let client = self.client.clone();
        match w {
            Write::Bind {
                key,
                pod,
                node,
                started,
            } => {
                let ttl = self.core.config.assume_ttl;
                let span = tracing::debug_span!("bind", pod = %key, node = %node);
                self.writes.spawn(tracing::Instrument::instrument(
                    async move {
                        let uid = pod.metadata.uid.clone();
                        let result =
                            tokio::time::timeout(ttl, binder::bind(client, pod, node.clone()))
                                .await
                                .unwrap_or(BindResult::TimedOut);
                        Outcome::Bind {
                            key,
                            uid,
                            node,
                            result,
                            started,
                        }
                    },
                    span,
                ));
            }
            Write::Unschedulable { key, pod, message } => {
                self.writes.spawn(async move {
                    let uid = pod.metadata.uid.clone();
                    let result = binder::write_unschedulable(client, pod, message).await;
                    Outcome::Status { key, uid, result }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{cache::tests::*, *};

    fn t(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn bound(mut p: Pod, node: &str) -> Pod {
        p.spec.node_name = node.into();
        p
    }

    fn not_ready(mut n: Node) -> Node {
        n.status.conditions[0].status = "False".into();
        n
    }

    /// What the core asks for next: the pod and node of a binding, or the pod and message of
    /// an unschedulable condition, or "" for nothing to write; `None` when no pod is waiting.
    fn next(core: &mut Core, now: Instant) -> Option<(String, String)> {
        core.next(now).map(|w| match w {
            Some(Write::Bind { key, node, .. }) => (key, format!("bind {node}")),
            Some(Write::Unschedulable { key, message, .. }) => (key, message),
            None => (String::new(), String::new()),
        })
    }

    fn pair(key: &str, what: &str) -> Option<(String, String)> {
        Some((key.to_owned(), what.to_owned()))
    }

    fn outcome(key: &str, node: &str, result: BindResult) -> Outcome {
        Outcome::Bind {
            key: key.into(),
            uid: format!("uid-{}", key.trim_start_matches("ns/")),
            node: node.into(),
            result,
            started: Instant::now(),
        }
    }

    /// A core with one node of 1 CPU and pods `a` and `b` of 600m each, `a` already assumed.
    fn contested(t0: Instant) -> Core {
        let mut core = Core::new(SchedulerConfig::default(), t0);
        core.apply(Change::Node(Arc::new(node("n", "1", "4Gi"))), t0);
        core.apply(Change::Pod(Arc::new(pod("a", "600m", ""))), t0);
        core.apply(Change::Pod(Arc::new(pod("b", "600m", ""))), t0);
        assert_eq!(next(&mut core, t0), pair("ns/a", "bind n"));
        assert_eq!(
            next(&mut core, t0),
            pair("ns/b", "0/1 nodes are available: 1 Insufficient cpu.")
        );
        assert_eq!(next(&mut core, t0), None);
        core
    }

    #[test]
    fn two_pods_that_fit_only_once_never_both_get_a_binding() {
        let t0 = Instant::now();
        let mut core = contested(t0);
        // The binding succeeds but the informer has not shown it yet: still taken.
        core.finish(outcome("ns/a", "n", BindResult::Bound), t0);
        core.apply(Change::Pod(Arc::new(pod("a", "600m", ""))), t0);
        core.apply(Change::Node(Arc::new(node("other", "1", "1Gi"))), t0);
        core.apply(Change::NodeDeleted(Arc::new(node("other", "1", "1Gi"))), t0);
        // The node change sent b back; it still does not fit and the message is the same.
        assert_eq!(next(&mut core, t0 + t(1)), pair("", ""));
        assert_eq!(next(&mut core, t0 + t(1)), None);
    }

    #[test]
    fn a_failed_binding_frees_the_node_for_the_pod_that_waited_for_it() {
        let t0 = Instant::now();
        let mut core = contested(t0);
        core.finish(
            outcome("ns/a", "n", BindResult::TimedOut),
            t0 + Duration::from_millis(500),
        );
        // b's back-off (from t0) ends first, then a's (from its failure).
        assert_eq!(next(&mut core, t0 + Duration::from_millis(999)), None);
        assert_eq!(next(&mut core, t0 + t(1)), pair("ns/b", "bind n"));
        assert_eq!(next(&mut core, t0 + t(1)), None);
        assert_eq!(
            next(&mut core, t0 + Duration::from_millis(1500)),
            pair("ns/a", "0/1 nodes are available: 1 Insufficient cpu.")
        );
    }

    #[test]
    fn a_confirmed_pod_holds_its_resources_until_deleted() {
        let t0 = Instant::now();
        let mut core = contested(t0);
        core.finish(outcome("ns/a", "n", BindResult::Bound), t0);
        core.apply(Change::Pod(Arc::new(bound(pod("a", "600m", ""), "n"))), t0);
        assert!(!core.cache.is_assumed("ns/a"));
        // Long after the assumption would have lapsed, a still holds the node.
        assert_eq!(next(&mut core, t0 + t(100)), None);
        assert_eq!(core.cache.nodes()[0].usage.pods, 1);
        // Terminating but not gone: still counted.
        let mut terminating = bound(pod("a", "600m", ""), "n");
        terminating.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        core.apply(Change::Pod(Arc::new(terminating.clone())), t0 + t(100));
        assert_eq!(next(&mut core, t0 + t(100)), None);
        core.apply(Change::PodDeleted(Arc::new(terminating)), t0 + t(100));
        assert_eq!(next(&mut core, t0 + t(100)), pair("ns/b", "bind n"));
    }

    #[test]
    fn an_assumption_never_confirmed_lapses_and_the_pod_is_tried_again() {
        let t0 = Instant::now();
        let mut core = contested(t0);
        core.finish(outcome("ns/a", "n", BindResult::Bound), t0);
        assert_eq!(next(&mut core, t0 + t(29)), None);
        assert!(core.cache.is_assumed("ns/a"));
        // Lapsed: a is tried again at once (a second binding of a pod that did get bound fails
        // harmlessly on its resourceVersion), and b, sent back by the freed resources, still
        // does not fit beside it.
        assert_eq!(next(&mut core, t0 + t(31)), pair("ns/a", "bind n"));
        assert!(core.cache.is_assumed("ns/a"));
        assert_eq!(next(&mut core, t0 + t(31)), pair("", ""));
    }

    #[test]
    fn a_pod_bound_by_someone_else_leaves_the_queue_and_counts_where_it_went() {
        let t0 = Instant::now();
        let mut core = Core::new(SchedulerConfig::default(), t0);
        core.apply(Change::Node(Arc::new(node("n", "1", "4Gi"))), t0);
        core.apply(Change::Node(Arc::new(node("m", "1", "4Gi"))), t0);
        core.apply(Change::Pod(Arc::new(pod("a", "600m", ""))), t0);
        let (_, bind) = next(&mut core, t0).unwrap();
        let (chosen, other) = if bind == "bind n" {
            ("n", "m")
        } else {
            ("m", "n")
        };
        core.finish(
            outcome("ns/a", chosen, BindResult::BoundElsewhere(other.into())),
            t0,
        );
        core.apply(
            Change::Pod(Arc::new(bound(pod("a", "600m", ""), other))),
            t0,
        );
        assert_eq!(core.cache.node(chosen).unwrap().usage.pods, 0);
        assert_eq!(core.cache.node(other).unwrap().usage.pods, 1);
        assert_eq!(core.queue.len(), 0);
    }

    #[test]
    fn a_deleted_pending_pod_leaves_the_queue() {
        let t0 = Instant::now();
        let mut core = Core::new(SchedulerConfig::default(), t0);
        core.apply(Change::Node(Arc::new(node("n", "1", "4Gi"))), t0);
        core.apply(Change::Pod(Arc::new(pod("a", "", ""))), t0);
        core.apply(Change::PodDeleted(Arc::new(pod("a", "", ""))), t0);
        assert_eq!(next(&mut core, t0), None);
        assert_eq!(core.queue.len(), 0);
        // Finished and terminating pods are not scheduled either.
        let mut done = pod("b", "", "");
        done.status.phase = "Failed".into();
        core.apply(Change::Pod(Arc::new(done)), t0);
        let mut terminating = pod("c", "", "");
        terminating.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        core.apply(Change::Pod(Arc::new(terminating)), t0);
        assert_eq!(next(&mut core, t0), None);
    }

    #[test]
    fn an_unschedulable_pod_comes_back_for_node_changes_that_matter_not_for_heartbeats() {
        let t0 = Instant::now();
        let mut core = Core::new(SchedulerConfig::default(), t0);
        core.apply(Change::Pod(Arc::new(pod("a", "", ""))), t0);
        assert_eq!(
            next(&mut core, t0),
            pair("ns/a", "no nodes available to schedule pods")
        );
        let n = not_ready(node("n", "1", "4Gi"));
        core.apply(Change::Node(Arc::new(n.clone())), t0 + t(5));
        assert_eq!(
            next(&mut core, t0 + t(5)),
            pair("ns/a", "0/1 nodes are available: 1 node(s) were not ready.")
        );
        let mut beat = n.clone();
        beat.status.conditions[0].last_heartbeat_time = Some("2026-01-01T00:00:00Z".into());
        core.apply(Change::Node(Arc::new(beat)), t0 + t(10));
        assert_eq!(next(&mut core, t0 + t(60)), None);
        core.apply(Change::Node(Arc::new(node("n", "1", "4Gi"))), t0 + t(60));
        assert_eq!(next(&mut core, t0 + t(60)), pair("ns/a", "bind n"));
    }

    #[test]
    fn an_unschedulable_pod_is_retried_after_the_timeout_even_without_a_change() {
        let t0 = Instant::now();
        let mut core = Core::new(SchedulerConfig::default(), t0);
        core.apply(Change::Pod(Arc::new(pod("a", "", ""))), t0);
        assert!(next(&mut core, t0).is_some());
        assert_eq!(next(&mut core, t0 + t(299)), None);
        assert_eq!(next(&mut core, t0 + t(300)), pair("", ""));
    }

    #[test]
    fn a_failed_condition_write_is_made_again_at_the_next_attempt() {
        let t0 = Instant::now();
        let mut core = Core::new(SchedulerConfig::default(), t0);
        core.apply(Change::Pod(Arc::new(pod("a", "", ""))), t0);
        let (_, message) = next(&mut core, t0).unwrap();
        core.finish(
            Outcome::Status {
                key: "ns/a".into(),
                uid: "uid-a".into(),
                result: Err(ClientError::Api(tonic::Status::unavailable("etcd is down"))),
            },
            t0,
        );
        assert_eq!(next(&mut core, t0 + t(300)), pair("ns/a", &message));
        // Had the condition been in the pod already, there would be nothing to write.
        let mut said = pod("a", "", "");
        binder::mark_unschedulable(&mut said, &message, "now");
        core.apply(Change::Pod(Arc::new(said)), t0 + t(300));
        core.queue.get_mut("ns/a").unwrap().message = None;
        assert_eq!(next(&mut core, t0 + t(600)), pair("", ""));
    }

    #[test]
    fn replicas_of_one_controller_spread_over_equal_nodes() {
        let t0 = Instant::now();
        let mut core = Core::new(SchedulerConfig::default(), t0);
        for n in ["a", "b", "c", "d"] {
            core.apply(Change::Node(Arc::new(node(n, "8", "16Gi"))), t0);
        }
        for i in 0..8 {
            let p = owned(pod(&format!("r{i}"), "", ""), "rs");
            core.apply(Change::Pod(Arc::new(p)), t0);
        }
        while next(&mut core, t0).is_some() {}
        for n in core.cache.nodes() {
            assert_eq!(n.usage.pods, 2, "{}", n.name);
        }
    }
}
