//! Hollow nodes (Kubernetes' kubemark): the real node agent, `skiff_agent::node::agent`, run
//! over the checking fakes of `skiff_agent::testing` instead of containerd and netlink, each
//! node with its own token. The agent registers its Node, renews its Lease, reports its
//! status, watches the pods bound to it and runs them: their containers "run" in the fake
//! runtime at once (after the configured start delay) and keep running, their addresses come
//! from the fake pod networks over the node's pod CIDR, and the agent finishes their deletion.
//! A hollow node has no service proxy, no host routes, no log tunnel and writes no files;
//! thousands of them fit in one process, sharing a few connections.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    hash::{BuildHasher, RandomState},
    net::Ipv4Addr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;
/// The namespace node Leases live in and the label every node carries with its own name: the
/// real agent's.
pub use skiff_agent::node::heartbeat::{HOSTNAME_LABEL, LEASE_NAMESPACE};
use skiff_agent::{
    node::{
        self,
        agent::{AgentStats, Features, NodeAgent, Parts, Settings},
        api::PodApi,
        heartbeat::Resources,
    },
    paths::NodePaths,
    runtime::ContainerRuntime as _,
    testing::{FakeNode, Run},
};
use skiff_api::{
    client::{Client, ClientError},
    kinds::{Pod, PodStatus, Taint, condition},
    meta::time,
    net::Ipv4Cidr,
    quantity::Quantity,
};
use tokio::{sync::Semaphore, task::JoinHandle, time::Instant};

/// Pods a node takes unless told otherwise (the kubelet's default).
pub const DEFAULT_MAX_PODS: u32 = 110;
/// The default lease renewal interval: a quarter of the controller-manager's default
/// 10-second node monitor grace period.
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_millis(2500);
/// How often a node looks at its own Node object by default (the agent writes its status when
/// it changed, and an unchanged one every [`STATUS_REPORT_EVERY`] looks): `skiff-agent
/// node`'s default. Not longer: a status write that loses a compare-and-swap (the node
/// lifecycle controller tainting the node as it registers, say) is tried again only at the
/// next look, so a node can take a whole interval to report Ready.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// A node rewrites an unchanged status (a fresh heartbeat) every this many status checks: once
/// a minute at the default interval, as `skiff-agent node` does.
pub const STATUS_REPORT_EVERY: u32 = 6;
/// Registrations a [`Fleet`] sends at once (thousands of nodes start in a burst otherwise).
pub const FLEET_REGISTRATIONS_AT_ONCE: usize = 64;
/// The first wait before an agent that stopped with an error starts again (as a supervisor
/// would restart it); doubled up to [`MAX_RESTART_WAIT`].
const MIN_RESTART_WAIT: Duration = Duration::from_millis(200);
const MAX_RESTART_WAIT: Duration = Duration::from_secs(10);
/// Where a hollow node's agent would find container logs. Nothing is ever written there (the
/// fake runtime writes no logs); the agent only looks for leftovers in it and removes a pod's
/// directory, which is never there.
const LOGS_ROOT: &str = "/run/skiff-hollow/logs";
/// The restart back-off of exited containers (the agent's defaults; hollow containers do not
/// exit by themselves).
const RESTART_BACKOFF: Duration = Duration::from_secs(10);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// Configuration

/// One hollow node.
#[derive(Clone)]
pub struct NodeConfig {
    pub name: String,
    /// The node's bearer token (role `node`, bound to `name` in the API server's tokens file).
    pub token: String,
    /// Labels besides `kubernetes.io/hostname=<name>` (only when the node creates its Node).
    pub labels: BTreeMap<String, String>,
    /// Taints the Node is registered with (only when the node creates its Node object).
    pub taints: Vec<Taint>,
    /// `10.128.3.0/24`: the pod CIDR the node registers with (a Node that has another one is
    /// an error, as for `skiff-agent node --pod-cidr`). Pods get addresses from it in turn, as
    /// the agent's IPAM hands them out.
    pub pod_cidr: String,
    /// The node's InternalIP. Only ever an address in the API: nothing is sent to it.
    pub internal_ip: String,
    /// Capacity and allocatable CPU (`8`, `3500m`).
    pub cpu: String,
    /// Capacity and allocatable memory (`32Gi`).
    pub memory: String,
    pub max_pods: u32,
    /// Between lease renewals.
    pub renew_interval: Duration,
    /// The Lease's `leaseDurationSeconds`: the agent's four renewal intervals (set with
    /// [`NodeConfig::with_renew_interval`]; the agent derives it, so it is for reading).
    pub lease_duration_seconds: i32,
    /// Between looks at the node's own Node object (its status is rewritten when it differs,
    /// and refreshed every [`STATUS_REPORT_EVERY`] looks).
    pub status_interval: Duration,
    /// How long creating each container takes (image pull and container start).
    pub start_delay: Duration,
    /// How long each container takes to exit after SIGTERM (the containers' shutdown).
    pub delete_delay: Duration,
    /// Whether new pods are reported ready as soon as they run (see [`HollowNode::set_ready`]).
    pub ready_by_default: bool,
}

impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfig")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("labels", &self.labels)
            .field("taints", &self.taints)
            .field("pod_cidr", &self.pod_cidr)
            .field("internal_ip", &self.internal_ip)
            .field("cpu", &self.cpu)
            .field("memory", &self.memory)
            .field("max_pods", &self.max_pods)
            .field("renew_interval", &self.renew_interval)
            .field("lease_duration_seconds", &self.lease_duration_seconds)
            .field("status_interval", &self.status_interval)
            .field("start_delay", &self.start_delay)
            .field("delete_delay", &self.delete_delay)
            .field("ready_by_default", &self.ready_by_default)
            .finish()
    }
}

impl NodeConfig {
    /// The node numbered `index` (below 32,768): pod CIDR `10.(128 + index / 256).(index %
    /// 256).0/24`, InternalIP the `index + 1`-th address of 172.31.0.0/16, 8 CPUs, 32 GiB, 110
    /// pods, renewals every 2.5 s, pods started and deleted at once and ready.
    pub fn new(name: impl Into<String>, token: impl Into<String>, index: u32) -> NodeConfig {
        let host = index + 1;
        NodeConfig {
            name: name.into(),
            token: token.into(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            pod_cidr: format!("10.{}.{}.0/24", 128 + index / 256, index % 256),
            internal_ip: format!("172.31.{}.{}", (host >> 8) & 0xff, host & 0xff),
            cpu: "8".into(),
            memory: "32Gi".into(),
            max_pods: DEFAULT_MAX_PODS,
            renew_interval: DEFAULT_RENEW_INTERVAL,
            lease_duration_seconds: lease_duration_for(DEFAULT_RENEW_INTERVAL),
            status_interval: DEFAULT_STATUS_INTERVAL,
            start_delay: Duration::ZERO,
            delete_delay: Duration::ZERO,
            ready_by_default: true,
        }
    }

    /// Sets the renewal interval and a lease duration of four intervals (the agent's ratio).
    pub fn with_renew_interval(mut self, interval: Duration) -> NodeConfig {
        self.renew_interval = interval;
        self.lease_duration_seconds = lease_duration_for(interval);
        self
    }

    /// The agent's settings for this node, checked.
    fn settings(&self) -> Result<Settings> {
        let name = &self.name;
        if self.renew_interval.is_zero() || self.status_interval.is_zero() {
            bail!("node {name}: the renew and status intervals must not be zero");
        }
        let pod_cidr = Ipv4Cidr::parse(&self.pod_cidr)
            .with_context(|| format!("node {name}: pod CIDR {:?}", self.pod_cidr))?;
        let internal_ip: Ipv4Addr = self
            .internal_ip
            .parse()
            .with_context(|| format!("node {name}: InternalIP {:?}", self.internal_ip))?;
        let q = |what: &str, v: &str| {
            Quantity::parse(v).with_context(|| format!("node {name}: {what} {v:?}"))
        };
        let resources: BTreeMap<String, Quantity> = [
            ("cpu".to_owned(), q("cpu", &self.cpu)?),
            ("memory".to_owned(), q("memory", &self.memory)?),
            (
                "pods".to_owned(),
                q("max pods", &self.max_pods.to_string())?,
            ),
        ]
        .into();
        Ok(Settings {
            node: node::NodeConfig {
                name: name.clone(),
                pod_cidr: Some(pod_cidr),
                reserved_cpu: q("cpu", "0")?,
                reserved_memory: q("memory", "0")?,
                max_pods: self.max_pods,
                labels: self.labels.clone(),
                taints: self.taints.clone(),
            },
            internal_ip,
            resources: Resources {
                capacity: resources.clone(),
                allocatable: resources,
            },
            runtime_version: String::new(),
            lease_interval: self.renew_interval,
            status_interval: self.status_interval,
            status_refresh: self.status_interval * STATUS_REPORT_EVERY,
            backoff_initial: RESTART_BACKOFF,
            backoff_max: MAX_RESTART_BACKOFF,
            paths: NodePaths::new(
                PathBuf::from(LOGS_ROOT).join(name),
                format!("/skiff/{name}"),
            ),
            features: Features {
                host_routes: false,
                log_tunnel: false,
            },
            // The fake pod networks exist before the agent starts: a restarted hollow node
            // reports Ready, as a node whose network outlives its agent would.
            network_ready: true,
        })
    }

    /// The node's fakes: lenient (a broken rule is counted, not a panic), every image
    /// present, containers that take `start_delay` to create, run until stopped and take
    /// `delete_delay` to exit after SIGTERM.
    fn fake(&self, cidr: Ipv4Cidr) -> FakeNode {
        let fake = FakeNode::lenient(&self.name, cidr);
        fake.accept_any_image();
        fake.set_create_delay(self.start_delay);
        fake.set_default_run(Run::forever().exiting_after_sigterm_in(self.delete_delay));
        fake
    }
}

/// Four renewal intervals, in whole seconds (at least one): the agent's lease duration.
fn lease_duration_for(interval: Duration) -> i32 {
    i32::try_from((interval.as_millis() * 4).div_ceil(1000))
        .unwrap_or(40)
        .max(1)
}

// ---------------------------------------------------------------------------------------------
// Node tokens

/// One node's identity for the API server's tokens file.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeToken {
    pub user: String,
    pub token: String,
    pub node: String,
}

