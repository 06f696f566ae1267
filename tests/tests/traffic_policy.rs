//! Service traffic policies on real traffic: `internalTrafficPolicy: Local` and
//! `externalTrafficPolicy: Local` against the default `Cluster`, with real agents on two node
//! namespaces, real containerd pods, the Endpoints controller and an outside client on the
//! fabric. Every backend runs on node 0, so node 1 has no local endpoint.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use skiff_agent::datapath::{DatapathConfig, PinnedMaps};
use skiff_api::kinds::{Pod, Service};
use skiff_testbed::{
    agent::Agent,
    netns::run_in_netns,
    nodes::{Nodes, NodesOptions},
    wait::eventually,
};

/// The test's cluster ([`Nodes`]: two nodes and the controller-manager), with this file's
/// helpers on top.
struct Cluster(Nodes);

impl std::ops::Deref for Cluster {
    type Target = Nodes;
    fn deref(&self) -> &Nodes {
        &self.0
    }
}

const PROXY_FLAGS: [&str; 4] = ["--metrics-listen", "0.0.0.0:10249", "--proxy-resync", "1"];

async fn cluster(test: &str) -> Result<Option<Cluster>> {
    let opts = NodesOptions {
        nodes: 2,
        controllers: true,
        agent_flags: PROXY_FLAGS.iter().map(|s| s.to_string()).collect(),
        tag: 't',
    };
    Ok(Nodes::start(test, &opts).await?.map(Cluster))
}

impl Cluster {
    async fn create_pod(&self, pod: serde_json::Value) -> Result<()> {
        let pod: Pod = serde_json::from_value(pod).context("a test pod")?;
        self.admin.create(&pod).await?;
        Ok(())
    }

    async fn create_service(&self, svc: serde_json::Value) -> Result<Service> {
        let svc: Service = serde_json::from_value(svc).context("a test service")?;
        Ok(self.admin.create(&svc).await?)
    }

    /// Waits until pod `name` satisfies `f`; returns it.
    async fn wait_pod(&self, name: &str, what: &str, f: impl Fn(&Pod) -> bool) -> Result<Pod> {
        eventually(
            Duration::from_secs(40),
            &format!("pod {name}: {what}"),
            || async {
                let p: Pod = self.admin.get("default", name).await?;
                Ok(f(&p).then_some(p))
            },
        )
        .await
        .with_context(|| self.logs())
    }

    fn logs(&self) -> String {
        let logs: Vec<String> = self.agents.iter().map(Agent::log).collect();
        format!("agent logs:\n{}", logs.join("\n----\n"))
    }

    /// Node `i`'s datapath drop counter for `reason`.
    fn drops(&self, i: usize, reason: &str) -> Result<u64> {
        let dp = DatapathConfig::new(self.agents[i].datapath_instance.clone());
        let maps = PinnedMaps::open(&dp.layout()?)?;
        Ok(maps
            .drops()?
            .into_iter()
            .filter(|(r, _)| r.name() == reason)
            .map(|(_, n)| n)
            .sum())
    }
}

/// A backend on node `node` answering `GET /cgi-bin/who` on 8080 with its name and the
/// client address it sees (`REMOTE_ADDR`); Ready once it answers.
fn backend(name: &str, node: usize) -> serde_json::Value {
    let script =
        "#!/bin/sh\necho Content-Type: text/plain\necho\necho \"$(hostname) $REMOTE_ADDR\"\n";
    let setup = format!(
        "mkdir -p /tmp/www/cgi-bin && printf '%s' '{script}' > /tmp/www/cgi-bin/who && chmod +x /tmp/www/cgi-bin/who && echo ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
    );
    serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "nodeName": format!("node-{node}"),
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "web",
                "image": "busybox:1.35",
                "command": ["sh", "-c", setup],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
            }],
        }
    })
}

fn client_pod(name: &str, node: usize) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": format!("node-{node}"),
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "busybox:1.35", "command": ["sleep", "3600"]}],
        }
    })
}

/// A Service over the backends, with these extra spec fields.
fn service(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        if k == "nodePort" {
            spec["ports"][0]["nodePort"] = v;
        } else {
            spec[k] = v;
        }
    }
    serde_json::json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

/// One `GET /cgi-bin/who` from inside `netns`: (backend name, client address it saw).
fn who(netns: &Path, base: &str) -> Result<(String, String)> {
    let page = run_in_netns(
        netns,
        "timeout",
        &[
            "2",
            "busybox",
            "wget",
            "-q",
            "-O-",
            &format!("{base}/cgi-bin/who"),
        ],
    )?;
    let mut words = page.split_whitespace();
    match (words.next(), words.next()) {
        // httpd listens on IPv6 too and shows an IPv4 client as `[::ffff:a.b.c.d]`.
        (Some(name), Some(addr)) => Ok((
            name.to_owned(),
            addr.trim_start_matches("[::ffff:")
                .trim_end_matches(']')
                .to_owned(),
        )),
        _ => bail!("unexpected answer {page:?}"),
    }
}

/// `n` requests: answers counted by (backend, client address seen), failures by their error.
fn answers(netns: &Path, base: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let k = match who(netns, base) {
            Ok((name, addr)) => format!("{name} from {addr}"),
            Err(e) if format!("{e:#}").contains("refused") => "REFUSED".to_owned(),
            Err(_) => "FAILED".to_owned(),
        };
        *seen.entry(k).or_insert(0) += 1;
    }
    seen
}

