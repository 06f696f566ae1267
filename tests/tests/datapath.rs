//! The eBPF service datapath on real traffic: real programs attached by TCX to real veths in
//! namespaces made by each test, nginx and echo servers in the backend pods, a client pod.
//! Every test cleans up its namespaces, pins and processes on drop.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use skiff_agent::datapath::{
    Backends, Datapath, DatapathConfig, PinnedMaps, Protocol, ServicePort, ServiceTable,
    SessionAffinity, maglev,
};
use skiff_common::{DropReason, hash::flow_hash, raw_addr, raw_port, tcp_closed};
use skiff_testbed::{
    pins::PinsGuard,
    privileged,
    servers::{Backend, HTTP_PORT, TCP_ECHO_PORT, UDP_ECHO_PORT},
    topo::{CLIENT_IP, Topology},
    unique_prefix,
};
use skiff_tests::{
    client::{HttpConn, csum_errors, http_get_once, payload, tcp_echo, udp_ask, udp_flow},
    loader::{LoaderProcess, ServicesFile, desired, show_json, test_config},
    rawpkt::{self, ETH_P_IP, Ipv4, RawSender},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A VIP whose service has no backends.
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

fn http_service() -> ServicePort {
    ServicePort::new(VIP, 80, Protocol::Tcp)
}
fn udp_service() -> ServicePort {
    ServicePort::new(VIP, 53, Protocol::Udp)
}
fn echo_service() -> ServicePort {
    ServicePort::new(VIP, 9000, Protocol::Tcp)
}
fn addr(sp: ServicePort) -> SocketAddrV4 {
    SocketAddrV4::new(sp.vip, sp.port)
}

/// A topology with running backends and a datapath instance named after the test. Fields drop
/// in order: servers stop, the loader (if any) dies, pins go, namespaces go.
struct Fixture {
    servers: Vec<Backend>,
    _pins: PinsGuard,
    topo: Topology,
    instance: String,
}

impl Fixture {
    fn new(tag: &str, backends: usize) -> Result<Self> {
        let prefix = unique_prefix(tag);
        let topo = Topology::new(&prefix, backends)?;
        let pins = PinsGuard::new(&prefix)?;
        let servers = topo
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| Backend::start(&b.ns, &format!("backend-{i}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Fixture {
            servers,
            _pins: pins,
            topo,
            instance: prefix,
        })
    }

    /// Loads the datapath in this process and attaches it to every pod's host veth.
    fn load(&self) -> Result<Datapath> {
        self.load_with(test_config(&self.instance))
    }

    fn load_with(&self, config: DatapathConfig) -> Result<Datapath> {
        let mut dp = Datapath::load(config)?;
        for iface in self.topo.pod_interfaces() {
            self.topo.node.run(|| dp.attach(&iface))?;
        }
        Ok(dp)
    }

    /// Backends `which`, on `port`.
    fn backends(&self, which: &[usize], port: u16) -> Vec<SocketAddrV4> {
        which
            .iter()
            .map(|i| SocketAddrV4::new(self.topo.backends[*i].ip, port))
            .collect()
    }

    fn all(&self) -> Vec<usize> {
        (0..self.topo.backends.len()).collect()
    }

    fn name(&self, i: usize) -> &str {
        &self.servers[i].name
    }
}

fn drops(maps: &PinnedMaps) -> Result<BTreeMap<&'static str, u64>> {
    Ok(maps
        .drops()?
        .into_iter()
        .map(|(r, n)| (r.name(), n))
        .collect())
}

fn count<'a>(names: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

/// Each of `backends` answered within 25% of an even share (for 600 flows over 3 backends the
/// binomial standard deviation is about 11.5, so 25% is more than 4 of them).
fn assert_fair(counts: &BTreeMap<String, usize>, backends: &[&str], total: usize) {
    let share = total as f64 / backends.len() as f64;
    for b in backends {
        let n = counts.get(*b).copied().unwrap_or(0) as f64;
        assert!(
            (n - share).abs() <= share * 0.25,
            "{b} got {n} of {total} flows (fair share {share:.0}): {counts:?}"
        );
    }
    assert_eq!(counts.values().sum::<usize>(), total, "{counts:?}");
}

#[test]
fn connections_to_the_vip_spread_fairly_over_all_backends_for_tcp_and_udp() -> Result<()> {
    if !privileged("spread") {
        return Ok(());
    }
    let f = Fixture::new("spread", 3)?;
    let dp = f.load()?;
    let mut table = dp.service_table()?;
    table.upsert(http_service(), &f.backends(&f.all(), HTTP_PORT))?;
    table.upsert(udp_service(), &f.backends(&f.all(), UDP_ECHO_PORT))?;
    let names: Vec<&str> = (0..3).map(|i| f.name(i)).collect();

    const FLOWS: usize = 600;
    let http = addr(http_service());
    let tcp: Vec<String> = f.topo.client.ns.run(|| {
        (0..FLOWS)
            .map(|_| http_get_once(http))
            .collect::<Result<_>>()
    })?;
    assert_fair(&count(&tcp), &names, FLOWS);

    // One socket per flow, all kept open so that no source port (and so no 5-tuple) repeats.
    let dns = addr(udp_service());
    let flows: Vec<UdpSocket> = (0..FLOWS)
        .map(|_| udp_flow(&f.topo.client.ns, dns))
        .collect::<Result<_>>()?;
    let udp: Vec<String> = flows
        .iter()
        .enumerate()
        .map(|(i, s)| Ok(udp_ask(s, &i.to_be_bytes())?.0))
        .collect::<Result<_>>()?;
    assert_fair(&count(&udp), &names, FLOWS);

    let maps = dp.maps()?;
    let id = table.service_id(&udp_service()).context("udp service id")?;
    assert_eq!(maps.counters(id)?.new_flows, FLOWS as u64);
    Ok(())
}

#[test]
fn with_checksum_offload_off_nat_keeps_every_byte_and_checksum_correct() -> Result<()> {
    if !privileged("checksums") {
        return Ok(());
    }
    let f = Fixture::new("csum", 3)?;
    f.topo.set_checksum_offload(false)?;
    let dp = f.load()?;
    let mut table = dp.service_table()?;
    table.upsert(echo_service(), &f.backends(&f.all(), TCP_ECHO_PORT))?;
    table.upsert(udp_service(), &f.backends(&f.all(), UDP_ECHO_PORT))?;
    let namespaces: Vec<_> = std::iter::once(&f.topo.client)
        .chain(&f.topo.backends)
        .map(|p| &p.ns)
        .collect();
    let before: Vec<(u64, u64)> = namespaces
        .iter()
        .map(|ns| csum_errors(ns))
        .collect::<Result<_>>()?;

    // Several multi-megabyte TCP transfers through the VIP, echoed back byte for byte.
    for seed in 0..3u64 {
        let data = payload(8 * 1024 * 1024, seed);
        let back = tcp_echo(&f.topo.client.ns, addr(echo_service()), &data)?;
        ensure!(
            back.len() == data.len(),
            "echoed {} of {} bytes",
            back.len(),
            data.len()
        );
        ensure!(
            back == data,
            "the echoed 8 MiB differ from what was sent (seed {seed})"
        );
    }
    // UDP datagrams, including ones larger than the MTU (sent as IP fragments both ways).
    for (i, len) in [1, 512, 1400, 1472, 3000, 8000, 20000]
        .into_iter()
        .enumerate()
    {
        let s = udp_flow(&f.topo.client.ns, addr(udp_service()))?;
        let data = payload(len, 100 + i as u64);
        let (_, echoed) = udp_ask(&s, &data)?;
        ensure!(
            echoed == data,
            "UDP payload of {len} bytes came back different"
        );
    }

    let after: Vec<(u64, u64)> = namespaces
        .iter()
        .map(|ns| csum_errors(ns))
        .collect::<Result<_>>()?;
    assert_eq!(
        before, after,
        "TcpInCsumErrors/UdpInCsumErrors grew in some namespace"
    );
    let d = drops(&dp.maps()?)?;
    assert!(d.values().all(|n| *n == 0), "unexpected drops: {d:?}");
    Ok(())
}

