//! The node agent's container runtime: containerd over its gRPC API (containerd-client, raw
//! gRPC). Images are pulled from registries (`pull`, `registry`, `hosts`) or imported from
//! local OCI archives, removed by the kubelet's image garbage collection (`gc`), containers
//! are created from the image's unpacked snapshot with a runtime spec written here, run by the
//! runc v2 shim with their output appended to a log file by the shim itself, and found again by
//! a restarted agent (everything lives in containerd and the shims, nothing in this process).
//!
//! Everything happens in one containerd namespace (the `containerd-namespace` gRPC header).

mod error;
pub mod gc;
pub mod hosts;
mod image;
mod pull;
pub mod registry;
mod seccomp;
mod spec;
mod tar;
pub mod userns;

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use containerd_client::{
    services::v1::{
        Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
        DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, GetContainerRequest,
        GetRequest, KillRequest, ListContainersRequest, ListTasksRequest, StartRequest,
        WaitRequest,
        container::Runtime as ContainerdRuntime,
        containers_client::ContainersClient,
        snapshots::{
            PrepareSnapshotRequest, RemoveSnapshotRequest, snapshots_client::SnapshotsClient,
        },
        tasks_client::TasksClient,
        version_client::VersionClient,
    },
    tonic::{
        Code, Request, Status,
        metadata::{Ascii, MetadataValue},
        transport::Channel,
    },
    types::{Mount, v1::Status as ProcessStatus},
};
pub use error::{Error, ImageError, ReferenceProblem, Result, SpecProblem, chain};
pub use gc::{FsUsage, ImageInfo};
pub use image::normalize_reference;
use prost_types::Any;
pub use pull::SingleFlight;
pub use registry::{Credential, Credentials, PullError};

/// The snapshotter for image layers and container root filesystems.
const SNAPSHOTTER: &str = "overlayfs";
/// The runc v2 shim.
const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;
/// How long to wait for a task to go after SIGKILL before giving up.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to containerd, using one containerd namespace for everything. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Runtime {
    channel: Channel,
    namespace: String,
    ns_header: MetadataValue<Ascii>,
    /// Images already resolved, by the digest their record points at: content under a digest
    /// never changes, so only the name → digest step is asked again on each lookup.
    resolved: Arc<Mutex<HashMap<String, Image>>>,
    /// The registry client (hosts.toml configuration, TLS clients) pulls go through.
    registry: Arc<registry::RegistryClient>,
    /// Pulls under way, by normalized reference: concurrent pulls of one image are one.
    pulls: Arc<SingleFlight<Result<Image, PullError>>>,
    pull_stats: Arc<PullStats>,
}

/// Counts of what pulls fetched from registries.
#[derive(Debug, Default)]
struct PullStats {
    manifests: AtomicU64,
    blobs: AtomicU64,
}

/// An image present in containerd, resolved to what containers need from it.
#[derive(Debug, Clone)]
pub struct Image {
    /// Normalized name (`docker.io/library/busybox:latest`).
    pub name: String,
    /// The config digest (`sha256:...`), Docker's image ID.
    pub id: String,
    /// Chain ID of the top layer: the name of the unpacked snapshot containers start from.
    pub chain_id: String,
    /// The image's `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// The image's `Cmd`.
    pub cmd: Vec<String>,
    /// The image's `Env` ("K=V").
    pub env: Vec<String>,
    /// The image's `WorkingDir` ("" if unset).
    pub working_dir: String,
    /// The image's `User` (`uid`, `uid:gid`, `name`, `name:group`; "" is root), which the
    /// container runs as when its securityContext sets no `runAsUser`
    /// ([`Security::with_image_user`]).
    pub user: String,
}

pub use spec::{BindMount, NodeSecurity, Seccomp, Security, SecurityError, UserNamespace};

