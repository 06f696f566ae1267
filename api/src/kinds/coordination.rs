//! `coordination.k8s.io/v1` Lease: node heartbeats and leader election.

use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;

/// The namespace node heartbeats live in: one Lease per node, named after it (Kubernetes has
/// `kube-node-lease`). The API server creates and protects it, nodes may write only their own
/// Lease in it, and the node lifecycle controller watches it.
pub const NODE_LEASE_NAMESPACE: &str = "skiff-node-lease";

/// A lease held by one identity for a duration, renewed by writing `renewTime`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Lease {
    pub metadata: ObjectMeta,
    pub spec: LeaseSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaseSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder_identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_duration_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acquire_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_transitions: Option<i32>,
}
