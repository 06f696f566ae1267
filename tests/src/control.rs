//! Control-plane processes for integration tests: a real etcd (one or three members) on
//! loopback with a temporary data directory, and real `skiff-apiserver` replicas in front of it.
//! Every process dies with the test (PDEATHSIG) and is killed and cleaned up on drop.

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use skiff_api::client::{Client, ClientConfig};

use crate::{unique_prefix, workspace_binary};

/// Whether etcd is installed; under `CI=true` its absence fails the test instead.
pub fn etcd_available(test: &str) -> bool {
    if crate::which("etcd").is_some() && crate::which("etcdctl").is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test} needs etcd and etcdctl (cargo xtask setup installs etcd-server and etcd-client), and CI=true requires it to run"
        );
    }
    eprintln!("SKIPPED {test}: etcd is not installed (cargo xtask setup installs it)");
    false
}

/// `n` distinct loopback ports nobody is listening on right now (all held open until all are
/// chosen, so the kernel cannot hand the same one out twice).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("finding a free port"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

pub(crate) fn spawn_with_pdeathsig(program: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

pub(crate) fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn wait_port(addr: SocketAddr, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = fs::read_to_string(log).unwrap_or_default();
            bail!("{what} exited with {status} before listening on {addr}:\n{log}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 20 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// One etcd member.
#[derive(Debug)]
pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

/// An etcd cluster of one or three members, on loopback, in a temporary directory, with mutual
/// TLS on its client and peer URLs (certificates made by `skiff-pki` in `<dir>/pki`, which also
/// holds the API server's serving certificate for tests that want TLS on the API).
#[derive(Debug)]
pub struct Etcd {
    pub members: Vec<EtcdMember>,
    pub pki: skiff_pki::Files,
    dir: PathBuf,
}

impl Etcd {
    /// Starts `n` members and waits until the cluster is healthy.
    pub fn start(n: usize) -> Result<Etcd> {
        let dir = std::env::temp_dir().join(unique_prefix("etcd"));
        // etcd's data, and the keys, are no one else's business.
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let token = unique_prefix("cluster");
        let ports = free_ports(2 * n)?;
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        for i in 0..n {
            peers.push((
                format!("m{i}"),
                format!("https://127.0.0.1:{}", ports[2 * i]),
            ));
            clients.push(format!("https://127.0.0.1:{}", ports[2 * i + 1]));
        }
        let loopback = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let pki = skiff_pki::generate(
            &dir.join("pki"),
            &skiff_pki::Spec {
                etcd_members: peers
                    .iter()
                    .map(|(name, _)| skiff_pki::EtcdMember {
                        name: name.clone(),
                        hosts: loopback.clone(),
                    })
                    .collect(),
                api_hosts: loopback,
                validity: Duration::from_secs(2 * 86_400),
            },
        )
        .context("making the test cluster's certificates")?;
        let initial: Vec<String> = peers.iter().map(|(n, u)| format!("{n}={u}")).collect();
        let mut etcd = Etcd {
            members: Vec::new(),
            pki,
            dir: dir.clone(),
        };
        for (i, (name, peer)) in peers.iter().enumerate() {
            let data = dir.join(name);
            let mut args = vec![
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                data.display().to_string(),
                "--listen-client-urls".into(),
                clients[i].clone(),
                "--advertise-client-urls".into(),
                clients[i].clone(),
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                peer.clone(),
                "--initial-cluster".into(),
                initial.join(","),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                token.clone(),
                "--log-level".into(),
                "warn".into(),
            ];
            args.extend(etcd.pki.etcd_flags(name));
            let log = dir.join(format!("{name}.log"));
            let child = spawn_with_pdeathsig(Path::new("etcd"), &args, &log)?;
            etcd.members.push(EtcdMember {
                name: name.clone(),
                client_url: clients[i].clone(),
                args,
                child: Some(child),
                log,
            });
        }
        let endpoints = etcd.endpoints();
        etcd.wait_healthy(&endpoints)?;
        Ok(etcd)
    }

    /// The API server's flags for this cluster: every endpoint and its client certificate.
    pub fn api_server_args(&self) -> Vec<String> {
        let mut args = vec!["--etcd".to_owned(), self.endpoints().join(",")];
        args.extend(self.pki.apiserver_etcd_flags());
        args
    }

    /// `etcdctl` with the API server's client certificate (and the v3 API).
    fn etcdctl(&self, endpoints: &[String]) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(self.pki.etcdctl_flags());
        cmd
    }

    /// Client URLs of every member (running or not).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    fn wait_healthy(&mut self, endpoints: &[String]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for m in &mut self.members {
                if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    let log = fs::read_to_string(&m.log).unwrap_or_default();
                    bail!("etcd member {} exited with {status}:\n{log}", m.name);
                }
            }
            let ok = self
                .etcdctl(endpoints)
                .args(["endpoint", "health", "--command-timeout=2s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| fs::read_to_string(&m.log).unwrap_or_default())
                    .collect();
                bail!(
                    "etcd did not become healthy within 30 s:\n{}",
                    logs.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills member `i` outright.
    pub fn kill(&mut self, i: usize) {
        stop(&mut self.members[i].child);
    }

    /// Starts member `i` again with its data.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        stop(&mut m.child);
        let args: Vec<String> = m
            .args
            .iter()
            .map(|a| {
                if a == "new" {
                    "existing".to_owned()
                } else {
                    a.clone()
                }
            })
            .collect();
        m.child = Some(spawn_with_pdeathsig(Path::new("etcd"), &args, &m.log)?);
        let url = m.client_url.clone();
        self.wait_healthy(&[url])
    }

    /// Runs etcdctl against the running members; returns stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let live: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.clone())
            .collect();
        let out = self
            .etcdctl(&live)
            .args(args)
            .output()
            .context("running etcdctl")?;
        if !out.status.success() {
            bail!("etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The current revision of the store.
    pub fn revision(&self) -> Result<i64> {
        let out = self.ctl(&["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("etcdctl json")?;
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .context("etcdctl endpoint status has no header.revision")
    }

    /// Compacts history up to the current revision.
    pub fn compact(&self) -> Result<i64> {
        let rev = self.revision()?;
        self.ctl(&["compact", &rev.to_string(), "--physical"])?;
        Ok(rev)
    }

    /// Every key under a prefix.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self.ctl(&["get", prefix, "--prefix", "--keys-only"])?;
        Ok(out
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            stop(&mut m.child);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The identities every test API server knows, with their roles.
pub const IDENTITIES: [(&str, &str, Option<&str>); 6] = [
    ("admin", "admin", None),
    ("controller", "controller", None),
    ("viewer", "viewer", None),
    ("node-a", "node", Some("node-a")),
    ("node-b", "node", Some("node-b")),
    ("node-c", "node", Some("node-c")),
];

/// Options of a test API server.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// Serve TLS on TCP with the etcd cluster's `apiserver` certificate (for `localhost` and
    /// 127.0.0.1, signed by its cluster CA).
    pub tls: bool,
    /// Seconds between bookmarks (default 10).
    pub bookmark_interval: Option<f64>,
    /// Extra flags.
    pub extra: Vec<String>,
    /// Also tokens for nodes `node-0` .. `node-{nodes-1}` (user = node name, role node).
    pub nodes: usize,
}

/// A running `skiff-apiserver`.
#[derive(Debug)]
pub struct ApiServer {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    tokens: Vec<(String, String)>,
    /// The CA that signed the serving certificate, when the server serves TLS.
    ca: Option<PathBuf>,
}

impl ApiServer {
    /// Starts an API server against every member of `etcd` (with its client certificate) and
    /// waits until it listens.
    pub fn start(etcd: &Etcd, opts: &ApiOptions) -> Result<ApiServer> {
        let prefix = unique_prefix("api");
        let dir = std::env::temp_dir().join(&prefix);
        fs::create_dir_all(&dir)?;
        let mut yaml = String::from("tokens:\n");
        let mut tokens = Vec::new();
        for (user, role, node) in IDENTITIES {
            let token = format!("{user}-{prefix}-secret");
            yaml.push_str(&format!(
                "- token: {token}\n  user: {user}\n  role: {role}\n"
            ));
            if let Some(n) = node {
                yaml.push_str(&format!("  node: {n}\n"));
            }
            tokens.push((user.to_owned(), token));
        }
        for i in 0..opts.nodes {
            let user = format!("node-{i}");
            let token = format!("{user}-{prefix}-secret");
            yaml.push_str(&format!(
                "- token: {token}\n  user: {user}\n  role: node\n  node: {user}\n"
            ));
            tokens.push((user, token));
        }
        let tokens_file = dir.join("tokens.yaml");
        fs::write(&tokens_file, yaml)?;
        let ports = free_ports(2)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse()?;
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse()?;
        let mut args = etcd.api_server_args();
        args.extend([
            "--listen".into(),
            addr.to_string(),
            // Node agents run in other network namespaces and reach the server over this.
            "--listen".into(),
            format!("unix://{}", dir.join("api.sock").display()),
            "--metrics-listen".into(),
            metrics_addr.to_string(),
            "--tokens".into(),
            tokens_file.display().to_string(),
        ]);
        if let Some(b) = opts.bookmark_interval {
            args.extend(["--bookmark-interval".into(), b.to_string()]);
        }
        if opts.tls {
            args.extend(etcd.pki.apiserver_tls_flags());
        }
        args.extend(opts.extra.iter().cloned());
        let mut server = ApiServer {
            addr,
            metrics_addr,
            dir,
            args,
            child: None,
            tokens,
            ca: opts.tls.then(|| etcd.pki.ca.cert.clone()),
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<()> {
        let bin = workspace_binary("skiff-apiserver")?;
        let log = self.log_path();
        let mut child = spawn_with_pdeathsig(&bin, &self.args, &log)?;
        wait_port(self.addr, &mut child, "skiff-apiserver", &log)?;
        self.child = Some(child);
        Ok(())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("apiserver.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server outright (SIGKILL).
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// CPU time the server has used so far (user and system), from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Result<Duration> {
        let pid = self.pid().context("the API server is not running")?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command (which may hold spaces) start after its closing ')'.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed /proc/PID/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; here 12 and 13 (state is the first).
        let ticks: u64 = fields
            .get(11..13)
            .context("short /proc/PID/stat")?
            .iter()
            .map(|f| f.parse::<u64>())
            .sum::<Result<u64, _>>()?;
        let hz = rustix::param::clock_ticks_per_second();
        Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
    }

    /// Kills and starts it again on the same address.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }

    pub fn token(&self, user: &str) -> &str {
        self.tokens
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, t)| t.as_str())
            .unwrap_or("no-such-identity-token")
    }

    pub fn url(&self) -> String {
        if self.ca.is_some() {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The server's Unix socket (reachable from any network namespace), as a `--server` URL.
    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.dir.join("api.sock").display())
    }

    /// Client settings for one of [`IDENTITIES`].
    pub fn config(&self, user: &str) -> ClientConfig {
        let mut c = ClientConfig::new(self.url(), self.token(user));
        c.ca_cert = self.ca.clone();
        c
    }

    pub async fn client(&self, user: &str) -> Result<Client> {
        Client::connect(&self.config(user))
            .await
            .with_context(|| format!("connecting to the API server as {user}"))
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(self.metrics_addr)?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        stop(&mut self.child);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Options of a scheduler or controller-manager started for a test.
#[derive(Debug, Clone)]
pub struct ComponentOptions {
    /// Lease timing in seconds: (duration, renew deadline, retry period). Short, so a test sees
    /// a failover in a few seconds.
    pub lease: (f64, f64, f64),
    /// Extra flags.
    pub extra: Vec<String>,
}

impl Default for ComponentOptions {
    fn default() -> Self {
        ComponentOptions {
            lease: (3.0, 2.0, 0.4),
            extra: Vec::new(),
        }
    }
}

/// A running `skiff-scheduler` or `skiff-controller-manager`, authenticated as `controller`.
#[derive(Debug)]
pub struct Component {
    pub binary: String,
    /// Its name in the component's Lease (`holderIdentity`).
    pub identity: String,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl ApiServer {
    /// Starts `binary` (`skiff-scheduler`, `skiff-controller-manager`) against this server with
    /// leader election on and the identity `identity`.
    pub fn component(
        &self,
        binary: &str,
        identity: &str,
        opts: &ComponentOptions,
    ) -> Result<Component> {
        let dir = std::env::temp_dir().join(unique_prefix(identity));
        fs::create_dir_all(&dir)?;
        let token_file = dir.join("token");
        fs::write(&token_file, self.token("controller"))?;
        let (duration, deadline, retry) = opts.lease;
        let mut args = vec![
            "--server".into(),
            self.url(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--identity".into(),
            identity.into(),
            "--leader-elect-lease-duration".into(),
            duration.to_string(),
            "--leader-elect-renew-deadline".into(),
            deadline.to_string(),
            "--leader-elect-retry-period".into(),
            retry.to_string(),
        ];
        if let Some(ca) = &self.ca {
            args.extend(["--ca-cert".into(), ca.display().to_string()]);
        }
        args.extend(opts.extra.iter().cloned());
        let mut c = Component {
            binary: binary.into(),
            identity: identity.into(),
            dir,
            args,
            child: None,
        };
        c.launch()?;
        Ok(c)
    }
}

impl Component {
    fn launch(&mut self) -> Result<()> {
        let bin = workspace_binary(&self.binary)?;
        self.child = Some(spawn_with_pdeathsig(&bin, &self.args, &self.log_path())?);
        Ok(())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills it outright (SIGKILL): it cannot give its lease up.
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Freezes (SIGSTOP, `true`) or thaws (SIGCONT, `false`) the process: a leader cut off
    /// from the world without knowing it.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let child = self
            .child
            .as_ref()
            .context("the component is not running")?;
        let pid = rustix::process::Pid::from_raw(i32::try_from(child.id())?)
            .context("the component has no pid")?;
        let signal = if frozen {
            rustix::process::Signal::STOP
        } else {
            rustix::process::Signal::CONT
        };
        rustix::process::kill_process(pid, signal)?;
        Ok(())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        stop(&mut self.child);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
