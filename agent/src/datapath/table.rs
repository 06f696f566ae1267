//! Programs services into the datapath maps: only the entries a change touches are written, in an
//! order that never lets the datapath follow a reference to something not yet (or no longer)
//! there: backends before the slots that name them, slots before the service entry that counts
//! them, and removals in the reverse order.
//!
//! A backend is active (in the service's slots: new flows may pick it), draining (in `BACKENDS`
//! but in no slot: its existing flows go on, new flows never pick it), or removed (gone from
//! `BACKENDS`: its flows end). No slot ever names a draining backend. A NodePort entry names a
//! service entry that exists: it is written after the service entry and removed before it.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use skiff_common::{
    BackendValue, MAGLEV_CHUNK, MaglevChunk, NodePortKey, SVC_FLAG_AFFINITY_CLIENT_IP,
    SVC_FLAG_VIP_MARKER, ServiceKey, ServiceValue, SlotKey, addr_octets, maglev_key, port_from_raw,
    raw_addr, raw_port, with_maglev,
};

use super::{
    Error, Result,
    maglev::{self, TableSize},
    types::{
        Protocol, ServicePort, backend_addr, backend_is_draining, backend_value, validate_backend,
    },
};

/// The backends of one service port, as the datapath should serve them. This is what the
/// agent's proxy derives from an Endpoints object: ready addresses are `active`, not-ready and
/// terminating ones `draining`; an address in neither is removed.
///
/// - `active` backends share the service's new flows.
/// - `draining` backends get no new flow, but every flow they already carry (an open TCP
///   connection, a UDP flow) keeps going to them, so a terminating pod can finish its work.
///   With no active backend left, new clients are refused (ICMP port unreachable, as for a
///   service without backends) while the draining backends' flows go on.
/// - A removed backend's flows end: its TCP connections are reset by the datapath (the client
///   sees "connection reset"), its UDP flows move to an active backend on their next packet.
///
/// A backend keeps its ID (and so its flows) when it moves between active and draining. An
/// address listed in both lists is active; a draining address the table never served as a
/// backend is ignored (no flow can be using it). Order and duplicates do not matter.
///
/// `affinity` is the service port's session affinity (none by default). `node_port`, when set,
/// serves the same backends on that port of the node's address (Kubernetes' `nodePort`, same
/// protocol as the service port): to clients outside the cluster through the node's uplink
/// (`Datapath::attach_uplink`), and to pods of the node. A NodePort whose backends differ from
/// its Service port's (a Local traffic policy on one side only) is programmed on its own entry,
/// `ServicePort::node_port_entry(port, protocol)` with `node_port: Some(port)`; moving a NodePort
/// from one entry to another means releasing it first (`sync_with` orders that itself).
///
/// Build it with `Backends::new(active, draining)`, `Backends::all_active(active)` (then
/// `.with_affinity(..)`), or a struct expression ending in `..Default::default()`, so that
/// fields added later keep callers compiling.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backends {
    pub active: Vec<SocketAddrV4>,
    pub draining: Vec<SocketAddrV4>,
    pub affinity: SessionAffinity,
    pub node_port: Option<u16>,
    /// The size of the service port's Maglev table (a prime, see `maglev::TableSize`); the
    /// table's default (`Limits::maglev_size`) when `None`.
    pub maglev_size: Option<u32>,
}

impl Backends {
    pub fn new(active: Vec<SocketAddrV4>, draining: Vec<SocketAddrV4>) -> Self {
        Backends {
            active,
            draining,
            ..Default::default()
        }
    }

    /// Every backend active, none draining (what `ServiceTable::upsert` programs).
    pub fn all_active(active: Vec<SocketAddrV4>) -> Self {
        Backends {
            active,
            ..Default::default()
        }
    }

    pub fn with_affinity(mut self, affinity: SessionAffinity) -> Self {
        self.affinity = affinity;
        self
    }

    pub fn with_node_port(mut self, node_port: Option<u16>) -> Self {
        self.node_port = node_port;
        self
    }

    pub fn with_maglev_size(mut self, size: Option<u32>) -> Self {
        self.maglev_size = size;
        self
    }

    fn validate(&self) -> Result<()> {
        for b in self.active.iter().chain(&self.draining) {
            validate_backend(b).map_err(|reason| Error::InvalidService { reason })?;
        }
        if let Some(size) = self.maglev_size {
            TableSize::new(size).map_err(|e| Error::InvalidService {
                reason: e.to_string(),
            })?;
        }
        self.affinity
            .validate()
            .map_err(|reason| Error::InvalidService { reason })
    }
}

