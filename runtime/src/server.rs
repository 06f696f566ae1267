//! The plain-HTTP status server every component runs on its `--metrics-listen` address:
//! `GET /metrics` (the Prometheus text format) and the health endpoints as Kubernetes' API
//! server has them. `/livez` and `/healthz` run the liveness checks (`ping`, which always
//! passes: the process is up and serving), `/readyz` runs `ping` and every readiness check the
//! component added (each component documents its checks where it adds them).
//!
//! A health endpoint answers 200 `ok` when every check passes, or 500 with one line per check
//! (`[+]name ok`, `[-]name failed: reason withheld`) and `readyz check failed` when one fails.
//! `?verbose` (any value) gives the per-check lines on success too, ending in
//! `readyz check passed`; `?exclude=name` (repeatable) skips a check. `/readyz/<name>` runs one
//! check and, failing, says why: the reason is withheld from the summary only.

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

/// What one check found: `Err` says why it fails (for the log and the check's own path; the
/// summary withholds it).
pub type CheckResult = Result<(), String>;

type Check = Box<dyn Fn() -> CheckResult + Send + Sync>;

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
    /// Adds the check `name`, which fails (as "not ready") whenever `check` returns false.
    pub fn add(&self, name: impl Into<String>, check: impl Fn() -> bool + Send + Sync + 'static) {
        self.add_check(name, move || {
            if check() {
                Ok(())
            } else {
                Err("not ready".to_owned())
            }
        });
    }

    /// Adds the check `name`, which says why it fails.
    pub fn add_check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> CheckResult + Send + Sync + 'static,
    ) {
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

    /// Every check with whether it passes, in the order added.
    pub fn report(&self) -> Vec<(String, bool)> {
        self.checks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, check)| (name.clone(), check().is_ok()))
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
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
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
    let path = req.uri().path();
    if path == "/metrics" {
        return text(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            metrics::encode(registry),
        );
    }
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (endpoint, check) = match rest.split_once('/') {
        Some((endpoint, check)) => (endpoint, Some(check)),
        None => (rest, None),
    };
    let readiness = match endpoint {
        "healthz" | "livez" => None,
        "readyz" => Some(readiness),
        _ => return not_found(),
    };
    let query = Query::parse(req.uri().query().unwrap_or(""));
    health(endpoint, check, &query, readiness)
}

fn not_found() -> Response<String> {
    text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into())
}

/// The liveness check every endpoint carries: answering at all is the proof.
fn ping() -> CheckResult {
    Ok(())
}

/// What a health request asks for beyond its path.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    /// The `verbose` key is present, whatever its value.
    verbose: bool,
    /// The checks to skip, in the order given.
    exclude: Vec<String>,
}

impl Query {
    fn parse(query: &str) -> Query {
        let mut q = Query::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match unescape(key).as_str() {
                "verbose" => q.verbose = true,
                "exclude" => {
                    let name = unescape(value);
                    if !q.exclude.contains(&name) {
                        q.exclude.push(name);
                    }
                }
                _ => {}
            }
        }
        q
    }
}

