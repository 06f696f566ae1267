//! The node's registration, its Lease renewals and its status (capacity, addresses, Ready).

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc, time::Duration};

/// The namespace node Leases live in.
pub use skiff_api::kinds::NODE_LEASE_NAMESPACE as LEASE_NAMESPACE;
use skiff_api::{
    client::{Client, ClientError},
    kinds::{Lease, LeaseSpec, Node, NodeAddress, NodeSpec, NodeStatus, NodeSystemInfo},
    meta::{ObjectMeta, time},
    net::{CidrError, Ipv4Cidr},
    quantity::{Quantity, QuantityError},
};
use tokio::sync::watch;

use super::{NodeConfig, agent::AgentStats, status::set_condition};
/// The label every node carries with its own name.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// What can go wrong registering the node and reading its resources.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host's memory could not be read.
    #[error("reading {path}")]
    Host {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// /proc/meminfo has no MemTotal line.
    #[error("no MemTotal in /proc/meminfo")]
    NoMemTotal,
    /// The reservations take all of the node.
    #[error(
        "the reservations ({cpu} CPU, {memory} memory) leave nothing of this node's {cpus} CPUs and {bytes} bytes"
    )]
    NothingLeft {
        cpu: String,
        memory: String,
        cpus: i128,
        bytes: i128,
    },
    /// A resource amount could not be written as a quantity.
    #[error("formatting a quantity")]
    Quantity {
        #[source]
        source: QuantityError,
    },
    /// The API server refused or failed `action`.
    #[error("{action}")]
    Api {
        action: &'static str,
        #[source]
        source: ClientError,
    },
    /// The Node has another pod CIDR than the one configured.
    #[error(
        "node {node} already has pod CIDR {have}, not the configured {want}; remove --pod-cidr or the Node"
    )]
    OtherPodCidr {
        node: String,
        have: String,
        want: Ipv4Cidr,
    },
    /// The Node's pod CIDR is not a CIDR.
    #[error("node {node} has an invalid pod CIDR {value:?}")]
    InvalidPodCidr {
        node: String,
        value: String,
        #[source]
        source: CidrError,
    },
}

/// The heartbeat's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn api(action: &'static str) -> impl FnOnce(ClientError) -> Error {
    move |source| Error::Api { action, source }
}

/// Whether the node can run pods, and if not why (shown in its Ready condition).
pub type Health = std::result::Result<(), String>;

/// The node's resources: capacity from the host, allocatable = capacity - reservations.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    pub capacity: BTreeMap<String, Quantity>,
    pub allocatable: BTreeMap<String, Quantity>,
}

impl Resources {
    /// Reads CPUs and memory of this host and subtracts the configured reservations.
    pub fn of_host(config: &NodeConfig) -> Result<Resources> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as i128;
        let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|source| Error::Host {
            path: "/proc/meminfo",
            source,
        })?;
        let mem_kib: i128 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or(Error::NoMemTotal)?;
        let cpu_millis = cpus * 1000;
        let mem = mem_kib * 1024;
        let reserved_cpu = config.reserved_cpu.milli_value();
        let reserved_mem = config.reserved_memory.value();
        if reserved_cpu >= cpu_millis || reserved_mem >= mem {
            return Err(Error::NothingLeft {
                cpu: config.reserved_cpu.as_str().to_owned(),
                memory: config.reserved_memory.as_str().to_owned(),
                cpus,
                bytes: mem,
            });
        }
        let q = |s: String| Quantity::parse(&s).map_err(|source| Error::Quantity { source });
        let pods = q(config.max_pods.to_string())?;
        Ok(Resources {
            capacity: [
                ("cpu".to_owned(), q(cpus.to_string())?),
                ("memory".to_owned(), q(format!("{}Ki", mem_kib))?),
                ("pods".to_owned(), pods.clone()),
            ]
            .into(),
            allocatable: [
                (
                    "cpu".to_owned(),
                    q(format!("{}m", cpu_millis - reserved_cpu))?,
                ),
                ("memory".to_owned(), q((mem - reserved_mem).to_string())?),
                ("pods".to_owned(), pods),
            ]
            .into(),
        })
    }
}

/// The conditions a node reports besides Ready; this agent does not measure pressure.
const PRESSURE_CONDITIONS: [(&str, &str, &str); 3] = [
    (
        "MemoryPressure",
        "KubeletHasSufficientMemory",
        "the node has sufficient memory available",
    ),
    (
        "DiskPressure",
        "KubeletHasNoDiskPressure",
        "the node has no disk pressure",
    ),
    (
        "PIDPressure",
        "KubeletHasSufficientPID",
        "the node has sufficient PIDs available",
    ),
];

