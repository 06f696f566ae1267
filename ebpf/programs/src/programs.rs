//! The tc programs and their maps (built only for the BPF target).

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_or},
};

use aya_ebpf::{
    Global,
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_for_each_map_elem, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use skiff_common::{
    AffinityKey, AffinityValue, BACKEND_FLAG_DRAINING, BackendValue, CT_ASSURED,
    CT_FLAGS_WORD_OFFSET, CT_FORWARD, CT_PROMOTE_FAILED, CT_REVERSE, CT_SEEN_FIN_FWD,
    CT_SEEN_FIN_REV, CT_SEEN_REPLY, CT_SEEN_RST, CtEvent, CtKey, CtTimeouts, CtValue,
    DEFAULT_HAIRPIN_ADDR, DEFAULT_SERVICE_CIDR, DEFAULT_SNAT_PORTS, DatapathSettings, DropReason,
    FragKey, FragValue, GcStats, IPPROTO_TCP, IPPROTO_UDP, MAGLEV_CHUNK, MaglevChunk, NodePortKey,
    SVC_FLAG_AFFINITY_CLIENT_IP, ServiceCounters, ServiceKey, ServiceValue, SlotKey, capacity,
    ct_flags_from_word, ct_flags_word_bits, hash::flow_hash, holds_snat_port, maglev_key,
    port_from_raw, raw_addr, raw_mask, snat_port_free, tcp_closed, timeouts,
};

use crate::packet::{
    self, FRAG_FIRST, FRAG_LATER, IP_DADDR_OFF, IP_SADDR_OFF, IPPROTO_ICMP, IcmpError, Ipv4Info,
    L4Info, Quoted, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

// Maps written by the agent change rarely; without preallocation an element that is replaced or
// removed is freed only after readers are done (RCU), so a lookup never sees it half-rewritten.
#[map]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(capacity::SERVICES, BPF_F_NO_PREALLOC);
#[map]
static BACKENDS: HashMap<u32, BackendValue> =
    HashMap::pinned(capacity::BACKENDS, BPF_F_NO_PREALLOC);
#[map]
static SLOTS: HashMap<SlotKey, u32> = HashMap::pinned(capacity::SLOTS, BPF_F_NO_PREALLOC);
/// Maglev lookup tables, 496 slots an entry (`maglev_key`): the backend a new flow whose hash
/// lands on slot `hash % M` takes. Two generations per service; `SERVICES` names the live one.
#[map]
static MAGLEV: HashMap<SlotKey, MaglevChunk> = HashMap::pinned(capacity::MAGLEV, BPF_F_NO_PREALLOC);
/// Conntrack, in two tables. A flow begins in `CONNTRACK`, an LRU: under a flood of new
/// connections its oldest entries are evicted, and those are flows that never completed a
/// handshake or have closed. Once a flow has shown traffic both ways and the client speaks
/// again (a TCP ACK after the SYN-ACK, a UDP request after a reply), both its entries move to
/// `CT_ESTABLISHED`, which nothing evicts: an established flow keeps its translation however
/// slowly it speaks, until it closes (a FIN each way, or a RST: back to `CONNTRACK`) or stays
/// idle past its lifetime (`skiff_ct_gc` removes it). When `CT_ESTABLISHED` is full, flows stay
/// in `CONNTRACK` (counted as `EstablishedFull`), so new connections are never refused for
/// it. Lookups try `CT_ESTABLISHED` first. The entries that hold NodePort source ports
/// (`holds_snat_port`) are made in `CT_ESTABLISHED` at once, so one port is never given to two
/// flows, and stay until the backend's TIME_WAIT is over.
#[map]
static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(capacity::CONNTRACK, 0);
/// Not preallocated: the agent sizes it from the node's memory, which is used only as flows
/// need it, and a removed entry is freed only after readers are done.
#[map]
static CT_ESTABLISHED: HashMap<CtKey, CtValue> =
    HashMap::pinned(capacity::CT_ESTABLISHED, BPF_F_NO_PREALLOC);
#[map]
static CT_EVENTS: PerCpuArray<u64> = PerCpuArray::pinned(capacity::CT_EVENTS, 0);
/// The last run of `skiff_ct_gc`.
#[map]
static CT_GC: Array<GcStats> = Array::pinned(1, 0);
#[map]
static FRAGMENTS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(capacity::FRAGMENTS, 0);
#[map]
static SVC_COUNTERS: PerCpuArray<ServiceCounters> = PerCpuArray::pinned(capacity::SERVICES, 0);
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::pinned(capacity::DROP_REASONS, 0);
/// ClientIP session affinity: (client, service) -> the backend its new flows stick to.
#[map]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(capacity::AFFINITY, 0);
/// NodePorts: (port, protocol) on the node's address -> the Service port they serve.
#[map]
static NODEPORTS: HashMap<NodePortKey, ServiceKey> =
    HashMap::pinned(capacity::NODEPORTS, BPF_F_NO_PREALLOC);
/// Pod interfaces (the host-side veth's index) -> the pod's address (network byte order), the
/// only source `skiff_from_pod` lets an IPv4 packet from that interface carry. Written by the
/// agent before it attaches the programs to the interface, removed after it detaches them.
#[map]
static POD_SOURCES: HashMap<u32, u32> = HashMap::pinned(capacity::POD_SOURCES, BPF_F_NO_PREALLOC);
/// Written by the agent as a record of the load-time settings; the programs use the globals.
#[map]
static CONFIG: Array<DatapathSettings> = Array::pinned(1, 0);

#[unsafe(no_mangle)]
static CT_TCP_ESTABLISHED_NS: Global<u64> = Global::new(timeouts::TCP_ESTABLISHED_NS);
#[unsafe(no_mangle)]
static CT_TCP_TRANSIENT_NS: Global<u64> = Global::new(timeouts::TCP_TRANSIENT_NS);
#[unsafe(no_mangle)]
static CT_TCP_CLOSING_NS: Global<u64> = Global::new(timeouts::TCP_CLOSING_NS);
#[unsafe(no_mangle)]
static CT_UDP_NS: Global<u64> = Global::new(timeouts::UDP_NS);
#[unsafe(no_mangle)]
static CT_SNAT_HOLD_NS: Global<u64> = Global::new(timeouts::SNAT_TIME_WAIT_NS);
#[unsafe(no_mangle)]
static HASH_SEED: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SERVICE_CIDR_ADDR: Global<u32> = Global::new(raw_addr(DEFAULT_SERVICE_CIDR.0));
#[unsafe(no_mangle)]
static SERVICE_CIDR_MASK: Global<u32> = Global::new(raw_mask(DEFAULT_SERVICE_CIDR.1));
#[unsafe(no_mangle)]
static HAIRPIN_ADDR: Global<u32> = Global::new(raw_addr(DEFAULT_HAIRPIN_ADDR));
#[unsafe(no_mangle)]
static NODE_IP: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SNAT_PORT_MIN: Global<u16> = Global::new(DEFAULT_SNAT_PORTS.0);
#[unsafe(no_mangle)]
static SNAT_PORT_MAX: Global<u16> = Global::new(DEFAULT_SNAT_PORTS.1);

const TC_OK: i32 = TC_ACT_OK;

#[classifier]
pub fn skiff_from_pod(ctx: TcContext) -> i32 {
    verdict(from_pod(&ctx))
}

#[classifier]
pub fn skiff_to_pod(ctx: TcContext) -> i32 {
    verdict(to_pod(&ctx))
}

#[classifier]
pub fn skiff_nodeport(ctx: TcContext) -> i32 {
    verdict(nodeport(&ctx))
}

#[classifier]
pub fn skiff_np_reply(ctx: TcContext) -> i32 {
    verdict(nodeport_local_reply(&ctx))
}

/// The conntrack collector. Attached nowhere: the agent runs it now and then
/// (`BPF_PROG_TEST_RUN`, with any frame), and it walks both conntrack tables inside the
/// kernel, removing expired entries and counting what is left by state (`CT_GC`). Removing an
/// expired entry changes nothing the datapath does (it ignores expired entries), except
/// freeing its room.
#[classifier]
pub fn skiff_ct_gc(_ctx: TcContext) -> i32 {
    let mut pass = GcPass {
        now: now_ns(),
        timeouts: timeouts_now(),
        stats: GcStats::default(),
    };
    pass.stats.started_ns = pass.now;
    // SAFETY: the maps are `repr(transparent)` over their definitions, which is what the
    // helper takes; the callbacks have the signature it calls them with, and `pass` outlives
    // the calls.
    unsafe {
        bpf_for_each_map_elem(
            (&raw const CT_ESTABLISHED).cast_mut().cast(),
            collect_established as *mut c_void,
            (&raw mut pass).cast(),
            0,
        );
        bpf_for_each_map_elem(
            (&raw const CONNTRACK).cast_mut().cast(),
            collect_transient as *mut c_void,
            (&raw mut pass).cast(),
            0,
        );
    }
    if let Some(out) = CT_GC.get_ptr_mut(0) {
        // SAFETY: the map's one element, valid for this program run.
        unsafe { *out = pass.stats };
    }
    TC_OK
}

/// The state of one collector run, handed to its callbacks.
struct GcPass {
    now: u64,
    timeouts: CtTimeouts,
    stats: GcStats,
}

/// `bpf_for_each_map_elem` callback over `CT_ESTABLISHED`: returns 0 to go on.
#[inline(never)]
extern "C" fn collect_established(
    _map: *mut c_void,
    key: *mut CtKey,
    value: *mut CtValue,
    pass: *mut GcPass,
) -> i64 {
    // SAFETY: the helper passes valid pointers to this element's key and value and to `pass`.
    let (k, v, pass) = unsafe { (*key, *value, &mut *pass) };
    let t = &pass.timeouts;
    let idle = pass.now.saturating_sub(v.last_seen_ns);
    let gone = if holds_snat_port(&v) {
        snat_port_free(t, k.proto, &v, pass.now)
            || (!backend_remains(&v) && idle > t.snat_hold.max(t.tcp_closing))
    } else {
        // A flow whose backend was removed is over (its next TCP segment gets a reset).
        t.expired(k.proto, &v, pass.now) || (!backend_remains(&v) && idle > t.tcp_closing)
    };
    if gone && retire(value, &v) && CT_ESTABLISHED.remove(k).is_ok() {
        pass.stats.removed_established += 1;
        return 0;
    }
    pass.stats.established += 1;
    if k.proto == IPPROTO_TCP {
        if tcp_closed(v.tcp_flags) {
            pass.stats.established_tcp_closing += 1;
        } else {
            pass.stats.established_tcp += 1;
        }
    } else {
        pass.stats.established_udp += 1;
    }
    0
}

/// Before the collector removes an entry it found finished: a compare-and-swap of its
/// last-seen time from the value read to the far future, which fails if a CPU has just
/// claimed or refreshed the entry (the removal is then skipped), and after which no CPU takes
/// the entry as free before it is gone.
#[inline(always)]
fn retire(entry: *mut CtValue, read: &CtValue) -> bool {
    // SAFETY: `entry` is the element the helper handed over; `last_seen_ns` is an aligned u64
    // inside it.
    let (_, won) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*entry).last_seen_ns,
            read.last_seen_ns,
            u64::MAX,
        )
    };
    won
}

