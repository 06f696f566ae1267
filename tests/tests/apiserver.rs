//! The API server against a real etcd: CRUD of every kind, compare-and-swap, watch, allocation,
//! authentication, restarts and etcd member loss.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context as _, Result, bail};
use skiff_api::{
    Kind, Object,
    client::{Client, ClientError, Code, DeleteParams, ListParams, WatchEvent},
    kinds::{
        Deployment, EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Lease, Namespace,
        Node, Pod, ReplicaSet, Service,
    },
    manifest,
    proto::Propagation,
};
use skiff_testbed::control::{ApiOptions, ApiServer, Etcd, etcd_available};
use tokio_stream::StreamExt;

fn objects(yaml: &str) -> Result<Vec<Object>> {
    Ok(manifest::parse(yaml.as_bytes())?)
}

fn one<K: Kind>(yaml: &str) -> Result<K> {
    objects(yaml)?
        .pop()
        .and_then(Object::into_kind)
        .context("manifest of the wrong kind")
}

const WEB_DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx-light:local
        ports:
        - {name: http, containerPort: 80}
        resources:
          requests: {cpu: 100m, memory: 64Mi}
          limits: {cpu: 500m, memory: 128Mi}
"#;

fn pod(name: &str, node: &str) -> Result<Pod> {
    let mut p: Pod = one(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web}}}}\nspec:\n  containers:\n  - {{name: c, image: busybox:local}}\n"
    ))?;
    p.spec.node_name = node.into();
    Ok(p)
}

struct Cluster {
    etcd: Etcd,
    api: ApiServer,
}

async fn cluster(test: &str, members: usize) -> Result<Option<(Cluster, Client)>> {
    if !etcd_available(test) {
        return Ok(None);
    }
    let etcd = Etcd::start(members)?;
    let api = ApiServer::start(&etcd, &ApiOptions::default())?;
    let admin = api.client("admin").await?;
    Ok(Some((Cluster { etcd, api }, admin)))
}

#[tokio::test]
async fn every_kind_can_be_created_read_listed_updated_and_deleted() -> Result<()> {
    let Some((_c, admin)) = cluster("every_kind_crud", 1).await? else {
        return Ok(());
    };
    let ns: Namespace = one("apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n")?;
    let ns = admin.create(&ns).await?;
    assert_eq!(ns.status.phase, "Active");
    assert!(!ns.metadata.uid.is_empty() && ns.metadata.creation_timestamp.is_some());

    let mut node: Node = one(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nspec: {podCIDR: 10.244.1.0/24}\nstatus:\n  capacity: {cpu: '2', memory: 4Gi}\n",
    )?;
    node = admin.create(&node).await?;
    assert_eq!(
        node.status.capacity.get("cpu").map(|q| q.as_str()),
        Some("2"),
        "a node keeps the status it registers with"
    );

    let d = admin
        .create(&{
            let mut d: Deployment = one(WEB_DEPLOYMENT)?;
            d.metadata.namespace = "team-a".into();
            d
        })
        .await?;
    assert_eq!(d.metadata.generation, 1);
    assert_eq!(
        d.spec.strategy.type_, "RollingUpdate",
        "defaults are applied"
    );

    let mut rs: ReplicaSet = one(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: web-1, namespace: team-a}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: busybox:local}]}\n",
    )?;
    rs = admin.create(&rs).await?;
    let svc: Service = one(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: team-a}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n",
    )?;
    let svc = admin.create(&svc).await?;
    assert!(
        svc.spec.cluster_ip.starts_with("10."),
        "ClusterIP allocated: {:?}",
        svc.spec.cluster_ip
    );
    let mut ep = Endpoints::default();
    ep.metadata.name = "web".into();
    ep.metadata.namespace = "team-a".into();
    ep.subsets = vec![EndpointSubset {
        addresses: vec![EndpointAddress {
            ip: "10.244.1.5".into(),
            ..Default::default()
        }],
        ports: vec![EndpointPort {
            name: "http".into(),
            port: 80,
            protocol: "TCP".into(),
        }],
        ..Default::default()
    }];
    let ep = admin.create(&ep).await?;
    let mut lease = Lease::default();
    lease.metadata.name = "node-a".into();
    lease.metadata.namespace = "skiff-node-lease".into();
    lease.spec.holder_identity = Some("node-a".into());
    lease.spec.lease_duration_seconds = Some(40);
    let lease = admin.create(&lease).await?;
    let mut p = pod("p1", "")?;
    p.metadata.namespace = "team-a".into();
    let p = admin.create(&p).await?;
    assert_eq!(p.spec.restart_policy, "Always");

    // Get returns what create returned.
    assert_eq!(admin.get::<Deployment>("team-a", "web").await?, d);
    assert_eq!(admin.get::<Service>("team-a", "web").await?, svc);
    assert_eq!(admin.get::<Endpoints>("team-a", "web").await?, ep);
    assert_eq!(
        admin.get::<Lease>("skiff-node-lease", "node-a").await?,
        lease
    );
    assert_eq!(admin.get::<Node>("", "node-a").await?, node);
    assert_eq!(admin.get::<Namespace>("", "team-a").await?, ns);

    // Lists by namespace, across namespaces, by label and by field.
    let (pods, rev) = admin.list::<Pod>("team-a", &ListParams::default()).await?;
    assert_eq!(pods.len(), 1);
    assert!(rev >= p.metadata.revision());
    let (all_ns, _) = admin.list::<Namespace>("", &ListParams::default()).await?;
    let names: BTreeSet<_> = all_ns.iter().map(|n| n.metadata.name.as_str()).collect();
    assert!(
        names.is_superset(&["default", "skiff-node-lease", "team-a"].into()),
        "{names:?}"
    );
    assert_eq!(
        admin
            .list::<Pod>("", &ListParams::labels("app=web"))
            .await?
            .0
            .len(),
        1
    );
    assert_eq!(
        admin
            .list::<Pod>("", &ListParams::labels("app!=web"))
            .await?
            .0
            .len(),
        0
    );
    assert_eq!(
        admin
            .list::<Pod>("", &ListParams::fields("spec.nodeName="))
            .await?
            .0
            .len(),
        1
    );
    assert_eq!(
        admin
            .list::<Pod>("", &ListParams::fields("spec.nodeName=node-a"))
            .await?
            .0
            .len(),
        0
    );

    // Update: spec change bumps generation; status is ignored by update.
    let mut d2 = d.clone();
    d2.spec.replicas = Some(5);
    d2.status.replicas = 42;
    let d2 = admin.update(&d2).await?;
    assert_eq!(
        (d2.spec.replicas, d2.metadata.generation, d2.status.replicas),
        (Some(5), 2, 0)
    );
    assert!(d2.metadata.revision() > d.metadata.revision());
    // Status update changes status only.
    let mut d3 = d2.clone();
    d3.status.replicas = 5;
    d3.spec.replicas = Some(1);
    let d3 = admin.update_status(&d3).await?;
    assert_eq!(
        (d3.spec.replicas, d3.metadata.generation, d3.status.replicas),
        (Some(5), 2, 5)
    );
    rs.spec.replicas = Some(0);
    rs.metadata.resource_version.clear();
    assert_eq!(
        admin.update(&rs).await?.spec.replicas,
        Some(0),
        "an update without resourceVersion is unconditional"
    );

    // Delete every kind; each is gone afterwards.
    let none = DeleteParams::default();
    for (info, ns, name) in [
        (Pod::INFO, "team-a", "p1"),
        (Endpoints::INFO, "team-a", "web"),
        (Service::INFO, "team-a", "web"),
        (ReplicaSet::INFO, "team-a", "web-1"),
        (Deployment::INFO, "team-a", "web"),
        (Lease::INFO, "skiff-node-lease", "node-a"),
        (Node::INFO, "", "node-a"),
        (Namespace::INFO, "", "team-a"),
    ] {
        admin.delete(info, ns, name, none.clone()).await?;
        let err = admin
            .get_object(info, ns, name)
            .await
            .err()
            .context("still there after delete")?;
        assert!(err.is_not_found(), "{}: {err}", info.plural);
    }
    Ok(())
}

#[tokio::test]
async fn a_stale_update_is_refused_and_changes_nothing() -> Result<()> {
    let Some((_c, admin)) = cluster("stale_update", 1).await? else {
        return Ok(());
    };
    let d = admin.create(&one::<Deployment>(WEB_DEPLOYMENT)?).await?;
    // Re-sending the manifest as written (defaults left out) is no change: no write, no new
    // generation.
    let mut same: Deployment = one(WEB_DEPLOYMENT)?;
    same.metadata.resource_version = d.metadata.resource_version.clone();
    let same = admin.update(&same).await?;
    assert_eq!(
        (same.metadata.generation, &same.metadata.resource_version),
        (1, &d.metadata.resource_version)
    );
    let mut first = d.clone();
    first.spec.replicas = Some(4);
    let stored = admin.update(&first).await?;
    let mut stale = d.clone();
    stale.spec.replicas = Some(9);
    let err = admin
        .update(&stale)
        .await
        .err()
        .context("a stale update succeeded")?;
    assert!(err.is_conflict(), "{err}");
    assert!(
        err.to_string().contains("the object has been modified"),
        "{err}"
    );
    assert_eq!(admin.get::<Deployment>("default", "web").await?, stored);
    // Same for status and for a delete with a stale precondition.
    let err = admin
        .update_status(&stale)
        .await
        .err()
        .context("stale status update succeeded")?;
    assert!(err.is_conflict(), "{err}");
    let params = DeleteParams {
        precondition_resource_version: d.metadata.revision(),
        ..Default::default()
    };
    let err = admin
        .delete(Deployment::INFO, "default", "web", params)
        .await
        .err()
        .context("stale delete succeeded")?;
    assert!(err.is_conflict(), "{err}");
    assert_eq!(admin.get::<Deployment>("default", "web").await?, stored);
    Ok(())
}

