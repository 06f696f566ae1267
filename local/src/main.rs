//! `skiff-local`: parses the command line and calls the library.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use skiff_local::{
    Layout, Progress, UpOptions, default_bin_dir,
    demo::{self, DemoOptions},
    down::{self, Outcome},
    instructions,
    layout::DEFAULT_NAME,
    restart, status,
};

/// A multi-node Skiff cluster on this machine: etcd, containerd, the API server, the scheduler
/// and the controller-manager as processes of the cluster, and every node in its own network
/// namespace on a bridge, with its own node agent. Needs root.
#[derive(Debug, Parser)]
#[command(name = "skiff-local", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a cluster and wait until every node is Ready; prints how to point skiffctl at it.
    Up(UpArgs),
    /// Stop every process of the cluster and remove everything it made.
    Down(DownArgs),
    /// Show whether every process runs and every node is Ready (exit 1 when not fully up).
    Status(Target),
    /// The whole cluster at work: (re)start a cluster, run examples/web.yaml on it (a web
    /// Deployment, its Service, a client pod on the last node) and call the Service from the
    /// client pod (its ClusterIP, then its node port on every node), showing which pod on which
    /// node answered; then run examples/app.yaml (nginx, an app, redis, ConfigMaps, a Secret)
    /// from the cluster's registry, call it through nginx and edit nginx's ConfigMap live.
    /// Leaves the cluster up.
    Demo(DemoArgs),
    /// Stop processes of the cluster and start them again with the same command line (e.g.
    /// `agent-node-1`, or `agents` for every node agent); `status` lists their names.
    Restart(RestartArgs),
    /// Push an image into the cluster's registry: `skiff-local push oci-archive:app.tar myapp:1`
    /// (skopeo, run inside the registry's network namespace); manifests then name it
    /// `10.250.0.2:5000/myapp:1`.
    Push(PushArgs),
}

#[derive(Debug, Args)]
struct PushArgs {
    #[command(flatten)]
    target: Target,
    /// What to push, as skopeo names it: `oci-archive:PATH[:TAG]`, `oci:DIR[:TAG]`,
    /// `docker-archive:PATH`, ...
    source: String,
    /// Where, in the registry: `REPOSITORY:TAG` (`myapp:1`, `team/app:2.0`).
    dest: String,
}

/// Which cluster.
#[derive(Debug, Args)]
struct Target {
    /// The cluster's name: part of its namespace, cgroup and containerd namespace names.
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
    /// The cluster's directory: state, tokens, logs, data [default: /var/lib/skiff-local/NAME].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct UpArgs {
    #[command(flatten)]
    target: Target,
    /// Number of nodes (each a network namespace with its own agent).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// A directory of OCI image archives (*.tar) for the nodes to import, the offline path
    /// [default: build busybox from /bin/busybox into DIR/images, push it into the registry
    /// and pull it from there (imported only with --no-registry)].
    #[arg(long, value_name = "DIR")]
    image_dir: Option<PathBuf>,
    /// The API server's loopback port [default: a free one].
    #[arg(long, value_name = "PORT")]
    api_port: Option<u16>,
    /// Seconds every node may take to become Ready.
    #[arg(long, default_value_t = 120)]
    ready_timeout: u64,
    /// A further flag for every node agent (repeat for several), e.g. --agent-arg=--max-pods=50.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    agent_arg: Vec<String>,
    /// A further flag for the controller-manager (repeat for several), e.g.
    /// --controller-arg=--node-monitor-grace-period=4.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    controller_arg: Vec<String>,
    /// Do not run the cluster's registry (images then come only from the image directory).
    #[arg(long)]
    no_registry: bool,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// The cluster's name (a cluster of this name that is up is taken down first).
    #[arg(long, default_value = "demo")]
    name: String,
    /// The cluster's directory: state, tokens, logs, data [default: /var/lib/skiff-local/NAME].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Number of nodes; the client pod runs on the last.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Requests to send to the Service (more if some web pod has not answered by then).
    #[arg(long, default_value_t = 12)]
    requests: usize,
    /// Do not run the cluster's registry; the part with examples/app.yaml, whose images come
    /// from it, is skipped.
    #[arg(long)]
    no_registry: bool,
}

