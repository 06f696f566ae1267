//! The node agent's pod startup benchmark (`skiff-bench pods`): a one-node cluster (real etcd,
//! API server, containerd and `skiff-agent node`, as the agent tests build it) measuring the
//! time from a pod's create call to Running (sleep pods) and to Ready (httpd pods behind an HTTP
//! readiness probe), then the agent's memory and CPU with many pods running.

use std::{
    collections::HashMap,
    fs,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use skiff_api::{
    Kind as _, Object,
    client::{Client, DeleteParams, ListParams, WatchEvent},
    kinds::{Pod, condition},
};
use skiff_testbed::{
    agent::{Agent, AgentOptions},
    containerd::{Containerd, busybox_image_dir, containerd_available},
    control::{ApiOptions, ApiServer, Encryption, Etcd, etcd_available},
    fabric::{Fabric, NodeNs},
    privileged,
    wait::{eventually, wait_node_ready},
    workspace_binary,
};
use tokio_stream::StreamExt as _;

use crate::{
    control::{Machine, machine},
    meta,
};

/// The target printed next to the startup figures: p99 create → Running under a second
/// (Kubernetes' pod startup SLO is 5 s), for pods created at [`PACED_PER_SECOND`].
pub const TARGET_P99_MS: f64 = 1000.0;
/// Create calls in flight at once in a burst.
pub const BURST: usize = 10;
/// The paced creation rate: ClusterLoader2 measures Kubernetes' startup SLO on "latency pods"
/// created at 5 per second (its `Uniform5qps` tuning set), so that the latency is a pod's own and
/// not the queue behind the pods created just before it. The burst measures that queue.
pub const PACED_PER_SECOND: f64 = 5.0;
const NODE: &str = "node-0";
const NAMESPACE: &str = "default";
const WAIT: Duration = Duration::from_secs(180);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub out: PathBuf,
    /// Pods of the Running and Ready measurements; the resource measurement runs twice as many.
    pub pods: usize,
    /// The idle window the resources are sampled over.
    pub window: Duration,
}

impl Options {
    pub fn new(quick: bool, out: PathBuf, pods: Option<usize>) -> Result<Options> {
        let pods = pods.unwrap_or(if quick { 10 } else { 50 });
        if !(1..=100).contains(&pods) {
            bail!("--pods takes 1 to 100 (the resource phase runs twice as many on one node)");
        }
        Ok(Options {
            quick,
            out,
            pods,
            window: Duration::from_secs(if quick { 3 } else { 10 }),
        })
    }
}

/// Everything a run measured; written as `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub quick: bool,
    pub started: String,
    pub finished: String,
    pub burst: usize,
    pub paced_per_second: f64,
    /// Created at [`PACED_PER_SECOND`]; the target applies to it.
    pub to_running: Startup,
    /// Created as fast as the API takes them, [`BURST`] calls at a time.
    pub to_running_burst: Startup,
    /// Created at [`PACED_PER_SECOND`].
    pub to_ready: Startup,
    pub resources: Resources,
    pub target_p99_ms: f64,
    pub target_met: bool,
}

/// Create call start → first watch event showing the state, for each pod.
#[derive(Debug, Clone, Serialize)]
pub struct Startup {
    pub pods: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// First create call → last pod in the state.
    pub all_seconds: f64,
    pub deleted_seconds: f64,
    /// CPU time of the whole machine (every process and the kernel) from the first create to
    /// the last pod in the state, per pod: what one pod start costs agent, containerd, shim,
    /// runc, API server and etcd together.
    pub machine_cpu_ms_per_pod: f64,
    /// Mean share of the machine's CPUs busy over that time.
    pub machine_busy_percent: f64,
}

/// How pods are created.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// One create every 1/rate seconds, not waiting for the previous call.
    Rate(f64),
    /// [`BURST`] create calls in flight until all are made.
    Burst,
    /// Every create call in flight together.
    Together,
}

