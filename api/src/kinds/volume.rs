//! Pod volumes, their mounts, and the downward API selectors volumes share with env vars.

use serde::{Deserialize, Serialize};

use crate::quantity::Quantity;

/// A directory the containers of a pod may mount: a name and exactly one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Volume {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    #[serde(rename = "downwardAPI", skip_serializing_if = "Option::is_none")]
    pub downward_api: Option<DownwardApiVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projected: Option<ProjectedVolumeSource>,
    // Kubernetes' other volume sources decode (as raw JSON) only so that validation can refuse
    // each by name with the reason, instead of decoding failing with "unknown field"; they are
    // never stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_elastic_block_store: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_disk: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_file: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cephfs: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cinder: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csi: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fc: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flex_volume: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flocker: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gce_persistent_disk: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_repo: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub glusterfs: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nfs: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub photon_persistent_disk: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portworx_volume: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quobyte: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rbd: Option<serde_json::Value>,
    #[serde(rename = "scaleIO", skip_serializing_if = "Option::is_none")]
    pub scale_io: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storageos: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsphere_volume: Option<serde_json::Value>,
}

impl Volume {
    /// The sources Skiff implements, by field name, and whether each is set (in the order
    /// Kubernetes checks them, so the same one of two is reported as the extra).
    pub fn sources(&self) -> [(&'static str, bool); 6] {
        [
            ("emptyDir", self.empty_dir.is_some()),
            ("hostPath", self.host_path.is_some()),
            ("secret", self.secret.is_some()),
            ("downwardAPI", self.downward_api.is_some()),
            ("configMap", self.config_map.is_some()),
            ("projected", self.projected.is_some()),
        ]
    }

    /// The Kubernetes sources Skiff does not implement, by field name, and whether each is set.
    pub fn unsupported_sources(&self) -> [(&'static str, bool); 24] {
        [
            (
                "awsElasticBlockStore",
                self.aws_elastic_block_store.is_some(),
            ),
            ("azureDisk", self.azure_disk.is_some()),
            ("azureFile", self.azure_file.is_some()),
            ("cephfs", self.cephfs.is_some()),
            ("cinder", self.cinder.is_some()),
            ("csi", self.csi.is_some()),
            ("ephemeral", self.ephemeral.is_some()),
            ("fc", self.fc.is_some()),
            ("flexVolume", self.flex_volume.is_some()),
            ("flocker", self.flocker.is_some()),
            ("gcePersistentDisk", self.gce_persistent_disk.is_some()),
            ("gitRepo", self.git_repo.is_some()),
            ("glusterfs", self.glusterfs.is_some()),
            ("image", self.image.is_some()),
            ("iscsi", self.iscsi.is_some()),
            ("nfs", self.nfs.is_some()),
            (
                "persistentVolumeClaim",
                self.persistent_volume_claim.is_some(),
            ),
            (
                "photonPersistentDisk",
                self.photon_persistent_disk.is_some(),
            ),
            ("portworxVolume", self.portworx_volume.is_some()),
            ("quobyte", self.quobyte.is_some()),
            ("rbd", self.rbd.is_some()),
            ("scaleIO", self.scale_io.is_some()),
            ("storageos", self.storageos.is_some()),
            ("vsphereVolume", self.vsphere_volume.is_some()),
        ]
    }
}

/// A directory that starts empty and lives as long as the pod on its node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EmptyDirVolumeSource {
    /// `""` (the node's disk) or `Memory` (tmpfs).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub medium: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}

/// A file or directory of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HostPathVolumeSource {
    pub path: String,
    /// `""` (default: no check), `DirectoryOrCreate`, `Directory`, `FileOrCreate`, `File`,
    /// `Socket`, `CharDevice` or `BlockDevice`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

/// The keys of a ConfigMap as files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConfigMapVolumeSource {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Only these keys, at these paths; every key at its own name when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    /// Defaults to 0644 (420).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "file_mode"
    )]
    pub default_mode: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// The keys of a Secret as files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SecretVolumeSource {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub secret_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    /// Defaults to 0644 (420).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "file_mode"
    )]
    pub default_mode: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// One key of a ConfigMap or Secret at a relative path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "file_mode"
    )]
    pub mode: Option<i32>,
}

/// Facts about the pod as files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DownwardApiVolumeSource {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<DownwardApiVolumeFile>,
    /// Defaults to 0644 (420).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "file_mode"
    )]
    pub default_mode: Option<i32>,
}

/// One file of a downward API volume: exactly one of `fieldRef` and `resourceFieldRef`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DownwardApiVolumeFile {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<ObjectFieldSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_field_ref: Option<ResourceFieldSelector>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "file_mode"
    )]
    pub mode: Option<i32>,
}

