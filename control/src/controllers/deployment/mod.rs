//! The Deployment controller: rolls a Deployment's pod template out through ReplicaSets named
//! `<deployment>-<template hash>`, RollingUpdate (within maxSurge and maxUnavailable) or Recreate,
//! scales them proportionally when the Deployment is scaled mid-rollout, keeps
//! `revisionHistoryLimit` old ones for rollbacks, and reports progress in the status.
//!
//! It acts only on fresh state: not before the caches show this controller's own last writes,
//! and not while a ReplicaSet's status is older than its spec (`observedGeneration`), so a step
//! is never computed from counts the previous step has already changed.

pub mod rolling;
pub mod util;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use skiff_api::{
    Kind, ObjectMeta,
    client::{ClientError, DeleteParams},
    kinds::{Deployment, DeploymentStatus, Pod, ReplicaSet, ReplicaSetSpec, condition},
    meta::OwnerReference,
    selector::Selector,
};
use skiff_runtime::{Event, Informer, Queue, conditions, key_of};

use self::{
    rolling::{Counts, Scalable},
    util::{
        HistoryEntry, POD_TEMPLATE_HASH, PROGRESSING, REPLICA_FAILURE, deployment_complete,
        equal_ignore_hash, fenceposts, is_recreate, new_condition, reason, replicas, revision,
        rs_replicas, set_replicas_annotations,
    },
};
use super::Context;

/// How long this controller waits for the caches to show its own writes before acting anyway.
pub const WRITES_TIMEOUT: Duration = Duration::from_secs(30);

/// Why one pass over a Deployment failed (it is retried with back-off).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating, updating or deleting one of its ReplicaSets failed.
    #[error("{action} ReplicaSet {name}: {source}")]
    ReplicaSet {
        action: &'static str,
        name: String,
        #[source]
        source: ClientError,
    },
    /// Writing the Deployment's status failed.
    #[error("updating the status of Deployment {key}: {source}")]
    Status {
        key: String,
        #[source]
        source: ClientError,
    },
    /// The new ReplicaSet's name is taken by a ReplicaSet of another template.
    #[error(
        "ReplicaSet {name} exists with another template; collision count raised to {count}, a new name follows"
    )]
    HashCollision { name: String, count: i32 },
}

