//! Loads the eBPF object, adopting the maps an earlier run pinned, and attaches its programs to
//! interfaces through pinned TCX links, so forwarding outlives the agent process.

use std::{
    collections::{BTreeSet, hash_map::RandomState},
    fmt, fs,
    hash::{BuildHasher, Hasher},
    io,
    net::Ipv4Addr,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use serde::Serialize;
pub use skiff_common::CtTimeouts as Timeouts;
use skiff_common::{DatapathSettings, global_names, map_names, program_names, raw_addr, raw_mask};

use super::{
    Error, PinLayout, PinnedMaps, Result, ServiceTable,
    maps::{Capacities, check_pinned_shapes},
    pod_sources,
    table::Limits,
};

/// The object built by `cargo xtask build-ebpf`, located by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_OBJECT"));

/// The two tc hooks on a pod's host-side veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// TCX ingress: packets the pod sends (Service translation).
    Ingress,
    /// TCX egress: packets about to enter the pod (reverse translation of replies).
    Egress,
}

impl Direction {
    /// Attach order: reverse translation first, so there is never a moment where requests are
    /// translated but their replies are not.
    pub const ATTACH_ORDER: [Direction; 2] = [Direction::Egress, Direction::Ingress];
    /// Detach order: the reverse of attaching.
    pub const DETACH_ORDER: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub(crate) fn pin_suffix(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    pub(crate) fn from_pin_suffix(s: &str) -> Option<Direction> {
        match s {
            "ingress" => Some(Direction::Ingress),
            "egress" => Some(Direction::Egress),
            _ => None,
        }
    }

    fn program(self) -> &'static str {
        match self {
            Direction::Ingress => program_names::FROM_POD,
            Direction::Egress => program_names::TO_POD,
        }
    }

    /// The program of this hook on the node's uplink.
    fn uplink_program(self) -> &'static str {
        match self {
            Direction::Ingress => program_names::NODEPORT,
            Direction::Egress => program_names::NODEPORT_REPLY,
        }
    }

    fn tc_type(self) -> TcAttachType {
        match self {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.pin_suffix())
    }
}

/// What `attach` found and did for one hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachOutcome {
    /// No pinned link existed: a new TCX link was created and pinned.
    Attached,
    /// A pinned link was live: its program was replaced atomically (no packet saw no program).
    Replaced,
    /// A pinned link existed but no longer held its interface (the device was recreated): the
    /// stale pin was removed and a new link attached.
    Reattached,
}

/// How to load a datapath instance.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// Where bpffs is mounted (normally /sys/fs/bpf).
    pub bpffs_root: PathBuf,
    /// Name of this datapath: its pins live in `<bpffs_root>/skiff/<instance>/`.
    pub instance: String,
    pub capacities: Capacities,
    pub timeouts: Timeouts,
    /// Addresses in this range that are VIPs but match no service port are refused.
    pub service_cidr: (Ipv4Addr, u8),
    /// The source a pod sees on a connection it makes to a Service whose chosen backend is
    /// the pod itself (see `skiff_common::DEFAULT_HAIRPIN_ADDR`). No pod or node may use it.
    pub hairpin_addr: Ipv4Addr,
    /// The node's address: NodePorts are served on it (through `attach_uplink`), and NodePort
    /// flows to backends on other nodes get it as source. `None` turns NodePorts off.
    pub node_ip: Option<Ipv4Addr>,
    /// The source ports those flows get (inclusive). Keep them out of the node's own ephemeral
    /// ports (`net.ipv4.ip_local_port_range`) and of the NodePort range.
    pub snat_ports: (u16, u16),
    /// Salt of the flow hash; random when `None`.
    pub hash_seed: Option<u32>,
    /// Where the loader lock files go (one loader per instance at a time).
    pub lock_dir: PathBuf,
    /// Time between runs of the conntrack collector (by whoever drives the instance).
    pub gc_interval: std::time::Duration,
    /// The Maglev table size of service ports that do not name one (a prime: see
    /// `maglev::TableSize`).
    pub maglev_size: u32,
}

