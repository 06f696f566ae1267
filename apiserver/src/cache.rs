//! The watch cache: one etcd watch per resource, whatever the number of API watches. Each event
//! is decoded once, kept in a window of recent history, and handed only to the watchers that can
//! want it: watchers that select one value of the field the kind's strategy indexes (pods:
//! `spec.nodeName=X`, every node agent's watch) are indexed by that value, so a cluster of
//! thousands of nodes costs each pod event a few hand-offs rather than one etcd message and one
//! decode per node.
//!
//! The cache is an accelerator, never an authority: a watch that starts before the cached window,
//! falls behind (its queue fills), or outlives the cache's etcd stream continues on a direct etcd
//! watch from the last revision it delivered (see `watch.rs`), so no event is lost or repeated.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use etcd_client::EventType;
use skiff_api::{Kind, Object, ResourceInfo, kinds::Pod};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::{
    error::ApiError,
    filter::Filter,
    registry::{self, WatchIndex},
    store::Store,
};

/// Events kept per resource for watches that start a little in the past (an informer's list
/// revision, a resumed watch), at most this many and this many bytes of stored objects.
const WINDOW: usize = 20_000;
const WINDOW_BYTES: usize = 64 << 20;
/// Consecutive failures of the cache's etcd stream after which its watchers are sent to etcd
/// directly (and the cache lists again).
const STREAM_FAILURES: u32 = 3;
/// How long a new watch waits for the cache's first list before going straight to etcd.
const READY_WAIT: Duration = Duration::from_secs(5);

/// One change, decoded once for every watcher.
#[derive(Debug)]
pub struct CachedEvent {
    pub revision: i64,
    /// The object after a put (`None` for a delete).
    pub new: Option<Arc<Object>>,
    /// The object before (`None` for a creation).
    pub prev: Option<Arc<Object>>,
    /// Bytes of the stored objects, for the window's budget.
    size: usize,
    json_new: OnceLock<Vec<u8>>,
    json_deleted: OnceLock<Vec<u8>>,
}

impl CachedEvent {
    /// The new object as sent to clients (encoded once, on first use).
    pub fn new_json(&self) -> &[u8] {
        self.json_new
            .get_or_init(|| self.new.as_ref().map(|o| o.to_json()).unwrap_or_default())
    }

    /// For a delete: the last state, carrying the deletion's revision.
    pub fn deleted_json(&self) -> &[u8] {
        self.json_deleted.get_or_init(|| {
            self.prev
                .as_ref()
                .map(|p| {
                    let mut o = (**p).clone();
                    o.meta_mut().resource_version = self.revision.to_string();
                    o.to_json()
                })
                .unwrap_or_default()
        })
    }
}

#[derive(Debug)]
struct Watcher {
    namespace: String,
    /// The value of the resource's index field the watcher selects (it is indexed by it).
    key: Option<String>,
    /// Events at or below this revision are the watcher's past (already in its list).
    after: i64,
    tx: mpsc::Sender<Arc<CachedEvent>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Current state by etcd key (the previous value of the next event).
    objects: HashMap<String, Arc<Object>>,
    events: VecDeque<Arc<CachedEvent>>,
    window_bytes: usize,
    /// Every event after this revision is in `events`.
    oldest: i64,
    live: bool,
    watchers: HashMap<u64, Watcher>,
    /// Watchers by the value of the index field they select.
    by_key: HashMap<String, HashSet<u64>>,
    unindexed: HashSet<u64>,
    next_id: u64,
    /// Keys whose current value was read with an encryption provider or key other than the
    /// one writes use: not served to writers, whose no-op update must reach etcd to rewrite it.
    stale: HashSet<String>,
    /// The keys of the pods bound to each node (the node authorizer asks about one node's pods).
    pods_by_node: HashMap<String, HashSet<String>>,
}

/// The node a pod is bound to; `None` for an unbound pod or another kind.
fn bound_node(o: &Object) -> Option<&str> {
    match o {
        Object::Pod(p) if !p.spec.node_name.is_empty() => Some(&p.spec.node_name),
        _ => None,
    }
}

