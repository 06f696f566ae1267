//! Environment sources, volumes and securityContext end to end: real etcd, a real API server
//! (with its node authorizer), a real containerd running busybox with runc, and
//! `skiff-agent node` in its node namespace. Each test creates the objects a pod references
//! through the API, and reads what the container saw from its log.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use skiff_api::{
    Kind as _,
    client::DeleteParams,
    kinds::{ConfigMap, ContainerStatus, Pod, Secret, Service},
};
use skiff_testbed::{
    nodes::{Nodes, NodesOptions},
    wait::eventually,
};

/// The test's cluster, one node, with this file's helpers on top.
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

async fn cluster(test: &str, extra: &[&str]) -> Result<Option<Cluster>> {
    let opts = NodesOptions {
        nodes: 1,
        controllers: false,
        agent_flags: extra.iter().map(|s| s.to_string()).collect(),
        tag: 'v',
    };
    Ok(Nodes::start(test, &opts).await?.map(Cluster))
}

impl Cluster {
    async fn create_json<K: skiff_api::Kind>(&self, v: serde_json::Value) -> Result<K> {
        let o: K = serde_json::from_value(v).context("a test object")?;
        Ok(self.admin.create(&o).await?)
    }

    async fn get(&self, name: &str) -> Result<Pod> {
        Ok(self.admin.get("default", name).await?)
    }

    /// Waits until the log of attempt `attempt` of `container` of `p` has `want`; the log.
    async fn wait_log(&self, p: &Pod, container: &str, attempt: u32, want: &str) -> Result<String> {
        let r = eventually(
            Duration::from_secs(20),
            &format!("{want:?} in the log of {container}"),
            || async {
                let l = self.agents[0].container_log(p, container, attempt);
                Ok(l.contains(want).then_some(l))
            },
        )
        .await;
        match r {
            Ok(l) => Ok(l),
            Err(e) => bail!(
                "{e}\nlog: {}\nagent log:\n{}",
                self.agents[0].container_log(p, container, attempt),
                self.agents[0].log()
            ),
        }
    }

    async fn delete_and_wait(&self, name: &str) -> Result<()> {
        self.admin
            .delete(Pod::INFO, "default", name, DeleteParams::default())
            .await?;
        self.wait_pod_gone(name, Duration::from_secs(20)).await
    }
}

fn container<'a>(p: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    p.status.container_statuses.iter().find(|c| c.name == name)
}

fn waiting(p: &Pod, name: &str) -> Option<(String, String)> {
    let w = container(p, name)?.state.waiting.as_ref()?;
    Some((w.reason.clone(), w.message.clone()))
}

fn running(p: &Pod, name: &str) -> bool {
    container(p, name).is_some_and(|s| s.state.running.is_some())
}

/// A pod on node-0 with these containers, each using the busybox image imported on the node
/// (`imagePullPolicy: Never`: no registry is reachable here).
fn pod(name: &str, mut containers: serde_json::Value) -> serde_json::Value {
    for c in containers.as_array_mut().into_iter().flatten() {
        c["imagePullPolicy"] = "Never".into();
    }
    serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "nodeName": "node-0",
            "terminationGracePeriodSeconds": 1,
            "containers": containers,
        }
    })
}

