//! The node agent's core with its edges handed in: the API client, the container runtime, the
//! pod networks and the service proxy. `skiff-agent node` runs it over containerd, netlink and
//! eBPF; a hollow node (kubemark's idea) runs the same code over `crate::testing`'s fakes.

use std::{
    fmt,
    net::Ipv4Addr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use skiff_api::{
    client::{Client, ListParams},
    kinds::{Node, Pod, Service},
    net::Ipv4Cidr,
};
use skiff_runtime::informer::Informer;
use tokio::{sync::watch, task::AbortHandle};

use super::{
    NodeConfig, api::PodApi, envvars, heartbeat, logs, pods, proxy::Proxy, volumes::Volumes,
};
use crate::{
    paths::NodePaths,
    podnet::PodNetworks,
    runtime::{ContainerRuntime, NodeSecurity},
};

/// What can stop the agent's core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Registering the Node or waiting for its pod CIDR failed (said as the heartbeat says it,
    /// as `skiff-agent node` always has).
    #[error(transparent)]
    Register(heartbeat::Error),
    /// Running the pods failed.
    #[error(transparent)]
    Pods(pods::Error),
}

/// The core's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The parts of a node agent a hollow node does without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Keep host-gw routes to the other nodes' pod CIDRs (each node then watches every Node).
    pub host_routes: bool,
    /// Keep the log tunnel to the API server open (`skiffctl logs` for this node's pods).
    pub log_tunnel: bool,
}

impl Features {
    /// Everything: what `skiff-agent node` runs.
    pub const ALL: Features = Features {
        host_routes: true,
        log_tunnel: true,
    };
}

/// The node's settings, checked by whoever builds them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Name, configured pod CIDR, labels and taints it registers with.
    pub node: NodeConfig,
    pub internal_ip: Ipv4Addr,
    /// Capacity and allocatable, as reported in the node status.
    pub resources: heartbeat::Resources,
    /// The container runtime's version, as reported in the node status.
    pub runtime_version: String,
    /// Between Lease renewals (the Lease lasts four of them).
    pub lease_interval: Duration,
    /// Between node status checks and runtime health checks (those at most every 5 s).
    pub status_interval: Duration,
    /// An unchanged node status is written again this often (a heartbeat in the status).
    pub status_refresh: Duration,
    /// The first restart back-off of an exited container, doubled per restart up to the max.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Container logs and pod cgroups.
    pub paths: NodePaths,
    pub features: Features,
    /// The pod network is there before the agent starts (a hollow node's fakes): the node
    /// status starts Ready instead of NotReady while the network is set up, and the runtime's
    /// health check decides from then on. False for `skiff-agent node`.
    pub network_ready: bool,
}

/// What the agent's heartbeat has done, for whoever runs it (hollow nodes sum these).
#[derive(Debug, Default)]
pub struct AgentStats {
    pub lease_renewals: AtomicU64,
    pub lease_failures: AtomicU64,
    pub node_status_writes: AtomicU64,
    /// Failed reads and writes of the Node.
    pub errors: AtomicU64,
    /// The lease was renewed since the agent started.
    pub lease_held: AtomicBool,
    /// A status saying Ready was written since the agent started.
    pub ready_reported: AtomicBool,
    /// The informer of the node's pods has listed them.
    pub pods_synced: AtomicBool,
    /// The latest failure, with the node's name.
    pub last_error: Mutex<Option<String>>,
}

impl AgentStats {
    pub(crate) fn lease_renewed(&self) {
        self.lease_renewals.fetch_add(1, Ordering::Relaxed);
        self.lease_held.store(true, Ordering::Relaxed);
    }

    pub(crate) fn lease_failed(&self, node: &str, e: &dyn fmt::Display) {
        self.lease_failures.fetch_add(1, Ordering::Relaxed);
        self.error(node, "renewing the lease", e);
    }

