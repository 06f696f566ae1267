//! The plugins the scheduler runs by default. Filters: node ready and not cordoned, node
//! selector, taints against tolerations, host ports, requested resources. Scores: least
//! allocated, and spreading pods of one controller across nodes.

use skiff_api::kinds::{Taint, Toleration};

use super::{
    cache::{NodeInfo, PodInfo, Resources},
    framework::{FilterPlugin, Framework, MAX_NODE_SCORE, Reason, ScorePlugin, Status},
};

/// The taint Kubernetes puts on cordoned nodes; a pod tolerating it may still go there.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// The taint Kubernetes puts on nodes that are not ready; a pod tolerating it may still go there.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";

pub const REASON_NOT_READY: Reason = Reason::fixed("node(s) were not ready");
pub const REASON_UNSCHEDULABLE: Reason = Reason::fixed("node(s) were unschedulable");
pub const REASON_SELECTOR: Reason =
    Reason::fixed("node(s) didn't match Pod's node affinity/selector");
pub const REASON_PORTS: Reason =
    Reason::fixed("node(s) didn't have free ports for the requested pod ports");
pub const REASON_CPU: Reason = Reason::fixed("Insufficient cpu");
pub const REASON_MEMORY: Reason = Reason::fixed("Insufficient memory");
pub const REASON_PODS: Reason = Reason::fixed("Too many pods");

/// The default plugins: filters cheapest first, spreading weighted above packing.
pub fn default_framework(percentage_of_nodes_to_score: u32) -> Framework {
    let mut f = Framework::new(percentage_of_nodes_to_score);
    f.add_filter(NodeSchedulable)
        .add_filter(NodeSelector)
        .add_filter(TaintToleration)
        .add_filter(NodePorts)
        .add_filter(NodeResourcesFit)
        .add_score(LeastAllocated, 1)
        .add_score(OwnerSpread, 2);
    f
}

/// Whether `toleration` tolerates `taint`, by Kubernetes' rules: the effect matches or the
/// toleration names none; `Exists` with no key tolerates every taint, `Exists` with a key every
/// taint with that key; `Equal` (the default) wants the key, when given, and the value to match.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if !toleration.effect.is_empty() && toleration.effect != taint.effect {
        return false;
    }
    if !toleration.key.is_empty() && toleration.key != taint.key {
        return false;
    }
    match toleration.operator.as_str() {
        "Exists" => true,
        "" | "Equal" => toleration.value == taint.value,
        _ => false,
    }
}

fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// Whether the pod tolerates a `NoSchedule` taint with this key and no value.
fn tolerates_no_schedule(pod: &PodInfo, key: &str) -> bool {
    let taint = Taint {
        key: key.to_owned(),
        effect: "NoSchedule".to_owned(),
        ..Taint::default()
    };
    tolerated(&pod.pod.spec.tolerations, &taint)
}

/// The node is `Ready` and not cordoned (`spec.unschedulable`), unless the pod tolerates the
/// taint Kubernetes would have put on it for that.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeSchedulable;

impl FilterPlugin for NodeSchedulable {
    fn name(&self) -> &'static str {
        "NodeSchedulable"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        if !node.ready && !tolerates_no_schedule(pod, TAINT_NOT_READY) {
            return Status::unfit(REASON_NOT_READY);
        }
        if node.node.spec.unschedulable && !tolerates_no_schedule(pod, TAINT_UNSCHEDULABLE) {
            return Status::unfit(REASON_UNSCHEDULABLE);
        }
        Status::Fit
    }
}

/// Every `nodeSelector` label is on the node with that value.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeSelector;

impl FilterPlugin for NodeSelector {
    fn name(&self) -> &'static str {
        "NodeSelector"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        let labels = &node.node.metadata.labels;
        let fits = pod
            .pod
            .spec
            .node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v));
        if fits {
            Status::Fit
        } else {
            Status::unfit(REASON_SELECTOR)
        }
    }
}

/// Every `NoSchedule` and `NoExecute` taint of the node is tolerated (`PreferNoSchedule` is
/// only a preference).
#[derive(Debug, Clone, Copy, Default)]
pub struct TaintToleration;

impl FilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        let untolerated = node.taints().iter().find(|t| {
            matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
                && !tolerated(&pod.pod.spec.tolerations, t)
        });
        match untolerated {
            Some(t) => Status::unfit(Reason::new(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key, t.value
            ))),
            None => Status::Fit,
        }
    }
}

