//! The phases: a steady open-loop rate, closed-loop saturation, lists of many pods, and watch
//! fan-out. Each works in its own namespace and returns its figures with what went wrong.

use std::{
    collections::{HashMap, HashSet},
    fmt::Display,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use skiff_api::{
    Kind, ObjectMeta,
    client::{self, Client, ClientError, ListParams, WatchEvent},
    kinds::{Namespace, Pod},
    object::to_json,
};
use skiff_testbed::control::ApiServer;
use tokio::{sync::watch as signal, task::JoinSet, time::sleep_until};
use tokio_stream::{Stream, StreamExt};

use super::{
    LIST_CREATORS, LIST_RUNS, List, ListFigures, Options, Percentiles, STEADY_GETS_PER_S,
    STEADY_WRITES_PER_S, Saturation, SaturationLevel, SlowCall, Steady, VerbFigures,
    WATCH_UPDATES_PER_S, Watch, progress,
};
use crate::load::Latencies;

/// The identity every client uses.
const USER: &str = "admin";
/// Pods are spread round-robin over this many node names (`spec.nodeName`).
const NODES: usize = 10;
/// ... and over this many values of the `shard` label.
const SHARDS: usize = 10;
const SELECTED_NODE: &str = "node-3";
const SELECTED_SHARD: &str = "s3";
/// The annotation updates set, each to a value the pod has not had (an update that changes
/// nothing is answered without a write).
const SEQ_ANNOTATION: &str = "bench.skiff.dev/seq";
/// Pods the steady phase updates and reads (each is updated every two seconds at most, far
/// longer than an update takes, so conflicts are rare but possible and counted).
const STEADY_POOL: usize = 200;
/// Slowest calls of the steady phase the report lists.
const SLOWEST: usize = 5;
/// Connections the steady phase spreads its requests over.
const STEADY_CONNECTIONS: usize = 4;
/// Pods the watch phase updates.
const WATCH_POOL: usize = 50;
const WATCHERS_PER_CONNECTION: usize = 10;
const MIN_WATCH_CONNECTIONS: usize = 4;
/// How long watchers may take to see the last update before the missing events count as lost.
const WATCH_DRAIN: Duration = Duration::from_secs(15);
/// How long watchers keep listening once they have every event, to catch duplicates.
const WATCH_LINGER: Duration = Duration::from_millis(300);
/// Lost compare-and-swaps an update retries before it counts as an error.
const MAX_CONFLICT_RETRIES: usize = 5;

const LIST_NS: &str = "bench-list";
const STEADY_NS: &str = "bench-steady";
const SATURATION_NS: &str = "bench-saturation";
const WATCH_NS: &str = "bench-watch";

// ---------------------------------------------------------------------------------------------
// Recording

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Create,
    Update,
    Get,
}

impl Verb {
    const ALL: [Verb; 3] = [Verb::Create, Verb::Update, Verb::Get];

    fn name(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Get => "get",
        }
    }
}

/// The calls of one verb: latencies of those that succeeded, and the failures.
#[derive(Debug, Default)]
struct Log {
    latencies: Latencies,
    errors: usize,
    conflicts: usize,
    first_error: Option<String>,
}

impl Log {
    fn ok(&mut self, took: Duration) {
        self.latencies.ns.push(nanos(took));
    }

    fn error(&mut self, e: impl Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }

