//! The fake container runtime: containers and tasks in memory, exits as scripted, checked
//! as the real containerd would refuse (and more strictly, as the agent must never try: a
//! removal of a running task, which the real runtime answers with a SIGKILL and no grace, or a
//! stop of a container this node never had).
//!
//! Pulls go to a fake registry ([`FakeNode::serve_image`]): it resolves by name, asks for a
//! credential where one is required, fails as scripted, and counts what it served. Concurrent
//! pulls of one image with the same credentials are one resolution, as in the real runtime
//! (both key them with [`Credentials::pull_key`]); with other credentials, one each. Image
//! garbage collection sees image sizes and an image filesystem; removing an image a container
//! of the node was made from is a broken rule.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, SystemTime},
};

use containerd_client::tonic::Status;
use tokio::time::Instant;

use super::{Event, ExecScript, FakeContainer, FakeNode, Shared, State, TaskLife};
use crate::runtime::{
    ContainerInfo, ContainerRuntime, ContainerSpec, Credential, Credentials, Error, Exit, FsUsage,
    Image, ImageInfo, PullError, Result, SingleFlight, SpecProblem, TaskState, normalize_reference,
    validate_id,
};

/// The fake's registries and image filesystem.
#[derive(Debug, Default)]
pub(crate) struct FakeRegistry {
    /// What the registries serve, by normalized name: the manifest digest and the image.
    served: HashMap<String, (String, Image)>,
    /// Registries (`host[:port]`) that require this credential.
    required: HashMap<String, Credential>,
    /// Scripted failures of the next resolutions of a name.
    failures: HashMap<String, VecDeque<PullError>>,
    /// How long a resolution takes.
    delay: Duration,
    /// The digest each image on the node was pulled at.
    pulled_digest: HashMap<String, String>,
    /// Every resolution, by name.
    resolutions: Vec<String>,
    /// Every image fetched (resolved to a new digest), by name.
    fetches: Vec<String>,
    /// Sizes of images on the node (1 MiB when not set).
    sizes: HashMap<String, u64>,
    /// Image filesystem: capacity and what is used besides images.
    fs: Option<(u64, u64)>,
    flights: Arc<SingleFlight<Result<Image, PullError>>>,
}

const DEFAULT_IMAGE_SIZE: u64 = 1 << 20;

impl FakeNode {
    /// The registry serves `image` (by its normalized name) at manifest `digest`; serving
    /// another digest later is a push of a new version.
    pub fn serve_image(&self, image: Image, digest: &str) {
        self.shared
            .lock()
            .registry
            .served
            .insert(image.name.clone(), (digest.to_owned(), image));
    }

    /// The registry `host` answers only pulls with this credential (401 otherwise).
    pub fn require_credential(&self, host: &str, username: &str, password: &str) {
        self.shared.lock().registry.required.insert(
            host.to_owned(),
            Credential {
                username: username.to_owned(),
                password: password.to_owned(),
            },
        );
    }

    /// The next resolution of `reference` fails with `error`.
    pub fn fail_pull(&self, reference: &str, error: PullError) {
        let name = normalize_reference(reference).unwrap_or_else(|_| reference.to_owned());
        self.shared
            .lock()
            .registry
            .failures
            .entry(name)
            .or_default()
            .push_back(error);
    }

    /// Every resolution takes this long.
    pub fn set_pull_delay(&self, d: Duration) {
        self.shared.lock().registry.delay = d;
    }

    /// Every resolution at a registry so far (normalized names, in order).
    pub fn resolutions(&self) -> Vec<String> {
        self.shared.lock().registry.resolutions.clone()
    }

    /// Every image fetched so far (a resolution to a digest the node did not have).
    pub fn fetches(&self) -> Vec<String> {
        self.shared.lock().registry.fetches.clone()
    }

    /// Image `name` (normalized) takes `bytes` on the image filesystem.
    pub fn set_image_size(&self, name: &str, bytes: u64) {
        self.shared
            .lock()
            .registry
            .sizes
            .insert(name.to_owned(), bytes);
    }

    /// The image filesystem holds `capacity` bytes, `other` of them used by something else
    /// than images.
    pub fn set_image_fs(&self, capacity: u64, other: u64) {
        self.shared.lock().registry.fs = Some((capacity, other));
    }