/// No host port the pod asks for is taken on the node (per protocol).
#[derive(Debug, Clone, Copy, Default)]
pub struct NodePorts;

impl FilterPlugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        if pod
            .demand
            .host_ports
            .iter()
            .any(|p| node.usage.port_in_use(p))
        {
            Status::unfit(REASON_PORTS)
        } else {
            Status::Fit
        }
    }
}

/// The pod's CPU and memory requests fit in what the node's allocatable leaves after the pods
/// already there (assumed ones included), and the node's pod limit, if it has one, is not
/// reached. A resource the pod does not request is not checked, as in Kubernetes.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeResourcesFit;

impl FilterPlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        let want = pod.demand.requests;
        let used = node.usage.requested;
        let free = |alloc: i64, used: i64| alloc.saturating_sub(used);
        let mut reasons = Vec::new();
        if node
            .max_pods
            .is_some_and(|max| i64::from(node.usage.pods) + 1 > max)
        {
            reasons.push(REASON_PODS);
        }
        if want.milli_cpu > 0 && want.milli_cpu > free(node.allocatable.milli_cpu, used.milli_cpu) {
            reasons.push(REASON_CPU);
        }
        if want.memory > 0 && want.memory > free(node.allocatable.memory, used.memory) {
            reasons.push(REASON_MEMORY);
        }
        if reasons.is_empty() {
            Status::Fit
        } else {
            Status::Unfit(reasons)
        }
    }
}

/// Prefers the node with the largest share of CPU and memory left after placing the pod
/// (averaged), counting pods that request nothing as a small default so they spread too.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastAllocated;

fn free_share(capacity: i64, requested: i64) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    // In i128: capacity * 100 can pass i64 for huge memory figures.
    let share =
        i128::from(capacity - requested) * i128::from(MAX_NODE_SCORE) / i128::from(capacity);
    i64::try_from(share).unwrap_or(0)
}

impl ScorePlugin for LeastAllocated {
    fn name(&self) -> &'static str {
        "LeastAllocated"
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Resources { milli_cpu, memory } = node.usage.non_zero;
        let want = pod.demand.non_zero;
        let cpu = free_share(
            node.allocatable.milli_cpu,
            milli_cpu.saturating_add(want.milli_cpu),
        );
        let mem = free_share(node.allocatable.memory, memory.saturating_add(want.memory));
        (cpu + mem) / 2
    }
}

/// Prefers nodes with fewer pods of the pod's controller (the controller ownerReference's uid),
/// so a ReplicaSet's replicas do not share a node while others are free of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnerSpread;

