//! The phases: scheduling throughput (a backlog of pods created while the scheduler is down,
//! then pods created while it runs) and a large Deployment's time to Running. Each works in its
//! own namespace, watched by the benchmark to see when each pod is bound and Running.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use skiff_api::{
    Kind, Object, ObjectMeta,
    client::{Client, ListParams, WatchEvent},
    kinds::{
        Container, Deployment, DeploymentSpec, Namespace, Pod, PodSpec, PodTemplateSpec,
        ResourceRequirements,
    },
    quantity::Quantity,
    selector::LabelSelector,
};
use tokio::{
    sync::watch,
    task::{JoinHandle, JoinSet},
    time::Instant,
};
use tokio_stream::StreamExt;

use super::{
    CREATORS, DeploymentRun, POD_CPU, POD_MEMORY, PhaseCost, Scheduling, cluster::Cluster, progress,
};
use crate::{
    control::{Percentiles, phases::create_namespace},
    load::Latencies,
};

/// The label of every pod the benchmark makes.
const APP_LABEL: &str = "app";
/// Time allowed after the last pod is bound for every pod to be reported Running.
const RUNNING_BUDGET: Duration = Duration::from_secs(60);
/// How often a long wait looks at whether the control plane's processes are still alive.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Backlog,
    Streaming,
}

impl Mode {
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Backlog => "backlog",
            Mode::Streaming => "streaming",
        }
    }
}

pub(super) fn namespace(mode: Mode, nodes: usize) -> String {
    format!("sched-{}-{nodes}", mode.name())
}

pub(super) fn deployment_namespace(nodes: usize) -> String {
    format!("deploy-{nodes}")
}

