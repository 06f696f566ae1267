//! The OCI runtime spec (config.json) of a container, written here because containerd's gRPC
//! API takes it from the client: process (user, groups, capabilities), mounts (the pod's
//! volumes), namespaces (joining the pod's network namespace, a cgroup namespace of its own, a
//! user namespace when asked), seccomp, cgroup limits.

use std::{
    fs,
    io::ErrorKind,
    path::{Component, Path, PathBuf},
};

use serde_json::{Value, json};

use super::{
    ContainerSpec,
    error::{Error, SpecProblem},
    seccomp,
};

/// The capabilities a container gets unless its securityContext says otherwise: the set
/// containerd's CRI plugin (and Docker) give.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The NOFILE limit containers get, unless the runtime's own hard limit is lower (raising it
/// needs CAP_SYS_RESOURCE, which the agent may not have).
const NOFILE: u64 = 1_048_576;

/// CFS period for CPU limits, as Kubernetes uses.
pub(crate) const CPU_PERIOD: i64 = 100_000;

/// Kubernetes' CPU shares for a request: millis * 1024 / 1000, at least 2.
pub(crate) fn cpu_shares(request_millis: i64) -> i64 {
    (request_millis.saturating_mul(1024) / 1000).max(2)
}

/// Kubernetes' CFS quota for a limit: millis * period / 1000, at least 1 ms.
pub(crate) fn cpu_quota(limit_millis: i64) -> i64 {
    (limit_millis.saturating_mul(CPU_PERIOD) / 1000).max(1000)
}

/// Every capability Linux knows, in bit order: what a privileged container gets (cut to what
/// the running kernel knows, `/proc/sys/kernel/cap_last_cap`).
const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Paths hidden from unprivileged containers (an empty file or directory is mounted over them).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// Paths unprivileged containers see read-only.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Kubernetes' highest uid or gid a securityContext may name (the API's own limit).
const MAX_ID: i64 = i32::MAX as i64;

/// A host directory or file bind-mounted into the container (a materialized volume, or a
/// subPath of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path (absolute; made by the agent, never taken from the API as it is).
    pub source: PathBuf,
    /// Path in the container (absolute, no `..`: the API's rule for `mountPath`).
    pub destination: String,
    /// `volumeMounts[].readOnly`.
    pub read_only: bool,
}

/// The seccomp profile a container runs under.
#[derive(Debug, Clone, PartialEq)]
pub enum Seccomp {
    /// The runtime's default allowlist ([`seccomp::runtime_default`]).
    RuntimeDefault,
    /// No filter.
    Unconfined,
    /// A profile file from the node's seccomp directory, already read and parsed
    /// ([`Seccomp::localhost`]): the `linux.seccomp` object as it goes into the spec.
    Localhost(Value),
}

impl Seccomp {
    /// Reads the Localhost profile `profile` (`localhostProfile`, a path relative to the node's
    /// seccomp directory `root`): the path must stay inside `root` (no absolute path, no `..`,
    /// no symlink leading out), the file must be a JSON seccomp profile.
    pub fn localhost(root: &Path, profile: &str) -> Result<Seccomp, SecurityError> {
        let err = |reason: String| SecurityError::LocalhostProfile {
            profile: profile.to_owned(),
            reason,
        };
        let rel = Path::new(profile);
        if profile.is_empty()
            || profile.contains('\0')
            || !rel
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(err(
                "must be a relative path without '..' inside the node's seccomp directory".into(),
            ));
        }
        let root = fs::canonicalize(root).map_err(|e| {
            err(format!(
                "the seccomp directory {}: {e}",
                root.to_string_lossy()
            ))
        })?;
        let path = fs::canonicalize(root.join(rel)).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                err("no such profile on this node".into())
            } else {
                err(e.to_string())
            }
        })?;
        if !path.starts_with(&root) {
            return Err(err("leads out of the node's seccomp directory".into()));
        }
        let meta = fs::metadata(&path).map_err(|e| err(e.to_string()))?;
        if !meta.is_file() || meta.len() > seccomp::MAX_PROFILE_BYTES {
            return Err(err(format!(
                "not a regular file of at most {} bytes",
                seccomp::MAX_PROFILE_BYTES
            )));
        }
        let text = fs::read(&path).map_err(|e| err(e.to_string()))?;
        let value: Value =
            serde_json::from_slice(&text).map_err(|e| err(format!("not JSON: {e}")))?;
        seccomp::check_profile(&value).map_err(err)?;
        Ok(Seccomp::Localhost(value))
    }
}

/// A user namespace for the pod (`hostUsers: false`): container ids `0..size` are host ids
/// `host_id..host_id + size`, for uids and gids alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserNamespace {
    /// The first host id of the pod's range.
    pub host_id: u32,
    /// How many ids ([`UserNamespace::SIZE`]).
    pub size: u32,
}

impl UserNamespace {
    /// Size of the uid and gid range a pod with `hostUsers: false` gets, as Kubernetes gives.
    pub const SIZE: u32 = 65_536;

    /// The `n`th range of [`UserNamespace::SIZE`] ids above the host's own first range
    /// (kubelet keeps ids below 65536 for the host): `None` past the 32-bit id space.
    pub fn nth(n: u32) -> Option<UserNamespace> {
        let host_id = n.checked_add(1)?.checked_mul(Self::SIZE)?;
        // The last id of the range must stay below u32::MAX, which means "no id".
        host_id.checked_add(Self::SIZE)?;
        Some(UserNamespace {
            host_id,
            size: Self::SIZE,
        })
    }
}

