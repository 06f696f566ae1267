//! The API server: the single entrance to cluster state, kept in etcd.

pub mod alloc;
pub mod auth;
pub mod cache;
pub mod encryption;
pub mod error;
pub mod filter;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod objects;
pub mod registry;
pub mod service;
pub mod store;
pub mod tunnel;
pub mod watch;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use skiff_api::proto::api_server::ApiServer;
use tokio::net::TcpListener;

pub use self::listener::Limits;
use self::{
    alloc::Ranges,
    auth::{Authenticator, NODE_LEASE_NAMESPACE},
    listener::Bound,
    metrics::Metrics,
    objects::GenericStore,
    service::ApiService,
    store::Store,
};

/// The largest gRPC request the server decodes: 2 MiB, room for one object of the largest size
/// ([`skiff_api::object::MAX_OBJECT_BYTES`]) with its envelope; larger objects get a precise
/// error from the object decoder first.
pub const MAX_REQUEST_BYTES: usize = 2 << 20;
/// How long open calls (watches) get after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The largest response (a list of every pod in a big cluster).
pub const MAX_RESPONSE_BYTES: usize = 512 << 20;

/// Where the API listens.
#[derive(Debug, Clone)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        s.parse()
            .map(Listen::Tcp)
            .map_err(|_| format!("{s:?} is neither host:port nor unix:///path"))
    }
}

/// Everything the API server is started with.
#[derive(Debug, Clone)]
pub struct Config {
    pub etcd_endpoints: Vec<String>,
    /// Mutual TLS to etcd (required for `https://` endpoints).
    pub etcd_tls: Option<store::EtcdTls>,
    pub etcd_prefix: String,
    /// One or more listeners (TCP and Unix sockets), all serving the same API.
    pub listen: Vec<Listen>,
    pub metrics_listen: Option<SocketAddr>,
    pub tokens_file: PathBuf,
    /// Certificate and key (PEM) for TLS on the TCP listeners (Unix sockets stay plain).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Connection cap, handshake and idle timeouts, streams per connection.
    pub limits: Limits,
    pub service_cidr: String,
    pub node_port_range: String,
    pub bookmark_interval: Duration,
    /// Events a cached watch may have waiting before it moves to its own etcd watch.
    pub watch_cache_queue: usize,
    /// How often etcd's history is compacted, keeping one interval of it (`None`: never).
    pub compaction_interval: Option<Duration>,
    /// An `EncryptionConfiguration` file: which resources are encrypted in etcd, and how
    /// (`--encryption-provider-config`). `None`: everything is stored as it is.
    pub encryption_config: Option<PathBuf>,
}

/// Runs the API server until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let ranges = Ranges::new(&config.service_cidr, &config.node_port_range)?;
    let auth = Authenticator::from_file(&config.tokens_file)?;
    let encryption = match &config.encryption_config {
        Some(path) => {
            let e = encryption::Encryption::from_file(path)?;
            tracing::info!(file = %path.display(), resources = ?e, "encryption at rest configured");
            e
        }
        None => encryption::Encryption::default(),
    };
    let metrics = Arc::new(Metrics::default());
    store::check_endpoints(&config.etcd_endpoints, config.etcd_tls.as_ref())?;
    let store = Store::connect(
        &config.etcd_endpoints,
        &config.etcd_prefix,
        config.etcd_tls.as_ref(),
        metrics.clone(),
        Arc::new(encryption),
    )
    .await
    .with_context(|| format!("connecting to etcd at {}", config.etcd_endpoints.join(",")))?;
    let reg = Arc::new(GenericStore {
        cache: cache::WatchCache::new(
            store.clone(),
            config.bookmark_interval,
            config.watch_cache_queue,
        ),
        store,
        ranges,
        metrics: metrics.clone(),
    });
    for ns in ["default", "skiff-system", NODE_LEASE_NAMESPACE] {
        reg.ensure(registry::namespace::named(ns))
            .await
            .with_context(|| format!("creating namespace {ns} in etcd"))?;
    }
    if let Some(every) = config.compaction_interval {
        tokio::spawn(compact_every(reg.store.clone(), every));
    }
    let (readiness, shutting_down) = health::readiness(&reg.store);
    if let Some(addr) = config.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener {addr}"))?;
        tracing::info!(%addr, "serving /metrics, /healthz, /livez and /readyz");
        tokio::spawn(health::watch_etcd(reg.store.clone()));
        tokio::spawn(metrics::serve(listener, metrics.clone(), readiness));
    }
    let auth = Arc::new(auth);
    let service = ApiServer::new(ApiService::new(reg, auth.clone(), config.bookmark_interval))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let tls = match &config.tls {
        Some((cert, key)) => Some(listener::tls_acceptor(cert, key).context("configuring TLS")?),
        None => None,
    };
    // Graceful shutdown waits for every connection to close, and a watch never ends by itself:
    // after the signal, give open calls a few seconds and then stop regardless.
    let stop = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let limits = listener::fit_to_fd_limit(config.limits, config.listen.len());
    for listen in &config.listen {
        let (bound, name) = match listen {
            Listen::Tcp(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                let addr = l.local_addr()?;
                tracing::info!(%addr, tls = tls.is_some(), "API server listening");
                if tls.is_none() && !addr.ip().is_loopback() {
                    tracing::warn!(%addr, "serving plain HTTP on an address other machines can reach: bearer tokens cross the network in clear; give --tls-cert and --tls-key");
                }
                (Bound::Tcp(l), addr.to_string())
            }
            Listen::Unix(path) => {
                let l = listener::bind_unix(path)?;
                tracing::info!(socket = %path.display(), mode = "0600", "API server listening");
                (Bound::Unix(l), format!("unix://{}", path.display()))
            }
        };
        servers.spawn(listener::serve(
            bound,
            tls.clone(),
            service.clone(),
            auth.clone(),
            limits,
            metrics.listener(&name),
            stop.1.clone(),
        ));
    }
    let serving = async move {
        while let Some(done) = servers.join_next().await {
            done.context("a listener's task failed")??;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        served = serving => served?,
        () = async {
            shutdown.await;
            // Unready from the signal on, as kube-apiserver's `shutdown` check.
            shutting_down.begin();
            let _ = stop.0.send(true);
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("calls still open {SHUTDOWN_GRACE:?} after the shutdown signal; stopping"),
    }
    Ok(())
}

/// Compacts etcd every `every`, up to the revision seen one interval earlier, as Kubernetes' API
/// server does: watchers and informers keep an interval of history to resume from, and etcd does
/// not step over every deleted version of every object on each list. Several API servers may do
/// it; a compaction someone else already made is fine.
async fn compact_every(store: store::Store, every: Duration) {
    let mut previous = None;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Some(rev) = previous {
            match store.compact(rev).await {
                Ok(()) => tracing::info!(revision = rev, "compacted etcd history"),
                Err(e) => tracing::warn!(error = %e, revision = rev, "compacting etcd failed"),
            }
        }
        previous = match store.revision().await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "reading etcd's revision failed");
                None
            }
        };
    }
}
