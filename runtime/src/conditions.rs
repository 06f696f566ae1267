//! Status conditions, written the way Kubernetes writes them: `lastTransitionTime` moves only
//! when a condition's status changes, and a condition is found by its type.
//!
//! Three ways to write one, because Kubernetes' own writers differ:
//! - [`set`] updates a condition in place (pods' and nodes' conditions written by controllers,
//!   the scheduler): the times it does not own (heartbeat, probe, update) stay as they were.
//! - [`rewrite`] writes a condition afresh, as a node agent writes its node's and its pods'
//!   conditions: reason and message replaced, probe and update times dropped, the heartbeat
//!   time kept (the heartbeat stamps it on its own schedule).
//! - [`set_by_reason`] and [`replace`] are the Deployment controller's: a condition whose status
//!   and reason did not change stays exactly as it is (message and times included), and a
//!   written one goes to the end of the list.
//!
//! Times are RFC 3339 strings (`skiff_api::meta::time::format`), passed in so that callers and
//! tests decide what "now" is.

use skiff_api::kinds::Condition;

/// The condition of type `type_`, added (with only its type set) if there is none.
pub fn entry<'a>(conditions: &'a mut Vec<Condition>, type_: &str) -> &'a mut Condition {
    let i = match conditions.iter().position(|c| c.type_ == type_) {
        Some(i) => i,
        None => {
            conditions.push(Condition {
                type_: type_.to_owned(),
                ..Condition::default()
            });
            conditions.len() - 1
        }
    };
    &mut conditions[i]
}

/// Sets `c`'s status, reason and message; its transition time becomes `now` when the status
/// changes (or it never had one). Everything else is kept. Whether anything changed: a
/// condition that already says all three is left alone, its times included.
pub fn update(c: &mut Condition, status: &str, reason: &str, message: &str, now: &str) -> bool {
    if c.status == status && c.reason == reason && c.message == message {
        return false;
    }
    if c.status != status || c.last_transition_time.is_none() {
        c.last_transition_time = Some(now.to_owned());
    }
    c.status = status.to_owned();
    c.reason = reason.to_owned();
    c.message = message.to_owned();
    true
}

/// Sets the condition `type_` in place (added last if missing) to `status`, `reason` and
/// `message` with [`update`]. Whether anything changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) -> bool {
    update(entry(conditions, type_), status, reason, message, now)
}

/// Writes the condition `type_` afresh, in place (added last if missing): status, reason and
/// message as given, the transition time kept while the status stays (else `now`), the
/// heartbeat time kept, probe and update times dropped.
pub fn rewrite(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) {
    let c = entry(conditions, type_);
    let transition = c
        .last_transition_time
        .take()
        .filter(|_| c.status == status)
        .unwrap_or_else(|| now.to_owned());
    *c = Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: Some(transition),
        last_heartbeat_time: c.last_heartbeat_time.take(),
        ..Condition::default()
    };
}

/// Puts `c` in place of the condition of its type, last in the list; if that one had the
/// same status, `c` takes its transition time.
pub fn replace(conditions: &mut Vec<Condition>, mut c: Condition) {
    if let Some(cur) = conditions.iter().find(|x| x.type_ == c.type_)
        && cur.status == c.status
    {
        c.last_transition_time = cur.last_transition_time.clone();
    }
    remove(conditions, &c.type_);
    conditions.push(c);
}

/// [`replace`]s the condition of `c`'s type unless it already has `c`'s status and reason (it
/// then stays untouched, message and times included). Whether it was replaced.
pub fn set_by_reason(conditions: &mut Vec<Condition>, c: Condition) -> bool {
    if conditions
        .iter()
        .any(|x| x.type_ == c.type_ && x.status == c.status && x.reason == c.reason)
    {
        return false;
    }
    replace(conditions, c);
    true
}

