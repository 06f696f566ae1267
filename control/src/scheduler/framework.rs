//! The scheduling framework: filter plugins say which nodes can take a pod, score plugins rank
//! the nodes that can, and the framework picks the best, spreading ties. Like Kubernetes, it
//! stops filtering once it has found enough feasible nodes in a large cluster, and starts each
//! pod where the last one stopped so every node gets its turn.

use std::{borrow::Cow, fmt};

use super::cache::{NodeInfo, PodInfo};

/// The highest score a plugin gives a node once normalized.
pub const MAX_NODE_SCORE: i64 = 100;

/// Below this many nodes, every node is filtered for every pod.
pub const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;

/// Why a node cannot take a pod, worded to be one entry of the "0/N nodes are available"
/// message (`Insufficient cpu`, `node(s) had untolerated taint {key: value}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reason(Cow<'static, str>);

impl Reason {
    pub const fn fixed(s: &'static str) -> Reason {
        Reason(Cow::Borrowed(s))
    }

    pub fn new(s: String) -> Reason {
        Reason(Cow::Owned(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A filter plugin's verdict on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Fit,
    /// Every reason the node cannot take the pod (resources report each one short).
    Unfit(Vec<Reason>),
}

impl Status {
    pub fn unfit(r: Reason) -> Status {
        Status::Unfit(vec![r])
    }

    pub fn is_fit(&self) -> bool {
        matches!(self, Status::Fit)
    }
}

/// Decides whether a node can take a pod. Runs once per pod per node examined, so it must be
/// cheap: the cache keeps per-node totals so that a filter never walks the node's pods.
pub trait FilterPlugin: fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status;
}

/// Ranks the nodes that passed every filter.
pub trait ScorePlugin: fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    /// This plugin's raw score for `node`: higher is better.
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64;
    /// Maps the raw scores of all nodes being ranked for one pod onto `0..=MAX_NODE_SCORE`.
    /// Plugins whose raw scores are already in range keep the default.
    fn normalize(&self, scores: &mut [i64]) {
        for s in scores {
            *s = (*s).clamp(0, MAX_NODE_SCORE);
        }
    }
}

/// Why a pod fits on no node: each reason with the number of nodes it ruled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    /// The nodes considered.
    pub nodes: usize,
    /// Most frequent first, then by wording.
    pub reasons: Vec<(Reason, usize)>,
}

impl fmt::Display for FitError {
    /// `0/5 nodes are available: 3 Insufficient memory, 2 node(s) were unschedulable.`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        write!(f, "0/{} nodes are available", self.nodes)?;
        for (i, (reason, n)) in self.reasons.iter().enumerate() {
            let sep = if i == 0 { ": " } else { ", " };
            write!(f, "{sep}{n} {reason}")?;
        }
        f.write_str(".")
    }
}

impl std::error::Error for FitError {}

