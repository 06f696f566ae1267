//! What every control loop shares: informers, work queues, leader election, metrics and the
//! status server, and the flags and signals of a control-plane process.

pub mod conditions;
pub mod expectations;
pub mod informer;
pub mod leader;
pub mod metrics;
pub mod queue;
pub mod server;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use skiff_api::client::{Client, ClientConfig};

pub use self::{
    expectations::Expectations,
    informer::{Backoff, Event, Informer, key_of, split_key},
    leader::LeaderConfig,
    metrics::{LeaderMetrics, Registry},
    queue::{Queue, QueueMetrics},
    server::{Flag, Readiness},
};

/// How a control-plane process reaches the API server and elects its leader.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// The API server: `http://host:port`, `https://host:port` or `unix:///path`.
    #[arg(long, env = "SKIFF_SERVER", default_value = "http://127.0.0.1:6443")]
    pub server: String,
    /// A file holding this component's bearer token (role controller).
    #[arg(long, env = "SKIFF_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The bearer token itself (prefer --token-file: arguments are visible to every user).
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate to verify an https:// server with.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Run only while holding the component's lease, so several replicas can stand by.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Seconds a standby waits on an unrenewed lease before taking over.
    #[arg(long, default_value_t = 15.0)]
    pub leader_elect_lease_duration: f64,
    /// Seconds a leader keeps acting without renewing (below the lease duration).
    #[arg(long, default_value_t = 10.0)]
    pub leader_elect_renew_deadline: f64,
    /// Seconds between renewals, and between a standby's looks at the lease.
    #[arg(long, default_value_t = 2.0)]
    pub leader_elect_retry_period: f64,
    /// This replica's name in the lease (default: hostname_pid).
    #[arg(long)]
    pub identity: Option<String>,
    /// host:port serving Prometheus `/metrics`, `/healthz`, `/livez` and `/readyz` (plain
    /// HTTP); off when unset.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow::anyhow!("--{what} must be a positive number of seconds"))
}

