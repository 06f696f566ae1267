//! `skiff-local` end to end: the real binary brings up a two-node cluster (etcd, containerd, the
//! API server, the scheduler, the controller-manager and one `skiff-agent node` per node
//! namespace), `status` reports it, a Deployment of busybox pods runs on its nodes, and `down`
//! leaves nothing behind: no process, namespace (by name or held open), link, pin, mount,
//! cgroup, runc state or file. Also after processes died under it.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use skiff_api::{
    client::{Client, ListParams},
    kinds::Pod,
    manifest,
};
use skiff_local::{
    layout::{node_name, node_pod_cidr},
    process::is_alive,
    state::Phase,
    sys,
};
use skiff_testbed::{containerd::busybox_image_dir, workspace_binary};
use skiff_tests::localcheck::{LocalCluster, assert_nothing_left, can_run, links, routes};

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleepers, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: sleepers}}
  template:
    metadata: {labels: {app: sleepers}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: [sleep, '3600']
";

/// Waits until the Deployment's two pods are Running, each on a node of the cluster with an
/// address from that node's pod CIDR; returns (pod, node) pairs.
async fn wait_running(admin: &Client, nodes: usize) -> Result<Vec<(String, String)>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (pods, _) = admin
            .list::<Pod>("default", &ListParams::labels("app=sleepers"))
            .await?;
        let running: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.status.phase == "Running" && !p.status.pod_ip.is_empty())
            .collect();
        if running.len() == 2 {
            let mut out = Vec::new();
            for p in running {
                let node = &p.spec.node_name;
                let i = (0..nodes)
                    .find(|i| node_name(*i) == *node)
                    .with_context(|| {
                        format!(
                            "pod {} runs on {node:?}, not a cluster node",
                            p.metadata.name
                        )
                    })?;
                let cidr = node_pod_cidr(i)?;
                let prefix = cidr.trim_end_matches("0/24");
                ensure!(
                    p.status.pod_ip.starts_with(prefix),
                    "pod {} on {node} has {} outside {cidr}",
                    p.metadata.name,
                    p.status.pod_ip
                );
                out.push((p.metadata.name.clone(), node.clone()));
            }
            return Ok(out);
        }
        if Instant::now() > deadline {
            let phases: Vec<String> = pods
                .iter()
                .map(|p| {
                    format!(
                        "{} {} on {:?}",
                        p.metadata.name, p.status.phase, p.spec.node_name
                    )
                })
                .collect();
            bail!("the Deployment's pods were not all Running within 90 s: {phases:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn up_runs_a_deployment_on_two_nodes_and_down_leaves_nothing_behind() -> Result<()> {
    let test = "up_runs_a_deployment_on_two_nodes_and_down_leaves_nothing_behind";
    if !can_run(test) {
        return Ok(());
    }
    let cluster = LocalCluster::new("a")?;
    let layout = cluster.layout()?;
    let (up_took, up_out) = cluster.up(&["--nodes", "2"])?;
    let config = layout.skiffctl_config();
    ensure!(
        up_out.contains(&format!("export SKIFF_CONFIG={}", config.display())),
        "up does not say how to point skiffctl at the cluster"
    );
    let state = cluster.state()?;
    ensure!(state.phase == Phase::Up, "state phase {:?}", state.phase);
    ensure!(
        state.processes.len() == 8 && state.processes.iter().all(is_alive),
        "processes: {:?}",
        state.processes
    );
    ensure!(state.netns.len() == 4, "namespaces: {:?}", state.netns);

    // `up` refuses a second cluster of the same name.
    let again = cluster.run("up", &["--nodes", "1"])?;
    ensure!(
        !again.status.success(),
        "a second up of the same cluster succeeded"
    );
    ensure!(
        String::from_utf8_lossy(&again.stderr).contains("already up"),
        "a second up does not say the cluster is up"
    );

    // The cluster's links are all inside its own namespaces: the bridge and a veth per node
    // in the fabric, `eth0` in each node; none in the host's.
    let fabric_links = links(Some(&layout.fabric_netns()))?;
    for l in ["br0", "n0", "n1"] {
        ensure!(
            fabric_links.contains(l),
            "the fabric lacks {l}: {fabric_links:?}"
        );
    }
    let host_links = links(None)?;
    ensure!(
        !host_links.contains("n0") && !host_links.contains("n1"),
        "the host has a link of the cluster: {host_links:?}"
    );

    // Safety: no namespace has a way off the machine, every node blackholes the Service CIDR.
    ensure!(
        routes(&layout.fabric_netns())?.is_empty(),
        "the fabric has routes"
    );
    for i in 0..2 {
        let r = routes(&layout.node_netns(i))?;
        ensure!(
            r.iter().any(|l| l.starts_with("blackhole 10.96.0.0/12")),
            "node {i} has no Service CIDR blackhole: {r:?}"
        );
        ensure!(
            !r.iter().any(|l| l.starts_with("default")),
            "node {i} has a default route: {r:?}"
        );
    }

    let status = cluster.run("status", &[])?;
    ensure!(status.status.success(), "status says the cluster is not up");

    // The Deployment goes in through skiffctl pointed at the cluster as `up` says.
    let mut apply = Command::new(workspace_binary("skiffctl")?)
        .args(["apply", "-f", "-"])
        .env("SKIFF_CONFIG", &config)
        .env_remove("SKIFF_SERVER")
        .env_remove("SKIFF_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running skiffctl")?;
    apply
        .stdin
        .take()
        .context("skiffctl's stdin")?
        .write_all(DEPLOYMENT.as_bytes())?;
    let applied = apply.wait_with_output()?;
    ensure!(
        applied.status.success(),
        "skiffctl apply failed: {}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pods = rt.block_on(async {
        let admin = cluster.admin().await?;
        wait_running(&admin, 2).await
    })?;
    // The client's connection lives on this runtime: close it, or the API server's graceful
    // shutdown in `down` waits for it.
    drop(rt);
    eprintln!("pods: {pods:?}");
    let on: BTreeSet<&str> = pods.iter().map(|(_, n)| n.as_str()).collect();
    eprintln!("the Deployment's pods run on {on:?}");

    // The containers are real processes in the cluster's cgroups.
    let containers = sys::cgroup_processes(&layout);
    ensure!(
        containers
            .iter()
            .filter(|p| p.argv.first().is_some_and(|a| a.contains("sleep")))
            .count()
            >= 2,
        "no sleep containers in the cluster's cgroups: {containers:?}"
    );
    let status = cluster.run("status", &[])?;
    ensure!(status.status.success(), "status says the cluster is not up");
    let text = String::from_utf8_lossy(&status.stdout);
    let pod_total: usize = text
        .lines()
        .filter(|l| l.starts_with("node-"))
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<usize>().ok())
        .sum();
    ensure!(pod_total == 2, "status counts {pod_total} pods:\n{text}");

    let down_took = cluster.down()?;
    eprintln!(
        "TIMING up {:.1} s, down {:.1} s",
        up_took.as_secs_f64(),
        down_took.as_secs_f64()
    );
    assert_nothing_left(&layout, &state, &containers, None)?;
    let host_links = links(None)?;
    ensure!(
        !host_links.contains("n0") && !host_links.contains("n1"),
        "a link of the cluster is in the host: {host_links:?}"
    );

    let second = cluster.run("down", &[])?;
    ensure!(second.status.success(), "a second down failed");
    ensure!(
        String::from_utf8_lossy(&second.stdout).contains("nothing to do"),
        "a second down does not say there is nothing to do"
    );
    let status = cluster.run("status", &[])?;
    ensure!(
        !status.status.success(),
        "status of a removed cluster succeeded"
    );
    Ok(())
}

