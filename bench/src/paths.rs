//! The four paths, installed into a fresh node namespace: nothing (direct), Skiff's datapath
//! (loaded by this process through the agent's library, as the agent does), and kube-proxy-style
//! iptables and nftables rules (loaded with the real tools). Each can apply one endpoint change
//! and count the connections it translated for a port of the measured Service.
//!
//! iptables is Debian's `iptables-legacy`: the nf_tables flavour (`iptables-nft-restore` 1.8.9)
//! spends minutes in userspace restoring 10,000 Services (its chain lookups are linear), which
//! would measure that tool's weakness rather than iptables mode's rule traversal.

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use skiff_agent::datapath::{self, Datapath, DatapathConfig, PinnedMaps, ServiceTable};
use skiff_testbed::netns::Netns;

use crate::{
    kubeproxy,
    model::{Mode, Service, ServicePort, ServiceSet},
    services::{self, find_app},
};

const IPTABLES: &str = "iptables-legacy";
const IPTABLES_RESTORE: &str = "iptables-legacy-restore";
const IPTABLES_SAVE: &str = "iptables-legacy-save";

/// A path as installed.
#[derive(Debug)]
pub enum Installed {
    Direct,
    Skiff(Box<SkiffPath>),
    Iptables,
    Nftables,
}

#[derive(Debug)]
pub struct SkiffPath {
    config: DatapathConfig,
    table: ServiceTable<PinnedMaps>,
    maps: PinnedMaps,
    _datapath: Datapath,
}

/// Installs `mode` for `set` into `node` (whose pods' host-side veths are `ifaces`). Returns the
/// path and, where there is something to program, how long programming all Services took.
pub fn install(
    mode: Mode,
    node: &Netns,
    ifaces: &[String],
    instance: &str,
    set: &ServiceSet,
) -> Result<(Installed, Option<Duration>)> {
    ensure_clean(node, instance)?;
    match mode {
        Mode::Direct => Ok((Installed::Direct, None)),
        Mode::Skiff => {
            let config = DatapathConfig::new(instance);
            let mut dp = Datapath::load(config.clone()).context("loading Skiff's datapath")?;
            let mut table = dp.service_table()?;
            let desired = services::desired(set);
            // The agent programs the Services before it attaches pods, so a pod never meets a
            // table that refuses every Service address.
            let started = Instant::now();
            let report = table.sync(&desired);
            let took = started.elapsed();
            if let Some((sp, e)) = report.failed.first() {
                bail!("Skiff could not program {sp}: {e}");
            }
            if report.created != desired.len() {
                bail!(
                    "Skiff created {} of {} service ports",
                    report.created,
                    desired.len()
                );
            }
            node.run(|| -> Result<()> {
                for iface in ifaces {
                    dp.attach(iface)
                        .with_context(|| format!("attaching Skiff to {iface}"))?;
                }
                Ok(())
            })?;
            let maps = dp.maps()?;
            Ok((
                Installed::Skiff(Box::new(SkiffPath {
                    config,
                    table,
                    maps,
                    _datapath: dp,
                })),
                Some(took),
            ))
        }
        Mode::Iptables => {
            let took = timed_stdin(
                node,
                IPTABLES_RESTORE,
                &["--noflush", "--counters"],
                &kubeproxy::iptables_restore_input(set, None),
            )?;
            // kube-proxy's one-time jumps from the built-in chains (not part of each sync).
            for (table, args) in kubeproxy::iptables_jump_rules() {
                let mut cmd = node.command(IPTABLES);
                cmd.args(["-w", "-t", table]).args(&args);
                run(cmd, "iptables")?;
            }
            Ok((Installed::Iptables, Some(took)))
        }
        Mode::Nftables => {
            let took = timed_stdin(node, "nft", &["-f", "-"], &kubeproxy::nft_full(set))?;
            Ok((Installed::Nftables, Some(took)))
        }
    }
}