impl Inner {
    fn index_pod(&mut self, key: &str, prev: Option<&Object>, new: Option<&Object>) {
        let (was, is) = (prev.and_then(bound_node), new.and_then(bound_node));
        if was == is {
            return;
        }
        if let Some(node) = was
            && let Some(keys) = self.pods_by_node.get_mut(node)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.pods_by_node.remove(node);
            }
        }
        if let Some(node) = is {
            self.pods_by_node
                .entry(node.to_owned())
                .or_default()
                .insert(key.to_owned());
        }
    }
}

/// The cache of one resource.
#[derive(Debug)]
pub struct ResourceCache {
    info: &'static ResourceInfo,
    /// The field watchers are indexed by, as the kind's strategy says.
    index: Option<WatchIndex>,
    inner: Mutex<Inner>,
    /// Every event up to here has been handed to the watchers.
    revision: AtomicI64,
    ready: tokio::sync::watch::Sender<bool>,
    /// Events a watcher may have waiting before it is moved off the cache to its own etcd watch.
    queue: usize,
}

/// A watcher's end of the cache.
#[derive(Debug)]
pub struct Subscription {
    pub rx: mpsc::Receiver<Arc<CachedEvent>>,
    /// The revision the watch starts after.
    pub after: i64,
    pub cache: Arc<ResourceCache>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cache.lock().remove(self.id);
    }
}

impl Inner {
    fn remove(&mut self, id: u64) {
        let Some(w) = self.watchers.remove(&id) else {
            return;
        };
        match w.key {
            Some(k) => {
                if let Some(ids) = self.by_key.get_mut(&k) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.by_key.remove(&k);
                    }
                }
            }
            None => {
                self.unindexed.remove(&id);
            }
        }
    }
}

impl Watcher {
    /// Whether `ev` is for this watcher at all (its revision, namespace and index key); its label
    /// and field selectors are judged by the watch itself.
    fn wants(&self, ev: &CachedEvent, index: Option<WatchIndex>) -> bool {
        if ev.revision <= self.after {
            return false;
        }
        let mut objects = [&ev.new, &ev.prev].into_iter().flatten();
        let Some(first) = objects.clone().next() else {
            return false;
        };
        if !self.namespace.is_empty() && first.meta().namespace != self.namespace {
            return false;
        }
        match (&self.key, index) {
            (Some(k), Some(index)) => objects.any(|o| (index.value)(o) == Some(k.as_str())),
            _ => true,
        }
    }
}