/// How many feasible nodes to look for among `nodes` before ranking: all of a small cluster;
/// in a large one `percentage` of it (0: a share that shrinks from 50% as the cluster grows,
/// at least 5%), and never fewer than [`MIN_FEASIBLE_NODES_TO_FIND`].
pub fn num_feasible_nodes_to_find(nodes: usize, percentage: u32) -> usize {
    if nodes < MIN_FEASIBLE_NODES_TO_FIND || percentage >= 100 {
        return nodes;
    }
    let percentage = match usize::try_from(percentage).unwrap_or(100) {
        0 => 50usize.saturating_sub(nodes / 125).max(5),
        p => p,
    };
    (nodes * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// A small, fast generator for breaking ties (SplitMix64); not for anything secret.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn from_entropy() -> Rng {
        let seed = getrandom::u64().unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for tie-breaking (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The plugins and the per-pod procedure: filter, score, pick.
#[derive(Debug)]
pub struct Framework {
    filters: Vec<Box<dyn FilterPlugin>>,
    scorers: Vec<(Box<dyn ScorePlugin>, i64)>,
    /// See [`num_feasible_nodes_to_find`].
    percentage_of_nodes_to_score: u32,
    /// Where the next pod's search starts.
    next_start: usize,
    rng: Rng,
    // Buffers reused by every pod, so scheduling one allocates nothing in the common case.
    feasible: Vec<usize>,
    raw: Vec<i64>,
    totals: Vec<i64>,
    reasons: Vec<(Reason, usize)>,
}

impl Framework {
    /// A framework without plugins: every node fits and all score alike.
    pub fn new(percentage_of_nodes_to_score: u32) -> Framework {
        Framework {
            filters: Vec::new(),
            scorers: Vec::new(),
            percentage_of_nodes_to_score,
            next_start: 0,
            rng: Rng::from_entropy(),
            feasible: Vec::new(),
            raw: Vec::new(),
            totals: Vec::new(),
            reasons: Vec::new(),
        }
    }

    /// Filters run in the order added; a node's first failing filter is its reason.
    pub fn add_filter(&mut self, p: impl FilterPlugin + 'static) -> &mut Framework {
        self.filters.push(Box::new(p));
        self
    }

    /// Adds a scorer whose normalized score counts `weight` times.
    pub fn add_score(&mut self, p: impl ScorePlugin + 'static, weight: i64) -> &mut Framework {
        self.scorers.push((Box::new(p), weight));
        self
    }

    /// Makes tie-breaking repeatable (tests).
    pub fn seed(&mut self, seed: u64) -> &mut Framework {
        self.rng = Rng(seed);
        self
    }

    pub fn filter_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.filters.iter().map(|f| f.name())
    }

    pub fn score_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.scorers.iter().map(|(s, _)| s.name())
    }

    /// Runs every filter on one node; stops at the first that fails.
    pub fn run_filters(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        for f in &self.filters {
            let s = f.filter(pod, node);
            if !s.is_fit() {
                return s;
            }
        }
        Status::Fit
    }

    /// The index in `nodes` of the best node for `pod`, or why none will do.
    pub fn schedule(&mut self, pod: &PodInfo, nodes: &[NodeInfo]) -> Result<usize, FitError> {
        let n = nodes.len();
        if n == 0 {
            return Err(FitError {
                nodes: 0,
                reasons: Vec::new(),
            });
        }
        let want = num_feasible_nodes_to_find(n, self.percentage_of_nodes_to_score);
        let start = self.next_start % n;
        self.feasible.clear();
        self.reasons.clear();
        let mut examined = 0;
        for i in 0..n {
            let slot = (start + i) % n;
            examined = i + 1;
            match self.run_filters(pod, &nodes[slot]) {
                Status::Fit => {
                    self.feasible.push(slot);
                    if self.feasible.len() >= want {
                        break;
                    }
                }
                Status::Unfit(reasons) => {
                    for r in reasons {
                        match self.reasons.iter_mut().find(|(x, _)| *x == r) {
                            Some((_, count)) => *count += 1,
                            None => self.reasons.push((r, 1)),
                        }
                    }
                }
            }
        }
        self.next_start = (start + examined) % n;
        match self.feasible.len() {
            0 => {
                let mut reasons = std::mem::take(&mut self.reasons);
                reasons.sort_by(|(ra, a), (rb, b)| b.cmp(a).then_with(|| ra.0.cmp(&rb.0)));
                Err(FitError { nodes: n, reasons })
            }
            1 => Ok(self.feasible[0]),
            _ => Ok(self.pick(pod, nodes)),
        }
    }

    /// Scores the feasible nodes and returns the best, choosing uniformly among equals.
    fn pick(&mut self, pod: &PodInfo, nodes: &[NodeInfo]) -> usize {
        self.totals.clear();
        self.totals.resize(self.feasible.len(), 0);
        for (plugin, weight) in &self.scorers {
            self.raw.clear();
            self.raw
                .extend(self.feasible.iter().map(|&i| plugin.score(pod, &nodes[i])));
            plugin.normalize(&mut self.raw);
            for (t, s) in self.totals.iter_mut().zip(&self.raw) {
                *t += weight * s;
            }
        }
        let mut best = self.feasible[0];
        let mut best_score = i64::MIN;
        let mut ties = 0;
        for (&slot, &score) in self.feasible.iter().zip(&self.totals) {
            if score > best_score {
                best_score = score;
                best = slot;
                ties = 1;
            } else if score == best_score {
                // Reservoir sampling: each of the equal nodes ends up chosen with equal chance.
                ties += 1;
                if self.rng.below(ties) == 0 {
                    best = slot;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::scheduler::cache::tests::{node, pod};

    fn nodes(n: usize) -> Vec<NodeInfo> {
        (0..n)
            .map(|i| NodeInfo::new(Arc::new(node(&format!("n{i}"), "1", "1Gi"))))
            .collect()
    }

    fn info() -> PodInfo {
        PodInfo::new(Arc::new(pod("p", "", "")))
    }

    /// Rejects nodes whose name is in the list, with a reason.
    #[derive(Debug)]
    struct Reject(Vec<(&'static str, &'static str)>);

    impl FilterPlugin for Reject {
        fn name(&self) -> &'static str {
            "Reject"
        }
        fn filter(&self, _: &PodInfo, node: &NodeInfo) -> Status {
            match self.0.iter().find(|(n, _)| *n == &*node.name) {
                Some((_, why)) => Status::unfit(Reason::fixed(why)),
                None => Status::Fit,
            }
        }
    }

    /// Scores a node by the number in its name.
    #[derive(Debug)]
    struct ByNumber {
        reverse: bool,
    }

    impl ScorePlugin for ByNumber {
        fn name(&self) -> &'static str {
            "ByNumber"
        }
        fn score(&self, _: &PodInfo, node: &NodeInfo) -> i64 {
            let n: i64 = node.name[1..].parse().unwrap();
            if self.reverse { -n } else { n }
        }
        fn normalize(&self, scores: &mut [i64]) {
            let min = *scores.iter().min().unwrap();
            for s in scores {
                *s -= min;
            }
        }
    }

    #[test]
    fn percentage_of_nodes_to_find_adapts_to_cluster_size() {
        assert_eq!(num_feasible_nodes_to_find(0, 0), 0);
        assert_eq!(num_feasible_nodes_to_find(50, 0), 50);
        assert_eq!(num_feasible_nodes_to_find(99, 0), 99);
        // 100 nodes: 50 - 0 = 50% = 50, raised to the minimum of 100.
        assert_eq!(num_feasible_nodes_to_find(100, 0), 100);
        // 1000 nodes: 50 - 8 = 42%.
        assert_eq!(num_feasible_nodes_to_find(1000, 0), 420);
        // 5000 nodes: 50 - 40 = 10%.
        assert_eq!(num_feasible_nodes_to_find(5000, 0), 500);
        // 10000 nodes: 50 - 80 is below the floor of 5%.
        assert_eq!(num_feasible_nodes_to_find(10_000, 0), 500);
        // An explicit percentage, still at least 100 nodes.
        assert_eq!(num_feasible_nodes_to_find(5000, 30), 1500);
        assert_eq!(num_feasible_nodes_to_find(200, 10), 100);
        assert_eq!(num_feasible_nodes_to_find(5000, 100), 5000);
    }

    #[test]
    fn filtering_stops_at_enough_feasible_nodes_and_the_next_pod_starts_after_them() {
        let nodes = nodes(1000);
        let mut fw = Framework::new(0);
        // Best is the highest-numbered node examined, so the choice shows how far it looked.
        fw.add_score(ByNumber { reverse: false }, 1);
        // 420 feasible nodes wanted out of 1000.
        assert_eq!(fw.schedule(&info(), &nodes), Ok(419));
        assert_eq!(fw.next_start, 420);
        assert_eq!(fw.schedule(&info(), &nodes), Ok(839));
        // The third wraps around: 840..=999 then 0..=259; 999 is the highest.
        assert_eq!(fw.schedule(&info(), &nodes), Ok(999));
        assert_eq!(fw.next_start, 260);
    }

    #[test]
    fn a_pod_that_fits_nowhere_gets_each_reason_counted_most_frequent_first() {
        let nodes = nodes(5);
        let mut fw = Framework::new(0);
        fw.add_filter(Reject(vec![
            ("n0", "Insufficient memory"),
            ("n1", "node(s) had untolerated taint {key: value}"),
            ("n2", "Insufficient memory"),
            ("n3", "node(s) had untolerated taint {key: value}"),
            ("n4", "Insufficient memory"),
        ]));
        let err = fw.schedule(&info(), &nodes).unwrap_err();
        assert_eq!(err.nodes, 5);
        assert_eq!(
            err.to_string(),
            "0/5 nodes are available: 3 Insufficient memory, 2 node(s) had untolerated taint {key: value}."
        );
        // Equal counts are ordered by wording, so the message is stable between attempts.
        let mut fw = Framework::new(0);
        fw.add_filter(Reject(vec![("n0", "b"), ("n1", "a")]));
        let err = fw.schedule(&info(), &nodes[..2]).unwrap_err();
        assert_eq!(err.to_string(), "0/2 nodes are available: 1 a, 1 b.");
        let err = Framework::new(0).schedule(&info(), &[]).unwrap_err();
        assert_eq!(err.to_string(), "no nodes available to schedule pods");
    }

    #[test]
    fn scores_are_weighted_and_summed_across_plugins() {
        let nodes = nodes(3);
        let mut fw = Framework::new(0);
        // n2 highest by one, n0 highest by the other: the heavier weight decides.
        fw.add_score(ByNumber { reverse: false }, 1)
            .add_score(ByNumber { reverse: true }, 2);
        assert_eq!(fw.schedule(&info(), &nodes), Ok(0));
        let mut fw = Framework::new(0);
        fw.add_score(ByNumber { reverse: false }, 3)
            .add_score(ByNumber { reverse: true }, 2);
        assert_eq!(fw.schedule(&info(), &nodes), Ok(2));
    }

    #[test]
    fn equal_nodes_are_chosen_evenly() {
        let nodes = nodes(4);
        let mut fw = Framework::new(0);
        fw.seed(7);
        let mut counts = [0; 4];
        for _ in 0..4000 {
            counts[fw.schedule(&info(), &nodes).unwrap()] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn filtered_out_nodes_are_never_chosen() {
        let nodes = nodes(3);
        let mut fw = Framework::new(0);
        fw.add_filter(Reject(vec![("n0", "x"), ("n2", "y")]));
        for _ in 0..20 {
            assert_eq!(fw.schedule(&info(), &nodes), Ok(1));
        }
    }
}
