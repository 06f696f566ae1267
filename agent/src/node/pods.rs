//! The pods bound to this node: one worker task per pod turns its spec into a network and
//! running containers, restarts them by policy, runs probes, reports status, and on deletion
//! stops everything and removes every trace. At start the manager removes what belongs to
//! pods that no longer exist and the workers adopt what belongs to those that do.
//!
//! The runtime, the pod network and the API writes are traits in [`Ctx`], so the whole
//! lifecycle runs over `crate::testing`'s checking fakes (see `lifecycle_tests`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use skiff_api::{
    client::{ClientError, Code},
    kinds::{
        ConfigMap, Container, ContainerStateTerminated, LifecycleHandler, Pod, Secret, Service,
    },
    meta::time,
    validate,
};
use skiff_runtime::informer::{Event, Informer};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::Instrument as _;

use super::{
    api::PodApi,
    envvars::{self, EnvError},
    probe::{self, Counter, Failure, Kind, Target, Timing},
    proxy::Proxy,
    status::{self, ContainerReport, Phase, PodFacts, Role},
    termination,
    volumes::{
        Volumes,
        pod::{self as volume_pod, PodVolume},
    },
};
use crate::{
    paths::{self, InvalidPod, NodePaths, PathError, PodIds},
    podnet::{self, PodNet, PodNetwork, PodNetworks},
    runtime::{
        self, ContainerInfo, ContainerRuntime, ContainerSpec, Exit, Image, NodeSecurity, Security,
        TaskState, chain,
    },
};

/// The grace of a container found without its pod (one deleted while no agent ran): the
/// kubelet's minimum, SIGTERM then SIGKILL two seconds later.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// What can stop the node's pod manager, or one step of a pod.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The container runtime failed at `action`.
    #[error("{action}")]
    Runtime {
        action: &'static str,
        #[source]
        source: runtime::Error,
    },
    /// The pod network failed at `action`.
    #[error("{action}")]
    Network {
        action: &'static str,
        #[source]
        source: podnet::Error,
    },
    /// No host path could be made for a container's files from the pod's identity.
    #[error("naming the container's files")]
    ContainerFiles {
        #[source]
        source: PathError,
    },
}

impl Error {
    fn runtime(action: &'static str) -> impl FnOnce(runtime::Error) -> Error {
        move |source| Error::Runtime { action, source }
    }
}

/// The pod manager's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Labels on every container the agent makes.
pub const LABEL_POD_UID: &str = "io.skiff.pod.uid";
pub const LABEL_POD_NAMESPACE: &str = "io.skiff.pod.namespace";
pub const LABEL_POD_NAME: &str = "io.skiff.pod.name";
pub const LABEL_CONTAINER: &str = "io.skiff.container.name";
pub const LABEL_INDEX: &str = "io.skiff.container.index";
pub const LABEL_ATTEMPT: &str = "io.skiff.container.attempt";
/// What every label above starts with: a container without any is not the agent's.
const SKIFF_LABEL_PREFIX: &str = "io.skiff.";

/// A container's back-off is reset after it ran this long (the kubelet's rule).
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);
/// Between retries of a pod whose network or image is not there.
const RETRY: Duration = Duration::from_secs(2);
/// How long a status write may wait on a conflict before trying again; also the first wait
/// after any other failed write, doubled per failure up to `STATUS_BACKOFF_MAX`.
const STATUS_RETRY: Duration = Duration::from_millis(200);
/// The longest wait between status writes the API refused for good (invalid, forbidden):
/// such a write is not repeated five times a second.
const STATUS_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The longest wait between status writes that failed for a passing reason (the API down),
/// so the status follows soon after it is back.
const STATUS_BACKOFF_TRANSIENT: Duration = Duration::from_secs(5);
/// Between sweeps for containers, networks, addresses and logs that belong to no pod this
/// node runs.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// The reason of the status of a pod this node refuses to run.
pub const REASON_INVALID_POD: &str = "InvalidPod";
/// However much of the grace period a preStop hook used, its container still gets this long
/// between SIGTERM and SIGKILL (the kubelet's minimum).
const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);
/// How long a postStart hook may run: kubelet sets no limit, a day stands for none.
const POST_START_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// What every pod worker shares.
#[derive(Debug)]
pub struct Ctx {
    /// Where pod statuses are written and deletions finished.
    pub api: Arc<dyn PodApi>,
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Pod addresses and networks.
    pub network: Arc<dyn PodNetworks>,
    pub node: String,
    pub host_ip: Ipv4Addr,
    /// Container logs, pod cgroups and container ids: every host path made for a pod.
    pub paths: NodePaths,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The live attempt of every container of every pod (by uid), for `skiffctl logs`.
    pub attempts: Mutex<HashMap<String, PodAttempts>>,
    /// The service proxy, attached to every pod's host veth (none with `--no-service-proxy`).
    pub proxy: Option<Arc<Proxy>>,
    /// Where the ConfigMaps and Secrets of pods are read (image pull Secrets, environment
    /// sources, volumes).
    pub objects: Arc<dyn PodObjects>,
    /// The Services whose variables go into containers' environments.
    pub services: Arc<dyn ServiceList>,
    /// The node's allocatable resources, for the downward API (its address is `host_ip`).
    pub allocatable: envvars::Allocatable,
    /// The pods' volumes on this node; `None`: a node without a volume directory (a hollow
    /// node's), where a pod with volumes waits with a message saying so.
    pub volumes: Option<Volumes>,
    /// Between refreshes of a pod's configMap, secret, downwardAPI and projected volumes
    /// (kubelet's sync period).
    pub volume_resync: Duration,
    /// What containers' securityContext may have on this node (`--allow-privileged`,
    /// `--seccomp-default`, `--seccomp-root`).
    pub node_security: NodeSecurity,
}

/// Reads the ConfigMaps and Secrets a pod references, one by name in the pod's namespace: the
/// API server's node authorizer lets a node get exactly those its pods reference, and refuses
/// it list and watch.
#[async_trait::async_trait]
pub trait PodObjects: std::fmt::Debug + Send + Sync {
    /// Secret `namespace/name`.
    async fn secret(&self, namespace: &str, name: &str) -> Result<Secret, ClientError>;
    /// ConfigMap `namespace/name`.
    async fn config_map(&self, namespace: &str, name: &str) -> Result<ConfigMap, ClientError>;
}

#[async_trait::async_trait]
impl PodObjects for skiff_api::client::Client {
    async fn secret(&self, namespace: &str, name: &str) -> Result<Secret, ClientError> {
        skiff_api::client::Client::get::<Secret>(self, namespace, name).await
    }

    async fn config_map(&self, namespace: &str, name: &str) -> Result<ConfigMap, ClientError> {
        skiff_api::client::Client::get::<ConfigMap>(self, namespace, name).await
    }
}

/// A kind of the pod's objects that [`PodObjects`] reads.
trait PodObject: Sized {
    /// The kind, as messages name it.
    const KIND: &'static str;
    /// Object `namespace/name` of this kind.
    fn get<'a>(
        objects: &'a dyn PodObjects,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Future<Output = Result<Self, ClientError>> + Send + 'a;
}

impl PodObject for ConfigMap {
    const KIND: &'static str = "configmap";

    fn get<'a>(
        objects: &'a dyn PodObjects,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Future<Output = Result<Self, ClientError>> + Send + 'a {
        objects.config_map(namespace, name)
    }
}

impl PodObject for Secret {
    const KIND: &'static str = "secret";

    fn get<'a>(
        objects: &'a dyn PodObjects,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Future<Output = Result<Self, ClientError>> + Send + 'a {
        objects.secret(namespace, name)
    }
}

/// Why one of the pod's objects was not read.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// The pod names it with what is no valid object name (only a write past the API makes
    /// one): it is not asked for.
    #[error("{name:?} is not a valid object name")]
    InvalidName { name: String },
    /// The API did not answer with it.
    #[error(transparent)]
    Api(ClientError),
}

/// The pod's object `name` of kind `T` in `namespace`, read now: `Ok(None)` when absent.
async fn fetch<T: PodObject>(
    objects: &dyn PodObjects,
    namespace: &str,
    name: &str,
) -> Result<Option<T>, FetchError> {
    if validate::dns1123_subdomain(name).is_err() {
        return Err(FetchError::InvalidName { name: name.into() });
    }
    match T::get(objects, namespace, name).await {
        Ok(object) => Ok(Some(object)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(FetchError::Api(e)),
    }
}

/// The Services a node knows (for the Service environment variables).
pub trait ServiceList: std::fmt::Debug + Send + Sync {
    /// The Services that may give variables to a pod in `namespace` (those for which
    /// [`envvars::service_may_apply`] holds); `None` until they have been read once.
    fn services(&self, namespace: &str) -> Option<Vec<Service>>;
}

impl ServiceList for Informer<Service> {
    fn services(&self, namespace: &str) -> Option<Vec<Service>> {
        self.has_synced().then(|| {
            self.filter(|s| {
                envvars::service_may_apply(namespace, &s.metadata.namespace, &s.metadata.name)
            })
            .iter()
            .map(|s| (**s).clone())
            .collect()
        })
    }
}

/// kubelet's message while it has not read the Services yet (a container then waits in
/// `CreateContainerConfigError`, as with kubelet).
const SERVICES_NOT_READ: &str =
    "services have not yet been read at least once, cannot construct envvars";

/// The pod's ConfigMaps and Secrets that one container's environment reads, fetched at its
/// start: absent ones are `None`, ones that could not be read carry why.
#[derive(Debug, Default)]
struct Fetched {
    config_maps: BTreeMap<String, Lookup<BTreeMap<String, String>>>,
    secrets: BTreeMap<String, Lookup<BTreeMap<String, Vec<u8>>>>,
}

/// One object's data as read: `None` when absent, `Err` with why when it could not be read.
type Lookup<T> = Result<Option<T>, String>;

impl Fetched {
    /// Fetches what `container` of a pod in `namespace` reads.
    async fn of(objects: &dyn PodObjects, namespace: &str, container: &Container) -> Fetched {
        let (cms, secrets) = envvars::referenced_objects(container);
        let mut out = Fetched::default();
        for name in cms {
            let got = fetch::<ConfigMap>(objects, namespace, &name)
                .await
                .map(|cm| cm.map(|cm| cm.data))
                .map_err(|e| e.to_string());
            out.config_maps.insert(name, got);
        }
        for name in secrets {
            let got = fetch::<Secret>(objects, namespace, &name)
                .await
                .map(|s| {
                    s.map(|mut s| {
                        s.merge_string_data();
                        s.data.into_iter().map(|(k, v)| (k, v.0)).collect()
                    })
                })
                .map_err(|e| e.to_string());
            out.secrets.insert(name, got);
        }
        out
    }
}

impl envvars::Objects for Fetched {
    fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, EnvError> {
        match self.config_maps.get(name) {
            None => Ok(None),
            Some(r) => r.clone().map_err(EnvError::Lookup),
        }
    }

    fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, EnvError> {
        match self.secrets.get(name) {
            None => Ok(None),
            Some(r) => r.clone().map_err(EnvError::Lookup),
        }
    }
}

/// The ConfigMaps and Secrets `pod`'s volumes name (absent ones left out: the set-up says
/// they are missing, or skips them when optional), read now. `Err`: one could not be read.
async fn volume_objects(
    objects: &dyn PodObjects,
    pod: &Pod,
) -> Result<(Vec<ConfigMap>, Vec<Secret>), String> {
    let mut cm_names = std::collections::BTreeSet::new();
    let mut secret_names = std::collections::BTreeSet::new();
    for v in &pod.spec.volumes {
        if let Some(c) = &v.config_map {
            cm_names.insert(c.name.clone());
        }
        if let Some(s) = &v.secret {
            secret_names.insert(s.secret_name.clone());
        }
        for src in v.projected.iter().flat_map(|p| &p.sources) {
            if let Some(c) = &src.config_map {
                cm_names.insert(c.name.clone());
            }
            if let Some(s) = &src.secret {
                secret_names.insert(s.name.clone());
            }
        }
    }
    let namespace = &pod.metadata.namespace;
    let cms = fetch_present(objects, namespace, cm_names).await?;
    let secrets = fetch_present(objects, namespace, secret_names).await?;
    Ok((cms, secrets))
}

/// The objects of kind `T` in `namespace` by `names` that exist and have a valid name, read
/// now. `Err`: one could not be read.
async fn fetch_present<T: PodObject>(
    objects: &dyn PodObjects,
    namespace: &str,
    names: impl IntoIterator<Item = String>,
) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    for name in names {
        match fetch::<T>(objects, namespace, &name).await {
            Ok(Some(object)) => out.push(object),
            Ok(None) | Err(FetchError::InvalidName { .. }) => {}
            Err(FetchError::Api(e)) => return Err(format!("{} {name:?}: {e}", T::KIND)),
        }
    }
    Ok(out)
}

