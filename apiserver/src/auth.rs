//! Bearer-token authentication from an operator-written file, and the authorization rules for
//! each role.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use serde::Deserialize;
/// The namespace node heartbeats (Leases named after their node) live in.
pub use skiff_api::kinds::NODE_LEASE_NAMESPACE;
use skiff_api::{Kind, Object, ResourceInfo, kinds::Pod};

use super::{error::ApiError, filter::Filter, objects::GenericStore};

/// What an identity may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Everything a scheduler or controller-manager needs: every verb on every resource.
    Controller,
    /// A node agent: read everything; write its own Node, its own Lease, and the status of
    /// (and the final delete of) pods bound to it.
    Node(String),
    /// Read only.
    Viewer,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
}

impl Identity {
    pub fn groups(&self) -> Vec<String> {
        vec![match &self.role {
            Role::Admin => "skiff:admins".to_owned(),
            Role::Controller => "skiff:controllers".to_owned(),
            Role::Node(_) => "skiff:nodes".to_owned(),
            Role::Viewer => "skiff:viewers".to_owned(),
        }]
    }
}

/// The tokens file: `tokens: [{token, user, role, node}]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    user: String,
    /// `admin`, `controller`, `node` or `viewer`.
    role: String,
    /// For `role: node`: the Node this agent is.
    #[serde(default)]
    node: Option<String>,
}

/// Why the tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not the expected YAML.
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_norway::Error,
    },
    /// One entry is wrong.
    #[error("{path}: tokens[{index}]: {message}")]
    Entry {
        path: String,
        index: usize,
        message: String,
    },
}

/// Token -> identity.
#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: HashMap<String, Identity>,
}

