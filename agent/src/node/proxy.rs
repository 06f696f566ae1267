//! The service proxy (what kube-proxy is to Kubernetes): Services and Endpoints watched through
//! the API server and programmed into the eBPF datapath's maps, and the datapath attached to the
//! host side of every pod's veth.
//!
//! A change to one Service or Endpoints object touches only that Service's entries; a periodic
//! resync re-reads the maps and repairs whatever drifted. The time from the Endpoints controller
//! writing a change (its `endpoints.kubernetes.io/last-change-trigger-time`) to the maps holding
//! it is the `skiff_proxy_programming_seconds` metric.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
    sync::{Arc, Mutex, PoisonError, atomic::AtomicU64},
    time::{Duration, Instant, SystemTime},
};

use skiff_api::{
    kinds::{ENDPOINTS_TRIGGER_TIME, Endpoints, Service},
    meta::time,
};
use skiff_common::{CtEvent, DropReason};
use skiff_runtime::{
    Queue, QueueMetrics, Readiness,
    informer::{Event, Informer},
    metrics::{Counter, Family, Gauge, Histogram, Label, OneLabel, Registry, label},
};
use tokio::sync::watch;

use crate::datapath::{
    self, Backends, Collector, DEFAULT_CLIENT_IP_TIMEOUT, Datapath, DatapathConfig, GcRun,
    MAX_CLIENT_IP_TIMEOUT, PinLayout, PinnedMaps, Protocol, ServicePort, ServiceTable,
    SessionAffinity,
};

/// What can go wrong starting or using the service proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The eBPF datapath could not be loaded, or its pinned maps adopted.
    #[error("{what}")]
    Datapath {
        what: &'static str,
        #[source]
        source: Box<datapath::Error>,
    },
    /// The datapath could not be attached to or detached from an interface.
    #[error("{what}")]
    Link {
        what: String,
        #[source]
        source: Box<datapath::Error>,
    },
    /// A thread of the proxy could not be started.
    #[error("starting the {name} thread")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A blocking datapath task panicked or was cancelled.
    #[error("a datapath task did not finish")]
    Task(#[from] tokio::task::JoinError),
    /// The sync thread ended before every Service was programmed once.
    #[error("the service proxy stopped")]
    Stopped,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn datapath_error(what: &'static str) -> impl FnOnce(datapath::Error) -> Error {
    move |source| Error::Datapath {
        what,
        source: Box::new(source),
    }
}

/// The proxy's settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub datapath: DatapathConfig,
    /// How often the maps are re-read and repaired against the API's state.
    pub resync: Duration,
    /// The node's uplink (the interface holding its InternalIP), where NodePorts are served;
    /// none turns NodePorts off.
    pub uplink: Option<String>,
    /// This node's name: endpoints whose `nodeName` it is are local, for the traffic policies.
    pub node_name: String,
}

