//! The scheduler's metrics, named and labelled as Kubernetes' scheduler has them:
//! `scheduler_schedule_attempts_total` and `scheduler_scheduling_attempt_duration_seconds` by
//! `result` (`scheduled`, `unschedulable`, `error`) and `profile` (Skiff has one,
//! `default-scheduler`), and `scheduler_pending_pods` by `queue`.

use std::time::Duration;

use skiff_runtime::metrics::{
    Counter, Family, Gauge, Histogram, Label, OneLabel, Registry, exponential_buckets, label, secs,
};

/// The one scheduling profile, as Kubernetes names its default.
const PROFILE: &str = "default-scheduler";

/// How a scheduling attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// The pod was bound to the node chosen for it.
    Scheduled,
    /// No node fits the pod.
    Unschedulable,
    /// The binding failed (or the pod went away, or was bound by someone else, meanwhile).
    Error,
}

impl AttemptResult {
    fn label(self) -> &'static str {
        match self {
            AttemptResult::Scheduled => "scheduled",
            AttemptResult::Unschedulable => "unschedulable",
            AttemptResult::Error => "error",
        }
    }
}

/// Pending pods per queue, as Kubernetes splits them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    /// Waiting for their turn.
    pub active: usize,
    /// Waiting for their back-off to pass.
    pub backoff: usize,
    /// Fit nowhere; waiting for a change in the cluster.
    pub unschedulable: usize,
}

type AttemptLabels = [Label; 2];

/// Kubernetes' buckets for attempt durations: 1 ms doubling to about 16 s.
fn attempt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The scheduler's metrics (cheap to clone; clones share the series). Register once per
/// process; each leadership term's scheduler reports into the same series.
#[derive(Debug, Clone)]
pub struct SchedulerMetrics {
    attempts: Family<AttemptLabels, Counter>,
    durations: Family<AttemptLabels, Histogram>,
    pending: Family<OneLabel, Gauge>,
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        let m = SchedulerMetrics {
            attempts: Family::default(),
            durations: Family::new_with_constructor(attempt_histogram),
            pending: Family::default(),
        };
        for r in [
            AttemptResult::Scheduled,
            AttemptResult::Unschedulable,
            AttemptResult::Error,
        ] {
            drop(m.attempts.get_or_create_owned(&Self::labels(r)));
        }
        m.set_pending(Pending::default());
        m
    }
}

