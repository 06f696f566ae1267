//! Semantic validation of objects: every problem found, each naming its field path, in
//! Kubernetes' message shapes (`spec.ports[1].name: Duplicate value: "http"`).
//!
//! Decoding has already refused unknown fields and wrong types; this module checks what the types
//! cannot express. The API server applies defaults first, so the checks may assume them (a
//! defaulted field left empty is reported as `Required value`), but they never panic on an object
//! that was not defaulted.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use crate::{
    kinds::IntOrString,
    meta::ObjectMeta,
    object::{FieldError, Kind},
    quantity::Quantity,
    selector::{validate_label_key, validate_label_value},
};

mod configmap;
mod endpoints;
mod lease;
mod namespace;
mod node;
mod pod;
mod secret;
mod security;
mod service;
mod volume;
mod workload;

pub use self::configmap::config_key;

/// Checks an object on its own and against the stored version on update.
pub trait Validate: Kind {
    /// Every problem found; empty when the object is valid.
    fn validate(&self) -> Vec<FieldError>;
    /// Problems with changing `old` into `self`: the metadata every kind keeps (name,
    /// namespace, uid, creation time, ...), then the kind's own [`Validate::update_rules`].
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata_update(self.meta(), old.meta(), &mut e);
        e.0.extend(self.update_rules(old));
        e.0
    }
    /// The kind's own fields that may not change, or change only in some ways (none by
    /// default).
    fn update_rules(&self, _old: &Self) -> Vec<FieldError> {
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

/// An environment variable name (or `envFrom` prefix) as Kubernetes 1.32 accepts it: not
/// empty, printable ASCII other than `=` (its `RelaxedEnvironmentVariableValidation`, on by
/// default since 1.32). Kubelet applies the same rule to the names `envFrom` makes.
pub fn is_env_var_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_graphic() || c == b' ') && !s.contains('=')
}

/// [`is_env_var_name`], with the API's message.
fn env_var_name(s: &str) -> Result<(), String> {
    if is_env_var_name(s) {
        Ok(())
    } else {
        Err("a valid environment variable name must consist only of printable ASCII characters other than '='".into())
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
// Quantities

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

#[cfg(test)]
mod test_util {
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use super::Validate;
    use crate::{defaults::Defaults, kinds::Pod};

    /// Sets the value at a JSON pointer, creating missing mapping keys on the way.
    pub(super) fn set(mut v: Value, pointer: &str, new: Value) -> Value {
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

    pub(super) fn remove(mut v: Value, pointer: &str) -> Value {
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        v.pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .expect("parent mapping")
            .remove(key);
        v
    }

    pub(super) fn decode<K: DeserializeOwned + Defaults>(v: Value) -> K {
        let mut k: K = serde_json::from_value(v).expect("decodes");
        k.apply_defaults();
        k
    }

    /// The errors of a defaulted object, as `path: message`.
    pub(super) fn check<K: DeserializeOwned + Defaults + Validate>(v: Value) -> Vec<String> {
        decode::<K>(v)
            .validate()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    pub(super) fn update_errors<K: DeserializeOwned + Defaults + Validate>(
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
    pub(super) fn assert_has(errors: &[String], expected: &str) {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "expected an error containing {expected:?}, got {errors:#?}"
        );
    }

    #[track_caller]
    pub(super) fn assert_only(errors: &[String], expected: &str) {
        assert_eq!(
            errors.len(),
            1,
            "expected exactly one error, got {errors:#?}"
        );
        assert_has(errors, expected);
    }

    pub(super) fn pod() -> Value {
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

    pub(super) fn pod_errors(v: Value) -> Vec<String> {
        check::<Pod>(v)
    }

    pub(super) const C0: &str = "/spec/containers/0";

    pub(super) fn replica_set() -> Value {
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

    pub(super) fn deployment() -> Value {
        replica_set()
    }

    pub(super) fn service() -> Value {
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

    pub(super) fn endpoints() -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "10.244.1.5", "nodeName": "node-1"}],
                "notReadyAddresses": [{"ip": "10.244.2.7"}],
                "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]
            }]
        })
    }

    pub(super) fn node() -> Value {
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

    pub(super) fn lease() -> Value {
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
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{test_util::*, *};
    use crate::kinds::{Deployment, Endpoints, Lease, Namespace, Node, Pod, ReplicaSet, Service};

    #[test]
    fn env_var_names_follow_the_relaxed_rule_kubelet_also_applies_to_env_from_keys() {
        for ok in [
            "A",
            "a_b",
            "-x",
            ".x",
            "X1",
            "my.key-2",
            "1st",
            "Logging:LogLevel",
            "a b",
        ] {
            assert!(is_env_var_name(ok), "{ok}");
        }
        for bad in ["", "a=b", "ü", "tab\there"] {
            assert!(!is_env_var_name(bad), "{bad}");
        }
    }

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
}
