//! The cluster's registry and the server images: Debian's `docker-registry` in its own
//! namespace on a test fabric, images pushed with `skopeo` from inside that namespace, its API
//! asked from inside namespaces (its own, and a client's on the fabric, as a node reaches it),
//! and the nginx and redis images pulled from it by containerd (`ctr`, fetching inside a fabric
//! namespace) and run in a pod-like network namespace, answering there. Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use skiff_testbed::{
    containerd::{Containerd, busybox_image_dir, containerd_available},
    fabric::Fabric,
    host::privileged_with_tools,
    netns::Netns,
    registry::{Credentials, REGISTRY_IP, REGISTRY_PORT, Registry, RegistryOptions, server_images},
};

const TOOLS: [&str; 5] = ["docker-registry", "skopeo", "htpasswd", "nsenter", "ip"];

/// A fabric prefix of at most 8 characters, unique to this test process.
fn prefix() -> String {
    format!("rg{}", std::process::id() % 100_000)
}

/// One HTTP/1.0 request from inside `ns` to `addr:port`; the whole answer.
fn http_in(ns: &Netns, addr: Ipv4Addr, port: u16, path: &str) -> Result<String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    ns.run(move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .with_context(|| format!("GET http://{addr}:{port}{path} in {}", ns.name()))
}

#[test]
fn registry_serves_pushed_images_to_its_namespace_and_the_fabric_and_asks_for_credentials() {
    if !privileged_with_tools("registry_serves_pushed_images", &TOOLS) {
        return;
    }
    let p = prefix();
    let fabric = Fabric::new(&p).expect("fabric");
    let creds = Credentials {
        user: "skiff".into(),
        password: "s3cret pass".into(),
    };
    let reg = Registry::start(
        &format!("{p}-fab"),
        RegistryOptions {
            auth: Some(creds.clone()),
        },
    )
    .expect("starting the registry");
    let busybox = busybox_image_dir()
        .expect("busybox image")
        .join("busybox.tar");
    reg.push(
        &format!("oci-archive:{}:latest", busybox.display()),
        "library/busybox:latest",
    )
    .expect("pushing busybox");
    reg.push(
        &format!("oci-archive:{}:latest", busybox.display()),
        "library/busybox:1.35",
    )
    .expect("pushing busybox again under another tag");
    assert_eq!(reg.tags("library/busybox").unwrap(), vec!["1.35", "latest"]);

    // Without credentials: 401 with a basic challenge, from inside the registry's namespace.
    let (status, _) =
        skiff_testbed::registry::get(reg.netns().path(), "/v2/library/busybox/tags/list", None)
            .unwrap();
    assert_eq!(status, 401);
    // A wrong password is refused too.
    let wrong = Credentials {
        user: "skiff".into(),
        password: "nope".into(),
    };
    let (status, _) = skiff_testbed::registry::get(
        reg.netns().path(),
        "/v2/library/busybox/tags/list",
        Some(&wrong),
    )
    .unwrap();
    assert_eq!(status, 401);

    // A namespace on the fabric (where the nodes are) reaches it at 10.250.0.2:5000.
    let client = fabric
        .outside_client(Ipv4Addr::new(10, 250, 0, 50))
        .expect("client namespace");
    let answer = http_in(&client, REGISTRY_IP, REGISTRY_PORT, "/v2/").unwrap();
    assert!(answer.starts_with("HTTP/1.0 401"), "{answer}");
    assert!(
        answer.contains("Www-Authenticate: Basic realm=\"skiff-registry\""),
        "{answer}"
    );
    // Pushing to a name the registry cannot hold is refused before skopeo runs.
    let err = reg
        .push(&format!("oci-archive:{}", busybox.display()), "Bad/Name:1")
        .unwrap_err();
    assert!(err.to_string().contains("not a repository name"), "{err:#}");
    drop(client);
    drop(reg);
    drop(fabric);
}

