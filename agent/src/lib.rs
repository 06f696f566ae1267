//! Skiff's node agent: the node itself (registration, pods through containerd, pod networks
//! through netlink, probes and status), and the eBPF service datapath (loading, attaching,
//! programming services, operator listing) with the standalone loader that serves a services
//! file. The pods' OS edge (container runtime, pod network) and their API writes sit behind
//! traits; `testing` (the agent's own tests, or the `testing` feature) holds checking fakes of
//! them for unit tests and hollow nodes.

pub mod cli;
pub mod datapath;
pub mod ipam;
pub mod netns;
pub mod node;
pub mod paths;
pub mod podnet;
pub mod runtime;
pub mod standalone;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
