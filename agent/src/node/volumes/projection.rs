//! The files of configMap, secret, downwardAPI and projected volumes, from the API objects:
//! `items` (key -> path, per-item `mode`), `defaultMode` (0644), `optional`, with kubelet's
//! messages for what is missing.

use skiff_api::kinds::{
    ConfigMap, ConfigMapVolumeSource, DownwardApiVolumeFile, KeyToPath, Pod, ProjectedVolumeSource,
    Secret, SecretVolumeSource,
};

use super::{File, Plugin};
use crate::node::envvars::{self, EnvError, PodFacts};

/// The mode of a projected file when neither the item nor the volume gives one.
pub const DEFAULT_MODE: u32 = 0o644;

/// Why a volume's files cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// A non-optional ConfigMap is absent.
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    /// A non-optional Secret is absent.
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    /// An item names a key the ConfigMap lacks.
    #[error("configmap references non-existent config key: {0}")]
    ConfigMapKey(String),
    /// An item names a key the Secret lacks.
    #[error("secret references non-existent secret key: {0}")]
    SecretKey(String),
    /// A downward API item cannot be resolved.
    #[error(transparent)]
    Downward(#[from] EnvError),
    /// A projection Skiff does not make.
    #[error("{0} projections are not supported")]
    Unsupported(&'static str),
}

/// Whether kubelet keeps a file volume of `plugin` in memory: Secrets, downwardAPI and
/// projected volumes are, configMap volumes are not.
pub fn in_memory(plugin: Plugin) -> bool {
    !matches!(plugin, Plugin::ConfigMap | Plugin::EmptyDir)
}

fn mode_of(mode: Option<i32>, default: u32) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok()).unwrap_or(default) & 0o777
}

/// Files from `(key, bytes)` pairs through `items` (all keys when `items` is empty).
fn payload<'a>(
    all: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    items: &[KeyToPath],
    default_mode: u32,
    optional: bool,
    missing: impl Fn(&str) -> ProjectionError,
) -> Result<Vec<File>, ProjectionError> {
    if items.is_empty() {
        return Ok(all
            .map(|(k, v)| File {
                path: k.to_owned(),
                data: v.to_vec(),
                mode: default_mode,
            })
            .collect());
    }
    let mut out = Vec::new();
    for item in items {
        match all.clone().find(|(k, _)| *k == item.key) {
            Some((_, v)) => out.push(File {
                path: item.path.clone(),
                data: v.to_vec(),
                mode: mode_of(item.mode, default_mode),
            }),
            None if optional => {}
            None => return Err(missing(&item.key)),
        }
    }
    Ok(out)
}

fn config_map_pairs(cm: &ConfigMap) -> impl Iterator<Item = (&str, &[u8])> + Clone {
    cm.data
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .chain(
            cm.binary_data
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice())),
        )
}

fn secret_pairs(s: &Secret) -> impl Iterator<Item = (&str, &[u8])> + Clone {
    s.data
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .chain(
            s.string_data
                .iter()
                .filter(|(k, _)| !s.data.contains_key(*k))
                .map(|(k, v)| (k.as_str(), v.as_bytes())),
        )
}

fn config_map_part(
    name: &str,
    cm: Option<&ConfigMap>,
    items: &[KeyToPath],
    default_mode: u32,
    optional: bool,
) -> Result<Vec<File>, ProjectionError> {
    match cm {
        None if optional => Ok(Vec::new()),
        None => Err(ProjectionError::ConfigMapNotFound(name.to_owned())),
        Some(cm) => payload(config_map_pairs(cm), items, default_mode, optional, |k| {
            ProjectionError::ConfigMapKey(k.to_owned())
        }),
    }
}

fn secret_part(
    name: &str,
    s: Option<&Secret>,
    items: &[KeyToPath],
    default_mode: u32,
    optional: bool,
) -> Result<Vec<File>, ProjectionError> {
    match s {
        None if optional => Ok(Vec::new()),
        None => Err(ProjectionError::SecretNotFound(name.to_owned())),
        Some(s) => payload(secret_pairs(s), items, default_mode, optional, |k| {
            ProjectionError::SecretKey(k.to_owned())
        }),
    }
}

