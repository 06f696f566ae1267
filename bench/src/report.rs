//! The report of a run: the median and spread of every (scale, mode, metric) cell, the
//! benchmark's targets checked against them, `report.md` (also printed, in part, at the end of
//! a run) and three gnuplot plots.
//!
//! The machines are noisy, so everything leads with medians, and with skiff's median divided by
//! the other paths' medians; the spread (min–max over the repetitions) is shown beside them, and
//! every ratio carries a noise figure: how much the two paths it divides vary against
//! themselves, so a reader can tell a real difference from the machine's own jitter.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::model::{Better, CellNoise, Metric, Mode, RatioNoise, Results, Settings};

/// Median and spread of one (scale, mode, metric) cell.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Cell {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many samples the cell has.
    pub n: usize,
}

/// All cells, keyed (scale, mode, metric). Samples whose value is not finite (NaN, infinite)
/// are left out; a cell exists only where at least one finite sample does.
pub fn summarize(results: &Results) -> BTreeMap<(usize, Mode, Metric), Cell> {
    let mut values: BTreeMap<(usize, Mode, Metric), Vec<f64>> = BTreeMap::new();
    for s in &results.samples {
        if s.value.is_finite() {
            values
                .entry((s.scale, s.mode, s.metric))
                .or_default()
                .push(s.value);
        }
    }
    values
        .into_iter()
        .filter_map(|(key, v)| cell_of(v).map(|c| (key, c)))
        .collect()
}

impl Cell {
    /// The cell measured against itself: (max - min) / (2 * median), so the repetitions lie
    /// within about ±noise of the median. `None` with fewer than two samples (nothing to
    /// compare) or a median of zero.
    pub fn noise(&self) -> Option<f64> {
        let noise = (self.max - self.min) / (2.0 * self.median.abs());
        (self.n >= 2 && noise.is_finite()).then_some(noise)
    }
}

/// The noise of every cell and skiff's ratio to every other path with the noise of the two
/// paths added, as results.json records them.
pub fn noise_figures(results: &Results) -> (Vec<CellNoise>, Vec<RatioNoise>) {
    let s = Summary::new(results);
    let cells = s
        .cells
        .iter()
        .filter(|((_, mode, metric), _)| metric.applies_to(*mode))
        .map(|(&(scale, mode, metric), c)| CellNoise {
            scale,
            mode,
            metric,
            median: c.median,
            min: c.min,
            max: c.max,
            n: c.n,
            noise: c.noise(),
        })
        .collect();
    let mut ratios = Vec::new();
    for &scale in &s.scales {
        for metric in Metric::ALL {
            for other in OTHERS {
                if let Some(ratio) = s.skiff_ratio(scale, metric, other) {
                    ratios.push(RatioNoise {
                        scale,
                        metric,
                        other,
                        ratio,
                        noise: s.ratio_noise(scale, metric, other),
                    });
                }
            }
        }
    }
    (cells, ratios)
}

fn cell_of(mut v: Vec<f64>) -> Option<Cell> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let (&min, &max) = (v.first()?, v.last()?);
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Cell {
        median,
        min,
        max,
        n,
    })
}

/// One target of the benchmark, evaluated.
#[derive(Clone, Debug, Serialize)]
pub struct TargetCheck {
    /// What is promised, with the scale it is checked at.
    pub target: String,
    /// The figures it was judged on (or, when not measured, what was missing).
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
    /// By how much a missed target was missed ("" when met or not measured).
    pub by: String,
}

/// Room for floating-point error when a ratio sits exactly on a limit.
const EPS: f64 = 1e-9;

/// The benchmark's targets, judged on medians.
pub fn check_targets(results: &Results) -> Vec<TargetCheck> {
    let s = Summary::new(results);
    let (smallest, largest) = (s.smallest(), s.largest());
    let mut checks = Vec::new();
    for metric in [Metric::RrP50Us, Metric::RrP99Us] {
        checks.push(latency_vs_direct(&s, metric, smallest));
    }
    for metric in [Metric::RrP50Us, Metric::RrP99Us] {
        checks.push(latency_flat(&s, metric, smallest, largest));
    }
    checks.push(share_of_direct(
        &s,
        Metric::CrrRate,
        0.90,
        "connection rate",
    ));
    checks.push(crr_above_iptables(&s, largest));
    checks.push(share_of_direct(&s, Metric::IperfGbps, 0.95, "throughput"));
    checks.push(under_limit(
        &s,
        Metric::ProgramChangeUs,
        largest,
        1000.0,
        "1 ms",
        |scale| {
            format!(
                "one endpoint change {} programmed in skiff's datapath in under 1 ms",
                at_scale(scale, "largest")
            )
        },
    ));
    checks.push(under_limit(
        &s,
        Metric::ProgramAllMs,
        largest,
        1000.0,
        "1 s",
        |scale| match scale {
            Some(n) => format!(
                "all {} programmed in skiff from empty in under 1 s (largest scale)",
                services(n)
            ),
            None => "all Services programmed in skiff from empty in under 1 s, at the largest \
                     scale"
                .into(),
        },
    ));
    checks
}

fn not_measured(target: String, measured: String) -> TargetCheck {
    TargetCheck {
        target,
        measured,
        met: None,
        by: String::new(),
    }
}

fn judged(target: String, measured: String, met: bool, by: impl FnOnce() -> String) -> TargetCheck {
    let by = if met { String::new() } else { by() };
    TargetCheck {
        target,
        measured,
        met: Some(met),
        by,
    }
}

/// "at 1 Service (smallest scale)", or "at the smallest scale" when nothing was measured.
fn at_scale(scale: Option<usize>, which: &str) -> String {
    match scale {
        Some(n) => format!("at {} ({which} scale)", services(n)),
        None => format!("at the {which} scale"),
    }
}

fn latency_vs_direct(s: &Summary, metric: Metric, smallest: Option<usize>) -> TargetCheck {
    let target = format!(
        "skiff {} within 5% of direct {}",
        short(metric),
        at_scale(smallest, "smallest")
    );
    let unit = metric.unit();
    let Some(scale) = smallest else {
        return not_measured(target, "no samples in this run".into());
    };
    let (Some(sk), Some(d)) = (
        s.median(scale, Mode::Skiff, metric),
        s.median(scale, Mode::Direct, metric),
    ) else {
        return not_measured(target, missing(metric, &[Mode::Skiff, Mode::Direct], scale));
    };
    let Some(r) = ratio(sk, d) else {
        return not_measured(target, format!("direct's median is {} {unit}", fmt_num(d)));
    };
    let measured = format!(
        "skiff {} {unit} vs direct {} {unit} (ratio {})",
        fmt_num(sk),
        fmt_num(d),
        fmt_ratio(r)
    );
    judged(target, measured, r <= 1.05 + EPS, || {
        format!(
            "{} percentage points over the 5% limit (skiff {}% slower than direct)",
            pct(r - 1.05),
            pct(r - 1.0)
        )
    })
}

