use std::collections::BTreeSet;

use super::{
    Errors, NON_NEGATIVE, NameRule, PROTOCOLS, SCTP_UNSUPPORTED, Validate, dns1123_label,
    dns1123_subdomain, env_var_name, iana_svc_name, metadata,
};
use crate::{
    kinds::{
        Container, ExecAction, HttpGetAction, IntOrString, LifecycleHandler, Pod, PodSpec, Probe,
        ResourceRequirements, Toleration,
    },
    object::FieldError,
    selector::{validate_label_key, validate_label_value},
};

/// Why a container port's `hostPort` is refused: nothing would listen on the node's port.
const HOST_PORT_UNSUPPORTED: &str = "host ports are not supported yet: Skiff's datapath does not forward a node's port to the pod (expose the pod through a NodePort Service instead)";

// ---------------------------------------------------------------------------------------------
// Pods and pod templates

/// Port names already taken in one pod.
#[derive(Default)]
struct PodPorts<'a> {
    names: BTreeSet<&'a str>,
}

pub(super) fn pod_spec(spec: &PodSpec, path: &str, e: &mut Errors) {
    if spec.containers.is_empty() {
        e.required(
            format!("{path}.containers"),
            "a pod needs at least one container",
        );
    }
    let mut names = BTreeSet::new();
    let mut ports = PodPorts::default();
    for (i, c) in spec.containers.iter().enumerate() {
        let cpath = format!("{path}.containers[{i}]");
        container(c, &cpath, &mut ports, e);
        if !c.name.is_empty() && !names.insert(c.name.as_str()) {
            e.duplicate(format!("{cpath}.name"), &c.name);
        }
    }
    e.one_of(
        format!("{path}.restartPolicy"),
        &spec.restart_policy,
        &["Always", "OnFailure", "Never"],
        &[],
    );
    if !spec.node_name.is_empty()
        && let Err(d) = dns1123_subdomain(&spec.node_name)
    {
        e.invalid(format!("{path}.nodeName"), &spec.node_name, d);
    }
    e.labels(&format!("{path}.nodeSelector"), &spec.node_selector);
    for (i, t) in spec.tolerations.iter().enumerate() {
        toleration(t, &format!("{path}.tolerations[{i}]"), e);
    }
    if let Some(s) = spec.termination_grace_period_seconds {
        e.non_negative(format!("{path}.terminationGracePeriodSeconds"), s);
    }
}

fn container<'a>(c: &'a Container, path: &str, pod_ports: &mut PodPorts<'a>, e: &mut Errors) {
    if c.name.is_empty() {
        e.required(format!("{path}.name"), "");
    } else if let Err(d) = dns1123_label(&c.name) {
        e.invalid(format!("{path}.name"), &c.name, d);
    }
    if c.image.is_empty() {
        e.required(format!("{path}.image"), "");
    } else if c.image.chars().any(char::is_whitespace) {
        e.invalid(
            format!("{path}.image"),
            &c.image,
            "must not contain whitespace",
        );
    }
    // All three are honoured: until images come from registries, a node's image directory is
    // the only source, and every container start resolves the image against it (Always: the
    // source is checked at each start; there is just nothing newer to find).
    e.one_of(
        format!("{path}.imagePullPolicy"),
        &c.image_pull_policy,
        &["Always", "IfNotPresent", "Never"],
        &[],
    );
    let mut own = BTreeSet::new();
    for (j, p) in c.ports.iter().enumerate() {
        let ppath = format!("{path}.ports[{j}]");
        if p.container_port == 0 {
            e.required(format!("{ppath}.containerPort"), "");
        } else {
            e.port_number(format!("{ppath}.containerPort"), p.container_port);
        }
        if p.host_port != 0 {
            e.forbidden(format!("{ppath}.hostPort"), HOST_PORT_UNSUPPORTED);
        }
        e.one_of(
            format!("{ppath}.protocol"),
            &p.protocol,
            PROTOCOLS,
            SCTP_UNSUPPORTED,
        );
        if !p.name.is_empty() {
            if let Err(d) = iana_svc_name(&p.name) {
                e.invalid(format!("{ppath}.name"), &p.name, d);
            } else if !pod_ports.names.insert(&p.name) {
                e.duplicate(format!("{ppath}.name"), &p.name);
            }
        }
        if !own.insert((p.container_port, p.protocol.as_str())) {
            e.duplicate(
                ppath.clone(),
                format!("{}/{}", p.container_port, p.protocol),
            );
        }
    }
    for (k, v) in c.env.iter().enumerate() {
        let npath = format!("{path}.env[{k}].name");
        if v.name.is_empty() {
            e.required(npath, "");
        } else if let Err(d) = env_var_name(&v.name) {
            e.invalid(npath, &v.name, d);
        }
    }
    resources(&c.resources, &format!("{path}.resources"), e);
    if let Some(p) = &c.readiness_probe {
        probe(p, &format!("{path}.readinessProbe"), false, e);
    }
    if let Some(p) = &c.liveness_probe {
        probe(p, &format!("{path}.livenessProbe"), true, e);
    }
    if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
        lifecycle_handler(h, c, &format!("{path}.lifecycle.preStop"), e);
    }
}

