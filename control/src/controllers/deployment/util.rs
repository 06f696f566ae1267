//! What a Deployment's ReplicaSets carry (template hash, revision and replica annotations) and
//! how a Deployment's status and conditions follow from them: pure functions over the objects.

use std::{collections::BTreeMap, time::SystemTime};

use skiff_api::{
    kinds::{
        Condition, Deployment, DeploymentStatus, IntOrString, PodTemplateSpec, ReplicaSet,
        condition,
    },
    meta::time,
};
use skiff_runtime::conditions;

/// The label that tells the ReplicaSets (and pods) of one Deployment's templates apart.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// A ReplicaSet's place in its Deployment's history (an increasing integer).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a ReplicaSet had before a rollback made it current again.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// `spec.replicas` of the Deployment when it last scaled the ReplicaSet.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `spec.replicas + maxSurge` of the Deployment when it last scaled the ReplicaSet.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Deployment annotations not copied to its ReplicaSets (they are the controller's own, or a
/// client's bookkeeping).
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
];

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

/// Reasons of the `Progressing` condition.
pub mod reason {
    pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
    pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
    pub const RS_UPDATED: &str = "ReplicaSetUpdated";
    pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
    pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
    pub const PAUSED: &str = "DeploymentPaused";
    pub const RESUMED: &str = "DeploymentResumed";
    pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
    pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
}

/// `spec.replicas` (default 1).
pub fn replicas(d: &Deployment) -> i32 {
    d.spec.replicas.unwrap_or(1).max(0)
}

/// `spec.replicas` of a ReplicaSet (default 1).
pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1).max(0)
}

pub fn is_recreate(d: &Deployment) -> bool {
    d.spec.strategy.type_ == "Recreate"
}

/// A count or percentage of `total`; percentages round up or down. `None` when malformed.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Option<i32> {
    match v {
        IntOrString::Int(i) => Some(*i),
        IntOrString::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.parse().ok()?;
            let product = pct * i64::from(total);
            let v = if round_up {
                (product + 99).div_euclid(100)
            } else {
                product.div_euclid(100)
            };
            i32::try_from(v).ok()
        }
    }
}

/// How far a rolling update may go above and below `spec.replicas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenceposts {
    /// Pods allowed above `spec.replicas`.
    pub surge: i32,
    /// Pods allowed to be unavailable below `spec.replicas`.
    pub unavailable: i32,
}

/// maxSurge (rounded up) and maxUnavailable (rounded down) of `desired` replicas, each 25% when
/// unset. Should both come out 0 (validation refuses two explicit zeros, but rounding down can
/// make one), maxUnavailable becomes 1 so a rollout can move at all. maxUnavailable is at most
/// `desired`.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Fenceposts {
    let quarter = IntOrString::String("25%".into());
    let surge = scaled_value(max_surge.unwrap_or(&quarter), desired, true)
        .unwrap_or(0)
        .max(0);
    let mut unavailable = scaled_value(max_unavailable.unwrap_or(&quarter), desired, false)
        .unwrap_or(0)
        .max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Fenceposts {
        surge,
        unavailable: unavailable.min(desired.max(0)),
    }
}

/// The Deployment's fenceposts: none for Recreate; maxUnavailable 0 with 0 replicas.
pub fn fenceposts(d: &Deployment) -> Fenceposts {
    if is_recreate(d) {
        return Fenceposts {
            surge: 0,
            unavailable: 0,
        };
    }
    let ru = d.spec.strategy.rolling_update.as_ref();
    resolve_fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas(d),
    )
}

/// A stable, short name for a pod template: FNV-1a (32 bits) over its JSON (struct fields in
/// declaration order, maps sorted, so equal templates always give equal bytes), then the
/// collision count, written in an alphabet without vowels (no accidental words) or look-alikes.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let mut h = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    feed(&serde_json::to_vec(template).unwrap_or_default());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let base = ALPHABET.len() as u32;
    let mut out = Vec::new();
    let mut n = h;
    loop {
        out.push(ALPHABET[(n % base) as usize]);
        n /= base;
        if n == 0 {
            break;
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Whether two templates are the same apart from the pod-template-hash label.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        t.metadata.labels.remove(POD_TEMPLATE_HASH);
        t
    };
    strip(a) == strip(b)
}

