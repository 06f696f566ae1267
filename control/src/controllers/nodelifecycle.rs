//! The node lifecycle controller: notices nodes whose agent went quiet (no Lease renewal within
//! the grace period), marks them NotReady and taints them, evicts their pods after the eviction
//! timeout so owners replace them elsewhere, and force-deletes pods a dead or deleted node can no
//! longer finish deleting.
//!
//! Silence is measured on this controller's own monotonic clock: the moment it *observed* a
//! Lease's renewTime (or the Ready condition's heartbeat) change, never the wall-clock value
//! written in it, so clock skew between machines cannot make a node look dead or alive. At start
//! every node gets a fresh grace period.
//!
//! Silence is also counted only over time in which the controller could have seen a renewal.
//! Alongside the nodes' Leases it renews one of its own, [`ECHO_LEASE`], and waits for each write
//! to come back through its Lease watch: once a write stored at revision R is delivered, every
//! renewal stored before it has been delivered too (a watch delivers in revision order), so the
//! controller can vouch for what it saw up to the moment it sent that write ([`Vantage`]). Silence
//! is counted up to that moment, not up to "now". When no echo comes back for half the grace
//! period (the API server or etcd down, the watch broken or relisting, the server's watch cache
//! behind), the controller's view is interrupted: no node is judged, and when echoes return every
//! node gets a fresh grace period from then (or from a renewal seen after it). An outage of the
//! control plane is thus never taken for the silence of the nodes it cut off.
//!
//! The full-disruption rule (Kubernetes' "master disruption mode"): when every node of a cluster
//! with more than one node is silent at once, the likeliest cause is on the control plane's side
//! (the nodes' path to the API server), not every machine dying together. The controller then
//! holds: no node is marked NotReady, none is tainted, no pod is evicted, and it logs why; nodes
//! marked earlier keep their marks. "At once" allows for renewal phases: the hold starts when one
//! node is past its grace period and every node has been silent for at least half of it. When a
//! node is heard from again the hold ends and every node gets a fresh grace period, so the others
//! are not marked in the instant before their own renewals arrive. A single-node cluster is still
//! judged: its only node's silence is that node's, and nobody else would ever report it dead
//! (Ready=Unknown, tainted, its pods out of Services); its pods are not evicted, though, since
//! there is nowhere else for them to go (Kubernetes too stops evictions when no node is ready).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use skiff_api::{
    Kind, ObjectMeta,
    client::{ClientError, DeleteParams},
    kinds::{Condition, Lease, LeaseSpec, Node, Pod, Taint, Toleration, condition},
    meta::time,
};
use skiff_runtime::{Event, Queue, conditions, key_of};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{Context, NODE_LEASE_NAMESPACE, podutil};

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
/// The Lease (in the node-lease namespace) this controller renews to check that it sees
/// renewals. A reserved name: a node so named would share it and never be heard from.
pub const ECHO_LEASE: &str = "skiff-node-lifecycle-echo";
/// The holder written into [`ECHO_LEASE`].
const ECHO_HOLDER: &str = "skiff-controller-manager";
/// Echo writes remembered while they have not come back (one per period; the newest matter).
const ECHO_PENDING: usize = 64;

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

/// What the controller can vouch for having seen of the nodes' renewals: it tracks its own echo
/// writes to [`ECHO_LEASE`] (revision, and when each was sent) and the highest Lease revision its
/// watch delivered. Pure, with the instants given by the caller.
#[derive(Debug)]
pub struct Vantage {
    /// More than this between two confirmed instants, or since the last one, interrupts the view.
    gap_limit: Duration,
    /// Echo writes not yet delivered back: (revision, sent), oldest first.
    pending: VecDeque<(i64, Instant)>,
    /// The highest Lease revision the watch delivered.
    delivered: i64,
    /// Every renewal stored before this instant has been delivered.
    through: Option<Instant>,
    /// When the current unbroken stretch of observation began: no silence counts from before it.
    since: Option<Instant>,
}

/// What a confirmed echo means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Nothing new is confirmed (the write is still on its way, or an older one came back).
    Pending,
    /// The view goes on unbroken.
    Continued,
    /// The first confirmation, or the first after an interruption lasting `after` (from the last
    /// confirmed instant): every node gets a fresh grace period from here.
    Resumed { after: Option<Duration> },
}

/// What the controller may judge at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Its view is interrupted: nothing confirmed yet, or nothing since `seen_through` for longer
    /// than the gap limit. No node is judged silent.
    Blind { seen_through: Option<Instant> },
    /// Silence may be counted from `since` at the earliest, up to `through`.
    Clear { since: Instant, through: Instant },
}

impl View {
    /// How long a node last heard from at `heard` has been silent as far as the controller can
    /// vouch, `None` while it is blind.
    pub fn silence(self, heard: Instant) -> Option<Duration> {
        match self {
            View::Blind { .. } => None,
            View::Clear { since, through } => {
                Some(through.saturating_duration_since(heard.max(since)))
            }
        }
    }
}

impl Vantage {
    /// A view that is blind until its first echo comes back.
    pub fn new(gap_limit: Duration) -> Vantage {
        Vantage {
            gap_limit,
            pending: VecDeque::new(),
            delivered: 0,
            through: None,
            since: None,
        }
    }

    /// An echo write sent at `sent` was stored at `revision`. The watch may have delivered it
    /// before the write's reply arrived.
    pub fn written(&mut self, revision: i64, sent: Instant) -> Echo {
        if revision <= self.delivered {
            return self.confirm(sent);
        }
        if self.pending.len() >= ECHO_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((revision, sent));
        Echo::Pending
    }

