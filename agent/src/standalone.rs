//! The standalone loader: loads (or adopts) a datapath, keeps its services equal to a services
//! file (repairing drift, purging the conntrack entries of deleted services), and attaches it
//! to pods' interfaces and to the node's uplinks (NodePorts).

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use crate::datapath::{
    Datapath, DatapathConfig, PinnedMaps, ServiceTable,
    static_config::{self, Desired},
};

/// What the loader does.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: DatapathConfig,
    /// Interfaces (in the current network namespace) to attach both programs to.
    pub interfaces: Vec<String>,
    /// The node's uplinks (in the current network namespace), where NodePorts are served.
    pub uplinks: Vec<String>,
    /// The services to serve; without it the maps are left as they are.
    pub services_file: Option<PathBuf>,
    /// Apply once and exit instead of following the file.
    pub once: bool,
    /// How often the file is checked for changes.
    pub poll: Duration,
    /// How often the maps are re-read and repaired against the file.
    pub resync: Duration,
}

/// Runs the loader until it fails (or, with `once`, until the services are applied). Progress
/// goes to stdout, one event per line.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    // Bad input changes nothing: read the file before touching the datapath.
    let mut desired: Option<Desired> = None;
    let mut stamp = None;
    if let Some(path) = &opts.services_file {
        stamp = file_stamp(path);
        desired = Some(static_config::load(path)?);
    }

    let mut dp = Datapath::load(opts.config.clone()).context("loading the datapath")?;
    let mut table = dp.service_table().context("adopting the service maps")?;
    let mut ct_maps = dp.maps()?;
    println!(
        "loaded: instance {} with {} services adopted",
        opts.config.instance,
        table.len()
    );
    // Services first, interfaces second: a newly attached pod never meets an empty table
    // that would refuse every Service address.
    let mut generation = 0u64;
    if let Some(d) = &desired {
        sync(&mut table, d, &mut generation);
    }
    // Entries of services deleted while no loader ran, or just now.
    collect_conntrack(&mut ct_maps, &mut table)?;
    for iface in &opts.interfaces {
        for (hook, outcome) in dp
            .attach(iface)
            .with_context(|| format!("attaching to {iface}"))?
        {
            println!("attached {iface} {hook}: {outcome:?}");
        }
    }
    for iface in &opts.uplinks {
        for (hook, outcome) in dp
            .attach_uplink(iface)
            .with_context(|| format!("attaching to the uplink {iface}"))?
        {
            println!("attached uplink {iface} {hook}: {outcome:?}");
        }
    }
    println!(
        "ready: instance {} with {} interfaces and {} services",
        opts.config.instance,
        opts.interfaces.len(),
        table.len()
    );
    if opts.once {
        return Ok(());
    }

    let collector = dp.collector()?;
    let mut last_gc = Instant::now();
    let mut dirty = false;
    let mut last_resync = Instant::now();
    loop {
        std::thread::sleep(opts.poll);
        if last_gc.elapsed() >= opts.config.gc_interval {
            last_gc = Instant::now();
            match collector.run(&ct_maps) {
                Ok(run) => tracing::debug!(
                    established = run.stats.established,
                    short_lived = run.stats.transient,
                    removed = run.stats.removed_established + run.stats.removed_transient,
                    took_us = run.took.as_micros() as u64,
                    "conntrack collected"
                ),
                Err(e) => tracing::warn!(error = %e, "running the conntrack collector"),
            }
        }
        if let Some(path) = &opts.services_file {
            let now = file_stamp(path);
            if now != stamp {
                stamp = now;
                match static_config::load(path) {
                    Ok(d) => {
                        desired = Some(d);
                        dirty = true;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "ignoring the changed services file; serving the previous one");
                        println!("rejected: {e}");
                    }
                }
            }
        }
        if desired.is_some() && last_resync.elapsed() >= opts.resync {
            // Re-read the maps so that anything changed behind our back is repaired.
            table.resync().context("re-reading the service maps")?;
            last_resync = Instant::now();
            dirty = true;
        }
        if let (true, Some(d)) = (dirty, &desired) {
            dirty = !sync(&mut table, d, &mut generation);
            if !table.quarantined().is_empty() {
                collect_conntrack(&mut ct_maps, &mut table)?;
            }
        }
    }
}

/// Applies `desired`; returns whether every service was programmed.
fn sync(table: &mut ServiceTable<PinnedMaps>, desired: &Desired, generation: &mut u64) -> bool {
    *generation += 1;
    let started = Instant::now();
    let report = table.sync(desired);
    for (sp, e) in &report.failed {
        tracing::error!(service = %sp, error = %e, "service not programmed");
    }
    println!(
        "synced generation {}: {} created, {} updated, {} deleted, {} unchanged, {} failed in {} us",
        generation,
        report.created,
        report.updated,
        report.deleted,
        report.unchanged,
        report.failed.len(),
        started.elapsed().as_micros()
    );
    report.failed.is_empty()
}

fn collect_conntrack(
    maps: &mut PinnedMaps,
    table: &mut ServiceTable<PinnedMaps>,
) -> anyhow::Result<()> {
    let live: BTreeSet<u32> = table
        .service_ports()
        .filter_map(|sp| table.service_id(sp))
        .collect();
    let removed = maps
        .purge_conntrack(&live)
        .context("purging conntrack entries of deleted services")?;
    table.release_quarantined();
    if removed > 0 {
        println!("conntrack: removed {removed} entries of deleted services");
    }
    Ok(())
}

/// Identifies a version of the file: a rewrite, an edit in place and an atomic rename all
/// change it.
fn file_stamp(path: &Path) -> Option<(u64, u64, SystemTime)> {
    let m = fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}