/// A container's security settings: the pod's and the container's securityContext merged
/// (the container's wins), plus the node's settings that decide what is allowed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Security {
    /// `runAsUser`; `None` is the image's user ([`Security::image_user`]).
    pub run_as_user: Option<i64>,
    /// `runAsGroup`; `None` is the image user's group when it gives a numeric one, else 0.
    pub run_as_group: Option<i64>,
    /// The image config's `User` ("" is root), set by [`Security::with_image_user`]: the
    /// process's user when `runAsUser` is unset.
    pub image_user: String,
    /// `runAsNonRoot`: refuse to start a container that would run as uid 0.
    pub run_as_non_root: bool,
    /// Additional groups: the pod's `supplementalGroups`, then its `fsGroup`.
    pub supplemental_groups: Vec<i64>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root_filesystem: bool,
    /// `allowPrivilegeEscalation`; unset is Kubernetes' default, true (no `no_new_privs`).
    pub allow_privilege_escalation: Option<bool>,
    /// `capabilities.add` ("NET_ADMIN" or "CAP_NET_ADMIN"; "ALL").
    pub capabilities_add: Vec<String>,
    /// `capabilities.drop` ("NET_RAW"; "ALL").
    pub capabilities_drop: Vec<String>,
    /// `privileged`.
    pub privileged: bool,
    /// Node setting: whether privileged containers may run here at all.
    pub allow_privileged: bool,
    /// `seccompProfile` of the container, else of the pod; `None` when neither asks.
    pub seccomp: Option<Seccomp>,
    /// Node setting (kubelet's `--seccomp-default`): a container that asks for no profile runs
    /// under RuntimeDefault instead of Unconfined.
    pub seccomp_default: bool,
    /// The pod's user namespace (`hostUsers: false`), `None` for the host's.
    pub user_namespace: Option<UserNamespace>,
}

/// Why a container's security settings cannot be honoured: the message the container's
/// `CreateContainerConfigError` (or `CreateContainerError`) shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    /// `privileged: true` on a node that does not allow it.
    #[error("securityContext.privileged: Forbidden: disallowed by cluster policy")]
    PrivilegedNotAllowed,
    /// `runAsNonRoot` with `runAsUser: 0`.
    #[error("container's runAsUser breaks non-root policy (pod: {pod:?}, container: {container})")]
    RunAsUserIsRoot { pod: String, container: String },
    /// `runAsNonRoot` with no `runAsUser`, and the image's user is root (uid 0, or none).
    #[error(
        "container has runAsNonRoot and image will run as root (pod: {pod:?}, container: {container})"
    )]
    ImageRunsAsRoot { pod: String, container: String },
    /// `runAsNonRoot` with no `runAsUser`, and the image names its user rather than giving a
    /// uid.
    #[error(
        "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (pod: {pod:?}, container: {container})"
    )]
    ImageNonNumericUser {
        user: String,
        pod: String,
        container: String,
    },
    /// The image's user (or, with no `runAsGroup`, its group) is a name, which containerd
    /// would look up in the image's /etc/passwd (/etc/group): Skiff does not, so the container
    /// is refused rather than run as root.
    #[error(
        "image user {user:?} is not numeric: Skiff does not resolve user and group names from the image's /etc/passwd and /etc/group; set securityContext.runAsUser (and runAsGroup) to numeric ids"
    )]
    ImageUserName { user: String },
    /// A uid or gid out of the range Kubernetes allows.
    #[error("{field}: Invalid value: {value}: must be between 0 and 2147483647, inclusive")]
    IdOutOfRange { field: &'static str, value: i64 },
    /// A capability name the runtime does not know.
    #[error("unknown capability {name:?} to {verb}")]
    UnknownCapability { name: String, verb: &'static str },
    /// The Localhost seccomp profile cannot be used.
    #[error("failed to load seccomp profile {profile:?}: {reason}")]
    LocalhostProfile { profile: String, reason: String },
    /// A seccompProfile type Kubernetes does not have.
    #[error(
        "seccompProfile.type: Unsupported value: {0:?}: supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\""
    )]
    SeccompType(String),
    /// `type: Localhost` without `localhostProfile`.
    #[error(
        "seccompProfile.localhostProfile: Required value: must be set when seccomp type is Localhost"
    )]
    LocalhostProfileMissing,
    /// A `procMount` other than `Default`.
    #[error("securityContext.procMount: Unsupported value: {0:?}: supported values: \"Default\"")]
    ProcMount(String),
    /// `hostUsers: false` and the node gave the pod no id range.
    #[error("hostUsers: false: no user namespace id range was allocated for the pod")]
    NoUserNamespace,
    /// `hostUsers: false` with a user or group id the pod's user namespace does not have.
    #[error(
        "{field}: Invalid value: {value}: must be less than {size} in a pod with hostUsers: false (the ids of its user namespace)"
    )]
    IdOutsideUserNamespace {
        field: &'static str,
        value: i64,
        size: u32,
    },
    /// `hostUsers: false` and no id range could be claimed for the pod.
    #[error("hostUsers: false: {0}")]
    UserNamespaceRange(String),
}

/// The node's settings that decide what a container's securityContext may have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSecurity {
    /// Whether privileged containers may run on this node.
    pub allow_privileged: bool,
    /// kubelet's `--seccomp-default`: RuntimeDefault for containers that ask for no profile.
    pub seccomp_default: bool,
    /// The directory Localhost seccomp profiles are read from (kubelet's
    /// `<root-dir>/seccomp`).
    pub seccomp_root: PathBuf,
}

impl Security {
    /// The settings of `container` of a pod with spec `pod`, as kubelet merges them: the
    /// container's `runAsUser`, `runAsGroup`, `runAsNonRoot` and `seccompProfile` win over the
    /// pod's; groups (`supplementalGroups`, then `fsGroup`) are the pod's; the rest is the
    /// container's. `user_namespace` is the pod's id range, used when `hostUsers: false`.
    /// A Localhost profile is read here. [`Security::check`] is still to be called.
    pub fn from_api(
        pod: &skiff_api::kinds::PodSpec,
        container: &skiff_api::kinds::Container,
        node: &NodeSecurity,
        user_namespace: Option<UserNamespace>,
    ) -> Result<Security, SecurityError> {
        let psc = pod.security_context.clone().unwrap_or_default();
        let csc = container.security_context.clone().unwrap_or_default();
        if let Some(pm) = csc.proc_mount.as_deref()
            && pm != "Default"
        {
            return Err(SecurityError::ProcMount(pm.to_owned()));
        }
        let seccomp = match csc
            .seccomp_profile
            .as_ref()
            .or(psc.seccomp_profile.as_ref())
        {
            None => None,
            Some(p) => Some(match p.type_.as_str() {
                "RuntimeDefault" => Seccomp::RuntimeDefault,
                "Unconfined" => Seccomp::Unconfined,
                "Localhost" => {
                    let name = p
                        .localhost_profile
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .ok_or(SecurityError::LocalhostProfileMissing)?;
                    Seccomp::localhost(&node.seccomp_root, name)?
                }
                other => return Err(SecurityError::SeccompType(other.to_owned())),
            }),
        };
        let user_namespace = if pod.host_users == Some(false) {
            Some(user_namespace.ok_or(SecurityError::NoUserNamespace)?)
        } else {
            None
        };
        let mut supplemental_groups = psc.supplemental_groups.clone();
        supplemental_groups.extend(psc.fs_group);
        let caps = csc.capabilities.clone().unwrap_or_default();
        Ok(Security {
            run_as_user: csc.run_as_user.or(psc.run_as_user),
            run_as_group: csc.run_as_group.or(psc.run_as_group),
            image_user: String::new(),
            run_as_non_root: csc.run_as_non_root.or(psc.run_as_non_root).unwrap_or(false),
            supplemental_groups,
            read_only_root_filesystem: csc.read_only_root_filesystem.unwrap_or(false),
            allow_privilege_escalation: csc.allow_privilege_escalation,
            capabilities_add: caps.add,
            capabilities_drop: caps.drop,
            privileged: csc.privileged.unwrap_or(false),
            allow_privileged: node.allow_privileged,
            seccomp,
            seccomp_default: node.seccomp_default,
            user_namespace,
        })
    }
}

