//! Pods: containers ready, the status kubectl derives from the phase and the container states,
//! and restarts.

use std::time::SystemTime;

use super::{
    AGE, Cell, Column, ColumnType, NAME, Print, age_cell, format::since, human_duration, name_cell,
    or_none,
};
use crate::{
    kinds::{Container, ContainerStatus, Pod, condition},
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

/// `1/2`: containers ready, of the pod's containers (sidecars, the init containers that keep
/// running, count as kubectl counts them).
fn ready(p: &Pod) -> String {
    let sidecars = p
        .spec
        .init_containers
        .iter()
        .filter(|c| is_sidecar(c))
        .count();
    let total = p.spec.containers.len() + sidecars;
    let ready = p
        .status
        .container_statuses
        .iter()
        .chain(
            p.status
                .init_container_statuses
                .iter()
                .filter(|cs| sidecar_started(p, cs)),
        )
        .filter(|c| c.ready)
        .count();
    format!("{ready}/{total}")
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// A sidecar whose status says it has started.
fn sidecar_started(p: &Pod, cs: &ContainerStatus) -> bool {
    cs.started == Some(true)
        && p.spec
            .init_containers
            .iter()
            .any(|c| c.name == cs.name && is_sidecar(c))
}

/// What the init containers say while the pod initializes (kubectl's rules): `Init:1/3` while
/// the second of three runs, `Init:<reason>` for one that failed or waits with a reason (`Init:
/// CrashLoopBackOff`, `Init:Error`); `None` once every one has completed (or, for a sidecar,
/// started) or when the pod's `Initialized` condition is true.
fn initializing(p: &Pod) -> Option<String> {
    if condition(&p.status.conditions, "Initialized").is_some_and(|c| c.status == "True") {
        return None;
    }
    let total = p.spec.init_containers.len();
    for (i, cs) in p.status.init_container_statuses.iter().enumerate() {
        let state = &cs.state;
        if state.terminated.as_ref().is_some_and(|t| t.exit_code == 0) || sidecar_started(p, cs) {
            continue;
        }
        if let Some(t) = &state.terminated {
            return Some(if !t.reason.is_empty() {
                format!("Init:{}", t.reason)
            } else if t.signal != 0 {
                format!("Init:Signal:{}", t.signal)
            } else {
                format!("Init:ExitCode:{}", t.exit_code)
            });
        }
        if let Some(w) = state
            .waiting
            .as_ref()
            .filter(|w| !w.reason.is_empty() && w.reason != "PodInitializing")
        {
            return Some(format!("Init:{}", w.reason));
        }
        return Some(format!("Init:{i}/{total}"));
    }
    None
}

/// The STATUS cell: the phase, unless an init container or a container's state says more
/// (kubectl's rules).
pub fn status(p: &Pod) -> String {
    let mut reason = match (p.status.reason.as_str(), p.status.phase.as_str()) {
        ("", "") => "Pending".to_owned(),
        ("", phase) => phase.to_owned(),
        (r, _) => r.to_owned(),
    };
    if let Some(init) = initializing(p) {
        reason = init;
    } else {
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
            let ready =
                condition(&p.status.conditions, "Ready").is_some_and(|c| c.status == "True");
            reason = if ready { "Running" } else { "NotReady" }.to_owned();
        }
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

/// `0`, or `3 (5m ago)` when the last restart's time is known: the init containers' restarts
/// while the pod initializes, then the containers' and sidecars' (as kubectl counts).
fn restarts(p: &Pod, now: SystemTime) -> String {
    let counted: Vec<&ContainerStatus> = if initializing(p).is_some() {
        p.status.init_container_statuses.iter().collect()
    } else {
        let sidecars = p.status.init_container_statuses.iter().filter(|cs| {
            p.spec
                .init_containers
                .iter()
                .any(|c| c.name == cs.name && is_sidecar(c))
        });
        p.status.container_statuses.iter().chain(sidecars).collect()
    };
    let count: i64 = counted.iter().map(|c| i64::from(c.restart_count)).sum();
    let last = counted
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

    fn init_pod(names: &[&str]) -> Pod {
        let mut p = Pod::default();
        p.status.phase = "Pending".into();
        for name in names {
            p.spec.init_containers.push(Container {
                name: (*name).into(),
                ..Container::default()
            });
            p.status.init_container_statuses.push(ContainerStatus {
                name: (*name).into(),
                state: waiting("PodInitializing"),
                ..ContainerStatus::default()
            });
        }
        p.spec.containers.push(Container {
            name: "app".into(),
            ..Container::default()
        });
        p.status.container_statuses.push(ContainerStatus {
            name: "app".into(),
            state: waiting("PodInitializing"),
            ..ContainerStatus::default()
        });
        p
    }

    fn completed() -> ContainerState {
        terminated(ContainerStateTerminated {
            reason: "Completed".into(),
            ..ContainerStateTerminated::default()
        })
    }

    #[test]
    fn init_containers_show_as_init_progress_failure_or_waiting_reason_like_kubectl() {
        let mut p = init_pod(&["migrate", "seed"]);
        assert_eq!(status(&p), "Init:0/2");
        p.status.init_container_statuses[0].state = completed();
        assert_eq!(status(&p), "Init:1/2");
        p.status.init_container_statuses[1].state = waiting("CrashLoopBackOff");
        assert_eq!(status(&p), "Init:CrashLoopBackOff");
        p.status.init_container_statuses[1].state = terminated(ContainerStateTerminated {
            exit_code: 1,
            reason: "Error".into(),
            ..ContainerStateTerminated::default()
        });
        assert_eq!(status(&p), "Init:Error");
        p.status.init_container_statuses[1].state = terminated(ContainerStateTerminated {
            exit_code: 3,
            ..ContainerStateTerminated::default()
        });
        assert_eq!(status(&p), "Init:ExitCode:3");
        p.status.init_container_statuses[1].state = completed();
        assert_eq!(status(&p), "PodInitializing");
        p.status.container_statuses[0] = running(true);
        p.status.phase = "Running".into();
        assert_eq!(status(&p), "Running");
    }

    #[test]
    fn an_initialized_pod_shows_its_containers_state_not_its_init_containers() {
        let mut p = init_pod(&["migrate"]);
        p.status.conditions.push(crate::kinds::Condition {
            type_: "Initialized".into(),
            status: "True".into(),
            ..Default::default()
        });
        p.status.container_statuses[0].state = waiting("ImagePullBackOff");
        assert_eq!(status(&p), "ImagePullBackOff");
    }

    #[test]
    fn started_sidecars_count_as_ready_containers_and_do_not_block_initialization() {
        let mut p = init_pod(&["proxy", "migrate"]);
        p.spec.init_containers[0].restart_policy = Some("Always".into());
        assert_eq!(ready(&p), "0/2");
        p.status.init_container_statuses[0] = ContainerStatus {
            name: "proxy".into(),
            started: Some(true),
            ..running(true)
        };
        assert_eq!(status(&p), "Init:1/2");
        assert_eq!(ready(&p), "1/2");
    }

    #[test]
    fn restarts_count_init_containers_while_initializing_then_app_containers_and_sidecars() {
        let now = time::parse("2026-01-01T01:00:00Z").unwrap_or(SystemTime::UNIX_EPOCH);
        let mut p = init_pod(&["proxy", "migrate"]);
        p.spec.init_containers[0].restart_policy = Some("Always".into());
        p.status.init_container_statuses[1].restart_count = 4;
        p.status.init_container_statuses[1].state = waiting("CrashLoopBackOff");
        assert_eq!(restarts(&p, now), "4");
        p.status.init_container_statuses[1].state = completed();
        p.status.init_container_statuses[0] = ContainerStatus {
            name: "proxy".into(),
            started: Some(true),
            ..running(true)
        };
        p.status.init_container_statuses[0].restart_count = 1;
        p.status.container_statuses[0].restart_count = 2;
        assert_eq!(
            restarts(&p, now),
            "3",
            "the sidecar's and the app container's"
        );
    }
}
