//! Pods in their own user namespace (`hostUsers: false`) against a real containerd and runc:
//! the container's root is the first id of the pod's range, its root filesystem (a remapped
//! copy of the image's snapshot) is owned by that root, /proc, /sys and /dev work although the
//! pod's network namespace belongs to the host's user namespace, what it writes into a volume
//! is owned on the host by the mapped id, two pods get disjoint ranges, and a range is free
//! again once its pod is gone. Needs root; under `CI=true` a host that cannot run them fails
//! them.

use std::{
    collections::{BTreeMap, HashSet},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use skiff_agent::runtime::{BindMount, ContainerSpec, Security, UserNamespace, userns::Claims};
use skiff_tests::runtime_env::RuntimeEnv;

/// The part of a container's output the test reads, once it has `END` (the shim copies
/// output asynchronously), or after 10 s.
async fn output(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains("END") || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `key=value` lines of a container's output, runs of blanks in values made one space.
fn values(log: &str) -> BTreeMap<&str, String> {
    log.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect()
}

/// The snapshots of the env's containerd namespace, by name.
fn snapshots(env: &RuntimeEnv) -> Vec<String> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(env.ctrd.socket())
        .args(["--namespace", env.ctrd.namespace(), "snapshots", "ls"])
        .output()
        .expect("running ctr");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

const SCRIPT: &str = r#"
echo UID_MAP=$(cat /proc/self/uid_map)
echo GID_MAP=$(cat /proc/self/gid_map)
echo ID=$(id -u):$(id -g)
echo ROOT_OWNER=$(stat -c %u:%g /)
echo BUSYBOX_OWNER=$(stat -c %u:%g /bin/busybox)
mkdir -p /root-owned && touch /root-owned/f && echo ROOTFS=rw
echo SYS=$(cat /sys/kernel/mm/transparent_hugepage/enabled >/dev/null 2>&1 && ls /sys/class/net | grep -c lo)
echo SYS_RO=$(touch /sys/kernel/x 2>/dev/null && echo no || echo yes)
echo DEV=$(head -c 4 /dev/zero | wc -c)$(ls /dev/null)
echo PROC=$(head -c 2 /proc/1/cmdline)
echo hello > /data/by-root
mkdir /data/dir
chown 1000:2000 /data/dir
echo DATA=$(stat -c %u:%g /data/by-root)
echo END
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_in_its_own_user_namespace_owns_its_root_filesystem_and_its_volume_files() {
    let Some(env) = RuntimeEnv::start(
        "a_pod_in_its_own_user_namespace_owns_its_root_filesystem",
        "uns",
    )
    .await
    else {
        return;
    };
    // Ranges as the agent claims them, in this test's own claims directory.
    let claims_dir = env.ctrd.dir().join("userns");
    let claims = Claims::new(&claims_dir);
    let agent = &env.logs;
    let first = claims.claim(agent, "pod-a").expect("a range for pod a");
    let second = claims.claim(agent, "pod-b").expect("a range for pod b");
    assert!(
        first.host_id >= UserNamespace::SIZE,
        "above the host's own ids"
    );
    assert_eq!(first.size, UserNamespace::SIZE);
    assert!(
        first.host_id + first.size <= second.host_id
            || second.host_id + second.size <= first.host_id,
        "disjoint: {first:?} {second:?}"
    );

    let data = env.ctrd.dir().join("data-a");
    std::fs::create_dir_all(&data).unwrap();
    // An emptyDir's mode, as the agent makes it.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let spec = |id: &str, ns: UserNamespace, data: &Path| ContainerSpec {
        id: id.into(),
        image: env.image.clone(),
        labels: BTreeMap::new(),
        argv: vec!["sh".into(), "-c".into(), SCRIPT.into()],
        env: env.image.env.clone(),
        working_dir: String::new(),
        netns: env.ns.path().to_path_buf(),
        hostname: id.into(),
        log_path: env.logs.join(format!("{id}/0.log")),
        memory_limit: None,
        cpu_limit_millis: None,
        cpu_request_millis: None,
        cgroup_parent: env.ctrd.cgroup_parent().to_owned(),
        mounts: vec![BindMount {
            source: data.to_path_buf(),
            destination: "/data".into(),
            read_only: false,
        }],
        security: Security {
            user_namespace: Some(ns),
            ..Security::default()
        },
    };
    let a = spec("userns-a", first, &data);
    env.rt.create(&a).await.expect("create");
    env.rt.start(&a.id).await.expect("start");
    let exit = tokio::time::timeout(Duration::from_secs(30), env.rt.wait(&a.id))
        .await
        .expect("the container exits within 30 s")
        .expect("wait");
    let log = output(&a.log_path).await;
    assert_eq!(exit.code, 0, "{log}");
    let v = values(&log);
    let map = format!("0 {} {}", first.host_id, first.size);
    assert_eq!(v.get("UID_MAP"), Some(&map), "{log}");
    assert_eq!(v.get("GID_MAP"), Some(&map), "{log}");
    assert_eq!(v.get("ID"), Some(&"0:0".to_owned()), "{log}");
    // The image's files belong to the namespace's root, not to an unmapped host root.
    assert_eq!(v.get("ROOT_OWNER"), Some(&"0:0".to_owned()), "{log}");
    assert_eq!(v.get("BUSYBOX_OWNER"), Some(&"0:0".to_owned()), "{log}");
    assert_eq!(v.get("ROOTFS"), Some(&"rw".to_owned()), "{log}");
    assert_eq!(v.get("SYS"), Some(&"1".to_owned()), "{log}");
    assert_eq!(v.get("SYS_RO"), Some(&"yes".to_owned()), "{log}");
    assert_eq!(v.get("DEV"), Some(&"4/dev/null".to_owned()), "{log}");
    assert_eq!(v.get("PROC"), Some(&"sh".to_owned()), "{log}");
    assert_eq!(v.get("DATA"), Some(&"0:0".to_owned()), "{log}");
    // On the host, the volume's files belong to the mapped ids.
    let by_root = std::fs::metadata(data.join("by-root")).unwrap();
    assert_eq!(
        (by_root.uid(), by_root.gid()),
        (first.host_id, first.host_id)
    );
    let dir = std::fs::metadata(data.join("dir")).unwrap();
    assert_eq!(
        (dir.uid(), dir.gid()),
        (first.host_id + 1000, first.host_id + 2000)
    );
    // The image's own snapshot is untouched: its files stay the host root's.
    let remapped: Vec<String> = snapshots(&env)
        .into_iter()
        .filter(|s| s.contains("-userns-"))
        .collect();
    assert_eq!(remapped.len(), 1, "one remapped parent: {remapped:?}");

    // A second pod, in its own range, sees its own mapping.
    let data_b = env.ctrd.dir().join("data-b");
    std::fs::create_dir_all(&data_b).unwrap();
    std::fs::set_permissions(&data_b, std::fs::Permissions::from_mode(0o777)).unwrap();
    let b = spec("userns-b", second, &data_b);
    env.rt.create(&b).await.expect("create b");
    env.rt.start(&b.id).await.expect("start b");
    let exit = tokio::time::timeout(Duration::from_secs(30), env.rt.wait(&b.id))
        .await
        .expect("b exits within 30 s")
        .expect("wait b");
    let log = output(&b.log_path).await;
    assert_eq!(exit.code, 0, "{log}");
    let map_b = format!("0 {} {}", second.host_id, second.size);
    assert_eq!(values(&log).get("UID_MAP"), Some(&map_b), "{log}");
    assert_eq!(
        std::fs::metadata(data_b.join("by-root")).unwrap().uid(),
        second.host_id
    );

    // Gone with their containers: the remapped parents (removed with the last container on
    // each) and, released, the ranges.
    let remapped_of = || -> Vec<String> {
        snapshots(&env)
            .into_iter()
            .filter(|s| s.contains("-userns-"))
            .collect()
    };
    // A second container of pod a starts from the same remapped snapshot, which outlives the
    // removal of the first.
    let a2 = spec("userns-a2", first, &data);
    env.rt.create(&a2).await.expect("create a2");
    assert_eq!(remapped_of().len(), 2, "{:?}", remapped_of());
    env.rt.remove(&a.id).await.expect("remove a");
    assert_eq!(
        remapped_of().len(),
        2,
        "still used by a2: {:?}",
        remapped_of()
    );
    env.rt.remove(&a2.id).await.expect("remove a2");
    env.rt.remove(&b.id).await.expect("remove b");
    let left: Vec<String> = snapshots(&env)
        .into_iter()
        .filter(|s| s.contains("-userns-"))
        .collect();
    assert!(left.is_empty(), "remapped snapshots left: {left:?}");
    claims.release(agent, "pod-a").unwrap();
    claims
        .retain(agent, &HashSet::new())
        .expect("dropping pod b's claim in the sweep");
    assert_eq!(claims.claim(agent, "pod-c").unwrap(), first);
}