#[test]
fn established_flows_keep_their_backend_while_others_come_and_go() -> Result<()> {
    if !privileged("affinity") {
        return Ok(());
    }
    let f = Fixture::new("keep", 4)?;
    let dp = f.load()?;
    let mut table = dp.service_table()?;
    table.upsert(http_service(), &f.backends(&[0, 1, 2], HTTP_PORT))?;
    table.upsert(udp_service(), &f.backends(&[0, 1, 2], UDP_ECHO_PORT))?;

    let mut conn = HttpConn::open(&f.topo.client.ns, addr(http_service()))?;
    let tcp_backend = conn.get()?;
    let flow = udp_flow(&f.topo.client.ns, addr(udp_service()))?;
    let udp_backend = udp_ask(&flow, b"hello")?.0;

    // Add a backend, then remove one that neither flow uses: both flows stay put.
    table.upsert(http_service(), &f.backends(&[0, 1, 2, 3], HTTP_PORT))?;
    table.upsert(udp_service(), &f.backends(&[0, 1, 2, 3], UDP_ECHO_PORT))?;
    for _ in 0..20 {
        assert_eq!(conn.get()?, tcp_backend);
        assert_eq!(udp_ask(&flow, b"again")?.0, udp_backend);
    }
    let removed = (0..4)
        .find(|i| f.name(*i) != tcp_backend && f.name(*i) != udp_backend)
        .context("a backend no flow uses")?;
    let kept: Vec<usize> = (0..4).filter(|i| *i != removed).collect();
    table.upsert(http_service(), &f.backends(&kept, HTTP_PORT))?;
    table.upsert(udp_service(), &f.backends(&kept, UDP_ECHO_PORT))?;
    for _ in 0..20 {
        assert_eq!(conn.get()?, tcp_backend);
        assert_eq!(udp_ask(&flow, b"still")?.0, udp_backend);
    }

    // New connections never reach the removed backend, and the added one gets its share.
    let http = addr(http_service());
    let names: Vec<String> = f
        .topo
        .client
        .ns
        .run(|| (0..300).map(|_| http_get_once(http)).collect::<Result<_>>())?;
    let counts = count(&names);
    assert!(!counts.contains_key(f.name(removed)), "{counts:?}");
    assert!(
        counts.get(f.name(3)).copied().unwrap_or(0) > 50,
        "{counts:?}"
    );

    // A UDP flow whose own backend is removed moves to a live backend, not into a black hole.
    let udp_idx = (0..4)
        .find(|i| f.name(*i) == udp_backend)
        .context("udp backend")?;
    let live: Vec<usize> = kept.iter().copied().filter(|i| *i != udp_idx).collect();
    table.upsert(udp_service(), &f.backends(&live, UDP_ECHO_PORT))?;
    let moved = udp_ask(&flow, b"moved")?.0;
    assert_ne!(moved, udp_backend);
    assert!(
        live.iter().any(|i| f.name(*i) == moved),
        "{moved} is not live"
    );

    // A TCP connection whose backend is removed (not drained) ends with a reset, and new
    // connections go elsewhere.
    let tcp_idx = (0..4)
        .find(|i| f.name(*i) == tcp_backend)
        .context("tcp backend")?;
    let live: Vec<usize> = kept.iter().copied().filter(|i| *i != tcp_idx).collect();
    table.upsert(http_service(), &f.backends(&live, HTTP_PORT))?;
    assert_reset(conn.get())?;
    let names: Vec<String> = f
        .topo
        .client
        .ns
        .run(|| (0..100).map(|_| http_get_once(http)).collect::<Result<_>>())?;
    assert!(!names.contains(&tcp_backend), "{:?}", count(&names));
    Ok(())
}

/// The request failed because the connection was reset (by the datapath, for a removed
/// backend), not by a timeout.
fn assert_reset<T: std::fmt::Debug>(r: Result<T>) -> Result<()> {
    let err = r.err().context("the request succeeded")?;
    let kind = err
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    ensure!(
        kind == Some(ErrorKind::ConnectionReset),
        "expected a reset, got {err:#}"
    );
    Ok(())
}

/// A TCP connection from a chosen source port, with a timeout on the handshake.
fn connect_from(port: u16, to: SocketAddrV4, timeout: Duration) -> std::io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket, sockopt};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(timeout))?;
    bind(&fd, &SocketAddrV4::new(CLIENT_IP, port))?;
    connect(&fd, &to)?;
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(timeout))?;
    Ok(s)
}

/// A handshake that never completed leaves a conntrack entry with no FIN or RST seen. When its
/// backend then turns draining, a new connection that reuses the same 4-tuple (source ports
/// come round again) is a new connection all the same: it must choose a live backend, not
/// follow the stale entry to the draining one.
#[test]
fn a_syn_reusing_the_tuple_of_a_failed_attempt_on_a_draining_backend_chooses_again() -> Result<()> {
    if !privileged("syn-reuse") {
        return Ok(());
    }
    let f = Fixture::new("synre", 1)?;
    let dp = f.load()?;
    let mut table = dp.service_table()?;
    // A backend nobody answers for: an address no pod holds.
    let silent = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 99), HTTP_PORT);
    table.upsert(http_service(), &[silent])?;
    let http = addr(http_service());
    let port = 41_234;
    let first = f
        .topo
        .client
        .ns
        .run(|| connect_from(port, http, Duration::from_millis(300)));
    assert!(first.is_err(), "the silent backend answered");
    let maps = dp.maps()?;
    let stale = maps
        .conntrack_raw()?
        .into_iter()
        .filter(|(_, v)| v.kind == skiff_common::CT_FORWARD && !tcp_closed(v.tcp_flags))
        .count();
    assert!(stale > 0, "the failed attempt left no open conntrack entry");

    // The silent backend turns draining, a live one joins; the same 4-tuple connects again.
    let live = f.backends(&[0], HTTP_PORT);
    table.upsert_with(http_service(), &Backends::new(live, vec![silent]))?;
    let answer = f.topo.client.ns.run(|| -> Result<String> {
        let mut s = connect_from(port, http, Duration::from_secs(2))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })?;
    assert!(
        answer.contains(f.name(0)),
        "the reused 4-tuple was not answered by the live backend: {answer:?}"
    );
    Ok(())
}

