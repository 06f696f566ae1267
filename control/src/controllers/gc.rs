//! The garbage collector: sweeps up what the API server's synchronous cascades leave behind when
//! they are interrupted or raced. An object whose every owner is gone is deleted (an owner that
//! is only missing from a cache is first looked up on the server); a namespace still Terminating
//! after the server's own pass is deleted again, which empties and removes it; objects left in a
//! namespace that no longer exists are deleted.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use skiff_api::{
    Kind, ObjectMeta, ResourceInfo,
    client::{ClientError, DeleteParams, ListParams},
    kinds::Namespace,
    meta::OwnerReference,
    object::RESOURCES,
    proto::Propagation,
};
use skiff_runtime::{Event, Informer, Queue, key_of, split_key};

use super::{Context, Informers, NODE_LEASE_NAMESPACE};

/// How often every cache is swept for orphans and stuck namespaces.
const SWEEP_PERIOD: Duration = Duration::from_secs(30);
/// How long a namespace may stay Terminating before the collector deletes it again (the API
/// server's own pass normally finishes well within this).
const NAMESPACE_HEAD_START: Duration = Duration::from_secs(5);

/// One unit of the collector's work, as a queue key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Check the owners of the object of this kind and key.
    Owners { kind: String, key: String },
    /// Finish the deletion of a Terminating namespace.
    Terminate { namespace: String },
    /// Delete what is left in a namespace that no longer exists.
    Vanished { namespace: String },
}

impl Work {
    /// The queue key (object names and kinds never contain spaces).
    pub fn key(&self) -> String {
        match self {
            Work::Owners { kind, key } => format!("owners {kind} {key}"),
            Work::Terminate { namespace } => format!("terminate {namespace}"),
            Work::Vanished { namespace } => format!("vanished {namespace}"),
        }
    }

    pub fn parse(key: &str) -> Option<Work> {
        let (what, rest) = key.split_once(' ')?;
        match what {
            "owners" => {
                let (kind, key) = rest.split_once(' ')?;
                Some(Work::Owners {
                    kind: kind.to_owned(),
                    key: key.to_owned(),
                })
            }
            "terminate" => Some(Work::Terminate {
                namespace: rest.to_owned(),
            }),
            "vanished" => Some(Work::Vanished {
                namespace: rest.to_owned(),
            }),
            _ => None,
        }
    }
}

/// What a cache says about an owner reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// An object of that kind and name with the referenced uid is cached.
    Present,
    /// The kind is cached and holds no such object (or one with another uid).
    Absent,
    /// No cache covers it: only the server can say.
    NotCovered,
}

/// What to do with a dependent once its owners have been looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Every owner is gone: delete the dependent.
    Delete,
    /// Some owners are gone and others live: drop the references to these uids.
    DropOwners(Vec<String>),
}

/// Judges a dependent from the uids of its owners confirmed gone.
pub fn verdict(owners: &[OwnerReference], gone: &HashSet<&str>) -> Verdict {
    if owners.is_empty() || gone.is_empty() {
        return Verdict::Keep;
    }
    if owners.iter().all(|r| gone.contains(r.uid.as_str())) {
        return Verdict::Delete;
    }
    let mut uids: Vec<String> = owners
        .iter()
        .filter(|r| gone.contains(r.uid.as_str()))
        .map(|r| r.uid.clone())
        .collect();
    uids.dedup();
    Verdict::DropOwners(uids)
}

/// Whether any owner of the object is missing from the caches (so the object deserves a closer
/// look). Owners no cache covers are not counted: only a sweep of the server could say.
pub fn owner_missing(meta: &ObjectMeta, lookup: impl Fn(&OwnerReference) -> Cached) -> bool {
    meta.owner_references
        .iter()
        .any(|r| lookup(r) == Cached::Absent)
}

/// The resource of a kind (`ReplicaSet`), if the API serves it.
pub fn resource_of_kind(kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().copied().find(|r| r.kind == kind)
}

/// The namespace an owner of `info`'s kind lives in, for a dependent in `dependent_ns`; `None`
/// when a cluster-scoped dependent names a namespaced owner (which cannot be looked up).
pub fn owner_namespace<'a>(info: &ResourceInfo, dependent_ns: &'a str) -> Option<&'a str> {
    match (info.namespaced, dependent_ns.is_empty()) {
        (false, _) => Some(""),
        (true, false) => Some(dependent_ns),
        (true, true) => None,
    }
}

