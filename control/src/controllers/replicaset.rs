//! The ReplicaSet controller: keeps `spec.replicas` pods made from a ReplicaSet's template alive,
//! and reports how many exist, are ready and are available.
//!
//! Creates and deletes go out in bounded, concurrent batches, and each pass records what it
//! expects the pod informer to show next ("expectations"): until the cache has caught up with
//! those writes (or they time out) the ReplicaSet is not acted on again, so a lagging cache never
//! makes it create or delete twice.

use std::{
    cmp::Ordering,
    collections::HashSet,
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use skiff_api::{
    Kind, ObjectMeta,
    client::{ClientError, DeleteParams},
    kinds::{Condition, Pod, ReplicaSet, ReplicaSetStatus, condition},
    meta::{OwnerReference, time},
    selector::Selector,
};
use skiff_runtime::{Event, Expectations, Informer, Queue, conditions, key_of};
use tokio::task::JoinSet;

use super::{Context, podutil};

/// How long an expectation is trusted before the ReplicaSet is acted on anyway (a write whose
/// watch event never arrived must not block it forever).
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(30);

/// The condition type a failed create or delete is reported under.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

/// Why one pass over a ReplicaSet failed (it is retried with back-off).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating a pod from the template failed.
    #[error("creating a pod for ReplicaSet {key}: {source}")]
    Create {
        key: String,
        #[source]
        source: ClientError,
    },
    /// Deleting a surplus pod failed.
    #[error("deleting pod {pod} of ReplicaSet {key}: {source}")]
    Delete {
        key: String,
        pod: String,
        #[source]
        source: ClientError,
    },
    /// Writing the ReplicaSet's status failed.
    #[error("updating the status of ReplicaSet {key}: {source}")]
    Status {
        key: String,
        #[source]
        source: ClientError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Keeps every ReplicaSet's pods at its `spec.replicas`.
#[derive(Debug)]
pub struct ReplicaSetController {
    ctx: Arc<Context>,
    queue: Queue,
    expectations: Arc<Expectations>,
}

impl ReplicaSetController {
    /// Registers the informer handlers; call before the informers run.
    pub fn new(ctx: Arc<Context>) -> ReplicaSetController {
        let queue = Queue::default().with_metrics("replicaset", &ctx.queues);
        let expectations = Arc::new(Expectations::new(EXPECTATIONS_TIMEOUT));
        {
            let queue = queue.clone();
            let expectations = expectations.clone();
            ctx.informers
                .replicasets
                .on_event(move |ev: &Event<ReplicaSet>| {
                    let key = key_of(&ev.object().metadata);
                    if let Event::Deleted(_) = ev {
                        expectations.forget(&key);
                    }
                    queue.add(key);
                });
        }
        {
            let handler = PodHandler {
                replicasets: ctx.informers.replicasets.clone(),
                queue: queue.clone(),
                expectations: expectations.clone(),
            };
            ctx.informers
                .pods
                .on_event(move |ev: &Event<Pod>| handler.handle(ev));
        }
        ReplicaSetController {
            ctx,
            queue,
            expectations,
        }
    }

    /// Runs `settings.workers` workers until aborted.
    pub async fn run(self) {
        let (queue, workers) = (self.queue.clone(), self.ctx.settings.workers);
        skiff_runtime::run_workers(
            Arc::new(self),
            queue,
            workers,
            "replicaset",
            |_: &Error| false,
            |this: Arc<Self>, key: String| async move { this.sync(&key).await },
        )
        .await;
    }

    /// One level-triggered pass: claim pods, create or delete the difference, report status.
    /// Returns when to look again (a pod becoming available after `minReadySeconds`).
    async fn sync(&self, key: &str) -> Result<Option<Duration>> {
        let Some(rs) = self.ctx.informers.replicasets.get_key(key) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        let selector = match rs.spec.selector.to_selector() {
            Ok(s) if !s.is_everything() => s,
            Ok(_) => {
                tracing::warn!(replicaset = %key, "empty selector; ignoring the ReplicaSet");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(replicaset = %key, error = %e, "invalid selector; ignoring the ReplicaSet");
                return Ok(None);
            }
        };
        let satisfied = self.expectations.satisfied(key, Instant::now());
        let mut active = self.claim_pods(&rs, &selector).await;
        active.retain(|p| podutil::is_active(p));

        let mut outcome = Outcome::default();
        let mut failure = None;
        if satisfied && rs.metadata.deletion_timestamp.is_none() {
            let (o, e) = self.manage(key, &rs, &active).await;
            outcome = o;
            failure = e;
        } else if !satisfied {
            // The status waits too: counted from a cache that has not seen the last pass's
            // writes, it would go backwards and forwards. Events bring the ReplicaSet back; a
            // timer, in case the last of them never comes (a create whose pod was gone again
            // before a relist).
            tracing::debug!(replicaset = %key, "waiting for earlier creates and deletes to be observed");
            return Ok(self.expectations.expiry_timer(key, Instant::now()));
        }

        let now = SystemTime::now();
        let mut pods: Vec<&Pod> = active
            .iter()
            .map(|p| &**p)
            .filter(|p| !outcome.deleted.contains(&key_of(&p.metadata)))
            .collect();
        pods.extend(outcome.created.iter());
        let mut status = compute_status(&rs, &pods, now);
        let want = replicas_of(&rs);
        status.conditions = failure_conditions(
            &rs.status.conditions,
            failure
                .as_ref()
                .map(|e| (active.len() < want, e.to_string())),
            now,
        );
        if status != rs.status {
            let mut updated = (*rs).clone();
            updated.status = status;
            match self.ctx.client.update_status(&updated).await {
                Ok(_) => {}
                // A newer ReplicaSet is on its way to the cache; its event brings it back here.
                Err(e) if e.is_conflict() || e.is_not_found() => {}
                Err(source) => {
                    return Err(failure.unwrap_or(Error::Status {
                        key: key.to_owned(),
                        source,
                    }));
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let min_ready = rs.spec.min_ready_seconds;
        Ok(if min_ready > 0 {
            pods.iter()
                .filter_map(|p| podutil::available_in(p, min_ready, now))
                .min()
                .map(|d| d + Duration::from_millis(10))
        } else {
            None
        })
    }

    /// The ReplicaSet's pods: those it controls whose labels still match (adopting matching
    /// orphans, releasing controlled pods that no longer match).
    async fn claim_pods(&self, rs: &ReplicaSet, selector: &Selector) -> Vec<Arc<Pod>> {
        let ns = &rs.metadata.namespace;
        let uid = &rs.metadata.uid;
        let candidates = self.ctx.informers.pods.filter(|p| {
            p.metadata.namespace == *ns
                && match p.metadata.controller_ref() {
                    Some(r) => r.uid == *uid,
                    None => selector.matches(&p.metadata.labels),
                }
        });
        let mut owned = Vec::with_capacity(candidates.len());
        for pod in candidates {
            let controlled = controlled_by(&pod.metadata, uid);
            let matches = selector.matches(&pod.metadata.labels);
            match (controlled, matches) {
                (true, true) => owned.push(pod),
                (true, false) => self.release(rs, &pod).await,
                (false, _) => {
                    if rs.metadata.deletion_timestamp.is_none()
                        && podutil::is_active(&pod)
                        && let Some(adopted) = self.adopt(rs, &pod).await
                    {
                        owned.push(Arc::new(adopted));
                    }
                }
            }
        }
        owned
    }

    async fn adopt(&self, rs: &ReplicaSet, pod: &Pod) -> Option<Pod> {
        let mut p = pod.clone();
        p.metadata.owner_references.push(owner_reference(rs));
        match self.ctx.client.update(&p).await {
            Ok(p) => {
                tracing::info!(replicaset = %key_of(&rs.metadata), pod = %p.metadata.name, "adopted an orphan pod");
                Some(p)
            }
            Err(e) => {
                tracing::debug!(pod = %p.metadata.name, error = %e, "adopting failed; trying again later");
                None
            }
        }
    }

    async fn release(&self, rs: &ReplicaSet, pod: &Pod) {
        let mut p = pod.clone();
        p.metadata
            .owner_references
            .retain(|r| r.uid != rs.metadata.uid);
        match self.ctx.client.update(&p).await {
            Ok(_) => {
                tracing::info!(replicaset = %key_of(&rs.metadata), pod = %p.metadata.name, "released a pod whose labels no longer match");
            }
            Err(e) => {
                tracing::debug!(pod = %p.metadata.name, error = %e, "releasing failed; trying again later");
            }
        }
    }

    /// Creates or deletes (at most `burst`) pods towards `spec.replicas`.
    async fn manage(
        &self,
        key: &str,
        rs: &ReplicaSet,
        active: &[Arc<Pod>],
    ) -> (Outcome, Option<Error>) {
        let want = replicas_of(rs);
        let burst = self.ctx.settings.burst.max(1);
        let mut outcome = Outcome::default();
        if active.len() < want {
            let n = (want - active.len()).min(burst);
            self.expectations.expect_creations(key, n, Instant::now());
            let pod = Arc::new(pod_from_template(rs));
            let client = self.ctx.client.clone();
            let (created, err) = slow_start_batch(n, 1, || {
                let (client, pod) = (client.clone(), pod.clone());
                async move { client.create(&*pod).await }
            })
            .await;
            // Creates that failed or never went out will not be observed.
            self.expectations.lower_creations(key, n - created.len());
            tracing::debug!(replicaset = %key, wanted = n, created = created.len(), "created pods");
            outcome.created = created;
            let err = err.map(|source| Error::Create {
                key: key.to_owned(),
                source,
            });
            return (outcome, err);
        }
        if active.len() > want {
            let n = (active.len() - want).min(burst);
            let victims = pods_to_delete(active, n);
            self.expectations.expect_deletions(
                key,
                victims.iter().map(|p| key_of(&p.metadata)),
                Instant::now(),
            );
            let mut set = JoinSet::new();
            for pod in victims {
                let client = self.ctx.client.clone();
                set.spawn(async move {
                    let params = DeleteParams {
                        precondition_uid: pod.metadata.uid.clone(),
                        ..DeleteParams::default()
                    };
                    let r = client
                        .delete(
                            Pod::INFO,
                            &pod.metadata.namespace,
                            &pod.metadata.name,
                            params,
                        )
                        .await;
                    (key_of(&pod.metadata), r)
                });
            }
            let mut first_err = None;
            while let Some(joined) = set.join_next().await {
                let Ok((pod_key, r)) = joined else { continue };
                match r {
                    Ok(_) => {
                        outcome.deleted.insert(pod_key);
                    }
                    Err(e) => {
                        // Not to be observed: either gone already or never deleted.
                        self.expectations.deletion_observed(key, &pod_key);
                        if e.is_not_found() {
                            outcome.deleted.insert(pod_key);
                        } else if first_err.is_none() {
                            first_err = Some(Error::Delete {
                                key: key.to_owned(),
                                pod: pod_key,
                                source: e,
                            });
                        }
                    }
                }
            }
            tracing::debug!(replicaset = %key, deleted = outcome.deleted.len(), "deleted pods");
            return (outcome, first_err);
        }
        (outcome, None)
    }
}

/// What one pass wrote: the pods it created (as stored) and the keys of those it deleted.
#[derive(Debug, Default)]
struct Outcome {
    created: Vec<Pod>,
    deleted: HashSet<String>,
}

/// Maps pod events to the ReplicaSets that control them, and counts them against expectations.
struct PodHandler {
    replicasets: Informer<ReplicaSet>,
    queue: Queue,
    expectations: Arc<Expectations>,
}

impl PodHandler {
    /// The key of the ReplicaSet that controls `pod` (if it is in the cache with the same uid).
    fn controller_of(&self, meta: &ObjectMeta) -> Option<String> {
        let r = meta.controller_ref()?;
        if r.kind != "ReplicaSet" {
            return None;
        }
        let rs = self.replicasets.get(&meta.namespace, &r.name)?;
        (rs.metadata.uid == r.uid).then(|| key_of(&rs.metadata))
    }

    /// Every ReplicaSet in the pod's namespace whose selector matches it (for adoption).
    fn enqueue_matching(&self, pod: &Pod) {
        let ns = &pod.metadata.namespace;
        for rs in self.replicasets.filter(|rs| {
            rs.metadata.namespace == *ns
                && !rs.spec.selector.is_empty()
                && rs.spec.selector.matches(&pod.metadata.labels)
        }) {
            self.queue.add(key_of(&rs.metadata));
        }
    }

    fn deleted(&self, pod: &Pod) {
        if let Some(key) = self.controller_of(&pod.metadata) {
            self.expectations
                .deletion_observed(&key, &key_of(&pod.metadata));
            self.queue.add(key);
        }
    }

    fn handle(&self, ev: &Event<Pod>) {
        match ev {
            Event::Added(pod) => {
                if pod.metadata.deletion_timestamp.is_some() {
                    // Seen for the first time already terminating (after a relist).
                    return self.deleted(pod);
                }
                if let Some(key) = self.controller_of(&pod.metadata) {
                    self.expectations.creation_observed(&key);
                    self.queue.add(key);
                } else if pod.metadata.controller_ref().is_none() {
                    self.enqueue_matching(pod);
                }
            }
            Event::Updated { old, new } => {
                if old.metadata.resource_version == new.metadata.resource_version {
                    return;
                }
                let labels_changed = old.metadata.labels != new.metadata.labels;
                let (old_ref, new_ref) =
                    (old.metadata.controller_ref(), new.metadata.controller_ref());
                if old_ref != new_ref
                    && let Some(key) = self.controller_of(&old.metadata)
                {
                    self.queue.add(key);
                }
                if new.metadata.deletion_timestamp.is_some()
                    && old.metadata.deletion_timestamp.is_none()
                {
                    // A graceful deletion counts as the deletion: the pod no longer counts.
                    return self.deleted(new);
                }
                if let Some(key) = self.controller_of(&new.metadata) {
                    self.queue.add(key);
                } else if new_ref.is_none() && (labels_changed || old_ref.is_some()) {
                    self.enqueue_matching(new);
                }
            }
            Event::Deleted(pod) => self.deleted(pod),
        }
    }
}

/// `spec.replicas` (default 1), never negative.
fn replicas_of(rs: &ReplicaSet) -> usize {
    usize::try_from(rs.spec.replicas.unwrap_or(1)).unwrap_or(0)
}

fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.controller_ref().is_some_and(|r| r.uid == uid)
}

/// The controller reference a ReplicaSet puts on its pods.
pub fn owner_reference(rs: &ReplicaSet) -> OwnerReference {
    OwnerReference {
        api_version: ReplicaSet::INFO.api_version.to_owned(),
        kind: ReplicaSet::INFO.kind.to_owned(),
        name: rs.metadata.name.clone(),
        uid: rs.metadata.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A new pod from the ReplicaSet's template, named by the server after the ReplicaSet.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let t = &rs.spec.template;
    Pod {
        metadata: ObjectMeta {
            generate_name: format!("{}-", rs.metadata.name),
            namespace: rs.metadata.namespace.clone(),
            labels: t.metadata.labels.clone(),
            annotations: t.metadata.annotations.clone(),
            owner_references: vec![owner_reference(rs)],
            ..ObjectMeta::default()
        },
        spec: t.spec.clone(),
        status: Default::default(),
    }
}

/// The status of a ReplicaSet whose active pods are `pods` (conditions are kept as they are).
pub fn compute_status(rs: &ReplicaSet, pods: &[&Pod], now: SystemTime) -> ReplicaSetStatus {
    let template_labels = &rs.spec.template.metadata.labels;
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(pods.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: count(&|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.metadata.labels.get(k) == Some(v))
        }),
        ready_replicas: count(&|p| p.is_ready()),
        available_replicas: count(&|p| podutil::is_available(p, rs.spec.min_ready_seconds, now)),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.conditions.clone(),
    }
}

/// The conditions after a pass: a `ReplicaFailure` when creating (`short` of replicas) or
/// deleting failed with `message`, none once a pass went through.
pub fn failure_conditions(
    current: &[Condition],
    failure: Option<(bool, String)>,
    now: SystemTime,
) -> Vec<Condition> {
    let mut conds = current.to_vec();
    match failure {
        // Kubernetes keeps the first failure's condition until a pass goes through.
        Some((short, message)) if condition(current, REPLICA_FAILURE).is_none() => {
            let reason = if short {
                "FailedCreate"
            } else {
                "FailedDelete"
            };
            conditions::set(
                &mut conds,
                REPLICA_FAILURE,
                "True",
                reason,
                &message,
                &time::format(now),
            );
        }
        Some(_) => {}
        None => {
            conditions::remove(&mut conds, REPLICA_FAILURE);
        }
    }
    conds
}

/// Runs `count` calls of `f`, first 1 (`initial`) at once, then twice as many each round, and
/// stops after the first round with a failure: a template every create fails with costs one
/// call, not `count`. Returns the successes and the first error.
pub async fn slow_start_batch<T, E, F, Fut>(
    count: usize,
    initial: usize,
    f: F,
) -> (Vec<T>, Option<E>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let mut done = Vec::with_capacity(count);
    let mut remaining = count;
    let mut size = initial.max(1).min(remaining);
    while size > 0 {
        let mut set = JoinSet::new();
        for _ in 0..size {
            set.spawn(f());
        }
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok(v)) => done.push(v),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(join) => tracing::error!(error = %join, "a create task failed"),
            }
        }
        if first_err.is_some() {
            return (done, first_err);
        }
        remaining -= size;
        size = (size * 2).min(remaining);
    }
    (done, None)
}

