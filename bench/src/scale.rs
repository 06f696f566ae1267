//! The control-plane scale benchmark (`skiff-bench scale`): thousands of hollow nodes in this
//! process against a real etcd, API server, scheduler and controller-manager, measuring pods
//! bound per second at 1,000 and 5,000 nodes, a 1,000-replica Deployment's time to Running,
//! and the memory and CPU time of every process meanwhile.

mod cluster;
mod phases;
mod report;

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use skiff_api::client::Client;
use skiff_testbed::{which, workspace_binary};

pub use self::{
    cluster::{BENCH, Memory},
    report::summary_table,
};
use self::{
    cluster::{Cluster, CpuSample},
    phases::Mode,
};
use crate::{
    control::{self, Machine, Percentiles, ServerCalls, server},
    hollow::{self, Fleet, NodeConfig, NodeStats},
    meta,
};

/// The scheduling target: pods bound per second with this many nodes.
pub const TARGET_PODS_PER_S: f64 = 1000.0;
pub const TARGET_NODES: usize = 5000;
/// The Deployment target: all replicas Running within this many seconds.
pub const TARGET_DEPLOYMENT_S: f64 = 10.0;
pub const TARGET_REPLICAS: usize = 1000;
/// Hollow nodes renew their leases this often (the kubelet's default), so that 5,000 of them
/// write 500 renewals a second rather than 2,000.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// The controller-manager's grace period for a silent node (four renewals).
pub const NODE_MONITOR_GRACE_PERIOD: Duration = Duration::from_secs(40);
/// Concurrent pod creators.
pub const CREATORS: usize = 32;
/// The benchmark's own connections (creators, watches, deletes).
pub const CONNECTIONS: usize = 4;
/// Hollow nodes per connection to the API server.
pub const NODES_PER_CONNECTION: usize = 500;
/// Each pod's requests: small, so that every pod fits.
pub const POD_CPU: &str = "10m";
pub const POD_MEMORY: &str = "16Mi";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub out: PathBuf,
    /// Numbers of nodes to measure scheduling at, ascending; the Deployment runs at the last.
    pub node_counts: Vec<usize>,
    /// Pods each scheduling measurement creates.
    pub pods: usize,
    /// The Deployment's replicas.
    pub replicas: usize,
}

impl Options {
    /// The defaults of a full or `--quick` run, with the given overrides, checked.
    pub fn new(
        quick: bool,
        out: PathBuf,
        nodes: Option<Vec<usize>>,
        pods: Option<usize>,
        replicas: Option<usize>,
    ) -> Result<Options> {
        let node_counts = nodes.unwrap_or_else(|| {
            if quick {
                vec![100]
            } else {
                vec![1000, TARGET_NODES]
            }
        });
        let pods = pods.unwrap_or(if quick { 1000 } else { 10_000 });
        let replicas = replicas.unwrap_or(if quick { 100 } else { TARGET_REPLICAS });
        if node_counts.is_empty()
            || node_counts.iter().any(|&n| !(1..=20_000).contains(&n))
            || node_counts.windows(2).any(|w| w[0] >= w[1])
        {
            bail!("--nodes takes ascending numbers of nodes from 1 to 20000");
        }
        let fewest = node_counts[0] * hollow::DEFAULT_MAX_PODS as usize;
        if !(1..=fewest).contains(&pods) {
            bail!("--pods takes 1 to {fewest} (110 pods on each of the fewest nodes)");
        }
        let most = node_counts[node_counts.len() - 1] * hollow::DEFAULT_MAX_PODS as usize;
        if !(1..=most).contains(&replicas) {
            bail!("--replicas takes 1 to {most} (110 pods on each node)");
        }
        Ok(Options {
            quick,
            out,
            node_counts,
            pods,
            replicas,
        })
    }

