//! The run: for every repetition, scale and path, a topology of network namespaces (a node with a
//! client pod and three backend pods running nginx, the benchmark's request/response servers and
//! iperf3), the path installed, a warm-up, the measurements, a check that the traffic took that
//! path, one endpoint change, and everything removed again.
//!
//! So that a noisy machine does not decide the ratios: every repetition runs the paths in a
//! different order (a balanced Latin square first, then seeded shuffles), every path is warmed up
//! before it is measured, and where there are two CPUs or more the clients run on one half of
//! them and the servers on the other.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    sync::Barrier,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use skiff_testbed::{servers::Nginx, topo::Topology};

use crate::{
    load::{self, Latencies, Proc},
    meta,
    model::{CpuPinning, Metric, Mode, Results, Sample, ServiceSet, Settings},
    paths::{self, Installed},
    report,
    services::{self, APP_VIP, find_app},
};

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub scales: Vec<usize>,
    pub repetitions: usize,
    pub duration: Duration,
    /// Unmeasured load through each path before its measurements (zero: none).
    pub warmup: Duration,
    /// Pin clients and servers to separate CPUs.
    pub pin: bool,
    pub modes: Vec<Mode>,
    pub out: PathBuf,
}

const WRK_THREADS: usize = 3;
const WRK_CONNECTIONS: usize = 12;
const CRR_WORKERS: usize = 2;
const BACKENDS: usize = 3;
/// Seed of the shuffle that orders repetitions beyond the Latin square (fixed: a rerun with the
/// same flags runs the same orders).
const ORDER_SEED: u64 = 0x5c1f_f0de_2024_0b57;

/// The benchmark's namespaces and servers.
struct Bench {
    // Field order is drop order: servers before the namespaces they run in.
    _servers: Vec<Proc>,
    _nginx: Vec<Nginx>,
    topo: Topology,
    instance: String,
    cpus: CpuPinning,
}

pub fn run(opts: &Options) -> Result<Results> {
    meta::check_tools()?;
    meta::remove_leftovers();
    fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let cpus = cpu_pinning(opts.pin)?;
    let orders = mode_orders(&opts.modes, opts.repetitions, ORDER_SEED);
    let mut results = Results {
        meta: meta::gather(),
        settings: Settings {
            quick: opts.quick,
            scales: opts.scales.clone(),
            repetitions: opts.repetitions,
            duration_secs: opts.duration.as_secs_f64(),
            endpoints_per_service: services::ENDPOINTS,
            wrk_threads: WRK_THREADS,
            wrk_connections: WRK_CONNECTIONS,
            crr_workers: CRR_WORKERS,
            position_rule: services::POSITION_RULE.to_owned(),
            warmup_secs: opts.warmup.as_secs_f64(),
            orders: orders.clone(),
            order_seed: ORDER_SEED,
            cpus: cpus.clone(),
        },
        samples: Vec::new(),
        noise: Vec::new(),
        ratios: Vec::new(),
    };
    println!(
        "==> every measurement builds its own topology: a node namespace, a client pod and \
         {BACKENDS} backend pods with their servers"
    );
    if cpus.pinned() {
        println!(
            "==> clients on CPU {}, servers on CPU {}",
            cpu_list(&cpus.client),
            cpu_list(&cpus.server)
        );
    } else {
        println!(
            "==> {} CPU(s) available: clients and servers are not pinned",
            cpus.available.len()
        );
    }
    let sets: Vec<(usize, ServiceSet, ServiceSet)> = opts
        .scales
        .iter()
        .map(|&n| (n, services::service_set(n, 0), services::service_set(n, 1)))
        .collect();
    let total = opts.repetitions * sets.len() * opts.modes.len();
    let mut done = 0;
    let started = Instant::now();
    for (rep, order) in orders.iter().enumerate() {
        let names: Vec<&str> = order.iter().map(|m| m.name()).collect();
        println!(
            "==> repetition {}/{}: paths in the order {}",
            rep + 1,
            opts.repetitions,
            names.join(", ")
        );
        for (scale, before, after) in &sets {
            for &mode in order {
                done += 1;
                println!(
                    "==> [{done}/{total}, {:.0} s] repetition {}/{}, {scale} Services, {}",
                    started.elapsed().as_secs_f64(),
                    rep + 1,
                    opts.repetitions,
                    mode.name()
                );
                // A fresh topology per measurement: nothing one path leaves in the kernel (legacy
                // iptables tables, netfilter conntrack hooks, TIME_WAIT sockets) meets the next.
                let samples = Bench::start(&cpus)
                    .and_then(|bench| bench.measure(mode, rep, *scale, before, after, opts))
                    .with_context(|| format!("{} at {scale} Services", mode.name()))?;
                results.samples.extend(samples);
                // Keep what was measured so far, should a later step fail.
                write_json(&mut results, &opts.out)?;
            }
        }
    }
    results.meta.finished = meta::now_utc();
    write_json(&mut results, &opts.out)?;
    Ok(results)
}