/// The revision annotation as a number (0 when absent or malformed).
pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .get(REVISION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.metadata.annotations.get(key)?.parse().ok()
}

pub fn desired_replicas_annotation(rs: &ReplicaSet) -> Option<i32> {
    annotation_i32(rs, DESIRED_REPLICAS)
}

pub fn max_replicas_annotation(rs: &ReplicaSet) -> Option<i32> {
    annotation_i32(rs, MAX_REPLICAS)
}

fn set(map: &mut BTreeMap<String, String>, key: &str, value: String) -> bool {
    if map.get(key) == Some(&value) {
        return false;
    }
    map.insert(key.to_owned(), value);
    true
}

/// Sets the desired- and max-replicas annotations; whether anything changed.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let a = &mut rs.metadata.annotations;
    let one = set(a, DESIRED_REPLICAS, desired.to_string());
    let two = set(a, MAX_REPLICAS, max.to_string());
    one || two
}

/// Brings the new ReplicaSet's annotations up to date: the Deployment's own annotations, the
/// revision (raised to `new_revision`, remembering the one it replaces, as after a rollback),
/// and, for a ReplicaSet about to be created, the replica annotations. Whether anything changed.
pub fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
) -> bool {
    let mut changed = false;
    for (k, v) in &d.metadata.annotations {
        if NOT_COPIED.contains(&k.as_str()) {
            continue;
        }
        changed |= set(&mut rs.metadata.annotations, k, v.clone());
    }
    let old = rs.metadata.annotations.get(REVISION).cloned();
    let old_n = old
        .as_deref()
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    if old_n < new_revision {
        rs.metadata
            .annotations
            .insert(REVISION.to_owned(), new_revision.to_string());
        changed = true;
        if let Some(old) = old.filter(|o| !o.is_empty()) {
            let history = match rs.metadata.annotations.get(REVISION_HISTORY) {
                Some(h) if !h.is_empty() => format!("{h},{old}"),
                _ => old,
            };
            rs.metadata
                .annotations
                .insert(REVISION_HISTORY.to_owned(), history);
        }
    }
    if !exists {
        let f = fenceposts(d);
        changed |= set_replicas_annotations(rs, replicas(d), replicas(d) + f.surge);
    }
    changed
}

/// The revision a new (or returning) template gets: one above every other ReplicaSet's.
pub fn next_revision<'a>(old: impl IntoIterator<Item = &'a ReplicaSet>) -> i64 {
    old.into_iter().map(revision).max().unwrap_or(0) + 1
}

/// What the history cleanup needs to know about one old ReplicaSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub revision: i64,
    /// For equal revisions: older first.
    pub created: String,
    pub spec_replicas: i32,
    pub status_replicas: i32,
    /// `status.observedGeneration >= metadata.generation`.
    pub observed: bool,
    pub deleting: bool,
}

/// Which old ReplicaSets (indexes into `old`) to delete to keep `limit` of them: the lowest
/// revisions beyond the limit, and of those only the ones scaled to zero with no pods left.
pub fn history_to_delete(old: &[HistoryEntry], limit: i32) -> Vec<usize> {
    let mut alive: Vec<usize> = (0..old.len()).filter(|&i| !old[i].deleting).collect();
    let limit = usize::try_from(limit.max(0)).unwrap_or(0);
    if alive.len() <= limit {
        return Vec::new();
    }
    let excess = alive.len() - limit;
    alive.sort_by(|&a, &b| {
        (old[a].revision, &old[a].created).cmp(&(old[b].revision, &old[b].created))
    });
    alive
        .into_iter()
        .take(excess)
        .filter(|&i| {
            let e = &old[i];
            e.spec_replicas == 0 && e.status_replicas == 0 && e.observed
        })
        .collect()
}

