//! The conntrack pressure benchmark (`skiff-bench conntrack`): long-lived idle flows through a
//! Service VIP keep their translation while short connections churn through the same datapath
//! at full speed, many times over the short-lived conntrack table's capacity.
//!
//! One node namespace with a client pod and three backend pods running the benchmark's own
//! servers (`skiff-bench serve`), the datapath loaded in this process with a small short-lived
//! table (`CONNTRACK`, an LRU) and an established table (`CT_ESTABLISHED`) large enough for the
//! idle pool. The idle pool is a set of persistent connections to the echo port, each asked
//! once at the start and then once every `--request-every` seconds (staggered over the
//! interval); the churn is connection-per-request against the one-shot port from two threads;
//! the conntrack collector runs every second. A pool flow is lost when a request fails, is not
//! answered within a few seconds, when its connection is no longer held by the backend that
//! first held it (read from the backends' socket tables at the start and the end), or when the
//! datapath no longer holds the translation it made for it at the start (an evicted flow is
//! translated afresh to the same backend while the backends stay the same, so only its entry
//! shows the loss). Traffic stays inside the namespaces the run creates; namespaces, pins and
//! servers go at the end, error or not.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use skiff_agent::datapath::{
    Collector, ConntrackEntry, Datapath, DatapathConfig, PinnedMaps, Timeouts,
};
use skiff_testbed::{
    netns::Netns,
    pins::PinsGuard,
    topo::{CLIENT_IP, Topology, backend_ip},
    which,
};

use crate::{
    control::procfs,
    load::{self, Latencies, MESSAGE, Proc},
    meta,
    model::{CpuPinning, Meta},
    services,
};

/// Entries of the short-lived table (two a flow): small, so that minutes of churn are many
/// times its capacity.
const SHORT_LIVED_ENTRIES: u32 = 4_096;
/// Entries of the established table: room for the idle pool many times over.
const ESTABLISHED_ENTRIES: u32 = 65_536;
/// The churn must be at least this many times the short-lived table's capacity in flows.
const MIN_CHURN_RATIO: f64 = 10.0;
const BACKENDS: usize = 3;
const CHURN_WORKERS: usize = 2;
/// The agent collects every 5 s by default; every second here, so its cost is sampled often.
const GC_INTERVAL: Duration = Duration::from_secs(1);
/// A pool request not answered within this is a lost flow.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Churn errors kept verbatim for the report.
const ERRORS_KEPT: usize = 5;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub out: PathBuf,
    /// How long the churn runs (the idle pool is asked throughout).
    pub churn: Duration,
    /// Persistent connections kept open and mostly idle.
    pub idle_flows: usize,
    /// Each idle flow sends one request this often.
    pub request_every: Duration,
}

impl Options {
    /// Defaults: 1,000 idle flows asked every 30 s under 180 s of churn; quick: 200 flows asked
    /// every 2 s under 20 s of churn.
    pub fn new(
        quick: bool,
        out: PathBuf,
        seconds: Option<u64>,
        idle_flows: Option<usize>,
        request_every: Option<u64>,
    ) -> Result<Options> {
        let seconds = seconds.unwrap_or(if quick { 20 } else { 180 });
        let idle_flows = idle_flows.unwrap_or(if quick { 200 } else { 1_000 });
        let request_every = request_every.unwrap_or(if quick { 2 } else { 30 });
        if seconds == 0 || request_every == 0 {
            bail!("--seconds and --request-every must be at least 1");
        }
        // Each idle flow holds two established entries and a server thread; the churn needs
        // room in the established table too.
        let most = ESTABLISHED_ENTRIES as usize / 4;
        if idle_flows == 0 || idle_flows > most {
            bail!(
                "--idle-flows takes 1 to {most} (the established table has \
                 {ESTABLISHED_ENTRIES} entries)"
            );
        }
        Ok(Options {
            quick,
            out,
            churn: Duration::from_secs(seconds),
            idle_flows,
            request_every: Duration::from_secs(request_every),
        })
    }
}

/// Everything a run measured; written as `conntrack.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub settings: Settings,
    pub idle: Idle,
    pub churn: Churn,
    pub conntrack: Conntrack,
    pub gc: Gc,
    pub cpu: Cpu,
    /// Why the run failed (empty when it passed).
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub quick: bool,
    pub churn_seconds: f64,
    pub idle_flows: usize,
    pub request_every_seconds: f64,
    pub request_timeout_seconds: f64,
    /// `capacities.conntrack` and `capacities.ct_established`, as the pinned maps report them.
    pub short_lived_entries: u32,
    pub established_entries: u32,
    pub gc_interval_seconds: f64,
    pub churn_workers: usize,
    pub backends: usize,
    pub cpus: CpuPinning,
}

/// The idle pool.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub flows: usize,
    /// Idle flows each backend held at the start.
    pub per_backend: Vec<usize>,
    /// Requests sent on the idle flows: the first of each, those during the churn, and one
    /// more on each after it.
    pub requests: u64,
    pub lost: usize,
    pub losses: Vec<Loss>,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Loss {
    pub flow: usize,
    pub client_port: u16,
    /// Since the churn began.
    pub after_seconds: f64,
    pub reason: String,
}

/// The short connections.
#[derive(Debug, Clone, Serialize)]
pub struct Churn {
    /// Connections that completed (connect, request, whole answer, close).
    pub connections: u64,
    pub failed: u64,
    pub per_second: f64,
    /// Connections each backend answered.
    pub per_backend: Vec<u64>,
    /// The short-lived table's capacity in flows (two entries each).
    pub short_lived_capacity_flows: u32,
    /// Completed connections ÷ that capacity.
    pub times_capacity: f64,
    /// The first few errors, verbatim.
    pub errors: Vec<String>,
}

/// What the datapath counted over the whole run (it is loaded fresh for it).
#[derive(Debug, Clone, Serialize)]
pub struct Conntrack {
    /// Conntrack events by name.
    pub events: BTreeMap<String, u64>,
    /// Drops by reason, the non-zero ones.
    pub drops: BTreeMap<String, u64>,
    /// New flows on the Service's two ports (its counters).
    pub new_flows: u64,
    pub short_lived: ShortLived,
    /// Entries of each table at the end (the collector's last run).
    pub established_entries_end: u64,
    pub short_lived_entries_end: u64,
}