#[test]
fn a_draining_backend_keeps_its_connections_but_gets_no_new_ones_until_it_is_removed() -> Result<()>
{
    if !privileged("draining") {
        return Ok(());
    }
    let f = Fixture::new("drain", 3)?;
    // Offloads off, so the reset the datapath builds must carry correct checksums to count.
    f.topo.set_checksum_offload(false)?;
    let dp = f.load()?;
    let mut table = dp.service_table()?;
    table.upsert(http_service(), &f.backends(&f.all(), HTTP_PORT))?;
    table.upsert(udp_service(), &f.backends(&f.all(), UDP_ECHO_PORT))?;
    let index = |name: &str| (0..3).find(|i| f.name(*i) == name).context("backend name");

    // A long-lived TCP connection on backend X, a UDP flow on backend Z.
    let mut conn = HttpConn::open(&f.topo.client.ns, addr(http_service()))?;
    let x_name = conn.get()?;
    let x = index(&x_name)?;
    let flow = udp_flow(&f.topo.client.ns, addr(udp_service()))?;
    let z_name = udp_ask(&flow, b"hello")?.0;
    let z = index(&z_name)?;
    let others = |not: usize| -> Vec<usize> { (0..3).filter(|i| *i != not).collect() };

    // X and Z turn draining (their pods are terminating).
    let drain = |active: &[usize], draining: &[usize], port: u16| {
        Backends::new(f.backends(active, port), f.backends(draining, port))
    };
    table.upsert_with(http_service(), &drain(&others(x), &[x], HTTP_PORT))?;
    table.upsert_with(udp_service(), &drain(&others(z), &[z], UDP_ECHO_PORT))?;
    let listing = show_json(&f.topo.node, &f.instance)?;
    let http_listing = listing["services"]
        .as_array()
        .and_then(|v| v.iter().find(|s| s["service"]["port"] == 80))
        .context("the HTTP service in the listing")?;
    assert_eq!(
        http_listing["draining"],
        serde_json::json!([f.backends(&[x], HTTP_PORT)[0].to_string()]),
        "{http_listing}"
    );

    // The old flows go on; none of many new ones reaches a draining backend.
    for _ in 0..20 {
        assert_eq!(conn.get()?, x_name);
        assert_eq!(udp_ask(&flow, b"still")?.0, z_name);
    }
    let http = addr(http_service());
    let names: Vec<String> = f
        .topo
        .client
        .ns
        .run(|| (0..200).map(|_| http_get_once(http)).collect::<Result<_>>())?;
    let counts = count(&names);
    assert!(!counts.contains_key(&x_name), "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
    let udp_names: Vec<String> = (0..100)
        .map(|i: u32| {
            let s = udp_flow(&f.topo.client.ns, addr(udp_service()))?;
            Ok(udp_ask(&s, &i.to_be_bytes())?.0)
        })
        .collect::<Result<_>>()?;
    assert!(!udp_names.contains(&z_name), "{:?}", count(&udp_names));
    assert_eq!(conn.get()?, x_name);

    // Every backend draining: new clients are refused at once, old flows still go on.
    table.upsert_with(http_service(), &drain(&[], &f.all(), HTTP_PORT))?;
    table.upsert_with(udp_service(), &drain(&[], &f.all(), UDP_ECHO_PORT))?;
    let started = Instant::now();
    let refused = f
        .topo
        .client
        .ns
        .run(|| std::net::TcpStream::connect_timeout(&http.into(), Duration::from_secs(3)));
    assert_eq!(
        refused.err().map(|e| e.kind()),
        Some(ErrorKind::ConnectionRefused)
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    let fresh = udp_flow(&f.topo.client.ns, addr(udp_service()))?;
    fresh.send(b"anyone?")?;
    let err = fresh
        .recv(&mut [0u8; 64])
        .expect_err("a new UDP flow was answered with every backend draining");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    for _ in 0..10 {
        assert_eq!(conn.get()?, x_name);
        assert_eq!(udp_ask(&flow, b"draining")?.0, z_name);
    }

    // X and Z removed: X's connection is reset at once; Z's UDP flow moves to an active one.
    let maps = dp.maps()?;
    let before = drops(&maps)?[DropReason::BackendRemoved.name()];
    table.upsert_with(http_service(), &drain(&others(x), &[], HTTP_PORT))?;
    table.upsert_with(udp_service(), &drain(&others(z), &[], UDP_ECHO_PORT))?;
    let started = Instant::now();
    assert_reset(conn.get())?;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the reset took {:?}",
        started.elapsed()
    );
    assert!(drops(&maps)?[DropReason::BackendRemoved.name()] > before);
    let moved = udp_ask(&flow, b"moved")?.0;
    assert_ne!(moved, z_name);
    assert_eq!(csum_errors(&f.topo.client.ns)?, (0, 0));
    Ok(())
}

/// The backend (index) the datapath picks for a new flow from the client's `sport` to `sp`,
/// given the hash seed and the active backends: the slot the flow hash names in the service's
/// Maglev table (of the test configuration's size; a service's first table is the fresh one
/// every node builds from the backend set alone).
fn hash_pick(seed: u32, sport: u16, sp: ServicePort, active: &[usize]) -> usize {
    let h = flow_hash(
        raw_addr(CLIENT_IP.octets()),
        raw_addr(sp.vip.octets()),
        raw_port(sport),
        raw_port(sp.port),
        sp.protocol.number(),
        seed,
    );
    let port = match sp.protocol {
        Protocol::Udp => UDP_ECHO_PORT,
        Protocol::Tcp => HTTP_PORT,
    };
    let names: Vec<([u8; 6], u32)> = active
        .iter()
        .map(|i| {
            let addr = SocketAddrV4::new(skiff_testbed::topo::backend_ip(*i), port);
            (maglev::backend_name(addr), *i as u32)
        })
        .collect();
    let backends: Vec<maglev::Backend<'_>> = names
        .iter()
        .map(|(name, i)| maglev::Backend::new(name, *i))
        .collect();
    let size = test_config("size").maglev_size;
    let table = maglev::build(
        &backends,
        maglev::TableSize::new(size).expect("a valid size"),
    )
    .expect("a table");
    table[h as usize % table.len()] as usize
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend_until_its_timeout() -> Result<()> {
    if !privileged("affinity") {
        return Ok(());
    }
    const SEED: u32 = 0x5eed_0001;
    let f = Fixture::new("affinity", 3)?;
    let mut config = test_config(&f.instance);
    config.hash_seed = Some(SEED);
    let dp = f.load_with(config)?;
    let mut table = dp.service_table()?;
    let all = f.all();
    table.upsert(http_service(), &f.backends(&all, HTTP_PORT))?;
    table.upsert(udp_service(), &f.backends(&all, UDP_ECHO_PORT))?;
    let http = addr(http_service());

    // Without affinity, one client's connections spread over every backend.
    let names: Vec<String> = f
        .topo
        .client
        .ns
        .run(|| (0..150).map(|_| http_get_once(http)).collect::<Result<_>>())?;
    assert_eq!(count(&names).len(), 3, "{:?}", count(&names));

    // With ClientIP affinity, all its new connections and flows land on one backend. The
    // timeout runs from a client's last new flow; it is long enough that a loaded 2-core CI
    // machine does not stall past it between two flows of one loop below.
    let timeout = Duration::from_secs(5);
    let affinity = SessionAffinity::ClientIp { timeout };
    let with_affinity = |which: &[usize], port: u16| {
        Backends::all_active(f.backends(which, port)).with_affinity(affinity)
    };
    table.upsert_with(http_service(), &with_affinity(&all, HTTP_PORT))?;
    table.upsert_with(udp_service(), &with_affinity(&all, UDP_ECHO_PORT))?;
    let names: Vec<String> = f
        .topo
        .client
        .ns
        .run(|| (0..100).map(|_| http_get_once(http)).collect::<Result<_>>())?;
    assert_eq!(count(&names).len(), 1, "{:?}", count(&names));
    let udp_names: Vec<String> = (0..50u32)
        .map(|i| {
            let s = udp_flow(&f.topo.client.ns, addr(udp_service()))?;
            Ok(udp_ask(&s, &i.to_be_bytes())?.0)
        })
        .collect::<Result<_>>()?;
    assert_eq!(count(&udp_names).len(), 1, "{:?}", count(&udp_names));
    let sticky = udp_names[0].clone();
    let sticky_idx = (0..3).find(|i| f.name(*i) == sticky).context("name")?;

    // A flow from a port the hash would send elsewhere still goes to the affinity backend.
    let from_port = |port: u16| -> Result<String> {
        let s = f
            .topo
            .client
            .ns
            .run(|| UdpSocket::bind((CLIENT_IP, port)))?;
        s.connect(addr(udp_service()))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(udp_ask(&s, b"which")?.0)
    };
    let elsewhere = |from: u16| {
        (from..from + 1000)
            .find(|p| hash_pick(SEED, *p, udp_service(), &all) != sticky_idx)
            .context("a port hashing to another backend")
    };
    // Ports below the ephemeral range (32768-60999), so that no earlier flow of this client
    // used them by chance.
    let port = elsewhere(20_000)?;
    assert_eq!(from_port(port)?, sticky);

    // The listing shows the client's affinity to that backend.
    let report = show_json(&f.topo.node, &f.instance)?;
    let entries = report["affinity"].as_array().context("affinity section")?;
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|e| e["client"] == CLIENT_IP.to_string().as_str()),
        "{entries:?}"
    );

    // Past the timeout the hash picks again, and the new pick sticks.
    thread::sleep(timeout + Duration::from_millis(500));
    let port = elsewhere(21_000)?;
    let picked = f
        .name(hash_pick(SEED, port, udp_service(), &all))
        .to_owned();
    let got = from_port(port)?;
    if got != picked {
        panic!(
            "a new flow from port {port} {}s after its client's last new flow went to {got}, not to its hash's pick {picked} (the affinity was to {sticky}); the datapath: {:#}",
            timeout.as_secs_f64() + 0.5,
            show_json(&f.topo.node, &f.instance)?
        );
    }
    assert_ne!(picked, sticky);
    for i in 0..20u32 {
        let s = udp_flow(&f.topo.client.ns, addr(udp_service()))?;
        assert_eq!(udp_ask(&s, &i.to_be_bytes())?.0, picked);
    }

    // A draining backend is no one's affinity: new connections move to an active one, and
    // stick there.
    let http_sticky = (0..3).find(|i| f.name(*i) == names[0]).context("name")?;
    let active: Vec<usize> = (0..3).filter(|i| *i != http_sticky).collect();
    table.upsert_with(
        http_service(),
        &Backends::new(
            f.backends(&active, HTTP_PORT),
            f.backends(&[http_sticky], HTTP_PORT),
        )
        .with_affinity(affinity),
    )?;
    let names: Vec<String> = f
        .topo
        .client
        .ns
        .run(|| (0..50).map(|_| http_get_once(http)).collect::<Result<_>>())?;
    let counts = count(&names);
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert!(!counts.contains_key(f.name(http_sticky)), "{counts:?}");
    Ok(())
}

