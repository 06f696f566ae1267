//! Prometheus metrics of the API server, served on `--metrics-listen` with `/healthz`,
//! `/livez` and `/readyz` by the shared status server ([`skiff_runtime::server`]); the
//! readiness checks are in [`crate::health`].

use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
    time::Duration,
};

use skiff_runtime::{
    Readiness,
    metrics::{
        Counter, Family, Gauge, Histogram, Label, OneLabel, Registry, label, latency_histogram,
        secs,
    },
};
use tokio::net::TcpListener;

type RequestLabels = [Label; 3];
type LatencyLabels = [Label; 2];
type ListenerReason = [Label; 2];

/// All of the API server's metrics (cheap handles: the families share their series).
#[derive(Debug)]
pub struct Metrics {
    /// verb, resource, code.
    requests: Family<RequestLabels, Counter>,
    /// verb, resource.
    latency: Family<LatencyLabels, Histogram>,
    /// etcd operation.
    etcd: Family<OneLabel, Histogram>,
    watches: Gauge,
    watch_events: Counter,
    watches_direct: Gauge,
    /// By listener.
    connections: Family<OneLabel, Gauge>,
    refused: Family<OneLabel, Counter>,
    /// By listener and reason.
    closed: Family<ListenerReason, Counter>,
    streams_refused: Family<OneLabel, Counter>,
    /// Each listener's handles, by listen address.
    listeners: Mutex<Vec<(String, Arc<ListenerMetrics>)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            etcd: Family::new_with_constructor(latency_histogram),
            watches: Gauge::default(),
            watch_events: Counter::default(),
            watches_direct: Gauge::default(),
            connections: Family::default(),
            refused: Family::default(),
            closed: Family::default(),
            streams_refused: Family::default(),
            listeners: Mutex::default(),
        }
    }
}

/// Why a listener closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The TLS handshake or the HTTP/2 preface did not arrive within the handshake timeout.
    HandshakeTimeout,
    /// The TLS handshake failed.
    TlsError,
    /// No stream was open for the idle timeout.
    Idle,
    /// The listener was full and this connection had not yet made an authenticated call, so it
    /// made room for a new one.
    Evicted,
}

impl Closed {
    const ALL: [Closed; 4] = [
        Closed::HandshakeTimeout,
        Closed::TlsError,
        Closed::Idle,
        Closed::Evicted,
    ];

    fn label(self) -> &'static str {
        match self {
            Closed::HandshakeTimeout => "handshake_timeout",
            Closed::TlsError => "tls_error",
            Closed::Idle => "idle",
            Closed::Evicted => "evicted",
        }
    }
}

/// The connection counts of one listener.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    open: Gauge,
    refused: Counter,
    closed: [Counter; Closed::ALL.len()],
    streams_refused: Counter,
}

impl ListenerMetrics {
    /// A connection was accepted (`+1`) or has ended (`-1`).
    pub fn open(&self, delta: i64) {
        self.open.inc_by(delta);
    }

    /// A connection was closed at once because every slot was held by authenticated ones.
    pub fn refused(&self) {
        self.refused.inc();
    }

    pub fn closed(&self, why: Closed) {
        self.closed[why as usize].inc();
    }

    /// A stream was refused because its connection had the most concurrent streams allowed.
    pub fn stream_refused(&self) {
        self.streams_refused.inc();
    }
}

impl Metrics {
    pub fn request(&self, verb: &'static str, resource: &str, code: &'static str, took: Duration) {
        let resource: Cow<'static, str> = resource.to_owned().into();
        self.requests
            .get_or_create(&[
                ("verb", verb.into()),
                ("resource", resource.clone()),
                ("code", code.into()),
            ])
            .inc();
        self.latency
            .get_or_create(&[("verb", verb.into()), ("resource", resource)])
            .observe(secs(took));
    }

    pub fn etcd(&self, op: &'static str, took: Duration) {
        self.etcd
            .get_or_create(&label("operation", op))
            .observe(secs(took));
    }

    pub fn watch_started(&self) {
        self.watches.inc();
    }

