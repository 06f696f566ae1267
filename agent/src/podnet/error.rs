//! What can go wrong making, finding and removing pod networks and node routes.

use std::{io, net::Ipv4Addr, path::PathBuf};

use skiff_api::net::Ipv4Cidr;

use crate::{ipam::IpamError, paths::PathError};

/// The pod network's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of the pod network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A pod id that is not a pod uid (never made into a name or a path).
    #[error("invalid pod id {pod_id:?}: it must be 1 to 64 characters of [a-z0-9-] (a pod uid)")]
    InvalidPodId { pod_id: String },
    /// A name made of a pod id is not a single path component.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The node's pod CIDR leaves no room for a gateway and pods, or is too large.
    #[error("the pod CIDR {cidr} is not between /8 and /30: it needs room for a gateway and pods")]
    CidrSize { cidr: Ipv4Cidr },
    /// The configured MTU is not one IPv4 can use.
    #[error("MTU {mtu} is out of range: IPv4 needs 68 to 65535")]
    Mtu { mtu: u32 },
    /// The address is not one a pod of this node may get.
    #[error(
        "cannot give pod {pod_id} the address {ip}: pods get addresses of {cidr} other than its network, gateway ({gateway}) and broadcast addresses"
    )]
    AddressNotAssignable {
        pod_id: String,
        ip: Ipv4Addr,
        cidr: Ipv4Cidr,
        gateway: Ipv4Addr,
    },
    /// The pod has a network with another address already (`have` says where it was seen).
    #[error(
        "pod {pod_id} already has a network with the address {have}; tear it down before giving it {ip}"
    )]
    OtherAddress {
        pod_id: String,
        have: String,
        ip: Ipv4Addr,
    },
    /// Another link has the pod's /32 route.
    #[error(
        "{ip}/32 is already routed to another link ({dev}): does another pod have this address? (see `ip route show {ip}`)"
    )]
    RouteTaken { ip: Ipv4Addr, dev: String },
    /// A link that was just made or found is not there.
    #[error("{what}")]
    Vanished { what: String },
    /// A netlink request failed (the error says which).
    #[error(transparent)]
    Netlink(#[from] io::Error),
    /// A file of the pod network (its namespace's bind mount, a sysctl) could not be handled.
    #[error("{action} {}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The pod's network namespace could not be entered.
    #[error("entering the pod netns {}", path.display())]
    EnterNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Work inside the pod's network namespace failed.
    #[error("in the pod netns {}", path.display())]
    InNetns {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
    /// Setting up a pod's network failed.
    #[error("setting up the network of pod {pod_id} ({ip})")]
    Setup {
        pod_id: String,
        ip: Ipv4Addr,
        #[source]
        source: Box<Error>,
    },
    /// Tearing down a pod's network failed.
    #[error("tearing down the network of pod {pod_id}")]
    Teardown {
        pod_id: String,
        #[source]
        source: Box<Error>,
    },
    /// Looking at a pod's network failed.
    #[error("inspecting the network of pod {pod_id}")]
    Inspect {
        pod_id: String,
        #[source]
        source: Box<Error>,
    },
    /// The pod's address could not be allocated, released or listed.
    #[error("{action}")]
    Address {
        action: &'static str,
        #[source]
        source: IpamError,
    },
    /// The same destination is asked for with two gateways.
    #[error("node routes: {cidr} is given twice, via {first} and via {second}")]
    DuplicateNodeRoute {
        cidr: Ipv4Cidr,
        first: Ipv4Addr,
        second: Ipv4Addr,
    },
    /// Some route changes failed (each described); the others were made.
    #[error(
        "syncing the routes to other nodes' pod CIDRs: {} change(s) failed: {}",
        failures.len(),
        failures.join("; ")
    )]
    NodeRoutes { failures: Vec<String> },
    /// A route that is not Skiff's has the Service CIDR.
    #[error(
        "another route to {cidr} is in the way of the Service CIDR's blackhole route; remove it (see `ip route show {cidr}`)"
    )]
    BlackholeInTheWay {
        cidr: Ipv4Cidr,
        #[source]
        source: io::Error,
    },
    /// The work ran on a blocking thread that died.
    #[error("the network task failed")]
    Task {
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Why a connection from inside a pod could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The pod's network namespace could not be entered.
    #[error("entering the pod's network namespace")]
    EnterNetns {
        #[source]
        source: io::Error,
    },
    /// No socket could be made in it.
    #[error("creating a socket")]
    Socket {
        #[source]
        source: io::Error,
    },
    /// The connection failed (refused, unreachable, timed out).
    #[error("dial tcp {addr}")]
    Connect {
        addr: std::net::SocketAddrV4,
        #[source]
        source: io::Error,
    },
}
