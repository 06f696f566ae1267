//! Real node agents for tests: a fabric namespace with a bridge, one namespace per node joined
//! to it (node addresses 10.250.0.0/24, as DESIGN.md's local cluster), and `skiff-agent node`
//! running inside each, against a test API server and a test containerd.
//!
//! ```text
//!  node ns <p>-n0: eth0 10.250.0.10/24 ──veth── fabric ns <p>-fab: br0 ──veth── node ns <p>-n1 ...
//! ```
//! No namespace has a link to the host, so nothing can leave the machine.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use skiff_api::{
    client::Client,
    kinds::{Node, condition},
};

use crate::{
    control::{ApiServer, spawn_with_pdeathsig, stop},
    topo::Netns,
    workspace_binary,
};

/// The Service CIDR every test node blackholes.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// The address of node `i` on the fabric.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, 0, 10 + i as u8)
}

/// The pod CIDR given to node `i`.
pub fn node_pod_cidr(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// The fabric: a namespace holding the bridge every node namespace is joined to.
#[derive(Debug)]
pub struct Fabric {
    prefix: String,
    ns: Netns,
}

/// One node's network namespace on the fabric.
#[derive(Debug)]
pub struct NodeNs {
    pub ns: Netns,
    pub ip: Ipv4Addr,
}

impl Fabric {
    /// `prefix` must be short (interface names are built from it): at most 8 characters.
    pub fn new(prefix: &str) -> Result<Fabric> {
        let ns = Netns::create(&format!("{prefix}-fab"))?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Fabric {
            prefix: prefix.to_owned(),
            ns,
        })
    }

    /// Node namespace `i`: `eth0` with [`node_ip`]`(i)`/24 on the bridge, forwarding on.
    pub fn node(&self, i: usize) -> Result<NodeNs> {
        let ip = node_ip(i);
        let ns = self.join(&format!("n{i}"), &format!("f{i}"), ip)?;
        Ok(NodeNs { ns, ip })
    }

    /// A client outside the cluster: namespace `<prefix>-ext` with `eth0` at `ip`/24 on the
    /// bridge and no default route (it reaches only the fabric's addresses).
    pub fn outside_client(&self, ip: Ipv4Addr) -> Result<Netns> {
        self.join("ext", "fx", ip)
    }

    /// A new namespace `<prefix>-<name>` whose `eth0` (at `ip`/24) is joined to the bridge by
    /// the port `<prefix><port>`.
    fn join(&self, name: &str, port: &str, ip: Ipv4Addr) -> Result<Netns> {
        let ns = Netns::create(&format!("{}-{name}", self.prefix))?;
        let outer = format!("{}{port}", self.prefix);
        self.ns.ip(&[
            "link",
            "add",
            &outer,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        self.ns
            .ip(&["link", "set", &outer, "master", "br0", "up"])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        Ok(ns)
    }
}

/// Options of one agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Node index: name `node-<i>`, address [`node_ip`], pod CIDR [`node_pod_cidr`].
    pub index: usize,
    pub containerd: PathBuf,
    pub image_dir: PathBuf,
    /// The containerd namespace of this node's containers (each node needs its own).
    pub containerd_namespace: String,
    /// Parent cgroup of the node's pods.
    pub cgroup_parent: String,
    pub extra: Vec<String>,
}

/// A running `skiff-agent node`.
#[derive(Debug)]
pub struct Agent {
    pub name: String,
    pub root: PathBuf,
    containerd_namespace: String,
    /// The agent's eBPF datapath instance (its pins are removed on drop).
    pub datapath_instance: String,
    args: Vec<String>,
    child: Option<Child>,
}

impl Agent {
    /// Starts the agent for node `node-<index>` inside `node`'s namespace, reaching the API
    /// server over its Unix socket with the node's own token.
    pub fn start(api: &ApiServer, node: &NodeNs, opts: &AgentOptions) -> Result<Agent> {
        let name = format!("node-{}", opts.index);
        let root = std::env::temp_dir().join(crate::unique_prefix(&format!("agent{}", opts.index)));
        fs::create_dir_all(&root)?;
        let token = root.join("token");
        fs::write(&token, api.token(&name))?;
        let datapath_instance = crate::unique_prefix(&format!("dp{}", opts.index));
        let mut args = vec![
            "--netns".into(),
            node.ns.path().display().to_string(),
            "node".into(),
            "--server".into(),
            api.unix_url(),
            "--token-file".into(),
            token.display().to_string(),
            "--name".into(),
            name.clone(),
            "--node-ip".into(),
            node.ip.to_string(),
            "--pod-cidr".into(),
            node_pod_cidr(opts.index),
            "--service-cidr".into(),
            SERVICE_CIDR.into(),
            "--containerd".into(),
            opts.containerd.display().to_string(),
            "--root".into(),
            root.join("state").display().to_string(),
            "--image-dir".into(),
            opts.image_dir.display().to_string(),
            "--lease-interval".into(),
            "1".into(),
            "--status-interval".into(),
            "2".into(),
            "--restart-backoff".into(),
            "1".into(),
            "--max-restart-backoff".into(),
            "8".into(),
            "--containerd-namespace".into(),
            opts.containerd_namespace.clone(),
            "--cgroup-parent".into(),
            opts.cgroup_parent.clone(),
            "--datapath-instance".into(),
            datapath_instance.clone(),
        ];
        args.extend(opts.extra.iter().cloned());
        let mut agent = Agent {
            name,
            root,
            containerd_namespace: opts.containerd_namespace.clone(),
            datapath_instance,
            args,
            child: None,
        };
        agent.launch()?;
        Ok(agent)
    }

    fn launch(&mut self) -> Result<()> {
        let bin = workspace_binary("skiff-agent")?;
        let log = self.log_path();
        // Append: a restarted agent's log follows the first one's.
        let mut child = spawn_with_pdeathsig(&bin, &self.args, &log)?;
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(Some(status)) = child.try_wait() {
            bail!("skiff-agent exited at once ({status}):\n{}", self.log());
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join(format!("agent-{}.log", self.name))
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Where the agent keeps pod network namespaces.
    pub fn netns_dir(&self) -> PathBuf {
        self.root.join("state/netns")
    }

    /// Where the agent keeps container logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("state/logs")
    }

    /// Where the agent keeps address allocations.
    pub fn ipam_dir(&self) -> PathBuf {
        self.root.join("state/ipam")
    }

    /// Kills the agent outright (SIGKILL); its pods keep running.
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Kills it and starts it again with the same state.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let old = self.log();
        fs::write(self.root.join(format!("agent-{}.log.1", self.name)), old)?;
        self.launch()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop(&mut self.child);
        // Pod namespaces stay mounted after the agent (that is what keeps pods reachable over
        // its restarts); a test's leftovers are unmounted here.
        if let Ok(dir) = fs::read_dir(self.netns_dir()) {
            for e in dir.flatten() {
                let _ = rustix::mount::unmount(e.path(), rustix::mount::UnmountFlags::DETACH);
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir_all(&self.root);
        // The datapath's pinned maps and links (the links of pods whose veths are gone already
        // are dead; removing the pins frees them).
        let config = skiff_agent::datapath::DatapathConfig::new(self.datapath_instance.clone());
        if let Err(e) = skiff_agent::datapath::reset(&config) {
            eprintln!("cleanup of datapath {}: {e}", self.datapath_instance);
        }
        // runc's state of this node's containers (the shims themselves are the test
        // containerd's to end).
        if !self.containerd_namespace.is_empty() {
            let _ = fs::remove_dir_all(
                Path::new("/run/containerd/runc").join(&self.containerd_namespace),
            );
        }
    }
}

/// Waits until node `name` reports Ready (its Node may not exist yet).
pub async fn wait_node_ready(admin: &Client, name: &str, timeout: Duration) -> Result<()> {
    eventually(timeout, &format!("{name} Ready"), || async move {
        let node: Node = match admin.get("", name).await {
            Ok(n) => n,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(condition(&node.status.conditions, "Ready")
            .is_some_and(|c| c.status == "True")
            .then_some(()))
    })
    .await
}

/// Waits until `check` returns `Ok(Some(v))`, polling every 100 ms; fails with the last
/// reason after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "not yet".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `program args` inside the network namespace at `netns` (nsenter), returning stdout;
/// fails with stderr.
pub fn run_in_netns(netns: &Path, program: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} in {}", netns.display()))?;
    if !out.status.success() {
        bail!(
            "{program} {} in {} failed: {}{}",
            args.join(" "),
            netns.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
