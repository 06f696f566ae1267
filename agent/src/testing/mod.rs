//! Fakes of what a node agent drives: the container runtime, the pod network and the pod
//! writes to the API server. They keep the state a real node would (containers, tasks,
//! networks, addresses, stored pods), let a caller script what happens (exits, exec results,
//! ports, failures) and check, on every call, the rules the agent must keep with the real
//! thing, the way `datapath::table`'s checking maps do:
//!
//! - a task is started only for a container that was created, and only once;
//! - a container is removed only once its task no longer runs (the agent stops it first:
//!   preStop hook, SIGTERM, grace period), and only a container the node has had is stopped;
//! - a container joins only a pod network that exists;
//! - nothing is exec'd in a task that is not running (probes and hooks);
//! - a pod's network goes only once every task in it has stopped;
//! - a status written for a pod never takes a finished pod back to running, never lowers a
//!   restart count, never changes a pod's address, and says Ready only when every container
//!   is;
//! - after a pod is gone, none of its containers, nor its network or address, is left
//!   ([`FakeNode::assert_pod_gone`]);
//! - a pod is deleted for good only once the API has marked it for deletion and, on every node
//!   its [`FakeApi`] checks against ([`FakeApi::check_against`]), nothing of it is left.
//!
//! A broken rule is recorded (see [`FakeNode::violations`], [`FakeApi::violations`]), logged,
//! and, for a strict fake (the default; what unit tests want), a panic at the call that broke
//! it.
//!
//! Built for the agent's own tests and, with the `testing` feature, for crates that run the
//! agent over fakes (the benchmark's hollow nodes); the `skiff-agent` binary goes without.
//!
//! One [`FakeNode`] is a few maps behind one lock and starts no task or thread of its own
//! (a container's exit is computed when someone looks or waits), so one process can hold the
//! fakes of thousands of nodes: kubemark-style hollow nodes run the real agent over them.

mod api;
mod network;
mod runtime;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use skiff_api::net::Ipv4Cidr;
use tokio::time::Instant;

pub use self::{api::FakeApi, network::FakeNetworks, runtime::FakeRuntime};
use crate::{node::pods::LABEL_POD_UID, runtime::Image};

/// How one start of a container behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The task exits by itself this long after it started; `None`: it runs until stopped.
    pub exits_after: Option<Duration>,
    /// Its exit code when it exits by itself.
    pub code: i32,
    /// Whether that exit is an OOM kill.
    pub oom_killed: bool,
    /// How long it takes to exit after SIGTERM; `None`: it ignores SIGTERM (busybox as PID 1
    /// does) and goes only with SIGKILL.
    pub on_sigterm: Option<Duration>,
    /// The start fails (the runtime's error), leaving the created task as it was.
    pub fails_to_start: bool,
}

impl Run {
    /// Runs until stopped and exits at once on SIGTERM (with 143, as a process killed by it).
    pub fn forever() -> Run {
        Run {
            exits_after: None,
            code: 0,
            oom_killed: false,
            on_sigterm: Some(Duration::ZERO),
            fails_to_start: false,
        }
    }

    /// Exits with `code` after `after`.
    pub fn exits(after: Duration, code: i32) -> Run {
        Run {
            exits_after: Some(after),
            code,
            ..Run::forever()
        }
    }

    /// Killed by the OOM killer after `after` (137, SIGKILL's status).
    pub fn oom_killed(after: Duration) -> Run {
        Run {
            exits_after: Some(after),
            code: 137,
            oom_killed: true,
            ..Run::forever()
        }
    }

    /// The start fails.
    pub fn fails_to_start() -> Run {
        Run {
            fails_to_start: true,
            ..Run::forever()
        }
    }

    /// Ignores SIGTERM: only SIGKILL ends it.
    pub fn ignoring_sigterm(self) -> Run {
        Run {
            on_sigterm: None,
            ..self
        }
    }

