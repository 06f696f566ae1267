//! The OCI runtime spec (config.json) of a container, written here because containerd's gRPC
//! API takes it from the client: process, mounts, namespaces (joining the pod's network
//! namespace), cgroup limits.

use std::path::Path;

use serde_json::{Value, json};

use super::{
    ContainerSpec,
    error::{Error, SpecProblem},
};

/// Docker's default capability set.
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
    let mut spec_json = json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": spec.argv,
            "env": spec.env,
            "cwd": cwd,
            "capabilities": {
                "bounding": CAPABILITIES,
                "effective": CAPABILITIES,
                "permitted": CAPABILITIES,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "resources": resources(spec),
            "cgroupsPath": cgroups_path(spec),
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": spec.netns},
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    });
    if !spec.hostname.is_empty() {
        spec_json["hostname"] = json!(spec.hostname);
    }
    Ok(spec_json)
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
