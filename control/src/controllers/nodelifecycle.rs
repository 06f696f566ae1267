//! The node lifecycle controller: notices nodes whose agent went quiet (no Lease renewal within
//! the grace period), marks them NotReady and taints them, evicts their pods after the eviction
//! timeout so owners replace them elsewhere, and force-deletes pods a dead or deleted node can no
//! longer finish deleting.
//!
//! Silence is measured on this controller's own monotonic clock: the moment it *observed* a
//! Lease's renewTime (or the Ready condition's heartbeat) change, never the wall-clock value
//! written in it, so clock skew between machines cannot make a node look dead or alive. At start
//! every node gets a fresh grace period.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use skiff_api::{
    Kind,
    client::{ClientError, DeleteParams},
    kinds::{Condition, Lease, Node, Pod, Taint, Toleration, condition},
    meta::time,
};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{Context, podutil};
use crate::runtime::{Event, Queue, key_of};

/// The taint of a node whose agent stopped reporting.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node whose agent reports it not Ready.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The reason written into the Ready condition of a silent node.
pub const REASON_UNKNOWN: &str = "NodeStatusUnknown";
/// The message written into the Ready condition of a silent node.
pub const MESSAGE_UNKNOWN: &str = "Skiff agent stopped posting node status.";

const NO_SCHEDULE: &str = "NoSchedule";
const NO_EXECUTE: &str = "NoExecute";
/// How often an unhealthy node with nothing due is looked at again (a pod may have been bound to
/// it meanwhile).
const UNHEALTHY_RECHECK: Duration = Duration::from_secs(10);

/// What the controller makes of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeHealth {
    /// Heard from, and its agent reports Ready.
    Ready,
    /// Heard from, and its agent reports not Ready.
    NotReady,
    /// Silent for longer than the grace period.
    Unreachable,
    /// Heard from again (its Lease is renewed) but its Ready condition still says Unknown: its
    /// agent has yet to report. It keeps the unreachable taint until it reports Ready, but its
    /// pods are not evicted meanwhile (it is demonstrably alive).
    Unconfirmed,
    /// Registered but has never reported, and is still within its grace period.
    Pending,
}

impl NodeHealth {
    /// The taint key a node in this state carries (`None` for none of ours).
    pub fn taint_key(self) -> Option<&'static str> {
        match self {
            NodeHealth::NotReady => Some(TAINT_NOT_READY),
            NodeHealth::Unreachable | NodeHealth::Unconfirmed => Some(TAINT_UNREACHABLE),
            NodeHealth::Ready | NodeHealth::Pending => None,
        }
    }

    /// Pods on the node are to be evicted (after their toleration).
    pub fn is_unhealthy(self) -> bool {
        matches!(self, NodeHealth::NotReady | NodeHealth::Unreachable)
    }
}

/// `true` when nothing was observed from the node for longer than `grace`.
pub fn is_stale(last_heard: Instant, now: Instant, grace: Duration) -> bool {
    now.saturating_duration_since(last_heard) > grace
}

/// A node's state from the status of its Ready condition (as stored) and whether it is silent.
pub fn health(ready: Option<&str>, stale: bool) -> NodeHealth {
    if stale {
        return NodeHealth::Unreachable;
    }
    match ready {
        Some("True") => NodeHealth::Ready,
        Some("False") => NodeHealth::NotReady,
        Some(_) => NodeHealth::Unconfirmed,
        None => NodeHealth::Pending,
    }
}

/// A silent node's Ready condition must be rewritten as Unknown (unless it already says so).
pub fn needs_unknown_mark(ready: Option<&str>, stale: bool) -> bool {
    stale && ready != Some("Unknown")
}

fn ready_status(node: &Node) -> Option<&str> {
    condition(&node.status.conditions, "Ready").map(|c| c.status.as_str())
}

/// Sets the Ready condition to Unknown with [`REASON_UNKNOWN`]; the heartbeat time stays the
/// agent's, so this write is never mistaken for a sign of life.
pub fn mark_unknown(conditions: &mut Vec<Condition>, now: &str) {
    let i = match conditions.iter().position(|c| c.type_ == "Ready") {
        Some(i) => i,
        None => {
            conditions.push(Condition {
                type_: "Ready".into(),
                ..Condition::default()
            });
            conditions.len() - 1
        }
    };
    let c = &mut conditions[i];
    if c.status != "Unknown" {
        c.last_transition_time = Some(now.to_owned());
    }
    c.status = "Unknown".into();
    c.reason = REASON_UNKNOWN.into();
    c.message = MESSAGE_UNKNOWN.into();
    c.last_probe_time = Some(now.to_owned());
}

fn is_ours(key: &str) -> bool {
    key == TAINT_UNREACHABLE || key == TAINT_NOT_READY
}

