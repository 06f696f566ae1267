//! `skiff-local demo`: the whole cluster at work, unattended. It brings a cluster up (taking an
//! earlier one of the same name down first), applies `examples/web.yaml` through the API (a
//! Deployment of busybox web servers that answer with their pod's name, a Service, and a client
//! pod on the last node), waits for the pods and the Service's endpoints, then calls the
//! Service's ClusterIP from inside the client pod and shows which pod answered each request,
//! and its node port on every node's address. Then it runs a real application, unchanged:
//! `examples/app.yaml` in namespace `two-tier` (redis configured by a ConfigMap and a Secret, a
//! busybox CGI app finding redis through the Service environment variables, nginx in front
//! configured by a ConfigMap, a client pod), its images pulled from the registry `up` runs. It
//! waits for it, shows requests from the client pod going through nginx to the app and redis
//! (each answer names the app pod and the visit count redis keeps), then edits nginx's
//! ConfigMap and shows the new configuration served by every nginx pod, none recreated or
//! restarted. A cluster without the registry (`--no-registry`) skips the application. The
//! cluster stays up to be explored.
//!
//! The application adds seconds, not minutes (6 s in one run: its pods Ready 3 s after it was
//! applied, the registry being on the same machine; the edit served 3 s after it was made). An
//! edit is served within about 7 s because the demo's agents refresh ConfigMap volumes every
//! 5 s; by default they take up to a minute, as kubelet does.
//!
//! Safety rule (DESIGN.md): every request starts inside the client pod's network namespace,
//! which the cluster made and which has no route off the machine; from the host's namespace the
//! demo only talks to the API server on loopback.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use skiff_api::{
    Object,
    client::{Client, ListParams},
    kinds::{Endpoints, Pod, Service, condition},
    manifest,
};

use crate::{
    Progress, State,
    app::{self, Visit},
    down,
    layout::{Layout, node_ip, node_name},
    process::{log_tail, which},
    up::{UpOptions, admin_config, runtime, up},
};

/// The manifest the demo applies, as users find it in the repository.
pub const MANIFEST_PATH: &str = "examples/web.yaml";
/// Its text, built in so that the demo needs no checkout.
pub const MANIFEST: &str = include_str!("../../examples/web.yaml");
/// The namespace of the manifest's objects.
pub const NAMESPACE: &str = "default";
/// The Deployment and the Service.
pub const APP: &str = "web";
/// The client pod.
pub const CLIENT: &str = "client";
/// How long the web pods may take to be Ready behind the Service (the first pod on each node
/// imports the image).
const PODS_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the first request may keep being retried while the client's node programs the
/// Service into its datapath.
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// When some backend has not answered after the requested number of requests (a fair hash
/// skips one of three backends in 12 requests about once in 40 runs), up to this many more.
const EXTRA_REQUESTS: usize = 36;
/// How long a node port may take to answer on each node (its uplink is attached after the
/// agent's first sync).
const NODE_PORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Each request's deadline (`timeout` around busybox wget).
const REQUEST_TIMEOUT_SECS: &str = "2";
/// How often a long wait says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// The namespace `examples/app.yaml` goes into (its `web` and `client` would collide with
/// `examples/web.yaml`'s in `default`).
pub const APP_NAMESPACE: &str = "two-tier";
/// How often the demo's agents refresh ConfigMap and Secret volumes, so that the edit shows
/// within seconds.
const VOLUME_RESYNC_SECS: u64 = 5;
/// How long the application's pods may take to be Ready (each node pulls nginx and redis from
/// the registry first).
const APP_TIMEOUT: Duration = Duration::from_secs(240);
/// Requests sent through nginx to the app.
const APP_REQUESTS: usize = 6;
/// How long an edit of nginx's ConfigMap may take to be served by every nginx pod.
const EDIT_TIMEOUT: Duration = Duration::from_secs(90);
/// Answers with the new version in a row that count as every nginx pod serving it.
const EDIT_IN_A_ROW: usize = 10;

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub layout: Layout,
    /// Number of nodes (at least 1; the client pod runs on the last).
    pub nodes: usize,
    /// How many requests to send to the Service.
    pub requests: usize,
    /// Where the Skiff binaries are.
    pub bin_dir: PathBuf,
    /// Set (by a signal handler) to stop: during `up`, what it made is removed; after it, the
    /// cluster stays up.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Run the cluster's registry; without it the application part is skipped.
    pub registry: bool,
}

/// One pod as the demo shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub uid: String,
    pub node: String,
    pub ip: String,
}

/// What the demo saw.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The cluster it brought up.
    pub state: State,
    /// The Service's ClusterIP.
    pub cluster_ip: String,
    /// The NodePort the API server allocated (0 for a ClusterIP Service).
    pub node_port: i32,
    /// The web pods, by node then name.
    pub backends: Vec<PodInfo>,
    pub client: PodInfo,
    /// The client pod's network namespace, where the requests started.
    pub client_netns: PathBuf,
    /// Answers per backend pod name (every backend is present).
    pub answers: BTreeMap<String, usize>,
    /// Requests sent (all answered).
    pub sent: usize,
    /// For each node, in order: its node port's address and the pod that answered there.
    pub node_port_answers: Vec<(String, PodInfo)>,
    /// What the application part saw (`None`: skipped, the cluster has no registry).
    pub app: Option<AppReport>,
}

/// What the demo saw of `examples/app.yaml`.
#[derive(Debug, Clone)]
pub struct AppReport {
    pub namespace: String,
    /// The `web` (nginx) Service's ClusterIP and node port.
    pub web_ip: String,
    pub web_node_port: i32,
    /// The application's client pod and its network namespace.
    pub client: String,
    pub client_netns: PathBuf,
    /// The app's answers through nginx, in order.
    pub visits: Vec<Visit>,
    /// How long after the ConfigMap edit every nginx pod served the new version.
    pub edit_served_after: Duration,
    /// The application's pods (none recreated or restarted by the edit).
    pub pods: usize,
}