#[tokio::test]
async fn twenty_concurrent_read_modify_write_loops_lose_no_increment() -> Result<()> {
    let Some((c, admin)) = cluster("concurrent_rmw", 1).await? else {
        return Ok(());
    };
    let mut ns = Namespace::default();
    ns.metadata.name = "counter".into();
    ns.metadata.annotations.insert("count".into(), "0".into());
    admin.create(&ns).await?;
    const WRITERS: usize = 20;
    const EACH: usize = 10;
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let client = c.api.client("admin").await?;
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for _ in 0..EACH {
                loop {
                    let mut n: Namespace = client.get("", "counter").await?;
                    let v: u64 = n.metadata.annotations["count"].parse()?;
                    n.metadata
                        .annotations
                        .insert("count".into(), (v + 1).to_string());
                    match client.update(&n).await {
                        Ok(_) => break,
                        Err(e) if e.is_conflict() => conflicts += 1,
                        Err(e) => return Err(anyhow::Error::from(e)),
                    }
                }
            }
            Ok::<_, anyhow::Error>(conflicts)
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await??;
    }
    let n: Namespace = admin.get("", "counter").await?;
    assert_eq!(
        n.metadata.annotations["count"],
        (WRITERS * EACH).to_string()
    );
    assert!(
        conflicts > 0,
        "20 writers never collided, so compare-and-swap was not exercised"
    );
    eprintln!(
        "{} increments, {conflicts} conflicts retried",
        WRITERS * EACH
    );
    Ok(())
}

/// Reads events until `n` non-bookmark events arrived (or the timeout).
async fn take_events(
    stream: &mut (impl tokio_stream::Stream<Item = Result<WatchEvent, ClientError>> + Unpin),
    n: usize,
    timeout: Duration,
) -> Result<Vec<WatchEvent>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        let ev = tokio::time::timeout_at(deadline, stream.next())
            .await
            .with_context(|| {
                format!(
                    "only {} of {n} events within {timeout:?}: {out:?}",
                    out.len()
                )
            })?
            .context("the watch ended")??;
        if !matches!(ev, WatchEvent::Bookmark(_)) {
            out.push(ev);
        }
    }
    Ok(out)
}

fn describe(ev: &WatchEvent) -> String {
    match ev {
        WatchEvent::Added(o) => format!("ADDED {}", o.meta().name),
        WatchEvent::Modified(o) => format!("MODIFIED {}", o.meta().name),
        WatchEvent::Deleted(o) => format!("DELETED {}", o.meta().name),
        WatchEvent::Bookmark(r) => format!("BOOKMARK {r}"),
    }
}

#[tokio::test]
async fn a_watch_from_a_listed_revision_sees_exactly_the_later_changes_in_order() -> Result<()> {
    let Some((_c, admin)) = cluster("watch_from_revision", 1).await? else {
        return Ok(());
    };
    for name in ["a", "b"] {
        admin.create(&pod(name, "")?).await?;
    }
    let (listed, rev) = admin.list::<Pod>("default", &ListParams::default()).await?;
    assert_eq!(listed.len(), 2);
    // Changes after the list, some of them filtered out by the label selector.
    let mut c = admin.create(&pod("c", "")?).await?;
    let mut other = pod("other", "")?;
    other.metadata.labels.insert("app".into(), "db".into());
    admin.create(&other).await?;
    c.metadata.labels.insert("tier".into(), "front".into());
    let c = admin.update(&c).await?;
    let mut a: Pod = admin.get("default", "a").await?;
    a.metadata.labels.insert("app".into(), "gone".into());
    admin.update(&a).await?;
    admin
        .delete(Pod::INFO, "default", "b", DeleteParams::default())
        .await?;

    let mut all = admin
        .watch(Pod::INFO, "default", &ListParams::default(), rev, false)
        .await?;
    let seen: Vec<String> = take_events(&mut all, 5, Duration::from_secs(10))
        .await?
        .iter()
        .map(describe)
        .collect();
    assert_eq!(
        seen,
        [
            "ADDED c",
            "ADDED other",
            "MODIFIED c",
            "MODIFIED a",
            "DELETED b"
        ]
    );

    // Through a selector, an object leaving it is DELETED for the watcher.
    let mut web = admin
        .watch(
            Pod::INFO,
            "default",
            &ListParams::labels("app=web"),
            rev,
            false,
        )
        .await?;
    let events = take_events(&mut web, 4, Duration::from_secs(10)).await?;
    let seen: Vec<String> = events.iter().map(describe).collect();
    assert_eq!(seen, ["ADDED c", "MODIFIED c", "DELETED a", "DELETED b"]);
    assert_eq!(events[1].resource_version(), c.metadata.revision());
    // Nothing more arrives: nothing was seen twice.
    let extra = tokio::time::timeout(Duration::from_millis(500), web.next()).await;
    assert!(extra.is_err(), "unexpected extra event {extra:?}");
    Ok(())
}

#[tokio::test]
async fn an_idle_watch_gets_bookmarks_and_a_compacted_revision_gets_the_relist_error() -> Result<()>
{
    if !etcd_available("watch_bookmarks_and_compaction") {
        return Ok(());
    }
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            bookmark_interval: Some(0.2),
            ..Default::default()
        },
    )?;
    let admin = api.client("admin").await?;
    admin.create(&pod("a", "")?).await?;
    let (_, rev) = admin.list::<Pod>("", &ListParams::default()).await?;
    // Activity elsewhere moves the revision; a bookmark carries it to the pod watcher.
    let mut w = admin
        .watch(Pod::INFO, "", &ListParams::default(), rev, true)
        .await?;
    let mut ns = Namespace::default();
    ns.metadata.name = "elsewhere".into();
    let ns = admin.create(&ns).await?;
    let bookmark = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = w.next().await {
            match ev? {
                WatchEvent::Bookmark(r) if r >= ns.metadata.revision() => {
                    return Ok::<_, anyhow::Error>(r);
                }
                WatchEvent::Bookmark(_) => {}
                other => bail!("a pod event arrived where none happened: {other:?}"),
            }
        }
        bail!("the watch ended")
    })
    .await
    .context("no bookmark within 10 s")??;
    assert!(bookmark > rev);

    // History before the compaction is gone: a watch from there gets the relist error.
    admin.create(&pod("b", "")?).await?;
    etcd.compact()?;
    let mut old = admin
        .watch(Pod::INFO, "", &ListParams::default(), rev, false)
        .await?;
    let err = tokio::time::timeout(Duration::from_secs(10), old.next())
        .await
        .context("no answer to a watch from a compacted revision")?
        .context("the watch ended without an error")?
        .err()
        .context("a watch from a compacted revision delivered events")?;
    assert!(err.is_gone(), "{err}");
    assert!(
        err.to_string().contains("too old resource version"),
        "{err}"
    );
    // Relisting and watching from the new revision works.
    let (pods, rev2) = admin.list::<Pod>("", &ListParams::default()).await?;
    assert_eq!(pods.len(), 2);
    let mut fresh = admin
        .watch(Pod::INFO, "", &ListParams::default(), rev2, false)
        .await?;
    admin.create(&pod("c", "")?).await?;
    let seen: Vec<String> = take_events(&mut fresh, 1, Duration::from_secs(10))
        .await?
        .iter()
        .map(describe)
        .collect();
    assert_eq!(seen, ["ADDED c"]);
    Ok(())
}

#[tokio::test]
async fn a_client_whose_watch_broke_resumes_from_its_last_revision_without_loss() -> Result<()> {
    let Some((mut c, admin)) = cluster("watch_resume_client", 1).await? else {
        return Ok(());
    };
    let (_, rev) = admin.list::<Pod>("", &ListParams::default()).await?;
    let mut w = admin
        .watch(Pod::INFO, "", &ListParams::default(), rev, false)
        .await?;
    admin.create(&pod("a", "")?).await?;
    let first = take_events(&mut w, 1, Duration::from_secs(10)).await?;
    let last = first[0].resource_version();
    // The API server dies; a second replica keeps taking writes meanwhile.
    c.api.kill();
    let other = ApiServer::start(&c.etcd, &ApiOptions::default())?;
    let other_admin = other.client("admin").await?;
    for name in ["b", "c"] {
        other_admin.create(&pod(name, "")?).await?;
    }
    other_admin
        .delete(Pod::INFO, "default", "a", DeleteParams::default())
        .await?;
    let broken = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .context("the watch did not notice")?;
    assert!(matches!(broken, None | Some(Err(_))), "{broken:?}");
    c.api.restart()?;
    let admin = c.api.client("admin").await?;
    let mut resumed = admin
        .watch(Pod::INFO, "", &ListParams::default(), last, false)
        .await?;
    let seen: Vec<String> = take_events(&mut resumed, 3, Duration::from_secs(10))
        .await?
        .iter()
        .map(describe)
        .collect();
    assert_eq!(seen, ["ADDED b", "ADDED c", "DELETED a"]);
    Ok(())
}

