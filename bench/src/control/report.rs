//! The control-plane benchmark's outputs: `control.json`, `control.md` and the summary printed
//! at the end of a run.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use super::{
    LIST_CREATORS, LIST_RUNS, Percentiles, Results, STEADY_GETS_PER_S, STEADY_WRITES_PER_S,
    VerbFigures,
    phases::{NO_SELECTOR, selector_text},
};

/// Writes `control.json` and `control.md` into `dir`; returns their paths.
pub(super) fn write(results: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("control.json");
    let text = serde_json::to_string_pretty(results).context("encoding the results")?;
    fs::write(&json, text + "\n").with_context(|| format!("writing {}", json.display()))?;
    let md = dir.join("control.md");
    fs::write(&md, markdown(results)).with_context(|| format!("writing {}", md.display()))?;
    Ok(vec![json, md])
}

/// The report: the target's verdict, then a table per phase.
pub(super) fn markdown(r: &Results) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let s = &r.settings;
    let _ = writeln!(out, "# Skiff control-plane benchmark\n");
    let _ = writeln!(
        out,
        "{} run of {}, {:.0} s. {} ({} cores, {:.1} GiB), {}; {}. One etcd member (data in a \
         temporary directory) and one `skiff-apiserver` (release build) on this machine, sharing \
         its cores with the benchmark's clients; every client authenticates with a bearer token \
         over plain HTTP/2 on loopback.\n",
        if s.quick { "Quick" } else { "Full" },
        r.started,
        r.run_seconds,
        m.cpu_model,
        m.cpus,
        m.memory_gib,
        m.kernel,
        m.etcd_version
    );
    let _ = writeln!(out, "**Target:** {}\n", r.target.line);
    if r.failures.is_empty() {
        let _ = writeln!(
            out,
            "**Checks:** every call succeeded, every list returned exactly the matching pods, and every watcher saw every update once, in revision order.\n"
        );
    } else {
        let _ = writeln!(out, "**The run FAILED:**\n");
        for f in &r.failures {
            let _ = writeln!(out, "- {f}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "Phases ran in this order: {}. The list phase runs first so that its full list holds \
         exactly its own pods; the latency phases then run against a store that holds them.\n",
        r.phase_order.join(", ")
    );

    let _ = writeln!(out, "## Steady rate (open loop)\n");
    match &r.steady {
        Some(st) => {
            let _ = writeln!(
                out,
                "{STEADY_WRITES_PER_S} writes/s (creates of new pods and read-modify-write \
                 updates of an annotation on existing ones, alternating) and \
                 {STEADY_GETS_PER_S} gets/s for {} s. Each call starts on its own task at its \
                 scheduled time and is timed from that time, so a slow call holds up no other \
                 and a stall is charged to every call it delayed. Achieved: {:.1} writes/s, \
                 {:.1} gets/s. Calls were issued p50 {} ms, max {} ms after their scheduled \
                 start (the timer ticks in milliseconds); that is part of the latencies below.\n",
                s.steady_seconds,
                st.writes_per_s,
                st.gets_per_s,
                ms(st.issue_lag.p50_ms),
                ms(st.issue_lag.max_ms)
            );
            out.push_str(&verb_table(&st.verbs));
            if !st.slowest.is_empty() {
                let slow: Vec<String> = st
                    .slowest
                    .iter()
                    .map(|c| format!("{} {} ms at {:.2} s", c.verb, ms(c.ms), c.at_s))
                    .collect();
                let _ = writeln!(
                    out,
                    "\nSlowest calls (scheduled start from the phase's first call): {}.",
                    slow.join(", ")
                );
            }
        }
        None => out.push_str("No figures (the phase failed).\n"),
    }

    let _ = writeln!(out, "\n## Saturation (closed loop)\n");
    match &r.saturation {
        Some(sat) => {
            let _ = writeln!(
                out,
                "Each client has its own connection and creates a pod, updates it and gets it, \
                 over and over, for {:.1} s per level.\n",
                s.saturation_seconds_per_level
            );
            let header = [
                "clients",
                "all calls/s",
                "verb",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "errors",
            ];
            let mut rows = Vec::new();
            for level in &sat.levels {
                for (i, v) in level.verbs.iter().enumerate() {
                    let first = i == 0;
                    rows.push(vec![
                        if first {
                            level.clients.to_string()
                        } else {
                            String::new()
                        },
                        if first {
                            format!("{:.0}", level.calls_per_s)
                        } else {
                            String::new()
                        },
                        v.verb.to_owned(),
                        format!("{:.0}", v.per_second),
                        ms(v.latency.p50_ms),
                        ms(v.latency.p99_ms),
                        ms(v.latency.max_ms),
                        v.errors.to_string(),
                    ]);
                }
            }
            out.push_str(&table(&header, &rows));
        }
        None => out.push_str("No figures (the phase failed).\n"),
    }

    let _ = writeln!(out, "\n## List\n");
    match &r.list {
        Some(l) => {
            let _ = writeln!(
                out,
                "{} pods ({} bytes of JSON each as stored: one container with image, ports, \
                 environment, requests, limits and a readiness probe; `spec.nodeName` \
                 round-robin over 10 nodes; a `shard` label with 10 values) created by \
                 {LIST_CREATORS} concurrent clients in {:.1} s: {:.0} pods/s, create p50 {} ms, \
                 p99 {} ms, {} errors. Each list ran {LIST_RUNS} times over all namespaces; \
                 bytes are the sum of the items' JSON.\n",
                l.pods,
                l.pod_json_bytes,
                l.create_seconds,
                l.create.per_second,
                ms(l.create.latency.p50_ms),
                ms(l.create.latency.p99_ms),
                l.create.errors
            );
            let header = ["list", "selector", "items", "MiB", "p50 ms", "max ms"];
            let rows: Vec<Vec<String>> = l
                .lists
                .iter()
                .map(|q| {
                    vec![
                        q.what.to_owned(),
                        match selector_text(q) {
                            s if s == NO_SELECTOR => s,
                            s => format!("`{s}`"),
                        },
                        q.items.to_string(),
                        format!("{:.2}", q.bytes as f64 / (1 << 20) as f64),
                        ms(q.p50_ms),
                        ms(q.max_ms),
                    ]
                })
                .collect();
            out.push_str(&table(&header, &rows));
        }
        None => out.push_str("No figures (the phase failed).\n"),
    }

    let _ = writeln!(out, "\n## Watch fan-out\n");
    match &r.watch {
        Some(w) => {
            let _ = writeln!(
                out,
                "{} watchers on one namespace over {} connections, each from the revision of a \
                 list; {} updates to the namespace's pods at {:.0}/s (update latency p50 {} ms, \
                 p99 {} ms). {} of {} events delivered; {} of {} watchers saw every update \
                 exactly once, in revision order. Delays are measured on one clock; {} events \
                 reached a watcher before the writer had the update's reply and count as 0 ms \
                 from the reply.\n",
                w.watchers,
                w.connections,
                w.updates,
                w.updates_per_s,
                ms(w.update_latency.p50_ms),
                ms(w.update_latency.p99_ms),
                w.events_received,
                w.events_expected,
                w.watchers_complete,
                w.watchers,
                w.before_reply,
            );
            let header = ["delivery delay", "p50 ms", "p90 ms", "p99 ms", "max ms"];
            let row = |what: &str, p: &Percentiles| {
                vec![
                    what.to_owned(),
                    ms(p.p50_ms),
                    ms(p.p90_ms),
                    ms(p.p99_ms),
                    ms(p.max_ms),
                ]
            };
            let rows = vec![
                row("from the writer's reply", &w.delay),
                row("from the writer's send", &w.delay_from_send),
            ];
            out.push_str(&table(&header, &rows));
        }
        None => out.push_str("No figures (the phase failed).\n"),
    }

    let res = &r.resources;
    let _ = writeln!(out, "\n## Resource use\n");
    let _ = writeln!(
        out,
        "Peak resident memory (VmHWM at the end of the run): skiff-apiserver {}, etcd {}. CPU \
         time is user + system over each phase; \"other\" is every other process on the machine \
         (figures of a phase with much of it were disturbed), \"stolen\" the time the \
         hypervisor ran something else.\n",
        mib(res.apiserver_peak_rss_mib),
        mib(res.etcd_peak_rss_mib)
    );
    let header = [
        "phase",
        "wall s",
        "apiserver CPU s",
        "etcd CPU s",
        "benchmark CPU s",
        "other CPU s",
        "stolen s",
    ];
    let rows: Vec<Vec<String>> = res
        .phases
        .iter()
        .map(|p| {
            vec![
                p.phase.to_owned(),
                format!("{:.1}", p.wall_s),
                seconds(p.apiserver_cpu_s),
                seconds(p.etcd_cpu_s),
                seconds(p.benchmark_cpu_s),
                seconds(p.other_cpu_s),
                seconds(p.steal_s),
            ]
        })
        .collect();
    out.push_str(&table(&header, &rows));
    let _ = writeln!(
        out,
        "\nThe API server's own timing (means from its `/metrics` histograms): a request's \
         time in the server, including its etcd calls, and the etcd calls alone.\n"
    );
    let header = ["phase", "call", "calls", "mean ms"];
    let rows: Vec<Vec<String>> = res
        .phases
        .iter()
        .flat_map(|p| {
            p.server.iter().map(|c| {
                vec![
                    p.phase.to_owned(),
                    c.call.clone(),
                    c.calls.to_string(),
                    ms(c.mean_ms),
                ]
            })
        })
        .collect();
    out.push_str(&table(&header, &rows));
    for note in &res.notes {
        let _ = writeln!(out, "\nNote: {note}");
    }
    out
}

/// The summary printed at the end of a run.
pub(super) fn summary_table(r: &Results) -> String {
    let mut out = String::new();
    let mut rows = Vec::new();
    let verb_row = |phase: &str, v: &VerbFigures| {
        vec![
            phase.to_owned(),
            v.verb.to_owned(),
            format!("{:.0}", v.per_second),
            ms(v.latency.p50_ms),
            ms(v.latency.p99_ms),
            ms(v.latency.max_ms),
            v.errors.to_string(),
        ]
    };
    if let Some(st) = &r.steady {
        rows.extend(st.verbs.iter().map(|v| verb_row("steady", v)));
    }
    if let Some(sat) = &r.saturation {
        for level in &sat.levels {
            let phase = format!("saturation x{}", level.clients);
            rows.extend(level.verbs.iter().map(|v| verb_row(&phase, v)));
        }
    }
    if let Some(l) = &r.list {
        rows.push(verb_row(&format!("list: {} pods", l.pods), &l.create));
        for q in &l.lists {
            rows.push(vec![
                format!("list {}", q.what),
                format!("{} items", q.items),
                String::new(),
                ms(q.p50_ms),
                String::new(),
                ms(q.max_ms),
                String::new(),
            ]);
        }
    }
    if let Some(w) = &r.watch {
        rows.push(vec![
            format!("watch x{}", w.watchers),
            format!("{}/{} events", w.events_received, w.events_expected),
            String::new(),
            ms(w.delay.p50_ms),
            ms(w.delay.p99_ms),
            ms(w.delay.max_ms),
            String::new(),
        ]);
    }
    let header = [
        "phase", "call", "per s", "p50 ms", "p99 ms", "max ms", "errors",
    ];
    out.push_str(&plain_table(&header, &rows));
    let res = &r.resources;
    let _ = writeln!(
        out,
        "peak RSS: skiff-apiserver {}, etcd {}",
        mib(res.apiserver_peak_rss_mib),
        mib(res.etcd_peak_rss_mib)
    );
    let _ = write!(out, "{}", r.target.line);
    out
}

/// Per-verb figures of the steady phase.
fn verb_table(verbs: &[VerbFigures]) -> String {
    let header = [
        "verb",
        "calls",
        "per s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors",
        "conflicts",
    ];
    let rows: Vec<Vec<String>> = verbs
        .iter()
        .map(|v| {
            let Percentiles {
                p50_ms,
                p90_ms,
                p99_ms,
                max_ms,
                ..
            } = v.latency;
            vec![
                v.verb.to_owned(),
                v.ok.to_string(),
                format!("{:.1}", v.per_second),
                ms(p50_ms),
                ms(p90_ms),
                ms(p99_ms),
                ms(max_ms),
                v.errors.to_string(),
                v.conflicts.to_string(),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// A Markdown table; columns of figures are right-aligned.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n|", header.join(" | "));
    for i in 0..header.len() {
        let figures = rows
            .iter()
            .filter_map(|r| r.get(i))
            .all(|c| c.is_empty() || c == "-" || c.starts_with(|ch: char| ch.is_ascii_digit()));
        out.push_str(if figures { "---:|" } else { "---|" });
    }
    out.push('\n');
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

/// Columns padded to their widest cell, for a terminal.
fn plain_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Milliseconds with two significant decimals below 10 ms, one below 100, none above.
fn ms(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn mib(v: Option<f64>) -> String {
    v.map_or_else(|| "not measured".into(), |m| format!("{m:.0} MiB"))
}

fn seconds(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_keep_sensible_precision() {
        assert_eq!(ms(0.4567), "0.46");
        assert_eq!(ms(12.345), "12.3");
        assert_eq!(ms(250.4), "250");
        assert_eq!(ms(f64::NAN), "-");
    }

    #[test]
    fn markdown_tables_right_align_figures() {
        let t = table(&["verb", "p99 ms"], &[vec!["create".into(), "3.10".into()]]);
        assert_eq!(t, "| verb | p99 ms |\n|---|---:|\n| create | 3.10 |\n");
    }

    #[test]
    fn plain_tables_pad_columns() {
        let t = plain_table(
            &["phase", "call", "p50"],
            &[vec!["steady".into(), "get".into(), "0.51".into()]],
        );
        assert_eq!(t, "phase   call   p50\nsteady  get   0.51\n");
    }
}
