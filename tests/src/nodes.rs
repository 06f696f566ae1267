//! The test bed's small real cluster ([`skiff_testbed::nodes::Nodes`]) seen through the agent's
//! runtime: a containerd client in one node's namespace of containerd.

use std::future::Future;

use anyhow::Result;
use skiff_agent::runtime::Runtime;
use skiff_testbed::nodes::Nodes;

/// The containers of a [`Nodes`] cluster's nodes, through the agent's own runtime client.
pub trait NodesRuntime {
    /// A containerd client in node `i`'s namespace of containerd.
    fn runtime(&self, i: usize) -> impl Future<Output = Result<Runtime>> + Send;
}

impl NodesRuntime for Nodes {
    async fn runtime(&self, i: usize) -> Result<Runtime> {
        Ok(Runtime::connect(self.containerd.socket(), &self.containerd_namespace(i)).await?)
    }
}
