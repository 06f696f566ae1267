use super::{
    Errors, NON_NEGATIVE, NameRule, Validate, int_or_string, json, metadata, pod::pod_spec,
};
use crate::{
    kinds::{Deployment, DeploymentStrategy, IntOrString, PodTemplateSpec, ReplicaSet},
    object::FieldError,
    selector::LabelSelector,
};

// ---------------------------------------------------------------------------------------------
// ReplicaSets and Deployments

/// The spec fields ReplicaSets and Deployments share.
struct Workload<'a> {
    replicas: Option<i32>,
    min_ready_seconds: i32,
    selector: &'a LabelSelector,
    template: &'a PodTemplateSpec,
}

fn workload(w: &Workload<'_>, e: &mut Errors) {
    if let Some(r) = w.replicas {
        e.non_negative("spec.replicas", i64::from(r));
    }
    e.non_negative("spec.minReadySeconds", i64::from(w.min_ready_seconds));
    if w.selector.is_empty() {
        e.required(
            "spec.selector",
            "a selector is needed to find the pods; it may not be empty",
        );
    } else {
        match w.selector.to_selector() {
            Err(err) => e.invalid("spec.selector", json(w.selector), err),
            Ok(selector) => {
                let labels = &w.template.metadata.labels;
                if !selector.matches(labels) {
                    e.invalid(
                        "spec.template.metadata.labels",
                        labels,
                        "selector does not match template labels",
                    );
                }
            }
        }
    }
    e.labels("spec.template.metadata.labels", &w.template.metadata.labels);
    e.annotations(
        "spec.template.metadata.annotations",
        &w.template.metadata.annotations,
    );
    pod_spec(&w.template.spec, "spec.template.spec", e);
    // A controller replaces pods that exit; a template that lets them stay exited would not be
    // kept running.
    let policy = w.template.spec.restart_policy.as_str();
    if matches!(policy, "OnFailure" | "Never") {
        e.unsupported("spec.template.spec.restartPolicy", policy, &["Always"], &[]);
    }
}

fn strategy(s: &DeploymentStrategy, e: &mut Errors) {
    e.one_of(
        "spec.strategy.type",
        &s.type_,
        &["RollingUpdate", "Recreate"],
        &[],
    );
    let Some(ru) = &s.rolling_update else {
        return;
    };
    if s.type_ == "Recreate" {
        e.forbidden(
            "spec.strategy.rollingUpdate",
            "may not be specified when strategy type is 'Recreate'",
        );
    }
    let base = "spec.strategy.rollingUpdate";
    let surge = ru
        .max_surge
        .as_ref()
        .and_then(|v| int_or_percent(v, &format!("{base}.maxSurge"), false, e));
    let unavailable = ru
        .max_unavailable
        .as_ref()
        .and_then(|v| int_or_percent(v, &format!("{base}.maxUnavailable"), true, e));
    if surge == Some(0)
        && unavailable == Some(0)
        && let Some(v) = &ru.max_surge
    {
        e.invalid(
            format!("{base}.maxSurge"),
            int_or_string(v),
            "may not be 0 when maxUnavailable is 0",
        );
    }
}

/// A count or a percentage (`25%`); its number when valid.
fn int_or_percent(v: &IntOrString, path: &str, at_most_100: bool, e: &mut Errors) -> Option<i64> {
    let n = match v {
        IntOrString::Int(i) => i64::from(*i),
        IntOrString::String(s) => {
            let digits = s.strip_suffix('%').unwrap_or("");
            let parsed = (!digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()))
                .then(|| digits.parse::<i64>().ok())
                .flatten();
            let Some(n) = parsed else {
                e.invalid(
                    path,
                    s,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%', or '93%')",
                );
                return None;
            };
            if at_most_100 && n > 100 {
                e.invalid(path, s, "must not be greater than 100%");
                return None;
            }
            return Some(n);
        }
    };
    if n < 0 {
        e.invalid(path, n, NON_NEGATIVE);
        return None;
    }
    Some(n)
}

fn selector_update(new: &LabelSelector, old: &LabelSelector, e: &mut Errors) {
    e.immutable("spec.selector", new, old, json(new));
}

impl Validate for ReplicaSet {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Subdomain, &mut e);
        let s = &self.spec;
        workload(
            &Workload {
                replicas: s.replicas,
                min_ready_seconds: s.min_ready_seconds,
                selector: &s.selector,
                template: &s.template,
            },
            &mut e,
        );
        e.0
    }

    fn update_rules(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        selector_update(&self.spec.selector, &old.spec.selector, &mut e);
        e.0
    }
}