impl Authenticator {
    /// Reads the operator's tokens file.
    pub fn from_file(path: &Path) -> Result<Authenticator, TokenFileError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: p.clone(),
            source,
        })?;
        let file: TokenFile =
            serde_norway::from_str(&text).map_err(|source| TokenFileError::Parse {
                path: p.clone(),
                source,
            })?;
        let mut tokens = HashMap::new();
        for (index, e) in file.tokens.into_iter().enumerate() {
            let entry_err = |message: String| TokenFileError::Entry {
                path: p.clone(),
                index,
                message,
            };
            if e.token.len() < 16 {
                return Err(entry_err("token must be at least 16 characters".into()));
            }
            if e.user.is_empty() {
                return Err(entry_err("user must not be empty".into()));
            }
            let role = match (e.role.as_str(), e.node) {
                ("admin", None) => Role::Admin,
                ("controller", None) => Role::Controller,
                ("viewer", None) => Role::Viewer,
                ("node", Some(n)) if !n.is_empty() => Role::Node(n),
                ("node", _) => return Err(entry_err("role node needs `node: <node name>`".into())),
                ("admin" | "controller" | "viewer", Some(_)) => {
                    return Err(entry_err("`node` is only for role node".into()));
                }
                (other, _) => {
                    return Err(entry_err(format!(
                        "unknown role {other:?} (admin, controller, node or viewer)"
                    )));
                }
            };
            if tokens
                .insert(e.token, Identity { user: e.user, role })
                .is_some()
            {
                return Err(entry_err("the same token appears twice".into()));
            }
        }
        Ok(Authenticator { tokens })
    }

    /// The identity for an `authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Identity, ApiError> {
        let header = header.ok_or_else(|| {
            ApiError::Unauthenticated(
                "no bearer token (set `authorization: Bearer <token>`)".into(),
            )
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::Unauthenticated("the authorization header is not `Bearer <token>`".into())
            })?
            .trim();
        // A hash lookup: the map's SipHash keys are random per process, so where a guess lands
        // (and what it is compared with) tells a caller nothing about the real tokens; one
        // lookup costs the same with 5 tokens or 5,000 (one per node), where comparing against
        // every token cost a third of a millisecond per request at 5,000.
        let found = self
            .tokens
            .get_key_value(token)
            .filter(|(t, _)| constant_time_eq(t.as_bytes(), token.as_bytes()))
            .map(|(_, id)| id.clone());
        found.ok_or_else(|| ApiError::Unauthenticated("invalid bearer token".into()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An API verb, for authorization and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Create,
    Get,
    List,
    Watch,
    Update,
    UpdateStatus,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Update => "update",
            Verb::UpdateStatus => "update-status",
            Verb::Delete => "delete",
        }
    }

    fn reads(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

/// Decides whether `id` may do `verb` on an object. For writes, `new` is the object being
/// written and `old` the stored one (both must pass the node rules, so a node can neither take
/// over another node's pod nor hand its own away).
pub fn authorize(
    id: &Identity,
    verb: Verb,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
    new: Option<&Object>,
    old: Option<&Object>,
) -> Result<(), ApiError> {
    let allowed = match &id.role {
        Role::Admin | Role::Controller => true,
        // Kubernetes' `view` role leaves Secrets out: reading them is escalating (a
        // ServiceAccount token, a registry password).
        Role::Viewer => verb.reads() && info.plural != "secrets",
        Role::Node(node) => {
            (verb.reads() && !node_reads_by_relationship(info))
                || node_may_write(node, verb, info, namespace, name, new, old)
        }
    };
    let scope = if info.namespaced && !namespace.is_empty() {
        format!("in the namespace {namespace:?}")
    } else {
        "at the cluster scope".to_owned()
    };
    let forbidden = |scope: String| ApiError::Forbidden {
        user: id.user.clone(),
        verb: verb.as_str(),
        resource: info.plural.to_owned(),
        name: name.to_owned(),
        scope,
    };
    if !allowed {
        if let Role::Node(node) = &id.role
            && verb.reads()
            && node_reads_by_relationship(info)
        {
            // The node authorizer's reasons, in its words (see `relationship_needed`).
            let why = if namespace.is_empty() {
                "can only read namespaced object of this type".to_owned()
            } else if name.is_empty() {
                "No Object name found".to_owned()
            } else {
                format!("no relationship found between node '{node}' and this object")
            };
            return Err(forbidden(format!("{scope}: {why}")));
        }
        return Err(forbidden(scope));
    }
    if let Role::Node(node) = &id.role
        && let Some(why) = node_restriction(node, verb, info, new, old)
    {
        // The reason goes after the scope, in Kubernetes' words, so the message names the label.
        return Err(forbidden(format!("{scope}: {why}")));
    }
    Ok(())
}

/// Kinds a node may read only one by one, and only those a pod bound to it references
/// (Kubernetes' node authorizer): never listed or watched, so a node holds the credentials of
/// its own pods and of no others.
fn node_reads_by_relationship(info: &ResourceInfo) -> bool {
    matches!(info.plural, "secrets" | "configmaps")
}

/// For a node's `get` of one namespaced Secret or ConfigMap, the node's name: [`authorize`]
/// refuses such a read (it cannot see pods), and the caller allows it instead when
/// [`node_references`] finds a pod bound to that node referencing the object. `None` for every
/// other request, which [`authorize`] decides alone.
pub fn relationship_needed<'a>(
    id: &'a Identity,
    verb: Verb,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
) -> Option<&'a str> {
    match &id.role {
        Role::Node(node)
            if verb == Verb::Get
                && node_reads_by_relationship(info)
                && !namespace.is_empty()
                && !name.is_empty() =>
        {
            Some(node)
        }
        _ => None,
    }
}

/// Whether `pod` is bound to `node` and references the Secret or ConfigMap `name` (in the pod's
/// namespace, the only one a pod can reference).
pub fn pod_references(pod: &Pod, node: &str, info: &ResourceInfo, name: &str) -> bool {
    if pod.spec.node_name != node {
        return false;
    }
    match info.plural {
        "secrets" => pod.referenced_secrets().contains(name),
        "configmaps" => pod.referenced_config_maps().contains(name),
        _ => false,
    }
}

/// Whether a pod bound to `node` in `namespace` references the Secret or ConfigMap `name`:
/// answered from the watch cache of pods, so a node's reads cost no etcd call; only a "no" is
/// checked against etcd (the cache may not have seen the pod's binding yet, while the node's
/// own watch, which can run straight from etcd, has).
pub async fn node_references(
    reg: &GenericStore,
    node: &str,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
) -> Result<bool, ApiError> {
    let pods = <Pod as Kind>::INFO;
    let related = |p: &Pod| pod_references(p, node, info, name);
    if reg.cache.any_pod_on(node, namespace, related).await == Some(true) {
        return Ok(true);
    }
    let bound_here = Filter::parse(pods, "", &format!("spec.nodeName={node}"))?;
    let (bound, _) = reg.list(pods, namespace, &bound_here).await?;
    Ok(bound
        .iter()
        .any(|o| matches!(o, Object::Pod(p) if related(p))))
}

