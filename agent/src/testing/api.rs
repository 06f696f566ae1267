//! The fake of what pod workers write to the API server: pods stored with resourceVersions,
//! status writes as compare-and-swap, deletions with the uid precondition, and every written
//! status kept (and checked) in order. A node deletes a pod for good only to finish a deletion
//! the API asked for, once nothing of the pod is left on it: a final delete of a pod never
//! marked for deletion (a node deleting users' pods) or of one that still has containers, a
//! network or an address on a node the fake knows of is a broken rule.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use containerd_client::tonic::Status;
use skiff_api::{
    client::ClientError,
    kinds::{Pod, PodStatus},
    meta::time,
};
use tokio::sync::watch;

use super::FakeNode;
use crate::node::api::PodApi;

/// The pods of a fake API server (a handle; cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct FakeApi {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<ApiState>,
    /// Bumped on every write, for those who wait for one.
    written: watch::Sender<u64>,
    strict: bool,
}

#[derive(Debug, Default)]
struct ApiState {
    revision: i64,
    pods: BTreeMap<(String, String), Pod>,
    /// Every status written, by pod uid, in order.
    statuses: HashMap<String, Vec<PodStatus>>,
    deleted: Vec<(String, String, String)>,
    /// The next status writes fail with these.
    failures: Vec<Status>,
    violations: Vec<String>,
    /// The nodes whose leftovers a final delete is checked against.
    nodes: Vec<FakeNode>,
}

impl FakeApi {
    /// A fake API that panics at a write no node may make.
    pub fn new() -> FakeApi {
        FakeApi {
            inner: Arc::new(Inner {
                strict: true,
                ..Inner::default()
            }),
        }
    }

    /// A fake API that records writes no node may make without panicking.
    pub fn lenient() -> FakeApi {
        FakeApi::default()
    }

    /// Checks every final delete of a pod against `node` too: nothing of the pod may be left
    /// on it (containers, network, address).
    pub fn check_against(&self, node: &FakeNode) {
        let mut state = self.lock();
        if !state.nodes.iter().any(|n| n.is(node)) {
            state.nodes.push(node.clone());
        }
    }

    fn lock(&self) -> MutexGuard<'_, ApiState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.inner.written.send_modify(|n| *n += 1);
    }

    /// Stores `pod` (as a create or an update by someone else would); the pod as stored.
    pub fn put(&self, mut pod: Pod) -> Pod {
        let mut state = self.lock();
        state.revision += 1;
        pod.metadata.resource_version = state.revision.to_string();
        let key = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
        state.pods.insert(key, pod.clone());
        drop(state);
        self.bump();
        pod
    }

    /// Marks the stored pod `namespace/name` for deletion with `grace` seconds, as the API
    /// server does for a graceful delete; the pod as stored.
    pub fn mark_deleted(&self, namespace: &str, name: &str, grace: i64) -> Option<Pod> {
        let mut pod = self.pod(namespace, name)?;
        pod.metadata.deletion_timestamp = Some(time::now());
        pod.metadata.deletion_grace_period_seconds = Some(grace);
        Some(self.put(pod))
    }

    /// The stored pod.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.lock()
            .pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every status written for pod `uid`, oldest first.
    pub fn statuses(&self, uid: &str) -> Vec<PodStatus> {
        self.lock().statuses.get(uid).cloned().unwrap_or_default()
    }

    /// The pods deleted for good, as (namespace, name, uid).
    pub fn deleted(&self) -> Vec<(String, String, String)> {
        self.lock().deleted.clone()
    }

    /// The next status writes fail with these, in turn.
    pub fn fail_status_writes(&self, failures: impl IntoIterator<Item = Status>) {
        self.lock().failures.extend(failures);
    }

    /// A receiver that changes on every write.
    pub fn writes(&self) -> watch::Receiver<u64> {
        self.inner.written.subscribe()
    }

    /// The rules broken by written statuses and deletes so far.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Panics if a written status or a delete broke a rule.
    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(v.is_empty(), "{v:#?}");
    }

    fn violation(&self, state: &mut ApiState, what: String) {
        tracing::error!(violation = %what, "a node made a write no node may make");
        state.violations.push(what.clone());
        if self.inner.strict {
            panic!("{what}");
        }
    }

    /// What a node must never write over `old` for `pod`.
    fn check(old: &PodStatus, pod: &Pod) -> Vec<String> {
        let new = &pod.status;
        let mut broken = Vec::new();
        let finished = |phase: &str| phase == "Succeeded" || phase == "Failed";
        if finished(&old.phase) && new.phase != old.phase {
            broken.push(format!(
                "the phase went from {} back to {}",
                old.phase, new.phase
            ));
        }
        if !old.pod_ip.is_empty() && new.pod_ip != old.pod_ip {
            broken.push(format!(
                "the pod IP changed from {} to {:?}",
                old.pod_ip, new.pod_ip
            ));
        }
        for c in &new.container_statuses {
            if let Some(o) = old.container_statuses.iter().find(|o| o.name == c.name)
                && c.restart_count < o.restart_count
            {
                broken.push(format!(
                    "the restart count of {} went down from {} to {}",
                    c.name, o.restart_count, c.restart_count
                ));
            }
        }
        if !new.container_statuses.is_empty() {
            let names: Vec<&str> = new
                .container_statuses
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            let spec: Vec<&str> = pod
                .spec
                .containers
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            if names != spec {
                broken.push(format!(
                    "container statuses {names:?} are not the spec's containers {spec:?}"
                ));
            }
        }
        let ready = pod.is_ready();
        if ready && (new.phase != "Running" || new.container_statuses.iter().any(|c| !c.ready)) {
            broken.push(format!(
                "Ready is True with phase {} and containers {:?}",
                new.phase,
                new.container_statuses
                    .iter()
                    .map(|c| (c.name.as_str(), c.ready))
                    .collect::<Vec<_>>()
            ));
        }
        broken
    }
}