    /// The names of the images on the node, sorted.
    pub fn image_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.lock().images.keys().cloned().collect();
        names.sort();
        names
    }
}

fn unauthorized(host: &str) -> PullError {
    PullError::Unauthorized {
        host: host.to_owned(),
        status: 401,
        message: "401 Unauthorized: UNAUTHORIZED: authentication required".into(),
    }
}

/// One fake node's container runtime (a handle; cheap to clone).
#[derive(Debug, Clone)]
pub struct FakeRuntime {
    shared: Arc<Shared>,
}

/// containerd's answer for something that is not there.
fn not_found(action: &'static str, id: &str) -> Error {
    Error::Containerd {
        action,
        object: id.to_owned(),
        source: Status::not_found(format!("container {id} not found")),
    }
}

impl FakeRuntime {
    pub(crate) fn new(shared: Arc<Shared>) -> FakeRuntime {
        FakeRuntime { shared }
    }

    /// The exit of task `id` now, if it has ended.
    fn exit_of(state: &State, id: &str) -> Option<Exit> {
        let c = state.containers.get(id)?;
        let TaskLife::Stopped {
            code,
            oom_killed,
            at,
        } = c.task
        else {
            return None;
        };
        // The wall clock of the exit, counted on tokio's clock from the start (a paused
        // test's minutes pass on it alone).
        let exited_at = match c.started {
            Some((instant, wall)) => wall + at.saturating_duration_since(instant),
            None => SystemTime::now(),
        };
        Some(Exit {
            code,
            exited_at,
            oom_killed,
        })
    }

    /// Ends task `id` now with `code` (a signal's), telling its waiters.
    fn end(state: &mut State, id: &str, code: i32) {
        let now = Instant::now();
        if let Some(c) = state.containers.get_mut(id)
            && matches!(c.task, TaskLife::Running { .. })
        {
            c.task = TaskLife::Stopped {
                code,
                oom_killed: false,
                at: now,
            };
            c.changed.send_replace(());
            state.events.push((
                now,
                Event::Exited {
                    id: id.to_owned(),
                    code,
                },
            ));
        }
    }