#[test]
fn a_pod_reaches_its_own_server_through_a_service_whose_backend_it_is() -> Result<()> {
    if !privileged("hairpin") {
        return Ok(());
    }
    let f = Fixture::new("hairpin", 1)?;
    // Offloads off, so every checksum the hairpin translation writes is checked by a kernel.
    f.topo.set_checksum_offload(false)?;
    // The client pod runs the servers too: it is its own Service's only backend.
    let own = Backend::start(&f.topo.client.ns, "client-itself")?;
    let dp = f.load()?;
    let mut table = dp.service_table()?;
    let me = |port: u16| vec![SocketAddrV4::new(CLIENT_IP, port)];
    table.upsert(http_service(), &me(HTTP_PORT))?;
    table.upsert(udp_service(), &me(UDP_ECHO_PORT))?;
    table.upsert(echo_service(), &me(TCP_ECHO_PORT))?;

    // TCP: one request per connection, a kept-alive connection, and a bulk echo.
    let http = addr(http_service());
    let names: Vec<String> = f
        .topo
        .client
        .ns
        .run(|| (0..20).map(|_| http_get_once(http)).collect::<Result<_>>())?;
    assert!(names.iter().all(|n| *n == own.name), "{:?}", count(&names));
    let mut conn = HttpConn::open(&f.topo.client.ns, http)?;
    for _ in 0..10 {
        assert_eq!(conn.get()?, own.name);
    }
    let data = payload(4 * 1024 * 1024, 5);
    let back = tcp_echo(&f.topo.client.ns, addr(echo_service()), &data)?;
    ensure!(back == data, "the hairpin echo differs from what was sent");

    // UDP, from the VIP's point of view: replies come from the VIP. A datagram larger than
    // the MTU is fragmented both ways.
    let flow = udp_flow(&f.topo.client.ns, addr(udp_service()))?;
    for len in [1, 1400, 6000] {
        let data = payload(len, len as u64);
        let (name, echoed) = udp_ask(&flow, &data)?;
        assert_eq!(name, own.name);
        ensure!(
            echoed == data,
            "a {len}-byte hairpin datagram came back different"
        );
    }

    // The server saw the hairpin address as its peer: that is where the reverse entries point.
    let hairpin = std::net::Ipv4Addr::from(skiff_common::DEFAULT_HAIRPIN_ADDR);
    let report = show_json(&f.topo.node, &f.instance)?;
    let ct = report["conntrack"].as_array().context("conntrack")?;
    let reverse_to_hairpin = ct
        .iter()
        .filter(|e| e["direction"] == "reverse")
        .filter(|e| {
            e["destination"]
                .as_str()
                .is_some_and(|d| d.starts_with(&format!("{hairpin}:")))
        })
        .count();
    assert!(reverse_to_hairpin >= 3, "{ct:?}");

    // A Service with the pod and another backend spreads over both.
    table.upsert(
        http_service(),
        &[
            SocketAddrV4::new(CLIENT_IP, HTTP_PORT),
            f.backends(&[0], HTTP_PORT)[0],
        ],
    )?;
    let names: Vec<String> = f
        .topo
        .client
        .ns
        .run(|| (0..100).map(|_| http_get_once(http)).collect::<Result<_>>())?;
    let counts = count(&names);
    assert_eq!(counts.len(), 2, "{counts:?}");

    let d = drops(&dp.maps()?)?;
    assert!(d.values().all(|n| *n == 0), "unexpected drops: {d:?}");
    assert_eq!(csum_errors(&f.topo.client.ns)?, (0, 0));
    Ok(())
}

#[test]
fn a_service_without_backends_refuses_clients_at_once_and_counts_them() -> Result<()> {
    if !privileged("refuse") {
        return Ok(());
    }
    let f = Fixture::new("refuse", 1)?;
    let dp = f.load()?;
    let mut table = dp.service_table()?;
    let tcp_sp = ServicePort::new(EMPTY_VIP, 80, Protocol::Tcp);
    let udp_sp = ServicePort::new(EMPTY_VIP, 53, Protocol::Udp);
    table.upsert(tcp_sp, &[])?;
    table.upsert(udp_sp, &[])?;

    const TRIES: usize = 20;
    let tcp = addr(tcp_sp);
    let tcp_results: Vec<(ErrorKind, Duration)> = f.topo.client.ns.run(|| {
        (0..TRIES)
            .map(|_| {
                let t = Instant::now();
                let r = std::net::TcpStream::connect_timeout(&tcp.into(), Duration::from_secs(3));
                (r.err().map_or(ErrorKind::Other, |e| e.kind()), t.elapsed())
            })
            .collect()
    });
    for (kind, took) in &tcp_results {
        assert_eq!(*kind, ErrorKind::ConnectionRefused, "{tcp_results:?}");
        assert!(*took < Duration::from_millis(500), "refusal took {took:?}");
    }
    for _ in 0..TRIES {
        let s = udp_flow(&f.topo.client.ns, addr(udp_sp))?;
        s.send(b"anyone?")?;
        let mut buf = [0u8; 64];
        let err = s
            .recv(&mut buf)
            .expect_err("a reply from a service without backends");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    }

    let maps = dp.maps()?;
    let tcp_id = table.service_id(&tcp_sp).context("id")?;
    let udp_id = table.service_id(&udp_sp).context("id")?;
    assert_eq!(maps.counters(tcp_id)?.rejected, TRIES as u64);
    assert_eq!(maps.counters(udp_id)?.rejected, TRIES as u64);
    assert_eq!(
        drops(&maps)?[DropReason::NoBackend.name()],
        2 * TRIES as u64
    );
    assert!(
        maps.conntrack_raw()?.is_empty(),
        "refused flows left conntrack entries"
    );

    // Once it has a backend, the same service serves.
    table.upsert(tcp_sp, &f.backends(&[0], HTTP_PORT))?;
    let name = f.topo.client.ns.run(|| http_get_once(tcp))?;
    assert_eq!(name, f.name(0));
    Ok(())
}

