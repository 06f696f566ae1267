//! Bearer-token authentication from an operator-written file, and the authorization rules for
//! each role.

use std::{collections::HashMap, path::Path};

use serde::Deserialize;
use skiff_api::{Object, ResourceInfo};

use super::error::ApiError;

/// The namespace node heartbeats (Leases named after their node) live in.
pub const NODE_LEASE_NAMESPACE: &str = "skiff-node-lease";

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
        Role::Viewer => verb.reads(),
        Role::Node(node) => {
            verb.reads() || node_may_write(node, verb, info, namespace, name, new, old)
        }
    };
    if allowed {
        return Ok(());
    }
    let scope = if info.namespaced && !namespace.is_empty() {
        format!("in the namespace {namespace:?}")
    } else {
        "at the cluster scope".to_owned()
    };
    Err(ApiError::Forbidden {
        user: id.user.clone(),
        verb: verb.as_str(),
        resource: info.plural.to_owned(),
        name: name.to_owned(),
        scope,
    })
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
    use skiff_api::{Kind, kinds::Pod};

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
