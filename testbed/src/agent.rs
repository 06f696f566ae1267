//! Real node agents for tests: `skiff-agent node` inside a node namespace of the fabric, against
//! a test API server and a test containerd, killed on drop with its pod namespaces, state and
//! datapath pins removed.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use anyhow::{Result, bail};

use crate::{
    control::ApiServer,
    fabric::{NodeNs, SERVICE_CIDR, node_pod_cidr},
    pins,
    process::{spawn_with_pdeathsig, stop},
    workspace_binary,
};

/// What every node agent is told on its command line, whoever starts it (the test bed's
/// [`Agent`], `skiff-local up`): `skiff-agent --netns <netns> node ...`.
#[derive(Debug, Clone, Copy)]
pub struct NodeFlags<'a> {
    /// The node's network namespace, which the agent enters first.
    pub netns: &'a Path,
    /// The API server's URL (its Unix socket, reachable from any namespace).
    pub server: &'a str,
    /// The node's own token.
    pub token_file: &'a Path,
    /// The node's name (`node-<i>`).
    pub name: &'a str,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: &'a str,
    pub service_cidr: &'a str,
    /// containerd's socket.
    pub containerd: &'a Path,
    /// The containerd namespace of this node's containers (each node needs its own).
    pub containerd_namespace: &'a str,
    /// Where the agent keeps its state (pod namespaces, logs, address allocations).
    pub root: &'a Path,
    /// The directory of OCI image archives the agent imports; `None`: images only come from
    /// registries.
    pub image_dir: Option<&'a Path>,
    /// Parent cgroup of the node's pods.
    pub cgroup_parent: &'a str,
    /// The agent's eBPF datapath instance: its pins and lock are named for it.
    pub datapath_instance: &'a str,
    /// The node's registry configuration (containerd's `hosts.toml` layout, as
    /// [`crate::registry::write_hosts_dir`] writes it); `None`: pull with the defaults.
    pub registry_config_dir: Option<&'a Path>,
}

impl NodeFlags<'_> {
    /// The command line after the program's name.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--netns".into(),
            self.netns.display().to_string(),
            "node".into(),
            "--server".into(),
            self.server.to_owned(),
            "--token-file".into(),
            self.token_file.display().to_string(),
            "--name".into(),
            self.name.to_owned(),
            "--node-ip".into(),
            self.node_ip.to_string(),
            "--pod-cidr".into(),
            self.pod_cidr.to_owned(),
            "--service-cidr".into(),
            self.service_cidr.to_owned(),
            "--containerd".into(),
            self.containerd.display().to_string(),
            "--containerd-namespace".into(),
            self.containerd_namespace.to_owned(),
            "--root".into(),
            self.root.display().to_string(),
            "--cgroup-parent".into(),
            self.cgroup_parent.to_owned(),
            "--datapath-instance".into(),
            self.datapath_instance.to_owned(),
        ];
        if let Some(dir) = self.image_dir {
            args.push("--image-dir".into());
            args.push(dir.display().to_string());
        }
        if let Some(dir) = self.registry_config_dir {
            args.push("--registry-config-dir".into());
            args.push(dir.display().to_string());
        }
        args
    }
}

/// Options of one agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Node index: name `node-<i>`, address [`crate::fabric::node_ip`], pod CIDR
    /// [`node_pod_cidr`].
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
        let mut args = NodeFlags {
            netns: node.ns.path(),
            server: &api.unix_url(),
            token_file: &token,
            name: &name,
            node_ip: node.ip,
            pod_cidr: &node_pod_cidr(opts.index),
            service_cidr: SERVICE_CIDR,
            containerd: &opts.containerd,
            containerd_namespace: &opts.containerd_namespace,
            root: &root.join("state"),
            image_dir: Some(&opts.image_dir),
            cgroup_parent: &opts.cgroup_parent,
            datapath_instance: &datapath_instance,
            // A test that runs a registry passes --registry-config-dir in `extra`.
            registry_config_dir: None,
        }
        .args();
        // Short intervals, so a test sees heartbeats, status and restarts within seconds.
        args.extend(
            [
                "--lease-interval",
                "1",
                "--status-interval",
                "2",
                "--restart-backoff",
                "1",
                "--max-restart-backoff",
                "8",
            ]
            .map(str::to_owned),
        );
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

    /// What attempt `attempt` of `container` of pod `p` has written so far (empty before it
    /// started).
    pub fn container_log(
        &self,
        p: &skiff_api::kinds::Pod,
        container: &str,
        attempt: u32,
    ) -> String {
        let m = &p.metadata;
        std::fs::read_to_string(
            self.logs_dir()
                .join(format!("{}_{}_{}", m.namespace, m.name, m.uid))
                .join(container)
                .join(format!("{attempt}.log")),
        )
        .unwrap_or_default()
    }

    /// Where the agent keeps pod volumes (`<pods>/<uid>/volumes/...`).
    pub fn pods_dir(&self) -> PathBuf {
        self.root.join("state/pods")
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
        if let Err(e) = pins::reset(&self.datapath_instance) {
            eprintln!("cleanup of datapath {}: {e:#}", self.datapath_instance);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn flags<'a>(image_dir: Option<&'a Path>, registry: Option<&'a Path>) -> Vec<String> {
        NodeFlags {
            netns: Path::new("/run/netns/n0"),
            server: "unix:///tmp/api.sock",
            token_file: Path::new("/tmp/node-0.token"),
            name: "node-0",
            node_ip: Ipv4Addr::new(10, 250, 0, 10),
            pod_cidr: "10.244.0.0/24",
            service_cidr: SERVICE_CIDR,
            containerd: Path::new("/tmp/containerd.sock"),
            containerd_namespace: "ns",
            root: Path::new("/tmp/root"),
            image_dir,
            cgroup_parent: "/skiff-test/x",
            datapath_instance: "dp",
            registry_config_dir: registry,
        }
        .args()
    }

    fn value_of(args: &[String], flag: &str) -> Option<String> {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].clone())
    }

    #[test]
    fn the_image_and_registry_directories_are_passed_only_when_given() {
        let none = flags(None, None);
        assert_eq!(value_of(&none, "--image-dir"), None);
        assert_eq!(value_of(&none, "--registry-config-dir"), None);
        let both = flags(Some(Path::new("/img")), Some(Path::new("/hosts.d")));
        assert_eq!(value_of(&both, "--image-dir").as_deref(), Some("/img"));
        assert_eq!(
            value_of(&both, "--registry-config-dir").as_deref(),
            Some("/hosts.d")
        );
        // Node flags come after the `node` subcommand.
        let node = both.iter().position(|a| a == "node").unwrap();
        assert!(
            both.iter()
                .position(|a| a == "--registry-config-dir")
                .unwrap()
                > node
        );
    }
}