#[test]
fn traffic_survives_the_loader_being_killed_and_a_restart_adopts_the_pins() -> Result<()> {
    if !privileged("restart") {
        return Ok(());
    }
    let f = Fixture::new("restart", 4)?;
    let ifaces = f.topo.pod_interfaces();
    let file = ServicesFile::new(&f.instance);
    file.write(&desired([
        (http_service(), f.backends(&[0, 1, 2], HTTP_PORT)),
        (udp_service(), f.backends(&[0, 1, 2], UDP_ECHO_PORT)),
    ]))?;
    let mut loader = LoaderProcess::start(&f.topo.node, &f.instance, &ifaces, file.path())?;
    loader.wait_for("synced generation 1: 2 created", Duration::from_secs(20))?;
    loader.wait_for("ready:", Duration::from_secs(20))?;
    let links_before = link_ids(&show_json(&f.topo.node, &f.instance)?)?;

    let mut conn = HttpConn::open(&f.topo.client.ns, addr(http_service()))?;
    let backend = conn.get()?;
    loader.kill()?;

    // No loader runs: the pinned links and maps keep forwarding, old and new flows alike.
    for _ in 0..20 {
        assert_eq!(conn.get()?, backend);
    }
    let http = addr(http_service());
    let names: Vec<String> = f
        .topo
        .client
        .ns
        .run(|| (0..60).map(|_| http_get_once(http)).collect::<Result<_>>())?;
    assert_eq!(count(&names).len(), 3, "{:?}", count(&names));

    // Restart under load: a thread keeps using the open connection throughout.
    file.write(&desired([
        (http_service(), f.backends(&[0, 1, 2, 3], HTTP_PORT)),
        (udp_service(), f.backends(&[0, 1, 2], UDP_ECHO_PORT)),
    ]))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        thread::spawn(move || -> Result<(HttpConn, usize)> {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let got = conn.get()?;
                ensure!(got == backend, "the open connection moved to {got}");
                n += 1;
            }
            Ok((conn, n))
        })
    };
    let mut loader = LoaderProcess::start(&f.topo.node, &f.instance, &ifaces, file.path())?;
    let loaded = loader.wait_for("loaded:", Duration::from_secs(20))?;
    assert!(loaded.contains("2 services adopted"), "{loaded}");
    loader.wait_for(
        "synced generation 1: 0 created, 1 updated",
        Duration::from_secs(20),
    )?;
    loader.wait_for("ready:", Duration::from_secs(20))?;
    let attached: Vec<&String> = loader
        .seen
        .iter()
        .filter(|l| l.starts_with("attached"))
        .collect();
    assert_eq!(attached.len(), 2 * ifaces.len(), "{:?}", loader.seen);
    for line in attached {
        assert!(line.ends_with("Replaced"), "a link was not adopted: {line}");
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (_conn, requests) = hammer
        .join()
        .map_err(|_| anyhow::anyhow!("hammer panicked"))??;
    assert!(
        requests > 10,
        "only {requests} requests ran during the restart"
    );

    // Same links as before (adopted, not recreated), all live; the update is served.
    let report = show_json(&f.topo.node, &f.instance)?;
    assert_eq!(link_ids(&report)?, links_before);
    let names: Vec<String> = f
        .topo
        .client
        .ns
        .run(|| (0..200).map(|_| http_get_once(http)).collect::<Result<_>>())?;
    assert!(count(&names).contains_key(f.name(3)), "{:?}", count(&names));
    Ok(())
}

/// (interface, hook) -> link ID of every attachment, all of which must be live.
fn link_ids(report: &serde_json::Value) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for a in report["attached"].as_array().context("no attached list")? {
        ensure!(a["live"] == true, "attachment not live: {a}");
        out.insert(
            format!("{}:{}", a["interface"].as_str().unwrap_or("?"), a["hook"]),
            a["link_id"].as_u64().context("no link id")?,
        );
    }
    Ok(out)
}

#[test]
fn counters_and_the_listing_command_agree_with_the_traffic_sent() -> Result<()> {
    if !privileged("counters") {
        return Ok(());
    }
    let f = Fixture::new("count", 3)?;
    let dp = f.load()?;
    let mut table = dp.service_table()?;
    table.upsert(udp_service(), &f.backends(&f.all(), UDP_ECHO_PORT))?;
    table.upsert(http_service(), &f.backends(&f.all(), HTTP_PORT))?;

    // 8 UDP flows of 5 datagrams each; remember which backend answered each flow.
    let (mut bytes, mut reply_bytes) = (0u64, 0u64);
    let mut answered: BTreeMap<u16, String> = BTreeMap::new();
    for flow in 0..8u64 {
        let s = udp_flow(&f.topo.client.ns, addr(udp_service()))?;
        let port = s.local_addr()?.port();
        for i in 0..5u64 {
            let data = payload(100 + 10 * i as usize, flow * 10 + i);
            let (name, echoed) = udp_ask(&s, &data)?;
            bytes += 28 + data.len() as u64;
            reply_bytes += 28 + (name.len() + 1 + echoed.len()) as u64;
            answered.insert(port, name);
        }
    }
    // 10 HTTP requests, each on its own connection.
    let http = addr(http_service());
    f.topo.client.ns.run(|| {
        (0..10)
            .map(|_| http_get_once(http))
            .collect::<Result<Vec<_>>>()
    })?;

    let report = show_json(&f.topo.node, &f.instance)?;
    let services = report["services"].as_array().context("services")?;
    let find = |sp: ServicePort| {
        services
            .iter()
            .find(|s| {
                s["service"]["port"] == sp.port
                    && s["service"]["protocol"] == sp.protocol.to_string()
            })
            .cloned()
            .context("service missing from the listing")
    };
    let udp = find(udp_service())?;
    let c = &udp["counters"];
    assert_eq!(c["packets"], 40);
    assert_eq!(c["bytes"], bytes);
    assert_eq!(c["reply_packets"], 40);
    assert_eq!(c["reply_bytes"], reply_bytes);
    assert_eq!(c["new_flows"], 8);
    assert_eq!(c["rejected"], 0);
    assert_eq!(udp["backends"].as_array().map(Vec::len), Some(3));
    let web = find(http_service())?;
    assert_eq!(web["counters"]["new_flows"], 10);
    assert!(web["counters"]["packets"].as_u64() >= Some(50), "{web}");
    assert!(
        web["counters"]["reply_packets"].as_u64() >= Some(40),
        "{web}"
    );

    // The conntrack listing names, for every UDP flow, the backend that really answered it.
    let ct = report["conntrack"].as_array().context("conntrack")?;
    for (port, name) in &answered {
        let src = SocketAddrV4::new(CLIENT_IP, *port).to_string();
        let fwd = ct
            .iter()
            .find(|e| e["direction"] == "forward" && e["source"] == src.as_str())
            .with_context(|| format!("no forward entry for {src}"))?;
        let idx: usize = name.trim_start_matches("backend-").parse()?;
        let expect = SocketAddrV4::new(f.topo.backends[idx].ip, UDP_ECHO_PORT).to_string();
        assert_eq!(fwd["translated_to"], expect.as_str(), "{fwd}");
        assert_eq!(fwd["destination"], addr(udp_service()).to_string().as_str());
        let rev = ct
            .iter()
            .find(|e| e["direction"] == "reverse" && e["destination"] == src.as_str())
            .with_context(|| format!("no reverse entry for {src}"))?;
        assert_eq!(rev["source"], expect.as_str());
        assert_eq!(
            rev["translated_to"],
            addr(udp_service()).to_string().as_str()
        );
    }
    let attached = report["attached"].as_array().context("attached")?;
    assert_eq!(attached.len(), 2 * f.topo.pod_interfaces().len());
    assert!(attached.iter().all(|a| a["live"] == true), "{attached:?}");
    assert!(
        report["drops"]
            .as_object()
            .context("drops")?
            .values()
            .all(|v| v == 0)
    );
    Ok(())
}

