//! Services: type, ClusterIP, and each port with its node port and protocol.

use std::time::SystemTime;

use super::{
    AGE, Cell, Column, ColumnType, NAME, NONE, Print, age_cell, labels, name_cell, or_none,
};
use crate::kinds::{Service, ServicePort};

impl Print for Service {
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new(
            "Type",
            ColumnType::String,
            "How the Service is exposed: ClusterIP or NodePort.",
        ),
        Column::new(
            "Cluster-IP",
            ColumnType::String,
            "The virtual IP clients in the cluster reach the Service at.",
        ),
        Column::new(
            "Port(s)",
            ColumnType::String,
            "The Service's ports, each with its node port if any, and protocol.",
        ),
        AGE,
        Column::new(
            "Selector",
            ColumnType::String,
            "The labels of the pods traffic is routed to.",
        )
        .wide(),
    ];

    fn cells(&self, now: SystemTime) -> Vec<Cell> {
        vec![
            name_cell(&self.metadata),
            type_name(self).into(),
            or_none(&self.spec.cluster_ip).into(),
            ports(self).into(),
            age_cell(&self.metadata, now),
            labels(&self.spec.selector).into(),
        ]
    }
}

/// The Service's type, `ClusterIP` when unset.
pub fn type_name(s: &Service) -> &str {
    if s.spec.type_.is_empty() {
        "ClusterIP"
    } else {
        &s.spec.type_
    }
}

/// The port's protocol, `TCP` when unset.
pub fn protocol(p: &ServicePort) -> &str {
    if p.protocol.is_empty() {
        "TCP"
    } else {
        &p.protocol
    }
}

/// `80/TCP,443:30443/TCP`.
pub fn ports(s: &Service) -> String {
    if s.spec.ports.is_empty() {
        return NONE.to_owned();
    }
    s.spec
        .ports
        .iter()
        .map(|p| {
            let proto = protocol(p);
            if p.node_port != 0 {
                format!("{}:{}/{proto}", p.port, p.node_port)
            } else {
                format!("{}/{proto}", p.port)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_show_node_ports_and_default_to_tcp() {
        let mut s = Service::default();
        assert_eq!(ports(&s), "<none>");
        s.spec.ports = vec![
            ServicePort {
                port: 80,
                node_port: 30080,
                ..ServicePort::default()
            },
            ServicePort {
                port: 53,
                protocol: "UDP".into(),
                ..ServicePort::default()
            },
        ];
        assert_eq!(ports(&s), "80:30080/TCP,53/UDP");
        assert_eq!(type_name(&s), "ClusterIP");
    }
}
