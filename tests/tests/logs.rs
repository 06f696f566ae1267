//! `Logs` through the API server and the log tunnel a node agent opens, against a real etcd and
//! API server. The node agent's side is `skiff_api::logs::serve_node_tunnel` (the function the
//! agent runs) with a test LogSource serving temporary files.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use skiff_api::{
    Object,
    client::{Client, Code},
    kinds::Pod,
    logs::{LogFile, LogSource, LogTarget, run_node_tunnel, serve_node_tunnel},
    manifest,
    proto::LogsRequest,
};
use skiff_testbed::{
    control::{ApiOptions, ApiServer, Etcd, etcd_available},
    unique_prefix, workspace_binary,
};
use tokio::sync::oneshot;
use tokio_stream::{Stream, StreamExt as _};

/// A node's containers: `<dir>/<pod>_<container>.log`, running while `running` says so.
struct FakeNode {
    dir: PathBuf,
    running: Arc<AtomicBool>,
    /// Held by every LogFile handed out: its count says whether a reader is still at work.
    readers: Arc<()>,
    seen: Mutex<Vec<LogTarget>>,
}

impl FakeNode {
    fn new(tag: &str) -> Result<Arc<FakeNode>> {
        let dir = std::env::temp_dir().join(unique_prefix(tag));
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(FakeNode {
            dir,
            running: Arc::new(AtomicBool::new(true)),
            readers: Arc::new(()),
            seen: Mutex::new(Vec::new()),
        }))
    }

    fn path(&self, pod: &str, container: &str) -> PathBuf {
        self.dir.join(format!("{pod}_{container}.log"))
    }

    fn write(&self, pod: &str, container: &str, text: &str) -> Result<()> {
        Ok(std::fs::write(self.path(pod, container), text)?)
    }

    fn append(&self, pod: &str, container: &str, text: &str) -> Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path(pod, container))?;
        Ok(f.write_all(text.as_bytes())?)
    }

    /// Readers holding a LogFile now.
    fn active_readers(&self) -> usize {
        Arc::strong_count(&self.readers) - 1
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl LogSource for FakeNode {
    fn resolve(&self, target: &LogTarget) -> Result<LogFile, String> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(target.clone());
        }
        let path = self.path(&target.pod, &target.container);
        if !Path::new(&path).exists() {
            return Err(format!(
                "container {} of pod {}/{} has no log on this node",
                target.container, target.namespace, target.pod
            ));
        }
        let (running, readers) = (self.running.clone(), self.readers.clone());
        Ok(LogFile::new(path, move || {
            let _held = &readers;
            running.load(Ordering::SeqCst)
        }))
    }
}

/// A node agent's tunnel, stopped on drop.
struct Agent {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    fn start(client: Client, source: Arc<FakeNode>) -> Agent {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_node_tunnel(client, source, async move {
            let _ = stopped.await;
        }));
        Agent {
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .context("serve_node_tunnel did not return after its shutdown signal")??;
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pod(name: &str, node: &str, containers: &[&str]) -> Result<Pod> {
    let list: Vec<String> = containers
        .iter()
        .map(|c| format!("  - {{name: {c}, image: busybox:local}}\n"))
        .collect();
    let mut p: Pod = manifest::parse(
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n{}",
            list.concat()
        )
        .as_bytes(),
    )?
    .pop()
    .and_then(Object::into_kind)
    .context("not a pod")?;
    p.spec.node_name = node.into();
    Ok(p)
}

fn req(pod: &str) -> LogsRequest {
    LogsRequest {
        namespace: "default".into(),
        pod: pod.into(),
        ..LogsRequest::default()
    }
}

async fn collect(
    mut s: impl Stream<Item = skiff_api::client::Result<Vec<u8>>> + Unpin,
) -> skiff_api::client::Result<String> {
    let mut all = Vec::new();
    while let Some(chunk) = s.next().await {
        all.extend(chunk?);
    }
    Ok(String::from_utf8_lossy(&all).into_owned())
}

/// The whole (non-followed) log.
async fn read(client: &Client, r: LogsRequest) -> skiff_api::client::Result<String> {
    collect(client.logs(r).await?).await
}

/// Reads once the node's tunnel is open (the agent opens it in the background).
async fn read_when_open(client: &Client, r: LogsRequest) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match read(client, r.clone()).await {
            Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return Ok(other?),
        }
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

struct Cluster {
    _etcd: Etcd,
    api: ApiServer,
}

async fn cluster(test: &str) -> Result<Option<(Cluster, Client)>> {
    if !etcd_available(test) {
        return Ok(None);
    }
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            nodes: 2,
            ..ApiOptions::default()
        },
    )?;
    let admin = api.client("admin").await?;
    Ok(Some((Cluster { _etcd: etcd, api }, admin)))
}

