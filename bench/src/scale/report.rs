//! The scale benchmark's outputs: `results.json`, `report.md` and the summary printed at the
//! end of a run.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use super::{BENCH, Results};

/// The processes in the order the tables list them.
const PROCESSES: [(&str, &str); 5] = [
    ("etcd", "etcd"),
    ("skiff-apiserver", "apiserver"),
    ("skiff-scheduler", "scheduler"),
    ("skiff-controller-manager", "controller-manager"),
    (BENCH, "benchmark + hollow nodes"),
];

/// Kinds of call listed per step in the API server's view.
const SERVER_CALLS_SHOWN: usize = 8;

/// Writes `results.json` and `report.md` into `dir`; returns their paths.
pub(super) fn write(results: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("results.json");
    let text = serde_json::to_string_pretty(results).context("encoding the results")?;
    fs::write(&json, text + "\n").with_context(|| format!("writing {}", json.display()))?;
    let md = dir.join("report.md");
    fs::write(&md, markdown(results)).with_context(|| format!("writing {}", md.display()))?;
    Ok(vec![json, md])
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.filter(|v| v.is_finite())
        .map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header.iter().map(|_| "---|").collect::<String>()
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
}

/// The report: the targets' verdicts, then a table per measurement.
pub(super) fn markdown(r: &Results) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let s = &r.settings;
    let _ = writeln!(out, "# Skiff control-plane scale benchmark\n");
    let _ = writeln!(
        out,
        "{} run of {}, {:.0} s. {} ({} cores, {:.1} GiB), {}; {}.\n",
        if s.quick { "Quick" } else { "Full" },
        r.started,
        r.run_seconds,
        m.cpu_model,
        m.cpus,
        m.memory_gib,
        m.kernel,
        m.etcd_version
    );
    let _ = writeln!(
        out,
        "One etcd member (data in a temporary directory), `skiff-apiserver`, `skiff-scheduler` and \
         `skiff-controller-manager` (release builds, without leader election) run as processes \
         on this machine. The nodes are hollow nodes inside the benchmark's own process: each is \
         the real node agent's code over fake containers and pod networks, with its own node \
         token ({} nodes share one connection), and runs nothing on the machine. Each renews \
         its Lease every {:.0} s (lease duration {} s; the controller-manager's node monitor \
         grace period is {:.0} s), runs its pods (their containers start at once and keep \
         running, their addresses come from its pod CIDR) and finishes their deletion. Every node offers {} CPUs, {} and {} pods; every pod requests {} CPU and {}. \
         Everything shares the machine's {} cores. After each namespace deletion the \
         benchmark compacts etcd's history at once, as the API server does on its own every \
         five minutes (its default interval): otherwise every deleted pod stays in etcd's index \
         and each later range over the pods steps over it.\n",
        s.nodes_per_connection,
        s.renew_interval_s,
        s.lease_duration_s,
        s.node_monitor_grace_period_s,
        s.node_cpu,
        s.node_memory,
        s.node_max_pods,
        s.pod_cpu_request,
        s.pod_memory_request,
        m.cpus
    );
    let _ = writeln!(out, "**Targets:**\n");
    for t in &r.targets {
        let _ = writeln!(out, "- {}", t.line);
    }
    out.push('\n');
    if r.failures.is_empty() {
        let _ = writeln!(
            out,
            "**Checks:** every pod was bound to a hollow node of the run, no node got more pods \
             than it can take, every pod was reported Running, and every namespace was \
             deleted.\n"
        );
    } else {
        let _ = writeln!(out, "**The run FAILED:**\n");
        for f in &r.failures {
            let _ = writeln!(out, "- {f}");
        }
        out.push('\n');
    }

    let _ = writeln!(out, "## Scheduling throughput\n");
    let _ = writeln!(
        out,
        "{} pods (not owned by anything) at each number of nodes, in two ways. *Backlog:* every \
         pod is created while the scheduler is stopped, then the scheduler is started; times \
         count from its start (so the first bind includes its start-up: connecting, listing \
         the nodes and the pods), and a pod's latency is from that start to the benchmark's \
         watch seeing it bound. This measures the scheduler, not the rate pods can be created \
         at. *Streaming:* the scheduler runs (a probe pod has been bound) while {} clients \
         create the pods as fast as they can; times count from the first create, and a pod's \
         latency is from sending its create to the watch seeing it bound (the benchmark's \
         clock: `creationTimestamp` has whole seconds only). Pods/s from the first bind to the \
         last count the binds after the first. *All Running* is when the watch had seen every \
         pod reported Running by its node. Between measurements the namespace is deleted and \
         the benchmark waits until it is gone.\n",
        s.pods, s.creators
    );
    let rows: Vec<Vec<String>> = r
        .scheduling
        .iter()
        .map(|x| {
            vec![
                x.nodes.to_string(),
                x.mode.to_owned(),
                format!("{}/{}", x.bound, x.pods),
                num(Some(x.create_per_s), 0),
                num(x.first_bind_s, 2),
                num(x.last_bind_s, 2),
                num(x.window_pods_per_s, 0),
                num(x.overall_pods_per_s, 0),
                num(x.latency.map(|l| l.p50_ms), 0),
                num(x.latency.map(|l| l.p99_ms), 0),
                num(x.all_running_s, 2),
                x.nodes_used.to_string(),
                x.max_pods_per_node.to_string(),
                num(x.cleanup_s, 1),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "nodes",
            "mode",
            "bound",
            "creates/s",
            "first bind s",
            "last bind s",
            "pods/s first→last",
            "pods/s overall",
            "latency p50 ms",
            "p99 ms",
            "all Running s",
            "nodes used",
            "most pods on a node",
            "namespace deletion s",
        ],
        &rows,
    );
    if r.scheduling.is_empty() {
        out.push_str("\nNo figures (the phase failed).\n");
    }

    let _ = writeln!(out, "\n## A {}-replica Deployment\n", s.replicas);
    match &r.deployment {
        Some(d) => {
            let _ = writeln!(
                out,
                "Created with the scheduler and the controller-manager running (the scheduler \
                 warmed up by a probe pod). Times from the Deployment's create until the \
                 benchmark's watch had seen all {} pods created by the ReplicaSet, bound by the \
                 scheduler, and reported Running by their nodes, and until the Deployment's \
                 status counted them all available.\n",
                d.replicas
            );
            table(
                &mut out,
                &[
                    "nodes",
                    "replicas",
                    "all created s",
                    "all bound s",
                    "all Running s",
                    "available s",
                    "namespace deletion s",
                ],
                &[vec![
                    d.nodes.to_string(),
                    d.replicas.to_string(),
                    num(d.all_created_s, 2),
                    num(d.all_bound_s, 2),
                    num(d.all_running_s, 2),
                    num(d.available_s, 2),
                    num(d.cleanup_s, 1),
                ]],
            );
        }
        None => out.push_str("No figures (the phase failed).\n"),
    }

    let _ = writeln!(out, "\n## Starting hollow nodes\n");
    let rows: Vec<Vec<String>> = r
        .node_starts
        .iter()
        .map(|n| {
            vec![
                n.started.to_string(),
                n.nodes.to_string(),
                num(Some(n.seconds), 1),
                num(Some(n.started as f64 / n.seconds), 0),
            ]
        })
        .collect();
    let _ = writeln!(
        out,
        "Until every new node had registered (created its Node and written its status), created \
         its Lease and listed and watched its pods; 64 register at a time.\n"
    );
    table(
        &mut out,
        &["nodes started", "nodes in all", "seconds", "nodes/s"],
        &rows,
    );

    let _ = writeln!(out, "\n## Memory\n");
    let _ = writeln!(
        out,
        "Resident set (VmRSS) when sampled and its peak so far (VmHWM), in MiB.\n"
    );
    for snap in &r.resources.memory {
        let _ = writeln!(out, "{}:\n", snap.when);
        let rows: Vec<Vec<String>> = PROCESSES
            .iter()
            .filter_map(|(name, shown)| {
                let p = snap.processes.iter().find(|p| p.process == *name)?;
                Some(vec![
                    (*shown).to_owned(),
                    num(p.rss_mib, 0),
                    num(p.peak_rss_mib, 0),
                ])
            })
            .collect();
        table(&mut out, &["process", "RSS MiB", "peak RSS MiB"], &rows);
        out.push('\n');
    }
    if r.resources.memory.is_empty() {
        out.push_str("Not sampled (the phases failed before).\n\n");
    }

    let _ = writeln!(out, "## CPU time per step\n");
    let _ = writeln!(
        out,
        "User + system seconds of each process during each step; *others* is every other \
         process on the machine (a figure disturbed by a concurrent build shows there).\n"
    );
    let mut header = vec!["step", "wall s"];
    header.extend(PROCESSES.iter().map(|(_, shown)| *shown));
    header.extend(["others", "stolen"]);
    let rows: Vec<Vec<String>> = r
        .resources
        .phases
        .iter()
        .map(|c| {
            let mut row = vec![c.phase.clone(), num(Some(c.wall_s), 1)];
            row.extend(
                PROCESSES
                    .iter()
                    .map(|(name, _)| num(c.cpu_s.get(name).copied(), 1)),
            );
            row.extend([num(c.other_cpu_s, 1), num(c.steal_s, 1)]);
            row
        })
        .collect();
    table(&mut out, &header, &rows);

    let _ = writeln!(out, "\n## The API server's view\n");
    let _ = writeln!(
        out,
        "The API server's own mean latency of its most frequent requests and etcd operations in \
         each step (from its `/metrics` histograms): calls × mean ms.\n"
    );
    let rows: Vec<Vec<String>> = r
        .resources
        .phases
        .iter()
        .filter(|c| !c.server.is_empty())
        .map(|c| {
            let mut calls: Vec<_> = c.server.iter().collect();
            calls.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.call.cmp(&b.call)));
            let text: Vec<String> = calls
                .iter()
                .take(SERVER_CALLS_SHOWN)
                .map(|x| format!("{} {} × {:.2}", x.call, x.calls, x.mean_ms))
                .collect();
            vec![c.phase.clone(), text.join("; ")]
        })
        .collect();
    table(&mut out, &["step", "calls"], &rows);

    let h = &r.hollow;
    let _ = writeln!(out, "\n## What the hollow nodes did\n");
    table(
        &mut out,
        &[
            "lease renewals",
            "failed renewals",
            "node status writes",
            "pod status writes",
            "lost compare-and-swaps",
            "pod deletions",
            "failed calls",
        ],
        &[vec![
            h.lease_renewals.to_string(),
            h.lease_failures.to_string(),
            h.node_status_writes.to_string(),
            h.pod_status_writes.to_string(),
            h.conflicts.to_string(),
            h.pod_deletes.to_string(),
            h.errors.to_string(),
        ]],
    );
    if let Some(e) = &h.last_error {
        let _ = writeln!(out, "\nThe last failed call: {e}");
    }
    if !r.resources.notes.is_empty() {
        let _ = writeln!(out, "\n## Notes\n");
        for n in &r.resources.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

/// A few lines for the terminal.
pub fn summary_table(r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6} {:>10} {:>9} {:>12} {:>12} {:>10} {:>10}",
        "nodes", "mode", "pods", "pods/s f→l", "pods/s all", "p50 ms", "p99 ms"
    );
    for x in &r.scheduling {
        let _ = writeln!(
            out,
            "{:>6} {:>10} {:>9} {:>12} {:>12} {:>10} {:>10}",
            x.nodes,
            x.mode,
            format!("{}/{}", x.bound, x.pods),
            num(x.window_pods_per_s, 0),
            num(x.overall_pods_per_s, 0),
            num(x.latency.map(|l| l.p50_ms), 0),
            num(x.latency.map(|l| l.p99_ms), 0),
        );
    }
    if let Some(d) = &r.deployment {
        let _ = writeln!(
            out,
            "Deployment of {} at {} nodes: created {} s, bound {} s, Running {} s, available {} s",
            d.replicas,
            d.nodes,
            num(d.all_created_s, 2),
            num(d.all_bound_s, 2),
            num(d.all_running_s, 2),
            num(d.available_s, 2)
        );
    }
    for t in &r.targets {
        let _ = writeln!(out, "{}", t.line);
    }
    out
}