/// The short-lived table's entries over the run. The LRU does not count its evictions, so they
/// are derived from what is counted.
#[derive(Debug, Clone, Serialize)]
pub struct ShortLived {
    /// Entries put in: two for each new flow, two for each flow that closed (back from the
    /// established table), one for each half put back.
    pub created: u64,
    /// Entries taken out by a flow moving to the established table (two each).
    pub moved_to_established: u64,
    /// Expired entries the collector removed.
    pub removed_by_gc: u64,
    /// Entries present at the end.
    pub present_at_end: u64,
    /// created − moved − removed − present: what the LRU evicted (derived; it also counts an
    /// entry overwritten in place when a client port is reused while its closed flow is still
    /// in the table, which the short table's turnover makes rare).
    pub evicted_derived: u64,
}

/// The conntrack collector's runs during the churn.
#[derive(Debug, Clone, Serialize)]
pub struct Gc {
    pub runs: usize,
    pub mean_us: f64,
    pub max_us: f64,
    /// Entries each run looked at (both tables, removed ones included).
    pub mean_entries_walked: f64,
    pub max_entries_walked: u64,
    pub removed_established: u64,
    pub removed_short_lived: u64,
    /// Time spent collecting ÷ the churn's wall time, in percent of one CPU.
    pub share_of_one_cpu_pct: f64,
    pub samples: Vec<GcSample>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct GcSample {
    /// Since the churn began.
    pub at_seconds: f64,
    pub took_us: f64,
    pub established: u64,
    pub established_tcp: u64,
    pub established_tcp_closing: u64,
    pub short_lived: u64,
    pub removed_established: u64,
    pub removed_short_lived: u64,
}

impl GcSample {
    fn walked(&self) -> u64 {
        self.established + self.short_lived + self.removed_established + self.removed_short_lived
    }
}

/// CPU over the churn, from /proc/stat (all CPUs) and the processes' own times.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    pub seconds: f64,
    /// CPUs the run used.
    pub cpus: usize,
    /// Shares of all CPUs' time. Busy is user + nice + system + irq + softirq; the datapath runs
    /// in softirq (a veth hands a packet to its peer in the sender's softirq).
    pub busy_pct: f64,
    pub user_pct: f64,
    pub system_pct: f64,
    pub softirq_pct: f64,
    pub irq_pct: f64,
    pub steal_pct: f64,
    /// Each CPU the run used, busy and softirq shares of its own time.
    pub each: Vec<CpuShare>,
    /// User + system CPU seconds of this process (the clients, the collector) and of the
    /// servers.
    pub benchmark_seconds: f64,
    pub servers_seconds: f64,
    /// Per completed churn connection.
    pub busy_us_per_connection: f64,
    pub softirq_us_per_connection: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuShare {
    pub cpu: usize,
    pub busy_pct: f64,
    pub softirq_pct: f64,
}

pub fn main(opts: &Options) -> Result<()> {
    check_host()?;
    meta::remove_leftovers();
    fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    raise_open_files()?;
    let started = meta::now_utc();
    let report = run(opts, started)?;
    let md = markdown(&report);
    let json_path = opts.out.join("conntrack.json");
    fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = opts.out.join("conntrack.md");
    fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("\n{md}");
    println!(
        "results in {}: conntrack.json, conntrack.md",
        opts.out.display()
    );
    if !report.failures.is_empty() {
        bail!("{}", report.failures.join("; "));
    }
    println!(
        "check: no idle flow lost; the churn was {:.0} times the short-lived table",
        report.churn.times_capacity
    );
    Ok(())
}

/// Root, and the tools the topology uses.
fn check_host() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("the benchmark creates network namespaces and loads eBPF programs: run it as root");
    }
    for (tool, package) in [("ip", "iproute2"), ("nsenter", "util-linux")] {
        if which(tool).is_none() {
            bail!("{tool} is missing (Debian package {package}; `cargo xtask setup` installs it)");
        }
    }
    Ok(())
}

/// The idle pool's sockets and the servers' connections need more descriptors than the
/// common soft limit of 1,024; the servers inherit the raised limit.
fn raise_open_files() -> Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).context("raising the open-files limit")?;
    }
    Ok(())
}

/// What the run made, removed on drop in field order: servers, the datapath's pins, the
/// namespaces.
struct Rig {
    servers: Vec<Proc>,
    dp: Datapath,
    _pins: PinsGuard,
    topo: Topology,
}

impl Rig {
    fn start(cpus: &CpuPinning) -> Result<Rig> {
        let instance = format!("{}{}", meta::PREFIX, std::process::id());
        let topo = Topology::new(&instance, BACKENDS)?;
        // Hundreds of thousands of connections from one client address: every port, and
        // ports reused while the servers hold the old connection in TIME_WAIT.
        topo.client
            .ns
            .sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        topo.client.ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        let pins = PinsGuard::new(&instance)?;
        let mut config = DatapathConfig::new(&instance);
        config.capacities.conntrack = SHORT_LIVED_ENTRIES;
        config.capacities.ct_established = ESTABLISHED_ENTRIES;
        let mut dp = Datapath::load(config).context("loading Skiff's datapath")?;
        let mut table = dp.service_table()?;
        let app = services::app(0);
        for name in ["rr", "crr"] {
            let p = services::port(&app, name);
            table
                .upsert(services::service_port(&app, p), &p.endpoints)
                .with_context(|| format!("programming the {name} port"))?;
        }
        topo.node.run(|| -> Result<()> {
            for iface in topo.pod_interfaces() {
                dp.attach(&iface)
                    .with_context(|| format!("attaching Skiff to {iface}"))?;
            }
            Ok(())
        })?;
        let exe = std::env::current_exe().context("locating skiff-bench")?;
        // The servers inherit this thread's CPU mask.
        let pinned = load::pin_thread(&cpus.server)?;
        let servers = topo
            .backends
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                pod.ns.sysctl("net.core.somaxconn", "4096")?;
                let mut cmd = pod.ns.command(&exe);
                cmd.args(["serve", "--name", &format!("b{i}")])
                    .args(["--rr-port", &services::RR_TARGET.to_string()])
                    .args(["--crr-port", &services::CRR_TARGET.to_string()]);
                let mut server = Proc::spawn(cmd, &format!("the servers in b{i}"))?;
                load::wait_listening(&pod.ns, services::CRR_TARGET, &mut server)?;
                Ok(server)
            })
            .collect::<Result<Vec<_>>>()?;
        drop(pinned);
        Ok(Rig {
            servers,
            dp,
            _pins: pins,
            topo,
        })
    }
}

