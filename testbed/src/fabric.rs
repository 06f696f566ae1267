//! The fabric: a namespace with a bridge, one namespace per node joined to it (node addresses
//! 10.250.0.0/24, as DESIGN.md's local cluster), and clients outside the cluster on it.
//!
//! ```text
//!  node ns <p>-n0: eth0 10.250.0.10/24 ──veth── fabric ns <p>-fab: br0 ──veth── node ns <p>-n1 ...
//! ```
//! No namespace has a link to the host, so nothing can leave the machine.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::netns::{Netns, ip_in};

/// The bridge in the fabric namespace.
pub const BRIDGE: &str = "br0";

/// Makes the bridge [`BRIDGE`] in the namespace `fabric` (which exists) and sets it up.
pub fn add_bridge(fabric: &str) -> Result<()> {
    ip_in(fabric, &["link", "add", BRIDGE, "type", "bridge"])?;
    ip_in(fabric, &["link", "set", BRIDGE, "up"])
}

/// Joins the namespace `ns` to the bridge of the namespace `fabric` (both exist): a veth whose
/// end `port` is a port of the bridge and whose other end `ifname` in `ns` has `address` (a
/// CIDR, `10.250.0.10/24`); both ends up. The veth is made inside `fabric`, never in the host's
/// namespace.
pub fn attach(fabric: &str, port: &str, ns: &str, ifname: &str, address: &str) -> Result<()> {
    ip_in(
        fabric,
        &[
            "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns,
        ],
    )?;
    ip_in(fabric, &["link", "set", port, "master", BRIDGE, "up"])?;
    ip_in(ns, &["addr", "add", address, "dev", ifname])?;
    ip_in(ns, &["link", "set", ifname, "up"])
}

/// The Service CIDR every test node blackholes.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// The address of node `i` on the fabric.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, 0, 10 + i as u8)
}

/// The pod CIDR given to node `i`.
pub fn node_pod_cidr(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// The fabric: a namespace holding the bridge every node namespace is joined to.
#[derive(Debug)]
pub struct Fabric {
    prefix: String,
    ns: Netns,
}

/// One node's network namespace on the fabric.
#[derive(Debug)]
pub struct NodeNs {
    pub ns: Netns,
    pub ip: Ipv4Addr,
}

impl Fabric {
    /// `prefix` must be short (interface names are built from it): at most 8 characters.
    pub fn new(prefix: &str) -> Result<Fabric> {
        let ns = Netns::create(&format!("{prefix}-fab"))?;
        add_bridge(ns.name())?;
        Ok(Fabric {
            prefix: prefix.to_owned(),
            ns,
        })
    }

    /// Node namespace `i`: `eth0` with [`node_ip`]`(i)`/24 on the bridge, forwarding on.
    pub fn node(&self, i: usize) -> Result<NodeNs> {
        let ip = node_ip(i);
        let ns = self.join(&format!("n{i}"), &format!("f{i}"), ip)?;
        Ok(NodeNs { ns, ip })
    }

    /// A client outside the cluster: namespace `<prefix>-ext` with `eth0` at `ip`/24 on the
    /// bridge and no default route (it reaches only the fabric's addresses).
    pub fn outside_client(&self, ip: Ipv4Addr) -> Result<Netns> {
        self.join("ext", "fx", ip)
    }

    /// A new namespace `<prefix>-<name>` whose `eth0` (at `ip`/24) is joined to the bridge by
    /// the port `<prefix><port>`.
    fn join(&self, name: &str, port: &str, ip: Ipv4Addr) -> Result<Netns> {
        let ns = Netns::create(&format!("{}-{name}", self.prefix))?;
        let outer = format!("{}{port}", self.prefix);
        attach(
            self.ns.name(),
            &outer,
            ns.name(),
            "eth0",
            &format!("{ip}/24"),
        )?;
        Ok(ns)
    }
}
