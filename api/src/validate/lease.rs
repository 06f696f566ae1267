use super::{Errors, NameRule, Validate, metadata};
use crate::{kinds::Lease, object::FieldError};

impl Validate for Lease {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Subdomain, &mut e);
        let s = &self.spec;
        if let Some(d) = s.lease_duration_seconds
            && d <= 0
        {
            e.invalid("spec.leaseDurationSeconds", d, "must be greater than 0");
        }
        if let Some(t) = s.lease_transitions {
            e.non_negative("spec.leaseTransitions", i64::from(t));
        }
        e.timestamp("spec.acquireTime", s.acquire_time.as_deref());
        e.timestamp("spec.renewTime", s.renew_time.as_deref());
        e.0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validate::test_util::*;

    // --- Leases ----------------------------------------------------------------------------

    #[test]
    fn lease_durations_transitions_and_times_are_checked() {
        let v = set(lease(), "/spec/leaseDurationSeconds", json!(0));
        assert_only(
            &check::<Lease>(v),
            "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0",
        );
        let v = set(lease(), "/spec/leaseTransitions", json!(-1));
        assert_only(
            &check::<Lease>(v),
            "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0",
        );
        let v = set(lease(), "/spec/renewTime", json!("yesterday"));
        assert_only(
            &check::<Lease>(v),
            "spec.renewTime: Invalid value: \"yesterday\": must be an RFC 3339 timestamp",
        );
        let v = set(lease(), "/spec/acquireTime", json!("2026-13-01T00:00:00Z"));
        assert_only(
            &check::<Lease>(v),
            "spec.acquireTime: Invalid value: \"2026-13-01T00:00:00Z\"",
        );
    }
}