/// A numeric id of an image's `User` ("1000"), `None` for a name; digits too large for an id
/// stay too large, for the range check.
fn numeric_id(s: &str) -> Option<i64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().unwrap_or(i64::MAX))
}

impl Security {
    /// The same settings for a container whose image config has `User: user`.
    #[must_use]
    pub fn with_image_user(mut self, user: &str) -> Security {
        user.clone_into(&mut self.image_user);
        self
    }

    /// The uid and gid the process runs as, as kubelet and containerd choose them: `runAsUser`
    /// wins; without it the image's `uid` or `uid:gid` (none: root). The gid is `runAsGroup`,
    /// else the image user's numeric gid, else 0: containerd would take the uid's primary
    /// group from the image's /etc/passwd, and a name from /etc/passwd or /etc/group, which
    /// Skiff does not read (names are not resolved), so a name that would be needed is
    /// refused ([`SecurityError::ImageUserName`]) rather than run as root.
    fn process_ids(&self) -> Result<(i64, i64), SecurityError> {
        let (user, group) = match self.image_user.split_once(':') {
            Some((u, g)) => (u, g),
            None => (self.image_user.as_str(), ""),
        };
        let name = || SecurityError::ImageUserName {
            user: self.image_user.clone(),
        };
        let uid = match self.run_as_user {
            Some(uid) => uid,
            None if user.is_empty() => 0,
            None => numeric_id(user).ok_or_else(name)?,
        };
        let gid = match self.run_as_group {
            Some(gid) => gid,
            None if group.is_empty() => 0,
            None => match numeric_id(group) {
                Some(gid) => gid,
                // With runAsUser, containerd does not use the image's user at all.
                None if self.run_as_user.is_some() => 0,
                None => return Err(name()),
            },
        };
        for (field, value) in [("image user", uid), ("image group", gid)] {
            if !(0..=MAX_ID).contains(&value) {
                return Err(SecurityError::IdOutOfRange { field, value });
            }
        }
        Ok((uid, gid))
    }

    /// Whether the settings can be honoured on this node, as kubelet checks before it creates
    /// a container. `pod` (`namespace/name`) and `container` name it in the message.
    pub fn check(&self, pod: &str, container: &str) -> Result<(), SecurityError> {
        if self.privileged && !self.allow_privileged {
            return Err(SecurityError::PrivilegedNotAllowed);
        }
        let ids = [
            ("runAsUser", self.run_as_user),
            ("runAsGroup", self.run_as_group),
        ]
        .into_iter()
        .filter_map(|(f, v)| v.map(|v| (f, v)))
        .chain(
            self.supplemental_groups
                .iter()
                .map(|&g| ("supplementalGroups", g)),
        );
        for (field, value) in ids {
            if !(0..=MAX_ID).contains(&value) {
                return Err(SecurityError::IdOutOfRange { field, value });
            }
        }
        if self.run_as_non_root {
            // kubelet's verifyRunAsNonRoot: runAsUser decides; without it the image's user
            // (its part before ':'), where none is root and a name cannot be verified.
            let image_user = self
                .image_user
                .split_once(':')
                .map_or(self.image_user.as_str(), |(u, _)| u);
            let (pod, container) = (pod.to_owned(), container.to_owned());
            match (self.run_as_user, numeric_id(image_user)) {
                (Some(0), _) => return Err(SecurityError::RunAsUserIsRoot { pod, container }),
                (Some(_), _) | (None, Some(1..)) => {}
                (None, Some(_)) => return Err(SecurityError::ImageRunsAsRoot { pod, container }),
                (None, None) if image_user.is_empty() => {
                    return Err(SecurityError::ImageRunsAsRoot { pod, container });
                }
                (None, None) => {
                    return Err(SecurityError::ImageNonNumericUser {
                        user: image_user.to_owned(),
                        pod,
                        container,
                    });
                }
            }
        }
        let (uid, gid) = self.process_ids()?;
        if let Some(ns) = self.user_namespace {
            // In the pod's user namespace only ids below its size exist (runc would fail with
            // an unmapped id); fsGroup is among the supplemental groups.
            let ids = [("runAsUser", uid), ("runAsGroup", gid)].into_iter().chain(
                self.supplemental_groups
                    .iter()
                    .map(|&g| ("supplementalGroups", g)),
            );
            for (field, value) in ids {
                if value >= i64::from(ns.size) {
                    return Err(SecurityError::IdOutsideUserNamespace {
                        field,
                        value,
                        size: ns.size,
                    });
                }
            }
        }
        for (names, verb) in [
            (&self.capabilities_add, "add"),
            (&self.capabilities_drop, "drop"),
        ] {
            for name in names {
                if !name.eq_ignore_ascii_case("ALL") && capability_name(name).is_none() {
                    return Err(SecurityError::UnknownCapability {
                        name: name.clone(),
                        verb,
                    });
                }
            }
        }
        Ok(())
    }

    /// Privileged, and allowed to be.
    fn is_privileged(&self) -> bool {
        self.privileged && self.allow_privileged
    }

