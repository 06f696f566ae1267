//! The eBPF service datapath as the agent drives it: loading and adopting pinned programs and
//! maps, attaching to pod interfaces, and programming services.

mod gc;
mod loader;
pub mod maglev;
mod maps;
mod pins;
mod pod_sources;
pub mod show;
pub mod static_config;
mod table;
mod types;

use std::{io, net::Ipv4Addr, path::PathBuf};

pub use gc::{Collector, DEFAULT_INTERVAL as DEFAULT_GC_INTERVAL, GcRun};
pub use loader::{
    AttachOutcome, Attachment, Datapath, DatapathConfig, Direction, Timeouts, attachments, detach,
    detach_uplink, prune_pod_sources, reset, uplink_attachments,
};
pub use maps::{
    AffinityEntry, CT_ESTABLISHED_BYTES_PER_ENTRY, Capacities, ConntrackEntry, PinnedMaps,
    ct_established_for_memory, node_memory,
};
pub use pins::{DEFAULT_BPFFS_ROOT, PinLayout};
#[cfg(test)]
pub(crate) use table::testing;
pub use table::{
    Backends, Change, DEFAULT_CLIENT_IP_TIMEOUT, Limits, MAX_CLIENT_IP_TIMEOUT, ServiceMaps,
    ServiceTable, SessionAffinity, Snapshot, SyncReport,
};
pub use types::{Protocol, ServicePort, validate_backend};

/// Errors of the datapath module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The datapath instance name cannot be used as a directory name under bpffs.
    #[error("invalid datapath instance name {name:?}: {reason}")]
    InvalidInstance { name: String, reason: &'static str },

    /// An interface name that Linux would not accept (and that could not name a pin safely).
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidInterface { name: String, reason: &'static str },

    /// No BPF filesystem is mounted where pins must go.
    #[error(
        "{path} is not a BPF filesystem: mount one (`mount -t bpf bpf /sys/fs/bpf`, which \
         `cargo xtask setup` does) so the datapath can pin its programs and maps"
    )]
    BpffsMissing { path: PathBuf },

    /// A filesystem operation on the pin directory or a lock file failed.
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A pinned map does not have the layout this agent expects, so adopting it would misread it.
    #[error(
        "pinned map {path} is {found}, but this agent needs {expected}; it was made by another \
         version or configuration. `skiff-agent datapath reset --instance <name>` removes the \
         pins (open connections through the datapath are lost)"
    )]
    IncompatiblePin {
        path: PathBuf,
        found: String,
        expected: String,
    },

    /// Another process holds the loader lock of this instance.
    #[error("another datapath loader holds {path}; only one may program an instance")]
    Locked { path: PathBuf },

    /// The NodePort SNAT port range is empty or starts at port 0.
    #[error("invalid SNAT port range {min}-{max}: it must be a non-empty range of ports from 1")]
    InvalidSnatPorts { min: u16, max: u16 },

    /// The eBPF object could not be loaded (parsing, map creation or BTF).
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),

    /// The eBPF object lacks a program the agent needs.
    #[error("the eBPF object has no program {name}")]
    ProgramMissing { name: &'static str },

    /// A program could not be loaded into the kernel (the verifier refused it, for one).
    #[error("loading program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },

    /// Attaching, replacing or inspecting a TCX link failed.
    #[error("attaching {hook} of {iface}")]
    Attach {
        iface: String,
        hook: Direction,
        #[source]
        source: aya::programs::ProgramError,
    },

    /// A pinned link could not be opened or converted.
    #[error("pinned link {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },

    /// Pinning an object under bpffs failed.
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },

    /// Opening a pinned map failed.
    #[error("opening pinned map {path}")]
    MapOpen {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },

    /// A map read or write failed.
    #[error("{op} on map {map}")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },

    /// A map is full, so the change was refused before anything was written.
    #[error(
        "map {map} is full ({capacity} entries): the change was not applied; raise the \
         capacity (and reset the datapath) or remove services"
    )]
    CapacityExhausted { map: &'static str, capacity: u32 },

    /// A service or backend the datapath cannot serve.
    #[error("invalid service: {reason}")]
    InvalidService { reason: String },

    /// The interface to attach to does not exist in this network namespace.
    #[error("no interface {iface} in this network namespace")]
    NoSuchInterface { iface: String },

    /// The pod address given for an interface cannot be a pod's source.
    #[error("{addr} cannot be the address of the pod behind {iface}: {reason}")]
    InvalidPodAddress {
        iface: String,
        addr: Ipv4Addr,
        reason: &'static str,
    },

    /// No pod address was given for an interface and the node's routes do not name exactly one.
    #[error(
        "cannot tell the address of the pod behind {iface}: the node routes {found:?} to it as \
         pod /32 routes, and the datapath lets the pod send only from its one address (add \
         `ip route add <pod address>/32 dev {iface}` before attaching)"
    )]
    PodAddressUnknown { iface: String, found: Vec<Ipv4Addr> },

    /// Reading interfaces or routes over netlink failed.
    #[error("{op}")]
    Netlink {
        op: String,
        #[source]
        source: io::Error,
    },

    /// The services file is unreadable or invalid; nothing was changed.
    #[error("services file {path}: {reason}")]
    StaticConfig { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