/// Whether the node's taints already say what `health` calls for (without allocating: this runs
/// for every node on every tick). A pending node's taints are left as they are.
pub fn taints_match(taints: &[Taint], health: NodeHealth) -> bool {
    if health == NodeHealth::Pending {
        return true;
    }
    let want = health.taint_key();
    [TAINT_UNREACHABLE, TAINT_NOT_READY].iter().all(|key| {
        [NO_SCHEDULE, NO_EXECUTE].iter().all(|effect| {
            let has = taints.iter().any(|t| t.key == *key && t.effect == *effect);
            has == (want == Some(*key))
        })
    })
}

/// The node's taints as `health` calls for, or `None` when they already are: the node's other
/// taints kept, ours (NoSchedule and NoExecute) added or removed. `now` stamps a new NoExecute
/// taint.
pub fn desired_taints(taints: &[Taint], health: NodeHealth, now: &str) -> Option<Vec<Taint>> {
    if taints_match(taints, health) {
        return None;
    }
    let want = health.taint_key();
    let mut next: Vec<Taint> = taints
        .iter()
        .filter(|t| !is_ours(&t.key) || Some(t.key.as_str()) == want)
        .cloned()
        .collect();
    if let Some(key) = want {
        for effect in [NO_SCHEDULE, NO_EXECUTE] {
            if !next.iter().any(|t| t.key == key && t.effect == effect) {
                next.push(Taint {
                    key: key.to_owned(),
                    value: String::new(),
                    effect: effect.to_owned(),
                    time_added: (effect == NO_EXECUTE).then(|| now.to_owned()),
                });
            }
        }
    }
    Some(next)
}

/// Kubernetes' toleration matching: the effect (empty matches all), then the key (empty with
/// `Exists` matches every key) and, for `Equal`, the value.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if !t.effect.is_empty() && t.effect != taint.effect {
        return false;
    }
    if t.key.is_empty() {
        return t.operator == "Exists";
    }
    if t.key != taint.key {
        return false;
    }
    match t.operator.as_str() {
        "Exists" => true,
        "" | "Equal" => t.value == taint.value,
        _ => false,
    }
}

/// How long after its node turned unhealthy a pod is evicted, `None` for never: `default` when
/// no toleration matches the NoExecute `taint`; otherwise the shortest tolerationSeconds among
/// the matching tolerations, and never when none of them has one.
pub fn eviction_delay(
    tolerations: &[Toleration],
    taint: &Taint,
    default: Duration,
) -> Option<Duration> {
    let mut matched = false;
    let mut shortest: Option<Duration> = None;
    for t in tolerations.iter().filter(|t| tolerates(t, taint)) {
        matched = true;
        if let Some(s) = t.toleration_seconds {
            // Zero or negative: evict at once.
            let d = Duration::from_secs(u64::try_from(s).unwrap_or(0));
            shortest = Some(shortest.map_or(d, |x| x.min(d)));
        }
    }
    if matched { shortest } else { Some(default) }
}

/// When a pod on an unhealthy node is due for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Now,
    In(Duration),
    Never,
}

/// Judges one pod of a node that has been unhealthy (tainted with the NoExecute `taint`) for
/// `unhealthy_for`.
pub fn eviction_due(
    tolerations: &[Toleration],
    taint: &Taint,
    unhealthy_for: Duration,
    default: Duration,
) -> Eviction {
    match eviction_delay(tolerations, taint, default) {
        None => Eviction::Never,
        Some(d) if d <= unhealthy_for => Eviction::Now,
        Some(d) => Eviction::In(d - unhealthy_for),
    }
}

/// What pod garbage collection makes of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodGc {
    Keep,
    /// Bound to a node that does not exist (to be confirmed with the server).
    NodeGone,
    /// Being deleted, past its grace period, on a node that is not Ready: no agent will finish it.
    Expired,
}

/// Pure pod garbage-collection judgement at wall-clock `now`.
pub fn pod_gc(pod: &Pod, node: Option<&Node>, now: SystemTime) -> PodGc {
    if pod.spec.node_name.is_empty() {
        return PodGc::Keep;
    }
    let Some(node) = node else {
        return PodGc::NodeGone;
    };
    let expired = pod
        .metadata
        .deletion_timestamp
        .as_deref()
        .and_then(time::parse)
        .is_some_and(|deadline| deadline <= now);
    if expired && !podutil::node_is_ready(node) {
        PodGc::Expired
    } else {
        PodGc::Keep
    }
}

