//! The datapath demo: a node namespace with a client pod and three nginx pods, a Service VIP
//! programmed by the `skiff-agent` loader, requests from the client through the VIP showing which
//! backend answered, the datapath's counters, then a full clean-up.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use skiff_agent::datapath::{Protocol, ServicePort};
use skiff_testbed::{
    pins::PinsGuard,
    servers::{Backend, HTTP_PORT, UDP_ECHO_PORT},
    topo::Topology,
    workspace_binary,
};
use skiff_tests::{
    client::{udp_ask, udp_flow},
    loader::{LoaderProcess, ServicesFile, desired},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn say(step: &str) {
    println!("\n==> {step}");
}

fn run() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    let prefix = format!("skiff-demo-{}", std::process::id());
    say("building a node namespace with a client pod and 3 backend pods (veth pairs, routes)");
    let topo = Topology::new(&prefix, 3)?;
    let pins = PinsGuard::new(&prefix)?;
    println!(
        "    node {}: client 10.244.1.10, backends {}; Service CIDR 10.96.0.0/12 blackholed",
        topo.node.name(),
        topo.backends
            .iter()
            .map(|b| b.ip.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    say("starting nginx and a UDP echo server in each backend pod");
    let backends = topo
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| Backend::start(&b.ns, &format!("backend-{i} ({})", b.ip)))
        .collect::<Result<Vec<_>>>()?;

    let web = ServicePort::new(VIP, 80, Protocol::Tcp);
    let dns = ServicePort::new(VIP, 53, Protocol::Udp);
    let empty = ServicePort::new(EMPTY_VIP, 80, Protocol::Tcp);
    let ips: Vec<Ipv4Addr> = topo.backends.iter().map(|b| b.ip).collect();
    let on = |port: u16| {
        ips.iter()
            .map(|ip| SocketAddrV4::new(*ip, port))
            .collect::<Vec<_>>()
    };
    let file = ServicesFile::new(&prefix);
    file.write(&desired([
        (web, on(HTTP_PORT)),
        (dns, on(UDP_ECHO_PORT)),
        (empty, vec![]),
    ]))?;
    say(
        "starting the datapath loader: skiff-agent datapath run (attaches tc programs, programs the Service)",
    );
    println!("    services file {}:", file.path().display());
    for line in std::fs::read_to_string(file.path())?.lines() {
        println!("      {line}");
    }
    let mut loader =
        LoaderProcess::start(&topo.node, &prefix, &topo.pod_interfaces(), file.path())?;
    println!(
        "    {}",
        loader.wait_for("synced", Duration::from_secs(30))?
    );
    println!(
        "    {}",
        loader.wait_for("ready:", Duration::from_secs(30))?
    );

    // 30 so that every backend answers some (some backend misses all 30 with probability 2e-5;
    // with 12 it was 2%, enough to fail the demo's test now and then).
    say("30 HTTP requests from the client pod to http://10.96.0.10/ (curl, new connection each)");
    for i in 1..=30 {
        let out = topo
            .client
            .ns
            .command("curl")
            .args(["-sS", "--max-time", "3", "http://10.96.0.10/"])
            .output()
            .context("running curl in the client pod")?;
        if !out.status.success() {
            bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        println!(
            "    request {i:>2} -> answered by {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }

    say("6 UDP requests to 10.96.0.10:53, one socket (one flow) each");
    for i in 1..=6 {
        let s = udp_flow(&topo.client.ns, SocketAddrV4::new(VIP, 53))?;
        let (name, _) = udp_ask(&s, format!("ping {i}").as_bytes())?;
        println!(
            "    datagram {i} from port {} -> answered by {name}",
            s.local_addr()?.port()
        );
    }

    say("a Service without backends (10.96.0.20:80) is refused at once, like kube-proxy's REJECT");
    let started = Instant::now();
    let out = topo
        .client
        .ns
        .command("curl")
        .args(["-sS", "--max-time", "3", "http://10.96.0.20/"])
        .output()?;
    println!(
        "    {} (after {} ms)",
        String::from_utf8_lossy(&out.stderr).trim(),
        started.elapsed().as_millis()
    );

    say("what the datapath shows: skiff-agent datapath show (attachments, services, drops)");
    let agent = workspace_binary("skiff-agent")?;
    let show = Command::new(&agent)
        .arg("--netns")
        .arg(topo.node.path())
        .args([
            "datapath",
            "show",
            "--instance",
            &prefix,
            "attached",
            "services",
            "drops",
        ])
        .output()
        .context("running skiff-agent datapath show")?;
    let text = String::from_utf8_lossy(&show.stdout);
    for line in text.lines() {
        println!("    {line}");
    }

    say("cleaning up: loader, servers, pins, namespaces");
    drop(loader);
    drop(backends);
    drop(pins);
    drop(file);
    drop(topo);
    println!("    done; nothing of the demo is left (ip netns list, ls /sys/fs/bpf/skiff)");
    Ok(())
}
