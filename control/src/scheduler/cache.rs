//! The scheduler's own view of the cluster: every schedulable node with the resources, host
//! ports and controller owners of the pods placed on it, kept as running totals so a filter or
//! score looks at one node in constant time.
//!
//! Pods count against a node from the moment the scheduler assumes them there (before their
//! binding is written) until they are gone or finished. An assumption is confirmed when the
//! informer shows the pod bound, forgotten when the binding fails, and expires if neither
//! happens in time.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use skiff_api::{
    kinds::{Node, Pod, Taint},
    quantity::Quantity,
};
use tokio::time::Instant;

use crate::controllers::podutil;

/// What Kubernetes counts a container that requests no CPU as, when scoring (not filtering):
/// without it, pods that request nothing would all look free and pile onto one node.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// The memory counterpart of [`DEFAULT_MILLI_CPU_REQUEST`]: 200 MiB.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// CPU in millicores and memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
}

impl Resources {
    fn add(&mut self, o: Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(o.milli_cpu);
        self.memory = self.memory.saturating_add(o.memory);
    }

    fn sub(&mut self, o: Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(o.milli_cpu);
        self.memory = self.memory.saturating_sub(o.memory);
    }
}

fn to_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

fn milli(q: Option<&Quantity>) -> i64 {
    q.map_or(0, |q| to_i64(q.milli_value()))
}

fn bytes(q: Option<&Quantity>) -> i64 {
    q.map_or(0, |q| to_i64(q.value()))
}

/// The transport protocol of a host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// `TCP` when empty, as the API defaults it.
    pub fn parse(s: &str) -> Protocol {
        match s {
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            _ => Protocol::Tcp,
        }
    }
}

/// A port a pod takes on its node's own addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: Protocol,
    pub port: i32,
}

/// What one pod takes from the node it is placed on, worked out once from its spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// The sum of the containers' requests: what filters compare with allocatable.
    pub requests: Resources,
    /// The same with defaults for containers that request nothing: what scores count.
    pub non_zero: Resources,
    pub host_ports: Vec<HostPort>,
    /// The uid of the pod's controller (its ReplicaSet, say), for spreading.
    pub owner: Option<Arc<str>>,
}

impl Demand {
    pub fn of(pod: &Pod) -> Demand {
        let mut d = Demand {
            owner: owner_of(pod),
            ..Demand::default()
        };
        for c in &pod.spec.containers {
            let cpu = milli(c.resources.requests.get("cpu"));
            let memory = bytes(c.resources.requests.get("memory"));
            d.requests.add(Resources {
                milli_cpu: cpu,
                memory,
            });
            d.non_zero.add(Resources {
                milli_cpu: if cpu == 0 {
                    DEFAULT_MILLI_CPU_REQUEST
                } else {
                    cpu
                },
                memory: if memory == 0 {
                    DEFAULT_MEMORY_REQUEST
                } else {
                    memory
                },
            });
            d.host_ports.extend(
                c.ports
                    .iter()
                    .filter(|p| p.host_port > 0)
                    .map(|p| HostPort {
                        protocol: Protocol::parse(&p.protocol),
                        port: p.host_port,
                    }),
            );
        }
        d
    }
}

fn owner_of(pod: &Pod) -> Option<Arc<str>> {
    pod.metadata
        .controller_ref()
        .filter(|r| !r.uid.is_empty())
        .map(|r| Arc::from(r.uid.as_str()))
}

/// A pod waiting to be scheduled, with what it needs worked out once for every attempt.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub demand: Demand,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let demand = Demand::of(&pod);
        PodInfo { pod, demand }
    }
}

/// What the pods placed on one node take, summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub requested: Resources,
    pub non_zero: Resources,
    pub pods: u32,
    /// Each host port in use and how many pods use it (more than one only if something other
    /// than this scheduler placed them).
    pub host_ports: Vec<(HostPort, u32)>,
    /// Pods per controller uid.
    pub owners: HashMap<Arc<str>, u32>,
}

