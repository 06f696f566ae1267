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
    client::ClientError,
    kinds::{
        Bytes, ConfigMap, Container, ContainerStatus, ExecAction, HttpGetAction, IntOrString,
        Lifecycle, LifecycleHandler, LocalObjectReference, Pod, PodStatus, Probe, Secret, Service,
        SleepAction,
    },
    meta::ObjectMeta,
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use super::{Ctx, PodObjects, REASON_INVALID_POD, ServiceList, Worker, refuse};
use crate::{
    node::{
        envvars,
        volumes::{FakeMounter, Volumes, mount::FakeMount, testdir::TestDir},
    },
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
        ..Lifecycle::default()
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
fn ctx(node: &FakeNode, api: &FakeApi, secrets: &TestSecrets) -> Arc<Ctx> {
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
        objects: Arc::new(secrets.clone()),
        services: Arc::new(secrets.clone()),
        allocatable: envvars::Allocatable {
            cpu_millis: 2000,
            memory: 4 << 30,
            ..Default::default()
        },
        volumes: Some(Volumes::new(
            secrets.dir.path().join("pods"),
            secrets.mounter.clone(),
        )),
        volume_resync: secs(60),
        node_security: crate::runtime::NodeSecurity::default(),
    })
}

/// The Secrets, ConfigMaps and Services the workers of a harness read (image pull
/// credentials, environment sources, Service variables); the Services start read, empty.
#[derive(Debug, Clone)]
struct TestSecrets {
    secrets: Arc<Mutex<std::collections::HashMap<String, Secret>>>,
    config_maps: Arc<Mutex<std::collections::HashMap<String, ConfigMap>>>,
    services: Arc<Mutex<Option<Vec<Service>>>>,
    /// The node's volume directory (a scratch directory) and its checking mounter.
    dir: Arc<TestDir>,
    mounter: Arc<FakeMounter>,
}

impl Default for TestSecrets {
    fn default() -> TestSecrets {
        TestSecrets {
            secrets: Arc::default(),
            config_maps: Arc::default(),
            services: Arc::new(Mutex::new(Some(Vec::new()))),
            dir: Arc::new(TestDir::new("lifecycle")),
            mounter: Arc::default(),
        }
    }
}

impl TestSecrets {
    /// Stores ConfigMap `name` in NS with `data`.
    fn put_config_map(&self, name: &str, data: &[(&str, &str)]) {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: NS.into(),
                ..ObjectMeta::default()
            },
            data: data
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..ConfigMap::default()
        };
        lock(&self.config_maps).insert(format!("{NS}/{name}"), cm);
    }

    /// Stores an Opaque Secret `name` in NS with `data`.
    fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let secret = Secret {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: NS.into(),
                ..ObjectMeta::default()
            },
            type_: "Opaque".into(),
            data: data
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Bytes(v.as_bytes().to_vec())))
                .collect(),
            ..Secret::default()
        };
        lock(&self.secrets).insert(format!("{NS}/{name}"), secret);
    }

    /// The Services known from now on (`None`: not read yet).
    fn set_services(&self, services: Option<Vec<Service>>) {
        *lock(&self.services) = services;
    }

    /// Stores a `kubernetes.io/dockerconfigjson` Secret `name` in NS with these credentials.
    fn put_docker_config(&self, name: &str, registry: &str, user: &str, password: &str) {
        let json = format!(
            r#"{{"auths":{{"{registry}":{{"username":"{user}","password":"{password}"}}}}}}"#
        );
        let secret = Secret {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: NS.into(),
                ..ObjectMeta::default()
            },
            type_: "kubernetes.io/dockerconfigjson".into(),
            data: [(".dockerconfigjson".to_owned(), Bytes(json.into_bytes()))]
                .into_iter()
                .collect(),
            ..Secret::default()
        };
        lock(&self.secrets).insert(format!("{NS}/{name}"), secret);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait::async_trait]
impl PodObjects for TestSecrets {
    async fn secret(&self, namespace: &str, name: &str) -> Result<Secret, ClientError> {
        lock(&self.secrets)
            .get(&format!("{namespace}/{name}"))
            .cloned()
            .ok_or_else(|| {
                ClientError::Api(Status::not_found(format!("secrets \"{name}\" not found")))
            })
    }

    async fn config_map(&self, namespace: &str, name: &str) -> Result<ConfigMap, ClientError> {
        lock(&self.config_maps)
            .get(&format!("{namespace}/{name}"))
            .cloned()
            .ok_or_else(|| {
                ClientError::Api(Status::not_found(format!(
                    "configmaps \"{name}\" not found"
                )))
            })
    }
}

impl ServiceList for TestSecrets {
    fn services(&self, namespace: &str) -> Option<Vec<Service>> {
        lock(&self.services).as_ref().map(|all| {
            all.iter()
                .filter(|s| {
                    envvars::service_may_apply(namespace, &s.metadata.namespace, &s.metadata.name)
                })
                .cloned()
                .collect()
        })
    }
}

#[tokio::test]
async fn a_pods_objects_are_asked_for_by_valid_names_only_and_absent_ones_are_none() {
    let objects = TestSecrets::default();
    objects.put_config_map("cfg", &[("a", "1")]);
    objects.put_secret("creds", &[("t", "x")]);
    // Stored under a name no API write makes: the fake would answer if it were asked.
    lock(&objects.config_maps).insert(format!("{NS}/Bad_Name"), ConfigMap::default());
    let cm = super::fetch::<ConfigMap>(&objects, NS, "cfg")
        .await
        .unwrap();
    assert_eq!(cm.unwrap().data["a"], "1");
    let secret = super::fetch::<Secret>(&objects, NS, "creds").await.unwrap();
    assert_eq!(secret.unwrap().data["t"].0, b"x");
    assert!(
        super::fetch::<ConfigMap>(&objects, NS, "nope")
            .await
            .unwrap()
            .is_none()
    );
    let err = super::fetch::<ConfigMap>(&objects, NS, "Bad_Name")
        .await
        .unwrap_err();
    assert!(matches!(err, super::FetchError::InvalidName { .. }));
    assert_eq!(err.to_string(), "\"Bad_Name\" is not a valid object name");
}

fn fake_node() -> FakeNode {
    FakeNode::new("node-a", CIDR.parse().expect("a CIDR"))
}

/// One pod's worker running over a fake node and a fake API.
struct Harness {
    node: FakeNode,
    api: FakeApi,
    /// Read by the workers at each pull.
    secrets: TestSecrets,
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