    /// The capability set of the process: the default set, `add` ("ALL" = every one), then
    /// `drop` ("ALL" = none), as containerd applies them; every one for a privileged container.
    fn capabilities(&self) -> Vec<&'static str> {
        let all = all_capabilities();
        if self.is_privileged() {
            return all;
        }
        let has_all = |list: &[String]| list.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
        let mut caps: Vec<&'static str> = if has_all(&self.capabilities_add) {
            all
        } else {
            CAPABILITIES.to_vec()
        };
        if has_all(&self.capabilities_drop) {
            caps.clear();
        }
        for name in self
            .capabilities_add
            .iter()
            .filter_map(|c| capability_name(c))
        {
            if !caps.contains(&name) {
                caps.push(name);
            }
        }
        let dropped: Vec<&str> = self
            .capabilities_drop
            .iter()
            .filter_map(|c| capability_name(c))
            .collect();
        caps.retain(|c| !dropped.contains(c));
        caps
    }

    /// `no_new_privs`: set only when `allowPrivilegeEscalation: false` (Kubernetes' default is
    /// to allow it; the API refuses false together with privileged or CAP_SYS_ADMIN).
    fn no_new_privileges(&self) -> bool {
        self.allow_privilege_escalation == Some(false) && !self.is_privileged()
    }

    /// The filter to install, `None` for none: privileged containers run unconfined (as
    /// containerd does), a container that asks nothing gets the node's default.
    fn seccomp(&self) -> Option<Value> {
        if self.is_privileged() {
            return None;
        }
        match &self.seccomp {
            Some(Seccomp::RuntimeDefault) => Some(seccomp::runtime_default()),
            Some(Seccomp::Unconfined) => None,
            Some(Seccomp::Localhost(profile)) => Some(profile.clone()),
            None if self.seccomp_default => Some(seccomp::runtime_default()),
            None => None,
        }
    }
}

/// `CAP_X` for "X" or "CAP_X" (any case), if Linux knows it: the API's reading of the name
/// ([`skiff_api::kinds::capability`]), spelt as the runtime spec wants it.
fn capability_name(name: &str) -> Option<&'static str> {
    let bare = skiff_api::kinds::capability(name)?;
    ALL_CAPABILITIES
        .iter()
        .copied()
        .find(|c| c.strip_prefix("CAP_") == Some(bare))
}

/// Every capability this process may hand on: those of its bounding set that Linux and this
/// list know (as containerd gives a privileged container the capabilities it has itself; one
/// it lacks cannot be granted, and asking for it fails the container).
fn all_capabilities() -> Vec<&'static str> {
    let bounding = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    });
    let mask = bounding.unwrap_or(u64::MAX);
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// Clamps an id checked by [`Security::check`] into the spec's u32.
fn id(value: i64) -> u32 {
    u32::try_from(value.clamp(0, MAX_ID)).unwrap_or(0)
}

/// The runtime spec for `spec`.
pub(crate) fn runtime_spec(spec: &ContainerSpec) -> Result<Value, Error> {
    let invalid = |problem| Error::InvalidSpec {
        id: spec.id.clone(),
        problem,
    };
    if spec.argv.is_empty() {
        return Err(invalid(SpecProblem::EmptyArgv));
    }
    if !spec.netns.is_absolute() {
        return Err(invalid(SpecProblem::RelativeNetns(spec.netns.clone())));
    }
    let cwd = if !spec.working_dir.is_empty() {
        spec.working_dir.clone()
    } else if !spec.image.working_dir.is_empty() {
        spec.image.working_dir.clone()
    } else {
        "/".to_owned()
    };
    let nofile = nofile_limit();
    let security = &spec.security;
    if security.privileged && !security.allow_privileged {
        // `Security::check` refuses this before a container is made; should a caller skip it,
        // no container is made either.
        return Err(invalid(SpecProblem::Security(
            SecurityError::PrivilegedNotAllowed,
        )));
    }
    let privileged = security.is_privileged();
    let caps = security.capabilities();
    // `Security::check` refuses what cannot be run as; should a caller skip it, no container
    // is made either.
    let (uid, gid) = security
        .process_ids()
        .map_err(|e| invalid(SpecProblem::Security(e)))?;
    let mut user = json!({"uid": id(uid), "gid": id(gid)});
    if !security.supplemental_groups.is_empty() {
        let mut groups: Vec<u32> = Vec::new();
        for g in security.supplemental_groups.iter().copied().map(id) {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        user["additionalGids"] = json!(groups);
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
    ];
    let sys_mode = if privileged { "rw" } else { "ro" };
    if security.user_namespace.is_some() {
        // sysfs can only be mounted by the owner of the network namespace, which the pod's
        // user namespace is not (the pod's netns belongs to the host's): bind the host's.
        mounts.push(
            json!({"destination": "/sys", "type": "bind", "source": "/sys",
                           "options": ["rbind", "nosuid", "noexec", "nodev", sys_mode]}),
        );
    } else {
        mounts.push(
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                           "options": ["nosuid", "noexec", "nodev", sys_mode]}),
        );
    }
    // Parents before what is under them, as containerd's CRI orders a container's mounts:
    // `/etc/nginx` after `/etc/nginx/conf.d` would hide it. Stable: at one depth the
    // volumeMounts order stays.
    let mut binds: Vec<&BindMount> = spec.mounts.iter().collect();
    binds.sort_by_key(|m| mount_depth(&m.destination));
    for m in binds {
        mounts.push(bind_mount(spec, m)?);
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "network", "path": spec.netns}),
        json!({"type": "cgroup"}),
    ];
    let mut linux = json!({
        "resources": resources(spec),
        "cgroupsPath": cgroups_path(spec),
    });
    if let Some(userns) = security.user_namespace {
        namespaces.push(json!({"type": "user"}));
        let mapping = json!([{"containerID": 0, "hostID": userns.host_id, "size": userns.size}]);
        linux["uidMappings"] = mapping.clone();
        linux["gidMappings"] = mapping;
    }
    linux["namespaces"] = json!(namespaces);
    if privileged {
        linux["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
        linux["devices"] = json!(host_devices());
    } else {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    if let Some(filter) = security.seccomp() {
        linux["seccomp"] = filter;
    }
    let mut spec_json = json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": user,
            "args": spec.argv,
            "env": spec.env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": security.no_new_privileges(),
        },
        "root": {"path": "rootfs", "readonly": security.read_only_root_filesystem},
        "mounts": mounts,
        "linux": linux,
    });
    if !spec.hostname.is_empty() {
        spec_json["hostname"] = json!(spec.hostname);
    }
    Ok(spec_json)
}

