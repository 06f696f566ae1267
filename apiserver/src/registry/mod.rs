//! Per-kind strategies, in the shape of Kubernetes' registry strategies: everything the generic
//! store (`objects.rs`) needs to know about a kind — how a new or updated object is prepared,
//! defaulted, validated and made canonical, what it allocates, what deleting it does, how a watch
//! of it is indexed and how it is printed — sits behind [`Strategy`], one file per kind. The store
//! itself branches on no kind.
//!
//! Adding a kind: its serde types, validation and printer in skiff-api, one strategy file here,
//! and one line in [`STRATEGIES`].

mod configmap;
mod deployment;
mod endpoints;
mod lease;
pub mod namespace;
mod node;
mod pod;
mod replicaset;
mod secret;
pub mod service;

use std::{collections::BTreeSet, fmt, time::SystemTime};

use serde_json::Value;
use skiff_api::{
    DecodeError, FieldError, Object, ResourceInfo,
    object::resource_by_plural,
    print::{self, Cell, Column},
};

use super::{
    alloc::{Allocation, Pool},
    error::{ApiError, Result},
};

/// Every kind's strategy. The order matters in one place: a namespace is emptied in this order,
/// so owners must come before what they own (no controller then sees its objects vanish from
/// under it and recreates them); a unit test holds every strategy's dependents to it.
static STRATEGIES: &[&dyn Strategy] = &[
    &namespace::NamespaceStrategy,
    &node::NodeStrategy,
    &deployment::DeploymentStrategy,
    &replicaset::ReplicaSetStrategy,
    &service::ServiceStrategy,
    &endpoints::EndpointsStrategy,
    &configmap::ConfigMapStrategy,
    &secret::SecretStrategy,
    &pod::PodStrategy,
    &lease::LeaseStrategy,
];

/// What the generic store asks of one kind. Every method has the behaviour most kinds want as
/// its default; a kind's strategy overrides what is particular to it.
pub trait Strategy: fmt::Debug + Send + Sync {
    /// The resource this strategy serves.
    fn info(&self) -> &'static ResourceInfo;

    // Create and update: what Kubernetes splits into its create and update strategies.

    /// On create, before defaults: clears what a writer may not set on a new object. By default
    /// the status, which is the system's to write when it is a subresource.
    fn prepare_for_create(&self, o: &mut Object) {
        if self.info().has_status {
            clear_status(o);
        }
    }

    /// On create, on update, and on the stored object when judging an update: fills the
    /// defaults a Kubernetes API server would.
    fn apply_defaults(&self, o: &mut Object) {
        o.apply_defaults();
    }

    /// Checks the object on its own (skiff-api's validation); empty means valid.
    fn validate(&self, o: &Object) -> Vec<FieldError> {
        o.validate()
    }

    /// Checks an update against the stored object (immutable fields).
    fn validate_update(&self, new: &Object, old: &Object) -> Vec<FieldError> {
        new.validate_update(old)
    }

    /// On a main-resource update, before defaults: the object to store is the writer's, with
    /// the status kept from the stored object when status is a subresource (the generic store
    /// then restores the server-owned metadata).
    fn prepare_for_update(&self, given: &Object, old: &Object) -> Result<Object, DecodeError> {
        let mut new = given.to_value();
        if self.info().has_status
            && let Value::Object(m) = &mut new
        {
            match old.to_value().get("status") {
                Some(s) => m.insert("status".into(), s.clone()),
                None => m.remove("status"),
            };
        }
        Object::from_value(new)
    }

    /// On an update of the status subresource: the stored object with the writer's status,
    /// everything else kept.
    fn prepare_for_status_update(
        &self,
        given: &Object,
        old: &Object,
    ) -> Result<Object, DecodeError> {
        let mut new = old.to_value();
        let status = given.to_value().get("status").cloned();
        if let Value::Object(m) = &mut new {
            match status {
                Some(s) if !s.is_null() => m.insert("status".into(), s),
                _ => m.remove("status"),
            };
        }
        Object::from_value(new)
    }

    /// On any update, after defaults: fields the writer left empty that the server assigned to
    /// the stored object keep their value (what `kubectl apply` relies on).
    fn keep_assigned(&self, _new: &mut Object, _old: &Object) {}

    /// Whether a main-resource update changes what `metadata.generation` counts (compared after
    /// defaults): by default everything but metadata and status.
    fn bumps_generation(&self, new: &Object, old: &Object) -> bool {
        spec_part(new) != spec_part(old)
    }

    // Allocation: Kubernetes does this in the Service storage around its strategy; here any kind
    // may hold allocations, and the store claims and releases them in the object's transaction.

    /// What the object holds from the allocation pools (each one an etcd key written in the
    /// same transaction as the object, and released with it).
    fn allocations(&self, _o: &Object) -> BTreeSet<Allocation> {
        BTreeSet::new()
    }