impl SchedulerMetrics {
    fn labels(result: AttemptResult) -> AttemptLabels {
        [
            ("result", result.label().into()),
            ("profile", PROFILE.into()),
        ]
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "scheduler_schedule_attempts",
            "Number of attempts to schedule pods, by the result: 'unschedulable' means no node fits the pod, 'error' that its binding failed",
            self.attempts.clone(),
        );
        registry.register(
            "scheduler_scheduling_attempt_duration_seconds",
            "Scheduling attempt latency in seconds (finding a node, and binding the pod to it)",
            self.durations.clone(),
        );
        registry.register(
            "scheduler_pending_pods",
            "Pods waiting to be scheduled, by queue: 'active' waiting for their turn, 'backoff' for their back-off to pass, 'unschedulable' for a change in the cluster after fitting nowhere, 'gated' never (Skiff has no scheduling gates)",
            self.pending.clone(),
        );
    }

    /// One attempt ended with `result` after `took`.
    pub fn attempt(&self, result: AttemptResult, took: Duration) {
        let l = Self::labels(result);
        self.attempts.get_or_create(&l).inc();
        self.durations.get_or_create(&l).observe(secs(took));
    }

    /// A guard that sets every `scheduler_pending_pods` series to 0 when dropped. A scheduler
    /// holds one for its term, so a replica that loses the lease (its work aborted) stops
    /// reporting the pods it no longer schedules; the next leader reports its own.
    pub fn pending_for_term(&self) -> PendingForTerm {
        PendingForTerm(self.clone())
    }

    pub fn set_pending(&self, p: Pending) {
        for (queue, n) in [
            ("active", p.active),
            ("backoff", p.backoff),
            ("unschedulable", p.unschedulable),
            ("gated", 0),
        ] {
            self.pending
                .get_or_create(&label("queue", queue))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Zeroes the pending pods when a scheduler's term ends; see
/// [`SchedulerMetrics::pending_for_term`].
#[derive(Debug)]
#[must_use = "the gauges are zeroed when the guard is dropped"]
pub struct PendingForTerm(SchedulerMetrics);

impl Drop for PendingForTerm {
    fn drop(&mut self) {
        self.0.set_pending(Pending::default());
    }
}

#[cfg(test)]
mod tests {
    use skiff_runtime::metrics::{encode, sample};

    use super::*;

    #[test]
    fn attempts_and_pending_pods_carry_kubernetes_names_and_labels() {
        let m = SchedulerMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.attempt(AttemptResult::Scheduled, Duration::from_millis(3));
        m.attempt(AttemptResult::Scheduled, Duration::from_millis(700));
        m.attempt(AttemptResult::Unschedulable, Duration::from_micros(300));
        m.set_pending(Pending {
            active: 4,
            backoff: 2,
            unschedulable: 1,
        });
        let text = encode(&r);
        for (series, want) in [
            (
                "scheduler_schedule_attempts_total{result=\"scheduled\",profile=\"default-scheduler\"}",
                2.0,
            ),
            (
                "scheduler_schedule_attempts_total{result=\"unschedulable\",profile=\"default-scheduler\"}",
                1.0,
            ),
            // Reported from the start, at 0.
            (
                "scheduler_schedule_attempts_total{result=\"error\",profile=\"default-scheduler\"}",
                0.0,
            ),
            (
                "scheduler_scheduling_attempt_duration_seconds_bucket{result=\"scheduled\",profile=\"default-scheduler\",le=\"0.004\"}",
                1.0,
            ),
            (
                "scheduler_scheduling_attempt_duration_seconds_bucket{result=\"scheduled\",profile=\"default-scheduler\",le=\"1.024\"}",
                2.0,
            ),
            (
                "scheduler_scheduling_attempt_duration_seconds_bucket{result=\"scheduled\",profile=\"default-scheduler\",le=\"16.384\"}",
                2.0,
            ),
            (
                "scheduler_scheduling_attempt_duration_seconds_count{result=\"unschedulable\",profile=\"default-scheduler\"}",
                1.0,
            ),
            ("scheduler_pending_pods{queue=\"active\"}", 4.0),
            ("scheduler_pending_pods{queue=\"backoff\"}", 2.0),
            ("scheduler_pending_pods{queue=\"unschedulable\"}", 1.0),
            ("scheduler_pending_pods{queue=\"gated\"}", 0.0),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
        }
        for (name, kind) in [
            ("scheduler_schedule_attempts_total", "counter"),
            ("scheduler_scheduling_attempt_duration_seconds", "histogram"),
            ("scheduler_pending_pods", "gauge"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{text}");
        }
    }

    #[tokio::test]
    async fn the_pending_pods_read_zero_once_the_terms_work_is_aborted() {
        let m = SchedulerMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        let pending = |queue: &str| {
            sample(
                &encode(&r),
                &format!("scheduler_pending_pods{{queue=\"{queue}\"}}"),
            )
        };
        let (started, running) = tokio::sync::oneshot::channel();
        let term = tokio::spawn({
            let m = m.clone();
            async move {
                // As `scheduler::run` holds it, for as long as the term's work lives.
                let _term = m.pending_for_term();
                m.set_pending(Pending {
                    active: 3,
                    backoff: 1,
                    unschedulable: 2,
                });
                let _ = started.send(());
                std::future::pending::<()>().await;
            }
        });
        running.await.unwrap();
        assert_eq!(pending("active"), Some(3.0));
        assert_eq!(pending("unschedulable"), Some(2.0));
        // The lease is lost: the leader aborts the term's task.
        term.abort();
        assert!(term.await.unwrap_err().is_cancelled());
        for queue in ["active", "backoff", "unschedulable", "gated"] {
            assert_eq!(pending(queue), Some(0.0), "{queue}");
        }
    }
}
