//! Prometheus metrics of the API server, kept in memory and served as text on `/metrics`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicI64, Ordering},
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
        out
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
