//! The datapath under test: the `skiff-agent` loader as a process (killed and restarted by
//! tests), the operator command, and the small capacities tests load it with. The guard that
//! removes an instance's pins is the test bed's (`skiff_testbed::pins::PinsGuard`).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use skiff_agent::datapath::{
    DatapathConfig, ServicePort,
    static_config::{self, Desired},
};
use skiff_testbed::{netns::Netns, workspace_binary};

/// A small-footprint configuration for test instances (capacities are load-time settings).
pub fn test_config(instance: &str) -> DatapathConfig {
    let mut c = DatapathConfig::new(instance);
    c.capacities.services = 1024;
    c.capacities.backends = 4096;
    c.capacities.slots = 4096;
    c.capacities.maglev = 65_536;
    // Small tables (16 chunks each), so a test with many services stays light.
    c.maglev_size = 1021;
    c.capacities.conntrack = 32_768;
    c.capacities.ct_established = 32_768;
    c.capacities.fragments = 1024;
    c.capacities.affinity = 1024;
    c.capacities.node_ports = 256;
    c
}

/// The command-line flags matching `test_config`, so a process loads the same shapes.
pub fn capacity_flags() -> Vec<String> {
    let c = test_config("flags").capacities;
    vec![
        format!("--max-services={}", c.services),
        format!("--max-backends={}", c.backends),
        format!("--max-slots={}", c.slots),
        format!("--max-maglev-chunks={}", c.maglev),
        format!("--maglev-table-size={}", test_config("flags").maglev_size),
        format!("--max-conntrack={}", c.conntrack),
        format!("--max-conntrack-established={}", c.ct_established),
        format!("--max-fragments={}", c.fragments),
        format!("--max-affinity={}", c.affinity),
        format!("--max-node-ports={}", c.node_ports),
    ]
}

/// A services file in a temporary directory, removed on drop.
#[derive(Debug)]
pub struct ServicesFile {
    path: PathBuf,
}

impl ServicesFile {
    pub fn new(prefix: &str) -> Self {
        ServicesFile {
            path: std::env::temp_dir().join(format!("{prefix}-services.yaml")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file atomically (write to a temporary name, rename).
    pub fn write(&self, desired: &Desired) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, static_config::render(desired)).context("writing services file")?;
        std::fs::rename(&tmp, &self.path).context("renaming services file")
    }
}

impl Drop for ServicesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Builds a desired state from (service port, backends) pairs.
pub fn desired<const N: usize>(entries: [(ServicePort, Vec<SocketAddrV4>); N]) -> Desired {
    entries.into_iter().collect::<BTreeMap<_, _>>()
}

/// `skiff-agent datapath run` in the node namespace, its stdout lines readable; SIGKILLed on
/// drop (the datapath keeps forwarding from its pins, which the test's `PinsGuard` removes).
#[derive(Debug)]
pub struct LoaderProcess {
    child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl LoaderProcess {
    pub fn start(node: &Netns, instance: &str, ifaces: &[String], services: &Path) -> Result<Self> {
        let mut cmd = Command::new(workspace_binary("skiff-agent")?);
        cmd.arg("--netns")
            .arg(node.path())
            .args(["datapath", "run", "--instance", instance, "--poll-ms", "50"])
            .args(capacity_flags())
            .arg("--services")
            .arg(services);
        for i in ifaces {
            cmd.arg("--iface").arg(i);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting skiff-agent")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(LoaderProcess {
            child,
            lines: rx,
            seen: Vec::new(),
        })
    }

    /// Waits for an output line starting with `prefix` and returns it.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "no line starting {prefix:?} within {timeout:?}; saw {:?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!(
                        "skiff-agent exited ({status}) before printing {prefix:?}; saw {:?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// SIGKILL, as a crash would: no cleanup code runs.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill().context("killing skiff-agent")?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for LoaderProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `skiff-agent datapath show --json` for an instance (inside the node namespace, where its
/// interfaces are) and parses the report.
pub fn show_json(node: &Netns, instance: &str) -> Result<serde_json::Value> {
    let out = Command::new(workspace_binary("skiff-agent")?)
        .arg("--netns")
        .arg(node.path())
        .args(["datapath", "show", "--json", "--instance", instance])
        .output()
        .context("running skiff-agent datapath show")?;
    if !out.status.success() {
        bail!(
            "datapath show failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing the JSON report")
}