/// Time allowed for `pods` pods to be bound: at least 20 a second.
fn bind_budget(pods: usize) -> Duration {
    Duration::from_secs(60 + pods as u64 / 20)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Watching a namespace

/// When the benchmark's watch first saw each pod, saw it bound, and saw it Running.
#[derive(Debug, Default)]
pub(super) struct Seen {
    added: HashMap<String, Instant>,
    bound: HashMap<String, (Instant, String)>,
    running: HashMap<String, Instant>,
    /// Why the watch broke, when it did.
    errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    added: usize,
    bound: usize,
    running: usize,
}

/// Watches every pod of one namespace from before the phase creates any.
struct Tracker {
    seen: Arc<Mutex<Seen>>,
    counts: watch::Receiver<Counts>,
    task: JoinHandle<()>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Breaks of the benchmark's watch it resumes from before giving up.
const WATCH_RESUMES: usize = 5;

impl Tracker {
    /// Starts watching the pods of `ns` labelled `app=<app>` (others, such as the probe pod
    /// that wakes the scheduler, are not counted).
    async fn start(client: &Client, ns: &str, app: &str) -> Result<Tracker> {
        let params = ListParams::labels(format!("{APP_LABEL}={app}"));
        let (pods, rev) = client
            .list::<Pod>(ns, &params)
            .await
            .context("listing the namespace's pods")?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, counts) = watch::channel(Counts::default());
        for p in pods {
            record(&seen, &tx, &p);
        }
        let (client, ns, seen2) = (client.clone(), ns.to_owned(), seen.clone());
        let params2 = params.clone();
        let task = tokio::spawn(async move {
            let mut rev = rev;
            let mut breaks = 0;
            while breaks <= WATCH_RESUMES {
                let mut stream = match client.watch(Pod::INFO, &ns, &params2, rev, true).await {
                    Ok(s) => s,
                    Err(e) => {
                        lock(&seen2).errors.push(format!("watching {ns}: {e}"));
                        breaks += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(ev) => {
                            rev = ev.resource_version();
                            if let WatchEvent::Added(Object::Pod(p))
                            | WatchEvent::Modified(Object::Pod(p)) = ev
                            {
                                record(&seen2, &tx, &p);
                            }
                        }
                        Err(e) => {
                            lock(&seen2).errors.push(format!("watching {ns}: {e}"));
                            break;
                        }
                    }
                }
                breaks += 1;
            }
        });
        Ok(Tracker { seen, counts, task })
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        lock(&self.seen)
    }

    /// Waits until `done` holds, checking every second that the control plane is alive; fails
    /// after `budget`.
    async fn wait(
        &self,
        cluster: &mut Cluster,
        budget: Duration,
        what: &str,
        done: impl Fn(Counts) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + budget;
        let mut counts = self.counts.clone();
        loop {
            let step = HEALTH_EVERY.min(deadline.saturating_duration_since(Instant::now()));
            if let Ok(r) = tokio::time::timeout(step, counts.wait_for(|c| done(*c))).await {
                r.context("the benchmark's watch ended")?;
                return Ok(());
            }
            cluster.check()?;
            if Instant::now() >= deadline {
                let c = *counts.borrow();
                let errors = self.seen().errors.join("; ");
                bail!(
                    "{what} did not happen within {} s: the watch saw {} pods, {} bound, {} \
                     Running{}",
                    budget.as_secs(),
                    c.added,
                    c.bound,
                    c.running,
                    if errors.is_empty() {
                        String::new()
                    } else {
                        format!(" (watch errors: {errors})")
                    }
                );
            }
        }
    }
}

fn record(seen: &Mutex<Seen>, counts: &watch::Sender<Counts>, p: &Pod) {
    let now = Instant::now();
    let name = &p.metadata.name;
    let mut s = lock(seen);
    s.added.entry(name.clone()).or_insert(now);
    if !p.spec.node_name.is_empty() {
        s.bound
            .entry(name.clone())
            .or_insert_with(|| (now, p.spec.node_name.clone()));
    }
    if p.status.phase == "Running" {
        s.running.entry(name.clone()).or_insert(now);
    }
    let c = Counts {
        added: s.added.len(),
        bound: s.bound.len(),
        running: s.running.len(),
    };
    drop(s);
    counts.send_if_modified(|old| {
        let changed = *old != c;
        *old = c;
        changed
    });
}

// ---------------------------------------------------------------------------------------------
// Objects

fn requests() -> ResourceRequirements {
    let q = |s: &str| Quantity::parse(s).ok();
    ResourceRequirements {
        requests: [("cpu", q(POD_CPU)), ("memory", q(POD_MEMORY))]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .collect(),
        limits: BTreeMap::new(),
    }
}

fn pod_spec() -> PodSpec {
    PodSpec {
        containers: vec![Container {
            name: "app".into(),
            image: "hollow:local".into(),
            resources: requests(),
            ..Container::default()
        }],
        ..PodSpec::default()
    }
}

fn bench_pod(ns: &str, name: &str, app: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            labels: [(APP_LABEL.to_owned(), app.to_owned())].into(),
            ..ObjectMeta::default()
        },
        spec: pod_spec(),
        ..Pod::default()
    }
}