const RESOURCE_NAMES: &[&str] = &["cpu", "memory"];

fn resources(r: &ResourceRequirements, path: &str, e: &mut Errors) {
    let notes: &[(&str, &str)] = &[
        ("ephemeral-storage", "Skiff accounts only cpu and memory"),
        ("hugepages-2Mi", "Skiff accounts only cpu and memory"),
    ];
    for (field, map) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (k, q) in map {
            let qpath = format!("{path}.{field}[{k}]");
            if !RESOURCE_NAMES.contains(&k.as_str()) {
                e.unsupported(qpath.clone(), k, RESOURCE_NAMES, notes);
            }
            if q.is_negative() {
                e.invalid(qpath, q.as_str(), NON_NEGATIVE);
            }
        }
    }
    for (k, request) in &r.requests {
        if let Some(limit) = r.limits.get(k)
            && request.milli_value() > limit.milli_value()
        {
            e.invalid(
                format!("{path}.requests[{k}]"),
                request.as_str(),
                format!("must be less than or equal to {k} limit of {limit}"),
            );
        }
    }
}

/// Exactly one of a probe's or hook's `handlers` (name, whether set) at `path`, and an `exec`
/// one with a command.
fn one_handler(path: &str, handlers: &[(&str, bool)], exec: Option<&ExecAction>, e: &mut Errors) {
    let set: Vec<&str> = handlers
        .iter()
        .filter_map(|(name, set)| set.then_some(*name))
        .collect();
    if set.is_empty() {
        let names: Vec<&str> = handlers.iter().map(|(name, _)| *name).collect();
        let (last, rest) = names.split_last().unwrap_or((&"", &[]));
        e.required(
            path,
            &format!(
                "must specify a handler type (one of {} or {last})",
                rest.join(", ")
            ),
        );
    }
    for extra in set.iter().skip(1) {
        e.forbidden(
            format!("{path}.{extra}"),
            "may not specify more than 1 handler type",
        );
    }
    if let Some(x) = exec
        && x.command.is_empty()
    {
        e.required(format!("{path}.exec.command"), "");
    }
}

fn probe(p: &Probe, path: &str, liveness: bool, e: &mut Errors) {
    one_handler(
        path,
        &[
            ("exec", p.exec.is_some()),
            ("tcpSocket", p.tcp_socket.is_some()),
            ("httpGet", p.http_get.is_some()),
        ],
        p.exec.as_ref(),
        e,
    );
    if let Some(t) = &p.tcp_socket {
        e.port_number_or_name(format!("{path}.tcpSocket.port"), &t.port);
    }
    if let Some(h) = &p.http_get {
        http_get(h, &format!("{path}.httpGet"), e);
    }
    e.non_negative(
        format!("{path}.initialDelaySeconds"),
        i64::from(p.initial_delay_seconds),
    );
    // Zero means "not set" before defaults; set values must be at least 1.
    for (field, value) in [
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        if value < 0 {
            e.invalid(
                format!("{path}.{field}"),
                value,
                "must be greater than or equal to 1",
            );
        }
    }
    if liveness && p.success_threshold > 1 {
        e.invalid(
            format!("{path}.successThreshold"),
            p.success_threshold,
            "must be 1 for a liveness probe",
        );
    }
}

/// A lifecycle hook of container `c`: exactly one handler, and a named port must be one of
/// the container's (the hook runs once, so a typo would only show when the pod is deleted).
fn lifecycle_handler(h: &LifecycleHandler, c: &Container, path: &str, e: &mut Errors) {
    one_handler(
        path,
        &[
            ("exec", h.exec.is_some()),
            ("httpGet", h.http_get.is_some()),
            ("sleep", h.sleep.is_some()),
        ],
        h.exec.as_ref(),
        e,
    );
    if let Some(g) = &h.http_get {
        let hpath = format!("{path}.httpGet");
        http_get(g, &hpath, e);
        if let IntOrString::String(name) = &g.port
            && iana_svc_name(name).is_ok()
            && !c.ports.iter().any(|p| &p.name == name)
        {
            e.invalid(
                format!("{hpath}.port"),
                name,
                "must be the name of one of the container's ports",
            );
        }
    }
    if let Some(s) = &h.sleep {
        e.non_negative(format!("{path}.sleep.seconds"), s.seconds);
    }
}

