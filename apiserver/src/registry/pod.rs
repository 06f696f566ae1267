//! Pods: deleted gracefully once bound to a node (its agent stops them, then removes them),
//! and watched by node.

use skiff_api::{Kind, Object, ResourceInfo, kinds::Pod};

use super::{Deletion, Strategy, WatchIndex};

/// The grace period a pod gets when neither the delete nor the pod names one.
const DEFAULT_GRACE_SECONDS: i64 = 30;

#[derive(Debug)]
pub(super) struct PodStrategy;

impl Strategy for PodStrategy {
    fn info(&self) -> &'static ResourceInfo {
        Pod::INFO
    }

    fn deletion(&self, o: &Object, requested_grace: Option<i64>) -> Deletion {
        let Object::Pod(p) = o else {
            return Deletion::Now;
        };
        match grace_period(p, requested_grace) {
            Some(seconds) => Deletion::Graceful { seconds },
            None => Deletion::Now,
        }
    }

    fn watch_index(&self) -> Option<WatchIndex> {
        Some(WatchIndex {
            field: "spec.nodeName",
            value: node_name,
        })
    }
}

fn node_name(o: &Object) -> Option<&str> {
    match o {
        Object::Pod(p) => Some(p.spec.node_name.as_str()),
        _ => None,
    }
}

/// The grace period a pod's deletion waits for, `None` to delete it at once: a pod no node runs
/// (unbound, or finished) has nobody to wait for.
fn grace_period(p: &Pod, requested: Option<i64>) -> Option<i64> {
    if p.spec.node_name.is_empty() || matches!(p.status.phase.as_str(), "Succeeded" | "Failed") {
        return None;
    }
    let grace = requested
        .or(p.spec.termination_grace_period_seconds)
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    (grace > 0).then_some(grace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(node: &str) -> Pod {
        let mut p = Pod::default();
        p.spec.node_name = node.into();
        p
    }

    fn deletion(p: &Pod, requested: Option<i64>) -> Deletion {
        PodStrategy.deletion(&p.clone().into_object(), requested)
    }

    #[test]
    fn a_pod_bound_to_a_node_waits_for_the_requested_then_its_own_then_the_default_grace() {
        let mut p = bound("n1");
        assert_eq!(deletion(&p, None), Deletion::Graceful { seconds: 30 });
        p.spec.termination_grace_period_seconds = Some(5);
        assert_eq!(deletion(&p, None), Deletion::Graceful { seconds: 5 });
        assert_eq!(deletion(&p, Some(2)), Deletion::Graceful { seconds: 2 });
    }

    #[test]
    fn a_pod_no_node_runs_or_a_zero_grace_period_is_deleted_at_once() {
        assert_eq!(deletion(&bound(""), Some(10)), Deletion::Now);
        assert_eq!(deletion(&bound("n1"), Some(0)), Deletion::Now);
        let mut finished = bound("n1");
        for phase in ["Succeeded", "Failed"] {
            finished.status.phase = phase.into();
            assert_eq!(deletion(&finished, None), Deletion::Now, "{phase}");
        }
        let mut zero = bound("n1");
        zero.spec.termination_grace_period_seconds = Some(0);
        assert_eq!(deletion(&zero, None), Deletion::Now);
    }

    #[test]
    fn watchers_are_indexed_by_the_node_a_pod_is_bound_to_unbound_ones_included() {
        let index = PodStrategy.watch_index();
        let Some(WatchIndex { field, value }) = index else {
            panic!("pods are indexed");
        };
        assert_eq!(field, "spec.nodeName");
        assert_eq!(value(&bound("n1").into_object()), Some("n1"));
        assert_eq!(value(&bound("").into_object()), Some(""));
    }
}