    /// The Lease watch delivered an object stored at `revision` (any Lease, the echo or a
    /// node's: either proves everything before it was delivered).
    pub fn delivered(&mut self, revision: i64) -> Echo {
        self.delivered = self.delivered.max(revision);
        let mut newest = None;
        while let Some(&(r, sent)) = self.pending.front() {
            if r > self.delivered {
                break;
            }
            newest = Some(sent);
            self.pending.pop_front();
        }
        newest.map_or(Echo::Pending, |sent| self.confirm(sent))
    }

    fn confirm(&mut self, sent: Instant) -> Echo {
        match self.through {
            Some(t) if sent <= t => Echo::Pending,
            Some(t) if sent.duration_since(t) <= self.gap_limit => {
                self.through = Some(sent);
                Echo::Continued
            }
            previous => {
                self.through = Some(sent);
                self.since = Some(sent);
                Echo::Resumed {
                    after: previous.map(|t| sent.duration_since(t)),
                }
            }
        }
    }

    /// The view at `now`.
    pub fn view(&self, now: Instant) -> View {
        match (self.since, self.through) {
            (Some(since), Some(through))
                if now.saturating_duration_since(through) <= self.gap_limit =>
            {
                View::Clear { since, through }
            }
            _ => View::Blind {
                seen_through: self.through,
            },
        }
    }

    /// Every node gets a fresh grace period from `at` (a full disruption ended).
    pub fn restart(&mut self, at: Instant) {
        if let Some(since) = &mut self.since {
            *since = (*since).max(at);
        }
    }
}

/// The state of the cluster as a whole, from how many of its nodes are silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disruption {
    /// Some node is heard from (or none is past its grace period): each node is judged alone.
    Normal,
    /// The cluster's only node is silent: it is marked and tainted, but its pods stay, having
    /// nowhere else to go.
    LoneNode,
    /// Every node (more than one) fell silent at once: hold, the trouble is likelier on the
    /// control plane's side.
    Full,
}

/// `nodes` in all, `silent` of them past their grace period, `quiet` silent for more than half
/// of it (the silent ones included).
pub fn disruption(nodes: usize, silent: usize, quiet: usize) -> Disruption {
    if silent == 0 {
        Disruption::Normal
    } else if nodes == 1 {
        Disruption::LoneNode
    } else if quiet >= nodes {
        Disruption::Full
    } else {
        Disruption::Normal
    }
}

/// How one pass may act on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub health: NodeHealth,
    /// Judged silent: its Ready condition is to say Unknown.
    pub stale: bool,
    /// Its pods may be evicted (if it is unhealthy).
    pub may_evict: bool,
}

