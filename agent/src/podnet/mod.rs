//! Pod networking on one node, through netlink: a network namespace per pod, bind-mounted at
//! `netns_dir/<pod id>`, joined to the node by a veth pair.
//!
//! ```text
//!  node namespace                                 pod namespace
//!  sk<hash> (host veth)  <------- veth ------->   eth0
//!    gateway/32 (the same on every host veth)       ip/32
//!  route ip/32 dev sk<hash> scope link            route gateway/32 dev eth0 scope link
//!                                                 route default via gateway dev eth0
//! ```
//!
//! The gateway is the first address of the node's pod CIDR. Every host veth carries it as a /32,
//! like the CNI `ptp` plugin: Linux keeps one local route for an address however many links
//! carry it (and drops it only with the last one), so pods always find their gateway, and the
//! host side answers ARP for it on each veth. Pods reach each other through the node (forwarding
//! is enabled in the node namespace), and other nodes through the host-gw routes that
//! [`sync_node_routes`] keeps.
//!
//! Routes this module writes are tagged with an `rtm_protocol`: the host-gw routes to other
//! nodes' pod CIDRs with [`NODE_ROUTE_PROTOCOL`] (so that [`sync_node_routes`] can find the ones
//! it added, and only those), the pods' /32 routes, the routes inside pods and the Service CIDR
//! blackhole with `static` (4, "installed by an administrator", what `ip route add` does not
//! use: iproute2 writes `boot`).
//!
//! Everything here is synchronous and runs in the network namespace of the calling thread (the
//! node's); the pod side is configured from a short-lived thread inside the pod's namespace.

mod error;
mod netlink;
mod network;

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io,
    net::Ipv4Addr,
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    thread,
};

pub use error::{DialError, Error, Result};
use netlink_packet_route::route::{RouteProtocol, RouteScope, RouteType};
use rustix::{
    io::Errno,
    mount::{UnmountFlags, mount_bind, unmount},
    thread::UnshareFlags,
};
use skiff_api::net::Ipv4Cidr;

use self::netlink::{Link, Netlink, RT_TABLE_MAIN, Route};
pub use self::network::{Connection, NodeNetworks, PodNetworks};
use crate::netns;

/// The `rtm_protocol` of the host-gw routes [`sync_node_routes`] adds (0x5c = 92). Neither the
/// kernel nor iproute2's `rt_protos` use it (they use 0-18, 42, 99 and 186-192), so
/// `ip route show proto 92` lists exactly Skiff's node routes.
pub const NODE_ROUTE_PROTOCOL: u8 = 0x5c;

/// The protocol of the other routes this module writes (`RTPROT_STATIC`).
const STATIC: RouteProtocol = RouteProtocol::Static;

/// The name of the pod's side of the veth, inside the pod.
pub const POD_IFNAME: &str = "eth0";

/// `statfs` magic of nsfs: a file with it is a namespace (here: a bind-mounted one).
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// How many stacked mounts teardown removes from one netns file before giving up.
const MAX_STACKED_MOUNTS: usize = 16;

/// How pod networking is set up on this node.
#[derive(Debug, Clone)]
pub struct PodNetConfig {
    /// Directory where pod network namespaces are bind-mounted, one file per pod id (created if
    /// missing).
    pub netns_dir: PathBuf,
    /// The node's pod CIDR (e.g. 10.244.1.0/24); the gateway is its first address (network + 1).
    pub cidr: Ipv4Cidr,
    /// MTU for both veth ends (None: kernel default 1500).
    pub mtu: Option<u32>,
}

/// Pod networking on this node: runs in the node's network namespace (the calling thread's).
#[derive(Debug)]
pub struct PodNet {
    config: PodNetConfig,
    gateway: Ipv4Addr,
}

/// What one pod's network is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The pod's network namespace, bind-mounted (what a container's spec joins).
    pub netns: PathBuf,
    /// The node's side of the pod's veth.
    pub host_veth: String,
    /// The pod's address (a /32 on its `eth0`).
    pub ip: Ipv4Addr,
}