/// The label domain a node may never set, change or remove on its own Node, nor any subdomain
/// of it: labels under it steer workloads to machines the administrator chose (Kubernetes'
/// NodeRestriction admission).
pub const NODE_RESTRICTION_DOMAIN: &str = "node-restriction.kubernetes.io";

/// Labels in the kubernetes.io and k8s.io domains a node may set on itself: the ones the kubelet
/// sets (Kubernetes' `IsKubeletLabel`). Every other label in those domains
/// (`node-role.kubernetes.io/*` included) is the administrator's to give.
const KUBELET_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
];

/// Label domains (and their subdomains) a node may use freely on itself.
const KUBELET_LABEL_DOMAINS: [&str; 2] = ["kubelet.kubernetes.io", "node.kubernetes.io"];

/// `domain` is `parent` or a subdomain of it.
fn in_domain(domain: &str, parent: &str) -> bool {
    domain == parent
        || domain
            .strip_suffix(parent)
            .is_some_and(|sub| sub.ends_with('.'))
}

/// Whether a node may not add, change or remove the label `key` on its own Node, by
/// Kubernetes' NodeRestriction rules: anything under `node-restriction.kubernetes.io`, and any
/// kubernetes.io or k8s.io label that is not one the kubelet sets. A bare key with no `/` that
/// names a restricted domain (`node-role.kubernetes.io`) is refused too, one step stricter than
/// Kubernetes, which only looks at the prefix before the `/`.
pub fn is_node_restricted_label(key: &str) -> bool {
    let domain = key.split_once('/').map_or(key, |(prefix, _)| prefix);
    if in_domain(domain, NODE_RESTRICTION_DOMAIN) {
        return true;
    }
    let kubernetes = in_domain(domain, "kubernetes.io") || in_domain(domain, "k8s.io");
    let kubelets =
        KUBELET_LABELS.contains(&key) || KUBELET_LABEL_DOMAINS.iter().any(|d| in_domain(domain, d));
    kubernetes && !kubelets
}

/// The restricted labels (sorted) that differ between `new` and `old` (`None` for a create):
/// added, changed or removed.
fn restricted_label_changes<'a>(
    new: &'a BTreeMap<String, String>,
    old: Option<&'a BTreeMap<String, String>>,
) -> Vec<&'a str> {
    let mut keys: Vec<&str> = new
        .keys()
        .chain(old.into_iter().flat_map(|o| o.keys()))
        .map(String::as_str)
        .filter(|k| is_node_restricted_label(k))
        .filter(|k| new.get(*k) != old.and_then(|o| o.get(*k)))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn node_labels(o: Option<&Object>) -> Option<&BTreeMap<String, String>> {
    match o {
        Some(Object::Node(n)) => Some(&n.metadata.labels),
        _ => None,
    }
}

/// Why a write the node may make in general is still refused: NodeRestriction's label rules
/// on its own Node, worded as Kubernetes words them.
fn node_restriction(
    node: &str,
    verb: Verb,
    info: &ResourceInfo,
    new: Option<&Object>,
    old: Option<&Object>,
) -> Option<String> {
    if info.plural != "nodes" {
        return None;
    }
    match verb {
        Verb::Create => {
            let bad = restricted_label_changes(node_labels(new)?, None);
            (!bad.is_empty()).then(|| {
                format!(
                    "node {node:?} is not allowed to set the following labels: {}",
                    bad.join(", ")
                )
            })
        }
        // A status update keeps the stored metadata and spec, so only a full update can touch
        // labels, taints and owners. Taints may be set at registration (a create), as the
        // kubelet's --register-with-taints does, never changed after: a node that could drop
        // an administrator's NoSchedule taint could draw the workloads (and their Secrets) it
        // was fenced off from.
        Verb::Update => {
            let (Some(Object::Node(n)), Some(Object::Node(o))) = (new, old) else {
                return None;
            };
            if n.spec.taints != o.spec.taints {
                return Some(format!("node {node:?} is not allowed to modify taints"));
            }
            if n.metadata.owner_references != o.metadata.owner_references {
                return Some(format!(
                    "node {node:?} is not allowed to modify ownerReferences"
                ));
            }
            let bad = restricted_label_changes(node_labels(new)?, node_labels(old));
            (!bad.is_empty())
                .then(|| format!("is not allowed to modify labels: {}", bad.join(", ")))
        }
        _ => None,
    }
}

