//! The node agent end to end: real etcd, a real API server, a real containerd (started by the
//! test with its own root, state and socket) running busybox containers with runc, and
//! `skiff-agent node` processes each inside its own node network namespace on a fabric bridge.
//! Pods are bound to nodes directly (spec.nodeName), as the scheduler would.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use skiff_agent::{ipam::Ipam, node::pods::LABEL_POD_UID, runtime::TaskState};
use skiff_api::{
    Kind as _,
    client::{Client, DeleteParams},
    kinds::{ContainerStatus, Pod},
    proto::LogsRequest,
};
use skiff_testbed::{
    agent::Agent,
    fabric::{NodeNs, node_pod_cidr},
    netns::run_in_netns,
    nodes::{Nodes, NodesOptions},
    wait::eventually,
};
use skiff_tests::nodes::NodesRuntime as _;
use tokio_stream::StreamExt as _;

/// The test's cluster ([`Nodes`]), with this file's helpers on top.
struct Cluster(Nodes);

impl std::ops::Deref for Cluster {
    type Target = Nodes;
    fn deref(&self) -> &Nodes {
        &self.0
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Nodes {
        &mut self.0
    }
}

async fn cluster(test: &str, n: usize) -> Result<Option<Cluster>> {
    cluster_with(test, n, false, &[]).await
}

/// `n` nodes; with `controllers`, a controller-manager too; `extra` flags for every agent.
async fn cluster_with(
    test: &str,
    n: usize,
    controllers: bool,
    extra: &[&str],
) -> Result<Option<Cluster>> {
    let opts = NodesOptions {
        nodes: n,
        controllers,
        agent_flags: extra.iter().map(|s| s.to_string()).collect(),
        tag: 'a',
    };
    Ok(Nodes::start(test, &opts).await?.map(Cluster))
}

impl Cluster {
    async fn create(&self, pod: serde_json::Value) -> Result<Pod> {
        let pod: Pod = serde_json::from_value(pod).context("a test pod")?;
        Ok(self.admin.create(&pod).await?)
    }

    async fn get(&self, name: &str) -> Result<Pod> {
        Ok(self.admin.get("default", name).await?)
    }
}

fn container<'a>(p: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    p.status.container_statuses.iter().find(|c| c.name == name)
}

/// A pod on node `node` with these containers.
fn pod(name: &str, node: usize, containers: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "nodeName": format!("node-{node}"),
            "terminationGracePeriodSeconds": 1,
            "containers": containers,
        }
    })
}

fn web_container(name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "image": "busybox:1.35",
        "command": ["httpd", "-f", "-p", "8080", "-h", "/var/www"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    })
}

/// Whether anything of pod `uid` is left on node `i`: containers, network namespace, host
/// veth, address, logs.
async fn traces(c: &Cluster, i: usize, uid: &str) -> Result<Vec<String>> {
    let mut left = Vec::new();
    for ctr in c.runtime(i).await?.list().await? {
        if ctr.labels.get(LABEL_POD_UID).map(String::as_str) == Some(uid) {
            left.push(format!("container {}", ctr.id));
        }
    }
    let agent = &c.agents[i];
    if agent.netns_dir().join(uid).exists() {
        left.push("network namespace".into());
    }
    let veth = skiff_agent::podnet::PodNet::host_veth_name(uid);
    let links = run_in_netns(c.nodes[i].ns.path(), "ip", &["-o", "link"])?;
    if links.contains(&veth) {
        left.push(format!("host veth {veth}"));
    }
    let ipam = Ipam::open(&agent.ipam_dir(), node_pod_cidr(i).parse()?)?;
    if let Some(ip) = ipam.address_of(uid)? {
        left.push(format!("address {ip}"));
    }
    if let Ok(dir) = fs::read_dir(agent.logs_dir()) {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().ends_with(uid) {
                left.push(format!("logs {}", e.path().display()));
            }
        }
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    if mounts.lines().any(|l| l.contains(uid)) {
        left.push("a mount (netns or rootfs)".into());
    }
    Ok(left)
}