/// A volume's bind mount: `rbind` so mounts under the volume (none today) come along, private
/// propagation, `ro` when the volumeMount is read-only.
fn bind_mount(spec: &ContainerSpec, m: &BindMount) -> Result<Value, Error> {
    let dest = Path::new(&m.destination);
    let ok = m.source.is_absolute()
        && dest.is_absolute()
        && dest
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !ok {
        return Err(Error::File {
            action: "refusing to bind-mount a volume (source and mountPath must be absolute, without '..'):",
            path: PathBuf::from(&m.destination),
            source: std::io::Error::new(ErrorKind::InvalidInput, format!("container {}", spec.id)),
        });
    }
    let mut options = vec!["rbind", "rprivate"];
    options.push(if m.read_only { "ro" } else { "rw" });
    Ok(json!({
        "destination": m.destination,
        "type": "bind",
        "source": m.source,
        "options": options,
    }))
}

/// How many path elements a mount's destination has (`/etc/nginx/conf.d`: 3).
fn mount_depth(destination: &str) -> usize {
    Path::new(destination)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

/// The host's device nodes directly under /dev, for a privileged container (as containerd
/// gives it the host's devices).
fn host_devices() -> Vec<Value> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let Ok(entries) = fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        let kind = if ft.is_char_device() {
            "c"
        } else if ft.is_block_device() {
            "b"
        } else {
            continue;
        };
        // The container's own /dev/console, ptmx and pts come from its devpts.
        if path == Path::new("/dev/console") || path == Path::new("/dev/ptmx") {
            continue;
        }
        let rdev = meta.rdev();
        out.push(json!({
            "path": path,
            "type": kind,
            "major": rustix::fs::major(rdev),
            "minor": rustix::fs::minor(rdev),
            "fileMode": meta.mode() & 0o7777,
            "uid": meta.uid(),
            "gid": meta.gid(),
        }));
    }
    out
}

/// `linux.cgroupsPath`: the parent plus the container id (cgroupfs layout).
pub(crate) fn cgroups_path(spec: &ContainerSpec) -> String {
    let parent = spec.cgroup_parent.trim_end_matches('/');
    if parent.is_empty() {
        format!("/{}", spec.id)
    } else if parent.starts_with('/') {
        format!("{parent}/{}", spec.id)
    } else {
        format!("/{parent}/{}", spec.id)
    }
}

fn resources(spec: &ContainerSpec) -> Value {
    let mut r = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(limit) = spec.memory_limit {
        let mut memory = json!({"limit": limit});
        // No swapping past the limit (Kubernetes' behaviour), where swap is accounted at all.
        if swap_accounted() {
            memory["swap"] = json!(limit);
        }
        r["memory"] = memory;
    }
    let mut cpu = serde_json::Map::new();
    if let Some(req) = spec.cpu_request_millis {
        cpu.insert("shares".into(), json!(cpu_shares(req)));
    }
    if let Some(limit) = spec.cpu_limit_millis {
        cpu.insert("quota".into(), json!(cpu_quota(limit)));
        cpu.insert("period".into(), json!(CPU_PERIOD));
    }
    if !cpu.is_empty() {
        r["cpu"] = Value::Object(cpu);
    }
    r
}

/// Whether memory+swap can be limited: cgroup v2 (runc converts it), or v1 with swap
/// accounting on.
fn swap_accounted() -> bool {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.is_dir() {
        v1.join("memory.memsw.limit_in_bytes").exists()
    } else {
        Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    }
}

fn nofile_limit() -> u64 {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    hard.map_or(NOFILE, |h| h.min(NOFILE))
}