#[tokio::test]
async fn with_three_etcd_members_losing_one_keeps_the_api_serving_and_watching() -> Result<()> {
    let Some((mut c, admin)) = cluster("etcd_member_loss", 3).await? else {
        return Ok(());
    };
    let (_, rev) = admin.list::<Pod>("", &ListParams::default()).await?;
    let mut w = admin
        .watch(Pod::INFO, "", &ListParams::default(), rev, false)
        .await?;
    admin.create(&pod("before", "")?).await?;
    take_events(&mut w, 1, Duration::from_secs(10)).await?;
    let mut expected = Vec::new();
    for victim in 0..3 {
        let t = std::time::Instant::now();
        c.etcd.kill(victim);
        // Every request succeeds: the ones sent to the dead member are retried on the others.
        for i in 0..30 {
            let name = format!("m{victim}-{i}");
            admin
                .create(&pod(&name, "")?)
                .await
                .with_context(|| format!("create {name} with member {victim} down"))?;
            expected.push(format!("ADDED {name}"));
            // An update is not repeated by the server when etcd may have applied it (a leader
            // lost mid-request); the client rereads and tries again, as controllers do.
            let mut attempts = 0;
            loop {
                attempts += 1;
                let mut p: Pod = admin.get("default", &name).await?;
                p.metadata.labels.insert("seen".into(), "yes".into());
                match admin.update(&p).await {
                    Ok(_) => break,
                    Err(e) if e.code() == Code::Unavailable && attempts < 5 => {
                        eprintln!("update {name}: {e}; retrying");
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("update {name} with member {victim} down"));
                    }
                }
            }
            expected.push(format!("MODIFIED {name}"));
        }
        let (pods, _) = admin.list::<Pod>("", &ListParams::default()).await?;
        assert_eq!(pods.len(), 1 + expected.len() / 2);
        let served = t.elapsed();
        c.etcd.restart(victim)?;
        eprintln!(
            "member {victim} down: 30 creates, gets and updates and a list in {served:?}; back in {:?}",
            t.elapsed() - served
        );
    }
    // The watch, whose etcd stream may have been on a killed member, missed nothing.
    let seen: Vec<String> = take_events(&mut w, expected.len(), Duration::from_secs(30))
        .await?
        .iter()
        .map(describe)
        .collect();
    assert_eq!(seen, expected);
    Ok(())
}

#[tokio::test]
async fn killing_and_restarting_the_api_server_loses_no_object() -> Result<()> {
    let Some((mut c, admin)) = cluster("api_restart", 1).await? else {
        return Ok(());
    };
    let mut made = Vec::new();
    for o in objects(&format!(
        "{WEB_DEPLOYMENT}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  type: NodePort\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n"
    ))? {
        made.push(admin.create_object(&o).await?);
    }
    for i in 0..20 {
        made.push(
            admin
                .create_object(&pod(&format!("p{i}"), "")?.into_object())
                .await?,
        );
    }
    c.api.kill();
    c.api.restart()?;
    let admin = c.api.client("admin").await?;
    for o in &made {
        let got = admin
            .get_object(o.info(), &o.meta().namespace, &o.meta().name)
            .await?;
        assert_eq!(&got, o, "{} changed across the restart", o.key());
    }
    Ok(())
}

fn service(name: &str, node_port: bool) -> Result<Service> {
    let kind = if node_port { "NodePort" } else { "ClusterIP" };
    one(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: {kind}\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n"
    ))
}

#[tokio::test]
async fn two_hundred_concurrent_service_creates_on_two_replicas_get_distinct_addresses_that_survive_restarts()
-> Result<()> {
    let Some((mut c, admin)) = cluster("concurrent_allocation", 1).await? else {
        return Ok(());
    };
    let second = ApiServer::start(&c.etcd, &ApiOptions::default())?;
    let clients = [admin.clone(), second.client("admin").await?];
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = clients[i % 2].clone();
        let svc = service(&format!("s{i}"), i % 4 == 0)?;
        tasks.push(tokio::spawn(async move { client.create(&svc).await }));
    }
    let mut ips = BTreeSet::new();
    let mut ports = BTreeSet::new();
    let mut created = Vec::new();
    for t in tasks {
        let s = t.await??;
        assert!(
            ips.insert(s.spec.cluster_ip.clone()),
            "ClusterIP {} handed out twice",
            s.spec.cluster_ip
        );
        for p in &s.spec.ports {
            if s.spec.type_ == "NodePort" {
                assert!((30000..=32767).contains(&p.node_port), "{p:?}");
                assert!(
                    ports.insert(p.node_port),
                    "NodePort {} handed out twice",
                    p.node_port
                );
            } else {
                assert_eq!(p.node_port, 0);
            }
        }
        created.push(s);
    }
    assert_eq!((ips.len(), ports.len()), (200, 50));
    // The allocations live in etcd: after both replicas restart, nothing changed and new
    // Services still get fresh addresses.
    drop(second);
    c.api.restart()?;
    let admin = c.api.client("admin").await?;
    let (listed, _) = admin
        .list::<Service>("default", &ListParams::default())
        .await?;
    assert_eq!(listed.len(), 200);
    for s in &created {
        let got: Service = admin.get("default", &s.metadata.name).await?;
        assert_eq!(got.spec, s.spec);
    }
    for i in 0..20 {
        let s = admin.create(&service(&format!("after{i}"), true)?).await?;
        assert!(
            ips.insert(s.spec.cluster_ip.clone()),
            "{} reused after restart",
            s.spec.cluster_ip
        );
        assert!(
            ports.insert(s.spec.ports[0].node_port),
            "{} reused after restart",
            s.spec.ports[0].node_port
        );
    }
    // An explicit address is honoured when free and refused when taken; refusal stores nothing.
    // The explicit values are ones the random picks left free (70 random NodePorts take a
    // given port about once in 40 runs).
    let free_ip = (10..=250)
        .map(|n| format!("10.96.0.{n}"))
        .find(|ip| !ips.contains(ip))
        .context("no free ClusterIP among 10.96.0.10-250")?;
    let free_port = (30999..=32767)
        .find(|p| !ports.contains(p))
        .context("no free NodePort")?;
    let mut explicit = service("explicit", true)?;
    explicit.spec.cluster_ip = free_ip.clone();
    explicit.spec.ports[0].node_port = free_port;
    let s = admin.create(&explicit).await?;
    assert_eq!(
        (s.spec.cluster_ip.as_str(), s.spec.ports[0].node_port),
        (free_ip.as_str(), free_port)
    );
    let mut clash = service("clash", true)?;
    clash.spec.cluster_ip = free_ip.clone();
    let err = admin
        .create(&clash)
        .await
        .err()
        .context("a taken ClusterIP was handed out again")?;
    assert!(
        err.to_string().contains(&format!(
            "spec.clusterIP: Invalid value: \"{free_ip}\": provided IP is already allocated"
        )),
        "{err}"
    );
    let mut clash = service("clash", true)?;
    clash.spec.ports[0].node_port = free_port;
    let err = admin
        .create(&clash)
        .await
        .err()
        .context("a taken NodePort was handed out again")?;
    assert!(
        err.to_string()
            .contains("provided port is already allocated"),
        "{err}"
    );
    assert!(
        admin
            .get::<Service>("default", "clash")
            .await
            .err()
            .is_some_and(|e| e.is_not_found())
    );
    // Deleting a Service frees its address and port for an explicit claim.
    admin
        .delete(
            Service::INFO,
            "default",
            "explicit",
            DeleteParams::default(),
        )
        .await?;
    let again = admin.create(&explicit).await?;
    assert_eq!(again.spec.cluster_ip, free_ip);
    Ok(())
}