/// The environment of `container` of `pod` as kubelet makes it, read now (so a ConfigMap or
/// Secret created or fixed after a failed start is used by the next try). `Err`: the message
/// of the container's `CreateContainerConfigError`.
async fn container_env(
    ctx: &Ctx,
    pod: &Pod,
    container: &Container,
    net: &PodNetwork,
) -> Result<envvars::Environment, String> {
    let Some(services) = ctx.services.services(&pod.metadata.namespace) else {
        return Err(SERVICES_NOT_READ.to_owned());
    };
    let fetched = Fetched::of(ctx.objects.as_ref(), &pod.metadata.namespace, container).await;
    let facts = pod_facts(ctx, Some(net));
    let env = envvars::environment(pod, container, &fetched, &services, &facts)
        .map_err(|e| e.to_string())?;
    for message in &env.skipped {
        // kubelet's InvalidEnvironmentVariableNames warning event.
        tracing::warn!(pod = %pod.metadata.name, container = %container.name, reason = "InvalidEnvironmentVariableNames", %message, "envFrom keys skipped");
    }
    Ok(env)
}

/// What the downward API reads of a pod on this node beyond its object: its address (none
/// before its network is up) and the node's address and allocatable resources.
fn pod_facts(ctx: &Ctx, net: Option<&PodNetwork>) -> envvars::PodFacts {
    envvars::PodFacts {
        pod_ips: net.map(|n| vec![n.ip.to_string()]).unwrap_or_default(),
        host_ips: vec![ctx.host_ip.to_string()],
        allocatable_cpu_millis: ctx.allocatable.cpu_millis,
        allocatable_memory: ctx.allocatable.memory,
        allocatable_ephemeral_storage: ctx.allocatable.ephemeral_storage,
    }
}

/// The type of Secrets that hold registry credentials (`.dockerconfigjson`).
const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// The legacy type the kubelet still reads (`.dockercfg`: the registries' entries at the top).
const DOCKERCFG_TYPE: &str = "kubernetes.io/dockercfg";
const DOCKERCFG_KEY: &str = ".dockercfg";

/// The registry credentials of `pod`'s imagePullSecrets, read now (so a Secret fixed after a
/// failed pull is used by the next try). As the kubelet does, Secrets of type
/// `kubernetes.io/dockerconfigjson` and `kubernetes.io/dockercfg` count; one that cannot be read
/// or is of another type is skipped with a warning and the pull goes on with the others.
pub async fn pull_credentials(secrets: &dyn PodObjects, pod: &Pod) -> runtime::Credentials {
    let mut out = runtime::Credentials::none();
    let namespace = &pod.metadata.namespace;
    for r in &pod.spec.image_pull_secrets {
        match fetch::<Secret>(secrets, namespace, &r.name).await {
            Err(FetchError::InvalidName { .. }) => {
                tracing::warn!(pod = %pod.metadata.name, secret = %r.name, "imagePullSecrets names no valid Secret");
            }
            Ok(Some(secret)) if secret.type_ == DOCKER_CONFIG_JSON_TYPE => {
                let Some(json) = secret.data.get(DOCKER_CONFIG_JSON_KEY) else {
                    continue;
                };
                if let Err(e) = out.add_docker_config_json(&json.0) {
                    tracing::warn!(pod = %pod.metadata.name, secret = %r.name, error = %e, "image pull secret not usable");
                }
            }
            Ok(Some(secret)) if secret.type_ == DOCKERCFG_TYPE => {
                let Some(json) = secret.data.get(DOCKERCFG_KEY) else {
                    continue;
                };
                if let Err(e) = out.add_dockercfg(&json.0) {
                    tracing::warn!(pod = %pod.metadata.name, secret = %r.name, error = %e, "image pull secret not usable");
                }
            }
            Ok(Some(secret)) => {
                tracing::warn!(pod = %pod.metadata.name, secret = %r.name, type_ = %secret.type_, "image pull secret is not of type kubernetes.io/dockerconfigjson or kubernetes.io/dockercfg; skipped");
            }
            Ok(None) => {
                tracing::warn!(pod = %pod.metadata.name, secret = %r.name, error = "not found", "unable to retrieve an image pull secret; attempting to pull the image may not succeed");
            }
            Err(FetchError::Api(e)) => {
                tracing::warn!(pod = %pod.metadata.name, secret = %r.name, error = %e, "unable to retrieve an image pull secret; attempting to pull the image may not succeed");
            }
        }
    }
    out
}

/// The containers of one pod with their live attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAttempts {
    /// The pod, checked: its logs are found from this, never from a request.
    pub pod: PodIds,
    pub containers: Vec<AttemptInfo>,
}

/// Where a container's output goes, and whether it is still being written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptInfo {
    pub container: String,
    pub attempt: u32,
    pub running: bool,
}

impl Ctx {
    fn set_attempts(&self, uid: &str, attempts: Option<PodAttempts>) {
        let mut m = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        match attempts {
            Some(a) => {
                m.insert(uid.to_owned(), a);
            }
            None => {
                m.remove(uid);
            }
        }
    }

    /// Removes every container, the network, the address and the logs of pod `uid` (a valid
    /// uid: the network and the address are found by it; `log_dir` comes from the path
    /// builder).
    /// Stops the running ones of `containers` at once (SIGTERM, SIGKILL after
    /// [`ORPHAN_GRACE`]), then removes them all: a container is never removed, which kills
    /// it outright, while its task still runs.
    async fn stop_and_remove(&self, containers: &[ContainerInfo]) {
        let mut stops = tokio::task::JoinSet::new();
        for c in containers.iter().filter(|c| c.state == TaskState::Running) {
            let (runtime, id) = (self.runtime.clone(), c.id.clone());
            stops.spawn(async move {
                let r = runtime.stop(&id, ORPHAN_GRACE).await;
                (id, r)
            });
        }
        while let Some(done) = stops.join_next().await {
            if let Ok((id, Err(e))) = done {
                tracing::warn!(container = %id, error = %chain(&e), "stopping a container");
            }
        }
        for c in containers {
            if let Err(e) = self.runtime.remove(&c.id).await {
                tracing::warn!(container = %c.id, error = %chain(&e), "removing a container");
            }
        }
    }

    async fn remove_all(&self, uid: &str, containers: &[ContainerInfo], log_dir: Option<PathBuf>) {
        self.stop_and_remove(containers).await;
        if let Some(proxy) = &self.proxy
            && let Err(e) = proxy.detach(&PodNet::host_veth_name(uid)).await
        {
            tracing::warn!(uid, error = %chain(&e), "detaching the service datapath");
        }
        // The address goes with the network.
        if let Err(e) = self.network.teardown(uid).await {
            tracing::warn!(uid, error = %chain(&e), "removing the pod network");
        }
        if let Some(dir) = log_dir
            && let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "removing the pod's logs");
        }
        self.set_attempts(uid, None);
    }

    /// Removes, of everything pods leave on this node, what belongs to no pod in `known` (the
    /// uids of the valid pods bound to it): containers in the node's containerd namespace
    /// (those without a pod label too), pod networks, addresses and log directories. Only a
    /// uid that is a valid uid reaches the network and the address, and only log directories
    /// whose name parses back into a valid pod identity are removed (each rebuilt by the path
    /// builder, never taken from a label). Returns the containers of the known pods.
    async fn remove_leftovers(
        &self,
        known: &HashSet<String>,
    ) -> Result<HashMap<String, Vec<ContainerInfo>>> {
        let containers = self
            .runtime
            .list()
            .await
            .map_err(Error::runtime("listing containers"))?;
        let networks = self.network.list().await.map_err(|source| Error::Network {
            action: "listing pod networks",
            source,
        })?;
        let mut log_dirs = Vec::new();
        if let Ok(dir) = std::fs::read_dir(self.paths.logs()) {
            for e in dir.flatten() {
                match NodePaths::parse_pod_log_dir(&e.file_name()) {
                    Ok(ids) => log_dirs.push(ids),
                    Err(err) => {
                        tracing::warn!(dir = %e.path().display(), error = %err, "leaving alone a log directory this node did not make");
                    }
                }
            }
        }
        let volume_dirs = match &self.volumes {
            Some(v) => {
                let v = v.clone();
                match tokio::task::spawn_blocking(move || v.pods_on_disk()).await {
                    Ok(Ok(uids)) => uids,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %chain(&e), "listing pod volume directories");
                        Vec::new()
                    }
                    Err(_) => Vec::new(),
                }
            }
            None => Vec::new(),
        };
        let found = Leftovers::sort(containers, networks, log_dirs, known);
        // Pods deleted while no agent ran give back their user namespace ranges.
        runtime::userns::retain(self.paths.logs(), known);
        for c in &found.foreign {
            tracing::debug!(container = %c.id, "leaving alone a container without the agent's labels");
        }
        for c in &found.unowned {
            tracing::info!(container = %c.id, labels = ?c.labels, "removing a container that belongs to no pod of this node");
        }
        self.stop_and_remove(&found.unowned).await;
        // Volumes of pods not known, once their containers are gone (a teardown that finds
        // a mount it cannot remove leaves everything for the next sweep).
        let stale_volumes: Vec<String> = volume_dirs
            .into_iter()
            .filter(|uid| !known.contains(uid))
            .collect();
        for (uid, stale) in found.stale {
            tracing::info!(
                uid,
                "removing what is left of a pod that is not on this node"
            );
            if validate::uid(&uid).is_err() {
                // Only containers can carry such a uid (in a label): they go, nothing else is
                // looked for under a name made of it.
                self.stop_and_remove(&stale.containers).await;
                continue;
            }
            let log_dir = stale
                .pod
                .as_ref()
                .and_then(|ids| self.paths.pod_log_dir(ids).ok());
            self.remove_all(&uid, &stale.containers, log_dir).await;
        }
        if let Some(volumes) = &self.volumes
            && !stale_volumes.is_empty()
        {
            let volumes = volumes.clone();
            let done = tokio::task::spawn_blocking(move || {
                for uid in stale_volumes {
                    tracing::info!(
                        uid,
                        "removing the volumes of a pod that is not on this node"
                    );
                    if let Err(e) = volumes.teardown_uid(&uid) {
                        tracing::warn!(uid, error = %chain(&e), "removing the volumes of a pod that is not on this node");
                    }
                }
            });
            let _ = done.await;
        }
        Ok(found.known)
    }
}

/// What pods left on this node, sorted by whether their pod is known.
#[derive(Debug, Default)]
struct Leftovers {
    /// Containers of known pods, by uid (to adopt).
    known: HashMap<String, Vec<ContainerInfo>>,
    /// What belongs to pods not known, by uid.
    stale: BTreeMap<String, Stale>,
    /// Containers with the agent's labels but without a pod uid (to remove).
    unowned: Vec<ContainerInfo>,
    /// Containers without any of the agent's labels: someone else's, even in the agent's
    /// containerd namespace (an operator may point it at a shared one). Left alone.
    foreign: Vec<ContainerInfo>,
}

