//! The arithmetic of a rolling update and of proportional scaling, over plain counts.
//!
//! Each ReplicaSet is seen through [`Counts`]: what it is asked for (`spec.replicas`) and what its
//! last status says it has. Pods are counted high (a ReplicaSet may still have pods beyond a
//! lowered `spec.replicas`, or be about to create up to it) and available pods low (pods beyond
//! `spec.replicas` are about to go), so that a step taken on this view keeps the rollout within
//! `replicas + maxSurge` pods and `replicas - maxUnavailable` available ones whatever the
//! ReplicaSet controller does next.

use super::util::Fenceposts;

/// One ReplicaSet as the arithmetic sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.replicas`: pods that exist and are not terminating.
    pub current: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

impl Counts {
    pub fn new(replicas: i32, current: i32, available: i32) -> Counts {
        Counts {
            replicas,
            current,
            available,
        }
    }

    /// The most pods it can have before it next reports: those it has or those it is asked for.
    pub fn pods(&self) -> i32 {
        self.replicas.max(self.current).max(0)
    }

    /// The available pods it keeps: none beyond `spec.replicas` count, since those are going.
    pub fn kept_available(&self) -> i32 {
        self.available.min(self.replicas).min(self.current).max(0)
    }
}

/// `spec.replicas` for the new ReplicaSet: towards `desired`, but no pod beyond
/// `desired + surge` in all (counting `all`, which includes the new one).
pub fn new_replicas(desired: i32, f: Fenceposts, new: Counts, all: &[Counts]) -> i32 {
    if new.replicas >= desired {
        return desired;
    }
    let max_total = desired + f.surge;
    let current_total: i32 = all.iter().map(Counts::pods).sum();
    if current_total >= max_total {
        return new.replicas;
    }
    let up = (max_total - current_total).min(desired - new.replicas);
    new.replicas + up
}

/// `spec.replicas` for each old ReplicaSet (`old` oldest first): first take away pods that are
/// not available (they cost no availability), then available ones while more than
/// `desired - unavailable` stay available; never more in all than the new ReplicaSet's
/// available pods and the old ones' kept pods allow above that minimum.
pub fn old_replicas(desired: i32, f: Fenceposts, new: Counts, old: &[Counts]) -> Vec<i32> {
    let mut targets: Vec<i32> = old.iter().map(|c| c.replicas.max(0)).collect();
    let old_total: i32 = targets.iter().sum();
    if old_total == 0 {
        return targets;
    }
    let min_available = desired - f.unavailable;
    // As Kubernetes bounds it: the old pods asked for plus the new available ones, above the
    // minimum. Missing old pods count as unavailable ones, so a ReplicaSet that cannot create
    // its pods does not hold the rollout up.
    let mut budget = old_total + new.kept_available() - min_available;
    if budget <= 0 {
        return targets;
    }
    // Unavailable pods first, oldest ReplicaSets first.
    for (t, c) in targets.iter_mut().zip(old) {
        if budget <= 0 {
            break;
        }
        let unhealthy = *t - c.kept_available();
        if unhealthy <= 0 {
            continue;
        }
        let n = unhealthy.min(budget);
        *t -= n;
        budget -= n;
    }
    // Then available ones, down to the minimum.
    let available: i32 = new.kept_available()
        + targets
            .iter()
            .zip(old)
            .map(|(t, c)| Counts::new(*t, c.current, c.available).kept_available())
            .sum::<i32>();
    let mut healthy = (available - min_available).min(budget);
    for t in &mut targets {
        if healthy <= 0 {
            break;
        }
        let n = (*t).min(healthy);
        *t -= n;
        healthy -= n;
    }
    targets
}

/// One ReplicaSet in proportional scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scalable {
    pub replicas: i32,
    /// The `max-replicas` annotation: the Deployment's `replicas + surge` when last scaled.
    pub max_replicas: Option<i32>,
}