fn node_may_write(
    node: &str,
    verb: Verb,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
    new: Option<&Object>,
    old: Option<&Object>,
) -> bool {
    let bound_here = |o: Option<&Object>| match o {
        Some(Object::Pod(p)) => p.spec.node_name == node,
        Some(_) => false,
        None => true,
    };
    match (info.plural, verb) {
        ("nodes", Verb::Create | Verb::Update | Verb::UpdateStatus) => name == node,
        ("leases", Verb::Create | Verb::Update | Verb::Delete) => {
            namespace == NODE_LEASE_NAMESPACE && name == node
        }
        ("pods", Verb::UpdateStatus | Verb::Delete) => {
            old.is_some() && bound_here(old) && bound_here(new)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_on(node: &str) -> Object {
        let mut p = Pod::default();
        p.metadata.name = "p".into();
        p.spec.node_name = node.into();
        Object::Pod(p)
    }

    #[test]
    fn a_node_writes_only_its_own_node_lease_and_pods() {
        let id = Identity {
            user: "agent-a".into(),
            role: Role::Node("a".into()),
        };
        let nodes = <skiff_api::kinds::Node as Kind>::INFO;
        let leases = <skiff_api::kinds::Lease as Kind>::INFO;
        let pods = <Pod as Kind>::INFO;
        let lease_ns = NODE_LEASE_NAMESPACE;
        let (mine, theirs) = (pod_on("a"), pod_on("b"));
        let (m, t) = (Some(&mine), Some(&theirs));
        #[rustfmt::skip]
        let cases = [
            (Verb::UpdateStatus, nodes, "", "a", None, None, true),
            (Verb::UpdateStatus, nodes, "", "b", None, None, false),
            (Verb::Update, leases, lease_ns, "a", None, None, true),
            (Verb::Update, leases, lease_ns, "b", None, None, false),
            (Verb::Update, leases, "default", "a", None, None, false),
            (Verb::UpdateStatus, pods, "default", "p", m, m, true),
            (Verb::UpdateStatus, pods, "default", "p", m, t, false),
            (Verb::UpdateStatus, pods, "default", "p", t, m, false),
            (Verb::Update, pods, "default", "p", m, m, false),
            (Verb::Create, pods, "default", "p", m, None, false),
            (Verb::Delete, pods, "default", "p", None, m, true),
            (Verb::Delete, pods, "default", "p", None, t, false),
            (Verb::List, pods, "", "", None, None, true),
        ];
        for (i, (verb, info, ns, name, new, old, allowed)) in cases.into_iter().enumerate() {
            let got = authorize(&id, verb, info, ns, name, new, old).is_ok();
            assert_eq!(
                got, allowed,
                "case {i}: {verb:?} {} {ns}/{name}",
                info.plural
            );
        }
    }

    fn node_labelled(name: &str, labels: &[(&str, &str)]) -> Object {
        let mut n = skiff_api::kinds::Node::default();
        n.metadata.name = name.into();
        n.metadata.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Object::Node(n)
    }

    fn node_identity(name: &str) -> Identity {
        Identity {
            user: name.into(),
            role: Role::Node(name.into()),
        }
    }

    #[test]
    fn restricted_labels_are_node_restriction_ones_and_kubernetes_ones_the_kubelet_does_not_set() {
        for key in [
            "node-role.kubernetes.io/master",
            "node-role.kubernetes.io/control-plane",
            "node-role.kubernetes.io/",
            "node-role.kubernetes.io",
            "x.node-role.kubernetes.io/y",
            "node-restriction.kubernetes.io/dedicated",
            "foo.node-restriction.kubernetes.io/x",
            "a.b.node-restriction.kubernetes.io/x",
            "node-restriction.kubernetes.io",
            // Any kubernetes.io or k8s.io label the kubelet does not set.
            "kubernetes.io/role",
            "xnode-role.kubernetes.io/master",
            "evilnode-restriction.kubernetes.io/x",
            "k8s.io/x",
            "sub.k8s.io/x",
            "topology.kubernetes.io/rack",
        ] {
            assert!(is_node_restricted_label(key), "{key} should be restricted");
        }
        for key in [
            "kubernetes.io/hostname",
            "kubernetes.io/os",
            "topology.kubernetes.io/zone",
            "failure-domain.beta.kubernetes.io/region",
            "node.kubernetes.io/instance-type",
            "node.kubernetes.io/exclude-from-external-load-balancers",
            "foo.kubelet.kubernetes.io/bar",
            "node-role",
            "role/node-role.kubernetes.io",
            "example.com/node-role.kubernetes.io",
            "notkubernetes.io/x",
            "dedicated",
        ] {
            assert!(!is_node_restricted_label(key), "{key} should be allowed");
        }
    }

    #[test]
    fn a_node_may_set_taints_when_it_registers_but_never_change_them_or_its_owners() {
        let nodes = <skiff_api::kinds::Node as Kind>::INFO;
        let id = node_identity("node-0");
        let plain = node_labelled("node-0", &[]);
        let mut tainted = skiff_api::kinds::Node::default();
        tainted.metadata.name = "node-0".into();
        tainted.spec.taints = vec![skiff_api::kinds::Taint {
            key: "dedicated".into(),
            value: "db".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }];
        let tainted = Object::Node(tainted);
        assert!(authorize(&id, Verb::Create, nodes, "", "node-0", Some(&tainted), None).is_ok());
        for (new, old) in [(&plain, &tainted), (&tainted, &plain)] {
            let err = authorize(&id, Verb::Update, nodes, "", "node-0", Some(new), Some(old))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("node \"node-0\" is not allowed to modify taints"),
                "{err}"
            );
        }
        let mut owned = skiff_api::kinds::Node::default();
        owned.metadata.name = "node-0".into();
        owned.metadata.owner_references = vec![skiff_api::meta::OwnerReference {
            name: "x".into(),
            ..Default::default()
        }];
        let err = authorize(
            &id,
            Verb::Update,
            nodes,
            "",
            "node-0",
            Some(&Object::Node(owned)),
            Some(&plain),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("is not allowed to modify ownerReferences"),
            "{err}"
        );
        // Admins may.
        let admin = Identity {
            user: "alice".into(),
            role: Role::Admin,
        };
        assert!(
            authorize(
                &admin,
                Verb::Update,
                nodes,
                "",
                "node-0",
                Some(&plain),
                Some(&tainted)
            )
            .is_ok()
        );
    }

    #[test]
    fn a_node_may_not_add_change_or_remove_role_labels_on_its_own_node() {
        let nodes = <skiff_api::kinds::Node as Kind>::INFO;
        let id = node_identity("node-0");
        let plain = node_labelled("node-0", &[("kubernetes.io/hostname", "node-0")]);
        let master = node_labelled(
            "node-0",
            &[
                ("kubernetes.io/hostname", "node-0"),
                ("node-role.kubernetes.io/master", ""),
            ],
        );
        let worker = node_labelled(
            "node-0",
            &[
                ("kubernetes.io/hostname", "node-0"),
                ("node-role.kubernetes.io/master", "yes"),
            ],
        );
        let update = |new: &Object, old: &Object| {
            authorize(&id, Verb::Update, nodes, "", "node-0", Some(new), Some(old))
        };
        // Added.
        let err = update(&master, &plain).unwrap_err().to_string();
        assert!(
            err.contains("is not allowed to modify labels: node-role.kubernetes.io/master"),
            "{err}"
        );
        assert!(matches!(
            update(&master, &plain),
            Err(ApiError::Forbidden { .. })
        ));
        // Changed, and removed (an administrator set it; the node cannot take it away).
        assert!(update(&worker, &master).is_err());
        assert!(update(&plain, &master).is_err());
        // Left as the administrator set it while the node changes something else: allowed.
        let mut relabelled = master.clone();
        if let Object::Node(n) = &mut relabelled {
            n.metadata
                .labels
                .insert("example.com/disk".into(), "ssd".into());
        }
        assert!(update(&relabelled, &master).is_ok());
        assert!(update(&plain, &plain).is_ok());
        // A status update keeps the stored labels, so it is not judged on them.
        assert!(
            authorize(
                &id,
                Verb::UpdateStatus,
                nodes,
                "",
                "node-0",
                Some(&master),
                Some(&plain)
            )
            .is_ok()
        );
        // The administrator and the controllers may.
        for role in [Role::Admin, Role::Controller] {
            let admin = Identity {
                user: "someone".into(),
                role,
            };
            assert!(
                authorize(
                    &admin,
                    Verb::Update,
                    nodes,
                    "",
                    "node-0",
                    Some(&master),
                    Some(&plain)
                )
                .is_ok()
            );
        }
    }

    #[test]
    fn a_node_may_not_register_itself_with_restricted_labels_and_every_one_is_named() {
        let nodes = <skiff_api::kinds::Node as Kind>::INFO;
        let id = node_identity("node-0");
        let greedy = node_labelled(
            "node-0",
            &[
                ("node-restriction.kubernetes.io/gpu", "true"),
                ("foo.node-restriction.kubernetes.io/x", "1"),
                ("node-role.kubernetes.io/master", ""),
                ("kubernetes.io/hostname", "node-0"),
            ],
        );
        let err = authorize(&id, Verb::Create, nodes, "", "node-0", Some(&greedy), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "node \"node-0\" is not allowed to set the following labels: \
                 foo.node-restriction.kubernetes.io/x, node-restriction.kubernetes.io/gpu, \
                 node-role.kubernetes.io/master"
            ),
            "{err}"
        );
        assert!(err.starts_with("nodes \"node-0\" is forbidden"), "{err}");
        let plain = node_labelled("node-0", &[("kubernetes.io/hostname", "node-0")]);
        assert!(authorize(&id, Verb::Create, nodes, "", "node-0", Some(&plain), None).is_ok());
        // Another node's Node stays forbidden for the old reason.
        let other = node_labelled("node-1", &[]);
        let err = authorize(&id, Verb::Create, nodes, "", "node-1", Some(&other), None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("labels"), "{err}");
    }

    #[test]
    fn a_viewer_reads_everything_but_secrets() {
        let viewer = Identity {
            user: "eve".into(),
            role: Role::Viewer,
        };
        let secrets = <skiff_api::kinds::Secret as Kind>::INFO;
        let config_maps = <skiff_api::kinds::ConfigMap as Kind>::INFO;
        for verb in [Verb::Get, Verb::List, Verb::Watch] {
            let name = if verb == Verb::Get { "db" } else { "" };
            let err = authorize(&viewer, verb, secrets, "default", name, None, None)
                .expect_err("viewers may not read secrets")
                .to_string();
            assert_eq!(
                err,
                format!(
                    "secrets {name:?} is forbidden: User \"eve\" cannot {} secrets in the namespace \"default\"",
                    verb.as_str()
                )
            );
            assert!(authorize(&viewer, verb, config_maps, "default", name, None, None).is_ok());
        }
    }

    #[test]
    fn a_node_never_lists_or_watches_secrets_or_config_maps_and_gets_them_only_by_relationship() {
        let id = node_identity("node-1");
        let secrets = <skiff_api::kinds::Secret as Kind>::INFO;
        let config_maps = <skiff_api::kinds::ConfigMap as Kind>::INFO;
        for info in [secrets, config_maps] {
            for (verb, ns, name, why) in [
                (Verb::List, "default", "", "No Object name found"),
                (
                    Verb::Watch,
                    "",
                    "",
                    "can only read namespaced object of this type",
                ),
                (
                    Verb::Get,
                    "default",
                    "x",
                    "no relationship found between node 'node-1' and this object",
                ),
            ] {
                let err = authorize(&id, verb, info, ns, name, None, None)
                    .expect_err("refused without a relationship")
                    .to_string();
                assert!(err.ends_with(&format!(": {why}")), "{err}");
            }
            assert_eq!(
                relationship_needed(&id, Verb::Get, info, "default", "x"),
                Some("node-1")
            );
            assert_eq!(
                relationship_needed(&id, Verb::List, info, "default", ""),
                None
            );
            assert_eq!(relationship_needed(&id, Verb::Get, info, "", "x"), None);
        }
        assert_eq!(
            authorize(&id, Verb::Get, secrets, "default", "x", None, None)
                .expect_err("refused")
                .to_string(),
            "secrets \"x\" is forbidden: User \"node-1\" cannot get secrets in the namespace \"default\": no relationship found between node 'node-1' and this object"
        );
        let admin = Identity {
            user: "a".into(),
            role: Role::Admin,
        };
        assert_eq!(
            relationship_needed(&admin, Verb::Get, secrets, "default", "x"),
            None
        );
        // Other kinds stay readable by nodes.
        assert!(authorize(&id, Verb::List, <Pod as Kind>::INFO, "", "", None, None).is_ok());
    }

    #[test]
    fn a_pod_relates_a_node_to_the_secrets_and_config_maps_it_references_and_no_others() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "nodeName": "node-1",
                "imagePullSecrets": [{"name": "regcred"}],
                "containers": [{"name": "c", "image": "busybox", "env": [
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}},
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "mode"}}}
                ]}]
            }
        }))
        .expect("a pod");
        let secrets = <skiff_api::kinds::Secret as Kind>::INFO;
        let config_maps = <skiff_api::kinds::ConfigMap as Kind>::INFO;
        assert!(pod_references(&pod, "node-1", secrets, "regcred"));
        assert!(pod_references(&pod, "node-1", secrets, "db"));
        assert!(pod_references(&pod, "node-1", config_maps, "app"));
        assert!(
            !pod_references(&pod, "node-1", config_maps, "db"),
            "db is a Secret"
        );
        assert!(!pod_references(&pod, "node-1", secrets, "other"));
        assert!(
            !pod_references(&pod, "node-2", secrets, "db"),
            "bound elsewhere"
        );
        assert!(!pod_references(&pod, "node-1", <Pod as Kind>::INFO, "db"));
    }

    #[test]
    fn tokens_file_refuses_short_tokens_unknown_roles_and_duplicates() {
        let dir = std::env::temp_dir().join(format!("skiff-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let write = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, body).ok();
            p
        };
        let ok = write(
            "ok.yaml",
            "tokens:\n- {token: aaaaaaaaaaaaaaaaaaaa, user: admin, role: admin}\n- {token: bbbbbbbbbbbbbbbbbbbb, user: n1, role: node, node: n1}\n",
        );
        let auth = Authenticator::from_file(&ok).expect("valid file");
        assert_eq!(
            auth.authenticate(Some("Bearer aaaaaaaaaaaaaaaaaaaa"))
                .map(|i| i.role)
                .ok(),
            Some(Role::Admin)
        );
        assert!(
            auth.authenticate(Some("Bearer aaaaaaaaaaaaaaaaaaab"))
                .is_err()
        );
        assert!(auth.authenticate(Some("aaaaaaaaaaaaaaaaaaaa")).is_err());
        assert!(auth.authenticate(None).is_err());
        for (name, body) in [
            (
                "short.yaml",
                "tokens:\n- {token: short, user: a, role: admin}\n",
            ),
            (
                "role.yaml",
                "tokens:\n- {token: aaaaaaaaaaaaaaaaaaaa, user: a, role: root}\n",
            ),
            (
                "node.yaml",
                "tokens:\n- {token: aaaaaaaaaaaaaaaaaaaa, user: a, role: node}\n",
            ),
            (
                "dup.yaml",
                "tokens:\n- {token: aaaaaaaaaaaaaaaaaaaa, user: a, role: admin}\n- {token: aaaaaaaaaaaaaaaaaaaa, user: b, role: viewer}\n",
            ),
            (
                "field.yaml",
                "tokens:\n- {token: aaaaaaaaaaaaaaaaaaaa, user: a, role: admin, groups: [x]}\n",
            ),
        ] {
            assert!(
                Authenticator::from_file(&write(name, body)).is_err(),
                "{name}"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
