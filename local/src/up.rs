//! `skiff-local up`: starts a cluster step by step, recording each thing it makes in the state
//! file before going on, and removes everything again when a step fails.

use std::{
    fs,
    io::Read as _,
    net::{SocketAddr, TcpListener},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use skiff_api::{
    client::{Client, ClientConfig, ListParams},
    kinds::{Node, condition},
};
use skiff_testbed::{
    agent::NodeFlags,
    containerd,
    control::{MemberConfig, free_ports},
    registry,
};

use crate::{
    Progress, down, image,
    layout::{CLUSTER_CIDR, Layout, MAX_NODES, SERVICE_CIDR, node_ip, node_name, node_pod_cidr},
    net,
    process::{Started, log_tail, spawn_detached, spawn_detached_in_netns, which},
    ready,
    state::{NetnsRecord, Phase, RegistryRecord, State, write_private},
};

/// The name of the cluster's etcd member in its certificates (`pki/etcd/<this>/`).
pub const ETCD_MEMBER: &str = "etcd-0";
/// Where etcd and the API server listen (loopback), as named in their certificates.
const LOOPBACK_HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];
/// How long the cluster's certificates are valid.
const PKI_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// The Skiff binaries a cluster runs, found in the binary directory.
pub const SKIFF_BINARIES: [&str; 4] = [
    "skiff-apiserver",
    "skiff-scheduler",
    "skiff-controller-manager",
    "skiff-agent",
];

/// What `up` starts.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub layout: Layout,
    /// Number of nodes (1 to [`MAX_NODES`]).
    pub nodes: usize,
    /// A directory of OCI image archives for the agents to import; `None` builds busybox in the
    /// cluster's directory, which the agents import only when there is no registry (with one,
    /// it is pushed there and pulled).
    pub image_dir: Option<PathBuf>,
    /// Where skiff-apiserver, skiff-scheduler, skiff-controller-manager and skiff-agent are.
    pub bin_dir: PathBuf,
    /// The API server's loopback port; `None` picks a free one.
    pub api_port: Option<u16>,
    /// How long every node may take to become Ready.
    pub ready_timeout: Duration,
    /// Further flags for every `skiff-agent node`.
    pub agent_args: Vec<String>,
    /// Further flags for `skiff-controller-manager` (its node monitor grace period and pod
    /// eviction timeout, for example).
    pub controller_args: Vec<String>,
    /// Set (by a signal handler) to stop `up` at the next step or poll; what it made so far is
    /// removed, as after a failure.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Run the cluster's registry (Debian's `docker-registry` at 10.250.0.2:5000 on the
    /// fabric), push the busybox, nginx and redis images into it, and point every node's agent
    /// at it (as the mirror of docker.io too).
    pub registry: bool,
}

/// Starts the cluster. On failure everything made so far is removed again and the error says
/// what failed (with the end of the failing process's log).
pub fn up(opts: &UpOptions, progress: &Progress) -> Result<State> {
    let layout = &opts.layout;
    check_prerequisites(opts)?;
    refuse_existing(layout)?;
    let created_dirs = make_dir(layout.dir())?;
    let mut state = State::new(layout, opts.nodes);
    state.created_dirs = created_dirs;
    if let Err(e) = state.create(layout) {
        remove_created_dirs(&state.created_dirs);
        return Err(e);
    }
    progress.step(format!(
        "cluster {:?} with {} node(s) in {}",
        layout.name(),
        opts.nodes,
        layout.dir().display()
    ));
    let mut run = Run {
        opts,
        layout,
        state,
        children: Vec::new(),
        progress,
    };
    match run.all() {
        Ok(()) => {
            for c in run.children.drain(..) {
                c.detach();
            }
            Ok(run.state)
        }
        Err(e) => {
            progress.step("up failed; removing what it made");
            for c in run.children.drain(..) {
                c.detach();
            }
            if let Err(cleanup) =
                down::teardown(layout, Some(&run.state), Duration::from_secs(5), progress)
            {
                return Err(anyhow!(
                    "{e:#}\ncleaning up failed too: {cleanup:#}\nrun `skiff-local down --name {} --dir {}` once the cause is fixed",
                    layout.name(),
                    layout.dir().display()
                ));
            }
            Err(e)
        }
    }
}