impl DatapathConfig {
    pub fn new(instance: impl Into<String>) -> Self {
        let (addr, len) = skiff_common::DEFAULT_SERVICE_CIDR;
        DatapathConfig {
            bpffs_root: PathBuf::from(super::DEFAULT_BPFFS_ROOT),
            instance: instance.into(),
            capacities: Capacities::default(),
            timeouts: Timeouts::DEFAULT,
            service_cidr: (Ipv4Addr::from(addr), len),
            hairpin_addr: Ipv4Addr::from(skiff_common::DEFAULT_HAIRPIN_ADDR),
            node_ip: None,
            snat_ports: skiff_common::DEFAULT_SNAT_PORTS,
            hash_seed: None,
            lock_dir: PathBuf::from("/run/skiff"),
            gc_interval: super::DEFAULT_GC_INTERVAL,
            maglev_size: super::maglev::DEFAULT_TABLE_SIZE,
        }
    }

    pub fn layout(&self) -> Result<PinLayout> {
        PinLayout::new(&self.bpffs_root, &self.instance)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            services: self.capacities.services,
            backends: self.capacities.backends,
            slots: self.capacities.slots,
            node_ports: self.capacities.node_ports,
            snat_ports: self.snat_ports,
            maglev_size: self.maglev_size,
            maglev_chunks: self.capacities.maglev,
        }
    }
}

/// A loaded datapath instance. Dropping it leaves everything pinned and forwarding.
#[derive(Debug)]
pub struct Datapath {
    config: DatapathConfig,
    layout: PinLayout,
    ebpf: Ebpf,
    _lock: OwnedFd,
}

impl Datapath {
    /// Loads the programs, creating the instance's maps or adopting the pinned ones (after
    /// checking that their layout is the one this agent uses).
    pub fn load(config: DatapathConfig) -> Result<Self> {
        let (lo, hi) = config.snat_ports;
        if lo == 0 || lo > hi {
            return Err(Error::InvalidSnatPorts { min: lo, max: hi });
        }
        let layout = config.layout()?;
        // The lock first: a concurrent reset must not remove what this load creates.
        let lock = take_lock(&config.lock_dir, &config.instance)?;
        layout.create()?;
        check_pinned_shapes(&layout, &config.capacities)?;

        let caps = &config.capacities;
        let t = &config.timeouts;
        // Keep an adopted instance's seed, so flows whose conntrack entries were evicted hash
        // to the same backend as before the restart.
        let seed = config
            .hash_seed
            .or_else(|| recorded_seed(&layout))
            .unwrap_or_else(random_u32);
        let cidr_addr = raw_addr(config.service_cidr.0.octets());
        let cidr_mask = raw_mask(config.service_cidr.1);
        let hairpin = raw_addr(config.hairpin_addr.octets());
        let node_ip = config.node_ip.map_or(0, |a| raw_addr(a.octets()));
        let (snat_min, snat_max) = config.snat_ports;
        let maps_dir = layout.maps_dir();
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(map_names::SERVICES, caps.services)
            .map_max_entries(map_names::BACKENDS, caps.backends)
            .map_max_entries(map_names::SLOTS, caps.slots)
            .map_max_entries(map_names::MAGLEV, caps.maglev)
            .map_max_entries(map_names::CONNTRACK, caps.conntrack)
            .map_max_entries(map_names::CT_ESTABLISHED, caps.ct_established)
            .map_max_entries(map_names::FRAGMENTS, caps.fragments)
            .map_max_entries(map_names::AFFINITY, caps.affinity)
            .map_max_entries(map_names::NODEPORTS, caps.node_ports)
            .map_max_entries(map_names::SVC_COUNTERS, caps.services)
            .override_global(global_names::TCP_ESTABLISHED_NS, &t.tcp_established, true)
            .override_global(global_names::TCP_TRANSIENT_NS, &t.tcp_transient, true)
            .override_global(global_names::TCP_CLOSING_NS, &t.tcp_closing, true)
            .override_global(global_names::UDP_NS, &t.udp, true)
            .override_global(global_names::SNAT_HOLD_NS, &t.snat_hold, true)
            .override_global(global_names::HASH_SEED, &seed, true)
            .override_global(global_names::SERVICE_CIDR_ADDR, &cidr_addr, true)
            .override_global(global_names::SERVICE_CIDR_MASK, &cidr_mask, true)
            .override_global(global_names::HAIRPIN_ADDR, &hairpin, true)
            .override_global(global_names::NODE_IP, &node_ip, true)
            .override_global(global_names::SNAT_PORT_MIN, &snat_min, true)
            .override_global(global_names::SNAT_PORT_MAX, &snat_max, true);
        let mut ebpf = loader.load(OBJECT).map_err(Error::Load)?;
        for name in [
            program_names::FROM_POD,
            program_names::TO_POD,
            program_names::NODEPORT,
            program_names::NODEPORT_REPLY,
        ] {
            let prog = classifier(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| Error::Program { name, source })?;
        }
        // The collector is attached nowhere: pinned, so whoever runs it needs only the pins.
        let name = program_names::CT_GC;
        let gc = classifier(&mut ebpf, name)?;
        gc.load()
            .map_err(|source| Error::Program { name, source })?;
        let pin = layout.collector();
        if let Err(source) = fs::remove_file(&pin)
            && source.kind() != io::ErrorKind::NotFound
        {
            return Err(Error::Io {
                op: "unpinning the previous collector",
                path: pin,
                source,
            });
        }
        gc.pin(&pin)
            .map_err(|source| Error::Pin { path: pin, source })?;
        PinnedMaps::open(&layout)?.record_settings(&DatapathSettings {
            tcp_established_ns: t.tcp_established,
            tcp_transient_ns: t.tcp_transient,
            tcp_closing_ns: t.tcp_closing,
            udp_ns: t.udp,
            hash_seed: seed,
            service_cidr_addr: cidr_addr,
            service_cidr_mask: cidr_mask,
            hairpin_addr: hairpin,
            node_ip,
            snat_port_min: snat_min,
            snat_port_max: snat_max,
        })?;
        tracing::info!(instance = %config.instance, pins = %layout.dir().display(), "datapath loaded");
        Ok(Datapath {
            config,
            layout,
            ebpf,
            _lock: lock,
        })
    }