    fn max_nodes(&self) -> usize {
        self.node_counts.last().copied().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Results

/// Everything a run measured; written as `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub settings: Settings,
    pub started: String,
    pub finished: String,
    pub run_seconds: f64,
    pub node_starts: Vec<NodeStart>,
    pub scheduling: Vec<Scheduling>,
    pub deployment: Option<DeploymentRun>,
    pub resources: Resources,
    /// What the hollow nodes did, summed over all of them.
    pub hollow: NodeStats,
    pub targets: Vec<Target>,
    /// Why the run failed (a phase that did not finish, a process that died, pods bound to
    /// unknown nodes); empty when it did not. A missed target is not a failure.
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub quick: bool,
    pub node_counts: Vec<usize>,
    pub pods: usize,
    pub replicas: usize,
    pub renew_interval_s: f64,
    pub lease_duration_s: i32,
    pub node_monitor_grace_period_s: f64,
    pub creators: usize,
    pub connections: usize,
    pub nodes_per_connection: usize,
    pub pod_cpu_request: &'static str,
    pub pod_memory_request: &'static str,
    pub node_cpu: String,
    pub node_memory: String,
    pub node_max_pods: u32,
    pub etcd_members: usize,
}

/// Starting a batch of hollow nodes.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStart {
    /// Nodes running afterwards.
    pub nodes: usize,
    pub started: usize,
    /// Until every new node was registered, held its lease and watched its pods.
    pub seconds: f64,
}

/// One scheduling measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Scheduling {
    pub nodes: usize,
    /// `backlog`: every pod created while the scheduler was stopped, then the scheduler
    /// started; `streaming`: pods created as fast as the creators can while it runs.
    pub mode: &'static str,
    pub pods: usize,
    pub create_s: f64,
    pub create_per_s: f64,
    pub bound: usize,
    /// What the times below count from: the scheduler's start (backlog) or the first create
    /// (streaming).
    pub origin: &'static str,
    pub first_bind_s: Option<f64>,
    pub last_bind_s: Option<f64>,
    /// Binds after the first, over the time from the first to the last.
    pub window_pods_per_s: Option<f64>,
    /// Binds over the time from the origin to the last.
    pub overall_pods_per_s: Option<f64>,
    /// Per pod, from the origin (backlog) or from sending its create (streaming) to the
    /// benchmark's watch seeing it bound.
    pub latency: Option<Percentiles>,
    /// From the origin until the watch saw every pod Running (hollow nodes report them).
    pub all_running_s: Option<f64>,
    pub nodes_used: usize,
    pub max_pods_per_node: usize,
    /// Deleting the namespace and its pods.
    pub cleanup_s: Option<f64>,
    pub problems: Vec<String>,
}

/// The Deployment measurement; times from its create.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentRun {
    pub nodes: usize,
    pub replicas: usize,
    pub all_created_s: Option<f64>,
    pub all_bound_s: Option<f64>,
    pub all_running_s: Option<f64>,
    /// Until the Deployment's status counted every replica available.
    pub available_s: Option<f64>,
    pub cleanup_s: Option<f64>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    /// Resident memory of every process at moments of interest.
    pub memory: Vec<MemoryAt>,
    pub phases: Vec<PhaseCost>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryAt {
    pub when: String,
    pub processes: Vec<Memory>,
}

/// Wall time and CPU time (user + system) of each process during one step.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseCost {
    pub phase: String,
    pub wall_s: f64,
    /// By process name (`etcd`, `skiff-apiserver`, ..., [`BENCH`]).
    pub cpu_s: BTreeMap<&'static str, f64>,
    /// Every other process on the machine: figures from a step where this is large are
    /// disturbed.
    pub other_cpu_s: Option<f64>,
    pub steal_s: Option<f64>,
    /// The API server's mean latency per request verb and per etcd operation during the step
    /// (empty when its metrics could not be read).
    pub server: Vec<ServerCalls>,
}

impl PhaseCost {
    fn between(phase: String, before: &CpuSample, after: &CpuSample) -> PhaseCost {
        let (other_cpu_s, steal_s) = after.others_and_steal_since(before);
        PhaseCost {
            phase,
            wall_s: after
                .at
                .zip(before.at)
                .map_or(0.0, |(a, b)| (a - b).as_secs_f64()),
            cpu_s: after.since(before),
            other_cpu_s,
            steal_s,
            server: before
                .server
                .as_ref()
                .zip(after.server.as_ref())
                .map(|(b, a)| server::between(b, a))
                .unwrap_or_default(),
        }
    }
}

