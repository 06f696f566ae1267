//! The generic store: create, get, list, update, update-status and delete for every kind, each a
//! compare-and-swap transaction in etcd. It knows no particular kind: what differs between kinds
//! (preparing, defaulting, validating, allocating, deleting) is asked of the kind's strategy
//! (`registry/`).

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use skiff_api::{
    DecodeError, FieldError, Object, ResourceInfo, meta::time, object::MAX_OBJECT_BYTES,
    proto::Propagation,
};

use super::{
    alloc::{self, Allocation, Allocator, Ranges, random_u64},
    auth::{Identity, Verb, authorize},
    cache::WatchCache,
    error::{ApiError, Result},
    filter::Filter,
    metrics::Metrics,
    registry::{self, Deletion, Strategy},
    store::Store,
};

/// Attempts at a write whose compare failed only because something else moved (an unconditional
/// update racing another writer, or a randomly picked address taken in the meantime).
const WRITE_ATTEMPTS: usize = 16;

/// How deep a cascading delete follows owners to what they own.
const MAX_CASCADE_DEPTH: usize = 8;

/// Shared state of one API server process: etcd, the watch cache, the allocation pools.
#[derive(Debug)]
pub struct GenericStore {
    pub store: Store,
    pub cache: WatchCache,
    pub ranges: Ranges,
    pub metrics: Arc<Metrics>,
}

/// Options of a delete.
#[derive(Debug, Clone)]
pub struct DeleteOptions {
    pub propagation: Propagation,
    pub grace_period_seconds: Option<i64>,
    pub precondition_revision: i64,
    /// Delete only if the object still has this uid (empty: any).
    pub precondition_uid: String,
}

/// The one object a delete is for: its uid, and the revision it must still have (0: any).
#[derive(Debug, Clone)]
struct Target {
    uid: String,
    revision: i64,
}

