//! Load: the benchmark's own request/response servers (run as `skiff-bench serve` in each backend
//! pod), its own clients for persistent request/response and connection-per-request, and the
//! real tools it drives: wrk against nginx, and iperf3.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rustix::thread::CpuSet;
use skiff_testbed::netns::Netns;

/// Size of every request and response of the benchmark's own protocol.
pub const MESSAGE: usize = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Servers (inside a backend pod)

/// Serves forever: on `rr_port` echoes 64-byte messages on each connection until it closes; on
/// `crr_port` reads one 64-byte request, answers 64 bytes that start with `name`, and closes
/// first (as an HTTP/1.0 server does), so TIME_WAIT stays on the server side.
pub fn serve(name: &str, rr_port: u16, crr_port: u16) -> Result<()> {
    // Die with the run that started us, even when it is killed outright.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("asking to die with the benchmark")?;
    if rustix::process::getppid().is_none() {
        bail!("the benchmark that started this server is gone");
    }
    let rr = TcpListener::bind(("0.0.0.0", rr_port)).context("binding the rr port")?;
    let crr = TcpListener::bind(("0.0.0.0", crr_port)).context("binding the crr port")?;
    let mut reply = [b' '; MESSAGE];
    let n = name.len().min(MESSAGE - 1);
    reply[..n].copy_from_slice(&name.as_bytes()[..n]);
    reply[MESSAGE - 1] = b'\n';
    let crr = Arc::new(crr);
    // Two acceptors answer one-shot connections inline: no thread is created per connection.
    for _ in 0..2 {
        let crr = crr.clone();
        thread::spawn(move || {
            loop {
                if let Ok((s, _)) = crr.accept() {
                    let _ = answer_once(s, &reply);
                }
            }
        });
    }
    loop {
        let (s, _) = rr.accept().context("accepting")?;
        thread::spawn(move || echo(s));
    }
}

fn answer_once(mut s: TcpStream, reply: &[u8; MESSAGE]) -> io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    let mut buf = [0u8; MESSAGE];
    s.read_exact(&mut buf)?;
    s.write_all(reply)
}

fn echo(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; MESSAGE];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&buf).is_err() {
            break;
        }
    }
}

/// A process started in a namespace, SIGKILLed (with its process group) on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, what: &str) -> Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Proc {
            child,
            what: what.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub fn check(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.what);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something listens on TCP `port` inside `ns`. It reads the namespace's socket
/// table rather than connecting, so servers that log every connection (iperf3) stay quiet.
pub fn wait_listening(ns: &Netns, port: u16, proc: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // /proc/thread-self/net is the calling thread's network namespace.
        // iperf3 listens on a dual-stack IPv6 socket.
        let tables = ns.run(|| {
            ["tcp", "tcp6"].map(|t| std::fs::read_to_string(format!("/proc/thread-self/net/{t}")))
        });
        if tables.iter().flatten().any(|t| listens(t, port)) {
            return Ok(());
        }
        proc.check()?;
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} in {} after 10 s", ns.name());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether /proc/net/tcp text has a socket in LISTEN (state 0A) on `port`.
fn listens(table: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
    })
}

// ---------------------------------------------------------------------------------------------
// The benchmark's own clients (threads inside the client pod)

/// Latencies in nanoseconds, and what they add up to.
#[derive(Debug, Default)]
pub struct Latencies {
    pub ns: Vec<u64>,
    pub elapsed: Duration,
    /// Which backend answered, for connection-per-request (name -> count).
    pub answered_by: Vec<(String, u64)>,
}

impl Latencies {
    /// The `p`th percentile (0-100) in microseconds (nearest rank).
    pub fn percentile_us(&mut self, p: f64) -> f64 {
        self.ns.sort_unstable();
        if self.ns.is_empty() {
            return f64::NAN;
        }
        // Nearest rank; the epsilon keeps 0.999 * 1000 (998.9999…) from rounding past 999.
        let rank = ((p / 100.0) * self.ns.len() as f64 - 1e-9).ceil() as usize;
        self.ns[rank.clamp(1, self.ns.len()) - 1] as f64 / 1000.0
    }

