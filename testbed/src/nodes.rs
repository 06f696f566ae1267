//! A small real cluster for agent tests: etcd, the API server, a containerd of the test's own,
//! optionally the controller-manager, and `n` `skiff-agent node` processes, each in its own node
//! namespace on a fabric bridge, every node Ready before the test begins.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use skiff_api::{client::Client, kinds::Pod};

use crate::{
    agent::{Agent, AgentOptions},
    containerd::{Containerd, busybox_image_dir},
    control::{ApiOptions, ApiServer, Component, ComponentOptions, Etcd, etcd_available},
    fabric::{Fabric, NodeNs},
    privileged,
    wait::{eventually, wait_node_ready},
};

/// What a test asks of its cluster.
#[derive(Debug, Clone, Default)]
pub struct NodesOptions {
    /// Nodes `node-0` .. `node-{n-1}`.
    pub nodes: usize,
    /// Run the controller-manager (Endpoints for the service proxy, node lifecycle, ...).
    pub controllers: bool,
    /// Flags for every agent.
    pub agent_flags: Vec<String>,
    /// A letter that keeps this test's fabric apart from other tests' (with the process id).
    pub tag: char,
}

/// Everything one test runs. Fields drop in declaration order: the controller-manager, the
/// agents, containerd (its containers and shims), the node namespaces, the fabric, the API
/// server, etcd.
#[derive(Debug)]
pub struct Nodes {
    pub controllers: Option<Component>,
    pub agents: Vec<Agent>,
    pub containerd: Containerd,
    pub nodes: Vec<NodeNs>,
    pub fabric: Fabric,
    pub admin: Client,
    pub api: ApiServer,
    pub etcd: Etcd,
}

impl Nodes {
    /// Starts the cluster and waits until every node is Ready; `None` when this host cannot run
    /// it (and `CI` is not set).
    pub async fn start(test: &str, opts: &NodesOptions) -> Result<Option<Nodes>> {
        if !privileged(test) || !etcd_available(test) {
            return Ok(None);
        }
        let n = opts.nodes;
        let etcd = Etcd::start(1)?;
        let api = ApiServer::start(
            &etcd,
            &ApiOptions {
                nodes: n,
                ..ApiOptions::default()
            },
        )?;
        let admin = api.client("admin").await?;
        let containerd = Containerd::start().context("starting containerd")?;
        let image_dir = busybox_image_dir()?;
        let fabric = Fabric::new(&format!("{}{}", opts.tag, std::process::id() % 1_000_000))?;
        let controllers = if opts.controllers {
            Some(api.component(
                "skiff-controller-manager",
                "cm-0",
                &ComponentOptions::default(),
            )?)
        } else {
            None
        };
        let mut c = Nodes {
            controllers,
            agents: Vec::new(),
            containerd,
            nodes: Vec::new(),
            fabric,
            admin,
            api,
            etcd,
        };
        for i in 0..n {
            let node = c.fabric.node(i)?;
            c.agents.push(Agent::start(
                &c.api,
                &node,
                &AgentOptions {
                    index: i,
                    containerd: c.containerd.socket().to_path_buf(),
                    image_dir: image_dir.clone(),
                    containerd_namespace: c.containerd_namespace(i),
                    cgroup_parent: c.containerd.cgroup_parent().to_owned(),
                    extra: opts.agent_flags.clone(),
                },
            )?);
            c.nodes.push(node);
            let ready =
                wait_node_ready(&c.admin, &format!("node-{i}"), Duration::from_secs(30)).await;
            if let Err(e) = ready {
                bail!("{e}\nagent log:\n{}", c.agents[i].log());
            }
        }
        Ok(Some(c))
    }

    /// The containerd namespace of node `i`'s containers.
    pub fn containerd_namespace(&self, i: usize) -> String {
        format!("{}-node-{i}", self.containerd.namespace())
    }

    /// Waits until pod `name` of `default` is gone from the API (deleted for good).
    pub async fn wait_pod_gone(&self, name: &str, timeout: Duration) -> Result<()> {
        eventually(timeout, &format!("pod {name} gone"), || async {
            match self.admin.get::<Pod>("default", name).await {
                Err(e) if e.is_not_found() => Ok(Some(())),
                Ok(_) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Waits until pod `name` of `default` satisfies `f`, and returns it; on a timeout the error
    /// carries the pod's status and every agent's log.
    pub async fn wait_pod(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        f: impl Fn(&Pod) -> bool,
    ) -> Result<Pod> {
        let get = || self.admin.get::<Pod>("default", name);
        let r = eventually(timeout, &format!("pod {name}: {what}"), || async {
            let p = get().await?;
            Ok(f(&p).then_some(p))
        })
        .await;
        match r {
            Ok(p) => Ok(p),
            Err(e) => {
                let status = get()
                    .await
                    .map(|p| serde_json::to_string_pretty(&p.status).unwrap_or_default())
                    .unwrap_or_default();
                let logs: Vec<String> = self.agents.iter().map(Agent::log).collect();
                bail!(
                    "{e}\nstatus: {status}\nagent logs:\n{}",
                    logs.join("\n----\n")
                )
            }
        }
    }
}
