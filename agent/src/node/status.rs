//! What a node reports: the pod status computed from what its containers are doing, and the
//! conditions it keeps with their transition times. Pure functions, so the rules are unit tested.

use std::collections::BTreeSet;

use skiff_api::kinds::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodIp, PodStatus,
};

/// Where one container of a pod stands, as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not started yet (creating, or blocked: missing image, failed create), with the reason.
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: String,
    },
    /// Exited and waiting for its next start (restart policy and back-off).
    BackOff {
        message: String,
    },
    /// Exited and will not be started again.
    Done,
}

/// One container's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerReport {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: String,
    pub phase: Phase,
    /// The last exit (the current one when `phase` is `Done` or `BackOff`).
    pub last_exit: Option<ContainerStateTerminated>,
    pub ready: bool,
    pub restart_count: i32,
}

impl ContainerReport {
    fn status(&self) -> ContainerStatus {
        let (state, last_state) = match &self.phase {
            Phase::Waiting { reason, message } => (
                ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: reason.clone(),
                        message: message.clone(),
                    }),
                    ..ContainerState::default()
                },
                self.last_exit.clone(),
            ),
            Phase::Running { started_at } => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(started_at.clone()),
                    }),
                    ..ContainerState::default()
                },
                self.last_exit.clone(),
            ),
            Phase::BackOff { message } => (
                ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: "CrashLoopBackOff".into(),
                        message: message.clone(),
                    }),
                    ..ContainerState::default()
                },
                self.last_exit.clone(),
            ),
            Phase::Done => (
                ContainerState {
                    terminated: self.last_exit.clone(),
                    ..ContainerState::default()
                },
                None,
            ),
        };
        ContainerStatus {
            name: self.name.clone(),
            ready: self.ready,
            restart_count: self.restart_count,
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            container_id: self.container_id.clone(),
            started: Some(matches!(self.phase, Phase::Running { .. })),
            state,
            last_state: ContainerState {
                terminated: last_state,
                ..ContainerState::default()
            },
        }
    }
}

/// The pod phase from its containers, by the kubelet's rules: Pending while a container has
/// never run; Running while one runs or will run again; Succeeded when all exited 0 for good;
/// Failed when all exited for good and one failed.
pub fn pod_phase(containers: &[ContainerReport]) -> &'static str {
    let never_ran = containers
        .iter()
        .any(|c| matches!(c.phase, Phase::Waiting { .. }) && c.last_exit.is_none());
    if never_ran || containers.is_empty() {
        return "Pending";
    }
    if containers.iter().any(|c| !matches!(c.phase, Phase::Done)) {
        return "Running";
    }
    let failed = containers
        .iter()
        .any(|c| c.last_exit.as_ref().is_some_and(|e| e.exit_code != 0));
    if failed { "Failed" } else { "Succeeded" }
}

/// Sets condition `type_` in `conditions` to `status`, keeping its transition time when the
/// status did not change (and the heartbeat time always).
pub use skiff_runtime::conditions::rewrite as set_condition;

/// What the node knows of a pod besides its containers.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    pub host_ip: String,
    pub pod_ip: Option<String>,
    /// When the node first started work on the pod.
    pub start_time: String,
    /// Why the pod cannot start at all (its network failed), shown as the pod's message.
    pub message: String,
}

