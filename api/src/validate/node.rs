use std::collections::BTreeSet;

use super::{Errors, NameRule, Validate, ipv4_cidr, metadata, quantities};
use crate::{
    kinds::Node,
    object::FieldError,
    selector::{validate_label_key, validate_label_value},
};

impl Validate for Node {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Subdomain, &mut e);
        let spec = &self.spec;
        if !spec.pod_cidr.is_empty()
            && let Err(d) = ipv4_cidr(&spec.pod_cidr)
        {
            e.invalid("spec.podCIDR", &spec.pod_cidr, d);
        }
        for (i, cidr) in spec.pod_cidrs.iter().enumerate() {
            if let Err(d) = ipv4_cidr(cidr) {
                e.invalid(format!("spec.podCIDRs[{i}]"), cidr, d);
            }
        }
        if spec.pod_cidrs.len() > 1 {
            e.too_many(
                "spec.podCIDRs",
                spec.pod_cidrs.len(),
                1,
                "Skiff is IPv4 single-stack",
            );
        }
        if let Some(first) = spec.pod_cidrs.first()
            && !spec.pod_cidr.is_empty()
            && *first != spec.pod_cidr
        {
            e.invalid(
                "spec.podCIDRs[0]",
                first,
                format!("must match spec.podCIDR ({:?})", spec.pod_cidr),
            );
        }
        let mut taints = BTreeSet::new();
        for (i, t) in spec.taints.iter().enumerate() {
            let path = format!("spec.taints[{i}]");
            if t.key.is_empty() {
                e.required(format!("{path}.key"), "");
            } else if let Err(d) = validate_label_key(&t.key) {
                e.invalid(format!("{path}.key"), &t.key, d);
            }
            if let Err(d) = validate_label_value(&t.value) {
                e.invalid(format!("{path}.value"), &t.value, d);
            }
            // A toleration may still name PreferNoSchedule: it then matches no taint, which is
            // what it would match in Kubernetes on a node without such taints.
            e.one_of(
                format!("{path}.effect"),
                &t.effect,
                &["NoSchedule", "NoExecute"],
                &[(
                    "PreferNoSchedule",
                    "Skiff's scheduler does not score taint preferences yet, so the taint would change no placement",
                )],
            );
            e.timestamp(format!("{path}.timeAdded"), t.time_added.as_deref());
            if !taints.insert((t.key.as_str(), t.effect.as_str())) {
                e.duplicate(path, format!("{}:{}", t.key, t.effect));
            }
        }
        let status = &self.status;
        for (i, a) in status.addresses.iter().enumerate() {
            let path = format!("status.addresses[{i}]");
            e.one_of(
                format!("{path}.type"),
                &a.type_,
                &[
                    "InternalIP",
                    "ExternalIP",
                    "Hostname",
                    "InternalDNS",
                    "ExternalDNS",
                ],
                &[],
            );
            if a.address.is_empty() {
                e.required(format!("{path}.address"), "");
            }
        }
        quantities(&status.capacity, "status.capacity", &mut e);
        quantities(&status.allocatable, "status.allocatable", &mut e);
        e.0
    }

    fn update_rules(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        // Assigned once (by the node controller or at registration), then fixed: routes and the
        // pods' addresses depend on it.
        let (new, old) = (&self.spec, &old.spec);
        if !old.pod_cidr.is_empty() && new.pod_cidr != old.pod_cidr {
            e.invalid("spec.podCIDR", &new.pod_cidr, "may not change once set");
        }
        if !old.pod_cidrs.is_empty() && new.pod_cidrs != old.pod_cidrs {
            e.invalid("spec.podCIDRs", &new.pod_cidrs, "may not change once set");
        }
        e.0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validate::test_util::*;

    // --- Nodes -----------------------------------------------------------------------------

    #[test]
    fn pod_cidrs_are_ipv4_cidrs() {
        for (cidr, why) in [
            ("10.244.1.0", "must be a valid IPv4 CIDR"),
            ("10.244.1.0/33", "must be a valid IPv4 CIDR"),
            ("10.244.1.0/+8", "must be a valid IPv4 CIDR"),
            ("10.244.1/24", "must be a valid IPv4 CIDR"),
            ("fd00::/64", "IPv6 is not supported"),
        ] {
            let v = set(node(), "/spec/podCIDR", json!(cidr));
            let errors = check::<Node>(v);
            assert_has(
                &errors,
                &format!("spec.podCIDR: Invalid value: {cidr:?}: {why}"),
            );
            // The defaulted podCIDRs repeats the same mistake.
            assert_has(
                &errors,
                &format!("spec.podCIDRs[0]: Invalid value: {cidr:?}: {why}"),
            );
        }
        let v = set(node(), "/spec/podCIDRs", json!(["10.244.2.0/24"]));
        assert_only(
            &check::<Node>(v),
            "spec.podCIDRs[0]: Invalid value: \"10.244.2.0/24\": must match spec.podCIDR",
        );
        let v = set(
            node(),
            "/spec/podCIDRs",
            json!(["10.244.1.0/24", "10.245.1.0/24"]),
        );
        assert_only(&check::<Node>(v), "spec.podCIDRs: Too many: 2");
    }

    #[test]
    fn taints_need_label_keys_known_effects_and_unique_key_effect_pairs() {
        let v = set(
            node(),
            "/spec/taints",
            json!([
                {"key": "dedicated", "value": "infra", "effect": "NoSchedule"},
                {"key": "dedicated", "value": "other", "effect": "NoSchedule"},
                {"key": "dedicated", "effect": "NoExecute"},
                {"key": "bad key", "effect": "NoSchedule"},
                {"key": "k", "value": "-v", "effect": "Never"},
                {"effect": "NoSchedule"},
            ]),
        );
        let errors = check::<Node>(v);
        assert_has(
            &errors,
            "spec.taints[1]: Duplicate value: \"dedicated:NoSchedule\"",
        );
        assert_has(&errors, "spec.taints[3].key: Invalid value: \"bad key\"");
        assert_has(&errors, "spec.taints[4].value: Invalid value: \"-v\"");
        assert_has(
            &errors,
            "spec.taints[4].effect: Unsupported value: \"Never\"",
        );
        assert_has(&errors, "spec.taints[5].key: Required value");
        assert_eq!(errors.len(), 5, "{errors:#?}");
    }

    #[test]
    fn prefer_no_schedule_taints_are_refused_but_tolerations_may_name_them() {
        let v = set(
            node(),
            "/spec/taints",
            json!([{"key": "spot", "effect": "PreferNoSchedule"}]),
        );
        assert_only(
            &check::<Node>(v),
            "spec.taints[0].effect: Unsupported value: \"PreferNoSchedule\": supported values: \"NoSchedule\", \"NoExecute\"; Skiff's scheduler does not score taint preferences yet, so the taint would change no placement",
        );
        let v = set(
            pod(),
            "/spec/tolerations",
            json!([{"key": "spot", "operator": "Exists", "effect": "PreferNoSchedule"}]),
        );
        assert_eq!(pod_errors(v), Vec::<String>::new());
    }

    #[test]
    fn node_address_types_and_capacities_are_checked() {
        let v = set(node(), "/status/addresses/0/type", json!("PodIP"));
        assert_only(
            &check::<Node>(v),
            "status.addresses[0].type: Unsupported value: \"PodIP\"",
        );
        let v = set(node(), "/status/capacity/cpu", json!("-1"));
        assert_only(
            &check::<Node>(v),
            "status.capacity[cpu]: Invalid value: \"-1\": must be greater than or equal to 0",
        );
        let v = set(node(), "/status/allocatable/bad key", json!("1"));
        assert_only(
            &check::<Node>(v),
            "status.allocatable: Invalid value: \"bad key\"",
        );
    }

    #[test]
    fn node_pod_cidr_may_be_set_once_and_never_changed() {
        let bare = remove(node(), "/spec/podCIDR");
        assert_eq!(
            update_errors::<Node>(node(), bare.clone()),
            Vec::<String>::new()
        );
        let moved = set(node(), "/spec/podCIDR", json!("10.244.9.0/24"));
        let errors = update_errors::<Node>(moved, node());
        assert_has(
            &errors,
            "spec.podCIDR: Invalid value: \"10.244.9.0/24\": may not change once set",
        );
        assert_has(
            &errors,
            "spec.podCIDRs: Invalid value: [\"10.244.9.0/24\"]: may not change once set",
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");
        let errors = update_errors::<Node>(bare, node());
        assert_has(
            &errors,
            "spec.podCIDR: Invalid value: \"\": may not change once set",
        );
    }
}
