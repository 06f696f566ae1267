//! Leader election through a Lease object in the API (compare-and-swap on its resourceVersion),
//! as Kubernetes components do it: one replica leads, the others stand by and take over once the
//! lease has gone unrenewed for its duration, and a leader that cannot renew in time stops acting
//! at once.

use std::{future::Future, time::Duration};

use skiff_api::{
    ObjectMeta,
    client::{Client, ClientError},
    kinds::{Lease, LeaseSpec},
    meta::time,
};
use tokio::time::Instant;

use crate::metrics::Gauge;

/// Where the lease lives and how it is timed.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    /// The Lease's name, one per component (`skiff-scheduler`).
    pub name: String,
    /// This replica, as written to `holderIdentity`.
    pub identity: String,
    /// How long a standby waits on an unrenewed lease before taking it.
    pub lease_duration: Duration,
    /// How long a leader keeps acting without a successful renewal; below `lease_duration` so
    /// it has stopped before anyone else can take over.
    pub renew_deadline: Duration,
    /// How often a leader renews and a standby looks.
    pub retry_period: Duration,
    /// Set to 1 while this replica leads and 0 while it stands by
    /// (`leader_election_master_status`; an unregistered gauge unless given one).
    pub status: Gauge,
}

impl LeaderConfig {
    pub fn new(name: &str, identity: &str) -> LeaderConfig {
        LeaderConfig {
            namespace: "skiff-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            status: Gauge::default(),
        }
    }

    /// Refuses timings under which two replicas could act at once.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(format!(
                "the retry period ({:?}) must be above zero and shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// A name for this process: `hostname_pid`.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}_{}", host.trim(), std::process::id())
}

/// What a standby last saw of the lease, and when it last changed.
struct Observed {
    record: (Option<String>, Option<String>, String),
    since: Instant,
}

/// Campaigns for the lease until `shutdown` resolves. While this replica leads, `lead()` runs in
/// its own task; that task is aborted the moment leadership is lost (and everything it owns,
/// such as a `JoinSet` of workers, with it), and the replica goes back to standing by. On
/// shutdown a leader releases the lease so a standby takes over without waiting.
pub async fn run<F, Fut>(client: Client, config: LeaderConfig, mut lead: F, shutdown: impl Future)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    let mut observed: Option<Observed> = None;
    config.status.set(0);
    'campaign: loop {
        // Stand by until the lease is ours.
        let acquired = loop {
            let attempt = Instant::now();
            match try_acquire(&client, &config, &mut observed).await {
                Ok(true) => break attempt,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, lease = %config.name, "leader election: cannot read or write the lease")
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                () = tokio::time::sleep(config.retry_period) => {}
            }
        };
        tracing::info!(lease = %config.name, identity = %config.identity, "became the leader");
        config.status.set(1);
        let mut task = tokio::spawn(lead());
        let mut renewed = acquired;
        let mut attempted = acquired;
        let lost = loop {
            tokio::select! {
                _ = &mut shutdown => {
                    task.abort();
                    let _ = (&mut task).await;
                    config.status.set(0);
                    release(&client, &config).await;
                    return;
                }
                r = &mut task => {
                    // The leading work ended by itself (it should not): give the lease up.
                    tracing::error!(lease = %config.name, result = ?r.err(), "the leading work stopped; giving up the lease");
                    config.status.set(0);
                    release(&client, &config).await;
                    observed = None;
                    continue 'campaign;
                }
                () = tokio::time::sleep_until(attempted + config.retry_period) => {}
            }
            // The lease runs from when the renewal was sent, not from when it was answered.
            attempted = Instant::now();
            let left = config.renew_deadline.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, renew(&client, &config)).await {
                Ok(Ok(true)) => renewed = attempted,
                Ok(Ok(false)) => break "another replica holds the lease",
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, lease = %config.name, "lease renewal failed")
                }
                Err(_) => {}
            }
            if renewed.elapsed() >= config.renew_deadline {
                break "the lease could not be renewed within the renew deadline";
            }
        };
        task.abort();
        let _ = task.await;
        config.status.set(0);
        tracing::warn!(lease = %config.name, reason = lost, "lost leadership; stopped acting and standing by");
        observed = None;
    }
}

