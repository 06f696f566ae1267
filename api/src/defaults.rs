//! Server-side defaults, the values a Kubernetes API server fills in when a manifest leaves them out.

use crate::kinds::{
    Container, DEFAULT_TERMINATION_MESSAGE_PATH, Deployment, EmptyDirVolumeSource, Endpoints,
    IntOrString, Lease, LifecycleHandler, Namespace, Node, ObjectFieldSelector, Pod, PodSpec,
    Probe, ReplicaSet, RollingUpdateDeployment, Service, Volume,
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

/// Mode of the files of configMap, secret, downwardAPI and projected volumes: 0644.
const VOLUME_FILE_MODE: i32 = 0o644;

fn pod_spec(spec: &mut PodSpec) {
    set_if_empty(&mut spec.restart_policy, "Always");
    // `serviceAccount` is Kubernetes' deprecated alias: either one given fills the other.
    if spec.service_account_name.is_empty() {
        spec.service_account_name = spec.service_account.clone();
    } else if spec.service_account.is_empty() {
        spec.service_account = spec.service_account_name.clone();
    }
    spec.termination_grace_period_seconds.get_or_insert(30);
    for t in &mut spec.tolerations {
        set_if_empty(&mut t.operator, "Equal");
    }
    for c in spec
        .init_containers
        .iter_mut()
        .chain(spec.containers.iter_mut())
    {
        container(c);
    }
    for v in &mut spec.volumes {
        volume(v);
    }
}

/// Kubernetes' pull policy for an image reference without one: `Always` for `:latest` or no tag
/// at all (which means latest), `IfNotPresent` for any other tag or a reference by digest alone.
pub fn default_pull_policy(image: &str) -> &'static str {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    // A `:` in the last path element starts the tag (one before a `/` is a registry's port).
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = last.split_once(':').map(|(_, tag)| tag);
    match (tag, digest) {
        (Some("latest"), _) | (None, None) => "Always",
        _ => "IfNotPresent",
    }
}

fn container(c: &mut Container) {
    if c.image_pull_policy.is_empty() {
        c.image_pull_policy = default_pull_policy(&c.image).to_owned();
    }
    set_if_empty(
        &mut c.termination_message_path,
        DEFAULT_TERMINATION_MESSAGE_PATH,
    );
    set_if_empty(&mut c.termination_message_policy, "File");
    for p in &mut c.ports {
        set_if_empty(&mut p.protocol, "TCP");
    }
    for probe in [
        &mut c.readiness_probe,
        &mut c.liveness_probe,
        &mut c.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        probe_defaults(probe);
    }
    if let Some(l) = &mut c.lifecycle {
        for hook in [&mut l.post_start, &mut l.pre_stop].into_iter().flatten() {
            hook_defaults(hook);
        }
    }
    for v in &mut c.env {
        if let Some(fs) = v.value_from.as_mut().and_then(|f| f.field_ref.as_mut()) {
            field_selector(fs);
        }
    }
}

fn field_selector(fs: &mut ObjectFieldSelector) {
    set_if_empty(&mut fs.api_version, "v1");
}

fn volume(v: &mut Volume) {
    // As Kubernetes: a volume with no source at all is an emptyDir.
    let any_source = v
        .sources()
        .into_iter()
        .chain(v.unsupported_sources())
        .any(|(_, set)| set);
    if !any_source {
        v.empty_dir = Some(EmptyDirVolumeSource::default());
    }
    if let Some(h) = &mut v.host_path {
        h.type_.get_or_insert_with(String::new);
    }
    if let Some(c) = &mut v.config_map {
        c.default_mode.get_or_insert(VOLUME_FILE_MODE);
    }
    if let Some(s) = &mut v.secret {
        s.default_mode.get_or_insert(VOLUME_FILE_MODE);
    }
    if let Some(d) = &mut v.downward_api {
        d.default_mode.get_or_insert(VOLUME_FILE_MODE);
        for f in &mut d.items {
            f.field_ref.iter_mut().for_each(field_selector);
        }
    }
    if let Some(p) = &mut v.projected {
        p.default_mode.get_or_insert(VOLUME_FILE_MODE);
        for s in &mut p.sources {
            for f in s.downward_api.iter_mut().flat_map(|d| &mut d.items) {
                f.field_ref.iter_mut().for_each(field_selector);
            }
            if let Some(t) = &mut s.service_account_token {
                t.expiration_seconds.get_or_insert(3600);
            }
        }
    }
}