impl Installed {
    /// Applies the change from `before` to `after` (the measured Service's endpoints differ) the
    /// way each system does it; returns how long the programming operation took.
    pub fn change(
        &mut self,
        node: &Netns,
        before: &ServiceSet,
        after: &ServiceSet,
    ) -> Result<Duration> {
        let (old, new) = (find_app(before), find_app(after));
        match self {
            Installed::Direct => bail!("the direct path has nothing to program"),
            Installed::Skiff(s) => {
                // An endpoint event reaches the agent as one Service: upsert the ports that
                // differ (the agent's watch path; no diff over all Services).
                let changed: Vec<_> = new
                    .ports
                    .iter()
                    .filter(|p| old.ports.iter().all(|q| q != *p))
                    .collect();
                let started = Instant::now();
                for p in &changed {
                    s.table
                        .upsert(services::service_port(new, p), &p.endpoints)
                        .context("Skiff could not apply the change")?;
                }
                Ok(started.elapsed())
            }
            Installed::Iptables => timed_stdin(
                node,
                IPTABLES_RESTORE,
                &["--noflush", "--counters"],
                &kubeproxy::iptables_restore_input(after, Some(before)),
            ),
            Installed::Nftables => timed_stdin(
                node,
                "nft",
                &["-f", "-"],
                &kubeproxy::nft_endpoint_change(old, new, after.cluster_cidr),
            ),
        }
    }

    /// Connections this path has translated so far to each port of the measured Service, by
    /// port name (`None` for the direct path, which translates nothing). One reading of the
    /// whole rule set: listing nftables' table takes seconds at 10,000 Services.
    pub fn connections(
        &self,
        node: &Netns,
        app: &Service,
    ) -> Result<Option<BTreeMap<String, u64>>> {
        let per_port = |count: &dyn Fn(&ServicePort) -> Result<u64>| -> Result<_> {
            app.ports
                .iter()
                .map(|p| Ok((p.name.clone(), count(p)?)))
                .collect::<Result<BTreeMap<_, _>>>()
        };
        Ok(match self {
            Installed::Direct => None,
            Installed::Skiff(s) => Some(per_port(&|p| {
                let sp = services::service_port(app, p);
                let id = s
                    .table
                    .service_id(&sp)
                    .with_context(|| format!("{sp} is not programmed"))?;
                Ok(s.maps.counters(id)?.new_flows)
            })?),
            Installed::Iptables => {
                let save = output(
                    node.command(IPTABLES_SAVE).args(["-c", "-t", "nat"]),
                    IPTABLES_SAVE,
                )?;
                Some(per_port(&|p| {
                    Ok(kubeproxy::iptables_dnat_packets(&save, app, p))
                })?)
            }
            Installed::Nftables => {
                let listing = output(
                    node.command("nft")
                        .args(["list", "table", "ip", kubeproxy::NFT_TABLE]),
                    "nft list table",
                )?;
                Some(per_port(&|p| {
                    Ok(kubeproxy::nft_dnat_packets(&listing, app, p))
                })?)
            }
        })
    }

    /// Removes what outlives the node namespace: Skiff's pins (rules and netfilter state go
    /// with the namespace, which the caller deletes).
    pub fn remove(self) -> Result<()> {
        if let Installed::Skiff(s) = self {
            let config = s.config.clone();
            drop(s);
            datapath::reset(&config).context("removing Skiff's pins")?;
        }
        Ok(())
    }
}

/// Fails unless the node namespace is free of rules and Skiff pins, so that traffic can only take
/// the path about to be installed.
fn ensure_clean(node: &Netns, instance: &str) -> Result<()> {
    let ruleset = output(
        node.command("nft").args(["list", "ruleset"]),
        "nft list ruleset",
    )?;
    let legacy = output(&mut node.command(IPTABLES_SAVE), IPTABLES_SAVE)?;
    for rules in [ruleset, legacy] {
        if !rules.trim().is_empty() {
            bail!("the node namespace already has netfilter rules:\n{rules}");
        }
    }
    let layout = DatapathConfig::new(instance).layout()?;
    if layout.dir().exists() {
        bail!("Skiff's pins are still at {}", layout.dir().display());
    }
    Ok(())
}

/// Runs `program args` in `node` with `input` on stdin; returns its wall time.
fn timed_stdin(node: &Netns, program: &str, args: &[&str], input: &str) -> Result<Duration> {
    let mut cmd = node.command(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to {program}"))?;
    let out = child.wait_with_output()?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    output(&mut cmd, what).map(drop)
}

fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
