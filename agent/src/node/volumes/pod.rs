//! A pod's volumes from its spec: each volume set up (or refreshed: the same call, which
//! writes only what changed) under the pod's directory, then each container's
//! `volumeMounts` turned into the bind mounts of its runtime spec.

use std::{collections::BTreeMap, error::Error as _, path::PathBuf};

use skiff_api::kinds::{ConfigMap, Container, Pod, Secret, Volume};

use super::{
    Plugin, VolumeError, Volumes, host_path,
    projection::{self, ProjectionError},
};
use crate::{node::envvars::PodFacts, paths::PodIds, runtime::BindMount};

/// Why a pod's volumes or a container's mounts could not be made: the message of the pod's
/// `FailedMount` event, or of the container's `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error)]
pub enum PodVolumeError {
    /// Setting up volume `volume` failed.
    #[error("MountVolume.SetUp failed for volume {volume:?} : {source}")]
    SetUp {
        volume: String,
        #[source]
        source: Box<SetUpError>,
    },
    /// A volumeMount names no volume of the pod (kubelet's message).
    #[error("cannot find volume {volume:?} to mount into container {container:?}")]
    NoSuchVolume { volume: String, container: String },
    /// A volumeMount's `mountPropagation` other than `None`.
    #[error("mountPropagation {0:?} is not supported")]
    Propagation(String),
    /// A volumeMount's `subPathExpr`, which the API refuses (only a write past it makes one).
    #[error(
        "subPathExpr of volumeMount {volume:?} of container {container:?} is not supported (use subPath)"
    )]
    SubPathExpr { volume: String, container: String },
    /// A subPath could not be bound.
    #[error(
        "failed to prepare subPath for volumeMount {volume:?} of container {container:?}: {source}"
    )]
    SubPath {
        volume: String,
        container: String,
        #[source]
        source: VolumeError,
    },
}

impl PodVolumeError {
    /// The message the pod shows: kubelet's `MountVolume.SetUp failed for volume "cfg" :
    /// configmap "web-cfg" not found`, then the deeper causes, each once.
    pub fn message(&self) -> String {
        // The direct cause is part of the message already.
        let mut out = self.to_string();
        let mut next = match self {
            PodVolumeError::SetUp { source, .. } => source.source(),
            PodVolumeError::SubPath { source, .. } => source.source(),
            PodVolumeError::NoSuchVolume { .. }
            | PodVolumeError::Propagation(_)
            | PodVolumeError::SubPathExpr { .. } => None,
        };
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}

/// What failed while setting up one volume.
#[derive(Debug, thiserror::Error)]
pub enum SetUpError {
    /// The files could not be made from the objects.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The directory, mount or files could not be made.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The volume has no source Skiff sets up (the API refuses such pods).
    #[error("volume has no supported source")]
    NoSource,
}

/// A volume set up on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodVolume {
    /// Where it is on the host.
    pub path: PathBuf,
    /// Mounted read-only whatever the volumeMount says: configMap, secret, downwardAPI and
    /// projected volumes are, in Kubernetes. A subPath missing from such a volume is refused,
    /// never made in it.
    pub read_only: bool,
}

/// What setting up a pod's volumes reads besides the pod.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The pod's ConfigMaps (its namespace's, those it names; absent ones simply missing).
    pub config_maps: &'a [ConfigMap],
    /// The pod's Secrets (likewise).
    pub secrets: &'a [Secret],
    /// Addresses and allocatable resources, for the downward API.
    pub facts: &'a PodFacts,
    /// The size of a `medium: Memory` emptyDir without `sizeLimit`: the node's allocatable
    /// memory.
    pub default_memory_size: u64,
    /// The pod's user namespace (`hostUsers: false`): its `fsGroup` is a group inside it, so
    /// the volumes' files get the host group it maps to.
    pub user_namespace: Option<crate::runtime::UserNamespace>,
}

/// Sets up (or refreshes) every volume of `pod`; the volumes by name. Idempotent: a second
/// call writes only files whose content changed, and leaves emptyDirs as they are. The first
/// volume that fails is the error (kubelet reports each; the pod waits either way).
pub fn set_up(
    volumes: &Volumes,
    ids: &PodIds,
    pod: &Pod,
    inputs: Inputs<'_>,
) -> Result<BTreeMap<String, PodVolume>, PodVolumeError> {
    let fs_group = pod
        .spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.fs_group)
        .and_then(|g| u32::try_from(g).ok())
        .map(|g| match inputs.user_namespace {
            Some(ns) => ns.host_id.saturating_add(g),
            None => g,
        });
    let mut out = BTreeMap::new();
    for v in &pod.spec.volumes {
        let set_up = set_up_one(volumes, ids, pod, v, inputs, fs_group).map_err(|source| {
            PodVolumeError::SetUp {
                volume: v.name.clone(),
                source: Box::new(source),
            }
        })?;
        out.insert(v.name.clone(), set_up);
    }
    Ok(out)
}

