//! Facts about pods and nodes that several controllers (and the scheduler) judge alike.

use std::time::{Duration, SystemTime};

use skiff_api::{
    kinds::{Node, Pod, condition},
    meta::time,
};

/// Not being deleted and not finished: a pod that counts towards its owner's replicas.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.phase != "Succeeded"
        && pod.status.phase != "Failed"
}

/// Ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: SystemTime) -> bool {
    let Some(ready) = condition(&pod.status.conditions, "Ready").filter(|c| c.status == "True")
    else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    let min = Duration::from_secs(u64::try_from(min_ready_seconds).unwrap_or(0));
    ready
        .last_transition_time
        .as_deref()
        .and_then(time::parse)
        .is_some_and(|since| since + min <= now)
}

/// When a Ready pod becomes available (ready for `min_ready_seconds`), if it is not yet.
pub fn available_in(pod: &Pod, min_ready_seconds: i32, now: SystemTime) -> Option<Duration> {
    let ready = condition(&pod.status.conditions, "Ready").filter(|c| c.status == "True")?;
    let since = ready
        .last_transition_time
        .as_deref()
        .and_then(time::parse)?;
    let min = Duration::from_secs(u64::try_from(min_ready_seconds.max(0)).unwrap_or(0));
    (since + min)
        .duration_since(now)
        .ok()
        .filter(|d| !d.is_zero())
}

/// The node's `Ready` condition is `True`.
pub fn node_is_ready(node: &Node) -> bool {
    condition(&node.status.conditions, "Ready").is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use skiff_api::kinds::Condition;

    use super::*;

    fn pod_ready_since(secs_ago: u64) -> Pod {
        let mut p = Pod::default();
        p.status.conditions.push(Condition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some(time::format(
                SystemTime::now() - Duration::from_secs(secs_ago),
            )),
            ..Condition::default()
        });
        p
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let now = SystemTime::now();
        assert!(is_available(&pod_ready_since(0), 0, now));
        assert!(!is_available(&pod_ready_since(2), 10, now));
        assert!(is_available(&pod_ready_since(20), 10, now));
        let left = available_in(&pod_ready_since(2), 10, now).unwrap();
        assert!(
            left > Duration::from_secs(6) && left <= Duration::from_secs(9),
            "{left:?}"
        );
        assert!(!is_available(&Pod::default(), 0, now));
        assert!(is_active(&Pod::default()));
    }
}
