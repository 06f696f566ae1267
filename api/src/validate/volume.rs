//! Pod volumes, volume mounts, and the downward API selectors volumes share with env vars, with
//! Kubernetes' rules and messages.

use std::collections::BTreeSet;

use super::{Errors, dns1123_label};
use crate::{
    kinds::{
        Container, DownwardApiVolumeFile, KeyToPath, ObjectFieldSelector, ProjectedVolumeSource,
        RESOURCE_FIELD_PATHS, ResourceFieldSelector, VOLUME_FIELD_PATHS, Volume,
    },
    object::FieldError,
    selector::validate_label_key,
};

/// Kubernetes' wording for a file mode out of range.
pub(super) const FILE_MODE: &str = "must be a number between 0 and 0777 (octal), both inclusive";

/// Every label `ConvertDownwardAPIFieldLabel` of Kubernetes knows for pods `v1` (`spec.host` is
/// its old name of `spec.nodeName`).
const KNOWN_FIELD_LABELS: &[&str] = &[
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.serviceAccountName",
    "spec.schedulerName",
    "status.phase",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

const HOST_PATH_TYPES: &[&str] = &[
    "",
    "BlockDevice",
    "CharDevice",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
];

const CPU_DIVISORS: &[&str] = &["1m", "1"];
const BYTE_DIVISORS: &[&str] = &[
    "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei",
];

/// Why a Kubernetes volume source Skiff does not implement is refused.
fn unsupported_source_reason(source: &str) -> String {
    match source {
        "persistentVolumeClaim" | "ephemeral" => format!(
            "Skiff does not support {source} volumes yet: PersistentVolumeClaims come with storage in a later release (use emptyDir or hostPath until then)"
        ),
        _ => format!(
            "Skiff does not support {source} volumes (supported: emptyDir, hostPath, configMap, secret, downwardAPI, projected)"
        ),
    }
}

/// Checks a pod's volumes; returns the names of those without errors, the ones a mount may name
/// (as Kubernetes does, a mount of a broken volume is also reported as not found).
pub(super) fn volumes<'a>(volumes: &'a [Volume], path: &str, e: &mut Errors) -> BTreeSet<&'a str> {
    let mut names = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let vpath = format!("{path}[{i}]");
        let before = e.0.len();
        source(v, &vpath, e);
        let name_path = format!("{vpath}.name");
        if v.name.is_empty() {
            e.required(&name_path, "");
        } else if let Err(d) = dns1123_label(&v.name) {
            e.invalid(&name_path, &v.name, d);
        }
        if names.contains(v.name.as_str()) {
            e.duplicate(&name_path, &v.name);
        }
        if e.0.len() == before {
            names.insert(v.name.as_str());
        }
    }
    names
}

/// Exactly one source, each checked.
fn source(v: &Volume, path: &str, e: &mut Errors) {
    let mut set = v
        .sources()
        .into_iter()
        .chain(v.unsupported_sources())
        .filter_map(|(name, set)| set.then_some(name));
    let Some(first) = set.next() else {
        e.required(path, "must specify a volume type");
        return;
    };
    for extra in set {
        e.forbidden(
            format!("{path}.{extra}"),
            "may not specify more than 1 volume type",
        );
    }
    let spath = format!("{path}.{first}");
    match first {
        "emptyDir" => {
            let d = v.empty_dir.as_ref().expect("set");
            if d.size_limit.as_ref().is_some_and(|q| q.is_negative()) {
                e.forbidden(
                    format!("{spath}.sizeLimit"),
                    "SizeLimit field must be a valid resource quantity",
                );
            }
            if !d.medium.is_empty() && d.medium != "Memory" {
                e.unsupported(
                    format!("{spath}.medium"),
                    &d.medium,
                    &["", "Memory"],
                    &[
                        ("HugePages", "Skiff does not manage huge pages"),
                        ("HugePages-2Mi", "Skiff does not manage huge pages"),
                        ("HugePages-1Gi", "Skiff does not manage huge pages"),
                    ],
                );
            }
        }
        "hostPath" => {
            let h = v.host_path.as_ref().expect("set");
            if h.path.is_empty() {
                e.required(format!("{spath}.path"), "");
                return;
            }
            no_backsteps(&h.path, &format!("{spath}.path"), e);
            if let Some(t) = &h.type_
                && !HOST_PATH_TYPES.contains(&t.as_str())
            {
                e.unsupported(format!("{spath}.type"), t, HOST_PATH_TYPES, &[]);
            }
        }
        "configMap" => {
            let c = v.config_map.as_ref().expect("set");
            if c.name.is_empty() {
                e.required(format!("{spath}.name"), "");
            }
            file_mode(c.default_mode, &format!("{spath}.defaultMode"), e);
            for (j, kp) in c.items.iter().enumerate() {
                key_to_path(kp, &format!("{spath}.items[{j}]"), e);
            }
        }
        "secret" => {
            let s = v.secret.as_ref().expect("set");
            if s.secret_name.is_empty() {
                e.required(format!("{spath}.secretName"), "");
            }
            file_mode(s.default_mode, &format!("{spath}.defaultMode"), e);
            for (j, kp) in s.items.iter().enumerate() {
                key_to_path(kp, &format!("{spath}.items[{j}]"), e);
            }
        }
        "downwardAPI" => {
            let d = v.downward_api.as_ref().expect("set");
            file_mode(d.default_mode, &format!("{spath}.defaultMode"), e);
            for (j, f) in d.items.iter().enumerate() {
                downward_api_file(f, &format!("{spath}.items[{j}]"), e);
            }
        }
        "projected" => projected(v.projected.as_ref().expect("set"), &spath, e),
        other => e.forbidden(spath, unsupported_source_reason(other)),
    }
}

