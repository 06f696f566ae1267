//! The API server's and etcd's processes seen through /proc: which they are (the test harness
//! does not hand out their ids), their CPU time and their peak memory.

use std::fs;

use skiff_testbed::control::{ApiServer, Etcd};

/// The processes the benchmark measures; `None` where one could not be found (said in `notes`).
#[derive(Debug, Default)]
pub(super) struct Procs {
    pub(super) apiserver: Option<u32>,
    pub(super) etcd: Option<u32>,
    pub(super) notes: Vec<String>,
}

/// CPU seconds (user + system) so far.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cpu {
    pub(super) apiserver: Option<f64>,
    pub(super) etcd: Option<f64>,
    pub(super) benchmark: Option<f64>,
    /// Every process on the machine (user, nice, system, irq, softirq).
    pub(super) machine: Option<f64>,
    /// Time the hypervisor gave this machine's CPUs to someone else.
    pub(super) steal: Option<f64>,
}

impl Procs {
    /// Finds the harness's children by the address each was told to listen on (the harness
    /// starts them through `setpriv`, which execs, so they are this process's children).
    pub(super) fn find(etcd: &Etcd, api: &ApiServer) -> Procs {
        let mut procs = Procs::default();
        let me = std::process::id();
        let api_addr = api.addr.to_string();
        procs.apiserver = find_child(me, "skiff-apiserver", &["--listen", &api_addr]);
        if procs.apiserver.is_none() {
            procs.notes.push(format!(
                "no child process skiff-apiserver --listen {api_addr} in /proc: its CPU time and \
                 peak memory are not reported"
            ));
        }
        match etcd.members.first() {
            Some(m) => {
                procs.etcd = find_child(me, "etcd", &["--listen-client-urls", &m.client_url]);
                if procs.etcd.is_none() {
                    procs.notes.push(format!(
                        "no child process etcd --listen-client-urls {} in /proc: its CPU time and \
                         peak memory are not reported",
                        m.client_url
                    ));
                }
            }
            None => procs
                .notes
                .push("the harness started no etcd member".into()),
        }
        procs
    }

    pub(super) fn cpu(&self) -> Cpu {
        Cpu {
            apiserver: self.apiserver.and_then(cpu_seconds),
            etcd: self.etcd.and_then(cpu_seconds),
            benchmark: cpu_seconds(std::process::id()),
            machine: machine_ticks().map(|(busy, _)| seconds(busy)),
            steal: machine_ticks().map(|(_, steal)| seconds(steal)),
        }
    }
}

/// The child of `parent` running `program` with `flag value` among its arguments.
pub(crate) fn find_child(parent: u32, program: &str, flag_value: &[&str; 2]) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        if parse_stat(&stat)?.ppid != parent {
            return None;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        command_matches(&cmdline, program, flag_value).then_some(pid)
    })
}

/// Whether a NUL-separated command line runs `program` with `flag value` (as two arguments or as
/// `flag=value`).
fn command_matches(cmdline: &[u8], program: &str, [flag, value]: &[&str; 2]) -> bool {
    let args: Vec<&str> = cmdline
        .split(|&b| b == 0)
        .filter_map(|a| std::str::from_utf8(a).ok())
        .collect();
    let Some(argv0) = args.first() else {
        return false;
    };
    if argv0.rsplit('/').next() != Some(program) {
        return false;
    }
    let joined = format!("{flag}={value}");
    args.windows(2).any(|w| w[0] == *flag && w[1] == *value) || args.contains(&joined.as_str())
}

struct Stat {
    ppid: u32,
    /// utime + stime, in clock ticks.
    ticks: u64,
}

/// The fields of /proc/<pid>/stat this module needs. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

/// CPU time of every process other than the API server, etcd and the benchmark between two
/// readings.
pub(super) fn other_cpu(before: &Cpu, after: &Cpu) -> Option<f64> {
    let ours = |c: &Cpu| Some(c.apiserver? + c.etcd? + c.benchmark?);
    let others = (after.machine? - ours(after)?) - (before.machine? - ours(before)?);
    // Ticks are counted per CPU and per process at different moments.
    Some(others.max(0.0))
}

pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(seconds(parse_stat(&stat)?.ticks))
}

pub(crate) fn seconds(ticks: u64) -> f64 {
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

pub(crate) fn machine_ticks() -> Option<(u64, u64)> {
    busy_and_steal(&fs::read_to_string("/proc/stat").ok()?)
}

/// Busy (user, nice, system, irq, softirq) and steal ticks of all CPUs, from /proc/stat.
fn busy_and_steal(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal ...
    let f = line
        .split_whitespace()
        .skip(1)
        .map(str::parse::<u64>)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let busy = f.get(..3)?.iter().sum::<u64>() + f.get(5)? + f.get(6)?;
    Some((busy, *f.get(7)?))
}

/// VmHWM (the peak resident set) in MiB.
pub(crate) fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    vm_hwm_kib(&status).map(|kib| kib as f64 / 1024.0)
}

/// VmRSS (the resident set now) in MiB.
pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmRSS:").map(|kib| kib as f64 / 1024.0)
}

fn vm_hwm_kib(status: &str) -> Option<u64> {
    status_kib(status, "VmHWM:")
}

/// A `Name:   1234 kB` field of /proc/<pid>/status.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (skiff (api) x) S 17 4242 17 0 -1 4194560 900 0 0 0 120 35 0 0 20 0 9 0 \
                    5000 100000 2000 18446744073709551615";
        let s = parse_stat(stat).unwrap();
        assert_eq!(s.ppid, 17);
        assert_eq!(s.ticks, 155);
    }

    #[test]
    fn machine_time_is_busy_ticks_and_steal_separately() {
        let stat = "cpu  100 5 40 9000 7 3 2 11 0 0\ncpu0 50 2 20 4500 3 1 1 5 0 0\n";
        assert_eq!(busy_and_steal(stat), Some((150, 11)));
        assert_eq!(busy_and_steal("cpu  1 2 3\n"), None);
        assert_eq!(busy_and_steal("cpu  1\n"), None);
    }

    #[test]
    fn peak_rss_comes_from_vm_hwm() {
        let status =
            "Name:\tetcd\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(51_200));
        assert_eq!(status_kib(status, "VmRSS:"), Some(40_000));
        assert_eq!(vm_hwm_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn children_are_recognised_by_program_and_listen_flag() {
        let cmdline = |args: &[&str]| args.join("\0").into_bytes();
        let cmd = &cmdline(&[
            "/work/target/release/skiff-apiserver",
            "--etcd",
            "http://127.0.0.1:1",
            "--listen",
            "127.0.0.1:6443",
            "",
        ]);
        assert!(command_matches(
            cmd,
            "skiff-apiserver",
            &["--listen", "127.0.0.1:6443"]
        ));
        assert!(!command_matches(
            cmd,
            "skiff-apiserver",
            &["--listen", "127.0.0.1:6444"]
        ));
        assert!(!command_matches(
            cmd,
            "etcd",
            &["--listen", "127.0.0.1:6443"]
        ));
        let eq = &cmdline(&["etcd", "--listen-client-urls=http://127.0.0.1:2379", ""]);
        assert!(command_matches(
            eq,
            "etcd",
            &["--listen-client-urls", "http://127.0.0.1:2379"]
        ));
    }
}
