//! Containers' securityContext and volume mounts against a real containerd and runc: the user
//! and groups a process runs as, a read-only root filesystem, a dropped capability, the
//! RuntimeDefault seccomp profile against Unconfined, a user namespace, and a configMap-style
//! volume (written by the agent's atomic writer) bind-mounted read-only. Needs root; under
//! `CI=true` a host that cannot run them fails them.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use skiff_agent::{
    node::volumes::{File, HostMounter, Plugin, Volumes, pod::PodVolume},
    paths::PodIds,
    runtime::{BindMount, ContainerSpec, Seccomp, Security, UserNamespace},
};
use skiff_tests::runtime_env::RuntimeEnv;

/// The shared environment, with this file's own helpers.
struct Env(RuntimeEnv);

impl std::ops::Deref for Env {
    type Target = RuntimeEnv;
    fn deref(&self) -> &RuntimeEnv {
        &self.0
    }
}

async fn setup(test: &str) -> Option<Env> {
    RuntimeEnv::start(test, "sec").await.map(Env)
}

impl Env {
    fn spec(&self, id: &str, script: &str, security: Security) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            image: self.image.clone(),
            labels: BTreeMap::new(),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: self.image.env.clone(),
            working_dir: String::new(),
            netns: self.ns.path().to_path_buf(),
            hostname: "sec".into(),
            log_path: self.logs.join(format!("{id}/0.log")),
            memory_limit: None,
            cpu_limit_millis: None,
            cpu_request_millis: None,
            cgroup_parent: self.ctrd.cgroup_parent().to_owned(),
            mounts: Vec::new(),
            security,
        }
    }

    /// Runs the container to its exit; its exit code and output.
    async fn run(&self, spec: &ContainerSpec) -> (i32, String) {
        self.rt.create(spec).await.expect("create");
        self.rt.start(&spec.id).await.expect("start");
        let exit = tokio::time::timeout(Duration::from_secs(30), self.rt.wait(&spec.id))
            .await
            .expect("the container exits within 30 s")
            .expect("wait");
        let log = read_log(&spec.log_path, "END").await;
        self.rt.remove(&spec.id).await.expect("remove");
        (exit.code, log)
    }
}