fn projected(p: &ProjectedVolumeSource, path: &str, e: &mut Errors) {
    file_mode(p.default_mode, &format!("{path}.defaultMode"), e);
    let mut paths = BTreeSet::new();
    // A second file at one path would overwrite the first.
    let mut claim = |file: &str, shown: &str, e: &mut Errors| {
        if !file.is_empty() && !paths.insert(file.to_owned()) {
            e.invalid(path, shown, "conflicting duplicate paths");
        }
    };
    for (i, s) in p.sources.iter().enumerate() {
        let spath = format!("{path}.sources[{i}]");
        let mut count = 0;
        if let Some(secret) = &s.secret {
            count += 1;
            if secret.name.is_empty() {
                e.required(format!("{spath}.secret.name"), "");
            }
            for (j, kp) in secret.items.iter().enumerate() {
                key_to_path(kp, &format!("{spath}.secret.items[{j}]"), e);
                claim(&kp.path, &secret.name, e);
            }
        }
        if let Some(cm) = &s.config_map {
            count += 1;
            if cm.name.is_empty() {
                e.required(format!("{spath}.configMap.name"), "");
            }
            for (j, kp) in cm.items.iter().enumerate() {
                key_to_path(kp, &format!("{spath}.configMap.items[{j}]"), e);
                claim(&kp.path, &cm.name, e);
            }
        }
        if let Some(d) = &s.downward_api {
            count += 1;
            for (j, f) in d.items.iter().enumerate() {
                downward_api_file(f, &format!("{spath}.downwardAPI.items[{j}]"), e);
                claim(&f.path, &f.path, e);
            }
        }
        if let Some(t) = &s.service_account_token {
            count += 1;
            let tpath = format!("{spath}.serviceAccountToken");
            if let Some(secs) = t.expiration_seconds {
                if secs < 600 {
                    e.invalid(
                        format!("{tpath}.expirationSeconds"),
                        secs,
                        "may not specify a duration less than 10 minutes",
                    );
                }
                if secs > 1 << 32 {
                    e.invalid(
                        format!("{tpath}.expirationSeconds"),
                        secs,
                        "may not specify a duration larger than 2^32 seconds",
                    );
                }
            }
            if t.path.is_empty() {
                e.required(format!("{tpath}.path"), "");
            } else {
                local_non_reserved_path(&t.path, &format!("{tpath}.path"), e);
            }
            claim(&t.path, &t.path, e);
        }
        if s.cluster_trust_bundle.is_some() {
            count += 1;
            e.forbidden(
                format!("{spath}.clusterTrustBundle"),
                "Skiff has no ClusterTrustBundles",
            );
        }
        if count > 1 {
            e.forbidden(spath, "may not specify more than 1 volume type per source");
        }
    }
}

fn key_to_path(kp: &KeyToPath, path: &str, e: &mut Errors) {
    if kp.key.is_empty() {
        e.required(format!("{path}.key"), "");
    }
    if kp.path.is_empty() {
        e.required(format!("{path}.path"), "");
    }
    local_non_reserved_path(&kp.path, &format!("{path}.path"), e);
    file_mode(kp.mode, &format!("{path}.mode"), e);
}