/// `bpf_for_each_map_elem` callback over `CONNTRACK`: returns 0 to go on.
#[inline(never)]
extern "C" fn collect_transient(
    _map: *mut c_void,
    key: *mut CtKey,
    value: *mut CtValue,
    pass: *mut GcPass,
) -> i64 {
    // SAFETY: as in `collect_established`.
    let (k, v, pass) = unsafe { (*key, *value, &mut *pass) };
    if pass.timeouts.expired(k.proto, &v, pass.now)
        && retire(value, &v)
        && CONNTRACK.remove(k).is_ok()
    {
        pass.stats.removed_transient += 1;
    } else {
        pass.stats.transient += 1;
    }
    0
}

/// An error is never turned into "pass": it is counted under its reason and the packet dropped.
#[inline(always)]
fn verdict(result: Result<i32, DropReason>) -> i32 {
    match result {
        Ok(action) => action,
        Err(reason) => {
            count_drop(reason);
            TC_ACT_SHOT
        }
    }
}

/// Client -> service: find the service, pick or recall the backend, rewrite the destination.
#[inline(always)]
fn from_pod(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(ip) = packet::parse_ipv4(ctx)? else {
        return if packet::pod_may_send_non_ipv4(ctx) {
            Ok(TC_OK)
        } else {
            Err(DropReason::NotIpv4)
        };
    };
    // Before anything reads the source (conntrack, fragments, affinity, ICMP errors): a forged
    // source must not reach a pod, nor create, refresh or take over another client's entries.
    // The datapath's own rewrites of this packet (hairpin, refusals) come after and leave by
    // `bounce`, to the interface's egress, so they never meet this check.
    check_source(ctx, &ip)?;
    if ip.frag == FRAG_LATER {
        return forward_later_fragment(ctx, &ip);
    }
    if ip.proto == IPPROTO_ICMP
        && let Some(mut e) = packet::parse_icmp_error(ctx, &ip)
        && forward_icmp_error(ctx, &ip, &mut e)?
    {
        return Ok(TC_OK);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return if is_service_addr(ip.daddr) {
            Err(DropReason::UnsupportedProtocol)
        } else {
            Ok(TC_OK)
        };
    }
    let Some(l4) = packet::parse_l4(ctx, &ip) else {
        return if is_service_addr(ip.daddr) {
            Err(DropReason::MalformedL4)
        } else {
            Ok(TC_OK)
        };
    };

    // A NodePort of its own has its entry under 0.0.0.0, where no packet is addressed: one
    // crafted to it is no service's (the kernel drops it).
    if ip.daddr == 0 {
        return Ok(TC_OK);
    }
    let skey = ServiceKey {
        addr: ip.daddr,
        port: l4.dport,
        proto: ip.proto,
        _pad: 0,
    };
    // SAFETY: copied out at once; the map is not preallocated, so the element outlives the read.
    let (skey, svc) = match unsafe { SERVICES.get(skey) }.copied() {
        Some(svc) => (skey, svc),
        None => {
            // Only compares on the path of ordinary pod traffic; no second lookup.
            if in_service_cidr(ip.daddr) {
                return packet::refuse(ctx, &ip, &l4, DropReason::NoService);
            }
            if ip.daddr == HAIRPIN_ADDR.load() {
                return hairpin_reply(ctx, &ip, &l4);
            }
            // A pod may use a NodePort on its own node's address too.
            if ip.daddr == NODE_IP.load()
                && let Some(found) = node_port_service(&ip, &l4)
            {
                found
            } else {
                return Ok(TC_OK);
            }
        }
    };
    let (addr, port, _, _) = match forward_conntrack(ctx, &ip, &l4, &skey, &svc, false) {
        Ok(backend) => backend,
        Err(DropReason::NoBackend) => {
            update_counters(svc.id, |c| c.rejected += 1);
            return packet::refuse(ctx, &ip, &l4, DropReason::NoBackend);
        }
        Err(DropReason::BackendRemoved) => {
            return packet::reset_tcp(ctx, &ip, &l4, DropReason::BackendRemoved);
        }
        Err(other) => return Err(other),
    };
    if ip.frag == FRAG_FIRST {
        track_fragment(&ip, CT_FORWARD, addr, svc.id, 0)?;
    }
    packet::rewrite_dst(ctx, &ip, &l4, addr, port)?;
    count_traffic(ctx, svc.id, false);
    if addr == ip.saddr {
        // Hairpin: the pod reaches itself through its Service. Arriving with its own address
        // as source, the packet would be dropped by the pod's kernel (a martian), so it comes
        // from the hairpin address instead (the client port kept), and the pod's replies to
        // that address are translated back by `hairpin_reply`.
        packet::rewrite_src(ctx, &ip, &l4, HAIRPIN_ADDR.load(), l4.sport)?;
        return packet::bounce(ctx);
    }
    Ok(TC_OK)
}

/// An IPv4 packet from a pod must carry the address the agent gave the pod as its source; an
/// interface the agent gave no address sends nothing (fail closed). Not IPv4 (ARP above all)
/// is not checked: it has no IPv4 source to forge and the node does not route it.
#[inline(always)]
fn check_source(ctx: &TcContext, ip: &Ipv4Info) -> Result<(), DropReason> {
    // SAFETY: reading a field of the context the kernel passed in. At tc ingress it is the
    // index of the host-side veth the packet arrived on.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: copied out at once from a non-preallocated map.
    match unsafe { POD_SOURCES.get(ifindex) }.copied() {
        // 0.0.0.0 is never a pod's address (Skiff gives addresses, not DHCP), so it is refused
        // as any other foreign source.
        Some(addr) if addr == ip.saddr && addr != 0 => Ok(()),
        Some(_) => Err(DropReason::SpoofedSource),
        None => Err(DropReason::NoPodAddress),
    }
}

/// A pod's reply to the hairpin address: the answer to a connection it made to one of its own
/// Services. Put the VIP back as source and the pod as destination, and hand it back to the pod.
#[inline(always)]
fn hairpin_reply(ctx: &TcContext, ip: &Ipv4Info, l4: &L4Info) -> Result<i32, DropReason> {
    let key = CtKey::new(ip.saddr, ip.daddr, l4.sport, l4.dport, ip.proto);
    let entry = ct_find(&key).ok_or(DropReason::HairpinUntracked)?;
    let ct = entry.value();
    let now = now_ns();
    if ct.kind != CT_REVERSE || expired(&ct, ip.proto, now) {
        return Err(DropReason::HairpinUntracked);
    }
    let seen = reply_flags(ip, l4);
    if needs_refresh(&ct, seen, now) {
        // The forward entry is keyed by the pod as client: (pod, VIP, client port, port).
        let forward_key = CtKey::new(ip.saddr, ct.nat_addr, l4.dport, ct.nat_port, ip.proto);
        let partner = forward_half(&forward_key, ip.saddr, l4.sport);
        touch(entry, &key, partner, ip.proto, seen, now);
    }
    if ip.frag == FRAG_FIRST {
        track_fragment(ip, CT_REVERSE, ct.nat_addr, ct.service_id, 0)?;
    }
    packet::rewrite_src(ctx, ip, l4, ct.nat_addr, ct.nat_port)?;
    packet::rewrite_dst(ctx, ip, l4, ip.saddr, l4.dport)?;
    count_traffic(ctx, ct.service_id, true);
    packet::bounce(ctx)
}