/// A configMap volume's files; `cm` is the ConfigMap it names, if it exists.
pub fn config_map_files(
    src: &ConfigMapVolumeSource,
    cm: Option<&ConfigMap>,
) -> Result<Vec<File>, ProjectionError> {
    config_map_part(
        &src.name,
        cm,
        &src.items,
        mode_of(src.default_mode, DEFAULT_MODE),
        src.optional.unwrap_or(false),
    )
}

/// A secret volume's files; `secret` is the Secret it names, if it exists.
pub fn secret_files(
    src: &SecretVolumeSource,
    secret: Option<&Secret>,
) -> Result<Vec<File>, ProjectionError> {
    secret_part(
        &src.secret_name,
        secret,
        &src.items,
        mode_of(src.default_mode, DEFAULT_MODE),
        src.optional.unwrap_or(false),
    )
}

/// A downwardAPI volume's (or projection's) files.
pub fn downward_files(
    pod: &Pod,
    facts: &PodFacts,
    items: &[DownwardApiVolumeFile],
    default_mode: u32,
) -> Result<Vec<File>, ProjectionError> {
    let mut out = Vec::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            envvars::field_value(pod, facts, f)?
        } else if let Some(r) = &item.resource_field_ref {
            let container = pod
                .all_containers()
                .find(|c| c.name == r.container_name)
                .ok_or_else(|| EnvError::ContainerNotFound(r.container_name.clone()))?;
            envvars::resource_value(pod, container, facts, r)?
        } else {
            String::new()
        };
        out.push(File {
            path: item.path.clone(),
            data: value.into_bytes(),
            mode: mode_of(item.mode, default_mode),
        });
    }
    Ok(out)
}