impl CommonArgs {
    /// Connects, retrying for a while: a control-plane process may start before its server.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let token = match (&self.token_file, &self.token) {
            (Some(path), _) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading the token file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
            (None, Some(t)) => t.clone(),
            (None, None) => anyhow::bail!("no token: give --token-file or set SKIFF_TOKEN"),
        };
        let mut config = ClientConfig::new(self.server.clone(), token);
        config.ca_cert = self.ca_cert.clone();
        let mut backoff = Backoff::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            // Connected is not enough: the server must know the token, or the component would
            // only find out at its first call.
            let connected = match Client::connect(&config).await {
                Ok(c) => c.who_am_i().await.map(|(user, _)| (c, user)),
                Err(e) => Err(e),
            };
            match connected {
                Ok((c, user)) => {
                    // `skiff-local restart` waits for this line.
                    tracing::info!(%user, server = %self.server, "connected to the API server");
                    return Ok(c);
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "cannot reach the API server yet; retrying");
                    backoff.wait().await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Serves `registry` and `readiness` on `--metrics-listen` in a task of its own; nothing
    /// when the flag is unset.
    pub async fn serve_status(
        &self,
        registry: Registry,
        readiness: &Readiness,
    ) -> anyhow::Result<()> {
        let Some(addr) = self.metrics_listen else {
            return Ok(());
        };
        let listener = server::bind(addr).await?;
        tracing::info!(%addr, "serving /metrics, /healthz, /livez and /readyz");
        tokio::spawn(server::serve(
            listener,
            Arc::new(registry),
            readiness.clone(),
        ));
        Ok(())
    }

    /// The lease settings for the component whose lease is `name`.
    pub fn leader_config(&self, name: &str) -> anyhow::Result<LeaderConfig> {
        let mut c = LeaderConfig::new(
            name,
            &self
                .identity
                .clone()
                .unwrap_or_else(leader::default_identity),
        );
        c.lease_duration = secs(
            self.leader_elect_lease_duration,
            "leader-elect-lease-duration",
        )?;
        c.renew_deadline = secs(
            self.leader_elect_renew_deadline,
            "leader-elect-renew-deadline",
        )?;
        c.retry_period = secs(self.leader_elect_retry_period, "leader-elect-retry-period")?;
        c.check().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

/// Runs `workers` workers that take keys from `queue` and sync them, until aborted: a sync that
/// succeeds clears the key's failures and, if it says when, looks again then; one that fails is
/// retried after the key's back-off (logged at debug when `expected(&error)`, e.g. a conflict
/// with a newer version, otherwise as a warning).
pub async fn run_workers<T, F, Fut, E>(
    this: std::sync::Arc<T>,
    queue: Queue,
    workers: usize,
    controller: &'static str,
    expected: fn(&E) -> bool,
    sync: F,
) where
    T: Send + Sync + 'static,
    F: Fn(std::sync::Arc<T>, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Option<Duration>, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    use tracing::Instrument as _;
    let sync = std::sync::Arc::new(sync);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (this, queue, sync) = (this.clone(), queue.clone(), sync.clone());
        set.spawn(async move {
            while let Some(key) = queue.next().await {
                let span = tracing::debug_span!("sync", controller, key = %key);
                match sync(this.clone(), key.clone()).instrument(span).await {
                    Ok(again) => {
                        queue.forget(&key);
                        if let Some(after) = again {
                            queue.add_after(key.clone(), after);
                        }
                    }
                    Err(e) => {
                        if expected(&e) {
                            tracing::debug!(controller, key = %key, error = %e, "stale cache; retrying");
                        } else {
                            tracing::warn!(controller, key = %key, error = %e, "sync failed; retrying");
                        }
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Logs to stderr, filtered by `RUST_LOG` (default info).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Starts a control-plane component and runs it until a signal: registers
/// `leader_election_master_status` and then what `register` adds, serves them with `/readyz`
/// (checks `api-server-connected` and `informers-synced`) on `--metrics-listen`, connects to the
/// API server, then runs `work(client, synced)` forever, or only while leading the lease `lease`
/// when `--leader-elect` is on. `synced` starts set, since a standby replica is ready (it can
/// take over); the leader's work holds it unset until its informers have synced.
pub async fn run_component<F, Fut>(
    args: &CommonArgs,
    lease: &str,
    register: impl FnOnce(&mut Registry),
    mut work: F,
) -> anyhow::Result<()>
where
    F: FnMut(Client, Flag) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut registry = Registry::default();
    let leader = LeaderMetrics::default();
    leader.register(&mut registry);
    register(&mut registry);
    let readiness = Readiness::default();
    let connected = readiness.flag("api-server-connected");
    let synced = readiness.flag("informers-synced");
    synced.set(true);
    args.serve_status(registry, &readiness).await?;
    let client = args.connect().await?;
    connected.set(true);
    let work = {
        let client = client.clone();
        move || work(client.clone(), synced.clone())
    };
    run_work(args, client, lease, &leader, work).await
}

/// Runs `work` forever, or only while leading when `--leader-elect` is on, until a signal.
/// `leader` reports whether this replica leads the lease `lease`.
async fn run_work<F, Fut>(
    args: &CommonArgs,
    client: Client,
    lease: &str,
    leader: &LeaderMetrics,
    work: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if args.leader_elect {
        let mut config = args.leader_config(lease)?;
        config.status = leader.status(lease);
        leader::run(client, config, work, shutdown_signal()).await;
    } else {
        let mut work = work;
        let mut task = tokio::spawn(work());
        tokio::select! {
            () = shutdown_signal() => task.abort(),
            r = &mut task => anyhow::bail!("the component stopped: {r:?}"),
        }
    }
    tracing::info!("shutting down");
    Ok(())
}
