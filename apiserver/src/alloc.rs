//! ClusterIP and NodePort allocation. Each allocated address or port is one etcd key, written in
//! the same transaction as the object holding it, so two creates can never get the same one and
//! the state survives API server restarts. Which objects hold what is their strategy's business
//! (`registry/`); this module only knows the pools.

use std::{collections::BTreeSet, net::Ipv4Addr, str::FromStr};

use skiff_api::FieldError;

use super::{
    error::{ApiError, Result},
    store::Store,
};

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

/// A pool allocations are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Service virtual IPs, from the Service CIDR.
    ClusterIp,
    /// Ports every node forwards, from the NodePort range.
    NodePort,
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

/// Explicit allocations (not held before) outside the configured ranges, as field errors: a
/// NodePort of 22 would capture every node's SSH.
pub fn out_of_range<'a>(
    ranges: &Ranges,
    fresh: impl Iterator<Item = &'a Allocation>,
) -> Vec<FieldError> {
    let (lo, hi) = ranges.port_range();
    fresh
        .filter_map(|a| match a {
            Allocation::ClusterIp(ip) if !ranges.contains_ip(*ip) => Some(FieldError::new(
                "spec.clusterIP",
                format!(
                    "Invalid value: {:?}: provided IP is not in the valid range. The range of valid IPs is {}",
                    ip.to_string(),
                    ranges.cidr()
                ),
            )),
            Allocation::NodePort(p) if !ranges.contains_port(i32::from(*p)) => Some(FieldError::new(
                "spec.ports.nodePort",
                format!("Invalid value: {p}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
            )),
            _ => None,
        })
        .collect()
}

/// The writer's explicit allocations among those another object took first, as field errors.
pub fn already_allocated(explicit: &BTreeSet<Allocation>, taken: &[Allocation]) -> Vec<FieldError> {
    taken
        .iter()
        .filter(|a| explicit.contains(a))
        .map(|a| match a {
            Allocation::ClusterIp(ip) => FieldError::new(
                "spec.clusterIP",
                format!(
                    "Invalid value: {:?}: provided IP is already allocated",
                    ip.to_string()
                ),
            ),
            Allocation::NodePort(p) => FieldError::new(
                "spec.ports.nodePort",
                format!("Invalid value: {p}: provided port is already allocated"),
            ),
        })
        .collect()
}

/// Random picks that keep colliding before the pool is scanned for a free one.
const RANDOM_TRIES: usize = 4;

/// Picks free addresses and ports: at random (so concurrent API servers rarely collide), or by a
/// scan of the pool's keys when random picks keep landing on taken ones. Whether a pick really is
/// free is decided by the transaction that claims it.
#[derive(Debug, Clone, Copy)]
pub struct Allocator<'a> {
    pub store: &'a Store,
    pub ranges: &'a Ranges,
}

impl Allocator<'_> {
    /// A free allocation from `pool`, none of `held` (what the object already holds or was
    /// given during this request).
    pub async fn pick(&self, pool: Pool, held: &BTreeSet<Allocation>) -> Result<Allocation> {
        let random = || match pool {
            Pool::ClusterIp => Allocation::ClusterIp(self.ranges.random_ip()),
            Pool::NodePort => Allocation::NodePort(self.ranges.random_port()),
        };
        let mut a = random();
        let mut tries = 0;
        while held.contains(&a) || self.taken(a).await? {
            tries += 1;
            if tries > RANDOM_TRIES {
                return match pool {
                    Pool::ClusterIp => self.scan_free_ip().await.map(Allocation::ClusterIp),
                    Pool::NodePort => self.scan_free_port(held).await.map(Allocation::NodePort),
                };
            }
            a = random();
        }
        Ok(a)
    }

    async fn taken(&self, a: Allocation) -> Result<bool> {
        let (stored, _) = self.store.get(&self.store.raw_key(&a.key_suffix())).await?;
        Ok(stored.is_some())
    }

    /// What is allocated under the directory `dir` (`ranges/<kind>/`): its keys' last parts.
    async fn stored<T: FromStr + Ord>(&self, dir: &str) -> Result<BTreeSet<T>> {
        let prefix = self.store.raw_key(dir);
        Ok(self
            .store
            .keys(&prefix)
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix)?.parse().ok())
            .collect())
    }

    async fn scan_free_ip(&self) -> Result<Ipv4Addr> {
        let taken: BTreeSet<Ipv4Addr> = self.stored("ranges/serviceips/").await?;
        self.ranges.free_ip(&taken).ok_or_else(|| {
            ApiError::RangeFull(format!(
                "spec.clusterIP: no free address left in the Service CIDR {}",
                self.ranges.cidr()
            ))
        })
    }

    async fn scan_free_port(&self, held: &BTreeSet<Allocation>) -> Result<u16> {
        let mut taken: BTreeSet<u16> = self.stored("ranges/servicenodeports/").await?;
        taken.extend(held.iter().filter_map(|a| match a {
            Allocation::NodePort(p) => Some(*p),
            Allocation::ClusterIp(_) => None,
        }));
        let (lo, hi) = self.ranges.port_range();
        self.ranges.free_port(&taken).ok_or_else(|| {
            ApiError::RangeFull(format!(
                "spec.ports.nodePort: no free port left in the NodePort range {lo}-{hi}"
            ))
        })
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
    fn explicit_allocations_outside_the_ranges_are_field_errors() -> Result<(), RangeError> {
        let r = Ranges::new("10.96.0.0/12", "30000-32767")?;
        let fresh = [
            Allocation::ClusterIp(Ipv4Addr::new(10, 96, 0, 10)),
            Allocation::ClusterIp(Ipv4Addr::new(192, 168, 0, 1)),
            Allocation::NodePort(30080),
            Allocation::NodePort(22),
        ];
        let errors = out_of_range(&r, fresh.iter());
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.clusterIP", "spec.ports.nodePort"]);
        assert!(errors[0].message.contains("10.96.0.0/12"), "{errors:?}");
        assert!(errors[1].message.contains("30000-32767"), "{errors:?}");
        Ok(())
    }

    #[test]
    fn only_what_the_writer_asked_for_by_value_is_reported_as_already_allocated() {
        let asked = Allocation::NodePort(30080);
        let picked = Allocation::NodePort(30999);
        let errors = already_allocated(&[asked].into(), &[asked, picked]);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            "spec.ports.nodePort: Invalid value: 30080: provided port is already allocated"
        );
    }
}
