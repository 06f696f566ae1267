//! IPv4 networks as the API writes them (`10.244.3.0/24`): pod CIDRs of nodes, the cluster's
//! pod CIDR they are carved from, and the addresses a node hands its pods.

use std::{fmt, net::Ipv4Addr, str::FromStr};

/// An IPv4 network: its first address and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

/// Why a CIDR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: {why}")]
pub struct CidrError {
    pub input: String,
    pub why: &'static str,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl Ipv4Cidr {
    /// Parses `10.244.3.0/24`. The address must be the network's first (no host bits set).
    pub fn parse(s: &str) -> Result<Ipv4Cidr, CidrError> {
        let bad = |why| CidrError {
            input: s.to_owned(),
            why,
        };
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX"))?;
        let network: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| bad("the prefix must be a number from 0 to 32"))?;
        if u32::from(network) & !mask(prefix) != 0 {
            return Err(bad("host bits are set (write the network's first address)"));
        }
        Ok(Ipv4Cidr { network, prefix })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The last address (the broadcast address of a subnet).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// The `n`th subnet of length `prefix` inside this network, if there is one.
    pub fn subnet(&self, prefix: u8, n: u32) -> Option<Ipv4Cidr> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        let count = 1u64 << (prefix - self.prefix);
        if u64::from(n) >= count {
            return None;
        }
        let step = if prefix == 32 {
            1
        } else {
            1u32 << (32 - prefix)
        };
        Some(Ipv4Cidr {
            network: Ipv4Addr::from(u32::from(self.network) + n * step),
            prefix,
        })
    }

    /// How many subnets of length `prefix` this network holds.
    pub fn subnet_count(&self, prefix: u8) -> u64 {
        if prefix < self.prefix || prefix > 32 {
            0
        } else {
            1u64 << (prefix - self.prefix)
        }
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ipv4Cidr::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_contain_overlap_and_split() {
        let c = Ipv4Cidr::parse("10.244.0.0/16").unwrap();
        assert_eq!(c.to_string(), "10.244.0.0/16");
        assert_eq!(c.last(), Ipv4Addr::new(10, 244, 255, 255));
        assert!(c.contains(Ipv4Addr::new(10, 244, 3, 7)));
        assert!(!c.contains(Ipv4Addr::new(10, 245, 0, 0)));
        assert_eq!(c.subnet_count(24), 256);
        assert_eq!(c.subnet(24, 3).unwrap().to_string(), "10.244.3.0/24");
        assert_eq!(c.subnet(24, 256), None);
        assert_eq!(c.subnet(8, 0), None);
        let s = Ipv4Cidr::parse("10.244.3.0/24").unwrap();
        assert!(c.overlaps(&s) && s.overlaps(&c));
        assert!(!s.overlaps(&Ipv4Cidr::parse("10.244.4.0/24").unwrap()));
        assert_eq!(
            Ipv4Cidr::parse("0.0.0.0/0").unwrap().last(),
            Ipv4Addr::BROADCAST
        );
        for bad in [
            "10.244.3.1/24",
            "10.244.3.0",
            "10.244.3.0/33",
            "fd00::/64",
            "x/8",
        ] {
            let e = Ipv4Cidr::parse(bad).unwrap_err();
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
