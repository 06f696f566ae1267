//! Skiff's test bed: what the privileged tests, the benchmarks and the agent's own tests start
//! and clean up. A real etcd and `skiff-apiserver` (with the scheduler or controller-manager when
//! asked), a containerd of their own, node agents, and the network they run on: a fabric
//! namespace with a bridge, node namespaces joined to it, pods attached to their node by veth.
//!
//! Everything here is an RAII guard: a process dies with the test (PDEATHSIG) and is stopped on
//! drop, a namespace is deleted on drop, a datapath instance's pins are removed on drop. Names
//! carry the process id and a sequence number ([`unique_prefix`]) so tests run in parallel.
//!
//! Safety rule (shared/DESIGN.md): all traffic starts inside namespaces made here, none of which
//! has a route off the machine, and every node namespace blackholes the Service CIDR.
//!
//! This crate depends on no other Skiff component crate than the API types: it starts the
//! Skiff binaries as processes ([`workspace_binary`]), so the agent's own tests can use it.

pub mod agent;
pub mod cleanup;
pub mod cluster;
pub mod containerd;
pub mod control;
pub mod fabric;
pub mod host;
pub mod netns;
pub mod nodes;
pub mod pins;
mod process;
pub mod procfs;
pub mod registry;
pub mod servers;
pub mod topo;
pub mod wait;

use std::sync::atomic::{AtomicU32, Ordering};

pub use crate::host::{privileged, which, workspace_binary};

/// A name prefix unique to this process and call, short enough for interface-free uses
/// (namespace names, pin directories).
pub fn unique_prefix(tag: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("skt-{tag}-{}-{seq}", std::process::id())
}
