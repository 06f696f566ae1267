//! Services: a ClusterIP and node ports from the server's pools (assigned when left empty, kept
//! across updates that leave them out, released on delete).

use std::{collections::BTreeSet, net::Ipv4Addr, str::FromStr};

use skiff_api::{Kind, Object, ResourceInfo, kinds::Service};

use super::{Slot, Strategy};
use crate::alloc::{Allocation, Pool};

#[derive(Debug)]
pub(super) struct ServiceStrategy;

impl Strategy for ServiceStrategy {
    fn info(&self) -> &'static ResourceInfo {
        Service::INFO
    }

    fn keep_assigned(&self, new: &mut Object, old: &Object) {
        if let (Object::Service(new), Object::Service(old)) = (new, old) {
            carry_over(new, old);
        }
    }

    fn allocations(&self, o: &Object) -> BTreeSet<Allocation> {
        match o {
            Object::Service(s) => held(s),
            _ => BTreeSet::new(),
        }
    }

    fn unallocated(&self, o: &Object) -> Vec<Slot> {
        let Object::Service(s) = o else {
            return Vec::new();
        };
        let mut slots = Vec::new();
        if s.spec.cluster_ip.is_empty() {
            slots.push(Slot {
                pool: Pool::ClusterIp,
                index: 0,
            });
        }
        if s.spec.type_ == "NodePort" {
            slots.extend(
                s.spec
                    .ports
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.node_port == 0)
                    .map(|(index, _)| Slot {
                        pool: Pool::NodePort,
                        index,
                    }),
            );
        }
        slots
    }

    fn assign(&self, o: &mut Object, slot: Slot, given: Allocation) {
        let Object::Service(s) = o else { return };
        match given {
            Allocation::ClusterIp(ip) => s.spec.cluster_ip = ip.to_string(),
            Allocation::NodePort(port) => {
                if let Some(p) = s.spec.ports.get_mut(slot.index) {
                    p.node_port = i32::from(port);
                }
            }
        }
    }

    fn canonicalize(&self, o: &mut Object) {
        // `clusterIPs` mirrors `clusterIP` (single-stack), whoever chose the address.
        if let Object::Service(s) = o
            && !s.spec.cluster_ip.is_empty()
            && s.spec.cluster_ips.is_empty()
        {
            s.spec.cluster_ips = vec![s.spec.cluster_ip.clone()];
        }
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
fn carry_over(new: &mut Service, old: &Service) {
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

#[cfg(test)]
mod tests {
    use skiff_api::{kinds::ServicePort, print::service::ports};

    use super::*;

    fn port(name: &str, port: i32, node_port: i32) -> ServicePort {
        ServicePort {
            name: name.into(),
            protocol: "TCP".into(),
            port,
            node_port,
            ..Default::default()
        }
    }

    fn node_port_service() -> Service {
        let mut s = Service::default();
        s.spec.type_ = "NodePort".into();
        s.spec.cluster_ip = "10.96.0.7".into();
        s.spec.ports = vec![port("http", 80, 30080)];
        s
    }

    #[test]
    fn swapped_port_names_never_give_one_node_port_to_two_ports() {
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
        let old = node_port_service();
        let mut new = old.clone();
        new.spec.cluster_ip.clear();
        new.spec.ports[0].node_port = 0;
        let mut o = new.into_object();
        ServiceStrategy.keep_assigned(&mut o, &old.into_object());
        let held = ServiceStrategy.allocations(&o);
        let Object::Service(new) = o else {
            panic!("a service");
        };
        assert_eq!(new.spec.cluster_ip, "10.96.0.7");
        assert_eq!(new.spec.ports[0].node_port, 30080);
        assert_eq!(held.len(), 2);
    }

    #[test]
    fn leaving_node_port_gives_the_node_ports_back() {
        let old = node_port_service();
        let mut new = old.clone();
        new.spec.type_ = "ClusterIP".into();
        carry_over(&mut new, &old);
        assert_eq!(new.spec.ports[0].node_port, 0);
        assert_eq!(
            held(&new),
            [Allocation::ClusterIp(Ipv4Addr::new(10, 96, 0, 7))].into(),
            "the node port is released by the update"
        );
    }

    #[test]
    fn a_new_service_asks_for_an_address_and_a_node_port_for_each_port_left_empty() {
        let mut s = Service::default();
        s.spec.type_ = "NodePort".into();
        s.spec.ports = vec![port("a", 80, 0), port("b", 81, 30081), port("c", 82, 0)];
        let mut o = s.into_object();
        let slots = ServiceStrategy.unallocated(&o);
        assert_eq!(
            slots,
            [
                Slot {
                    pool: Pool::ClusterIp,
                    index: 0
                },
                Slot {
                    pool: Pool::NodePort,
                    index: 0
                },
                Slot {
                    pool: Pool::NodePort,
                    index: 2
                },
            ]
        );
        let given = [
            Allocation::ClusterIp(Ipv4Addr::new(10, 96, 0, 9)),
            Allocation::NodePort(30080),
            Allocation::NodePort(30082),
        ];
        for (slot, a) in slots.into_iter().zip(given) {
            ServiceStrategy.assign(&mut o, slot, a);
        }
        ServiceStrategy.canonicalize(&mut o);
        assert!(ServiceStrategy.unallocated(&o).is_empty());
        let Object::Service(s) = &o else {
            panic!("a service");
        };
        assert_eq!(s.spec.cluster_ips, ["10.96.0.9"]);
        assert_eq!(ports(s), "80:30080/TCP,81:30081/TCP,82:30082/TCP");
        assert_eq!(ServiceStrategy.allocations(&o).len(), 4);
    }

    #[test]
    fn a_headless_or_cluster_ip_service_asks_for_no_node_port() {
        let mut s = Service::default();
        s.spec.type_ = "ClusterIP".into();
        s.spec.cluster_ip = "None".into();
        s.spec.ports = vec![port("a", 80, 0)];
        let o = s.into_object();
        assert!(ServiceStrategy.unallocated(&o).is_empty());
        assert!(ServiceStrategy.allocations(&o).is_empty(), "headless");
    }
}