impl ResourceCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every event up to this revision has been handed to every watcher.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Replaces the state with a fresh list and drops every watcher (they continue on etcd).
    fn reset(&self, objects: HashMap<String, Arc<Object>>, stale: HashSet<String>, revision: i64) {
        let mut inner = self.lock();
        let mut pods_by_node: HashMap<String, HashSet<String>> = HashMap::new();
        for (key, o) in &objects {
            if let Some(node) = bound_node(o) {
                pods_by_node
                    .entry(node.to_owned())
                    .or_default()
                    .insert(key.clone());
            }
        }
        inner.objects = objects;
        inner.pods_by_node = pods_by_node;
        inner.stale = stale;
        inner.events.clear();
        inner.window_bytes = 0;
        inner.oldest = revision;
        inner.watchers.clear();
        inner.by_key.clear();
        inner.unindexed.clear();
        inner.live = true;
        self.revision.store(revision, Ordering::Release);
        drop(inner);
        self.ready.send_replace(true);
    }

    /// Stops serving: watchers continue on etcd, new watches go there until the next list.
    fn fail(&self) {
        let mut inner = self.lock();
        inner.live = false;
        inner.watchers.clear();
        inner.by_key.clear();
        inner.unindexed.clear();
        drop(inner);
        self.ready.send_replace(false);
    }

    /// Applies every change of one revision, and hands each watcher all of that revision's
    /// events it wants or none (a watcher without room for all of them is let go, and resumes
    /// from etcd after the previous revision, so a transaction is never delivered in part).
    fn apply(&self, revision: i64, changes: Vec<(String, Option<Object>, usize, bool)>) {
        let mut inner = self.lock();
        let mut events = Vec::with_capacity(changes.len());
        for (key, new, size, stale) in changes {
            if stale && new.is_some() {
                inner.stale.insert(key.clone());
            } else if !inner.stale.is_empty() {
                inner.stale.remove(&key);
            }
            let new = new.map(Arc::new);
            let prev = match &new {
                Some(o) => inner.objects.insert(key.clone(), o.clone()),
                None => inner.objects.remove(&key),
            };
            inner.index_pod(&key, prev.as_deref(), new.as_deref());
            if new.is_none() && prev.is_none() {
                continue;
            }
            events.push(Arc::new(CachedEvent {
                revision,
                new,
                prev,
                size,
                json_new: OnceLock::new(),
                json_deleted: OnceLock::new(),
            }));
        }
        let mut targets: Vec<u64> = inner.unindexed.iter().copied().collect();
        if let Some(index) = self.index {
            for ev in &events {
                for o in [&ev.new, &ev.prev].into_iter().flatten() {
                    if let Some(ids) = (index.value)(o).and_then(|k| inner.by_key.get(k)) {
                        targets.extend(ids.iter().copied());
                    }
                }
            }
        }
        targets.sort_unstable();
        targets.dedup();
        let mut gone = Vec::new();
        for id in targets {
            let Some(w) = inner.watchers.get(&id) else {
                continue;
            };
            let wanted: Vec<&Arc<CachedEvent>> =
                events.iter().filter(|e| w.wants(e, self.index)).collect();
            if wanted.is_empty() {
                continue;
            }
            // Full (it fell behind) or closed: either way it continues without the cache.
            if w.tx.capacity() < wanted.len()
                || wanted
                    .into_iter()
                    .any(|e| w.tx.try_send(e.clone()).is_err())
            {
                gone.push(id);
            }
        }
        for id in gone {
            inner.remove(id);
        }
        for ev in events {
            inner.window_bytes += ev.size;
            inner.events.push_back(ev);
        }
        while inner.events.len() > WINDOW || inner.window_bytes > WINDOW_BYTES {
            let Some(old) = inner.events.pop_front() else {
                break;
            };
            inner.window_bytes -= old.size;
            inner.oldest = old.revision;
        }
    }

    fn advance(&self, revision: i64) {
        self.revision.fetch_max(revision, Ordering::AcqRel);
    }

    /// Registers a watcher of events after `after` in `namespace` ("" for all), indexed by the
    /// value of the index field its filter selects. `None` when the cache cannot serve it (not live, or `after` is
    /// older than the window).
    fn subscribe(
        self: &Arc<Self>,
        namespace: &str,
        filter: &Filter,
        after: i64,
    ) -> Option<Subscription> {
        let mut inner = self.lock();
        if !inner.live || after < inner.oldest {
            return None;
        }
        let (tx, rx) = mpsc::channel(self.queue);
        let key = self
            .index
            .and_then(|index| filter.fields.exact(index.field))
            .map(str::to_owned);
        let watcher = Watcher {
            namespace: namespace.to_owned(),
            key: key.clone(),
            after,
            tx,
        };
        for ev in inner.events.iter().filter(|e| watcher.wants(e, self.index)) {
            if watcher.tx.try_send(ev.clone()).is_err() {
                // More history than a queue holds: etcd serves this one.
                return None;
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        match key {
            Some(k) => {
                inner.by_key.entry(k).or_default().insert(id);
            }
            None => {
                inner.unindexed.insert(id);
            }
        }
        inner.watchers.insert(id, watcher);
        Some(Subscription {
            rx,
            after,
            cache: self.clone(),
            id,
        })
    }
}

/// Every resource's cache, started on first use.
#[derive(Debug)]
pub struct WatchCache {
    store: Store,
    resources: Mutex<HashMap<&'static str, Arc<ResourceCache>>>,
    bookmark_interval: Duration,
    queue: usize,
}

impl WatchCache {
    pub fn new(store: Store, bookmark_interval: Duration, queue: usize) -> WatchCache {
        WatchCache {
            store,
            resources: Mutex::default(),
            bookmark_interval,
            queue: queue.max(1),
        }
    }

    fn resource(&self, info: &'static ResourceInfo) -> Arc<ResourceCache> {
        let mut map = self
            .resources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(info.plural)
            .or_insert_with(|| {
                let cache = Arc::new(ResourceCache {
                    info,
                    index: registry::strategy(info).ok().and_then(|s| s.watch_index()),
                    inner: Mutex::default(),
                    revision: AtomicI64::new(0),
                    ready: tokio::sync::watch::Sender::new(false),
                    queue: self.queue,
                });
                tokio::spawn(feed(
                    self.store.clone(),
                    cache.clone(),
                    self.bookmark_interval,
                ));
                cache
            })
            .clone()
    }

    /// The cached object at `key` if the cache is live and holds it at exactly `revision`:
    /// an object's content at a given mod revision never changes, so a writer that names the
    /// revision it read can be served without reading etcd again (its transaction still compares
    /// the revision).
    pub fn object_at(
        &self,
        info: &'static ResourceInfo,
        key: &str,
        revision: i64,
    ) -> Option<Arc<Object>> {
        let cache = self
            .resources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(info.plural)
            .cloned()?;
        let inner = cache.lock();
        if !inner.live {
            return None;
        }
        if inner.stale.contains(key) {
            return None;
        }
        inner
            .objects
            .get(key)
            .filter(|o| o.meta().revision() == revision)
            .cloned()
    }

    /// Whether any cached pod bound to `node` in `namespace` satisfies `pred`, answered from
    /// memory through the index of pods by node (the authorizer asks this on every node's read
    /// of a Secret or ConfigMap). The pods' cache is started on first use; `None` when it is not
    /// live within [`READY_WAIT`]. A `false` may be a few events stale: a caller that must not
    /// refuse on it asks etcd.
    pub async fn any_pod_on(
        &self,
        node: &str,
        namespace: &str,
        pred: impl Fn(&Pod) -> bool,
    ) -> Option<bool> {
        let cache = self.resource(<Pod as Kind>::INFO);
        let mut ready = cache.ready.subscribe();
        tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r))
            .await
            .ok()?
            .ok()?;
        let inner = cache.lock();
        if !inner.live {
            return None;
        }
        let Some(keys) = inner.pods_by_node.get(node) else {
            return Some(false);
        };
        Some(keys.iter().filter_map(|k| inner.objects.get(k)).any(
            |o| matches!(&**o, Object::Pod(p) if p.metadata.namespace == namespace && pred(p)),
        ))
    }

    /// A subscription for a watch of `info` after `after` (0: from etcd's current revision), or
    /// `None` when the watch should go to etcd directly.
    pub async fn subscribe(
        &self,
        info: &'static ResourceInfo,
        namespace: &str,
        filter: &Filter,
        after: i64,
    ) -> Result<Option<Subscription>, ApiError> {
        let cache = self.resource(info);
        let mut ready = cache.ready.subscribe();
        if tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r))
            .await
            .is_err()
        {
            return Ok(None);
        }
        let prefix = self.store.prefix(info, "");
        let after = if after == 0 {
            self.store.count(&prefix).await?.1
        } else {
            // The cache may still hold history etcd has compacted; a client asking for it gets
            // the same answer as from etcd, so behaviour never depends on the cache.
            self.store.check_revision(&prefix, after).await?;
            after
        };
        Ok(cache.subscribe(namespace, filter, after))
    }
}

