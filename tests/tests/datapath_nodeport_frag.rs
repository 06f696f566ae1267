//! NodePorts for every packet, on real traffic: IPv4 fragments and ICMP errors of NodePort
//! flows, to a backend on the node and to one on another node (SNAT). Two node namespaces on a
//! fabric bridge, a client outside the cluster on the same bridge; checksum offloads off, so
//! every rewritten checksum is checked by a kernel on the way. Every test cleans up its
//! namespaces, pins and processes on drop.
#![expect(
    unsafe_code,
    reason = "socket options (IP_MTU_DISCOVER, IP_MTU) and a raw ICMP socket need libc"
)]

use std::{
    io::{self, ErrorKind},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use skiff_agent::datapath::{Backends, Datapath, Protocol, ServicePort, ServiceTable};
use skiff_testbed::{
    netns::Netns,
    pins::PinsGuard,
    privileged,
    servers::{Backend, TCP_ECHO_PORT, UDP_ECHO_PORT},
    topo::Cluster,
    unique_prefix,
};
use skiff_tests::{
    client::{csum_errors, payload, tcp_echo, udp_ask, udp_flow},
    loader::test_config,
};

/// A two-node cluster with one backend pod per node, servers running, and a datapath per node
/// attached to its pods and its uplink. Fields drop in order: datapaths (handles only), servers,
/// pins, namespaces.
struct Fixture {
    datapaths: Vec<Datapath>,
    servers: Vec<Backend>,
    _pins: Vec<PinsGuard>,
    cluster: Cluster,
}

impl Fixture {
    fn new(tag: &str, services: &[(u8, u16, Protocol, usize, u16)]) -> Result<Self> {
        let prefix = unique_prefix(tag);
        let cluster = Cluster::new(&prefix, 2, 1)?;
        cluster.set_checksum_offload(false)?;
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
        let mut datapaths = Vec::new();
        for (node, instance) in cluster.nodes.iter().zip(&instances) {
            let mut config = test_config(instance);
            config.node_ip = Some(node.ip);
            let mut dp = Datapath::load(config)?;
            for iface in node.pod_interfaces() {
                node.ns.run(|| dp.attach(&iface))?;
            }
            dp.attach_uplink_in(node.ns.path(), &node.uplink)?;
            datapaths.push(dp);
        }
        let f = Fixture {
            datapaths,
            servers,
            _pins: pins,
            cluster,
        };
        // Every node is programmed alike, as every node's agent does.
        for dp in &f.datapaths {
            let mut table: ServiceTable<_> = dp.service_table()?;
            for (last, node_port, proto, n, port) in services {
                let sp = ServicePort::new(Ipv4Addr::new(10, 96, 0, *last), *port, *proto);
                let backends =
                    Backends::all_active(vec![f.pod(*n, *port)]).with_node_port(Some(*node_port));
                table.upsert_with(sp, &backends)?;
            }
        }
        Ok(f)
    }

    /// The backend pod of node `n` (from 1) on `port`.
    fn pod(&self, n: usize, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.cluster.nodes[n - 1].pods[0].ip, port)
    }

    fn name(&self, n: usize) -> &str {
        &self.servers[n - 1].name
    }

    /// `port` on node 1's address: every test goes through node 1.
    fn node_port(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.cluster.nodes[0].ip, port)
    }

    fn client(&self) -> &Netns {
        &self.cluster.client.ns
    }

    /// Lowers the MTU of node `n`'s link to its pod (both ends: a veth drops what exceeds the
    /// receiving end's MTU) while the pod keeps advertising the MSS of a 1500-byte path, as
    /// behind a tunnel: what the node forwards to its pod must fit, and only path MTU
    /// discovery tells a client so.
    fn set_pod_link_mtu(&self, n: usize, mtu: u32) -> Result<()> {
        let node = &self.cluster.nodes[n - 1];
        let pod = &node.pods[0];
        let mtu = mtu.to_string();
        node.ns.ip(&["link", "set", &pod.host_if, "mtu", &mtu])?;
        pod.ns.ip(&["link", "set", "eth0", "mtu", &mtu])?;
        let gateway = format!("10.244.{n}.1");
        pod.ns.ip(&[
            "route", "replace", "default", "via", &gateway, "dev", "eth0", "advmss", "1460",
        ])
    }

    /// No drops on any node, no checksum errors in the client or a backend.
    fn assert_clean(&self) -> Result<()> {
        for dp in &self.datapaths {
            let drops = dp.maps()?.drops()?;
            ensure!(
                drops.iter().all(|(_, n)| *n == 0),
                "unexpected drops: {drops:?}"
            );
        }
        let mut namespaces = vec![self.client()];
        namespaces.extend(self.cluster.nodes.iter().map(|n| &n.pods[0].ns));
        for ns in namespaces {
            ensure!(
                csum_errors(ns)? == (0, 0),
                "checksum errors in {}",
                ns.name()
            );
        }
        Ok(())
    }
}

