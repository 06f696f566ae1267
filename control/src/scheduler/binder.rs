//! The scheduler's writes to the API server: bindings (`spec.nodeName`, compare-and-swap on the
//! pod's resourceVersion) and `PodScheduled=False` conditions. Both re-read the pod after a
//! conflict or an uncertain failure, because it may meanwhile have been bound or deleted.

use std::{sync::Arc, time::Duration};

use skiff_api::{
    client::{Client, ClientError},
    kinds::Pod,
    meta::time,
};
use skiff_runtime::conditions;

/// Tries per write before giving up (each conflict or failure costs one).
const ATTEMPTS: u32 = 4;

/// What became of a binding.
#[derive(Debug)]
pub(super) enum BindResult {
    /// The pod is bound to the node asked for.
    Bound,
    /// It was bound to this other node (by someone else).
    BoundElsewhere(String),
    /// Deleted (or being deleted, or replaced by a new pod of the same name).
    Gone,
    Failed(ClientError),
    /// No answer within the time allowed (the binding may or may not have been written).
    TimedOut,
}

/// The pod as the server has it now, or `None` if it is gone.
async fn reread(client: &Client, pod: &Pod) -> Result<Option<Pod>, ClientError> {
    match client
        .get::<Pod>(&pod.metadata.namespace, &pod.metadata.name)
        .await
    {
        Ok(p) if p.metadata.uid != pod.metadata.uid => Ok(None),
        Ok(p) => Ok(Some(p)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn pause(attempt: u32) -> Duration {
    Duration::from_millis(50 << attempt.min(5))
}

/// Sets `spec.nodeName` of `pod` to `node`.
pub(super) async fn bind(client: Client, pod: Arc<Pod>, node: Arc<str>) -> BindResult {
    let mut current = Pod::clone(&pod);
    let mut attempt = 0;
    loop {
        attempt += 1;
        current.spec.node_name = node.to_string();
        let e = match client.update(&current).await {
            Ok(_) => return BindResult::Bound,
            Err(e) if e.is_not_found() => return BindResult::Gone,
            Err(e) => e,
        };
        if attempt >= ATTEMPTS {
            return BindResult::Failed(e);
        }
        if !e.is_conflict() {
            // The write may or may not have happened; the re-read says which.
            tokio::time::sleep(pause(attempt)).await;
        }
        match reread(&client, &pod).await {
            Ok(None) => return BindResult::Gone,
            Ok(Some(p)) if p.spec.node_name == *node => return BindResult::Bound,
            Ok(Some(p)) if !p.spec.node_name.is_empty() => {
                return BindResult::BoundElsewhere(p.spec.node_name);
            }
            Ok(Some(p)) if p.metadata.deletion_timestamp.is_some() => return BindResult::Gone,
            Ok(Some(p)) => current = p,
            // Write again with what we had: if it is stale, that only earns a conflict.
            Err(_) => {}
        }
    }
}

/// Sets the pod's `PodScheduled` condition to False/Unschedulable with `message`; true if the
/// pod's status changed.
pub(super) fn mark_unschedulable(pod: &mut Pod, message: &str, now: &str) -> bool {
    let c = conditions::entry(&mut pod.status.conditions, "PodScheduled");
    let changed = conditions::update(c, "False", "Unschedulable", message, now);
    if changed {
        c.last_probe_time = None;
    }
    changed
}

/// Whether the pod already says it is unschedulable for exactly this reason.
pub(super) fn says_unschedulable(pod: &Pod, message: &str) -> bool {
    pod.status.conditions.iter().any(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason == "Unschedulable"
            && c.message == message
    })
}

/// Writes the unschedulable condition, unless the pod was bound or deleted meanwhile.
pub(super) async fn write_unschedulable(
    client: Client,
    pod: Arc<Pod>,
    message: String,
) -> Result<(), ClientError> {
    let mut seen = Pod::clone(&pod);
    let mut attempt = 0;
    loop {
        attempt += 1;
        if !seen.spec.node_name.is_empty() || seen.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let mut next = seen.clone();
        if !mark_unschedulable(&mut next, &message, &time::now()) {
            return Ok(());
        }
        let e = match client.update_status(&next).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => e,
        };
        if attempt >= ATTEMPTS {
            return Err(e);
        }
        if !e.is_conflict() {
            tokio::time::sleep(pause(attempt)).await;
        }
        match reread(&client, &pod).await {
            Ok(None) => return Ok(()),
            Ok(Some(p)) => seen = p,
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::cache::tests::pod;

    #[test]
    fn the_unschedulable_condition_is_written_once_per_message() {
        let mut p = pod("a", "", "");
        assert!(mark_unschedulable(
            &mut p,
            "0/1 nodes are available: x.",
            "t1"
        ));
        assert!(says_unschedulable(&p, "0/1 nodes are available: x."));
        assert!(!mark_unschedulable(
            &mut p,
            "0/1 nodes are available: x.",
            "t2"
        ));
        // A new message keeps the transition time: the status did not change.
        assert!(mark_unschedulable(
            &mut p,
            "0/2 nodes are available: x.",
            "t3"
        ));
        let c = &p.status.conditions[0];
        assert_eq!(c.last_transition_time.as_deref(), Some("t1"));
        assert_eq!(c.message, "0/2 nodes are available: x.");
        assert_eq!(p.status.conditions.len(), 1);
        // From True to False is a transition.
        p.status.conditions[0].status = "True".into();
        assert!(mark_unschedulable(&mut p, "m", "t4"));
        assert_eq!(
            p.status.conditions[0].last_transition_time.as_deref(),
            Some("t4")
        );
        assert!(!says_unschedulable(&p, "other"));
    }
}
