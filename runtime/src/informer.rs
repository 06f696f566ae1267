//! Informers: a local copy of one resource kept current by list-then-watch through the API
//! server, with handlers called for every change. Controllers and the scheduler read from it
//! instead of asking the server, and react to its events.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use skiff_api::{
    Kind, ObjectMeta,
    client::{Client, ClientError, ListParams, WatchEvent},
};
use tokio_stream::StreamExt;

/// One change seen by an informer.
#[derive(Debug)]
pub enum Event<K> {
    Added(Arc<K>),
    Updated { old: Arc<K>, new: Arc<K> },
    Deleted(Arc<K>),
}

impl<K> Event<K> {
    /// The object as it is now (or was last, for a deletion).
    pub fn object(&self) -> &Arc<K> {
        match self {
            Event::Added(o) | Event::Deleted(o) | Event::Updated { new: o, .. } => o,
        }
    }
}

/// `namespace/name`, or `name` for cluster-scoped objects: the key queues and stores use.
pub fn key_of(meta: &ObjectMeta) -> String {
    if meta.namespace.is_empty() {
        meta.name.clone()
    } else {
        format!("{}/{}", meta.namespace, meta.name)
    }
}

/// Splits a key made by [`key_of`] into (namespace, name).
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

type Handler<K> = Box<dyn Fn(&Event<K>) + Send + Sync>;

struct Shared<K> {
    client: Client,
    namespace: String,
    params: ListParams,
    objects: RwLock<HashMap<String, Arc<K>>>,
    handlers: RwLock<Vec<Handler<K>>>,
    synced: tokio::sync::watch::Sender<bool>,
    revision: AtomicI64,
}

/// A cached, watched view of one resource (cheap to clone; clones share the cache).
pub struct Informer<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            shared: self.shared.clone(),
        }
    }
}

impl<K: Kind> fmt::Debug for Informer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Informer")
            .field("kind", &K::INFO.kind)
            .field("namespace", &self.shared.namespace)
            .field("objects", &self.len())
            .finish()
    }
}

/// Reads the lock even if a handler panicked while it was held (the map itself stays whole).
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<K: Kind> Informer<K> {
    /// Watches `K` in `namespace` ("" for all) through `params`. Nothing happens until
    /// [`Informer::run`] is polled.
    pub fn new(client: Client, namespace: &str, params: ListParams) -> Informer<K> {
        Informer {
            shared: Arc::new(Shared {
                client,
                namespace: namespace.to_owned(),
                params,
                objects: RwLock::new(HashMap::new()),
                handlers: RwLock::new(Vec::new()),
                synced: tokio::sync::watch::Sender::new(false),
                revision: AtomicI64::new(0),
            }),
        }
    }

    /// Calls `f` for every change, after the cache has it. Handlers must be quick (enqueue a key)
    /// and may read any informer, this one included.
    pub fn on_event(&self, f: impl Fn(&Event<K>) + Send + Sync + 'static) {
        write(&self.shared.handlers).push(Box::new(f));
    }

    /// Waits until the first list is in the cache.
    pub async fn synced(&self) {
        let mut rx = self.shared.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn has_synced(&self) -> bool {
        *self.shared.synced.borrow()
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let key = if namespace.is_empty() {
            name.to_owned()
        } else {
            format!("{namespace}/{name}")
        };
        self.get_key(&key)
    }

    pub fn get_key(&self, key: &str) -> Option<Arc<K>> {
        read(&self.shared.objects).get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        read(&self.shared.objects).values().cloned().collect()
    }

    /// The objects for which `f` is true.
    pub fn filter(&self, f: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        read(&self.shared.objects)
            .values()
            .filter(|o| f(o))
            .cloned()
            .collect()
    }

    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.filter(|o| o.meta().namespace == namespace)
    }

    pub fn len(&self) -> usize {
        read(&self.shared.objects).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The revision the cache is current to.
    pub fn revision(&self) -> i64 {
        self.shared.revision.load(Ordering::Relaxed)
    }

    /// Lists, then watches, forever: a broken watch resumes from the last revision seen, and a
    /// watch whose history was compacted lists again (handlers see the difference as events).
    pub async fn run(self) {
        let mut backoff = Backoff::new();
        let mut after = 0;
        loop {
            if after == 0 {
                match self.relist().await {
                    Ok(rev) => {
                        after = rev;
                        backoff.reset();
                    }
                    Err(e) => {
                        tracing::warn!(kind = K::INFO.kind, error = %e, "list failed; retrying");
                        backoff.wait().await;
                        continue;
                    }
                }
            }
            match self.watch(&mut after).await {
                Ok(()) => backoff.reset(),
                Err(e) if e.is_gone() => {
                    tracing::info!(kind = K::INFO.kind, "watch history gone; listing again");
                    after = 0;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(kind = K::INFO.kind, error = %e, after, "watch broke; resuming");
                }
            }
            backoff.wait().await;
        }
    }

    async fn relist(&self) -> Result<i64, ClientError> {
        let s = &self.shared;
        let (items, rev) = s.client.list::<K>(&s.namespace, &s.params).await?;
        let mut events = Vec::new();
        {
            let mut objects = write(&s.objects);
            let mut fresh = HashMap::with_capacity(items.len());
            for o in items {
                let key = key_of(o.meta());
                let new = Arc::new(o);
                match objects.remove(&key) {
                    Some(old) if old.meta().resource_version == new.meta().resource_version => {
                        fresh.insert(key, old);
                        continue;
                    }
                    Some(old) => events.push(Event::Updated {
                        old,
                        new: new.clone(),
                    }),
                    None => events.push(Event::Added(new.clone())),
                }
                fresh.insert(key, new);
            }
            events.extend(objects.drain().map(|(_, o)| Event::Deleted(o)));
            *objects = fresh;
        }
        s.revision.store(rev, Ordering::Relaxed);
        self.dispatch(&events);
        s.synced.send_replace(true);
        Ok(rev)
    }

    async fn watch(&self, after: &mut i64) -> Result<(), ClientError> {
        let s = &self.shared;
        let mut stream = s
            .client
            .watch(K::INFO, &s.namespace, &s.params, *after, true)
            .await?;
        while let Some(ev) = stream.next().await {
            let ev = ev?;
            let rev = ev.resource_version();
            let event = match ev {
                WatchEvent::Bookmark(_) => None,
                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                    K::from_object(o).and_then(|o| self.put(o))
                }
                WatchEvent::Deleted(o) => K::from_object(o).and_then(|o| self.remove(&o)),
            };
            *after = rev.max(*after);
            s.revision.store(*after, Ordering::Relaxed);
            if let Some(e) = event {
                self.dispatch(std::slice::from_ref(&e));
            }
        }
        Ok(())
    }

    fn put(&self, o: K) -> Option<Event<K>> {
        let key = key_of(o.meta());
        let new = Arc::new(o);
        let old = write(&self.shared.objects).insert(key, new.clone());
        Some(match old {
            Some(old) => Event::Updated { old, new },
            None => Event::Added(new),
        })
    }

    fn remove(&self, o: &K) -> Option<Event<K>> {
        let old = write(&self.shared.objects).remove(&key_of(o.meta()));
        // Handlers get the final state the server sent.
        old.map(|_| Event::Deleted(Arc::new(o.clone())))
    }

    fn dispatch(&self, events: &[Event<K>]) {
        let handlers = read(&self.shared.handlers);
        for e in events {
            for h in handlers.iter() {
                h(e);
            }
        }
    }
}

/// Exponential back-off between 100 ms and 5 s for reconnecting.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}