#[tokio::test]
async fn calls_without_a_valid_token_are_refused_and_nodes_write_only_their_own_objects()
-> Result<()> {
    let Some((c, admin)) = cluster("authn_authz", 1).await? else {
        return Ok(());
    };
    // No token, a wrong token.
    for token in ["", "not-a-token-of-this-server"] {
        let mut cfg = c.api.config("admin");
        cfg.token = token.into();
        let client = Client::connect(&cfg).await?;
        let err = client
            .list::<Pod>("", &ListParams::default())
            .await
            .err()
            .context("refused call succeeded")?;
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
        let err = client
            .create(&pod("x", "")?)
            .await
            .err()
            .context("refused call succeeded")?;
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    }
    assert_eq!(
        admin.list::<Pod>("", &ListParams::default()).await?.0.len(),
        0,
        "nothing was created"
    );

    let node_a = c.api.client("node-a").await?;
    assert_eq!(node_a.who_am_i().await?.0, "node-a");
    // A node registers itself and renews its own lease.
    let mut me = Node::default();
    me.metadata.name = "node-a".into();
    let me = node_a.create(&me).await?;
    let mut other = Node::default();
    other.metadata.name = "node-b".into();
    let err = node_a
        .create(&other)
        .await
        .err()
        .context("node-a created node-b")?;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(
        err.to_string()
            .contains("User \"node-a\" cannot create nodes"),
        "{err}"
    );
    let other = admin.create(&other).await?;
    let mut other_changed = other.clone();
    other_changed.spec.unschedulable = true;
    assert_eq!(
        node_a.update(&other_changed).await.err().map(|e| e.code()),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        node_a
            .update_status(&other_changed)
            .await
            .err()
            .map(|e| e.code()),
        Some(Code::PermissionDenied)
    );
    let mut mine_changed = me.clone();
    mine_changed.spec.unschedulable = true;
    node_a.update(&mine_changed).await?;
    let mut lease = Lease::default();
    lease.metadata.name = "node-a".into();
    lease.metadata.namespace = "skiff-node-lease".into();
    node_a.create(&lease).await?;
    lease.metadata.name = "node-b".into();
    assert_eq!(
        node_a.create(&lease).await.err().map(|e| e.code()),
        Some(Code::PermissionDenied)
    );
    // Pod status: only for pods bound to the node, and never by moving a pod.
    let on_a = admin.create(&pod("on-a", "node-a")?).await?;
    let on_b = admin.create(&pod("on-b", "node-b")?).await?;
    let mut s = on_a.clone();
    s.status.phase = "Running".into();
    assert_eq!(node_a.update_status(&s).await?.status.phase, "Running");
    let mut s = on_b.clone();
    s.status.phase = "Running".into();
    assert_eq!(
        node_a.update_status(&s).await.err().map(|e| e.code()),
        Some(Code::PermissionDenied)
    );
    let mut stolen = on_b.clone();
    stolen.spec.node_name = "node-a".into();
    assert_eq!(
        node_a.update_status(&stolen).await.err().map(|e| e.code()),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        node_a
            .create(&pod("new", "node-a")?)
            .await
            .err()
            .map(|e| e.code()),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        node_a
            .delete(Pod::INFO, "default", "on-b", DeleteParams::default())
            .await
            .err()
            .map(|e| e.code()),
        Some(Code::PermissionDenied)
    );
    let b: Pod = admin.get("default", "on-b").await?;
    assert_eq!(
        (b.status.phase.as_str(), b.spec.node_name.as_str()),
        ("", "node-b"),
        "refused writes changed nothing"
    );
    // A viewer reads and writes nothing.
    let viewer = c.api.client("viewer").await?;
    assert_eq!(
        viewer
            .list::<Pod>("", &ListParams::default())
            .await?
            .0
            .len(),
        2
    );
    assert_eq!(
        viewer.create(&pod("v", "")?).await.err().map(|e| e.code()),
        Some(Code::PermissionDenied)
    );
    Ok(())
}

#[tokio::test]
async fn tls_listener_serves_clients_that_trust_its_certificate_and_metrics_count_requests()
-> Result<()> {
    if !etcd_available("tls_and_metrics") {
        return Ok(());
    }
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            tls: true,
            ..Default::default()
        },
    )?;
    let admin = api.client("admin").await?;
    admin.create(&pod("over-tls", "")?).await?;
    assert_eq!(
        admin.list::<Pod>("", &ListParams::default()).await?.0.len(),
        1
    );
    // Without the CA the handshake fails; over plain HTTP/2 the server does not answer.
    let mut untrusting = api.config("admin");
    untrusting.ca_cert = None;
    let refused = match Client::connect(&untrusting).await {
        Err(_) => true,
        Ok(c) => c.list::<Pod>("", &ListParams::default()).await.is_err(),
    };
    assert!(
        refused,
        "a client that does not trust the certificate was served"
    );
    let mut plain = api.config("admin");
    plain.server = format!("http://{}", api.addr);
    let refused = match Client::connect(&plain).await {
        Err(_) => true,
        Ok(c) => c.list::<Pod>("", &ListParams::default()).await.is_err(),
    };
    assert!(refused, "plaintext was served on a TLS listener");
    let metrics = api.metrics()?;
    assert!(
        metrics.contains(
            "skiff_apiserver_requests_total{verb=\"create\",resource=\"pods\",code=\"OK\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "skiff_apiserver_request_duration_seconds_count{verb=\"list\",resource=\"pods\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("skiff_apiserver_etcd_request_duration_seconds_count{operation=\"create\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("skiff_apiserver_watches 0"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn deleting_an_owner_cascades_or_orphans_as_asked_and_bound_pods_terminate_gracefully()
-> Result<()> {
    let Some((_c, admin)) = cluster("cascade_delete", 1).await? else {
        return Ok(());
    };
    let make_tree = |tag: &'static str| {
        let admin = admin.clone();
        async move {
            let mut d: Deployment = one(WEB_DEPLOYMENT)?;
            d.metadata.name = format!("web-{tag}");
            let d = admin.create(&d).await?;
            let mut rs: ReplicaSet = one(
                "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: busybox:local}]}\n",
            )?;
            rs.metadata.name = format!("rs-{tag}");
            rs.metadata.owner_references = vec![skiff_api::meta::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: d.metadata.name.clone(),
                uid: d.metadata.uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }];
            let rs = admin.create(&rs).await?;
            for i in 0..2 {
                let mut p = pod(&format!("{tag}-{i}"), "")?;
                p.metadata.owner_references = vec![skiff_api::meta::OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: rs.metadata.name.clone(),
                    uid: rs.metadata.uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }];
                admin.create(&p).await?;
            }
            Ok::<_, anyhow::Error>(d)
        }
    };
    let count = |tag: &'static str| {
        let admin = admin.clone();
        async move {
            let rs = admin
                .list::<ReplicaSet>("default", &ListParams::default())
                .await?
                .0
                .into_iter()
                .filter(|r| r.metadata.name.ends_with(tag))
                .count();
            let pods: Vec<Pod> = admin
                .list::<Pod>("default", &ListParams::default())
                .await?
                .0
                .into_iter()
                .filter(|p| p.metadata.name.starts_with(tag))
                .collect();
            Ok::<_, anyhow::Error>((rs, pods))
        }
    };
    for (tag, propagation) in [
        ("bg", Propagation::Background),
        ("fg", Propagation::Foreground),
    ] {
        make_tree(tag).await?;
        assert_eq!(count(tag).await?.0, 1);
        admin
            .delete(
                Deployment::INFO,
                "default",
                &format!("web-{tag}"),
                DeleteParams {
                    propagation,
                    ..Default::default()
                },
            )
            .await?;
        let (rs, pods) = count(tag).await?;
        assert_eq!((rs, pods.len()), (0, 0), "{propagation:?} left dependents");
    }
    make_tree("or").await?;
    admin
        .delete(
            Deployment::INFO,
            "default",
            "web-or",
            DeleteParams {
                propagation: Propagation::Orphan,
                ..Default::default()
            },
        )
        .await?;
    let (rs, pods) = count("or").await?;
    assert_eq!((rs, pods.len()), (1, 2), "orphaned dependents stay");
    let orphan: ReplicaSet = admin.get("default", "rs-or").await?;
    assert!(
        orphan.metadata.owner_references.is_empty(),
        "the owner reference is removed"
    );
    assert_eq!(
        pods[0].metadata.owner_references.len(),
        1,
        "grandchildren keep their own owner"
    );

    // Deleting a namespace deletes everything in it and frees its Services' allocations; the
    // system's namespaces cannot be deleted.
    let mut team = Namespace::default();
    team.metadata.name = "team-x".into();
    admin.create(&team).await?;
    let mut d: Deployment = one(WEB_DEPLOYMENT)?;
    d.metadata.namespace = "team-x".into();
    admin.create(&d).await?;
    let mut s = service("web", true)?;
    s.metadata.namespace = "team-x".into();
    let s = admin.create(&s).await?;
    let mut p = pod("in-team", "node-a")?;
    p.metadata.namespace = "team-x".into();
    admin.create(&p).await?;
    let ranges_before = _c.etcd.keys("/registry/ranges/")?;
    assert!(
        ranges_before
            .iter()
            .any(|k| k.ends_with(&s.spec.cluster_ip)),
        "{ranges_before:?}"
    );
    admin
        .delete(Namespace::INFO, "", "team-x", DeleteParams::default())
        .await?;
    assert!(
        admin
            .get::<Namespace>("", "team-x")
            .await
            .err()
            .is_some_and(|e| e.is_not_found())
    );
    assert!(_c.etcd.keys("/registry/pods/team-x/")?.is_empty());
    assert!(_c.etcd.keys("/registry/deployments/team-x/")?.is_empty());
    let ranges_after = _c.etcd.keys("/registry/ranges/")?;
    assert!(
        !ranges_after.iter().any(|k| k.ends_with(&s.spec.cluster_ip)),
        "{ranges_after:?}"
    );
    let err = admin
        .delete(Namespace::INFO, "", "default", DeleteParams::default())
        .await
        .err()
        .context("default was deleted")?;
    assert!(err.to_string().contains("may not be deleted"), "{err}");

    // A pod bound to a node is marked for deletion; its node deletes it for good.
    let bound = admin.create(&pod("bound", "node-a")?).await?;
    let marked = admin
        .delete(Pod::INFO, "default", "bound", DeleteParams::default())
        .await?;
    assert!(marked.meta().deletion_timestamp.is_some(), "{marked:?}");
    assert_eq!(marked.meta().deletion_grace_period_seconds, Some(30));
    let still: Pod = admin.get("default", "bound").await?;
    assert_eq!(still.metadata.uid, bound.metadata.uid);
    let node_a = _c.api.client("node-a").await?;
    // The final delete names the pod's uid, so it can never remove a successor of the same name.
    let wrong = DeleteParams {
        grace_period_seconds: Some(0),
        precondition_uid: "someone-else".into(),
        ..Default::default()
    };
    let err = node_a
        .delete(Pod::INFO, "default", "bound", wrong)
        .await
        .err()
        .context("uid precondition ignored")?;
    assert!(
        err.is_conflict() && err.to_string().contains("Precondition failed: UID"),
        "{err}"
    );
    let fin = DeleteParams {
        grace_period_seconds: Some(0),
        precondition_uid: bound.metadata.uid.clone(),
        ..Default::default()
    };
    node_a.delete(Pod::INFO, "default", "bound", fin).await?;
    assert!(
        admin
            .get::<Pod>("default", "bound")
            .await
            .err()
            .is_some_and(|e| e.is_not_found())
    );
    Ok(())
}