/// New `spec.replicas` for the active ReplicaSets (`rss`, oldest first, all with replicas > 0)
/// when the Deployment was scaled to `desired` in mid-rollout: the change is shared out in
/// proportion to their sizes (to `max_replicas` since the last scaling), leftovers to the
/// largest; when growing, newer ones of equal size come first, when shrinking, older ones.
/// `fallback_total` stands in for a missing annotation (the Deployment's `status.replicas`).
pub fn proportional(desired: i32, surge: i32, fallback_total: i32, rss: &[Scalable]) -> Vec<i32> {
    let current: i32 = rss.iter().map(|r| r.replicas).sum();
    let allowed = if desired > 0 { desired + surge } else { 0 };
    let to_add = allowed - current;
    let mut order: Vec<usize> = (0..rss.len()).collect();
    // Larger first; ties: newer first when adding, older first when removing.
    order.sort_by(|&a, &b| {
        rss[b]
            .replicas
            .cmp(&rss[a].replicas)
            .then(if to_add > 0 { b.cmp(&a) } else { a.cmp(&b) })
    });
    let mut sizes: Vec<i32> = rss.iter().map(|r| r.replicas).collect();
    if to_add == 0 {
        return sizes;
    }
    let mut added = 0;
    for &i in &order {
        let r = rss[i];
        let fraction = if desired == 0 {
            -r.replicas
        } else {
            let annotated = r.max_replicas.filter(|m| *m > 0).unwrap_or(fallback_total);
            if annotated <= 0 {
                0
            } else {
                let scaled =
                    f64::from(r.replicas) * f64::from(desired + surge) / f64::from(annotated);
                scaled.round() as i32 - r.replicas
            }
        };
        let allowed_now = to_add - added;
        let p = if r.replicas == 0 || added == to_add {
            0
        } else if to_add > 0 {
            fraction.min(allowed_now).max(0)
        } else {
            fraction.max(allowed_now).min(0)
        };
        sizes[i] += p;
        added += p;
    }
    if let Some(&first) = order.first() {
        sizes[first] = (sizes[first] + to_add - added).max(0);
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(surge: i32, unavailable: i32) -> Fenceposts {
        Fenceposts { surge, unavailable }
    }

    #[test]
    fn the_new_replica_set_grows_within_the_surge() {
        // 4 replicas, surge 1: the old one still has 4, so one new pod.
        let old = Counts::new(4, 4, 4);
        let new = Counts::new(0, 0, 0);
        assert_eq!(new_replicas(4, f(1, 0), new, &[old, new]), 1);
        // A lowered spec whose pods are not gone yet still counts them.
        let old = Counts::new(3, 4, 4);
        let new = Counts::new(1, 1, 1);
        assert_eq!(new_replicas(4, f(1, 0), new, &[old, new]), 1);
        let old = Counts::new(3, 3, 3);
        assert_eq!(new_replicas(4, f(1, 0), new, &[old, new]), 2);
        // Never above desired, and down to it when above.
        let new = Counts::new(2, 2, 2);
        assert_eq!(
            new_replicas(4, f(10, 0), new, &[Counts::new(0, 0, 0), new]),
            4
        );
        assert_eq!(new_replicas(4, f(1, 0), Counts::new(6, 6, 6), &[]), 4);
        // A fresh Deployment starts at full size.
        assert_eq!(new_replicas(5, f(2, 1), Counts::default(), &[]), 5);
    }

    #[test]
    fn old_replica_sets_shrink_unhealthy_pods_first_and_keep_the_minimum_available() {
        // 4 replicas, unavailable 1, surge 1; one new pod available: two old can go.
        assert_eq!(
            old_replicas(4, f(1, 1), Counts::new(1, 1, 1), &[Counts::new(4, 4, 4)]),
            [2]
        );
        // The new pod is not available yet: only one old pod can go.
        assert_eq!(
            old_replicas(4, f(1, 1), Counts::new(1, 1, 0), &[Counts::new(4, 4, 4)]),
            [3]
        );
        // maxUnavailable 0: nothing goes until a new pod is available.
        assert_eq!(
            old_replicas(4, f(1, 0), Counts::new(1, 1, 0), &[Counts::new(4, 4, 4)]),
            [4]
        );
        // Unhealthy old pods go first, even when the available ones are at the minimum
        // (Kubernetes' cleanup of broken old pods), oldest ReplicaSet first.
        assert_eq!(
            old_replicas(
                4,
                f(1, 0),
                Counts::new(1, 1, 1),
                &[Counts::new(2, 2, 1), Counts::new(2, 2, 2)]
            ),
            [1, 2]
        );
        // Nothing to do with nothing old.
        assert_eq!(
            old_replicas(4, f(1, 1), Counts::new(4, 4, 4), &[Counts::new(0, 0, 0)]),
            [0]
        );
    }

    /// Pods and available pods once every ReplicaSet has acted on its target: each has the
    /// pods it has or is asked for, whichever is more (surplus ones may not be gone yet), and
    /// keeps at most its target of available ones (it deletes the least available first).
    fn outcome(counts: &[Counts], targets: &[i32]) -> (i32, i32) {
        // Written out rather than through `Counts`, so the model does not share its mistakes.
        counts
            .iter()
            .zip(targets)
            .fold((0, 0), |(pods, avail), (c, t)| {
                (
                    pods + c.current.max(*t),
                    avail + c.available.min(*t).min(c.current),
                )
            })
    }

    /// Every small situation: whatever the old and new ReplicaSets ask for, have and have
    /// available, a step never takes the pods above `desired + surge` when it adds any, nor
    /// the available ones below `desired - unavailable` (or below where they were, when they
    /// already were lower) when it takes any away.
    #[test]
    fn no_step_leaves_the_bounds_in_any_small_situation() {
        let mut checked = 0;
        for desired in 1..=5 {
            for (surge, unavailable) in [(1, 0), (0, 1), (1, 1), (2, 1), (1, 2), (3, 0)] {
                let fp = f(surge, unavailable.min(desired));
                let min_available = desired - fp.unavailable;
                for counts in situations(desired, desired + surge) {
                    let (new, old) = (counts[0], &counts[1..]);
                    let unchanged: Vec<i32> = counts.iter().map(|c| c.replicas).collect();
                    let (_, avail_before) = outcome(&counts, &unchanged);

                    let new_target = new_replicas(desired, fp, new, &counts);
                    assert!(new_target >= 0 && new_target <= desired);
                    if new_target > new.replicas {
                        let mut targets = unchanged.clone();
                        targets[0] = new_target;
                        let (pods, _) = outcome(&counts, &targets);
                        assert!(
                            pods <= desired + surge,
                            "scale-up to {new_target} from {counts:?} (desired {desired}, {fp:?}) gives {pods} pods"
                        );
                    }

                    let old_targets = old_replicas(desired, fp, new, old);
                    let mut targets = vec![new.replicas];
                    targets.extend(&old_targets);
                    let (_, available) = outcome(&counts, &targets);
                    assert!(
                        available >= min_available.min(avail_before),
                        "scale-down to {old_targets:?} from {counts:?} (desired {desired}, {fp:?}) leaves {available} available"
                    );
                    for (t, c) in old_targets.iter().zip(old) {
                        assert!(
                            *t >= 0 && *t <= c.replicas,
                            "{old_targets:?} from {counts:?}"
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    /// New and one or two old ReplicaSets with every consistent (spec, current, available)
    /// within `max` pods.
    fn situations(desired: i32, max: i32) -> Vec<Vec<Counts>> {
        let mut one = Vec::new();
        for replicas in 0..=desired + 1 {
            for current in 0..=max {
                for available in 0..=current {
                    one.push(Counts::new(replicas, current, available));
                }
            }
        }
        let mut out = Vec::new();
        for &new in &one {
            if new.replicas > desired {
                continue;
            }
            for &a in &one {
                if new.current + a.current > max + 1 {
                    continue;
                }
                out.push(vec![new, a]);
                for &b in one.iter().step_by(7) {
                    if new.current + a.current + b.current <= max {
                        out.push(vec![new, a, b]);
                    }
                }
            }
        }
        out
    }

    /// A whole rollout simulated step by step with a ReplicaSet controller that reaches each
    /// target at once and pods that become available one step after they are created: the
    /// bounds hold at every step and the rollout finishes.
    #[test]
    fn a_simulated_rollout_stays_within_bounds_and_completes() {
        for (desired, surge, unavailable) in
            [(10, 3, 2), (4, 1, 0), (4, 0, 1), (1, 1, 0), (7, 2, 7)]
        {
            let fp = f(surge, unavailable);
            let mut old = vec![Counts::new(desired, desired, desired)];
            let mut new = Counts::default();
            let mut steps = 0;
            while !(new.available == desired && old.iter().all(|c| c.current == 0)) {
                steps += 1;
                assert!(steps < 100, "stuck at {new:?} {old:?}");
                let mut all = vec![new];
                all.extend(&old);
                let target = new_replicas(desired, fp, new, &all);
                if target != new.replicas {
                    new.replicas = target;
                } else {
                    let targets = old_replicas(desired, fp, new, &old);
                    for (c, t) in old.iter_mut().zip(targets) {
                        c.replicas = t;
                    }
                }
                // The ReplicaSet controller: new pods appear unavailable, surplus ones go
                // (unavailable ones first); then earlier pods become available.
                new.available = new.current.min(new.replicas);
                new.current = new.replicas;
                for c in &mut old {
                    c.current = c.replicas;
                    c.available = c.available.min(c.current);
                }
                let pods: i32 = new.current + old.iter().map(|c| c.current).sum::<i32>();
                let available: i32 = new.available + old.iter().map(|c| c.available).sum::<i32>();
                assert!(pods <= desired + surge, "{pods} pods at {new:?} {old:?}");
                assert!(
                    available >= desired - unavailable,
                    "{available} available at {new:?} {old:?}"
                );
            }
        }
    }

    #[test]
    fn proportional_scaling_shares_the_change_by_size() {
        let s = |replicas, max| Scalable {
            replicas,
            max_replicas: Some(max),
        };
        // 10 replicas + 3 surge were 13 at most; scaled to 20 (+5 surge = 25): 8 and 5 grow
        // to about 25 * 8/13 and 25 * 5/13.
        assert_eq!(proportional(20, 5, 0, &[s(8, 13), s(5, 13)]), [15, 10]);
        // Scaled down to 5 (+2 = 7).
        let down = proportional(5, 2, 0, &[s(8, 13), s(5, 13)]);
        assert_eq!(down.iter().sum::<i32>(), 7);
        assert_eq!(down, [4, 3]);
        // To zero: everything goes.
        assert_eq!(proportional(0, 0, 0, &[s(8, 13), s(5, 13)]), [0, 0]);
        // Equal sizes: when growing, the newer takes the leftover.
        let up = proportional(4, 1, 0, &[s(1, 2), s(1, 2)]);
        assert_eq!(up.iter().sum::<i32>(), 5);
        assert!(up[1] >= up[0], "{up:?}");
        // No annotation: the Deployment's replicas stand in.
        assert_eq!(
            proportional(
                6,
                0,
                3,
                &[
                    Scalable {
                        replicas: 2,
                        max_replicas: None
                    },
                    s(1, 3)
                ]
            ),
            [4, 2]
        );
        // Nothing to change.
        assert_eq!(proportional(4, 1, 0, &[s(3, 5), s(2, 5)]), [3, 2]);
    }
}