fn latency_flat(
    s: &Summary,
    metric: Metric,
    smallest: Option<usize>,
    largest: Option<usize>,
) -> TargetCheck {
    let unit = metric.unit();
    let (Some(lo), Some(hi)) = (smallest, largest) else {
        return not_measured(
            format!(
                "skiff {} unchanged within 5% from the smallest to the largest scale",
                short(metric)
            ),
            "no samples in this run".into(),
        );
    };
    let target = format!(
        "skiff {} at {} within 5% of {} (largest against smallest scale)",
        short(metric),
        services(hi),
        services(lo)
    );
    if lo == hi {
        return not_measured(
            target,
            format!("only one scale in this run ({})", services(lo)),
        );
    }
    let (Some(a), Some(b)) = (
        s.median(lo, Mode::Skiff, metric),
        s.median(hi, Mode::Skiff, metric),
    ) else {
        let gone = if s.median(lo, Mode::Skiff, metric).is_none() {
            lo
        } else {
            hi
        };
        return not_measured(target, missing(metric, &[Mode::Skiff], gone));
    };
    let Some(r) = ratio(b, a) else {
        return not_measured(
            target,
            format!(
                "skiff's median at {} is {} {unit}",
                services(lo),
                fmt_num(a)
            ),
        );
    };
    let measured = format!(
        "skiff {} {unit} at {} → {} {unit} at {} (ratio {})",
        fmt_num(a),
        services(lo),
        fmt_num(b),
        services(hi),
        fmt_ratio(r)
    );
    judged(target, measured, r <= 1.05 + EPS, || {
        format!(
            "{} percentage points over the 5% limit (skiff {}% slower at {} than at {})",
            pct(r - 1.05),
            pct(r - 1.0),
            services(hi),
            services(lo)
        )
    })
}

/// skiff at least `floor` of direct at every scale where both were measured; the worst counts.
fn share_of_direct(s: &Summary, metric: Metric, floor: f64, what: &str) -> TargetCheck {
    let target = format!(
        "skiff {what} at least {}% of direct at every scale (worst shown)",
        pct_limit(floor)
    );
    let unit = metric.unit();
    let mut worst: Option<(usize, f64, f64, f64)> = None;
    let mut compared = 0;
    for &scale in &s.scales {
        let (Some(sk), Some(d)) = (
            s.median(scale, Mode::Skiff, metric),
            s.median(scale, Mode::Direct, metric),
        ) else {
            continue;
        };
        let Some(r) = ratio(sk, d) else { continue };
        compared += 1;
        if worst.is_none_or(|(_, w, _, _)| r < w) {
            worst = Some((scale, r, sk, d));
        }
    }
    let Some((scale, r, sk, d)) = worst else {
        return not_measured(
            target,
            format!("no scale with both skiff and direct {}", metric.id()),
        );
    };
    let coverage = if compared < s.scales.len() {
        format!("; compared at {compared} of {} scales", s.scales.len())
    } else {
        String::new()
    };
    let measured = format!(
        "worst at {}: skiff {} vs direct {} {unit} (ratio {}){coverage}",
        services(scale),
        fmt_num(sk),
        fmt_num(d),
        fmt_ratio(r)
    );
    judged(target, measured, r >= floor - EPS, || {
        format!(
            "{} percentage points under the {}% floor at {} (skiff at {}% of direct)",
            pct(floor - r),
            pct_limit(floor),
            services(scale),
            pct(r)
        )
    })
}

fn crr_above_iptables(s: &Summary, largest: Option<usize>) -> TargetCheck {
    const STATED_FOR: usize = 10_000;
    let metric = Metric::CrrRate;
    let unit = metric.unit();
    let target = match largest {
        Some(n) if n == STATED_FOR => {
            format!(
                "skiff connection rate above iptables at {} (largest scale)",
                services(n)
            )
        }
        Some(n) => format!(
            "skiff connection rate above iptables at {} (largest scale in this run; the target is \
             stated for {})",
            services(n),
            services(STATED_FOR)
        ),
        None => "skiff connection rate above iptables at the largest scale".into(),
    };
    let Some(scale) = largest else {
        return not_measured(target, "no samples in this run".into());
    };
    let (Some(sk), Some(ip)) = (
        s.median(scale, Mode::Skiff, metric),
        s.median(scale, Mode::Iptables, metric),
    ) else {
        return not_measured(
            target,
            missing(metric, &[Mode::Skiff, Mode::Iptables], scale),
        );
    };
    let shown = match ratio(sk, ip) {
        Some(r) => format!(" (ratio {})", fmt_ratio(r)),
        None => String::new(),
    };
    let measured = format!(
        "skiff {} vs iptables {} {unit}{shown}",
        fmt_num(sk),
        fmt_num(ip)
    );
    judged(target, measured, sk > ip, || {
        if sk == ip {
            "equal to iptables; it has to be above".into()
        } else {
            let below = ratio(ip - sk, ip)
                .map(|r| format!("{}% ", pct(r)))
                .unwrap_or_default();
            format!(
                "skiff {below}below iptables ({} {unit} fewer)",
                fmt_num(ip - sk)
            )
        }
    })
}

fn under_limit(
    s: &Summary,
    metric: Metric,
    largest: Option<usize>,
    limit: f64,
    limit_text: &str,
    target: impl FnOnce(Option<usize>) -> String,
) -> TargetCheck {
    let target = target(largest);
    let unit = metric.unit();
    let Some(scale) = largest else {
        return not_measured(target, "no samples in this run".into());
    };
    let Some(c) = s.get(scale, Mode::Skiff, metric) else {
        return not_measured(target, missing(metric, &[Mode::Skiff], scale));
    };
    let measured = format!(
        "median {} {unit} (min–max {}–{} {unit}, n={})",
        fmt_num(c.median),
        fmt_num(c.min),
        fmt_num(c.max),
        c.n
    );
    judged(target, measured, c.median < limit, || {
        format!(
            "{} {unit} over the {limit_text} limit (+{}%)",
            fmt_num(c.median - limit),
            pct(c.median / limit - 1.0)
        )
    })
}

/// "no skiff or direct rr_p50_us at 1 Service".
fn missing(metric: Metric, modes: &[Mode], scale: usize) -> String {
    let names: Vec<&str> = modes.iter().map(|m| m.name()).collect();
    format!(
        "no {} {} at {}",
        names.join(" or "),
        metric.id(),
        services(scale)
    )
}

/// The headline metrics of the summary, in order.
const HEADLINE: [Metric; 9] = [
    Metric::RrP50Us,
    Metric::RrP99Us,
    Metric::CrrRate,
    Metric::WrkKeepaliveRps,
    Metric::WrkCloseRps,
    Metric::IperfGbps,
    Metric::WrkKeepaliveCpuUs,
    Metric::ProgramAllMs,
    Metric::ProgramChangeUs,
];

/// The modes skiff is divided by in the ratio columns.
const OTHERS: [Mode; 3] = [Mode::Direct, Mode::Iptables, Mode::Nftables];

const DASH: &str = "—";

/// The lead summary table only (Markdown), for the terminal: medians and ratios of the
/// headline metrics at the largest scale, then at the smallest if different, with how to read
/// the ratios.
pub fn summary_table(results: &Results) -> String {
    let s = Summary::new(results);
    let (Some(smallest), Some(largest)) = (s.smallest(), s.largest()) else {
        return "No samples were recorded in this run.\n".into();
    };
    let mut blocks = Vec::new();
    let mut scales = vec![(largest, "largest scale")];
    if smallest != largest {
        scales.push((smallest, "smallest scale"));
    }
    for (scale, which) in scales {
        let mut rows = Vec::new();
        for metric in HEADLINE {
            if !Mode::ALL.iter().any(|&m| s.get(scale, m, metric).is_some()) {
                continue;
            }
            let mut row = vec![format!(
                "{} ({}) {}",
                short(metric),
                metric.unit(),
                arrow(metric)
            )];
            for mode in Mode::ALL {
                row.push(
                    s.median(scale, mode, metric)
                        .map_or_else(|| DASH.into(), fmt_num),
                );
            }
            for other in OTHERS {
                row.push(s.ratio_cell(scale, metric, other));
            }
            rows.push(row);
        }
        let mut block = format!("**At {}** ({which}), medians:\n\n", services(scale));
        if rows.is_empty() {
            block.push_str("No headline figures at this scale.\n");
        } else {
            block.push_str(&table(&ratio_header("metric"), &rows, true));
        }
        blocks.push(block);
    }
    blocks.push(RATIO_LEGEND.into());
    blocks.join("\n")
}