#[tokio::test]
async fn environment_sources_wait_for_a_missing_config_map_and_start_once_it_is_created()
-> Result<()> {
    let Some(c) = cluster("env_sources", &[]).await? else {
        return Ok(());
    };
    let svc: Service = c
        .create_json(serde_json::json!({
            "metadata": {"name": "redis-main", "namespace": "default"},
            "spec": {"ports": [{"name": "redis", "port": 6379}], "selector": {"app": "redis"}}
        }))
        .await?;
    let started = Instant::now();
    let created: Pod = c
        .create_json(pod(
            "env",
            serde_json::json!([{
                "name": "app",
                "image": "busybox",
                "command": ["sh", "-c", "env | sort; echo CMD=$(GREETING)/$(POD); exec sleep 1000"],
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "APP_LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "MEM_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "COMBINED", "value": "$(GREETING)-$(POD_NS)"}
                ],
                "envFrom": [{"secretRef": {"name": "creds"}, "prefix": "S_"}],
                "resources": {"limits": {"memory": "64Mi"}}
            }]),
        ))
        .await?;
    let p = c
        .wait_pod(
            "env",
            Duration::from_secs(30),
            "CreateContainerConfigError",
            |p| waiting(p, "app").is_some_and(|(r, _)| r == "CreateContainerConfigError"),
        )
        .await?;
    // envFrom is read first (as kubelet does), so the Secret it names is missing first.
    assert_eq!(
        waiting(&p, "app").map(|w| w.1).as_deref(),
        Some("secret \"creds\" not found"),
        "kubelet's message for a missing Secret"
    );
    let _: Secret = c
        .create_json(serde_json::json!({
            "metadata": {"name": "creds", "namespace": "default"},
            "stringData": {"password": "s3cret", "user": "admin"}
        }))
        .await?;
    c.wait_pod(
        "env",
        Duration::from_secs(30),
        "waiting for the ConfigMap",
        |p| waiting(p, "app").is_some_and(|(_, m)| m == "configmap \"cfg\" not found"),
    )
    .await?;
    let _: ConfigMap = c
        .create_json(serde_json::json!({
            "metadata": {"name": "cfg", "namespace": "default"},
            "data": {"greeting": "hello"}
        }))
        .await?;
    let p = c
        .wait_pod("env", Duration::from_secs(30), "Running", |p| {
            running(p, "app")
        })
        .await?;
    eprintln!("env pod running {:?} after create", started.elapsed());
    // The same pod: it started once its objects were there, not recreated.
    assert_eq!(p.metadata.uid, created.metadata.uid);
    assert_eq!(container(&p, "app").map(|s| s.restart_count), Some(0));
    let log = c.wait_log(&p, "app", 0, "CMD=").await?;
    let ip = &p.status.pod_ip;
    for want in [
        "GREETING=hello".to_owned(),
        "PASSWORD=s3cret".to_owned(),
        "POD=env".to_owned(),
        "POD_NS=default".to_owned(),
        format!("POD_UID={}", p.metadata.uid),
        format!("POD_IP={ip}"),
        "NODE=node-0".to_owned(),
        "APP_LABEL=env".to_owned(),
        "MEM_LIMIT=64".to_owned(),
        "COMBINED=hello-default".to_owned(),
        "S_password=s3cret".to_owned(),
        "S_user=admin".to_owned(),
        format!("REDIS_MAIN_SERVICE_HOST={}", svc.spec.cluster_ip),
        "REDIS_MAIN_SERVICE_PORT=6379".to_owned(),
        format!("REDIS_MAIN_PORT=tcp://{}:6379", svc.spec.cluster_ip),
        "CMD=hello/env".to_owned(),
    ] {
        assert!(
            log.lines().any(|l| l == want),
            "{want} not in the container's environment:\n{log}"
        );
    }
    c.delete_and_wait("env").await?;
    Ok(())
}

/// Mount points on the host under `dir` or naming `uid`.
fn host_mounts(dir: &std::path::Path, uid: &str) -> Result<Vec<String>> {
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    let dir = dir.display().to_string();
    Ok(mounts
        .lines()
        .filter(|l| l.contains(uid) || l.contains(&dir))
        .map(str::to_owned)
        .collect())
}

