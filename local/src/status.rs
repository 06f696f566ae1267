//! `skiff-local status`: whether each recorded process still runs, and what the API server says
//! about every node (Ready, pods).

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use anyhow::Result;
use skiff_api::{
    client::{Client, ListParams},
    kinds::{Node, Pod, condition},
};

use crate::{
    layout::{Layout, node_name},
    process::{is_alive, pid_reused},
    state::{Phase, ProcessRecord, State},
    up::{admin_config, runtime},
};

/// One process and whether it runs.
#[derive(Debug, Clone)]
pub struct ProcessStatus {
    pub record: ProcessRecord,
    pub alive: bool,
    /// Its pid belongs to another process now.
    pub pid_reused: bool,
}

/// One node as the API server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub name: String,
    /// The Ready condition's status (`True`, `False`, `Unknown`), or `missing` when the node is
    /// not registered.
    pub ready: String,
    pub pods: usize,
    pub internal_ip: String,
    pub pod_cidr: String,
}

/// What `status` found.
#[derive(Debug, Clone)]
pub struct Report {
    pub state: State,
    pub processes: Vec<ProcessStatus>,
    /// Every expected node, then any other registered one.
    pub nodes: Vec<NodeStatus>,
    /// Why the API server could not be asked.
    pub api_error: Option<String>,
}

impl Report {
    /// Up means: `up` finished, every process runs, and every node is Ready.
    pub fn healthy(&self) -> bool {
        self.state.phase == Phase::Up
            && self.api_error.is_none()
            && self.processes.iter().all(|p| p.alive)
            && (0..self.state.nodes).all(|i| {
                let name = node_name(i);
                self.nodes
                    .iter()
                    .any(|n| n.name == name && n.ready == "True")
            })
    }

    /// The report as people read it.
    pub fn render(&self, layout: &Layout) -> String {
        let mut out = String::new();
        let verdict = if self.healthy() {
            "up"
        } else if self.state.phase == Phase::Starting {
            "not up (`up` did not finish)"
        } else {
            "degraded"
        };
        let _ = writeln!(
            out,
            "cluster {:?} in {}: {verdict}",
            self.state.name,
            layout.dir().display()
        );
        if let Some(api) = self.state.api_addr {
            let _ = writeln!(
                out,
                "API server: https://{api} and {} (skiffctl: export SKIFF_CONFIG={})",
                layout.api_unix_url(),
                layout.skiffctl_config().display()
            );
        }
        if let Some(etcd) = &self.state.etcd_url {
            let _ = writeln!(
                out,
                "etcd: {etcd} (mutual TLS; as the API server: ETCDCTL_API=3 etcdctl --endpoints={etcd} {})",
                layout.pki().etcdctl_flags().join(" ")
            );
        }
        if let Some(r) = &self.state.registry {
            let _ = writeln!(
                out,
                "registry: http://{} (namespace {}, push with `skiff-local push SOURCE REPO:TAG`), {} image(s): {}",
                r.host,
                r.netns,
                r.images.len(),
                r.images.join(", ")
            );
        }
        let _ = writeln!(out, "\n{:<22} {:>8}  STATE", "PROCESS", "PID");
        for p in &self.processes {
            let what = if p.alive {
                "running".to_owned()
            } else if p.pid_reused {
                "exited (its pid now belongs to another process)".to_owned()
            } else {
                format!("not running (log {})", p.record.log.display())
            };
            let _ = writeln!(out, "{:<22} {:>8}  {what}", p.record.name, p.record.pid);
        }
        match &self.api_error {
            Some(e) => {
                let _ = writeln!(out, "\nAPI server: cannot ask it: {e}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "\n{:<10} {:<8} {:>5}  {:<14} POD CIDR",
                    "NODE", "READY", "PODS", "INTERNAL IP"
                );
                for n in &self.nodes {
                    let _ = writeln!(
                        out,
                        "{:<10} {:<8} {:>5}  {:<14} {}",
                        n.name, n.ready, n.pods, n.internal_ip, n.pod_cidr
                    );
                }
            }
        }
        out
    }
}

/// The status of the cluster in `layout`; `Ok(None)` when there is none.
pub fn status(layout: &Layout) -> Result<Option<Report>> {
    let Some(state) = State::load(layout)? else {
        return Ok(None);
    };
    let processes = state
        .processes
        .iter()
        .map(|r| ProcessStatus {
            record: r.clone(),
            alive: is_alive(r),
            pid_reused: pid_reused(r),
        })
        .collect();
    let (nodes, api_error) = match ask_api(layout, &state) {
        Ok(nodes) => (nodes, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    Ok(Some(Report {
        state,
        processes,
        nodes,
        api_error,
    }))
}

fn ask_api(layout: &Layout, state: &State) -> Result<Vec<NodeStatus>> {
    let api = state
        .api_addr
        .ok_or_else(|| anyhow::anyhow!("the API server was never started"))?;
    let mut config = admin_config(layout, api)?;
    config.connect_timeout = Duration::from_secs(2);
    runtime()?.block_on(async {
        let client = tokio::time::timeout(Duration::from_secs(5), Client::connect(&config))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from https://{api} within 5 s"))??;
        let call = async {
            let (nodes, _) = client.list::<Node>("", &ListParams::default()).await?;
            let (pods, _) = client.list::<Pod>("", &ListParams::default()).await?;
            anyhow::Ok((nodes, pods))
        };
        let (nodes, pods) = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .map_err(|_| anyhow::anyhow!("no answer from https://{api} within 10 s"))??;
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for p in &pods {
            if !p.spec.node_name.is_empty() {
                *per_node.entry(p.spec.node_name.as_str()).or_default() += 1;
            }
        }
        let mut out: Vec<NodeStatus> = (0..state.nodes)
            .map(|i| NodeStatus {
                name: node_name(i),
                ready: "missing".into(),
                pods: 0,
                internal_ip: String::new(),
                pod_cidr: String::new(),
            })
            .collect();
        for n in &nodes {
            let status = NodeStatus {
                name: n.metadata.name.clone(),
                ready: condition(&n.status.conditions, "Ready")
                    .map_or_else(|| "Unknown".to_owned(), |c| c.status.clone()),
                pods: per_node.get(n.metadata.name.as_str()).copied().unwrap_or(0),
                internal_ip: n
                    .status
                    .addresses
                    .iter()
                    .find(|a| a.type_ == "InternalIP")
                    .map(|a| a.address.clone())
                    .unwrap_or_default(),
                pod_cidr: n.spec.pod_cidr.clone(),
            };
            match out.iter_mut().find(|o| o.name == status.name) {
                Some(slot) => *slot = status,
                None => out.push(status),
            }
        }
        Ok(out)
    })
}
