//! The node agent (`skiff-agent node`): what the kubelet is to Kubernetes. It registers its
//! Node, renews its Lease, runs the pods bound to it through containerd with networks made
//! through netlink, keeps host-gw routes to the other nodes' pod CIDRs, and reports what
//! really happens. It talks only to the API server.

pub mod agent;
pub mod api;
pub mod envvars;
pub mod heartbeat;
pub mod logs;
pub mod pods;
pub mod probe;
pub mod proxy;
pub mod status;
pub mod termination;
pub mod volumes;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, UdpSocket},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use skiff_api::{
    client::{Client, ClientConfig, ListParams},
    kinds::{Endpoints, Node, Service, Taint},
    net::Ipv4Cidr,
    quantity::Quantity,
};
use skiff_runtime::informer::Informer;
use tokio::sync::watch;

use crate::{
    datapath::{self, DatapathConfig},
    ipam::Ipam,
    podnet::{self, NodeNetworks, PodNet, PodNetConfig},
    runtime::{ContainerRuntime, Runtime},
};

/// `skiff-agent node` flags.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The API server: `http://host:port`, `https://host:port` or `unix:///path`.
    #[arg(long, env = "SKIFF_SERVER", default_value = "http://127.0.0.1:6443")]
    pub server: String,
    /// A file holding this node's bearer token (role node, bound to this node's name).
    #[arg(long, env = "SKIFF_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// PEM CA certificate to verify an https:// server with.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The node's InternalIP (default: the source address of this namespace's default route).
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// This node's pod CIDR; by default the control plane assigns one.
    #[arg(long)]
    pub pod_cidr: Option<Ipv4Cidr>,
    /// The Service CIDR, blackholed in the node's namespace so untranslated Service traffic is
    /// dropped, never routed out.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: Ipv4Cidr,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub containerd: PathBuf,
    /// The containerd namespace this agent's containers live in (one per node when nodes share
    /// a containerd).
    #[arg(long)]
    pub containerd_namespace: Option<String>,
    /// State directory: addresses, pod network namespaces, container logs.
    #[arg(long, default_value = "/var/lib/skiff-agent")]
    pub root: PathBuf,
    /// Directory of OCI image archives (`*.tar`) imported at start (an offline source of
    /// images besides registries).
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Registry configuration in containerd's `hosts.toml` format (containerd's
    /// `config_path`): `DIR/<host[:port]>/hosts.toml` with `server`, mirrors as
    /// `[host."URL"]` (`capabilities`, `skip_verify`, `ca`, `override_path`), and
    /// `DIR/_default/hosts.toml` for other registries.
    #[arg(long)]
    pub registry_config_dir: Option<PathBuf>,
    /// Percent of the image filesystem in use above which unused images are removed (100
    /// disables image garbage collection).
    #[arg(long, default_value_t = 85)]
    pub image_gc_high_threshold: u8,
    /// Percent of the image filesystem image garbage collection brings usage down to.
    #[arg(long, default_value_t = 80)]
    pub image_gc_low_threshold: u8,
    /// CPU kept back from pods (allocatable = capacity - this).
    #[arg(long, default_value = "100m")]
    pub reserved_cpu: Quantity,
    /// Memory kept back from pods.
    #[arg(long, default_value = "256Mi")]
    pub reserved_memory: Quantity,
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Seconds between Lease renewals (the Lease lasts four of them).
    #[arg(long, default_value_t = 2.5)]
    pub lease_interval: f64,
    /// Seconds between node status checks (the status is rewritten at least every minute).
    #[arg(long, default_value_t = 10.0)]
    pub status_interval: f64,
    /// Seconds before the first restart of an exited container; doubled per restart.
    #[arg(long, default_value_t = 10.0)]
    pub restart_backoff: f64,
    /// The longest restart back-off, in seconds.
    #[arg(long, default_value_t = 300.0)]
    pub max_restart_backoff: f64,
    /// Parent cgroup of every pod's containers.
    #[arg(long, default_value = "/skiff")]
    pub cgroup_parent: String,
    /// Name of this node's eBPF datapath: its maps and links are pinned under
    /// `<bpffs>/skiff/<instance>/` (default: `node-<node name>`).
    #[arg(long)]
    pub datapath_instance: Option<String>,
    /// Where bpffs is mounted.
    #[arg(long, default_value = crate::datapath::DEFAULT_BPFFS_ROOT)]
    pub bpffs: PathBuf,
    /// Seconds between re-reads of the datapath maps against the API's Services and Endpoints
    /// (repairing drift).
    #[arg(long, default_value_t = 30.0)]
    pub proxy_resync: f64,
    /// Entries of the established conntrack table (two per flow), which never evicts a live
    /// flow. Default: 1/256 of the node's memory at 128 bytes an entry, between 65,536 and
    /// 16,777,216.
    #[arg(long)]
    pub max_conntrack_established: Option<u32>,
    /// Entries of the short-lived conntrack table (two per flow): an LRU for flows that have not
    /// completed their handshake and flows that have closed.
    #[arg(long, default_value_t = skiff_common::capacity::CONNTRACK)]
    pub max_conntrack: u32,
    /// Entries of the Maglev map, 496 slots each (a table of the default size takes 34, twice
    /// that while it is replaced); not preallocated.
    #[arg(long, default_value_t = skiff_common::capacity::MAGLEV)]
    pub max_maglev_chunks: u32,
    /// The Maglev table size of service ports (a prime from 251 to 131071); a Service's
    /// `skiff.io/maglev-table-size` annotation overrides it.
    #[arg(long, default_value_t = datapath::maglev::DEFAULT_TABLE_SIZE)]
    pub maglev_table_size: u32,
    /// Seconds between runs of the conntrack collector.
    #[arg(long, default_value_t = datapath::DEFAULT_GC_INTERVAL.as_secs_f64())]
    pub conntrack_gc_interval: f64,
    /// Run without the service proxy (no eBPF; pods cannot reach Services).
    #[arg(long)]
    pub no_service_proxy: bool,
    /// The interface NodePorts are served on (default: the one holding the node's InternalIP).
    #[arg(long)]
    pub uplink: Option<String>,
    /// Seconds between refreshes of pods' configMap, secret, downwardAPI and projected volumes
    /// (kubelet's sync period): an edit of a ConfigMap shows in the mounted files within this.
    #[arg(long, default_value_t = 60.0)]
    pub volume_resync: f64,
    /// Let containers run with `securityContext.privileged: true` (refused by default, with
    /// Kubernetes' "disallowed by cluster policy").
    #[arg(long)]
    pub allow_privileged: bool,
    /// kubelet's `--seccomp-default`: containers that ask for no seccomp profile run under
    /// RuntimeDefault instead of Unconfined.
    #[arg(long)]
    pub seccomp_default: bool,
    /// The directory `seccompProfile.localhostProfile` paths are relative to (kubelet's
    /// `<root-dir>/seccomp`; default: `<root>/seccomp`).
    #[arg(long)]
    pub seccomp_root: Option<PathBuf>,
    /// host:port (in the node's network namespace) serving Prometheus `/metrics`; off when unset.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The node's settings, checked.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub pod_cidr: Option<Ipv4Cidr>,
    pub reserved_cpu: Quantity,
    pub reserved_memory: Quantity,
    pub max_pods: u32,
    /// Labels a Node this agent creates gets besides `kubernetes.io/hostname` (none for
    /// `skiff-agent node`).
    pub labels: BTreeMap<String, String>,
    /// Taints a Node this agent creates gets (none for `skiff-agent node`).
    pub taints: Vec<Taint>,
}

