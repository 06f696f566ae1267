//! The API's listeners: an accept loop per listener that caps its connections, bounds the TLS
//! and HTTP/2 handshake, closes idle connections and limits the streams of each connection.
//!
//! tonic's own server accepts without limit, runs TLS handshakes without a deadline and keeps a
//! connection that never speaks forever, so the API server drives hyper's HTTP/2 connections
//! itself and hands each request to the generated gRPC service.
//!
//! The cap: a listener holds at most `max_connections`. A connection is *unproven* until a
//! request with a valid bearer token arrives on it. When the listener is full, a new connection
//! closes the oldest unproven one and takes its slot; only when every slot is held by an
//! authenticated connection is the new one closed at once. So connections opened without a
//! token (which cost an attacker nothing) cannot keep a real client out, and memory stays
//! bounded by the cap either way. Each listener has its own cap, so a flood on the TCP port
//! does not take the slots of node agents on the Unix socket.

use std::{
    collections::BTreeMap,
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, server::conn::http2, service::Service as HyperService};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use skiff_api::proto::api_server::ApiServer;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, UnixListener},
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
    task::JoinSet,
    time::Instant,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    },
};
use tonic::{Status, codegen::Service as _};

use super::{
    auth::Authenticator,
    metrics::{Closed, ListenerMetrics},
    service::ApiService,
};

/// How often an HTTP/2 ping checks that an idle peer is still there, and how long its answer
/// may take before the connection is closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a new connection waits for the unproven connection it evicted to let go of its slot
/// (a task wake-up; far longer means the runtime is overloaded, and the newcomer is refused).
const EVICTION_WAIT: Duration = Duration::from_secs(1);
/// How long a connection being closed (idle, or the server stopping) gets to flush its GOAWAY.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The client's HTTP/2 connection preface (RFC 9113, section 3.4).
const PREFACE_LEN: usize = 24;

/// The limits every listener applies to its connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once on one listener.
    pub max_connections: usize,
    /// Time from accept to the end of the TLS handshake and the client's HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// A connection with no open stream for this long is closed.
    pub idle_timeout: Duration,
    /// Calls open at once on one connection; more are answered `RESOURCE_EXHAUSTED`.
    pub max_streams_per_connection: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_streams_per_connection: 1_000,
        }
    }
}

impl Limits {
    /// The SETTINGS_MAX_CONCURRENT_STREAMS advertised: twice the application limit. A client
    /// that honours it (tonic's does: extra requests wait in the client) never has a stream
    /// refused by HTTP/2 itself, so every stream over the application limit reaches the service
    /// and gets a gRPC error that says what happened, instead of a REFUSED_STREAM reset (and h2
    /// answers a peer that keeps ignoring the setting with a GOAWAY for the whole connection
    /// after 1,024 such resets).
    fn http2_max_streams(&self) -> u32 {
        self.max_streams_per_connection.saturating_mul(2).max(2)
    }
}

/// File descriptors kept back from the listeners' caps: etcd's connections, the metrics
/// listener, files, and the accept that finds the listener full.
const FD_RESERVE: u64 = 256;

/// Raises the soft limit of open files to the hard one (as etcd and Kubernetes' API server do;
/// 1,024 is a common default), then lowers each listener's cap so that all of them together fit
/// under it: a cap the process cannot reach would let `accept` fail with EMFILE before the
/// eviction of unauthenticated connections ever runs, and starve the other listeners.
pub fn fit_to_fd_limit(mut limits: Limits, listeners: usize) -> Limits {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut rl = getrlimit(Resource::Nofile);
    if rl.current < rl.maximum {
        let raised = rustix::process::Rlimit {
            current: rl.maximum,
            maximum: rl.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => rl = getrlimit(Resource::Nofile),
            Err(e) => tracing::warn!(error = %e, "raising the limit of open files failed"),
        }
    }
    let Some(soft) = rl.current else {
        return limits;
    };
    let per_listener = usize::try_from(soft.saturating_sub(FD_RESERVE) / listeners.max(1) as u64)
        .unwrap_or(usize::MAX);
    if per_listener < limits.max_connections {
        tracing::warn!(
            open_files = soft,
            listeners,
            configured = limits.max_connections,
            cap = per_listener.max(1),
            "--max-connections does not fit the limit of open files (ulimit -n); lowering it"
        );
        limits.max_connections = per_listener.max(1);
    }
    limits
}