/// A namespace being deleted (marked by the API server).
pub fn is_terminating(ns: &Namespace) -> bool {
    ns.status.phase == "Terminating" || ns.metadata.deletion_timestamp.is_some()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn cached_in<K: Kind>(informer: &Informer<K>, key: &str, uid: &str) -> Cached {
    match informer.get_key(key) {
        Some(o) if o.meta().uid == uid => Cached::Present,
        _ => Cached::Absent,
    }
}

/// Looks an owner reference up in the shared caches.
fn lookup(informers: &Informers, r: &OwnerReference, dependent_ns: &str) -> Cached {
    let Some(info) = resource_of_kind(&r.kind) else {
        return Cached::NotCovered;
    };
    let Some(ns) = owner_namespace(info, dependent_ns) else {
        return Cached::NotCovered;
    };
    let key = if ns.is_empty() {
        r.name.clone()
    } else {
        format!("{ns}/{}", r.name)
    };
    let uid = r.uid.as_str();
    match r.kind.as_str() {
        "Pod" => cached_in(&informers.pods, &key, uid),
        "ReplicaSet" => cached_in(&informers.replicasets, &key, uid),
        "Deployment" => cached_in(&informers.deployments, &key, uid),
        "Service" => cached_in(&informers.services, &key, uid),
        "Endpoints" => cached_in(&informers.endpoints, &key, uid),
        "Node" => cached_in(&informers.nodes, &key, uid),
        "Namespace" => cached_in(&informers.namespaces, &key, uid),
        "Lease" if ns == NODE_LEASE_NAMESPACE => cached_in(&informers.node_leases, &key, uid),
        _ => Cached::NotCovered,
    }
}

fn meta_in<K: Kind>(informer: &Informer<K>, key: &str) -> Option<ObjectMeta> {
    informer.get_key(key).map(|o| o.meta().clone())
}

/// The cached metadata of an object of `kind`.
fn cached_meta(informers: &Informers, kind: &str, key: &str) -> Option<ObjectMeta> {
    match kind {
        "Pod" => meta_in(&informers.pods, key),
        "ReplicaSet" => meta_in(&informers.replicasets, key),
        "Deployment" => meta_in(&informers.deployments, key),
        "Service" => meta_in(&informers.services, key),
        "Endpoints" => meta_in(&informers.endpoints, key),
        "Node" => meta_in(&informers.nodes, key),
        "Namespace" => meta_in(&informers.namespaces, key),
        "Lease" => meta_in(&informers.node_leases, key),
        _ => None,
    }
}

/// Owner uid -> the queue keys of its dependents, kept by the handlers so an owner's deletion
/// finds its dependents without scanning.
type DependentIndex = Arc<Mutex<HashMap<String, HashSet<String>>>>;

fn index_add(index: &mut HashMap<String, HashSet<String>>, meta: &ObjectMeta, item: &str) {
    for r in &meta.owner_references {
        index
            .entry(r.uid.clone())
            .or_default()
            .insert(item.to_owned());
    }
}

fn index_remove(index: &mut HashMap<String, HashSet<String>>, meta: &ObjectMeta, item: &str) {
    for r in &meta.owner_references {
        if let Some(set) = index.get_mut(&r.uid) {
            set.remove(item);
            if set.is_empty() {
                index.remove(&r.uid);
            }
        }
    }
}

/// Deletes objects whose owners are gone, and finishes namespace deletions.
#[derive(Debug)]
pub struct GarbageCollector {
    ctx: Arc<Context>,
    queue: Queue,
    terminating_since: Mutex<HashMap<String, Instant>>,
}

impl GarbageCollector {
    /// Registers the handlers: an object whose owner is not cached is queued for a check, a
    /// deleted object's dependents are queued, and a Terminating namespace is queued.
    pub fn new(ctx: Arc<Context>) -> GarbageCollector {
        let queue = Queue::default().with_metrics("garbage_collector", &ctx.queues);
        let index: DependentIndex = Arc::default();
        let i = &ctx.informers;
        watch(&i.pods, i, &index, &queue);
        watch(&i.replicasets, i, &index, &queue);
        watch(&i.deployments, i, &index, &queue);
        watch(&i.services, i, &index, &queue);
        watch(&i.endpoints, i, &index, &queue);
        watch(&i.nodes, i, &index, &queue);
        watch(&i.node_leases, i, &index, &queue);
        watch(&i.namespaces, i, &index, &queue);
        let q = queue.clone();
        i.namespaces.on_event(move |ev: &Event<Namespace>| {
            if let Event::Added(ns) | Event::Updated { new: ns, .. } = ev
                && is_terminating(ns)
            {
                q.add(
                    Work::Terminate {
                        namespace: ns.metadata.name.clone(),
                    }
                    .key(),
                );
            }
        });
        GarbageCollector {
            ctx,
            queue,
            terminating_since: Mutex::default(),
        }
    }

    /// Sweeps every [`SWEEP_PERIOD`] (the first at once: the caches are synced) and works the
    /// queue, forever.
    pub async fn run(self) {
        let this = Arc::new(self);
        let sweeper = this.clone();
        let sweep = async move {
            let mut interval = tokio::time::interval(SWEEP_PERIOD);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                sweeper.sweep();
            }
        };
        let (queue, workers) = (this.queue.clone(), this.ctx.settings.workers);
        let work = skiff_runtime::run_workers(
            this,
            queue,
            workers,
            "gc",
            ClientError::is_conflict,
            |this: Arc<Self>, key: String| async move {
                match Work::parse(&key) {
                    Some(w) => this.sync(&w).await,
                    None => Ok(None),
                }
            },
        );
        tokio::join!(sweep, work);
    }

    /// Queues every cached object with an owner missing from the caches, every object in a
    /// namespace the cache does not know, and every Terminating namespace.
    fn sweep(&self) {
        let i = &self.ctx.informers;
        let mut vanished = HashSet::new();
        self.sweep_kind(&i.pods, &mut vanished);
        self.sweep_kind(&i.replicasets, &mut vanished);
        self.sweep_kind(&i.deployments, &mut vanished);
        self.sweep_kind(&i.services, &mut vanished);
        self.sweep_kind(&i.endpoints, &mut vanished);
        self.sweep_kind(&i.nodes, &mut vanished);
        self.sweep_kind(&i.node_leases, &mut vanished);
        self.sweep_kind(&i.namespaces, &mut vanished);
        for namespace in vanished {
            self.queue.add(Work::Vanished { namespace }.key());
        }
        let terminating = i.namespaces.filter(is_terminating);
        lock(&self.terminating_since)
            .retain(|name, _| terminating.iter().any(|n| n.metadata.name == *name));
        for ns in terminating {
            self.queue.add(
                Work::Terminate {
                    namespace: ns.metadata.name.clone(),
                }
                .key(),
            );
        }
    }

    fn sweep_kind<K: Kind>(&self, informer: &Informer<K>, vanished: &mut HashSet<String>) {
        let i = &self.ctx.informers;
        for o in informer.list() {
            let meta = o.meta();
            if owner_missing(meta, |r| lookup(i, r, &meta.namespace)) {
                self.queue.add(
                    Work::Owners {
                        kind: K::INFO.kind.to_owned(),
                        key: key_of(meta),
                    }
                    .key(),
                );
            }
            if K::INFO.namespaced
                && !vanished.contains(&meta.namespace)
                && i.namespaces.get_key(&meta.namespace).is_none()
            {
                vanished.insert(meta.namespace.clone());
            }
        }
    }

    /// Does one unit of work; `Some(d)` asks to be called again after `d`.
    async fn sync(&self, work: &Work) -> Result<Option<Duration>, ClientError> {
        match work {
            Work::Owners { kind, key } => self.sync_owners(kind, key).await.map(|()| None),
            Work::Terminate { namespace } => self.sync_terminating(namespace).await,
            Work::Vanished { namespace } => self.sync_vanished(namespace).await.map(|()| None),
        }
    }

    async fn sync_owners(&self, kind: &str, key: &str) -> Result<(), ClientError> {
        let client = &self.ctx.client;
        let Some(meta) = cached_meta(&self.ctx.informers, kind, key) else {
            return Ok(());
        };
        let Some(info) = resource_of_kind(kind) else {
            return Ok(());
        };
        let mut gone = HashSet::new();
        for r in &meta.owner_references {
            match lookup(&self.ctx.informers, r, &meta.namespace) {
                Cached::Present => continue,
                Cached::Absent | Cached::NotCovered => {}
            }
            let Some(owner_info) = resource_of_kind(&r.kind) else {
                // A kind this API does not serve: nothing can say it is gone.
                continue;
            };
            let Some(ns) = owner_namespace(owner_info, &meta.namespace) else {
                continue;
            };
            // The cache may simply be behind (an owner created a moment ago): ask the server.
            match client.get_object(owner_info, ns, &r.name).await {
                Ok(o) if o.meta().uid == r.uid => {}
                Ok(_) => {
                    gone.insert(r.uid.as_str());
                }
                Err(e) if e.is_not_found() => {
                    gone.insert(r.uid.as_str());
                }
                Err(e) => return Err(e),
            }
        }
        let (ns, name) = split_key(key);
        match verdict(&meta.owner_references, &gone) {
            Verdict::Keep => Ok(()),
            Verdict::Delete => {
                let params = DeleteParams {
                    propagation: Propagation::Background,
                    precondition_uid: meta.uid.clone(),
                    ..DeleteParams::default()
                };
                match client.delete(info, ns, name, params).await {
                    Ok(_) => {
                        tracing::info!(kind, object = %key, "deleted an object whose owners are all gone");
                        Ok(())
                    }
                    Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Verdict::DropOwners(uids) => {
                let mut o = match client.get_object(info, ns, name).await {
                    Ok(o) if o.meta().uid == meta.uid => o,
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_not_found() => return Ok(()),
                    Err(e) => return Err(e),
                };
                // Compare-and-swap on the revision just read.
                o.meta_mut()
                    .owner_references
                    .retain(|r| !uids.contains(&r.uid));
                client.update_object(&o).await?;
                tracing::info!(kind, object = %key, owners = ?uids, "dropped references to deleted owners");
                Ok(())
            }
        }
    }

    /// Deletes a namespace that stayed Terminating (the API server's pass was interrupted): the
    /// server's delete of a Terminating namespace empties it and then removes it.
    async fn sync_terminating(&self, name: &str) -> Result<Option<Duration>, ClientError> {
        let ns = match self.ctx.informers.namespaces.get_key(name) {
            Some(ns) if is_terminating(&ns) => ns,
            _ => {
                lock(&self.terminating_since).remove(name);
                return Ok(None);
            }
        };
        let now = Instant::now();
        let since = *lock(&self.terminating_since)
            .entry(name.to_owned())
            .or_insert(now);
        let waited = now.saturating_duration_since(since);
        if waited < NAMESPACE_HEAD_START {
            return Ok(Some(NAMESPACE_HEAD_START - waited));
        }
        tracing::info!(namespace = %name, terminating_for = ?waited, "namespace is still Terminating; finishing its deletion");
        let params = DeleteParams {
            precondition_uid: ns.metadata.uid.clone(),
            ..DeleteParams::default()
        };
        match self
            .ctx
            .client
            .delete(Namespace::INFO, "", name, params)
            .await
        {
            Ok(_) => {
                tracing::info!(namespace = %name, "namespace deleted");
                lock(&self.terminating_since).remove(name);
                Ok(None)
            }
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes everything the server still holds in a namespace that no longer exists (a create
    /// that raced the namespace's deletion).
    async fn sync_vanished(&self, namespace: &str) -> Result<(), ClientError> {
        let client = &self.ctx.client;
        if self.ctx.informers.namespaces.get_key(namespace).is_some() {
            return Ok(());
        }
        match client.get::<Namespace>("", namespace).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let mut deleted = 0;
        for info in RESOURCES.iter().copied().filter(|r| r.namespaced) {
            let (objects, _) = client
                .list_objects(info, namespace, &ListParams::default())
                .await?;
            for o in objects {
                let params = DeleteParams {
                    propagation: Propagation::Background,
                    grace_period_seconds: Some(0),
                    precondition_uid: o.meta().uid.clone(),
                    ..DeleteParams::default()
                };
                match client.delete(info, namespace, &o.meta().name, params).await {
                    Ok(_) => deleted += 1,
                    Err(e) if e.is_not_found() || e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if deleted > 0 {
            tracing::info!(namespace = %namespace, objects = deleted, "deleted objects left in a deleted namespace");
        }
        Ok(())
    }
}

/// Registers the collector's handler on one informer.
fn watch<K: Kind>(
    informer: &Informer<K>,
    informers: &Informers,
    index: &DependentIndex,
    queue: &Queue,
) {
    let informers = informers.clone();
    let index = index.clone();
    let queue = queue.clone();
    informer.on_event(move |ev: &Event<K>| {
        let item = |meta: &ObjectMeta| {
            Work::Owners {
                kind: K::INFO.kind.to_owned(),
                key: key_of(meta),
            }
            .key()
        };
        match ev {
            Event::Added(o) => {
                let meta = o.meta();
                if meta.owner_references.is_empty() {
                    return;
                }
                let item = item(meta);
                index_add(&mut lock(&index), meta, &item);
                if owner_missing(meta, |r| lookup(&informers, r, &meta.namespace)) {
                    queue.add(item);
                }
            }
            Event::Updated { old, new } => {
                let (old, new) = (old.meta(), new.meta());
                if old.owner_references == new.owner_references {
                    return;
                }
                let item = item(new);
                {
                    let mut index = lock(&index);
                    index_remove(&mut index, old, &item);
                    index_add(&mut index, new, &item);
                }
                if owner_missing(new, |r| lookup(&informers, r, &new.namespace)) {
                    queue.add(item);
                }
            }
            Event::Deleted(o) => {
                let meta = o.meta();
                let mut index = lock(&index);
                if !meta.owner_references.is_empty() {
                    index_remove(&mut index, meta, &item(meta));
                }
                // Whatever it owned may now be an orphan (the server's cascade normally got
                // there first; the check then finds nothing cached).
                if let Some(dependents) = index.get(&meta.uid) {
                    for d in dependents {
                        queue.add(d.as_str());
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn an_object_is_deleted_only_when_every_owner_is_gone() {
        let owners = [
            owner("ReplicaSet", "a", "uid-a"),
            owner("Deployment", "b", "uid-b"),
        ];
        assert_eq!(verdict(&owners, &HashSet::new()), Verdict::Keep);
        assert_eq!(
            verdict(&owners, &HashSet::from(["uid-a"])),
            Verdict::DropOwners(vec!["uid-a".into()])
        );
        assert_eq!(
            verdict(&owners, &HashSet::from(["uid-a", "uid-b"])),
            Verdict::Delete
        );
        // No owners: nothing to collect, whatever else is gone.
        assert_eq!(verdict(&[], &HashSet::from(["uid-a"])), Verdict::Keep);
    }

    #[test]
    fn an_owner_is_missing_when_the_cache_lacks_it_or_holds_another_uid() {
        let cache: HashMap<(&str, &str), &str> = HashMap::from([
            (("ReplicaSet", "default/web-1"), "uid-1"),
            (("ReplicaSet", "default/web-2"), "uid-new"),
        ]);
        let look = |r: &OwnerReference| {
            if r.kind == "Job" {
                return Cached::NotCovered;
            }
            match cache.get(&(r.kind.as_str(), format!("default/{}", r.name).as_str())) {
                Some(uid) if *uid == r.uid => Cached::Present,
                _ => Cached::Absent,
            }
        };
        let mut meta = ObjectMeta {
            namespace: "default".into(),
            ..ObjectMeta::default()
        };
        meta.owner_references = vec![owner("ReplicaSet", "web-1", "uid-1")];
        assert!(!owner_missing(&meta, look));
        // Same name, new object: the one referenced is gone.
        meta.owner_references = vec![owner("ReplicaSet", "web-2", "uid-old")];
        assert!(owner_missing(&meta, look));
        meta.owner_references = vec![owner("ReplicaSet", "web-3", "uid-3")];
        assert!(owner_missing(&meta, look));
        // Kinds no cache covers are left to the server, never assumed gone.
        meta.owner_references = vec![owner("Job", "j", "uid-j")];
        assert!(!owner_missing(&meta, look));
        meta.owner_references.clear();
        assert!(!owner_missing(&meta, look));
    }

    #[test]
    fn owners_are_looked_up_in_their_own_scope() {
        let node = resource_of_kind("Node").unwrap();
        let rs = resource_of_kind("ReplicaSet").unwrap();
        assert_eq!(owner_namespace(node, "skiff-node-lease"), Some(""));
        assert_eq!(owner_namespace(rs, "default"), Some("default"));
        assert_eq!(owner_namespace(rs, ""), None);
        assert!(resource_of_kind("CronJob").is_none());
    }

    #[test]
    fn work_keys_round_trip() {
        for w in [
            Work::Owners {
                kind: "Pod".into(),
                key: "default/web-1-abcde".into(),
            },
            Work::Owners {
                kind: "Node".into(),
                key: "node-1".into(),
            },
            Work::Terminate {
                namespace: "team-a".into(),
            },
            Work::Vanished {
                namespace: "team-b".into(),
            },
        ] {
            assert_eq!(Work::parse(&w.key()), Some(w));
        }
        assert_eq!(Work::parse("bogus"), None);
        assert_eq!(Work::parse("other x"), None);
    }

    #[test]
    fn terminating_means_marked_by_phase_or_deletion_timestamp() {
        let mut ns = Namespace::default();
        ns.status.phase = "Active".into();
        assert!(!is_terminating(&ns));
        ns.status.phase = "Terminating".into();
        assert!(is_terminating(&ns));
        ns.status.phase = "Active".into();
        ns.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        assert!(is_terminating(&ns));
    }

    #[test]
    fn the_dependent_index_follows_owner_reference_changes() {
        let mut index = HashMap::new();
        let meta = ObjectMeta {
            owner_references: vec![owner("ReplicaSet", "a", "uid-a")],
            ..ObjectMeta::default()
        };
        index_add(&mut index, &meta, "owners Pod default/p");
        assert!(index["uid-a"].contains("owners Pod default/p"));
        index_remove(&mut index, &meta, "owners Pod default/p");
        assert!(index.is_empty());
    }
}