    /// Takes `d` to exit after SIGTERM.
    pub fn exiting_after_sigterm_in(self, d: Duration) -> Run {
        Run {
            on_sigterm: Some(d),
            ..self
        }
    }
}

impl Default for Run {
    fn default() -> Run {
        Run::forever()
    }
}

/// What a command exec'd in a container does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecScript {
    /// Its exit code.
    pub code: i32,
    /// How long it runs (past the caller's timeout, it is killed and the exec fails).
    pub takes: Duration,
}

impl ExecScript {
    /// Exits at once with `code`.
    pub fn code(code: i32) -> ExecScript {
        ExecScript {
            code,
            takes: Duration::ZERO,
        }
    }

    /// Runs for `takes`, then exits with `code`.
    pub fn takes(takes: Duration, code: i32) -> ExecScript {
        ExecScript { code, takes }
    }
}

/// What answers a TCP connection to a pod's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortScript {
    /// Nothing listens: the connection is refused.
    Closed,
    /// Something accepts the connection and answers HTTP requests with this status.
    Http(u16),
}

/// Something the fakes saw, in order, with when (tokio's clock, so paused tests see exact
/// times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A container was created: its id, its pod's uid and container name (labels), attempt.
    Created {
        id: String,
        uid: String,
        container: String,
    },
    Started {
        id: String,
    },
    /// A command was exec'd in a running task.
    Exec {
        id: String,
        argv: Vec<String>,
    },
    /// The runtime was asked to stop a task with this grace period (SIGTERM sent).
    Sigterm {
        id: String,
        grace: Duration,
    },
    /// SIGKILL sent (the grace period ran out, or a removal of a running task).
    Sigkill {
        id: String,
    },
    /// A task ended.
    Exited {
        id: String,
        code: i32,
    },
    /// A container (and its task) was deleted.
    Removed {
        id: String,
    },
    NetworkUp {
        uid: String,
        ip: Ipv4Addr,
    },
    NetworkDown {
        uid: String,
    },
}

/// A task's life in the fake runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskLife {
    Created,
    Running {
        since: Instant,
    },
    Stopped {
        code: i32,
        oom_killed: bool,
        at: Instant,
    },
}

/// A container of the fake runtime.
#[derive(Debug)]
pub(crate) struct FakeContainer {
    pub(crate) spec: crate::runtime::ContainerSpec,
    pub(crate) run: Run,
    pub(crate) task: TaskLife,
    /// When the task got SIGTERM, if it did.
    pub(crate) sigterm_at: Option<Instant>,
    /// When the task started, on tokio's clock and on the wall clock (what `Exit::exited_at`
    /// is counted from).
    pub(crate) started: Option<(Instant, std::time::SystemTime)>,
    /// Tells waiters that the task changed.
    pub(crate) changed: tokio::sync::watch::Sender<()>,
}

impl FakeContainer {
    pub(crate) fn uid(&self) -> Option<&str> {
        self.spec.labels.get(LABEL_POD_UID).map(String::as_str)
    }

    pub(crate) fn name(&self) -> &str {
        self.spec
            .labels
            .get(crate::node::pods::LABEL_CONTAINER)
            .map_or("", String::as_str)
    }

    /// When the task ends by itself or after its SIGTERM, as scripted.
    pub(crate) fn scheduled_exit(&self) -> Option<(Instant, i32, bool)> {
        let TaskLife::Running { since } = self.task else {
            return None;
        };
        let natural = self
            .run
            .exits_after
            .map(|d| (since + d, self.run.code, self.run.oom_killed));
        let term = self
            .sigterm_at
            .zip(self.run.on_sigterm)
            .map(|(at, d)| (at + d, 128 + 15, false));
        match (natural, term) {
            (Some(n), Some(t)) => Some(if n.0 <= t.0 { n } else { t }),
            (n, t) => n.or(t),
        }
    }
}

/// Sleeps until `at`, or forever.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A pod network of the fake.
#[derive(Debug, Clone)]
pub(crate) struct FakeNet {
    pub(crate) ip: Ipv4Addr,
    pub(crate) netns: PathBuf,
}