#[tokio::test]
async fn bad_objects_get_their_specific_error_and_store_nothing() -> Result<()> {
    let Some((c, admin)) = cluster("bad_objects", 1).await? else {
        return Ok(());
    };
    let deployment = |patch: &dyn Fn(&mut serde_json::Value)| -> Vec<u8> {
        let mut v = one::<Deployment>(WEB_DEPLOYMENT)
            .map(|d| d.into_object().to_value())
            .unwrap_or_default();
        patch(&mut v);
        serde_json::to_vec(&v).unwrap_or_default()
    };
    let svc = |ports: &str, extra: &str| {
        format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"s"}},"spec":{{"selector":{{"app":"web"}},"ports":{ports}{extra}}}}}"#).into_bytes()
    };
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"big","annotations":{{"a":"{}"}}}}}}"#,
        "x".repeat(1_600_000)
    );
    let huge = format!(
        r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"huge","annotations":{{"a":"{}"}}}}}}"#,
        "x".repeat(3 << 20)
    );
    let nested = format!(
        r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"n"}},"spec":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Vec<u8>, Code, &str)> = vec![
        ("wrong type", "deployments", deployment(&|v| v["spec"]["replicas"] = "three".into()), Code::InvalidArgument, "spec.replicas: invalid type: string \"three\", expected i32"),
        ("unknown top-level field", "deployments", deployment(&|v| v["extra"] = 1.into()), Code::InvalidArgument, "unknown field `extra`"),
        ("unknown nested field", "deployments", deployment(&|v| v["spec"]["template"]["spec"]["containers"][0]["imagePullSecret"] = "x".into()), Code::InvalidArgument, "spec.template.spec.containers[0].imagePullSecret: unknown field `imagePullSecret`"),
        ("unsupported volume source", "deployments", deployment(&|v| v["spec"]["template"]["spec"]["volumes"] = serde_json::json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}])), Code::InvalidArgument, "spec.template.spec.volumes[0].persistentVolumeClaim: Forbidden: Skiff does not support persistentVolumeClaim volumes yet"),
        ("upper-case name", "deployments", deployment(&|v| v["metadata"]["name"] = "Web".into()), Code::InvalidArgument, "metadata.name: Invalid value: \"Web\""),
        ("name too long", "deployments", deployment(&|v| v["metadata"]["name"] = "a".repeat(254).into()), Code::InvalidArgument, "must be no more than 253 characters"),
        ("bad label key", "deployments", deployment(&|v| v["metadata"]["labels"] = serde_json::json!({"-bad": "x"})), Code::InvalidArgument, "metadata.labels: Invalid value: \"-bad\""),
        ("bad label value", "deployments", deployment(&|v| v["metadata"]["labels"] = serde_json::json!({"app": "no spaces"})), Code::InvalidArgument, "metadata.labels[app]: Invalid value: \"no spaces\""),
        ("bad quantity", "deployments", deployment(&|v| v["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "12x".into()), Code::InvalidArgument, "resources.limits.cpu: invalid quantity \"12x\""),
        ("request above limit", "deployments", deployment(&|v| v["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] = "1Gi".into()), Code::InvalidArgument, "must be less than or equal to memory limit"),
        ("duplicate port names", "deployments", deployment(&|v| v["spec"]["template"]["spec"]["containers"][0]["ports"] = serde_json::json!([{"name": "http", "containerPort": 80}, {"name": "http", "containerPort": 81}])), Code::InvalidArgument, "Duplicate value: \"http\""),
        ("port out of range", "deployments", deployment(&|v| v["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 70000.into()), Code::InvalidArgument, "containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"),
        ("selector does not match template", "deployments", deployment(&|v| v["spec"]["selector"]["matchLabels"]["app"] = "db".into()), Code::InvalidArgument, "selector does not match template labels"),
        ("empty selector", "deployments", deployment(&|v| v["spec"]["selector"] = serde_json::json!({})), Code::InvalidArgument, "spec.selector: Required value"),
        ("negative replicas", "deployments", deployment(&|v| v["spec"]["replicas"] = (-1).into()), Code::InvalidArgument, "spec.replicas: Invalid value: -1: must be greater than or equal to 0"),
        ("both surge and unavailable zero", "deployments", deployment(&|v| v["spec"]["strategy"] = serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}})), Code::InvalidArgument, "may not be 0 when maxUnavailable is 0"),
        ("duplicate service ports", "services", svc(r#"[{"name":"a","port":80},{"name":"b","port":80}]"#, ""), Code::InvalidArgument, "spec.ports[1]: Duplicate value: \"80/TCP\""),
        ("SCTP", "services", svc(r#"[{"port":80,"protocol":"SCTP"}]"#, ""), Code::InvalidArgument, "Unsupported value: \"SCTP\""),
        ("lower-case protocol", "services", svc(r#"[{"port":80,"protocol":"tcp"}]"#, ""), Code::InvalidArgument, "Unsupported value: \"tcp\""),
        ("ClusterIP outside the Service CIDR", "services", svc(r#"[{"port":80}]"#, r#","clusterIP":"8.8.8.8""#), Code::InvalidArgument, "spec.clusterIP: Invalid value: \"8.8.8.8\": provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"),
        ("NodePort outside the range", "services", svc(r#"[{"port":80,"nodePort":22}]"#, r#","type":"NodePort""#), Code::InvalidArgument, "Invalid value: 22: provided port is not in the valid range. The range of valid ports is 30000-32767"),
        ("LoadBalancer", "services", svc(r#"[{"port":80}]"#, r#","type":"LoadBalancer""#), Code::InvalidArgument, "spec.type: Unsupported value: \"LoadBalancer\""),
        ("nodePort on a ClusterIP service", "services", svc(r#"[{"port":80,"nodePort":30080}]"#, ""), Code::InvalidArgument, "nodePort"),
        ("missing kind", "namespaces", br#"{"apiVersion":"v1","metadata":{"name":"x"}}"#.to_vec(), Code::InvalidArgument, "kind: Required value"),
        ("wrong apiVersion", "deployments", deployment(&|v| v["apiVersion"] = "v1".into()), Code::InvalidArgument, "apiVersion: Unsupported value: \"v1\": Deployment is served as apps/v1"),
        ("unknown kind", "namespaces", br#"{"apiVersion":"v1","kind":"CronJob","metadata":{"name":"x"}}"#.to_vec(), Code::InvalidArgument, "kind: Unsupported value: \"CronJob\""),
        ("kind does not match the resource", "pods", svc(r#"[{"port":80}]"#, ""), Code::InvalidArgument, "the request is for Pod"),
        ("non-UTF-8", "namespaces", b"{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"\xff\xfe\"}}".to_vec(), Code::InvalidArgument, "not UTF-8"),
        ("JSON syntax", "namespaces", br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}"#.to_vec(), Code::InvalidArgument, "not valid JSON"),
        ("duplicate keys", "namespaces", br#"{"apiVersion":"v1","kind":"Namespace","kind":"Pod","metadata":{"name":"x"}}"#.to_vec(), Code::InvalidArgument, "duplicate key \"kind\""),
        ("deeply nested junk", "namespaces", nested.into_bytes(), Code::InvalidArgument, "recursion limit exceeded"),
        ("oversized object", "namespaces", big.into_bytes(), Code::InvalidArgument, "the limit is 1564672 bytes"),
        ("oversized request", "namespaces", huge.into_bytes(), Code::OutOfRange, "message length too large"),
        ("unknown resource", "cronjobs", br#"{}"#.to_vec(), Code::NotFound, "the server could not find the requested resource \"cronjobs\""),
        ("namespace that does not exist", "pods", serde_json::to_vec(&pod("p", "")?.into_object().to_value())?, Code::NotFound, "namespaces \"nowhere\" not found"),
    ];
    let before = c.etcd.keys("/registry/")?;
    let mut failures = Vec::new();
    for (what, resource, body, code, expected) in &cases {
        let ns = if *what == "namespace that does not exist" {
            "nowhere"
        } else {
            ""
        };
        match admin.create_raw(resource, ns, body.clone()).await {
            Ok(o) => failures.push(format!("{what}: accepted as {}", o.key())),
            Err(e) if e.code() != *code || !e.to_string().contains(expected) => {
                failures.push(format!(
                    "{what}: got {:?} {:?}, want {code:?} containing {expected:?}",
                    e.code(),
                    e.to_string().chars().take(400).collect::<String>()
                ));
            }
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(
        c.etcd.keys("/registry/")?,
        before,
        "a refused object changed etcd"
    );
    assert!(cases.len() >= 30);
    Ok(())
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Every node agent watches its own pods; the watch cache serves all of them from one etcd watch,
/// each sees exactly its node's pods, and a watcher that stops reading is moved to an etcd watch
/// of its own without losing or repeating an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_selected_watches_share_the_watch_cache_and_a_slow_watcher_loses_nothing() -> Result<()>
{
    if !etcd_available("watch_cache") {
        return Ok(());
    }
    const NODES: usize = 40;
    const PODS: usize = 400;
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            extra: vec!["--watch-cache-queue".into(), "16".into()],
            bookmark_interval: Some(0.2),
            ..Default::default()
        },
    )?;
    let admin = api.client("admin").await?;
    let mut other = Namespace::default();
    other.metadata.name = "other".into();
    admin.create(&other).await?;
    let (_, rev) = admin.list::<Pod>("", &ListParams::default()).await?;
    // The slow watcher opens first and is read only at the end; it asked for bookmarks, which
    // must never claim a revision whose events it has not had.
    let mut slow = admin
        .watch(Pod::INFO, "", &ListParams::default(), rev, true)
        .await?;
    let mut readers = tokio::task::JoinSet::new();
    for n in 0..NODES {
        let node = format!("node-{n}");
        let mut w = admin
            .watch(
                Pod::INFO,
                "",
                &ListParams::fields(format!("spec.nodeName={node}")),
                rev,
                false,
            )
            .await?;
        // Each node gets PODS / NODES pods, and the first of them is deleted.
        let want = PODS / NODES + 1;
        readers.spawn(async move {
            let evs = take_events(&mut w, want, Duration::from_secs(30)).await?;
            for ev in &evs {
                let (WatchEvent::Added(o) | WatchEvent::Deleted(o)) = ev else {
                    bail!("{node} got {}", describe(ev));
                };
                let Object::Pod(p) = o else {
                    bail!("not a pod")
                };
                if p.spec.node_name != node {
                    bail!("{node} got {}'s pod {}", p.spec.node_name, p.metadata.name);
                }
            }
            // Nothing more arrives for this node.
            if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), w.next()).await {
                bail!("{node} got an extra event: {:?}", ev.map(|e| describe(&e)));
            }
            Ok(evs.len())
        });
    }
    // Large objects, so the slow watcher's backlog outgrows what the transport buffers for it
    // (HTTP/2 windows hold a few MB) as well as its queue in the cache.
    let padding = "x".repeat(16 << 10);
    for i in 0..PODS {
        let mut p = pod(&format!("p{i}"), &format!("node-{}", i % NODES))?;
        p.metadata
            .annotations
            .insert("padding".into(), padding.clone());
        admin.create(&p).await?;
    }
    for i in 0..NODES {
        admin
            .delete(
                Pod::INFO,
                "default",
                &format!("p{i}"),
                DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
            )
            .await?;
    }
    let mut seen = 0;
    while let Some(r) = readers.join_next().await {
        seen += r??;
    }
    assert_eq!(seen, PODS + NODES);
    // A watch of another namespace from the same revision replays none of those events.
    let mut elsewhere = admin
        .watch(Pod::INFO, "other", &ListParams::default(), rev, false)
        .await?;
    let mut lone = pod("lone", "node-0")?;
    lone.metadata.namespace = "other".into();
    admin.create(&lone).await?;
    let evs = take_events(&mut elsewhere, 1, Duration::from_secs(10)).await?;
    assert_eq!(evs.iter().map(describe).collect::<Vec<_>>(), ["ADDED lone"]);
    let evs = take_events(&mut slow, PODS + NODES, Duration::from_secs(30)).await?;
    let got: Vec<String> = evs.iter().map(describe).collect();
    let want: Vec<String> = (0..PODS)
        .map(|i| format!("ADDED p{i}"))
        .chain((0..NODES).map(|i| format!("DELETED p{i}")))
        .collect();
    assert_eq!(got, want);
    let revs: Vec<i64> = evs.iter().map(WatchEvent::resource_version).collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    // The node watches were served by the cache; the slow one overflowed its 16-event queue and
    // (once it read again) went on with an etcd watch of its own.
    let metrics = api.metrics()?;
    assert_eq!(
        metric(&metrics, "skiff_apiserver_watches_direct"),
        Some(1.0),
        "{metrics}"
    );
    Ok(())
}

/// The API server compacts etcd's history on its interval, keeping one interval of it.
#[tokio::test]
async fn the_api_server_compacts_history_older_than_one_interval() -> Result<()> {
    if !etcd_available("periodic_compaction") {
        return Ok(());
    }
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            extra: vec!["--etcd-compaction-interval".into(), "1".into()],
            ..Default::default()
        },
    )?;
    let admin = api.client("admin").await?;
    let (_, early) = admin.list::<Pod>("", &ListParams::default()).await?;
    admin.create(&pod("a", "")?).await?;
    // Within three intervals the revision before the pod was compacted away.
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        for i in 0.. {
            // Writes keep the revision moving past the one compacted to.
            admin.create(&pod(&format!("b{i}"), "")?).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut w = admin
                .watch(Pod::INFO, "", &ListParams::default(), early, false)
                .await?;
            match tokio::time::timeout(Duration::from_millis(500), w.next()).await {
                Ok(Some(Err(e))) if e.is_gone() => return Ok::<_, anyhow::Error>(e),
                _ => continue,
            }
        }
        bail!("unreachable")
    })
    .await
    .context("history was not compacted within 10 s")??;
    assert!(
        err.to_string().contains("too old resource version"),
        "{err}"
    );
    // The objects themselves are of course still there.
    let pods = admin.list::<Pod>("", &ListParams::default()).await?.0;
    assert!(pods.iter().any(|p| p.metadata.name == "a"));
    Ok(())
}

/// The API server's resident memory (VmRSS, KiB).
fn server_rss_kib(api: &ApiServer) -> Result<u64> {
    let pid = api.pid().context("the API server is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// The client's HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Whether the peer has closed `s` (nothing to read but EOF or an error).
fn closed_by_peer(s: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return true,
            // The server's SETTINGS (or a GOAWAY): read on.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Waits (bounded) for a metric to reach `at_least`; returns its last value.
async fn wait_metric(api: &ApiServer, name: &str, at_least: f64, within: Duration) -> Result<f64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let v = metric(&api.metrics()?, name).unwrap_or(0.0);
        if v >= at_least || tokio::time::Instant::now() > deadline {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An attacker without a token opens far more connections than the cap and holds them (half
/// silent, half past the HTTP/2 preface): each new one takes the place of the oldest connection
/// that never authenticated, so real clients, old and new, keep being served while the idlers
/// are held, and the server's memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_cap_do_not_keep_authenticated_clients_out() -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    if !etcd_available("connection_cap") {
        return Ok(());
    }
    const CAP: usize = 50;
    const IDLERS: usize = 1_000;
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            extra: vec!["--max-connections".into(), CAP.to_string()],
            ..Default::default()
        },
    )?;
    let open = format!("skiff_apiserver_connections{{listener=\"{}\"}}", api.addr);
    let evicted = format!(
        "skiff_apiserver_connections_closed_total{{listener=\"{}\",reason=\"evicted\"}}",
        api.addr
    );
    // A client that authenticated before the flood.
    let early = api.client("admin").await?;
    early.list::<Pod>("default", &ListParams::default()).await?;
    let rss_before = server_rss_kib(&api)?;
    let flood = std::time::Instant::now();
    let mut idlers = Vec::with_capacity(IDLERS);
    for i in 0..IDLERS {
        let mut s = tokio::net::TcpStream::connect(api.addr).await?;
        if i % 2 == 1 {
            s.write_all(H2_PREFACE_AND_SETTINGS).await?;
        }
        idlers.push(s);
    }
    let evictions = wait_metric(
        &api,
        &evicted,
        (IDLERS - CAP) as f64,
        Duration::from_secs(10),
    )
    .await?;
    let flood_took = flood.elapsed();
    // Real clients while every idler is still held (the handshake timeout is the default 10 s,
    // far longer than this takes).
    let calls = std::time::Instant::now();
    for n in 0..5 {
        let fresh = tokio::time::timeout(Duration::from_secs(5), api.client("admin"))
            .await
            .with_context(|| format!("new client {n} did not connect within 5 s"))??;
        tokio::time::timeout(
            Duration::from_secs(5),
            fresh.list::<Pod>("default", &ListParams::default()),
        )
        .await
        .with_context(|| format!("new client {n}'s call took over 5 s"))??;
    }
    tokio::time::timeout(
        Duration::from_secs(5),
        early.list::<Pod>("default", &ListParams::default()),
    )
    .await
    .context("the early client's call took over 5 s")??;
    let calls_took = calls.elapsed();
    let rss_after = server_rss_kib(&api)?;
    let text = api.metrics()?;
    let open_now = metric(&text, &open).context("no open-connections metric")?;
    let still_open = idlers.iter().filter(|s| !closed_by_peer(s)).count();
    println!(
        "FIGURE connection cap {CAP}: {IDLERS} idle connections opened in {:.2} s, {evictions} evicted, {still_open} still open at the client, {open_now} open at the server; 6 authenticated calls took {:.0} ms; server VmRSS {} KiB before, {} KiB after (+{} KiB)",
        flood_took.as_secs_f64(),
        calls_took.as_secs_f64() * 1e3,
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before),
    );
    assert!(
        open_now <= CAP as f64,
        "{open_now} connections open, cap {CAP}"
    );
    assert!(
        still_open <= CAP,
        "{still_open} idlers still open, cap {CAP}"
    );
    assert!(evictions >= (IDLERS - CAP) as f64, "{evictions} evictions");
    // Without a cap, 20,000 idlers took the server from 94 to 362 MB (issue 14).
    assert!(
        rss_after.saturating_sub(rss_before) < 16 * 1024,
        "server memory grew from {rss_before} to {rss_after} KiB"
    );
    Ok(())
}

/// 3,000 watches on one connection (what once reset the whole connection): the first 1,000
/// (the default limit) open, every one over the limit gets RESOURCE_EXHAUSTED with a message
/// that says what to do, and the open ones keep delivering events on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_beyond_the_stream_limit_get_a_clear_error_and_the_others_keep_working()
-> Result<()> {
    if !etcd_available("stream_limit") {
        return Ok(());
    }
    const LIMIT: usize = 1_000;
    const WATCHES: usize = 3_000;
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(&etcd, &ApiOptions::default())?;
    let admin = api.client("admin").await?;
    let (_, rev) = admin.list::<Pod>("default", &ListParams::default()).await?;
    let started = std::time::Instant::now();
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..WATCHES {
        match admin
            .watch(Pod::INFO, "default", &ListParams::default(), rev, false)
            .await
        {
            Ok(w) => open.push(w),
            Err(e) => refused.push(e),
        }
    }
    let opening = started.elapsed();
    assert_eq!(open.len(), LIMIT, "watches opened");
    for e in &refused {
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(
            e.to_string()
                .contains("too many concurrent streams on this connection (limit 1000)"),
            "{e}"
        );
    }
    println!("a refused watch: {}", refused[0]);
    // Any other call on the full connection gets the same answer; another connection writes.
    let full = admin
        .list::<Pod>("default", &ListParams::default())
        .await
        .err()
        .context("a list on a connection with 1,000 open watches succeeded")?;
    assert_eq!(full.code(), Code::ResourceExhausted, "{full}");
    let writer = api.client("admin").await?;
    writer.create(&pod("after-the-limit", "")?).await?;
    let delivered = std::time::Instant::now();
    let mut readers = tokio::task::JoinSet::new();
    for mut w in open.drain(..) {
        readers.spawn(async move {
            let ev = tokio::time::timeout(Duration::from_secs(30), w.next()).await;
            (ev, w)
        });
    }
    let mut kept = Vec::new();
    while let Some(r) = readers.join_next().await {
        let (ev, w) = r?;
        let ev = ev
            .context("an open watch saw nothing within 30 s")?
            .context("an open watch ended")??;
        assert_eq!(describe(&ev), "ADDED after-the-limit", "{}", describe(&ev));
        kept.push(w);
    }
    let delivering = delivered.elapsed();
    // Closing watches frees their places.
    kept.truncate(LIMIT - 10);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 0..10 {
        let w = admin
            .watch(Pod::INFO, "default", &ListParams::default(), rev, false)
            .await
            .with_context(|| format!("watch {n} after ten were closed"))?;
        kept.push(w);
    }
    let text = api.metrics()?;
    let refused_metric = metric(
        &text,
        &format!(
            "skiff_apiserver_streams_refused_total{{listener=\"{}\"}}",
            api.addr
        ),
    );
    println!(
        "FIGURE stream limit {LIMIT}: {WATCHES} watches on one connection opened in {:.2} s, {} refused (metric {refused_metric:?}); one event reached all {LIMIT} open watches in {:.0} ms",
        opening.as_secs_f64(),
        refused.len(),
        delivering.as_secs_f64() * 1e3,
    );
    assert_eq!(refused.len(), WATCHES - LIMIT);
    // The extra watches and the list on the full connection.
    assert_eq!(refused_metric, Some((WATCHES - LIMIT + 1) as f64));
    Ok(())
}

/// One HTTP/2 frame as read off the wire.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame(s: &mut tokio::net::TcpStream) -> Result<Frame> {
    use tokio::io::AsyncReadExt as _;
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block of literal fields without indexing or Huffman coding (RFC 7541, 6.2.2).
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        assert!(
            name.len() < 127 && value.len() < 127,
            "lengths here fit HPACK's 7-bit prefix"
        );
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// What really happens when a client ignores SETTINGS_MAX_CONCURRENT_STREAMS: with a limit of
/// 20 the server advertises 40; streams 21..40 get a gRPC RESOURCE_EXHAUSTED answer
/// (trailers-only HEADERS), streams over 40 a REFUSED_STREAM reset of that stream alone, and
/// the connection stays up (no GOAWAY; it still answers PING and new calls).
#[tokio::test]
async fn a_raw_http2_client_ignoring_the_stream_limit_loses_streams_not_its_connection()
-> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    if !etcd_available("raw_stream_limit") {
        return Ok(());
    }
    const LIMIT: u32 = 20;
    const STREAMS: u32 = 50;
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            extra: vec!["--max-streams-per-connection".into(), LIMIT.to_string()],
            ..Default::default()
        },
    )?;
    let mut s = tokio::net::TcpStream::connect(api.addr).await?;
    s.write_all(H2_PREFACE_AND_SETTINGS).await?;
    // The server's SETTINGS: its advertised limit; acknowledge them so they apply.
    let settings = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut s)).await??;
    assert_eq!(settings.kind, 0x4, "the server's first frame is SETTINGS");
    let advertised = settings
        .payload
        .chunks(6)
        .find(|p| p[..2] == [0, 3])
        .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
    assert_eq!(advertised, Some(2 * LIMIT));
    s.write_all(&frame(0x4, 0x1, 0, &[])).await?;
    let auth = format!("Bearer {}", api.token("admin"));
    let headers = header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/skiff.v1.Api/Watch"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("authorization", &auth),
    ]);
    // Headers only: the requests' bodies never come, so the admitted streams stay open.
    let mut burst = Vec::new();
    for i in 0..STREAMS {
        burst.extend(frame(0x1, 0x4, 2 * i + 1, &headers));
    }
    burst.extend(frame(0x6, 0, 0, b"12345678"));
    s.write_all(&burst).await?;
    let (mut answered, mut refused, mut goaway, mut pong) = (0, 0, 0, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pong || answered + refused < STREAMS - LIMIT {
        let f = tokio::time::timeout_at(deadline, read_frame(&mut s))
            .await
            .context("the server's answers did not all come within 10 s")??;
        match f.kind {
            // A trailers-only response ends the stream from the server's side.
            0x1 if f.flags & 0x1 != 0 => answered += 1,
            0x3 if f.payload == 7u32.to_be_bytes() => refused += 1,
            0x7 => goaway += 1,
            0x6 if f.flags & 0x1 != 0 => pong = true,
            _ => {}
        }
    }
    // One more call on the same connection still gets the clear answer.
    s.write_all(&frame(0x1, 0x4, 2 * STREAMS + 1, &headers))
        .await?;
    let mut last_answered = false;
    while !last_answered {
        let f = tokio::time::timeout_at(deadline, read_frame(&mut s))
            .await
            .context("no answer to the call after the burst")??;
        if f.kind == 0x7 {
            goaway += 1;
            break;
        }
        last_answered = f.kind == 0x1 && f.stream == 2 * STREAMS + 1;
    }
    println!(
        "FIGURE raw HTTP/2 client, limit {LIMIT} (advertised {}): {STREAMS} streams opened at once: {answered} answered RESOURCE_EXHAUSTED, {refused} reset REFUSED_STREAM, {goaway} GOAWAY; PING answered {pong}; a later call answered {last_answered}",
        2 * LIMIT
    );
    assert_eq!(goaway, 0);
    assert_eq!(answered + refused, STREAMS - LIMIT);
    assert!(answered >= LIMIT, "{answered} answered with a gRPC status");
    assert!(last_answered);
    Ok(())
}

/// With etcd down, what reaches a client says that etcd is unavailable, never where etcd is
/// (its loopback address and port) or the transport's own text; the server's log has that.
#[tokio::test]
async fn an_etcd_outage_reaches_clients_without_etcds_address() -> Result<()> {
    if !etcd_available("etcd_outage_text") {
        return Ok(());
    }
    let mut etcd = Etcd::start(1)?;
    let port = etcd.members[0]
        .client_url
        .rsplit(':')
        .next()
        .context("etcd's URL has no port")?
        .to_owned();
    let api = ApiServer::start(&etcd, &ApiOptions::default())?;
    let admin = api.client("admin").await?;
    admin.list::<Pod>("default", &ListParams::default()).await?;
    etcd.kill(0);
    let mut messages = Vec::new();
    let limit = Duration::from_secs(60);
    let get = tokio::time::timeout(limit, admin.get::<Pod>("default", "nothing")).await?;
    messages.push(("get", get.err().context("a get succeeded with etcd down")?));
    let list =
        tokio::time::timeout(limit, admin.list::<Pod>("default", &ListParams::default())).await?;
    messages.push((
        "list",
        list.err().context("a list succeeded with etcd down")?,
    ));
    let create = tokio::time::timeout(limit, admin.create(&pod("during-outage", "")?)).await?;
    messages.push((
        "create",
        create.err().context("a create succeeded with etcd down")?,
    ));
    for (call, e) in &messages {
        let text = format!("{e} {e:?}");
        println!("FIGURE etcd down: {call} -> {:?}: {e}", e.code());
        assert!(
            !text.contains("127.0.0.1") && !text.contains(&port) && !text.contains("tcp connect"),
            "{call}'s error shows etcd's address: {text}"
        );
        assert!(
            matches!(e.code(), Code::Unavailable | Code::Internal),
            "{call}: {e}"
        );
    }
    assert!(
        messages
            .iter()
            .any(|(_, e)| e.to_string().contains("etcd is unavailable; try again")),
        "no call said that etcd is unavailable"
    );
    // The detail went to the server's log instead.
    assert!(api.log().contains("refused"), "{}", api.log());
    Ok(())
}

/// `GET path` on the API server's status listener: (status, body); `None` when nothing answers.
fn status_get(api: &ApiServer, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(api.metrics_addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// Polls `path` until its status is `code`, for at most `within`; returns the body and how long
/// it took.
async fn wait_status(
    api: &ApiServer,
    path: &str,
    code: u16,
    within: Duration,
) -> Result<(String, Duration)> {
    let start = std::time::Instant::now();
    loop {
        let got = status_get(api, path);
        if let Some((c, body)) = &got
            && *c == code
        {
            return Ok((body.clone(), start.elapsed()));
        }
        if start.elapsed() > within {
            bail!("{path} did not answer {code} within {within:?}: {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/readyz` follows etcd within seconds, both ways, without timing its reads into the etcd
/// latency histogram, and fails on the shutdown signal while open calls get their grace;
/// `/livez` and `/healthz` stay ok throughout.
#[tokio::test]
async fn readyz_fails_within_seconds_of_losing_etcd_recovers_with_it_and_fails_on_shutdown()
-> Result<()> {
    if !etcd_available("readyz_follows_etcd") {
        return Ok(());
    }
    let mut etcd = Etcd::start(1)?;
    let mut api = ApiServer::start(&etcd, &ApiOptions::default())?;
    let (body, _) = wait_status(&api, "/readyz", 200, Duration::from_secs(10)).await?;
    assert_eq!(body, "ok");
    let (code, verbose) = status_get(&api, "/readyz?verbose").context("no /readyz")?;
    assert_eq!(
        (code, verbose.as_str()),
        (
            200,
            "[+]ping ok\n[+]etcd ok\n[+]shutdown ok\nreadyz check passed\n"
        )
    );
    // Probes cost no etcd request anyone would see as API latency (the server's own health
    // reads, when idle, are not timed either).
    let etcd_calls = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("skiff_apiserver_etcd_request_duration_seconds_count"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let before = etcd_calls(&api.metrics()?);
    for _ in 0..20 {
        assert_eq!(status_get(&api, "/readyz").context("no /readyz")?.0, 200);
    }
    assert_eq!(etcd_calls(&api.metrics()?), before);

    etcd.kill(0);
    let (body, took) = wait_status(&api, "/readyz", 500, Duration::from_secs(10)).await?;
    println!("FIGURE readyz failed {took:?} after etcd was killed");
    assert!(
        body.contains("[-]etcd failed: reason withheld\n")
            && body.contains("[+]shutdown ok\n")
            && body.ends_with("readyz check failed\n"),
        "{body}"
    );
    let (code, why) = status_get(&api, "/readyz/etcd").context("no /readyz/etcd")?;
    assert_eq!(code, 500, "{why}");
    assert!(why.starts_with("internal server error: "), "{why}");
    assert_eq!(
        status_get(&api, "/livez").context("no /livez")?,
        (200, "ok".to_owned())
    );
    assert_eq!(
        status_get(&api, "/healthz").context("no /healthz")?,
        (200, "ok".to_owned())
    );
    assert_eq!(
        status_get(&api, "/readyz?exclude=etcd").context("no /readyz")?,
        (200, "ok".to_owned())
    );

    etcd.restart(0)?;
    let (_, took) = wait_status(&api, "/readyz", 200, Duration::from_secs(20)).await?;
    println!("FIGURE readyz passed {took:?} after etcd was healthy again");

    // An open watch keeps the server in its shutdown grace for a while after SIGTERM.
    let admin = api.client("admin").await?;
    let _watch = admin
        .watch(Pod::INFO, "default", &ListParams::default(), 0, false)
        .await?;
    let pid = api.pid().context("the API server is not running")?;
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(term.success());
    let (body, took) = wait_status(&api, "/readyz", 500, Duration::from_secs(3)).await?;
    println!("FIGURE readyz failed {took:?} after SIGTERM");
    assert!(
        body.contains("[+]etcd ok\n") && body.contains("[-]shutdown failed: reason withheld\n"),
        "{body}"
    );
    assert_eq!(
        status_get(&api, "/livez").map(|(c, _)| c),
        Some(200),
        "alive during the grace"
    );
    api.kill();
    Ok(())
}

/// A TCP connection that never finishes its TLS handshake (nothing sent, or half a
/// ClientHello) is closed after --handshake-timeout; a finished connection with no call open is
/// closed after --idle-timeout and its client reconnects; TLS is on TCP only, and the Unix socket
/// is plain and open to its owner alone (mode 0600).
#[tokio::test]
async fn a_connection_that_never_finishes_its_handshake_is_closed_after_the_timeout() -> Result<()>
{
    use std::os::unix::fs::PermissionsExt as _;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if !etcd_available("handshake_timeout") {
        return Ok(());
    }
    const HANDSHAKE: f64 = 1.0;
    const IDLE: f64 = 2.0;
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            tls: true,
            extra: vec![
                "--handshake-timeout".into(),
                HANDSHAKE.to_string(),
                "--idle-timeout".into(),
                IDLE.to_string(),
            ],
            ..Default::default()
        },
    )?;
    // Silent, and stuck halfway through a ClientHello (a TLS record header promising more).
    let mut silent = tokio::net::TcpStream::connect(api.addr).await?;
    let mut half = tokio::net::TcpStream::connect(api.addr).await?;
    half.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .await?;
    let opened = std::time::Instant::now();
    let mut closed_after = Vec::new();
    for s in [&mut silent, &mut half] {
        let mut buf = [0u8; 512];
        // EOF or a reset: either way the server let go.
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .context("the server kept a connection without a handshake for 10 s")?;
        assert!(matches!(r, Ok(0) | Err(_)), "the server sent {r:?}");
        closed_after.push(opened.elapsed());
    }
    let closed_metric = metric(
        &api.metrics()?,
        &format!(
            "skiff_apiserver_connections_closed_total{{listener=\"{}\",reason=\"handshake_timeout\"}}",
            api.addr
        ),
    );
    // TLS on TCP works, and the Unix socket speaks plain HTTP/2.
    let admin = api.client("admin").await?;
    assert!(api.url().starts_with("https://"), "{}", api.url());
    admin.list::<Pod>("default", &ListParams::default()).await?;
    let socket = api.unix_url();
    let socket = socket.trim_start_matches("unix://");
    let mode = std::fs::metadata(socket)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the Unix socket's mode is {mode:o}");
    let over_unix = Client::connect(&skiff_api::client::ClientConfig::new(
        api.unix_url(),
        api.token("admin"),
    ))
    .await?;
    over_unix
        .list::<Pod>("default", &ListParams::default())
        .await?;
    // Idle: no call open for IDLE seconds closes the connection; the client reconnects.
    let idle = format!(
        "skiff_apiserver_connections_closed_total{{listener=\"{}\",reason=\"idle\"}}",
        api.addr
    );
    let idle_before = metric(&api.metrics()?, &idle).unwrap_or(0.0);
    let idle_closed = wait_metric(&api, &idle, idle_before + 1.0, Duration::from_secs(10)).await?;
    // A call that races the server's GOAWAY on the idle connection may fail once (canceled);
    // calling again opens a new connection.
    let mut reconnected = admin.list::<Pod>("default", &ListParams::default()).await;
    for _ in 0..3 {
        if reconnected.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        reconnected = admin.list::<Pod>("default", &ListParams::default()).await;
    }
    reconnected.context("the client did not reconnect after its idle connection was closed")?;
    println!(
        "FIGURE handshake timeout {HANDSHAKE} s: silent connection closed after {:.2} s, half a ClientHello after {:.2} s (metric {closed_metric:?}); idle timeout {IDLE} s: {} idle connections closed",
        closed_after[0].as_secs_f64(),
        closed_after[1].as_secs_f64(),
        idle_closed - idle_before,
    );
    for t in &closed_after {
        assert!(
            t.as_secs_f64() >= HANDSHAKE * 0.9 && t.as_secs_f64() < HANDSHAKE + 2.0,
            "closed after {t:?}"
        );
    }
    assert!(
        idle_closed > idle_before,
        "no idle connection was closed: {}",
        api.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_held_past_the_idle_timeout_keeps_its_connection_and_costs_no_cpu() -> Result<()> {
    if !etcd_available("idle_watch") {
        return Ok(());
    }
    const IDLE: f64 = 1.0;
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            extra: vec!["--idle-timeout".into(), IDLE.to_string()],
            ..Default::default()
        },
    )?;
    let admin = api.client("admin").await?;
    let (_, from) = admin.list::<Pod>("default", &ListParams::default()).await?;
    let mut watch = admin
        .watch(Pod::INFO, "default", &ListParams::default(), from, false)
        .await?;
    // Past the idle timeout with the watch open: the connection is not idle, and nothing may
    // wake its driver over and over meanwhile.
    tokio::time::sleep(Duration::from_secs_f64(IDLE * 1.5)).await;
    let before = api.cpu_time()?;
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let used = api.cpu_time()? - before;
    println!(
        "FIGURE API server CPU over {:.0} s with one watch held past the idle timeout: {} ms",
        window.as_secs_f64(),
        used.as_millis()
    );
    assert!(
        used < Duration::from_millis(500),
        "the API server used {used:?} of CPU in {window:?} with one idle-timed-out watch open"
    );
    let pod: Pod = one(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: default}\nspec:\n  containers: [{name: c, image: busybox}]\n",
    )?;
    admin.create(&pod).await?;
    let ev = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .context("the watch delivered nothing within 5 s")?
        .context("the watch ended")??;
    assert!(
        matches!(&ev, WatchEvent::Added(o) if o.meta().name == "late"),
        "{ev:?}"
    );
    Ok(())
}
