//! `skiff-controller-manager`: ReplicaSet, Deployment, Endpoints, node lifecycle and garbage
//! collection controllers in one process, active only while it holds its lease.
//!
//! With `--metrics-listen`: `/metrics` (`workqueue_*` per controller queue and
//! `leader_election_master_status`), `/healthz` and `/livez` (`ping`), and `/readyz`, whose
//! checks `api-server-connected` and `informers-synced` pass once connected to the API server
//! and, while leading, once every informer holds its first list (a standby replica is ready: it
//! can take over).

use std::time::Duration;

use clap::Parser;
use skiff_api::net::Ipv4Cidr;
use skiff_control::controllers::{self, Settings, nodeipam::NodeCidrs};
use skiff_runtime::{self as runtime, CommonArgs, QueueMetrics};

/// Runs Skiff's controllers against the API server. Several replicas may run; one leads.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Seconds without a node heartbeat before the node is marked NotReady and tainted.
    #[arg(long, default_value_t = 10.0)]
    node_monitor_grace_period: f64,
    /// Seconds a node stays NotReady before its pods are deleted and replaced elsewhere.
    #[arg(long, default_value_t = 30.0)]
    pod_eviction_timeout: f64,
    /// Workers per controller.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// The most pods a ReplicaSet creates or deletes in one pass.
    #[arg(long, default_value_t = 500)]
    burst: usize,
    /// Give nodes that register without a pod CIDR one from --cluster-cidr.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    allocate_node_cidrs: bool,
    /// The cluster's pod network, carved into one block per node.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// The prefix length of each node's block.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
}

fn secs(s: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow::anyhow!("--{flag} must be a positive number of seconds"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::init_tracing();
    let args = Args::parse();
    let settings = Settings {
        node_monitor_grace_period: secs(
            args.node_monitor_grace_period,
            "node-monitor-grace-period",
        )?,
        pod_eviction_timeout: secs(args.pod_eviction_timeout, "pod-eviction-timeout")?,
        workers: args.workers.max(1),
        burst: args.burst.max(1),
        node_cidrs: if args.allocate_node_cidrs {
            let cluster = Ipv4Cidr::parse(&args.cluster_cidr)
                .map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?;
            Some(
                NodeCidrs::new(cluster, args.node_cidr_mask_size)
                    .map_err(|e| anyhow::anyhow!("--node-cidr-mask-size: {e}"))?,
            )
        } else {
            None
        },
    };
    let queues = QueueMetrics::default();
    runtime::run_component(
        &args.common,
        "skiff-controller-manager",
        |registry| queues.register(registry),
        |client, synced| controllers::run(client, settings.clone(), queues.clone(), synced),
    )
    .await
}
