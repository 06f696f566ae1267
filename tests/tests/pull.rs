//! Pulling images from a real registry (Debian's `docker-registry`, the distribution registry)
//! into a real containerd through the node agent's runtime: by tag and by digest from a
//! plain-HTTP registry configured in hosts.toml, through a mirror for Docker Hub names, a
//! registry that wants credentials (htpasswd), a missing image, and concurrent pulls that are
//! one. Needs root; under `CI=true` a host that cannot run them fails them.
//!
//! The registry listens on 10.250.0.2 inside a network namespace this test creates, and every
//! pull runs on a thread inside that namespace (a current-thread tokio runtime there), so no
//! packet leaves it. The image pushed is the busybox OCI archive of `cargo xtask images`, pushed
//! with skopeo.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use skiff_agent::runtime::{
    ContainerSpec, Credential, Credentials, Error, PullError, Runtime, hosts::RegistryHosts,
};
use skiff_testbed::{
    containerd::{Containerd, busybox_image_dir, containerd_available},
    netns::Netns,
};

const ADDR: &str = "10.250.0.2";
const PLAIN_PORT: u16 = 5000;
const AUTH_PORT: u16 = 5001;

/// A docker-registry in the test's namespace; killed and its data removed on drop.
struct Registry {
    child: Child,
    dir: PathBuf,
}

