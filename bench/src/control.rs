//! The control-plane benchmark (`skiff-bench control`): create, update and get latency against a
//! real etcd and a real `skiff-apiserver` at a steady rate and at saturation, lists of many pods,
//! watch fan-out, and what the server and etcd cost meanwhile.

pub(crate) mod phases;
pub(crate) mod procfs;
mod report;
pub(crate) mod server;

use std::{
    future::Future,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use skiff_testbed::{
    control::{ApiOptions, ApiServer, Encryption, Etcd},
    which, workspace_binary,
};

pub use self::server::ServerCalls;
use crate::{load::Latencies, meta};

/// The write rate of the steady phase (creates and updates alternate).
pub const STEADY_WRITES_PER_S: u32 = 200;
/// The get rate of the steady phase, alongside the writes.
pub const STEADY_GETS_PER_S: u32 = 200;
/// The goal for mutating calls at [`STEADY_WRITES_PER_S`] (the Kubernetes SLO is 1 s).
pub const TARGET_P99_MS: f64 = 25.0;
/// Clients that create the list phase's pods.
pub const LIST_CREATORS: usize = 32;
/// Runs of each list.
pub const LIST_RUNS: usize = 5;
/// Rate of the writer in the watch phase.
pub const WATCH_UPDATES_PER_S: u32 = 100;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub out: PathBuf,
    /// Length of the steady phase; every saturation level runs a third of it.
    pub seconds: u64,
    /// Pods the list phase creates and lists.
    pub pods: usize,
    pub watchers: usize,
    /// Numbers of concurrent clients of the saturation phase.
    pub saturation_clients: Vec<usize>,
    /// Updates the watchers of the watch phase are to see.
    pub watch_updates: usize,
}

impl Options {
    /// The defaults of a full or `--quick` run, with the given overrides, checked.
    pub fn new(
        quick: bool,
        out: PathBuf,
        seconds: Option<u64>,
        pods: Option<usize>,
        watchers: Option<usize>,
    ) -> Result<Options> {
        let seconds = seconds.unwrap_or(if quick { 8 } else { 30 });
        let pods = pods.unwrap_or(if quick { 2_000 } else { 10_000 });
        let watchers = watchers.unwrap_or(if quick { 20 } else { 100 });
        if !(1..=3600).contains(&seconds) {
            bail!("--seconds takes 1 to 3600");
        }
        // The selectors pick a tenth of the pods, so a hundred makes them pick ten.
        if !(100..=200_000).contains(&pods) {
            bail!("--pods takes 100 to 200000");
        }
        if !(1..=2000).contains(&watchers) {
            bail!("--watchers takes 1 to 2000");
        }
        Ok(Options {
            quick,
            out,
            seconds,
            pods,
            watchers,
            saturation_clients: if quick {
                vec![1, 16]
            } else {
                vec![1, 8, 32, 64]
            },
            watch_updates: if quick { 100 } else { 500 },
        })
    }

