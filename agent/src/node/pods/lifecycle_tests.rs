//! The pod lifecycle of one worker over the fakes of `crate::testing`, on a paused clock:
//! restart policies and crash back-off, probes, preStop hooks and grace periods, deletion, and
//! the statuses users read. No root, no containerd, no kernel; the fakes check after every
//! call that the worker keeps the rules it must keep with the real runtime and network.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::Duration,
};

use containerd_client::tonic::Status;
use skiff_api::{
    kinds::{
        Container, ContainerStatus, ExecAction, HttpGetAction, IntOrString, Lifecycle,
        LifecycleHandler, Pod, PodStatus, Probe, SleepAction,
    },
    meta::ObjectMeta,
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use super::{Ctx, REASON_INVALID_POD, Worker, refuse};
use crate::{
    paths::{self, NodePaths},
    podnet::PodNetworks as _,
    runtime::{ContainerInfo, ContainerRuntime as _},
    testing::{Event, ExecScript, FakeApi, FakeNode, PortScript, Run},
};

const UID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const NS: &str = "default";
const NAME: &str = "web";
const CIDR: &str = "10.244.1.0/24";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn container(name: &str) -> Container {
    Container {
        name: name.into(),
        image: "busybox".into(),
        command: vec!["sleep".into(), "3600".into()],
        ..Container::default()
    }
}

fn exec_probe(argv: &[&str], period: i32, failure_threshold: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: argv.iter().map(|s| (*s).to_owned()).collect(),
        }),
        period_seconds: period,
        failure_threshold,
        ..Probe::default()
    }
}

fn pre_stop_exec(argv: &[&str]) -> Option<Lifecycle> {
    Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: argv.iter().map(|s| (*s).to_owned()).collect(),
            }),
            ..LifecycleHandler::default()
        }),
    })
}

