//! Network namespaces and the node-with-pods topology the datapath is tested on.
//!
//! ```text
//!  client pod ns            node ns (ip_forward, blackhole 10.96.0.0/12)      backend pod ns
//!  eth0 10.244.1.10 ──veth── vc   10.244.1.1 (gateway on every host veth)
//!                            vb0  ──veth──────────────────────────────────── eth0 10.244.1.20
//!                            vb1  ... one per backend
//! ```
//! Every namespace is new and has no link to the host or the outside, so no packet can leave
//! the machine. Addresses are the same in every test (they live in the test's own namespaces);
//! names carry a per-test prefix so tests run in parallel.
//!
//! `Cluster` is the multi-node form: nodes joined by a bridge, each with its pods, and a client
//! outside the cluster on the same bridge (see its documentation).

use std::{net::Ipv4Addr, process::Stdio};

use anyhow::{Context as _, Result, bail};

use crate::{
    fabric::{add_bridge, attach},
    netns::Netns,
};

/// The gateway address every pod routes through (present on each host-side veth).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
/// The Service CIDR every node namespace blackholes (the fabric's).
pub use crate::fabric::SERVICE_CIDR;

/// The address of backend `i`.
pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 20 + i as u8)
}

/// A pod: its own namespace with `eth0`, attached by veth to the node.
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// The host-side veth in the node namespace, where the datapath attaches.
    pub host_if: String,
}

/// A node namespace with a client pod and backend pods. Dropping it removes everything (pods
/// first, then the node).
#[derive(Debug)]
pub struct Topology {
    pub client: Pod,
    pub backends: Vec<Pod>,
    pub node: Netns,
    pub prefix: String,
}

impl Topology {
    pub fn new(prefix: &str, backends: usize) -> Result<Self> {
        let node = Netns::create(&format!("{prefix}-node"))?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        // Safety rule: a packet to the Service CIDR that the datapath did not translate is
        // dropped here, never routed anywhere.
        node.ip(&["route", "add", "blackhole", SERVICE_CIDR])?;
        let client = add_pod(&node, &format!("{prefix}-c"), "vc", CLIENT_IP)?;
        let mut topo = Topology {
            client,
            backends: Vec::new(),
            node,
            prefix: prefix.to_owned(),
        };
        for i in 0..backends {
            let pod = add_pod(
                &topo.node,
                &format!("{prefix}-b{i}"),
                &format!("vb{i}"),
                backend_ip(i),
            )?;
            topo.backends.push(pod);
        }
        Ok(topo)
    }

    /// Host-side interfaces of every pod: where the datapath attaches.
    pub fn pod_interfaces(&self) -> Vec<String> {
        std::iter::once(&self.client)
            .chain(&self.backends)
            .map(|p| p.host_if.clone())
            .collect()
    }

    /// Turns checksum offload off (or on) on both ends of every veth, so that a NAT that does
    /// not fix checksums breaks traffic instead of hiding behind offload.
    pub fn set_checksum_offload(&self, on: bool) -> Result<()> {
        for pod in std::iter::once(&self.client).chain(&self.backends) {
            for (ns, dev) in [(&self.node, pod.host_if.as_str()), (&pod.ns, "eth0")] {
                set_offload(ns, dev, on)?;
            }
        }
        Ok(())
    }

    /// Index of the backend with this address.
    pub fn backend_index(&self, addr: Ipv4Addr) -> Option<usize> {
        self.backends.iter().position(|b| b.ip == addr)
    }
}

/// Turns checksum offload off (or on) on the link `dev` in `ns`.
fn set_offload(ns: &Netns, dev: &str, on: bool) -> Result<()> {
    let state = if on { "on" } else { "off" };
    let status = ns
        .command("ethtool")
        .args(["-K", dev, "tx", state, "rx", state])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running ethtool")?;
    if !status.success() {
        bail!(
            "ethtool -K {dev} tx {state} rx {state} failed in {}",
            ns.name()
        );
    }
    Ok(())
}

fn add_pod(node: &Netns, ns_name: &str, host_if: &str, ip_addr: Ipv4Addr) -> Result<Pod> {
    add_pod_via(node, ns_name, host_if, ip_addr, GATEWAY)
}

fn add_pod_via(
    node: &Netns,
    ns_name: &str,
    host_if: &str,
    ip_addr: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<Pod> {
    let ns = Netns::create(ns_name)?;
    node.ip(&[
        "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns_name,
    ])?;
    let gw = gateway.to_string();
    let pod_ip = ip_addr.to_string();
    node.ip(&["addr", "add", &format!("{gw}/32"), "dev", host_if])?;
    node.ip(&["link", "set", host_if, "up"])?;
    node.ip(&["route", "add", &format!("{pod_ip}/32"), "dev", host_if])?;
    ns.ip(&["addr", "add", &format!("{pod_ip}/32"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
    ns.ip(&["route", "add", "default", "via", &gw, "dev", "eth0"])?;
    Ok(Pod {
        ns,
        ip: ip_addr,
        host_if: host_if.to_owned(),
    })
}

/// The address of node `n` (counting from 1) on the fabric.
pub fn node_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, 0, 10 + n as u8)
}

/// The address of pod `i` of node `n` (in the node's pod CIDR, 10.244.n.0/24).
pub fn pod_ip(n: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n as u8, 20 + i as u8)
}

/// The address of the client outside the cluster, on the fabric.
pub const EXTERNAL_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 100);