/// Busy and total CPU time of the machine in clock ticks, from /proc/stat.
fn machine_ticks() -> Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat")?;
    let v: Vec<u64> = stat
        .lines()
        .next()
        .context("an empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    pub pods: usize,
    /// The agent's CPU time from the first create to the last pod Running.
    pub startup_cpu_seconds: f64,
    pub startup_seconds: f64,
    pub idle_window_seconds: f64,
    pub idle_rss_mib: f64,
    pub idle_rss_max_mib: f64,
    /// Percent of one core over the idle window.
    pub idle_cpu_percent: f64,
    pub deleted_seconds: f64,
}

pub fn main(opts: &Options) -> Result<()> {
    let test = "skiff-bench pods";
    if !privileged(test) || !etcd_available(test) || !containerd_available(test) {
        bail!("this host cannot run the pod benchmark (see above); run `cargo xtask setup`");
    }
    for bin in ["skiff-apiserver", "skiff-agent"] {
        workspace_binary(bin).with_context(|| {
            format!("{bin} must be next to skiff-bench or in $SKIFF_BIN_DIR (cargo xtask bench-pods builds it)")
        })?;
    }
    fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let results = rt.block_on(run(opts))?;
    crate::report::write_results(&opts.out, &results, &report(&results), &summary(&results))?;
    Ok(())
}

fn progress(what: impl std::fmt::Display) {
    eprintln!("[pods] {what}");
}

/// The cluster; dropped in this order: the agent, containerd, the node namespace, the fabric,
/// the API server, etcd.
pub(crate) struct Cluster {
    pub(crate) agent: Agent,
    _containerd: Containerd,
    pub(crate) node: NodeNs,
    _fabric: Fabric,
    pub(crate) admin: Client,
    _api: ApiServer,
    _etcd: Etcd,
}

/// One node: etcd, the API server, containerd and an agent (with `extra` flags), Ready.
pub(crate) async fn cluster(extra: &[&str]) -> Result<Cluster> {
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            nodes: 1,
            encryption: Encryption::SecretsAndConfigMaps,
            ..ApiOptions::default()
        },
    )?;
    let admin = api.client("admin").await?;
    let containerd = Containerd::start().context("starting containerd")?;
    let image_dir = busybox_image_dir()?;
    let fabric = Fabric::new(&format!("bp{}", std::process::id() % 100_000))?;
    let node = fabric.node(0)?;
    let agent = Agent::start(
        &api,
        &node,
        &AgentOptions {
            index: 0,
            containerd: containerd.socket().to_path_buf(),
            image_dir,
            containerd_namespace: format!("{}-node-0", containerd.namespace()),
            cgroup_parent: containerd.cgroup_parent().to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        },
    )?;
    let c = Cluster {
        agent,
        _containerd: containerd,
        node,
        _fabric: fabric,
        admin,
        _api: api,
        _etcd: etcd,
    };
    let ready = wait_node_ready(&c.admin, NODE, Duration::from_secs(30)).await;
    if let Err(e) = ready {
        bail!("{e}\nagent log:\n{}", tail(&c.agent.log()));
    }
    Ok(c)
}

pub(crate) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// When the watch first saw each pod Running and Ready.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) running: HashMap<String, Instant>,
    pub(crate) ready: HashMap<String, Instant>,
    pub(crate) failed: Vec<String>,
}

pub(crate) fn lock(s: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Watches node-0's pods for the whole run, resuming after a broken stream.
pub(crate) fn spawn_watch(admin: Client, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let params = ListParams::fields(format!("spec.nodeName={NODE}"));
        let mut rev = 0;
        loop {
            let mut stream = match admin.watch(Pod::INFO, NAMESPACE, &params, rev, false).await {
                Ok(s) => s,
                Err(e) => {
                    progress(format!("watch failed ({e}); again"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            while let Some(ev) = stream.next().await {
                let now = Instant::now();
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        progress(format!("watch broke ({e}); resuming"));
                        break;
                    }
                };
                rev = ev.resource_version();
                if let WatchEvent::Added(Object::Pod(p)) | WatchEvent::Modified(Object::Pod(p)) = ev
                {
                    let name = p.metadata.name.clone();
                    let mut s = lock(&seen);
                    if p.status.phase == "Running" {
                        s.running.entry(name.clone()).or_insert(now);
                    }
                    if p.status.phase == "Failed" && !s.failed.contains(&name) {
                        s.failed.push(name.clone());
                    }
                    if condition(&p.status.conditions, "Ready").is_some_and(|c| c.status == "True")
                    {
                        s.ready.entry(name).or_insert(now);
                    }
                }
            }
        }
    })
}

fn sleep_pod(name: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "busybox:1.35", "command": ["sleep", "3600"]}],
        }
    })
}

