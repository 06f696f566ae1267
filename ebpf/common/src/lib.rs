//! Types and constants shared by Skiff's eBPF programs and the agent that programs them.
//!
//! Every map key and value is a `#[repr(C)]`, `Copy` struct with explicit padding, so the byte
//! layout is the same on both sides. Addresses and ports are kept in network byte order, exactly
//! as they appear in packets, so the datapath never converts them; the agent converts at its edge.
#![no_std]

pub mod csum;
pub mod hash;

/// Map names, as they appear in the object and under the pin directory.
pub mod map_names {
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const SLOTS: &str = "SLOTS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const SVC_COUNTERS: &str = "SVC_COUNTERS";
    pub const DROPS: &str = "DROPS";
    pub const CONFIG: &str = "CONFIG";
    pub const AFFINITY: &str = "AFFINITY";
    pub const NODEPORTS: &str = "NODEPORTS";
    pub const POD_SOURCES: &str = "POD_SOURCES";
    pub const CT_ESTABLISHED: &str = "CT_ESTABLISHED";
    pub const CT_EVENTS: &str = "CT_EVENTS";
    pub const CT_GC: &str = "CT_GC";
    pub const MAGLEV: &str = "MAGLEV";
    /// Every map the object defines, in the order the agent reports them.
    pub const ALL: [&str; 15] = [
        SERVICES,
        BACKENDS,
        SLOTS,
        MAGLEV,
        CT_ESTABLISHED,
        CONNTRACK,
        CT_EVENTS,
        CT_GC,
        FRAGMENTS,
        SVC_COUNTERS,
        DROPS,
        CONFIG,
        AFFINITY,
        NODEPORTS,
        POD_SOURCES,
    ];
}

/// Program names (the function names in the object).
pub mod program_names {
    /// tc ingress on a pod's host-side veth: packets the pod sends (Service DNAT).
    pub const FROM_POD: &str = "skiff_from_pod";
    /// tc egress on a pod's host-side veth: packets about to enter the pod (reverse NAT).
    pub const TO_POD: &str = "skiff_to_pod";
    /// tc ingress on the node's uplink: NodePort requests, and the replies of NodePort flows
    /// whose source was translated (backends on other nodes).
    pub const NODEPORT: &str = "skiff_nodeport";
    /// tc egress on the node's uplink: replies of NodePort flows to backends on this node.
    pub const NODEPORT_REPLY: &str = "skiff_np_reply";
    /// Attached nowhere: the agent runs it (`BPF_PROG_TEST_RUN`) to collect expired conntrack
    /// entries inside the kernel and count what the tables hold.
    pub const CT_GC: &str = "skiff_ct_gc";
}

/// Default capacities. The compiled-in map sizes are these; the agent may resize any of them at
/// load time (`aya::EbpfLoader::set_max_entries`).
pub mod capacity {
    /// Service IDs are dense indexes below this bound (they index the per-service counters).
    pub const SERVICES: u32 = 65_536;
    pub const BACKENDS: u32 = 262_144;
    pub const SLOTS: u32 = 262_144;
    /// Maglev lookup-table chunks (`MaglevChunk`, 496 slots each, 2 KiB of kernel memory with the
    /// hash table's element header): a service port with the default table size (16,381)
    /// takes 34, and twice that while its table is replaced. Not preallocated, so this bounds
    /// memory rather than reserving it: 524,288 chunks are about 15,000 service ports at the
    /// default size (1 GiB of kernel memory if all were used).
    pub const MAGLEV: u32 = 524_288;
    /// The short-lived conntrack table (an LRU): flows that have not completed their handshake
    /// (TCP) or exchange (UDP), and flows that have closed. Forward and reverse entries
    /// together: two per flow.
    pub const CONNTRACK: u32 = 262_144;
    /// The established conntrack table: never evicts, so it is sized by the agent from the
    /// node's memory (`CT_ESTABLISHED_BYTES_PER_ENTRY`); this is the compiled-in size.
    pub const CT_ESTABLISHED: u32 = 262_144;
    /// Entries of the per-CPU conntrack event counters (room for events added later).
    pub const CT_EVENTS: u32 = 16;
    pub const FRAGMENTS: u32 = 8_192;
    /// Session affinity entries: one per (client address, service port with ClientIP
    /// affinity) seen within the affinity timeout; the least recently used go first.
    pub const AFFINITY: u32 = 65_536;
    /// NodePort entries: (port, protocol) pairs; Kubernetes' default range has 2,768 ports.
    pub const NODEPORTS: u32 = 16_384;
    /// Pod interfaces with a source address (one per pod veth the node attaches; Kubernetes'
    /// default is 110 pods per node).
    pub const POD_SOURCES: u32 = 4_096;
    /// Entries of the per-reason drop counters: room for reasons added later, so that adding
    /// one does not change the pinned map's layout.
    pub const DROP_REASONS: u32 = 32;
}

