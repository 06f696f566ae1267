//! Endpoints: the first few ready addresses with each port.

use std::time::SystemTime;

use super::{AGE, Cell, Column, ColumnType, NAME, NONE, Print, age_cell, name_cell};
use crate::kinds::Endpoints;

/// Addresses the ENDPOINTS column shows before the rest are only counted.
const SHOWN: usize = 3;

impl Print for Endpoints {
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new(
            "Endpoints",
            ColumnType::String,
            "Ready addresses with each port, the first few of them.",
        ),
        AGE,
    ];

    fn cells(&self, now: SystemTime) -> Vec<Cell> {
        vec![
            name_cell(&self.metadata),
            summary(self, SHOWN).into(),
            age_cell(&self.metadata, now),
        ]
    }
}

/// `10.244.1.5:80,10.244.2.7:80 + 1 more...`: ready addresses with each port, at most `max`.
pub fn summary(e: &Endpoints, max: usize) -> String {
    let mut all = Vec::new();
    for subset in &e.subsets {
        for addr in &subset.addresses {
            if subset.ports.is_empty() {
                all.push(addr.ip.clone());
            }
            for port in &subset.ports {
                all.push(format!("{}:{}", addr.ip, port.port));
            }
        }
    }
    if all.is_empty() {
        return NONE.to_owned();
    }
    let more = all.len().saturating_sub(max);
    all.truncate(max);
    let mut s = all.join(",");
    if more > 0 {
        s.push_str(&format!(" + {more} more..."));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::{EndpointAddress, EndpointPort, EndpointSubset};

    fn addr(ip: &str) -> EndpointAddress {
        EndpointAddress {
            ip: ip.into(),
            ..EndpointAddress::default()
        }
    }

    #[test]
    fn only_ready_addresses_are_shown_each_with_every_port_or_alone_without_ports() {
        let e = Endpoints {
            subsets: vec![
                EndpointSubset {
                    addresses: vec![addr("10.244.1.2")],
                    not_ready_addresses: vec![addr("10.244.3.3")],
                    ports: vec![
                        EndpointPort {
                            port: 80,
                            ..EndpointPort::default()
                        },
                        EndpointPort {
                            port: 443,
                            ..EndpointPort::default()
                        },
                    ],
                },
                EndpointSubset {
                    addresses: vec![addr("10.244.2.2")],
                    ..EndpointSubset::default()
                },
            ],
            ..Endpoints::default()
        };
        assert_eq!(
            summary(&e, usize::MAX),
            "10.244.1.2:80,10.244.1.2:443,10.244.2.2"
        );
        assert_eq!(summary(&e, 1), "10.244.1.2:80 + 2 more...");
        assert_eq!(summary(&Endpoints::default(), 3), "<none>");
    }
}
