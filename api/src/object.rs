//! Every kind the API serves behind one enum, decoded from JSON or YAML with errors that name the
//! offending field.

use std::fmt;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{
    kinds::{
        ConfigMap, Deployment, Endpoints, Lease, Namespace, Node, Pod, ReplicaSet, Secret, Service,
    },
    meta::ObjectMeta,
};

/// The largest object the API stores, encoded as JSON: etcd's own request limit (1.5 MiB) less
/// 8 KiB for the key, the request's envelope and encryption at rest. A Secret or ConfigMap with
/// the most data Kubernetes allows (1 MiB, base64 in JSON for binary values) fits.
pub const MAX_OBJECT_BYTES: usize = (3 << 19) - (8 << 10);

/// Static facts about one resource.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// `Pod`.
    pub kind: &'static str,
    /// `pods`: the name in the API, in etcd keys and in skiffctl.
    pub plural: &'static str,
    /// `pod`.
    pub singular: &'static str,
    /// `po`.
    pub short_names: &'static [&'static str],
    /// `v1`, `apps/v1`, `coordination.k8s.io/v1`.
    pub api_version: &'static str,
    pub namespaced: bool,
    /// Whether `status` is written only through UpdateStatus (and kept from the stored object by
    /// Update).
    pub has_status: bool,
}

macro_rules! resources {
    ($($variant:ident: $kind:literal, $plural:literal, $singular:literal, [$($short:literal),*], $api:literal, $namespaced:literal, $status:literal;)*) => {
        /// One object of any kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Object {
            $($variant($variant),)*
        }

        $(
            impl Kind for $variant {
                const INFO: &'static ResourceInfo = &ResourceInfo {
                    kind: $kind,
                    plural: $plural,
                    singular: $singular,
                    short_names: &[$($short),*],
                    api_version: $api,
                    namespaced: $namespaced,
                    has_status: $status,
                };
                fn meta(&self) -> &ObjectMeta {
                    &self.metadata
                }
                fn meta_mut(&mut self) -> &mut ObjectMeta {
                    &mut self.metadata
                }
                fn into_object(self) -> Object {
                    Object::$variant(self)
                }
                fn from_object(object: Object) -> Option<Self> {
                    match object {
                        Object::$variant(o) => Some(o),
                        #[allow(unreachable_patterns, reason = "one arm per kind")]
                        _ => None,
                    }
                }
            }
        )*

        /// Every resource, in the order skiffctl lists them.
        pub const RESOURCES: &[&ResourceInfo] = &[$(<$variant as Kind>::INFO),*];

        impl Object {
            pub fn info(&self) -> &'static ResourceInfo {
                match self {
                    $(Object::$variant(_) => <$variant as Kind>::INFO,)*
                }
            }
            pub fn meta(&self) -> &ObjectMeta {
                match self {
                    $(Object::$variant(o) => &o.metadata,)*
                }
            }
            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(Object::$variant(o) => &mut o.metadata,)*
                }
            }
            /// Fills the defaults a Kubernetes API server would.
            pub fn apply_defaults(&mut self) {
                match self {
                    $(Object::$variant(o) => crate::defaults::Defaults::apply_defaults(o),)*
                }
            }
            /// Checks the object on its own; an empty list means valid.
            pub fn validate(&self) -> Vec<FieldError> {
                match self {
                    $(Object::$variant(o) => crate::validate::Validate::validate(o),)*
                }
            }
            /// Checks an update against the stored object (immutable fields).
            pub fn validate_update(&self, old: &Object) -> Vec<FieldError> {
                match (self, old) {
                    $((Object::$variant(new), Object::$variant(old)) => crate::validate::Validate::validate_update(new, old),)*
                    _ => vec![FieldError::new("kind", format!("may not change from {} to {}", old.info().kind, self.info().kind))],
                }
            }
            /// A field for field selectors (`spec.nodeName`, `status.phase`, ...), `None` when the
            /// kind does not support selecting on it.
            pub fn field(&self, path: &str) -> Option<String> {
                match path {
                    "metadata.name" => return Some(self.meta().name.clone()),
                    "metadata.namespace" => return Some(self.meta().namespace.clone()),
                    _ => {}
                }
                match (self, path) {
                    (Object::Pod(p), "spec.nodeName") => Some(p.spec.node_name.clone()),
                    (Object::Pod(p), "status.phase") => Some(p.status.phase.clone()),
                    (Object::Node(n), "spec.unschedulable") => Some(n.spec.unschedulable.to_string()),
                    (Object::Service(s), "spec.type") => Some(s.spec.type_.clone()),
                    (Object::Service(s), "spec.clusterIP") => Some(s.spec.cluster_ip.clone()),
                    (Object::Secret(s), "type") => Some(s.type_.clone()),
                    _ => None,
                }
            }
            fn from_typed_value(info: &'static ResourceInfo, value: Value) -> Result<Object, DecodeError> {
                match info.kind {
                    $($kind => decode_typed::<$variant>(value).map(Object::$variant),)*
                    _ => Err(DecodeError::UnknownKind { kind: info.kind.to_owned() }),
                }
            }
            fn to_typed_value(&self) -> Value {
                match self {
                    $(Object::$variant(o) => serde_json::to_value(o).unwrap_or(Value::Null),)*
                }
            }
        }
    };
}