/// What one pod that is not known left.
#[derive(Debug, Default)]
struct Stale {
    containers: Vec<ContainerInfo>,
    /// Its identity, checked, when its log directory's name or its containers' labels give
    /// one: what its log directory is rebuilt from.
    pod: Option<PodIds>,
}

impl Leftovers {
    /// Sorts containers (by their pod uid label), owners of networks and addresses, and the
    /// pods of log directories into known and stale.
    fn sort(
        containers: Vec<ContainerInfo>,
        owners: impl IntoIterator<Item = String>,
        log_dirs: Vec<PodIds>,
        known: &HashSet<String>,
    ) -> Leftovers {
        let mut out = Leftovers::default();
        for c in containers {
            match c.labels.get(LABEL_POD_UID).cloned() {
                Some(uid) if known.contains(&uid) => out.known.entry(uid).or_default().push(c),
                Some(uid) => {
                    let stale = out.stale.entry(uid.clone()).or_default();
                    if stale.pod.is_none() {
                        stale.pod = pod_of_labels(&c.labels, &uid);
                    }
                    stale.containers.push(c);
                }
                None if c.labels.keys().any(|k| k.starts_with(SKIFF_LABEL_PREFIX)) => {
                    out.unowned.push(c)
                }
                None => out.foreign.push(c),
            }
        }
        for owner in owners {
            if !known.contains(&owner) {
                out.stale.entry(owner).or_default();
            }
        }
        for ids in log_dirs {
            if !known.contains(ids.uid()) {
                let uid = ids.uid().to_owned();
                out.stale.entry(uid).or_default().pod = Some(ids);
            }
        }
        out
    }
}

/// The identity a container's labels give, when every part of it is valid.
fn pod_of_labels(labels: &BTreeMap<String, String>, uid: &str) -> Option<PodIds> {
    let ns = labels.get(LABEL_POD_NAMESPACE)?;
    let name = labels.get(LABEL_POD_NAME)?;
    PodIds::new(ns, name, uid).ok()
}

/// The span of one pod's worker and of the tasks it starts: everything they log carries the
/// pod's key and uid (as read from the API, so quoted: a refused pod's may be anything).
fn worker_span(pod: &str, uid: &str) -> tracing::Span {
    tracing::info_span!("pod", pod = ?pod, uid = ?uid)
}

/// A pod worker's handle: where the pod's new versions go, and whether it runs the pod (a
/// refused pod's worker only reports why).
struct Handle {
    tx: watch::Sender<Option<Arc<Pod>>>,
    admitted: bool,
    /// The worker, stopped with `run` (an agent of many in one process, a hollow node's, stops
    /// without leaving its workers behind).
    task: tokio::task::AbortHandle,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl AbortOnDrop {
    fn spawn<F>(task: F) -> AbortOnDrop
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        AbortOnDrop(tokio::spawn(task).abort_handle())
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the pods of this node from `pods` (an informer of the pods bound to it), forever.
pub async fn run(ctx: Arc<Ctx>, pods: Informer<Pod>) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Option<Arc<Pod>>)>();
    pods.on_event(move |ev| {
        let pod = ev.object();
        let live = match ev {
            Event::Deleted(_) => None,
            _ => Some(pod.clone()),
        };
        let _ = tx.send((pod.metadata.uid.clone(), live));
    });
    let _informer = AbortOnDrop::spawn(pods.clone().run());
    pods.synced().await;
    // What an earlier agent left: containers, networks, addresses and logs of pods that are
    // gone (or that this node refuses) are removed; the rest is handed to the pods' workers
    // to adopt.
    let live: HashMap<String, Arc<Pod>> = pods
        .list()
        .into_iter()
        .map(|p| (p.metadata.uid.clone(), p))
        .collect();
    let admitted: HashSet<String> = live
        .iter()
        .filter(|(_, p)| paths::admit(p).is_ok())
        .map(|(uid, _)| uid.clone())
        .collect();
    let mut by_uid = ctx.remove_leftovers(&admitted).await?;
    if let Some(proxy) = &ctx.proxy {
        // Links pinned for pods deleted while no agent ran (their veths are gone).
        let keep = admitted
            .iter()
            .map(|uid| PodNet::host_veth_name(uid))
            .collect();
        if let Err(e) = proxy.detach_all_except(&keep).await {
            tracing::warn!(error = %chain(&e), "removing stale datapath links");
        }
    }
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let spawn = |pod: Arc<Pod>, adopt: Vec<ContainerInfo>, workers: &mut HashMap<_, _>| {
        let uid = pod.metadata.uid.clone();
        let pod_key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
        let admission = paths::admit(&pod);
        let (ptx, prx) = watch::channel(Some(pod));
        let admitted = admission.is_ok();
        let ctx = ctx.clone();
        let done = done_tx.clone();
        let span = worker_span(&pod_key, &uid);
        let key = uid.clone();
        let task = tokio::spawn(
            async move {
                match admission {
                    Ok(ids) => Worker::new(ctx, prx, adopt, ids).run().await,
                    Err(invalid) => refuse(ctx, prx, invalid).await,
                }
                let _ = done.send(key);
            }
            .instrument(span),
        );
        workers.insert(
            uid,
            Handle {
                tx: ptx,
                admitted,
                task: task.abort_handle(),
            },
        );
    };
    for (uid, pod) in live {
        let adopt = by_uid.remove(&uid).unwrap_or_default();
        spawn(pod, adopt, &mut workers);
    }
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.tick().await;
    loop {
        tokio::select! {
            Some((uid, pod)) = rx.recv() => match (workers.get(&uid), pod) {
                (Some(w), pod) => {
                    let _ = w.tx.send(pod);
                }
                (None, Some(pod)) => spawn(pod, Vec::new(), &mut workers),
                (None, None) => {}
            },
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
                // A pod deleted and finished while its worker was ending is gone; one that is
                // still listed (a worker that gave up) gets a new worker.
                if let Some(p) = pods.list().into_iter().find(|p| p.metadata.uid == uid)
                    && p.metadata.deletion_timestamp.is_none()
                {
                    spawn(p, Vec::new(), &mut workers);
                }
            }
            _ = sweep.tick() => {
                // Anything a worker failed to remove, or that appeared under this node's
                // containerd namespace without a pod of it: nothing runs for a pod not known.
                let known: HashSet<String> = workers
                    .iter()
                    .filter(|(_, w)| w.admitted)
                    .map(|(uid, _)| uid.clone())
                    .collect();
                if let Err(e) = ctx.remove_leftovers(&known).await {
                    tracing::warn!(error = %chain(&e), "sweeping for leftovers of pods not on this node");
                }
            }
            else => return Ok(()),
        }
    }
}

/// Runs a pod this node refuses (an identifier of it fails the API's rules, so it was written
/// past the API): nothing of it is made on the host. Its status says why, written once (a
/// failed write is retried with a growing back-off); once it is deleted, it is deleted for
/// good.
async fn refuse(ctx: Arc<Ctx>, mut rx: watch::Receiver<Option<Arc<Pod>>>, invalid: InvalidPod) {
    let Some(mut pod) = rx.borrow().clone() else {
        return;
    };
    let uid = pod.metadata.uid.clone();
    let name = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
    let message = format!("Pod was rejected by node {}: {invalid}", ctx.node);
    tracing::warn!(pod = %name, uid = ?uid, reason = %invalid, "refusing a pod that breaks the API's rules: nothing of it is made on this node");
    let mut backoff = STATUS_RETRY;
    let mut retry: Option<Instant> = None;
    loop {
        match rx.borrow_and_update().clone() {
            None => return,
            Some(p) => {
                if p.metadata.revision() >= pod.metadata.revision() {
                    pod = p;
                }
            }
        }
        if pod.metadata.deletion_timestamp.is_some() {
            delete_for_good(&ctx, &pod.metadata.namespace, &pod.metadata.name, &uid).await;
            return;
        }
        if retry.is_none_or(|t| t <= Instant::now())
            && !status::is_refused(&pod.status, REASON_INVALID_POD, &message)
        {
            retry = None;
            let mut p = (*pod).clone();
            p.status = status::refused(
                &pod,
                REASON_INVALID_POD,
                &message,
                &ctx.host_ip.to_string(),
                &time::now(),
            );
            match ctx.api.update_status(&p).await {
                Ok(p) => {
                    tracing::info!(pod = %name, reason = REASON_INVALID_POD, "wrote the refused pod's Failed status");
                    pod = Arc::new(p);
                    backoff = STATUS_RETRY;
                }
                Err(e) if e.is_conflict() => {
                    // A newer version: retry on it; if it is gone or another pod, wait for
                    // the informer to say so.
                    if let Ok(p) = ctx
                        .api
                        .get(&pod.metadata.namespace, &pod.metadata.name)
                        .await
                        && p.metadata.uid == uid
                    {
                        pod = Arc::new(p);
                        retry = Some(Instant::now() + STATUS_RETRY);
                    }
                }
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, retry_in = ?backoff, "writing the pod status");
                    retry = Some(Instant::now() + backoff);
                    backoff = next_backoff(backoff, &e);
                }
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            () = sleep_until(retry) => {}
        }
    }
}

/// The wait after the next failed status write, after one that waited `now` and failed with
/// `e`: doubled, up to a minute when the API refused the write for good (it will refuse it
/// again until something changes), up to a few seconds otherwise.
fn next_backoff(now: Duration, e: &ClientError) -> Duration {
    let permanent = matches!(e.code(), Code::InvalidArgument | Code::PermissionDenied);
    let max = if permanent {
        STATUS_BACKOFF_MAX
    } else {
        STATUS_BACKOFF_TRANSIENT
    };
    (now * 2).min(max)
}

