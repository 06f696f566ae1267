//! The one place where identifiers read from the API (and so, possibly, from whoever could
//! write to etcd) become host paths, cgroup paths and containerd ids: each identifier must pass
//! the API's own rule for it and be a single, plain path component, or it is refused.

use std::{
    ffi::OsStr,
    fmt,
    path::{Path, PathBuf},
};

use skiff_api::{FieldError, kinds::Pod, validate};

/// Linux's longest file name (NAME_MAX).
pub const MAX_COMPONENT: usize = 255;

/// Why an identifier cannot become part of a host path or id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The identifier is empty.
    #[error("{field}: Required value")]
    Empty { field: String },
    /// The identifier (or the file name made of it) is longer than a file name may be.
    #[error("{field}: Too long: may not be more than {max} bytes (is {len})")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    /// The identifier is not UTF-8 (a name found on disk).
    #[error("{field}: Invalid value: {value:?}: must be UTF-8")]
    NotUtf8 { field: String, value: String },
    /// The identifier holds a NUL byte, which would cut the path short.
    #[error("{field}: Invalid value: {value:?}: must not contain a NUL byte")]
    Nul { field: String, value: String },
    /// The identifier would leave the directory it is joined to: `.`, `..`, or a `/`.
    #[error(
        "{field}: Invalid value: {value:?}: must be a single path component (not '.' or '..', no '/')"
    )]
    Escapes { field: String, value: String },
    /// The identifier is a plain component but breaks the API's rule for its field.
    #[error("{field}: Invalid value: {value:?}: {rule}")]
    Rule {
        field: String,
        value: String,
        rule: String,
    },
}

impl PathError {
    /// The field the error is about (`metadata.uid`, `spec.containers[0].name`).
    pub fn field(&self) -> &str {
        match self {
            PathError::Empty { field }
            | PathError::TooLong { field, .. }
            | PathError::NotUtf8 { field, .. }
            | PathError::Nul { field, .. }
            | PathError::Escapes { field, .. }
            | PathError::Rule { field, .. } => field,
        }
    }

    /// The error as the API words a field error (`path: Invalid value: ...`).
    pub fn to_field_error(&self) -> FieldError {
        let text = self.to_string();
        let message = text
            .strip_prefix(self.field())
            .and_then(|m| m.strip_prefix(": "))
            .unwrap_or(&text);
        FieldError::new(self.field(), message)
    }
}

pub type Result<T, E = PathError> = std::result::Result<T, E>;

/// Checks that `value` can be one path component: UTF-8, not empty, at most
/// [`MAX_COMPONENT`] bytes, no NUL, no `/`, not `.` or `..`. `field` names it in the error.
pub fn component<'a>(field: &str, value: &'a OsStr) -> Result<&'a str> {
    let Some(s) = value.to_str() else {
        return Err(PathError::NotUtf8 {
            field: field.into(),
            value: value.to_string_lossy().into_owned(),
        });
    };
    if s.is_empty() {
        return Err(PathError::Empty {
            field: field.into(),
        });
    }
    if s.len() > MAX_COMPONENT {
        return Err(PathError::TooLong {
            field: field.into(),
            len: s.len(),
            max: MAX_COMPONENT,
        });
    }
    if s.contains('\0') {
        return Err(PathError::Nul {
            field: field.into(),
            value: s.into(),
        });
    }
    if s == "." || s == ".." || s.contains('/') {
        return Err(PathError::Escapes {
            field: field.into(),
            value: s.into(),
        });
    }
    Ok(s)
}

/// `dir/<value>`, with `value` checked by [`component`]: never outside `dir`.
pub fn child(dir: &Path, field: &str, value: &str) -> Result<PathBuf> {
    let name = component(field, OsStr::new(value))?;
    Ok(dir.join(name))
}

/// `value` checked by the API's `rule` for its field (so the error says what the API would),
/// then as a path component: a value the rule accepts always is one, and is checked all the
/// same, as paths are made of it.
fn identifier(field: &str, value: &str, rule: fn(&str) -> Result<(), String>) -> Result<()> {
    if value.is_empty() {
        return Err(PathError::Empty {
            field: field.into(),
        });
    }
    rule(value).map_err(|rule| PathError::Rule {
        field: field.into(),
        value: value.into(),
        rule,
    })?;
    component(field, OsStr::new(value))?;
    Ok(())
}

/// A container name: a DNS-1123 label, as the API requires.
pub fn container_name(field: &str, value: &str) -> Result<()> {
    identifier(field, value, validate::dns1123_label)
}