/// Everything one fake node holds.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) images: HashMap<String, Image>,
    pub(crate) containers: BTreeMap<String, FakeContainer>,
    /// Every container id ever created (removed ones too): stopping one of these that is
    /// gone is fine, as with the real runtime; stopping any other is a wrong id.
    pub(crate) ever_created: HashSet<String>,
    /// The spec of every container created, in order.
    pub(crate) created_specs: Vec<crate::runtime::ContainerSpec>,
    /// Runs to come, by container name (each start takes the next).
    pub(crate) runs: HashMap<String, VecDeque<Run>>,
    /// Exec results by container name and argv.
    pub(crate) execs: HashMap<(String, Vec<String>), ExecScript>,
    /// Ports by pod address.
    pub(crate) ports: HashMap<SocketAddrV4, PortScript>,
    pub(crate) networks: BTreeMap<String, FakeNet>,
    /// Addresses by owner (a pod uid); kept apart from networks as the real IPAM is.
    pub(crate) addresses: BTreeMap<String, Ipv4Addr>,
    pub(crate) next_address: u32,
    pub(crate) network_setup_failures: u32,
    pub(crate) create_failures: HashMap<String, u32>,
    pub(crate) events: Vec<(Instant, Event)>,
    pub(crate) violations: Vec<String>,
    pub(crate) pids: u32,
    /// Every image asked for is present (as busybox under its name): a hollow node's.
    pub(crate) any_image: bool,
    /// How long every container create takes (an image pull and a task setup).
    pub(crate) create_delay: Duration,
    /// How a start goes once a container's scripted runs are used up.
    pub(crate) default_run: Run,
    /// The node's registries, image sizes and image filesystem (pulls and image GC).
    pub(crate) registry: runtime::FakeRegistry,
}

/// What one fake node's fakes share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) cidr: Ipv4Cidr,
    pub(crate) strict: bool,
    pub(crate) state: Mutex<State>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a broken rule (the lock is held by the caller: `state`).
    pub(crate) fn violation(&self, state: &mut State, what: String) {
        tracing::error!(node = %self.name, violation = %what, "the agent broke a rule of the fake node");
        state.violations.push(what.clone());
        if self.strict {
            panic!("fake node {}: {what}", self.name);
        }
    }

    /// Marks tasks whose scripted exit has come as stopped.
    pub(crate) fn settle(state: &mut State, now: Instant) {
        let mut exited = Vec::new();
        for (id, c) in &mut state.containers {
            if let Some((at, code, oom_killed)) = c.scheduled_exit()
                && at <= now
            {
                c.task = TaskLife::Stopped {
                    code,
                    oom_killed,
                    at,
                };
                c.changed.send_replace(());
                exited.push((
                    at,
                    Event::Exited {
                        id: id.clone(),
                        code,
                    },
                ));
            }
        }
        state.events.extend(exited);
    }
}

/// One node's fakes: a runtime, pod networks and their shared state, and the scripts and
/// checks. Cheap to clone (a handle).
#[derive(Debug, Clone)]
pub struct FakeNode {
    shared: Arc<Shared>,
}

/// The image every fake node has unless told otherwise.
pub const BUSYBOX: &str = "docker.io/library/busybox:latest";

impl FakeNode {
    /// A strict fake node named `name` whose pods get addresses of `cidr`, with busybox.
    pub fn new(name: &str, cidr: Ipv4Cidr) -> FakeNode {
        FakeNode::with_strictness(name, cidr, true)
    }

    /// A fake node that records broken rules without panicking (a hollow node's).
    pub fn lenient(name: &str, cidr: Ipv4Cidr) -> FakeNode {
        FakeNode::with_strictness(name, cidr, false)
    }