impl Error {
    /// A compare-and-swap lost to a newer version, whose event brings the Deployment back.
    pub fn is_conflict(&self) -> bool {
        match self {
            Error::ReplicaSet { source, .. } | Error::Status { source, .. } => source.is_conflict(),
            Error::HashCollision { .. } => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Rolls out every Deployment.
#[derive(Debug)]
pub struct DeploymentController {
    ctx: Arc<Context>,
    queue: Queue,
    pending: Arc<Pending>,
}

impl DeploymentController {
    /// Registers the informer handlers; call before the informers run.
    pub fn new(ctx: Arc<Context>) -> DeploymentController {
        let queue = Queue::default().with_metrics("deployment", &ctx.queues);
        let pending = Arc::new(Pending::new(WRITES_TIMEOUT));
        {
            let queue = queue.clone();
            let pending = pending.clone();
            ctx.informers
                .deployments
                .on_event(move |ev: &Event<Deployment>| {
                    let key = key_of(&ev.object().metadata);
                    if let Event::Deleted(_) = ev {
                        pending.forget(&key);
                    }
                    queue.add(key);
                });
        }
        let owners = Owners {
            deployments: ctx.informers.deployments.clone(),
            replicasets: ctx.informers.replicasets.clone(),
            queue: queue.clone(),
        };
        {
            let owners = owners.clone();
            ctx.informers
                .replicasets
                .on_event(move |ev: &Event<ReplicaSet>| owners.replica_set_event(ev));
        }
        ctx.informers
            .pods
            .on_event(move |ev: &Event<Pod>| owners.pod_event(ev));
        DeploymentController {
            ctx,
            queue,
            pending,
        }
    }

    /// Runs `settings.workers` workers until aborted.
    pub async fn run(self) {
        let (queue, workers) = (self.queue.clone(), self.ctx.settings.workers);
        skiff_runtime::run_workers(
            Arc::new(self),
            queue,
            workers,
            "deployment",
            Error::is_conflict,
            |this: Arc<Self>, key: String| async move { this.sync(&key).await },
        )
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>> {
        let informers = &self.ctx.informers;
        let Some(cached) = informers.deployments.get_key(key) else {
            self.pending.forget(key);
            return Ok(None);
        };
        if !self.pending.observed(
            key,
            &informers.replicasets,
            &informers.deployments,
            Instant::now(),
        ) {
            tracing::debug!(deployment = %key, "waiting for the caches to show the last writes");
            return Ok(self.pending.expiry_timer(key, Instant::now()));
        }
        let selector = match cached.spec.selector.to_selector() {
            Ok(s) if !s.is_everything() => s,
            Ok(_) => {
                tracing::warn!(deployment = %key, "empty selector; ignoring the Deployment");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(deployment = %key, error = %e, "invalid selector; ignoring the Deployment");
                return Ok(None);
            }
        };
        let mut pass = Pass {
            ctx: &self.ctx,
            pending: &self.pending,
            key,
            d: (*cached).clone(),
            stored: cached.status.clone(),
            rss: Vec::new(),
            now: SystemTime::now(),
        };
        pass.claim_replica_sets(&selector).await?;
        if let Some(rs) = pass
            .rss
            .iter()
            .find(|rs| rs.status.observed_generation < rs.metadata.generation)
        {
            tracing::debug!(deployment = %key, replicaset = %rs.metadata.name, "waiting for the ReplicaSet's status to catch up with its spec");
            return Ok(None);
        }
        pass.run().await
    }
}

/// Maps ReplicaSet and pod events to the Deployments they concern.
#[derive(Clone)]
struct Owners {
    deployments: Informer<Deployment>,
    replicasets: Informer<ReplicaSet>,
    queue: Queue,
}

impl Owners {
    /// The key of the Deployment controlling an object (if cached with the same uid).
    fn deployment_of(&self, meta: &ObjectMeta) -> Option<Arc<Deployment>> {
        let r = meta.controller_ref()?;
        if r.kind != "Deployment" {
            return None;
        }
        let d = self.deployments.get(&meta.namespace, &r.name)?;
        (d.metadata.uid == r.uid).then_some(d)
    }

    fn enqueue_owner(&self, meta: &ObjectMeta) {
        if let Some(d) = self.deployment_of(meta) {
            self.queue.add(key_of(&d.metadata));
        }
    }

    /// Every Deployment whose selector matches an orphaned ReplicaSet (for adoption).
    fn enqueue_matching(&self, rs: &ReplicaSet) {
        let ns = &rs.metadata.namespace;
        for d in self.deployments.filter(|d| {
            d.metadata.namespace == *ns
                && !d.spec.selector.is_empty()
                && d.spec.selector.matches(&rs.metadata.labels)
        }) {
            self.queue.add(key_of(&d.metadata));
        }
    }

    fn replica_set_event(&self, ev: &Event<ReplicaSet>) {
        match ev {
            Event::Added(rs) => {
                if rs.metadata.controller_ref().is_some() {
                    self.enqueue_owner(&rs.metadata);
                } else {
                    self.enqueue_matching(rs);
                }
            }
            Event::Updated { old, new } => {
                if old.metadata.resource_version == new.metadata.resource_version {
                    return;
                }
                let (old_ref, new_ref) =
                    (old.metadata.controller_ref(), new.metadata.controller_ref());
                if old_ref != new_ref {
                    self.enqueue_owner(&old.metadata);
                }
                if new_ref.is_some() {
                    self.enqueue_owner(&new.metadata);
                } else if old_ref.is_some() || old.metadata.labels != new.metadata.labels {
                    self.enqueue_matching(new);
                }
            }
            Event::Deleted(rs) => self.enqueue_owner(&rs.metadata),
        }
    }

    /// A Recreate rollout waits for the old pods to be gone: their deletion (or end) is news.
    fn pod_event(&self, ev: &Event<Pod>) {
        let pod = match ev {
            Event::Deleted(p) => p,
            Event::Updated { old, new } if is_finished(new) && !is_finished(old) => new,
            _ => return,
        };
        let Some(r) = pod.metadata.controller_ref() else {
            return;
        };
        let Some(rs) = self
            .replicasets
            .get(&pod.metadata.namespace, &r.name)
            .filter(|rs| rs.metadata.uid == r.uid)
        else {
            return;
        };
        if let Some(d) = self.deployment_of(&rs.metadata)
            && is_recreate(&d)
        {
            self.queue.add(key_of(&d.metadata));
        }
    }
}

fn is_finished(p: &Pod) -> bool {
    matches!(p.status.phase.as_str(), "Succeeded" | "Failed")
}

fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.controller_ref().is_some_and(|r| r.uid == uid)
}

/// The controller reference a Deployment puts on its ReplicaSets.
pub fn owner_reference(d: &Deployment) -> OwnerReference {
    OwnerReference {
        api_version: Deployment::INFO.api_version.to_owned(),
        kind: Deployment::INFO.kind.to_owned(),
        name: d.metadata.name.clone(),
        uid: d.metadata.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The ReplicaSet for the Deployment's current template: named after the template's hash,
/// which is added to its selector, its template and its labels.
pub fn new_replica_set(d: &Deployment, hash: &str, replicas: i32, revision: i64) -> ReplicaSet {
    let mut template = d.spec.template.clone();
    template
        .metadata
        .labels
        .insert(POD_TEMPLATE_HASH.into(), hash.into());
    let mut selector = d.spec.selector.clone();
    selector
        .match_labels
        .insert(POD_TEMPLATE_HASH.into(), hash.into());
    let mut rs = ReplicaSet {
        metadata: ObjectMeta {
            name: format!("{}-{hash}", d.metadata.name),
            namespace: d.metadata.namespace.clone(),
            labels: template.metadata.labels.clone(),
            owner_references: vec![owner_reference(d)],
            ..ObjectMeta::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: d.spec.min_ready_seconds,
            selector,
            template,
        },
        status: Default::default(),
    };
    util::set_new_rs_annotations(d, &mut rs, revision, false);
    rs
}

/// Oldest first (by creation time, then name).
fn by_age(a: &ReplicaSet, b: &ReplicaSet) -> std::cmp::Ordering {
    (&a.metadata.creation_timestamp, &a.metadata.name)
        .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
}

fn counts(rs: &ReplicaSet) -> Counts {
    Counts::new(
        rs_replicas(rs),
        rs.status.replicas,
        rs.status.available_replicas,
    )
}

/// Fully scaled up and all available, with replica annotations to match.
fn is_saturated(d: &Deployment, rs: &ReplicaSet) -> bool {
    let want = replicas(d);
    rs_replicas(rs) == want
        && util::desired_replicas_annotation(rs) == Some(want)
        && rs.status.available_replicas == want
}

/// One pass over one Deployment: a working copy of it and of its ReplicaSets, kept up to date
/// with the pass's own writes.
struct Pass<'a> {
    ctx: &'a Context,
    pending: &'a Pending,
    key: &'a str,
    d: Deployment,
    /// The status as stored: it is written only when the pass changes it.
    stored: DeploymentStatus,
    rss: Vec<ReplicaSet>,
    now: SystemTime,
}

impl Pass<'_> {
    async fn run(&mut self) -> Result<Option<Duration>> {
        if self.d.metadata.deletion_timestamp.is_some() {
            let new = self.sync_revision(false).await?;
            self.sync_status(new).await?;
            return Ok(None);
        }
        let mut conds = std::mem::take(&mut self.d.status.conditions);
        util::update_paused_condition(&self.d, &mut conds, self.now);
        self.d.status.conditions = conds;
        // A Recreate rollout sizes its one active ReplicaSet itself.
        if self.d.spec.paused || (!is_recreate(&self.d) && self.is_scaling_event().await?) {
            return self.scale_sync().await;
        }
        if is_recreate(&self.d) {
            self.recreate().await
        } else {
            self.rolling().await
        }
    }

    /// The Deployment's ReplicaSets: those it controls whose labels it still selects, adopting
    /// selected orphans and releasing controlled ones it no longer selects.
    async fn claim_replica_sets(&mut self, selector: &Selector) -> Result<()> {
        let ns = &self.d.metadata.namespace;
        let uid = self.d.metadata.uid.clone();
        let deleting = self.d.metadata.deletion_timestamp.is_some();
        let candidates = self.ctx.informers.replicasets.filter(|rs| {
            rs.metadata.namespace == *ns
                && match rs.metadata.controller_ref() {
                    Some(r) => r.uid == uid,
                    None => selector.matches(&rs.metadata.labels),
                }
        });
        for rs in candidates {
            let matches = selector.matches(&rs.metadata.labels);
            if controlled_by(&rs.metadata, &uid) {
                if matches {
                    self.rss.push((*rs).clone());
                } else {
                    let mut released = (*rs).clone();
                    released.metadata.owner_references.retain(|r| r.uid != uid);
                    if self.update_rs(released, "releasing").await.is_ok() {
                        tracing::info!(deployment = %self.key, replicaset = %rs.metadata.name, "released a ReplicaSet it no longer selects");
                    }
                }
            } else if !deleting && rs.metadata.deletion_timestamp.is_none() {
                let mut adopted = (*rs).clone();
                adopted
                    .metadata
                    .owner_references
                    .push(owner_reference(&self.d));
                match self.update_rs(adopted, "adopting").await {
                    Ok(rs) => {
                        tracing::info!(deployment = %self.key, replicaset = %rs.metadata.name, "adopted an orphaned ReplicaSet");
                        self.rss.push(rs);
                    }
                    Err(e) => tracing::debug!(error = %e, "adoption failed; trying again later"),
                }
            }
        }
        self.rss.sort_by(by_age);
        Ok(())
    }

    /// The new ReplicaSet (the oldest running the current template) and the others, oldest
    /// first, as indexes into `rss`.
    fn new_and_old(&self) -> (Option<usize>, Vec<usize>) {
        let mut order: Vec<usize> = (0..self.rss.len()).collect();
        order.sort_by(|&a, &b| by_age(&self.rss[a], &self.rss[b]));
        let new = order
            .iter()
            .copied()
            .find(|&i| equal_ignore_hash(&self.rss[i].spec.template, &self.d.spec.template));
        let old = order.into_iter().filter(|&i| Some(i) != new).collect();
        (new, old)
    }

    /// Finds (or, with `create`, creates) the new ReplicaSet and brings its revision and
    /// annotations up to date.
    async fn sync_revision(&mut self, create: bool) -> Result<Option<usize>> {
        let (new, old) = self.new_and_old();
        let next = util::next_revision(old.iter().map(|&i| &self.rss[i]));
        let has_deadline = util::progress_deadline(&self.d).is_some();
        if let Some(i) = new {
            let mut rs = self.rss[i].clone();
            let mut changed = util::set_new_rs_annotations(&self.d, &mut rs, next, true);
            if rs.spec.min_ready_seconds != self.d.spec.min_ready_seconds {
                rs.spec.min_ready_seconds = self.d.spec.min_ready_seconds;
                changed = true;
            }
            if changed {
                self.rss[i] = self.update_rs(rs, "updating").await?;
            }
            if has_deadline && condition(&self.d.status.conditions, PROGRESSING).is_none() {
                let name = &self.rss[i].metadata.name;
                conditions::set_by_reason(
                    &mut self.d.status.conditions,
                    new_condition(
                        PROGRESSING,
                        "True",
                        reason::FOUND_NEW_RS,
                        format!("Found new replica set {name:?}"),
                        self.now,
                    ),
                );
            }
            return Ok(Some(i));
        }
        if !create {
            return Ok(None);
        }
        let desired = replicas(&self.d);
        let size = if is_recreate(&self.d) {
            desired
        } else {
            let all: Vec<Counts> = old.iter().map(|&i| counts(&self.rss[i])).collect();
            rolling::new_replicas(desired, fenceposts(&self.d), Counts::default(), &all)
        };
        let hash = util::template_hash(&self.d.spec.template, self.d.status.collision_count);
        let rs = new_replica_set(&self.d, &hash, size, next);
        let name = rs.metadata.name.clone();
        let created = match self.ctx.client.create(&rs).await {
            Ok(created) => {
                tracing::info!(deployment = %self.key, replicaset = %name, replicas = size, revision = next, "created the new ReplicaSet");
                self.pending.wrote_rs(self.key, created.metadata.revision());
                if has_deadline {
                    conditions::set_by_reason(
                        &mut self.d.status.conditions,
                        new_condition(
                            PROGRESSING,
                            "True",
                            reason::NEW_RS_CREATED,
                            format!("Created new replica set {name:?}"),
                            self.now,
                        ),
                    );
                }
                created
            }
            Err(e) if e.is_already_exists() => {
                let existing: ReplicaSet = self
                    .ctx
                    .client
                    .get(&rs.metadata.namespace, &name)
                    .await
                    .map_err(|source| Error::ReplicaSet {
                        action: "reading",
                        name: name.clone(),
                        source,
                    })?;
                if controlled_by(&existing.metadata, &self.d.metadata.uid)
                    && equal_ignore_hash(&existing.spec.template, &self.d.spec.template)
                {
                    // Ours, and not in the cache yet.
                    existing
                } else {
                    let count = self.d.status.collision_count.unwrap_or(0).saturating_add(1);
                    self.d.status.collision_count = Some(count);
                    let status = self.d.status.clone();
                    self.write_status(status).await?;
                    return Err(Error::HashCollision { name, count });
                }
            }
            Err(source) => {
                return Err(Error::ReplicaSet {
                    action: "creating",
                    name,
                    source,
                });
            }
        };
        self.rss.push(created);
        Ok(Some(self.rss.len() - 1))
    }

    /// Compare-and-swap on the cached version; the pass goes on with what was stored.
    async fn update_rs(&self, rs: ReplicaSet, action: &'static str) -> Result<ReplicaSet> {
        let name = rs.metadata.name.clone();
        let stored = self
            .ctx
            .client
            .update(&rs)
            .await
            .map_err(|source| Error::ReplicaSet {
                action,
                name,
                source,
            })?;
        self.pending.wrote_rs(self.key, stored.metadata.revision());
        Ok(stored)
    }

    /// Sets a ReplicaSet's replicas (and the replica annotations); whether its size changed.
    async fn scale_rs(&mut self, i: usize, size: i32) -> Result<bool> {
        let mut rs = self.rss[i].clone();
        let desired = replicas(&self.d);
        let annotations =
            set_replicas_annotations(&mut rs, desired, desired + fenceposts(&self.d).surge);
        let resized = rs_replicas(&rs) != size;
        if !resized && !annotations {
            return Ok(false);
        }
        let from = rs_replicas(&rs);
        rs.spec.replicas = Some(size);
        self.rss[i] = self.update_rs(rs, "scaling").await?;
        if resized {
            tracing::info!(deployment = %self.key, replicaset = %self.rss[i].metadata.name, from, to = size, "scaled");
        }
        Ok(resized)
    }

    /// Whether the Deployment's replicas changed since its active ReplicaSets were last scaled.
    async fn is_scaling_event(&mut self) -> Result<bool> {
        self.sync_revision(false).await?;
        let want = replicas(&self.d);
        Ok(self.rss.iter().any(|rs| {
            rs_replicas(rs) > 0 && util::desired_replicas_annotation(rs).is_some_and(|d| d != want)
        }))
    }

    /// Scaling without rolling out (paused, or replicas changed mid-rollout).
    async fn scale_sync(&mut self) -> Result<Option<Duration>> {
        let new = self.sync_revision(false).await?;
        self.scale(new).await?;
        if self.d.spec.paused {
            let (_, old) = self.new_and_old();
            self.cleanup(&old).await?;
        }
        self.sync_status(new).await?;
        Ok(None)
    }

    /// Brings the active ReplicaSets to the Deployment's size.
    async fn scale(&mut self, new: Option<usize>) -> Result<()> {
        let (_, old) = self.new_and_old();
        let desired = replicas(&self.d);
        let mut active: Vec<usize> = new
            .into_iter()
            .chain(old.iter().copied())
            .filter(|&i| rs_replicas(&self.rss[i]) > 0)
            .collect();
        if active.len() <= 1 {
            // One active (or, with none, the newest) ReplicaSet takes the whole size (and its
            // annotations say so, even if its size was right already).
            let target = active.first().copied().or(new).or(old.last().copied());
            if let Some(i) = target {
                self.scale_rs(i, desired).await?;
            }
            return Ok(());
        }
        if let Some(n) = new
            && is_saturated(&self.d, &self.rss[n])
        {
            for i in old {
                if rs_replicas(&self.rss[i]) > 0 {
                    self.scale_rs(i, 0).await?;
                }
            }
            return Ok(());
        }
        if is_recreate(&self.d) {
            return Ok(());
        }
        active.sort_by(|&a, &b| by_age(&self.rss[a], &self.rss[b]));
        let scalables: Vec<Scalable> = active
            .iter()
            .map(|&i| Scalable {
                replicas: rs_replicas(&self.rss[i]),
                max_replicas: util::max_replicas_annotation(&self.rss[i]),
            })
            .collect();
        let sizes = rolling::proportional(
            desired,
            fenceposts(&self.d).surge,
            self.d.status.replicas,
            &scalables,
        );
        for (i, size) in active.into_iter().zip(sizes) {
            self.scale_rs(i, size).await?;
        }
        Ok(())
    }

    async fn rolling(&mut self) -> Result<Option<Duration>> {
        let Some(new) = self.sync_revision(true).await? else {
            return Ok(None);
        };
        let (_, old) = self.new_and_old();
        let desired = replicas(&self.d);
        let f = fenceposts(&self.d);
        let all: Vec<Counts> = self.rss.iter().map(counts).collect();
        let target = rolling::new_replicas(desired, f, counts(&self.rss[new]), &all);
        if target != rs_replicas(&self.rss[new]) {
            self.scale_rs(new, target).await?;
            return self.rollout_status(Some(new)).await;
        }
        let old_counts: Vec<Counts> = old.iter().map(|&i| counts(&self.rss[i])).collect();
        let targets = rolling::old_replicas(desired, f, counts(&self.rss[new]), &old_counts);
        let mut scaled = false;
        for (&i, t) in old.iter().zip(targets) {
            if t != rs_replicas(&self.rss[i]) {
                scaled |= self.scale_rs(i, t).await?;
            }
        }
        if !scaled && deployment_complete(&self.d, &self.d.status) {
            self.cleanup(&old).await?;
        }
        self.rollout_status(Some(new)).await
    }

    async fn recreate(&mut self) -> Result<Option<Duration>> {
        let new = self.sync_revision(false).await?;
        let (_, old) = self.new_and_old();
        let mut scaled = false;
        for &i in &old {
            if rs_replicas(&self.rss[i]) > 0 {
                scaled |= self.scale_rs(i, 0).await?;
            }
        }
        if scaled || self.old_pods_running(&old) {
            return self.rollout_status(new).await;
        }
        let new = match new {
            Some(i) => i,
            None => match self.sync_revision(true).await? {
                Some(i) => i,
                None => return Ok(None),
            },
        };
        let desired = replicas(&self.d);
        if rs_replicas(&self.rss[new]) != desired {
            self.scale_rs(new, desired).await?;
        }
        if deployment_complete(&self.d, &self.d.status) {
            self.cleanup(&old).await?;
        }
        self.rollout_status(Some(new)).await
    }

    /// Whether any pod of the old ReplicaSets still exists and has not finished (terminating
    /// ones included: Recreate means no two templates run at once).
    fn old_pods_running(&self, old: &[usize]) -> bool {
        if old.iter().any(|&i| self.rss[i].status.replicas > 0) {
            return true;
        }
        let uids: Vec<&str> = old
            .iter()
            .map(|&i| self.rss[i].metadata.uid.as_str())
            .collect();
        let ns = &self.d.metadata.namespace;
        !self
            .ctx
            .informers
            .pods
            .filter(|p| {
                p.metadata.namespace == *ns
                    && !is_finished(p)
                    && p.metadata
                        .controller_ref()
                        .is_some_and(|r| uids.contains(&r.uid.as_str()))
            })
            .is_empty()
    }

    /// Deletes the oldest old ReplicaSets beyond `revisionHistoryLimit` that have no pods.
    async fn cleanup(&mut self, old: &[usize]) -> Result<()> {
        let limit = self.d.spec.revision_history_limit.unwrap_or(10);
        let entries: Vec<HistoryEntry> = old
            .iter()
            .map(|&i| {
                let rs = &self.rss[i];
                HistoryEntry {
                    revision: revision(rs),
                    created: rs.metadata.creation_timestamp.clone().unwrap_or_default(),
                    spec_replicas: rs_replicas(rs),
                    status_replicas: rs.status.replicas,
                    observed: rs.status.observed_generation >= rs.metadata.generation,
                    deleting: rs.metadata.deletion_timestamp.is_some(),
                }
            })
            .collect();
        for j in util::history_to_delete(&entries, limit) {
            let rs = &self.rss[old[j]];
            let params = DeleteParams {
                precondition_uid: rs.metadata.uid.clone(),
                ..DeleteParams::default()
            };
            match self
                .ctx
                .client
                .delete(
                    ReplicaSet::INFO,
                    &rs.metadata.namespace,
                    &rs.metadata.name,
                    params,
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(deployment = %self.key, replicaset = %rs.metadata.name, revision = revision(rs), "deleted an old ReplicaSet beyond the revision history limit");
                    self.pending
                        .deleted_rs(self.key, &key_of(&rs.metadata), &rs.metadata.uid);
                }
                Err(e) if e.is_not_found() => {}
                Err(source) => {
                    return Err(Error::ReplicaSet {
                        action: "deleting",
                        name: rs.metadata.name.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn status_of(&self, new: Option<usize>) -> DeploymentStatus {
        let all: Vec<&ReplicaSet> = self.rss.iter().collect();
        util::calculate_status(&self.d, &all, new.map(|i| &self.rss[i]), self.now)
    }

    /// The counts and `Available` condition (no judgement of progress: paused or scaling).
    async fn sync_status(&mut self, new: Option<usize>) -> Result<()> {
        let status = self.status_of(new);
        self.write_status(status).await
    }

    /// The status with the rollout's progress judged; returns when to look again for a missed
    /// progress deadline.
    async fn rollout_status(&mut self, new: Option<usize>) -> Result<Option<Duration>> {
        let mut status = self.status_of(new);
        let new_rs = new.map(|i| &self.rss[i]);
        util::update_progressing(
            &self.d,
            &mut status,
            new_rs.map(|rs| rs.metadata.name.as_str()),
            self.now,
        );
        let old: Vec<&ReplicaSet> = self
            .rss
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new)
            .map(|(_, rs)| rs)
            .collect();
        match util::replica_failure(new_rs, &old) {
            Some(c) => {
                let c = new_condition(
                    REPLICA_FAILURE,
                    "True",
                    &c.reason,
                    c.message.clone(),
                    self.now,
                );
                conditions::set_by_reason(&mut status.conditions, c);
            }
            None => {
                conditions::remove(&mut status.conditions, REPLICA_FAILURE);
            }
        }
        let again = util::until_deadline(&self.d, &status, self.now);
        self.write_status(status).await?;
        Ok(again)
    }

    /// Writes `status` if it differs from the stored one (compare-and-swap on the cached
    /// version, so a status computed from a stale Deployment is refused).
    async fn write_status(&mut self, status: DeploymentStatus) -> Result<()> {
        if status == self.stored {
            return Ok(());
        }
        let mut d = self.d.clone();
        d.status = status;
        let stored = self
            .ctx
            .client
            .update_status(&d)
            .await
            .map_err(|source| Error::Status {
                key: self.key.to_owned(),
                source,
            })?;
        self.pending
            .wrote_deployment(self.key, stored.metadata.revision());
        self.stored = stored.status.clone();
        self.d.status = stored.status;
        self.d.metadata.resource_version = stored.metadata.resource_version;
        Ok(())
    }
}

/// Per Deployment: the revisions its last pass wrote (ReplicaSets, the Deployment's status)
/// and the ReplicaSets it deleted, which the caches must show before the next pass.
#[derive(Debug)]
struct Written {
    rs_revision: i64,
    deployment_revision: i64,
    deleted: Vec<(String, String)>,
    since: Instant,
    /// Whether a look at the expiry was already scheduled.
    timer: bool,
}

#[derive(Debug)]
struct Pending {
    map: Mutex<HashMap<String, Written>>,
    timeout: Duration,
}

impl Pending {
    fn new(timeout: Duration) -> Pending {
        Pending {
            map: Mutex::default(),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Written>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn entry(&self, key: &str, f: impl FnOnce(&mut Written)) {
        let mut map = self.lock();
        let w = map.entry(key.to_owned()).or_insert_with(|| Written {
            rs_revision: 0,
            deployment_revision: 0,
            deleted: Vec::new(),
            since: Instant::now(),
            timer: false,
        });
        w.since = Instant::now();
        w.timer = false;
        f(w);
    }

    fn wrote_rs(&self, key: &str, revision: i64) {
        self.entry(key, |w| w.rs_revision = w.rs_revision.max(revision));
    }

    fn wrote_deployment(&self, key: &str, revision: i64) {
        self.entry(key, |w| {
            w.deployment_revision = w.deployment_revision.max(revision);
        });
    }

    fn deleted_rs(&self, key: &str, rs_key: &str, uid: &str) {
        self.entry(key, |w| w.deleted.push((rs_key.to_owned(), uid.to_owned())));
    }

    fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// How long until the wait for `key`'s writes gives up, the first time this is asked (so
    /// one timer is set per pass, not one per event).
    fn expiry_timer(&self, key: &str, now: Instant) -> Option<Duration> {
        let mut map = self.lock();
        let w = map.get_mut(key)?;
        if w.timer {
            return None;
        }
        w.timer = true;
        Some(
            (w.since + self.timeout)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1))
                + Duration::from_millis(10),
        )
    }

    /// Whether the caches show everything `key`'s passes wrote (or the wait timed out); an
    /// observed entry is dropped.
    fn observed(
        &self,
        key: &str,
        replicasets: &Informer<ReplicaSet>,
        deployments: &Informer<Deployment>,
        now: Instant,
    ) -> bool {
        let mut map = self.lock();
        let Some(w) = map.get(key) else {
            return true;
        };
        let seen = replicasets.revision() >= w.rs_revision
            && deployments.revision() >= w.deployment_revision
            && w.deleted.iter().all(|(k, uid)| {
                replicasets
                    .get_key(k)
                    .is_none_or(|rs| rs.metadata.uid != *uid)
            });
        if !seen && now.duration_since(w.since) <= self.timeout {
            return false;
        }
        if !seen {
            tracing::warn!(deployment = %key, "the caches did not show this controller's writes in time; going on");
        }
        map.remove(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use skiff_api::kinds::Container;

    use super::*;

    #[test]
    fn the_new_replica_set_carries_the_hash_in_name_selector_template_and_labels() {
        let mut d = Deployment::default();
        d.metadata.name = "web".into();
        d.metadata.namespace = "team".into();
        d.metadata.uid = "d1".into();
        d.spec.replicas = Some(4);
        d.spec.min_ready_seconds = 5;
        d.spec
            .selector
            .match_labels
            .insert("app".into(), "web".into());
        d.spec
            .template
            .metadata
            .labels
            .insert("app".into(), "web".into());
        d.spec.template.spec.containers.push(Container {
            name: "web".into(),
            image: "nginx".into(),
            ..Container::default()
        });
        let hash = util::template_hash(&d.spec.template, None);
        let rs = new_replica_set(&d, &hash, 2, 3);
        assert_eq!(rs.metadata.name, format!("web-{hash}"));
        assert_eq!(rs.metadata.namespace, "team");
        for labels in [
            &rs.metadata.labels,
            &rs.spec.selector.match_labels,
            &rs.spec.template.metadata.labels,
        ] {
            assert_eq!(labels.get(POD_TEMPLATE_HASH), Some(&hash));
        }
        assert_eq!(
            rs.spec.selector.match_labels.get("app").map(String::as_str),
            Some("web")
        );
        assert!(rs.spec.selector.matches(&rs.spec.template.metadata.labels));
        assert_eq!(rs.spec.replicas, Some(2));
        assert_eq!(rs.spec.min_ready_seconds, 5);
        assert_eq!(revision(&rs), 3);
        assert_eq!(util::desired_replicas_annotation(&rs), Some(4));
        assert_eq!(util::max_replicas_annotation(&rs), Some(5));
        assert!(equal_ignore_hash(&rs.spec.template, &d.spec.template));
        let r = rs.metadata.controller_ref().unwrap();
        assert_eq!(
            (r.kind.as_str(), r.api_version.as_str(), r.uid.as_str()),
            ("Deployment", "apps/v1", "d1")
        );
        assert_eq!(d.spec.template.metadata.labels.get(POD_TEMPLATE_HASH), None);
    }

    #[test]
    fn saturation_needs_size_annotation_and_availability() {
        let mut d = Deployment::default();
        d.spec.replicas = Some(3);
        let mut rs = ReplicaSet::default();
        rs.spec.replicas = Some(3);
        rs.status.available_replicas = 3;
        assert!(!is_saturated(&d, &rs), "no annotation yet");
        set_replicas_annotations(&mut rs, 3, 4);
        assert!(is_saturated(&d, &rs));
        rs.status.available_replicas = 2;
        assert!(!is_saturated(&d, &rs));
    }
}
