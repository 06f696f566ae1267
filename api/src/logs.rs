//! Container logs: the client call behind `skiffctl logs`, and the node agent's end of the log
//! tunnel.
//!
//! Logs are files on the node. The API server never connects to nodes (in a local cluster they
//! live in network namespaces it cannot reach), so each node agent keeps one long-lived
//! bidirectional stream open to the API server ([`serve_node_tunnel`]), and the API server sends
//! log requests down it. The agent answers each with the file's bytes, tailed and followed as
//! asked, under a small per-stream window ([`LOG_WINDOW_CHUNKS`]) so that one slow reader never
//! stalls the other streams of the tunnel.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    io::{self, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncSeekExt as _},
    sync::{Semaphore, mpsc},
    task::{AbortHandle, JoinSet},
};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};

use crate::{
    client::{Client, Result},
    proto::{LogData, LogEnd, LogOpen, LogsRequest, TunnelHello, TunnelUp, tunnel_down, tunnel_up},
};

/// LogData messages of one stream an agent may have sent that the API server has not
/// acknowledged yet (with [`LOG_CHUNK_BYTES`] chunks: 512 KiB in flight per stream).
pub const LOG_WINDOW_CHUNKS: u32 = 16;
/// The largest LogData payload.
pub const LOG_CHUNK_BYTES: usize = 32 << 10;
/// How often a followed log file is checked for growth.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Tailing reads a file backwards in blocks of this size.
const TAIL_BLOCK: usize = 64 << 10;
/// The first wait before reopening a broken tunnel; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Messages queued from the agent's stream readers to the tunnel.
const UP_QUEUE: usize = 64;

impl Client {
    /// A container's log: chunks of bytes as the node sends them. Without `follow` the stream
    /// ends at the end of the log; with it, when the container exits (or the call is dropped).
    pub async fn logs(
        &self,
        req: LogsRequest,
    ) -> Result<impl Stream<Item = Result<Vec<u8>>> + Send + Unpin + use<>> {
        let stream = self.api().logs(req).await?.into_inner();
        Ok(stream.map(|chunk| Ok(chunk?.data)))
    }
}

/// Which log a request is for, as the node agent resolves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTarget {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's uid: a pod re-created under the same name is another pod.
    pub pod_uid: String,
    /// The container's name (always set: the API server resolves a request without one).
    pub container: String,
    /// The attempt before the latest one.
    pub previous: bool,
}

/// Where a container attempt's log is, and whether the attempt is still writing to it.
pub struct LogFile {
    /// The file the attempt's stdout and stderr go to.
    pub path: PathBuf,
    /// True while the attempt runs; once false, following stops at the end of the file.
    pub running: Box<dyn Fn() -> bool + Send + Sync>,
}

impl LogFile {
    /// The log of an attempt that runs while `running` says so.
    pub fn new(
        path: impl Into<PathBuf>,
        running: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        LogFile {
            path: path.into(),
            running: Box::new(running),
        }
    }

    /// The log of an attempt that has ended.
    pub fn finished(path: impl Into<PathBuf>) -> Self {
        LogFile::new(path, || false)
    }
}

impl fmt::Debug for LogFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogFile")
            .field("path", &self.path)
            .field("running", &(self.running)())
            .finish()
    }
}

/// The node agent's knowledge of its containers' log files.
pub trait LogSource: Send + Sync + 'static {
    /// The log file for `target`, or why there is none (for people: "container web of pod
    /// default/x has not started", "no previous attempt of ..."). Called again while a log is
    /// followed: a different path means a new attempt started, and following stops.
    fn resolve(&self, target: &LogTarget) -> Result<LogFile, String>;
}

/// What to read of a log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Keep reading what is appended until the attempt ends.
    pub follow: bool,
    /// Only the last N lines (`None`: all).
    pub tail_lines: Option<u64>,
    /// Stop after this many bytes (`None`: no limit).
    pub limit_bytes: Option<u64>,
}