impl GenericStore {
    /// Checks the request's namespace against the object's, filling it in when the object has
    /// none.
    fn scope(&self, info: &ResourceInfo, namespace: &str, o: &mut Object) -> Result<()> {
        let meta = o.meta_mut();
        if info.namespaced {
            let ns = match (namespace, meta.namespace.as_str()) {
                ("", "") => "default".to_owned(),
                ("", m) => m.to_owned(),
                (r, "") => r.to_owned(),
                (r, m) if r == m => r.to_owned(),
                (r, m) => {
                    return Err(ApiError::BadRequest(format!(
                        "the namespace of the object ({m}) does not match the namespace on the request ({r})"
                    )));
                }
            };
            meta.namespace = ns;
        } else if !namespace.is_empty() || !meta.namespace.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "{} are cluster-scoped: metadata.namespace must be empty",
                info.plural
            )));
        }
        Ok(())
    }

    /// Reads one object.
    pub async fn get(
        &self,
        info: &'static ResourceInfo,
        namespace: &str,
        name: &str,
    ) -> Result<(Object, i64)> {
        let (o, rev, _) = self.read(info, namespace, name).await?;
        Ok((o, rev))
    }

    /// Reads one object from etcd, and whether it is stored stale (with an encryption provider
    /// or key other than the one writes use now).
    async fn read(
        &self,
        info: &'static ResourceInfo,
        namespace: &str,
        name: &str,
    ) -> Result<(Object, i64, bool)> {
        let key = self.store.key(info, namespace, name);
        let (stored, _) = self.store.get(&key).await?;
        let stored = stored.ok_or_else(|| ApiError::NotFound {
            resource: info.plural,
            name: name.to_owned(),
        })?;
        Ok((stored.decode()?, stored.mod_revision, stored.stale))
    }

    /// Lists at one revision; returns the matching objects and the revision.
    pub async fn list(
        &self,
        info: &'static ResourceInfo,
        namespace: &str,
        filter: &Filter,
    ) -> Result<(Vec<Object>, i64)> {
        let prefix = self.store.prefix(info, namespace);
        let (items, revision) = self.store.list(&prefix, 0).await?;
        let mut out = Vec::with_capacity(items.len());
        for s in &items {
            // One unreadable object must not hide all the others.
            match s.decode() {
                Ok(o) if filter.matches(&o) => out.push(o),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable object in a list"),
            }
        }
        Ok((out, revision))
    }

    /// Creates an object.
    pub async fn create(
        &self,
        id: &Identity,
        info: &'static ResourceInfo,
        namespace: &str,
        body: &[u8],
    ) -> Result<Object> {
        let strategy = registry::strategy(info)?;
        let mut o = Object::from_json_as(body, info)?;
        self.scope(info, namespace, &mut o)?;
        {
            let meta = o.meta_mut();
            if meta.name.is_empty() && !meta.generate_name.is_empty() {
                // Kubernetes' rule: the prefix is cut so the name stays within 63 characters.
                let prefix: String = meta.generate_name.chars().take(58).collect();
                meta.name = format!("{prefix}{}", random_suffix());
            }
        }
        let (ns, name) = (o.meta().namespace.clone(), o.meta().name.clone());
        authorize(id, Verb::Create, info, &ns, &name, Some(&o), None)?;
        prepare_create(strategy, &mut o);
        strategy.apply_defaults(&mut o);
        check(&o, strategy.validate(&o))?;
        let key = self.store.key(info, &ns, &name);
        let namespaces = registry::namespaces();
        let ns_key = info
            .namespaced
            .then(|| self.store.key(namespaces.info(), "", &ns));
        // Allocations the writer asked for by value; the rest are picked here.
        let explicit = strategy.allocations(&o);
        for _ in 0..WRITE_ATTEMPTS {
            let mut o = o.clone();
            self.allocate(strategy, &mut o, &BTreeSet::new()).await?;
            strategy.canonicalize(&mut o);
            let allocs = strategy.allocations(&o);
            check(&o, alloc::out_of_range(&self.ranges, allocs.iter()))?;
            let body = sized(&o)?;
            let mut when = vec![Compare::version(key.clone(), CompareOp::Equal, 0)];
            let mut then = vec![self.store.put(&key, body)?];
            let mut otherwise = vec![TxnOp::get(key.clone(), None)];
            // The namespace must exist and not be terminating, and stay so until the write.
            let mut ns_rev = 0;
            if let Some(ns_key) = &ns_key {
                let (namespace, rev) = match self.get(namespaces.info(), "", &ns).await {
                    Ok(v) => v,
                    Err(ApiError::NotFound { .. }) => {
                        return Err(ApiError::NamespaceNotFound { namespace: ns });
                    }
                    Err(e) => return Err(e),
                };
                if namespaces.is_terminating(&namespace) {
                    return Err(ApiError::NamespaceTerminating {
                        resource: info.plural,
                        name,
                        namespace: ns,
                    });
                }
                ns_rev = rev;
                when.push(Compare::mod_revision(ns_key.clone(), CompareOp::Equal, rev));
                otherwise.push(TxnOp::get(ns_key.clone(), None));
            }
            let owner = o.key();
            let claim = Claim {
                when: &mut when,
                then: &mut then,
                otherwise: &mut otherwise,
            };
            claim.add(&self.store, allocs.iter(), &owner);
            let resp = self
                .store
                .txn(
                    "create",
                    true,
                    Txn::new().when(when).and_then(then).or_else(otherwise),
                )
                .await?;
            if committed(&resp, &mut o) {
                return Ok(o);
            }
            let responses = resp.op_responses();
            if let Some(mine) = stored_with_uid(&self.store, &responses, &key, &o.meta().uid) {
                // An earlier attempt of this very request was applied before etcd answered.
                return Ok(mine);
            }
            let found = found_keys(&responses);
            if found.contains(&key) {
                return Err(ApiError::AlreadyExists {
                    resource: info.plural,
                    name,
                });
            }
            if let Some(ns_key) = &ns_key
                && current_revision(&responses, ns_key) != Some(ns_rev)
            {
                // The namespace changed (or went) meanwhile: look again.
                continue;
            }
            let taken: Vec<Allocation> = allocs
                .iter()
                .filter(|a| found.contains(&self.store.raw_key(&a.key_suffix())))
                .copied()
                .collect();
            explicit_taken(info, &name, &explicit, &taken)?;
            // A randomly picked address or port was taken meanwhile: pick again.
        }
        Err(ApiError::RangeFull(format!(
            "could not allocate for {} {name:?} after {WRITE_ATTEMPTS} attempts",
            info.plural
        )))
    }

    /// Fills the fields the strategy leaves to the server with random free allocations (etcd's
    /// transaction decides whether they really are free). `keep` are allocations the object
    /// already holds.
    async fn allocate(
        &self,
        strategy: &dyn Strategy,
        o: &mut Object,
        keep: &BTreeSet<Allocation>,
    ) -> Result<()> {
        let slots = strategy.unallocated(o);
        if slots.is_empty() {
            return Ok(());
        }
        let allocator = Allocator {
            store: &self.store,
            ranges: &self.ranges,
        };
        let mut held = strategy.allocations(o);
        held.extend(keep.iter().copied());
        for slot in slots {
            let given = allocator.pick(slot.pool, &held).await?;
            strategy.assign(o, slot, given);
            held.insert(given);
        }
        Ok(())
    }

    /// Update (`status_only = false`) or UpdateStatus.
    pub async fn update(
        &self,
        id: &Identity,
        info: &'static ResourceInfo,
        namespace: &str,
        body: &[u8],
        status_only: bool,
    ) -> Result<Object> {
        if status_only && !info.has_status {
            return Err(ApiError::BadRequest(format!(
                "{} have no status to update",
                info.plural
            )));
        }
        let strategy = registry::strategy(info)?;
        let mut given = Object::from_json_as(body, info)?;
        self.scope(info, namespace, &mut given)?;
        let (ns, name) = (given.meta().namespace.clone(), given.meta().name.clone());
        if name.is_empty() {
            return Err(ApiError::BadRequest(
                "metadata.name: Required value: an update names the object".into(),
            ));
        }
        let given_rev = given.meta().revision();
        if given_rev == 0 && !given.meta().resource_version.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "metadata.resourceVersion: Invalid value: {:?}: must be a number",
                given.meta().resource_version
            )));
        }
        let verb = if status_only {
            Verb::UpdateStatus
        } else {
            Verb::Update
        };
        let key = self.store.key(info, &ns, &name);
        for attempt in 0..WRITE_ATTEMPTS {
            // A compare-and-swap names the revision it read; when the watch cache holds the
            // object at that revision, etcd need not be read (half the etcd calls of a
            // binding or a status write). The transaction below still compares the revision.
            let cached = (attempt == 0 && given_rev != 0)
                .then(|| self.cache.object_at(info, &key, given_rev))
                .flatten();
            let (old, cur_rev, stale) = match cached {
                Some(o) => ((*o).clone(), given_rev, false),
                None => self.read(info, &ns, &name).await?,
            };
            if given_rev != 0 && given_rev != cur_rev {
                return Err(ApiError::Conflict {
                    resource: info.plural,
                    name,
                    given: given_rev,
                    current: cur_rev,
                });
            }
            authorize(id, verb, info, &ns, &name, Some(&given), Some(&old))?;
            let mut new = merge(strategy, &given, &old, status_only)?;
            strategy.apply_defaults(&mut new);
            strategy.keep_assigned(&mut new, &old);
            // Compared after defaults, so a manifest that leaves defaulted fields out is not a
            // change.
            if !status_only && strategy.bumps_generation(&new, &old) {
                new.meta_mut().generation = old.meta().generation + 1;
            }
            // Ratcheting: an error the stored object already has does not block an update (a
            // status write, or a scale of an object stored before a rule was added); an error
            // the write brings does.
            let mut errors = ratchet(strategy, strategy.validate(&new), &old);
            errors.extend(strategy.validate_update(&new, &old));
            check(&new, errors)?;
            let old_allocs = strategy.allocations(&old);
            let explicit = strategy.allocations(&new);
            self.allocate(strategy, &mut new, &old_allocs).await?;
            strategy.canonicalize(&mut new);
            new.meta_mut().resource_version = cur_rev.to_string();
            // A value read with an old key, or as plaintext, is rewritten with the current one
            // even when nothing else changes (Kubernetes' "stale" read): rewriting every object
            // rotates keys. The watch cache serves only values stored the current way.
            if new == old && !stale {
                return Ok(old);
            }
            new.meta_mut().resource_version.clear();
            let new_allocs = strategy.allocations(&new);
            let mut when = vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                cur_rev,
            )];
            check(
                &new,
                alloc::out_of_range(&self.ranges, new_allocs.difference(&old_allocs)),
            )?;
            let mut then = vec![self.store.put(&key, sized(&new)?)?];
            let mut otherwise = vec![TxnOp::get(key.clone(), None)];
            let owner = new.key();
            let claim = Claim {
                when: &mut when,
                then: &mut then,
                otherwise: &mut otherwise,
            };
            claim.add(&self.store, new_allocs.difference(&old_allocs), &owner);
            for a in old_allocs.difference(&new_allocs) {
                then.push(TxnOp::delete(self.store.raw_key(&a.key_suffix()), None));
            }
            let resp = self
                .store
                .txn(
                    verb.as_str(),
                    false,
                    Txn::new().when(when).and_then(then).or_else(otherwise),
                )
                .await?;
            if committed(&resp, &mut new) {
                return Ok(new);
            }
            let responses = resp.op_responses();
            let now_rev = current_revision(&responses, &key);
            if now_rev != Some(cur_rev) {
                if now_rev.is_none() {
                    return Err(ApiError::NotFound {
                        resource: info.plural,
                        name,
                    });
                }
                if given_rev != 0 {
                    return Err(ApiError::Conflict {
                        resource: info.plural,
                        name,
                        given: given_rev,
                        current: now_rev.unwrap_or(0),
                    });
                }
                continue;
            }
            let found = found_keys(&responses);
            let taken: Vec<Allocation> = new_allocs
                .difference(&old_allocs)
                .filter(|a| found.contains(&self.store.raw_key(&a.key_suffix())))
                .copied()
                .collect();
            explicit_taken(info, &name, &explicit, &taken)?;
        }
        Err(ApiError::Conflict {
            resource: info.plural,
            name,
            given: given_rev,
            current: 0,
        })
    }

    /// Deletes an object, as its strategy says: at once, gracefully (pods bound to a node are
    /// only marked, and their node's agent deletes them for good), or after emptying it (a
    /// namespace); and its dependents, as asked. The delete applies to the very object that was
    /// authorized (its uid), never to a successor of the same name.
    pub async fn delete(
        &self,
        id: &Identity,
        info: &'static ResourceInfo,
        namespace: &str,
        name: &str,
        opts: DeleteOptions,
    ) -> Result<Object> {
        if info.namespaced && namespace.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "{} are namespaced: the request needs a namespace",
                info.plural
            )));
        }
        let strategy = registry::strategy(info)?;
        let ns = if info.namespaced { namespace } else { "" };
        let (old, rev) = self.get(info, ns, name).await?;
        authorize(id, Verb::Delete, info, ns, name, None, Some(&old))?;
        if opts.precondition_revision != 0 && opts.precondition_revision != rev {
            return Err(ApiError::Conflict {
                resource: info.plural,
                name: name.to_owned(),
                given: opts.precondition_revision,
                current: rev,
            });
        }
        if !opts.precondition_uid.is_empty() && opts.precondition_uid != old.meta().uid {
            return Err(ApiError::PreconditionFailed(format!(
                "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                opts.precondition_uid,
                old.meta().uid
            )));
        }
        strategy.check_delete(&old)?;
        if strategy.deletion(&old, opts.grace_period_seconds) == Deletion::Contents {
            return self.delete_with_contents(strategy, name).await;
        }
        let target = Target {
            uid: old.meta().uid.clone(),
            revision: opts.precondition_revision,
        };
        self.delete_tree(info, ns, name, &target, &opts, 0).await
    }

    fn delete_tree<'a>(
        &'a self,
        info: &'static ResourceInfo,
        ns: &'a str,
        name: &'a str,
        target: &'a Target,
        opts: &'a DeleteOptions,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Object>> + Send + 'a>> {
        Box::pin(async move {
            let strategy = registry::strategy(info)?;
            let dependents = strategy.dependents();
            if depth > MAX_CASCADE_DEPTH || dependents.is_empty() {
                return self.delete_one(strategy, ns, name, target, opts).await;
            }
            match opts.propagation {
                Propagation::Orphan => {
                    for dep in dependents {
                        for d in self.owned_by(dep, ns, &target.uid).await? {
                            self.orphan(dep, &d, &target.uid).await?;
                        }
                    }
                    self.delete_one(strategy, ns, name, target, opts).await
                }
                Propagation::Foreground => {
                    self.delete_dependents(dependents, ns, &target.uid, opts, depth)
                        .await?;
                    self.delete_one(strategy, ns, name, target, opts).await
                }
                Propagation::Background => {
                    let gone = self.delete_one(strategy, ns, name, target, opts).await?;
                    self.delete_dependents(dependents, ns, &target.uid, opts, depth)
                        .await?;
                    Ok(gone)
                }
            }
        })
    }

    /// Deletes what `uid` owns; a dependent with other owners only loses this owner reference
    /// (Kubernetes deletes a dependent once all of its owners are gone).
    async fn delete_dependents(
        &self,
        dependents: &[&'static ResourceInfo],
        ns: &str,
        uid: &str,
        opts: &DeleteOptions,
        depth: usize,
    ) -> Result<()> {
        let child_opts = DeleteOptions {
            precondition_revision: 0,
            precondition_uid: String::new(),
            ..opts.clone()
        };
        for dep in dependents {
            for d in self.owned_by(dep, ns, uid).await? {
                if d.meta().owner_references.iter().any(|r| r.uid != uid) {
                    self.orphan(dep, &d, uid).await?;
                    continue;
                }
                let target = Target {
                    uid: d.meta().uid.clone(),
                    revision: 0,
                };
                match self
                    .delete_tree(dep, ns, &d.meta().name, &target, &child_opts, depth + 1)
                    .await
                {
                    Ok(_) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn owned_by(
        &self,
        info: &'static ResourceInfo,
        ns: &str,
        uid: &str,
    ) -> Result<Vec<Object>> {
        let (objects, _) = self.list(info, ns, &Filter::everything()).await?;
        Ok(objects
            .into_iter()
            .filter(|o| o.meta().owner_references.iter().any(|r| r.uid == uid))
            .collect())
    }

    /// Removes the owner reference to `uid` from a dependent (compare-and-swap, retried).
    async fn orphan(
        &self,
        info: &'static ResourceInfo,
        dependent: &Object,
        uid: &str,
    ) -> Result<()> {
        let (ns, name) = (&dependent.meta().namespace, &dependent.meta().name);
        let key = self.store.key(info, ns, name);
        for _ in 0..WRITE_ATTEMPTS {
            let (mut o, rev) = match self.get(info, ns, name).await {
                Ok(v) => v,
                Err(ApiError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            };
            o.meta_mut().owner_references.retain(|r| r.uid != uid);
            o.meta_mut().resource_version.clear();
            let resp = self.put_if_unchanged("orphan", &key, rev, &o).await?;
            if resp.succeeded() {
                return Ok(());
            }
        }
        Err(contended(info, name))
    }

    /// Deletes an object that contains others (a namespace): marks it terminating (creates in it
    /// are refused from then on), deletes everything in it one object per transaction (owners
    /// first; pods without a grace period), then the object itself.
    async fn delete_with_contents(&self, strategy: &dyn Strategy, name: &str) -> Result<Object> {
        let info = strategy.info();
        let key = self.store.key(info, "", name);
        let mut marked = None;
        for _ in 0..WRITE_ATTEMPTS {
            let (mut o, rev) = self.get(info, "", name).await?;
            if !strategy.mark_terminating(&mut o) {
                marked = Some(o);
                break;
            }
            o.meta_mut().resource_version.clear();
            let resp = self
                .put_if_unchanged("delete-namespace", &key, rev, &o)
                .await?;
            if resp.succeeded() {
                marked = Some(o);
                break;
            }
        }
        let Some(marked) = marked else {
            return Err(contended(info, name));
        };
        let now = DeleteOptions {
            propagation: Propagation::Orphan,
            grace_period_seconds: Some(0),
            precondition_revision: 0,
            precondition_uid: String::new(),
        };
        // Creates are refused once the mark is written, but a create that read the namespace
        // before it may still land: go round until a pass finds nothing.
        for _ in 0..WRITE_ATTEMPTS {
            let mut found = 0;
            for contained in registry::namespaced() {
                let contained_info = contained.info();
                for o in self
                    .list(contained_info, name, &Filter::everything())
                    .await?
                    .0
                {
                    found += 1;
                    let target = Target {
                        uid: o.meta().uid.clone(),
                        revision: 0,
                    };
                    match self
                        .delete_one(contained, name, &o.meta().name, &target, &now)
                        .await
                    {
                        Ok(_) | Err(ApiError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if found == 0 {
                break;
            }
        }
        let (current, rev) = self.get(info, "", name).await?;
        let mut then = vec![TxnOp::delete(key.clone(), None)];
        self.release(strategy, &current, &mut then);
        self.if_unchanged("delete", &key, rev, then).await?;
        Ok(marked)
    }

    /// Deletes one object (no cascade), if it is still `target`; only marks it when its strategy
    /// asks for a graceful deletion.
    async fn delete_one(
        &self,
        strategy: &dyn Strategy,
        ns: &str,
        name: &str,
        target: &Target,
        opts: &DeleteOptions,
    ) -> Result<Object> {
        let info = strategy.info();
        let key = self.store.key(info, ns, name);
        let mut last_seen: Option<Object> = None;
        for _ in 0..WRITE_ATTEMPTS {
            let (mut old, rev) = match (self.get(info, ns, name).await, last_seen.take()) {
                (Ok(v), _) => v,
                // Gone since the last look: this delete (retried by the store) or a concurrent
                // one removed it; either way it is deleted.
                (Err(ApiError::NotFound { .. }), Some(seen)) => return Ok(seen),
                (Err(e), _) => return Err(e),
            };
            if old.meta().uid != target.uid {
                // The object asked for is gone; this one is a successor with the same name.
                return match last_seen {
                    Some(seen) => Ok(seen),
                    None => Err(ApiError::NotFound {
                        resource: info.plural,
                        name: name.to_owned(),
                    }),
                };
            }
            if target.revision != 0 && target.revision != rev {
                return Err(ApiError::Conflict {
                    resource: info.plural,
                    name: name.to_owned(),
                    given: target.revision,
                    current: rev,
                });
            }
            last_seen = Some(old.clone());
            match strategy.deletion(&old, opts.grace_period_seconds) {
                Deletion::Graceful { seconds: grace } => {
                    let meta = old.meta_mut();
                    let already = meta.deletion_grace_period_seconds;
                    if meta.deletion_timestamp.is_some() && already.is_some_and(|g| g <= grace) {
                        return Ok(old);
                    }
                    // A shorter grace period can only bring the deadline closer.
                    let mut at = SystemTime::now() + Duration::from_secs(grace.unsigned_abs());
                    if let Some(earlier) = meta.deletion_timestamp.as_deref().and_then(time::parse)
                    {
                        at = at.min(earlier);
                    }
                    meta.deletion_timestamp = Some(time::format(at));
                    meta.deletion_grace_period_seconds = Some(grace);
                    meta.resource_version.clear();
                    let resp = self
                        .put_if_unchanged("delete-graceful", &key, rev, &old)
                        .await?;
                    if committed(&resp, &mut old) {
                        return Ok(old);
                    }
                    continue;
                }
                // Contents only reach here as the dependents of nothing: removing them at once
                // is all that is left to do.
                Deletion::Now | Deletion::Contents => {}
            }
            let mut then = vec![TxnOp::delete(key.clone(), None)];
            self.release(strategy, &old, &mut then);
            let resp = self.if_unchanged("delete", &key, rev, then).await?;
            if resp.succeeded() {
                return Ok(old);
            }
        }
        Err(contended(info, name))
    }

    /// Writes `o` at `key` if the object there is still at revision `rev`.
    async fn put_if_unchanged(
        &self,
        op: &'static str,
        key: &str,
        rev: i64,
        o: &Object,
    ) -> Result<etcd_client::TxnResponse> {
        self.if_unchanged(op, key, rev, [self.store.put(key, o.to_json())?])
            .await
    }

    /// Runs `then` in one transaction if the object at `key` is still at revision `rev`.
    async fn if_unchanged(
        &self,
        op: &'static str,
        key: &str,
        rev: i64,
        then: impl Into<Vec<TxnOp>>,
    ) -> Result<etcd_client::TxnResponse> {
        self.store
            .txn(
                op,
                true,
                Txn::new()
                    .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
                    .and_then(then),
            )
            .await
    }

    /// Adds to a deletion's transaction the release of what the object holds.
    fn release(&self, strategy: &dyn Strategy, o: &Object, then: &mut Vec<TxnOp>) {
        for a in strategy.allocations(o) {
            then.push(TxnOp::delete(self.store.raw_key(&a.key_suffix()), None));
        }
    }

    /// Creates an object unless it exists (the system's own, at startup; several replicas may
    /// race).
    pub async fn ensure(&self, mut o: Object) -> Result<()> {
        let info = o.info();
        let strategy = registry::strategy(info)?;
        let key = self.store.key(info, &o.meta().namespace, &o.meta().name);
        prepare_create(strategy, &mut o);
        strategy.apply_defaults(&mut o);
        let put = self.store.put(&key, o.to_json())?;
        self.store
            .txn(
                "create",
                true,
                Txn::new()
                    .when([Compare::version(key, CompareOp::Equal, 0)])
                    .and_then([put]),
            )
            .await?;
        Ok(())
    }
}

/// The object's JSON, refused when over the size limit (checked on what is stored, not only on
/// what was sent: defaults and a merged status add bytes).
fn sized(o: &Object) -> Result<Vec<u8>> {
    let body = o.to_json();
    if body.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::Decode(DecodeError::TooLarge {
            size: body.len(),
            limit: MAX_OBJECT_BYTES,
        }));
    }
    Ok(body)
}

/// The parts of a transaction that claim allocation keys: each must be free, is written with its
/// owner's name, and is read back when the transaction fails (to say which one was taken).
struct Claim<'a> {
    when: &'a mut Vec<Compare>,
    then: &'a mut Vec<TxnOp>,
    otherwise: &'a mut Vec<TxnOp>,
}

impl Claim<'_> {
    fn add<'x>(self, store: &Store, allocs: impl Iterator<Item = &'x Allocation>, owner: &str) {
        for a in allocs {
            let k = store.raw_key(&a.key_suffix());
            self.when
                .push(Compare::version(k.clone(), CompareOp::Equal, 0));
            self.then.push(TxnOp::put(k.clone(), owner, None));
            self.otherwise.push(TxnOp::get(k, None));
        }
    }
}

/// Sets the fields the server owns on a new object, and lets the strategy clear what a writer
/// may not set.
fn prepare_create(strategy: &dyn Strategy, o: &mut Object) {
    {
        let meta = o.meta_mut();
        meta.uid = new_uid();
        meta.creation_timestamp = Some(time::now());
        meta.generation = 1;
        meta.resource_version.clear();
        meta.deletion_timestamp = None;
        meta.deletion_grace_period_seconds = None;
    }
    strategy.prepare_for_create(o);
}

/// The object to store for an update: what the strategy takes from the writer (the spec, or the
/// status), with the server-owned metadata kept from the stored object.
fn merge(
    strategy: &dyn Strategy,
    given: &Object,
    old: &Object,
    status_only: bool,
) -> Result<Object> {
    let mut merged = if status_only {
        strategy.prepare_for_status_update(given, old)?
    } else {
        strategy.prepare_for_update(given, old)?
    };
    let om = old.meta();
    let m = merged.meta_mut();
    m.uid = om.uid.clone();
    m.creation_timestamp = om.creation_timestamp.clone();
    m.deletion_timestamp = om.deletion_timestamp.clone();
    m.deletion_grace_period_seconds = om.deletion_grace_period_seconds;
    m.generate_name = om.generate_name.clone();
    // The caller bumps it once defaults are applied, if the spec changed.
    m.generation = om.generation;
    m.resource_version.clear();
    Ok(merged)
}

/// What an update is answerable for, out of `errors` (those of the merged object): the errors
/// the stored object already carries are not the writer's. A status write changes only the
/// status (`merge` keeps everything else as stored), so, as Kubernetes' ValidatePodStatusUpdate
/// does, an object stored invalid (written past the API, straight into etcd) can still be given
/// the status that says why it cannot run; and an object stored before a rule was added (a
/// field now refused until implemented) can still be scaled or relabelled, while a write that
/// brings a new error, or changes an invalid value, is refused.
fn ratchet(strategy: &dyn Strategy, errors: Vec<FieldError>, stored: &Object) -> Vec<FieldError> {
    if errors.is_empty() {
        return errors;
    }
    let mut stored = stored.clone();
    strategy.apply_defaults(&mut stored);
    let already = strategy.validate(&stored);
    errors
        .into_iter()
        .filter(|e| !already.contains(e))
        .collect()
}

fn check(o: &Object, errors: Vec<FieldError>) -> Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid {
        kind: o.info().kind,
        name: o.meta().name.clone(),
        errors,
    })
}

/// Refuses a write whose explicitly asked-for allocations another object took first.
fn explicit_taken(
    info: &ResourceInfo,
    name: &str,
    explicit: &BTreeSet<Allocation>,
    taken: &[Allocation],
) -> Result<()> {
    let errors = alloc::already_allocated(explicit, taken);
    if errors.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid {
        kind: info.kind,
        name: name.to_owned(),
        errors,
    })
}

/// Keys that exist among the `get`s of a failed transaction's else branch.
fn found_keys(responses: &[TxnOpResponse]) -> BTreeSet<String> {
    responses
        .iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(
                g.kvs()
                    .iter()
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned()),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The conflict left when every one of the write attempts on `name` lost a race.
fn contended(info: &ResourceInfo, name: &str) -> ApiError {
    ApiError::Conflict {
        resource: info.plural,
        name: name.to_owned(),
        given: 0,
        current: 0,
    }
}

/// Whether the transaction committed; if so the object takes its revision as resourceVersion.
fn committed(resp: &etcd_client::TxnResponse, o: &mut Object) -> bool {
    if resp.succeeded() {
        let rev = resp.header().map_or(0, |h| h.revision());
        o.meta_mut().resource_version = rev.to_string();
    }
    resp.succeeded()
}

/// The object at `key` among a failed transaction's reads, if it carries `uid`.
fn stored_with_uid(
    store: &Store,
    responses: &[TxnOpResponse],
    key: &str,
    uid: &str,
) -> Option<Object> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g
            .kvs()
            .iter()
            .find(|kv| kv.key() == key.as_bytes())
            .and_then(|kv| {
                let o = store.stored(kv).decode().ok()?;
                (o.meta().uid == uid).then_some(o)
            }),
        _ => None,
    })
}