/// What ranks a pod for deletion: smaller keys go first.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct DeletionRank {
    scheduled: bool,
    /// Pending 0, Unknown 1, Running 2 (others as Pending).
    phase: u8,
    ready: bool,
    /// Ready for a shorter time first: the negated ready time, so later readiness sorts first.
    ready_since: std::cmp::Reverse<Option<SystemTime>>,
    /// More restarts first.
    restarts: std::cmp::Reverse<i32>,
    /// Newer first.
    created: std::cmp::Reverse<Option<SystemTime>>,
}

fn deletion_rank(p: &Pod) -> DeletionRank {
    let ready = p.is_ready();
    let ready_since = if ready {
        condition(&p.status.conditions, "Ready")
            .and_then(|c| c.last_transition_time.as_deref())
            .and_then(time::parse)
    } else {
        None
    };
    DeletionRank {
        scheduled: !p.spec.node_name.is_empty(),
        phase: match p.status.phase.as_str() {
            "Unknown" => 1,
            "Running" => 2,
            _ => 0,
        },
        ready,
        ready_since: std::cmp::Reverse(ready_since),
        restarts: std::cmp::Reverse(
            p.status
                .container_statuses
                .iter()
                .map(|c| c.restart_count)
                .max()
                .unwrap_or(0),
        ),
        created: std::cmp::Reverse(
            p.metadata
                .creation_timestamp
                .as_deref()
                .and_then(time::parse),
        ),
    }
}

