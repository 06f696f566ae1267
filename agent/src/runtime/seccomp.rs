//! Seccomp for containers: the RuntimeDefault profile (an allowlist: every syscall not named
//! fails with EPERM), and the checks a Localhost profile passes before it goes into a spec.
//!
//! The allowlist is Skiff's own, grouped by what the calls are for. What it leaves out is
//! what lets a process reach past its container: namespaces and mounts (`unshare`, `setns`,
//! `mount`, the new mount API, `pivot_root`), the kernel keyring, BPF and perf, modules,
//! kexec and reboot, the clock, swap, accounting, quotas, `userfaultfd`, handle-based opens,
//! io_uring, raw I/O ports. `clone` may not make namespaces; `clone3` says ENOSYS so that libc
//! falls back to `clone`, whose flags the filter can see.

use serde_json::{Value, json};

/// The largest Localhost profile read.
pub(crate) const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// EPERM: what a call outside the allowlist returns.
const EPERM: u32 = 1;
/// ENOSYS: `clone3`'s answer, so that callers fall back to `clone`.
const ENOSYS: u32 = 38;
/// Every `CLONE_NEW*` flag `clone` takes (mount, cgroup, uts, ipc, user, pid, net).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// Calls every architecture has (the generic table; names an architecture lacks are skipped by
/// the runtime).
const ALLOWED: &[&[&str]] = &[
    // Files and directories.
    &[
        "access",
        "chdir",
        "chmod",
        "chown",
        "close",
        "close_range",
        "copy_file_range",
        "creat",
        "dup",
        "dup2",
        "dup3",
        "faccessat",
        "faccessat2",
        "fadvise64",
        "fallocate",
        "fchdir",
        "fchmod",
        "fchmodat",
        "fchmodat2",
        "fchown",
        "fchownat",
        "fcntl",
        "fdatasync",
        "flock",
        "fstat",
        "fstatfs",
        "fsync",
        "ftruncate",
        "futimesat",
        "getcwd",
        "getdents",
        "getdents64",
        "lchown",
        "link",
        "linkat",
        "lseek",
        "lstat",
        "mkdir",
        "mkdirat",
        "mknod",
        "mknodat",
        "newfstatat",
        "open",
        "openat",
        "openat2",
        "pread64",
        "preadv",
        "preadv2",
        "pwrite64",
        "pwritev",
        "pwritev2",
        "read",
        "readahead",
        "readlink",
        "readlinkat",
        "readv",
        "rename",
        "renameat",
        "renameat2",
        "rmdir",
        "sendfile",
        "splice",
        "stat",
        "statfs",
        "statx",
        "symlink",
        "symlinkat",
        "sync",
        "sync_file_range",
        "syncfs",
        "tee",
        "truncate",
        "umask",
        "unlink",
        "unlinkat",
        "utime",
        "utimensat",
        "utimes",
        "vmsplice",
        "write",
        "writev",
        "chroot",
    ],
    // Extended attributes.
    &[
        "fgetxattr",
        "flistxattr",
        "fremovexattr",
        "fsetxattr",
        "getxattr",
        "lgetxattr",
        "listxattr",
        "llistxattr",
        "lremovexattr",
        "lsetxattr",
        "removexattr",
        "setxattr",
    ],
    // Waiting on files: poll, epoll, inotify, eventfd, signalfd, timerfd, fanotify marks.
    &[
        "epoll_create",
        "epoll_create1",
        "epoll_ctl",
        "epoll_pwait",
        "epoll_pwait2",
        "epoll_wait",
        "eventfd",
        "eventfd2",
        "fanotify_mark",
        "inotify_add_watch",
        "inotify_init",
        "inotify_init1",
        "inotify_rm_watch",
        "poll",
        "ppoll",
        "pselect6",
        "select",
        "signalfd",
        "signalfd4",
        "timerfd_create",
        "timerfd_gettime",
        "timerfd_settime",
        "pipe",
        "pipe2",
    ],
    // Asynchronous I/O (not io_uring).
    &[
        "io_cancel",
        "io_destroy",
        "io_getevents",
        "io_pgetevents",
        "io_setup",
        "io_submit",
    ],
    // Memory.
    &[
        "brk",
        "madvise",
        "membarrier",
        "memfd_create",
        "memfd_secret",
        "mincore",
        "mlock",
        "mlock2",
        "mlockall",
        "mmap",
        "mprotect",
        "mremap",
        "msync",
        "munlock",
        "munlockall",
        "munmap",
        "pkey_alloc",
        "pkey_free",
        "pkey_mprotect",
        "remap_file_pages",
        "get_mempolicy",
        "set_mempolicy",
        "mbind",
    ],
    // Processes, threads, credentials (checked by the kernel against the capabilities).
    &[
        "capget",
        "capset",
        "execve",
        "execveat",
        "exit",
        "exit_group",
        "fork",
        "vfork",
        "futex",
        "futex_waitv",
        "get_robust_list",
        "set_robust_list",
        "getcpu",
        "getegid",
        "geteuid",
        "getgid",
        "getgroups",
        "getpgid",
        "getpgrp",
        "getpid",
        "getppid",
        "getpriority",
        "getresgid",
        "getresuid",
        "getrlimit",
        "getrusage",
        "getsid",
        "gettid",
        "getuid",
        "ioprio_get",
        "ioprio_set",
        "prctl",
        "prlimit64",
        "rseq",
        "seccomp",
        "setfsgid",
        "setfsuid",
        "setgid",
        "setgroups",
        "setpgid",
        "setpriority",
        "setregid",
        "setresgid",
        "setresuid",
        "setreuid",
        "setrlimit",
        "setsid",
        "setuid",
        "set_tid_address",
        "wait4",
        "waitid",
        "restart_syscall",
        "pidfd_open",
        "pidfd_send_signal",
        "pidfd_getfd",
        "process_mrelease",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "sethostname",
        "setdomainname",
        "uname",
        "sysinfo",
        "getrandom",
        "landlock_create_ruleset",
        "landlock_add_rule",
        "landlock_restrict_self",
    ],
    // Scheduling.
    &[
        "sched_getaffinity",
        "sched_getattr",
        "sched_getparam",
        "sched_get_priority_max",
        "sched_get_priority_min",
        "sched_getscheduler",
        "sched_rr_get_interval",
        "sched_setaffinity",
        "sched_setattr",
        "sched_setparam",
        "sched_setscheduler",
        "sched_yield",
    ],
    // Signals.
    &[
        "kill",
        "tgkill",
        "tkill",
        "pause",
        "rt_sigaction",
        "rt_sigpending",
        "rt_sigprocmask",
        "rt_sigqueueinfo",
        "rt_sigreturn",
        "rt_sigsuspend",
        "rt_sigtimedwait",
        "rt_tgsigqueueinfo",
        "sigaltstack",
    ],
    // Time (reading it, and timers; not setting the clock).
    &[
        "adjtimex",
        "alarm",
        "clock_getres",
        "clock_gettime",
        "clock_nanosleep",
        "getitimer",
        "gettimeofday",
        "nanosleep",
        "setitimer",
        "time",
        "timer_create",
        "timer_delete",
        "timer_getoverrun",
        "timer_gettime",
        "timer_settime",
        "times",
    ],
    // Sockets.
    &[
        "accept",
        "accept4",
        "bind",
        "connect",
        "getpeername",
        "getsockname",
        "getsockopt",
        "listen",
        "recvfrom",
        "recvmmsg",
        "recvmsg",
        "send",
        "sendmmsg",
        "sendmsg",
        "sendto",
        "setsockopt",
        "shutdown",
        "socket",
        "socketpair",
    ],
    // System V and POSIX IPC (the container's own IPC namespace).
    &[
        "mq_getsetattr",
        "mq_notify",
        "mq_open",
        "mq_timedreceive",
        "mq_timedsend",
        "mq_unlink",
        "msgctl",
        "msgget",
        "msgrcv",
        "msgsnd",
        "semctl",
        "semget",
        "semop",
        "semtimedop",
        "shmat",
        "shmctl",
        "shmdt",
        "shmget",
    ],
    // ioctl on the process's own descriptors.
    &["ioctl"],
];