fn secs(v: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--{flag} must be a positive number of seconds"))
}

/// Names Kubernetes accepts for a node (DNS subdomain).
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        bail!(
            "node name {name:?} is not a valid DNS subdomain (lower-case letters, digits, '-' and '.')"
        )
    }
}

/// The address this namespace would send from towards its default route: a UDP connect sends
/// nothing, it only asks the routing table.
fn default_source_ip() -> Result<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0").context("opening a UDP socket")?;
    s.connect("10.255.255.254:9")
        .context("this namespace has no default route; pass --node-ip")?;
    match s.local_addr()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Ok(ip),
        _ => bail!("could not find this node's address; pass --node-ip"),
    }
}

/// Runs the node agent until SIGTERM or SIGINT; pods keep running when it stops.
pub fn run(args: NodeArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async move {
            tokio::select! {
                r = serve(args) => r,
                () = shutdown_signal() => {
                    tracing::info!("stopping; pods and their networks stay as they are");
                    Ok(())
                }
            }
        })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn serve(args: NodeArgs) -> Result<()> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name; pass --name")?
            .trim()
            .to_owned(),
    };
    check_name(&name)?;
    let config = NodeConfig {
        name: name.clone(),
        pod_cidr: args.pod_cidr,
        reserved_cpu: args.reserved_cpu.clone(),
        reserved_memory: args.reserved_memory.clone(),
        max_pods: args.max_pods,
        labels: BTreeMap::new(),
        taints: Vec::new(),
    };
    let lease_interval = secs(args.lease_interval, "lease-interval")?;
    let status_interval = secs(args.status_interval, "status-interval")?;
    let backoff_initial = secs(args.restart_backoff, "restart-backoff")?;
    let backoff_max = secs(args.max_restart_backoff, "max-restart-backoff")?.max(backoff_initial);
    let resources = heartbeat::Resources::of_host(&config)?;
    let internal_ip = match args.node_ip {
        Some(ip) => ip,
        None => default_source_ip()?,
    };
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the token file {}", args.token_file.display()))?;
    let mut client_config = ClientConfig::new(args.server.clone(), token.trim());
    client_config.ca_cert = args.ca_cert.clone();
    let client = connect(&client_config).await?;
    let namespace = args
        .containerd_namespace
        .clone()
        .unwrap_or_else(|| format!("skiff-{name}"));
    let gc_policy = crate::runtime::gc::GcPolicy::new(
        args.image_gc_high_threshold,
        args.image_gc_low_threshold,
    )
    .map_err(anyhow::Error::msg)?;
    let registry_hosts = match &args.registry_config_dir {
        Some(dir) => crate::runtime::hosts::RegistryHosts::load(dir)
            .with_context(|| format!("--registry-config-dir {}", dir.display()))?,
        None => crate::runtime::hosts::RegistryHosts::default(),
    };
    let runtime = Runtime::connect(&args.containerd, &namespace)
        .await
        .with_context(|| format!("connecting to containerd at {}", args.containerd.display()))?
        .with_registry_hosts(registry_hosts);
    let runtime_version = runtime
        .version()
        .await
        .context("asking containerd its version")?;
    let mut imported = Vec::new();
    if let Some(dir) = &args.image_dir {
        // Agents sharing one containerd may import the same archive at once, and one of them
        // then finds the other's write in progress: try again.
        let mut attempt = 0;
        let images = loop {
            match runtime.import_dir(dir).await {
                Ok(images) => break images,
                Err(e) if attempt < 10 => {
                    attempt += 1;
                    tracing::warn!(error = %format!("{e:#}"), "importing images; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("importing images from {}", dir.display()));
                }
            }
        };
        tracing::info!(?images, "images available");
        imported = images;
    }
    let registered = agent::NodeAgent::new(
        client.clone(),
        agent::Settings {
            node: config,
            internal_ip,
            resources,
            runtime_version,
            lease_interval,
            status_interval,
            status_refresh: Duration::from_secs(60),
            backoff_initial,
            backoff_max,
            paths: crate::paths::NodePaths::new(
                args.root.join("logs"),
                format!("{}/{name}", args.cgroup_parent.trim_end_matches('/')),
            ),
            features: agent::Features::ALL,
            network_ready: false,
        },
        Arc::default(),
    )
    .register()
    .await?;
    let cidr = registered.pod_cidr();
    std::fs::create_dir_all(&args.root)
        .with_context(|| format!("creating {}", args.root.display()))?;
    // kubelet's mode for its root, root's: what pods keep here is no other host user's.
    volumes::make_private(&args.root)?;
    let pod_volumes = volumes::Volumes::new(args.root.join("pods"), Arc::new(volumes::HostMounter));
    pod_volumes
        .secure()
        .context("making the pod volume directories private")?;
    let podnet = Arc::new(PodNet::new(PodNetConfig {
        netns_dir: args.root.join("netns"),
        cidr,
        mtu: None,
    })?);
    let service_cidr = args.service_cidr;
    tokio::task::spawn_blocking(move || podnet::ensure_blackhole(service_cidr))
        .await?
        .context("adding the blackhole route for the Service CIDR")?;
    let ipam = Ipam::open(&args.root.join("ipam"), cidr)?;
    let volume_resync = secs(args.volume_resync, "volume-resync")?;
    let services = Informer::<Service>::new(client.clone(), "", ListParams::default());
    if args.no_service_proxy {
        tokio::spawn(services.clone().run());
    }
    let proxy = if args.no_service_proxy {
        None
    } else {
        let mut datapath = DatapathConfig::new(
            args.datapath_instance
                .clone()
                .unwrap_or_else(|| format!("node-{name}")),
        );
        datapath.bpffs_root = args.bpffs.clone();
        datapath.service_cidr = (service_cidr.network(), service_cidr.prefix());
        datapath.node_ip = Some(internal_ip);
        datapath.capacities.ct_established = match args.max_conntrack_established {
            Some(n) if n >= 2 => n,
            Some(n) => anyhow::bail!("--max-conntrack-established must be at least 2, not {n}"),
            None => datapath::ct_established_for_memory(
                datapath::node_memory()
                    .context("reading the node's memory to size the conntrack table")?,
            ),
        };
        datapath.gc_interval = secs(args.conntrack_gc_interval, "conntrack-gc-interval")?;
        for (flag, v) in [
            ("--max-conntrack", args.max_conntrack),
            ("--max-maglev-chunks", args.max_maglev_chunks),
        ] {
            if v < 2 {
                anyhow::bail!("{flag} must be at least 2, not {v}");
            }
        }
        datapath.capacities.conntrack = args.max_conntrack;
        datapath.capacities.maglev = args.max_maglev_chunks;
        datapath::maglev::TableSize::new(args.maglev_table_size)
            .map_err(|e| anyhow::anyhow!("--maglev-table-size: {e}"))?;
        datapath.maglev_size = args.maglev_table_size;
        let uplink = match &args.uplink {
            Some(u) => Some(u.clone()),
            None => {
                let found = tokio::task::spawn_blocking(move || {
                    podnet::interface_with_address(internal_ip)
                })
                .await??;
                if found.is_none() {
                    tracing::warn!(%internal_ip, "no interface holds the node's address: NodePorts are not served (pass --uplink)");
                }
                found
            }
        };
        let config = proxy::ProxyConfig {
            datapath,
            resync: secs(args.proxy_resync, "proxy-resync")?,
            uplink,
            node_name: name.clone(),
        };
        let endpoints = Informer::<Endpoints>::new(client.clone(), "", ListParams::default());
        // The proxy runs the Services informer; the pods' Service variables read it too.
        Some(proxy::Proxy::start(config, services.clone(), endpoints).await?)
    };
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} for /metrics"))?;
        tokio::spawn(proxy::serve_metrics(listener, proxy.clone()));
    }
    let runtime: Arc<dyn crate::runtime::ContainerRuntime> = Arc::new(runtime);
    // The kubelet's image GC period.
    let gc = tokio::spawn(crate::runtime::gc::run(
        runtime.clone(),
        gc_policy,
        imported,
        Duration::from_secs(300),
    ));
    let result = registered
        .with_options(agent::PodOptions {
            services: Some(services),
            volumes: Some(pod_volumes),
            volume_resync,
            node_security: crate::runtime::NodeSecurity {
                allow_privileged: args.allow_privileged,
                seccomp_default: args.seccomp_default,
                seccomp_root: args
                    .seccomp_root
                    .clone()
                    .unwrap_or_else(|| args.root.join("seccomp")),
            },
        })
        .run(agent::Parts {
            api: Arc::new(client),
            runtime,
            network: Arc::new(NodeNetworks::new(podnet, ipam)),
            proxy,
        })
        .await;
    gc.abort();
    Ok(result?)
}