const RATIO_LEGEND: &str = "\
- Ratios are skiff's median divided by the other path's median at the same scale (1/N: skiff's \
figure is N times smaller).
- ↓ lower is better (latency, CPU, programming time): a ratio below 1 means skiff is faster or \
cheaper.
- ↑ higher is better (rates, throughput): a ratio above 1 means skiff carries more.
- noise ±N% beside a ratio: how far that ratio could move from the machine's jitter alone. Each \
path is measured against itself over the repetitions, its noise being (max − min) / (2 × median) \
(its repetitions lie within about ±noise of its median); a ratio's noise is the noise of skiff \
and of the other path added. A ratio whose distance from 1 is smaller than its noise (1.060 with \
noise ±8%) is not a measured difference; one well beyond it (1.230 with noise ±4%) is likely \
one. It is a rough figure: a range of n samples understates the spread when n is small (with \
the quick mode's 2 repetitions it covers about half a standard deviation each way), so read it \
as a floor, and run more repetitions (`--repetitions`) before trusting a difference of a few \
percent. The orders of the paths are balanced (each path in each position equally often) when \
the repetitions are a multiple of the number of paths. n/a: fewer than two repetitions, so no \
spread to judge by.
";

fn ratio_header(first: &str) -> Vec<String> {
    let mut h = vec![first.to_string()];
    h.extend(Mode::ALL.iter().map(|m| m.name().to_string()));
    h.extend(OTHERS.iter().map(|m| format!("skiff/{}", m.name())));
    h
}

/// The Markdown of `report.md`.
pub fn render_markdown(results: &Results) -> String {
    let s = Summary::new(results);
    let (meta, set) = (&results.meta, &results.settings);
    let mut out: Vec<String> = vec!["# Skiff network benchmark".into(), String::new()];

    // The run.
    let when = match (meta.started.as_str(), meta.finished.as_str()) {
        ("", _) => "Run of unrecorded date".to_string(),
        (started, "") => format!("Run started {started}"),
        (started, finished) => format!("Run started {started}, finished {finished}"),
    };
    let scales: Vec<String> = set.scales.iter().map(|&n| fmt_count(n)).collect();
    out.push(format!(
        "{when}. {} run: {} repetition{} of {} s per measurement, at {} Services; {} endpoint{} \
         per Service, wrk {} threads and {} connections, {} connection-per-request workers. The \
         client pod reaches a Service backend by four paths: direct (the backend's address, no \
         translation: the floor), skiff (eBPF), and kube-proxy-style iptables and nftables rules.",
        if set.quick { "Quick" } else { "Full" },
        set.repetitions,
        plural(set.repetitions),
        set.duration_secs,
        if scales.is_empty() {
            "no".into()
        } else {
            scales.join(" / ")
        },
        set.endpoints_per_service,
        plural(set.endpoints_per_service),
        set.wrk_threads,
        set.wrk_connections,
        set.crr_workers,
    ));
    out.push(String::new());

    // The machine.
    let mut machine = Vec::new();
    if !meta.cpu_model.is_empty() {
        machine.push(meta.cpu_model.clone());
    }
    if meta.cpus > 0 {
        machine.push(format!("{} CPUs", meta.cpus));
    }
    if meta.memory_gib > 0.0 {
        machine.push(format!("{:.1} GiB memory", meta.memory_gib));
    }
    if !meta.kernel.is_empty() {
        machine.push(format!("kernel {}", meta.kernel));
    }
    if !meta.hostname.is_empty() {
        machine.push(format!("host {}", meta.hostname));
    }
    if !machine.is_empty() {
        out.push(format!("**Machine:** {}.", machine.join(", ")));
        out.push(String::new());
    }
    if !meta.tools.is_empty() {
        let tools: Vec<String> = meta
            .tools
            .iter()
            .map(|(name, version)| format!("{name} `{}`", version.trim().replace('`', "'")))
            .collect();
        out.push(format!("**Tools:** {}.", tools.join(" · ")));
        out.push(String::new());
    }
    out.push("**Notes:**".into());
    out.push(String::new());
    for note in &meta.notes {
        out.push(format!("- {}", note.trim()));
    }
    if !set.position_rule.is_empty() {
        out.push(format!(
            "- The measured Service's place in kube-proxy's rule order: {}",
            set.position_rule.trim()
        ));
    }
    out.push(
        "- Figures are medians over the repetitions; the spread (min–max) is under All figures."
            .into(),
    );
    out.extend(fairness_notes(set));
    out.push(String::new());

    out.push("## Summary".into());
    out.push(String::new());
    out.push(summary_table(results));

    out.push("## Targets".into());
    out.push(String::new());
    let rows: Vec<Vec<String>> = check_targets(results)
        .into_iter()
        .map(|t| {
            let result = match t.met {
                Some(true) => "met".to_string(),
                Some(false) => format!("**MISSED** by {}", t.by),
                None => "not measured".to_string(),
            };
            vec![t.target, t.measured, result]
        })
        .collect();
    out.push(table(
        &["target".into(), "measured".into(), "result".into()],
        &rows,
        false,
    ));

    out.push("## All figures".into());
    out.push(String::new());
    out.push(format!(
        "Each cell: median (min–max) over the repetitions, with n where a cell has fewer than \
         {} samples. Ratios are skiff's median over the other path's, with their noise (the \
         two paths' own spreads added; see the Summary). Direct has nothing to program, so it \
         has no programming figures.",
        set.repetitions
    ));
    out.push(String::new());
    for metric in Metric::ALL {
        let scales: Vec<usize> = s
            .scales
            .iter()
            .copied()
            .filter(|&n| Mode::ALL.iter().any(|&m| s.get(n, m, metric).is_some()))
            .collect();
        if scales.is_empty() {
            continue;
        }
        let better = match metric.better() {
            Better::Lower => "lower is better",
            Better::Higher => "higher is better",
        };
        out.push(format!(
            "### {} ({}, {better}) `{}`",
            metric.title(),
            metric.unit(),
            metric.id()
        ));
        out.push(String::new());
        let rows: Vec<Vec<String>> = scales
            .into_iter()
            .map(|scale| {
                let mut row = vec![fmt_count(scale)];
                for mode in Mode::ALL {
                    row.push(
                        s.get(scale, mode, metric)
                            .map_or_else(|| DASH.into(), |c| fmt_spread(c, set.repetitions)),
                    );
                }
                for other in OTHERS {
                    row.push(s.ratio_cell(scale, metric, other));
                }
                row
            })
            .collect();
        out.push(table(&ratio_header("Services"), &rows, true));
    }

    out.push("## Plots".into());
    out.push(String::new());
    out.push("Medians against the number of Services (log scale); bars span min–max.".into());
    out.push(String::new());
    for plot in plots() {
        out.push(format!("![{}]({}.png)", plot.title, plot.name));
        out.push(String::new());
    }
    let mut text = out.join("\n");
    while text.ends_with("\n\n") {
        text.pop();
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// What the run did so that the order of paths, cold state and CPU placement do not decide the
/// ratios.
fn fairness_notes(set: &Settings) -> Vec<String> {
    let mut notes = Vec::new();
    if set.warmup_secs > 0.0 {
        notes.push(format!(
            "- Warm-up: before its measurements, every path carried {} s of unmeasured load \
             (the benchmark's connection-per-request client to every backend and wrk with a \
             connection per request against nginx, side by side), so neighbour entries, \
             connection tracking, the path's own state and the servers are warm; the persistent \
             connection also exchanges 200 ms of messages before its latencies are recorded.",
            set.warmup_secs
        ));
    } else {
        notes.push(
            "- No warm-up (`--warmup 0`): each path's first measurement pays for cold state."
                .into(),
        );
    }
    if !set.orders.is_empty() {
        let orders: Vec<String> = set
            .orders
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let names: Vec<&str> = o.iter().map(|m| m.name()).collect();
                format!("{}: {}", i + 1, names.join(" → "))
            })
            .collect();
        notes.push(format!(
            "- Order of the paths in each repetition (the same at every scale; a balanced Latin \
             square first, then orders shuffled with seed {:#x}; no order repeats until all \
             have been used): {}.",
            set.order_seed,
            orders.join("; ")
        ));
    }
    let cpus = &set.cpus;
    if cpus.pinned() {
        notes.push(format!(
            "- CPUs: the clients (wrk, the iperf3 client, the benchmark's own client threads) \
             ran on CPU {} and the servers (nginx, the iperf3 server, the request/response \
             servers) on CPU {}, pinned per process with sched_setaffinity. Pinning places \
             processes, not the kernel's packet work: a veth hands a packet to its peer in the \
             sender's softirq, so what the datapath (eBPF or netfilter) does for a request runs \
             on the client's CPU and for a reply on the server's. Programming the paths is not \
             pinned.",
            join_cpus(&cpus.client),
            join_cpus(&cpus.server)
        ));
    } else if cpus.available.len() >= 2 {
        notes.push(format!(
            "- CPUs: not pinned (`--no-pin`): the scheduler placed clients and servers on the \
             run's {} CPUs as it liked, as in the reports made before pinning.",
            cpus.available.len()
        ));
    } else if !cpus.available.is_empty() {
        notes.push(format!(
            "- CPUs: only {} CPU was available to the run, so clients and servers were not \
             pinned apart and share it with the kernel's packet work.",
            cpus.available.len()
        ));
    }
    notes
}

fn join_cpus(cpus: &[usize]) -> String {
    let v: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
    v.join(", ")
}

/// Renders report.md (Markdown) into `dir`, writes gnuplot data and scripts and runs `gnuplot`
/// to make the PNGs; returns the paths written. report.md and the gnuplot files are written
/// before gnuplot runs, so they are there even when gnuplot is missing or fails (an error).
pub fn write_report(results: &Results, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    write_report_with(results, dir, "gnuplot")
}

fn write_report_with(results: &Results, dir: &Path, gnuplot: &str) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let write = |name: &str, text: &str, written: &mut Vec<PathBuf>| -> anyhow::Result<()> {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    write("report.md", &render_markdown(results), &mut written)?;

    let s = Summary::new(results);
    let plots = plots();
    for plot in &plots {
        let (data, script) = gnuplot_files(&s, plot);
        write(&format!("{}.dat", plot.name), &data, &mut written)?;
        write(&format!("{}.gp", plot.name), &script, &mut written)?;
    }
    for plot in &plots {
        let script = format!("{}.gp", plot.name);
        run_gnuplot(gnuplot, dir, &script)?;
        let png = dir.join(format!("{}.png", plot.name));
        if !png.is_file() {
            bail!(
                "gnuplot ran {script} in {} but did not write {}",
                dir.display(),
                png.display()
            );
        }
        written.push(png);
    }
    Ok(written)
}

fn run_gnuplot(program: &str, dir: &Path, script: &str) -> anyhow::Result<()> {
    let output = match Command::new(program).arg(script).current_dir(dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "`{program}` is not installed (not found on PATH), so the plots were not made; install \
             gnuplot (Debian/Ubuntu: apt-get install gnuplot-nox) and run `gnuplot {script}` in {} \
             (report.md and the .dat/.gp files are there)",
            dir.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("running `{program} {script}` in {}", dir.display()));
        }
    };
    if !output.status.success() {
        bail!(
            "`{program} {script}` in {} failed ({}): {}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// One PNG: panels side by side, one line per mode.
struct Plot {
    name: &'static str,
    title: &'static str,
    modes: &'static [Mode],
    logy: bool,
    panels: Vec<Panel>,
}

struct Panel {
    metric: Metric,
    title: &'static str,
    ylabel: &'static str,
    /// A target drawn as a dashed line: value, legend text.
    target: Option<(f64, &'static str)>,
}

fn plots() -> Vec<Plot> {
    vec![
        Plot {
            name: "latency",
            title: "TCP request/response latency (64 B, one at a time) against the number of Services",
            modes: &Mode::ALL,
            logy: false,
            panels: vec![
                Panel {
                    metric: Metric::RrP50Us,
                    title: "p50",
                    ylabel: "latency p50 (µs)",
                    target: None,
                },
                Panel {
                    metric: Metric::RrP99Us,
                    title: "p99",
                    ylabel: "latency p99 (µs)",
                    target: None,
                },
            ],
        },
        Plot {
            name: "connections",
            title: "New connections per second against the number of Services",
            modes: &Mode::ALL,
            logy: false,
            panels: vec![
                Panel {
                    metric: Metric::CrrRate,
                    title: "TCP connect + 64 B request/response + close",
                    ylabel: "connections per second",
                    target: None,
                },
                Panel {
                    metric: Metric::WrkCloseRps,
                    title: "HTTP, a connection per request (wrk, nginx)",
                    ylabel: "requests per second",
                    target: None,
                },
            ],
        },
        Plot {
            name: "programming",
            title: "Programming time against the number of Services, log-log",
            modes: &[Mode::Skiff, Mode::Iptables, Mode::Nftables],
            logy: true,
            panels: vec![
                Panel {
                    metric: Metric::ProgramAllMs,
                    title: "All N Services from empty",
                    ylabel: "time (ms)",
                    target: Some((1000.0, "target: 1 s")),
                },
                Panel {
                    metric: Metric::ProgramChangeUs,
                    title: "One endpoint change at N Services",
                    ylabel: "time (µs)",
                    target: Some((1000.0, "target: 1 ms")),
                },
            ],
        },
    ]
}

/// Line style per mode: colour, point type, point size.
fn style(mode: Mode) -> (&'static str, u8, f64) {
    match mode {
        Mode::Direct => ("#333333", 7, 1.1),
        Mode::Skiff => ("#1f77b4", 9, 1.5),
        Mode::Iptables => ("#d62728", 5, 1.1),
        Mode::Nftables => ("#ff7f0e", 13, 1.5),
    }
}

/// The data file (one block per panel and mode that has figures, columns: x as drawn, Services,
/// median, min, max) and the script that draws it.
fn gnuplot_files(s: &Summary, plot: &Plot) -> (String, String) {
    let name = plot.name;
    let mut data = format!(
        "# Skiff network benchmark: {}\n# columns: x as drawn (Services, nudged per mode so the \
         bars do not overlap), Services, median, min, max\n",
        plot.title
    );
    let mut block = 0;
    let mut script = vec![
        format!("# Remake {name}.png from {name}.dat: run `gnuplot {name}.gp` in this directory."),
        "set terminal pngcairo size 1400,620 font \"sans,11\" noenhanced".into(),
        format!("set output {}", gp_str(&format!("{name}.png"))),
    ];
    for (i, mode) in Mode::ALL.into_iter().enumerate() {
        let (colour, pt, ps) = style(mode);
        script.push(format!(
            "set style line {} lc rgb {} lw 2 pt {pt} ps {ps}",
            i + 1,
            gp_str(colour)
        ));
    }
    script.push(format!(
        "set multiplot layout 1,{} title {} font \",13\"",
        plot.panels.len(),
        gp_str(&format!("{} (medians; bars: min–max)", plot.title))
    ));
    script.push("set grid".into());
    if !plot.logy {
        // Room above the highest point (a single point would sit on the border).
        script.push("set offsets 0, 0, graph 0.05, 0".into());
    }
    script.push("set logscale x".into());
    let (lo, hi) = match (s.scales.first(), s.scales.last()) {
        (Some(&lo), Some(&hi)) if lo == hi => (lo as f64 / 3.0, hi as f64 * 3.0),
        (Some(&lo), Some(&hi)) => (lo as f64 / 2.0, hi as f64 * 2.0),
        _ => (0.5, 2.0),
    };
    script.push(format!("set xrange [{lo}:{hi}]"));
    let tics: Vec<String> = s
        .scales
        .iter()
        .map(|&n| format!("{} {n}", gp_str(&fmt_count(n))))
        .collect();
    if !tics.is_empty() {
        script.push(format!("set xtics ({})", tics.join(", ")));
    }
    script.push("set xlabel \"Services\"".into());
    // The key under the axis label, in one row.
    script.push("set key bmargin center horizontal maxrows 1 samplen 2 width 0".into());
    script.push("set bmargin 5.5".into());
    if plot.logy {
        script.push("set logscale y".into());
        script.push("set format y \"%.0s%c\"".into()); // 1, 10, 100, 1k, 10k, 1M
    }
    let nudge_mid = (plot.modes.len() as f64 - 1.0) / 2.0;
    for panel in &plot.panels {
        let mut clauses = Vec::new();
        for (k, &mode) in plot.modes.iter().enumerate() {
            let mut rows = Vec::new();
            for &scale in &s.scales {
                let Some(c) = s.get(scale, mode, panel.metric) else {
                    continue;
                };
                if plot.logy && c.median <= 0.0 {
                    continue; // not drawable on a log axis
                }
                let min = if plot.logy && c.min <= 0.0 {
                    c.median
                } else {
                    c.min
                };
                let x = scale as f64 * 10f64.powf(0.025 * (k as f64 - nudge_mid));
                rows.push(format!("{x} {scale} {} {min} {}", c.median, c.max));
            }
            if rows.is_empty() {
                continue;
            }
            data.push_str(&format!("\n# {} {}\n", panel.metric.id(), mode.name()));
            for row in rows {
                data.push_str(&row);
                data.push('\n');
            }
            data.push('\n'); // two blank lines end a block (gnuplot's `index`)
            let ls = Mode::ALL.iter().position(|&m| m == mode).unwrap_or(0) + 1;
            clauses.push(format!(
                "{} index {block} using 1:3:4:5 with yerrorlines ls {ls} title {}",
                gp_str(&format!("{name}.dat")),
                gp_str(mode.name())
            ));
            block += 1;
        }
        script.push(format!("set title {}", gp_str(panel.title)));
        script.push(format!("set ylabel {}", gp_str(panel.ylabel)));
        script.push(
            if plot.logy {
                "set autoscale y"
            } else {
                "set yrange [0:*]"
            }
            .into(),
        );
        script.push("unset label 1".into());
        if clauses.is_empty() {
            script.push("set label 1 \"not measured in this run\" at graph 0.5,0.5 center".into());
            script.push(
                if plot.logy {
                    "set yrange [1:10]"
                } else {
                    "set yrange [0:1]"
                }
                .into(),
            );
            clauses.push("1/0 notitle".into());
        } else if let Some((value, text)) = panel.target {
            clauses.push(format!(
                "{value} with lines dt 2 lw 1.5 lc rgb \"#777777\" title {}",
                gp_str(text)
            ));
        }
        script.push(format!("plot {}", clauses.join(", \\\n     ")));
    }
    script.push("unset multiplot".into());
    let mut script = script.join("\n");
    script.push('\n');
    (data, script)
}

/// A double-quoted gnuplot string.
fn gp_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The cells with the scales they were measured at.
struct Summary {
    cells: BTreeMap<(usize, Mode, Metric), Cell>,
    /// Every scale with a sample, ascending.
    scales: Vec<usize>,
}

impl Summary {
    fn new(results: &Results) -> Self {
        let cells = summarize(results);
        let scales: BTreeSet<usize> = cells.keys().map(|&(n, _, _)| n).collect();
        Summary {
            cells,
            scales: scales.into_iter().collect(),
        }
    }

    fn smallest(&self) -> Option<usize> {
        self.scales.first().copied()
    }

    fn largest(&self) -> Option<usize> {
        self.scales.last().copied()
    }

    fn get(&self, scale: usize, mode: Mode, metric: Metric) -> Option<&Cell> {
        if !metric.applies_to(mode) {
            return None;
        }
        self.cells.get(&(scale, mode, metric))
    }

    fn median(&self, scale: usize, mode: Mode, metric: Metric) -> Option<f64> {
        self.get(scale, mode, metric).map(|c| c.median)
    }

    /// median(skiff) / median(other).
    fn skiff_ratio(&self, scale: usize, metric: Metric, other: Mode) -> Option<f64> {
        ratio(
            self.median(scale, Mode::Skiff, metric)?,
            self.median(scale, other, metric)?,
        )
    }

    /// noise(skiff) + noise(other): to first order, how far median(skiff) / median(other)
    /// moves when each path moves within its own spread.
    fn ratio_noise(&self, scale: usize, metric: Metric, other: Mode) -> Option<f64> {
        Some(
            self.get(scale, Mode::Skiff, metric)?.noise()?
                + self.get(scale, other, metric)?.noise()?,
        )
    }

    /// "1.234 (noise ±4.5%)", "1.234 (noise n/a)", or a dash without a ratio.
    fn ratio_cell(&self, scale: usize, metric: Metric, other: Mode) -> String {
        let Some(r) = self.skiff_ratio(scale, metric, other) else {
            return DASH.into();
        };
        let noise = self
            .ratio_noise(scale, metric, other)
            .map_or_else(|| "n/a".to_string(), fmt_noise);
        format!("{} (noise {noise})", fmt_ratio(r))
    }
}

/// A noise fraction as "±4.5%" (one decimal below 10%, whole percent from there).
fn fmt_noise(noise: f64) -> String {
    let p = noise * 100.0;
    if p < 9.95 {
        format!("±{p:.1}%")
    } else {
        format!("±{p:.0}%")
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    let r = a / b;
    (b != 0.0 && r.is_finite()).then_some(r)
}

/// Short names for the summary; the full title elsewhere.
fn short(metric: Metric) -> &'static str {
    match metric {
        Metric::RrP50Us => "RR latency p50",
        Metric::RrP99Us => "RR latency p99",
        Metric::CrrRate => "New connections",
        Metric::WrkKeepaliveRps => "HTTP keep-alive",
        Metric::WrkCloseRps => "HTTP conn. per request",
        Metric::IperfGbps => "Throughput, 1 stream",
        Metric::WrkKeepaliveCpuUs => "CPU per keep-alive request",
        Metric::ProgramAllMs => "Program all N Services",
        Metric::ProgramChangeUs => "Program one endpoint change",
        other => other.title(),
    }
}

fn arrow(metric: Metric) -> &'static str {
    match metric.better() {
        Better::Lower => "↓",
        Better::Higher => "↑",
    }
}

/// A Markdown table; with `figures`, every column after the first is right-aligned.
fn table(header: &[String], rows: &[Vec<String>], figures: bool) -> String {
    let esc = |s: &str| s.replace('|', "\\|");
    let mut out = format!(
        "| {} |\n",
        header
            .iter()
            .map(|h| esc(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let align: Vec<&str> = (0..header.len())
        .map(|i| if i == 0 || !figures { ":---" } else { "---:" })
        .collect();
    out.push_str(&format!("|{}|\n", align.join("|")));
    for row in rows {
        out.push_str(&format!(
            "| {} |\n",
            row.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
        ));
    }
    out
}

/// "12.3 (11.9–13.0)", with n when the cell has fewer samples than repetitions.
fn fmt_spread(c: &Cell, repetitions: usize) -> String {
    let mut s = fmt_num(c.median);
    if c.n > 1 {
        s.push_str(&format!(" ({}–{})", fmt_num(c.min), fmt_num(c.max)));
    }
    if c.n < repetitions {
        s.push_str(&format!(" n={}", c.n));
    }
    s
}

/// Three significant digits below 1,000; whole numbers with thousands separators from there.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return DASH.into();
    }
    let a = v.abs();
    if a >= 999.5 {
        return with_thousands(v);
    }
    if a == 0.0 {
        return "0".into();
    }
    let mut decimals = (2 - a.log10().floor() as i32).max(0) as usize;
    let mut s = format!("{v:.decimals$}");
    // Rounding can carry into a new digit (9.996 -> "10.00"): one decimal fewer then.
    if decimals > 0
        && s.trim_start_matches('-')
            .replace('.', "")
            .trim_start_matches('0')
            .len()
            > 3
    {
        decimals -= 1;
        s = format!("{v:.decimals$}");
    }
    s
}

fn with_thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 && digits != "0" {
        format!("-{out}")
    } else {
        out
    }
}

/// Ratios near 1 with three decimals (the targets are 5% and 10%); small ones as "1/N" (N times
/// smaller), large ones as figures.
fn fmt_ratio(r: f64) -> String {
    if (0.1..10.0).contains(&r) {
        format!("{r:.3}")
    } else if r > 0.0 && r < 0.1 {
        format!("1/{}", fmt_num(1.0 / r))
    } else {
        fmt_num(r)
    }
}

/// A fraction as a percentage with one decimal: 0.032 -> "3.2".
fn pct(fraction: f64) -> String {
    format!("{:.1}", fraction * 100.0)
}

/// A limit as a percentage, without a needless decimal: 0.9 -> "90", 0.925 -> "92.5".
fn pct_limit(fraction: f64) -> String {
    let p = fraction * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}")
    } else {
        format!("{p:.1}")
    }
}