impl Usage {
    fn add(&mut self, d: &Demand) {
        self.requested.add(d.requests);
        self.non_zero.add(d.non_zero);
        self.pods += 1;
        for hp in &d.host_ports {
            match self.host_ports.iter_mut().find(|(p, _)| p == hp) {
                Some((_, n)) => *n += 1,
                None => self.host_ports.push((*hp, 1)),
            }
        }
        if let Some(o) = &d.owner {
            *self.owners.entry(o.clone()).or_insert(0) += 1;
        }
    }

    fn remove(&mut self, d: &Demand) {
        self.requested.sub(d.requests);
        self.non_zero.sub(d.non_zero);
        self.pods = self.pods.saturating_sub(1);
        for hp in &d.host_ports {
            if let Some(i) = self.host_ports.iter().position(|(p, _)| p == hp) {
                self.host_ports[i].1 -= 1;
                if self.host_ports[i].1 == 0 {
                    self.host_ports.swap_remove(i);
                }
            }
        }
        if let Some(o) = &d.owner
            && let Some(n) = self.owners.get_mut(o)
        {
            *n -= 1;
            if *n == 0 {
                self.owners.remove(o);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.pods == 0
    }

    pub fn port_in_use(&self, hp: &HostPort) -> bool {
        self.host_ports.iter().any(|(p, _)| p == hp)
    }

    /// How many pods of controller `owner` are on the node.
    pub fn owned_by(&self, owner: &str) -> u32 {
        self.owners.get(owner).copied().unwrap_or(0)
    }
}

/// One node as the scheduler sees it: the Node object, the facts filters need from it, and what
/// its pods take.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: Arc<str>,
    pub node: Arc<Node>,
    /// `Ready=True`.
    pub ready: bool,
    pub allocatable: Resources,
    /// `allocatable.pods`, when the node gives one.
    pub max_pods: Option<i64>,
    pub usage: Usage,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let name = Arc::from(node.metadata.name.as_str());
        NodeInfo::with_usage(name, node, Usage::default())
    }

    fn with_usage(name: Arc<str>, node: Arc<Node>, usage: Usage) -> NodeInfo {
        let mut info = NodeInfo {
            name,
            ready: false,
            allocatable: Resources::default(),
            max_pods: None,
            node: node.clone(),
            usage,
        };
        info.set_node(node);
        info
    }

    fn set_node(&mut self, node: Arc<Node>) {
        let a = &node.status.allocatable;
        self.ready = podutil::node_is_ready(&node);
        self.allocatable = Resources {
            milli_cpu: milli(a.get("cpu")),
            memory: bytes(a.get("memory")),
        };
        self.max_pods = a.get("pods").map(|q| to_i64(q.value()));
        self.node = node;
    }

    /// Whether going from this node to `new` could let a pod fit that did not before, or the
    /// reverse: a heartbeat changes neither.
    fn scheduling_differs(&self, new: &Node) -> bool {
        let old = &*self.node;
        old.spec.unschedulable != new.spec.unschedulable
            || old.spec.taints != new.spec.taints
            || old.metadata.labels != new.metadata.labels
            || old.status.allocatable != new.status.allocatable
            || self.ready != podutil::node_is_ready(new)
    }

    pub fn taints(&self) -> &[Taint] {
        &self.node.spec.taints
    }
}

/// A pod the cache counts against a node.
#[derive(Debug)]
struct PodRecord {
    uid: String,
    node: Arc<str>,
    demand: Demand,
    /// Set while the pod is only assumed: when the assumption lapses.
    assumed_until: Option<Instant>,
}

/// Nodes and the pods on them. Single-owner: the scheduling loop is its only reader and writer.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<Arc<str>, usize>,
    /// What pods take on nodes the cache has no Node object for (not seen yet, or deleted while
    /// pods were still on them), so the totals are right when the node appears.
    orphans: HashMap<Arc<str>, Usage>,
    pods: HashMap<String, PodRecord>,
    assumed: HashSet<String>,
}