/// The lease duration written to the Lease, in whole seconds rounded up (a standby elsewhere
/// must never wait less than this replica's renew deadline).
fn lease_duration_secs(config: &LeaderConfig) -> i32 {
    let ms = config.lease_duration.as_millis().max(1);
    i32::try_from(ms.div_ceil(1000)).unwrap_or(i32::MAX)
}

/// One standby step: `true` once this replica holds the lease.
async fn try_acquire(
    client: &Client,
    config: &LeaderConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, ClientError> {
    let now = time::format_micros(std::time::SystemTime::now());
    let lease = match client.get::<Lease>(&config.namespace, &config.name).await {
        Ok(l) => l,
        Err(e) if e.is_not_found() => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: config.name.clone(),
                    namespace: config.namespace.clone(),
                    ..ObjectMeta::default()
                },
                spec: LeaseSpec {
                    holder_identity: Some(config.identity.clone()),
                    lease_duration_seconds: Some(lease_duration_secs(config)),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                },
            };
            return match client.create(&lease).await {
                Ok(_) => Ok(true),
                Err(e) if e.is_already_exists() => Ok(false),
                Err(e) => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    let holder = lease.spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (
        holder.clone(),
        lease.spec.renew_time.clone(),
        lease.metadata.resource_version.clone(),
    );
    let expired = match (&holder, observed.as_ref()) {
        (None, _) => true,
        (Some(h), _) if *h == config.identity => true,
        (Some(_), Some(o)) if o.record == record => {
            let duration = lease
                .spec
                .lease_duration_seconds
                .map_or(config.lease_duration, |s| {
                    Duration::from_secs(u64::try_from(s).unwrap_or(0))
                });
            o.since.elapsed() >= duration
        }
        _ => {
            *observed = Some(Observed {
                record,
                since: Instant::now(),
            });
            false
        }
    };
    if !expired {
        return Ok(false);
    }
    let mut next = lease;
    let same_holder = holder.as_deref() == Some(config.identity.as_str());
    if !same_holder {
        next.spec.acquire_time = Some(now.clone());
        next.spec.lease_transitions = Some(next.spec.lease_transitions.unwrap_or(0) + 1);
    }
    next.spec.holder_identity = Some(config.identity.clone());
    next.spec.lease_duration_seconds = Some(lease_duration_secs(config));
    next.spec.renew_time = Some(now);
    match client.update(&next).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_conflict() => Ok(false),
        Err(e) => Err(e),
    }
}

/// One leader step: `Ok(false)` when the lease turned out to be someone else's.
async fn renew(client: &Client, config: &LeaderConfig) -> Result<bool, ClientError> {
    let mut lease = client.get::<Lease>(&config.namespace, &config.name).await?;
    if lease.spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(false);
    }
    lease.spec.renew_time = Some(time::format_micros(std::time::SystemTime::now()));
    match client.update(&lease).await {
        Ok(_) => Ok(true),
        // Someone wrote the lease between our read and write: only a takeover does that.
        Err(e) if e.is_conflict() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up so a standby need not wait out its duration.
async fn release(client: &Client, config: &LeaderConfig) {
    let attempt = async {
        let mut lease = client.get::<Lease>(&config.namespace, &config.name).await?;
        if lease.spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
            return Ok(());
        }
        lease.spec.holder_identity = None;
        lease.spec.lease_duration_seconds = Some(1);
        lease.spec.renew_time = Some(time::format_micros(std::time::SystemTime::now()));
        client.update(&lease).await.map(|_| ())
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(())) => tracing::info!(lease = %config.name, "released the lease"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not release the lease"),
        Err(_) => tracing::warn!("releasing the lease timed out"),
    }
}