/// Default conntrack lifetimes in nanoseconds; each is a global in the object that the agent
/// can override at load time.
pub mod timeouts {
    const SEC: u64 = 1_000_000_000;
    /// A TCP flow that has seen traffic both ways and no FIN or RST.
    pub const TCP_ESTABLISHED_NS: u64 = 6 * 3600 * SEC;
    /// A TCP flow that has not yet seen a reply, or has seen FIN/RST.
    pub const TCP_TRANSIENT_NS: u64 = 60 * SEC;
    pub const TCP_CLOSING_NS: u64 = 10 * SEC;
    pub const UDP_NS: u64 = 60 * SEC;
    /// Fragments of one datagram arrive together; the kernel's reassembly timeout is 30 s.
    pub const FRAGMENT_NS: u64 = 30 * SEC;
    /// `last_seen` is written at most this often per flow, so busy flows do not bounce a cache
    /// line on every packet.
    pub const REFRESH_INTERVAL_NS: u64 = SEC;
    /// How long the source port of a closed NodePort flow to another node's backend stays out
    /// of use: the backend may hold the connection in TIME_WAIT (60 s on Linux, 120 s on
    /// Windows), and a new client's SYN from the same node address and port would be answered
    /// for the old connection.
    pub const SNAT_TIME_WAIT_NS: u64 = 120 * SEC;
}

/// Names of the globals the agent may set at load time.
pub mod global_names {
    pub const TCP_ESTABLISHED_NS: &str = "CT_TCP_ESTABLISHED_NS";
    pub const TCP_TRANSIENT_NS: &str = "CT_TCP_TRANSIENT_NS";
    pub const TCP_CLOSING_NS: &str = "CT_TCP_CLOSING_NS";
    pub const UDP_NS: &str = "CT_UDP_NS";
    pub const HASH_SEED: &str = "HASH_SEED";
    /// The Service CIDR (address and mask, network byte order): TCP and UDP packets to an
    /// address in it that match no service port are refused.
    pub const SERVICE_CIDR_ADDR: &str = "SERVICE_CIDR_ADDR";
    pub const SERVICE_CIDR_MASK: &str = "SERVICE_CIDR_MASK";
    /// The hairpin address (network byte order): see `DEFAULT_HAIRPIN_ADDR`.
    pub const HAIRPIN_ADDR: &str = "HAIRPIN_ADDR";
    /// The node's address (network byte order): NodePorts are served on it, and it is the
    /// source of NodePort flows to backends on other nodes. 0 turns NodePorts off.
    pub const NODE_IP: &str = "NODE_IP";
    /// The source ports (host order, inclusive) NodePort flows to other nodes' backends get.
    pub const SNAT_PORT_MIN: &str = "SNAT_PORT_MIN";
    pub const SNAT_PORT_MAX: &str = "SNAT_PORT_MAX";
    /// How long a NodePort source port stays out of use after its flow closed (ns).
    pub const SNAT_HOLD_NS: &str = "CT_SNAT_HOLD_NS";
}

/// The default source ports of NodePort flows to backends on other nodes: above Linux's
/// default ephemeral range (32768-60999), so they never take a port of the node's own
/// connections, and outside Kubernetes' NodePort range (30000-32767).
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (61_000, 65_535);

/// The cluster's default Service CIDR, 10.96.0.0/12.
pub const DEFAULT_SERVICE_CIDR: ([u8; 4], u8) = ([10, 96, 0, 0], 12);

/// The default hairpin address: the source a pod sees on a connection it made to a Service
/// whose chosen backend is the pod itself. The kernel drops a packet arriving with one of its
/// own addresses as source, so such a flow gets this source instead of the pod's own, and the
/// pod's replies, sent to it, are translated back. It must be an address no pod or node uses;
/// this one is in 169.254.0.0/24, which link-local autoconfiguration never assigns (RFC 3927).
pub const DEFAULT_HAIRPIN_ADDR: [u8; 4] = [169, 254, 0, 42];