impl fmt::Debug for NodeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeToken")
            .field("user", &self.user)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl NodeToken {
    /// This token as an entry of the tokens file's `tokens:` list.
    pub fn yaml_entry(&self) -> String {
        format!(
            "- token: {}\n  user: {}\n  role: node\n  node: {}\n",
            self.token, self.user, self.node
        )
    }

    /// The configuration of node number `index` with this token (see [`NodeConfig::new`]).
    pub fn config(&self, index: u32) -> NodeConfig {
        NodeConfig::new(self.node.clone(), self.token.clone(), index)
    }
}

/// `n` nodes named `<prefix>-00000`, `<prefix>-00001`, ... (five digits at least), each with
/// its own random token; the user is `node:<name>`.
pub fn node_tokens(prefix: &str, n: usize) -> Vec<NodeToken> {
    let width = n.saturating_sub(1).to_string().len().max(5);
    (0..n)
        .map(|i| {
            let node = format!("{prefix}-{i:0width$}");
            NodeToken {
                user: format!("node:{node}"),
                token: format!("{node}-{:016x}{:016x}", random_u64(), random_u64()),
                node,
            }
        })
        .collect()
}

/// The entries of `tokens` for the `tokens:` list of a tokens file (append to `tokens:\n`).
pub fn tokens_yaml(tokens: &[NodeToken]) -> String {
    tokens.iter().map(NodeToken::yaml_entry).collect()
}

fn random_u64() -> u64 {
    // Every RandomState has fresh keys, so the hash of a constant is a new random number.
    RandomState::new().hash_one(0u8)
}

/// A random fraction in [0, 1).
fn random_fraction() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

// ---------------------------------------------------------------------------------------------
// What the nodes did

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NodeState {
    /// Registering, renewing its lease for the first time, or listing its pods.
    Starting,
    /// Registered, lease held, Ready reported, watching its pods.
    Running,
    /// Told to stop its heartbeat: its agent is stopped, as if it died.
    Stopped,
}

/// What a node (or a fleet, summed) has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeStats {
    pub lease_renewals: u64,
    pub lease_failures: u64,
    pub node_status_writes: u64,
    pub pod_status_writes: u64,
    /// Compare-and-swaps of pod statuses lost (and retried after reading the pod again).
    pub conflicts: u64,
    pub pod_deletes: u64,
    /// Failed calls (each retried later) and agent starts that failed.
    pub errors: u64,
    /// Rules of the fake node the agent broke (see `skiff_agent::testing`): always 0 unless
    /// the agent has a bug.
    pub fake_violations: u64,
    /// The latest failure, with the node's name.
    pub last_error: Option<String>,
}