/// The `CT_SEEN_*` bits a reply shows.
#[inline(always)]
fn reply_flags(ip: &Ipv4Info, l4: &L4Info) -> u8 {
    let mut seen = CT_SEEN_REPLY;
    if ip.proto == IPPROTO_TCP {
        if l4.tcp_flags & TCP_FIN != 0 {
            seen |= CT_SEEN_FIN_REV;
        }
        if l4.tcp_flags & TCP_RST != 0 {
            seen |= CT_SEEN_RST;
        }
    }
    seen
}

/// Backend -> client: if this is the reply of a translated flow, put the VIP back as source.
#[inline(always)]
fn to_pod(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(ip) = packet::parse_ipv4(ctx)? else {
        return Ok(TC_OK);
    };
    if ip.frag == FRAG_LATER {
        return reverse_later_fragment(ctx, &ip);
    }
    if ip.proto == IPPROTO_ICMP {
        if let Some(mut e) = packet::parse_icmp_error(ctx, &ip) {
            reverse_icmp_error(ctx, &ip, &mut e)?;
        }
        return Ok(TC_OK);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Ok(TC_OK);
    }
    let Some(l4) = packet::parse_l4(ctx, &ip) else {
        return Ok(TC_OK);
    };
    let key = CtKey::new(ip.saddr, ip.daddr, l4.sport, l4.dport, ip.proto);
    let Some(entry) = ct_find(&key) else {
        return Ok(TC_OK);
    };
    let ct = entry.value();
    let now = now_ns();
    if ct.kind != CT_REVERSE || expired(&ct, ip.proto, now) {
        return Ok(TC_OK);
    }
    let seen = reply_flags(&ip, &l4);
    if needs_refresh(&ct, seen, now) {
        let forward_key = CtKey::new(ip.daddr, ct.nat_addr, l4.dport, ct.nat_port, ip.proto);
        let partner = forward_half(&forward_key, ip.saddr, l4.sport);
        touch(entry, &key, partner, ip.proto, seen, now);
    }
    if ip.frag == FRAG_FIRST {
        track_fragment(&ip, CT_REVERSE, ct.nat_addr, ct.service_id, 0)?;
    }
    packet::rewrite_src(ctx, &ip, &l4, ct.nat_addr, ct.nat_port)?;
    count_traffic(ctx, ct.service_id, true);
    Ok(TC_OK)
}

/// How many slots a new flow tries before giving up when the chosen backend already carries a
/// live flow from the same client address and port (through another service port), whose
/// reverse entry would otherwise be overwritten.
const MAX_PROBES: u32 = 4;

/// How a flow is translated: the new destination (the backend's address and port) and, for a
/// flow translated at both ends, the new source (else zeros). Network byte order.
type Translation = (u32, u16, u32, u16);

/// Returns the translation of this flow: the backend conntrack remembers while the flow is alive
/// and that backend still exists (active or draining), otherwise a newly chosen active one. Two
/// errors are refusals the caller answers: `NoBackend` (a new flow to a service without active
/// backends) and `BackendRemoved` (a TCP connection whose backend is gone). (An enum carrying
/// them would leave its payload undefined on those paths, which the verifier refuses when the
/// compiler reads it.)
///
/// `nodeport`: the packet came in on the node's uplink to a NodePort. A new flow to a backend the
/// node routes back out of that interface (a pod on another node) gets the node's address and a
/// port allocated for it as source, so the reply comes back through this node; a backend on this
/// node sees the client's own address (its replies pass this node anyway).
#[inline(always)]
fn forward_conntrack(
    ctx: &TcContext,
    ip: &Ipv4Info,
    l4: &L4Info,
    skey: &ServiceKey,
    svc: &ServiceValue,
    nodeport: bool,
) -> Result<Translation, DropReason> {
    let key = CtKey::new(ip.saddr, ip.daddr, l4.sport, l4.dport, ip.proto);
    let now = now_ns();
    let mut seen = 0u8;
    if ip.proto == IPPROTO_TCP {
        if l4.tcp_flags & TCP_FIN != 0 {
            seen |= CT_SEEN_FIN_FWD;
        }
        if l4.tcp_flags & TCP_RST != 0 {
            seen |= CT_SEEN_RST;
        }
    }
    let syn = ip.proto == IPPROTO_TCP && l4.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;

    let mut stale_reverse: Option<CtKey> = None;
    let mut stale_established = false;
    if let Some(entry) = ct_find(&key) {
        let ct = entry.value();
        let reverse_key = reverse_key_for(&ct, ip, l4);
        // A SYN is a new connection: it reuses the 4-tuple of a closed flow, or of one whose
        // backend is draining (an attempt that timed out against a pod that then went away
        // leaves an entry with no FIN or RST seen; a draining backend takes no new
        // connections, so the SYN chooses again).
        let reopened = syn && (tcp_closed(ct.tcp_flags) || backend_draining(&ct));
        let live = ct.kind == CT_FORWARD
            && ct.service_id == svc.id
            && !reopened
            && !expired(&ct, ip.proto, now);
        // A draining backend is still in BACKENDS, so its flows go on until it is removed.
        if live && backend_is_current(&ct) {
            let flags = ct.tcp_flags | seen;
            let closed = ip.proto == IPPROTO_TCP && tcp_closed(flags);
            let retry = flags & CT_PROMOTE_FAILED == 0 || needs_refresh(&ct, seen, now);
            if !entry.established && flags & CT_SEEN_REPLY != 0 && !closed && retry {
                // The client speaks after a reply: the flow is assured, and established.
                promote(entry, &key, &reverse_key, ip, l4, seen, now)?;
            } else if needs_refresh(&ct, seen, now) {
                match ct_find(&reverse_key) {
                    // SAFETY: valid pointer from a successful lookup.
                    Some(reverse) if owns_reverse(unsafe { &*reverse.ptr }, ip, l4) => touch(
                        entry,
                        &key,
                        Some((reverse, reverse_key)),
                        ip.proto,
                        seen,
                        now,
                    ),
                    // Another flow has taken the key meanwhile.
                    Some(_) => touch(entry, &key, None, ip.proto, seen, now),
                    // The LRU evicted the reverse half of this live flow: put it back.
                    None => {
                        touch(entry, &key, None, ip.proto, seen, now);
                        let mut v = ct;
                        v.tcp_flags |= seen;
                        count_event(CtEvent::HalfRestored);
                        // Best effort: this packet goes on either way.
                        let _ = insert_reverse(&reverse_key, &v, ip, l4, now, entry.established);
                    }
                }
            }
            return Ok((ct.nat_addr, ct.nat_port, ct.alt_addr, ct.alt_port));
        }
        // The backend of this live TCP connection was removed (a pod that was draining is
        // gone): moving the connection would hand another backend a connection it never saw,
        // answered by a reset at best and, when that backend holds the 4-tuple in TIME_WAIT,
        // by ACKs until the client gives up. End it cleanly instead. Only a new connection (a
        // SYN) chooses again; UDP flows move to a live backend.
        if live && ip.proto == IPPROTO_TCP && !syn {
            return Err(DropReason::BackendRemoved);
        }
        if ct.kind == CT_FORWARD {
            stale_reverse = Some(reverse_key);
        }
        // New flows begin in the short-lived table; this entry would hide theirs.
        stale_established = entry.established;
    }
    if svc.slot_count == 0 {
        return Err(DropReason::NoBackend);
    }

    // A new flow, or one whose backend is gone: the client's affinity if it has a live one,
    // otherwise choose by hash over the service's slots.
    let sticky = svc.flags & SVC_FLAG_AFFINITY_CLIENT_IP != 0;
    let picked = match sticky.then(|| sticky_backend(ip, l4, svc, now)).flatten() {
        Some(b) => Some(b),
        None => {
            let hash = flow_hash(
                ip.saddr,
                ip.daddr,
                l4.sport,
                l4.dport,
                ip.proto,
                HASH_SEED.load(),
            );
            match choose_backend(ip, l4, svc, hash, now) {
                // The agent rewrote this service between our lookups (its writes are ordered
                // so that a fresh look always finds a whole service): look once more.
                Err(DropReason::SlotMissing | DropReason::BackendMissing) => {
                    // SAFETY: copied out at once from a non-preallocated map.
                    let fresh = unsafe { SERVICES.get(skey) }
                        .copied()
                        .ok_or(DropReason::SlotMissing)?;
                    if fresh.slot_count == 0 {
                        return Err(DropReason::NoBackend);
                    }
                    choose_backend(ip, l4, &fresh, hash, now)?
                }
                other => other?,
            }
        }
    };
    let Some((service_id, backend_id, backend)) = picked else {
        return Err(DropReason::ConntrackClash);
    };
    if sticky {
        let key = AffinityKey {
            client: ip.saddr,
            service_id,
        };
        let value = AffinityValue {
            last_used_ns: now,
            backend_id,
            _pad: 0,
        };
        // Best effort: without the entry the next flow is picked by hash, which is what a
        // client without affinity gets.
        let _ = AFFINITY.insert(key, value, BPF_ANY as u64);
    }

    if let Some(old) = stale_reverse
        && ct_get(&old).is_some_and(|r| owns_reverse(&r, ip, l4) && !holds_snat_port(&r))
    {
        // Best effort: the entry may already be gone. An entry holding a NodePort source port
        // stays until the backend's TIME_WAIT is over (the collector removes it).
        ct_remove(&old);
    }
    if stale_established {
        let _ = CT_ESTABLISHED.remove(key);
    }
    let mut forward = CtValue {
        created_ns: now,
        last_seen_ns: now,
        nat_addr: backend.addr,
        nat_port: backend.port,
        kind: CT_FORWARD,
        tcp_flags: seen,
        service_id,
        backend_id,
        alt_addr: 0,
        alt_port: 0,
        _pad: 0,
    };
    // SAFETY: reading a field of the context the kernel passed in.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    if nodeport && packet::route(ctx, ip.saddr, backend.addr)?.0 == ingress {
        // The backend is on another node: the reply must come back through this one.
        forward.alt_addr = ip.daddr;
        forward.alt_port = allocate_snat(ip, l4, &backend, &forward, now)?;
        CONNTRACK
            .insert(key, forward, BPF_ANY as u64)
            .map_err(|_| DropReason::ConntrackInsert)?;
    } else {
        CONNTRACK
            .insert(key, forward, BPF_ANY as u64)
            .map_err(|_| DropReason::ConntrackInsert)?;
        let reverse_key = reverse_key_of(backend.addr, backend.port, ip, l4);
        // A finished flow's established entry under this key (the choice of backend made sure
        // no live flow holds it) would hide the new one.
        let _ = CT_ESTABLISHED.remove(reverse_key);
        insert_reverse(&reverse_key, &forward, ip, l4, now, false)?;
    }
    update_counters(service_id, |c| c.new_flows += 1);
    Ok((
        backend.addr,
        backend.port,
        forward.alt_addr,
        forward.alt_port,
    ))
}