    pub fn watch_ended(&self) {
        self.watches.dec();
    }

    /// A watch the cache could not serve has (`+1`) or no longer has (`-1`) its own etcd watch.
    pub fn watch_direct(&self, delta: i64) {
        self.watches_direct.inc_by(delta);
    }

    /// The counters of the listener on `listen` (registered on first use, every series at 0).
    pub fn listener(&self, listen: &str) -> Arc<ListenerMetrics> {
        let mut all = self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, m)) = all.iter().find(|(l, _)| l == listen) {
            return m.clone();
        }
        let l = label("listener", listen.to_owned());
        let m = Arc::new(ListenerMetrics {
            open: self.connections.get_or_create_owned(&l),
            refused: self.refused.get_or_create_owned(&l),
            closed: Closed::ALL.map(|why| {
                self.closed
                    .get_or_create_owned(&[l[0].clone(), ("reason", why.label().into())])
            }),
            streams_refused: self.streams_refused.get_or_create_owned(&l),
        });
        all.push((listen.to_owned(), m.clone()));
        m
    }

    pub fn watch_event(&self) {
        self.watch_events.inc();
    }

    /// A registry holding every metric (families are shared, so it shows their current
    /// values whenever it is encoded).
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "skiff_apiserver_requests",
            "API requests by verb, resource and result",
            self.requests.clone(),
        );
        r.register(
            "skiff_apiserver_request_duration_seconds",
            "API request latency by verb and resource",
            self.latency.clone(),
        );
        r.register(
            "skiff_apiserver_etcd_request_duration_seconds",
            "etcd request latency by operation",
            self.etcd.clone(),
        );
        r.register(
            "skiff_apiserver_watches",
            "Open watch streams",
            self.watches.clone(),
        );
        r.register(
            "skiff_apiserver_watches_direct",
            "Open watches served by an etcd watch of their own rather than the watch cache",
            self.watches_direct.clone(),
        );
        r.register(
            "skiff_apiserver_watch_events",
            "Events sent to watchers",
            self.watch_events.clone(),
        );
        r.register(
            "skiff_apiserver_connections",
            "Open connections by listener",
            self.connections.clone(),
        );
        r.register(
            "skiff_apiserver_connections_refused",
            "Connections closed on accept because the listener was full of authenticated connections",
            self.refused.clone(),
        );
        r.register(
            "skiff_apiserver_connections_closed",
            "Connections the server closed, by reason",
            self.closed.clone(),
        );
        r.register(
            "skiff_apiserver_streams_refused",
            "Calls refused because their connection had the most concurrent streams allowed",
            self.streams_refused.clone(),
        );
        r
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        skiff_runtime::metrics::encode(&self.registry())
    }
}

/// Serves `GET /metrics`, `/healthz`, `/livez` and `/readyz` (with `readiness`) over plain
/// HTTP/1.1 until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, readiness: Readiness) {
    skiff_runtime::server::serve(listener, Arc::new(metrics.registry()), readiness).await;
}

#[cfg(test)]
mod tests {
    use skiff_runtime::metrics::sample;

    use super::*;

