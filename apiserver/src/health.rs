//! The API server's readiness checks, as kube-apiserver's `/readyz` has them besides `ping`:
//! `etcd` (etcd answered recently) and `shutdown` (no shutdown signal yet).
//!
//! `etcd` reads state the server keeps anyway: every etcd call that succeeds stamps
//! [`EtcdHealth`]. Only when no call has succeeded for [`PROBE_EVERY`] does [`watch_etcd`] make
//! one cheap read of its own, which is not timed into
//! `skiff_apiserver_etcd_request_duration_seconds` (the benchmarks read that histogram as the
//! latency of API requests). A probe of `/readyz` never calls etcd: it only reads the stamps.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use skiff_runtime::{Flag, Readiness, server::CheckResult};
use tokio::time::{Instant, MissedTickBehavior};

use crate::store::Store;

/// How long etcd may go without answering before the server makes a read of its own.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long that read may take before etcd counts as unhealthy.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long without any answer from etcd fails the check even when no read has failed (a
/// probe loop that stopped, or one read hanging past its timeout): well above the longest
/// silence of a healthy etcd, [`PROBE_EVERY`] plus a read.
const STALE: Duration = Duration::from_secs(10);

/// When etcd last answered and when the server's own read of it last failed.
#[derive(Debug)]
pub struct EtcdHealth {
    epoch: Instant,
    /// Milliseconds after `epoch`, plus one, of the last answer; 0: none yet.
    answered: AtomicU64,
    /// Likewise for the last failed health read.
    failed: AtomicU64,
    /// Why that read failed.
    why: Mutex<String>,
}

impl Default for EtcdHealth {
    fn default() -> Self {
        EtcdHealth {
            epoch: Instant::now(),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            why: Mutex::default(),
        }
    }
}

impl EtcdHealth {
    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX - 1)
            + 1
    }

    /// etcd answered a call just now.
    pub fn answered(&self) {
        self.answered
            .fetch_max(self.stamp(Instant::now()), Ordering::Relaxed);
    }

    /// The server's own read of etcd failed just now, for `why`.
    pub fn failed(&self, why: String) {
        *self
            .why
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
        self.failed
            .fetch_max(self.stamp(Instant::now()), Ordering::Relaxed);
    }

    /// Whether etcd answered within the last `within`.
    pub fn answered_within(&self, within: Duration) -> bool {
        let answered = self.answered.load(Ordering::Relaxed);
        answered != 0 && self.stamp(Instant::now()) - answered <= millis(within)
    }

    /// The `etcd` readiness check.
    pub fn check(&self) -> CheckResult {
        let answered = self.answered.load(Ordering::Relaxed);
        if self.failed.load(Ordering::Relaxed) > answered {
            let why = self
                .why
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            return Err(format!("health read failed: {why}"));
        }
        if answered == 0 {
            return Err("etcd has not answered yet".into());
        }
        let silent = self.stamp(Instant::now()) - answered;
        if silent > millis(STALE) {
            return Err(format!(
                "etcd has not answered for {:.1}s",
                Duration::from_millis(silent).as_secs_f64()
            ));
        }
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads etcd whenever it has not answered for [`PROBE_EVERY`], until the task is dropped: at
/// most one read every [`PROBE_EVERY`], none while API requests keep etcd busy.
pub async fn watch_etcd(store: Store) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !store.health().answered_within(PROBE_EVERY) {
            store.probe_health(PROBE_TIMEOUT).await;
        }
    }
}

/// Fails the `shutdown` check from the shutdown signal on, so load balancers stop sending new
/// requests while open calls get their grace.
#[derive(Debug, Clone)]
pub struct ShuttingDown(Flag);

impl ShuttingDown {
    pub fn begin(&self) {
        self.0.set(false);
    }
}

/// The API server's readiness checks (after `ping`, which the status server adds): `etcd`,
/// from `store`'s [`EtcdHealth`], and `shutdown`.
pub fn readiness(store: &Store) -> (Readiness, ShuttingDown) {
    let readiness = Readiness::default();
    let health = store.health().clone();
    readiness.add_check("etcd", move || health.check());
    let serving = Flag::default();
    serving.set(true);
    let s = serving.clone();
    readiness.add_check("shutdown", move || {
        if s.get() {
            Ok(())
        } else {
            Err("the server is shutting down".into())
        }
    });
    (readiness, ShuttingDown(serving))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn etcd_is_ready_while_it_answers_and_fails_on_a_failed_read_or_a_long_silence() {
        let h = EtcdHealth::default();
        assert_eq!(h.check(), Err("etcd has not answered yet".into()));
        assert!(!h.answered_within(PROBE_EVERY));
        tokio::time::advance(Duration::from_millis(5)).await;
        h.answered();
        assert_eq!(h.check(), Ok(()));
        assert!(h.answered_within(PROBE_EVERY));
        tokio::time::advance(PROBE_EVERY + Duration::from_millis(1)).await;
        // Time for a read of its own; still ready meanwhile.
        assert!(!h.answered_within(PROBE_EVERY));
        assert_eq!(h.check(), Ok(()));
        h.failed("etcd is unavailable; try again".into());
        assert_eq!(
            h.check(),
            Err("health read failed: etcd is unavailable; try again".into())
        );
        // The next answer, from a read or an API call, makes it ready again.
        tokio::time::advance(Duration::from_secs(1)).await;
        h.answered();
        assert_eq!(h.check(), Ok(()));
        // A silence past STALE fails even without a failed read.
        tokio::time::advance(STALE + Duration::from_millis(500)).await;
        assert_eq!(h.check(), Err("etcd has not answered for 10.5s".into()));
    }
}
