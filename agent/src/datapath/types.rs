//! The agent's view of what the datapath serves: service ports and their backends, in host types.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use skiff_common::{
    BACKEND_FLAG_DRAINING, BackendValue, IPPROTO_TCP, IPPROTO_UDP, ServiceKey, addr_octets,
    port_from_raw, raw_addr, raw_port,
};

/// A transport protocol the datapath balances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            _ => Err(format!("unknown protocol {s:?}: expected TCP or UDP")),
        }
    }
}

/// One port of a Service: the (virtual IP, port, protocol) clients connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServicePort {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl ServicePort {
    pub fn new(vip: Ipv4Addr, port: u16, protocol: Protocol) -> Self {
        ServicePort {
            vip,
            port,
            protocol,
        }
    }

    /// The service entry of a NodePort whose backends differ from its Service port's
    /// (`externalTrafficPolicy: Local`): keyed by the unspecified address and the NodePort
    /// itself, so it has its own ID and slots. Only the NodePort map names it; no packet is
    /// addressed to 0.0.0.0 (a pod's own kernel keeps such packets on its loopback).
    pub fn node_port_entry(node_port: u16, protocol: Protocol) -> Self {
        ServicePort::new(Ipv4Addr::UNSPECIFIED, node_port, protocol)
    }

    /// Whether this is a NodePort's own entry (see `node_port_entry`).
    pub fn is_node_port_entry(&self) -> bool {
        self.vip.is_unspecified()
    }

    pub(crate) fn key(&self) -> ServiceKey {
        ServiceKey {
            addr: raw_addr(self.vip.octets()),
            port: raw_port(self.port),
            proto: self.protocol.number(),
            _pad: 0,
        }
    }

    /// The service port a map key describes; `None` for the per-VIP marker entries.
    pub(crate) fn from_key(key: &ServiceKey) -> Option<ServicePort> {
        Some(ServicePort {
            vip: Ipv4Addr::from(addr_octets(key.addr)),
            port: port_from_raw(key.port),
            protocol: Protocol::from_number(key.proto)?,
        })
    }

    /// Checks what the datapath cannot serve.
    pub fn validate(&self) -> Result<(), String> {
        // The unspecified address is a NodePort's own entry (`node_port_entry`).
        if self.vip.is_broadcast() || self.vip.is_multicast() {
            return Err(format!("{self}: the VIP must be a unicast address"));
        }
        if self.port == 0 {
            return Err(format!("{self}: the port must be 1-65535"));
        }
        Ok(())
    }
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_node_port_entry() {
            // A NodePort's own entry: the node's address, whichever it is.
            return write!(f, "node:{}/{}", self.port, self.protocol);
        }
        write!(f, "{}:{}/{}", self.vip, self.port, self.protocol)
    }
}

pub(crate) fn backend_value(addr: SocketAddrV4, service_id: u32, draining: bool) -> BackendValue {
    BackendValue {
        addr: raw_addr(addr.ip().octets()),
        port: raw_port(addr.port()),
        flags: if draining { BACKEND_FLAG_DRAINING } else { 0 },
        _pad: 0,
        service_id,
    }
}

pub(crate) fn backend_is_draining(v: &BackendValue) -> bool {
    v.flags & BACKEND_FLAG_DRAINING != 0
}

pub(crate) fn backend_addr(v: &BackendValue) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(addr_octets(v.addr)), port_from_raw(v.port))
}

/// Checks one backend address.
pub fn validate_backend(addr: &SocketAddrV4) -> Result<(), String> {
    let ip = addr.ip();
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(format!("backend {addr}: must be a unicast address"));
    }
    if addr.port() == 0 {
        return Err(format!("backend {addr}: the port must be 1-65535"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_port_survives_the_map_key_round_trip() {
        let sp = ServicePort::new(Ipv4Addr::new(10, 96, 0, 10), 8080, Protocol::Udp);
        assert_eq!(ServicePort::from_key(&sp.key()), Some(sp));
    }

    #[test]
    fn a_vip_marker_key_is_not_a_service_port() {
        let mut k = ServicePort::new(Ipv4Addr::new(10, 96, 0, 10), 80, Protocol::Tcp).key();
        k.port = 0;
        k.proto = 0;
        assert_eq!(ServicePort::from_key(&k), None);
    }

    #[test]
    fn unusable_service_ports_and_backends_are_refused_with_the_reason() {
        let bad = ServicePort::new(Ipv4Addr::BROADCAST, 80, Protocol::Tcp);
        assert!(bad.validate().unwrap_err().contains("unicast"));
        // The unspecified address is a NodePort's own entry (the table checks its NodePort).
        let own = ServicePort::node_port_entry(30080, Protocol::Tcp);
        assert_eq!(own.validate(), Ok(()));
        assert_eq!(own.to_string(), "node:30080/TCP");
        let bad = ServicePort::new(Ipv4Addr::new(10, 96, 0, 1), 0, Protocol::Tcp);
        assert!(bad.validate().unwrap_err().contains("1-65535"));
        let bad = SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 1), 80);
        assert!(validate_backend(&bad).unwrap_err().contains("unicast"));
    }

    #[test]
    fn protocol_parses_either_case_and_names_the_choices_when_wrong() {
        assert_eq!("udp".parse::<Protocol>(), Ok(Protocol::Udp));
        assert!(
            "sctp"
                .parse::<Protocol>()
                .unwrap_err()
                .contains("TCP or UDP")
        );
    }
}