#[test]
fn malformed_and_fragmented_packets_are_handled_or_dropped_as_counted() -> Result<()> {
    if !privileged("malformed") {
        return Ok(());
    }
    let f = Fixture::new("malformed", 2)?;
    f.topo.set_checksum_offload(false)?;
    let dp = f.load()?;
    let mut table: ServiceTable<PinnedMaps> = dp.service_table()?;
    table.upsert(http_service(), &f.backends(&f.all(), HTTP_PORT))?;
    table.upsert(udp_service(), &f.backends(&f.all(), UDP_ECHO_PORT))?;
    let maps = dp.maps()?;
    let raw = RawSender::open(&f.topo.client, &f.topo.node)?;
    let settle = || thread::sleep(Duration::from_millis(100));
    let expect_drop = |reason: DropReason, before: &BTreeMap<&str, u64>| -> Result<()> {
        settle();
        let now = drops(&maps)?;
        let mut want = before.clone();
        *want.entry(reason.name()).or_insert(0) += 1;
        ensure!(
            now == want,
            "expected one more {}: before {before:?}, now {now:?}",
            reason.name()
        );
        Ok(())
    };

    let c = CLIENT_IP;
    // An Ethernet frame that says IPv4 but carries 12 bytes.
    let d = drops(&maps)?;
    raw.send(ETH_P_IP, &Ipv4::new(c, VIP, 6).packet(&[])[..12])?;
    expect_drop(DropReason::MalformedIpv4, &d)?;
    // A header length below the minimum.
    let d = drops(&maps)?;
    let mut bad = Ipv4::new(c, VIP, 6).packet(&rawpkt::tcp_syn(c, VIP, 40001, 80));
    bad[0] = 0x44;
    raw.send(ETH_P_IP, &bad)?;
    expect_drop(DropReason::MalformedIpv4, &d)?;
    // A total length larger than the frame.
    let d = drops(&maps)?;
    let mut long = Ipv4::new(c, VIP, 6).packet(&rawpkt::tcp_syn(c, VIP, 40002, 80));
    long[2..4].copy_from_slice(&1000u16.to_be_bytes());
    raw.send(ETH_P_IP, &long)?;
    expect_drop(DropReason::MalformedIpv4, &d)?;
    // A TCP header cut short, to a service port.
    let d = drops(&maps)?;
    raw.send(
        ETH_P_IP,
        &Ipv4::new(c, VIP, 6).packet(&rawpkt::tcp_syn(c, VIP, 40003, 80)[..10]),
    )?;
    expect_drop(DropReason::MalformedL4, &d)?;
    // A TCP data offset below 5 words.
    let d = drops(&maps)?;
    let mut syn = rawpkt::tcp_syn(c, VIP, 40004, 80);
    syn[12] = 2 << 4;
    raw.send(ETH_P_IP, &Ipv4::new(c, VIP, 6).packet(&syn))?;
    expect_drop(DropReason::MalformedL4, &d)?;
    // A later fragment whose first fragment never came.
    let d = drops(&maps)?;
    let mut frag = Ipv4::new(c, VIP, 17);
    frag.frag = 100; // offset 800 bytes, no more fragments
    frag.id = 0x4242;
    raw.send(ETH_P_IP, &frag.packet(&[0u8; 64]))?;
    expect_drop(DropReason::FragmentUntracked, &d)?;
    // ICMP echo to a VIP.
    let d = drops(&maps)?;
    raw.send(
        ETH_P_IP,
        &Ipv4::new(c, VIP, 1).packet(&rawpkt::icmp_echo(7, 1)),
    )?;
    expect_drop(DropReason::UnsupportedProtocol, &d)?;
    ensure!(
        maps.conntrack_raw()?.is_empty(),
        "dropped packets created conntrack entries: {:?}",
        maps.conntrack_raw()?
    );

    // Handled, not dropped: a SYN with IP options is translated like any other (the reply
    // comes back translated too; the client kernel, having no socket, answers it with a RST).
    let d = drops(&maps)?;
    let mut opts = Ipv4::new(c, VIP, 6);
    opts.options = vec![1, 1, 1, 0]; // NOP, NOP, NOP, end of options
    raw.send(ETH_P_IP, &opts.packet(&rawpkt::tcp_syn(c, VIP, 40010, 80)))?;
    settle();
    ensure!(drops(&maps)? == d, "a SYN with IP options was dropped");
    let entries = maps.conntrack_raw()?;
    let fwd = entries
        .iter()
        .find(|(k, _)| k.sport == 40010u16.to_be())
        .context("no conntrack entry for the SYN with IP options")?;
    let backend_ip = Ipv4Addr::from(fwd.1.nat_addr.to_ne_bytes());
    ensure!(
        f.topo.backend_index(backend_ip).is_some() && fwd.1.nat_port == HTTP_PORT.to_be(),
        "translated to {backend_ip}:{}",
        u16::from_be(fwd.1.nat_port)
    );
    ensure!(
        Ipv4Addr::from(fwd.0.daddr.to_ne_bytes()) == VIP,
        "conntrack key corrupted: {:?}",
        fwd.0
    );

    // Handled: a UDP datagram without checksum (0, legal in IPv4) is translated and its
    // checksum stays "none", so the backend accepts it and the echo reaches a socket.
    let listener = f
        .topo
        .client
        .ns
        .run(|| UdpSocket::bind((CLIENT_IP, 41000)))?;
    listener.set_read_timeout(Some(Duration::from_secs(3)))?;
    raw.send(
        ETH_P_IP,
        &Ipv4::new(c, VIP, 17).packet(&rawpkt::udp(c, VIP, 41000, 53, b"no-checksum", false)),
    )?;
    let mut buf = [0u8; 256];
    let (n, from) = listener
        .recv_from(&mut buf)
        .context("no echo for the checksum-less datagram")?;
    ensure!(buf[..n].ends_with(b"|no-checksum"), "echo {:?}", &buf[..n]);
    ensure!(
        from == std::net::SocketAddr::from(addr(udp_service())),
        "reply from {from}"
    );

    // Handled: real fragmented datagrams both ways.
    let s = udp_flow(&f.topo.client.ns, addr(udp_service()))?;
    let big = payload(6000, 9);
    ensure!(
        udp_ask(&s, &big)?.1 == big,
        "a fragmented datagram came back different"
    );

    // Nothing is broken afterwards.
    let name = f
        .topo
        .client
        .ns
        .run(|| http_get_once(addr(http_service())))?;
    ensure!(name.starts_with("backend-"), "{name}");
    let (tcp_err, udp_err) = csum_errors(&f.topo.client.ns)?;
    ensure!(
        tcp_err == 0 && udp_err == 0,
        "client saw checksum errors: {tcp_err} {udp_err}"
    );
    Ok(())
}

#[test]
fn addresses_in_the_service_cidr_without_a_service_are_refused_and_counted() -> Result<()> {
    if !privileged("no-service") {
        return Ok(());
    }
    let f = Fixture::new("nosvc", 1)?;
    let dp = f.load()?;
    let mut table = dp.service_table()?;
    table.upsert(http_service(), &f.backends(&[0], HTTP_PORT))?;
    let refused = |target: SocketAddrV4| -> Result<()> {
        let started = Instant::now();
        let err = f
            .topo
            .client
            .ns
            .run(|| std::net::TcpStream::connect_timeout(&target.into(), Duration::from_secs(3)))
            .err()
            .with_context(|| format!("connected to {target}"))?;
        ensure!(
            err.kind() == ErrorKind::ConnectionRefused,
            "{target}: {err}"
        );
        ensure!(
            started.elapsed() < Duration::from_millis(500),
            "{target} took {:?}",
            started.elapsed()
        );
        Ok(())
    };
    // A port the VIP does not serve, and an address no service has.
    refused(SocketAddrV4::new(VIP, 81))?;
    refused(SocketAddrV4::new(Ipv4Addr::new(10, 96, 7, 7), 80))?;
    assert_eq!(drops(&dp.maps()?)?[DropReason::NoService.name()], 2);

    // A deleted service's VIP is refused at once, and its conntrack entries are collected.
    let name = f
        .topo
        .client
        .ns
        .run(|| http_get_once(addr(http_service())))?;
    assert_eq!(name, f.name(0));
    let mut maps = dp.maps()?;
    assert!(!maps.conntrack_raw()?.is_empty());
    table.delete(&http_service())?;
    refused(addr(http_service()))?;
    let live = table
        .service_ports()
        .filter_map(|sp| table.service_id(sp))
        .collect();
    let purged = maps.purge_conntrack(&live)?;
    assert!(purged >= 2, "purged {purged}");
    table.release_quarantined();
    assert!(
        maps.conntrack_raw()?.is_empty(),
        "{:?}",
        maps.conntrack_raw()?
    );
    Ok(())
}

#[test]
fn one_client_port_to_two_services_sharing_a_backend_keeps_both_flows_apart() -> Result<()> {
    if !privileged("clash") {
        return Ok(());
    }
    let f = Fixture::new("clash", 2)?;
    let dp = f.load()?;
    let mut table = dp.service_table()?;
    let vip2 = Ipv4Addr::new(10, 96, 0, 11);
    let first = udp_service();
    let second = ServicePort::new(vip2, 53, Protocol::Udp);
    table.upsert(first, &f.backends(&[0], UDP_ECHO_PORT))?;
    // Only the backend the first flow uses: the second flow from the same port cannot have it
    // without taking over the first flow's replies.
    table.upsert(second, &f.backends(&[0], UDP_ECHO_PORT))?;

    // One unconnected socket, one source port, two destinations.
    let sock = f
        .topo
        .client
        .ns
        .run(|| UdpSocket::bind((CLIENT_IP, 42000)))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let ask = |to: SocketAddrV4| -> Result<(std::net::SocketAddr, String)> {
        sock.send_to(b"who", to)?;
        let mut buf = [0u8; 256];
        let (n, from) = sock.recv_from(&mut buf)?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        Ok((from, text.split('|').next().unwrap_or("").to_owned()))
    };
    let (from, name) = ask(addr(first))?;
    assert_eq!((from, name.as_str()), (addr(first).into(), f.name(0)));
    let maps = dp.maps()?;
    let before = drops(&maps)?[DropReason::ConntrackClash.name()];
    sock.send_to(b"who", addr(second))?;
    thread::sleep(Duration::from_millis(200));
    assert_eq!(drops(&maps)?[DropReason::ConntrackClash.name()], before + 1);
    // The first flow still gets its own replies, from its own VIP.
    let (from, name) = ask(addr(first))?;
    assert_eq!((from, name.as_str()), (addr(first).into(), f.name(0)));

    // With a second backend the second flow goes there, and both flows stay apart.
    table.upsert(second, &f.backends(&[0, 1], UDP_ECHO_PORT))?;
    for _ in 0..5 {
        let (from, name) = ask(addr(second))?;
        assert_eq!((from, name.as_str()), (addr(second).into(), f.name(1)));
        let (from, name) = ask(addr(first))?;
        assert_eq!((from, name.as_str()), (addr(first).into(), f.name(0)));
    }
    Ok(())
}