/// Refuses anything but a pod uid: 1 to 64 characters of `[a-z0-9-]`.
pub(crate) fn check_pod_id(pod_id: &str) -> Result<()> {
    let ok = !pod_id.is_empty()
        && pod_id.len() <= 64
        && pod_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(Error::InvalidPodId {
            pod_id: pod_id.to_owned(),
        });
    }
    Ok(())
}

/// 64-bit FNV-1a.
fn fnv1a64(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl PodNet {
    /// Checks the config, creates `netns_dir`, and enables IPv4 forwarding in the node
    /// namespace (`/proc/sys/net/ipv4/ip_forward` belongs to the writer's network namespace).
    pub fn new(config: PodNetConfig) -> Result<PodNet> {
        let prefix = config.cidr.prefix();
        if !(8..=30).contains(&prefix) {
            return Err(Error::CidrSize { cidr: config.cidr });
        }
        if let Some(mtu) = config.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(Error::Mtu { mtu });
        }
        fs::create_dir_all(&config.netns_dir).map_err(|source| Error::File {
            action: "creating the pod netns directory",
            path: config.netns_dir.clone(),
            source,
        })?;
        enable_forwarding()?;
        let gateway = Ipv4Addr::from(u32::from(config.cidr.network()) + 1);
        Ok(PodNet { config, gateway })
    }

    /// The pods' gateway: the first address of the pod CIDR.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Name of the host-side veth of pod `pod_id`: `sk` and 12 hex digits of the FNV-1a 64 hash
    /// of the id (14 characters; Linux allows 15).
    pub fn host_veth_name(pod_id: &str) -> String {
        format!("sk{:012x}", fnv1a64(pod_id.as_bytes()) & 0xffff_ffff_ffff)
    }

    /// Where the network namespace of `pod_id` is bind-mounted (a file directly in
    /// `netns_dir`, whatever the id).
    fn netns_path(&self, pod_id: &str) -> Result<PathBuf> {
        Ok(crate::paths::child(
            &self.config.netns_dir,
            "pod id",
            pod_id,
        )?)
    }

    /// Creates (or, when already complete, just returns) the network of pod `pod_id` with the
    /// address `ip`. Idempotent: a setup that was interrupted half way is completed or redone,
    /// and a complete one is left as it is. A pod that already has a network with another
    /// address is an error (tear it down first).
    pub fn setup(&self, pod_id: &str, ip: Ipv4Addr) -> Result<PodNetwork> {
        check_pod_id(pod_id)?;
        let cidr = self.config.cidr;
        if !cidr.contains(ip) || ip == self.gateway || ip == cidr.network() || ip == cidr.last() {
            return Err(Error::AddressNotAssignable {
                pod_id: pod_id.to_owned(),
                ip,
                cidr,
                gateway: self.gateway,
            });
        }
        self.setup_inner(pod_id, ip).map_err(|e| match e {
            // Says all there is to say, the address the pod has included.
            e @ Error::OtherAddress { .. } => e,
            e => Error::Setup {
                pod_id: pod_id.to_owned(),
                ip,
                source: Box::new(e),
            },
        })
    }

    fn setup_inner(&self, pod_id: &str, ip: Ipv4Addr) -> Result<PodNetwork> {
        let netns = self.netns_path(pod_id)?;
        let host_name = Self::host_veth_name(pod_id);
        let mtu = self.config.mtu;
        let gateway = self.gateway;

        ensure_netns(&netns)?;
        let mut node = Netlink::open()?;
        let host = node.link(&host_name)?;

        // An address the pod already has, as the node sees it.
        if let Some(host) = &host {
            let routes = node.ipv4_routes(RT_TABLE_MAIN)?;
            if let Some(other) = pod_routes(&routes, host.index).find(|r| r.dst != ip) {
                return Err(Error::OtherAddress {
                    pod_id: pod_id.to_owned(),
                    have: format!("{} (routed to {host_name})", other.dst),
                    ip,
                });
            }
        }

        // Is the host veth paired with the pod's eth0? If not, (re)create the pair.
        let peer = in_netns(&netns, || Ok(Netlink::open()?.link(POD_IFNAME)?))?;
        let paired = match (&host, &peer) {
            (Some(h), Some(p)) => {
                h.is_veth()
                    && p.is_veth()
                    && h.peer_index == Some(p.index)
                    && p.peer_index == Some(h.index)
            }
            _ => false,
        };
        if !paired {
            if host.is_some() {
                tracing::info!(pod = pod_id, link = %host_name, "host veth is not paired with the pod's eth0: recreating it");
                // Deleting a veth deletes its peer, wherever it is.
                node.delete_link(&host_name)?;
            }
            if peer.is_some() {
                in_netns(&netns, || {
                    Netlink::open()?.delete_link(POD_IFNAME)?;
                    Ok(())
                })?;
            }
            let ns = File::open(&netns).map_err(|source| Error::File {
                action: "opening the pod netns",
                path: netns.clone(),
                source,
            })?;
            // The peer is created right inside the pod namespace under its final name, so no
            // temporary name is ever seen in the node namespace.
            node.add_veth(&host_name, POD_IFNAME, Some(ns.as_raw_fd()), mtu)?;
        }

        // The pod side.
        in_netns(&netns, || {
            let mut pod = Netlink::open()?;
            let lo = pod.link("lo")?.ok_or_else(|| Error::Vanished {
                what: "the pod namespace has no loopback link".to_owned(),
            })?;
            pod.ensure_up(&lo, None)?;
            let eth0 = pod.link(POD_IFNAME)?.ok_or_else(|| Error::Vanished {
                what: format!("{POD_IFNAME} vanished from the pod namespace"),
            })?;
            let addrs = pod.ipv4_addresses(eth0.index)?;
            if let Some((other, len)) = addrs.iter().find(|(a, _)| *a != ip) {
                return Err(Error::OtherAddress {
                    pod_id: pod_id.to_owned(),
                    have: format!("{other}/{len} on {POD_IFNAME}"),
                    ip,
                });
            }
            pod.ensure_up(&eth0, mtu)?;
            if !addrs.contains(&(ip, 32)) {
                ignore_exists(pod.add_ipv4_address(&eth0, ip, 32))?;
            }
            let routes = pod.ipv4_routes(RT_TABLE_MAIN)?;
            let mut to_gateway = Route::unicast(gateway, 32, STATIC);
            to_gateway.oif = Some(eth0.index);
            to_gateway.scope = RouteScope::Link;
            let mut default = Route::unicast(Ipv4Addr::UNSPECIFIED, 0, STATIC);
            default.gateway = Some(gateway);
            default.oif = Some(eth0.index);
            for want in [to_gateway, default] {
                if !routes.iter().any(|r| same_route(r, &want)) {
                    pod.add_route(&want, true)?;
                }
            }
            Ok(())
        })?;

        // The node side.
        let host = node.link(&host_name)?.ok_or_else(|| Error::Vanished {
            what: format!("the host veth {host_name} vanished"),
        })?;
        node.ensure_up(&host, mtu)?;
        if !node.ipv4_addresses(host.index)?.contains(&(gateway, 32)) {
            ignore_exists(node.add_ipv4_address(&host, gateway, 32))?;
        }
        let routes = node.ipv4_routes(RT_TABLE_MAIN)?;
        let mut want = Route::unicast(ip, 32, STATIC);
        want.oif = Some(host.index);
        want.scope = RouteScope::Link;
        if !routes.iter().any(|r| same_route(r, &want)) {
            if let Some(other) = routes.iter().find(|r| r.dst == ip && r.prefix == 32) {
                let dev = other
                    .oif
                    .and_then(|i| {
                        node.links()
                            .ok()?
                            .into_iter()
                            .find(|l| l.index == i)
                            .map(|l| l.name)
                    })
                    .unwrap_or_else(|| "?".to_owned());
                return Err(Error::RouteTaken { ip, dev });
            }
            node.add_route(&want, false)?;
        }

        Ok(PodNetwork {
            netns,
            host_veth: host_name,
            ip,
        })
    }

    /// Removes the pod's host veth (which takes its peer, and the kernel drops the routes
    /// through it), unmounts and deletes the netns file. Missing parts are fine.
    pub fn teardown(&self, pod_id: &str) -> Result<()> {
        check_pod_id(pod_id)?;
        let netns = self.netns_path(pod_id)?;
        let host_name = Self::host_veth_name(pod_id);
        (|| -> Result<()> {
            let mut node = Netlink::open()?;
            node.delete_link(&host_name)?;
            remove_netns(&netns)
        })()
        .map_err(|e| Error::Teardown {
            pod_id: pod_id.to_owned(),
            source: Box::new(e),
        })
    }

    /// Pod ids that have a netns file in `netns_dir` (to clean up after a restart).
    pub fn list(&self) -> Result<Vec<String>> {
        let dir = &self.config.netns_dir;
        let listing = |source| Error::File {
            action: "listing pod netns in",
            path: dir.clone(),
            source,
        };
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(listing(e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(listing)?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if check_pod_id(&name).is_ok() && entry.file_type().is_ok_and(|t| t.is_file()) {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The existing network of a pod (netns present and host veth present with the pod's /32
    /// route), or None.
    pub fn inspect(&self, pod_id: &str) -> Result<Option<PodNetwork>> {
        check_pod_id(pod_id)?;
        let netns = self.netns_path(pod_id)?;
        let host_name = Self::host_veth_name(pod_id);
        (|| -> Result<Option<PodNetwork>> {
            if !is_netns(&netns)? {
                return Ok(None);
            }
            let mut node = Netlink::open()?;
            let Some(host) = node.link(&host_name)?.filter(Link::is_veth) else {
                return Ok(None);
            };
            let routes = node.ipv4_routes(RT_TABLE_MAIN)?;
            let ip = pod_routes(&routes, host.index)
                .map(|r| r.dst)
                .find(|ip| self.config.cidr.contains(*ip));
            Ok(ip.map(|ip| PodNetwork {
                netns,
                host_veth: host_name,
                ip,
            }))
        })()
        .map_err(|e| Error::Inspect {
            pod_id: pod_id.to_owned(),
            source: Box::new(e),
        })
    }
}

/// The index of the interface `name` in the calling thread's network namespace (None: no such
/// interface) and the destinations of the pod /32 routes through it: what the eBPF datapath
/// needs to check a pod's sources when nobody tells it the pod's address.
pub fn interface_pod_routes(name: &str) -> io::Result<Option<(u32, Vec<Ipv4Addr>)>> {
    let mut nl = Netlink::open()?;
    let Some(link) = nl.link(name)? else {
        return Ok(None);
    };
    let routes = nl.ipv4_routes(RT_TABLE_MAIN)?;
    let addrs = pod_routes(&routes, link.index).map(|r| r.dst).collect();
    Ok(Some((link.index, addrs)))
}

/// The indexes of every interface in the calling thread's network namespace.
pub fn interface_indexes() -> io::Result<Vec<u32>> {
    Ok(Netlink::open()?.links()?.iter().map(|l| l.index).collect())
}

/// The pod /32 routes through the host veth with index `index`.
fn pod_routes(routes: &[Route], index: u32) -> impl Iterator<Item = &Route> {
    routes.iter().filter(move |r| {
        r.oif == Some(index)
            && r.prefix == 32
            && r.gateway.is_none()
            && r.kind == RouteType::Unicast
            && !r.multipath
    })
}

/// Whether `have` is the route `want` (destination, next hop, type).
fn same_route(have: &Route, want: &Route) -> bool {
    have.dst == want.dst
        && have.prefix == want.prefix
        && have.gateway == want.gateway
        && (want.oif.is_none() || have.oif == want.oif)
        && have.kind == want.kind
        && !have.multipath
}

fn ignore_exists(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if netlink::is(&e, Errno::EXIST) => Ok(()),
        other => other,
    }
}

/// Runs `f` on a thread inside the network namespace at `path`.
fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    netns::run_in(path, f)
        .map_err(|source| Error::EnterNetns {
            path: path.to_owned(),
            source,
        })?
        .map_err(|e| Error::InNetns {
            path: path.to_owned(),
            source: Box::new(e),
        })
}

/// Writes 1 to `/proc/sys/net/ipv4/ip_forward` unless it is 1 already.
fn enable_forwarding() -> Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    let file_error = |action| {
        move |source| Error::File {
            action,
            path: PATH.into(),
            source,
        }
    };
    let current = fs::read_to_string(PATH).map_err(file_error("reading"))?;
    if current.trim() != "1" {
        fs::write(PATH, "1").map_err(file_error("enabling IPv4 forwarding: writing 1 to"))?;
    }
    Ok(())
}

/// Whether `path` is a bind-mounted namespace; false if it is missing.
fn is_netns(path: &Path) -> Result<bool> {
    let file_error = |action| {
        move |source| Error::File {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(file_error("opening")(e)),
    };
    let stat = rustix::fs::fstatfs(&file).map_err(|e| file_error("statfs")(io::Error::from(e)))?;
    Ok(u64::try_from(stat.f_type).ok() == Some(NSFS_MAGIC))
}

/// Makes `path` a bind mount of a fresh network namespace, unless it already is one. An empty
/// file left there by an interrupted attempt is reused.
fn ensure_netns(path: &Path) -> Result<()> {
    if is_netns(path)? {
        return Ok(());
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o444)
        .open(path)
        .map_err(|source| Error::File {
            action: "creating the pod netns file",
            path: path.to_owned(),
            source,
        })?;
    let mounted = thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            // Only this short-lived thread moves to the new namespace; it exits right after,
            // and the bind mount keeps the namespace alive.
            new_netns_on_this_thread()?;
            mount_bind("/proc/thread-self/ns/net", path)?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the netns creating thread panicked")))
    });
    if let Err(e) = mounted {
        let _ = fs::remove_file(path);
        return Err(Error::File {
            action: "creating a network namespace and bind-mounting it at",
            path: path.to_owned(),
            source: e,
        });
    }
    Ok(())
}

/// `unshare(CLONE_NEWNET)` on the calling thread.
///
/// rustix 1.1 deprecated its safe `unshare` in favour of `unshare_unsafe`, because of
/// `CLONE_FILES` (unsharing the descriptor table can leave other threads' descriptors
/// unusable). `CLONE_NEWNET` alone has no such effect: it only changes the network namespace of
/// this thread. The workspace forbids unsafe code, so this calls the deprecated safe function.
#[expect(
    deprecated,
    reason = "unshare(CLONE_NEWNET) is safe; unshare_unsafe would need unsafe code, which the workspace forbids"
)]
fn new_netns_on_this_thread() -> io::Result<()> {
    rustix::thread::unshare(UnshareFlags::NEWNET).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("unshare(CLONE_NEWNET): {e}"),
        )
    })
}