/// An IPv4 address as the datapath stores it (network byte order in memory).
pub const fn raw_addr(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The octets of an address stored by the datapath.
pub const fn addr_octets(raw: u32) -> [u8; 4] {
    raw.to_ne_bytes()
}

/// A port as the datapath stores it (network byte order in memory).
pub const fn raw_port(port: u16) -> u16 {
    port.to_be()
}

/// The host-order port of a port stored by the datapath.
pub const fn port_from_raw(raw: u16) -> u16 {
    u16::from_be(raw)
}

/// A prefix length as a netmask stored by the datapath.
pub const fn raw_mask(prefix_len: u8) -> u32 {
    let host = if prefix_len == 0 {
        0
    } else if prefix_len >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - prefix_len as u32)
    };
    u32::from_ne_bytes(host.to_be_bytes())
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Lookup key of the services map: (virtual IP, port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Network byte order.
    pub addr: u32,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// `ServiceValue::flags`: this entry (port 0, protocol 0) only marks its address as a VIP, so
/// the datapath can tell, off the hot path, that a malformed or untranslatable packet was aimed
/// at a service (VIPs outside the Service CIDR included).
pub const SVC_FLAG_VIP_MARKER: u32 = 1 << 0;
/// `ServiceValue::flags`: Kubernetes' `sessionAffinity: ClientIP`. A new flow from a client
/// address goes to the backend the client's previous new flow to this service port went to, as
/// long as that backend is still active and that flow began at most `affinity_timeout_secs`
/// ago; otherwise the usual hash picks, and the pick is remembered (`AFFINITY`).
pub const SVC_FLAG_AFFINITY_CLIENT_IP: u32 = 1 << 1;

/// `ServiceValue::flags`: which of the service's two Maglev tables is live (`MAGLEV` keys with
/// `MAGLEV_GEN_BIT` set when this is). The agent writes a new table under the other generation
/// and then flips this bit in one write of the service entry, so the datapath never reads a
/// half-written table.
pub const SVC_FLAG_MAGLEV_GEN: u32 = 1 << 2;
/// `ServiceValue::flags` bits 8..32: the size M of the service's Maglev lookup table; 0 means
/// none (the datapath then picks slot `hash % slot_count` in `SLOTS`, as entries from before
/// Maglev do).
pub const SVC_MAGLEV_SIZE_SHIFT: u32 = 8;
/// The largest table size the flags can hold.
pub const MAGLEV_SIZE_MAX: u32 = u32::MAX >> SVC_MAGLEV_SIZE_SHIFT;
/// Slots per `MAGLEV` entry.
pub const MAGLEV_CHUNK: u32 = 496;
/// Set in a `MAGLEV` key's `slot` for the generation-1 table; the rest is the chunk index.
pub const MAGLEV_GEN_BIT: u32 = 1 << 31;

/// The `MAGLEV` key of chunk `chunk` of a service's table of generation `generation`.
#[inline(always)]
pub const fn maglev_key(service_id: u32, generation: bool, chunk: u32) -> SlotKey {
    SlotKey {
        service_id,
        slot: if generation {
            MAGLEV_GEN_BIT | chunk
        } else {
            chunk
        },
    }
}

/// 496 consecutive slots of a Maglev lookup table: the backend ID each names. 1,984 bytes, so
/// that with the hash table's element header an element fits the kernel allocator's 2 KiB
/// size class (512 slots would take a 4 KiB one), and one syscall writes a sizeable part of a
/// table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevChunk {
    pub ids: [u32; MAGLEV_CHUNK as usize],
}

/// What the datapath knows of one Service port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// Dense ID, `1..capacity::SERVICES`; indexes `SVC_COUNTERS` and keys `SLOTS`.
    pub id: u32,
    /// Number of slots `0..slot_count` in `SLOTS` for this service; 0 means "no backends",
    /// and clients are refused.
    pub slot_count: u32,
    /// `SVC_FLAG_*` bits.
    pub flags: u32,
    /// With `SVC_FLAG_AFFINITY_CLIENT_IP`: how long a client's affinity lasts after its last
    /// new flow, in seconds (Kubernetes' `sessionAffinityConfig.clientIP.timeoutSeconds`).
    pub affinity_timeout_secs: u32,
}

impl ServiceValue {
    /// The size of the service's Maglev table (0: none).
    #[inline(always)]
    pub const fn maglev_size(&self) -> u32 {
        self.flags >> SVC_MAGLEV_SIZE_SHIFT
    }

    /// Which generation of the service's Maglev table is live.
    #[inline(always)]
    pub const fn maglev_gen(&self) -> bool {
        self.flags & SVC_FLAG_MAGLEV_GEN != 0
    }
}

/// `flags` with the Maglev table size and live generation set.
pub const fn with_maglev(flags: u32, size: u32, generation: bool) -> u32 {
    let low = flags & ((1 << SVC_MAGLEV_SIZE_SHIFT) - 1) & !SVC_FLAG_MAGLEV_GEN;
    let gen_bit = if generation { SVC_FLAG_MAGLEV_GEN } else { 0 };
    low | gen_bit | (size << SVC_MAGLEV_SIZE_SHIFT)
}

/// Key of the session affinity map: which client, which service port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// The client's address, network byte order.
    pub client: u32,
    pub service_id: u32,
}

/// The backend a client's new flows to a service port stick to, and when the client last began
/// one (`bpf_ktime_get_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}

/// `BackendValue::flags`: the backend is draining (its pod is not ready or terminating). No
/// slot names it, so no new flow picks it, but the flows it already has keep it until it is
/// removed from `BACKENDS`.
pub const BACKEND_FLAG_DRAINING: u8 = 1 << 0;

/// One backend of one service, keyed by a backend ID that is never reused while the agent runs
/// (so a conntrack entry can tell that its backend is gone even if the address comes back).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendValue {
    /// Network byte order.
    pub addr: u32,
    /// Network byte order.
    pub port: u16,
    /// `BACKEND_FLAG_*` bits.
    pub flags: u8,
    pub _pad: u8,
    pub service_id: u32,
}

/// Key of the slots map: the service's slot `slot` names a backend ID.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub service_id: u32,
    pub slot: u32,
}