/// How many source ports a new NodePort flow to another node's backend tries.
const SNAT_PROBES: u32 = 16;

/// Allocates the source port (on the node's address, the packet's destination) of a NodePort
/// flow to a backend on another node, and records the flow's reverse entry under it, in the
/// established table (never evicted): a port that no flow to that backend address and port
/// holds, or whose flow is over and, if it closed, closed long enough ago that the backend's
/// TIME_WAIT is over; starting where the flow's hash points.
#[inline(always)]
fn allocate_snat(
    ip: &Ipv4Info,
    l4: &L4Info,
    backend: &BackendValue,
    forward: &CtValue,
    now: u64,
) -> Result<u16, DropReason> {
    let min = SNAT_PORT_MIN.load() as u32;
    let span = (SNAT_PORT_MAX.load() as u32).saturating_sub(min) + 1;
    let start = flow_hash(
        ip.saddr,
        backend.addr,
        l4.sport,
        backend.port,
        ip.proto,
        HASH_SEED.load(),
    );
    let reverse = CtValue {
        created_ns: forward.created_ns,
        last_seen_ns: now,
        nat_addr: ip.daddr,
        nat_port: l4.dport,
        kind: CT_REVERSE,
        tcp_flags: forward.tcp_flags,
        service_id: forward.service_id,
        backend_id: forward.backend_id,
        alt_addr: ip.saddr,
        alt_port: l4.sport,
        _pad: 0,
    };
    for i in 0..SNAT_PROBES {
        let offset = start
            .wrapping_add(i)
            .checked_rem(span)
            .ok_or(DropReason::SnatExhausted)?;
        let port = ((min + offset) as u16).to_be();
        let key = CtKey::new(backend.addr, ip.daddr, backend.port, port, ip.proto);
        match CT_ESTABLISHED.get_ptr_mut(key) {
            // NOEXIST: another CPU may be taking the same port for another flow right now, and
            // only one insert succeeds.
            None => match CT_ESTABLISHED.insert(key, reverse, BPF_NOEXIST as u64) {
                Ok(()) => return Ok(port),
                // The table is full: no port can be recorded.
                Err(E2BIG) => {
                    count_event(CtEvent::EstablishedFull);
                    return Err(DropReason::SnatExhausted);
                }
                Err(_) => {}
            },
            Some(entry) => {
                // SAFETY: valid pointer from a successful lookup.
                let r = unsafe { *entry };
                let free = if holds_snat_port(&r) {
                    snat_port_free(&timeouts_now(), ip.proto, &r, now)
                } else {
                    expired(&r, ip.proto, now)
                };
                // Of the CPUs that found it free, the one that claims it rewrites it.
                if free && claim(entry, &r, now) {
                    CT_ESTABLISHED
                        .insert(key, reverse, BPF_ANY as u64)
                        .map_err(|_| DropReason::ConntrackInsert)?;
                    count_event(CtEvent::SnatPortReused);
                    return Ok(port);
                }
            }
        }
    }
    Err(DropReason::SnatExhausted)
}

/// The key of a flow's reverse entry, from its forward entry.
#[inline(always)]
fn reverse_key_for(ct: &CtValue, ip: &Ipv4Info, l4: &L4Info) -> CtKey {
    if ct.alt_addr != 0 {
        CtKey::new(ct.nat_addr, ct.alt_addr, ct.nat_port, ct.alt_port, ip.proto)
    } else {
        reverse_key_of(ct.nat_addr, ct.nat_port, ip, l4)
    }
}

/// Whether a reverse entry belongs to the flow of this (forward) packet.
#[inline(always)]
fn owns_reverse(r: &CtValue, ip: &Ipv4Info, l4: &L4Info) -> bool {
    owns(r, CT_REVERSE, ip.daddr, l4.dport)
        && (r.alt_addr == 0 || (r.alt_addr == ip.saddr && r.alt_port == l4.sport))
}

/// The Service port a NodePort on the node's address serves, with its entry.
#[inline(always)]
fn node_port_service(ip: &Ipv4Info, l4: &L4Info) -> Option<(ServiceKey, ServiceValue)> {
    let key = NodePortKey {
        port: l4.dport,
        proto: ip.proto,
        _pad: 0,
    };
    // SAFETY: copied out at once from non-preallocated maps.
    let skey = unsafe { NODEPORTS.get(key) }.copied()?;
    // SAFETY: as above.
    let svc = unsafe { SERVICES.get(skey) }.copied()?;
    Some((skey, svc))
}

/// On the node's uplink, packets coming in: a NodePort request (to the node's address) is
/// translated like a Service flow; the reply of a NodePort flow to another node's backend (to
/// the node's address and a port of the SNAT range) gets the NodePort back as source and the
/// client as destination. Both leave again by the node's routes, skipping its input path (their
/// source is the node's own address, which that path would drop). Anything else passes.
#[inline(always)]
fn nodeport(ctx: &TcContext) -> Result<i32, DropReason> {
    let node = NODE_IP.load();
    let Some(ip) = packet::parse_ipv4(ctx)? else {
        return Ok(TC_OK);
    };
    if node == 0 || ip.daddr != node {
        return Ok(TC_OK);
    }
    if ip.frag == FRAG_LATER {
        return nodeport_later_fragment(ctx, &ip);
    }
    if ip.proto == IPPROTO_ICMP {
        return match packet::parse_icmp_error(ctx, &ip) {
            Some(mut e) => nodeport_icmp_error(ctx, &ip, &mut e),
            None => Ok(TC_OK),
        };
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Ok(TC_OK);
    }
    let Some(l4) = packet::parse_l4(ctx, &ip) else {
        return Ok(TC_OK);
    };
    let dport = port_from_raw(l4.dport);
    if dport >= SNAT_PORT_MIN.load() && dport <= SNAT_PORT_MAX.load() {
        return nodeport_remote_reply(ctx, &ip, &l4);
    }
    let Some((skey, svc)) = node_port_service(&ip, &l4) else {
        return Ok(TC_OK);
    };
    let (addr, port, src_addr, src_port) = match forward_conntrack(ctx, &ip, &l4, &skey, &svc, true)
    {
        Ok(t) => t,
        Err(DropReason::NoBackend) => {
            update_counters(svc.id, |c| c.rejected += 1);
            return packet::refuse(ctx, &ip, &l4, DropReason::NoBackend);
        }
        Err(DropReason::BackendRemoved) => {
            return packet::reset_tcp(ctx, &ip, &l4, DropReason::BackendRemoved);
        }
        // Answered (a SYN with a reset, a datagram with port unreachable), so the client
        // learns at once rather than retransmitting into a void.
        Err(DropReason::SnatExhausted) => {
            return packet::refuse(ctx, &ip, &l4, DropReason::SnatExhausted);
        }
        Err(other) => return Err(other),
    };
    if ip.frag == FRAG_FIRST {
        track_fragment(&ip, CT_FORWARD, addr, svc.id, src_addr)?;
    }
    packet::rewrite_dst(ctx, &ip, &l4, addr, port)?;
    count_traffic(ctx, svc.id, false);
    if src_addr == 0 {
        // A backend on this node: the kernel forwards the packet to the pod's veth.
        return Ok(TC_OK);
    }
    packet::rewrite_src(ctx, &ip, &l4, src_addr, src_port)?;
    packet::redirect_routed(ctx, src_addr, addr)
}

