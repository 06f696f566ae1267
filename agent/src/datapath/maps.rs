//! The one module that reads and writes the datapath's pinned maps, with typed keys and values.

use std::{
    collections::BTreeSet,
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
};

use aya::maps::{
    Array, HashMap, Map, MapData, MapError, MapInfo, MapType, PerCpuArray, PerCpuValues,
};
use serde::Serialize;
use skiff_common::{
    AffinityKey, AffinityValue, BackendValue, CT_FORWARD, CtEvent, CtKey, CtTimeouts, CtValue,
    DatapathSettings, DropReason, GcStats, MaglevChunk, NodePortKey, ServiceCounters, ServiceKey,
    ServiceValue, SlotKey, addr_octets, map_names, port_from_raw, raw_addr,
};

use super::{
    Error, PinLayout, Result,
    table::{ServiceMaps, Snapshot},
    types::Protocol,
};

/// Entries each map holds (`max_entries`), as the agent configures them at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Capacities {
    pub services: u32,
    pub backends: u32,
    pub slots: u32,
    /// Maglev table chunks (496 slots each; a table of the default size takes 34).
    pub maglev: u32,
    /// The short-lived conntrack table (an LRU: flows not yet established, and closed ones).
    pub conntrack: u32,
    /// The established conntrack table (never evicts; memory is used as flows need it).
    pub ct_established: u32,
    pub fragments: u32,
    /// Session affinity entries (client address, service port).
    pub affinity: u32,
    /// NodePort entries ((port, protocol) on the node's address).
    pub node_ports: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        use skiff_common::capacity;
        Capacities {
            services: capacity::SERVICES,
            backends: capacity::BACKENDS,
            slots: capacity::SLOTS,
            maglev: capacity::MAGLEV,
            conntrack: capacity::CONNTRACK,
            ct_established: capacity::CT_ESTABLISHED,
            fragments: capacity::FRAGMENTS,
            affinity: capacity::AFFINITY,
            node_ports: capacity::NODEPORTS,
        }
    }
}

/// What one entry of the established conntrack table is taken to cost in kernel memory (key,
/// value, the hash table's element header and the allocator's rounding).
pub const CT_ESTABLISHED_BYTES_PER_ENTRY: u64 = 128;
/// The share of the node's memory the established conntrack table may grow to: 1/256 (0.4%).
pub(crate) const CT_ESTABLISHED_MEMORY_DIVISOR: u64 = 256;
/// Bounds of the size derived from memory.
pub(crate) const CT_ESTABLISHED_MIN: u32 = 65_536;
pub(crate) const CT_ESTABLISHED_MAX: u32 = 16_777_216;

/// The default size of the established conntrack table for a node with `mem_bytes` of memory:
/// 1/256 of it at 128 bytes an entry (two entries a flow), within
/// `CT_ESTABLISHED_MIN..=CT_ESTABLISHED_MAX`. 24 GiB gives 786,432 entries (393,216 flows,
/// 96 MiB when full). The table is not preallocated: only live flows use memory.
pub fn ct_established_for_memory(mem_bytes: u64) -> u32 {
    let entries = mem_bytes / CT_ESTABLISHED_MEMORY_DIVISOR / CT_ESTABLISHED_BYTES_PER_ENTRY;
    entries.clamp(CT_ESTABLISHED_MIN as u64, CT_ESTABLISHED_MAX as u64) as u32
}

/// The node's memory (`MemTotal` of /proc/meminfo), in bytes.
pub fn node_memory() -> std::io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    parse_mem_total(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "/proc/meminfo has no MemTotal line in kB",
        )
    })
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let kb: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then(|| kb.saturating_mul(1024))
}

/// The shape a pinned map must have for this agent to use it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MapShape {
    kind: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl fmt::Display for MapShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} with {}-byte keys, {}-byte values and {} entries",
            self.kind, self.key_size, self.value_size, self.max_entries
        )
    }
}

fn shape_of<K, V>(kind: MapType, max_entries: u32) -> MapShape {
    MapShape {
        kind,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        max_entries,
    }
}

