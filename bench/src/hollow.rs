//! Hollow nodes (Kubernetes' kubemark): simulated nodes that make exactly the API calls a real
//! node agent makes, each with its own node token, and run nothing. A hollow node registers its
//! Node, renews its Lease, watches the pods bound to it, reports them Running with an address
//! from its pod CIDR, and finishes their deletion; thousands of them fit in one process.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap, HashSet},
    fmt,
    hash::{BuildHasher, RandomState},
    net::Ipv4Addr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;
/// The namespace node Leases live in and the label every node carries with its own name: the
/// real agent's, since a hollow node makes the same calls.
pub use skiff_agent::node::heartbeat::{HOSTNAME_LABEL, LEASE_NAMESPACE};
use skiff_agent::node::{
    heartbeat::{differs_beyond_heartbeats, renewed_lease},
    status::set_condition,
};
use skiff_api::{
    Kind, Object,
    client::{Client, ClientError, DeleteParams, ListParams, WatchEvent},
    kinds::{
        Condition, ContainerState, ContainerStateRunning, ContainerStatus, Lease, Node,
        NodeAddress, NodeSpec, NodeStatus, NodeSystemInfo, Pod, PodIp, PodStatus, Taint,
    },
    meta::{ObjectMeta, time},
    quantity::Quantity,
};
use tokio::{
    sync::{Semaphore, mpsc, oneshot, watch},
    task::{JoinHandle, JoinSet},
    time::{Instant, sleep_until},
};
use tokio_stream::{Stream, StreamExt};
/// Pods a node takes unless told otherwise (the kubelet's default).
pub const DEFAULT_MAX_PODS: u32 = 110;
/// The default lease renewal interval: a quarter of the controller-manager's default
/// 10-second node monitor grace period.
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_millis(2500);
/// How often a node looks at its own Node object by default (the kubelet posts its status only
/// when it changed or every [`STATUS_REPORT_EVERY`] checks).
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(60);
/// A node rewrites an unchanged status (a fresh heartbeat) every this many status checks.
pub const STATUS_REPORT_EVERY: u32 = 5;
/// Registrations a [`Fleet`] sends at once (thousands of nodes start in a burst otherwise).
pub const FLEET_REGISTRATIONS_AT_ONCE: usize = 64;
/// Compare-and-swap retries of one status write before it counts as failed (and is retried
/// later).
const CONFLICT_RETRIES: usize = 8;
/// The first wait after a failed call; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Configuration

/// One hollow node.
#[derive(Clone)]
pub struct NodeConfig {
    pub name: String,
    /// The node's bearer token (role `node`, bound to `name` in the API server's tokens file).
    pub token: String,
    /// Labels besides `kubernetes.io/hostname=<name>`.
    pub labels: BTreeMap<String, String>,
    /// Taints the Node is registered with (only when the node creates its Node object).
    pub taints: Vec<Taint>,
    /// `10.128.3.0/24`: pods get addresses from here, the smallest free one first (the first
    /// address after the network's is left for the node's bridge). A Node that already has a
    /// pod CIDR keeps it, and pods get addresses from that one.
    pub pod_cidr: String,
    /// The node's InternalIP. Only ever a string: nothing is sent to it.
    pub internal_ip: String,
    /// Capacity and allocatable CPU (`8`, `3500m`).
    pub cpu: String,
    /// Capacity and allocatable memory (`32Gi`).
    pub memory: String,
    pub max_pods: u32,
    /// Between lease renewals; the first renewal after registration comes at a random point
    /// within it, so nodes started together do not renew together.
    pub renew_interval: Duration,
    /// The Lease's `leaseDurationSeconds`.
    pub lease_duration_seconds: i32,
    /// Between looks at the node's own Node object (its status is rewritten when the
    /// controller-manager changed it, and refreshed every [`STATUS_REPORT_EVERY`] looks).
    pub status_interval: Duration,
    /// From seeing a new pod to reporting it Running (image pull and container start).
    pub start_delay: Duration,
    /// From seeing a pod marked for deletion to deleting it (the containers' shutdown).
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

    /// Sets the renewal interval and a lease duration of four intervals (the kubelet's ratio).
    pub fn with_renew_interval(mut self, interval: Duration) -> NodeConfig {
        self.renew_interval = interval;
        self.lease_duration_seconds = lease_duration_for(interval);
        self
    }
}

/// Four renewal intervals, in whole seconds (at least one).
fn lease_duration_for(interval: Duration) -> i32 {
    i32::try_from((interval.as_millis() * 4).div_ceil(1000))
        .unwrap_or(i32::MAX)
        .max(1)
}

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
// The handle

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NodeState {
    /// Registering, creating its lease or listing its pods.
    Starting,
    /// Registered, lease held, watching its pods.
    Running,
    /// Told to stop its heartbeat: it renews nothing and reacts to nothing.
    Stopped,
}