    fn steady(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    fn saturation_level(&self) -> Duration {
        Duration::from_secs_f64(self.seconds as f64 / 3.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Results

/// Everything a run measured; written as `control.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub settings: Settings,
    pub started: String,
    pub finished: String,
    pub run_seconds: f64,
    /// The phases in the order they ran.
    pub phase_order: Vec<&'static str>,
    pub steady: Option<Steady>,
    pub saturation: Option<Saturation>,
    pub list: Option<List>,
    pub watch: Option<Watch>,
    pub resources: Resources,
    pub target: Target,
    /// Why the run failed (request errors, wrong list results, missing watch events); empty
    /// when it did not. A missed latency target is not a failure.
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub hostname: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub etcd_version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub quick: bool,
    pub steady_seconds: u64,
    pub steady_writes_per_s: u32,
    pub steady_gets_per_s: u32,
    pub saturation_clients: Vec<usize>,
    pub saturation_seconds_per_level: f64,
    pub pods: usize,
    pub list_creators: usize,
    pub list_runs: usize,
    pub watchers: usize,
    pub watch_updates: usize,
    pub watch_updates_per_s: u32,
    pub etcd_members: usize,
}

/// Latency percentiles (nearest rank) in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub(crate) fn of(l: &mut Latencies) -> Percentiles {
        let mut ms = |p| l.percentile_us(p) / 1000.0;
        Percentiles {
            p50_ms: ms(50.0),
            p90_ms: ms(90.0),
            p99_ms: ms(99.0),
            max_ms: ms(100.0),
            samples: l.ns.len(),
        }
    }
}

/// One verb's figures in one phase (latencies of the calls that succeeded).
#[derive(Debug, Clone, Serialize)]
pub struct VerbFigures {
    pub verb: &'static str,
    pub ok: usize,
    pub errors: usize,
    /// Updates that lost a compare-and-swap, read the pod again and retried (the retry is part
    /// of the update's latency).
    pub conflicts: usize,
    pub per_second: f64,
    pub latency: Percentiles,
    pub first_error: Option<String>,
}

/// Open loop at a fixed rate.
#[derive(Debug, Clone, Serialize)]
pub struct Steady {
    pub seconds: f64,
    pub writes_per_s: f64,
    pub gets_per_s: f64,
    pub verbs: Vec<VerbFigures>,
    /// How late calls were issued after their scheduled start (the timer's millisecond
    /// granularity, mostly); each call is timed from its scheduled start regardless, so this is
    /// included in its latency.
    pub issue_lag: Percentiles,
    /// The slowest calls, slowest first: a stall shows as several at about the same time.
    pub slowest: Vec<SlowCall>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlowCall {
    pub verb: &'static str,
    /// Scheduled start, from the phase's first call.
    pub at_s: f64,
    pub ms: f64,
}

/// Closed loop: every client sends its next call when the last one is answered.
#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    pub levels: Vec<SaturationLevel>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SaturationLevel {
    pub clients: usize,
    pub seconds: f64,
    /// All verbs together.
    pub calls_per_s: f64,
    pub verbs: Vec<VerbFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct List {
    pub pods: usize,
    /// JSON bytes of one stored pod (the server adds defaults and metadata).
    pub pod_json_bytes: usize,
    pub create: VerbFigures,
    pub create_seconds: f64,
    pub lists: Vec<ListFigures>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListFigures {
    pub what: &'static str,
    pub label_selector: String,
    pub field_selector: String,
    pub runs: usize,
    pub items: usize,
    pub expected_items: usize,
    /// Sum of the items' JSON lengths (the response is that plus a few bytes per item).
    pub bytes: usize,
    pub p50_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Watch {
    pub watchers: usize,
    pub connections: usize,
    pub updates: usize,
    pub updates_per_s: f64,
    pub events_expected: usize,
    pub events_received: usize,
    /// From the writer getting the update's reply to a watcher getting the event.
    pub delay: Percentiles,
    /// From the writer sending the update to a watcher getting the event.
    pub delay_from_send: Percentiles,
    /// The updates' own latency, for reading the delays against.
    pub update_latency: Percentiles,
    /// Events a watcher had before the writer had the reply (counted as 0 ms in `delay`).
    pub before_reply: usize,
    pub watchers_complete: usize,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    pub apiserver_pid: Option<u32>,
    pub etcd_pid: Option<u32>,
    /// VmHWM at the end of the run.
    pub apiserver_peak_rss_mib: Option<f64>,
    pub etcd_peak_rss_mib: Option<f64>,
    pub phases: Vec<PhaseCost>,
    pub notes: Vec<String>,
}

/// Wall time and CPU time (user + system) of each process during one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseCost {
    pub phase: &'static str,
    pub wall_s: f64,
    pub apiserver_cpu_s: Option<f64>,
    pub etcd_cpu_s: Option<f64>,
    /// The benchmark's own clients share the machine's cores with the server and etcd.
    pub benchmark_cpu_s: Option<f64>,
    /// Every other process on the machine (a concurrent build, say): figures from a phase
    /// where this is large are disturbed.
    pub other_cpu_s: Option<f64>,
    /// CPU time the hypervisor gave to other machines.
    pub steal_s: Option<f64>,
    /// The API server's mean latency per request verb and per etcd operation (empty when its
    /// metrics could not be read).
    pub server: Vec<ServerCalls>,
}

/// The issue's target, judged on the steady phase.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// `None` when the steady phase did not produce figures.
    pub met: Option<bool>,
    pub create_p99_ms: Option<f64>,
    pub update_p99_ms: Option<f64>,
    pub line: String,
}

impl Target {
    fn judge(steady: Option<&Steady>) -> Target {
        let p99 = |verb: &str| {
            steady
                .and_then(|s| s.verbs.iter().find(|v| v.verb == verb))
                .filter(|v| v.ok > 0)
                .map(|v| v.latency.p99_ms)
        };
        let (create, update) = (p99("create"), p99("update"));
        let goal =
            format!("mutating calls p99 < {TARGET_P99_MS} ms at {STEADY_WRITES_PER_S} writes/s");
        let (met, line) = match (create, update) {
            (Some(c), Some(u)) => {
                let met = c < TARGET_P99_MS && u < TARGET_P99_MS;
                let verdict = if met { "MET" } else { "MISSED" };
                (
                    Some(met),
                    format!("{goal}: {verdict} (create p99 {c:.1} ms, update p99 {u:.1} ms)"),
                )
            }
            _ => (
                None,
                format!("{goal}: NOT MEASURED (the steady phase produced no figures)"),
            ),
        };
        Target {
            met,
            create_p99_ms: create,
            update_p99_ms: update,
            line,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running

/// Runs the benchmark, writes `control.json` and `control.md` into `opts.out`, prints a summary,
/// and fails if any phase did (a missed latency target is reported, not an error).
pub fn main(opts: &Options) -> Result<()> {
    for tool in ["etcd", "etcdctl"] {
        if which(tool).is_none() {
            bail!(
                "{tool} is not installed (`cargo xtask setup` installs etcd-server and etcd-client)"
            );
        }
    }
    workspace_binary("skiff-apiserver").context(
        "skiff-apiserver must be next to skiff-bench or in $SKIFF_BIN_DIR: build it with \
         `cargo build --release -p skiff-apiserver`",
    )?;
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

/// Prints one progress line.
fn progress(what: impl std::fmt::Display) {
    println!("[control] {what}");
}

/// Starts etcd and the API server, runs every phase, and gathers the results.
pub fn run(opts: &Options) -> Result<Results> {
    let clock = Instant::now();
    let started = meta::now_utc();
    let machine = machine();
    progress(format!(
        "{} on {} ({} cores), {}; output in {}",
        if opts.quick { "quick run" } else { "full run" },
        machine.cpu_model,
        machine.cpus,
        machine.etcd_version,
        opts.out.display()
    ));
    progress("starting etcd (1 member, data in a temporary directory) and skiff-apiserver");
    let etcd = Etcd::start(1).context("starting etcd")?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            encryption: Encryption::SecretsAndConfigMaps,
            ..ApiOptions::default()
        },
    )
    .context("starting skiff-apiserver")?;
    let procs = procfs::Procs::find(&etcd, &api);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;

    let mut run = PhaseRunner {
        api: &api,
        procs: &procs,
        costs: Vec::new(),
        failures: Vec::new(),
        order: Vec::new(),
        notes: Vec::new(),
    };
    let (list, steady, saturation, watch) = runtime.block_on(async {
        // The list phase runs first, so its full list holds exactly its own pods, and the
        // latency phases then run against a store that holds them, as a real cluster would.
        let list = run
            .phase("list", list_budget(opts), phases::list(&api, opts))
            .await;
        let steady = run
            .phase(
                "steady",
                opts.steady() + Duration::from_secs(120),
                phases::steady(&api, opts),
            )
            .await;
        let saturation_budget = (opts.saturation_level() + Duration::from_secs(60))
            * opts.saturation_clients.len() as u32;
        let saturation = run
            .phase(
                "saturation",
                saturation_budget,
                phases::saturation(&api, opts),
            )
            .await;
        let watch_budget = Duration::from_secs(120)
            + Duration::from_secs_f64(opts.watch_updates as f64 / f64::from(WATCH_UPDATES_PER_S));
        let watch = run
            .phase("watch", watch_budget, phases::watch(&api, opts))
            .await;
        (list, steady, saturation, watch)
    });
    drop(runtime);

    let resources = Resources {
        apiserver_pid: procs.apiserver,
        etcd_pid: procs.etcd,
        apiserver_peak_rss_mib: procs.apiserver.and_then(procfs::peak_rss_mib),
        etcd_peak_rss_mib: procs.etcd.and_then(procfs::peak_rss_mib),
        phases: run.costs,
        notes: procs.notes.iter().chain(&run.notes).cloned().collect(),
    };
    let target = Target::judge(steady.as_ref());
    progress(&target.line);
    Ok(Results {
        machine,
        settings: Settings {
            quick: opts.quick,
            steady_seconds: opts.seconds,
            steady_writes_per_s: STEADY_WRITES_PER_S,
            steady_gets_per_s: STEADY_GETS_PER_S,
            saturation_clients: opts.saturation_clients.clone(),
            saturation_seconds_per_level: opts.saturation_level().as_secs_f64(),
            pods: opts.pods,
            list_creators: LIST_CREATORS,
            list_runs: LIST_RUNS,
            watchers: opts.watchers,
            watch_updates: opts.watch_updates,
            watch_updates_per_s: WATCH_UPDATES_PER_S,
            etcd_members: 1,
        },
        started,
        finished: meta::now_utc(),
        run_seconds: clock.elapsed().as_secs_f64(),
        phase_order: run.order,
        steady,
        saturation,
        list,
        watch,
        resources,
        target,
        failures: run.failures,
    })
}

/// Creating the pods dominates: allow for as few as 50 a second.
fn list_budget(opts: &Options) -> Duration {
    Duration::from_secs(120 + opts.pods as u64 / 50)
}

/// A phase's result that can list what went wrong in it.
trait Problems {
    fn problems(&self) -> &[String];
}

macro_rules! problems {
    ($($t:ty),*) => {$(
        impl Problems for $t {
            fn problems(&self) -> &[String] {
                &self.problems
            }
        }
    )*};
}
problems!(Steady, Saturation, List, Watch);

/// Runs phases one after another, measuring what each costs, and collects failures.
struct PhaseRunner<'a> {
    api: &'a ApiServer,
    procs: &'a procfs::Procs,
    costs: Vec<PhaseCost>,
    failures: Vec<String>,
    order: Vec<&'static str>,
    notes: Vec<String>,
}

impl PhaseRunner<'_> {
    /// The API server's latency totals; `None` (and a note) when `/metrics` cannot be read.
    fn server_totals(&mut self) -> Option<server::Totals> {
        // A short blocking read of a loopback socket.
        match tokio::task::block_in_place(|| self.api.metrics()) {
            Ok(text) => Some(server::totals(&text)),
            Err(e) => {
                let note = format!("the API server's /metrics could not be read: {e:#}");
                if !self.notes.contains(&note) {
                    self.notes.push(note);
                }
                None
            }
        }
    }