fn pod(policy: &str, containers: Vec<Container>) -> Pod {
    let mut p = Pod {
        metadata: ObjectMeta {
            name: NAME.into(),
            namespace: NS.into(),
            uid: UID.into(),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    };
    p.spec.containers = containers;
    p.spec.restart_policy = policy.into();
    p.spec.node_name = "node-a".into();
    p
}

/// What the workers of a node share, over `node` and `api`.
fn ctx(node: &FakeNode, api: &FakeApi) -> Arc<Ctx> {
    Arc::new(Ctx {
        api: Arc::new(api.clone()),
        runtime: Arc::new(node.runtime()),
        network: Arc::new(node.network()),
        node: "node-a".into(),
        host_ip: HOST_IP,
        paths: NodePaths::new(
            "/nonexistent/skiff-agent-unit/logs".into(),
            "/skiff/node-a".into(),
        ),
        backoff_initial: secs(10),
        backoff_max: secs(300),
        attempts: Mutex::default(),
        proxy: None,
    })
}

fn fake_node() -> FakeNode {
    FakeNode::new("node-a", CIDR.parse().expect("a CIDR"))
}

/// One pod's worker running over a fake node and a fake API.
struct Harness {
    node: FakeNode,
    api: FakeApi,
    tx: watch::Sender<Option<Arc<Pod>>>,
    worker: JoinHandle<()>,
    t0: Instant,
}

impl Harness {
    /// Starts the worker of `pod` on a fresh fake node; `script` runs first (before anything
    /// is created).
    fn start(pod: Pod, script: impl FnOnce(&FakeNode)) -> Harness {
        let node = fake_node();
        script(&node);
        let api = FakeApi::new();
        Harness::start_on(node, api, pod, Vec::new())
    }

    /// Starts the worker of `pod` on `node`, adopting `adopt` (what an earlier agent left).
    /// Final deletes are checked against `node`: nothing of the pod may be left on it.
    fn start_on(node: FakeNode, api: FakeApi, pod: Pod, adopt: Vec<ContainerInfo>) -> Harness {
        api.check_against(&node);
        let stored = match api.pod(&pod.metadata.namespace, &pod.metadata.name) {
            Some(stored) => stored,
            None => api.put(pod),
        };
        let ids = paths::admit(&stored).expect("an admissible pod");
        let ctx = ctx(&node, &api);
        let (tx, rx) = watch::channel(Some(Arc::new(stored)));
        let worker = tokio::spawn(Worker::new(ctx, rx, adopt, ids).run());
        Harness {
            node,
            api,
            tx,
            worker,
            t0: Instant::now(),
        }
    }

    /// Lets `d` pass on the paused clock (everything due meanwhile runs, in order).
    async fn after(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// The latest status written.
    fn status(&self) -> PodStatus {
        self.api
            .statuses(UID)
            .last()
            .cloned()
            .expect("a status was written")
    }

    fn container_status(&self, name: &str) -> ContainerStatus {
        self.status()
            .container_statuses
            .into_iter()
            .find(|c| c.name == name)
            .expect("a status of the container")
    }

    fn condition(&self, type_: &str) -> String {
        skiff_api::kinds::condition(&self.status().conditions, type_)
            .map(|c| c.status.clone())
            .unwrap_or_default()
    }

    /// Starts the worker of a pod with one container `app` (restart policy Always) that runs
    /// `runs` in turn.
    fn app(runs: impl IntoIterator<Item = Run>) -> Harness {
        Harness::start(pod("Always", vec![container("app")]), |n| {
            n.script("app", runs)
        })
    }

    /// Seconds since the start at which `pick` matched an event.
    fn times(&self, pick: impl Fn(&Event) -> bool) -> Vec<u64> {
        self.node
            .events()
            .into_iter()
            .filter(|(_, e)| pick(e))
            .map(|(t, _)| (t - self.t0).as_secs())
            .collect()
    }

    fn starts(&self) -> Vec<u64> {
        self.times(|e| matches!(e, Event::Started { .. }))
    }

    fn exits(&self) -> Vec<u64> {
        self.times(|e| matches!(e, Event::Exited { .. }))
    }

    /// Seconds each restart waited after the exit before it (the crash back-offs).
    fn waits(&self) -> Vec<u64> {
        let exits = self.exits();
        self.starts()
            .iter()
            .skip(1)
            .zip(&exits)
            .map(|(s, e)| s - e)
            .collect()
    }

    /// The stored pod marked for deletion with `grace` seconds, handed to the worker.
    fn delete(&self, grace: i64) {
        let p = self.api.mark_deleted(NS, NAME, grace).expect("the pod");
        self.tx.send_replace(Some(Arc::new(p)));
    }

    /// Waits (on the paused clock) for the worker to finish, at most `limit`.
    async fn finished(self, limit: Duration) -> (FakeNode, FakeApi) {
        tokio::time::timeout(limit, self.worker)
            .await
            .expect("the worker finished in time")
            .expect("the worker did not panic");
        (self.node, self.api)
    }

    /// The fakes saw no broken rule.
    fn check(&self) {
        self.node.assert_no_violations();
        self.api.assert_no_violations();
    }
}

/// Seconds since `t0` of the first event `pick` matches.
fn first_at(
    events: &[(Instant, Event)],
    t0: Instant,
    pick: impl Fn(&Event) -> bool,
) -> Option<u64> {
    events
        .iter()
        .find(|(_, e)| pick(e))
        .map(|(t, _)| (*t - t0).as_secs())
}

/// Whether `pick` matches an event.
fn seen(events: &[(Instant, Event)], pick: impl Fn(&Event) -> bool) -> bool {
    events.iter().any(|(_, e)| pick(e))
}

/// Seconds since `t0` of the first SIGTERM, and the grace period it gave.
fn first_sigterm(events: &[(Instant, Event)], t0: Instant) -> Option<(u64, Duration)> {
    events.iter().find_map(|(t, e)| match e {
        Event::Sigterm { grace, .. } => Some(((*t - t0).as_secs(), *grace)),
        _ => None,
    })
}

/// Nothing of the pod is left on `node`, and the fake saw no broken rule.
fn assert_pod_gone_cleanly(node: &FakeNode) {
    node.assert_pod_gone(UID);
    node.assert_no_violations();
}

#[tokio::test(start_paused = true)]
async fn a_running_pod_reports_the_networks_address_the_node_and_ready_conditions() {
    let h = Harness::start(pod("Always", vec![container("app")]), |_| {});
    h.after(secs(1)).await;
    let s = h.status();
    let ip = h.node.address_of(UID).expect("an address");
    assert!(
        CIDR.parse::<skiff_api::net::Ipv4Cidr>()
            .expect("a CIDR")
            .contains(ip)
    );
    assert_eq!(s.pod_ip, ip.to_string());
    assert_eq!(s.pod_ips.len(), 1);
    assert_eq!(s.host_ip, HOST_IP.to_string());
    assert_eq!(s.phase, "Running");
    assert!(s.start_time.is_some());
    for c in ["Initialized", "ContainersReady", "Ready"] {
        assert_eq!(h.condition(c), "True", "{c}");
    }
    let c = h.container_status("app");
    assert!(c.state.running.is_some() && c.ready && c.started == Some(true));
    assert_eq!(c.restart_count, 0);
    assert!(c.container_id.starts_with("containerd://"), "{c:?}");
    assert!(!c.image_id.is_empty());
    h.check();
}

#[tokio::test(start_paused = true)]
async fn the_first_status_says_container_creating_before_anything_runs() {
    // The network fails once: the worker reports before it can start anything.
    let h = Harness::start(pod("Always", vec![container("app")]), |n| {
        n.fail_network_setups(1)
    });
    tokio::task::yield_now().await;
    let first = h.api.statuses(UID).first().cloned().expect("a status");
    assert_eq!(first.phase, "Pending");
    let waiting = first.container_statuses[0]
        .state
        .waiting
        .clone()
        .expect("waiting");
    assert_eq!(waiting.reason, "ContainerCreating");
    assert!(first.pod_ip.is_empty());
    h.check();
}

#[tokio::test(start_paused = true)]
async fn restart_policy_always_restarts_a_container_that_completed() {
    let h = Harness::app([Run::exits(secs(5), 0)]);
    h.after(secs(6)).await;
    let c = h.container_status("app");
    let waiting = c.state.waiting.clone().expect("waiting to restart");
    assert_eq!(waiting.reason, "CrashLoopBackOff");
    let last = c.last_state.terminated.clone().expect("the last exit");
    assert_eq!((last.exit_code, last.reason.as_str()), (0, "Completed"));
    assert_eq!(h.status().phase, "Running");
    assert!(!c.ready);
    assert_eq!(h.condition("Ready"), "False");
    h.after(secs(10)).await;
    assert_eq!(h.starts(), [0, 15]);
    let c = h.container_status("app");
    assert!(c.state.running.is_some());
    assert_eq!(c.restart_count, 1);
    h.check();
}

#[tokio::test(start_paused = true)]
async fn restart_policy_on_failure_restarts_a_failed_container() {
    let h = Harness::start(pod("OnFailure", vec![container("app")]), |n| {
        n.script("app", [Run::exits(secs(3), 1)])
    });
    h.after(secs(20)).await;
    assert_eq!(h.starts(), [0, 13]);
    let c = h.container_status("app");
    assert_eq!(c.restart_count, 1);
    let last = c.last_state.terminated.expect("the last exit");
    assert_eq!((last.exit_code, last.reason.as_str()), (1, "Error"));
    h.check();
}

#[tokio::test(start_paused = true)]
async fn restart_policy_on_failure_leaves_a_completed_container_and_the_pod_succeeds() {
    let h = Harness::start(pod("OnFailure", vec![container("app")]), |n| {
        n.script("app", [Run::exits(secs(3), 0)])
    });
    h.after(secs(600)).await;
    assert_eq!(h.starts(), [0], "never started again");
    let s = h.status();
    assert_eq!(s.phase, "Succeeded");
    let c = h.container_status("app");
    let t = c.state.terminated.expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_str()), (0, "Completed"));
    assert!(c.last_state.terminated.is_none());
    assert_eq!(c.restart_count, 0);
    let ready = skiff_api::kinds::condition(&s.conditions, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "PodCompleted")
    );
    h.check();
}