fn downward_api_file(f: &DownwardApiVolumeFile, path: &str, e: &mut Errors) {
    if f.path.is_empty() {
        e.required(format!("{path}.path"), "");
    }
    local_non_reserved_path(&f.path, &format!("{path}.path"), e);
    match (&f.field_ref, &f.resource_field_ref) {
        (Some(fs), other) => {
            object_field_selector(fs, VOLUME_FIELD_PATHS, &format!("{path}.fieldRef"), e);
            if other.is_some() {
                e.invalid(
                    path,
                    "resource",
                    "fieldRef and resourceFieldRef can not be specified simultaneously",
                );
            }
        }
        (None, Some(rs)) => {
            resource_field_selector(rs, &format!("{path}.resourceFieldRef"), true, e);
        }
        (None, None) => e.required(path, "one of fieldRef and resourceFieldRef is required"),
    }
    file_mode(f.mode, &format!("{path}.mode"), e);
}

/// A pod field for an env var or a downward API file; `supported` are the unsubscripted paths
/// allowed there.
pub(super) fn object_field_selector(
    fs: &ObjectFieldSelector,
    supported: &[&str],
    path: &str,
    e: &mut Errors,
) {
    if fs.api_version.is_empty() {
        e.required(format!("{path}.apiVersion"), "");
        return;
    }
    if fs.field_path.is_empty() {
        e.required(format!("{path}.fieldPath"), "");
        return;
    }
    let fpath = format!("{path}.fieldPath");
    if fs.api_version != "v1" {
        e.invalid(
            fpath,
            &fs.field_path,
            format!(
                "error converting fieldPath: unsupported pod version: {}",
                fs.api_version
            ),
        );
        return;
    }
    if let Some((field, key)) = subscripted(&fs.field_path) {
        match field {
            "metadata.annotations" => {
                if let Err(d) = validate_label_key(&key.to_ascii_lowercase()) {
                    e.invalid(path, key, d);
                }
            }
            "metadata.labels" => {
                if let Err(d) = validate_label_key(key) {
                    e.invalid(path, key, d);
                }
            }
            _ => e.invalid(
                fpath,
                &fs.field_path,
                format!(
                    "error converting fieldPath: field label does not support subscript: {}",
                    fs.field_path
                ),
            ),
        }
        return;
    }
    let field = match fs.field_path.as_str() {
        "spec.host" => "spec.nodeName",
        known if KNOWN_FIELD_LABELS.contains(&known) => known,
        unknown => {
            e.invalid(
                fpath,
                unknown,
                format!("error converting fieldPath: field label not supported: {unknown}"),
            );
            return;
        }
    };
    if !supported.contains(&field) {
        e.unsupported(fpath, field, supported, &[]);
    }
}

/// `metadata.labels['key']` as (`metadata.labels`, `key`).
fn subscripted(field_path: &str) -> Option<(&str, &str)> {
    let (field, key) = field_path.strip_suffix("']")?.split_once("['")?;
    (!field.is_empty()).then_some((field, key))
}

/// A container resource for an env var (`in_volume` false: the container may be implicit) or a
/// downward API file.
pub(super) fn resource_field_selector(
    rs: &ResourceFieldSelector,
    path: &str,
    in_volume: bool,
    e: &mut Errors,
) {
    if in_volume && rs.container_name.is_empty() {
        e.required(format!("{path}.containerName"), "");
    } else if rs.resource.is_empty() {
        e.required(format!("{path}.resource"), "");
    } else if !RESOURCE_FIELD_PATHS.contains(&rs.resource.as_str()) {
        // Kubernetes also takes `limits.hugepages-<size>`; Skiff accounts no huge pages.
        let huge_pages = [(rs.resource.as_str(), "Skiff does not manage huge pages")];
        let notes: &[(&str, &str)] = if rs.resource.contains(".hugepages-") {
            &huge_pages
        } else {
            &[]
        };
        e.unsupported(
            format!("{path}.resource"),
            &rs.resource,
            RESOURCE_FIELD_PATHS,
            notes,
        );
    }
    let Some(divisor) = rs.divisor.as_ref().filter(|d| !d.is_zero()) else {
        return;
    };
    let (allowed, what): (&[&str], &str) = match rs.resource.as_str() {
        "limits.cpu" | "requests.cpu" => (CPU_DIVISORS, "1m and 1"),
        "limits.memory" | "requests.memory" => (BYTE_DIVISORS, "memory"),
        "limits.ephemeral-storage" | "requests.ephemeral-storage" => {
            (BYTE_DIVISORS, "local ephemeral storage")
        }
        _ => return,
    };
    if !allowed.contains(&divisor.as_str()) {
        let detail = if allowed == CPU_DIVISORS {
            "only divisor's values 1m and 1 are supported with the cpu resource".to_owned()
        } else {
            format!(
                "only divisor's values {} are supported with the {what} resource",
                BYTE_DIVISORS.join(", ")
            )
        };
        e.invalid(format!("{path}.divisor"), &rs.resource, detail);
    }
}