/// The running proxy: attaches pods' veths and reports its metrics; its sync loop runs on a
/// thread of its own.
pub struct Proxy {
    datapath: Mutex<Datapath>,
    layout: PinLayout,
    ready: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Loads (or adopts the pins of) the datapath, then programs the Services and follows them.
    /// Pods are attached only after the first full sync ([`Proxy::attach`] waits for it), so a
    /// pod never meets an empty table that would refuse every Service address.
    pub async fn start(
        config: ProxyConfig,
        services: Informer<Service>,
        endpoints: Informer<Endpoints>,
    ) -> Result<Arc<Proxy>> {
        let dp_config = config.datapath.clone();
        let (dp, table, ct, (collector, gc_maps)) =
            tokio::task::spawn_blocking(move || -> Result<_> {
                let dp = Datapath::load(dp_config)
                    .map_err(datapath_error("loading the eBPF datapath"))?;
                let table = dp
                    .service_table()
                    .map_err(datapath_error("adopting the service maps"))?;
                let maps = || dp.maps().map_err(datapath_error("opening the pinned maps"));
                let ct = maps()?;
                let gc = (
                    dp.collector()
                        .map_err(datapath_error("opening the conntrack collector"))?,
                    maps()?,
                );
                Ok((dp, table, ct, gc))
            })
            .await??;
        let layout = dp.layout().clone();
        tracing::info!(
            instance = %config.datapath.instance,
            adopted = table.len(),
            "service datapath loaded"
        );
        let (ready_tx, ready) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        // One worker (the sync thread), so no key is ever programmed twice at once; a key
        // changed again while it waits is programmed once.
        let queue = Queue::default().with_metrics("service_proxy", &metrics.queue);
        let q = queue.clone();
        services.on_event(move |ev: &Event<Service>| q.add(key(&ev.object().metadata)));
        let q = queue.clone();
        endpoints.on_event(move |ev: &Event<Endpoints>| q.add(key(&ev.object().metadata)));
        let runtime = tokio::runtime::Handle::current();
        let (s, e) = (services.clone(), endpoints.clone());
        tokio::spawn(services.run());
        tokio::spawn(endpoints.run());
        // The collector on a thread of its own: a walk of a large table must not hold up the
        // programming of Service changes.
        let (interval, m) = (config.datapath.gc_interval, metrics.clone());
        std::thread::Builder::new()
            .name("conntrack-gc".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    collect_expired(&collector, &gc_maps, &m);
                }
            })
            .map_err(|source| Error::Thread {
                name: "conntrack collector",
                source,
            })?;
        let sync = Sync {
            table,
            ct,
            node: config.node_name.clone(),
            services: s,
            endpoints: e,
            programmed: HashMap::new(),
            measured: HashMap::new(),
            metrics: metrics.clone(),
        };
        let resync = config.resync;
        std::thread::Builder::new()
            .name("service-proxy".into())
            .spawn(move || {
                runtime.block_on(async {
                    sync.services.synced().await;
                    sync.endpoints.synced().await;
                });
                sync.run(&runtime, &queue, ready_tx, resync);
            })
            .map_err(|source| Error::Thread {
                name: "service proxy",
                source,
            })?;
        let proxy = Arc::new(Proxy {
            datapath: Mutex::new(dp),
            layout,
            ready,
            metrics,
        });
        if let Some(uplink) = config.uplink {
            // After the first sync, as for pods: NodePorts are served from the start.
            proxy.wait_ready().await?;
            let this = proxy.clone();
            let iface = uplink.clone();
            tokio::task::spawn_blocking(move || {
                let mut dp = this.datapath.lock().unwrap_or_else(PoisonError::into_inner);
                dp.attach_uplink(&iface)
            })
            .await?
            .map_err(|source| Error::Link {
                what: format!("attaching the NodePort programs to the uplink {uplink}"),
                source: Box::new(source),
            })?;
            tracing::info!(%uplink, "serving NodePorts on the uplink");
        }
        Ok(proxy)
    }

    /// Whether every Service has been programmed once (the agent's `/readyz`).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    async fn wait_ready(&self) -> Result<()> {
        let mut ready = self.ready.clone();
        ready.wait_for(|r| *r).await.map_err(|_| Error::Stopped)?;
        Ok(())
    }

    /// Attaches the datapath to a pod's host-side veth (replacing a pinned link an earlier
    /// agent left), once the Services are programmed. `pod_ip` is the address the pod was
    /// given: the only source its packets may carry.
    pub async fn attach(self: &Arc<Self>, iface: &str, pod_ip: Ipv4Addr) -> Result<()> {
        self.wait_ready().await?;
        let this = self.clone();
        let iface = iface.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut dp = this.datapath.lock().unwrap_or_else(PoisonError::into_inner);
            dp.attach_pod(&iface, pod_ip)
                .map_err(|source| Error::Link {
                    what: format!("attaching the service datapath to {iface}"),
                    source: Box::new(source),
                })
                .map(|_| ())
        })
        .await?
    }

    /// Removes the datapath's pinned links of an interface (the links themselves go with the
    /// device), then the pod's recorded address.
    pub async fn detach(&self, iface: &str) -> Result<()> {
        let layout = self.layout.clone();
        let iface = iface.to_owned();
        tokio::task::spawn_blocking(move || datapath::detach(&layout, &iface).map(|_| ()))
            .await?
            .map_err(|source| Error::Link {
                what: "detaching the service datapath".into(),
                source: Box::new(source),
            })
    }

    /// Removes the pinned links of interfaces that no longer exist or are not in `keep` (pods
    /// deleted while no agent ran).
    pub async fn detach_all_except(&self, keep: &BTreeSet<String>) -> Result<()> {
        let layout = self.layout.clone();
        let keep = keep.clone();
        tokio::task::spawn_blocking(move || -> datapath::Result<()> {
            let stale: BTreeSet<String> = datapath::attachments(&layout)?
                .into_iter()
                .map(|a| a.interface)
                .filter(|i| !keep.contains(i))
                .collect();
            for iface in stale {
                tracing::info!(%iface, "detaching from an interface of a pod that is gone");
                datapath::detach(&layout, &iface)?;
            }
            // Their recorded addresses (the interfaces are gone, so no program uses them).
            let pruned = datapath::prune_pod_sources(&layout)?;
            if pruned > 0 {
                tracing::info!(pruned, "removed the source addresses of pods that are gone");
            }
            Ok(())
        })
        .await?
        .map_err(|source| Error::Link {
            what: "removing the links of pods that are gone".into(),
            source: Box::new(source),
        })
    }
}

/// `namespace/name`.
fn key(meta: &skiff_api::ObjectMeta) -> String {
    format!("{}/{}", meta.namespace, meta.name)
}

/// The datapath entries of one Service and its Endpoints on the node named `node`: one per port
/// with a ClusterIP. Ready addresses are active (new connections go to them); not-ready ones,
/// terminating pods among them, are draining (their open connections go on, no new ones come).
/// Headless Services (`clusterIP: None`), ports of unsupported protocols and unparsable
/// addresses give none.
///
/// Traffic policies, as Kubernetes defines them:
/// - `internalTrafficPolicy: Local`: the ClusterIP entry's active backends are the ready
///   endpoints whose `nodeName` is `node`; with none, the node refuses new flows as for a
///   Service without endpoints.
/// - `externalTrafficPolicy: Local` (NodePort): the NodePort serves only this node's ready
///   endpoints, so no flow is sent to another node and none needs the node's address as source:
///   the backend sees the client's own address. With none, the NodePort refuses new flows.
///
/// Under a Local policy every other endpoint is listed as draining: flows it carried when the
/// policy changed go on, new ones never reach it (the table ignores draining addresses it never
/// served). When the NodePort's backends differ from the ClusterIP's (exactly one of the two
/// policies is Local), the NodePort gets its own entry (`ServicePort::node_port_entry`), with
/// its own ID and slots; otherwise the ClusterIP entry carries it.
pub fn desired(
    svc: &Service,
    ep: Option<&Endpoints>,
    node: &str,
) -> BTreeMap<ServicePort, Backends> {
    let mut out = BTreeMap::new();
    let Ok(vip) = svc.spec.cluster_ip.parse::<Ipv4Addr>() else {
        return out;
    };
    if svc.spec.type_ == "ExternalName" {
        return out;
    }
    let affinity = match svc.spec.session_affinity.as_str() {
        "ClientIP" => SessionAffinity::ClientIp {
            timeout: svc
                .spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_CLIENT_IP_TIMEOUT)
                .clamp(Duration::from_secs(1), MAX_CLIENT_IP_TIMEOUT),
        },
        _ => SessionAffinity::None,
    };
    // Validated by the API server; a value it would refuse (written before the check) is
    // ignored for the node's default rather than leaving the Service unprogrammed.
    let maglev_size = svc
        .metadata
        .annotations
        .get(skiff_api::kinds::MAGLEV_TABLE_SIZE_ANNOTATION)
        .and_then(|v| skiff_api::kinds::maglev_table_size(v).ok());
    let node_ports = matches!(svc.spec.type_.as_str(), "NodePort" | "LoadBalancer");
    let internal_local = svc.spec.internal_traffic_policy == "Local";
    let external_local = node_ports && svc.spec.external_traffic_policy == "Local";
    for p in &svc.spec.ports {
        let Some(protocol) = protocol(&p.protocol) else {
            continue;
        };
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let node_port = u16::try_from(p.node_port)
            .ok()
            .filter(|&n| node_ports && n != 0);
        // (address, ready, on this node) of every endpoint of this port.
        let mut endpoints: Vec<(SocketAddrV4, bool, bool)> = Vec::new();
        for subset in ep.map(|e| e.subsets.as_slice()).unwrap_or_default() {
            let Some(ep_port) = subset
                .ports
                .iter()
                .find(|ep| ep.name == p.name && self::protocol(&ep.protocol) == Some(protocol))
                .and_then(|ep| u16::try_from(ep.port).ok())
            else {
                continue;
            };
            for (list, ready) in [
                (&subset.addresses, true),
                (&subset.not_ready_addresses, false),
            ] {
                for a in list {
                    let Ok(ip) = a.ip.parse::<Ipv4Addr>() else {
                        continue;
                    };
                    let local = a.node_name.as_deref() == Some(node);
                    endpoints.push((SocketAddrV4::new(ip, ep_port), ready, local));
                }
            }
        }
        let backends = |local_only: bool, node_port: Option<u16>| -> Backends {
            let mut want = Backends::default()
                .with_affinity(affinity)
                .with_node_port(node_port)
                .with_maglev_size(maglev_size);
            for &(addr, ready, local) in &endpoints {
                if ready && (local || !local_only) {
                    want.active.push(addr);
                } else {
                    want.draining.push(addr);
                }
            }
            for list in [&mut want.active, &mut want.draining] {
                list.sort();
                list.dedup();
            }
            // An address listed as both (two subsets) takes new connections.
            let active = want.active.clone();
            want.draining.retain(|a| !active.contains(a));
            want
        };
        let cluster_ip = ServicePort::new(vip, port, protocol);
        match node_port {
            Some(np) if external_local != internal_local => {
                out.insert(cluster_ip, backends(internal_local, None));
                out.insert(
                    ServicePort::node_port_entry(np, protocol),
                    backends(external_local, Some(np)),
                );
            }
            _ => {
                out.insert(cluster_ip, backends(internal_local, node_port));
            }
        }
    }
    out
}

