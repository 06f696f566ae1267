//! The source check's userspace half: which address each pod interface may send from, written
//! before the programs run on the interface and removed after they stop.
//!
//! `skiff_from_pod` drops an IPv4 packet whose source is not the address recorded for the
//! interface it came from, and every IPv4 packet from an interface with no record. So the
//! record goes in before the links are attached (or their program replaced by one that checks)
//! and out only after the links are gone, and the order lives here, behind a trait, where a
//! checking fake holds it to that.

use std::{collections::BTreeSet, net::Ipv4Addr};

use super::{AttachOutcome, Direction, Error, Result};

/// The side effects of attaching and detaching a pod interface.
pub(crate) trait PodHooks {
    /// The index of `iface` in this network namespace, or None if there is no such interface.
    fn index(&mut self, iface: &str) -> Result<Option<u32>>;
    /// The indexes of every interface in this network namespace.
    fn live_indexes(&mut self) -> Result<BTreeSet<u32>>;
    /// The interface indexes that have a source record.
    fn recorded(&self) -> Result<BTreeSet<u32>>;
    fn put_source(&mut self, ifindex: u32, addr: Ipv4Addr) -> Result<()>;
    fn delete_source(&mut self, ifindex: u32) -> Result<()>;
    fn attach_links(&mut self, iface: &str) -> Result<Vec<(Direction, AttachOutcome)>>;
    /// Removes the pinned links of `iface`; returns how many there were.
    fn detach_links(&mut self, iface: &str) -> Result<usize>;
}

/// Refuses addresses no pod can have: a packet from them would be refused by every receiver or
/// would stand for someone else.
pub(crate) fn validate_pod_address(iface: &str, addr: Ipv4Addr, hairpin: Ipv4Addr) -> Result<()> {
    let reason = if addr.is_unspecified() {
        Some("0.0.0.0 is no address")
    } else if addr.is_broadcast() || addr.is_multicast() {
        Some("it is not a unicast address")
    } else if addr.is_loopback() {
        Some("it is a loopback address")
    } else if addr == hairpin {
        Some("it is the datapath's hairpin address")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidPodAddress {
            iface: iface.to_owned(),
            addr,
            reason,
        }),
        None => Ok(()),
    }
}

/// Records `addr` as the only source `iface` may send from, then attaches the programs.
pub(crate) fn attach(
    hooks: &mut impl PodHooks,
    iface: &str,
    addr: Ipv4Addr,
) -> Result<Vec<(Direction, AttachOutcome)>> {
    let index = hooks.index(iface)?.ok_or_else(|| Error::NoSuchInterface {
        iface: iface.to_owned(),
    })?;
    hooks.put_source(index, addr)?;
    hooks.attach_links(iface)
}

/// Removes the links of `iface`, then its source record (if the interface still exists; the
/// record of one that is gone is left to `prune`). Returns how many links there were.
pub(crate) fn detach(hooks: &mut impl PodHooks, iface: &str) -> Result<usize> {
    let removed = hooks.detach_links(iface)?;
    if let Some(index) = hooks.index(iface)? {
        hooks.delete_source(index)?;
    }
    Ok(removed)
}