/// Runs the demo. After `up` succeeded the cluster stays up, also when a later step fails (the
/// error then says how to look at it and take it down).
pub fn demo(opts: &DemoOptions, progress: &Progress) -> Result<DemoReport> {
    ensure!(opts.nodes >= 1, "--nodes must be at least 1");
    ensure!(opts.requests >= 1, "--requests must be at least 1");
    for (tool, package) in [("nsenter", "util-linux"), ("timeout", "coreutils")] {
        if which(tool).is_none() {
            bail!("{tool} is not installed: apt-get install {package}");
        }
    }
    let client_node = node_name(opts.nodes - 1);
    let mut objects = manifest_objects(&client_node)?;
    if !opts.registry {
        pull_if_not_present(&mut objects);
    }
    let replicas = deployment_replicas(&objects)?;
    let layout = &opts.layout;

    take_down_existing(layout, progress)?;
    let state = up(
        &UpOptions {
            layout: layout.clone(),
            nodes: opts.nodes,
            image_dir: None,
            bin_dir: opts.bin_dir.clone(),
            api_port: None,
            ready_timeout: Duration::from_secs(120),
            agent_args: vec![format!("--volume-resync={VOLUME_RESYNC_SECS}")],
            controller_args: Vec::new(),
            cancel: opts.cancel.clone(),
            registry: opts.registry,
        },
        progress,
    )?;
    progress.step(format!(
        "cluster {:?} is up: every node is Ready",
        layout.name()
    ));
    if !opts.registry {
        progress.step(format!(
            "no registry (--no-registry): the pods of {MANIFEST_PATH} run the busybox image imported on every node, with imagePullPolicy IfNotPresent (an untagged image is otherwise pulled Always, as in Kubernetes)"
        ));
    }
    let mut run = Run {
        opts,
        layout,
        progress,
        state,
        replicas,
        client_node,
    };
    run.all(objects).map_err(|e| {
        anyhow!(
            "{e:#}\n\nThe cluster {:?} is left up for a look (logs in {}; `skiff-local status{}` shows it); `skiff-local down{}` removes it.",
            layout.name(),
            layout.logs_dir().display(),
            target_flags(layout),
            target_flags(layout)
        )
    })
}

/// The manifest's objects, in the default namespace where they name none, with the client pod
/// pinned to `client_node`.
pub fn manifest_objects(client_node: &str) -> Result<Vec<Object>> {
    let mut objects =
        manifest::parse(MANIFEST.as_bytes()).with_context(|| format!("parsing {MANIFEST_PATH}"))?;
    let mut pinned = false;
    for o in &mut objects {
        if o.meta().namespace.is_empty() {
            o.meta_mut().namespace = NAMESPACE.into();
        }
        if let Object::Pod(p) = o
            && p.metadata.name == CLIENT
        {
            p.spec.node_name = client_node.into();
            pinned = true;
        }
    }
    ensure!(pinned, "{MANIFEST_PATH} has no pod named {CLIENT:?}");
    Ok(objects)
}

/// Containers that name no pull policy get `IfNotPresent`: without a registry the nodes have
/// only the images imported into them, and an untagged image defaults to `Always`.
fn pull_if_not_present(objects: &mut [Object]) {
    for o in objects {
        let spec = match o {
            Object::Pod(p) => &mut p.spec,
            Object::Deployment(d) => &mut d.spec.template.spec,
            _ => continue,
        };
        for c in spec
            .init_containers
            .iter_mut()
            .chain(spec.containers.iter_mut())
        {
            if c.image_pull_policy.is_empty() {
                c.image_pull_policy = "IfNotPresent".into();
            }
        }
    }
}

/// How many replicas the manifest's Deployment asks for.
fn deployment_replicas(objects: &[Object]) -> Result<usize> {
    objects
        .iter()
        .find_map(|o| match o {
            Object::Deployment(d) if d.metadata.name == APP => Some(d.spec.replicas.unwrap_or(1)),
            _ => None,
        })
        .with_context(|| format!("{MANIFEST_PATH} has no Deployment named {APP:?}"))
        .and_then(|r| usize::try_from(r).context("a negative replica count"))
}

/// ` --name N --dir D` as far as they differ from the defaults, for commands to print.
fn target_flags(layout: &Layout) -> String {
    let mut flags = String::new();
    if layout.name() != crate::layout::DEFAULT_NAME {
        let _ = write!(flags, " --name {}", layout.name());
    }
    if layout.dir() != Path::new(crate::layout::DEFAULT_PARENT).join(layout.name()) {
        let _ = write!(flags, " --dir {}", layout.dir().display());
    }
    flags
}

/// A re-run starts from scratch: a cluster of the same name (up, or left over) is taken down.
fn take_down_existing(layout: &Layout, progress: &Progress) -> Result<()> {
    let recorded = State::load(layout)?.is_some();
    if !recorded && down::leftovers(layout, None).is_empty() {
        return Ok(());
    }
    progress.step(format!(
        "a cluster named {:?} is already {} in {}: taking it down first",
        layout.name(),
        if recorded { "up" } else { "partly there" },
        layout.dir().display()
    ));
    // Its every step would drown the demo's own; a failure names what is left.
    down::down(layout, Duration::from_secs(10), &Progress::quiet())
        .context("taking the earlier cluster down")?;
    progress.step(format!(
        "the earlier cluster {:?} is removed",
        layout.name()
    ));
    Ok(())
}