    pub fn rate(&self) -> f64 {
        self.ns.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Request/response on one persistent connection to `target`, one at a time, for `duration`
/// (after a short warm-up that is not recorded).
pub fn request_response(
    client: &Netns,
    target: SocketAddrV4,
    duration: Duration,
) -> Result<Latencies> {
    let mut s = client
        .run(|| TcpStream::connect_timeout(&SocketAddr::V4(target), IO_TIMEOUT))
        .with_context(|| format!("connecting to {target}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let msg = [7u8; MESSAGE];
    let mut buf = [0u8; MESSAGE];
    let warmup = Instant::now() + Duration::from_millis(200);
    while Instant::now() < warmup {
        s.write_all(&msg)?;
        s.read_exact(&mut buf)?;
    }
    let mut lat = Latencies {
        ns: Vec::with_capacity(200_000),
        ..Default::default()
    };
    let started = Instant::now();
    while started.elapsed() < duration {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut buf)
            .with_context(|| format!("reading a reply from {target}"))?;
        lat.ns.push(t.elapsed().as_nanos() as u64);
    }
    lat.elapsed = started.elapsed();
    let _ = s.shutdown(Shutdown::Both);
    Ok(lat)
}

/// One connection: connect, send a request, read the whole reply until the server closes.
/// Returns the name of the backend that answered. Call on a thread inside the client pod.
pub fn one_shot(target: SocketAddrV4) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(target), IO_TIMEOUT)
        .with_context(|| format!("connecting to {target}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(&[7u8; MESSAGE])?;
    let mut reply = Vec::with_capacity(MESSAGE);
    s.read_to_end(&mut reply)
        .with_context(|| format!("reading the reply from {target}"))?;
    if reply.len() != MESSAGE {
        bail!("{target} answered {} bytes, not {MESSAGE}", reply.len());
    }
    Ok(String::from_utf8_lossy(&reply).trim().to_owned())
}

/// One worker's latencies and who answered.
type WorkerTally = (Vec<u64>, Vec<(String, u64)>);

/// Connection per request from `workers` threads for `duration`; worker `w` sends its `k`th
/// connection to `targets[(w + k) % len]` (one target for a VIP, every backend for direct).
pub fn connection_per_request(
    client: &Netns,
    targets: &[SocketAddrV4],
    workers: usize,
    duration: Duration,
) -> Result<Latencies> {
    let merged = Mutex::new(Latencies::default());
    let started = Instant::now();
    thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let merged = &merged;
                scope.spawn(move || -> Result<()> {
                    let (ns, by) = client.run(|| -> Result<WorkerTally> {
                        let mut ns = Vec::with_capacity(100_000);
                        let mut by: Vec<(String, u64)> = Vec::new();
                        let mut k = w;
                        while started.elapsed() < duration {
                            let target = targets[k % targets.len()];
                            k += 1;
                            let t = Instant::now();
                            let name = one_shot(target)?;
                            ns.push(t.elapsed().as_nanos() as u64);
                            match by.iter_mut().find(|(n, _)| *n == name) {
                                Some((_, c)) => *c += 1,
                                None => by.push((name, 1)),
                            }
                        }
                        Ok((ns, by))
                    })?;
                    let mut m = merged.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    m.ns.extend(ns);
                    for (name, c) in by {
                        match m.answered_by.iter_mut().find(|(n, _)| *n == name) {
                            Some((_, total)) => *total += c,
                            None => m.answered_by.push((name, c)),
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    let mut lat = merged
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    lat.elapsed = started.elapsed();
    lat.answered_by.sort();
    Ok(lat)
}

// ---------------------------------------------------------------------------------------------
// wrk and iperf3

/// What wrk reported (latencies in microseconds).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct WrkFigures {
    pub requests: u64,
    pub duration_us: u64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub status_errors: u64,
    pub timeouts: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

impl WrkFigures {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
}

/// The Lua script: each wrk thread may be pointed at its own address (the direct path spreads
/// threads over the backends as a Service spreads connections), and the end of the run prints
/// one JSON line with the figures, p99.9 included.
const WRK_SCRIPT: &str = r#"
local targets = {}
for t in string.gmatch(os.getenv("SKIFF_WRK_TARGETS") or "", "[^,]+") do
  table.insert(targets, t)
end
local n = 0
function setup(thread)
  if #targets > 0 then
    local host, port = targets[(n % #targets) + 1]:match("([^:]+):(%d+)")
    thread.addr = wrk.lookup(host, port)[1]
    n = n + 1
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'SKIFF_WRK {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50":%f,"p99":%f,"p999":%f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// Runs wrk in the client pod against `url`; `targets` (if any) are the per-thread addresses.
pub fn wrk(
    client: &Netns,
    url: &str,
    targets: &[SocketAddrV4],
    threads: usize,
    connections: usize,
    close: bool,
    duration: Duration,
) -> Result<WrkFigures> {
    let script = std::env::temp_dir().join(format!("skiff-bench-{}.lua", std::process::id()));
    std::fs::write(&script, WRK_SCRIPT).context("writing the wrk script")?;
    let mut cmd = client.command("wrk");
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--timeout=5s")
        .arg("-s")
        .arg(&script);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let list: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    cmd.arg(url).env("SKIFF_WRK_TARGETS", list.join(","));
    let out = cmd.output().context("running wrk")?;
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SKIFF_WRK "))
        .with_context(|| {
            format!(
                "wrk printed no figures (exit {}): {}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let f: WrkFigures = serde_json::from_str(line).context("parsing wrk's figures")?;
    if f.requests == 0 {
        bail!("wrk completed no request against {url}: {stdout}");
    }
    if f.status_errors > 0 || f.timeouts > 0 || f.connect_errors > 0 {
        bail!("wrk against {url} saw errors: {f:?}");
    }
    Ok(f)
}

/// What iperf3 reported.
#[derive(Debug, Clone, Copy)]
pub struct IperfFigures {
    pub bits_per_second: f64,
    pub bytes: u64,
}

/// One TCP stream from the client pod to `target` for `duration`.
pub fn iperf3(client: &Netns, target: SocketAddrV4, duration: Duration) -> Result<IperfFigures> {
    let out = client
        .command("iperf3")
        .args([
            "-c",
            &target.ip().to_string(),
            "-p",
            &target.port().to_string(),
        ])
        .args(["-t", &format!("{}", duration.as_secs().max(1)), "-J"])
        .output()
        .context("running iperf3")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON (exit {}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3 to {target} failed: {e}");
    }
    let received = &v["end"]["sum_received"];
    let bps = received["bits_per_second"]
        .as_f64()
        .context("iperf3's JSON has no end.sum_received.bits_per_second")?;
    let bytes = received["bytes"].as_u64().unwrap_or(0);
    if bytes == 0 {
        bail!("iperf3 to {target} moved no data");
    }
    Ok(IperfFigures {
        bits_per_second: bps,
        bytes,
    })
}

// ---------------------------------------------------------------------------------------------
// CPU

/// The CPUs the calling thread may run on (at the start of a run: the run's own mask, which a
/// cgroup cpuset or an outer `taskset` may already narrow).
pub fn allowed_cpus() -> Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None).context("reading the CPU affinity")?;
    Ok(cpus_of(&set))
}

fn cpus_of(set: &CpuSet) -> Vec<usize> {
    (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect()
}

/// Splits the available CPUs into a client half and a server half (the client gets the lower
/// half, one CPU of two); `None` when there are fewer than two, so nothing can be separated.
pub fn split_cpus(available: &[usize]) -> Option<(Vec<usize>, Vec<usize>)> {
    if available.len() < 2 {
        return None;
    }
    let (client, server) = available.split_at(available.len() / 2);
    Some((client.to_vec(), server.to_vec()))
}

/// The calling thread's CPU affinity, narrowed until the guard is dropped. Linux copies a
/// thread's mask to every thread and process it creates (and keeps it across exec), so what the
/// thread starts meanwhile (client threads, `nsenter` with wrk or nginx behind it) runs there
/// too, for its whole life. An empty list pins nothing.
#[derive(Debug)]
#[must_use = "the pinning ends when the guard is dropped"]
pub struct PinnedThread {
    previous: Option<CpuSet>,
}

pub fn pin_thread(cpus: &[usize]) -> Result<PinnedThread> {
    if cpus.is_empty() {
        return Ok(PinnedThread { previous: None });
    }
    let previous = rustix::thread::sched_getaffinity(None).context("reading the CPU affinity")?;
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    rustix::thread::sched_setaffinity(None, &set)
        .with_context(|| format!("pinning a thread to CPUs {cpus:?}"))?;
    Ok(PinnedThread {
        previous: Some(previous),
    })
}

impl Drop for PinnedThread {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            // Runs on the thread that pinned itself (the guard is not Send).
            let _ = rustix::thread::sched_setaffinity(None, previous);
        }
    }
}

/// The CPUs process `pid` (its main thread) may run on.
pub fn cpus_of_process(pid: u32) -> Result<Vec<usize>> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .with_context(|| format!("{pid} is not a process id"))?;
    let set = rustix::thread::sched_getaffinity(Some(pid)).with_context(|| {
        format!(
            "reading the CPU affinity of process {}",
            pid.as_raw_nonzero()
        )
    })?;
    Ok(cpus_of(&set))
}

/// System, IRQ and softirq time of all CPUs so far, in microseconds (from /proc/stat).
pub fn kernel_cpu_us() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = kernel_ticks(&stat)?;
    Ok(ticks as f64 * 1e6 / rustix::param::clock_ticks_per_second() as f64)
}

/// The system + irq + softirq ticks of the `cpu` (all CPUs) line.
fn kernel_ticks(stat: &str) -> Result<u64> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    // cpu user nice system idle iowait irq softirq ...
    let f = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("unexpected /proc/stat cpu line: {line}"))?;
    if f.len() < 7 {
        bail!("unexpected /proc/stat cpu line: {line}");
    }
    Ok(f[2] + f[5] + f[6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut l = Latencies {
            ns: (1..=1000).rev().map(|x| x * 1000).collect(),
            elapsed: Duration::from_secs(2),
            answered_by: vec![],
        };
        assert_eq!(l.percentile_us(50.0), 500.0);
        assert_eq!(l.percentile_us(99.0), 990.0);
        assert_eq!(l.percentile_us(99.9), 999.0);
        assert_eq!(l.percentile_us(100.0), 1000.0);
        assert_eq!(l.rate(), 500.0);
    }

    #[test]
    fn wrk_figures_parse_from_the_script_line() {
        let line = r#"{"requests":10,"duration_us":2000000,"connect_errors":0,"read_errors":0,"write_errors":0,"status_errors":0,"timeouts":0,"p50":12.500000,"p99":40.000000,"p999":90.000000}"#;
        let f: WrkFigures = serde_json::from_str(line).unwrap();
        assert_eq!(f.rps(), 5.0);
        assert_eq!(f.p999, 90.0);
    }

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n   \
            0: 00000000:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n   \
            1: 0A00010A:2329 0A000114:2328 01 00000000:00000000 00:00000000 00000000\n";
        assert!(listens(table, 5201));
        // 9001 appears only as an established connection's local port.
        assert!(!listens(table, 9001));
        assert!(!listens(table, 80));
    }

    #[test]
    fn cpus_split_into_a_client_half_and_a_server_half() {
        assert_eq!(split_cpus(&[]), None);
        assert_eq!(split_cpus(&[3]), None, "one CPU cannot separate anything");
        assert_eq!(split_cpus(&[0, 1]), Some((vec![0], vec![1])));
        assert_eq!(split_cpus(&[2, 5, 7]), Some((vec![2], vec![5, 7])));
        assert_eq!(split_cpus(&[0, 1, 2, 3]), Some((vec![0, 1], vec![2, 3])));
    }

    #[test]
    fn a_pinned_thread_gets_its_mask_back_when_the_guard_drops() {
        let before = allowed_cpus().unwrap();
        let one = before[0];
        thread::scope(|s| {
            s.spawn(|| {
                let guard = pin_thread(&[one]).unwrap();
                assert_eq!(allowed_cpus().unwrap(), vec![one]);
                // A thread started while pinned inherits the mask.
                let child = thread::spawn(|| allowed_cpus().unwrap()).join().unwrap();
                assert_eq!(child, vec![one]);
                drop(guard);
                assert_eq!(allowed_cpus().unwrap(), before);
                let _none = pin_thread(&[]).unwrap();
                assert_eq!(allowed_cpus().unwrap(), before);
            });
        });
    }

    #[test]
    fn kernel_time_is_system_irq_and_softirq() {
        let stat = "cpu  100 5 40 9000 3 2 7 0 0 0\ncpu0 50 2 20 4500 1 1 3 0 0 0\n";
        assert_eq!(kernel_ticks(stat).unwrap(), 49);
        assert!(kernel_ticks("cpu0 1 2 3\n").is_err());
    }
}