    async fn phase<T: Problems>(
        &mut self,
        name: &'static str,
        budget: Duration,
        work: impl Future<Output = Result<T>>,
    ) -> Option<T> {
        progress(format!("{name}: starting"));
        self.order.push(name);
        let before = (self.procs.cpu(), self.server_totals());
        let clock = Instant::now();
        let outcome = match tokio::time::timeout(budget, work).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "did not finish within {} s",
                budget.as_secs()
            )),
        };
        let wall = clock.elapsed();
        let after = (self.procs.cpu(), self.server_totals());
        let ((before, totals_before), (after, totals_after)) = (before, after);
        let cost = PhaseCost {
            phase: name,
            wall_s: wall.as_secs_f64(),
            apiserver_cpu_s: after.apiserver.zip(before.apiserver).map(|(a, b)| a - b),
            etcd_cpu_s: after.etcd.zip(before.etcd).map(|(a, b)| a - b),
            benchmark_cpu_s: after.benchmark.zip(before.benchmark).map(|(a, b)| a - b),
            other_cpu_s: procfs::other_cpu(&before, &after),
            steal_s: after.steal.zip(before.steal).map(|(a, b)| a - b),
            server: totals_before
                .zip(totals_after)
                .map(|(b, a)| server::between(&b, &a))
                .unwrap_or_default(),
        };
        let cpu = |v: Option<f64>| v.map_or_else(|| "?".into(), |s| format!("{s:.1} s"));
        progress(format!(
            "{name}: {:.1} s wall; CPU apiserver {}, etcd {}, benchmark {}, other processes {}, \
             stolen {}",
            cost.wall_s,
            cpu(cost.apiserver_cpu_s),
            cpu(cost.etcd_cpu_s),
            cpu(cost.benchmark_cpu_s),
            cpu(cost.other_cpu_s),
            cpu(cost.steal_s)
        ));
        if !cost.server.is_empty() {
            let calls: Vec<String> = cost
                .server
                .iter()
                .map(|c| format!("{} {} x {:.2} ms", c.call, c.calls, c.mean_ms))
                .collect();
            progress(format!("{name}: server-side means: {}", calls.join(", ")));
        }
        self.costs.push(cost);
        match outcome {
            Ok(figures) => {
                for p in figures.problems() {
                    progress(format!("{name}: FAILED: {p}"));
                    self.failures.push(format!("{name}: {p}"));
                }
                Some(figures)
            }
            Err(e) => {
                progress(format!("{name}: FAILED: {e:#}"));
                self.failures.push(format!("{name}: {e:#}"));
                None
            }
        }
    }
}