fn expected_shapes(c: &Capacities) -> [(&'static str, MapShape); 15] {
    [
        (
            map_names::SERVICES,
            shape_of::<ServiceKey, ServiceValue>(MapType::Hash, c.services),
        ),
        (
            map_names::BACKENDS,
            shape_of::<u32, BackendValue>(MapType::Hash, c.backends),
        ),
        (
            map_names::SLOTS,
            shape_of::<SlotKey, u32>(MapType::Hash, c.slots),
        ),
        (
            map_names::CONNTRACK,
            shape_of::<CtKey, CtValue>(MapType::LruHash, c.conntrack),
        ),
        (
            map_names::MAGLEV,
            shape_of::<SlotKey, MaglevChunk>(MapType::Hash, c.maglev),
        ),
        (
            map_names::CT_ESTABLISHED,
            shape_of::<CtKey, CtValue>(MapType::Hash, c.ct_established),
        ),
        (
            map_names::CT_EVENTS,
            shape_of::<u32, u64>(MapType::PerCpuArray, skiff_common::capacity::CT_EVENTS),
        ),
        (
            map_names::CT_GC,
            shape_of::<u32, GcStats>(MapType::Array, 1),
        ),
        (
            map_names::FRAGMENTS,
            shape_of::<skiff_common::FragKey, skiff_common::FragValue>(
                MapType::LruHash,
                c.fragments,
            ),
        ),
        (
            map_names::SVC_COUNTERS,
            shape_of::<u32, ServiceCounters>(MapType::PerCpuArray, c.services),
        ),
        (
            map_names::DROPS,
            shape_of::<u32, u64>(MapType::PerCpuArray, skiff_common::capacity::DROP_REASONS),
        ),
        (
            map_names::CONFIG,
            shape_of::<u32, DatapathSettings>(MapType::Array, 1),
        ),
        (
            map_names::AFFINITY,
            shape_of::<AffinityKey, AffinityValue>(MapType::LruHash, c.affinity),
        ),
        (
            map_names::NODEPORTS,
            shape_of::<NodePortKey, ServiceKey>(MapType::Hash, c.node_ports),
        ),
        (
            map_names::POD_SOURCES,
            shape_of::<u32, u32>(MapType::Hash, skiff_common::capacity::POD_SOURCES),
        ),
    ]
}

/// Maps whose records live only seconds: one of another layout is replaced, not refused.
const SHORT_LIVED: [&str; 1] = [map_names::FRAGMENTS];

/// Checks every map already pinned for this instance against the shape this agent would create,
/// so that adopting pins never misreads a map made by another version or configuration.
pub(crate) fn check_pinned_shapes(layout: &PinLayout, capacities: &Capacities) -> Result<()> {
    for (name, expected) in expected_shapes(capacities) {
        let path = layout.map(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| Error::MapOpen {
            path: path.clone(),
            source,
        })?;
        let found = MapShape {
            kind: info.map_type().map_err(|source| Error::MapOpen {
                path: path.clone(),
                source,
            })?,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if found != expected && SHORT_LIVED.contains(&name) {
            // Its records live seconds (a fragment's translation, 30 s at most): a map of
            // another layout is unpinned and made afresh rather than refused, so an upgrade
            // that changes it keeps forwarding. The programs still running hold the old map
            // until their links get the new ones; at worst a datagram fragmented across the
            // switch is lost.
            tracing::warn!(map = name, path = %path.display(), %found, %expected, "a short-lived map has another layout; replacing it");
            std::fs::remove_file(&path).map_err(|source| Error::Io {
                op: "unpinning",
                path: path.clone(),
                source,
            })?;
            continue;
        }
        if name == map_names::CT_ESTABLISHED
            && found.max_entries != expected.max_entries
            && (MapShape {
                max_entries: expected.max_entries,
                ..found
            }) == expected
        {
            // Its default size follows the node's memory, which may have changed since the
            // pins were made: keep the live flows and the pinned size (a reset applies the new
            // one).
            tracing::warn!(
                map = name,
                pinned = found.max_entries,
                configured = expected.max_entries,
                "keeping the pinned established conntrack table's size; `datapath reset` applies the configured one"
            );
            continue;
        }
        if found != expected {
            return Err(Error::IncompatiblePin {
                path,
                found: found.to_string(),
                expected: expected.to_string(),
            });
        }
    }
    Ok(())
}

/// A conntrack entry as the operator command shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConntrackEntry {
    /// "established" (never evicted) or "short-lived" (an LRU: flows not yet established, and
    /// closed ones).
    pub table: &'static str,
    pub protocol: String,
    /// "forward" (client -> VIP, keyed as the client sends) or "reverse" (backend -> client).
    pub direction: &'static str,
    pub source: SocketAddrV4,
    pub destination: SocketAddrV4,
    /// Forward: the backend chosen; reverse: the VIP:port (or node address and NodePort) put
    /// back as source.
    pub translated_to: SocketAddrV4,
    /// For flows translated at both ends (NodePort flows to another node's backend): forward,
    /// the source put in (the node's address and the port allocated); reverse, the client put
    /// back as destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub also_translated: Option<SocketAddrV4>,
    pub service_id: u32,
    pub backend_id: u32,
    pub age_ms: u64,
    pub idle_ms: u64,
    pub state: String,
    pub expired: bool,
}

/// A session affinity entry as the operator command shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AffinityEntry {
    pub client: Ipv4Addr,
    pub service_id: u32,
    pub backend_id: u32,
    /// Since the client's last new flow to the service.
    pub idle_ms: u64,
}

