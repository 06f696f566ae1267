//! Command line of `skiff-agent`.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    datapath::{
        self, DatapathConfig, Timeouts,
        show::{self, Sections},
    },
    standalone::{self, RunOptions},
};

#[derive(Debug, Parser)]
#[command(name = "skiff-agent", version, about = "Skiff's node agent")]
pub struct Cli {
    /// Enter this network namespace (e.g. /run/netns/node-1) before doing anything else.
    #[arg(long, global = true, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run this node: register it, run the pods bound to it, report their status.
    Node(Box<crate::node::NodeArgs>),
    /// The eBPF service datapath.
    #[command(subcommand)]
    Datapath(DatapathCommand),
}

#[derive(Debug, Subcommand)]
pub enum DatapathCommand {
    /// Load (or adopt) the datapath, attach it to interfaces and serve a services file, following
    /// its changes. Killing this process leaves the datapath forwarding from its pins.
    Run(Box<RunArgs>),
    /// Attach the datapath to interfaces and exit (the links stay pinned).
    Attach {
        #[command(flatten)]
        load: Box<LoadArgs>,
        /// Interfaces to attach to (host-side veths of pods).
        #[arg(long = "iface", required_unless_present = "uplinks")]
        interfaces: Vec<String>,
        /// The node's uplink, where NodePorts are served (needs --node-ip).
        #[arg(long = "uplink")]
        uplinks: Vec<String>,
    },
    /// Detach the datapath from interfaces.
    Detach {
        #[command(flatten)]
        instance: InstanceArgs,
        #[arg(long = "iface", required_unless_present = "uplinks")]
        interfaces: Vec<String>,
        #[arg(long = "uplink")]
        uplinks: Vec<String>,
    },
    /// Show what is attached, services with backends and counters, drops, conntrack and
    /// session affinity entries.
    Show {
        #[command(flatten)]
        instance: InstanceArgs,
        /// What to show (several may be given).
        #[arg(value_enum, default_values_t = [ShowWhat::All])]
        what: Vec<ShowWhat>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Remove every pin of the instance: programs detach and all datapath state is dropped.
    Reset {
        #[command(flatten)]
        instance: InstanceArgs,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ShowWhat {
    All,
    Attached,
    Services,
    Drops,
    Conntrack,
    Affinity,
}

#[derive(Debug, Args)]
pub struct InstanceArgs {
    /// Name of the datapath instance (its pins live in <bpffs>/skiff/<instance>/).
    #[arg(long, default_value = "default")]
    pub instance: String,
    /// Where the BPF filesystem is mounted.
    #[arg(long, default_value = datapath::DEFAULT_BPFFS_ROOT)]
    pub bpffs: PathBuf,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// Service CIDR: VIPs in it that match no service port are refused.
    #[arg(long, default_value = "10.96.0.0/12", value_parser = parse_cidr)]
    pub service_cidr: (Ipv4Addr, u8),
    /// Capacity of the services map (also the bound on service IDs).
    #[arg(long, default_value_t = skiff_common::capacity::SERVICES)]
    pub max_services: u32,
    #[arg(long, default_value_t = skiff_common::capacity::BACKENDS)]
    pub max_backends: u32,
    #[arg(long, default_value_t = skiff_common::capacity::SLOTS)]
    pub max_slots: u32,
    /// The Maglev table size of service ports (a prime from 251 to 131071); a Service's
    /// `skiff.io/maglev-table-size` annotation overrides it. Each port's table takes 4 bytes a
    /// slot (68 KiB at the default).
    #[arg(long, default_value_t = crate::datapath::maglev::DEFAULT_TABLE_SIZE)]
    pub maglev_table_size: u32,
    /// Entries of the Maglev map, 496 slots each (a table of the default size takes 34, twice
    /// that while it is replaced); not preallocated.
    #[arg(long, default_value_t = skiff_common::capacity::MAGLEV)]
    pub max_maglev_chunks: u32,
    /// Entries of the short-lived conntrack table (two per flow): an LRU for flows that have not
    /// completed their handshake and flows that have closed. Under a flood of new connections
    /// its oldest entries go first; established flows are never in it.
    #[arg(long, default_value_t = skiff_common::capacity::CONNTRACK)]
    pub max_conntrack: u32,
    /// Entries of the established conntrack table (two per flow), which never evicts a live
    /// flow. Default: sized from the node's memory, 1/256 of it at 128 bytes an entry, between
    /// 65,536 and 16,777,216 (786,432 on a 24 GiB node); memory is used only as flows need it.
    #[arg(long)]
    pub max_conntrack_established: Option<u32>,
    /// Seconds between runs of the conntrack collector, which removes expired entries (inside
    /// the kernel) and reports what the tables hold.
    #[arg(long, default_value_t = crate::datapath::DEFAULT_GC_INTERVAL.as_secs())]
    pub conntrack_gc_interval: u64,
    #[arg(long, default_value_t = skiff_common::capacity::FRAGMENTS)]
    pub max_fragments: u32,
    /// Session affinity entries (one per client address and ClientIP-affinity service port).
    #[arg(long, default_value_t = skiff_common::capacity::AFFINITY)]
    pub max_affinity: u32,
    /// NodePort entries.
    #[arg(long, default_value_t = skiff_common::capacity::NODEPORTS)]
    pub max_node_ports: u32,
    /// The node's address: NodePorts are served on it (on the uplinks attached), and NodePort
    /// flows to other nodes' backends leave with it as source. Without it, no NodePorts.
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// Source ports of NodePort flows to other nodes' backends; keep them out of the node's
    /// ephemeral ports (net.ipv4.ip_local_port_range) and of the NodePort range.
    #[arg(long, default_value = "61000-65535", value_parser = parse_port_range)]
    pub snat_ports: (u16, u16),
    /// Idle timeout of established TCP flows, in seconds.
    #[arg(long, default_value_t = skiff_common::timeouts::TCP_ESTABLISHED_NS / 1_000_000_000)]
    pub tcp_established_timeout: u64,
    /// Idle timeout of TCP flows not yet answered, in seconds.
    #[arg(long, default_value_t = skiff_common::timeouts::TCP_TRANSIENT_NS / 1_000_000_000)]
    pub tcp_transient_timeout: u64,
    /// Idle timeout of closed TCP flows, in seconds.
    #[arg(long, default_value_t = skiff_common::timeouts::TCP_CLOSING_NS / 1_000_000_000)]
    pub tcp_closing_timeout: u64,
    /// Idle timeout of UDP flows, in seconds.
    #[arg(long, default_value_t = skiff_common::timeouts::UDP_NS / 1_000_000_000)]
    pub udp_timeout: u64,
    /// Seconds a NodePort source port stays out of use after its flow closed, while the
    /// backend may hold the old connection in TIME_WAIT (60 s on Linux, 120 s on Windows).
    #[arg(long, default_value_t = skiff_common::timeouts::SNAT_TIME_WAIT_NS / 1_000_000_000)]
    pub snat_port_hold: u64,
    /// Seed of the flow hash (random when not given).
    #[arg(long)]
    pub hash_seed: Option<u32>,
    /// Source address a pod sees on a connection to one of its own Services that the datapath
    /// sent back to the pod itself (hairpin); no pod or node may use it.
    #[arg(long, default_value = "169.254.0.42", value_parser = parse_hairpin)]
    pub hairpin_addr: Ipv4Addr,
}

impl InstanceArgs {
    /// The configuration naming this instance (defaults for everything that is loaded).
    pub fn config(&self) -> DatapathConfig {
        let mut c = DatapathConfig::new(&self.instance);
        c.bpffs_root = self.bpffs.clone();
        c
    }
}

impl LoadArgs {
    pub fn config(&self) -> anyhow::Result<DatapathConfig> {
        let mut c = self.instance.config();
        c.service_cidr = self.service_cidr;
        c.capacities.services = self.max_services;
        c.capacities.backends = self.max_backends;
        c.capacities.slots = self.max_slots;
        c.capacities.maglev = self.max_maglev_chunks;
        crate::datapath::maglev::TableSize::new(self.maglev_table_size)
            .map_err(|e| anyhow::anyhow!("--maglev-table-size: {e}"))?;
        c.maglev_size = self.maglev_table_size;
        c.capacities.conntrack = self.max_conntrack;
        c.capacities.ct_established = match self.max_conntrack_established {
            Some(n) => n,
            None => crate::datapath::ct_established_for_memory(
                crate::datapath::node_memory()
                    .context("reading the node's memory to size the conntrack table")?,
            ),
        };
        if self.conntrack_gc_interval == 0 {
            bail!("--conntrack-gc-interval must be at least 1 second");
        }
        c.gc_interval = std::time::Duration::from_secs(self.conntrack_gc_interval);
        c.capacities.fragments = self.max_fragments;
        c.capacities.affinity = self.max_affinity;
        c.capacities.node_ports = self.max_node_ports;
        c.node_ip = self.node_ip;
        c.snat_ports = self.snat_ports;
        c.timeouts = timeouts(
            self.tcp_established_timeout,
            self.tcp_transient_timeout,
            self.tcp_closing_timeout,
            self.udp_timeout,
        );
        c.timeouts.snat_hold = self.snat_port_hold.saturating_mul(1_000_000_000);
        c.hash_seed = self.hash_seed;
        c.hairpin_addr = self.hairpin_addr;
        // The datapath refreshes a flow's timestamp at most once a second, so a shorter lifetime
        // would expire flows that are busy.
        for (name, v) in [
            ("--tcp-established-timeout", self.tcp_established_timeout),
            ("--tcp-transient-timeout", self.tcp_transient_timeout),
            ("--tcp-closing-timeout", self.tcp_closing_timeout),
            ("--udp-timeout", self.udp_timeout),
        ] {
            if v < 2 {
                bail!("{name} must be at least 2 seconds, not {v}");
            }
        }
        for (name, v) in [
            ("--max-services", c.capacities.services),
            ("--max-backends", c.capacities.backends),
            ("--max-slots", c.capacities.slots),
            ("--max-maglev-chunks", c.capacities.maglev),
            ("--max-conntrack", c.capacities.conntrack),
            ("--max-conntrack-established", c.capacities.ct_established),
            ("--max-fragments", c.capacities.fragments),
            ("--max-affinity", c.capacities.affinity),
            ("--max-node-ports", c.capacities.node_ports),
        ] {
            if v < 2 {
                bail!("{name} must be at least 2, not {v}");
            }
        }
        Ok(c)
    }
}

fn timeouts(established: u64, transient: u64, closing: u64, udp: u64) -> Timeouts {
    const S: u64 = 1_000_000_000;
    Timeouts {
        tcp_established: established.saturating_mul(S),
        tcp_transient: transient.saturating_mul(S),
        tcp_closing: closing.saturating_mul(S),
        udp: udp.saturating_mul(S),
        snat_hold: skiff_common::timeouts::SNAT_TIME_WAIT_NS,
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Interfaces to attach to (host-side veths of pods); repeat the flag for several.
    #[arg(long = "iface")]
    pub interfaces: Vec<String>,
    /// The node's uplink, where NodePorts are served (needs --node-ip).
    #[arg(long = "uplink")]
    pub uplinks: Vec<String>,
    /// YAML file of services to serve (see `skiff_agent::datapath::static_config`).
    #[arg(long)]
    pub services: Option<PathBuf>,
    /// Apply the services once and exit.
    #[arg(long)]
    pub once: bool,
    /// How often to check the services file, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub poll_ms: u64,
    /// How often to re-read the maps and repair drift, in seconds.
    #[arg(long, default_value_t = 30)]
    pub resync_secs: u64,
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR like 10.96.0.0/12"))?;
    let addr: Ipv4Addr = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let len: u8 = l
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{l:?} is not a prefix length 0-32"))?;
    // Every TCP/UDP packet to the range that matches no service is refused, so a huge range
    // would cut pods off from much of the address space.
    if len < 8 {
        return Err(format!(
            "{s} is too large: a Service CIDR must be /8 or smaller (10.96.0.0/12 is usual)"
        ));
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if u32::from(addr) & !mask != 0 {
        return Err(format!("{s} has host bits set"));
    }
    Ok((addr, len))
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a port range like 61000-65535"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{p:?} is not a port 1-65535"))
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo > hi {
        return Err(format!("{s}: the range is empty"));
    }
    Ok((lo, hi))
}

fn parse_hairpin(s: &str) -> Result<Ipv4Addr, String> {
    let addr: Ipv4Addr = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback() {
        return Err(format!(
            "{addr} cannot be a hairpin address: it must be unicast"
        ));
    }
    Ok(addr)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let cmd = match cli.command {
        Command::Node(args) => return crate::node::run(*args),
        Command::Datapath(cmd) => cmd,
    };
    match cmd {
        DatapathCommand::Run(args) => standalone::run(RunOptions {
            config: args.load.config()?,
            interfaces: args.interfaces,
            uplinks: args.uplinks,
            services_file: args.services,
            once: args.once,
            poll: Duration::from_millis(args.poll_ms.max(10)),
            resync: Duration::from_secs(args.resync_secs.max(1)),
        }),
        DatapathCommand::Attach {
            load,
            interfaces,
            uplinks,
        } => {
            let mut dp = datapath::Datapath::load(load.config()?)?;
            for iface in &interfaces {
                for (hook, outcome) in dp.attach(iface)? {
                    println!("{iface} {hook}: {outcome:?}");
                }
            }
            for iface in &uplinks {
                for (hook, outcome) in dp.attach_uplink(iface)? {
                    println!("{iface} uplink {hook}: {outcome:?}");
                }
            }
            Ok(())
        }
        DatapathCommand::Detach {
            instance,
            interfaces,
            uplinks,
        } => {
            let layout = datapath::PinLayout::new(&instance.bpffs, &instance.instance)?;
            for iface in &interfaces {
                let n = datapath::detach(&layout, iface)?;
                println!("{iface}: removed {n} links");
            }
            for iface in &uplinks {
                let n = datapath::detach_uplink(&layout, iface)?;
                println!("{iface}: removed {n} uplink links");
            }
            Ok(())
        }
        DatapathCommand::Show {
            instance,
            what,
            json,
        } => show_cmd(&instance, what, json),
        DatapathCommand::Reset { instance } => {
            let config = instance.config();
            let layout = config.layout()?;
            if datapath::reset(&config)? {
                println!("removed {}", layout.dir().display());
            } else {
                println!("nothing pinned at {}", layout.dir().display());
            }
            Ok(())
        }
    }
}

fn show_cmd(instance: &InstanceArgs, what: Vec<ShowWhat>, json: bool) -> anyhow::Result<()> {
    let layout = datapath::PinLayout::new(&instance.bpffs, &instance.instance)?;
    if !layout.exists() {
        bail!(
            "no datapath instance {:?} is pinned under {}",
            instance.instance,
            pins_parent(&layout).display()
        );
    }
    let mut sections = Sections::default();
    for w in what {
        match w {
            ShowWhat::All => sections = Sections::ALL,
            ShowWhat::Attached => sections.attached = true,
            ShowWhat::Services => sections.services = true,
            ShowWhat::Drops => sections.drops = true,
            ShowWhat::Conntrack => sections.conntrack = true,
            ShowWhat::Affinity => sections.affinity = true,
        }
    }
    let report = show::gather(&instance.instance, &layout, sections)?;
    let text = if json {
        serde_json::to_string_pretty(&report).context("rendering JSON")? + "\n"
    } else {
        show::render_text(&report)
    };
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

fn pins_parent(layout: &datapath::PinLayout) -> &Path {
    layout.dir().parent().unwrap_or(layout.dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_refuses_host_bits_and_bad_prefixes() {
        assert_eq!(
            parse_cidr("10.96.0.0/12"),
            Ok((Ipv4Addr::new(10, 96, 0, 0), 12))
        );
        assert!(
            parse_cidr("10.96.0.1/12")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(parse_cidr("10.96.0.0/33").unwrap_err().contains("prefix"));
        assert!(parse_cidr("0.0.0.0/0").unwrap_err().contains("too large"));
        assert!(parse_cidr("10.96.0.0").unwrap_err().contains("CIDR"));
    }

    #[test]
    fn the_default_hairpin_address_is_the_datapath_default_and_bad_ones_are_refused() {
        assert_eq!(
            parse_hairpin("169.254.0.42"),
            Ok(Ipv4Addr::from(skiff_common::DEFAULT_HAIRPIN_ADDR))
        );
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1", "x"] {
            assert!(parse_hairpin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn snat_port_ranges_must_be_non_empty_ranges_of_ports() {
        assert_eq!(parse_port_range("61000-65535"), Ok((61_000, 65_535)));
        for bad in ["61000", "0-10", "10-5", "1-70000", "a-b"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