#[tokio::test]
async fn volumes_of_every_kind_mount_refresh_survive_restarts_and_leave_nothing_behind()
-> Result<()> {
    let Some(mut c) = cluster("volumes", &["--volume-resync", "2"]).await? else {
        return Ok(());
    };
    let host_dir = std::env::temp_dir().join(format!("skiff-vol-host-{}", std::process::id()));
    let _ = fs::remove_dir_all(&host_dir);
    let script = r#"
echo run >> /scratch/runs
echo RUNS=$(wc -l < /scratch/runs)
echo NAME=$(cat /info/name) PW=$(cat /creds/password) ALL=$(cat /all/app.conf)/$(cat /all/password)/$(cat /all/ns)
grep ' /mem ' /proc/mounts | sed 's/^/MEM=/'
touch /etc/app/x 2>/dev/null && echo CFG=rw || echo CFG=ro
touch /scratch/x 2>/dev/null && echo SCRATCH=rw || echo SCRATCH=ro
echo from-the-pod > /host/written
[ "$(wc -l < /scratch/runs)" -ge 2 ] || exit 1
while true; do echo CONF=$(cat /etc/app/app.conf) SUB=$(cat /etc/app.conf); sleep 1; done
"#;
    let mut spec = pod(
        "vol",
        serde_json::json!([{
            "name": "app",
            "image": "busybox",
            "command": ["sh", "-c", script],
            "volumeMounts": [
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "mem", "mountPath": "/mem"},
                {"name": "cfg", "mountPath": "/etc/app"},
                {"name": "cfg", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
                {"name": "creds", "mountPath": "/creds"},
                {"name": "info", "mountPath": "/info"},
                {"name": "all", "mountPath": "/all"},
                {"name": "host", "mountPath": "/host"}
            ]
        }]),
    );
    spec["spec"]["volumes"] = serde_json::json!([
        {"name": "scratch", "emptyDir": {}},
        {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
        {"name": "cfg", "configMap": {"name": "web-cfg"}},
        {"name": "creds", "secret": {"secretName": "web-creds", "defaultMode": 256}},
        {"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
        {"name": "all", "projected": {"sources": [
            {"configMap": {"name": "web-cfg"}},
            {"secret": {"name": "web-creds"}},
            {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
        ]}},
        {"name": "host", "hostPath": {"path": host_dir.display().to_string(), "type": "DirectoryOrCreate"}}
    ]);
    let _: Secret = c
        .create_json(serde_json::json!({
            "metadata": {"name": "web-creds", "namespace": "default"},
            "stringData": {"password": "s3cret"}
        }))
        .await?;
    let p: Pod = c.create_json(spec).await?;
    let uid = p.metadata.uid.clone();
    // Its ConfigMap missing, the pod waits in ContainerCreating, the failure said as kubelet
    // says it.
    c.wait_pod("vol", Duration::from_secs(30), "ContainerCreating", |p| {
        waiting(p, "app").is_some_and(|(r, _)| r == "ContainerCreating")
    })
    .await?;
    eventually(
        Duration::from_secs(20),
        "the FailedMount message",
        || async {
            Ok(c.agents[0]
                .log()
                .contains(
                    r#"MountVolume.SetUp failed for volume "cfg" : configmap "web-cfg" not found"#,
                )
                .then_some(()))
        },
    )
    .await
    .with_context(|| c.agents[0].log())?;
    let _: ConfigMap = c
        .create_json(serde_json::json!({
            "metadata": {"name": "web-cfg", "namespace": "default"},
            "data": {"app.conf": "v1"}
        }))
        .await?;
    // The first run exits; the second finds what the first wrote in the emptyDir.
    let p = c
        .wait_pod(
            "vol",
            Duration::from_secs(60),
            "restarted and running",
            |p| running(p, "app") && container(p, "app").is_some_and(|s| s.restart_count >= 1),
        )
        .await?;
    let first = c.wait_log(&p, "app", 0, "RUNS=1").await?;
    let log = c.wait_log(&p, "app", 1, "CONF=v1 SUB=v1").await?;
    for want in [
        "RUNS=2",
        "NAME=vol PW=s3cret ALL=v1/s3cret/default",
        "CFG=ro",
        "SCRATCH=rw",
    ] {
        assert!(log.lines().any(|l| l == want), "{want} not in:\n{log}");
    }
    let mem = log
        .lines()
        .find(|l| l.starts_with("MEM="))
        .with_context(|| format!("no tmpfs at /mem:\n{log}\nfirst run:\n{first}"))?;
    assert!(mem.contains("tmpfs") && mem.contains("size=8192k"), "{mem}");
    assert_eq!(
        fs::read_to_string(host_dir.join("written"))?.trim(),
        "from-the-pod"
    );
    // An edit shows in the mounted files (not in the subPath mount) without a restart.
    let mut cm: ConfigMap = c.admin.get("default", "web-cfg").await?;
    cm.data.insert("app.conf".into(), "v2".into());
    c.admin.update(&cm).await?;
    c.wait_log(&p, "app", 1, "CONF=v2 SUB=v1").await?;
    let p = c.get("vol").await?;
    assert_eq!(container(&p, "app").map(|s| s.restart_count), Some(1));

    let root = c.agents[0].pods_dir();
    let mounted = host_mounts(&root, &uid)?;
    ensure_some(&mounted, "the pod's volume mounts while it runs")?;
    // A restarted agent adopts the pod: nothing is mounted twice, the emptyDirs keep their
    // data, and the refresh goes on.
    c.agents[0].restart().context("restarting the agent")?;
    cm = c.admin.get("default", "web-cfg").await?;
    cm.data.insert("app.conf".into(), "v3".into());
    c.admin.update(&cm).await?;
    c.wait_log(&p, "app", 1, "CONF=v3 SUB=v1").await?;
    assert_eq!(
        host_mounts(&root, &uid)?.len(),
        mounted.len(),
        "mounts after the restart"
    );
    let p = c.get("vol").await?;
    assert_eq!(container(&p, "app").map(|s| s.restart_count), Some(1));
    let runs = root
        .join(&uid)
        .join("volumes/kubernetes.io~empty-dir/scratch/runs");
    assert_eq!(
        fs::read_to_string(&runs)
            .with_context(|| format!("reading {}", runs.display()))?
            .lines()
            .count(),
        2,
        "the emptyDir kept its data"
    );
    c.delete_and_wait("vol").await?;
    let left = host_mounts(&root, &uid)?;
    assert!(left.is_empty(), "mounts left: {left:?}");
    assert!(root.is_dir(), "the node's pod directory stays");
    assert!(
        !root.join(&uid).exists(),
        "the pod's volume directory is left"
    );
    assert!(
        host_dir.join("written").exists(),
        "a hostPath is the host's"
    );
    let _ = fs::remove_dir_all(&host_dir);
    Ok(())
}

fn ensure_some(v: &[String], what: &str) -> Result<()> {
    if v.is_empty() {
        bail!("none of {what}");
    }
    Ok(())
}

/// The lines of `/proc/self/status` a securityContext decides, and who the process is.
const SECURITY_SCRIPT: &str = r#"
id
grep -E '^(NoNewPrivs|CapEff|Seccomp):' /proc/self/status | tr -d '\t ' | sed 's/:/=/'
touch /rootfile 2>/dev/null && echo ROOT=rw || echo ROOT=ro
touch /data/f 2>/dev/null && echo DATA=rw || echo DATA=ro
echo DATA_GROUP=$(stat -c %g /data)
echo DONE
exec sleep 1000
"#;

#[tokio::test]
async fn security_contexts_are_honoured_and_privileged_is_refused_without_the_node_flag()
-> Result<()> {
    let Some(c) = cluster("security", &[]).await? else {
        return Ok(());
    };
    let mut spec = pod(
        "secure",
        serde_json::json!([{
            "name": "app",
            "image": "busybox",
            "command": ["sh", "-c", SECURITY_SCRIPT],
            "securityContext": {
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]
        }]),
    );
    spec["spec"]["securityContext"] = serde_json::json!({
        "runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true,
        "fsGroup": 2000, "supplementalGroups": [4000]
    });
    spec["spec"]["volumes"] = serde_json::json!([{"name": "data", "emptyDir": {}}]);
    let _: Pod = c.create_json(spec).await?;
    let mut privileged = pod(
        "priv",
        serde_json::json!([{"name": "app", "image": "busybox", "command": ["sleep", "1000"],
            "securityContext": {"privileged": true}}]),
    );
    privileged["spec"]["restartPolicy"] = "Never".into();
    let _: Pod = c.create_json(privileged).await?;
    let _: Pod = c
        .create_json(pod(
            "nonroot",
            serde_json::json!([{"name": "app", "image": "busybox", "command": ["sleep", "1000"],
                "securityContext": {"runAsNonRoot": true}}]),
        ))
        .await?;
    let p = c
        .wait_pod("secure", Duration::from_secs(30), "Running", |p| {
            running(p, "app")
        })
        .await?;
    let log = c.wait_log(&p, "app", 0, "DONE").await?;
    let id = log
        .lines()
        .find(|l| l.starts_with("uid="))
        .unwrap_or_default();
    assert!(id.starts_with("uid=1000 gid=3000"), "{id}");
    for g in ["2000", "4000"] {
        assert!(id.contains(g), "group {g} missing: {id}");
    }
    for want in [
        "NoNewPrivs=1",
        "CapEff=0000000000000000",
        "Seccomp=2",
        "ROOT=ro",
        "DATA=rw",
        "DATA_GROUP=2000",
    ] {
        assert!(log.lines().any(|l| l == want), "{want} not in:\n{log}");
    }
    let p = c
        .wait_pod("priv", Duration::from_secs(30), "refused", |p| {
            waiting(p, "app").is_some_and(|(r, _)| r == "CreateContainerConfigError")
        })
        .await?;
    assert_eq!(
        waiting(&p, "app").map(|w| w.1).as_deref(),
        Some("securityContext.privileged: Forbidden: disallowed by cluster policy")
    );
    let p = c
        .wait_pod("nonroot", Duration::from_secs(30), "refused", |p| {
            waiting(p, "app").is_some_and(|(r, _)| r == "CreateContainerConfigError")
        })
        .await?;
    let message = waiting(&p, "app").map(|w| w.1).unwrap_or_default();
    assert!(
        message.starts_with(
            "container has runAsNonRoot and image will run as root (pod: \"nonroot_default("
        ),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn node_flags_allow_privileged_containers_and_make_runtime_default_the_default() -> Result<()>
{
    let seccomp = std::env::temp_dir().join(format!("skiff-seccomp-{}", std::process::id()));
    fs::create_dir_all(seccomp.join("profiles"))?;
    fs::write(
        seccomp.join("profiles/no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )?;
    let root = seccomp.display().to_string();
    let Some(c) = cluster(
        "security_flags",
        &[
            "--allow-privileged",
            "--seccomp-default",
            "--seccomp-root",
            &root,
        ],
    )
    .await?
    else {
        let _ = fs::remove_dir_all(&seccomp);
        return Ok(());
    };
    let local = |name: &str, profile: &str| {
        pod(
            name,
            serde_json::json!([{"name": "app", "image": "busybox",
                "command": ["sh", "-c", "mkdir /tmp/d 2>/dev/null; echo MKDIR=$?; echo DONE; exec sleep 1000"],
                "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": profile}}}]),
        )
    };
    let _: Pod = c
        .create_json(local("local", "profiles/no-mkdir.json"))
        .await?;
    let _: Pod = c
        .create_json(local("missing", "profiles/missing.json"))
        .await?;
    let _: Pod = c
        .create_json(pod(
            "plain",
            serde_json::json!([{"name": "app", "image": "busybox", "command": ["sh", "-c", SECURITY_SCRIPT.replace("/data", "/tmp")]}]),
        ))
        .await?;
    let _: Pod = c
        .create_json(pod(
            "priv",
            serde_json::json!([{"name": "app", "image": "busybox", "command": ["sh", "-c", SECURITY_SCRIPT.replace("/data", "/tmp")],
                "securityContext": {"privileged": true}}]),
        ))
        .await?;
    let p = c
        .wait_pod("plain", Duration::from_secs(30), "Running", |p| {
            running(p, "app")
        })
        .await?;
    let log = c.wait_log(&p, "app", 0, "DONE").await?;
    assert!(
        log.lines().any(|l| l == "Seccomp=2"),
        "--seccomp-default:\n{log}"
    );
    let p = c
        .wait_pod("priv", Duration::from_secs(30), "Running", |p| {
            running(p, "app")
        })
        .await?;
    let log = c.wait_log(&p, "app", 0, "DONE").await?;
    assert!(
        log.lines().any(|l| l == "Seccomp=0"),
        "privileged is unconfined:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l == "CapEff=0000000000000000" || l == "CapEff=00000000a80425fb"),
        "privileged has every capability:\n{log}"
    );
    // A Localhost profile from the node's --seccomp-root is enforced; a missing one refused.
    let p = c
        .wait_pod("local", Duration::from_secs(30), "Running", |p| {
            running(p, "app")
        })
        .await?;
    let log = c.wait_log(&p, "app", 0, "DONE").await?;
    assert!(
        log.lines().any(|l| l == "MKDIR=1"),
        "mkdir was not refused:\n{log}"
    );
    let p = c
        .wait_pod("missing", Duration::from_secs(30), "refused", |p| {
            waiting(p, "app").is_some_and(|(r, _)| r == "CreateContainerConfigError")
        })
        .await?;
    assert_eq!(
        waiting(&p, "app").map(|w| w.1).as_deref(),
        Some(
            "failed to load seccomp profile \"profiles/missing.json\": no such profile on this node"
        )
    );
    drop(c);
    let _ = fs::remove_dir_all(&seccomp);
    Ok(())
}