/// A service port's session affinity (Kubernetes' `spec.sessionAffinity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionAffinity {
    /// Every new flow is placed by the flow hash.
    #[default]
    None,
    /// `sessionAffinity: ClientIP`: a client address's new flows go to the backend its earlier
    /// ones went to, while that backend is active and the client began a flow to this service
    /// port within `timeout` (`sessionAffinityConfig.clientIP.timeoutSeconds`, 1 s to 1 day,
    /// whole seconds; Kubernetes' default is `DEFAULT_CLIENT_IP_TIMEOUT`). The timeout counts
    /// from the client's last new flow, as in kube-proxy's iptables mode. Flows themselves stay
    /// on their backend through conntrack, with or without affinity.
    ClientIp { timeout: Duration },
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`: three hours.
pub const DEFAULT_CLIENT_IP_TIMEOUT: Duration = Duration::from_secs(10_800);
/// The longest ClientIP affinity Kubernetes accepts: one day.
pub const MAX_CLIENT_IP_TIMEOUT: Duration = Duration::from_secs(86_400);

impl SessionAffinity {
    /// ClientIP affinity with Kubernetes' default timeout.
    pub fn client_ip() -> Self {
        SessionAffinity::ClientIp {
            timeout: DEFAULT_CLIENT_IP_TIMEOUT,
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            SessionAffinity::None => Ok(()),
            SessionAffinity::ClientIp { timeout } => {
                if timeout.subsec_nanos() != 0
                    || *timeout < Duration::from_secs(1)
                    || *timeout > MAX_CLIENT_IP_TIMEOUT
                {
                    Err(format!(
                        "session affinity timeout {timeout:?}: must be whole seconds from 1 to \
                         {}",
                        MAX_CLIENT_IP_TIMEOUT.as_secs()
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// (flags, affinity_timeout_secs) of the service entry.
    fn encode(&self) -> (u32, u32) {
        match self {
            SessionAffinity::None => (0, 0),
            SessionAffinity::ClientIp { timeout } => (
                SVC_FLAG_AFFINITY_CLIENT_IP,
                timeout.as_secs().min(u32::MAX as u64) as u32,
            ),
        }
    }

    /// The affinity a service entry carries.
    pub(crate) fn decode(value: &ServiceValue) -> Self {
        if value.flags & SVC_FLAG_AFFINITY_CLIENT_IP != 0 {
            SessionAffinity::ClientIp {
                timeout: Duration::from_secs(value.affinity_timeout_secs.into()),
            }
        } else {
            SessionAffinity::None
        }
    }
}

/// The map writes the table needs. The real implementation writes the pinned eBPF maps; tests use
/// a fake that checks the datapath's invariants after every single write.
pub trait ServiceMaps {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()>;
    fn delete_service(&mut self, key: &ServiceKey) -> Result<()>;
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<()>;
    fn delete_backend(&mut self, id: u32) -> Result<()>;
    fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<()>;
    fn delete_slot(&mut self, key: &SlotKey) -> Result<()>;
    /// A chunk of a Maglev table (`skiff_common::maglev_key`).
    fn put_maglev(&mut self, key: &SlotKey, chunk: &MaglevChunk) -> Result<()>;
    fn delete_maglev(&mut self, key: &SlotKey) -> Result<()>;
    fn get_maglev(&self, key: &SlotKey) -> Result<Option<MaglevChunk>>;
    fn put_node_port(&mut self, key: &NodePortKey, service: &ServiceKey) -> Result<()>;
    fn delete_node_port(&mut self, key: &NodePortKey) -> Result<()>;
    /// Zeroes a service ID's counters before the ID is given to a new service.
    fn reset_counters(&mut self, service_id: u32) -> Result<()>;
    /// Everything the three service maps hold now.
    fn snapshot(&self) -> Result<Snapshot>;
}

/// The content of the service maps, read back (for adopting pins after a restart).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<(ServiceKey, ServiceValue)>,
    pub backends: Vec<(u32, BackendValue)>,
    pub slots: Vec<(SlotKey, u32)>,
    pub node_ports: Vec<(NodePortKey, ServiceKey)>,
    /// The keys of the Maglev map (its chunks are read with `get_maglev`: 2 KiB each).
    pub maglev_keys: Vec<SlotKey>,
}

/// How many entries the maps can hold (their `max_entries`), and the ports NodePorts may not use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Entries in the services map (service ports plus one marker per VIP); service IDs are
    /// below this bound too.
    pub services: u32,
    pub backends: u32,
    pub slots: u32,
    pub node_ports: u32,
    /// The source ports the datapath gives NodePort flows to other nodes' backends (inclusive):
    /// a NodePort there would be taken for the replies of those flows.
    pub snat_ports: (u16, u16),
    /// The Maglev table size of service ports that do not name one (a prime).
    pub maglev_size: u32,
    /// Entries (chunks of 496 slots) in the Maglev map.
    pub maglev_chunks: u32,
}

/// What a call changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Created,
    Updated,
    Deleted,
}

/// What `sync` did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    pub unchanged: usize,
    /// Services that could not be programmed, with the reason; the others were.
    pub failed: Vec<(ServicePort, Error)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Programmed {
    id: u32,
    /// Backend address -> its ID and state, active and draining backends alike.
    backends: BTreeMap<SocketAddrV4, ProgrammedBackend>,
    /// What the datapath's slots `0..len` name, in order: the active backends.
    slots: Vec<u32>,
    affinity: SessionAffinity,
    node_port: Option<u16>,
    maglev: MaglevTable,
}

/// A service port's Maglev table as programmed: its size, which generation is live, and the
/// backend ID of each slot (empty when the service has no active backend, or when an adopted
/// table was incomplete: the next upsert then writes a whole new one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MaglevTable {
    /// 0 for an entry from before Maglev (the datapath then uses `SLOTS`).
    size: u32,
    generation: bool,
    slots: Vec<u32>,
    /// The backend IDs `slots` names, sorted (kept so that checking a table against the active
    /// backends does not walk its slots).
    named: Vec<u32>,
    /// Whether chunks of this generation may be in the map (a whole table, or what is left of
    /// an incomplete one), so that replacing the table deletes them.
    stored: bool,
}

/// The sorted, distinct backend IDs a table names.
fn named_ids(slots: &[u32]) -> Vec<u32> {
    let mut ids: Vec<u32> = Vec::new();
    for id in slots {
        if let Err(at) = ids.binary_search(id) {
            ids.insert(at, *id);
        }
    }
    ids
}

/// Map entries a Maglev table of `size` slots takes.
fn maglev_chunks(size: u32) -> u32 {
    size.div_ceil(MAGLEV_CHUNK)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProgrammedBackend {
    id: u32,
    draining: bool,
}

/// What one service port should look like, worked out from a `Backends`.
struct Wanted {
    active: BTreeSet<SocketAddrV4>,
    /// Draining backends that are programmed now (the others carry no flow to keep).
    draining: BTreeSet<SocketAddrV4>,
    affinity: SessionAffinity,
    node_port: Option<u16>,
    maglev_size: u32,
}

impl Wanted {
    fn new(backends: &Backends, programmed: Option<&Programmed>, default_maglev: u32) -> Self {
        let active: BTreeSet<SocketAddrV4> = backends.active.iter().copied().collect();
        let draining = backends
            .draining
            .iter()
            .filter(|a| !active.contains(a))
            .filter(|a| programmed.is_some_and(|p| p.backends.contains_key(a)))
            .copied()
            .collect();
        Wanted {
            active,
            draining,
            affinity: backends.affinity,
            node_port: backends.node_port,
            maglev_size: backends.maglev_size.unwrap_or(default_maglev),
        }
    }

    /// Whether `p` already serves exactly this, slots included (adopted maps may lack one).
    fn matches(&self, p: &Programmed) -> bool {
        p.affinity == self.affinity
            && p.node_port == self.node_port
            && p.backends.len() == self.active.len() + self.draining.len()
            && self
                .active
                .iter()
                .all(|a| p.backends.get(a).is_some_and(|b| !b.draining))
            && self
                .draining
                .iter()
                .all(|a| p.backends.get(a).is_some_and(|b| b.draining))
            && p.slots
                .iter()
                .eq(self.active.iter().map(|a| &p.backends[a].id))
            && p.maglev.size == self.maglev_size
            && self.maglev_serves(p)
    }

    /// Whether `p`'s Maglev table is whole and names exactly its active backends (`update`
    /// returns such a table unchanged for the same set).
    fn maglev_serves(&self, p: &Programmed) -> bool {
        if self.active.is_empty() {
            return p.maglev.slots.is_empty();
        }
        if p.maglev.slots.len() != self.maglev_size as usize {
            return false;
        }
        let mut ids = p.slots.clone();
        ids.sort_unstable();
        ids.dedup();
        ids == p.maglev.named
    }
}

/// The services the datapath serves, as programmed into the maps.
#[derive(Debug)]
pub struct ServiceTable<M: ServiceMaps> {
    maps: M,
    limits: Limits,
    services: BTreeMap<ServicePort, Programmed>,
    /// Service ports per VIP; a VIP with any has a marker entry.
    vips: BTreeMap<Ipv4Addr, usize>,
    /// Which service port each NodePort serves.
    node_ports: BTreeMap<(u16, Protocol), ServicePort>,
    free_ids: BTreeSet<u32>,
    next_id: u32,
    /// IDs of deleted services whose conntrack entries have not been purged yet; they are not
    /// handed out again until `release_quarantined`.
    quarantined: Vec<u32>,
    next_backend_id: u32,
    /// Backend IDs in the maps (orphans included until deleted), so an ID is never handed out
    /// twice after the counter wraps.
    backend_ids: HashSet<u32>,
    slot_count: u32,
    /// Entries in the Maglev map.
    maglev_chunks: u32,
}

impl<M: ServiceMaps> ServiceTable<M> {
    /// Takes over whatever the maps hold (empty maps on a first start, the pinned state after a
    /// restart) and repairs what is inconsistent.
    pub fn adopt(maps: M, limits: Limits) -> Result<Self> {
        let mut table = ServiceTable {
            maps,
            limits,
            services: BTreeMap::new(),
            vips: BTreeMap::new(),
            node_ports: BTreeMap::new(),
            free_ids: BTreeSet::new(),
            next_id: 1,
            quarantined: Vec::new(),
            next_backend_id: 1,
            backend_ids: HashSet::new(),
            slot_count: 0,
            maglev_chunks: 0,
        };
        table.reload()?;
        Ok(table)
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The service ID the datapath uses for `sp`, if it is programmed.
    pub fn service_id(&self, sp: &ServicePort) -> Option<u32> {
        self.services.get(sp).map(|p| p.id)
    }

    /// The active backends programmed for `sp`, in slot order.
    pub fn backends(&self, sp: &ServicePort) -> Option<Vec<SocketAddrV4>> {
        let p = self.services.get(sp)?;
        let by_id: BTreeMap<u32, SocketAddrV4> =
            p.backends.iter().map(|(a, b)| (b.id, *a)).collect();
        Some(
            p.slots
                .iter()
                .filter_map(|id| by_id.get(id).copied())
                .collect(),
        )
    }

    /// The session affinity programmed for `sp`.
    pub fn affinity(&self, sp: &ServicePort) -> Option<SessionAffinity> {
        self.services.get(sp).map(|p| p.affinity)
    }

    /// The NodePort programmed for `sp`.
    pub fn node_port(&self, sp: &ServicePort) -> Option<u16> {
        self.services.get(sp).and_then(|p| p.node_port)
    }

    /// The draining backends programmed for `sp`, by address.
    pub fn draining(&self, sp: &ServicePort) -> Option<Vec<SocketAddrV4>> {
        let p = self.services.get(sp)?;
        Some(
            p.backends
                .iter()
                .filter(|(_, b)| b.draining)
                .map(|(a, _)| *a)
                .collect(),
        )
    }

    pub fn service_ports(&self) -> impl Iterator<Item = &ServicePort> {
        self.services.keys()
    }

    /// IDs of deleted services whose conntrack entries still need purging.
    pub fn quarantined(&self) -> &[u32] {
        &self.quarantined
    }

    /// Makes quarantined IDs available again, once their conntrack entries are gone.
    pub fn release_quarantined(&mut self) {
        for id in self.quarantined.drain(..) {
            self.free_ids.insert(id);
        }
    }

    /// Makes `sp` balance over exactly `backends`, all active (duplicates ignored): the same as
    /// `upsert_with(sp, &Backends::all_active(..))`. A backend no longer listed is removed, so
    /// its flows end; an empty list makes the datapath refuse new clients.
    pub fn upsert(&mut self, sp: ServicePort, backends: &[SocketAddrV4]) -> Result<Change> {
        self.upsert_with(sp, &Backends::all_active(backends.to_vec()))
    }

    /// Makes `sp` serve `backends`: new flows over the active ones, existing flows kept on the
    /// draining ones, every other backend removed (see `Backends`). Writes only what differs
    /// from what is programmed; `Change::Unchanged` when nothing does.
    pub fn upsert_with(&mut self, sp: ServicePort, backends: &Backends) -> Result<Change> {
        sp.validate()
            .map_err(|reason| Error::InvalidService { reason })?;
        backends.validate()?;
        if sp.is_node_port_entry() && backends.node_port != Some(sp.port) {
            return Err(Error::InvalidService {
                reason: format!("{sp}: a NodePort's own entry must serve that NodePort"),
            });
        }
        self.check_node_port(&sp, backends.node_port)?;
        let wanted = Wanted::new(backends, self.services.get(&sp), self.limits.maglev_size);
        if self.services.get(&sp).is_some_and(|p| wanted.matches(p)) {
            return Ok(Change::Unchanged);
        }
        if wanted.active.len() > wanted.maglev_size as usize {
            return Err(Error::InvalidService {
                reason: format!(
                    "{sp}: {} active backends do not fit a Maglev table of {} slots; give the \
                     Service a larger skiff.io/maglev-table-size",
                    wanted.active.len(),
                    wanted.maglev_size
                ),
            });
        }
        let created = !self.services.contains_key(&sp);
        self.check_capacity(&sp, &wanted.active)?;
        // Only a change of the backend set or the size writes a new table (beside the live one).
        let same_table = self.services.get(&sp).is_some_and(|p| {
            p.maglev.size == wanted.maglev_size
                && !p.maglev.slots.is_empty()
                && p.backends.iter().filter(|(_, b)| !b.draining).count() == wanted.active.len()
                && wanted
                    .active
                    .iter()
                    .all(|a| p.backends.get(a).is_some_and(|b| !b.draining))
        });
        if !wanted.active.is_empty()
            && !same_table
            && self.maglev_chunks + maglev_chunks(wanted.maglev_size) > self.limits.maglev_chunks
        {
            // The new table is written before the old one goes.
            return Err(Error::CapacityExhausted {
                map: "MAGLEV",
                capacity: self.limits.maglev_chunks,
            });
        }
        match self.write_upsert(sp, &wanted) {
            Ok(()) => Ok(if created {
                Change::Created
            } else {
                Change::Updated
            }),
            Err(e) => {
                // A write failed halfway: the maps are consistent (the order guarantees it) but
                // may differ from what we think; read them back so the next attempt starts right.
                if let Err(reload) = self.reload() {
                    tracing::error!(error = %reload, "re-reading the service maps failed");
                }
                Err(e)
            }
        }
    }

    /// Stops serving `sp`: its VIP:port is no longer translated.
    pub fn delete(&mut self, sp: &ServicePort) -> Result<Change> {
        let Some(p) = self.services.get(sp).cloned() else {
            return Ok(Change::Unchanged);
        };
        let result = self.write_delete(sp, &p);
        if let Err(e) = result {
            if let Err(reload) = self.reload() {
                tracing::error!(error = %reload, "re-reading the service maps failed");
            }
            return Err(e);
        }
        Ok(Change::Deleted)
    }

    /// Makes the maps serve exactly `desired`, every backend active: the same as `sync_with`
    /// with `Backends::all_active` for each service port.
    pub fn sync(&mut self, desired: &BTreeMap<ServicePort, Vec<SocketAddrV4>>) -> SyncReport {
        let desired: BTreeMap<ServicePort, Backends> = desired
            .iter()
            .map(|(sp, b)| (*sp, Backends::all_active(b.clone())))
            .collect();
        self.sync_with(&desired)
    }

    /// Makes the maps serve exactly `desired`: deletes the service ports not in it (first, to
    /// free room), then creates and updates the others as `upsert_with` does. A service that
    /// fails does not stop the others.
    pub fn sync_with(&mut self, desired: &BTreeMap<ServicePort, Backends>) -> SyncReport {
        let mut report = SyncReport::default();
        let gone: Vec<ServicePort> = self
            .services
            .keys()
            .filter(|sp| !desired.contains_key(sp))
            .copied()
            .collect();
        for sp in gone {
            match self.delete(&sp) {
                Ok(_) => report.deleted += 1,
                Err(e) => report.failed.push((sp, e)),
            }
        }
        // Ports that give up or keep no NodePort first: a NodePort moving to another entry
        // (a Service switching `externalTrafficPolicy`) is released before it is claimed.
        let (releasing, claiming): (Vec<_>, Vec<_>) = desired
            .iter()
            .partition(|(sp, b)| b.node_port.is_none() || self.node_port(sp) == b.node_port);
        for (sp, backends) in releasing.into_iter().chain(claiming) {
            match self.upsert_with(*sp, backends) {
                Ok(Change::Created) => report.created += 1,
                Ok(Change::Updated) => report.updated += 1,
                Ok(_) => report.unchanged += 1,
                Err(e) => report.failed.push((*sp, e)),
            }
        }
        report
    }

    /// A NodePort must be a port, outside the SNAT ports, and not another service port's.
    fn check_node_port(&self, sp: &ServicePort, node_port: Option<u16>) -> Result<()> {
        let Some(port) = node_port else {
            return Ok(());
        };
        let invalid = |reason: String| Err(Error::InvalidService { reason });
        let (lo, hi) = self.limits.snat_ports;
        if port == 0 {
            return invalid(format!("{sp}: node port 0 is not a port"));
        }
        if (lo..=hi).contains(&port) {
            return invalid(format!(
                "{sp}: node port {port} lies in the datapath's SNAT ports {lo}-{hi}"
            ));
        }
        match self.node_ports.get(&(port, sp.protocol)) {
            Some(owner) if owner != sp => invalid(format!(
                "{sp}: node port {port}/{} is already used by {owner}",
                sp.protocol
            )),
            Some(_) => Ok(()),
            None => {
                if self.node_ports.len() as u32 >= self.limits.node_ports {
                    return Err(Error::CapacityExhausted {
                        map: "NODEPORTS",
                        capacity: self.limits.node_ports,
                    });
                }
                Ok(())
            }
        }
    }

    fn check_capacity(&self, sp: &ServicePort, wanted: &BTreeSet<SocketAddrV4>) -> Result<()> {
        let (old_slots, added_backends, is_new) = match self.services.get(sp) {
            Some(p) => (
                p.slots.len() as u32,
                wanted
                    .iter()
                    .filter(|a| !p.backends.contains_key(a))
                    .count() as u32,
                false,
            ),
            None => (0, wanted.len() as u32, true),
        };
        // Old backends are removed only after the new ones are written, so both are counted.
        if self.backend_ids.len() as u32 + added_backends > self.limits.backends {
            return Err(Error::CapacityExhausted {
                map: "BACKENDS",
                capacity: self.limits.backends,
            });
        }
        let new_slots = wanted.len() as u32;
        if self.slot_count.saturating_sub(old_slots) + new_slots.max(old_slots) > self.limits.slots
        {
            return Err(Error::CapacityExhausted {
                map: "SLOTS",
                capacity: self.limits.slots,
            });
        }
        if is_new {
            let new_marker = !self.vips.contains_key(&sp.vip) as u32;
            let entries = (self.services.len() + self.vips.len()) as u32;
            if entries + 1 + new_marker > self.limits.services {
                return Err(Error::CapacityExhausted {
                    map: "SERVICES",
                    capacity: self.limits.services,
                });
            }
            if self.free_ids.is_empty() && self.next_id >= self.limits.services {
                return Err(Error::CapacityExhausted {
                    map: "SVC_COUNTERS (service IDs)",
                    capacity: self.limits.services,
                });
            }
        }
        Ok(())
    }

    fn write_upsert(&mut self, sp: ServicePort, wanted: &Wanted) -> Result<()> {
        let key = sp.key();
        let old = self.services.get(&sp).cloned();
        let id = match &old {
            Some(p) => p.id,
            None => {
                let id = self.allocate_id()?;
                self.maps.reset_counters(id)?;
                id
            }
        };
        let mut programmed = Programmed {
            id,
            backends: BTreeMap::new(),
            slots: Vec::with_capacity(wanted.active.len()),
            affinity: wanted.affinity,
            node_port: old.as_ref().and_then(|p| p.node_port),
            maglev: MaglevTable::default(),
        };
        let old_backend = |addr: &SocketAddrV4| old.as_ref().and_then(|p| p.backends.get(addr));

        // 1. Active backends first: nothing names the new ones yet, and one that was draining
        //    is marked active before a slot names it.
        for addr in &wanted.active {
            let bid = match old_backend(addr).copied() {
                Some(b) => {
                    if b.draining {
                        self.maps
                            .put_backend(b.id, &backend_value(*addr, id, false))?;
                    }
                    b.id
                }
                None => {
                    let bid = self.allocate_backend_id();
                    self.maps
                        .put_backend(bid, &backend_value(*addr, id, false))?;
                    self.backend_ids.insert(bid);
                    bid
                }
            };
            programmed.backends.insert(
                *addr,
                ProgrammedBackend {
                    id: bid,
                    draining: false,
                },
            );
            programmed.slots.push(bid);
        }

        // 2. The Maglev table, under the generation the datapath does not read: a whole new
        //    table, made live by the service entry below in one write.
        let old_maglev = old.as_ref().map(|p| p.maglev.clone()).unwrap_or_default();
        let table = self.maglev_table(wanted, &programmed, &old_maglev)?;
        // (An adopted table found incomplete is replaced whatever the new one is.)
        let broken = old_maglev.stored && old_maglev.slots.is_empty();
        let table_changed =
            old_maglev.size != wanted.maglev_size || old_maglev.slots != table || broken;
        // Every active backend owns at least one slot (the builder's shares differ by one at
        // most, and there are no more backends than slots).
        let mut named = if table.is_empty() {
            Vec::new()
        } else {
            programmed.slots.clone()
        };
        named.sort_unstable();
        named.dedup();
        programmed.maglev = MaglevTable {
            size: wanted.maglev_size,
            generation: old_maglev.generation ^ table_changed,
            stored: !table.is_empty(),
            slots: table,
            named,
        };
        if table_changed {
            self.write_maglev(id, &programmed.maglev)?;
        }

        // 3. Slots and the service entry. Growing: slots, then the count that makes them
        //    reachable. Shrinking: the count first, then slots that are no longer reachable.
        let old_slots: &[u32] = old.as_ref().map_or(&[], |p| &p.slots);
        let new_len = programmed.slots.len();
        let (flags, affinity_timeout_secs) = wanted.affinity.encode();
        let value = ServiceValue {
            id,
            slot_count: new_len as u32,
            flags: with_maglev(flags, wanted.maglev_size, programmed.maglev.generation),
            affinity_timeout_secs,
        };
        let value_changed = match &old {
            None => true,
            Some(p) => p.slots.len() != new_len || p.affinity != wanted.affinity || table_changed,
        };
        if old.is_none() && !self.vips.contains_key(&sp.vip) {
            self.maps
                .put_service(&vip_marker_key(sp.vip), &vip_marker())?;
        }
        if new_len >= old_slots.len() {
            self.write_slots(id, old_slots, &programmed.slots)?;
            if value_changed {
                self.maps.put_service(&key, &value)?;
            }
        } else {
            self.maps.put_service(&key, &value)?;
            self.write_slots(id, old_slots, &programmed.slots)?;
            for slot in new_len..old_slots.len() {
                self.maps.delete_slot(&SlotKey {
                    service_id: id,
                    slot: slot as u32,
                })?;
                self.slot_count = self.slot_count.saturating_sub(1);
            }
        }
        if old.is_none() {
            *self.vips.entry(sp.vip).or_insert(0) += 1;
        }
        // The old table is no longer live. (A packet that read the old service entry just
        // before may still look for a chunk and miss; it looks the entry up again.)
        if table_changed {
            self.delete_maglev(id, &old_maglev)?;
        }

        // 4. The NodePort, once the service entry it names exists.
        if programmed.node_port != wanted.node_port {
            if let Some(port) = wanted.node_port {
                self.maps
                    .put_node_port(&node_port_key(port, sp.protocol), &key)?;
                self.node_ports.insert((port, sp.protocol), sp);
            }
            if let Some(port) = programmed.node_port {
                self.maps
                    .delete_node_port(&node_port_key(port, sp.protocol))?;
                self.node_ports.remove(&(port, sp.protocol));
            }
            programmed.node_port = wanted.node_port;
        }

        // 5. Draining backends: no slot names them any more, so marking them cannot race with
        //    a pick. They stay in BACKENDS with their ID, so their flows go on.
        for addr in &wanted.draining {
            let Some(b) = old_backend(addr).copied() else {
                continue;
            };
            if !b.draining {
                self.maps
                    .put_backend(b.id, &backend_value(*addr, id, true))?;
            }
            programmed.backends.insert(
                *addr,
                ProgrammedBackend {
                    id: b.id,
                    draining: true,
                },
            );
        }

        // 6. Backends that left: no slot names them. The datapath resets their TCP connections
        //    and moves their UDP flows to an active backend.
        if let Some(old) = &old {
            for (addr, b) in &old.backends {
                if !programmed.backends.contains_key(addr) {
                    self.maps.delete_backend(b.id)?;
                    self.backend_ids.remove(&b.id);
                }
            }
        }
        self.services.insert(sp, programmed);
        Ok(())
    }

    /// The Maglev table `wanted` needs: derived from the programmed one when the size is the
    /// same, so that no slot moves from one surviving backend to another (see `maglev`).
    fn maglev_table(
        &self,
        wanted: &Wanted,
        programmed: &Programmed,
        old: &MaglevTable,
    ) -> Result<Vec<u32>> {
        if wanted.active.is_empty() {
            return Ok(Vec::new());
        }
        let invalid = |e: maglev::Error| Error::InvalidService {
            reason: e.to_string(),
        };
        let size = TableSize::new(wanted.maglev_size).map_err(invalid)?;
        let names: Vec<([u8; 6], u32)> = wanted
            .active
            .iter()
            .map(|a| (maglev::backend_name(*a), programmed.backends[a].id))
            .collect();
        let backends: Vec<maglev::Backend<'_>> = names
            .iter()
            .map(|(name, id)| maglev::Backend::new(name, *id))
            .collect();
        let previous: &[u32] = if old.size == wanted.maglev_size {
            &old.slots
        } else {
            &[]
        };
        maglev::update(previous, &backends, size).map_err(invalid)
    }

    /// The slots of a table whose chunks are `keys` (empty if one went missing meanwhile).
    fn read_maglev(&self, keys: &[SlotKey], size: u32) -> Result<Vec<u32>> {
        let mut slots = Vec::with_capacity(size as usize);
        for (i, key) in keys.iter().enumerate() {
            let Some(chunk) = self.maps.get_maglev(key)? else {
                return Ok(Vec::new());
            };
            let take = (size - i as u32 * MAGLEV_CHUNK).min(MAGLEV_CHUNK) as usize;
            slots.extend_from_slice(&chunk.ids[..take]);
        }
        Ok(slots)
    }

    /// Writes every chunk of `table` under its generation.
    fn write_maglev(&mut self, service_id: u32, table: &MaglevTable) -> Result<()> {
        for (i, slots) in table.slots.chunks(MAGLEV_CHUNK as usize).enumerate() {
            let mut chunk = MaglevChunk {
                ids: [0; MAGLEV_CHUNK as usize],
            };
            chunk.ids[..slots.len()].copy_from_slice(slots);
            self.maps
                .put_maglev(&maglev_key(service_id, table.generation, i as u32), &chunk)?;
            self.maglev_chunks += 1;
        }
        Ok(())
    }

    /// Deletes every chunk of `table` (no longer live).
    fn delete_maglev(&mut self, service_id: u32, table: &MaglevTable) -> Result<()> {
        if !table.stored {
            return Ok(());
        }
        for i in 0..maglev_chunks(table.size) {
            self.maps
                .delete_maglev(&maglev_key(service_id, table.generation, i))?;
            self.maglev_chunks = self.maglev_chunks.saturating_sub(1);
        }
        Ok(())
    }

    /// Writes the slots `0..new.len()` that differ from `old`.
    fn write_slots(&mut self, id: u32, old: &[u32], new: &[u32]) -> Result<()> {
        for (i, bid) in new.iter().enumerate() {
            if old.get(i) != Some(bid) {
                self.maps.put_slot(
                    &SlotKey {
                        service_id: id,
                        slot: i as u32,
                    },
                    *bid,
                )?;
                if i >= old.len() {
                    self.slot_count += 1;
                }
            }
        }
        Ok(())
    }

    fn write_delete(&mut self, sp: &ServicePort, p: &Programmed) -> Result<()> {
        if let Some(port) = p.node_port {
            self.maps
                .delete_node_port(&node_port_key(port, sp.protocol))?;
            self.node_ports.remove(&(port, sp.protocol));
        }
        self.maps.delete_service(&sp.key())?;
        let vip_left = match self.vips.get_mut(&sp.vip) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.vips.remove(&sp.vip);
                true
            }
        };
        self.services.remove(sp);
        self.quarantined.push(p.id);
        if vip_left {
            self.maps.delete_service(&vip_marker_key(sp.vip))?;
        }
        for slot in 0..p.slots.len() {
            self.maps.delete_slot(&SlotKey {
                service_id: p.id,
                slot: slot as u32,
            })?;
            self.slot_count = self.slot_count.saturating_sub(1);
        }
        self.delete_maglev(p.id, &p.maglev)?;
        for b in p.backends.values() {
            self.maps.delete_backend(b.id)?;
            self.backend_ids.remove(&b.id);
        }
        Ok(())
    }

    fn allocate_id(&mut self) -> Result<u32> {
        if let Some(id) = self.free_ids.pop_first() {
            return Ok(id);
        }
        if self.next_id >= self.limits.services {
            return Err(Error::CapacityExhausted {
                map: "SVC_COUNTERS (service IDs)",
                capacity: self.limits.services,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        Ok(id)
    }

    /// Backend IDs grow monotonically, so a conntrack entry notices that its backend was removed
    /// even if a new backend takes the same address. After wrapping around, IDs still in use
    /// are skipped (the capacity check guarantees a free one); a reused ID names a different
    /// address, which the datapath also notices.
    fn allocate_backend_id(&mut self) -> u32 {
        loop {
            let id = self.next_backend_id;
            self.next_backend_id = self.next_backend_id.checked_add(1).unwrap_or(1);
            if id != 0 && !self.backend_ids.contains(&id) {
                return id;
            }
        }
    }

    /// Re-reads the maps and repairs them against this table's view (for drift: a map edited
    /// behind the agent's back). Keeps the ID bookkeeping (quarantine, backend ID counter).
    pub fn resync(&mut self) -> Result<()> {
        self.reload()
    }

    /// Rebuilds the table from what the maps hold, and deletes what nothing can reach (slots
    /// and backends of services that are gone, markers of VIPs without services).
    fn reload(&mut self) -> Result<()> {
        let snap = self.maps.snapshot()?;
        let mut services = BTreeMap::new();
        let mut by_id: BTreeMap<u32, ServicePort> = BTreeMap::new();
        let mut markers = BTreeSet::new();
        for (key, value) in &snap.services {
            if value.flags & SVC_FLAG_VIP_MARKER != 0 {
                markers.insert(Ipv4Addr::from(addr_octets(key.addr)));
                continue;
            }
            let Some(sp) = ServicePort::from_key(key) else {
                continue;
            };
            by_id.insert(value.id, sp);
            services.insert(
                sp,
                (
                    value.slot_count,
                    Programmed {
                        id: value.id,
                        backends: BTreeMap::new(),
                        slots: Vec::new(),
                        affinity: SessionAffinity::decode(value),
                        node_port: None,
                        maglev: MaglevTable {
                            size: value.maglev_size(),
                            generation: value.maglev_gen(),
                            slots: Vec::new(),
                            named: Vec::new(),
                            stored: false,
                        },
                    },
                ),
            );
        }
        let mut orphan_backends = Vec::new();
        let mut max_backend_id = 0;
        for (bid, value) in &snap.backends {
            max_backend_id = max_backend_id.max(*bid);
            match by_id.get(&value.service_id) {
                Some(sp) => {
                    if let Some((_, p)) = services.get_mut(sp) {
                        p.backends.insert(
                            backend_addr(value),
                            ProgrammedBackend {
                                id: *bid,
                                draining: backend_is_draining(value),
                            },
                        );
                    }
                }
                None => orphan_backends.push(*bid),
            }
        }
        let slot_map: BTreeMap<SlotKey, u32> = snap.slots.iter().copied().collect();
        let mut orphan_slots = Vec::new();
        for (key, _) in &snap.slots {
            let reachable = by_id
                .get(&key.service_id)
                .and_then(|sp| services.get(sp))
                .is_some_and(|(count, _)| key.slot < *count);
            if !reachable {
                orphan_slots.push(*key);
            }
        }
        // NodePorts of services that exist, once each, for the service's protocol.
        let mut node_ports = BTreeMap::new();
        let mut orphan_node_ports = Vec::new();
        for (npk, skey) in &snap.node_ports {
            let port = port_from_raw(npk.port);
            let owner = ServicePort::from_key(skey).filter(|sp| {
                sp.protocol.number() == npk.proto
                    && services.get(sp).is_some_and(|(_, p)| p.node_port.is_none())
            });
            match owner {
                Some(sp) => {
                    if let Some((_, p)) = services.get_mut(&sp) {
                        p.node_port = Some(port);
                    }
                    node_ports.insert((port, sp.protocol), sp);
                }
                None => orphan_node_ports.push(*npk),
            }
        }
        // Maglev tables: the live generation's chunks of services with active backends; any
        // other chunk is garbage (a table replaced while no agent ran, a service gone).
        // A table this table already holds is not read again (a resync reads only the keys:
        // 32 chunks of 2 KiB per service would make it slow); one it does not (adopting pins)
        // is read whole, so that the next change derives from it.
        let chunk_keys: BTreeSet<SlotKey> = snap.maglev_keys.iter().copied().collect();
        let mut live_chunks: BTreeSet<SlotKey> = BTreeSet::new();
        for (sp, (count, p)) in services.iter_mut() {
            if *count == 0 || p.maglev.size == 0 {
                continue;
            }
            p.maglev.stored = true;
            let keys: Vec<SlotKey> = (0..maglev_chunks(p.maglev.size))
                .map(|i| maglev_key(p.id, p.maglev.generation, i))
                .collect();
            let whole = keys.iter().all(|k| chunk_keys.contains(k));
            live_chunks.extend(keys.iter().filter(|k| chunk_keys.contains(k)));
            // An incomplete table is recorded as none: the next upsert writes a whole new one
            // (and then removes these chunks).
            let known = self.services.get(sp).filter(|k| {
                k.id == p.id
                    && k.maglev.size == p.maglev.size
                    && k.maglev.generation == p.maglev.generation
            });
            (p.maglev.slots, p.maglev.named) = if !whole {
                (Vec::new(), Vec::new())
            } else if let Some(known) = known {
                (known.maglev.slots.clone(), known.maglev.named.clone())
            } else {
                let slots = self.read_maglev(&keys, p.maglev.size)?;
                let named = named_ids(&slots);
                (slots, named)
            };
        }
        let orphan_chunks: Vec<SlotKey> = chunk_keys
            .iter()
            .filter(|k| !live_chunks.contains(*k))
            .copied()
            .collect();
        let mut table_services = BTreeMap::new();
        for (sp, (count, mut p)) in services {
            for slot in 0..count {
                // A missing slot is recorded as 0, which no backend ID is: the next upsert of
                // this service rewrites it.
                let bid = slot_map
                    .get(&SlotKey {
                        service_id: p.id,
                        slot,
                    })
                    .copied()
                    .unwrap_or(0);
                p.slots.push(bid);
            }
            table_services.insert(sp, p);
        }

        self.services = table_services;
        self.node_ports = node_ports;
        self.vips.clear();
        for sp in self.services.keys() {
            *self.vips.entry(sp.vip).or_insert(0) += 1;
        }
        let used: BTreeSet<u32> = self.services.values().map(|p| p.id).collect();
        self.next_id = used
            .iter()
            .next_back()
            .map_or(1, |m| m + 1)
            .max(self.next_id);
        self.free_ids = (1..self.next_id)
            .filter(|id| !used.contains(id) && !self.quarantined.contains(id))
            .collect();
        self.next_backend_id = self
            .next_backend_id
            .max(max_backend_id.checked_add(1).unwrap_or(1));
        self.backend_ids = snap.backends.iter().map(|(bid, _)| *bid).collect();
        self.slot_count = snap.slots.len() as u32;
        self.maglev_chunks = snap.maglev_keys.len() as u32;

        // Repairs, in the safe order: markers the datapath lacks, then garbage.
        for key in orphan_node_ports {
            self.maps.delete_node_port(&key)?;
        }
        for vip in self.vips.keys().copied().collect::<Vec<_>>() {
            if !markers.contains(&vip) {
                self.maps.put_service(&vip_marker_key(vip), &vip_marker())?;
            }
        }
        for vip in markers {
            if !self.vips.contains_key(&vip) {
                self.maps.delete_service(&vip_marker_key(vip))?;
            }
        }
        for key in orphan_slots {
            self.maps.delete_slot(&key)?;
            self.slot_count = self.slot_count.saturating_sub(1);
        }
        for key in orphan_chunks {
            self.maps.delete_maglev(&key)?;
            self.maglev_chunks = self.maglev_chunks.saturating_sub(1);
        }
        for bid in orphan_backends {
            self.maps.delete_backend(bid)?;
            self.backend_ids.remove(&bid);
        }
        Ok(())
    }
}

fn node_port_key(port: u16, protocol: Protocol) -> NodePortKey {
    NodePortKey {
        port: raw_port(port),
        proto: protocol.number(),
        _pad: 0,
    }
}

fn vip_marker_key(vip: Ipv4Addr) -> ServiceKey {
    ServiceKey {
        addr: raw_addr(vip.octets()),
        port: 0,
        proto: 0,
        _pad: 0,
    }
}

fn vip_marker() -> ServiceValue {
    ServiceValue {
        id: 0,
        slot_count: 0,
        flags: SVC_FLAG_VIP_MARKER,
        affinity_timeout_secs: 0,
    }
}

/// The checking fake of the maps, for this module's tests and the proxy's.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::HashMap;

    use aya::{maps::MapError, sys::SyscallError};
    use skiff_common::MAGLEV_GEN_BIT;

    use super::*;

    /// Small limits for tests.
    pub(crate) const fn limits() -> Limits {
        Limits {
            services: 64,
            backends: 64,
            slots: 64,
            node_ports: 4,
            snat_ports: (61_000, 65_535),
            maglev_size: maglev::MIN_TABLE_SIZE,
            // Room for every test's tables (1 chunk each at the smallest size).
            maglev_chunks: 1024,
        }
    }

    /// In-memory maps that check, after every write, what the datapath relies on: every slot a
    /// service entry makes reachable exists and names an existing backend of that service.
    #[derive(Default)]
    pub(crate) struct CheckingMaps {
        pub(crate) services: HashMap<ServiceKey, ServiceValue>,
        pub(crate) backends: HashMap<u32, BackendValue>,
        pub(crate) slots: HashMap<SlotKey, u32>,
        pub(crate) node_ports: HashMap<NodePortKey, ServiceKey>,
        pub(crate) maglev: HashMap<SlotKey, MaglevChunk>,
        /// Services whose live Maglev table a test broke on purpose (not checked).
        pub(crate) broken_tables: BTreeSet<u32>,
        /// Maglev chunks read back.
        pub(crate) maglev_reads: std::cell::Cell<usize>,
        pub(crate) counters_reset: Vec<u32>,
        pub(crate) writes: usize,
        /// Fail the write with this index (counting from 0).
        pub(crate) fail_at: Option<usize>,
    }

    impl CheckingMaps {
        /// How many writes were attempted so far.
        pub(crate) fn writes(&self) -> usize {
            self.writes
        }

        fn write(&mut self) -> Result<()> {
            let n = self.writes;
            self.writes += 1;
            if self.fail_at == Some(n) {
                return Err(Error::Map {
                    map: "fake",
                    op: "update",
                    source: MapError::SyscallError(SyscallError {
                        call: "bpf_map_update_elem",
                        io_error: std::io::Error::from_raw_os_error(
                            rustix::io::Errno::NOMEM.raw_os_error(),
                        ),
                    }),
                });
            }
            Ok(())
        }

        pub(crate) fn check(&self) {
            for (np, skey) in &self.node_ports {
                assert!(
                    self.services.contains_key(skey),
                    "node port {np:?} names missing service {skey:?}"
                );
                assert_eq!(np.proto, skey.proto, "node port {np:?} of another protocol");
            }
            for (key, svc) in &self.services {
                if svc.flags & SVC_FLAG_VIP_MARKER != 0 {
                    continue;
                }
                let marker = vip_marker_key(Ipv4Addr::from(addr_octets(key.addr)));
                assert!(
                    self.services.contains_key(&marker),
                    "service {key:?} without its VIP marker"
                );
                for slot in 0..svc.slot_count {
                    let k = SlotKey {
                        service_id: svc.id,
                        slot,
                    };
                    let bid = self
                        .slots
                        .get(&k)
                        .unwrap_or_else(|| panic!("reachable slot {k:?} missing"));
                    let b = self
                        .backends
                        .get(bid)
                        .unwrap_or_else(|| panic!("slot {k:?} names missing backend {bid}"));
                    assert_eq!(
                        b.service_id, svc.id,
                        "slot {k:?} names another service's backend"
                    );
                    assert!(
                        !backend_is_draining(b),
                        "slot {k:?} names draining backend {bid}"
                    );
                }
                self.check_maglev(svc);
            }
        }

        /// A service with active backends and a Maglev table: every slot of the live table
        /// exists and names an active backend of the service, and each of them is named.
        fn check_maglev(&self, svc: &ServiceValue) {
            let size = svc.maglev_size();
            if size == 0 || svc.slot_count == 0 || self.broken_tables.contains(&svc.id) {
                return;
            }
            let mut named = BTreeSet::new();
            for i in 0..maglev_chunks(size) {
                let k = maglev_key(svc.id, svc.maglev_gen(), i);
                let chunk = self
                    .maglev
                    .get(&k)
                    .unwrap_or_else(|| panic!("live maglev chunk {k:?} missing"));
                let take = (size - i * MAGLEV_CHUNK).min(MAGLEV_CHUNK) as usize;
                for bid in &chunk.ids[..take] {
                    let b = self
                        .backends
                        .get(bid)
                        .unwrap_or_else(|| panic!("maglev {k:?} names missing backend {bid}"));
                    assert_eq!(b.service_id, svc.id, "maglev {k:?} names another's backend");
                    assert!(!backend_is_draining(b), "maglev {k:?} names draining {bid}");
                    named.insert(*bid);
                }
            }
            assert_eq!(
                named.len(),
                svc.slot_count as usize,
                "the live table of service {} names {named:?}, not its {} active backends",
                svc.id,
                svc.slot_count
            );
        }

        /// Chunks of the table generation a service does not use (none after a change).
        pub(crate) fn dead_maglev_chunks(&self) -> usize {
            self.maglev
                .keys()
                .filter(|k| {
                    !self.services.values().any(|v| {
                        v.id == k.service_id
                            && v.flags & SVC_FLAG_VIP_MARKER == 0
                            && v.slot_count > 0
                            && v.maglev_gen() == (k.slot & MAGLEV_GEN_BIT != 0)
                    })
                })
                .count()
        }
    }

    impl ServiceMaps for CheckingMaps {
        fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
            self.write()?;
            self.services.insert(*key, *value);
            self.check();
            Ok(())
        }
        fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
            self.write()?;
            self.services.remove(key);
            self.check();
            Ok(())
        }
        fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<()> {
            self.write()?;
            self.backends.insert(id, *value);
            self.check();
            Ok(())
        }
        fn delete_backend(&mut self, id: u32) -> Result<()> {
            self.write()?;
            self.backends.remove(&id);
            self.check();
            Ok(())
        }
        fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<()> {
            self.write()?;
            self.slots.insert(*key, backend_id);
            self.check();
            Ok(())
        }
        fn delete_slot(&mut self, key: &SlotKey) -> Result<()> {
            self.write()?;
            self.slots.remove(key);
            self.check();
            Ok(())
        }
        fn put_node_port(&mut self, key: &NodePortKey, service: &ServiceKey) -> Result<()> {
            self.write()?;
            self.node_ports.insert(*key, *service);
            self.check();
            Ok(())
        }
        fn delete_node_port(&mut self, key: &NodePortKey) -> Result<()> {
            self.write()?;
            self.node_ports.remove(key);
            self.check();
            Ok(())
        }
        fn put_maglev(&mut self, key: &SlotKey, chunk: &MaglevChunk) -> Result<()> {
            self.write()?;
            self.maglev.insert(*key, *chunk);
            self.check();
            Ok(())
        }
        fn delete_maglev(&mut self, key: &SlotKey) -> Result<()> {
            self.write()?;
            self.maglev.remove(key);
            self.check();
            Ok(())
        }
        fn get_maglev(&self, key: &SlotKey) -> Result<Option<MaglevChunk>> {
            self.maglev_reads.set(self.maglev_reads.get() + 1);
            Ok(self.maglev.get(key).copied())
        }
        fn reset_counters(&mut self, service_id: u32) -> Result<()> {
            self.counters_reset.push(service_id);
            Ok(())
        }
        fn snapshot(&self) -> Result<Snapshot> {
            Ok(Snapshot {
                services: self.services.iter().map(|(k, v)| (*k, *v)).collect(),
                backends: self.backends.iter().map(|(k, v)| (*k, *v)).collect(),
                slots: self.slots.iter().map(|(k, v)| (*k, *v)).collect(),
                node_ports: self.node_ports.iter().map(|(k, v)| (*k, *v)).collect(),
                maglev_keys: self.maglev.keys().copied().collect(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::CheckingMaps, *};
    use crate::datapath::types::Protocol;

    const LIMITS: Limits = super::testing::limits();

    fn sp(last: u8, port: u16) -> ServicePort {
        ServicePort::new(Ipv4Addr::new(10, 96, 0, last), port, Protocol::Tcp)
    }

    fn be(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, last), 8080)
    }

    fn table() -> ServiceTable<CheckingMaps> {
        ServiceTable::adopt(CheckingMaps::default(), LIMITS).expect("adopt empty maps")
    }

    /// Backend address -> ID, as the table has programmed `s`.
    fn ids(t: &ServiceTable<CheckingMaps>, s: &ServicePort) -> BTreeMap<SocketAddrV4, u32> {
        t.services[s]
            .backends
            .iter()
            .map(|(a, b)| (*a, b.id))
            .collect()
    }

    /// The datapath's view of a service's draining backends: in BACKENDS, flagged, in no slot.
    fn drained(maps: &CheckingMaps, s: &ServicePort) -> Vec<SocketAddrV4> {
        let Some(v) = maps.services.get(&s.key()) else {
            return Vec::new();
        };
        let mut out: Vec<SocketAddrV4> = maps
            .backends
            .values()
            .filter(|b| b.service_id == v.id && backend_is_draining(b))
            .map(backend_addr)
            .collect();
        out.sort();
        out
    }

    fn backends(active: &[SocketAddrV4], draining: &[SocketAddrV4]) -> Backends {
        Backends::new(active.to_vec(), draining.to_vec())
    }

    /// The datapath's view of a service: backend addresses in slot order.
    fn served(maps: &CheckingMaps, s: &ServicePort) -> Option<Vec<SocketAddrV4>> {
        let v = maps.services.get(&s.key())?;
        Some(
            (0..v.slot_count)
                .map(|slot| {
                    let bid = maps.slots[&SlotKey {
                        service_id: v.id,
                        slot,
                    }];
                    backend_addr(&maps.backends[&bid])
                })
                .collect(),
        )
    }

    #[test]
    fn a_new_service_serves_exactly_its_backends() {
        let mut t = table();
        assert_eq!(
            t.upsert(sp(1, 80), &[be(3), be(2), be(2)]).unwrap(),
            Change::Created
        );
        assert_eq!(served(t.maps(), &sp(1, 80)), Some(vec![be(2), be(3)]));
        assert_eq!(
            t.maps().counters_reset,
            vec![t.service_id(&sp(1, 80)).unwrap()]
        );
    }

    #[test]
    fn growing_and_shrinking_never_expose_a_dangling_slot() {
        // CheckingMaps asserts the invariant after every single write.
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        t.upsert(sp(1, 80), &[be(1), be(2), be(3), be(4), be(5)])
            .unwrap();
        t.upsert(sp(1, 80), &[be(5)]).unwrap();
        t.upsert(sp(1, 80), &[be(6), be(7), be(8)]).unwrap();
        t.upsert(sp(1, 80), &[]).unwrap();
        t.upsert(sp(1, 80), &[be(9)]).unwrap();
        assert_eq!(served(t.maps(), &sp(1, 80)), Some(vec![be(9)]));
        assert_eq!(t.maps().backends.len(), 1);
        assert_eq!(t.maps().slots.len(), 1);
    }

    #[test]
    fn an_unchanged_upsert_writes_nothing() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        let writes = t.maps().writes;
        assert_eq!(
            t.upsert(sp(1, 80), &[be(2), be(1)]).unwrap(),
            Change::Unchanged
        );
        assert_eq!(t.maps().writes, writes);
    }

    #[test]
    fn changing_one_service_touches_only_its_own_entries() {
        let mut t = table();
        for i in 1..=20 {
            t.upsert(sp(i, 80), &[be(1), be(2), be(3)]).unwrap();
        }
        let before = t.maps().writes;
        let others: Vec<(SlotKey, MaglevChunk)> = t
            .maps()
            .maglev
            .iter()
            .filter(|(k, _)| k.service_id != t.service_id(&sp(7, 80)).unwrap())
            .map(|(k, v)| (*k, *v))
            .collect();
        // One backend added at the end: one backend, one slot, the count (with the new table's
        // generation), and the table: its chunks written under the other generation, the old
        // ones deleted.
        t.upsert(sp(7, 80), &[be(1), be(2), be(3), be(4)]).unwrap();
        let chunks = maglev_chunks(LIMITS.maglev_size) as usize;
        assert_eq!(t.maps().writes - before, 3 + 2 * chunks);
        for (k, v) in others {
            assert_eq!(
                t.maps().maglev.get(&k),
                Some(&v),
                "another service's table changed"
            );
        }
        assert_eq!(t.maps().dead_maglev_chunks(), 0);
    }

    #[test]
    fn a_kept_backend_keeps_its_id_and_a_removed_one_is_never_reused_at_once() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        let ids_before = ids(&t, &sp(1, 80));
        t.upsert(sp(1, 80), &[be(1), be(3)]).unwrap();
        let after = ids(&t, &sp(1, 80));
        assert_eq!(after[&be(1)], ids_before[&be(1)]);
        assert!(!ids_before.values().any(|id| *id == after[&be(3)]));
        // Same address back again: a new ID, so flows pinned to the old one are re-balanced.
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        assert_ne!(ids(&t, &sp(1, 80))[&be(2)], ids_before[&be(2)]);
    }

    #[test]
    fn backend_ids_skip_those_in_use_after_the_counter_wraps() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        let in_use: BTreeSet<u32> = ids(&t, &sp(1, 80)).into_values().collect();
        t.next_backend_id = u32::MAX;
        t.upsert(sp(2, 80), &[be(3), be(4), be(5)]).unwrap();
        let fresh: BTreeSet<u32> = ids(&t, &sp(2, 80)).into_values().collect();
        assert!(fresh.contains(&u32::MAX), "{fresh:?}");
        assert!(fresh.is_disjoint(&in_use), "{fresh:?} reuses {in_use:?}");
        assert!(!fresh.contains(&0));
    }

    #[test]
    fn vip_marker_lives_as_long_as_any_port_of_the_vip() {
        let mut t = table();
        let marker = vip_marker_key(sp(1, 80).vip);
        t.upsert(sp(1, 80), &[be(1)]).unwrap();
        t.upsert(sp(1, 443), &[be(1)]).unwrap();
        t.delete(&sp(1, 80)).unwrap();
        assert!(t.maps().services.contains_key(&marker));
        t.delete(&sp(1, 443)).unwrap();
        assert!(!t.maps().services.contains_key(&marker));
        assert!(t.maps().services.is_empty() && t.maps().slots.is_empty());
        assert!(t.maps().backends.is_empty());
    }

    #[test]
    fn deleted_ids_wait_in_quarantine_until_conntrack_is_purged() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1)]).unwrap();
        let id = t.service_id(&sp(1, 80)).unwrap();
        t.delete(&sp(1, 80)).unwrap();
        assert_eq!(t.quarantined(), &[id]);
        t.upsert(sp(2, 80), &[be(1)]).unwrap();
        assert_ne!(t.service_id(&sp(2, 80)), Some(id));
        t.release_quarantined();
        t.upsert(sp(3, 80), &[be(1)]).unwrap();
        assert_eq!(t.service_id(&sp(3, 80)), Some(id));
    }

    #[test]
    fn full_maps_refuse_the_change_and_leave_everything_as_it_was() {
        let mut t = ServiceTable::adopt(
            CheckingMaps::default(),
            Limits {
                backends: 3,
                ..LIMITS
            },
        )
        .unwrap();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        let writes = t.maps().writes;
        let err = t.upsert(sp(2, 80), &[be(1), be(2)]).unwrap_err();
        assert!(err.to_string().contains("BACKENDS"), "{err}");
        assert_eq!(t.maps().writes, writes);
        assert_eq!(served(t.maps(), &sp(2, 80)), None);
    }

    #[test]
    fn a_write_failing_halfway_leaves_consistent_maps_and_a_table_that_matches_them() {
        // Fail each write position of an update in turn; every intermediate state is checked
        // by CheckingMaps, and a retry afterwards converges.
        for fail_at in 0..8 {
            let mut t = table();
            t.upsert(sp(1, 80), &[be(1), be(2), be(3)]).unwrap();
            let base = t.maps().writes;
            t.maps.fail_at = Some(base + fail_at);
            let _ = t.upsert(sp(1, 80), &[be(3), be(4)]);
            t.maps.fail_at = None;
            t.upsert(sp(1, 80), &[be(3), be(4)]).unwrap();
            assert_eq!(
                served(t.maps(), &sp(1, 80)),
                Some(vec![be(3), be(4)]),
                "fail_at {fail_at}"
            );
            assert_eq!(t.maps().backends.len(), 2, "fail_at {fail_at}");
        }
    }

    /// `sp(1, 80)` with NodePort 30080 on its own entry (`own`) or on the ClusterIP's.
    fn node_port_split(own: bool) -> BTreeMap<ServicePort, Backends> {
        let np = ServicePort::node_port_entry(30080, Protocol::Tcp);
        if own {
            BTreeMap::from([
                (sp(1, 80), Backends::all_active(vec![be(1), be(2)])),
                (
                    np,
                    Backends::all_active(vec![be(1)]).with_node_port(Some(30080)),
                ),
            ])
        } else {
            BTreeMap::from([(
                sp(1, 80),
                Backends::all_active(vec![be(1), be(2)]).with_node_port(Some(30080)),
            )])
        }
    }

    /// Which service entry the datapath's NodePort 30080/TCP names, and what it serves.
    fn node_port_served(maps: &CheckingMaps) -> Option<(ServicePort, Option<Vec<SocketAddrV4>>)> {
        let skey = maps.node_ports.get(&node_port_key(30080, Protocol::Tcp))?;
        let owner = ServicePort::from_key(skey)?;
        Some((owner, served(maps, &owner)))
    }

    #[test]
    fn a_node_port_moves_between_its_service_port_and_its_own_entry_without_a_dangling_reference() {
        // Each direction, failing each write in turn: CheckingMaps checks every intermediate
        // state (a NodePort never names a missing entry), and a retry converges.
        let np = ServicePort::node_port_entry(30080, Protocol::Tcp);
        for to_own in [true, false] {
            for fail_at in 0..12 {
                let mut t = table();
                let report = t.sync_with(&node_port_split(!to_own));
                assert!(report.failed.is_empty(), "{:?}", report.failed);
                let base = t.maps().writes;
                t.maps.fail_at = Some(base + fail_at);
                let _ = t.sync_with(&node_port_split(to_own));
                t.maps.fail_at = None;
                let report = t.sync_with(&node_port_split(to_own));
                assert!(report.failed.is_empty(), "{:?}", report.failed);
                let want = if to_own {
                    (np, Some(vec![be(1)]))
                } else {
                    (sp(1, 80), Some(vec![be(1), be(2)]))
                };
                assert_eq!(
                    node_port_served(t.maps()),
                    Some(want),
                    "to_own {to_own} fail_at {fail_at}"
                );
                assert_eq!(
                    served(t.maps(), &sp(1, 80)),
                    Some(vec![be(1), be(2)]),
                    "to_own {to_own} fail_at {fail_at}"
                );
                assert_eq!(t.service_id(&np).is_some(), to_own);
                // Read back after a restart, the same.
                let t = ServiceTable::adopt(t.maps, LIMITS).unwrap();
                assert_eq!(
                    t.node_port(&(if to_own { np } else { sp(1, 80) })),
                    Some(30080)
                );
            }
        }
    }

    #[test]
    fn a_node_ports_own_entry_must_serve_that_node_port() {
        let mut t = table();
        let np = ServicePort::node_port_entry(30080, Protocol::Tcp);
        for node_port in [None, Some(30081)] {
            assert!(matches!(
                t.upsert_with(
                    np,
                    &Backends::all_active(vec![be(1)]).with_node_port(node_port)
                ),
                Err(Error::InvalidService { .. })
            ));
        }
        assert_eq!(t.maps().writes, 0);
    }

    #[test]
    fn adopting_pinned_state_recovers_services_and_cleans_garbage() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        t.upsert(sp(2, 53), &[be(3)]).unwrap();
        let mut maps = t.maps;
        // Garbage a crashed writer could leave: an orphan backend and an unreachable slot.
        maps.backends.insert(999, backend_value(be(9), 77, false));
        maps.slots.insert(
            SlotKey {
                service_id: 77,
                slot: 0,
            },
            999,
        );
        let mut t = ServiceTable::adopt(maps, LIMITS).unwrap();
        assert_eq!(t.backends(&sp(1, 80)), Some(vec![be(1), be(2)]));
        assert_eq!(t.backends(&sp(2, 53)), Some(vec![be(3)]));
        assert!(!t.maps().backends.contains_key(&999));
        assert_eq!(t.maps().slots.len(), 3);
        // New backend IDs continue above the adopted ones.
        t.upsert(sp(2, 53), &[be(3), be(4)]).unwrap();
        assert!(ids(&t, &sp(2, 53))[&be(4)] > 999);
        assert_eq!(
            t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap(),
            Change::Unchanged
        );
    }

    #[test]
    fn a_slot_lost_from_adopted_maps_is_rewritten_by_the_next_upsert() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        let id = t.service_id(&sp(1, 80)).unwrap();
        let mut maps = t.maps;
        // Delete a reachable slot behind the table's back (the checking fake would refuse a
        // write that does this, so edit its storage directly).
        maps.slots.remove(&SlotKey {
            service_id: id,
            slot: 1,
        });
        let mut t = ServiceTable::adopt(maps, LIMITS).unwrap();
        assert_eq!(
            t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap(),
            Change::Updated
        );
        assert_eq!(served(t.maps(), &sp(1, 80)), Some(vec![be(1), be(2)]));
    }

    #[test]
    fn sync_converges_to_the_desired_set_and_reports_each_kind_of_change() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1)]).unwrap();
        t.upsert(sp(2, 80), &[be(1)]).unwrap();
        let desired: BTreeMap<_, _> = [(sp(2, 80), vec![be(1), be(2)]), (sp(3, 80), vec![be(3)])]
            .into_iter()
            .collect();
        let r = t.sync(&desired);
        assert_eq!((r.created, r.updated, r.deleted, r.unchanged), (1, 1, 1, 0));
        assert!(r.failed.is_empty());
        assert_eq!(served(t.maps(), &sp(1, 80)), None);
        assert_eq!(served(t.maps(), &sp(2, 80)), Some(vec![be(1), be(2)]));
        assert_eq!(served(t.maps(), &sp(3, 80)), Some(vec![be(3)]));
    }

    #[test]
    fn invalid_input_is_refused_before_anything_is_written() {
        let mut t = table();
        let bad = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 1), 0);
        let err = t.upsert(sp(1, 80), &[be(1), bad]).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
        assert_eq!(t.maps().writes, 0);
    }

    #[test]
    fn a_draining_backend_stays_in_backends_but_leaves_the_slots_and_keeps_its_id() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2), be(3)]).unwrap();
        let before = ids(&t, &sp(1, 80));
        assert_eq!(
            t.upsert_with(sp(1, 80), &backends(&[be(1), be(3)], &[be(2)]))
                .unwrap(),
            Change::Updated
        );
        assert_eq!(served(t.maps(), &sp(1, 80)), Some(vec![be(1), be(3)]));
        assert_eq!(drained(t.maps(), &sp(1, 80)), vec![be(2)]);
        assert_eq!(ids(&t, &sp(1, 80)), before);
        assert_eq!(t.backends(&sp(1, 80)), Some(vec![be(1), be(3)]));
        assert_eq!(t.draining(&sp(1, 80)), Some(vec![be(2)]));

        // Back to active: the same ID again, so its flows never noticed.
        t.upsert_with(sp(1, 80), &backends(&[be(1), be(2), be(3)], &[]))
            .unwrap();
        assert_eq!(
            served(t.maps(), &sp(1, 80)),
            Some(vec![be(1), be(2), be(3)])
        );
        assert!(drained(t.maps(), &sp(1, 80)).is_empty());
        assert_eq!(ids(&t, &sp(1, 80)), before);
    }

    #[test]
    fn with_only_draining_backends_the_service_counts_no_slot_but_keeps_them() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        t.upsert_with(sp(1, 80), &backends(&[], &[be(1), be(2)]))
            .unwrap();
        assert_eq!(served(t.maps(), &sp(1, 80)), Some(vec![]));
        assert_eq!(drained(t.maps(), &sp(1, 80)), vec![be(1), be(2)]);
        assert!(t.maps().slots.is_empty());
        // Removing them entirely deletes them.
        t.upsert_with(sp(1, 80), &backends(&[], &[])).unwrap();
        assert!(t.maps().backends.is_empty());
    }

    #[test]
    fn removing_a_draining_backend_deletes_it_and_a_later_return_gets_a_new_id() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        let old_id = ids(&t, &sp(1, 80))[&be(2)];
        t.upsert_with(sp(1, 80), &backends(&[be(1)], &[be(2)]))
            .unwrap();
        t.upsert_with(sp(1, 80), &backends(&[be(1)], &[])).unwrap();
        assert!(!t.maps().backends.contains_key(&old_id));
        assert_eq!(t.maps().backends.len(), 1);
        t.upsert_with(sp(1, 80), &backends(&[be(1), be(2)], &[]))
            .unwrap();
        assert_ne!(ids(&t, &sp(1, 80))[&be(2)], old_id);
    }

    #[test]
    fn a_draining_address_never_served_is_not_written() {
        let mut t = table();
        t.upsert_with(sp(1, 80), &backends(&[be(1)], &[be(2)]))
            .unwrap();
        assert_eq!(t.maps().backends.len(), 1);
        assert_eq!(t.draining(&sp(1, 80)), Some(vec![]));
        // And it is not a change when asked again.
        let writes = t.maps().writes;
        assert_eq!(
            t.upsert_with(sp(1, 80), &backends(&[be(1)], &[be(2)]))
                .unwrap(),
            Change::Unchanged
        );
        assert_eq!(t.maps().writes, writes);
    }

    #[test]
    fn an_address_both_active_and_draining_is_active() {
        let mut t = table();
        t.upsert_with(sp(1, 80), &backends(&[be(1), be(2)], &[be(2)]))
            .unwrap();
        assert_eq!(served(t.maps(), &sp(1, 80)), Some(vec![be(1), be(2)]));
        assert!(drained(t.maps(), &sp(1, 80)).is_empty());
    }

    #[test]
    fn draining_one_backend_writes_only_the_slots_it_frees_and_its_flag() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2), be(3)]).unwrap();
        let before = t.maps().writes;
        // Draining the last one: the count, then its flag (its slot is unreachable and dropped).
        t.upsert_with(sp(1, 80), &backends(&[be(1), be(2)], &[be(3)]))
            .unwrap();
        // And the table, replaced.
        let chunks = maglev_chunks(LIMITS.maglev_size) as usize;
        assert_eq!(t.maps().writes - before, 3 + 2 * chunks);
        let before = t.maps().writes;
        assert_eq!(
            t.upsert_with(sp(1, 80), &backends(&[be(2), be(1)], &[be(3)]))
                .unwrap(),
            Change::Unchanged
        );
        assert_eq!(t.maps().writes, before);
    }

    #[test]
    fn a_write_failing_halfway_through_a_drain_leaves_consistent_maps_and_converges() {
        // Every intermediate state is checked by CheckingMaps (no slot names a draining
        // backend); a retry afterwards converges.
        for fail_at in 0..8 {
            let mut t = table();
            t.upsert(sp(1, 80), &[be(1), be(2), be(3)]).unwrap();
            t.upsert_with(sp(1, 80), &backends(&[be(1), be(2)], &[be(3)]))
                .unwrap();
            let want = backends(&[be(3), be(4)], &[be(1)]);
            let base = t.maps().writes;
            t.maps.fail_at = Some(base + fail_at);
            let _ = t.upsert_with(sp(1, 80), &want);
            t.maps.fail_at = None;
            t.upsert_with(sp(1, 80), &want).unwrap();
            assert_eq!(
                served(t.maps(), &sp(1, 80)),
                Some(vec![be(3), be(4)]),
                "fail_at {fail_at}"
            );
            assert_eq!(
                drained(t.maps(), &sp(1, 80)),
                vec![be(1)],
                "fail_at {fail_at}"
            );
            assert_eq!(t.maps().backends.len(), 3, "fail_at {fail_at}");
        }
    }

    #[test]
    fn adopting_pinned_state_recovers_which_backends_drain() {
        let mut t = table();
        t.upsert_with(sp(1, 80), &backends(&[be(1), be(2)], &[]))
            .unwrap();
        t.upsert_with(sp(1, 80), &backends(&[be(1)], &[be(2)]))
            .unwrap();
        let before = ids(&t, &sp(1, 80));
        let mut t = ServiceTable::adopt(t.maps, LIMITS).unwrap();
        assert_eq!(t.backends(&sp(1, 80)), Some(vec![be(1)]));
        assert_eq!(t.draining(&sp(1, 80)), Some(vec![be(2)]));
        assert_eq!(ids(&t, &sp(1, 80)), before);
        assert_eq!(
            t.upsert_with(sp(1, 80), &backends(&[be(1)], &[be(2)]))
                .unwrap(),
            Change::Unchanged
        );
    }

    #[test]
    fn sync_with_drains_and_removes_as_asked() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        t.upsert(sp(2, 80), &[be(3)]).unwrap();
        let desired: BTreeMap<_, _> = [
            (sp(1, 80), backends(&[be(1)], &[be(2)])),
            (sp(3, 80), backends(&[be(4)], &[])),
        ]
        .into_iter()
        .collect();
        let r = t.sync_with(&desired);
        assert_eq!((r.created, r.updated, r.deleted, r.unchanged), (1, 1, 1, 0));
        assert_eq!(served(t.maps(), &sp(1, 80)), Some(vec![be(1)]));
        assert_eq!(drained(t.maps(), &sp(1, 80)), vec![be(2)]);
        assert_eq!(served(t.maps(), &sp(2, 80)), None);
        let r = t.sync_with(&desired);
        assert_eq!(r.unchanged, 2);
        // `sync` (all active) makes the draining backend active again.
        let plain: BTreeMap<_, _> = [(sp(1, 80), vec![be(1), be(2)]), (sp(3, 80), vec![be(4)])]
            .into_iter()
            .collect();
        let r = t.sync(&plain);
        assert_eq!((r.updated, r.unchanged), (1, 1));
        assert_eq!(served(t.maps(), &sp(1, 80)), Some(vec![be(1), be(2)]));
    }

    #[test]
    fn an_invalid_draining_backend_is_refused_before_anything_is_written() {
        let mut t = table();
        let bad = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 1), 0);
        let err = t
            .upsert_with(sp(1, 80), &backends(&[be(1)], &[bad]))
            .unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
        assert_eq!(t.maps().writes, 0);
    }

    fn client_ip(secs: u64) -> SessionAffinity {
        SessionAffinity::ClientIp {
            timeout: Duration::from_secs(secs),
        }
    }

    #[test]
    fn session_affinity_is_written_with_the_service_entry_and_read_back() {
        let mut t = table();
        let b = backends(&[be(1), be(2)], &[]).with_affinity(client_ip(2));
        t.upsert_with(sp(1, 80), &b).unwrap();
        let v = t.maps().services[&sp(1, 80).key()];
        assert_ne!(v.flags & SVC_FLAG_AFFINITY_CLIENT_IP, 0);
        assert_eq!(v.maglev_size(), LIMITS.maglev_size);
        assert_eq!(v.affinity_timeout_secs, 2);
        assert_eq!(t.affinity(&sp(1, 80)), Some(client_ip(2)));
        let writes = t.maps().writes;
        assert_eq!(t.upsert_with(sp(1, 80), &b).unwrap(), Change::Unchanged);
        assert_eq!(t.maps().writes, writes);
        // Adopted maps remember it.
        let mut t = ServiceTable::adopt(t.maps, LIMITS).unwrap();
        assert_eq!(t.affinity(&sp(1, 80)), Some(client_ip(2)));
        assert_eq!(t.upsert_with(sp(1, 80), &b).unwrap(), Change::Unchanged);
    }

    #[test]
    fn changing_only_the_affinity_rewrites_only_the_service_entry() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        let before = t.maps().writes;
        let b = backends(&[be(1), be(2)], &[]).with_affinity(SessionAffinity::client_ip());
        assert_eq!(t.upsert_with(sp(1, 80), &b).unwrap(), Change::Updated);
        assert_eq!(t.maps().writes - before, 1);
        assert_eq!(
            t.maps().services[&sp(1, 80).key()].affinity_timeout_secs,
            10_800
        );
        // Back to none: the flag goes.
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        let flags = t.maps().services[&sp(1, 80).key()].flags;
        assert_eq!(flags & SVC_FLAG_AFFINITY_CLIENT_IP, 0);
        assert_eq!(t.affinity(&sp(1, 80)), Some(SessionAffinity::None));
    }

    #[test]
    fn affinity_timeouts_outside_what_kubernetes_accepts_are_refused() {
        let mut t = table();
        for bad in [
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_secs(86_401),
        ] {
            let b =
                backends(&[be(1)], &[]).with_affinity(SessionAffinity::ClientIp { timeout: bad });
            let err = t.upsert_with(sp(1, 80), &b).unwrap_err();
            assert!(err.to_string().contains("timeout"), "{err}");
        }
        assert_eq!(t.maps().writes, 0);
        let b = backends(&[be(1)], &[]).with_affinity(client_ip(86_400));
        t.upsert_with(sp(1, 80), &b).unwrap();
    }

    fn np(port: u16) -> NodePortKey {
        node_port_key(port, Protocol::Tcp)
    }

    #[test]
    fn a_node_port_names_its_service_entry_and_goes_before_it() {
        let mut t = table();
        let b = backends(&[be(1)], &[]).with_node_port(Some(30080));
        t.upsert_with(sp(1, 80), &b).unwrap();
        assert_eq!(t.maps().node_ports[&np(30080)], sp(1, 80).key());
        assert_eq!(t.node_port(&sp(1, 80)), Some(30080));
        let writes = t.maps().writes;
        assert_eq!(t.upsert_with(sp(1, 80), &b).unwrap(), Change::Unchanged);
        assert_eq!(t.maps().writes, writes);
        // Moved to another port: one write each.
        let moved = backends(&[be(1)], &[]).with_node_port(Some(30081));
        t.upsert_with(sp(1, 80), &moved).unwrap();
        assert_eq!(t.maps().writes - writes, 2);
        assert_eq!(
            t.maps().node_ports.keys().copied().collect::<Vec<_>>(),
            vec![np(30081)]
        );
        // Deleting the service removes its NodePort first (CheckingMaps checks the order).
        t.delete(&sp(1, 80)).unwrap();
        assert!(t.maps().node_ports.is_empty());
    }

    #[test]
    fn a_node_port_taken_by_another_service_or_in_the_snat_ports_is_refused() {
        let mut t = table();
        t.upsert_with(
            sp(1, 80),
            &backends(&[be(1)], &[]).with_node_port(Some(30080)),
        )
        .unwrap();
        let writes = t.maps().writes;
        let err = t
            .upsert_with(
                sp(2, 80),
                &backends(&[be(2)], &[]).with_node_port(Some(30080)),
            )
            .unwrap_err();
        assert!(err.to_string().contains("already used by"), "{err}");
        for bad in [0, 61_000, 65_535] {
            let err = t
                .upsert_with(
                    sp(2, 80),
                    &backends(&[be(2)], &[]).with_node_port(Some(bad)),
                )
                .unwrap_err();
            assert!(err.to_string().contains("node port"), "{err}");
        }
        assert_eq!(t.maps().writes, writes);
        // The same number for another protocol is another NodePort.
        let udp = ServicePort::new(Ipv4Addr::new(10, 96, 0, 2), 53, Protocol::Udp);
        t.upsert_with(udp, &backends(&[be(2)], &[]).with_node_port(Some(30080)))
            .unwrap();
        assert_eq!(t.maps().node_ports.len(), 2);
    }

    #[test]
    fn node_ports_beyond_the_map_capacity_are_refused_before_any_write() {
        let mut t = table();
        for i in 0..4u8 {
            t.upsert_with(
                sp(i + 1, 80),
                &backends(&[be(1)], &[]).with_node_port(Some(30_000 + u16::from(i))),
            )
            .unwrap();
        }
        let writes = t.maps().writes;
        let err = t
            .upsert_with(
                sp(9, 80),
                &backends(&[be(1)], &[]).with_node_port(Some(30_100)),
            )
            .unwrap_err();
        assert!(err.to_string().contains("NODEPORTS"), "{err}");
        assert_eq!(t.maps().writes, writes);
    }

    #[test]
    fn adopting_pinned_state_recovers_node_ports_and_drops_orphans() {
        let mut t = table();
        t.upsert_with(
            sp(1, 80),
            &backends(&[be(1)], &[]).with_node_port(Some(30080)),
        )
        .unwrap();
        let mut maps = t.maps;
        // An orphan a crashed writer could leave: a NodePort of a service that is gone.
        maps.node_ports.insert(np(30999), sp(7, 80).key());
        let mut t = ServiceTable::adopt(maps, LIMITS).unwrap();
        assert_eq!(t.node_port(&sp(1, 80)), Some(30080));
        assert!(!t.maps().node_ports.contains_key(&np(30999)));
        assert_eq!(
            t.upsert_with(
                sp(1, 80),
                &backends(&[be(1)], &[]).with_node_port(Some(30080))
            )
            .unwrap(),
            Change::Unchanged
        );
        // Still owned after adoption: another service cannot take it.
        assert!(
            t.upsert_with(
                sp(2, 80),
                &backends(&[be(1)], &[]).with_node_port(Some(30080))
            )
            .is_err()
        );
    }

    #[test]
    fn sync_with_removes_the_node_port_of_a_service_that_is_gone() {
        let mut t = table();
        let desired: BTreeMap<_, _> = [(
            sp(1, 80),
            backends(&[be(1)], &[]).with_node_port(Some(30080)),
        )]
        .into_iter()
        .collect();
        t.sync_with(&desired);
        assert_eq!(t.maps().node_ports.len(), 1);
        t.sync_with(&BTreeMap::new());
        assert!(t.maps().node_ports.is_empty() && t.maps().services.is_empty());
    }

    /// The datapath's view of a service's Maglev table: the backend address of each slot of the
    /// live generation.
    fn live_table(maps: &CheckingMaps, s: &ServicePort) -> Vec<SocketAddrV4> {
        let v = maps.services[&s.key()];
        let size = v.maglev_size();
        (0..size)
            .map(|slot| {
                let chunk = maps.maglev[&maglev_key(v.id, v.maglev_gen(), slot / MAGLEV_CHUNK)];
                backend_addr(&maps.backends[&chunk.ids[(slot % MAGLEV_CHUNK) as usize]])
            })
            .collect()
    }

    fn moved(a: &[SocketAddrV4], b: &[SocketAddrV4]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn maglev_moves_a_fair_share_on_add_and_nothing_between_survivors_on_remove() {
        let mut t = table();
        let size = maglev::DEFAULT_TABLE_SIZE;
        let service = |active: &[SocketAddrV4]| {
            Backends::all_active(active.to_vec()).with_maglev_size(Some(size))
        };
        let ten: Vec<SocketAddrV4> = (1..=10).map(be).collect();
        t.upsert_with(sp(1, 80), &service(&ten)).unwrap();
        let before = live_table(t.maps(), &sp(1, 80));
        assert_eq!(before.len(), size as usize);
        // Balanced: every backend owns its share, within one slot.
        for b in &ten {
            let n = before.iter().filter(|x| *x == b).count();
            assert!(n.abs_diff(size as usize / 10) <= 1, "{b} owns {n}");
        }

        // One added: it takes its share (1/11), nothing else moves.
        let mut eleven = ten.clone();
        eleven.push(be(11));
        t.upsert_with(sp(1, 80), &service(&eleven)).unwrap();
        let after_add = live_table(t.maps(), &sp(1, 80));
        let moved_add = moved(&before, &after_add);
        assert!(
            moved_add <= size as usize / 11 + 1,
            "{moved_add} of {size} slots moved"
        );
        assert!(
            before
                .iter()
                .zip(&after_add)
                .all(|(x, y)| x == y || *y == be(11))
        );
        // A `hash % n` table would have moved most of them.
        let naive = |n: u32| (0..size).map(move |h| h % n);
        let naive_moved = naive(10).zip(naive(11)).filter(|(a, b)| a != b).count();
        assert!(naive_moved > size as usize * 8 / 10, "{naive_moved}");

        // One removed: only its slots move; no slot moves between survivors.
        let survivors: Vec<SocketAddrV4> = eleven.iter().copied().filter(|b| *b != be(4)).collect();
        t.upsert_with(sp(1, 80), &service(&survivors)).unwrap();
        let after_remove = live_table(t.maps(), &sp(1, 80));
        for (x, y) in after_add.iter().zip(&after_remove) {
            if *x != be(4) {
                assert_eq!(x, y, "a survivor's slot moved");
            }
        }
        assert!(!after_remove.contains(&be(4)));
        assert_eq!(t.maps().dead_maglev_chunks(), 0);

        // A restarted agent adopts the pinned table and keeps its history.
        let mut t = ServiceTable::adopt(t.maps, LIMITS).unwrap();
        assert_eq!(
            t.upsert_with(sp(1, 80), &service(&survivors)).unwrap(),
            Change::Unchanged
        );
        let fewer: Vec<SocketAddrV4> = survivors.iter().copied().filter(|b| *b != be(7)).collect();
        t.upsert_with(sp(1, 80), &service(&fewer)).unwrap();
        let after = live_table(t.maps(), &sp(1, 80));
        for (x, y) in after_remove.iter().zip(&after) {
            if *x != be(7) {
                assert_eq!(x, y, "a survivor's slot moved after the restart");
            }
        }
    }

    #[test]
    fn each_node_builds_the_same_table_for_the_same_backends() {
        let ids_differ = {
            let mut t = table();
            // Another agent's IDs: it saw other services first.
            t.upsert(sp(9, 80), &[be(20), be(21)]).unwrap();
            t.upsert(sp(1, 80), &[be(3), be(1), be(2)]).unwrap();
            live_table(t.maps(), &sp(1, 80))
        };
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2), be(3)]).unwrap();
        assert_eq!(live_table(t.maps(), &sp(1, 80)), ids_differ);
    }

    #[test]
    fn a_maglev_size_that_is_not_a_prime_in_range_is_refused_before_any_write() {
        let mut t = table();
        for size in [1000, 13, 262_147] {
            let b = Backends::all_active(vec![be(1)]).with_maglev_size(Some(size));
            let err = t.upsert_with(sp(1, 80), &b).unwrap_err();
            assert!(err.to_string().contains(&size.to_string()), "{err}");
        }
        assert_eq!(t.maps().writes, 0);
    }

    #[test]
    fn a_table_that_does_not_fit_beside_the_live_one_is_refused_before_any_write() {
        let mut limits = LIMITS;
        // Two tables of the smallest size.
        let one = maglev_chunks(maglev::MIN_TABLE_SIZE);
        limits.maglev_chunks = 2 * one;
        let mut t = ServiceTable::adopt(CheckingMaps::default(), limits).unwrap();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        // While there is room, a change writes the new table beside the old one.
        t.upsert(sp(1, 80), &[be(1), be(2), be(3)]).unwrap();
        t.upsert(sp(2, 80), &[be(4)]).unwrap();
        // Full: no room for a new table beside the live one, so nothing is written and the
        // live table stays whole.
        let before = live_table(t.maps(), &sp(1, 80));
        let writes = t.maps().writes;
        let err = t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap_err();
        assert!(err.to_string().contains("MAGLEV"), "{err}");
        assert_eq!(t.maps().writes, writes);
        assert_eq!(live_table(t.maps(), &sp(1, 80)), before);
        // Deleting a service frees its table.
        t.delete(&sp(2, 80)).unwrap();
        assert_eq!(t.maps().maglev.len(), one as usize);
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
    }

    #[test]
    fn adopting_pinned_state_drops_maglev_chunks_nothing_uses_and_rewrites_a_broken_table() {
        let mut t = table();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        t.upsert(sp(2, 80), &[be(3)]).unwrap();
        let id1 = t.service_id(&sp(1, 80)).unwrap();
        let id2 = t.service_id(&sp(2, 80)).unwrap();
        let mut maps = t.maps;
        let v1 = maps.services[&sp(1, 80).key()];
        // Garbage: the other generation's chunk, a chunk past the table, a gone service's.
        let junk = MaglevChunk {
            ids: [1; MAGLEV_CHUNK as usize],
        };
        for key in [
            maglev_key(id1, !v1.maglev_gen(), 0),
            maglev_key(id1, v1.maglev_gen(), 99),
            maglev_key(77, false, 0),
        ] {
            maps.maglev.insert(key, junk);
        }
        // Service 2's live table lost a chunk (which the checking fake tolerates from now on:
        // the datapath would look the service up again and refuse the flow).
        let v2 = maps.services[&sp(2, 80).key()];
        maps.maglev.remove(&maglev_key(id2, v2.maglev_gen(), 0));
        maps.broken_tables.insert(id2);
        let mut t = ServiceTable::adopt(maps, LIMITS).unwrap();
        let chunks = maglev_chunks(LIMITS.maglev_size) as usize;
        assert_eq!(t.maps().maglev.len(), chunks + chunks - 1);
        assert_eq!(
            t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap(),
            Change::Unchanged
        );
        assert_eq!(t.upsert(sp(2, 80), &[be(3)]).unwrap(), Change::Updated);
        assert_eq!(t.maps().maglev.len(), 2 * chunks);
        assert!(live_table(t.maps(), &sp(2, 80)).iter().all(|b| *b == be(3)));
    }

    #[test]
    fn a_resync_reads_only_the_keys_of_tables_it_holds_and_adopting_reads_them_whole() {
        let mut t = table();
        for i in 1..=3 {
            t.upsert(sp(i, 80), &[be(1), be(2)]).unwrap();
        }
        let tables: Vec<Vec<SocketAddrV4>> =
            (1..=3).map(|i| live_table(t.maps(), &sp(i, 80))).collect();
        t.resync().unwrap();
        assert_eq!(t.maps().maglev_reads.get(), 0);
        let t = ServiceTable::adopt(t.maps, LIMITS).unwrap();
        let per_table = maglev_chunks(LIMITS.maglev_size) as usize;
        assert_eq!(t.maps().maglev_reads.get(), 3 * per_table);
        for (i, table) in (1..=3).zip(tables) {
            assert_eq!(live_table(t.maps(), &sp(i, 80)), table);
            assert_eq!(
                t.services[&sp(i, 80)].maglev.slots.len(),
                LIMITS.maglev_size as usize
            );
        }
    }

    #[test]
    fn more_backends_than_table_slots_are_refused_before_any_write() {
        let mut t = table();
        let many: Vec<SocketAddrV4> = (0..=LIMITS.maglev_size)
            .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, (i % 250) as u8), 8000 + i as u16))
            .collect();
        let err = t.upsert(sp(1, 80), &many).unwrap_err();
        assert!(
            err.to_string().contains("skiff.io/maglev-table-size"),
            "{err}"
        );
        assert_eq!(t.maps().writes, 0);
    }

    #[test]
    fn a_change_that_keeps_the_table_is_not_refused_for_its_room() {
        let mut limits = LIMITS;
        limits.maglev_chunks = maglev_chunks(maglev::MIN_TABLE_SIZE);
        let mut t = ServiceTable::adopt(CheckingMaps::default(), limits).unwrap();
        t.upsert(sp(1, 80), &[be(1), be(2)]).unwrap();
        // The map is full, but an affinity change writes no table.
        let b = backends(&[be(1), be(2)], &[]).with_affinity(SessionAffinity::client_ip());
        assert_eq!(t.upsert_with(sp(1, 80), &b).unwrap(), Change::Updated);
        // A backend change needs a new table beside the live one: refused.
        assert!(t.upsert(sp(1, 80), &[be(1)]).is_err());
    }
}
