//! The scheduler and the controllers end to end: real etcd, a real API server, real
//! `skiff-scheduler` and `skiff-controller-manager` processes (leader-elected), and hollow nodes
//! that make the API calls a node agent makes. Nothing here talks to etcd but the API server.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use skiff_api::{
    Kind, Object,
    client::{Client, DeleteParams, ListParams, WatchEvent},
    kinds::{Deployment, Endpoints, Lease, Namespace, Node, Pod, ReplicaSet, Service, condition},
    manifest,
};
use skiff_bench::hollow::{HollowNode, NodeConfig};
use skiff_runtime::metrics::sample;
use skiff_testbed::{
    control::{ApiOptions, ApiServer, Component, ComponentOptions, Etcd, etcd_available},
    workspace_binary,
};
use tokio_stream::StreamExt;

const SCHEDULER: &str = "skiff-scheduler";
const MANAGER: &str = "skiff-controller-manager";

/// A control plane with hollow nodes.
struct Plane {
    admin: Client,
    nodes: Vec<HollowNode>,
    schedulers: Vec<Component>,
    managers: Vec<Component>,
    api: ApiServer,
    etcd: Etcd,
}

struct PlaneOptions {
    nodes: usize,
    replicas: usize,
    manager_flags: Vec<String>,
    scheduler_flags: Vec<String>,
    /// Applied to each node's configuration (by index).
    node: Box<dyn Fn(usize, NodeConfig) -> NodeConfig>,
}

impl Default for PlaneOptions {
    fn default() -> Self {
        PlaneOptions {
            nodes: 3,
            replicas: 1,
            manager_flags: Vec::new(),
            scheduler_flags: Vec::new(),
            node: Box::new(|_, c| c),
        }
    }
}

async fn plane(test: &str, opts: PlaneOptions) -> Result<Option<Plane>> {
    if !etcd_available(test) {
        return Ok(None);
    }
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            nodes: 8,
            bookmark_interval: Some(1.0),
            ..Default::default()
        },
    )?;
    let admin = api.client("admin").await?;
    let mut schedulers = Vec::new();
    let mut managers = Vec::new();
    for i in 0..opts.replicas {
        schedulers.push(api.component(
            SCHEDULER,
            &format!("scheduler-{i}"),
            &ComponentOptions {
                extra: opts.scheduler_flags.clone(),
                ..Default::default()
            },
        )?);
        managers.push(api.component(
            MANAGER,
            &format!("manager-{i}"),
            &ComponentOptions {
                extra: opts.manager_flags.clone(),
                ..Default::default()
            },
        )?);
    }
    let mut p = Plane {
        admin,
        nodes: Vec::new(),
        schedulers,
        managers,
        api,
        etcd,
    };
    for i in 0..opts.nodes {
        p.add_node(i, &opts.node).await?;
    }
    // Let the scheduler's watch deliver the nodes, so placement tests judge all of them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(Some(p))
}

impl Plane {
    /// A Service `web` over a Deployment of three pods; returns the pods and their addresses
    /// (sorted) once all three are the Service's ready endpoints.
    async fn web_behind_a_service(&self) -> Result<(Vec<Pod>, Vec<String>)> {
        self.admin.create(&service("web", "default")?).await?;
        self.admin.create(&deployment("web", 3, "")?).await?;
        let pods = self
            .wait_running("default", "app=web", 3, Duration::from_secs(20))
            .await?;
        let mut ips: Vec<String> = pods.iter().map(|pod| pod.status.pod_ip.clone()).collect();
        ips.sort();
        wait_for(Duration::from_secs(5), "3 ready endpoints", || async {
            let e = self.admin.get::<Endpoints>("default", "web").await?;
            Ok((addresses(&e).0 == ips).then_some(()))
        })
        .await?;
        Ok((pods, ips))
    }

    async fn add_node(
        &mut self,
        i: usize,
        adjust: &dyn Fn(usize, NodeConfig) -> NodeConfig,
    ) -> Result<()> {
        let name = format!("node-{i}");
        let config = adjust(
            i,
            NodeConfig::new(&name, self.api.token(&name), u32::try_from(i)?)
                .with_renew_interval(Duration::from_millis(500)),
        );
        let node = HollowNode::start(&self.admin, config)?;
        node.wait_running(Duration::from_secs(20)).await?;
        self.nodes.push(node);
        Ok(())
    }

    fn node(&self, name: &str) -> Result<&HollowNode> {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .with_context(|| format!("no node {name}"))
    }

    async fn pods(&self, ns: &str, selector: &str) -> Result<Vec<Pod>> {
        Ok(self
            .admin
            .list::<Pod>(ns, &ListParams::labels(selector))
            .await?
            .0)
    }

    /// Waits until exactly `n` pods match, all Running on a node and none terminating.
    async fn wait_running(
        &self,
        ns: &str,
        selector: &str,
        n: usize,
        within: Duration,
    ) -> Result<Vec<Pod>> {
        wait_for(within, &format!("{n} running pods {selector}"), || async {
            let pods = self.pods(ns, selector).await?;
            let ok = pods.len() == n
                && pods.iter().all(|p| {
                    p.status.phase == "Running"
                        && !p.spec.node_name.is_empty()
                        && p.metadata.deletion_timestamp.is_none()
                });
            Ok(ok.then_some(pods))
        })
        .await
        .with_context(|| self.logs())
    }

