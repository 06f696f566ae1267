//! The node agent against someone who can write to etcd: pods written straight into etcd with
//! the API server's credentials, whose identifiers would make host paths outside the agent's
//! root, are refused with a clear status and touch nothing on the host; and a container that
//! belongs to no pod of the node (its key deleted straight from etcd, or made behind the
//! agent's back in its containerd namespace) is stopped and removed.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use skiff_agent::{
    node::pods::{LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID},
    runtime::ContainerSpec,
};
use skiff_api::{Kind as _, kinds::Pod};
use skiff_testbed::{
    agent::Agent,
    fabric::NodeNs,
    nodes::{Nodes, NodesOptions},
    unique_prefix,
    wait::eventually,
};
use skiff_tests::nodes::NodesRuntime as _;

/// The test's cluster ([`Nodes`]: one node, no service proxy), with this file's helpers on top.
struct Cluster(Nodes);

impl std::ops::Deref for Cluster {
    type Target = Nodes;
    fn deref(&self) -> &Nodes {
        &self.0
    }
}

async fn cluster(test: &str) -> Result<Option<Cluster>> {
    let opts = NodesOptions {
        nodes: 1,
        controllers: false,
        agent_flags: vec!["--no-service-proxy".into()],
        tag: 'h',
    };
    Ok(Nodes::start(test, &opts).await?.map(Cluster))
}

impl Cluster {
    /// The one agent.
    fn agent(&self) -> &Agent {
        &self.agents[0]
    }

    /// The one node's namespace.
    fn node(&self) -> &NodeNs {
        &self.nodes[0]
    }

    /// Writes `pod` straight into etcd, as the API server stores it, bypassing validation.
    fn put(&self, pod: &Pod) -> Result<()> {
        let mut o = pod.clone().into_object();
        o.apply_defaults();
        let json = String::from_utf8(o.to_json())?;
        let key = format!(
            "/registry/pods/{}/{}",
            pod.metadata.namespace, pod.metadata.name
        );
        self.etcd.ctl(&["put", &key, &json])?;
        Ok(())
    }

    fn delete_key(&self, namespace: &str, name: &str) -> Result<()> {
        self.etcd
            .ctl(&["del", &format!("/registry/pods/{namespace}/{name}")])?;
        Ok(())
    }

    /// Waits until pod `name` satisfies `f`, and returns it.
    async fn wait_pod(&self, name: &str, what: &str, f: impl Fn(&Pod) -> bool) -> Result<Pod> {
        let r = eventually(
            Duration::from_secs(30),
            &format!("pod {name}: {what}"),
            || async {
                let p: Pod = self.admin.get("default", name).await?;
                Ok(f(&p).then_some(p))
            },
        )
        .await;
        r.map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", self.agent().log()))
    }

    /// The containers of pod `uid` in the agent's containerd namespace.
    async fn containers_of(&self, uid: &str) -> Result<Vec<String>> {
        Ok(self
            .runtime(0)
            .await?
            .list()
            .await?
            .into_iter()
            .filter(|c| c.labels.get(LABEL_POD_UID).map(String::as_str) == Some(uid))
            .map(|c| c.id)
            .collect())
    }
}

/// A version-4-shaped uid, distinct per call.
fn uid(n: u32) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), n)
}

/// A pod bound to node-0 whose one container would run for a long time.
fn pod(name: &str, uid: &str, container: &str) -> Result<Pod> {
    let mut p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {
            "nodeName": "node-0",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": container,
                "image": "busybox:1.35",
                "command": ["sh", "-c", "echo pwned; sleep 3600"],
            }],
        }
    }))?;
    p.metadata.creation_timestamp = Some(skiff_api::meta::time::now());
    Ok(p)
}

/// Every entry under `dir`, recursively.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.path());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(tree(&e.path()));
            }
        }
    }
    out
}