    /// The fields the server is to fill from a pool, because the writer left them empty.
    fn unallocated(&self, _o: &Object) -> Vec<Slot> {
        Vec::new()
    }

    /// Fills one slot of [`Strategy::unallocated`] with what the pool gave.
    fn assign(&self, _o: &mut Object, _slot: Slot, _given: Allocation) {}

    /// After allocation, before the write: puts the object in its canonical form.
    fn canonicalize(&self, _o: &mut Object) {}

    // Delete: Kubernetes' delete and graceful-delete strategies, the namespace's own deletion,
    // and the owner cascades its garbage collector would make.

    /// Refuses the deletion of an object that must stay (checked after the caller's
    /// preconditions).
    fn check_delete(&self, _o: &Object) -> Result<()> {
        Ok(())
    }

    /// What deleting the object does, given the grace period the caller asked for.
    fn deletion(&self, _o: &Object, _requested_grace: Option<i64>) -> Deletion {
        Deletion::Now
    }

    /// For a kind deleted by [`Deletion::Contents`]: whether the object refuses new contents
    /// (it is being emptied).
    fn is_terminating(&self, _o: &Object) -> bool {
        false
    }

    /// For a kind deleted by [`Deletion::Contents`]: marks the object as being emptied; `false`
    /// when it already was.
    fn mark_terminating(&self, _o: &mut Object) -> bool {
        false
    }

    /// The kinds whose objects Skiff's controllers make owned by an object of this kind: a
    /// delete cascades to them (or orphans them) as the caller's propagation policy says.
    fn dependents(&self) -> &'static [&'static ResourceInfo] {
        &[]
    }

    // Watch and print: the watch cache's index, and the columns a server-side Table is made of.

    /// A field the watch cache indexes watchers by, when most watchers of the kind select one
    /// value of it (every node agent watches the pods of its node).
    fn watch_index(&self) -> Option<WatchIndex> {
        None
    }

    /// The columns of the kind's table, the name first: skiff-api's printer of the kind, the
    /// one skiffctl prints with too.
    fn columns(&self) -> &'static [Column] {
        print::columns(self.info())
    }

    /// One object's row, a cell for each of [`Strategy::columns`].
    fn cells(&self, o: &Object, now: SystemTime) -> Vec<Cell> {
        print::cells(o, now)
    }
}

/// What a delete does to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Removed at once, and what it holds released.
    Now,
    /// Marked with a deletion timestamp and this grace period; whoever runs it (its node's
    /// agent) removes it once stopped.
    Graceful { seconds: i64 },
    /// Marked as terminating, emptied of every namespaced object in it, then removed.
    Contents,
}

/// A field the server fills from an allocation pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub pool: Pool,
    /// Which of the object's fields drawing from that pool (a Service's port index).
    pub index: usize,
}

/// A field watchers are indexed by, and how to read it cheaply from an object.
#[derive(Debug, Clone, Copy)]
pub struct WatchIndex {
    /// The field selector path (`spec.nodeName`).
    pub field: &'static str,
    /// The object's value of it, `None` when it has none.
    pub value: fn(&Object) -> Option<&str>,
}

/// The strategy of a resource.
pub fn strategy(info: &ResourceInfo) -> Result<&'static dyn Strategy> {
    STRATEGIES
        .iter()
        .copied()
        .find(|s| s.info().plural == info.plural)
        .ok_or_else(|| ApiError::UnknownResource {
            resource: info.plural.to_owned(),
        })
}

/// Looks a resource up by its plural name, as requests name it.
pub fn resource(name: &str) -> Result<&'static ResourceInfo> {
    resource_by_plural(name).ok_or_else(|| ApiError::UnknownResource {
        resource: name.to_owned(),
    })
}

/// The strategy of namespaces, which the store consults for every namespaced object (a create in
/// a terminating namespace is refused).
pub fn namespaces() -> &'static dyn Strategy {
    &namespace::NamespaceStrategy
}

/// Every namespaced kind, in the order a namespace is emptied.
pub fn namespaced() -> impl Iterator<Item = &'static dyn Strategy> {
    STRATEGIES.iter().copied().filter(|s| s.info().namespaced)
}

/// Removes the status, the system's to write.
fn clear_status(o: &mut Object) {
    let mut v = o.to_value();
    if let Value::Object(m) = &mut v {
        m.remove("status");
    }
    if let Ok(cleared) = Object::from_value(v) {
        *o = cleared;
    }
}

