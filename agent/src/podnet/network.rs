//! The pod network as a node's pods see it: an address and an interface per pod, made, found,
//! removed and listed, and connections from inside a pod (probes, hooks). A trait, so that the
//! pod lifecycle runs over a fake; [`NodeNetworks`] is the real one (netlink and the node's
//! IPAM).

use std::{fmt, net::SocketAddrV4, path::Path, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpSocket,
};

use super::{Error, PodNet, PodNetwork, Result, error::DialError};
use crate::{ipam::Ipam, netns};

/// A byte stream to something in a pod's network (a TCP connection for the real network).
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

/// What a node's pods need of the pod network. Pod ids are pod uids; implementations refuse
/// anything else before a name or a path is made of one.
#[async_trait::async_trait]
pub trait PodNetworks: fmt::Debug + Send + Sync {
    /// Gives pod `uid` an address and a network with it. Idempotent: a pod that has them keeps
    /// them.
    async fn setup(&self, uid: &str) -> Result<PodNetwork>;

    /// The complete network pod `uid` has, or None.
    async fn inspect(&self, uid: &str) -> Result<Option<PodNetwork>>;

    /// Removes the network of pod `uid` and releases its address; missing parts are fine.
    async fn teardown(&self, uid: &str) -> Result<()>;

    /// The pods with a network or an address on this node (a pod may be named twice).
    async fn list(&self) -> Result<Vec<String>>;

    /// A TCP connection to `addr` made from inside the pod's network namespace, so that its
    /// traffic never leaves the pod's namespace and needs no route from the node.
    async fn connect(
        &self,
        net: &PodNetwork,
        addr: SocketAddrV4,
    ) -> Result<Box<dyn Connection>, DialError>;
}

/// The node's real pod networks: namespaces and veths through netlink ([`PodNet`]), addresses
/// from the node's IPAM.
#[derive(Debug)]
pub struct NodeNetworks {
    podnet: Arc<PodNet>,
    ipam: Ipam,
}

impl NodeNetworks {
    pub fn new(podnet: Arc<PodNet>, ipam: Ipam) -> NodeNetworks {
        NodeNetworks { podnet, ipam }
    }

    /// Runs `f` with the pod network on a blocking thread (netlink and mounts block).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&PodNet) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let podnet = self.podnet.clone();
        tokio::task::spawn_blocking(move || f(&podnet))
            .await
            .map_err(|source| Error::Task { source })?
    }
}

#[async_trait::async_trait]
impl PodNetworks for NodeNetworks {
    async fn setup(&self, uid: &str) -> Result<PodNetwork> {
        let ip = self.ipam.allocate(uid).map_err(|source| Error::Address {
            action: "allocating an address",
            source,
        })?;
        let uid = uid.to_owned();
        self.blocking(move |podnet| podnet.setup(&uid, ip)).await
    }

    async fn inspect(&self, uid: &str) -> Result<Option<PodNetwork>> {
        let uid = uid.to_owned();
        self.blocking(move |podnet| podnet.inspect(&uid)).await
    }

    async fn teardown(&self, uid: &str) -> Result<()> {
        let id = uid.to_owned();
        let network = self.blocking(move |podnet| podnet.teardown(&id)).await;
        // The address goes even when the network did not (all of it), as it always has.
        let address = self
            .ipam
            .release(uid)
            .map(|_| ())
            .map_err(|source| Error::Address {
                action: "releasing the pod address",
                source,
            });
        match (network, address) {
            (Err(net), Err(addr)) => {
                tracing::warn!(uid, error = %crate::runtime::chain(&addr), "releasing the pod address");
                Err(net)
            }
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    async fn list(&self) -> Result<Vec<String>> {
        let mut owners = self.blocking(PodNet::list).await?;
        let addresses = self.ipam.allocations().map_err(|source| Error::Address {
            action: "listing the pod addresses",
            source,
        })?;
        owners.extend(addresses.into_iter().map(|(_, owner)| owner));
        Ok(owners)
    }

    async fn connect(
        &self,
        net: &PodNetwork,
        addr: SocketAddrV4,
    ) -> Result<Box<dyn Connection>, DialError> {
        let socket = socket_in(&net.netns)?;
        let stream = socket
            .connect(addr.into())
            .await
            .map_err(|source| DialError::Connect { addr, source })?;
        Ok(Box::new(stream))
    }
}

/// A TCP socket made inside the network namespace at `netns` (a socket stays in the namespace
/// it was made in, whichever thread uses it later).
fn socket_in(netns: &Path) -> Result<TcpSocket, DialError> {
    netns::run_in(netns, TcpSocket::new_v4)
        .map_err(|source| DialError::EnterNetns { source })?
        .map_err(|source| DialError::Socket { source })
}