#[tokio::test(start_paused = true)]
async fn restart_policy_never_leaves_a_failed_container_and_the_pod_fails() {
    let h = Harness::start(pod("Never", vec![container("app")]), |n| {
        n.script("app", [Run::exits(secs(2), 2)])
    });
    h.after(secs(600)).await;
    assert_eq!(h.starts(), [0]);
    assert_eq!(h.status().phase, "Failed");
    let t = h
        .container_status("app")
        .state
        .terminated
        .expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_str()), (2, "Error"));
    assert!(t.finished_at.is_some() && t.started_at.is_some());
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_pod_fails_when_one_container_failed_for_good_and_another_completed() {
    let h = Harness::start(pod("Never", vec![container("ok"), container("bad")]), |n| {
        n.script("ok", [Run::exits(secs(1), 0)]);
        n.script("bad", [Run::exits(secs(4), 3)]);
    });
    h.after(secs(2)).await;
    assert_eq!(h.status().phase, "Running", "one still runs");
    h.after(secs(3)).await;
    assert_eq!(h.status().phase, "Failed");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn crash_back_off_starts_at_ten_seconds_and_doubles_up_to_five_minutes() {
    let h = Harness::app(std::iter::repeat_n(Run::exits(secs(1), 1), 9));
    h.after(secs(1600)).await;
    let starts = h.starts();
    assert_eq!(
        h.waits(),
        [10, 20, 40, 80, 160, 300, 300, 300, 300],
        "{starts:?}"
    );
    assert_eq!(h.container_status("app").restart_count, 9);
    h.check();
}

#[tokio::test(start_paused = true)]
async fn crash_back_off_is_reset_after_the_container_ran_ten_minutes() {
    let h = Harness::start(pod("Always", vec![container("app")]), |n| {
        n.script(
            "app",
            [
                Run::exits(secs(1), 1),
                Run::exits(secs(1), 1),
                Run::exits(secs(601), 1),
                Run::exits(secs(1), 1),
            ],
        )
    });
    h.after(secs(700)).await;
    let (starts, exits) = (h.starts(), h.exits());
    // 10, 20, then the long run: back to 10 (not 40), then doubling again.
    assert_eq!(h.waits(), [10, 20, 10, 20], "{starts:?} {exits:?}");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn crash_back_off_is_kept_when_the_container_ran_under_ten_minutes() {
    let h = Harness::start(pod("Always", vec![container("app")]), |n| {
        n.script(
            "app",
            [
                Run::exits(secs(1), 1),
                Run::exits(secs(1), 1),
                Run::exits(secs(590), 1),
            ],
        )
    });
    h.after(secs(700)).await;
    let (starts, exits) = (h.starts(), h.exits());
    assert_eq!(h.waits(), [10, 20, 40], "{starts:?} {exits:?}");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn crash_loop_back_off_says_how_long_and_which_container_and_keeps_the_last_exit() {
    let h = Harness::app([Run::exits(secs(1), 1), Run::exits(secs(1), 7)]);
    // First exit at 1 s, restart at 11 s, second exit at 12 s: back-off 20 s.
    h.after(secs(13)).await;
    let c = h.container_status("app");
    let w = c.state.waiting.expect("waiting");
    assert_eq!(w.reason, "CrashLoopBackOff");
    assert_eq!(
        w.message,
        format!("back-off 20s restarting failed container=app pod={NAME}_{NS}({UID})")
    );
    assert_eq!(c.restart_count, 1);
    assert_eq!(c.last_state.terminated.expect("last exit").exit_code, 7);
    h.check();
}

#[tokio::test(start_paused = true)]
async fn an_oom_killed_container_is_reported_oom_killed_and_restarted() {
    let h = Harness::app([Run::oom_killed(secs(2))]);
    h.after(secs(3)).await;
    let last = h
        .container_status("app")
        .last_state
        .terminated
        .expect("the last exit");
    assert_eq!(
        (last.reason.as_str(), last.exit_code, last.signal),
        ("OOMKilled", 137, 9)
    );
    h.after(secs(10)).await;
    assert_eq!(h.container_status("app").restart_count, 1);
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_failing_liveness_probe_restarts_the_container_after_its_failure_threshold() {
    let mut c = container("app");
    c.liveness_probe = Some(exec_probe(&["cat", "/tmp/healthy"], 5, 3));
    let h = Harness::start(pod("Always", vec![c]), |_| {});
    h.after(secs(32)).await;
    assert!(h.times(|e| matches!(e, Event::Sigterm { .. })).is_empty());
    h.node
        .set_exec("app", &["cat", "/tmp/healthy"], ExecScript::code(1));
    h.after(secs(58)).await;
    // Probes at 0, 5, ...: the first failure at 35, the third at 45 kills it.
    let terms = h.times(|e| matches!(e, Event::Sigterm { .. }));
    assert_eq!(terms.first(), Some(&45), "{terms:?}");
    // It exits on SIGTERM (143) and is started again after the back-off.
    assert_eq!(h.starts()[..2], [0, 55]);
    let c = h.container_status("app");
    assert!(c.restart_count >= 1);
    let exits = h
        .node
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::Exited { code, .. } => Some(code),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(exits.first(), Some(&143));
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_passing_liveness_probe_never_restarts_the_container() {
    let mut c = container("app");
    c.liveness_probe = Some(exec_probe(&["true"], 1, 1));
    let h = Harness::start(pod("Always", vec![c]), |_| {});
    h.after(secs(120)).await;
    assert_eq!(h.starts(), [0]);
    assert!(h.times(|e| matches!(e, Event::Exec { .. })).len() >= 100);
    assert!(h.times(|e| matches!(e, Event::Sigterm { .. })).is_empty());
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_failing_readiness_probe_flips_ready_only_and_never_restarts() {
    let mut c = container("app");
    c.readiness_probe = Some(exec_probe(&["check"], 2, 2));
    let h = Harness::start(pod("Always", vec![c]), |_| {});
    h.after(secs(1)).await;
    assert_eq!(h.condition("Ready"), "True");
    h.node.set_exec("app", &["check"], ExecScript::code(1));
    h.after(secs(10)).await;
    assert_eq!(h.condition("Ready"), "False");
    assert_eq!(h.condition("ContainersReady"), "False");
    let s = h.status();
    assert_eq!(s.phase, "Running");
    let c = h.container_status("app");
    assert!(!c.ready && c.state.running.is_some());
    assert_eq!(c.restart_count, 0);
    assert!(h.times(|e| matches!(e, Event::Sigterm { .. })).is_empty());
    h.node.set_exec("app", &["check"], ExecScript::code(0));
    h.after(secs(3)).await;
    assert_eq!(h.condition("Ready"), "True");
    assert_eq!(h.starts(), [0]);
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_container_with_a_readiness_probe_is_unready_until_the_probe_first_passes() {
    let mut c = container("app");
    let mut probe = exec_probe(&["check"], 10, 3);
    probe.initial_delay_seconds = 5;
    c.readiness_probe = Some(probe);
    let h = Harness::start(pod("Always", vec![c]), |_| {});
    h.after(secs(4)).await;
    assert_eq!(h.status().phase, "Running");
    assert_eq!(h.condition("Ready"), "False");
    assert!(!h.container_status("app").ready);
    h.after(secs(2)).await;
    assert_eq!(h.condition("Ready"), "True");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn an_http_readiness_probe_is_answered_from_inside_the_pods_network() {
    let mut c = container("app");
    c.readiness_probe = Some(Probe {
        http_get: Some(HttpGetAction {
            path: "/healthz".into(),
            port: IntOrString::Int(8080),
            ..HttpGetAction::default()
        }),
        period_seconds: 1,
        failure_threshold: 1,
        ..Probe::default()
    });
    let h = Harness::start(pod("Always", vec![c]), |_| {});
    h.after(secs(3)).await;
    assert_eq!(h.condition("Ready"), "False", "nothing listens yet");
    let ip = h.node.address_of(UID).expect("an address");
    let port = SocketAddrV4::new(ip, 8080);
    h.node.set_port(port, PortScript::Http(200));
    h.after(secs(2)).await;
    assert_eq!(h.condition("Ready"), "True");
    h.node.set_port(port, PortScript::Http(503));
    h.after(secs(2)).await;
    assert_eq!(h.condition("Ready"), "False");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_pre_stop_hook_runs_before_sigterm_and_its_time_counts_against_the_grace_period() {
    let mut c = container("app");
    c.lifecycle = pre_stop_exec(&["drain"]);
    let h = Harness::start(pod("Always", vec![c]), |n| {
        n.set_exec("app", &["drain"], ExecScript::takes(secs(5), 0))
    });
    h.after(secs(10)).await;
    h.delete(30);
    let t0 = h.t0;
    let (node, api) = h.finished(secs(120)).await;
    let events = node.events();
    assert_eq!(
        first_at(
            &events,
            t0,
            |e| matches!(e, Event::Exec { argv, .. } if argv == &["drain"])
        ),
        Some(10)
    );
    let term = first_sigterm(&events, t0);
    assert_eq!(
        term,
        Some((15, secs(25))),
        "SIGTERM after the hook, with what is left"
    );
    assert_eq!(api.deleted(), [(NS.into(), NAME.into(), UID.into())]);
    assert_pod_gone_cleanly(&node);
}

#[tokio::test(start_paused = true)]
async fn a_pre_stop_hook_past_the_grace_period_is_cut_off_and_the_container_still_gets_two_seconds()
{
    let mut c = container("app");
    c.lifecycle = pre_stop_exec(&["drain"]);
    let h = Harness::start(pod("Always", vec![c]), |n| {
        n.set_exec("app", &["drain"], ExecScript::takes(secs(100), 0));
        n.script("app", [Run::forever().ignoring_sigterm()]);
    });
    h.after(secs(1)).await;
    h.delete(10);
    let t0 = h.t0;
    let (node, _) = h.finished(secs(120)).await;
    let events = node.events();
    let term = first_sigterm(&events, t0);
    assert_eq!(term, Some((11, secs(2))));
    let kill = first_at(&events, t0, |e| matches!(e, Event::Sigkill { .. }));
    assert_eq!(kill, Some(13));
    assert_pod_gone_cleanly(&node);
}

#[tokio::test(start_paused = true)]
async fn a_sleep_pre_stop_hook_delays_sigterm_by_its_seconds() {
    let mut c = container("app");
    c.lifecycle = Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction { seconds: 4 }),
            ..LifecycleHandler::default()
        }),
    });
    let h = Harness::start(pod("Always", vec![c]), |_| {});
    h.after(secs(1)).await;
    h.delete(30);
    let t0 = h.t0;
    let (node, _) = h.finished(secs(60)).await;
    let term = first_sigterm(&node.events(), t0);
    assert_eq!(term, Some((5, secs(26))));
    node.assert_no_violations();
}

#[tokio::test(start_paused = true)]
async fn sigkill_follows_sigterm_once_the_grace_period_is_over() {
    let h = Harness::app([Run::forever().ignoring_sigterm()]);
    h.after(secs(1)).await;
    h.delete(7);
    let t0 = h.t0;
    let (node, api) = h.finished(secs(60)).await;
    let events = node.events();
    let when = |pick: fn(&Event) -> bool| {
        events
            .iter()
            .filter(|(_, e)| pick(e))
            .map(|(t, _)| (*t - t0).as_secs())
            .collect::<Vec<_>>()
    };
    assert_eq!(when(|e| matches!(e, Event::Sigterm { .. })), [1]);
    assert_eq!(when(|e| matches!(e, Event::Sigkill { .. })), [8]);
    assert!(seen(&events, |e| matches!(
        e,
        Event::Exited { code: 137, .. }
    )));
    assert_eq!(api.deleted().len(), 1);
    assert_pod_gone_cleanly(&node);
}

#[tokio::test(start_paused = true)]
async fn a_container_that_exits_on_sigterm_is_never_killed() {
    let h = Harness::app([Run::forever().exiting_after_sigterm_in(secs(3))]);
    h.after(secs(1)).await;
    h.delete(30);
    let (node, api) = h.finished(secs(60)).await;
    let events = node.events();
    assert!(!seen(&events, |e| matches!(e, Event::Sigkill { .. })));
    assert!(seen(&events, |e| matches!(
        e,
        Event::Exited { code: 143, .. }
    )));
    // Deleted for good once the container stopped, not at the end of the grace period.
    assert_eq!(api.deleted().len(), 1);
    assert_pod_gone_cleanly(&node);
}

#[tokio::test(start_paused = true)]
async fn deletion_with_grace_zero_skips_the_pre_stop_hook_and_kills_at_once() {
    let mut c = container("app");
    c.lifecycle = pre_stop_exec(&["drain"]);
    let h = Harness::start(pod("Always", vec![c]), |n| {
        n.script("app", [Run::forever().ignoring_sigterm()])
    });
    h.after(secs(5)).await;
    h.delete(0);
    let t0 = h.t0;
    let (node, api) = h.finished(secs(60)).await;
    let events = node.events();
    assert!(
        !seen(&events, |e| matches!(e, Event::Exec { .. })),
        "no hook at grace 0"
    );
    let kill = first_at(&events, t0, |e| matches!(e, Event::Sigkill { .. }));
    assert_eq!(kill, Some(5));
    assert_eq!(api.deleted().len(), 1);
    assert_pod_gone_cleanly(&node);
}

#[tokio::test(start_paused = true)]
async fn without_a_deletion_grace_period_the_pods_own_then_thirty_seconds_apply() {
    for (spec_grace, want) in [(Some(12), secs(12)), (None, secs(30))] {
        let mut p = pod("Always", vec![container("app")]);
        p.spec.termination_grace_period_seconds = spec_grace;
        let h = Harness::start(p, |_| {});
        h.after(secs(1)).await;
        let mut deleting = h.api.pod(NS, NAME).expect("the pod");
        deleting.metadata.deletion_timestamp = Some(skiff_api::meta::time::now());
        let deleting = h.api.put(deleting);
        h.tx.send_replace(Some(Arc::new(deleting)));
        let (node, _) = h.finished(secs(60)).await;
        let grace = node.events().into_iter().find_map(|(_, e)| match e {
            Event::Sigterm { grace, .. } => Some(grace),
            _ => None,
        });
        assert_eq!(grace, Some(want), "spec {spec_grace:?}");
        node.assert_no_violations();
    }
}

#[tokio::test(start_paused = true)]
async fn deletion_stops_every_container_before_the_network_goes_and_leaves_nothing() {
    let h = Harness::start(pod("Always", vec![container("a"), container("b")]), |n| {
        n.script("b", [Run::forever().exiting_after_sigterm_in(secs(4))])
    });
    h.after(secs(2)).await;
    h.delete(30);
    let (node, api) = h.finished(secs(60)).await;
    let events = node.events();
    let down = events
        .iter()
        .position(|(_, e)| matches!(e, Event::NetworkDown { .. }))
        .expect("the network went");
    let last_stop = events
        .iter()
        .rposition(|(_, e)| matches!(e, Event::Exited { .. } | Event::Removed { .. }))
        .expect("containers went");
    assert!(last_stop < down, "{events:#?}");
    node.assert_pod_gone(UID);
    assert!(node.containers().is_empty());
    assert_eq!(api.deleted(), [(NS.into(), NAME.into(), UID.into())]);
    assert!(api.pod(NS, NAME).is_none());
    node.assert_no_violations();
}

#[tokio::test(start_paused = true)]
async fn a_pod_gone_from_the_api_is_stopped_at_once_and_not_deleted_again() {
    let mut c = container("app");
    c.lifecycle = pre_stop_exec(&["drain"]);
    let h = Harness::start(pod("Always", vec![c]), |_| {});
    h.after(secs(3)).await;
    h.tx.send_replace(None);
    let (node, api) = h.finished(secs(30)).await;
    assert!(api.deleted().is_empty());
    let events = node.events();
    assert!(!seen(&events, |e| matches!(e, Event::Exec { .. })));
    assert!(seen(
        &events,
        |e| matches!(e, Event::Sigterm { grace, .. } if grace.is_zero())
    ));
    assert_pod_gone_cleanly(&node);
}

#[tokio::test(start_paused = true)]
async fn exited_attempts_are_removed_before_the_next_starts_and_nothing_leaks_over_restarts() {
    let h = Harness::app(std::iter::repeat_n(Run::exits(secs(1), 1), 4));
    h.after(secs(200)).await;
    // Only the live attempt's container exists.
    let live = h.node.containers();
    assert_eq!(live.len(), 1, "{live:?}");
    assert!(live[0].1, "it runs");
    h.delete(30);
    let (node, _) = h.finished(secs(60)).await;
    assert_pod_gone_cleanly(&node);
}

#[tokio::test(start_paused = true)]
async fn a_missing_image_waits_as_err_image_never_pull_and_starts_once_it_is_there() {
    let mut c = container("app");
    c.image = "nginx:1.27".into();
    let h = Harness::start(pod("Always", vec![c]), |_| {});
    h.after(secs(1)).await;
    let w = h
        .container_status("app")
        .state
        .waiting
        .expect("waiting for the image");
    assert_eq!(w.reason, "ErrImageNeverPull");
    assert!(w.message.contains("nginx:1.27"), "{}", w.message);
    assert_eq!(h.status().phase, "Pending");
    h.node.add_image(crate::runtime::Image {
        name: "docker.io/library/nginx:1.27".into(),
        id: "sha256:3".into(),
        chain_id: "sha256:4".into(),
        entrypoint: vec!["nginx".into()],
        cmd: Vec::new(),
        env: Vec::new(),
        working_dir: String::new(),
    });
    h.after(secs(3)).await;
    assert!(h.container_status("app").state.running.is_some());
    assert_eq!(h.status().phase, "Running");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_failed_create_is_reported_and_retried_after_the_back_off() {
    let h = Harness::start(pod("Always", vec![container("app")]), |n| {
        n.fail_creates("app", 1)
    });
    h.after(secs(1)).await;
    let w = h
        .container_status("app")
        .state
        .waiting
        .expect("waiting after the failed create");
    assert_eq!(w.reason, "CreateContainerError");
    assert!(
        w.message.starts_with("creating the container: "),
        "{}",
        w.message
    );
    h.after(secs(10)).await;
    assert_eq!(h.starts(), [10]);
    assert!(h.container_status("app").state.running.is_some());
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_removes_the_created_container_before_trying_again() {
    let h = Harness::app([Run::fails_to_start()]);
    h.after(secs(1)).await;
    let w = h.container_status("app").state.waiting.expect("waiting");
    assert!(
        w.message.starts_with("starting the container: "),
        "{}",
        w.message
    );
    assert!(h.node.containers().is_empty(), "the created container went");
    h.after(secs(10)).await;
    assert!(h.container_status("app").state.running.is_some());
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_network_that_cannot_be_made_is_retried_and_said_in_the_pods_message() {
    let h = Harness::start(pod("Always", vec![container("app")]), |n| {
        n.fail_network_setups(2)
    });
    h.after(secs(1)).await;
    let s = h.status();
    assert_eq!(s.phase, "Pending");
    assert!(
        s.message
            .starts_with("pod network: allocating an address: every address of"),
        "{}",
        s.message
    );
    assert!(h.starts().is_empty());
    h.after(secs(4)).await;
    let s = h.status();
    assert_eq!(s.phase, "Running");
    assert!(s.message.is_empty());
    assert_eq!(h.starts(), [4], "retried every 2 s");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_conflicting_status_write_is_redone_on_the_newer_pod() {
    let h = Harness::app([Run::exits(secs(5), 4)]);
    h.after(secs(1)).await;
    // Someone else writes the pod meanwhile (a label): the worker's next write conflicts.
    let mut other = h.api.pod(NS, NAME).expect("the pod");
    other.metadata.labels.insert("touched".into(), "yes".into());
    h.api.put(other);
    h.after(secs(5)).await;
    let stored = h.api.pod(NS, NAME).expect("the pod");
    assert_eq!(
        stored.metadata.labels.get("touched").map(String::as_str),
        Some("yes")
    );
    let c = &stored.status.container_statuses[0];
    assert_eq!(
        c.last_state.terminated.as_ref().map(|t| t.exit_code),
        Some(4),
        "the exit is written over the newer version"
    );
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_refused_status_write_backs_off_and_is_written_later() {
    let h = Harness::app([Run::exits(secs(2), 1)]);
    h.after(secs(1)).await;
    let written = h.api.statuses(UID).len();
    h.api.fail_status_writes([
        Status::unavailable("down"),
        Status::unavailable("down"),
        Status::unavailable("down"),
        Status::unavailable("down"),
    ]);
    // The exit at 2 s is refused, then retried after 0.2, 0.4, 0.8 and 1.6 s: at 5 s.
    h.after(Duration::from_millis(3900)).await;
    assert_eq!(h.api.statuses(UID).len(), written, "refused so far");
    h.after(Duration::from_millis(200)).await;
    let c = h.container_status("app");
    assert_eq!(c.last_state.terminated.map(|t| t.exit_code), Some(1));
    assert_eq!(h.api.statuses(UID).len(), written + 1);
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_liveness_restart_runs_the_pre_stop_hook_first_and_only_once() {
    let mut c = container("app");
    c.liveness_probe = Some(exec_probe(&["alive"], 1, 1));
    c.lifecycle = pre_stop_exec(&["drain"]);
    let h = Harness::start(pod("Always", vec![c]), |n| {
        n.set_exec("app", &["alive"], ExecScript::code(1));
        n.set_exec("app", &["drain"], ExecScript::takes(secs(2), 0));
    });
    h.after(secs(5)).await;
    let events = h.node.events();
    let drain = events
        .iter()
        .position(|(_, e)| matches!(e, Event::Exec { argv, .. } if argv == &["drain"]))
        .expect("the hook ran");
    let term = events
        .iter()
        .position(|(_, e)| matches!(e, Event::Sigterm { .. }))
        .expect("then SIGTERM");
    assert!(drain < term);
    let drains = events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Exec { argv, .. } if argv == &["drain"]))
        .count();
    assert_eq!(drains, 1);
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_pod_is_ready_only_while_every_container_is() {
    let mut b = container("b");
    b.readiness_probe = Some(exec_probe(&["check"], 1, 1));
    let h = Harness::start(pod("Always", vec![container("a"), b]), |n| {
        n.set_exec("b", &["check"], ExecScript::code(1))
    });
    h.after(secs(3)).await;
    assert!(h.container_status("a").ready);
    assert!(!h.container_status("b").ready);
    assert_eq!(h.condition("Ready"), "False");
    let ready = skiff_api::kinds::condition(&h.status().conditions, "Ready").cloned();
    assert_eq!(
        ready.map(|c| c.message),
        Some("containers with unready status: [b]".to_owned())
    );
    h.node.set_exec("b", &["check"], ExecScript::code(0));
    h.after(secs(2)).await;
    assert_eq!(h.condition("Ready"), "True");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_adopts_the_running_container_its_address_and_restart_count() {
    let h = Harness::start(pod("Always", vec![container("app")]), |n| {
        n.script(
            "app",
            [
                Run::exits(secs(1), 1),
                Run::exits(secs(100), 5).exiting_after_sigterm_in(secs(1)),
            ],
        )
    });
    h.after(secs(20)).await;
    assert_eq!(h.container_status("app").restart_count, 1);
    let ip = h.node.address_of(UID);
    // The agent stops: its worker goes, the pod keeps running.
    let Harness {
        node,
        api,
        tx,
        worker,
        t0,
        ..
    } = h;
    drop(tx);
    worker.await.expect("the worker ended");
    assert_eq!(node.containers().len(), 1);
    let left: Vec<ContainerInfo> = node.runtime().list().await.expect("a list");
    let h = Harness::start_on(node, api, pod("Always", vec![container("app")]), left);
    h.after(secs(5)).await;
    let c = h.container_status("app");
    assert!(c.state.running.is_some());
    assert_eq!(c.restart_count, 1, "the count survives the agent");
    assert_eq!(h.node.address_of(UID), ip);
    assert_eq!(h.starts().len(), 2, "nothing started again");
    // The adopted container's exit is still seen, and restarted after the back-off.
    h.after(secs(100)).await;
    let c = h.container_status("app");
    assert_eq!(c.last_state.terminated.map(|t| t.exit_code), Some(5));
    let restarted = h
        .node
        .events()
        .into_iter()
        .filter(|(_, e)| matches!(e, Event::Started { .. }))
        .map(|(t, _)| (t - t0).as_secs())
        .collect::<Vec<_>>();
    // The back-off lives in the agent's memory (as the kubelet's does): a restarted agent
    // starts it over, so the exit at 111 s waits 10 s, not 20.
    assert_eq!(restarted, [0, 11, 121]);
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_breaks_the_apis_rules_is_refused_without_touching_the_node() {
    let node = fake_node();
    let api = FakeApi::new();
    api.check_against(&node);
    let mut bad = pod("Always", vec![container("app")]);
    bad.metadata.uid = "../../etc".into();
    let stored = api.put(bad);
    let invalid = paths::admit(&stored).expect_err("a refused pod");
    let (tx, rx) = watch::channel(Some(Arc::new(stored)));
    let worker = tokio::spawn(refuse(ctx(&node, &api), rx, invalid));
    tokio::time::sleep(secs(1)).await;
    let s = api.pod(NS, NAME).expect("the pod").status;
    assert_eq!(
        (s.phase.as_str(), s.reason.as_str()),
        ("Failed", REASON_INVALID_POD)
    );
    assert!(
        s.message.starts_with("Pod was rejected by node node-a: "),
        "{}",
        s.message
    );
    assert!(node.containers().is_empty());
    assert!(node.network().list().await.expect("a list").is_empty());
    assert!(node.events().is_empty(), "nothing was made");
    let deleting = api.mark_deleted(NS, NAME, 30).expect("the pod");
    tx.send_replace(Some(Arc::new(deleting)));
    tokio::time::timeout(secs(10), worker)
        .await
        .expect("finished")
        .expect("no panic");
    assert_eq!(api.deleted().len(), 1, "deleted for good");
    node.assert_no_violations();
}

#[tokio::test(start_paused = true)]
async fn leftovers_of_pods_not_on_the_node_are_removed_and_those_of_known_pods_kept() {
    const GONE: &str = "1e6d1c3a-5b7f-4c2e-9a1d-3f4b5c6d7e8f";
    let node = FakeNode::new("node-a", CIDR.parse().expect("a CIDR"));
    let api = FakeApi::new();
    // Two pods ran: the known one and one deleted while no agent ran.
    for uid in [UID, GONE] {
        let mut p = pod("Always", vec![container("app")]);
        p.metadata.uid = uid.into();
        p.metadata.name = format!("p-{}", &uid[..2]);
        let h = Harness::start_on(node.clone(), api.clone(), p, Vec::new());
        h.after(secs(1)).await;
        drop(h.tx);
        h.worker.await.expect("the worker ended");
    }
    assert_eq!(node.containers().len(), 2);
    let ctx = ctx(&node, &api);
    let known = [UID.to_owned()].into();
    let kept = ctx.remove_leftovers(&known).await.expect("swept");
    assert_eq!(kept.keys().collect::<Vec<_>>(), [UID]);
    node.assert_pod_gone(GONE);
    assert!(node.address_of(UID).is_some());
    assert_eq!(node.containers().len(), 1);
    // The orphan got SIGTERM and its grace before it was removed: nothing was killed
    // outright.
    node.assert_no_violations();
}
