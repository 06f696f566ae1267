//! The whole cluster as a user meets it: `skiff-local up` brings up three nodes (etcd,
//! containerd, the control plane and one agent per node namespace), a Deployment of web pods
//! and a Service go in through the API, and clients in pods send real traffic through the eBPF
//! service proxy. One test per proof that issue 7 asks for; each prints its figures as
//! `FIGURE` lines (run with `--no-capture` to see them).
//!
//! All traffic starts inside the cluster's namespaces: client pods' network namespaces, which
//! have no route off the machine, and every node blackholes the Service CIDR.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use skiff_agent::datapath::show::Report;
use skiff_api::{
    client::{DeleteParams, ListParams},
    kinds::{
        Deployment, EndpointAddress, EndpointPort, EndpointSubset, Endpoints, EnvVar, Node, Pod,
        Service, ServicePort, ServiceSpec, condition,
    },
    meta::ObjectMeta,
    object::Kind as _,
};
use skiff_local::{
    layout::{fabric_ifname, node_ip, node_name},
    process::is_alive,
};
use skiff_tests::{
    load::{LineConn, Load, LoadReport, http_get, percentile, sweep},
    localcheck::{LocalRun, PODS_TIMEOUT, node_index},
};

const NODES: usize = 3;
/// The node of the client pod `client`: the last, so that most backends are across the fabric.
const CLIENT_NODE: usize = 2;
const HTTP_PORT: u16 = 80;
const LINES_PORT: u16 = 9000;
const NODE_PORT: u16 = 30080;
/// Time for every node to program a Service the test just saw complete in the API.
const PROGRAMMING_TIMEOUT: Duration = Duration::from_secs(10);
/// The steady load: one new connection every 20 ms (50 requests/s).
const LOAD_INTERVAL: Duration = Duration::from_millis(20);

/// The web pods' container: `httpd` answering every GET with the pod's name, and on port 9000
/// a line server answering every line with the pod's name (for long-lived connections). Like
/// most servers it stops serving at once on SIGTERM (a shell as PID 1 with no handler would
/// ignore SIGTERM and keep serving until SIGKILL, hiding the race a rolling update must
/// handle).
const WEB_CONTAINER: &str = r#"
      - name: httpd
        image: busybox
        command:
        - sh
        - -c
        - |
          mkdir -p /tmp/www && hostname > /tmp/www/index.html
          printf '#!/bin/sh\nwhile read l; do hostname; done\n' > /tmp/lines && chmod +x /tmp/lines
          nc -ll -p 9000 -e /tmp/lines &
          httpd -f -p 8080 -h /tmp/www &
          trap 'kill $!; exit 0' TERM
          wait
        ports:
        - {name: http, containerPort: 8080}
        - {name: lines, containerPort: 9000}
        readinessProbe:
          httpGet: {path: /, port: http}
          periodSeconds: 1
        lifecycle:
          preStop:
            sleep: {seconds: 1}
"#;

/// A Deployment of three web pods, their NodePort Service (HTTP on 80 and node port 30080,
/// lines on 9000) and a client pod on the last node.
fn web_manifest() -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:{WEB_CONTAINER}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports:
  - {{name: http, port: {HTTP_PORT}, targetPort: http, nodePort: {NODE_PORT}}}
  - {{name: lines, port: {LINES_PORT}, targetPort: lines}}
---
{}"#,
        client_pod("client", CLIENT_NODE)
    )
}

fn client_pod(name: &str, node: usize) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: client}}}}
spec:
  nodeName: {}
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: main, image: busybox, command: [sleep, '86400']}}
"#,
        node_name(node)
    )
}