#[derive(Debug, Args)]
struct RestartArgs {
    #[command(flatten)]
    target: Target,
    /// Seconds each process has to stop after SIGTERM before it gets SIGKILL.
    #[arg(long, default_value_t = 10)]
    grace: u64,
    /// Seconds the restarted processes have to serve again (etcd healthy, the API server
    /// answering, an agent renewing its node's Lease, ...) before restart fails.
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
    /// The processes: names as `status` shows them, or `agents`.
    #[arg(required = true)]
    processes: Vec<String>,
}

#[derive(Debug, Args)]
struct DownArgs {
    #[command(flatten)]
    target: Target,
    /// Seconds each process has to stop after SIGTERM before it gets SIGKILL.
    #[arg(long, default_value_t = 10)]
    grace: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A flag set on SIGINT or SIGTERM, so that an interrupted `up` removes what it made. The
/// cluster's processes run in their own sessions, so a terminal's Ctrl-C reaches only this one.
fn cancel_on_signal(message: &'static str) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("{message}");
            set.store(true, Ordering::Relaxed);
        });
    });
    flag
}

fn run(cli: Cli) -> Result<ExitCode> {
    let progress = Progress::new();
    match cli.command {
        Command::Up(args) => {
            let layout = Layout::new(&args.target.name, args.target.dir.as_deref())?;
            let opts = UpOptions {
                layout: layout.clone(),
                nodes: args.nodes,
                image_dir: args.image_dir,
                bin_dir: default_bin_dir()?,
                api_port: args.api_port,
                ready_timeout: Duration::from_secs(args.ready_timeout),
                agent_args: args.agent_arg,
                controller_args: args.controller_arg,
                registry: !args.no_registry,
                cancel: Some(cancel_on_signal(
                    "interrupted: stopping and removing what this up made",
                )),
            };
            let state = skiff_local::up(&opts, &progress)?;
            progress.step(format!("up in {:.1} s", progress.elapsed_secs()));
            println!("\n{}", instructions(&layout, &state));
            Ok(ExitCode::SUCCESS)
        }
        Command::Down(args) => {
            let layout = Layout::new(&args.target.name, args.target.dir.as_deref())?;
            match down::down(&layout, Duration::from_secs(args.grace), &progress)? {
                Outcome::NothingToDo => println!(
                    "nothing to do: no cluster named {:?} in {}",
                    layout.name(),
                    layout.dir().display()
                ),
                Outcome::Removed => progress.step(format!(
                    "cluster {:?} removed in {:.1} s",
                    layout.name(),
                    progress.elapsed_secs()
                )),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let layout = Layout::new(&args.name, args.dir.as_deref())?;
            let bin_dir = default_bin_dir()?;
            let opts = DemoOptions {
                layout: layout.clone(),
                nodes: args.nodes,
                requests: args.requests,
                registry: !args.no_registry,
                bin_dir: bin_dir.clone(),
                cancel: Some(cancel_on_signal(
                    "interrupted: stopping (a cluster not up yet is removed; once up, it stays up)",
                )),
            };
            let report = demo::demo(&opts, &progress)?;
            let app = match &report.app {
                Some(a) => format!(
                    "; {} requests through nginx to the app and redis answered, and the edited ConfigMap served after {:.1} s",
                    a.visits.len(),
                    a.edit_served_after.as_secs_f64()
                ),
                None => String::new(),
            };
            progress.step(format!(
                "demo done in {:.1} s: every request answered, by all {} web pods{app}",
                progress.elapsed_secs(),
                report.backends.len()
            ));
            println!("\n{}", demo::next_steps(&layout, &bin_dir, &report));
            Ok(ExitCode::SUCCESS)
        }
        Command::Restart(args) => {
            let layout = Layout::new(&args.target.name, args.target.dir.as_deref())?;
            restart::restart(
                &layout,
                &args.processes,
                Duration::from_secs(args.grace),
                Duration::from_secs(args.ready_timeout),
                &progress,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Push(args) => {
            let layout = Layout::new(&args.target.name, args.target.dir.as_deref())?;
            let reference = skiff_local::push::push(&layout, &args.source, &args.dest)?;
            println!("pushed {} as {reference}", args.source);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(target) => {
            let layout = Layout::new(&target.name, target.dir.as_deref())?;
            match status::status(&layout)? {
                None => {
                    println!(
                        "no cluster named {:?} in {}",
                        layout.name(),
                        layout.dir().display()
                    );
                    Ok(ExitCode::FAILURE)
                }
                Some(report) => {
                    print!("{}", report.render(&layout));
                    Ok(if report.healthy() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
            }
        }
    }
}