/// The datapath's pinned maps, opened by path (so a reader needs no loaded programs).
pub struct PinnedMaps {
    dir: PathBuf,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, BackendValue>,
    slots: HashMap<MapData, SlotKey, u32>,
    maglev: HashMap<MapData, SlotKey, MaglevChunk>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    ct_established: HashMap<MapData, CtKey, CtValue>,
    ct_events: PerCpuArray<MapData, u64>,
    ct_gc: Array<MapData, GcStats>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    node_ports: HashMap<MapData, NodePortKey, ServiceKey>,
    pod_sources: HashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, ServiceCounters>,
    drops: PerCpuArray<MapData, u64>,
    config: Array<MapData, DatapathSettings>,
    cpus: usize,
}

impl fmt::Debug for PinnedMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedMaps")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn open_map(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| Error::MapOpen {
        path: path.clone(),
        source,
    })?;
    Map::from_map_data(data).map_err(|source| Error::MapOpen { path, source })
}

fn typed<T: TryFrom<Map, Error = MapError>>(dir: &Path, name: &str) -> Result<T> {
    T::try_from(open_map(dir, name)?).map_err(|source| Error::MapOpen {
        path: dir.join(name),
        source,
    })
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { map, op, source }
}

impl PinnedMaps {
    /// Opens the maps pinned for `layout`'s instance.
    pub fn open(layout: &PinLayout) -> Result<Self> {
        let dir = layout.maps_dir();
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| Error::Io {
            op: "counting CPUs",
            path: PathBuf::from(what),
            source,
        })?;
        Ok(PinnedMaps {
            services: typed(&dir, map_names::SERVICES)?,
            backends: typed(&dir, map_names::BACKENDS)?,
            slots: typed(&dir, map_names::SLOTS)?,
            maglev: typed(&dir, map_names::MAGLEV)?,
            conntrack: typed(&dir, map_names::CONNTRACK)?,
            ct_established: typed(&dir, map_names::CT_ESTABLISHED)?,
            ct_events: typed(&dir, map_names::CT_EVENTS)?,
            ct_gc: typed(&dir, map_names::CT_GC)?,
            affinity: typed(&dir, map_names::AFFINITY)?,
            node_ports: typed(&dir, map_names::NODEPORTS)?,
            pod_sources: typed(&dir, map_names::POD_SOURCES)?,
            counters: typed(&dir, map_names::SVC_COUNTERS)?,
            drops: typed(&dir, map_names::DROPS)?,
            config: typed(&dir, map_names::CONFIG)?,
            cpus,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings the instance was loaded with (all zero if never recorded).
    pub fn settings(&self) -> Result<DatapathSettings> {
        self.config
            .get(&0, 0)
            .map_err(map_err(map_names::CONFIG, "lookup"))
    }

    pub(crate) fn record_settings(&mut self, settings: &DatapathSettings) -> Result<()> {
        self.config
            .set(0, settings, 0)
            .map_err(map_err(map_names::CONFIG, "update"))
    }

    /// Records `addr` as the only source the pod behind interface `ifindex` may send from.
    pub(crate) fn put_pod_source(&mut self, ifindex: u32, addr: Ipv4Addr) -> Result<()> {
        self.pod_sources
            .insert(ifindex, raw_addr(addr.octets()), 0)
            .map_err(map_err(map_names::POD_SOURCES, "update"))
    }

    pub(crate) fn delete_pod_source(&mut self, ifindex: u32) -> Result<()> {
        ignore_missing(self.pod_sources.remove(&ifindex))
            .map_err(map_err(map_names::POD_SOURCES, "delete"))
    }

    /// Every pod interface's recorded source: (interface index, pod address).
    pub fn pod_sources(&self) -> Result<Vec<(u32, Ipv4Addr)>> {
        Ok(collect(&self.pod_sources, map_names::POD_SOURCES)?
            .into_iter()
            .map(|(i, a)| (i, Ipv4Addr::from(addr_octets(a))))
            .collect())
    }

    /// A service's counters, summed over CPUs.
    pub fn counters(&self, service_id: u32) -> Result<ServiceCounters> {
        let per_cpu = self
            .counters
            .get(&service_id, 0)
            .map_err(map_err(map_names::SVC_COUNTERS, "lookup"))?;
        let mut total = ServiceCounters::default();
        for c in per_cpu.iter() {
            total.add(c);
        }
        Ok(total)
    }

    /// Drop counts by reason, summed over CPUs.
    pub fn drops(&self) -> Result<Vec<(DropReason, u64)>> {
        DropReason::ALL
            .iter()
            .map(|r| {
                let per_cpu = self
                    .drops
                    .get(&(*r as u32), 0)
                    .map_err(map_err(map_names::DROPS, "lookup"))?;
                Ok((*r, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// Every conntrack entry of both tables, as raw key/value pairs (the established table's
    /// first; a flow moving between the tables may show in both).
    pub fn conntrack_raw(&self) -> Result<Vec<(CtKey, CtValue)>> {
        Ok(self
            .conntrack_tables()?
            .into_iter()
            .map(|(_, k, v)| (k, v))
            .collect())
    }

    /// Every conntrack entry, with whether it is in the established table.
    pub fn conntrack_tables(&self) -> Result<Vec<(bool, CtKey, CtValue)>> {
        let established = collect(&self.ct_established, map_names::CT_ESTABLISHED)?;
        let transient = collect(&self.conntrack, map_names::CONNTRACK)?;
        Ok(established
            .into_iter()
            .map(|(k, v)| (true, k, v))
            .chain(transient.into_iter().map(|(k, v)| (false, k, v)))
            .collect())
    }

    /// Every conntrack entry, for display, relative to the monotonic clock now.
    pub fn conntrack(&self, timeouts: &CtTimeouts) -> Result<Vec<ConntrackEntry>> {
        let now = monotonic_ns();
        Ok(self
            .conntrack_tables()?
            .into_iter()
            .map(|(established, k, v)| describe_ct(established, &k, &v, now, timeouts))
            .collect())
    }

    /// Conntrack event counts, summed over CPUs.
    pub fn ct_events(&self) -> Result<Vec<(CtEvent, u64)>> {
        CtEvent::ALL
            .iter()
            .map(|e| {
                let per_cpu = self
                    .ct_events
                    .get(&(*e as u32), 0)
                    .map_err(map_err(map_names::CT_EVENTS, "lookup"))?;
                Ok((*e, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// The capacities (entries) of the established and the short-lived conntrack tables.
    pub fn ct_capacities(&self) -> Result<(u32, u32)> {
        let cap = |name: &str| -> Result<u32> {
            let path = self.dir.join(name);
            let info =
                MapInfo::from_pin(&path).map_err(|source| Error::MapOpen { path, source })?;
            Ok(info.max_entries())
        };
        Ok((cap(map_names::CT_ESTABLISHED)?, cap(map_names::CONNTRACK)?))
    }

    /// What the last run of the conntrack collector found (all zero before the first).
    pub fn gc_stats(&self) -> Result<GcStats> {
        self.ct_gc
            .get(&0, 0)
            .map_err(map_err(map_names::CT_GC, "lookup"))
    }

    /// Every session affinity entry, relative to the monotonic clock now.
    pub fn affinity(&self) -> Result<Vec<AffinityEntry>> {
        let now = monotonic_ns();
        Ok(collect(&self.affinity, map_names::AFFINITY)?
            .into_iter()
            .map(|(k, v)| AffinityEntry {
                client: Ipv4Addr::from(addr_octets(k.client)),
                service_id: k.service_id,
                backend_id: v.backend_id,
                idle_ms: now.saturating_sub(v.last_used_ns) / 1_000_000,
            })
            .collect())
    }

    /// Deletes the conntrack and session affinity entries of services not in `live` (deleted
    /// ones). Returns how many conntrack entries it found, all gone afterwards (some may have
    /// been evicted meanwhile). Their IDs must not be handed to new services until this has
    /// run, so no new flow can carry them; expired entries of live services are the
    /// collector's (`skiff_ct_gc`, inside the kernel, where checking an entry and removing it
    /// cannot be split by a syscall's length). The cost grows with the number of entries, so it
    /// runs after deletions, not on every change.
    pub fn purge_conntrack(&mut self, live: &BTreeSet<u32>) -> Result<usize> {
        let doomed: Vec<(bool, CtKey)> = self
            .conntrack_tables()?
            .into_iter()
            .filter(|(_, _, v)| !live.contains(&v.service_id))
            .map(|(established, k, _)| (established, k))
            .collect();
        for (established, k) in &doomed {
            if *established {
                ignore_missing(self.ct_established.remove(k))
                    .map_err(map_err(map_names::CT_ESTABLISHED, "delete"))?;
            } else {
                ignore_missing(self.conntrack.remove(k))
                    .map_err(map_err(map_names::CONNTRACK, "delete"))?;
            }
        }
        let stale: Vec<AffinityKey> = collect(&self.affinity, map_names::AFFINITY)?
            .into_iter()
            .filter(|(k, _)| !live.contains(&k.service_id))
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            ignore_missing(self.affinity.remove(k))
                .map_err(map_err(map_names::AFFINITY, "delete"))?;
        }
        Ok(doomed.len())
    }
}

fn describe_ct(
    established: bool,
    k: &CtKey,
    v: &CtValue,
    now: u64,
    timeouts: &CtTimeouts,
) -> ConntrackEntry {
    let sock = |addr: u32, port: u16| {
        SocketAddrV4::new(Ipv4Addr::from(addr_octets(addr)), port_from_raw(port))
    };
    let protocol =
        Protocol::from_number(k.proto).map_or_else(|| k.proto.to_string(), |p| p.to_string());
    let fin = skiff_common::CT_SEEN_FIN_FWD | skiff_common::CT_SEEN_FIN_REV;
    let state = if k.proto == skiff_common::IPPROTO_TCP {
        if skiff_common::tcp_closed(v.tcp_flags) {
            "closing"
        } else if v.tcp_flags & fin != 0 {
            "half-closed"
        } else if v.tcp_flags & skiff_common::CT_ASSURED != 0 {
            "established"
        } else if v.tcp_flags & skiff_common::CT_SEEN_REPLY != 0 {
            "answered"
        } else {
            "opening"
        }
    } else if v.tcp_flags & skiff_common::CT_SEEN_REPLY != 0 {
        "replied"
    } else {
        "unreplied"
    };
    ConntrackEntry {
        table: if established {
            "established"
        } else {
            "short-lived"
        },
        protocol,
        direction: if v.kind == CT_FORWARD {
            "forward"
        } else {
            "reverse"
        },
        source: sock(k.saddr, k.sport),
        destination: sock(k.daddr, k.dport),
        translated_to: sock(v.nat_addr, v.nat_port),
        also_translated: (v.alt_addr != 0).then(|| sock(v.alt_addr, v.alt_port)),
        service_id: v.service_id,
        backend_id: v.backend_id,
        age_ms: now.saturating_sub(v.created_ns) / 1_000_000,
        idle_ms: now.saturating_sub(v.last_seen_ns) / 1_000_000,
        state: state.to_owned(),
        expired: timeouts.expired(k.proto, v, now),
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Collects a map's entries, skipping those evicted or deleted between reading a key and its
/// value.
fn collect<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for item in map.iter() {
        match item {
            Ok(kv) => out.push(kv),
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(name, "iterate")(e)),
        }
    }
    Ok(out)
}

impl ServiceMaps for PinnedMaps {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(map_err(map_names::SERVICES, "update"))
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        ignore_missing(self.services.remove(key)).map_err(map_err(map_names::SERVICES, "delete"))
    }

    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<()> {
        self.backends
            .insert(id, value, 0)
            .map_err(map_err(map_names::BACKENDS, "update"))
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.backends.remove(&id)).map_err(map_err(map_names::BACKENDS, "delete"))
    }

    fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<()> {
        self.slots
            .insert(key, backend_id, 0)
            .map_err(map_err(map_names::SLOTS, "update"))
    }

    fn delete_slot(&mut self, key: &SlotKey) -> Result<()> {
        ignore_missing(self.slots.remove(key)).map_err(map_err(map_names::SLOTS, "delete"))
    }

    fn put_maglev(&mut self, key: &SlotKey, chunk: &MaglevChunk) -> Result<()> {
        self.maglev
            .insert(key, chunk, 0)
            .map_err(map_err(map_names::MAGLEV, "update"))
    }

    fn delete_maglev(&mut self, key: &SlotKey) -> Result<()> {
        ignore_missing(self.maglev.remove(key)).map_err(map_err(map_names::MAGLEV, "delete"))
    }

    fn get_maglev(&self, key: &SlotKey) -> Result<Option<MaglevChunk>> {
        match self.maglev.get(key, 0) {
            Ok(chunk) => Ok(Some(chunk)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(map_names::MAGLEV, "lookup")(e)),
        }
    }

    fn put_node_port(&mut self, key: &NodePortKey, service: &ServiceKey) -> Result<()> {
        self.node_ports
            .insert(key, service, 0)
            .map_err(map_err(map_names::NODEPORTS, "update"))
    }

    fn delete_node_port(&mut self, key: &NodePortKey) -> Result<()> {
        ignore_missing(self.node_ports.remove(key)).map_err(map_err(map_names::NODEPORTS, "delete"))
    }

    fn reset_counters(&mut self, service_id: u32) -> Result<()> {
        let zeros = PerCpuValues::try_from(vec![ServiceCounters::default(); self.cpus]).map_err(
            |source| Error::Io {
                op: "sizing per-CPU counters",
                path: self.dir.join(map_names::SVC_COUNTERS),
                source,
            },
        )?;
        self.counters
            .set(service_id, zeros, 0)
            .map_err(map_err(map_names::SVC_COUNTERS, "update"))
    }

    fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            services: collect(&self.services, map_names::SERVICES)?,
            backends: collect(&self.backends, map_names::BACKENDS)?,
            slots: collect(&self.slots, map_names::SLOTS)?,
            node_ports: collect(&self.node_ports, map_names::NODEPORTS)?,
            maglev_keys: self
                .maglev
                .keys()
                .collect::<Result<_, _>>()
                .map_err(map_err(map_names::MAGLEV, "iterate"))?,
        })
    }
}

/// Deleting what is already gone is success: the goal state holds.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_established_table_is_sized_from_memory_within_bounds() {
        const GIB: u64 = 1 << 30;
        assert_eq!(ct_established_for_memory(24 * GIB), 786_432);
        assert_eq!(ct_established_for_memory(GIB), CT_ESTABLISHED_MIN);
        assert_eq!(ct_established_for_memory(8192 * GIB), CT_ESTABLISHED_MAX);
        // The whole table, full, is 1/256 of memory.
        let full = ct_established_for_memory(64 * GIB) as u64 * CT_ESTABLISHED_BYTES_PER_ENTRY;
        assert_eq!(full, 64 * GIB / 256);
    }

    #[test]
    fn mem_total_is_read_in_kilobytes() {
        let text = "MemTotal:       24597416 kB\nMemFree:         1234 kB\n";
        assert_eq!(parse_mem_total(text), Some(24_597_416 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 12 MB\n"), None);
    }
}