/// A condition of the given kind, stamped `now`.
pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: SystemTime,
) -> Condition {
    let t = time::format(now);
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_update_time: Some(t.clone()),
        last_transition_time: Some(t),
        ..Condition::default()
    }
}

/// The Deployment's status from its ReplicaSets (`all` includes `new`); conditions are the
/// current ones with `Available` brought up to date.
pub fn calculate_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: SystemTime,
) -> DeploymentStatus {
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let available = sum(&|rs| rs.status.available_replicas);
    let total_spec = sum(&rs_replicas);
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: sum(&|rs| rs.status.replicas),
        updated_replicas: new.map_or(0, |rs| rs.status.replicas),
        ready_replicas: sum(&|rs| rs.status.ready_replicas),
        available_replicas: available,
        unavailable_replicas: (total_spec - available).max(0),
        conditions: d.status.conditions.clone(),
        collision_count: d.status.collision_count,
    };
    let min_available = replicas(d) - fenceposts(d).unavailable;
    let c = if available >= min_available {
        new_condition(
            AVAILABLE,
            "True",
            reason::MIN_AVAILABLE,
            "Deployment has minimum availability.".into(),
            now,
        )
    } else {
        new_condition(
            AVAILABLE,
            "False",
            reason::MIN_UNAVAILABLE,
            "Deployment does not have minimum availability.".into(),
            now,
        )
    };
    conditions::set_by_reason(&mut status.conditions, c);
    status
}

/// Every replica runs the current template and is available, and nothing else runs.
pub fn deployment_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let r = replicas(d);
    s.updated_replicas == r
        && s.replicas == r
        && s.available_replicas == r
        && s.observed_generation >= d.metadata.generation
}

/// Whether `new` shows progress over `old`: more updated, ready or available replicas, or fewer
/// old ones.
pub fn deployment_progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let old_old = old.replicas - old.updated_replicas;
    let new_old = new.replicas - new.updated_replicas;
    new.updated_replicas > old.updated_replicas
        || new_old < old_old
        || new.ready_replicas > old.ready_replicas
        || new.available_replicas > old.available_replicas
}

/// `progressDeadlineSeconds`, `None` when unset (or "never", i32::MAX).
pub fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec.progress_deadline_seconds.filter(|s| *s != i32::MAX)
}

fn condition_updated_at(c: &Condition) -> Option<SystemTime> {
    c.last_update_time
        .as_deref()
        .or(c.last_transition_time.as_deref())
        .and_then(time::parse)
}

/// Whether the rollout has gone `progressDeadlineSeconds` without progress.
pub fn deployment_timed_out(d: &Deployment, s: &DeploymentStatus, now: SystemTime) -> bool {
    let Some(deadline) = progress_deadline(d) else {
        return false;
    };
    let Some(c) = condition(&s.conditions, PROGRESSING) else {
        return false;
    };
    match c.reason.as_str() {
        reason::NEW_RS_AVAILABLE => false,
        reason::TIMED_OUT => true,
        _ => condition_updated_at(c).is_some_and(|from| {
            from + std::time::Duration::from_secs(u64::try_from(deadline.max(0)).unwrap_or(0)) < now
        }),
    }
}