/// A container's whole log through the API server (the node agent serves it over its tunnel).
async fn read_logs(client: &Client, pod: &str, container: &str, previous: bool) -> Result<String> {
    let mut stream = client
        .logs(LogsRequest {
            namespace: "default".into(),
            pod: pod.into(),
            container: container.into(),
            previous,
            ..LogsRequest::default()
        })
        .await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend(chunk?);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn a_two_container_pod_shares_one_address_turns_ready_logs_and_leaves_no_trace() -> Result<()>
{
    let Some(c) = cluster("two_container_pod", 1).await? else {
        return Ok(());
    };
    let created = Instant::now();
    c.create(pod(
        "web",
        0,
        serde_json::json!([
            web_container("web"),
            {
                "name": "side",
                "image": "busybox:1.35",
                "command": ["sh", "-c", "until wget -q -O /dev/null http://127.0.0.1:8080/; do sleep 1; done; echo reached web over localhost; exec sleep 1000"],
                "env": [{"name": "GREETING", "value": "hello from env"}],
            }
        ]),
    ))
    .await?;
    let p = c
        .wait_pod("web", Duration::from_secs(20), "Running and Ready", |p| {
            p.status.phase == "Running" && p.is_ready()
        })
        .await?;
    eprintln!("web Ready {:?} after create", created.elapsed());
    let ip: std::net::Ipv4Addr = p.status.pod_ip.parse().context("the pod IP")?;
    let cidr: skiff_api::net::Ipv4Cidr = node_pod_cidr(0).parse()?;
    ensure!(
        cidr.contains(ip),
        "pod IP {ip} outside the node's pod CIDR {cidr}"
    );
    assert_eq!(p.status.host_ip, "10.250.0.10");
    assert!(p.status.start_time.is_some());
    for name in ["web", "side"] {
        let s = container(&p, name).context("a container status")?;
        assert!(
            s.ready && s.state.running.is_some() && s.restart_count == 0,
            "{s:?}"
        );
        assert!(s.container_id.starts_with("containerd://"), "{s:?}");
    }
    // The sidecar reached the web server over 127.0.0.1: one network namespace for both.
    let side = eventually(Duration::from_secs(10), "the sidecar's log", || async {
        let l = c.agents[0].container_log(&p, "side", 0);
        Ok(l.contains("reached web over localhost").then_some(l))
    })
    .await?;
    assert_eq!(side.trim(), "reached web over localhost");
    // The same through the API server and the node's log tunnel, as `skiffctl logs` reads it.
    let via_api = read_logs(&c.admin, "web", "side", false).await?;
    assert_eq!(via_api, side);
    // The node routes to the pod through its host veth.
    let page = run_in_netns(
        c.nodes[0].ns.path(),
        "busybox",
        &["wget", "-q", "-O-", &format!("http://{ip}:8080/")],
    )?;
    ensure!(!page.is_empty(), "empty page from the pod");

    // Deleting it removes every trace, after its grace period at most.
    let uid = p.metadata.uid.clone();
    ensure!(
        !traces(&c, 0, &uid).await?.is_empty(),
        "the pod left no trace even while running"
    );
    c.admin
        .delete(Pod::INFO, "default", "web", DeleteParams::default())
        .await?;
    c.wait_pod_gone("web", Duration::from_secs(15)).await?;
    let left = traces(&c, 0, &uid).await?;
    ensure!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

#[tokio::test]
async fn a_container_over_its_memory_limit_is_oom_killed_and_restarted() -> Result<()> {
    let Some(c) = cluster("memory_limit", 1).await? else {
        return Ok(());
    };
    let mut spec = pod(
        "hog",
        0,
        serde_json::json!([{
            "name": "hog",
            "image": "busybox:1.35",
            "command": ["sh", "-c", "echo eating; head -c 200000000 /dev/zero | tail"],
            "resources": {"limits": {"memory": "32Mi"}},
        }]),
    );
    spec["spec"]["restartPolicy"] = "OnFailure".into();
    c.create(spec).await?;
    let p = c
        .wait_pod(
            "hog",
            Duration::from_secs(30),
            "restarted after an OOM kill",
            |p| {
                container(p, "hog").is_some_and(|s| {
                    s.restart_count >= 1
                        && s.last_state
                            .terminated
                            .as_ref()
                            .is_some_and(|t| t.reason == "OOMKilled")
                })
            },
        )
        .await?;
    let t = container(&p, "hog")
        .and_then(|s| s.last_state.terminated.clone())
        .context("a last state")?;
    assert_eq!(t.exit_code, 137, "{t:?}");
    Ok(())
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container_and_counts_it() -> Result<()> {
    let Some(c) = cluster("liveness", 1).await? else {
        return Ok(());
    };
    c.create(pod(
        "live",
        0,
        serde_json::json!([{
            "name": "app",
            "image": "busybox:1.35",
            "command": ["sh", "-c", "touch /tmp/healthy; sleep 3; rm /tmp/healthy; exec sleep 1000"],
            "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2},
        }]),
    ))
    .await?;
    let first = c
        .wait_pod("live", Duration::from_secs(20), "Running", |p| {
            container(p, "app").is_some_and(|s| s.state.running.is_some())
        })
        .await?;
    let first_id = container(&first, "app")
        .map(|s| s.container_id.clone())
        .unwrap_or_default();
    let p = c
        .wait_pod(
            "live",
            Duration::from_secs(25),
            "restarted by its liveness probe",
            |p| {
                container(p, "app")
                    .is_some_and(|s| s.restart_count >= 1 && s.state.running.is_some())
            },
        )
        .await?;
    let s = container(&p, "app").context("a status")?;
    assert_ne!(s.container_id, first_id, "the restart is a new container");
    let t = s
        .last_state
        .terminated
        .as_ref()
        .context("the killed container's state")?;
    assert_eq!(t.exit_code, 137, "{t:?}");
    // It stays alive only while healthy: the new container is restarted again later.
    let count = s.restart_count;
    c.wait_pod("live", Duration::from_secs(25), "restarted again", |p| {
        container(p, "app").is_some_and(|s| s.restart_count > count)
    })
    .await?;
    Ok(())
}

/// `named_web_pod` on node 0 with this grace period and this preStop hook on its container,
/// whose shell exits at SIGTERM (httpd as pid 1 has no handler: it would wait for SIGKILL).
fn pre_stop_pod(name: &str, grace: i64, hook: serde_json::Value) -> serde_json::Value {
    let mut p = named_web_pod(name, 0);
    p["spec"]["terminationGracePeriodSeconds"] = grace.into();
    let web = &mut p["spec"]["containers"][0];
    web["command"] = serde_json::json!([
        "sh",
        "-c",
        "trap 'exit 0' TERM; mkdir -p /tmp/www && hostname > /tmp/www/index.html && httpd -f -p 8080 -h /tmp/www & wait"
    ]);
    web["lifecycle"] = serde_json::json!({ "preStop": hook });
    p
}

/// When pod `name` was gone, counted from `since` (polled every 100 ms).
async fn gone_after(c: &Cluster, name: &str, since: Instant) -> Result<Duration> {
    c.wait_pod_gone(name, Duration::from_secs(20)).await?;
    Ok(since.elapsed())
}

#[tokio::test]
async fn pre_stop_hooks_run_before_sigterm_while_the_pod_serves_and_within_the_grace_period()
-> Result<()> {
    let Some(c) = cluster("pre_stop", 1).await? else {
        return Ok(());
    };
    c.create(pre_stop_pod(
        "sleepy",
        10,
        serde_json::json!({"sleep": {"seconds": 2}}),
    ))
    .await?;
    c.create(pre_stop_pod(
        "goodbye",
        10,
        serde_json::json!({"exec": {"command": ["sh", "-c", "echo bye > /tmp/www/bye.html; sleep 2"]}}),
    ))
    .await?;
    // A hook far longer than the grace period, in a container that ignores SIGTERM (sleep as
    // pid 1 has no handler): cut off at the grace period, then SIGKILL after the minimum 2 s.
    let mut overrun = sleeper("overrun", 0);
    overrun["spec"]["terminationGracePeriodSeconds"] = 2.into();
    overrun["spec"]["containers"][0]["lifecycle"] =
        serde_json::json!({"preStop": {"sleep": {"seconds": 60}}});
    c.create(overrun).await?;
    let mut ips = Vec::new();
    for name in ["sleepy", "goodbye"] {
        let p = c
            .wait_pod(name, Duration::from_secs(30), "Ready", Pod::is_ready)
            .await?;
        ips.push(p.status.pod_ip);
    }
    c.wait_pod("overrun", Duration::from_secs(30), "Running", |p| {
        p.status.phase == "Running"
    })
    .await?;
    let node = c.nodes[0].ns.path();
    let deleted = Instant::now();
    for name in ["sleepy", "goodbye", "overrun"] {
        c.admin
            .delete(Pod::INFO, "default", name, DeleteParams::default())
            .await?;
    }
    // The hooks run for 2 s; for most of that both web pods keep answering, and the exec
    // hook ran inside the container (it wrote the page).
    let mut answered = 0;
    let mut bye = false;
    while deleted.elapsed() < Duration::from_millis(1500) {
        for ip in &ips {
            get_from(node, &format!("http://{ip}:8080/")).with_context(|| {
                format!(
                    "a pod stopped serving {:?} after its deletion, during its preStop hook\n{}",
                    deleted.elapsed(),
                    c.agents[0].log()
                )
            })?;
            answered += 1;
        }
        bye = bye
            || get_from(node, &format!("http://{}:8080/bye.html", ips[1]))
                .is_ok_and(|p| p == "bye");
    }
    ensure!(bye, "the exec hook's page never appeared");
    let (sleepy, goodbye, overrun) = tokio::join!(
        gone_after(&c, "sleepy", deleted),
        gone_after(&c, "goodbye", deleted),
        gone_after(&c, "overrun", deleted),
    );
    let (sleepy, goodbye, overrun) = (sleepy?, goodbye?, overrun?);
    eprintln!(
        "{answered} requests answered during the hooks; gone after: sleepy {sleepy:?}, goodbye {goodbye:?}, overrun {overrun:?}"
    );
    // The containers exit at SIGTERM: once the hook is over, not at the end of the 10 s grace
    // period.
    for (name, gone) in [("sleepy", sleepy), ("goodbye", goodbye)] {
        ensure!(
            gone >= Duration::from_secs(2) && gone < Duration::from_secs(8),
            "{name} gone after {gone:?}, expected just after its 2 s hook"
        );
    }
    // 2 s of hook (the grace period), 2 s between SIGTERM and SIGKILL, then the cleanup.
    ensure!(
        overrun >= Duration::from_secs(4) && overrun < Duration::from_secs(8),
        "overrun gone after {overrun:?}, expected after its 2 s grace period and 2 s more"
    );
    Ok(())
}

#[tokio::test]
async fn a_liveness_restart_runs_the_pre_stop_hook_first() -> Result<()> {
    let Some(c) = cluster("pre_stop_liveness", 1).await? else {
        return Ok(());
    };
    c.create(pod(
        "live",
        0,
        serde_json::json!([{
            "name": "app",
            "image": "busybox:1.35",
            "command": ["sh", "-c", "echo started; exec sleep 1000"],
            "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1},
            // Written to the container's own output, so it lands in the killed attempt's log.
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo pre-stop hook > /proc/1/fd/1"]}}},
        }]),
    ))
    .await?;
    c.wait_pod("live", Duration::from_secs(30), "restarted", |p| {
        container(p, "app").is_some_and(|s| s.restart_count >= 1)
    })
    .await?;
    let previous = read_logs(&c.admin, "live", "app", true).await?;
    assert_eq!(previous, "started\npre-stop hook\n");
    Ok(())
}

#[tokio::test]
async fn pods_on_two_nodes_reach_each_other_by_pod_ip() -> Result<()> {
    let Some(c) = cluster("two_nodes", 2).await? else {
        return Ok(());
    };
    c.create(pod("a", 0, serde_json::json!([web_container("web")])))
        .await?;
    c.create(pod("b", 1, serde_json::json!([web_container("web")])))
        .await?;
    let a = c
        .wait_pod("a", Duration::from_secs(20), "Ready", Pod::is_ready)
        .await?;
    let b = c
        .wait_pod("b", Duration::from_secs(20), "Ready", Pod::is_ready)
        .await?;
    ensure!(a.status.host_ip != b.status.host_ip);
    let netns_a = c.agents[0].netns_dir().join(&a.metadata.uid);
    let netns_b = c.agents[1].netns_dir().join(&b.metadata.uid);
    // From inside pod a's namespace to pod b's address on the other node, and back.
    // Each node learns the other's pod CIDR and address from its Node object (host-gw routes).
    let url = format!("http://{}:8080/", b.status.pod_ip);
    let page = eventually(Duration::from_secs(10), "pod a reaches pod b", || async {
        Ok(run_in_netns(&netns_a, "timeout", &["2", "busybox", "wget", "-q", "-O-", &url]).ok())
    })
    .await
    .with_context(|| {
        let diag = |ns: &std::path::Path, prog: &str, args: &[&str]| {
            run_in_netns(ns, prog, args).unwrap_or_else(|e| format!("{e:#}"))
        };
        format!(
            "node-0 routes:\n{}\nnode-1 routes:\n{}\nping node-1 from a: {}\nping b from node-0: {}\nping b from a: {}",
            diag(c.nodes[0].ns.path(), "ip", &["route"]),
            diag(c.nodes[1].ns.path(), "ip", &["route"]),
            diag(&netns_a, "ping", &["-c1", "-W1", "10.250.0.11"]),
            diag(c.nodes[0].ns.path(), "ping", &["-c1", "-W1", &b.status.pod_ip]),
            diag(&netns_a, "ping", &["-c1", "-W1", &b.status.pod_ip]),
        )
    })?;
    ensure!(!page.is_empty());
    run_in_netns(&netns_b, "ping", &["-c", "1", "-W", "2", &a.status.pod_ip])?;
    // The Service CIDR is blackholed on every node: nothing untranslated leaves.
    for n in &c.nodes {
        let routes = run_in_netns(n.ns.path(), "ip", &["route", "show", "type", "blackhole"])?;
        ensure!(routes.contains("10.96.0.0/12"), "{routes}");
    }
    // Control: the same client does reach pod b, and a Service address without a Service
    // does not answer.
    run_in_netns(
        &netns_a,
        "timeout",
        &["2", "busybox", "wget", "-q", "-O-", &url],
    )?;
    let err = run_in_netns(
        &netns_a,
        "timeout",
        &["2", "busybox", "wget", "-q", "-O-", "http://10.96.0.1:80/"],
    );
    ensure!(
        err.is_err(),
        "a Service address answered with no Service behind it"
    );
    Ok(())
}

#[tokio::test]
async fn a_restarted_agent_adopts_its_pods_and_cleans_up_a_pod_deleted_meanwhile() -> Result<()> {
    let Some(mut c) = cluster("agent_restart", 1).await? else {
        return Ok(());
    };
    c.create(pod("keep", 0, serde_json::json!([web_container("web")])))
        .await?;
    c.create(pod(
        "gone",
        0,
        serde_json::json!([{"name": "app", "image": "busybox:1.35", "command": ["sleep", "1000"]}]),
    ))
    .await?;
    let keep = c
        .wait_pod("keep", Duration::from_secs(20), "Ready", Pod::is_ready)
        .await?;
    let gone = c
        .wait_pod("gone", Duration::from_secs(20), "Running", |p| {
            p.status.phase == "Running"
        })
        .await?;
    let keep_status = container(&keep, "web").cloned().context("a status")?;

    c.agents[0].kill();
    // Deleted for good while its node's agent is down.
    c.admin
        .delete(
            Pod::INFO,
            "default",
            "gone",
            DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await?;
    c.wait_pod_gone("gone", Duration::from_secs(5)).await?;
    c.agents[0].restart()?;
    let uid = gone.metadata.uid.clone();
    eventually(
        Duration::from_secs(20),
        "the deleted pod cleaned up",
        || async {
            let left = traces(&c, 0, &uid).await?;
            Ok(left.is_empty().then_some(()))
        },
    )
    .await
    .with_context(|| c.agents[0].log())?;
    // The survivor was adopted, not restarted: same container, same address, still ready.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = c.get("keep").await?;
    let s = container(&now, "web").context("a status")?;
    assert_eq!(s.container_id, keep_status.container_id);
    assert_eq!(s.restart_count, 0);
    assert_eq!(now.status.pod_ip, keep.status.pod_ip);
    assert!(now.is_ready(), "{:?}", now.status);
    let tasks: Vec<_> = c
        .runtime(0)
        .await?
        .list()
        .await?
        .into_iter()
        .filter(|t| t.labels.get(LABEL_POD_UID) == Some(&keep.metadata.uid))
        .collect();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0].state, TaskState::Running);
    // A new pod does not get the deleted pod's address.
    c.create(pod(
        "fresh",
        0,
        serde_json::json!([{"name": "app", "image": "busybox:1.35", "command": ["sleep", "1000"]}]),
    ))
    .await?;
    let fresh = c
        .wait_pod("fresh", Duration::from_secs(20), "Running", |p| {
            p.status.phase == "Running"
        })
        .await?;
    assert_ne!(fresh.status.pod_ip, gone.status.pod_ip);
    assert_ne!(fresh.status.pod_ip, keep.status.pod_ip);
    Ok(())
}

#[tokio::test]
async fn a_missing_image_and_a_crashing_container_get_clear_reasons_and_back_off() -> Result<()> {
    let Some(c) = cluster("image_and_crash", 1).await? else {
        return Ok(());
    };
    c.create(pod(
        "noimage",
        0,
        serde_json::json!([{"name": "app", "image": "nginx:1.27", "imagePullPolicy": "Never"}]),
    ))
    .await?;
    let p = c
        .wait_pod(
            "noimage",
            Duration::from_secs(20),
            "waiting for its image",
            |p| {
                container(p, "app")
                    .and_then(|s| s.state.waiting.as_ref())
                    .is_some_and(|w| w.reason == "ErrImageNeverPull")
            },
        )
        .await?;
    let w = container(&p, "app")
        .and_then(|s| s.state.waiting.clone())
        .context("waiting")?;
    ensure!(w.message.contains("nginx:1.27"), "{w:?}");
    assert_eq!(p.status.phase, "Pending");

    c.create(pod(
        "crash",
        0,
        serde_json::json!([{"name": "app", "image": "busybox:1.35", "command": ["sh", "-c", "echo crashing; exit 3"]}]),
    ))
    .await?;
    let start = Instant::now();
    let p = c
        .wait_pod(
            "crash",
            Duration::from_secs(30),
            "restarted three times",
            |p| container(p, "app").is_some_and(|s| s.restart_count >= 3),
        )
        .await?;
    // Back-off 1 s, 2 s, 4 s: three restarts take at least 1 + 2 + 4 s (no hot loop).
    let took = start.elapsed();
    ensure!(
        took >= Duration::from_secs(6),
        "three restarts in {took:?}: no back-off"
    );
    let s = container(&p, "app").context("a status")?;
    let t = s.last_state.terminated.as_ref().context("a last state")?;
    assert_eq!((t.exit_code, t.reason.as_str()), (3, "Error"));
    assert_eq!(p.status.phase, "Running");
    let w = c
        .wait_pod(
            "crash",
            Duration::from_secs(20),
            "in CrashLoopBackOff",
            |p| {
                container(p, "app")
                    .and_then(|s| s.state.waiting.as_ref())
                    .is_some_and(|w| w.reason == "CrashLoopBackOff")
            },
        )
        .await?;
    let msg = container(&w, "app")
        .and_then(|s| s.state.waiting.clone())
        .map(|w| w.message)
        .unwrap_or_default();
    ensure!(
        msg.contains("back-off") && msg.contains("restarting failed container=app"),
        "{msg}"
    );
    let log = c.agents[0].container_log(&w, "app", 0);
    assert_eq!(log.trim(), "crashing");
    let previous = read_logs(&c.admin, "crash", "app", true).await?;
    assert_eq!(previous.trim(), "crashing");
    Ok(())
}

/// A backend pod on node `node` answering HTTP on 8080 with its own name, Ready once it does.
fn named_web_pod(name: &str, node: usize) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "nodeName": format!("node-{node}"),
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "web",
                "image": "busybox:1.35",
                "command": ["sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
            }],
        }
    })
}

