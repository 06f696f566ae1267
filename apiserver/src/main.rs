//! `skiff-apiserver`: serves the Skiff API from etcd.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use skiff_apiserver::{Config, Limits, Listen, run, store::EtcdTls};

/// Serves the Skiff API (gRPC) with all cluster state in etcd. Several replicas may run against
/// one etcd at once.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// etcd endpoints, comma-separated: `https://` with the three --etcd-*file flags (mutual
    /// TLS), or `http://` for an etcd without TLS.
    #[arg(
        long,
        env = "SKIFF_ETCD",
        value_delimiter = ',',
        default_value = "https://127.0.0.1:2379"
    )]
    etcd: Vec<String>,
    /// PEM CA certificate that signed etcd's serving certificates.
    #[arg(long, requires_all = ["etcd_certfile", "etcd_keyfile"])]
    etcd_cafile: Option<PathBuf>,
    /// PEM client certificate the API server presents to etcd.
    #[arg(long, requires_all = ["etcd_cafile", "etcd_keyfile"])]
    etcd_certfile: Option<PathBuf>,
    /// PEM private key of --etcd-certfile.
    #[arg(long, requires_all = ["etcd_cafile", "etcd_certfile"])]
    etcd_keyfile: Option<PathBuf>,
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
    /// PEM certificate for TLS on the TCP listeners (with --tls-key). Unix sockets stay plain:
    /// they are created with mode 0600, so only their owner (and root) can connect.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the TCP listeners.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connections each listener holds at once. When full, a new connection takes the place of
    /// the oldest one that has not yet made an authenticated call; if every connection has, the
    /// new one is closed at once.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds a new connection gets to finish its TLS handshake and send the HTTP/2 preface.
    #[arg(long, default_value_t = 10.0)]
    handshake_timeout: f64,
    /// Seconds a connection with no open call is kept before it is closed (HTTP/2 pings
    /// unanswered for 20 s close it sooner).
    #[arg(long, default_value_t = 300.0)]
    idle_timeout: f64,
    /// Calls (watches included) open at once on one connection; more are refused with
    /// RESOURCE_EXHAUSTED, and the calls already open carry on.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: u32,
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
    /// An `EncryptionConfiguration` (apiserver.config.k8s.io/v1) saying which resources are
    /// encrypted in etcd and with which keys (providers `aesgcm` and `identity`). Without it,
    /// everything is stored as plain JSON.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    skiff_runtime::init_tracing();
    let args = Args::parse();
    let config = Config {
        etcd_endpoints: args.etcd,
        etcd_tls: match (args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile) {
            (Some(ca), Some(cert), Some(key)) => Some(EtcdTls { ca, cert, key }),
            _ => None,
        },
        etcd_prefix: args.etcd_prefix,
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        tokens_file: args.tokens,
        tls: args.tls_cert.zip(args.tls_key),
        limits: Limits {
            max_connections: args.max_connections as usize,
            handshake_timeout: Duration::from_secs_f64(args.handshake_timeout.max(0.1)),
            idle_timeout: Duration::from_secs_f64(args.idle_timeout.max(1.0)),
            max_streams_per_connection: args.max_streams_per_connection,
        },
        service_cidr: args.service_cidr,
        node_port_range: args.node_port_range,
        bookmark_interval: Duration::from_secs_f64(args.bookmark_interval.max(0.05)),
        watch_cache_queue: args.watch_cache_queue as usize,
        compaction_interval: (args.etcd_compaction_interval > 0.0)
            .then(|| Duration::from_secs_f64(args.etcd_compaction_interval.max(1.0))),
        encryption_config: args.encryption_provider_config,
    };
    run(config, async {
        skiff_runtime::shutdown_signal().await;
        tracing::info!("shutting down");
    })
    .await
}