#[test]
fn down_cleans_up_after_an_agent_and_etcd_were_killed_and_spares_a_recycled_pid() -> Result<()> {
    let test = "down_cleans_up_after_an_agent_and_etcd_were_killed_and_spares_a_recycled_pid";
    if !can_run(test) {
        return Ok(());
    }
    let image_dir = busybox_image_dir()?;
    let cluster = LocalCluster::new("b")?;
    let layout = cluster.layout()?;
    let image_arg = image_dir.display().to_string();
    cluster.up(&["--nodes", "2", "--image-dir", &image_arg])?;
    let state = cluster.state()?;
    ensure!(state.image_dir.as_deref() == Some(fs::canonicalize(&image_dir)?.as_path()));

    // Pods through the API with the admin token, so that containers, shims, pod namespaces and
    // mounts exist when the processes die.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let admin = cluster.admin().await?;
        for o in manifest::parse(DEPLOYMENT.as_bytes())? {
            admin.create_object(&o).await?;
        }
        wait_running(&admin, 2).await
    })?;
    drop(rt);
    let containers = sys::cgroup_processes(&layout);
    ensure!(!containers.is_empty(), "no container processes");

    // Kill node-1's agent and etcd by hand.
    for name in ["agent-node-1", "etcd"] {
        let p = state
            .process(name)
            .with_context(|| format!("no {name} in the state"))?;
        ensure!(is_alive(p), "{name} is not running before the kill");
        let pid = rustix::process::Pid::from_raw(i32::try_from(p.pid)?).context("pid 0")?;
        rustix::process::kill_process(pid, rustix::process::Signal::KILL)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_alive(p) {
            ensure!(Instant::now() < deadline, "{name} survived SIGKILL");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let status = cluster.run("status", &[])?;
    ensure!(
        !status.status.success(),
        "status succeeded with etcd and an agent dead"
    );
    let text = String::from_utf8_lossy(&status.stdout);
    ensure!(
        text.lines()
            .any(|l| l.starts_with("etcd") && l.contains("not running")),
        "status does not show etcd as not running:\n{text}"
    );

    // A recycled pid: the scheduler's record now names a process of someone else (as if the
    // scheduler had died and its pid been reused). `down` must leave that process alone, and
    // still stop the real scheduler, which it finds by its command line naming the cluster's
    // directory.
    let mut decoy = Command::new("sleep")
        .arg("600")
        .spawn()
        .context("starting a decoy")?;
    let decoy_pid = decoy.id();
    let mut forged = state.clone();
    let scheduler = forged
        .processes
        .iter_mut()
        .find(|p| p.name == "scheduler")
        .context("no scheduler in the state")?;
    scheduler.pid = decoy_pid;
    forged.save(&layout)?;

    let down = cluster.down();
    let decoy_alive = matches!(decoy.try_wait(), Ok(None));
    let _ = decoy.kill();
    let _ = decoy.wait();
    let down_took = down?;
    ensure!(
        decoy_alive,
        "down killed a process whose pid it had recorded for another"
    );
    eprintln!("TIMING down after kills {:.1} s", down_took.as_secs_f64());
    assert_nothing_left(&layout, &state, &containers, Some(&image_dir))?;
    Ok(())
}

/// `etcdctl` against the cluster's etcd with `flags` (certificate options); whether it could
/// read the keys, and what it said.
fn etcdctl(url: &str, flags: &[String]) -> Result<(bool, String)> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={url}"))
        .args(flags)
        .args([
            "--dial-timeout=2s",
            "--command-timeout=3s",
            "get",
            "/registry/",
            "--prefix",
            "--keys-only",
        ])
        .stdin(Stdio::null())
        .output()
        .context("running etcdctl")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        out.status.success() && text.contains("/registry/namespaces/default"),
        text,
    ))
}