/// What to create a container from.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// containerd id: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 76 characters.
    pub id: String,
    /// The image to start from (its snapshot and name).
    pub image: Image,
    /// Labels on the container record (returned by [`Runtime::list`]).
    pub labels: BTreeMap<String, String>,
    /// The process to run, already resolved from command/args/entrypoint/cmd.
    pub argv: Vec<String>,
    /// The environment, already merged ("K=V").
    pub env: Vec<String>,
    /// Working directory; "" means the image's, or "/".
    pub working_dir: String,
    /// The pod's network namespace file, which the container joins.
    pub netns: PathBuf,
    /// Hostname in the container's UTS namespace ("" leaves it unset).
    pub hostname: String,
    /// stdout and stderr are appended to this file (absolute; it and its parent directories
    /// are created). The shim writes it, so logging goes on while the agent is down.
    pub log_path: PathBuf,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// CPU limit in millicores (CFS quota over a 100 ms period).
    pub cpu_limit_millis: Option<i64>,
    /// CPU request in millicores (cpu shares, Kubernetes' formula).
    pub cpu_request_millis: Option<i64>,
    /// Parent cgroup, e.g. `/skiff/<node>/<pod uid>`; the container's is `<parent>/<id>`.
    pub cgroup_parent: String,
    /// Bind mounts of the pod's volumes (host paths the agent made), in mount order.
    pub mounts: Vec<BindMount>,
    /// User, groups, capabilities, seccomp, read-only root, user namespace; the default is
    /// what Kubernetes gives a container whose pod asks for nothing.
    pub security: Security,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Exit status; 128 + signal for a task killed by a signal.
    pub code: i32,
    /// When it exited.
    pub exited_at: SystemTime,
    /// Whether the kernel's OOM killer killed a process of the container (its memory cgroup
    /// counted an OOM kill).
    pub oom_killed: bool,
}

/// A container in the namespace and its task.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    /// Container id.
    pub id: String,
    /// Labels of the container record.
    pub labels: BTreeMap<String, String>,
    /// The image record's name it was made from.
    pub image: String,
    /// State of its task.
    pub state: TaskState,
    /// The task's pid (0 if none).
    pub pid: u32,
    /// How the task ended, when [`TaskState::Stopped`].
    pub exit: Option<Exit>,
    /// When the task's process started (from /proc, to the second), while it runs.
    pub started_at: Option<SystemTime>,
}

/// State of a container's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// The container has no task.
    NoTask,
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited, not yet deleted.
    Stopped,
    /// Paused (or pausing).
    Paused,
    /// containerd does not know.
    Unknown,
}

/// What a node's pods need of a container runtime: images, containers with their tasks, exec
/// (probes and preStop hooks), exits, stops and removal. containerd ([`Runtime`]) is the real
/// one; `crate::testing` has a fake that checks how the pod lifecycle uses it.
///
/// Every id here is a container id the caller made (containerd's rule); nothing from the API
/// reaches a runtime without the checks of `crate::paths`.
#[async_trait::async_trait]
pub trait ContainerRuntime: std::fmt::Debug + Send + Sync {
    /// The runtime's version string, e.g. "containerd://1.6.20~ds1" (the node's health check
    /// and containerRuntimeVersion).
    async fn version(&self) -> Result<String>;

    /// The image a pod spec names ("busybox", "docker.io/library/busybox:latest", ...), or
    /// `Ok(None)` when it is not on the node.
    async fn image(&self, reference: &str) -> Result<Option<Image>>;

    /// Resolves `reference` at its registry and pulls what is not on the node yet (nothing
    /// when the image record already points at the resolved digest), with `credentials` for
    /// the registry. Concurrent pulls of one image are one pull. A failure is
    /// [`Error::Pull`], with the registry's reason.
    async fn pull(&self, reference: &str, credentials: &Credentials) -> Result<Image>;

    /// Every image on the node with its id and size (image garbage collection).
    async fn images(&self) -> Result<Vec<ImageInfo>>;

