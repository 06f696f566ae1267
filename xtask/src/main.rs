//! Developer tasks: `cargo xtask setup | build-ebpf | images | test | fmt | lint | demo |
//! demo-datapath | bench | bench-control | bench-scale | bench-pods | bench-proxy | bench-pull |
//! bench-conntrack`.

mod images;

use std::{
    env,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// Debian packages the project needs: build (protobuf for the gRPC crates), datapath tooling,
/// control plane and runtime, and the servers and load tools the tests, demo and benchmarks use.
const PACKAGES: &[&str] = &[
    "bpftool",
    "ethtool",
    "iproute2",
    "iputils-ping",
    "tcpdump",
    "curl",
    "util-linux",
    "protobuf-compiler",
    "libprotobuf-dev",
    "etcd-server",
    "etcd-client",
    "containerd",
    "runc",
    "busybox-static",
    "iptables",
    "nftables",
    "nginx-light",
    "redis-server",
    "docker-registry",
    "skopeo",
    "apache2-utils",
    "wrk",
    "iperf3",
    "socat",
    "netcat-openbsd",
    "conntrack",
    "gnuplot-nox",
    "openssl",
];

const BPF_LINKER_VERSION: &str = "0.10.4";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Skiff developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Prepare this machine: Debian packages, nightly rust-src, bpf-linker, bpffs. Idempotent.
    Setup,
    /// Build the eBPF object the agent embeds.
    BuildEbpf,
    /// Build the OCI image archives the node agent imports (target/images/busybox.tar) and the
    /// server images built from Debian's packages (target/images/servers: nginx, redis).
    Images,
    /// Set up, build, and run every unit and privileged integration test.
    Test {
        /// Extra arguments for cargo-nextest (a filter, for example).
        #[arg(last = true)]
        nextest_args: Vec<String>,
    },
    /// Format the code (nightly rustfmt, for import grouping).
    Fmt,
    /// rustfmt and clippy (host workspace and the eBPF programs on their target), as CI runs them.
    Lint,
    /// Set up, build, and run the cluster demo (`skiff-local demo`): a three-node local
    /// cluster runs examples/web.yaml, and a client pod calls the Service's ClusterIP, answered
    /// by web pods on every node through the eBPF service proxy. Leaves the cluster up.
    Demo,
    /// Set up, build, and run the datapath-only demo: a Service VIP balanced over nginx pods by
    /// the standalone loader, then everything removed.
    DemoDatapath,
    /// Set up, build (release), and run the network benchmark; writes results.json, report.md
    /// and PNG plots.
    Bench {
        /// About five minutes instead of twenty: 2 repetitions of 1-second measurements.
        #[arg(long)]
        quick: bool,
        /// Results directory (default target/bench/run-<unix time>, linked as target/bench/latest).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Further arguments for skiff-bench run (--scales, --repetitions, --seconds, --modes).
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
    /// Set up, build (release), and run the control-plane benchmark (a real etcd and API server):
    /// latency at 200 writes/s and at saturation, lists of 10,000 pods, watch fan-out.
    BenchControl {
        /// About half a minute instead of a few: shorter phases, 2,000 pods, 20 watchers.
        #[arg(long)]
        quick: bool,
        /// Results directory (default target/bench/control-<unix time>, linked as
        /// target/bench/control-latest).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Further arguments for skiff-bench control (--seconds, --pods, --watchers).
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
    /// Set up, build (release), and run the control-plane scale benchmark: hollow nodes against
    /// a real etcd, API server, scheduler and controller-manager; pods bound per second at
    /// 1,000 and 5,000 nodes and a 1,000-replica Deployment's time to Running.
    BenchScale {
        /// About a minute instead of several: 100 nodes, 1,000 pods, 100 replicas.
        #[arg(long)]
        quick: bool,
        /// Results directory (default target/bench/scale-<unix time>, linked as
        /// target/bench/scale-latest).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Further arguments for skiff-bench scale (--nodes, --pods, --replicas).
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
    /// Set up, build (release) and run the node agent's pod startup benchmark on a one-node
    /// cluster: time to Running and to Ready, the agent's memory and CPU with 100 pods.
    BenchPods {
        /// About a minute: 10 pods per measurement, 20 for the resources.
        #[arg(long)]
        quick: bool,
        /// Results directory (default target/bench/pods-<unix time>, linked as
        /// target/bench/pods-latest).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Further arguments for skiff-bench pods (--pods).
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
    /// Set up, build (release) and run the image pull benchmark: a ~100 MB image pulled from a
    /// registry on a fabric through the agent's runtime and through containerd's `ctr`, and pod
    /// startup with the image cold and present.
    BenchPull {
        /// About half a minute: fewer pulls and pods.
        #[arg(long)]
        quick: bool,
        /// Results directory (default target/bench/pull-<unix time>, linked as
        /// target/bench/pull-latest).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Set up, build (release) and run the conntrack pressure benchmark: long-lived idle flows
    /// through a Service VIP while short connections churn at ten times and more the
    /// short-lived conntrack table; fails if an idle flow was lost.
    BenchConntrack {
        /// About half a minute: 200 idle flows asked every 2 s, 20 s of churn.
        #[arg(long)]
        quick: bool,
        /// Results directory (default target/bench/conntrack-<unix time>, linked as
        /// target/bench/conntrack-latest).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Further arguments for skiff-bench conntrack (--seconds, --idle-flows,
        /// --request-every).
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
    /// Set up, build (release) and run the service proxy's programming benchmark on a one-node
    /// cluster: API write → the eBPF datapath serving it, at 1, 1,000 and 10,000 Services.
    BenchProxy {
        /// In seconds: 1 and 100 Services, 5 samples each.
        #[arg(long)]
        quick: bool,
        /// Results directory (default target/bench/proxy-<unix time>, linked as
        /// target/bench/proxy-latest).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup(),
        Task::BuildEbpf => build_ebpf().map(|_| ()),
        Task::Images => images::build(&target_dir()),
        Task::Test { nextest_args } => test(&nextest_args),
        Task::Fmt => fmt(false),
        Task::Lint => lint(),
        Task::Demo => demo(),
        Task::DemoDatapath => demo_datapath(),
        Task::Bench {
            quick,
            out,
            bench_args,
        } => bench(quick, out, &bench_args),
        Task::BenchControl {
            quick,
            out,
            bench_args,
        } => bench_control(quick, out, &bench_args),
        Task::BenchScale {
            quick,
            out,
            bench_args,
        } => bench_scale(quick, out, &bench_args),
        Task::BenchPods {
            quick,
            out,
            bench_args,
        } => bench_node("pods", quick, out, &bench_args),
        Task::BenchProxy { quick, out } => bench_node("proxy", quick, out, &[]),
        Task::BenchPull { quick, out } => bench_node("pull", quick, out, &[]),
        Task::BenchConntrack {
            quick,
            out,
            bench_args,
        } => bench_conntrack(quick, out, &bench_args),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn step(msg: &str) {
    println!("==> {msg}");
}

/// Runs a command, failing with the command line and its status.
fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout, or None if it cannot run or fails.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|u| u.trim() == "0")
}

fn setup() -> Result<()> {
    let started = Instant::now();
    step("setup: checking this machine");
    if !is_root() {
        bail!("setup needs root (packages, bpffs, and the privileged tests); run it as root");
    }
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "setup knows Debian only (this project's machines run Debian 12); install {PACKAGES:?} by hand"
        );
    }

    // 1. Debian packages.
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        println!("    packages: all {} present", PACKAGES.len());
    } else {
        println!("    packages: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        let mut install = Command::new("apt-get");
        install
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        let result = run(&mut install);
        let still: Vec<&str> = missing
            .iter()
            .copied()
            .filter(|p| !dpkg_installed(p))
            .collect();
        if !still.is_empty() {
            bail!(
                "could not install these Debian packages: {} ({})",
                still.join(" "),
                result.err().map_or_else(String::new, |e| e.to_string())
            );
        }
    }

    // 2. Nightly with rust-src, for the eBPF build.
    let toolchains = output("rustup", &["toolchain", "list"]).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("    rust: installing the nightly toolchain");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("installing the nightly toolchain")?;
    }
    let sysroot =
        output("rustc", &["+nightly", "--print", "sysroot"]).context("running rustc +nightly")?;
    if Path::new(sysroot.trim())
        .join("lib/rustlib/src/rust/library")
        .is_dir()
    {
        println!("    rust: nightly rust-src present");
    } else {
        println!("    rust: installing rust-src for nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
        .context("installing rust-src for nightly")?;
    }

    // 3. bpf-linker (this exact line uses rustc's own LLVM; see shared/TOOLCHAIN.md).
    let linker = output("bpf-linker", &["--version"]).unwrap_or_default();
    if linker.contains(BPF_LINKER_VERSION) {
        println!("    bpf-linker: {BPF_LINKER_VERSION} present");
    } else {
        println!("    bpf-linker: installing {BPF_LINKER_VERSION} (about a minute)");
        run(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]))
        .context("installing bpf-linker")?;
    }

    // 4. cargo-nextest runs the test binaries, one process per test.
    if output("cargo", &["nextest", "--version"]).is_some() {
        println!("    cargo-nextest: present");
    } else {
        println!("    cargo-nextest: installing (a few minutes)");
        run(Command::new("cargo").args(["install", "cargo-nextest", "--locked"]))
            .context("installing cargo-nextest")?;
    }

    // 5. bpffs, where the datapath pins its programs and maps.
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        println!("    bpffs: mounted at /sys/fs/bpf");
    } else {
        println!("    bpffs: mounting at /sys/fs/bpf");
        fs::create_dir_all("/sys/fs/bpf").ok();
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
            .context("mounting bpffs at /sys/fs/bpf")?;
    }
    println!("    setup done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|s| s.trim() == "install ok installed")
}

/// Builds the eBPF object and returns its path.
fn build_ebpf() -> Result<PathBuf> {
    let started = Instant::now();
    step("build-ebpf: building the eBPF programs (nightly, bpfel-unknown-none)");
    let dir = workspace_root().join("ebpf/programs");
    run(&mut nightly_cargo(&dir, ["build", "--release"]))
        .context("building the eBPF object (did `cargo xtask setup` run?)")?;
    let object = target_dir().join("bpfel-unknown-none/release/skiff-ebpf");
    let bytes = fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    if !contains(&bytes, b".BTF\0") {
        bail!(
            "{} has no .BTF section; the agent needs BTF",
            object.display()
        );
    }
    println!(
        "    {} ({} KiB, with BTF) in {:.1} s",
        object.display(),
        bytes.len() / 1024,
        started.elapsed().as_secs_f64()
    );
    Ok(object)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root()).args(args);
    c
}

fn test(nextest_args: &[String]) -> Result<()> {
    let started = Instant::now();
    setup()?;
    build_ebpf()?;
    step("test: building the workspace binaries the integration tests start");
    run(&mut cargo(["build", "--workspace", "--bins"]))?;
    step("test: running unit and privileged integration tests (cargo nextest)");
    let mut cmd = cargo([
        "nextest",
        "run",
        "--workspace",
        "--exclude",
        "skiff-ebpf",
        "--no-fail-fast",
    ]);
    cmd.args(nextest_args)
        .env("SKIFF_BIN_DIR", target_dir().join("debug"));
    run(&mut cmd)?;
    println!(
        "    tests passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Nightly-only rustfmt options (see rustfmt.toml).
const FMT_CONFIG: &str = "group_imports=StdExternalCrate,imports_granularity=Crate";

fn fmt(check: bool) -> Result<()> {
    step(if check {
        "lint: rustfmt --check"
    } else {
        "fmt"
    });
    let mut cmd = nightly_cargo(&workspace_root(), ["fmt", "--all", "--"]);
    if check {
        cmd.arg("--check");
    }
    run(cmd.args(["--config", FMT_CONFIG]))
}

fn lint() -> Result<()> {
    fmt(true)?;
    build_ebpf()?;
    step("lint: clippy (host workspace)");
    run(&mut cargo([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("lint: clippy (eBPF programs, bpfel-unknown-none)");
    run(&mut nightly_cargo(
        &workspace_root().join("ebpf/programs"),
        ["clippy", "--release", "--", "-D", "warnings"],
    ))
}

/// `cargo +nightly <args>` in `dir`, sharing the workspace's target directory. It goes through
/// the rustup proxy (not $CARGO, which does not understand `+nightly`), without the variables
/// the outer stable cargo exports, which would make it use stable.
fn nightly_cargo<const N: usize>(dir: &Path, args: [&str; N]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir)
        .arg("+nightly")
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir());
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn demo() -> Result<()> {
    setup()?;
    build_ebpf()?;
    step("demo: building");
    run(&mut cargo(["build", "--workspace", "--bins"]))?;
    step("demo: running skiff-local demo");
    let bin = target_dir().join("debug");
    run(Command::new(bin.join("skiff-local"))
        .arg("demo")
        .env("SKIFF_BIN_DIR", &bin))
}

fn demo_datapath() -> Result<()> {
    setup()?;
    build_ebpf()?;
    step("demo-datapath: building");
    run(&mut cargo(["build", "--workspace", "--bins"]))?;
    step("demo-datapath: running");
    run(Command::new(target_dir().join("debug/skiff-datapath-demo"))
        .env("SKIFF_BIN_DIR", target_dir().join("debug")))
}

/// The results directory of a benchmark run (`target/bench/<tag>-<unix time>` unless given),
/// created and linked as `target/bench/<latest>`.
fn results_dir(out: Option<PathBuf>, tag: &str, latest: &str) -> Result<PathBuf> {
    let runs = target_dir().join("bench");
    let out = match out {
        Some(dir) => dir,
        None => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            runs.join(format!("{tag}-{secs}"))
        }
    };
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let link = runs.join(latest);
    let _ = fs::remove_file(&link);
    let _ = std::os::unix::fs::symlink(fs::canonicalize(&out)?, &link);
    Ok(out)
}

fn bench_control(quick: bool, out: Option<PathBuf>, bench_args: &[String]) -> Result<()> {
    setup()?;
    build_ebpf()?;
    step("bench-control: building (release)");
    run(&mut cargo([
        "build",
        "--release",
        "-p",
        "skiff-bench",
        "-p",
        "skiff-apiserver",
        "-p",
        "skiff-control",
    ]))?;
    let out = results_dir(out, "control", "control-latest")?;
    step(if quick {
        "bench-control: running the quick phases (about half a minute)"
    } else {
        "bench-control: running every phase (a few minutes)"
    });
    run_bench("control", quick, &out, bench_args)
}

fn bench_scale(quick: bool, out: Option<PathBuf>, bench_args: &[String]) -> Result<()> {
    setup()?;
    build_ebpf()?;
    step("bench-scale: building (release)");
    run(&mut cargo([
        "build",
        "--release",
        "-p",
        "skiff-bench",
        "-p",
        "skiff-apiserver",
        "-p",
        "skiff-control",
    ]))?;
    let out = results_dir(out, "scale", "scale-latest")?;
    step(if quick {
        "bench-scale: running the quick phases (about a minute)"
    } else {
        "bench-scale: running every phase (several minutes)"
    });
    run_bench("scale", quick, &out, bench_args)
}

/// A one-node benchmark (`pods`, `proxy`, `pull`): etcd, the API server, containerd and an
/// agent.
fn bench_node(kind: &str, quick: bool, out: Option<PathBuf>, bench_args: &[String]) -> Result<()> {
    setup()?;
    build_ebpf()?;
    step(&format!("bench-{kind}: building (release)"));
    run(&mut cargo([
        "build",
        "--release",
        "-p",
        "skiff-bench",
        "-p",
        "skiff-apiserver",
        "-p",
        "skiff-control",
        "-p",
        "skiff-agent",
    ]))?;
    let out = results_dir(out, kind, &format!("{kind}-latest"))?;
    step(&format!(
        "bench-{kind}: running {}",
        if quick {
            "the quick phases (about a minute)"
        } else {
            "every phase (a few minutes)"
        }
    ));
    run_bench(kind, quick, &out, bench_args)
}

/// The conntrack pressure benchmark: the datapath in skiff-bench's own process, no cluster.
fn bench_conntrack(quick: bool, out: Option<PathBuf>, bench_args: &[String]) -> Result<()> {
    setup()?;
    build_ebpf()?;
    step("bench-conntrack: building (release)");
    run(&mut cargo(["build", "--release", "-p", "skiff-bench"]))?;
    let out = results_dir(out, "conntrack", "conntrack-latest")?;
    step(if quick {
        "bench-conntrack: 20 s of churn under 200 idle flows (about half a minute)"
    } else {
        "bench-conntrack: 180 s of churn under 1,000 idle flows (about three minutes)"
    });
    run_bench("conntrack", quick, &out, bench_args)
}

/// Runs `skiff-bench <subcommand> --out OUT [--quick] ARGS...` from the release build.
fn run_bench(subcommand: &str, quick: bool, out: &Path, args: &[String]) -> Result<()> {
    let mut cmd = Command::new(target_dir().join("release/skiff-bench"));
    cmd.arg(subcommand).arg("--out").arg(out);
    if quick {
        cmd.arg("--quick");
    }
    run(cmd.args(args))
}

fn bench(quick: bool, out: Option<PathBuf>, bench_args: &[String]) -> Result<()> {
    setup()?;
    build_ebpf()?;
    step("bench: building (release)");
    run(&mut cargo(["build", "--release", "-p", "skiff-bench"]))?;
    let out = results_dir(out, "run", "latest")?;
    step(if quick {
        "bench: running the quick matrix (a few minutes)"
    } else {
        "bench: running the full matrix (about twenty minutes)"
    });
    run_bench("run", quick, &out, bench_args)
}