/// The log once it holds `want` (the shim copies output asynchronously), or after 5 s.
async fn read_log(path: &Path, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(want) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_user_and_groups_are_the_process_ids() {
    let Some(env) = setup("run_as_user_and_groups_are_the_process_ids").await else {
        return;
    };
    let security = Security {
        run_as_user: Some(1000),
        run_as_group: Some(2000),
        supplemental_groups: vec![3000, 4000],
        ..Security::default()
    };
    let (code, log) = env
        .run(&env.spec("ids", "id -u; id -g; id -G; echo END", security))
        .await;
    assert_eq!(code, 0, "{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "1000", "{log}");
    assert_eq!(lines[1], "2000", "{log}");
    let groups: Vec<&str> = lines[2].split_whitespace().collect();
    assert!(
        groups.contains(&"3000") && groups.contains(&"4000"),
        "{log}"
    );
    // Control: nothing asked is root.
    let (_, log) = env
        .run(&env.spec("root", "id -u; echo END", Security::default()))
        .await;
    assert!(log.starts_with("0\n"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_root_filesystem_refuses_writes() {
    let Some(env) = setup("a_read_only_root_filesystem_refuses_writes").await else {
        return;
    };
    let script = "if touch /probe 2>/dev/null; then echo wrote; else echo refused; fi; echo END";
    let ro = Security {
        read_only_root_filesystem: true,
        ..Security::default()
    };
    let (_, log) = env.run(&env.spec("ro", script, ro)).await;
    assert!(log.contains("refused"), "{log}");
    let (_, log) = env.run(&env.spec("rw", script, Security::default())).await;
    assert!(log.contains("wrote"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_net_raw_takes_raw_sockets_away() {
    let Some(env) = setup("dropping_net_raw_takes_raw_sockets_away").await else {
        return;
    };
    // Loopback of the test's own namespace: ping needs a raw socket.
    let script = "ping -c 1 -W 2 127.0.0.1 >/dev/null 2>&1; echo rc=$?; echo END";
    let dropped = Security {
        capabilities_drop: vec!["NET_RAW".into()],
        ..Security::default()
    };
    let (_, log) = env.run(&env.spec("noraw", script, dropped)).await;
    assert!(log.contains("rc=1") || !log.contains("rc=0"), "{log}");
    let (_, log) = env.run(&env.spec("raw", script, Security::default())).await;
    assert!(log.contains("rc=0"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_default_seccomp_blocks_what_unconfined_allows() {
    let Some(env) = setup("runtime_default_seccomp_blocks_what_unconfined_allows").await else {
        return;
    };
    // A new user namespace needs no capability, only the syscall.
    let script = "unshare -U true 2>&1; echo rc=$?; echo END";
    let confined = Security {
        seccomp: Some(Seccomp::RuntimeDefault),
        ..Security::default()
    };
    let (_, log) = env.run(&env.spec("confined", script, confined)).await;
    assert!(!log.contains("rc=0"), "{log}");
    assert!(log.contains("not permitted"), "{log}");
    let unconfined = Security {
        seccomp: Some(Seccomp::Unconfined),
        ..Security::default()
    };
    let (_, log) = env.run(&env.spec("unconfined", script, unconfined)).await;
    assert!(log.contains("rc=0"), "{log}");
    // The node's default applies to a container that asks for nothing.
    let default = Security {
        seccomp_default: true,
        ..Security::default()
    };
    let (_, log) = env.run(&env.spec("nodedefault", script, default)).await;
    assert!(!log.contains("rc=0"), "{log}");
    // And ordinary work goes on under the profile: files, pipes, processes, sockets.
    let confined = Security {
        seccomp: Some(Seccomp::RuntimeDefault),
        ..Security::default()
    };
    let (code, log) = env
        .run(&env.spec(
            "ordinary",
            "echo hi > /tmp/f && cat /tmp/f | wc -c && (sleep 0; true) && echo END",
            confined,
        ))
        .await;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains('3'), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespace_maps_root_to_the_pods_range() {
    let Some(env) = setup("a_user_namespace_maps_root_to_the_pods_range").await else {
        return;
    };
    let security = Security {
        user_namespace: UserNamespace::nth(7),
        ..Security::default()
    };
    let (code, log) = env
        .run(&env.spec(
            "userns",
            "id -u; cat /proc/self/uid_map; echo END",
            security,
        ))
        .await;
    assert_eq!(code, 0, "{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "0", "{log}");
    let map: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(map, ["0", "524288", "65536"], "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_map_volume_is_visible_read_only_and_removed_with_the_pod() {
    let Some(env) =
        setup("a_config_map_volume_is_visible_read_only_and_removed_with_the_pod").await
    else {
        return;
    };
    let root = env.ctrd.dir().join("pods");
    let volumes = Volumes::new(root.clone(), Arc::new(HostMounter));
    let pod = PodIds::new("default", "web", "6f1c9c1e-2a51-4c6e-9a55-3f3c9b1d2e4f").unwrap();
    let files = [
        File {
            path: "app.conf".into(),
            data: b"mode=fast\n".to_vec(),
            mode: 0o644,
        },
        File {
            path: "nested/inner.txt".into(),
            data: b"inner\n".to_vec(),
            mode: 0o400,
        },
    ];
    let (cfg, _) = volumes
        .files(&pod, Plugin::ConfigMap, "cfg", &files, false, None)
        .expect("writing the volume");
    let (secret, _) = volumes
        .files(&pod, Plugin::Secret, "creds", &files[..1], true, None)
        .expect("writing the secret volume on tmpfs");
    let scratch = volumes
        .empty_dir(&pod, "scratch", "Memory", Some(8 << 20), None)
        .expect("a memory emptyDir");
    let single = volumes
        .subpath(
            &pod,
            "cfg",
            &PodVolume {
                path: cfg.clone(),
                read_only: true,
            },
            "app.conf",
            "app",
            3,
        )
        .expect("binding a subPath");
    let mut spec = env.spec(
        "cfg",
        "cat /etc/app/app.conf /etc/app/nested/inner.txt /etc/creds/app.conf; \
         if touch /etc/app/new 2>/dev/null; then echo wrote-ro; else echo refused-ro; fi; \
         if touch /scratch/new; then echo wrote-rw; fi; \
         df -k /scratch | tail -1; echo END",
        Security::default(),
    );
    spec.mounts = vec![
        BindMount {
            source: cfg.clone(),
            destination: "/etc/app".into(),
            read_only: true,
        },
        BindMount {
            source: secret,
            destination: "/etc/creds".into(),
            read_only: true,
        },
        BindMount {
            source: scratch.clone(),
            destination: "/scratch".into(),
            read_only: false,
        },
        BindMount {
            source: single,
            destination: "/etc/single.conf".into(),
            read_only: true,
        },
    ];
    let (code, log) = env.run(&spec).await;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("mode=fast\ninner\nmode=fast\n"), "{log}");
    assert!(log.contains("refused-ro"), "{log}");
    assert!(log.contains("wrote-rw"), "{log}");
    // The tmpfs has the size asked: 8 MiB = 8192 1K-blocks.
    assert!(log.contains(" 8192 "), "{log}");
    assert!(scratch.join("new").exists());

    // A running container sees an update in the volume, not in its subPath (as in
    // Kubernetes); a removed key disappears.
    let mut live = env.spec(
        "cfg2",
        "cat /etc/single.conf; echo READY; while [ ! -e /scratch/go ]; do sleep 0.05; done; \
         cat /etc/single.conf /etc/app/app.conf; ls /etc/app/nested 2>&1 | head -1; echo END",
        Security::default(),
    );
    live.mounts = spec.mounts.clone();
    env.rt.create(&live).await.expect("create");
    env.rt.start(&live.id).await.expect("start");
    let log = read_log(&live.log_path, "READY").await;
    assert!(log.starts_with("mode=fast\nREADY"), "{log}");
    let updated = [File {
        path: "app.conf".into(),
        data: b"mode=slow\n".to_vec(),
        mode: 0o644,
    }];
    let (_, changed) = volumes
        .files(&pod, Plugin::ConfigMap, "cfg", &updated, false, None)
        .expect("updating the volume");
    assert!(changed);
    std::fs::write(scratch.join("go"), "").unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(30), env.rt.wait(&live.id))
        .await
        .expect("exits")
        .expect("wait");
    let log = read_log(&live.log_path, "END").await;
    env.rt.remove(&live.id).await.expect("remove");
    assert_eq!(exit.code, 0, "{log}");
    assert!(
        log.contains("READY\nmode=fast\nmode=slow\n"),
        "the subPath keeps the old file, the volume has the new: {log}"
    );
    assert!(log.contains("No such file"), "a removed key is gone: {log}");
    // A container started again gets the subPath bound anew, from the current file.
    let single = volumes
        .subpath(
            &pod,
            "cfg",
            &PodVolume {
                path: cfg.clone(),
                read_only: true,
            },
            "app.conf",
            "app",
            3,
        )
        .expect("binding the subPath again");
    let mut restarted = env.spec(
        "cfg3",
        "cat /etc/single.conf; echo END",
        Security::default(),
    );
    restarted.mounts = vec![BindMount {
        source: single,
        destination: "/etc/single.conf".into(),
        read_only: true,
    }];
    let (code, log) = env.run(&restarted).await;
    assert_eq!(code, 0, "{log}");
    assert!(log.starts_with("mode=slow\n"), "{log}");

    volumes.teardown(&pod).expect("teardown");
    let pod_dir = root.join(pod.uid());
    assert!(!pod_dir.exists());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&pod_dir.to_string_lossy().into_owned()),
        "{mountinfo}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_localhost_profile_from_the_nodes_directory_is_enforced() {
    let Some(env) = setup("a_localhost_profile_from_the_nodes_directory_is_enforced").await else {
        return;
    };
    let dir = env.ctrd.dir().join("seccomp");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let script = "mkdir /tmp/d 2>&1; echo rc=$?; echo END";
    let profile = Seccomp::localhost(&dir, "no-mkdir.json").expect("loading the profile");
    let (_, log) = env
        .run(&env.spec(
            "local",
            script,
            Security {
                seccomp: Some(profile),
                ..Security::default()
            },
        ))
        .await;
    assert!(!log.contains("rc=0"), "{log}");
    let (_, log) = env
        .run(&env.spec("plain", script, Security::default()))
        .await;
    assert!(log.contains("rc=0"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_allowed_privileged_container_may_mount() {
    let Some(env) = setup("only_an_allowed_privileged_container_may_mount").await else {
        return;
    };
    let script = "mkdir -p /m && mount -t tmpfs t /m 2>&1; echo rc=$?; echo END";
    let privileged = Security {
        privileged: true,
        allow_privileged: true,
        seccomp_default: true,
        ..Security::default()
    };
    privileged.check("default/p", "app").unwrap();
    let (_, log) = env.run(&env.spec("priv", script, privileged)).await;
    assert!(log.contains("rc=0"), "{log}");
    let (_, log) = env
        .run(&env.spec("unpriv", script, Security::default()))
        .await;
    assert!(!log.contains("rc=0"), "{log}");
    let refused = Security {
        privileged: true,
        ..Security::default()
    };
    assert!(refused.check("default/p", "app").is_err());
}
