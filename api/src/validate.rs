//! Semantic validation of objects: every problem found, each naming its field path, in
//! Kubernetes' message shapes (`spec.ports[1].name: Duplicate value: "http"`).
//!
//! Decoding has already refused unknown fields and wrong types; this module checks what the types
//! cannot express. The API server applies defaults first, so the checks may assume them (a
//! defaulted field left empty is reported as `Required value`), but they never panic on an object
//! that was not defaulted.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use crate::{
    kinds::{
        Container, Deployment, DeploymentStrategy, EndpointAddress, EndpointPort, Endpoints,
        ExecAction, HttpGetAction, IntOrString, Lease, LifecycleHandler, Namespace, Node, Pod,
        PodSpec, PodTemplateSpec, Probe, ReplicaSet, ResourceRequirements, Service, ServicePort,
        ServiceSpec, Toleration,
    },
    meta::ObjectMeta,
    object::FieldError,
    quantity::Quantity,
    selector::{LabelSelector, validate_label_key, validate_label_value},
};

/// Checks an object on its own and against the stored version on update.
pub trait Validate {
    /// Every problem found; empty when the object is valid.
    fn validate(&self) -> Vec<FieldError>;
    /// Problems with changing `old` into `self` (immutable fields).
    fn validate_update(&self, _old: &Self) -> Vec<FieldError> {
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Name syntax

/// A DNS-1123 label: at most 63 lower-case alphanumerics or '-', alphanumeric at both ends.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters (is {})",
            s.len()
        ));
    }
    let ok_chars = s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    let ok_ends = s.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok_chars || !ok_ends {
        return Err(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')"
                .into(),
        );
    }
    Ok(())
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated labels.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!(
            "must be no more than 253 characters (is {})",
            s.len()
        ));
    }
    if s.split('.').any(|l| dns1123_label(l).is_err()) {
        return Err(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')"
                .into(),
        );
    }
    Ok(())
}

/// An RFC 1035 label (Service names): a DNS-1123 label that starts with a letter.
pub fn dns1035_label(s: &str) -> Result<(), String> {
    let syntax = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123')";
    dns1123_label(s).map_err(|e| {
        if s.is_empty() || s.len() > 63 {
            e
        } else {
            syntax.to_owned()
        }
    })?;
    if !s.bytes().next().is_some_and(|c| c.is_ascii_lowercase()) {
        return Err(syntax.into());
    }
    Ok(())
}

/// An IANA service name (a port name): at most 15 lower-case alphanumerics or '-', with at least
/// one letter, and no '-' at either end or twice in a row.
pub fn iana_svc_name(s: &str) -> Result<(), String> {
    let mut problems = Vec::new();
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 15 {
        problems.push("must be no more than 15 characters");
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        problems.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if s.contains("--") {
        problems.push("must not contain consecutive hyphens");
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        problems.push("must contain at least one letter (a-z)");
    }
    if s.starts_with('-') || s.ends_with('-') {
        problems.push("must not begin or end with a hyphen");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(", "))
    }
}

/// An object's uid as the API server assigns it: a UUID in its lower-case hyphenated form
/// (`8-4-4-4-12` hex digits). The API never takes a uid from a client, so any other shape was
/// not written through it.
pub fn uid(s: &str) -> Result<(), String> {
    let groups: Vec<&str> = s.split('-').collect();
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n)
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c) || c == b'-');
    if ok {
        Ok(())
    } else {
        Err("a uid must be a lower-case UUID of 8-4-4-4-12 hexadecimal digits (e.g. '0e6d1c3a-5b7f-4c2e-9a1d-3f4b5c6d7e8f')".into())
    }
}

/// An environment variable name as Kubernetes accepts it: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn env_var_name(s: &str) -> Result<(), String> {
    let word = |c: u8| c.is_ascii_alphabetic() || matches!(c, b'-' | b'.' | b'_');
    let ok = s.bytes().next().is_some_and(word) && s.bytes().all(|c| word(c) || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err("a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name', or 'MY_ENV.NAME', or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')".into())
    }
}

// ---------------------------------------------------------------------------------------------
// Addresses

const IPV6_UNSUPPORTED: &str = "IPv6 is not supported: Skiff is IPv4 single-stack";

fn ipv4(s: &str) -> Result<Ipv4Addr, String> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(_)) => Err(IPV6_UNSUPPORTED.into()),
        Err(_) => Err("must be a valid IPv4 address (e.g. 10.9.8.7)".into()),
    }
}

fn ipv4_cidr(s: &str) -> Result<(), String> {
    let syntax = "must be a valid IPv4 CIDR (e.g. 10.244.1.0/24)";
    let Some((ip, bits)) = s.split_once('/') else {
        return Err(syntax.into());
    };
    if let Ok(IpAddr::V6(_)) = ip.parse::<IpAddr>() {
        return Err(IPV6_UNSUPPORTED.into());
    }
    let bits_ok = !bits.is_empty()
        && bits.len() <= 2
        && bits.bytes().all(|c| c.is_ascii_digit())
        && bits.parse::<u8>().is_ok_and(|b| b <= 32);
    if ip.parse::<Ipv4Addr>().is_err() || !bits_ok {
        return Err(syntax.into());
    }
    Ok(())
}