/// The status the node reports for `pod`: conditions it does not own are kept, and so are the
/// transition times of those whose status did not change.
pub fn pod_status(
    pod: &Pod,
    facts: &PodFacts,
    containers: &[ContainerReport],
    now: &str,
) -> PodStatus {
    let old = &pod.status;
    let phase = pod_phase(containers);
    let mut conditions = old.conditions.clone();
    set_condition(&mut conditions, "Initialized", "True", "", "", now);
    let unready: Vec<&str> = containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let (status, reason, message) = if unready.is_empty() && !containers.is_empty() {
        ("True", String::new(), String::new())
    } else {
        (
            "False",
            "ContainersNotReady".to_owned(),
            format!("containers with unready status: [{}]", unready.join(" ")),
        )
    };
    set_condition(
        &mut conditions,
        "ContainersReady",
        status,
        &reason,
        &message,
        now,
    );
    // A pod that finished is never ready, whatever its containers last said.
    let (status, reason) = if phase == "Succeeded" || phase == "Failed" {
        ("False", "PodCompleted".to_owned())
    } else {
        (status, reason)
    };
    set_condition(&mut conditions, "Ready", status, &reason, &message, now);
    let order: BTreeSet<&str> = ["PodScheduled", "Initialized", "ContainersReady", "Ready"].into();
    conditions.sort_by_key(|c| (!order.contains(c.type_.as_str()), c.type_ != "PodScheduled"));
    let pod_ip = facts.pod_ip.clone().unwrap_or_default();
    PodStatus {
        phase: phase.into(),
        conditions,
        reason: String::new(),
        message: facts.message.clone(),
        host_ip: facts.host_ip.clone(),
        pod_ips: if pod_ip.is_empty() {
            Vec::new()
        } else {
            vec![PodIp { ip: pod_ip.clone() }]
        },
        pod_ip,
        start_time: old
            .start_time
            .clone()
            .or_else(|| Some(facts.start_time.clone())),
        container_statuses: containers.iter().map(ContainerReport::status).collect(),
        ..Default::default()
    }
}

/// The status of a pod the node refuses to run (the kubelet's admission failure): phase
/// Failed with `reason` and `message`, not ready, no containers started.
pub fn refused(pod: &Pod, reason: &str, message: &str, host_ip: &str, now: &str) -> PodStatus {
    let old = &pod.status;
    let mut conditions = old.conditions.clone();
    for type_ in ["ContainersReady", "Ready"] {
        set_condition(&mut conditions, type_, "False", reason, message, now);
    }
    PodStatus {
        phase: "Failed".into(),
        conditions,
        reason: reason.into(),
        message: message.into(),
        host_ip: host_ip.into(),
        start_time: old.start_time.clone().or_else(|| Some(now.to_owned())),
        ..PodStatus::default()
    }
}

/// Whether `status` already says the pod was refused for `reason` with `message`.
pub fn is_refused(status: &PodStatus, reason: &str, message: &str) -> bool {
    status.phase == "Failed" && status.reason == reason && status.message == message
}