/// The reply of a NodePort flow to another node's backend, arriving at the node's address and
/// the flow's allocated port.
#[inline(always)]
fn nodeport_remote_reply(ctx: &TcContext, ip: &Ipv4Info, l4: &L4Info) -> Result<i32, DropReason> {
    let key = CtKey::new(ip.saddr, ip.daddr, l4.sport, l4.dport, ip.proto);
    let Some(entry) = ct_find(&key) else {
        return Ok(TC_OK);
    };
    let ct = entry.value();
    let now = now_ns();
    if ct.kind != CT_REVERSE || ct.alt_addr == 0 || expired(&ct, ip.proto, now) {
        return Ok(TC_OK);
    }
    let seen = reply_flags(ip, l4);
    if needs_refresh(&ct, seen, now) {
        let forward_key = CtKey::new(ct.alt_addr, ip.daddr, ct.alt_port, ct.nat_port, ip.proto);
        let partner = forward_half(&forward_key, ip.saddr, l4.sport);
        touch(entry, &key, partner, ip.proto, seen, now);
    }
    if ip.frag == FRAG_FIRST {
        track_fragment(ip, CT_REVERSE, ct.nat_addr, ct.service_id, ct.alt_addr)?;
    }
    packet::rewrite_src(ctx, ip, l4, ct.nat_addr, ct.nat_port)?;
    packet::rewrite_dst(ctx, ip, l4, ct.alt_addr, ct.alt_port)?;
    count_traffic(ctx, ct.service_id, true);
    packet::redirect_routed(ctx, ct.nat_addr, ct.alt_addr)
}

/// On the node's uplink, packets going out: the reply of a NodePort flow to a backend on this
/// node (which saw the client's own address) gets the node's address and the NodePort back as
/// source. The node's own packets (from its address) and everything else pass untouched.
#[inline(always)]
fn nodeport_local_reply(ctx: &TcContext) -> Result<i32, DropReason> {
    let node = NODE_IP.load();
    let Some(ip) = packet::parse_ipv4(ctx)? else {
        return Ok(TC_OK);
    };
    if node == 0 {
        return Ok(TC_OK);
    }
    // Before the node's own packets pass: the node itself reports a request it could not
    // forward to a backend on it ("fragmentation needed" for a pod's smaller MTU).
    if ip.proto == IPPROTO_ICMP && ip.frag != FRAG_LATER {
        if let Some(mut e) = packet::parse_icmp_error(ctx, &ip)
            && let Some(ct) = entry_answering(&e, CT_REVERSE)
            && ct.alt_addr == 0
            && ct.nat_addr == node
        {
            untranslate_icmp_error(ctx, &ip, &mut e, &ct)?;
        }
        return Ok(TC_OK);
    }
    if ip.saddr == node {
        return Ok(TC_OK);
    }
    if ip.frag == FRAG_LATER {
        if let Some(f) = lookup_fragment(&ip, CT_REVERSE)
            && f.nat_addr == node
            && f.alt_addr == 0
        {
            packet::rewrite_addr_only(ctx, IP_SADDR_OFF, ip.saddr, node)?;
            count_traffic(ctx, f.service_id, true);
        }
        return Ok(TC_OK);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Ok(TC_OK);
    }
    let Some(l4) = packet::parse_l4(ctx, &ip) else {
        return Ok(TC_OK);
    };
    let key = CtKey::new(ip.saddr, ip.daddr, l4.sport, l4.dport, ip.proto);
    let Some(entry) = ct_find(&key) else {
        return Ok(TC_OK);
    };
    let ct = entry.value();
    let now = now_ns();
    // NodePort reverse entries put the node's address back; Service ones a VIP.
    if ct.kind != CT_REVERSE
        || ct.alt_addr != 0
        || ct.nat_addr != node
        || expired(&ct, ip.proto, now)
    {
        return Ok(TC_OK);
    }
    let seen = reply_flags(&ip, &l4);
    if needs_refresh(&ct, seen, now) {
        let forward_key = CtKey::new(ip.daddr, node, l4.dport, ct.nat_port, ip.proto);
        let partner = forward_half(&forward_key, ip.saddr, l4.sport);
        touch(entry, &key, partner, ip.proto, seen, now);
    }
    if ip.frag == FRAG_FIRST {
        track_fragment(&ip, CT_REVERSE, node, ct.service_id, 0)?;
    }
    packet::rewrite_src(ctx, &ip, &l4, ct.nat_addr, ct.nat_port)?;
    count_traffic(ctx, ct.service_id, true);
    Ok(TC_OK)
}

/// A non-first fragment to the node's address: of a NodePort request (to the backend, from
/// the node too when the backend is on another node) or of a remote backend's reply (from the
/// NodePort, to the client), as its first fragment was translated. Untracked ones are the
/// node's own (they carry no ports to tell) and pass to its reassembly.
#[inline(always)]
fn nodeport_later_fragment(ctx: &TcContext, ip: &Ipv4Info) -> Result<i32, DropReason> {
    if let Some(f) = lookup_fragment(ip, CT_FORWARD) {
        packet::rewrite_addr_only(ctx, IP_DADDR_OFF, ip.daddr, f.nat_addr)?;
        count_traffic(ctx, f.service_id, false);
        if f.alt_addr == 0 {
            return Ok(TC_OK);
        }
        packet::rewrite_addr_only(ctx, IP_SADDR_OFF, ip.saddr, f.alt_addr)?;
        return packet::redirect_routed(ctx, f.alt_addr, f.nat_addr);
    }
    match lookup_fragment(ip, CT_REVERSE) {
        Some(f) if f.alt_addr != 0 => {
            packet::rewrite_addr_only(ctx, IP_SADDR_OFF, ip.saddr, f.nat_addr)?;
            packet::rewrite_addr_only(ctx, IP_DADDR_OFF, ip.daddr, f.alt_addr)?;
            count_traffic(ctx, f.service_id, true);
            packet::redirect_routed(ctx, f.nat_addr, f.alt_addr)
        }
        _ => Ok(TC_OK),
    }
}

/// Picks a backend for a new flow: the slot the hash names in the service's Maglev table (for
/// an entry without one, among its `slot_count` slots). If that backend already has a live (not
/// expired, not finished) flow from this client address and port, the next ones among the
/// active backends in `SLOTS` (address order, so successive probes are distinct backends; the
/// Maglev table's neighbouring slots often name the same one). `Ok(None)` when every probe
/// clashed.
#[inline(always)]
fn choose_backend(
    ip: &Ipv4Info,
    l4: &L4Info,
    svc: &ServiceValue,
    hash: u32,
    now: u64,
) -> Result<Option<(u32, u32, BackendValue)>, DropReason> {
    let first = match svc.maglev_size() {
        0 => slot_backend(svc, hash)?,
        m => maglev_backend(svc, m, hash)?,
    };
    if let Some(b) = unclashed(first, ip, l4, now)? {
        return Ok(Some((svc.id, first, b)));
    }
    for i in 0..MAX_PROBES {
        if i >= svc.slot_count {
            break;
        }
        let backend_id = slot_backend(svc, hash.wrapping_add(i))?;
        if let Some(b) = unclashed(backend_id, ip, l4, now)? {
            return Ok(Some((svc.id, backend_id, b)));
        }
    }
    Ok(None)
}

/// The backend `backend_id`, unless this flow would clash on it.
#[inline(always)]
fn unclashed(
    backend_id: u32,
    ip: &Ipv4Info,
    l4: &L4Info,
    now: u64,
) -> Result<Option<BackendValue>, DropReason> {
    // SAFETY: copied out at once from a non-preallocated map.
    let backend = unsafe { BACKENDS.get(backend_id) }
        .copied()
        .ok_or(DropReason::BackendMissing)?;
    Ok((!clashes(&backend, ip, l4, now)).then_some(backend))
}

/// The backend ID in the service's `SLOTS` slot for `hash`.
#[inline(always)]
fn slot_backend(svc: &ServiceValue, hash: u32) -> Result<u32, DropReason> {
    let slot = SlotKey {
        service_id: svc.id,
        slot: hash
            .checked_rem(svc.slot_count)
            .ok_or(DropReason::SlotMissing)?,
    };
    // SAFETY: copied out at once from a non-preallocated map.
    unsafe { SLOTS.get(slot) }
        .copied()
        .ok_or(DropReason::SlotMissing)
}