#[tokio::test]
async fn logs_are_read_on_the_node_through_its_tunnel() -> Result<()> {
    let Some((c, admin)) = cluster("logs_through_the_tunnel").await? else {
        return Ok(());
    };
    let web = admin.create(&pod("web", "node-0", &["app"])?).await?;
    admin.create(&pod("multi", "node-0", &["a", "b"])?).await?;
    admin.create(&pod("far", "node-1", &["app"])?).await?;
    admin.create(&pod("pending", "", &["app"])?).await?;
    let node = FakeNode::new("node-0-logs")?;
    node.write("web", "app", "one\ntwo\nthree\nfour\n")?;
    node.write("multi", "b", "from b\n")?;
    let agent = Agent::start(c.api.client("node-0").await?, node.clone());

    assert_eq!(
        read_when_open(&admin, req("web")).await?,
        "one\ntwo\nthree\nfour\n"
    );
    {
        let seen = node.seen.lock().map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = seen.last().context("the node was asked")?;
        assert_eq!(
            (t.namespace.as_str(), t.pod.as_str(), t.container.as_str()),
            ("default", "web", "app")
        );
        assert_eq!(t.pod_uid, web.metadata.uid, "the node is told which pod");
        assert!(!t.previous);
    }
    let tail = LogsRequest {
        tail_lines: Some(2),
        ..req("web")
    };
    assert_eq!(read(&admin, tail).await?, "three\nfour\n");
    let limited = LogsRequest {
        limit_bytes: 6,
        ..req("web")
    };
    assert_eq!(read(&admin, limited).await?, "one\ntw");
    let b = LogsRequest {
        container: "b".into(),
        ..req("multi")
    };
    assert_eq!(read(&admin, b).await?, "from b\n");

    // Mistakes, each with its code and words.
    let e = read(&admin, req("multi"))
        .await
        .expect_err("two containers");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.to_string().contains("choose one of: [a b]"), "{e}");
    let wrong = LogsRequest {
        container: "nope".into(),
        ..req("web")
    };
    let e = read(&admin, wrong).await.expect_err("no such container");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.to_string()
            .contains("container nope is not valid for pod web, choose one of: [app]"),
        "{e}"
    );
    let e = read(&admin, req("far")).await.expect_err("no tunnel");
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.to_string()
            .contains("node node-1 has no log tunnel open (is its agent running?)"),
        "{e}"
    );
    let e = read(&admin, req("pending")).await.expect_err("unbound");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.to_string()
            .contains("pod pending is not bound to a node yet"),
        "{e}"
    );
    let e = read(&admin, req("ghost")).await.expect_err("no pod");
    assert_eq!(e.code(), Code::NotFound);
    let a = LogsRequest {
        container: "a".into(),
        ..req("multi")
    };
    let e = read(&admin, a).await.expect_err("the node has no log");
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.to_string()
            .contains("container a of pod default/multi has no log on this node"),
        "the node's own words: {e}"
    );

    // Following: lines written later arrive, and the stream ends when the container exits.
    let follow = LogsRequest {
        follow: true,
        tail_lines: Some(1),
        ..req("web")
    };
    let mut s = admin.logs(follow).await?;
    let first = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await?
        .context("stream ended")??;
    assert_eq!(first, b"four\n");
    node.append("web", "app", "five\n")?;
    let next = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await?
        .context("stream ended")??;
    assert_eq!(next, b"five\n");
    node.append("web", "app", "last words\n")?;
    node.running.store(false, Ordering::SeqCst);
    let rest = tokio::time::timeout(Duration::from_secs(10), collect(s)).await??;
    assert_eq!(
        rest, "last words\n",
        "the stream ends after what was written before the exit"
    );
    wait_for("the node's readers to finish", || {
        node.active_readers() == 0
    })
    .await?;
    agent.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn readers_read_logs_and_only_nodes_open_tunnels() -> Result<()> {
    let Some((c, admin)) = cluster("logs_authorization").await? else {
        return Ok(());
    };
    admin.create(&pod("web", "node-0", &["app"])?).await?;
    let node = FakeNode::new("node-0-auth")?;
    node.write("web", "app", "hello\n")?;
    let node_client = c.api.client("node-0").await?;
    let agent = Agent::start(node_client.clone(), node.clone());
    let viewer = c.api.client("viewer").await?;
    assert_eq!(read_when_open(&viewer, req("web")).await?, "hello\n");
    let controller = c.api.client("controller").await?;
    assert_eq!(read(&controller, req("web")).await?, "hello\n");

    let e = read(&node_client, req("web"))
        .await
        .expect_err("nodes do not read logs");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.to_string()
            .contains("User \"node-0\" cannot get pods/log"),
        "{e}"
    );
    for user in ["admin", "viewer", "controller"] {
        let client = c.api.client(user).await?;
        let e = run_node_tunnel(&client, node.clone())
            .await
            .expect_err("only nodes open tunnels");
        assert_eq!(e.code(), Code::PermissionDenied, "{user}: {e}");
        assert!(e.to_string().contains("is not a node"), "{e}");
    }
    // The refused tunnels replaced nothing.
    assert_eq!(read(&admin, req("web")).await?, "hello\n");
    agent.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_reader_that_leaves_cancels_the_read_on_the_node() -> Result<()> {
    let Some((mut c, admin)) = cluster("logs_cancel").await? else {
        return Ok(());
    };
    admin.create(&pod("web", "node-0", &["app"])?).await?;
    let node = FakeNode::new("node-0-cancel")?;
    node.write("web", "app", "start\n")?;
    let agent = Agent::start(c.api.client("node-0").await?, node.clone());
    read_when_open(&admin, req("web")).await?;

    let follow = LogsRequest {
        follow: true,
        ..req("web")
    };
    let mut s = admin.logs(follow.clone()).await?;
    assert_eq!(s.next().await.context("ended")??, b"start\n");
    assert_eq!(node.active_readers(), 1, "the node follows the file");
    drop(s);
    wait_for("the node to stop reading after the reader left", || {
        node.active_readers() == 0
    })
    .await?;

    // A reader that stops reading holds the node's reader back (the window), and leaving
    // still cancels it.
    let s = admin.logs(follow.clone()).await?;
    let block = "x".repeat(1023) + "\n";
    for _ in 0..8 * 1024 {
        node.append("web", "app", &block)?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.active_readers(), 1);
    drop(s);
    wait_for("the stalled reader to be cancelled", || {
        node.active_readers() == 0
    })
    .await?;

    // The tunnel comes back after the API server restarts.
    node.write("web", "app", "after restart\n")?;
    c.api.restart()?;
    let admin = c.api.client("admin").await?;
    assert_eq!(read_when_open(&admin, req("web")).await?, "after restart\n");

    // A newer tunnel of the node replaces the older one, and the older one ending does not
    // unregister the newer.
    let newer = FakeNode::new("node-0-newer")?;
    newer.write("web", "app", "from the newer agent\n")?;
    let second = Agent::start(c.api.client("node-0").await?, newer.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while read(&admin, req("web")).await.ok().as_deref() != Some("from the newer agent\n") {
        ensure!(
            Instant::now() < deadline,
            "the newer tunnel never took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.shutdown().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read(&admin, req("web")).await?, "from the newer agent\n");
    second.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn skiffctl_logs_prints_the_log() -> Result<()> {
    let Some((c, admin)) = cluster("skiffctl_logs").await? else {
        return Ok(());
    };
    admin.create(&pod("web", "node-0", &["app"])?).await?;
    admin.create(&pod("multi", "node-0", &["a", "b"])?).await?;
    let node = FakeNode::new("node-0-ctl")?;
    node.write("web", "app", "one\ntwo\nthree\n")?;
    let agent = Agent::start(c.api.client("node-0").await?, node.clone());
    read_when_open(&admin, req("web")).await?;
    let home = std::env::temp_dir().join(unique_prefix("ctl-home"));
    std::fs::create_dir_all(&home)?;
    let bin = workspace_binary("skiffctl")?;
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .env("HOME", &home)
            .env_remove("SKIFF_CONFIG")
            .env("SKIFF_SERVER", c.api.url())
            .env("SKIFF_TOKEN", c.api.token("viewer"))
            .stdin(Stdio::null());
        // On the blocking pool, so that the test's agent keeps serving meanwhile.
        tokio::task::spawn_blocking(move || cmd.output())
    };
    let out = run(&["logs", "web", "--tail", "2"]).await??;
    ensure!(
        out.status.success(),
        "skiffctl logs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two\nthree\n");
    // Follows until the container ends.
    let follow = run(&["logs", "pod/web", "-c", "app", "-f"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.append("web", "app", "four\n")?;
    node.running.store(false, Ordering::SeqCst);
    let out = tokio::time::timeout(Duration::from_secs(20), follow).await???;
    ensure!(
        out.status.success(),
        "skiffctl logs -f failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "one\ntwo\nthree\nfour\n"
    );
    let out = run(&["logs", "multi"]).await??;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "error: a container name must be specified for pod multi, choose one of: [a b]"
        ),
        "{err}"
    );
    let out = run(&["logs", "ghost", "-n", "default"]).await??;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pods \"ghost\" not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.shutdown().await?;
    let _ = std::fs::remove_dir_all(&home);
    Ok(())
}
