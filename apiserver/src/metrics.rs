//! Prometheus metrics of the API server, kept in memory and served as text on `/metrics`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Upper bounds (seconds) of the latency buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if s <= *le {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{le}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// All of the API server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (verb, resource, code) -> count.
    requests: Mutex<BTreeMap<(&'static str, String, &'static str), u64>>,
    /// (verb, resource) -> latency.
    latency: Mutex<BTreeMap<(&'static str, String), Histogram>>,
    /// etcd operation -> latency.
    etcd: Mutex<BTreeMap<&'static str, Histogram>>,
    watches: AtomicI64,
    watch_events: AtomicI64,
    watches_direct: AtomicI64,
    /// Each listener's connection counts, by listen address.
    listeners: Mutex<Vec<(String, Arc<ListenerMetrics>)>>,
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
    open: AtomicI64,
    refused: AtomicU64,
    closed: [AtomicU64; Closed::ALL.len()],
    streams_refused: AtomicU64,
}

impl ListenerMetrics {
    /// A connection was accepted (`+1`) or has ended (`-1`).
    pub fn open(&self, delta: i64) {
        self.open.fetch_add(delta, Ordering::Relaxed);
    }

    /// A connection was closed at once because every slot was held by authenticated ones.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self, why: Closed) {
        self.closed[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A stream was refused because its connection had the most streams allowed.
    pub fn stream_refused(&self) {
        self.streams_refused.fetch_add(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn request(&self, verb: &'static str, resource: &str, code: &'static str, took: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((verb, resource.to_owned(), code)).or_default() += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            m.entry((verb, resource.to_owned()))
                .or_default()
                .observe(took);
        }
    }

    pub fn etcd(&self, op: &'static str, took: Duration) {
        if let Ok(mut m) = self.etcd.lock() {
            m.entry(op).or_default().observe(took);
        }
    }

    pub fn watch_started(&self) {
        self.watches.fetch_add(1, Ordering::Relaxed);
    }

    pub fn watch_ended(&self) {
        self.watches.fetch_sub(1, Ordering::Relaxed);
    }

    /// A watch the cache could not serve has (`+1`) or no longer has (`-1`) its own etcd watch.
    pub fn watch_direct(&self, delta: i64) {
        self.watches_direct.fetch_add(delta, Ordering::Relaxed);
    }

    /// The counters of the listener on `listen` (registered on first use).
    pub fn listener(&self, listen: &str) -> Arc<ListenerMetrics> {
        let Ok(mut all) = self.listeners.lock() else {
            return Arc::default();
        };
        if let Some((_, m)) = all.iter().find(|(l, _)| l == listen) {
            return m.clone();
        }
        let m = Arc::new(ListenerMetrics::default());
        all.push((listen.to_owned(), m.clone()));
        m
    }

    pub fn watch_event(&self) {
        self.watch_events.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP skiff_apiserver_requests_total API requests by verb, resource and result.\n",
        );
        out.push_str("# TYPE skiff_apiserver_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((verb, resource, code), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "skiff_apiserver_requests_total{{verb=\"{verb}\",resource=\"{resource}\",code=\"{code}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP skiff_apiserver_request_duration_seconds API request latency by verb and resource.\n");
        out.push_str("# TYPE skiff_apiserver_request_duration_seconds histogram\n");
        if let Ok(m) = self.latency.lock() {
            for ((verb, resource), h) in m.iter() {
                h.render(
                    &mut out,
                    "skiff_apiserver_request_duration_seconds",
                    &format!("verb=\"{verb}\",resource=\"{resource}\""),
                );
            }
        }
        out.push_str("# HELP skiff_apiserver_etcd_request_duration_seconds etcd request latency by operation.\n");
        out.push_str("# TYPE skiff_apiserver_etcd_request_duration_seconds histogram\n");
        if let Ok(m) = self.etcd.lock() {
            for (op, h) in m.iter() {
                h.render(
                    &mut out,
                    "skiff_apiserver_etcd_request_duration_seconds",
                    &format!("operation=\"{op}\""),
                );
            }
        }
        out.push_str("# HELP skiff_apiserver_watches Open watch streams.\n");
        out.push_str("# TYPE skiff_apiserver_watches gauge\n");
        let _ = writeln!(
            out,
            "skiff_apiserver_watches {}",
            self.watches.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP skiff_apiserver_watches_direct Open watches served by an etcd watch of their own rather than the watch cache.\n",
        );
        out.push_str("# TYPE skiff_apiserver_watches_direct gauge\n");
        let _ = writeln!(
            out,
            "skiff_apiserver_watches_direct {}",
            self.watches_direct.load(Ordering::Relaxed)
        );
        out.push_str("# HELP skiff_apiserver_watch_events_total Events sent to watchers.\n");
        out.push_str("# TYPE skiff_apiserver_watch_events_total counter\n");
        let _ = writeln!(
            out,
            "skiff_apiserver_watch_events_total {}",
            self.watch_events.load(Ordering::Relaxed)
        );
        self.render_listeners(&mut out);
        out
    }

    fn render_listeners(&self, out: &mut String) {
        let Ok(all) = self.listeners.lock() else {
            return;
        };
        out.push_str("# HELP skiff_apiserver_connections Open connections by listener.\n");
        out.push_str("# TYPE skiff_apiserver_connections gauge\n");
        for (l, m) in all.iter() {
            let _ = writeln!(
                out,
                "skiff_apiserver_connections{{listener=\"{l}\"}} {}",
                m.open.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP skiff_apiserver_connections_refused_total Connections closed on accept because the listener was full of authenticated connections.\n",
        );
        out.push_str("# TYPE skiff_apiserver_connections_refused_total counter\n");
        for (l, m) in all.iter() {
            let _ = writeln!(
                out,
                "skiff_apiserver_connections_refused_total{{listener=\"{l}\"}} {}",
                m.refused.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP skiff_apiserver_connections_closed_total Connections the server closed, by reason.\n",
        );
        out.push_str("# TYPE skiff_apiserver_connections_closed_total counter\n");
        for (l, m) in all.iter() {
            for why in Closed::ALL {
                let _ = writeln!(
                    out,
                    "skiff_apiserver_connections_closed_total{{listener=\"{l}\",reason=\"{}\"}} {}",
                    why.label(),
                    m.closed[why as usize].load(Ordering::Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP skiff_apiserver_streams_refused_total Calls refused because their connection had the most concurrent streams allowed.\n",
        );
        out.push_str("# TYPE skiff_apiserver_streams_refused_total counter\n");
        for (l, m) in all.iter() {
            let _ = writeln!(
                out,
                "skiff_apiserver_streams_refused_total{{listener=\"{l}\"}} {}",
                m.streams_refused.load(Ordering::Relaxed)
            );
        }
    }
}

/// Serves `GET /metrics` (and `GET /healthz`) over plain HTTP/1.1 until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut read = 0;
            // Read until the end of the request head; requests here carry no body.
            while read < buf.len() {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf[read..]))
                    .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
                    Ok(Ok(n)) => read += n,
                }
                if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..read]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.render()),
                "/healthz" => ("200 OK", "ok\n".to_owned()),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
