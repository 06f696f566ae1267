//! `skiff-apiserver`: serves the Skiff API from etcd.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use skiff_control::apiserver::{Config, Listen, run};

/// Serves the Skiff API (gRPC) with all cluster state in etcd. Several replicas may run against
/// one etcd at once.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "SKIFF_ETCD",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    etcd: Vec<String>,
    /// Key prefix of every object in etcd.
    #[arg(long, default_value = "/registry")]
    etcd_prefix: String,
    /// host:port or unix:///path; repeat to listen on several (for example TCP for people and
    /// a Unix socket for node agents in other network namespaces).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: Vec<Listen>,
    /// host:port for Prometheus `/metrics` (plain HTTP); off when unset.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// YAML file of bearer tokens: `tokens: [{token, user, role: admin|controller|node|viewer, node}]`.
    #[arg(long)]
    tokens: PathBuf,
    /// PEM certificate for TLS on the listener (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the listener.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// ClusterIPs are allocated from here.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// NodePorts are allocated from here.
    #[arg(long, default_value = "30000-32767")]
    node_port_range: String,
    /// How often watches that asked for bookmarks get one, in seconds.
    #[arg(long, default_value_t = 10.0)]
    bookmark_interval: f64,
    /// Events a watch served from the watch cache may have waiting before it is moved to its
    /// own etcd watch (a slow client then costs only itself).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    watch_cache_queue: u32,
    /// Seconds between compactions of etcd's history (each keeps the last interval); 0: never.
    #[arg(long, default_value_t = 300.0)]
    etcd_compaction_interval: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = Config {
        etcd_endpoints: args.etcd,
        etcd_prefix: args.etcd_prefix,
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        tokens_file: args.tokens,
        tls: args.tls_cert.zip(args.tls_key),
        service_cidr: args.service_cidr,
        node_port_range: args.node_port_range,
        bookmark_interval: Duration::from_secs_f64(args.bookmark_interval.max(0.05)),
        watch_cache_queue: args.watch_cache_queue as usize,
        compaction_interval: (args.etcd_compaction_interval > 0.0)
            .then(|| Duration::from_secs_f64(args.etcd_compaction_interval.max(1.0))),
    };
    run(config, async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    })
    .await
}