/// Reads a PEM certificate chain and key into a TLS acceptor that speaks HTTP/2 (ALPN `h2`).
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading the certificates in {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key in {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("choosing TLS versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the TLS certificate and key do not make a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds a Unix socket that only its owner (and root) can connect to: it is bound inside a
/// fresh directory of mode 0700, set to mode 0600, and only then renamed to `path`, so there is
/// no moment when another user could connect.
pub fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut staging = name.to_owned();
    staging.push(format!(".binding-{}", std::process::id()));
    let staging = parent.join(staging);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("creating {}", staging.display()))?;
    let inner: PathBuf = staging.join("s");
    let bound = (|| {
        let listener =
            UnixListener::bind(&inner).with_context(|| format!("binding {}", inner.display()))?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", inner.display()))?;
        std::fs::rename(&inner, path)
            .with_context(|| format!("moving the socket to {}", path.display()))?;
        anyhow::Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

/// A bound listener.
#[derive(Debug)]
pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// An accepted connection, before TLS.
enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Bound {
    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Bound::Tcp(l) => {
                let (s, _) = l.accept().await?;
                // Without it, Nagle and delayed ACKs add 40 ms to a small reply.
                let _ = s.set_nodelay(true);
                Ok(Accepted::Tcp(s))
            }
            Bound::Unix(l) => Ok(Accepted::Unix(l.accept().await?.0)),
        }
    }
}

/// One listener's shared state.
struct Listener {
    service: ApiServer<ApiService>,
    auth: Arc<Authenticator>,
    limits: Limits,
    http2: http2::Builder<TokioExecutor>,
    metrics: Arc<ListenerMetrics>,
    /// TLS, for TCP listeners given a certificate.
    tls: Option<TlsAcceptor>,
    slots: Arc<Semaphore>,
    /// Connections that have not yet made an authenticated call, oldest first.
    unproven: Mutex<BTreeMap<u64, Arc<Notify>>>,
}

/// Serves the API on `bound` until `stop` turns true, then asks every connection to finish
/// (HTTP/2 GOAWAY) and waits for them.
pub async fn serve(
    bound: Bound,
    tls: Option<TlsAcceptor>,
    service: ApiServer<ApiService>,
    auth: Arc<Authenticator>,
    limits: Limits,
    metrics: Arc<ListenerMetrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    let tls = match bound {
        Bound::Tcp(_) => tls,
        // Unix sockets are guarded by their file mode, and node agents reach them plainly.
        Bound::Unix(_) => None,
    };
    let this = Arc::new(Listener {
        service,
        auth,
        limits,
        http2,
        metrics,
        tls,
        slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        unproven: Mutex::new(BTreeMap::new()),
    });
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    let for_connections = stop.clone();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = bound.accept() => {
                let io = match accepted {
                    Ok(io) => io,
                    Err(e) => {
                        // Out of file descriptors, most likely: do not spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(permit) = this.admit().await else {
                    this.metrics.refused();
                    tracing::debug!("listener full of authenticated connections; closing a new one");
                    continue;
                };
                next_id += 1;
                let slot = Slot::new(this.clone(), next_id, permit);
                connections.spawn(this.clone().connection(io, slot, for_connections.clone()));
            }
        }
    }
    // Stop accepting at once (the kernel stops completing handshakes), then let the open
    // connections finish; `run` bounds how long that may take.
    drop(bound);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Completes when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl Listener {
    /// A slot for a new connection: a free one, or the one of the oldest unproven connection,
    /// which is closed; none when every connection has authenticated.
    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        let victim = self
            .unproven
            .lock()
            .ok()
            .and_then(|mut u| u.pop_first())
            .map(|(_, close)| close)?;
        victim.notify_one();
        self.metrics.closed(Closed::Evicted);
        tokio::time::timeout(EVICTION_WAIT, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    async fn connection(self: Arc<Self>, io: Accepted, slot: Slot, stop: watch::Receiver<bool>) {
        let deadline = Instant::now() + self.limits.handshake_timeout;
        match (io, &self.tls) {
            (Accepted::Tcp(tcp), Some(tls)) => {
                let close = slot.close.clone();
                let handshake = tokio::select! {
                    r = tokio::time::timeout_at(deadline, tls.accept(tcp)) => r,
                    () = close.notified() => return,
                };
                match handshake {
                    Ok(Ok(stream)) => self.drive(stream, slot, deadline, stop).await,
                    Ok(Err(e)) => {
                        self.metrics.closed(Closed::TlsError);
                        tracing::debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => self.metrics.closed(Closed::HandshakeTimeout),
                }
            }
            (Accepted::Tcp(tcp), None) => self.drive(tcp, slot, deadline, stop).await,
            (Accepted::Unix(unix), _) => self.drive(unix, slot, deadline, stop).await,
        }
    }

    /// Runs HTTP/2 on one connection until it ends, its handshake deadline passes without the
    /// client's preface, it is idle too long, it is evicted, or the server stops.
    async fn drive<IO>(
        &self,
        io: IO,
        slot: Slot,
        handshake_deadline: Instant,
        mut stop: watch::Receiver<bool>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = slot.state.clone();
        let io = PrefaceWatch {
            inner: io,
            left: PREFACE_LEN,
            state: state.clone(),
        };
        let service = ConnService {
            inner: self.service.clone(),
            auth: self.auth.clone(),
            slot: Arc::new(slot),
            limit: self.limits.max_streams_per_connection as usize,
            metrics: self.metrics.clone(),
        };
        let close = service.slot.close.clone();
        let conn = self.http2.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let handshake = tokio::time::sleep_until(handshake_deadline);
        tokio::pin!(handshake);
        let mut closing: Option<Instant> = None;
        let mut handshake_passed = false;
        loop {
            let idle_at = state.idle_since() + self.limits.idle_timeout;
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(error = %e, "connection ended");
                    }
                    return;
                }
                // The flag is read here, not in the branch's condition: that is evaluated once per
                // `select!`, before the preface the connection is about to read has arrived.
                () = &mut handshake, if !handshake_passed => {
                    if state.handshaken.load(Ordering::Acquire) {
                        handshake_passed = true;
                        continue;
                    }
                    self.metrics.closed(Closed::HandshakeTimeout);
                    return;
                }
                () = close.notified() => return,
                () = state.until_idle_for(idle_at), if closing.is_none() => {
                    if state.active.load(Ordering::Acquire) == 0 && state.idle_since() + self.limits.idle_timeout <= Instant::now() {
                        self.metrics.closed(Closed::Idle);
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + CLOSE_GRACE);
                    }
                }
                () = stopped(&mut stop), if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    // `run` bounds the wait for calls still open; watches never end by themselves.
                    closing = Some(Instant::now() + Duration::from_secs(3600));
                }
                () = tokio::time::sleep_until(closing.unwrap_or_else(Instant::now)), if closing.is_some() => return,
            }
        }
    }
}

