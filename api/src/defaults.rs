//! Server-side defaults, the values a Kubernetes API server fills in when a manifest leaves them out.

use crate::kinds::{
    Deployment, Endpoints, IntOrString, Lease, Namespace, Node, Pod, PodSpec, Probe, ReplicaSet,
    RollingUpdateDeployment, Service,
};

/// Fills unset fields with their defaults; applying twice changes nothing.
pub trait Defaults {
    fn apply_defaults(&mut self);
}

fn set_if_empty(field: &mut String, value: &str) {
    if field.is_empty() {
        *field = value.to_owned();
    }
}

impl Defaults for Namespace {
    fn apply_defaults(&mut self) {
        set_if_empty(&mut self.status.phase, "Active");
    }
}

impl Defaults for Node {
    fn apply_defaults(&mut self) {
        if self.spec.pod_cidrs.is_empty() && !self.spec.pod_cidr.is_empty() {
            self.spec.pod_cidrs = vec![self.spec.pod_cidr.clone()];
        }
    }
}

fn pod_spec(spec: &mut PodSpec) {
    set_if_empty(&mut spec.restart_policy, "Always");
    spec.termination_grace_period_seconds.get_or_insert(30);
    for t in &mut spec.tolerations {
        set_if_empty(&mut t.operator, "Equal");
    }
    for c in &mut spec.containers {
        set_if_empty(&mut c.image_pull_policy, "IfNotPresent");
        for p in &mut c.ports {
            set_if_empty(&mut p.protocol, "TCP");
        }
        for probe in [&mut c.readiness_probe, &mut c.liveness_probe]
            .into_iter()
            .flatten()
        {
            probe_defaults(probe);
        }
    }
}

fn probe_defaults(p: &mut Probe) {
    for (field, default) in [
        (&mut p.timeout_seconds, 1),
        (&mut p.period_seconds, 10),
        (&mut p.success_threshold, 1),
        (&mut p.failure_threshold, 3),
    ] {
        if *field == 0 {
            *field = default;
        }
    }
    if let Some(h) = &mut p.http_get {
        set_if_empty(&mut h.path, "/");
        set_if_empty(&mut h.scheme, "HTTP");
    }
}

impl Defaults for Pod {
    fn apply_defaults(&mut self) {
        pod_spec(&mut self.spec);
    }
}

impl Defaults for ReplicaSet {
    fn apply_defaults(&mut self) {
        self.spec.replicas.get_or_insert(1);
        pod_spec(&mut self.spec.template.spec);
    }
}

impl Defaults for Deployment {
    fn apply_defaults(&mut self) {
        let spec = &mut self.spec;
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        set_if_empty(&mut spec.strategy.type_, "RollingUpdate");
        if spec.strategy.type_ == "RollingUpdate" {
            let ru = spec
                .strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDeployment::default);
            ru.max_surge
                .get_or_insert_with(|| IntOrString::String("25%".into()));
            ru.max_unavailable
                .get_or_insert_with(|| IntOrString::String("25%".into()));
        }
        pod_spec(&mut spec.template.spec);
    }
}

impl Defaults for Service {
    fn apply_defaults(&mut self) {
        let spec = &mut self.spec;
        set_if_empty(&mut spec.type_, "ClusterIP");
        set_if_empty(&mut spec.session_affinity, "None");
        // As Kubernetes: every Service but an ExternalName one routes internal traffic, and only
        // the externally reachable types have an external policy.
        if spec.type_ != "ExternalName" {
            set_if_empty(&mut spec.internal_traffic_policy, "Cluster");
        }
        if matches!(spec.type_.as_str(), "NodePort" | "LoadBalancer") {
            set_if_empty(&mut spec.external_traffic_policy, "Cluster");
        }
        if spec.ip_families.is_empty() {
            spec.ip_families = vec!["IPv4".into()];
        }
        set_if_empty(&mut spec.ip_family_policy, "SingleStack");
        if spec.session_affinity == "ClientIP" {
            let cfg = spec
                .session_affinity_config
                .get_or_insert_with(Default::default);
            cfg.client_ip
                .get_or_insert_with(Default::default)
                .timeout_seconds
                .get_or_insert(10_800);
        }
        for p in &mut spec.ports {
            set_if_empty(&mut p.protocol, "TCP");
            p.target_port.get_or_insert(IntOrString::Int(p.port));
        }
    }
}

impl Defaults for Endpoints {
    fn apply_defaults(&mut self) {
        for s in &mut self.subsets {
            for p in &mut s.ports {
                set_if_empty(&mut p.protocol, "TCP");
            }
        }
    }
}

impl Defaults for Lease {
    fn apply_defaults(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::ServiceSpec;

    fn defaulted_service(type_: &str) -> ServiceSpec {
        let mut s = Service::default();
        s.spec.type_ = type_.into();
        s.apply_defaults();
        s.spec
    }

    #[test]
    fn traffic_policies_default_to_cluster_where_kubernetes_defaults_them() {
        for (type_, external, internal) in [
            ("", "", "Cluster"),
            ("ClusterIP", "", "Cluster"),
            ("NodePort", "Cluster", "Cluster"),
            ("LoadBalancer", "Cluster", "Cluster"),
            ("ExternalName", "", ""),
        ] {
            let spec = defaulted_service(type_);
            assert_eq!(
                (
                    spec.external_traffic_policy.as_str(),
                    spec.internal_traffic_policy.as_str()
                ),
                (external, internal),
                "type {type_:?}"
            );
        }
    }

    #[test]
    fn traffic_policies_given_are_kept() {
        let mut s = Service::default();
        s.spec.type_ = "NodePort".into();
        s.spec.external_traffic_policy = "Local".into();
        s.spec.internal_traffic_policy = "Local".into();
        s.apply_defaults();
        assert_eq!(s.spec.external_traffic_policy, "Local");
        assert_eq!(s.spec.internal_traffic_policy, "Local");
    }
}
