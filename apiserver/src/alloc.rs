//! ClusterIP and NodePort allocation. Each allocated address or port is one etcd key, written in
//! the same transaction as the Service, so two creates can never get the same one and the state
//! survives API server restarts.

use std::{collections::BTreeSet, net::Ipv4Addr, str::FromStr};

use skiff_api::kinds::Service;

/// Where Services get their addresses and node ports from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges {
    /// First usable address (network address + 1) and count of usable addresses.
    ip_base: u32,
    ip_count: u32,
    cidr: String,
    /// Inclusive.
    ports: (u16, u16),
}

/// One allocated thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Allocation {
    ClusterIp(Ipv4Addr),
    NodePort(u16),
}

impl Allocation {
    /// The key under the store prefix.
    pub fn key_suffix(&self) -> String {
        match self {
            Allocation::ClusterIp(ip) => format!("ranges/serviceips/{ip}"),
            Allocation::NodePort(p) => format!("ranges/servicenodeports/{p}"),
        }
    }
}

/// Why a range flag was refused.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// The Service CIDR is not `a.b.c.d/len` with room for addresses.
    #[error("invalid service CIDR {0:?}: expected IPv4 a.b.c.d/len with len between 8 and 30")]
    Cidr(String),
    /// The NodePort range is not `lo-hi`.
    #[error("invalid node port range {0:?}: expected lo-hi within 1-65535")]
    Ports(String),
}

impl Ranges {
    pub fn new(cidr: &str, ports: &str) -> Result<Ranges, RangeError> {
        let (addr, len) = cidr
            .split_once('/')
            .ok_or_else(|| RangeError::Cidr(cidr.into()))?;
        let addr = Ipv4Addr::from_str(addr).map_err(|_| RangeError::Cidr(cidr.into()))?;
        let len: u32 = len.parse().map_err(|_| RangeError::Cidr(cidr.into()))?;
        if !(8..=30).contains(&len) {
            return Err(RangeError::Cidr(cidr.into()));
        }
        let mask = u32::MAX << (32 - len);
        let network = u32::from(addr) & mask;
        if network != u32::from(addr) {
            return Err(RangeError::Cidr(cidr.into()));
        }
        let (lo, hi) = ports
            .split_once('-')
            .ok_or_else(|| RangeError::Ports(ports.into()))?;
        let lo: u16 = lo
            .trim()
            .parse()
            .map_err(|_| RangeError::Ports(ports.into()))?;
        let hi: u16 = hi
            .trim()
            .parse()
            .map_err(|_| RangeError::Ports(ports.into()))?;
        if lo == 0 || hi < lo {
            return Err(RangeError::Ports(ports.into()));
        }
        Ok(Ranges {
            ip_base: network + 1,
            ip_count: (1u32 << (32 - len)) - 2,
            cidr: cidr.to_owned(),
            ports: (lo, hi),
        })
    }

    pub fn cidr(&self) -> &str {
        &self.cidr
    }

    pub fn port_range(&self) -> (u16, u16) {
        self.ports
    }

    pub fn contains_ip(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= self.ip_base && v - self.ip_base < self.ip_count
    }

    pub fn contains_port(&self, p: i32) -> bool {
        p >= i32::from(self.ports.0) && p <= i32::from(self.ports.1)
    }

    /// A random address from the range.
    pub fn random_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ip_base + (random_u64() % u64::from(self.ip_count)) as u32)
    }

    /// A random port from the range.
    pub fn random_port(&self) -> u16 {
        let span = u64::from(self.ports.1 - self.ports.0) + 1;
        self.ports.0 + (random_u64() % span) as u16
    }

    /// A free address, given every taken one (the fallback when random picks keep colliding).
    pub fn free_ip(&self, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        if taken.len() as u64 >= u64::from(self.ip_count) {
            return None;
        }
        let start = (random_u64() % u64::from(self.ip_count)) as u32;
        (0..self.ip_count)
            .map(|i| Ipv4Addr::from(self.ip_base + (start + i) % self.ip_count))
            .find(|ip| !taken.contains(ip))
    }

    /// A free port, given every taken one.
    pub fn free_port(&self, taken: &BTreeSet<u16>) -> Option<u16> {
        (self.ports.0..=self.ports.1).find(|p| !taken.contains(p))
    }
}

/// What a Service holds: its ClusterIP (unless headless) and its node ports.
pub fn held(svc: &Service) -> BTreeSet<Allocation> {
    let mut out = BTreeSet::new();
    if let Ok(ip) = Ipv4Addr::from_str(&svc.spec.cluster_ip) {
        out.insert(Allocation::ClusterIp(ip));
    }
    for p in &svc.spec.ports {
        if let Ok(port) = u16::try_from(p.node_port)
            && port != 0
        {
            out.insert(Allocation::NodePort(port));
        }
    }
    out
}