fn deployment_object(ns: &str, replicas: usize) -> Deployment {
    let labels: BTreeMap<String, String> = [(APP_LABEL.to_owned(), "web".to_owned())].into();
    Deployment {
        metadata: ObjectMeta {
            name: "web".into(),
            namespace: ns.into(),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: labels.clone(),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: ObjectMeta {
                    labels,
                    ..ObjectMeta::default()
                },
                spec: pod_spec(),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

fn pod_name(i: usize) -> String {
    format!("p-{i:06}")
}

/// Deletes a namespace and waits until it is gone; how long that took.
pub(super) async fn delete_namespace(client: &Client, name: &str) -> Result<Duration> {
    let clock = Instant::now();
    match client
        .delete(Namespace::INFO, "", name, Default::default())
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Ok(clock.elapsed()),
        Err(e) => return Err(e).with_context(|| format!("deleting namespace {name}")),
    }
    let deadline = clock + Duration::from_secs(600);
    loop {
        match client.get::<Namespace>("", name).await {
            Err(e) if e.is_not_found() => return Ok(clock.elapsed()),
            Err(e) => return Err(e).context("reading the namespace"),
            Ok(_) if Instant::now() > deadline => {
                bail!("namespace {name} still exists 600 s after its deletion")
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Creates pods `p-000000`.. with [`CREATORS`] concurrent creators over the connections;
/// returns when each create was sent.
async fn create_pods(
    clients: &[Client],
    ns: &str,
    n: usize,
    app: &str,
) -> Result<HashMap<String, Instant>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for c in 0..CREATORS.min(n) {
        let (client, next) = (clients[c % clients.len()].clone(), next.clone());
        let (ns, app) = (ns.to_owned(), app.to_owned());
        tasks.spawn(async move {
            let mut sent = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(sent);
                }
                let name = pod_name(i);
                let at = Instant::now();
                client
                    .create(&bench_pod(&ns, &name, &app))
                    .await
                    .with_context(|| format!("creating pod {ns}/{name}"))?;
                sent.push((name, at));
            }
        });
    }
    let mut all = HashMap::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.context("a pod creator panicked")??);
    }
    Ok(all)
}

/// Makes sure the scheduler runs and has its caches filled: a probe pod is bound.
async fn warm_scheduler(cluster: &mut Cluster, client: &Client, ns: &str) -> Result<()> {
    if !cluster.scheduler.running() {
        cluster.scheduler.start()?;
    }
    let probe = "probe";
    client
        .create(&bench_pod(ns, probe, "probe"))
        .await
        .context("creating the probe pod")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = client.get::<Pod>(ns, probe).await?;
        if !p.spec.node_name.is_empty() {
            break;
        }
        cluster.check()?;
        if Instant::now() > deadline {
            bail!("the scheduler did not bind a probe pod within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .delete(Pod::INFO, ns, probe, Default::default())
        .await
        .context("deleting the probe pod")?;
    Ok(())
}

/// The `k`th earliest of some instants, as seconds after `origin` (`k` counts from 1).
fn kth_after(mut times: Vec<Instant>, k: usize, origin: Instant) -> Option<f64> {
    if k == 0 || times.len() < k {
        return None;
    }
    times.sort_unstable();
    Some(times[k - 1].saturating_duration_since(origin).as_secs_f64())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Scheduling throughput

/// What the watch saw of one scheduling measurement, as figures.
struct BindFigures {
    first: Option<f64>,
    last: Option<f64>,
    window_rate: Option<f64>,
    overall_rate: Option<f64>,
    latency: Option<Percentiles>,
    nodes_used: usize,
    max_per_node: usize,
    problems: Vec<String>,
}

/// Figures of the binds of `pods` (name -> when the latency counts from), measured from
/// `origin`.
fn bind_figures(
    seen: &Seen,
    pods: &HashMap<String, Instant>,
    origin: Instant,
    nodes: &HashSet<String>,
) -> BindFigures {
    let mut times = Vec::with_capacity(pods.len());
    let mut latencies = Latencies::default();
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    let mut strangers = BTreeMap::new();
    for (name, from) in pods {
        let Some((at, node)) = seen.bound.get(name) else {
            continue;
        };
        times.push(*at);
        latencies
            .ns
            .push(nanos(at.saturating_duration_since(*from)));
        *per_node.entry(node.as_str()).or_default() += 1;
        if !nodes.contains(node) {
            *strangers.entry(node.clone()).or_insert(0) += 1;
        }
    }
    let mut problems = Vec::new();
    if times.len() < pods.len() {
        problems.push(format!(
            "{} of {} pods were not bound",
            pods.len() - times.len(),
            pods.len()
        ));
    }
    if let Some((node, n)) = strangers.iter().next() {
        problems.push(format!(
            "pods were bound to {} nodes that are not hollow nodes of this run ({n} to {node})",
            strangers.len()
        ));
    }
    let max_per_node = per_node.values().copied().max().unwrap_or(0);
    if max_per_node > crate::hollow::DEFAULT_MAX_PODS as usize {
        problems.push(format!(
            "a node got {max_per_node} pods, more than its capacity of {}",
            crate::hollow::DEFAULT_MAX_PODS
        ));
    }
    let first = kth_after(times.clone(), 1, origin);
    let last = kth_after(times.clone(), times.len(), origin);
    let window_rate = first
        .zip(last)
        .filter(|(f, l)| l > f && times.len() > 1)
        .map(|(f, l)| (times.len() - 1) as f64 / (l - f));
    let overall_rate = last.filter(|l| *l > 0.0).map(|l| times.len() as f64 / l);
    let latency = (!latencies.ns.is_empty()).then(|| Percentiles::of(&mut latencies));
    BindFigures {
        first,
        last,
        window_rate,
        overall_rate,
        latency,
        nodes_used: per_node.len(),
        max_per_node,
        problems,
    }
}

/// One scheduling measurement at `nodes` nodes; leaves its namespace for the caller to delete.
pub(super) async fn scheduling(
    cluster: &mut Cluster,
    clients: &[Client],
    node_names: &HashSet<String>,
    nodes: usize,
    pods: usize,
    mode: Mode,
    costs: &mut Vec<PhaseCost>,
) -> Result<Scheduling> {
    let ns = namespace(mode, nodes);
    let label = format!("{} ({nodes} nodes)", mode.name());
    let client = &clients[0];
    create_namespace(client, &ns).await?;
    match mode {
        Mode::Backlog => cluster.scheduler.stop(),
        Mode::Streaming => warm_scheduler(cluster, client, &ns).await?,
    }
    let tracker = Tracker::start(client, &ns, "sched").await?;
    progress(format!(
        "{label}: creating {pods} pods{}",
        if mode == Mode::Backlog {
            " with the scheduler stopped"
        } else {
            " while the scheduler runs"
        }
    ));
    let before = cluster.cpu();
    let create_clock = Instant::now();
    let sent = create_pods(clients, &ns, pods, "sched").await?;
    let create_s = create_clock.elapsed().as_secs_f64();
    progress(format!(
        "{label}: created {pods} pods in {create_s:.1} s ({:.0}/s)",
        pods as f64 / create_s
    ));
    let (origin, latency_from) = match mode {
        Mode::Backlog => {
            costs.push(PhaseCost::between(
                format!("create {pods} pods, scheduler stopped ({nodes} nodes)"),
                &before,
                &cluster.cpu(),
            ));
            let origin = Instant::now();
            cluster.scheduler.start()?;
            progress(format!("{label}: scheduler started"));
            let from: HashMap<String, Instant> = sent.keys().map(|k| (k.clone(), origin)).collect();
            (origin, from)
        }
        Mode::Streaming => (create_clock, sent),
    };
    let before = if mode == Mode::Backlog {
        cluster.cpu()
    } else {
        before
    };
    let wanted: HashSet<&String> = latency_from.keys().collect();
    let bound = |c: Counts| c.bound >= pods;
    tracker
        .wait(
            cluster,
            bind_budget(pods),
            &format!("binding {pods} pods"),
            bound,
        )
        .await?;
    costs.push(PhaseCost::between(
        format!("schedule {pods} pods, {label}"),
        &before,
        &cluster.cpu(),
    ));
    let figures = bind_figures(&tracker.seen(), &latency_from, origin, node_names);
    progress(format!(
        "{label}: {pods} pods bound; {:.0} pods/s from the first bind to the last, {:.0} pods/s \
         overall",
        figures.window_rate.unwrap_or(f64::NAN),
        figures.overall_rate.unwrap_or(f64::NAN)
    ));
    let mut problems = figures.problems;
    let all_running = tracker
        .wait(
            cluster,
            RUNNING_BUDGET,
            &format!("{pods} pods Running"),
            |c| c.running >= pods,
        )
        .await;
    let all_running_s = match all_running {
        Ok(()) => {
            let seen = tracker.seen();
            let times: Vec<Instant> = seen
                .running
                .iter()
                .filter(|(k, _)| wanted.contains(k))
                .map(|(_, t)| *t)
                .collect();
            kth_after(times, pods, origin)
        }
        Err(e) => {
            problems.push(format!("{e:#}"));
            None
        }
    };
    Ok(Scheduling {
        nodes,
        mode: mode.name(),
        pods,
        create_s,
        create_per_s: pods as f64 / create_s,
        bound: tracker.seen().bound.len().min(pods),
        origin: match mode {
            Mode::Backlog => "the scheduler's start",
            Mode::Streaming => "the first create",
        },
        first_bind_s: figures.first,
        last_bind_s: figures.last,
        window_pods_per_s: figures.window_rate,
        overall_pods_per_s: figures.overall_rate,
        latency: figures.latency,
        all_running_s,
        nodes_used: figures.nodes_used,
        max_pods_per_node: figures.max_per_node,
        cleanup_s: None,
        problems,
    })
}

// ---------------------------------------------------------------------------------------------
// A large Deployment

/// Creates a Deployment of `replicas` pods and times it until every pod is Running and the
/// Deployment counts them available; leaves its namespace for the caller to delete.
pub(super) async fn deployment(
    cluster: &mut Cluster,
    clients: &[Client],
    node_names: &HashSet<String>,
    nodes: usize,
    replicas: usize,
    costs: &mut Vec<PhaseCost>,
) -> Result<DeploymentRun> {
    let ns = deployment_namespace(nodes);
    let client = &clients[0];
    create_namespace(client, &ns).await?;
    warm_scheduler(cluster, client, &ns).await?;
    let tracker = Tracker::start(client, &ns, "web").await?;
    progress(format!(
        "deployment ({nodes} nodes): creating a {replicas}-replica Deployment"
    ));
    let before = cluster.cpu();
    let origin = Instant::now();
    client
        .create(&deployment_object(&ns, replicas))
        .await
        .context("creating the Deployment")?;
    let mut problems = Vec::new();
    let running = tracker
        .wait(
            cluster,
            Duration::from_secs(120) + bind_budget(replicas),
            &format!("{replicas} pods Running"),
            |c| c.running >= replicas,
        )
        .await;
    if let Err(e) = running {
        problems.push(format!("{e:#}"));
    }
    let (created, bound, all_running) = {
        let seen = tracker.seen();
        let created = kth_after(seen.added.values().copied().collect(), replicas, origin);
        let bound = kth_after(seen.bound.values().map(|b| b.0).collect(), replicas, origin);
        let all_running = kth_after(seen.running.values().copied().collect(), replicas, origin);
        let strangers = seen
            .bound
            .values()
            .filter(|(_, n)| !node_names.contains(n))
            .count();
        if strangers > 0 {
            problems.push(format!(
                "{strangers} pods were bound to nodes that are not hollow nodes of this run"
            ));
        }
        (created, bound, all_running)
    };
    progress(format!(
        "deployment ({nodes} nodes): all pods created after {}, bound after {}, Running after {}",
        secs(created),
        secs(bound),
        secs(all_running)
    ));
    let available_s = if problems.is_empty() {
        match wait_available(cluster, client, &ns, replicas, origin).await {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(format!("{e:#}"));
                None
            }
        }
    } else {
        None
    };
    costs.push(PhaseCost::between(
        format!("{replicas}-replica Deployment ({nodes} nodes)"),
        &before,
        &cluster.cpu(),
    ));
    progress(format!(
        "deployment ({nodes} nodes): the Deployment counted every replica available after {}",
        secs(available_s)
    ));
    Ok(DeploymentRun {
        nodes,
        replicas,
        all_created_s: created,
        all_bound_s: bound,
        all_running_s: all_running,
        available_s,
        cleanup_s: None,
        problems,
    })
}

fn secs(s: Option<f64>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{s:.2} s"))
}

/// Polls the Deployment until its status counts `replicas` available; seconds from `origin`.
async fn wait_available(
    cluster: &mut Cluster,
    client: &Client,
    ns: &str,
    replicas: usize,
    origin: Instant,
) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = client
            .get::<Deployment>(ns, "web")
            .await
            .context("reading the Deployment")?;
        if usize::try_from(d.status.available_replicas).is_ok_and(|a| a >= replicas) {
            return Ok(origin.elapsed().as_secs_f64());
        }
        cluster.check()?;
        if Instant::now() > deadline {
            bail!(
                "the Deployment counted {} of {replicas} replicas available 60 s after its pods \
                 were Running",
                d.status.available_replicas
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_figures_count_rates_latencies_spread_and_strangers() {
        let origin = Instant::now();
        let at = |ms: u64| origin + Duration::from_millis(ms);
        let mut seen = Seen::default();
        let mut from = HashMap::new();
        for (i, (ms, node)) in [(100, "a"), (200, "b"), (300, "a"), (1100, "x")]
            .into_iter()
            .enumerate()
        {
            let name = pod_name(i);
            seen.bound.insert(name.clone(), (at(ms), node.to_owned()));
            from.insert(name, at(0));
        }
        from.insert(pod_name(9), at(0));
        let nodes: HashSet<String> = ["a", "b"].map(String::from).into();
        let f = bind_figures(&seen, &from, origin, &nodes);
        assert_eq!(f.first, Some(0.1));
        assert_eq!(f.last, Some(1.1));
        // Three binds after the first, in one second.
        assert!((f.window_rate.unwrap() - 3.0).abs() < 1e-9);
        assert!((f.overall_rate.unwrap() - 4.0 / 1.1).abs() < 1e-9);
        let l = f.latency.unwrap();
        assert_eq!(l.samples, 4);
        assert!((l.p50_ms - 200.0).abs() < 1e-6);
        assert!((l.max_ms - 1100.0).abs() < 1e-6);
        assert_eq!((f.nodes_used, f.max_per_node), (3, 2));
        assert_eq!(f.problems.len(), 2, "{:?}", f.problems);
        assert!(f.problems[0].starts_with("1 of 5 pods were not bound"));
        assert!(f.problems[1].contains("(1 to x)"));
    }

    #[test]
    fn the_kth_earliest_time_counts_from_one() {
        let origin = Instant::now();
        let t = vec![
            origin + Duration::from_secs(3),
            origin + Duration::from_secs(1),
            origin + Duration::from_secs(2),
        ];
        assert_eq!(kth_after(t.clone(), 1, origin), Some(1.0));
        assert_eq!(kth_after(t.clone(), 3, origin), Some(3.0));
        assert_eq!(kth_after(t.clone(), 4, origin), None);
        assert_eq!(kth_after(t, 0, origin), None);
    }

    #[test]
    fn benchmark_pods_fit_and_the_deployment_selects_its_template() {
        let p = bench_pod("ns", &pod_name(7), "sched");
        assert_eq!(p.metadata.name, "p-000007");
        let r = &p.spec.containers[0].resources.requests;
        assert_eq!(r["cpu"].milli_value(), 10);
        assert_eq!(r["memory"].value(), 16 << 20);
        let d = deployment_object("ns", 1000);
        assert_eq!(d.spec.replicas, Some(1000));
        assert_eq!(
            d.spec.selector.match_labels,
            d.spec.template.metadata.labels
        );
        // As the API server takes them: defaults first.
        for mut o in [Object::Deployment(d), Object::Pod(p)] {
            o.apply_defaults();
            assert_eq!(o.validate(), Vec::new());
        }
    }
}