    /// Starts the worker of `pod` on a fresh fake node whose securityContext settings are
    /// `security`.
    fn start_secure(pod: Pod, security: crate::runtime::NodeSecurity) -> Harness {
        let node = fake_node();
        let api = FakeApi::new();
        api.check_against(&node);
        let stored = api.put(pod);
        let ids = paths::admit(&stored).expect("an admissible pod");
        let secrets = TestSecrets::default();
        let mut ctx = Arc::try_unwrap(ctx(&node, &api, &secrets)).expect("the only handle");
        ctx.node_security = security;
        let (tx, rx) = watch::channel(Some(Arc::new(stored)));
        let worker = tokio::spawn(Worker::new(Arc::new(ctx), rx, Vec::new(), ids).run());
        Harness {
            node,
            api,
            secrets,
            tx,
            worker,
            t0: Instant::now(),
        }
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
        let secrets = TestSecrets::default();
        let ctx = ctx(&node, &api, &secrets);
        let (tx, rx) = watch::channel(Some(Arc::new(stored)));
        let worker = tokio::spawn(Worker::new(ctx, rx, adopt, ids).run());
        Harness {
            node,
            api,
            secrets,
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
        ..Lifecycle::default()
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
    c.image_pull_policy = "Never".into();
    let h = Harness::start(pod("Always", vec![c]), |_| {});
    h.after(secs(1)).await;
    let w = h
        .container_status("app")
        .state
        .waiting
        .expect("waiting for the image");
    assert_eq!(w.reason, "ErrImageNeverPull");
    assert_eq!(
        w.message,
        "Container image \"nginx:1.27\" is not present with pull policy of Never"
    );
    assert!(
        h.node.resolutions().is_empty(),
        "Never never asks a registry"
    );
    assert_eq!(h.status().phase, "Pending");
    h.node.add_image(crate::runtime::Image {
        name: "docker.io/library/nginx:1.27".into(),
        id: "sha256:3".into(),
        chain_id: "sha256:4".into(),
        entrypoint: vec!["nginx".into()],
        cmd: Vec::new(),
        env: Vec::new(),
        working_dir: String::new(),
        user: String::new(),
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
    let worker = tokio::spawn(refuse(
        ctx(&node, &api, &TestSecrets::default()),
        rx,
        invalid,
    ));
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
    let ctx = ctx(&node, &api, &TestSecrets::default());
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

fn app_image(name: &str, id: &str) -> crate::runtime::Image {
    crate::runtime::Image {
        name: name.into(),
        id: id.into(),
        chain_id: format!("{id}-chain"),
        entrypoint: Vec::new(),
        cmd: vec!["sh".into()],
        env: Vec::new(),
        working_dir: String::new(),
        user: String::new(),
    }
}

const REGISTRY_IMAGE: &str = "10.250.0.2:5000/app:v1";

fn pulling(name: &str, policy: &str) -> Container {
    let mut c = container(name);
    c.image = REGISTRY_IMAGE.into();
    c.image_pull_policy = policy.into();
    c
}

#[tokio::test(start_paused = true)]
async fn concurrent_pods_of_one_image_pull_it_once_and_both_run() {
    let node = fake_node();
    node.serve_image(app_image(REGISTRY_IMAGE, "sha256:a1"), "sha256:m1");
    node.set_pull_delay(secs(5));
    let api = FakeApi::new();
    let first = Harness::start_on(
        node.clone(),
        api.clone(),
        pod("Always", vec![pulling("app", "IfNotPresent")]),
        Vec::new(),
    );
    let mut other = pod("Always", vec![pulling("app", "IfNotPresent")]);
    other.metadata.name = "web-2".into();
    other.metadata.uid = "8c9e6679-7425-40de-944b-e07fc1f90ae7".into();
    let second = Harness::start_on(node.clone(), api.clone(), other, Vec::new());
    first.after(secs(2)).await;
    let w = first
        .container_status("app")
        .state
        .waiting
        .expect("pulling");
    assert_eq!(w.reason, "ContainerCreating");
    first.after(secs(6)).await;
    assert!(first.container_status("app").state.running.is_some());
    let second_running = api
        .statuses("8c9e6679-7425-40de-944b-e07fc1f90ae7")
        .last()
        .and_then(|s| s.container_statuses.first().cloned())
        .and_then(|c| c.state.running);
    assert!(second_running.is_some(), "the second pod runs too");
    assert_eq!(
        node.resolutions(),
        [REGISTRY_IMAGE],
        "one resolution for both"
    );
    assert_eq!(node.fetches(), [REGISTRY_IMAGE], "one fetch for both");
    first.check();
    second.check();
}

#[tokio::test(start_paused = true)]
async fn a_failed_pull_is_err_image_pull_then_image_pull_back_off_and_runs_once_the_secret_is_fixed()
 {
    let node = fake_node();
    node.serve_image(app_image(REGISTRY_IMAGE, "sha256:a1"), "sha256:m1");
    node.require_credential("10.250.0.2:5000", "alice", "right");
    let mut p = pod("Always", vec![pulling("app", "IfNotPresent")]);
    p.spec.image_pull_secrets = vec![LocalObjectReference {
        name: "regcred".into(),
    }];
    let h = Harness::start_on(node, FakeApi::new(), p, Vec::new());
    // The worker has not run yet (one thread, paused clock): the Secret is there first.
    h.secrets
        .put_docker_config("regcred", "10.250.0.2:5000", "alice", "wrong");
    h.after(secs(1)).await;
    let w = h.container_status("app").state.waiting.expect("waiting");
    assert_eq!(w.reason, "ErrImagePull");
    assert_eq!(
        w.message,
        "Failed to pull image \"10.250.0.2:5000/app:v1\": failed to authorize at \
         10.250.0.2:5000: 401 Unauthorized: UNAUTHORIZED: authentication required"
    );
    h.after(secs(3)).await;
    let w = h
        .container_status("app")
        .state
        .waiting
        .expect("backing off");
    assert_eq!(w.reason, "ImagePullBackOff");
    assert_eq!(
        w.message,
        "Back-off pulling image \"10.250.0.2:5000/app:v1\""
    );
    // Retries at 10 s, then 20 s later (the kubelet's back-off), each failing again.
    h.after(secs(30)).await;
    let tries = h.node.resolutions().len();
    assert_eq!(tries, 3, "pulls at 0, 10 and 30 s");
    assert!(h.container_status("app").state.running.is_none());
    // The Secret is fixed: the next try (40 s later) uses it, without a new pod.
    h.secrets
        .put_docker_config("regcred", "10.250.0.2:5000", "alice", "right");
    h.after(secs(41)).await;
    assert!(h.container_status("app").state.running.is_some());
    assert_eq!(h.node.fetches(), [REGISTRY_IMAGE]);
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_not_found_image_says_the_registrys_reason() {
    let h = Harness::start(pod("Always", vec![pulling("app", "IfNotPresent")]), |_| {});
    h.after(secs(1)).await;
    let w = h.container_status("app").state.waiting.expect("waiting");
    assert_eq!(w.reason, "ErrImagePull");
    assert_eq!(
        w.message,
        "Failed to pull image \"10.250.0.2:5000/app:v1\": 10.250.0.2:5000/app:v1: not found: \
         MANIFEST_UNKNOWN: manifest unknown"
    );
    h.check();
}

#[tokio::test(start_paused = true)]
async fn if_not_present_uses_the_image_on_the_node_without_asking_the_registry() {
    let h = Harness::start(pod("Always", vec![pulling("app", "IfNotPresent")]), |n| {
        n.add_image(app_image(REGISTRY_IMAGE, "sha256:a1"));
    });
    h.after(secs(1)).await;
    assert!(h.container_status("app").state.running.is_some());
    assert!(h.node.resolutions().is_empty());
    h.check();
}

#[tokio::test(start_paused = true)]
async fn always_resolves_at_every_start_and_fetches_only_a_moved_digest() {
    let h = Harness::start(pod("Always", vec![pulling("app", "Always")]), |n| {
        n.serve_image(app_image(REGISTRY_IMAGE, "sha256:a1"), "sha256:m1");
        n.add_image(app_image(REGISTRY_IMAGE, "sha256:old"));
        n.script("app", [Run::exits(secs(5), 1), Run::exits(secs(5), 1)]);
    });
    h.after(secs(1)).await;
    assert!(h.container_status("app").state.running.is_some());
    assert_eq!(h.node.resolutions().len(), 1);
    assert_eq!(
        h.node.fetches().len(),
        1,
        "the node's copy was another digest"
    );
    assert_eq!(h.container_status("app").image_id, "sha256:a1");
    // Exit at 5 s, restart after the 10 s back-off: resolved again, nothing fetched.
    h.after(secs(15)).await;
    assert_eq!(h.starts().len(), 2);
    assert_eq!(h.node.resolutions().len(), 2);
    assert_eq!(h.node.fetches().len(), 1);
    // A new version is pushed: the next start fetches it and runs it.
    h.node
        .serve_image(app_image(REGISTRY_IMAGE, "sha256:a2"), "sha256:m2");
    h.after(secs(30)).await;
    assert_eq!(h.starts().len(), 3);
    assert_eq!(h.node.fetches().len(), 2);
    assert_eq!(h.container_status("app").image_id, "sha256:a2");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn image_gc_removes_unused_images_least_recently_used_first_down_to_the_low_threshold() {
    use crate::runtime::gc::{GcPolicy, ImageGc};
    let h = Harness::start(pod("Always", vec![container("app")]), |n| {
        for name in ["docker.io/library/old:1", "docker.io/library/older:1"] {
            n.add_image(app_image(name, &format!("sha256:{name}")));
            n.set_image_size(name, 10);
        }
        n.set_image_size(crate::testing::BUSYBOX, 10);
        n.set_image_fs(1000, 0);
    });
    h.after(secs(1)).await;
    let runtime = h.node.runtime();
    let mut gc = ImageGc::new(GcPolicy::new(85, 70).expect("a policy"));
    // Far below the threshold: it only notes what it sees.
    assert!(
        gc.collect(&runtime)
            .await
            .expect("collected")
            .removed
            .is_empty()
    );
    // Past the minimum age (2 minutes) of the images seen first.
    h.after(secs(150)).await;
    // A newer image, whose name sorts first: age decides, not the name.
    let recent = "docker.io/library/a-recent:1";
    h.node.add_image(app_image(recent, "sha256:recent"));
    h.node.set_image_size(recent, 10);
    assert!(
        gc.collect(&runtime)
            .await
            .expect("collected")
            .removed
            .is_empty()
    );
    // 100 bytes, 40 in images and 50 else: 90% used, above 85%. Down to 70% is 20 bytes:
    // the two images seen first go; busybox is in use and stays whatever its age.
    h.node.set_image_fs(100, 50);
    let report = gc.collect(&runtime).await.expect("collected");
    assert_eq!(report.freed, 20);
    let mut removed = report.removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        ["docker.io/library/old:1", "docker.io/library/older:1"]
    );
    assert_eq!(
        h.node.image_names(),
        [recent.to_owned(), crate::testing::BUSYBOX.to_owned()]
    );
    // Below the high threshold now: nothing more goes.
    assert!(
        gc.collect(&runtime)
            .await
            .expect("collected")
            .removed
            .is_empty()
    );
    h.check();
}

#[tokio::test(start_paused = true)]
async fn image_gc_keeps_images_from_the_image_directory_and_images_younger_than_the_minimum_age() {
    use crate::runtime::gc::{GcPolicy, ImageGc};
    let imported = "docker.io/library/imported:1";
    let unused = "docker.io/library/unused:1";
    let h = Harness::start(pod("Always", vec![container("app")]), |n| {
        for name in [imported, unused] {
            n.add_image(app_image(name, &format!("sha256:{name}")));
            n.set_image_size(name, 10);
        }
        n.set_image_fs(100, 5);
    });
    h.after(secs(1)).await;
    let runtime = h.node.runtime();
    let mut gc = ImageGc::new(GcPolicy::new(85, 50).expect("a policy")).pin([imported.to_owned()]);
    // 95% used, but every unused image was first seen just now: nothing goes.
    assert!(
        gc.collect(&runtime)
            .await
            .expect("collected")
            .removed
            .is_empty()
    );
    h.after(secs(121)).await;
    // Past the minimum age the unused image goes; the pinned one stays though more is wanted.
    let report = gc.collect(&runtime).await.expect("collected");
    assert_eq!(report.removed, [unused]);
    assert!(h.node.image_names().contains(&imported.to_owned()));
    h.check();
}

/// A container decoded from its Kubernetes JSON.
fn container_json(v: serde_json::Value) -> Container {
    serde_json::from_value(v).expect("a container")
}

/// The `NAME=value` entries of the newest container of `name` the node created.
fn env_of(node: &crate::testing::FakeNode, name: &str) -> Vec<String> {
    node.spec_of(name).expect("a container was created").env
}

#[tokio::test(start_paused = true)]
async fn a_missing_config_map_or_secret_holds_the_container_in_create_container_config_error_until_it_appears()
 {
    let app = container_json(serde_json::json!({
        "name": "app", "image": "busybox",
        "command": ["echo", "$(GREETING)", "$(POD)"],
        "args": ["$(MISSING)", "$$(GREETING)"],
        "env": [
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "OPTIONAL", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k", "optional": true}}},
            {"name": "BOTH", "value": "$(GREETING)-$(POD)"}
        ],
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}]
    }));
    let h = Harness::start(pod("Always", vec![app]), |_| {});
    h.after(secs(1)).await;
    let waiting = |h: &Harness| {
        let s = h.container_status("app");
        let w = s.state.waiting.expect("waiting");
        (w.reason, w.message)
    };
    assert_eq!(
        waiting(&h),
        (
            "CreateContainerConfigError".to_owned(),
            "configmap \"cfg\" not found".to_owned()
        )
    );
    assert!(h.node.spec_of("app").is_none(), "no container is created");
    h.secrets
        .put_config_map("cfg", &[("greeting", "hello"), ("other", "x")]);
    h.after(secs(3)).await;
    assert_eq!(
        waiting(&h),
        (
            "CreateContainerConfigError".to_owned(),
            "secret \"creds\" not found".to_owned()
        )
    );
    // A key the ConfigMap does not have: kubelet's message names it.
    h.secrets.put_config_map("cfg", &[("other", "x")]);
    h.secrets.put_secret("creds", &[("password", "s3cret")]);
    h.after(secs(3)).await;
    assert_eq!(
        waiting(&h).1,
        "couldn't find key greeting in ConfigMap default/cfg"
    );
    h.secrets
        .put_config_map("cfg", &[("greeting", "hello"), ("other", "x")]);
    h.after(secs(3)).await;
    let s = h.container_status("app");
    assert!(s.state.running.is_some(), "{s:?}");
    assert_eq!(s.restart_count, 0);
    let ip = h.node.address_of(UID).expect("an address").to_string();
    let env = env_of(&h.node, "app");
    for want in [
        "GREETING=hello".to_owned(),
        "PASSWORD=s3cret".to_owned(),
        "POD=web".to_owned(),
        format!("POD_IP={ip}"),
        "NODE=node-a".to_owned(),
        format!("HOST_IP={HOST_IP}"),
        "MEM=4096".to_owned(),
        "BOTH=hello-web".to_owned(),
        "CFG_greeting=hello".to_owned(),
        "CFG_other=x".to_owned(),
        "HOSTNAME=web".to_owned(),
        "PATH=/bin".to_owned(),
    ] {
        assert!(env.contains(&want), "{want} not in {env:?}");
    }
    assert!(!env.iter().any(|e| e.starts_with("OPTIONAL=")), "{env:?}");
    assert_eq!(
        h.node.spec_of("app").expect("created").argv,
        ["echo", "hello", "web", "$(MISSING)", "$(GREETING)"]
    );
    assert_eq!(h.starts().len(), 1);
    h.check();
}

fn service(namespace: &str, name: &str, ip: &str, port: i32) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}
    }))
    .expect("a service")
}

