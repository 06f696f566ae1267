//! The README's main command (`cargo xtask demo`) runs `skiff-local demo`, and
//! `cargo xtask demo-datapath` the datapath demo: both must keep working at every commit.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, ensure};
use skiff_testbed::{privileged, workspace_binary};
use skiff_tests::localcheck::{LocalCluster, assert_nothing_left, can_run};

#[test]
fn the_cluster_demo_answers_from_every_web_pod_across_nodes_and_down_leaves_nothing() -> Result<()>
{
    let test = "the_cluster_demo_answers_from_every_web_pod_across_nodes_and_down_leaves_nothing";
    if !can_run(test) {
        return Ok(());
    }
    let cluster = LocalCluster::new("demo")?;
    let layout = cluster.layout()?;
    let out = cluster.run("demo", &["--nodes", "3"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "skiff-local demo failed");

    // The pods table lists the three web pods, one line each: name, node, address.
    let web: Vec<(String, String)> = stdout
        .lines()
        .filter(|l| l.contains("web server (Ready)"))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .collect();
    ensure!(
        web.len() == 3,
        "the demo shows {} web pods: {web:?}",
        web.len()
    );
    // Every one of them answered a request through the Service.
    for (pod, _) in &web {
        ensure!(
            stdout
                .lines()
                .any(|l| l.contains("request") && l.contains(&format!("answered by {pod} "))),
            "{pod} answered no request"
        );
    }
    ensure!(!stdout.contains("FAILED"), "a request failed");
    // The node port answered on every node's address.
    for i in 0..3 {
        let at = format!("node-{i} at 10.250.0.{}:30080 ", 10 + i);
        ensure!(
            stdout
                .lines()
                .any(|l| l.contains(&at) && l.contains("answered by web-")),
            "the node port was not answered on node-{i}"
        );
    }
    let nodes: BTreeSet<&str> = web.iter().map(|(_, n)| n.as_str()).collect();
    eprintln!("web pods on {nodes:?}");
    ensure!(
        stdout.contains("other nodes than the client's (node-2)"),
        "the demo does not say that pods on other nodes answered"
    );
    let teardown = format!(
        "skiff-local down --name {} --dir {}",
        cluster.name(),
        cluster.dir().display()
    );
    ensure!(
        stdout.contains(&teardown),
        "the demo does not say how to tear the cluster down ({teardown})"
    );

    // Then the real application of examples/app.yaml, from the cluster's registry: requests
    // through nginx to the app and redis, and a ConfigMap edit served without a new pod.
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    ensure!(
        all.contains("Every request answered 200 by the app through nginx")
            && all.contains("redis counted each visit once"),
        "the demo does not show the application answering through nginx and redis"
    );
    ensure!(
        all.contains("\"web v2\" served 10 times in a row"),
        "the demo does not show nginx serving the edited ConfigMap"
    );

    // It leaves the cluster up; `down` removes all of it.
    let state = cluster.state()?;
    let containers = skiff_local::sys::cgroup_processes(&layout);
    ensure!(
        containers.len() >= 4,
        "{} container processes in the cluster's cgroups",
        containers.len()
    );
    cluster.down()?;
    assert_nothing_left(&layout, &state, &containers, None)
}

#[test]
fn the_datapath_demo_balances_over_every_backend_refuses_an_empty_service_and_cleans_up()
-> Result<()> {
    if !privileged("demo") {
        return Ok(());
    }
    let out = std::process::Command::new(workspace_binary("skiff-datapath-demo")?)
        .output()
        .context("running the demo")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for backend in ["backend-0", "backend-1", "backend-2"] {
        let http = stdout
            .lines()
            .filter(|l| l.contains("request") && l.contains(backend))
            .count();
        assert!(http > 0, "no HTTP request answered by {backend}:\n{stdout}");
    }
    assert!(stdout.contains("Couldn't connect"), "{stdout}");
    assert!(
        stdout.contains("10.96.0.10:80/TCP"),
        "no listing:\n{stdout}"
    );
    // It removed its namespaces and pins.
    let pid_tag = stdout
        .split("skiff-demo-")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .context("no demo instance name in the output")?;
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    assert!(!String::from_utf8_lossy(&netns.stdout).contains(&format!("skiff-demo-{pid_tag}")));
    assert!(!std::path::Path::new(&format!("/sys/fs/bpf/skiff/skiff-demo-{pid_tag}")).exists());
    Ok(())
}