    /// Removes image record `name` (what only it held is freed).
    async fn remove_image(&self, name: &str) -> Result<()>;

    /// The image filesystem's size and free space.
    async fn image_fs_usage(&self) -> Result<FsUsage>;

    /// Creates the container and its task, not started. Fails if the container exists; a
    /// failed create leaves nothing behind.
    async fn create(&self, spec: &ContainerSpec) -> Result<()>;

    /// Starts the created task; its pid.
    async fn start(&self, id: &str) -> Result<u32>;

    /// Waits until the task exits (also one that exited already, or that an earlier agent
    /// started) and says how it ended.
    async fn wait(&self, id: &str) -> Result<Exit>;

    /// SIGTERM, then SIGKILL once `grace` is over; returns when the task has exited (or there
    /// was none).
    async fn stop(&self, id: &str, grace: Duration) -> Result<()>;

    /// Runs `argv` in the running container (no stdin, output discarded), killed after
    /// `timeout`; its exit code.
    async fn exec(&self, id: &str, argv: &[String], timeout: Duration) -> Result<i32>;

    /// Deletes the task (killing it first), the container and its root filesystem.
    /// Idempotent.
    async fn remove(&self, id: &str) -> Result<()>;

    /// Every container of the node with its labels and task state.
    async fn list(&self) -> Result<Vec<ContainerInfo>>;
}

#[async_trait::async_trait]
impl ContainerRuntime for Runtime {
    async fn version(&self) -> Result<String> {
        Runtime::version(self).await
    }

    async fn image(&self, reference: &str) -> Result<Option<Image>> {
        Runtime::image(self, reference).await
    }

    async fn pull(&self, reference: &str, credentials: &Credentials) -> Result<Image> {
        Runtime::pull(self, reference, credentials).await
    }

    async fn images(&self) -> Result<Vec<ImageInfo>> {
        Runtime::list_images(self).await
    }

    async fn remove_image(&self, name: &str) -> Result<()> {
        Runtime::remove_image(self, name).await
    }