/// Several sources merged into one directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProjectedVolumeSource {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<VolumeProjection>,
    /// Defaults to 0644 (420).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "file_mode"
    )]
    pub default_mode: Option<i32>,
}

/// One source of a projected volume: exactly one of the four.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VolumeProjection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapProjection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretProjection>,
    #[serde(rename = "downwardAPI", skip_serializing_if = "Option::is_none")]
    pub downward_api: Option<DownwardApiProjection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_token: Option<ServiceAccountTokenProjection>,
    /// Kubernetes' beta ClusterTrustBundle projection, decoded only to be refused by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_trust_bundle: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConfigMapProjection {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SecretProjection {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DownwardApiProjection {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<DownwardApiVolumeFile>,
}

/// A token of the pod's service account, at `path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServiceAccountTokenProjection {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub audience: String,
    /// Defaults to 3600.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_seconds: Option<i64>,
    pub path: String,
}

/// A field of the pod (`metadata.name`, `status.podIP`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ObjectFieldSelector {
    /// Defaults to `v1`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    pub field_path: String,
}

/// A container's resource request or limit, in units of `divisor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ResourceFieldSelector {
    /// Required in volumes; the container itself when empty in env vars.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container_name: String,
    pub resource: String,
    /// Defaults to `1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub divisor: Option<Quantity>,
}

/// Where a container mounts one of the pod's volumes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(skip_serializing_if = "super::is_false")]
    pub read_only: bool,
    /// A path inside the volume to mount instead of its root.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
    /// Refused: Skiff does not expand env vars in sub-paths.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sub_path_expr: String,
    /// Only `None` (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount_propagation: Option<String>,
}

/// The pod fields an env var's `fieldRef` may name (plus subscripted labels and annotations).
pub const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// The pod fields a downward API volume file's `fieldRef` may name (plus subscripted labels and
/// annotations).
pub const VOLUME_FIELD_PATHS: &[&str] = &[
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
];

/// The container resources a `resourceFieldRef` may name.
pub const RESOURCE_FIELD_PATHS: &[&str] = &[
    "limits.cpu",
    "limits.ephemeral-storage",
    "limits.memory",
    "requests.cpu",
    "requests.ephemeral-storage",
    "requests.memory",
];

/// A file mode as manifests write it: a number, or YAML 1.1's octal form (`0755`, which
/// Kubernetes' YAML reader takes as 493 and this project's YAML 1.2 reader leaves as the text
/// "0755"; `0o755` too).
fn file_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    use serde::de::Error as _;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Number(i32),
        Text(String),
    }
    match Option::<Mode>::deserialize(d)? {
        None => Ok(None),
        Some(Mode::Number(n)) => Ok(Some(n)),
        Some(Mode::Text(t)) => {
            let digits = t
                .strip_prefix("0o")
                .or_else(|| t.strip_prefix('0').filter(|d| !d.is_empty()));
            digits
                .and_then(|d| i32::from_str_radix(d, 8).ok())
                .map(Some)
                .ok_or_else(|| {
                    D::Error::custom(format!(
                        "invalid type: string {t:?}, expected a file mode (a number, or octal as 0644)"
                    ))
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_numbers_or_yaml_1_1_octal_as_kubernetes_reads_them() {
        let k: KeyToPath = serde_json::from_value(serde_json::json!(
            {"key": "a", "path": "a", "mode": "0755"}
        ))
        .unwrap();
        assert_eq!(k.mode, Some(0o755));
        let k: KeyToPath =
            serde_json::from_value(serde_json::json!({"key": "a", "path": "a", "mode": 420}))
                .unwrap();
        assert_eq!(k.mode, Some(420));
        let s: SecretVolumeSource =
            serde_json::from_value(serde_json::json!({"secretName": "s", "defaultMode": "0o400"}))
                .unwrap();
        assert_eq!(s.default_mode, Some(0o400));
        // As a manifest writes it, unquoted.
        let objects = crate::manifest::parse(
            b"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: busybox:1.35}]\n  volumes:\n  - name: s\n    secret:\n      secretName: s\n      defaultMode: 0400\n",
        )
        .unwrap();
        let crate::Object::Pod(p) = &objects[0] else {
            panic!("not a pod")
        };
        let secret = p.spec.volumes[0].secret.as_ref().unwrap();
        assert_eq!(secret.default_mode, Some(0o400));
        for bad in ["0789", "755", "rw", "0"] {
            let e = serde_json::from_value::<KeyToPath>(
                serde_json::json!({"key": "a", "path": "a", "mode": bad}),
            )
            .unwrap_err();
            assert!(e.to_string().contains("expected a file mode"), "{bad}: {e}");
        }
    }
}