async fn connect(config: &ClientConfig) -> Result<Client> {
    let mut wait = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match Client::connect(config).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "connecting to the API server; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e).context("connecting to the API server"),
        }
    }
}

/// The node is Ready while containerd answers (its network was set up before this starts).
async fn check_health(
    runtime: Arc<dyn ContainerRuntime>,
    health: watch::Sender<heartbeat::Health>,
    every: Duration,
) {
    loop {
        let now = match tokio::time::timeout(Duration::from_secs(5), runtime.version()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "container runtime is down: {}",
                crate::runtime::chain(&e)
            )),
            Err(_) => Err("container runtime did not answer within 5s".to_owned()),
        };
        health.send_if_modified(|h| {
            let changed = *h != now;
            *h = now.clone();
            changed
        });
        tokio::time::sleep(every.min(Duration::from_secs(5))).await;
    }
}

/// Keeps a route to every other node's pod CIDR via that node's InternalIP (host-gw).
async fn sync_routes(nodes: Informer<Node>, me: String) {
    let (tx, mut rx) = watch::channel(());
    nodes.on_event(move |_| {
        let _ = tx.send(());
    });
    nodes.synced().await;
    let mut last: Option<Vec<(Ipv4Cidr, Ipv4Addr)>> = None;
    loop {
        let mut routes: Vec<(Ipv4Cidr, Ipv4Addr)> = nodes
            .list()
            .iter()
            .filter(|n| n.metadata.name != me)
            .filter_map(|n| {
                let cidr = n.spec.pod_cidr.parse().ok()?;
                let ip = n
                    .status
                    .addresses
                    .iter()
                    .find(|a| a.type_ == "InternalIP")?
                    .address
                    .parse()
                    .ok()?;
                Some((cidr, ip))
            })
            .collect();
        routes.sort();
        if last.as_ref() != Some(&routes) {
            let want = routes.clone();
            match tokio::task::spawn_blocking(move || podnet::sync_node_routes(&want)).await {
                Ok(Ok(())) => {
                    tracing::info!(routes = routes.len(), "routes to other nodes' pods in sync");
                    last = Some(routes);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), "syncing routes to other nodes")
                }
                Err(e) => tracing::warn!(error = %e, "syncing routes to other nodes"),
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}