/// On update, a field the writer left empty keeps what the stored Service was given, the way
/// `kubectl apply` preserves server-assigned fields.
pub fn carry_over(new: &mut Service, old: &Service) {
    // Leaving NodePort gives the ports back (as Kubernetes does), so a get-modify-put that only
    // changed the type is valid.
    if new.spec.type_ == "ClusterIP" && old.spec.type_ == "NodePort" {
        for p in &mut new.spec.ports {
            p.node_port = 0;
        }
        if new.spec.external_traffic_policy == old.spec.external_traffic_policy {
            new.spec.external_traffic_policy.clear();
        }
    }
    if new.spec.cluster_ip.is_empty() {
        new.spec.cluster_ip = old.spec.cluster_ip.clone();
        new.spec.cluster_ips = old.spec.cluster_ips.clone();
    }
    if new.spec.type_ == "NodePort" || (new.spec.type_.is_empty() && old.spec.type_ == "NodePort") {
        // A port keeps the node port of the old port with its name (or, unnamed, its number
        // and protocol); each old node port goes to one new port at most, and never to a port
        // while another new port names it explicitly.
        let mut used: BTreeSet<i32> = new.spec.ports.iter().map(|p| p.node_port).collect();
        for p in new.spec.ports.iter_mut().filter(|p| p.node_port == 0) {
            let same = old.spec.ports.iter().find(|o| {
                let matches = if p.name.is_empty() || o.name.is_empty() {
                    o.port == p.port && o.protocol == p.protocol
                } else {
                    o.name == p.name
                };
                matches && o.node_port != 0 && !used.contains(&o.node_port)
            });
            if let Some(o) = same {
                p.node_port = o.node_port;
                used.insert(o.node_port);
            }
        }
    }
}

/// Random bits from the OS (no seeding to get wrong, nothing shared between replicas).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // Fall back to the clock; uniqueness is still enforced by etcd.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return nanos ^ u64::from(std::process::id()).rotate_left(32);
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_cidr_excludes_network_and_broadcast_addresses() -> Result<(), RangeError> {
        let r = Ranges::new("10.96.0.0/30", "30000-30001")?;
        assert!(!r.contains_ip(Ipv4Addr::new(10, 96, 0, 0)));
        assert!(r.contains_ip(Ipv4Addr::new(10, 96, 0, 1)));
        assert!(r.contains_ip(Ipv4Addr::new(10, 96, 0, 2)));
        assert!(!r.contains_ip(Ipv4Addr::new(10, 96, 0, 3)));
        for _ in 0..50 {
            let ip = r.random_ip();
            assert!(r.contains_ip(ip), "{ip}");
        }
        let taken: BTreeSet<_> = [Ipv4Addr::new(10, 96, 0, 1)].into();
        assert_eq!(r.free_ip(&taken), Some(Ipv4Addr::new(10, 96, 0, 2)));
        let all: BTreeSet<_> = [Ipv4Addr::new(10, 96, 0, 1), Ipv4Addr::new(10, 96, 0, 2)].into();
        assert_eq!(r.free_ip(&all), None);
        assert_eq!(r.free_port(&[30000].into()), Some(30001));
        assert_eq!(r.free_port(&[30000, 30001].into()), None);
        Ok(())
    }

    #[test]
    fn bad_ranges_are_refused() {
        for (cidr, ports) in [
            ("10.96.0.1/12", "30000-32767"),
            ("10.96.0.0", "30000-32767"),
            ("10.96.0.0/31", "30000-32767"),
            ("10.96.0.0/12", "32767-30000"),
            ("10.96.0.0/12", "0-10"),
            ("10.96.0.0/12", "30000"),
        ] {
            assert!(Ranges::new(cidr, ports).is_err(), "{cidr} {ports}");
        }
    }

    #[test]
    fn swapped_port_names_never_give_one_node_port_to_two_ports() {
        let port = |name: &str, port: i32, node_port: i32| skiff_api::kinds::ServicePort {
            name: name.into(),
            protocol: "TCP".into(),
            port,
            node_port,
            ..Default::default()
        };
        let mut old = Service::default();
        old.spec.type_ = "NodePort".into();
        old.spec.ports = vec![port("a", 80, 30080), port("b", 81, 30081)];
        let mut new = old.clone();
        new.spec.ports = vec![port("b", 80, 0), port("c", 81, 0)];
        carry_over(&mut new, &old);
        assert_eq!(new.spec.ports[0].node_port, 30081, "b keeps b's port");
        assert_eq!(
            new.spec.ports[1].node_port, 0,
            "c is new and gets a fresh one"
        );
    }

    #[test]
    fn update_without_assigned_fields_keeps_the_stored_ones() {
        let mut old = Service::default();
        old.spec.type_ = "NodePort".into();
        old.spec.cluster_ip = "10.96.0.7".into();
        old.spec.ports = vec![skiff_api::kinds::ServicePort {
            name: "http".into(),
            protocol: "TCP".into(),
            port: 80,
            node_port: 30080,
            ..Default::default()
        }];
        let mut new = old.clone();
        new.spec.cluster_ip.clear();
        new.spec.ports[0].node_port = 0;
        carry_over(&mut new, &old);
        assert_eq!(new.spec.cluster_ip, "10.96.0.7");
        assert_eq!(new.spec.ports[0].node_port, 30080);
        assert_eq!(held(&new).len(), 2);
    }
}