/// Ready and not terminating: a pod the Service should send new connections to.
fn serving(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && p.is_ready()
}

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter().map(|p| p.metadata.name.clone()).collect()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A three-node local cluster with an admin client of it ([`LocalRun`], which this dereferences
/// to), and this file's web workload on top.
struct E2e(LocalRun);

impl std::ops::Deref for E2e {
    type Target = LocalRun;
    fn deref(&self) -> &LocalRun {
        &self.0
    }
}

impl E2e {
    /// Brings the cluster up (`None`: this host cannot run the test, outside CI).
    fn up(test: &str, tag: &str, extra: &[&str]) -> Result<Option<E2e>> {
        Ok(LocalRun::up(test, tag, NODES, extra)?.map(E2e))
    }

    /// The Ready web pods (none terminating), when there are exactly `n` and the Service's
    /// Endpoints list exactly their addresses as ready.
    fn web_settled(&self, n: usize) -> Result<Option<Vec<Pod>>> {
        let pods = self.pods("app=web")?;
        if pods.len() != n || !pods.iter().all(serving) {
            return Ok(None);
        }
        let ips: BTreeSet<String> = pods.iter().map(|p| p.status.pod_ip.clone()).collect();
        let ep = self.endpoints("web")?;
        Ok((ep.is_some_and(|e| e.ready_ips() == ips)).then_some(pods))
    }

    /// Waits until `n` web pods are Ready and in the Service's Endpoints; returns them.
    fn wait_web(&self, n: usize) -> Result<Vec<Pod>> {
        let deadline = Instant::now() + PODS_TIMEOUT;
        loop {
            if let Some(pods) = self.web_settled(n)? {
                return Ok(pods);
            }
            if Instant::now() > deadline {
                let pods = self.pods("app=web")?;
                bail!(
                    "{n} web pods were not Ready and in the Endpoints within {PODS_TIMEOUT:?}: {:?}",
                    pods.iter()
                        .map(|p| format!(
                            "{} on {:?} {} ready={}",
                            p.metadata.name,
                            p.spec.node_name,
                            p.status.phase,
                            serving(p)
                        ))
                        .collect::<Vec<_>>()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Changes the web Deployment (retrying a conflicting update).
    fn edit_web(&self, change: impl Fn(&mut Deployment)) -> Result<()> {
        self.edit("default", "web", change)
    }

    /// Applies the web manifest followed by `extra` (more YAML documents, or nothing), waits
    /// until the three web pods are Ready and in the Endpoints and the client pod runs, and
    /// checks that the client reaches all three through the Service's cluster IP.
    fn start_web(&self, extra: &str) -> Result<Web> {
        let started = Instant::now();
        self.apply(&format!("{}{extra}", web_manifest()))?;
        let pods = self.wait_web(3)?;
        let client = self.pod_netns("client")?;
        eprintln!(
            "FIGURE 3 web pods Ready and in the Endpoints {:.1} s after the apply",
            secs(started.elapsed())
        );
        let vip = self.cluster_ip("web")?;
        let names = names(&pods);
        let target = SocketAddrV4::new(vip, HTTP_PORT);
        let answers = calls(&client, target, &names, 60)?;
        Ok(Web {
            pods,
            names,
            client,
            vip,
            target,
            answers,
        })
    }

    /// Takes the cluster down and checks that nothing of it is left.
    fn finish(self) -> Result<()> {
        self.0.finish()
    }
}

/// The web workload, running: its pods, the client pod's namespace, the Service's cluster IP
/// and HTTP address, and who answered the first calls.
struct Web {
    pods: Vec<Pod>,
    names: BTreeSet<String>,
    client: PathBuf,
    vip: Ipv4Addr,
    target: SocketAddrV4,
    answers: BTreeMap<String, usize>,
}

/// A long-lived connection from `client` to the Service's line server.
fn long_conn(client: &Path, vip: Ipv4Addr) -> Result<LineConn> {
    LineConn::open(
        client,
        SocketAddrV4::new(vip, LINES_PORT),
        Duration::from_secs(2),
    )
}

/// A long-lived connection that must stay on the backend that first answered it.
struct Kept {
    conn: LineConn,
    backend: String,
    /// Exchanges so far, all answered by `backend`.
    asks: usize,
}

impl Kept {
    fn open(client: &Path, vip: Ipv4Addr) -> Result<Kept> {
        let mut conn = long_conn(client, vip)?;
        let backend = conn.ask()?;
        Ok(Kept {
            conn,
            backend,
            asks: 1,
        })
    }

    /// One more exchange, which its backend must answer.
    fn check(&mut self) -> Result<()> {
        let who = self.conn.ask()?;
        ensure!(
            who == self.backend,
            "the long-lived connection moved from {} to {who}",
            self.backend
        );
        self.asks += 1;
        Ok(())
    }

    /// Exchanges every 250 ms for `d`.
    fn check_for(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.check()?;
            thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }
}

/// Stops `load` and fails, listing them, if any of its requests failed `during` something.
fn stop_without_failures(load: Load, during: &str) -> Result<LoadReport> {
    let report = load.stop()?;
    eprintln!("{}", report.summary());
    ensure!(
        report.failures().is_empty(),
        "{} requests failed {during}:\n  {}",
        report.failures().len(),
        report.describe_failures(20)
    );
    Ok(report)
}

/// Requests from inside `netns` to `target` until every pod in `expect` has answered (at most
/// `max`). The first is retried for a while (the nodes may still be programming the Service);
/// after that any failure or unexpected answer fails. Returns the answers per pod.
fn calls(
    netns: &Path,
    target: SocketAddrV4,
    expect: &BTreeSet<String>,
    max: usize,
) -> Result<BTreeMap<String, usize>> {
    skiff_agent::netns::run_in(netns, || -> Result<BTreeMap<String, usize>> {
        let deadline = Instant::now() + PROGRAMMING_TIMEOUT;
        let mut first = http_get(target, Duration::from_secs(1));
        while first.is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            first = http_get(target, Duration::from_secs(1));
        }
        let mut answers: BTreeMap<String, usize> = BTreeMap::new();
        let mut next = first;
        for sent in 1..=max {
            let who = next.map_err(|e| anyhow::anyhow!("request {sent} to {target}: {e}"))?;
            ensure!(
                expect.contains(&who),
                "request {sent} to {target} was answered by {who:?}, not one of {expect:?}"
            );
            *answers.entry(who).or_default() += 1;
            if answers.len() == expect.len() {
                return Ok(answers);
            }
            next = http_get(target, Duration::from_secs(2));
        }
        bail!("{max} requests to {target} reached only {answers:?} of {expect:?}")
    })?
}

/// Proof 1: A Deployment of three and its Service: a client pod on another node reaches all three
/// through the ClusterIP, and through the node port on every node's address.
#[test]
fn e2e_1_a_client_on_another_node_reaches_every_backend_by_cluster_ip_and_every_node_port()
-> Result<()> {
    let test =
        "e2e_1_a_client_on_another_node_reaches_every_backend_by_cluster_ip_and_every_node_port";
    let Some(e) = E2e::up(test, "e1", &[])? else {
        return Ok(());
    };
    let Web {
        pods: web,
        names: expect,
        client,
        vip,
        answers,
        ..
    } = e.start_web("")?;
    let elsewhere: Vec<&str> = web
        .iter()
        .filter(|p| p.spec.node_name != node_name(CLIENT_NODE))
        .map(|p| p.metadata.name.as_str())
        .collect();
    ensure!(
        !elsewhere.is_empty(),
        "every web pod runs on the client's node"
    );
    eprintln!(
        "cluster IP {vip}:{HTTP_PORT} from {}: {answers:?} (pods on {:?})",
        node_name(CLIENT_NODE),
        web.iter()
            .map(|p| (&p.metadata.name, &p.spec.node_name))
            .collect::<Vec<_>>()
    );
    for i in 0..NODES {
        let target = SocketAddrV4::new(node_ip(i)?, NODE_PORT);
        let answers = calls(&client, target, &expect, 60)?;
        eprintln!("node port {target} ({}): {answers:?}", node_name(i));
    }
    e.finish()
}

/// Proof 2: Scaling from 3 to 6: every new pod gets new connections within seconds of turning
/// Ready, no request fails, and a long-lived connection opened before keeps its backend.
#[test]
fn e2e_2_scaled_up_pods_get_traffic_soon_after_ready_and_a_long_connection_keeps_its_backend()
-> Result<()> {
    let test =
        "e2e_2_scaled_up_pods_get_traffic_soon_after_ready_and_a_long_connection_keeps_its_backend";
    let Some(e) = E2e::up(test, "e2", &[])? else {
        return Ok(());
    };
    let Web {
        names: before,
        client,
        vip,
        target,
        ..
    } = e.start_web("")?;
    let mut long = Kept::open(&client, vip)?;
    ensure!(
        before.contains(&long.backend),
        "the line server answered {:?}",
        long.backend
    );
    let load = Load::start(&client, target, LOAD_INTERVAL, Duration::from_secs(2));
    thread::sleep(Duration::from_secs(1));
    let scaled = Instant::now();
    e.edit_web(|d| d.spec.replicas = Some(6))?;
    let mut ready_at: BTreeMap<String, Instant> = BTreeMap::new();
    let mut last_ask = Instant::now();
    let deadline = Instant::now() + PODS_TIMEOUT;
    let settled = loop {
        for p in e.pods("app=web")? {
            if serving(&p) && !before.contains(&p.metadata.name) {
                ready_at
                    .entry(p.metadata.name.clone())
                    .or_insert_with(Instant::now);
            }
        }
        if last_ask.elapsed() > Duration::from_millis(250) {
            long.check()?;
            last_ask = Instant::now();
        }
        if ready_at.len() == 3
            && let Some(pods) = e.web_settled(6)?
        {
            break pods;
        }
        ensure!(
            Instant::now() < deadline,
            "the new pods were not Ready within {PODS_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let all_ready = scaled.elapsed();
    // Traffic for a while after the last pod turned Ready; the long-lived connection too.
    long.check_for(Duration::from_secs(4))?;
    let report = stop_without_failures(load, "while scaling up")?;
    let mut delays = Vec::new();
    for (pod, ready) in &ready_at {
        let first = report
            .first_answer_from(pod)
            .with_context(|| format!("new pod {pod} never answered: {:?}", report.by_backend()))?;
        // Signed: the test sees Ready by polling, so a pod may answer before it is seen.
        let delay = if first >= *ready {
            secs(first - *ready)
        } else {
            -secs(*ready - first)
        };
        eprintln!("new pod {pod}: first answer {delay:+.3} s after it was seen Ready");
        ensure!(
            delay < 3.0,
            "new pod {pod} got its first request {delay:.1} s after turning Ready"
        );
        delays.push(delay);
    }
    ensure!(
        names(&settled).is_superset(&before),
        "the original pods were replaced"
    );
    eprintln!(
        "FIGURE scale 3 -> 6: all Ready in {:.1} s; first request to a new pod after Ready: max {:+.3} s; {} requests, 0 failed; the long-lived connection stayed on {} over {} exchanges",
        secs(all_ready),
        delays.iter().copied().fold(f64::MIN, f64::max),
        report.samples.len(),
        long.backend,
        long.asks
    );
    drop(long);
    e.finish()
}

/// Proof 3: A rolling update under a steady load: no request fails (readiness gates the new pods,
/// the old ones drain and stop only after their preStop hook).
#[test]
fn e2e_3_a_rolling_update_under_steady_load_fails_no_request() -> Result<()> {
    let test = "e2e_3_a_rolling_update_under_steady_load_fails_no_request";
    let Some(e) = E2e::up(test, "e3", &[])? else {
        return Ok(());
    };
    let Web {
        names: before,
        client,
        target,
        ..
    } = e.start_web("")?;
    let load = Load::start(&client, target, LOAD_INTERVAL, Duration::from_secs(2));
    thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    e.edit_web(|d| {
        if let Some(c) = d.spec.template.spec.containers.first_mut() {
            c.env.push(EnvVar {
                name: "ROLLOUT".into(),
                value: "2".into(),
                ..EnvVar::default()
            });
        }
    })?;
    let deadline = Instant::now() + PODS_TIMEOUT;
    let after = loop {
        let all = e.pods("app=web")?;
        if all.iter().all(|p| !before.contains(&p.metadata.name))
            && let Some(pods) = e.web_settled(3)?
        {
            break names(&pods);
        }
        ensure!(
            Instant::now() < deadline,
            "the rollout did not finish within {PODS_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    let rollout = started.elapsed();
    thread::sleep(Duration::from_secs(1));
    let report = stop_without_failures(load, "during the rolling update")?;
    for pod in &after {
        ensure!(
            report.first_answer_from(pod).is_some(),
            "new pod {pod} never answered"
        );
    }
    let old_answered = before
        .iter()
        .filter(|p| report.first_answer_from(p).is_some())
        .count();
    ensure!(old_answered > 0, "no old pod answered during the load");
    eprintln!(
        "FIGURE rolling update of 3 pods under {:.0} requests/s: {:.1} s, {} requests, 0 failed (latency p99 {:.1} ms)",
        report.rate(),
        secs(rollout),
        report.samples.len(),
        report.latency_ms(99.0)
    );
    e.finish()
}

/// Proof 4: One node dies (its agent is killed and its link to the fabric cut): the Service stops
/// sending to its pods once the node is judged silent, the pods are replaced on live nodes, and
/// the measured gap stays within the configured timeouts.
#[test]
fn e2e_4_a_dead_node_drops_out_of_the_service_within_its_timeouts_and_its_pods_move() -> Result<()>
{
    let test = "e2e_4_a_dead_node_drops_out_of_the_service_within_its_timeouts_and_its_pods_move";
    // Kubernetes' defaults are 40 s and 5 min; short ones keep the test short. The agents
    // renew every second so that 4 s of silence means a dead node.
    let grace = 4.0;
    let eviction = 4.0;
    let Some(e) = E2e::up(
        test,
        "e4",
        &[
            &format!("--controller-arg=--node-monitor-grace-period={grace}"),
            &format!("--controller-arg=--pod-eviction-timeout={eviction}"),
            "--agent-arg=--lease-interval=1",
        ],
    )?
    else {
        return Ok(());
    };
    let Web {
        pods: web,
        client,
        target,
        ..
    } = e.start_web("")?;
    let victim = web
        .iter()
        .find(|p| p.spec.node_name != node_name(CLIENT_NODE))
        .context("no web pod off the client's node")?;
    let dead = node_index(&victim.spec.node_name)?;
    let dead_pods: Vec<&Pod> = web
        .iter()
        .filter(|p| p.spec.node_name == victim.spec.node_name)
        .collect();
    let dead_ips: BTreeSet<String> = dead_pods.iter().map(|p| p.status.pod_ip.clone()).collect();

    let load = Load::start(&client, target, LOAD_INTERVAL, Duration::from_secs(1));
    thread::sleep(Duration::from_secs(1));
    // The node dies: its agent is killed (no more heartbeats) and its link cut (its pods are
    // unreachable).
    let state = e.cluster.state()?;
    let agent = state
        .process(&format!("agent-{}", node_name(dead)))
        .context("no agent record")?;
    ensure!(is_alive(agent), "the agent is not running");
    let cut = Instant::now();
    let pid = rustix::process::Pid::from_raw(i32::try_from(agent.pid)?).context("pid 0")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)?;
    let out = Command::new("ip")
        .args(["-n", &e.layout.fabric_netns(), "link", "set"])
        .arg(fabric_ifname(dead))
        .arg("down")
        .output()?;
    ensure!(out.status.success(), "cutting the node's link: {out:?}");

    let (mut not_ready, mut dropped, mut replaced) = (None, None, None);
    let deadline = Instant::now() + PODS_TIMEOUT;
    while replaced.is_none() {
        let node = e.rt.block_on(e.admin.get::<Node>("", &node_name(dead)))?;
        if not_ready.is_none()
            && condition(&node.status.conditions, "Ready").is_some_and(|c| c.status != "True")
        {
            not_ready = Some(cut.elapsed());
        }
        if dropped.is_none()
            && let Some(ep) = e.endpoints("web")?
            && ep.ready_ips().is_disjoint(&dead_ips)
        {
            dropped = Some(cut.elapsed());
        }
        // Replaced: three Ready pods on live nodes, all in the Endpoints (the dead node's
        // pods may still be listed until they are force-deleted).
        let live: Vec<Pod> = e
            .pods("app=web")?
            .into_iter()
            .filter(|p| serving(p) && p.spec.node_name != node_name(dead))
            .collect();
        if live.len() == 3
            && let Some(ep) = e.endpoints("web")?
            && ep.ready_ips()
                == live
                    .iter()
                    .map(|p| p.status.pod_ip.clone())
                    .collect::<BTreeSet<_>>()
        {
            replaced = Some((cut.elapsed(), names(&live)));
        }
        ensure!(
            Instant::now() < deadline,
            "the dead node's pods were not replaced within {PODS_TIMEOUT:?} (NotReady after {not_ready:?}, out of the Endpoints after {dropped:?})"
        );
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_secs(3));
    let report = load.stop()?;
    eprintln!("{}", report.summary());
    let not_ready = not_ready.context("the node was never seen NotReady")?;
    let dropped = dropped.context("the dead pods never left the Endpoints")?;
    let (replaced, live) = replaced.context("never replaced")?;
    let failures = report.failures();
    let first_failure = failures
        .first()
        .map(|s| secs(s.at.saturating_duration_since(cut)));
    let last_failure = failures
        .last()
        .map(|s| secs(s.at.saturating_duration_since(cut)));
    // Requests fail only after the cut, and stop failing once the nodes have programmed the
    // Endpoints without the dead pods (a 1 s request timeout plus a second for programming).
    for f in &failures {
        ensure!(f.at >= cut, "a request failed before the node died");
        ensure!(
            f.at <= cut + dropped + Duration::from_secs(1),
            "a request failed {:.1} s after the cut, {:.1} s after the dead pods left the Endpoints: {:?}",
            secs(f.at - cut),
            secs(f.at - cut) - secs(dropped),
            f.outcome
        );
    }
    ensure!(
        secs(dropped) <= grace + 3.0,
        "the dead pods left the Endpoints {:.1} s after the cut; the grace period is {grace} s",
        secs(dropped)
    );
    let mut replacement_answers = Vec::new();
    for pod in live.iter().filter(|p| !names(&web).contains(*p)) {
        let at = report
            .first_answer_from(pod)
            .with_context(|| format!("replacement {pod} never answered"))?;
        replacement_answers.push(secs(at - cut));
    }
    for p in &dead_pods {
        if let Some(last) = report.last_answer_from(&p.metadata.name) {
            ensure!(
                last < cut + Duration::from_millis(100),
                "dead pod {} answered {:.1} s after the cut",
                p.metadata.name,
                secs(last - cut)
            );
        }
    }
    eprintln!(
        "FIGURE dead node (grace {grace} s, eviction {eviction} s, lease renewal 1 s): NotReady after {:.1} s, its pods out of the Endpoints after {:.1} s, requests failed from {} to {} s after the cut ({} of {}), replacements Ready and in the Endpoints after {:.1} s, first answering after {:?} s",
        secs(not_ready),
        secs(dropped),
        first_failure.map_or("-".into(), |v| format!("{v:.1}")),
        last_failure.map_or("-".into(), |v| format!("{v:.1}")),
        failures.len(),
        report.samples.len(),
        secs(replaced),
        replacement_answers
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
    );
    e.finish()
}

/// Proof 5: Every agent restarted at once under a steady load: no request fails and a long-lived
/// connection survives (the pinned datapath forwards while no agent runs); the pods are
/// adopted, not restarted, and the new agents program a scale-up.
#[test]
fn e2e_5_restarting_every_agent_under_load_fails_no_request() -> Result<()> {
    let test = "e2e_5_restarting_every_agent_under_load_fails_no_request";
    let Some(e) = E2e::up(test, "e5", &[])? else {
        return Ok(());
    };
    let Web {
        names: before,
        client,
        vip,
        target,
        ..
    } = e.start_web("")?;
    let mut long = Kept::open(&client, vip)?;
    let old_agents = e.agent_pids()?;

    let load = Load::start(&client, target, LOAD_INTERVAL, Duration::from_secs(2));
    thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let out = e.cluster.run("restart", &["agents"])?;
    ensure!(out.status.success(), "skiff-local restart agents failed");
    let restart = started.elapsed();
    let new_agents = e.agent_pids()?;
    ensure!(
        new_agents.len() == NODES && new_agents.iter().all(|p| !old_agents.contains(p)),
        "agents before {old_agents:?}, after {new_agents:?}"
    );
    // Load and the long-lived connection carry on while the agents start and resync.
    long.check_for(Duration::from_secs(5))?;
    // The new agents program changes: a fourth pod gets traffic.
    e.edit_web(|d| d.spec.replicas = Some(4))?;
    let four = e.wait_web(4)?;
    let new_pod = names(&four)
        .difference(&before)
        .next()
        .cloned()
        .context("no new pod")?;
    let deadline = Instant::now() + PROGRAMMING_TIMEOUT;
    loop {
        thread::sleep(Duration::from_millis(500));
        // The load is still running; peek by asking on the side.
        if skiff_agent::netns::run_in(&client, || {
            (0..40).any(|_| http_get(target, Duration::from_secs(1)).as_deref() == Ok(&new_pod))
        })? {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the restarted agents did not send traffic to the new pod {new_pod}"
        );
    }
    let report = stop_without_failures(load, "while the agents restarted")?;
    // The pods were adopted: same pods, containers never restarted.
    for p in e.pods("app=web")? {
        if before.contains(&p.metadata.name) {
            ensure!(serving(&p), "{} is not Ready", p.metadata.name);
            for c in &p.status.container_statuses {
                ensure!(
                    c.restart_count == 0,
                    "{}/{} restarted",
                    p.metadata.name,
                    c.name
                );
            }
        }
    }
    eprintln!(
        "FIGURE all {NODES} agents restarted at once in {:.1} s under {:.0} requests/s: {} requests, 0 failed; the long-lived connection stayed on {} over {} exchanges",
        secs(restart),
        report.rate(),
        report.samples.len(),
        long.backend,
        long.asks
    );
    drop(long);
    e.finish()
}

/// Whether a connection to `target` is refused now (a reset, not a timeout).
fn refused(target: SocketAddrV4) -> bool {
    matches!(
        TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_millis(300)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

/// Proof 6: Deleting the Service: its address is refused within a second on the client's node, and
/// every node's maps and conntrack entries for it are gone.
#[test]
fn e2e_6_a_deleted_service_is_refused_within_a_second_and_leaves_no_map_or_conntrack_entry()
-> Result<()> {
    let test =
        "e2e_6_a_deleted_service_is_refused_within_a_second_and_leaves_no_map_or_conntrack_entry";
    let Some(e) = E2e::up(test, "e6", &[])? else {
        return Ok(());
    };
    let Web {
        client,
        vip,
        target,
        ..
    } = e.start_web("")?;
    // A connection that stays open, so that conntrack holds a live entry at the deletion.
    let mut long = long_conn(&client, vip)?;
    long.ask()?;
    let mentions = |r: &Report| -> (usize, usize) {
        let services = r
            .services
            .iter()
            .flatten()
            .filter(|s| s.service.vip == vip)
            .count();
        let ct = r
            .conntrack
            .iter()
            .flatten()
            .filter(|c| {
                *c.destination.ip() == vip
                    || *c.translated_to.ip() == vip
                    || c.destination.port() == NODE_PORT
            })
            .count();
        (services, ct)
    };
    for i in 0..NODES {
        let (services, ct) = mentions(&e.datapath(i)?);
        ensure!(
            services == 2,
            "node {i} has {services} service ports of {vip}"
        );
        if i == CLIENT_NODE {
            ensure!(ct > 0, "the client's node has no conntrack entry for {vip}");
        }
    }

    let deleted = Instant::now();
    e.rt.block_on(
        e.admin
            .delete(Service::INFO, "default", "web", DeleteParams::default()),
    )?;
    let refused_after = skiff_agent::netns::run_in(&client, || {
        while deleted.elapsed() < Duration::from_secs(5) {
            if refused(target) {
                return Some(deleted.elapsed());
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    })?
    .context("the deleted Service's address was still served 5 s later")?;
    ensure!(
        refused_after < Duration::from_secs(1),
        "the deleted Service was refused only after {:.2} s",
        secs(refused_after)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let gone_after = loop {
        let mut left = Vec::new();
        for i in 0..NODES {
            let (services, ct) = mentions(&e.datapath(i)?);
            if services + ct > 0 {
                left.push(format!(
                    "node {i}: {services} service ports, {ct} conntrack entries"
                ));
            }
        }
        if left.is_empty() {
            break deleted.elapsed();
        }
        ensure!(
            Instant::now() < deadline,
            "5 s after the deletion: {}",
            left.join("; ")
        );
        thread::sleep(Duration::from_millis(50));
    };
    let long_cut = long.ask().is_err();
    eprintln!(
        "FIGURE Service deleted: refused after {:.0} ms, its maps and conntrack entries gone on all {NODES} nodes after {:.0} ms; the open connection {}",
        refused_after.as_secs_f64() * 1e3,
        gone_after.as_secs_f64() * 1e3,
        if long_cut {
            "was cut"
        } else {
            "still answered"
        }
    );
    drop(long);
    e.finish()
}

/// Proof 7: A thousand Services with three endpoints each, applied at once: every node programs
/// them all and serves every one; then one Endpoints change reaches every node's datapath.
#[test]
fn e2e_7_a_thousand_services_are_served_on_every_node_and_one_endpoint_change_follows_fast()
-> Result<()> {
    let test =
        "e2e_7_a_thousand_services_are_served_on_every_node_and_one_endpoint_change_follows_fast";
    const SERVICES: usize = 1000;
    let Some(e) = E2e::up(test, "e7", &[])? else {
        return Ok(());
    };
    let Web { pods: web, .. } = e.start_web(&format!(
        "---{}---{}---
apiVersion: v1
kind: Pod
metadata: {{name: spare, labels: {{app: spare}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:{WEB_CONTAINER}",
        client_pod("client-0", 0),
        client_pod("client-1", 1)
    ))?;
    let clients: Vec<PathBuf> = ["client-0", "client-1", "client"]
        .iter()
        .map(|c| e.pod_netns(c))
        .collect::<Result<_>>()?;
    let spare_pod = loop {
        let p = e.rt.block_on(e.admin.get::<Pod>("default", "spare"))?;
        if serving(&p) {
            break p;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let address = |p: &Pod| EndpointAddress {
        ip: p.status.pod_ip.clone(),
        ..EndpointAddress::default()
    };
    let subsets = |pods: &[&Pod]| {
        vec![EndpointSubset {
            addresses: pods.iter().map(|p| address(p)).collect(),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: "TCP".into(),
            }],
            ..EndpointSubset::default()
        }]
    };
    let web_refs: Vec<&Pod> = web.iter().collect();

    // Selector-less Services, each with an Endpoints object naming the three web pods: the
    // shape of 1,000 Services of three endpoints without 3,000 pods on two cores.
    let started = Instant::now();
    let admin = e.admin.clone();
    let web_subsets = subsets(&web_refs);
    e.rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..16 {
            let admin = admin.clone();
            let web_subsets = web_subsets.clone();
            tasks.spawn(async move {
                for k in (worker..SERVICES).step_by(16) {
                    let name = format!("svc-{k:04}");
                    let svc = Service {
                        metadata: ObjectMeta {
                            name: name.clone(),
                            namespace: "default".into(),
                            ..ObjectMeta::default()
                        },
                        spec: ServiceSpec {
                            ports: vec![ServicePort {
                                name: "http".into(),
                                port: i32::from(HTTP_PORT),
                                ..Default::default()
                            }],
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    admin.create(&svc).await?;
                    admin
                        .create(&Endpoints {
                            metadata: ObjectMeta {
                                name,
                                namespace: "default".into(),
                                ..ObjectMeta::default()
                            },
                            subsets: web_subsets.clone(),
                        })
                        .await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        anyhow::Ok(())
    })?;
    let created = started.elapsed();
    let (services, _) =
        e.rt.block_on(e.admin.list::<Service>("default", &ListParams::default()))?;
    let vips: BTreeMap<Ipv4Addr, String> = services
        .iter()
        .filter(|s| s.metadata.name.starts_with("svc-"))
        .map(|s| Ok((s.spec.cluster_ip.parse()?, s.metadata.name.clone())))
        .collect::<Result<_>>()?;
    ensure!(vips.len() == SERVICES, "{} Services", vips.len());
    let backends: BTreeSet<SocketAddrV4> = web
        .iter()
        .map(|p| Ok(SocketAddrV4::new(p.status.pod_ip.parse()?, 8080)))
        .collect::<Result<_>>()?;

    // Programmed: every node's maps hold every Service with its three backends.
    let mut programmed: Vec<Option<Duration>> = vec![None; NODES];
    let deadline = Instant::now() + Duration::from_secs(120);
    while programmed.iter().any(Option::is_none) {
        for (i, done) in programmed.iter_mut().enumerate() {
            if done.is_some() {
                continue;
            }
            let report = e.datapath(i)?;
            let complete = report
                .services
                .iter()
                .flatten()
                .filter(|s| {
                    vips.contains_key(&s.service.vip)
                        && s.backends.iter().copied().collect::<BTreeSet<_>>() == backends
                })
                .count();
            if complete == SERVICES {
                *done = Some(started.elapsed());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "not every node programmed {SERVICES} Services within 120 s: {programmed:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let last = programmed
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or_default();
    // Served: from a client pod on every node, one request to every Service.
    let targets: Vec<SocketAddrV4> = vips
        .keys()
        .map(|v| SocketAddrV4::new(*v, HTTP_PORT))
        .collect();
    let mut sweeps = Vec::new();
    for (i, netns) in clients.iter().enumerate() {
        let t = Instant::now();
        let ok = sweep(netns, &targets, Duration::from_secs(2))?;
        let failed: Vec<&SocketAddrV4> = targets
            .iter()
            .zip(&ok)
            .filter(|(_, ok)| !**ok)
            .map(|(t, _)| t)
            .collect();
        ensure!(
            failed.is_empty(),
            "from node {i}, {} of {SERVICES} Services were not served: {:?}",
            failed.len(),
            &failed[..failed.len().min(10)]
        );
        sweeps.push(secs(t.elapsed()));
    }

    // One Endpoints change at this size: svc-0500 moves between the web pods and the spare
    // pod; every node's client watches for the first answer from the new side.
    let changed = "svc-0500";
    let vip = vips
        .iter()
        .find(|(_, n)| n.as_str() == changed)
        .map(|(v, _)| SocketAddrV4::new(*v, HTTP_PORT))
        .context("no svc-0500")?;
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); NODES];
    for round in 0..6 {
        let to_spare = round % 2 == 0;
        // The admin client sat idle through the programming and the sweeps: its first call
        // may race the API server closing the idle connection, and fail once before the
        // client reconnects.
        let get = || e.rt.block_on(e.admin.get::<Endpoints>("default", changed));
        let mut ep = get().or_else(|_| get())?;
        ep.subsets = if to_spare {
            subsets(&[&spare_pod])
        } else {
            subsets(&web_refs)
        };
        let results = thread::scope(|s| -> Result<Vec<Duration>> {
            let (go_tx, go_rx) = std::sync::mpsc::channel::<Instant>();
            let go_rx = std::sync::Arc::new(std::sync::Mutex::new(go_rx));
            let mut handles = Vec::new();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
            for netns in &clients {
                let go_rx = go_rx.clone();
                let ready_tx = ready_tx.clone();
                handles.push(s.spawn(move || -> Result<Duration> {
                    skiff_agent::netns::enter(netns)?;
                    let _ = ready_tx.send(());
                    let written = go_rx.lock().map_err(|_| anyhow::anyhow!("lock"))?.recv()?;
                    loop {
                        let who = http_get(vip, Duration::from_secs(1));
                        let switched = match &who {
                            Ok(w) => (w == "spare") == to_spare,
                            Err(_) => false,
                        };
                        if switched {
                            return Ok(written.elapsed());
                        }
                        ensure!(
                            written.elapsed() < Duration::from_secs(10),
                            "the change of {changed} did not reach this node in 10 s (last answer {who:?})"
                        );
                        thread::sleep(Duration::from_millis(2));
                    }
                }));
            }
            for _ in &clients {
                ready_rx.recv()?;
            }
            // From just before the write: the API's part counts too.
            let written = Instant::now();
            e.rt.block_on(e.admin.update(&ep))?;
            for _ in &clients {
                go_tx.send(written)?;
            }
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a watcher panicked"))?
                })
                .collect()
        })?;
        for (i, d) in results.into_iter().enumerate() {
            latencies[i].push(d.as_secs_f64() * 1e3);
        }
    }
    let mut all: Vec<f64> = latencies.iter().flatten().copied().collect();
    eprintln!(
        "FIGURE {SERVICES} Services x 3 endpoints: created in the API in {:.1} s, programmed on every node after {:.1} s (per node {:?}), each node's client served all {SERVICES} (sweeps {:?} s); one Endpoints change served on every node after p50 {:.1} ms, max {:.1} ms ({} samples)",
        secs(created),
        secs(last),
        programmed
            .iter()
            .flatten()
            .map(|d| format!("{:.1} s", secs(*d)))
            .collect::<Vec<_>>(),
        sweeps.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>(),
        percentile(&mut all.clone(), 50.0),
        percentile(&mut all, 100.0),
        latencies.iter().map(Vec::len).sum::<usize>()
    );
    e.finish()
}