/// A volume name: a DNS-1123 label, as the API requires.
pub fn volume_name(field: &str, value: &str) -> Result<()> {
    identifier(field, value, validate::dns1123_label)
}

/// The identity of a pod, every part checked by the API's rule for it (namespace: DNS-1123
/// label, name: DNS-1123 subdomain, uid: the UUID the API assigns). Only a checked identity
/// can be turned into paths and ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodIds {
    namespace: String,
    name: String,
    uid: String,
}

impl PodIds {
    /// The pod as kubelet names it in its messages: `name_namespace(uid)`.
    pub fn kubelet_name(&self) -> String {
        format!("{}_{}({})", self.name, self.namespace, self.uid)
    }

    /// Checks each part; the first part that fails is the error.
    pub fn new(namespace: &str, name: &str, uid: &str) -> Result<PodIds> {
        identifier("metadata.namespace", namespace, validate::dns1123_label)?;
        identifier("metadata.name", name, validate::dns1123_subdomain)?;
        identifier("metadata.uid", uid, validate::uid)?;
        Ok(PodIds {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }
}

impl fmt::Display for PodIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a pod cannot run here: every identifier of it that fails its check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
pub struct InvalidPod {
    pub errors: Vec<PathError>,
}

/// The pod's identity, once every identifier the node turns into a path or id passes: its
/// namespace, name and uid, and each container's name (unique in the pod, as their log
/// directories are named after them).
pub fn admit(pod: &Pod) -> Result<PodIds, InvalidPod> {
    let m = &pod.metadata;
    let mut errors = Vec::new();
    for (field, value, rule) in [
        (
            "metadata.namespace",
            &m.namespace,
            validate::dns1123_label as fn(&str) -> Result<(), String>,
        ),
        ("metadata.name", &m.name, validate::dns1123_subdomain),
        ("metadata.uid", &m.uid, validate::uid),
    ] {
        if let Err(e) = identifier(field, value, rule) {
            errors.push(e);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in pod.spec.containers.iter().enumerate() {
        let field = format!("spec.containers[{i}].name");
        if let Err(e) = container_name(&field, &c.name) {
            errors.push(e);
        } else if !seen.insert(c.name.as_str()) {
            errors.push(PathError::Rule {
                field,
                value: c.name.clone(),
                rule: "must be unique in the pod".into(),
            });
        }
    }
    if errors.is_empty()
        && let Err(e) = log_dir_name(&m.namespace, &m.name, &m.uid)
    {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(PodIds {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            uid: m.uid.clone(),
        })
    } else {
        Err(InvalidPod { errors })
    }
}

/// `<namespace>_<name>_<uid>`, which must fit in one file name.
fn log_dir_name(namespace: &str, name: &str, uid: &str) -> Result<String> {
    let dir = format!("{namespace}_{name}_{uid}");
    if dir.len() > MAX_COMPONENT {
        return Err(PathError::TooLong {
            field: "metadata.name".into(),
            len: dir.len(),
            max: MAX_COMPONENT - (namespace.len() + uid.len() + 2),
        });
    }
    Ok(dir)
}

/// Where a node keeps what its pods leave on the host, and how their containers are named.
#[derive(Debug, Clone)]
pub struct NodePaths {
    /// Container logs: `<logs>/<namespace>_<pod>_<uid>/<container>/<attempt>.log`.
    logs: PathBuf,
    /// Parent cgroup of every pod (the operator's setting, trusted).
    cgroup_parent: String,
}

impl NodePaths {
    pub fn new(logs: PathBuf, cgroup_parent: String) -> NodePaths {
        NodePaths {
            logs,
            cgroup_parent: cgroup_parent.trim_end_matches('/').to_owned(),
        }
    }

    /// The directory holding every pod's logs.
    pub fn logs(&self) -> &Path {
        &self.logs
    }

    /// The directory of a pod's logs: `<logs>/<namespace>_<name>_<uid>`.
    pub fn pod_log_dir(&self, pod: &PodIds) -> Result<PathBuf> {
        let dir = log_dir_name(&pod.namespace, &pod.name, &pod.uid)?;
        child(&self.logs, "metadata", &dir)
    }

    /// The log file of one attempt of one container: `<pod log dir>/<container>/<attempt>.log`.
    pub fn log_path(&self, pod: &PodIds, container: &str, attempt: u32) -> Result<PathBuf> {
        container_name("container name", container)?;
        Ok(self
            .pod_log_dir(pod)?
            .join(container)
            .join(format!("{attempt}.log")))
    }

    /// The pod whose log directory is `name` (a directory found in [`NodePaths::logs`]), if
    /// `name` is one this node would make.
    pub fn parse_pod_log_dir(name: &OsStr) -> Result<PodIds> {
        let s = component("log directory", name)?;
        let mut parts = s.split('_');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(ns), Some(pod), Some(uid), None) => PodIds::new(ns, pod, uid),
            _ => Err(PathError::Rule {
                field: "log directory".into(),
                value: s.into(),
                rule: "must be <namespace>_<name>_<uid>".into(),
            }),
        }
    }

    /// The pod's cgroup: `<cgroup parent>/<uid>`.
    pub fn cgroup_parent(&self, pod: &PodIds) -> String {
        format!("{}/{}", self.cgroup_parent, pod.uid)
    }

    /// containerd id of attempt `attempt` of the pod's container number `index`:
    /// `<uid>-<index>-<attempt>` (containerd allows 76 characters; this is at most 58).
    pub fn container_id(pod: &PodIds, index: usize, attempt: u32) -> String {
        format!("{}-{index}-{attempt}", pod.uid)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt as _;

    use super::*;

    const UID: &str = "0e6d1c3a-5b7f-4c2e-9a1d-3f4b5c6d7e8f";

    fn paths() -> NodePaths {
        NodePaths::new("/var/lib/skiff-agent/logs".into(), "/skiff/node-0/".into())
    }

    fn ids() -> PodIds {
        PodIds::new("default", "web-1", UID).expect("valid ids")
    }

    /// Identifiers an attacker who can write to etcd would try.
    fn hostile() -> Vec<String> {
        vec![
            String::new(),
            ".".into(),
            "..".into(),
            "/".into(),
            "a/../b".into(),
            "../../../../tmp/pwned".into(),
            "/etc".into(),
            "a\0b".into(),
            "x".repeat(300),
            "A".into(),
            "a_b".into(),
        ]
    }

    #[test]
    fn hostile_container_names_are_refused_with_a_typed_error_and_no_path() {
        for name in hostile() {
            let r = paths().log_path(&ids(), &name, 0);
            assert!(r.is_err(), "{name:?} gave {r:?}");
        }
        for name in [
            "..",
            "a\0b",
            "../../../../tmp/pwned",
            &"x".repeat(300),
            &"x".repeat(64),
        ] {
            assert!(
                matches!(
                    paths().log_path(&ids(), name, 0),
                    Err(PathError::Rule { .. })
                ),
                "{name:?} is refused by the API's rule, in its words"
            );
        }
        assert!(matches!(
            paths().log_path(&ids(), "", 0),
            Err(PathError::Empty { .. })
        ));
    }

    #[test]
    fn volume_names_are_checked_by_the_api_rule_for_a_dns_label() {
        assert!(volume_name("volumes[].name", "config-2").is_ok());
        for name in hostile().iter().filter(|n| !n.is_empty()) {
            assert!(
                matches!(
                    volume_name("volumes[].name", name),
                    Err(PathError::Rule { .. })
                ),
                "{name:?}"
            );
        }
        assert!(matches!(
            volume_name("volumes[].name", ""),
            Err(PathError::Empty { .. })
        ));
    }

    #[test]
    fn a_path_component_is_refused_for_dots_slashes_nul_emptiness_and_length() {
        let check = |s: &'static str| component("f", OsStr::new(s));
        for bad in [".", "..", "/", "a/../b", "/etc", "a/"] {
            assert!(
                matches!(check(bad), Err(PathError::Escapes { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(check("a\0b"), Err(PathError::Nul { .. })));
        assert!(matches!(check(""), Err(PathError::Empty { .. })));
        let long = "x".repeat(256);
        assert!(matches!(
            component("f", OsStr::new(&long)),
            Err(PathError::TooLong { len: 256, .. })
        ));
        assert_eq!(
            component("f", OsStr::new(&long[..255])).map(str::len),
            Ok(255)
        );
        assert_eq!(check("..a"), Ok("..a"));
    }

    #[test]
    fn hostile_namespaces_names_and_uids_make_no_pod_identity() {
        for bad in hostile() {
            assert!(PodIds::new(&bad, "web", UID).is_err(), "namespace {bad:?}");
            assert!(PodIds::new("default", &bad, UID).is_err(), "name {bad:?}");
            assert!(PodIds::new("default", "web", &bad).is_err(), "uid {bad:?}");
        }
        let e = PodIds::new("default", "web", &format!("{UID}/../../x")).unwrap_err();
        assert_eq!(e.field(), "metadata.uid");
        // A subdomain may have dots, but never a component that is only dots.
        assert!(PodIds::new("default", "a..b", UID).is_err());
        assert!(PodIds::new("default", "..", UID).is_err());
    }

    #[test]
    fn valid_identifiers_make_paths_under_the_logs_root() {
        let p = paths();
        let dir = p.pod_log_dir(&ids()).expect("dir");
        assert_eq!(
            dir,
            Path::new(&format!("/var/lib/skiff-agent/logs/default_web-1_{UID}"))
        );
        let log = p.log_path(&ids(), "app", 3).expect("log");
        assert_eq!(log, dir.join("app/3.log"));
        assert!(log.starts_with(p.logs()));
        assert!(log.components().all(|c| matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::RootDir
        )));
        assert_eq!(p.cgroup_parent(&ids()), format!("/skiff/node-0/{UID}"));
        assert_eq!(NodePaths::container_id(&ids(), 1, 2), format!("{UID}-1-2"));
    }

    #[test]
    fn a_dotted_pod_name_stays_one_directory_under_the_root() {
        let dotted = PodIds::new("default", "web.example.com", UID).expect("a subdomain");
        let dir = paths().pod_log_dir(&dotted).expect("dir");
        assert_eq!(dir.parent(), Some(paths().logs()));
    }

    #[test]
    fn a_pod_name_too_long_for_one_file_name_is_refused_not_truncated() {
        let long = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        let pod = PodIds::new("default", &long, UID).expect("a valid 253-character name");
        assert!(matches!(
            paths().pod_log_dir(&pod),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn non_utf8_names_found_on_disk_are_refused() {
        let name = OsStr::from_bytes(b"default_web_\xff\xfe");
        assert!(matches!(
            NodePaths::parse_pod_log_dir(name),
            Err(PathError::NotUtf8 { .. })
        ));
        assert!(matches!(
            component("x", OsStr::from_bytes(b"a\xffb")),
            Err(PathError::NotUtf8 { .. })
        ));
    }

    #[test]
    fn log_directory_names_parse_back_only_when_this_node_could_have_made_them() {
        let name = format!("default_web-1_{UID}");
        assert_eq!(NodePaths::parse_pod_log_dir(OsStr::new(&name)), Ok(ids()));
        for bad in [
            "default_web-1".to_owned(),
            format!("default_web_1_{UID}"),
            format!("default_.._{UID}"),
            "default_web_..".to_owned(),
            "..".to_owned(),
        ] {
            assert!(
                NodePaths::parse_pod_log_dir(OsStr::new(&bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn child_joins_only_a_single_plain_component() {
        let dir = Path::new("/run/skiff/netns");
        assert_eq!(child(dir, "pod id", "abc"), Ok(dir.join("abc")));
        for bad in hostile().iter().take(8) {
            assert!(child(dir, "pod id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn admitting_a_pod_names_every_failing_field_in_the_apis_words() {
        let mut pod = Pod::default();
        pod.metadata.namespace = "default".into();
        pod.metadata.name = "web".into();
        pod.metadata.uid = "../../victim".into();
        for name in ["app", "../../../../tmp/pwned", "app"] {
            pod.spec.containers.push(skiff_api::kinds::Container {
                name: name.into(),
                ..Default::default()
            });
        }
        let e = admit(&pod).unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(PathError::field).collect();
        assert_eq!(
            fields,
            [
                "metadata.uid",
                "spec.containers[1].name",
                "spec.containers[2].name"
            ]
        );
        let text = e.to_string();
        assert!(
            text.starts_with(
                "metadata.uid: Invalid value: \"../../victim\": a uid must be a lower-case UUID"
            ),
            "{text}"
        );
        let fe = e.errors[1].to_field_error();
        assert_eq!(fe.path, "spec.containers[1].name");
        assert!(fe.message.starts_with("Invalid value: "), "{}", fe.message);
        pod.metadata.uid = UID.into();
        pod.spec.containers.truncate(1);
        assert_eq!(admit(&pod), Ok(ids_named("web")));
    }

    fn ids_named(name: &str) -> PodIds {
        PodIds::new("default", name, UID).expect("valid")
    }
}