/// One connection's place on its listener: the permit, its entry among the unproven, and the
/// open-connections gauge, all given back on drop.
struct Slot {
    listener: Arc<Listener>,
    id: u64,
    _permit: OwnedSemaphorePermit,
    /// Notified to close the connection at once (it was evicted).
    close: Arc<Notify>,
    state: Arc<ConnState>,
}

impl Slot {
    fn new(listener: Arc<Listener>, id: u64, permit: OwnedSemaphorePermit) -> Slot {
        let close = Arc::new(Notify::new());
        if let Ok(mut u) = listener.unproven.lock() {
            u.insert(id, close.clone());
        }
        listener.metrics.open(1);
        Slot {
            listener,
            id,
            _permit: permit,
            close,
            state: Arc::new(ConnState::new()),
        }
    }

    /// A request with a valid token arrived: the connection may no longer be evicted.
    fn prove(&self) {
        if !self.state.proven.swap(true, Ordering::AcqRel)
            && let Ok(mut u) = self.listener.unproven.lock()
        {
            u.remove(&self.id);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut u) = self.listener.unproven.lock() {
            u.remove(&self.id);
        }
        self.listener.metrics.open(-1);
    }
}

/// What the connection's driver and its requests share.
struct ConnState {
    /// The client's HTTP/2 preface has arrived.
    handshaken: AtomicBool,
    proven: AtomicBool,
    /// Streams open.
    active: AtomicUsize,
    /// When the last stream ended (or the connection began).
    idle_since: Mutex<Instant>,
    /// Notified (one stored permit) when the last open stream ends.
    went_idle: Notify,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            handshaken: AtomicBool::new(false),
            proven: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            went_idle: Notify::new(),
        }
    }

    /// Resolves at `idle_at` when no stream is open; while streams are open (a watch may stay
    /// open for hours), waits for the last one to end instead of waking at a deadline already
    /// past, which would spin. The caller checks again and computes a new deadline.
    async fn until_idle_for(&self, idle_at: Instant) {
        if self.active.load(Ordering::Acquire) > 0 {
            // A stream that ended since the load left a permit, so this cannot miss it.
            self.went_idle.notified().await;
        } else {
            tokio::time::sleep_until(idle_at).await;
        }
    }

    fn idle_since(&self) -> Instant {
        self.idle_since
            .lock()
            .map_or_else(|_| Instant::now(), |t| *t)
    }

    /// Counts a new stream, unless `limit` are open already.
    fn open_stream(self: &Arc<Self>, limit: usize) -> Option<StreamGuard> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(StreamGuard(self.clone()))
    }
}