/// The demo after `up`.
struct Run<'a> {
    opts: &'a DemoOptions,
    layout: &'a Layout,
    progress: &'a Progress,
    state: State,
    replicas: usize,
    client_node: String,
}

/// The pods behind the Service once it is ready.
struct Ready {
    backends: Vec<PodInfo>,
    client: PodInfo,
}

impl Run<'_> {
    /// A runtime and an admin client of the cluster's API server on it.
    fn admin(&self) -> Result<(tokio::runtime::Runtime, Client)> {
        let api = self
            .state
            .api_addr
            .context("the state has no API address")?;
        let rt = runtime()?;
        let admin = rt
            .block_on(Client::connect(&admin_config(self.layout, api)?))
            .context("connecting to the API server as admin")?;
        Ok((rt, admin))
    }

    fn all(&mut self, objects: Vec<Object>) -> Result<DemoReport> {
        let (rt, admin) = self.admin()?;
        let service = rt.block_on(self.apply(&admin, objects))?;
        let ready = rt.block_on(self.wait_ready(&admin))?;
        // The client's connection lives on this runtime; a later `down` waits for open
        // connections, so close it now.
        drop(admin);
        drop(rt);
        let port = service
            .spec
            .ports
            .first()
            .context("the Service has no port")?;
        self.show_pods(&ready);
        // The uid comes from the API: only a well-formed one becomes a path.
        skiff_api::validate::uid(&ready.client.uid)
            .map_err(|e| anyhow!("the client pod has a malformed uid: {e}"))?;
        let netns = self
            .layout
            .node_root(self.opts.nodes - 1)
            .join("netns")
            .join(&ready.client.uid);
        ensure!(
            netns.exists(),
            "the client pod's network namespace {} does not exist",
            netns.display()
        );
        let url = if port.port == 80 {
            format!("http://{}/", service.spec.cluster_ip)
        } else {
            format!("http://{}:{}/", service.spec.cluster_ip, port.port)
        };
        let (answers, sent) = self.call(&netns, &url, &ready)?;
        let node_port_answers = if port.node_port == 0 {
            Vec::new()
        } else {
            self.call_node_ports(&netns, port.node_port, &ready)?
        };
        let app = match &self.state.registry {
            Some(registry) => Some(self.app(&registry.host)?),
            None => {
                self.progress.step(format!(
                    "skipping {}: this cluster runs no registry (--no-registry), and its nginx and redis images come only from there",
                    app::MANIFEST_PATH
                ));
                None
            }
        };
        Ok(DemoReport {
            state: self.state.clone(),
            cluster_ip: service.spec.cluster_ip.clone(),
            node_port: port.node_port,
            backends: ready.backends,
            client: ready.client,
            client_netns: netns,
            answers,
            sent,
            node_port_answers,
            app,
        })
    }

    /// The application part: `examples/app.yaml` applied into [`APP_NAMESPACE`], waited for,
    /// asked through nginx from its client pod, and nginx's ConfigMap edited live.
    fn app(&self, registry: &str) -> Result<AppReport> {
        let ns = APP_NAMESPACE;
        let objects = app::objects(ns)?;
        let deployments = app::deployments(&objects)?;
        let (rt, admin) = self.admin()?;
        self.progress.step(format!(
            "now a real application, unchanged: applying {} into namespace {ns} (what `skiffctl create namespace {ns}; skiffctl apply -n {ns} -f {}` does)",
            app::MANIFEST_PATH,
            app::MANIFEST_PATH
        ));
        rt.block_on(app::create(&admin, ns, &objects, |o| {
            self.progress.step(format!(
                "  created {}/{}{}",
                o.info().singular,
                o.meta().name,
                object_detail(o)
            ));
        }))?;
        self.progress.step(format!(
            "waiting for redis, the app and nginx to be Ready (each node pulls their images from the cluster's registry at {registry}, nginx and redis through its docker.io mirror)"
        ));
        let say = |m: String| self.progress.step(m);
        let check = || self.check_cancel();
        let before = rt.block_on(app::wait_ready(
            &admin,
            ns,
            &deployments,
            APP_TIMEOUT,
            &say,
            &check,
        ))?;
        let client = rt.block_on(wait_running(&admin, ns, app::CLIENT, PODS_TIMEOUT))?;
        let mut table = format!("\n{:<28} {:<8} {:<14} ROLE\n", "POD", "NODE", "IP");
        for p in &before.pods {
            let role = match p.deployment.as_str() {
                "redis" => "redis (config: ConfigMap, password: Secret)",
                "app" => "app (busybox httpd + CGI, finds redis by env)",
                "web" => "nginx (config: ConfigMap)",
                other => other,
            };
            let _ = writeln!(table, "{:<28} {:<8} {:<14} {role}", p.name, p.node, p.ip);
        }
        let _ = writeln!(
            table,
            "{:<28} {:<8} {:<14} client",
            client.metadata.name, client.spec.node_name, client.status.pod_ip
        );
        self.progress.say(table);
        let netns = app::pod_netns(self.layout, &client)?;
        let web = rt
            .block_on(admin.get::<Service>(ns, app::FRONT))
            .with_context(|| format!("reading Service {}", app::FRONT))?;
        let web_ip: std::net::Ipv4Addr = web.spec.cluster_ip.parse().with_context(|| {
            format!(
                "Service {} has ClusterIP {:?}",
                app::FRONT,
                web.spec.cluster_ip
            )
        })?;
        let port = web.spec.ports.first().context("Service web has no port")?;
        let addr = std::net::SocketAddrV4::new(
            web_ip,
            u16::try_from(port.port).context("a port out of range")?,
        );

        self.progress.step(format!(
            "calling http://{addr}/ {APP_REQUESTS} times from pod {} on {}: client -> nginx (Service {}) -> the app's Service -> an app pod -> redis (AUTH with the Secret's password, INCR visits)",
            client.metadata.name,
            client.spec.node_name,
            app::FRONT
        ));
        let mut visits = Vec::new();
        for i in 1..=APP_REQUESTS {
            self.check_cancel()?;
            let timeout = if i == 1 {
                FIRST_ANSWER_TIMEOUT
            } else {
                NODE_PORT_TIMEOUT
            };
            let (body, visit, retries) = app::visit(&netns, addr, timeout)?;
            let retried = if retries > 0 {
                format!(" (after {retries} retries while the Services were programmed)")
            } else {
                String::new()
            };
            self.progress
                .say(format!("  request {i}: {body:?}{retried}"));
            visits.push(visit);
        }
        ensure!(
            app::counted_once(&visits),
            "redis did not count every visit exactly once: {:?}",
            visits.iter().map(|v| v.count).collect::<Vec<_>>()
        );
        let app_pods: BTreeSet<&str> = visits.iter().map(|v| v.pod.as_str()).collect();
        self.progress.say(format!(
            "Every request answered 200 by the app through nginx; {} app pod(s) answered ({}), and redis counted each visit once ({} to {}).\n",
            app_pods.len(),
            join_and(&app_pods.into_iter().collect::<Vec<_>>()),
            visits.first().map_or(0, |v| v.count),
            visits.last().map_or(0, |v| v.count)
        ));

        let (version, _) = app::get_ok(&netns, addr, app::VERSION_PATH, NODE_PORT_TIMEOUT)?;
        ensure!(
            version == app::VERSION,
            "nginx served {version:?} on {}, not {:?}",
            app::VERSION_PATH,
            app::VERSION
        );
        self.progress.step(format!(
            "nginx serves {:?} on {}, as ConfigMap {} says; editing the ConfigMap to {:?} through the API",
            version,
            app::VERSION_PATH,
            app::CONFIG,
            app::EDITED_VERSION
        ));
        rt.block_on(app::edit_version(
            &admin,
            ns,
            app::VERSION,
            app::EDITED_VERSION,
        ))?;
        self.progress.step(format!(
            "  waiting for every nginx pod to serve it: the agents rewrite the mounted file (every {VOLUME_RESYNC_SECS} s in this demo) and the pod's reload loop runs `nginx -s reload` when it changes"
        ));
        let took = app::wait_version(
            &netns,
            addr,
            app::EDITED_VERSION,
            EDIT_IN_A_ROW,
            EDIT_TIMEOUT,
            &say,
            &check,
        )?;
        self.progress.step(format!(
            "  {:?} served {EDIT_IN_A_ROW} times in a row {:.1} s after the edit",
            app::EDITED_VERSION,
            took.as_secs_f64()
        ));
        let after = rt.block_on(app::snapshot(&admin, ns, &deployments))?;
        ensure!(
            before.identities() == after.identities(),
            "pods were recreated or restarted by the edit: {:?} -> {:?}",
            before.identities(),
            after.identities()
        );
        self.progress.step(format!(
            "  the same {} pods as before the edit, none restarted: nginx reloaded its configuration in place",
            after.pods.len()
        ));
        // A later `down` waits for open connections: close this one now.
        drop(admin);
        drop(rt);
        Ok(AppReport {
            namespace: ns.to_owned(),
            web_ip: web.spec.cluster_ip.clone(),
            web_node_port: port.node_port,
            client: client.metadata.name.clone(),
            client_netns: netns,
            visits,
            edit_served_after: took,
            pods: after.pods.len(),
        })
    }

    fn check_cancel(&self) -> Result<()> {
        if self
            .opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Creates every object of the manifest; returns the Service as stored (with its ClusterIP).
    async fn apply(&self, admin: &Client, objects: Vec<Object>) -> Result<Service> {
        self.progress.step(format!(
            "applying {MANIFEST_PATH} through the API (what `skiffctl apply -f {MANIFEST_PATH}` does)"
        ));
        let mut service = None;
        for o in objects {
            let what = format!("{}/{}", o.info().singular, o.meta().name);
            let stored = admin
                .create_object(&o)
                .await
                .with_context(|| format!("creating {what}"))?;
            self.progress
                .step(format!("  created {what}{}", object_detail(&stored)));
            if let Object::Service(s) = stored
                && s.metadata.name == APP
            {
                service = Some(s);
            }
        }
        let service =
            service.with_context(|| format!("{MANIFEST_PATH} has no Service named {APP:?}"))?;
        ensure!(
            !service.spec.cluster_ip.is_empty() && service.spec.cluster_ip != "None",
            "the Service {APP} got no ClusterIP"
        );
        Ok(service)
    }

    /// Waits until the web pods are Ready, the client runs, and the Service's Endpoints list
    /// exactly the ready web pods.
    async fn wait_ready(&self, admin: &Client) -> Result<Ready> {
        self.progress.step(format!(
            "waiting for {} web pods to be Ready (their readiness probe: HTTP GET :8080/) and behind the Service",
            self.replicas
        ));
        let started = Instant::now();
        let deadline = started + PODS_TIMEOUT;
        let mut reported: BTreeSet<String> = BTreeSet::new();
        let mut client_reported = false;
        let mut next_note = started + PROGRESS_EVERY;
        loop {
            self.check_cancel()?;
            let call = async {
                let (web, _) = admin
                    .list::<Pod>(NAMESPACE, &ListParams::labels(format!("app={APP}")))
                    .await?;
                let client = match admin.get::<Pod>(NAMESPACE, CLIENT).await {
                    Ok(p) => Some(p),
                    Err(e) if e.is_not_found() => None,
                    Err(e) => return Err(e.into()),
                };
                let endpoints = match admin.get::<Endpoints>(NAMESPACE, APP).await {
                    Ok(e) => Some(e),
                    Err(e) if e.is_not_found() => None,
                    Err(e) => return Err(e.into()),
                };
                anyhow::Ok((web, client, endpoints))
            };
            let (web, client, endpoints) = tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .context("the API server did not answer within 10 s")??;
            let ready: Vec<PodInfo> = web
                .iter()
                .filter(|p| p.is_ready() && p.metadata.deletion_timestamp.is_none())
                .map(pod_info)
                .collect();
            for p in &ready {
                if reported.insert(p.name.clone()) {
                    self.progress.step(format!(
                        "  {}: Ready on {} ({}) after {:.1} s",
                        p.name,
                        p.node,
                        p.ip,
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
            let client =
                client.filter(|c| c.status.phase == "Running" && !c.status.pod_ip.is_empty());
            if let Some(c) = &client
                && !client_reported
            {
                client_reported = true;
                self.progress.step(format!(
                    "  {CLIENT}: Running on {} ({})",
                    c.spec.node_name, c.status.pod_ip
                ));
            }
            let listed = endpoints
                .as_ref()
                .map(Endpoints::ready_ips)
                .unwrap_or_default();
            let want: BTreeSet<String> = ready.iter().map(|p| p.ip.clone()).collect();
            if ready.len() == self.replicas
                && listed == want
                && let Some(client) = client
            {
                self.progress.step(format!(
                    "  Endpoints {APP}: {} ready addresses ({})",
                    listed.len(),
                    listed.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
                let mut backends = ready;
                backends.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
                return Ok(Ready {
                    backends,
                    client: pod_info(&client),
                });
            }
            if Instant::now() > deadline {
                let mut why = format!(
                    "the web pods were not all Ready behind the Service within {PODS_TIMEOUT:?} ({} of {} ready, endpoints {:?}, client {}):",
                    ready.len(),
                    self.replicas,
                    listed,
                    if client_reported {
                        "running"
                    } else {
                        "not running"
                    }
                );
                for p in &web {
                    let _ = write!(why, "\n  {}", describe(p));
                }
                for i in 0..self.opts.nodes {
                    let log = self.layout.log(&format!("agent-{}", node_name(i)));
                    let _ = write!(
                        why,
                        "\nthe end of {}:\n{}",
                        log.display(),
                        log_tail(&log, 10)
                    );
                }
                bail!(why);
            }
            if Instant::now() >= next_note {
                next_note += PROGRESS_EVERY;
                let mut note = format!(
                    "  still waiting after {:.0} s: {} of {} web pods Ready, {} behind the Service",
                    started.elapsed().as_secs_f64(),
                    ready.len(),
                    self.replicas,
                    listed.len()
                );
                for p in web.iter().filter(|p| !p.is_ready()) {
                    let _ = write!(note, "; {}", describe(p));
                }
                self.progress.step(note);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn show_pods(&self, ready: &Ready) {
        let mut table = format!("\n{:<28} {:<8} {:<14} ROLE\n", "POD", "NODE", "IP");
        for p in &ready.backends {
            let _ = writeln!(
                table,
                "{:<28} {:<8} {:<14} web server (Ready)",
                p.name, p.node, p.ip
            );
        }
        let c = &ready.client;
        let _ = writeln!(
            table,
            "{:<28} {:<8} {:<14} client (pinned to {})",
            c.name, c.node, c.ip, self.client_node
        );
        self.progress.say(table);
    }

    /// Sends the requests from the client pod's namespace; returns the answers per pod and how
    /// many requests went out. Fails unless every request was answered by a web pod and every
    /// web pod answered.
    fn call(
        &self,
        netns: &Path,
        url: &str,
        ready: &Ready,
    ) -> Result<(BTreeMap<String, usize>, usize)> {
        let by_name: BTreeMap<&str, &PodInfo> = ready
            .backends
            .iter()
            .map(|p| (p.name.as_str(), p))
            .collect();
        let client = &ready.client;
        self.progress.step(format!(
            "calling the Service at {url} {} times from pod {} on {}: each request a new TCP connection from inside the pod's network namespace ({})",
            self.opts.requests,
            client.name,
            client.node,
            netns.display()
        ));
        let mut answers: BTreeMap<String, usize> =
            by_name.keys().map(|n| ((*n).to_owned(), 0)).collect();
        let mut failures: Vec<String> = Vec::new();
        let mut sent = 0;
        let limit = self.opts.requests + EXTRA_REQUESTS;
        while sent < limit {
            let all_answered = answers.values().all(|n| *n > 0);
            if sent >= self.opts.requests && all_answered {
                break;
            }
            if sent == self.opts.requests {
                let silent: Vec<&str> = answers
                    .iter()
                    .filter(|(_, n)| **n == 0)
                    .map(|(p, _)| p.as_str())
                    .collect();
                self.progress.step(format!(
                    "  {} has not answered yet (the datapath hashes each new connection over the backends); sending up to {EXTRA_REQUESTS} more",
                    silent.join(" and ")
                ));
            }
            self.check_cancel()?;
            sent += 1;
            let (result, retries) = if sent == 1 {
                self.retried(netns, url, FIRST_ANSWER_TIMEOUT)?
            } else {
                (get_from(netns, url), 0)
            };
            match result {
                Ok(body) => {
                    let Some(pod) = by_name.get(body.as_str()) else {
                        failures.push(format!("request {sent}: an unexpected answer {body:?}"));
                        self.progress
                            .say(format!("  request {sent:>2}: unexpected answer {body:?}"));
                        continue;
                    };
                    *answers.entry(pod.name.clone()).or_default() += 1;
                    let place = if pod.node == client.node {
                        "same node as the client".to_owned()
                    } else {
                        format!("across the fabric from {}", client.node)
                    };
                    let retried = if retries > 0 {
                        format!(
                            "; after {retries} retr{} while {} programmed the Service",
                            if retries == 1 { "y" } else { "ies" },
                            client.node
                        )
                    } else {
                        String::new()
                    };
                    self.progress.say(format!(
                        "  request {sent:>2}: answered by {:<28} on {} ({}){retried}",
                        pod.name, pod.node, place
                    ));
                }
                Err(e) => {
                    self.progress
                        .say(format!("  request {sent:>2}: FAILED: {e:#}"));
                    failures.push(format!("request {sent}: {e:#}"));
                }
            }
        }
        self.progress
            .say(summary(&answers, &ready.backends, client, sent, url));
        if !failures.is_empty() {
            bail!(
                "{} of {sent} requests to {url} failed:\n  {}",
                failures.len(),
                failures.join("\n  ")
            );
        }
        let silent: Vec<&str> = answers
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(p, _)| p.as_str())
            .collect();
        if !silent.is_empty() {
            bail!(
                "{} never answered in {sent} requests to {url}: the Service did not balance over every backend",
                silent.join(", ")
            );
        }
        Ok((answers, sent))
    }

    /// One request, retried until it is answered or `timeout` passes (a node may still be
    /// programming the Service). Returns its result and the retries.
    fn retried(
        &self,
        netns: &Path,
        url: &str,
        timeout: Duration,
    ) -> Result<(Result<String>, usize)> {
        let deadline = Instant::now() + timeout;
        let mut retries = 0;
        loop {
            let result = get_from(netns, url);
            if result.is_ok() || Instant::now() > deadline {
                return Ok((result, retries));
            }
            self.check_cancel()?;
            retries += 1;
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// One request to the Service's node port on every node's address, from the client pod:
    /// the NodePort program on that node's uplink hands it to a backend on any node. Fails
    /// unless each is answered by a web pod.
    fn call_node_ports(
        &self,
        netns: &Path,
        node_port: i32,
        ready: &Ready,
    ) -> Result<Vec<(String, PodInfo)>> {
        self.progress.step(format!(
            "calling node port {node_port} on every node's address from pod {} (each node's NodePort program on its uplink picks a backend)",
            ready.client.name
        ));
        let mut answers = Vec::new();
        let mut failures = Vec::new();
        for i in 0..self.opts.nodes {
            self.check_cancel()?;
            let node = node_name(i);
            let addr = format!("{}:{node_port}", node_ip(i)?);
            let (result, _) = self.retried(netns, &format!("http://{addr}/"), NODE_PORT_TIMEOUT)?;
            let answer = result.and_then(|body| {
                ready
                    .backends
                    .iter()
                    .find(|p| p.name == body)
                    .cloned()
                    .with_context(|| format!("an unexpected answer {body:?}"))
            });
            match answer {
                Ok(pod) => {
                    self.progress.say(format!(
                        "  {node} at {addr:<18} answered by {:<28} on {}",
                        pod.name, pod.node
                    ));
                    answers.push((addr, pod));
                }
                Err(e) => {
                    self.progress
                        .say(format!("  {node} at {addr:<18} FAILED: {e:#}"));
                    failures.push(format!("{node} ({addr}): {e:#}"));
                }
            }
        }
        if !failures.is_empty() {
            bail!(
                "the node port was not answered on every node:\n  {}",
                failures.join("\n  ")
            );
        }
        Ok(answers)
    }
}

/// What the demo says about an object it created, after its kind and name.
fn object_detail(o: &Object) -> String {
    match o {
        Object::Deployment(d) => format!(
            ": {} replica(s) of {}",
            d.spec.replicas.unwrap_or(1),
            d.spec
                .template
                .spec
                .containers
                .iter()
                .map(|c| c.image.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Object::Service(s) => {
            let ports = s
                .spec
                .ports
                .iter()
                .map(|p| {
                    let mut t = format!("{}:{}", s.spec.cluster_ip, p.port);
                    if p.node_port != 0 {
                        let _ = write!(t, ", node port {}", p.node_port);
                    }
                    t
                })
                .collect::<Vec<_>>()
                .join("; ");
            if s.spec.type_ == "ClusterIP" {
                format!(": ClusterIP {ports}")
            } else {
                format!(": {}, ClusterIP {ports}", s.spec.type_)
            }
        }
        Object::Pod(p) if !p.spec.node_name.is_empty() => {
            format!(": pinned to {}", p.spec.node_name)
        }
        Object::ConfigMap(c) => format!(
            ": {}",
            c.data.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        Object::Secret(s) => format!(
            ": {} (values not shown)",
            s.data
                .keys()
                .chain(s.string_data.keys())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => String::new(),
    }
}

/// Waits until pod `name` runs with an address.
async fn wait_running(
    admin: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<Pod> {
    let deadline = Instant::now() + timeout;
    loop {
        let p = admin
            .get::<Pod>(namespace, name)
            .await
            .with_context(|| format!("reading pod {name}"))?;
        if p.status.phase == "Running" && !p.status.pod_ip.is_empty() {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!(
                "pod {name} was not Running within {timeout:?}: {}",
                describe(&p)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn pod_info(p: &Pod) -> PodInfo {
    PodInfo {
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
        node: p.spec.node_name.clone(),
        ip: p.status.pod_ip.clone(),
    }
}

/// A pod's state in one line, for a timeout's message.
fn describe(p: &Pod) -> String {
    let mut s = format!(
        "{} on {:?}: {}",
        p.metadata.name,
        p.spec.node_name,
        if p.status.phase.is_empty() {
            "Pending"
        } else {
            &p.status.phase
        }
    );
    if let Some(c) = condition(&p.status.conditions, "Ready") {
        let _ = write!(s, ", Ready={}", c.status);
    }
    for c in &p.status.container_statuses {
        if let Some(w) = &c.state.waiting {
            let _ = write!(s, ", {} waiting: {} {}", c.name, w.reason, w.message);
        }
        if c.restart_count > 0 {
            let _ = write!(s, ", {} restarted {} times", c.name, c.restart_count);
        }
    }
    s
}

/// One HTTP GET from inside a pod's network namespace (a new TCP connection); the page, or why
/// there was none.
fn get_from(netns: &Path, url: &str) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "timeout", REQUEST_TIMEOUT_SECS, "busybox", "wget"])
        .args(["-q", "-O-", url])
        .stdin(Stdio::null())
        .output()
        .context("running nsenter")?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if out.status.code() == Some(124) {
        bail!("no answer within {REQUEST_TIMEOUT_SECS} s");
    }
    bail!(
        "{}",
        if stderr.is_empty() {
            format!("wget failed ({})", out.status)
        } else {
            stderr
        }
    )
}

/// The answers per pod, and where they came from relative to the client.
fn summary(
    answers: &BTreeMap<String, usize>,
    backends: &[PodInfo],
    client: &PodInfo,
    sent: usize,
    url: &str,
) -> String {
    let answered: usize = answers.values().sum();
    let mut out = format!("\nAnswers per pod ({answered} of {sent} requests answered):\n");
    for p in backends {
        let n = answers.get(&p.name).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "  {:<28} {:<8} {:<14} {n:>3}  {}",
            p.name,
            p.node,
            p.ip,
            "#".repeat(n)
        );
    }
    let mut remote_nodes: BTreeSet<&str> = BTreeSet::new();
    let mut remote = 0;
    for p in backends.iter().filter(|p| p.node != client.node) {
        let n = answers.get(&p.name).copied().unwrap_or(0);
        if n > 0 {
            remote_nodes.insert(&p.node);
            remote += n;
        }
    }
    if remote > 0 {
        let nodes: Vec<&str> = remote_nodes.into_iter().collect();
        let _ = writeln!(
            out,
            "{remote} of {answered} answers came from pods on {}, other nodes than the client's ({}), {} from its own node.",
            join_and(&nodes),
            client.node,
            answered - remote
        );
    } else {
        let _ = writeln!(
            out,
            "Every answer came from the client's own node ({}): no web pod runs elsewhere.",
            client.node
        );
    }
    let _ = writeln!(
        out,
        "Every connection went to {url}: the eBPF program on the client pod's veth on {}\npicked a backend per connection and rewrote the destination in the kernel (no iptables,\nno kube-proxy); the replies were rewritten back.",
        client.node
    );
    out
}

/// `a`, `a and b`, `a, b and c`.
fn join_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// What to tell people after the demo: how to look at the cluster and how to take it down.
pub fn next_steps(layout: &Layout, bin_dir: &Path, report: &DemoReport) -> String {
    let mut out = crate::instructions(layout, &report.state);
    out.push_str("\nLook around (with SKIFF_CONFIG exported as above):\n");
    let on_path =
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d == bin_dir));
    if !on_path {
        let _ = writeln!(
            out,
            "  export PATH={}:$PATH   # skiffctl and skiff-local",
            bin_dir.display()
        );
    }
    let _ = write!(
        out,
        concat!(
            "  skiffctl get pods -o wide\n",
            "  skiffctl get services,endpoints\n",
            "  skiffctl scale deployment {app} --replicas 5\n",
            "Call the Service yourself, from inside the client pod:\n",
            "  nsenter --net={netns} -- busybox wget -q -O- http://{ip}/\n",
        ),
        app = APP,
        netns = report.client_netns.display(),
        ip = report.cluster_ip
    );
    if let Some((addr, _)) = report.node_port_answers.first() {
        let _ = writeln!(
            out,
            "Or through its node port, on any node's address:\n  nsenter --net={} -- busybox wget -q -O- http://{addr}/",
            report.client_netns.display()
        );
    }
    if let Some(app) = &report.app {
        let _ = write!(
            out,
            concat!(
                "The application of {manifest} runs in namespace {ns}:\n",
                "  skiffctl -n {ns} get pods,services,configmaps,secrets -o wide\n",
                "  nsenter --net={netns} -- busybox wget -q -O- http://{ip}/           # nginx -> app -> redis\n",
                "  nsenter --net={netns} -- busybox wget -q -O- http://{ip}{version}\n",
                "  skiffctl -n {ns} get configmap {config} -o yaml > {config}.yaml   # edit it, then\n",
                "  skiffctl -n {ns} apply -f {config}.yaml                           # and ask {version} again\n",
            ),
            manifest = app::MANIFEST_PATH,
            ns = app.namespace,
            netns = app.client_netns.display(),
            ip = app.web_ip,
            version = app::VERSION_PATH,
            config = app::CONFIG,
        );
    }
    let _ = writeln!(
        out,
        "When done, remove the cluster and everything it made:\n  skiff-local down{}",
        target_flags(layout)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_manifest_is_a_deployment_a_service_and_a_client_pinned_to_the_last_node() {
        let objects = manifest_objects("node-4").unwrap();
        let kinds: Vec<&str> = objects.iter().map(|o| o.info().kind).collect();
        assert_eq!(kinds, ["Deployment", "Service", "Pod"]);
        assert!(objects.iter().all(|o| o.meta().namespace == NAMESPACE));
        assert_eq!(deployment_replicas(&objects).unwrap(), 3);
        for o in &objects {
            // As the API server checks it: after its defaults.
            let mut defaulted = o.clone();
            defaulted.apply_defaults();
            assert!(
                defaulted.validate().is_empty(),
                "{:?}",
                defaulted.validate()
            );
            match o {
                Object::Pod(p) => assert_eq!(p.spec.node_name, "node-4"),
                Object::Deployment(d) => {
                    let c = &d.spec.template.spec.containers[0];
                    assert!(c.readiness_probe.is_some(), "no readiness probe");
                    assert!(
                        c.command.join(" ").contains("hostname >"),
                        "{:?}",
                        c.command
                    );
                }
                Object::Service(s) => {
                    assert_eq!(s.spec.selector.get("app").map(String::as_str), Some(APP));
                    assert_eq!(s.spec.ports[0].port, 80);
                }
                _ => panic!("unexpected {}", o.info().kind),
            }
        }
    }

    fn pod(name: &str, node: &str) -> PodInfo {
        PodInfo {
            name: name.into(),
            uid: format!("uid-{name}"),
            node: node.into(),
            ip: "10.244.0.2".into(),
        }
    }

    #[test]
    fn without_a_registry_the_example_pods_run_the_imported_image_instead_of_pulling_it() {
        let mut objects = manifest_objects("node-2").unwrap();
        pull_if_not_present(&mut objects);
        let mut containers = 0;
        for o in &mut objects {
            o.apply_defaults();
            let spec = match o {
                Object::Pod(p) => &p.spec,
                Object::Deployment(d) => &d.spec.template.spec,
                _ => continue,
            };
            for c in &spec.containers {
                assert_eq!(c.image_pull_policy, "IfNotPresent", "{}", c.name);
                containers += 1;
            }
        }
        assert_eq!(containers, 2);
    }

    #[test]
    fn the_summary_names_the_other_nodes_that_answered() {
        let backends = [
            pod("web-a", "node-0"),
            pod("web-b", "node-1"),
            pod("web-c", "node-2"),
        ];
        let client = pod("client", "node-2");
        let answers: BTreeMap<String, usize> = [("web-a", 5), ("web-b", 4), ("web-c", 3)]
            .into_iter()
            .map(|(n, c)| (n.to_owned(), c))
            .collect();
        let text = summary(&answers, &backends, &client, 12, "http://10.96.0.10/");
        assert!(text.contains("12 of 12 requests answered"), "{text}");
        assert!(
            text.contains("9 of 12 answers came from pods on node-0 and node-1, other nodes than the client's (node-2), 3 from its own node"),
            "{text}"
        );
        assert!(text.contains("#####\n"), "{text}");
        let lone = summary(&answers, &backends[2..], &client, 3, "http://10.96.0.10/");
        assert!(
            lone.contains("Every answer came from the client's own node"),
            "{lone}"
        );
    }

    #[test]
    fn the_next_steps_say_how_to_reach_both_applications_and_end_with_tearing_the_cluster_down() {
        let layout = Layout::new("demo", None).unwrap();
        let report = DemoReport {
            state: State::new(&layout, 3),
            cluster_ip: "10.96.0.10".into(),
            node_port: 30080,
            backends: vec![pod("web-a", "node-0")],
            client: pod("client", "node-2"),
            client_netns: PathBuf::from("/var/lib/skiff-local/demo/nodes/node-2/netns/uid-client"),
            answers: BTreeMap::new(),
            sent: 12,
            node_port_answers: vec![("10.250.0.10:30080".into(), pod("web-a", "node-0"))],
            app: Some(AppReport {
                namespace: APP_NAMESPACE.into(),
                web_ip: "10.96.0.20".into(),
                web_node_port: 30081,
                client: "client".into(),
                client_netns: PathBuf::from("/var/lib/skiff-local/demo/nodes/node-1/netns/uid-c2"),
                visits: Vec::new(),
                edit_served_after: Duration::from_secs(6),
                pods: 5,
            }),
        };
        let text = next_steps(&layout, Path::new("/nonexistent/bin"), &report);
        for line in [
            "Tear down: skiff-local down --name demo\n",
            "  export PATH=/nonexistent/bin:$PATH",
            "\n  skiffctl get pods -o wide\n",
            "\n  nsenter --net=/var/lib/skiff-local/demo/nodes/node-2/netns/uid-client -- busybox wget -q -O- http://10.96.0.10/\n",
            "\n  nsenter --net=/var/lib/skiff-local/demo/nodes/node-2/netns/uid-client -- busybox wget -q -O- http://10.250.0.10:30080/\n",
            "\n  skiffctl -n two-tier get pods,services,configmaps,secrets -o wide\n",
            "\n  nsenter --net=/var/lib/skiff-local/demo/nodes/node-1/netns/uid-c2 -- busybox wget -q -O- http://10.96.0.20/ ",
            "\n  skiffctl -n two-tier apply -f web-config.yaml ",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        // The last thing said is how to remove the cluster.
        assert!(
            text.ends_with(
                "When done, remove the cluster and everything it made:\n  skiff-local down --name demo\n"
            ),
            "{text}"
        );
        // Without the application part, nothing about it is said.
        let without_app = next_steps(
            &layout,
            Path::new("/nonexistent/bin"),
            &DemoReport {
                app: None,
                ..report
            },
        );
        assert!(!without_app.contains("two-tier"), "{without_app}");
    }

    #[test]
    fn lists_read_as_prose() {
        assert_eq!(join_and(&["a"]), "a");
        assert_eq!(join_and(&["a", "b"]), "a and b");
        assert_eq!(join_and(&["a", "b", "c"]), "a, b and c");
    }

    #[test]
    fn printed_commands_carry_only_flags_that_differ_from_the_defaults() {
        let l = Layout::new("demo", None).unwrap();
        assert_eq!(target_flags(&l), " --name demo");
        let l = Layout::new("skiff", Some(Path::new("/tmp/c"))).unwrap();
        assert_eq!(target_flags(&l), " --dir /tmp/c");
    }
}