#[test]
fn a_client_port_freed_by_a_finished_connection_reaches_another_service_on_the_same_backend()
-> Result<()> {
    if !privileged("reuse") {
        return Ok(());
    }
    let f = Fixture::new("reuse", 1)?;
    let dp = f.load()?;
    let mut table = dp.service_table()?;
    // Four Services, each a different VIP, all on the same backend address and port.
    let services: Vec<ServicePort> = (0..4u8)
        .map(|i| ServicePort::new(Ipv4Addr::new(10, 96, 0, 11 + i), 81, Protocol::Tcp))
        .collect();
    for sp in &services {
        table.upsert(*sp, &f.backends(&[0], HTTP_PORT))?;
    }
    // One source port only: the client reuses it for the next Service as soon as its connection
    // is over, as a busy client does with any port. (Each Service is asked once: whichever side
    // closed first, the client's own 4-tuple may sit in TIME_WAIT.)
    f.topo
        .client
        .ns
        .sysctl("net.ipv4.ip_local_port_range", "40000 40000")?;
    let client = &f.topo.client.ns;
    for sp in &services {
        let started = Instant::now();
        let body = client
            .run(|| http_get_once(addr(*sp)))
            .with_context(|| format!("asking {sp}"))?;
        assert_eq!(body.trim(), f.name(0));
        // A refused SYN would only succeed on its retransmission, a second later.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{sp} took {:?}",
            started.elapsed()
        );
        // The premise: the connection is over (a FIN each way) before the port is reused.
        // The client may return before nginx's FIN has crossed, so wait for it.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !dp
            .maps()?
            .conntrack_raw()?
            .iter()
            .all(|(_, v)| tcp_closed(v.tcp_flags))
        {
            ensure!(
                Instant::now() < deadline,
                "the connection to {sp} never finished"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(drops(&dp.maps()?)?[DropReason::ConntrackClash.name()], 0);
    Ok(())
}

#[test]
fn icmp_errors_about_service_flows_reach_the_client_translated() -> Result<()> {
    if !privileged("icmp") {
        return Ok(());
    }
    let f = Fixture::new("icmp", 2)?;
    f.topo.set_checksum_offload(false)?;
    let dp = f.load()?;
    let mut table = dp.service_table()?;

    // A backend port nobody listens on: the backend's "port unreachable" quotes the backend's
    // address; translated, it reaches the client's socket (connected to the VIP) as a refusal.
    let closed = ServicePort::new(VIP, 54, Protocol::Udp);
    table.upsert(closed, &f.backends(&[0], 5999))?;
    let s = udp_flow(&f.topo.client.ns, addr(closed))?;
    s.send(b"anyone?")?;
    let mut buf = [0u8; 64];
    let err = s.recv(&mut buf).expect_err("a reply from a closed port");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    // Path MTU discovery: the node's routes to the backends allow only 1000 bytes, so the node
    // answers full-size segments with "fragmentation needed" quoting the translated packet.
    // Unless that error is translated back, the client never shrinks its segments and the
    // transfer stalls.
    for b in &f.topo.backends {
        let dst = format!("{}/32", b.ip);
        f.topo
            .node
            .ip(&["route", "replace", &dst, "dev", &b.host_if, "mtu", "1000"])?;
    }
    table.upsert(echo_service(), &f.backends(&[0, 1], TCP_ECHO_PORT))?;
    let data = payload(2 * 1024 * 1024, 77);
    let back = tcp_echo(&f.topo.client.ns, addr(echo_service()), &data)?;
    ensure!(back == data, "the echo through a smaller path MTU differs");
    let (tcp_err, udp_err) = csum_errors(&f.topo.client.ns)?;
    ensure!(
        tcp_err == 0 && udp_err == 0,
        "checksum errors {tcp_err} {udp_err}"
    );
    Ok(())
}

#[test]
fn an_attach_from_the_wrong_namespace_fails_and_leaves_live_links_alone() -> Result<()> {
    if !privileged("wrong-ns") {
        return Ok(());
    }
    let f = Fixture::new("wrongns", 1)?;
    let seed = {
        let dp = f.load()?;
        dp.maps()?.settings()?.hash_seed
    };
    let links = link_ids(&show_json(&f.topo.node, &f.instance)?)?;
    let attach = |netns: Option<&std::path::Path>| -> Result<std::process::Output> {
        let mut cmd = std::process::Command::new(skiff_testbed::workspace_binary("skiff-agent")?);
        if let Some(ns) = netns {
            cmd.arg("--netns").arg(ns);
        }
        cmd.args([
            "datapath",
            "attach",
            "--instance",
            &f.instance,
            "--iface",
            "vc",
        ])
        .args(skiff_tests::loader::capacity_flags());
        Ok(cmd.output()?)
    };
    // From the host's namespace, where no interface "vc" exists.
    let out = attach(None)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "attach in the wrong namespace succeeded"
    );
    assert!(stderr.contains("in this network namespace"), "{stderr}");
    assert_eq!(link_ids(&show_json(&f.topo.node, &f.instance)?)?, links);

    // From the right namespace the links are adopted, and the recorded hash seed is kept.
    let out = attach(Some(f.topo.node.path()))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Replaced"));
    assert_eq!(link_ids(&show_json(&f.topo.node, &f.instance)?)?, links);
    let maps = PinnedMaps::open(&skiff_agent::datapath::PinLayout::new(
        std::path::Path::new("/sys/fs/bpf"),
        &f.instance,
    )?)?;
    assert_eq!(maps.settings()?.hash_seed, seed);
    Ok(())
}

#[test]
fn an_upgrade_replaces_a_short_lived_map_of_another_layout_and_refuses_any_other() -> Result<()> {
    if !privileged("pin_layout") {
        return Ok(());
    }
    let instance = skiff_testbed::unique_prefix("layout");
    let _pins = PinsGuard::new(&instance)?;
    drop(Datapath::load(test_config(&instance))?);
    // FRAGMENTS holds translations for seconds: another layout of it is made afresh.
    let mut grown = test_config(&instance);
    grown.capacities.fragments *= 2;
    drop(Datapath::load(grown.clone()).context("a FRAGMENTS map of another layout was refused")?);
    // The established table's default size follows the node's memory: a pinned one of another
    // size is kept, with its flows.
    let mut resized = grown.clone();
    resized.capacities.ct_established *= 2;
    let dp = Datapath::load(resized).context("a CT_ESTABLISHED of another size was refused")?;
    let (established, _) = dp.maps()?.ct_capacities()?;
    ensure!(
        established == grown.capacities.ct_established,
        "{established}"
    );
    drop(dp);
    // CONNTRACK holds live flows: another layout is refused, and says why.
    let mut other = grown;
    other.capacities.conntrack *= 2;
    let err = match Datapath::load(other) {
        Ok(_) => anyhow::bail!("a CONNTRACK map of another layout was adopted"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("CONNTRACK") || err.contains("conntrack"),
        "the refusal names the map: {err}"
    );
    Ok(())
}

/// Kept-alive connections through `sp`, each asked once; returns them with the backend each
/// reached.
fn open_kept_alive(f: &Fixture, sp: ServicePort, n: usize) -> Result<Vec<(HttpConn, String)>> {
    (0..n)
        .map(|_| {
            let mut c = HttpConn::open(&f.topo.client.ns, addr(sp))?;
            let backend = c.get()?;
            Ok((c, backend))
        })
        .collect()
}

fn ct_events(maps: &PinnedMaps) -> Result<BTreeMap<&'static str, u64>> {
    Ok(maps
        .ct_events()?
        .into_iter()
        .map(|(e, n)| (e.name(), n))
        .collect())
}

#[test]
fn idle_established_flows_keep_their_translation_under_churn_ten_times_the_short_lived_table()
-> Result<()> {
    if !privileged("ct-churn") {
        return Ok(());
    }
    let f = Fixture::new("ctchurn", 6)?;
    // A short-lived table of 512 entries (256 flows): the churn below is ten times that.
    let mut config = test_config(&f.instance);
    config.capacities.conntrack = 512;
    let dp = f.load_with(config)?;
    let mut table = dp.service_table()?;
    table.upsert(http_service(), &f.backends(&[0, 1, 2], HTTP_PORT))?;
    let maps = dp.maps()?;

    // Idle pool connections: each spoke once, then waits while others churn.
    let mut pool = open_kept_alive(&f, http_service(), 40)?;
    let http = addr(http_service());
    let churn = 2_600;
    f.topo
        .client
        .ns
        .run(|| (0..churn).try_for_each(|_| http_get_once(http).map(drop)))?;

    // The service scales out: a flow that lost its entries would be hashed afresh over six
    // backends (half of them would move). Every pool connection still reaches its own
    // backend: its translation survived.
    table.upsert(http_service(), &f.backends(&f.all(), HTTP_PORT))?;
    for (i, (conn, backend)) in pool.iter_mut().enumerate() {
        let now = conn.get().with_context(|| format!("pool connection {i}"))?;
        ensure!(
            now == *backend,
            "pool connection {i} moved from {backend} to {now}"
        );
    }
    let events = ct_events(&maps)?;
    ensure!(
        events["established"] >= 40 + churn && events["closed"] >= churn,
        "{events:?}"
    );
    ensure!(events["established_full"] == 0, "{events:?}");
    ensure!(
        drops(&maps)?.values().all(|n| *n == 0),
        "{:?}",
        drops(&maps)?
    );
    // The pool's flows are in the established table, the churn's closed ones are not.
    let established = maps
        .conntrack_tables()?
        .into_iter()
        .filter(|(established, _, _)| *established)
        .count();
    ensure!(
        (80..100).contains(&established),
        "{established} established entries"
    );
    let run = dp.collector()?.run(&maps)?;
    ensure!(
        run.stats.established as usize == established
            && run.stats.established_tcp == run.stats.established,
        "{run:?}"
    );
    Ok(())
}

#[test]
fn a_full_established_table_leaves_new_flows_working_and_says_so() -> Result<()> {
    if !privileged("ct-full") {
        return Ok(());
    }
    let f = Fixture::new("ctfull", 2)?;
    let mut config = test_config(&f.instance);
    // Room for two flows.
    config.capacities.ct_established = 4;
    let dp = f.load_with(config)?;
    let mut table = dp.service_table()?;
    table.upsert(http_service(), &f.backends(&f.all(), HTTP_PORT))?;
    let maps = dp.maps()?;
    let mut pool = open_kept_alive(&f, http_service(), 6)?;
    for (conn, backend) in &mut pool {
        ensure!(conn.get()? == *backend, "a connection moved");
    }
    let events = ct_events(&maps)?;
    ensure!(
        events["established"] == 2 && events["established_full"] >= 4,
        "{events:?}"
    );
    let run = dp.collector()?.run(&maps)?;
    ensure!(run.stats.established == 4, "{run:?}");
    Ok(())
}

#[test]
fn the_collector_removes_expired_flows_from_both_tables_and_keeps_live_ones() -> Result<()> {
    if !privileged("ct-gc") {
        return Ok(());
    }
    let f = Fixture::new("ctgc", 2)?;
    let mut config = test_config(&f.instance);
    config.timeouts.udp = 1_000_000_000;
    config.timeouts.tcp_closing = 1_000_000_000;
    let dp = f.load_with(config)?;
    let mut table = dp.service_table()?;
    table.upsert(http_service(), &f.backends(&f.all(), HTTP_PORT))?;
    table.upsert(udp_service(), &f.backends(&f.all(), UDP_ECHO_PORT))?;
    let maps = dp.maps()?;
    let collector = dp.collector()?;

    // UDP flows that asked twice (established) and TCP connections that closed (short-lived),
    // and one kept-alive connection that stays.
    for i in 0..10u32 {
        let flow = udp_flow(&f.topo.client.ns, addr(udp_service()))?;
        udp_ask(&flow, &i.to_be_bytes())?;
        udp_ask(&flow, &i.to_be_bytes())?;
    }
    let http = addr(http_service());
    f.topo
        .client
        .ns
        .run(|| (0..10).try_for_each(|_| http_get_once(http).map(drop)))?;
    let (mut conn, backend) = open_kept_alive(&f, http_service(), 1)?
        .pop()
        .context("a connection")?;
    let before = collector.run(&maps)?;
    ensure!(
        before.stats.established_udp == 20 && before.stats.established_tcp == 2,
        "{before:?}"
    );
    ensure!(before.stats.transient >= 20, "{before:?}");

    thread::sleep(Duration::from_millis(2_500));
    let after = collector.run(&maps)?;
    ensure!(
        after.stats.removed_established == 20 && after.stats.removed_transient >= 20,
        "{after:?}"
    );
    ensure!(
        after.stats.established == 2 && after.stats.transient == 0,
        "{after:?}"
    );
    ensure!(conn.get()? == backend, "the live connection moved");
    Ok(())
}

#[test]
fn maglev_sends_new_flows_to_an_added_backend_for_its_share_only_and_keeps_survivors_picks()
-> Result<()> {
    if !privileged("maglev") {
        return Ok(());
    }
    let f = Fixture::new("maglev", 4)?;
    let dp = f.load()?;
    let mut maps = dp.maps()?;
    let mut table = dp.service_table()?;
    // Which backend each of 400 client ports' first flow reaches, with no conntrack entry to
    // remember an earlier pick (entries of earlier rounds are purged).
    let picks = |maps: &mut PinnedMaps| -> Result<Vec<String>> {
        maps.purge_conntrack(&std::collections::BTreeSet::new())?;
        (0..400u16)
            .map(|i| {
                let s = f
                    .topo
                    .client
                    .ns
                    .run(|| UdpSocket::bind((CLIENT_IP, 22_000 + i)))?;
                s.connect(addr(udp_service()))?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                Ok(udp_ask(&s, b"which")?.0)
            })
            .collect()
    };
    table.upsert(udp_service(), &f.backends(&[0, 1, 2], UDP_ECHO_PORT))?;
    let three = picks(&mut maps)?;
    table.upsert(udp_service(), &f.backends(&[0, 1, 2, 3], UDP_ECHO_PORT))?;
    let four = picks(&mut maps)?;
    // Only flows that now go to the new backend moved, about a quarter of them (a `hash % n`
    // pick would move three quarters).
    let moved: Vec<(&String, &String)> = three.iter().zip(&four).filter(|(a, b)| a != b).collect();
    ensure!(
        moved.iter().all(|(_, now)| *now == f.name(3)),
        "flows moved between old backends: {moved:?}"
    );
    ensure!(
        (60..=140).contains(&moved.len()),
        "{} of 400 flows moved to the new backend",
        moved.len()
    );
    // One removed: only its flows move; every other flow keeps its pick.
    table.upsert(udp_service(), &f.backends(&[0, 2, 3], UDP_ECHO_PORT))?;
    let after = picks(&mut maps)?;
    for (before, now) in four.iter().zip(&after) {
        ensure!(
            before == now || before == f.name(1),
            "a flow on a surviving backend moved from {before} to {now}"
        );
    }
    ensure!(!after.contains(&f.name(1).to_owned()));
    // The listing shows each backend's share of the table.
    let report = show_json(&f.topo.node, &f.instance)?;
    let shares = report["services"][0]["maglev_shares"]
        .as_object()
        .context("maglev_shares")?;
    ensure!(shares.len() == 3, "{shares:?}");
    Ok(())
}