    fn merge(&mut self, other: Log) {
        self.latencies.ns.extend(other.latencies.ns);
        self.errors += other.errors;
        self.conflicts += other.conflicts;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Fails unless every call succeeded (for the setup of a phase).
    fn check(&self, what: &str) -> Result<()> {
        if self.errors > 0 {
            bail!(
                "{what}: {} calls failed (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        Ok(())
    }

    fn figures(mut self, verb: Verb, elapsed: Duration) -> VerbFigures {
        let ok = self.latencies.ns.len();
        VerbFigures {
            verb: verb.name(),
            ok,
            errors: self.errors,
            conflicts: self.conflicts,
            per_second: ok as f64 / elapsed.as_secs_f64(),
            latency: Percentiles::of(&mut self.latencies),
            first_error: self.first_error,
        }
    }
}

/// One [`Log`] per verb.
#[derive(Debug, Default)]
struct Logs([Log; 3]);

impl Logs {
    fn of(&mut self, verb: Verb) -> &mut Log {
        &mut self.0[verb as usize]
    }

    fn merge(&mut self, other: Logs) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            mine.merge(theirs);
        }
    }

    fn figures(self, elapsed: Duration) -> Vec<VerbFigures> {
        Verb::ALL
            .into_iter()
            .zip(self.0)
            .map(|(verb, log)| log.figures(verb, elapsed))
            .collect()
    }
}

/// A problem line for every verb that had failed calls.
fn errors_of(verbs: &[VerbFigures], context: &str) -> Vec<String> {
    verbs
        .iter()
        .filter(|v| v.errors > 0)
        .map(|v| {
            format!(
                "{context}{} of {} {} calls failed (first: {})",
                v.errors,
                v.errors + v.ok,
                v.verb,
                v.first_error.as_deref().unwrap_or("?")
            )
        })
        .collect()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `create 100/s p50 1.2 ms p99 3.4 ms` for a progress line.
fn brief(v: &VerbFigures) -> String {
    format!(
        "{} {:.0}/s p50 {:.1} ms p99 {:.1} ms",
        v.verb, v.per_second, v.latency.p50_ms, v.latency.p99_ms
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Pods and clients

/// Pods as a workload controller writes them: one container with an image, two ports,
/// environment, requests and limits and a readiness probe, and the labels a Deployment puts on
/// its pods; about 1 KiB of JSON once the server has added its defaults and metadata.
#[derive(Debug)]
struct PodTemplate(Pod);

impl PodTemplate {
    fn new() -> Result<PodTemplate> {
        let pod = serde_json::from_value(json!({
            "metadata": {
                "labels": {
                    "app.kubernetes.io/part-of": "payments",
                    "pod-template-hash": "7c9f8d6b5f",
                    "tier": "backend",
                },
                "annotations": {
                    "bench.skiff.dev/owner": "team-payments@example.com",
                },
            },
            "spec": {
                "containers": [{
                    "name": "app",
                    "image": "registry.example.com/payments/api:1.27.3",
                    "args": ["--listen=:8080", "--metrics=:9090", "--log-format=json"],
                    "ports": [
                        {"name": "http", "containerPort": 8080},
                        {"name": "metrics", "containerPort": 9090},
                    ],
                    "env": [
                        {"name": "LOG_LEVEL", "value": "info"},
                        {"name": "REGION", "value": "eu-west-1"},
                    ],
                    "resources": {
                        "requests": {"cpu": "250m", "memory": "256Mi"},
                        "limits": {"cpu": "1", "memory": "512Mi"},
                    },
                    "readinessProbe": {
                        "httpGet": {"path": "/healthz", "port": 8080},
                        "periodSeconds": 5,
                    },
                }],
            },
        }))
        .context("the benchmark's pod template does not fit the Pod type")?;
        Ok(PodTemplate(pod))
    }

    /// Pod number `i`: on node [`node_of`]`(i)`, label `shard=`[`shard_of`]`(i)`.
    fn pod(&self, namespace: &str, name: String, i: usize) -> Pod {
        let mut pod = self.0.clone();
        let meta = &mut pod.metadata;
        meta.name = name;
        meta.namespace = namespace.to_owned();
        meta.labels.insert("app".into(), format!("api-{}", i % 50));
        meta.labels.insert("shard".into(), shard_of(i));
        pod.spec.node_name = node_of(i);
        pod
    }
}

fn node_of(i: usize) -> String {
    format!("node-{}", i % NODES)
}

/// Independent of the node: pods 0-9 are shard 0, 10-19 shard 1, and so on.
fn shard_of(i: usize) -> String {
    format!("s{}", i / NODES % SHARDS)
}

/// `n` clients, each with its own connection.
async fn connect(api: &ApiServer, n: usize) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(api.client(USER).await?);
    }
    Ok(clients)
}

/// Creates an empty namespace (the scale benchmark's phases use it too).
pub(crate) async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: name.into(),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    client
        .create(&ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// Creates pods `<prefix>-<i>` for `i` in `0..count` as fast as `clients` allow (one task per
/// client, each sending its next create when the last is answered). Returns the creates' log,
/// the pods as stored (sorted by name) and the time it took.
async fn create_pods(
    clients: &[Client],
    template: &Arc<PodTemplate>,
    namespace: &str,
    prefix: &str,
    count: usize,
) -> Result<(Log, Vec<Pod>, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let clock = Instant::now();
    let mut tasks = JoinSet::new();
    for client in clients {
        let (client, next, template) = (client.clone(), next.clone(), template.clone());
        let (namespace, prefix) = (namespace.to_owned(), prefix.to_owned());
        tasks.spawn(async move {
            let (mut log, mut pods) = (Log::default(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let pod = template.pod(&namespace, format!("{prefix}-{i:06}"), i);
                let start = Instant::now();
                match client.create(&pod).await {
                    Ok(stored) => {
                        log.ok(start.elapsed());
                        pods.push(stored);
                    }
                    Err(e) => log.error(e),
                }
            }
            (log, pods)
        });
    }
    let (mut log, mut pods) = (Log::default(), Vec::with_capacity(count));
    while let Some(done) = tasks.join_next().await {
        let (l, p) = done.context("a task creating pods panicked")?;
        log.merge(l);
        pods.extend(p);
    }
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok((log, pods, clock.elapsed()))
}

/// Read-modify-write of one annotation on the pod last written to `slot`, a compare-and-swap
/// on its resourceVersion. A lost race reads the pod again and retries. Returns the conflicts
/// met and the revision written.
async fn update_annotation(
    client: &Client,
    slot: &Mutex<Pod>,
    seq: u64,
) -> (usize, Result<i64, ClientError>) {
    let mut pod = lock(slot).clone();
    let mut conflicts = 0;
    loop {
        pod.metadata
            .annotations
            .insert(SEQ_ANNOTATION.into(), seq.to_string());
        match client.update(&pod).await {
            Ok(stored) => {
                let revision = stored.metadata.revision();
                let mut last = lock(slot);
                if revision > last.metadata.revision() {
                    *last = stored;
                }
                return (conflicts, Ok(revision));
            }
            Err(e) if e.is_conflict() && conflicts < MAX_CONFLICT_RETRIES => {
                conflicts += 1;
                match client
                    .get::<Pod>(&pod.metadata.namespace, &pod.metadata.name)
                    .await
                {
                    Ok(fresh) => pod = fresh,
                    Err(e) => return (conflicts, Err(e)),
                }
            }
            Err(e) => return (conflicts, Err(e)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// List

/// Creates `opts.pods` pods with [`LIST_CREATORS`] clients, then lists all of them, those of one
/// shard (label selector) and those of one node (field selector), [`LIST_RUNS`] times each.
pub(super) async fn list(api: &ApiServer, opts: &Options) -> Result<List> {
    let template = Arc::new(PodTemplate::new()?);
    let clients = connect(api, LIST_CREATORS).await?;
    create_namespace(&clients[0], LIST_NS).await?;
    progress(format!(
        "list: creating {} pods with {LIST_CREATORS} clients",
        opts.pods
    ));
    let (log, pods, took) = create_pods(&clients, &template, LIST_NS, "pod", opts.pods).await?;
    let pod_json_bytes = pods.first().map_or(0, |p| to_json(p).len());
    drop(pods);
    let create = log.figures(Verb::Create, took);
    progress(format!(
        "list: created {} pods in {:.1} s: {}; {pod_json_bytes} bytes of JSON each",
        create.ok,
        took.as_secs_f64(),
        brief(&create)
    ));
    let mut problems = errors_of(std::slice::from_ref(&create), "creating the pods: ");

    let expect = |keep: &dyn Fn(usize) -> bool| (0..opts.pods).filter(|&i| keep(i)).count();
    let queries = [
        ("all", ListParams::default(), opts.pods),
        (
            "label",
            ListParams::labels(format!("shard={SELECTED_SHARD}")),
            expect(&|i| shard_of(i) == SELECTED_SHARD),
        ),
        (
            "field",
            ListParams::fields(format!("spec.nodeName={SELECTED_NODE}")),
            expect(&|i| node_of(i) == SELECTED_NODE),
        ),
    ];
    let mut lists = Vec::new();
    for (what, params, expected_items) in queries {
        let mut latencies = Latencies::default();
        let (mut items, mut bytes) = (0, 0);
        for run in 0..LIST_RUNS {
            let start = Instant::now();
            let (pods, _) = clients[0]
                .list::<Pod>("", &params)
                .await
                .with_context(|| format!("listing pods ({what})"))?;
            latencies.ns.push(nanos(start.elapsed()));
            if run == 0 {
                items = pods.len();
                bytes = pods.iter().map(|p| to_json(p).len()).sum();
            } else if pods.len() != items {
                problems.push(format!(
                    "the {what} list returned {items} pods, then {}",
                    pods.len()
                ));
            }
        }
        if items != expected_items {
            problems.push(format!(
                "the {what} list returned {items} pods where {expected_items} match"
            ));
        }
        let figures = ListFigures {
            what,
            label_selector: params.label_selector.clone(),
            field_selector: params.field_selector.clone(),
            runs: LIST_RUNS,
            items,
            expected_items,
            bytes,
            p50_ms: latencies.percentile_us(50.0) / 1000.0,
            max_ms: latencies.percentile_us(100.0) / 1000.0,
        };
        progress(format!(
            "list: {what} ({}): {items} pods, {:.1} MiB, p50 {:.1} ms, max {:.1} ms",
            selector_text(&figures),
            bytes as f64 / (1 << 20) as f64,
            figures.p50_ms,
            figures.max_ms
        ));
        lists.push(figures);
    }
    Ok(List {
        pods: opts.pods,
        pod_json_bytes,
        create,
        create_seconds: took.as_secs_f64(),
        lists,
        problems,
    })
}

pub(super) const NO_SELECTOR: &str = "none";

/// `shard=s3`, `spec.nodeName=node-3` or [`NO_SELECTOR`].
pub(super) fn selector_text(l: &ListFigures) -> String {
    match (l.label_selector.as_str(), l.field_selector.as_str()) {
        ("", "") => NO_SELECTOR.into(),
        (labels, "") => labels.into(),
        ("", fields) => fields.into(),
        (labels, fields) => format!("{labels} {fields}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Steady rate

/// The outcome of one call of the steady phase.
struct Call {
    verb: Verb,
    /// Scheduled start.
    at: Instant,
    /// From the call's scheduled start, not from when it was sent.
    took: Duration,
    conflicts: usize,
    result: Result<(), ClientError>,
}

/// Open loop: [`STEADY_WRITES_PER_S`] writes (creates of new pods and updates of existing ones,
/// alternating) and [`STEADY_GETS_PER_S`] gets, each call started on its own task at its
/// scheduled time and timed from that time, so a slow call delays no other and a stall is
/// charged to every call it held up (no coordinated omission).
pub(super) async fn steady(api: &ApiServer, opts: &Options) -> Result<Steady> {
    let template = Arc::new(PodTemplate::new()?);
    let clients = connect(api, STEADY_CONNECTIONS).await?;
    create_namespace(&clients[0], STEADY_NS).await?;
    let (log, pool, _) = create_pods(&clients, &template, STEADY_NS, "pool", STEADY_POOL).await?;
    log.check("creating the pods to update")?;
    let pool: Arc<Vec<Mutex<Pod>>> = Arc::new(pool.into_iter().map(Mutex::new).collect());
    progress(format!(
        "steady: {STEADY_WRITES_PER_S} writes/s (creates and updates alternating) and \
         {STEADY_GETS_PER_S} gets/s for {} s on {STEADY_CONNECTIONS} connections",
        opts.seconds
    ));

    // Four slots per period: create, get, update, get.
    let per_s = u64::from(STEADY_WRITES_PER_S + STEADY_GETS_PER_S);
    let total = opts.seconds * per_s;
    let start = Instant::now() + Duration::from_millis(50);
    let mut lags = Latencies::default();
    let mut tasks = JoinSet::new();
    for i in 0..total {
        let at = start + Duration::from_nanos(i * 1_000_000_000 / per_s);
        sleep_until(at.into()).await;
        lags.ns.push(nanos(at.elapsed()));
        let client = clients[i as usize % clients.len()].clone();
        let (verb, n) = match i % 4 {
            0 => (Verb::Create, i / 4),
            2 => (Verb::Update, i / 4),
            _ => (Verb::Get, i / 2),
        };
        let (pool, template) = (pool.clone(), template.clone());
        tasks.spawn(async move {
            let slot = &pool[n as usize % pool.len()];
            let (conflicts, result) = match verb {
                Verb::Create => {
                    let pod = template.pod(STEADY_NS, format!("steady-{n:06}"), n as usize);
                    (0, client.create(&pod).await.map(drop))
                }
                Verb::Update => {
                    let (conflicts, result) = update_annotation(&client, slot, n).await;
                    (conflicts, result.map(drop))
                }
                Verb::Get => {
                    let name = lock(slot).metadata.name.clone();
                    (0, client.get::<Pod>(STEADY_NS, &name).await.map(drop))
                }
            };
            Call {
                verb,
                at,
                took: at.elapsed(),
                conflicts,
                result,
            }
        });
    }
    let mut logs = Logs::default();
    let mut slowest = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let call = done.context("a steady-rate call panicked")?;
        slowest.push(SlowCall {
            verb: call.verb.name(),
            at_s: (call.at - start).as_secs_f64(),
            ms: call.took.as_secs_f64() * 1000.0,
        });
        let log = logs.of(call.verb);
        log.conflicts += call.conflicts;
        match call.result {
            Ok(()) => log.ok(call.took),
            Err(e) => log.error(e),
        }
    }
    let elapsed = start.elapsed();
    slowest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    slowest.truncate(SLOWEST);
    let verbs = logs.figures(elapsed);
    let rate = |keep: &dyn Fn(&str) -> bool| {
        verbs
            .iter()
            .filter(|v| keep(v.verb))
            .map(|v| v.per_second)
            .sum::<f64>()
    };
    let figures = Steady {
        seconds: elapsed.as_secs_f64(),
        writes_per_s: rate(&|v| v != "get"),
        gets_per_s: rate(&|v| v == "get"),
        issue_lag: Percentiles::of(&mut lags),
        slowest,
        problems: errors_of(&verbs, ""),
        verbs,
    };
    progress(format!(
        "steady: {:.0} writes/s, {:.0} gets/s; {}; conflicts {}; issued p50 {:.2} ms after \
         the scheduled start",
        figures.writes_per_s,
        figures.gets_per_s,
        figures
            .verbs
            .iter()
            .map(brief)
            .collect::<Vec<_>>()
            .join("; "),
        figures.verbs.iter().map(|v| v.conflicts).sum::<usize>(),
        figures.issue_lag.p50_ms
    ));
    Ok(figures)
}

// ---------------------------------------------------------------------------------------------
// Saturation

/// Closed loop at each number of clients: every client (its own connection) creates a pod,
/// updates it and gets it, over and over, for a third of the steady phase's length.
pub(super) async fn saturation(api: &ApiServer, opts: &Options) -> Result<Saturation> {
    let template = Arc::new(PodTemplate::new()?);
    create_namespace(&api.client(USER).await?, SATURATION_NS).await?;
    let (mut levels, mut problems) = (Vec::new(), Vec::new());
    for &n in &opts.saturation_clients {
        let clients = connect(api, n).await?;
        progress(format!(
            "saturation: {n} clients, each creating, updating and getting pods in a loop for \
             {:.1} s",
            opts.saturation_level().as_secs_f64()
        ));
        let start = Instant::now();
        let deadline = start + opts.saturation_level();
        let mut tasks = JoinSet::new();
        for (w, client) in clients.into_iter().enumerate() {
            let template = template.clone();
            tasks.spawn(async move { closed_loop(&client, &template, n, w, deadline).await });
        }
        let mut logs = Logs::default();
        while let Some(done) = tasks.join_next().await {
            logs.merge(done.context("a saturation client panicked")?);
        }
        let elapsed = start.elapsed();
        let verbs = logs.figures(elapsed);
        problems.extend(errors_of(&verbs, &format!("{n} clients: ")));
        let level = SaturationLevel {
            clients: n,
            seconds: elapsed.as_secs_f64(),
            calls_per_s: verbs.iter().map(|v| v.per_second).sum(),
            verbs,
        };
        progress(format!(
            "saturation: {n} clients: {:.0} calls/s; {}",
            level.calls_per_s,
            level.verbs.iter().map(brief).collect::<Vec<_>>().join("; ")
        ));
        levels.push(level);
    }
    Ok(Saturation { levels, problems })
}

/// One client of a saturation level: create, update, get until `deadline`.
async fn closed_loop(
    client: &Client,
    template: &PodTemplate,
    level: usize,
    worker: usize,
    deadline: Instant,
) -> Logs {
    let mut logs = Logs::default();
    let mut k = 0;
    while Instant::now() < deadline {
        k += 1;
        let name = format!("c{level}-w{worker}-{k:06}");
        let start = Instant::now();
        let mut pod = match client
            .create(&template.pod(SATURATION_NS, name.clone(), k))
            .await
        {
            Ok(pod) => {
                logs.of(Verb::Create).ok(start.elapsed());
                pod
            }
            Err(e) => {
                logs.of(Verb::Create).error(e);
                continue;
            }
        };
        pod.metadata
            .annotations
            .insert(SEQ_ANNOTATION.into(), k.to_string());
        let start = Instant::now();
        // Nobody else writes this pod, so a conflict is an error here.
        match client.update(&pod).await {
            Ok(_) => logs.of(Verb::Update).ok(start.elapsed()),
            Err(e) => logs.of(Verb::Update).error(e),
        }
        let start = Instant::now();
        match client.get::<Pod>(SATURATION_NS, &name).await {
            Ok(_) => logs.of(Verb::Get).ok(start.elapsed()),
            Err(e) => logs.of(Verb::Get).error(e),
        }
    }
    logs
}

// ---------------------------------------------------------------------------------------------
// Watch fan-out

/// One update of the watch phase.
struct Write {
    revision: Result<i64, ClientError>,
    sent: Instant,
    replied: Instant,
}

/// One update the server applied.
#[derive(Debug, Clone, Copy)]
struct Reply {
    revision: i64,
    sent: Instant,
    replied: Instant,
}

/// One event as a watcher got it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    revision: i64,
    at: Instant,
    modified: bool,
}

/// `opts.watchers` watches on one namespace, spread over several connections, all from the
/// revision of a list; then `opts.watch_updates` updates at [`WATCH_UPDATES_PER_S`] to the pods
/// in it. Every watcher must see every update exactly once, in revision order.
pub(super) async fn watch(api: &ApiServer, opts: &Options) -> Result<Watch> {
    let template = Arc::new(PodTemplate::new()?);
    let writer = api.client(USER).await?;
    create_namespace(&writer, WATCH_NS).await?;
    let (log, pods, _) = create_pods(
        std::slice::from_ref(&writer),
        &template,
        WATCH_NS,
        "watched",
        WATCH_POOL,
    )
    .await?;
    log.check("creating the pods to update")?;
    // Watching from a listed revision rather than "from now" means no update can slip in
    // between a watch being asked for and its etcd watch starting.
    let (_, from) = writer
        .list::<Pod>(WATCH_NS, &ListParams::default())
        .await
        .context("listing the watched namespace")?;
    let connections = opts
        .watchers
        .div_ceil(WATCHERS_PER_CONNECTION)
        .max(MIN_WATCH_CONNECTIONS);
    let conns = connect(api, connections).await?;
    let received = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = signal::channel(false);
    let mut watchers = JoinSet::new();
    for w in 0..opts.watchers {
        let events = conns[w % connections]
            .watch(Pod::INFO, WATCH_NS, &ListParams::default(), from, false)
            .await
            .with_context(|| format!("starting watcher {w}"))?;
        let (stopped, received) = (stopped.clone(), received.clone());
        watchers.spawn(async move { (w, collect(events, stopped, received).await) });
    }
    progress(format!(
        "watch: {} watchers on {connections} connections; {} updates at {WATCH_UPDATES_PER_S}/s",
        opts.watchers, opts.watch_updates
    ));

    // Open loop like the steady phase, so the rate holds whatever an update takes; each pod
    // is written every half second, so updates of one pod do not overlap.
    let pods: Arc<Vec<Mutex<Pod>>> = Arc::new(pods.into_iter().map(Mutex::new).collect());
    let start = Instant::now();
    let mut writes = JoinSet::new();
    for u in 0..opts.watch_updates {
        let at =
            start + Duration::from_nanos(u as u64 * 1_000_000_000 / u64::from(WATCH_UPDATES_PER_S));
        sleep_until(at.into()).await;
        let (writer, pods) = (writer.clone(), pods.clone());
        writes.spawn(async move {
            let sent = Instant::now();
            let (_, result) = update_annotation(&writer, &pods[u % pods.len()], u as u64).await;
            Write {
                revision: result,
                sent,
                replied: Instant::now(),
            }
        });
    }
    let mut replies = Vec::with_capacity(opts.watch_updates);
    let mut write_log = Log::default();
    while let Some(done) = writes.join_next().await {
        let write = done.context("an update of the watch phase panicked")?;
        match write.revision {
            Ok(revision) => {
                write_log.ok(write.replied - write.sent);
                replies.push(Reply {
                    revision,
                    sent: write.sent,
                    replied: write.replied,
                });
            }
            Err(e) => write_log.error(e),
        }
    }
    let write_seconds = start.elapsed().as_secs_f64();
    let events_expected = replies.len() * opts.watchers;
    let drain = Instant::now() + WATCH_DRAIN;
    while received.load(Ordering::Relaxed) < events_expected && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(WATCH_LINGER).await;
    let _ = stop.send(true);
    let mut seen = Vec::with_capacity(opts.watchers);
    while let Some(done) = watchers.join_next().await {
        seen.push(done.context("a watcher panicked")?);
    }
    seen.sort_by_key(|(w, _)| *w);

    let mut problems = Vec::new();
    if write_log.errors > 0 {
        problems.push(format!(
            "{} of {} updates failed (first: {})",
            write_log.errors,
            opts.watch_updates,
            write_log.first_error.as_deref().unwrap_or("?")
        ));
    }
    let check = check_deliveries(&replies, &seen);
    problems.extend(check.problems);
    let (mut delays, mut from_send) = (check.delays, check.from_send);
    let mut update_latency = write_log.latencies;
    let figures = Watch {
        watchers: opts.watchers,
        connections,
        updates: replies.len(),
        updates_per_s: replies.len() as f64 / write_seconds,
        events_expected,
        events_received: received.load(Ordering::Relaxed),
        delay: Percentiles::of(&mut delays),
        delay_from_send: Percentiles::of(&mut from_send),
        update_latency: Percentiles::of(&mut update_latency),
        before_reply: check.before_reply,
        watchers_complete: check.complete,
        problems,
    };
    progress(format!(
        "watch: {:.0} updates/s, update p50 {:.2} ms; {} of {} events delivered; delay from \
         the reply p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} events before the reply); from \
         sending p50 {:.2} ms, p99 {:.2} ms; {} of {} watchers saw every update once, in order",
        figures.updates_per_s,
        figures.update_latency.p50_ms,
        figures.events_received,
        figures.events_expected,
        figures.delay.p50_ms,
        figures.delay.p99_ms,
        figures.delay.max_ms,
        figures.before_reply,
        figures.delay_from_send.p50_ms,
        figures.delay_from_send.p99_ms,
        figures.watchers_complete,
        figures.watchers
    ));
    Ok(figures)
}

/// A watcher's events until told to stop, or why its stream broke.
async fn collect(
    mut events: impl Stream<Item = client::Result<WatchEvent>> + Unpin,
    mut stop: signal::Receiver<bool>,
    received: Arc<AtomicUsize>,
) -> Result<Vec<Seen>, String> {
    let mut seen = Vec::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|&s| s) => return Ok(seen),
            item = events.next() => {
                let at = Instant::now();
                match item {
                    Some(Ok(ev)) => {
                        seen.push(Seen {
                            revision: ev.resource_version(),
                            at,
                            modified: matches!(ev, WatchEvent::Modified(_)),
                        });
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Err(e)) => return Err(format!("the watch failed: {e}")),
                    None => return Err("the server ended the watch".into()),
                }
            }
        }
    }
}

/// What the watchers' events say against the writer's replies.
#[derive(Debug, Default)]
struct Deliveries {
    /// From each reply to each watcher's event of that revision.
    delays: Latencies,
    /// From each update's sending to each watcher's event of that revision.
    from_send: Latencies,
    before_reply: usize,
    /// Watchers that saw exactly the updates, once each, in revision order, as MODIFIED.
    complete: usize,
    problems: Vec<String>,
}

fn check_deliveries(
    replies: &[Reply],
    watchers: &[(usize, Result<Vec<Seen>, String>)],
) -> Deliveries {
    let mut expected: Vec<i64> = replies.iter().map(|r| r.revision).collect();
    expected.sort_unstable();
    let replied_at: HashMap<i64, &Reply> = replies.iter().map(|r| (r.revision, r)).collect();
    let mut d = Deliveries::default();
    let (mut missing, mut duplicated, mut disordered, mut unexpected) = (0, 0, 0, 0);
    let mut missing_events = 0;
    // Which updates (counted from 1) the first watcher to miss any missed, for diagnosis.
    let mut first_lost = Vec::new();
    for (w, outcome) in watchers {
        let seen = match outcome {
            Ok(seen) => seen,
            Err(e) => {
                d.problems.push(format!("watcher {w}: {e}"));
                continue;
            }
        };
        for s in seen {
            if let Some(reply) = replied_at.get(&s.revision) {
                if s.at < reply.replied {
                    d.before_reply += 1;
                }
                d.delays
                    .ns
                    .push(nanos(s.at.saturating_duration_since(reply.replied)));
                d.from_send
                    .ns
                    .push(nanos(s.at.saturating_duration_since(reply.sent)));
            }
        }
        let revisions: Vec<i64> = seen.iter().map(|s| s.revision).collect();
        if revisions == expected && seen.iter().all(|s| s.modified) {
            d.complete += 1;
            continue;
        }
        let got: HashSet<i64> = revisions.iter().copied().collect();
        let lost: Vec<usize> = (0..expected.len())
            .filter(|&u| !got.contains(&expected[u]))
            .collect();
        if !lost.is_empty() {
            missing += 1;
            missing_events += lost.len();
            if first_lost.is_empty() {
                first_lost = lost;
            }
        }
        if got.len() < revisions.len() {
            duplicated += 1;
        }
        if revisions.windows(2).any(|p| p[1] <= p[0]) {
            disordered += 1;
        }
        if seen
            .iter()
            .any(|s| !s.modified || !replied_at.contains_key(&s.revision))
        {
            unexpected += 1;
        }
    }
    let n = watchers.len();
    for (count, what) in [
        (
            missing,
            format!(
                "missed events ({missing_events} in all; the first such watcher missed update \
                 {} of {})",
                first_lost
                    .iter()
                    .take(5)
                    .map(|u| (u + 1).to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                expected.len()
            ),
        ),
        (duplicated, "got an event twice".to_owned()),
        (disordered, "got events out of revision order".to_owned()),
        (
            unexpected,
            "got events that were not the updates (another type or revision)".to_owned(),
        ),
    ] {
        if count > 0 {
            d.problems.push(format!("{count} of {n} watchers {what}"));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(revisions: &[i64], base: Instant) -> Vec<Seen> {
        revisions
            .iter()
            .map(|&r| Seen {
                revision: r,
                at: base + Duration::from_millis(r as u64 * 10 + 1),
                modified: true,
            })
            .collect()
    }

    #[test]
    fn watchers_must_see_every_update_once_in_revision_order() {
        let base = Instant::now();
        let replies: Vec<Reply> = (1..=3)
            .map(|r| Reply {
                revision: r,
                sent: base,
                replied: base + Duration::from_millis(r as u64 * 10),
            })
            .collect();
        let watchers = vec![
            (0, Ok(seen(&[1, 2, 3], base))),
            (1, Ok(seen(&[1, 3], base))),
            (2, Ok(seen(&[1, 2, 2, 3], base))),
            (3, Ok(seen(&[2, 1, 3], base))),
            (4, Err("the server ended the watch".to_owned())),
        ];
        let d = check_deliveries(&replies, &watchers);
        assert_eq!(d.complete, 1);
        assert_eq!(
            d.problems,
            [
                "watcher 4: the server ended the watch",
                "1 of 5 watchers missed events (1 in all; the first such watcher missed update 2 of 3)",
                "1 of 5 watchers got an event twice",
                "2 of 5 watchers got events out of revision order",
            ]
        );
        // Every event of a known revision is timed from its reply: 1 ms each.
        assert_eq!(d.delays.ns.len(), 3 + 2 + 4 + 3);
        assert!(d.delays.ns.iter().all(|&ns| ns == 1_000_000));
        assert_eq!(d.before_reply, 0);
    }

    #[test]
    fn events_before_the_reply_count_as_zero_delay() {
        let base = Instant::now();
        let replies = [Reply {
            revision: 7,
            sent: base,
            replied: base + Duration::from_millis(100),
        }];
        let d = check_deliveries(&replies, &[(0, Ok(seen(&[7], base)))]);
        assert_eq!(d.complete, 1);
        assert_eq!(d.before_reply, 1);
        assert_eq!(d.delays.ns, [0]);
        assert_eq!(d.from_send.ns, [71_000_000]);
    }

    #[test]
    fn pods_are_about_a_kibibyte_and_spread_over_nodes_and_shards() {
        let t = PodTemplate::new().unwrap();
        let mut pod = t.pod("bench-list", "pod-000042".into(), 42);
        assert_eq!(pod.spec.node_name, "node-2");
        assert_eq!(pod.metadata.labels["shard"], "s4");
        let mut object = pod.clone().into_object();
        object.apply_defaults();
        assert!(object.validate().is_empty(), "{:?}", object.validate());
        pod.metadata.uid = "0b5e7d3c-1f2a-4c8e-9d6b-3a7f5e2c1d90".into();
        pod.metadata.resource_version = "123456".into();
        pod.metadata.creation_timestamp = Some("2026-11-22T10:04:05Z".into());
        let bytes = to_json(&pod).len();
        assert!((800..1400).contains(&bytes), "{bytes} bytes");
        let on_node_3 = (0..1000).filter(|&i| node_of(i) == SELECTED_NODE).count();
        let in_shard_3 = (0..1000).filter(|&i| shard_of(i) == SELECTED_SHARD).count();
        assert_eq!((on_node_3, in_shard_3), (100, 100));
    }
}
