//! NodePorts on real traffic: two node namespaces on a fabric bridge (host-gw routes between
//! their pod CIDRs), a datapath instance per node attached to its pods' veths and its uplink, and
//! a client outside the cluster on the same bridge reaching Services through a node's address.
//! Every test cleans up its namespaces, pins and processes on drop.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use skiff_agent::datapath::{
    Backends, Datapath, DatapathConfig, Protocol, ServicePort, ServiceTable,
};
use skiff_common::DEFAULT_SNAT_PORTS;
use skiff_testbed::{
    pins::PinsGuard,
    privileged,
    servers::{Backend, HTTP_PORT, TCP_ECHO_PORT, UDP_ECHO_PORT},
    topo::{Cluster, EXTERNAL_CLIENT_IP},
    unique_prefix,
};
use skiff_tests::{
    client::{HttpConn, TIMEOUT, csum_errors, http_get_once, payload, tcp_echo, udp_ask, udp_flow},
    loader::{show_json, test_config},
};

/// A two-node cluster with one backend pod per node, servers running, and a datapath per node
/// attached to its pods and its uplink. Fields drop in order: datapaths (handles only; the pins
/// stay until their guards go), servers, pins, namespaces.
struct Fixture {
    datapaths: Vec<Datapath>,
    servers: Vec<Backend>,
    _pins: Vec<PinsGuard>,
    cluster: Cluster,
    instances: Vec<String>,
}

impl Fixture {
    fn new(tag: &str) -> Result<Self> {
        let prefix = unique_prefix(tag);
        let cluster = Cluster::new(&prefix, 2, 1)?;
        let instances: Vec<String> = (1..=2).map(|n| format!("{prefix}-n{n}")).collect();
        let pins = instances
            .iter()
            .map(|i| PinsGuard::new(i))
            .collect::<Result<Vec<_>>>()?;
        let servers = cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(n, node)| Backend::start(&node.pods[0].ns, &format!("node{}-pod", n + 1)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Fixture {
            datapaths: Vec::new(),
            servers,
            _pins: pins,
            cluster,
            instances,
        })
    }

    /// Loads each node's datapath with its node address and attaches it to the node's pods and
    /// uplink.
    fn load(&mut self) -> Result<()> {
        self.load_with(|_| {})
    }

    /// `load`, with each node's configuration changed by `tune`.
    fn load_with(&mut self, tune: impl Fn(&mut DatapathConfig)) -> Result<()> {
        for (node, instance) in self.cluster.nodes.iter().zip(&self.instances) {
            let mut config = test_config(instance);
            config.node_ip = Some(node.ip);
            tune(&mut config);
            let mut dp = Datapath::load(config)?;
            for iface in node.pod_interfaces() {
                node.ns.run(|| dp.attach(&iface))?;
            }
            dp.attach_uplink_in(node.ns.path(), &node.uplink)?;
            self.datapaths.push(dp);
        }
        Ok(())
    }

    /// Programs the same Services on every node, as every node's agent does.
    fn program(&self, services: &[(ServicePort, Backends)]) -> Result<()> {
        for dp in &self.datapaths {
            let mut table: ServiceTable<_> = dp.service_table()?;
            for (sp, b) in services {
                table.upsert_with(*sp, b)?;
            }
        }
        Ok(())
    }

    /// The backend pod of node `n` (from 1) on `port`.
    fn pod(&self, n: usize, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.cluster.nodes[n - 1].pods[0].ip, port)
    }

    fn name(&self, n: usize) -> &str {
        &self.servers[n - 1].name
    }

    /// `port` on node `n`'s address.
    fn node_port(&self, n: usize, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.cluster.nodes[n - 1].ip, port)
    }
}

fn count(names: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

fn vip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, last)
}

