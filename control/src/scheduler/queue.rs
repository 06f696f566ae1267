//! The scheduling queue: pods waiting for a node. New pods go to the active queue in arrival
//! order; a pod that fits nowhere waits in the unschedulable set until something in the cluster
//! changes that might let it fit, and then comes back once its own back-off (1 s doubling to
//! 60 s per failed attempt) has passed, so an unschedulable pod is never retried in a tight loop.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use skiff_api::kinds::Pod;
use tokio::time::Instant;

use super::cache::PodInfo;

/// Where a pending pod is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// In the active queue.
    Active,
    /// Waiting for its back-off to pass.
    Backoff,
    /// Fit nowhere; waits for a change in the cluster.
    Unschedulable { since: Instant },
    /// Assumed on a node while its binding is written and until the informer shows it bound.
    Binding,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) info: PodInfo,
    pub(super) state: State,
    /// Failed attempts in a row.
    pub(super) attempts: u32,
    pub(super) backoff_until: Instant,
    /// The unschedulable message last written to (or seen in) the pod's status.
    pub(super) message: Option<String>,
    /// Tells this entry's current place in the active queue or back-off heap from stale ones.
    ticket: u64,
}

/// Back-off bounds for pods that failed to schedule.
#[derive(Debug, Clone, Copy)]
pub(super) struct BackoffPolicy {
    pub(super) initial: Duration,
    pub(super) max: Duration,
}

