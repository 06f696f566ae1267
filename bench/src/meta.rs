//! Facts about the run for the report (machine, kernel, tool versions, what is not compared),
//! the tools the benchmark needs, and the removal of what an interrupted run left behind.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Result, bail};
use skiff_agent::datapath::{self, DatapathConfig};
use skiff_testbed::which;

use crate::model::Meta;

/// Namespaces and the Skiff instance of a run are named `<PREFIX><pid>`.
pub const PREFIX: &str = "skbench-";

/// Tools the run drives, with the Debian package that has each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("setpriv", "util-linux"),
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
    ("iperf3", "iperf3"),
    ("iptables-legacy-restore", "iptables"),
    ("iptables-legacy-save", "iptables"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    ("gnuplot", "gnuplot-nox"),
];

/// Fails, naming what is missing, unless the run can go ahead.
pub fn check_tools() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("the benchmark creates network namespaces and loads eBPF programs: run it as root");
    }
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(tool, pkg)| format!("{tool} (Debian package {pkg})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {}; `cargo xtask setup` installs them",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Removes namespaces and Skiff pins of earlier runs whose process is gone (a run stopped by a
/// signal cannot clean up after itself).
pub fn remove_leftovers() {
    let dead = |name: &str| -> Option<String> {
        let rest = name.strip_prefix(PREFIX)?;
        let pid = rest.split('-').next()?;
        pid.parse::<u32>().ok()?;
        (!run_alive(pid)).then(|| format!("{PREFIX}{pid}"))
    };
    let mut instances = std::collections::BTreeSet::new();
    for entry in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(instance) = dead(&name) {
            // Pods first: their veths go with them.
            if !name.ends_with("-node") {
                delete_netns(&name);
            }
            instances.insert(instance);
        }
    }
    for instance in &instances {
        delete_netns(&format!("{instance}-node"));
    }
    for entry in fs::read_dir(Path::new(datapath::DEFAULT_BPFFS_ROOT).join("skiff"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(instance) = dead(&name) {
            instances.insert(instance);
        }
    }
    for instance in instances {
        println!("    removing what an interrupted run ({instance}) left behind");
        if let Err(e) = datapath::reset(&DatapathConfig::new(&instance)) {
            eprintln!("    could not remove the pins of {instance}: {e}");
        }
    }
}

/// Whether `pid` is a live skiff-bench (not a zombie, not another program that got the number).
fn run_alive(pid: &str) -> bool {
    let Ok(stat) = fs::read_to_string(Path::new("/proc").join(pid).join("stat")) else {
        return false;
    };
    // pid (comm) state ...
    let Some((comm, rest)) = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')) else {
        return false;
    };
    comm == "skiff-bench" && !rest.trim_start().starts_with('Z')
}

fn delete_netns(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// The machine, kernel and tools, and the facts the report must state.
pub fn gather() -> Meta {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let memory_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let tools = [
        ("wrk", &["-v"][..]),
        ("nginx", &["-v"]),
        ("iperf3", &["--version"]),
        ("iptables-legacy", &["--version"]),
        ("nft", &["--version"]),
        ("gnuplot", &["--version"]),
    ]
    .iter()
    .map(|(tool, args)| (tool.to_string(), version(tool, args)))
    .chain([
        ("aya".to_string(), "0.14.0 (Skiff's loader)".to_string()),
        ("skiff".to_string(), env!("CARGO_PKG_VERSION").to_string()),
    ])
    .collect();
    let iptables = version("iptables-legacy", &["--version"]);
    let mut notes = vec![
        ipvs_note(),
        format!(
            "iptables mode uses `{iptables}`, loaded with `iptables-legacy-restore --noflush \
             --counters` as kube-proxy loads its rules. Debian's default, iptables-nft 1.8.9, is \
             not used: its restore spends minutes in userspace at 10,000 Services (linear chain \
             lookups in the tool), which would measure that tool, not the rules."
        ),
        "Traffic: a client pod and three backend pods, each a network namespace joined by a veth \
         pair to a node namespace that routes between them; everything runs on this machine, \
         and no namespace has a route off it. Offloads are the veth defaults."
            .into(),
        "Skiff's programs sit on the pods' host-side veths (TCX); iptables and nftables rules sit \
         in the node namespace (PREROUTING DNAT, FORWARD filter). Netfilter connection tracking \
         runs in the node namespace only in the iptables and nftables modes, and every measurement \
         gets a freshly built topology, so no path's kernel state meets another's."
            .into(),
        "The direct path spreads its connections over the three backends as the Service does \
         (wrk threads, connection-per-request workers); iperf3 and the persistent connection \
         use one backend in every mode."
            .into(),
        "Programming times include what each system really runs: Skiff's map writes from the \
         agent's service table (in-process), `iptables-restore` of the whole rule set (kube-proxy's \
         full sync), one `nft -f` transaction. The endpoint change for Skiff is the agent's \
         single-Service update; for iptables a full restore (kube-proxy 1.27 and later can \
         restore only the changed Service's chains plus KUBE-SERVICES, which is cheaper but \
         still grows with N); for nftables kube-proxy's incremental transaction."
            .into(),
    ];
    notes.retain(|n| !n.is_empty());
    Meta {
        started: now_utc(),
        finished: String::new(),
        hostname: read("/proc/sys/kernel/hostname").trim().to_owned(),
        cpu_model,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib,
        kernel: format!(
            "Linux {} {}",
            read("/proc/sys/kernel/osrelease").trim(),
            read("/proc/sys/kernel/version").trim()
        ),
        tools,
        notes,
    }
}

fn ipvs_note() -> String {
    let in_kernel =
        Path::new("/proc/net/ip_vs").exists() || Path::new("/sys/module/ip_vs").exists();
    let as_module = fs::read_dir("/lib/modules")
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| d.path().join("kernel/net/netfilter/ipvs").exists());
    if in_kernel || as_module {
        "IPVS exists on this machine but kube-proxy's ipvs mode is not compared by this benchmark."
            .into()
    } else {
        "IPVS (kube-proxy's ipvs mode) is not compared: this kernel has no IPVS (no \
         /proc/net/ip_vs, no ip_vs module)."
            .into()
    }
}

/// First line a tool prints about its version (some print it on stderr).
fn version(tool: &str, args: &[&str]) -> String {
    match Command::new(tool).args(args).stdin(Stdio::null()).output() {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        Err(_) => "not found".into(),
    }
}

/// Now, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_utc() -> String {
    skiff_api::meta::time::now()
}
