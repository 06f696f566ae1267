//! The cluster's network: a fabric namespace holding a bridge, and one namespace per node with
//! `eth0` (10.250.0.(10+i)/24) on a veth into the bridge.
//!
//! ```text
//!  node ns <prefix>node-0: eth0 10.250.0.10/24 ──veth── fabric ns <prefix>fabric: br0 ──veth── node ns <prefix>node-1 ...
//! ```
//! Safety (DESIGN.md): no namespace made here has a link to the host or a default route, so
//! nothing can leave the machine, and every node namespace blackholes the Service CIDR before
//! its agent starts (the agent ensures the same route; both are idempotent). The veths are
//! created inside the fabric namespace, never in the host's.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use skiff_api::net::Ipv4Cidr;
/// Runs `ip` with arguments, failing with its stderr (the test bed's, which skiff-local shares).
pub use skiff_testbed::netns::ip;
use skiff_testbed::{fabric, netns};

use crate::layout::{
    Layout, NETNS_DIR, NODE_IFNAME, NODE_NETWORK_PREFIX, SERVICE_CIDR, fabric_ifname, node_ip,
};

/// The path a named namespace is bound at.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates the named network namespace with `lo` up; returns its inode.
pub fn create_netns(name: &str) -> Result<u64> {
    if netns_path(name).exists() {
        bail!(
            "the network namespace {name} exists already: another cluster of this name is up, or its `down` did not finish"
        );
    }
    netns::add(name)?;
    let inode = fs::metadata(netns_path(name))
        .with_context(|| format!("reading {}", netns_path(name).display()))?
        .ino();
    Ok(inode)
}

/// Deletes the named network namespace (its name; the namespace itself goes with its last
/// process). Nothing to do when it does not exist.
pub fn delete_netns(name: &str) -> Result<()> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name])
}

/// Names under /run/netns that start with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Makes the fabric namespace's bridge (the namespace exists).
pub fn setup_fabric(layout: &Layout) -> Result<()> {
    fabric::add_bridge(&layout.fabric_netns())
}

/// Joins node `i`'s namespace (it exists) to the fabric: a veth from the bridge to `eth0` with
/// the node's address, and the Service CIDR's blackhole route.
pub fn setup_node(layout: &Layout, i: usize) -> Result<()> {
    let fabric = layout.fabric_netns();
    let node = layout.node_netns(i);
    let outer = fabric_ifname(i);
    let address = format!("{}/{NODE_NETWORK_PREFIX}", node_ip(i)?);
    fabric::attach(&fabric, &outer, &node, NODE_IFNAME, &address)?;
    ensure_service_blackhole(&node)
}

/// Adds the Service CIDR's blackhole route in the named namespace with the agent's own function,
/// so the agent finds the very route it would add.
pub fn ensure_service_blackhole(netns: &str) -> Result<()> {
    let cidr = Ipv4Cidr::parse(SERVICE_CIDR).context("the Service CIDR")?;
    skiff_agent::netns::run_in(&netns_path(netns), || {
        skiff_agent::podnet::ensure_blackhole(cidr)
    })
    .with_context(|| format!("entering the network namespace {netns}"))?
    .with_context(|| format!("adding the blackhole route for {SERVICE_CIDR} in {netns}"))
}

/// The inode of the namespace bound at /run/netns/<name>, if it exists.
pub fn netns_inode(name: &str) -> Option<u64> {
    fs::metadata(netns_path(name)).ok().map(|m| m.ino())
}

/// The network namespaces bind-mounted at or under `dir` (the agents' pod namespaces): mount
/// point and namespace inode.
pub fn netns_mounts_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let inode = f
                .get(3)?
                .strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            let point = PathBuf::from(f.get(4)?);
            point.starts_with(dir).then_some((point, inode))
        })
        .collect()
}

/// The processes inside each of these network namespaces (by inode), as "pid (command)".
/// Namespace inodes are reused once a namespace is gone, so this is only meaningful while the
/// namespace is known to exist (its name or mount is still in place).
pub fn netns_processes(inodes: &[u64]) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(link) = fs::read_link(e.path().join("ns/net")) else {
            continue;
        };
        let Some(inode) = link
            .to_str()
            .and_then(|l| l.strip_prefix("net:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|l| l.parse::<u64>().ok())
        else {
            continue;
        };
        if inodes.contains(&inode)
            && let Some(p) = crate::process::ProcInfo::read(pid)
            && !p.is_zombie()
        {
            out.push((inode, format!("{pid} ({})", p.argv.join(" "))));
        }
    }
    out
}