fn sleeper(name: &str, node: usize) -> serde_json::Value {
    pod(
        name,
        node,
        serde_json::json!([{"name": "main", "image": "busybox:1.35", "command": ["sleep", "3600"]}]),
    )
}

/// One HTTP GET from inside a pod's namespace; the page or the failure.
fn get_from(netns: &std::path::Path, url: &str) -> Result<String> {
    run_in_netns(
        netns,
        "timeout",
        &["2", "busybox", "wget", "-q", "-O-", url],
    )
    .map(|page| page.trim().to_owned())
}

/// Who answers `n` requests to `url` from `netns`, by name; failures are counted as "FAILED".
fn who_answers(
    netns: &std::path::Path,
    url: &str,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let who = get_from(netns, url).unwrap_or_else(|_| "FAILED".into());
        *seen.entry(who).or_insert(0) += 1;
    }
    seen
}

/// The agent's metric `name` (first sample), read over HTTP from inside its node namespace.
fn agent_metric(node: &NodeNs, name: &str) -> Result<f64> {
    let text = run_in_netns(
        node.ns.path(),
        "timeout",
        &[
            "2",
            "busybox",
            "wget",
            "-q",
            "-O-",
            &format!("http://{}:10249/metrics", node.ip),
        ],
    )?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in:\n{text}"))
}