/// One open stream; dropped when its response has been sent in full or the stream was reset.
struct StreamGuard(Arc<ConnState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Ok(mut t) = self.0.idle_since.lock() {
                *t = Instant::now();
            }
            self.0.went_idle.notify_one();
        }
    }
}

/// Passes bytes through, noting when the client's 24-byte HTTP/2 preface has been read.
struct PrefaceWatch<IO> {
    inner: IO,
    left: usize,
    state: Arc<ConnState>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for PrefaceWatch<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.left > 0 {
            this.left = this.left.saturating_sub(buf.filled().len() - before);
            if this.left == 0 {
                this.state.handshaken.store(true, Ordering::Release);
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PrefaceWatch<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The gRPC service as one connection sees it: counts its streams, refuses those over the
/// limit, and marks the connection proven on its first authenticated request.
struct ConnService {
    inner: ApiServer<ApiService>,
    auth: Arc<Authenticator>,
    slot: Arc<Slot>,
    limit: usize,
    metrics: Arc<ListenerMetrics>,
}

type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<CountedBody>, std::convert::Infallible>> + Send>,
>;

impl HyperService<http::Request<Incoming>> for ConnService {
    type Response = http::Response<CountedBody>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    fn call(&self, mut req: http::Request<Incoming>) -> ResponseFuture {
        // A call without a valid token is refused here, from its headers, before tonic reads
        // (and buffers) its body: an unauthenticated client gets no memory of the server's.
        // The identity found travels with the request, so the service does not look it up
        // again.
        let header = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match self.auth.authenticate(header) {
            Ok(id) => {
                if !self.slot.state.proven.load(Ordering::Acquire) {
                    self.slot.prove();
                }
                req.extensions_mut().insert(id);
            }
            Err(e) => {
                let response = Status::from(e).into_http::<tonic::body::Body>();
                return Box::pin(std::future::ready(Ok(response.map(|body| CountedBody {
                    inner: body,
                    _guard: None,
                }))));
            }
        }
        let Some(guard) = self.slot.state.open_stream(self.limit) else {
            self.metrics.stream_refused();
            let status = Status::resource_exhausted(format!(
                "too many concurrent streams on this connection (limit {}): open another connection",
                self.limit
            ));
            let response = status.into_http::<tonic::body::Body>();
            return Box::pin(std::future::ready(Ok(response.map(|body| CountedBody {
                inner: body,
                _guard: None,
            }))));
        };
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let response = inner.call(req).await?;
            Ok(response.map(|body| CountedBody {
                inner: body,
                _guard: Some(guard),
            }))
        })
    }
}

/// A response body that keeps its stream counted until it is done or dropped.
struct CountedBody {
    inner: tonic::body::Body,
    _guard: Option<StreamGuard>,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
