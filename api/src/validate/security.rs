//! Pod and container security contexts, with Kubernetes' rules and messages; what Skiff's nodes
//! cannot do at all (SELinux, AppArmor, Windows, sysctls, unmasked /proc) is refused here.

use super::{Errors, json, volume::local_descending_path};
use crate::kinds::{
    AppArmorProfile, PodSecurityContext, SeccompProfile, SecurityContext, capability,
};

/// Kubernetes' `IsValidUserID`/`IsValidGroupID` range.
const ID_RANGE: &str = "must be between 0 and 2147483647, inclusive";
const SELINUX: &str = "Skiff's nodes do not run SELinux";
const WINDOWS: &str = "Skiff runs Linux containers only";

fn id(value: Option<i64>, path: String, e: &mut Errors) {
    if let Some(v) = value
        && !(0..=i64::from(i32::MAX)).contains(&v)
    {
        e.invalid(path, v, ID_RANGE);
    }
}

pub(super) fn pod_security_context(sc: &PodSecurityContext, path: &str, e: &mut Errors) {
    id(sc.fs_group, format!("{path}.fsGroup"), e);
    id(sc.run_as_user, format!("{path}.runAsUser"), e);
    id(sc.run_as_group, format!("{path}.runAsGroup"), e);
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        id(Some(*g), format!("{path}.supplementalGroups[{i}]"), e);
    }
    if !sc.sysctls.is_empty() {
        e.forbidden(format!("{path}.sysctls"), "Skiff sets no sysctls for pods");
    }
    if let Some(p) = &sc.fs_group_change_policy
        && !["Always", "OnRootMismatch"].contains(&p.as_str())
    {
        e.unsupported(
            format!("{path}.fsGroupChangePolicy"),
            p,
            &["Always", "OnRootMismatch"],
            &[],
        );
    }
    if let Some(sp) = &sc.seccomp_profile {
        seccomp_profile(sp, &format!("{path}.seccompProfile"), e);
    }
    linux_only(
        sc.se_linux_options.is_some(),
        sc.windows_options.is_some(),
        sc.app_armor_profile.as_ref(),
        path,
        e,
    );
}

pub(super) fn security_context(sc: &SecurityContext, path: &str, e: &mut Errors) {
    id(sc.run_as_user, format!("{path}.runAsUser"), e);
    id(sc.run_as_group, format!("{path}.runAsGroup"), e);
    if sc.allow_privilege_escalation == Some(false) {
        if sc.privileged == Some(true) {
            e.invalid(
                path,
                json(sc),
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            );
        }
        let adds = sc.capabilities.iter().flat_map(|c| &c.add);
        if adds.into_iter().any(|c| c == "CAP_SYS_ADMIN") {
            e.invalid(
                path,
                json(sc),
                "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
            );
        }
    }
    if let Some(caps) = &sc.capabilities {
        for (field, names) in [("add", &caps.add), ("drop", &caps.drop)] {
            for (i, name) in names.iter().enumerate() {
                if !name.eq_ignore_ascii_case("ALL") && capability(name).is_none() {
                    e.invalid(
                        format!("{path}.capabilities.{field}[{i}]"),
                        name,
                        "must be a Linux capability (e.g. NET_ADMIN or CAP_NET_ADMIN) or ALL",
                    );
                }
            }
        }
    }
    if let Some(p) = &sc.proc_mount
        && p != "Default"
    {
        e.unsupported(
            format!("{path}.procMount"),
            p,
            &["Default"],
            &[("Unmasked", "Skiff always masks the kernel's files in /proc")],
        );
    }
    if let Some(sp) = &sc.seccomp_profile {
        seccomp_profile(sp, &format!("{path}.seccompProfile"), e);
    }
    linux_only(
        sc.se_linux_options.is_some(),
        sc.windows_options.is_some(),
        sc.app_armor_profile.as_ref(),
        path,
        e,
    );
}