const PROXY_FLAGS: [&str; 6] = [
    "--metrics-listen",
    "0.0.0.0:10249",
    "--proxy-resync",
    "1",
    "--conntrack-gc-interval",
    "1",
];

#[tokio::test]
async fn a_client_pod_reaches_backends_on_both_nodes_through_the_cluster_ip() -> Result<()> {
    let Some(c) = cluster_with("proxy_cluster_ip", 2, true, &PROXY_FLAGS).await? else {
        return Ok(());
    };
    c.create(named_web_pod("web-0", 0)).await?;
    c.create(named_web_pod("web-1", 1)).await?;
    c.create(sleeper("client", 1)).await?;
    let svc: skiff_api::kinds::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))?;
    let svc = c.admin.create(&svc).await?;
    let vip = svc.spec.cluster_ip.clone();
    ensure!(vip.starts_with("10."), "cluster IP {vip:?}");
    for name in ["web-0", "web-1"] {
        c.wait_pod(name, Duration::from_secs(30), "Ready", Pod::is_ready)
            .await?;
    }
    let client = c
        .wait_pod("client", Duration::from_secs(30), "Running", |p| {
            p.status.phase == "Running"
        })
        .await?;
    let netns = c.agents[1].netns_dir().join(&client.metadata.uid);
    let url = format!("http://{vip}/");
    // Both backends answer through the VIP: one on the client's node, one across the fabric.
    let seen = eventually(Duration::from_secs(15), "both backends answer", || async {
        let seen = who_answers(&netns, &url, 12);
        Ok(
            (seen.len() == 2 && seen.contains_key("web-0") && seen.contains_key("web-1"))
                .then_some(seen),
        )
    })
    .await
    .with_context(|| {
        format!(
            "last: {:?}\nagent log:\n{}",
            who_answers(&netns, &url, 4),
            c.agents[1].log()
        )
    })?;
    eprintln!("answers through {vip}: {seen:?}");
    // The Endpoints controller's write to the datapath was measured on both nodes.
    for node in &c.nodes {
        let n = agent_metric(node, "skiff_proxy_programming_seconds_count")?;
        ensure!(n >= 1.0, "no programming latency observed on {}", node.ip);
    }
    // The client's node collects conntrack and reports its flows: the HTTP requests above
    // were established and closed.
    eventually(Duration::from_secs(10), "conntrack metrics", || async {
        let node = &c.nodes[1];
        let runs = agent_metric(node, "skiff_conntrack_gc_runs_total")?;
        let established =
            agent_metric(node, "skiff_conntrack_events_total{event=\"established\"}")?;
        let closed = agent_metric(node, "skiff_conntrack_events_total{event=\"closed\"}")?;
        Ok((runs >= 1.0 && established >= 1.0 && closed >= 1.0).then_some(()))
    })
    .await?;

    // A backend removed: within a few seconds only the other one answers.
    c.admin
        .delete(Pod::INFO, "default", "web-1", DeleteParams::default())
        .await?;
    eventually(Duration::from_secs(15), "only web-0 answers", || async {
        let seen = who_answers(&netns, &url, 8);
        Ok((seen.len() == 1 && seen.contains_key("web-0")).then_some(()))
    })
    .await?;

    // Drift: the service entries are deleted behind the agent's back; the resync puts them
    // back.
    let instance = &c.agents[1].datapath_instance;
    let before = agent_metric(&c.nodes[1], "skiff_proxy_resync_repairs_total")?;
    let dp = skiff_agent::datapath::DatapathConfig::new(instance.clone());
    let mut table = skiff_agent::datapath::ServiceTable::adopt(
        skiff_agent::datapath::PinnedMaps::open(&dp.layout()?)?,
        dp.limits(),
    )?;
    let sp = skiff_agent::datapath::ServicePort::new(
        vip.parse()?,
        80,
        skiff_agent::datapath::Protocol::Tcp,
    );
    ensure!(table.delete(&sp)? == skiff_agent::datapath::Change::Deleted);
    drop(table);
    eventually(
        Duration::from_secs(10),
        "the resync repairs the entry",
        || async {
            let after = agent_metric(&c.nodes[1], "skiff_proxy_resync_repairs_total")?;
            Ok(
                (after > before && get_from(&netns, &url).is_ok_and(|p| p == "web-0"))
                    .then_some(()),
            )
        },
    )
    .await?;

    // The Service deleted: its VIP is refused within a second, and the maps hold nothing of it.
    c.admin
        .delete(
            skiff_api::kinds::Service::INFO,
            "default",
            "web",
            DeleteParams::default(),
        )
        .await?;
    let t = Instant::now();
    eventually(Duration::from_secs(5), "no service ports left", || async {
        let n = agent_metric(&c.nodes[1], "skiff_proxy_service_ports")?;
        Ok((n == 0.0).then_some(()))
    })
    .await?;
    let removed_after = t.elapsed();
    // A connection started now is refused at once (not dropped and retried).
    let t = Instant::now();
    let err = get_from(&netns, &url).expect_err("the deleted Service's VIP still answers");
    let refused_in = t.elapsed();
    eprintln!(
        "entries gone {removed_after:?} after the delete; a new connection refused in {refused_in:?}"
    );
    ensure!(format!("{err:#}").contains("refused"), "{err:#}");
    ensure!(removed_after < Duration::from_secs(1), "{removed_after:?}");
    // The datapath answers the SYN with a reset (an ICMP error could arrive while connect()
    // still holds the socket, and only the SYN's retransmission a second later would fail).
    ensure!(refused_in < Duration::from_millis(300), "{refused_in:?}");
    Ok(())
}

