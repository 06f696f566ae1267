//! The node agent's container runtime (`skiff_agent::runtime`) against a real containerd, runc
//! and the busybox OCI image from `cargo xtask images`: import, image lookup, containers that
//! exit, run, exec, stop, get OOM-killed, and survive a reconnect. Needs root; under `CI=true`
//! a host that cannot run them fails them.
//!
//! (These live in the tests crate rather than in the agent's: skiff-tests depends on
//! skiff-agent, so the agent cannot take skiff-tests as a dev-dependency without a cycle.)

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use skiff_agent::runtime::{ContainerSpec, Exit, Runtime, TaskState};
use skiff_testbed::{
    containerd::{Containerd, busybox_image_dir, containerd_available},
    netns::Netns,
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
    RuntimeEnv::start(test, "rt").await.map(Env)
}

impl Env {
    fn spec(&self, id: &str, argv: &[&str]) -> ContainerSpec {
        let mut env = self.image.env.clone();
        env.push("GREETING=hi".into());
        ContainerSpec {
            id: id.into(),
            image: self.image.clone(),
            labels: BTreeMap::from([
                ("skiff.io/pod".to_owned(), "web-1".to_owned()),
                ("skiff.io/container".to_owned(), id.to_owned()),
            ]),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env,
            working_dir: String::new(),
            netns: self.ns.path().to_path_buf(),
            hostname: "web-1".into(),
            log_path: self.logs.join(format!("{id}/0.log")),
            memory_limit: None,
            cpu_limit_millis: None,
            cpu_request_millis: None,
            cgroup_parent: self.ctrd.cgroup_parent().to_owned(),
            mounts: Vec::new(),
            security: Default::default(),
        }
    }