    /// One pull at the fake registry: resolve, then fetch unless the node has that digest
    /// already.
    async fn resolve_and_fetch(
        &self,
        name: &str,
        credentials: &Credentials,
    ) -> std::result::Result<Image, PullError> {
        let delay = {
            let mut state = self.shared.lock();
            state.registry.resolutions.push(name.to_owned());
            state.registry.delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.shared.lock();
        if let Some(e) = state
            .registry
            .failures
            .get_mut(name)
            .and_then(VecDeque::pop_front)
        {
            return Err(e);
        }
        let (registry, rest) = name.split_once('/').unwrap_or(("", name));
        let repository = rest.split(['@', ':']).next().unwrap_or_default().to_owned();
        if let Some(required) = state.registry.required.get(registry)
            && !credentials
                .matching(registry, &repository)
                .contains(&required)
        {
            return Err(unauthorized(registry));
        }
        // A hollow node's registry has every image (as busybox under the name asked for).
        let served = state.registry.served.get(name).cloned().or_else(|| {
            let template = state
                .images
                .get(super::BUSYBOX)
                .filter(|_| state.any_image)?;
            let image = Image {
                name: name.to_owned(),
                ..template.clone()
            };
            Some((template.id.clone(), image))
        });
        let Some((digest, image)) = served else {
            return Err(PullError::NotFound {
                reference: name.to_owned(),
                message: "MANIFEST_UNKNOWN: manifest unknown".into(),
            });
        };
        if state.registry.pulled_digest.get(name) == Some(&digest)
            && let Some(present) = state.images.get(name)
        {
            return Ok(present.clone());
        }
        state.registry.fetches.push(name.to_owned());
        state.registry.pulled_digest.insert(name.to_owned(), digest);
        state.images.insert(name.to_owned(), image.clone());
        Ok(image)
    }

    /// Waits until task `id` has stopped or `deadline` passes; whether it stopped.
    async fn wait_until(&self, id: &str, deadline: Option<Instant>) -> Result<bool> {
        loop {
            let (mut changed, next) = {
                let mut state = self.shared.lock();
                Shared::settle(&mut state, Instant::now());
                let Some(c) = state.containers.get(id) else {
                    return Err(not_found("waiting for container", id));
                };
                if matches!(c.task, TaskLife::Stopped { .. }) {
                    return Ok(true);
                }
                (c.changed.subscribe(), c.scheduled_exit().map(|(at, ..)| at))
            };
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return Ok(false);
            }
            let wake = match (next, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                r = changed.changed() => if r.is_err() {
                    return Err(not_found("waiting for container", id));
                },
                () = super::sleep_until(wake) => {}
            }
        }
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn version(&self) -> Result<String> {
        Ok("fake://1.0".to_owned())
    }

    async fn image(&self, reference: &str) -> Result<Option<Image>> {
        let name = normalize_reference(reference)?;
        let mut state = self.shared.lock();
        if state.any_image
            && !state.images.contains_key(&name)
            && let Some(template) = state.images.get(super::BUSYBOX).cloned()
        {
            let image = Image {
                name: name.clone(),
                ..template
            };
            state.images.insert(name.clone(), image);
        }
        Ok(state.images.get(&name).cloned())
    }

    async fn pull(&self, reference: &str, credentials: &Credentials) -> Result<Image> {
        let name = normalize_reference(reference)?;
        let flights = self.shared.lock().registry.flights.clone();
        let result = flights
            .run(&credentials.pull_key(&name), || {
                self.resolve_and_fetch(&name, credentials)
            })
            .await;
        result.map_err(|source| Error::Pull {
            reference: name,
            source,
        })
    }

    async fn images(&self) -> Result<Vec<ImageInfo>> {
        let state = self.shared.lock();
        let mut out: Vec<ImageInfo> = state
            .images
            .values()
            .map(|i| ImageInfo {
                name: i.name.clone(),
                id: i.id.clone(),
                size: state
                    .registry
                    .sizes
                    .get(&i.name)
                    .copied()
                    .unwrap_or(DEFAULT_IMAGE_SIZE),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn remove_image(&self, name: &str) -> Result<()> {
        let mut state = self.shared.lock();
        let users: Vec<String> = state
            .containers
            .iter()
            .filter(|(_, c)| c.spec.image.name == name)
            .map(|(id, _)| id.clone())
            .collect();
        if !users.is_empty() {
            let what = format!("removed image {name}, which containers {users:?} were made from");
            self.shared.violation(&mut state, what);
        }
        state.images.remove(name);
        state.registry.pulled_digest.remove(name);
        Ok(())
    }

    async fn image_fs_usage(&self) -> Result<FsUsage> {
        let state = self.shared.lock();
        let (capacity, other) = state.registry.fs.unwrap_or((100 << 30, 0));
        let mut ids = HashSet::new();
        let mut used = other;
        for i in state.images.values() {
            if ids.insert(i.id.clone()) {
                used += state
                    .registry
                    .sizes
                    .get(&i.name)
                    .copied()
                    .unwrap_or(DEFAULT_IMAGE_SIZE);
            }
        }
        Ok(FsUsage {
            capacity,
            available: capacity.saturating_sub(used),
        })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<()> {
        validate_id(&spec.id)?;
        if !spec.log_path.is_absolute() {
            return Err(Error::InvalidSpec {
                id: spec.id.clone(),
                problem: SpecProblem::RelativeLogPath(spec.log_path.clone()),
            });
        }
        if spec.argv.is_empty() {
            return Err(Error::InvalidSpec {
                id: spec.id.clone(),
                problem: SpecProblem::EmptyArgv,
            });
        }
        let delay = self.shared.lock().create_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.shared.lock();
        if state.containers.contains_key(&spec.id) {
            return Err(Error::AlreadyExists {
                id: spec.id.clone(),
            });
        }
        if !state.networks.values().any(|n| n.netns == spec.netns) {
            let what = format!(
                "container {} joins the network namespace {}, which no pod network has",
                spec.id,
                spec.netns.display()
            );
            self.shared.violation(&mut state, what);
        }
        if !state
            .images
            .values()
            .any(|i| i.chain_id == spec.image.chain_id)
        {
            let what = format!(
                "container {} is made from image {}, which is not on the node",
                spec.id, spec.image.name
            );
            self.shared.violation(&mut state, what);
        }
        let name = spec
            .labels
            .get(crate::node::pods::LABEL_CONTAINER)
            .cloned()
            .unwrap_or_default();
        if let Some(n) = state.create_failures.get_mut(&name)
            && *n > 0
        {
            *n -= 1;
            return Err(Error::Containerd {
                action: "creating the task of container",
                object: spec.id.clone(),
                source: Status::internal("scripted failure"),
            });
        }
        let run = state
            .runs
            .get_mut(&name)
            .and_then(|runs| runs.pop_front())
            .unwrap_or_else(|| state.default_run.clone());
        let (changed, _) = tokio::sync::watch::channel(());
        let container = FakeContainer {
            spec: spec.clone(),
            run,
            task: TaskLife::Created,
            sigterm_at: None,
            started: None,
            changed,
        };
        let uid = container.uid().unwrap_or_default().to_owned();
        state.containers.insert(spec.id.clone(), container);
        state.ever_created.insert(spec.id.clone());
        state.created_specs.push(spec.clone());
        state.events.push((
            Instant::now(),
            Event::Created {
                id: spec.id.clone(),
                uid,
                container: name,
            },
        ));
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<u32> {
        let mut state = self.shared.lock();
        let Some(c) = state.containers.get(id) else {
            let what = format!("started the task of container {id}, which was not created");
            self.shared.violation(&mut state, what);
            return Err(not_found("starting container", id));
        };
        if c.task != TaskLife::Created {
            let what = format!("started the task of container {id} again ({:?})", c.task);
            self.shared.violation(&mut state, what);
            return Err(Error::Containerd {
                action: "starting container",
                object: id.to_owned(),
                source: Status::failed_precondition("task already started"),
            });
        }
        if c.run.fails_to_start {
            return Err(Error::Containerd {
                action: "starting container",
                object: id.to_owned(),
                source: Status::unknown("scripted start failure: exec format error"),
            });
        }
        let now = Instant::now();
        state.pids += 1;
        let pid = state.pids + 1;
        if let Some(c) = state.containers.get_mut(id) {
            c.task = TaskLife::Running { since: now };
            c.started = Some((now, SystemTime::now()));
            c.changed.send_replace(());
        }
        state
            .events
            .push((now, Event::Started { id: id.to_owned() }));
        Ok(pid)
    }

    async fn wait(&self, id: &str) -> Result<Exit> {
        self.wait_until(id, None).await?;
        let state = self.shared.lock();
        FakeRuntime::exit_of(&state, id).ok_or_else(|| not_found("waiting for container", id))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        {
            let mut state = self.shared.lock();
            Shared::settle(&mut state, Instant::now());
            let Some(c) = state.containers.get_mut(id) else {
                // The real runtime answers Ok when there is no task to signal (containerd's
                // NotFound): a container removed already is stopped. One this node never had
                // is the agent stopping a wrong id, while the container it meant runs on.
                if !state.ever_created.contains(id) {
                    let what = format!("stopped container {id}, which this node never had");
                    self.shared.violation(&mut state, what);
                }
                return Ok(());
            };
            if !matches!(c.task, TaskLife::Running { .. }) {
                return Ok(());
            }
            let now = Instant::now();
            if c.sigterm_at.is_none() {
                c.sigterm_at = Some(now);
            }
            c.changed.send_replace(());
            state.events.push((
                now,
                Event::Sigterm {
                    id: id.to_owned(),
                    grace,
                },
            ));
            Shared::settle(&mut state, now);
        }
        if self
            .wait_until(id, Some(Instant::now() + grace))
            .await
            .unwrap_or(true)
        {
            return Ok(());
        }
        let mut state = self.shared.lock();
        state
            .events
            .push((Instant::now(), Event::Sigkill { id: id.to_owned() }));
        FakeRuntime::end(&mut state, id, 128 + 9);
        Ok(())
    }

    async fn exec(&self, id: &str, argv: &[String], timeout: Duration) -> Result<i32> {
        let script = {
            let mut state = self.shared.lock();
            Shared::settle(&mut state, Instant::now());
            let Some(c) = state.containers.get(id) else {
                let what = format!("exec {argv:?} in container {id}, which does not exist");
                self.shared.violation(&mut state, what);
                return Err(not_found("exec in container", id));
            };
            if !matches!(c.task, TaskLife::Running { .. }) {
                // A probe may race an exit it has not been told of yet (the real runtime
                // refuses it too), but not one that happened before this instant: by then the
                // agent knew, and should have stopped probing and hooking.
                let known = match c.task {
                    TaskLife::Stopped { at, .. } => at < Instant::now(),
                    _ => true,
                };
                if known {
                    let what =
                        format!("exec {argv:?} in container {id}, whose task is not running");
                    self.shared.violation(&mut state, what);
                }
                return Err(Error::Containerd {
                    action: "exec in container",
                    object: id.to_owned(),
                    source: Status::failed_precondition("task is not running"),
                });
            }
            let key = (c.name().to_owned(), argv.to_vec());
            let script = state
                .execs
                .get(&key)
                .copied()
                .unwrap_or(ExecScript::code(0));
            state.events.push((
                Instant::now(),
                Event::Exec {
                    id: id.to_owned(),
                    argv: argv.to_vec(),
                },
            ));
            script
        };
        if script.takes > timeout {
            tokio::time::sleep(timeout).await;
            return Err(Error::ExecTimedOut {
                id: id.to_owned(),
                argv: argv.to_vec(),
                timeout,
            });
        }
        tokio::time::sleep(script.takes).await;
        Ok(script.code)
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let mut state = self.shared.lock();
        Shared::settle(&mut state, Instant::now());
        let running = state
            .containers
            .get(id)
            .is_some_and(|c| matches!(c.task, TaskLife::Running { .. }));
        if running {
            // The real runtime SIGKILLs it: no preStop hook, no SIGTERM, no grace period.
            let what = format!(
                "removed container {id} while its task still ran (the agent must stop it first: \
                 preStop hook, SIGTERM, grace period)"
            );
            self.shared.violation(&mut state, what);
            state
                .events
                .push((Instant::now(), Event::Sigkill { id: id.to_owned() }));
            FakeRuntime::end(&mut state, id, 128 + 9);
        }
        if state.containers.remove(id).is_some() {
            state
                .events
                .push((Instant::now(), Event::Removed { id: id.to_owned() }));
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>> {
        let mut state = self.shared.lock();
        Shared::settle(&mut state, Instant::now());
        let out = state
            .containers
            .iter()
            .map(|(id, c)| {
                let (task, pid) = match c.task {
                    TaskLife::Created => (TaskState::Created, 0),
                    TaskLife::Running { .. } => (TaskState::Running, 1),
                    TaskLife::Stopped { .. } => (TaskState::Stopped, 0),
                };
                ContainerInfo {
                    id: id.clone(),
                    labels: c.spec.labels.clone(),
                    image: c.spec.image.name.clone(),
                    state: task,
                    pid,
                    exit: FakeRuntime::exit_of(&state, id),
                    started_at: c
                        .started
                        .map(|(_, wall)| wall)
                        .filter(|_| task == TaskState::Running),
                }
            })
            .collect();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn concurrent_pulls_are_one_resolution_per_image_and_credentials_as_in_the_real_runtime()
    {
        let node = FakeNode::new("n", "10.244.7.0/24".parse().expect("a CIDR"));
        node.accept_any_image();
        node.set_pull_delay(Duration::from_secs(1));
        let runtime = node.runtime();
        let mut alice = Credentials::none();
        alice.add(
            "reg.example",
            Credential {
                username: "alice".into(),
                password: "pw".into(),
            },
        );
        let none = Credentials::none();
        let image = "reg.example/app:v1";
        let (a, b, c, d) = tokio::join!(
            runtime.pull(image, &none),
            runtime.pull(image, &none),
            runtime.pull(image, &alice),
            runtime.pull("reg.example/other:v1", &none),
        );
        for r in [a, b, c, d] {
            r.unwrap();
        }
        let mut resolutions = node.resolutions();
        resolutions.sort();
        assert_eq!(
            resolutions,
            [
                "reg.example/app:v1",
                "reg.example/app:v1",
                "reg.example/other:v1"
            ],
            "the two anonymous pulls of app are one; alice's is its own"
        );
        // Overlapping resolutions of one image with other credentials are no broken rule.
        node.assert_no_violations();
    }
}