/// The terminated state of an exit: reason `OOMKilled`, `Completed` (code 0) or `Error`.
pub fn terminated(
    exit_code: i32,
    oom_killed: bool,
    started_at: Option<String>,
    finished_at: String,
    container_id: &str,
) -> ContainerStateTerminated {
    let reason = if oom_killed {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ContainerStateTerminated {
        exit_code,
        signal: if exit_code > 128 { exit_code - 128 } else { 0 },
        reason: reason.into(),
        message: String::new(),
        started_at,
        finished_at: Some(finished_at),
        container_id: container_id.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, phase: Phase, last_exit: Option<i32>, ready: bool) -> ContainerReport {
        ContainerReport {
            name: name.into(),
            image: "busybox".into(),
            image_id: String::new(),
            container_id: String::new(),
            phase,
            last_exit: last_exit.map(|c| terminated(c, false, None, "t".into(), "")),
            ready,
            restart_count: 0,
        }
    }

    fn running() -> Phase {
        Phase::Running {
            started_at: "t".into(),
        }
    }

    fn waiting() -> Phase {
        Phase::Waiting {
            reason: "ContainerCreating".into(),
            message: String::new(),
        }
    }

    #[test]
    fn a_refused_pod_is_failed_with_the_reason_and_is_recognised_as_already_refused() {
        let mut pod = Pod::default();
        pod.status.start_time = Some("t0".into());
        let s = refused(
            &pod,
            "InvalidPod",
            "metadata.uid: Invalid value",
            "10.0.0.1",
            "t1",
        );
        assert_eq!(s.phase, "Failed");
        assert_eq!(s.reason, "InvalidPod");
        assert_eq!(s.host_ip, "10.0.0.1");
        assert_eq!(s.start_time.as_deref(), Some("t0"));
        assert!(s.container_statuses.is_empty() && s.pod_ip.is_empty());
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready");
        assert_eq!(ready.map(|c| c.status.as_str()), Some("False"));
        assert!(!is_refused(
            &pod.status,
            "InvalidPod",
            "metadata.uid: Invalid value"
        ));
        assert!(is_refused(&s, "InvalidPod", "metadata.uid: Invalid value"));
        assert!(!is_refused(&s, "InvalidPod", "another reason"));
        // Written again, nothing changes (no second write).
        pod.status = s.clone();
        assert_eq!(
            refused(
                &pod,
                "InvalidPod",
                "metadata.uid: Invalid value",
                "10.0.0.1",
                "t2"
            ),
            s
        );
    }

    #[test]
    fn phases_follow_the_kubelets_rules() {
        assert_eq!(pod_phase(&[report("a", waiting(), None, false)]), "Pending");
        assert_eq!(
            pod_phase(&[
                report("a", running(), None, true),
                report("b", waiting(), None, false)
            ]),
            "Pending"
        );
        assert_eq!(pod_phase(&[report("a", running(), None, false)]), "Running");
        // Waiting again after an exit is a restart, not a pending pod.
        assert_eq!(
            pod_phase(&[report(
                "a",
                Phase::BackOff {
                    message: String::new()
                },
                Some(1),
                false
            )]),
            "Running"
        );
        assert_eq!(
            pod_phase(&[report("a", Phase::Done, Some(0), false)]),
            "Succeeded"
        );
        assert_eq!(
            pod_phase(&[
                report("a", Phase::Done, Some(0), false),
                report("b", Phase::Done, Some(2), false)
            ]),
            "Failed"
        );
        assert_eq!(pod_phase(&[]), "Pending");
    }

    #[test]
    fn ready_needs_every_container_and_keeps_transition_times() {
        let mut pod = Pod::default();
        let facts = PodFacts {
            host_ip: "10.250.0.2".into(),
            pod_ip: Some("10.244.0.2".into()),
            start_time: "t0".into(),
            message: String::new(),
        };
        let cs = [
            report("a", running(), None, true),
            report("b", running(), None, false),
        ];
        pod.status = pod_status(&pod, &facts, &cs, "t1");
        let ready = skiff_api::kinds::condition(&pod.status.conditions, "Ready").cloned();
        let ready = ready.expect("a Ready condition");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.message, "containers with unready status: [b]");
        assert_eq!(pod.status.pod_ip, "10.244.0.2");
        assert_eq!(pod.status.start_time.as_deref(), Some("t0"));
        // Unchanged status: the transition time stays; changed: it moves.
        pod.status = pod_status(&pod, &facts, &cs, "t2");
        let c = skiff_api::kinds::condition(&pod.status.conditions, "Ready").cloned();
        assert_eq!(
            c.and_then(|c| c.last_transition_time).as_deref(),
            Some("t1")
        );
        let cs = [
            report("a", running(), None, true),
            report("b", running(), None, true),
        ];
        pod.status = pod_status(&pod, &facts, &cs, "t3");
        let c = skiff_api::kinds::condition(&pod.status.conditions, "Ready").cloned();
        let c = c.expect("a Ready condition");
        assert_eq!(
            (c.status.as_str(), c.last_transition_time.as_deref()),
            ("True", Some("t3"))
        );
    }

    #[test]
    fn exits_get_kubernetes_reasons() {
        assert_eq!(
            terminated(0, false, None, "t".into(), "").reason,
            "Completed"
        );
        assert_eq!(terminated(1, false, None, "t".into(), "").reason, "Error");
        let oom = terminated(137, true, None, "t".into(), "");
        assert_eq!((oom.reason.as_str(), oom.signal), ("OOMKilled", 9));
    }
}
