//! What a node reports: the pod status computed from what its containers are doing, and the
//! conditions it keeps with their transition times. Pure functions, so the rules are unit tested.

use std::collections::BTreeSet;

use skiff_api::kinds::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodIp, PodStatus,
};

use super::termination;

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

/// What a container is to its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A regular init container: runs to completion, in order, before the next one.
    Init,
    /// An init container with `restartPolicy: Always` (a sidecar): started in order with the
    /// init containers, it runs beside the app containers, is restarted whatever the pod's
    /// policy, and is stopped after them.
    Sidecar,
    /// One of `spec.containers`.
    App,
}

/// One container's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerReport {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: String,
    pub role: Role,
    pub phase: Phase,
    /// The last exit (the current one when `phase` is `Done` or `BackOff`).
    pub last_exit: Option<ContainerStateTerminated>,
    pub ready: bool,
    /// Running and past its startup probe (the status's `started`).
    pub started: bool,
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
            started: Some(self.started),
            state,
            last_state: ContainerState {
                terminated: last_state,
                ..ContainerState::default()
            },
        }
    }
}

/// The pod phase from its containers, by the kubelet's rules: Failed when a regular init
/// container failed and the pod never restarts; Pending while a regular init container has
/// not completed (or a sidecar has not started before any app container ran) or a container
/// has never run; Running while one runs or will run again; Succeeded when every app
/// container exited 0 for good; Failed when they all exited for good and one failed. Sidecars
/// count only while they run.
pub fn pod_phase(containers: &[ContainerReport], restart_policy: &str) -> &'static str {
    let waiting_first = |c: &ContainerReport| {
        matches!(c.phase, Phase::Waiting { .. } | Phase::BackOff { .. }) && c.last_exit.is_none()
    };
    let failed_exit = |c: &ContainerReport| c.last_exit.as_ref().is_some_and(|e| e.exit_code != 0);
    let mut pending_init = false;
    let mut failed_init = false;
    let mut pending_sidecar = false;
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match (c.role, &c.phase) {
            (Role::Init, Phase::Running { .. }) => pending_init = true,
            (Role::Init, Phase::Done | Phase::BackOff { .. }) => failed_init |= failed_exit(c),
            (Role::Init, Phase::Waiting { .. }) if c.last_exit.is_some() => {
                failed_init |= failed_exit(c);
            }
            (Role::Init, Phase::Waiting { .. }) => pending_init = true,
            (Role::Sidecar, Phase::Running { .. }) => {
                pending_sidecar |= !c.started;
                running += 1;
            }
            (Role::Sidecar, Phase::Done) => {}
            // One that ran before and waits to restart counts for nothing (kubelet's rule).
            (Role::Sidecar, _) if c.last_exit.is_none() => {
                pending_sidecar = true;
                waiting += 1;
            }
            (Role::Sidecar, _) => {}
            (Role::App, Phase::Running { .. }) => running += 1,
            (Role::App, Phase::Done) => {
                stopped += 1;
                succeeded += usize::from(!failed_exit(c));
            }
            (Role::App, _) if waiting_first(c) => waiting += 1,
            (Role::App, _) => stopped += 1,
        }
    }
    if failed_init && restart_policy == "Never" {
        return "Failed";
    }
    let app_ran = containers
        .iter()
        .any(|c| c.role == Role::App && !waiting_first(c));
    if pending_init || (pending_sidecar && !app_ran) || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped == 0 {
        return "Pending";
    }
    if restart_policy == "Always" || restart_policy.is_empty() {
        // Every container is on its way to restart.
        return "Running";
    }
    let all_done = containers
        .iter()
        .filter(|c| c.role == Role::App)
        .all(|c| matches!(c.phase, Phase::Done));
    if !all_done {
        // OnFailure, one failed and is restarting.
        return "Running";
    }
    if stopped == succeeded {
        "Succeeded"
    } else {
        "Failed"
    }
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
    let phase = pod_phase(containers, &pod.spec.restart_policy);
    let mut conditions = old.conditions.clone();
    let (status, reason, message) = initialized(containers, phase);
    set_condition(
        &mut conditions,
        "Initialized",
        status,
        reason,
        &message,
        now,
    );
    // Sidecars first, as kubelet lists them.
    let unready: Vec<&str> = containers
        .iter()
        .filter(|c| c.role == Role::Sidecar)
        .chain(containers.iter().filter(|c| c.role == Role::App))
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
    // kubelet's share of the 12 KiB all termination messages may take.
    let budget = termination::pod_message_budget(containers.len());
    let status = |c: &ContainerReport| {
        let mut s = c.status();
        for t in [&mut s.state.terminated, &mut s.last_state.terminated]
            .into_iter()
            .flatten()
        {
            termination::truncate_message(&mut t.message, budget);
        }
        s
    };
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
        init_container_statuses: containers
            .iter()
            .filter(|c| c.role != Role::App)
            .map(status)
            .collect(),
        container_statuses: containers
            .iter()
            .filter(|c| c.role == Role::App)
            .map(status)
            .collect(),
        ..Default::default()
    }
}