/// Orders pods the way a ReplicaSet deletes them: unscheduled before scheduled, Pending and
/// Unknown before Running, not ready before ready, ready for a shorter time before longer, more
/// restarts before fewer, newer before older (then by name, for a stable order).
pub fn compare_for_deletion(a: &Pod, b: &Pod) -> Ordering {
    deletion_rank(a)
        .cmp(&deletion_rank(b))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// The `n` pods to delete first.
pub fn pods_to_delete(pods: &[Arc<Pod>], n: usize) -> Vec<Arc<Pod>> {
    let mut ranked: Vec<(DeletionRank, &Arc<Pod>)> =
        pods.iter().map(|p| (deletion_rank(p), p)).collect();
    ranked.sort_by(|(ra, a), (rb, b)| {
        ra.cmp(rb)
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    ranked.into_iter().take(n).map(|(_, p)| p.clone()).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

    use skiff_api::kinds::ContainerStatus;

    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[derive(Clone)]
    struct P {
        name: &'static str,
        node: bool,
        phase: &'static str,
        ready_at: Option<u64>,
        restarts: i32,
        created: u64,
    }

    fn pod(p: &P) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = p.name.into();
        pod.metadata.creation_timestamp = Some(time::format(t(p.created)));
        if p.node {
            pod.spec.node_name = "n1".into();
        }
        pod.status.phase = p.phase.into();
        if let Some(at) = p.ready_at {
            pod.status.conditions.push(Condition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(time::format(t(at))),
                ..Condition::default()
            });
        }
        pod.status.container_statuses.push(ContainerStatus {
            name: "c".into(),
            restart_count: p.restarts,
            ..ContainerStatus::default()
        });
        pod
    }

    const BASE: P = P {
        name: "",
        node: true,
        phase: "Running",
        ready_at: Some(100),
        restarts: 0,
        created: 10,
    };

    #[test]
    fn deletion_prefers_unscheduled_pending_unready_recent_restarting_new_pods() {
        // Each pod differs from the next one only in the criterion that ranks it earlier, and
        // they are listed from last-to-delete to first.
        let pods = [
            P {
                name: "old-ready-long",
                created: 1,
                ..BASE
            },
            P {
                name: "newer",
                created: 5,
                ready_at: Some(100),
                ..BASE
            },
            P {
                name: "restarting",
                restarts: 3,
                created: 5,
                ..BASE
            },
            P {
                name: "ready-recently",
                ready_at: Some(200),
                restarts: 0,
                created: 1,
                ..BASE
            },
            P {
                name: "not-ready",
                ready_at: None,
                ..BASE
            },
            P {
                name: "unknown",
                phase: "Unknown",
                ready_at: None,
                ..BASE
            },
            P {
                name: "pending",
                phase: "Pending",
                ready_at: None,
                ..BASE
            },
            P {
                name: "unscheduled",
                node: false,
                phase: "Running",
                ..BASE
            },
        ];
        let arcs: Vec<Arc<Pod>> = pods.iter().map(|p| Arc::new(pod(p))).collect();
        let order: Vec<String> = pods_to_delete(&arcs, arcs.len())
            .iter()
            .map(|p| p.metadata.name.clone())
            .collect();
        let mut want: Vec<&str> = pods.iter().map(|p| p.name).collect();
        want.reverse();
        assert_eq!(order, want);
        // Only as many as asked for, the first-ranked ones.
        let two = pods_to_delete(&arcs, 2);
        assert_eq!(two[0].metadata.name, "unscheduled");
        assert_eq!(two[1].metadata.name, "pending");
        assert_eq!(
            compare_for_deletion(&arcs[0], &arcs[1]),
            Ordering::Greater,
            "the older of two otherwise equal pods stays"
        );
    }

    #[test]
    fn status_counts_ready_available_and_fully_labeled_pods() {
        let mut rs = ReplicaSet::default();
        rs.metadata.generation = 4;
        rs.spec.min_ready_seconds = 30;
        rs.spec
            .template
            .metadata
            .labels
            .insert("app".into(), "web".into());
        let now = t(1000);
        let mut long = pod(&P {
            ready_at: Some(0),
            ..BASE
        });
        long.metadata.labels.insert("app".into(), "web".into());
        let recent = pod(&P {
            ready_at: Some(990),
            ..BASE
        });
        let unready = pod(&P {
            ready_at: None,
            ..BASE
        });
        let s = compute_status(&rs, &[&long, &recent, &unready], now);
        assert_eq!(s.replicas, 3);
        assert_eq!(s.fully_labeled_replicas, 1);
        assert_eq!(s.ready_replicas, 2);
        assert_eq!(s.available_replicas, 1);
        assert_eq!(s.observed_generation, 4);
    }

    #[test]
    fn a_failure_sets_replica_failure_once_and_success_clears_it() {
        let now = t(0);
        let conds = failure_conditions(&[], Some((true, "quota".into())), now);
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].reason, "FailedCreate");
        assert_eq!(conds[0].message, "quota");
        let again = failure_conditions(&conds, Some((false, "other".into())), t(5));
        assert_eq!(again, conds, "an existing failure is kept as it was");
        assert!(failure_conditions(&conds, None, now).is_empty());
    }

    #[test]
    fn pods_from_the_template_are_owned_and_named_after_the_replica_set() {
        let mut rs = ReplicaSet::default();
        rs.metadata.name = "web-abc".into();
        rs.metadata.namespace = "team".into();
        rs.metadata.uid = "u1".into();
        rs.spec
            .template
            .metadata
            .labels
            .insert("app".into(), "web".into());
        rs.spec
            .template
            .metadata
            .annotations
            .insert("note".into(), "x".into());
        let p = pod_from_template(&rs);
        assert_eq!(p.metadata.generate_name, "web-abc-");
        assert!(p.metadata.name.is_empty());
        assert_eq!(p.metadata.namespace, "team");
        assert_eq!(
            p.metadata.labels.get("app").map(String::as_str),
            Some("web")
        );
        assert_eq!(
            p.metadata.annotations.get("note").map(String::as_str),
            Some("x")
        );
        let r = p.metadata.controller_ref().unwrap();
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str(), r.uid.as_str()),
            ("apps/v1", "ReplicaSet", "u1")
        );
        assert_eq!(r.block_owner_deletion, Some(true));
    }

    #[tokio::test]
    async fn slow_start_doubles_batches_and_stops_at_the_first_failing_batch() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (ok, err) = slow_start_batch(10, 1, || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, AtomicOrdering::SeqCst);
                Ok::<_, ()>(())
            }
        })
        .await;
        assert_eq!((ok.len(), err), (10, None));
        assert_eq!(calls.load(AtomicOrdering::SeqCst), 10);

        // Call 5 fails: batches 1, 2 succeed (3 calls), the batch of 4 holds the failure, and
        // nothing is sent after it.
        let calls = Arc::new(AtomicUsize::new(0));
        let (ok, err) = slow_start_batch(100, 1, || {
            let n = calls.fetch_add(1, AtomicOrdering::SeqCst);
            async move { if n == 4 { Err("boom") } else { Ok(n) } }
        })
        .await;
        assert_eq!(err, Some("boom"));
        assert_eq!(ok.len(), 6);
        assert_eq!(calls.load(AtomicOrdering::SeqCst), 7);

        let (ok, err) = slow_start_batch(0, 1, || async { Ok::<u8, ()>(1) }).await;
        assert!(ok.is_empty() && err.is_none());
    }
}
