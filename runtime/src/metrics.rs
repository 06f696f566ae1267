//! Prometheus metrics through `prometheus-client`: the shared bucket layouts, the text
//! encoding every `/metrics` endpoint serves, and the metrics of leader election.
//!
//! Components build one [`Registry`] at start, register every metric family in it, and hand it
//! to [`crate::server::serve`]. Families are registered once; the series inside them (one per
//! label set) come and go at run time, so a controller built again after a change of leader
//! reuses the series of its predecessor rather than registering a second copy.
//!
//! The registry appends a full stop to every help text, so help texts here end without one.

use std::{borrow::Cow, time::Duration};

pub use prometheus_client::{
    self,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Upper bounds (seconds) of the request and programming latency histograms of the API server
/// and the agent; the benchmarks and dashboards read these exact buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram over [`LATENCY_BUCKETS`] (a `fn`, so it can construct a [`Family`]'s members).
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// `start, start*factor, ...`: `count` bounds, as Kubernetes' `ExponentialBuckets`.
pub fn exponential_buckets(start: f64, factor: f64, count: u16) -> Vec<f64> {
    prometheus_client::metrics::histogram::exponential_buckets(start, factor, count).collect()
}

/// One label: a static name and a value that is usually static too.
pub type Label = (&'static str, Cow<'static, str>);

/// A label set of one label.
pub type OneLabel = [Label; 1];

/// The label set `{name="value"}`.
pub fn label(name: &'static str, value: impl Into<Cow<'static, str>>) -> OneLabel {
    [(name, value.into())]
}

/// Seconds, for observing a duration.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The registry in the Prometheus text exposition format (version 0.0.4), what Prometheus and
/// the project's tests and benchmarks read.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; a metric that failed to encode is left out.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding the metrics");
    }
    out
}

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Whether this replica leads, per lease: Kubernetes' `leader_election_master_status`.
#[derive(Debug, Clone, Default)]
pub struct LeaderMetrics {
    status: Family<OneLabel, Gauge>,
}

impl LeaderMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "leader_election_master_status",
            "Whether this replica leads (1) or stands by (0), by lease name",
            self.status.clone(),
        );
    }

    /// The gauge of the lease `name`, created at 0 (standing by).
    pub fn status(&self, name: &str) -> Gauge {
        self.status
            .get_or_create_owned(&label("name", name.to_owned()))
    }
}

/// The value of the sample written exactly as `series` (name and labels, as exposed) in a
/// Prometheus text page: for tests and benchmarks that read `/metrics`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `(series with labels, value)` of every sample line, checking each line parses as the
    /// text format has it: comments, or a series name, optional labels, and a number.
    pub(crate) fn samples(text: &str) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad series name in {line:?}"
            );
            if name_end < series.len() {
                let labels = series[name_end..]
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                for kv in labels.split("\",").filter(|kv| !kv.is_empty()) {
                    let (k, v) = kv
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label {kv:?} in {line:?}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "bad label name in {line:?}"
                    );
                    assert!(!v.contains('"') || v.ends_with('"'), "{line:?}");
                }
            }
            out.push((series.to_owned(), value));
        }
        out
    }

    /// The value of the series written exactly as `series` (name and labels).
    pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
        samples(text)
            .into_iter()
            .find_map(|(s, v)| (s == series).then_some(v))
    }

    #[test]
    fn latency_histograms_keep_their_bucket_bounds_and_cumulative_counts() {
        let mut r = Registry::default();
        let h = latency_histogram();
        r.register("x_seconds", "X", h.clone());
        h.observe(secs(Duration::from_micros(700)));
        h.observe(secs(Duration::from_millis(30)));
        let text = encode(&r);
        assert!(text.starts_with("# HELP x_seconds X.\n# TYPE x_seconds histogram\n"));
        for (le, n) in [
            ("0.0005", 0.0),
            ("0.001", 1.0),
            ("0.025", 1.0),
            ("0.05", 2.0),
            ("1", 2.0),
            ("10", 2.0),
            ("+Inf", 2.0),
        ] {
            assert_eq!(
                sample(&text, &format!("x_seconds_bucket{{le=\"{le}\"}}")),
                Some(n),
                "{text}"
            );
        }
        assert_eq!(
            samples(&text)
                .iter()
                .filter(|(s, _)| s.starts_with("x_seconds_bucket"))
                .count(),
            LATENCY_BUCKETS.len() + 1
        );
        assert_eq!(sample(&text, "x_seconds_count"), Some(2.0));
        let sum = sample(&text, "x_seconds_sum").unwrap();
        assert!((sum - 0.0307).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn leader_status_is_one_series_per_lease() {
        let mut r = Registry::default();
        let m = LeaderMetrics::default();
        m.register(&mut r);
        m.status("skiff-scheduler").set(1);
        // A second handle on the same lease is the same series.
        m.status("skiff-scheduler").set(0);
        m.status("skiff-controller-manager").set(1);
        let text = encode(&r);
        assert_eq!(
            sample(
                &text,
                "leader_election_master_status{name=\"skiff-scheduler\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "leader_election_master_status{name=\"skiff-controller-manager\"}"
            ),
            Some(1.0)
        );
        assert!(text.contains("# TYPE leader_election_master_status gauge\n"));
    }
}