/// Key of the NodePort map: a port (network byte order) and protocol on the node's address.
/// The value is the `ServiceKey` of the Service port it serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodePortKey {
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// A conntrack key: the full 5-tuple of a packet as it is seen by the program that looks it up.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    /// A key from a 5-tuple (fields as they sit in the packet).
    #[inline(always)]
    pub const fn new(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> CtKey {
        CtKey {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            _pad: [0; 3],
        }
    }

    /// The key of the same flow seen in the other direction.
    #[inline(always)]
    pub fn reversed(&self) -> CtKey {
        CtKey::new(self.daddr, self.saddr, self.dport, self.sport, self.proto)
    }
}

/// The settings an instance was loaded with, recorded in the one-entry `CONFIG` map: a restarted
/// agent keeps the same flow-hash seed, and the operator command knows the timeouts. (The
/// programs read these values from their globals, not from this map.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathSettings {
    pub tcp_established_ns: u64,
    pub tcp_transient_ns: u64,
    pub tcp_closing_ns: u64,
    pub udp_ns: u64,
    pub hash_seed: u32,
    /// Network byte order.
    pub service_cidr_addr: u32,
    /// Network byte order.
    pub service_cidr_mask: u32,
    /// Network byte order.
    pub hairpin_addr: u32,
    /// Network byte order; 0 when NodePorts are off.
    pub node_ip: u32,
    /// Host order.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
}

/// Forward entry: keyed by client -> VIP, translates the destination to the backend.
pub const CT_FORWARD: u8 = 1;
/// Reverse entry: keyed by backend -> client, translates the source back to the VIP. For a
/// hairpin flow (the backend is the client itself) the key names the hairpin address as the
/// client, since that is where the backend's replies go.
pub const CT_REVERSE: u8 = 2;

/// `CtValue::tcp_flags` bits: what this flow has shown so far (kept the same in both entries).
pub const CT_SEEN_REPLY: u8 = 1 << 0;
/// The client sent a FIN.
pub const CT_SEEN_FIN_FWD: u8 = 1 << 1;
/// The backend sent a FIN.
pub const CT_SEEN_FIN_REV: u8 = 1 << 2;
pub const CT_SEEN_RST: u8 = 1 << 3;
/// The client spoke after the backend answered (the ACK of a TCP handshake, a UDP request
/// after a reply): netfilter's "assured". Only an assured TCP flow gets the established
/// lifetime; an answered handshake that goes no further keeps the transient one.
pub const CT_ASSURED: u8 = 1 << 4;
/// The established table was full when this flow (in the short-lived table) became assured;
/// it tries again at most once a second rather than on every packet.
pub const CT_PROMOTE_FAILED: u8 = 1 << 5;

/// Conntrack lifetimes (ns), as loaded from the object's globals or the agent's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    pub tcp_established: u64,
    pub tcp_transient: u64,
    pub tcp_closing: u64,
    pub udp: u64,
    /// How long a NodePort source port stays out of use after its flow closed.
    pub snat_hold: u64,
}

impl CtTimeouts {
    pub const DEFAULT: CtTimeouts = CtTimeouts {
        tcp_established: timeouts::TCP_ESTABLISHED_NS,
        tcp_transient: timeouts::TCP_TRANSIENT_NS,
        tcp_closing: timeouts::TCP_CLOSING_NS,
        udp: timeouts::UDP_NS,
        snat_hold: timeouts::SNAT_TIME_WAIT_NS,
    };

    /// How long an entry may stay idle: one rule for the datapath and the agent's collector.
    #[inline(always)]
    pub fn lifetime(&self, proto: u8, tcp_flags: u8) -> u64 {
        if proto != IPPROTO_TCP {
            self.udp
        } else if tcp_closed(tcp_flags) {
            self.tcp_closing
        } else if tcp_flags & (CT_SEEN_FIN_FWD | CT_SEEN_FIN_REV) != 0 {
            // Half-closed: idle that long, the other side is gone too (netfilter's CLOSE_WAIT
            // and FIN_WAIT are a minute or two).
            self.tcp_transient
        } else if tcp_flags & CT_ASSURED != 0 {
            self.tcp_established
        } else {
            // Not (yet) assured: a SYN, or a handshake answered but never completed.
            self.tcp_transient
        }
    }

    #[inline(always)]
    pub fn expired(&self, proto: u8, v: &CtValue, now_ns: u64) -> bool {
        now_ns.saturating_sub(v.last_seen_ns) > self.lifetime(proto, v.tcp_flags)
    }
}