/// An HTTP GET of a probe or a lifecycle hook.
fn http_get(h: &HttpGetAction, hpath: &str, e: &mut Errors) {
    e.port_number_or_name(format!("{hpath}.port"), &h.port);
    if !h.path.is_empty() && !h.path.starts_with('/') {
        e.invalid(format!("{hpath}.path"), &h.path, "must start with '/'");
    }
    if !h.scheme.is_empty() && h.scheme != "HTTP" {
        e.unsupported(
            format!("{hpath}.scheme"),
            &h.scheme,
            &["HTTP"],
            &[("HTTPS", "Skiff's probes and hooks do not speak TLS")],
        );
    }
    for (i, header) in h.http_headers.iter().enumerate() {
        let name_path = format!("{hpath}.httpHeaders[{i}].name");
        if header.name.is_empty() {
            e.required(name_path, "");
        } else if !header
            .name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            e.invalid(
                name_path,
                &header.name,
                "a valid HTTP header must consist of alphanumeric characters or '-' (e.g. 'X-Header-Name')",
            );
        }
        // A line break would let the value smuggle further headers into the request.
        if header.value.chars().any(|c| c.is_control() && c != '\t') {
            e.invalid(
                format!("{hpath}.httpHeaders[{i}].value"),
                &header.value,
                "must not contain control characters",
            );
        }
    }
}

fn toleration(t: &Toleration, path: &str, e: &mut Errors) {
    if !t.key.is_empty()
        && let Err(d) = validate_label_key(&t.key)
    {
        e.invalid(format!("{path}.key"), &t.key, d);
    }
    match t.operator.as_str() {
        "" | "Equal" => {
            if t.key.is_empty() {
                e.invalid(
                    format!("{path}.operator"),
                    &t.operator,
                    "operator must be Exists when key is empty, which means \"match all values and all keys\"",
                );
            }
            if let Err(d) = validate_label_value(&t.value) {
                e.invalid(format!("{path}.value"), &t.value, d);
            }
        }
        "Exists" => {
            if !t.value.is_empty() {
                e.invalid(
                    format!("{path}.value"),
                    &t.value,
                    "value must be empty when operator is \"Exists\"",
                );
            }
        }
        other => e.unsupported(format!("{path}.operator"), other, &["Equal", "Exists"], &[]),
    }
    if !t.effect.is_empty() {
        taint_effect(&t.effect, format!("{path}.effect"), e);
    }
    if t.toleration_seconds.is_some() && t.effect != "NoExecute" {
        e.invalid(
            format!("{path}.effect"),
            &t.effect,
            "effect must be 'NoExecute' when tolerationSeconds is set",
        );
    }
}

fn taint_effect(effect: &str, path: impl Into<String>, e: &mut Errors) {
    e.one_of(
        path,
        effect,
        &["NoSchedule", "PreferNoSchedule", "NoExecute"],
        &[],
    );
}

