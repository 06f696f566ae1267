//! No spoofed sources: a pod that forges the source of its packets (another pod's address, the
//! node's, or one from nowhere) reaches no pod, directly or through a Service, and neither
//! creates nor disturbs conntrack entries; the same packets with its own address do arrive.
//! Every packet starts in the test's own namespaces (1.2.3.4 only ever as a forged source)
//! and none of them has a route off the machine.

use std::{
    collections::{BTreeMap, HashMap},
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use skiff_agent::datapath::{Backends, Datapath, PinnedMaps, Protocol, ServicePort};
use skiff_common::{CtKey, CtValue, DropReason, csum, raw_addr};
use skiff_testbed::{
    pins::PinsGuard,
    privileged,
    servers::{Backend, TCP_ECHO_PORT},
    topo::{CLIENT_IP, GATEWAY, Topology},
    unique_prefix,
};
use skiff_tests::{
    loader::test_config,
    rawpkt::{self, ETH_P_IP, Ipv4, RawSender},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The UDP Service and the port the target pod counts datagrams on.
const UDP_SVC_PORT: u16 = 7000;
const SINK_PORT: u16 = 7001;
const ECHO_SVC_PORT: u16 = 9000;
const NOWHERE: Ipv4Addr = Ipv4Addr::new(1, 2, 3, 4);
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const TCP_FIN: u8 = 0x01;

/// Pods: the client (`vc`) forges; backend 0 is the target (echo server and a UDP sink behind
/// both Services); backend 1 is a victim with a live connection through the VIP.
struct Fixture {
    _server: Backend,
    sink: UdpSocket,
    dp: Datapath,
    _pins: PinsGuard,
    topo: Topology,
}

impl Fixture {
    fn new(tag: &str) -> Result<Self> {
        let prefix = unique_prefix(tag);
        let topo = Topology::new(&prefix, 2)?;
        let pins = PinsGuard::new(&prefix)?;
        let server = Backend::start(&topo.backends[0].ns, "target")?;
        let sink = topo.backends[0]
            .ns
            .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, SINK_PORT)))
            .context("binding the sink")?;
        sink.set_nonblocking(true)?;
        let mut dp = Datapath::load(test_config(&prefix))?;
        for iface in topo.pod_interfaces() {
            topo.node.run(|| dp.attach(&iface))?;
        }
        let target = topo.backends[0].ip;
        let mut table = dp.service_table()?;
        table.upsert_with(
            ServicePort::new(VIP, UDP_SVC_PORT, Protocol::Udp),
            &Backends::new(vec![SocketAddrV4::new(target, SINK_PORT)], vec![]),
        )?;
        table.upsert_with(
            ServicePort::new(VIP, ECHO_SVC_PORT, Protocol::Tcp),
            &Backends::new(vec![SocketAddrV4::new(target, TCP_ECHO_PORT)], vec![]),
        )?;
        Ok(Fixture {
            _server: server,
            sink,
            dp,
            _pins: pins,
            topo,
        })
    }

    fn maps(&self) -> Result<PinnedMaps> {
        Ok(self.dp.maps()?)
    }

    /// The sources of the datagrams the sink got since the last call.
    fn sunk(&self) -> Result<Vec<Ipv4Addr>> {
        thread::sleep(Duration::from_millis(200));
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match self.sink.recv_from(&mut buf) {
                Ok((_, SocketAddr::V4(from))) => out.push(*from.ip()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(out),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn drops(maps: &PinnedMaps) -> Result<BTreeMap<&'static str, u64>> {
    Ok(maps
        .drops()?
        .into_iter()
        .map(|(r, n)| (r.name(), n))
        .collect())
}

/// A TCP segment with `flags` and a correct checksum.
fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&0x0badf00du32.to_be_bytes());
    t[8..12].copy_from_slice(&0x0000_1000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&1024u16.to_be_bytes());
    let mut s = csum::add_bytes(0, &src.octets());
    s = csum::add_bytes(s, &dst.octets());
    s += 6 + t.len() as u64;
    let c = csum::finish(csum::add_bytes(s, &t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// The 802.1Q tag protocol identifier.
const ETH_P_8021Q: u16 = 0x8100;

/// An ICMP "port unreachable" quoting `quoted` (its IPv4 header and first 8 bytes).
fn icmp_port_unreachable(quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&quoted[..quoted.len().min(28)]);
    let c = csum::finish(csum::add_bytes(0, &m));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// Sends, from the client pod with `src` as source: a datagram to the target directly, one to
/// the UDP Service, and a SYN to the TCP Service. Returns how many IPv4 packets went.
fn send_set(raw: &RawSender, src: Ipv4Addr, target: Ipv4Addr, sport: u16) -> Result<u64> {
    let udp = |dst, dport| {
        Ipv4::new(src, dst, 17).packet(&rawpkt::udp(src, dst, sport, dport, b"forged?", true))
    };
    raw.send(ETH_P_IP, &udp(target, SINK_PORT))?;
    raw.send(ETH_P_IP, &udp(VIP, UDP_SVC_PORT))?;
    raw.send(
        ETH_P_IP,
        &Ipv4::new(src, VIP, 6).packet(&rawpkt::tcp_syn(src, VIP, sport, ECHO_SVC_PORT)),
    )?;
    Ok(3)
}

/// Conntrack entries whose key names `addr` as either end.
fn entries_of(maps: &PinnedMaps, addr: Ipv4Addr) -> Result<Vec<(CtKey, CtValue)>> {
    let raw = raw_addr(addr.octets());
    Ok(maps
        .conntrack_raw()?
        .into_iter()
        .filter(|(k, _)| k.saddr == raw || k.daddr == raw)
        .collect())
}

/// What a flow's entries say, without the time it was last seen (which traffic refreshes).
fn essence(entries: &[(CtKey, CtValue)]) -> HashMap<CtKey, CtValue> {
    entries
        .iter()
        .map(|(k, v)| {
            (
                *k,
                CtValue {
                    last_seen_ns: 0,
                    ..*v
                },
            )
        })
        .collect()
}

fn echo(s: &mut TcpStream, data: &[u8]) -> Result<()> {
    s.write_all(data)?;
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got)?;
    ensure!(got == data, "the echo came back changed");
    Ok(())
}

#[test]
fn forged_sources_reach_no_pod_and_touch_no_conntrack_entry_while_own_ones_pass() -> Result<()> {
    if !privileged("spoof") {
        return Ok(());
    }
    let f = Fixture::new("spoof")?;
    let maps = f.maps()?;
    let target = f.topo.backends[0].ip;
    let victim = f.topo.backends[1].ip;
    let raw = RawSender::open(&f.topo.client, &f.topo.node)?;

    // A victim connection through the VIP, live before and after the attack.
    let mut conn = f.topo.backends[1]
        .ns
        .run(|| {
            TcpStream::connect_timeout(
                &SocketAddr::V4(SocketAddrV4::new(VIP, ECHO_SVC_PORT)),
                Duration::from_secs(3),
            )
        })
        .context("victim connecting to the VIP")?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    echo(&mut conn, b"before")?;
    let victim_port = conn.local_addr()?.port();
    let victim_before = entries_of(&maps, victim)?;
    ensure!(
        victim_before.len() == 2,
        "the victim's flow has a forward and a reverse entry: {victim_before:?}"
    );

    // Negative control: the client's own address passes, directly and through both Services.
    let d0 = drops(&maps)?;
    send_set(&raw, CLIENT_IP, target, 41000)?;
    let got = f.sunk()?;
    ensure!(
        got == vec![CLIENT_IP, CLIENT_IP],
        "the client's own datagrams (direct and through the VIP) should arrive: got {got:?}"
    );
    ensure!(
        !entries_of(&maps, CLIENT_IP)?.is_empty(),
        "the client's own SYN through the VIP should be tracked"
    );
    ensure!(
        drops(&maps)? == d0,
        "nothing of the client's own should be dropped"
    );

    // Forged: another pod's address, the node's, one from nowhere.
    let mut sent = 0;
    for (i, forged) in [victim, GATEWAY, NOWHERE].into_iter().enumerate() {
        sent += send_set(&raw, forged, target, 42000 + i as u16)?;
    }
    // Into the victim's own flow: its exact 4-tuple, with FIN, RST and a bare ACK.
    for flags in [TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST] {
        raw.send(
            ETH_P_IP,
            &Ipv4::new(victim, VIP, 6).packet(&tcp(victim, VIP, victim_port, ECHO_SVC_PORT, flags)),
        )?;
        sent += 1;
    }
    // With the client's own address: an ICMP error quoting the victim's reply (VIP -> victim),
    // which would reach the victim's backend as its own flow's "port unreachable".
    raw.send(
        ETH_P_IP,
        &Ipv4::new(CLIENT_IP, VIP, 1).packet(&icmp_port_unreachable(
            &Ipv4::new(VIP, victim, 6).packet(&tcp(
                VIP,
                victim,
                ECHO_SVC_PORT,
                victim_port,
                TCP_ACK,
            )),
        )),
    )?;
    sent += 1;
    // A forged datagram behind two VLAN tags: the receiving kernel takes the outer one off before
    // the datapath runs and the inner one after, so a datapath that let non-IPv4 frames pass
    // would hand the forged packet to the node's IP stack unchecked.
    let mut tagged = vec![0x00, 0x00, 0x81, 0x00, 0x00, 0x00, 0x08, 0x00];
    tagged.extend(Ipv4::new(NOWHERE, target, 17).packet(&rawpkt::udp(
        NOWHERE, target, 43000, SINK_PORT, b"tagged", true,
    )));
    raw.send(ETH_P_8021Q, &tagged)?;
    let got = f.sunk()?;
    ensure!(
        got.is_empty(),
        "forged datagrams reached the target: {got:?}"
    );
    for forged in [GATEWAY, NOWHERE] {
        let e = entries_of(&maps, forged)?;
        ensure!(e.is_empty(), "conntrack entries for forged {forged}: {e:?}");
    }
    let victim_after = entries_of(&maps, victim)?;
    ensure!(
        essence(&victim_after) == essence(&victim_before),
        "the victim's entries changed (a flow for a forged client, or its own flow's state): \
         before {victim_before:?}, after {victim_after:?}"
    );
    let now = drops(&maps)?;
    let spoofed = DropReason::SpoofedSource.name();
    ensure!(
        now[spoofed] - d0[spoofed] == sent,
        "expected {sent} more {spoofed}: before {d0:?}, now {now:?}"
    );
    let not_ipv4 = DropReason::NotIpv4.name();
    ensure!(
        now[not_ipv4] - d0[not_ipv4] == 1,
        "expected the VLAN-tagged frame as one more {not_ipv4}: before {d0:?}, now {now:?}"
    );
    let mut others = now.clone();
    others.remove(spoofed);
    others.remove(not_ipv4);
    let mut others_before = d0.clone();
    others_before.remove(spoofed);
    others_before.remove(not_ipv4);
    ensure!(
        others == others_before,
        "other drops moved: {d0:?} -> {now:?}"
    );

    // The victim's connection goes on, on the same entries.
    echo(&mut conn, b"after")?;
    ensure!(
        essence(&entries_of(&maps, victim)?) == essence(&victim_before),
        "the victim's flow moved"
    );
    Ok(())
}

#[test]
fn a_pod_attached_for_another_address_cannot_send_from_its_own_until_reattached() -> Result<()> {
    if !privileged("spoof-reattach") {
        return Ok(());
    }
    let mut f = Fixture::new("spoofre")?;
    let maps = f.maps()?;
    let target = f.topo.backends[0].ip;
    let raw = RawSender::open(&f.topo.client, &f.topo.node)?;
    let iface = f.topo.client.host_if.clone();
    let spoofed = DropReason::SpoofedSource.name();

    // The record names another address: the client's real one is now foreign to its interface.
    let (node, dp) = (&f.topo.node, &mut f.dp);
    node.run(|| dp.attach_pod(&iface, Ipv4Addr::new(10, 244, 1, 99)))?;
    let d0 = drops(&maps)?;
    let sent = send_set(&raw, CLIENT_IP, target, 43000)?;
    let got = f.sunk()?;
    ensure!(
        got.is_empty(),
        "datagrams from an address not given arrived: {got:?}"
    );
    let d1 = drops(&maps)?;
    ensure!(d1[spoofed] - d0[spoofed] == sent, "{d0:?} -> {d1:?}");

    // Attached again with its own address (the links' program replaced in place): it passes.
    let (node, dp) = (&f.topo.node, &mut f.dp);
    node.run(|| dp.attach_pod(&iface, CLIENT_IP))?;
    send_set(&raw, CLIENT_IP, target, 43100)?;
    let got = f.sunk()?;
    ensure!(got == vec![CLIENT_IP, CLIENT_IP], "got {got:?}");
    ensure!(drops(&maps)? == d1, "nothing more should be dropped");

    // Detached: links and record go.
    let layout = f.dp.layout().clone();
    let removed = f
        .topo
        .node
        .run(|| skiff_agent::datapath::detach(&layout, &iface))?;
    ensure!(removed == 2, "removed {removed} links");
    ensure!(
        maps.pod_sources()?.iter().all(|(_, a)| *a != CLIENT_IP),
        "the record outlived the links: {:?}",
        maps.pod_sources()?
    );
    Ok(())
}
