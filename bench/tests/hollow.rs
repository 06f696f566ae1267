//! Hollow nodes (the real node agent over fakes) against a real etcd and API server:
//! registration, lease renewal, pods going Running with addresses from the node's CIDR,
//! readiness, deletion, a stopped heartbeat and the agent's restart.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use skiff_api::{
    Kind, ObjectMeta,
    client::{Client, DeleteParams},
    kinds::{Container, Lease, Namespace, Node, Pod, PodSpec, condition},
};
use skiff_bench::hollow::{
    Fleet, HOSTNAME_LABEL, HollowNode, LEASE_NAMESPACE, NodeConfig, NodeState,
};
use skiff_testbed::control::{ApiOptions, ApiServer, Etcd, etcd_available};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

async fn cluster(test: &str) -> Result<Option<(Etcd, ApiServer, Client)>> {
    if !etcd_available(test) {
        return Ok(None);
    }
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(&etcd, &ApiOptions::default())?;
    let admin = api.client("admin").await?;
    Ok(Some((etcd, api, admin)))
}

fn pod(ns: &str, name: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            ..ObjectMeta::default()
        },
        spec: PodSpec {
            node_name: node.into(),
            containers: vec![Container {
                name: "c".into(),
                image: "busybox:local".into(),
                ..Container::default()
            }],
            ..PodSpec::default()
        },
        ..Pod::default()
    }
}