impl Registry {
    fn start(ns: &Netns, dir: &Path, port: u16, htpasswd: Option<(&str, &str)>) -> Registry {
        let dir = dir.join(format!("registry-{port}"));
        fs::create_dir_all(&dir).expect("registry dir");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {ADDR}:{port}\n",
            dir.join("data").display()
        );
        if let Some((user, password)) = htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("running htpasswd (apache2-utils)");
            assert!(out.status.success());
            fs::write(dir.join("htpasswd"), &out.stdout).expect("htpasswd file");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        fs::write(dir.join("config.yml"), config).expect("registry config");
        let log = fs::File::create(dir.join("log")).expect("registry log");
        let child = ns
            .command("setpriv")
            .args(["--pdeathsig", "KILL", "--", "docker-registry", "serve"])
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let registry = Registry { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !registry.log().contains("listening on") {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start:\n{}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Requests the agent made for `path` (the registry's access log, by user agent).
    fn agent_requests(&self, path: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(&format!("\"GET {path} ")) && l.contains("skiff-agent/"))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs skopeo in `ns`; its stdout.
fn skopeo(ns: &Netns, args: &[&str]) -> String {
    let out = ns
        .command("skopeo")
        .args(args)
        .output()
        .expect("running skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Pushes the busybox archive to `dest` (`host:port/repo:tag`); its manifest digest.
fn push(ns: &Netns, dest: &str, creds: Option<&str>) -> String {
    let archive = busybox_image_dir()
        .expect("building the busybox image")
        .join("busybox.tar");
    let src = format!("oci-archive:{}:latest", archive.display());
    let dst = format!("docker://{dest}");
    let mut args = vec!["copy", "--dest-tls-verify=false"];
    if let Some(c) = creds {
        args.extend(["--dest-creds", c]);
    }
    args.extend([src.as_str(), dst.as_str()]);
    skopeo(ns, &args);
    let mut args = vec!["inspect", "--tls-verify=false", "--format", "{{.Digest}}"];
    if let Some(c) = creds {
        args.extend(["--creds", c]);
    }
    args.push(&dst);
    skopeo(ns, &args)
}

/// One test's containerd, namespace with registries, and registry configuration.
struct Env {
    ctrd: Containerd,
    ns: Netns,
    hosts_dir: PathBuf,
}

fn setup(test: &str) -> Option<Env> {
    if !containerd_available(test) {
        return None;
    }
    for tool in ["docker-registry", "skopeo", "htpasswd"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            assert!(
                std::env::var("CI").is_err(),
                "{tool} is missing (cargo xtask setup installs it)"
            );
            eprintln!("skipping {test}: {tool} is missing (cargo xtask setup installs it)");
            return None;
        }
    }
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let ns = Netns::create(&format!(
        "skiff-pull-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
    .expect("creating the namespace");
    ns.ip(&["addr", "add", &format!("{ADDR}/32"), "dev", "lo"])
        .expect("the registry's address");
    let ctrd = Containerd::start().expect("starting containerd");
    let hosts_dir = ctrd.dir().join("certs.d");
    fs::create_dir_all(&hosts_dir).expect("hosts dir");
    Some(Env {
        ctrd,
        ns,
        hosts_dir,
    })
}

impl Env {
    fn hosts(&self, host: &str, text: &str) {
        let dir = self.hosts_dir.join(host);
        fs::create_dir_all(&dir).expect("host dir");
        fs::write(dir.join("hosts.toml"), text).expect("hosts.toml");
    }

    /// Runs `f` with a runtime using the hosts.toml written so far, on a current-thread tokio
    /// runtime inside the namespace (every socket it opens is in there).
    fn in_ns<T: Send>(&self, f: impl AsyncFnOnce(Runtime) -> T + Send) -> T {
        let hosts = RegistryHosts::load(&self.hosts_dir).expect("a valid hosts.toml");
        let (socket, namespace) = (self.ctrd.socket(), self.ctrd.namespace());
        self.ns.run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(async move {
                    let rt = Runtime::connect(socket, namespace)
                        .await
                        .expect("connecting to containerd")
                        .with_registry_hosts(hosts);
                    f(rt).await
                })
        })
    }
}

fn plain_http(env: &Env, port: u16) {
    env.hosts(
        &format!("{ADDR}:{port}"),
        &format!("server = \"http://{ADDR}:{port}\"\n"),
    );
}

#[test]
fn pulls_by_tag_and_by_digest_from_a_plain_http_registry_and_runs_the_image() {
    let Some(env) =
        setup("pulls_by_tag_and_by_digest_from_a_plain_http_registry_and_runs_the_image")
    else {
        return;
    };
    let registry = Registry::start(&env.ns, env.ctrd.dir(), PLAIN_PORT, None);
    let digest = push(&env.ns, &format!("{ADDR}:{PLAIN_PORT}/app:v1"), None);
    plain_http(&env, PLAIN_PORT);
    let logs = env.ctrd.dir().join("logs");
    let netns = env.ns.path().to_owned();
    let cgroup_parent = env.ctrd.cgroup_parent().to_owned();
    env.in_ns(async move |rt| {
        let image = rt
            .pull(&format!("{ADDR}:{PLAIN_PORT}/app:v1"), &Credentials::none())
            .await
            .expect("pulled by tag");
        assert_eq!(image.name, format!("{ADDR}:{PLAIN_PORT}/app:v1"));
        assert!(image.id.starts_with("sha256:"));
        let blobs = rt.blobs_fetched();
        assert!(blobs >= 1, "the layer was fetched");
        // The image is what the lookup finds, and a container runs from it.
        let found = rt
            .image(&format!("{ADDR}:{PLAIN_PORT}/app:v1"))
            .await
            .expect("lookup");
        assert_eq!(found.map(|i| i.chain_id), Some(image.chain_id.clone()));
        let spec = ContainerSpec {
            id: "pulled".into(),
            image: image.clone(),
            labels: BTreeMap::new(),
            argv: vec!["sh".into(), "-c".into(), "echo pulled-ok".into()],
            env: image.env.clone(),
            working_dir: String::new(),
            netns,
            hostname: "pulled".into(),
            log_path: logs.join("pulled/0.log"),
            memory_limit: None,
            cpu_limit_millis: None,
            cpu_request_millis: None,
            cgroup_parent,
            mounts: Vec::new(),
            security: Default::default(),
        };
        rt.create(&spec).await.expect("create");
        rt.start("pulled").await.expect("start");
        let exit = tokio::time::timeout(Duration::from_secs(30), rt.wait("pulled"))
            .await
            .expect("exits")
            .expect("wait");
        assert_eq!(exit.code, 0);
        let log = fs::read_to_string(logs.join("pulled/0.log")).expect("log");
        assert!(log.contains("pulled-ok"), "{log}");
        rt.remove("pulled").await.expect("remove");
        // Pulled again: resolved, nothing fetched (the record already points at that digest).
        rt.pull(&format!("{ADDR}:{PLAIN_PORT}/app:v1"), &Credentials::none())
            .await
            .expect("pulled again");
        assert_eq!(rt.blobs_fetched(), blobs);
        // By digest: a record of its own; the layer is in the content store already.
        let by_digest = rt
            .pull(
                &format!("{ADDR}:{PLAIN_PORT}/app@{digest}"),
                &Credentials::none(),
            )
            .await
            .expect("pulled by digest");
        assert_eq!(by_digest.name, format!("{ADDR}:{PLAIN_PORT}/app@{digest}"));
        assert_eq!(by_digest.id, image.id);
        assert_eq!(
            rt.blobs_fetched(),
            blobs,
            "layers present are not fetched again"
        );
        // A digest the registry does not have.
        let wrong = format!("sha256:{}", "0".repeat(64));
        let e = rt
            .pull(
                &format!("{ADDR}:{PLAIN_PORT}/app@{wrong}"),
                &Credentials::none(),
            )
            .await
            .expect_err("no such digest");
        assert!(
            matches!(
                e,
                Error::Pull {
                    source: PullError::NotFound { .. },
                    ..
                }
            ),
            "{e}"
        );
        // The image GC's view: the two records, one image id, a size; the filesystem.
        let images = rt.list_images().await.expect("images");
        assert_eq!(
            images.iter().filter(|i| i.id == image.id).count(),
            2,
            "{images:?}"
        );
        assert!(images.iter().all(|i| i.size > 0));
        let usage = rt.image_fs_usage().await.expect("usage");
        assert!(usage.capacity > 0 && usage.available <= usage.capacity);
        rt.remove_image(&format!("{ADDR}:{PLAIN_PORT}/app@{digest}"))
            .await
            .expect("removed");
        assert!(
            rt.image(&format!("{ADDR}:{PLAIN_PORT}/app@{digest}"))
                .await
                .expect("lookup")
                .is_none()
        );
    });
    drop(registry);
}

#[test]
fn docker_hub_names_are_pulled_through_the_configured_mirror() {
    let Some(env) = setup("docker_hub_names_are_pulled_through_the_configured_mirror") else {
        return;
    };
    let registry = Registry::start(&env.ns, env.ctrd.dir(), PLAIN_PORT, None);
    push(
        &env.ns,
        &format!("{ADDR}:{PLAIN_PORT}/library/busybox:latest"),
        None,
    );
    env.hosts(
        "docker.io",
        &format!(
            "server = \"https://registry-1.docker.io\"\n\n[host.\"http://{ADDR}:{PLAIN_PORT}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    );
    env.in_ns(async |rt| {
        let image = rt
            .pull("busybox", &Credentials::none())
            .await
            .expect("pulled through the mirror");
        assert_eq!(image.name, "docker.io/library/busybox:latest");
    });
    assert_eq!(
        registry.agent_requests("/v2/library/busybox/manifests/latest?ns=docker.io"),
        1,
        "{}",
        registry.log()
    );
}

#[test]
fn a_registry_that_wants_credentials_refuses_without_them_and_serves_with_them() {
    let Some(env) =
        setup("a_registry_that_wants_credentials_refuses_without_them_and_serves_with_them")
    else {
        return;
    };
    let _registry = Registry::start(
        &env.ns,
        env.ctrd.dir(),
        AUTH_PORT,
        Some(("alice", "s3cret")),
    );
    push(
        &env.ns,
        &format!("{ADDR}:{AUTH_PORT}/private/app:v1"),
        Some("alice:s3cret"),
    );
    plain_http(&env, AUTH_PORT);
    env.in_ns(async |rt| {
        let reference = format!("{ADDR}:{AUTH_PORT}/private/app:v1");
        let e = rt
            .pull(&reference, &Credentials::none())
            .await
            .expect_err("no credentials");
        let shown = e.to_string();
        assert!(
            matches!(
                &e,
                Error::Pull {
                    source: PullError::Unauthorized { status: 401, .. },
                    ..
                }
            ),
            "{shown}"
        );
        assert!(shown.contains("UNAUTHORIZED: authentication required"), "{shown}");
        let mut wrong = Credentials::none();
        wrong.add(
            &format!("{ADDR}:{AUTH_PORT}"),
            Credential {
                username: "alice".into(),
                password: "nope".into(),
            },
        );
        let e = rt.pull(&reference, &wrong).await.expect_err("wrong password");
        assert!(
            matches!(e, Error::Pull { source: PullError::Unauthorized { .. }, .. }),
            "{e}"
        );
        let mut right = Credentials::none();
        right
            .add_docker_config_json(
                format!(
                    r#"{{"auths":{{"http://{ADDR}:{AUTH_PORT}":{{"username":"alice","password":"s3cret"}}}}}}"#
                )
                .as_bytes(),
            )
            .expect("a docker config");
        rt.pull(&reference, &right).await.expect("pulled with credentials");
    });
}

#[test]
fn a_missing_image_is_not_found_with_the_registrys_reason() {
    let Some(env) = setup("a_missing_image_is_not_found_with_the_registrys_reason") else {
        return;
    };
    let _registry = Registry::start(&env.ns, env.ctrd.dir(), PLAIN_PORT, None);
    plain_http(&env, PLAIN_PORT);
    env.in_ns(async |rt| {
        let e = rt
            .pull(
                &format!("{ADDR}:{PLAIN_PORT}/nope:v9"),
                &Credentials::none(),
            )
            .await
            .expect_err("not there");
        assert_eq!(
            e.to_string(),
            format!("{ADDR}:{PLAIN_PORT}/nope:v9: not found: MANIFEST_UNKNOWN: manifest unknown")
        );
        // Nothing listens on this port: unreachable, with the connect error.
        plain_http_unreachable(&rt).await;
    });
}

async fn plain_http_unreachable(rt: &Runtime) {
    let e = rt
        .pull(&format!("{ADDR}:5999/app:v1"), &Credentials::none())
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(
            e,
            Error::Pull {
                source: PullError::Unreachable { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn concurrent_pulls_of_one_image_are_one_pull() {
    let Some(env) = setup("concurrent_pulls_of_one_image_are_one_pull") else {
        return;
    };
    let registry = Registry::start(&env.ns, env.ctrd.dir(), PLAIN_PORT, None);
    push(&env.ns, &format!("{ADDR}:{PLAIN_PORT}/app:v1"), None);
    plain_http(&env, PLAIN_PORT);
    env.in_ns(async |rt| {
        let reference = format!("{ADDR}:{PLAIN_PORT}/app:v1");
        let other = rt.clone();
        let none = Credentials::none();
        let (a, b, c) = tokio::join!(
            rt.pull(&reference, &none),
            other.pull("10.250.0.2:5000/app:v1", &none),
            rt.pull(&reference, &none),
        );
        let (a, b, c) = (a.expect("a"), b.expect("b"), c.expect("c"));
        assert_eq!(
            (a.id.as_str(), b.id.as_str()),
            (c.id.as_str(), c.id.as_str())
        );
        assert_eq!(rt.manifests_resolved(), 1);
    });
    assert_eq!(
        registry.agent_requests("/v2/app/manifests/v1"),
        1,
        "{}",
        registry.log()
    );
}

/// The whole path with a real agent: a pod whose image is in a registry that wants
/// credentials, named by a `kubernetes.io/dockerconfigjson` Secret in `imagePullSecrets`. With a
/// wrong password it waits in ErrImagePull / ImagePullBackOff with the registry's reason; once
/// the Secret is fixed, the same pod (not recreated) pulls and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_pulls_with_its_pull_secret_and_starts_once_a_wrong_secret_is_fixed()
-> anyhow::Result<()> {
    use anyhow::Context as _;
    use skiff_api::kinds::{Pod, Secret};
    use skiff_testbed::{
        nodes::{Nodes, NodesOptions},
        registry::{self, RegistryOptions},
        wait::eventually,
    };
    let test = "a_pod_pulls_with_its_pull_secret_and_starts_once_a_wrong_secret_is_fixed";
    if registry::missing_tools(true).is_some() && std::env::var("CI").is_err() {
        eprintln!("skipping {test}: docker-registry, skopeo or htpasswd is missing");
        return Ok(());
    }
    /// Removes the registry configuration directory however the test ends.
    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let hosts = Dir(std::env::temp_dir().join(format!("skiff-pull-hosts-{}", std::process::id())));
    registry::write_hosts_dir(&hosts.0, &registry::registry_host())?;
    let opts = NodesOptions {
        nodes: 1,
        controllers: false,
        // The test bed's agents have short restart back-offs, which the pull back-off follows.
        agent_flags: vec![
            "--registry-config-dir".into(),
            hosts.0.display().to_string(),
        ],
        tag: 'p',
    };
    let Some(c) = Nodes::start(test, &opts).await? else {
        return Ok(());
    };
    let fabric = format!("p{}-fab", std::process::id() % 1_000_000);
    let creds = registry::Credentials {
        user: "alice".into(),
        password: "s3cret".into(),
    };
    let reg = registry::Registry::start(
        &fabric,
        RegistryOptions {
            auth: Some(creds.clone()),
        },
    )?;
    let archive = busybox_image_dir()?.join("busybox.tar");
    reg.push(
        &format!("oci-archive:{}:latest", archive.display()),
        "private/app:v1",
    )?;
    let secret = |password: &str| -> anyhow::Result<Secret> {
        let json = format!(
            r#"{{"auths":{{"{}":{{"username":"alice","password":"{password}"}}}}}}"#,
            registry::registry_host()
        );
        Ok(serde_json::from_value(serde_json::json!({
            "metadata": {"name": "regcred", "namespace": "default"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": json},
        }))?)
    };
    c.admin.create(&secret("wrong")?).await?;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "private", "namespace": "default"},
        "spec": {
            "nodeName": "node-0",
            "terminationGracePeriodSeconds": 1,
            "imagePullSecrets": [{"name": "regcred"}],
            "containers": [{
                "name": "app",
                "image": format!("{}/private/app:v1", registry::registry_host()),
                "command": ["sleep", "3600"],
            }],
        }
    }))?;
    c.admin.create(&pod).await?;
    let waiting = |reason: &'static str| {
        let admin = c.admin.clone();
        async move {
            eventually(Duration::from_secs(30), reason, || async {
                let p: Pod = admin.get("default", "private").await?;
                Ok(p.status
                    .container_statuses
                    .first()
                    .and_then(|s| s.state.waiting.clone())
                    .filter(|w| w.reason == reason))
            })
            .await
        }
    };
    let w = waiting("ErrImagePull")
        .await
        .with_context(|| c.agents[0].log())?;
    assert!(
        w.message.starts_with(&format!(
            "Failed to pull image \"{}/private/app:v1\": failed to authorize at {}",
            registry::registry_host(),
            registry::registry_host()
        )) && w.message.contains("UNAUTHORIZED"),
        "{}",
        w.message
    );
    let w = waiting("ImagePullBackOff")
        .await
        .with_context(|| c.agents[0].log())?;
    assert_eq!(
        w.message,
        format!(
            "Back-off pulling image \"{}/private/app:v1\"",
            registry::registry_host()
        )
    );
    // Fix the Secret: the same pod starts.
    let mut fixed: Secret = c.admin.get("default", "regcred").await?;
    let right = secret("s3cret")?;
    fixed.data = Default::default();
    fixed.string_data = right.string_data;
    c.admin.update(&fixed).await?;
    let uid = c.admin.get::<Pod>("default", "private").await?.metadata.uid;
    eventually(Duration::from_secs(60), "the pod runs", || async {
        let p: Pod = c.admin.get("default", "private").await?;
        Ok(p.status
            .container_statuses
            .first()
            .and_then(|s| s.state.running.clone()))
    })
    .await
    .with_context(|| format!("{}\n{}", c.agents[0].log(), reg.log()))?;
    let p: Pod = c.admin.get("default", "private").await?;
    assert_eq!(p.metadata.uid, uid, "the same pod, not recreated");
    drop(reg);
    drop(c);
    Ok(())
}

/// The largest blob the registry stores (the image's layer), by path of its data file.
fn largest_blob(dir: &Path) -> Option<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            let meta = e.metadata().ok()?;
            if meta.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "data")
                && best.as_ref().is_none_or(|(size, _)| meta.len() > *size)
            {
                best = Some((meta.len(), p));
            }
        }
    }
    best.map(|(_, p)| p)
}

#[test]
fn a_layer_that_does_not_match_its_digest_fails_the_pull_and_is_not_stored() {
    let Some(env) =
        setup("a_layer_that_does_not_match_its_digest_fails_the_pull_and_is_not_stored")
    else {
        return;
    };
    let registry = Registry::start(&env.ns, env.ctrd.dir(), PLAIN_PORT, None);
    push(&env.ns, &format!("{ADDR}:{PLAIN_PORT}/app:v1"), None);
    plain_http(&env, PLAIN_PORT);
    // The registry serves what is on its disk: flip bytes of the layer, size unchanged.
    let layer = largest_blob(&registry.dir.join("data/docker/registry/v2/blobs")).expect("a blob");
    let mut bytes = fs::read(&layer).expect("the layer");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b = !*b;
    }
    fs::write(&layer, &bytes).expect("corrupting the layer");
    env.in_ns(async |rt| {
        let e = rt
            .pull(&format!("{ADDR}:{PLAIN_PORT}/app:v1"), &Credentials::none())
            .await
            .expect_err("a corrupt layer");
        assert!(
            matches!(
                e,
                Error::Pull {
                    source: PullError::DigestMismatch { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            rt.image(&format!("{ADDR}:{PLAIN_PORT}/app:v1"))
                .await
                .expect("lookup")
                .is_none(),
            "no image record for a failed pull"
        );
    });
}
