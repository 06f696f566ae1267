//! The scale benchmark's control plane: one etcd member, `skiff-apiserver`,
//! `skiff-scheduler` and `skiff-controller-manager` as real processes (the release builds next
//! to `skiff-bench`), with a tokens file that lists one node token per hollow node. Everything
//! dies with the benchmark (PDEATHSIG) and is killed and removed on drop.

use std::{
    collections::BTreeMap,
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use skiff_api::client::{Client, ClientConfig};
use skiff_testbed::{
    control::{Etcd, free_ports},
    unique_prefix, workspace_binary,
};

use crate::{
    control::{procfs, server},
    hollow::{self, NodeToken},
};

/// A control-plane process the benchmark started (through `setpriv --pdeathsig`, which execs,
/// so the child's id is the program's).
#[derive(Debug)]
pub(super) struct Process {
    pub(super) name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn new(name: &'static str, program: PathBuf, args: Vec<String>, dir: &Path) -> Process {
        Process {
            name,
            program,
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    pub(super) fn start(&mut self) -> Result<()> {
        self.stop();
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(&self.program)
            .args(&self.args)
            // Plain logs: they go to a file.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills it outright (SIGKILL).
    pub(super) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(super) fn running(&self) -> bool {
        self.child.is_some()
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails, with the end of its log, if it has exited.
    pub(super) fn check(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!(
                "{} exited with {status}; the end of its log:\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// The last `lines` lines of its log.
    pub(super) fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU seconds of each process at one moment, by name, with the process id (a restarted
/// process starts again from zero).
#[derive(Debug, Clone, Default)]
pub(super) struct CpuSample {
    pub(super) at: Option<Instant>,
    pub(super) processes: BTreeMap<&'static str, (u32, f64)>,
    /// All CPUs, busy time (user, nice, system, irq, softirq) and steal.
    pub(super) machine: Option<(f64, f64)>,
    /// The API server's request and etcd latency totals (`None` when `/metrics` could not be
    /// read).
    pub(super) server: Option<server::Totals>,
}

impl CpuSample {
    /// CPU seconds each process used since `before` (all of it for a process started since).
    pub(super) fn since(&self, before: &CpuSample) -> BTreeMap<&'static str, f64> {
        self.processes
            .iter()
            .map(|(name, &(pid, secs))| {
                let used = match before.processes.get(name) {
                    Some(&(p, b)) if p == pid => (secs - b).max(0.0),
                    _ => secs,
                };
                (*name, used)
            })
            .collect()
    }

    /// Busy CPU seconds of every other process on the machine, and stolen seconds, since
    /// `before`.
    pub(super) fn others_and_steal_since(&self, before: &CpuSample) -> (Option<f64>, Option<f64>) {
        let (Some((busy, steal)), Some((busy0, steal0))) = (self.machine, before.machine) else {
            return (None, None);
        };
        let ours: f64 = self.since(before).values().sum();
        // Ticks are counted per CPU and per process at different moments.
        (
            Some((busy - busy0 - ours).max(0.0)),
            Some((steal - steal0).max(0.0)),
        )
    }
}

/// The resident memory of one process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Memory {
    pub process: &'static str,
    pub pid: u32,
    /// VmRSS when sampled.
    pub rss_mib: Option<f64>,
    /// VmHWM: the largest the resident set has been.
    pub peak_rss_mib: Option<f64>,
}

/// The benchmark's own process, in CPU and memory figures.
pub const BENCH: &str = "skiff-bench (hollow nodes)";

/// Everything the benchmark runs against.
#[derive(Debug)]
pub(super) struct Cluster {
    pub(super) apiserver: Process,
    pub(super) scheduler: Process,
    pub(super) controller_manager: Process,
    etcd: Etcd,
    etcd_pid: Option<u32>,
    api_addr: SocketAddr,
    metrics_addr: SocketAddr,
    admin_token: String,
    /// One per hollow node the run may start.
    pub(super) node_tokens: Vec<NodeToken>,
    /// Tokens and logs; removed last.
    _dir: TempDir,
}

/// A directory removed (with what is in it) on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn create(path: PathBuf) -> Result<TempDir> {
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Cluster {
    /// Starts etcd, the API server (with a token for each of `nodes` hollow nodes) and the
    /// controller-manager; the scheduler is started by the phases.
    pub(super) fn start(nodes: usize, node_monitor_grace_period: Duration) -> Result<Cluster> {
        let bins = [
            "skiff-apiserver",
            "skiff-scheduler",
            "skiff-controller-manager",
        ]
        .map(|b| workspace_binary(b).with_context(|| format!("finding {b}")));
        let [apiserver_bin, scheduler_bin, cm_bin] = bins;
        let (apiserver_bin, scheduler_bin, cm_bin) = (apiserver_bin?, scheduler_bin?, cm_bin?);
        let dir = TempDir::create(std::env::temp_dir().join(unique_prefix("scale")))?;
        let admin_token = random_token("admin");
        let controller_token = random_token("controller");
        let node_tokens = hollow::node_tokens("hollow", nodes);
        let mut yaml = format!(
            "tokens:\n- token: {admin_token}\n  user: admin\n  role: admin\n- token: \
             {controller_token}\n  user: controller\n  role: controller\n"
        );
        yaml.push_str(&hollow::tokens_yaml(&node_tokens));
        let tokens_file = dir.0.join("tokens.yaml");
        let controller_token_file = dir.0.join("controller.token");
        fs::write(&tokens_file, yaml)
            .and_then(|()| fs::write(&controller_token_file, &controller_token))
            .context("writing the tokens files")?;
        let etcd = Etcd::start(1).context("starting etcd")?;
        let ports = free_ports(2)?;
        let api_addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], ports[1]));
        let server = format!("http://{api_addr}");
        let common = |extra: &[&str]| -> Vec<String> {
            let mut args = vec![
                "--server".to_owned(),
                server.clone(),
                "--token-file".to_owned(),
                controller_token_file.display().to_string(),
                "--leader-elect=false".to_owned(),
            ];
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            args
        };
        let grace = format!("{}", node_monitor_grace_period.as_secs_f64());
        let etcd_url = etcd.members.first().map(|m| m.client_url.clone());
        let mut cluster = Cluster {
            apiserver: Process::new(
                "skiff-apiserver",
                apiserver_bin,
                etcd.api_server_args()
                    .into_iter()
                    .chain([
                        "--listen".into(),
                        api_addr.to_string(),
                        "--metrics-listen".into(),
                        metrics_addr.to_string(),
                        "--tokens".into(),
                        tokens_file.display().to_string(),
                    ])
                    .collect(),
                &dir.0,
            ),
            scheduler: Process::new("skiff-scheduler", scheduler_bin, common(&[]), &dir.0),
            controller_manager: Process::new(
                "skiff-controller-manager",
                cm_bin,
                common(&["--node-monitor-grace-period", &grace]),
                &dir.0,
            ),
            etcd_pid: etcd_url.and_then(|url| {
                procfs::find_child(std::process::id(), "etcd", &["--listen-client-urls", &url])
            }),
            etcd,
            api_addr,
            metrics_addr,
            admin_token,
            node_tokens,
            _dir: dir,
        };
        cluster.apiserver.start()?;
        cluster.wait_api()?;
        cluster.controller_manager.start()?;
        Ok(cluster)
    }

    fn wait_api(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&self.api_addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            self.apiserver.check()?;
            if Instant::now() > deadline {
                bail!(
                    "skiff-apiserver did not listen on {} within 20 s",
                    self.api_addr
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub(super) fn url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// `n` connections as the admin.
    pub(super) async fn admin_clients(&self, n: usize) -> Result<Vec<Client>> {
        let config = ClientConfig::new(self.url(), self.admin_token.clone());
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(
                Client::connect(&config)
                    .await
                    .context("connecting to the API server")?,
            );
        }
        Ok(out)
    }

    /// Compacts etcd's history up to now (Kubernetes' API server does this every five minutes;
    /// Skiff's does not yet): deleted objects otherwise stay in etcd's index and every range
    /// over their prefix steps over them. Blocks for a moment (etcdctl).
    pub(super) fn compact_etcd(&self) -> Result<i64> {
        self.etcd.compact().context("compacting etcd")
    }

    /// Fails if a control-plane process has died.
    pub(super) fn check(&mut self) -> Result<()> {
        self.apiserver.check()?;
        self.scheduler.check()?;
        self.controller_manager.check()
    }

    fn pids(&self) -> Vec<(&'static str, u32)> {
        let mut out: Vec<(&'static str, u32)> =
            self.etcd_pid.map(|p| ("etcd", p)).into_iter().collect();
        for p in [&self.apiserver, &self.scheduler, &self.controller_manager] {
            if let Some(pid) = p.pid() {
                out.push((p.name, pid));
            }
        }
        out.push((BENCH, std::process::id()));
        out
    }

    pub(super) fn cpu(&self) -> CpuSample {
        CpuSample {
            at: Some(Instant::now()),
            processes: self
                .pids()
                .into_iter()
                .filter_map(|(name, pid)| Some((name, (pid, procfs::cpu_seconds(pid)?))))
                .collect(),
            machine: procfs::machine_ticks()
                .map(|(busy, steal)| (procfs::seconds(busy), procfs::seconds(steal))),
            server: self.metrics().ok().map(|text| server::totals(&text)),
        }
    }

    /// The API server's `/metrics` text (a short blocking read on loopback).
    fn metrics(&self) -> Result<String> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect_timeout(&self.metrics_addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    pub(super) fn memory(&self) -> Vec<Memory> {
        self.pids()
            .into_iter()
            .map(|(process, pid)| Memory {
                process,
                pid,
                rss_mib: procfs::rss_mib(pid),
                peak_rss_mib: procfs::peak_rss_mib(pid),
            })
            .collect()
    }

    /// Copies the control-plane processes' logs into `dir`; returns their paths.
    pub(super) fn save_logs(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut out = Vec::new();
        for p in [&self.apiserver, &self.scheduler, &self.controller_manager] {
            if p.log.exists() {
                let to = dir.join(format!("{}.log", p.name));
                fs::copy(&p.log, &to).with_context(|| format!("copying {}", p.log.display()))?;
                out.push(to);
            }
        }
        Ok(out)
    }

    /// A note for the report when etcd's process could not be found.
    pub(super) fn notes(&self) -> Vec<String> {
        if self.etcd_pid.is_some() {
            return Vec::new();
        }
        vec![format!(
            "no child process etcd --listen-client-urls {} in /proc: its CPU time and memory are \
             not reported",
            self.etcd.endpoints().join(",")
        )]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Clients first, so nothing is left waiting on the API server while etcd goes.
        self.scheduler.stop();
        self.controller_manager.stop();
        self.apiserver.stop();
        // etcd and then the directory go with the fields.
    }
}

/// A bearer token no one can guess, naming what it is for.
fn random_token(what: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let r = || RandomState::new().hash_one(0u8);
    format!("{what}-{:016x}{:016x}", r(), r())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(processes: &[(&'static str, u32, f64)], busy: f64) -> CpuSample {
        CpuSample {
            at: None,
            processes: processes.iter().map(|&(n, p, s)| (n, (p, s))).collect(),
            machine: Some((busy, 1.0)),
            server: None,
        }
    }

    #[test]
    fn a_restarted_process_counts_from_zero_and_others_get_the_rest() {
        let before = sample(&[("etcd", 10, 5.0), ("skiff-scheduler", 20, 3.0)], 100.0);
        let after = sample(
            &[
                ("etcd", 10, 7.5),
                ("skiff-scheduler", 21, 1.0),
                ("skiff-controller-manager", 30, 0.5),
            ],
            106.0,
        );
        let used = after.since(&before);
        assert_eq!(used["etcd"], 2.5);
        assert_eq!(used["skiff-scheduler"], 1.0);
        assert_eq!(used["skiff-controller-manager"], 0.5);
        let (others, steal) = after.others_and_steal_since(&before);
        assert_eq!(others, Some(2.0));
        assert_eq!(steal, Some(0.0));
    }

    #[test]
    fn tokens_are_distinct_and_long_enough() {
        let (a, b) = (random_token("admin"), random_token("admin"));
        assert_ne!(a, b);
        assert!(a.starts_with("admin-") && a.len() == 38);
    }
}