#[tokio::test]
async fn a_node_port_serves_a_client_outside_the_cluster_through_every_node() -> Result<()> {
    let Some(c) = cluster_with("proxy_node_port", 2, true, &PROXY_FLAGS).await? else {
        return Ok(());
    };
    c.create(named_web_pod("web-0", 0)).await?;
    c.create(named_web_pod("web-1", 1)).await?;
    let svc: skiff_api::kinds::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}],
        },
    }))?;
    c.admin.create(&svc).await?;
    for name in ["web-0", "web-1"] {
        c.wait_pod(name, Duration::from_secs(30), "Ready", Pod::is_ready)
            .await?;
    }
    let outside = c
        .fabric
        .outside_client(std::net::Ipv4Addr::new(10, 250, 0, 100))?;
    // Through each node's address: both backends answer, the one on that node (client address
    // kept) and the one on the other node (source translated to the node's address).
    for node in &c.nodes {
        let url = format!("http://{}:30080/", node.ip);
        let seen = eventually(
            Duration::from_secs(15),
            &format!("both backends via {url}"),
            || async {
                let seen = who_answers(outside.path(), &url, 12);
                Ok(
                    (seen.len() == 2 && seen.contains_key("web-0") && seen.contains_key("web-1"))
                        .then_some(seen),
                )
            },
        )
        .await
        .with_context(|| {
            format!(
                "last: {:?}\nagent logs:\n{}",
                who_answers(outside.path(), &url, 4),
                c.agents
                    .iter()
                    .map(Agent::log)
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            )
        })?;
        eprintln!("answers through {url}: {seen:?}");
    }
    // A port that is no NodePort is not served.
    ensure!(
        get_from(outside.path(), &format!("http://{}:30081/", c.nodes[0].ip)).is_err(),
        "a port without a Service answered"
    );
    Ok(())
}