/// Deletes the pod `namespace/name` for good (grace 0), only while it is still the one with
/// `uid`; retried with back-off until the API answers.
async fn delete_for_good(ctx: &Ctx, namespace: &str, name: &str, uid: &str) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let r = ctx.api.delete(namespace, name, uid).await;
        match r {
            Ok(_) => return,
            Err(e) if e.is_not_found() || e.is_conflict() => return,
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "deleting the pod; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Something that happened to one of a worker's containers.
#[derive(Debug)]
enum Happened {
    /// A pull of container `index`'s image ended: the image, or the reason it failed.
    Pulled {
        index: usize,
        result: Result<Image, String>,
    },
    Exited {
        index: usize,
        attempt: u32,
        exit: Exit,
    },
    Probed {
        index: usize,
        attempt: u32,
        kind: Kind,
        result: Result<(), Failure>,
    },
    /// Container `index`'s postStart hook of `attempt` ended.
    PostStart {
        index: usize,
        attempt: u32,
        result: Result<(), Failure>,
    },
}

/// One container of a pod, as its worker tracks it.
#[derive(Debug)]
struct Ctr {
    spec: Container,
    role: Role,
    /// Its place among all the pod's containers: init containers first, then the app
    /// containers (a pod without init containers numbers its containers as before).
    index: usize,
    /// The attempt the next or current container is (0 for the first).
    attempt: u32,
    /// Restarts done so far (the attempt number of the last container started).
    restarts: u32,
    id: Option<String>,
    image: Option<Image>,
    phase: Phase,
    started_at: Option<SystemTime>,
    last_exit: Option<ContainerStateTerminated>,
    ready: bool,
    restart_at: Option<Instant>,
    backoff: Duration,
    /// The image pull back-off: the next pull not before this (the kubelet's, per container
    /// image), and the wait after the next failure.
    pull_retry_at: Option<Instant>,
    pull_backoff: Duration,
    /// A pull of the image runs (in a task of its own, so the worker goes on answering
    /// deletions and writing statuses meanwhile).
    pulling: bool,
    /// The image the last pull brought, for the start it was made for.
    pulled: Option<Image>,
    probes: Vec<JoinHandle<()>>,
    readiness: Counter,
    liveness: Counter,
    startup: Counter,
    /// The startup probe passed (or there is none) since the current attempt started: until
    /// then readiness and liveness probes wait, and a sidecar holds back the containers after
    /// it.
    started: bool,
    /// The postStart hook of the current attempt runs: the container is not reported running
    /// yet and the containers after it wait (kubelet's start blocks on the hook).
    hook_running: bool,
    /// It has let the containers after it start once: a sidecar restarting later holds
    /// nothing back (kubelet's order applies while the pod initializes).
    up_once: bool,
    /// When the current attempt started, on the agent's clock (probe delays count from it).
    run_started: Option<Instant>,
    /// Why the last attempt's postStart hook failed (kubelet's `PostStartHookError`), shown
    /// while the container waits for its next start.
    hook_error: Option<String>,
    /// The task running the postStart hook (it ends with the container's attempt).
    post_start: Option<AbortOnDrop>,
    killing: bool,
    /// A container of the next attempt's id may exist (a create that failed half way, or an
    /// earlier agent's): it is removed before the create.
    maybe_leftover: bool,
}

impl Ctr {
    fn stop_probes(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
        self.readiness.reset();
        self.liveness.reset();
        self.startup.reset();
    }

    /// Exited 0 and will not run again (a regular init container that completed).
    fn succeeded(&self) -> bool {
        matches!(self.phase, Phase::Done)
            && self.last_exit.as_ref().is_some_and(|e| e.exit_code == 0)
    }

    /// Running, past its startup probe and its postStart hook: the containers after it may
    /// start.
    fn started_up(&self) -> bool {
        matches!(self.phase, Phase::Running { .. }) && self.started && !self.hook_running
    }

    /// The containers after this one may start: a regular init container completed, a
    /// sidecar started up, an app container is past its postStart hook.
    fn lets_next_start(&self) -> bool {
        match self.role {
            Role::Init => self.succeeded(),
            Role::Sidecar => self.started_up(),
            Role::App => !self.hook_running,
        }
    }
}

/// The waiting reason of a container that has not been created yet: kubelet's
/// `PodInitializing` in a pod with init containers, `ContainerCreating` otherwise.
fn creating_reason(pod: &Pod) -> &'static str {
    if pod.spec.init_containers.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    }
}

struct Worker {
    ctx: Arc<Ctx>,
    rx: watch::Receiver<Option<Arc<Pod>>>,
    pod: Arc<Pod>,
    /// The pod's identity, checked when the worker started: every path, id and label of the
    /// pod is made from this (a later version of the pod cannot change it).
    ids: PodIds,
    uid: String,
    ctrs: Vec<Ctr>,
    adopt: Vec<ContainerInfo>,
    net: Option<PodNetwork>,
    net_error: String,
    net_retry: Option<Instant>,
    /// The service datapath is attached to the pod's host veth.
    attached: bool,
    /// The pod's volumes as last set up (by name); `None` until the first set-up succeeded.
    pod_volumes: Option<BTreeMap<String, PodVolume>>,
    /// The next set-up (a refresh, or a retry after a failure).
    volumes_at: Option<Instant>,
    /// Why the last set-up failed (kubelet's FailedMount event message), logged once per
    /// change.
    volumes_error: String,
    events_tx: mpsc::UnboundedSender<Happened>,
    events: mpsc::UnboundedReceiver<Happened>,
    start_time: String,
    status_retry: Option<Instant>,
    /// The wait after the next failed status write.
    status_backoff: Duration,
    /// Every app container has exited for good: the sidecars are being stopped and are not
    /// restarted.
    completing: bool,
}

impl Worker {
    fn new(
        ctx: Arc<Ctx>,
        rx: watch::Receiver<Option<Arc<Pod>>>,
        adopt: Vec<ContainerInfo>,
        ids: PodIds,
    ) -> Worker {
        let pod = rx.borrow().clone().unwrap_or_default();
        let (events_tx, events) = mpsc::unbounded_channel();
        let inits = pod.spec.init_containers.iter().map(|c| {
            let sidecar = c.restart_policy.as_deref() == Some("Always");
            (if sidecar { Role::Sidecar } else { Role::Init }, c)
        });
        let apps = pod.spec.containers.iter().map(|c| (Role::App, c));
        let creating = creating_reason(&pod);
        let ctrs = inits
            .chain(apps)
            .enumerate()
            .map(|(index, (role, spec))| Ctr {
                spec: spec.clone(),
                role,
                index,
                attempt: 0,
                restarts: 0,
                id: None,
                image: None,
                phase: Phase::Waiting {
                    reason: creating.into(),
                    message: String::new(),
                },
                started_at: None,
                last_exit: None,
                ready: false,
                restart_at: None,
                backoff: ctx.backoff_initial,
                pull_retry_at: None,
                pull_backoff: Duration::ZERO,
                pulling: false,
                pulled: None,
                probes: Vec::new(),
                readiness: Counter::default(),
                liveness: Counter::default(),
                startup: Counter::default(),
                started: false,
                hook_running: false,
                hook_error: None,
                up_once: false,
                run_started: None,
                post_start: None,
                killing: false,
                maybe_leftover: !adopt.is_empty(),
            })
            .collect();
        Worker {
            uid: ids.uid().to_owned(),
            ids,
            start_time: pod.status.start_time.clone().unwrap_or_else(time::now),
            pod,
            ctx,
            rx,
            ctrs,
            adopt,
            net: None,
            net_error: String::new(),
            net_retry: None,
            attached: false,
            pod_volumes: None,
            volumes_at: None,
            volumes_error: String::new(),
            events_tx,
            events,
            status_retry: None,
            status_backoff: STATUS_RETRY,
            completing: false,
        }
    }

    fn name(&self) -> String {
        self.ids.to_string()
    }

    async fn run(mut self) {
        self.restore_counts();
        self.adopt().await;
        loop {
            let latest = self.rx.borrow_and_update().clone();
            match latest {
                None => {
                    self.terminate(Duration::ZERO, false).await;
                    return;
                }
                Some(p) => {
                    // Another object with this uid (only a write past the API makes one) is
                    // not this pod.
                    let same = p.metadata.namespace == self.ids.namespace()
                        && p.metadata.name == self.ids.name();
                    if same && p.metadata.revision() >= self.pod.metadata.revision() {
                        self.pod = p;
                    }
                }
            }
            if self.pod.metadata.deletion_timestamp.is_some() {
                let grace = self
                    .pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or(self.pod.spec.termination_grace_period_seconds)
                    .unwrap_or(30)
                    .max(0);
                self.terminate(Duration::from_secs(grace as u64), true)
                    .await;
                return;
            }
            self.sync().await;
            self.write_status().await;
            let wake = self.next_wake();
            tokio::select! {
                changed = self.rx.changed() => if changed.is_err() {
                    // The manager is gone (the agent is stopping): leave everything running.
                    return;
                },
                Some(h) = self.events.recv() => {
                    self.happened(h).await;
                    while let Ok(h) = self.events.try_recv() {
                        self.happened(h).await;
                    }
                }
                () = sleep_until(wake) => {}
            }
        }
    }