/// Sets a pod's Ready condition to False (its node went silent); `false` when it was not True.
pub fn mark_pod_not_ready(conditions: &mut [Condition], now: &str) -> bool {
    let Some(c) = conditions
        .iter_mut()
        .find(|c| c.type_ == "Ready" && c.status == "True")
    else {
        return false;
    };
    c.status = "False".into();
    c.reason = "NodeUnreachable".into();
    c.message = "The node's agent stopped posting status.".into();
    c.last_transition_time = Some(now.to_owned());
    true
}

/// What this controller remembers of one node.
#[derive(Debug)]
struct NodeTrack {
    /// When a sign of life was last observed (Kubernetes' probe timestamp).
    heard: Instant,
    renew: Option<String>,
    heartbeat: Option<String>,
    /// When this controller first found the node unhealthy (eviction counts from here).
    unhealthy_since: Option<Instant>,
    /// When an unhealthy node should be looked at again for evictions.
    next_check: Option<Instant>,
}

impl NodeTrack {
    fn new(now: Instant) -> NodeTrack {
        NodeTrack {
            heard: now,
            renew: None,
            heartbeat: None,
            unhealthy_since: None,
            next_check: None,
        }
    }

    /// A changed Lease renewTime is a sign of life, whatever time it names.
    fn saw_renew(&mut self, renew: Option<&str>, now: Instant) {
        if self.renew.as_deref() != renew {
            self.renew = renew.map(str::to_owned);
            self.heard = now;
        }
    }

    fn saw_heartbeat(&mut self, heartbeat: Option<&str>, now: Instant) {
        if self.heartbeat.as_deref() != heartbeat {
            self.heartbeat = heartbeat.map(str::to_owned);
            self.heard = now;
        }
    }
}

/// Bound pods by node, and the bound pods being deleted, kept by the pod handler so no pass
/// scans every pod for every node.
#[derive(Debug, Default)]
struct PodIndex {
    by_node: HashMap<String, HashSet<String>>,
    terminating: HashSet<String>,
    /// Pods whose node is missing, and since when (they get a quarantine before deletion).
    orphaned_since: HashMap<String, Instant>,
}

impl PodIndex {
    fn remove(&mut self, node: &str, key: &str) {
        if let Some(set) = self.by_node.get_mut(node) {
            set.remove(key);
            if set.is_empty() {
                self.by_node.remove(node);
            }
        }
    }

