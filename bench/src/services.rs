//! The Service set every mode is given at a scale: one measured Service, `bench/app`, among
//! filler Services that look like a cluster's (one TCP port, a few endpoints each).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use skiff_agent::datapath::{self, static_config::Desired};
use skiff_testbed::topo::backend_ip;

use crate::model::{Protocol, Service, ServicePort, ServiceSet};

/// The measured Service's address.
pub const APP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Filler Service `i` gets `FILLER_VIP_BASE + i` (inside the Service CIDR 10.96.0.0/12).
const FILLER_VIP_BASE: u32 = u32::from_be_bytes([10, 100, 0, 0]);
/// Filler endpoints are pod addresses nobody sends to, above the benchmark's own pods
/// (10.244.1.0/24).
const FILLER_EP_BASE: u32 = u32::from_be_bytes([10, 244, 2, 0]);

/// Ports of the measured Service and the servers behind them.
pub const HTTP_PORT: u16 = 80;
pub const RR_PORT: u16 = 9000;
pub const CRR_PORT: u16 = 9001;
pub const IPERF_PORT: u16 = 5201;
/// The port whose single endpoint moves from backend 0 to backend 1 in the change measurement.
pub const PROBE_PORT: u16 = 9002;

/// Where the servers listen inside every backend pod.
pub const NGINX_TARGET: u16 = skiff_testbed::servers::HTTP_PORT;
pub const RR_TARGET: u16 = 9000;
pub const CRR_TARGET: u16 = 9001;
pub const IPERF_TARGET: u16 = 5201;

/// Endpoints per Service (the measured Service's HTTP, RR and CRR ports have one per backend pod).
pub const ENDPOINTS: usize = 3;

/// How the measured Service's place in kube-proxy's order is chosen, for the report.
pub const POSITION_RULE: &str = "bench/app is placed at index ⌊N/2⌋ of the N Services, so its \
    rule sits in the middle of KUBE-SERVICES: the expected position of a Service under kube-proxy, \
    which writes Services in no particular order. The nftables verdict map and Skiff's hash maps \
    do not depend on position.";

/// The measured Service, with the probe port on `probe_backend`.
pub fn app(probe_backend: usize) -> Service {
    let spread = |target: u16| -> Vec<SocketAddrV4> {
        (0..ENDPOINTS)
            .map(|i| SocketAddrV4::new(backend_ip(i), target))
            .collect()
    };
    let one = |i: usize, target: u16| vec![SocketAddrV4::new(backend_ip(i), target)];
    let port = |name: &str, port: u16, endpoints| ServicePort {
        name: name.to_owned(),
        port,
        protocol: Protocol::Tcp,
        endpoints,
    };
    Service {
        namespace: "bench".into(),
        name: "app".into(),
        vip: APP_VIP,
        ports: vec![
            port("http", HTTP_PORT, spread(NGINX_TARGET)),
            port("rr", RR_PORT, spread(RR_TARGET)),
            port("crr", CRR_PORT, spread(CRR_TARGET)),
            // Named target ports that only some pods declare: one endpoint each. iperf3's
            // control and data connections must reach the same server.
            port("iperf", IPERF_PORT, one(0, IPERF_TARGET)),
            port("probe", PROBE_PORT, one(probe_backend, CRR_TARGET)),
        ],
    }
}

fn filler(i: usize) -> Service {
    let vip = Ipv4Addr::from(FILLER_VIP_BASE + i as u32);
    let endpoints = (0..ENDPOINTS)
        .map(|e| {
            let addr = Ipv4Addr::from(FILLER_EP_BASE + (i * ENDPOINTS + e) as u32);
            SocketAddrV4::new(addr, 8080)
        })
        .collect();
    Service {
        namespace: format!("ns{}", i % 50),
        name: format!("svc{i}"),
        vip,
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            endpoints,
        }],
    }
}

/// `scale` Services: `bench/app` (probe on `probe_backend`) at index ⌊scale/2⌋, fillers around.
pub fn service_set(scale: usize, probe_backend: usize) -> ServiceSet {
    let scale = scale.max(1);
    let mut services: Vec<Service> = (0..scale - 1).map(filler).collect();
    services.insert(scale / 2, app(probe_backend));
    ServiceSet {
        services,
        cluster_cidr: (Ipv4Addr::new(10, 244, 0, 0), 16),
    }
}

/// The same set as Skiff's datapath takes it: (VIP, port, protocol) -> backends.
pub fn desired(set: &ServiceSet) -> Desired {
    let mut d = BTreeMap::new();
    for svc in &set.services {
        for p in &svc.ports {
            d.insert(service_port(svc, p), p.endpoints.clone());
        }
    }
    d
}

pub fn service_port(svc: &Service, port: &ServicePort) -> datapath::ServicePort {
    let proto = match port.protocol {
        Protocol::Tcp => datapath::Protocol::Tcp,
        Protocol::Udp => datapath::Protocol::Udp,
    };
    datapath::ServicePort::new(svc.vip, port.port, proto)
}

/// The measured Service within a set, and one of its ports by name.
pub fn find_app(set: &ServiceSet) -> &Service {
    set.services
        .iter()
        .find(|s| s.vip == APP_VIP)
        .expect("every set holds bench/app")
}

pub fn port<'a>(svc: &'a Service, name: &str) -> &'a ServicePort {
    svc.ports
        .iter()
        .find(|p| p.name == name)
        .expect("bench/app has the port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_have_the_scale_and_app_in_the_middle() {
        for scale in [1, 2, 1000, 10_000] {
            let set = service_set(scale, 0);
            assert_eq!(set.services.len(), scale);
            assert_eq!(set.services[scale / 2].vip, APP_VIP);
            // Addresses are distinct and inside the Service CIDR.
            let vips: std::collections::BTreeSet<_> = set.services.iter().map(|s| s.vip).collect();
            assert_eq!(vips.len(), scale);
            assert!(
                vips.iter()
                    .all(|v| v.octets()[0] == 10 && (96..112).contains(&v.octets()[1]))
            );
        }
    }

    #[test]
    fn the_probe_moves_and_nothing_else_changes() {
        let a = service_set(1000, 0);
        let b = service_set(1000, 1);
        let diff: Vec<_> = desired(&a)
            .into_iter()
            .zip(desired(&b))
            .filter(|(x, y)| x != y)
            .collect();
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].0.0.port, PROBE_PORT);
        assert_eq!(
            diff[0].1.1,
            vec![SocketAddrV4::new(backend_ip(1), CRR_TARGET)]
        );
    }

    #[test]
    fn filler_endpoints_stay_clear_of_real_pods() {
        let set = service_set(10_000, 0);
        for s in set.services.iter().filter(|s| s.vip != APP_VIP) {
            for e in &s.ports[0].endpoints {
                let o = e.ip().octets();
                assert!(o[0] == 10 && o[1] == 244 && o[2] >= 2, "{e}");
            }
        }
    }
}