/// Removes the condition of type `type_`; whether there was one.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(type_: &str, status: &str, reason: &str, at: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            last_transition_time: Some(at.into()),
            ..Condition::default()
        }
    }

    /// [`cond`] with the times others own: heartbeat `hb`, probe `probe`.
    fn cond_with_times(type_: &str, status: &str, reason: &str, at: &str) -> Condition {
        Condition {
            last_heartbeat_time: Some("hb".into()),
            last_probe_time: Some("probe".into()),
            ..cond(type_, status, reason, at)
        }
    }

    fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn set_adds_a_missing_condition_last_stamped_now() {
        let mut cs = vec![cond("Initialized", "True", "", "t0")];
        assert!(set(&mut cs, "Ready", "False", "NotYet", "wait", "t1"));
        assert_eq!(cs.len(), 2);
        assert_eq!(
            cs[1],
            Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "NotYet".into(),
                message: "wait".into(),
                last_transition_time: Some("t1".into()),
                ..Condition::default()
            }
        );
    }

    #[test]
    fn set_keeps_the_transition_time_while_the_status_stays_and_moves_it_when_it_changes() {
        let mut cs = vec![cond("Ready", "False", "A", "t0")];
        // Same status, new reason: a change, but no transition.
        assert!(set(&mut cs, "Ready", "False", "B", "b", "t1"));
        assert_eq!(cs[0].reason, "B");
        assert_eq!(cs[0].last_transition_time.as_deref(), Some("t0"));
        // New status: a transition.
        assert!(set(&mut cs, "Ready", "True", "", "", "t2"));
        assert_eq!(cs[0].last_transition_time.as_deref(), Some("t2"));
    }

    #[test]
    fn set_leaves_a_condition_that_already_says_it_untouched_and_keeps_times_it_does_not_own() {
        let c = cond_with_times("Ready", "True", "Up", "t0");
        let mut cs = vec![c.clone()];
        assert!(!set(&mut cs, "Ready", "True", "Up", "Up message", "t1"));
        assert_eq!(cs, vec![c]);
        assert!(set(&mut cs, "Ready", "False", "Down", "gone", "t2"));
        assert_eq!(cs[0].last_heartbeat_time.as_deref(), Some("hb"));
        assert_eq!(cs[0].last_probe_time.as_deref(), Some("probe"));
    }

    #[test]
    fn a_condition_without_a_transition_time_gets_one_when_written() {
        let mut cs = vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Condition::default()
        }];
        assert!(set(&mut cs, "Ready", "True", "Up", "", "t1"));
        assert_eq!(cs[0].last_transition_time.as_deref(), Some("t1"));
    }

    #[test]
    fn a_node_condition_is_written_afresh_keeping_its_heartbeat_and_its_transition_time() {
        let ready = cond_with_times("Ready", "True", "KubeletReady", "t0");
        let mut cs = vec![cond("MemoryPressure", "False", "Ok", "t0"), ready];
        rewrite(
            &mut cs,
            "Ready",
            "True",
            "KubeletReady",
            "ready again",
            "t1",
        );
        let r = find(&cs, "Ready");
        assert_eq!(r.message, "ready again");
        assert_eq!(r.last_transition_time.as_deref(), Some("t0"));
        assert_eq!(r.last_heartbeat_time.as_deref(), Some("hb"));
        assert_eq!(r.last_probe_time, None, "the controller's probe time goes");
        // In place: the order stays.
        assert_eq!(cs[1].type_, "Ready");
        rewrite(&mut cs, "Ready", "False", "Down", "", "t2");
        assert_eq!(
            find(&cs, "Ready").last_transition_time.as_deref(),
            Some("t2")
        );
        rewrite(&mut cs, "DiskPressure", "False", "Ok", "", "t3");
        assert_eq!(cs[2].last_transition_time.as_deref(), Some("t3"));
        assert_eq!(cs[2].last_heartbeat_time, None);
    }

    #[test]
    fn by_reason_an_unchanged_status_and_reason_keep_the_whole_condition() {
        let mut cs = vec![
            cond("Progressing", "True", "ReplicaSetUpdated", "t0"),
            cond("Available", "True", "MinimumReplicasAvailable", "t0"),
        ];
        let before = cs.clone();
        let mut same = cond("Progressing", "True", "ReplicaSetUpdated", "t5");
        same.message = "a newer message".into();
        assert!(!set_by_reason(&mut cs, same));
        assert_eq!(cs, before);
    }

    #[test]
    fn by_reason_a_new_reason_replaces_the_condition_last_keeping_its_transition_time() {
        let mut cs = vec![
            cond("Progressing", "True", "ReplicaSetUpdated", "t0"),
            cond("Available", "True", "MinimumReplicasAvailable", "t0"),
        ];
        assert!(set_by_reason(
            &mut cs,
            cond("Progressing", "True", "NewReplicaSetAvailable", "t5")
        ));
        assert_eq!(cs[0].type_, "Available");
        assert_eq!(cs[1].reason, "NewReplicaSetAvailable");
        assert_eq!(cs[1].last_transition_time.as_deref(), Some("t0"));
        // A new status is a transition.
        assert!(set_by_reason(
            &mut cs,
            cond("Progressing", "False", "ProgressDeadlineExceeded", "t9")
        ));
        assert_eq!(
            find(&cs, "Progressing").last_transition_time.as_deref(),
            Some("t9")
        );
    }

    #[test]
    fn replace_always_writes_and_remove_says_whether_there_was_one() {
        let mut cs = vec![cond("Progressing", "True", "ReplicaSetUpdated", "t0")];
        let mut c = cond("Progressing", "True", "ReplicaSetUpdated", "t5");
        c.message = "newer".into();
        c.last_update_time = Some("t5".into());
        replace(&mut cs, c);
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].message, "newer");
        assert_eq!(cs[0].last_update_time.as_deref(), Some("t5"));
        assert_eq!(cs[0].last_transition_time.as_deref(), Some("t0"));
        assert!(remove(&mut cs, "Progressing"));
        assert!(!remove(&mut cs, "Progressing"));
        assert!(cs.is_empty());
    }

    #[test]
    fn entry_finds_or_adds_by_type() {
        let mut cs = vec![cond("Ready", "True", "", "t0")];
        entry(&mut cs, "Ready").message = "x".into();
        assert_eq!(cs.len(), 1);
        assert_eq!(entry(&mut cs, "PodScheduled").status, "");
        assert_eq!(cs.len(), 2);
    }
}
