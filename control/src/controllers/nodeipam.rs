//! Pod CIDRs for nodes that register without one: each gets the lowest free block of the node
//! mask size from the cluster's pod CIDR, never one another node holds or overlaps (a node that
//! registers with its own CIDR keeps it, and its block is not handed out).

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use skiff_api::{client::ClientError, kinds::Node, net::Ipv4Cidr};
use skiff_runtime::{Event, Queue, key_of};

use super::Context;

/// How long a block this controller assigned stays reserved while its write is not yet in the
/// cache.
const RESERVATION: Duration = Duration::from_secs(30);

/// Where node blocks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCidrs {
    pub cluster: Ipv4Cidr,
    /// The prefix length of each node's block (24: 254 pods).
    pub node_prefix: u8,
}

impl NodeCidrs {
    /// Checks that the blocks fit the cluster CIDR.
    pub fn new(cluster: Ipv4Cidr, node_prefix: u8) -> Result<NodeCidrs, String> {
        if node_prefix < cluster.prefix() || node_prefix > 30 {
            return Err(format!(
                "the node CIDR mask size /{node_prefix} must lie between the cluster CIDR's /{} and /30",
                cluster.prefix()
            ));
        }
        Ok(NodeCidrs {
            cluster,
            node_prefix,
        })
    }

    /// The lowest block that overlaps none of `taken`.
    pub fn first_free(&self, taken: &[Ipv4Cidr]) -> Option<Ipv4Cidr> {
        let count = self.cluster.subnet_count(self.node_prefix);
        (0..count)
            .filter_map(|n| u32::try_from(n).ok())
            .filter_map(|n| self.cluster.subnet(self.node_prefix, n))
            .find(|block| !taken.iter().any(|t| t.overlaps(block)))
    }
}

#[derive(Debug)]
pub struct NodeIpamController {
    ctx: Arc<Context>,
    cidrs: NodeCidrs,
    queue: Queue,
    /// Blocks assigned by this controller whose node the cache may not show yet.
    reserved: Mutex<Vec<(Ipv4Cidr, String, Instant)>>,
}

impl NodeIpamController {
    /// Registers the node handler; call before the informers run.
    pub fn new(ctx: Arc<Context>, cidrs: NodeCidrs) -> NodeIpamController {
        let queue = Queue::default().with_metrics("node_ipam", &ctx.queues);
        {
            let queue = queue.clone();
            ctx.informers.nodes.on_event(move |ev: &Event<Node>| {
                if !matches!(ev, Event::Deleted(_)) && ev.object().spec.pod_cidr.is_empty() {
                    queue.add(key_of(&ev.object().metadata));
                }
            });
        }
        NodeIpamController {
            ctx,
            cidrs,
            queue,
            reserved: Mutex::new(Vec::new()),
        }
    }

    pub async fn run(self) {
        let (queue, this) = (self.queue.clone(), Arc::new(self));
        // One worker: two assignments never race inside this controller, and leader election
        // keeps other replicas out.
        skiff_runtime::run_workers(
            this,
            queue,
            1,
            "nodeipam",
            ClientError::is_conflict,
            |this: Arc<Self>, key: String| async move { this.sync(&key).await.map(|()| None) },
        )
        .await;
    }

    async fn sync(&self, name: &str) -> Result<(), ClientError> {
        let Some(node) = self.ctx.informers.nodes.get("", name) else {
            return Ok(());
        };
        if !node.spec.pod_cidr.is_empty() {
            return Ok(());
        }
        let mut taken: Vec<Ipv4Cidr> = self
            .ctx
            .informers
            .nodes
            .list()
            .iter()
            .flat_map(|n| {
                std::iter::once(&n.spec.pod_cidr)
                    .chain(&n.spec.pod_cidrs)
                    .filter_map(|c| Ipv4Cidr::parse(c).ok())
                    .collect::<BTreeSet<_>>()
            })
            .collect();
        {
            let mut reserved = self
                .reserved
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            reserved.retain(|(_, _, at)| at.elapsed() < RESERVATION);
            taken.extend(reserved.iter().map(|(c, _, _)| *c));
        }
        let Some(block) = self.cidrs.first_free(&taken) else {
            tracing::warn!(node = name, cluster = %self.cidrs.cluster, "no free pod CIDR left for the node");
            return Ok(());
        };
        let mut update = (*node).clone();
        update.spec.pod_cidr = block.to_string();
        update.spec.pod_cidrs = vec![block.to_string()];
        self.ctx.client.update(&update).await?;
        self.reserved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((block, name.to_owned(), Instant::now()));
        tracing::info!(node = name, pod_cidr = %block, "assigned the node its pod CIDR");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        Ipv4Cidr::parse(s).unwrap()
    }

    #[test]
    fn the_lowest_block_clear_of_every_taken_one_is_chosen() {
        let cidrs = NodeCidrs::new(c("10.244.0.0/16"), 24).unwrap();
        assert_eq!(cidrs.first_free(&[]), Some(c("10.244.0.0/24")));
        assert_eq!(
            cidrs.first_free(&[c("10.244.0.0/24"), c("10.244.1.0/24")]),
            Some(c("10.244.2.0/24"))
        );
        // A node that brought a larger block of its own shadows every block inside it.
        assert_eq!(
            cidrs.first_free(&[c("10.244.0.0/23"), c("10.244.2.0/24")]),
            Some(c("10.244.3.0/24"))
        );
        let tiny = NodeCidrs::new(c("10.0.0.0/23"), 24).unwrap();
        assert_eq!(tiny.first_free(&[c("10.0.0.0/24"), c("10.0.1.0/24")]), None);
        assert!(NodeCidrs::new(c("10.244.0.0/16"), 8).is_err());
        assert!(NodeCidrs::new(c("10.244.0.0/16"), 31).is_err());
    }
}