impl ScorePlugin for OwnerSpread {
    fn name(&self) -> &'static str {
        "OwnerSpread"
    }

    /// The number of the controller's pods on the node.
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        pod.demand
            .owner
            .as_deref()
            .map_or(0, |o| i64::from(node.usage.owned_by(o)))
    }

    /// Fewest pods scores 100, most scores 0 (scaled against the most on any node).
    fn normalize(&self, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        for s in scores {
            *s = if max <= 0 {
                MAX_NODE_SCORE
            } else {
                (max - *s) * MAX_NODE_SCORE / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use skiff_api::kinds::{Node, Pod};

    use super::*;
    use crate::scheduler::cache::{
        Cache,
        tests::{node, owned, pod, with_host_port},
    };

    fn info(p: Pod) -> PodInfo {
        PodInfo::new(Arc::new(p))
    }

    fn node_info(n: Node) -> NodeInfo {
        NodeInfo::new(Arc::new(n))
    }

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn toleration(key: &str, operator: &str, value: &str, effect: &str) -> Toleration {
        Toleration {
            key: key.into(),
            operator: operator.into(),
            value: value.into(),
            effect: effect.into(),
            toleration_seconds: None,
        }
    }

    /// A cache with these nodes and these pods bound (name, node).
    fn cache(nodes: Vec<Node>, bound: Vec<(Pod, &str)>) -> Cache {
        let mut c = Cache::new();
        for n in nodes {
            c.upsert_node(Arc::new(n));
        }
        for (mut p, n) in bound {
            p.spec.node_name = n.into();
            let key = format!("ns/{}", p.metadata.name);
            c.observe_pod(&key, &p);
        }
        c
    }

    fn reasons(s: Status) -> Vec<String> {
        match s {
            Status::Fit => Vec::new(),
            Status::Unfit(r) => r.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn toleration_matching_follows_kubernetes_rules() {
        let t = taint("dedicated", "gpu", "NoSchedule");
        let cases = [
            (toleration("dedicated", "Equal", "gpu", "NoSchedule"), true),
            (toleration("dedicated", "", "gpu", ""), true),
            (toleration("dedicated", "Equal", "cpu", "NoSchedule"), false),
            (toleration("dedicated", "Exists", "", "NoSchedule"), true),
            (toleration("dedicated", "Exists", "", ""), true),
            (toleration("dedicated", "Exists", "", "NoExecute"), false),
            (toleration("other", "Exists", "", ""), false),
            // Empty key with Exists tolerates everything.
            (toleration("", "Exists", "", ""), true),
            (toleration("", "Exists", "", "NoExecute"), false),
            (toleration("dedicated", "Lt", "gpu", ""), false),
        ];
        for (tol, want) in cases {
            assert_eq!(tolerates(&tol, &t), want, "{tol:?}");
        }
    }

    #[test]
    fn untolerated_no_schedule_and_no_execute_taints_rule_a_node_out() {
        let mut n = node("n", "4", "8Gi");
        n.spec.taints = vec![
            taint("soft", "", "PreferNoSchedule"),
            taint("dedicated", "gpu", "NoSchedule"),
            taint("evict", "now", "NoExecute"),
        ];
        let n = node_info(n);
        assert_eq!(
            reasons(TaintToleration.filter(&info(pod("p", "", "")), &n)),
            ["node(s) had untolerated taint {dedicated: gpu}"]
        );
        let mut p = pod("p", "", "");
        p.spec.tolerations = vec![toleration("dedicated", "Equal", "gpu", "NoSchedule")];
        assert_eq!(
            reasons(TaintToleration.filter(&info(p.clone()), &n)),
            ["node(s) had untolerated taint {evict: now}"]
        );
        p.spec
            .tolerations
            .push(toleration("evict", "Exists", "", "NoExecute"));
        assert!(TaintToleration.filter(&info(p), &n).is_fit());
        let mut all = pod("p", "", "");
        all.spec.tolerations = vec![toleration("", "Exists", "", "")];
        assert!(TaintToleration.filter(&info(all), &n).is_fit());
    }

    #[test]
    fn not_ready_and_cordoned_nodes_are_ruled_out_unless_tolerated() {
        let mut n = node("n", "4", "8Gi");
        n.status.conditions[0].status = "Unknown".into();
        let p = pod("p", "", "");
        assert_eq!(
            reasons(NodeSchedulable.filter(&info(p.clone()), &node_info(n.clone()))),
            ["node(s) were not ready"]
        );
        let mut tolerant = p.clone();
        tolerant.spec.tolerations = vec![toleration(TAINT_NOT_READY, "Exists", "", "")];
        assert!(
            NodeSchedulable
                .filter(&info(tolerant), &node_info(n))
                .is_fit()
        );
        let mut cordoned = node("n", "4", "8Gi");
        cordoned.spec.unschedulable = true;
        assert_eq!(
            reasons(NodeSchedulable.filter(&info(p.clone()), &node_info(cordoned.clone()))),
            ["node(s) were unschedulable"]
        );
        let mut tolerant = p.clone();
        tolerant.spec.tolerations =
            vec![toleration(TAINT_UNSCHEDULABLE, "Exists", "", "NoSchedule")];
        assert!(
            NodeSchedulable
                .filter(&info(tolerant), &node_info(cordoned))
                .is_fit()
        );
        assert!(
            NodeSchedulable
                .filter(&info(p), &node_info(node("n", "1", "1Gi")))
                .is_fit()
        );
    }

    #[test]
    fn node_selector_needs_every_label_with_its_value() {
        let mut n = node("n", "4", "8Gi");
        n.metadata.labels.insert("disk".into(), "ssd".into());
        n.metadata.labels.insert("zone".into(), "a".into());
        let n = node_info(n);
        let mut p = pod("p", "", "");
        assert!(NodeSelector.filter(&info(p.clone()), &n).is_fit());
        p.spec.node_selector.insert("disk".into(), "ssd".into());
        assert!(NodeSelector.filter(&info(p.clone()), &n).is_fit());
        p.spec.node_selector.insert("zone".into(), "b".into());
        assert_eq!(
            reasons(NodeSelector.filter(&info(p), &n)),
            ["node(s) didn't match Pod's node affinity/selector"]
        );
    }

    #[test]
    fn a_host_port_in_use_rules_a_node_out_for_the_same_protocol_only() {
        let c = cache(
            vec![node("n", "4", "8Gi")],
            vec![(with_host_port(pod("web", "", ""), 80, "TCP"), "n")],
        );
        let n = &c.nodes()[0];
        assert_eq!(
            reasons(NodePorts.filter(&info(with_host_port(pod("p", "", ""), 80, "")), n)),
            ["node(s) didn't have free ports for the requested pod ports"]
        );
        assert!(
            NodePorts
                .filter(&info(with_host_port(pod("p", "", ""), 80, "UDP")), n)
                .is_fit()
        );
        assert!(
            NodePorts
                .filter(&info(with_host_port(pod("p", "", ""), 81, "TCP")), n)
                .is_fit()
        );
        assert!(NodePorts.filter(&info(pod("p", "", "")), n).is_fit());
    }

    #[test]
    fn requests_must_fit_in_what_bound_pods_leave_and_every_shortfall_is_named() {
        let mut n = node("n", "2", "4Gi");
        n.status
            .allocatable
            .insert("pods".into(), "2".parse().unwrap());
        let c = cache(vec![n], vec![(pod("a", "1500m", "3Gi"), "n")]);
        let n = &c.nodes()[0];
        assert!(
            NodeResourcesFit
                .filter(&info(pod("p", "500m", "1Gi")), n)
                .is_fit()
        );
        assert_eq!(
            reasons(NodeResourcesFit.filter(&info(pod("p", "501m", "1Gi")), n)),
            ["Insufficient cpu"]
        );
        assert_eq!(
            reasons(NodeResourcesFit.filter(&info(pod("p", "600m", "2Gi")), n)),
            ["Insufficient cpu", "Insufficient memory"]
        );
        // A pod that requests nothing fits whatever is left.
        assert!(NodeResourcesFit.filter(&info(pod("p", "", "")), n).is_fit());
        let c = cache(
            vec![c.nodes()[0].node.as_ref().clone()],
            vec![(pod("a", "", ""), "n"), (pod("b", "", ""), "n")],
        );
        assert_eq!(
            reasons(NodeResourcesFit.filter(&info(pod("p", "", "")), &c.nodes()[0])),
            ["Too many pods"]
        );
    }

    #[test]
    fn a_node_without_allocatable_takes_only_pods_that_request_nothing() {
        let mut n = node("n", "1", "1Gi");
        n.status.allocatable.clear();
        let n = node_info(n);
        assert!(
            NodeResourcesFit
                .filter(&info(pod("p", "", "")), &n)
                .is_fit()
        );
        assert_eq!(
            reasons(NodeResourcesFit.filter(&info(pod("p", "1m", "")), &n)),
            ["Insufficient cpu"]
        );
        assert_eq!(LeastAllocated.score(&info(pod("p", "", "")), &n), 0);
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node_and_averages_cpu_and_memory() {
        let c = cache(
            vec![node("busy", "4", "8Gi"), node("idle", "4", "8Gi")],
            vec![(pod("a", "2", "4Gi"), "busy")],
        );
        let p = info(pod("p", "1", "2Gi"));
        // busy: cpu (4-3)/4 = 25, memory (8-6)/8 = 25; idle: 75 and 75.
        assert_eq!(LeastAllocated.score(&p, &c.nodes()[0]), 25);
        assert_eq!(LeastAllocated.score(&p, &c.nodes()[1]), 75);
        // Only cpu taken: cpu 25, memory 75.
        let c = cache(vec![node("n", "4", "8Gi")], vec![(pod("a", "2", "1"), "n")]);
        let p = info(pod("p", "1", "2Gi"));
        let memory = (8i64 << 30) - 1 - (2i64 << 30);
        let want = (25 + memory * 100 / (8i64 << 30)) / 2;
        assert_eq!(LeastAllocated.score(&p, &c.nodes()[0]), want);
        // Requesting more than there is scores zero, not negative.
        assert_eq!(
            LeastAllocated.score(&info(pod("p", "8", "16Gi")), &c.nodes()[0]),
            0
        );
    }

    #[test]
    fn least_allocated_counts_pods_without_requests_so_they_spread() {
        let c = cache(
            vec![node("one", "4", "8Gi"), node("none", "4", "8Gi")],
            vec![(pod("a", "", ""), "one")],
        );
        let p = info(pod("p", "", ""));
        assert!(LeastAllocated.score(&p, &c.nodes()[0]) < LeastAllocated.score(&p, &c.nodes()[1]));
    }

    #[test]
    fn owner_spread_prefers_nodes_with_fewer_pods_of_the_same_controller() {
        let c = cache(
            vec![
                node("two", "4", "8Gi"),
                node("one", "4", "8Gi"),
                node("none", "4", "8Gi"),
            ],
            vec![
                (owned(pod("a", "", ""), "rs"), "two"),
                (owned(pod("b", "", ""), "rs"), "two"),
                (owned(pod("c", "", ""), "rs"), "one"),
                // Another controller's pods do not count.
                (owned(pod("d", "", ""), "other"), "none"),
            ],
        );
        let p = info(owned(pod("p", "", ""), "rs"));
        let mut scores: Vec<i64> = c.nodes().iter().map(|n| OwnerSpread.score(&p, n)).collect();
        assert_eq!(scores, [2, 1, 0]);
        OwnerSpread.normalize(&mut scores);
        assert_eq!(scores, [0, 50, 100]);
        // A pod without a controller scores every node the same.
        let lone = info(pod("p", "", ""));
        let mut scores: Vec<i64> = c
            .nodes()
            .iter()
            .map(|n| OwnerSpread.score(&lone, n))
            .collect();
        OwnerSpread.normalize(&mut scores);
        assert_eq!(scores, [100, 100, 100]);
    }

    #[test]
    fn the_default_framework_places_replicas_on_distinct_nodes_while_it_can() {
        let mut c = cache(
            vec![
                node("a", "4", "8Gi"),
                node("b", "4", "8Gi"),
                node("c", "4", "8Gi"),
            ],
            Vec::new(),
        );
        let mut fw = default_framework(0);
        let mut used = Vec::new();
        for i in 0..3 {
            let p = info(owned(pod(&format!("r{i}"), "100m", "64Mi"), "rs"));
            let slot = fw.schedule(&p, c.nodes()).unwrap();
            used.push(c.nodes()[slot].name.to_string());
            c.assume(&format!("ns/r{i}"), &p, slot, tokio::time::Instant::now());
        }
        used.sort();
        assert_eq!(used, ["a", "b", "c"]);
    }

    #[test]
    fn assumed_pods_take_resources_so_two_pods_that_fit_once_do_not_both_land() {
        let mut c = cache(vec![node("small", "1", "1Gi")], Vec::new());
        let mut fw = default_framework(0);
        let first = info(pod("first", "600m", "512Mi"));
        let slot = fw.schedule(&first, c.nodes()).unwrap();
        c.assume("ns/first", &first, slot, tokio::time::Instant::now());
        let second = info(pod("second", "600m", "100Mi"));
        let err = fw.schedule(&second, c.nodes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/1 nodes are available: 1 Insufficient cpu."
        );
        // Once the first is forgotten (its binding failed), the second fits.
        c.forget("ns/first", "uid-first", "small");
        assert!(fw.schedule(&second, c.nodes()).is_ok());
    }

    #[test]
    fn the_default_framework_reports_every_reason_across_nodes() {
        let mut tainted = node("t", "4", "8Gi");
        tainted.spec.taints = vec![taint("key", "value", "NoSchedule")];
        let mut cordoned = node("c", "4", "8Gi");
        cordoned.spec.unschedulable = true;
        let c = cache(
            vec![
                node("small1", "1", "1Gi"),
                node("small2", "1", "512Mi"),
                node("small3", "1", "1Gi"),
                tainted,
                cordoned,
            ],
            Vec::new(),
        );
        let err = default_framework(0)
            .schedule(&info(pod("p", "100m", "2Gi")), c.nodes())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/5 nodes are available: 3 Insufficient memory, 1 node(s) had untolerated taint {key: value}, 1 node(s) were unschedulable."
        );
    }
}