/// The backend ID in the service's Maglev slot for `hash` (`m`: the table's size).
#[inline(always)]
fn maglev_backend(svc: &ServiceValue, m: u32, hash: u32) -> Result<u32, DropReason> {
    let slot = hash.checked_rem(m).ok_or(DropReason::SlotMissing)?;
    let key = maglev_key(svc.id, svc.maglev_gen(), slot / MAGLEV_CHUNK);
    let chunk = MAGLEV.get_ptr(key).ok_or(DropReason::SlotMissing)?;
    let lane = (slot % MAGLEV_CHUNK) as usize;
    // The verifier does not bound the result of a modulo, and the compiler, which does, would
    // drop the bounds check below: read the lane back through memory it cannot see into, so
    // the check stays and the verifier sees it.
    // SAFETY: reading a local.
    let lane = unsafe { core::ptr::read_volatile(&lane) };
    // SAFETY: the pointer comes from a successful lookup in a non-preallocated map (a replaced
    // or removed chunk is freed only after this program run).
    let ids = unsafe { &(*chunk).ids };
    ids.get(lane).copied().ok_or(DropReason::SlotMissing)
}

/// Whether `backend` already carries a live (not expired, not finished) flow from this client
/// address and port through another service port, whose reverse entry a new flow would take
/// over.
#[inline(always)]
fn clashes(backend: &BackendValue, ip: &Ipv4Info, l4: &L4Info, now: u64) -> bool {
    let reverse_key = reverse_key_of(backend.addr, backend.port, ip, l4);
    // A finished TCP flow gives its reply key up to a new one, as netfilter lets a new
    // connection take the tuple of one in TIME_WAIT: the client reuses a port as soon as its
    // own side is closed, and would otherwise be refused until the old entry expires.
    // SAFETY: copied out at once.
    ct_get(&reverse_key).is_some_and(|r| {
        r.kind == CT_REVERSE
            && !owns(&r, CT_REVERSE, ip.daddr, l4.dport)
            && !expired(&r, ip.proto, now)
            && !(ip.proto == IPPROTO_TCP && tcp_closed(r.tcp_flags))
    })
}

/// The backend this client's affinity names for `svc`, if the affinity is live (the client
/// began a flow to the service within the timeout) and the backend is still an active backend
/// of the service that this flow would not clash on.
#[inline(always)]
fn sticky_backend(
    ip: &Ipv4Info,
    l4: &L4Info,
    svc: &ServiceValue,
    now: u64,
) -> Option<(u32, u32, BackendValue)> {
    let key = AffinityKey {
        client: ip.saddr,
        service_id: svc.id,
    };
    // SAFETY: copied out at once.
    let a = unsafe { AFFINITY.get(key) }.copied()?;
    if now.saturating_sub(a.last_used_ns) > svc.affinity_timeout_secs as u64 * 1_000_000_000 {
        return None;
    }
    // SAFETY: copied out at once from a non-preallocated map.
    let backend = unsafe { BACKENDS.get(a.backend_id) }.copied()?;
    if backend.service_id != svc.id
        || backend.flags & BACKEND_FLAG_DRAINING != 0
        || clashes(&backend, ip, l4, now)
    {
        return None;
    }
    Some((svc.id, a.backend_id, backend))
}

/// The key of replies from `backend_addr:backend_port` to this packet's source: to the hairpin
/// address when the backend is the client itself.
#[inline(always)]
fn reverse_key_of(backend_addr: u32, backend_port: u16, ip: &Ipv4Info, l4: &L4Info) -> CtKey {
    let client = if backend_addr == ip.saddr {
        HAIRPIN_ADDR.load()
    } else {
        ip.saddr
    };
    CtKey::new(backend_addr, client, backend_port, l4.sport, ip.proto)
}

/// The forward half, keyed `key`, of the flow whose reply (from `backend:port`) is being
/// handled: a lookup by key alone could find another flow's entry that shares it.
#[inline(always)]
fn forward_half(key: &CtKey, backend: u32, port: u16) -> Option<(Found, CtKey)> {
    let f = ct_find(key)?;
    // SAFETY: valid pointer from a successful lookup.
    owns(unsafe { &*f.ptr }, CT_FORWARD, backend, port).then_some((f, *key))
}

/// Whether an entry is the `kind` half of a flow that translates to `addr:port` (a reverse entry
/// back to this VIP:port, a forward entry to this backend): looking a partner up by key alone
/// could find a different flow's entry that shares the key.
#[inline(always)]
fn owns(v: &CtValue, kind: u8, addr: u32, port: u16) -> bool {
    v.kind == kind && v.nat_addr == addr && v.nat_port == port
}

/// Puts a flow's reverse entry in the table its forward entry is in.
#[inline(always)]
fn insert_reverse(
    reverse_key: &CtKey,
    forward: &CtValue,
    ip: &Ipv4Info,
    l4: &L4Info,
    now: u64,
    established: bool,
) -> Result<(), DropReason> {
    let reverse = reverse_of(forward, ip, l4, now);
    let inserted = if established {
        CT_ESTABLISHED.insert(reverse_key, reverse, BPF_ANY as u64)
    } else {
        CONNTRACK.insert(reverse_key, reverse, BPF_ANY as u64)
    };
    inserted.map_err(|_| DropReason::ConntrackInsert)
}

/// The reverse entry of the flow of this (forward) packet.
#[inline(always)]
fn reverse_of(forward: &CtValue, ip: &Ipv4Info, l4: &L4Info, now: u64) -> CtValue {
    let (alt_addr, alt_port) = if forward.alt_addr != 0 {
        (ip.saddr, l4.sport)
    } else {
        (0, 0)
    };
    CtValue {
        created_ns: forward.created_ns,
        last_seen_ns: now,
        nat_addr: ip.daddr,
        nat_port: l4.dport,
        kind: CT_REVERSE,
        tcp_flags: forward.tcp_flags,
        service_id: forward.service_id,
        backend_id: forward.backend_id,
        alt_addr,
        alt_port,
        _pad: 0,
    }
}

/// The `kind` conntrack entry keyed by the answer to the packet an ICMP error quotes.
#[inline(always)]
fn entry_answering(e: &IcmpError, kind: u8) -> Option<CtValue> {
    let key = CtKey::new(e.daddr, e.saddr, e.dport, e.sport, e.proto);
    let ct = ct_get(&key)?;
    (ct.kind == kind).then_some(ct)
}

/// An ICMP error travelling to a pod about a packet it sent to a service (PMTU "fragmentation
/// needed", a backend's "port unreachable"). Flows translated at both ends (NodePort with
/// SNAT) are `nodeport_icmp_error`'s.
#[inline(always)]
fn reverse_icmp_error(ctx: &TcContext, ip: &Ipv4Info, e: &mut IcmpError) -> Result<(), DropReason> {
    // The quoted packet went client -> backend: its answer is keyed by the reverse entry.
    match entry_answering(e, CT_REVERSE) {
        Some(ct) if ct.alt_addr == 0 => untranslate_icmp_error(ctx, ip, e, &ct),
        _ => Ok(()),
    }
}

/// The client-side half of translating an ICMP error about a packet a client sent (quoted
/// client -> backend), with the flow's reverse entry: the quoted destination names the backend,
/// so put the service address and port back (a VIP, or the node and its NodePort), and the
/// outer source too when the backend itself sent the error.
#[inline(always)]
fn untranslate_icmp_error(
    ctx: &TcContext,
    ip: &Ipv4Info,
    e: &mut IcmpError,
    ct: &CtValue,
) -> Result<(), DropReason> {
    let outer = (ip.saddr == e.daddr).then_some((IP_SADDR_OFF, ip.saddr, ct.nat_addr));
    packet::rewrite_icmp_error(ctx, e, Quoted::Destination, ct.nat_addr, ct.nat_port, outer)
}