fn check_prerequisites(opts: &UpOptions) -> Result<()> {
    if !(1..=MAX_NODES).contains(&opts.nodes) {
        bail!("--nodes must be between 1 and {MAX_NODES}");
    }
    if !rustix::process::geteuid().is_root() {
        bail!(
            "skiff-local must run as root: it creates network namespaces and cgroups and runs containerd"
        );
    }
    for bin in SKIFF_BINARIES {
        let p = opts.bin_dir.join(bin);
        if !p.is_file() {
            bail!(
                "{} is missing: build the Skiff binaries (`cargo build --workspace --bins`) and run skiff-local from their directory, or set SKIFF_BIN_DIR",
                p.display()
            );
        }
    }
    for (tool, package) in [
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("containerd", "containerd"),
        ("containerd-shim-runc-v2", "containerd"),
        ("runc", "runc"),
        ("ip", "iproute2"),
        ("setsid", "util-linux"),
    ] {
        if which(tool).is_none() {
            bail!("{tool} is not installed: apt-get install {package} (cargo xtask setup does)");
        }
    }
    if let Some(p) = opts.api_port {
        TcpListener::bind(("127.0.0.1", p))
            .with_context(|| format!("the API server's port 127.0.0.1:{p} is not free"))?;
    }
    if opts.registry {
        if let Some(why) = skiff_testbed::registry::missing_tools(false) {
            bail!("{why}; or start the cluster without a registry (--no-registry)");
        }
        if let Some(why) = image::SERVERS.iter().find_map(|s| s.missing()) {
            bail!("{why}; or start the cluster without a registry (--no-registry)");
        }
    }
    if let Some(dir) = &opts.image_dir {
        if !image::has_archives(dir)? {
            bail!(
                "the image directory {} holds no image archive (*.tar)",
                dir.display()
            );
        }
    } else if let Some(why) = image::missing_tools() {
        bail!("{why}");
    }
    Ok(())
}