/// A TCP flow is over once it saw a RST, or a FIN from each side.
#[inline(always)]
pub fn tcp_closed(flags: u8) -> bool {
    flags & CT_SEEN_RST != 0
        || flags & (CT_SEEN_FIN_FWD | CT_SEEN_FIN_REV) == (CT_SEEN_FIN_FWD | CT_SEEN_FIN_REV)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtValue {
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Forward: the backend's address; reverse: the service VIP. Network byte order.
    pub nat_addr: u32,
    /// Forward: the backend's port; reverse: the service port. Network byte order.
    pub nat_port: u16,
    /// `CT_FORWARD` or `CT_REVERSE`.
    pub kind: u8,
    /// `CT_SEEN_*` bits.
    pub tcp_flags: u8,
    pub service_id: u32,
    pub backend_id: u32,
    /// The other end's translation, for flows translated at both ends (NodePort flows to a
    /// backend on another node): forward, the new source (the node's address and the port
    /// allocated for the flow); reverse, the new destination (the client). 0 when only one end
    /// is translated. Network byte order.
    pub alt_addr: u32,
    pub alt_port: u16,
    pub _pad: u16,
}

/// Byte offset in `CtValue` of the aligned 64-bit word that holds `nat_addr`, `nat_port`,
/// `kind` and `tcp_flags`: the datapath sets `tcp_flags` bits with an atomic OR on this word
/// (the BPF target has 64-bit atomics only), so two CPUs marking a FIN and a RST of one flow at
/// once keep both.
pub const CT_FLAGS_WORD_OFFSET: usize = 16;

/// The `tcp_flags` bits `seen` placed where they sit in the word at `CT_FLAGS_WORD_OFFSET`
/// (read in the machine's byte order); ORing it in leaves the word's other bytes unchanged.
#[inline(always)]
pub const fn ct_flags_word_bits(seen: u8) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[core::mem::offset_of!(CtValue, tcp_flags) - CT_FLAGS_WORD_OFFSET] = seen;
    u64::from_ne_bytes(bytes)
}

/// The `tcp_flags` byte of a word read at `CT_FLAGS_WORD_OFFSET`.
#[inline(always)]
pub const fn ct_flags_from_word(word: u64) -> u8 {
    word.to_ne_bytes()[core::mem::offset_of!(CtValue, tcp_flags) - CT_FLAGS_WORD_OFFSET]
}

// The word is aligned and holds exactly nat_addr, nat_port, kind and tcp_flags.
const _: () = assert!(CT_FLAGS_WORD_OFFSET.is_multiple_of(8));
const _: () = assert!(core::mem::offset_of!(CtValue, nat_addr) == CT_FLAGS_WORD_OFFSET);
const _: () = assert!(core::mem::offset_of!(CtValue, service_id) == CT_FLAGS_WORD_OFFSET + 8);
const _: () = assert!(core::mem::offset_of!(CtValue, tcp_flags) == CT_FLAGS_WORD_OFFSET + 7);

/// Whether a reverse entry holds a NodePort flow's source port on the node (a flow to another
/// node's backend): such entries live in the established table from the moment the port is
/// taken, so that a port is never handed to two flows, and stay there after the flow closes,
/// until `timeouts::SNAT_TIME_WAIT_NS` have passed.
#[inline(always)]
pub fn holds_snat_port(v: &CtValue) -> bool {
    v.kind == CT_REVERSE && v.alt_addr != 0
}

/// Whether an entry holding a NodePort source port (`holds_snat_port`) may give it to a new
/// flow: its flow closed at least `SNAT_TIME_WAIT_NS` ago, or expired without closing.
#[inline(always)]
pub fn snat_port_free(t: &CtTimeouts, proto: u8, v: &CtValue, now_ns: u64) -> bool {
    let idle = now_ns.saturating_sub(v.last_seen_ns);
    if proto == IPPROTO_TCP && tcp_closed(v.tcp_flags) {
        idle > t.snat_hold.max(t.tcp_closing)
    } else {
        t.expired(proto, v, now_ns)
    }
}

/// What happened to conntrack entries, counted per CPU in `CT_EVENTS` (not drops: those are
/// in `DROPS`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtEvent {
    /// A flow completed its handshake (TCP) or exchange (UDP: a request after a reply) and
    /// moved to the established table, where nothing evicts it.
    Established = 0,
    /// The established table was full, so a flow that completed its handshake stayed in the
    /// short-lived table, where the LRU may evict it (the table's size should grow).
    EstablishedFull = 1,
    /// A flow closed (a FIN each way, or a RST) and moved back to the short-lived table.
    Closed = 2,
    /// One half of a flow was missing (the LRU evicted it while the other half lived) and was
    /// put back.
    HalfRestored = 3,
    /// A NodePort source port was taken over from a finished flow (closed long enough ago, or
    /// expired).
    SnatPortReused = 4,
}

impl CtEvent {
    pub const COUNT: u32 = 5;
    pub const ALL: [CtEvent; Self::COUNT as usize] = [
        CtEvent::Established,
        CtEvent::EstablishedFull,
        CtEvent::Closed,
        CtEvent::HalfRestored,
        CtEvent::SnatPortReused,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            CtEvent::Established => "established",
            CtEvent::EstablishedFull => "established_full",
            CtEvent::Closed => "closed",
            CtEvent::HalfRestored => "half_restored",
            CtEvent::SnatPortReused => "snat_port_reused",
        }
    }
}