#[tokio::test(start_paused = true)]
async fn containers_get_the_service_variables_once_the_services_are_read_and_not_with_links_off() {
    let h = Harness::start(pod("Always", vec![container("app")]), |_| {});
    h.secrets.set_services(None);
    h.after(secs(1)).await;
    let s = h.container_status("app");
    let w = s.state.waiting.expect("waiting");
    assert_eq!(w.reason, "CreateContainerConfigError");
    assert_eq!(
        w.message,
        "services have not yet been read at least once, cannot construct envvars"
    );
    h.secrets.set_services(Some(vec![
        service("default", "kubernetes", "10.96.0.1", 443),
        service("default", "redis-main", "10.96.0.20", 6379),
        service("other", "elsewhere", "10.96.0.30", 80),
        service("default", "headless", "None", 80),
    ]));
    h.after(secs(3)).await;
    let env = env_of(&h.node, "app");
    for want in [
        "KUBERNETES_SERVICE_HOST=10.96.0.1",
        "KUBERNETES_SERVICE_PORT=443",
        "REDIS_MAIN_SERVICE_HOST=10.96.0.20",
        "REDIS_MAIN_SERVICE_PORT=6379",
        "REDIS_MAIN_SERVICE_PORT_HTTP=6379",
        "REDIS_MAIN_PORT=tcp://10.96.0.20:6379",
        "REDIS_MAIN_PORT_6379_TCP_ADDR=10.96.0.20",
    ] {
        assert!(env.iter().any(|e| e == want), "{want} not in {env:?}");
    }
    assert!(!env.iter().any(|e| e.starts_with("ELSEWHERE_")));
    assert!(!env.iter().any(|e| e.starts_with("HEADLESS_")));
    h.check();

    let mut p = pod("Always", vec![container("app")]);
    p.spec.enable_service_links = Some(false);
    let h = Harness::start(p, |_| {});
    h.secrets.set_services(Some(vec![
        service("default", "kubernetes", "10.96.0.1", 443),
        service("default", "redis-main", "10.96.0.20", 6379),
    ]));
    h.after(secs(1)).await;
    let env = env_of(&h.node, "app");
    assert!(env.iter().any(|e| e == "KUBERNETES_SERVICE_HOST=10.96.0.1"));
    assert!(!env.iter().any(|e| e.starts_with("REDIS_MAIN_")), "{env:?}");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_restarted_container_reads_its_environment_again() {
    let app = container_json(serde_json::json!({
        "name": "app", "image": "busybox", "command": ["sleep", "1"],
        "env": [{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "v"}}}]
    }));
    let h = Harness::start(pod("Always", vec![app]), |n| {
        n.script("app", [Run::exits(secs(5), 1), Run::forever()]);
    });
    h.secrets.put_config_map("cfg", &[("v", "one")]);
    h.after(secs(1)).await;
    assert!(env_of(&h.node, "app").contains(&"V=one".to_owned()));
    h.secrets.put_config_map("cfg", &[("v", "two")]);
    h.after(secs(20)).await;
    assert_eq!(h.starts().len(), 2);
    assert!(env_of(&h.node, "app").contains(&"V=two".to_owned()));
    h.check();
}