fn protocol(s: &str) -> Option<Protocol> {
    match s {
        "" | "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

/// The sync loop's state (on its own thread: map writes are system calls).
struct Sync {
    table: ServiceTable<PinnedMaps>,
    ct: PinnedMaps,
    /// This node's name (for the traffic policies).
    node: String,
    services: Informer<Service>,
    endpoints: Informer<Endpoints>,
    /// What is programmed, per Service key.
    programmed: HashMap<String, BTreeMap<ServicePort, Backends>>,
    /// The Endpoints revision whose programming latency was last measured, per key.
    measured: HashMap<String, i64>,
    metrics: Arc<Metrics>,
}

impl Sync {
    /// Programs changed Services as their keys come, everything at each resync, until the
    /// queue is shut down. Runs on its own thread; `runtime` only waits for the queue.
    fn run(
        mut self,
        runtime: &tokio::runtime::Handle,
        queue: &Queue,
        ready: watch::Sender<bool>,
        resync: Duration,
    ) {
        self.resync(false);
        let _ = ready.send(true);
        tracing::info!(services = self.table.len(), "service proxy in sync");
        let mut last_resync = Instant::now();
        loop {
            // A steady stream of changes must not put off the resync (nor the purge below):
            // the wait for a key ends at once when one is ready, so look at the clock first.
            let wait = resync.saturating_sub(last_resync.elapsed());
            if wait.is_zero() {
                self.resync(true);
                last_resync = Instant::now();
                self.collect_conntrack();
                continue;
            }
            // The timer is made inside the runtime: a timeout built on this plain thread
            // would find no reactor.
            match runtime.block_on(async { tokio::time::timeout(wait, queue.next()).await }) {
                Ok(Some(first)) => {
                    // The keys waiting now (not those that come while they are applied), then
                    // the conntrack purge once for them all.
                    let batch = queue.len();
                    self.apply(&first);
                    queue.done(&first);
                    for _ in 0..batch {
                        if queue.is_empty() {
                            break;
                        }
                        let Some(k) = runtime.block_on(queue.next()) else {
                            return;
                        };
                        self.apply(&k);
                        queue.done(&k);
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    self.resync(true);
                    last_resync = Instant::now();
                }
            }
            self.collect_conntrack();
        }
    }

    /// Programs one Service's entries: only the ports whose backends changed are written.
    fn apply(&mut self, key: &str) {
        let svc = self.services.get_key(key);
        let ep = self.endpoints.get_key(key);
        let want = svc
            .as_deref()
            .map(|s| desired(s, ep.as_deref(), &self.node))
            .unwrap_or_default();
        let old = self.programmed.remove(key).unwrap_or_default();
        let mut now = BTreeMap::new();
        for sp in old.keys().filter(|sp| !want.contains_key(*sp)) {
            if let Err(e) = self.table.delete(sp) {
                self.metrics.errors.inc();
                tracing::warn!(service = %key, port = %sp, error = %e, "deleting a service port");
            }
        }
        // Ports that give up or keep their NodePort first: a NodePort moving between the
        // ClusterIP's entry and its own (a traffic policy change) is released before it is
        // claimed; the NodePort refuses nothing in between, it passes to the node's stack.
        let (releasing, claiming): (Vec<_>, Vec<_>) = want.into_iter().partition(|(sp, w)| {
            w.node_port.is_none() || old.get(sp).and_then(|o| o.node_port) == w.node_port
        });
        for (sp, w) in releasing.into_iter().chain(claiming) {
            if old.get(&sp) == Some(&w) {
                now.insert(sp, w);
                continue;
            }
            match self.table.upsert_with(sp, &w) {
                Ok(_) => {
                    now.insert(sp, w);
                }
                Err(e) => {
                    // Not recorded as programmed: the next change or resync tries again.
                    self.metrics.errors.inc();
                    tracing::warn!(service = %key, port = %sp, error = %e, "programming a service port");
                }
            }
        }
        if !now.is_empty() {
            self.programmed.insert(key.to_owned(), now);
        }
        self.metrics.changes.inc();
        self.metrics
            .service_ports
            .set(gauge(self.table.len() as u64));
        if let Some(ep) = ep {
            self.measure(key, &ep);
        } else {
            self.measured.remove(key);
        }
    }

    /// Observes the programming latency of an Endpoints revision not measured before.
    fn measure(&mut self, key: &str, ep: &Endpoints) {
        let revision = ep.metadata.revision();
        if self.measured.get(key) == Some(&revision) {
            return;
        }
        self.measured.insert(key.to_owned(), revision);
        let Some(at) = ep
            .metadata
            .annotations
            .get(ENDPOINTS_TRIGGER_TIME)
            .and_then(|t| time::parse(t))
        else {
            return;
        };
        if let Ok(d) = SystemTime::now().duration_since(at) {
            self.metrics.programming.observe(d.as_secs_f64());
        }
    }

    /// Rewrites everything from the informers' caches after re-reading the maps (repairing
    /// entries changed behind the agent's back when `reread`).
    fn resync(&mut self, reread: bool) {
        if reread && let Err(e) = self.table.resync() {
            self.metrics.errors.inc();
            tracing::warn!(error = %e, "re-reading the service maps");
            return;
        }
        let mut per_key: HashMap<String, BTreeMap<ServicePort, Backends>> = HashMap::new();
        let mut flat: BTreeMap<ServicePort, Backends> = BTreeMap::new();
        for svc in self.services.list() {
            let k = key(&svc.metadata);
            let ep = self.endpoints.get_key(&k);
            let want = desired(&svc, ep.as_deref(), &self.node);
            for (sp, w) in &want {
                flat.insert(*sp, w.clone());
            }
            if !want.is_empty() {
                per_key.insert(k, want);
            }
        }
        let report = self.table.sync_with(&flat);
        for (sp, e) in &report.failed {
            self.metrics.errors.inc();
            tracing::warn!(port = %sp, error = %e, "programming a service port");
            for want in per_key.values_mut() {
                want.remove(sp);
            }
        }
        let repaired = report.created + report.updated + report.deleted;
        if reread && repaired > 0 {
            tracing::info!(
                created = report.created,
                updated = report.updated,
                deleted = report.deleted,
                "resync repaired the service maps"
            );
        }
        self.metrics.repairs.inc_by(repaired as u64);
        self.metrics.resyncs.inc();
        self.metrics
            .service_ports
            .set(gauge(self.table.len() as u64));
        self.programmed = per_key;
    }

    /// Conntrack entries of deleted services go once their IDs are quarantined.
    fn collect_conntrack(&mut self) {
        if self.table.quarantined().is_empty() {
            return;
        }
        let live: BTreeSet<u32> = self
            .table
            .service_ports()
            .filter_map(|sp| self.table.service_id(sp))
            .collect();
        match self.ct.purge_conntrack(&live) {
            Ok(n) => {
                self.table.release_quarantined();
                if n > 0 {
                    tracing::debug!(entries = n, "purged conntrack entries of deleted services");
                }
            }
            Err(e) => tracing::warn!(error = %e, "purging conntrack entries of deleted services"),
        }
    }
}

/// Runs the conntrack collector and records what it found, with the datapath's counters.
fn collect_expired(collector: &Collector, maps: &PinnedMaps, metrics: &Metrics) {
    let run = match collector.run(maps) {
        Ok(run) => run,
        Err(e) => {
            tracing::warn!(error = %e, "running the conntrack collector");
            return;
        }
    };
    let read =
        || -> datapath::Result<_> { Ok((maps.ct_events()?, maps.drops()?, maps.ct_capacities()?)) };
    match read() {
        Ok((events, drops, capacities)) => {
            metrics.conntrack.record(&run, &events, &drops, capacities)
        }
        Err(e) => tracing::warn!(error = %e, "reading the datapath's counters"),
    }
}

/// Serves `GET /metrics` (Prometheus text), `GET /healthz` and `GET /readyz` on `listener` until
/// dropped. The listener starts once the node is registered and has its pod CIDR; `/readyz`
/// then says ready once the service proxy (when it runs) has programmed every Service once,
/// the moment from which pods are attached and NodePorts served.
pub async fn serve_metrics(listener: tokio::net::TcpListener, proxy: Option<Arc<Proxy>>) {
    let readiness = Readiness::default();
    let metrics = match proxy {
        Some(p) => {
            let m = p.metrics.clone();
            readiness.add("service-proxy-synced", move || p.is_ready());
            m
        }
        None => Arc::default(),
    };
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    skiff_runtime::server::serve(listener, Arc::new(registry), readiness).await;
}

/// A count as a gauge's value.
fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The proxy's Prometheus metrics (handles: the registry shares their values).
#[derive(Debug)]
pub struct Metrics {
    pub programming: Histogram,
    pub conntrack: ConntrackMetrics,
    pub changes: Counter,
    pub resyncs: Counter,
    pub repairs: Counter,
    pub errors: Counter,
    pub service_ports: Gauge,
    /// The sync thread's work queue (`workqueue_*{name="service_proxy"}`).
    pub queue: QueueMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            programming: skiff_runtime::metrics::latency_histogram(),
            conntrack: ConntrackMetrics::default(),
            changes: Counter::default(),
            resyncs: Counter::default(),
            repairs: Counter::default(),
            errors: Counter::default(),
            service_ports: Gauge::default(),
            queue: QueueMetrics::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "skiff_proxy_programming_seconds",
            "Time from the Endpoints controller writing a change to this node's datapath maps holding it",
            self.programming.clone(),
        );
        registry.register(
            "skiff_proxy_service_changes",
            "Service or Endpoints changes applied to the datapath",
            self.changes.clone(),
        );
        registry.register(
            "skiff_proxy_resyncs",
            "Periodic re-reads of the datapath maps against the API's state",
            self.resyncs.clone(),
        );
        registry.register(
            "skiff_proxy_resync_repairs",
            "Service ports a resync had to create, update or delete (drift)",
            self.repairs.clone(),
        );
        registry.register(
            "skiff_proxy_errors",
            "Service ports that could not be programmed or removed",
            self.errors.clone(),
        );
        registry.register(
            "skiff_proxy_service_ports",
            "Service ports programmed in the datapath",
            self.service_ports.clone(),
        );
        self.conntrack.register(registry);
        self.queue.register(registry);
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        skiff_runtime::metrics::encode(&registry)
    }
}

/// The conntrack tables, by table and, in the established one, by state.
const ENTRIES: [(&str, &str); 4] = [
    ("established", "tcp"),
    ("established", "tcp_closing"),
    ("established", "udp"),
    ("short-lived", "any"),
];
const TABLES: [&str; 2] = ["established", "short-lived"];

/// What the conntrack collector found, and the datapath's conntrack events.
#[derive(Debug)]
pub struct ConntrackMetrics {
    runs: Counter,
    seconds: Counter<f64, AtomicU64>,
    last_seconds: Gauge<f64, AtomicU64>,
    /// Table and state: [`ENTRIES`].
    entries: Family<[Label; 2], Gauge>,
    /// By table: [`TABLES`].
    capacity: Family<OneLabel, Gauge>,
    removed: Family<OneLabel, Counter>,
    /// The datapath's own counters (`CtEvent`, `DropReason`), as last read: they are set, not
    /// counted here.
    events: Family<OneLabel, Counter>,
    drops: Family<OneLabel, Counter>,
}

fn entries_label(table: &'static str, state: &'static str) -> [Label; 2] {
    [("table", table.into()), ("state", state.into())]
}

impl Default for ConntrackMetrics {
    /// Every series exists from the start, at 0.
    fn default() -> Self {
        let m = ConntrackMetrics {
            runs: Counter::default(),
            seconds: Counter::default(),
            last_seconds: Gauge::default(),
            entries: Family::default(),
            capacity: Family::default(),
            removed: Family::default(),
            events: Family::default(),
            drops: Family::default(),
        };
        for (table, state) in ENTRIES {
            m.entries.get_or_create_owned(&entries_label(table, state));
        }
        for table in TABLES {
            m.capacity.get_or_create_owned(&label("table", table));
            m.removed.get_or_create_owned(&label("table", table));
        }
        for e in CtEvent::ALL {
            m.events.get_or_create_owned(&label("event", e.name()));
        }
        for r in DropReason::ALL {
            m.drops.get_or_create_owned(&label("reason", r.name()));
        }
        m
    }
}

impl ConntrackMetrics {
    pub fn record(
        &self,
        run: &GcRun,
        events: &[(CtEvent, u64)],
        drops: &[(DropReason, u64)],
        (established_capacity, transient_capacity): (u32, u32),
    ) {
        let took = run.took.as_secs_f64();
        self.runs.inc();
        self.seconds.inc_by(took);
        self.last_seconds.set(took);
        let s = &run.stats;
        for ((table, state), n) in ENTRIES.into_iter().zip([
            s.established_tcp,
            s.established_tcp_closing,
            s.established_udp,
            s.transient,
        ]) {
            self.entries
                .get_or_create(&entries_label(table, state))
                .set(gauge(n));
        }
        for (table, cap) in TABLES
            .into_iter()
            .zip([established_capacity, transient_capacity])
        {
            self.capacity
                .get_or_create(&label("table", table))
                .set(i64::from(cap));
        }
        for (table, n) in TABLES
            .into_iter()
            .zip([s.removed_established, s.removed_transient])
        {
            self.removed.get_or_create(&label("table", table)).inc_by(n);
        }
        for (e, n) in events {
            mirror(&self.events, label("event", e.name()), *n);
        }
        for (r, n) in drops {
            mirror(&self.drops, label("reason", r.name()), *n);
        }
    }

    pub fn runs(&self) -> u64 {
        self.runs.get()
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "skiff_conntrack_gc_runs",
            "Runs of the conntrack collector",
            self.runs.clone(),
        );
        registry.register(
            "skiff_conntrack_gc_seconds",
            "Time spent in the conntrack collector",
            self.seconds.clone(),
        );
        registry.register(
            "skiff_conntrack_gc_last_duration_seconds",
            "Duration of the collector's last run",
            self.last_seconds.clone(),
        );
        registry.register(
            "skiff_conntrack_entries",
            "Conntrack entries (two per flow) after the collector's last run, by table and, in the established table, by state",
            self.entries.clone(),
        );
        registry.register(
            "skiff_conntrack_capacity",
            "Entries each conntrack table can hold",
            self.capacity.clone(),
        );
        registry.register(
            "skiff_conntrack_gc_removed",
            "Expired conntrack entries the collector removed, by table",
            self.removed.clone(),
        );
        registry.register(
            "skiff_conntrack_events",
            "Flows established, closed, left in the short-lived table because the established one was full, halves restored after an eviction, NodePort source ports reused",
            self.events.clone(),
        );
        registry.register(
            "skiff_datapath_drops",
            "Packets the datapath dropped or refused, by reason",
            self.drops.clone(),
        );
    }
}