/// Everything the node status is made from.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub name: String,
    pub internal_ip: Ipv4Addr,
    pub resources: Resources,
    pub runtime_version: String,
    pub health: Health,
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "Linux".into())
}

/// The status the node reports at `now`.
pub fn node_status(facts: &NodeFacts, old: &NodeStatus, now: &str) -> NodeStatus {
    let mut conditions = old.conditions.clone();
    for (type_, reason, message) in PRESSURE_CONDITIONS {
        set_condition(&mut conditions, type_, "False", reason, message, now);
    }
    match &facts.health {
        Ok(()) => set_condition(
            &mut conditions,
            "Ready",
            "True",
            "KubeletReady",
            "skiff-agent is posting ready status",
            now,
        ),
        Err(why) => set_condition(
            &mut conditions,
            "Ready",
            "False",
            "KubeletNotReady",
            why,
            now,
        ),
    }
    for c in &mut conditions {
        c.last_heartbeat_time = Some(now.to_owned());
    }
    NodeStatus {
        capacity: facts.resources.capacity.clone(),
        allocatable: facts.resources.allocatable.clone(),
        conditions,
        addresses: vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: facts.internal_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: facts.name.clone(),
            },
        ],
        node_info: NodeSystemInfo {
            architecture: std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
            operating_system: "linux".into(),
            os_image: os_image(),
            kernel_version: kernel_release(),
            container_runtime_version: facts.runtime_version.clone(),
            kubelet_version: format!("skiff-agent/{}", env!("CARGO_PKG_VERSION")),
        },
    }
}

/// Whether two node statuses differ in more than their heartbeat times.
pub fn differs_beyond_heartbeats(a: &NodeStatus, b: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_heartbeat_time = None;
        }
        s
    };
    strip(a) != strip(b)
}

/// Gets or creates this node's Node object; a configured pod CIDR is written into a Node that
/// has none. Returns the Node as stored.
pub async fn register(client: &Client, config: &NodeConfig, internal_ip: Ipv4Addr) -> Result<Node> {
    let name = &config.name;
    let node = match client.get::<Node>("", name).await {
        Ok(node) => node,
        Err(e) if e.is_not_found() => {
            let mut labels = config.labels.clone();
            labels.insert(HOSTNAME_LABEL.to_owned(), name.clone());
            let cidr = config.pod_cidr.map(|c| c.to_string()).unwrap_or_default();
            let node = Node {
                metadata: ObjectMeta {
                    name: name.clone(),
                    labels,
                    ..ObjectMeta::default()
                },
                spec: NodeSpec {
                    pod_cidrs: if cidr.is_empty() {
                        Vec::new()
                    } else {
                        vec![cidr.clone()]
                    },
                    pod_cidr: cidr,
                    taints: config.taints.clone(),
                    ..NodeSpec::default()
                },
                status: NodeStatus::default(),
            };
            match client.create(&node).await {
                Ok(n) => {
                    tracing::info!(node = %name, %internal_ip, "registered the node");
                    n
                }
                Err(e) if e.is_already_exists() => client
                    .get::<Node>("", name)
                    .await
                    .map_err(api("reading this node's Node object"))?,
                Err(e) => return Err(api("registering the node")(e)),
            }
        }
        Err(e) => return Err(api("reading this node's Node object")(e)),
    };
    match (config.pod_cidr, node.spec.pod_cidr.as_str()) {
        (Some(want), "") => {
            let mut n = node;
            n.spec.pod_cidr = want.to_string();
            n.spec.pod_cidrs = vec![want.to_string()];
            client.update(&n).await.map_err(api("writing the pod CIDR"))
        }
        (Some(want), have) if have != want.to_string() => Err(Error::OtherPodCidr {
            node: name.clone(),
            have: have.to_owned(),
            want,
        }),
        _ => Ok(node),
    }
}

