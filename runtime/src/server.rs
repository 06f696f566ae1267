//! The plain-HTTP status server every component runs on its `--metrics-listen` address:
//! `GET /metrics` (the Prometheus text format), `GET /healthz` (the process is alive and
//! serving) and `GET /readyz` (every readiness check of the component passes; each component
//! documents its checks where it adds them).

use std::{
    convert::Infallible,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::metrics::{self, Registry};

/// Why the status server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound (in use, or not an address of this host).
    #[error("binding the metrics listener {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The most connections served at once; a scraper needs one.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last, request and response together.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

type Check = Box<dyn Fn() -> bool + Send + Sync>;

/// A component's named readiness checks (cheap to clone; clones share the checks). A check is
/// a quick, non-blocking look at state the component keeps anyway.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<Vec<(String, Check)>>>,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.report().into_iter().map(|(n, _)| n))
            .finish()
    }
}

/// A readiness condition the component sets as it goes (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Flag(Arc<AtomicBool>);

impl Flag {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Clears the flag until the returned guard is dropped: for work that is not ready until
    /// it has started (a leader's informers syncing) and that may be aborted before then (a
    /// lost lease), which must not leave the process unready.
    pub fn hold(&self) -> Holding {
        self.set(false);
        Holding(self.clone())
    }
}

/// Keeps a [`Flag`] cleared; see [`Flag::hold`].
#[derive(Debug)]
pub struct Holding(Flag);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

impl Readiness {
    /// Adds the check `name`.
    pub fn add(&self, name: impl Into<String>, check: impl Fn() -> bool + Send + Sync + 'static) {
        self.checks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((name.into(), Box::new(check)));
    }

    /// Adds the check `name`, failing until the returned flag is set.
    pub fn flag(&self, name: impl Into<String>) -> Flag {
        let flag = Flag::default();
        let f = flag.clone();
        self.add(name, move || f.get());
        flag
    }

    /// Every check with its result, in the order added.
    pub fn report(&self) -> Vec<(String, bool)> {
        self.checks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, check)| (name.clone(), check()))
            .collect()
    }

    /// Whether every check passes (true when there are none).
    pub fn is_ready(&self) -> bool {
        self.report().iter().all(|(_, ok)| *ok)
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped. Each
/// connection carries one request and is closed after the response, as the clients in the
/// project's tests expect (they read to the end of the stream).
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, readiness: Readiness) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, most likely: do not spin.
                tracing::debug!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (registry, readiness) = (registry.clone(), readiness.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let reply = respond(&req, &registry, &readiness);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics connection failed"),
                Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
            }
            drop(slot);
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<String> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// The answer to one request.
fn respond(
    req: &Request<Incoming>,
    registry: &Registry,
    readiness: &Readiness,
) -> Response<String> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            metrics::encode(registry),
        ),
        "/healthz" | "/livez" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => {
            let report = readiness.report();
            let ready = report.iter().all(|(_, ok)| *ok);
            let verbose = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "verbose"));
            let mut body = String::new();
            if !ready || verbose {
                for (name, ok) in &report {
                    body.push_str(if *ok { "[+]" } else { "[-]" });
                    body.push_str(name);
                    body.push_str(if *ok { " ok\n" } else { " not ready\n" });
                }
            }
            if ready {
                body.push_str("ok\n");
                text(StatusCode::OK, PLAIN, body)
            } else {
                body.push_str("not ready\n");
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, body)
            }
        }
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::metrics::{Counter, tests::sample};

    /// Sends `request` as written and reads the whole reply (the server closes the connection).
    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("the server closes the connection after its reply")
            .unwrap();
        out
    }

    async fn start(registry: Registry, readiness: Readiness) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(registry), readiness));
        addr
    }

    fn body(reply: &str) -> &str {
        reply.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    #[tokio::test]
    async fn metrics_are_served_in_the_text_format_and_the_connection_closes_after_one_reply() {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        r.register("skiff_things", "Things", c.clone());
        c.inc_by(3);
        let addr = start(r, Readiness::default()).await;
        // HTTP/1.1 without `Connection: close`, as testbed/src/control/apiserver.rs asks: it reads to the
        // end of the stream, so the server must close.
        let reply = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(
            reply.contains("content-type: text/plain; version=0.0.4"),
            "{reply}"
        );
        assert_eq!(sample(body(&reply), "skiff_things_total"), Some(3.0));
        // HTTP/1.0, as the proxy benchmark asks.
        let reply = get(addr, "GET /metrics HTTP/1.0\r\n\r\n").await;
        assert_eq!(sample(body(&reply), "skiff_things_total"), Some(3.0));
    }

    #[tokio::test]
    async fn healthz_is_always_ok_and_readyz_follows_every_check() {
        let readiness = Readiness::default();
        let synced = readiness.flag("informers-synced");
        readiness.add("connected", || true);
        let addr = start(Registry::default(), readiness.clone()).await;
        let reply = get(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert_eq!(body(&reply), "ok\n");

        let reply = get(addr, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
        assert_eq!(
            body(&reply),
            "[-]informers-synced not ready\n[+]connected ok\nnot ready\n"
        );
        synced.set(true);
        let reply = get(addr, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert_eq!(body(&reply), "ok\n");
        let reply = get(addr, "GET /readyz?verbose HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(
            body(&reply),
            "[+]informers-synced ok\n[+]connected ok\nok\n"
        );
    }

    #[test]
    fn a_held_flag_reads_false_until_its_guard_is_dropped() {
        let readiness = Readiness::default();
        let synced = readiness.flag("informers-synced");
        synced.set(true);
        assert!(readiness.is_ready());
        let starting = synced.hold();
        assert!(!readiness.is_ready());
        drop(starting);
        assert!(readiness.is_ready());
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found_and_writes_are_refused() {
        let addr = start(Registry::default(), Readiness::default()).await;
        let reply = get(addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 404 "), "{reply}");
        let reply = get(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 405 "), "{reply}");
        // Not HTTP at all: the connection is closed, the server goes on.
        let reply = get(addr, "hello\r\n\r\n").await;
        assert!(!reply.contains("200 OK"), "{reply}");
        let reply = get(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    }
}
