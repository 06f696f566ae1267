//! `skiff-controller-manager`: ReplicaSet, Deployment, Endpoints, node lifecycle and garbage
//! collection controllers in one process, active only while it holds its lease.

use std::time::Duration;

use clap::Parser;
use skiff_control::{
    controllers::{self, Settings},
    runtime::{self, CommonArgs},
};

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
    };
    let client = args.common.connect().await?;
    runtime::run_component(
        &args.common,
        client.clone(),
        "skiff-controller-manager",
        move || controllers::run(client.clone(), settings.clone()),
    )
    .await
}
