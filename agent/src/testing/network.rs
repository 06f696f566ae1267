//! The fake pod networks: an address per pod from the node's CIDR and a pretend namespace
//! path, with connections answered as scripted. A network goes only once every task in it has
//! stopped.

use std::{io, net::SocketAddrV4, path::PathBuf, sync::Arc};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    time::Instant,
};

use super::{Event, FakeNet, PortScript, Shared, TaskLife};
use crate::{
    ipam::IpamError,
    podnet::{Connection, DialError, Error, PodNet, PodNetwork, PodNetworks, Result, check_pod_id},
};

/// One fake node's pod networks (a handle; cheap to clone).
#[derive(Debug, Clone)]
pub struct FakeNetworks {
    shared: Arc<Shared>,
}

impl FakeNetworks {
    pub(crate) fn new(shared: Arc<Shared>) -> FakeNetworks {
        FakeNetworks { shared }
    }

    fn network(&self, uid: &str, net: &FakeNet) -> PodNetwork {
        PodNetwork {
            netns: net.netns.clone(),
            host_veth: PodNet::host_veth_name(uid),
            ip: net.ip,
        }
    }
}

#[async_trait::async_trait]
impl PodNetworks for FakeNetworks {
    async fn setup(&self, uid: &str) -> Result<PodNetwork> {
        check_pod_id(uid)?;
        let cidr = self.shared.cidr;
        let mut state = self.shared.lock();
        if state.network_setup_failures > 0 {
            state.network_setup_failures -= 1;
            return Err(Error::Address {
                action: "allocating an address",
                source: IpamError::Exhausted {
                    cidr: cidr.to_string(),
                    used: state.addresses.len(),
                },
            });
        }
        let ip = match state.addresses.get(uid) {
            Some(ip) => *ip,
            None => {
                // Addresses after the gateway, before the broadcast address, in turn.
                let first = u32::from(cidr.network()) + 2;
                let count = u32::from(cidr.last()) - first;
                let taken: std::collections::HashSet<_> =
                    state.addresses.values().copied().collect();
                let Some(ip) = (0..count)
                    .map(|i| std::net::Ipv4Addr::from(first + (state.next_address + i) % count))
                    .find(|ip| !taken.contains(ip))
                else {
                    return Err(Error::Address {
                        action: "allocating an address",
                        source: IpamError::Exhausted {
                            cidr: cidr.to_string(),
                            used: taken.len(),
                        },
                    });
                };
                state.next_address = u32::from(ip) - first + 1;
                state.addresses.insert(uid.to_owned(), ip);
                ip
            }
        };
        let net = FakeNet {
            ip,
            netns: PathBuf::from(format!("/run/skiff-fake/{}/netns/{uid}", self.shared.name)),
        };
        if state.networks.get(uid).is_none_or(|n| n.ip != ip) {
            state.networks.insert(uid.to_owned(), net.clone());
            state.events.push((
                Instant::now(),
                Event::NetworkUp {
                    uid: uid.to_owned(),
                    ip,
                },
            ));
        }
        Ok(self.network(uid, &net))
    }

    async fn inspect(&self, uid: &str) -> Result<Option<PodNetwork>> {
        check_pod_id(uid)?;
        let state = self.shared.lock();
        Ok(state.networks.get(uid).map(|n| self.network(uid, n)))
    }

    async fn teardown(&self, uid: &str) -> Result<()> {
        check_pod_id(uid)?;
        let mut state = self.shared.lock();
        Shared::settle(&mut state, Instant::now());
        if let Some(net) = state.networks.get(uid) {
            let running: Vec<String> = state
                .containers
                .iter()
                .filter(|(_, c)| {
                    c.spec.netns == net.netns && matches!(c.task, TaskLife::Running { .. })
                })
                .map(|(id, _)| id.clone())
                .collect();
            if !running.is_empty() {
                let what = format!(
                    "the network of pod {uid} was torn down while tasks still ran in it: {running:?}"
                );
                self.shared.violation(&mut state, what);
            }
            state.networks.remove(uid);
            state.events.push((
                Instant::now(),
                Event::NetworkDown {
                    uid: uid.to_owned(),
                },
            ));
        }
        state.addresses.remove(uid);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>> {
        let state = self.shared.lock();
        Ok(state
            .networks
            .keys()
            .chain(state.addresses.keys())
            .cloned()
            .collect())
    }

    async fn connect(
        &self,
        net: &PodNetwork,
        addr: SocketAddrV4,
    ) -> Result<Box<dyn Connection>, DialError> {
        let script = {
            let mut state = self.shared.lock();
            if !state.networks.values().any(|n| n.netns == net.netns) {
                let what = format!(
                    "connected to {addr} from {}, which no pod network has",
                    net.netns.display()
                );
                self.shared.violation(&mut state, what);
            }
            state
                .ports
                .get(&addr)
                .copied()
                .unwrap_or(PortScript::Closed)
        };
        let code = match script {
            PortScript::Closed => {
                return Err(DialError::Connect {
                    addr,
                    source: io::Error::from(io::ErrorKind::ConnectionRefused),
                });
            }
            PortScript::Http(code) => code,
        };
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            // Read the request head, then answer and close.
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match server.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = server
                .write_all(format!("HTTP/1.0 {code} Fake\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await;
        });
        Ok(Box::new(client))
    }
}