    #[test]
    fn every_series_keeps_its_name_labels_and_type() {
        let m = Metrics::default();
        m.request("create", "pods", "OK", Duration::from_millis(3));
        m.request("create", "pods", "OK", Duration::from_millis(30));
        m.request("list", "pods", "NotFound", Duration::from_micros(200));
        m.etcd("txn", Duration::from_millis(2));
        m.watch_started();
        m.watch_started();
        m.watch_ended();
        m.watch_direct(1);
        m.watch_event();
        let l = m.listener("127.0.0.1:6443");
        assert!(Arc::ptr_eq(&l, &m.listener("127.0.0.1:6443")));
        l.open(1);
        l.closed(Closed::Idle);
        l.stream_refused();
        let text = m.render();
        for (series, want) in [
            (
                "skiff_apiserver_requests_total{verb=\"create\",resource=\"pods\",code=\"OK\"}",
                2.0,
            ),
            (
                "skiff_apiserver_requests_total{verb=\"list\",resource=\"pods\",code=\"NotFound\"}",
                1.0,
            ),
            (
                "skiff_apiserver_request_duration_seconds_bucket{verb=\"create\",resource=\"pods\",le=\"0.005\"}",
                1.0,
            ),
            (
                "skiff_apiserver_request_duration_seconds_bucket{verb=\"create\",resource=\"pods\",le=\"+Inf\"}",
                2.0,
            ),
            (
                "skiff_apiserver_request_duration_seconds_sum{verb=\"create\",resource=\"pods\"}",
                0.033,
            ),
            (
                "skiff_apiserver_request_duration_seconds_count{verb=\"create\",resource=\"pods\"}",
                2.0,
            ),
            (
                "skiff_apiserver_etcd_request_duration_seconds_count{operation=\"txn\"}",
                1.0,
            ),
            (
                "skiff_apiserver_etcd_request_duration_seconds_bucket{operation=\"txn\",le=\"0.0025\"}",
                1.0,
            ),
            ("skiff_apiserver_watches", 1.0),
            ("skiff_apiserver_watches_direct", 1.0),
            ("skiff_apiserver_watch_events_total", 1.0),
            (
                "skiff_apiserver_connections{listener=\"127.0.0.1:6443\"}",
                1.0,
            ),
            (
                "skiff_apiserver_connections_refused_total{listener=\"127.0.0.1:6443\"}",
                0.0,
            ),
            (
                "skiff_apiserver_connections_closed_total{listener=\"127.0.0.1:6443\",reason=\"idle\"}",
                1.0,
            ),
            // Every reason is reported from the start, at 0.
            (
                "skiff_apiserver_connections_closed_total{listener=\"127.0.0.1:6443\",reason=\"evicted\"}",
                0.0,
            ),
            (
                "skiff_apiserver_connections_closed_total{listener=\"127.0.0.1:6443\",reason=\"handshake_timeout\"}",
                0.0,
            ),
            (
                "skiff_apiserver_streams_refused_total{listener=\"127.0.0.1:6443\"}",
                1.0,
            ),
        ] {
            let got = sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
            assert!((got - want).abs() < 1e-9, "{series}: {got} != {want}");
        }
        for (name, kind) in [
            ("skiff_apiserver_requests_total", "counter"),
            ("skiff_apiserver_request_duration_seconds", "histogram"),
            ("skiff_apiserver_etcd_request_duration_seconds", "histogram"),
            ("skiff_apiserver_watches", "gauge"),
            ("skiff_apiserver_watches_direct", "gauge"),
            ("skiff_apiserver_watch_events_total", "counter"),
            ("skiff_apiserver_connections", "gauge"),
            ("skiff_apiserver_connections_refused_total", "counter"),
            ("skiff_apiserver_connections_closed_total", "counter"),
            ("skiff_apiserver_streams_refused_total", "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
        }
        // Every request histogram has its 14 bounds and +Inf.
        let buckets = text
            .lines()
            .filter(|l| {
                l.starts_with(
                    "skiff_apiserver_request_duration_seconds_bucket{verb=\"list\",resource=\"pods\",",
                )
            })
            .count();
        assert_eq!(buckets, 15, "{text}");
    }

    #[test]
    fn the_benchmarks_parser_finds_every_sum_and_count() {
        // The shape bench/src/control/server.rs reads: `name{labels} value`, split at the
        // last space, labels split at commas.
        let m = Metrics::default();
        m.request("get", "pods", "OK", Duration::from_millis(1));
        m.etcd("get", Duration::from_millis(1));
        let text = m.render();
        let mut found = 0;
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Some((name, _labels)) = series.strip_suffix('}').and_then(|s| s.split_once('{'))
            else {
                continue;
            };
            if name.ends_with("_sum") || name.ends_with("_count") {
                assert!(value.parse::<f64>().is_ok(), "{line}");
                found += 1;
            }
        }
        assert_eq!(found, 4, "{text}");
    }
}
