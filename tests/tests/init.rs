//! Init containers, sidecars, startup probes, postStart hooks and termination messages end to
//! end: real etcd, a real API server, a real containerd running busybox with runc, and
//! `skiff-agent node` in its node namespace. What each container saw is read from its log.

use std::time::Duration;

use anyhow::{Context as _, Result};
use skiff_api::kinds::{ContainerStatus, Pod};
use skiff_testbed::{
    nodes::{Nodes, NodesOptions},
    wait::eventually,
};

async fn cluster(test: &str) -> Result<Option<Nodes>> {
    let opts = NodesOptions {
        nodes: 1,
        controllers: false,
        agent_flags: Vec::new(),
        tag: 'i',
    };
    Nodes::start(test, &opts).await
}

/// Pod `name` on node-0 with `spec` (its containers use the busybox image imported on the
/// node: no registry is reachable here).
async fn create(c: &Nodes, name: &str, mut spec: serde_json::Value) -> Result<Pod> {
    for list in ["initContainers", "containers"] {
        let containers = spec.get_mut(list).and_then(|v| v.as_array_mut());
        for ctr in containers.into_iter().flatten() {
            ctr["image"] = "busybox:1.35".into();
        }
    }
    spec["nodeName"] = "node-0".into();
    spec["terminationGracePeriodSeconds"] = 1.into();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .context("a test pod")?;
    Ok(c.admin.create(&pod).await?)
}

fn status<'a>(p: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    p.status
        .init_container_statuses
        .iter()
        .chain(&p.status.container_statuses)
        .find(|c| c.name == name)
}

fn condition(p: &Pod, type_: &str) -> String {
    skiff_api::kinds::condition(&p.status.conditions, type_)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn init_containers_and_a_sidecar_prepare_the_pod_before_the_app_starts_and_its_post_start_hook_runs_in_it()
-> Result<()> {
    let Some(c) = cluster("init_order").await? else {
        return Ok(());
    };
    let created = create(
        &c,
        "ordered",
        serde_json::json!({
            "volumes": [{"name": "work", "emptyDir": {}}],
            "initContainers": [
                {
                    "name": "setup",
                    "command": ["sh", "-c", "echo prepared-by-setup > /work/msg"],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}]
                },
                {
                    // A sidecar that takes two seconds to come up: the app waits for its
                    // startup probe.
                    "name": "side",
                    "restartPolicy": "Always",
                    "command": ["sh", "-c", "sleep 2; touch /work/side-up; exec sleep 1000"],
                    "startupProbe": {"exec": {"command": ["test", "-f", "/work/side-up"]}, "periodSeconds": 1, "failureThreshold": 30},
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}]
                }
            ],
            "containers": [{
                "name": "app",
                "command": ["sh", "-c", "[ -f /work/side-up ] && echo sidecar-up-first; while [ ! -f /work/hook ]; do sleep 0.1; done; cat /work/msg /work/hook; exec sleep 1000"],
                "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "echo from-post-start > /work/hook"]}}},
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]
            }]
        }),
    )
    .await?;
    let p = c
        .wait_pod(
            "ordered",
            Duration::from_secs(60),
            "Running and ready",
            |p| p.status.phase == "Running" && condition(p, "Ready") == "True",
        )
        .await?;
    let setup = status(&p, "setup").context("setup's status")?;
    let done = setup
        .state
        .terminated
        .as_ref()
        .context("setup terminated")?;
    assert_eq!((done.exit_code, done.reason.as_str()), (0, "Completed"));
    let side = status(&p, "side").context("side's status")?;
    assert!(side.state.running.is_some() && side.started == Some(true) && side.ready);
    assert_eq!(condition(&p, "Initialized"), "True");
    assert_eq!(p.status.init_container_statuses.len(), 2);
    assert_eq!(p.status.container_statuses.len(), 1);
    // The app started after the sidecar was up, and saw what the init container left and
    // what its own hook wrote.
    let agent = &c.agents[0];
    let log = eventually(Duration::from_secs(20), "the app's log", || async {
        let l = agent.container_log(&created, "app", 0);
        Ok(l.contains("from-post-start").then_some(l))
    })
    .await?;
    assert_eq!(
        log,
        "sidecar-up-first\nprepared-by-setup\nfrom-post-start\n"
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_init_container_fails_a_never_restarting_pod_and_nothing_else_starts() -> Result<()>
{
    let Some(c) = cluster("init_failed").await? else {
        return Ok(());
    };
    create(
        &c,
        "broken",
        serde_json::json!({
            "restartPolicy": "Never",
            "initContainers": [{"name": "check", "command": ["sh", "-c", "echo no database; exit 3"]}],
            "containers": [{"name": "app", "command": ["sleep", "1000"]}]
        }),
    )
    .await?;
    let p = c
        .wait_pod("broken", Duration::from_secs(60), "Failed", |p| {
            p.status.phase == "Failed"
        })
        .await?;
    let check = status(&p, "check").context("check's status")?;
    let t = check.state.terminated.as_ref().context("terminated")?;
    assert_eq!((t.exit_code, t.reason.as_str()), (3, "Error"));
    assert_eq!(skiff_api::print::pod::status(&p), "Init:Error");
    let app = status(&p, "app").context("app's status")?;
    let waiting = app
        .state
        .waiting
        .as_ref()
        .context("the app never started")?;
    assert_eq!(waiting.reason, "PodInitializing");
    assert_eq!(condition(&p, "Initialized"), "False");
    Ok(())
}

#[tokio::test]
async fn a_containers_termination_message_comes_from_its_file_or_the_end_of_its_log() -> Result<()>
{
    let Some(c) = cluster("termination_message").await? else {
        return Ok(());
    };
    create(
        &c,
        "messages",
        serde_json::json!({
            "restartPolicy": "Never",
            "containers": [
                {
                    // As a non-root user with a read-only root: the file is still writable.
                    "name": "file",
                    "command": ["sh", "-c", "echo -n 'disk full' > /dev/termination-log; exit 3"],
                    "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": true}
                },
                {
                    "name": "custom",
                    "command": ["sh", "-c", "echo -n done > /tmp/why; exit 0"],
                    "terminationMessagePath": "/tmp/why"
                },
                {
                    "name": "logs",
                    "command": ["sh", "-c", "echo starting; echo 'cannot bind :80'; exit 1"],
                    "terminationMessagePolicy": "FallbackToLogsOnError"
                }
            ]
        }),
    )
    .await?;
    let p = c
        .wait_pod("messages", Duration::from_secs(60), "Failed", |p| {
            p.status.phase == "Failed"
        })
        .await?;
    let message = |name: &str| {
        status(&p, name)
            .and_then(|s| s.state.terminated.as_ref())
            .map(|t| t.message.clone())
    };
    assert_eq!(message("file").as_deref(), Some("disk full"));
    assert_eq!(message("custom").as_deref(), Some("done"));
    assert_eq!(
        message("logs").as_deref(),
        Some("starting\ncannot bind :80\n")
    );
    Ok(())
}