    pub fn config(&self) -> &DatapathConfig {
        &self.config
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// Opens the pinned maps for reading and writing.
    pub fn maps(&self) -> Result<PinnedMaps> {
        PinnedMaps::open(&self.layout)
    }

    /// The conntrack collector of this instance.
    pub fn collector(&self) -> Result<super::Collector> {
        super::Collector::open(&self.layout.collector())
    }

    /// The service programmer over this instance's maps, adopting what they hold.
    pub fn service_table(&self) -> Result<ServiceTable<PinnedMaps>> {
        ServiceTable::adopt(self.maps()?, self.config.limits())
    }

    /// Attaches both programs to `iface` (a pod's host-side veth, in the calling thread's network
    /// namespace) through pinned TCX links, for the pod whose address is `pod_addr`: the only
    /// source `skiff_from_pod` lets the pod's IPv4 packets carry. The address is recorded
    /// before the programs run on the interface. A live pinned link is kept and its program
    /// replaced atomically, so re-attaching after a restart or upgrade never drops a packet.
    pub fn attach_pod(
        &mut self,
        iface: &str,
        pod_addr: Ipv4Addr,
    ) -> Result<Vec<(Direction, AttachOutcome)>> {
        pod_sources::validate_pod_address(iface, pod_addr, self.config.hairpin_addr)?;
        let layout = self.layout.clone();
        pod_sources::attach(
            &mut OsHooks {
                layout,
                dp: Some(self),
            },
            iface,
            pod_addr,
        )
    }

    /// `attach_pod` with the pod's address learnt from the node's routes: the one pod /32 route
    /// through `iface` (what Skiff's pod network and the test topologies write). Refused when
    /// there is none or more than one.
    pub fn attach(&mut self, iface: &str) -> Result<Vec<(Direction, AttachOutcome)>> {
        let addr = routed_pod_address(iface)?;
        self.attach_pod(iface, addr)
    }

    fn attach_links(&mut self, iface: &str) -> Result<Vec<(Direction, AttachOutcome)>> {
        Direction::ATTACH_ORDER
            .iter()
            .map(|hook| {
                let pin = self.layout.link(iface, *hook)?;
                Ok((*hook, self.attach_one(iface, *hook, pin, hook.program())?))
            })
            .collect()
    }

    /// Attaches the NodePort programs to the node's uplink `iface` (in the calling thread's
    /// network namespace): `skiff_nodeport` on TCX ingress (NodePort requests, and replies of
    /// NodePort flows to other nodes' backends), `skiff_np_reply` on TCX egress (replies of
    /// NodePort flows to this node's backends). Pinned under `uplinks/` like pod links are
    /// under `links/`: they survive the agent, a restart adopts them (replacing the program
    /// atomically), and `detach`/`attachments` of pod interfaces never touch them. NodePorts
    /// are served only when the datapath was loaded with a `node_ip`.
    pub fn attach_uplink(&mut self, iface: &str) -> Result<Vec<(Direction, AttachOutcome)>> {
        Direction::ATTACH_ORDER
            .iter()
            .map(|hook| {
                let pin = self.layout.uplink(iface, *hook)?;
                Ok((
                    *hook,
                    self.attach_one(iface, *hook, pin, hook.uplink_program())?,
                ))
            })
            .collect()
    }

    /// `attach_uplink` for an interface in the network namespace bound at `netns` (for example
    /// `/run/netns/node-1`); the calling thread's namespace is untouched.
    pub fn attach_uplink_in(
        &mut self,
        netns: &Path,
        iface: &str,
    ) -> Result<Vec<(Direction, AttachOutcome)>> {
        crate::netns::run_in(netns, || self.attach_uplink(iface)).map_err(|source| Error::Io {
            op: "entering network namespace",
            path: netns.to_path_buf(),
            source,
        })?
    }

    fn attach_one(
        &mut self,
        iface: &str,
        hook: Direction,
        pin: PathBuf,
        program: &'static str,
    ) -> Result<AttachOutcome> {
        let attach_err = |source| Error::Attach {
            iface: iface.to_owned(),
            hook,
            source,
        };
        // What runs on the hook now. An interface missing from this network namespace is an
        // error, never a reason to treat a pinned link (perhaps live elsewhere) as stale.
        let (_, running) =
            SchedClassifier::query_tcx(iface, hook.tc_type()).map_err(|source| Error::Attach {
                iface: format!("{iface} (in this network namespace)"),
                hook,
                source,
            })?;
        let mut outcome = AttachOutcome::Attached;
        if let Some(existing) = open_pinned_link(&pin)? {
            let fd_link = FdLink::from(existing);
            let program_id = fd_link
                .info()
                .map_err(|source| Error::Link {
                    path: pin.clone(),
                    source,
                })?
                .program_id();
            if running.iter().any(|p| p.id() == program_id) {
                let link =
                    SchedClassifierLink::try_from(fd_link).map_err(|source| Error::Link {
                        path: pin.clone(),
                        source,
                    })?;
                let prog = classifier(&mut self.ebpf, program)?;
                let id = prog.attach_to_link(link).map_err(attach_err)?;
                // The pin keeps the link; dropping our handle only closes a descriptor.
                drop(prog.take_link(id).map_err(attach_err)?);
                return Ok(AttachOutcome::Replaced);
            }
            // The interface exists but does not run this link's program: the link died with the
            // device this pin was made for.
            remove_pin(&pin)?;
            outcome = AttachOutcome::Reattached;
        }
        let prog = classifier(&mut self.ebpf, program)?;
        // TCX explicitly (Linux 6.6+): never the netlink fallback, whose filters cannot be
        // pinned and would outlive a failed attach.
        let id = prog
            .attach_with_options(
                iface,
                hook.tc_type(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let fd_link = FdLink::try_from(link).map_err(|source| Error::Link {
            path: pin.clone(),
            source,
        })?;
        fd_link
            .pin(&pin)
            .map_err(|source| Error::Pin { path: pin, source })?;
        Ok(outcome)
    }
}

/// Removes every pin of an instance (its programs detach, its maps are freed) and its lock
/// file. Refused while a loader runs the instance. Returns whether anything was pinned.
pub fn reset(config: &DatapathConfig) -> Result<bool> {
    let layout = config.layout()?;
    let lock = take_lock(&config.lock_dir, &config.instance)?;
    let removed = super::pins::reset(&layout)?;
    // Unlinked while held, so no other loader can hold the same file meanwhile.
    let _ = fs::remove_file(lock_path(&config.lock_dir, &config.instance));
    drop(lock);
    Ok(removed)
}

/// Removes the pinned links of `iface` (its programs detach), then the pod's recorded address
/// if the interface still exists. Returns how many links were removed. Needs no loaded
/// datapath, so it works while no agent runs.
pub fn detach(layout: &PinLayout, iface: &str) -> Result<usize> {
    pod_sources::detach(
        &mut OsHooks {
            layout: layout.clone(),
            dp: None,
        },
        iface,
    )
}

/// Removes the recorded addresses of pod interfaces that no longer exist in the calling
/// thread's network namespace (pods deleted while no agent ran). Returns how many went.
pub fn prune_pod_sources(layout: &PinLayout) -> Result<usize> {
    pod_sources::prune(&mut OsHooks {
        layout: layout.clone(),
        dp: None,
    })
}

/// The address the node routes to the pod behind `iface`: its one pod /32 route.
fn routed_pod_address(iface: &str) -> Result<Ipv4Addr> {
    let (_, found) = crate::podnet::interface_pod_routes(iface)
        .map_err(|source| Error::Netlink {
            op: format!("reading the routes to {iface}"),
            source,
        })?
        .ok_or_else(|| Error::NoSuchInterface {
            iface: iface.to_owned(),
        })?;
    match found.as_slice() {
        [one] => Ok(*one),
        _ => Err(Error::PodAddressUnknown {
            iface: iface.to_owned(),
            found,
        }),
    }
}

/// The real side effects: netlink for interfaces, the pinned POD_SOURCES map for records, TCX
/// links (only with a loaded datapath) for the programs.
struct OsHooks<'a> {
    layout: PinLayout,
    dp: Option<&'a mut Datapath>,
}

impl OsHooks<'_> {
    /// The instance's maps, or None when it has no POD_SOURCES pin (nothing pinned, or pins
    /// made before the source check, which therefore hold no records).
    fn maps(&self) -> Result<Option<PinnedMaps>> {
        if !self.layout.map(map_names::POD_SOURCES).exists() {
            return Ok(None);
        }
        PinnedMaps::open(&self.layout).map(Some)
    }
}

impl pod_sources::PodHooks for OsHooks<'_> {
    fn index(&mut self, iface: &str) -> Result<Option<u32>> {
        Ok(crate::podnet::interface_pod_routes(iface)
            .map_err(|source| Error::Netlink {
                op: format!("looking up interface {iface}"),
                source,
            })?
            .map(|(index, _)| index))
    }

