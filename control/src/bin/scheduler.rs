//! `skiff-scheduler`: binds pods without a node to the node that suits them best, active only
//! while it holds its lease.
//!
//! With `--metrics-listen`: `/metrics` (the `scheduler_*` metrics and
//! `leader_election_master_status`), `/healthz` and `/livez` (`ping`), and `/readyz`, whose
//! checks `api-server-connected` and `informers-synced` pass once connected to the API server
//! and, while leading, once the node and pod informers hold their first list (a standby replica
//! is ready: it can take over).

use std::time::Duration;

use clap::Parser;
use skiff_control::scheduler::{self, SchedulerConfig, metrics::SchedulerMetrics};
use skiff_runtime::{self as runtime, CommonArgs};

/// Schedules Skiff's pods onto nodes. Several replicas may run; one leads.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// The most bindings (and unschedulable-condition writes) in flight at once.
    #[arg(long, default_value_t = 64)]
    parallel_binds: usize,
    /// Percentage of a large cluster's nodes to find feasible before ranking them (0: adaptive,
    /// from 50% down to 5% as the cluster grows; at least 100 nodes either way).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    percentage_of_nodes_to_score: u32,
    /// Seconds a pod waits after its first failed attempt; doubles with each failure.
    #[arg(long, default_value_t = 1.0)]
    pod_initial_backoff_seconds: f64,
    /// The longest back-off, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pod_max_backoff_seconds: f64,
}

fn secs(s: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--{flag} must be a positive number of seconds"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::init_tracing();
    let args = Args::parse();
    let config = SchedulerConfig {
        parallel_binds: args.parallel_binds.max(1),
        percentage_of_nodes_to_score: args.percentage_of_nodes_to_score,
        initial_backoff: secs(
            args.pod_initial_backoff_seconds,
            "pod-initial-backoff-seconds",
        )?,
        max_backoff: secs(args.pod_max_backoff_seconds, "pod-max-backoff-seconds")?,
        ..SchedulerConfig::default()
    };
    let metrics = SchedulerMetrics::default();
    runtime::run_component(
        &args.common,
        "skiff-scheduler",
        |registry| metrics.register(registry),
        |client, synced| scheduler::run(client, config.clone(), metrics.clone(), synced),
    )
    .await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn flags_are_well_formed_and_default_to_the_library_defaults() {
        Args::command().debug_assert();
        let args = Args::try_parse_from(["skiff-scheduler", "--token", "t"]).unwrap();
        let d = SchedulerConfig::default();
        assert_eq!(args.parallel_binds, d.parallel_binds);
        assert_eq!(
            args.percentage_of_nodes_to_score,
            d.percentage_of_nodes_to_score
        );
        assert_eq!(
            secs(args.pod_initial_backoff_seconds, "x").unwrap(),
            d.initial_backoff
        );
        assert_eq!(
            secs(args.pod_max_backoff_seconds, "x").unwrap(),
            d.max_backoff
        );
        assert!(
            Args::try_parse_from(["skiff-scheduler", "--percentage-of-nodes-to-score", "101"])
                .is_err()
        );
        assert!(secs(0.0, "x").is_err());
        assert_eq!(args.common.metrics_listen, None);
        let args = Args::try_parse_from(["skiff-scheduler", "--metrics-listen", "127.0.0.1:10259"])
            .unwrap();
        assert_eq!(
            args.common.metrics_listen,
            Some("127.0.0.1:10259".parse().unwrap())
        );
    }
}
