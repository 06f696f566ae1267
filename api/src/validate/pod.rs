use std::collections::BTreeSet;

use super::{
    Errors, NON_NEGATIVE, NameRule, PROTOCOLS, SCTP_UNSUPPORTED, Validate, config_key,
    dns1123_label, dns1123_subdomain, env_var_name, iana_svc_name, metadata, security, volume,
};
use crate::{
    kinds::{
        Container, ENV_FIELD_PATHS, EnvVarSource, ExecAction, HttpGetAction, IntOrString,
        LifecycleHandler, Pod, PodSpec, Probe, ResourceRequirements, Toleration,
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
    let volumes = volume::volumes(&spec.volumes, &format!("{path}.volumes"), e);
    let mut names = BTreeSet::new();
    let mut ports = PodPorts::default();
    for (i, c) in spec.containers.iter().enumerate() {
        let cpath = format!("{path}.containers[{i}]");
        container(c, &cpath, &mut ports, &volumes, e);
        probes_and_lifecycle(c, &cpath, e);
        if c.restart_policy.is_some() {
            e.forbidden(
                format!("{cpath}.restartPolicy"),
                "may not be set for non-init containers",
            );
        }
        if !c.name.is_empty() && !names.insert(c.name.as_str()) {
            e.duplicate(format!("{cpath}.name"), &c.name);
        }
    }
    // Init containers run one at a time, so their port names are their own.
    let mut init_ports = PodPorts::default();
    for (i, c) in spec.init_containers.iter().enumerate() {
        let cpath = format!("{path}.initContainers[{i}]");
        container(c, &cpath, &mut init_ports, &volumes, e);
        let sidecar = match c.restart_policy.as_deref() {
            None => false,
            Some("Always") => true,
            Some(other) => {
                e.unsupported(format!("{cpath}.restartPolicy"), other, &["Always"], &[]);
                false
            }
        };
        if sidecar {
            probes_and_lifecycle(c, &cpath, e);
        } else {
            for (field, set) in [
                ("lifecycle", c.lifecycle.is_some()),
                ("livenessProbe", c.liveness_probe.is_some()),
                ("readinessProbe", c.readiness_probe.is_some()),
                ("startupProbe", c.startup_probe.is_some()),
            ] {
                if set {
                    e.forbidden(
                        format!("{cpath}.{field}"),
                        "may not be set for init containers without restartPolicy=Always",
                    );
                }
            }
        }
        if names.contains(c.name.as_str()) {
            e.duplicate(format!("{cpath}.name"), &c.name);
        } else if !c.name.is_empty() {
            names.insert(c.name.as_str());
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
    if let Some(sc) = &spec.security_context {
        security::pod_security_context(sc, &format!("{path}.securityContext"), e);
    }
    for (field, name) in [
        ("serviceAccountName", &spec.service_account_name),
        ("serviceAccount", &spec.service_account),
    ] {
        if !name.is_empty()
            && let Err(d) = dns1123_subdomain(name)
        {
            e.invalid(format!("{path}.{field}"), name, d);
        }
    }
    for (field, name) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if !name.is_empty()
            && let Err(d) = dns1123_label(name)
        {
            e.invalid(format!("{path}.{field}"), name, d);
        }
    }
    e.0.extend(not_yet_honoured(spec, path));
}

// ---------------------------------------------------------------------------------------------
// The gate

/// Refuses every field the node agent does not honour yet, each with a message naming it: a pod
/// the API accepts must run as written. One check per feature, so each can go on its own when the
/// agent learns it.
#[rustfmt::skip]
fn not_yet_honoured(spec: &PodSpec, path: &str) -> Vec<FieldError> {
    let mut e = Errors::default();
    let e = &mut e;
    for (i, v) in spec.volumes.iter().enumerate() {
        let p = format!("{path}.volumes[{i}]");
        if v.empty_dir.as_ref().is_some_and(|d| d.medium != "Memory" && d.size_limit.is_some()) { gate(e, &format!("{p}.emptyDir"), "sizeLimit", "sizeLimit on an emptyDir on disk"); }
        for (j, src) in v.projected.iter().flat_map(|pr| pr.sources.iter()).enumerate() {
            if src.service_account_token.is_some() { gate(e, &format!("{p}.projected.sources[{j}]"), "serviceAccountToken", "serviceAccountToken projections"); }
        }
    }
    // The agent's user namespaces (agent/src/runtime/userns.rs) work at the runtime level, but
    // a review found ways for one pod's range to be handed to another and for host users to
    // steer the remapping walk: refused until those are mended.
    if spec.host_users == Some(false) { gate(e, path, "hostUsers", "hostUsers: false (a user namespace for the pod)"); }
    if spec.automount_service_account_token == Some(true) { gate(e, path, "automountServiceAccountToken", "service account tokens"); }
    if !spec.hostname.is_empty() { gate(e, path, "hostname", "a pod hostname"); }
    if !spec.subdomain.is_empty() { gate(e, path, "subdomain", "a pod subdomain"); }
    std::mem::take(&mut e.0)
}

/// One refusal of the gate: `field` under `path` is `what` the agent does not honour yet.
fn gate(e: &mut Errors, path: &str, field: &str, what: &str) {
    e.forbidden(
        format!("{path}.{field}"),
        format!("Skiff's node agent does not honour {what} yet"),
    );
}

// ---------------------------------------------------------------------------------------------
// Containers

fn container<'a>(
    c: &'a Container,
    path: &str,
    pod_ports: &mut PodPorts<'a>,
    volumes: &BTreeSet<&str>,
    e: &mut Errors,
) {
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
    // All three are honoured as kubelet honours them: Never uses only what is on the node,
    // IfNotPresent pulls an absent image, Always resolves the reference at every container start
    // and pulls when the registry's digest differs.
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
    env(c, path, e);
    resources(&c.resources, &format!("{path}.resources"), e);
    volume::volume_mounts(c, volumes, &format!("{path}.volumeMounts"), e);
    if let Some(sc) = &c.security_context {
        security::security_context(sc, &format!("{path}.securityContext"), e);
    }
    e.one_of(
        format!("{path}.terminationMessagePolicy"),
        &c.termination_message_policy,
        &["File", "FallbackToLogsOnError"],
        &[],
    );
    // Kubernetes leaves a bad path to the runtime, which fails the container's creation;
    // Skiff says so at once.
    let tmp = &c.termination_message_path;
    let bad = !tmp.starts_with('/')
        || tmp.contains('\0')
        || tmp.split('/').any(|p| p == "." || p == "..")
        || tmp.split('/').all(str::is_empty);
    if !tmp.is_empty() && bad {
        e.invalid(
            format!("{path}.terminationMessagePath"),
            tmp,
            "must be an absolute path to a file, without '.' or '..' elements",
        );
    }
    for (field, set) in [
        ("stdin", c.stdin),
        ("stdinOnce", c.stdin_once),
        ("tty", c.tty),
    ] {
        if set {
            e.forbidden(
                format!("{path}.{field}"),
                "Skiff attaches no stdin or terminal to containers",
            );
        }
    }
}

/// Probes and hooks, which app containers and sidecars may have.
fn probes_and_lifecycle(c: &Container, path: &str, e: &mut Errors) {
    if let Some(p) = &c.readiness_probe {
        probe(p, &format!("{path}.readinessProbe"), false, e);
    }
    if let Some(p) = &c.liveness_probe {
        probe(p, &format!("{path}.livenessProbe"), true, e);
    }
    if let Some(p) = &c.startup_probe {
        probe(p, &format!("{path}.startupProbe"), true, e);
    }
    if let Some(l) = &c.lifecycle {
        if let Some(h) = &l.post_start {
            lifecycle_handler(h, c, &format!("{path}.lifecycle.postStart"), e);
        }
        if let Some(h) = &l.pre_stop {
            lifecycle_handler(h, c, &format!("{path}.lifecycle.preStop"), e);
        }
    }
}

fn env(c: &Container, path: &str, e: &mut Errors) {
    for (k, v) in c.env.iter().enumerate() {
        let vpath = format!("{path}.env[{k}]");
        if v.name.is_empty() {
            e.required(format!("{vpath}.name"), "");
        } else if let Err(d) = env_var_name(&v.name) {
            e.invalid(format!("{vpath}.name"), &v.name, d);
        }
        if let Some(from) = &v.value_from {
            env_var_source(from, !v.value.is_empty(), &format!("{vpath}.valueFrom"), e);
        }
    }
    for (k, f) in c.env_from.iter().enumerate() {
        let fpath = format!("{path}.envFrom[{k}]");
        if !f.prefix.is_empty()
            && let Err(d) = env_var_name(&f.prefix)
        {
            e.invalid(format!("{fpath}.prefix"), &f.prefix, d);
        }
        let refs = [
            ("configMapRef", f.config_map_ref.as_ref().map(|r| &r.name)),
            ("secretRef", f.secret_ref.as_ref().map(|r| &r.name)),
        ];
        for (field, name) in refs {
            if let Some(name) = name {
                object_name(name, &format!("{fpath}.{field}.name"), e);
            }
        }
        match refs.iter().filter(|(_, r)| r.is_some()).count() {
            0 => e.invalid(
                fpath,
                "",
                "must specify one of: `configMapRef` or `secretRef`",
            ),
            1 => {}
            _ => e.invalid(
                fpath,
                "",
                "may not have more than one field specified at a time",
            ),
        }
    }
}

/// Where one env var's value comes from; `has_value` when `value` is set as well.
fn env_var_source(from: &EnvVarSource, has_value: bool, path: &str, e: &mut Errors) {
    if let Some(fs) = &from.field_ref {
        volume::object_field_selector(fs, ENV_FIELD_PATHS, &format!("{path}.fieldRef"), e);
    }
    if let Some(rs) = &from.resource_field_ref {
        volume::resource_field_selector(rs, &format!("{path}.resourceFieldRef"), false, e);
    }
    if let Some(r) = &from.config_map_key_ref {
        key_ref(&r.name, &r.key, &format!("{path}.configMapKeyRef"), e);
    }
    if let Some(r) = &from.secret_key_ref {
        key_ref(&r.name, &r.key, &format!("{path}.secretKeyRef"), e);
    }
    let count = [
        from.field_ref.is_some(),
        from.resource_field_ref.is_some(),
        from.config_map_key_ref.is_some(),
        from.secret_key_ref.is_some(),
    ]
    .into_iter()
    .filter(|set| *set)
    .count();
    if count == 0 {
        e.invalid(
            path,
            "",
            "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
        );
    } else if has_value {
        e.invalid(path, "", "may not be specified when `value` is not empty");
    } else if count > 1 {
        e.invalid(
            path,
            "",
            "may not have more than one field specified at a time",
        );
    }
}

/// One key of a ConfigMap or Secret.
fn key_ref(name: &str, key: &str, path: &str, e: &mut Errors) {
    object_name(name, &format!("{path}.name"), e);
    if key.is_empty() {
        e.required(format!("{path}.key"), "");
    }
    for problem in config_key(key).into_iter().filter(|_| !key.is_empty()) {
        e.invalid(format!("{path}.key"), key, problem);
    }
}

/// The name of a ConfigMap or Secret.
fn object_name(name: &str, path: &str, e: &mut Errors) {
    if name.is_empty() {
        e.required(path, "");
    } else if let Err(d) = dns1123_subdomain(name) {
        e.invalid(path, name, d);
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

/// A probe; `exactly_once` for liveness and startup probes, which must succeed once.
fn probe(p: &Probe, path: &str, exactly_once: bool, e: &mut Errors) {
    one_handler(
        path,
        &[
            ("exec", p.exec.is_some()),
            ("tcpSocket", p.tcp_socket.is_some()),
            ("httpGet", p.http_get.is_some()),
            ("grpc", p.grpc.is_some()),
        ],
        p.exec.as_ref(),
        e,
    );
    if let Some(t) = &p.tcp_socket {
        e.port_number_or_name(format!("{path}.tcpSocket.port"), &t.port);
    }
    if let Some(g) = &p.grpc {
        e.port_number(format!("{path}.grpc.port"), g.port);
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
    if exactly_once && p.success_threshold > 1 {
        e.invalid(
            format!("{path}.successThreshold"),
            p.success_threshold,
            "must be 1",
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
    if !h.scheme.is_empty() && h.scheme != "HTTP" && h.scheme != "HTTPS" {
        e.unsupported(
            format!("{hpath}.scheme"),
            &h.scheme,
            &["HTTP", "HTTPS"],
            &[],
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

const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.nodeName` (once, from empty) and `spec.tolerations` (only additions to existing tolerations)";

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
        let lists = [
            ("containers", &mut rest.containers, &old.containers),
            (
                "initContainers",
                &mut rest.init_containers,
                &old.init_containers,
            ),
        ];
        for (field, containers, old_containers) in lists {
            if containers.len() != old_containers.len() {
                e.forbidden(
                    format!("spec.{field}"),
                    "pod updates may not add or remove containers",
                );
                return e.0;
            }
            for (c, o) in containers.iter_mut().zip(old_containers) {
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
    fn env_names_are_printable_ascii_without_equals_as_in_kubernetes_1_32() {
        for ok in [
            "MY_VAR",
            "my.env-name",
            "_x",
            ".hidden",
            "-x1",
            "1VAR",
            "MY VAR",
            "a:b",
        ] {
            let v = set(pod(), &format!("{C0}/env/0/name"), json!(ok));
            assert_eq!(pod_errors(v), Vec::<String>::new(), "{ok}");
        }
        for bad in ["VÄR", "a=b", "tab\there", "new\nline"] {
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
    fn probe_schemes_are_http_or_https() {
        let v = set(
            pod(),
            &format!("{C0}/readinessProbe/httpGet/scheme"),
            json!("FTP"),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].readinessProbe.httpGet.scheme: Unsupported value: \"FTP\": supported values: \"HTTP\", \"HTTPS\"",
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
        // Kubernetes' deprecated tcpSocket handler is not part of the type.
        let v = pre_stop(json!({"tcpSocket": {"port": 80}}));
        let err = serde_json::from_value::<Pod>(v).expect_err("an unknown field");
        assert!(err.to_string().contains("unknown field"), "{err}");
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

    // --- Issue 17: init containers, env sources, probes, the gate ---------------------------

    /// The errors that are not the gate's: what stays once the agent honours every feature.
    fn beyond_gate(errors: Vec<String>) -> Vec<String> {
        errors
            .into_iter()
            .filter(|e| !e.contains("Skiff's node agent does not honour"))
            .collect()
    }

    /// A pod that uses every field issue 17 adds, as a real manifest would.
    pub(crate) fn full_pod() -> Value {
        json!({
            "metadata": {"name": "shop-0", "namespace": "default", "labels": {"app": "shop"}},
            "spec": {
                "serviceAccountName": "shop",
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "hostUsers": false,
                "hostname": "shop-0",
                "subdomain": "shop",
                "imagePullSecrets": [{"name": "registry"}],
                "automountServiceAccountToken": true,
                "securityContext": {
                    "runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true, "fsGroup": 2000,
                    "fsGroupChangePolicy": "OnRootMismatch", "supplementalGroups": [3000],
                    "seccompProfile": {"type": "RuntimeDefault"}
                },
                "volumes": [
                    {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                    {"name": "host", "hostPath": {"path": "/var/log", "type": "Directory"}},
                    {"name": "config", "configMap": {"name": "shop-config", "items": [{"key": "nginx.conf", "path": "conf/nginx.conf", "mode": 0o600}]}},
                    {"name": "creds", "secret": {"secretName": "shop-creds", "defaultMode": 0o400, "optional": true}},
                    {"name": "info", "downwardAPI": {"items": [
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {"path": "cpu", "resourceFieldRef": {"containerName": "web", "resource": "limits.cpu", "divisor": "1m"}}
                    ]}},
                    {"name": "all", "projected": {"sources": [
                        {"configMap": {"name": "shop-config"}},
                        {"secret": {"name": "shop-tls", "items": [{"key": "tls.crt", "path": "tls.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}
                    ]}},
                    {"name": "spool", "emptyDir": {"sizeLimit": "1Gi"}}
                ],
                "initContainers": [
                    {"name": "migrate", "image": "registry.example/shop:2.1", "command": ["migrate"],
                     "envFrom": [{"secretRef": {"name": "db"}}]},
                    {"name": "proxy", "image": "envoy:v1.31", "restartPolicy": "Always",
                     "readinessProbe": {"tcpSocket": {"port": 15000}}}
                ],
                "containers": [{
                    "name": "web",
                    "image": "nginx",
                    "ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 9090}],
                    "env": [
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "ZONE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['topology.kubernetes.io/zone']"}}},
                        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "shop-config", "key": "mode"}}},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password", "optional": false}}}
                    ],
                    "envFrom": [{"prefix": "SHOP_", "configMapRef": {"name": "shop-env"}}],
                    "volumeMounts": [
                        {"name": "scratch", "mountPath": "/tmp"},
                        {"name": "config", "mountPath": "/etc/nginx/nginx.conf", "subPath": "conf/nginx.conf", "readOnly": true},
                        {"name": "creds", "mountPath": "/run/creds", "mountPropagation": "None"},
                        {"name": "info", "mountPath": "/etc/podinfo"},
                        {"name": "all", "mountPath": "/run/all"},
                        {"name": "host", "mountPath": "/host/log", "readOnly": true}
                    ],
                    "securityContext": {
                        "runAsUser": 1000, "runAsNonRoot": true, "readOnlyRootFilesystem": true,
                        "allowPrivilegeEscalation": false, "privileged": false,
                        "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                        "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/web.json"},
                        "procMount": "Default"
                    },
                    "startupProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTPS"}, "failureThreshold": 30},
                    "livenessProbe": {"grpc": {"port": 9090}},
                    "readinessProbe": {"grpc": {"port": 9090, "service": "shop.v1.Shop"}},
                    "lifecycle": {"postStart": {"exec": {"command": ["touch", "/tmp/started"]}}},
                    "terminationMessagePath": "/tmp/termination",
                    "terminationMessagePolicy": "FallbackToLogsOnError"
                }]
            }
        })
    }

    #[test]
    fn a_pod_using_every_new_field_correctly_is_refused_only_by_the_gate() {
        let errors = pod_errors(full_pod());
        assert!(
            !errors.is_empty(),
            "the gate refuses what the agent does not honour"
        );
        assert_eq!(beyond_gate(errors), Vec::<String>::new());
        let p: Pod = decode(full_pod());
        assert_eq!(p.spec.init_containers.len(), 2);
        assert_eq!(p.spec.volumes.len(), 7);
    }

    #[test]
    fn grpc_probes_and_https_probes_and_pre_stop_hooks_are_honoured_and_accepted() {
        let errors = pod_errors(json!({
            "metadata": {"name": "shop", "namespace": "default"},
            "spec": {"containers": [{
                "name": "web", "image": "shop:1",
                "livenessProbe": {"grpc": {"port": 9090}},
                "readinessProbe": {"grpc": {"port": 9090, "service": "shop.v1.Shop"}},
                "lifecycle": {"preStop": {"httpGet": {"port": 8443, "scheme": "HTTPS"}}}
            }, {
                "name": "tls", "image": "shop:1",
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8443, "scheme": "HTTPS"}}
            }]}
        }));
        assert_eq!(errors, Vec::<String>::new());
    }

    #[test]
    fn the_gate_refuses_each_feature_the_agent_does_not_honour_with_a_message_naming_its_field() {
        let errors = pod_errors(full_pod());
        let s = "spec";
        for (field, what) in [
            (
                format!("{s}.volumes[5].projected.sources[3].serviceAccountToken"),
                "serviceAccountToken projections",
            ),
            (
                format!("{s}.volumes[6].emptyDir.sizeLimit"),
                "sizeLimit on an emptyDir on disk",
            ),
            (
                format!("{s}.automountServiceAccountToken"),
                "service account tokens",
            ),
            (format!("{s}.hostUsers"), "hostUsers: false"),
            (format!("{s}.hostname"), "a pod hostname"),
            (format!("{s}.subdomain"), "a pod subdomain"),
        ] {
            assert_has(
                &errors,
                &format!("{field}: Forbidden: Skiff's node agent does not honour {what}"),
            );
        }
        // What the agent honours now passes the gate: init containers, sidecars, startup
        // probes, postStart hooks and termination messages.
        for field in [
            "initContainers",
            "startupProbe",
            "postStart",
            "terminationMessage",
        ] {
            assert!(
                !errors.iter().any(|e| e.contains(field)),
                "{field} is honoured: {errors:#?}"
            );
        }
    }

    #[test]
    fn a_size_limit_is_refused_on_an_empty_dir_on_disk_and_accepted_on_a_memory_one() {
        let with = |medium: &str| {
            pod_errors(set(
                pod(),
                "/spec/volumes",
                json!([{"name": "scratch", "emptyDir": {"medium": medium, "sizeLimit": "64Mi"}}]),
            ))
        };
        assert_eq!(with("Memory"), Vec::<String>::new());
        assert_eq!(
            with(""),
            [
                "spec.volumes[0].emptyDir.sizeLimit: Forbidden: Skiff's node agent does not honour sizeLimit on an emptyDir on disk yet"
            ]
        );
    }

    #[test]
    fn the_gate_leaves_defaults_and_what_works_today_alone() {
        // Defaulted fields (termination message, pull policy Always for an untagged image,
        // enableServiceLinks) and an empty security context are not features to refuse.
        let v = set(pod(), &format!("{C0}/image"), json!("nginx"));
        let v = set(v, "/spec/securityContext", json!({}));
        let v = set(
            v,
            &format!("{C0}/securityContext"),
            json!({"procMount": "Default"}),
        );
        let v = set(v, "/spec/hostUsers", json!(true));
        let v = set(v, "/spec/enableServiceLinks", json!(true));
        let v = set(v, "/spec/serviceAccountName", json!("default"));
        let v = set(
            v,
            &format!("{C0}/lifecycle/preStop"),
            json!({"httpGet": {"port": 80}}),
        );
        let p: Pod = decode(v.clone());
        assert_eq!(p.spec.containers[0].image_pull_policy, "Always");
        assert_eq!(pod_errors(v), Vec::<String>::new());
    }

    #[test]
    fn init_container_names_must_be_unique_across_init_and_app_containers() {
        let v = set(
            pod(),
            "/spec/initContainers",
            json!([{"name": "web", "image": "busybox"}, {"name": "setup", "image": "busybox"}, {"name": "setup", "image": "busybox"}]),
        );
        let errors = beyond_gate(pod_errors(v));
        assert_has(
            &errors,
            "spec.initContainers[0].name: Duplicate value: \"web\"",
        );
        assert_has(
            &errors,
            "spec.initContainers[2].name: Duplicate value: \"setup\"",
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn plain_init_containers_may_not_have_probes_or_hooks_but_sidecars_may() {
        let init = json!({
            "name": "setup", "image": "busybox",
            "lifecycle": {"preStop": {"sleep": {"seconds": 1}}},
            "livenessProbe": {"exec": {"command": ["true"]}},
            "readinessProbe": {"exec": {"command": ["true"]}},
            "startupProbe": {"exec": {"command": ["true"]}}
        });
        let errors = beyond_gate(pod_errors(set(
            pod(),
            "/spec/initContainers",
            json!([init]),
        )));
        for field in [
            "lifecycle",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
        ] {
            assert_has(
                &errors,
                &format!(
                    "spec.initContainers[0].{field}: Forbidden: may not be set for init containers without restartPolicy=Always"
                ),
            );
        }
        assert_eq!(errors.len(), 4, "{errors:#?}");
        let sidecar = set(init, "/restartPolicy", json!("Always"));
        let errors = beyond_gate(pod_errors(set(
            pod(),
            "/spec/initContainers",
            json!([sidecar]),
        )));
        assert_eq!(errors, Vec::<String>::new());
    }

    #[test]
    fn container_restart_policy_is_only_always_and_only_on_init_containers() {
        let v = set(pod(), &format!("{C0}/restartPolicy"), json!("Always"));
        assert_only(
            &pod_errors(v),
            "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers",
        );
        let v = set(
            pod(),
            "/spec/initContainers",
            json!([{"name": "setup", "image": "busybox", "restartPolicy": "OnFailure"}]),
        );
        assert_only(
            &beyond_gate(pod_errors(v)),
            "spec.initContainers[0].restartPolicy: Unsupported value: \"OnFailure\": supported values: \"Always\"",
        );
    }

    #[test]
    fn env_value_from_needs_exactly_one_source_and_no_value() {
        for (value_from, extra, expected) in [
            (
                json!({}),
                None,
                "spec.containers[0].env[0].valueFrom: Invalid value: \"\": must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
            ),
            (
                json!({"fieldRef": {"fieldPath": "metadata.name"}, "secretKeyRef": {"name": "s", "key": "k"}}),
                None,
                "spec.containers[0].env[0].valueFrom: Invalid value: \"\": may not have more than one field specified at a time",
            ),
            (
                json!({"fieldRef": {"fieldPath": "metadata.name"}}),
                Some("literal"),
                "spec.containers[0].env[0].valueFrom: Invalid value: \"\": may not be specified when `value` is not empty",
            ),
        ] {
            let mut v = set(pod(), &format!("{C0}/env/0/valueFrom"), value_from);
            v = match extra {
                Some(value) => set(v, &format!("{C0}/env/0/value"), json!(value)),
                None => remove(v, &format!("{C0}/env/0/value")),
            };
            assert_only(&beyond_gate(pod_errors(v)), expected);
        }
    }

    #[test]
    fn config_map_and_secret_key_refs_need_a_name_and_a_valid_key() {
        for (source, selector, expected) in [
            (
                "configMapKeyRef",
                json!({"name": "", "key": "k"}),
                "configMapKeyRef.name: Required value",
            ),
            (
                "secretKeyRef",
                json!({"name": "db", "key": ""}),
                "secretKeyRef.key: Required value",
            ),
            (
                "secretKeyRef",
                json!({"name": "Bad_Name", "key": "k"}),
                "secretKeyRef.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain",
            ),
            (
                "configMapKeyRef",
                json!({"name": "cm", "key": "a/b"}),
                "configMapKeyRef.key: Invalid value: \"a/b\": a valid config key must consist of alphanumeric characters",
            ),
            (
                "configMapKeyRef",
                json!({"name": "cm", "key": ".."}),
                "configMapKeyRef.key: Invalid value: \"..\": must not be '..'",
            ),
        ] {
            let v = remove(pod(), &format!("{C0}/env/0/value"));
            let v = set(v, &format!("{C0}/env/0/valueFrom/{source}"), selector);
            assert_only(
                &beyond_gate(pod_errors(v)),
                &format!("spec.containers[0].env[0].valueFrom.{expected}"),
            );
        }
    }

    #[test]
    fn env_field_refs_take_exactly_kubernetes_field_paths() {
        let supported = "supported values: \"metadata.name\", \"metadata.namespace\", \"metadata.uid\", \"spec.nodeName\", \"spec.serviceAccountName\", \"status.hostIP\", \"status.hostIPs\", \"status.podIP\", \"status.podIPs\"";
        let field_ref = |path: &str| {
            let v = remove(pod(), &format!("{C0}/env/0/value"));
            set(
                v,
                &format!("{C0}/env/0/valueFrom/fieldRef/fieldPath"),
                json!(path),
            )
        };
        for ok in [
            "metadata.name",
            "metadata.namespace",
            "metadata.uid",
            "spec.nodeName",
            "spec.serviceAccountName",
            "status.hostIP",
            "status.hostIPs",
            "status.podIP",
            "status.podIPs",
            "metadata.labels['app']",
            "metadata.annotations['Example.com/Note']",
            "spec.host",
        ] {
            assert_eq!(
                beyond_gate(pod_errors(field_ref(ok))),
                Vec::<String>::new(),
                "{ok}"
            );
        }
        let p = "spec.containers[0].env[0].valueFrom.fieldRef";
        for (bad, expected) in [
            (
                "metadata.labels",
                format!("{p}.fieldPath: Unsupported value: \"metadata.labels\": {supported}"),
            ),
            (
                "status.phase",
                format!("{p}.fieldPath: Unsupported value: \"status.phase\": {supported}"),
            ),
            (
                "spec.containers",
                format!(
                    "{p}.fieldPath: Invalid value: \"spec.containers\": error converting fieldPath: field label not supported: spec.containers"
                ),
            ),
            (
                "metadata.name['x']",
                format!(
                    "{p}.fieldPath: Invalid value: \"metadata.name['x']\": error converting fieldPath: field label does not support subscript: metadata.name['x']"
                ),
            ),
            (
                "metadata.labels['bad key']",
                format!("{p}: Invalid value: \"bad key\""),
            ),
        ] {
            assert_only(&beyond_gate(pod_errors(field_ref(bad))), &expected);
        }
        let v = set(
            field_ref("metadata.name"),
            &format!("{C0}/env/0/valueFrom/fieldRef/apiVersion"),
            json!("v2"),
        );
        assert_only(
            &beyond_gate(pod_errors(v)),
            "fieldRef.fieldPath: Invalid value: \"metadata.name\": error converting fieldPath: unsupported pod version: v2",
        );
    }

    #[test]
    fn env_resource_field_refs_name_a_kubernetes_resource_and_divisor() {
        let resource_ref = |selector: Value| {
            let v = remove(pod(), &format!("{C0}/env/0/value"));
            set(
                v,
                &format!("{C0}/env/0/valueFrom/resourceFieldRef"),
                selector,
            )
        };
        for ok in [
            json!({"resource": "limits.cpu", "divisor": "1m"}),
            json!({"resource": "requests.memory", "divisor": "1Mi"}),
            json!({"resource": "limits.ephemeral-storage"}),
            json!({"containerName": "web", "resource": "requests.cpu"}),
        ] {
            assert_eq!(
                beyond_gate(pod_errors(resource_ref(ok.clone()))),
                Vec::<String>::new(),
                "{ok}"
            );
        }
        let p = "spec.containers[0].env[0].valueFrom.resourceFieldRef";
        for (bad, expected) in [
            (
                json!({"resource": ""}),
                format!("{p}.resource: Required value"),
            ),
            (
                json!({"resource": "limits.gpu"}),
                format!(
                    "{p}.resource: Unsupported value: \"limits.gpu\": supported values: \"limits.cpu\", \"limits.ephemeral-storage\", \"limits.memory\", \"requests.cpu\", \"requests.ephemeral-storage\", \"requests.memory\""
                ),
            ),
            (
                json!({"resource": "limits.hugepages-2Mi"}),
                "Skiff does not manage huge pages".to_owned(),
            ),
            (
                json!({"resource": "limits.cpu", "divisor": "2"}),
                format!(
                    "{p}.divisor: Invalid value: \"limits.cpu\": only divisor's values 1m and 1 are supported with the cpu resource"
                ),
            ),
            (
                json!({"resource": "limits.memory", "divisor": "3Mi"}),
                format!(
                    "{p}.divisor: Invalid value: \"limits.memory\": only divisor's values 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei are supported with the memory resource"
                ),
            ),
        ] {
            assert_only(&beyond_gate(pod_errors(resource_ref(bad))), &expected);
        }
    }

    #[test]
    fn env_from_needs_one_source_a_name_and_a_valid_prefix() {
        let p = "spec.containers[0].envFrom[0]";
        for (source, expected) in [
            (
                json!({}),
                format!(
                    "{p}: Invalid value: \"\": must specify one of: `configMapRef` or `secretRef`"
                ),
            ),
            (
                json!({"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}),
                format!(
                    "{p}: Invalid value: \"\": may not have more than one field specified at a time"
                ),
            ),
            (
                json!({"configMapRef": {"name": ""}}),
                format!("{p}.configMapRef.name: Required value"),
            ),
            (
                json!({"prefix": "A=B", "secretRef": {"name": "s"}}),
                format!(
                    "{p}.prefix: Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='"
                ),
            ),
        ] {
            let v = set(pod(), &format!("{C0}/envFrom"), json!([source]));
            assert_only(&beyond_gate(pod_errors(v)), &expected);
        }
    }

    #[test]
    fn grpc_probes_need_a_port_in_range_and_one_handler() {
        let v = set(
            pod(),
            &format!("{C0}/livenessProbe"),
            json!({"grpc": {"port": 0}}),
        );
        assert_only(
            &beyond_gate(pod_errors(v)),
            "spec.containers[0].livenessProbe.grpc.port: Invalid value: 0: must be between 1 and 65535, inclusive",
        );
        let v = set(
            pod(),
            &format!("{C0}/livenessProbe"),
            json!({"grpc": {"port": 9090}, "tcpSocket": {"port": 80}}),
        );
        assert_only(
            &beyond_gate(pod_errors(v)),
            "spec.containers[0].livenessProbe.grpc: Forbidden: may not specify more than 1 handler type",
        );
        let v = set(
            pod(),
            &format!("{C0}/livenessProbe"),
            json!({"periodSeconds": 5}),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].livenessProbe: Required value: must specify a handler type (one of exec, tcpSocket, httpGet or grpc)",
        );
    }

    #[test]
    fn startup_probes_must_succeed_exactly_once_and_post_start_hooks_are_checked() {
        let v = set(
            pod(),
            &format!("{C0}/startupProbe"),
            json!({"exec": {"command": ["true"]}, "successThreshold": 2}),
        );
        assert_only(
            &beyond_gate(pod_errors(v)),
            "spec.containers[0].startupProbe.successThreshold: Invalid value: 2: must be 1",
        );
        let v = set(
            pod(),
            &format!("{C0}/lifecycle/postStart"),
            json!({"exec": {"command": []}}),
        );
        assert_only(
            &beyond_gate(pod_errors(v)),
            "spec.containers[0].lifecycle.postStart.exec.command: Required value",
        );
    }

    #[test]
    fn termination_message_policy_is_file_or_fallback_to_logs_on_error() {
        let v = set(
            pod(),
            &format!("{C0}/terminationMessagePolicy"),
            json!("Always"),
        );
        assert_only(
            &pod_errors(v),
            "spec.containers[0].terminationMessagePolicy: Unsupported value: \"Always\": supported values: \"File\", \"FallbackToLogsOnError\"",
        );
    }

    #[test]
    fn a_termination_message_path_is_an_absolute_file_path_without_dot_elements() {
        for bad in ["termination-log", "/dev/../etc/passwd", "/", "/a/./b"] {
            let v = set(pod(), &format!("{C0}/terminationMessagePath"), json!(bad));
            assert_only(
                &pod_errors(v),
                &format!(
                    "spec.containers[0].terminationMessagePath: Invalid value: {bad:?}: must be an absolute path to a file, without '.' or '..' elements"
                ),
            );
        }
        let v = set(
            pod(),
            &format!("{C0}/terminationMessagePath"),
            json!("/tmp/done"),
        );
        assert_eq!(pod_errors(v), Vec::<String>::new());
    }

    #[test]
    fn stdin_and_tty_are_refused_because_nothing_attaches_to_them() {
        for field in ["stdin", "stdinOnce", "tty"] {
            let v = set(pod(), &format!("{C0}/{field}"), json!(true));
            assert_only(
                &pod_errors(v),
                &format!(
                    "spec.containers[0].{field}: Forbidden: Skiff attaches no stdin or terminal to containers"
                ),
            );
            let v = set(pod(), &format!("{C0}/{field}"), json!(false));
            assert_eq!(pod_errors(v), Vec::<String>::new());
        }
    }

    #[test]
    fn service_account_hostname_and_subdomain_follow_kubernetes_name_rules() {
        for (field, bad, rule) in [
            (
                "serviceAccountName",
                "Bad_SA",
                "a lowercase RFC 1123 subdomain",
            ),
            ("hostname", "web.0", "a lowercase RFC 1123 label"),
            ("subdomain", "Shop", "a lowercase RFC 1123 label"),
        ] {
            let v = set(pod(), &format!("/spec/{field}"), json!(bad));
            assert_has(
                &pod_errors(v),
                &format!("spec.{field}: Invalid value: {bad:?}: {rule}"),
            );
        }
        let v = set(pod(), "/spec/serviceAccountName", json!("builder"));
        // `true` asks for a token, which the gate refuses (no tokens are issued yet).
        let v = set(v, "/spec/automountServiceAccountToken", json!(false));
        assert_eq!(pod_errors(v.clone()), Vec::<String>::new());
        let p: Pod = decode(v);
        assert_eq!(p.spec.service_account_name, "builder", "kept as given");
    }

    #[test]
    fn init_container_images_may_change_but_containers_may_not_be_added_or_removed() {
        let with_init = |image: &str| {
            set(
                pod(),
                "/spec/initContainers",
                json!([{"name": "setup", "image": image}]),
            )
        };
        let errors = update_errors::<Pod>(with_init("busybox:1.37"), with_init("busybox:1.36"));
        assert_eq!(beyond_gate(errors), Vec::<String>::new());
        let errors = update_errors::<Pod>(with_init("busybox"), pod());
        assert_has(
            &errors,
            "spec.initContainers: Forbidden: pod updates may not add or remove containers",
        );
        let c = pod()["spec"]["containers"][0].clone();
        let two = set(
            pod(),
            "/spec/containers",
            json!([c.clone(), set(c, "/name", json!("side"))]),
        );
        assert_only(
            &update_errors::<Pod>(two, pod()),
            "spec.containers: Forbidden: pod updates may not add or remove containers",
        );
    }
}