const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`, `spec.nodeName` (once, from empty) and `spec.tolerations` (only additions to existing tolerations)";

impl Validate for Pod {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Subdomain, &mut e);
        pod_spec(&self.spec, "spec", &mut e);
        e.0
    }

    fn update_rules(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        let (new, old) = (&self.spec, &old.spec);
        if !old.node_name.is_empty() && new.node_name != old.node_name {
            e.invalid("spec.nodeName", &new.node_name, "may not change once set");
        }
        for (i, t) in old.tolerations.iter().enumerate() {
            let kept = new.tolerations.iter().any(|n| {
                n.key == t.key
                    && n.operator == t.operator
                    && n.value == t.value
                    && n.effect == t.effect
            });
            if !kept {
                e.forbidden(
                    format!("spec.tolerations[{i}]"),
                    "existing tolerations may not be removed or modified, except their tolerationSeconds",
                );
            }
        }
        // Everything else must be as it was: compare with the mutable parts taken from `old`.
        let mut rest = new.clone();
        rest.node_name.clone_from(&old.node_name);
        rest.tolerations.clone_from(&old.tolerations);
        if rest.containers.len() == old.containers.len() {
            for (c, o) in rest.containers.iter_mut().zip(&old.containers) {
                c.image.clone_from(&o.image);
            }
        }
        if rest != *old {
            e.forbidden("spec", POD_UPDATE_FORBIDDEN);
        }
        e.0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{kinds::ReplicaSet, validate::test_util::*};

    // --- Pod spec --------------------------------------------------------------------------

    #[test]
    fn pod_without_containers_is_refused() {
        let errors = pod_errors(set(pod(), "/spec/containers", json!([])));
        assert_only(&errors, "spec.containers: Required value");
    }

    #[test]
    fn container_names_must_be_labels_and_unique() {
        let c = pod()["spec"]["containers"][0].clone();
        let other = set(set(c.clone(), "/ports", json!([])), "/name", json!("web"));
        let v = set(pod(), "/spec/containers", json!([c, other]));
        assert_only(
            &pod_errors(v),
            "spec.containers[1].name: Duplicate value: \"web\"",
        );
        let errors = pod_errors(set(pod(), &format!("{C0}/name"), json!("Web_1")));
        assert_only(&errors, "spec.containers[0].name: Invalid value: \"Web_1\"");
        let errors = pod_errors(remove(pod(), &format!("{C0}/name")));
        assert_only(&errors, "spec.containers[0].name: Required value");
    }

    #[test]
    fn image_is_required_and_may_not_contain_whitespace() {
        let errors = pod_errors(remove(pod(), &format!("{C0}/image")));
        assert_only(&errors, "spec.containers[0].image: Required value");
        let errors = pod_errors(set(pod(), &format!("{C0}/image"), json!("nginx :1")));
        assert_only(
            &errors,
            "spec.containers[0].image: Invalid value: \"nginx :1\": must not contain whitespace",
        );
        let errors = pod_errors(set(pod(), &format!("{C0}/image"), json!("nginx\n")));
        assert_only(&errors, "must not contain whitespace");
    }

    #[test]
    fn container_port_out_of_range_is_refused_with_kubernetes_wording() {
        let errors = pod_errors(set(
            pod(),
            &format!("{C0}/ports/0/containerPort"),
            json!(70000),
        ));
        assert_only(
            &errors,
            "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        );
        let errors = pod_errors(set(
            pod(),
            &format!("{C0}/ports/0/containerPort"),
            json!(-1),
        ));
        assert_only(
            &errors,
            "containerPort: Invalid value: -1: must be between 1 and 65535",
        );
        let errors = pod_errors(set(pod(), &format!("{C0}/ports/0/containerPort"), json!(0)));
        assert_only(
            &errors,
            "spec.containers[0].ports[0].containerPort: Required value",
        );
    }

    #[test]
    fn host_port_zero_means_none_and_any_other_is_refused_until_the_datapath_serves_it() {
        let errors = pod_errors(set(pod(), &format!("{C0}/ports/0/hostPort"), json!(0)));
        assert_eq!(errors, Vec::<String>::new());
        for port in [8080, 65536, -1] {
            let errors = pod_errors(set(pod(), &format!("{C0}/ports/0/hostPort"), json!(port)));
            assert_only(
                &errors,
                "spec.containers[0].ports[0].hostPort: Forbidden: host ports are not supported yet: Skiff's datapath does not forward a node's port to the pod (expose the pod through a NodePort Service instead)",
            );
        }
    }

    #[test]
    fn every_container_port_with_a_host_port_is_refused_in_templates_too() {
        let c = set(
            pod()["spec"]["containers"][0].clone(),
            "/ports/0/hostPort",
            json!(8080),
        );
        let sidecar = set(
            set(c.clone(), "/name", json!("sidecar")),
            "/ports",
            json!([{"containerPort": 9000, "hostPort": 8080, "protocol": "UDP"}]),
        );
        let v = set(
            replica_set(),
            "/spec/template/spec/containers",
            json!([c, sidecar]),
        );
        let errors = check::<ReplicaSet>(v);
        assert_has(
            &errors,
            "spec.template.spec.containers[0].ports[0].hostPort: Forbidden: host ports are not supported yet",
        );
        assert_has(
            &errors,
            "spec.template.spec.containers[1].ports[0].hostPort: Forbidden: host ports are not supported yet",
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn image_pull_policies_are_kubernetes_three_and_nothing_else() {
        for ok in ["Always", "IfNotPresent", "Never"] {
            let errors = pod_errors(set(pod(), &format!("{C0}/imagePullPolicy"), json!(ok)));
            assert_eq!(errors, Vec::<String>::new(), "{ok}");
        }
        let errors = pod_errors(set(
            pod(),
            &format!("{C0}/imagePullPolicy"),
            json!("Sometimes"),
        ));
        assert_only(
            &errors,
            "spec.containers[0].imagePullPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\"",
        );
    }

    #[test]
    fn sctp_protocol_is_unsupported_and_says_why() {
        let errors = pod_errors(set(pod(), &format!("{C0}/ports/0/protocol"), json!("SCTP")));
        assert_only(
            &errors,
            "spec.containers[0].ports[0].protocol: Unsupported value: \"SCTP\": supported values: \"TCP\", \"UDP\"; Skiff's datapath handles only TCP and UDP",
        );
    }

    #[test]
    fn lower_case_protocol_is_unsupported() {
        let errors = pod_errors(set(pod(), &format!("{C0}/ports/0/protocol"), json!("tcp")));
        assert_only(
            &errors,
            "spec.containers[0].ports[0].protocol: Unsupported value: \"tcp\": supported values: \"TCP\", \"UDP\"",
        );
    }

    #[test]
    fn port_names_follow_iana_service_name_rules() {
        for (name, why) in [
            ("http-metrics-port", "must be no more than 15 characters"),
            ("HTTP", "must contain only alpha-numeric characters"),
            ("8080", "must contain at least one letter"),
            ("-http", "must not begin or end with a hyphen"),
            ("http-", "must not begin or end with a hyphen"),
            ("ht--tp", "must not contain consecutive hyphens"),
        ] {
            let errors = pod_errors(set(pod(), &format!("{C0}/ports/0/name"), json!(name)));
            // The readiness probe names the port too; only the port's own name is checked here.
            let errors: Vec<String> = errors
                .into_iter()
                .filter(|e| !e.contains("Probe"))
                .collect();
            assert_only(
                &errors,
                &format!("spec.containers[0].ports[0].name: Invalid value: {name:?}: "),
            );
            assert_has(&errors, why);
        }
        for name in ["http", "h2c", "web-8080", "a"] {
            assert_eq!(iana_svc_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn port_names_are_unique_across_the_pods_containers() {
        let c = pod()["spec"]["containers"][0].clone();
        let sidecar = set(
            set(c.clone(), "/name", json!("sidecar")),
            "/ports",
            json!([{"name": "http", "containerPort": 8080}]),
        );
        let v = set(pod(), "/spec/containers", json!([c, sidecar]));
        assert_only(
            &pod_errors(v),
            "spec.containers[1].ports[0].name: Duplicate value: \"http\"",
        );
        let v = set(
            pod(),
            &format!("{C0}/ports"),
            json!([{"name": "http", "containerPort": 80}, {"name": "http", "containerPort": 81}]),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].ports[1].name: Duplicate value: \"http\"",
        );
    }

    #[test]
    fn same_container_port_and_protocol_twice_is_a_duplicate_but_tcp_and_udp_may_share() {
        let v = set(
            pod(),
            &format!("{C0}/ports"),
            json!([{"name": "http", "containerPort": 80}, {"containerPort": 80, "protocol": "TCP"}]),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].ports[1]: Duplicate value: \"80/TCP\"",
        );
        let v = set(
            pod(),
            &format!("{C0}/ports"),
            json!([{"name": "http", "containerPort": 53}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]),
        );
        assert_eq!(pod_errors(v), Vec::<String>::new());
    }

    #[test]
    fn env_names_allow_dots_dashes_and_underscores_but_not_leading_digits() {
        for ok in ["MY_VAR", "my.env-name", "_x", ".hidden", "-x1"] {
            let v = set(pod(), &format!("{C0}/env/0/name"), json!(ok));
            assert_eq!(pod_errors(v), Vec::<String>::new(), "{ok}");
        }
        for bad in ["1VAR", "MY VAR", "VÄR", "a=b"] {
            let v = set(pod(), &format!("{C0}/env/0/name"), json!(bad));
            assert_only(
                &pod_errors(v),
                &format!(
                    "spec.containers[0].env[0].name: Invalid value: {bad:?}: a valid environment variable name"
                ),
            );
        }
        let v = set(pod(), &format!("{C0}/env/0/name"), json!(""));
        assert_only(
            &pod_errors(v),
            "spec.containers[0].env[0].name: Required value",
        );
    }

    #[test]
    fn resources_other_than_cpu_and_memory_are_unsupported() {
        let v = set(
            pod(),
            &format!("{C0}/resources/limits/nvidia.com~1gpu"),
            json!("1"),
        );
        // JSON pointers escape '/' as "~1"; `set` does not unescape, so build the key by hand.
        let v = remove(v, &format!("{C0}/resources/limits/nvidia.com~1gpu"));
        let v = set(
            v,
            &format!("{C0}/resources/limits/ephemeral-storage"),
            json!("1Gi"),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].resources.limits[ephemeral-storage]: Unsupported value: \"ephemeral-storage\": supported values: \"cpu\", \"memory\"; Skiff accounts only cpu and memory",
        );
    }

    #[test]
    fn negative_quantities_are_refused() {
        let v = set(
            pod(),
            &format!("{C0}/resources/requests/memory"),
            json!("-64Mi"),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].resources.requests[memory]: Invalid value: \"-64Mi\": must be greater than or equal to 0",
        );
    }

    #[test]
    fn request_above_limit_is_refused_with_the_limit_in_the_message() {
        let v = set(pod(), &format!("{C0}/resources/requests/cpu"), json!("1"));
        assert_only(
            &pod_errors(v),
            "spec.containers[0].resources.requests[cpu]: Invalid value: \"1\": must be less than or equal to cpu limit of 500m",
        );
        let v = set(
            pod(),
            &format!("{C0}/resources/requests/memory"),
            json!("129Mi"),
        );
        assert_only(
            &pod_errors(v),
            "must be less than or equal to memory limit of 128Mi",
        );
    }

    #[test]
    fn request_equal_to_limit_in_other_units_is_accepted() {
        let v = set(
            pod(),
            &format!("{C0}/resources/requests"),
            json!({"cpu": "0.5", "memory": "0.125Gi"}),
        );
        assert_eq!(pod_errors(v), Vec::<String>::new());
        let v = set(
            pod(),
            &format!("{C0}/resources"),
            json!({"requests": {"cpu": 2}}),
        );
        assert_eq!(pod_errors(v), Vec::<String>::new());
    }

    #[test]
    fn probe_without_a_handler_must_specify_one() {
        let v = set(
            pod(),
            &format!("{C0}/livenessProbe"),
            json!({"periodSeconds": 5}),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].livenessProbe: Required value: must specify a handler type",
        );
    }

    #[test]
    fn probe_with_two_handlers_is_forbidden() {
        let v = set(
            pod(),
            &format!("{C0}/livenessProbe"),
            json!({"tcpSocket": {"port": 80}, "httpGet": {"port": 80}}),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].livenessProbe.httpGet: Forbidden: may not specify more than 1 handler type",
        );
    }

    #[test]
    fn exec_probe_needs_a_command() {
        let v = set(
            pod(),
            &format!("{C0}/livenessProbe"),
            json!({"exec": {"command": []}}),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].livenessProbe.exec.command: Required value",
        );
        let v = set(
            pod(),
            &format!("{C0}/livenessProbe"),
            json!({"exec": {"command": ["true"]}}),
        );
        assert_eq!(pod_errors(v), Vec::<String>::new());
    }

    #[test]
    fn probe_ports_take_numbers_in_range_or_port_names() {
        let v = set(
            pod(),
            &format!("{C0}/livenessProbe/tcpSocket/port"),
            json!(0),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].livenessProbe.tcpSocket.port: Invalid value: 0: must be between 1 and 65535, inclusive",
        );
        let v = set(
            pod(),
            &format!("{C0}/readinessProbe/httpGet/port"),
            json!("Not_A_Name"),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].readinessProbe.httpGet.port: Invalid value: \"Not_A_Name\"",
        );
        let v = set(
            pod(),
            &format!("{C0}/livenessProbe/tcpSocket/port"),
            json!("http"),
        );
        assert_eq!(pod_errors(v), Vec::<String>::new());
    }

    #[test]
    fn https_probes_are_unsupported_and_say_so() {
        let v = set(
            pod(),
            &format!("{C0}/readinessProbe/httpGet/scheme"),
            json!("HTTPS"),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].readinessProbe.httpGet.scheme: Unsupported value: \"HTTPS\": supported values: \"HTTP\"; Skiff's probes and hooks do not speak TLS",
        );
    }

    #[test]
    fn http_probe_path_must_start_with_a_slash() {
        let v = set(
            pod(),
            &format!("{C0}/readinessProbe/httpGet/path"),
            json!("healthz"),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].readinessProbe.httpGet.path: Invalid value: \"healthz\": must start with '/'",
        );
    }

    #[test]
    fn http_probe_headers_need_token_names_and_single_line_values() {
        let v = set(
            pod(),
            &format!("{C0}/readinessProbe/httpGet/httpHeaders"),
            json!([{"name": "X Bad", "value": "a"}, {"name": "X-Ok", "value": "a\r\nHost: evil"}]),
        );
        let errors = pod_errors(v);
        assert_has(
            &errors,
            "readinessProbe.httpGet.httpHeaders[0].name: Invalid value: \"X Bad\"",
        );
        assert_has(
            &errors,
            "readinessProbe.httpGet.httpHeaders[1].value: Invalid value: \"a\\r\\nHost: evil\": must not contain control characters",
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn negative_probe_timings_are_refused() {
        let v = set(
            pod(),
            &format!("{C0}/readinessProbe"),
            json!({"httpGet": {"port": 80}, "initialDelaySeconds": -1, "periodSeconds": -5, "timeoutSeconds": -1, "failureThreshold": -3, "successThreshold": -1}),
        );
        let errors = pod_errors(v);
        let p = "spec.containers[0].readinessProbe";
        assert_has(
            &errors,
            &format!(
                "{p}.initialDelaySeconds: Invalid value: -1: must be greater than or equal to 0"
            ),
        );
        assert_has(
            &errors,
            &format!("{p}.periodSeconds: Invalid value: -5: must be greater than or equal to 1"),
        );
        assert_has(
            &errors,
            &format!("{p}.timeoutSeconds: Invalid value: -1: must be greater than or equal to 1"),
        );
        assert_has(&errors, &format!("{p}.failureThreshold: Invalid value: -3"));
        assert_has(&errors, &format!("{p}.successThreshold: Invalid value: -1"));
        assert_eq!(errors.len(), 5, "{errors:#?}");
    }

    #[test]
    fn liveness_success_threshold_must_be_one_but_readiness_may_be_higher() {
        let v = set(
            pod(),
            &format!("{C0}/livenessProbe/successThreshold"),
            json!(3),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].livenessProbe.successThreshold: Invalid value: 3: must be 1",
        );
        let v = set(
            pod(),
            &format!("{C0}/readinessProbe/successThreshold"),
            json!(3),
        );
        assert_eq!(pod_errors(v), Vec::<String>::new());
    }

    fn pre_stop(handler: Value) -> Value {
        set(pod(), &format!("{C0}/lifecycle/preStop"), handler)
    }

    #[test]
    fn pre_stop_hooks_of_each_handler_type_are_valid() {
        for handler in [
            json!({"sleep": {"seconds": 5}}),
            json!({"sleep": {"seconds": 0}}),
            json!({"exec": {"command": ["sh", "-c", "kill -USR1 1"]}}),
            json!({"httpGet": {"path": "/drain", "port": "http"}}),
            json!({"httpGet": {"port": 8081}}),
        ] {
            assert_eq!(
                pod_errors(pre_stop(handler.clone())),
                Vec::<String>::new(),
                "{handler}"
            );
        }
    }

    #[test]
    fn pre_stop_hook_shapes_decode_and_unknown_handlers_are_refused() {
        let p: Pod = decode(pre_stop(json!({"sleep": {"seconds": 2}})));
        let hook = p.spec.containers[0]
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .expect("a preStop hook");
        assert_eq!(hook.sleep.as_ref().map(|s| s.seconds), Some(2));
        // Kubernetes' deprecated tcpSocket handler and postStart are not part of the type.
        for v in [
            pre_stop(json!({"tcpSocket": {"port": 80}})),
            set(
                pod(),
                &format!("{C0}/lifecycle/postStart"),
                json!({"sleep": {"seconds": 1}}),
            ),
        ] {
            let err = serde_json::from_value::<Pod>(v).expect_err("an unknown field");
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn pre_stop_hook_without_a_handler_must_specify_one() {
        assert_only(
            &pod_errors(pre_stop(json!({}))),
            "spec.containers[0].lifecycle.preStop: Required value: must specify a handler type (one of exec, httpGet or sleep)",
        );
    }

    #[test]
    fn pre_stop_hook_with_two_handlers_is_forbidden() {
        assert_only(
            &pod_errors(pre_stop(json!({
                "exec": {"command": ["true"]},
                "sleep": {"seconds": 1}
            }))),
            "spec.containers[0].lifecycle.preStop.sleep: Forbidden: may not specify more than 1 handler type",
        );
    }

    #[test]
    fn pre_stop_sleep_must_not_be_negative() {
        assert_only(
            &pod_errors(pre_stop(json!({"sleep": {"seconds": -1}}))),
            "spec.containers[0].lifecycle.preStop.sleep.seconds: Invalid value: -1: must be greater than or equal to 0",
        );
    }

    #[test]
    fn pre_stop_exec_needs_a_command() {
        assert_only(
            &pod_errors(pre_stop(json!({"exec": {"command": []}}))),
            "spec.containers[0].lifecycle.preStop.exec.command: Required value",
        );
    }

    #[test]
    fn pre_stop_http_get_port_must_be_in_range_or_a_port_of_the_container() {
        assert_only(
            &pod_errors(pre_stop(json!({"httpGet": {"port": 70000}}))),
            "spec.containers[0].lifecycle.preStop.httpGet.port: Invalid value: 70000: must be between 1 and 65535, inclusive",
        );
        assert_only(
            &pod_errors(pre_stop(json!({"httpGet": {"port": "admin"}}))),
            "spec.containers[0].lifecycle.preStop.httpGet.port: Invalid value: \"admin\": must be the name of one of the container's ports",
        );
        // A port name of another container of the pod is not this container's.
        let mut v = pre_stop(json!({"httpGet": {"port": "admin"}}));
        v["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({
                "name": "side",
                "image": "busybox",
                "ports": [{"name": "admin", "containerPort": 9000}]
            }));
        assert_only(
            &pod_errors(v),
            "spec.containers[0].lifecycle.preStop.httpGet.port: Invalid value: \"admin\"",
        );
        // A malformed name is reported once, for its syntax.
        assert_only(
            &pod_errors(pre_stop(json!({"httpGet": {"port": "Not_A_Name"}}))),
            "spec.containers[0].lifecycle.preStop.httpGet.port: Invalid value: \"Not_A_Name\"",
        );
        assert_only(
            &pod_errors(pre_stop(json!({"httpGet": {"port": 80, "path": "drain"}}))),
            "spec.containers[0].lifecycle.preStop.httpGet.path: Invalid value: \"drain\": must start with '/'",
        );
    }

    #[test]
    fn restart_policy_must_be_always_on_failure_or_never() {
        let v = set(pod(), "/spec/restartPolicy", json!("Sometimes"));
        assert_only(
            &pod_errors(v),
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
        );
        for ok in ["OnFailure", "Never"] {
            assert_eq!(
                pod_errors(set(pod(), "/spec/restartPolicy", json!(ok))),
                Vec::<String>::new()
            );
        }
    }

    #[test]
    fn node_name_must_be_a_dns_subdomain() {
        let v = set(pod(), "/spec/nodeName", json!("Node_1"));
        assert_only(&pod_errors(v), "spec.nodeName: Invalid value: \"Node_1\"");
        let v = set(pod(), "/spec/nodeName", json!("node-1.example"));
        assert_eq!(pod_errors(v), Vec::<String>::new());
    }

    #[test]
    fn node_selector_keys_and_values_follow_label_syntax() {
        let v = set(
            pod(),
            "/spec/nodeSelector",
            json!({"disk type": "ssd", "zone": "eu west"}),
        );
        let errors = pod_errors(v);
        assert_has(&errors, "spec.nodeSelector: Invalid value: \"disk type\"");
        assert_has(
            &errors,
            "spec.nodeSelector[zone]: Invalid value: \"eu west\"",
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn toleration_operator_must_be_equal_or_exists() {
        let v = set(
            pod(),
            "/spec/tolerations",
            json!([{"key": "k", "operator": "In", "value": "v"}]),
        );
        assert_only(
            &pod_errors(v),
            "spec.tolerations[0].operator: Unsupported value: \"In\": supported values: \"Equal\", \"Exists\"",
        );
    }

    #[test]
    fn exists_toleration_must_have_no_value_and_empty_key_needs_exists() {
        let v = set(
            pod(),
            "/spec/tolerations",
            json!([{"key": "k", "operator": "Exists", "value": "v"}]),
        );
        assert_only(
            &pod_errors(v),
            "spec.tolerations[0].value: Invalid value: \"v\": value must be empty when operator is \"Exists\"",
        );
        let v = set(pod(), "/spec/tolerations", json!([{"value": "v"}]));
        assert_only(
            &pod_errors(v),
            "spec.tolerations[0].operator: Invalid value: \"Equal\": operator must be Exists when key is empty",
        );
        let v = set(pod(), "/spec/tolerations", json!([{"operator": "Exists"}]));
        assert_eq!(pod_errors(v), Vec::<String>::new());
    }

    #[test]
    fn toleration_key_value_and_effect_are_checked() {
        let v = set(
            pod(),
            "/spec/tolerations",
            json!([{"key": "bad key", "value": "-v", "effect": "NoRun"}]),
        );
        let errors = pod_errors(v);
        assert_has(
            &errors,
            "spec.tolerations[0].key: Invalid value: \"bad key\"",
        );
        assert_has(&errors, "spec.tolerations[0].value: Invalid value: \"-v\"");
        assert_has(
            &errors,
            "spec.tolerations[0].effect: Unsupported value: \"NoRun\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"",
        );
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }

    #[test]
    fn toleration_seconds_only_with_no_execute() {
        let v = set(
            pod(),
            "/spec/tolerations",
            json!([{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}]),
        );
        assert_only(
            &pod_errors(v),
            "spec.tolerations[0].effect: Invalid value: \"NoSchedule\": effect must be 'NoExecute' when tolerationSeconds is set",
        );
        let v = set(
            pod(),
            "/spec/tolerations",
            json!([{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]),
        );
        assert_eq!(pod_errors(v), Vec::<String>::new());
    }

    #[test]
    fn negative_termination_grace_period_is_refused() {
        let v = set(pod(), "/spec/terminationGracePeriodSeconds", json!(-1));
        assert_only(
            &pod_errors(v),
            "spec.terminationGracePeriodSeconds: Invalid value: -1: must be greater than or equal to 0",
        );
    }

    #[test]
    fn pod_node_name_may_be_set_once_and_never_changed() {
        let bound = set(pod(), "/spec/nodeName", json!("a"));
        assert_eq!(
            update_errors::<Pod>(bound.clone(), pod()),
            Vec::<String>::new()
        );
        assert_eq!(
            update_errors::<Pod>(bound.clone(), bound.clone()),
            Vec::<String>::new()
        );
        let errors = update_errors::<Pod>(set(pod(), "/spec/nodeName", json!("b")), bound.clone());
        assert_only(
            &errors,
            "spec.nodeName: Invalid value: \"b\": may not change once set",
        );
        let errors = update_errors::<Pod>(pod(), bound);
        assert_only(
            &errors,
            "spec.nodeName: Invalid value: \"\": may not change once set",
        );
    }

    #[test]
    fn pod_images_may_change_but_other_spec_fields_may_not() {
        let new = set(pod(), &format!("{C0}/image"), json!("nginx:1.28"));
        assert_eq!(update_errors::<Pod>(new, pod()), Vec::<String>::new());
        let new = set(pod(), &format!("{C0}/ports/0/containerPort"), json!(81));
        assert_only(
            &update_errors::<Pod>(new, pod()),
            "spec: Forbidden: pod updates may not change fields other than",
        );
        let new = set(pod(), "/spec/restartPolicy", json!("Never"));
        assert_only(&update_errors::<Pod>(new, pod()), "spec: Forbidden");
        // Labels and status are not part of the spec.
        let new = set(pod(), "/metadata/labels/version", json!("2"));
        let new = set(new, "/status/phase", json!("Running"));
        assert_eq!(update_errors::<Pod>(new, pod()), Vec::<String>::new());
    }

    #[test]
    fn pod_tolerations_may_be_added_but_not_removed_or_changed() {
        let one = set(
            pod(),
            "/spec/tolerations",
            json!([{"key": "a", "operator": "Exists"}]),
        );
        let two = set(
            pod(),
            "/spec/tolerations",
            json!([{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]),
        );
        assert_eq!(
            update_errors::<Pod>(two.clone(), one.clone()),
            Vec::<String>::new()
        );
        let errors = update_errors::<Pod>(one.clone(), two);
        assert_only(
            &errors,
            "spec.tolerations[1]: Forbidden: existing tolerations may not be removed or modified",
        );
        let changed = set(one.clone(), "/spec/tolerations/0/key", json!("c"));
        assert_only(
            &update_errors::<Pod>(changed, one),
            "spec.tolerations[0]: Forbidden",
        );
    }
}