/// Machine and process CPU times at one moment.
#[derive(Debug, Clone)]
struct CpuReading {
    at: Instant,
    /// user, nice, system, idle, iowait, irq, softirq, steal (clock ticks): all CPUs, then
    /// each CPU of `cpus` in order.
    machine: [u64; 8],
    each: Vec<[u64; 8]>,
    benchmark: f64,
    servers: f64,
}

impl CpuReading {
    fn take(cpus: &[usize], servers: &[Proc]) -> Result<CpuReading> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let process = |pid: u32| {
            procfs::cpu_seconds(pid).with_context(|| format!("reading /proc/{pid}/stat"))
        };
        Ok(CpuReading {
            at: Instant::now(),
            machine: cpu_line(&stat, "cpu")?,
            each: cpus
                .iter()
                .map(|c| cpu_line(&stat, &format!("cpu{c}")))
                .collect::<Result<_>>()?,
            benchmark: process(std::process::id())?,
            servers: servers
                .iter()
                .map(|s| process(s.pid()))
                .sum::<Result<f64>>()?,
        })
    }
}

/// The first eight fields of /proc/stat's line `name` (`cpu`: all CPUs; `cpu3`: one).
fn cpu_line(stat: &str, name: &str) -> Result<[u64; 8]> {
    let mut values = stat
        .lines()
        .map(|l| l.split_whitespace())
        .find_map(|mut f| (f.next() == Some(name)).then_some(f))
        .with_context(|| format!("/proc/stat has no {name} line"))?;
    let mut fields = [0u64; 8];
    for f in &mut fields {
        *f = values
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("/proc/stat's {name} line has fewer than 8 numbers"))?;
    }
    Ok(fields)
}

/// Busy (user, nice, system, irq, softirq), user, system and softirq ticks between two
/// readings of a `cpu` line, and all ticks.
fn busy_ticks(before: &[u64; 8], after: &[u64; 8]) -> ([f64; 4], f64) {
    let d: Vec<f64> = (0..8)
        .map(|i| after[i].saturating_sub(before[i]) as f64)
        .collect();
    let busy = d[0] + d[1] + d[2] + d[5] + d[6];
    (
        [busy, d[0] + d[1], d[2], d[6]],
        d.iter().sum::<f64>().max(1.0),
    )
}

fn cpu_figures(cpus: &[usize], before: &CpuReading, after: &CpuReading, connections: u64) -> Cpu {
    let ([busy, user, system, softirq], total) = busy_ticks(&before.machine, &after.machine);
    let pct = |ticks: f64| 100.0 * ticks / total;
    let tick_us = 1e6 / rustix::param::clock_ticks_per_second() as f64;
    let per_conn = |ticks: f64| ticks * tick_us / connections.max(1) as f64;
    let irq_steal = |i: usize| pct(after.machine[i].saturating_sub(before.machine[i]) as f64);
    Cpu {
        seconds: after.at.duration_since(before.at).as_secs_f64(),
        cpus: cpus.len(),
        busy_pct: pct(busy),
        user_pct: pct(user),
        system_pct: pct(system),
        softirq_pct: pct(softirq),
        irq_pct: irq_steal(5),
        steal_pct: irq_steal(7),
        each: cpus
            .iter()
            .zip(before.each.iter().zip(&after.each))
            .map(|(&cpu, (b, a))| {
                let ([busy, _, _, softirq], total) = busy_ticks(b, a);
                CpuShare {
                    cpu,
                    busy_pct: 100.0 * busy / total,
                    softirq_pct: 100.0 * softirq / total,
                }
            })
            .collect(),
        benchmark_seconds: after.benchmark - before.benchmark,
        servers_seconds: after.servers - before.servers,
        busy_us_per_connection: per_conn(busy),
        softirq_us_per_connection: per_conn(softirq),
    }
}

/// One idle flow of the pool.
struct IdleFlow {
    stream: TcpStream,
    client_port: u16,
    /// The backend that held the connection at the start.
    backend: usize,
    requests: u64,
    lost: Option<Loss>,
}

/// Sends request `seq` of flow `flow` and checks that it comes back.
fn ask(stream: &mut TcpStream, flow: usize, seq: u64) -> Result<Duration> {
    let mut msg = [b'.'; MESSAGE];
    let tag = format!("flow {flow} request {seq}");
    msg[..tag.len()].copy_from_slice(tag.as_bytes());
    let t = Instant::now();
    stream.write_all(&msg).context("sending")?;
    let mut echo = [0u8; MESSAGE];
    stream
        .read_exact(&mut echo)
        .with_context(|| format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))?;
    if echo != msg {
        bail!(
            "answered {:?}, not the request's echo",
            String::from_utf8_lossy(&echo)
        );
    }
    Ok(t.elapsed())
}