fn seccomp_profile(sp: &SeccompProfile, path: &str, e: &mut Errors) {
    let supported = ["Localhost", "RuntimeDefault", "Unconfined"];
    if sp.type_.is_empty() {
        e.required(
            format!("{path}.type"),
            "type is required when seccompProfile is set",
        );
    } else if !supported.contains(&sp.type_.as_str()) {
        e.unsupported(format!("{path}.type"), &sp.type_, &supported, &[]);
    }
    let ppath = format!("{path}.localhostProfile");
    match (sp.type_.as_str(), &sp.localhost_profile) {
        ("Localhost", None) => e.required(ppath, "must be set when seccomp type is Localhost"),
        ("Localhost", Some(p)) => local_descending_path(p, &ppath, e),
        (_, Some(_)) => e.invalid(
            ppath,
            json(sp),
            "can only be set when seccomp type is Localhost",
        ),
        (_, None) => {}
    }
}

/// SELinux, Windows and AppArmor options, none of which a Skiff node can apply (an `Unconfined`
/// AppArmor profile is what a node without AppArmor gives anyway).
fn linux_only(
    se_linux: bool,
    windows: bool,
    app_armor: Option<&AppArmorProfile>,
    path: &str,
    e: &mut Errors,
) {
    if se_linux {
        e.forbidden(format!("{path}.seLinuxOptions"), SELINUX);
    }
    if windows {
        e.forbidden(format!("{path}.windowsOptions"), WINDOWS);
    }
    if let Some(a) = app_armor
        && (a.type_ != "Unconfined" || a.localhost_profile.is_some())
    {
        e.forbidden(
            format!("{path}.appArmorProfile"),
            "Skiff's nodes do not run AppArmor (only type Unconfined is accepted)",
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::validate::test_util::*;

    fn errors(v: Value) -> Vec<String> {
        pod_errors(v)
            .into_iter()
            .filter(|e| !e.contains("Skiff's node agent does not honour"))
            .collect()
    }

    fn pod_sc(sc: Value) -> Value {
        set(pod(), "/spec/securityContext", sc)
    }

    fn container_sc(sc: Value) -> Value {
        set(pod(), &format!("{C0}/securityContext"), sc)
    }

    #[test]
    fn user_and_group_ids_are_between_0_and_2147483647() {
        let range = "must be between 0 and 2147483647, inclusive";
        for (v, field, value) in [
            (
                pod_sc(json!({"runAsUser": -1})),
                "spec.securityContext.runAsUser",
                "-1",
            ),
            (
                pod_sc(json!({"fsGroup": 2_147_483_648_i64})),
                "spec.securityContext.fsGroup",
                "2147483648",
            ),
            (
                pod_sc(json!({"supplementalGroups": [1, -5]})),
                "spec.securityContext.supplementalGroups[1]",
                "-5",
            ),
            (
                container_sc(json!({"runAsGroup": -2})),
                "spec.containers[0].securityContext.runAsGroup",
                "-2",
            ),
        ] {
            assert_only(
                &errors(v),
                &format!("{field}: Invalid value: {value}: {range}"),
            );
        }
        // runAsNonRoot with user 0 is the node's to refuse at start, as in Kubernetes.
        assert_eq!(
            errors(container_sc(json!({"runAsUser": 0, "runAsNonRoot": true}))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn privilege_escalation_off_contradicts_privileged_and_cap_sys_admin() {
        let errors_of = |sc| errors(container_sc(sc));
        assert_only(
            &errors_of(json!({"allowPrivilegeEscalation": false, "privileged": true})),
            "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
        );
        assert_only(
            &errors_of(
                json!({"allowPrivilegeEscalation": false, "capabilities": {"add": ["CAP_SYS_ADMIN"]}}),
            ),
            "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
        );
        assert_eq!(
            errors_of(json!({"allowPrivilegeEscalation": true, "privileged": true})),
            Vec::<String>::new()
        );
    }

    #[test]
    fn capabilities_are_linux_capability_names_with_or_without_cap_prefix_or_all() {
        let ok = json!({"add": ["NET_ADMIN", "CAP_NET_RAW", "sys_time"], "drop": ["ALL"]});
        assert_eq!(
            errors(container_sc(json!({"capabilities": ok}))),
            Vec::<String>::new()
        );
        assert_only(
            &errors(container_sc(
                json!({"capabilities": {"drop": ["NET_ADMN"]}}),
            )),
            "spec.containers[0].securityContext.capabilities.drop[0]: Invalid value: \"NET_ADMN\": must be a Linux capability",
        );
    }

    #[test]
    fn seccomp_profiles_follow_kubernetes_rules() {
        let p = "spec.containers[0].securityContext.seccompProfile";
        for (profile, expected) in [
            (
                json!({"type": "Localhost"}),
                format!(
                    "{p}.localhostProfile: Required value: must be set when seccomp type is Localhost"
                ),
            ),
            (
                json!({"type": "RuntimeDefault", "localhostProfile": "x.json"}),
                format!("{p}.localhostProfile: Invalid value: "),
            ),
            (
                json!({"type": "Localhost", "localhostProfile": "../etc/x.json"}),
                format!(
                    "{p}.localhostProfile: Invalid value: \"../etc/x.json\": must not contain '..'"
                ),
            ),
            (
                json!({"type": "Localhost", "localhostProfile": "/etc/x.json"}),
                format!(
                    "{p}.localhostProfile: Invalid value: \"/etc/x.json\": must be a relative path"
                ),
            ),
            (
                json!({"type": "Default"}),
                format!(
                    "{p}.type: Unsupported value: \"Default\": supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\""
                ),
            ),
            (
                json!({}),
                format!("{p}.type: Required value: type is required when seccompProfile is set"),
            ),
        ] {
            assert_only(
                &errors(container_sc(json!({"seccompProfile": profile}))),
                &expected,
            );
        }
        for ok in [
            json!({"type": "RuntimeDefault"}),
            json!({"type": "Unconfined"}),
            json!({"type": "Localhost", "localhostProfile": "profiles/a.json"}),
        ] {
            assert_eq!(
                errors(pod_sc(json!({"seccompProfile": ok.clone()}))),
                Vec::<String>::new(),
                "{ok}"
            );
        }
    }

    #[test]
    fn what_skiffs_linux_nodes_cannot_do_is_refused_with_the_reason() {
        let c = "spec.containers[0].securityContext";
        for (v, expected) in [
            (pod_sc(json!({"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]})), "spec.securityContext.sysctls: Forbidden: Skiff sets no sysctls for pods".to_owned()),
            (pod_sc(json!({"seLinuxOptions": {"level": "s0:c1"}})), "spec.securityContext.seLinuxOptions: Forbidden: Skiff's nodes do not run SELinux".to_owned()),
            (container_sc(json!({"windowsOptions": {"runAsUserName": "x"}})), format!("{c}.windowsOptions: Forbidden: Skiff runs Linux containers only")),
            (container_sc(json!({"appArmorProfile": {"type": "RuntimeDefault"}})), format!("{c}.appArmorProfile: Forbidden: Skiff's nodes do not run AppArmor")),
            (container_sc(json!({"procMount": "Unmasked"})), format!("{c}.procMount: Unsupported value: \"Unmasked\": supported values: \"Default\"; Skiff always masks")),
            (pod_sc(json!({"fsGroupChangePolicy": "Sometimes"})), "spec.securityContext.fsGroupChangePolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnRootMismatch\"".to_owned()),
        ] {
            assert_only(&errors(v), &expected);
        }
        assert_eq!(
            errors(container_sc(
                json!({"appArmorProfile": {"type": "Unconfined"}})
            )),
            Vec::<String>::new()
        );
    }
}