/// What a node (or a fleet, summed) has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeStats {
    pub lease_renewals: u64,
    pub lease_failures: u64,
    pub node_status_writes: u64,
    pub pod_status_writes: u64,
    /// Compare-and-swaps lost (and retried after reading the object again).
    pub conflicts: u64,
    pub pod_deletes: u64,
    /// Failed calls (each retried later).
    pub errors: u64,
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
        if self.last_error.is_none() {
            self.last_error.clone_from(&o.last_error);
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    lease_renewals: AtomicU64,
    lease_failures: AtomicU64,
    node_status_writes: AtomicU64,
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
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(format!("{node}: {what}: {e}"));
    }

    fn snapshot(&self) -> NodeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NodeStats {
            lease_renewals: get(&self.lease_renewals),
            lease_failures: get(&self.lease_failures),
            node_status_writes: get(&self.node_status_writes),
            pod_status_writes: get(&self.pod_status_writes),
            conflicts: get(&self.conflicts),
            pod_deletes: get(&self.pod_deletes),
            errors: get(&self.errors),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// What the handle tells its node's task.
enum Command {
    SetReady {
        key: String,
        ready: bool,
        done: oneshot::Sender<Result<()>>,
    },
    StopHeartbeat,
    Resume,
}

/// A running hollow node: one task on the current tokio runtime, aborted when this is dropped.
pub struct HollowNode {
    name: String,
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<NodeState>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl fmt::Debug for HollowNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HollowNode")
            .field("name", &self.name)
            .field("state", &*self.state.borrow())
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
        let resources = Resources::of(&config)?;
        IpPool::new(&config.pod_cidr).with_context(|| format!("node {}: pod CIDR", config.name))?;
        if config.renew_interval.is_zero() || config.status_interval.is_zero() {
            bail!(
                "node {}: the renew and status intervals must not be zero",
                config.name
            );
        }
        let node_client = client
            .with_token(&config.token)
            .with_context(|| format!("node {}: token", config.name))?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(NodeState::Starting);
        let counters = Arc::new(Counters::default());
        let name = config.name.clone();
        let task = NodeTask {
            client: node_client,
            resources,
            counters: counters.clone(),
            state: state_tx,
            commands: commands_rx,
            gate,
            alive: true,
            registered: false,
            lease_held: false,
            listed: false,
            pool: None,
            lease: None,
            next_register: Some(Instant::now()),
            next_renew: None,
            next_status: None,
            status_checks: 0,
            next_list: None,
            resume_from: None,
            watch: None,
            failures: Failures::default(),
            pods: HashMap::new(),
            pending_ready: HashMap::new(),
            timers: Timers::default(),
            writes: JoinSet::new(),
            cfg: config,
        };
        Ok(HollowNode {
            name,
            commands,
            state,
            counters,
            task: tokio::spawn(task.run()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> NodeState {
        *self.state.borrow()
    }

    /// Waits until the node is registered, holds its lease and watches its pods.
    pub async fn wait_running(&self, timeout: Duration) -> Result<()> {
        let mut state = self.state.clone();
        match tokio::time::timeout(timeout, state.wait_for(|s| *s == NodeState::Running)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => bail!("node {}: its task ended", self.name),
            Err(_) => {
                let stats = self.stats();
                bail!(
                    "node {} was not running within {} s (last error: {})",
                    self.name,
                    timeout.as_secs_f64(),
                    stats.last_error.as_deref().unwrap_or("none")
                )
            }
        }
    }

    /// Reports the pod `namespace/name` ready or not (its Ready and ContainersReady conditions
    /// and its containers' `ready`), and returns once that status is written. A pod the node
    /// has not seen yet gets the setting when it arrives (so this waits for it: give it a
    /// timeout). Fails if the pod goes away or the node stops first.
    pub async fn set_ready(&self, namespace: &str, name: &str, ready: bool) -> Result<()> {
        let (done, answer) = oneshot::channel();
        self.commands
            .send(Command::SetReady {
                key: format!("{namespace}/{name}"),
                ready,
                done,
            })
            .map_err(|_| anyhow!("node {}: its task ended", self.name))?;
        answer
            .await
            .map_err(|_| anyhow!("node {}: its task ended", self.name))?
    }

    /// Stops the node as if its agent died: no more lease renewals, no reaction to its pods.
    /// What it knew is forgotten.
    pub fn stop_heartbeat(&self) {
        let _ = self.commands.send(Command::StopHeartbeat);
    }

    /// Starts a stopped node again, as if its agent restarted: it reports its status, renews
    /// its lease at once, lists its pods and keeps the addresses they were reported with.
    pub fn resume(&self) {
        let _ = self.commands.send(Command::Resume);
    }

    pub fn stats(&self) -> NodeStats {
        self.counters.snapshot()
    }

    /// Stops the node's task (as dropping it does). Its Node and Lease stay in the API.
    pub fn stop(self) {}
}

impl Drop for HollowNode {
    fn drop(&mut self) {
        self.task.abort();
    }
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
            self.by_name.insert(node.name.clone(), self.nodes.len());
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

// ---------------------------------------------------------------------------------------------
// Pod addresses

/// The addresses of a pod CIDR, handed out smallest first.
#[derive(Debug, Clone)]
struct IpPool {
    /// The first address handed out: the network's, plus two (the node's bridge has the one in
    /// between).
    first: u32,
    used: Vec<bool>,
}

impl IpPool {
    fn new(cidr: &str) -> Result<IpPool> {
        let (addr, len) = cidr
            .split_once('/')
            .with_context(|| format!("{cidr:?} is not address/length"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("{cidr:?}: not an IPv4 address"))?;
        let len: u32 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .with_context(|| format!("{cidr:?}: the prefix length is not 0 to 32"))?;
        if len > 29 {
            bail!("{cidr:?} is too small for pods (at most /29)");
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let network = u32::from(addr) & mask;
        // Network, bridge and broadcast addresses are not for pods.
        let size = (1u64 << (32 - len)) - 3;
        Ok(IpPool {
            first: network + 2,
            used: vec![false; usize::try_from(size).unwrap_or(usize::MAX)],
        })
    }

    fn index(&self, ip: Ipv4Addr) -> Option<usize> {
        let i = usize::try_from(u32::from(ip).checked_sub(self.first)?).ok()?;
        (i < self.used.len()).then_some(i)
    }

    /// The smallest free address.
    fn take_smallest(&mut self) -> Option<Ipv4Addr> {
        let i = self.used.iter().position(|u| !u)?;
        self.used[i] = true;
        Some(Ipv4Addr::from(self.first + i as u32))
    }

    /// Takes `ip` if it is in the pool and free (a pod that already has it keeps it).
    fn take(&mut self, ip: Ipv4Addr) -> bool {
        match self.index(ip) {
            Some(i) if !self.used[i] => {
                self.used[i] = true;
                true
            }
            _ => false,
        }
    }

    fn release(&mut self, ip: Ipv4Addr) {
        if let Some(i) = self.index(ip) {
            self.used[i] = false;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The objects a node writes

/// A fresh Node for `cfg`, as the node creates it.
fn new_node(cfg: &NodeConfig) -> Node {
    let mut labels = cfg.labels.clone();
    labels.insert(HOSTNAME_LABEL.into(), cfg.name.clone());
    Node {
        metadata: ObjectMeta {
            name: cfg.name.clone(),
            labels,
            ..ObjectMeta::default()
        },
        spec: NodeSpec {
            pod_cidr: cfg.pod_cidr.clone(),
            pod_cidrs: vec![cfg.pod_cidr.clone()],
            taints: cfg.taints.clone(),
            ..NodeSpec::default()
        },
        status: NodeStatus::default(),
    }
}

/// A node's capacity (all of it allocatable).
#[derive(Debug, Clone)]
struct Resources {
    cpu: Quantity,
    memory: Quantity,
    pods: Quantity,
}

impl Resources {
    fn of(cfg: &NodeConfig) -> Result<Resources> {
        let parse = |what: &str, v: &str| {
            Quantity::parse(v).with_context(|| format!("node {}: {what} {v:?}", cfg.name))
        };
        Ok(Resources {
            cpu: parse("cpu", &cfg.cpu)?,
            memory: parse("memory", &cfg.memory)?,
            pods: parse("max pods", &cfg.max_pods.to_string())?,
        })
    }
}

/// Brings an existing Node's labels and (when it has none) pod CIDR in line with `cfg`;
/// whether anything changed. Taints are left to whoever manages them now.
fn adopt_node(node: &mut Node, cfg: &NodeConfig) -> bool {
    let mut changed = false;
    let hostname = (HOSTNAME_LABEL.to_owned(), cfg.name.clone());
    for (k, v) in cfg.labels.iter().chain([(&hostname.0, &hostname.1)]) {
        if node.metadata.labels.get(k) != Some(v) {
            node.metadata.labels.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    if node.spec.pod_cidr.is_empty() && node.spec.pod_cidrs.is_empty() {
        node.spec.pod_cidr.clone_from(&cfg.pod_cidr);
        node.spec.pod_cidrs = vec![cfg.pod_cidr.clone()];
        changed = true;
    }
    changed
}

/// The conditions a healthy node reports: type, reason, message; all `False` but `Ready`.
const NODE_CONDITIONS: [(&str, &str, &str); 4] = [
    (
        "MemoryPressure",
        "KubeletHasSufficientMemory",
        "the hollow node has sufficient memory available",
    ),
    (
        "DiskPressure",
        "KubeletHasNoDiskPressure",
        "the hollow node has no disk pressure",
    ),
    (
        "PIDPressure",
        "KubeletHasSufficientPID",
        "the hollow node has sufficient PIDs available",
    ),
    (
        "Ready",
        "KubeletReady",
        "the hollow node is posting ready status",
    ),
];

/// The status a node reports at `now`: transition times of conditions whose status did not
/// change are kept from `old`, conditions of other types are kept as they are.
fn node_status(cfg: &NodeConfig, resources: &Resources, old: &NodeStatus, now: &str) -> NodeStatus {
    let resources: BTreeMap<String, Quantity> = [
        ("cpu".to_owned(), resources.cpu.clone()),
        ("memory".to_owned(), resources.memory.clone()),
        ("pods".to_owned(), resources.pods.clone()),
    ]
    .into();
    let mut conditions = old.conditions.clone();
    for (type_, reason, message) in NODE_CONDITIONS {
        let status = if type_ == "Ready" { "True" } else { "False" };
        set_condition(&mut conditions, type_, status, reason, message, now);
    }
    for c in &mut conditions {
        if NODE_CONDITIONS.iter().any(|(t, _, _)| *t == c.type_) {
            c.last_heartbeat_time = Some(now.to_owned());
        }
    }
    NodeStatus {
        capacity: resources.clone(),
        allocatable: resources,
        conditions,
        addresses: vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: cfg.internal_ip.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: cfg.name.clone(),
            },
        ],
        node_info: NodeSystemInfo {
            architecture: "amd64".into(),
            operating_system: "linux".into(),
            os_image: "Skiff hollow node".into(),
            kernel_version: "hollow".into(),
            container_runtime_version: "hollow://0".into(),
            kubelet_version: format!("skiff-hollow/{}", env!("CARGO_PKG_VERSION")),
        },
    }
}

/// What a node decided for one of its pods.
#[derive(Debug, Clone)]
struct Plan {
    pod_ip: Ipv4Addr,
    host_ip: String,
    /// When the node started the pod (kept if the pod already reports a start time).
    start_time: String,
    ready: bool,
}

/// The pod's status as its node reports it: Running at its address, with conditions whose
/// status did not change keeping their transition times, and conditions the node does not own
/// (a readiness gate's, say) kept as they are. Equal to the pod's status when nothing is to be
/// written.
fn running_status(pod: &Pod, plan: &Plan, now: &str) -> PodStatus {
    let old = &pod.status;
    let start_time = old
        .start_time
        .clone()
        .unwrap_or_else(|| plan.start_time.clone());
    let containers: Vec<&str> = pod
        .spec
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let (ready, unready_reason, unready_message) = if plan.ready {
        ("True", String::new(), String::new())
    } else {
        (
            "False",
            "ContainersNotReady".to_owned(),
            format!(
                "the hollow node reports these containers not ready: [{}]",
                containers.join(" ")
            ),
        )
    };
    let mut conditions = old.conditions.clone();
    let wanted = [
        ("Initialized", "True", "", ""),
        ("Ready", ready, &*unready_reason, &*unready_message),
        (
            "ContainersReady",
            ready,
            &*unready_reason,
            &*unready_message,
        ),
        ("PodScheduled", "True", "", ""),
    ];
    for (type_, status, reason, message) in wanted {
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            // The scheduler's record of the binding stays as it wrote it.
            Some(c) if type_ == "PodScheduled" && c.status == "True" => {}
            Some(c) => {
                if c.status != status || c.last_transition_time.is_none() {
                    c.last_transition_time = Some(now.to_owned());
                }
                c.status = status.into();
                c.reason = reason.into();
                c.message = message.into();
            }
            None => conditions.push(Condition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: Some(now.to_owned()),
                ..Condition::default()
            }),
        }
    }
    let container_statuses = pod
        .spec
        .containers
        .iter()
        .map(|c| ContainerStatus {
            name: c.name.clone(),
            ready: plan.ready,
            restart_count: 0,
            image: c.image.clone(),
            image_id: format!("hollow://{}", c.image),
            container_id: format!("hollow://{}/{}", pod.metadata.uid, c.name),
            started: Some(true),
            state: ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(start_time.clone()),
                }),
                ..ContainerState::default()
            },
            last_state: ContainerState::default(),
        })
        .collect();
    let ip = plan.pod_ip.to_string();
    PodStatus {
        phase: "Running".into(),
        conditions,
        reason: String::new(),
        message: String::new(),
        host_ip: plan.host_ip.clone(),
        pod_ip: ip.clone(),
        pod_ips: vec![PodIp { ip }],
        start_time: Some(start_time),
        container_statuses,
    }
}

fn pod_key(meta: &ObjectMeta) -> String {
    format!("{}/{}", meta.namespace, meta.name)
}

fn split_pod_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

// ---------------------------------------------------------------------------------------------
// The node's task

type PodStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, ClientError>> + Send>>;

/// One pod bound to the node.
struct PodState {
    uid: String,
    /// The newest version seen (from the watch or from a write's reply).
    pod: Pod,
    ip: Option<Ipv4Addr>,
    /// Set when the node started the pod (after the start delay).
    start_time: Option<String>,
    ready: bool,
    /// A status write is on its way.
    writing: bool,
    /// The revision the last write (or check) of ours left the pod at, and the readiness it
    /// reported: a pod at that revision needs no write (even if the server wrote the status a
    /// little differently from what the node sent).
    written: Option<(i64, bool)>,
    /// Its deletion is scheduled or sent.
    finishing: bool,
    /// Deleted by the node; the watch has yet to say so.
    deleted: bool,
    /// Callers of `set_ready` waiting for the status to be written.
    waiters: Vec<Waiter>,
}

/// A caller of `set_ready`, answered when the status is written.
type Waiter = oneshot::Sender<Result<()>>;

impl PodState {
    fn answer(&mut self, result: impl Fn() -> Result<()>) {
        for w in self.waiters.drain(..) {
            let _ = w.send(result());
        }
    }
}

enum TimerKind {
    /// The start delay of a new pod is over.
    Start,
    /// The delete delay of a pod marked for deletion is over.
    Finish,
    /// Retry after a failed status write.
    Retry,
}

struct Timer {
    at: Instant,
    seq: u64,
    key: String,
    uid: String,
    kind: TimerKind,
}

impl PartialEq for Timer {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timer {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Per-pod delays of one node, earliest first (no timer task per pod).
#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
    seq: u64,
}

impl Timers {
    fn add(&mut self, after: Duration, key: &str, uid: &str, kind: TimerKind) {
        self.seq += 1;
        self.heap.push(Reverse(Timer {
            at: Instant::now() + after,
            seq: self.seq,
            key: key.to_owned(),
            uid: uid.to_owned(),
            kind,
        }));
    }

    fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|t| t.0.at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        if self.next_at()? <= now {
            self.heap.pop().map(|t| t.0)
        } else {
            None
        }
    }
}

/// Consecutive failures of one activity, for its back-off.
#[derive(Default)]
struct Failures {
    register: u32,
    renew: u32,
    list: u32,
}

/// Doubling back-off from [`MIN_BACKOFF`] to [`MAX_BACKOFF`], with up to half of it random.
fn backoff(failures: u32) -> Duration {
    let base = MIN_BACKOFF
        .saturating_mul(1 << failures.min(10))
        .min(MAX_BACKOFF);
    base.mul_f64(0.5 + random_fraction() / 2.0)
}

/// How a status write ended.
enum WriteResult {
    /// The pod as stored after the write (or as read, when nothing needed writing).
    Written(Box<Pod>),
    /// The pod is gone or is another pod now.
    Gone,
    Failed(anyhow::Error),
}

/// A finished background call of the node.
enum Done {
    Status {
        key: String,
        uid: String,
        ready: bool,
        result: WriteResult,
    },
    Delete {
        key: String,
        uid: String,
        result: Result<(), ClientError>,
    },
}

struct NodeTask {
    cfg: NodeConfig,
    client: Client,
    resources: Resources,
    counters: Arc<Counters>,
    state: watch::Sender<NodeState>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Limits how many nodes of a fleet register at once.
    gate: Option<Arc<Semaphore>>,
    /// False after `stop_heartbeat`.
    alive: bool,
    registered: bool,
    lease_held: bool,
    listed: bool,
    /// Addresses of the pod CIDR the stored Node has.
    pool: Option<IpPool>,
    /// The lease as last written (for compare-and-swap).
    lease: Option<Lease>,
    next_register: Option<Instant>,
    next_renew: Option<Instant>,
    next_status: Option<Instant>,
    status_checks: u32,
    /// When to list (or, with `resume_from`, watch again).
    next_list: Option<Instant>,
    /// The revision the broken watch had reached: watch again from there rather than list.
    resume_from: Option<i64>,
    watch: Option<PodStream>,
    failures: Failures,
    pods: HashMap<String, PodState>,
    /// `set_ready` settings for pods not seen yet.
    pending_ready: HashMap<String, (bool, Vec<Waiter>)>,
    timers: Timers,
    writes: JoinSet<Done>,
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_event(watch: &mut Option<PodStream>) -> Option<Result<WatchEvent, ClientError>> {
    match watch {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

impl NodeTask {
    async fn run(mut self) {
        loop {
            let next_timer = self.timers.next_at();
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    // The handle is gone.
                    None => return,
                },
                () = sleep_opt(self.next_register) => self.register().await,
                () = sleep_opt(self.next_renew) => self.renew().await,
                () = sleep_opt(self.next_status) => self.check_status().await,
                () = sleep_opt(self.next_list) => self.list().await,
                ev = next_event(&mut self.watch) => self.watch_event(ev),
                Some(done) = self.writes.join_next(), if !self.writes.is_empty() => {
                    // A write aborted by `stop_heartbeat` has nothing to report.
                    if let Ok(done) = done {
                        self.done(done);
                    }
                }
                () = sleep_opt(next_timer) => self.fire_timers(),
            }
            self.publish_state();
        }
    }

    fn publish_state(&self) {
        let state = if !self.alive {
            NodeState::Stopped
        } else if self.registered && self.lease_held && self.listed {
            NodeState::Running
        } else {
            NodeState::Starting
        };
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    fn error(&self, what: &str, e: &dyn fmt::Display) {
        self.counters.error(&self.cfg.name, what, e);
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::SetReady { key, ready, done } => {
                if !self.alive {
                    let _ = done.send(Err(anyhow!(
                        "node {} has stopped its heartbeat",
                        self.cfg.name
                    )));
                    return;
                }
                match self.pods.get_mut(&key) {
                    Some(st) if st.finishing || st.deleted => {
                        let _ = done.send(Err(anyhow!("pod {key} is being deleted")));
                    }
                    Some(st) => {
                        st.ready = ready;
                        st.waiters.push(done);
                        self.reconcile(&key);
                    }
                    None => {
                        let entry = self
                            .pending_ready
                            .entry(key)
                            .or_insert_with(|| (ready, Vec::new()));
                        entry.0 = ready;
                        entry.1.push(done);
                    }
                }
            }
            Command::StopHeartbeat => {
                if !self.alive {
                    return;
                }
                self.alive = false;
                self.registered = false;
                self.lease_held = false;
                self.listed = false;
                self.next_register = None;
                self.next_renew = None;
                self.next_status = None;
                self.next_list = None;
                self.resume_from = None;
                self.watch = None;
                self.writes.abort_all();
                self.timers = Timers::default();
                let why = format!("node {} stopped its heartbeat", self.cfg.name);
                for (_, mut st) in self.pods.drain() {
                    st.answer(|| Err(anyhow!("{why}")));
                }
                for (_, (_, waiters)) in self.pending_ready.drain() {
                    for w in waiters {
                        let _ = w.send(Err(anyhow!("{why}")));
                    }
                }
                self.pool = None;
            }
            Command::Resume => {
                if !self.alive {
                    self.alive = true;
                    self.failures = Failures::default();
                    self.next_register = Some(Instant::now());
                }
            }
        }
    }

    // --- Registration, lease and node status --------------------------------------------------

    async fn register(&mut self) {
        self.next_register = None;
        let gate = self.gate.clone();
        let _permit = match &gate {
            Some(g) => g.acquire().await.ok(),
            None => None,
        };
        match self.register_once().await {
            Ok(node) => {
                self.failures.register = 0;
                self.registered = true;
                // A Node registered again (someone deleted it) keeps the addresses its pods have.
                if self.pool.is_none() {
                    match IpPool::new(&node.spec.pod_cidr) {
                        Ok(pool) => self.pool = Some(pool),
                        Err(e) => {
                            // The Node has an unusable pod CIDR of someone else's choosing.
                            self.error("the Node's pod CIDR", &format!("{e:#}"));
                            self.pool = IpPool::new(&self.cfg.pod_cidr).ok();
                        }
                    }
                }
                if !self.lease_held {
                    // The lease is created at once; later renewals start at a random point of
                    // the interval so that nodes registered together spread out.
                    self.renew().await;
                    let interval = self.cfg.renew_interval;
                    if self.failures.renew == 0 {
                        self.next_renew =
                            Some(Instant::now() + interval.mul_f64(random_fraction()));
                    }
                }
                self.status_checks = 0;
                self.next_status = Some(
                    Instant::now() + self.cfg.status_interval.mul_f64(random_fraction() + 0.5),
                );
                if !self.listed && self.watch.is_none() && self.next_list.is_none() {
                    self.next_list = Some(Instant::now());
                    self.resume_from = None;
                }
            }
            Err(e) => {
                self.error("registering", &format!("{e:#}"));
                self.next_register = Some(Instant::now() + backoff(self.failures.register));
                self.failures.register += 1;
            }
        }
    }

    /// Creates or updates the Node, then writes its status; returns the Node as stored.
    async fn register_once(&mut self) -> Result<Node> {
        let name = self.cfg.name.clone();
        // Create first, as the kubelet does: on a fresh start the Node does not exist yet.
        let mut node = match self.client.create(&new_node(&self.cfg)).await {
            Ok(n) => n,
            Err(e) if e.is_already_exists() => loop {
                let mut node = self
                    .client
                    .get::<Node>("", &name)
                    .await
                    .context("reading the Node")?;
                if !adopt_node(&mut node, &self.cfg) {
                    break node;
                }
                match self.client.update(&node).await {
                    Ok(n) => break n,
                    Err(e) if e.is_conflict() => Counters::bump(&self.counters.conflicts),
                    Err(e) => return Err(e).context("updating the Node"),
                }
            },
            Err(e) => return Err(e).context("creating the Node"),
        };
        for _ in 0..CONFLICT_RETRIES {
            node.status = node_status(&self.cfg, &self.resources, &node.status, &time::now());
            match self.client.update_status(&node).await {
                Ok(n) => {
                    Counters::bump(&self.counters.node_status_writes);
                    return Ok(n);
                }
                Err(e) if e.is_conflict() => {
                    Counters::bump(&self.counters.conflicts);
                    node = self
                        .client
                        .get::<Node>("", &name)
                        .await
                        .context("reading the Node")?;
                }
                Err(e) => return Err(e).context("writing the Node's status"),
            }
        }
        bail!("writing the Node's status lost {CONFLICT_RETRIES} compare-and-swaps in a row")
    }

    async fn renew(&mut self) {
        self.next_renew = None;
        match self.renew_once().await {
            Ok(()) => {
                self.failures.renew = 0;
                self.lease_held = true;
                Counters::bump(&self.counters.lease_renewals);
                self.next_renew = Some(Instant::now() + self.cfg.renew_interval);
            }
            Err(e) => {
                Counters::bump(&self.counters.lease_failures);
                self.error("renewing the lease", &format!("{e:#}"));
                // Sooner than the interval, as the kubelet does, but never in a tight loop.
                let wait = backoff(self.failures.renew).min(self.cfg.renew_interval);
                self.failures.renew += 1;
                self.next_renew = Some(Instant::now() + wait);
            }
        }
    }

    async fn renew_once(&mut self) -> Result<()> {
        let name = self.cfg.name.clone();
        for _ in 0..CONFLICT_RETRIES {
            let now = time::format_micros(SystemTime::now());
            let result = match self.lease.take() {
                Some(old) => {
                    let lease =
                        renewed_lease(Some(&old), &name, self.cfg.lease_duration_seconds, &now);
                    self.client.update(&lease).await
                }
                None => match self.client.get::<Lease>(LEASE_NAMESPACE, &name).await {
                    Ok(l) => {
                        self.lease = Some(l);
                        continue;
                    }
                    Err(e) if e.is_not_found() => {
                        let lease =
                            renewed_lease(None, &name, self.cfg.lease_duration_seconds, &now);
                        self.client.create(&lease).await
                    }
                    Err(e) => return Err(e).context("reading the lease"),
                },
            };
            match result {
                Ok(lease) => {
                    self.lease = Some(lease);
                    return Ok(());
                }
                Err(e) if e.is_conflict() || e.is_already_exists() || e.is_not_found() => {
                    Counters::bump(&self.counters.conflicts);
                }
                Err(e) => return Err(e).context("writing the lease"),
            }
        }
        bail!("the lease lost {CONFLICT_RETRIES} compare-and-swaps in a row")
    }

    /// Looks at the Node: rewrites its status when someone changed it (the node lifecycle
    /// controller marking it NotReady, say) or every few looks, for a fresh heartbeat.
    async fn check_status(&mut self) {
        self.next_status = Some(Instant::now() + self.cfg.status_interval);
        self.status_checks += 1;
        let result = async {
            for _ in 0..CONFLICT_RETRIES {
                let mut node = match self.client.get::<Node>("", &self.cfg.name).await {
                    Ok(n) => n,
                    // Someone deleted the Node: register again.
                    Err(e) if e.is_not_found() => return Ok(false),
                    Err(e) => return Err(e).context("reading the Node"),
                };
                let status = node_status(&self.cfg, &self.resources, &node.status, &time::now());
                let due = self.status_checks >= STATUS_REPORT_EVERY;
                if !due && !differs_beyond_heartbeats(&status, &node.status) {
                    return Ok(true);
                }
                node.status = status;
                match self.client.update_status(&node).await {
                    Ok(_) => {
                        Counters::bump(&self.counters.node_status_writes);
                        self.status_checks = 0;
                        return Ok(true);
                    }
                    Err(e) if e.is_not_found() => return Ok(false),
                    Err(e) if e.is_conflict() => Counters::bump(&self.counters.conflicts),
                    Err(e) => return Err(e).context("writing the Node's status"),
                }
            }
            bail!("the Node's status lost {CONFLICT_RETRIES} compare-and-swaps in a row")
        }
        .await;
        match result {
            Ok(true) => {}
            Ok(false) => {
                // Pods and lease carry on; the next registration brings the Node back.
                self.registered = false;
                self.next_status = None;
                self.next_register = Some(Instant::now());
            }
            Err(e) => self.error("reporting the node's status", &format!("{e:#}")),
        }
    }

    // --- Pods: list and watch ----------------------------------------------------------------

    fn pod_params(&self) -> ListParams {
        ListParams::fields(format!("spec.nodeName={}", self.cfg.name))
    }

    async fn list(&mut self) {
        self.next_list = None;
        let params = self.pod_params();
        let from = match self.resume_from.take() {
            Some(rev) => Some(rev),
            None => match self.client.list::<Pod>("", &params).await {
                Ok((pods, rev)) => {
                    let listed: HashSet<String> =
                        pods.iter().map(|p| pod_key(&p.metadata)).collect();
                    let gone: Vec<String> = self
                        .pods
                        .keys()
                        .filter(|k| !listed.contains(*k))
                        .cloned()
                        .collect();
                    for key in gone {
                        self.forget(&key, "deleted");
                    }
                    for pod in pods {
                        self.observe(pod);
                    }
                    Some(rev)
                }
                Err(e) => {
                    self.error("listing pods", &e);
                    None
                }
            },
        };
        let watched = match from {
            Some(rev) => match self.client.watch(Pod::INFO, "", &params, rev, true).await {
                Ok(stream) => {
                    self.watch = Some(Box::pin(stream));
                    self.resume_from = Some(rev);
                    true
                }
                Err(e) => {
                    if !e.is_gone() {
                        self.error("watching pods", &e);
                    }
                    false
                }
            },
            None => false,
        };
        if watched {
            self.failures.list = 0;
            self.listed = true;
        } else {
            // Start over with a list (the revision may be compacted away).
            self.resume_from = None;
            self.next_list = Some(Instant::now() + backoff(self.failures.list));
            self.failures.list += 1;
        }
    }

    fn watch_event(&mut self, ev: Option<Result<WatchEvent, ClientError>>) {
        match ev {
            Some(Ok(ev)) => {
                self.resume_from = Some(ev.resource_version());
                match ev {
                    WatchEvent::Added(Object::Pod(p)) | WatchEvent::Modified(Object::Pod(p)) => {
                        self.observe(p);
                    }
                    WatchEvent::Deleted(Object::Pod(p)) => {
                        let key = pod_key(&p.metadata);
                        if self
                            .pods
                            .get(&key)
                            .is_some_and(|st| st.uid == p.metadata.uid)
                        {
                            self.forget(&key, "deleted");
                        }
                    }
                    _ => {}
                }
            }
            Some(Err(e)) => {
                self.watch = None;
                if e.is_gone() {
                    self.resume_from = None;
                } else {
                    self.error("watching pods", &e);
                }
                self.next_list = Some(Instant::now() + backoff(self.failures.list));
                self.failures.list += 1;
            }
            None => {
                // The server ended the stream (it is shutting down, say): watch again.
                self.watch = None;
                self.next_list = Some(Instant::now() + backoff(self.failures.list));
                self.failures.list += 1;
            }
        }
    }

    /// A pod as the watch or a list shows it.
    fn observe(&mut self, pod: Pod) {
        if pod.spec.node_name != self.cfg.name {
            return;
        }
        let key = pod_key(&pod.metadata);
        match self.pods.get_mut(&key) {
            Some(st) if st.uid == pod.metadata.uid => {
                if pod.metadata.revision() >= st.pod.metadata.revision() {
                    st.pod = pod;
                }
            }
            Some(_) => {
                self.forget(&key, "replaced by another pod of the same name");
                self.add(key.clone(), pod);
            }
            None => self.add(key.clone(), pod),
        }
        self.reconcile(&key);
    }

    fn add(&mut self, key: String, pod: Pod) {
        let (ready, waiters) = self
            .pending_ready
            .remove(&key)
            .unwrap_or((self.cfg.ready_by_default, Vec::new()));
        let uid = pod.metadata.uid.clone();
        // A pod that already runs (this node restarted) is taken over at once.
        let running = pod.status.phase == "Running" && pod.status.start_time.is_some();
        let new = pod.metadata.deletion_timestamp.is_none() && !running;
        self.pods.insert(
            key.clone(),
            PodState {
                uid: uid.clone(),
                pod,
                ip: None,
                start_time: None,
                ready,
                writing: false,
                written: None,
                finishing: false,
                deleted: false,
                waiters,
            },
        );
        if new && !self.cfg.start_delay.is_zero() {
            self.timers
                .add(self.cfg.start_delay, &key, &uid, TimerKind::Start);
        } else {
            self.start(&key);
        }
    }

    /// Starts the pod: gives it an address (the one it reports, if free) and a start time.
    fn start(&mut self, key: &str) {
        let Some(st) = self.pods.get_mut(key) else {
            return;
        };
        if st.start_time.is_some() || st.pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        let Some(pool) = self.pool.as_mut() else {
            return;
        };
        let reported = st.pod.status.pod_ip.parse::<Ipv4Addr>().ok();
        let ip = match reported {
            Some(ip) if pool.take(ip) => Some(ip),
            _ => pool.take_smallest(),
        };
        match ip {
            Some(ip) => {
                st.ip = Some(ip);
                st.start_time = Some(time::now());
            }
            None => {
                let uid = st.uid.clone();
                self.error(
                    "starting a pod",
                    &format!("no free address in {} for {key}", self.cfg.pod_cidr),
                );
                self.timers
                    .add(Duration::from_secs(1), key, &uid, TimerKind::Start);
            }
        }
    }

    /// Drops a pod the node no longer has, freeing its address.
    fn forget(&mut self, key: &str, why: &str) {
        if let Some(mut st) = self.pods.remove(key) {
            if let (Some(ip), Some(pool)) = (st.ip.take(), self.pool.as_mut()) {
                pool.release(ip);
            }
            st.answer(|| Err(anyhow!("pod {key}: {why}")));
        }
    }

    /// Brings the pod's reported status in line with what the node decided.
    fn reconcile(&mut self, key: &str) {
        if !self.alive {
            return;
        }
        let Some(st) = self.pods.get_mut(key) else {
            return;
        };
        if st.deleted {
            return;
        }
        if st.pod.metadata.deletion_timestamp.is_some() {
            if !st.finishing {
                st.finishing = true;
                st.answer(|| Err(anyhow!("pod {key} is being deleted")));
                let uid = st.uid.clone();
                self.timers
                    .add(self.cfg.delete_delay, key, &uid, TimerKind::Finish);
            }
            return;
        }
        let (Some(ip), Some(start_time)) = (st.ip, st.start_time.clone()) else {
            return;
        };
        if st.writing {
            return;
        }
        let plan = Plan {
            pod_ip: ip,
            host_ip: self.cfg.internal_ip.clone(),
            start_time,
            ready: st.ready,
        };
        let satisfied = st.written == Some((st.pod.metadata.revision(), st.ready))
            || running_status(&st.pod, &plan, &time::now()) == st.pod.status;
        if satisfied {
            st.answer(|| Ok(()));
            return;
        }
        st.writing = true;
        let (client, counters, pod) = (self.client.clone(), self.counters.clone(), st.pod.clone());
        let (key, uid, ready) = (key.to_owned(), st.uid.clone(), st.ready);
        self.writes.spawn(async move {
            let result = write_status(&client, &counters, pod, &plan).await;
            Done::Status {
                key,
                uid,
                ready,
                result,
            }
        });
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(t) = self.timers.pop_due(now) {
            if self.pods.get(&t.key).is_none_or(|st| st.uid != t.uid) {
                continue;
            }
            match t.kind {
                TimerKind::Start => {
                    self.start(&t.key);
                    self.reconcile(&t.key);
                }
                TimerKind::Retry => self.reconcile(&t.key),
                TimerKind::Finish => self.finish(&t.key),
            }
        }
    }

    /// Deletes a pod marked for deletion for good (its containers have stopped).
    fn finish(&mut self, key: &str) {
        let Some(st) = self.pods.get(key) else {
            return;
        };
        if st.deleted {
            return;
        }
        let (client, uid) = (self.client.clone(), st.uid.clone());
        let (key, counters) = (key.to_owned(), self.counters.clone());
        self.writes.spawn(async move {
            let (ns, name) = split_pod_key(&key);
            let result = client
                .delete(
                    Pod::INFO,
                    ns,
                    name,
                    DeleteParams {
                        grace_period_seconds: Some(0),
                        precondition_uid: uid.clone(),
                        ..DeleteParams::default()
                    },
                )
                .await
                .map(|_| Counters::bump(&counters.pod_deletes));
            Done::Delete { key, uid, result }
        });
    }

    fn done(&mut self, done: Done) {
        match done {
            Done::Status {
                key,
                uid,
                ready,
                result,
            } => {
                let Some(st) = self.pods.get_mut(&key).filter(|st| st.uid == uid) else {
                    return;
                };
                st.writing = false;
                match result {
                    WriteResult::Written(pod) => {
                        let rev = pod.metadata.revision();
                        if rev >= st.pod.metadata.revision() {
                            st.pod = *pod;
                        }
                        st.written = Some((rev, ready));
                        // Readiness may have been changed meanwhile.
                        self.reconcile(&key);
                    }
                    // The watch says what became of it.
                    WriteResult::Gone => {}
                    WriteResult::Failed(e) => {
                        self.error("writing a pod's status", &format!("{key}: {e:#}"));
                        self.timers.add(backoff(2), &key, &uid, TimerKind::Retry);
                    }
                }
            }
            Done::Delete { key, uid, result } => {
                let Some(st) = self.pods.get_mut(&key).filter(|st| st.uid == uid) else {
                    return;
                };
                match result {
                    Ok(()) => {
                        st.deleted = true;
                        if let (Some(ip), Some(pool)) = (st.ip.take(), self.pool.as_mut()) {
                            pool.release(ip);
                        }
                    }
                    // Gone already, or the name is another pod's now.
                    Err(e) if e.is_not_found() || e.is_conflict() => {
                        self.forget(&key, "deleted");
                    }
                    Err(e) => {
                        self.error("deleting a pod", &format!("{key}: {e}"));
                        self.timers.add(backoff(2), &key, &uid, TimerKind::Finish);
                    }
                }
            }
        }
    }
}

/// Writes the pod's running status, reading it again after each lost compare-and-swap.
async fn write_status(
    client: &Client,
    counters: &Counters,
    mut pod: Pod,
    plan: &Plan,
) -> WriteResult {
    let uid = pod.metadata.uid.clone();
    for _ in 0..CONFLICT_RETRIES {
        if pod.metadata.deletion_timestamp.is_some() {
            return WriteResult::Written(Box::new(pod));
        }
        let status = running_status(&pod, plan, &time::now());
        if status == pod.status {
            return WriteResult::Written(Box::new(pod));
        }
        pod.status = status;
        match client.update_status(&pod).await {
            Ok(p) => {
                Counters::bump(&counters.pod_status_writes);
                return WriteResult::Written(Box::new(p));
            }
            Err(e) if e.is_conflict() => {
                Counters::bump(&counters.conflicts);
                match client
                    .get::<Pod>(&pod.metadata.namespace, &pod.metadata.name)
                    .await
                {
                    Ok(p) if p.metadata.uid == uid => pod = p,
                    Ok(_) => return WriteResult::Gone,
                    Err(e) if e.is_not_found() => return WriteResult::Gone,
                    Err(e) => return WriteResult::Failed(e.into()),
                }
            }
            Err(e) if e.is_not_found() => return WriteResult::Gone,
            Err(e) => return WriteResult::Failed(e.into()),
        }
    }
    WriteResult::Failed(anyhow!(
        "lost {CONFLICT_RETRIES} compare-and-swaps in a row"
    ))
}

#[cfg(test)]
mod tests {
    use skiff_api::kinds::{Container, PodSpec};

    use super::*;

    fn cfg() -> NodeConfig {
        NodeConfig::new("hollow-00007", "hollow-00007-secret-token", 7)
    }

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    fn pod(containers: &[&str]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: "web-1".into(),
                namespace: "default".into(),
                uid: "u-1".into(),
                resource_version: "10".into(),
                ..ObjectMeta::default()
            },
            spec: PodSpec {
                node_name: "hollow-00007".into(),
                containers: containers
                    .iter()
                    .map(|c| Container {
                        name: (*c).into(),
                        image: format!("{c}:local"),
                        ..Container::default()
                    })
                    .collect(),
                ..PodSpec::default()
            },
            status: PodStatus::default(),
        }
    }

    fn plan(ready: bool) -> Plan {
        Plan {
            pod_ip: Ipv4Addr::new(10, 128, 7, 2),
            host_ip: "172.31.0.8".into(),
            start_time: "2026-01-01T00:00:00Z".into(),
            ready,
        }
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

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
    fn pool_hands_out_the_smallest_free_address_and_takes_back_released_ones() {
        let mut p = IpPool::new("10.128.7.0/24").unwrap();
        assert_eq!(p.used.len(), 253);
        let first = p.take_smallest().unwrap();
        let second = p.take_smallest().unwrap();
        assert_eq!(first, Ipv4Addr::new(10, 128, 7, 2));
        assert_eq!(second, Ipv4Addr::new(10, 128, 7, 3));
        p.release(first);
        assert_eq!(p.take_smallest(), Some(first));
        // A pod that already reports an address keeps it; a taken or foreign one is refused.
        assert!(p.take(Ipv4Addr::new(10, 128, 7, 100)));
        assert!(!p.take(Ipv4Addr::new(10, 128, 7, 100)));
        assert!(!p.take(Ipv4Addr::new(10, 128, 7, 1)));
        assert!(!p.take(Ipv4Addr::new(10, 128, 7, 255)));
        assert!(!p.take(Ipv4Addr::new(10, 128, 8, 2)));
        assert_eq!(p.take_smallest(), Some(Ipv4Addr::new(10, 128, 7, 4)));
    }

    #[test]
    fn pool_runs_out_and_refuses_unusable_cidrs() {
        let mut p = IpPool::new("10.0.0.8/29").unwrap();
        let all: Vec<_> = std::iter::from_fn(|| p.take_smallest()).collect();
        assert_eq!(
            all,
            (10..=14)
                .map(|h| Ipv4Addr::new(10, 0, 0, h))
                .collect::<Vec<_>>()
        );
        p.release(Ipv4Addr::new(10, 0, 0, 12));
        assert_eq!(p.take_smallest(), Some(Ipv4Addr::new(10, 0, 0, 12)));
        for bad in ["10.0.0.0/30", "10.0.0.0", "10.0.0.0/33", "ten/24", ""] {
            assert!(IpPool::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_running_pod_reports_its_address_conditions_and_containers() {
        let p = pod(&["web", "sidecar"]);
        let s = running_status(&p, &plan(true), "2026-01-01T00:00:05Z");
        assert_eq!(s.phase, "Running");
        assert_eq!(s.pod_ip, "10.128.7.2");
        assert_eq!(
            s.pod_ips,
            vec![PodIp {
                ip: "10.128.7.2".into()
            }]
        );
        assert_eq!(s.host_ip, "172.31.0.8");
        assert_eq!(s.start_time.as_deref(), Some("2026-01-01T00:00:00Z"));
        let types: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
        );
        assert!(s.conditions.iter().all(|c| c.status == "True"
            && c.last_transition_time.as_deref() == Some("2026-01-01T00:00:05Z")));
        assert_eq!(s.container_statuses.len(), 2);
        let c = &s.container_statuses[1];
        assert_eq!(
            (c.name.as_str(), c.ready, c.restart_count, c.image.as_str()),
            ("sidecar", true, 0, "sidecar:local")
        );
        assert_eq!(c.started, Some(true));
        assert!(c.state.running.is_some() && c.state.waiting.is_none());
    }

    #[test]
    fn an_unchanged_status_is_equal_so_nothing_is_written_again() {
        let mut p = pod(&["web"]);
        p.status = running_status(&p, &plan(true), "2026-01-01T00:00:05Z");
        assert_eq!(
            running_status(&p, &plan(true), "2026-01-01T00:09:00Z"),
            p.status
        );
    }

    #[test]
    fn readiness_flips_only_ready_conditions_and_their_transition_times() {
        let mut p = pod(&["web"]);
        p.status = running_status(&p, &plan(true), "2026-01-01T00:00:05Z");
        let unready = running_status(&p, &plan(false), "2026-01-01T00:01:00Z");
        for t in ["Ready", "ContainersReady"] {
            let c = cond(&unready, t);
            assert_eq!(c.status, "False");
            assert_eq!(c.reason, "ContainersNotReady");
            assert!(c.message.contains("[web]"));
            assert_eq!(
                c.last_transition_time.as_deref(),
                Some("2026-01-01T00:01:00Z")
            );
        }
        assert_eq!(
            cond(&unready, "Initialized")
                .last_transition_time
                .as_deref(),
            Some("2026-01-01T00:00:05Z")
        );
        assert!(!unready.container_statuses[0].ready);
        assert_eq!(unready.phase, "Running");
        p.status = unready;
        let again = running_status(&p, &plan(true), "2026-01-01T00:02:00Z");
        assert_eq!(cond(&again, "Ready").status, "True");
        assert_eq!(cond(&again, "Ready").reason, "");
        assert_eq!(
            cond(&again, "Ready").last_transition_time.as_deref(),
            Some("2026-01-01T00:02:00Z")
        );
    }

    #[test]
    fn the_schedulers_condition_and_foreign_conditions_are_kept() {
        let mut p = pod(&["web"]);
        p.status.conditions = vec![
            Condition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                last_transition_time: Some("2025-12-31T23:59:59Z".into()),
                ..Condition::default()
            },
            Condition {
                type_: "example.com/gate".into(),
                status: "False".into(),
                ..Condition::default()
            },
        ];
        p.status.start_time = Some("2025-12-31T23:59:58Z".into());
        let s = running_status(&p, &plan(true), "2026-01-01T00:00:05Z");
        assert_eq!(&s.conditions[..2], &p.status.conditions[..]);
        assert_eq!(s.conditions.len(), 5);
        assert_eq!(s.start_time.as_deref(), Some("2025-12-31T23:59:58Z"));
    }

    #[test]
    fn node_status_reports_resources_addresses_and_a_ready_heartbeat() {
        let c = cfg();
        let s = node_status(
            &c,
            &Resources::of(&c).unwrap(),
            &NodeStatus::default(),
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(s.capacity["pods"], q("110"));
        assert_eq!(s.allocatable["cpu"], q("8"));
        assert_eq!(s.capacity["memory"], q("32Gi"));
        assert_eq!(s.addresses[0].type_, "InternalIP");
        assert_eq!(s.addresses[0].address, "172.31.0.8");
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "KubeletReady")
        );
        assert_eq!(
            ready.last_heartbeat_time.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            s.conditions
                .iter()
                .filter(|c| c.type_ != "Ready" && c.status == "False")
                .count(),
            3
        );
    }

    #[test]
    fn a_heartbeat_keeps_transition_times_and_recovers_from_not_ready() {
        let c = cfg();
        let r = Resources::of(&c).unwrap();
        let first = node_status(&c, &r, &NodeStatus::default(), "T0");
        let beat = node_status(&c, &r, &first, "T1");
        assert!(!differs_beyond_heartbeats(&first, &beat));
        assert_ne!(first, beat);
        let ready = |s: &NodeStatus| s.conditions.iter().find(|c| c.type_ == "Ready").cloned();
        assert_eq!(
            ready(&beat).unwrap().last_transition_time.as_deref(),
            Some("T0")
        );
        // The node lifecycle controller marked it Unknown: the next report differs, and the
        // condition's transition time is the report's.
        let mut marked = beat.clone();
        for cond in &mut marked.conditions {
            if cond.type_ == "Ready" {
                cond.status = "Unknown".into();
                cond.last_transition_time = Some("T2".into());
            }
        }
        let back = node_status(&c, &r, &marked, "T3");
        assert!(differs_beyond_heartbeats(&back, &marked));
        let r = ready(&back).unwrap();
        assert_eq!(
            (r.status.as_str(), r.last_transition_time.as_deref()),
            ("True", Some("T3"))
        );
    }

    #[test]
    fn an_existing_node_gets_labels_and_a_cidr_but_keeps_its_own() {
        let mut c = cfg();
        c.labels.insert("zone".into(), "z1".into());
        let mut n = new_node(&c);
        assert_eq!(n.metadata.labels[HOSTNAME_LABEL], "hollow-00007");
        assert_eq!(n.spec.pod_cidrs, [n.spec.pod_cidr.clone()]);
        assert!(!adopt_node(&mut n, &c));
        n.metadata.labels.clear();
        n.spec.pod_cidr = "10.9.9.0/24".into();
        n.spec.pod_cidrs = vec!["10.9.9.0/24".into()];
        assert!(adopt_node(&mut n, &c));
        assert_eq!(n.metadata.labels["zone"], "z1");
        assert_eq!(n.spec.pod_cidr, "10.9.9.0/24");
        let mut bare = Node::default();
        assert!(adopt_node(&mut bare, &c));
        assert_eq!(bare.spec.pod_cidr, "10.128.7.0/24");
    }

    #[test]
    fn a_renewal_keeps_the_holder_and_a_takeover_counts_a_transition() {
        let first = renewed_lease(None, "n1", 40, "T0");
        assert_eq!(first.metadata.namespace, LEASE_NAMESPACE);
        assert_eq!(first.spec.holder_identity.as_deref(), Some("n1"));
        assert_eq!(first.spec.acquire_time.as_deref(), Some("T0"));
        assert_eq!(first.spec.lease_transitions, None);
        let renewed = renewed_lease(Some(&first), "n1", 40, "T1");
        assert_eq!(renewed.spec.renew_time.as_deref(), Some("T1"));
        assert_eq!(renewed.spec.acquire_time.as_deref(), Some("T0"));
        assert_eq!(renewed.spec.lease_duration_seconds, Some(40));
        let mut other = renewed.clone();
        other.spec.holder_identity = Some("someone".into());
        let taken = renewed_lease(Some(&other), "n1", 40, "T2");
        assert_eq!(taken.spec.lease_transitions, Some(1));
        assert_eq!(taken.spec.acquire_time.as_deref(), Some("T2"));
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

    #[test]
    fn timers_come_out_in_order_when_due() {
        let mut t = Timers::default();
        t.add(Duration::from_secs(60), "a", "1", TimerKind::Finish);
        t.add(Duration::ZERO, "b", "2", TimerKind::Start);
        t.add(Duration::ZERO, "c", "3", TimerKind::Retry);
        let now = Instant::now();
        assert_eq!(t.pop_due(now).map(|x| x.key), Some("b".into()));
        assert_eq!(t.pop_due(now).map(|x| x.key), Some("c".into()));
        assert!(t.pop_due(now).is_none());
        assert!(t.next_at().is_some_and(|at| at > now));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert!(backoff(0) <= MIN_BACKOFF && backoff(0) >= MIN_BACKOFF / 2);
        assert!(backoff(3) >= MIN_BACKOFF * 4 && backoff(3) <= MIN_BACKOFF * 8);
        assert!(backoff(40) <= MAX_BACKOFF && backoff(40) >= MAX_BACKOFF / 2);
    }
}