resources! {
    Namespace: "Namespace", "namespaces", "namespace", ["ns"], "v1", false, true;
    Node: "Node", "nodes", "node", ["no"], "v1", false, true;
    Pod: "Pod", "pods", "pod", ["po"], "v1", true, true;
    Service: "Service", "services", "service", ["svc"], "v1", true, true;
    Endpoints: "Endpoints", "endpoints", "endpoints", ["ep"], "v1", true, false;
    ConfigMap: "ConfigMap", "configmaps", "configmap", ["cm"], "v1", true, false;
    Secret: "Secret", "secrets", "secret", [], "v1", true, false;
    ReplicaSet: "ReplicaSet", "replicasets", "replicaset", ["rs"], "apps/v1", true, true;
    Deployment: "Deployment", "deployments", "deployment", ["deploy"], "apps/v1", true, true;
    Lease: "Lease", "leases", "lease", [], "coordination.k8s.io/v1", true, false;
}

/// What every kind's serde type offers.
pub trait Kind:
    Serialize + DeserializeOwned + Clone + fmt::Debug + PartialEq + Send + Sync + 'static
{
    const INFO: &'static ResourceInfo;
    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    fn into_object(self) -> Object;
    /// `None` when the object is of another kind.
    fn from_object(object: Object) -> Option<Self>;
}

/// Finds a resource by kind, plural, singular or short name, case-insensitively; a group suffix
/// (`deployments.apps`) is accepted.
pub fn resource_by_name(name: &str) -> Option<&'static ResourceInfo> {
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b, Some(g)),
        None => (lower.as_str(), None),
    };
    RESOURCES.iter().copied().find(|r| {
        let names_match = r.plural == base
            || r.singular == base
            || r.kind.eq_ignore_ascii_case(base)
            || r.short_names.contains(&base);
        let group_matches = match group {
            None => true,
            Some(g) => r.api_version.rsplit_once('/').map(|(grp, _)| grp) == Some(g),
        };
        names_match && group_matches
    })
}

/// The fields a field selector may name for a resource.
pub fn selectable_fields(info: &ResourceInfo) -> &'static [&'static str] {
    match info.plural {
        "pods" => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "status.phase",
        ],
        "nodes" => &["metadata.name", "spec.unschedulable"],
        "services" => &[
            "metadata.name",
            "metadata.namespace",
            "spec.type",
            "spec.clusterIP",
        ],
        "secrets" => &["metadata.name", "metadata.namespace", "type"],
        _ if info.namespaced => &["metadata.name", "metadata.namespace"],
        _ => &["metadata.name"],
    }
}

