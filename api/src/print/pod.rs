//! Pods: containers ready, the status kubectl derives from the phase and the container states,
//! and restarts.

use std::time::SystemTime;

use super::{
    AGE, Cell, Column, ColumnType, NAME, Print, age_cell, format::since, human_duration, name_cell,
    or_none,
};
use crate::{
    kinds::{Pod, condition},
    meta::time,
};

impl Print for Pod {
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new(
            "Ready",
            ColumnType::String,
            "Containers ready, of the pod's containers.",
        ),
        Column::new(
            "Status",
            ColumnType::String,
            "The pod's phase, or what a container's state says more precisely.",
        ),
        Column::new(
            "Restarts",
            ColumnType::String,
            "Container restarts, with how long ago the last one was.",
        ),
        AGE,
        Column::new("IP", ColumnType::String, "The pod's IP address.").wide(),
        Column::new("Node", ColumnType::String, "The node the pod is bound to.").wide(),
    ];

    fn cells(&self, now: SystemTime) -> Vec<Cell> {
        vec![
            name_cell(&self.metadata),
            ready(self).into(),
            status(self).into(),
            restarts(self, now).into(),
            age_cell(&self.metadata, now),
            or_none(&self.status.pod_ip).into(),
            or_none(&self.spec.node_name).into(),
        ]
    }
}

/// `1/2`: containers ready, of the pod's containers.
fn ready(p: &Pod) -> String {
    let total = p.spec.containers.len();
    let ready = p
        .status
        .container_statuses
        .iter()
        .filter(|c| c.ready)
        .count();
    format!("{ready}/{total}")
}

/// The STATUS cell: the phase, unless a container's state says more (kubectl's rules, less the
/// init containers Skiff does not have).
pub fn status(p: &Pod) -> String {
    let mut reason = match (p.status.reason.as_str(), p.status.phase.as_str()) {
        ("", "") => "Pending".to_owned(),
        ("", phase) => phase.to_owned(),
        (r, _) => r.to_owned(),
    };
    let mut running = false;
    // In reverse, so the first container's state is the one shown.
    for cs in p.status.container_statuses.iter().rev() {
        let state = &cs.state;
        if let Some(w) = state.waiting.as_ref().filter(|w| !w.reason.is_empty()) {
            reason = w.reason.clone();
        } else if let Some(t) = &state.terminated {
            reason = if !t.reason.is_empty() {
                t.reason.clone()
            } else if t.signal != 0 {
                format!("Signal:{}", t.signal)
            } else {
                format!("ExitCode:{}", t.exit_code)
            };
        } else if cs.ready && state.running.is_some() {
            running = true;
        }
    }
    if reason == "Completed" && running {
        let ready = condition(&p.status.conditions, "Ready").is_some_and(|c| c.status == "True");
        reason = if ready { "Running" } else { "NotReady" }.to_owned();
    }
    if p.metadata.deletion_timestamp.is_some() {
        reason = if p.status.reason == "NodeLost" {
            "Unknown"
        } else {
            "Terminating"
        }
        .to_owned();
    }
    reason
}

/// `0`, or `3 (5m ago)` when the last restart's time is known.
fn restarts(p: &Pod, now: SystemTime) -> String {
    let count: i64 = p
        .status
        .container_statuses
        .iter()
        .map(|c| i64::from(c.restart_count))
        .sum();
    let last = p
        .status
        .container_statuses
        .iter()
        .filter_map(|c| c.last_state.terminated.as_ref()?.finished_at.as_deref())
        .filter_map(time::parse)
        .max();
    match last {
        Some(t) if count > 0 => format!("{count} ({} ago)", human_duration(since(t, now))),
        _ => count.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::kinds::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus,
    };

    fn waiting(reason: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: reason.into(),
                ..ContainerStateWaiting::default()
            }),
            ..ContainerState::default()
        }
    }

    fn terminated(t: ContainerStateTerminated) -> ContainerState {
        ContainerState {
            terminated: Some(t),
            ..ContainerState::default()
        }
    }

    fn running(ready: bool) -> ContainerStatus {
        ContainerStatus {
            ready,
            state: ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..ContainerState::default()
            },
            ..ContainerStatus::default()
        }
    }

    #[test]
    fn the_first_containers_waiting_or_terminated_reason_shows_as_the_status() {
        let mut p = Pod::default();
        assert_eq!(status(&p), "Pending");
        p.status.phase = "Running".into();
        p.status.container_statuses = vec![running(true), running(false)];
        assert_eq!(status(&p), "Running");
        p.status.container_statuses[1].state = waiting("ImagePullBackOff");
        assert_eq!(status(&p), "ImagePullBackOff");
        p.status.container_statuses[0].state = waiting("CrashLoopBackOff");
        assert_eq!(status(&p), "CrashLoopBackOff");
        p.status.container_statuses[0].state = terminated(ContainerStateTerminated {
            signal: 9,
            ..ContainerStateTerminated::default()
        });
        assert_eq!(status(&p), "Signal:9");
        p.status.container_statuses[0].state = terminated(ContainerStateTerminated {
            exit_code: 2,
            ..ContainerStateTerminated::default()
        });
        assert_eq!(status(&p), "ExitCode:2");
    }

    #[test]
    fn a_deleted_pod_is_terminating_or_unknown_when_its_node_is_lost() {
        let mut p = Pod::default();
        p.status.container_statuses.push(ContainerStatus {
            state: waiting("ImagePullBackOff"),
            ..ContainerStatus::default()
        });
        p.metadata.deletion_timestamp = Some(time::now());
        assert_eq!(status(&p), "Terminating");
        p.status.reason = "NodeLost".into();
        assert_eq!(status(&p), "Unknown");
    }

    #[test]
    fn restarts_add_up_with_how_long_ago_the_last_one_was() {
        let now = time::parse("2026-01-01T01:00:00Z").unwrap_or(SystemTime::UNIX_EPOCH);
        let mut p = Pod::default();
        assert_eq!(restarts(&p, now), "0");
        p.status.container_statuses = vec![running(true), running(true)];
        p.status.container_statuses[0].restart_count = 1;
        p.status.container_statuses[1].restart_count = 2;
        assert_eq!(restarts(&p, now), "3", "no time of the last restart");
        p.status.container_statuses[1].last_state = terminated(ContainerStateTerminated {
            finished_at: Some(time::format(now - Duration::from_secs(300))),
            ..ContainerStateTerminated::default()
        });
        assert_eq!(restarts(&p, now), "3 (5m ago)");
    }
}