/// A projected volume's files, its sources in order; `config_map` and `secret` find the
/// objects of the pod's namespace by name.
pub fn projected_files<'a>(
    pod: &Pod,
    facts: &PodFacts,
    src: &ProjectedVolumeSource,
    config_map: impl Fn(&str) -> Option<&'a ConfigMap>,
    secret: impl Fn(&str) -> Option<&'a Secret>,
) -> Result<Vec<File>, ProjectionError> {
    let default_mode = mode_of(src.default_mode, DEFAULT_MODE);
    let mut out = Vec::new();
    for s in &src.sources {
        if let Some(c) = &s.config_map {
            out.extend(config_map_part(
                &c.name,
                config_map(&c.name),
                &c.items,
                default_mode,
                c.optional.unwrap_or(false),
            )?);
        }
        if let Some(c) = &s.secret {
            out.extend(secret_part(
                &c.name,
                secret(&c.name),
                &c.items,
                default_mode,
                c.optional.unwrap_or(false),
            )?);
        }
        if let Some(d) = &s.downward_api {
            out.extend(downward_files(pod, facts, &d.items, default_mode)?);
        }
        if s.service_account_token.is_some() {
            return Err(ProjectionError::Unsupported("serviceAccountToken"));
        }
        if s.cluster_trust_bundle.is_some() {
            return Err(ProjectionError::Unsupported("clusterTrustBundle"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn cm() -> ConfigMap {
        serde_json::from_value(json!({

            "metadata": {"name": "cfg", "namespace": "default"},
            "data": {"a": "1", "b": "2"},
            "binaryData": {"bin": "AAE="},
        }))
        .unwrap()
    }

    fn secret() -> Secret {
        serde_json::from_value(json!({

            "metadata": {"name": "s", "namespace": "default"},
            "data": {"password": "czNjcmV0"},
        }))
        .unwrap()
    }

    fn src<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn paths(files: &[File]) -> BTreeMap<String, (Vec<u8>, u32)> {
        files
            .iter()
            .map(|f| (f.path.clone(), (f.data.clone(), f.mode)))
            .collect()
    }

    #[test]
    fn all_keys_with_the_default_mode_when_no_items_are_given() {
        let files = config_map_files(&src(json!({"name": "cfg"})), Some(&cm())).unwrap();
        assert_eq!(
            paths(&files),
            BTreeMap::from([
                ("a".into(), (b"1".to_vec(), 0o644)),
                ("b".into(), (b"2".to_vec(), 0o644)),
                ("bin".into(), (vec![0, 1], 0o644)),
            ])
        );
    }

    #[test]
    fn items_pick_keys_into_paths_with_their_modes() {
        let files = config_map_files(
            &src(json!({"name": "cfg", "defaultMode": 0o600,
                        "items": [{"key": "a", "path": "conf/a.txt", "mode": 0o400}, {"key": "b", "path": "b"}]})),
            Some(&cm()),
        )
        .unwrap();
        assert_eq!(
            paths(&files),
            BTreeMap::from([
                ("conf/a.txt".into(), (b"1".to_vec(), 0o400)),
                ("b".into(), (b"2".to_vec(), 0o600)),
            ])
        );
    }

    #[test]
    fn missing_objects_and_keys_fail_with_kubelets_messages_unless_optional() {
        let err = config_map_files(&src(json!({"name": "nope"})), None).unwrap_err();
        assert_eq!(err.to_string(), "configmap \"nope\" not found");
        let err = secret_files(&src(json!({"secretName": "nope"})), None).unwrap_err();
        assert_eq!(err.to_string(), "secret \"nope\" not found");
        let err = config_map_files(
            &src(json!({"name": "cfg", "items": [{"key": "zz", "path": "z"}]})),
            Some(&cm()),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "configmap references non-existent config key: zz"
        );
        let err = secret_files(
            &src(json!({"secretName": "s", "items": [{"key": "zz", "path": "z"}]})),
            Some(&secret()),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret references non-existent secret key: zz"
        );
        assert!(
            config_map_files(&src(json!({"name": "nope", "optional": true})), None)
                .unwrap()
                .is_empty()
        );
        let files = secret_files(
            &src(json!({"secretName": "s", "optional": true,
                        "items": [{"key": "zz", "path": "z"}, {"key": "password", "path": "p"}]})),
            Some(&secret()),
        )
        .unwrap();
        assert_eq!(
            paths(&files),
            BTreeMap::from([("p".into(), (b"s3cret".to_vec(), 0o644))])
        );
    }

    #[test]
    fn projected_volumes_join_their_sources_and_refuse_tokens() {
        let pod: Pod = serde_json::from_value(json!({

            "metadata": {"name": "web", "namespace": "default", "labels": {"b": "2", "a": "1"}},
            "spec": {"containers": [{"name": "app", "image": "x",
                                     "resources": {"limits": {"memory": "64Mi"}}}]},
        }))
        .unwrap();
        let c = cm();
        let s = secret();
        let files = projected_files(
            &pod,
            &PodFacts::default(),
            &src(json!({"defaultMode": 0o440, "sources": [
                {"configMap": {"name": "cfg", "items": [{"key": "a", "path": "a"}]}},
                {"secret": {"name": "s"}},
                {"downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}},
                ]}},
            ]})),
            |n| (n == "cfg").then_some(&c),
            |n| (n == "s").then_some(&s),
        )
        .unwrap();
        assert_eq!(
            paths(&files),
            BTreeMap::from([
                ("a".into(), (b"1".to_vec(), 0o440)),
                ("password".into(), (b"s3cret".to_vec(), 0o440)),
                ("labels".into(), (b"a=\"1\"\nb=\"2\"".to_vec(), 0o440)),
                ("mem".into(), (b"64".to_vec(), 0o440)),
            ])
        );
        let err = projected_files(
            &pod,
            &PodFacts::default(),
            &src(json!({"sources": [{"serviceAccountToken": {"path": "token"}}]})),
            |_| None,
            |_| None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "serviceAccountToken projections are not supported"
        );
    }
}