    fn with_strictness(name: &str, cidr: Ipv4Cidr, strict: bool) -> FakeNode {
        let node = FakeNode {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                cidr,
                strict,
                state: Mutex::default(),
            }),
        };
        node.add_image(Image {
            name: BUSYBOX.into(),
            id: "sha256:1111111111111111111111111111111111111111111111111111111111111111".into(),
            chain_id: "sha256:2222222222222222222222222222222222222222222222222222222222222222"
                .into(),
            entrypoint: Vec::new(),
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: String::new(),
            user: String::new(),
        });
        node
    }

    /// The fake container runtime.
    pub fn runtime(&self) -> FakeRuntime {
        FakeRuntime::new(self.shared.clone())
    }

    /// The fake pod networks.
    pub fn network(&self) -> FakeNetworks {
        FakeNetworks::new(self.shared.clone())
    }

    /// Makes `image` present (by its normalized name).
    pub fn add_image(&self, image: Image) {
        self.shared.lock().images.insert(image.name.clone(), image);
    }

    /// Scripts the next starts of every container named `container` (after these, it runs
    /// until stopped).
    pub fn script(&self, container: &str, runs: impl IntoIterator<Item = Run>) {
        self.shared
            .lock()
            .runs
            .entry(container.to_owned())
            .or_default()
            .extend(runs);
    }

    /// What `argv` exec'd in a container named `container` does from now on (unscripted
    /// commands exit 0 at once).
    pub fn set_exec(&self, container: &str, argv: &[&str], script: ExecScript) {
        let argv = argv.iter().map(|s| (*s).to_owned()).collect();
        self.shared
            .lock()
            .execs
            .insert((container.to_owned(), argv), script);
    }

    /// What answers on `addr` (a pod address and port) from now on (unscripted ports are
    /// closed).
    pub fn set_port(&self, addr: SocketAddrV4, script: PortScript) {
        self.shared.lock().ports.insert(addr, script);
    }

    /// Makes every image present: one asked for that is not is added (busybox's content under
    /// the name asked for). For hollow nodes, whose pods name images nobody imported.
    pub fn accept_any_image(&self) {
        self.shared.lock().any_image = true;
    }

    /// Every container create takes `d` from now on (what pulling and unpacking would).
    pub fn set_create_delay(&self, d: Duration) {
        self.shared.lock().create_delay = d;
    }

    /// How every start goes once a container's scripted runs are used up (by default
    /// [`Run::forever`]).
    pub fn set_default_run(&self, run: Run) {
        self.shared.lock().default_run = run;
    }

    /// How many rules were broken so far (see [`FakeNode::violations`]).
    pub fn violation_count(&self) -> usize {
        self.shared.lock().violations.len()
    }

    /// The next `n` network setups fail (as with every address in use).
    pub fn fail_network_setups(&self, n: u32) {
        self.shared.lock().network_setup_failures = n;
    }

    /// The next `n` creates of a container named `container` fail.
    pub fn fail_creates(&self, container: &str, n: u32) {
        self.shared
            .lock()
            .create_failures
            .insert(container.to_owned(), n);
    }

    /// Everything seen so far, in order.
    pub fn events(&self) -> Vec<(Instant, Event)> {
        let mut state = self.shared.lock();
        Shared::settle(&mut state, Instant::now());
        state.events.clone()
    }

    /// The rules broken so far.
    pub fn violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
    }

    /// Panics if a rule was broken.
    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(v.is_empty(), "fake node {}: {v:#?}", self.shared.name);
    }

    /// The spec the newest container of container name `name` was created with (it may be
    /// removed since).
    pub fn spec_of(&self, name: &str) -> Option<crate::runtime::ContainerSpec> {
        self.shared
            .lock()
            .created_specs
            .iter()
            .rev()
            .find(|s| {
                s.labels
                    .get(crate::node::pods::LABEL_CONTAINER)
                    .map(String::as_str)
                    == Some(name)
            })
            .cloned()
    }

    /// Ids of the containers that exist, with whether their task runs.
    pub fn containers(&self) -> Vec<(String, bool)> {
        let mut state = self.shared.lock();
        Shared::settle(&mut state, Instant::now());
        state
            .containers
            .iter()
            .map(|(id, c)| (id.clone(), matches!(c.task, TaskLife::Running { .. })))
            .collect()
    }

    /// The address of pod `uid`, if it has one.
    pub fn address_of(&self, uid: &str) -> Option<Ipv4Addr> {
        self.shared.lock().addresses.get(uid).copied()
    }

    /// Whether `other` is a handle of this same node.
    pub(crate) fn is(&self, other: &FakeNode) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// What is left of pod `uid` on this node (containers, with whether their task runs; its
    /// network; its address), each said in words; empty once the pod is gone from it.
    pub fn left_of(&self, uid: &str) -> Vec<String> {
        let mut state = self.shared.lock();
        Shared::settle(&mut state, Instant::now());
        let mut left: Vec<String> = state
            .containers
            .iter()
            .filter(|(_, c)| c.uid() == Some(uid))
            .map(|(id, c)| match c.task {
                TaskLife::Running { .. } => format!("container {id} (running)"),
                _ => format!("container {id}"),
            })
            .collect();
        if let Some(net) = state.networks.get(uid) {
            left.push(format!("its network ({})", net.netns.display()));
        }
        if let Some(ip) = state.addresses.get(uid) {
            left.push(format!("its address {ip}"));
        }
        left
    }

    /// Panics unless nothing of pod `uid` is left: no container, no network, no address.
    pub fn assert_pod_gone(&self, uid: &str) {
        let left = self.left_of(uid);
        assert!(
            left.is_empty(),
            "fake node {}: pod {uid} left {left:?}",
            self.shared.name
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use skiff_api::kinds::Pod;

    use super::*;
    use crate::{
        node::{api::PodApi as _, pods::LABEL_CONTAINER},
        podnet::PodNetworks as _,
        runtime::{ContainerRuntime as _, ContainerSpec},
    };

    const UID: &str = "0e6d1c3a-5b7f-4c2e-9a1d-3f4b5c6d7e8f";

    fn cidr() -> Ipv4Cidr {
        "10.244.7.0/24".parse().expect("a CIDR")
    }

    fn spec(node: &FakeNode, id: &str, netns: PathBuf) -> ContainerSpec {
        let image = node.shared.lock().images[BUSYBOX].clone();
        ContainerSpec {
            id: id.into(),
            image,
            labels: BTreeMap::from([
                (LABEL_POD_UID.to_owned(), UID.to_owned()),
                (LABEL_CONTAINER.to_owned(), "app".to_owned()),
            ]),
            argv: vec!["sleep".into()],
            env: Vec::new(),
            working_dir: String::new(),
            netns,
            hostname: String::new(),
            log_path: "/logs/0.log".into(),
            memory_limit: None,
            cpu_limit_millis: None,
            cpu_request_millis: None,
            cgroup_parent: String::new(),
            mounts: Vec::new(),
            security: Default::default(),
        }
    }

    #[tokio::test]
    #[should_panic(expected = "which was not created")]
    async fn a_strict_fake_node_panics_at_a_start_of_a_container_never_created() {
        let node = FakeNode::new("n", cidr());
        let _ = node.runtime().start("nope").await;
    }

    #[tokio::test]
    async fn a_lenient_fake_node_records_a_network_torn_down_under_a_running_task_a_kill_by_removal_and_a_stray_exec()
     {
        let node = FakeNode::lenient("n", cidr());
        let (rt, net) = (node.runtime(), node.network());
        let pod_net = net.setup(UID).await.expect("a network");
        assert!(cidr().contains(pod_net.ip));
        rt.create(&spec(&node, "c1", pod_net.netns.clone()))
            .await
            .expect("created");
        rt.start("c1").await.expect("started");
        net.teardown(UID).await.expect("torn down");
        rt.remove("c1").await.expect("removed");
        let _ = rt
            .exec("c1", &["true".into()], Duration::from_secs(1))
            .await;
        let v = node.violations();
        assert_eq!(v.len(), 3, "{v:#?}");
        assert!(v[0].contains("torn down while tasks still ran"), "{v:#?}");
        assert!(
            v[1].contains("removed container c1 while its task still ran"),
            "{v:#?}"
        );
        assert!(v[2].contains("does not exist"), "{v:#?}");
        node.assert_pod_gone(UID);
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_exits_come_on_time_and_sigkill_follows_an_ignored_sigterm() {
        let node = FakeNode::new("n", cidr());
        node.script(
            "app",
            [
                Run::exits(Duration::from_secs(5), 3),
                Run::forever().ignoring_sigterm(),
            ],
        );
        let (rt, net) = (node.runtime(), node.network());
        let netns = net.setup(UID).await.expect("a network").netns;
        let t0 = Instant::now();
        rt.create(&spec(&node, "c1", netns.clone()))
            .await
            .expect("created");
        rt.start("c1").await.expect("started");
        let exit = rt.wait("c1").await.expect("an exit");
        assert_eq!((exit.code, t0.elapsed()), (3, Duration::from_secs(5)));
        rt.create(&spec(&node, "c2", netns)).await.expect("created");
        rt.start("c2").await.expect("started");
        rt.stop("c2", Duration::from_secs(4))
            .await
            .expect("stopped");
        assert_eq!(t0.elapsed(), Duration::from_secs(9));
        assert_eq!(rt.wait("c2").await.expect("an exit").code, 137);
        node.assert_no_violations();
    }

    #[tokio::test(start_paused = true)]
    async fn removing_a_running_container_is_a_violation_and_removing_a_stopped_one_is_not() {
        let node = FakeNode::lenient("n", cidr());
        let (rt, net) = (node.runtime(), node.network());
        let netns = net.setup(UID).await.expect("a network").netns;
        for id in ["stopped", "running"] {
            rt.create(&spec(&node, id, netns.clone()))
                .await
                .expect("created");
            rt.start(id).await.expect("started");
        }
        rt.stop("stopped", Duration::from_secs(5))
            .await
            .expect("stopped");
        rt.remove("stopped").await.expect("removed");
        node.assert_no_violations();
        rt.remove("running").await.expect("removed all the same");
        let v = node.violations();
        assert_eq!(v.len(), 1, "{v:#?}");
        assert!(
            v[0].contains("removed container running while its task still ran"),
            "{v:#?}"
        );
        assert!(
            node.events().iter().any(|(_, e)| *e
                == Event::Sigkill {
                    id: "running".into()
                }),
            "the runtime kills it, as the real one does"
        );
        assert!(node.containers().is_empty());
    }

    #[tokio::test]
    #[should_panic(expected = "removed container c1 while its task still ran")]
    async fn a_strict_fake_node_panics_at_a_removal_of_a_running_container() {
        let node = FakeNode::new("n", cidr());
        let (rt, net) = (node.runtime(), node.network());
        let netns = net.setup(UID).await.expect("a network").netns;
        rt.create(&spec(&node, "c1", netns)).await.expect("created");
        rt.start("c1").await.expect("started");
        let _ = rt.remove("c1").await;
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_a_container_the_node_never_had_is_a_violation_but_one_removed_already_is_not()
    {
        let node = FakeNode::lenient("n", cidr());
        let (rt, net) = (node.runtime(), node.network());
        let netns = net.setup(UID).await.expect("a network").netns;
        rt.create(&spec(&node, "c1", netns)).await.expect("created");
        rt.start("c1").await.expect("started");
        rt.stop("c1", Duration::from_secs(1))
            .await
            .expect("stopped");
        rt.remove("c1").await.expect("removed");
        // As containerd: no task to signal is a stopped one.
        rt.stop("c1", Duration::from_secs(1))
            .await
            .expect("stopping a removed container is Ok");
        node.assert_no_violations();
        rt.stop("c2", Duration::from_secs(1))
            .await
            .expect("Ok, as the real runtime answers");
        let v = node.violations();
        assert_eq!(v.len(), 1, "{v:#?}");
        assert!(
            v[0].contains("stopped container c2, which this node never had"),
            "{v:#?}"
        );
    }

    fn stored_pod(api: &FakeApi, name: &str, uid: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.namespace = "default".into();
        pod.metadata.name = name.into();
        pod.metadata.uid = uid.into();
        api.put(pod)
    }

    #[tokio::test]
    #[should_panic(expected = "but the API never marked it for deletion")]
    async fn a_strict_fake_api_panics_at_a_final_delete_of_a_pod_never_marked_for_deletion() {
        let api = FakeApi::new();
        stored_pod(&api, "p", UID);
        let _ = api.delete("default", "p", UID).await;
    }

    #[tokio::test]
    async fn a_final_delete_of_a_pod_not_marked_or_still_held_by_a_node_is_a_violation() {
        const OTHER: &str = "1e6d1c3a-5b7f-4c2e-9a1d-3f4b5c6d7e8f";
        let node = FakeNode::lenient("n", cidr());
        let api = FakeApi::lenient();
        api.check_against(&node);
        api.check_against(&node.clone());
        let (rt, net) = (node.runtime(), node.network());
        // A pod nobody asked to delete, with nothing on the node: only the mark is missing.
        stored_pod(&api, "unmarked", OTHER);
        api.delete("default", "unmarked", OTHER)
            .await
            .expect("deleted");
        let v = api.violations();
        assert_eq!(v.len(), 1, "{v:#?}");
        assert!(
            v[0].contains("default/unmarked") && v[0].contains("never marked it for deletion"),
            "{v:#?}"
        );
        // A pod marked for deletion whose container still runs in its network.
        stored_pod(&api, "p", UID);
        let netns = net.setup(UID).await.expect("a network").netns;
        rt.create(&spec(&node, "c1", netns)).await.expect("created");
        rt.start("c1").await.expect("started");
        api.mark_deleted("default", "p", 30).expect("the pod");
        api.delete("default", "p", UID).await.expect("deleted");
        let v = api.violations();
        assert_eq!(v.len(), 2, "one more, however many nodes' handles: {v:#?}");
        for held in [
            "still holds",
            "container c1 (running)",
            "its network",
            "its address",
        ] {
            assert!(v[1].contains(held), "{held}: {v:#?}");
        }
        // Done right: stopped, removed, torn down, then deleted; and a pod gone is NotFound.
        rt.stop("c1", Duration::ZERO).await.expect("stopped");
        rt.remove("c1").await.expect("removed");
        net.teardown(UID).await.expect("torn down");
        stored_pod(&api, "p", UID);
        api.mark_deleted("default", "p", 30).expect("the pod");
        api.delete("default", "p", UID).await.expect("deleted");
        let gone = api.delete("default", "p", UID).await;
        assert!(gone.is_err_and(|e| e.is_not_found()));
        assert_eq!(api.violations().len(), 2, "{:#?}", api.violations());
        node.assert_no_violations();
    }

    #[tokio::test]
    #[should_panic(expected = "the phase went from Succeeded back to Running")]
    async fn the_fake_api_refuses_stale_writes_and_panics_at_a_finished_pod_running_again() {
        let api = FakeApi::new();
        let mut pod = Pod::default();
        pod.metadata.namespace = "default".into();
        pod.metadata.name = "p".into();
        pod.metadata.uid = UID.into();
        let stored = api.put(pod);
        let mut done = stored.clone();
        done.status.phase = "Succeeded".into();
        let done = api.update_status(&done).await.expect("written");
        let stale = api.update_status(&stored).await;
        assert!(stale.is_err_and(|e| e.is_conflict()));
        let mut again = done;
        again.status.phase = "Running".into();
        let _ = api.update_status(&again).await;
    }
}