/// Keeps one resource's cache current: list, then watch from the list's revision; a broken
/// stream resumes where it stopped, a compacted one (the cache fell too far behind) lists again.
async fn feed(store: Store, cache: Arc<ResourceCache>, bookmark_interval: Duration) {
    let prefix = store.prefix(cache.info, "");
    let mut pause = Duration::from_millis(100);
    let mut last = 0;
    let mut failures = 0;
    loop {
        if last == 0 {
            match store.list(&prefix, 0).await {
                Ok((items, revision)) => {
                    let mut objects = HashMap::with_capacity(items.len());
                    let mut stale = HashSet::new();
                    for s in items {
                        match s.decode() {
                            Ok(o) => {
                                if s.stale {
                                    stale.insert(s.key.clone());
                                }
                                objects.insert(s.key, Arc::new(o));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "watch cache: skipping an unreadable object")
                            }
                        }
                    }
                    cache.reset(objects, stale, revision);
                    last = revision;
                }
                Err(e) => {
                    tracing::warn!(resource = cache.info.plural, error = %e, "watch cache: list failed");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let started = last;
        match follow(&store, &cache, &prefix, &mut last, bookmark_interval).await {
            Ok(()) => pause = Duration::from_millis(100),
            Err(ApiError::Gone { .. }) => {
                tracing::info!(
                    resource = cache.info.plural,
                    "watch cache fell behind a compaction; listing again"
                );
                cache.fail();
                last = 0;
            }
            Err(e) => {
                // A stream that delivered something worked; one that keeps failing without
                // progress stops serving, so its watchers are not left waiting on it.
                failures = if last > started { 1 } else { failures + 1 };
                if failures >= STREAM_FAILURES {
                    tracing::warn!(resource = cache.info.plural, error = %e, "watch cache: etcd watch keeps failing; watches go to etcd directly until it lists again");
                    cache.fail();
                    last = 0;
                    failures = 0;
                } else {
                    tracing::debug!(resource = cache.info.plural, error = %e, last, "watch cache: etcd watch broke; resuming");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn follow(
    store: &Store,
    cache: &ResourceCache,
    prefix: &str,
    last: &mut i64,
    bookmark_interval: Duration,
) -> Result<(), ApiError> {
    let (mut requests, mut responses) = store.watch(prefix, *last).await?.split();
    let mut tick = tokio::time::interval(bookmark_interval.max(Duration::from_millis(200)));
    tick.tick().await;
    let mut busy = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Ask for progress only after a quiet interval (see watch.rs on etcd#15220).
                if !busy {
                    let _ = requests.request_progress().await;
                }
                busy = false;
            }
            msg = responses.next() => {
                let resp = match msg {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => return Err(ApiError::Unavailable(e.to_string())),
                    None => return Err(ApiError::Unavailable("etcd closed the watch stream".into())),
                };
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        return Err(ApiError::Gone { requested: *last, compacted: resp.compact_revision() });
                    }
                    return Err(ApiError::Unavailable(format!("etcd cancelled the watch: {}", resp.cancel_reason())));
                }
                if resp.created() {
                    continue;
                }
                if resp.events().is_empty() {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    if rev > *last {
                        *last = rev;
                        cache.advance(rev);
                    }
                    continue;
                }
                busy = true;
                // One transaction's changes share a revision and are applied together.
                let mut batch: Vec<(String, Option<Object>, usize, bool)> = Vec::new();
                let mut batch_rev = 0;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let revision = kv.mod_revision();
                    if revision != batch_rev && !batch.is_empty() {
                        cache.apply(batch_rev, std::mem::take(&mut batch));
                    }
                    batch_rev = revision;
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let size = kv.value().len() + ev.prev_kv().map_or(0, |p| p.value().len());
                    let (new, stale) = match ev.event_type() {
                        EventType::Delete => (None, false),
                        EventType::Put => {
                            let s = store.stored(kv);
                            match s.decode() {
                                Ok(o) => (Some(o), s.stale),
                                Err(e) => {
                                    tracing::warn!(error = %e, "watch cache: skipping an unreadable object");
                                    continue;
                                }
                            }
                        }
                    };
                    batch.push((key, new, size, stale));
                    *last = revision;
                }
                if !batch.is_empty() {
                    cache.apply(batch_rev, batch);
                }
                cache.advance(*last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods_cache() -> Result<Arc<ResourceCache>, ApiError> {
        let info = Pod::INFO;
        let cache = Arc::new(ResourceCache {
            info,
            index: registry::strategy(info)?.watch_index(),
            inner: Mutex::default(),
            revision: AtomicI64::new(0),
            ready: tokio::sync::watch::Sender::new(false),
            queue: 16,
        });
        cache.reset(HashMap::new(), HashSet::new(), 1);
        Ok(cache)
    }

    fn pod(name: &str, node: &str) -> (String, Option<Object>, usize, bool) {
        let mut p = Pod::default();
        p.metadata.name = name.into();
        p.metadata.namespace = "default".into();
        p.spec.node_name = node.into();
        (
            format!("/registry/pods/default/{name}"),
            Some(p.into_object()),
            1,
            false,
        )
    }

    fn on_node(node: &str) -> Result<Filter, ApiError> {
        Filter::parse(Pod::INFO, "", &format!("spec.nodeName={node}"))
    }

    fn names(sub: &mut Subscription) -> Vec<String> {
        std::iter::from_fn(|| sub.rx.try_recv().ok())
            .filter_map(|ev| ev.new.as_ref().map(|o| o.meta().name.clone()))
            .collect()
    }

    #[test]
    fn an_object_stored_with_an_old_key_stays_marked_until_rewritten_or_deleted()
    -> Result<(), ApiError> {
        let cache = pods_cache()?;
        let key = "/registry/pods/default/a";
        let stale = |(k, o, size, _): (String, Option<Object>, usize, bool)| (k, o, size, true);
        cache.apply(2, vec![stale(pod("a", "n1"))]);
        assert!(cache.lock().stale.contains(key), "read with an old key");
        cache.apply(3, vec![pod("a", "n1")]);
        assert!(
            !cache.lock().stale.contains(key),
            "rewritten with the current key"
        );
        cache.apply(4, vec![stale(pod("a", "n1"))]);
        cache.apply(5, vec![(key.to_owned(), None, 1, false)]);
        assert!(cache.lock().stale.is_empty(), "deleted");
        Ok(())
    }

    #[test]
    fn the_index_of_pods_by_node_follows_binds_moves_deletions_and_relists() -> Result<(), ApiError>
    {
        let cache = pods_cache()?;
        let on = |node: &str| -> Vec<String> {
            let mut keys: Vec<String> = cache
                .lock()
                .pods_by_node
                .get(node)
                .map(|k| k.iter().cloned().collect())
                .unwrap_or_default();
            keys.sort();
            keys
        };
        cache.apply(2, vec![pod("a", ""), pod("b", "n1")]);
        assert_eq!(on("n1"), ["/registry/pods/default/b"]);
        assert!(on("").is_empty(), "an unbound pod is on no node");
        cache.apply(3, vec![pod("a", "n1"), pod("b", "n2")]);
        assert_eq!(on("n1"), ["/registry/pods/default/a"]);
        assert_eq!(on("n2"), ["/registry/pods/default/b"]);
        cache.apply(
            4,
            vec![("/registry/pods/default/a".to_owned(), None, 1, false)],
        );
        assert!(on("n1").is_empty());
        assert!(
            !cache.lock().pods_by_node.contains_key("n1"),
            "no empty sets"
        );
        let (key, o, _, _) = pod("c", "n3");
        cache.reset(
            HashMap::from([(key, Arc::new(o.expect("a pod")))]),
            HashSet::new(),
            5,
        );
        assert_eq!(on("n3"), ["/registry/pods/default/c"]);
        assert!(
            on("n2").is_empty(),
            "a relist forgets what it no longer has"
        );
        Ok(())
    }

    #[test]
    fn a_watcher_of_one_node_is_handed_only_that_nodes_pods_including_a_pod_moving_off_it()
    -> Result<(), ApiError> {
        let cache = pods_cache()?;
        let mut n1 = cache
            .subscribe("", &on_node("n1")?, 1)
            .ok_or_else(unserved)?;
        let mut all = cache
            .subscribe("", &Filter::everything(), 1)
            .ok_or_else(unserved)?;
        {
            let inner = cache.lock();
            assert_eq!(inner.by_key.len(), 1, "indexed by the node it selects");
            assert_eq!(inner.unindexed.len(), 1);
        }
        cache.apply(2, vec![pod("a", "n1"), pod("b", "n2")]);
        cache.apply(3, vec![pod("a", "n2")]);
        assert_eq!(names(&mut n1), ["a", "a"], "the move off n1 is n1's too");
        assert_eq!(names(&mut all), ["a", "b", "a"]);
        drop(n1);
        assert!(
            cache.lock().by_key.is_empty(),
            "a dropped watcher is unindexed"
        );
        Ok(())
    }

    fn unserved() -> ApiError {
        ApiError::Unavailable("the cache did not serve the watch".into())
    }
}