/// A pod with every volume type Skiff sets up, and a container mounting them.
fn volume_pod() -> Pod {
    let mut p = pod("Always", Vec::new());
    let spec: skiff_api::kinds::PodSpec = serde_json::from_value(serde_json::json!({
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 256}},
            {"name": "info", "downwardAPI": {"items": [
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"name": "all", "projected": {"sources": [
                {"configMap": {"name": "cfg", "items": [{"key": "app.conf", "path": "conf/app.conf"}]}},
                {"secret": {"name": "creds"}},
                {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
            ]}}
        ],
        "containers": [{
            "name": "app", "image": "busybox", "command": ["sleep", "3600"],
            "volumeMounts": [
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "cache", "mountPath": "/cache"},
                {"name": "cfg", "mountPath": "/etc/app"},
                {"name": "cfg", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
                {"name": "creds", "mountPath": "/creds"},
                {"name": "info", "mountPath": "/info", "readOnly": true},
                {"name": "all", "mountPath": "/all"}
            ]
        }]
    }))
    .expect("a pod spec");
    p.spec.volumes = spec.volumes;
    p.spec.containers = spec.containers;
    p
}

fn mount_of(node: &crate::testing::FakeNode, dest: &str) -> crate::runtime::BindMount {
    node.spec_of("app")
        .expect("a container")
        .mounts
        .into_iter()
        .find(|m| m.destination == dest)
        .unwrap_or_else(|| panic!("no mount at {dest}"))
}

