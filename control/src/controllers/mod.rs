//! The controller-manager's controllers. Each is level-triggered: informer handlers only enqueue
//! keys, and a worker compares what the cluster is with what it should be, and writes the
//! difference through the API server. Running one twice changes nothing.

pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podutil;
pub mod replicaset;

use std::{sync::Arc, time::Duration};

/// The namespace node agents renew their Leases in.
pub use skiff_api::kinds::NODE_LEASE_NAMESPACE;
use skiff_api::{
    client::{Client, ListParams},
    kinds::{Deployment, Endpoints, Lease, Namespace, Node, Pod, ReplicaSet, Service},
};
use skiff_runtime::{Flag, Informer, QueueMetrics};
use tokio::task::JoinSet;

/// One shared cache per resource for every controller.
#[derive(Debug, Clone)]
pub struct Informers {
    pub pods: Informer<Pod>,
    pub replicasets: Informer<ReplicaSet>,
    pub deployments: Informer<Deployment>,
    pub services: Informer<Service>,
    pub endpoints: Informer<Endpoints>,
    pub nodes: Informer<Node>,
    /// Node heartbeats, in [`NODE_LEASE_NAMESPACE`].
    pub node_leases: Informer<Lease>,
    pub namespaces: Informer<Namespace>,
}

impl Informers {
    pub fn new(client: &Client) -> Informers {
        let all = ListParams::default();
        Informers {
            pods: Informer::new(client.clone(), "", all.clone()),
            replicasets: Informer::new(client.clone(), "", all.clone()),
            deployments: Informer::new(client.clone(), "", all.clone()),
            services: Informer::new(client.clone(), "", all.clone()),
            endpoints: Informer::new(client.clone(), "", all.clone()),
            nodes: Informer::new(client.clone(), "", all.clone()),
            node_leases: Informer::new(client.clone(), NODE_LEASE_NAMESPACE, all.clone()),
            namespaces: Informer::new(client.clone(), "", all),
        }
    }

    /// Starts every informer in `set`.
    pub fn spawn(&self, set: &mut JoinSet<()>) {
        set.spawn(self.pods.clone().run());
        set.spawn(self.replicasets.clone().run());
        set.spawn(self.deployments.clone().run());
        set.spawn(self.services.clone().run());
        set.spawn(self.endpoints.clone().run());
        set.spawn(self.nodes.clone().run());
        set.spawn(self.node_leases.clone().run());
        set.spawn(self.namespaces.clone().run());
    }

    /// Waits until every cache holds its first list.
    pub async fn synced(&self) {
        self.pods.synced().await;
        self.replicasets.synced().await;
        self.deployments.synced().await;
        self.services.synced().await;
        self.endpoints.synced().await;
        self.nodes.synced().await;
        self.node_leases.synced().await;
        self.namespaces.synced().await;
    }
}

/// Tunables of the controller-manager.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A node whose Lease is older than this is marked NotReady and tainted.
    pub node_monitor_grace_period: Duration,
    /// A node NotReady this long has its pods deleted so their owners replace them.
    pub pod_eviction_timeout: Duration,
    /// Workers per controller.
    pub workers: usize,
    /// The most pods a ReplicaSet creates or deletes in one pass.
    pub burst: usize,
    /// Where pod CIDRs of nodes that register without one come from (`None`: nodes bring
    /// their own).
    pub node_cidrs: Option<nodeipam::NodeCidrs>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_monitor_grace_period: Duration::from_secs(10),
            pod_eviction_timeout: Duration::from_secs(30),
            workers: 4,
            burst: 500,
            node_cidrs: None,
        }
    }
}

/// What every controller gets.
#[derive(Debug)]
pub struct Context {
    pub client: Client,
    pub informers: Informers,
    pub settings: Settings,
    /// Where each controller's work queue reports, under the controller's name.
    pub queues: QueueMetrics,
}

/// The leader's work: starts the informers and every controller, and runs until aborted.
/// `synced` reads false from the start until every informer holds its first list (or the work
/// is aborted); the work queues report into `queues`.
pub async fn run(client: Client, settings: Settings, queues: QueueMetrics, synced: Flag) {
    let syncing = synced.hold();
    let informers = Informers::new(&client);
    let ctx = Arc::new(Context {
        client,
        informers,
        settings,
        queues,
    });
    // Controllers register their handlers before the informers start, so none misses an event.
    let rs = replicaset::ReplicaSetController::new(ctx.clone());
    let deploy = deployment::DeploymentController::new(ctx.clone());
    let endpoints = endpoints::EndpointsController::new(ctx.clone());
    let nodes = nodelifecycle::NodeLifecycleController::new(ctx.clone());
    let gc = gc::GarbageCollector::new(ctx.clone());
    let ipam = ctx
        .settings
        .node_cidrs
        .map(|c| nodeipam::NodeIpamController::new(ctx.clone(), c));
    let mut set = JoinSet::new();
    ctx.informers.spawn(&mut set);
    ctx.informers.synced().await;
    drop(syncing);
    tracing::info!("caches synced; starting controllers");
    set.spawn(rs.run());
    set.spawn(deploy.run());
    set.spawn(endpoints.run());
    set.spawn(nodes.run());
    set.spawn(gc.run());
    if let Some(ipam) = ipam {
        set.spawn(ipam.run());
    }
    while let Some(r) = set.join_next().await {
        tracing::error!(result = ?r, "a controller task ended");
    }
}
