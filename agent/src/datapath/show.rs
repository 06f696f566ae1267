//! What an operator sees of a datapath instance: attached links, services with their backends
//! and counters, drop reasons and conntrack entries. Reads the pins only; writes nothing.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
};

use serde::Serialize;
use skiff_common::{
    CtEvent, DropReason, GcStats, MAGLEV_CHUNK, MaglevChunk, SVC_FLAG_VIP_MARKER, ServiceCounters,
    ServiceKey, SlotKey, addr_octets, maglev_key, port_from_raw,
};

use super::{
    AffinityEntry, ConntrackEntry, PinLayout, PinnedMaps, Result, ServiceMaps, ServicePort,
    SessionAffinity, Timeouts,
    loader::{Attachment, attachments, uplink_attachments},
    types::{backend_addr, backend_is_draining},
};

/// Which parts of the report to gather.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sections {
    pub attached: bool,
    pub services: bool,
    pub drops: bool,
    pub conntrack: bool,
    pub affinity: bool,
}

impl Sections {
    pub const ALL: Sections = Sections {
        attached: true,
        services: true,
        drops: true,
        conntrack: true,
        affinity: true,
    };
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceReport {
    pub service: ServicePort,
    pub id: u32,
    /// Active backends in slot order, as the datapath sees them.
    pub backends: Vec<SocketAddrV4>,
    /// Backends that keep their flows but get no new ones, by address.
    pub draining: Vec<SocketAddrV4>,
    /// ClientIP session affinity timeout in seconds; absent without affinity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_timeout_secs: Option<u64>,
    /// The NodePort serving this service port on the node's address, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// Slots the service counts that are missing or name a missing backend (should be empty).
    pub broken_slots: Vec<u32>,
    /// The size of the service's Maglev table (absent for an entry from before Maglev).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maglev_table_size: Option<u32>,
    /// How many slots of the live Maglev table each backend owns (its share of new flows);
    /// slots in missing chunks or naming a missing backend count under "broken".
    pub maglev_shares: BTreeMap<String, u32>,
    /// Summed over CPUs.
    pub counters: ServiceCounters,
}

/// How full the conntrack tables are and what has happened to them.
#[derive(Clone, Debug, Serialize)]
pub struct ConntrackPressure {
    /// Capacities (entries, two per flow).
    pub established_capacity: u32,
    pub short_lived_capacity: u32,
    /// The datapath's conntrack events, summed over CPUs (`established_full`: flows left in the
    /// short-lived table, where they may be evicted, because the established one was full).
    pub events: BTreeMap<&'static str, u64>,
    /// The collector's last run (entries left by table and state, entries it removed); absent
    /// before the first run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_gc: Option<GcStats>,
    /// How long ago that run was, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_gc_ago_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub instance: String,
    pub pins: PathBuf,
    /// The address NodePorts are served on; absent when NodePorts are off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attached: Option<Vec<Attachment>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceReport>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drops: Option<BTreeMap<&'static str, u64>>,
    /// Shown with the drops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack_pressure: Option<ConntrackPressure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<Vec<ConntrackEntry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Vec<AffinityEntry>>,
}

/// Gathers the report of the instance whose pins `layout` names.
pub fn gather(instance: &str, layout: &PinLayout, sections: Sections) -> Result<Report> {
    let mut report = Report {
        instance: instance.to_owned(),
        pins: layout.dir().to_path_buf(),
        node_ip: None,
        attached: None,
        services: None,
        drops: None,
        conntrack_pressure: None,
        conntrack: None,
        affinity: None,
    };
    if sections.attached {
        let mut all = attachments(layout)?;
        all.extend(uplink_attachments(layout)?);
        report.attached = Some(all);
    }
    if !(sections.services || sections.drops || sections.conntrack || sections.affinity) {
        return Ok(report);
    }
    let maps = PinnedMaps::open(layout)?;
    let node_ip = maps.settings()?.node_ip;
    report.node_ip = (node_ip != 0).then(|| Ipv4Addr::from(addr_octets(node_ip)));
    if sections.services {
        report.services = Some(services(&maps)?);
    }
    if sections.drops {
        report.drops = Some(
            maps.drops()?
                .into_iter()
                .map(|(r, n)| (r.name(), n))
                .collect(),
        );
        let (established_capacity, short_lived_capacity) = maps.ct_capacities()?;
        let gc = maps.gc_stats()?;
        let ran = gc.started_ns != 0;
        report.conntrack_pressure = Some(ConntrackPressure {
            established_capacity,
            short_lived_capacity,
            events: maps
                .ct_events()?
                .into_iter()
                .map(|(e, n)| (e.name(), n))
                .collect(),
            last_gc: ran.then_some(gc),
            last_gc_ago_ms: ran
                .then(|| super::maps::monotonic_ns().saturating_sub(gc.started_ns) / 1_000_000),
        });
    }
    if sections.conntrack {
        // Judge expiry by the timeouts the instance was loaded with.
        let s = maps.settings()?;
        let timeouts = if s.udp_ns == 0 {
            Timeouts::DEFAULT
        } else {
            Timeouts {
                tcp_established: s.tcp_established_ns,
                tcp_transient: s.tcp_transient_ns,
                tcp_closing: s.tcp_closing_ns,
                udp: s.udp_ns,
                snat_hold: Timeouts::DEFAULT.snat_hold,
            }
        };
        report.conntrack = Some(maps.conntrack(&timeouts)?);
    }
    if sections.affinity {
        let mut entries = maps.affinity()?;
        entries.sort_by_key(|e| (e.service_id, e.client));
        report.affinity = Some(entries);
    }
    Ok(report)
}

fn services(maps: &PinnedMaps) -> Result<Vec<ServiceReport>> {
    let snap = maps.snapshot()?;
    let backends: BTreeMap<u32, _> = snap.backends.iter().copied().collect();
    let slots: BTreeMap<SlotKey, u32> = snap.slots.iter().copied().collect();
    let node_ports: BTreeMap<ServiceKey, u16> = snap
        .node_ports
        .iter()
        .map(|(np, skey)| (*skey, port_from_raw(np.port)))
        .collect();
    let mut draining: BTreeMap<u32, Vec<SocketAddrV4>> = BTreeMap::new();
    for b in backends.values().filter(|b| backend_is_draining(b)) {
        draining
            .entry(b.service_id)
            .or_default()
            .push(backend_addr(b));
    }
    let mut out = Vec::new();
    for (key, value) in &snap.services {
        if value.flags & SVC_FLAG_VIP_MARKER != 0 {
            continue;
        }
        let Some(service) = ServicePort::from_key(key) else {
            continue;
        };
        let mut report = ServiceReport {
            service,
            id: value.id,
            backends: Vec::new(),
            draining: draining.remove(&value.id).unwrap_or_default(),
            affinity_timeout_secs: match SessionAffinity::decode(value) {
                SessionAffinity::None => None,
                SessionAffinity::ClientIp { timeout } => Some(timeout.as_secs()),
            },
            node_port: node_ports.get(key).copied(),
            broken_slots: Vec::new(),
            maglev_table_size: (value.maglev_size() != 0).then_some(value.maglev_size()),
            maglev_shares: BTreeMap::new(),
            counters: maps.counters(value.id)?,
        };
        let size = if value.slot_count == 0 {
            0
        } else {
            value.maglev_size()
        };
        let mut chunks: BTreeMap<u32, Option<MaglevChunk>> = BTreeMap::new();
        for slot in 0..size {
            let index = slot / MAGLEV_CHUNK;
            if let std::collections::btree_map::Entry::Vacant(e) = chunks.entry(index) {
                e.insert(maps.get_maglev(&maglev_key(value.id, value.maglev_gen(), index))?);
            }
            let chunk = chunks.get(&index).copied().flatten();
            let owner = chunk
                .and_then(|c| backends.get(&c.ids[(slot % MAGLEV_CHUNK) as usize]))
                .map_or_else(|| "broken".to_owned(), |b| backend_addr(b).to_string());
            *report.maglev_shares.entry(owner).or_insert(0) += 1;
        }
        for slot in 0..value.slot_count {
            let key = SlotKey {
                service_id: value.id,
                slot,
            };
            match slots.get(&key).and_then(|bid| backends.get(bid)) {
                Some(b) => report.backends.push(backend_addr(b)),
                None => report.broken_slots.push(slot),
            }
        }
        report.draining.sort();
        out.push(report);
    }
    out.sort_by_key(|s| s.service);
    Ok(out)
}

/// Renders a report as aligned text tables.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "datapath {} (pins: {})", r.instance, r.pins.display());
    if let Some(ip) = r.node_ip {
        let _ = writeln!(s, "NodePorts on {ip}");
    }
    if let Some(att) = &r.attached {
        let mut rows = vec![row([
            "INTERFACE",
            "HOOK",
            "LINK",
            "PROGRAM",
            "STATE",
            "OTHER PROGRAMS",
        ])];
        for a in att {
            rows.push(row([
                a.interface.as_str(),
                &if a.uplink {
                    format!("{} (uplink)", a.hook)
                } else {
                    a.hook.to_string()
                },
                &a.link_id.map_or("-".into(), |v| v.to_string()),
                &match (&a.program_id, &a.program) {
                    (Some(id), Some(n)) => format!("{id} {n}"),
                    (Some(id), None) => id.to_string(),
                    _ => "-".into(),
                },
                if a.live {
                    "live"
                } else {
                    "STALE (interface gone or recreated)"
                },
                &if a.others.is_empty() {
                    "-".to_owned()
                } else {
                    a.others.join(", ")
                },
            ]));
        }
        section(&mut s, &format!("ATTACHED ({})", att.len()), &rows);
    }
    if let Some(svcs) = &r.services {
        let mut rows = vec![row([
            "SERVICE",
            "ID",
            "BACKENDS",
            "NODEPORT",
            "AFFINITY",
            "PACKETS",
            "BYTES",
            "REPLIES",
            "REPLY-BYTES",
            "NEW-FLOWS",
            "REJECTED",
        ])];
        for sv in svcs {
            let mut backends = if sv.backends.is_empty() {
                "(none: new clients refused)".to_owned()
            } else {
                join(&sv.backends)
            };
            if !sv.draining.is_empty() {
                let _ = write!(backends, " draining {}", join(&sv.draining));
            }
            if !sv.broken_slots.is_empty() {
                let _ = write!(backends, " BROKEN SLOTS {:?}", sv.broken_slots);
            }
            let c = &sv.counters;
            rows.push(row([
                sv.service.to_string().as_str(),
                &sv.id.to_string(),
                &backends,
                &sv.node_port.map_or("-".to_owned(), |p| p.to_string()),
                &sv.affinity_timeout_secs
                    .map_or("-".to_owned(), |t| format!("ClientIP {t}s")),
                &c.packets.to_string(),
                &c.bytes.to_string(),
                &c.reply_packets.to_string(),
                &c.reply_bytes.to_string(),
                &c.new_flows.to_string(),
                &c.rejected.to_string(),
            ]));
        }
        section(&mut s, &format!("SERVICES ({})", svcs.len()), &rows);
    }
    if let Some(drops) = &r.drops {
        let mut rows = vec![row(["REASON", "PACKETS"])];
        // In the order of the reasons' definitions, which groups them by kind.
        for reason in DropReason::ALL {
            let n = drops.get(reason.name()).copied().unwrap_or(0);
            rows.push(row([reason.name(), &n.to_string()]));
        }
        section(&mut s, "DROPS", &rows);
    }
    if let Some(p) = &r.conntrack_pressure {
        let mut rows = vec![row(["TABLE", "CAPACITY", "ENTRIES", "REMOVED-BY-LAST-GC"])];
        let (established, short_lived, removed_e, removed_s) = match &p.last_gc {
            Some(g) => (
                g.established.to_string(),
                g.transient.to_string(),
                g.removed_established.to_string(),
                g.removed_transient.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        rows.push(row([
            "established",
            &p.established_capacity.to_string(),
            &established,
            &removed_e,
        ]));
        rows.push(row([
            "short-lived",
            &p.short_lived_capacity.to_string(),
            &short_lived,
            &removed_s,
        ]));
        let title = match p.last_gc_ago_ms {
            Some(ms) => format!("CONNTRACK TABLES (collector ran {ms} ms ago)"),
            None => "CONNTRACK TABLES (the collector has not run)".to_owned(),
        };
        section(&mut s, &title, &rows);
        let mut rows = vec![row(["EVENT", "FLOWS"])];
        for e in CtEvent::ALL {
            let n = p.events.get(e.name()).copied().unwrap_or(0);
            rows.push(row([e.name(), &n.to_string()]));
        }
        section(&mut s, "CONNTRACK EVENTS", &rows);
    }
    if let Some(ct) = &r.conntrack {
        let mut rows = vec![row([
            "TABLE",
            "PROTO",
            "DIR",
            "SOURCE",
            "DESTINATION",
            "TRANSLATED-TO",
            "SERVICE",
            "BACKEND",
            "STATE",
            "AGE-MS",
            "IDLE-MS",
        ])];
        for e in ct {
            let state = if e.expired {
                format!("{} (expired)", e.state)
            } else {
                e.state.clone()
            };
            rows.push(row([
                e.table,
                e.protocol.as_str(),
                e.direction,
                &e.source.to_string(),
                &e.destination.to_string(),
                &e.translated_to.to_string(),
                &e.service_id.to_string(),
                &e.backend_id.to_string(),
                &state,
                &e.age_ms.to_string(),
                &e.idle_ms.to_string(),
            ]));
        }
        section(&mut s, &format!("CONNTRACK ({} entries)", ct.len()), &rows);
    }
    if let Some(aff) = &r.affinity {
        let mut rows = vec![row(["CLIENT", "SERVICE", "BACKEND", "IDLE-MS"])];
        for e in aff {
            rows.push(row([
                e.client.to_string().as_str(),
                &e.service_id.to_string(),
                &e.backend_id.to_string(),
                &e.idle_ms.to_string(),
            ]));
        }
        section(&mut s, &format!("AFFINITY ({} entries)", aff.len()), &rows);
    }
    s
}

fn join(addrs: &[SocketAddrV4]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

fn section(out: &mut String, title: &str, rows: &[Vec<String>]) {
    let _ = writeln!(out, "\n{title}");
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::Protocol;

    #[test]
    fn text_report_aligns_columns_and_flags_draining_backends_and_services_without_backends() {
        let r = Report {
            instance: "n1".into(),
            pins: PathBuf::from("/sys/fs/bpf/skiff/n1"),
            node_ip: Some(Ipv4Addr::new(10, 250, 0, 11)),
            attached: None,
            services: Some(vec![
                ServiceReport {
                    service: ServicePort::new(Ipv4Addr::new(10, 96, 0, 10), 80, Protocol::Tcp),
                    id: 1,
                    backends: vec!["10.244.1.2:8080".parse().unwrap()],
                    draining: vec!["10.244.1.3:8080".parse().unwrap()],
                    affinity_timeout_secs: Some(10_800),
                    node_port: Some(30080),
                    broken_slots: vec![],
                    maglev_table_size: None,
                    maglev_shares: BTreeMap::new(),
                    counters: ServiceCounters {
                        packets: 12,
                        ..Default::default()
                    },
                },
                ServiceReport {
                    service: ServicePort::new(Ipv4Addr::new(10, 96, 0, 11), 53, Protocol::Udp),
                    id: 2,
                    backends: vec![],
                    draining: vec![],
                    affinity_timeout_secs: None,
                    node_port: None,
                    broken_slots: vec![],
                    maglev_table_size: None,
                    maglev_shares: BTreeMap::new(),
                    counters: ServiceCounters::default(),
                },
            ]),
            drops: None,
            conntrack_pressure: None,
            conntrack: None,
            affinity: None,
        };
        let text = render_text(&r);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("10.96")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0].find("1 "), lines[1].find("2 "), "{text}");
        assert!(text.contains("(none: new clients refused)"), "{text}");
        assert!(
            text.contains("10.244.1.2:8080 draining 10.244.1.3:8080"),
            "{text}"
        );
        assert!(text.contains("ClientIP 10800s"), "{text}");
        assert!(text.contains("30080"), "{text}");
        assert!(text.contains("NodePorts on 10.250.0.11"), "{text}");
    }
}
