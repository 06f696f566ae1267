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
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use skiff_api::{
    kinds::{ENDPOINTS_TRIGGER_TIME, Endpoints, Service},
    meta::time,
};
use skiff_common::{CtEvent, DropReason};
use skiff_runtime::informer::{Event, Informer};
use tokio::sync::watch;

use crate::datapath::{
    self, Backends, Collector, DEFAULT_CLIENT_IP_TIMEOUT, Datapath, DatapathConfig, GcRun,
    MAX_CLIENT_IP_TIMEOUT, PinLayout, PinnedMaps, Protocol, ServicePort, ServiceTable,
    SessionAffinity,
};

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
                let dp = Datapath::load(dp_config).context("loading the eBPF datapath")?;
                let table = dp.service_table().context("adopting the service maps")?;
                let ct = dp.maps()?;
                let gc = (dp.collector()?, dp.maps()?);
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
        let (tx, rx) = mpsc::channel::<String>();
        let t = tx.clone();
        services.on_event(move |ev: &Event<Service>| {
            let _ = t.send(key(&ev.object().metadata));
        });
        endpoints.on_event(move |ev: &Event<Endpoints>| {
            let _ = tx.send(key(&ev.object().metadata));
        });
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
            .context("starting the conntrack collector thread")?;
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
                sync.run(rx, ready_tx, resync);
            })
            .context("starting the service proxy thread")?;
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
            .with_context(|| format!("attaching the NodePort programs to the uplink {uplink}"))?;
            tracing::info!(%uplink, "serving NodePorts on the uplink");
        }
        Ok(proxy)
    }

    async fn wait_ready(&self) -> Result<()> {
        let mut ready = self.ready.clone();
        ready
            .wait_for(|r| *r)
            .await
            .context("the service proxy stopped")?;
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
                .with_context(|| format!("attaching the service datapath to {iface}"))
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
            .context("detaching the service datapath")
    }

    /// Removes the pinned links of interfaces that no longer exist or are not in `keep` (pods
    /// deleted while no agent ran).
    pub async fn detach_all_except(&self, keep: &BTreeSet<String>) -> Result<()> {
        let layout = self.layout.clone();
        let keep = keep.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
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
    fn run(mut self, rx: mpsc::Receiver<String>, ready: watch::Sender<bool>, resync: Duration) {
        self.resync(false);
        let _ = ready.send(true);
        tracing::info!(services = self.table.len(), "service proxy in sync");
        let mut last_resync = Instant::now();
        loop {
            let wait = resync.saturating_sub(last_resync.elapsed());
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut keys = BTreeSet::from([first]);
                    keys.extend(rx.try_iter());
                    for k in keys {
                        self.apply(&k);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.resync(true);
                    last_resync = Instant::now();
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
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
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
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
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(service = %key, port = %sp, error = %e, "programming a service port");
                }
            }
        }
        if !now.is_empty() {
            self.programmed.insert(key.to_owned(), now);
        }
        self.metrics.changes.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .service_ports
            .store(self.table.len() as u64, Ordering::Relaxed);
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
            self.metrics.programming.observe(d);
        }
    }

    /// Rewrites everything from the informers' caches after re-reading the maps (repairing
    /// entries changed behind the agent's back when `reread`).
    fn resync(&mut self, reread: bool) {
        if reread && let Err(e) = self.table.resync() {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
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
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
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
        self.metrics
            .repairs
            .fetch_add(repaired as u64, Ordering::Relaxed);
        self.metrics.resyncs.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .service_ports
            .store(self.table.len() as u64, Ordering::Relaxed);
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

/// Serves `GET /metrics` (Prometheus text) and `GET /healthz` on `listener` until dropped.
pub async fn serve_metrics(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // The request head; the body (there is none for GET) is not read.
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf[len..])).await
                {
                    Ok(Ok(n)) if n > 0 => len += n,
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.render()),
                "/healthz" => ("200 OK", "ok\n".to_owned()),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        });
    }
}

/// The proxy's Prometheus metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub programming: Histogram,
    pub conntrack: ConntrackMetrics,
    pub changes: AtomicU64,
    pub resyncs: AtomicU64,
    pub repairs: AtomicU64,
    pub errors: AtomicU64,
    pub service_ports: AtomicU64,
}