/// Removes the records of interfaces that no longer exist (pods deleted while no agent ran);
/// no program can run on them. Returns how many went.
pub(crate) fn prune(hooks: &mut impl PodHooks) -> Result<usize> {
    let live = hooks.live_indexes()?;
    let stale: Vec<u32> = hooks
        .recorded()?
        .into_iter()
        .filter(|i| !live.contains(i))
        .collect();
    for i in &stale {
        hooks.delete_source(*i)?;
    }
    Ok(stale.len())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Interfaces, records and links in memory. After every call, failed ones included, it
    /// asserts that no interface runs the programs without a record (its pod's packets would
    /// all be dropped, or, with a wrong record, someone else's address allowed).
    #[derive(Default)]
    struct Fake {
        interfaces: BTreeMap<String, u32>,
        records: BTreeMap<u32, Ipv4Addr>,
        /// Interfaces (by index) whose links are attached, with the address they must have.
        attached: BTreeMap<u32, Ipv4Addr>,
        /// The address the next `attach_links` is for (set by the test).
        expect: Option<Ipv4Addr>,
        fail_put: bool,
        fail_attach: bool,
    }

    impl Fake {
        fn with(ifaces: &[(&str, u32)]) -> Self {
            Fake {
                interfaces: ifaces.iter().map(|(n, i)| (n.to_string(), *i)).collect(),
                ..Fake::default()
            }
        }

        fn check(&self) {
            for (i, want) in &self.attached {
                assert_eq!(
                    self.records.get(i),
                    Some(want),
                    "interface {i} runs the programs without its pod's address"
                );
            }
        }

        fn failure() -> Error {
            Error::NoSuchInterface {
                iface: "injected failure".into(),
            }
        }
    }

    impl PodHooks for Fake {
        fn index(&mut self, iface: &str) -> Result<Option<u32>> {
            Ok(self.interfaces.get(iface).copied())
        }

        fn live_indexes(&mut self) -> Result<BTreeSet<u32>> {
            Ok(self.interfaces.values().copied().collect())
        }

        fn recorded(&self) -> Result<BTreeSet<u32>> {
            Ok(self.records.keys().copied().collect())
        }

        fn put_source(&mut self, ifindex: u32, addr: Ipv4Addr) -> Result<()> {
            let r = if self.fail_put {
                Err(Self::failure())
            } else {
                self.records.insert(ifindex, addr);
                Ok(())
            };
            self.check();
            r
        }

        fn delete_source(&mut self, ifindex: u32) -> Result<()> {
            self.records.remove(&ifindex);
            self.check();
            Ok(())
        }

        fn attach_links(&mut self, iface: &str) -> Result<Vec<(Direction, AttachOutcome)>> {
            let r = if self.fail_attach {
                Err(Self::failure())
            } else {
                let i = self.interfaces[iface];
                self.attached
                    .insert(i, self.expect.expect("test sets expect"));
                Ok(vec![(Direction::Ingress, AttachOutcome::Attached)])
            };
            self.check();
            r
        }

        fn detach_links(&mut self, iface: &str) -> Result<usize> {
            let n = self
                .interfaces
                .get(iface)
                .and_then(|i| self.attached.remove(i))
                .map_or(0, |_| 2);
            self.check();
            Ok(n)
        }
    }

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 20);

    #[test]
    fn the_address_is_recorded_before_the_programs_run_and_removed_after_they_stop() {
        let mut f = Fake::with(&[("vpod", 7)]);
        f.expect = Some(POD);
        attach(&mut f, "vpod", POD).unwrap();
        assert_eq!(f.records.get(&7), Some(&POD));
        assert_eq!(detach(&mut f, "vpod").unwrap(), 2);
        assert!(f.records.is_empty() && f.attached.is_empty());
    }

    #[test]
    fn a_failed_record_write_attaches_nothing() {
        let mut f = Fake::with(&[("vpod", 7)]);
        f.fail_put = true;
        f.expect = Some(POD);
        assert!(attach(&mut f, "vpod", POD).is_err());
        assert!(f.attached.is_empty());
    }

    #[test]
    fn a_failed_attach_leaves_a_record_that_no_program_uses_and_detach_removes_it() {
        let mut f = Fake::with(&[("vpod", 7)]);
        f.fail_attach = true;
        assert!(attach(&mut f, "vpod", POD).is_err());
        assert_eq!(detach(&mut f, "vpod").unwrap(), 0);
        assert!(f.records.is_empty());
    }

    #[test]
    fn an_interface_that_does_not_exist_is_refused_before_anything_is_written() {
        let mut f = Fake::with(&[]);
        let err = attach(&mut f, "vgone", POD).unwrap_err();
        assert!(err.to_string().contains("vgone"), "{err}");
        assert!(f.records.is_empty());
    }

    #[test]
    fn prune_removes_only_records_of_interfaces_that_are_gone() {
        let mut f = Fake::with(&[("vpod", 7)]);
        f.records.insert(7, POD);
        f.records.insert(9, Ipv4Addr::new(10, 244, 1, 30));
        assert_eq!(prune(&mut f).unwrap(), 1);
        assert_eq!(f.records.keys().copied().collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn addresses_no_pod_can_have_are_refused() {
        let hairpin = Ipv4Addr::new(169, 254, 0, 42);
        for bad in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            "169.254.0.42",
        ] {
            let addr: Ipv4Addr = bad.parse().unwrap();
            assert!(
                validate_pod_address("vpod", addr, hairpin).is_err(),
                "{bad}"
            );
        }
        assert!(validate_pod_address("vpod", POD, hairpin).is_ok());
    }
}