/// The Initialized condition (status, reason, message), by kubelet's rules: true once every
/// regular init container completed and every sidecar started, and stays true once an app
/// container has run (a sidecar restarting later does not undo it); `PodCompleted` for a pod
/// that succeeded.
fn initialized(
    containers: &[ContainerReport],
    phase: &str,
) -> (&'static str, &'static str, String) {
    if phase == "Succeeded" {
        return ("True", "PodCompleted", String::new());
    }
    let app_ran = containers.iter().any(|c| {
        c.role == Role::App
            && (matches!(c.phase, Phase::Running { .. } | Phase::Done) || c.last_exit.is_some())
    });
    let incomplete: Vec<&str> = containers
        .iter()
        .filter(|c| match c.role {
            Role::Init => {
                !(matches!(c.phase, Phase::Done)
                    && c.last_exit.as_ref().is_some_and(|e| e.exit_code == 0))
            }
            Role::Sidecar => !c.started,
            Role::App => false,
        })
        .map(|c| c.name.as_str())
        .collect();
    if app_ran || incomplete.is_empty() {
        ("True", "", String::new())
    } else {
        (
            "False",
            "ContainersNotInitialized",
            format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            ),
        )
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
            role: Role::App,
            started: matches!(phase, Phase::Running { .. }),
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
        assert_eq!(
            pod_phase(&[report("a", waiting(), None, false)], "Never"),
            "Pending"
        );
        assert_eq!(
            pod_phase(
                &[
                    report("a", running(), None, true),
                    report("b", waiting(), None, false)
                ],
                "Never"
            ),
            "Pending"
        );
        assert_eq!(
            pod_phase(&[report("a", running(), None, false)], "Never"),
            "Running"
        );
        // Waiting again after an exit is a restart, not a pending pod.
        assert_eq!(
            pod_phase(
                &[report(
                    "a",
                    Phase::BackOff {
                        message: String::new()
                    },
                    Some(1),
                    false
                )],
                "Never"
            ),
            "Running"
        );
        assert_eq!(
            pod_phase(&[report("a", Phase::Done, Some(0), false)], "Never"),
            "Succeeded"
        );
        assert_eq!(
            pod_phase(
                &[
                    report("a", Phase::Done, Some(0), false),
                    report("b", Phase::Done, Some(2), false)
                ],
                "Never"
            ),
            "Failed"
        );
        assert_eq!(pod_phase(&[], "Never"), "Pending");
    }

    #[test]
    fn init_containers_and_sidecars_weigh_on_the_phase_as_kubelet_says() {
        let role = |mut r: ContainerReport, role: Role| {
            r.role = role;
            r
        };
        let init = |phase, exit| role(report("init", phase, exit, false), Role::Init);
        let side = |phase, exit| role(report("side", phase, exit, false), Role::Sidecar);
        let backoff = || Phase::BackOff {
            message: String::new(),
        };
        let app_waiting = report("app", waiting(), None, false);
        let app_running = report("app", running(), None, true);
        // A running or restarting init container keeps the pod Pending; a failed one fails it
        // only when nothing is restarted.
        assert_eq!(
            pod_phase(&[init(running(), None), app_waiting.clone()], "Always"),
            "Pending"
        );
        assert_eq!(
            pod_phase(
                &[init(backoff(), Some(1)), app_waiting.clone()],
                "OnFailure"
            ),
            "Pending"
        );
        assert_eq!(
            pod_phase(&[init(Phase::Done, Some(1)), app_waiting.clone()], "Never"),
            "Failed"
        );
        // A sidecar that has not started up holds the pod in Pending until an app container
        // ran; one waiting out a back-off after it ran does not.
        let mut unstarted = side(running(), None);
        unstarted.started = false;
        assert_eq!(
            pod_phase(&[unstarted, app_waiting.clone()], "Always"),
            "Pending"
        );
        assert_eq!(
            pod_phase(&[side(backoff(), Some(1)), app_running.clone()], "Never"),
            "Running"
        );
        // Sidecars stopped after the app containers are done do not count.
        let done = report("app", Phase::Done, Some(0), false);
        assert_eq!(
            pod_phase(&[side(Phase::Done, Some(137)), done.clone()], "Never"),
            "Succeeded"
        );
        assert_eq!(
            pod_phase(&[side(running(), None), done], "Never"),
            "Running"
        );
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