/// Sets a counter to a total counted elsewhere (the datapath's per-CPU counters, summed).
fn mirror(family: &Family<OneLabel, Counter>, labels: OneLabel, total: u64) {
    family
        .get_or_create(&labels)
        .inner()
        .store(total, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use skiff_api::kinds::{
        EndpointAddress, EndpointPort, EndpointSubset, IntOrString, ServicePort as ApiPort,
        ServiceSpec,
    };
    use skiff_runtime::metrics::sample;

    use super::*;

    fn svc(ip: &str, ports: &[(&str, &str, i32)]) -> Service {
        Service {
            spec: ServiceSpec {
                cluster_ip: ip.into(),
                ports: ports
                    .iter()
                    .map(|(name, proto, port)| ApiPort {
                        name: (*name).into(),
                        protocol: (*proto).into(),
                        port: *port,
                        target_port: Some(IntOrString::Int(8080)),
                        ..ApiPort::default()
                    })
                    .collect(),
                ..ServiceSpec::default()
            },
            ..Service::default()
        }
    }

    fn addr(ip: &str) -> EndpointAddress {
        EndpointAddress {
            ip: ip.into(),
            ..EndpointAddress::default()
        }
    }

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn ports_are_matched_by_name_and_protocol_and_readiness_is_kept_apart() {
        let s = svc(
            "10.96.0.10",
            &[("http", "TCP", 80), ("dns", "UDP", 53), ("sctp", "SCTP", 9)],
        );
        let ep = Endpoints {
            subsets: vec![
                EndpointSubset {
                    addresses: vec![addr("10.244.1.5"), addr("10.244.0.3")],
                    not_ready_addresses: vec![addr("10.244.2.9")],
                    ports: vec![
                        EndpointPort {
                            name: "http".into(),
                            port: 8080,
                            protocol: "TCP".into(),
                        },
                        EndpointPort {
                            name: "dns".into(),
                            port: 5353,
                            protocol: "UDP".into(),
                        },
                    ],
                },
                EndpointSubset {
                    addresses: vec![addr("10.244.3.1")],
                    ports: vec![EndpointPort {
                        name: "http".into(),
                        port: 9090,
                        protocol: "TCP".into(),
                    }],
                    ..EndpointSubset::default()
                },
            ],
            ..Endpoints::default()
        };
        let d = desired(&s, Some(&ep), "node-a");
        let vip: Ipv4Addr = "10.96.0.10".parse().unwrap();
        assert_eq!(d.len(), 2, "SCTP is not served: {d:?}");
        assert_eq!(
            d[&ServicePort::new(vip, 80, Protocol::Tcp)],
            Backends::new(
                vec![
                    sa("10.244.0.3:8080"),
                    sa("10.244.1.5:8080"),
                    sa("10.244.3.1:9090")
                ],
                vec![sa("10.244.2.9:8080")],
            )
        );
        assert_eq!(
            d[&ServicePort::new(vip, 53, Protocol::Udp)].active,
            vec![sa("10.244.0.3:5353"), sa("10.244.1.5:5353")]
        );
    }

    #[test]
    fn a_service_without_endpoints_has_entries_without_backends_and_headless_has_none() {
        let s = svc("10.96.0.11", &[("", "", 80)]);
        let d = desired(&s, None, "node-a");
        assert_eq!(d.len(), 1);
        assert!(d.values().all(|w| w.active.is_empty()));
        assert!(desired(&svc("None", &[("", "", 80)]), None, "node-a").is_empty());
        assert!(desired(&svc("", &[("", "", 80)]), None, "node-a").is_empty());
    }

    #[test]
    fn client_ip_affinity_takes_the_timeout_or_kubernetes_default() {
        let mut s = svc("10.96.0.12", &[("", "", 80)]);
        let affinity = |s: &Service| desired(s, None, "node-a").values().next().unwrap().affinity;
        assert_eq!(affinity(&s), SessionAffinity::None);
        s.spec.session_affinity = "ClientIP".into();
        assert_eq!(
            affinity(&s),
            SessionAffinity::ClientIp {
                timeout: Duration::from_secs(10_800)
            }
        );
        s.spec.session_affinity_config = Some(skiff_api::kinds::SessionAffinityConfig {
            client_ip: Some(skiff_api::kinds::ClientIpConfig {
                timeout_seconds: Some(30),
            }),
        });
        assert_eq!(
            affinity(&s),
            SessionAffinity::ClientIp {
                timeout: Duration::from_secs(30)
            }
        );
    }

    /// A NodePort Service on port 80 (NodePort 30080) with two ready endpoints on node-a, one
    /// on node-b, and a not-ready one on node-a.
    fn node_port_service(external: &str, internal: &str) -> (Service, Endpoints) {
        let mut s = svc("10.96.0.20", &[("", "TCP", 80)]);
        s.spec.type_ = "NodePort".into();
        s.spec.ports[0].node_port = 30080;
        s.spec.external_traffic_policy = external.into();
        s.spec.internal_traffic_policy = internal.into();
        let on = |ip: &str, node: &str| EndpointAddress {
            node_name: Some(node.into()),
            ..addr(ip)
        };
        let ep = Endpoints {
            subsets: vec![EndpointSubset {
                addresses: vec![
                    on("10.244.0.5", "node-a"),
                    on("10.244.0.6", "node-a"),
                    on("10.244.1.5", "node-b"),
                ],
                not_ready_addresses: vec![on("10.244.0.9", "node-a")],
                ports: vec![EndpointPort {
                    port: 8080,
                    protocol: "TCP".into(),
                    ..EndpointPort::default()
                }],
            }],
            ..Endpoints::default()
        };
        (s, ep)
    }

    /// (ClusterIP's active backends, its NodePort, the NodePort's own entry's active backends).
    fn programmed_for(
        external: &str,
        internal: &str,
        node: &str,
    ) -> (Vec<SocketAddrV4>, Option<u16>, Option<Vec<SocketAddrV4>>) {
        let (s, ep) = node_port_service(external, internal);
        let d = desired(&s, Some(&ep), node);
        let cluster = &d[&ServicePort::new("10.96.0.20".parse().unwrap(), 80, Protocol::Tcp)];
        let own = d.get(&ServicePort::node_port_entry(30080, Protocol::Tcp));
        if let Some(own) = own {
            assert_eq!(own.node_port, Some(30080));
        }
        assert_eq!(d.len(), 1 + own.is_some() as usize, "{d:?}");
        (
            cluster.active.clone(),
            cluster.node_port,
            own.map(|o| o.active.clone()),
        )
    }

    #[test]
    fn each_traffic_policy_combination_gives_each_port_its_backends_on_nodes_with_and_without_local_endpoints()
     {
        let all = vec![
            sa("10.244.0.5:8080"),
            sa("10.244.0.6:8080"),
            sa("10.244.1.5:8080"),
        ];
        let a = vec![sa("10.244.0.5:8080"), sa("10.244.0.6:8080")];
        let b = vec![sa("10.244.1.5:8080")];
        // Cluster/Cluster (and the defaults): one entry carrying the NodePort, every endpoint.
        for (ext, int) in [("", ""), ("Cluster", "Cluster")] {
            for node in ["node-a", "node-b", "node-c"] {
                assert_eq!(
                    programmed_for(ext, int, node),
                    (all.clone(), Some(30080), None)
                );
            }
        }
        // External Local: the ClusterIP keeps every endpoint; the NodePort has its own entry
        // with this node's ready endpoints only (none on node-c).
        assert_eq!(
            programmed_for("Local", "Cluster", "node-a"),
            (all.clone(), None, Some(a.clone()))
        );
        assert_eq!(
            programmed_for("Local", "", "node-b"),
            (all.clone(), None, Some(b.clone()))
        );
        assert_eq!(
            programmed_for("Local", "Cluster", "node-c"),
            (all.clone(), None, Some(vec![]))
        );
        // Internal Local: the ClusterIP has this node's endpoints; the NodePort (external
        // Cluster) its own entry with every endpoint.
        assert_eq!(
            programmed_for("Cluster", "Local", "node-a"),
            (a.clone(), None, Some(all.clone()))
        );
        assert_eq!(
            programmed_for("", "Local", "node-c"),
            (vec![], None, Some(all.clone()))
        );
        // Both Local: the same set, one entry carrying the NodePort.
        assert_eq!(
            programmed_for("Local", "Local", "node-b"),
            (b.clone(), Some(30080), None)
        );
        assert_eq!(
            programmed_for("Local", "Local", "node-c"),
            (vec![], Some(30080), None)
        );
    }

    #[test]
    fn under_a_local_policy_other_nodes_endpoints_are_draining_so_their_flows_go_on() {
        let (s, ep) = node_port_service("Cluster", "Local");
        let d = desired(&s, Some(&ep), "node-a");
        let cluster = &d[&ServicePort::new("10.96.0.20".parse().unwrap(), 80, Protocol::Tcp)];
        assert_eq!(
            cluster.draining,
            vec![sa("10.244.0.9:8080"), sa("10.244.1.5:8080")]
        );
    }

    #[test]
    fn external_traffic_policy_is_ignored_without_a_node_port_and_internal_local_applies_to_cluster_ip()
     {
        let (mut s, ep) = node_port_service("Local", "Local");
        s.spec.type_ = "ClusterIP".into();
        let d = desired(&s, Some(&ep), "node-b");
        assert_eq!(d.len(), 1, "{d:?}");
        let only = d.values().next().unwrap();
        assert_eq!(only.node_port, None);
        assert_eq!(only.active, vec![sa("10.244.1.5:8080")]);
    }

    /// Counts the map writes each policy change makes through the real table, on fake maps.
    #[test]
    fn a_policy_change_reprograms_only_the_entries_it_touches() {
        use crate::datapath::testing::{CheckingMaps, limits};
        let mut table = ServiceTable::adopt(CheckingMaps::default(), limits()).unwrap();
        let cluster_ip = ServicePort::new("10.96.0.20".parse().unwrap(), 80, Protocol::Tcp);
        let own = ServicePort::node_port_entry(30080, Protocol::Tcp);
        let program = |table: &mut ServiceTable<CheckingMaps>, ext: &str, int: &str| {
            let (s, ep) = node_port_service(ext, int);
            let report = table.sync_with(&desired(&s, Some(&ep), "node-a"));
            assert!(report.failed.is_empty(), "{:?}", report.failed);
            report
        };
        program(&mut table, "Cluster", "Cluster");
        let id = table.service_id(&cluster_ip).unwrap();
        assert_eq!(table.node_port(&cluster_ip), Some(30080));

        // External Local: the NodePort moves to an entry of its own; the ClusterIP's backends,
        // ID and slots stay as they were (only its NodePort goes).
        let before = table.maps().writes();
        let r = program(&mut table, "Local", "Cluster");
        assert_eq!((r.created, r.updated, r.deleted), (1, 1, 0));
        assert_eq!(table.service_id(&cluster_ip), Some(id));
        assert_eq!(table.backends(&cluster_ip).unwrap().len(), 3);
        assert_eq!(table.node_port(&cluster_ip), None);
        assert_eq!(table.node_port(&own), Some(30080));
        assert_eq!(
            table.backends(&own).unwrap(),
            vec![sa("10.244.0.5:8080"), sa("10.244.0.6:8080")]
        );
        // Two NodePort writes (release, claim), and the new entry: marker, 2 backends, 2
        // slots, its Maglev table (one chunk at the tests' size), its entry (plus its
        // counters). Nothing of the ClusterIP's backends, slots or table.
        let writes = table.maps().writes() - before;
        assert_eq!(writes, 2 + 1 + 2 + 2 + 1 + 1, "writes");

        // The same again: nothing.
        let before = table.maps().writes();
        let r = program(&mut table, "Local", "Cluster");
        assert_eq!((r.created, r.updated, r.deleted, r.unchanged), (0, 0, 0, 2));
        assert_eq!(table.maps().writes(), before);

        // Internal Local as well: both Local share one set, so the NodePort's entry goes and
        // the ClusterIP takes the NodePort back, now with this node's backends only.
        let r = program(&mut table, "Local", "Local");
        assert_eq!((r.created, r.updated, r.deleted), (0, 1, 1));
        assert_eq!(table.service_id(&own), None);
        assert_eq!(table.node_port(&cluster_ip), Some(30080));
        assert_eq!(table.service_id(&cluster_ip), Some(id));
        assert_eq!(
            table.backends(&cluster_ip).unwrap(),
            vec![sa("10.244.0.5:8080"), sa("10.244.0.6:8080")]
        );
        // node-b's backend drains on the ClusterIP (its flows go on).
        assert_eq!(
            table.draining(&cluster_ip).unwrap(),
            vec![sa("10.244.1.5:8080")]
        );

        // Back to Cluster/Cluster.
        let r = program(&mut table, "Cluster", "Cluster");
        assert_eq!((r.created, r.updated, r.deleted), (0, 1, 0));
        assert_eq!(table.backends(&cluster_ip).unwrap().len(), 3);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn the_programming_histogram_counts_into_every_bucket_at_or_above_the_value() {
        let m = Metrics::default();
        m.programming
            .observe(Duration::from_micros(700).as_secs_f64());
        m.programming
            .observe(Duration::from_millis(30).as_secs_f64());
        let out = m.render();
        let name = "skiff_proxy_programming_seconds";
        assert!(out.contains(&format!("# TYPE {name} histogram\n")), "{out}");
        for (le, n) in [
            ("0.0005", 0.0),
            ("0.001", 1.0),
            ("0.05", 2.0),
            ("10", 2.0),
            ("+Inf", 2.0),
        ] {
            assert_eq!(
                sample(&out, &format!("{name}_bucket{{le=\"{le}\"}}")),
                Some(n),
                "{out}"
            );
        }
        assert_eq!(sample(&out, &format!("{name}_count")), Some(2.0));
        let sum = sample(&out, &format!("{name}_sum")).unwrap();
        assert!((sum - 0.0307).abs() < 1e-9, "{sum}");
        let buckets = out
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket")))
            .count();
        assert_eq!(buckets, 15, "{out}");
    }

    #[test]
    fn every_proxy_and_conntrack_series_is_there_from_the_start_with_its_type() {
        let m = Metrics::default();
        m.changes.inc();
        m.service_ports.set(7);
        // The sync thread's queue, as `Proxy::start` makes it.
        let _queue = Queue::default().with_metrics("service_proxy", &m.queue);
        let out = m.render();
        for (series, want) in [
            ("skiff_proxy_service_changes_total", 1.0),
            ("skiff_proxy_resyncs_total", 0.0),
            ("skiff_proxy_resync_repairs_total", 0.0),
            ("skiff_proxy_errors_total", 0.0),
            ("skiff_proxy_service_ports", 7.0),
            ("skiff_conntrack_gc_runs_total", 0.0),
            ("skiff_conntrack_gc_seconds_total", 0.0),
            ("skiff_conntrack_gc_last_duration_seconds", 0.0),
            (
                "skiff_conntrack_entries{table=\"established\",state=\"tcp_closing\"}",
                0.0,
            ),
            (
                "skiff_conntrack_entries{table=\"short-lived\",state=\"any\"}",
                0.0,
            ),
            ("skiff_conntrack_capacity{table=\"established\"}", 0.0),
            (
                "skiff_conntrack_gc_removed_total{table=\"short-lived\"}",
                0.0,
            ),
            ("skiff_conntrack_events_total{event=\"established\"}", 0.0),
            ("skiff_conntrack_events_total{event=\"closed\"}", 0.0),
        ] {
            assert_eq!(sample(&out, series), Some(want), "{series} in\n{out}");
        }
        for r in DropReason::ALL {
            let series = format!("skiff_datapath_drops_total{{reason=\"{}\"}}", r.name());
            assert_eq!(sample(&out, &series), Some(0.0), "{series} in\n{out}");
        }
        for (name, kind) in [
            ("skiff_proxy_service_changes_total", "counter"),
            ("skiff_proxy_service_ports", "gauge"),
            ("skiff_conntrack_gc_seconds_total", "counter"),
            ("skiff_conntrack_gc_last_duration_seconds", "gauge"),
            ("skiff_conntrack_entries", "gauge"),
            ("skiff_conntrack_capacity", "gauge"),
            ("skiff_conntrack_gc_removed_total", "counter"),
            ("skiff_conntrack_events_total", "counter"),
            ("skiff_datapath_drops_total", "counter"),
            ("workqueue_depth", "gauge"),
            ("workqueue_adds_total", "counter"),
        ] {
            assert!(
                out.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} in\n{out}"
            );
        }
    }

    #[test]
    fn a_collector_run_sets_the_tables_and_mirrors_the_datapath_counters() {
        let m = ConntrackMetrics::default();
        let run = GcRun {
            stats: skiff_common::GcStats {
                established_tcp: 10,
                established_tcp_closing: 2,
                established_udp: 4,
                transient: 6,
                removed_established: 3,
                removed_transient: 5,
                ..Default::default()
            },
            took: Duration::from_millis(250),
        };
        let events = [(CtEvent::ALL[0], 40)];
        let drops = [(DropReason::ALL[0], 9)];
        m.record(&run, &events, &drops, (1000, 500));
        // The datapath's counters are totals: a second reading replaces the first.
        m.record(&run, &[(CtEvent::ALL[0], 41)], &drops, (1000, 500));
        let mut r = Registry::default();
        m.register(&mut r);
        let out = skiff_runtime::metrics::encode(&r);
        for (series, want) in [
            ("skiff_conntrack_gc_runs_total".to_owned(), 2.0),
            ("skiff_conntrack_gc_seconds_total".to_owned(), 0.5),
            ("skiff_conntrack_gc_last_duration_seconds".to_owned(), 0.25),
            (
                "skiff_conntrack_entries{table=\"established\",state=\"tcp\"}".to_owned(),
                10.0,
            ),
            (
                "skiff_conntrack_entries{table=\"short-lived\",state=\"any\"}".to_owned(),
                6.0,
            ),
            (
                "skiff_conntrack_capacity{table=\"short-lived\"}".to_owned(),
                500.0,
            ),
            (
                "skiff_conntrack_gc_removed_total{table=\"established\"}".to_owned(),
                6.0,
            ),
            (
                format!(
                    "skiff_conntrack_events_total{{event=\"{}\"}}",
                    CtEvent::ALL[0].name()
                ),
                41.0,
            ),
            (
                format!(
                    "skiff_datapath_drops_total{{reason=\"{}\"}}",
                    DropReason::ALL[0].name()
                ),
                9.0,
            ),
        ] {
            assert_eq!(sample(&out, &series), Some(want), "{series} in\n{out}");
        }
        assert_eq!(m.runs(), 2);
    }
}