impl Metrics {
    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.programming.render(
            &mut out,
            "skiff_proxy_programming_seconds",
            "Time from the Endpoints controller writing a change to this node's datapath maps holding it.",
        );
        for (name, help, kind, v) in [
            (
                "skiff_proxy_service_changes_total",
                "Service or Endpoints changes applied to the datapath.",
                "counter",
                &self.changes,
            ),
            (
                "skiff_proxy_resyncs_total",
                "Periodic re-reads of the datapath maps against the API's state.",
                "counter",
                &self.resyncs,
            ),
            (
                "skiff_proxy_resync_repairs_total",
                "Service ports a resync had to create, update or delete (drift).",
                "counter",
                &self.repairs,
            ),
            (
                "skiff_proxy_errors_total",
                "Service ports that could not be programmed or removed.",
                "counter",
                &self.errors,
            ),
            (
                "skiff_proxy_service_ports",
                "Service ports programmed in the datapath.",
                "gauge",
                &self.service_ports,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        self.conntrack.render(&mut out);
        out
    }
}

/// What the conntrack collector found, and the datapath's conntrack events.
#[derive(Debug, Default)]
pub struct ConntrackMetrics {
    runs: AtomicU64,
    micros_total: AtomicU64,
    last_micros: AtomicU64,
    transient: AtomicU64,
    removed_established: AtomicU64,
    removed_transient: AtomicU64,
    established_tcp: AtomicU64,
    established_tcp_closing: AtomicU64,
    established_udp: AtomicU64,
    established_capacity: AtomicU64,
    transient_capacity: AtomicU64,
    /// The datapath's counters (`CtEvent`, `DropReason`), as last read.
    events: [AtomicU64; CtEvent::COUNT as usize],
    drops: [AtomicU64; DropReason::COUNT as usize],
}

impl ConntrackMetrics {
    pub fn record(
        &self,
        run: &GcRun,
        events: &[(CtEvent, u64)],
        drops: &[(DropReason, u64)],
        (established_capacity, transient_capacity): (u32, u32),
    ) {
        let micros = run.took.as_micros() as u64;
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.micros_total.fetch_add(micros, Ordering::Relaxed);
        self.last_micros.store(micros, Ordering::Relaxed);
        self.transient.store(run.stats.transient, Ordering::Relaxed);
        self.removed_established
            .fetch_add(run.stats.removed_established, Ordering::Relaxed);
        self.removed_transient
            .fetch_add(run.stats.removed_transient, Ordering::Relaxed);
        for (e, n) in events {
            self.events[*e as usize].store(*n, Ordering::Relaxed);
        }
        for (r, n) in drops {
            self.drops[*r as usize].store(*n, Ordering::Relaxed);
        }
        let s = &run.stats;
        for (a, v) in [
            (&self.established_tcp, s.established_tcp),
            (&self.established_tcp_closing, s.established_tcp_closing),
            (&self.established_udp, s.established_udp),
            (&self.established_capacity, established_capacity.into()),
            (&self.transient_capacity, transient_capacity.into()),
        ] {
            a.store(v, Ordering::Relaxed);
        }
    }

    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "# HELP skiff_conntrack_gc_runs_total Runs of the conntrack collector.\n\
             # TYPE skiff_conntrack_gc_runs_total counter\n\
             skiff_conntrack_gc_runs_total {}\n\
             # HELP skiff_conntrack_gc_seconds_total Time spent in the conntrack collector.\n\
             # TYPE skiff_conntrack_gc_seconds_total counter\n\
             skiff_conntrack_gc_seconds_total {}\n\
             # HELP skiff_conntrack_gc_last_duration_seconds Duration of the collector's last run.\n\
             # TYPE skiff_conntrack_gc_last_duration_seconds gauge\n\
             skiff_conntrack_gc_last_duration_seconds {}\n\
             # HELP skiff_conntrack_entries Conntrack entries (two per flow) after the collector's last run, by table and, in the established table, by state.\n\
             # TYPE skiff_conntrack_entries gauge\n\
             skiff_conntrack_entries{{table=\"established\",state=\"tcp\"}} {}\n\
             skiff_conntrack_entries{{table=\"established\",state=\"tcp_closing\"}} {}\n\
             skiff_conntrack_entries{{table=\"established\",state=\"udp\"}} {}\n\
             skiff_conntrack_entries{{table=\"short-lived\",state=\"any\"}} {}\n\
             # HELP skiff_conntrack_capacity Entries each conntrack table can hold.\n\
             # TYPE skiff_conntrack_capacity gauge\n\
             skiff_conntrack_capacity{{table=\"established\"}} {}\n\
             skiff_conntrack_capacity{{table=\"short-lived\"}} {}\n\
             # HELP skiff_conntrack_gc_removed_total Expired conntrack entries the collector removed, by table.\n\
             # TYPE skiff_conntrack_gc_removed_total counter\n\
             skiff_conntrack_gc_removed_total{{table=\"established\"}} {}\n\
             skiff_conntrack_gc_removed_total{{table=\"short-lived\"}} {}\n\
             # HELP skiff_conntrack_events_total Flows established, closed, left in the short-lived table because the established one was full, halves restored after an eviction, NodePort source ports reused.\n\
             # TYPE skiff_conntrack_events_total counter",
            get(&self.runs),
            secs(&self.micros_total),
            secs(&self.last_micros),
            get(&self.established_tcp),
            get(&self.established_tcp_closing),
            get(&self.established_udp),
            get(&self.transient),
            get(&self.established_capacity),
            get(&self.transient_capacity),
            get(&self.removed_established),
            get(&self.removed_transient),
        );
        for e in CtEvent::ALL {
            let _ = writeln!(
                out,
                "skiff_conntrack_events_total{{event=\"{}\"}} {}",
                e.name(),
                get(&self.events[e as usize])
            );
        }
        let _ = writeln!(
            out,
            "# HELP skiff_datapath_drops_total Packets the datapath dropped or refused, by reason.\n\
             # TYPE skiff_datapath_drops_total counter"
        );
        for r in DropReason::ALL {
            let _ = writeln!(
                out,
                "skiff_datapath_drops_total{{reason=\"{}\"}} {}",
                r.name(),
                get(&self.drops[r as usize])
            );
        }
    }
}

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if s <= *le {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{le}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {count}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
}

#[cfg(test)]
mod tests {
    use skiff_api::kinds::{
        EndpointAddress, EndpointPort, EndpointSubset, IntOrString, ServicePort as ApiPort,
        ServiceSpec,
    };

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
    fn the_histogram_counts_into_every_bucket_at_or_above_the_value() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_millis(30));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("x_count 2\n"), "{out}");
    }
}
