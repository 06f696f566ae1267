//! Expectations, as Kubernetes' controllers keep them: a controller that created or deleted
//! objects remembers what it wrote until its informer has shown it, and does not act on the
//! same owner again before (it would act on a cache that does not have its own writes yet,
//! and create or delete twice). Expectations expire after a timeout, so a lost event delays a
//! controller but never stops it.
//!
//! Keys are the controller's (`namespace/name` of the ReplicaSet, Job, ...); deletions are
//! tracked per object key, so an object seen terminating and then gone counts once.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Per controller key: creations not yet seen by the informer, and objects whose deletion is
/// not yet seen.
#[derive(Debug)]
struct Expectation {
    adds: i64,
    deletes: HashSet<String>,
    since: Instant,
    /// Whether a look at the expiry was already scheduled.
    timer: bool,
}

/// What each controller key's last pass wrote and its informer has not shown yet (cheap to
/// share behind an `Arc`; every method takes `&self`).
#[derive(Debug)]
pub struct Expectations {
    map: Mutex<HashMap<String, Expectation>>,
    timeout: Duration,
}

impl Expectations {
    pub fn new(timeout: Duration) -> Expectations {
        Expectations {
            map: Mutex::default(),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expectation>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `key` may be acted on: everything expected was observed, or it is too old.
    pub fn satisfied(&self, key: &str, now: Instant) -> bool {
        self.lock().get(key).is_none_or(|e| {
            (e.adds <= 0 && e.deletes.is_empty()) || now.duration_since(e.since) > self.timeout
        })
    }

    /// Expects `n` creations for `key` (replacing what was expected).
    pub fn expect_creations(&self, key: &str, n: usize, now: Instant) {
        self.lock().insert(
            key.to_owned(),
            Expectation {
                adds: i64::try_from(n).unwrap_or(i64::MAX),
                deletes: HashSet::new(),
                since: now,
                timer: false,
            },
        );
    }

    /// Expects the deletion of these objects (by their keys) for `key` (replacing what was
    /// expected).
    pub fn expect_deletions(
        &self,
        key: &str,
        objects: impl IntoIterator<Item = String>,
        now: Instant,
    ) {
        self.lock().insert(
            key.to_owned(),
            Expectation {
                adds: 0,
                deletes: objects.into_iter().collect(),
                since: now,
                timer: false,
            },
        );
    }

    /// How long until `key`'s expectations expire, the first time this is asked for them (so
    /// one timer is set per pass, not one per event).
    pub fn expiry_timer(&self, key: &str, now: Instant) -> Option<Duration> {
        let mut map = self.lock();
        let e = map.get_mut(key)?;
        if e.timer {
            return None;
        }
        e.timer = true;
        Some(
            (e.since + self.timeout)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1))
                + Duration::from_millis(10),
        )
    }

    /// `n` expected creations will not happen (they failed or were not sent).
    pub fn lower_creations(&self, key: &str, n: usize) {
        if let Some(e) = self.lock().get_mut(key) {
            e.adds -= i64::try_from(n).unwrap_or(i64::MAX);
        }
    }

    /// One expected creation for `key` was seen by the informer.
    pub fn creation_observed(&self, key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.adds -= 1;
        }
    }

    /// The deletion of `object` was observed (or will never be); unexpected objects are
    /// ignored, so an object seen terminating and then gone counts once.
    pub fn deletion_observed(&self, key: &str, object: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.deletes.remove(object);
        }
    }

    /// Drops `key`'s expectations (its object was deleted).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_hold_until_observed_or_expired() {
        let e = Expectations::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert!(e.satisfied("a", t0), "nothing expected");
        e.expect_creations("a", 3, t0);
        assert!(!e.satisfied("a", t0));
        e.creation_observed("a");
        e.creation_observed("a");
        assert!(!e.satisfied("a", t0));
        e.lower_creations("a", 1);
        assert!(e.satisfied("a", t0));

        e.expect_deletions("a", ["ns/p1".to_owned(), "ns/p2".to_owned()], t0);
        assert!(!e.satisfied("a", t0));
        e.deletion_observed("a", "ns/p1");
        // Terminating, then gone: one pod, counted once.
        e.deletion_observed("a", "ns/p1");
        e.deletion_observed("a", "ns/other");
        assert!(!e.satisfied("a", t0));
        assert!(
            e.satisfied("a", t0 + Duration::from_secs(31)),
            "expired expectations no longer hold the ReplicaSet back"
        );
        e.deletion_observed("a", "ns/p2");
        assert!(e.satisfied("a", t0));
        e.expect_creations("a", 1, t0);
        let timer = e.expiry_timer("a", t0 + Duration::from_secs(10)).unwrap();
        assert!(
            timer > Duration::from_secs(19) && timer < Duration::from_secs(21),
            "{timer:?}"
        );
        assert_eq!(e.expiry_timer("a", t0), None, "one timer per pass");
        assert_eq!(e.expiry_timer("b", t0), None, "nothing expected");
        e.expect_creations("a", 1, t0);
        e.forget("a");
        assert!(e.satisfied("a", t0));
    }
}