/// Finds a resource by its `plural` name exactly (as in requests and etcd keys).
pub fn resource_by_plural(plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().copied().find(|r| r.plural == plural)
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `spec.template.spec.containers[0].ports[1].name`.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why bytes are not an object the API accepts.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not UTF-8 text.
    #[error("the object is not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    /// The text is not JSON (or YAML) at all.
    #[error("not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    /// The document is not a mapping.
    #[error("the document must be a mapping with apiVersion, kind and metadata, not {found}")]
    NotAnObject { found: &'static str },
    /// `kind` is missing.
    #[error("kind: Required value: every object needs a kind (Pod, Service, Deployment, ...)")]
    MissingKind,
    /// `apiVersion` is missing.
    #[error("apiVersion: Required value: {kind} is {want}")]
    MissingApiVersion { kind: String, want: &'static str },
    /// `kind` names nothing Skiff serves.
    #[error(
        "kind: Unsupported value: {kind:?}: supported kinds are Namespace, Node, Pod, Service, Endpoints, ConfigMap, Secret, ReplicaSet, Deployment, Lease"
    )]
    UnknownKind { kind: String },
    /// The `apiVersion` does not serve this kind.
    #[error("apiVersion: Unsupported value: {got:?}: {kind} is served as {want}")]
    WrongApiVersion {
        kind: String,
        got: String,
        want: &'static str,
    },
    /// A field has the wrong type, an invalid value, or is not supported.
    #[error("{path}: {message}")]
    Field { path: String, message: String },
    /// The encoded object is over [`MAX_OBJECT_BYTES`].
    #[error("the object is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The object is not of the kind the request was for.
    #[error("kind: Invalid value: {got:?}: the request is for {want}")]
    KindMismatch { got: String, want: &'static str },
}

impl Object {
    /// Decodes the JSON an API request carries.
    pub fn from_json(bytes: &[u8]) -> Result<Object, DecodeError> {
        if bytes.len() > MAX_OBJECT_BYTES {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: MAX_OBJECT_BYTES,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8 {
            offset: e.valid_up_to(),
        })?;
        let crate::manifest::Strict(value) =
            serde_json::from_str(text).map_err(|e| DecodeError::Syntax {
                format: "JSON",
                message: e.to_string(),
            })?;
        Object::from_value(value)
    }

    /// Decodes a JSON value in the Kubernetes shape (`apiVersion`, `kind`, `metadata`, ...).
    pub fn from_value(value: Value) -> Result<Object, DecodeError> {
        let Value::Object(mut map) = value else {
            return Err(DecodeError::NotAnObject {
                found: value_type(&value),
            });
        };
        let kind = match map.remove("kind") {
            Some(Value::String(k)) if !k.is_empty() => k,
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(DecodeError::MissingKind);
            }
            Some(other) => {
                return Err(DecodeError::Field {
                    path: "kind".into(),
                    message: format!("invalid type: {}, expected a string", value_type(&other)),
                });
            }
        };
        let info = crate::object::RESOURCES
            .iter()
            .copied()
            .find(|r| r.kind == kind)
            .ok_or_else(|| DecodeError::UnknownKind { kind: kind.clone() })?;
        match map.remove("apiVersion") {
            Some(Value::String(v)) if v == info.api_version => {}
            Some(Value::String(v)) if !v.is_empty() => {
                return Err(DecodeError::WrongApiVersion {
                    kind,
                    got: v,
                    want: info.api_version,
                });
            }
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(DecodeError::MissingApiVersion {
                    kind,
                    want: info.api_version,
                });
            }
            Some(other) => {
                return Err(DecodeError::Field {
                    path: "apiVersion".into(),
                    message: format!("invalid type: {}, expected a string", value_type(&other)),
                });
            }
        }
        Object::from_typed_value(info, Value::Object(map))
    }

    /// Decodes and checks that the object is of the expected resource.
    pub fn from_json_as(bytes: &[u8], want: &'static ResourceInfo) -> Result<Object, DecodeError> {
        let object = Object::from_json(bytes)?;
        if object.info() != want {
            return Err(DecodeError::KindMismatch {
                got: object.info().kind.to_owned(),
                want: want.kind,
            });
        }
        Ok(object)
    }

    /// The object as a JSON value with `apiVersion` and `kind`.
    pub fn to_value(&self) -> Value {
        let mut value = self.to_typed_value();
        if let Value::Object(map) = &mut value {
            let info = self.info();
            map.insert("apiVersion".into(), Value::String(info.api_version.into()));
            map.insert("kind".into(), Value::String(info.kind.into()));
        }
        value
    }

    /// The object's JSON encoding (what the API stores and sends).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_value()).unwrap_or_default()
    }

    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub fn key(&self) -> String {
        let m = self.meta();
        if m.namespace.is_empty() {
            m.name.clone()
        } else {
            format!("{}/{}", m.namespace, m.name)
        }
    }

    /// Converts to the typed object, `None` when it is of another kind.
    pub fn into_kind<K: Kind>(self) -> Option<K> {
        K::from_object(self)
    }
}

/// Encodes one typed object as the API's JSON.
pub fn to_json<K: Kind>(object: &K) -> Vec<u8> {
    object.clone().into_object().to_json()
}

fn decode_typed<K: Kind>(value: Value) -> Result<K, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        DecodeError::Field {
            path: if path == "." { "(root)".into() } else { path },
            message,
        }
    })
}

pub(crate) fn value_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