/// Removes `path` (a test's own) on drop.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn pods_written_past_the_api_with_path_escaping_names_are_refused_and_touch_nothing()
-> Result<()> {
    let Some(c) = cluster("pods_written_past_the_api_with_path_escaping_names_are_refused").await?
    else {
        return Ok(());
    };
    let tag = unique_prefix("pwned");
    // From <root>/state/logs/<ns>_<pod>_<uid>/<container>/ any ten `..` reach `/`.
    let up = "../".repeat(10);
    // 1. A container name that would put its log file at /tmp/<tag>/0.log.
    let target = std::env::temp_dir().join(&tag);
    let _target_cleanup = Cleanup(target.clone());
    let by_name_uid = uid(1);
    let by_name = pod(
        "by-container-name",
        &by_name_uid,
        &format!(
            "{up}{}",
            target.display().to_string().trim_start_matches('/')
        ),
    )?;
    // 2. A uid that would make the pod's log directory a root-owned directory outside the
    //    root, which the agent would remove with the pod. The directory the `..` walk starts
    //    from exists, so the path would resolve.
    let sentinel = std::env::temp_dir().join(format!("{tag}-sentinel"));
    let _sentinel_cleanup = Cleanup(sentinel.clone());
    fs::create_dir_all(sentinel.join("keep"))?;
    fs::write(sentinel.join("keep/file"), "still here")?;
    let hostile_uid = format!(
        "a/{up}{}",
        sentinel.display().to_string().trim_start_matches('/')
    );
    let logs = c.agent().logs_dir();
    fs::create_dir_all(logs.join("default_by-uid_a"))?;
    let by_uid = pod("by-uid", &hostile_uid, "app")?;
    let root_before: Vec<PathBuf> = tree(&c.agent().root);
    c.put(&by_name)?;
    c.put(&by_uid)?;

    for (name, field) in [
        ("by-container-name", "spec.containers[0].name"),
        ("by-uid", "metadata.uid"),
    ] {
        let p = c
            .wait_pod(name, "refused with phase Failed, reason InvalidPod", |p| {
                p.status.phase == "Failed" && p.status.reason == "InvalidPod"
            })
            .await?;
        ensure!(
            p.status
                .message
                .contains(&format!("{field}: Invalid value: "))
                && p.status.message.contains("node-0"),
            "the message names the field and the rule: {:?}",
            p.status.message
        );
        ensure!(p.status.pod_ip.is_empty() && p.status.container_statuses.is_empty());
    }
    // Long enough for a retry loop to show (it wrote five times a second), and for a sweep.
    tokio::time::sleep(Duration::from_secs(17)).await;
    let log = c.agent().log();
    let writes = log.matches("wrote the refused pod's Failed status").count();
    let failures = log.matches("writing the pod status").count();
    ensure!(
        writes == 2 && failures == 0,
        "one status write per refused pod, none failed; saw {writes} writes and {failures} failures:\n{log}"
    );
    ensure!(
        c.runtime(0).await?.list().await?.is_empty(),
        "no container runs for a refused pod"
    );
    ensure!(!target.exists(), "{} was created", target.display());
    ensure!(
        fs::read_to_string(sentinel.join("keep/file"))? == "still here",
        "the sentinel outside the root was touched"
    );
    ensure!(
        fs::read_dir(c.agent().netns_dir())?.next().is_none(),
        "no network namespace is made for a refused pod"
    );
    let ipam = skiff_agent::ipam::Ipam::open(
        &c.agent().ipam_dir(),
        skiff_testbed::fabric::node_pod_cidr(0).parse()?,
    )?;
    ensure!(
        ipam.allocations()?.is_empty(),
        "no address is given to a refused pod"
    );
    let cgroups = Path::new("/sys/fs/cgroup")
        .join(c.containerd.cgroup_parent().trim_start_matches('/'))
        .join("node-0");
    ensure!(
        fs::read_dir(&cgroups).map_or(true, |mut d| d.next().is_none()),
        "no pod cgroup under {}",
        cgroups.display()
    );
    let links = skiff_testbed::netns::run_in_netns(c.node().ns.path(), "ip", &["-o", "link"])?;
    ensure!(
        !links.contains(&skiff_agent::podnet::PodNet::host_veth_name(&by_name_uid)),
        "no veth for a refused pod"
    );

    // Gone straight from etcd: nothing to stop, and nothing outside the root removed.
    c.delete_key("default", "by-container-name")?;
    c.delete_key("default", "by-uid")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        sentinel.join("keep/file").exists(),
        "the sentinel outside the root was removed"
    );
    ensure!(!target.exists(), "{} was created", target.display());
    // Inside the root only what was there before (state the agent made for itself) is left.
    let new: Vec<PathBuf> = tree(&c.agent().root)
        .into_iter()
        .filter(|p| !root_before.contains(p))
        .filter(|p| !p.starts_with(c.agent().log_path()))
        .collect();
    ensure!(new.is_empty(), "the refused pods made {new:?}");
    ensure!(
        !log_mentions_pod_files(&c.agent().log()),
        "the agent made files for a refused pod:\n{}",
        c.agent().log()
    );
    Ok(())
}