/// Whether a pod bound to a node takes its resources: bound and not finished.
pub fn occupies_node(pod: &Pod) -> bool {
    !pod.spec.node_name.is_empty() && !matches!(pod.status.phase.as_str(), "Succeeded" | "Failed")
}

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    /// Every node, in a stable order the framework walks round-robin.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// Adds or replaces a node; true when that may let a waiting pod fit.
    pub fn upsert_node(&mut self, node: Arc<Node>) -> bool {
        if let Some(&i) = self.index.get(node.metadata.name.as_str()) {
            let info = &mut self.nodes[i];
            let differs = info.scheduling_differs(&node);
            info.set_node(node);
            return differs;
        }
        let name: Arc<str> = Arc::from(node.metadata.name.as_str());
        let usage = self.orphans.remove(&name).unwrap_or_default();
        self.index.insert(name.clone(), self.nodes.len());
        self.nodes.push(NodeInfo::with_usage(name, node, usage));
        true
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let info = self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
        if !info.usage.is_empty() {
            self.orphans.insert(info.name, info.usage);
        }
    }

    fn usage_mut(&mut self, node: &Arc<str>) -> &mut Usage {
        match self.index.get(node) {
            Some(&i) => &mut self.nodes[i].usage,
            None => self.orphans.entry(node.clone()).or_default(),
        }
    }

    fn node_name(&self, name: &str) -> Arc<str> {
        self.index
            .get_key_value(name)
            .map_or_else(|| Arc::from(name), |(k, _)| k.clone())
    }

    fn insert(&mut self, key: String, record: PodRecord) {
        self.usage_mut(&record.node).add(&record.demand);
        if record.assumed_until.is_some() {
            self.assumed.insert(key.clone());
        }
        self.pods.insert(key, record);
    }

    fn take(&mut self, key: &str) -> Option<PodRecord> {
        let record = self.pods.remove(key)?;
        self.assumed.remove(key);
        let usage = self.usage_mut(&record.node);
        usage.remove(&record.demand);
        if usage.is_empty() && !self.index.contains_key(&record.node) {
            self.orphans.remove(&record.node);
        }
        Some(record)
    }

    /// Records what the informer shows of a pod. Returns true when resources were released (a
    /// pod finished, or turned out to be elsewhere than assumed), which may let waiting pods fit.
    pub fn observe_pod(&mut self, key: &str, pod: &Pod) -> bool {
        if !occupies_node(pod) {
            return match self.pods.get(key) {
                // Still unbound as far as the informer knows: the assumption stands.
                Some(r) if r.uid == pod.metadata.uid && pod.spec.node_name.is_empty() => false,
                Some(_) => self.take(key).is_some(),
                None => false,
            };
        }
        let mut released = false;
        if let Some(r) = self.pods.get_mut(key) {
            if r.uid == pod.metadata.uid && *r.node == *pod.spec.node_name {
                if r.assumed_until.take().is_some() {
                    self.assumed.remove(key);
                }
                // Only the controller reference can change on a bound pod (orphaning).
                let owner = pod.metadata.controller_ref().map(|o| o.uid.as_str());
                if r.demand.owner.as_deref() != owner {
                    let mut demand = r.demand.clone();
                    demand.owner = owner_of(pod);
                    self.take(key);
                    self.insert(
                        key.to_owned(),
                        PodRecord {
                            uid: pod.metadata.uid.clone(),
                            node: self.node_name(&pod.spec.node_name),
                            demand,
                            assumed_until: None,
                        },
                    );
                }
                return false;
            }
            released = self.take(key).is_some();
        }
        let node = self.node_name(&pod.spec.node_name);
        self.insert(
            key.to_owned(),
            PodRecord {
                uid: pod.metadata.uid.clone(),
                node,
                demand: Demand::of(pod),
                assumed_until: None,
            },
        );
        released
    }

    /// The pod is gone. True when it had taken resources.
    pub fn remove_pod(&mut self, key: &str, uid: &str) -> bool {
        match self.pods.get(key) {
            Some(r) if r.uid == uid => self.take(key).is_some(),
            _ => false,
        }
    }

    /// Counts `pod` against the node at `slot` until its binding is confirmed, fails, or
    /// `until` passes.
    pub fn assume(&mut self, key: &str, pod: &PodInfo, slot: usize, until: Instant) {
        self.take(key);
        let node = self.nodes[slot].name.clone();
        self.insert(
            key.to_owned(),
            PodRecord {
                uid: pod.pod.metadata.uid.clone(),
                node,
                demand: pod.demand.clone(),
                assumed_until: Some(until),
            },
        );
    }

    /// The binding was written: the assumption now waits only for the informer, until `until`.
    pub fn finish_binding(&mut self, key: &str, uid: &str, until: Instant) {
        if let Some(r) = self.pods.get_mut(key)
            && r.uid == uid
            && r.assumed_until.is_some()
        {
            r.assumed_until = Some(until);
        }
    }

    /// Drops the assumption that the pod is on `node`, if that is still all it is. True when it
    /// was dropped.
    pub fn forget(&mut self, key: &str, uid: &str, node: &str) -> bool {
        match self.pods.get(key) {
            Some(r) if r.uid == uid && *r.node == *node && r.assumed_until.is_some() => {
                self.take(key).is_some()
            }
            _ => false,
        }
    }

    /// Drops assumptions that have lapsed and returns their pods' keys.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let lapsed: Vec<String> = self
            .assumed
            .iter()
            .filter(|k| {
                self.pods
                    .get(k.as_str())
                    .and_then(|r| r.assumed_until)
                    .is_none_or(|t| t <= now)
            })
            .cloned()
            .collect();
        for k in &lapsed {
            self.take(k);
        }
        lapsed
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains(key)
    }

    pub fn assumed_count(&self) -> usize {
        self.assumed.len()
    }

    /// The node the pod counts against, if any.
    pub fn pod_node(&self, key: &str) -> Option<&str> {
        self.pods.get(key).map(|r| &*r.node)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use skiff_api::{
        kinds::{Condition, Container, ContainerPort, NodeSpec, NodeStatus, PodSpec},
        meta::OwnerReference,
    };

    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    /// A Ready node with the given allocatable cpu and memory.
    pub(crate) fn node(name: &str, cpu: &str, memory: &str) -> Node {
        Node {
            metadata: skiff_api::ObjectMeta {
                name: name.into(),
                ..Default::default()
            },
            spec: NodeSpec::default(),
            status: NodeStatus {
                allocatable: BTreeMap::from([("cpu".into(), q(cpu)), ("memory".into(), q(memory))]),
                conditions: vec![Condition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        }
    }

    /// An unbound pod in namespace `ns` with one container requesting cpu and memory ("" for
    /// none).
    pub(crate) fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
        let mut requests = BTreeMap::new();
        if !cpu.is_empty() {
            requests.insert("cpu".into(), q(cpu));
        }
        if !memory.is_empty() {
            requests.insert("memory".into(), q(memory));
        }
        let mut c = Container {
            name: "c".into(),
            image: "busybox".into(),
            ..Default::default()
        };
        c.resources.requests = requests;
        Pod {
            metadata: skiff_api::ObjectMeta {
                name: name.into(),
                namespace: "ns".into(),
                uid: format!("uid-{name}"),
                ..Default::default()
            },
            spec: PodSpec {
                containers: vec![c],
                ..Default::default()
            },
            status: Default::default(),
        }
    }

    pub(crate) fn owned(mut p: Pod, owner_uid: &str) -> Pod {
        p.metadata.owner_references.push(OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "rs".into(),
            uid: owner_uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        });
        p
    }

    pub(crate) fn with_host_port(mut p: Pod, port: i32, protocol: &str) -> Pod {
        p.spec.containers[0].ports.push(ContainerPort {
            container_port: port,
            host_port: port,
            protocol: protocol.into(),
            ..Default::default()
        });
        p
    }

    fn bound(mut p: Pod, node: &str) -> Pod {
        p.spec.node_name = node.into();
        p
    }

    fn usage_of<'a>(c: &'a Cache, node: &str) -> &'a Usage {
        &c.node(node).unwrap().usage
    }

    #[test]
    fn demand_sums_containers_and_defaults_only_the_scoring_view() {
        let mut p = pod("a", "250m", "64Mi");
        let mut second = p.spec.containers[0].clone();
        second.resources.requests.clear();
        p.spec.containers.push(second);
        let d = Demand::of(&with_host_port(owned(p, "rs-1"), 8080, "UDP"));
        assert_eq!(
            d.requests,
            Resources {
                milli_cpu: 250,
                memory: 64 << 20
            }
        );
        assert_eq!(
            d.non_zero,
            Resources {
                milli_cpu: 250 + DEFAULT_MILLI_CPU_REQUEST,
                memory: (64 << 20) + DEFAULT_MEMORY_REQUEST
            }
        );
        assert_eq!(
            d.host_ports,
            vec![HostPort {
                protocol: Protocol::Udp,
                port: 8080
            }]
        );
        assert_eq!(d.owner.as_deref(), Some("rs-1"));
    }

    #[test]
    fn bound_pods_count_against_their_node_until_gone_or_finished() {
        let mut c = Cache::new();
        c.upsert_node(Arc::new(node("n1", "4", "8Gi")));
        let a = bound(pod("a", "1", "1Gi"), "n1");
        assert!(!c.observe_pod("ns/a", &a));
        // A status update of the same pod changes nothing.
        assert!(!c.observe_pod("ns/a", &a));
        assert_eq!(usage_of(&c, "n1").requested.milli_cpu, 1000);
        assert_eq!(usage_of(&c, "n1").pods, 1);
        let mut done = a.clone();
        done.status.phase = "Succeeded".into();
        assert!(c.observe_pod("ns/a", &done));
        assert_eq!(usage_of(&c, "n1"), &Usage::default());
        let b = bound(pod("b", "1", "1Gi"), "n1");
        c.observe_pod("ns/b", &b);
        assert!(!c.remove_pod("ns/b", "some-other-uid"));
        assert!(c.remove_pod("ns/b", "uid-b"));
        assert_eq!(usage_of(&c, "n1"), &Usage::default());
    }

    #[test]
    fn pods_on_an_unknown_node_are_counted_once_it_appears_and_kept_when_it_goes() {
        let mut c = Cache::new();
        c.observe_pod("ns/a", &bound(pod("a", "1", ""), "late"));
        assert!(c.node("late").is_none());
        assert!(c.upsert_node(Arc::new(node("late", "4", "8Gi"))));
        assert_eq!(usage_of(&c, "late").requested.milli_cpu, 1000);
        c.remove_node("late");
        c.upsert_node(Arc::new(node("late", "4", "8Gi")));
        assert_eq!(usage_of(&c, "late").pods, 1);
        // An orphan's totals go away with its last pod.
        c.remove_node("late");
        c.remove_pod("ns/a", "uid-a");
        assert!(c.orphans.is_empty());
    }

    #[test]
    fn removing_a_node_keeps_the_index_of_the_one_moved_into_its_place() {
        let mut c = Cache::new();
        for n in ["a", "b", "c"] {
            c.upsert_node(Arc::new(node(n, "1", "1Gi")));
        }
        c.remove_node("a");
        assert_eq!(c.nodes().len(), 2);
        assert_eq!(&*c.node("c").unwrap().name, "c");
        assert_eq!(&*c.node("b").unwrap().name, "b");
    }

    #[test]
    fn a_heartbeat_is_no_scheduling_change_but_labels_taints_and_readiness_are() {
        let mut c = Cache::new();
        let n = node("n", "1", "1Gi");
        assert!(c.upsert_node(Arc::new(n.clone())));
        let mut beat = n.clone();
        beat.status.conditions[0].last_heartbeat_time = Some("2026-01-01T00:00:00Z".into());
        assert!(!c.upsert_node(Arc::new(beat.clone())));
        let mut labelled = beat.clone();
        labelled.metadata.labels.insert("disk".into(), "ssd".into());
        assert!(c.upsert_node(Arc::new(labelled.clone())));
        let mut not_ready = labelled.clone();
        not_ready.status.conditions[0].status = "False".into();
        assert!(c.upsert_node(Arc::new(not_ready)));
        assert!(!c.node("n").unwrap().ready);
    }

    #[test]
    fn an_assumption_is_confirmed_by_the_informer_or_dropped_by_forget_or_expiry() {
        let mut c = Cache::new();
        c.upsert_node(Arc::new(node("n1", "4", "8Gi")));
        c.upsert_node(Arc::new(node("n2", "4", "8Gi")));
        let t0 = Instant::now();
        let a = PodInfo::new(Arc::new(pod("a", "1", "1Gi")));
        c.assume("ns/a", &a, 0, t0 + Duration::from_secs(60));
        assert!(c.is_assumed("ns/a"));
        assert_eq!(c.nodes()[0].usage.pods, 1);
        // The informer still shows it unbound: the assumption stands.
        assert!(!c.observe_pod("ns/a", &a.pod));
        c.finish_binding("ns/a", "uid-a", t0 + Duration::from_secs(30));
        assert!(c.expire(t0 + Duration::from_secs(29)).is_empty());
        // Bound where assumed: confirmed, counted once, and no longer expires.
        c.observe_pod("ns/a", &bound(pod("a", "1", "1Gi"), "n1"));
        assert!(!c.is_assumed("ns/a"));
        assert!(c.expire(t0 + Duration::from_secs(100)).is_empty());
        assert_eq!(c.nodes()[0].usage.pods, 1);
        // Forget does nothing to a confirmed pod.
        assert!(!c.forget("ns/a", "uid-a", "n1"));

        let b = PodInfo::new(Arc::new(pod("b", "1", "1Gi")));
        c.assume("ns/b", &b, 1, t0 + Duration::from_secs(60));
        assert!(!c.forget("ns/b", "uid-b", "n1"), "assumed on n2, not n1");
        assert!(c.forget("ns/b", "uid-b", "n2"));
        assert_eq!(c.nodes()[1].usage, Usage::default());

        c.assume("ns/b", &b, 1, t0 + Duration::from_secs(60));
        assert_eq!(
            c.expire(t0 + Duration::from_secs(61)),
            vec!["ns/b".to_owned()]
        );
        assert_eq!(c.nodes()[1].usage, Usage::default());
    }

    #[test]
    fn a_pod_bound_elsewhere_than_assumed_moves_its_resources() {
        let mut c = Cache::new();
        c.upsert_node(Arc::new(node("n1", "4", "8Gi")));
        c.upsert_node(Arc::new(node("n2", "4", "8Gi")));
        let a = PodInfo::new(Arc::new(pod("a", "1", "1Gi")));
        c.assume("ns/a", &a, 0, Instant::now());
        assert!(c.observe_pod("ns/a", &bound(pod("a", "1", "1Gi"), "n2")));
        assert_eq!(c.nodes()[0].usage, Usage::default());
        assert_eq!(c.nodes()[1].usage.pods, 1);
        assert_eq!(c.pod_node("ns/a"), Some("n2"));
    }

    #[test]
    fn host_ports_and_owners_are_counted_and_released() {
        let mut c = Cache::new();
        c.upsert_node(Arc::new(node("n1", "4", "8Gi")));
        let hp = HostPort {
            protocol: Protocol::Tcp,
            port: 80,
        };
        for name in ["a", "b"] {
            let p = bound(owned(with_host_port(pod(name, "", ""), 80, ""), "rs"), "n1");
            c.observe_pod(&format!("ns/{name}"), &p);
        }
        assert_eq!(usage_of(&c, "n1").host_ports, vec![(hp, 2)]);
        assert_eq!(usage_of(&c, "n1").owned_by("rs"), 2);
        c.remove_pod("ns/a", "uid-a");
        assert!(usage_of(&c, "n1").port_in_use(&hp));
        assert_eq!(usage_of(&c, "n1").owned_by("rs"), 1);
        // Orphaned by the garbage collector: no longer counted for its old owner.
        let mut orphan = bound(with_host_port(pod("b", "", ""), 80, ""), "n1");
        orphan.metadata.owner_references.clear();
        c.observe_pod("ns/b", &orphan);
        assert_eq!(usage_of(&c, "n1").owned_by("rs"), 0);
        assert_eq!(usage_of(&c, "n1").pods, 1);
        c.remove_pod("ns/b", "uid-b");
        assert_eq!(usage_of(&c, "n1"), &Usage::default());
    }
}
