//! `skiff-bench`: runs the network benchmark and writes its report (`cargo xtask bench` builds
//! and runs it).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use skiff_bench::{
    control, ctpressure, load, manifests,
    model::{Metric, Mode},
    pods, proxy, pull, report,
    runner::{self, Options},
    scale,
};

#[derive(Parser)]
#[command(
    name = "skiff-bench",
    about = "Skiff's eBPF datapath against the direct path and kube-proxy-style iptables and \
             nftables rules, at several numbers of Services"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark and write results.json, report.md and PNG plots.
    Run {
        /// A few minutes: 2 repetitions of 1-second measurements.
        #[arg(long)]
        quick: bool,
        /// Numbers of Services, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
        scales: Vec<usize>,
        /// Repetitions of every measurement (default 5, quick 2).
        #[arg(long)]
        repetitions: Option<usize>,
        /// Seconds per measurement (default 3, quick 1).
        #[arg(long)]
        seconds: Option<u64>,
        /// Seconds of unmeasured load through each path before its measurements (0: none).
        #[arg(long, default_value_t = 1)]
        warmup: u64,
        /// Do not pin clients and servers to separate CPUs (as the reports before pinning ran:
        /// on two vCPUs, pinning trades absolute latency and throughput for steadier ratios).
        #[arg(long)]
        no_pin: bool,
        /// Paths to compare, comma-separated (direct, skiff, iptables, nftables).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "direct,skiff,iptables,nftables"
        )]
        modes: Vec<String>,
        /// Where the results go.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the control-plane benchmark against a real etcd and API server; writes control.json
    /// and control.md.
    Control {
        /// About 20 seconds: shorter phases, fewer pods and watchers.
        #[arg(long)]
        quick: bool,
        /// Where the results go.
        #[arg(long)]
        out: PathBuf,
        /// Seconds of the steady-rate phase; each saturation level runs a third of it
        /// (default 30, quick 8).
        #[arg(long)]
        seconds: Option<u64>,
        /// Pods to create and list (default 10000, quick 2000).
        #[arg(long)]
        pods: Option<usize>,
        /// Watchers of the watch fan-out (default 100, quick 20).
        #[arg(long)]
        watchers: Option<usize>,
    },
    /// Run the control-plane scale benchmark: hollow nodes in this process against a real
    /// etcd, API server, scheduler and controller-manager; writes results.json and report.md.
    Scale {
        /// About a minute: 100 nodes, 1,000 pods, a 100-replica Deployment.
        #[arg(long)]
        quick: bool,
        /// Where the results go.
        #[arg(long)]
        out: PathBuf,
        /// Numbers of nodes to measure scheduling at, ascending, comma-separated (default
        /// 1000,5000, quick 100); the Deployment runs at the last.
        #[arg(long, value_delimiter = ',')]
        nodes: Option<Vec<usize>>,
        /// Pods of each scheduling measurement (default 10000, quick 1000).
        #[arg(long)]
        pods: Option<usize>,
        /// The Deployment's replicas (default 1000, quick 100).
        #[arg(long)]
        replicas: Option<usize>,
    },
    /// Run the node agent's pod startup benchmark on a one-node cluster (real etcd, API
    /// server, containerd and agent); writes results.json and report.md.
    Pods {
        /// About a minute: 10 pods to Running and to Ready, 20 for the resources, a 3 s window.
        #[arg(long)]
        quick: bool,
        /// Where the results go.
        #[arg(long)]
        out: PathBuf,
        /// Pods of the Running and Ready measurements (default 50, quick 10); the resource
        /// measurement runs twice as many.
        #[arg(long)]
        pods: Option<usize>,
    },
    /// Image pulls from a registry on the test fabric: cold pulls of a ~100 MiB image through
    /// the agent's runtime against `ctr image pull`, and pod startup to Running with the image
    /// absent and present; writes results.json and report.md.
    Pull {
        /// About a minute: 2 pulls per path, 5 pods.
        #[arg(long)]
        quick: bool,
        /// Where the results go.
        #[arg(long)]
        out: PathBuf,
        /// Measured cold pulls per path (default 5, quick 2).
        #[arg(long)]
        runs: Option<usize>,
        /// Pods of each startup measurement (default 20, quick 5).
        #[arg(long)]
        pods: Option<usize>,
    },
    /// The service proxy's programming latency on a one-node cluster: API write → the eBPF
    /// datapath serving it, with 1, 1,000 and 10,000 Services.
    Proxy {
        /// 1 and 100 Services, 5 samples each.
        #[arg(long)]
        quick: bool,
        /// Where the results go.
        #[arg(long)]
        out: PathBuf,
    },
    /// Long-lived idle flows through a Service VIP while short connections churn through the
    /// eBPF datapath at full speed, ten times and more the short-lived conntrack table; writes
    /// conntrack.json and conntrack.md and fails if an idle flow was lost.
    Conntrack {
        /// About half a minute: 200 idle flows asked every 2 s, 20 s of churn.
        #[arg(long)]
        quick: bool,
        /// Where the results go.
        #[arg(long)]
        out: PathBuf,
        /// Seconds of churn (default 180, quick 20).
        #[arg(long)]
        seconds: Option<u64>,
        /// Idle flows kept open (default 1000, quick 200).
        #[arg(long)]
        idle_flows: Option<usize>,
        /// Seconds between two requests on each idle flow (default 30, quick 2).
        #[arg(long)]
        request_every: Option<u64>,
    },
    /// How many files of a corpus of public Kubernetes manifests Skiff accepts unchanged, and
    /// the commonest reasons for refusing the others.
    Manifests {
        /// The corpus: `repo<TAB>commit<TAB>path` lines (see bench/corpus/README.md).
        #[arg(long, default_value = "bench/corpus/manifests.tsv")]
        list: PathBuf,
        /// Where the files are: `<root>/<owner>+<name>/<path>`.
        #[arg(long)]
        root: PathBuf,
        /// Refusal reasons to print.
        #[arg(long, default_value_t = 25)]
        top: usize,
    },
    /// Serve the benchmark's request/response protocol (runs inside each backend pod).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long)]
        rr_port: u16,
        #[arg(long)]
        crr_port: u16,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Serve {
            name,
            rr_port,
            crr_port,
        } => load::serve(&name, rr_port, crr_port),
        Cmd::Control {
            quick,
            out,
            seconds,
            pods,
            watchers,
        } => control::Options::new(quick, out, seconds, pods, watchers)
            .and_then(|opts| control::main(&opts)),
        Cmd::Scale {
            quick,
            out,
            nodes,
            pods,
            replicas,
        } => scale::Options::new(quick, out, nodes, pods, replicas)
            .and_then(|opts| scale::main(&opts)),
        Cmd::Conntrack {
            quick,
            out,
            seconds,
            idle_flows,
            request_every,
        } => ctpressure::Options::new(quick, out, seconds, idle_flows, request_every)
            .and_then(|opts| ctpressure::main(&opts)),
        Cmd::Manifests { list, root, top } => manifests::main(&list, &root, top),
        Cmd::Proxy { quick, out } => proxy::main(&proxy::Options::new(quick, out)),
        Cmd::Pull {
            quick,
            out,
            runs,
            pods,
        } => pull::Options::new(quick, out, runs, pods).and_then(|opts| pull::main(&opts)),
        Cmd::Pods { quick, out, pods } => {
            pods::Options::new(quick, out, pods).and_then(|opts| pods::main(&opts))
        }
        Cmd::Run {
            quick,
            scales,
            repetitions,
            seconds,
            warmup,
            no_pin,
            modes,
            out,
        } => options(
            quick,
            scales,
            repetitions,
            seconds,
            Method {
                warmup,
                pin: !no_pin,
            },
            &modes,
            out,
        )
        .and_then(|opts| run(&opts)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How each measurement is prepared: seconds of warm-up, and whether to pin.
#[derive(Debug, Clone, Copy)]
struct Method {
    warmup: u64,
    pin: bool,
}

fn options(
    quick: bool,
    scales: Vec<usize>,
    repetitions: Option<usize>,
    seconds: Option<u64>,
    method: Method,
    modes: &[String],
    out: PathBuf,
) -> Result<Options> {
    if scales.is_empty() || scales.iter().any(|&n| n == 0 || n > 20_000) {
        bail!("--scales takes numbers of Services from 1 to 20000");
    }
    let repetitions = repetitions.unwrap_or(if quick { 2 } else { 5 });
    let seconds = seconds.unwrap_or(if quick { 1 } else { 3 });
    if repetitions == 0 || seconds == 0 {
        bail!("--repetitions and --seconds must be at least 1");
    }
    let modes = modes
        .iter()
        .map(|m| {
            Mode::ALL
                .into_iter()
                .find(|x| x.name() == m)
                .with_context(|| format!("unknown mode {m:?} (direct, skiff, iptables, nftables)"))
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(m) = modes
        .iter()
        .enumerate()
        .find_map(|(i, m)| modes[..i].contains(m).then_some(m))
    {
        bail!("--modes names {} twice", m.name());
    }
    Ok(Options {
        quick,
        scales,
        repetitions,
        duration: Duration::from_secs(seconds),
        warmup: Duration::from_secs(method.warmup),
        pin: method.pin,
        modes,
        out,
    })
}

fn run(opts: &Options) -> Result<()> {
    let results = runner::run(opts)?;
    let written = report::write_report(&results, &opts.out)?;
    println!("\n{}", report::summary_table(&results));
    println!("results in {}:", opts.out.display());
    for p in written {
        println!("    {}", p.display());
    }
    {
        // Every path produced every figure it has, at every scale, in every repetition (the
        // runner has already checked that each path's own counters saw the traffic).
        let mut missing = Vec::new();
        for &scale in &opts.scales {
            for &mode in &opts.modes {
                for metric in Metric::ALL.into_iter().filter(|m| m.applies_to(mode)) {
                    let n = results
                        .samples
                        .iter()
                        .filter(|s| s.scale == scale && s.mode == mode && s.metric == metric)
                        .filter(|s| s.value.is_finite() && s.value > 0.0)
                        .count();
                    if n != opts.repetitions {
                        missing.push(format!("{} {} at {scale}", mode.name(), metric.id()));
                    }
                }
            }
        }
        if !missing.is_empty() {
            bail!("figures missing: {}", missing.join(", "));
        }
        println!("check: every path produced every figure; traffic was verified on each path");
    }
    Ok(())
}