/// Calls only some architectures have: x86's thread area and the 32-bit ABIs' variants.
const ALLOWED_ARCH: &[&str] = &[
    "arch_prctl",
    "get_thread_area",
    "set_thread_area",
    "set_tls",
    "cacheflush",
    "breakpoint",
    "_llseek",
    "_newselect",
    "chown32",
    "fchown32",
    "lchown32",
    "fcntl64",
    "fstat64",
    "fstatat64",
    "fstatfs64",
    "ftruncate64",
    "truncate64",
    "getegid32",
    "geteuid32",
    "getgid32",
    "getuid32",
    "getgroups32",
    "setgroups32",
    "getresgid32",
    "getresuid32",
    "setfsgid32",
    "setfsuid32",
    "setgid32",
    "setuid32",
    "setregid32",
    "setreuid32",
    "setresgid32",
    "setresuid32",
    "lstat64",
    "stat64",
    "statfs64",
    "mmap2",
    "sendfile64",
    "ugetrlimit",
    "sigreturn",
    "sigprocmask",
    "sigaction",
    "sigpending",
    "sigsuspend",
    "signal",
    "waitpid",
    "socketcall",
    "ipc",
    "recv",
    "clock_gettime64",
    "clock_getres_time64",
    "clock_nanosleep_time64",
    "futex_time64",
    "ppoll_time64",
    "pselect6_time64",
    "recvmmsg_time64",
    "rt_sigtimedwait_time64",
    "sched_rr_get_interval_time64",
    "semtimedop_time64",
    "timer_gettime64",
    "timer_settime64",
    "timerfd_gettime64",
    "timerfd_settime64",
    "utimensat_time64",
    "io_pgetevents_time64",
    "mq_timedreceive_time64",
    "mq_timedsend_time64",
];