/// Opens `n` connections to the VIP's echo port from the client pod, asks each once (which
/// moves its flow to the established table) and finds the backend holding each; returns them
/// with the number each backend holds.
fn open_pool(topo: &Topology, n: usize) -> Result<(Vec<IdleFlow>, Vec<usize>)> {
    let target = SocketAddrV4::new(services::APP_VIP, services::RR_PORT);
    let mut pool = topo.client.ns.run(|| {
        (0..n)
            .map(|i| {
                let mut stream =
                    TcpStream::connect_timeout(&SocketAddr::V4(target), REQUEST_TIMEOUT)
                        .with_context(|| format!("idle flow {i}: connecting to {target}"))?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
                stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
                ask(&mut stream, i, 0).with_context(|| format!("idle flow {i}: first request"))?;
                Ok(IdleFlow {
                    client_port: stream.local_addr()?.port(),
                    stream,
                    backend: usize::MAX,
                    requests: 1,
                    lost: None,
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut per_backend = vec![0; BACKENDS];
    let held = holders(topo, &pool)?;
    for (f, holder) in pool.iter_mut().zip(held) {
        let b = holder.with_context(|| {
            format!(
                "no single backend holds the idle connection from port {}",
                f.client_port
            )
        })?;
        f.backend = b;
        per_backend[b] += 1;
    }
    Ok((pool, per_backend))
}

/// The client ports of the connections from the client pod established to `port` in `ns`,
/// from its socket table.
fn established_client_ports(ns: &Netns, port: u16) -> Result<BTreeSet<u16>> {
    let table = ns
        .run(|| fs::read_to_string("/proc/thread-self/net/tcp"))
        .with_context(|| format!("reading the socket table of {}", ns.name()))?;
    Ok(established_from(&table, port, CLIENT_IP))
}

/// Peer ports of sockets in ESTABLISHED (state 01) on local `port` with peer address `peer`, in
/// /proc/net/tcp text (addresses are the raw network-order word printed in hex).
fn established_from(table: &str, port: u16, peer: Ipv4Addr) -> BTreeSet<u16> {
    let parse = |field: &str| -> Option<(Ipv4Addr, u16)> {
        let (addr, p) = field.split_once(':')?;
        let raw = u32::from_str_radix(addr, 16).ok()?;
        Some((
            Ipv4Addr::from(u32::from_be(raw)),
            u16::from_str_radix(p, 16).ok()?,
        ))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (_, local_port) = parse(f.get(1)?)?;
            let (remote, remote_port) = parse(f.get(2)?)?;
            (local_port == port && remote == peer && *f.get(3)? == "01").then_some(remote_port)
        })
        .collect()
}

/// Which backend holds each idle flow's connection now: `None` where none or several do.
fn holders(topo: &Topology, pool: &[IdleFlow]) -> Result<Vec<Option<usize>>> {
    let held = topo
        .backends
        .iter()
        .map(|b| established_client_ports(&b.ns, services::RR_TARGET))
        .collect::<Result<Vec<_>>>()?;
    Ok(pool
        .iter()
        .map(|f| {
            let mut at = held
                .iter()
                .enumerate()
                .filter(|(_, ports)| ports.contains(&f.client_port));
            match (at.next(), at.next()) {
                (Some((b, _)), None) => Some(b),
                _ => None,
            }
        })
        .collect())
}

/// For each idle flow, why the datapath no longer holds the translation made when it opened
/// (`None` when it does): its forward entry must be in the established table, translate to its
/// backend, and be older than `open_for`. A flow whose entries were evicted is translated
/// afresh on its next packet, to the same backend while the backends stay the same (the hash
/// is seeded once): its requests go on working, so only the entry shows the loss.
fn kept_translations(
    maps: &PinnedMaps,
    timeouts: &Timeouts,
    pool: &[IdleFlow],
    open_for: Duration,
) -> Result<Vec<Option<String>>> {
    let vip = SocketAddrV4::new(services::APP_VIP, services::RR_PORT);
    let entries: BTreeMap<u16, ConntrackEntry> = maps
        .conntrack(timeouts)?
        .into_iter()
        .filter(|e| e.direction == "forward" && e.destination == vip)
        .filter(|e| *e.source.ip() == CLIENT_IP)
        .map(|e| (e.source.port(), e))
        .collect();
    // The two clocks (the kernel's monotonic one and `Instant`) are read at different moments.
    let slack = Duration::from_millis(500);
    let must_be_older = open_for.saturating_sub(slack).as_millis() as u64;
    Ok(pool
        .iter()
        .map(|f| {
            let backend = SocketAddrV4::new(backend_ip(f.backend), services::RR_TARGET);
            let Some(e) = entries.get(&f.client_port) else {
                return Some("the datapath has no conntrack entry for it".to_owned());
            };
            if e.table != "established" {
                Some(format!("its conntrack entry is in the {} table", e.table))
            } else if e.translated_to != backend {
                Some(format!(
                    "its conntrack entry translates to {}",
                    e.translated_to
                ))
            } else if e.age_ms < must_be_older {
                Some(format!(
                    "its conntrack entry was made again {} ms ago",
                    e.age_ms
                ))
            } else {
                None
            }
        })
        .collect())
}

/// Counters the threads update and the progress lines read.
#[derive(Default)]
struct Tally {
    churned: AtomicU64,
    churn_failed: AtomicU64,
    answered_by: [AtomicU64; BACKENDS],
    churn_errors: Mutex<Vec<String>>,
    pool_requests: AtomicU64,
    pool_lost: AtomicU64,
    gc: Mutex<Vec<GcSample>>,
}

impl Tally {
    fn churn_error(&self, e: &anyhow::Error) {
        self.churn_failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut kept) = self.churn_errors.lock()
            && kept.len() < ERRORS_KEPT
        {
            kept.push(format!("{e:#}"));
        }
    }
}

/// Connection per request against `target` until `until`, from the client pod.
fn churn(
    client: &Netns,
    target: SocketAddrV4,
    cpus: &[usize],
    until: Instant,
    tally: &Tally,
) -> Result<()> {
    let _pinned = load::pin_thread(cpus)?;
    client.run(|| {
        while Instant::now() < until {
            match load::one_shot(target) {
                Ok(name) => {
                    tally.churned.fetch_add(1, Ordering::Relaxed);
                    let b = name.strip_prefix('b').and_then(|i| i.parse::<usize>().ok());
                    if let Some(counter) = b.and_then(|b| tally.answered_by.get(b)) {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => tally.churn_error(&e),
            }
        }
    });
    Ok(())
}

/// Asks every idle flow once every `every`, staggered evenly over the interval, until `until`;
/// returns the requests' latencies.
fn keep_pool(
    pool: &mut [IdleFlow],
    every: Duration,
    started: Instant,
    until: Instant,
    cpus: &[usize],
    tally: &Tally,
) -> Result<Vec<u64>> {
    let _pinned = load::pin_thread(cpus)?;
    let mut ns = Vec::new();
    let n = pool.len();
    for slot in 0u64.. {
        let (i, round) = ((slot % n as u64) as usize, slot / n as u64);
        let due = started + every.mul_f64(slot as f64 / n as f64);
        if due >= until {
            break;
        }
        thread::sleep(due.saturating_duration_since(Instant::now()));
        ask_once(&mut pool[i], i, round + 1, started, tally, &mut ns);
    }
    Ok(ns)
}

/// One request on an idle flow that is not lost yet; a failure marks it lost.
fn ask_once(
    flow: &mut IdleFlow,
    i: usize,
    seq: u64,
    started: Instant,
    tally: &Tally,
    latencies: &mut Vec<u64>,
) {
    if flow.lost.is_some() {
        return;
    }
    flow.requests += 1;
    tally.pool_requests.fetch_add(1, Ordering::Relaxed);
    match ask(&mut flow.stream, i, seq) {
        Ok(took) => latencies.push(took.as_nanos() as u64),
        Err(e) => lose(flow, i, started, format!("{e:#}"), tally),
    }
}

fn lose(flow: &mut IdleFlow, i: usize, started: Instant, reason: String, tally: &Tally) {
    tally.pool_lost.fetch_add(1, Ordering::Relaxed);
    flow.lost = Some(Loss {
        flow: i,
        client_port: flow.client_port,
        after_seconds: started.elapsed().as_secs_f64(),
        reason,
    });
}

/// Runs the collector every `GC_INTERVAL` until `until`.
fn collect(
    collector: &Collector,
    maps: &PinnedMaps,
    started: Instant,
    until: Instant,
    tally: &Tally,
) -> Result<()> {
    for k in 1u32.. {
        let due = started + GC_INTERVAL * k;
        if due >= until {
            break;
        }
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let sample = gc_once(collector, maps, started)?;
        if let Ok(mut samples) = tally.gc.lock() {
            samples.push(sample);
        }
    }
    Ok(())
}

fn gc_once(collector: &Collector, maps: &PinnedMaps, started: Instant) -> Result<GcSample> {
    let run = collector.run(maps).context("running the collector")?;
    let s = run.stats;
    Ok(GcSample {
        at_seconds: started.elapsed().as_secs_f64(),
        took_us: run.took.as_secs_f64() * 1e6,
        established: s.established,
        established_tcp: s.established_tcp,
        established_tcp_closing: s.established_tcp_closing,
        short_lived: s.transient,
        removed_established: s.removed_established,
        removed_short_lived: s.removed_transient,
    })
}

/// Prints a progress line every `every` until `until`.
fn watch(started: Instant, until: Instant, every: Duration, tally: &Tally) {
    let mut last = (started, 0u64);
    for k in 1u32.. {
        let due = (started + every * k).min(until);
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let churned = tally.churned.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (churned - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, churned);
        let gc = tally.gc.lock().ok().and_then(|s| s.last().copied()).map_or(
            "no collector run yet".to_owned(),
            |g| {
                format!(
                    "collector: {} established and {} short-lived entries, {:.0} µs",
                    g.established, g.short_lived, g.took_us
                )
            },
        );
        println!(
            "    [{:>4.0} s] churn {churned} connections ({rate:.0}/s), {} failed; idle pool {} \
             requests, {} lost; {gc}",
            started.elapsed().as_secs_f64(),
            tally.churn_failed.load(Ordering::Relaxed),
            tally.pool_requests.load(Ordering::Relaxed),
            tally.pool_lost.load(Ordering::Relaxed),
        );
        if due >= until {
            break;
        }
    }
}

fn run(opts: &Options, started_utc: String) -> Result<Report> {
    let available = load::allowed_cpus()?;
    let (client, server) = load::split_cpus(&available).unwrap_or_default();
    let cpus = CpuPinning {
        available,
        client,
        server,
    };
    println!(
        "==> conntrack pressure: {} idle flows asked every {} s, {} s of churn; short-lived \
         table {SHORT_LIVED_ENTRIES} entries, established table {ESTABLISHED_ENTRIES}",
        opts.idle_flows,
        opts.request_every.as_secs(),
        opts.churn.as_secs()
    );
    let rig = Rig::start(&cpus)?;
    let maps = rig.dp.maps()?;
    let collector = rig.dp.collector()?;
    let capacities = maps.ct_capacities()?;
    if capacities != (ESTABLISHED_ENTRIES, SHORT_LIVED_ENTRIES) {
        bail!(
            "the pinned conntrack tables hold {capacities:?} entries, not \
             ({ESTABLISHED_ENTRIES}, {SHORT_LIVED_ENTRIES})"
        );
    }
    if cpus.pinned() {
        println!(
            "==> clients on CPUs {:?}, servers on CPUs {:?}; the collector is not pinned",
            cpus.client, cpus.server
        );
    }
    every_backend_answers(&rig.topo.client.ns)?;
    let (mut pool, per_backend) = open_pool(&rig.topo, opts.idle_flows)?;
    let opened = Instant::now();
    let gc_before = gc_once(&collector, &maps, opened)?;
    if gc_before.established_tcp < 2 * opts.idle_flows as u64 {
        bail!(
            "after their first request the {} idle flows should hold {} established entries; \
             the collector found {gc_before:?}",
            opts.idle_flows,
            2 * opts.idle_flows
        );
    }
    println!(
        "==> {} idle flows open (per backend {per_backend:?}), all in the established table; \
         churning for {} s",
        pool.len(),
        opts.churn.as_secs()
    );

    let phase = churn_phase(opts, &rig, &maps, &collector, &cpus, &mut pool)?;
    let Phase {
        started,
        tally,
        mut latencies,
        cpu_before,
        cpu_after,
    } = phase;
    // Every idle flow speaks once more after the churn, is still held by its backend, and
    // still has the translation it was given.
    for (i, f) in pool.iter_mut().enumerate() {
        let seq = f.requests;
        ask_once(f, i, seq, started, &tally, &mut latencies);
    }
    let held = holders(&rig.topo, &pool)?;
    for (i, (f, now)) in pool.iter_mut().zip(held).enumerate() {
        if f.lost.is_none() && now != Some(f.backend) {
            let reason = match now {
                Some(b) => format!("its connection moved from b{} to b{b}", f.backend),
                None => format!("b{} no longer holds its connection", f.backend),
            };
            lose(f, i, started, reason, &tally);
        }
    }
    let kept = kept_translations(&maps, &rig.dp.config().timeouts, &pool, opened.elapsed())?;
    for (i, (f, why)) in pool.iter_mut().zip(kept).enumerate() {
        if let (None, Some(reason)) = (&f.lost, why) {
            lose(f, i, started, reason, &tally);
        }
    }
    let gc_after = gc_once(&collector, &maps, started)?;

    let churned = tally.churned.load(Ordering::Relaxed);
    let churn_secs = cpu_after.at.duration_since(cpu_before.at).as_secs_f64();
    let samples = tally.gc.into_inner().unwrap_or_default();
    let conntrack = conntrack_figures(&rig, &maps, [&gc_before, &gc_after], &samples)?;
    let losses: Vec<Loss> = pool.iter().filter_map(|f| f.lost.clone()).collect();
    let mut lat = Latencies {
        ns: latencies,
        ..Default::default()
    };
    let capacity_flows = SHORT_LIVED_ENTRIES / 2;
    let cpu = cpu_figures(&cpus.available, &cpu_before, &cpu_after, churned);
    let mut report = Report {
        meta: run_meta(started_utc),
        settings: Settings {
            quick: opts.quick,
            churn_seconds: opts.churn.as_secs_f64(),
            idle_flows: opts.idle_flows,
            request_every_seconds: opts.request_every.as_secs_f64(),
            request_timeout_seconds: REQUEST_TIMEOUT.as_secs_f64(),
            short_lived_entries: capacities.1,
            established_entries: capacities.0,
            gc_interval_seconds: GC_INTERVAL.as_secs_f64(),
            churn_workers: CHURN_WORKERS,
            backends: BACKENDS,
            cpus,
        },
        idle: Idle {
            flows: pool.len(),
            per_backend,
            requests: pool.iter().map(|f| f.requests).sum(),
            lost: losses.len(),
            losses,
            latency_p50_us: lat.percentile_us(50.0),
            latency_p99_us: lat.percentile_us(99.0),
            latency_max_us: lat.percentile_us(100.0),
        },
        churn: Churn {
            connections: churned,
            failed: tally.churn_failed.load(Ordering::Relaxed),
            per_second: churned as f64 / churn_secs,
            per_backend: tally
                .answered_by
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            short_lived_capacity_flows: capacity_flows,
            times_capacity: churned as f64 / capacity_flows as f64,
            errors: tally.churn_errors.into_inner().unwrap_or_default(),
        },
        conntrack,
        gc: gc_figures(samples, churn_secs),
        cpu,
        failures: Vec::new(),
    };
    report.failures = failures(&report);
    report.meta.finished = meta::now_utc();
    Ok(report)
}

/// Fails unless connections through the VIP's one-shot port reach every backend.
fn every_backend_answers(client: &Netns) -> Result<()> {
    let crr = SocketAddrV4::new(services::APP_VIP, services::CRR_PORT);
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        seen.insert(client.run(|| load::one_shot(crr))?);
        if seen.len() == BACKENDS {
            return Ok(());
        }
    }
    bail!("200 connections through the VIP reached only {seen:?}")
}

/// What the churn phase leaves for the report.
struct Phase {
    started: Instant,
    tally: Tally,
    /// The idle pool's request latencies (ns).
    latencies: Vec<u64>,
    cpu_before: CpuReading,
    cpu_after: CpuReading,
}

/// The churn, the idle pool's requests and the collector's runs, side by side for
/// `opts.churn`, with a progress line now and then.
fn churn_phase(
    opts: &Options,
    rig: &Rig,
    maps: &PinnedMaps,
    collector: &Collector,
    cpus: &CpuPinning,
    pool: &mut [IdleFlow],
) -> Result<Phase> {
    let client = &rig.topo.client.ns;
    let crr = SocketAddrV4::new(services::APP_VIP, services::CRR_PORT);
    let tally = Tally::default();
    let cpu_before = CpuReading::take(&cpus.available, &rig.servers)?;
    let started = Instant::now();
    let until = started + opts.churn;
    let progress = Duration::from_secs(if opts.quick { 5 } else { 15 });
    let panicked = |what: &str| anyhow::anyhow!("the {what} thread panicked");
    let latencies = thread::scope(|s| -> Result<Vec<u64>> {
        let churners: Vec<_> = (0..CHURN_WORKERS)
            .map(|_| s.spawn(|| churn(client, crr, &cpus.client, until, &tally)))
            .collect();
        let gc = s.spawn(|| collect(collector, maps, started, until, &tally));
        let pool_thread = s.spawn(|| {
            keep_pool(
                pool,
                opts.request_every,
                started,
                until,
                &cpus.client,
                &tally,
            )
        });
        watch(started, until, progress, &tally);
        for c in churners {
            c.join().map_err(|_| panicked("churn"))??;
        }
        gc.join().map_err(|_| panicked("collector"))??;
        pool_thread.join().map_err(|_| panicked("idle pool"))?
    })?;
    let cpu_after = CpuReading::take(&cpus.available, &rig.servers)?;
    Ok(Phase {
        started,
        tally,
        latencies,
        cpu_before,
        cpu_after,
    })
}

/// What the datapath counted over the run, and the short-lived table's entries derived from it.
/// `gc` holds the collector's runs before and after the churn, `samples` those during it.
fn conntrack_figures(
    rig: &Rig,
    maps: &PinnedMaps,
    gc: [&GcSample; 2],
    samples: &[GcSample],
) -> Result<Conntrack> {
    let table = rig.dp.service_table()?;
    let app = services::app(0);
    let new_flows = ["rr", "crr"]
        .iter()
        .map(|name| {
            let sp = services::service_port(&app, services::port(&app, name));
            let id = table
                .service_id(&sp)
                .with_context(|| format!("{sp} is not programmed"))?;
            Ok(maps.counters(id)?.new_flows)
        })
        .sum::<Result<u64>>()?;
    let events: BTreeMap<String, u64> = maps
        .ct_events()?
        .into_iter()
        .map(|(e, n)| (e.name().to_owned(), n))
        .collect();
    let drops: BTreeMap<String, u64> = maps
        .drops()?
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| (r.name().to_owned(), n))
        .collect();
    let event = |name: &str| events.get(name).copied().unwrap_or(0);
    let removed: u64 = samples
        .iter()
        .chain(gc)
        .map(|g| g.removed_short_lived)
        .sum();
    let [_, end] = gc;
    let created = 2 * new_flows + 2 * event("closed") + event("half_restored");
    let moved = 2 * event("established");
    Ok(Conntrack {
        new_flows,
        short_lived: ShortLived {
            created,
            moved_to_established: moved,
            removed_by_gc: removed,
            present_at_end: end.short_lived,
            evicted_derived: created
                .saturating_sub(moved)
                .saturating_sub(removed)
                .saturating_sub(end.short_lived),
        },
        established_entries_end: end.established,
        short_lived_entries_end: end.short_lived,
        events,
        drops,
    })
}

/// The collector's runs during the churn, summed up.
fn gc_figures(samples: Vec<GcSample>, churn_secs: f64) -> Gc {
    let took: Vec<f64> = samples.iter().map(|g| g.took_us).collect();
    let walked: Vec<f64> = samples.iter().map(|g| g.walked() as f64).collect();
    Gc {
        runs: samples.len(),
        mean_us: mean(&took),
        max_us: took.iter().copied().fold(0.0, f64::max),
        mean_entries_walked: mean(&walked),
        max_entries_walked: samples.iter().map(GcSample::walked).max().unwrap_or(0),
        removed_established: samples.iter().map(|g| g.removed_established).sum(),
        removed_short_lived: samples.iter().map(|g| g.removed_short_lived).sum(),
        share_of_one_cpu_pct: 100.0 * took.iter().fold(0.0, |a, t| a + t) / 1e6 / churn_secs,
        samples,
    }
}

/// What makes the run fail: a lost idle flow, too little churn, churn the datapath did not see.
fn failures(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if r.idle.lost > 0 {
        let first: Vec<String> = r
            .idle
            .losses
            .iter()
            .take(3)
            .map(|l| {
                format!(
                    "flow {} (port {}) after {:.1} s: {}",
                    l.flow, l.client_port, l.after_seconds, l.reason
                )
            })
            .collect();
        out.push(format!(
            "{} of {} idle flows lost (first: {})",
            r.idle.lost,
            r.idle.flows,
            first.join("; ")
        ));
    }
    if r.churn.times_capacity < MIN_CHURN_RATIO {
        out.push(format!(
            "the churn was {} connections, {:.1} times the short-lived table's {} flows, not \
             the {MIN_CHURN_RATIO} times the benchmark needs: this machine churns too slowly \
             for {} s (give more --seconds)",
            r.churn.connections,
            r.churn.times_capacity,
            r.churn.short_lived_capacity_flows,
            r.settings.churn_seconds
        ));
    }
    // Not every connection need be a new flow (a client port reused within an entry's life),
    // but most are.
    if r.conntrack.new_flows < r.churn.connections / 2 {
        out.push(format!(
            "the datapath counted {} new flows for {} churned connections: the churn did not \
             go through it",
            r.conntrack.new_flows, r.churn.connections
        ));
    }
    out
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// The machine's facts, with this benchmark's notes in place of the network benchmark's.
fn run_meta(started: String) -> Meta {
    let mut m = meta::gather();
    m.started = started;
    m.tools.retain(|(tool, _)| tool == "aya" || tool == "skiff");
    m.notes = vec![
        "Traffic: a client pod and three backend pods, each a network namespace joined by a veth \
         pair to a node namespace that routes between them and blackholes the Service CIDR; \
         everything runs on this machine, and no namespace has a route off it."
            .into(),
        "Skiff's datapath is loaded by the benchmark itself (the agent's library), attached by \
         TCX to the pods' host-side veths, with the short-lived table shrunk so that the churn is \
         many times its capacity; the collector runs every second from the benchmark's own \
         thread, as the agent's timer would run it."
            .into(),
        "Evictions are derived, not counted: the kernel's LRU does not report them. Entries \
         created (two per new flow, two per flow closed back into the table, one per half put \
         back) minus those moved to the established table, removed by the collector and present \
         at the end."
            .into(),
        "CPU shares are of all CPUs' time over the churn, from /proc/stat; the datapath's work \
         runs in softirq, on the CPU of the sending side."
            .into(),
    ];
    m
}

fn markdown(r: &Report) -> String {
    let m = &r.meta;
    let s = &r.settings;
    let c = &r.conntrack;
    let list = |map: &BTreeMap<String, u64>| -> String {
        if map.is_empty() {
            return "none".into();
        }
        let v: Vec<String> = map.iter().map(|(k, n)| format!("{k} {n}")).collect();
        v.join(", ")
    };
    let by_backend = |v: &[String]| v.join(" / ");
    let idle_by: Vec<String> = r.idle.per_backend.iter().map(|n| n.to_string()).collect();
    let churn_by: Vec<String> = r.churn.per_backend.iter().map(|n| n.to_string()).collect();
    let mut out = format!(
        "# Conntrack pressure\n\n{} ({} CPUs, {:.1} GiB), kernel {}; run {} → {}.\n\n\
         {} idle TCP flows through a Service VIP (three backends), each asked one 64-byte request \
         every {} s (staggered), while {} threads open connection after connection (connect, \
         64-byte request, answer, close) through the same VIP for {} s. The short-lived table \
         (`CONNTRACK`, an LRU) holds {} entries ({} flows), the established table \
         (`CT_ESTABLISHED`) {}. The collector runs every {} s. A lost idle flow is a failed or \
         unanswered ({} s) request, a connection its first backend no longer holds, or a \
         conntrack entry that is not the one made when it opened (in the established table, to \
         its backend).\n\n",
        m.cpu_model,
        m.cpus,
        m.memory_gib,
        m.kernel,
        m.started,
        m.finished,
        s.idle_flows,
        s.request_every_seconds,
        s.churn_workers,
        s.churn_seconds,
        s.short_lived_entries,
        s.short_lived_entries / 2,
        s.established_entries,
        s.gc_interval_seconds,
        s.request_timeout_seconds,
    );
    let rows = [
        (
            "idle flows (per backend)".to_owned(),
            format!("{} ({})", r.idle.flows, by_backend(&idle_by)),
        ),
        (
            "requests on idle flows, latency p50 / p99 / max".to_owned(),
            format!(
                "{}, {:.0} / {:.0} / {:.0} µs",
                r.idle.requests,
                r.idle.latency_p50_us,
                r.idle.latency_p99_us,
                r.idle.latency_max_us
            ),
        ),
        ("idle flows lost".to_owned(), r.idle.lost.to_string()),
        (
            "churned connections (per backend)".to_owned(),
            format!(
                "{} in {:.0} s ({}), {} failed",
                r.churn.connections,
                r.cpu.seconds,
                by_backend(&churn_by),
                r.churn.failed
            ),
        ),
        (
            "churn rate".to_owned(),
            format!("{:.0} connections/s", r.churn.per_second),
        ),
        (
            "churn ÷ short-lived capacity".to_owned(),
            format!(
                "{:.0} × ({} flows)",
                r.churn.times_capacity, r.churn.short_lived_capacity_flows
            ),
        ),
        (
            "new flows (datapath counters)".to_owned(),
            c.new_flows.to_string(),
        ),
        ("conntrack events".to_owned(), list(&c.events)),
        ("drops".to_owned(), list(&c.drops)),
        (
            "short-lived entries: created / moved to established / removed by the collector / \
             present at the end"
                .to_owned(),
            format!(
                "{} / {} / {} / {}",
                c.short_lived.created,
                c.short_lived.moved_to_established,
                c.short_lived.removed_by_gc,
                c.short_lived.present_at_end
            ),
        ),
        (
            "short-lived entries evicted (derived)".to_owned(),
            c.short_lived.evicted_derived.to_string(),
        ),
        (
            "entries at the end: established / short-lived".to_owned(),
            format!(
                "{} / {}",
                c.established_entries_end, c.short_lived_entries_end
            ),
        ),
        (
            "collector: runs, mean / max duration".to_owned(),
            format!("{}, {:.0} / {:.0} µs", r.gc.runs, r.gc.mean_us, r.gc.max_us),
        ),
        (
            "collector: entries walked per run, mean / max".to_owned(),
            format!(
                "{:.0} / {}",
                r.gc.mean_entries_walked, r.gc.max_entries_walked
            ),
        ),
        (
            "collector: removed established / short-lived".to_owned(),
            format!(
                "{} / {}",
                r.gc.removed_established, r.gc.removed_short_lived
            ),
        ),
        (
            "collector: share of one CPU".to_owned(),
            format!("{:.3} %", r.gc.share_of_one_cpu_pct),
        ),
        (
            format!("CPU busy of {} CPUs (user / system / softirq)", r.cpu.cpus),
            format!(
                "{:.1} % ({:.1} / {:.1} / {:.1} %)",
                r.cpu.busy_pct, r.cpu.user_pct, r.cpu.system_pct, r.cpu.softirq_pct
            ),
        ),
        (
            "each CPU busy / softirq".to_owned(),
            r.cpu
                .each
                .iter()
                .map(|c| {
                    let role = if s.cpus.client.contains(&c.cpu) {
                        " (clients)"
                    } else if s.cpus.server.contains(&c.cpu) {
                        " (servers)"
                    } else {
                        ""
                    };
                    format!(
                        "CPU {}{role} {:.1} / {:.1} %",
                        c.cpu, c.busy_pct, c.softirq_pct
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "CPU seconds: benchmark process / servers".to_owned(),
            format!(
                "{:.1} / {:.1}",
                r.cpu.benchmark_seconds, r.cpu.servers_seconds
            ),
        ),
        (
            "CPU per churned connection: busy / softirq".to_owned(),
            format!(
                "{:.1} / {:.1} µs",
                r.cpu.busy_us_per_connection, r.cpu.softirq_us_per_connection
            ),
        ),
    ];
    out.push_str("| | |\n|:---|---:|\n");
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    out.push('\n');
    if r.failures.is_empty() {
        out.push_str(&format!(
            "Passed: no idle flow lost; the churn was {:.0} times the short-lived table's \
             capacity (at least {MIN_CHURN_RATIO} required).\n",
            r.churn.times_capacity
        ));
    } else {
        out.push_str("Failed:\n\n");
        for f in &r.failures {
            out.push_str(&format!("- {f}\n"));
        }
    }
    if !r.churn.errors.is_empty() {
        out.push_str("\nFirst churn errors:\n\n");
        for e in &r.churn.errors {
            out.push_str(&format!("- {e}\n"));
        }
    }
    out.push_str("\nNotes:\n\n");
    for n in &m.notes {
        out.push_str(&format!("- {n}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_sockets_are_found_by_local_port_peer_and_state() {
        // 10.244.1.20:9000 <- 10.244.1.10:40000 established, the same in TIME_WAIT (06), a
        // listener, and another peer.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n   \
            0: 00000000:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n   \
            1: 1401F40A:2328 0A01F40A:9C40 01 00000000:00000000 00:00000000 00000000\n   \
            2: 1401F40A:2328 0A01F40A:9C41 06 00000000:00000000 00:00000000 00000000\n   \
            3: 1401F40A:2329 0A01F40A:9C42 01 00000000:00000000 00:00000000 00000000\n   \
            4: 1401F40A:2328 0B01F40A:9C43 01 00000000:00000000 00:00000000 00000000\n";
        let peer = if cfg!(target_endian = "little") {
            Ipv4Addr::new(10, 244, 1, 10)
        } else {
            Ipv4Addr::new(10, 1, 244, 10)
        };
        assert_eq!(established_from(table, 9000, peer), BTreeSet::from([40000]));
        assert!(established_from(table, 9002, peer).is_empty());
    }

    #[test]
    fn cpu_lines_give_eight_fields_or_an_error() {
        let stat = "cpu  100 5 40 9000 7 3 2 11 0 0\ncpu0 50 2 20 4500 3 1 1 5 0 0\ncpu1 1 2\n";
        assert_eq!(
            cpu_line(stat, "cpu").unwrap(),
            [100, 5, 40, 9000, 7, 3, 2, 11]
        );
        assert_eq!(
            cpu_line(stat, "cpu0").unwrap(),
            [50, 2, 20, 4500, 3, 1, 1, 5]
        );
        assert!(cpu_line(stat, "cpu1").is_err(), "too few fields");
        assert!(cpu_line(stat, "cpu2").is_err(), "no such line");
    }

    #[test]
    fn cpu_shares_are_of_all_cpu_time_and_per_connection() {
        let reading = |machine: [u64; 8], benchmark| CpuReading {
            at: Instant::now(),
            machine,
            each: vec![machine],
            benchmark,
            servers: 0.0,
        };
        let before = reading([0; 8], 1.0);
        // 200 ticks in all: 50 user, 30 system, 20 softirq, 100 idle.
        let after = reading([50, 0, 30, 100, 0, 0, 20, 0], 3.0);
        let cpu = cpu_figures(&[4], &before, &after, 1_000);
        assert_eq!(cpu.busy_pct, 50.0);
        assert_eq!(cpu.softirq_pct, 10.0);
        assert_eq!(cpu.each.len(), 1);
        assert_eq!(
            (
                cpu.each[0].cpu,
                cpu.each[0].busy_pct,
                cpu.each[0].softirq_pct
            ),
            (4, 50.0, 10.0)
        );
        assert_eq!(cpu.benchmark_seconds, 2.0);
        let tick_us = 1e6 / rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(cpu.softirq_us_per_connection, 20.0 * tick_us / 1_000.0);
    }

    #[test]
    fn quick_defaults_and_limits() {
        let o = Options::new(true, PathBuf::from("x"), None, None, None).unwrap();
        assert_eq!(
            (o.churn.as_secs(), o.idle_flows, o.request_every.as_secs()),
            (20, 200, 2)
        );
        let o = Options::new(false, PathBuf::from("x"), None, None, None).unwrap();
        assert_eq!(
            (o.churn.as_secs(), o.idle_flows, o.request_every.as_secs()),
            (180, 1_000, 30)
        );
        assert!(Options::new(false, PathBuf::from("x"), Some(0), None, None).is_err());
        assert!(Options::new(false, PathBuf::from("x"), None, Some(0), None).is_err());
        assert!(Options::new(false, PathBuf::from("x"), None, Some(1_000_000), None).is_err());
        assert!(Options::new(false, PathBuf::from("x"), None, None, Some(0)).is_err());
    }
}