/// `ctr` against the test's containerd, run inside the namespace `ns` (so that a pull's HTTP
/// requests start there).
fn ctr(ctrd: &Containerd, ns: &Netns, args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg("--")
        .arg("ctr")
        .arg("--address")
        .arg(ctrd.socket())
        .args(["--namespace", ctrd.namespace()])
        .args(args)
        .output()
        .context("running ctr")?;
    if !out.status.success() {
        bail!(
            "ctr {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` for up to 20 s.
fn eventually(what: &str, mut check: impl FnMut() -> Result<bool>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    loop {
        match check() {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => last = Some(format!("{e:#}")),
        }
        assert!(Instant::now() < deadline, "{what} within 20 s: {last:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nginx_and_redis_images_pull_from_the_registry_and_serve_in_a_pod_namespace() {
    if !privileged_with_tools("nginx_and_redis_images", &TOOLS)
        || !containerd_available("nginx_and_redis_images")
    {
        return;
    }
    let images = server_images().expect("building the server images");
    let p = prefix();
    let fabric = Fabric::new(&p).expect("fabric");
    let reg = Registry::start(&format!("{p}-fab"), RegistryOptions::default())
        .expect("starting the registry");
    for built in &images {
        for tag in &built.tags {
            reg.push(
                &format!("oci-archive:{}:{tag}", built.archive.display()),
                &format!("library/{}:{tag}", built.server.name()),
            )
            .expect("pushing");
        }
        let mut want = built.tags.clone();
        want.sort();
        assert_eq!(
            reg.tags(&format!("library/{}", built.server.name()))
                .unwrap(),
            want
        );
    }
    // Pulled as a node pulls: from a namespace on the fabric, over plain HTTP.
    let node = fabric.node(0).expect("node namespace");
    let ctrd = Containerd::start().expect("containerd");
    let pod = Netns::create(&format!("{p}-pod")).expect("pod namespace");
    for (i, built) in images.iter().enumerate() {
        let name = built.server.name();
        let reference = format!("{}/library/{name}:latest", reg.host());
        ctr(
            &ctrd,
            &node.ns,
            &["images", "pull", "--plain-http", &reference],
        )
        .expect("pulling from the registry");
        let id = format!("{name}-{i}");
        let cgroup = format!("{}/{id}", ctrd.cgroup_parent());
        ctr(
            &ctrd,
            &node.ns,
            &[
                "run",
                "-d",
                "--cgroup",
                &cgroup,
                "--with-ns",
                &format!("network:{}", pod.path().display()),
                &reference,
                &id,
            ],
        )
        .expect("running the image's own command");
    }
    // nginx answers on port 80 inside the pod's namespace with its default page.
    eventually("nginx answering in the pod namespace", || {
        let answer = http_in(&pod, Ipv4Addr::LOCALHOST, 80, "/")?;
        Ok(answer.starts_with("HTTP/1.1 200") && answer.contains("Welcome to nginx!"))
    });
    // redis answers PING on 6379 there, without protected mode refusing a non-loopback peer
    // (asked over lo here; the entrypoint turns protected mode off).
    eventually("redis answering PING in the pod namespace", || {
        let pong = pod.run(|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(
                &(Ipv4Addr::LOCALHOST, 6379).into(),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })?;
        Ok(pong.starts_with("+PONG"))
    });
    // redis runs as the user redis (the entrypoint drops root), in /data.
    let tasks = ctr(&ctrd, &node.ns, &["tasks", "ls"]).unwrap();
    let redis_pid: u32 = tasks
        .lines()
        .find(|l| l.starts_with("redis-"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no redis task in {tasks}"));
    let status = std::fs::read_to_string(format!("/proc/{redis_pid}/status")).unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap();
    assert_eq!(uid, "999", "{status}");
    let cwd = std::fs::read_link(format!("/proc/{redis_pid}/cwd")).unwrap();
    assert!(cwd.ends_with(Path::new("data")), "{}", cwd.display());
    drop(ctrd);
    drop(pod);
    drop(node);
    drop(reg);
    drop(fabric);
}
