//! Local clusters in tests: one `skiff-local` cluster per test with a unique name and
//! directory, taken down when the test leaves it up, the checks that a cluster left nothing
//! behind (shared by tests/tests/local.rs, tests/tests/demo.rs and tests/tests/e2e.rs), and a
//! running cluster driven through the test bed's blocking admin client ([`LocalRun`]).

use std::{
    collections::BTreeSet,
    fs,
    ops::Deref,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use skiff_agent::datapath::{
    PinLayout,
    show::{self, Report, Sections},
};
use skiff_api::client::Client;
use skiff_local::{
    Layout, State,
    down::leftovers,
    layout::BPF_PIN_ROOT,
    process::{ProcInfo, is_alive},
    sys,
};
use skiff_testbed::{
    cluster::Admin, containerd::containerd_available, control::etcd_available, privileged,
    unique_prefix, workspace_binary,
};

/// Whether this host can run a local-cluster test; under `CI=true` a host that cannot fails
/// it.
pub fn can_run(test: &str) -> bool {
    privileged(test) && etcd_available(test) && containerd_available(test)
}

/// One cluster of one test: a unique name and directory. Dropping it runs `skiff-local down`
/// when the test left the cluster up (a failed assertion), so a failure leaks nothing.
#[derive(Debug)]
pub struct LocalCluster {
    bin: PathBuf,
    name: String,
    dir: PathBuf,
}

impl LocalCluster {
    pub fn new(tag: &str) -> Result<LocalCluster> {
        let bin = workspace_binary("skiff-local")?;
        // Short and unique: the name is part of namespace, cgroup and pin names.
        let name = format!("t{}{tag}", std::process::id());
        let dir = std::env::temp_dir().join(unique_prefix("local"));
        Ok(LocalCluster { bin, name, dir })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn layout(&self) -> Result<Layout> {
        Layout::new(&self.name, Some(&self.dir))
    }

    /// Runs `skiff-local <command> --name N --dir D <extra>`.
    pub fn run(&self, command: &str, extra: &[&str]) -> Result<Output> {
        let out = Command::new(&self.bin)
            .arg(command)
            .args(["--name", &self.name, "--dir"])
            .arg(&self.dir)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running skiff-local {command}"))?;
        eprintln!(
            "--- skiff-local {command} ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// `up`, which must succeed; returns how long it took and its output.
    pub fn up(&self, extra: &[&str]) -> Result<(Duration, String)> {
        let started = Instant::now();
        let out = self.run("up", extra)?;
        let took = started.elapsed();
        ensure!(out.status.success(), "skiff-local up failed");
        Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// `down`, which must succeed; returns how long it took.
    pub fn down(&self) -> Result<Duration> {
        let started = Instant::now();
        let out = self.run("down", &[])?;
        let took = started.elapsed();
        ensure!(out.status.success(), "skiff-local down failed");
        Ok(took)
    }

    pub fn state(&self) -> Result<State> {
        State::load(&self.layout()?)?.context("no state file after up")
    }

    /// A client of the cluster's API server as its admin.
    pub async fn admin(&self) -> Result<Client> {
        let state = self.state()?;
        let api = state.api_addr.context("no API server address")?;
        let config = skiff_local::up::admin_config(&self.layout()?, api)?;
        Ok(Client::connect(&config).await?)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.dir.join("state.json").exists() {
            eprintln!(
                "cleanup: the test left cluster {} up; taking it down",
                self.name
            );
            // What the cluster's processes said, for the failure's diagnosis.
            for e in fs::read_dir(self.dir.join("logs"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let text = fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- {}:\n{}",
                    e.path().display(),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
            let _ = self.run("down", &["--grace", "2"]);
        }
    }
}

/// How long a pod may take to run on a local cluster.
pub const PODS_TIMEOUT: Duration = Duration::from_secs(120);

/// A local cluster that is up, with an admin client of it (the test bed's [`Admin`], which this
/// dereferences to). The client and its runtime are declared first so that they are dropped
/// before the cluster (whose drop takes it down when a test failed): the API server's graceful
/// stop waits for open connections.
#[derive(Debug)]
pub struct LocalRun {
    pub api: Admin,
    pub layout: Layout,
    pub cluster: LocalCluster,
}

impl Deref for LocalRun {
    type Target = Admin;
    fn deref(&self) -> &Admin {
        &self.api
    }
}

impl LocalRun {
    /// Brings up a cluster of `nodes` nodes with `skiff-local up --nodes N <extra>` and connects
    /// as its admin (`None`: this host cannot run the test, outside CI). Prints how long `up`
    /// took as a `FIGURE` line.
    pub fn up(test: &str, tag: &str, nodes: usize, extra: &[&str]) -> Result<Option<LocalRun>> {
        if !can_run(test) {
            return Ok(None);
        }
        let cluster = LocalCluster::new(tag)?;
        let layout = cluster.layout()?;
        let n = nodes.to_string();
        let mut args = vec!["--nodes", n.as_str()];
        args.extend(extra);
        let (took, _) = cluster.up(&args)?;
        eprintln!(
            "FIGURE local cluster of {nodes} nodes up in {:.1} s",
            took.as_secs_f64()
        );
        let api = Admin::with(|| cluster.admin())?;
        Ok(Some(LocalRun {
            api,
            layout,
            cluster,
        }))
    }

    /// The network namespace of pod `name`, once it runs.
    pub fn pod_netns(&self, name: &str) -> Result<PathBuf> {
        let p = self.api.wait_pod_running(name, PODS_TIMEOUT)?;
        let i = node_index(&p.spec.node_name)?;
        let path = self.layout.node_root(i).join("netns").join(&p.metadata.uid);
        ensure!(path.exists(), "{} does not exist", path.display());
        Ok(path)
    }

    /// What node `i`'s datapath holds: its services and conntrack entries, read from its pins.
    pub fn datapath(&self, i: usize) -> Result<Report> {
        let instance = self.layout.datapath_instance(i);
        let pins = PinLayout::new(Path::new("/sys/fs/bpf"), &instance)?;
        Ok(show::gather(
            &instance,
            &pins,
            Sections {
                services: true,
                conntrack: true,
                ..Sections::default()
            },
        )?)
    }

    /// The pids of the node agents, as the state file records them.
    pub fn agent_pids(&self) -> Result<Vec<u32>> {
        Ok(self
            .cluster
            .state()?
            .processes
            .iter()
            .filter(|p| p.name.starts_with("agent-"))
            .map(|p| p.pid)
            .collect())
    }

    /// Takes the cluster down and checks that nothing of it is left.
    pub fn finish(self) -> Result<()> {
        let LocalRun {
            api,
            layout,
            cluster,
        } = self;
        drop(api);
        let state = cluster.state()?;
        let containers = sys::cgroup_processes(&layout);
        cluster.down()?;
        assert_nothing_left(&layout, &state, &containers, None)
    }
}

/// The index of a local cluster's node (`node-<i>`).
pub fn node_index(node: &str) -> Result<usize> {
    node.strip_prefix("node-")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("{node:?} is not a node of the cluster"))
}

/// Names of the links in a network namespace (`None`: the host's).
pub fn links(netns: Option<&str>) -> Result<BTreeSet<String>> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(["-o", "link", "show"])
        .output()
        .context("running ip link")?;
    ensure!(out.status.success(), "ip link show failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect())
}

/// `ip -n <ns> route show` as lines.
pub fn routes(netns: &str) -> Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["-n", netns, "route", "show"])
        .output()
        .context("running ip route")?;
    ensure!(out.status.success(), "ip -n {netns} route show failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Checks that nothing of the cluster is left, in every way the library knows and a few it
/// does not rely on: the recorded pids, the container processes seen while it ran, named
/// namespaces, pins, and the directory. `image_dir`, when given, is an image directory the
/// cluster was given, which must survive.
pub fn assert_nothing_left(
    layout: &Layout,
    state: &State,
    containers: &[ProcInfo],
    image_dir: Option<&Path>,
) -> Result<()> {
    let left = leftovers(layout, Some(state));
    ensure!(left.is_empty(), "left behind: {left:#?}");
    for p in &state.processes {
        ensure!(!is_alive(p), "{} (pid {}) still runs", p.name, p.pid);
    }
    for c in containers {
        let still =
            ProcInfo::read(c.pid).is_some_and(|q| !q.is_zombie() && q.start_time == c.start_time);
        ensure!(
            !still,
            "container process {} ({:?}) still runs",
            c.pid,
            c.argv
        );
    }
    let listed = Command::new("ip").args(["netns", "list"]).output()?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    ensure!(
        !listed.contains(&layout.object_prefix()),
        "namespaces left: {listed}"
    );
    for ns in &state.netns {
        ensure!(
            !Path::new("/run/netns").join(&ns.name).exists(),
            "namespace {} is still bound",
            ns.name
        );
    }
    let pins = sys::entries_with_prefix(Path::new(BPF_PIN_ROOT), &layout.object_prefix());
    ensure!(pins.is_empty(), "pins left: {pins:?}");
    ensure!(
        sys::cgroup_dirs(layout).is_empty(),
        "cgroups left: {:?}",
        sys::cgroup_dirs(layout)
    );
    ensure!(
        !layout.dir().exists(),
        "{} still exists: {:?}",
        layout.dir().display(),
        fs::read_dir(layout.dir()).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    if let Some(d) = image_dir {
        ensure!(
            d.join("busybox.tar").is_file(),
            "down removed the image directory it was given ({})",
            d.display()
        );
    }
    Ok(())
}