/// Brings the `Progressing` condition of `status` (computed for this pass, with the previous
/// conditions) up to date: complete, progressing (refreshing its update time), or timed out.
pub fn update_progressing(
    d: &Deployment,
    status: &mut DeploymentStatus,
    new_rs_name: Option<&str>,
    now: SystemTime,
) {
    if progress_deadline(d).is_none() {
        conditions::remove(&mut status.conditions, PROGRESSING);
        return;
    }
    let current = condition(&status.conditions, PROGRESSING).cloned();
    let complete_already = status.replicas == status.updated_replicas
        && current
            .as_ref()
            .is_some_and(|c| c.reason == reason::NEW_RS_AVAILABLE);
    if complete_already {
        return;
    }
    let subject = match new_rs_name {
        Some(name) => format!("ReplicaSet {name:?}"),
        None => format!("Deployment {:?}", d.metadata.name),
    };
    if deployment_complete(d, status) {
        conditions::set_by_reason(
            &mut status.conditions,
            new_condition(
                PROGRESSING,
                "True",
                reason::NEW_RS_AVAILABLE,
                format!("{subject} has successfully progressed."),
                now,
            ),
        );
    } else if deployment_progressing(&d.status, status) {
        // Rewritten even with the same reason: its update time is the progress deadline's
        // starting point.
        conditions::replace(
            &mut status.conditions,
            new_condition(
                PROGRESSING,
                "True",
                reason::RS_UPDATED,
                format!("{subject} is progressing."),
                now,
            ),
        );
    } else if deployment_timed_out(d, status, now) {
        conditions::set_by_reason(
            &mut status.conditions,
            new_condition(
                PROGRESSING,
                "False",
                reason::TIMED_OUT,
                format!("{subject} has timed out progressing."),
                now,
            ),
        );
    }
}

/// When to look at a rollout again to notice a missed deadline: `None` when there is no
/// deadline to watch (complete, timed out, or none set).
pub fn until_deadline(
    d: &Deployment,
    s: &DeploymentStatus,
    now: SystemTime,
) -> Option<std::time::Duration> {
    let deadline = progress_deadline(d)?;
    let c = condition(&s.conditions, PROGRESSING)?;
    if deployment_complete(d, s) || c.reason == reason::TIMED_OUT || c.status != "True" {
        return None;
    }
    let from = condition_updated_at(c)?;
    let at = from + std::time::Duration::from_secs(u64::try_from(deadline.max(0)).unwrap_or(0));
    // A second past the deadline, since condition times are whole seconds.
    Some(
        at.duration_since(now)
            .unwrap_or_default()
            .max(std::time::Duration::from_millis(100))
            + std::time::Duration::from_secs(1),
    )
}

/// The paused or resumed `Progressing` condition, when `spec.paused` changed since the last
/// one (a timed-out rollout keeps saying so). Whether anything changed.
pub fn update_paused_condition(
    d: &Deployment,
    conds: &mut Vec<Condition>,
    now: SystemTime,
) -> bool {
    if progress_deadline(d).is_none() {
        return false;
    }
    let cur = condition(conds, PROGRESSING);
    if cur.is_some_and(|c| c.reason == reason::TIMED_OUT) {
        return false;
    }
    let paused_now = cur.is_some_and(|c| c.reason == reason::PAUSED);
    let c = if d.spec.paused && !paused_now {
        new_condition(
            PROGRESSING,
            "Unknown",
            reason::PAUSED,
            "Deployment is paused".into(),
            now,
        )
    } else if !d.spec.paused && paused_now {
        new_condition(
            PROGRESSING,
            "Unknown",
            reason::RESUMED,
            "Deployment is resumed".into(),
            now,
        )
    } else {
        return false;
    };
    conditions::set_by_reason(conds, c);
    true
}