/// The mounts of container `c`; `volumes` are the pod's valid volume names.
pub(super) fn volume_mounts(c: &Container, volumes: &BTreeSet<&str>, path: &str, e: &mut Errors) {
    let mut mount_paths = BTreeSet::new();
    for (i, m) in c.volume_mounts.iter().enumerate() {
        let mpath = format!("{path}[{i}]");
        if m.name.is_empty() {
            e.required(format!("{mpath}.name"), "");
        }
        if !volumes.contains(m.name.as_str()) {
            e.0.push(FieldError::new(
                format!("{mpath}.name"),
                format!("Not found: {:?}", m.name),
            ));
        }
        if m.mount_path.is_empty() {
            e.required(format!("{mpath}.mountPath"), "");
        }
        if !mount_paths.insert(m.mount_path.as_str()) {
            e.invalid(
                format!("{mpath}.mountPath"),
                &m.mount_path,
                "must be unique",
            );
        }
        if !m.sub_path.is_empty() {
            local_descending_path(&m.sub_path, &format!("{mpath}.subPath"), e);
        }
        if !m.sub_path_expr.is_empty() {
            if !m.sub_path.is_empty() {
                e.invalid(
                    format!("{mpath}.subPathExpr"),
                    &m.sub_path_expr,
                    "subPathExpr and subPath are mutually exclusive",
                );
            }
            e.forbidden(
                format!("{mpath}.subPathExpr"),
                "Skiff does not expand environment variables in mount paths (use subPath)",
            );
        }
        if let Some(p) = &m.mount_propagation {
            let ppath = format!("{mpath}.mountPropagation");
            let known = ["Bidirectional", "HostToContainer", "None"];
            if !known.contains(&p.as_str()) {
                e.unsupported(ppath, p, &known, &[]);
            } else if p != "None" {
                e.forbidden(
                    ppath,
                    "Skiff's node agent mounts volumes without propagation: only None is supported",
                );
            }
        }
    }
}

fn file_mode(mode: Option<i32>, path: &str, e: &mut Errors) {
    if let Some(m) = mode
        && !(0..=0o777).contains(&m)
    {
        e.invalid(path, m, FILE_MODE);
    }
}

/// No `..` element (the agent checks again before it touches the node).
pub(super) fn no_backsteps(p: &str, path: &str, e: &mut Errors) {
    if p.split('/').any(|part| part == "..") {
        e.invalid(path, p, "must not contain '..'");
    }
}

/// Relative, without `..` elements.
pub(super) fn local_descending_path(p: &str, path: &str, e: &mut Errors) {
    if p.starts_with('/') {
        e.invalid(path, p, "must be a relative path");
    }
    no_backsteps(p, path, e);
}