fn api_error(status: Status) -> ClientError {
    ClientError::Api(status)
}

#[async_trait::async_trait]
impl PodApi for FakeApi {
    async fn update_status(&self, pod: &Pod) -> Result<Pod, ClientError> {
        let mut state = self.lock();
        if !state.failures.is_empty() {
            let status = state.failures.remove(0);
            return Err(api_error(status));
        }
        let key = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
        let Some(stored) = state.pods.get(&key).cloned() else {
            return Err(api_error(Status::not_found("pod not found")));
        };
        if stored.metadata.uid != pod.metadata.uid
            || stored.metadata.resource_version != pod.metadata.resource_version
        {
            return Err(api_error(Status::aborted(
                "the object has been modified; please apply your changes to the latest version and try again",
            )));
        }
        for what in FakeApi::check(&stored.status, pod) {
            self.violation(&mut state, format!("pod {}/{}: {what}", key.0, key.1));
        }
        state.revision += 1;
        let mut new = stored;
        new.status = pod.status.clone();
        new.metadata.resource_version = state.revision.to_string();
        state
            .statuses
            .entry(new.metadata.uid.clone())
            .or_default()
            .push(new.status.clone());
        state.pods.insert(key, new.clone());
        drop(state);
        self.bump();
        Ok(new)
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Pod, ClientError> {
        self.pod(namespace, name)
            .ok_or_else(|| api_error(Status::not_found("pod not found")))
    }

    async fn delete(&self, namespace: &str, name: &str, uid: &str) -> Result<(), ClientError> {
        let mut state = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let marked = match state.pods.get(&key) {
            None => return Err(api_error(Status::not_found("pod not found"))),
            Some(p) if p.metadata.uid != uid => {
                return Err(api_error(Status::aborted("Precondition failed: UID")));
            }
            Some(p) => p.metadata.deletion_timestamp.is_some(),
        };
        if !marked {
            let what = format!(
                "pod {namespace}/{name} ({uid}) was deleted for good, but the API never marked \
                 it for deletion"
            );
            self.violation(&mut state, what);
        }
        let nodes = state.nodes.clone();
        for node in &nodes {
            let left = node.left_of(uid);
            if !left.is_empty() {
                let what = format!(
                    "pod {namespace}/{name} ({uid}) was deleted for good while node {} still \
                     holds {left:?}",
                    node.name()
                );
                self.violation(&mut state, what);
            }
        }
        state.pods.remove(&key);
        state
            .deleted
            .push((namespace.to_owned(), name.to_owned(), uid.to_owned()));
        drop(state);
        self.bump();
        Ok(())
    }
}