#[tokio::test(start_paused = true)]
async fn volumes_wait_for_their_config_map_then_mount_refresh_survive_restarts_and_go_with_the_pod()
{
    let h = Harness::start(volume_pod(), |n| {
        n.script("app", [Run::exits(secs(30), 1), Run::forever()]);
    });
    h.secrets.put_secret("creds", &[("token", "t0k")]);
    h.after(secs(1)).await;
    let s = h.container_status("app");
    let w = s.state.waiting.expect("waiting");
    assert_eq!(w.reason, "ContainerCreating");
    assert!(
        h.node.spec_of("app").is_none(),
        "nothing starts without its volumes"
    );
    h.secrets.put_config_map("cfg", &[("app.conf", "a=1")]);
    h.after(secs(3)).await;
    assert!(h.container_status("app").state.running.is_some());
    let read = |dest: &str, file: &str| {
        std::fs::read_to_string(mount_of(&h.node, dest).source.join(file)).unwrap_or_default()
    };
    assert_eq!(read("/etc/app", "app.conf"), "a=1");
    assert_eq!(read("/creds", "token"), "t0k");
    assert_eq!(read("/info", "name"), NAME);
    assert_eq!(read("/all", "conf/app.conf"), "a=1");
    assert_eq!(read("/all", "token"), "t0k");
    assert_eq!(read("/all", "ns"), NS);
    for (dest, read_only) in [
        ("/scratch", false),
        ("/cache", false),
        ("/etc/app", true),
        ("/etc/app.conf", true),
        ("/creds", true),
        ("/info", true),
        ("/all", true),
    ] {
        assert_eq!(mount_of(&h.node, dest).read_only, read_only, "{dest}");
    }
    let mounts = h.secrets.mounter.mounts();
    assert_eq!(
        mounts.get(&mount_of(&h.node, "/cache").source),
        Some(&FakeMount::Tmpfs(Some(16 << 20))),
        "a Memory emptyDir is a tmpfs of its sizeLimit"
    );
    assert!(
        matches!(
            mounts.get(&mount_of(&h.node, "/creds").source),
            Some(FakeMount::Tmpfs(_))
        ),
        "Secrets stay off the disk"
    );
    // The subPath is bound from the pod's directory, not the volume itself.
    let sub = mount_of(&h.node, "/etc/app.conf").source;
    assert!(sub.to_string_lossy().contains("volume-subpaths"), "{sub:?}");
    // What the container wrote to its emptyDir survives its restart.
    let scratch = mount_of(&h.node, "/scratch").source;
    std::fs::write(scratch.join("state"), "kept").expect("writing to the emptyDir");
    // An edit of the ConfigMap shows in the mounted files within the resync period.
    h.secrets.put_config_map("cfg", &[("app.conf", "a=2")]);
    h.after(secs(70)).await;
    assert_eq!(read("/etc/app", "app.conf"), "a=2");
    assert_eq!(read("/all", "conf/app.conf"), "a=2");
    assert_eq!(h.starts().len(), 2, "restarted once");
    assert_eq!(mount_of(&h.node, "/scratch").source, scratch);
    assert_eq!(
        std::fs::read_to_string(scratch.join("state")).unwrap_or_default(),
        "kept"
    );
    let pods_dir = h.secrets.dir.path().join("pods");
    assert!(pods_dir.join(UID).is_dir());
    let mounter = h.secrets.mounter.clone();
    let dir = h.secrets.dir.clone();
    h.delete(1);
    let (node, _api) = h.finished(secs(10)).await;
    assert_pod_gone_cleanly(&node);
    mounter.assert_nothing_under(dir.path());
    assert!(
        !pods_dir.join(UID).exists(),
        "the pod's volume directory is gone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_missing_optional_config_map_volume_is_empty_and_the_pod_runs() {
    let mut p = volume_pod();
    p.spec.volumes.retain(|v| v.name == "cfg");
    if let Some(c) = p.spec.volumes[0].config_map.as_mut() {
        c.optional = Some(true);
    }
    p.spec.containers[0]
        .volume_mounts
        .retain(|m| m.name == "cfg" && m.sub_path.is_empty());
    let h = Harness::start(p, |_| {});
    h.after(secs(1)).await;
    assert!(
        h.container_status("app").state.running.is_some(),
        "{:?}",
        h.container_status("app")
    );
    h.check();
}

#[tokio::test(start_paused = true)]
async fn the_sweep_tears_down_the_volumes_of_pods_not_on_the_node() {
    const GONE: &str = "5d0cbb4b-2b62-4a8b-a3a7-1e0e5e3b6a11";
    let node = fake_node();
    let api = FakeApi::new();
    let objects = TestSecrets::default();
    let ctx = ctx(&node, &api, &objects);
    let volumes = ctx.volumes.clone().expect("volumes");
    let gone = paths::PodIds::new(NS, "old", GONE).expect("ids");
    let dir = volumes
        .empty_dir(&gone, "cache", "Memory", Some(1 << 20), None)
        .expect("an emptyDir");
    assert!(dir.is_dir());
    let kept = paths::PodIds::new(NS, NAME, UID).expect("ids");
    let kept_dir = volumes
        .empty_dir(&kept, "scratch", "", None, None)
        .expect("an emptyDir");
    let known = [UID.to_owned()].into();
    ctx.remove_leftovers(&known).await.expect("swept");
    assert!(!objects.dir.path().join("pods").join(GONE).exists());
    objects
        .mounter
        .assert_nothing_under(&objects.dir.path().join("pods").join(GONE));
    assert!(kept_dir.is_dir(), "a known pod's volumes stay");
}

fn secure_pod(pod_sc: serde_json::Value, container_sc: serde_json::Value) -> Pod {
    let mut p = pod("Always", vec![container("app")]);
    p.spec.security_context = serde_json::from_value(pod_sc).expect("a pod securityContext");
    p.spec.containers[0].security_context =
        serde_json::from_value(container_sc).expect("a securityContext");
    p
}

fn waiting_of(h: &Harness) -> (String, String) {
    let w = h
        .container_status("app")
        .state
        .waiting
        .expect("the container waits");
    (w.reason, w.message)
}

#[tokio::test(start_paused = true)]
async fn privileged_containers_run_only_where_the_node_allows_them() {
    let p = || {
        secure_pod(
            serde_json::json!(null),
            serde_json::json!({"privileged": true}),
        )
    };
    let h = Harness::start(p(), |_| {});
    h.after(secs(1)).await;
    assert_eq!(
        waiting_of(&h),
        (
            "CreateContainerConfigError".to_owned(),
            "securityContext.privileged: Forbidden: disallowed by cluster policy".to_owned()
        )
    );
    assert!(h.node.spec_of("app").is_none());
    h.check();
    let h = Harness::start_secure(
        p(),
        crate::runtime::NodeSecurity {
            allow_privileged: true,
            ..Default::default()
        },
    );
    h.after(secs(1)).await;
    assert!(h.container_status("app").state.running.is_some());
    let sec = h.node.spec_of("app").expect("created").security;
    assert!(sec.privileged && sec.allow_privileged);
    h.check();
}

#[tokio::test(start_paused = true)]
async fn run_as_non_root_without_a_user_is_refused_with_kubelets_message() {
    let h = Harness::start(
        secure_pod(
            serde_json::json!({"runAsNonRoot": true}),
            serde_json::json!(null),
        ),
        |_| {},
    );
    h.after(secs(1)).await;
    assert_eq!(
        waiting_of(&h),
        (
            "CreateContainerConfigError".to_owned(),
            format!(
                "container has runAsNonRoot and image will run as root (pod: \"{NAME}_{NS}({UID})\", container: app)"
            )
        )
    );
    let h = Harness::start(
        secure_pod(
            serde_json::json!({"runAsNonRoot": true, "runAsUser": 1000}),
            serde_json::json!({"runAsUser": 0}),
        ),
        |_| {},
    );
    h.after(secs(1)).await;
    assert!(
        waiting_of(&h)
            .1
            .starts_with("container's runAsUser breaks non-root policy"),
        "{:?}",
        waiting_of(&h)
    );
    h.check();
}

#[tokio::test(start_paused = true)]
async fn the_pod_and_container_security_contexts_are_merged_into_the_containers_spec() {
    let h = Harness::start(
        secure_pod(
            serde_json::json!({
                "runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true,
                "fsGroup": 2000, "supplementalGroups": [3000],
                "seccompProfile": {"type": "Unconfined"}
            }),
            serde_json::json!({
                "runAsGroup": 4000, "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                "seccompProfile": {"type": "RuntimeDefault"}
            }),
        ),
        |_| {},
    );
    h.after(secs(1)).await;
    assert!(h.container_status("app").state.running.is_some());
    let sec = h.node.spec_of("app").expect("created").security;
    assert_eq!(sec.run_as_user, Some(1000));
    assert_eq!(sec.run_as_group, Some(4000), "the container's wins");
    assert!(sec.run_as_non_root);
    assert_eq!(sec.supplemental_groups, [3000, 2000]);
    assert!(sec.read_only_root_filesystem);
    assert_eq!(sec.allow_privilege_escalation, Some(false));
    assert_eq!(sec.capabilities_drop, ["ALL"]);
    assert_eq!(sec.capabilities_add, ["NET_BIND_SERVICE"]);
    assert_eq!(sec.seccomp, Some(crate::runtime::Seccomp::RuntimeDefault));
    assert!(!sec.seccomp_default);
    h.check();
    // kubelet's --seccomp-default reaches containers that ask for nothing.
    let h = Harness::start_secure(
        pod("Always", vec![container("app")]),
        crate::runtime::NodeSecurity {
            seccomp_default: true,
            ..Default::default()
        },
    );
    h.after(secs(1)).await;
    let sec = h.node.spec_of("app").expect("created").security;
    assert!(sec.seccomp_default && sec.seccomp.is_none());
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_pod_deleted_while_its_volumes_wait_leaves_nothing_mounted_or_on_disk() {
    let h = Harness::start(volume_pod(), |_| {});
    // The Secret is there (a tmpfs is mounted for it), the ConfigMap never comes.
    h.secrets.put_secret("creds", &[("token", "t0k")]);
    h.after(secs(5)).await;
    assert_eq!(waiting_of(&h).0, "ContainerCreating");
    let pods_dir = h.secrets.dir.path().join("pods");
    assert!(
        pods_dir.join(UID).is_dir(),
        "the volumes that could be made were"
    );
    let (mounter, dir) = (h.secrets.mounter.clone(), h.secrets.dir.clone());
    assert!(!mounter.mounts().is_empty());
    h.delete(30);
    let (node, _api) = h.finished(secs(10)).await;
    assert_pod_gone_cleanly(&node);
    mounter.assert_nothing_under(dir.path());
    assert!(!pods_dir.join(UID).exists());
}

#[tokio::test(start_paused = true)]
async fn a_volume_that_cannot_be_set_up_shows_kubelets_failed_mount_text_until_it_can() {
    let h = Harness::start(volume_pod(), |_| {});
    h.secrets.put_secret("creds", &[("token", "t0k")]);
    h.after(secs(3)).await;
    assert_eq!(
        waiting_of(&h),
        (
            "ContainerCreating".to_owned(),
            "MountVolume.SetUp failed for volume \"cfg\" : configmap \"cfg\" not found".to_owned()
        )
    );
    h.secrets.put_config_map("cfg", &[("app.conf", "a=1")]);
    h.after(secs(3)).await;
    let s = h.container_status("app");
    assert!(s.state.running.is_some(), "{s:?}");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_subpath_missing_from_a_config_map_volume_holds_the_container_and_makes_no_directory() {
    let mut p = volume_pod();
    for m in &mut p.spec.containers[0].volume_mounts {
        if m.sub_path == "app.conf" {
            m.sub_path = "nginx.conf".into();
        }
    }
    let h = Harness::start(p, |_| {});
    h.secrets.put_secret("creds", &[("token", "t0k")]);
    h.secrets.put_config_map("cfg", &[("app.conf", "a=1")]);
    h.after(secs(3)).await;
    let (reason, message) = waiting_of(&h);
    assert_eq!(reason, "CreateContainerConfigError");
    assert!(
        message.starts_with(
            "failed to prepare subPath for volumeMount \"cfg\" of container \"app\": subPath \"nginx.conf\" does not exist"
        ),
        "{message}"
    );
    let cfg = h
        .secrets
        .dir
        .path()
        .join("pods")
        .join(UID)
        .join("volumes/kubernetes.io~configmap/cfg");
    assert!(
        !cfg.join("nginx.conf").exists(),
        "no directory in the volume"
    );
    // Once the key is there (the next refresh writes it), the container starts with it.
    h.secrets
        .put_config_map("cfg", &[("app.conf", "a=1"), ("nginx.conf", "n=1")]);
    h.after(secs(70)).await;
    assert!(h.container_status("app").state.running.is_some());
    let sub = mount_of(&h.node, "/etc/app.conf").source;
    let Some(FakeMount::Bind(from)) = h.secrets.mounter.mounts().get(&sub).cloned() else {
        panic!("no bind at {}", sub.display());
    };
    assert_eq!(std::fs::read_to_string(from).unwrap_or_default(), "n=1");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn an_image_reference_outside_the_grammar_waits_as_invalid_image_name_and_is_never_pulled() {
    let cases = [
        ("reg.io/../etc", "invalid reference format"),
        ("busybox:", "invalid reference format"),
        ("a..b", "invalid reference format"),
        (
            "Nginx",
            "invalid reference format: repository name (library/Nginx) must be lowercase",
        ),
    ];
    for (reference, reason) in cases {
        for policy in ["Always", "IfNotPresent", "Never"] {
            let mut c = container("app");
            c.image = reference.into();
            c.image_pull_policy = policy.into();
            let h = Harness::start(pod("Always", vec![c]), |_| {});
            h.after(secs(1)).await;
            let w = h
                .container_status("app")
                .state
                .waiting
                .expect("waiting with an invalid image name");
            assert_eq!(w.reason, "InvalidImageName", "{reference} {policy}");
            assert_eq!(
                w.message,
                format!(
                    "Failed to apply default image tag {reference:?}: couldn't parse image \
                     reference {reference:?}: {reason}"
                ),
                "{reference} {policy}"
            );
            assert!(h.node.resolutions().is_empty(), "{reference} {policy}");
            assert!(h.starts().is_empty(), "{reference} {policy}");
            h.check();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_pull_secret_is_tried_in_turn_legacy_dockercfg_included() {
    let node = fake_node();
    node.serve_image(app_image(REGISTRY_IMAGE, "sha256:a1"), "sha256:m1");
    node.require_credential("10.250.0.2:5000", "alice", "right");
    let mut p = pod("Always", vec![pulling("app", "IfNotPresent")]);
    // The right one first: a runtime that used only the last match would fail.
    p.spec.image_pull_secrets = ["legacy", "wrong"]
        .into_iter()
        .map(|name| LocalObjectReference { name: name.into() })
        .collect();
    let h = Harness::start_on(node, FakeApi::new(), p, Vec::new());
    h.secrets
        .put_docker_config("wrong", "10.250.0.2:5000", "alice", "wrong");
    let legacy = Secret {
        metadata: ObjectMeta {
            name: "legacy".into(),
            namespace: NS.into(),
            ..ObjectMeta::default()
        },
        type_: "kubernetes.io/dockercfg".into(),
        data: [(
            ".dockercfg".to_owned(),
            Bytes(br#"{"10.250.0.2:5000":{"username":"alice","password":"right"}}"#.to_vec()),
        )]
        .into_iter()
        .collect(),
        ..Secret::default()
    };
    lock(&h.secrets.secrets).insert(format!("{NS}/legacy"), legacy);
    h.after(secs(2)).await;
    assert!(
        h.container_status("app").state.running.is_some(),
        "{:?}",
        h.container_status("app").state
    );
    assert_eq!(h.node.fetches(), [REGISTRY_IMAGE]);
    h.check();
}

#[tokio::test(start_paused = true)]
async fn the_images_user_reaches_the_container_unless_run_as_user_is_set_and_names_are_refused() {
    let who = format!("(pod: \"{NAME}_{NS}({UID})\", container: app)");
    let name_refused = |user: &str| {
        format!(
            "image user {user:?} is not numeric: Skiff does not resolve user and group names \
             from the image's /etc/passwd and /etc/group; set securityContext.runAsUser (and \
             runAsGroup) to numeric ids"
        )
    };
    // (image User, pod securityContext, the refusal or None when it runs)
    let cases = [
        ("1000:1000", serde_json::json!(null), None),
        ("1000", serde_json::json!({"runAsNonRoot": true}), None),
        ("www-data", serde_json::json!({"runAsUser": 33}), None),
        (
            "www-data",
            serde_json::json!(null),
            Some(name_refused("www-data")),
        ),
        (
            "www-data",
            serde_json::json!({"runAsNonRoot": true}),
            Some(format!(
                "container has runAsNonRoot and image has non-numeric user (www-data), cannot \
                 verify user is non-root {who}"
            )),
        ),
        (
            "0",
            serde_json::json!({"runAsNonRoot": true}),
            Some(format!(
                "container has runAsNonRoot and image will run as root {who}"
            )),
        ),
    ];
    for (user, pod_sc, refused) in cases {
        let mut p = secure_pod(pod_sc.clone(), serde_json::json!(null));
        p.spec.containers[0].image = "app:1".into();
        p.spec.containers[0].image_pull_policy = "IfNotPresent".into();
        let h = Harness::start(p, |n| {
            let mut image = app_image("docker.io/library/app:1", "sha256:u1");
            image.user = user.into();
            n.add_image(image);
        });
        h.after(secs(1)).await;
        let case = format!("{user} {pod_sc}");
        match refused {
            None => {
                assert!(h.container_status("app").state.running.is_some(), "{case}");
                let sec = h.node.spec_of("app").expect("created").security;
                assert_eq!(sec.image_user, user, "{case}");
            }
            Some(message) => {
                assert_eq!(
                    waiting_of(&h),
                    ("CreateContainerConfigError".to_owned(), message),
                    "{case}"
                );
                assert!(h.node.spec_of("app").is_none(), "{case}");
            }
        }
        h.check();
    }
}

// ---------------------------------------------------------------------------------------------
// Init containers, sidecars, startup probes and postStart hooks

/// A pod `policy` with init containers `inits` and app containers `apps`.
fn pod_with_inits(policy: &str, inits: Vec<Container>, apps: Vec<Container>) -> Pod {
    let mut p = pod(policy, apps);
    p.spec.init_containers = inits;
    p
}

/// An init container with `restartPolicy: Always`.
fn sidecar(name: &str) -> Container {
    Container {
        restart_policy: Some("Always".into()),
        ..container(name)
    }
}

fn post_start_exec(argv: &[&str]) -> Option<Lifecycle> {
    Some(Lifecycle {
        post_start: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: argv.iter().map(|s| (*s).to_owned()).collect(),
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    })
}

impl Harness {
    /// Seconds since the start at which each container (by name) was started, in order.
    fn started_names(&self) -> Vec<(u64, String)> {
        self.named(|e| match e {
            Event::Started { id } => Some(id),
            _ => None,
        })
    }

    /// Seconds since the start and container name of each event `id_of` picks (by the id it
    /// returns), in order.
    fn named(&self, id_of: impl Fn(&Event) -> Option<&String>) -> Vec<(u64, String)> {
        let events = self.node.events();
        let name_of = |id: &str| {
            events.iter().find_map(|(_, e)| match e {
                Event::Created {
                    id: i, container, ..
                } if i == id => Some(container.clone()),
                _ => None,
            })
        };
        events
            .iter()
            .filter_map(|(t, e)| Some(((*t - self.t0).as_secs(), name_of(id_of(e)?)?)))
            .collect()
    }

    fn init_status(&self, name: &str) -> ContainerStatus {
        self.status()
            .init_container_statuses
            .into_iter()
            .find(|c| c.name == name)
            .expect("a status of the init container")
    }

    fn condition_of(&self, type_: &str) -> (String, String, String) {
        let s = self.status();
        let c = skiff_api::kinds::condition(&s.conditions, type_).expect("the condition");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }
}

fn at(t: u64, name: &str) -> (u64, String) {
    (t, name.to_owned())
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_to_completion_in_order_before_the_app_containers_start() {
    let p = pod_with_inits(
        "Always",
        vec![container("migrate"), container("warm")],
        vec![container("app"), container("helper")],
    );
    let h = Harness::start(p, |n| {
        n.script("migrate", [Run::exits(secs(5), 0)]);
        n.script("warm", [Run::exits(secs(3), 0)]);
    });
    h.after(secs(1)).await;
    let s = h.status();
    assert_eq!(s.phase, "Pending");
    assert!(h.init_status("migrate").state.running.is_some());
    let waiting = h.init_status("warm").state.waiting.expect("waiting");
    assert_eq!(waiting.reason, "PodInitializing");
    let app = h.container_status("app").state.waiting.expect("waiting");
    assert_eq!(app.reason, "PodInitializing");
    assert_eq!(
        h.condition_of("Initialized"),
        (
            "False".into(),
            "ContainersNotInitialized".into(),
            "containers with incomplete status: [migrate warm]".into()
        )
    );
    assert_eq!(
        pod_display(&h, &s),
        "Init:0/2",
        "what kubectl and skiffctl show"
    );
    h.after(secs(9)).await;
    assert_eq!(
        h.started_names(),
        [
            at(0, "migrate"),
            at(5, "warm"),
            at(8, "app"),
            at(8, "helper")
        ]
    );
    let s = h.status();
    assert_eq!(s.phase, "Running");
    assert_eq!(h.condition("Initialized"), "True");
    assert_eq!(h.condition("Ready"), "True");
    let done = h
        .init_status("migrate")
        .state
        .terminated
        .expect("terminated");
    assert_eq!((done.exit_code, done.reason.as_str()), (0, "Completed"));
    assert_eq!(
        s.container_statuses.len(),
        2,
        "init containers listed apart"
    );
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_failing_init_container_is_restarted_with_back_off_and_holds_the_app_back() {
    let p = pod_with_inits("Always", vec![container("setup")], vec![container("app")]);
    let h = Harness::start(p, |n| {
        n.script(
            "setup",
            [
                Run::exits(secs(1), 1),
                Run::exits(secs(1), 1),
                Run::exits(secs(1), 0),
            ],
        );
    });
    h.after(secs(5)).await;
    let s = h.status();
    assert_eq!(s.phase, "Pending");
    let init = h.init_status("setup");
    assert_eq!(
        init.state.waiting.expect("waiting").reason,
        "CrashLoopBackOff"
    );
    assert_eq!(init.last_state.terminated.expect("its exit").exit_code, 1);
    assert_eq!(pod_display(&h, &s), "Init:CrashLoopBackOff");
    h.after(secs(40)).await;
    // Exits at 1, 12 (after 10 s), 33 (after 20 s); the app after the third.
    assert_eq!(
        h.started_names(),
        [
            at(0, "setup"),
            at(11, "setup"),
            at(32, "setup"),
            at(33, "app")
        ]
    );
    assert_eq!(h.init_status("setup").restart_count, 2);
    assert_eq!(h.status().phase, "Running");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn with_restart_policy_never_a_failed_init_container_fails_the_pod_and_nothing_else_runs() {
    let p = pod_with_inits("Never", vec![container("setup")], vec![container("app")]);
    let h = Harness::start(p, |n| n.script("setup", [Run::exits(secs(2), 3)]));
    h.after(secs(300)).await;
    assert_eq!(h.started_names(), [at(0, "setup")]);
    let s = h.status();
    assert_eq!(s.phase, "Failed");
    assert_eq!(pod_display(&h, &s), "Init:Error");
    assert_eq!(h.condition("Initialized"), "False");
    let app = h
        .container_status("app")
        .state
        .waiting
        .expect("never started");
    assert_eq!(app.reason, "PodInitializing");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_sidecar_starts_before_the_next_init_container_and_is_restarted_even_under_never() {
    let p = pod_with_inits(
        "Never",
        vec![sidecar("proxy"), container("setup")],
        vec![container("app")],
    );
    let h = Harness::start(p, |n| {
        n.script("proxy", [Run::exits(secs(20), 1), Run::forever()]);
        n.script("setup", [Run::exits(secs(2), 0)]);
    });
    h.after(secs(5)).await;
    assert_eq!(
        h.started_names(),
        [at(0, "proxy"), at(0, "setup"), at(2, "app")]
    );
    let s = h.status();
    assert_eq!(s.phase, "Running");
    let proxy = h.init_status("proxy");
    assert!(proxy.state.running.is_some() && proxy.ready && proxy.started == Some(true));
    assert_eq!(pod_display(&h, &s), "Running");
    h.after(secs(40)).await;
    // Its exit at 20 is followed by a restart after the back-off, the pod's Never aside.
    assert_eq!(h.started_names().last(), Some(&at(30, "proxy")));
    assert_eq!(h.init_status("proxy").restart_count, 1);
    assert_eq!(h.condition("Initialized"), "True", "stays initialized");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_sidecar_with_a_startup_probe_holds_the_app_back_until_the_probe_passes() {
    let mut proxy = sidecar("proxy");
    proxy.startup_probe = Some(exec_probe(&["ready"], 2, 30));
    let p = pod_with_inits("Always", vec![proxy], vec![container("app")]);
    let h = Harness::start(p, |n| n.set_exec("proxy", &["ready"], ExecScript::code(1)));
    h.after(secs(7)).await;
    assert_eq!(h.started_names(), [at(0, "proxy")]);
    let s = h.status();
    assert_eq!(s.phase, "Pending");
    assert_eq!(h.init_status("proxy").started, Some(false));
    assert_eq!(
        h.condition_of("Initialized").2,
        "containers with incomplete status: [proxy]"
    );
    h.node.set_exec("proxy", &["ready"], ExecScript::code(0));
    h.after(secs(3)).await;
    assert_eq!(h.started_names(), [at(0, "proxy"), at(8, "app")]);
    assert_eq!(h.status().phase, "Running");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn when_the_app_containers_are_done_the_sidecars_are_stopped_and_the_pod_succeeds() {
    let p = pod_with_inits(
        "OnFailure",
        vec![sidecar("logs"), sidecar("proxy")],
        vec![container("job")],
    );
    let h = Harness::start(p, |n| n.script("job", [Run::exits(secs(10), 0)]));
    h.after(secs(30)).await;
    let terms = h.named(|e| match e {
        Event::Sigterm { id, .. } => Some(id),
        _ => None,
    });
    // The last sidecar first, each once the one after it is gone.
    assert_eq!(terms, [at(10, "proxy"), at(10, "logs")]);
    let s = h.status();
    assert_eq!(s.phase, "Succeeded");
    assert_eq!(h.condition_of("Initialized").1, "PodCompleted");
    assert_eq!(h.started_names().len(), 3, "no sidecar was started again");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn deletion_stops_the_app_containers_before_the_sidecars() {
    let mut proxy = sidecar("proxy");
    proxy.lifecycle = pre_stop_exec(&["drain"]);
    let p = pod_with_inits("Always", vec![proxy], vec![container("app")]);
    let h = Harness::start(p, |n| {
        n.script("app", [Run::forever().exiting_after_sigterm_in(secs(4))]);
    });
    h.after(secs(5)).await;
    h.delete(30);
    let t0 = h.t0;
    let (node, _) = h.finished(secs(120)).await;
    let events = node.events();
    let drain = first_at(
        &events,
        t0,
        |e| matches!(e, Event::Exec { argv, .. } if argv == &["drain"]),
    );
    // The app gets SIGTERM at 5 and exits at 9; the sidecar's preStop hook runs only then.
    assert_eq!(drain, Some(9));
    let terms: Vec<(u64, Duration)> = events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::Sigterm { grace, .. } => Some(((*t - t0).as_secs(), *grace)),
            _ => None,
        })
        .collect();
    assert_eq!(terms, [(5, secs(30)), (9, secs(26))]);
    assert_pod_gone_cleanly(&node);
}

#[tokio::test(start_paused = true)]
async fn a_startup_probe_holds_liveness_and_readiness_back_and_restarts_a_container_that_never_starts()
 {
    let mut c = container("app");
    c.startup_probe = Some(exec_probe(&["started"], 5, 3));
    c.liveness_probe = Some(exec_probe(&["alive"], 1, 1));
    let h = Harness::start(pod("Always", vec![c]), |n| {
        n.set_exec("app", &["started"], ExecScript::code(1));
    });
    h.after(secs(3)).await;
    let c = h.container_status("app");
    assert!(c.state.running.is_some());
    assert_eq!((c.started, c.ready), (Some(false), false));
    assert_eq!(h.condition("Ready"), "False");
    h.after(secs(9)).await;
    // Failures at 0, 5, 10: killed at 10, not before.
    let terms = h.times(|e| matches!(e, Event::Sigterm { .. }));
    assert_eq!(terms, [10]);
    let alive = h.times(|e| matches!(e, Event::Exec { argv, .. } if argv == &["alive"]));
    assert!(
        alive.is_empty(),
        "liveness waits for the startup probe: {alive:?}"
    );
    h.node.set_exec("app", &["started"], ExecScript::code(0));
    h.after(secs(15)).await;
    // Restarted at 20 (10 s back-off); started, ready, and the liveness probe runs.
    assert_eq!(h.starts(), [0, 20]);
    let c = h.container_status("app");
    assert_eq!((c.started, c.ready), (Some(true), true));
    assert!(
        !h.times(|e| matches!(e, Event::Exec { argv, .. } if argv == &["alive"]))
            .is_empty()
    );
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_post_start_hook_holds_the_container_in_waiting_and_the_next_container_back() {
    let mut first = container("first");
    first.lifecycle = post_start_exec(&["prepare"]);
    let h = Harness::start(pod("Always", vec![first, container("second")]), |n| {
        n.set_exec("first", &["prepare"], ExecScript::takes(secs(6), 0));
    });
    h.after(secs(3)).await;
    assert_eq!(h.started_names(), [at(0, "first")]);
    let c = h.container_status("first");
    assert_eq!(
        c.state.waiting.expect("not running yet").reason,
        "ContainerCreating"
    );
    assert_eq!(h.status().phase, "Pending");
    h.after(secs(5)).await;
    assert_eq!(h.started_names(), [at(0, "first"), at(6, "second")]);
    assert!(h.container_status("first").state.running.is_some());
    assert_eq!(h.condition("Ready"), "True");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_failing_post_start_hook_kills_the_container_and_says_why_until_the_next_start() {
    let mut c = container("app");
    c.lifecycle = post_start_exec(&["prepare"]);
    let h = Harness::start(pod("Always", vec![c]), |n| {
        n.set_exec("app", &["prepare"], ExecScript::code(2));
    });
    h.after(secs(3)).await;
    assert_eq!(h.times(|e| matches!(e, Event::Sigterm { .. })), [0]);
    let c = h.container_status("app");
    let waiting = c.state.waiting.expect("waiting for the next start");
    assert_eq!(waiting.reason, "PostStartHookError");
    assert!(
        waiting.message.starts_with(&format!(
            "Exec lifecycle hook ([prepare]) for Container \"app\" in Pod \"{NAME}_{NS}({UID})\" failed - error: command [\"prepare\"] exited with 2"
        )),
        "{}",
        waiting.message
    );
    h.node.set_exec("app", &["prepare"], ExecScript::code(0));
    h.after(secs(10)).await;
    assert_eq!(h.starts(), [0, 10]);
    assert!(h.container_status("app").state.running.is_some());
    h.check();
}

/// The STATUS column kubectl and skiffctl show for the pod with status `s`.
fn pod_display(h: &Harness, s: &PodStatus) -> String {
    let mut p = h.api.pod(NS, NAME).expect("the pod");
    p.status = s.clone();
    skiff_api::print::pod::status(&p)
}

#[tokio::test(start_paused = true)]
async fn what_a_container_leaves_at_its_termination_message_path_is_its_exit_message() {
    let mut c = container("app");
    c.termination_message_path = "/dev/termination-log".into();
    c.termination_message_policy = "File".into();
    let h = Harness::start(pod("Always", vec![c]), |n| {
        n.script("app", [Run::exits(secs(5), 1), Run::forever()])
    });
    h.after(secs(1)).await;
    let spec = h.node.spec_of("app").expect("the container's spec");
    let mount = spec
        .mounts
        .iter()
        .find(|m| m.destination == "/dev/termination-log")
        .expect("the termination message file is mounted");
    assert!(!mount.read_only);
    assert_eq!(
        std::fs::metadata(&mount.source).map(|m| m.len()).ok(),
        Some(0),
        "made empty for the attempt"
    );
    std::fs::write(&mount.source, "disk full").expect("the container writes its message");
    h.after(secs(6)).await;
    let last = h
        .container_status("app")
        .last_state
        .terminated
        .expect("the exit");
    assert_eq!((last.exit_code, last.message.as_str()), (1, "disk full"));
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_neither_runs_completed_init_containers_again_nor_restarts_the_app() {
    let p = || {
        pod_with_inits(
            "Always",
            vec![container("setup"), sidecar("proxy")],
            vec![container("app")],
        )
    };
    let h = Harness::start(p(), |n| n.script("setup", [Run::exits(secs(2), 0)]));
    h.after(secs(10)).await;
    assert_eq!(h.status().phase, "Running");
    let Harness {
        node,
        api,
        tx,
        worker,
        ..
    } = h;
    drop(tx);
    worker.await.expect("the worker ended");
    let left: Vec<ContainerInfo> = node.runtime().list().await.expect("a list");
    let h = Harness::start_on(node, api, p(), left);
    h.after(secs(10)).await;
    assert_eq!(h.started_names().len(), 3, "nothing started again");
    let s = h.status();
    assert_eq!(s.phase, "Running");
    assert_eq!(h.condition("Initialized"), "True");
    assert_eq!(h.condition("Ready"), "True");
    let setup = h.init_status("setup").state.terminated.expect("completed");
    assert_eq!((setup.exit_code, setup.reason.as_str()), (0, "Completed"));
    assert!(h.init_status("proxy").state.running.is_some());
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_sidecar_is_stopped_when_an_init_container_after_it_fails_the_pod() {
    let p = pod_with_inits(
        "Never",
        vec![sidecar("proxy"), container("setup")],
        vec![container("app")],
    );
    let h = Harness::start(p, |n| n.script("setup", [Run::exits(secs(3), 1)]));
    h.after(secs(60)).await;
    assert_eq!(h.status().phase, "Failed");
    let terms = h.named(|e| match e {
        Event::Sigterm { id, .. } => Some(id),
        _ => None,
    });
    assert_eq!(terms, [at(3, "proxy")]);
    assert_eq!(h.started_names(), [at(0, "proxy"), at(0, "setup")]);
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_keeps_the_restart_count_of_a_container_waiting_out_its_back_off() {
    let h = Harness::start(pod("Always", vec![container("app")]), |n| {
        n.script("app", [Run::exits(secs(1), 1), Run::exits(secs(1), 1)])
    });
    h.after(secs(15)).await;
    // Exited at 1 and, restarted at 11, at 12: waiting out a 20 s back-off, no container left.
    assert_eq!(h.container_status("app").restart_count, 1);
    let Harness {
        node,
        api,
        tx,
        worker,
        ..
    } = h;
    drop(tx);
    worker.await.expect("the worker ended");
    assert!(node.containers().is_empty());
    let h = Harness::start_on(node, api, pod("Always", vec![container("app")]), Vec::new());
    h.after(secs(1)).await;
    let c = h.container_status("app");
    assert_eq!(c.restart_count, 2, "the count goes on");
    assert!(c.state.running.is_some());
    assert_eq!(c.last_state.terminated.map(|t| t.exit_code), Some(1));
    assert_eq!(h.status().phase, "Running");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_sidecar_waiting_out_its_back_off_neither_makes_the_pod_pending_nor_holds_the_app_back() {
    let p = pod_with_inits("Always", vec![sidecar("proxy")], vec![container("app")]);
    let h = Harness::start(p, |n| {
        n.script(
            "proxy",
            [
                Run::exits(secs(5), 1),
                Run::exits(secs(1), 1),
                Run::forever(),
            ],
        );
        n.script("app", [Run::exits(secs(8), 1), Run::forever()]);
    });
    h.after(secs(20)).await;
    // The sidecar: exits at 5, restarts at 15, exits at 16, waits 20 s. The app: exits at 8
    // and restarts at 18 although the sidecar is not running then.
    assert_eq!(
        h.started_names(),
        [at(0, "proxy"), at(0, "app"), at(15, "proxy"), at(18, "app")]
    );
    assert_eq!(h.status().phase, "Running");
    assert_eq!(h.condition("Initialized"), "True");
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_restart_held_back_by_a_post_start_hook_waits_for_the_hook_without_spinning() {
    let mut first = container("first");
    first.lifecycle = post_start_exec(&["prepare"]);
    let h = Harness::start(pod("Always", vec![first, container("second")]), |n| {
        n.set_exec("first", &["prepare"], ExecScript::takes(secs(20), 0));
        n.script("first", [Run::exits(secs(40), 1), Run::forever()]);
        n.script("second", [Run::exits(secs(25), 1), Run::forever()]);
    });
    // first: hook 0-20, exits at 40, restarts at 50, hook 50-70. second: starts at 20, exits
    // at 45, is due again at 55 but waits for first's hook.
    let done = tokio::time::timeout(secs(80), h.after(secs(75))).await;
    assert!(done.is_ok(), "the worker spun instead of waiting");
    assert_eq!(
        h.started_names(),
        [
            at(0, "first"),
            at(20, "second"),
            at(50, "first"),
            at(70, "second")
        ]
    );
    h.check();
}