/// Everything but metadata and status: what `generation` counts changes of.
fn spec_part(o: &Object) -> Value {
    let mut v = o.to_value();
    if let Value::Object(m) = &mut v {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

#[cfg(test)]
mod tests {
    use skiff_api::{
        Kind,
        kinds::{Deployment, Lease, Node, Pod},
        object::RESOURCES,
    };

    use super::*;

    #[test]
    fn every_resource_has_exactly_one_strategy() {
        for info in RESOURCES {
            let n = STRATEGIES
                .iter()
                .filter(|s| s.info().plural == info.plural)
                .count();
            assert_eq!(n, 1, "{}", info.plural);
        }
        assert_eq!(STRATEGIES.len(), RESOURCES.len());
    }

    #[test]
    fn owners_come_before_what_they_own_so_a_namespace_is_emptied_top_down() {
        let position = |plural: &str| STRATEGIES.iter().position(|s| s.info().plural == plural);
        for s in STRATEGIES {
            for dep in s.dependents() {
                assert!(
                    position(s.info().plural) < position(dep.plural),
                    "{} owns {} but comes after it",
                    s.info().plural,
                    dep.plural
                );
            }
        }
        let order: Vec<&str> = namespaced().map(|s| s.info().plural).collect();
        assert_eq!(
            order,
            [
                "deployments",
                "replicasets",
                "services",
                "endpoints",
                "configmaps",
                "secrets",
                "pods",
                "leases"
            ]
        );
    }

    /// A strategy that printed its kind otherwise would make `kubectl get` (the server's Table)
    /// and `skiffctl get` disagree.
    #[test]
    fn every_strategy_prints_with_the_printers_skiffctl_uses() -> Result<()> {
        let now = SystemTime::now();
        for info in RESOURCES {
            let s = strategy(info)?;
            let json = format!(
                r#"{{"apiVersion":"{}","kind":"{}","metadata":{{"name":"x","creationTimestamp":"2026-01-01T00:00:00Z"}}}}"#,
                info.api_version, info.kind
            );
            let o = Object::from_json(json.as_bytes())?;
            assert_eq!(s.columns(), print::columns(info), "{}", info.plural);
            assert_eq!(s.cells(&o, now), print::cells(&o, now), "{}", info.plural);
        }
        Ok(())
    }

    #[test]
    fn status_is_cleared_on_create_except_where_a_kind_keeps_it() -> Result<()> {
        let mut d = Deployment::default();
        d.status.replicas = 3;
        let mut o = d.into_object();
        strategy(<Deployment as Kind>::INFO)?.prepare_for_create(&mut o);
        assert_eq!(
            o.into_kind::<Deployment>().map(|d| d.status.replicas),
            Some(0)
        );
        let mut n = Node::default();
        n.status.node_info.kubelet_version = "v1".into();
        let mut o = n.into_object();
        strategy(<Node as Kind>::INFO)?.prepare_for_create(&mut o);
        assert_eq!(
            o.into_kind::<Node>()
                .map(|n| n.status.node_info.kubelet_version),
            Some("v1".into()),
            "a node's agent reports its status as it registers"
        );
        Ok(())
    }

    #[test]
    fn update_keeps_the_stored_status_and_a_status_update_keeps_the_stored_rest() -> Result<()> {
        let mut old = Deployment::default();
        old.spec.replicas = Some(2);
        old.status.replicas = 2;
        let mut given = old.clone();
        given.spec.replicas = Some(5);
        given.status.replicas = 99;
        let (old, given) = (old.into_object(), given.into_object());
        let s = strategy(<Deployment as Kind>::INFO)?;
        let main = s
            .prepare_for_update(&given, &old)?
            .into_kind::<Deployment>();
        assert_eq!(
            main.map(|d| (d.spec.replicas, d.status.replicas)),
            Some((Some(5), 2))
        );
        let status = s
            .prepare_for_status_update(&given, &old)?
            .into_kind::<Deployment>();
        assert_eq!(
            status.map(|d| (d.spec.replicas, d.status.replicas)),
            Some((Some(2), 99))
        );
        Ok(())
    }

    #[test]
    fn a_kind_without_a_status_subresource_takes_the_whole_object_on_update() -> Result<()> {
        let old = Lease::default();
        let mut given = old.clone();
        given.spec.holder_identity = Some("me".into());
        let s = strategy(<Lease as Kind>::INFO)?;
        let new = s
            .prepare_for_update(&given.into_object(), &old.into_object())?
            .into_kind::<Lease>();
        assert_eq!(new.and_then(|l| l.spec.holder_identity), Some("me".into()));
        Ok(())
    }

    #[test]
    fn generation_counts_spec_changes_only() -> Result<()> {
        let mut old = Pod::default();
        old.spec.node_name = "n1".into();
        let mut status_only = old.clone();
        status_only.status.phase = "Running".into();
        status_only.metadata.labels.insert("a".into(), "b".into());
        let mut spec = old.clone();
        spec.spec.node_name = "n2".into();
        let s = strategy(<Pod as Kind>::INFO)?;
        let old = old.into_object();
        assert!(!s.bumps_generation(&status_only.into_object(), &old));
        assert!(s.bumps_generation(&spec.into_object(), &old));
        Ok(())
    }
}