const _: () = assert!(CtEvent::COUNT <= capacity::CT_EVENTS);

/// What one run of the conntrack collector (`skiff_ct_gc`) found, written to the one-entry
/// `CT_GC` map: entries per table after the run, by state, and how many it removed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct GcStats {
    /// The `bpf_ktime_get_ns` time the run started.
    pub started_ns: u64,
    /// Entries left in the established table, and of those: TCP established (no FIN or RST
    /// each way), TCP closing (NodePort source ports held through TIME_WAIT), UDP.
    pub established: u64,
    pub established_tcp: u64,
    pub established_tcp_closing: u64,
    pub established_udp: u64,
    /// Entries left in the short-lived table.
    pub transient: u64,
    /// Expired entries removed from each table by this run.
    pub removed_established: u64,
    pub removed_transient: u64,
}

/// Tracks IPv4 fragments of a translated datagram: only the first fragment carries ports, so the
/// later ones are translated by (source, destination, IP ID, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    /// `CT_FORWARD` (rewrite the destination) or `CT_REVERSE` (rewrite the source).
    pub dir: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragValue {
    pub created_ns: u64,
    /// Forward: new destination; reverse: new source. Network byte order.
    pub nat_addr: u32,
    pub service_id: u32,
    /// A NodePort flow translated at both ends: forward, the new source (the node); reverse,
    /// the new destination (the client). 0 when only one end is translated.
    pub alt_addr: u32,
    pub _pad: u32,
}

/// Per-service, per-CPU traffic counters. `packets` counts segments (a GSO aggregate counts as
/// the segments it carries); `bytes` counts IPv4 bytes as the datapath saw them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct ServiceCounters {
    /// Client -> service packets translated.
    pub packets: u64,
    pub bytes: u64,
    /// Backend -> client packets translated back.
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Flows that picked a backend (including flows re-balanced off a removed backend).
    pub new_flows: u64,
    /// Packets refused because the service had no backends.
    pub rejected: u64,
}

impl ServiceCounters {
    /// Sum of per-CPU values.
    pub fn add(&mut self, other: &ServiceCounters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.reply_packets += other.reply_packets;
        self.reply_bytes += other.reply_bytes;
        self.new_flows += other.new_flows;
        self.rejected += other.rejected;
    }
}

/// Why the datapath dropped (or refused) a packet. Indexes the per-CPU `DROPS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// An IPv4 packet whose header is truncated or inconsistent (the kernel would drop it too).
    MalformedIpv4 = 0,
    /// A packet to a service address whose TCP or UDP header is truncated or invalid.
    MalformedL4 = 1,
    /// The service has no backends: refused with ICMP port unreachable.
    NoBackend = 2,
    /// A TCP or UDP packet to an address in the Service CIDR that matches no service port (a
    /// wrong port, or the VIP of a deleted service): refused with ICMP port unreachable.
    NoService = 3,
    /// A packet to a service address of a protocol other than TCP and UDP (ICMP echo, for one).
    UnsupportedProtocol = 4,
    /// A later fragment to a service address whose first fragment was not seen (out of order
    /// or expired).
    FragmentUntracked = 5,
    /// A service slot that should exist does not (an agent bug; never expected).
    SlotMissing = 6,
    /// A slot names a backend that does not exist (an agent bug; never expected).
    BackendMissing = 7,
    /// The conntrack map refused a new entry.
    ConntrackInsert = 8,
    /// The fragment map refused a new entry, so later fragments could not be translated.
    FragmentInsert = 9,
    /// A helper that rewrites the packet failed.
    RewriteFailed = 10,
    /// The refusal reply could not be built (for example, the request carried IP options).
    RejectFailed = 11,
    /// Every backend tried for a new flow already has a live flow from the same client address
    /// and port (through another service port), so replies could not be told apart.
    ConntrackClash = 12,
    /// A TCP segment of a connection whose backend was removed (not just drained): the client
    /// is answered with a reset, so it learns at once that the connection is over.
    BackendRemoved = 13,
    /// A packet to the hairpin address that belongs to no live hairpin flow.
    HairpinUntracked = 14,
    /// A NodePort flow's backend, or a NodePort reply's client, has no route from this node.
    NoRoute = 15,
    /// No source port was free for a NodePort flow to a backend on another node.
    SnatExhausted = 16,
    /// An IPv4 packet a pod sent with a source that is not the address the agent gave it
    /// (another pod's, the node's, any other, or 0.0.0.0): forged, or a pod acting as a router.
    SpoofedSource = 17,
    /// An IPv4 packet from a pod interface the agent recorded no address for (attached by a
    /// loader that did not say, or the entry was removed): nothing it sends can be trusted.
    NoPodAddress = 18,
    /// A frame a pod sent that is neither IPv4 nor ARP nor link-local IPv6 (routable IPv6, a
    /// frame still VLAN-tagged, any other protocol): the pod network carries IPv4 only, and a
    /// frame the datapath cannot read could carry a forged source past its check.
    NotIpv4 = 19,
}

