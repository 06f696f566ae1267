//! Pod networking through netlink, against the real kernel (root). Each test creates its own
//! node network namespace (`ip netns add`), enters it on the test thread, and keeps pod
//! namespaces in a directory of its own; a guard removes all of it, even when the test fails.
//! Traffic (ping) only ever starts inside pod namespaces the test created.
//!
//! Run with `CI=true cargo nextest run -p skiff-agent --test podnet` (one process per test:
//! the test thread changes its network namespace). Without privileges the tests skip, unless
//! `CI=true`, where they fail.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use skiff_agent::{
    netns,
    podnet::{self, PodNet, PodNetConfig, PodNetwork},
};
use skiff_api::net::Ipv4Cidr;
use skiff_testbed::{host, netns::Netns, unique_prefix};

/// Whether the test can run (root, iproute2, nsenter, ping); panics under `CI=true` when it
/// cannot.
fn privileged(test: &str) -> bool {
    host::privileged_with_tools(test, &["ip", "nsenter", "ping"])
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {args:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS` in the node namespace (the test thread's, which child processes inherit).
fn ip(args: &str) -> String {
    ok("ip", &args.split_whitespace().collect::<Vec<_>>())
}

/// `ip ARGS` inside the pod namespace at `netns`.
fn pod_ip(netns: &Path, args: &str) -> String {
    let net = format!("--net={}", netns.display());
    let mut all = vec![net.as_str(), "ip"];
    all.extend(args.split_whitespace());
    ok("nsenter", &all)
}

/// Whether one ping from inside the pod namespace at `from` to `to` is answered.
/// Whether `to` answers a ping from the namespace `from`, within three tries of a second each
/// (the first packet of a fresh veth pair waits on neighbour resolution, which a loaded machine
/// can stretch past one second).
fn ping(from: &Path, to: Ipv4Addr) -> bool {
    let net = format!("--net={}", from.display());
    let to = to.to_string();
    (0..3).any(|_| {
        run("nsenter", &[&net, "ping", "-c1", "-W1", &to])
            .status
            .success()
    })
}

fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).status.success()
}

fn mounted_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(dir.as_ref()))
        .map(str::to_owned)
        .collect()
}

/// A node network namespace of the test's own (the test bed's guard, `lo` up), entered on the
/// test thread, and a directory for pod namespaces. Dropping it removes both.
struct Node {
    netns_dir: PathBuf,
    /// Dropped after `drop` removed the pod namespaces: deleting the node namespace deletes its
    /// links, and the pods' ends of the veths.
    ns: Netns,
}

impl Node {
    fn new(test: &str) -> Option<Node> {
        if !privileged(test) {
            return None;
        }
        let name = unique_prefix("podnet");
        let ns = match Netns::create(&name) {
            Ok(ns) => ns,
            Err(e) => {
                let why = format!("cannot create a network namespace: {e:#}");
                host::runnable(test, Some(why));
                return None;
            }
        };
        // The guard exists from here on, so whatever fails next is cleaned up.
        let node = Node {
            netns_dir: PathBuf::from(format!("/run/{name}-pods")),
            ns,
        };
        netns::enter(&node.path()).expect("entering the node namespace");
        Some(node)
    }

    fn path(&self) -> PathBuf {
        self.ns.path().to_path_buf()
    }

    fn podnet(&self, cidr: &str, mtu: Option<u32>) -> PodNet {
        PodNet::new(PodNetConfig {
            netns_dir: self.netns_dir.clone(),
            cidr: cidr.parse().expect("cidr"),
            mtu,
        })
        .expect("PodNet::new")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(&self.netns_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                while rustix::mount::unmount(&path, rustix::mount::UnmountFlags::DETACH).is_ok() {}
                let _ = fs::remove_file(&path);
            }
        }
        let _ = fs::remove_dir(&self.netns_dir);
    }
}

fn addr(s: &str) -> Ipv4Addr {
    s.parse().expect("address")
}

/// Checks the pod side and the node side of `net` as `ip` shows them.
fn check_network(net: &PodNetwork, gateway: &str, mtu: Option<u32>) {
    let ip_s = net.ip.to_string();
    let eth0 = pod_ip(&net.netns, "-4 -o addr show dev eth0");
    assert!(eth0.contains(&format!("inet {ip_s}/32")), "eth0: {eth0}");
    assert_eq!(eth0.lines().count(), 1, "eth0 has one IPv4 address: {eth0}");
    let link = pod_ip(&net.netns, "link show dev eth0");
    assert!(link.contains(",UP"), "eth0 up: {link}");
    if let Some(mtu) = mtu {
        assert!(link.contains(&format!("mtu {mtu} ")), "eth0 mtu: {link}");
    }
    let lo = pod_ip(&net.netns, "link show dev lo");
    assert!(lo.contains(",UP"), "lo up: {lo}");
    let routes = pod_ip(&net.netns, "-4 route show");
    assert!(
        routes.contains(&format!("default via {gateway} dev eth0")),
        "pod routes: {routes}"
    );
    assert!(
        routes.contains(&format!("{gateway} dev eth0 ")) && routes.contains("scope link"),
        "pod routes: {routes}"
    );

    let host = ip(&format!("-4 -o addr show dev {}", net.host_veth));
    assert!(
        host.contains(&format!("inet {gateway}/32")),
        "host veth: {host}"
    );
    let host_link = ip(&format!("link show dev {}", net.host_veth));
    assert!(host_link.contains(",UP"), "host veth up: {host_link}");
    if let Some(mtu) = mtu {
        assert!(
            host_link.contains(&format!("mtu {mtu} ")),
            "host veth mtu: {host_link}"
        );
    }
    let route = ip(&format!("-4 route show {ip_s}/32"));
    assert!(
        route.contains(&format!("dev {} ", net.host_veth)) && route.contains("scope link"),
        "node route to {ip_s}: {route}"
    );
}

/// What `ip` shows of the node and of the pods, to check that a setup changed nothing.
/// Links, addresses and routes of the node and the pods, less what the kernel's IPv6
/// link-local autoconfiguration changes by itself meanwhile (duplicate address detection
/// clears `tentative` and then adds the address's local route): not the setup's doing.
fn snapshot(nets: &[&PodNetwork]) -> String {
    let mut s = ip("-d link show") + &ip("addr show") + &ip("route show table all");
    for net in nets {
        s += &pod_ip(&net.netns, "-d link show");
        s += &pod_ip(&net.netns, "addr show");
        s += &pod_ip(&net.netns, "route show table all");
    }
    s.lines()
        .filter(|l| !l.starts_with("local fe80::"))
        .map(|l| l.replace(" tentative", ""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn host_veth_names_are_short_stable_and_distinct() {
    let a = PodNet::host_veth_name("0b9e6a52-5d2c-4f0e-9a57-6f1f5c0e2d11");
    assert_eq!(
        a,
        PodNet::host_veth_name("0b9e6a52-5d2c-4f0e-9a57-6f1f5c0e2d11")
    );
    assert_eq!(a.len(), 14);
    assert!(a.starts_with("sk"));
    assert!(
        a[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_ne!(
        a,
        PodNet::host_veth_name("0b9e6a52-5d2c-4f0e-9a57-6f1f5c0e2d12")
    );
}

#[test]
fn two_pods_talk_through_the_node() {
    let Some(node) = Node::new("two_pods_talk_through_the_node") else {
        return;
    };
    let pn = node.podnet("10.244.1.0/24", Some(1400));
    let gw = addr("10.244.1.1");
    assert_eq!(pn.gateway(), gw);
    assert_eq!(
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .expect("ip_forward")
            .trim(),
        "1",
        "forwarding in the node namespace"
    );

    let a = pn.setup("pod-a", addr("10.244.1.2")).expect("setup a");
    let b = pn.setup("pod-b", addr("10.244.1.3")).expect("setup b");
    assert_eq!(
        a,
        PodNetwork {
            netns: node.netns_dir.join("pod-a"),
            host_veth: PodNet::host_veth_name("pod-a"),
            ip: addr("10.244.1.2"),
        }
    );
    assert_eq!(b.netns, node.netns_dir.join("pod-b"));
    check_network(&a, "10.244.1.1", Some(1400));
    check_network(&b, "10.244.1.1", Some(1400));
    // The pods' links are where they belong: nothing of theirs in the node namespace.
    assert!(!link_exists("eth0"));

    assert!(ping(&a.netns, b.ip), "pod a -> pod b");
    assert!(ping(&b.netns, a.ip), "pod b -> pod a");
    assert!(ping(&a.netns, gw), "pod a -> gateway");
    assert!(ping(&b.netns, gw), "pod b -> gateway");
    // The negative control: an address no pod has is not answered.
    assert!(
        !ping(&a.netns, addr("10.244.1.99")),
        "nobody has 10.244.1.99"
    );

    // Setup again: same answer, nothing changed.
    let before = snapshot(&[&a, &b]);
    assert_eq!(pn.setup("pod-a", a.ip).expect("setup a again"), a);
    assert_eq!(pn.setup("pod-b", b.ip).expect("setup b again"), b);
    assert_eq!(
        snapshot(&[&a, &b]),
        before,
        "a repeated setup changed something"
    );

    assert_eq!(pn.inspect("pod-a").expect("inspect"), Some(a.clone()));
    assert_eq!(pn.inspect("pod-b").expect("inspect"), Some(b.clone()));
    assert_eq!(pn.inspect("pod-c").expect("inspect"), None);
    assert_eq!(
        pn.list().expect("list"),
        vec!["pod-a".to_owned(), "pod-b".to_owned()]
    );
}

#[test]
fn teardown_removes_everything_and_is_idempotent() {
    let Some(node) = Node::new("teardown_removes_everything_and_is_idempotent") else {
        return;
    };
    let pn = node.podnet("10.244.2.0/24", None);
    let a = pn.setup("pod-a", addr("10.244.2.10")).expect("setup a");
    let b = pn.setup("pod-b", addr("10.244.2.11")).expect("setup b");
    assert!(ping(&a.netns, b.ip), "pod a -> pod b");
    assert_eq!(mounted_under(&node.netns_dir).len(), 2, "two netns mounts");

    // A second network for a pod that has one: refused, and the first one is untouched.
    let err = pn
        .setup("pod-b", addr("10.244.2.12"))
        .expect_err("a different address for a pod that has one");
    assert!(
        format!("{err:#}").contains("10.244.2.11"),
        "the error names the current address: {err:#}"
    );
    assert_eq!(pn.inspect("pod-b").expect("inspect"), Some(b.clone()));
    check_network(&b, "10.244.2.1", None);

    pn.teardown("pod-a").expect("teardown a");
    assert!(!link_exists(&a.host_veth), "host veth of a is gone");
    let route = ip("-4 route show 10.244.2.10/32");
    assert!(route.trim().is_empty(), "route to a is gone: {route}");
    assert!(!a.netns.exists(), "netns file of a is gone");
    let mounts = mounted_under(&node.netns_dir);
    assert_eq!(mounts.len(), 1, "only b's netns is mounted: {mounts:?}");
    assert!(!mounts[0].contains("pod-a"), "{mounts:?}");
    assert_eq!(pn.inspect("pod-a").expect("inspect"), None);
    assert_eq!(pn.list().expect("list"), vec!["pod-b".to_owned()]);
    pn.teardown("pod-a").expect("second teardown of a");
    pn.teardown("never-was")
        .expect("teardown of a pod that never had a network");

    // The gateway /32 is on every host veth: removing a's left b's working.
    assert!(
        ip("-4 addr show").contains("inet 10.244.2.1/32"),
        "the gateway address is still on b's veth"
    );
    assert!(
        ping(&b.netns, addr("10.244.2.1")),
        "pod b -> gateway after a left"
    );

    // Now a can come back, even with another address.
    let a2 = pn
        .setup("pod-a", addr("10.244.2.20"))
        .expect("setup a again");
    check_network(&a2, "10.244.2.1", None);
    assert!(ping(&a2.netns, b.ip), "new pod a -> pod b");

    pn.teardown("pod-a").expect("teardown a");
    pn.teardown("pod-b").expect("teardown b");
    assert!(
        mounted_under(&node.netns_dir).is_empty(),
        "no netns mount is left"
    );
    assert!(pn.list().expect("list").is_empty());
    let links = ip("-o link show");
    assert!(
        !links.contains(&b.host_veth),
        "no host veth is left: {links}"
    );

    for bad in [
        "",
        "Pod-A",
        "../etc",
        "a/b",
        "pod_a",
        "x.y",
        &"a".repeat(65),
    ] {
        assert!(
            pn.setup(bad, addr("10.244.2.30")).is_err(),
            "pod id {bad:?} refused"
        );
        assert!(pn.teardown(bad).is_err(), "pod id {bad:?} refused");
        assert!(pn.inspect(bad).is_err(), "pod id {bad:?} refused");
    }
    for bad in ["10.244.2.0", "10.244.2.1", "10.244.2.255", "10.244.3.5"] {
        assert!(
            pn.setup("pod-c", addr(bad)).is_err(),
            "address {bad} refused"
        );
    }
    assert!(!node.netns_dir.join("pod-c").exists());
}

#[test]
fn interrupted_setups_are_repaired() {
    let Some(node) = Node::new("interrupted_setups_are_repaired") else {
        return;
    };
    let pn = node.podnet("10.244.3.0/24", None);
    let gw = addr("10.244.3.1");

    // An empty netns file: the bind mount never happened.
    fs::write(node.netns_dir.join("pod-a"), "").expect("empty netns file");
    assert_eq!(pn.list().expect("list"), vec!["pod-a".to_owned()]);
    assert_eq!(pn.inspect("pod-a").expect("inspect"), None);
    let a = pn
        .setup("pod-a", addr("10.244.3.2"))
        .expect("setup over an empty file");
    check_network(&a, "10.244.3.1", None);
    assert!(ping(&a.netns, gw));

    // A netns but no veth.
    ip(&format!("link del {}", a.host_veth));
    assert_eq!(pn.inspect("pod-a").expect("inspect"), None);
    assert_eq!(pn.setup("pod-a", a.ip).expect("setup without veth"), a);
    check_network(&a, "10.244.3.1", None);
    assert!(ping(&a.netns, gw));
    assert_eq!(
        mounted_under(&node.netns_dir).len(),
        1,
        "the netns is mounted once"
    );

    // A host veth whose peer never reached the pod (still in the node namespace).
    let b_veth = PodNet::host_veth_name("pod-b");
    ip(&format!("link add {b_veth} type veth peer name sktmp-b"));
    let b = pn
        .setup("pod-b", addr("10.244.3.3"))
        .expect("setup over a stray veth");
    assert!(!link_exists("sktmp-b"), "the stray peer is gone");
    check_network(&b, "10.244.3.1", None);
    assert!(ping(&b.netns, a.ip));

    // Everything there but the addresses, routes and up states.
    ip(&format!("addr flush dev {}", b.host_veth));
    ip(&format!("link set {} down", b.host_veth));
    pod_ip(&b.netns, "addr flush dev eth0");
    pod_ip(&b.netns, "link set eth0 down");
    pod_ip(&b.netns, "link set lo down");
    assert_eq!(
        pn.inspect("pod-b").expect("inspect"),
        None,
        "the /32 route left with the down link"
    );
    assert_eq!(pn.setup("pod-b", b.ip).expect("setup of a stripped pod"), b);
    check_network(&b, "10.244.3.1", None);
    assert!(ping(&b.netns, a.ip), "pod b -> pod a after repair");
    assert!(ping(&a.netns, b.ip), "pod a -> pod b after repair");

    // A pod eth0 that is not the host veth's peer: replaced.
    let c = pn.setup("pod-c", addr("10.244.3.4")).expect("setup c");
    ip(&format!("link del {}", c.host_veth));
    pod_ip(&c.netns, "link add eth0 type veth peer name other");
    let c2 = pn.setup("pod-c", c.ip).expect("setup over a foreign eth0");
    assert_eq!(c2, c);
    check_network(&c, "10.244.3.1", None);
    assert!(ping(&c.netns, a.ip));
}

#[test]
fn node_routes_and_blackhole() {
    let Some(node) = Node::new("node_routes_and_blackhole") else {
        return;
    };
    // The other nodes are on-link through an uplink of the node's own.
    ip("link add skt-up type veth peer name skt-up-p");
    ip("addr add 10.250.0.1/24 dev skt-up");
    ip("link set skt-up up");
    ip("link set skt-up-p up");
    // A pod, so that its routes are seen to survive the syncs.
    let pn = node.podnet("10.244.1.0/24", None);
    let pod = pn.setup("pod-a", addr("10.244.1.2")).expect("setup");

    let cidr = |s: &str| -> Ipv4Cidr { s.parse().expect("cidr") };
    let ours = || {
        ip(&format!(
            "-4 route show proto {}",
            podnet::NODE_ROUTE_PROTOCOL
        ))
    };

    podnet::sync_node_routes(&[
        (cidr("10.244.2.0/24"), addr("10.250.0.2")),
        (cidr("10.244.3.0/24"), addr("10.250.0.3")),
    ])
    .expect("sync");
    let r = ours();
    assert!(r.contains("10.244.2.0/24 via 10.250.0.2 dev skt-up"), "{r}");
    assert!(r.contains("10.244.3.0/24 via 10.250.0.3 dev skt-up"), "{r}");
    assert_eq!(r.lines().count(), 2, "{r}");

    // A route Skiff did not add.
    ip("route add 10.244.9.0/24 via 10.250.0.9");

    // Changed gateway, one removed.
    podnet::sync_node_routes(&[(cidr("10.244.2.0/24"), addr("10.250.0.4"))]).expect("sync");
    let r = ours();
    assert!(r.contains("10.244.2.0/24 via 10.250.0.4 dev skt-up"), "{r}");
    assert_eq!(r.lines().count(), 1, "{r}");
    let all = ip("-4 route show");
    assert!(
        all.contains("10.244.9.0/24 via 10.250.0.9"),
        "foreign route kept: {all}"
    );
    assert!(!all.contains("10.244.3.0/24"), "stale route removed: {all}");

    // The same again changes nothing.
    let before = ip("-4 route show table all");
    podnet::sync_node_routes(&[(cidr("10.244.2.0/24"), addr("10.250.0.4"))]).expect("sync");
    assert_eq!(ip("-4 route show table all"), before);

    // A destination a foreign route has: an error, and the foreign route stays.
    let err = podnet::sync_node_routes(&[
        (cidr("10.244.2.0/24"), addr("10.250.0.4")),
        (cidr("10.244.9.0/24"), addr("10.250.0.5")),
    ])
    .expect_err("a foreign route is in the way");
    assert!(format!("{err:#}").contains("10.244.9.0/24"), "{err:#}");
    assert!(ip("-4 route show").contains("10.244.9.0/24 via 10.250.0.9"));
    assert!(
        ours().contains("10.244.2.0/24 via 10.250.0.4"),
        "the rest was still synced"
    );

    // A gateway that is not on-link: a readable error.
    let err = podnet::sync_node_routes(&[(cidr("10.244.4.0/24"), addr("192.0.2.1"))])
        .expect_err("unreachable gateway");
    assert!(format!("{err:#}").contains("10.244.4.0/24"), "{err:#}");

    // The blackhole, twice.
    podnet::ensure_blackhole(cidr("10.96.0.0/12")).expect("blackhole");
    podnet::ensure_blackhole(cidr("10.96.0.0/12")).expect("blackhole again");
    let bh = ip("-4 route show 10.96.0.0/12");
    assert!(bh.contains("blackhole 10.96.0.0/12"), "{bh}");
    assert_eq!(bh.lines().count(), 1, "{bh}");

    // Nothing left of ours; everything else stays.
    podnet::sync_node_routes(&[]).expect("sync to nothing");
    assert!(ours().trim().is_empty(), "{}", ours());
    let all = ip("-4 route show");
    assert!(all.contains("10.244.9.0/24 via 10.250.0.9"), "{all}");
    assert!(all.contains("blackhole 10.96.0.0/12"), "{all}");
    assert!(
        all.contains(&format!("10.244.1.2 dev {}", pod.host_veth)),
        "{all}"
    );
    check_network(&pod, "10.244.1.1", None);
}