/// The process spec for an exec in a container whose runtime spec is `container_spec`: the
/// container's process (user, env, cwd, capabilities) with `argv` instead of its args.
pub(crate) fn exec_process(container_spec: &Value, argv: &[String]) -> Result<Value, Error> {
    if argv.is_empty() {
        return Err(Error::EmptyExec);
    }
    let mut process = container_spec
        .get("process")
        .cloned()
        .unwrap_or_else(|| json!({"user": {"uid": 0, "gid": 0}, "cwd": "/"}));
    process["args"] = json!(argv);
    process["terminal"] = json!(false);
    Ok(process)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::PathBuf};

    use super::*;
    use crate::runtime::Image;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            image: Image {
                name: "docker.io/library/busybox:latest".into(),
                id: "sha256:00".into(),
                chain_id: "sha256:11".into(),
                entrypoint: vec![],
                cmd: vec!["sh".into()],
                env: vec![],
                working_dir: "/www".into(),
                user: String::new(),
            },
            labels: BTreeMap::new(),
            argv: vec!["sleep".into(), "1".into()],
            env: vec!["A=b".into()],
            working_dir: String::new(),
            netns: PathBuf::from("/run/netns/x"),
            hostname: "h".into(),
            log_path: PathBuf::from("/tmp/l"),
            memory_limit: Some(1 << 24),
            cpu_limit_millis: Some(500),
            cpu_request_millis: Some(1),
            cgroup_parent: "/skiff/n1/uid".into(),
            mounts: Vec::new(),
            security: Default::default(),
        }
    }

    #[test]
    fn spec_has_limits_namespaces_and_defaults() {
        let v = runtime_spec(&spec()).unwrap();
        assert_eq!(v["process"]["cwd"], "/www");
        assert_eq!(v["process"]["args"], json!(["sleep", "1"]));
        assert_eq!(v["linux"]["cgroupsPath"], "/skiff/n1/uid/c1");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 1 << 24);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["period"], 100_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 2);
        assert_eq!(v["linux"]["namespaces"][4]["path"], "/run/netns/x");
        assert_eq!(v["hostname"], "h");
        assert!(v.get("apparmorProfile").is_none());
        assert!(v["process"].get("apparmorProfile").is_none());
    }

    fn names(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_owned())
            .collect()
    }

    fn with(security: Security) -> Value {
        let mut s = spec();
        s.security = security;
        runtime_spec(&s).unwrap()
    }

    #[test]
    fn a_container_that_asks_for_nothing_gets_kubernetes_defaults() {
        let v = runtime_spec(&spec()).unwrap();
        assert_eq!(v["process"]["user"], json!({"uid": 0, "gid": 0}));
        assert_eq!(v["process"]["noNewPrivileges"], false);
        assert_eq!(
            names(&v["process"]["capabilities"]["bounding"]),
            CAPABILITIES
        );
        assert_eq!(v["root"]["readonly"], false);
        assert!(v["linux"].get("seccomp").is_none());
        assert!(
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .contains(&json!({"type": "cgroup"}))
        );
        assert!(
            !v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .contains(&json!({"type": "user"}))
        );
        assert!(names(&v["linux"]["maskedPaths"]).contains(&"/proc/kcore".to_owned()));
        assert_eq!(
            v["linux"]["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"}])
        );
    }

    #[test]
    fn user_groups_read_only_root_and_no_new_privileges_reach_the_process() {
        let v = with(Security {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            supplemental_groups: vec![4000, 2000, 4000],
            read_only_root_filesystem: true,
            allow_privilege_escalation: Some(false),
            ..Security::default()
        });
        assert_eq!(
            v["process"]["user"],
            json!({"uid": 1000, "gid": 3000, "additionalGids": [4000, 2000]})
        );
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        let v = with(Security {
            allow_privilege_escalation: Some(true),
            ..Security::default()
        });
        assert_eq!(v["process"]["noNewPrivileges"], false);
    }

    #[test]
    fn every_capability_the_api_accepts_has_its_bit_here_and_reads_in_any_spelling() {
        assert_eq!(
            ALL_CAPABILITIES.len(),
            skiff_api::kinds::LINUX_CAPABILITIES.len()
        );
        for bare in skiff_api::kinds::LINUX_CAPABILITIES {
            let full = format!("CAP_{bare}");
            assert_eq!(capability_name(bare), Some(full.as_str()));
            assert_eq!(capability_name(&full.to_lowercase()), Some(full.as_str()));
        }
        for unknown in ["ALL", "CAP_", "", "NET_ADMINX", "CAP_CAP_CHOWN"] {
            assert_eq!(capability_name(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn capabilities_are_added_and_dropped_as_containerd_does() {
        let caps = |add: &[&str], drop: &[&str]| {
            let v = with(Security {
                capabilities_add: add.iter().map(|s| s.to_string()).collect(),
                capabilities_drop: drop.iter().map(|s| s.to_string()).collect(),
                ..Security::default()
            });
            assert_eq!(
                v["process"]["capabilities"]["bounding"],
                v["process"]["capabilities"]["effective"]
            );
            assert_eq!(
                v["process"]["capabilities"]["bounding"],
                v["process"]["capabilities"]["permitted"]
            );
            names(&v["process"]["capabilities"]["bounding"])
        };
        let c = caps(&["NET_ADMIN"], &["NET_RAW", "cap_chown"]);
        assert!(c.contains(&"CAP_NET_ADMIN".to_owned()));
        assert!(!c.contains(&"CAP_NET_RAW".to_owned()));
        assert!(!c.contains(&"CAP_CHOWN".to_owned()));
        assert_eq!(caps(&[], &["ALL"]), Vec::<String>::new());
        assert_eq!(
            caps(&["NET_BIND_SERVICE"], &["ALL"]),
            ["CAP_NET_BIND_SERVICE"]
        );
        assert_eq!(caps(&["ALL"], &[]), all_capabilities());
        let err = Security {
            capabilities_add: vec!["FLY".into()],
            ..Security::default()
        }
        .check("ns/p", "c")
        .unwrap_err();
        assert_eq!(err.to_string(), "unknown capability \"FLY\" to add");
    }

    #[test]
    fn privileged_needs_the_node_to_allow_it_and_then_gets_everything() {
        let asked = Security {
            privileged: true,
            seccomp: Some(Seccomp::RuntimeDefault),
            ..Security::default()
        };
        assert_eq!(
            asked.check("ns/p", "c").unwrap_err().to_string(),
            "securityContext.privileged: Forbidden: disallowed by cluster policy"
        );
        // A caller that skipped the check gets no container either.
        let mut s = spec();
        s.security = asked.clone();
        assert!(matches!(
            runtime_spec(&s),
            Err(Error::InvalidSpec {
                problem: SpecProblem::Security(SecurityError::PrivilegedNotAllowed),
                ..
            })
        ));
        let allowed = Security {
            allow_privileged: true,
            ..asked
        };
        allowed.check("ns/p", "c").unwrap();
        let v = with(allowed);
        assert_eq!(
            names(&v["process"]["capabilities"]["bounding"]),
            all_capabilities()
        );
        assert!(v["linux"].get("maskedPaths").is_none());
        assert!(v["linux"].get("readonlyPaths").is_none());
        assert!(v["linux"].get("seccomp").is_none());
        assert_eq!(
            v["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        assert!(
            v["linux"]["devices"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["path"] == "/dev/null")
        );
        let sys = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(names(&sys["options"]).contains(&"rw".to_owned()));
    }

    #[test]
    fn run_as_non_root_refuses_root_with_kubelets_messages() {
        let s = |user| Security {
            run_as_non_root: true,
            run_as_user: user,
            ..Security::default()
        };
        assert_eq!(
            s(Some(0))
                .check("default/web", "app")
                .unwrap_err()
                .to_string(),
            "container's runAsUser breaks non-root policy (pod: \"default/web\", container: app)"
        );
        assert_eq!(
            s(None).check("default/web", "app").unwrap_err().to_string(),
            "container has runAsNonRoot and image will run as root (pod: \"default/web\", container: app)"
        );
        s(Some(1000)).check("default/web", "app").unwrap();
        let err = Security {
            run_as_user: Some(-1),
            ..Security::default()
        }
        .check("default/web", "app")
        .unwrap_err();
        assert!(matches!(
            err,
            SecurityError::IdOutOfRange {
                field: "runAsUser",
                ..
            }
        ));
    }

    #[test]
    fn the_image_user_is_run_as_unless_run_as_user_is_set_and_names_are_refused() {
        // (runAsUser, runAsGroup, runAsNonRoot, image User) -> (uid, gid) or the refusal.
        let pod = "(pod: \"web_default(u1)\", container: app)";
        type Case = (
            Option<i64>,
            Option<i64>,
            bool,
            &'static str,
            Result<(u32, u32), String>,
        );
        let cases: [Case; 20] = [
            (None, None, false, "", Ok((0, 0))),
            (None, None, false, "1000", Ok((1000, 0))),
            (None, None, false, "1000:2000", Ok((1000, 2000))),
            (None, None, false, "0:0", Ok((0, 0))),
            (None, Some(7), false, "1000:2000", Ok((1000, 7))),
            (Some(5), None, false, "1000:2000", Ok((5, 2000))),
            (Some(5), None, false, "nginx", Ok((5, 0))),
            (Some(5), None, false, "nginx:www", Ok((5, 0))),
            (Some(5), Some(6), false, "nginx:www", Ok((5, 6))),
            (None, Some(6), false, "1000:www", Ok((1000, 6))),
            (
                None,
                None,
                false,
                "nginx",
                Err("image user \"nginx\" is not numeric: Skiff does not resolve user and group names from the image's /etc/passwd and /etc/group; set securityContext.runAsUser (and runAsGroup) to numeric ids".into()),
            ),
            (
                None,
                None,
                false,
                "1000:www",
                Err("image user \"1000:www\" is not numeric: Skiff does not resolve user and group names from the image's /etc/passwd and /etc/group; set securityContext.runAsUser (and runAsGroup) to numeric ids".into()),
            ),
            (
                None,
                None,
                false,
                "99999999999",
                Err("image user: Invalid value: 99999999999: must be between 0 and 2147483647, inclusive".into()),
            ),
            (None, None, true, "1000", Ok((1000, 0))),
            (None, None, true, "1000:0", Ok((1000, 0))),
            (Some(1), None, true, "root", Ok((1, 0))),
            (
                None,
                None,
                true,
                "",
                Err(format!("container has runAsNonRoot and image will run as root {pod}")),
            ),
            (
                None,
                None,
                true,
                "0:1000",
                Err(format!("container has runAsNonRoot and image will run as root {pod}")),
            ),
            (
                None,
                None,
                true,
                "nginx:www",
                Err(format!(
                    "container has runAsNonRoot and image has non-numeric user (nginx), cannot verify user is non-root {pod}"
                )),
            ),
            (
                Some(0),
                None,
                true,
                "1000",
                Err(format!("container's runAsUser breaks non-root policy {pod}")),
            ),
        ];
        for (run_as_user, run_as_group, run_as_non_root, image_user, want) in cases {
            let security = Security {
                run_as_user,
                run_as_group,
                run_as_non_root,
                ..Security::default()
            }
            .with_image_user(image_user);
            let case = format!("{run_as_user:?} {run_as_group:?} {run_as_non_root} {image_user:?}");
            match want {
                Ok((uid, gid)) => {
                    security.check("web_default(u1)", "app").expect(&case);
                    assert_eq!(
                        with(security)["process"]["user"],
                        json!({"uid": uid, "gid": gid}),
                        "{case}"
                    );
                }
                Err(message) => {
                    let e = security.check("web_default(u1)", "app").expect_err(&case);
                    assert_eq!(e.to_string(), message, "{case}");
                    // Should a caller skip the check, no container is made either (unless
                    // only runAsNonRoot refused it: that is the check's alone).
                    let mut s = spec();
                    s.security = security;
                    if !run_as_non_root {
                        assert!(runtime_spec(&s).is_err(), "{case}");
                    }
                }
            }
        }
    }

    #[test]
    fn seccomp_follows_the_profile_asked_or_the_nodes_default() {
        let filter = |seccomp, default| {
            with(Security {
                seccomp,
                seccomp_default: default,
                ..Security::default()
            })["linux"]
                .get("seccomp")
                .cloned()
        };
        assert_eq!(filter(None, false), None);
        assert_eq!(
            filter(None, true).unwrap()["defaultAction"],
            "SCMP_ACT_ERRNO"
        );
        assert_eq!(
            filter(Some(Seccomp::RuntimeDefault), false).unwrap()["defaultAction"],
            "SCMP_ACT_ERRNO"
        );
        assert_eq!(filter(Some(Seccomp::Unconfined), true), None);
        let own = json!({"defaultAction": "SCMP_ACT_LOG"});
        assert_eq!(
            filter(Some(Seccomp::Localhost(own.clone())), false),
            Some(own)
        );
    }

    #[test]
    fn localhost_profiles_stay_inside_the_nodes_directory() {
        let root = std::env::temp_dir().join(format!("skiff-seccomp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("profiles")).unwrap();
        fs::write(
            root.join("profiles/audit.json"),
            r#"{"defaultAction": "SCMP_ACT_LOG"}"#,
        )
        .unwrap();
        fs::write(root.join("profiles/bad.json"), "not json").unwrap();
        fs::write(
            root.join("outside.json"),
            r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink(root.join("outside.json"), root.join("profiles/link.json"))
            .unwrap();
        let dir = root.join("profiles");
        assert_eq!(
            Seccomp::localhost(&dir, "audit.json").unwrap(),
            Seccomp::Localhost(json!({"defaultAction": "SCMP_ACT_LOG"}))
        );
        for (name, reason) in [
            ("../outside.json", "relative path without '..'"),
            ("/etc/passwd", "relative path without '..'"),
            ("link.json", "leads out"),
            ("missing.json", "no such profile"),
            ("bad.json", "not JSON"),
            ("", "relative path"),
        ] {
            let err = Seccomp::localhost(&dir, name).unwrap_err().to_string();
            assert!(err.contains(reason), "{name}: {err}");
            assert!(err.starts_with("failed to load seccomp profile"), "{err}");
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_user_namespace_maps_the_pods_range_and_binds_sysfs() {
        let v = with(Security {
            user_namespace: UserNamespace::nth(2),
            ..Security::default()
        });
        assert!(
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .contains(&json!({"type": "user"}))
        );
        let mapping = json!([{"containerID": 0, "hostID": 196_608, "size": 65_536}]);
        assert_eq!(v["linux"]["uidMappings"], mapping);
        assert_eq!(v["linux"]["gidMappings"], mapping);
        let sys = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert_eq!(sys["type"], "bind");
        assert_eq!(UserNamespace::nth(u32::MAX), None);
        assert_eq!(UserNamespace::nth(65_534), None);
    }

    #[test]
    fn in_a_user_namespace_ids_past_its_size_are_refused_with_the_field_named() {
        let ns = Security {
            user_namespace: UserNamespace::nth(0),
            ..Security::default()
        };
        assert_eq!(
            ns.check("p", "c"),
            Ok(()),
            "root inside is the range's first id"
        );
        let with = |s: Security| s.check("p", "c").unwrap_err().to_string();
        assert_eq!(
            with(Security {
                run_as_user: Some(65_536),
                ..ns.clone()
            }),
            "runAsUser: Invalid value: 65536: must be less than 65536 in a pod with hostUsers: false (the ids of its user namespace)"
        );
        assert!(
            with(Security {
                supplemental_groups: vec![70_000],
                ..ns.clone()
            })
            .starts_with("supplementalGroups: Invalid value: 70000:")
        );
        assert!(with(ns.clone().with_image_user("1:100000")).starts_with("runAsGroup: "));
        // Outside a user namespace such ids are the host's, and fine.
        let host = Security {
            run_as_user: Some(65_536),
            ..Security::default()
        };
        assert_eq!(host.check("p", "c"), Ok(()));
    }

    #[test]
    fn volume_mounts_are_ordered_parents_first_so_a_parent_never_hides_a_mount_under_it() {
        let mut s = spec();
        let bind = |dest: &str, source: &str| BindMount {
            source: PathBuf::from(source),
            destination: dest.into(),
            read_only: false,
        };
        s.mounts = vec![
            bind("/etc/nginx/conf.d", "/v/confd"),
            bind("/etc/nginx/", "/v/nginx"),
            bind("/data/b", "/v/b"),
            bind("/data/a", "/v/a"),
            bind("/data", "/v/data"),
        ];
        let v = runtime_spec(&s).unwrap();
        let volumes: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["source"].as_str().is_some_and(|s| s.starts_with("/v/")))
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        // By depth; at one depth in the order given.
        assert_eq!(
            volumes,
            [
                "/data",
                "/etc/nginx/",
                "/data/b",
                "/data/a",
                "/etc/nginx/conf.d"
            ]
        );
    }

    #[test]
    fn volume_mounts_become_binds_read_only_when_asked() {
        let mut s = spec();
        s.mounts = vec![
            BindMount {
                source: "/var/lib/skiff/pods/u/volumes/kubernetes.io~configmap/cfg".into(),
                destination: "/etc/app".into(),
                read_only: true,
            },
            BindMount {
                source: "/var/lib/skiff/pods/u/volumes/kubernetes.io~empty-dir/scratch".into(),
                destination: "/scratch".into(),
                read_only: false,
            },
        ];
        let v = runtime_spec(&s).unwrap();
        let mounts = v["mounts"].as_array().unwrap();
        let cfg = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/app")
            .unwrap();
        assert_eq!(cfg["type"], "bind");
        assert_eq!(cfg["options"], json!(["rbind", "rprivate", "ro"]));
        let scratch = mounts
            .iter()
            .find(|m| m["destination"] == "/scratch")
            .unwrap();
        assert_eq!(scratch["options"], json!(["rbind", "rprivate", "rw"]));
        // After the defaults, so a volume at /dev/shm or under /sys wins.
        assert!(
            mounts
                .iter()
                .position(|m| m["destination"] == "/sys")
                .unwrap()
                < mounts
                    .iter()
                    .position(|m| m["destination"] == "/etc/app")
                    .unwrap()
        );
        for dest in ["relative", "/a/../etc"] {
            s.mounts = vec![BindMount {
                source: "/x".into(),
                destination: dest.into(),
                read_only: false,
            }];
            assert!(runtime_spec(&s).is_err(), "{dest}");
        }
    }

    #[test]
    fn the_containers_security_context_wins_over_the_pods_and_groups_come_from_the_pod() {
        let pod: skiff_api::kinds::PodSpec = serde_json::from_value(json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true,
                                "fsGroup": 2000, "supplementalGroups": [3000],
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": "b", "securityContext": {
                "runAsUser": 1001, "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                "seccompProfile": {"type": "Unconfined"}}}],
            "hostUsers": false,
        }))
        .unwrap();
        let node = NodeSecurity::default();
        let s = Security::from_api(&pod, &pod.containers[0], &node, UserNamespace::nth(0)).unwrap();
        assert_eq!(s.run_as_user, Some(1001));
        assert_eq!(s.run_as_group, Some(1000));
        assert!(s.run_as_non_root);
        assert_eq!(s.supplemental_groups, [3000, 2000]);
        assert!(s.read_only_root_filesystem);
        assert_eq!(s.allow_privilege_escalation, Some(false));
        assert_eq!(s.capabilities_add, ["NET_ADMIN"]);
        assert_eq!(s.capabilities_drop, ["ALL"]);
        assert_eq!(s.seccomp, Some(Seccomp::Unconfined));
        assert_eq!(s.user_namespace, UserNamespace::nth(0));
        s.check("default/web", "app").unwrap();
        assert_eq!(
            Security::from_api(&pod, &pod.containers[0], &node, None).unwrap_err(),
            SecurityError::NoUserNamespace
        );
        let mut c = pod.containers[0].clone();
        c.security_context.as_mut().unwrap().seccomp_profile = None;
        let s = Security::from_api(&pod, &c, &node, UserNamespace::nth(0)).unwrap();
        assert_eq!(s.seccomp, Some(Seccomp::RuntimeDefault));
        c.security_context.as_mut().unwrap().seccomp_profile =
            serde_json::from_value(json!({"type": "Localhost"})).unwrap();
        assert_eq!(
            Security::from_api(&pod, &c, &node, UserNamespace::nth(0)).unwrap_err(),
            SecurityError::LocalhostProfileMissing
        );
    }

    #[test]
    fn kubernetes_cpu_formulas() {
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_shares(100), 102);
        assert_eq!(cpu_shares(0), 2);
        assert_eq!(cpu_quota(250), 25_000);
        assert_eq!(cpu_quota(1), 1000);
    }

    #[test]
    fn exec_keeps_the_container_process_but_its_args() {
        let v = runtime_spec(&spec()).unwrap();
        let p = exec_process(&v, &["true".into()]).unwrap();
        assert_eq!(p["args"], json!(["true"]));
        assert_eq!(p["env"], json!(["A=b"]));
        assert!(exec_process(&v, &[]).is_err());
    }
}