/// Writes results.json, with the noise figures and ratios derived from the samples so far.
pub fn write_json(results: &mut Results, dir: &Path) -> Result<()> {
    let (noise, ratios) = report::noise_figures(results);
    results.noise = noise;
    results.ratios = ratios;
    let path = dir.join("results.json");
    let text = serde_json::to_string_pretty(results)?;
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Splits the CPUs this run may use between the clients and the servers (none with `pin` off).
fn cpu_pinning(pin: bool) -> Result<CpuPinning> {
    let available = load::allowed_cpus()?;
    let (client, server) = if pin {
        load::split_cpus(&available).unwrap_or_default()
    } else {
        Default::default()
    };
    Ok(CpuPinning {
        available,
        client,
        server,
    })
}

fn cpu_list(cpus: &[usize]) -> String {
    let v: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
    v.join(",")
}

/// The order of the paths in each of `repetitions` repetitions. Every order holds every path
/// once. The first orders are the rows of a balanced Latin square (Williams' design: each path
/// takes every position once, and, for an even number of paths, follows every other path once;
/// for an odd number the mirrored rows come next, which balances that too); after them come the
/// remaining permutations in an order shuffled with `seed`. No order repeats until all K! have
/// been used; only then (more repetitions than orders) does the list start again.
pub fn mode_orders(modes: &[Mode], repetitions: usize, seed: u64) -> Vec<Vec<Mode>> {
    let k = modes.len();
    if k == 0 {
        return vec![Vec::new(); repetitions];
    }
    // Williams' first row 0, k-1, 1, k-2, 2, ...; row r adds r to every entry.
    let mut first = Vec::with_capacity(k);
    let (mut lo, mut hi) = (0, k);
    for j in 0..k {
        if j % 2 == 0 {
            first.push(lo);
            lo += 1;
        } else {
            hi -= 1;
            first.push(hi);
        }
    }
    let mut candidates: Vec<Vec<usize>> = (0..k)
        .map(|r| first.iter().map(|&x| (x + r) % k).collect())
        .collect();
    if k % 2 == 1 {
        let mirrored: Vec<Vec<usize>> = candidates
            .iter()
            .map(|row| row.iter().rev().copied().collect())
            .collect();
        candidates.extend(mirrored);
    }
    let mut rest = permutations(k);
    shuffle(&mut rest, seed);
    candidates.extend(rest);
    let mut seen = std::collections::BTreeSet::new();
    let distinct: Vec<Vec<usize>> = candidates
        .into_iter()
        .filter(|order| seen.insert(order.clone()))
        .collect();
    (0..repetitions)
        .map(|rep| {
            distinct[rep % distinct.len()]
                .iter()
                .map(|&i| modes[i])
                .collect()
        })
        .collect()
}

/// All orders of 0..k, lexicographic (k is at most the four paths, so at most 24).
fn permutations(k: usize) -> Vec<Vec<usize>> {
    fn extend(prefix: &mut Vec<usize>, k: usize, out: &mut Vec<Vec<usize>>) {
        if prefix.len() == k {
            out.push(prefix.clone());
            return;
        }
        for x in 0..k {
            if !prefix.contains(&x) {
                prefix.push(x);
                extend(prefix, k, out);
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    extend(&mut Vec::with_capacity(k), k, &mut out);
    out
}

/// Fisher-Yates with splitmix64: deterministic for a seed, no dependency.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

impl Bench {
    /// Builds the topology and starts the servers, on the server CPUs when there are any.
    fn start(cpus: &CpuPinning) -> Result<Self> {
        let prefix = format!("{}{}", meta::PREFIX, std::process::id());
        let topo = Topology::new(&prefix, BACKENDS)?;
        // Connection-per-request runs open tens of thousands of connections: a wide port range
        // in the client, deep accept queues in the servers.
        topo.client
            .ns
            .sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        topo.client.ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        let exe = std::env::current_exe().context("locating skiff-bench")?;
        // Every server process started from here on inherits this thread's CPU mask.
        let pinned = load::pin_thread(&cpus.server)?;
        let mut servers = Vec::new();
        let mut nginx = Vec::new();
        for (i, pod) in topo.backends.iter().enumerate() {
            pod.ns.sysctl("net.core.somaxconn", "4096")?;
            nginx.push(Nginx::start(&pod.ns, &format!("b{i}"))?);
            let mut cmd = pod.ns.command(&exe);
            cmd.args(["serve", "--name", &format!("b{i}")]).args([
                "--rr-port",
                &services::RR_TARGET.to_string(),
                "--crr-port",
                &services::CRR_TARGET.to_string(),
            ]);
            let mut serve = Proc::spawn(cmd, &format!("the servers in b{i}"))?;
            load::wait_listening(&pod.ns, services::CRR_TARGET, &mut serve)?;
            servers.push(serve);
        }
        let b0 = &topo.backends[0].ns;
        // setpriv: iperf3 dies with this process, even when it is killed outright.
        let mut iperf = b0.command("setpriv");
        iperf
            .args(["--pdeathsig", "KILL", "--", "iperf3", "-s", "-p"])
            .arg(services::IPERF_TARGET.to_string());
        let mut iperf = Proc::spawn(iperf, "the iperf3 server")?;
        load::wait_listening(b0, services::IPERF_TARGET, &mut iperf)?;
        servers.push(iperf);
        drop(pinned);
        if cpus.pinned() {
            for server in &servers {
                let on = load::cpus_of_process(server.pid())?;
                if on != cpus.server {
                    bail!(
                        "server process {} runs on CPUs {on:?}, not on the server CPUs {:?}",
                        server.pid(),
                        cpus.server
                    );
                }
            }
        }
        Ok(Bench {
            _servers: servers,
            _nginx: nginx,
            instance: prefix,
            topo,
            cpus: cpus.clone(),
        })
    }

    fn backend(&self, i: usize, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.topo.backends[i].ip, port)
    }

    fn all_backends(&self, port: u16) -> Vec<SocketAddrV4> {
        (0..BACKENDS).map(|i| self.backend(i, port)).collect()
    }

    /// Installs `mode`, measures everything, applies the endpoint change, removes `mode`.
    fn measure(
        &self,
        mode: Mode,
        rep: usize,
        scale: usize,
        before: &ServiceSet,
        after: &ServiceSet,
        opts: &Options,
    ) -> Result<Vec<Sample>> {
        let node = &self.topo.node;
        let ifaces = self.topo.pod_interfaces();
        let (mut path, programmed) = paths::install(mode, node, &ifaces, &self.instance, before)?;
        let mut out = Vec::new();
        let mut put = |metric: Metric, value: f64| {
            out.push(Sample {
                scale,
                mode,
                rep,
                metric,
                value,
            });
        };
        if let Some(took) = programmed {
            put(Metric::ProgramAllMs, took.as_secs_f64() * 1e3);
            println!(
                "    programmed {scale} Services in {:.1} ms",
                took.as_secs_f64() * 1e3
            );
        }
        let result = self.traffic(mode, &path, before, opts, &mut put);
        let result = result.and_then(|()| {
            if mode == Mode::Direct {
                return Ok(());
            }
            let (op, served) = self.change(&mut path, before, after)?;
            put(Metric::ProgramChangeUs, op.as_secs_f64() * 1e6);
            put(Metric::ProgramChangeServedUs, served.as_secs_f64() * 1e6);
            println!(
                "    one endpoint change: programmed in {:.0} µs, served after {:.0} µs",
                op.as_secs_f64() * 1e6,
                served.as_secs_f64() * 1e6
            );
            Ok(())
        });
        // Remove the path even when a measurement failed.
        let removed = path.remove();
        result?;
        removed?;
        Ok(out)
    }

    /// Where a client sends for a port of the measured Service: the VIP, or (direct) the backends.
    fn targets(&self, mode: Mode, service_port: u16, target_port: u16) -> Vec<SocketAddrV4> {
        if mode == Mode::Direct {
            self.all_backends(target_port)
        } else {
            vec![SocketAddrV4::new(APP_VIP, service_port)]
        }
    }

    fn traffic(
        &self,
        mode: Mode,
        path: &Installed,
        set: &ServiceSet,
        opts: &Options,
        put: &mut impl FnMut(Metric, f64),
    ) -> Result<()> {
        let duration = opts.duration;
        let client = &self.topo.client.ns;
        let node = &self.topo.node;
        let app = find_app(set);
        // The client side (this thread, the client threads and wrk and iperf3, which inherit
        // the mask) runs on the client CPUs from here to the end of the measurements.
        let _pinned = load::pin_thread(&self.cpus.client)?;
        let (url, wrk_targets) = if mode == Mode::Direct {
            (
                format!(
                    "http://{}:{}/",
                    self.topo.backends[0].ip,
                    services::NGINX_TARGET
                ),
                self.all_backends(services::NGINX_TARGET),
            )
        } else {
            (
                format!("http://{APP_VIP}:{}/", services::HTTP_PORT),
                Vec::new(),
            )
        };
        self.warm_up(mode, &url, &wrk_targets, opts.warmup)?;
        // Each measurement says how many connections it opened to which port at least; at the
        // end, the path's own counters must have seen them.
        let before = path.connections(node, app)?;
        let mut expected: BTreeMap<&str, u64> = BTreeMap::new();

        // Persistent request/response.
        let target = self.targets(mode, services::RR_PORT, services::RR_TARGET)[0];
        let mut rr = load::request_response(client, target, duration)?;
        expected.insert("rr", 1);
        let (p50, p99, p999) = percentiles(&mut rr);
        put(Metric::RrP50Us, p50);
        put(Metric::RrP99Us, p99);
        put(Metric::RrP999Us, p999);
        put(Metric::RrRate, rr.rate());
        println!(
            "    request/response: p50 {p50:.1} µs, p99 {p99:.1} µs, p99.9 {p999:.1} µs, {:.0}/s",
            rr.rate()
        );

        // Connection per request.
        let targets = self.targets(mode, services::CRR_PORT, services::CRR_TARGET);
        let cpu0 = load::kernel_cpu_us()?;
        let mut crr = load::connection_per_request(client, &targets, CRR_WORKERS, duration)?;
        let cpu = load::kernel_cpu_us()? - cpu0;
        let conns = crr.ns.len() as u64;
        // Not every connection need be new to a path's conntrack (a port reused within the
        // lifetime of an entry), but most are.
        expected.insert("crr", conns / 2);
        if crr.answered_by.len() < BACKENDS {
            bail!(
                "connections were answered by {:?}, not by all {BACKENDS} backends",
                crr.answered_by
            );
        }
        let (p50, p99, p999) = percentiles(&mut crr);
        put(Metric::CrrRate, crr.rate());
        put(Metric::CrrP50Us, p50);
        put(Metric::CrrP99Us, p99);
        put(Metric::CrrP999Us, p999);
        put(Metric::CrrCpuUs, cpu / conns as f64);
        println!(
            "    connection per request: {:.0} conn/s, p50 {p50:.1} µs, p99 {p99:.1} µs, {:.1} µs CPU each",
            crr.rate(),
            cpu / conns as f64
        );

        // wrk against nginx, keep-alive and connection per request.
        for close in [false, true] {
            let cpu0 = load::kernel_cpu_us()?;
            let f = load::wrk(
                client,
                &url,
                &wrk_targets,
                WRK_THREADS,
                WRK_CONNECTIONS,
                close,
                duration,
            )?;
            let cpu = load::kernel_cpu_us()? - cpu0;
            *expected.entry("http").or_default() += if close { f.requests / 2 } else { 1 };
            let m = if close {
                [
                    Metric::WrkCloseRps,
                    Metric::WrkCloseP50Us,
                    Metric::WrkCloseP99Us,
                    Metric::WrkCloseP999Us,
                    Metric::WrkCloseCpuUs,
                ]
            } else {
                [
                    Metric::WrkKeepaliveRps,
                    Metric::WrkKeepaliveP50Us,
                    Metric::WrkKeepaliveP99Us,
                    Metric::WrkKeepaliveP999Us,
                    Metric::WrkKeepaliveCpuUs,
                ]
            };
            put(m[0], f.rps());
            put(m[1], f.p50);
            put(m[2], f.p99);
            put(m[3], f.p999);
            put(m[4], cpu / f.requests as f64);
            println!(
                "    wrk {}: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs, {:.1} µs CPU per request",
                if close {
                    "connection per request"
                } else {
                    "keep-alive"
                },
                f.rps(),
                f.p50,
                f.p99,
                cpu / f.requests as f64
            );
        }

        // iperf3.
        let target = if mode == Mode::Direct {
            self.backend(0, services::IPERF_TARGET)
        } else {
            SocketAddrV4::new(APP_VIP, services::IPERF_PORT)
        };
        let f = load::iperf3(client, target, duration)?;
        // Its control and data connections.
        expected.insert("iperf", 2);
        put(Metric::IperfGbps, f.bits_per_second / 1e9);
        println!("    iperf3: {:.2} Gbit/s", f.bits_per_second / 1e9);

        if let (Some(before), Some(after)) = (before, path.connections(node, app)?) {
            let mut seen_all = Vec::new();
            for (name, min) in expected {
                let seen = after
                    .get(name)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(before.get(name).copied().unwrap_or(0));
                if seen < min {
                    bail!(
                        "{} counted {seen} connections to port {name}, fewer than the {min} the \
                         clients opened through it",
                        mode.name()
                    );
                }
                seen_all.push(format!("{name} {seen}"));
            }
            println!(
                "    {}'s own counters saw the connections: {}",
                mode.name(),
                seen_all.join(", ")
            );
        }
        Ok(())
    }

    /// Unmeasured load through the path just installed, so that what a first connection pays
    /// (neighbour entries, conntrack and the path's own state, nginx's and wrk's first
    /// connections, cold caches) is paid before anything is measured: the benchmark's own
    /// connection-per-request client to every backend and wrk with a connection per request
    /// against nginx, side by side for `warmup` (wrk takes whole seconds: at least one).
    fn warm_up(
        &self,
        mode: Mode,
        url: &str,
        wrk_targets: &[SocketAddrV4],
        warmup: Duration,
    ) -> Result<()> {
        if warmup.is_zero() {
            return Ok(());
        }
        let client = &self.topo.client.ns;
        let targets = self.targets(mode, services::CRR_PORT, services::CRR_TARGET);
        let t0 = Instant::now();
        let (crr, wrk) = thread::scope(|s| {
            let crr =
                s.spawn(|| load::connection_per_request(client, &targets, CRR_WORKERS, warmup));
            let wrk = load::wrk(
                client,
                url,
                wrk_targets,
                WRK_THREADS,
                WRK_CONNECTIONS,
                true,
                warmup,
            );
            let crr = crr
                .join()
                .map_err(|_| anyhow::anyhow!("the warm-up client panicked"));
            (crr, wrk)
        });
        // Unmeasured: a failure here (the first connections on a fresh topology are where
        // one-off errors happen) is reported, not fatal; the measured runs that follow check
        // their own traffic strictly.
        let crr = crr.and_then(|r| r.context("warm-up, connection per request"));
        let wrk = wrk.context("warm-up, wrk");
        match (&crr, &wrk) {
            (Ok(crr), Ok(wrk)) => println!(
                "    warm-up: {} connections and {} HTTP requests in {:.1} s, not measured",
                crr.ns.len(),
                wrk.requests,
                t0.elapsed().as_secs_f64()
            ),
            _ => {
                for e in [crr.err(), wrk.err()].into_iter().flatten() {
                    println!("    warm-up: {e:#} (not measured; going on)");
                }
            }
        }
        Ok(())
    }

    /// Moves the probe port's endpoint from backend 0 to backend 1 while a client in the pod
    /// opens connection after connection; returns the programming time and the time until the
    /// first connection answered by backend 1.
    fn change(
        &self,
        path: &mut Installed,
        before: &ServiceSet,
        after: &ServiceSet,
    ) -> Result<(Duration, Duration)> {
        let client = &self.topo.client.ns;
        let probe = SocketAddrV4::new(APP_VIP, services::PROBE_PORT);
        let answered = client.run(|| load::one_shot(probe))?;
        if answered != "b0" {
            bail!("before the change the probe port was answered by {answered}, not b0");
        }
        let go = Barrier::new(2);
        let (op, served) =
            thread::scope(|s| -> Result<(Duration, Duration)> {
                let prober =
                    s.spawn(|| {
                        client.run(|| -> Result<Duration> {
                    go.wait();
                    // The probe is client work; the programming operation itself is not pinned.
                    let _pinned = load::pin_thread(&self.cpus.client)?;
                    let t0 = Instant::now();
                    // Failed attempts, kept to explain a slow result.
                    let mut failures: Vec<String> = Vec::new();
                    while t0.elapsed() < Duration::from_secs(120) {
                        let t = t0.elapsed();
                        match load::one_shot(probe) {
                            Ok(name) if name == "b1" => {
                                if !failures.is_empty() {
                                    println!(
                                        "    the probe's failed attempts during the change: {}",
                                        failures.join("; ")
                                    );
                                }
                                return Ok(t0.elapsed());
                            }
                            Ok(_) => {}
                            Err(e) => failures.push(format!(
                                "started at {:.1} ms, failed after {:.1} ms: {e:#}",
                                t.as_secs_f64() * 1e3,
                                (t0.elapsed() - t).as_secs_f64() * 1e3
                            )),
                        }
                    }
                    bail!("backend b1 never answered within 120 s ({})", failures.join("; "))
                })
                    });
                go.wait();
                let op = path.change(&self.topo.node, before, after);
                let served = prober
                    .join()
                    .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
                Ok((op?, served?))
            })?;
        // Every new connection now goes to the new endpoint.
        for _ in 0..5 {
            let name = client.run(|| load::one_shot(probe))?;
            if name != "b1" {
                bail!("after the change a new connection was answered by {name}, not b1");
            }
        }
        Ok((op, served))
    }
}

fn percentiles(l: &mut Latencies) -> (f64, f64, f64) {
    (
        l.percentile_us(50.0),
        l.percentile_us(99.0),
        l.percentile_us(99.9),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn factorial(k: usize) -> usize {
        (1..=k).product()
    }

    #[test]
    fn no_two_repetitions_share_an_order_until_every_order_is_used() {
        for k in 1..=Mode::ALL.len() {
            let modes = &Mode::ALL[..k];
            for reps in 1..=factorial(k) {
                let orders = mode_orders(modes, reps, ORDER_SEED);
                assert_eq!(orders.len(), reps);
                let distinct: BTreeSet<&Vec<Mode>> = orders.iter().collect();
                assert_eq!(distinct.len(), reps, "k={k}, reps={reps}: {orders:?}");
            }
        }
    }

    #[test]
    fn every_repetition_runs_every_mode_once() {
        for k in 0..=Mode::ALL.len() {
            let modes = &Mode::ALL[..k];
            let want: BTreeSet<Mode> = modes.iter().copied().collect();
            for order in mode_orders(modes, 30, 7) {
                assert_eq!(order.len(), k, "{order:?}");
                let got: BTreeSet<Mode> = order.iter().copied().collect();
                assert_eq!(got, want, "{order:?}");
            }
        }
    }

    #[test]
    fn the_first_k_repetitions_form_a_balanced_latin_square() {
        let modes = Mode::ALL;
        let k = modes.len();
        let orders = mode_orders(&modes, k, ORDER_SEED);
        // Every mode in every position once.
        for pos in 0..k {
            let at: BTreeSet<Mode> = orders.iter().map(|o| o[pos]).collect();
            assert_eq!(at.len(), k, "position {pos}: {orders:?}");
        }
        // With an even number of modes, every mode directly follows every other mode once.
        let mut pairs = BTreeSet::new();
        for o in &orders {
            for w in o.windows(2) {
                assert!(pairs.insert((w[0], w[1])), "{w:?} twice in {orders:?}");
            }
        }
        assert_eq!(pairs.len(), k * (k - 1));
        // Three modes (odd): the square and its mirror, six orders, balance the pairs too.
        let three = &modes[..3];
        let orders = mode_orders(three, 6, ORDER_SEED);
        let mut follows: BTreeMap<(Mode, Mode), usize> = BTreeMap::new();
        for o in &orders {
            for w in o.windows(2) {
                *follows.entry((w[0], w[1])).or_default() += 1;
            }
        }
        assert_eq!(follows.len(), 6, "{orders:?}");
        assert!(follows.values().all(|&n| n == 2), "{follows:?}");
    }

    #[test]
    fn orders_repeat_only_after_all_are_used_and_depend_on_the_seed_alone() {
        let modes = &Mode::ALL[..3];
        let orders = mode_orders(modes, 8, 1);
        assert_eq!(orders[6], orders[0]);
        assert_eq!(orders[7], orders[1]);
        assert_eq!(
            mode_orders(&Mode::ALL, 20, 9),
            mode_orders(&Mode::ALL, 20, 9)
        );
        // Past the Latin square, a different seed picks different orders.
        assert_ne!(
            mode_orders(&Mode::ALL, 20, 9)[4..],
            mode_orders(&Mode::ALL, 20, 10)[4..]
        );
        // The quick run's two repetitions and the full run's five differ from each other.
        let five = mode_orders(&Mode::ALL, 5, ORDER_SEED);
        assert_ne!(five[0], five[1]);
        assert_ne!(five[4], five[0]);
    }
}
