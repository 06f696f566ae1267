//! A container's environment as kubelet makes it: `envFrom` (with `prefix`), `env` with
//! `$(VAR)` references and `valueFrom` (ConfigMap and Secret keys, the downward API's
//! `fieldRef` and `resourceFieldRef`), and the Service variables, then `$(VAR)` in `command` and
//! `args`. Pure functions over the pod, the container, a lookup of the pod's ConfigMaps and
//! Secrets, the Services and the pod's addresses; a missing non-optional reference is an error
//! worded as kubelet words it (the container's `CreateContainerConfigError` message).

use std::collections::{BTreeMap, BTreeSet};

use skiff_api::{
    kinds::{Container, EnvVar, ObjectFieldSelector, Pod, ResourceFieldSelector, Service},
    quantity::Quantity,
    validate,
};

/// The namespace whose `kubernetes` Service every pod gets variables for.
const MASTER_SERVICE_NAMESPACE: &str = "default";
/// The Services of [`MASTER_SERVICE_NAMESPACE`] that every pod gets variables for.
const MASTER_SERVICES: &[&str] = &["kubernetes"];

/// Why a container's environment cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A non-optional ConfigMap is absent.
    #[error("configmap {name:?} not found")]
    ConfigMapNotFound { name: String },
    /// A non-optional key is absent from a ConfigMap.
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        key: String,
        namespace: String,
        name: String,
    },
    /// A non-optional Secret is absent.
    #[error("secret {name:?} not found")]
    SecretNotFound { name: String },
    /// A non-optional key is absent from a Secret.
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        key: String,
        namespace: String,
        name: String,
    },
    /// A Secret value that is not UTF-8. kubelet passes the bytes on; the runtime's
    /// environment is a list of strings, so Skiff cannot without changing them, and refuses.
    #[error(
        "couldn't use key {key} in Secret {namespace}/{name} as an environment variable: its value is not valid UTF-8"
    )]
    SecretValueNotUtf8 {
        key: String,
        namespace: String,
        name: String,
    },
    /// A `fieldRef` path the downward API does not offer.
    #[error("unsupported fieldPath: {0}")]
    UnsupportedFieldPath(String),
    /// A `resourceFieldRef` resource the downward API does not offer.
    #[error("unsupported container resource : {0}")]
    UnsupportedResource(String),
    /// A `resourceFieldRef` names a container the pod does not have.
    #[error("container {0} not found")]
    ContainerNotFound(String),
    /// A `resourceFieldRef` divisor of zero or less.
    #[error("invalid divisor {0:?}: must be greater than zero")]
    InvalidDivisor(String),
    /// The ConfigMap or Secret could not be read (not a "not found").
    #[error("{0}")]
    Lookup(String),
}

/// The pod's ConfigMaps and Secrets, by name, in the pod's namespace. `Ok(None)`: absent.
pub trait Objects {
    /// ConfigMap `name`'s `data`.
    fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, EnvError>;
    /// Secret `name`'s `data` (decoded).
    fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, EnvError>;
}

/// The node's allocatable resources (the value of a `limits.*` resourceFieldRef of a
/// container without that limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocatable {
    /// CPU in millicores.
    pub cpu_millis: i128,
    /// Memory in bytes.
    pub memory: i128,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i128,
}

/// What the node knows of the pod beyond its object: its addresses and the node's
/// allocatable resources (the value of a `limits.*` resourceFieldRef with no limit set).
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    /// The pod's IPs, primary first (from its network, which the status may not show yet).
    pub pod_ips: Vec<String>,
    /// The node's IPs, primary first.
    pub host_ips: Vec<String>,
    /// Node allocatable CPU in millicores.
    pub allocatable_cpu_millis: i128,
    /// Node allocatable memory in bytes.
    pub allocatable_memory: i128,
    /// Node allocatable ephemeral storage in bytes.
    pub allocatable_ephemeral_storage: i128,
}

/// A container's environment, in order, and the keys `envFrom` skipped (kubelet's
/// `InvalidEnvironmentVariableNames` warning event lists them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// `NAME=value` pairs: `envFrom`'s, then `env`'s in declaration order (a name set again
    /// keeps its first place and takes the later value), then the Service variables.
    pub vars: Vec<(String, String)>,
    /// Per `envFrom` source: the message of kubelet's warning event for the keys it skipped.
    pub skipped: Vec<String>,
}