/// Addresses an endpoint may not name: they would send Service traffic to the node itself.
fn special_ipv4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("may not be unspecified (0.0.0.0)")
    } else if ip.is_loopback() {
        Some("may not be in the loopback range (127.0.0.0/8)")
    } else if ip.is_link_local() {
        Some("may not be in the link-local range (169.254.0.0/16)")
    } else if ip.is_multicast() {
        Some("may not be a multicast address (224.0.0.0/4)")
    } else if ip.is_broadcast() {
        Some("may not be the broadcast address")
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Error collection

const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";
const NON_NEGATIVE: &str = "must be greater than or equal to 0";
const IMMUTABLE: &str = "field is immutable";
const PROTOCOLS: &[&str] = &["TCP", "UDP"];
const SCTP_UNSUPPORTED: &[(&str, &str)] = &[("SCTP", "Skiff's datapath handles only TCP and UDP")];
/// Why a container port's `hostPort` is refused: nothing would listen on the node's port.
const HOST_PORT_UNSUPPORTED: &str = "host ports are not supported yet: Skiff's datapath does not forward a node's port to the pod (expose the pod through a NodePort Service instead)";
/// Kubernetes' limit on the summed size of an object's annotation keys and values.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// A value shown exactly as given (numbers, pre-rendered JSON).
struct Raw(String);

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A number bare, a name quoted.
fn int_or_string(v: &IntOrString) -> Raw {
    match v {
        IntOrString::Int(i) => Raw(i.to_string()),
        IntOrString::String(s) => Raw(format!("{s:?}")),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Raw {
    Raw(serde_json::to_string(v).unwrap_or_default())
}

/// The errors found so far, each pushed in one of Kubernetes' shapes.
#[derive(Debug, Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn required(&mut self, path: impl Into<String>, detail: &str) {
        let message = if detail.is_empty() {
            "Required value".to_owned()
        } else {
            format!("Required value: {detail}")
        };
        self.0.push(FieldError::new(path, message));
    }

    fn invalid(
        &mut self,
        path: impl Into<String>,
        value: impl fmt::Debug,
        detail: impl fmt::Display,
    ) {
        self.0.push(FieldError::new(
            path,
            format!("Invalid value: {value:?}: {detail}"),
        ));
    }

    /// `value` is none of `supported`; `notes` explain values Kubernetes has and Skiff does not.
    fn unsupported(
        &mut self,
        path: impl Into<String>,
        value: &str,
        supported: &[&str],
        notes: &[(&str, &str)],
    ) {
        let list = supported
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut message = format!("Unsupported value: {value:?}: supported values: {list}");
        if let Some((_, note)) = notes.iter().find(|(v, _)| *v == value) {
            message.push_str("; ");
            message.push_str(note);
        }
        self.0.push(FieldError::new(path, message));
    }

    fn duplicate(&mut self, path: impl Into<String>, value: impl fmt::Debug) {
        self.0
            .push(FieldError::new(path, format!("Duplicate value: {value:?}")));
    }

    fn forbidden(&mut self, path: impl Into<String>, detail: impl fmt::Display) {
        self.0
            .push(FieldError::new(path, format!("Forbidden: {detail}")));
    }

    fn too_long(&mut self, path: impl Into<String>, detail: impl fmt::Display) {
        self.0
            .push(FieldError::new(path, format!("Too long: {detail}")));
    }

    fn too_many(&mut self, path: impl Into<String>, count: usize, max: usize, detail: &str) {
        self.0.push(FieldError::new(
            path,
            format!("Too many: {count}: must have at most {max} items; {detail}"),
        ));
    }

    /// A required enumerated string: empty is `Required value`, anything not listed unsupported.
    fn one_of(
        &mut self,
        path: impl Into<String>,
        value: &str,
        supported: &[&str],
        notes: &[(&str, &str)],
    ) {
        if value.is_empty() {
            self.required(path, "");
        } else if !supported.contains(&value) {
            self.unsupported(path, value, supported, notes);
        }
    }

    fn port_number(&mut self, path: impl Into<String>, port: i32) {
        if !(1..=65535).contains(&port) {
            self.invalid(path, port, PORT_RANGE);
        }
    }

    /// A port given by number or by the name of a container port.
    fn port_number_or_name(&mut self, path: impl Into<String>, port: &IntOrString) {
        match port {
            IntOrString::Int(n) => self.port_number(path, *n),
            IntOrString::String(name) => {
                if let Err(e) = iana_svc_name(name) {
                    self.invalid(path, name, e);
                }
            }
        }
    }

    fn non_negative(&mut self, path: impl Into<String>, value: i64) {
        if value < 0 {
            self.invalid(path, value, NON_NEGATIVE);
        }
    }

    fn labels(&mut self, path: &str, labels: &BTreeMap<String, String>) {
        for (k, v) in labels {
            if let Err(e) = validate_label_key(k) {
                self.invalid(path, k, e);
            }
            if let Err(e) = validate_label_value(v) {
                self.invalid(format!("{path}[{k}]"), v, e);
            }
        }
    }

    fn annotations(&mut self, path: &str, annotations: &BTreeMap<String, String>) {
        let mut total = 0;
        for (k, v) in annotations {
            // Kubernetes accepts upper case in annotation keys (`Example.com/Note`).
            if let Err(e) = validate_label_key(&k.to_ascii_lowercase()) {
                self.invalid(path, k, e);
            }
            total += k.len() + v.len();
        }
        if total > MAX_ANNOTATIONS_BYTES {
            self.too_long(
                path,
                format!("may not be more than {MAX_ANNOTATIONS_BYTES} bytes (is {total})"),
            );
        }
    }

    fn ipv4(&mut self, path: impl Into<String>, value: &str) -> Option<Ipv4Addr> {
        match ipv4(value) {
            Ok(ip) => Some(ip),
            Err(e) => {
                self.invalid(path, value, e);
                None
            }
        }
    }

    fn timestamp(&mut self, path: impl Into<String>, value: Option<&str>) {
        if let Some(t) = value
            && crate::meta::time::parse(t).is_none()
        {
            self.invalid(
                path,
                t,
                "must be an RFC 3339 timestamp (e.g. 2026-11-22T10:04:05.123456Z)",
            );
        }
    }

    /// An unchangeable field: `old` must equal `new`.
    fn immutable<T: PartialEq>(&mut self, path: &str, new: &T, old: &T, shown: impl fmt::Debug) {
        if new != old {
            self.invalid(path, shown, IMMUTABLE);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata

/// Which rule an object's name follows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NameRule {
    /// A DNS-1123 label (Namespace).
    Label,
    /// A DNS-1123 label that starts with a letter (Service).
    Rfc1035Label,
    /// A DNS-1123 subdomain (everything else).
    Subdomain,
}

impl NameRule {
    fn check(self, name: &str) -> Result<(), String> {
        match self {
            NameRule::Label => dns1123_label(name),
            NameRule::Rfc1035Label => dns1035_label(name),
            NameRule::Subdomain => dns1123_subdomain(name),
        }
    }
}

fn metadata(meta: &ObjectMeta, rule: NameRule, e: &mut Errors) {
    if meta.name.is_empty() {
        if meta.generate_name.is_empty() {
            e.required("metadata.name", "name or generateName is required");
        }
    } else if let Err(d) = rule.check(&meta.name) {
        e.invalid("metadata.name", &meta.name, d);
    }
    if !meta.generate_name.is_empty() {
        // The server appends random characters, so a trailing '-' is what prefixes usually end in.
        let prefix = &meta.generate_name;
        let masked = match prefix.strip_suffix('-') {
            Some(head) if !head.is_empty() => format!("{head}a"),
            _ => prefix.clone(),
        };
        if let Err(d) = rule.check(&masked) {
            e.invalid("metadata.generateName", prefix, d);
        }
    }
    if !meta.namespace.is_empty()
        && let Err(d) = dns1123_label(&meta.namespace)
    {
        e.invalid("metadata.namespace", &meta.namespace, d);
    }
    e.labels("metadata.labels", &meta.labels);
    e.annotations("metadata.annotations", &meta.annotations);
    let mut controller: Option<usize> = None;
    for (i, r) in meta.owner_references.iter().enumerate() {
        let path = format!("metadata.ownerReferences[{i}]");
        for (field, value) in [
            ("apiVersion", &r.api_version),
            ("kind", &r.kind),
            ("name", &r.name),
            ("uid", &r.uid),
        ] {
            if value.is_empty() {
                e.required(format!("{path}.{field}"), "");
            }
        }
        if r.controller == Some(true) {
            match controller {
                Some(first) => e.forbidden(
                    format!("{path}.controller"),
                    format!(
                        "only one owner reference may have controller set to true (metadata.ownerReferences[{first}] already does)"
                    ),
                ),
                None => controller = Some(i),
            }
        }
    }
}

fn metadata_update(new: &ObjectMeta, old: &ObjectMeta, e: &mut Errors) {
    e.immutable("metadata.name", &new.name, &old.name, &new.name);
    e.immutable(
        "metadata.namespace",
        &new.namespace,
        &old.namespace,
        &new.namespace,
    );
}

// ---------------------------------------------------------------------------------------------
// Pods and pod templates

/// Port names already taken in one pod.
#[derive(Default)]
struct PodPorts<'a> {
    names: BTreeSet<&'a str>,
}

fn pod_spec(spec: &PodSpec, path: &str, e: &mut Errors) {
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

// ---------------------------------------------------------------------------------------------
// Services

fn service_spec(s: &ServiceSpec, e: &mut Errors) {
    e.one_of(
        "spec.type",
        &s.type_,
        &["ClusterIP", "NodePort"],
        &[
            (
                "LoadBalancer",
                "Skiff has no load balancer integration; use NodePort",
            ),
            (
                "ExternalName",
                "Skiff's cluster DNS does not serve ExternalName Services",
            ),
        ],
    );
    let node_port_type = s.type_ == "NodePort";
    let headless = s.cluster_ip == "None";
    if s.ports.is_empty() && !headless {
        e.required(
            "spec.ports",
            "a Service needs at least one port unless it is headless",
        );
    }
    let mut names = BTreeSet::new();
    let mut ports = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for (i, p) in s.ports.iter().enumerate() {
        service_port(p, &format!("spec.ports[{i}]"), s, e);
        let path = format!("spec.ports[{i}]");
        if !p.name.is_empty() && !names.insert(p.name.as_str()) {
            e.duplicate(format!("{path}.name"), &p.name);
        }
        if !ports.insert((p.port, p.protocol.as_str())) {
            e.duplicate(path.clone(), format!("{}/{}", p.port, p.protocol));
        }
        if p.node_port != 0 && !node_ports.insert((p.node_port, p.protocol.as_str())) {
            e.duplicate(format!("{path}.nodePort"), p.node_port);
        }
    }
    match s.cluster_ip.as_str() {
        "" => {}
        "None" => {
            if node_port_type {
                e.invalid(
                    "spec.clusterIP",
                    &s.cluster_ip,
                    "may not be set to 'None' for NodePort services",
                );
            }
        }
        ip => {
            e.ipv4("spec.clusterIP", ip);
        }
    }
    if let Some(first) = s.cluster_ips.first()
        && *first != s.cluster_ip
    {
        e.invalid(
            "spec.clusterIPs[0]",
            first,
            format!("must match spec.clusterIP ({:?})", s.cluster_ip),
        );
    }
    if s.cluster_ips.len() > 1 {
        e.too_many(
            "spec.clusterIPs",
            s.cluster_ips.len(),
            1,
            "Skiff is IPv4 single-stack",
        );
    }
    for (i, ip) in s.cluster_ips.iter().enumerate().skip(1) {
        if ip != "None" {
            e.ipv4(format!("spec.clusterIPs[{i}]"), ip);
        }
    }
    e.one_of(
        "spec.sessionAffinity",
        &s.session_affinity,
        &["None", "ClientIP"],
        &[],
    );
    if s.session_affinity == "ClientIP" {
        let timeout = s
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        let path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
        match timeout {
            None => e.required(path, ""),
            Some(t) if !(1..=86_400).contains(&t) => e.invalid(
                path,
                t,
                "must be greater than 0 and less than or equal to 86400",
            ),
            Some(_) => {}
        }
    } else if s.session_affinity_config.is_some() {
        e.forbidden(
            "spec.sessionAffinityConfig",
            "may only be set when sessionAffinity is ClientIP",
        );
    }
    // Both policies' Local is served by the agent's proxy: only the node's own endpoints, and
    // for NodePorts the client's address kept.
    if !s.external_traffic_policy.is_empty() {
        if s.type_ == "ClusterIP" {
            e.invalid(
                "spec.externalTrafficPolicy",
                &s.external_traffic_policy,
                "may only be set for NodePort services",
            );
        } else {
            e.one_of(
                "spec.externalTrafficPolicy",
                &s.external_traffic_policy,
                &["Cluster", "Local"],
                &[],
            );
        }
    }
    if !s.internal_traffic_policy.is_empty() {
        e.one_of(
            "spec.internalTrafficPolicy",
            &s.internal_traffic_policy,
            &["Cluster", "Local"],
            &[],
        );
    }
    for (i, family) in s.ip_families.iter().enumerate() {
        if family != "IPv4" {
            e.unsupported(
                format!("spec.ipFamilies[{i}]"),
                family,
                &["IPv4"],
                &[("IPv6", IPV6_UNSUPPORTED)],
            );
        }
    }
    if s.ip_families.len() > 1 {
        e.too_many(
            "spec.ipFamilies",
            s.ip_families.len(),
            1,
            "Skiff is IPv4 single-stack",
        );
    }
    if !s.ip_family_policy.is_empty() && s.ip_family_policy != "SingleStack" {
        let note = "Skiff is IPv4 single-stack";
        e.unsupported(
            "spec.ipFamilyPolicy",
            &s.ip_family_policy,
            &["SingleStack"],
            &[("PreferDualStack", note), ("RequireDualStack", note)],
        );
    }
    e.labels("spec.selector", &s.selector);
}

fn service_port(p: &ServicePort, path: &str, s: &ServiceSpec, e: &mut Errors) {
    if p.name.is_empty() {
        if s.ports.len() > 1 {
            e.required(
                format!("{path}.name"),
                "a name is required when a Service has more than one port",
            );
        }
    } else if let Err(d) = dns1123_label(&p.name) {
        e.invalid(format!("{path}.name"), &p.name, d);
    }
    e.port_number(format!("{path}.port"), p.port);
    e.one_of(
        format!("{path}.protocol"),
        &p.protocol,
        PROTOCOLS,
        SCTP_UNSUPPORTED,
    );
    if let Some(t) = &p.target_port {
        e.port_number_or_name(format!("{path}.targetPort"), t);
    }
    // An unsupported type is reported once, at spec.type, not again for each node port.
    match (p.node_port, s.type_.as_str()) {
        (0, _) => {}
        (_, "NodePort") => e.port_number(format!("{path}.nodePort"), p.node_port),
        (_, "ClusterIP") => e.forbidden(
            format!("{path}.nodePort"),
            "may not be used when type is \"ClusterIP\"",
        ),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoints

fn endpoint_address(a: &EndpointAddress, path: &str, e: &mut Errors) {
    if let Some(ip) = e.ipv4(format!("{path}.ip"), &a.ip)
        && let Some(why) = special_ipv4(ip)
    {
        e.invalid(format!("{path}.ip"), &a.ip, why);
    }
    // Kubernetes gives a hostname meaning only through cluster DNS (a record under a headless
    // Service), which Skiff does not serve yet.
    if !a.hostname.is_empty() {
        e.forbidden(
            format!("{path}.hostname"),
            "endpoint hostnames are not supported yet: Skiff has no cluster DNS to answer for them",
        );
    }
    if let Some(node) = &a.node_name
        && !node.is_empty()
        && let Err(d) = dns1123_subdomain(node)
    {
        e.invalid(format!("{path}.nodeName"), node, d);
    }
}

fn endpoint_ports(ports: &[EndpointPort], path: &str, e: &mut Errors) {
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let ppath = format!("{path}[{i}]");
        if p.name.is_empty() {
            if ports.len() > 1 {
                e.required(
                    format!("{ppath}.name"),
                    "a name is required when there is more than one port",
                );
            }
        } else if let Err(d) = dns1123_label(&p.name) {
            e.invalid(format!("{ppath}.name"), &p.name, d);
        } else if !names.insert(p.name.as_str()) {
            e.duplicate(format!("{ppath}.name"), &p.name);
        }
        e.port_number(format!("{ppath}.port"), p.port);
        e.one_of(
            format!("{ppath}.protocol"),
            &p.protocol,
            PROTOCOLS,
            SCTP_UNSUPPORTED,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes

fn quantities(map: &BTreeMap<String, Quantity>, path: &str, e: &mut Errors) {
    for (k, q) in map {
        if let Err(d) = validate_label_key(k) {
            e.invalid(path, k, d);
        }
        if q.is_negative() {
            e.invalid(format!("{path}[{k}]"), q.as_str(), NON_NEGATIVE);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The kinds

impl Validate for Namespace {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Label, &mut e);
        // Deleting a namespace does what Kubernetes' own `kubernetes` finalizer stands for (its
        // contents go first); any other finalizer would be ignored, the namespace going without
        // waiting for whoever set it.
        for (i, f) in self.spec.finalizers.iter().enumerate() {
            let path = format!("spec.finalizers[{i}]");
            if f.is_empty() {
                e.required(path, "");
            } else if f != "kubernetes" {
                let why = "Skiff deletes a namespace once its contents are gone and waits for no other finalizer";
                e.unsupported(path, f, &["kubernetes"], &[(f, why)]);
            }
        }
        e.0
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata_update(&self.metadata, &old.metadata, &mut e);
        e.0
    }
}

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

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata_update(&self.metadata, &old.metadata, &mut e);
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

const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`, `spec.nodeName` (once, from empty) and `spec.tolerations` (only additions to existing tolerations)";

impl Validate for Pod {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Subdomain, &mut e);
        pod_spec(&self.spec, "spec", &mut e);
        e.0
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata_update(&self.metadata, &old.metadata, &mut e);
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

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata_update(&self.metadata, &old.metadata, &mut e);
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

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata_update(&self.metadata, &old.metadata, &mut e);
        selector_update(&self.spec.selector, &old.spec.selector, &mut e);
        e.0
    }
}

/// Skiff's own annotations on a Service.
fn service_annotations(meta: &ObjectMeta, e: &mut Errors) {
    let key = crate::kinds::MAGLEV_TABLE_SIZE_ANNOTATION;
    if let Some(v) = meta.annotations.get(key)
        && let Err(why) = crate::kinds::maglev_table_size(v)
    {
        e.invalid(format!("metadata.annotations[{key}]"), v, why);
    }
}

impl Validate for Service {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Rfc1035Label, &mut e);
        service_annotations(&self.metadata, &mut e);
        service_spec(&self.spec, &mut e);
        e.0
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata_update(&self.metadata, &old.metadata, &mut e);
        service_annotations(&self.metadata, &mut e);
        let (new, old) = (&self.spec, &old.spec);
        if !old.cluster_ip.is_empty() && new.cluster_ip != old.cluster_ip {
            e.invalid("spec.clusterIP", &new.cluster_ip, IMMUTABLE);
        }
        // Left empty, clusterIPs is filled from clusterIP when the address is assigned.
        if !old.cluster_ips.is_empty()
            && !new.cluster_ips.is_empty()
            && new.cluster_ips != old.cluster_ips
        {
            e.invalid("spec.clusterIPs", &new.cluster_ips, IMMUTABLE);
        }
        e.0
    }
}

impl Validate for Endpoints {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Subdomain, &mut e);
        for (i, s) in self.subsets.iter().enumerate() {
            let path = format!("subsets[{i}]");
            for (j, a) in s.addresses.iter().enumerate() {
                endpoint_address(a, &format!("{path}.addresses[{j}]"), &mut e);
            }
            for (j, a) in s.not_ready_addresses.iter().enumerate() {
                endpoint_address(a, &format!("{path}.notReadyAddresses[{j}]"), &mut e);
            }
            endpoint_ports(&s.ports, &format!("{path}.ports"), &mut e);
        }
        e.0
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata_update(&self.metadata, &old.metadata, &mut e);
        e.0
    }
}

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

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata_update(&self.metadata, &old.metadata, &mut e);
        e.0
    }
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use super::*;
    use crate::defaults::Defaults;

    #[test]
    fn uids_are_lower_case_hyphenated_uuids_and_nothing_else() {
        assert_eq!(uid("0e6d1c3a-5b7f-4c2e-9a1d-3f4b5c6d7e8f"), Ok(()));
        for bad in [
            "",
            "..",
            "../../tmp/x",
            "0e6d1c3a-5b7f-4c2e-9a1d-3f4b5c6d7e8f/..",
            "0E6D1C3A-5B7F-4C2E-9A1D-3F4B5C6D7E8F",
            "0e6d1c3a5b7f4c2e9a1d3f4b5c6d7e8f",
            "0e6d1c3a-5b7f-4c2e-9a1d-3f4b5c6d7e8",
            "0e6d1c3a-5b7f-4c2e-9a1d-3f4b5c6d7e8g",
            "0e6d1c3a-5b7f-4c2e-9a1d-3f4b5c6d7e8\0",
        ] {
            assert!(uid(bad).is_err(), "{bad:?} was accepted");
        }
    }

    /// Sets the value at a JSON pointer, creating missing mapping keys on the way.
    fn set(mut v: Value, pointer: &str, new: Value) -> Value {
        let mut cur = &mut v;
        for token in pointer.split('/').skip(1) {
            cur = match cur {
                Value::Array(items) => &mut items[token.parse::<usize>().expect("index")],
                other => other
                    .as_object_mut()
                    .expect("a mapping on the way")
                    .entry(token)
                    .or_insert(Value::Null),
            };
            if cur.is_null() {
                *cur = json!({});
            }
        }
        *cur = new;
        v
    }

    fn remove(mut v: Value, pointer: &str) -> Value {
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        v.pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .expect("parent mapping")
            .remove(key);
        v
    }

    fn decode<K: DeserializeOwned + Defaults>(v: Value) -> K {
        let mut k: K = serde_json::from_value(v).expect("decodes");
        k.apply_defaults();
        k
    }

    /// The errors of a defaulted object, as `path: message`.
    fn check<K: DeserializeOwned + Defaults + Validate>(v: Value) -> Vec<String> {
        decode::<K>(v)
            .validate()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn update_errors<K: DeserializeOwned + Defaults + Validate>(
        new: Value,
        old: Value,
    ) -> Vec<String> {
        decode::<K>(new)
            .validate_update(&decode::<K>(old))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[track_caller]
    fn assert_has(errors: &[String], expected: &str) {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "expected an error containing {expected:?}, got {errors:#?}"
        );
    }

    #[track_caller]
    fn assert_only(errors: &[String], expected: &str) {
        assert_eq!(
            errors.len(),
            1,
            "expected exactly one error, got {errors:#?}"
        );
        assert_has(errors, expected);
    }

    fn pod() -> Value {
        json!({
            "metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"containers": [{
                "name": "web",
                "image": "nginx:1.27",
                "ports": [{"name": "http", "containerPort": 80}],
                "env": [{"name": "MODE", "value": "prod"}],
                "resources": {
                    "requests": {"cpu": "250m", "memory": "64Mi"},
                    "limits": {"cpu": "500m", "memory": "128Mi"}
                },
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                "livenessProbe": {"tcpSocket": {"port": 80}}
            }]}
        })
    }

    fn pod_errors(v: Value) -> Vec<String> {
        check::<Pod>(v)
    }

    const C0: &str = "/spec/containers/0";

    fn replica_set() -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web", "tier": "front"}},
                    "spec": pod()["spec"].clone()
                }
            }
        })
    }

    fn deployment() -> Value {
        replica_set()
    }

    fn service() -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "selector": {"app": "web"},
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "metrics", "port": 9090, "targetPort": 9090}
                ]
            }
        })
    }

    fn endpoints() -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "10.244.1.5", "nodeName": "node-1"}],
                "notReadyAddresses": [{"ip": "10.244.2.7"}],
                "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]
            }]
        })
    }

    fn node() -> Value {
        json!({
            "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
            "spec": {
                "podCIDR": "10.244.1.0/24",
                "taints": [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]
            },
            "status": {
                "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "allocatable": {"cpu": "3800m", "memory": "7Gi"},
                "addresses": [
                    {"type": "InternalIP", "address": "10.250.0.2"},
                    {"type": "Hostname", "address": "node-1"}
                ]
            }
        })
    }

    fn lease() -> Value {
        json!({
            "metadata": {"name": "node-1", "namespace": "skiff-node-lease"},
            "spec": {
                "holderIdentity": "node-1",
                "leaseDurationSeconds": 40,
                "acquireTime": "2026-11-22T10:04:05.123456Z",
                "renewTime": "2026-11-22T10:05:05.000001Z",
                "leaseTransitions": 0
            }
        })
    }

    // --- Valid objects ---------------------------------------------------------------------

    #[test]
    fn typical_objects_of_every_kind_are_valid_after_defaults() {
        assert_eq!(pod_errors(pod()), Vec::<String>::new());
        assert_eq!(check::<ReplicaSet>(replica_set()), Vec::<String>::new());
        assert_eq!(check::<Deployment>(deployment()), Vec::<String>::new());
        assert_eq!(check::<Service>(service()), Vec::<String>::new());
        assert_eq!(check::<Endpoints>(endpoints()), Vec::<String>::new());
        assert_eq!(check::<Node>(node()), Vec::<String>::new());
        assert_eq!(check::<Lease>(lease()), Vec::<String>::new());
        assert_eq!(
            check::<Namespace>(json!({"metadata": {"name": "team-a"}})),
            Vec::<String>::new()
        );
    }

    #[test]
    fn objects_that_were_never_defaulted_are_reported_without_panicking() {
        for errors in [
            Pod::default().validate(),
            ReplicaSet::default().validate(),
            Deployment::default().validate(),
            Service::default().validate(),
            Endpoints::default().validate(),
            Node::default().validate(),
            Lease::default().validate(),
            Namespace::default().validate(),
        ] {
            assert!(
                errors.iter().any(|e| e.path == "metadata.name"),
                "{errors:?}"
            );
        }
        let raw: Pod = serde_json::from_value(pod()).expect("decodes");
        let errors: Vec<String> = raw.validate().iter().map(ToString::to_string).collect();
        assert_has(&errors, "spec.restartPolicy: Required value");
        assert_has(
            &errors,
            "spec.containers[0].ports[0].protocol: Required value",
        );
    }

    // --- Metadata --------------------------------------------------------------------------

    #[test]
    fn name_or_generate_name_is_required() {
        let errors = pod_errors(remove(pod(), "/metadata/name"));
        assert_only(
            &errors,
            "metadata.name: Required value: name or generateName is required",
        );
    }

    #[test]
    fn generate_name_alone_is_accepted_and_may_end_with_a_dash() {
        let v = set(
            remove(pod(), "/metadata/name"),
            "/metadata/generateName",
            json!("web-"),
        );
        assert_eq!(pod_errors(v), Vec::<String>::new());
    }

    #[test]
    fn generate_name_with_upper_case_is_refused() {
        let v = set(pod(), "/metadata/generateName", json!("Web-"));
        assert_only(
            &pod_errors(v),
            "metadata.generateName: Invalid value: \"Web-\"",
        );
    }

    #[test]
    fn uppercase_and_trailing_dash_names_are_not_dns_subdomains() {
        for name in ["Web", "web-", "-web", "web_1", "web..1"] {
            let errors = pod_errors(set(pod(), "/metadata/name", json!(name)));
            assert_only(
                &errors,
                &format!("metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain"),
            );
        }
        let long = "a".repeat(254);
        let errors = pod_errors(set(pod(), "/metadata/name", json!(long)));
        assert_has(&errors, "must be no more than 253 characters (is 254)");
        let dotted = "a.b.example.com";
        assert_eq!(
            pod_errors(set(pod(), "/metadata/name", json!(dotted))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn service_names_must_be_rfc_1035_labels_starting_with_a_letter() {
        let errors = check::<Service>(set(service(), "/metadata/name", json!("1web")));
        assert_only(
            &errors,
            "metadata.name: Invalid value: \"1web\": a DNS-1035 label",
        );
        let errors = check::<Service>(set(service(), "/metadata/name", json!("web.example")));
        assert_only(
            &errors,
            "metadata.name: Invalid value: \"web.example\": a DNS-1035 label",
        );
        let errors = check::<Service>(set(service(), "/metadata/name", json!("a".repeat(64))));
        assert_has(&errors, "must be no more than 63 characters");
    }

    #[test]
    fn namespace_names_are_labels_so_dots_are_refused() {
        let errors = check::<Namespace>(json!({"metadata": {"name": "team.a"}}));
        assert_only(
            &errors,
            "metadata.name: Invalid value: \"team.a\": a lowercase RFC 1123 label",
        );
        let errors = check::<Namespace>(json!({"metadata": {"name": "1team"}}));
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn metadata_namespace_must_be_a_label() {
        let errors = pod_errors(set(pod(), "/metadata/namespace", json!("Team_A")));
        assert_only(&errors, "metadata.namespace: Invalid value: \"Team_A\"");
    }

    #[test]
    fn invalid_label_keys_and_values_are_reported_with_their_paths() {
        let v = set(
            pod(),
            "/metadata/labels",
            json!({"app": "web", "bad key": "x", "tier": "-front", "Example.com/a": "b"}),
        );
        let errors = pod_errors(v);
        assert_has(
            &errors,
            "metadata.labels: Invalid value: \"bad key\": name part must consist",
        );
        assert_has(
            &errors,
            "metadata.labels[tier]: Invalid value: \"-front\": a label value must",
        );
        assert_has(
            &errors,
            "metadata.labels: Invalid value: \"Example.com/a\": prefix part",
        );
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }

    #[test]
    fn annotation_keys_may_have_upper_case_but_must_be_qualified_names() {
        let v = set(
            pod(),
            "/metadata/annotations",
            json!({"Example.com/Note": "anything at all: {}", "a/b/c": "x"}),
        );
        assert_only(
            &pod_errors(v),
            "metadata.annotations: Invalid value: \"a/b/c\"",
        );
    }

    #[test]
    fn annotations_over_256_kib_in_total_are_too_long() {
        let half = "x".repeat(130 * 1024);
        let v = set(
            pod(),
            "/metadata/annotations",
            json!({"a": half, "b": half}),
        );
        assert_only(
            &pod_errors(v),
            "metadata.annotations: Too long: may not be more than 262144 bytes",
        );
        let fits = "x".repeat(255 * 1024);
        let v = set(pod(), "/metadata/annotations", json!({"a": fits}));
        assert_eq!(pod_errors(v), Vec::<String>::new());
    }

    #[test]
    fn owner_references_need_every_identifying_field() {
        let v = set(
            pod(),
            "/metadata/ownerReferences",
            json!([{"apiVersion": "apps/v1", "kind": "", "name": "web", "uid": ""}]),
        );
        let errors = pod_errors(v);
        assert_has(&errors, "metadata.ownerReferences[0].kind: Required value");
        assert_has(&errors, "metadata.ownerReferences[0].uid: Required value");
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn only_one_owner_reference_may_be_the_controller() {
        let owner = |name: &str| json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": name, "controller": true});
        let v = set(
            pod(),
            "/metadata/ownerReferences",
            json!([owner("a"), owner("b")]),
        );
        assert_only(
            &pod_errors(v),
            "metadata.ownerReferences[1].controller: Forbidden: only one owner reference may have controller set to true",
        );
    }

    #[test]
    fn every_problem_is_reported_not_only_the_first() {
        let v = set(pod(), "/metadata/name", json!("Bad"));
        let v = set(v, &format!("{C0}/ports/0/containerPort"), json!(70000));
        let v = set(v, &format!("{C0}/image"), json!(""));
        let v = set(v, "/spec/restartPolicy", json!("Sometimes"));
        let errors = pod_errors(v);
        assert_eq!(errors.len(), 4, "{errors:#?}");
    }

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

    // --- Services --------------------------------------------------------------------------

    fn svc_errors(v: Value) -> Vec<String> {
        check::<Service>(v)
    }

    #[test]
    fn load_balancer_and_external_name_services_are_unsupported_and_say_why() {
        let errors = svc_errors(set(service(), "/spec/type", json!("LoadBalancer")));
        assert_only(
            &errors,
            "spec.type: Unsupported value: \"LoadBalancer\": supported values: \"ClusterIP\", \"NodePort\"; Skiff has no load balancer integration",
        );
        let errors = svc_errors(set(service(), "/spec/type", json!("ExternalName")));
        assert_only(&errors, "does not serve ExternalName Services");
    }

    #[test]
    fn an_unsupported_type_is_reported_once_not_again_for_its_node_ports() {
        let v = set(service(), "/spec/type", json!("LoadBalancer"));
        let v = set(v, "/spec/ports/0/nodePort", json!(30080));
        assert_only(
            &svc_errors(v.clone()),
            "spec.type: Unsupported value: \"LoadBalancer\"",
        );
        // Local is a supported policy: only the type is refused.
        let errors = svc_errors(set(v, "/spec/externalTrafficPolicy", json!("Local")));
        assert_only(&errors, "spec.type: Unsupported value: \"LoadBalancer\"");
    }

    #[test]
    fn ports_are_required_unless_the_service_is_headless() {
        let errors = svc_errors(set(service(), "/spec/ports", json!([])));
        assert_only(&errors, "spec.ports: Required value");
        let v = set(
            set(service(), "/spec/ports", json!([])),
            "/spec/clusterIP",
            json!("None"),
        );
        assert_eq!(svc_errors(v), Vec::<String>::new());
    }

    #[test]
    fn service_port_names_are_required_with_several_ports_and_must_be_unique_labels() {
        let errors = svc_errors(remove(service(), "/spec/ports/1/name"));
        assert_only(&errors, "spec.ports[1].name: Required value");
        let errors = svc_errors(set(service(), "/spec/ports/1/name", json!("http")));
        assert_only(&errors, "spec.ports[1].name: Duplicate value: \"http\"");
        let errors = svc_errors(set(service(), "/spec/ports/1/name", json!("Metrics")));
        assert_only(&errors, "spec.ports[1].name: Invalid value: \"Metrics\"");
        let single = set(service(), "/spec/ports", json!([{"port": 80}]));
        assert_eq!(svc_errors(single), Vec::<String>::new());
    }

    #[test]
    fn duplicate_service_port_and_protocol_is_refused_but_tcp_and_udp_may_share() {
        let errors = svc_errors(set(service(), "/spec/ports/1/port", json!(80)));
        assert_only(&errors, "spec.ports[1]: Duplicate value: \"80/TCP\"");
        let v = set(
            set(service(), "/spec/ports/1/port", json!(80)),
            "/spec/ports/1/protocol",
            json!("UDP"),
        );
        assert_eq!(svc_errors(v), Vec::<String>::new());
    }

    #[test]
    fn service_port_numbers_and_protocols_are_checked() {
        let errors = svc_errors(set(service(), "/spec/ports/0/port", json!(0)));
        assert_has(
            &errors,
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        );
        let errors = svc_errors(set(service(), "/spec/ports/0/protocol", json!("SCTP")));
        assert_only(
            &errors,
            "spec.ports[0].protocol: Unsupported value: \"SCTP\"",
        );
    }

    #[test]
    fn target_port_is_a_number_in_range_or_a_port_name() {
        let errors = svc_errors(set(service(), "/spec/ports/1/targetPort", json!(70000)));
        assert_only(
            &errors,
            "spec.ports[1].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        );
        let errors = svc_errors(set(
            service(),
            "/spec/ports/1/targetPort",
            json!("metrics_port"),
        ));
        assert_only(
            &errors,
            "spec.ports[1].targetPort: Invalid value: \"metrics_port\"",
        );
    }

    #[test]
    fn node_port_is_forbidden_on_cluster_ip_services() {
        let errors = svc_errors(set(service(), "/spec/ports/0/nodePort", json!(30080)));
        assert_only(
            &errors,
            "spec.ports[0].nodePort: Forbidden: may not be used when type is \"ClusterIP\"",
        );
    }

    #[test]
    fn node_ports_are_in_range_and_unique_per_protocol() {
        let v = set(service(), "/spec/type", json!("NodePort"));
        let v = set(v, "/spec/ports/0/nodePort", json!(30080));
        assert_eq!(svc_errors(v.clone()), Vec::<String>::new());
        let errors = svc_errors(set(v.clone(), "/spec/ports/1/nodePort", json!(30080)));
        assert_only(&errors, "spec.ports[1].nodePort: Duplicate value: 30080");
        let errors = svc_errors(set(v, "/spec/ports/1/nodePort", json!(70000)));
        assert_only(&errors, "spec.ports[1].nodePort: Invalid value: 70000");
    }

    #[test]
    fn cluster_ip_is_empty_none_or_an_ipv4_address() {
        for ok in ["", "None", "10.96.0.10"] {
            let v = set(service(), "/spec/clusterIP", json!(ok));
            assert_eq!(svc_errors(v), Vec::<String>::new(), "{ok}");
        }
        let errors = svc_errors(set(service(), "/spec/clusterIP", json!("10.96.0.300")));
        assert_only(
            &errors,
            "spec.clusterIP: Invalid value: \"10.96.0.300\": must be a valid IPv4 address",
        );
        let errors = svc_errors(set(service(), "/spec/clusterIP", json!("fd00::10")));
        assert_only(
            &errors,
            "spec.clusterIP: Invalid value: \"fd00::10\": IPv6 is not supported",
        );
    }

    #[test]
    fn headless_node_port_services_are_refused() {
        let v = set(
            set(service(), "/spec/type", json!("NodePort")),
            "/spec/clusterIP",
            json!("None"),
        );
        assert_only(
            &svc_errors(v),
            "spec.clusterIP: Invalid value: \"None\": may not be set to 'None' for NodePort services",
        );
    }

    #[test]
    fn cluster_ips_must_start_with_cluster_ip_and_hold_one_address() {
        let v = set(service(), "/spec/clusterIP", json!("10.96.0.10"));
        assert_eq!(
            svc_errors(set(v.clone(), "/spec/clusterIPs", json!(["10.96.0.10"]))),
            Vec::<String>::new()
        );
        let errors = svc_errors(set(v.clone(), "/spec/clusterIPs", json!(["10.96.0.11"])));
        assert_only(
            &errors,
            "spec.clusterIPs[0]: Invalid value: \"10.96.0.11\": must match spec.clusterIP",
        );
        let errors = svc_errors(set(
            v,
            "/spec/clusterIPs",
            json!(["10.96.0.10", "fd00::10"]),
        ));
        assert_has(
            &errors,
            "spec.clusterIPs: Too many: 2: must have at most 1 items",
        );
        assert_has(
            &errors,
            "spec.clusterIPs[1]: Invalid value: \"fd00::10\": IPv6 is not supported",
        );
    }

    #[test]
    fn session_affinity_config_only_with_client_ip_and_a_sane_timeout() {
        let errors = svc_errors(set(service(), "/spec/sessionAffinity", json!("Cookie")));
        assert_only(
            &errors,
            "spec.sessionAffinity: Unsupported value: \"Cookie\": supported values: \"None\", \"ClientIP\"",
        );
        let v = set(
            service(),
            "/spec/sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": 60}}),
        );
        assert_only(
            &svc_errors(v),
            "spec.sessionAffinityConfig: Forbidden: may only be set when sessionAffinity is ClientIP",
        );
        let v = set(service(), "/spec/sessionAffinity", json!("ClientIP"));
        assert_eq!(svc_errors(v.clone()), Vec::<String>::new());
        for bad in [0, 86_401] {
            let v = set(
                v.clone(),
                "/spec/sessionAffinityConfig",
                json!({"clientIP": {"timeoutSeconds": bad}}),
            );
            assert_only(
                &svc_errors(v),
                &format!(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: {bad}: must be greater than 0 and less than or equal to 86400"
                ),
            );
        }
    }

    #[test]
    fn the_maglev_table_size_annotation_must_be_a_prime_in_range() {
        for (value, why) in [
            ("1000", "must be a prime"),
            ("13", "must be between 251 and 131071"),
            ("big", "must be a whole number"),
        ] {
            let v = set(
                service(),
                "/metadata/annotations",
                json!({"skiff.io/maglev-table-size": value}),
            );
            let errors = svc_errors(v);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].starts_with(&format!(
                    "metadata.annotations[skiff.io/maglev-table-size]: Invalid value: \"{value}\""
                )) && errors[0].contains(why),
                "{errors:?}"
            );
        }
        let v = set(
            service(),
            "/metadata/annotations",
            json!({"skiff.io/maglev-table-size": "1021"}),
        );
        assert!(svc_errors(v).is_empty());
    }

    #[test]
    fn external_traffic_policy_is_only_for_node_port_services() {
        for policy in ["Cluster", "Local"] {
            let errors = svc_errors(set(service(), "/spec/externalTrafficPolicy", json!(policy)));
            assert_only(
                &errors,
                &format!(
                    "spec.externalTrafficPolicy: Invalid value: {policy:?}: may only be set for NodePort services"
                ),
            );
        }
        let v = set(service(), "/spec/type", json!("NodePort"));
        let errors = svc_errors(set(v, "/spec/externalTrafficPolicy", json!("Anywhere")));
        assert_only(
            &errors,
            "spec.externalTrafficPolicy: Unsupported value: \"Anywhere\": supported values: \"Cluster\"",
        );
    }

    #[test]
    fn node_port_services_get_external_and_internal_policy_cluster_and_pass() {
        let v = set(service(), "/spec/type", json!("NodePort"));
        let svc = decode::<Service>(v.clone());
        assert_eq!(svc.spec.external_traffic_policy, "Cluster");
        assert_eq!(svc.spec.internal_traffic_policy, "Cluster");
        assert_eq!(svc_errors(v.clone()), Vec::<String>::new());
        let v = set(v, "/spec/externalTrafficPolicy", json!("Cluster"));
        let v = set(v, "/spec/internalTrafficPolicy", json!("Cluster"));
        assert_eq!(svc_errors(v), Vec::<String>::new());
    }

    #[test]
    fn external_traffic_policy_local_is_accepted_for_node_port_services() {
        let v = set(service(), "/spec/type", json!("NodePort"));
        let errors = svc_errors(set(v, "/spec/externalTrafficPolicy", json!("Local")));
        assert_eq!(errors, Vec::<String>::new());
        let errors = svc_errors(set(
            service(),
            "/spec/externalTrafficPolicy",
            json!("Local"),
        ));
        assert_only(
            &errors,
            "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for NodePort services",
        );
    }

    #[test]
    fn internal_traffic_policy_local_is_accepted_and_other_values_are_not() {
        for type_ in ["ClusterIP", "NodePort"] {
            let v = set(service(), "/spec/type", json!(type_));
            let errors = svc_errors(set(v, "/spec/internalTrafficPolicy", json!("Local")));
            assert_eq!(errors, Vec::<String>::new(), "{type_}");
        }
        let errors = svc_errors(set(service(), "/spec/internalTrafficPolicy", json!("Node")));
        assert_only(
            &errors,
            "spec.internalTrafficPolicy: Unsupported value: \"Node\": supported values: \"Cluster\", \"Local\"",
        );
    }

    #[test]
    fn only_single_stack_ipv4_is_supported() {
        let errors = svc_errors(set(service(), "/spec/ipFamilies", json!(["IPv6"])));
        assert_only(
            &errors,
            "spec.ipFamilies[0]: Unsupported value: \"IPv6\": supported values: \"IPv4\"; IPv6 is not supported",
        );
        let errors = svc_errors(set(service(), "/spec/ipFamilies", json!(["IPv4", "IPv4"])));
        assert_only(&errors, "spec.ipFamilies: Too many: 2");
        let errors = svc_errors(set(
            service(),
            "/spec/ipFamilyPolicy",
            json!("PreferDualStack"),
        ));
        assert_only(
            &errors,
            "spec.ipFamilyPolicy: Unsupported value: \"PreferDualStack\": supported values: \"SingleStack\"; Skiff is IPv4 single-stack",
        );
    }

    #[test]
    fn service_selector_follows_label_syntax() {
        let errors = svc_errors(set(
            service(),
            "/spec/selector",
            json!({"app": "web server"}),
        ));
        assert_only(&errors, "spec.selector[app]: Invalid value: \"web server\"");
    }

    // --- Endpoints -------------------------------------------------------------------------

    #[test]
    fn endpoint_addresses_are_ordinary_ipv4_addresses() {
        for (ip, why) in [
            ("10.244.1", "must be a valid IPv4 address"),
            ("fd00::5", "IPv6 is not supported"),
            ("127.0.0.1", "may not be in the loopback range"),
            ("169.254.169.254", "may not be in the link-local range"),
            ("0.0.0.0", "may not be unspecified"),
            ("224.0.0.1", "may not be a multicast address"),
        ] {
            let v = set(endpoints(), "/subsets/0/addresses/0/ip", json!(ip));
            assert_only(
                &check::<Endpoints>(v),
                &format!("subsets[0].addresses[0].ip: Invalid value: {ip:?}: {why}"),
            );
        }
        let v = set(endpoints(), "/subsets/0/notReadyAddresses/0/ip", json!("x"));
        assert_only(
            &check::<Endpoints>(v),
            "subsets[0].notReadyAddresses[0].ip: Invalid value: \"x\"",
        );
    }

    #[test]
    fn endpoint_node_names_are_dns_names() {
        let v = set(
            endpoints(),
            "/subsets/0/addresses/0/nodeName",
            json!("Node 1"),
        );
        assert_only(
            &check::<Endpoints>(v),
            "subsets[0].addresses[0].nodeName: Invalid value: \"Node 1\"",
        );
    }

    #[test]
    fn endpoint_hostnames_are_refused_until_cluster_dns_serves_them() {
        let v = set(
            endpoints(),
            "/subsets/0/addresses/0/hostname",
            json!("web-0"),
        );
        let v = set(v, "/subsets/0/notReadyAddresses/0/hostname", json!("web-1"));
        let errors = check::<Endpoints>(v);
        for path in [
            "subsets[0].addresses[0].hostname",
            "subsets[0].notReadyAddresses[0].hostname",
        ] {
            assert_has(
                &errors,
                &format!(
                    "{path}: Forbidden: endpoint hostnames are not supported yet: Skiff has no cluster DNS to answer for them"
                ),
            );
        }
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn endpoint_ports_are_checked_and_named_uniquely_when_several() {
        let errors = check::<Endpoints>(set(endpoints(), "/subsets/0/ports/1/port", json!(0)));
        assert_only(
            &errors,
            "subsets[0].ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        );
        let errors = check::<Endpoints>(set(
            endpoints(),
            "/subsets/0/ports/1/protocol",
            json!("SCTP"),
        ));
        assert_only(
            &errors,
            "subsets[0].ports[1].protocol: Unsupported value: \"SCTP\"",
        );
        let errors = check::<Endpoints>(set(endpoints(), "/subsets/0/ports/1/name", json!("http")));
        assert_only(
            &errors,
            "subsets[0].ports[1].name: Duplicate value: \"http\"",
        );
        let errors = check::<Endpoints>(remove(endpoints(), "/subsets/0/ports/1/name"));
        assert_only(&errors, "subsets[0].ports[1].name: Required value");
        let errors = check::<Endpoints>(set(
            endpoints(),
            "/subsets/0/ports/1/name",
            json!("Metrics"),
        ));
        assert_only(
            &errors,
            "subsets[0].ports[1].name: Invalid value: \"Metrics\"",
        );
        let single = set(endpoints(), "/subsets/0/ports", json!([{"port": 8080}]));
        assert_eq!(check::<Endpoints>(single), Vec::<String>::new());
    }

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
    fn namespace_finalizers_other_than_kubernetes_are_refused() {
        let ns = |finalizers: Value| {
            check::<Namespace>(json!({
                "metadata": {"name": "team-a"},
                "spec": {"finalizers": finalizers}
            }))
        };
        assert_eq!(ns(json!(["kubernetes"])), Vec::<String>::new());
        assert_only(
            &ns(json!(["kubernetes", "example.com/backup"])),
            "spec.finalizers[1]: Unsupported value: \"example.com/backup\": supported values: \"kubernetes\"; Skiff deletes a namespace once its contents are gone and waits for no other finalizer",
        );
        assert_only(&ns(json!([""])), "spec.finalizers[0]: Required value");
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

    // --- Updates ---------------------------------------------------------------------------

    #[test]
    fn names_and_namespaces_are_immutable_for_every_kind() {
        let errors = update_errors::<Namespace>(
            json!({"metadata": {"name": "b"}}),
            json!({"metadata": {"name": "a"}}),
        );
        assert_only(
            &errors,
            "metadata.name: Invalid value: \"b\": field is immutable",
        );
        let errors =
            update_errors::<Lease>(set(lease(), "/metadata/namespace", json!("other")), lease());
        assert_only(
            &errors,
            "metadata.namespace: Invalid value: \"other\": field is immutable",
        );
        let errors = update_errors::<Endpoints>(
            set(endpoints(), "/metadata/name", json!("api")),
            endpoints(),
        );
        assert_only(
            &errors,
            "metadata.name: Invalid value: \"api\": field is immutable",
        );
        assert_eq!(
            update_errors::<Lease>(set(lease(), "/spec/leaseTransitions", json!(3)), lease()),
            Vec::<String>::new()
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

    #[test]
    fn service_cluster_ip_is_immutable_once_set_but_type_may_change() {
        let old = set(service(), "/spec/clusterIP", json!("10.96.0.10"));
        let errors = update_errors::<Service>(
            set(old.clone(), "/spec/clusterIP", json!("10.96.0.11")),
            old.clone(),
        );
        assert_only(
            &errors,
            "spec.clusterIP: Invalid value: \"10.96.0.11\": field is immutable",
        );
        let errors = update_errors::<Service>(
            set(old.clone(), "/spec/clusterIP", json!("None")),
            old.clone(),
        );
        assert_only(
            &errors,
            "spec.clusterIP: Invalid value: \"None\": field is immutable",
        );
        let headless = set(service(), "/spec/clusterIP", json!("None"));
        let errors = update_errors::<Service>(old.clone(), headless);
        assert_only(
            &errors,
            "spec.clusterIP: Invalid value: \"10.96.0.10\": field is immutable",
        );
        assert_eq!(
            update_errors::<Service>(old.clone(), service()),
            Vec::<String>::new()
        );
        let node_port = set(old.clone(), "/spec/type", json!("NodePort"));
        assert_eq!(
            update_errors::<Service>(node_port, old.clone()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn service_update_naming_only_cluster_ip_keeps_the_stored_cluster_ips() {
        let old = set(service(), "/spec/clusterIP", json!("10.96.0.10"));
        // As stored: the allocator filled clusterIPs in after validation.
        let stored = set(old.clone(), "/spec/clusterIPs", json!(["10.96.0.10"]));
        assert_eq!(
            update_errors::<Service>(old.clone(), stored.clone()),
            Vec::<String>::new()
        );
        let grown = set(old, "/spec/clusterIPs", json!(["10.96.0.10", "10.96.0.11"]));
        assert_has(
            &update_errors::<Service>(grown, stored),
            "spec.clusterIPs: Invalid value: [\"10.96.0.10\", \"10.96.0.11\"]: field is immutable",
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