#[test]
fn a_client_outside_the_cluster_reaches_backends_on_this_node_and_another_through_a_node_port()
-> Result<()> {
    if !privileged("nodeport") {
        return Ok(());
    }
    let mut f = Fixture::new("nodeport")?;
    // Offloads off, so every rewritten checksum is checked by a kernel on the way.
    f.cluster.set_checksum_offload(false)?;
    f.load()?;
    let both = |port: u16| Backends::all_active(vec![f.pod(1, port), f.pod(2, port)]);
    let only = |n: usize, port: u16| Backends::all_active(vec![f.pod(n, port)]);
    let web = ServicePort::new(vip(10), 80, Protocol::Tcp);
    let dns = ServicePort::new(vip(10), 53, Protocol::Udp);
    let echo_local = ServicePort::new(vip(11), 9000, Protocol::Tcp);
    let echo_remote = ServicePort::new(vip(12), 9000, Protocol::Tcp);
    let udp_local = ServicePort::new(vip(11), 53, Protocol::Udp);
    let udp_remote = ServicePort::new(vip(12), 53, Protocol::Udp);
    f.program(&[
        (web, both(HTTP_PORT).with_node_port(Some(30080))),
        (dns, both(UDP_ECHO_PORT).with_node_port(Some(30053))),
        (
            echo_local,
            only(1, TCP_ECHO_PORT).with_node_port(Some(30091)),
        ),
        (
            echo_remote,
            only(2, TCP_ECHO_PORT).with_node_port(Some(30092)),
        ),
        (
            udp_local,
            only(1, UDP_ECHO_PORT).with_node_port(Some(30093)),
        ),
        (
            udp_remote,
            only(2, UDP_ECHO_PORT).with_node_port(Some(30094)),
        ),
    ])?;
    let client = &f.cluster.client.ns;

    // TCP: new connections to node 1's NodePort reach the pods of both nodes.
    let target = f.node_port(1, 30080);
    let names: Vec<String> = client.run(|| {
        (0..100)
            .map(|_| http_get_once(target))
            .collect::<Result<_>>()
    })?;
    let counts = count(&names);
    ensure!(
        counts.len() == 2 && counts.values().all(|n| *n >= 10),
        "{counts:?}"
    );
    // A kept-alive connection stays on its backend.
    let mut conn = HttpConn::open(client, target)?;
    let first = conn.get()?;
    for _ in 0..20 {
        ensure!(conn.get()? == first, "the connection moved");
    }

    // UDP likewise; a connected socket only takes replies from the NodePort it asked.
    let names: Vec<String> = (0..60u32)
        .map(|i| {
            let s = udp_flow(client, f.node_port(1, 30053))?;
            let (name, echoed) = udp_ask(&s, &i.to_be_bytes())?;
            ensure!(echoed == i.to_be_bytes(), "the echo differs");
            Ok(name)
        })
        .collect::<Result<_>>()?;
    let counts = count(&names);
    ensure!(
        counts.len() == 2 && counts.values().all(|n| *n >= 5),
        "{counts:?}"
    );

    // Bulk TCP and large UDP datagrams, to a backend on this node and to one on the other.
    for port in [30091, 30092] {
        let data = payload(2 * 1024 * 1024, port as u64);
        let back = tcp_echo(client, f.node_port(1, port), &data)?;
        ensure!(back == data, "the echo through node port {port} differs");
    }
    for (port, n) in [(30093, 1), (30094, 2)] {
        let s = udp_flow(client, f.node_port(1, port))?;
        for len in [1, 1400] {
            let data = payload(len, len as u64);
            let (name, echoed) = udp_ask(&s, &data)?;
            ensure!(name == f.name(n), "node port {port} answered by {name}");
            ensure!(echoed == data, "a {len}-byte datagram came back different");
        }
    }

    // Node 1 kept the client's address for its own pod and put its own address, with a port
    // of the SNAT range, towards node 2's pod: as the reverse entries show.
    let report = show_json(&f.cluster.nodes[0].ns, &f.instances[0])?;
    let ct = report["conntrack"].as_array().context("conntrack")?;
    let reverse_to = |from: SocketAddrV4| -> Vec<SocketAddrV4> {
        ct.iter()
            .filter(|e| e["direction"] == "reverse" && e["source"] == from.to_string().as_str())
            .filter_map(|e| e["destination"].as_str()?.parse().ok())
            .collect()
    };
    let local = reverse_to(f.pod(1, TCP_ECHO_PORT));
    ensure!(
        !local.is_empty() && local.iter().all(|d| *d.ip() == EXTERNAL_CLIENT_IP),
        "{local:?}"
    );
    let remote = reverse_to(f.pod(2, TCP_ECHO_PORT));
    let (lo, hi) = DEFAULT_SNAT_PORTS;
    ensure!(
        !remote.is_empty()
            && remote
                .iter()
                .all(|d| { *d.ip() == f.cluster.nodes[0].ip && (lo..=hi).contains(&d.port()) }),
        "{remote:?}"
    );
    let web_listing = report["services"]
        .as_array()
        .and_then(|v| v.iter().find(|s| s["service"]["port"] == 80))
        .context("the web service in the listing")?;
    ensure!(web_listing["node_port"] == 30080, "{web_listing}");

    // The other node serves the same NodePorts on its own address.
    let names: Vec<String> = client.run(|| {
        (0..40)
            .map(|_| http_get_once(f.node_port(2, 30080)))
            .collect::<Result<_>>()
    })?;
    ensure!(count(&names).len() == 2, "{:?}", count(&names));

    // Nothing dropped, no checksum errors anywhere.
    for dp in &f.datapaths {
        let drops = dp.maps()?.drops()?;
        ensure!(
            drops.iter().all(|(_, n)| *n == 0),
            "unexpected drops: {drops:?}"
        );
    }
    let mut namespaces = vec![client];
    namespaces.extend(f.cluster.nodes.iter().map(|n| &n.pods[0].ns));
    for ns in namespaces {
        ensure!(
            csum_errors(ns)? == (0, 0),
            "checksum errors in {}",
            ns.name()
        );
    }
    Ok(())
}