/// Refuses when a cluster of this name seems up: its state file, or kernel objects named for it.
fn refuse_existing(layout: &Layout) -> Result<()> {
    let how = format!(
        "`skiff-local status --name {0} --dir {1}` shows it, `skiff-local down --name {0} --dir {1}` removes it",
        layout.name(),
        layout.dir().display()
    );
    if layout.state_file().exists() {
        bail!(
            "a cluster named {:?} is already up (or was not taken down) in {}: {how}",
            layout.name(),
            layout.dir().display()
        );
    }
    let namespaces = net::netns_with_prefix(&layout.object_prefix());
    if !namespaces.is_empty() {
        bail!(
            "network namespaces of a cluster named {:?} exist ({}), perhaps from another --dir: take that cluster down first",
            layout.name(),
            namespaces.join(", ")
        );
    }
    if let Some(d) = crate::sys::cgroup_dirs(layout).first() {
        bail!(
            "the cgroup {} of a cluster named {:?} exists: take that cluster down first ({how})",
            d.display(),
            layout.name()
        );
    }
    if layout.dir().exists() {
        let mut entries = fs::read_dir(layout.dir())
            .with_context(|| format!("reading {}", layout.dir().display()))?;
        if entries.next().is_some() {
            bail!(
                "{} exists and is not empty: skiff-local keeps a cluster in a new or empty directory (choose another --dir)",
                layout.dir().display()
            );
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents; returns those it created, outermost first.
fn make_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    missing.reverse();
    for d in &missing {
        fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    if missing.last().is_some_and(|d| d == dir) {
        // Tokens live here: owner only.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    Ok(missing)
}

pub(crate) fn remove_created_dirs(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        // Only when empty: anything someone else put there stays.
        let _ = fs::remove_dir(d);
    }
}

/// `up` was interrupted (its cancel flag was set).
#[derive(Debug, Clone, Copy)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// One `up` in progress.
struct Run<'a> {
    opts: &'a UpOptions,
    layout: &'a Layout,
    state: State,
    children: Vec<Started>,
    progress: &'a Progress,
}

impl Run<'_> {
    fn all(&mut self) -> Result<()> {
        let l = self.layout;
        for d in [
            l.logs_dir(),
            l.containerd_dir(),
            l.apiserver_dir(),
            l.tokens_dir(),
            l.nodes_dir(),
        ] {
            fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        fs::set_permissions(l.tokens_dir(), fs::Permissions::from_mode(0o700))?;
        self.claim()?;
        self.image()?;
        self.tokens()?;
        self.etcd()?;
        self.containerd()?;
        self.apiserver()?;
        self.controllers()?;
        self.network()?;
        if self.opts.registry {
            self.registry()?;
        }
        self.agents()?;
        self.wait_nodes_ready()?;
        self.check_children()?;
        write_skiffctl_config(l, self.api_addr()?)?;
        self.state.phase = Phase::Up;
        self.save()
    }

    fn save(&self) -> Result<()> {
        self.state.save(self.layout)
    }

    fn api_addr(&self) -> Result<SocketAddr> {
        self.state
            .api_addr
            .ok_or_else(|| anyhow!("the API server has no address yet"))
    }

    fn image(&mut self) -> Result<()> {
        let dir = match &self.opts.image_dir {
            Some(d) => {
                let d = fs::canonicalize(d).with_context(|| format!("finding {}", d.display()))?;
                self.progress
                    .step(format!("images: importing from {}", d.display()));
                d
            }
            None => {
                let d = self.layout.default_image_dir();
                fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
                self.state.image_built = true;
                self.state.image_dir = Some(d.clone());
                self.save()?;
                self.progress.step(format!(
                    "images: building {} from {}",
                    image::IMAGE_NAME,
                    image::BUSYBOX
                ));
                let digest = image::build_busybox(&d).context("building the busybox image")?;
                self.progress.step(format!(
                    "images: {} ({digest})",
                    d.join(image::ARCHIVE).display()
                ));
                d
            }
        };
        self.state.image_dir = Some(dir);
        self.save()
    }

    /// Random tokens for the admin, the controllers and every node, the API server's token file,
    /// and one file per identity.
    fn tokens(&mut self) -> Result<()> {
        let mut yaml = String::from("tokens:\n");
        let mut identities: Vec<(String, &str, Option<String>)> = vec![
            ("admin".into(), "admin", None),
            ("controller".into(), "controller", None),
        ];
        for i in 0..self.opts.nodes {
            identities.push((node_name(i), "node", Some(node_name(i))));
        }
        for (user, role, node) in identities {
            let token = random_token()?;
            yaml.push_str(&format!(
                "- token: {token}\n  user: {user}\n  role: {role}\n"
            ));
            if let Some(n) = node {
                yaml.push_str(&format!("  node: {n}\n"));
            }
            write_private(
                &self.layout.token_file(&user),
                format!("{token}\n").as_bytes(),
            )?;
        }
        write_private(&self.layout.tokens_file(), yaml.as_bytes())
    }

    fn start(&mut self, name: &str, program: &Path, args: &[String]) -> Result<()> {
        self.check_cancel()?;
        let log = self.layout.log(name);
        let started = spawn_detached(name, program, args, &log)?;
        self.progress.step(format!(
            "{name}: started (pid {}, log {})",
            started.record.pid,
            log.display()
        ));
        self.state.processes.push(started.record.clone());
        self.children.push(started);
        self.save()
    }

    fn check_cancel(&self) -> Result<()> {
        if self
            .opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(Interrupted.into());
        }
        Ok(())
    }

    /// Fails when a started process has exited, with the end of its log (or when `up` was
    /// interrupted).
    fn check_children(&mut self) -> Result<()> {
        self.check_cancel()?;
        for c in &mut self.children {
            if let Some(status) = c.exited() {
                bail!(
                    "{} exited ({status}); the end of its log {}:\n{}",
                    c.record.name,
                    c.record.log.display(),
                    log_tail(&c.record.log, 30)
                );
            }
        }
        Ok(())
    }

    /// Polls `ready` every 50 ms until it says yes, failing when a process exits or after
    /// `timeout`.
    fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_children()?;
            let last = match ready() {
                Ok(true) => return Ok(()),
                Ok(false) => None,
                Err(e) => Some(e),
            };
            if Instant::now() > deadline {
                let why = last.map(|e| format!(" ({e:#})")).unwrap_or_default();
                bail!("{what} within {timeout:?}{why}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn etcd(&mut self) -> Result<()> {
        let program = which("etcd").context("etcd is not installed")?;
        let pki = self.layout.pki();
        skiff_pki::generate(
            &pki.dir,
            &skiff_pki::Spec {
                etcd_members: vec![skiff_pki::EtcdMember {
                    name: ETCD_MEMBER.into(),
                    hosts: LOOPBACK_HOSTS.map(str::to_owned).to_vec(),
                }],
                api_hosts: LOOPBACK_HOSTS.map(str::to_owned).to_vec(),
                validity: PKI_VALIDITY,
            },
        )
        .context("making the cluster's certificates")?;
        self.progress.step(format!(
            "certificates: cluster CA, etcd CA, etcd's and the API server's in {}",
            pki.dir.display()
        ));
        let ports = free_ports(2)?;
        let client = format!("https://127.0.0.1:{}", ports[0]);
        let peer = format!("https://127.0.0.1:{}", ports[1]);
        let name = self.layout.name().to_owned();
        let mut args = MemberConfig {
            name: &name,
            data_dir: &self.layout.etcd_dir(),
            client_url: &client,
            peer_url: &peer,
            initial_cluster: &format!("{name}={peer}"),
            token: &format!("skiff-local-{name}"),
        }
        .args();
        args.extend(pki.etcd_flags(ETCD_MEMBER));
        self.state.etcd_url = Some(client.clone());
        self.start("etcd", &program, &args)?;
        let layout = self.layout;
        self.wait(
            "etcd did not become healthy",
            Duration::from_secs(30),
            || ready::etcd_healthy(layout, &client),
        )?;
        self.progress.step(format!(
            "etcd: healthy at {client} (mutual TLS: clients need a certificate from the etcd CA)"
        ));
        Ok(())
    }

    fn containerd(&mut self) -> Result<()> {
        let program = which("containerd").context("containerd is not installed")?;
        let config = self.layout.containerd_config();
        fs::write(&config, containerd::config(&self.layout.containerd_dir()))
            .with_context(|| format!("writing {}", config.display()))?;
        let args = vec!["--config".into(), config.display().to_string()];
        self.start("containerd", &program, &args)?;
        let socket = self.layout.containerd_socket();
        let layout = self.layout;
        self.wait(
            "containerd did not serve its socket",
            Duration::from_secs(20),
            || Ok(ready::containerd_serving(layout)),
        )?;
        self.progress
            .step(format!("containerd: serving {}", socket.display()));
        Ok(())
    }

    fn apiserver(&mut self) -> Result<()> {
        let program = self.opts.bin_dir.join("skiff-apiserver");
        let port = match self.opts.api_port {
            Some(p) => p,
            None => free_ports(1)?[0],
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let etcd = self
            .state
            .etcd_url
            .clone()
            .context("etcd has no address yet")?;
        let pki = self.layout.pki();
        let mut args = vec![
            "--etcd".into(),
            etcd,
            "--listen".into(),
            addr.to_string(),
            // Node agents, in their own network namespaces, reach the server through this
            // (plain: the socket is open to root only).
            "--listen".into(),
            self.layout.api_unix_url(),
            "--tokens".into(),
            self.layout.tokens_file().display().to_string(),
            "--service-cidr".into(),
            SERVICE_CIDR.into(),
        ];
        args.extend(pki.apiserver_etcd_flags());
        args.extend(pki.apiserver_tls_flags());
        // Secrets and ConfigMaps are encrypted in etcd with a key made at the first `up`.
        let encryption = crate::encryption::write_config(&self.layout.apiserver_dir())?;
        args.extend([
            "--encryption-provider-config".into(),
            encryption.display().to_string(),
        ]);
        self.state.api_addr = Some(addr);
        self.start("apiserver", &program, &args)?;
        let rt = runtime()?;
        let layout = self.layout;
        self.wait(
            "the API server did not answer",
            Duration::from_secs(30),
            || ready::api_answers(layout, addr, &rt),
        )?;
        self.progress.step(format!(
            "apiserver: serving https://{addr} (TLS, cluster CA {}) and {}",
            pki.ca.cert.display(),
            self.layout.api_unix_url()
        ));
        Ok(())
    }

    fn controllers(&mut self) -> Result<()> {
        let common = vec![
            "--server".to_owned(),
            self.layout.api_unix_url(),
            "--token-file".into(),
            self.layout.token_file("controller").display().to_string(),
            // One replica: no lease to wait for after a restart.
            "--leader-elect=false".into(),
        ];
        let program = self.opts.bin_dir.join("skiff-scheduler");
        self.start("scheduler", &program, &common)?;
        let program = self.opts.bin_dir.join("skiff-controller-manager");
        let mut args = common.clone();
        args.extend([
            "--cluster-cidr".into(),
            CLUSTER_CIDR.into(),
            "--node-cidr-mask-size".into(),
            "24".into(),
        ]);
        args.extend(self.opts.controller_args.iter().cloned());
        self.start("controller-manager", &program, &args)
    }

    /// Claims the cluster's name by creating its fabric namespace (`ip netns add` fails when
    /// the name exists): until this succeeded, nothing named for the cluster is this `up`'s,
    /// and a failed `up` removes only what it recorded.
    fn claim(&mut self) -> Result<()> {
        let fabric = self.layout.fabric_netns();
        let inode = net::create_netns(&fabric)?;
        self.state.netns.push(NetnsRecord {
            name: fabric,
            inode,
        });
        self.save()
    }

    fn network(&mut self) -> Result<()> {
        let fabric = self.layout.fabric_netns();
        net::setup_fabric(self.layout)?;
        self.progress.step(format!(
            "network: fabric namespace {fabric} with bridge br0"
        ));
        for i in 0..self.opts.nodes {
            let name = self.layout.node_netns(i);
            let inode = net::create_netns(&name)?;
            self.state.netns.push(NetnsRecord {
                name: name.clone(),
                inode,
            });
            self.save()?;
            net::setup_node(self.layout, i)?;
            self.progress.step(format!(
                "network: {} in namespace {name}, {}/24 on eth0, pod CIDR {}, {SERVICE_CIDR} blackholed",
                node_name(i),
                node_ip(i)?,
                node_pod_cidr(i)?
            ));
        }
        Ok(())
    }

    fn agents(&mut self) -> Result<()> {
        let program = self.opts.bin_dir.join("skiff-agent");
        let image_dir = self
            .state
            .image_dir
            .clone()
            .context("no image directory yet")?;
        let hosts_dir = self.state.registry.as_ref().map(|r| r.hosts_dir.clone());
        // With the registry the nodes pull every image from it; archives are imported only
        // from an image directory given on the command line (the offline path), or when there
        // is no registry.
        let import = (hosts_dir.is_none() || self.opts.image_dir.is_some()).then_some(image_dir);
        for i in 0..self.opts.nodes {
            let name = node_name(i);
            let mut args = NodeFlags {
                netns: &net::netns_path(&self.layout.node_netns(i)),
                server: &self.layout.api_unix_url(),
                token_file: &self.layout.token_file(&name),
                name: &name,
                node_ip: node_ip(i)?,
                pod_cidr: &node_pod_cidr(i)?,
                service_cidr: SERVICE_CIDR,
                containerd: &self.layout.containerd_socket(),
                containerd_namespace: &self.layout.containerd_namespace(i),
                root: &self.layout.node_root(i),
                image_dir: import.as_deref(),
                cgroup_parent: &self.layout.cgroup_parent(),
                // Its pins (/sys/fs/bpf/skiff/<instance>) and lock named for the cluster, so that
                // `down` finds them and no other agent's collide with them.
                datapath_instance: &self.layout.datapath_instance(i),
                registry_config_dir: hosts_dir.as_deref(),
            }
            .args();
            args.extend(self.opts.agent_args.iter().cloned());
            self.start(&format!("agent-{name}"), &program, &args)?;
        }
        Ok(())
    }

    /// The cluster's registry: its namespace on the fabric at 10.250.0.2, `docker-registry`
    /// in it, the busybox, nginx and redis images pushed (from inside its namespace), and the
    /// registry configuration directory the nodes' agents read.
    fn registry(&mut self) -> Result<()> {
        let l = self.layout;
        for d in [
            l.registry_dir(),
            l.registry_storage(),
            l.registry_hosts_dir(),
            l.server_image_dir(),
        ] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let name = l.registry_netns();
        let inode = net::create_netns(&name)?;
        self.state.netns.push(NetnsRecord {
            name: name.clone(),
            inode,
        });
        self.save()?;
        registry::attach(&l.fabric_netns(), &name)?;
        let config = l.registry_config();
        fs::write(&config, registry::config(&l.registry_storage(), None))
            .with_context(|| format!("writing {}", config.display()))?;
        let netns = net::netns_path(&name);
        let program = which(registry::PROGRAM).context("docker-registry is not installed")?;
        let args = vec!["serve".to_owned(), config.display().to_string()];
        self.start_in_netns("registry", &netns, &program, &args)?;
        self.wait(
            "the registry did not answer GET /v2/",
            Duration::from_secs(20),
            || Ok(registry::answers(&netns)),
        )?;
        let host = registry::registry_host();
        registry::write_hosts_dir(&l.registry_hosts_dir(), &host)?;
        self.state.registry = Some(RegistryRecord {
            netns: name,
            config,
            host: host.clone(),
            images: Vec::new(),
            hosts_dir: l.registry_hosts_dir(),
        });
        self.save()?;
        self.progress.step(format!(
            "registry: serving http://{host} on the fabric (namespace {})",
            l.registry_netns()
        ));

        // What to push: busybox from the image directory, nginx and redis built here.
        let mut pushes: Vec<(String, String)> = Vec::new();
        let image_dir = self
            .state
            .image_dir
            .clone()
            .context("no image directory yet")?;
        let busybox = image_dir.join(image::ARCHIVE);
        if busybox.is_file() {
            // Both of the archive's names: `latest` and Debian's version.
            for tag in ["latest", skiff_image::VERSION_TAG] {
                pushes.push((
                    format!("oci-archive:{}:{tag}", busybox.display()),
                    format!("library/busybox:{tag}"),
                ));
            }
        }
        for server in image::SERVERS {
            self.check_cancel()?;
            let built = image::build_server_if_stale(server, &l.server_image_dir())
                .with_context(|| format!("building the {} image", server.name()))?;
            self.progress.step(format!(
                "images: built {} ({})",
                built.archive.display(),
                built.names().join(", ")
            ));
            for tag in &built.tags {
                pushes.push((
                    format!("oci-archive:{}:{tag}", built.archive.display()),
                    format!("library/{}:{tag}", server.name()),
                ));
            }
        }
        for (source, dest) in pushes {
            self.check_cancel()?;
            registry::push(&netns, &source, &dest, None)?;
            if let Some(r) = self.state.registry.as_mut() {
                r.images.push(dest.clone());
            }
            self.save()?;
        }
        let images = self
            .state
            .registry
            .as_ref()
            .map(|r| r.images.join(", "))
            .unwrap_or_default();
        self.progress.step(format!("registry: pushed {images}"));
        Ok(())
    }

    fn start_in_netns(
        &mut self,
        name: &str,
        netns: &Path,
        program: &Path,
        args: &[String],
    ) -> Result<()> {
        self.check_cancel()?;
        let log = self.layout.log(name);
        let started = spawn_detached_in_netns(name, netns, program, args, &log)?;
        self.progress.step(format!(
            "{name}: started in {} (pid {}, log {})",
            netns.display(),
            started.record.pid,
            log.display()
        ));
        self.state.processes.push(started.record.clone());
        self.children.push(started);
        self.save()
    }

    fn wait_nodes_ready(&mut self) -> Result<()> {
        let admin = admin_config(self.layout, self.api_addr()?)?;
        let rt = runtime()?;
        let client = rt
            .block_on(Client::connect(&admin))
            .context("connecting to the API server as admin")?;
        let expected: Vec<String> = (0..self.opts.nodes).map(node_name).collect();
        let mut ready: Vec<String> = Vec::new();
        let started = Instant::now();
        self.progress.step(format!(
            "waiting for {} node(s) to be Ready",
            expected.len()
        ));
        let progress = self.progress;
        let timeout = self.opts.ready_timeout;
        let result = self.wait("not every node was Ready", timeout, || {
            let all = ListParams::default();
            let list = client.list::<Node>("", &all);
            let (nodes, _) = rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), list).await })
                .context("the API server did not answer within 5 s")??;
            for n in &nodes {
                let name = &n.metadata.name;
                let is_ready =
                    condition(&n.status.conditions, "Ready").is_some_and(|c| c.status == "True");
                if is_ready && expected.contains(name) && !ready.contains(name) {
                    ready.push(name.clone());
                    progress.step(format!(
                        "{name}: Ready after {:.1} s",
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
            Ok(ready.len() == expected.len())
        });
        if let Err(e) = result {
            if e.is::<Interrupted>() {
                return Err(e);
            }
            let missing: Vec<&String> = expected.iter().filter(|n| !ready.contains(n)).collect();
            let logs: Vec<String> = missing
                .iter()
                .filter_map(|n| self.state.process(&format!("agent-{n}")))
                .map(|p| {
                    format!(
                        "{} ({}):\n{}",
                        p.name,
                        p.log.display(),
                        log_tail(&p.log, 15)
                    )
                })
                .collect();
            return Err(e.context(format!(
                "not Ready: {}\n{}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                logs.join("\n")
            )));
        }
        Ok(())
    }
}

/// A current-thread async runtime for the few API calls `up` and `status` make.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting an async runtime")
}

/// Client settings for the cluster's admin over loopback TCP, with TLS checked against the
/// cluster CA.
pub fn admin_config(layout: &Layout, api: SocketAddr) -> Result<ClientConfig> {
    let path = layout.token_file("admin");
    let token = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut config = ClientConfig::new(format!("https://{api}"), token.trim());
    config.ca_cert = Some(layout.pki().ca.cert);
    Ok(config)
}

/// Writes the skiffctl config file that points at this cluster as admin.
fn write_skiffctl_config(layout: &Layout, api: SocketAddr) -> Result<()> {
    let text = format!(
        "# skiffctl config for the skiff-local cluster {:?}: export SKIFF_CONFIG={}\nserver: https://{api}\ncaCert: {}\ntokenFile: {}\n",
        layout.name(),
        layout.skiffctl_config().display(),
        layout.pki().ca.cert.display(),
        layout.token_file("admin").display()
    );
    write_private(&layout.skiffctl_config(), text.as_bytes())
}

/// 128 random bits as hex, from the kernel.
fn random_token() -> Result<String> {
    let mut buf = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(image::hex(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_hex_digits_and_differ() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn missing_parents_are_created_and_listed_outermost_first() {
        let base = std::env::temp_dir().join(format!("skiff-local-mkdir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir(&base).unwrap();
        let dir = base.join("a/b");
        let made = make_dir(&dir).unwrap();
        assert_eq!(made, vec![base.join("a"), base.join("a/b")]);
        remove_created_dirs(&made);
        assert!(!base.join("a").exists());
        fs::remove_dir(&base).unwrap();
    }
}