fn set_up_one(
    volumes: &Volumes,
    ids: &PodIds,
    pod: &Pod,
    v: &Volume,
    inputs: Inputs<'_>,
    fs_group: Option<u32>,
) -> Result<PodVolume, SetUpError> {
    let cm = |name: &str| inputs.config_maps.iter().find(|c| c.metadata.name == name);
    let secret = |name: &str| inputs.secrets.iter().find(|s| s.metadata.name == name);
    let files = |plugin: Plugin, files: Vec<super::File>| -> Result<PodVolume, SetUpError> {
        let (path, _) = volumes.files(
            ids,
            plugin,
            &v.name,
            &files,
            projection::in_memory(plugin),
            fs_group,
        )?;
        Ok(PodVolume {
            path,
            read_only: true,
        })
    };
    if let Some(e) = &v.empty_dir {
        let size = match &e.size_limit {
            Some(q) => u64::try_from(q.value()).unwrap_or(inputs.default_memory_size),
            None => inputs.default_memory_size,
        };
        let memory = e.medium == "Memory";
        let path = volumes.empty_dir(ids, &v.name, &e.medium, memory.then_some(size), fs_group)?;
        return Ok(PodVolume {
            path,
            read_only: false,
        });
    }
    if let Some(h) = &v.host_path {
        let path = host_path(&h.path, h.type_.as_deref().unwrap_or(""))?;
        return Ok(PodVolume {
            path,
            read_only: false,
        });
    }
    if let Some(c) = &v.config_map {
        return files(
            Plugin::ConfigMap,
            projection::config_map_files(c, cm(&c.name))?,
        );
    }
    if let Some(s) = &v.secret {
        return files(
            Plugin::Secret,
            projection::secret_files(s, secret(&s.secret_name))?,
        );
    }
    if let Some(d) = &v.downward_api {
        let mode = d
            .default_mode
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(projection::DEFAULT_MODE);
        return files(
            Plugin::DownwardApi,
            projection::downward_files(pod, inputs.facts, &d.items, mode)?,
        );
    }
    if let Some(p) = &v.projected {
        return files(
            Plugin::Projected,
            projection::projected_files(pod, inputs.facts, p, cm, secret)?,
        );
    }
    Err(SetUpError::NoSource)
}