    fn apply(&mut self, ev: &Event<Pod>) {
        let (old, new) = match ev {
            Event::Added(p) => (None, Some(p)),
            Event::Updated { old, new } => (Some(old), Some(new)),
            Event::Deleted(p) => (Some(p), None),
        };
        let key = key_of(&ev.object().metadata);
        if let Some(old) = old
            && new.is_none_or(|n| n.spec.node_name != old.spec.node_name)
        {
            self.remove(&old.spec.node_name, &key);
        }
        match new {
            Some(p) if !p.spec.node_name.is_empty() => {
                if !self
                    .by_node
                    .get(&p.spec.node_name)
                    .is_some_and(|s| s.contains(&key))
                {
                    self.by_node
                        .entry(p.spec.node_name.clone())
                        .or_default()
                        .insert(key.clone());
                }
                if p.metadata.deletion_timestamp.is_some() {
                    self.terminating.insert(key);
                } else {
                    self.terminating.remove(&key);
                }
            }
            _ => {
                self.terminating.remove(&key);
                self.orphaned_since.remove(&key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Watches node heartbeats, taints and evicts, and collects pods dead nodes leave behind.
#[derive(Debug)]
pub struct NodeLifecycleController {
    ctx: Arc<Context>,
    nodes: Arc<Mutex<HashMap<String, NodeTrack>>>,
    pods: Arc<Mutex<PodIndex>>,
    node_queue: Queue,
    pod_queue: Queue,
}

impl NodeLifecycleController {
    /// Registers the handlers: Lease renewals and node heartbeats are recorded as signs of life
    /// (with this process's clock), a change of a node's Ready condition queues the node, and
    /// pods are indexed by node.
    pub fn new(ctx: Arc<Context>) -> NodeLifecycleController {
        let nodes: Arc<Mutex<HashMap<String, NodeTrack>>> = Arc::default();
        let pods: Arc<Mutex<PodIndex>> = Arc::default();
        let node_queue = Queue::default();
        let pod_queue = Queue::default();
        let informers = &ctx.informers;

        let tracks = nodes.clone();
        informers.node_leases.on_event(move |ev: &Event<Lease>| {
            let (Event::Added(l) | Event::Updated { new: l, .. }) = ev else {
                return;
            };
            let now = Instant::now();
            let mut tracks = lock(&tracks);
            let renew = l.spec.renew_time.as_deref();
            match tracks.get_mut(&l.metadata.name) {
                Some(t) => t.saw_renew(renew, now),
                None => {
                    let mut t = NodeTrack::new(now);
                    t.saw_renew(renew, now);
                    tracks.insert(l.metadata.name.clone(), t);
                }
            }
        });

        let tracks = nodes.clone();
        let q = node_queue.clone();
        informers.nodes.on_event(move |ev: &Event<Node>| {
            let now = Instant::now();
            let (old, node) = match ev {
                Event::Deleted(n) => {
                    lock(&tracks).remove(&n.metadata.name);
                    return;
                }
                Event::Added(n) => (None, n),
                Event::Updated { old, new } => (Some(old), new),
            };
            let heartbeat = condition(&node.status.conditions, "Ready")
                .and_then(|c| c.last_heartbeat_time.as_deref());
            {
                let mut tracks = lock(&tracks);
                match tracks.get_mut(&node.metadata.name) {
                    Some(t) => t.saw_heartbeat(heartbeat, now),
                    None => {
                        let mut t = NodeTrack::new(now);
                        t.saw_heartbeat(heartbeat, now);
                        tracks.insert(node.metadata.name.clone(), t);
                    }
                }
            }
            // Recovery (or a new complaint) is acted on at once, not at the next tick; queued
            // after the heartbeat is recorded so the worker sees it.
            if old.is_some_and(|o| ready_status(o) != ready_status(node)) {
                q.add(node.metadata.name.as_str());
            }
        });

        let index = pods.clone();
        informers
            .pods
            .on_event(move |ev: &Event<Pod>| lock(&index).apply(ev));

        NodeLifecycleController {
            ctx,
            nodes,
            pods,
            node_queue,
            pod_queue,
        }
    }

    /// Runs the periodic pass and the node and pod workers, forever.
    pub async fn run(self) {
        let this = Arc::new(self);
        let mut tasks = JoinSet::new();
        for _ in 0..this.ctx.settings.workers.max(1) {
            let node_worker = this.clone();
            tasks.spawn(async move { node_worker.node_work().await });
            let pod_worker = this.clone();
            tasks.spawn(async move { pod_worker.pod_work().await });
        }
        let ticker = this.clone();
        tasks.spawn(async move {
            let period = (ticker.ctx.settings.node_monitor_grace_period / 5)
                .clamp(Duration::from_millis(100), Duration::from_secs(1));
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                ticker.scan();
            }
        });
        while tasks.join_next().await.is_some() {}
    }

    /// One pass over every node (linear, allocation-free for a healthy node) and over the pods
    /// being deleted or left on missing nodes: queues what needs work.
    fn scan(&self) {
        let informers = &self.ctx.informers;
        let settings = &self.ctx.settings;
        let now = Instant::now();
        let nodes = informers.nodes.list();
        {
            let mut tracks = lock(&self.nodes);
            for node in &nodes {
                let name = &node.metadata.name;
                if !tracks.contains_key(name) {
                    tracks.insert(name.clone(), NodeTrack::new(now));
                }
                let Some(t) = tracks.get_mut(name) else {
                    continue;
                };
                let ready = ready_status(node);
                let stale = is_stale(t.heard, now, settings.node_monitor_grace_period);
                let h = health(ready, stale);
                let due = needs_unknown_mark(ready, stale)
                    || !taints_match(&node.spec.taints, h)
                    // Eviction starts, or is due again.
                    || (h.is_unhealthy()
                        && (t.unhealthy_since.is_none() || t.next_check.is_some_and(|c| c <= now)))
                    // Recovered: the eviction timer is to be cleared.
                    || (h == NodeHealth::Ready && t.unhealthy_since.is_some());
                if due {
                    self.node_queue.add(name.as_str());
                }
            }
            if tracks.len() > nodes.len() {
                tracks.retain(|name, _| informers.nodes.get_key(name).is_some());
            }
        }

        let wall = SystemTime::now();
        let mut index = lock(&self.pods);
        for key in &index.terminating {
            let Some(pod) = informers.pods.get_key(key) else {
                continue;
            };
            let node = informers.nodes.get_key(&pod.spec.node_name);
            if pod_gc(&pod, node.as_deref(), wall) != PodGc::Keep {
                self.pod_queue.add(key.as_str());
            }
        }
        let PodIndex {
            by_node,
            orphaned_since,
            ..
        } = &mut *index;
        orphaned_since.retain(|key, _| {
            informers
                .pods
                .get_key(key)
                .is_some_and(|p| informers.nodes.get_key(&p.spec.node_name).is_none())
        });
        for (node, keys) in by_node.iter() {
            if informers.nodes.get_key(node).is_some() {
                continue;
            }
            for key in keys {
                let since = *orphaned_since.entry(key.clone()).or_insert(now);
                // A node may be registering right now: give the cache (and the node) time.
                if now.saturating_duration_since(since) >= settings.node_monitor_grace_period {
                    self.pod_queue.add(key.as_str());
                }
            }
        }
    }

    async fn node_work(&self) {
        while let Some(name) = self.node_queue.next().await {
            let span = tracing::debug_span!("node-lifecycle", node = %name);
            match self.sync_node(&name).instrument(span).await {
                Ok(()) => self.node_queue.forget(&name),
                Err(e) => {
                    if !e.is_conflict() {
                        tracing::warn!(node = %name, error = %e, "node lifecycle sync failed; retrying");
                    }
                    self.node_queue.add_rate_limited(name.clone());
                }
            }
            self.node_queue.done(&name);
        }
    }

    async fn pod_work(&self) {
        while let Some(key) = self.pod_queue.next().await {
            let span = tracing::debug_span!("pod-gc", pod = %key);
            match self.sync_pod(&key).instrument(span).await {
                Ok(()) => self.pod_queue.forget(&key),
                Err(e) => {
                    tracing::warn!(pod = %key, error = %e, "pod garbage collection failed; retrying");
                    self.pod_queue.add_rate_limited(key.clone());
                }
            }
            self.pod_queue.done(&key);
        }
    }

    async fn sync_node(&self, name: &str) -> Result<(), ClientError> {
        let client = &self.ctx.client;
        let Some(mut node) = self.ctx.informers.nodes.get_key(name) else {
            return Ok(());
        };
        let now = Instant::now();
        let silent_for = lock(&self.nodes)
            .get(name)
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t.heard));
        let stale = silent_for > self.ctx.settings.node_monitor_grace_period;
        let was = health(ready_status(&node), false);
        let h = health(ready_status(&node), stale);

        if needs_unknown_mark(ready_status(&node), stale) {
            let mut next = (*node).clone();
            mark_unknown(&mut next.status.conditions, &time::now());
            tracing::info!(node = %name, silent_for = ?silent_for, "node stopped posting status; marking it NotReady (Ready=Unknown)");
            node = Arc::new(client.update_status(&next).await?);
        }
        if let Some(taints) = desired_taints(&node.spec.taints, h, &time::now()) {
            let mut next = (*node).clone();
            next.spec.taints = taints;
            node = Arc::new(client.update(&next).await?);
            match h.taint_key() {
                Some(key) => {
                    tracing::info!(node = %name, from = ?was, to = ?h, taint = key, "node is NotReady; tainted NoSchedule and NoExecute")
                }
                None => {
                    tracing::info!(node = %name, "node is Ready again; removed its NotReady taints")
                }
            }
        }

        let next_check = if h.is_unhealthy() {
            if h == NodeHealth::Unreachable {
                self.mark_pods_not_ready(name).await?;
            }
            Some(now + self.evict(&node, h, now).await?)
        } else {
            None
        };
        let mut tracks = lock(&self.nodes);
        if let Some(t) = tracks.get_mut(name) {
            if h == NodeHealth::Ready && t.unhealthy_since.take().is_some() {
                tracing::info!(node = %name, "node recovered; eviction timer cleared");
            }
            t.next_check = next_check;
        }
        Ok(())
    }

    fn pods_on(&self, node: &str) -> Vec<Arc<Pod>> {
        let keys: Vec<String> = lock(&self.pods)
            .by_node
            .get(node)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        keys.iter()
            .filter_map(|k| self.ctx.informers.pods.get_key(k))
            .collect()
    }

    /// Takes a silent node's pods out of Services at once (as Kubernetes does), rather than only
    /// when they are evicted: their agent cannot say they are gone.
    async fn mark_pods_not_ready(&self, node: &str) -> Result<(), ClientError> {
        let now = time::now();
        let mut marked = 0;
        let mut result = Ok(());
        for pod in self.pods_on(node) {
            if pod.metadata.deletion_timestamp.is_some() || !pod.is_ready() {
                continue;
            }
            let mut next = (*pod).clone();
            if !mark_pod_not_ready(&mut next.status.conditions, &now) {
                continue;
            }
            match self.ctx.client.update_status(&next).await {
                Ok(_) => marked += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => result = Err(e),
            }
        }
        if marked > 0 {
            tracing::info!(node = %node, pods = marked, "marked the pods of a silent node NotReady");
        }
        result
    }

    /// Deletes (gracefully) the pods that are due; returns when to look again.
    async fn evict(
        &self,
        node: &Node,
        h: NodeHealth,
        now: Instant,
    ) -> Result<Duration, ClientError> {
        let name = &node.metadata.name;
        let since = {
            let mut tracks = lock(&self.nodes);
            let t = tracks
                .entry(name.clone())
                .or_insert_with(|| NodeTrack::new(now));
            *t.unhealthy_since.get_or_insert(now)
        };
        let unhealthy_for = now.saturating_duration_since(since);
        let taint = Taint {
            key: h.taint_key().unwrap_or(TAINT_UNREACHABLE).to_owned(),
            effect: NO_EXECUTE.to_owned(),
            ..Taint::default()
        };
        let timeout = self.ctx.settings.pod_eviction_timeout;
        let mut next = UNHEALTHY_RECHECK;
        let mut due = Vec::new();
        for pod in self.pods_on(name) {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match eviction_due(&pod.spec.tolerations, &taint, unhealthy_for, timeout) {
                Eviction::Now => due.push(pod),
                Eviction::In(d) => next = next.min(d),
                Eviction::Never => {}
            }
        }
        if due.is_empty() {
            return Ok(next);
        }
        tracing::info!(node = %name, state = ?h, unhealthy_for = ?unhealthy_for, pods = due.len(), "evicting pods from an unhealthy node");
        let mut result = Ok(next);
        for pod in due {
            let params = DeleteParams {
                precondition_uid: pod.metadata.uid.clone(),
                ..DeleteParams::default()
            };
            let (ns, pod_name) = (&pod.metadata.namespace, &pod.metadata.name);
            match self
                .ctx
                .client
                .delete(Pod::INFO, ns, pod_name, params)
                .await
            {
                Ok(_) => tracing::debug!(node = %name, pod = %pod_name, "evicted"),
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => result = Err(e),
            }
        }
        result
    }

    async fn sync_pod(&self, key: &str) -> Result<(), ClientError> {
        let informers = &self.ctx.informers;
        let Some(pod) = informers.pods.get_key(key) else {
            return Ok(());
        };
        let node_name = &pod.spec.node_name;
        let node = informers.nodes.get_key(node_name);
        let reason = match pod_gc(&pod, node.as_deref(), SystemTime::now()) {
            PodGc::Keep => return Ok(()),
            PodGc::Expired => "its grace period is over and its node is not Ready",
            PodGc::NodeGone => {
                // The cache may be behind a node that just registered: ask the server.
                match self.ctx.client.get::<Node>("", node_name).await {
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_not_found() => "its node does not exist",
                    Err(e) => return Err(e),
                }
            }
        };
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            precondition_uid: pod.metadata.uid.clone(),
            ..DeleteParams::default()
        };
        let (ns, name) = (&pod.metadata.namespace, &pod.metadata.name);
        match self.ctx.client.delete(Pod::INFO, ns, name, params).await {
            Ok(_) => {
                tracing::info!(pod = %key, node = %node_name, reason, "force-deleted pod");
                lock(&self.pods).orphaned_since.remove(key);
                Ok(())
            }
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Taint::default()
        }
    }

    fn keys(taints: &[Taint]) -> Vec<(String, String)> {
        let mut v: Vec<_> = taints
            .iter()
            .map(|t| (t.key.clone(), t.effect.clone()))
            .collect();
        v.sort();
        v
    }

    fn toleration(key: &str, op: &str, effect: &str, secs: Option<i64>) -> Toleration {
        Toleration {
            key: key.into(),
            operator: op.into(),
            value: String::new(),
            effect: effect.into(),
            toleration_seconds: secs,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn staleness_counts_from_when_a_renewal_was_observed_not_the_time_written_in_it() {
        let start = Instant::now();
        let grace = secs(10);
        let mut t = NodeTrack::new(start);
        // A renewTime far in the past (a skewed clock) still counts as a sign of life when it
        // changes.
        t.saw_renew(Some("2001-01-01T00:00:00.000000Z"), start);
        assert!(!is_stale(t.heard, start + secs(10), grace));
        assert!(is_stale(t.heard, start + secs(11), grace));
        // The same renewTime seen again (a relist) is no renewal.
        t.saw_renew(Some("2001-01-01T00:00:00.000000Z"), start + secs(8));
        assert!(is_stale(t.heard, start + secs(11), grace));
        t.saw_renew(Some("2001-01-01T00:00:05.000000Z"), start + secs(8));
        assert!(!is_stale(t.heard, start + secs(11), grace));
        // A node first seen now gets a full grace period, however old its last heartbeat.
        let fresh = NodeTrack::new(start + secs(100));
        assert!(!is_stale(fresh.heard, start + secs(105), grace));
    }

    #[test]
    fn health_follows_silence_first_then_the_agents_own_report() {
        assert_eq!(health(Some("True"), true), NodeHealth::Unreachable);
        assert_eq!(health(None, true), NodeHealth::Unreachable);
        assert_eq!(health(Some("True"), false), NodeHealth::Ready);
        assert_eq!(health(Some("False"), false), NodeHealth::NotReady);
        // Marked Unknown earlier and renewing again, but the agent has not said Ready yet:
        // still tainted, but alive, so its pods stay.
        assert_eq!(health(Some("Unknown"), false), NodeHealth::Unconfirmed);
        assert_eq!(NodeHealth::Unconfirmed.taint_key(), Some(TAINT_UNREACHABLE));
        assert!(!NodeHealth::Unconfirmed.is_unhealthy());
        assert!(NodeHealth::Unreachable.is_unhealthy());
        assert!(NodeHealth::NotReady.is_unhealthy());
        assert_eq!(health(None, false), NodeHealth::Pending);
        assert!(needs_unknown_mark(Some("True"), true));
        assert!(needs_unknown_mark(None, true));
        assert!(!needs_unknown_mark(Some("Unknown"), true));
        assert!(!needs_unknown_mark(Some("True"), false));
    }

    #[test]
    fn marking_unknown_keeps_the_agents_heartbeat_and_stamps_the_transition() {
        let mut conditions = vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            last_heartbeat_time: Some("2026-01-01T00:00:00Z".into()),
            last_transition_time: Some("2025-12-01T00:00:00Z".into()),
            ..Condition::default()
        }];
        mark_unknown(&mut conditions, "2026-01-01T00:01:00Z");
        let c = &conditions[0];
        assert_eq!(
            (&*c.status, &*c.reason, &*c.message),
            ("Unknown", REASON_UNKNOWN, MESSAGE_UNKNOWN)
        );
        assert_eq!(
            c.last_heartbeat_time.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            c.last_transition_time.as_deref(),
            Some("2026-01-01T00:01:00Z")
        );
        let mut none = Vec::new();
        mark_unknown(&mut none, "2026-01-01T00:01:00Z");
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].status, "Unknown");
    }

    #[test]
    fn unreachable_nodes_get_both_taints_and_keep_their_other_taints() {
        let other = Taint {
            value: "infra".into(),
            ..taint("dedicated", "NoSchedule")
        };
        let taints = desired_taints(
            std::slice::from_ref(&other),
            NodeHealth::Unreachable,
            "2026-01-01T00:00:00Z",
        )
        .unwrap();
        assert_eq!(
            keys(&taints),
            [
                ("dedicated".into(), "NoSchedule".into()),
                (TAINT_UNREACHABLE.into(), "NoExecute".into()),
                (TAINT_UNREACHABLE.into(), "NoSchedule".into()),
            ]
        );
        assert_eq!(taints[0], other);
        let no_execute = taints.iter().find(|t| t.effect == "NoExecute").unwrap();
        assert_eq!(
            no_execute.time_added.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        // Already so: nothing to write.
        assert!(taints_match(&taints, NodeHealth::Unreachable));
        assert_eq!(
            desired_taints(&taints, NodeHealth::Unreachable, "later"),
            None
        );
    }

    #[test]
    fn recovery_removes_our_taints_and_not_ready_swaps_unreachable_for_not_ready() {
        let tainted = vec![
            taint("dedicated", "NoSchedule"),
            taint(TAINT_UNREACHABLE, "NoSchedule"),
            taint(TAINT_UNREACHABLE, "NoExecute"),
        ];
        let ready = desired_taints(&tainted, NodeHealth::Ready, "now").unwrap();
        assert_eq!(keys(&ready), [("dedicated".into(), "NoSchedule".into())]);
        let not_ready = desired_taints(&tainted, NodeHealth::NotReady, "now").unwrap();
        assert_eq!(
            keys(&not_ready),
            [
                ("dedicated".into(), "NoSchedule".into()),
                (TAINT_NOT_READY.into(), "NoExecute".into()),
                (TAINT_NOT_READY.into(), "NoSchedule".into()),
            ]
        );
        // A node that never reported keeps whatever it has.
        assert_eq!(desired_taints(&tainted, NodeHealth::Pending, "now"), None);
        assert_eq!(desired_taints(&[], NodeHealth::Ready, "now"), None);
        // Half-tainted (one effect lost) is repaired.
        assert!(!taints_match(
            &[taint(TAINT_UNREACHABLE, "NoExecute")],
            NodeHealth::Unreachable
        ));
    }

    #[test]
    fn tolerations_match_by_effect_key_operator_and_value() {
        let t = taint(TAINT_UNREACHABLE, "NoExecute");
        assert!(tolerates(&toleration("", "Exists", "", None), &t));
        assert!(!tolerates(&toleration("", "Equal", "", None), &t));
        assert!(tolerates(
            &toleration(TAINT_UNREACHABLE, "Exists", "NoExecute", None),
            &t
        ));
        assert!(!tolerates(
            &toleration(TAINT_UNREACHABLE, "Exists", "NoSchedule", None),
            &t
        ));
        assert!(tolerates(
            &toleration(TAINT_UNREACHABLE, "Equal", "", None),
            &t
        ));
        assert!(!tolerates(
            &toleration(TAINT_NOT_READY, "Exists", "", None),
            &t
        ));
        let mut valued = toleration(TAINT_UNREACHABLE, "Equal", "", None);
        valued.value = "x".into();
        assert!(!tolerates(&valued, &t));
    }

    #[test]
    fn eviction_waits_the_timeout_or_the_shortest_toleration_and_never_for_forever() {
        let t = taint(TAINT_UNREACHABLE, "NoExecute");
        let timeout = secs(30);
        // No toleration: the eviction timeout.
        assert_eq!(
            eviction_due(&[], &t, secs(29), timeout),
            Eviction::In(secs(1))
        );
        assert_eq!(eviction_due(&[], &t, secs(30), timeout), Eviction::Now);
        // Unrelated tolerations do not count.
        let unrelated = [toleration("dedicated", "Exists", "", None)];
        assert_eq!(
            eviction_due(&unrelated, &t, secs(30), timeout),
            Eviction::Now
        );
        // tolerationSeconds replace the timeout, shorter or longer; the shortest wins.
        let short = [
            toleration(TAINT_UNREACHABLE, "Exists", "NoExecute", Some(300)),
            toleration("", "Exists", "NoExecute", Some(5)),
        ];
        assert_eq!(eviction_due(&short, &t, secs(5), timeout), Eviction::Now);
        let long = [toleration(
            TAINT_UNREACHABLE,
            "Exists",
            "NoExecute",
            Some(60),
        )];
        assert_eq!(
            eviction_due(&long, &t, secs(40), timeout),
            Eviction::In(secs(20))
        );
        // Tolerating without a limit: kept.
        let forever = [toleration(TAINT_UNREACHABLE, "Exists", "NoExecute", None)];
        assert_eq!(
            eviction_due(&forever, &t, secs(3600), timeout),
            Eviction::Never
        );
        // Zero or negative seconds: at once.
        let zero = [toleration("", "Exists", "", Some(0))];
        assert_eq!(eviction_due(&zero, &t, secs(0), timeout), Eviction::Now);
    }

    fn node(ready: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = "node-1".into();
        n.status.conditions.push(Condition {
            type_: "Ready".into(),
            status: ready.into(),
            ..Condition::default()
        });
        n
    }

    #[test]
    fn pods_past_their_grace_on_unready_or_missing_nodes_are_collected() {
        let now = SystemTime::now();
        let mut p = Pod::default();
        p.spec.node_name = "node-1".into();
        assert_eq!(pod_gc(&p, Some(&node("Unknown")), now), PodGc::Keep);
        assert_eq!(pod_gc(&p, None, now), PodGc::NodeGone);
        p.metadata.deletion_timestamp = Some(time::format(now + secs(20)));
        assert_eq!(pod_gc(&p, Some(&node("Unknown")), now), PodGc::Keep);
        p.metadata.deletion_timestamp = Some(time::format(now - secs(1)));
        assert_eq!(pod_gc(&p, Some(&node("Unknown")), now), PodGc::Expired);
        assert_eq!(pod_gc(&p, Some(&node("False")), now), PodGc::Expired);
        // A Ready node's agent finishes the deletion itself.
        assert_eq!(pod_gc(&p, Some(&node("True")), now), PodGc::Keep);
        let unbound = Pod::default();
        assert_eq!(pod_gc(&unbound, None, now), PodGc::Keep);
    }

    #[test]
    fn only_ready_pods_are_marked_not_ready() {
        let mut c = vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Condition::default()
        }];
        assert!(mark_pod_not_ready(&mut c, "now"));
        assert_eq!(c[0].status, "False");
        assert!(!mark_pod_not_ready(&mut c, "now"));
    }

    #[test]
    fn the_pod_index_follows_binding_deletion_and_removal() {
        let mut index = PodIndex::default();
        let mut p = Pod::default();
        p.metadata.namespace = "default".into();
        p.metadata.name = "a".into();
        let unbound = Arc::new(p.clone());
        index.apply(&Event::Added(unbound.clone()));
        assert!(index.by_node.is_empty());
        p.spec.node_name = "node-1".into();
        let bound = Arc::new(p.clone());
        index.apply(&Event::Updated {
            old: unbound,
            new: bound.clone(),
        });
        assert!(index.by_node["node-1"].contains("default/a"));
        assert!(index.terminating.is_empty());
        p.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        let deleting = Arc::new(p);
        index.apply(&Event::Updated {
            old: bound,
            new: deleting.clone(),
        });
        assert!(index.terminating.contains("default/a"));
        index.apply(&Event::Deleted(deleting));
        assert!(index.by_node.is_empty());
        assert!(index.terminating.is_empty());
    }
}