// The per-reason counters have room for every reason.
const _: () = assert!(DropReason::COUNT <= capacity::DROP_REASONS);

impl DropReason {
    /// Reasons defined; `capacity::DROP_REASONS` bounds it.
    pub const COUNT: u32 = 20;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::MalformedIpv4,
        DropReason::MalformedL4,
        DropReason::NoBackend,
        DropReason::NoService,
        DropReason::UnsupportedProtocol,
        DropReason::FragmentUntracked,
        DropReason::SlotMissing,
        DropReason::BackendMissing,
        DropReason::ConntrackInsert,
        DropReason::FragmentInsert,
        DropReason::RewriteFailed,
        DropReason::RejectFailed,
        DropReason::ConntrackClash,
        DropReason::BackendRemoved,
        DropReason::HairpinUntracked,
        DropReason::NoRoute,
        DropReason::SnatExhausted,
        DropReason::SpoofedSource,
        DropReason::NoPodAddress,
        DropReason::NotIpv4,
    ];

    /// Short, stable name used by the operator command and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::MalformedIpv4 => "malformed_ipv4",
            DropReason::MalformedL4 => "malformed_l4",
            DropReason::NoBackend => "no_backend",
            DropReason::NoService => "no_service",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::FragmentUntracked => "fragment_untracked",
            DropReason::SlotMissing => "slot_missing",
            DropReason::BackendMissing => "backend_missing",
            DropReason::ConntrackInsert => "conntrack_insert",
            DropReason::FragmentInsert => "fragment_insert",
            DropReason::RewriteFailed => "rewrite_failed",
            DropReason::RejectFailed => "reject_failed",
            DropReason::ConntrackClash => "conntrack_clash",
            DropReason::BackendRemoved => "backend_removed",
            DropReason::HairpinUntracked => "hairpin_untracked",
            DropReason::NoRoute => "no_route",
            DropReason::SnatExhausted => "snat_exhausted",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NoPodAddress => "no_pod_address",
            DropReason::NotIpv4 => "not_ipv4",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY (all impls): `repr(C)`, `Copy`, every field a plain integer, explicit padding fields,
    // so every bit pattern is valid and there are no uninitialised padding bytes.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for ServiceCounters {}
    unsafe impl aya::Pod for DatapathSettings {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for NodePortKey {}
    unsafe impl aya::Pod for GcStats {}
    unsafe impl aya::Pod for MaglevChunk {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn map_types_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(size_of::<BackendValue>(), 12);
        assert_eq!(size_of::<SlotKey>(), 8);
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(size_of::<CtValue>(), 40);
        assert_eq!(size_of::<FragKey>(), 12);
        assert_eq!(size_of::<FragValue>(), 24);
        assert_eq!(size_of::<ServiceCounters>(), 48);
        assert_eq!(size_of::<DatapathSettings>(), 56);
        assert_eq!(size_of::<NodePortKey>(), 4);
        assert_eq!(size_of::<AffinityKey>(), 8);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<GcStats>(), 64);
        assert_eq!(size_of::<MaglevChunk>(), 1984);
    }

    #[test]
    fn reversing_a_key_twice_gives_it_back() {
        let k = CtKey::new(1, 2, 3, 4, IPPROTO_TCP);
        assert_eq!(k.reversed().reversed(), k);
        assert_eq!(k.reversed().saddr, 2);
        assert_eq!(k.reversed().dport, 3);
    }

    #[test]
    fn raw_forms_are_the_bytes_on_the_wire() {
        let raw = raw_addr([10, 96, 0, 1]);
        assert_eq!(raw.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(addr_octets(raw), [10, 96, 0, 1]);
        assert_eq!(raw_port(8080).to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(port_from_raw(raw_port(8080)), 8080);
        assert_eq!(raw_mask(12).to_ne_bytes(), [255, 240, 0, 0]);
        assert_eq!(raw_mask(0), 0);
        assert_eq!(raw_mask(32), u32::MAX);
    }

    #[test]
    fn tcp_lifetime_follows_the_flow_state() {
        let t = CtTimeouts::DEFAULT;
        assert_eq!(t.lifetime(IPPROTO_TCP, 0), t.tcp_transient);
        // An answered handshake the client never completed is not established.
        assert_eq!(t.lifetime(IPPROTO_TCP, CT_SEEN_REPLY), t.tcp_transient);
        let assured = CT_SEEN_REPLY | CT_ASSURED;
        assert_eq!(t.lifetime(IPPROTO_TCP, assured), t.tcp_established);
        // A half-close ages like netfilter's CLOSE_WAIT; both FINs or a RST close it.
        assert_eq!(
            t.lifetime(IPPROTO_TCP, assured | CT_SEEN_FIN_FWD),
            t.tcp_transient
        );
        let both = CT_SEEN_REPLY | CT_SEEN_FIN_FWD | CT_SEEN_FIN_REV;
        assert_eq!(t.lifetime(IPPROTO_TCP, both), t.tcp_closing);
        assert_eq!(t.lifetime(IPPROTO_TCP, CT_SEEN_RST), t.tcp_closing);
        assert_eq!(t.lifetime(IPPROTO_UDP, CT_SEEN_REPLY), t.udp);
    }

    #[test]
    fn the_flags_word_bits_set_tcp_flags_and_nothing_else() {
        let mut v = CtValue {
            created_ns: 1,
            last_seen_ns: 2,
            nat_addr: 3,
            nat_port: 0xabcd,
            kind: CT_FORWARD,
            tcp_flags: CT_SEEN_REPLY,
            service_id: 4,
            backend_id: 5,
            alt_addr: 6,
            alt_port: 7,
            _pad: 0,
        };
        let before = v;
        // What the datapath's atomic OR does, done on the same bytes here.
        let p = (&mut v as *mut CtValue).cast::<u8>();
        // SAFETY: in bounds (checked by the const asserts) and aligned for u64 (CtValue is
        // 8-aligned and the offset a multiple of 8).
        unsafe {
            let word = p.add(CT_FLAGS_WORD_OFFSET).cast::<u64>();
            *word |= ct_flags_word_bits(CT_SEEN_FIN_FWD | CT_SEEN_RST);
        }
        assert_eq!(v.tcp_flags, CT_SEEN_REPLY | CT_SEEN_FIN_FWD | CT_SEEN_RST);
        // SAFETY: as above.
        let word = unsafe { *p.add(CT_FLAGS_WORD_OFFSET).cast::<u64>() };
        assert_eq!(ct_flags_from_word(word), v.tcp_flags);
        assert_eq!(
            CtValue {
                tcp_flags: before.tcp_flags,
                ..v
            },
            before
        );
    }

    #[test]
    fn a_snat_port_waits_out_time_wait_after_its_flow_closes() {
        let t = CtTimeouts::DEFAULT;
        let sec = 1_000_000_000;
        let mut v = CtValue {
            created_ns: 0,
            last_seen_ns: 100 * sec,
            nat_addr: 1,
            nat_port: 2,
            kind: CT_REVERSE,
            tcp_flags: CT_SEEN_REPLY | CT_SEEN_FIN_FWD | CT_SEEN_FIN_REV,
            service_id: 1,
            backend_id: 1,
            alt_addr: 3,
            alt_port: 4,
            _pad: 0,
        };
        assert!(holds_snat_port(&v));
        // Past the closing lifetime (the flow no longer translates) but within TIME_WAIT.
        assert!(t.expired(IPPROTO_TCP, &v, 100 * sec + t.tcp_closing + 1));
        assert!(!snat_port_free(&t, IPPROTO_TCP, &v, 100 * sec + 60 * sec));
        assert!(snat_port_free(&t, IPPROTO_TCP, &v, 100 * sec + 121 * sec));
        // A live flow's port is never free; an unanswered one is once it expires.
        v.tcp_flags = CT_SEEN_REPLY | CT_ASSURED;
        assert!(!snat_port_free(&t, IPPROTO_TCP, &v, 100 * sec + 3600 * sec));
        // An answered SYN the client never acknowledged holds its port only briefly.
        v.tcp_flags = CT_SEEN_REPLY;
        assert!(snat_port_free(
            &t,
            IPPROTO_TCP,
            &v,
            100 * sec + t.tcp_transient + 1
        ));
        v.tcp_flags = 0;
        assert!(!snat_port_free(
            &t,
            IPPROTO_TCP,
            &v,
            100 * sec + t.tcp_transient
        ));
        assert!(snat_port_free(
            &t,
            IPPROTO_TCP,
            &v,
            100 * sec + t.tcp_transient + 1
        ));
    }

    #[test]
    fn the_maglev_size_and_generation_share_the_flags_with_the_other_bits() {
        let flags = with_maglev(SVC_FLAG_AFFINITY_CLIENT_IP, 16_381, true);
        let v = ServiceValue {
            id: 1,
            slot_count: 3,
            flags,
            affinity_timeout_secs: 10,
        };
        assert_eq!(v.maglev_size(), 16_381);
        assert!(v.maglev_gen());
        assert_ne!(v.flags & SVC_FLAG_AFFINITY_CLIENT_IP, 0);
        let flipped = with_maglev(flags, 16_381, false);
        assert_eq!(flipped >> SVC_MAGLEV_SIZE_SHIFT, 16_381);
        assert_eq!(flipped & SVC_FLAG_MAGLEV_GEN, 0);
        assert_ne!(flipped & SVC_FLAG_AFFINITY_CLIENT_IP, 0);
        assert_eq!(maglev_key(7, true, 3).slot, MAGLEV_GEN_BIT | 3);
        assert_eq!(maglev_key(7, false, 3).slot, 3);
    }

    #[test]
    fn ct_event_table_matches_discriminants() {
        for (i, e) in CtEvent::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i, "{}", e.name());
        }
    }

    #[test]
    fn drop_reason_table_matches_discriminants() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.name());
        }
    }
}