/// Judges a node from its stored Ready status and its silence (`None` while the controller is
/// blind), in the cluster's `disruption`. While blind, or in a full disruption, nobody is judged
/// silent and nothing is evicted; what the agents themselves report still counts.
pub fn verdict(
    ready: Option<&str>,
    silence: Option<Duration>,
    grace: Duration,
    disruption: Disruption,
) -> Verdict {
    let stale = silence.is_some_and(|s| s > grace) && disruption != Disruption::Full;
    let health = health(ready, stale);
    Verdict {
        health,
        stale,
        may_evict: silence.is_some() && disruption == Disruption::Normal && health.is_unhealthy(),
    }
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
    let c = conditions::entry(conditions, "Ready");
    conditions::update(c, "Unknown", REASON_UNKNOWN, MESSAGE_UNKNOWN, now);
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

/// The node's NoExecute taints other than this controller's own (those follow the node's
/// health and `--pod-eviction-timeout`): an administrator's, which Kubernetes' taint manager
/// enforces on running pods.
pub fn foreign_no_execute(taints: &[Taint]) -> impl Iterator<Item = &Taint> {
    taints
        .iter()
        .filter(|t| t.effect == NO_EXECUTE && !is_ours(&t.key))
}

/// Kubernetes' NoExecute taint manager for one pod: each of its node's foreign NoExecute
/// `taints`, with how long it has been seen there. A taint the pod does not tolerate evicts it
/// at once; one it tolerates with `tolerationSeconds` evicts it once that has passed (the
/// soonest of all counts); a toleration without `tolerationSeconds` tolerates for ever.
pub fn taint_eviction(tolerations: &[Toleration], taints: &[(&Taint, Duration)]) -> Eviction {
    let mut soonest: Option<Duration> = None;
    for (taint, tainted_for) in taints {
        if let Some(delay) = eviction_delay(tolerations, taint, Duration::ZERO) {
            let left = delay.saturating_sub(*tainted_for);
            soonest = Some(soonest.map_or(left, |s| s.min(left)));
        }
    }
    match soonest {
        None => Eviction::Never,
        Some(d) if d.is_zero() => Eviction::Now,
        Some(d) => Eviction::In(d),
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
    conditions::update(
        c,
        "False",
        "NodeUnreachable",
        "The node's agent stopped posting status.",
        now,
    )
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
    /// The node's foreign NoExecute taints (key, value), each with when it was first seen.
    no_execute_seen: Vec<(String, String, Instant)>,
    /// While the node has such taints: when each pod (by uid) was first seen on it.
    pods_seen: HashMap<String, Instant>,
}

impl NodeTrack {
    fn new(now: Instant) -> NodeTrack {
        NodeTrack {
            heard: now,
            renew: None,
            heartbeat: None,
            unhealthy_since: None,
            next_check: None,
            no_execute_seen: Vec::new(),
            pods_seen: HashMap::new(),
        }
    }

    /// The node's foreign NoExecute taints as `pod` meets them: each with how long the pod has
    /// been under it, counted from the later of the taint's first sighting and the pod's
    /// (Kubernetes times tolerationSeconds per pod: a pod placed on a node tainted an hour ago
    /// still gets its whole toleration).
    fn taints_for_pod(
        &mut self,
        taints: &[Taint],
        pod_uid: &str,
        now: Instant,
    ) -> Vec<(Taint, Duration)> {
        let tainted = self.see_no_execute(taints, now);
        if tainted.is_empty() {
            self.pods_seen.clear();
            return Vec::new();
        }
        let arrived = *self.pods_seen.entry(pod_uid.to_owned()).or_insert(now);
        let on_node = now.saturating_duration_since(arrived);
        tainted
            .into_iter()
            .map(|(t, d)| (t.clone(), d.min(on_node)))
            .collect()
    }

    /// Brings the first-seen times of the node's foreign NoExecute taints up to date (a taint
    /// removed and added again starts afresh); returns each taint with how long it has been
    /// seen.
    fn see_no_execute<'a>(
        &mut self,
        taints: &'a [Taint],
        now: Instant,
    ) -> Vec<(&'a Taint, Duration)> {
        let current: Vec<&Taint> = foreign_no_execute(taints).collect();
        self.no_execute_seen
            .retain(|(k, v, _)| current.iter().any(|t| &t.key == k && &t.value == v));
        current
            .into_iter()
            .map(|t| {
                let since = match self
                    .no_execute_seen
                    .iter()
                    .find(|(k, v, _)| *k == t.key && *v == t.value)
                {
                    Some((_, _, since)) => *since,
                    None => {
                        self.no_execute_seen
                            .push((t.key.clone(), t.value.clone(), now));
                        now
                    }
                };
                (t, now.saturating_duration_since(since))
            })
            .collect()
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

/// What the controller knows of its own view and of the cluster as a whole.
#[derive(Debug)]
struct Sight {
    vantage: Vantage,
    disruption: Disruption,
    /// The view was interrupted at the last pass (for logging the transitions once).
    blind: bool,
}

/// What one pass changed in the controller's view or in the cluster's state (logged once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The view was interrupted; the last confirmed instant was this long ago.
    Blinded { last_confirmed: Option<Duration> },
    /// The cluster's disruption state changed.
    Disruption {
        from: Disruption,
        to: Disruption,
        nodes: usize,
        silent: usize,
    },
}

impl Sight {
    /// The view at `now` and what changed since the last pass, from when each node (`heard`)
    /// was last heard from. While blind the disruption state stays as it was (silences are
    /// unknown); leaving a full disruption gives every node a fresh grace period.
    fn look(
        &mut self,
        heard: impl ExactSizeIterator<Item = Instant>,
        grace: Duration,
        now: Instant,
    ) -> (View, Option<Change>) {
        let view = self.vantage.view(now);
        if let View::Blind { seen_through } = view {
            let change = (!self.blind).then(|| Change::Blinded {
                last_confirmed: seen_through.map(|t| now.saturating_duration_since(t)),
            });
            self.blind = true;
            return (view, change);
        }
        self.blind = false;
        let nodes = heard.len();
        let (mut silent, mut quiet) = (0, 0);
        for h in heard {
            let s = view.silence(h).unwrap_or_default();
            silent += usize::from(s > grace);
            quiet += usize::from(s > grace / 2);
        }
        let to = disruption(nodes, silent, quiet);
        let from = std::mem::replace(&mut self.disruption, to);
        if from == to {
            return (view, None);
        }
        let change = Some(Change::Disruption {
            from,
            to,
            nodes,
            silent,
        });
        if from == Disruption::Full {
            self.vantage.restart(now);
            return (self.vantage.view(now), change);
        }
        (view, change)
    }
}

/// Logs what a confirmed echo changed.
fn note_echo(echo: Echo) {
    if let Echo::Resumed { after } = echo {
        match after {
            Some(after) => tracing::info!(
                interrupted_for = ?after,
                "node renewals are observable again; every node gets a fresh grace period from now"
            ),
            None => tracing::info!("node renewals are observable; judging nodes from now"),
        }
    }
}

/// Watches node heartbeats, taints and evicts, and collects pods dead nodes leave behind.
#[derive(Debug)]
pub struct NodeLifecycleController {
    ctx: Arc<Context>,
    nodes: Arc<Mutex<HashMap<String, NodeTrack>>>,
    pods: Arc<Mutex<PodIndex>>,
    sight: Arc<Mutex<Sight>>,
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
        let sight = Arc::new(Mutex::new(Sight {
            vantage: Vantage::new(ctx.settings.node_monitor_grace_period / 2),
            disruption: Disruption::Normal,
            blind: true,
        }));
        let node_queue = Queue::default().with_metrics("node_lifecycle", &ctx.queues);
        let pod_queue = Queue::default().with_metrics("node_lifecycle_pods", &ctx.queues);
        let informers = &ctx.informers;

        let tracks = nodes.clone();
        let vantage = sight.clone();
        informers.node_leases.on_event(move |ev: &Event<Lease>| {
            let (Event::Added(l) | Event::Updated { new: l, .. }) = ev else {
                return;
            };
            let now = Instant::now();
            // Handlers run in the watch's order, so a renewal stored before an echo is recorded
            // before that echo confirms the view. (A relist hands its changes over in no order,
            // but a view that goes on unbroken across it has missed less than half the grace
            // period, and one that does not gives every node a fresh grace period anyway.)
            note_echo(lock(&vantage).vantage.delivered(l.metadata.revision()));
            if l.metadata.name == ECHO_LEASE {
                return;
            }
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
            sight,
            node_queue,
            pod_queue,
        }
    }

    /// How often nodes are looked at and the echo Lease is written.
    fn period(&self) -> Duration {
        (self.ctx.settings.node_monitor_grace_period / 5)
            .clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// Renews [`ECHO_LEASE`] every period and hands each stored revision to the vantage, which
    /// waits for it to come back through the Lease watch. A failed write is simply no echo.
    async fn echo(&self) {
        let mut interval = tokio::time::interval(self.period());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let limit = self.ctx.settings.node_monitor_grace_period / 2;
        loop {
            interval.tick().await;
            let sent = Instant::now();
            match tokio::time::timeout(limit, self.write_echo()).await {
                Ok(Ok(revision)) => note_echo(lock(&self.sight).vantage.written(revision, sent)),
                Ok(Err(e)) => tracing::debug!(error = %e, "writing the echo lease failed"),
                Err(_) => tracing::debug!(?limit, "writing the echo lease timed out"),
            }
        }
    }

    /// One unconditional write of the echo Lease (created when missing); its revision.
    async fn write_echo(&self) -> Result<i64, ClientError> {
        let client = &self.ctx.client;
        let lease = Lease {
            metadata: ObjectMeta {
                name: ECHO_LEASE.to_owned(),
                namespace: NODE_LEASE_NAMESPACE.to_owned(),
                ..ObjectMeta::default()
            },
            spec: LeaseSpec {
                holder_identity: Some(ECHO_HOLDER.to_owned()),
                renew_time: Some(time::format_micros(SystemTime::now())),
                ..LeaseSpec::default()
            },
        };
        let stored = match client.update(&lease).await {
            Err(e) if e.is_not_found() => client.create(&lease).await?,
            other => other?,
        };
        Ok(stored.metadata.revision())
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
        let echo = this.clone();
        tasks.spawn(async move { echo.echo().await });
        let ticker = this.clone();
        tasks.spawn(async move {
            let mut interval = tokio::time::interval(ticker.period());
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
        let grace = settings.node_monitor_grace_period;
        let now = Instant::now();
        let nodes = informers.nodes.list();
        let mut tainted_nodes: Vec<Arc<Node>> = Vec::new();
        {
            let mut tracks = lock(&self.nodes);
            for node in &nodes {
                tracks
                    .entry(node.metadata.name.clone())
                    .or_insert_with(|| NodeTrack::new(now));
            }
            if tracks.len() > nodes.len() {
                tracks.retain(|name, _| informers.nodes.get_key(name).is_some());
            }
            let (view, disruption) = self.look(&tracks, now);
            for node in &nodes {
                let name = &node.metadata.name;
                let Some(t) = tracks.get(name) else {
                    continue;
                };
                let ready = ready_status(node);
                let v = verdict(ready, view.silence(t.heard), grace, disruption);
                let due = needs_unknown_mark(ready, v.stale)
                    || !taints_match(&node.spec.taints, v.health)
                    // Eviction starts, or is due again.
                    || (v.health.is_unhealthy() && t.next_check.is_none_or(|c| c <= now))
                    // Recovered: the eviction timer is to be cleared.
                    || (v.health == NodeHealth::Ready && t.unhealthy_since.is_some());
                if due {
                    self.node_queue.add(name.as_str());
                }
            }
            for node in &nodes {
                let Some(t) = tracks.get_mut(&node.metadata.name) else {
                    continue;
                };
                if foreign_no_execute(&node.spec.taints).next().is_none() {
                    t.no_execute_seen.clear();
                    t.pods_seen.clear();
                    continue;
                }
                tainted_nodes.push(node.clone());
            }
        }
        // Pods on tainted nodes whose eviction is due go to the pod queue (sync_pod judges
        // again from the cache before it deletes).
        for node in &tainted_nodes {
            let name = &node.metadata.name;
            let pods = self.pods_on(name);
            let mut due = Vec::new();
            {
                let mut tracks = lock(&self.nodes);
                let Some(t) = tracks.get_mut(name) else {
                    continue;
                };
                t.pods_seen
                    .retain(|uid, _| pods.iter().any(|p| &p.metadata.uid == uid));
                for pod in &pods {
                    let taints = t.taints_for_pod(&node.spec.taints, &pod.metadata.uid, now);
                    let taints: Vec<(&Taint, Duration)> =
                        taints.iter().map(|(t, d)| (t, *d)).collect();
                    if pod.metadata.deletion_timestamp.is_none()
                        && taint_eviction(&pod.spec.tolerations, &taints) == Eviction::Now
                    {
                        due.push(key_of(&pod.metadata));
                    }
                }
            }
            for key in due {
                self.pod_queue.add(&key);
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

    /// The view at `now` and the cluster's disruption state, brought up to date from the nodes'
    /// silences; each change is logged, being the reason nodes are, or are not, judged.
    fn look(&self, tracks: &HashMap<String, NodeTrack>, now: Instant) -> (View, Disruption) {
        let grace = self.ctx.settings.node_monitor_grace_period;
        let heard = tracks.values().map(|t| t.heard);
        let (view, change, disruption) = {
            let mut sight = lock(&self.sight);
            let (view, change) = sight.look(heard, grace, now);
            (view, change, sight.disruption)
        };
        match change {
            None => {}
            Some(Change::Blinded { last_confirmed }) => tracing::warn!(
                ?last_confirmed,
                "this controller's own Lease writes stopped coming back through its watch; it cannot vouch for node renewals, so no node is judged until they do"
            ),
            Some(Change::Disruption {
                from,
                to,
                nodes,
                silent,
            }) => match to {
                Disruption::Full => tracing::warn!(
                    nodes,
                    silent,
                    "every node fell silent at once; the trouble is likelier on the control plane's side than on every node: holding (no node is marked NotReady, tainted or evicted) until one is heard from"
                ),
                Disruption::LoneNode => tracing::warn!(
                    "the cluster's only node is silent: it is marked NotReady and tainted, but its pods are not evicted (there is nowhere else for them to go)"
                ),
                Disruption::Normal if from == Disruption::Full => tracing::info!(
                    "a node is heard from again; the hold ends and every node gets a fresh grace period from now"
                ),
                Disruption::Normal => tracing::info!(?from, "nodes are judged one by one again"),
            },
        }
        (view, disruption)
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
        let (view, disruption) = {
            let sight = lock(&self.sight);
            (sight.vantage.view(now), sight.disruption)
        };
        let heard = lock(&self.nodes).get(name).map_or(now, |t| t.heard);
        let silent_for = view.silence(heard);
        let grace = self.ctx.settings.node_monitor_grace_period;
        let v = verdict(ready_status(&node), silent_for, grace, disruption);
        let (stale, h) = (v.stale, v.health);
        let was = health(ready_status(&node), false);

        if needs_unknown_mark(ready_status(&node), stale) {
            let mut next = (*node).clone();
            mark_unknown(&mut next.status.conditions, &time::now());
            tracing::info!(node = %name, silent_for = ?silent_for.unwrap_or_default(), "node stopped posting status; marking it NotReady (Ready=Unknown)");
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
            if v.may_evict {
                Some(now + self.evict(&node, h, now).await?)
            } else {
                // Evictions held (a lone node, a full disruption, or the view interrupted):
                // looked at again later.
                Some(now + UNHEALTHY_RECHECK)
            }
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

    /// Deletes (gracefully, as Kubernetes' taint manager does) a pod whose node carries a
    /// NoExecute taint it does not tolerate, or tolerates no longer.
    async fn evict_for_taint(
        &self,
        pod: &Pod,
        taints: &[(&Taint, Duration)],
    ) -> Result<(), ClientError> {
        let params = DeleteParams {
            precondition_uid: pod.metadata.uid.clone(),
            ..DeleteParams::default()
        };
        let (ns, name) = (&pod.metadata.namespace, &pod.metadata.name);
        let names: Vec<String> = taints
            .iter()
            .map(|(t, _)| format!("{}={}:{}", t.key, t.value, t.effect))
            .collect();
        match self.ctx.client.delete(Pod::INFO, ns, name, params).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{name}"), node = %pod.spec.node_name, taints = %names.join(","), "evicting pod: its node has a NoExecute taint it does not tolerate (or no longer)");
                Ok(())
            }
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn sync_pod(&self, key: &str) -> Result<(), ClientError> {
        let informers = &self.ctx.informers;
        let Some(pod) = informers.pods.get_key(key) else {
            return Ok(());
        };
        let node_name = &pod.spec.node_name;
        let node = informers.nodes.get_key(node_name);
        if let Some(n) = &node
            && pod.metadata.deletion_timestamp.is_none()
            && foreign_no_execute(&n.spec.taints).next().is_some()
        {
            let tainted = {
                let mut tracks = lock(&self.nodes);
                tracks
                    .entry(node_name.clone())
                    .or_insert_with(|| NodeTrack::new(Instant::now()))
                    .taints_for_pod(&n.spec.taints, &pod.metadata.uid, Instant::now())
            };
            let taints: Vec<(&Taint, Duration)> = tainted.iter().map(|(t, d)| (t, *d)).collect();
            if taint_eviction(&pod.spec.tolerations, &taints) == Eviction::Now {
                return self.evict_for_taint(&pod, &taints).await;
            }
        }
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
    fn an_administrators_no_execute_taint_evicts_pods_that_do_not_tolerate_it_at_once() {
        let dedicated = taint("dedicated", NO_EXECUTE);
        let ours = taint(TAINT_UNREACHABLE, NO_EXECUTE);
        let soft = taint("soft", "NoSchedule");
        let node_taints = [dedicated.clone(), ours.clone(), soft];
        // Only the administrator's NoExecute taint is the taint manager's.
        let foreign: Vec<&str> = foreign_no_execute(&node_taints)
            .map(|t| t.key.as_str())
            .collect();
        assert_eq!(foreign, ["dedicated"]);
        let taints = [(&dedicated, secs(0))];
        assert_eq!(taint_eviction(&[], &taints), Eviction::Now);
        // Tolerating another key, or only NoSchedule, is not tolerating it.
        let other = toleration("other", "Exists", "", None);
        let no_schedule = toleration("dedicated", "Exists", "NoSchedule", None);
        assert_eq!(
            taint_eviction(&[other, no_schedule], &taints),
            Eviction::Now
        );
        // Tolerated for ever.
        let always = toleration("dedicated", "Exists", NO_EXECUTE, None);
        assert_eq!(taint_eviction(&[always], &taints), Eviction::Never);
        assert_eq!(taint_eviction(&[], &[]), Eviction::Never);
    }

    #[test]
    fn toleration_seconds_count_from_when_the_taint_was_first_seen_and_the_soonest_wins() {
        let a = taint("a", NO_EXECUTE);
        let b = taint("b", NO_EXECUTE);
        let tol = [
            toleration("a", "Exists", NO_EXECUTE, Some(30)),
            toleration("b", "Exists", NO_EXECUTE, Some(10)),
        ];
        assert_eq!(
            taint_eviction(&tol, &[(&a, secs(0)), (&b, secs(0))]),
            Eviction::In(secs(10))
        );
        assert_eq!(
            taint_eviction(&tol, &[(&a, secs(25)), (&b, secs(4))]),
            Eviction::In(secs(5))
        );
        assert_eq!(
            taint_eviction(&tol, &[(&a, secs(30)), (&b, secs(4))]),
            Eviction::Now
        );
        // Zero or negative seconds: at once.
        let now = [toleration("a", "Exists", NO_EXECUTE, Some(-5))];
        assert_eq!(taint_eviction(&now, &[(&a, secs(0))]), Eviction::Now);
        // One taint tolerated for ever, another not at all: evicted.
        let partial = [toleration("a", "Exists", NO_EXECUTE, None)];
        assert_eq!(
            taint_eviction(&partial, &[(&a, secs(0)), (&b, secs(0))]),
            Eviction::Now
        );
    }

    #[test]
    fn a_pod_arriving_on_a_node_tainted_long_ago_still_gets_its_whole_toleration() {
        let start = Instant::now();
        let mut t = NodeTrack::new(start);
        let a = taint("a", NO_EXECUTE);
        let taints = std::slice::from_ref(&a);
        let tol = [toleration("a", "Exists", NO_EXECUTE, Some(300))];
        let old = t.taints_for_pod(taints, "old", start);
        assert_eq!(old[0].1, secs(0));
        // An hour later a new pod lands: its clock starts now, the old one's ran on.
        let hour = start + secs(3600);
        let old = t.taints_for_pod(taints, "old", hour);
        let new = t.taints_for_pod(taints, "new", hour);
        let judge = |v: &[(Taint, Duration)]| {
            let v: Vec<(&Taint, Duration)> = v.iter().map(|(t, d)| (t, *d)).collect();
            taint_eviction(&tol, &v)
        };
        assert_eq!(judge(&old), Eviction::Now);
        assert_eq!(judge(&new), Eviction::In(secs(300)));
        // The taint gone, the pods' clocks go with it.
        assert!(t.taints_for_pod(&[], "new", hour + secs(1)).is_empty());
        assert!(t.pods_seen.is_empty());
    }

    #[test]
    fn a_taint_is_timed_from_its_first_sighting_and_afresh_after_it_was_gone() {
        let start = Instant::now();
        let mut t = NodeTrack::new(start);
        let a = taint("a", NO_EXECUTE);
        let seen = t.see_no_execute(std::slice::from_ref(&a), start);
        assert_eq!(seen[0].1, secs(0));
        let seen = t.see_no_execute(std::slice::from_ref(&a), start + secs(7));
        assert_eq!(seen[0].1, secs(7));
        // Removed, then added again: counts from the new sighting.
        assert!(t.see_no_execute(&[], start + secs(8)).is_empty());
        let seen = t.see_no_execute(std::slice::from_ref(&a), start + secs(9));
        assert_eq!(seen[0].1, secs(0));
    }

    /// A view confirmed from `since` up to `through`.
    fn clear(since: Instant, through: Instant) -> View {
        View::Clear { since, through }
    }

    /// Echo writes every second from `from` (inclusive) to `to` (exclusive), each delivered back
    /// at once; revisions continue from `rev`. Returns the next revision.
    fn echo_every_second(v: &mut Vantage, start: Instant, from: u64, to: u64, rev: i64) -> i64 {
        let mut rev = rev;
        for t in from..to {
            rev += 1;
            v.written(rev, start + secs(t));
            v.delivered(rev);
        }
        rev
    }

    #[test]
    fn staleness_counts_from_when_a_renewal_was_observed_not_the_time_written_in_it() {
        let start = Instant::now();
        let grace = secs(10);
        let view_at = |t: u64| clear(start, start + secs(t));
        let stale_at = |heard: Instant, t: u64| view_at(t).silence(heard).unwrap() > grace;
        let mut t = NodeTrack::new(start);
        // A renewTime far in the past (a skewed clock) still counts as a sign of life when it
        // changes.
        t.saw_renew(Some("2001-01-01T00:00:00.000000Z"), start);
        assert!(!stale_at(t.heard, 10));
        assert!(stale_at(t.heard, 11));
        // The same renewTime seen again (a relist) is no renewal.
        t.saw_renew(Some("2001-01-01T00:00:00.000000Z"), start + secs(8));
        assert!(stale_at(t.heard, 11));
        t.saw_renew(Some("2001-01-01T00:00:05.000000Z"), start + secs(8));
        assert!(!stale_at(t.heard, 11));
        // A node first seen now gets a full grace period, however old its last heartbeat.
        let fresh = NodeTrack::new(start + secs(100));
        assert!(!stale_at(fresh.heard, 105));
    }

    #[test]
    fn the_view_is_blind_until_the_first_echo_comes_back_and_grace_counts_from_then() {
        let start = Instant::now();
        let mut v = Vantage::new(secs(5));
        assert_eq!(v.view(start), View::Blind { seen_through: None });
        // Written, not yet delivered back: still blind.
        assert_eq!(v.written(10, start + secs(1)), Echo::Pending);
        assert!(matches!(v.view(start + secs(2)), View::Blind { .. }));
        assert_eq!(v.delivered(10), Echo::Resumed { after: None });
        let view = v.view(start + secs(2));
        assert_eq!(view, clear(start + secs(1), start + secs(1)));
        // A node heard long before the controller could see anything is silent only since.
        assert_eq!(view.silence(start), Some(Duration::ZERO));
    }

    #[test]
    fn an_echo_delivered_before_its_write_returns_confirms_the_view_all_the_same() {
        let start = Instant::now();
        let mut v = Vantage::new(secs(5));
        // The watch is quicker than the write's reply; a node's later Lease proves it as well.
        assert_eq!(v.delivered(12), Echo::Pending);
        assert_eq!(
            v.written(11, start + secs(1)),
            Echo::Resumed { after: None }
        );
        assert_eq!(v.written(13, start + secs(2)), Echo::Pending);
        assert_eq!(v.delivered(20), Echo::Continued);
        assert_eq!(
            v.view(start + secs(3)),
            clear(start + secs(1), start + secs(2))
        );
        // An older echo arriving late changes nothing.
        assert_eq!(v.written(9, start), Echo::Pending);
    }

    #[test]
    fn silence_is_counted_up_to_the_last_confirmed_instant_not_up_to_now() {
        let start = Instant::now();
        let mut v = Vantage::new(secs(5));
        let rev = echo_every_second(&mut v, start, 0, 11, 0);
        // The write sent at 11 s is still on its way at 14 s: the view reaches 10 s.
        v.written(rev + 1, start + secs(11));
        let view = v.view(start + secs(14));
        assert_eq!(view, clear(start, start + secs(10)));
        assert_eq!(view.silence(start + secs(2)), Some(secs(8)));
    }

    #[test]
    fn a_control_plane_outage_counts_against_no_node_and_every_node_gets_a_fresh_grace_period() {
        let start = Instant::now();
        let grace = secs(10);
        let mut v = Vantage::new(grace / 2);
        let rev = echo_every_second(&mut v, start, 0, 10, 0);
        // Both nodes renewed just before the API server went away at 10 s.
        let (alive, dead) = (start + secs(9), start + secs(9));
        // 30 s without an echo: blind once the last one (9 s) is more than the gap limit old, so
        // nobody is judged meanwhile.
        for t in [11, 14] {
            assert!(v.view(start + secs(t)).silence(alive).is_some(), "{t}");
        }
        for t in [15, 25, 39] {
            let view = v.view(start + secs(t));
            assert_eq!(
                view,
                View::Blind {
                    seen_through: Some(start + secs(9))
                },
                "{t}"
            );
            assert_eq!(view.silence(dead), None);
        }
        // Back at 40 s: the first echo resumes the view, and silence restarts from there.
        let rev = rev + 1;
        assert_eq!(v.written(rev, start + secs(40)), Echo::Pending);
        assert_eq!(
            v.delivered(rev),
            Echo::Resumed {
                after: Some(secs(31))
            }
        );
        let rev = echo_every_second(&mut v, start, 41, 51, rev);
        let heard_again = start + secs(41);
        // The node that renews again is fine; the one that does not is silent from 40 s only,
        // so it is judged a grace period after the outage, not at once.
        let view = v.view(start + secs(50));
        assert_eq!(view.silence(heard_again), Some(secs(9)));
        assert_eq!(view.silence(dead), Some(grace));
        let _ = echo_every_second(&mut v, start, 51, 52, rev);
        let view = v.view(start + secs(51));
        assert!(view.silence(dead).unwrap() > grace);
        assert!(view.silence(alive.max(heard_again)).unwrap() <= grace);
    }

    #[test]
    fn a_watch_that_falls_behind_interrupts_the_view_even_while_writes_succeed() {
        let start = Instant::now();
        let mut v = Vantage::new(secs(5));
        let mut rev = echo_every_second(&mut v, start, 0, 5, 0);
        // The writes keep succeeding, but nothing comes back (a broken or lagging watch).
        for t in 5..20 {
            rev += 1;
            assert_eq!(v.written(rev, start + secs(t)), Echo::Pending);
        }
        assert!(matches!(v.view(start + secs(12)), View::Blind { .. }));
        // The watch resumes and replays everything: the view is back, from the newest write.
        assert_eq!(
            v.delivered(rev),
            Echo::Resumed {
                after: Some(secs(15))
            }
        );
        assert_eq!(
            v.view(start + secs(20)),
            clear(start + secs(19), start + secs(19))
        );
        // Only the newest writes are remembered while nothing comes back.
        for t in 0..(ECHO_PENDING as u64 * 2) {
            rev += 1;
            v.written(rev, start + secs(20 + t));
        }
        assert_eq!(v.pending.len(), ECHO_PENDING);
    }

    #[test]
    fn a_hiccup_shorter_than_the_gap_limit_keeps_the_view_and_a_dead_node_is_judged_on_time() {
        let start = Instant::now();
        let grace = secs(10);
        let mut v = Vantage::new(grace / 2);
        let rev = echo_every_second(&mut v, start, 0, 5, 0);
        // Echoes at 4 s, then at 8 s: within the gap limit, no fresh grace for anybody.
        assert_eq!(v.written(rev + 1, start + secs(8)), Echo::Pending);
        assert_eq!(v.delivered(rev + 1), Echo::Continued);
        let _ = echo_every_second(&mut v, start, 9, 13, rev + 1);
        let dead = start + secs(1);
        let view = v.view(start + secs(13));
        assert_eq!(view, clear(start, start + secs(12)));
        assert!(view.silence(dead).unwrap() > grace);
    }

    #[test]
    fn every_node_silent_at_once_holds_but_a_lone_node_is_still_judged() {
        // Nobody past the grace period: normal, however quiet.
        assert_eq!(disruption(3, 0, 3), Disruption::Normal);
        assert_eq!(disruption(0, 0, 0), Disruption::Normal);
        // One dead node among live ones: judged.
        assert_eq!(disruption(3, 1, 1), Disruption::Normal);
        // Two dead, one still renewing: judged (the control plane demonstrably hears nodes).
        assert_eq!(disruption(3, 2, 2), Disruption::Normal);
        // All silent, the last ones a renewal apart (quiet, not yet past the grace period):
        // that is "at once".
        assert_eq!(disruption(3, 1, 3), Disruption::Full);
        assert_eq!(disruption(3, 3, 3), Disruption::Full);
        assert_eq!(disruption(2, 2, 2), Disruption::Full);
        // A single node: its silence is its own.
        assert_eq!(disruption(1, 1, 1), Disruption::LoneNode);
    }

    #[test]
    fn a_full_disruption_marks_taints_and_evicts_nobody_and_a_lone_node_is_marked_not_evicted() {
        let grace = secs(10);
        let silent = Some(secs(11));
        let talking = Some(secs(1));
        // Normal: a silent node is unreachable and its pods may go.
        let v = verdict(Some("True"), silent, grace, Disruption::Normal);
        assert_eq!(
            v,
            Verdict {
                health: NodeHealth::Unreachable,
                stale: true,
                may_evict: true
            }
        );
        // Full disruption: not marked, not tainted (Ready keeps no taint), not evicted.
        let v = verdict(Some("True"), silent, grace, Disruption::Full);
        assert_eq!(
            (v.health, v.stale, v.may_evict),
            (NodeHealth::Ready, false, false)
        );
        assert!(!needs_unknown_mark(Some("True"), v.stale));
        assert_eq!(desired_taints(&[], v.health, "now"), None);
        // A node marked before the hold keeps its mark and taint, and its pods.
        let v = verdict(Some("Unknown"), silent, grace, Disruption::Full);
        assert_eq!(v.health, NodeHealth::Unconfirmed);
        assert!(!v.may_evict);
        // A lone node is marked and tainted, but its pods stay.
        let v = verdict(Some("True"), silent, grace, Disruption::LoneNode);
        assert_eq!(
            (v.health, v.stale, v.may_evict),
            (NodeHealth::Unreachable, true, false)
        );
        // An agent's own NotReady report still counts; evictions wait for a normal cluster.
        let v = verdict(Some("False"), talking, grace, Disruption::Normal);
        assert_eq!((v.health, v.may_evict), (NodeHealth::NotReady, true));
        let v = verdict(Some("False"), talking, grace, Disruption::Full);
        assert_eq!((v.health, v.may_evict), (NodeHealth::NotReady, false));
    }

    #[test]
    fn while_blind_nobody_is_judged_silent_or_evicted_but_recoveries_are_acted_on() {
        let grace = secs(10);
        let v = verdict(Some("True"), None, grace, Disruption::Normal);
        assert_eq!(
            (v.health, v.stale, v.may_evict),
            (NodeHealth::Ready, false, false)
        );
        // Marked earlier: keeps its taint, but nothing is evicted while the view is out.
        let v = verdict(Some("Unknown"), None, grace, Disruption::Normal);
        assert_eq!((v.health, v.may_evict), (NodeHealth::Unconfirmed, false));
        let v = verdict(Some("False"), None, grace, Disruption::Normal);
        assert_eq!((v.health, v.may_evict), (NodeHealth::NotReady, false));
    }

    #[test]
    fn leaving_a_full_disruption_gives_every_node_a_fresh_grace_period() {
        let start = Instant::now();
        let grace = secs(10);
        let mut v = Vantage::new(grace / 2);
        let _ = echo_every_second(&mut v, start, 0, 31, 0);
        let long_silent = start + secs(2);
        assert!(v.view(start + secs(30)).silence(long_silent).unwrap() > grace);
        v.restart(start + secs(30));
        let view = v.view(start + secs(30));
        assert_eq!(view.silence(long_silent), Some(Duration::ZERO));
        // A restart never moves the start of the view back.
        v.restart(start + secs(1));
        assert_eq!(v.view(start + secs(30)), view);
    }

    #[test]
    fn the_hold_starts_when_every_node_is_silent_and_ends_with_a_fresh_grace_period_for_all() {
        let start = Instant::now();
        let grace = secs(10);
        let mut sight = Sight {
            vantage: Vantage::new(grace / 2),
            disruption: Disruption::Normal,
            blind: true,
        };
        let at = |t: u64| start + secs(t);
        // Blind at first: nothing judged, nothing changes.
        let (view, change) = sight.look([start].into_iter(), grace, at(1));
        assert_eq!((view.silence(start), change), (None, None));
        let _ = echo_every_second(&mut sight.vantage, start, 0, 13, 0);
        // Three nodes gone silent within a few seconds of each other: two past the grace
        // period, the third past half of it (a renewal phase behind). That is "at once": held.
        let heard = [at(0), at(0), at(4)];
        let (_, change) = sight.look(heard.into_iter(), grace, at(12));
        assert_eq!(
            change,
            Some(Change::Disruption {
                from: Disruption::Normal,
                to: Disruption::Full,
                nodes: 3,
                silent: 2
            })
        );
        assert_eq!(sight.look(heard.into_iter(), grace, at(12)).1, None);
        // One is heard from again at 13 s: the hold ends, and the two still silent are not
        // marked at once but get a grace period from now.
        let _ = echo_every_second(&mut sight.vantage, start, 13, 14, 100);
        let heard = [at(0), at(0), at(13)];
        let (view, change) = sight.look(heard.into_iter(), grace, at(13));
        assert!(matches!(
            change,
            Some(Change::Disruption {
                from: Disruption::Full,
                to: Disruption::Normal,
                ..
            })
        ));
        assert_eq!(view.silence(at(0)), Some(Duration::ZERO));
        // A lone silent node is judged (LoneNode), and losing the view is reported once.
        let mut lone = Sight {
            vantage: Vantage::new(grace / 2),
            disruption: Disruption::Normal,
            blind: true,
        };
        let _ = echo_every_second(&mut lone.vantage, start, 0, 12, 0);
        let (view, change) = lone.look([at(0)].into_iter(), grace, at(11));
        assert!(view.silence(at(0)).unwrap() > grace);
        assert!(matches!(
            change,
            Some(Change::Disruption {
                to: Disruption::LoneNode,
                ..
            })
        ));
        let (_, change) = lone.look([at(0)].into_iter(), grace, at(20));
        assert_eq!(
            change,
            Some(Change::Blinded {
                last_confirmed: Some(secs(9))
            })
        );
        assert_eq!(lone.look([at(0)].into_iter(), grace, at(21)).1, None);
        // While blind the disruption state is kept, not recomputed from unknown silences.
        assert_eq!(lone.disruption, Disruption::LoneNode);
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