/// A target and whether it was met.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub goal: String,
    /// `None` when the run did not measure it.
    pub met: Option<bool>,
    pub line: String,
}

impl Target {
    fn judge(goal: String, value: Option<f64>, met: impl Fn(f64) -> bool, shown: &str) -> Target {
        match value {
            Some(v) => {
                let ok = met(v);
                let verdict = if ok { "MET" } else { "MISSED" };
                Target {
                    line: format!("{goal}: {verdict} ({shown} {v:.1})"),
                    goal,
                    met: Some(ok),
                }
            }
            None => Target {
                line: format!("{goal}: NOT MEASURED"),
                goal,
                met: None,
            },
        }
    }

    /// The scheduling target on the backlog measurement at the most nodes, and the Deployment
    /// target; a run at other sizes says so in the goal.
    fn all(
        opts: &Options,
        scheduling: &[Scheduling],
        deployment: Option<&DeploymentRun>,
    ) -> Vec<Target> {
        let nodes = opts.max_nodes();
        let at = if nodes == TARGET_NODES {
            String::new()
        } else {
            format!(" (measured at {nodes} nodes)")
        };
        let rate = scheduling
            .iter()
            .find(|s| s.nodes == nodes && s.mode == Mode::Backlog.name() && s.bound == s.pods)
            .and_then(|s| s.window_pods_per_s);
        let replicas = if opts.replicas == TARGET_REPLICAS {
            String::new()
        } else {
            format!(" (measured with {} replicas)", opts.replicas)
        };
        let running = deployment.and_then(|d| d.all_running_s);
        vec![
            Target::judge(
                format!(
                    "at least {TARGET_PODS_PER_S:.0} pods bound per second at {TARGET_NODES} \
                     nodes{at}"
                ),
                rate,
                |v| v >= TARGET_PODS_PER_S,
                "pods/s",
            ),
            Target::judge(
                format!(
                    "a {TARGET_REPLICAS}-replica Deployment all Running in under \
                     {TARGET_DEPLOYMENT_S:.0} s{replicas}"
                ),
                running,
                |v| v < TARGET_DEPLOYMENT_S,
                "s",
            ),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Running

/// Prints one progress line (on stderr).
fn progress(what: impl std::fmt::Display) {
    eprintln!("[scale] {what}");
}

/// Runs the benchmark, writes `results.json` and `report.md` (and the control plane's logs)
/// into `opts.out`, prints a summary, and fails if any phase did (a missed target is
/// reported, not an error).
pub fn main(opts: &Options) -> Result<()> {
    for tool in ["etcd", "etcdctl", "setpriv"] {
        if which(tool).is_none() {
            bail!("{tool} is not installed (`cargo xtask setup` installs it)");
        }
    }
    for bin in [
        "skiff-apiserver",
        "skiff-scheduler",
        "skiff-controller-manager",
    ] {
        workspace_binary(bin).with_context(|| {
            format!(
                "{bin} must be next to skiff-bench or in $SKIFF_BIN_DIR: build it with `cargo \
                 build --release -p skiff-apiserver -p skiff-control`"
            )
        })?;
    }
    let results = run(opts)?;
    let written = report::write(&results, &opts.out)?;
    println!("\n{}", report::summary_table(&results));
    println!("results in {}:", opts.out.display());
    for p in written {
        println!("    {}", p.display());
    }
    if !results.failures.is_empty() {
        bail!("the run failed:\n  {}", results.failures.join("\n  "));
    }
    Ok(())
}

/// What the phases have gathered so far (kept when a later one fails).
#[derive(Default)]
struct Gathered {
    node_starts: Vec<NodeStart>,
    scheduling: Vec<Scheduling>,
    deployment: Option<DeploymentRun>,
    memory: Vec<MemoryAt>,
    costs: Vec<PhaseCost>,
    failures: Vec<String>,
    hollow: NodeStats,
}

/// Starts the control plane, runs every phase, and gathers the results; everything it started
/// is stopped and removed before it returns, whatever happened.
pub fn run(opts: &Options) -> Result<Results> {
    let clock = Instant::now();
    let started = meta::now_utc();
    let machine = control::machine();
    progress(format!(
        "{} on {} ({} cores), {}; nodes {:?}, {} pods, a {}-replica Deployment; output in {}",
        if opts.quick { "quick run" } else { "full run" },
        machine.cpu_model,
        machine.cpus,
        machine.etcd_version,
        opts.node_counts,
        opts.pods,
        opts.replicas,
        opts.out.display()
    ));
    progress(format!(
        "starting etcd, skiff-apiserver (with {} node tokens) and skiff-controller-manager",
        opts.max_nodes()
    ));
    let mut cluster = Cluster::start(opts.max_nodes(), NODE_MONITOR_GRACE_PERIOD)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let mut g = Gathered::default();
    let failure = runtime.block_on(async {
        tokio::select! {
            r = phases_in_order(&mut cluster, opts, &mut g) => r.err().map(|e| format!("{e:#}")),
            signal = interrupted() => Some(format!("interrupted by {signal}")),
        }
    });
    if let Some(f) = failure {
        progress(format!("FAILED: {f}"));
        g.failures.push(f);
    }
    // The hollow nodes stopped with the phases; the runtime goes before the processes.
    drop(runtime);
    if !g.failures.is_empty() {
        for p in [
            &cluster.apiserver,
            &cluster.scheduler,
            &cluster.controller_manager,
        ] {
            progress(format!("the end of {}'s log:\n{}", p.name, p.log_tail(15)));
        }
    }
    match cluster.save_logs(&opts.out.join("logs")) {
        Ok(_) => {}
        Err(e) => progress(format!("the control plane's logs were not saved: {e:#}")),
    }
    let notes = cluster.notes();
    drop(cluster);
    let targets = Target::all(opts, &g.scheduling, g.deployment.as_ref());
    for t in &targets {
        progress(&t.line);
    }
    Ok(Results {
        machine,
        settings: Settings {
            quick: opts.quick,
            node_counts: opts.node_counts.clone(),
            pods: opts.pods,
            replicas: opts.replicas,
            renew_interval_s: RENEW_INTERVAL.as_secs_f64(),
            lease_duration_s: node_config(0, "x", "x").lease_duration_seconds,
            node_monitor_grace_period_s: NODE_MONITOR_GRACE_PERIOD.as_secs_f64(),
            creators: CREATORS,
            connections: CONNECTIONS,
            nodes_per_connection: NODES_PER_CONNECTION,
            pod_cpu_request: POD_CPU,
            pod_memory_request: POD_MEMORY,
            node_cpu: node_config(0, "x", "x").cpu,
            node_memory: node_config(0, "x", "x").memory,
            node_max_pods: hollow::DEFAULT_MAX_PODS,
            etcd_members: 1,
        },
        started,
        finished: meta::now_utc(),
        run_seconds: clock.elapsed().as_secs_f64(),
        node_starts: g.node_starts,
        scheduling: g.scheduling,
        deployment: g.deployment,
        resources: Resources {
            memory: g.memory,
            phases: g.costs,
            notes,
        },
        hollow: g.hollow,
        targets,
        failures: g.failures,
    })
}

/// Resolves on SIGINT or SIGTERM, with its name (the run then stops, cleans up and reports
/// what it has).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// The configuration of hollow node number `index`.
fn node_config(index: usize, name: &str, token: &str) -> NodeConfig {
    NodeConfig::new(name, token, u32::try_from(index).unwrap_or(u32::MAX))
        .with_renew_interval(RENEW_INTERVAL)
}

/// Time allowed for `n` nodes to start (registrations go 64 at a time).
fn node_start_budget(n: usize) -> Duration {
    Duration::from_secs(60 + n as u64 / 20)
}

async fn phases_in_order(cluster: &mut Cluster, opts: &Options, g: &mut Gathered) -> Result<()> {
    let admin = cluster.admin_clients(CONNECTIONS).await?;
    let mut fleet: Option<Fleet> = None;
    let result = measure_all(cluster, opts, g, &admin, &mut fleet).await;
    if let Some(f) = &fleet {
        g.hollow = f.stats();
        if let Some(e) = &g.hollow.last_error {
            progress(format!(
                "hollow nodes: {} failed calls, the last: {e}",
                g.hollow.errors
            ));
        }
    }
    drop(fleet);
    result
}

async fn measure_all(
    cluster: &mut Cluster,
    opts: &Options,
    g: &mut Gathered,
    admin: &[Client],
    fleet: &mut Option<Fleet>,
) -> Result<()> {
    let mut names = HashSet::new();
    for &nodes in &opts.node_counts {
        // More nodes.
        let from = names.len();
        let configs: Vec<NodeConfig> = cluster.node_tokens[from..nodes]
            .iter()
            .enumerate()
            .map(|(i, t)| node_config(from + i, &t.node, &t.token))
            .collect();
        names.extend(configs.iter().map(|c| c.name.clone()));
        progress(format!(
            "starting {} hollow nodes ({nodes} in all)",
            configs.len()
        ));
        let connections = cluster
            .admin_clients(configs.len().div_ceil(NODES_PER_CONNECTION))
            .await?;
        let before = cluster.cpu();
        let clock = Instant::now();
        let started = configs.len();
        match fleet {
            Some(f) => f.grow(&connections, configs)?,
            None => *fleet = Some(Fleet::start_on(&connections, configs)?),
        }
        if let Some(f) = fleet.as_ref() {
            f.wait_running(node_start_budget(started)).await?;
        }
        let seconds = clock.elapsed().as_secs_f64();
        g.costs.push(PhaseCost::between(
            format!("start {started} nodes ({nodes} in all)"),
            &before,
            &cluster.cpu(),
        ));
        progress(format!(
            "{nodes} hollow nodes running ({started} started in {seconds:.1} s)"
        ));
        g.node_starts.push(NodeStart {
            nodes,
            started,
            seconds,
        });
        cluster.check()?;

        for mode in [Mode::Backlog, Mode::Streaming] {
            let figures =
                phases::scheduling(cluster, admin, &names, nodes, opts.pods, mode, &mut g.costs)
                    .await;
            let mut figures = match figures {
                Ok(f) => f,
                Err(e) => {
                    let msg = format!("scheduling ({}, {nodes} nodes): {e:#}", mode.name());
                    progress(format!("FAILED: {msg}"));
                    g.failures.push(msg);
                    cluster.check()?;
                    continue;
                }
            };
            if mode == Mode::Streaming && nodes == opts.max_nodes() {
                g.memory.push(MemoryAt {
                    when: format!("{nodes} nodes, {} pods running", opts.pods),
                    processes: cluster.memory(),
                });
            }
            figures.cleanup_s = cleanup(cluster, admin, &phases::namespace(mode, nodes), g).await;
            for p in &figures.problems {
                g.failures
                    .push(format!("scheduling ({}, {nodes} nodes): {p}", mode.name()));
            }
            g.scheduling.push(figures);
        }
    }

    let nodes = opts.max_nodes();
    match phases::deployment(cluster, admin, &names, nodes, opts.replicas, &mut g.costs).await {
        Ok(mut d) => {
            g.memory.push(MemoryAt {
                when: format!(
                    "{nodes} nodes, the {}-replica Deployment running",
                    opts.replicas
                ),
                processes: cluster.memory(),
            });
            d.cleanup_s = cleanup(cluster, admin, &phases::deployment_namespace(nodes), g).await;
            for p in &d.problems {
                g.failures.push(format!("deployment: {p}"));
            }
            g.deployment = Some(d);
        }
        Err(e) => {
            progress(format!("FAILED: deployment: {e:#}"));
            g.failures.push(format!("deployment: {e:#}"));
        }
    }
    cluster.check()
}

/// Deletes a phase's namespace and waits until it is gone; its time, or `None` (and a failure).
async fn cleanup(
    cluster: &mut Cluster,
    admin: &[Client],
    ns: &str,
    g: &mut Gathered,
) -> Option<f64> {
    let before = cluster.cpu();
    let result = phases::delete_namespace(&admin[0], ns).await;
    g.costs.push(PhaseCost::between(
        format!("delete namespace {ns}"),
        &before,
        &cluster.cpu(),
    ));
    match result {
        Ok(took) => {
            progress(format!(
                "deleted namespace {ns} in {:.1} s",
                took.as_secs_f64()
            ));
            match tokio::task::block_in_place(|| cluster.compact_etcd()) {
                Ok(rev) => progress(format!("compacted etcd up to revision {rev}")),
                Err(e) => {
                    progress(format!("FAILED: {e:#}"));
                    g.failures.push(format!("{e:#}"));
                }
            }
            Some(took.as_secs_f64())
        }
        Err(e) => {
            progress(format!("FAILED: deleting namespace {ns}: {e:#}"));
            g.failures.push(format!("deleting namespace {ns}: {e:#}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(nodes: usize, mode: Mode, rate: Option<f64>) -> Scheduling {
        Scheduling {
            nodes,
            mode: mode.name(),
            pods: 10,
            create_s: 1.0,
            create_per_s: 10.0,
            bound: 10,
            origin: "x",
            first_bind_s: Some(0.1),
            last_bind_s: Some(1.0),
            window_pods_per_s: rate,
            overall_pods_per_s: rate,
            latency: None,
            all_running_s: None,
            nodes_used: 10,
            max_pods_per_node: 1,
            cleanup_s: None,
            problems: Vec::new(),
        }
    }

    fn deployment(running: Option<f64>) -> DeploymentRun {
        DeploymentRun {
            nodes: 5000,
            replicas: 1000,
            all_created_s: None,
            all_bound_s: None,
            all_running_s: running,
            available_s: None,
            cleanup_s: None,
            problems: Vec::new(),
        }
    }

    #[test]
    fn targets_are_judged_on_the_backlog_at_the_most_nodes_and_the_deployment() {
        let opts = Options::new(false, "/tmp/x".into(), None, None, None).unwrap();
        let runs = [
            sched(1000, Mode::Backlog, Some(5000.0)),
            sched(5000, Mode::Streaming, Some(5000.0)),
            sched(5000, Mode::Backlog, Some(900.0)),
        ];
        let t = Target::all(&opts, &runs, Some(&deployment(Some(9.5))));
        assert_eq!(t[0].met, Some(false));
        assert_eq!(
            t[0].line,
            "at least 1000 pods bound per second at 5000 nodes: MISSED (pods/s 900.0)"
        );
        assert_eq!(t[1].met, Some(true));
        assert_eq!(
            t[1].line,
            "a 1000-replica Deployment all Running in under 10 s: MET (s 9.5)"
        );
        let none = Target::all(&opts, &runs[..2], None);
        assert_eq!(none[0].met, None);
        assert!(none[1].line.ends_with("NOT MEASURED"));
    }

    #[test]
    fn a_quick_run_says_at_what_size_it_judged() {
        let opts = Options::new(true, "/tmp/x".into(), None, None, None).unwrap();
        let t = Target::all(
            &opts,
            &[sched(100, Mode::Backlog, Some(1500.0))],
            Some(&deployment(Some(3.0))),
        );
        assert_eq!(t[0].met, Some(true));
        assert!(
            t[0].goal.ends_with("(measured at 100 nodes)"),
            "{}",
            t[0].goal
        );
        assert!(
            t[1].goal.ends_with("(measured with 100 replicas)"),
            "{}",
            t[1].goal
        );
    }

    #[test]
    fn options_are_checked() {
        let full = Options::new(false, "/tmp/x".into(), None, None, None).unwrap();
        assert_eq!(full.node_counts, [1000, 5000]);
        assert_eq!((full.pods, full.replicas), (10_000, 1000));
        let quick = Options::new(true, "/tmp/x".into(), None, None, None).unwrap();
        assert_eq!(
            (quick.node_counts.as_slice(), quick.pods, quick.replicas),
            (&[100][..], 1000, 100)
        );
        let bad = |n: Option<Vec<usize>>, p, r| Options::new(false, "/x".into(), n, p, r).is_err();
        assert!(bad(Some(vec![]), None, None));
        assert!(bad(Some(vec![5000, 1000]), None, None));
        assert!(bad(Some(vec![10]), Some(1101), Some(1)));
        assert!(bad(Some(vec![10]), Some(10), Some(1101)));
        assert!(!bad(Some(vec![10]), Some(1100), Some(1100)));
    }
}