impl Environment {
    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `K=V` strings for a runtime spec.
    pub fn to_strings(&self) -> Vec<String> {
        self.vars.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// An ordered map: insertion order kept, a later set replaces the value in place.
#[derive(Default)]
struct Ordered {
    vars: Vec<(String, String)>,
}

impl Ordered {
    fn set(&mut self, k: String, v: String) {
        match self.vars.iter_mut().find(|(n, _)| *n == k) {
            Some(e) => e.1 = v,
            None => self.vars.push((k, v)),
        }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// The environment of `container` of `pod` (an init or app container), as kubelet makes it.
/// `services` are the Services the node knows (those for which [`service_may_apply`] holds
/// are picked out here).
pub fn environment(
    pod: &Pod,
    container: &Container,
    objects: &dyn Objects,
    services: &[Service],
    facts: &PodFacts,
) -> Result<Environment, EnvError> {
    let namespace = pod.metadata.namespace.as_str();
    let enable_links = pod.spec.enable_service_links.unwrap_or(true);
    let service_env = service_variables(namespace, enable_links, services);
    let mut env = Ordered::default();
    let mut skipped = Vec::new();
    let mut config_maps: BTreeMap<String, Option<BTreeMap<String, String>>> = BTreeMap::new();
    let mut secrets: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>> = BTreeMap::new();

    for from in &container.env_from {
        if let Some(cm) = &from.config_map_ref {
            let optional = cm.optional.unwrap_or(false);
            let Some(data) = cached_config_map(&mut config_maps, objects, &cm.name)? else {
                if optional {
                    continue;
                }
                return Err(EnvError::ConfigMapNotFound {
                    name: cm.name.clone(),
                });
            };
            let mut invalid = Vec::new();
            for (k, v) in data {
                let name = format!("{}{k}", from.prefix);
                if validate::is_env_var_name(&name) {
                    env.set(name, v);
                } else {
                    invalid.push(name);
                }
            }
            if !invalid.is_empty() {
                invalid.sort();
                skipped.push(format!(
                    "Keys [{}] from the EnvFrom configMap {namespace}/{} were skipped since they are considered invalid environment variable names.",
                    invalid.join(", "),
                    cm.name
                ));
            }
        }
        if let Some(s) = &from.secret_ref {
            let optional = s.optional.unwrap_or(false);
            let Some(data) = cached_secret(&mut secrets, objects, &s.name)? else {
                if optional {
                    continue;
                }
                return Err(EnvError::SecretNotFound {
                    name: s.name.clone(),
                });
            };
            let mut invalid = Vec::new();
            for (k, v) in data {
                let name = format!("{}{k}", from.prefix);
                if validate::is_env_var_name(&name) {
                    let value = secret_text(v, &k, namespace, &s.name)?;
                    env.set(name, value);
                } else {
                    invalid.push(name);
                }
            }
            if !invalid.is_empty() {
                invalid.sort();
                skipped.push(format!(
                    "Keys [{}] from the EnvFrom secret {namespace}/{} were skipped since they are considered invalid environment variable names.",
                    invalid.join(", "),
                    s.name
                ));
            }
        }
    }

    for var in &container.env {
        let Some(value) = env_value(
            pod,
            container,
            var,
            &env,
            &service_env,
            objects,
            facts,
            &mut config_maps,
            &mut secrets,
        )?
        else {
            continue;
        };
        env.set(var.name.clone(), value);
    }

    for (k, v) in service_env.vars {
        if env.get(&k).is_none() {
            env.vars.push((k, v));
        }
    }
    Ok(Environment {
        vars: env.vars,
        skipped,
    })
}

/// The value of one `env` entry; `None` when an optional reference is absent (the variable
/// is then not set at all).
#[expect(
    clippy::too_many_arguments,
    reason = "the inputs of one step of `environment`, with its two caches"
)]
fn env_value(
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    env: &Ordered,
    service_env: &Ordered,
    objects: &dyn Objects,
    facts: &PodFacts,
    config_maps: &mut BTreeMap<String, Option<BTreeMap<String, String>>>,
    secrets: &mut BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
) -> Result<Option<String>, EnvError> {
    let namespace = &pod.metadata.namespace;
    let Some(from) = &var.value_from else {
        let lookup = |name: &str| env.get(name).or_else(|| service_env.get(name));
        return Ok(Some(expand(&var.value, &lookup)));
    };
    if let Some(field) = &from.field_ref {
        return field_value(pod, facts, field).map(Some);
    }
    if let Some(res) = &from.resource_field_ref {
        return resource_value(pod, container, facts, res).map(Some);
    }
    if let Some(r) = &from.config_map_key_ref {
        let optional = r.optional.unwrap_or(false);
        let Some(data) = cached_config_map(config_maps, objects, &r.name)? else {
            if optional {
                return Ok(None);
            }
            return Err(EnvError::ConfigMapNotFound {
                name: r.name.clone(),
            });
        };
        return match data.get(&r.key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(EnvError::ConfigMapKeyNotFound {
                key: r.key.clone(),
                namespace: namespace.clone(),
                name: r.name.clone(),
            }),
        };
    }
    if let Some(r) = &from.secret_key_ref {
        let optional = r.optional.unwrap_or(false);
        let Some(data) = cached_secret(secrets, objects, &r.name)? else {
            if optional {
                return Ok(None);
            }
            return Err(EnvError::SecretNotFound {
                name: r.name.clone(),
            });
        };
        return match data.get(&r.key) {
            Some(v) => secret_text(v.clone(), &r.key, namespace, &r.name).map(Some),
            None if optional => Ok(None),
            None => Err(EnvError::SecretKeyNotFound {
                key: r.key.clone(),
                namespace: namespace.clone(),
                name: r.name.clone(),
            }),
        };
    }
    // A valueFrom with no source: the API refuses it; nothing to set.
    Ok(Some(String::new()))
}

fn cached_config_map(
    cache: &mut BTreeMap<String, Option<BTreeMap<String, String>>>,
    objects: &dyn Objects,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    if let Some(hit) = cache.get(name) {
        return Ok(hit.clone());
    }
    let got = objects.config_map(name)?;
    cache.insert(name.to_owned(), got.clone());
    Ok(got)
}

/// A Secret's value as an environment value: its bytes unchanged, or an error naming the key.
fn secret_text(value: Vec<u8>, key: &str, namespace: &str, name: &str) -> Result<String, EnvError> {
    String::from_utf8(value).map_err(|_| EnvError::SecretValueNotUtf8 {
        key: key.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

fn cached_secret(
    cache: &mut BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    objects: &dyn Objects,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, EnvError> {
    if let Some(hit) = cache.get(name) {
        return Ok(hit.clone());
    }
    let got = objects.secret(name)?;
    cache.insert(name.to_owned(), got.clone());
    Ok(got)
}

/// A downward API field of the pod. Labels and annotations as a whole (downwardAPI volumes
/// only) are `key="value"` lines, sorted, values quoted as Go quotes them.
pub fn field_value(
    pod: &Pod,
    facts: &PodFacts,
    field: &ObjectFieldSelector,
) -> Result<String, EnvError> {
    let path = field.field_path.as_str();
    let m = &pod.metadata;
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
    };
    if let Some(key) = subscript("metadata.labels") {
        return Ok(m.labels.get(key).cloned().unwrap_or_default());
    }
    if let Some(key) = subscript("metadata.annotations") {
        return Ok(m.annotations.get(key).cloned().unwrap_or_default());
    }
    let first =
        |v: &[String], fallback: &str| v.first().cloned().unwrap_or_else(|| fallback.to_owned());
    let pod_ips = if facts.pod_ips.is_empty() {
        std::iter::once(pod.status.pod_ip.clone())
            .filter(|s| !s.is_empty())
            .chain(pod.status.pod_ips.iter().skip(1).map(|p| p.ip.clone()))
            .collect()
    } else {
        facts.pod_ips.clone()
    };
    let host_ips = if facts.host_ips.is_empty() {
        std::iter::once(pod.status.host_ip.clone())
            .filter(|s| !s.is_empty())
            .chain(pod.status.host_ips.iter().skip(1).map(|p| p.ip.clone()))
            .collect()
    } else {
        facts.host_ips.clone()
    };
    Ok(match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "metadata.labels" => format_map(&m.labels),
        "metadata.annotations" => format_map(&m.annotations),
        "spec.nodeName" => pod.spec.node_name.clone(),
        "spec.serviceAccountName" => pod.spec.service_account_name.clone(),
        "status.podIP" => first(&pod_ips, ""),
        "status.podIPs" => pod_ips.join(","),
        "status.hostIP" => first(&host_ips, ""),
        "status.hostIPs" => host_ips.join(","),
        _ => return Err(EnvError::UnsupportedFieldPath(path.to_owned())),
    })
}

/// `k="v"` lines, sorted by key, as kubelet writes labels and annotations into a file.
fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A string quoted as Go's `%q` quotes it (for the printable ASCII and common escapes).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A `resourceFieldRef`'s value: the container's request or limit (a limit not set is the
/// node's allocatable), divided by the divisor and rounded up, as kubelet does.
pub fn resource_value(
    pod: &Pod,
    this: &Container,
    facts: &PodFacts,
    sel: &ResourceFieldSelector,
) -> Result<String, EnvError> {
    let container = if sel.container_name.is_empty() || sel.container_name == this.name {
        this
    } else {
        pod.spec
            .init_containers
            .iter()
            .chain(&pod.spec.containers)
            .find(|c| c.name == sel.container_name)
            .ok_or_else(|| EnvError::ContainerNotFound(sel.container_name.clone()))?
    };
    let one = Quantity::parse("1").ok();
    let divisor = sel.divisor.clone().or(one);
    let (kind, resource) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| EnvError::UnsupportedResource(sel.resource.clone()))?;
    let map = match kind {
        "limits" => &container.resources.limits,
        "requests" => &container.resources.requests,
        _ => return Err(EnvError::UnsupportedResource(sel.resource.clone())),
    };
    let q = map.get(resource);
    let div = divisor.as_ref();
    let invalid_div =
        || EnvError::InvalidDivisor(div.map(|d| d.as_str().to_owned()).unwrap_or_default());
    match resource {
        "cpu" => {
            let milli = q.map(Quantity::milli_value).unwrap_or(if kind == "limits" {
                facts.allocatable_cpu_millis
            } else {
                0
            });
            let d = div.map_or(1000, Quantity::milli_value);
            if d <= 0 {
                return Err(invalid_div());
            }
            Ok(ceil_div(milli, d).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let fallback = if kind != "limits" {
                0
            } else if resource == "memory" {
                facts.allocatable_memory
            } else {
                facts.allocatable_ephemeral_storage
            };
            let v = q.map(Quantity::value).unwrap_or(fallback);
            let d = div.map_or(1, Quantity::value);
            if d <= 0 {
                return Err(invalid_div());
            }
            Ok(ceil_div(v, d).to_string())
        }
        r if r.starts_with("hugepages-") => {
            let v = q.map(Quantity::value).unwrap_or(0);
            let d = div.map_or(1, Quantity::value);
            if d <= 0 {
                return Err(invalid_div());
            }
            Ok(ceil_div(v, d).to_string())
        }
        _ => Err(EnvError::UnsupportedResource(sel.resource.clone())),
    }
}

fn ceil_div(n: i128, d: i128) -> i128 {
    if n <= 0 {
        return n / d;
    }
    (n + d - 1) / d
}

/// Whether Service `service_namespace/name` may give variables to a pod in `namespace`: it is
/// of that namespace, or one of the Services of `default` every pod gets. Only those are read
/// by [`environment`].
pub fn service_may_apply(namespace: &str, service_namespace: &str, name: &str) -> bool {
    service_namespace == namespace
        || (service_namespace == MASTER_SERVICE_NAMESPACE && MASTER_SERVICES.contains(&name))
}

/// The Service variables for a pod in `namespace`: every Service with a ClusterIP in the
/// pod's namespace when `enable_links`, and always the `kubernetes` Service of `default` (a
/// Service of that name in the pod's own namespace wins). Services by name, sorted.
fn service_variables(namespace: &str, enable_links: bool, services: &[Service]) -> Ordered {
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    for s in services {
        if !has_cluster_ip(s) {
            continue;
        }
        let name = s.metadata.name.as_str();
        if s.metadata.namespace == MASTER_SERVICE_NAMESPACE && MASTER_SERVICES.contains(&name) {
            chosen.entry(name).or_insert(s);
        }
        if s.metadata.namespace == namespace && enable_links {
            chosen.insert(name, s);
        }
    }
    let mut out = Ordered::default();
    for s in chosen.values() {
        for (k, v) in service_vars(s) {
            out.vars.push((k, v));
        }
    }
    out
}

fn has_cluster_ip(s: &Service) -> bool {
    !s.spec.cluster_ip.is_empty() && s.spec.cluster_ip != "None"
}

/// `MY-SVC` -> `MY_SVC`.
fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// One Service's variables: `_SERVICE_HOST`, `_SERVICE_PORT`, `_SERVICE_PORT_<NAME>`, then
/// Docker's link variables.
pub fn service_vars(s: &Service) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(first) = s.spec.ports.first() else {
        return out;
    };
    let prefix = env_name(&s.metadata.name);
    let ip = &s.spec.cluster_ip;
    out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
    out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
    for p in &s.spec.ports {
        if !p.name.is_empty() {
            out.push((
                format!("{prefix}_SERVICE_PORT_{}", env_name(&p.name)),
                p.port.to_string(),
            ));
        }
    }
    for (i, p) in s.spec.ports.iter().enumerate() {
        let protocol = if p.protocol.is_empty() {
            "TCP"
        } else {
            p.protocol.as_str()
        };
        let lower = protocol.to_ascii_lowercase();
        let host_port = if ip.contains(':') {
            format!("[{ip}]:{}", p.port)
        } else {
            format!("{ip}:{}", p.port)
        };
        if i == 0 {
            out.push((format!("{prefix}_PORT"), format!("{lower}://{host_port}")));
        }
        let pp = format!("{prefix}_PORT_{}_{}", p.port, protocol.to_ascii_uppercase());
        out.push((pp.clone(), format!("{lower}://{host_port}")));
        out.push((format!("{pp}_PROTO"), lower.clone()));
        out.push((format!("{pp}_PORT"), p.port.to_string()));
        out.push((format!("{pp}_ADDR"), ip.clone()));
    }
    out
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes the value `lookup` gives, or stays as it
/// is when there is none; `$$` is a `$`; any other `$` stays.
pub fn expand<'a>(input: &str, lookup: &dyn Fn(&str) -> Option<&'a str>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance;
            match bytes[cursor + 1] {
                b'$' => {
                    out.push('$');
                    advance = 1;
                }
                b'(' => match rest[1..].find(')') {
                    Some(end) => {
                        let name = &rest[1..1 + end];
                        match lookup(name) {
                            Some(v) => out.push_str(v),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        advance = end + 2;
                    }
                    None => {
                        out.push_str("$(");
                        advance = 1;
                    }
                },
                _ => {
                    // A `$` that starts nothing: kept with the character after it.
                    let c = rest.chars().next().map_or(1, char::len_utf8);
                    out.push('$');
                    out.push_str(&rest[..c]);
                    advance = c;
                }
            }
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    if checkpoint < input.len() {
        out.push_str(&input[checkpoint..]);
    }
    out
}

/// `command` and `args` with `$(VAR)` references to the container's final environment
/// expanded (kubelet expands both; the image's entrypoint and cmd are not).
pub fn expand_command(list: &[String], env: &Environment) -> Vec<String> {
    let lookup = |name: &str| env.get(name);
    list.iter().map(|s| expand(s, &lookup)).collect()
}

/// The names of the ConfigMaps and Secrets a container's environment reads (so the agent
/// fetches just those).
pub fn referenced_objects(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut cms = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for f in &container.env_from {
        if let Some(c) = &f.config_map_ref {
            cms.insert(c.name.clone());
        }
        if let Some(s) = &f.secret_ref {
            secrets.insert(s.name.clone());
        }
    }
    for e in &container.env {
        if let Some(from) = &e.value_from {
            if let Some(c) = &from.config_map_key_ref {
                cms.insert(c.name.clone());
            }
            if let Some(s) = &from.secret_key_ref {
                secrets.insert(s.name.clone());
            }
        }
    }
    (cms, secrets)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({

            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1",
                         "labels": {"app": "web"}, "annotations": {"note": "a \"b\""}},
            "spec": spec,
            "status": {"podIP": "10.244.1.5", "hostIP": "10.250.0.2"},
        }))
        .expect("a pod")
    }

    fn app(pod: &Pod) -> &Container {
        &pod.spec.containers[0]
    }

    fn service(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({

            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports},
        }))
        .expect("a service")
    }

    /// [`Objects`] from maps.
    #[derive(Debug, Clone, Default)]
    struct ObjectMaps {
        /// ConfigMaps' `data` by name.
        config_maps: BTreeMap<String, BTreeMap<String, String>>,
        /// Secrets' `data` by name.
        secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    }

    impl Objects for ObjectMaps {
        fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, EnvError> {
            Ok(self.config_maps.get(name).cloned())
        }

        fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, EnvError> {
            Ok(self.secrets.get(name).cloned())
        }
    }

    fn objects() -> ObjectMaps {
        ObjectMaps {
            config_maps: BTreeMap::from([(
                "cfg".to_owned(),
                BTreeMap::from([
                    ("mode".to_owned(), "fast".to_owned()),
                    ("1st".to_owned(), "x".to_owned()),
                    ("bad=key".to_owned(), "x".to_owned()),
                    ("ü".to_owned(), "x".to_owned()),
                    ("ok.key".to_owned(), "y".to_owned()),
                ]),
            )]),
            secrets: BTreeMap::from([(
                "creds".to_owned(),
                BTreeMap::from([("password".to_owned(), b"s3cret".to_vec())]),
            )]),
        }
    }

    fn facts() -> PodFacts {
        PodFacts {
            pod_ips: vec!["10.244.1.5".into()],
            host_ips: vec!["10.250.0.2".into()],
            allocatable_cpu_millis: 2000,
            allocatable_memory: 4 << 30,
            allocatable_ephemeral_storage: 10 << 30,
        }
    }

    fn env_of(spec: serde_json::Value) -> Result<Environment, EnvError> {
        let p = pod(spec);
        environment(&p, app(&p), &objects(), &[], &facts())
    }

    fn container(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"name": "app", "image": "busybox"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        json!({"containers": [c], "enableServiceLinks": false})
    }

    #[test]
    fn a_secret_value_that_is_not_utf8_refuses_the_start_naming_its_key_never_altered() {
        let mut objects = objects();
        objects.secrets.insert(
            "bin".to_owned(),
            BTreeMap::from([
                ("blob".to_owned(), vec![0xff, 0xfe, b'x']),
                ("text".to_owned(), "grüße".as_bytes().to_vec()),
            ]),
        );
        let run = |extra: serde_json::Value| {
            let p = pod(container(extra));
            environment(&p, app(&p), &objects, &[], &facts())
        };
        let want = "couldn't use key blob in Secret shop/bin as an environment variable: its value is not valid UTF-8";
        let err = run(json!({"env": [{"name": "B", "valueFrom":
            {"secretKeyRef": {"name": "bin", "key": "blob"}}}]}))
        .unwrap_err();
        assert_eq!(err.to_string(), want);
        let err = run(json!({"envFrom": [{"secretRef": {"name": "bin"}}]})).unwrap_err();
        assert_eq!(err.to_string(), want);
        // UTF-8 that is not ASCII goes through byte for byte.
        let env = run(json!({"env": [{"name": "T", "valueFrom":
            {"secretKeyRef": {"name": "bin", "key": "text"}}}]}))
        .unwrap();
        assert!(
            env.vars.contains(&("T".to_owned(), "grüße".to_owned())),
            "{:?}",
            env.vars
        );
    }

    #[test]
    fn expansion_follows_kubernetes_rules_for_references_escapes_and_unknowns() {
        let vars = BTreeMap::from([("A", "1"), ("B", "two"), ("EMPTY", "")]);
        let lookup = |k: &str| vars.get(k).copied();
        for (input, want) in [
            ("$(A)", "1"),
            ("x$(A)y$(B)z", "x1ytwoz"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$1"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$(EMPTY)", ""),
            ("$(A", "$(A"),
            ("$A", "$A"),
            ("a$", "a$"),
            ("$", "$"),
            ("$$", "$"),
            ("$()", "$()"),
            ("ü$(A)ü", "ü1ü"),
            ("$ü", "$ü"),
            ("no refs", "no refs"),
        ] {
            assert_eq!(expand(input, &lookup), want, "input {input:?}");
        }
    }

    #[test]
    fn env_values_see_earlier_variables_and_services_but_not_later_ones() {
        let env = env_of(container(json!({"env": [
            {"name": "FIRST", "value": "1"},
            {"name": "BOTH", "value": "$(FIRST)-$(LATER)"},
            {"name": "LATER", "value": "2"},
        ]})))
        .unwrap();
        assert_eq!(env.get("BOTH"), Some("1-$(LATER)"));
    }

    #[test]
    fn env_overrides_env_from_and_keeps_the_first_place() {
        let env = env_of(container(json!({
            "envFrom": [{"configMapRef": {"name": "cfg"}}],
            "env": [{"name": "mode", "value": "slow"}, {"name": "X", "value": "x"}],
        })))
        .unwrap();
        assert_eq!(env.get("mode"), Some("slow"));
        assert_eq!(
            env.vars.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["1st", "mode", "ok.key", "X"]
        );
    }

    #[test]
    fn env_from_skips_invalid_names_with_kubelets_warning_and_applies_the_prefix() {
        let env = env_of(container(json!({
            "envFrom": [{"configMapRef": {"name": "cfg"}}],
        })))
        .unwrap();
        assert_eq!(env.get("1st"), Some("x"));
        assert_eq!(env.get("bad=key"), None);
        assert_eq!(
            env.skipped,
            [
                "Keys [bad=key, ü] from the EnvFrom configMap shop/cfg were skipped since they are considered invalid environment variable names."
            ]
        );
        let env = env_of(container(json!({
            "envFrom": [{"prefix": "P_", "configMapRef": {"name": "cfg"}},
                        {"prefix": "S_", "secretRef": {"name": "creds"}}],
        })))
        .unwrap();
        assert_eq!(env.get("P_1st"), Some("x"));
        assert_eq!(env.get("P_mode"), Some("fast"));
        assert_eq!(env.get("S_password"), Some("s3cret"));
        assert_eq!(
            env.skipped,
            [
                "Keys [P_bad=key, P_ü] from the EnvFrom configMap shop/cfg were skipped since they are considered invalid environment variable names."
            ]
        );
    }

    #[test]
    fn missing_references_fail_with_kubelets_messages_unless_optional() {
        for (env, message) in [
            (
                json!({"env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]}),
                "configmap \"nope\" not found",
            ),
            (
                json!({"env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}),
                "couldn't find key k in ConfigMap shop/cfg",
            ),
            (
                json!({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]}),
                "secret \"nope\" not found",
            ),
            (
                json!({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}]}),
                "couldn't find key k in Secret shop/creds",
            ),
            (
                json!({"envFrom": [{"configMapRef": {"name": "nope"}}]}),
                "configmap \"nope\" not found",
            ),
            (
                json!({"envFrom": [{"secretRef": {"name": "nope"}}]}),
                "secret \"nope\" not found",
            ),
            (
                json!({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]}),
                "unsupported fieldPath: spec.bogus",
            ),
        ] {
            let err = env_of(container(env.clone())).unwrap_err();
            assert_eq!(err.to_string(), message, "for {env}");
        }
        let env = env_of(container(json!({
            "env": [
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k", "optional": true}}},
                {"name": "C", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k", "optional": true}}},
                {"name": "D", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            ],
            "envFrom": [{"configMapRef": {"name": "nope", "optional": true}},
                        {"secretRef": {"name": "nope", "optional": true}}],
        })))
        .unwrap();
        assert_eq!(env.vars, [("D".to_owned(), "s3cret".to_owned())]);
    }

    #[test]
    fn field_refs_give_the_pods_identity_and_addresses() {
        let env = env_of(json!({
            "nodeName": "n1", "serviceAccountName": "sa",
            "containers": [{"name": "app", "image": "busybox", "env": [
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "NONE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['none']"}}},
                {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            ]}],
            "enableServiceLinks": false,
        }))
        .unwrap();
        for (k, v) in [
            ("NAME", "web-1"),
            ("NS", "shop"),
            ("UID", "u-1"),
            ("APP", "web"),
            ("NONE", ""),
            ("NOTE", "a \"b\""),
            ("NODE", "n1"),
            ("SA", "sa"),
            ("IP", "10.244.1.5"),
            ("IPS", "10.244.1.5"),
            ("HOST", "10.250.0.2"),
        ] {
            assert_eq!(env.get(k), Some(v), "{k}");
        }
        let p = pod(json!({"containers": [{"name": "app", "image": "b"}]}));
        let labels = ObjectFieldSelector {
            field_path: "metadata.annotations".into(),
            ..Default::default()
        };
        assert_eq!(
            field_value(&p, &facts(), &labels).unwrap(),
            "note=\"a \\\"b\\\"\""
        );
    }

    #[test]
    fn resource_field_refs_divide_and_round_up_and_default_limits_to_allocatable() {
        let env = env_of(json!({
            "containers": [
                {"name": "app", "image": "busybox",
                 "resources": {"limits": {"cpu": "1500m", "memory": "100Mi"},
                               "requests": {"cpu": "250m"}},
                 "env": [
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                    {"name": "REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
                    {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "MEM_G", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1G"}}},
                    {"name": "OTHER", "valueFrom": {"resourceFieldRef": {"containerName": "side", "resource": "limits.memory"}}},
                    {"name": "REQ_MEM", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory"}}},
                 ]},
                {"name": "side", "image": "busybox"},
            ],
            "enableServiceLinks": false,
        }))
        .unwrap();
        for (k, v) in [
            ("CPU", "2"),
            ("CPU_M", "1500"),
            ("REQ", "1"),
            ("MEM_MI", "100"),
            ("MEM_G", "1"),
            ("OTHER", &(4_i64 << 30).to_string()),
            ("REQ_MEM", "0"),
        ] {
            assert_eq!(env.get(k), Some(v), "{k}");
        }
        let err = env_of(container(json!({"env": [
            {"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}}
        ]})))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported container resource : limits.gpu"
        );
    }

    fn services() -> Vec<Service> {
        vec![
            service(
                "default",
                "kubernetes",
                "10.96.0.1",
                json!([{"name": "https", "port": 443, "protocol": "TCP"}]),
            ),
            service(
                "shop",
                "redis-main",
                "10.96.0.20",
                json!([
                    {"name": "redis", "port": 6379},
                    {"name": "metrics-port", "port": 9121, "protocol": "UDP"},
                ]),
            ),
            service("shop", "headless", "None", json!([{"port": 80}])),
            service("other", "elsewhere", "10.96.0.30", json!([{"port": 80}])),
        ]
    }

    #[test]
    fn the_services_a_node_hands_over_by_service_may_apply_give_the_same_environment_as_all() {
        let mut all = services();
        all.push(service(
            "default",
            "web",
            "10.96.0.40",
            json!([{"port": 80}]),
        ));
        for ns in ["shop", "default", "other", "empty"] {
            let mut p = pod(json!({"containers": [{"name": "app", "image": "b"}]}));
            p.metadata.namespace = ns.to_owned();
            let kept: Vec<Service> = all
                .iter()
                .filter(|s| service_may_apply(ns, &s.metadata.namespace, &s.metadata.name))
                .cloned()
                .collect();
            assert!(kept.len() < all.len(), "{ns}");
            assert_eq!(
                environment(&p, app(&p), &objects(), &kept, &facts()).unwrap(),
                environment(&p, app(&p), &objects(), &all, &facts()).unwrap(),
                "{ns}"
            );
        }
        assert!(service_may_apply("shop", "default", "kubernetes"));
        assert!(!service_may_apply("shop", "default", "web"));
        assert!(!service_may_apply("shop", "other", "elsewhere"));
    }

    #[test]
    fn service_links_give_the_docker_style_and_kubernetes_variables() {
        let p = pod(json!({"containers": [{"name": "app", "image": "b"}]}));
        let env = environment(&p, app(&p), &objects(), &services(), &facts()).unwrap();
        for (k, v) in [
            ("REDIS_MAIN_SERVICE_HOST", "10.96.0.20"),
            ("REDIS_MAIN_SERVICE_PORT", "6379"),
            ("REDIS_MAIN_SERVICE_PORT_REDIS", "6379"),
            ("REDIS_MAIN_SERVICE_PORT_METRICS_PORT", "9121"),
            ("REDIS_MAIN_PORT", "tcp://10.96.0.20:6379"),
            ("REDIS_MAIN_PORT_6379_TCP", "tcp://10.96.0.20:6379"),
            ("REDIS_MAIN_PORT_6379_TCP_PROTO", "tcp"),
            ("REDIS_MAIN_PORT_6379_TCP_PORT", "6379"),
            ("REDIS_MAIN_PORT_6379_TCP_ADDR", "10.96.0.20"),
            ("REDIS_MAIN_PORT_9121_UDP", "udp://10.96.0.20:9121"),
            ("REDIS_MAIN_PORT_9121_UDP_PROTO", "udp"),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
        ] {
            assert_eq!(env.get(k), Some(v), "{k}");
        }
        assert!(
            env.vars
                .iter()
                .all(|(k, _)| !k.starts_with("HEADLESS") && !k.starts_with("ELSEWHERE"))
        );
    }

    #[test]
    fn without_service_links_only_the_kubernetes_service_is_given_and_env_wins_over_it() {
        let p = pod(json!({
            "enableServiceLinks": false,
            "containers": [{"name": "app", "image": "b", "args": ["$(KUBERNETES_SERVICE_HOST)", "$(REDIS_MAIN_SERVICE_HOST)"],
                            "env": [{"name": "KUBERNETES_SERVICE_PORT", "value": "mine"},
                                    {"name": "URL", "value": "https://$(KUBERNETES_SERVICE_HOST)"}]}],
        }));
        let env = environment(&p, app(&p), &objects(), &services(), &facts()).unwrap();
        assert_eq!(env.get("KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(env.get("KUBERNETES_SERVICE_PORT"), Some("mine"));
        assert_eq!(env.get("URL"), Some("https://10.96.0.1"));
        assert_eq!(env.get("REDIS_MAIN_SERVICE_HOST"), None);
        assert_eq!(
            expand_command(&app(&p).args, &env),
            ["10.96.0.1", "$(REDIS_MAIN_SERVICE_HOST)"]
        );
    }
}
