//! The service proxy's programming benchmark (`skiff-bench proxy`): how long an API write takes
//! to be served by a node's eBPF datapath, with 1, 1,000 and 10,000 Services in the cluster.
//!
//! One node (real etcd, API server, containerd and `skiff-agent node` with its service proxy),
//! three httpd pods answering with their own names and a client pod. Services are selector-less
//! with Endpoints written by the benchmark (so the Endpoints controller's own delay is not part
//! of the figure, and 10,000 Services need no 10,000 pods). "Served" means a new TCP connection
//! from the client pod to the VIP is answered by the expected backend: the datapath is probed
//! with real packets, not by reading its maps.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use skiff_api::{
    Kind as _, ObjectMeta,
    client::Client,
    kinds::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Pod, Service, condition},
};
use skiff_testbed::{
    containerd::containerd_available, control::etcd_available, privileged, wait::eventually,
    workspace_binary,
};

use crate::{
    control::{Machine, machine},
    meta,
    pods::{Cluster, cluster, tail},
};

const NAMESPACE: &str = "default";
const NODE: &str = "node-0";
const METRICS_PORT: u16 = 10249;
const BACKENDS: [&str; 3] = ["web-a", "web-b", "web-c"];
/// Create calls in flight when filling the cluster with Services.
const CONCURRENCY: usize = 32;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub out: PathBuf,
    /// Cluster sizes (Services) at which the latencies are measured.
    pub sizes: Vec<usize>,
    /// Samples per measurement.
    pub samples: usize,
}

impl Options {
    pub fn new(quick: bool, out: PathBuf) -> Options {
        Options {
            quick,
            out,
            sizes: if quick {
                vec![1, 100]
            } else {
                vec![1, 1_000, 10_000]
            },
            samples: if quick { 5 } else { 25 },
        }
    }
}

/// Everything a run measured; written as `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub quick: bool,
    pub started: String,
    pub finished: String,
    pub sizes: Vec<AtSize>,
}

/// The figures with `services` Services in the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct AtSize {
    pub services: usize,
    /// Filling up to this size: first create call → the agent reporting every Service port
    /// programmed (none when nothing was added).
    pub fill_seconds: Option<f64>,
    pub fill_objects_per_second: Option<f64>,
    /// A new Service with its Endpoints: the Endpoints create call → the VIP answering.
    pub new_service: Latency,
    /// One endpoint change: the Endpoints update call → new connections answered by the new
    /// backend.
    pub endpoint_change: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn latency(mut ms: Vec<f64>) -> Latency {
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((p / 100.0 * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    Latency {
        samples: ms.len(),
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
        max_ms: pct(100.0),
    }
}

fn progress(what: impl std::fmt::Display) {
    eprintln!("[proxy] {what}");
}

pub fn main(opts: &Options) -> Result<()> {
    let test = "skiff-bench proxy";
    if !privileged(test) || !etcd_available(test) || !containerd_available(test) {
        bail!("this host cannot run the proxy benchmark (see above); run `cargo xtask setup`");
    }
    for bin in ["skiff-apiserver", "skiff-agent"] {
        workspace_binary(bin).with_context(|| {
            format!("{bin} must be next to skiff-bench or in $SKIFF_BIN_DIR (cargo xtask bench-proxy builds it)")
        })?;
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let results = rt.block_on(run(opts))?;
    crate::report::write_results(&opts.out, &results, &report(&results), &summary(&results))?;
    Ok(())
}

/// The backends' and the client's pod addresses and namespaces.
struct Pods {
    backends: Vec<Ipv4Addr>,
    client_netns: PathBuf,
}

async fn run(opts: &Options) -> Result<Results> {
    let started = meta::now_utc();
    progress("starting etcd, the API server, containerd and the agent");
    let metrics = format!("0.0.0.0:{METRICS_PORT}");
    let c = cluster(&["--metrics-listen", &metrics]).await?;
    let result = measure(&c, opts).await;
    if let Err(e) = &result {
        progress(format!(
            "failed: {e:#}\nagent log:\n{}",
            tail(&c.agent.log())
        ));
    }
    let sizes = result?;
    Ok(Results {
        machine: machine(),
        quick: opts.quick,
        started,
        finished: meta::now_utc(),
        sizes,
    })
}

async fn measure(c: &Cluster, opts: &Options) -> Result<Vec<AtSize>> {
    let pods = start_pods(c).await?;
    let pods = Arc::new(pods);
    let mut out = Vec::new();
    let mut filled = 0;
    for &size in &opts.sizes {
        // The probe Services below come and go; the fillers make up the rest of the size.
        let want = size.saturating_sub(1);
        let mut fill_seconds = None;
        let mut fill_rate = None;
        if want > filled {
            progress(format!("filling to {size} Services"));
            let t = Instant::now();
            fill(&c.admin, filled, want, &pods.backends).await?;
            let writes = t.elapsed();
            // Every filler is served once the agent has programmed all their ports.
            let node_ip = c.node.ip;
            let ns = c.node.ns.path().to_path_buf();
            eventually(Duration::from_secs(300), "every Service programmed", || {
                let ns = ns.clone();
                async move {
                    let n = metric(&ns, node_ip, "skiff_proxy_service_ports")?;
                    Ok((n as usize >= want).then_some(()))
                }
            })
            .await?;
            let secs = t.elapsed().as_secs_f64();
            progress(format!(
                "  {} Services and Endpoints written in {:.2} s, all programmed after {secs:.2} s",
                want - filled,
                writes.as_secs_f64()
            ));
            fill_seconds = Some(secs);
            fill_rate = Some(2.0 * (want - filled) as f64 / secs);
            filled = want;
        }
        progress(format!("{size} Services: {} samples", opts.samples));
        let (new_service, endpoint_change) = samples(c, &pods, opts.samples, size).await?;
        progress(format!(
            "  new Service served: p50 {:.1} ms, p99 {:.1} ms; endpoint change served: p50 {:.1} ms, p99 {:.1} ms",
            new_service.p50_ms, new_service.p99_ms, endpoint_change.p50_ms, endpoint_change.p99_ms
        ));
        out.push(AtSize {
            services: size,
            fill_seconds,
            fill_objects_per_second: fill_rate,
            new_service,
            endpoint_change,
        });
    }
    Ok(out)
}

/// The three web pods and the client pod, Ready and Running.
async fn start_pods(c: &Cluster) -> Result<Pods> {
    progress("starting 3 backend pods and a client pod");
    for name in BACKENDS {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "nodeName": NODE,
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "web",
                    "image": "busybox:1.35",
                    "command": ["sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                }],
            }
        }))?;
        c.admin.create(&pod).await?;
    }
    let client: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "client", "namespace": NAMESPACE},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "busybox:1.35", "command": ["sleep", "86400"]}],
        }
    }))?;
    c.admin.create(&client).await?;
    let admin = c.admin.clone();
    let pods = eventually(Duration::from_secs(60), "the pods Ready", || {
        let admin = admin.clone();
        async move {
            let mut backends = Vec::new();
            for name in BACKENDS {
                let p: Pod = admin.get(NAMESPACE, name).await?;
                if condition(&p.status.conditions, "Ready").is_none_or(|c| c.status != "True") {
                    return Ok(None);
                }
                backends.push(p.status.pod_ip.parse::<Ipv4Addr>()?);
            }
            let client: Pod = admin.get(NAMESPACE, "client").await?;
            if client.status.phase != "Running" {
                return Ok(None);
            }
            Ok(Some((backends, client.metadata.uid)))
        }
    })
    .await?;
    Ok(Pods {
        backends: pods.0,
        client_netns: c.agent.netns_dir().join(pods.1),
    })
}