/// Decodes a query component: `+` is a space, `%XX` a byte (left as written when malformed).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs the checks of `endpoint` (`healthz`, `livez`, `readyz`): all of them, or only `check`.
fn health(
    endpoint: &str,
    check: Option<&str>,
    query: &Query,
    readiness: Option<&Readiness>,
) -> Response<String> {
    let guard = readiness.map(|r| {
        r.checks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    });
    let mut checks: Vec<(&str, &(dyn Fn() -> CheckResult + Send + Sync))> = vec![("ping", &ping)];
    if let Some(g) = &guard {
        checks.extend(g.iter().map(|(name, c)| (name.as_str(), c.as_ref())));
    }
    if let Some(name) = check {
        let Some((_, run)) = checks.iter().find(|(n, _)| *n == name) else {
            return not_found();
        };
        return match run() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ok".into()),
            Err(why) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                PLAIN,
                format!("internal server error: {why}\n"),
            ),
        };
    }
    let mut unmatched: Vec<&str> = query.exclude.iter().map(String::as_str).collect();
    let mut lines = String::new();
    let mut failed = Vec::new();
    for (name, run) in &checks {
        if let Some(i) = unmatched.iter().position(|n| n == name) {
            unmatched.remove(i);
            lines.push_str(&format!("[+]{name} excluded: ok\n"));
            continue;
        }
        match run() {
            Ok(()) => lines.push_str(&format!("[+]{name} ok\n")),
            Err(why) => {
                lines.push_str(&format!("[-]{name} failed: reason withheld\n"));
                failed.push(format!("{name}: {why}"));
            }
        }
    }
    if !unmatched.is_empty() {
        let names: Vec<String> = unmatched.iter().map(|n| format!("{n:?}")).collect();
        lines.push_str(&format!(
            "warn: some health checks cannot be excluded: no matches for {}\n",
            names.join(",")
        ));
    }
    if !failed.is_empty() {
        tracing::debug!(endpoint, failed = ?failed, "health check failed");
        lines.push_str(&format!("{endpoint} check failed\n"));
        return text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, lines);
    }
    if !query.verbose {
        return text(StatusCode::OK, PLAIN, "ok".into());
    }
    lines.push_str(&format!("{endpoint} check passed\n"));
    text(StatusCode::OK, PLAIN, lines)
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

    /// The status code and body of `GET path`.
    async fn probe(addr: SocketAddr, path: &str) -> (u16, String) {
        let reply = get(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        let code = reply
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {reply:?}"));
        (code, body(&reply).to_owned())
    }

    fn ok(body: &str) -> (u16, String) {
        (200, body.to_owned())
    }

    fn failed(body: &str) -> (u16, String) {
        (500, body.to_owned())
    }

    #[tokio::test]
    async fn healthz_and_livez_carry_ping_and_answer_a_plain_ok_without_a_newline() {
        let readiness = Readiness::default();
        // Readiness checks are not liveness checks: a failing one leaves /livez alone.
        readiness.add("never", || false);
        let addr = start(Registry::default(), readiness).await;
        for endpoint in ["healthz", "livez"] {
            assert_eq!(probe(addr, &format!("/{endpoint}")).await, ok("ok"));
            assert_eq!(probe(addr, &format!("/{endpoint}/ping")).await, ok("ok"));
            assert_eq!(
                probe(addr, &format!("/{endpoint}?verbose")).await,
                ok(&format!("[+]ping ok\n{endpoint} check passed\n"))
            );
            assert_eq!(probe(addr, &format!("/{endpoint}/never")).await.0, 404);
        }
        let reply = get(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            reply.contains("content-type: text/plain; charset=utf-8\r\n"),
            "{reply}"
        );
        assert!(
            reply.contains("x-content-type-options: nosniff\r\n"),
            "{reply}"
        );
    }

    #[tokio::test]
    async fn readyz_fails_with_500_and_every_checks_line_until_every_check_passes() {
        let readiness = Readiness::default();
        let synced = readiness.flag("informers-synced");
        readiness.add("connected", || true);
        let addr = start(Registry::default(), readiness.clone()).await;
        let want = "[+]ping ok\n[-]informers-synced failed: reason withheld\n[+]connected ok\nreadyz check failed\n";
        // A failure is verbose whether asked or not.
        assert_eq!(probe(addr, "/readyz").await, failed(want));
        assert_eq!(probe(addr, "/readyz?verbose").await, failed(want));
        synced.set(true);
        assert_eq!(probe(addr, "/readyz").await, ok("ok"));
    }

    #[tokio::test]
    async fn verbose_is_the_presence_of_the_key_whatever_its_value() {
        let readiness = Readiness::default();
        readiness.add("connected", || true);
        let addr = start(Registry::default(), readiness).await;
        let want = ok("[+]ping ok\n[+]connected ok\nreadyz check passed\n");
        for query in [
            "verbose",
            "verbose=",
            "verbose=1",
            "verbose=true",
            "verbose=false",
            "x=1&verbose",
        ] {
            assert_eq!(
                probe(addr, &format!("/readyz?{query}")).await,
                want,
                "{query}"
            );
        }
        for query in ["", "?", "?verbosity=1", "?x=verbose"] {
            assert_eq!(
                probe(addr, &format!("/readyz{query}")).await,
                ok("ok"),
                "{query}"
            );
        }
    }

    #[tokio::test]
    async fn an_excluded_check_is_not_run_and_says_so_and_an_unknown_one_is_warned_about() {
        let readiness = Readiness::default();
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        readiness.add("etcd", move || {
            counted.fetch_add(1, Ordering::Relaxed);
            false
        });
        readiness.add("shutdown", || false);
        let addr = start(Registry::default(), readiness).await;
        assert_eq!(
            probe(addr, "/readyz?exclude=etcd&exclude=shutdown").await,
            ok("ok")
        );
        assert_eq!(runs.load(Ordering::Relaxed), 0);
        assert_eq!(
            probe(addr, "/readyz?exclude=etcd&exclude=shutdown&verbose").await,
            ok("[+]ping ok\n[+]etcd excluded: ok\n[+]shutdown excluded: ok\nreadyz check passed\n")
        );
        assert_eq!(
            probe(addr, "/readyz?exclude=etcd&exclude=nope").await,
            failed(concat!(
                "[+]ping ok\n[+]etcd excluded: ok\n[-]shutdown failed: reason withheld\n",
                "warn: some health checks cannot be excluded: no matches for \"nope\"\n",
                "readyz check failed\n"
            ))
        );
        // Escaped names are decoded.
        assert_eq!(
            probe(addr, "/readyz?exclude=%65tcd&exclude=shutdown").await,
            ok("ok")
        );
        assert_eq!(runs.load(Ordering::Relaxed), 0);
        assert_eq!(probe(addr, "/readyz?exclude=shutdown").await.0, 500);
        assert_eq!(runs.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn each_check_has_its_own_path_which_gives_the_reason_a_summary_withholds() {
        let readiness = Readiness::default();
        readiness.add_check("etcd", || Err("no answer for 12s".to_owned()));
        readiness.add("shutdown", || false);
        readiness.add("connected", || true);
        let addr = start(Registry::default(), readiness).await;
        assert_eq!(probe(addr, "/readyz/ping").await, ok("ok"));
        assert_eq!(probe(addr, "/readyz/connected").await, ok("ok"));
        assert_eq!(
            probe(addr, "/readyz/etcd").await,
            failed("internal server error: no answer for 12s\n")
        );
        assert_eq!(
            probe(addr, "/readyz/shutdown").await,
            failed("internal server error: not ready\n")
        );
        assert_eq!(probe(addr, "/readyz/nope").await.0, 404);
        assert_eq!(probe(addr, "/readyz/").await.0, 404);
        assert_eq!(probe(addr, "/readyzz").await.0, 404);
        let (code, body) = probe(addr, "/readyz?verbose").await;
        assert_eq!(code, 500);
        assert!(body.contains("[-]etcd failed: reason withheld\n"), "{body}");
        assert!(!body.contains("12s"), "{body}");
    }

    #[test]
    fn queries_are_split_into_verbose_and_excluded_names() {
        assert_eq!(Query::parse(""), Query::default());
        assert_eq!(
            Query::parse("exclude=a&verbose=0&exclude=b%2Fc&exclude=a&exclude=x+y"),
            Query {
                verbose: true,
                exclude: vec!["a".into(), "b/c".into(), "x y".into()],
            }
        );
        assert_eq!(unescape("100%"), "100%");
        assert_eq!(unescape("%zz%4"), "%zz%4");
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
        assert_eq!(probe(addr, "/healthz").await, ok("ok"));
    }
}