fn web_pod(name: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "web",
                "image": "busybox:1.35",
                "command": ["httpd", "-f", "-p", "8080", "-h", "/var/www"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
            }],
        }
    })
}

/// Creates the pods at `pace`; returns each pod's create-call start.
pub(crate) async fn create_all(
    admin: &Client,
    pods: Vec<(String, serde_json::Value)>,
    pace: Pace,
) -> Result<HashMap<String, Instant>> {
    if let Pace::Rate(rate) = pace {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut set = tokio::task::JoinSet::new();
        for (name, json) in pods {
            tick.tick().await;
            let admin = admin.clone();
            set.spawn(async move {
                let pod: Pod = serde_json::from_value(json).context("a benchmark pod")?;
                let t = Instant::now();
                admin
                    .create(&pod)
                    .await
                    .with_context(|| format!("creating pod {name}"))?;
                anyhow::Ok((name, t))
            });
        }
        let mut started = HashMap::new();
        while let Some(r) = set.join_next().await {
            let (name, t) = r??;
            started.insert(name, t);
        }
        return Ok(started);
    }
    let in_flight = match pace {
        Pace::Together => pods.len().max(1),
        _ => BURST,
    };
    let mut started = HashMap::new();
    let mut pods = pods.into_iter();
    loop {
        let burst: Vec<_> = pods.by_ref().take(in_flight).collect();
        if burst.is_empty() {
            return Ok(started);
        }
        let mut set = tokio::task::JoinSet::new();
        for (name, json) in burst {
            let admin = admin.clone();
            set.spawn(async move {
                let pod: Pod = serde_json::from_value(json).context("a benchmark pod")?;
                let t = Instant::now();
                admin
                    .create(&pod)
                    .await
                    .with_context(|| format!("creating pod {name}"))?;
                anyhow::Ok((name, t))
            });
        }
        while let Some(r) = set.join_next().await {
            let (name, t) = r??;
            started.insert(name, t);
        }
    }
}