    fn live_indexes(&mut self) -> Result<BTreeSet<u32>> {
        Ok(crate::podnet::interface_indexes()
            .map_err(|source| Error::Netlink {
                op: "listing interfaces".to_owned(),
                source,
            })?
            .into_iter()
            .collect())
    }

    fn recorded(&self) -> Result<BTreeSet<u32>> {
        Ok(match self.maps()? {
            Some(m) => m.pod_sources()?.into_iter().map(|(i, _)| i).collect(),
            None => BTreeSet::new(),
        })
    }

    fn put_source(&mut self, ifindex: u32, addr: Ipv4Addr) -> Result<()> {
        // A loaded datapath has created the map.
        PinnedMaps::open(&self.layout)?.put_pod_source(ifindex, addr)
    }

    fn delete_source(&mut self, ifindex: u32) -> Result<()> {
        match self.maps()? {
            Some(mut m) => m.delete_pod_source(ifindex),
            None => Ok(()),
        }
    }

    fn attach_links(&mut self, iface: &str) -> Result<Vec<(Direction, AttachOutcome)>> {
        match self.dp.as_deref_mut() {
            Some(dp) => dp.attach_links(iface),
            // Only `Datapath::attach_pod` attaches, and it passes itself.
            None => Err(Error::ProgramMissing {
                name: program_names::FROM_POD,
            }),
        }
    }