/// Waits until the Node has a pod CIDR (the controller-manager assigns one), polling.
pub async fn wait_pod_cidr(client: &Client, name: &str) -> Result<Ipv4Cidr> {
    let mut logged = false;
    loop {
        match client.get::<Node>("", name).await {
            Ok(n) if !n.spec.pod_cidr.is_empty() => {
                return n
                    .spec
                    .pod_cidr
                    .parse()
                    .map_err(|source| Error::InvalidPodCidr {
                        node: name.to_owned(),
                        value: n.spec.pod_cidr.clone(),
                        source,
                    });
            }
            Ok(_) => {
                if !logged {
                    tracing::info!("waiting for the control plane to assign this node a pod CIDR");
                    logged = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the Node"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The node's Lease renewed at `now` (taken over, when someone else held it).
pub fn renewed_lease(old: Option<&Lease>, node: &str, duration_seconds: i32, now: &str) -> Lease {
    let mut lease = old.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: node.into(),
            namespace: LEASE_NAMESPACE.into(),
            ..ObjectMeta::default()
        },
        spec: LeaseSpec::default(),
    });
    let s = &mut lease.spec;
    if s.holder_identity.as_deref() != Some(node) {
        if s.holder_identity.is_some() {
            s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + 1);
        }
        s.holder_identity = Some(node.into());
        s.acquire_time = Some(now.into());
    }
    s.lease_duration_seconds = Some(duration_seconds);
    s.renew_time = Some(now.into());
    lease
}

async fn renew_once(
    client: &Client,
    node: &str,
    duration: i32,
    held: &mut Option<Lease>,
) -> std::result::Result<(), ClientError> {
    let now = time::format_micros(std::time::SystemTime::now());
    let lease = renewed_lease(held.as_ref(), node, duration, &now);
    let result = if lease.metadata.resource_version.is_empty() {
        client.create(&lease).await
    } else {
        client.update(&lease).await
    };
    match result {
        Ok(l) => {
            *held = Some(l);
            Ok(())
        }
        Err(e) if e.is_conflict() || e.is_already_exists() => {
            *held = match client.get::<Lease>(LEASE_NAMESPACE, node).await {
                Ok(l) => Some(l),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            };
            Err(ClientError::Config(
                "the lease changed under us; renewing again".into(),
            ))
        }
        Err(e) => {
            if e.is_not_found() {
                *held = None;
            }
            Err(e)
        }
    }
}

/// Renews the node's Lease every `interval` (a lease lasts four intervals), forever, counting
/// renewals and failures in `stats`.
pub async fn renew_lease(client: Client, node: String, interval: Duration, stats: Arc<AgentStats>) {
    let duration = i32::try_from((interval.as_millis() * 4).div_ceil(1000))
        .unwrap_or(40)
        .max(1);
    let mut held: Option<Lease> = client.get(LEASE_NAMESPACE, &node).await.ok();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = renew_once(&client, &node, duration, &mut held).await {
            stats.lease_failed(&node, &e);
            tracing::warn!(error = %e, "renewing the node lease failed; retrying");
            tokio::time::sleep(interval / 5).await;
            if let Err(e) = renew_once(&client, &node, duration, &mut held).await {
                stats.lease_failed(&node, &e);
                tracing::warn!(error = %e, "renewing the node lease failed again");
                continue;
            }
        }
        stats.lease_renewed();
    }
}

/// Writes the node status when it changed, and at least every `refresh`; `health` says whether
/// the node is ready. Runs forever, counting writes and failures in `stats`.
pub async fn report_status(
    client: Client,
    facts: Arc<NodeFacts>,
    mut health: watch::Receiver<Health>,
    check_every: Duration,
    refresh: Duration,
    stats: Arc<AgentStats>,
) {
    let mut last_written = tokio::time::Instant::now() - refresh;
    let mut facts = (*facts).clone();
    loop {
        facts.health = health.borrow_and_update().clone();
        match client.get::<Node>("", &facts.name).await {
            Ok(mut node) => {
                let now = time::now();
                let status = node_status(&facts, &node.status, &now);
                if differs_beyond_heartbeats(&status, &node.status)
                    || last_written.elapsed() >= refresh
                {
                    node.status = status;
                    match client.update_status(&node).await {
                        Ok(_) => {
                            last_written = tokio::time::Instant::now();
                            stats.status_written(facts.health.is_ok());
                        }
                        Err(e) => {
                            stats.error(&facts.name, "writing the node status", &e);
                            tracing::warn!(error = %e, "writing the node status");
                        }
                    }
                }
            }
            Err(e) => {
                stats.error(&facts.name, "reading the Node for its status", &e);
                tracing::warn!(error = %e, "reading the Node for its status");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(check_every) => {}
            changed = health.changed() => if changed.is_err() { return },
        }
    }
}