    /// `ctr` against this containerd and namespace; its stdout.
    fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.ctrd.socket())
            .args(["--namespace", self.ctrd.namespace()])
            .args(args)
            .output()
            .expect("running ctr");
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn run_to_exit(&self, spec: &ContainerSpec) -> Exit {
        self.rt.create(spec).await.expect("create");
        self.rt.start(&spec.id).await.expect("start");
        tokio::time::timeout(Duration::from_secs(30), self.rt.wait(&spec.id))
            .await
            .expect("the container exits within 30 s")
            .expect("wait")
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Reads a file until it holds all of `want` (the shim copies output asynchronously).
async fn wait_for_log(path: &Path, want: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if want.iter().all(|w| text.contains(w)) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_is_idempotent_and_references_normalize() {
    let Some(env) = setup("import_is_idempotent_and_references_normalize").await else {
        return;
    };
    assert!(
        env.rt
            .version()
            .await
            .unwrap()
            .starts_with("containerd://1."),
        "{}",
        env.rt.version().await.unwrap()
    );
    let content = env.ctr(&["content", "ls", "-q"]);
    let snapshots = env.ctr(&["snapshots", "ls"]);
    let images = env.ctr(&["images", "ls", "-q"]);
    assert_eq!(content.lines().count(), 3, "{content}");
    // One image under both of the archive's names.
    let mut listed: Vec<&str> = images.lines().collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [skiff_image::VERSIONED_NAME, skiff_image::IMAGE_NAME],
        "{images}"
    );

    let dir = busybox_image_dir().unwrap();
    let started = Instant::now();
    let names = env.rt.import_dir(&dir).await.unwrap();
    let again = started.elapsed();
    let mut names = names;
    names.sort_unstable();
    assert_eq!(
        names,
        [
            skiff_image::VERSIONED_NAME.to_owned(),
            skiff_image::IMAGE_NAME.to_owned()
        ]
    );
    assert_eq!(env.ctr(&["content", "ls", "-q"]), content);
    assert_eq!(env.ctr(&["snapshots", "ls"]), snapshots);
    // Control: without the image, the same collection takes everything.
    env.ctr(&[
        "images",
        "rm",
        "--sync",
        skiff_image::IMAGE_NAME,
        skiff_image::VERSIONED_NAME,
    ]);
    assert_eq!(env.ctr(&["content", "ls", "-q"]), "");
    assert!(!env.ctr(&["snapshots", "ls"]).contains(&env.image.chain_id));
    assert!(env.rt.image("busybox").await.unwrap().is_none());
    // And a new import brings it back.
    env.rt.import_dir(&dir).await.unwrap();
    assert!(env.rt.image("busybox").await.unwrap().is_some());
    assert_eq!(env.ctr(&["content", "ls", "-q"]), content);
    assert_eq!(env.ctr(&["images", "ls", "-q"]), images);
    eprintln!("second import (a no-op) took {again:?}");

    for r in [
        "busybox",
        "busybox:latest",
        "library/busybox",
        "docker.io/library/busybox:latest",
    ] {
        let image = env.rt.image(r).await.unwrap().expect(r);
        assert_eq!(image.name, "docker.io/library/busybox:latest");
        assert_eq!(image.id, env.image.id);
        assert_eq!(image.chain_id, env.image.chain_id);
    }
    assert!(env.image.id.starts_with("sha256:"));
    assert_eq!(env.image.cmd, strings(&["sh"]));
    assert!(env.image.entrypoint.is_empty());
    assert_eq!(
        env.image.env,
        strings(&["PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
    );
    // One layer: the snapshot is named by the chain ID, which is the layer's diff ID.
    assert!(snapshots.contains(&env.image.chain_id), "{snapshots}");
    assert!(env.rt.image("nginx").await.unwrap().is_none());
    assert!(env.rt.image("Not A Name").await.is_err());

    // The unpacked snapshot and content survive containerd's garbage collector (labels).
    let gc = Command::new("ctr")
        .arg("--address")
        .arg(env.ctrd.socket())
        .args(["--namespace", env.ctrd.namespace(), "leases", "ls", "-q"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&gc.stdout).trim().is_empty(),
        "the import's lease is gone"
    );
    // A synchronous garbage collection (deleting an image with --sync runs one).
    env.ctr(&[
        "images",
        "tag",
        "docker.io/library/busybox:latest",
        "docker.io/library/tmp:1",
    ]);
    env.ctr(&["images", "rm", "--sync", "docker.io/library/tmp:1"]);
    assert_eq!(env.ctr(&["content", "ls", "-q"]), content);
    assert_eq!(env.ctr(&["snapshots", "ls"]), snapshots);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_and_both_streams_in_the_log() {
    let Some(env) = setup("exit_code_and_both_streams_in_the_log").await else {
        return;
    };
    let mut spec = env.spec(
        "exits",
        &[
            "sh",
            "-c",
            "echo hello $GREETING; echo err >&2; i=0; while [ $i -lt 200 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done; exit 3",
        ],
    );
    spec.memory_limit = Some(64 << 20);
    let started = Instant::now();
    let exit = env.run_to_exit(&spec).await;
    eprintln!("create, start and exit took {:?}", started.elapsed());
    assert_eq!(exit.code, 3);
    assert!(!exit.oom_killed);
    let age = std::time::SystemTime::now()
        .duration_since(exit.exited_at)
        .unwrap();
    assert!(age < Duration::from_secs(10), "{age:?}");
    let log = wait_for_log(
        &spec.log_path,
        &["hello hi\n", "err\n", "out199\n", "err199\n"],
    )
    .await;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 402, "{log:?}");
    assert!(
        lines.contains(&"hello hi") && lines.contains(&"err"),
        "{log:?}"
    );
    for i in 0..200 {
        assert!(lines.contains(&format!("out{i}").as_str()), "{log:?}");
        assert!(lines.contains(&format!("err{i}").as_str()), "{log:?}");
    }
    // Only the log is in its directory (the stderr alias is gone).
    let files: Vec<_> = std::fs::read_dir(spec.log_path.parent().unwrap())
        .unwrap()
        .collect();
    assert_eq!(files.len(), 1);

    let list = env.rt.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].state, TaskState::Stopped);
    assert_eq!(list[0].exit.as_ref().map(|e| e.code), Some(3));
    // Waiting again on the exited task gives the same exit.
    assert_eq!(env.rt.wait("exits").await.unwrap().code, 3);

    let started = Instant::now();
    env.rt.remove("exits").await.unwrap();
    eprintln!("remove took {:?}", started.elapsed());
    assert!(env.rt.list().await.unwrap().is_empty());
    // The log stays (it belongs to the caller).
    assert!(spec.log_path.is_file());

    // A create that fails at the task leaves nothing behind.
    let mut bad = env.spec("bad", &["/no/such/binary"]);
    bad.netns = PathBuf::from("/run/netns/skiff-rt-does-not-exist");
    assert!(env.rt.create(&bad).await.is_err());
    assert!(env.rt.list().await.unwrap().is_empty());
    assert!(!env.ctr(&["snapshots", "ls"]).contains("bad"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_container_exec_stop_remove() {
    let Some(env) = setup("running_container_exec_stop_remove").await else {
        return;
    };
    let mut spec = env.spec("sleeper", &["sleep", "1000"]);
    spec.memory_limit = Some(32 << 20);
    spec.cpu_limit_millis = Some(500);
    spec.cpu_request_millis = Some(250);
    let started = Instant::now();
    env.rt.create(&spec).await.unwrap();
    let created = env.rt.list().await.unwrap();
    assert_eq!(created[0].state, TaskState::Created);
    let pid = env.rt.start("sleeper").await.unwrap();
    eprintln!("create and start took {:?}", started.elapsed());
    assert!(pid > 0);
    assert!(
        env.rt.create(&spec).await.is_err(),
        "a second create of the same id fails"
    );

    let list = env.rt.list().await.unwrap();
    assert_eq!(list.len(), 1);
    let info = &list[0];
    assert_eq!(info.id, "sleeper");
    assert_eq!(info.state, TaskState::Running);
    assert_eq!(info.pid, pid);
    assert_eq!(
        info.labels.get("skiff.io/pod").map(String::as_str),
        Some("web-1")
    );
    assert!(info.exit.is_none());
    let since = std::time::SystemTime::now()
        .duration_since(info.started_at.expect("started_at"))
        .unwrap_or_default();
    assert!(since < Duration::from_secs(5), "{since:?}");

    // The container is in the pod's network namespace, with its limits in its cgroup.
    let container_net = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    let pod_net = std::fs::metadata(env.ns.path()).unwrap().ino();
    assert_eq!(container_net, pod_net);
    let cg = format!("{}/sleeper", env.ctrd.cgroup_parent());
    let read = |path: String| std::fs::read_to_string(path).map(|s| s.trim().to_owned());
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        assert_eq!(
            read(format!("/sys/fs/cgroup/memory{cg}/memory.limit_in_bytes")).unwrap(),
            (32u64 << 20).to_string()
        );
        assert_eq!(
            read(format!("/sys/fs/cgroup/cpu{cg}/cpu.cfs_quota_us")).unwrap(),
            "50000"
        );
        assert_eq!(
            read(format!("/sys/fs/cgroup/cpu{cg}/cpu.shares")).unwrap(),
            "256"
        );
    } else {
        assert_eq!(
            read(format!("/sys/fs/cgroup{cg}/memory.max")).unwrap(),
            (32u64 << 20).to_string()
        );
        assert_eq!(
            read(format!("/sys/fs/cgroup{cg}/cpu.max")).unwrap(),
            "50000 100000"
        );
    }

    let t = Duration::from_secs(10);
    let started = Instant::now();
    assert_eq!(
        env.rt
            .exec("sleeper", &strings(&["true"]), t)
            .await
            .unwrap(),
        0
    );
    eprintln!("exec true took {:?}", started.elapsed());
    assert_eq!(
        env.rt
            .exec("sleeper", &strings(&["false"]), t)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        env.rt
            .exec(
                "sleeper",
                &strings(&[
                    "sh",
                    "-c",
                    "[ \"$(hostname)\" = web-1 ] && [ \"$GREETING\" = hi ]"
                ]),
                t
            )
            .await
            .unwrap(),
        0
    );
    assert!(
        env.rt
            .exec("sleeper", &strings(&["/no/such/binary"]), t)
            .await
            .is_err()
    );
    let started = Instant::now();
    let timed_out = env
        .rt
        .exec(
            "sleeper",
            &strings(&["sleep", "100"]),
            Duration::from_millis(300),
        )
        .await;
    assert!(timed_out.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Exec processes are deleted after they ran: the container has only its init process.
    let ps = env.ctr(&["tasks", "ps", "sleeper"]);
    assert_eq!(ps.lines().count(), 2, "{ps}");

    // busybox sleep as PID 1 ignores SIGTERM: stop escalates to SIGKILL after the grace.
    let waiter = {
        let rt = env.rt.clone();
        tokio::spawn(async move { rt.wait("sleeper").await })
    };
    let started = Instant::now();
    env.rt
        .stop("sleeper", Duration::from_secs(1))
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("stop with a 1 s grace took {took:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let exit = waiter.await.unwrap().unwrap();
    assert_eq!(exit.code, 128 + 9);
    assert!(!exit.oom_killed);
    assert_eq!(env.rt.wait("sleeper").await.unwrap().code, 137);
    let list = env.rt.list().await.unwrap();
    assert_eq!(list[0].state, TaskState::Stopped);
    assert_eq!(list[0].exit.as_ref().map(|e| e.code), Some(137));
    // Stopping a stopped container is fine.
    env.rt
        .stop("sleeper", Duration::from_secs(1))
        .await
        .unwrap();

    env.rt.remove("sleeper").await.unwrap();
    assert!(env.rt.list().await.unwrap().is_empty());
    let snapshots = env.ctr(&["snapshots", "ls"]);
    assert!(!snapshots.contains("sleeper"), "{snapshots}");
    assert!(
        env.rt.remove("sleeper").await.is_ok(),
        "remove is idempotent"
    );
    assert!(env.rt.stop("sleeper", Duration::from_secs(1)).await.is_ok());
    assert!(env.rt.wait("sleeper").await.is_err());
    assert!(
        env.ctrd.shim_pids().is_empty(),
        "the shim went with the task"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_oom_kill_is_reported() {
    let Some(env) = setup("memory_limit_oom_kill_is_reported").await else {
        return;
    };
    let mut spec = env.spec(
        "hog",
        // dd's 64 MiB buffer is filled by read(2), so all of it becomes resident.
        &["sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1"],
    );
    spec.memory_limit = Some(16 << 20);
    let exit = env.run_to_exit(&spec).await;
    assert!(exit.oom_killed, "{exit:?}");
    assert_ne!(exit.code, 0, "{exit:?}");
    let list = env.rt.list().await.unwrap();
    assert!(list[0].exit.as_ref().is_some_and(|e| e.oom_killed));
    env.rt.remove("hog").await.unwrap();

    // The same limit, not exceeded.
    let mut spec = env.spec(
        "small",
        &["sh", "-c", "dd if=/dev/zero of=/dev/null bs=1M count=1"],
    );
    spec.memory_limit = Some(16 << 20);
    let exit = env.run_to_exit(&spec).await;
    assert_eq!(exit.code, 0);
    assert!(!exit.oom_killed);
    env.rt.remove("small").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnected_runtime_finds_and_waits_for_containers() {
    let Some(env) = setup("a_reconnected_runtime_finds_and_waits_for_containers").await else {
        return;
    };
    env.rt
        .create(&env.spec("long", &["sleep", "1000"]))
        .await
        .unwrap();
    let pid = env.rt.start("long").await.unwrap();
    env.rt
        .create(&env.spec("short", &["sh", "-c", "exit 7"]))
        .await
        .unwrap();
    env.rt.start("short").await.unwrap();
    let exited = env.rt.wait("short").await.unwrap();
    assert_eq!(exited.code, 7);

    // A new agent process: a new connection, nothing remembered.
    let rt = Runtime::connect(env.ctrd.socket(), env.ctrd.namespace())
        .await
        .unwrap();
    // A created, never started container can be removed.
    rt.create(&env.spec("never", &["true"])).await.unwrap();
    let never = rt.list().await.unwrap();
    assert_eq!(
        never.iter().find(|c| c.id == "never").map(|c| c.state),
        Some(TaskState::Created)
    );
    rt.remove("never").await.unwrap();
    let list = rt.list().await.unwrap();
    let ids: Vec<&str> = list.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["long", "short"]);
    assert_eq!(list[0].state, TaskState::Running);
    assert_eq!(list[0].pid, pid);
    assert_eq!(list[1].state, TaskState::Stopped);
    assert_eq!(list[1].exit.as_ref(), Some(&exited));
    assert_eq!(rt.wait("short").await.unwrap(), exited);

    let waiter = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.wait("long").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    assert_eq!(
        rt.exec("long", &strings(&["true"]), Duration::from_secs(10))
            .await
            .unwrap(),
        0
    );
    rt.stop("long", Duration::ZERO).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().code, 137);
    for id in ["long", "short"] {
        rt.remove(id).await.unwrap();
    }
    assert!(rt.list().await.unwrap().is_empty());
    // The images are unaffected by container removal.
    assert!(rt.image("busybox").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_cleans_up_running_containers() {
    let Some(env) = setup("the_harness_cleans_up_running_containers").await else {
        return;
    };
    for id in ["left-1", "left-2"] {
        env.rt
            .create(&env.spec(id, &["sleep", "1000"]))
            .await
            .unwrap();
        env.rt.start(id).await.unwrap();
    }
    let dir = env.ctrd.dir().to_path_buf();
    let namespace = env.ctrd.namespace().to_owned();
    let socket = env.ctrd.socket().to_string_lossy().into_owned();
    let shims = env.ctrd.shim_pids();
    assert!(!shims.is_empty());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts.contains(&*dir.to_string_lossy()),
        "the rootfs is mounted"
    );
    drop(env);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&*dir.to_string_lossy()), "{mounts}");
    assert!(!dir.exists());
    assert!(!Path::new("/run/containerd/runc").join(&namespace).exists());
    for pid in shims {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&socket),
            "shim {pid} is still running"
        );
    }
}

/// Runs a command, panicking with its stderr if it fails; its stdout.
fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_file(path: &Path) -> String {
    let out = sh(Command::new("sha256sum").arg(path));
    format!("sha256:{}", &out[..64])
}

/// Writes `bytes` as a blob of an OCI layout; its digest and size.
fn add_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    let digest = sha256_file(&tmp);
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&digest[7..])).unwrap();
    (digest, bytes.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_layer_image_unpacks_onto_its_parent() {
    let Some(env) = setup("a_two_layer_image_unpacks_onto_its_parent").await else {
        return;
    };
    // busybox plus a layer with /etc/extra.txt, packed as "busybox-extra:1".
    let work = env.ctrd.dir().join("extra");
    let layout = work.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    let busybox = busybox_image_dir().unwrap().join("busybox.tar");
    sh(Command::new("tar")
        .arg("-xf")
        .arg(&busybox)
        .arg("-C")
        .arg(&layout));
    let read_json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let index = read_json(layout.join("index.json"));
    let blob = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    let mut manifest = read_json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let mut config = read_json(blob(manifest["config"]["digest"].as_str().unwrap()));

    let root = work.join("rootfs");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/extra.txt"), "from the second layer\n").unwrap();
    let layer_tar = work.join("layer.tar");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&layer_tar)
        .arg("etc"));
    let diff_id = sha256_file(&layer_tar);
    sh(Command::new("gzip").arg("-n").arg(&layer_tar));
    let gz = std::fs::read(work.join("layer.tar.gz")).unwrap();
    let (layer_digest, layer_size) = add_blob(&layout, &gz);
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(diff_id.clone().into());
    config["config"]["Cmd"] = serde_json::json!(["cat", "/etc/extra.txt"]);
    let (config_digest, config_size) = add_blob(&layout, &serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = config_digest.clone().into();
    manifest["config"]["size"] = config_size.into();
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer_size,
        }));
    let (manifest_digest, manifest_size) =
        add_blob(&layout, &serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "1"},
        }],
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let images = work.join("images");
    std::fs::create_dir_all(&images).unwrap();
    // Named by the archive's file name and the ref.name tag.
    sh(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(images.join("busybox-extra.tar"))
        .args(["oci-layout", "index.json", "blobs"]));

    let names = env.rt.import_dir(&images).await.unwrap();
    assert_eq!(names, ["docker.io/library/busybox-extra:1"]);
    let image = env.rt.image("busybox-extra:1").await.unwrap().unwrap();
    assert_eq!(image.id, config_digest);
    assert_eq!(image.cmd, strings(&["cat", "/etc/extra.txt"]));
    // The top snapshot is named by the chain ID, whose parent is the busybox layer's.
    assert_ne!(image.chain_id, diff_id);
    let snapshots = env.ctr(&["snapshots", "ls"]);
    let line = snapshots
        .lines()
        .find(|l| l.starts_with(&image.chain_id))
        .unwrap_or_else(|| panic!("{snapshots}"));
    assert!(line.contains(&env.image.chain_id), "{line}");

    let mut spec = env.spec("extra", &["sh", "-c", "cat /etc/extra.txt && ls /bin/sh"]);
    spec.image = image;
    let exit = env.run_to_exit(&spec).await;
    assert_eq!(exit.code, 0);
    let log = wait_for_log(&spec.log_path, &["from the second layer\n", "/bin/sh\n"]).await;
    assert_eq!(log, "from the second layer\n/bin/sh\n");
    env.rt.remove("extra").await.unwrap();
    assert_eq!(
        env.rt.import_dir(&images).await.unwrap(),
        ["docker.io/library/busybox-extra:1"]
    );
}