pub(crate) fn machine() -> Machine {
    let m = meta::gather();
    Machine {
        hostname: m.hostname,
        cpu_model: m.cpu_model,
        cpus: m.cpus,
        memory_gib: m.memory_gib,
        kernel: m.kernel,
        etcd_version: etcd_version(),
    }
}

/// `etcd 3.4.23` from `etcd --version`, or why not.
fn etcd_version() -> String {
    match Command::new("etcd").arg("--version").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("etcd Version:"))
            .map_or_else(
                || "etcd (version unknown)".into(),
                |v| format!("etcd {}", v.trim()),
            ),
        Err(e) => format!("etcd --version failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verb(verb: &'static str, p99_ms: f64) -> VerbFigures {
        VerbFigures {
            verb,
            ok: 10,
            errors: 0,
            conflicts: 0,
            per_second: 100.0,
            latency: Percentiles {
                samples: 10,
                p50_ms: 1.0,
                p90_ms: 2.0,
                p99_ms,
                max_ms: p99_ms,
            },
            first_error: None,
        }
    }

    fn steady(create: f64, update: f64) -> Steady {
        Steady {
            seconds: 1.0,
            writes_per_s: 200.0,
            gets_per_s: 200.0,
            verbs: vec![
                verb("create", create),
                verb("update", update),
                verb("get", 1.0),
            ],
            issue_lag: Percentiles {
                samples: 0,
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
            },
            slowest: Vec::new(),
            problems: Vec::new(),
        }
    }

    #[test]
    fn target_is_met_only_when_both_mutating_verbs_are_under_it() {
        let met = Target::judge(Some(&steady(12.0, 24.9)));
        assert_eq!(met.met, Some(true));
        assert_eq!(
            met.line,
            "mutating calls p99 < 25 ms at 200 writes/s: MET (create p99 12.0 ms, update p99 24.9 ms)"
        );
        let missed = Target::judge(Some(&steady(12.0, 31.0)));
        assert_eq!(missed.met, Some(false));
        assert!(
            missed
                .line
                .contains("MISSED (create p99 12.0 ms, update p99 31.0 ms)")
        );
        let none = Target::judge(None);
        assert_eq!(none.met, None);
        assert!(
            none.line
                .ends_with("NOT MEASURED (the steady phase produced no figures)")
        );
    }

    #[test]
    fn quick_and_full_defaults() {
        let full = Options::new(false, "/tmp/x".into(), None, None, None).unwrap();
        assert_eq!(
            (full.seconds, full.pods, full.watchers, full.watch_updates),
            (30, 10_000, 100, 500)
        );
        assert_eq!(full.saturation_clients, [1, 8, 32, 64]);
        assert_eq!(full.saturation_level(), Duration::from_secs(10));
        let quick = Options::new(true, "/tmp/x".into(), None, Some(500), None).unwrap();
        assert_eq!(
            (
                quick.seconds,
                quick.pods,
                quick.watchers,
                quick.watch_updates
            ),
            (8, 500, 20, 100)
        );
        assert_eq!(quick.saturation_clients, [1, 16]);
        assert!(Options::new(true, "/tmp/x".into(), Some(0), None, None).is_err());
        assert!(Options::new(true, "/tmp/x".into(), None, Some(10), None).is_err());
    }
}