    fn detach_links(&mut self, iface: &str) -> Result<usize> {
        detach_links(&self.layout, iface)
    }
}

fn detach_links(layout: &PinLayout, iface: &str) -> Result<usize> {
    let mut removed = 0;
    for hook in Direction::DETACH_ORDER {
        let pin = layout.link(iface, hook)?;
        if pin.exists() {
            remove_pin(&pin)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes the pinned NodePort links of the uplink `iface`: NodePorts are no longer served
/// there. Returns how many were removed. Needs no loaded datapath.
pub fn detach_uplink(layout: &PinLayout, iface: &str) -> Result<usize> {
    let mut removed = 0;
    for hook in Direction::DETACH_ORDER {
        let pin = layout.uplink(iface, hook)?;
        if pin.exists() {
            remove_pin(&pin)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// One pinned link of an instance, as the operator command shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    pub interface: String,
    /// Whether this is a NodePort link of the node's uplink (else a pod's).
    pub uplink: bool,
    pub hook: Direction,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    pub program: Option<String>,
    /// Whether the interface's TCX hook really runs this link's program.
    pub live: bool,
    /// Other programs on the same TCX hook (not Skiff's), by ID and name.
    pub others: Vec<String>,
}

/// Lists the instance's pinned pod links and checks each against what the kernel runs on the
/// interface's TCX hook (Debian's bpftool and tc cannot show TCX links).
pub fn attachments(layout: &PinLayout) -> Result<Vec<Attachment>> {
    list_links(&layout.links_dir(), false)
}

/// Lists the instance's pinned uplink (NodePort) links, checked like `attachments`.
pub fn uplink_attachments(layout: &PinLayout) -> Result<Vec<Attachment>> {
    list_links(&layout.uplinks_dir(), true)
}

fn list_links(dir: &Path, uplink: bool) -> Result<Vec<Attachment>> {
    let dir = dir.to_path_buf();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                op: "listing",
                path: dir,
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((iface, hook)) = PinLayout::parse_link_name(&name) else {
            continue;
        };
        let mut a = Attachment {
            interface: iface.clone(),
            uplink,
            hook,
            link_id: None,
            program_id: None,
            program: None,
            live: false,
            others: Vec::new(),
        };
        if let Some(pinned) = open_pinned_link(&entry.path())? {
            let fd_link = FdLink::from(pinned);
            if let Ok(info) = fd_link.info() {
                a.link_id = Some(info.id());
                a.program_id = Some(info.program_id());
            }
            if let Ok((_, progs)) = SchedClassifier::query_tcx(&iface, hook.tc_type()) {
                for p in progs {
                    let pname = p.name_as_str().unwrap_or("?").to_owned();
                    if Some(p.id()) == a.program_id {
                        a.live = true;
                        a.program = Some(pname);
                    } else {
                        a.others.push(format!("{} {pname}", p.id()));
                    }
                }
            }
        }
        out.push(a);
    }
    out.sort_by(|x, y| (&x.interface, x.hook).cmp(&(&y.interface, y.hook)));
    Ok(out)
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or(Error::ProgramMissing { name })?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

fn open_pinned_link(path: &Path) -> Result<Option<PinnedLink>> {
    match PinnedLink::from_pin(path) {
        Ok(l) => Ok(Some(l)),
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Link {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn remove_pin(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(|source| Error::Io {
        op: "removing pin",
        path: path.to_path_buf(),
        source,
    })
}

/// One loader per instance: an exclusive lock on `<lock_dir>/datapath-<instance>.lock`, held
/// for the life of the `Datapath` and released by the kernel if the process dies.
fn take_lock(lock_dir: &Path, instance: &str) -> Result<OwnedFd> {
    use rustix::fs::{FlockOperation, Mode, OFlags, flock, open};
    fs::create_dir_all(lock_dir).map_err(|source| Error::Io {
        op: "creating lock directory",
        path: lock_dir.to_path_buf(),
        source,
    })?;
    let path = lock_path(lock_dir, instance);
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |e: rustix::io::Errno| Error::Io {
            op,
            path,
            source: e.into(),
        }
    };
    loop {
        let fd = open(
            &path,
            OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io("opening lock", &path))?;
        match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(Error::Locked { path }),
            Err(e) => return Err(io("locking", &path)(e)),
        }
        // `reset` deletes the file while holding it: a lock won on a file no longer at the
        // path guards nothing, so start over with the file that is there now.
        let held = rustix::fs::fstat(&fd).map_err(io("checking lock", &path))?;
        match rustix::fs::stat(&path) {
            Ok(now) if now.st_ino == held.st_ino && now.st_dev == held.st_dev => return Ok(fd),
            Ok(_) | Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(io("checking lock", &path)(e)),
        }
    }
}

/// The hash seed an earlier load recorded in the instance's pinned CONFIG map, if any.
fn recorded_seed(layout: &PinLayout) -> Option<u32> {
    let data = MapData::from_pin(layout.map(map_names::CONFIG)).ok()?;
    let config: Array<MapData, DatapathSettings> =
        Array::try_from(aya::maps::Map::from_map_data(data).ok()?).ok()?;
    let settings = config.get(&0, 0).ok()?;
    (settings.hash_seed != 0).then_some(settings.hash_seed)
}

fn lock_path(lock_dir: &Path, instance: &str) -> PathBuf {
    lock_dir.join(format!("datapath-{instance}.lock"))
}

fn random_u32() -> u32 {
    // std seeds every RandomState from the OS's random source.
    let mut h = RandomState::new().build_hasher();
    h.write_u8(0);
    // 0 means "no seed recorded" in the CONFIG map.
    (h.finish() as u32).max(1)
}