/// Waits until `n` requests all get answers for which `ok` holds, and both backends answered.
async fn all_answer(
    c: &Cluster,
    netns: &Path,
    base: &str,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, usize>> {
    let seen = eventually(Duration::from_secs(20), what, || async {
        let seen = answers(netns, base, 12);
        let names: std::collections::BTreeSet<&str> = seen
            .keys()
            .filter_map(|k| k.split_whitespace().next())
            .collect();
        Ok((seen.keys().all(|k| ok(k)) && names == ["web-0", "web-1"].into()).then_some(seen))
    })
    .await
    .with_context(|| format!("last: {:?}\n{}", answers(netns, base, 4), c.logs()))?;
    eprintln!("{what}: {seen:?}");
    Ok(seen)
}

/// Waits until every one of `n` requests is refused at once; returns how long one took.
async fn all_refused(c: &Cluster, netns: &Path, base: &str, what: &str) -> Result<Duration> {
    eventually(Duration::from_secs(20), what, || async {
        let t = Instant::now();
        let seen = answers(netns, base, 6);
        let took = t.elapsed() / 6;
        Ok((seen.len() == 1 && seen.contains_key("REFUSED")).then_some(took))
    })
    .await
    .with_context(|| format!("last: {:?}\n{}", answers(netns, base, 4), c.logs()))
}

#[tokio::test]
async fn local_traffic_policies_keep_traffic_on_the_node_and_the_client_address() -> Result<()> {
    let Some(c) = cluster("traffic_policy").await? else {
        return Ok(());
    };
    c.create_pod(backend("web-0", 0)).await?;
    c.create_pod(backend("web-1", 0)).await?;
    c.create_pod(client_pod("client-a", 0)).await?;
    c.create_pod(client_pod("client-b", 1)).await?;
    let internal = c
        .create_service(service(
            "internal-local",
            serde_json::json!({"internalTrafficPolicy": "Local"}),
        ))
        .await?;
    c.create_service(service(
        "external-local",
        serde_json::json!({"type": "NodePort", "externalTrafficPolicy": "Local", "nodePort": 30081}),
    ))
    .await?;
    let cluster_svc = c
        .create_service(service(
            "cluster",
            serde_json::json!({"type": "NodePort", "nodePort": 30082}),
        ))
        .await?;
    for name in ["web-0", "web-1"] {
        c.wait_pod(name, "Ready", Pod::is_ready).await?;
    }
    let mut netns = Vec::new();
    for (name, node) in [("client-a", 0), ("client-b", 1)] {
        let p = c
            .wait_pod(name, "Running", |p| p.status.phase == "Running")
            .await?;
        netns.push(c.agents[node].netns_dir().join(&p.metadata.uid));
    }
    let outside_ip = Ipv4Addr::new(10, 250, 0, 100);
    let outside = c.fabric.outside_client(outside_ip)?;
    let (node_a, node_b) = (c.nodes[0].ip, c.nodes[1].ip);

    // (1) internalTrafficPolicy: Local. From node 0, both (local) backends answer.
    let int_url = format!("http://{}", internal.spec.cluster_ip);
    all_answer(
        &c,
        &netns[0],
        &int_url,
        "internal Local from node 0",
        |_| true,
    )
    .await?;
    // From node 1 (no local endpoint): refused at once (a reset), counted as no_backend.
    let before = c.drops(1, "no_backend")?;
    let took = all_refused(&c, &netns[1], &int_url, "internal Local from node 1").await?;
    // Well below the 2 s timeout: a refusal, not a lost packet (starting wget in the node's
    // namespace counts too, which a loaded machine can stretch).
    ensure!(
        took < Duration::from_millis(1500),
        "a refusal took {took:?}"
    );
    let after = c.drops(1, "no_backend")?;
    ensure!(after > before, "no_backend on node 1: {before} -> {after}");
    eprintln!("internal Local from node 1: refused in {took:?}; no_backend {before} -> {after}");

    // (2) externalTrafficPolicy: Local. Through node 0: its backends, seeing the outside
    // client's own address.
    let outside_from = format!("from {outside_ip}");
    all_answer(
        &c,
        outside.path(),
        &format!("http://{node_a}:30081"),
        "external Local through node 0",
        |k| k.ends_with(&outside_from),
    )
    .await?;
    // Through node 1 (no local endpoint): not served, counted as no_backend.
    let before = c.drops(1, "no_backend")?;
    all_refused(
        &c,
        outside.path(),
        &format!("http://{node_b}:30081"),
        "external Local through node 1",
    )
    .await?;
    let after = c.drops(1, "no_backend")?;
    ensure!(after > before, "no_backend on node 1: {before} -> {after}");
    eprintln!("external Local through node 1: refused; no_backend {before} -> {after}");
    // The same Service's ClusterIP is not affected by the external policy: node 1's pod
    // reaches node 0's backends through it.
    let ext: Service = c.admin.get("default", "external-local").await?;
    all_answer(
        &c,
        &netns[1],
        &format!("http://{}", ext.spec.cluster_ip),
        "the external-Local Service's ClusterIP from node 1",
        |_| true,
    )
    .await?;

    // (3) Cluster, the default: every backend from both nodes, through the ClusterIP and the
    // NodePort of either node; through node 1 the backend sees node 1's address (SNAT).
    let cl_url = format!("http://{}", cluster_svc.spec.cluster_ip);
    for ns in &netns {
        all_answer(&c, ns, &cl_url, "Cluster through the ClusterIP", |_| true).await?;
    }
    all_answer(
        &c,
        outside.path(),
        &format!("http://{node_a}:30082"),
        "Cluster through node 0",
        |k| k.ends_with(&outside_from),
    )
    .await?;
    let node_b_from = format!("from {node_b}");
    all_answer(
        &c,
        outside.path(),
        &format!("http://{node_b}:30082"),
        "Cluster through node 1",
        |k| k.ends_with(&node_b_from),
    )
    .await?;
    Ok(())
}