/// An ICMP error a pod sends about a reply it got from a service (its port was closed, say):
/// the quoted packet and the outer destination name the VIP, so name the backend instead.
/// Returns whether the error belonged to a translated flow.
#[inline(always)]
fn forward_icmp_error(
    ctx: &TcContext,
    ip: &Ipv4Info,
    e: &mut IcmpError,
) -> Result<bool, DropReason> {
    // The quoted packet went VIP -> client: its answer is the flow's forward entry.
    match entry_answering(e, CT_FORWARD) {
        Some(ct) if ct.alt_addr == 0 => {
            // Only the flow's own client may report an error about it: a pod is a host, not a
            // router, so what it quotes was addressed to itself. Another pod quoting someone
            // else's reply would reach that flow's backend (a forged "port unreachable", or a
            // "fragmentation needed" that lowers its path MTU).
            if e.daddr != ip.saddr {
                return Err(DropReason::SpoofedSource);
            }
            translate_icmp_error(ctx, ip, e, &ct)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The backend-side half of translating an ICMP error about a reply (quoted service -> client),
/// with the flow's forward entry: the quoted source and the outer destination name the service
/// address (a VIP, or the node's address and NodePort), so name the backend instead.
#[inline(always)]
fn translate_icmp_error(
    ctx: &TcContext,
    ip: &Ipv4Info,
    e: &mut IcmpError,
    ct: &CtValue,
) -> Result<(), DropReason> {
    let outer = (ip.daddr == e.saddr).then_some((IP_DADDR_OFF, ip.daddr, ct.nat_addr));
    packet::rewrite_icmp_error(ctx, e, Quoted::Source, ct.nat_addr, ct.nat_port, outer)
}

/// An ICMP error to the node's address, arriving on its uplink, about a NodePort flow.
///
/// From the backend's side about a request the node sent on to another node's backend (quoted
/// node:SNAT port -> backend; "fragmentation needed" from a router on the way, the backend's
/// "port unreachable"): back to the client, quoting its own packet to the NodePort. From the
/// client's side about a reply (quoted node:NodePort -> client; a router's "fragmentation
/// needed", the client's "port unreachable"): on to the backend, quoting its reply as the
/// backend sent it. Anything else is the node's own and passes.
#[inline(always)]
fn nodeport_icmp_error(
    ctx: &TcContext,
    ip: &Ipv4Info,
    e: &mut IcmpError,
) -> Result<i32, DropReason> {
    if let Some(ct) = entry_answering(e, CT_REVERSE)
        && ct.alt_addr != 0
    {
        // The backend's own errors come from the node, as its replies do; a router keeps its
        // address.
        let from_backend = ip.saddr == e.daddr;
        packet::rewrite_icmp_error(ctx, e, Quoted::Source, ct.alt_addr, ct.alt_port, None)?;
        untranslate_icmp_error(ctx, ip, e, &ct)?;
        packet::rewrite_addr_only(ctx, IP_DADDR_OFF, ip.daddr, ct.alt_addr)?;
        let source = if from_backend { ct.nat_addr } else { ip.saddr };
        return packet::redirect_routed(ctx, source, ct.alt_addr);
    }
    let Some(ct) = entry_answering(e, CT_FORWARD) else {
        return Ok(TC_OK);
    };
    translate_icmp_error(ctx, ip, e, &ct)?;
    if ct.alt_addr == 0 {
        // A backend on this node: the kernel forwards the error to the pod's veth.
        return Ok(TC_OK);
    }
    // The backend knows the flow as coming from the node's SNAT port, and only the node.
    packet::rewrite_icmp_error(ctx, e, Quoted::Destination, ct.alt_addr, ct.alt_port, None)?;
    packet::rewrite_addr_only(ctx, IP_SADDR_OFF, ip.saddr, ct.alt_addr)?;
    packet::redirect_routed(ctx, ct.alt_addr, ct.nat_addr)
}

/// The flow's backend still exists with the same address, active or draining (backend IDs are
/// never reused, so a removed backend is noticed even if another backend gets its address).
#[inline(always)]
fn backend_is_current(ct: &CtValue) -> bool {
    // SAFETY: only compared, from a non-preallocated map.
    match unsafe { BACKENDS.get(ct.backend_id) } {
        Some(b) => b.addr == ct.nat_addr && b.port == ct.nat_port && b.service_id == ct.service_id,
        None => false,
    }
}

/// Whether either half of a flow still has its backend (a reverse entry names the service
/// address, not the backend, so only the ID and service are compared for it).
#[inline(always)]
fn backend_remains(ct: &CtValue) -> bool {
    if ct.kind == CT_FORWARD {
        return backend_is_current(ct);
    }
    // SAFETY: only compared, from a non-preallocated map.
    match unsafe { BACKENDS.get(ct.backend_id) } {
        Some(b) => b.service_id == ct.service_id,
        None => false,
    }
}

/// Whether the flow's backend is still there but draining.
#[inline(always)]
fn backend_draining(ct: &CtValue) -> bool {
    // SAFETY: only read, from a non-preallocated map.
    match unsafe { BACKENDS.get(ct.backend_id) } {
        Some(b) => b.flags & BACKEND_FLAG_DRAINING != 0,
        None => false,
    }
}

/// `-E2BIG`: what a map insert returns when the map is full.
const E2BIG: i32 = -7;

/// The conntrack lifetimes this instance was loaded with.
#[inline(always)]
fn timeouts_now() -> CtTimeouts {
    CtTimeouts {
        tcp_established: CT_TCP_ESTABLISHED_NS.load(),
        tcp_transient: CT_TCP_TRANSIENT_NS.load(),
        tcp_closing: CT_TCP_CLOSING_NS.load(),
        udp: CT_UDP_NS.load(),
        snat_hold: CT_SNAT_HOLD_NS.load(),
    }
}

#[inline(always)]
fn expired(ct: &CtValue, proto: u8, now: u64) -> bool {
    timeouts_now().expired(proto, ct, now)
}

#[inline(always)]
fn needs_refresh(ct: &CtValue, seen: u8, now: u64) -> bool {
    ct.tcp_flags | seen != ct.tcp_flags
        || now.saturating_sub(ct.last_seen_ns) >= timeouts::REFRESH_INTERVAL_NS
}

/// Marks `seen` on an entry and its last use; returns the flags it had before (as the atomic
/// OR found them, so of CPUs marking the same entry at once exactly one sees each change).
#[inline(always)]
fn refresh(entry: *mut CtValue, seen: u8, now: u64) -> u8 {
    // SAFETY: `entry` comes from a successful lookup in this program run. Racing writers on
    // other CPUs store the same kind of values, and a lost update only delays aging.
    unsafe { (*entry).last_seen_ns = now };
    if seen != 0 {
        // Not a read-modify-write of the byte: two CPUs handling a FIN and a RST of the same
        // flow at once would each write back the flags they read, and one bit would be lost
        // (a closed flow kept for the established lifetime, or a half-close forgotten). An
        // atomic OR (BPF_ATOMIC | BPF_OR) on the aligned word holding the flags keeps every
        // bit; the word's other bytes (address, port, kind) are ORed with zero and never change.
        // SAFETY: the word lies inside the entry (checked by the common crate's const asserts)
        // and is 8-aligned (map values are 8-aligned, the offset is a multiple of 8); no
        // access to it is non-atomic while another CPU ORs into it, except whole-entry
        // replacements, which the map makes into new elements.
        let before = unsafe {
            let word = entry.cast::<u8>().add(CT_FLAGS_WORD_OFFSET).cast::<u64>();
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(word, ct_flags_word_bits(seen))
        };
        return ct_flags_from_word(before);
    }
    // SAFETY: as above.
    unsafe { (*entry).tcp_flags }
}

/// A conntrack entry and the table it was found in.
#[derive(Clone, Copy)]
struct Found {
    ptr: *mut CtValue,
    established: bool,
}

impl Found {
    /// A copy of the entry.
    #[inline(always)]
    fn value(&self) -> CtValue {
        // SAFETY: the pointer comes from a successful lookup in this program run.
        unsafe { *self.ptr }
    }
}

/// The entry for `key`: the established table first, then the short-lived one. (A new flow
/// removes a finished established entry under its keys, so none hides its entries.)
#[inline(always)]
fn ct_find(key: &CtKey) -> Option<Found> {
    if let Some(ptr) = CT_ESTABLISHED.get_ptr_mut(key) {
        return Some(Found {
            ptr,
            established: true,
        });
    }
    CONNTRACK.get_ptr_mut(key).map(|ptr| Found {
        ptr,
        established: false,
    })
}

/// A copy of the entry for `key`, from whichever table holds it.
#[inline(always)]
fn ct_get(key: &CtKey) -> Option<CtValue> {
    ct_find(key).map(|f| f.value())
}

/// Removes `key` from both tables (best effort: it may already be gone).
#[inline(always)]
fn ct_remove(key: &CtKey) {
    let _ = CT_ESTABLISHED.remove(key);
    let _ = CONNTRACK.remove(key);
}

/// After a packet of a flow: refreshes `entry` (keyed `key`) and the flow's other half, if
/// found, and moves each half to the short-lived table if this packet closed the flow. Each
/// half's atomic OR tells whether it was this packet that closed it, so of two CPUs handling
/// the last FIN each way at once, exactly one moves each half.
#[inline(always)]
fn touch(
    entry: Found,
    key: &CtKey,
    partner: Option<(Found, CtKey)>,
    proto: u8,
    seen: u8,
    now: u64,
) {
    let before = refresh(entry.ptr, seen, now);
    if closes(proto, before, seen) {
        demote(entry, key);
    }
    if let Some((p, k)) = partner {
        let before = refresh(p.ptr, seen, now);
        if closes(proto, before, seen) {
            demote(p, &k);
        }
    }
}

/// Whether marking `seen` on flags `before` closes a TCP flow.
#[inline(always)]
fn closes(proto: u8, before: u8, seen: u8) -> bool {
    proto == IPPROTO_TCP && !tcp_closed(before) && tcp_closed(before | seen)
}

/// Moves an entry of a closed flow from the established table to the short-lived one (where
/// it still translates the last segments and retransmissions, until it expires or is
/// evicted). An entry holding a NodePort source port stays: the port is not free before the
/// backend's TIME_WAIT is over, and the collector removes it then.
#[inline(always)]
fn demote(entry: Found, key: &CtKey) -> bool {
    if !entry.established {
        return false;
    }
    let v = entry.value();
    if holds_snat_port(&v) {
        return false;
    }
    // Insert before removing: a lookup on another CPU always finds one of the two.
    if CONNTRACK.insert(key, v, BPF_ANY as u64).is_err() {
        // Left where it is; the collector removes it once it expires.
        return false;
    }
    let _ = CT_ESTABLISHED.remove(key);
    if v.kind == CT_FORWARD {
        count_event(CtEvent::Closed);
    }
    true
}

/// Moves a flow that completed its handshake (its forward entry `entry`, keyed `key`, in the
/// short-lived table) to the established table, with its reverse half. If the established
/// table is full, the flow stays where it is (counted) and keeps working there.
#[inline(always)]
fn promote(
    entry: Found,
    key: &CtKey,
    reverse_key: &CtKey,
    ip: &Ipv4Info,
    l4: &L4Info,
    seen: u8,
    now: u64,
) -> Result<(), DropReason> {
    let mut forward = entry.value();
    forward.tcp_flags |= seen | CT_ASSURED;
    forward.last_seen_ns = now;
    let snat = holds_snat_port_of(&forward);
    let reverse = CONNTRACK
        .get_ptr_mut(reverse_key)
        // SAFETY: valid pointer from a successful lookup.
        .filter(|r| !snat && owns_reverse(unsafe { &**r }, ip, l4));
    if CT_ESTABLISHED.insert(key, forward, BPF_ANY as u64).is_err() {
        stay_unprotected(entry, reverse, seen, now);
        return Ok(());
    }
    if snat {
        // The reverse half holding its source port is in the established table from the start.
        if let Some(r) = CT_ESTABLISHED.get_ptr_mut(reverse_key) {
            refresh(r, seen | CT_ASSURED, now);
        }
    } else {
        let moved = match reverse {
            Some(r) => {
                // SAFETY: as above.
                let mut v = unsafe { *r };
                v.tcp_flags |= seen | CT_ASSURED;
                v.last_seen_ns = now;
                CT_ESTABLISHED.insert(reverse_key, v, BPF_ANY as u64)
            }
            None => {
                count_event(CtEvent::HalfRestored);
                CT_ESTABLISHED.insert(
                    reverse_key,
                    reverse_of(&forward, ip, l4, now),
                    BPF_ANY as u64,
                )
            }
        };
        if moved.is_err() {
            // Both halves or neither.
            let _ = CT_ESTABLISHED.remove(key);
            stay_unprotected(entry, reverse, seen, now);
            return Ok(());
        }
        if let Some(r) = reverse {
            // A FIN or RST another CPU marked on the old copy since it was read is not lost.
            // SAFETY: as above.
            let late = unsafe { (*r).tcp_flags } & !(forward.tcp_flags | seen);
            let _ = CONNTRACK.remove(reverse_key);
            carry_late_flags(reverse_key, late, ip.proto, now);
        }
    }
    let late = entry.value().tcp_flags & !forward.tcp_flags;
    let _ = CONNTRACK.remove(key);
    carry_late_flags(key, late, ip.proto, now);
    count_event(CtEvent::Established);
    Ok(())
}

/// Marks on a just-promoted entry the flags another CPU set on its old copy meanwhile (and
/// moves it back if they closed the flow).
#[inline(always)]
fn carry_late_flags(key: &CtKey, late: u8, proto: u8, now: u64) {
    if late != 0
        && let Some(ptr) = CT_ESTABLISHED.get_ptr_mut(key)
        && closes(proto, refresh(ptr, late, now), late)
    {
        let established = true;
        demote(Found { ptr, established }, key);
    }
}

/// The established table is full: the assured flow stays in the short-lived one, marked so it
/// tries again at most once a second, and assured, so that it ages as an established flow.
#[inline(always)]
fn stay_unprotected(entry: Found, reverse: Option<*mut CtValue>, seen: u8, now: u64) {
    if entry.value().tcp_flags & CT_PROMOTE_FAILED == 0 {
        count_event(CtEvent::EstablishedFull);
    }
    refresh(entry.ptr, seen | CT_ASSURED | CT_PROMOTE_FAILED, now);
    if let Some(r) = reverse {
        refresh(r, seen | CT_ASSURED, now);
    }
}

/// Whether a forward entry's flow holds a NodePort source port (it is translated at both ends).
#[inline(always)]
fn holds_snat_port_of(forward: &CtValue) -> bool {
    forward.alt_addr != 0
}

/// Takes over a finished entry: only the CPU whose compare-and-swap of `last_seen_ns` from
/// the value it read succeeds may rewrite it, so two CPUs never both take it.
#[inline(always)]
fn claim(entry: *mut CtValue, read: &CtValue, now: u64) -> bool {
    // SAFETY: `entry` comes from a successful lookup in this program run; `last_seen_ns` is an
    // aligned u64 inside it.
    let (_, won) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*entry).last_seen_ns,
            read.last_seen_ns,
            now,
        )
    };
    won
}