impl Validate for Deployment {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Subdomain, &mut e);
        let s = &self.spec;
        workload(
            &Workload {
                replicas: s.replicas,
                min_ready_seconds: s.min_ready_seconds,
                selector: &s.selector,
                template: &s.template,
            },
            &mut e,
        );
        strategy(&s.strategy, &mut e);
        if let Some(limit) = s.revision_history_limit {
            e.non_negative("spec.revisionHistoryLimit", i64::from(limit));
        }
        if let Some(deadline) = s.progress_deadline_seconds
            && deadline <= s.min_ready_seconds
        {
            e.invalid(
                "spec.progressDeadlineSeconds",
                deadline,
                format!(
                    "must be greater than minReadySeconds ({})",
                    s.min_ready_seconds
                ),
            );
        }
        e.0
    }

    fn update_rules(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        selector_update(&self.spec.selector, &old.spec.selector, &mut e);
        e.0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validate::test_util::*;

    // --- ReplicaSets and Deployments -------------------------------------------------------

    #[test]
    fn negative_replicas_and_min_ready_seconds_are_refused() {
        let v = set(replica_set(), "/spec/replicas", json!(-1));
        let v = set(v, "/spec/minReadySeconds", json!(-2));
        let errors = check::<ReplicaSet>(v);
        assert_has(
            &errors,
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
        );
        assert_has(
            &errors,
            "spec.minReadySeconds: Invalid value: -2: must be greater than or equal to 0",
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn empty_or_missing_selector_is_required() {
        let errors = check::<Deployment>(set(deployment(), "/spec/selector", json!({})));
        assert_only(&errors, "spec.selector: Required value");
        let errors = check::<ReplicaSet>(remove(replica_set(), "/spec/selector"));
        assert_only(&errors, "spec.selector: Required value");
    }

    #[test]
    fn selector_with_an_unknown_operator_is_reported_at_spec_selector() {
        let v = set(
            deployment(),
            "/spec/selector",
            json!({"matchExpressions": [{"key": "app", "operator": "Is", "values": ["web"]}]}),
        );
        assert_only(
            &check::<Deployment>(v),
            "spec.selector: Invalid value: {\"matchExpressions\":[{\"key\":\"app\",\"operator\":\"Is\",\"values\":[\"web\"]}]}: invalid label selector: unknown operator \"Is\"",
        );
    }

    #[test]
    fn selector_must_match_the_template_labels() {
        let v = set(deployment(), "/spec/selector/matchLabels/app", json!("api"));
        assert_only(
            &check::<Deployment>(v),
            "spec.template.metadata.labels: Invalid value: {\"app\": \"web\", \"tier\": \"front\"}: selector does not match template labels",
        );
        let v = set(
            replica_set(),
            "/spec/selector",
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]}]}),
        );
        assert_eq!(check::<ReplicaSet>(v), Vec::<String>::new());
    }

    #[test]
    fn template_errors_carry_the_template_path_and_template_labels_are_checked() {
        let v = set(
            deployment(),
            "/spec/template/spec/containers/0/ports/0/containerPort",
            json!(70000),
        );
        let v = set(v, "/spec/template/metadata/labels/bad key", json!("x"));
        let errors = check::<Deployment>(v);
        assert_has(
            &errors,
            "spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        );
        assert_has(
            &errors,
            "spec.template.metadata.labels: Invalid value: \"bad key\"",
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn template_restart_policy_must_be_always() {
        let v = set(
            replica_set(),
            "/spec/template/spec/restartPolicy",
            json!("Never"),
        );
        assert_only(
            &check::<ReplicaSet>(v),
            "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
        );
    }

    #[test]
    fn deployment_strategy_type_must_be_rolling_update_or_recreate() {
        let v = set(deployment(), "/spec/strategy/type", json!("BlueGreen"));
        assert_only(
            &check::<Deployment>(v),
            "spec.strategy.type: Unsupported value: \"BlueGreen\": supported values: \"RollingUpdate\", \"Recreate\"",
        );
        let v = set(deployment(), "/spec/strategy/type", json!("Recreate"));
        assert_eq!(check::<Deployment>(v), Vec::<String>::new());
    }

    #[test]
    fn rolling_update_parameters_are_forbidden_with_recreate() {
        let v = set(
            deployment(),
            "/spec/strategy",
            json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}),
        );
        assert_only(
            &check::<Deployment>(v),
            "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy type is 'Recreate'",
        );
    }

    #[test]
    fn max_surge_and_max_unavailable_may_not_both_be_zero() {
        for (surge, unavailable) in [
            (json!(0), json!(0)),
            (json!("0%"), json!(0)),
            (json!(0), json!("0%")),
        ] {
            let v = set(
                deployment(),
                "/spec/strategy/rollingUpdate",
                json!({"maxSurge": surge, "maxUnavailable": unavailable}),
            );
            assert_only(
                &check::<Deployment>(v),
                "spec.strategy.rollingUpdate.maxSurge: Invalid value: ",
            );
        }
        let v = set(
            deployment(),
            "/spec/strategy/rollingUpdate",
            json!({"maxSurge": 0, "maxUnavailable": 0}),
        );
        assert_only(
            &check::<Deployment>(v),
            "spec.strategy.rollingUpdate.maxSurge: Invalid value: 0: may not be 0 when maxUnavailable is 0",
        );
        let v = set(
            deployment(),
            "/spec/strategy/rollingUpdate",
            json!({"maxSurge": 0, "maxUnavailable": 1}),
        );
        assert_eq!(check::<Deployment>(v), Vec::<String>::new());
    }

    #[test]
    fn rolling_update_counts_are_non_negative_integers_or_percentages() {
        let base = "spec.strategy.rollingUpdate";
        let cases = [
            (
                json!({"maxSurge": -1}),
                format!("{base}.maxSurge: Invalid value: -1: must be greater than or equal to 0"),
            ),
            (
                json!({"maxSurge": "25"}),
                format!("{base}.maxSurge: Invalid value: \"25\": a valid percent string"),
            ),
            (
                json!({"maxSurge": "-5%"}),
                format!("{base}.maxSurge: Invalid value: \"-5%\": a valid percent string"),
            ),
            (
                json!({"maxUnavailable": "101%"}),
                format!(
                    "{base}.maxUnavailable: Invalid value: \"101%\": must not be greater than 100%"
                ),
            ),
            (
                json!({"maxUnavailable": "x%"}),
                format!("{base}.maxUnavailable: Invalid value: \"x%\": a valid percent string"),
            ),
        ];
        for (ru, expected) in cases {
            let v = set(deployment(), "/spec/strategy/rollingUpdate", ru);
            assert_only(&check::<Deployment>(v), &expected);
        }
        let v = set(
            deployment(),
            "/spec/strategy/rollingUpdate",
            json!({"maxSurge": "200%", "maxUnavailable": "100%"}),
        );
        assert_eq!(check::<Deployment>(v), Vec::<String>::new());
    }

    #[test]
    fn revision_history_limit_must_not_be_negative() {
        let v = set(deployment(), "/spec/revisionHistoryLimit", json!(-1));
        assert_only(
            &check::<Deployment>(v),
            "spec.revisionHistoryLimit: Invalid value: -1: must be greater than or equal to 0",
        );
    }

    #[test]
    fn progress_deadline_must_exceed_min_ready_seconds() {
        let v = set(deployment(), "/spec/minReadySeconds", json!(600));
        assert_only(
            &check::<Deployment>(v),
            "spec.progressDeadlineSeconds: Invalid value: 600: must be greater than minReadySeconds (600)",
        );
        let v = set(deployment(), "/spec/minReadySeconds", json!(599));
        assert_eq!(check::<Deployment>(v), Vec::<String>::new());
    }

    #[test]
    fn workload_selectors_are_immutable_but_replicas_may_change() {
        let new = set(
            deployment(),
            "/spec/selector/matchLabels/tier",
            json!("front"),
        );
        assert_only(
            &update_errors::<Deployment>(new, deployment()),
            "spec.selector: Invalid value: {\"matchLabels\":{\"app\":\"web\",\"tier\":\"front\"}}: field is immutable",
        );
        let new = set(
            replica_set(),
            "/spec/selector/matchLabels/app",
            json!("api"),
        );
        assert_only(
            &update_errors::<ReplicaSet>(new, replica_set()),
            "spec.selector: Invalid value: ",
        );
        let new = set(replica_set(), "/spec/replicas", json!(10));
        assert_eq!(
            update_errors::<ReplicaSet>(new, replica_set()),
            Vec::<String>::new()
        );
    }
}