    pub(crate) fn status_written(&self, ready: bool) {
        self.node_status_writes.fetch_add(1, Ordering::Relaxed);
        if ready {
            self.ready_reported.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn error(&self, node: &str, what: &str, e: &dyn fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(format!("{node}: {what}: {e}"));
    }

    /// Forgets what says the agent is up (for an agent started again).
    pub fn restarted(&self) {
        for f in [&self.lease_held, &self.ready_reported, &self.pods_synced] {
            f.store(false, Ordering::Relaxed);
        }
    }

    /// Whether the agent has renewed its lease, reported Ready and listed its pods.
    pub fn is_up(&self) -> bool {
        [&self.lease_held, &self.ready_reported, &self.pods_synced]
            .iter()
            .all(|f| f.load(Ordering::Relaxed))
    }
}

/// Tasks of the agent, aborted when it stops (when its future is dropped): an agent of many
/// in one process stops without leaving its heartbeat behind.
#[derive(Debug, Default)]
struct Tasks(Vec<AbortHandle>);

impl Tasks {
    fn spawn(&mut self, f: impl Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(f).abort_handle());
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A node agent about to register.
#[derive(Debug)]
pub struct NodeAgent {
    client: Client,
    settings: Settings,
    stats: Arc<AgentStats>,
}

/// What the pods of a registered node run on.
#[derive(Debug)]
pub struct Parts {
    /// Where pod statuses are written and deletions finished.
    pub api: Arc<dyn PodApi>,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub network: Arc<dyn PodNetworks>,
    /// The service proxy every pod's host veth is attached to, if there is one.
    pub proxy: Option<Arc<Proxy>>,
}

impl NodeAgent {
    /// An agent that talks to the API server through `client` (authenticated as this node).
    pub fn new(client: Client, settings: Settings, stats: Arc<AgentStats>) -> NodeAgent {
        NodeAgent {
            client,
            settings,
            stats,
        }
    }

    /// Registers the Node, starts renewing the Lease and reporting the node status (NotReady
    /// until [`Registered::run`] checks the runtime), and waits for the Node's pod CIDR.
    pub async fn register(self) -> Result<Registered> {
        let NodeAgent {
            client,
            settings,
            stats,
        } = self;
        let name = settings.node.name.clone();
        let register = Error::Register;
        heartbeat::register(&client, &settings.node, settings.internal_ip)
            .await
            .map_err(register)?;
        let mut tasks = Tasks::default();
        tasks.spawn(heartbeat::renew_lease(
            client.clone(),
            name.clone(),
            settings.lease_interval,
            stats.clone(),
        ));
        let (health, health_rx) = watch::channel::<heartbeat::Health>(if settings.network_ready {
            Ok(())
        } else {
            Err("the pod network is not set up yet".into())
        });
        let facts = Arc::new(heartbeat::NodeFacts {
            name: name.clone(),
            internal_ip: settings.internal_ip,
            resources: settings.resources.clone(),
            runtime_version: settings.runtime_version.clone(),
            health: Err(String::new()),
        });
        tasks.spawn(heartbeat::report_status(
            client.clone(),
            facts,
            health_rx,
            settings.status_interval,
            settings.status_refresh,
            stats.clone(),
        ));
        let cidr = heartbeat::wait_pod_cidr(&client, &name)
            .await
            .map_err(register)?;
        tracing::info!(node = %name, pod_cidr = %cidr, internal_ip = %settings.internal_ip, "node registered");
        Ok(Registered {
            client,
            settings,
            stats,
            cidr,
            health,
            tasks,
            options: PodOptions::default(),
        })
    }
}

/// A registered node, its heartbeat running.
#[derive(Debug)]
pub struct Registered {
    client: Client,
    settings: Settings,
    stats: Arc<AgentStats>,
    cidr: Ipv4Cidr,
    health: watch::Sender<heartbeat::Health>,
    tasks: Tasks,
    options: PodOptions,
}

/// What `skiff-agent node` gives its pods beyond what every agent has (a hollow node runs
/// with the defaults).
#[derive(Debug, Clone)]
pub struct PodOptions {
    /// The Services informer the node runs already (the service proxy's); `None`: the agent
    /// makes and runs one for the Service environment variables.
    pub services: Option<Informer<Service>>,
    /// Where pod volumes are made; `None`: pods with volumes wait, saying the node has none.
    pub volumes: Option<Volumes>,
    /// Between refreshes of a pod's file volumes (kubelet's sync period, a minute).
    pub volume_resync: Duration,
    /// What containers' securityContext may have (default: no privileged containers, no
    /// seccomp filter for containers that ask for none, no Localhost profiles).
    pub node_security: NodeSecurity,
}

impl Default for PodOptions {
    fn default() -> PodOptions {
        PodOptions {
            services: None,
            volumes: None,
            volume_resync: Duration::from_secs(60),
            node_security: NodeSecurity::default(),
        }
    }
}

impl Registered {
    /// Runs the pods with `options`.
    pub fn with_options(mut self, options: PodOptions) -> Registered {
        self.options = options;
        self
    }

    /// The Node's pod CIDR.
    pub fn pod_cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    /// Checks the runtime's health (the node goes Ready), keeps the routes to other nodes and
    /// the log tunnel (as `features` say), and runs the pods bound to the node, forever.
    /// Dropping the future stops all of it; the pods' containers and networks stay.
    pub async fn run(self, parts: Parts) -> Result<()> {
        let Registered {
            client,
            settings,
            stats,
            cidr: _,
            health,
            mut tasks,
            options,
        } = self;
        let name = settings.node.name.clone();
        tasks.spawn(super::check_health(
            parts.runtime.clone(),
            health,
            settings.status_interval,
        ));
        if settings.features.host_routes {
            let nodes = Informer::<Node>::new(client.clone(), "", ListParams::default());
            tasks.spawn(super::sync_routes(nodes.clone(), name.clone()));
            tasks.spawn(nodes.run());
        }
        let services = match options.services {
            Some(s) => s,
            None => {
                let s = Informer::<Service>::new(client.clone(), "", ListParams::default());
                tasks.spawn(s.clone().run());
                s
            }
        };
        let allocatable = node_allocatable(&settings);
        let ctx = Arc::new(pods::Ctx {
            api: parts.api,
            runtime: parts.runtime,
            network: parts.network,
            node: name.clone(),
            host_ip: settings.internal_ip,
            paths: settings.paths,
            backoff_initial: settings.backoff_initial,
            backoff_max: settings.backoff_max,
            attempts: Mutex::new(Default::default()),
            proxy: parts.proxy,
            objects: Arc::new(client.clone()),
            services: Arc::new(services),
            allocatable,
            volumes: options.volumes,
            volume_resync: options.volume_resync,
            node_security: options.node_security,
        });
        let pods = Informer::<Pod>::new(
            client.clone(),
            "",
            ListParams::fields(format!("spec.nodeName={name}")),
        );
        let synced = pods.clone();
        let up = stats.clone();
        tasks.spawn(async move {
            synced.synced().await;
            up.pods_synced.store(true, Ordering::Relaxed);
        });
        if settings.features.log_tunnel {
            tasks.spawn(skiff_api::logs::serve_node_tunnel(
                client.clone(),
                Arc::new(logs::NodeLogs { ctx: ctx.clone() }),
                std::future::pending(),
            ));
        }
        let result = pods::run(ctx, pods).await;
        drop(tasks);
        result.map_err(Error::Pods)
    }
}

/// The node's allocatable resources for the downward API (the value of a `limits.*`
/// resourceFieldRef of a container without that limit).
fn node_allocatable(settings: &Settings) -> envvars::Allocatable {
    let alloc = |name: &str, milli: bool| {
        settings
            .resources
            .allocatable
            .get(name)
            .map_or(0, |q| if milli { q.milli_value() } else { q.value() })
    };
    envvars::Allocatable {
        cpu_millis: alloc("cpu", true),
        memory: alloc("memory", false),
        ephemeral_storage: alloc("ephemeral-storage", false),
    }
}