impl BackoffPolicy {
    /// After `attempts` failures in a row.
    pub(super) fn delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// Pending pods by key (`namespace/name`).
#[derive(Debug)]
pub(super) struct SchedulingQueue {
    pods: HashMap<String, Entry>,
    active: VecDeque<(String, u64)>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    unschedulable: HashSet<String>,
    policy: BackoffPolicy,
    tickets: u64,
}

impl SchedulingQueue {
    pub(super) fn new(policy: BackoffPolicy) -> SchedulingQueue {
        SchedulingQueue {
            pods: HashMap::new(),
            active: VecDeque::new(),
            backoff: BinaryHeap::new(),
            unschedulable: HashSet::new(),
            policy,
            tickets: 0,
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&Entry> {
        self.pods.get(key)
    }

    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut Entry> {
        self.pods.get_mut(key)
    }

    pub(super) fn len(&self) -> usize {
        self.pods.len()
    }

    pub(super) fn active_len(&self) -> usize {
        self.active.len()
    }

    pub(super) fn unschedulable_len(&self) -> usize {
        self.unschedulable.len()
    }

    /// Pending pods by where they wait (pods being bound are no longer pending).
    pub(super) fn pending(&self) -> super::metrics::Pending {
        let mut p = super::metrics::Pending::default();
        for e in self.pods.values() {
            match e.state {
                State::Active => p.active += 1,
                State::Backoff => p.backoff += 1,
                State::Unschedulable { .. } => p.unschedulable += 1,
                State::Binding => {}
            }
        }
        p
    }

    fn ticket(&mut self) -> u64 {
        self.tickets += 1;
        self.tickets
    }

    fn push_active(&mut self, key: &str) {
        let t = self.ticket();
        if let Some(e) = self.pods.get_mut(key) {
            e.state = State::Active;
            e.ticket = t;
            self.active.push_back((key.to_owned(), t));
        }
    }

    fn push_backoff(&mut self, key: &str) {
        let t = self.ticket();
        if let Some(e) = self.pods.get_mut(key) {
            e.state = State::Backoff;
            e.ticket = t;
            self.backoff
                .push(Reverse((e.backoff_until, t, key.to_owned())));
        }
    }

    /// Active if its back-off has passed, else back-off.
    fn reactivate(&mut self, key: &str, now: Instant) {
        self.unschedulable.remove(key);
        match self.pods.get(key) {
            Some(e) if e.backoff_until <= now => self.push_active(key),
            Some(_) => self.push_backoff(key),
            None => {}
        }
    }

    /// Adds a pending pod, or takes the informer's newer copy of one already here. A new pod
    /// (or a new pod under an old name) goes to the back of the active queue; a pod whose spec
    /// changed while it was unschedulable (a toleration added) is tried again.
    pub(super) fn upsert(&mut self, key: &str, pod: Arc<Pod>, now: Instant) {
        if let Some(e) = self.pods.get_mut(key)
            && e.info.pod.metadata.uid == pod.metadata.uid
        {
            let spec_changed = e.info.pod.spec != pod.spec;
            if spec_changed {
                e.info = PodInfo::new(pod);
            } else {
                e.info.pod = pod;
            }
            if spec_changed && matches!(e.state, State::Unschedulable { .. }) {
                self.reactivate(key, now);
            }
            return;
        }
        self.remove(key);
        self.pods.insert(
            key.to_owned(),
            Entry {
                info: PodInfo::new(pod),
                state: State::Active,
                attempts: 0,
                backoff_until: now,
                message: None,
                ticket: 0,
            },
        );
        self.push_active(key);
    }

    /// The pod was bound, deleted or finished: it no longer waits.
    pub(super) fn remove(&mut self, key: &str) -> Option<Entry> {
        self.unschedulable.remove(key);
        // Its places in the active queue and back-off heap go stale and are skipped.
        self.pods.remove(key)
    }

    /// The next pod to schedule, oldest first.
    pub(super) fn pop(&mut self) -> Option<String> {
        while let Some((key, ticket)) = self.active.pop_front() {
            if let Some(e) = self.pods.get(&key)
                && e.state == State::Active
                && e.ticket == ticket
            {
                return Some(key);
            }
        }
        None
    }

    /// The pod was assumed on a node; it waits here until the informer shows it bound.
    pub(super) fn binding(&mut self, key: &str) {
        if let Some(e) = self.pods.get_mut(key) {
            e.state = State::Binding;
        }
    }

    fn fail(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        let delay = self.policy;
        let e = self.pods.get_mut(key)?;
        e.attempts = e.attempts.saturating_add(1);
        e.backoff_until = now + delay.delay(e.attempts);
        Some(e)
    }

    /// The pod fits nowhere: it waits for a cluster change.
    pub(super) fn unschedulable(&mut self, key: &str, now: Instant) {
        if let Some(e) = self.fail(key, now) {
            e.state = State::Unschedulable { since: now };
            self.unschedulable.insert(key.to_owned());
        }
    }

    /// Its binding failed: it is tried again after its back-off.
    pub(super) fn retry(&mut self, key: &str, now: Instant) {
        if self.fail(key, now).is_some() {
            self.push_backoff(key);
        }
    }

    /// Its assumption lapsed without the informer showing it bound: try again now (a second
    /// binding of a pod that did get bound fails on its resourceVersion, harmlessly).
    pub(super) fn binding_lapsed(&mut self, key: &str) {
        if self
            .pods
            .get(key)
            .is_some_and(|e| e.state == State::Binding)
        {
            self.push_active(key);
        }
    }

    /// Something changed that may let unschedulable pods fit: each goes back to the active
    /// queue, or to back-off until its back-off has passed.
    pub(super) fn move_all_unschedulable(&mut self, now: Instant) {
        let keys: Vec<String> = self.unschedulable.drain().collect();
        for k in keys {
            self.reactivate(&k, now);
        }
    }

    /// Pods unschedulable for longer than `max` are tried again even if nothing was seen to
    /// change, in case a change was missed.
    pub(super) fn flush_unschedulable(&mut self, now: Instant, max: Duration) {
        let stale: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|k| {
                self.pods.get(k.as_str()).is_none_or(
                    |e| matches!(e.state, State::Unschedulable { since } if since + max <= now),
                )
            })
            .cloned()
            .collect();
        for k in stale {
            self.reactivate(&k, now);
        }
    }

    /// Moves pods whose back-off has passed to the active queue.
    pub(super) fn flush_backoff(&mut self, now: Instant) {
        while let Some(Reverse((at, ticket, _))) = self.backoff.peek() {
            if *at > now {
                break;
            }
            let ticket = *ticket;
            let Some(Reverse((_, _, key))) = self.backoff.pop() else {
                break;
            };
            if self
                .pods
                .get(&key)
                .is_some_and(|e| e.state == State::Backoff && e.ticket == ticket)
            {
                self.push_active(&key);
            }
        }
    }

    /// When the earliest back-off ends, if any pod is backing off.
    pub(super) fn next_backoff(&self) -> Option<Instant> {
        self.backoff.peek().map(|Reverse((at, _, _))| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::cache::tests::pod;

    fn queue() -> SchedulingQueue {
        SchedulingQueue::new(BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        })
    }

    fn add(q: &mut SchedulingQueue, name: &str, now: Instant) {
        q.upsert(&format!("ns/{name}"), Arc::new(pod(name, "", "")), now);
    }

    #[test]
    fn back_off_doubles_from_one_second_to_a_minute() {
        let p = BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let secs: Vec<u64> = (1..=8).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.delay(u32::MAX).as_secs(), 60);
    }

    #[test]
    fn pods_come_out_in_arrival_order_once_each() {
        let now = Instant::now();
        let mut q = queue();
        for n in ["a", "b", "c"] {
            add(&mut q, n, now);
        }
        // A status update of a waiting pod does not queue it twice.
        add(&mut q, "a", now);
        assert_eq!(q.pop().as_deref(), Some("ns/a"));
        q.binding("ns/a");
        assert_eq!(q.pop().as_deref(), Some("ns/b"));
        assert_eq!(q.pop().as_deref(), Some("ns/c"));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn a_deleted_pod_leaves_the_queue() {
        let now = Instant::now();
        let mut q = queue();
        add(&mut q, "a", now);
        add(&mut q, "b", now);
        q.remove("ns/a");
        assert_eq!(q.pop().as_deref(), Some("ns/b"));
        assert_eq!(q.pop(), None);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn an_unschedulable_pod_waits_for_a_change_and_then_for_its_back_off() {
        let t0 = Instant::now();
        let mut q = queue();
        add(&mut q, "a", t0);
        let k = q.pop().unwrap();
        q.unschedulable(&k, t0);
        // Nothing changed: it stays put, however long (until the flush interval).
        q.flush_backoff(t0 + Duration::from_secs(10));
        assert_eq!(q.pop(), None);
        // A change before its back-off ends: it waits out the back-off first.
        q.move_all_unschedulable(t0 + Duration::from_millis(500));
        assert_eq!(q.pop(), None);
        assert_eq!(q.next_backoff(), Some(t0 + Duration::from_secs(1)));
        q.flush_backoff(t0 + Duration::from_millis(999));
        assert_eq!(q.pop(), None);
        q.flush_backoff(t0 + Duration::from_secs(1));
        assert_eq!(q.pop().as_deref(), Some("ns/a"));
        // Second failure: two seconds; a change after that sends it straight back.
        let t1 = t0 + Duration::from_secs(1);
        q.unschedulable(&k, t1);
        q.move_all_unschedulable(t1 + Duration::from_secs(2));
        assert_eq!(q.pop().as_deref(), Some("ns/a"));
        assert_eq!(q.get(&k).unwrap().attempts, 2);
    }

    #[test]
    fn long_unschedulable_pods_are_flushed_back() {
        let t0 = Instant::now();
        let mut q = queue();
        add(&mut q, "a", t0);
        let k = q.pop().unwrap();
        q.unschedulable(&k, t0);
        let max = Duration::from_secs(300);
        q.flush_unschedulable(t0 + Duration::from_secs(299), max);
        assert_eq!(q.unschedulable_len(), 1);
        q.flush_unschedulable(t0 + max, max);
        assert_eq!(q.unschedulable_len(), 0);
        assert_eq!(q.pop().as_deref(), Some("ns/a"));
    }

    #[test]
    fn a_spec_change_retries_an_unschedulable_pod_but_a_status_change_does_not() {
        let t0 = Instant::now();
        let mut q = queue();
        add(&mut q, "a", t0);
        let k = q.pop().unwrap();
        q.unschedulable(&k, t0);
        let mut p = pod("a", "", "");
        p.status.conditions.push(Default::default());
        q.upsert(&k, Arc::new(p.clone()), t0 + Duration::from_secs(5));
        assert_eq!(q.pop(), None);
        p.spec.tolerations.push(Default::default());
        q.upsert(&k, Arc::new(p), t0 + Duration::from_secs(5));
        assert_eq!(q.pop().as_deref(), Some("ns/a"));
        assert_eq!(q.get(&k).unwrap().info.pod.spec.tolerations.len(), 1);
    }

    #[test]
    fn a_failed_binding_backs_off_and_a_lapsed_one_retries_at_once() {
        let t0 = Instant::now();
        let mut q = queue();
        add(&mut q, "a", t0);
        let k = q.pop().unwrap();
        q.binding(&k);
        q.retry(&k, t0);
        assert_eq!(q.pop(), None);
        q.flush_backoff(t0 + Duration::from_secs(1));
        assert_eq!(q.pop().as_deref(), Some("ns/a"));
        q.binding(&k);
        q.binding_lapsed(&k);
        assert_eq!(q.pop().as_deref(), Some("ns/a"));
        // Only a pod still binding is retried.
        q.binding_lapsed(&k);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn a_pod_recreated_under_the_same_name_starts_afresh() {
        let t0 = Instant::now();
        let mut q = queue();
        add(&mut q, "a", t0);
        let k = q.pop().unwrap();
        q.unschedulable(&k, t0);
        let mut again = pod("a", "", "");
        again.metadata.uid = "new".into();
        q.upsert(&k, Arc::new(again), t0);
        assert_eq!(q.unschedulable_len(), 0);
        assert_eq!(q.pop().as_deref(), Some("ns/a"));
        assert_eq!(q.get(&k).unwrap().attempts, 0);
    }
}