    /// The components' logs, for a failure's context.
    fn logs(&self) -> String {
        let mut out = String::new();
        for c in self.schedulers.iter().chain(&self.managers) {
            let log = c.log();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            out.push_str(&format!("--- {} (last lines)\n", c.identity));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Runs skiffctl as the admin: (succeeded, stdout, stderr).
    fn skiffctl_outcome(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new(workspace_binary("skiffctl")?)
            .args(args)
            .env("SKIFF_SERVER", self.api.url())
            .env("SKIFF_TOKEN", self.api.token("admin"))
            .env("SKIFF_CONFIG", "/nonexistent")
            .output()
            .context("running skiffctl")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Runs skiffctl as the admin; its stdout, or an error if it failed.
    fn skiffctl(&self, args: &[&str]) -> Result<String> {
        let (ok, stdout, stderr) = self.skiffctl_outcome(args)?;
        ensure!(ok, "skiffctl {args:?} failed: {stdout}{stderr}");
        Ok(stdout)
    }

    async fn set_image(&self, name: &str, image: &str) -> Result<()> {
        loop {
            let mut d = self.admin.get::<Deployment>("default", name).await?;
            d.spec.template.spec.containers[0].image = image.into();
            match self.admin.update(&d).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn holder(&self, lease: &str) -> Result<Option<String>> {
        match self.admin.get::<Lease>("skiff-system", lease).await {
            Ok(l) => Ok(l.spec.holder_identity.filter(|h| !h.is_empty())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, or fails after `within`.
async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn one<K: Kind>(yaml: &str) -> Result<K> {
    manifest::parse(yaml.as_bytes())?
        .pop()
        .and_then(Object::into_kind)
        .context("manifest of the wrong kind")
}

fn deployment(name: &str, replicas: i32, extra_spec: &str) -> Result<Deployment> {
    let yaml = format!(
        r"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
{extra_spec}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: web
        image: web:v1
        resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
"
    );
    one(&yaml)
}

fn per_node(pods: &[Pod]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in pods {
        *m.entry(p.spec.node_name.clone()).or_default() += 1;
    }
    m
}

async fn scale(admin: &Client, name: &str, replicas: i32) -> Result<()> {
    loop {
        let mut d = admin.get::<Deployment>("default", name).await?;
        d.spec.replicas = Some(replicas);
        match admin.update(&d).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_reaches_its_replicas_spread_across_nodes_and_scales_up_and_down() -> Result<()>
{
    let Some(p) = plane("deployment_scale", PlaneOptions::default()).await? else {
        return Ok(());
    };
    p.admin.create(&deployment("web", 5, "")?).await?;
    let pods = p
        .wait_running("default", "app=web", 5, Duration::from_secs(20))
        .await?;
    let spread = per_node(&pods);
    // Spreading by owner puts 5 pods on 3 equal nodes as 2/2/1.
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(spread.values().all(|&n| n <= 2), "{spread:?}");
    // Every pod is owned by one ReplicaSet, which the Deployment owns.
    let (rss, _) = p
        .admin
        .list::<ReplicaSet>("default", &ListParams::default())
        .await?;
    assert_eq!(rss.len(), 1);
    let rs = &rss[0];
    assert!(pods.iter().all(|pod| {
        pod.metadata
            .controller_ref()
            .is_some_and(|o| o.uid == rs.metadata.uid)
    }));

    scale(&p.admin, "web", 20).await?;
    let pods = p
        .wait_running("default", "app=web", 20, Duration::from_secs(30))
        .await?;
    let spread = per_node(&pods);
    assert!(spread.values().all(|&n| (6..=7).contains(&n)), "{spread:?}");
    let d = wait_for(Duration::from_secs(10), "deployment status", || async {
        let d = p.admin.get::<Deployment>("default", "web").await?;
        Ok((d.status.available_replicas == 20
            && d.status.observed_generation == d.metadata.generation)
            .then_some(d))
    })
    .await?;
    assert_eq!(d.status.updated_replicas, 20);
    let available =
        condition(&d.status.conditions, "Available").context("no Available condition")?;
    assert_eq!(available.status, "True");

    scale(&p.admin, "web", 0).await?;
    p.wait_running("default", "app=web", 0, Duration::from_secs(30))
        .await?;
    Ok(())
}

/// One plain HTTP/1.1 GET on loopback: the status code and the body.
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no end of headers")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((code, body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_and_the_controller_manager_serve_metrics_health_and_readiness() -> Result<()>
{
    let ports = skiff_testbed::control::free_ports(2)?;
    let (sched_port, manager_port) = (ports[0], ports[1]);
    let listen = |p: u16| vec!["--metrics-listen".to_owned(), format!("127.0.0.1:{p}")];
    let Some(p) = plane(
        "component_metrics",
        PlaneOptions {
            scheduler_flags: listen(sched_port),
            manager_flags: listen(manager_port),
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    p.admin.create(&deployment("web", 4, "")?).await?;
    p.wait_running("default", "app=web", 4, Duration::from_secs(20))
        .await?;
    for port in [sched_port, manager_port] {
        // Ready once connected and, as the leader, once every informer has listed.
        let ready = wait_for(Duration::from_secs(10), "readiness", || async move {
            Ok(http_get(port, "/readyz")
                .ok()
                .filter(|(code, _)| *code == 200))
        })
        .await?;
        // Kubernetes' format: a bare `ok`, the per-check lines only when asked (or failing).
        assert_eq!(ready.1, "ok");
        assert_eq!(http_get(port, "/healthz")?, (200, "ok".to_owned()));
        assert_eq!(http_get(port, "/healthz/ping")?, (200, "ok".to_owned()));
        assert_eq!(http_get(port, "/livez")?, (200, "ok".to_owned()));
        let (code, verbose) = http_get(port, "/readyz?verbose")?;
        assert_eq!(code, 200, "{verbose}");
        let lines: Vec<&str> = verbose.lines().collect();
        assert_eq!(
            lines,
            [
                "[+]ping ok",
                "[+]api-server-connected ok",
                "[+]informers-synced ok",
                "readyz check passed",
            ],
            "{verbose}"
        );
        assert_eq!(
            http_get(port, "/readyz/informers-synced")?,
            (200, "ok".to_owned())
        );
    }

    let (code, manager) = http_get(manager_port, "/metrics")?;
    assert_eq!(code, 200);
    assert_eq!(
        sample(
            &manager,
            "leader_election_master_status{name=\"skiff-controller-manager\"}"
        ),
        Some(1.0),
        "{manager}"
    );
    // The ReplicaSet controller's queue saw the new ReplicaSet and its pods, and worked them.
    let adds = sample(&manager, "workqueue_adds_total{name=\"replicaset\"}").unwrap_or(0.0);
    assert!(adds >= 1.0, "{manager}");
    let worked = sample(
        &manager,
        "workqueue_work_duration_seconds_count{name=\"replicaset\"}",
    )
    .unwrap_or(0.0);
    assert!(worked >= 1.0, "{manager}");
    assert!(
        sample(&manager, "workqueue_depth{name=\"replicaset\"}").is_some(),
        "{manager}"
    );

    let (code, scheduler) = http_get(sched_port, "/metrics")?;
    assert_eq!(code, 200);
    assert_eq!(
        sample(
            &scheduler,
            "leader_election_master_status{name=\"skiff-scheduler\"}"
        ),
        Some(1.0),
        "{scheduler}"
    );
    let scheduled = sample(
        &scheduler,
        "scheduler_schedule_attempts_total{result=\"scheduled\",profile=\"default-scheduler\"}",
    )
    .unwrap_or(0.0);
    assert!(scheduled >= 4.0, "{scheduler}");
    Ok(())
}

/// What the rollout checker saw of one pod.
#[derive(Debug, Clone, Copy)]
struct Seen {
    active: bool,
    available: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_stays_within_surge_and_unavailability_bounds_and_rolls_back() -> Result<()>
{
    // Pods take a moment to start, so the rollout spans many steps.
    let Some(p) = plane(
        "rolling_update",
        PlaneOptions {
            node: Box::new(|_, mut c| {
                c.start_delay = Duration::from_millis(300);
                c
            }),
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    const REPLICAS: usize = 6;
    const SURGE: usize = 2;
    const UNAVAILABLE: usize = 1;
    p.admin
        .create(&deployment(
            "roll",
            6,
            "  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 2, maxUnavailable: 1}}",
        )?)
        .await?;
    p.wait_running("default", "app=roll", REPLICAS, Duration::from_secs(20))
        .await?;
    p.skiffctl(&["rollout", "status", "deployment/roll", "--timeout", "20s"])?;

    // Watch every pod change from here on and check the bounds after each one.
    let (pods, rev) = p
        .admin
        .list::<Pod>("default", &ListParams::labels("app=roll"))
        .await?;
    let mut watch = p
        .admin
        .watch(
            Pod::INFO,
            "default",
            &ListParams::labels("app=roll"),
            rev,
            false,
        )
        .await?;
    let judge = |pod: &Pod| Seen {
        active: pod.metadata.deletion_timestamp.is_none(),
        available: pod.metadata.deletion_timestamp.is_none()
            && condition(&pod.status.conditions, "Ready").is_some_and(|c| c.status == "True"),
    };
    let state: Arc<Mutex<HashMap<String, Seen>>> = Arc::new(Mutex::new(
        pods.iter()
            .map(|pod| (pod.metadata.name.clone(), judge(pod)))
            .collect(),
    ));
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let (max_active, min_available) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(usize::MAX)));
    let checker = tokio::spawn({
        let (state, violations) = (state.clone(), violations.clone());
        let (max_active, min_available) = (max_active.clone(), min_available.clone());
        async move {
            while let Some(Ok(ev)) = watch.next().await {
                let mut s = state.lock().expect("state");
                match &ev {
                    WatchEvent::Added(Object::Pod(pod))
                    | WatchEvent::Modified(Object::Pod(pod)) => {
                        s.insert(pod.metadata.name.clone(), judge(pod));
                    }
                    WatchEvent::Deleted(Object::Pod(pod)) => {
                        s.remove(&pod.metadata.name);
                    }
                    _ => continue,
                }
                let active = s.values().filter(|x| x.active).count();
                let available = s.values().filter(|x| x.available).count();
                let mut m = max_active.lock().expect("max");
                *m = (*m).max(active);
                let mut m = min_available.lock().expect("min");
                *m = (*m).min(available);
                if active > REPLICAS + SURGE || available < REPLICAS - UNAVAILABLE {
                    violations.lock().expect("violations").push(format!(
                        "at revision {}: {active} pods, {available} available",
                        ev.resource_version()
                    ));
                }
            }
        }
    });

    // Roll out a new image.
    let mut d = p.admin.get::<Deployment>("default", "roll").await?;
    d.spec.template.spec.containers[0].image = "web:v2".into();
    p.admin.update(&d).await?;
    let status = p.skiffctl(&["rollout", "status", "deployment/roll", "--timeout", "60s"])?;
    assert!(status.contains("successfully rolled out"), "{status}");
    let pods = p
        .wait_running("default", "app=roll", REPLICAS, Duration::from_secs(20))
        .await?;
    assert!(
        pods.iter()
            .all(|pod| pod.spec.containers[0].image == "web:v2")
    );
    let history = p.skiffctl(&["rollout", "history", "deployment/roll"])?;
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Roll back to the first template.
    p.skiffctl(&["rollout", "undo", "deployment/roll"])?;
    p.skiffctl(&["rollout", "status", "deployment/roll", "--timeout", "60s"])?;
    let pods = p
        .wait_running("default", "app=roll", REPLICAS, Duration::from_secs(20))
        .await?;
    assert!(
        pods.iter()
            .all(|pod| pod.spec.containers[0].image == "web:v1")
    );
    // The first ReplicaSet was reused (revision 3 now), not a third one made.
    let (rss, _) = p
        .admin
        .list::<ReplicaSet>("default", &ListParams::default())
        .await?;
    assert_eq!(
        rss.len(),
        2,
        "{:?}",
        rss.iter().map(|r| &r.metadata.name).collect::<Vec<_>>()
    );
    checker.abort();
    let v = violations.lock().expect("violations").clone();
    assert!(v.is_empty(), "bounds broken: {v:?}");
    let (max_active, min_available) = (
        *max_active.lock().expect("max"),
        *min_available.lock().expect("min"),
    );
    // The rollout did use its room: it surged and it took pods down.
    assert!(
        max_active > REPLICAS,
        "never surged: at most {max_active} pods"
    );
    assert!(min_available < REPLICAS, "never below {REPLICAS} available");
    Ok(())
}

fn big_pod(name: &str, cpu: &str, extra_spec: &str) -> Result<Pod> {
    let yaml = format!(
        r"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
{extra_spec}
  containers:
  - name: c
    image: web:v1
    resources: {{requests: {{cpu: '{cpu}', memory: 64Mi}}}}
"
    );
    one(&yaml)
}

async fn wait_bound(admin: &Client, name: &str, within: Duration) -> Result<String> {
    wait_for(within, &format!("pod {name} bound"), || async {
        let pod = admin.get::<Pod>("default", name).await?;
        Ok((!pod.spec.node_name.is_empty()).then_some(pod.spec.node_name))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_fits_nowhere_stays_pending_with_the_reason_until_a_node_fits() -> Result<()> {
    let Some(mut p) = plane(
        "unschedulable",
        PlaneOptions {
            nodes: 2,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    // Nodes have 8 CPUs.
    p.admin.create(&big_pod("huge", "12", "")?).await?;
    // (The scheduler may first judge the pod before it has seen the second node; it judges it
    // again when the node appears.)
    let message = wait_for(
        Duration::from_secs(15),
        "PodScheduled=False on 2 nodes",
        || async {
            let pod = p.admin.get::<Pod>("default", "huge").await?;
            Ok(condition(&pod.status.conditions, "PodScheduled")
                .filter(|c| c.status == "False" && c.message.starts_with("0/2 "))
                .map(|c| (c.reason.clone(), c.message.clone())))
        },
    )
    .await?;
    assert_eq!(message.0, "Unschedulable");
    assert!(
        message.1.contains("0/2 nodes are available") && message.1.contains("2 Insufficient cpu"),
        "{}",
        message.1
    );
    let pod = p.admin.get::<Pod>("default", "huge").await?;
    assert!(pod.spec.node_name.is_empty());
    // A node big enough arrives: the pod is scheduled there without anyone touching it.
    p.add_node(2, &|_, mut c| {
        c.cpu = "16".into();
        c
    })
    .await?;
    assert_eq!(
        wait_bound(&p.admin, "huge", Duration::from_secs(15)).await?,
        "node-2"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_selectors_and_taints_with_tolerations_decide_where_pods_go() -> Result<()> {
    let Some(p) = plane(
        "selectors_taints",
        PlaneOptions {
            node: Box::new(|i, mut c| {
                match i {
                    0 => {
                        c.labels.insert("disk".into(), "ssd".into());
                    }
                    1 => c.taints.push(skiff_api::kinds::Taint {
                        key: "dedicated".into(),
                        value: "gpu".into(),
                        effect: "NoSchedule".into(),
                        ..Default::default()
                    }),
                    _ => {}
                }
                c
            }),
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    p.admin
        .create(&big_pod("ssd", "100m", "  nodeSelector: {disk: ssd}")?)
        .await?;
    assert_eq!(
        wait_bound(&p.admin, "ssd", Duration::from_secs(15)).await?,
        "node-0"
    );
    // Pods without the toleration never land on the tainted node.
    p.admin.create(&deployment("plain", 12, "")?).await?;
    let pods = p
        .wait_running("default", "app=plain", 12, Duration::from_secs(20))
        .await?;
    assert!(
        !per_node(&pods).contains_key("node-1"),
        "{:?}",
        per_node(&pods)
    );
    // Tolerating the taint and selecting the node puts it there.
    p.admin
        .create(&big_pod(
            "gpu",
            "100m",
            "  nodeSelector: {kubernetes.io/hostname: node-1}\n  tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]",
        )?)
        .await?;
    assert_eq!(
        wait_bound(&p.admin, "gpu", Duration::from_secs(15)).await?,
        "node-1"
    );
    // Selecting a node with no matching label leaves the pod pending, with why.
    p.admin
        .create(&big_pod("nowhere", "100m", "  nodeSelector: {disk: tape}")?)
        .await?;
    let msg = wait_for(Duration::from_secs(15), "PodScheduled=False", || async {
        let pod = p.admin.get::<Pod>("default", "nowhere").await?;
        Ok(condition(&pod.status.conditions, "PodScheduled")
            .filter(|c| c.status == "False")
            .map(|c| c.message.clone()))
    })
    .await?;
    // Each node is reported for the first filter it fails, as Kubernetes does.
    assert!(msg.contains("0/3 nodes are available"), "{msg}");
    assert!(
        msg.contains("3 node(s) didn't match Pod's node affinity/selector"),
        "{msg}"
    );
    // A pod that selects the tainted node without tolerating it is told about the taint.
    p.admin
        .create(&big_pod(
            "intruder",
            "100m",
            "  nodeSelector: {kubernetes.io/hostname: node-1}",
        )?)
        .await?;
    let msg = wait_for(Duration::from_secs(15), "PodScheduled=False", || async {
        let pod = p.admin.get::<Pod>("default", "intruder").await?;
        Ok(condition(&pod.status.conditions, "PodScheduled")
            .filter(|c| c.status == "False")
            .map(|c| c.message.clone()))
    })
    .await?;
    assert!(
        msg.contains("1 node(s) had untolerated taint {dedicated: gpu}"),
        "{msg}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_its_heartbeat_goes_not_ready_and_its_pods_are_replaced() -> Result<()> {
    const GRACE: f64 = 2.0;
    const EVICTION: f64 = 3.0;
    let Some(p) = plane(
        "dead_node",
        PlaneOptions {
            manager_flags: vec![
                "--node-monitor-grace-period".into(),
                GRACE.to_string(),
                "--pod-eviction-timeout".into(),
                EVICTION.to_string(),
            ],
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    p.admin.create(&deployment("web", 6, "")?).await?;
    let pods = p
        .wait_running("default", "app=web", 6, Duration::from_secs(20))
        .await?;
    let victims: Vec<String> = pods
        .iter()
        .filter(|pod| pod.spec.node_name == "node-0")
        .map(|pod| pod.metadata.name.clone())
        .collect();
    assert!(!victims.is_empty(), "{:?}", per_node(&pods));

    let stopped = Instant::now();
    p.node("node-0")?.stop_heartbeat();
    // The condition (status) and the taint (spec) are two writes: wait for both.
    wait_for(
        Duration::from_secs(10),
        "node-0 NotReady and tainted",
        || async {
            let n = p.admin.get::<Node>("", "node-0").await?;
            let ready = condition(&n.status.conditions, "Ready").map(|c| c.status.clone());
            let tainted = n
                .spec
                .taints
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoSchedule");
            Ok((ready.as_deref() != Some("True") && tainted).then_some(()))
        },
    )
    .await
    .with_context(|| p.logs())?;
    let not_ready_after = stopped.elapsed();
    // Six running pods again, none on node-0, within grace + eviction + a few seconds.
    let budget = Duration::from_secs_f64(GRACE + EVICTION + 8.0);
    wait_for(budget, "6 pods running elsewhere", || async {
        let pods = p.pods("default", "app=web").await?;
        let live: Vec<&Pod> = pods
            .iter()
            .filter(|pod| {
                pod.metadata.deletion_timestamp.is_none()
                    && pod.status.phase == "Running"
                    && pod.spec.node_name != "node-0"
            })
            .collect();
        let victims_left = pods.iter().any(|pod| {
            victims.contains(&pod.metadata.name) && pod.metadata.deletion_timestamp.is_none()
        });
        Ok((live.len() == 6 && !victims_left).then_some(()))
    })
    .await
    .with_context(|| p.logs())?;
    eprintln!(
        "node-0 NotReady after {not_ready_after:?}; pods replaced after {:?}",
        stopped.elapsed()
    );
    // The dead node's pods are eventually gone from the API (force-deleted past their grace).
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leading_scheduler_and_controller_manager_hands_over_to_the_standbys()
-> Result<()> {
    let Some(mut p) = plane(
        "leader_failover",
        PlaneOptions {
            replicas: 2,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    p.admin.create(&deployment("web", 3, "")?).await?;
    p.wait_running("default", "app=web", 3, Duration::from_secs(20))
        .await?;
    let sched = p
        .holder("skiff-scheduler")
        .await?
        .context("no scheduler leader")?;
    let manager = p
        .holder("skiff-controller-manager")
        .await?
        .context("no controller-manager leader")?;
    // Exactly one of each leads; the other stands by.
    for (lease, holder, list) in [
        ("scheduler", &sched, &mut p.schedulers),
        ("manager", &manager, &mut p.managers),
    ] {
        let leader = list
            .iter_mut()
            .find(|c| &c.identity == holder)
            .with_context(|| format!("{lease} leader {holder} is not one of ours"))?;
        leader.kill();
    }
    let killed = Instant::now();
    // Work continues: scale up needs the controller-manager, the new pods need the scheduler.
    scale(&p.admin, "web", 6).await?;
    p.wait_running("default", "app=web", 6, Duration::from_secs(20))
        .await?;
    let took = killed.elapsed();
    let new_sched = p
        .holder("skiff-scheduler")
        .await?
        .context("no scheduler leader")?;
    let new_manager = p
        .holder("skiff-controller-manager")
        .await?
        .context("no manager leader")?;
    assert_ne!(new_sched, sched);
    assert_ne!(new_manager, manager);
    eprintln!("standbys took over and scaled 3 -> 6 within {took:?}");
    // Lease 3 s + a retry period + the work itself.
    assert!(took < Duration::from_secs(12), "{took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_deployment_or_a_namespace_removes_everything_it_owns() -> Result<()> {
    let Some(p) = plane("cascade", PlaneOptions::default()).await? else {
        return Ok(());
    };
    p.admin.create(&deployment("web", 4, "")?).await?;
    p.wait_running("default", "app=web", 4, Duration::from_secs(20))
        .await?;
    p.admin
        .delete(Deployment::INFO, "default", "web", DeleteParams::default())
        .await?;
    wait_for(
        Duration::from_secs(20),
        "replicasets and pods gone",
        || async {
            let (rss, _) = p
                .admin
                .list::<ReplicaSet>("default", &ListParams::default())
                .await?;
            let pods = p.pods("default", "app=web").await?;
            Ok((rss.is_empty() && pods.is_empty()).then_some(()))
        },
    )
    .await?;

    // A namespace with a Deployment, its pods and a Service.
    let mut ns = Namespace::default();
    ns.metadata.name = "team".into();
    p.admin.create(&ns).await?;
    let mut d = deployment("api", 3, "")?;
    d.metadata.namespace = "team".into();
    p.admin.create(&d).await?;
    let svc = service("api", "team")?;
    p.admin.create(&svc).await?;
    p.wait_running("team", "app=api", 3, Duration::from_secs(20))
        .await?;
    p.admin
        .delete(Namespace::INFO, "", "team", DeleteParams::default())
        .await?;
    wait_for(Duration::from_secs(30), "namespace team gone", || async {
        match p.admin.get::<Namespace>("", "team").await {
            Err(e) if e.is_not_found() => Ok(Some(())),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(None),
        }
    })
    .await?;
    for info in [
        Pod::INFO,
        ReplicaSet::INFO,
        Deployment::INFO,
        Service::INFO,
        Endpoints::INFO,
    ] {
        let (items, _) = p
            .admin
            .list_objects(info, "team", &ListParams::default())
            .await?;
        assert!(
            items.is_empty(),
            "{} left in team: {}",
            info.plural,
            items.len()
        );
    }
    Ok(())
}

fn service(name: &str, ns: &str) -> Result<Service> {
    let yaml = format!(
        r"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"
    );
    one(&yaml)
}

fn addresses(e: &Endpoints) -> (Vec<String>, Vec<String>) {
    let mut ready: Vec<String> = e
        .subsets
        .iter()
        .flat_map(|s| s.addresses.iter().map(|a| a.ip.clone()))
        .collect();
    let mut not_ready: Vec<String> = e
        .subsets
        .iter()
        .flat_map(|s| s.not_ready_addresses.iter().map(|a| a.ip.clone()))
        .collect();
    ready.sort();
    not_ready.sort();
    (ready, not_ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_pod_readiness_within_a_second() -> Result<()> {
    let Some(p) = plane("endpoints", PlaneOptions::default()).await? else {
        return Ok(());
    };
    let (pods, ips) = p.web_behind_a_service().await?;
    let ep = p.admin.get::<Endpoints>("default", "web").await?;
    let port = &ep.subsets[0].ports[0];
    assert_eq!((port.port, port.name.as_str()), (8080, "http"));

    // One pod stops being ready: it moves to notReadyAddresses, and back.
    let victim = &pods[0];
    let node = p.node(&victim.spec.node_name)?;
    for ready in [false, true] {
        let started = Instant::now();
        node.set_ready("default", &victim.metadata.name, ready)
            .await?;
        wait_for(
            Duration::from_secs(3),
            "endpoints to follow readiness",
            || async {
                let e = p.admin.get::<Endpoints>("default", "web").await?;
                let (r, nr) = addresses(&e);
                let moved = if ready {
                    r == ips && nr.is_empty()
                } else {
                    !r.contains(&victim.status.pod_ip) && nr == vec![victim.status.pod_ip.clone()]
                };
                Ok(moved.then_some(()))
            },
        )
        .await?;
        eprintln!(
            "endpoints followed ready={ready} in {:?}",
            started.elapsed()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_never_runs_two_templates_at_once_and_pause_holds_a_rollout() -> Result<()> {
    let Some(p) = plane(
        "recreate_pause",
        PlaneOptions {
            node: Box::new(|_, mut c| {
                c.start_delay = Duration::from_millis(200);
                c
            }),
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    p.admin
        .create(&deployment("rec", 4, "  strategy: {type: Recreate}")?)
        .await?;
    p.wait_running("default", "app=rec", 4, Duration::from_secs(20))
        .await?;
    let (pods, rev) = p
        .admin
        .list::<Pod>("default", &ListParams::labels("app=rec"))
        .await?;
    let mut watch = p
        .admin
        .watch(
            Pod::INFO,
            "default",
            &ListParams::labels("app=rec"),
            rev,
            false,
        )
        .await?;
    let images: HashMap<String, String> = pods
        .iter()
        .map(|pod| {
            (
                pod.metadata.name.clone(),
                pod.spec.containers[0].image.clone(),
            )
        })
        .collect();
    // Every pod change: the images of the pods that exist (terminating ones included).
    let checker = tokio::spawn(async move {
        let mut images = images;
        let mut mixed = Vec::new();
        while let Some(Ok(ev)) = watch.next().await {
            match &ev {
                WatchEvent::Added(Object::Pod(pod)) | WatchEvent::Modified(Object::Pod(pod)) => {
                    images.insert(
                        pod.metadata.name.clone(),
                        pod.spec.containers[0].image.clone(),
                    );
                }
                WatchEvent::Deleted(Object::Pod(pod)) => {
                    images.remove(&pod.metadata.name);
                }
                _ => continue,
            }
            let distinct: std::collections::BTreeSet<&String> = images.values().collect();
            if distinct.len() > 1 {
                mixed.push(format!("{images:?}"));
            }
        }
        mixed
    });
    p.set_image("rec", "web:v2").await?;
    p.skiffctl(&["rollout", "status", "deploy/rec", "--timeout", "30s"])?;
    let pods = p
        .wait_running("default", "app=rec", 4, Duration::from_secs(20))
        .await?;
    assert!(
        pods.iter()
            .all(|pod| pod.spec.containers[0].image == "web:v2")
    );
    checker.abort();
    if let Ok(mixed) = checker.await {
        assert!(
            mixed.is_empty(),
            "two templates at once: {:?}",
            mixed.first()
        );
    }

    // Paused: a template change is not rolled out, but scaling is; resumed, it rolls out.
    p.skiffctl(&["rollout", "pause", "deploy/rec"])?;
    p.set_image("rec", "web:v3").await?;
    scale(&p.admin, "rec", 5).await?;
    let pods = p
        .wait_running("default", "app=rec", 5, Duration::from_secs(20))
        .await?;
    assert!(
        pods.iter()
            .all(|pod| pod.spec.containers[0].image == "web:v2")
    );
    let d = wait_for(
        Duration::from_secs(10),
        "Progressing=DeploymentPaused",
        || async {
            let d = p.admin.get::<Deployment>("default", "rec").await?;
            let paused = condition(&d.status.conditions, "Progressing")
                .is_some_and(|c| c.reason == "DeploymentPaused");
            Ok(paused.then_some(d))
        },
    )
    .await?;
    assert_eq!(d.status.updated_replicas, 0);
    let (rss, _) = p
        .admin
        .list::<ReplicaSet>("default", &ListParams::default())
        .await?;
    assert_eq!(rss.len(), 2, "a paused Deployment made a ReplicaSet");
    p.skiffctl(&["rollout", "resume", "deploy/rec"])?;
    p.skiffctl(&["rollout", "status", "deploy/rec", "--timeout", "30s"])?;
    let pods = p
        .wait_running("default", "app=rec", 5, Duration::from_secs(20))
        .await?;
    assert!(
        pods.iter()
            .all(|pod| pod.spec.containers[0].image == "web:v3")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_whose_pods_never_get_ready_exceeds_its_progress_deadline() -> Result<()> {
    let Some(p) = plane(
        "progress_deadline",
        PlaneOptions {
            node: Box::new(|_, mut c| {
                c.ready_by_default = false;
                c
            }),
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    p.admin
        .create(&deployment("stuck", 2, "  progressDeadlineSeconds: 3")?)
        .await?;
    let (ok, out, err) =
        p.skiffctl_outcome(&["rollout", "status", "deploy/stuck", "--timeout", "30s"])?;
    assert!(!ok, "{out}");
    assert!(
        err.contains("deployment \"stuck\" exceeded its progress deadline"),
        "{err}"
    );
    assert!(
        out.contains("0 of 2 updated replicas are available"),
        "{out}"
    );
    let d = p.admin.get::<Deployment>("default", "stuck").await?;
    let c = condition(&d.status.conditions, "Progressing").context("no Progressing")?;
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ProgressDeadlineExceeded")
    );
    let a = condition(&d.status.conditions, "Available").context("no Available")?;
    assert_eq!(a.status, "False");
    // `rollout status` gives up at its own timeout too, and succeeds once the pods are ready.
    p.admin.create(&deployment("slow", 1, "")?).await?;
    let (ok, _, err) =
        p.skiffctl_outcome(&["rollout", "status", "deploy/slow", "--timeout", "2s"])?;
    assert!(!ok && err.contains("timed out"), "{err}");
    let pod = p
        .wait_running("default", "app=slow", 1, Duration::from_secs(20))
        .await?
        .remove(0);
    p.node(&pod.spec.node_name)?
        .set_ready("default", &pod.metadata.name, true)
        .await?;
    p.skiffctl(&["rollout", "status", "deploy/slow", "--timeout", "20s"])?;
    // There is nothing to roll back to.
    let (ok, _, err) = p.skiffctl_outcome(&["rollout", "undo", "deploy/slow"])?;
    assert!(!ok && err.contains("no rollout history found"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_stands_by_when_it_wakes() -> Result<()> {
    let Some(p) = plane(
        "frozen_leader",
        PlaneOptions {
            replicas: 2,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    p.admin.create(&deployment("web", 2, "")?).await?;
    p.wait_running("default", "app=web", 2, Duration::from_secs(20))
        .await?;
    let leader = p
        .holder("skiff-controller-manager")
        .await?
        .context("no controller-manager leader")?;
    let frozen = p
        .managers
        .iter()
        .find(|c| c.identity == leader)
        .context("the leader is not one of ours")?;
    frozen.freeze(true)?;
    // The standby takes over once the lease has gone unrenewed for its duration (3 s).
    let other = wait_for(
        Duration::from_secs(15),
        "a new controller-manager leader",
        || async {
            Ok(p.holder("skiff-controller-manager")
                .await?
                .filter(|h| *h != leader))
        },
    )
    .await?;
    // The old leader wakes up past its renew deadline: it must stop acting and stand by, not
    // fight the new one over the same ReplicaSet.
    frozen.freeze(false)?;
    wait_for(
        Duration::from_secs(10),
        "the old leader to stand down",
        || async { Ok(frozen.log().contains("lost leadership").then_some(())) },
    )
    .await
    .with_context(|| p.logs())?;
    scale(&p.admin, "web", 7).await?;
    p.wait_running("default", "app=web", 7, Duration::from_secs(20))
        .await?;
    // Exactly 7: no second controller created pods for the same ReplicaSet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.pods("default", "app=web").await?.len(), 7);
    assert_eq!(
        p.holder("skiff-controller-manager").await?.as_deref(),
        Some(other.as_str())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_a_pod_cidr_get_distinct_blocks_of_the_cluster_cidr() -> Result<()> {
    // The hollow nodes bring their own CIDRs (10.128.x.0/24): none here, nodes are made by hand.
    let Some(p) = plane(
        "node_ipam",
        PlaneOptions {
            nodes: 0,
            manager_flags: vec![
                "--cluster-cidr".into(),
                "10.244.0.0/16".into(),
                "--node-cidr-mask-size".into(),
                "24".into(),
            ],
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let node = |name: &str, cidr: &str| -> Result<Node> {
        let extra = if cidr.is_empty() {
            String::new()
        } else {
            format!("spec: {{podCIDR: {cidr}}}\n")
        };
        one(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n{extra}"
        ))
    };
    // One node brings its own block, which is then never handed out.
    p.admin.create(&node("own", "10.244.0.0/24")?).await?;
    for i in 0..3 {
        p.admin.create(&node(&format!("bare-{i}"), "")?).await?;
    }
    let cidrs = wait_for(Duration::from_secs(10), "pod CIDRs assigned", || async {
        let mut cidrs = BTreeMap::new();
        for i in 0..3 {
            let n = p.admin.get::<Node>("", &format!("bare-{i}")).await?;
            if n.spec.pod_cidr.is_empty() {
                return Ok(None);
            }
            cidrs.insert(n.metadata.name.clone(), n.spec.pod_cidr.clone());
        }
        Ok(Some(cidrs))
    })
    .await
    .with_context(|| p.logs())?;
    let mut blocks: Vec<&String> = cidrs.values().collect();
    blocks.sort();
    assert_eq!(
        blocks,
        ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"],
        "{cidrs:?}"
    );
    let own = p.admin.get::<Node>("", "own").await?;
    assert_eq!(own.spec.pod_cidr, "10.244.0.0/24");
    Ok(())
}

/// The node lifecycle controller's taints.
const LIFECYCLE_TAINTS: [&str; 2] = [
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/not-ready",
];

/// What is wrong with a node for a test that expects every node Ready: its Ready condition says
/// otherwise, or it carries a taint of the node lifecycle controller.
fn node_trouble(n: &Node) -> Option<String> {
    let ready = condition(&n.status.conditions, "Ready").map(|c| c.status.as_str());
    let taints: Vec<&str> = n
        .spec
        .taints
        .iter()
        .filter(|t| LIFECYCLE_TAINTS.contains(&t.key.as_str()))
        .map(|t| t.key.as_str())
        .collect();
    (ready != Some("True") || !taints.is_empty())
        .then(|| format!("node {} Ready={ready:?} taints={taints:?}", n.metadata.name))
}

/// Watches `K` in `namespace` from revision `after` until aborted, across API server restarts
/// and etcd outages (a broken watch resumes from the last revision it delivered, so nothing in
/// between is missed), and records every object `judge` finds wrong, with the time since
/// `started`.
fn sentinel<K, F>(
    admin: Client,
    namespace: &'static str,
    after: i64,
    started: Instant,
    judge: F,
    seen: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()>
where
    K: Kind,
    F: Fn(&K) -> Option<String> + Send + 'static,
{
    tokio::spawn(async move {
        let mut after = after;
        loop {
            if let Ok(mut watch) = admin
                .watch(K::INFO, namespace, &ListParams::default(), after, true)
                .await
            {
                while let Some(Ok(ev)) = watch.next().await {
                    after = after.max(ev.resource_version());
                    let (WatchEvent::Added(o) | WatchEvent::Modified(o)) = ev else {
                        continue;
                    };
                    if let Some(wrong) = K::from_object(o).as_ref().and_then(&judge) {
                        seen.lock()
                            .expect("seen")
                            .push(format!("{:.1?}: {wrong}", started.elapsed()));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Which part of the control plane an outage takes away.
#[derive(Debug, Clone, Copy)]
enum Outage {
    ApiServer,
    Etcd,
}

/// Three hollow nodes renewing every 0.5 s, a Service with three ready endpoints, and a
/// controller-manager without leader election (as `skiff-local` runs it: it keeps its state
/// through the outage instead of starting afresh) with a grace period of `GRACE` s. `outage`
/// goes away for 2.5 grace periods; over the outage and three grace periods after it, a watch
/// of Nodes and Endpoints sees no node leave Ready, no lifecycle taint and no ready address go.
/// Then one node really stops renewing and must be marked NotReady within the grace period and
/// a poll.
async fn an_outage_is_not_taken_for_the_silence_of_the_nodes(
    test: &str,
    outage: Outage,
) -> Result<()> {
    // Five seconds: room for the nodes, whose connections broke too, to renew again on a loaded
    // two-core machine before a fresh grace period runs out.
    const GRACE: f64 = 5.0;
    let Some(mut p) = plane(
        test,
        PlaneOptions {
            manager_flags: vec![
                "--node-monitor-grace-period".into(),
                GRACE.to_string(),
                "--pod-eviction-timeout".into(),
                "3".into(),
                "--leader-elect=false".into(),
            ],
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let (_, ips) = p.web_behind_a_service().await?;
    // Past the controller's first grace period, with every node Ready and untainted.
    tokio::time::sleep(Duration::from_secs_f64(GRACE)).await;
    let (nodes, node_rev) = p.admin.list::<Node>("", &ListParams::default()).await?;
    let trouble: Vec<String> = nodes.iter().filter_map(node_trouble).collect();
    ensure!(trouble.is_empty(), "before the outage: {trouble:?}");
    let (_, ep_rev) = p
        .admin
        .list::<Endpoints>("default", &ListParams::default())
        .await?;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let expected = ips.clone();
    let watchers = [
        sentinel::<Node, _>(
            p.admin.clone(),
            "",
            node_rev,
            started,
            node_trouble,
            seen.clone(),
        ),
        sentinel::<Endpoints, _>(
            p.admin.clone(),
            "default",
            ep_rev,
            started,
            move |e| {
                let ready = addresses(e).0;
                (e.metadata.name == "web" && ready != expected)
                    .then(|| format!("endpoints web ready={ready:?}"))
            },
            seen.clone(),
        ),
    ];

    let outage_for = Duration::from_secs_f64(GRACE * 2.5);
    match outage {
        Outage::ApiServer => p.api.kill(),
        Outage::Etcd => p.etcd.kill(0),
    }
    tokio::time::sleep(outage_for).await;
    match outage {
        Outage::ApiServer => p.api.restart()?,
        Outage::Etcd => p.etcd.restart(0)?,
    }
    let back = Instant::now();
    // Over three grace periods after it, read every node directly as well.
    let window = Duration::from_secs_f64(GRACE * 3.0);
    let mut samples = 0;
    // When every node's Lease had changed since the first read after the outage.
    let mut renewed_after = None;
    let mut first_read: HashMap<String, Option<String>> = HashMap::new();
    while back.elapsed() < window {
        if let Ok((nodes, _)) = p.admin.list::<Node>("", &ListParams::default()).await {
            samples += 1;
            let now = format!("{:.1?}", started.elapsed());
            for n in &nodes {
                if let Some(wrong) = node_trouble(n) {
                    seen.lock()
                        .expect("seen")
                        .push(format!("{now} (read): {wrong}"));
                }
            }
        }
        if renewed_after.is_none()
            && let Ok((leases, _)) = p
                .admin
                .list::<Lease>("skiff-node-lease", &ListParams::default())
                .await
        {
            let renewals: HashMap<String, Option<String>> = leases
                .into_iter()
                .filter(|l| l.metadata.name.starts_with("node-"))
                .map(|l| (l.metadata.name, l.spec.renew_time))
                .collect();
            if first_read.is_empty() {
                first_read = renewals;
            } else if renewals.len() == 3
                && renewals.iter().all(|(k, v)| first_read.get(k) != Some(v))
            {
                renewed_after = Some(back.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wrong = seen.lock().expect("seen").clone();
    ensure!(
        samples > 0,
        "the API server never answered after the {outage:?} outage"
    );
    ensure!(
        wrong.is_empty(),
        "after a {outage_for:?} {outage:?} outage: {wrong:#?}\n{}",
        p.logs()
    );
    for w in &watchers {
        w.abort();
    }
    eprintln!(
        "{outage:?} down {outage_for:?}; every node renewed again {renewed_after:?} after it came back; \
         no NotReady, taint or endpoint change over the outage and {window:?} after it ({samples} reads)"
    );

    // The negative control: a node that really stops renewing is still judged.
    let stopped = Instant::now();
    p.node("node-0")?.stop_heartbeat();
    wait_for(
        Duration::from_secs_f64(GRACE + 5.0),
        "node-0 NotReady and tainted",
        || async {
            let n = p.admin.get::<Node>("", "node-0").await?;
            let ready = condition(&n.status.conditions, "Ready").map(|c| c.status.clone());
            let tainted = n
                .spec
                .taints
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoSchedule");
            Ok((ready.as_deref() == Some("Unknown") && tainted).then_some(()))
        },
    )
    .await
    .with_context(|| p.logs())?;
    let took = stopped.elapsed();
    eprintln!("node-0 stopped renewing after the {outage:?} outage: NotReady after {took:?}");
    // The grace period, the lag of the controller's view and one pass, plus the time the
    // write itself takes.
    ensure!(
        took <= Duration::from_secs_f64(GRACE + 2.0),
        "node-0 took {took:?} to be marked NotReady\n{}",
        p.logs()
    );
    for n in ["node-1", "node-2"] {
        let node = p.admin.get::<Node>("", n).await?;
        ensure!(node_trouble(&node).is_none(), "{:?}", node_trouble(&node));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_longer_than_the_grace_period_marks_no_node_not_ready() -> Result<()> {
    an_outage_is_not_taken_for_the_silence_of_the_nodes("outage_api", Outage::ApiServer).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_longer_than_the_grace_period_marks_no_node_not_ready() -> Result<()> {
    an_outage_is_not_taken_for_the_silence_of_the_nodes("outage_etcd", Outage::Etcd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_falling_silent_at_once_is_held_not_marked_and_nothing_is_evicted() -> Result<()>
{
    const GRACE: f64 = 2.0;
    let Some(p) = plane(
        "full_disruption",
        PlaneOptions {
            manager_flags: vec![
                "--node-monitor-grace-period".into(),
                GRACE.to_string(),
                "--pod-eviction-timeout".into(),
                "1".into(),
            ],
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    p.web_behind_a_service().await?;
    let (_, node_rev) = p.admin.list::<Node>("", &ListParams::default()).await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let watcher = sentinel::<Node, _>(
        p.admin.clone(),
        "",
        node_rev,
        started,
        node_trouble,
        seen.clone(),
    );
    // Every agent cut off at once (as when the nodes' path to the API server breaks).
    for n in &p.nodes {
        n.stop_heartbeat();
    }
    tokio::time::sleep(Duration::from_secs_f64(GRACE * 4.0)).await;
    let held = seen.lock().expect("seen").clone();
    ensure!(
        held.is_empty(),
        "while every node was silent: {held:#?}\n{}",
        p.logs()
    );
    let now = p.pods("default", "app=web").await?;
    ensure!(
        now.len() == 3
            && now
                .iter()
                .all(|pod| pod.metadata.deletion_timestamp.is_none()),
        "pods were evicted: {:?}",
        now.iter()
            .map(|pod| (&pod.metadata.name, &pod.metadata.deletion_timestamp))
            .collect::<Vec<_>>()
    );
    let log: String = p.managers.iter().map(Component::log).collect();
    ensure!(
        log.contains("every node fell silent at once"),
        "the controller-manager did not say why it held:\n{}",
        p.logs()
    );
    // The nodes come back one by one, a renewal apart: the later ones are not marked in the
    // instant before their first renewal arrives.
    for n in &p.nodes {
        n.resume();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(GRACE * 2.0)).await;
    watcher.abort();
    let after = seen.lock().expect("seen").clone();
    ensure!(
        after.is_empty(),
        "after the nodes came back: {after:#?}\n{}",
        p.logs()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_node_falling_silent_is_marked_not_ready_but_its_pods_are_not_evicted()
-> Result<()> {
    const GRACE: f64 = 2.0;
    const EVICTION: f64 = 1.0;
    let Some(p) = plane(
        "lone_node",
        PlaneOptions {
            nodes: 1,
            manager_flags: vec![
                "--node-monitor-grace-period".into(),
                GRACE.to_string(),
                "--pod-eviction-timeout".into(),
                EVICTION.to_string(),
            ],
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    p.admin.create(&deployment("web", 2, "")?).await?;
    p.wait_running("default", "app=web", 2, Duration::from_secs(20))
        .await?;
    let stopped = Instant::now();
    p.node("node-0")?.stop_heartbeat();
    wait_for(
        Duration::from_secs_f64(GRACE + 5.0),
        "node-0 NotReady and tainted",
        || async {
            let n = p.admin.get::<Node>("", "node-0").await?;
            Ok(node_trouble(&n)
                .filter(|_| n.spec.taints.iter().any(|t| t.key == LIFECYCLE_TAINTS[0]))
                .map(|_| ()))
        },
    )
    .await
    .with_context(|| p.logs())?;
    let marked = stopped.elapsed();
    // Well past the eviction timeout: the pods are still there, not being deleted.
    tokio::time::sleep(Duration::from_secs_f64(EVICTION + 4.0)).await;
    let pods = p.pods("default", "app=web").await?;
    ensure!(
        pods.len() == 2
            && pods
                .iter()
                .all(|pod| pod.metadata.deletion_timestamp.is_none()),
        "the lone node's pods were evicted: {:?}\n{}",
        pods.iter()
            .map(|pod| (&pod.metadata.name, &pod.metadata.deletion_timestamp))
            .collect::<Vec<_>>(),
        p.logs()
    );
    eprintln!("the only node, silent, was marked NotReady after {marked:?}; its pods stayed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_may_not_give_itself_a_role_label() -> Result<()> {
    let Some(p) = plane(
        "node_restriction",
        PlaneOptions {
            nodes: 1,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let node = p.api.client("node-0").await?;
    let mut own = node.get::<Node>("", "node-0").await?;
    own.metadata
        .labels
        .insert("node-role.kubernetes.io/master".into(), String::new());
    let err = node
        .update(&own)
        .await
        .expect_err("a node labelled itself master");
    let msg = err.to_string();
    ensure!(
        msg.contains("forbidden")
            && msg.contains("is not allowed to modify labels: node-role.kubernetes.io/master"),
        "{msg}"
    );
    eprintln!("a node labelling itself master: {msg}");
    // Other labels on its own Node remain its own to set; the administrator may set roles.
    let mut own = node.get::<Node>("", "node-0").await?;
    own.metadata
        .labels
        .insert("example.com/disk".into(), "ssd".into());
    let own = node.update(&own).await?;
    let mut by_admin = own.clone();
    by_admin
        .metadata
        .labels
        .insert("node-role.kubernetes.io/worker".into(), String::new());
    p.admin.update(&by_admin).await?;
    // Nor may it take away the role the administrator gave it.
    let mut own = node.get::<Node>("", "node-0").await?;
    own.metadata.labels.remove("node-role.kubernetes.io/worker");
    let msg = node
        .update(&own)
        .await
        .expect_err("a node removed its role")
        .to_string();
    ensure!(
        msg.contains("is not allowed to modify labels: node-role.kubernetes.io/worker"),
        "{msg}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrators_no_execute_taint_evicts_the_pods_that_do_not_tolerate_it() -> Result<()>
{
    const TOLERATED_FOR: i64 = 3;
    let Some(p) = plane("no_execute", PlaneOptions::default()).await? else {
        return Ok(());
    };
    p.admin.create(&deployment("web", 6, "")?).await?;
    let pods = p
        .wait_running("default", "app=web", 6, Duration::from_secs(20))
        .await?;
    ensure!(
        per_node(&pods).contains_key("node-1"),
        "no web pod on node-1: {:?}",
        per_node(&pods)
    );
    let on_node_1 =
        |extra: &str| format!("  nodeSelector: {{kubernetes.io/hostname: node-1}}\n{extra}");
    let tolerates = |secs: &str| {
        format!("  tolerations: [{{key: dedicated, operator: Exists, effect: NoExecute{secs}}}]")
    };
    p.admin
        .create(&big_pod(
            "for-a-while",
            "10m",
            &on_node_1(&tolerates(&format!(", tolerationSeconds: {TOLERATED_FOR}"))),
        )?)
        .await?;
    p.admin
        .create(&big_pod("for-ever", "10m", &on_node_1(&tolerates("")))?)
        .await?;
    for name in ["for-a-while", "for-ever"] {
        wait_bound(&p.admin, name, Duration::from_secs(15)).await?;
    }

    // The node renews its status meanwhile: read and write again on a conflict.
    wait_for(Duration::from_secs(5), "node-1 tainted", || async {
        let mut node = p.admin.get::<Node>("", "node-1").await?;
        node.spec.taints.push(skiff_api::kinds::Taint {
            key: "dedicated".into(),
            value: "db".into(),
            effect: "NoExecute".into(),
            ..Default::default()
        });
        match p.admin.update(&node).await {
            Ok(_) => Ok(Some(())),
            Err(e) if e.is_conflict() => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    let tainted = Instant::now();

    // The Deployment's pods leave node-1 and are replaced on the others.
    let moved = wait_for(Duration::from_secs(15), "web pods off node-1", || async {
        let pods = p.pods("default", "app=web").await?;
        let live: Vec<&Pod> = pods
            .iter()
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .collect();
        Ok(
            (live.len() == 6 && live.iter().all(|pod| pod.spec.node_name != "node-1"))
                .then(|| tainted.elapsed()),
        )
    })
    .await
    .with_context(|| p.logs())?;
    // The pod that tolerates it for a while goes once that while is over, not before.
    let gone = wait_for(
        Duration::from_secs(TOLERATED_FOR as u64 + 10),
        "for-a-while evicted",
        || async {
            let pod = p.admin.get::<Pod>("default", "for-a-while").await;
            Ok(match pod {
                Ok(pod) => pod.metadata.deletion_timestamp.map(|_| tainted.elapsed()),
                Err(e) if e.is_not_found() => Some(tainted.elapsed()),
                Err(e) => return Err(e.into()),
            })
        },
    )
    .await
    .with_context(|| p.logs())?;
    ensure!(
        gone >= Duration::from_secs(TOLERATED_FOR as u64),
        "for-a-while was evicted after {gone:?}, before its {TOLERATED_FOR} s toleration ran out"
    );
    // The pod that tolerates it for ever stays.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let forever = p.admin.get::<Pod>("default", "for-ever").await?;
    ensure!(
        forever.metadata.deletion_timestamp.is_none(),
        "a pod tolerating the taint for ever was evicted"
    );
    println!(
        "FIGURE NoExecute taint: intolerant pods replaced off the node {:.1} s after it, the {TOLERATED_FOR} s toleration evicted after {:.1} s",
        moved.as_secs_f64(),
        gone.as_secs_f64()
    );
    Ok(())
}