/// The seccomp architectures a filter covers on this machine: the native one and the ABIs
/// its processes can also call through.
fn architectures() -> Vec<&'static str> {
    if cfg!(target_arch = "x86_64") {
        vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        Vec::new()
    }
}

/// The RuntimeDefault profile as the spec's `linux.seccomp`.
pub(crate) fn runtime_default() -> Value {
    let mut names: Vec<&str> = ALLOWED.iter().flat_map(|g| g.iter().copied()).collect();
    names.extend_from_slice(ALLOWED_ARCH);
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": architectures(),
        "syscalls": [
            {"names": names, "action": "SCMP_ACT_ALLOW"},
            // A clone with no CLONE_NEW* flag (threads, fork).
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
        ],
    })
}

/// Whether `profile` is a seccomp profile the runtime can take as `linux.seccomp`: an object
/// with a `defaultAction` and rules with `names` and an `action`. Docker-style fields the OCI
/// format lacks are refused with a reason, never dropped.
pub(crate) fn check_profile(profile: &Value) -> Result<(), String> {
    let Some(obj) = profile.as_object() else {
        return Err("must be a JSON object".into());
    };
    let action_ok = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .is_some_and(|a| a.starts_with("SCMP_ACT_"))
    };
    if !action_ok(obj.get("defaultAction")) {
        return Err("defaultAction must be an SCMP_ACT_ action".into());
    }
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "defaultAction"
                | "defaultErrnoRet"
                | "architectures"
                | "flags"
                | "listenerPath"
                | "listenerMetadata"
                | "syscalls"
        ) {
            return Err(format!(
                "field {key:?} is not part of an OCI seccomp profile"
            ));
        }
    }
    if let Some(archs) = obj.get("architectures") {
        let ok = archs.as_array().is_some_and(|a| {
            a.iter()
                .all(|x| x.as_str().is_some_and(|s| s.starts_with("SCMP_ARCH_")))
        });
        if !ok {
            return Err("architectures must be a list of SCMP_ARCH_ names".into());
        }
    }
    if obj.contains_key("listenerPath") {
        return Err("a seccomp notify listener is not supported".into());
    }
    let rules = match obj.get("syscalls") {
        None => return Ok(()),
        Some(Value::Array(rules)) => rules,
        Some(_) => return Err("syscalls must be a list".into()),
    };
    for (i, rule) in rules.iter().enumerate() {
        let Some(rule) = rule.as_object() else {
            return Err(format!("syscalls[{i}] must be an object"));
        };
        let names_ok = rule
            .get("names")
            .and_then(Value::as_array)
            .is_some_and(|n| {
                !n.is_empty() && n.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty()))
            });
        if !names_ok {
            return Err(format!(
                "syscalls[{i}].names must be a non-empty list of names"
            ));
        }
        if !action_ok(rule.get("action")) {
            return Err(format!("syscalls[{i}].action must be an SCMP_ACT_ action"));
        }
        if rule.get("action").and_then(Value::as_str) == Some("SCMP_ACT_NOTIFY") {
            return Err(format!("syscalls[{i}]: SCMP_ACT_NOTIFY is not supported"));
        }
        for key in rule.keys() {
            if !matches!(key.as_str(), "names" | "action" | "errnoRet" | "args") {
                return Err(format!(
                    "syscalls[{i}]: field {key:?} is not part of an OCI seccomp profile"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(profile: &Value) -> Vec<String> {
        profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| r["names"].as_array().unwrap().iter())
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn runtime_default_denies_by_default_with_eperm() {
        let p = runtime_default();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        assert!(check_profile(&p).is_ok());
    }

    #[test]
    fn runtime_default_leaves_out_the_calls_that_reach_past_the_container() {
        let names = allowed(&runtime_default());
        for denied in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "reboot",
            "swapon",
            "acct",
            "settimeofday",
            "clock_settime",
            "open_by_handle_at",
            "userfaultfd",
            "io_uring_setup",
            "fsopen",
            "move_mount",
            "iopl",
            "ioperm",
            "quotactl",
            "clone",
            "clone3",
        ] {
            assert!(!names.iter().any(|n| n == denied), "{denied} is allowed");
        }
        for needed in [
            "read",
            "execve",
            "openat",
            "socket",
            "futex",
            "exit_group",
            "mmap",
        ] {
            assert!(names.iter().any(|n| n == needed), "{needed} is not allowed");
        }
    }

    #[test]
    fn runtime_default_allows_clone_only_without_namespace_flags_and_clone3_says_enosys() {
        let p = runtime_default();
        let rules = p["syscalls"].as_array().unwrap();
        let clone = rules
            .iter()
            .find(|r| r["names"] == json!(["clone"]))
            .unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], 0x7E02_0000_u64);
        assert_eq!(clone["args"][0]["valueTwo"], 0);
        let clone3 = rules
            .iter()
            .find(|r| r["names"] == json!(["clone3"]))
            .unwrap();
        assert_eq!(clone3["errnoRet"], 38);
    }

    #[test]
    fn runtime_default_names_every_call_once() {
        let mut names = allowed(&runtime_default());
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn localhost_profile_checks_refuse_what_the_oci_format_lacks() {
        assert!(check_profile(&json!({"defaultAction": "SCMP_ACT_ALLOW"})).is_ok());
        assert!(check_profile(&json!([])).is_err());
        assert!(check_profile(&json!({"defaultAction": "ALLOW"})).is_err());
        assert!(
            check_profile(&json!({"defaultAction": "SCMP_ACT_ERRNO", "archMap": []}))
                .unwrap_err()
                .contains("archMap")
        );
        assert!(
            check_profile(&json!({"defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                              "includes": {"caps": ["CAP_SYS_ADMIN"]}}]}))
            .unwrap_err()
            .contains("includes")
        );
        assert!(
            check_profile(&json!({"defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}))
            .is_err()
        );
        assert!(
            check_profile(&json!({"defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}))
            .is_err()
        );
    }
}