    /// When the worker must look again. A container's start that is due but held back by one
    /// before it (an init container, a sidecar, a postStart hook) waits for that one's event,
    /// not for the clock: a time already past is no reason to wake.
    fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        self.ctrs
            .iter()
            .filter_map(|c| c.restart_at.filter(|t| *t > now))
            .chain(self.net_retry)
            .chain(self.status_retry)
            .chain(self.volumes_at)
            .min()
    }

    /// Takes the restart counts and last exits of the containers from the status an earlier
    /// agent wrote, for those it left no container of (one waiting out its back-off): the
    /// next attempt follows the last, and the pod does not look as if nothing had run.
    /// Adopted containers take theirs from their labels afterwards.
    fn restore_counts(&mut self) {
        let status = &self.pod.status;
        let old = status
            .init_container_statuses
            .iter()
            .chain(&status.container_statuses);
        for s in old {
            let Some(last) = s.last_state.terminated.clone() else {
                continue;
            };
            let Some(c) = self.ctrs.iter_mut().find(|c| c.spec.name == s.name) else {
                continue;
            };
            c.restarts = u32::try_from(s.restart_count).unwrap_or(0);
            c.attempt = c.restarts.saturating_add(1);
            c.last_exit = Some(last);
            c.up_once = true;
        }
    }

    /// Takes over what an earlier agent left for this pod: its network, its running
    /// containers (their exits are awaited again) and its restart counts.
    async fn adopt(&mut self) {
        let adopt = std::mem::take(&mut self.adopt);
        if adopt.is_empty() {
            return;
        }
        if let Ok(Some(net)) = self.ctx.network.inspect(&self.uid).await {
            self.net = Some(net);
        }
        let mut newest: BTreeMap<usize, &ContainerInfo> = BTreeMap::new();
        for c in &adopt {
            let Some(index) = c.labels.get(LABEL_INDEX).and_then(|i| i.parse().ok()) else {
                continue;
            };
            let attempt = |c: &ContainerInfo| {
                c.labels
                    .get(LABEL_ATTEMPT)
                    .and_then(|a| a.parse::<u32>().ok())
                    .unwrap_or(0)
            };
            if newest.get(&index).is_none_or(|n| attempt(n) < attempt(c)) {
                newest.insert(index, c);
            }
        }
        let keep: HashSet<String> = newest
            .values()
            .filter(|c| matches!(c.state, TaskState::Running | TaskState::Stopped))
            .map(|c| c.id.clone())
            .collect();
        for c in &adopt {
            if !keep.contains(&c.id)
                && let Err(e) = self.ctx.runtime.remove(&c.id).await
            {
                tracing::warn!(container = %c.id, error = %chain(&e), "removing an old container");
            }
        }
        let status = &self.pod.status;
        let old_statuses: Vec<_> = status
            .init_container_statuses
            .iter()
            .chain(&status.container_statuses)
            .cloned()
            .collect();
        let apps_adopted = newest.iter().any(|(i, c)| {
            keep.contains(&c.id) && self.ctrs.get(*i).is_some_and(|c| c.role == Role::App)
        });
        for (index, info) in newest {
            if !keep.contains(&info.id) {
                continue;
            }
            let Some(ctr) = self.ctrs.get_mut(index) else {
                continue;
            };
            ctr.attempt = info
                .labels
                .get(LABEL_ATTEMPT)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            ctr.restarts = ctr.attempt;
            ctr.id = Some(info.id.clone());
            ctr.image = self.ctx.runtime.image(&ctr.spec.image).await.ok().flatten();
            let old = old_statuses.iter().find(|s| s.name == ctr.spec.name);
            ctr.last_exit = old.and_then(|s| s.last_state.terminated.clone());
            let started = old
                .and_then(|s| s.state.running.as_ref())
                .and_then(|r| r.started_at.clone())
                .and_then(|t| time::parse(&t))
                .or(info.started_at)
                .unwrap_or_else(SystemTime::now);
            ctr.started_at = Some(started);
            let ran = SystemTime::now()
                .duration_since(started)
                .unwrap_or_default();
            ctr.run_started = Some(Instant::now().checked_sub(ran).unwrap_or_else(Instant::now));
            // The pod got past this container before.
            ctr.up_once = true;
            ctr.phase = Phase::Running {
                started_at: time::format(started),
            };
            // Readiness (and having started) carries over until the first probe says
            // otherwise, so adopting a pod does not flap it out of its Service.
            let same = old.is_some_and(|s| s.container_id.ends_with(&info.id));
            ctr.ready = same && old.is_some_and(|s| s.ready);
            ctr.started = ctr.spec.startup_probe.is_none()
                || (same && old.is_some_and(|s| s.started == Some(true)));
            tracing::info!(pod = %self.pod.metadata.name, container = %ctr.spec.name, id = %info.id, state = ?info.state, "adopted a container");
            let (index, attempt, id) = (ctr.index, ctr.attempt, info.id.clone());
            // One that exited meanwhile is taken as exited now (a completed init container
            // must not count as running), else its exit is awaited.
            if info.state == TaskState::Stopped
                && let Ok(Ok(exit)) = tokio::time::timeout(RETRY, self.ctx.runtime.wait(&id)).await
            {
                self.exited(index, attempt, exit).await;
                continue;
            }
            self.watch_exit(index, attempt, id);
            self.start_probes(index);
        }
        // An app container ran: the pod was initialized, whether or not the regular init
        // containers' containers are still there (kubelet's rule).
        if apps_adopted {
            for c in self
                .ctrs
                .iter_mut()
                .filter(|c| c.role == Role::Init && c.id.is_none())
            {
                let old = old_statuses.iter().find(|s| s.name == c.spec.name);
                c.last_exit = Some(
                    old.and_then(|s| s.state.terminated.clone())
                        .filter(|t| t.exit_code == 0)
                        .unwrap_or_else(|| status::terminated(0, false, None, time::now(), "")),
                );
                c.phase = Phase::Done;
            }
        }
        self.publish_attempts();
    }

    fn publish_attempts(&self) {
        let containers = self
            .ctrs
            .iter()
            .map(|c| AttemptInfo {
                container: c.spec.name.clone(),
                attempt: c.attempt,
                running: matches!(c.phase, Phase::Running { .. }),
            })
            .collect();
        self.ctx.set_attempts(
            &self.uid,
            Some(PodAttempts {
                pod: self.ids.clone(),
                containers,
            }),
        );
    }

    fn watch_exit(&self, index: usize, attempt: u32, id: String) {
        let runtime = self.ctx.runtime.clone();
        let tx = self.events_tx.clone();
        tokio::spawn(
            async move {
                loop {
                    match runtime.wait(&id).await {
                        Ok(exit) => {
                            let _ = tx.send(Happened::Exited {
                                index,
                                attempt,
                                exit,
                            });
                            return;
                        }
                        Err(e) => {
                            if tx.is_closed() {
                                return;
                            }
                            tracing::warn!(container = %id, error = %chain(&e), "waiting for a container; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
            .in_current_span(),
        );
    }

    /// Brings the pod forward: network, then every container that should run and may start.
    async fn sync(&mut self) {
        if self.net.is_none() {
            if self.net_retry.is_some_and(|t| t > Instant::now()) {
                return;
            }
            match self.setup_network().await {
                Ok(net) => {
                    self.net = Some(net);
                    self.net_error.clear();
                    self.net_retry = None;
                }
                Err(e) => {
                    tracing::warn!(pod = %self.name(), error = %chain(&e), "setting up the pod network");
                    self.net_error = format!("pod network: {}", chain(&e));
                    self.net_retry = Some(Instant::now() + RETRY);
                    return;
                }
            }
        }
        // Containers start only once Services are reachable from the pod.
        if !self.attached
            && let Some(proxy) = &self.ctx.proxy
        {
            if self.net_retry.is_some_and(|t| t > Instant::now()) {
                return;
            }
            let Some(ip) = self.net.as_ref().map(|n| n.ip) else {
                return;
            };
            if let Err(e) = proxy.attach(&PodNet::host_veth_name(&self.uid), ip).await {
                tracing::warn!(pod = %self.name(), error = %chain(&e), "attaching the service datapath");
                self.net_error = format!("service datapath: {}", chain(&e));
                self.net_retry = Some(Instant::now() + RETRY);
                return;
            }
            self.net_error.clear();
            self.net_retry = None;
        }
        self.attached = true;
        if !self.sync_volumes().await {
            // As kubelet: the containers wait in ContainerCreating until every volume is
            // there.
            return;
        }
        // In order: each init container completes (a sidecar starts up) before the next one
        // starts, and the app containers start once all of them have; an app container's
        // postStart hook holds back the ones after it.
        for i in 0..self.ctrs.len() {
            let now = Instant::now();
            let c = &self.ctrs[i];
            let due = match &c.phase {
                Phase::Waiting { .. } if c.pulling => false,
                Phase::Waiting { .. } => c.restart_at.is_none_or(|t| t <= now),
                Phase::BackOff { .. } => c.restart_at.is_some_and(|t| t <= now),
                Phase::Running { .. } | Phase::Done => false,
            };
            // Sidecars are not started again once the app containers are done.
            if due && !(c.role == Role::Sidecar && self.completing) {
                self.start_container(i).await;
            }
            let c = &mut self.ctrs[i];
            if c.lets_next_start() {
                c.up_once = true;
            } else if !(c.role == Role::Sidecar && c.up_once) {
                break;
            }
        }
        self.stop_sidecars_when_done();
    }

    /// Once every app container has exited for good, or a regular init container failed for
    /// good (the pod failed), the sidecars are stopped (last one first, within one grace
    /// period of the pod's, each with its preStop hook), and not restarted.
    fn stop_sidecars_when_done(&mut self) {
        let apps_done = self
            .ctrs
            .iter()
            .filter(|c| c.role == Role::App)
            .all(|c| matches!(c.phase, Phase::Done));
        let init_failed = self
            .ctrs
            .iter()
            .any(|c| c.role == Role::Init && matches!(c.phase, Phase::Done) && !c.succeeded());
        if !(apps_done || init_failed)
            || self.completing
            || !self.ctrs.iter().any(|c| c.role == Role::Sidecar)
        {
            return;
        }
        self.completing = true;
        tracing::info!(pod = %self.name(), "the app containers are done; stopping the sidecars");
        let grace = self.grace_period();
        let pod = self.name();
        let mut stops = Vec::new();
        for c in self
            .ctrs
            .iter_mut()
            .rev()
            .filter(|c| c.role == Role::Sidecar)
        {
            c.stop_probes();
            c.restart_at = None;
            match &c.phase {
                Phase::Running { .. } => {
                    let pre_stop = PreStop::of(&pod, c, self.net.as_ref(), &self.ctx);
                    c.killing = true;
                    if let Some(id) = c.id.clone() {
                        stops.push((id, pre_stop));
                    }
                }
                // One waiting for its next start stays stopped.
                _ => c.phase = Phase::Done,
            }
        }
        let runtime = self.ctx.runtime.clone();
        // One grace period for all of them, each getting at least kubelet's minimum.
        let deadline = Instant::now() + grace;
        tokio::spawn(
            async move {
                for (id, pre_stop) in stops {
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(MIN_GRACE_AFTER_HOOK);
                    stop_container(runtime.clone(), id, pre_stop, left).await;
                }
            }
            .in_current_span(),
        );
    }

    /// The pod's termination grace period (30 s unless it says otherwise).
    fn grace_period(&self) -> Duration {
        Duration::from_secs(
            self.pod
                .spec
                .termination_grace_period_seconds
                .unwrap_or(30)
                .max(0) as u64,
        )
    }

    /// Sets up the pod's volumes the first time and refreshes them every
    /// `ctx.volume_resync` (only changed files are written, atomically); a failure is retried
    /// shortly. Whether every volume is there.
    async fn sync_volumes(&mut self) -> bool {
        if self.pod.spec.volumes.is_empty() {
            self.pod_volumes.get_or_insert_default();
            return true;
        }
        let now = Instant::now();
        if self.volumes_at.is_some_and(|t| t > now) {
            return self.pod_volumes.is_some();
        }
        let result = self.set_up_volumes().await;
        match result {
            Ok(v) => {
                if !self.volumes_error.is_empty() {
                    tracing::info!(pod = %self.name(), "the pod's volumes are set up");
                    self.show_volumes_error("");
                }
                self.volumes_error.clear();
                self.pod_volumes = Some(v);
                self.volumes_at = Some(now + self.ctx.volume_resync);
            }
            Err(message) => {
                if message != self.volumes_error {
                    // kubelet's FailedMount warning event.
                    tracing::warn!(pod = %self.name(), reason = "FailedMount", %message, "setting up the pod's volumes");
                }
                self.show_volumes_error(&message);
                self.volumes_error = message;
                self.volumes_at = Some(now + RETRY);
            }
        }
        self.pod_volumes.is_some()
    }

    /// kubelet's FailedMount event has no place in Skiff (no Events kind): its text goes into
    /// the waiting message of each container held in `ContainerCreating` by the volumes, and
    /// goes once they are set up (`message` empty). A message of something else is kept.
    fn show_volumes_error(&mut self, message: &str) {
        for c in &mut self.ctrs {
            if let Phase::Waiting { reason, message: m } = &mut c.phase
                && (reason == "ContainerCreating" || reason == "PodInitializing")
                && (m.is_empty() || *m == self.volumes_error)
            {
                message.clone_into(m);
            }
        }
    }

    async fn set_up_volumes(&self) -> Result<BTreeMap<String, PodVolume>, String> {
        let Some(volumes) = self.ctx.volumes.clone() else {
            return Err("this node has no directory for pod volumes".to_owned());
        };
        let (config_maps, secrets) = volume_objects(self.ctx.objects.as_ref(), &self.pod).await?;
        let facts = pod_facts(&self.ctx, self.net.as_ref());
        let (ids, pod) = (self.ids.clone(), self.pod.clone());
        let default_memory_size = u64::try_from(facts.allocatable_memory).unwrap_or(0);
        let logs = self.ctx.paths.logs().to_owned();
        tokio::task::spawn_blocking(move || {
            // fsGroup is an id inside a hostUsers: false pod's namespace.
            let user_namespace = runtime::userns::pod_range(&pod.spec, &logs, ids.uid())
                .map_err(|e| e.to_string())?;
            let inputs = volume_pod::Inputs {
                config_maps: &config_maps,
                secrets: &secrets,
                facts: &facts,
                default_memory_size,
                user_namespace,
            };
            volume_pod::set_up(&volumes, &ids, &pod, inputs).map_err(|e| e.message())
        })
        .await
        .map_err(|e| format!("setting up volumes: {e}"))?
    }

    async fn setup_network(&self) -> Result<PodNetwork, podnet::Error> {
        self.ctx.network.setup(&self.uid).await
    }

    async fn start_container(&mut self, i: usize) {
        let pod = self.pod.clone();
        let Some(net) = self.net.clone() else { return };
        let ctx = self.ctx.clone();
        let c = &mut self.ctrs[i];
        c.restart_at = None;
        let Some(image) = ensure_image(&ctx, &pod, c, &self.events_tx).await else {
            return;
        };
        let environment = match container_env(&ctx, &pod, &c.spec, &net).await {
            Ok(env) => env,
            Err(message) => {
                // As kubelet: the container waits, and the next sync tries again with what
                // the API has then.
                tracing::warn!(pod = %self.ids, container = %c.spec.name, error = %message, "making the container's configuration");
                // The image stays for the next try: it is the same start.
                c.pulled = Some(image.clone());
                c.phase = Phase::Waiting {
                    reason: "CreateContainerConfigError".into(),
                    message,
                };
                c.restart_at = Some(Instant::now() + RETRY);
                return;
            }
        };
        // The securityContext as kubelet merges and checks it; a pod with hostUsers: false
        // gets its own id range (claimed once, kept across agent restarts).
        let security = runtime::userns::pod_range(&pod.spec, ctx.paths.logs(), &self.uid)
            .and_then(|ns| Security::from_api(&pod.spec, &c.spec, &ctx.node_security, ns))
            .map(|s| s.with_image_user(&image.user))
            .and_then(|s| s.check(&self.ids.kubelet_name(), &c.spec.name).map(|()| s));
        let security = match security {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pod = %self.ids, container = %c.spec.name, error = %e, "the container's securityContext cannot be honoured");
                // The image stays for the next try: it is the same start.
                c.pulled = Some(image.clone());
                c.phase = Phase::Waiting {
                    reason: "CreateContainerConfigError".into(),
                    message: e.to_string(),
                };
                c.restart_at = Some(Instant::now() + RETRY);
                return;
            }
        };
        let mounts = match (&ctx.volumes, &self.pod_volumes) {
            (Some(volumes), Some(pod_volumes)) if !c.spec.volume_mounts.is_empty() => {
                let (volumes, ids, spec, pod_volumes) = (
                    volumes.clone(),
                    self.ids.clone(),
                    c.spec.clone(),
                    pod_volumes.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    volume_pod::container_mounts(&volumes, &ids, &spec, &pod_volumes)
                        .map_err(|e| e.message())
                })
                .await
                .unwrap_or_else(|e| Err(format!("preparing the container's mounts: {e}")))
            }
            _ if c.spec.volume_mounts.is_empty() => Ok(Vec::new()),
            _ => Err("this node has no directory for pod volumes".to_owned()),
        };
        let mut mounts = match mounts {
            Ok(m) => m,
            Err(message) => {
                tracing::warn!(pod = %self.ids, container = %c.spec.name, error = %message, "preparing the container's mounts");
                // The image stays for the next try: it is the same start.
                c.pulled = Some(image.clone());
                c.phase = Phase::Waiting {
                    reason: "CreateContainerConfigError".into(),
                    message,
                };
                c.restart_at = Some(Instant::now() + RETRY);
                return;
            }
        };
        // The file the container may leave its termination message in, as kubelet's: a
        // failure to make it is logged and the container starts without it.
        if let Some(volumes) = &ctx.volumes {
            let made = match volumes.pod_dir(&self.ids) {
                Ok(dir) => {
                    let (name, path, attempt) = (
                        c.spec.name.clone(),
                        c.spec.termination_message_path.clone(),
                        c.attempt,
                    );
                    tokio::task::spawn_blocking(move || {
                        termination::prepare(&dir, &name, attempt, &path).map_err(|e| chain(&e))
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
                }
                Err(e) => Err(chain(&e)),
            };
            match made {
                Ok(mount) => mounts.extend(mount),
                Err(e) => {
                    tracing::warn!(pod = %self.ids, container = %c.spec.name, error = %e, "making the termination message file")
                }
            }
        }
        let id = NodePaths::container_id(&self.ids, c.index, c.attempt);
        if c.maybe_leftover {
            let _ = ctx.runtime.remove(&id).await;
        }
        let ids = &self.ids;
        let result = async {
            let mut spec = container_spec(&ctx, ids, c, &image, &id, &net, &environment)
                .map_err(|source| Error::ContainerFiles { source })?;
            spec.mounts = mounts;
            spec.security = security;
            ctx.runtime
                .create(&spec)
                .await
                .map_err(Error::runtime("creating the container"))?;
            if let Err(e) = ctx.runtime.start(&id).await {
                let _ = ctx.runtime.remove(&id).await;
                return Err(Error::runtime("starting the container")(e));
            }
            Ok(())
        }
        .await;
        c.image = Some(image);
        match result {
            Ok(()) => {
                let now = SystemTime::now();
                c.id = Some(id.clone());
                c.restarts = c.attempt;
                c.started_at = Some(now);
                c.phase = Phase::Running {
                    started_at: time::format(now),
                };
                c.ready = false;
                c.killing = false;
                c.maybe_leftover = false;
                c.started = c.spec.startup_probe.is_none();
                c.hook_error = None;
                c.run_started = Some(Instant::now());
                tracing::info!(pod = %format!("{}/{}", pod.metadata.namespace, pod.metadata.name), container = %c.spec.name, attempt = c.attempt, "started a container");
                let (index, attempt) = (c.index, c.attempt);
                self.watch_exit(index, attempt, id);
                self.run_post_start(i);
                self.start_probes(i);
                self.publish_attempts();
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %chain(&e), "starting a container");
                c.maybe_leftover = true;
                c.phase = Phase::Waiting {
                    reason: "CreateContainerError".into(),
                    message: chain(&e),
                };
                c.restart_at = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).min(ctx.backoff_max);
            }
        }
    }

    /// Runs container `i`'s postStart hook, if it has one, in a task of its own: until it
    /// ends the container is not reported running and the containers after it wait; when it
    /// fails the container is killed (kubelet's `FailedPostStartHook`) and the restart policy
    /// decides what comes next. kubelet gives the hook no time limit; a day stands for none.
    fn run_post_start(&mut self, i: usize) {
        let Some(net) = self.net.clone() else { return };
        let c = &mut self.ctrs[i];
        let Some(hook) = c.spec.lifecycle.as_ref().and_then(|l| l.post_start.clone()) else {
            return;
        };
        let Some(id) = c.id.clone() else { return };
        c.hook_running = true;
        let target = Target {
            runtime: self.ctx.runtime.clone(),
            network: self.ctx.network.clone(),
            container_id: id,
            net,
        };
        let (index, attempt, container) = (c.index, c.attempt, c.spec.clone());
        let tx = self.events_tx.clone();
        c.post_start = Some(AbortOnDrop::spawn(
            async move {
                let result = probe::run_hook(&hook, &container, &target, POST_START_LIMIT).await;
                let _ = tx.send(Happened::PostStart {
                    index,
                    attempt,
                    result,
                });
            }
            .in_current_span(),
        ));
    }

    /// Starts container `i`'s probes: its startup probe alone until it passes, then its
    /// readiness and liveness probes.
    fn start_probes(&mut self, i: usize) {
        let Some(net) = self.net.clone() else { return };
        let c = &mut self.ctrs[i];
        let Some(id) = c.id.clone() else { return };
        c.stop_probes();
        let target = Target {
            runtime: self.ctx.runtime.clone(),
            network: self.ctx.network.clone(),
            container_id: id,
            net,
        };
        let probes = if c.started {
            if c.spec.readiness_probe.is_none() {
                c.ready = true;
            }
            vec![
                (Kind::Readiness, c.spec.readiness_probe.clone()),
                (Kind::Liveness, c.spec.liveness_probe.clone()),
            ]
        } else {
            vec![(Kind::Startup, c.spec.startup_probe.clone())]
        };
        for (kind, probe) in probes {
            let Some(probe) = probe else { continue };
            let ran = c.run_started.map(|t| t.elapsed()).unwrap_or_default();
            let (index, attempt) = (c.index, c.attempt);
            let container = c.spec.clone();
            let target = target.clone();
            let tx = self.events_tx.clone();
            c.probes.push(tokio::spawn(
                async move {
                    let timing = Timing::of(&probe);
                    // The delay counts from the container's start (a probe that waited for
                    // the startup probe has waited that long already).
                    tokio::time::sleep(timing.initial_delay.saturating_sub(ran)).await;
                    let mut tick = tokio::time::interval(timing.period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let result = probe::run_once(&probe, &container, &target).await;
                        if tx
                            .send(Happened::Probed {
                                index,
                                attempt,
                                kind,
                                result,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                .in_current_span(),
            ));
        }
    }

    async fn happened(&mut self, h: Happened) {
        match h {
            Happened::Pulled { index, result } => {
                if let Some(c) = self.ctrs.get_mut(index) {
                    pulled(&self.ctx, c, result);
                }
            }
            Happened::Exited {
                index,
                attempt,
                exit,
            } => self.exited(index, attempt, exit).await,
            Happened::Probed {
                index,
                attempt,
                kind,
                result,
            } => self.probed(index, attempt, kind, result),
            Happened::PostStart {
                index,
                attempt,
                result,
            } => {
                let Some(c) = self.ctrs.get_mut(index).filter(|c| c.attempt == attempt) else {
                    return;
                };
                c.hook_running = false;
                c.post_start = None;
                if let Err(e) = result {
                    let hook = c
                        .spec
                        .lifecycle
                        .as_ref()
                        .and_then(|l| l.post_start.as_ref());
                    let message = format!(
                        "{} for Container {:?} in Pod {:?} failed - error: {}",
                        hook.map(hook_name).unwrap_or_default(),
                        c.spec.name,
                        self.ids.kubelet_name(),
                        chain(&e)
                    );
                    tracing::warn!(pod = %self.ids, container = %c.spec.name, reason = "FailedPostStartHook", %message, "the postStart hook failed; killing the container");
                    c.hook_error = Some(message);
                    // As kubelet's kill: the preStop hook runs first.
                    self.kill(index, true);
                }
            }
        }
    }

    /// Container `index`'s attempt `attempt` exited: it is restarted by its role and the
    /// pod's restart policy (after the crash back-off), or done.
    async fn exited(&mut self, index: usize, attempt: u32, exit: Exit) {
        let policy = self.pod.spec.restart_policy.clone();
        let completing = self.completing;
        let Some(c) = self.ctrs.get_mut(index).filter(|c| c.attempt == attempt) else {
            return;
        };
        // Killed for a failed probe or hook: a failure, whatever its exit code.
        let killed = c.killing;
        c.stop_probes();
        c.post_start = None;
        c.hook_running = false;
        c.ready = false;
        c.started = false;
        let ran = c
            .started_at
            .and_then(|s| exit.exited_at.duration_since(s).ok());
        let id = c.id.clone().unwrap_or_default();
        let mut last_exit = status::terminated(
            exit.code,
            exit.oom_killed,
            c.started_at.map(time::format),
            time::format(exit.exited_at),
            &format!("containerd://{id}"),
        );
        // What the container left in its termination message file, or the end of its log.
        let pod_dir = self
            .ctx
            .volumes
            .as_ref()
            .and_then(|v| v.pod_dir(&self.ids).ok());
        if let Ok(log) = self.ctx.paths.log_path(&self.ids, &c.spec.name, attempt) {
            let (spec, code) = (c.spec.clone(), exit.code);
            last_exit.message = tokio::task::spawn_blocking(move || {
                termination::exit_message(pod_dir.as_deref(), &spec, attempt, code, &log)
            })
            .await
            .unwrap_or_default();
        }
        c.last_exit = Some(last_exit);
        tracing::info!(pod = %self.pod.metadata.name, container = %c.spec.name, code = exit.code, oom = exit.oom_killed, "a container exited");
        let restart = match c.role {
            // A sidecar runs as long as the app containers do.
            Role::Sidecar => !completing,
            // An init container is restarted until it completes (OnFailure), unless the pod
            // never restarts anything.
            Role::Init => policy != "Never" && (exit.code != 0 || killed),
            Role::App => match policy.as_str() {
                "Never" => false,
                "OnFailure" => exit.code != 0 || killed,
                _ => true,
            },
        };
        if !restart {
            c.phase = Phase::Done;
        } else {
            if ran.is_some_and(|r| r >= BACKOFF_RESET_AFTER) {
                c.backoff = self.ctx.backoff_initial;
            }
            let delay = c.backoff;
            c.backoff = (c.backoff * 2).min(self.ctx.backoff_max);
            c.phase = match c.hook_error.take() {
                // kubelet shows why the start failed until the next one.
                Some(message) => Phase::Waiting {
                    reason: "PostStartHookError".into(),
                    message,
                },
                None => Phase::BackOff {
                    message: format!(
                        "back-off {}s restarting failed container={} pod={}",
                        delay.as_secs_f64(),
                        c.spec.name,
                        self.ids.kubelet_name(),
                    ),
                },
            };
            c.restart_at = Some(Instant::now() + delay);
            c.attempt += 1;
            // The exited attempt's container goes; its log stays for --previous.
            if let Err(e) = self.ctx.runtime.remove(&id).await {
                tracing::warn!(container = %id, error = %chain(&e), "removing an exited container");
            }
        }
        self.publish_attempts();
    }

    /// A probe of container `index`'s attempt `attempt` answered.
    fn probed(&mut self, index: usize, attempt: u32, kind: Kind, result: Result<(), Failure>) {
        let Some(c) = self.ctrs.get_mut(index).filter(|c| c.attempt == attempt) else {
            return;
        };
        if !matches!(c.phase, Phase::Running { .. }) {
            return;
        }
        let probe = match kind {
            Kind::Readiness => c.spec.readiness_probe.as_ref(),
            Kind::Liveness => c.spec.liveness_probe.as_ref(),
            Kind::Startup => c.spec.startup_probe.as_ref(),
        };
        let Some(timing) = probe.map(Timing::of) else {
            return;
        };
        let ok = result.is_ok();
        let why = || result.as_ref().err().map(|e| chain(e)).unwrap_or_default();
        match kind {
            Kind::Readiness => {
                if let Some(v) = c.readiness.record(ok, &timing) {
                    c.ready = v;
                }
            }
            Kind::Startup if !c.started => match c.startup.record(ok, &timing) {
                Some(true) => {
                    c.started = true;
                    tracing::info!(pod = %self.pod.metadata.name, container = %c.spec.name, "the startup probe passed");
                    // Readiness and liveness probes take over.
                    self.start_probes(index);
                }
                Some(false) if !c.killing => {
                    tracing::info!(pod = %self.pod.metadata.name, container = %c.spec.name, reason = %why(), "startup probe failed; restarting the container");
                    self.kill(index, true);
                }
                _ => {}
            },
            Kind::Startup => {}
            Kind::Liveness => {
                if c.liveness.record(ok, &timing) == Some(false) && !c.killing {
                    tracing::info!(pod = %self.pod.metadata.name, container = %c.spec.name, reason = %why(), "liveness probe failed; restarting the container");
                    self.kill(index, true);
                }
            }
        }
    }

    /// Stops container `index` within the pod's grace period (its preStop hook first when
    /// `pre_stop`): the exit arrives as for any other and the restart policy decides.
    fn kill(&mut self, index: usize, pre_stop: bool) {
        let grace = self.grace_period();
        let pod = self.name();
        let Some(c) = self.ctrs.get_mut(index) else {
            return;
        };
        c.killing = true;
        let pre_stop = pre_stop
            .then(|| PreStop::of(&pod, c, self.net.as_ref(), &self.ctx))
            .flatten();
        let id = c.id.clone().unwrap_or_default();
        tokio::spawn(
            stop_container(self.ctx.runtime.clone(), id, pre_stop, grace).in_current_span(),
        );
    }

    /// Writes the pod status if it changed (compare-and-swap; a conflict is retried shortly,
    /// any other failure after a back-off that grows per failure, so a write the API refuses
    /// for good is not repeated five times a second).
    async fn write_status(&mut self) {
        if self.status_retry.is_some_and(|t| t > Instant::now()) {
            return;
        }
        let reports: Vec<ContainerReport> = self
            .ctrs
            .iter()
            .map(|c| ContainerReport {
                name: c.spec.name.clone(),
                image: c.spec.image.clone(),
                image_id: c.image.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
                container_id: c
                    .id
                    .as_ref()
                    .map(|i| format!("containerd://{i}"))
                    .unwrap_or_default(),
                role: c.role,
                // As kubelet's: not running until the postStart hook is done.
                phase: if c.hook_running {
                    Phase::Waiting {
                        reason: creating_reason(&self.pod).into(),
                        message: String::new(),
                    }
                } else {
                    c.phase.clone()
                },
                last_exit: c.last_exit.clone(),
                // kubelet reports a completed init container ready.
                ready: (c.role == Role::Init && c.succeeded()) || (c.ready && c.started_up()),
                started: c.started_up(),
                restart_count: i32::try_from(c.restarts).unwrap_or(i32::MAX),
            })
            .collect();
        let facts = PodFacts {
            host_ip: self.ctx.host_ip.to_string(),
            pod_ip: self.net.as_ref().map(|n| n.ip.to_string()),
            start_time: self.start_time.clone(),
            message: self.net_error.clone(),
        };
        let status = status::pod_status(&self.pod, &facts, &reports, &time::now());
        if status == self.pod.status {
            self.status_retry = None;
            return;
        }
        let mut pod = (*self.pod).clone();
        pod.status = status;
        match self.ctx.api.update_status(&pod).await {
            Ok(p) => {
                self.pod = Arc::new(p);
                self.status_retry = None;
                self.status_backoff = STATUS_RETRY;
            }
            Err(e) if e.is_conflict() => {
                // Retried on the newer version; if the name holds another pod now, the
                // informer says when this one is gone.
                self.status_retry = None;
                if let Ok(p) = self
                    .ctx
                    .api
                    .get(self.ids.namespace(), self.ids.name())
                    .await
                    && p.metadata.uid == self.uid
                {
                    self.pod = Arc::new(p);
                    self.status_retry = Some(Instant::now() + STATUS_RETRY);
                }
            }
            Err(e) => {
                if !e.is_not_found() {
                    tracing::warn!(pod = %self.name(), error = %e, retry_in = ?self.status_backoff, "writing the pod status");
                }
                self.status_retry = Some(Instant::now() + self.status_backoff);
                self.status_backoff = next_backoff(self.status_backoff, &e);
            }
        }
    }

    /// Stops every container (all at once, each: preStop hook, SIGTERM, SIGKILL after
    /// `grace`), removes containers, network, address and logs, and when `finish` deletes the
    /// pod for good. The network stays until every container is stopped, so a hook's container
    /// keeps serving the connections it has.
    async fn terminate(&mut self, grace: Duration, finish: bool) {
        tracing::info!(pod = %self.name(), grace = ?grace, "stopping the pod");
        let started = Instant::now();
        for c in &mut self.ctrs {
            c.stop_probes();
            c.post_start = None;
        }
        let pod = self.name();
        let stop = |c: &Ctr, grace: Duration| {
            let id = c.id.clone()?;
            // No time for a hook at grace 0; a container being killed for its liveness
            // probe has had its hook already.
            let pre_stop = (!grace.is_zero() && !c.killing)
                .then(|| PreStop::of(&pod, c, self.net.as_ref(), &self.ctx))
                .flatten();
            Some(tokio::spawn(
                stop_container(self.ctx.runtime.clone(), id, pre_stop, grace).in_current_span(),
            ))
        };
        // The app and regular init containers all at once; then the sidecars, last one first,
        // each with what is left of the grace period (kubelet's order).
        let stops: Vec<_> = self
            .ctrs
            .iter()
            .filter(|c| c.role != Role::Sidecar)
            .filter_map(|c| stop(c, grace))
            .collect();
        for s in stops {
            let _ = s.await;
        }
        for c in self.ctrs.iter().rev().filter(|c| c.role == Role::Sidecar) {
            let left = grace.saturating_sub(started.elapsed());
            let left = if grace.is_zero() {
                grace
            } else {
                left.max(MIN_GRACE_AFTER_HOOK)
            };
            if let Some(s) = stop(c, left) {
                let _ = s.await;
            }
        }
        let mine: Vec<ContainerInfo> = match self.ctx.runtime.list().await {
            Ok(all) => all
                .into_iter()
                .filter(|c| c.labels.get(LABEL_POD_UID) == Some(&self.uid))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %chain(&e), "listing containers");
                Vec::new()
            }
        };
        let log_dir = match self.ctx.paths.pod_log_dir(&self.ids) {
            Ok(dir) => Some(dir),
            Err(e) => {
                tracing::warn!(pod = %self.name(), error = %e, "leaving the pod's logs");
                None
            }
        };
        self.ctx.remove_all(&self.uid, &mine, log_dir).await;
        // Volumes go once no container uses them.
        if let Some(volumes) = self.ctx.volumes.clone() {
            let ids = self.ids.clone();
            match tokio::task::spawn_blocking(move || volumes.teardown(&ids)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(pod = %self.name(), error = %chain(&e), "tearing down the pod's volumes (the sweep retries)")
                }
                Err(e) => {
                    tracing::warn!(pod = %self.name(), error = %e, "tearing down the pod's volumes")
                }
            }
        }
        // The pod's user namespace range is free once nothing of the pod is left.
        runtime::userns::release(self.ctx.paths.logs(), &self.uid);
        if finish {
            delete_for_good(&self.ctx, self.ids.namespace(), self.ids.name(), &self.uid).await;
        }
    }
}

/// A hook as kubelet's messages name it: `Exec lifecycle hook ([argv])`, `HTTP lifecycle hook
/// (path)`, `Sleep lifecycle hook (seconds)`.
fn hook_name(hook: &LifecycleHandler) -> String {
    if let Some(x) = &hook.exec {
        format!("Exec lifecycle hook ([{}])", x.command.join(" "))
    } else if let Some(h) = &hook.http_get {
        format!("HTTP lifecycle hook ({})", h.path)
    } else if let Some(sl) = &hook.sleep {
        format!("Sleep lifecycle hook ({})", sl.seconds)
    } else {
        "Lifecycle hook".to_owned()
    }
}

/// A container's preStop hook, with where it runs.
#[derive(Debug)]
struct PreStop {
    /// `namespace/name`, for the log.
    pod: String,
    container: Container,
    hook: LifecycleHandler,
    target: Target,
}

impl PreStop {
    /// The hook of `c`, if it has one and is running.
    fn of(pod: &str, c: &Ctr, net: Option<&PodNetwork>, ctx: &Ctx) -> Option<PreStop> {
        let hook = c.spec.lifecycle.as_ref()?.pre_stop.clone()?;
        if !matches!(c.phase, Phase::Running { .. }) {
            return None;
        }
        let net = net?;
        Some(PreStop {
            pod: pod.to_owned(),
            container: c.spec.clone(),
            hook,
            target: Target {
                runtime: ctx.runtime.clone(),
                network: ctx.network.clone(),
                container_id: c.id.clone()?,
                net: net.clone(),
            },
        })
    }
}

/// Stops container `id`: its preStop hook first (if any), then SIGTERM, then SIGKILL once the
/// grace period is over. The hook's time counts against the grace period and it is cut off at
/// its end; a failed hook is logged and the container is stopped all the same. After a hook
/// the container gets what is left of the grace period, at least `MIN_GRACE_AFTER_HOOK`.
async fn stop_container(
    runtime: Arc<dyn ContainerRuntime>,
    id: String,
    pre_stop: Option<PreStop>,
    mut grace: Duration,
) {
    if let Some(p) = pre_stop {
        let started = Instant::now();
        tracing::info!(pod = %p.pod, container = %p.container.name, "running the preStop hook");
        if let Err(e) = probe::run_hook(&p.hook, &p.container, &p.target, grace).await {
            tracing::warn!(pod = %p.pod, container = %p.container.name, error = %chain(&e), "the preStop hook failed");
        }
        grace = grace
            .saturating_sub(started.elapsed())
            .max(MIN_GRACE_AFTER_HOOK);
    }
    if let Err(e) = runtime.stop(&id, grace).await {
        tracing::warn!(container = %id, error = %chain(&e), "stopping a container");
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The image container `c` starts from, pulled by its imagePullPolicy as the kubelet does:
/// `Never` only uses what is on the node, `IfNotPresent` pulls what is not, `Always` resolves
/// at the registry on every start (fetching only when the digest moved). A pull runs in a task
/// of its own and ends in [`Happened::Pulled`] (see [`pulled`]); meanwhile the container waits
/// as `ContainerCreating` (`PodInitializing` in a pod with init containers). During a pull back-off it waits as `ImagePullBackOff`. `None`: the
/// container waits, with its phase and next try set.
async fn ensure_image(
    ctx: &Ctx,
    pod: &Arc<Pod>,
    c: &mut Ctr,
    events: &mpsc::UnboundedSender<Happened>,
) -> Option<Image> {
    if let Some(image) = c.pulled.take() {
        return Some(image);
    }
    let reference = c.spec.image.clone();
    let now = Instant::now();
    let present = match ctx.runtime.image(&reference).await {
        Ok(p) => p,
        Err(e) => {
            c.phase = Phase::Waiting {
                reason: if matches!(e, runtime::Error::InvalidReference { .. }) {
                    "InvalidImageName".into()
                } else {
                    "ImageInspectError".into()
                },
                // The kubelet's words: the reference is parsed before anything else.
                message: if matches!(e, runtime::Error::InvalidReference { .. }) {
                    format!("Failed to apply default image tag {reference:?}: {e}")
                } else {
                    format!("Failed to inspect image {reference:?}: {}", chain(&e))
                },
            };
            c.restart_at = Some(now + RETRY);
            return None;
        }
    };
    let pull = match c.spec.image_pull_policy.as_str() {
        "Never" => false,
        "Always" => true,
        _ => present.is_none(),
    };
    if !pull {
        if present.is_none() {
            c.phase = Phase::Waiting {
                reason: "ErrImageNeverPull".into(),
                message: format!(
                    "Container image {reference:?} is not present with pull policy of Never"
                ),
            };
            c.restart_at = Some(now + RETRY);
        }
        return present;
    }
    if let Some(at) = c.pull_retry_at
        && at > now
    {
        c.phase = Phase::Waiting {
            reason: "ImagePullBackOff".into(),
            message: format!("Back-off pulling image {reference:?}"),
        };
        c.restart_at = Some(at);
        return None;
    }
    c.pulling = true;
    // While it runs the container shows ContainerCreating (PodInitializing), or the failure
    // of the pull before (as the kubelet's status keeps its last sync's result until the pull
    // ends).
    let creating = creating_reason(pod);
    if !matches!(&c.phase, Phase::Waiting { reason, .. }
        if [creating, "ErrImagePull", "ImagePullBackOff"].contains(&reason.as_str()))
    {
        c.phase = Phase::Waiting {
            reason: creating.into(),
            message: String::new(),
        };
    }
    let (runtime, secrets, pod, index, events) = (
        ctx.runtime.clone(),
        ctx.objects.clone(),
        pod.clone(),
        c.index,
        events.clone(),
    );
    tokio::spawn(
        async move {
            let credentials = pull_credentials(secrets.as_ref(), &pod).await;
            let result = runtime
                .pull(&reference, &credentials)
                .await
                .map_err(|e| match &e {
                    runtime::Error::Pull { source, .. } => source.to_string(),
                    e => chain(e),
                });
            let _ = events.send(Happened::Pulled { index, result });
        }
        .in_current_span(),
    );
    None
}

/// A pull of `c`'s image ended: the image is kept for the start that follows, or the failure
/// is `ErrImagePull` with the registry's reason and the pull back-off (the restart back-off's
/// initial and max, per container) begins.
fn pulled(ctx: &Ctx, c: &mut Ctr, result: Result<Image, String>) {
    c.pulling = false;
    let now = Instant::now();
    match result {
        Ok(image) => {
            c.pull_retry_at = None;
            c.pull_backoff = Duration::ZERO;
            c.pulled = Some(image);
            c.restart_at = None;
        }
        Err(reason) => {
            tracing::warn!(container = %c.spec.name, image = %c.spec.image, error = %reason, "pulling an image");
            c.pull_backoff = if c.pull_backoff.is_zero() {
                ctx.backoff_initial
            } else {
                (c.pull_backoff * 2).min(ctx.backoff_max)
            };
            c.pull_retry_at = Some(now + c.pull_backoff);
            c.phase = Phase::Waiting {
                reason: "ErrImagePull".into(),
                message: format!("Failed to pull image {:?}: {reason}", c.spec.image),
            };
            // ErrImagePull shows until the next look, then ImagePullBackOff until the retry.
            c.restart_at = Some(now + RETRY.min(c.pull_backoff));
        }
    }
}

/// The argv Kubernetes runs: `command` replaces the image's entrypoint (and drops its cmd),
/// `args` replaces its cmd; `$(VAR)` in `command` and `args` is expanded against the
/// container's environment `env` (the image's entrypoint and cmd are not).
pub fn argv(spec: &Container, image: &Image, env: &envvars::Environment) -> Vec<String> {
    let command = envvars::expand_command(&spec.command, env);
    let args = envvars::expand_command(&spec.args, env);
    match (command.is_empty(), args.is_empty()) {
        (false, _) => command.into_iter().chain(args).collect(),
        (true, false) => image.entrypoint.iter().cloned().chain(args).collect(),
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

/// The image's environment, `HOSTNAME`, then the container's variables `pod_env` (from
/// [`envvars::environment`]) on top (same name: the later wins, in the first one's place).
pub fn env(pod_env: &[(String, String)], image: &Image, hostname: &str) -> Vec<String> {
    let mut vars: Vec<(String, String)> = image
        .env
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let mut set = |k: &str, v: &str| match vars.iter_mut().find(|(n, _)| n == k) {
        Some(e) => e.1 = v.to_owned(),
        None => vars.push((k.to_owned(), v.to_owned())),
    };
    set("HOSTNAME", hostname);
    for (k, v) in pod_env {
        set(k, v);
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The container to create for `c`: every path, id and label from the checked identity.
fn container_spec(
    ctx: &Ctx,
    ids: &PodIds,
    c: &Ctr,
    image: &Image,
    id: &str,
    net: &PodNetwork,
    environment: &envvars::Environment,
) -> Result<ContainerSpec, PathError> {
    let labels = [
        (LABEL_POD_UID, ids.uid().to_owned()),
        (LABEL_POD_NAMESPACE, ids.namespace().to_owned()),
        (LABEL_POD_NAME, ids.name().to_owned()),
        (LABEL_CONTAINER, c.spec.name.clone()),
        (LABEL_INDEX, c.index.to_string()),
        (LABEL_ATTEMPT, c.attempt.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let limit = |name: &str| c.spec.resources.limits.get(name);
    let request = |name: &str| c.spec.resources.requests.get(name);
    Ok(ContainerSpec {
        id: id.to_owned(),
        image: image.clone(),
        labels,
        argv: argv(&c.spec, image, environment),
        env: env(&environment.vars, image, ids.name()),
        working_dir: c.spec.working_dir.clone(),
        netns: net.netns.clone(),
        hostname: ids.name().to_owned(),
        log_path: ctx.paths.log_path(ids, &c.spec.name, c.attempt)?,
        memory_limit: limit("memory").and_then(|q| i64::try_from(q.value()).ok()),
        cpu_limit_millis: limit("cpu").and_then(|q| i64::try_from(q.milli_value()).ok()),
        cpu_request_millis: request("cpu")
            .or(limit("cpu"))
            .and_then(|q| i64::try_from(q.milli_value()).ok()),
        cgroup_parent: ctx.paths.cgroup_parent(ids),
        mounts: Vec::new(),
        security: Default::default(),
    })
}

#[cfg(test)]
mod lifecycle_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        Image {
            name: "docker.io/library/busybox:latest".into(),
            id: "sha256:x".into(),
            chain_id: "sha256:y".into(),
            entrypoint: vec!["/entry".into()],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: String::new(),
            user: String::new(),
        }
    }

    const UID: &str = "0e6d1c3a-5b7f-4c2e-9a1d-3f4b5c6d7e8f";
    const OTHER: &str = "1e6d1c3a-5b7f-4c2e-9a1d-3f4b5c6d7e8f";

    fn ctr(id: &str, labels: &[(&str, &str)]) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            image: String::new(),
            state: TaskState::Running,
            pid: 1,
            exit: None,
            started_at: None,
        }
    }

    #[test]
    fn leftovers_of_unknown_unlabelled_and_hostile_pods_are_stale_and_known_ones_adopted() {
        let known: HashSet<String> = [UID.to_owned()].into();
        let found = Leftovers::sort(
            vec![
                ctr("a", &[(LABEL_POD_UID, UID)]),
                ctr(
                    "b",
                    &[
                        (LABEL_POD_UID, OTHER),
                        (LABEL_POD_NAMESPACE, "default"),
                        (LABEL_POD_NAME, "web"),
                    ],
                ),
                ctr(
                    "c",
                    &[
                        (LABEL_POD_UID, "../../etc"),
                        (LABEL_POD_NAMESPACE, "default"),
                        (LABEL_POD_NAME, "web"),
                    ],
                ),
                ctr("d", &[]),
                ctr("e", &[(LABEL_CONTAINER, "main")]),
            ],
            [UID.to_owned(), "gone".to_owned()],
            vec![PodIds::new("default", "old", OTHER).expect("valid")],
            &known,
        );
        assert_eq!(found.known[UID].len(), 1);
        // Only a container with the agent's labels is the agent's to remove.
        assert_eq!(found.unowned.len(), 1);
        assert_eq!(found.unowned[0].id, "e");
        assert_eq!(found.foreign.len(), 1);
        assert_eq!(found.foreign[0].id, "d");
        assert_eq!(
            found.stale.keys().map(String::as_str).collect::<Vec<_>>(),
            ["../../etc", OTHER, "gone"]
        );
        // A hostile label gives no identity: no log directory is made of it.
        assert_eq!(found.stale["../../etc"].pod, None);
        assert_eq!(found.stale["../../etc"].containers.len(), 1);
        // The log directory found on disk names the pod whose logs are removed.
        assert_eq!(
            found.stale[OTHER].pod.as_ref().map(PodIds::name),
            Some("old")
        );
        assert!(found.stale["gone"].containers.is_empty());
    }

    #[test]
    fn status_writes_refused_for_good_back_off_to_a_minute_and_others_to_seconds() {
        let refused = ClientError::Api(containerd_client::tonic::Status::invalid_argument(
            "spec: Invalid value",
        ));
        let forbidden = ClientError::Api(containerd_client::tonic::Status::permission_denied("no"));
        let down = ClientError::Api(containerd_client::tonic::Status::unavailable("down"));
        let mut wait = STATUS_RETRY;
        let mut waits = Vec::new();
        for _ in 0..12 {
            wait = next_backoff(wait, &refused);
            waits.push(wait);
        }
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(waits.last(), Some(&STATUS_BACKOFF_MAX));
        // Never five times a second after the first failures.
        assert!(waits[2] >= Duration::from_secs(1), "{waits:?}");
        assert_eq!(
            next_backoff(Duration::from_secs(40), &forbidden),
            STATUS_BACKOFF_MAX
        );
        assert_eq!(
            next_backoff(Duration::from_secs(40), &down),
            STATUS_BACKOFF_TRANSIENT
        );
    }

    #[test]
    fn command_and_args_follow_kubernetes_and_expand_the_containers_variables() {
        let mut c = Container::default();
        let env = envvars::Environment {
            vars: vec![("N".into(), "5".into())],
            skipped: Vec::new(),
        };
        assert_eq!(argv(&c, &image(), &env), ["/entry", "sh"]);
        c.args = vec!["-c".into(), "x $(N)".into()];
        assert_eq!(argv(&c, &image(), &env), ["/entry", "-c", "x 5"]);
        c.command = vec!["sleep".into()];
        c.args = vec!["$(N)".into(), "$(MISSING)".into(), "$$(N)".into()];
        assert_eq!(
            argv(&c, &image(), &env),
            ["sleep", "5", "$(MISSING)", "$(N)"]
        );
    }

    #[test]
    fn pod_variables_override_the_images() {
        let vars = [("A".to_owned(), "pod".to_owned())];
        assert_eq!(
            env(&vars, &image(), "web-1"),
            ["PATH=/bin", "A=pod", "HOSTNAME=web-1"]
        );
    }
}