/// Waits until every pod of `started` is in `map` (Running or Ready); fails on a Failed pod.
pub(crate) async fn wait_all(
    agent: &Agent,
    seen: &Mutex<Seen>,
    started: &HashMap<String, Instant>,
    what: &str,
    ready: bool,
) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    let mut last_report = Instant::now();
    loop {
        let (done, failed) = {
            let s = lock(seen);
            let map = if ready { &s.ready } else { &s.running };
            let done = started.keys().filter(|n| map.contains_key(*n)).count();
            let failed: Vec<String> = s
                .failed
                .iter()
                .filter(|n| started.contains_key(*n))
                .cloned()
                .collect();
            (done, failed)
        };
        if !failed.is_empty() {
            bail!(
                "pods failed: {failed:?}\nagent log:\n{}",
                tail(&agent.log())
            );
        }
        if done == started.len() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "only {done} of {} pods {what} within {WAIT:?}\nagent log:\n{}",
                started.len(),
                tail(&agent.log())
            );
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            progress(format!("  {done}/{} {what}", started.len()));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes every pod on the node and waits until none is left; returns the seconds it took.
pub(crate) async fn delete_all(admin: &Client, agent: &Agent, names: &[String]) -> Result<f64> {
    let t = Instant::now();
    for chunk in names.chunks(BURST) {
        let mut set = tokio::task::JoinSet::new();
        for name in chunk {
            let admin = admin.clone();
            let name = name.clone();
            set.spawn(async move {
                match admin
                    .delete(
                        Pod::INFO,
                        NAMESPACE,
                        &name,
                        // Graceful (1 s): the pod is gone once the agent has stopped it.
                        DeleteParams::default(),
                    )
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if e.is_not_found() => Ok(()),
                    Err(e) => Err(anyhow::Error::from(e).context(format!("deleting pod {name}"))),
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
    }
    let gone = eventually(WAIT, "every pod gone", || {
        let admin = admin.clone();
        async move {
            let (pods, _) = admin
                .list::<Pod>(
                    NAMESPACE,
                    &ListParams::fields(format!("spec.nodeName={NODE}")),
                )
                .await?;
            Ok(pods.is_empty().then_some(()))
        }
    })
    .await;
    if let Err(e) = gone {
        bail!("{e}\nagent log:\n{}", tail(&agent.log()));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Runs one startup measurement: creates `n` pods, waits until all are Running (or Ready),
/// deletes them.
async fn startup(
    c: &Cluster,
    seen: &Mutex<Seen>,
    prefix: &str,
    n: usize,
    ready: bool,
    pace: Pace,
) -> Result<Startup> {
    let what = if ready { "Ready" } else { "Running" };
    let how = match pace {
        Pace::Rate(r) => format!("created at {r}/s"),
        Pace::Burst => format!("created in a burst, {BURST} calls at a time"),
        Pace::Together => "created all at once".to_owned(),
    };
    progress(format!("{n} pods ({prefix}) to {what}, {how}"));
    let pods: Vec<_> = (0..n)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            let json = if ready {
                web_pod(&name)
            } else {
                sleep_pod(&name)
            };
            (name, json)
        })
        .collect();
    let first = Instant::now();
    let ticks0 = machine_ticks()?;
    let started = create_all(&c.admin, pods, pace).await?;
    wait_all(&c.agent, seen, &started, what, ready).await?;
    let ticks1 = machine_ticks()?;
    let mut ms: Vec<f64> = {
        let s = lock(seen);
        let map = if ready { &s.ready } else { &s.running };
        started
            .iter()
            .map(|(name, t)| map[name].saturating_duration_since(*t).as_secs_f64() * 1000.0)
            .collect()
    };
    let last = {
        let s = lock(seen);
        let map = if ready { &s.ready } else { &s.running };
        started.keys().map(|n| map[n]).max().unwrap_or(first)
    };
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((p / 100.0 * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    let mut r = Startup {
        pods: n,
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
        max_ms: pct(100.0),
        all_seconds: last.saturating_duration_since(first).as_secs_f64(),
        deleted_seconds: 0.0,
        machine_cpu_ms_per_pod: (ticks1.0 - ticks0.0) as f64 / TICKS_PER_S * 1000.0 / n as f64,
        machine_busy_percent: (ticks1.0 - ticks0.0) as f64 / (ticks1.1 - ticks0.1).max(1) as f64
            * 100.0,
    };
    progress(format!(
        "  to {what}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; all {what} after {:.2} s; \
         machine CPU {:.0} ms per pod, {:.0}% busy",
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.all_seconds,
        r.machine_cpu_ms_per_pod,
        r.machine_busy_percent
    ));
    progress("  deleting");
    let names: Vec<String> = started.into_keys().collect();
    r.deleted_seconds = delete_all(&c.admin, &c.agent, &names).await?;
    progress(format!("  all gone after {:.2} s", r.deleted_seconds));
    Ok(r)
}

/// The agent's process: the `skiff-agent` whose command line names its state directory.
fn agent_pid(agent: &Agent) -> Result<u32> {
    let state = agent.root.join("state").display().to_string();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_agent = args.first().is_some_and(|a| a.ends_with("skiff-agent"));
        if is_agent && args.windows(2).any(|w| w[0] == "--root" && w[1] == state) {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
        .first()
        .copied()
        .with_context(|| format!("no skiff-agent process with --root {state}"))
}

/// utime + stime of `pid` in clock ticks (100 a second).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (has the agent died?)"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("an unreadable /proc/pid/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}

const TICKS_PER_S: f64 = 100.0;

async fn resources(
    c: &Cluster,
    seen: &Mutex<Seen>,
    n: usize,
    window: Duration,
) -> Result<Resources> {
    let pid = agent_pid(&c.agent)?;
    progress(format!("{n} pods to Running, agent pid {pid}"));
    let pods: Vec<_> = (0..n)
        .map(|i| {
            let name = format!("many-{i}");
            let json = sleep_pod(&name);
            (name, json)
        })
        .collect();
    let t0 = Instant::now();
    let ticks0 = cpu_ticks(pid)?;
    let started = create_all(&c.admin, pods, Pace::Burst).await?;
    wait_all(&c.agent, seen, &started, "Running", false).await?;
    let ticks1 = cpu_ticks(pid)?;
    let startup_seconds = t0.elapsed().as_secs_f64();
    let startup_cpu_seconds = (ticks1 - ticks0) as f64 / TICKS_PER_S;
    progress(format!(
        "  all Running after {startup_seconds:.2} s; agent CPU {startup_cpu_seconds:.2} s"
    ));
    // Let the last status writes settle before the idle window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    progress(format!("  sampling the idle agent for {window:?}"));
    let w0 = Instant::now();
    let t_start = cpu_ticks(pid)?;
    let mut rss = vec![rss_mib(pid)?];
    while w0.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss.push(rss_mib(pid)?);
    }
    let t_end = cpu_ticks(pid)?;
    let secs = w0.elapsed().as_secs_f64();
    let r = Resources {
        pods: n,
        startup_cpu_seconds,
        startup_seconds,
        idle_window_seconds: secs,
        idle_rss_mib: rss.iter().sum::<f64>() / rss.len() as f64,
        idle_rss_max_mib: rss.iter().copied().fold(0.0, f64::max),
        idle_cpu_percent: (t_end - t_start) as f64 / TICKS_PER_S / secs * 100.0,
        deleted_seconds: 0.0,
    };
    progress(format!(
        "  idle with {n} pods: RSS {:.1} MiB, CPU {:.2}% of a core",
        r.idle_rss_mib, r.idle_cpu_percent
    ));
    Ok(r)
}

async fn run(opts: &Options) -> Result<Results> {
    let started = meta::now_utc();
    progress("starting etcd, the API server, containerd and the agent");
    let c = cluster(&[]).await?;
    progress("node-0 Ready");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watch = spawn_watch(c.admin.clone(), seen.clone());
    let result = phases(&c, &seen, opts).await;
    if result.is_err() {
        // Leave nothing running behind the harness's cleanup.
        let (pods, _) = c
            .admin
            .list::<Pod>(NAMESPACE, &ListParams::default())
            .await
            .unwrap_or_default();
        let names: Vec<String> = pods.into_iter().map(|p| p.metadata.name).collect();
        if let Err(e) = delete_all(&c.admin, &c.agent, &names).await {
            progress(format!("cleanup: {e:#}"));
        }
    }
    watch.abort();
    let (to_running, to_running_burst, to_ready, resources) = result?;
    drop(c);
    let target_met = to_running.p99_ms < TARGET_P99_MS;
    Ok(Results {
        machine: machine(),
        quick: opts.quick,
        started,
        finished: meta::now_utc(),
        burst: BURST,
        paced_per_second: PACED_PER_SECOND,
        to_running,
        to_running_burst,
        to_ready,
        resources,
        target_p99_ms: TARGET_P99_MS,
        target_met,
    })
}

async fn phases(
    c: &Cluster,
    seen: &Mutex<Seen>,
    opts: &Options,
) -> Result<(Startup, Startup, Startup, Resources)> {
    let paced = Pace::Rate(PACED_PER_SECOND);
    let running = startup(c, seen, "sleep", opts.pods, false, paced).await?;
    let burst = startup(c, seen, "burst", opts.pods, false, Pace::Burst).await?;
    let ready = startup(c, seen, "web", opts.pods, true, paced).await?;
    let mut res = resources(c, seen, opts.pods * 2, opts.window).await?;
    progress("  deleting");
    let names: Vec<String> = (0..res.pods).map(|i| format!("many-{i}")).collect();
    res.deleted_seconds = delete_all(&c.admin, &c.agent, &names).await?;
    progress(format!("  all gone after {:.2} s", res.deleted_seconds));
    Ok((running, burst, ready, res))
}

fn verdict(r: &Results) -> &'static str {
    if r.target_met { "met" } else { "MISSED" }
}

/// The figures as a plain table.
pub fn summary(r: &Results) -> String {
    let s = |x: &Startup, what: &str| {
        format!(
            "{:<34} {:>5} {:>8.0} {:>8.0} {:>8.0} {:>7.2} {:>10.0}\n",
            what, x.pods, x.p50_ms, x.p99_ms, x.max_ms, x.all_seconds, x.machine_cpu_ms_per_pod
        )
    };
    let m = &r.resources;
    format!(
        "{:<34} {:>5} {:>8} {:>8} {:>8} {:>7} {:>10}\n{}{}{}\
         target: p99 to Running < {:.0} ms at {}/s ({}; Kubernetes' SLO is 5 s)\n\
         agent with {} pods: {:.2} CPU-s to start them ({:.2} s), idle {:.1} MiB RSS, {:.2}% of a core over {:.0} s",
        "startup (create →)",
        "pods",
        "p50 ms",
        "p99 ms",
        "max ms",
        "all s",
        "CPU ms/pod",
        s(
            &r.to_running,
            &format!("Running, {}/s (sleep)", r.paced_per_second)
        ),
        s(
            &r.to_running_burst,
            &format!("Running, burst of {} (sleep)", r.to_running_burst.pods)
        ),
        s(
            &r.to_ready,
            &format!("Ready, {}/s (httpd probe)", r.paced_per_second)
        ),
        r.target_p99_ms,
        r.paced_per_second,
        verdict(r),
        m.pods,
        m.startup_cpu_seconds,
        m.startup_seconds,
        m.idle_rss_mib,
        m.idle_cpu_percent,
        m.idle_window_seconds,
    )
}

fn report(r: &Results) -> String {
    let m = &r.resources;
    let row = |x: &Startup, what: &str| {
        format!(
            "| {what} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} ms, {:.0}% busy | {:.2} |\n",
            x.pods,
            x.p50_ms,
            x.p99_ms,
            x.max_ms,
            x.all_seconds,
            x.machine_cpu_ms_per_pod,
            x.machine_busy_percent,
            x.deleted_seconds
        )
    };
    format!(
        "# Pod startup on one node{}\n\n\
         {} ({} CPUs, {:.1} GiB), kernel {}, {}; run {} → {}.\n\n\
         One node: etcd, the API server, containerd and `skiff-agent node`, busybox image already \
         imported. Pods are bound to node-0 directly. Each latency is the pod's create call start \
         → the first watch event showing the pod Running (sleep pods) or Ready (httpd with an HTTP \
         readiness probe every second). Paced pods are created at {}/s, as ClusterLoader2 creates \
         the latency pods of Kubernetes' startup SLO; the burst creates them all as fast as the \
         API takes them ({} calls in flight), so its latencies are mostly the queue of pods \
         before each. Machine CPU per pod is every process's and the kernel's CPU time over the \
         phase, divided by its pods.\n\n\
         | to | pods | p50 ms | p99 ms | max ms | all in s | machine CPU per pod | deleted in s |\n\
         |---|---|---|---|---|---|---|---|\n{}{}{}\n\
         **Target: p99 to Running < {:.0} ms at {}/s — {}** (Kubernetes' pod startup SLO is 5 s).\n\n\
         ## The agent with {} pods\n\n\
         | | |\n|---|---|\n\
         | CPU time to start them | {:.2} s (all Running in {:.2} s) |\n\
         | RSS, idle (mean / max) | {:.1} / {:.1} MiB |\n\
         | CPU, idle | {:.2}% of one core over {:.0} s |\n\
         | deleted in | {:.2} s |\n",
        if r.quick { " (quick)" } else { "" },
        r.machine.cpu_model,
        r.machine.cpus,
        r.machine.memory_gib,
        r.machine.kernel,
        r.machine.etcd_version,
        r.started,
        r.finished,
        r.paced_per_second,
        r.burst,
        row(&r.to_running, &format!("Running, {}/s", r.paced_per_second)),
        row(&r.to_running_burst, "Running, burst"),
        row(&r.to_ready, &format!("Ready, {}/s", r.paced_per_second)),
        r.target_p99_ms,
        r.paced_per_second,
        verdict(r),
        m.pods,
        m.startup_cpu_seconds,
        m.startup_seconds,
        m.idle_rss_mib,
        m.idle_rss_max_mib,
        m.idle_cpu_percent,
        m.idle_window_seconds,
        m.deleted_seconds,
    )
}