impl ReadOptions {
    fn from_open(o: &LogOpen) -> ReadOptions {
        ReadOptions {
            follow: o.follow,
            tail_lines: o.tail_lines.and_then(|n| u64::try_from(n).ok()),
            limit_bytes: u64::try_from(o.limit_bytes).ok().filter(|&n| n > 0),
        }
    }
}

/// Why a log could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogError {
    /// For people.
    pub message: String,
    /// The pod, container, attempt or file is not there (rather than unreadable).
    pub not_found: bool,
}

impl LogError {
    fn io(path: &Path, what: &str, e: &io::Error) -> LogError {
        LogError {
            message: format!("{what} log file {}: {e}", path.display()),
            not_found: e.kind() == io::ErrorKind::NotFound,
        }
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LogError {}

/// The offset at which the last `n` lines of `file` (`len` bytes long) start. A last line
/// without a newline counts as a line; the newline ending the file does not start one. Reads
/// backwards in blocks of `block` bytes, so a long file costs only the size of its tail.
fn tail_offset(file: &mut std::fs::File, len: u64, n: u64, block: usize) -> io::Result<u64> {
    if n == 0 {
        return Ok(len);
    }
    let mut buf = vec![0u8; block];
    let mut end = len;
    let mut newlines = 0;
    while end > 0 {
        let start = end.saturating_sub(block as u64);
        // `end - start <= block`, so this fits in usize.
        let chunk = &mut buf[..usize::try_from(end - start).unwrap_or(block)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            let at = start + i as u64;
            if *b == b'\n' && at + 1 != len {
                newlines += 1;
                if newlines == n {
                    return Ok(at + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

/// Reads the log `source` resolves `target` to, as `opts` asks, sending chunks of at most
/// [`LOG_CHUNK_BYTES`] to `out`. Returns when the log is done: at its end, or (following) once
/// the attempt ended or was replaced by a newer one and the file is read to its end, at the
/// byte limit, or when `out` is closed.
pub async fn read_log(
    source: &dyn LogSource,
    target: &LogTarget,
    opts: ReadOptions,
    out: mpsc::Sender<Vec<u8>>,
) -> Result<(), LogError> {
    let log = source.resolve(target).map_err(|message| LogError {
        message,
        not_found: true,
    })?;
    let start = match opts.tail_lines {
        None => 0,
        Some(n) => {
            let path = log.path.clone();
            tokio::task::spawn_blocking(move || {
                let mut f = std::fs::File::open(&path)?;
                let len = f.metadata()?.len();
                tail_offset(&mut f, len, n, TAIL_BLOCK)
            })
            .await
            .map_err(|e| LogError {
                message: format!("tailing log file {}: {e}", log.path.display()),
                not_found: false,
            })?
            .map_err(|e| LogError::io(&log.path, "tailing", &e))?
        }
    };
    let mut file = tokio::fs::File::open(&log.path)
        .await
        .map_err(|e| LogError::io(&log.path, "opening", &e))?;
    file.seek(SeekFrom::Start(start))
        .await
        .map_err(|e| LogError::io(&log.path, "reading", &e))?;
    let mut left = opts.limit_bytes.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; LOG_CHUNK_BYTES];
    loop {
        // Looked at before reading to the end, so that nothing the attempt wrote before it
        // ended (or before its successor started) is missed.
        let last = !opts.follow
            || !(log.running)()
            || source
                .resolve(target)
                .map_or(true, |now| now.path != log.path);
        loop {
            let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
            if want == 0 {
                return Ok(());
            }
            let n = file
                .read(&mut buf[..want])
                .await
                .map_err(|e| LogError::io(&log.path, "reading", &e))?;
            if n == 0 {
                break;
            }
            left -= n as u64;
            if out.send(buf[..n].to_vec()).await.is_err() {
                return Ok(());
            }
        }
        if last {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_POLL) => {}
            () = out.closed() => return Ok(()),
        }
    }
}

/// Keeps the node's log tunnel to the API server open until `shutdown` completes: opens it
/// with `client` (which must authenticate as the node), serves every log request that comes
/// down it concurrently from `source`, and reopens it after a break, waiting 200 ms at first
/// and twice as long after each failed attempt, up to 5 s. A stream stops when the API server
/// cancels it and when the tunnel breaks.
pub async fn serve_node_tunnel(
    client: Client,
    source: Arc<dyn LogSource>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut opened = None;
        let result = tokio::select! {
            () = &mut shutdown => return,
            r = run_tunnel(&client, &source, &mut opened) => r,
        };
        if opened.is_some_and(|t: Instant| t.elapsed() >= MAX_BACKOFF) {
            backoff = MIN_BACKOFF;
        }
        match result {
            Ok(()) => tracing::info!(retry_in = ?backoff, "the API server closed the log tunnel"),
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "the log tunnel broke"),
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Opens the node's log tunnel once with `client` and serves it until it ends: `Ok` when the
/// API server closed it, the error when the server refused it (for a client that is not a
/// node's) or it broke. [`serve_node_tunnel`] is this, again and again.
pub async fn run_node_tunnel(client: &Client, source: Arc<dyn LogSource>) -> Result<()> {
    run_tunnel(client, &source, &mut None).await
}

/// One stream being served: how to stop it, and its flow-control credit.
struct Served {
    task: AbortHandle,
    credit: Arc<Semaphore>,
}

/// One tunnel, until it ends. Sets `opened` once the API server has accepted it.
async fn run_tunnel(
    client: &Client,
    source: &Arc<dyn LogSource>,
    opened: &mut Option<Instant>,
) -> Result<()> {
    let (up, up_rx) = mpsc::channel(UP_QUEUE);
    let hello = TunnelUp {
        msg: Some(tunnel_up::Msg::Hello(TunnelHello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
        })),
    };
    // The receiver is alive and the queue empty: this cannot fail.
    let _ = up.send(hello).await;
    let mut down = client
        .api()
        .node_tunnel(ReceiverStream::new(up_rx))
        .await?
        .into_inner();
    *opened = Some(Instant::now());
    tracing::info!("log tunnel open");
    let mut streams: HashMap<u64, Served> = HashMap::new();
    // Dropped with this function: a broken tunnel aborts every stream it carried.
    let mut tasks: JoinSet<u64> = JoinSet::new();
    loop {
        tokio::select! {
            msg = down.next() => {
                let Some(msg) = msg else { return Ok(()) };
                match msg?.msg {
                    Some(tunnel_down::Msg::Open(open)) => {
                        let id = open.stream_id;
                        tracing::debug!(stream = id, pod = %open.pod, container = %open.container, follow = open.follow, "log stream opened");
                        if let Some(old) = streams.remove(&id) {
                            old.task.abort();
                        }
                        let credit = Arc::new(Semaphore::new(LOG_WINDOW_CHUNKS as usize));
                        let task = tasks.spawn(serve_stream(open, source.clone(), up.clone(), credit.clone()));
                        streams.insert(id, Served { task, credit });
                    }
                    Some(tunnel_down::Msg::Cancel(c)) => {
                        if let Some(s) = streams.remove(&c.stream_id) {
                            tracing::debug!(stream = c.stream_id, "log stream cancelled");
                            s.task.abort();
                        }
                    }
                    Some(tunnel_down::Msg::Ack(a)) => {
                        if let Some(s) = streams.get(&a.stream_id) {
                            // Never more credit than the window, whatever the server sends.
                            let room = (LOG_WINDOW_CHUNKS as usize).saturating_sub(s.credit.available_permits());
                            s.credit.add_permits((a.chunks as usize).min(room));
                        }
                    }
                    None => {}
                }
            }
            Some(done) = tasks.join_next() => {
                if let Ok(id) = done {
                    streams.remove(&id);
                }
            }
        }
    }
}

/// Serves one LogOpen: the log's chunks as LogData within the stream's credit, then LogEnd.
/// Returns the stream id.
async fn serve_stream(
    open: LogOpen,
    source: Arc<dyn LogSource>,
    up: mpsc::Sender<TunnelUp>,
    credit: Arc<Semaphore>,
) -> u64 {
    let id = open.stream_id;
    let opts = ReadOptions::from_open(&open);
    let target = LogTarget {
        namespace: open.namespace,
        pod: open.pod,
        pod_uid: open.pod_uid,
        container: open.container,
        previous: open.previous,
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
    let read = read_log(&*source, &target, opts, tx);
    let forward = async {
        while let Some(data) = rx.recv().await {
            let Ok(permit) = credit.acquire().await else {
                return false;
            };
            permit.forget();
            let msg = TunnelUp {
                msg: Some(tunnel_up::Msg::Data(LogData {
                    stream_id: id,
                    data,
                })),
            };
            if up.send(msg).await.is_err() {
                return false;
            }
        }
        true
    };
    let (result, delivered) = tokio::join!(read, forward);
    if delivered {
        let (error, not_found) = match result {
            Ok(()) => (String::new(), false),
            Err(e) => (e.message, e.not_found),
        };
        let end = TunnelUp {
            msg: Some(tunnel_up::Msg::End(LogEnd {
                stream_id: id,
                error,
                not_found,
            })),
        };
        let _ = up.send(end).await;
    }
    id
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        sync::{
            Mutex,
            atomic::{AtomicBool, AtomicUsize, Ordering},
        },
    };

    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "skiff-logs-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tail_of(content: &[u8], n: u64, block: usize) -> String {
        let dir = TempDir::new();
        let path = dir.0.join("log");
        std::fs::write(&path, content).expect("write");
        let mut f = std::fs::File::open(&path).expect("open");
        let at = tail_offset(&mut f, content.len() as u64, n, block).expect("tail");
        String::from_utf8_lossy(&content[usize::try_from(at).expect("offset")..]).into_owned()
    }

    #[test]
    fn tail_counts_lines_from_the_end_across_blocks() {
        let text = b"one\ntwo\nthree\nfour\n";
        for block in [1, 2, 3, 5, 7, 64 << 10] {
            assert_eq!(tail_of(text, 0, block), "", "block {block}");
            assert_eq!(tail_of(text, 1, block), "four\n", "block {block}");
            assert_eq!(tail_of(text, 2, block), "three\nfour\n", "block {block}");
            assert_eq!(tail_of(text, 4, block), "one\ntwo\nthree\nfour\n");
            assert_eq!(tail_of(text, 10, block), "one\ntwo\nthree\nfour\n");
            // A last line without its newline yet is a line.
            assert_eq!(tail_of(b"a\nb\nc", 2, block), "b\nc", "block {block}");
            assert_eq!(tail_of(b"\n\n\n", 2, block), "\n\n", "block {block}");
            assert_eq!(tail_of(b"", 3, block), "", "block {block}");
        }
    }

    #[test]
    fn tail_of_a_big_file_reads_only_its_end() {
        let mut text = Vec::new();
        for i in 0..200_000 {
            writeln!(text, "line {i}").expect("write");
        }
        assert_eq!(
            tail_of(&text, 3, TAIL_BLOCK),
            "line 199997\nline 199998\nline 199999\n"
        );
    }

    /// One container whose current attempt writes to `path`.
    struct Source {
        path: Mutex<PathBuf>,
        running: Arc<AtomicBool>,
    }

    impl LogSource for Source {
        fn resolve(&self, target: &LogTarget) -> Result<LogFile, String> {
            if target.container != "c" {
                return Err(format!("no container {}", target.container));
            }
            let running = self.running.clone();
            let path = self.path.lock().map_err(|e| e.to_string())?.clone();
            Ok(LogFile::new(path, move || running.load(Ordering::SeqCst)))
        }
    }

    fn target(container: &str) -> LogTarget {
        LogTarget {
            namespace: "default".into(),
            pod: "p".into(),
            pod_uid: "u".into(),
            container: container.into(),
            previous: false,
        }
    }

    async fn read_all(source: &Source, opts: ReadOptions) -> Result<String, LogError> {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let collect = async {
            let mut all = Vec::new();
            while let Some(chunk) = rx.recv().await {
                assert!(chunk.len() <= LOG_CHUNK_BYTES);
                all.extend(chunk);
            }
            all
        };
        let t = target("c");
        let (r, all) = tokio::join!(read_log(source, &t, opts, tx), collect);
        r.map(|()| String::from_utf8_lossy(&all).into_owned())
    }

    fn source_with(dir: &TempDir, content: &str, running: bool) -> Source {
        let path = dir.0.join("c-0.log");
        std::fs::write(&path, content).expect("write");
        Source {
            path: Mutex::new(path),
            running: Arc::new(AtomicBool::new(running)),
        }
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open");
        f.write_all(text.as_bytes()).expect("append");
    }

    #[tokio::test]
    async fn reads_whole_tailed_and_limited_logs() {
        let dir = TempDir::new();
        let source = source_with(&dir, "a\nb\nc\n", true);
        let all = read_all(&source, ReadOptions::default())
            .await
            .expect("read");
        assert_eq!(all, "a\nb\nc\n");
        let tail = ReadOptions {
            tail_lines: Some(2),
            ..ReadOptions::default()
        };
        assert_eq!(read_all(&source, tail).await.expect("read"), "b\nc\n");
        let limited = ReadOptions {
            tail_lines: Some(2),
            limit_bytes: Some(3),
            ..ReadOptions::default()
        };
        assert_eq!(read_all(&source, limited).await.expect("read"), "b\nc");

        let big = "x".repeat(3 * LOG_CHUNK_BYTES + 5);
        let source = source_with(&dir, &big, false);
        assert_eq!(
            read_all(&source, ReadOptions::default())
                .await
                .expect("read"),
            big
        );

        let err = read_log(
            &source,
            &target("other"),
            ReadOptions::default(),
            mpsc::channel(1).0,
        )
        .await
        .expect_err("no such container");
        assert!(
            err.not_found && err.message.contains("no container other"),
            "{err:?}"
        );
        *source.path.lock().expect("lock") = dir.0.join("missing.log");
        let err = read_all(&source, ReadOptions::default())
            .await
            .expect_err("no file");
        assert!(
            err.not_found && err.message.contains("missing.log"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn follow_reads_what_is_appended_until_the_container_exits() {
        let dir = TempDir::new();
        let source = Arc::new(source_with(&dir, "1\n2\n3\n", true));
        let path = source.path.lock().expect("lock").clone();
        let (tx, mut rx) = mpsc::channel(4);
        let opts = ReadOptions {
            follow: true,
            tail_lines: Some(1),
            ..ReadOptions::default()
        };
        let reader = {
            let source = source.clone();
            tokio::spawn(async move { read_log(&*source, &target("c"), opts, tx).await })
        };
        assert_eq!(rx.recv().await.as_deref(), Some(&b"3\n"[..]));
        append(&path, "4\n");
        assert_eq!(rx.recv().await.as_deref(), Some(&b"4\n"[..]));
        // The last words of the container and its exit come together: both are delivered.
        append(&path, "bye\n");
        source.running.store(false, Ordering::SeqCst);
        let mut rest = Vec::new();
        while let Some(c) = rx.recv().await {
            rest.extend(c);
        }
        assert_eq!(rest, b"bye\n");
        reader.await.expect("join").expect("read");
    }

    #[tokio::test]
    async fn follow_stops_when_a_new_attempt_starts_or_the_reader_leaves() {
        let dir = TempDir::new();
        let source = Arc::new(source_with(&dir, "first\n", true));
        let (tx, mut rx) = mpsc::channel(4);
        let opts = ReadOptions {
            follow: true,
            ..ReadOptions::default()
        };
        let reader = {
            let source = source.clone();
            tokio::spawn(async move { read_log(&*source, &target("c"), opts, tx).await })
        };
        assert_eq!(rx.recv().await.as_deref(), Some(&b"first\n"[..]));
        let next = dir.0.join("c-1.log");
        std::fs::write(&next, "second attempt\n").expect("write");
        *source.path.lock().expect("lock") = next;
        assert_eq!(rx.recv().await, None, "following ends with the attempt");
        reader.await.expect("join").expect("read");

        let (tx, rx) = mpsc::channel(4);
        let reader = {
            let source = source.clone();
            tokio::spawn(async move { read_log(&*source, &target("c"), opts, tx).await })
        };
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("a reader without a receiver stops")
            .expect("join")
            .expect("read");
    }
}