/// Unmounts (lazily, every stacked mount) and deletes the netns file at `path`.
fn remove_netns(path: &Path) -> Result<()> {
    for _ in 0..MAX_STACKED_MOUNTS {
        match unmount(path, UnmountFlags::DETACH) {
            Ok(()) => continue,
            // Not (or no longer) a mount point, or gone.
            Err(Errno::INVAL | Errno::NOENT) => break,
            Err(e) => {
                return Err(Error::File {
                    action: "unmounting the pod netns",
                    path: path.to_owned(),
                    source: io::Error::from(e),
                });
            }
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::File {
            action: "deleting the pod netns file",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Keeps exactly `routes` (destination CIDR -> gateway, the host-gw routes to other nodes' pod
/// CIDRs) in the main table of the node namespace (the calling thread's).
///
/// The routes are tagged with [`NODE_ROUTE_PROTOCOL`]: routes with that tag that are not in
/// `routes` are removed, a tagged route whose gateway changed is replaced in place, and routes
/// without the tag are never touched (a destination that one of them already has is reported as
/// an error). Every change is attempted; the error lists the ones that failed.
pub fn sync_node_routes(routes: &[(Ipv4Cidr, Ipv4Addr)]) -> Result<()> {
    let mut want: BTreeMap<Ipv4Cidr, Ipv4Addr> = BTreeMap::new();
    for (cidr, gw) in routes {
        if let Some(other) = want.insert(*cidr, *gw)
            && other != *gw
        {
            return Err(Error::DuplicateNodeRoute {
                cidr: *cidr,
                first: other,
                second: *gw,
            });
        }
    }
    let mut nl = Netlink::open()?;
    let ours: Vec<Route> = nl
        .ipv4_routes(RT_TABLE_MAIN)?
        .into_iter()
        .filter(|r| u8::from(r.protocol) == NODE_ROUTE_PROTOCOL)
        .collect();
    let mut failures = Vec::new();
    let mut have: BTreeMap<Ipv4Cidr, &Route> = BTreeMap::new();
    for r in &ours {
        let key = Ipv4Cidr::parse(&format!("{}/{}", r.dst, r.prefix)).ok();
        let keep = key.filter(|k| {
            want.contains_key(k) && r.kind == RouteType::Unicast && !have.contains_key(k)
        });
        match keep {
            Some(k) => {
                have.insert(k, r);
            }
            None => {
                if let Err(e) = nl.delete_route(r) {
                    failures.push(format!("removing a stale route: {e}"));
                }
            }
        }
    }
    for (cidr, gw) in &want {
        let mut route = Route::unicast(
            cidr.network(),
            cidr.prefix(),
            RouteProtocol::from(NODE_ROUTE_PROTOCOL),
        );
        route.gateway = Some(*gw);
        let result = match have.get(cidr) {
            Some(r) if r.gateway == Some(*gw) && !r.multipath => continue,
            // Ours, with another gateway: replace in place (no moment without a route).
            Some(_) => nl.add_route(&route, true),
            None => nl.add_route(&route, false).map_err(|e| {
                if netlink::is(&e, Errno::EXIST) {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "{e}: a route to {cidr} that Skiff did not add is in the way (see `ip route show {cidr}`)"
                        ),
                    )
                } else {
                    e
                }
            }),
        };
        if let Err(e) = result {
            failures.push(e.to_string());
        }
    }
    if !failures.is_empty() {
        return Err(Error::NodeRoutes { failures });
    }
    Ok(())
}

/// Ensures a blackhole route for `cidr` (the Service CIDR) in the main table of the node
/// namespace (the calling thread's), so that a packet to a service address the datapath did not
/// translate is dropped, never routed out. Idempotent.
pub fn ensure_blackhole(cidr: Ipv4Cidr) -> Result<()> {
    let mut nl = Netlink::open()?;
    let routes = nl.ipv4_routes(RT_TABLE_MAIN)?;
    let mut want = Route::unicast(cidr.network(), cidr.prefix(), STATIC);
    want.kind = RouteType::BlackHole;
    if routes.iter().any(|r| same_route(r, &want)) {
        return Ok(());
    }
    nl.add_route(&want, false).map_err(|e| {
        if netlink::is(&e, Errno::EXIST) {
            Error::BlackholeInTheWay { cidr, source: e }
        } else {
            Error::Netlink(e)
        }
    })
}

/// The interface of the calling thread's namespace that holds `ip` (the node's uplink, found
/// by its InternalIP); `None` if no interface has it.
pub fn interface_with_address(ip: Ipv4Addr) -> Result<Option<String>> {
    let mut nl = Netlink::open()?;
    for link in nl.links()? {
        let addrs = nl.ipv4_addresses(link.index)?;
        if addrs.iter().any(|(a, _)| *a == ip) {
            return Ok(Some(link.name));
        }
    }
    Ok(None)
}