fn fmt_count(n: usize) -> String {
    with_thousands(n as f64)
}

/// "1 Service", "10,000 Services".
fn services(n: usize) -> String {
    format!("{} Service{}", fmt_count(n), plural(n))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Writes a benchmark's `results.json` and `report.md` into `out` and prints `summary` and
/// where they are.
pub fn write_results<T: serde::Serialize>(
    out: &Path,
    results: &T,
    report_md: &str,
    summary: &str,
) -> anyhow::Result<()> {
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(results)? + "\n")?;
    let md = out.join("report.md");
    std::fs::write(&md, report_md)?;
    println!("\n{summary}");
    println!(
        "results in {}:\n    {}\n    {}",
        out.display(),
        json.display(),
        md.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CpuPinning, Meta, Sample, Settings};

    fn results(samples: Vec<Sample>, scales: Vec<usize>) -> Results {
        Results {
            meta: Meta {
                started: "2025-01-02T03:04:05Z".into(),
                finished: "2025-01-02T04:05:06Z".into(),
                hostname: "bench-1".into(),
                cpu_model: "Test CPU 9000".into(),
                cpus: 8,
                memory_gib: 31.2,
                kernel: "6.8.0-test".into(),
                tools: vec![
                    ("iperf3".into(), "iperf 3.16".into()),
                    ("wrk".into(), "wrk 4.2.0".into()),
                ],
                notes: vec!["IPVS is not in this kernel: not compared.".into()],
            },
            settings: Settings {
                quick: false,
                repetitions: 5,
                duration_secs: 10.0,
                scales,
                endpoints_per_service: 2,
                wrk_threads: 2,
                wrk_connections: 32,
                crr_workers: 4,
                position_rule: "the measured Service is written last".into(),
                warmup_secs: 1.0,
                orders: vec![
                    vec![Mode::Direct, Mode::Skiff, Mode::Nftables, Mode::Iptables],
                    vec![Mode::Skiff, Mode::Iptables, Mode::Direct, Mode::Nftables],
                ],
                order_seed: 0x2a,
                cpus: CpuPinning {
                    available: vec![0, 1],
                    client: vec![0],
                    server: vec![1],
                },
            },
            samples,
            noise: Vec::new(),
            ratios: Vec::new(),
        }
    }

    fn sample(scale: usize, mode: Mode, metric: Metric, rep: usize, value: f64) -> Sample {
        Sample {
            scale,
            mode,
            rep,
            metric,
            value,
        }
    }

    /// Five repetitions around `median` (the middle one is exactly it).
    fn five(out: &mut Vec<Sample>, scale: usize, mode: Mode, metric: Metric, median: f64) {
        for (rep, f) in [1.0, 0.97, 1.04, 0.99, 1.06].into_iter().enumerate() {
            out.push(sample(scale, mode, metric, rep, median * f));
        }
    }

    /// A plausible full run at 1, 1,000 and 10,000 Services where skiff meets every target
    /// except the connection rate against direct at 10,000 Services (85%).
    fn full_run() -> Results {
        use Metric::*;
        use Mode::*;
        let mut v = Vec::new();
        for (i, scale) in [1usize, 1000, 10_000].into_iter().enumerate() {
            let grow = [1.0, 1.3, 2.5][i];
            for (mode, rr) in [
                (Direct, 28.0),
                (Skiff, 29.0),
                (Iptables, 30.0 * grow),
                (Nftables, 30.5),
            ] {
                five(&mut v, scale, mode, RrP50Us, rr);
                five(&mut v, scale, mode, RrP99Us, rr * 1.8);
            }
            let skiff_crr = [19_500.0, 19_000.0, 17_000.0][i];
            for (mode, crr) in [
                (Direct, 20_000.0),
                (Skiff, skiff_crr),
                (Iptables, 19_000.0 / grow),
                (Nftables, 18_500.0),
            ] {
                five(&mut v, scale, mode, CrrRate, crr);
                five(&mut v, scale, mode, WrkCloseRps, crr * 0.6);
                five(&mut v, scale, mode, WrkKeepaliveRps, crr * 4.0);
            }
            for (mode, g) in [
                (Direct, 40.0),
                (Skiff, 39.0),
                (Iptables, 38.0),
                (Nftables, 38.5),
            ] {
                five(&mut v, scale, mode, IperfGbps, g);
                five(&mut v, scale, mode, WrkKeepaliveCpuUs, 100.0 - g);
            }
            let n = scale as f64;
            five(&mut v, scale, Skiff, ProgramAllMs, 2.0 + n * 0.03);
            five(&mut v, scale, Iptables, ProgramAllMs, 10.0 + n * 0.09);
            five(&mut v, scale, Nftables, ProgramAllMs, 12.0 + n * 0.15);
            five(&mut v, scale, Skiff, ProgramChangeUs, 25.0);
            five(&mut v, scale, Iptables, ProgramChangeUs, 4000.0 + n * 40.0);
            five(&mut v, scale, Nftables, ProgramChangeUs, 3000.0 + n * 3.0);
        }
        results(v, vec![1, 1000, 10_000])
    }

    fn find<'a>(checks: &'a [TargetCheck], part: &str) -> &'a TargetCheck {
        checks
            .iter()
            .find(|c| c.target.contains(part))
            .unwrap_or_else(|| panic!("no target containing {part:?} in {checks:#?}"))
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let m = Metric::RrP50Us;
        let r = results(
            vec![
                sample(1, Mode::Skiff, m, 0, 5.0),
                sample(1, Mode::Skiff, m, 1, 1.0),
                sample(1, Mode::Skiff, m, 2, 3.0),
                sample(1, Mode::Direct, m, 0, 4.0),
                sample(1, Mode::Direct, m, 1, 1.0),
                sample(1, Mode::Direct, m, 2, 10.0),
                sample(1, Mode::Direct, m, 3, 2.0),
                sample(1, Mode::Direct, m, 4, f64::NAN),
            ],
            vec![1],
        );
        let cells = summarize(&r);
        assert_eq!(
            cells[&(1, Mode::Skiff, m)],
            Cell {
                median: 3.0,
                min: 1.0,
                max: 5.0,
                n: 3
            }
        );
        assert_eq!(
            cells[&(1, Mode::Direct, m)],
            Cell {
                median: 3.0,
                min: 1.0,
                max: 10.0,
                n: 4
            }
        );
        assert_eq!(cells.len(), 2);
    }

    #[test]
    fn ratio_columns_divide_skiff_by_each_other_path() {
        let m = Metric::CrrRate;
        let mut v = Vec::new();
        for (mode, x) in [
            (Mode::Direct, 200.0),
            (Mode::Skiff, 100.0),
            (Mode::Iptables, 50.0),
            (Mode::Nftables, 400.0),
        ] {
            v.push(sample(1, mode, m, 0, x));
        }
        v.push(sample(1, Mode::Skiff, Metric::ProgramAllMs, 0, 4.0));
        v.push(sample(1, Mode::Iptables, Metric::ProgramAllMs, 0, 8.0));
        let r = results(v, vec![1]);
        let s = Summary::new(&r);
        assert_eq!(s.skiff_ratio(1, m, Mode::Direct), Some(0.5));
        assert_eq!(s.skiff_ratio(1, m, Mode::Iptables), Some(2.0));
        assert_eq!(s.skiff_ratio(1, m, Mode::Nftables), Some(0.25));
        assert_eq!(s.skiff_ratio(1, Metric::ProgramAllMs, Mode::Direct), None);
        let table = summary_table(&r);
        assert!(
            table.contains(
                "| New connections (conn/s) ↑ | 200 | 100 | 50.0 | 400 | 0.500 (noise n/a) | \
                 2.000 (noise n/a) | 0.250 (noise n/a) |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| Program all N Services (ms) ↓ | — | 4.00 | 8.00 | — | — | 0.500 (noise n/a) | — |"
            ),
            "{table}"
        );
    }

    #[test]
    fn targets_met_and_missed() {
        let checks = check_targets(&full_run());
        let p50 = find(&checks, "RR latency p50 within 5% of direct at 1 Service");
        assert_eq!(p50.met, Some(true), "{p50:?}");
        assert_eq!(p50.by, "");
        assert!(
            p50.measured.contains("skiff 29.0 µs vs direct 28.0 µs"),
            "{p50:?}"
        );

        let crr = find(&checks, "connection rate at least 90% of direct");
        assert_eq!(crr.met, Some(false), "{crr:?}");
        assert!(crr.measured.contains("worst at 10,000 Services"), "{crr:?}");
        assert_eq!(
            crr.by,
            "5.0 percentage points under the 90% floor at 10,000 Services (skiff at 85.0% of direct)"
        );

        let above = find(&checks, "above iptables");
        assert!(
            above.target.contains("at 10,000 Services (largest scale)"),
            "{above:?}"
        );
        assert_eq!(above.met, Some(true));
        assert_eq!(find(&checks, "throughput").met, Some(true));
        assert_eq!(find(&checks, "one endpoint change").met, Some(true));
        assert_eq!(find(&checks, "from empty").met, Some(true));
        assert_eq!(
            find(
                &checks,
                "RR latency p99 at 10,000 Services within 5% of 1 Service"
            )
            .met,
            Some(true)
        );
    }

    #[test]
    fn missed_latency_and_programming_say_by_how_much() {
        use Metric::*;
        let mut v = Vec::new();
        for scale in [1, 100] {
            v.push(sample(scale, Mode::Direct, RrP50Us, 0, 100.0));
            v.push(sample(
                scale,
                Mode::Skiff,
                RrP50Us,
                0,
                if scale == 1 { 108.2 } else { 120.0 },
            ));
        }
        v.push(sample(100, Mode::Skiff, ProgramChangeUs, 0, 1420.0));
        v.push(sample(100, Mode::Skiff, ProgramAllMs, 0, 1230.0));
        v.push(sample(100, Mode::Skiff, CrrRate, 0, 900.0));
        v.push(sample(100, Mode::Iptables, CrrRate, 0, 1000.0));
        let checks = check_targets(&results(v, vec![1, 100]));
        let p50 = find(&checks, "RR latency p50 within 5% of direct");
        assert_eq!(p50.met, Some(false));
        assert_eq!(
            p50.by,
            "3.2 percentage points over the 5% limit (skiff 8.2% slower than direct)"
        );
        let flat = find(
            &checks,
            "RR latency p50 at 100 Services within 5% of 1 Service",
        );
        assert_eq!(flat.met, Some(false));
        assert!(
            flat.by
                .starts_with("5.9 percentage points over the 5% limit"),
            "{flat:?}"
        );
        let change = find(&checks, "one endpoint change");
        assert_eq!(change.met, Some(false));
        assert_eq!(change.by, "420 µs over the 1 ms limit (+42.0%)");
        assert_eq!(
            find(&checks, "from empty").by,
            "230 ms over the 1 s limit (+23.0%)"
        );
        let above = find(&checks, "above iptables");
        assert!(
            above
                .target
                .contains("the target is stated for 10,000 Services"),
            "{above:?}"
        );
        assert_eq!(above.by, "skiff 10.0% below iptables (100 conn/s fewer)");
    }

    #[test]
    fn missing_cells_are_not_measured() {
        let r = results(
            vec![sample(1, Mode::Skiff, Metric::RrP50Us, 0, 10.0)],
            vec![1],
        );
        let checks = check_targets(&r);
        assert_eq!(checks.len(), 9);
        for c in &checks {
            assert_eq!(c.met, None, "{c:?}");
            assert_eq!(c.by, "");
        }
        assert!(
            find(&checks, "p50 within 5% of direct")
                .measured
                .contains("no skiff or direct rr_p50_us at 1 Service")
        );
        assert!(
            find(&checks, "p50 at 1 Service within 5%")
                .measured
                .contains("only one scale")
        );
        let empty = check_targets(&results(Vec::new(), vec![]));
        assert!(empty.iter().all(|c| c.met.is_none()));
        assert!(summary_table(&results(Vec::new(), vec![])).contains("No samples"));
    }

    #[test]
    fn markdown_has_the_sections_and_figures() {
        let md = render_markdown(&full_run());
        let mut at = 0;
        for heading in [
            "# Skiff network benchmark",
            "## Summary",
            "## Targets",
            "## All figures",
            "## Plots",
        ] {
            let found = md[at..]
                .find(heading)
                .unwrap_or_else(|| panic!("{heading} missing or out of order:\n{md}"));
            at += found;
        }
        for part in [
            "Run started 2025-01-02T03:04:05Z",
            "Full run: 5 repetitions of 10 s per measurement, at 1 / 1,000 / 10,000 Services",
            "Test CPU 9000, 8 CPUs, 31.2 GiB memory, kernel 6.8.0-test, host bench-1",
            "iperf3 `iperf 3.16`",
            "- IPVS is not in this kernel: not compared.",
            "the measured Service is written last",
            "**At 10,000 Services** (largest scale)",
            "**At 1 Service** (smallest scale)",
            "| New connections (conn/s) ↑ | 20,000 | 17,000 | 7,600 | 18,500 | 0.850 (noise ±9.0%) \
             | 2.237 (noise ±9.0%) | 0.919 (noise ±9.0%) |",
            "noise ±N% beside a ratio",
            "- Warm-up: before its measurements, every path carried 1 s of unmeasured load",
            "1: direct → skiff → nftables → iptables; 2: skiff → iptables → direct → nftables.",
            "ran on CPU 0 and the servers (nginx, the iperf3 server, the request/response \
             servers) on CPU 1",
            "a veth hands a packet to its peer in the sender's softirq",
            "**MISSED** by 5.0 percentage points",
            "### TCP request/response latency p50 (µs, lower is better) `rr_p50_us`",
            "| 1 | 28.0 (27.2–29.7) | 29.0 (28.1–30.7) |",
            "a ratio below 1 means skiff is faster",
            "![",
            "(latency.png)",
            "(connections.png)",
            "(programming.png)",
        ] {
            assert!(md.contains(part), "{part:?} missing:\n{md}");
        }
        // Direct has no programming figures.
        assert!(md.contains("| 10,000 | — | 302 (293–320) |"), "{md}");
        // A metric without samples has no table.
        assert!(!md.contains("rr_p999_us"));
        println!("{}", summary_table(&full_run()));
    }

    #[test]
    fn noise_is_half_the_range_over_the_median_and_needs_two_repetitions() {
        let c = |v: &[f64]| cell_of(v.to_vec()).unwrap();
        assert_eq!(c(&[100.0, 96.0, 104.0]).noise(), Some(0.04));
        assert_eq!(c(&[50.0, 50.0]).noise(), Some(0.0));
        // Two repetitions: the median is their mean.
        assert_eq!(c(&[90.0, 110.0]).noise(), Some(0.1));
        assert_eq!(c(&[7.0]).noise(), None, "one sample has no spread");
        assert_eq!(
            c(&[0.0, 0.0]).noise(),
            None,
            "a zero median has no relative spread"
        );
        assert_eq!(fmt_noise(0.04), "±4.0%");
        assert_eq!(fmt_noise(0.0449), "±4.5%");
        assert_eq!(fmt_noise(0.123), "±12%");
    }

    #[test]
    fn a_ratio_carries_the_noise_of_both_paths_added() {
        let m = Metric::CrrRate;
        let mut v = Vec::new();
        // skiff 120 ± 3%, iptables 100 ± 1%, nftables with one sample only.
        for (rep, (sk, ip)) in [(120.0, 100.0), (116.4, 99.0), (123.6, 101.0)]
            .into_iter()
            .enumerate()
        {
            v.push(sample(1, Mode::Skiff, m, rep, sk));
            v.push(sample(1, Mode::Iptables, m, rep, ip));
        }
        v.push(sample(1, Mode::Nftables, m, 0, 100.0));
        let r = results(v, vec![1]);
        let s = Summary::new(&r);
        let noise = s.ratio_noise(1, m, Mode::Iptables).unwrap();
        assert!((noise - 0.04).abs() < 1e-12, "{noise}");
        assert_eq!(s.ratio_noise(1, m, Mode::Nftables), None);
        assert_eq!(s.ratio_noise(1, m, Mode::Direct), None);
        assert_eq!(s.ratio_cell(1, m, Mode::Iptables), "1.200 (noise ±4.0%)");
        assert_eq!(s.ratio_cell(1, m, Mode::Nftables), "1.200 (noise n/a)");
        assert_eq!(s.ratio_cell(1, m, Mode::Direct), DASH);

        let (cells, ratios) = noise_figures(&r);
        let skiff = cells.iter().find(|c| c.mode == Mode::Skiff).unwrap();
        assert_eq!(
            (skiff.median, skiff.min, skiff.max, skiff.n),
            (120.0, 116.4, 123.6, 3)
        );
        assert!((skiff.noise.unwrap() - 0.03).abs() < 1e-12);
        assert_eq!(cells.len(), 3);
        assert_eq!(ratios.len(), 2, "{ratios:?}");
        let ip = ratios.iter().find(|x| x.other == Mode::Iptables).unwrap();
        assert_eq!((ip.scale, ip.metric, ip.ratio), (1, m, 1.2));
        assert!((ip.noise.unwrap() - 0.04).abs() < 1e-12);
        // results.json carries both.
        let mut r = r;
        (r.noise, r.ratios) = noise_figures(&r);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["ratios"][0]["other"], "iptables");
        assert!(json["noise"][0]["noise"].is_number());
        assert_eq!(json["settings"]["orders"][1][0], "skiff");
        assert_eq!(json["settings"]["cpus"]["server"][0], 1);
    }

    #[test]
    fn an_unpinned_run_says_so() {
        let mut r = results(Vec::new(), vec![1]);
        r.settings.cpus = CpuPinning {
            available: vec![0],
            client: Vec::new(),
            server: Vec::new(),
        };
        r.settings.warmup_secs = 0.0;
        let md = render_markdown(&r);
        assert!(
            md.contains("only 1 CPU was available to the run, so clients and servers were not"),
            "{md}"
        );
        assert!(md.contains("No warm-up"), "{md}");
    }

    #[test]
    fn number_formats() {
        assert_eq!(fmt_num(12345.6), "12,346");
        assert_eq!(fmt_num(999.4), "999");
        assert_eq!(fmt_num(999.6), "1,000");
        assert_eq!(fmt_num(9.996), "10.0");
        assert_eq!(fmt_num(0.01234), "0.0123");
        assert_eq!(fmt_num(-1234.0), "-1,234");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_ratio(1.0344), "1.034");
        assert_eq!(fmt_ratio(0.000_15), "1/6,667");
        assert_eq!(fmt_ratio(0.05), "1/20.0");
        assert_eq!(fmt_ratio(12.34), "12.3");
        assert_eq!(services(1), "1 Service");
        assert_eq!(services(10_000), "10,000 Services");
    }

    fn gnuplot_available() -> bool {
        match Command::new("gnuplot").arg("--version").output() {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => panic!("running gnuplot --version: {e}"),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skiff-report-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// Set SKIFF_REPORT_TEST_DIR to keep the report and plots in that directory.
    #[test]
    fn write_report_makes_pngs() {
        if !gnuplot_available() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "gnuplot is not on PATH (CI=true: required)"
            );
            println!("skipped: gnuplot is not on PATH");
            return;
        }
        let keep = std::env::var_os("SKIFF_REPORT_TEST_DIR").map(PathBuf::from);
        let dir = keep.clone().unwrap_or_else(|| scratch("plots"));
        let written = write_report(&full_run(), &dir).expect("write_report");
        for name in [
            "report.md",
            "latency.gp",
            "latency.dat",
            "programming.gp",
            "connections.dat",
        ] {
            assert!(
                written.contains(&dir.join(name)),
                "{name} not in {written:?}"
            );
        }
        for name in ["latency.png", "connections.png", "programming.png"] {
            let path = dir.join(name);
            assert!(written.contains(&path), "{name} not in {written:?}");
            let bytes = fs::read(&path).expect("read png");
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "{name} is not a PNG"
            );
        }

        // One scale only, and a plot with nothing in it, still make PNGs.
        let one = results(
            vec![sample(1000, Mode::Skiff, Metric::RrP50Us, 0, 30.0)],
            vec![1000],
        );
        let dir1 = dir.join("one-scale");
        let written = write_report(&one, &dir1).expect("write_report, one scale");
        assert!(written.contains(&dir1.join("programming.png")));
        if keep.is_none() {
            let _ = fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn missing_gnuplot_is_a_clear_error() {
        let dir = scratch("no-gnuplot");
        let err = write_report_with(&full_run(), &dir, "gnuplot-that-is-not-installed")
            .expect_err("must fail without gnuplot");
        let text = format!("{err:#}");
        assert!(
            text.contains("is not installed (not found on PATH)"),
            "{text}"
        );
        assert!(
            dir.join("report.md").is_file(),
            "report.md is written before gnuplot runs"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