const LOCAL_UDP: u16 = 30093;
const REMOTE_UDP: u16 = 30094;
const LOCAL_TCP: u16 = 30091;
const REMOTE_TCP: u16 = 30092;
/// To a port of node 1's pod where nothing listens.
const CLOSED_UDP: u16 = 30095;
const CLOSED_PORT: u16 = 5999;

/// The MTU the tests lower a backend's link to, below the fabric's 1500.
const SMALL_MTU: u32 = 1200;

#[test]
fn udp_datagrams_larger_than_the_mtu_cross_a_node_port_whole_both_ways() -> Result<()> {
    if !privileged("nodeport-frag") {
        return Ok(());
    }
    let f = Fixture::new(
        "npfrag",
        &[
            (11, LOCAL_UDP, Protocol::Udp, 1, UDP_ECHO_PORT),
            (12, REMOTE_UDP, Protocol::Udp, 2, UDP_ECHO_PORT),
        ],
    )?;
    for (port, n) in [(LOCAL_UDP, 1), (REMOTE_UDP, 2)] {
        let s = udp_flow(f.client(), f.node_port(port))?;
        // Three fragments each way over the fabric's MTU of 1500, then one past 8 KiB.
        for len in [4000, 9000] {
            let data = payload(len, len as u64 + u64::from(port));
            let (name, echoed) = udp_ask(&s, &data)
                .with_context(|| format!("a {len}-byte datagram through node port {port}"))?;
            ensure!(name == f.name(n), "node port {port} answered by {name}");
            ensure!(echoed == data, "a {len}-byte datagram came back different");
        }
    }
    f.assert_clean()
}

#[test]
fn path_mtu_discovery_works_through_a_node_port_to_local_and_remote_backends() -> Result<()> {
    if !privileged("nodeport-pmtu") {
        return Ok(());
    }
    // A cluster per case: the path MTU the client learns is per destination (node 1), so a
    // second case on the same client would find it known already.
    for (port, proto, n, backend_port) in [
        (LOCAL_UDP, Protocol::Udp, 1, UDP_ECHO_PORT),
        (REMOTE_UDP, Protocol::Udp, 2, UDP_ECHO_PORT),
        (LOCAL_TCP, Protocol::Tcp, 1, TCP_ECHO_PORT),
        (REMOTE_TCP, Protocol::Tcp, 2, TCP_ECHO_PORT),
    ] {
        let f = Fixture::new("nppmtu", &[(11, port, proto, n, backend_port)])?;
        // The node forwarding to its pod reports "fragmentation needed": node 1 about the
        // client's packets to its own pod, node 2 about node 1's SNAT'd ones to its pod.
        f.set_pod_link_mtu(n, SMALL_MTU)?;
        if proto == Protocol::Udp {
            udp_learns_the_path_mtu(&f, port)?;
        } else {
            // Segments sized for 1500 meet the smaller link; the transfer only completes when
            // the client's kernel learns the path MTU from the translated errors.
            let data = payload(512 * 1024, u64::from(port));
            let back = tcp_echo(f.client(), f.node_port(port), &data)
                .with_context(|| format!("a TCP transfer through node port {port}"))?;
            ensure!(back == data, "the echo through node port {port} differs");
        }
        f.assert_clean()
            .with_context(|| format!("node port {port}"))?;
    }
    Ok(())
}