/// Polls the pod until `done` says yes (a missing pod is `None`).
async fn wait_pod(
    admin: &Client,
    ns: &str,
    name: &str,
    what: &str,
    done: impl Fn(Option<&Pod>) -> bool,
) -> Result<Option<Pod>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let pod = match admin.get::<Pod>(ns, name).await {
            Ok(p) => Some(p),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        if done(pod.as_ref()) {
            return Ok(pod);
        }
        if Instant::now() > deadline {
            bail!("pod {ns}/{name} was not {what} within {WAIT:?}: {pod:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_running(admin: &Client, ns: &str, name: &str) -> Result<Pod> {
    wait_pod(admin, ns, name, "Running", |p| {
        p.is_some_and(|p| p.status.phase == "Running")
    })
    .await?
    .context("the pod is gone")
}

fn ready(p: &Pod, type_: &str) -> String {
    condition(&p.status.conditions, type_)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

async fn renew_time(admin: &Client, node: &str) -> Result<String> {
    let lease = admin.get::<Lease>(LEASE_NAMESPACE, node).await?;
    lease.spec.renew_time.context("the lease has no renewTime")
}

#[tokio::test]
async fn a_hollow_node_registers_renews_its_lease_and_runs_and_finishes_pods() -> Result<()> {
    let Some((_etcd, api, admin)) = cluster("hollow_node_lifecycle").await? else {
        return Ok(());
    };
    let mut cfg = NodeConfig::new("node-a", api.token("node-a"), 0)
        .with_renew_interval(Duration::from_millis(200));
    cfg.labels.insert("zone".into(), "z1".into());
    cfg.status_interval = Duration::from_millis(300);
    let node = HollowNode::start(&admin, cfg)?;
    node.wait_running(WAIT).await?;

    let n = admin.get::<Node>("", "node-a").await?;
    assert_eq!(n.metadata.labels[HOSTNAME_LABEL], "node-a");
    assert_eq!(n.metadata.labels["zone"], "z1");
    assert_eq!(n.spec.pod_cidr, "10.128.0.0/24");
    let r = condition(&n.status.conditions, "Ready").context("no Ready condition")?;
    assert_eq!(
        (r.status.as_str(), r.reason.as_str()),
        ("True", "KubeletReady")
    );
    assert_eq!(n.status.capacity["pods"].value(), 110);
    assert_eq!(n.status.addresses[0].address, "172.31.0.1");

    // The lease is renewed.
    let first = renew_time(&admin, "node-a").await?;
    let deadline = Instant::now() + WAIT;
    while renew_time(&admin, "node-a").await? == first {
        assert!(Instant::now() < deadline, "the lease was not renewed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lease = admin.get::<Lease>(LEASE_NAMESPACE, "node-a").await?;
    assert_eq!(lease.spec.holder_identity.as_deref(), Some("node-a"));
    assert_eq!(lease.spec.lease_duration_seconds, Some(1));

    // Pods bound to it go Running with addresses of its CIDR, handed out in turn.
    admin.create(&pod("default", "p1", "node-a")).await?;
    admin.create(&pod("default", "p2", "node-a")).await?;
    let p1 = wait_running(&admin, "default", "p1").await?;
    let p2 = wait_running(&admin, "default", "p2").await?;
    let mut ips = [p1.status.pod_ip.clone(), p2.status.pod_ip.clone()];
    ips.sort();
    assert_eq!(ips, ["10.128.0.2", "10.128.0.3"]);
    assert_eq!(p1.status.host_ip, "172.31.0.1");
    assert_eq!(ready(&p1, "Ready"), "True");
    assert_eq!(ready(&p1, "ContainersReady"), "True");
    assert!(p1.status.container_statuses[0].ready);
    assert!(p1.status.start_time.is_some());

    // Readiness is the test's to set.
    node.set_ready("default", "p1", false).await?;
    let p = admin.get::<Pod>("default", "p1").await?;
    assert_eq!(ready(&p, "Ready"), "False");
    assert_eq!(ready(&p, "ContainersReady"), "False");
    assert_eq!(p.status.phase, "Running");
    node.set_ready("default", "p1", true).await?;
    assert_eq!(
        ready(&admin.get::<Pod>("default", "p1").await?, "Ready"),
        "True"
    );

    // A graceful delete only marks the pod; the node finishes it. The agent's IPAM hands out
    // the next address in turn, not the one just freed (a peer may still hold connections to
    // it).
    let marked = admin
        .delete(Pod::INFO, "default", "p1", DeleteParams::default())
        .await?;
    assert!(marked.meta().deletion_timestamp.is_some());
    wait_pod(&admin, "default", "p1", "deleted", |p| p.is_none()).await?;
    admin.create(&pod("default", "p3", "node-a")).await?;
    let p3 = wait_running(&admin, "default", "p3").await?;
    assert_eq!(p3.status.pod_ip, "10.128.0.4");

    // With its heartbeat stopped, the lease is no longer renewed and new pods stay pending...
    node.stop_heartbeat();
    let mut state = node.state();
    let deadline = Instant::now() + WAIT;
    while state != NodeState::Stopped {
        assert!(Instant::now() < deadline, "the node did not stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
        state = node.state();
    }
    let stopped_at = renew_time(&admin, "node-a").await?;
    admin.create(&pod("default", "p4", "node-a")).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(renew_time(&admin, "node-a").await?, stopped_at);
    let p4 = admin.get::<Pod>("default", "p4").await?;
    assert_eq!(p4.status.phase, "");

    // ... until it resumes (the agent starts again): it adopts the pods it ran, which keep
    // their addresses and containers, and runs the new one.
    node.resume();
    node.wait_running(WAIT).await?;
    let p4 = wait_running(&admin, "default", "p4").await?;
    assert_eq!(p4.status.pod_ip, "10.128.0.5");
    assert_ne!(renew_time(&admin, "node-a").await?, stopped_at);
    for (name, ip) in [("p2", &p2.status.pod_ip), ("p3", &p3.status.pod_ip)] {
        let p = admin.get::<Pod>("default", name).await?;
        assert_eq!((&p.status.pod_ip, p.status.phase.as_str()), (ip, "Running"));
        assert_eq!(p.status.container_statuses[0].restart_count, 0);
    }

    let stats = node.stats();
    assert!(stats.lease_renewals >= 2, "{stats:?}");
    assert_eq!(stats.pod_deletes, 1, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(stats.fake_violations, 0, "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn a_fleet_shares_one_connection_and_each_node_runs_only_its_own_pods() -> Result<()> {
    let Some((_etcd, api, admin)) = cluster("hollow_fleet").await? else {
        return Ok(());
    };
    let names = ["node-a", "node-b", "node-c"];
    let configs = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut c = NodeConfig::new(*n, api.token(n), i as u32);
            c.start_delay = Duration::from_millis(50);
            c.ready_by_default = i != 2;
            c
        })
        .collect();
    let fleet = Fleet::start(&admin, configs)?;
    fleet.wait_running(WAIT).await?;
    assert_eq!(fleet.len(), 3);
    admin
        .create(&Namespace {
            metadata: ObjectMeta {
                name: "fleet".into(),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        })
        .await?;
    for i in 0..30 {
        let node = names[i % 3];
        admin.create(&pod("fleet", &format!("p{i}"), node)).await?;
    }
    for i in 0..30 {
        let p = wait_running(&admin, "fleet", &format!("p{i}")).await?;
        let node = i % 3;
        assert!(
            p.status.pod_ip.starts_with(&format!("10.128.{node}.")),
            "{}",
            p.status.pod_ip
        );
        assert_eq!(p.status.host_ip, format!("172.31.0.{}", node + 1));
        let want = if node == 2 { "False" } else { "True" };
        assert_eq!(ready(&p, "Ready"), want);
    }
    // The third node was told not to report its pods ready; one of them is set ready.
    let c = fleet.node("node-c").context("no node-c")?;
    c.set_ready("fleet", "p2", true).await?;
    assert_eq!(
        ready(&admin.get::<Pod>("fleet", "p2").await?, "Ready"),
        "True"
    );
    let stats = fleet.stats();
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(stats.fake_violations, 0, "{stats:?}");
    assert!(stats.pod_status_writes >= 30, "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn a_node_with_another_nodes_token_cannot_register() -> Result<()> {
    let Some((_etcd, api, admin)) = cluster("hollow_wrong_token").await? else {
        return Ok(());
    };
    let node = HollowNode::start(&admin, NodeConfig::new("node-a", api.token("node-b"), 0))?;
    let err = node
        .wait_running(Duration::from_secs(2))
        .await
        .expect_err("registered with another node's token");
    assert!(format!("{err:#}").contains("registering"), "{err:#}");
    assert!(
        admin
            .get::<Node>("", "node-a")
            .await
            .is_err_and(|e| e.is_not_found())
    );
    Ok(())
}

#[tokio::test]
async fn fifty_nodes_run_five_hundred_pods_each_address_used_once_per_node() -> Result<()> {
    if !etcd_available("hollow_fifty_nodes") {
        return Ok(());
    }
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            nodes: 50,
            ..ApiOptions::default()
        },
    )?;
    let admin = api.client("admin").await?;
    let configs = (0..50)
        .map(|i| {
            let name = format!("node-{i}");
            NodeConfig::new(name.clone(), api.token(&name), i)
        })
        .collect();
    let fleet = Fleet::start(&admin, configs)?;
    fleet.wait_running(WAIT).await?;
    let creates = (0..500).map(|i| {
        let admin = admin.clone();
        async move {
            admin
                .create(&pod(
                    "default",
                    &format!("p{i}"),
                    &format!("node-{}", i % 50),
                ))
                .await
        }
    });
    for r in futures_join(creates).await {
        r?;
    }
    let deadline = Instant::now() + WAIT;
    let pods = loop {
        let (pods, _) = admin.list::<Pod>("default", &Default::default()).await?;
        if pods.iter().filter(|p| p.status.phase == "Running").count() == 500 {
            break pods;
        }
        assert!(Instant::now() < deadline, "not every pod went Running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut seen = std::collections::HashSet::new();
    for p in &pods {
        let node: u32 = p.spec.node_name["node-".len()..].parse()?;
        let prefix = format!("10.{}.{}.", 128 + node / 256, node % 256);
        assert!(
            p.status.pod_ip.starts_with(&prefix),
            "{} on {}",
            p.status.pod_ip,
            p.spec.node_name
        );
        assert!(
            seen.insert(p.status.pod_ip.clone()),
            "{} used twice",
            p.status.pod_ip
        );
    }
    assert_eq!(fleet.stats().errors, 0, "{:?}", fleet.stats());
    Ok(())
}

/// Runs the futures concurrently; their results in order.
async fn futures_join<F, T>(futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("a task panicked"));
    }
    out
}