#[test]
fn node_port_links_outlive_the_loader_are_adopted_by_the_next_and_detach_cleanly() -> Result<()> {
    if !privileged("nodeport-pins") {
        return Ok(());
    }
    let mut f = Fixture::new("nppins")?;
    f.load()?;
    let web = ServicePort::new(vip(10), 80, Protocol::Tcp);
    let both = Backends::all_active(vec![f.pod(1, HTTP_PORT), f.pod(2, HTTP_PORT)]);
    f.program(&[(web, both.with_node_port(Some(30080)))])?;
    let client = &f.cluster.client.ns;
    let target = f.node_port(1, 30080);
    let mut conn = HttpConn::open(client, target)?;
    let backend = conn.get()?;

    // No loader: the pinned uplink links and maps keep serving, old and new connections.
    f.datapaths.clear();
    ensure!(conn.get()? == backend, "the open connection moved");
    let names: Vec<String> = client.run(|| {
        (0..40)
            .map(|_| http_get_once(target))
            .collect::<Result<_>>()
    })?;
    ensure!(count(&names).len() == 2, "{:?}", count(&names));

    // The next loader adopts the live links: the programs are replaced in place.
    let node = &f.cluster.nodes[0];
    let mut config = test_config(&f.instances[0]);
    config.node_ip = Some(node.ip);
    let mut dp = Datapath::load(config)?;
    let outcomes = dp.attach_uplink_in(node.ns.path(), &node.uplink)?;
    ensure!(
        outcomes
            .iter()
            .all(|(_, o)| *o == skiff_agent::datapath::AttachOutcome::Replaced),
        "{outcomes:?}"
    );
    ensure!(conn.get()? == backend, "the open connection moved");
    let listing = show_json(&node.ns, &f.instances[0])?;
    let uplinks: Vec<&serde_json::Value> = listing["attached"]
        .as_array()
        .context("attached")?
        .iter()
        .filter(|a| a["uplink"] == true)
        .collect();
    ensure!(
        uplinks.len() == 2 && uplinks.iter().all(|a| a["live"] == true),
        "{uplinks:?}"
    );
    // Pod links are listed (and tidied) apart from the uplink's.
    let layout = skiff_agent::datapath::PinLayout::new(
        std::path::Path::new("/sys/fs/bpf"),
        &f.instances[0],
    )?;
    ensure!(
        skiff_agent::datapath::attachments(&layout)?
            .iter()
            .all(|a| !a.uplink && a.interface != node.uplink)
    );

    // Detached: the node no longer serves the NodePort (its kernel refuses the connection). The
    // kernel frees a link whose pin is removed after an RCU grace period, so allow it a moment.
    ensure!(skiff_agent::datapath::detach_uplink(&layout, &node.uplink)? == 2);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let attempt = client.run(|| std::net::TcpStream::connect_timeout(&target.into(), TIMEOUT));
        match attempt {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => ensure!(
                Instant::now() < deadline,
                "still served after detaching: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn node_port_source_ports_are_never_shared_outlast_time_wait_and_run_out_with_a_reset() -> Result<()>
{
    if !privileged("nodeport-snat") {
        return Ok(());
    }
    let mut f = Fixture::new("npsnat")?;
    // Two source ports towards each backend, held 3 s after their flow closes (120 s by
    // default), and closed flows that stop translating after 2 s.
    let hold = Duration::from_secs(3);
    f.load_with(|c| {
        c.snat_ports = (61_000, 61_001);
        c.timeouts.snat_hold = hold.as_nanos() as u64;
        c.timeouts.tcp_closing = 2_000_000_000;
    })?;
    let web = ServicePort::new(vip(10), 80, Protocol::Tcp);
    let remote = Backends::all_active(vec![f.pod(2, HTTP_PORT)]);
    f.program(&[(web, remote.with_node_port(Some(30080)))])?;
    let client = &f.cluster.client.ns;
    let target = f.node_port(1, 30080);
    let exhausted = |dp: &Datapath| -> Result<u64> {
        Ok(dp
            .maps()?
            .drops()?
            .into_iter()
            .find(|(r, _)| r.name() == "snat_exhausted")
            .map_or(0, |(_, n)| n))
    };
    let refused_at_once = || -> Result<()> {
        let started = Instant::now();
        let attempt = client.run(|| std::net::TcpStream::connect_timeout(&target.into(), TIMEOUT));
        match attempt {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => anyhow::bail!("expected a reset, got {other:?}"),
        }
        ensure!(
            started.elapsed() < Duration::from_secs(1),
            "the refusal took {:?}",
            started.elapsed()
        );
        Ok(())
    };

    let mut first = HttpConn::open(client, target)?;
    first.get()?;
    let mut second = HttpConn::open(client, target)?;
    second.get()?;
    // Both ports are held by live flows: a third client is answered with a reset, not given
    // a port in use.
    refused_at_once()?;
    ensure!(exhausted(&f.datapaths[0])? == 1);
    let report = show_json(&f.cluster.nodes[0].ns, &f.instances[0])?;
    let ports: Vec<u16> = report["conntrack"]
        .as_array()
        .context("conntrack")?
        .iter()
        .filter(|e| e["direction"] == "reverse" && e["table"] == "established")
        .filter_map(|e| e["destination"].as_str()?.parse::<SocketAddrV4>().ok())
        .map(|d| d.port())
        .collect();
    ensure!(ports.len() == 2 && ports[0] != ports[1], "{ports:?}");

    // One connection closes: the backend may keep it in TIME_WAIT, so its port is not given to
    // the next client either while the hold lasts.
    let first_port = first.local_port();
    drop(first);
    let closed_at = Instant::now();
    let deadline = closed_at + Duration::from_secs(2);
    loop {
        let report = show_json(&f.cluster.nodes[0].ns, &f.instances[0])?;
        let closing = report["conntrack"]
            .as_array()
            .context("conntrack")?
            .iter()
            .any(|e| {
                e["direction"] == "reverse"
                    && e["table"] == "established"
                    && e["state"] == "closing"
                    && e["also_translated"]
                        .as_str()
                        .is_some_and(|c| c.ends_with(&format!(":{first_port}")))
            });
        if closing {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the closed flow's port entry: {report:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    refused_at_once()?;
    ensure!(exhausted(&f.datapaths[0])? == 2);
    ensure!(
        second.get()? == f.name(2),
        "the other connection lost its way"
    );
    // Once the hold is over the port is taken over (once: by compare-and-swap) by a new flow.
    std::thread::sleep(
        (closed_at + hold + Duration::from_millis(500)).saturating_duration_since(Instant::now()),
    );
    let mut third = HttpConn::open(client, target)?;
    ensure!(third.get()? == f.name(2), "the new connection went astray");
    let events = f.datapaths[0].maps()?.ct_events()?;
    ensure!(
        events
            .iter()
            .any(|(e, n)| e.name() == "snat_port_reused" && *n == 1),
        "{events:?}"
    );
    ensure!(
        second.get()? == f.name(2),
        "the other connection lost its way"
    );
    Ok(())
}