fn service(name: &str) -> Result<Service> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))?)
}

fn endpoints(name: &str, backends: &[Ipv4Addr]) -> Endpoints {
    Endpoints {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: NAMESPACE.into(),
            ..ObjectMeta::default()
        },
        subsets: vec![EndpointSubset {
            addresses: backends
                .iter()
                .map(|ip| EndpointAddress {
                    ip: ip.to_string(),
                    ..EndpointAddress::default()
                })
                .collect(),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: "TCP".into(),
            }],
            ..EndpointSubset::default()
        }],
    }
}

/// Creates fillers `from..to` (a Service and its Endpoints each), [`CONCURRENCY`] at a time.
async fn fill(admin: &Client, from: usize, to: usize, backends: &[Ipv4Addr]) -> Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(from));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (admin, next, backends) = (admin.clone(), next.clone(), backends.to_vec());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= to {
                    return anyhow::Ok(());
                }
                let name = format!("fill-{i}");
                admin.create(&service(&name)?).await?;
                admin.create(&endpoints(&name, &backends)).await?;
                if (i + 1) % 1000 == 0 {
                    progress(format!("  {} Services written", i + 1));
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// `samples` times: a new Service whose Endpoints name backend A, timed from the Endpoints
/// create to the VIP answering from A; then its Endpoints switched to backend B, timed to new
/// connections answering from B; then the Service deleted.
async fn samples(
    c: &Cluster,
    pods: &Arc<Pods>,
    n: usize,
    size: usize,
) -> Result<(Latency, Latency)> {
    let mut new_ms = Vec::new();
    let mut change_ms = Vec::new();
    for k in 0..n {
        let name = format!("probe-{size}-{k}");
        let svc = c.admin.create(&service(&name)?).await?;
        let vip: Ipv4Addr = svc
            .spec
            .cluster_ip
            .parse()
            .context("the probe's cluster IP")?;
        let (a, b) = (k % 3, (k + 1) % 3);
        let t = Instant::now();
        let ep = c
            .admin
            .create(&endpoints(&name, &[pods.backends[a]]))
            .await?;
        new_ms.push(until_answered(pods, vip, BACKENDS[a], t).await?);
        let mut next = ep.clone();
        next.subsets = endpoints(&name, &[pods.backends[b]]).subsets;
        let t = Instant::now();
        c.admin.update(&next).await?;
        change_ms.push(until_answered(pods, vip, BACKENDS[b], t).await?);
        c.admin
            .delete(Service::INFO, NAMESPACE, &name, Default::default())
            .await?;
        c.admin
            .delete(Endpoints::INFO, NAMESPACE, &name, Default::default())
            .await?;
    }
    Ok((latency(new_ms), latency(change_ms)))
}

/// Polls the VIP from inside the client pod (a new connection each time) until `who`
/// answers; milliseconds since `t`.
async fn until_answered(
    pods: &Arc<Pods>,
    vip: Ipv4Addr,
    who: &'static str,
    t: Instant,
) -> Result<f64> {
    let pods = pods.clone();
    tokio::task::spawn_blocking(move || {
        skiff_agent::netns::run_in(&pods.client_netns, || -> Result<f64> {
            let deadline = t + Duration::from_secs(30);
            let mut last = String::new();
            while Instant::now() < deadline {
                match get(SocketAddrV4::new(vip, 80)) {
                    Ok(page) if page == who => return Ok(t.elapsed().as_secs_f64() * 1000.0),
                    Ok(page) => last = format!("answered by {page}"),
                    Err(e) => last = e.to_string(),
                }
            }
            bail!("{vip} not answered by {who} within 30 s (last: {last})")
        })?
    })
    .await?
}

/// One HTTP/1.0 GET on a new connection; the page's first line.
fn get(addr: SocketAddrV4) -> std::io::Result<String> {
    // Short, so a SYN lost before the Service is programmed (it is reset by the datapath, but a
    // drop anywhere would otherwise wait for the retransmission) costs at most 20 ms.
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_millis(20))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned())
}