    async fn image_fs_usage(&self) -> Result<FsUsage> {
        Runtime::image_fs_usage(self).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<()> {
        Runtime::create(self, spec).await
    }

    async fn start(&self, id: &str) -> Result<u32> {
        Runtime::start(self, id).await
    }

    async fn wait(&self, id: &str) -> Result<Exit> {
        Runtime::wait(self, id).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        Runtime::stop(self, id, grace).await
    }

    async fn exec(&self, id: &str, argv: &[String], timeout: Duration) -> Result<i32> {
        Runtime::exec(self, id, argv, timeout).await
    }

    async fn remove(&self, id: &str) -> Result<()> {
        Runtime::remove(self, id).await
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>> {
        Runtime::list(self).await
    }
}

impl Runtime {
    /// Connects to containerd's socket (unix path) and uses containerd namespace `namespace`
    /// for everything (the gRPC header `containerd-namespace`).
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Runtime> {
        let invalid = || Error::InvalidNamespace {
            namespace: namespace.to_owned(),
        };
        if namespace.is_empty() {
            return Err(Error::EmptyNamespace);
        }
        let ns_header: MetadataValue<Ascii> = namespace.parse().map_err(|_| invalid())?;
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|source| Error::Connect {
                    socket: socket.to_owned(),
                    source,
                })?;
        Ok(Runtime {
            channel,
            namespace: namespace.to_owned(),
            ns_header,
            resolved: Arc::default(),
            registry: Arc::new(registry::RegistryClient::new(
                hosts::RegistryHosts::default(),
            )),
            pulls: Arc::default(),
            pull_stats: Arc::default(),
        })
    }

    /// Pulls through the registry configuration `hosts` (`--registry-config-dir`) from now on.
    pub fn with_registry_hosts(mut self, hosts: hosts::RegistryHosts) -> Runtime {
        self.registry = Arc::new(registry::RegistryClient::new(hosts));
        self
    }

    fn resolved_image(&self, target_digest: &str) -> Option<Image> {
        self.resolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(target_digest)
            .cloned()
    }

    fn remember_image(&self, target_digest: String, image: &Image) {
        let mut resolved = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded: images a node runs are few; an agent that cycled through many starts over.
        if resolved.len() >= 256 {
            resolved.clear();
        }
        resolved.insert(target_digest, image.clone());
    }

    /// The containerd namespace this runtime uses.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// containerd's version string, e.g. "containerd://1.6.20~ds1" (the node's health check and
    /// containerRuntimeVersion).
    pub async fn version(&self) -> Result<String> {
        let v = VersionClient::new(self.channel.clone())
            .version(self.req(()))
            .await
            .map_err(Error::containerd("containerd version", ""))?
            .into_inner();
        Ok(format!("containerd://{}", v.version))
    }

    /// Imports every `*.tar` OCI image archive in `dir` whose images are not yet present
    /// (through the content, images, snapshots and diff services), unpacking layers into the
    /// overlayfs snapshotter; returns the image names now present from that dir.
    pub async fn import_dir(&self, dir: &Path) -> Result<Vec<String>> {
        image::import_dir(self, dir).await
    }

    /// Looks up an image by the name a pod spec uses: "busybox", "busybox:latest",
    /// "library/busybox" and "docker.io/library/busybox:latest" are the same (Docker's
    /// normalization). `Ok(None)` if absent.
    pub async fn image(&self, reference: &str) -> Result<Option<Image>> {
        image::lookup(self, reference).await
    }

    /// Creates the container: its snapshot from the image's chain ID, the container record with
    /// the runtime spec, and its task (not started). Fails if the container exists already;
    /// when a later step fails, the earlier ones are undone.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<()> {
        validate_id(&spec.id)?;
        if !spec.log_path.is_absolute() {
            return Err(Error::InvalidSpec {
                id: spec.id.clone(),
                problem: SpecProblem::RelativeLogPath(spec.log_path.clone()),
            });
        }
        let oci = spec::runtime_spec(spec)?;
        let container = Container {
            id: spec.id.clone(),
            labels: spec
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            image: spec.image.name.clone(),
            runtime: Some(ContainerdRuntime {
                name: RUNC_RUNTIME.into(),
                options: None,
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE.into(),
                value: serde_json::to_vec(&oci).map_err(|source| Error::Json {
                    what: format!("the runtime spec of container {}", spec.id),
                    source,
                })?,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: spec.id.clone(),
            ..Default::default()
        };
        self.containers()
            .create(self.req(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .map_err(|s| {
                if s.code() == Code::AlreadyExists {
                    Error::AlreadyExists {
                        id: spec.id.clone(),
                    }
                } else {
                    Error::containerd("creating container", &spec.id)(s)
                }
            })?;
        if let Err(e) = self.create_task(spec).await {
            if let Err(cleanup) = self.remove(&spec.id).await {
                tracing::warn!(container = %spec.id, "cleaning up after a failed create: {}", chain(&cleanup));
            }
            return Err(e);
        }
        tracing::debug!(container = %spec.id, image = %spec.image.name, "created");
        Ok(())
    }

    async fn create_task(&self, spec: &ContainerSpec) -> Result<()> {
        let mounts = match spec.security.user_namespace {
            None => {
                self.prepare_snapshot(&spec.id, &spec.image.chain_id)
                    .await?
            }
            // On a copy of the image's files owned by the pod's range; the lease holds that
            // copy until the container's snapshot, which the container record holds, is on it.
            Some(ns) => {
                let lease = self.create_lease().await?;
                let mounts = match self.remapped_parent(&spec.image.chain_id, ns, &lease).await {
                    Ok(parent) => self.prepare_snapshot(&spec.id, &parent).await,
                    Err(e) => Err(e),
                };
                self.delete_lease(&lease).await;
                mounts?
            }
        };
        let log = &spec.log_path;
        let alias = stderr_alias(&spec.id, log)?;
        let result = self
            .tasks()
            .create(self.req(CreateTaskRequest {
                container_id: spec.id.clone(),
                rootfs: mounts,
                stdout: log.to_string_lossy().into_owned(),
                stderr: alias.to_string_lossy().into_owned(),
                ..Default::default()
            }))
            .await;
        // The shim opened both paths while creating the task; the alias is not needed after.
        let _ = fs::remove_file(&alias);
        result.map_err(Error::containerd(
            "creating the task of container",
            &spec.id,
        ))?;
        Ok(())
    }

    /// A fresh active snapshot `key` on `parent`; a leftover one of that key is replaced.
    async fn prepare_snapshot(&self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let prepare = || {
            let mut snapshots = self.snapshots();
            let req = self.req(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
                parent: parent.into(),
                labels: Default::default(),
            });
            async move { snapshots.prepare(req).await }
        };
        let resp = match prepare().await {
            Err(s) if s.code() == Code::AlreadyExists => {
                self.remove_snapshot(key).await?;
                prepare().await
            }
            other => other,
        };
        Ok(resp
            .map_err(Error::containerd(
                "preparing snapshot",
                format!("{key} on {parent}"),
            ))?
            .into_inner()
            .mounts)
    }

    async fn remove_snapshot(&self, key: &str) -> Result<()> {
        match self
            .snapshots()
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(Error::containerd("removing snapshot", key)(s)),
        }
    }

    /// Starts the created task; returns its pid.
    pub async fn start(&self, id: &str) -> Result<u32> {
        let resp = self
            .tasks()
            .start(self.req(StartRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .map_err(Error::containerd("starting container", id))?;
        Ok(resp.into_inner().pid)
    }

    /// Waits until the task exits (also for a task that exited already, or that an earlier
    /// agent process started) and returns how it ended.
    pub async fn wait(&self, id: &str) -> Result<Exit> {
        let (status, exited_at) = wait_raw(self.tasks(), self.req(wait_request(id, "")))
            .await
            .map_err(Error::containerd("waiting for container", id))?;
        let oom_killed = self.oom_killed(id).await;
        Ok(Exit {
            code: exit_code(status),
            exited_at,
            oom_killed,
        })
    }

    /// SIGTERM, then SIGKILL after `grace` if still running; returns when the task has exited
    /// (or there was none).
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let mut waiter = tokio::spawn(wait_raw(self.tasks(), self.req(wait_request(id, ""))));
        // The wait goes out before the signal. Should the exit still come first, nothing is
        // lost: the shim keeps a task's exit status until the task is deleted.
        tokio::task::yield_now().await;
        match self.kill(id, "", SIGTERM).await {
            Ok(()) => {}
            Err(s) if s.code() == Code::NotFound => {
                waiter.abort();
                return Ok(());
            }
            // "process already finished": nothing to signal; the waiter returns at once.
            Err(s) if s.code() == Code::FailedPrecondition => {}
            Err(s) => {
                waiter.abort();
                return Err(Error::containerd("stopping container", id)(s));
            }
        }
        let waited = match tokio::time::timeout(grace, &mut waiter).await {
            Ok(done) => done,
            Err(_) => {
                tracing::debug!(container = %id, ?grace, "still running after SIGTERM; SIGKILL");
                match self.kill(id, "", SIGKILL).await {
                    Ok(()) => {}
                    Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {}
                    Err(s) => {
                        waiter.abort();
                        return Err(Error::containerd("killing container", id)(s));
                    }
                }
                tokio::time::timeout(KILL_TIMEOUT, &mut waiter)
                    .await
                    .map_err(|_| Error::KillTimedOut {
                        id: id.to_owned(),
                        timeout: KILL_TIMEOUT,
                    })?
            }
        };
        match waited.map_err(|source| Error::WaitTask { source })? {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(Error::containerd("waiting for container", id)(s)),
        }
    }

    /// Deletes the task (if any, killing it first), the container and its snapshot.
    /// Idempotent: missing parts are fine.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let task = match self
            .tasks()
            .get(self.req(GetRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => r.into_inner().process,
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(Error::containerd("getting the task of", id)(s)),
        };
        if let Some(task) = task {
            if task.status != ProcessStatus::Stopped as i32 {
                self.stop(id, Duration::ZERO).await?;
            }
            match self
                .tasks()
                .delete(self.req(DeleteTaskRequest {
                    container_id: id.into(),
                }))
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(Error::containerd("deleting the task of", id)(s)),
            }
        }
        match self
            .containers()
            .delete(self.req(DeleteContainerRequest { id: id.into() }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(Error::containerd("deleting container", id)(s)),
        }
        let remapped = self.remapped_parent_of(id).await;
        self.remove_snapshot(id).await?;
        if let Some(parent) = remapped {
            self.remove_unused_remapped(&parent).await;
        }
        tracing::debug!(container = %id, "removed");
        Ok(())
    }

    /// All containers in the namespace with their labels and task state.
    pub async fn list(&self) -> Result<Vec<ContainerInfo>> {
        let containers = self
            .containers()
            .list(self.req(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(Error::containerd("listing containers", ""))?
            .into_inner()
            .containers;
        let tasks = self
            .tasks()
            .list(self.req(ListTasksRequest {
                filter: String::new(),
            }))
            .await
            .map_err(Error::containerd("listing tasks", ""))?
            .into_inner()
            .tasks;
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            let task = tasks
                .iter()
                .find(|t| t.container_id == c.id || t.id == c.id);
            let (state, pid, exit, started_at) = match task {
                None => (TaskState::NoTask, 0, None, None),
                Some(t) => {
                    let state = task_state(t.status);
                    let exit = (state == TaskState::Stopped).then(|| Exit {
                        code: exit_code(t.exit_status),
                        exited_at: timestamp(t.exited_at.as_ref()),
                        oom_killed: container_cgroup(&c).is_some_and(|cg| oom_kills(&cg) > 0),
                    });
                    let started = matches!(state, TaskState::Running | TaskState::Paused)
                        .then(|| process_start_time(t.pid))
                        .flatten();
                    (state, t.pid, exit, started)
                }
            };
            out.push(ContainerInfo {
                id: c.id,
                labels: c.labels.into_iter().collect(),
                image: c.image,
                state,
                pid,
                exit,
                started_at,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Runs `argv` inside running container `id` (no stdin, output discarded), killed after
    /// `timeout`; its exit code, or an error if it could not run or timed out.
    pub async fn exec(&self, id: &str, argv: &[String], timeout: Duration) -> Result<i32> {
        let container = self.container(id).await?;
        let spec: serde_json::Value = container
            .spec
            .as_ref()
            .map(|s| serde_json::from_slice(&s.value))
            .transpose()
            .map_err(|source| Error::Json {
                what: format!("container {id} has an unreadable spec"),
                source,
            })?
            .unwrap_or_default();
        let process = spec::exec_process(&spec, argv)?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let exec_id = format!(
            "exec-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        self.tasks()
            .exec(self.req(ExecProcessRequest {
                container_id: id.into(),
                stdin: String::new(),
                stdout: String::new(),
                stderr: String::new(),
                terminal: false,
                spec: Some(Any {
                    type_url: PROCESS_TYPE.into(),
                    value: serde_json::to_vec(&process).map_err(|source| Error::Json {
                        what: format!("the exec process of container {id}"),
                        source,
                    })?,
                }),
                exec_id: exec_id.clone(),
            }))
            .await
            .map_err(Error::containerd("exec in container", id))?;
        let result = self.run_exec(id, &exec_id, argv, timeout).await;
        if let Err(s) = self
            .tasks()
            .delete_process(self.req(DeleteProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.clone(),
            }))
            .await
            && s.code() != Code::NotFound
        {
            tracing::warn!(container = %id, exec = %exec_id, "deleting exec process: {s}");
        }
        result
    }

    async fn run_exec(
        &self,
        id: &str,
        exec_id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<i32> {
        let mut waiter = tokio::spawn(wait_raw(self.tasks(), self.req(wait_request(id, exec_id))));
        tokio::task::yield_now().await;
        if let Err(s) = self
            .tasks()
            .start(self.req(StartRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            }))
            .await
        {
            waiter.abort();
            return Err(Error::containerd(
                "running",
                format!("{argv:?} in container {id}"),
            )(s));
        }
        match tokio::time::timeout(timeout, &mut waiter).await {
            Ok(done) => {
                let (status, _) = done.map_err(|source| Error::WaitTask { source })?.map_err(
                    Error::containerd("waiting for", format!("{argv:?} in container {id}")),
                )?;
                Ok(exit_code(status))
            }
            Err(_) => {
                if let Err(s) = self.kill(id, exec_id, SIGKILL).await {
                    tracing::debug!(container = %id, exec = %exec_id, "killing exec: {s}");
                }
                let _ = tokio::time::timeout(KILL_TIMEOUT, waiter).await;
                Err(Error::ExecTimedOut {
                    id: id.to_owned(),
                    argv: argv.to_vec(),
                    timeout,
                })
            }
        }
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), Status> {
        self.tasks()
            .kill(self.req(KillRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                signal,
                all: false,
            }))
            .await
            .map(|_| ())
    }

    async fn container(&self, id: &str) -> Result<Container> {
        self.containers()
            .get(self.req(GetContainerRequest { id: id.into() }))
            .await
            .map_err(Error::containerd("getting container", id))?
            .into_inner()
            .container
            .ok_or_else(|| Error::NoRecord { id: id.to_owned() })
    }

    /// Whether the container's memory cgroup saw an OOM kill (false when it cannot tell).
    async fn oom_killed(&self, id: &str) -> bool {
        match self.container(id).await {
            Ok(c) => container_cgroup(&c).is_some_and(|cg| oom_kills(&cg) > 0),
            Err(e) => {
                tracing::debug!(container = %id, "no OOM information: {}", chain(&e));
                false
            }
        }
    }

    /// A request carrying the namespace header.
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("containerd-namespace", self.ns_header.clone());
        r
    }

    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
}

fn wait_request(id: &str, exec_id: &str) -> WaitRequest {
    WaitRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
    }
}

async fn wait_raw(
    mut tasks: TasksClient<Channel>,
    req: Request<WaitRequest>,
) -> Result<(u32, SystemTime), Status> {
    let r = tasks.wait(req).await?.into_inner();
    Ok((r.exit_status, timestamp(r.exited_at.as_ref())))
}

fn exit_code(status: u32) -> i32 {
    i32::try_from(status).unwrap_or(i32::MAX)
}

fn task_state(status: i32) -> TaskState {
    match ProcessStatus::try_from(status) {
        Ok(ProcessStatus::Created) => TaskState::Created,
        Ok(ProcessStatus::Running) => TaskState::Running,
        Ok(ProcessStatus::Stopped) => TaskState::Stopped,
        Ok(ProcessStatus::Paused | ProcessStatus::Pausing) => TaskState::Paused,
        _ => TaskState::Unknown,
    }
}

fn timestamp(ts: Option<&prost_types::Timestamp>) -> SystemTime {
    match ts {
        Some(t) if t.seconds >= 0 => {
            UNIX_EPOCH
                + Duration::from_secs(t.seconds.unsigned_abs())
                + Duration::from_nanos(u64::try_from(t.nanos).unwrap_or(0))
        }
        _ => UNIX_EPOCH,
    }
}

/// containerd's identifier rule: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 76 characters.
pub(crate) fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 76
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(Error::InvalidId { id: id.to_owned() });
    }
    Ok(())
}

/// Creates the log file (and its directory) and a second name for it, for stderr.
///
/// Both streams go to the log through the runc shim, which appends them to the files named
/// by the task's stdout and stderr paths, so logging goes on while the agent is down. The shim
/// of containerd 1.6 mishandles one file named twice (stdout and stderr equal, which its
/// `file://` URIs always are): the stdout copier closes the shared descriptor when stdout ends,
/// and whatever stderr still had to copy is lost. Under two different names (the log and a
/// symlink to it) each stream gets a descriptor of its own, opened O_APPEND, so lines of both
/// interleave whole. The symlink is removed once the task exists.
fn stderr_alias(id: &str, log: &Path) -> Result<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
        return Err(Error::InvalidSpec {
            id: id.to_owned(),
            problem: SpecProblem::LogPathWithoutName(log.to_owned()),
        });
    };
    let file_error = |action, path: &Path| {
        let path = path.to_owned();
        move |source| Error::File {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(dir).map_err(file_error("creating log directory", dir))?;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(file_error("creating log file", log))?;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let alias = dir.join(format!(
        ".{}.stderr-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_file(&alias);
    std::os::unix::fs::symlink(name, &alias).map_err(file_error("linking to the log", &alias))?;
    Ok(alias)
}

/// The cgroup path (`linux.cgroupsPath`) of a container record's runtime spec.
fn container_cgroup(c: &Container) -> Option<String> {
    let spec: serde_json::Value = serde_json::from_slice(&c.spec.as_ref()?.value).ok()?;
    spec["linux"]["cgroupsPath"].as_str().map(str::to_owned)
}

/// OOM kills counted by a cgroup's memory controller: cgroup v1 `memory.oom_control`, or v2
/// `memory.events` (both have an `oom_kill N` line). 0 when it cannot be read.
fn oom_kills(cgroups_path: &str) -> u64 {
    let rel = cgroups_path.trim_start_matches('/');
    let v1 = Path::new("/sys/fs/cgroup/memory")
        .join(rel)
        .join("memory.oom_control");
    let v2 = Path::new("/sys/fs/cgroup").join(rel).join("memory.events");
    for file in [v1, v2] {
        if let Ok(text) = fs::read_to_string(&file) {
            return text
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

/// When process `pid` started: its start time in clock ticks after boot (/proc/PID/stat) plus
/// the boot time (/proc/stat btime, whole seconds). USER_HZ is 100 on every Linux architecture
/// the project runs on.
fn process_start_time(pid: u32) -> Option<SystemTime> {
    if pid == 0 {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.get(stat.rfind(')')? + 1..)?;
    // Fields after the command: state is field 3, starttime field 22.
    let ticks: u64 = after_comm.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(btime) + Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("a").is_ok());
        assert!(validate_id("pod-1.c_2").is_ok());
        assert!(validate_id(&"a".repeat(76)).is_ok());
        assert!(validate_id(&"a".repeat(77)).is_err());
        assert!(validate_id("-a").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id("").is_err());
    }

    #[test]
    fn stderr_alias_names_the_log() {
        let dir = std::env::temp_dir().join(format!("skiff-alias-{}", std::process::id()));
        let log = dir.join("c/0.log");
        let alias = stderr_alias("c", &log).unwrap();
        assert_eq!(alias.parent(), log.parent());
        std::fs::write(&alias, "x").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "x");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn own_start_time_is_recent() {
        let t = process_start_time(std::process::id()).unwrap();
        let age = SystemTime::now().duration_since(t).unwrap_or_default();
        assert!(age < Duration::from_secs(3600), "{age:?}");
    }
}