#[inline(always)]
fn count_event(event: CtEvent) {
    if let Some(c) = CT_EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: per-CPU slot, valid for this program run.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn track_fragment(
    ip: &Ipv4Info,
    dir: u8,
    nat_addr: u32,
    service_id: u32,
    alt_addr: u32,
) -> Result<(), DropReason> {
    let key = FragKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        id: ip.id,
        proto: ip.proto,
        dir,
    };
    let value = FragValue {
        created_ns: now_ns(),
        nat_addr,
        service_id,
        alt_addr,
        _pad: 0,
    };
    FRAGMENTS
        .insert(key, value, BPF_ANY as u64)
        .map_err(|_| DropReason::FragmentInsert)
}

#[inline(always)]
fn lookup_fragment(ip: &Ipv4Info, dir: u8) -> Option<FragValue> {
    let key = FragKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        id: ip.id,
        proto: ip.proto,
        dir,
    };
    // SAFETY: copied out at once.
    let v = unsafe { FRAGMENTS.get(key) }.copied()?;
    if now_ns().saturating_sub(v.created_ns) > timeouts::FRAGMENT_NS {
        return None;
    }
    Some(v)
}

/// A non-first fragment carries no ports: translate it as its first fragment was.
#[inline(always)]
fn forward_later_fragment(ctx: &TcContext, ip: &Ipv4Info) -> Result<i32, DropReason> {
    let hairpin = HAIRPIN_ADDR.load();
    if ip.daddr == hairpin {
        // A later fragment of a pod's reply to a hairpin flow.
        let f = lookup_fragment(ip, CT_REVERSE).ok_or(DropReason::FragmentUntracked)?;
        packet::rewrite_addr_only(ctx, IP_SADDR_OFF, ip.saddr, f.nat_addr)?;
        packet::rewrite_addr_only(ctx, IP_DADDR_OFF, ip.daddr, ip.saddr)?;
        count_traffic(ctx, f.service_id, true);
        return packet::bounce(ctx);
    }
    match lookup_fragment(ip, CT_FORWARD) {
        Some(f) => {
            packet::rewrite_addr_only(ctx, IP_DADDR_OFF, ip.daddr, f.nat_addr)?;
            count_traffic(ctx, f.service_id, false);
            if f.nat_addr == ip.saddr {
                // Of a hairpin flow: from the hairpin address, back to the pod.
                packet::rewrite_addr_only(ctx, IP_SADDR_OFF, ip.saddr, hairpin)?;
                return packet::bounce(ctx);
            }
            Ok(TC_OK)
        }
        None if is_service_addr(ip.daddr) => Err(DropReason::FragmentUntracked),
        None => Ok(TC_OK),
    }
}

#[inline(always)]
fn reverse_later_fragment(ctx: &TcContext, ip: &Ipv4Info) -> Result<i32, DropReason> {
    if let Some(f) = lookup_fragment(ip, CT_REVERSE) {
        packet::rewrite_addr_only(ctx, IP_SADDR_OFF, ip.saddr, f.nat_addr)?;
        count_traffic(ctx, f.service_id, true);
    }
    Ok(TC_OK)
}

/// Whether `addr` is a service address: in the Service CIDR, or the VIP of some service (the
/// agent keeps a port-0 marker per VIP). Used only off the hot path.
#[inline(always)]
fn is_service_addr(addr: u32) -> bool {
    let key = ServiceKey {
        addr,
        port: 0,
        proto: 0,
        _pad: 0,
    };
    in_service_cidr(addr) || SERVICES.get_ptr(key).is_some()
}

#[inline(always)]
fn in_service_cidr(addr: u32) -> bool {
    addr & SERVICE_CIDR_MASK.load() == SERVICE_CIDR_ADDR.load()
}

/// Counts this packet against a service: as client traffic, or as a reply.
#[inline(always)]
fn count_traffic(ctx: &TcContext, service_id: u32, reply: bool) {
    let (segs, bytes) = packet::size(ctx);
    update_counters(service_id, |c| {
        if reply {
            c.reply_packets += segs;
            c.reply_bytes += bytes;
        } else {
            c.packets += segs;
            c.bytes += bytes;
        }
    });
}

#[inline(always)]
fn update_counters(service_id: u32, f: impl FnOnce(&mut ServiceCounters)) {
    if let Some(c) = SVC_COUNTERS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        f(unsafe { &mut *c });
    }
}

#[inline(always)]
pub(crate) fn count_drop(reason: DropReason) {
    if let Some(c) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