/// A DF datagram too big for the backend's link: the error must find the client's socket,
/// quoting its own packet to the NodePort, for its kernel to learn the path's MTU.
fn udp_learns_the_path_mtu(f: &Fixture, port: u16) -> Result<()> {
    let s = udp_flow(f.client(), f.node_port(port))?;
    set_dont_fragment(&s)?;
    ensure!(path_mtu(&s)? == 1500, "the path MTU is known already");
    s.send(&[0x5a; 1400]).context("sending a DF datagram")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sent = Instant::now();
    loop {
        let mtu = path_mtu(&s)?;
        if mtu == SMALL_MTU {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "node port {port}: the client's path MTU stayed {mtu}"
        );
        // ICMP errors are rate-limited and a loaded machine may lose one: send again now and
        // then (an error from a send the kernel already refuses is fine).
        if sent.elapsed() > Duration::from_millis(300) {
            let _ = s.send(&[0x5a; 1400]);
            sent = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The socket was told (EMSGSIZE), and a datagram that fits goes through.
    let mut buf = [0u8; 2048];
    match s.recv(&mut buf) {
        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {}
        other => bail!("node port {port}: expected EMSGSIZE, got {other:?}"),
    }
    // A resent datagram's error may still arrive: let it be taken before asking.
    std::thread::sleep(Duration::from_millis(100));
    s.set_nonblocking(true)?;
    while let Err(e) = s.recv(&mut buf) {
        if e.raw_os_error() != Some(libc::EMSGSIZE) {
            break;
        }
    }
    s.set_nonblocking(false)?;
    let data = payload(1100, u64::from(port));
    let (_, echoed) = udp_ask(&s, &data)?;
    ensure!(echoed == data, "the echo through node port {port} differs");
    Ok(())
}

#[test]
fn a_local_backends_port_unreachable_reaches_the_client_from_the_node_port() -> Result<()> {
    if !privileged("nodeport-unreach") {
        return Ok(());
    }
    let f = Fixture::new(
        "npunreach",
        &[(15, CLOSED_UDP, Protocol::Udp, 1, CLOSED_PORT)],
    )?;
    let sniffer = IcmpSniffer::open(f.client())?;
    let s = udp_flow(f.client(), f.node_port(CLOSED_UDP))?;
    let local = match s.local_addr()? {
        std::net::SocketAddr::V4(a) => a,
        other => bail!("not IPv4: {other}"),
    };
    s.send(b"anyone?").context("sending")?;
    let mut buf = [0u8; 64];
    match s.recv(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => bail!("expected connection refused, got {other:?}"),
    }
    // The error itself: from the node, quoting the client's packet to the NodePort.
    let node = f.cluster.nodes[0].ip;
    let e = sniffer.next_error()?;
    ensure!(e.source == node, "the error came from {}", e.source);
    ensure!(
        (e.kind, e.code) == (3, 3),
        "type {} code {}",
        e.kind,
        e.code
    );
    ensure!(
        e.quoted_src == local && e.quoted_dst == f.node_port(CLOSED_UDP),
        "quoted {} -> {}",
        e.quoted_src,
        e.quoted_dst
    );
    f.assert_clean()
}

/// Sets IP_PMTUDISC_DO: the datagrams carry DF, and an error about them sets the path's MTU.
fn set_dont_fragment(s: &UdpSocket) -> Result<()> {
    let value: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: a valid socket and a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("setting IP_MTU_DISCOVER");
    }
    Ok(())
}

/// The path MTU the kernel knows for a connected socket's destination (IP_MTU).
fn path_mtu(s: &UdpSocket) -> Result<u32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket and pointers to an int and its length.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("reading IP_MTU");
    }
    Ok(value as u32)
}

/// A raw ICMP socket in a namespace: sees a copy of every ICMP packet the namespace receives.
struct IcmpSniffer {
    fd: OwnedFd,
}

/// An ICMP error as it arrived: the outer source and the quoted packet's ends.
struct SeenError {
    source: Ipv4Addr,
    kind: u8,
    code: u8,
    quoted_src: SocketAddrV4,
    quoted_dst: SocketAddrV4,
}

impl IcmpSniffer {
    fn open(ns: &Netns) -> Result<Self> {
        let fd = ns
            .run(|| -> io::Result<OwnedFd> {
                // SAFETY: a plain syscall; the fd is owned at once.
                let raw = unsafe {
                    libc::socket(
                        libc::AF_INET,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                        libc::IPPROTO_ICMP,
                    )
                };
                if raw < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: a fresh descriptor nobody else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                let tv = libc::timeval {
                    tv_sec: 3,
                    tv_usec: 0,
                };
                // SAFETY: a valid socket and a pointer to a timeval of the size given.
                let rc = unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        (&raw const tv).cast(),
                        size_of::<libc::timeval>() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(fd)
            })
            .context("opening a raw ICMP socket")?;
        Ok(IcmpSniffer { fd })
    }

    /// The next ICMP error quoting a UDP or TCP packet (others skipped), within the timeout.
    fn next_error(&self) -> Result<SeenError> {
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: a valid socket and a buffer of the length given.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error()).context("waiting for an ICMP error");
            }
            let p = &buf[..n as usize];
            let ihl = usize::from(p[0] & 0x0f) * 4;
            // Outer header, ICMP header, quoted header (no options) and ports.
            if p.len() < ihl + 8 + 20 + 4 || !matches!(p[ihl], 3 | 11 | 12) {
                continue;
            }
            let q = &p[ihl + 8..];
            if q[0] != 0x45 || !matches!(q[9], 6 | 17) {
                continue;
            }
            let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            return Ok(SeenError {
                source: addr(&p[12..16]),
                kind: p[ihl],
                code: p[ihl + 1],
                quoted_src: SocketAddrV4::new(addr(&q[12..16]), port(&q[20..22])),
                quoted_dst: SocketAddrV4::new(addr(&q[16..20]), port(&q[22..24])),
            });
        }
    }
}