/// The `ReplicaFailure` of the new ReplicaSet (else of the first old one that has one).
pub fn replica_failure<'a>(
    new: Option<&'a ReplicaSet>,
    old: &[&'a ReplicaSet],
) -> Option<&'a Condition> {
    new.into_iter().chain(old.iter().copied()).find_map(|rs| {
        condition(&rs.status.conditions, REPLICA_FAILURE).filter(|c| c.status == "True")
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use skiff_api::kinds::{Container, RollingUpdateDeployment};

    use super::*;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn surge_rounds_up_and_unavailable_rounds_down() {
        let f = |s: IntOrString, u: IntOrString, n| {
            let f = resolve_fenceposts(Some(&s), Some(&u), n);
            (f.surge, f.unavailable)
        };
        assert_eq!(f(pct("25%"), pct("25%"), 10), (3, 2));
        assert_eq!(f(pct("25%"), pct("25%"), 4), (1, 1));
        assert_eq!(f(pct("25%"), pct("25%"), 1), (1, 0));
        assert_eq!(f(pct("30%"), pct("30%"), 5), (2, 1));
        assert_eq!(
            f(pct("0%"), pct("10%"), 5),
            (0, 1),
            "both zero: one unavailable"
        );
        assert_eq!(f(IntOrString::Int(0), pct("50%"), 1), (0, 1));
        assert_eq!(
            f(IntOrString::Int(2), IntOrString::Int(7), 3),
            (2, 3),
            "at most replicas"
        );
        assert_eq!(f(pct("200%"), pct("100%"), 3), (6, 3));
        assert_eq!(f(pct("25%"), pct("25%"), 0), (0, 0));
        let defaults = resolve_fenceposts(None, None, 8);
        assert_eq!((defaults.surge, defaults.unavailable), (2, 2));
        assert_eq!(scaled_value(&pct("x%"), 10, true), None);
    }

    #[test]
    fn recreate_has_no_fenceposts() {
        let mut d = Deployment::default();
        d.spec.replicas = Some(4);
        d.spec.strategy.type_ = "Recreate".into();
        assert_eq!(
            fenceposts(&d),
            Fenceposts {
                surge: 0,
                unavailable: 0
            }
        );
        d.spec.strategy.type_ = "RollingUpdate".into();
        d.spec.strategy.rolling_update = Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(1)),
            max_unavailable: Some(IntOrString::Int(0)),
        });
        assert_eq!(
            fenceposts(&d),
            Fenceposts {
                surge: 1,
                unavailable: 0
            }
        );
    }

    fn template(image: &str) -> PodTemplateSpec {
        let mut t = PodTemplateSpec::default();
        t.metadata.labels.insert("app".into(), "web".into());
        t.metadata.labels.insert("tier".into(), "front".into());
        t.spec.containers.push(Container {
            name: "web".into(),
            image: image.into(),
            ..Container::default()
        });
        t
    }

    #[test]
    fn the_template_hash_is_stable_and_tells_templates_apart() {
        let a = template("nginx:1");
        // The same template built again (labels inserted in another order) hashes the same.
        let mut again = PodTemplateSpec::default();
        again.metadata.labels.insert("tier".into(), "front".into());
        again.metadata.labels.insert("app".into(), "web".into());
        again.spec.containers = a.spec.containers.clone();
        assert_eq!(template_hash(&a, None), template_hash(&again, None));
        let h = template_hash(&a, None);
        assert!(!h.is_empty() && h.len() <= 7, "{h}");
        assert!(
            h.bytes()
                .all(|c| b"bcdfghjklmnpqrstvwxz2456789".contains(&c))
        );
        assert_ne!(h, template_hash(&template("nginx:2"), None));
        assert_ne!(h, template_hash(&a, Some(1)));
        assert_ne!(template_hash(&a, Some(1)), template_hash(&a, Some(2)));
        let mut labelled = a.clone();
        labelled
            .metadata
            .labels
            .insert(POD_TEMPLATE_HASH.into(), h.clone());
        assert!(equal_ignore_hash(&labelled, &a));
        assert!(!equal_ignore_hash(&labelled, &template("nginx:2")));
    }

    #[test]
    fn the_hash_of_a_fixed_template_does_not_change_between_builds() {
        let h = template_hash(&template("nginx:1"), None);
        let expected = {
            // FNV-1a written out independently over the same JSON.
            let json = br#"{"metadata":{"labels":{"app":"web","tier":"front"}},"spec":{"containers":[{"name":"web","image":"nginx:1"}]}}"#;
            let mut x: u32 = 2_166_136_261;
            for b in json {
                x ^= u32::from(*b);
                x = x.wrapping_mul(16_777_619);
            }
            x
        };
        let digits = b"bcdfghjklmnpqrstvwxz2456789";
        let mut n = expected;
        let mut s = String::new();
        loop {
            s.push(char::from(digits[(n % 27) as usize]));
            n /= 27;
            if n == 0 {
                break;
            }
        }
        assert_eq!(h, s);
        // And the value itself: a change to the hash would replace every ReplicaSet of every
        // Deployment on upgrade.
        assert_eq!(h, "29wmhkk");
    }

    fn rs_with_revision(rev: Option<&str>) -> ReplicaSet {
        let mut rs = ReplicaSet::default();
        if let Some(r) = rev {
            rs.metadata.annotations.insert(REVISION.into(), r.into());
        }
        rs
    }

    #[test]
    fn revisions_increase_and_a_returning_template_remembers_its_old_revision() {
        let olds = [
            rs_with_revision(Some("3")),
            rs_with_revision(Some("1")),
            rs_with_revision(None),
        ];
        assert_eq!(next_revision(&olds), 4);
        assert_eq!(next_revision(&[]), 1);

        let mut d = Deployment::default();
        d.spec.replicas = Some(4);
        d.metadata.annotations.insert("team".into(), "a".into());
        d.metadata.annotations.insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        );
        // A brand-new ReplicaSet.
        let mut fresh = ReplicaSet::default();
        assert!(set_new_rs_annotations(&d, &mut fresh, 1, false));
        let a = &fresh.metadata.annotations;
        assert_eq!(a.get(REVISION).map(String::as_str), Some("1"));
        assert_eq!(a.get(DESIRED_REPLICAS).map(String::as_str), Some("4"));
        assert_eq!(a.get(MAX_REPLICAS).map(String::as_str), Some("5"));
        assert_eq!(a.get("team").map(String::as_str), Some("a"));
        assert!(!a.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        assert!(!a.contains_key(REVISION_HISTORY));
        assert!(
            !set_new_rs_annotations(&d, &mut fresh, 1, true),
            "nothing left to change"
        );

        // Rolled back to: revision 2 becomes 5, twice over it keeps both old numbers.
        let mut back = rs_with_revision(Some("2"));
        assert!(set_new_rs_annotations(&d, &mut back, 5, true));
        assert_eq!(revision(&back), 5);
        assert_eq!(
            back.metadata
                .annotations
                .get(REVISION_HISTORY)
                .map(String::as_str),
            Some("2")
        );
        assert!(set_new_rs_annotations(&d, &mut back, 7, true));
        assert_eq!(
            back.metadata
                .annotations
                .get(REVISION_HISTORY)
                .map(String::as_str),
            Some("2,5")
        );
        // Never lowered.
        assert!(!set_new_rs_annotations(&d, &mut back, 6, true));
        assert_eq!(revision(&back), 7);
    }

    fn entry(revision: i64, replicas: i32) -> HistoryEntry {
        HistoryEntry {
            revision,
            created: format!("2026-01-01T00:00:{revision:02}Z"),
            spec_replicas: replicas,
            status_replicas: replicas,
            observed: true,
            deleting: false,
        }
    }

    #[test]
    fn history_cleanup_deletes_the_oldest_empty_replica_sets_beyond_the_limit() {
        let old = [entry(4, 0), entry(1, 0), entry(3, 0), entry(2, 0)];
        assert_eq!(history_to_delete(&old, 2), [1, 3], "revisions 1 and 2");
        assert!(history_to_delete(&old, 4).is_empty());
        assert_eq!(history_to_delete(&old, 0).len(), 4);

        // The oldest still has pods: it is kept, and no younger one is taken instead.
        let mut busy = old.clone();
        busy[1].spec_replicas = 1;
        assert_eq!(history_to_delete(&busy, 2), [3]);
        busy[3].status_replicas = 1;
        assert!(
            history_to_delete(&busy, 2).is_empty(),
            "pods still terminating"
        );
        let mut unobserved = old.clone();
        unobserved[1].observed = false;
        assert_eq!(history_to_delete(&unobserved, 2), [3]);
        // Ones already being deleted do not count towards the limit.
        let mut deleting = old.clone();
        deleting[0].deleting = true;
        assert_eq!(history_to_delete(&deleting, 2), [1]);
    }

    fn deployment(replicas: i32) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.generation = 2;
        d.spec.replicas = Some(replicas);
        d.spec.progress_deadline_seconds = Some(600);
        d
    }

    fn rs(spec: i32, current: i32, available: i32) -> ReplicaSet {
        let mut rs = ReplicaSet::default();
        rs.spec.replicas = Some(spec);
        rs.status.replicas = current;
        rs.status.ready_replicas = available;
        rs.status.available_replicas = available;
        rs
    }

    #[test]
    fn status_sums_replica_sets_and_judges_availability() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let d = deployment(4); // 25%: one unavailable allowed
        let (old, new) = (rs(2, 3, 3), rs(3, 2, 0));
        let s = calculate_status(&d, &[&old, &new], Some(&new), now);
        assert_eq!(
            (
                s.replicas,
                s.updated_replicas,
                s.ready_replicas,
                s.available_replicas,
                s.unavailable_replicas
            ),
            (5, 2, 3, 3, 2)
        );
        assert_eq!(s.observed_generation, 2);
        let a = condition(&s.conditions, AVAILABLE).unwrap();
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            ("True", reason::MIN_AVAILABLE)
        );
        let s = calculate_status(&d, &[&rs(4, 4, 2)], None, now);
        let a = condition(&s.conditions, AVAILABLE).unwrap();
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            ("False", reason::MIN_UNAVAILABLE)
        );
    }

    #[test]
    fn progressing_moves_to_complete_and_times_out_without_progress() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut d = deployment(2);
        // Started: the new ReplicaSet was created at t0.
        conditions::set_by_reason(
            &mut d.status.conditions,
            new_condition(
                PROGRESSING,
                "True",
                reason::NEW_RS_CREATED,
                "Created".into(),
                t0,
            ),
        );
        d.status.observed_generation = 2;
        let new = rs(2, 1, 0);
        let mut s = calculate_status(&d, &[&new], Some(&new), t0);
        update_progressing(&d, &mut s, Some("web-x"), t0 + Duration::from_secs(5));
        let c = condition(&s.conditions, PROGRESSING).unwrap();
        assert_eq!(
            c.reason,
            reason::RS_UPDATED,
            "one more updated replica is progress"
        );
        assert_eq!(c.message, "ReplicaSet \"web-x\" is progressing.");
        assert_eq!(
            c.last_transition_time.as_deref(),
            Some(time::format(t0).as_str())
        );
        assert_eq!(
            c.last_update_time.as_deref(),
            Some(time::format(t0 + Duration::from_secs(5)).as_str())
        );
        assert!(until_deadline(&d, &s, t0).is_some());

        // No progress for longer than the deadline.
        d.status = s.clone();
        let mut stuck = calculate_status(&d, &[&new], Some(&new), t0);
        update_progressing(&d, &mut stuck, Some("web-x"), t0 + Duration::from_secs(700));
        let c = condition(&stuck.conditions, PROGRESSING).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason::TIMED_OUT)
        );
        assert_eq!(c.message, "ReplicaSet \"web-x\" has timed out progressing.");
        assert_eq!(until_deadline(&d, &stuck, t0), None);

        // Everything updated and available.
        let done = rs(2, 2, 2);
        let mut s = calculate_status(&d, &[&done], Some(&done), t0);
        update_progressing(&d, &mut s, Some("web-x"), t0 + Duration::from_secs(10));
        let c = condition(&s.conditions, PROGRESSING).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reason::NEW_RS_AVAILABLE)
        );
        assert_eq!(
            c.message,
            "ReplicaSet \"web-x\" has successfully progressed."
        );
    }

    #[test]
    fn pausing_and_resuming_say_so_once() {
        let now = SystemTime::UNIX_EPOCH;
        let mut d = deployment(1);
        d.spec.paused = true;
        let mut conds = Vec::new();
        assert!(update_paused_condition(&d, &mut conds, now));
        assert_eq!(conds[0].reason, reason::PAUSED);
        assert!(!update_paused_condition(&d, &mut conds, now));
        d.spec.paused = false;
        assert!(update_paused_condition(&d, &mut conds, now));
        assert_eq!(conds[0].reason, reason::RESUMED);
        assert!(!update_paused_condition(&d, &mut conds, now));
    }
}