#[test]
fn etcd_refuses_every_client_but_the_api_server_and_restart_returns_once_serving() -> Result<()> {
    let test = "etcd_refuses_every_client_but_the_api_server_and_restart_returns_once_serving";
    if !can_run(test) {
        return Ok(());
    }
    let cluster = LocalCluster::new("tls")?;
    let layout = cluster.layout()?;
    cluster.up(&["--nodes", "1"])?;
    let state = cluster.state()?;
    let url = state.etcd_url.clone().context("no etcd URL in the state")?;
    ensure!(url.starts_with("https://127.0.0.1:"), "etcd at {url}");
    let pki = layout.pki();

    // No certificate, plain HTTP, a client certificate from the wrong authority (the API
    // server's own serving certificate, signed by the cluster CA), a certificate without the
    // CA to check etcd's: all refused.
    let plain = url.replace("https://", "http://");
    let ca = format!("--cacert={}", pki.etcd_ca.cert.display());
    let refused: [(&str, String, Vec<String>); 4] = [
        ("plain HTTP", plain, vec![]),
        (
            "TLS without a client certificate",
            url.clone(),
            vec![ca.clone()],
        ),
        (
            "a certificate signed by the cluster CA",
            url.clone(),
            vec![
                ca.clone(),
                format!("--cert={}", pki.apiserver.cert.display()),
                format!("--key={}", pki.apiserver.key.display()),
            ],
        ),
        (
            "the right client certificate but etcd's own not checked against the etcd CA",
            url.clone(),
            vec![
                format!("--cacert={}", pki.ca.cert.display()),
                format!("--cert={}", pki.apiserver_etcd_client.cert.display()),
                format!("--key={}", pki.apiserver_etcd_client.key.display()),
            ],
        ),
    ];
    for (what, url, flags) in &refused {
        let (read, text) = etcdctl(url, flags)?;
        ensure!(!read, "etcd served a client with {what}:\n{text}");
        eprintln!("refused, {what}: {}", text.lines().last().unwrap_or(""));
    }
    // The API server's client certificate opens it.
    let (read, text) = etcdctl(&url, &pki.etcdctl_flags())?;
    ensure!(
        read,
        "etcd refused the API server's client certificate:\n{text}"
    );

    // Another local user cannot take that certificate's key, nor look at etcd's data.
    for secret in [
        &pki.apiserver_etcd_client.key,
        &pki.etcd_ca.key,
        &pki.ca.key,
        &layout.etcd_dir().join("member"),
    ] {
        let out = Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--",
                "ls",
                "-l",
            ])
            .arg(secret)
            .output()?;
        ensure!(
            !out.status.success(),
            "nobody can read {}: {}",
            secret.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // And not only because the cluster's directory is closed: each key is its owner's alone.
    use std::os::unix::fs::PermissionsExt as _;
    for (what, path, want) in [
        ("etcd's data directory", layout.etcd_dir(), 0o700),
        ("the certificates' directory", pki.dir.clone(), 0o700),
        (
            "the etcd client key",
            pki.apiserver_etcd_client.key.clone(),
            0o600,
        ),
        ("the etcd CA key", pki.etcd_ca.key.clone(), 0o600),
        (
            "the etcd member's key",
            pki.etcd_server(skiff_local::up::ETCD_MEMBER).key,
            0o600,
        ),
        (
            "the API server's serving key",
            pki.apiserver.key.clone(),
            0o600,
        ),
    ] {
        let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
        ensure!(mode == want, "{what} {} has mode {mode:o}", path.display());
    }

    // The API server serves TLS, checked against the cluster CA, as skiffctl's config says.
    let get = |args: &[&str]| -> Result<std::process::Output> {
        Ok(Command::new(workspace_binary("skiffctl")?)
            .args(args)
            .env("SKIFF_CONFIG", layout.skiffctl_config())
            .env_remove("SKIFF_SERVER")
            .env_remove("SKIFF_TOKEN")
            .stdin(Stdio::null())
            .output()?)
    };
    let nodes = get(&["get", "nodes"])?;
    ensure!(
        nodes.status.success() && String::from_utf8_lossy(&nodes.stdout).contains("node-0"),
        "skiffctl get nodes over TLS: {}",
        String::from_utf8_lossy(&nodes.stderr)
    );
    let config = fs::read_to_string(layout.skiffctl_config())?;
    ensure!(
        config.contains("server: https://") && config.contains("caCert: "),
        "skiffctl's config: {config}"
    );
    let api = state.api_addr.context("no API address")?;
    let plain = get(&["--server", &format!("http://{api}"), "get", "nodes"])?;
    ensure!(
        !plain.status.success(),
        "the API server answered plain HTTP on its TCP port"
    );

    // `restart` returns once what it restarted serves: the very next call succeeds.
    for names in [
        &["apiserver"][..],
        &["agents", "scheduler", "controller-manager"],
    ] {
        let started = Instant::now();
        let mut args = vec!["--grace", "5"];
        args.extend(names);
        let out = cluster.run("restart", &args)?;
        let took = started.elapsed();
        ensure!(out.status.success(), "restart {names:?} failed");
        let nodes = get(&["get", "nodes"])?;
        ensure!(
            nodes.status.success(),
            "the first call right after `restart {names:?}` failed: {}",
            String::from_utf8_lossy(&nodes.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for n in names
            .iter()
            .map(|n| if *n == "agents" { "agent-node-0" } else { n })
        {
            ensure!(
                text.contains(&format!("{n}: serving")),
                "restart did not wait for {n}:\n{text}"
            );
        }
        eprintln!(
            "FIGURE restart {names:?} returned serving after {:.2} s",
            took.as_secs_f64()
        );
    }
    cluster.down()?;
    Ok(())
}