/// Relative, without `..` elements, and not starting with `..` (the agent's own `..data` and
/// `..<timestamp>` entries of an atomically updated volume live there).
fn local_non_reserved_path(p: &str, path: &str, e: &mut Errors) {
    local_descending_path(p, path, e);
    if p.starts_with("..") && !p.starts_with("../") {
        e.invalid(path, p, "must not start with '..'");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::validate::test_util::*;

    /// The errors that are not the gate's (the gate refuses every volume for now).
    fn errors(v: Value) -> Vec<String> {
        pod_errors(v)
            .into_iter()
            .filter(|e| !e.contains("Skiff's node agent does not honour"))
            .collect()
    }

    fn with_volumes(volumes: Value) -> Value {
        set(pod(), "/spec/volumes", volumes)
    }

    fn with_mounts(volumes: Value, mounts: Value) -> Value {
        set(with_volumes(volumes), &format!("{C0}/volumeMounts"), mounts)
    }

    #[test]
    fn volume_names_are_required_unique_dns_labels() {
        let v = with_volumes(json!([
            {"name": "data", "emptyDir": {}},
            {"name": "data", "emptyDir": {}},
            {"name": "Bad_Name", "emptyDir": {}},
            {"emptyDir": {}}
        ]));
        let errors = errors(v);
        assert_has(&errors, "spec.volumes[1].name: Duplicate value: \"data\"");
        assert_has(
            &errors,
            "spec.volumes[2].name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 label",
        );
        assert_has(&errors, "spec.volumes[3].name: Required value");
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }

    #[test]
    fn a_volume_takes_exactly_one_source() {
        let v = with_volumes(
            json!([{"name": "x", "emptyDir": {}, "hostPath": {"path": "/a"}, "secret": {"secretName": "s"}}]),
        );
        let errors = errors(v);
        assert_has(
            &errors,
            "spec.volumes[0].hostPath: Forbidden: may not specify more than 1 volume type",
        );
        assert_has(
            &errors,
            "spec.volumes[0].secret: Forbidden: may not specify more than 1 volume type",
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn kubernetes_volume_sources_skiff_lacks_are_refused_by_name_with_the_reason() {
        for (source, body, reason) in [
            (
                "persistentVolumeClaim",
                json!({"claimName": "data"}),
                "Skiff does not support persistentVolumeClaim volumes yet: PersistentVolumeClaims come with storage in a later release",
            ),
            (
                "ephemeral",
                json!({"volumeClaimTemplate": {}}),
                "Skiff does not support ephemeral volumes yet",
            ),
            (
                "nfs",
                json!({"server": "nas", "path": "/export"}),
                "Skiff does not support nfs volumes (supported: emptyDir, hostPath, configMap, secret, downwardAPI, projected)",
            ),
            (
                "csi",
                json!({"driver": "x"}),
                "Skiff does not support csi volumes",
            ),
            (
                "gitRepo",
                json!({"repository": "r"}),
                "Skiff does not support gitRepo volumes",
            ),
            (
                "image",
                json!({"reference": "r"}),
                "Skiff does not support image volumes",
            ),
            (
                "scaleIO",
                json!({}),
                "Skiff does not support scaleIO volumes",
            ),
        ] {
            let v = with_volumes(json!([{"name": "x", source: body}]));
            assert_only(
                &errors(v),
                &format!("spec.volumes[0].{source}: Forbidden: {reason}"),
            );
        }
    }

    #[test]
    fn volume_mounts_name_a_volume_and_take_unique_non_empty_mount_paths() {
        let v = with_mounts(
            json!([{"name": "data", "emptyDir": {}}]),
            json!([
                {"name": "data", "mountPath": "/data"},
                {"name": "data", "mountPath": "/data"},
                {"name": "missing", "mountPath": "/m"},
                {"name": "data", "mountPath": ""}
            ]),
        );
        let errors = errors(v);
        let p = "spec.containers[0].volumeMounts";
        assert_has(
            &errors,
            &format!("{p}[1].mountPath: Invalid value: \"/data\": must be unique"),
        );
        assert_has(&errors, &format!("{p}[2].name: Not found: \"missing\""));
        assert_has(&errors, &format!("{p}[3].mountPath: Required value"));
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }

    #[test]
    fn sub_paths_items_and_profiles_are_relative_paths_without_backsteps() {
        let p = "spec.containers[0].volumeMounts[0].subPath";
        for (sub_path, expected) in [
            (
                "/etc",
                Some(format!(
                    "{p}: Invalid value: \"/etc\": must be a relative path"
                )),
            ),
            (
                "a/../../b",
                Some(format!(
                    "{p}: Invalid value: \"a/../../b\": must not contain '..'"
                )),
            ),
            (
                "..",
                Some(format!("{p}: Invalid value: \"..\": must not contain '..'")),
            ),
            ("conf/nginx.conf", None),
            ("..data/x", None),
        ] {
            let v = with_mounts(
                json!([{"name": "data", "emptyDir": {}}]),
                json!([{"name": "data", "mountPath": "/d", "subPath": sub_path}]),
            );
            match expected {
                Some(expected) => assert_only(&errors(v), &expected),
                None => assert_eq!(errors(v), Vec::<String>::new(), "{sub_path}"),
            }
        }
        let p = "spec.volumes[0].configMap.items[0].path";
        for (path, expected) in [
            (
                "/abs",
                format!("{p}: Invalid value: \"/abs\": must be a relative path"),
            ),
            (
                "a/../b",
                format!("{p}: Invalid value: \"a/../b\": must not contain '..'"),
            ),
            (
                "..data",
                format!("{p}: Invalid value: \"..data\": must not start with '..'"),
            ),
            ("", format!("{p}: Required value")),
        ] {
            let v = with_volumes(
                json!([{"name": "c", "configMap": {"name": "cm", "items": [{"key": "k", "path": path}]}}]),
            );
            assert_only(&errors(v), &expected);
        }
    }

    #[test]
    fn file_modes_are_between_0_and_0777_octal() {
        let message = "must be a number between 0 and 0777 (octal), both inclusive";
        for (volume, field) in [
            (
                json!({"name": "v", "configMap": {"name": "cm", "defaultMode": 0o1000}}),
                "configMap.defaultMode",
            ),
            (
                json!({"name": "v", "secret": {"secretName": "s", "defaultMode": -1}}),
                "secret.defaultMode",
            ),
            (
                json!({"name": "v", "secret": {"secretName": "s", "items": [{"key": "k", "path": "p", "mode": 0o1777}]}}),
                "secret.items[0].mode",
            ),
            (
                json!({"name": "v", "downwardAPI": {"defaultMode": 4096}}),
                "downwardAPI.defaultMode",
            ),
            (
                json!({"name": "v", "projected": {"sources": [], "defaultMode": 1000}}),
                "projected.defaultMode",
            ),
        ] {
            assert_only(
                &errors(with_volumes(json!([volume]))),
                &format!("spec.volumes[0].{field}: Invalid value: "),
            );
            assert_has(&errors(with_volumes(json!([volume]))), message);
        }
        let v =
            with_volumes(json!([{"name": "v", "configMap": {"name": "cm", "defaultMode": 0o777}}]));
        assert_eq!(errors(v), Vec::<String>::new());
    }

    #[test]
    fn config_map_and_secret_volumes_need_their_object_and_item_keys() {
        for (volume, expected) in [
            (
                json!({"configMap": {}}),
                "spec.volumes[0].configMap.name: Required value",
            ),
            (
                json!({"secret": {}}),
                "spec.volumes[0].secret.secretName: Required value",
            ),
            (
                json!({"secret": {"secretName": "s", "items": [{"path": "p"}]}}),
                "spec.volumes[0].secret.items[0].key: Required value",
            ),
        ] {
            let mut volume = volume;
            volume["name"] = json!("v");
            assert_only(&errors(with_volumes(json!([volume]))), expected);
        }
    }

    #[test]
    fn host_path_needs_a_path_and_one_of_kubernetes_types() {
        let v = with_volumes(json!([{"name": "h", "hostPath": {"path": "/var/../etc"}}]));
        assert_only(
            &errors(v),
            "spec.volumes[0].hostPath.path: Invalid value: \"/var/../etc\": must not contain '..'",
        );
        let v = with_volumes(json!([{"name": "h", "hostPath": {"path": ""}}]));
        assert_only(&errors(v), "spec.volumes[0].hostPath.path: Required value");
        let v = with_volumes(json!([{"name": "h", "hostPath": {"path": "/x", "type": "Dir"}}]));
        assert_only(
            &errors(v),
            "spec.volumes[0].hostPath.type: Unsupported value: \"Dir\": supported values: \"\", \"BlockDevice\", \"CharDevice\", \"Directory\", \"DirectoryOrCreate\", \"File\", \"FileOrCreate\", \"Socket\"",
        );
    }

    #[test]
    fn empty_dir_is_on_disk_or_in_memory_with_a_non_negative_size_limit() {
        let v = with_volumes(json!([{"name": "e", "emptyDir": {"medium": "HugePages"}}]));
        assert_only(
            &errors(v),
            "spec.volumes[0].emptyDir.medium: Unsupported value: \"HugePages\": supported values: \"\", \"Memory\"; Skiff does not manage huge pages",
        );
        let v = with_volumes(json!([{"name": "e", "emptyDir": {"sizeLimit": "-1Mi"}}]));
        assert_only(
            &errors(v),
            "spec.volumes[0].emptyDir.sizeLimit: Forbidden: SizeLimit field must be a valid resource quantity",
        );
    }

    #[test]
    fn downward_api_files_take_one_reference_to_a_kubernetes_field_or_resource() {
        let supported = "supported values: \"metadata.annotations\", \"metadata.labels\", \"metadata.name\", \"metadata.namespace\", \"metadata.uid\"";
        let p = "spec.volumes[0].downwardAPI.items[0]";
        for (item, expected) in [
            (
                json!({"path": "x"}),
                format!("{p}: Required value: one of fieldRef and resourceFieldRef is required"),
            ),
            (
                json!({"path": "x", "fieldRef": {"fieldPath": "status.podIP"}}),
                format!("{p}.fieldRef.fieldPath: Unsupported value: \"status.podIP\": {supported}"),
            ),
            (
                json!({"path": "x", "fieldRef": {"fieldPath": "metadata.name"}, "resourceFieldRef": {"containerName": "web", "resource": "limits.cpu"}}),
                format!(
                    "{p}: Invalid value: \"resource\": fieldRef and resourceFieldRef can not be specified simultaneously"
                ),
            ),
            (
                json!({"path": "x", "resourceFieldRef": {"resource": "limits.cpu"}}),
                format!("{p}.resourceFieldRef.containerName: Required value"),
            ),
        ] {
            let v = with_volumes(json!([{"name": "d", "downwardAPI": {"items": [item]}}]));
            assert_only(&errors(v), &expected);
        }
        let v = with_volumes(json!([{"name": "d", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "tier", "fieldRef": {"fieldPath": "metadata.labels['tier']"}}
        ]}}]));
        assert_eq!(errors(v), Vec::<String>::new());
    }

    #[test]
    fn projected_sources_take_one_kind_each_without_colliding_paths() {
        let p = "spec.volumes[0].projected";
        for (sources, expected) in [
            (
                json!([{"configMap": {"name": "a"}, "secret": {"name": "b"}}]),
                format!(
                    "{p}.sources[0]: Forbidden: may not specify more than 1 volume type per source"
                ),
            ),
            (
                json!([{"configMap": {"name": "a", "items": [{"key": "k", "path": "f"}]}}, {"secret": {"name": "b", "items": [{"key": "k", "path": "f"}]}}]),
                format!("{p}: Invalid value: \"b\": conflicting duplicate paths"),
            ),
            (
                json!([{"serviceAccountToken": {"path": "t", "expirationSeconds": 60}}]),
                format!(
                    "{p}.sources[0].serviceAccountToken.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"
                ),
            ),
            (
                json!([{"serviceAccountToken": {"path": ""}}]),
                format!("{p}.sources[0].serviceAccountToken.path: Required value"),
            ),
            (
                json!([{"secret": {"items": []}}]),
                format!("{p}.sources[0].secret.name: Required value"),
            ),
            (
                json!([{"clusterTrustBundle": {"signerName": "x", "path": "ca"}}]),
                format!(
                    "{p}.sources[0].clusterTrustBundle: Forbidden: Skiff has no ClusterTrustBundles"
                ),
            ),
        ] {
            let v = with_volumes(json!([{"name": "all", "projected": {"sources": sources}}]));
            assert_only(&errors(v), &expected);
        }
    }

    #[test]
    fn mount_propagation_other_than_none_and_sub_path_expr_are_refused() {
        let mount = |extra: Value| {
            let mut m = json!({"name": "data", "mountPath": "/d"});
            for (k, v) in extra.as_object().expect("a mapping") {
                m[k] = v.clone();
            }
            with_mounts(json!([{"name": "data", "emptyDir": {}}]), json!([m]))
        };
        let p = "spec.containers[0].volumeMounts[0]";
        assert_only(
            &errors(mount(json!({"mountPropagation": "Bidirectional"}))),
            &format!(
                "{p}.mountPropagation: Forbidden: Skiff's node agent mounts volumes without propagation"
            ),
        );
        assert_only(
            &errors(mount(json!({"mountPropagation": "Shared"}))),
            &format!(
                "{p}.mountPropagation: Unsupported value: \"Shared\": supported values: \"Bidirectional\", \"HostToContainer\", \"None\""
            ),
        );
        assert_only(
            &errors(mount(json!({"subPathExpr": "$(POD_NAME)"}))),
            &format!("{p}.subPathExpr: Forbidden: Skiff does not expand environment variables"),
        );
        assert_eq!(
            errors(mount(json!({"mountPropagation": "None", "readOnly": true}))),
            Vec::<String>::new()
        );
    }
}