impl NodeStats {
    fn add(&mut self, o: &NodeStats) {
        self.lease_renewals += o.lease_renewals;
        self.lease_failures += o.lease_failures;
        self.node_status_writes += o.node_status_writes;
        self.pod_status_writes += o.pod_status_writes;
        self.conflicts += o.conflicts;
        self.pod_deletes += o.pod_deletes;
        self.errors += o.errors;
        self.fake_violations += o.fake_violations;
        if self.last_error.is_none() {
            self.last_error.clone_from(&o.last_error);
        }
    }
}

/// The pod writes of one node and what went wrong outside the heartbeat.
#[derive(Debug, Default)]
struct Counters {
    pod_status_writes: AtomicU64,
    conflicts: AtomicU64,
    pod_deletes: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn error(&self, node: &str, what: &str, e: &dyn fmt::Display) {
        Counters::bump(&self.errors);
        *lock(&self.last_error) = Some(format!("{node}: {what}: {e}"));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Readiness, the test's to set

/// Which pods a node reports unready although their containers run.
#[derive(Debug, Default)]
struct Readiness {
    ready_by_default: bool,
    /// Set by `set_ready`, by `namespace/name` (a pod not seen yet gets it when it comes).
    by_key: HashMap<String, bool>,
    /// When each pod reported unready went unready (its conditions' transition time), by uid.
    unready_since: HashMap<String, String>,
    /// The status the agent last wanted for each pod reported unready, by uid (what goes back
    /// when it is set ready).
    wanted: HashMap<String, PodStatus>,
}

impl Readiness {
    fn ready(&self, key: &str) -> bool {
        self.by_key
            .get(key)
            .copied()
            .unwrap_or(self.ready_by_default)
    }
}

/// Makes a running pod's status say its containers are not ready (the Ready and
/// ContainersReady conditions, and each container's `ready`), as a failing readiness probe
/// would; whether anything changed.
fn unready(status: &mut PodStatus, since: &str) -> bool {
    if status.phase != "Running" {
        return false;
    }
    let mut changed = false;
    let names: Vec<&str> = status
        .container_statuses
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let message = format!(
        "the hollow node reports these containers not ready: [{}]",
        names.join(" ")
    );
    for c in &mut status.conditions {
        if (c.type_ == "Ready" || c.type_ == "ContainersReady") && c.status != "False" {
            c.status = "False".into();
            c.reason = "ContainersNotReady".into();
            c.message.clone_from(&message);
            c.last_transition_time = Some(since.to_owned());
            changed = true;
        }
    }
    for c in &mut status.container_statuses {
        changed |= c.ready;
        c.ready = false;
    }
    changed
}

/// The agent's pod writes through the node's own client: counted, and with the readiness the
/// test set. The agent writes what it sees (every container running, so ready); for a pod
/// set unready the write says otherwise. The agent then finds the stored status different
/// from its own at its next look and writes again, which comes out the same: the API server
/// stores nothing and sends no event, so the two never fight.
#[derive(Debug)]
struct HollowApi {
    node: String,
    client: Client,
    counters: Arc<Counters>,
    readiness: Mutex<Readiness>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl HollowApi {
    /// The status to store for `pod` with the readiness set for it.
    fn adjust(&self, pod: &Pod) -> PodStatus {
        let key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
        let uid = &pod.metadata.uid;
        let mut r = lock(&self.readiness);
        if r.ready(&key) {
            r.wanted.remove(uid);
            r.unready_since.remove(uid);
            return pod.status.clone();
        }
        let since = r
            .unready_since
            .entry(uid.clone())
            .or_insert_with(time::now)
            .clone();
        let mut status = pod.status.clone();
        if unready(&mut status, &since) {
            r.wanted.insert(uid.clone(), pod.status.clone());
        }
        status
    }

    async fn write(&self, pod: &Pod) -> Result<Pod, ClientError> {
        let mut pod = pod.clone();
        pod.status = self.adjust(&pod);
        let result = self.client.update_status(&pod).await;
        match &result {
            Ok(_) => Counters::bump(&self.counters.pod_status_writes),
            Err(e) if e.is_conflict() => Counters::bump(&self.counters.conflicts),
            Err(e) if e.is_not_found() => {}
            Err(e) => self.counters.error(&self.node, "writing a pod's status", e),
        }
        result
    }

    /// Writes `stored` (the pod as stored) again with the readiness now set for it, when the
    /// agent has written it before; whether it wrote.
    async fn rewrite(&self, stored: &Pod) -> Result<bool, ClientError> {
        let uid = &stored.metadata.uid;
        let key = format!("{}/{}", stored.metadata.namespace, stored.metadata.name);
        let status = {
            let mut r = lock(&self.readiness);
            if r.ready(&key) {
                r.unready_since.remove(uid);
                match r.wanted.remove(uid) {
                    Some(s) => s,
                    None => return Ok(false),
                }
            } else {
                // The stored status is the agent's own: flip it.
                let mut s = stored.status.clone();
                let since = time::now();
                if !unready(&mut s, &since) {
                    return Ok(false);
                }
                r.unready_since.insert(uid.clone(), since);
                r.wanted.insert(uid.clone(), stored.status.clone());
                s
            }
        };
        let mut pod = stored.clone();
        pod.status = status;
        match self.client.update_status(&pod).await {
            Ok(_) => {
                Counters::bump(&self.counters.pod_status_writes);
                Ok(true)
            }
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

// Written out rather than with `async_trait` (the form that macro gives), which this crate
// does not otherwise need.
impl PodApi for HollowApi {
    fn update_status<'a, 'b, 'c>(&'a self, pod: &'b Pod) -> BoxFuture<'c, Result<Pod, ClientError>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(self.write(pod))
    }

    fn get<'a, 'b, 'd, 'c>(
        &'a self,
        namespace: &'b str,
        name: &'d str,
    ) -> BoxFuture<'c, Result<Pod, ClientError>>
    where
        'a: 'c,
        'b: 'c,
        'd: 'c,
        Self: 'c,
    {
        Box::pin(async move { PodApi::get(&self.client, namespace, name).await })
    }

    fn delete<'a, 'b, 'd, 'e, 'c>(
        &'a self,
        namespace: &'b str,
        name: &'d str,
        uid: &'e str,
    ) -> BoxFuture<'c, Result<(), ClientError>>
    where
        'a: 'c,
        'b: 'c,
        'd: 'c,
        'e: 'c,
        Self: 'c,
    {
        Box::pin(async move {
            let result = PodApi::delete(&self.client, namespace, name, uid).await;
            match &result {
                Ok(()) => {
                    Counters::bump(&self.counters.pod_deletes);
                    let mut r = lock(&self.readiness);
                    r.wanted.remove(uid);
                    r.unready_since.remove(uid);
                }
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => self.counters.error(&self.node, "deleting a pod", e),
            }
            result
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The handle

/// What a node's handle and its agent share.
#[derive(Debug)]
struct Shared {
    name: String,
    settings: Settings,
    client: Client,
    fake: FakeNode,
    api: Arc<HollowApi>,
    stats: Arc<AgentStats>,
    counters: Arc<Counters>,
    /// Limits how many nodes of a fleet register at once.
    gate: Option<Arc<Semaphore>>,
    stopped: AtomicBool,
}

/// A running hollow node: its agent's tasks on the current tokio runtime, stopped when this
/// is dropped.
pub struct HollowNode {
    shared: Arc<Shared>,
    agent: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for HollowNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HollowNode")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl HollowNode {
    /// Starts a node over `client`'s connection, authenticating with the node's own token.
    /// Must be called within a tokio runtime.
    pub fn start(client: &Client, config: NodeConfig) -> Result<HollowNode> {
        HollowNode::spawn(client, config, None)
    }

    fn spawn(
        client: &Client,
        config: NodeConfig,
        gate: Option<Arc<Semaphore>>,
    ) -> Result<HollowNode> {
        let settings = config.settings()?;
        let cidr = settings
            .node
            .pod_cidr
            .context("a hollow node has a pod CIDR")?;
        let node_client = client
            .with_token(&config.token)
            .with_context(|| format!("node {}: token", config.name))?;
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            fake: config.fake(cidr),
            api: Arc::new(HollowApi {
                node: config.name.clone(),
                client: node_client.clone(),
                counters: counters.clone(),
                readiness: Mutex::new(Readiness {
                    ready_by_default: config.ready_by_default,
                    ..Readiness::default()
                }),
            }),
            settings,
            client: node_client,
            stats: Arc::default(),
            counters,
            gate,
            stopped: AtomicBool::new(false),
        });
        let agent = tokio::spawn(run_agent(shared.clone()));
        Ok(HollowNode {
            shared,
            agent: Mutex::new(Some(agent)),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn state(&self) -> NodeState {
        if self.shared.stopped.load(Ordering::Relaxed) {
            NodeState::Stopped
        } else if self.shared.stats.is_up() {
            NodeState::Running
        } else {
            NodeState::Starting
        }
    }

    /// Waits until the node is registered, holds its lease, has reported itself Ready and
    /// watches its pods.
    pub async fn wait_running(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.state() {
                NodeState::Running => return Ok(()),
                NodeState::Stopped => bail!("node {}: its heartbeat is stopped", self.name()),
                NodeState::Starting => {}
            }
            if Instant::now() >= deadline {
                let stats = self.stats();
                bail!(
                    "node {} was not running within {} s (last error: {})",
                    self.name(),
                    timeout.as_secs_f64(),
                    stats.last_error.as_deref().unwrap_or("none")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reports the pod `namespace/name` ready or not (its Ready and ContainersReady conditions
    /// and its containers' `ready`, as a readiness probe would), and returns once the stored
    /// pod says so. A pod the node has not seen yet gets the setting when it arrives (so this
    /// waits for it: give it a timeout). Fails if the pod goes away or the node stops first.
    pub async fn set_ready(&self, namespace: &str, name: &str, ready: bool) -> Result<()> {
        let key = format!("{namespace}/{name}");
        lock(&self.shared.api.readiness)
            .by_key
            .insert(key.clone(), ready);
        let want = if ready { "True" } else { "False" };
        let mut seen: Option<String> = None;
        let mut rewritten = false;
        loop {
            if self.shared.stopped.load(Ordering::Relaxed) {
                bail!("node {} has stopped its heartbeat", self.name());
            }
            match self.shared.client.get::<Pod>(namespace, name).await {
                Ok(p) if p.spec.node_name == self.shared.name => {
                    if seen.as_ref().is_some_and(|uid| *uid != p.metadata.uid) {
                        bail!("pod {key}: deleted");
                    }
                    if p.metadata.deletion_timestamp.is_some() {
                        bail!("pod {key} is being deleted");
                    }
                    let is = condition(&p.status.conditions, "Ready").map(|c| c.status.as_str());
                    if p.status.phase == "Running" && is == Some(want) {
                        return Ok(());
                    }
                    if !rewritten {
                        rewritten = self.shared.api.rewrite(&p).await?;
                    }
                    seen = Some(p.metadata.uid);
                }
                Ok(_) => {}
                Err(e) if e.is_not_found() && seen.is_some() => bail!("pod {key}: deleted"),
                // Not there yet, or not bound to this node yet (the node may not read it).
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the node's agent as if it died: no more lease renewals or status writes, no
    /// reaction to its pods. Its containers and pod networks stay in its fakes.
    pub fn stop_heartbeat(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        if let Some(agent) = lock(&self.agent).take() {
            agent.abort();
        }
    }

    /// Starts a stopped node's agent again, as after a restart: it registers, renews its
    /// lease, lists its pods and adopts the containers and addresses they have.
    pub fn resume(&self) {
        let mut agent = lock(&self.agent);
        if agent.is_none() {
            self.shared.stopped.store(false, Ordering::Relaxed);
            *agent = Some(tokio::spawn(run_agent(self.shared.clone())));
        }
    }

    pub fn stats(&self) -> NodeStats {
        let (a, c) = (&self.shared.stats, &self.shared.counters);
        let get = |x: &AtomicU64| x.load(Ordering::Relaxed);
        NodeStats {
            lease_renewals: get(&a.lease_renewals),
            lease_failures: get(&a.lease_failures),
            node_status_writes: get(&a.node_status_writes),
            pod_status_writes: get(&c.pod_status_writes),
            conflicts: get(&c.conflicts),
            pod_deletes: get(&c.pod_deletes),
            errors: get(&a.errors) + get(&c.errors),
            fake_violations: self.shared.fake.violation_count() as u64,
            last_error: lock(&c.last_error)
                .clone()
                .or_else(|| lock(&a.last_error).clone()),
        }
    }

    /// Stops the node's agent (as dropping it does). Its Node and Lease stay in the API.
    pub fn stop(self) {}
}

impl Drop for HollowNode {
    fn drop(&mut self) {
        if let Some(agent) = lock(&self.agent).take() {
            agent.abort();
        }
    }
}

/// Runs the node's agent over its fakes, starting it again after a failure (as a supervisor
/// would), until aborted. Aborting it stops every task of the agent.
async fn run_agent(shared: Arc<Shared>) {
    let mut failures = 0u32;
    loop {
        shared.stats.restarted();
        let result = run_agent_once(&shared).await;
        if let Err(e) = result {
            shared
                .counters
                .error(&shared.name, "the agent", &format!("{e:#}"));
        }
        let wait = MIN_RESTART_WAIT
            .saturating_mul(1 << failures.min(10))
            .min(MAX_RESTART_WAIT);
        failures += 1;
        tokio::time::sleep(wait.mul_f64(0.5 + random_fraction() / 2.0)).await;
    }
}

async fn run_agent_once(shared: &Shared) -> Result<()> {
    let runtime = shared.fake.runtime();
    let mut settings = shared.settings.clone();
    settings.runtime_version = runtime.version().await.context("the fake runtime")?;
    let agent = NodeAgent::new(shared.client.clone(), settings, shared.stats.clone());
    let registered = {
        let _permit = match &shared.gate {
            Some(g) => g.acquire().await.ok(),
            None => None,
        };
        agent.register().await.context("registering")?
    };
    registered
        .run(Parts {
            api: shared.api.clone(),
            runtime: Arc::new(runtime),
            network: Arc::new(shared.fake.network()),
            proxy: None,
        })
        .await
        .context("running the pods")?;
    Err(anyhow!("the agent stopped"))
}

/// Many hollow nodes in one process, each with its own token, sharing one connection (or a
/// few).
#[derive(Debug)]
pub struct Fleet {
    nodes: Vec<HollowNode>,
    by_name: HashMap<String, usize>,
    /// Shared by every node, so that at most [`FLEET_REGISTRATIONS_AT_ONCE`] register at once.
    gate: Arc<Semaphore>,
}

impl Fleet {
    /// Starts a node for every configuration over `client`'s connection; at most
    /// [`FLEET_REGISTRATIONS_AT_ONCE`] register at a time.
    pub fn start(client: &Client, configs: Vec<NodeConfig>) -> Result<Fleet> {
        Fleet::start_on(std::slice::from_ref(client), configs)
    }

    /// Like [`Fleet::start`], the nodes taking turns over the given connections.
    pub fn start_on(connections: &[Client], configs: Vec<NodeConfig>) -> Result<Fleet> {
        let mut fleet = Fleet {
            nodes: Vec::new(),
            by_name: HashMap::new(),
            gate: Arc::new(Semaphore::new(FLEET_REGISTRATIONS_AT_ONCE)),
        };
        fleet.grow(connections, configs)?;
        Ok(fleet)
    }

    /// Starts more nodes, taking turns over the given connections.
    pub fn grow(&mut self, connections: &[Client], configs: Vec<NodeConfig>) -> Result<()> {
        if connections.is_empty() {
            bail!("a fleet needs at least one connection");
        }
        for cfg in configs {
            if self.by_name.contains_key(&cfg.name) {
                bail!("two hollow nodes are named {}", cfg.name);
            }
            let client = &connections[self.nodes.len() % connections.len()];
            let node = HollowNode::spawn(client, cfg, Some(self.gate.clone()))?;
            self.by_name
                .insert(node.name().to_owned(), self.nodes.len());
            self.nodes.push(node);
        }
        Ok(())
    }

    /// Waits until every node is running (see [`HollowNode::wait_running`]).
    pub async fn wait_running(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for node in &self.nodes {
            node.wait_running(deadline.saturating_duration_since(Instant::now()))
                .await?;
        }
        Ok(())
    }

    pub fn nodes(&self) -> &[HollowNode] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&HollowNode> {
        self.by_name.get(name).map(|&i| &self.nodes[i])
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's figures, summed (the last error is one node's).
    pub fn stats(&self) -> NodeStats {
        let mut total = NodeStats::default();
        for n in &self.nodes {
            total.add(&n.stats());
        }
        total
    }

    /// Stops every node.
    pub fn stop(self) {}
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use skiff_api::kinds::{Condition, ContainerStatus};

    use super::*;

    #[test]
    fn node_numbers_give_distinct_pod_cidrs_and_addresses() {
        let a = NodeConfig::new("a", "t", 0);
        let b = NodeConfig::new("b", "t", 255);
        let c = NodeConfig::new("c", "t", 4999);
        assert_eq!(a.pod_cidr, "10.128.0.0/24");
        assert_eq!(b.pod_cidr, "10.128.255.0/24");
        assert_eq!(c.pod_cidr, "10.147.135.0/24");
        assert_eq!(a.internal_ip, "172.31.0.1");
        assert_eq!(b.internal_ip, "172.31.1.0");
        assert_eq!(c.internal_ip, "172.31.19.136");
        assert_eq!(a.lease_duration_seconds, 10);
        let slow = a.with_renew_interval(Duration::from_secs(10));
        assert_eq!(slow.lease_duration_seconds, 40);
    }

    #[test]
    fn a_node_config_becomes_agent_settings_without_proxy_routes_or_tunnel() {
        let mut c = NodeConfig::new("hollow-00007", "secret", 7);
        c.labels.insert("zone".into(), "z1".into());
        let s = c.settings().unwrap();
        assert_eq!(
            s.node.pod_cidr.map(|c| c.to_string()).as_deref(),
            Some("10.128.7.0/24")
        );
        assert_eq!(s.internal_ip, Ipv4Addr::new(172, 31, 0, 8));
        assert_eq!(s.resources.capacity, s.resources.allocatable);
        assert_eq!(s.resources.capacity["pods"].value(), 110);
        assert_eq!(s.node.labels["zone"], "z1");
        assert_eq!(
            s.status_refresh,
            DEFAULT_STATUS_INTERVAL * STATUS_REPORT_EVERY
        );
        assert!(!s.features.host_routes && !s.features.log_tunnel);
        for bad in [
            NodeConfig {
                pod_cidr: "ten/24".into(),
                ..c.clone()
            },
            NodeConfig {
                internal_ip: "nowhere".into(),
                ..c.clone()
            },
            NodeConfig {
                cpu: "lots".into(),
                ..c.clone()
            },
            NodeConfig {
                status_interval: Duration::ZERO,
                ..c.clone()
            },
        ] {
            assert!(bad.settings().is_err(), "{bad:?}");
        }
    }

    fn running(ready: bool) -> PodStatus {
        let cond = |t: &str| Condition {
            type_: t.into(),
            status: if ready { "True" } else { "False" }.into(),
            last_transition_time: Some("T0".into()),
            ..Condition::default()
        };
        PodStatus {
            phase: "Running".into(),
            conditions: vec![cond("Initialized"), cond("Ready"), cond("ContainersReady")],
            container_statuses: vec![ContainerStatus {
                name: "web".into(),
                ready,
                ..ContainerStatus::default()
            }],
            ..PodStatus::default()
        }
    }

    #[test]
    fn unready_flips_only_the_ready_conditions_and_containers_and_is_idempotent() {
        let mut s = running(true);
        assert!(unready(&mut s, "T1"));
        for t in ["Ready", "ContainersReady"] {
            let c = condition(&s.conditions, t).unwrap();
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", "ContainersNotReady")
            );
            assert!(c.message.contains("[web]"));
            assert_eq!(c.last_transition_time.as_deref(), Some("T1"));
        }
        assert_eq!(
            condition(&s.conditions, "Initialized").unwrap().status,
            "True"
        );
        assert!(!s.container_statuses[0].ready);
        let again = s.clone();
        assert!(!unready(&mut s, "T2"));
        assert_eq!(s, again);
        let mut pending = PodStatus {
            phase: "Pending".into(),
            ..running(true)
        };
        assert!(!unready(&mut pending, "T1"));
    }

    #[test]
    fn node_tokens_are_distinct_long_enough_and_form_a_tokens_file() {
        let t = node_tokens("hollow", 3);
        assert_eq!(t[2].node, "hollow-00002");
        assert_eq!(t[2].user, "node:hollow-00002");
        assert!(t.iter().all(|x| x.token.len() >= 16));
        let distinct: HashSet<_> = t.iter().map(|x| &x.token).collect();
        assert_eq!(distinct.len(), 3);
        let yaml = tokens_yaml(&t);
        assert_eq!(yaml.matches("role: node").count(), 3);
        assert!(yaml.contains(&format!(
            "- token: {}\n  user: node:hollow-00001\n  role: node\n  node: hollow-00001\n",
            t[1].token
        )));
        assert_eq!(node_tokens("n", 100_001)[100_000].node, "n-100000");
        assert!(!format!("{:?}", t[0]).contains(&t[0].token));
    }
}