/// The node's interface on the fabric.
pub const UPLINK: &str = "uplink";

/// One node of a `Cluster`: its namespace, its address on the fabric, its pods.
#[derive(Debug)]
pub struct ClusterNode {
    /// Dropped first: the pods' namespaces (and so their veths) go before the node's.
    pub pods: Vec<Pod>,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// The node's uplink (`UPLINK`), in `ns`.
    pub uplink: String,
}

impl ClusterNode {
    /// Host-side interfaces of the node's pods: where the pod programs attach.
    pub fn pod_interfaces(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.host_if.clone()).collect()
    }
}

/// Several nodes on one fabric, host-gw style, and a client outside the cluster:
///
/// ```text
///  fabric ns: bridge br0 ─┬─ n1 ──veth── uplink 10.250.0.11/24  node 1 ns ── pods 10.244.1.20, ...
///                         ├─ n2 ──veth── uplink 10.250.0.12/24  node 2 ns ── pods 10.244.2.20, ...
///                         └─ cl ──veth── eth0 10.250.0.100/24  external client ns
/// ```
/// Each node forwards, routes every other node's pod CIDR (10.244.m.0/24) via that node's
/// address, and blackholes the Service CIDR; pods route everything via their node (10.244.n.1).
/// No namespace has a default route or a link off the machine; the client knows only the fabric.
#[derive(Debug)]
pub struct Cluster {
    pub client: Pod,
    pub nodes: Vec<ClusterNode>,
    pub fabric: Netns,
    pub prefix: String,
}

impl Cluster {
    pub fn new(prefix: &str, nodes: usize, pods_per_node: usize) -> Result<Self> {
        let fabric = Netns::create(&format!("{prefix}-fab"))?;
        add_bridge(fabric.name())?;
        let client_ns = Netns::create(&format!("{prefix}-ext"))?;
        attach(
            fabric.name(),
            "cl",
            client_ns.name(),
            "eth0",
            &format!("{EXTERNAL_CLIENT_IP}/24"),
        )?;
        let mut cluster = Cluster {
            client: Pod {
                ns: client_ns,
                ip: EXTERNAL_CLIENT_IP,
                host_if: "cl".to_owned(),
            },
            nodes: Vec::new(),
            fabric,
            prefix: prefix.to_owned(),
        };
        for n in 1..=nodes {
            let ns = Netns::create(&format!("{prefix}-n{n}"))?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            // Safety rule: untranslated Service traffic dies here.
            ns.ip(&["route", "add", "blackhole", SERVICE_CIDR])?;
            let port = format!("n{n}");
            let ip = node_ip(n);
            attach(
                cluster.fabric.name(),
                &port,
                ns.name(),
                UPLINK,
                &format!("{ip}/24"),
            )?;
            for m in (1..=nodes).filter(|m| *m != n) {
                let cidr = format!("10.244.{m}.0/24");
                let via = node_ip(m).to_string();
                ns.ip(&["route", "add", &cidr, "via", &via, "dev", UPLINK])?;
            }
            let gateway = Ipv4Addr::new(10, 244, n as u8, 1);
            let mut pods = Vec::new();
            for i in 0..pods_per_node {
                pods.push(add_pod_via(
                    &ns,
                    &format!("{prefix}-n{n}p{i}"),
                    &format!("vp{i}"),
                    pod_ip(n, i),
                    gateway,
                )?);
            }
            cluster.nodes.push(ClusterNode {
                pods,
                ns,
                ip,
                uplink: UPLINK.to_owned(),
            });
        }
        Ok(cluster)
    }

    /// Turns checksum offload off (or on) on both ends of every veth, so that a NAT that does
    /// not fix checksums breaks traffic instead of hiding behind offload.
    pub fn set_checksum_offload(&self, on: bool) -> Result<()> {
        let mut ends: Vec<(&Netns, String)> = vec![
            (&self.client.ns, "eth0".to_owned()),
            (&self.fabric, "cl".to_owned()),
        ];
        for (n, node) in self.nodes.iter().enumerate() {
            ends.push((&node.ns, node.uplink.clone()));
            ends.push((&self.fabric, format!("n{}", n + 1)));
            for pod in &node.pods {
                ends.push((&node.ns, pod.host_if.clone()));
                ends.push((&pod.ns, "eth0".to_owned()));
            }
        }
        for (ns, dev) in ends {
            set_offload(ns, &dev, on)?;
        }
        Ok(())
    }
}