fn log_mentions_pod_files(log: &str) -> bool {
    log.contains("started a container") || log.contains("creating log")
}

#[tokio::test]
async fn containers_of_no_known_pod_are_stopped_and_removed_within_bounded_time() -> Result<()> {
    let Some(c) = cluster("containers_of_no_known_pod_are_stopped_and_removed").await? else {
        return Ok(());
    };
    // A pod made through the API, then deleted straight from etcd (no graceful deletion).
    let mut p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "vanishes", "namespace": "default"},
        "spec": {
            "nodeName": "node-0",
            "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "app", "image": "busybox:1.35", "command": ["sleep", "3600"]}],
        }
    }))?;
    p = c.admin.create(&p).await?;
    let uid = p.metadata.uid.clone();
    c.wait_pod("vanishes", "Running", |p| p.status.phase == "Running")
        .await?;
    ensure!(c.containers_of(&uid).await?.len() == 1);
    c.delete_key("default", "vanishes")?;
    eventually(
        Duration::from_secs(20),
        "the container of a pod deleted from etcd removed",
        || async { Ok(c.containers_of(&uid).await?.is_empty().then_some(())) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", c.agent().log()))?;
    eventually(
        Duration::from_secs(10),
        "its network namespace and logs removed",
        || async {
            let netns = c.agent().netns_dir().join(&uid).exists();
            let logs = tree(&c.agent().logs_dir())
                .iter()
                .any(|p| p.to_string_lossy().contains(&uid));
            Ok((!netns && !logs).then_some(()))
        },
    )
    .await?;

    // A container made behind the agent's back in its containerd namespace, labelled for a
    // pod that does not exist: the periodic sweep stops and removes it.
    let rt = c.runtime(0).await?;
    let image = rt
        .image("busybox")
        .await?
        .context("the agent imported busybox")?;
    let ghost = uid_like(7);
    let scratch = std::env::temp_dir().join(unique_prefix("ghost"));
    let _scratch = Cleanup(scratch.clone());
    let spec = ContainerSpec {
        id: format!("{ghost}-0-0"),
        image: image.clone(),
        labels: BTreeMap::from([
            (LABEL_POD_UID.to_owned(), ghost.clone()),
            (LABEL_POD_NAMESPACE.to_owned(), "default".to_owned()),
            (LABEL_POD_NAME.to_owned(), "ghost".to_owned()),
        ]),
        argv: vec!["sleep".into(), "3600".into()],
        env: image.env.clone(),
        working_dir: String::new(),
        netns: c.node().ns.path().to_path_buf(),
        hostname: "ghost".into(),
        log_path: scratch.join("0.log"),
        memory_limit: None,
        cpu_limit_millis: None,
        cpu_request_millis: None,
        cgroup_parent: format!("{}/ghost", c.containerd.cgroup_parent()),
        mounts: Vec::new(),
        security: Default::default(),
    };
    rt.create(&spec).await?;
    rt.start(&spec.id).await?;
    ensure!(c.containers_of(&ghost).await?.len() == 1);
    // The sweep runs every 15 s.
    eventually(
        Duration::from_secs(40),
        "a container of no known pod removed",
        || async { Ok(c.containers_of(&ghost).await?.is_empty().then_some(())) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", c.agent().log()))?;
    ensure!(
        scratch.join("0.log").exists(),
        "nothing outside the agent's root is removed for it (only the container goes)"
    );
    Ok(())
}

fn uid_like(n: u32) -> String {
    uid(1000 + n)
}