fn current_revision(responses: &[TxnOpResponse], key: &str) -> Option<i64> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g
            .kvs()
            .iter()
            .find(|kv| kv.key() == key.as_bytes())
            .map(|kv| kv.mod_revision()),
        _ => None,
    })
}

/// A version-4 UUID from the OS's random source.
pub fn new_uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Five characters for generateName, from an alphabet without vowels (no accidental words).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use skiff_api::{
        Kind,
        kinds::{Deployment, Pod},
    };

    use super::*;

    #[test]
    fn uids_are_version_4_and_distinct() {
        let a = new_uid();
        let b = new_uid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn a_status_update_is_not_refused_for_a_spec_stored_invalid_but_is_for_its_own_errors()
    -> Result<()> {
        let strategy = registry::strategy(Pod::INFO)?;
        let mut stored = Pod::default();
        stored.metadata.name = "p".into();
        stored.metadata.namespace = "default".into();
        stored.spec.containers.push(skiff_api::kinds::Container {
            name: "../../tmp/pwned".into(),
            image: "busybox".into(),
            ..Default::default()
        });
        let stored = stored.into_object();
        let mut given: Option<Pod> = stored.clone().into_kind();
        let mut given = given.take().expect("a pod");
        given.status.phase = "Failed".into();
        let mut merged = merge(strategy, &given.into_object(), &stored, true)?;
        strategy.apply_defaults(&mut merged);
        let all = strategy.validate(&merged);
        assert!(
            all.iter().any(|e| e.path == "spec.containers[0].name"),
            "{all:?}"
        );
        assert_eq!(ratchet(strategy, all, &stored), Vec::new());
        // An error the write itself brings is still the writer's.
        let own = FieldError::new("status.podIP", "Invalid value: \"x\"");
        assert_eq!(ratchet(strategy, vec![own.clone()], &stored), vec![own]);
        Ok(())
    }

    #[test]
    fn update_keeps_server_fields_and_ignores_status_or_spec_as_asked() -> Result<()> {
        let strategy = registry::strategy(Deployment::INFO)?;
        let mut old = Deployment::default();
        old.metadata.name = "web".into();
        old.metadata.namespace = "default".into();
        old.metadata.uid = "u1".into();
        old.metadata.generation = 3;
        old.spec.replicas = Some(2);
        old.status.replicas = 2;
        let mut given = old.clone();
        given.metadata.uid = "forged".into();
        given.status.replicas = 99;
        let old = old.into_object();
        let same_spec = merge(strategy, &given.clone().into_object(), &old, false)?;
        assert_eq!(same_spec.meta().uid, "u1");
        assert_eq!(same_spec.meta().generation, 3);
        assert!(!strategy.bumps_generation(&same_spec, &old));
        let kept: Option<Deployment> = same_spec.into_kind();
        assert_eq!(
            kept.map(|d| d.status.replicas),
            Some(2),
            "update ignores status"
        );
        given.spec.replicas = Some(5);
        let changed = merge(strategy, &given.clone().into_object(), &old, false)?;
        assert!(
            strategy.bumps_generation(&changed, &old),
            "the caller sees the spec change"
        );
        let status = merge(strategy, &given.into_object(), &old, true)?;
        assert_eq!(status.meta().generation, 3);
        assert_eq!(status.meta().uid, "u1");
        let s: Option<Deployment> = status.into_kind();
        assert_eq!(
            s.map(|s| (s.status.replicas, s.spec.replicas)),
            Some((99, Some(2)))
        );
        Ok(())
    }

    #[test]
    fn a_new_object_gets_server_fields_and_loses_a_forged_status() -> Result<()> {
        let strategy = registry::strategy(Deployment::INFO)?;
        let mut d = Deployment::default();
        d.metadata.uid = "forged".into();
        d.metadata.generation = 7;
        d.metadata.deletion_timestamp = Some(time::now());
        d.status.replicas = 5;
        let mut o = d.into_object();
        prepare_create(strategy, &mut o);
        assert_ne!(o.meta().uid, "forged");
        assert_eq!(o.meta().generation, 1);
        assert!(o.meta().deletion_timestamp.is_none());
        assert!(o.meta().creation_timestamp.is_some());
        assert_eq!(
            o.into_kind::<Deployment>().map(|d| d.status.replicas),
            Some(0)
        );
        Ok(())
    }
}