/// Agents of several nodes share one containerd in the local cluster and import the same archive
/// when they start: imports racing in one namespace and across namespaces all succeed, and each
/// namespace can run a container from the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_imports_into_one_containerd_all_succeed() {
    if !containerd_available("concurrent_imports_into_one_containerd_all_succeed") {
        return;
    }
    let ctrd = Containerd::start().expect("starting containerd");
    let ns = Netns::create(&format!("skiff-rt-{}-imports", std::process::id()))
        .expect("creating the pod network namespace");
    let dir = busybox_image_dir().expect("building the busybox image");
    let namespaces = [
        format!("{}-a", ctrd.namespace()),
        format!("{}-a", ctrd.namespace()),
        format!("{}-a", ctrd.namespace()),
        format!("{}-b", ctrd.namespace()),
        format!("{}-c", ctrd.namespace()),
    ];
    let mut runtimes = Vec::new();
    for n in &namespaces {
        runtimes.push(
            Runtime::connect(ctrd.socket(), n)
                .await
                .expect("connecting to containerd"),
        );
    }
    let imports: Vec<_> = runtimes
        .iter()
        .map(|rt| {
            let (rt, dir) = (rt.clone(), dir.clone());
            tokio::spawn(async move { rt.import_dir(&dir).await })
        })
        .collect();
    for (n, import) in namespaces.iter().zip(imports) {
        let names = import
            .await
            .expect("the import task")
            .unwrap_or_else(|e| panic!("import into {n}: {e:#}"));
        assert!(
            names.contains(&"docker.io/library/busybox:latest".to_owned()),
            "{n}: {names:?}"
        );
    }
    let logs = ctrd.dir().join("logs");
    for (i, rt) in runtimes.iter().enumerate().skip(2) {
        let image = rt
            .image("busybox")
            .await
            .expect("image lookup")
            .expect("busybox is present");
        let id = format!("imported-{i}");
        let spec = ContainerSpec {
            id: id.clone(),
            env: image.env.clone(),
            image,
            labels: BTreeMap::new(),
            argv: strings(&["sh", "-c", "test -x /bin/busybox && echo ran"]),
            working_dir: String::new(),
            netns: ns.path().to_path_buf(),
            hostname: String::new(),
            log_path: logs.join(format!("{id}/0.log")),
            memory_limit: None,
            cpu_limit_millis: None,
            cpu_request_millis: None,
            cgroup_parent: ctrd.cgroup_parent().to_owned(),
            mounts: Vec::new(),
            security: Default::default(),
        };
        rt.create(&spec).await.expect("create");
        rt.start(&id).await.expect("start");
        let exit = tokio::time::timeout(Duration::from_secs(30), rt.wait(&id))
            .await
            .expect("the container exits within 30 s")
            .expect("wait");
        assert_eq!(exit.code, 0, "in {}", rt.namespace());
        assert_eq!(wait_for_log(&spec.log_path, &["ran\n"]).await, "ran\n");
        rt.remove(&id).await.expect("remove");
    }
}