fn hook_defaults(h: &mut LifecycleHandler) {
    if let Some(g) = &mut h.http_get {
        set_if_empty(&mut g.path, "/");
        set_if_empty(&mut g.scheme, "HTTP");
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
    if let Some(g) = &mut p.grpc {
        g.service.get_or_insert_with(String::new);
    }
}

impl Defaults for Pod {
    fn apply_defaults(&mut self) {
        pod_spec(&mut self.spec);
        // Kubernetes defaults this on Pods only, not in templates.
        self.spec.enable_service_links.get_or_insert(true);
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
    fn the_deprecated_service_account_alias_and_service_account_name_fill_each_other() {
        for (name, alias, want) in [
            ("", "builder", "builder"),
            ("web", "", "web"),
            ("web", "web", "web"),
            ("", "", ""),
        ] {
            let mut spec = PodSpec {
                service_account_name: name.into(),
                service_account: alias.into(),
                ..PodSpec::default()
            };
            pod_spec(&mut spec);
            assert_eq!(
                (
                    spec.service_account_name.as_str(),
                    spec.service_account.as_str()
                ),
                (want, want),
                "{name:?} {alias:?}"
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

    fn defaulted_pod(v: serde_json::Value) -> Pod {
        let mut p: Pod = serde_json::from_value(v).expect("decodes");
        p.apply_defaults();
        p
    }

    #[test]
    fn image_pull_policy_defaults_by_tag_exactly_as_kubernetes_does() {
        for (image, policy) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("registry.local:5000/nginx", "Always"),
            ("registry.local:5000/team/nginx:1.27", "IfNotPresent"),
            ("registry.local:5000/nginx:latest", "Always"),
            ("nginx@sha256:0123abcd", "IfNotPresent"),
            ("nginx:1.27@sha256:0123abcd", "IfNotPresent"),
            ("nginx:latest@sha256:0123abcd", "Always"),
        ] {
            assert_eq!(default_pull_policy(image), policy, "{image}");
        }
        let p = defaulted_pod(serde_json::json!({"spec": {
            "initContainers": [{"name": "i", "image": "busybox"}],
            "containers": [{"name": "c", "image": "nginx:1.27", "imagePullPolicy": "Never"}]
        }}));
        assert_eq!(p.spec.init_containers[0].image_pull_policy, "Always");
        assert_eq!(
            p.spec.containers[0].image_pull_policy, "Never",
            "kept as given"
        );
    }

    #[test]
    fn init_and_app_containers_get_termination_message_and_probe_defaults() {
        let p = defaulted_pod(serde_json::json!({"spec": {
            "initContainers": [{"name": "i", "image": "busybox:1"}],
            "containers": [{
                "name": "c", "image": "app:1",
                "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "startupProbe": {"grpc": {"port": 9090}},
                "lifecycle": {"postStart": {"httpGet": {"port": 80}}}
            }]
        }}));
        for c in p.all_containers() {
            assert_eq!(c.termination_message_path, "/dev/termination-log");
            assert_eq!(c.termination_message_policy, "File");
        }
        let c = &p.spec.containers[0];
        let startup = c.startup_probe.as_ref().expect("a startup probe");
        assert_eq!(
            (
                startup.timeout_seconds,
                startup.period_seconds,
                startup.success_threshold,
                startup.failure_threshold
            ),
            (1, 10, 1, 3)
        );
        assert_eq!(
            startup.grpc.as_ref().and_then(|g| g.service.as_deref()),
            Some("")
        );
        let hook = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
            .and_then(|h| h.http_get.as_ref())
            .expect("a hook");
        assert_eq!((hook.path.as_str(), hook.scheme.as_str()), ("/", "HTTP"));
        let field_ref = c.env[0]
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .expect("a fieldRef");
        assert_eq!(field_ref.api_version, "v1");
    }

    #[test]
    fn volumes_get_kubernetes_defaults_and_a_bare_volume_becomes_an_empty_dir() {
        let p = defaulted_pod(serde_json::json!({"spec": {"containers": [], "volumes": [
            {"name": "bare"},
            {"name": "cm", "configMap": {"name": "x"}},
            {"name": "s", "secret": {"secretName": "x", "defaultMode": 0o400}},
            {"name": "d", "downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"name": "p", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}},
            {"name": "h", "hostPath": {"path": "/x"}},
            {"name": "pvc", "persistentVolumeClaim": {"claimName": "c"}}
        ]}}));
        let v = &p.spec.volumes;
        assert_eq!(
            v[0].empty_dir,
            Some(crate::kinds::EmptyDirVolumeSource::default())
        );
        assert_eq!(
            v[1].config_map.as_ref().and_then(|c| c.default_mode),
            Some(0o644)
        );
        assert_eq!(
            v[2].secret.as_ref().and_then(|s| s.default_mode),
            Some(0o400),
            "kept as given"
        );
        let d = v[3].downward_api.as_ref().expect("downwardAPI");
        assert_eq!(d.default_mode, Some(420));
        assert_eq!(
            d.items[0]
                .field_ref
                .as_ref()
                .map(|f| f.api_version.as_str()),
            Some("v1")
        );
        let proj = v[4].projected.as_ref().expect("projected");
        assert_eq!(proj.default_mode, Some(0o644));
        assert_eq!(
            proj.sources[0]
                .service_account_token
                .as_ref()
                .and_then(|t| t.expiration_seconds),
            Some(3600)
        );
        assert_eq!(
            v[5].host_path.as_ref().and_then(|h| h.type_.as_deref()),
            Some("")
        );
        assert!(
            v[6].empty_dir.is_none(),
            "an unsupported source is left for validation to refuse"
        );
    }

    #[test]
    fn enable_service_links_defaults_to_true_on_pods_but_not_in_templates() {
        let p = defaulted_pod(serde_json::json!({"spec": {"containers": []}}));
        assert_eq!(p.spec.enable_service_links, Some(true));
        let p = defaulted_pod(
            serde_json::json!({"spec": {"containers": [], "enableServiceLinks": false}}),
        );
        assert_eq!(p.spec.enable_service_links, Some(false));
        let mut rs = ReplicaSet::default();
        rs.apply_defaults();
        assert_eq!(rs.spec.template.spec.enable_service_links, None);
    }

    #[test]
    fn pod_defaults_applied_twice_change_nothing() {
        let mut once = defaulted_pod(serde_json::json!({"spec": {
            "initContainers": [{"name": "i", "image": "busybox"}],
            "containers": [{"name": "c", "image": "nginx", "readinessProbe": {"httpGet": {"port": 80}}}],
            "volumes": [{"name": "v"}, {"name": "s", "secret": {"secretName": "x"}}]
        }}));
        let twice = {
            let mut p = once.clone();
            p.apply_defaults();
            p
        };
        once.apply_defaults();
        assert_eq!(once, twice);
    }
}