/// A metric of the agent, read over HTTP from inside the node's namespace.
fn metric(node_ns: &std::path::Path, node_ip: Ipv4Addr, name: &str) -> Result<f64> {
    let text = skiff_agent::netns::run_in(node_ns, || -> Result<String> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddrV4::new(node_ip, METRICS_PORT).into(),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    })??;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("the agent reports no {name}"))
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The figures as a plain table.
pub fn summary(r: &Results) -> String {
    let mut out = format!(
        "{:>9} {:>13} {:>16} {:>16} {:>16} {:>16}\n",
        "Services", "fill s", "new p50 ms", "new p99 ms", "change p50 ms", "change p99 ms"
    );
    for s in &r.sizes {
        out.push_str(&format!(
            "{:>9} {:>13} {:>16.1} {:>16.1} {:>16.1} {:>16.1}\n",
            s.services,
            fmt_opt(s.fill_seconds, 2),
            s.new_service.p50_ms,
            s.new_service.p99_ms,
            s.endpoint_change.p50_ms,
            s.endpoint_change.p99_ms
        ));
    }
    out
}

fn report(r: &Results) -> String {
    let mut rows = String::new();
    for s in &r.sizes {
        rows.push_str(&format!(
            "| {} | {} | {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} |\n",
            s.services,
            fmt_opt(s.fill_seconds, 2),
            fmt_opt(s.fill_objects_per_second, 0),
            s.new_service.p50_ms,
            s.new_service.p99_ms,
            s.new_service.max_ms,
            s.endpoint_change.p50_ms,
            s.endpoint_change.p99_ms,
            s.endpoint_change.max_ms,
        ));
    }
    format!(
        "# Service programming on one node{}\n\n\
         {} ({} CPUs, {:.1} GiB), kernel {}, {}; run {} → {}.\n\n\
         One node: etcd, the API server, containerd and `skiff-agent node` with its eBPF service \
         proxy; three httpd pods and a client pod. Services are selector-less, with Endpoints \
         written by the benchmark. A latency is an API call (the Endpoints create for a new \
         Service, the Endpoints update for a change) → the first new TCP connection from the \
         client pod to the VIP answered by the expected backend (connections are attempted \
         back to back, each given 20 ms). Filling writes a Service and its Endpoints per \
         filler, {} at a time, and ends when the agent reports every port programmed. {} \
         samples per size.\n\n\
         | Services | fill s | objects/s | new Service p50 / p99 / max ms | endpoint change p50 / p99 / max ms |\n\
         |---|---|---|---|---|\n{rows}",
        if r.quick { " (quick)" } else { "" },
        r.machine.cpu_model,
        r.machine.cpus,
        r.machine.memory_gib,
        r.machine.kernel,
        r.machine.etcd_version,
        r.started,
        r.finished,
        CONCURRENCY,
        r.sizes.first().map_or(0, |s| s.new_service.samples),
    )
}