/// The bind mounts of `container` (mount `index`es count its `volumeMounts`), in the order
/// given: volumes from [`set_up`], subPaths bound first under the pod's directory.
pub fn container_mounts(
    volumes: &Volumes,
    ids: &PodIds,
    container: &Container,
    pod_volumes: &BTreeMap<String, PodVolume>,
) -> Result<Vec<BindMount>, PodVolumeError> {
    let mut out = Vec::new();
    for (index, m) in container.volume_mounts.iter().enumerate() {
        let v = pod_volumes
            .get(&m.name)
            .ok_or_else(|| PodVolumeError::NoSuchVolume {
                volume: m.name.clone(),
                container: container.name.clone(),
            })?;
        if let Some(p) = m.mount_propagation.as_deref()
            && p != "None"
        {
            return Err(PodVolumeError::Propagation(p.to_owned()));
        }
        if !m.sub_path_expr.is_empty() {
            return Err(PodVolumeError::SubPathExpr {
                volume: m.name.clone(),
                container: container.name.clone(),
            });
        }
        let source = if m.sub_path.is_empty() {
            v.path.clone()
        } else {
            volumes
                .subpath(ids, &m.name, v, &m.sub_path, &container.name, index)
                .map_err(|source| PodVolumeError::SubPath {
                    volume: m.name.clone(),
                    container: container.name.clone(),
                    source,
                })?
        };
        out.push(BindMount {
            source,
            destination: m.mount_path.clone(),
            read_only: m.read_only || v.read_only,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::{fs, sync::Arc};

    use serde_json::json;

    use super::*;
    use crate::node::volumes::{FakeMounter, mount::FakeMount, testdir::TestDir};

    const UID: &str = "0b3cb1f4-3a0e-4a59-9c16-6c8c6f9f0b7e";

    fn pod(hostdir: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": UID},
            "spec": {
                "securityContext": {"fsGroup": 2000},
                "volumes": [
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                    {"name": "host", "hostPath": {"path": hostdir, "type": "DirectoryOrCreate"}},
                    {"name": "cfg", "configMap": {"name": "cfg"}},
                    {"name": "creds", "secret": {"secretName": "creds"}},
                    {"name": "info", "downwardAPI": {"items": [
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                ],
                "containers": [{"name": "app", "image": "busybox",
                    "volumeMounts": [
                        {"name": "scratch", "mountPath": "/scratch"},
                        {"name": "cfg", "mountPath": "/etc/app"},
                        {"name": "cfg", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
                        {"name": "scratch", "mountPath": "/logs", "subPath": "logs/app"},
                        {"name": "host", "mountPath": "/host", "readOnly": true},
                    ]}],
            },
        }))
        .unwrap()
    }

    fn objects() -> (Vec<ConfigMap>, Vec<Secret>) {
        (
            vec![
                serde_json::from_value(
                    json!({"metadata": {"name": "cfg"}, "data": {"app.conf": "a=1"}}),
                )
                .unwrap(),
            ],
            vec![
                serde_json::from_value(
                    json!({"metadata": {"name": "creds"}, "data": {"token": "dG9r"}}),
                )
                .unwrap(),
            ],
        )
    }

    #[test]
    fn in_a_user_namespace_fs_group_is_the_host_group_it_maps_to() {
        use std::os::unix::fs::MetadataExt as _;
        let t = TestDir::new("podvol-userns");
        let v = Volumes::new(t.path().join("pods"), Arc::new(FakeMounter::default()));
        let ids = PodIds::new("default", "web", UID).unwrap();
        let p = pod(&t.path().join("host").to_string_lossy());
        let (cms, secrets) = objects();
        let facts = PodFacts::default();
        let ns = crate::runtime::UserNamespace {
            host_id: 3 * 65_536,
            size: 65_536,
        };
        let inputs = Inputs {
            config_maps: &cms,
            secrets: &secrets,
            facts: &facts,
            default_memory_size: 1 << 30,
            user_namespace: Some(ns),
        };
        let vols = set_up(&v, &ids, &p, inputs).unwrap();
        let gid = fs::metadata(vols["cfg"].path.join("app.conf"))
            .unwrap()
            .gid();
        assert_eq!(gid, 3 * 65_536 + 2000, "fsGroup 2000 inside the namespace");
    }

    #[test]
    fn every_volume_is_set_up_and_mounts_follow_kubernetes_rules() {
        let t = TestDir::new("podvol");
        let m = Arc::new(FakeMounter::default());
        let v = Volumes::new(t.path().join("pods"), m.clone());
        let ids = PodIds::new("default", "web", UID).unwrap();
        let host = t.path().join("host/dir");
        let p = pod(&host.to_string_lossy());
        let (cms, secrets) = objects();
        let facts = PodFacts::default();
        let inputs = Inputs {
            config_maps: &cms,
            secrets: &secrets,
            facts: &facts,
            default_memory_size: 1 << 30,
            user_namespace: None,
        };
        let vols = set_up(&v, &ids, &p, inputs).unwrap();
        assert!(host.is_dir());
        assert_eq!(
            m.mounts()[&vols["cache"].path],
            FakeMount::Tmpfs(Some(16 << 20))
        );
        assert_eq!(m.mounts()[&vols["creds"].path], FakeMount::Tmpfs(None));
        assert!(!m.mounts().contains_key(&vols["cfg"].path));
        assert_eq!(
            fs::read_to_string(vols["cfg"].path.join("app.conf")).unwrap(),
            "a=1"
        );
        assert_eq!(
            fs::read_to_string(vols["creds"].path.join("token")).unwrap(),
            "tok"
        );
        assert_eq!(
            fs::read_to_string(vols["info"].path.join("name")).unwrap(),
            "web"
        );
        // Refreshing is the same call.
        assert_eq!(set_up(&v, &ids, &p, inputs).unwrap(), vols);

        let mounts = container_mounts(&v, &ids, &p.spec.containers[0], &vols).unwrap();
        let by_dest: BTreeMap<&str, &BindMount> =
            mounts.iter().map(|b| (b.destination.as_str(), b)).collect();
        assert_eq!(by_dest["/scratch"].source, vols["scratch"].path);
        assert!(!by_dest["/scratch"].read_only);
        assert!(
            by_dest["/etc/app"].read_only,
            "configMap volumes are read-only"
        );
        assert!(by_dest["/host"].read_only);
        assert!(
            by_dest["/etc/app.conf"].source.starts_with(
                t.path()
                    .join("pods")
                    .join(UID)
                    .join("volume-subpaths/cfg/app")
            )
        );
        // A subPath of an emptyDir is made in it.
        assert!(vols["scratch"].path.join("logs/app").is_dir());
        assert!(!by_dest["/logs"].read_only);

        v.teardown(&ids).unwrap();
        m.assert_nothing_under(t.path());
        assert!(!t.path().join("pods").join(UID).exists());
        assert!(host.is_dir(), "a hostPath is the host's: never removed");
    }

    #[test]
    fn a_subpath_naming_a_key_the_config_map_lacks_fails_the_start_and_makes_no_directory() {
        let t = TestDir::new("podvol-subpath-missing");
        let v = Volumes::new(t.path().join("pods"), Arc::new(FakeMounter::default()));
        let ids = PodIds::new("default", "web", UID).unwrap();
        let mut p = pod(&t.path().join("h").to_string_lossy());
        p.spec.containers[0].volume_mounts[2].sub_path = "nginx.conf".into();
        let (cms, secrets) = objects();
        let facts = PodFacts::default();
        let inputs = Inputs {
            config_maps: &cms,
            secrets: &secrets,
            facts: &facts,
            default_memory_size: 1 << 30,
            user_namespace: None,
        };
        let vols = set_up(&v, &ids, &p, inputs).unwrap();
        let err = container_mounts(&v, &ids, &p.spec.containers[0], &vols).unwrap_err();
        assert_eq!(
            err.message(),
            "failed to prepare subPath for volumeMount \"cfg\" of container \"app\": subPath \"nginx.conf\" does not exist in the volume (it is not made inside a configMap, secret, downwardAPI or projected volume)"
        );
        assert!(!vols["cfg"].path.join("nginx.conf").exists());
        // The volume still refreshes (a directory there would have broken it).
        assert_eq!(set_up(&v, &ids, &p, inputs).unwrap(), vols);
        v.teardown(&ids).unwrap();
    }

    #[test]
    fn a_missing_config_map_fails_the_set_up_with_kubelets_message() {
        let t = TestDir::new("podvol-missing");
        let v = Volumes::new(t.path().join("pods"), Arc::new(FakeMounter::default()));
        let ids = PodIds::new("default", "web", UID).unwrap();
        let p = pod(&t.path().join("h").to_string_lossy());
        let facts = PodFacts::default();
        let err = set_up(
            &v,
            &ids,
            &p,
            Inputs {
                config_maps: &[],
                secrets: &[],
                facts: &facts,
                default_memory_size: 1 << 30,
                user_namespace: None,
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "MountVolume.SetUp failed for volume \"cfg\" : configmap \"cfg\" not found"
        );
        // Each cause once, in kubelet's words.
        assert_eq!(
            err.message(),
            "MountVolume.SetUp failed for volume \"cfg\" : configmap \"cfg\" not found"
        );
        let mut c = p.spec.containers[0].clone();
        c.volume_mounts[0].name = "nope".into();
        let err = container_mounts(&v, &ids, &c, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot find volume \"nope\" to mount into container \"app\""
        );
    }

    #[test]
    fn a_sub_path_expr_past_the_api_is_refused_and_mounts_nothing() {
        let t = TestDir::new("podvol-subpathexpr");
        let v = Volumes::new(t.path().join("pods"), Arc::new(FakeMounter::default()));
        let ids = PodIds::new("default", "web", UID).unwrap();
        let p = pod(&t.path().join("h").to_string_lossy());
        let (cms, secrets) = objects();
        let facts = PodFacts::default();
        let inputs = Inputs {
            config_maps: &cms,
            secrets: &secrets,
            facts: &facts,
            default_memory_size: 1 << 30,
            user_namespace: None,
        };
        let vols = set_up(&v, &ids, &p, inputs).unwrap();
        let mut c = p.spec.containers[0].clone();
        c.volume_mounts[0].sub_path_expr = "$(HOME)/../..".into();
        let err = container_mounts(&v, &ids, &c, &vols).unwrap_err();
        assert_eq!(
            err.message(),
            "subPathExpr of volumeMount \"scratch\" of container \"app\" is not supported (use subPath)"
        );
        assert!(
            !t.path()
                .join("pods")
                .join(UID)
                .join("volume-subpaths")
                .exists()
        );
        v.teardown(&ids).unwrap();
    }
}
