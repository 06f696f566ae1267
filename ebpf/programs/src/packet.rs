//! Packet parsing and rewriting: bounds-checked header access, NAT with checksum fix-ups, and
//! the ICMP port-unreachable reply that refuses a flow.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, TC_ACT_SHOT, bpf_fib_lookup as FibLookup,
        bpf_redir_neigh as RedirNeigh,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail},
    programs::TcContext,
};
use skiff_common::{DropReason, IPPROTO_TCP, csum};

pub(crate) const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
pub(crate) const IP_SADDR_OFF: usize = ETH_HLEN + 12;
pub(crate) const IP_DADDR_OFF: usize = ETH_HLEN + 16;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
/// The most the parser needs in the linear area: Ethernet, IPv4 with options, and either a TCP
/// header or an ICMP error quoting an IPv4 header and 8 bytes of its payload.
const MAX_HEADERS: u32 = (ETH_HLEN + 60 + 8 + 20 + 8) as u32;

pub(crate) const IPPROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;

/// `Ipv4Info::frag`: not a fragment.
pub(crate) const FRAG_NONE: u8 = 0;
/// The first fragment (offset 0, more fragments): carries the L4 header.
pub(crate) const FRAG_FIRST: u8 = 1;
/// A later fragment: no L4 header.
pub(crate) const FRAG_LATER: u8 = 2;

const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

#[repr(C)]
#[derive(Clone, Copy)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHdr {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    doff_reserved: u8,
    flags: u8,
    window: u16,
    check: u16,
    urg: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UdpHdr {
    sport: u16,
    dport: u16,
    len: u16,
    check: u16,
}

/// What the programs need of an IPv4 header (addresses and ID in network byte order).
#[derive(Clone, Copy)]
pub(crate) struct Ipv4Info {
    pub(crate) saddr: u32,
    pub(crate) daddr: u32,
    pub(crate) proto: u8,
    pub(crate) id: u16,
    /// Header length in bytes (20 without options).
    pub(crate) hdr_len: usize,
    pub(crate) frag: u8,
}

impl Ipv4Info {
    #[inline(always)]
    fn l4_off(&self) -> usize {
        ETH_HLEN + self.hdr_len
    }
}

/// Ports (network byte order) and, for TCP, the flags byte.
#[derive(Clone, Copy)]
pub(crate) struct L4Info {
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) tcp_flags: u8,
}

/// An ICMP error and the packet it quotes (addresses and ports in network byte order).
#[derive(Clone, Copy)]
pub(crate) struct IcmpError {
    icmp_off: usize,
    pub(crate) saddr: u32,
    pub(crate) daddr: u32,
    pub(crate) proto: u8,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    check: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    rest: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ports {
    sport: u16,
    dport: u16,
}

/// A pointer to a `T` at `off` in the packet's linear data, if it lies wholly inside it.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Like `ptr_at`, but first pulls non-linear data into the linear area when the header is not
/// there yet (GSO and paged skbs).
#[inline(always)]
fn header_at<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    if let Some(p) = ptr_at::<T>(ctx, off) {
        // SAFETY: bounds checked against data_end just above.
        return Some(unsafe { *p });
    }
    let want = ctx.len().min(MAX_HEADERS);
    if (off + size_of::<T>()) as u32 > want || ctx.pull_data(want).is_err() {
        return None;
    }
    // SAFETY: bounds checked again after the pull moved the data pointers.
    ptr_at::<T>(ctx, off).map(|p| unsafe { *p })
}

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
/// Offset of an IPv6 header's destination address.
const IPV6_DADDR_OFF: usize = ETH_HLEN + 24;

/// Whether a frame that is not IPv4 may leave a pod: ARP (the pod resolves its gateway), and
/// IPv6 to a link-local or link-scoped multicast destination (the pod kernel's neighbour
/// discovery and multicast reports), which never leaves the link. Anything else (IPv6 that
/// could be routed, a frame still carrying a VLAN tag after the kernel took the outer one, any
/// other protocol) is dropped: Skiff's pod network carries IPv4 only, and a frame the datapath
/// cannot read could carry a forged source past its check.
#[inline(always)]
pub(crate) fn pod_may_send_non_ipv4(ctx: &TcContext) -> bool {
    let Some(eth) = header_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    if eth.proto == ETH_P_ARP.to_be() {
        return true;
    }
    if eth.proto != ETH_P_IPV6.to_be() {
        return false;
    }
    let Some(dst) = header_at::<[u8; 2]>(ctx, IPV6_DADDR_OFF) else {
        return false;
    };
    // fe80::/10, or ff02::/16 (multicast with link-local scope).
    (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80) || (dst[0] == 0xff && dst[1] & 0x0f == 0x02)
}

/// Parses the IPv4 header. `Ok(None)` for packets that are not IPv4 (ARP, IPv6), which the
/// datapath leaves alone; an error for an IPv4 header that is truncated or inconsistent.
#[inline(always)]
pub(crate) fn parse_ipv4(ctx: &TcContext) -> Result<Option<Ipv4Info>, DropReason> {
    let Some(eth) = header_at::<EthHdr>(ctx, 0) else {
        return Ok(None);
    };
    if eth.proto != ETH_P_IP.to_be() {
        return Ok(None);
    }
    let ip = header_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(DropReason::MalformedIpv4)?;
    let hdr_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be(ip.tot_len) as usize;
    // A GSO aggregate over 64 KiB (BIG TCP) carries a total length of 0.
    // SAFETY: reading a field of the context the kernel passed in.
    let big_gso = tot_len == 0 && unsafe { (*ctx.skb.skb).gso_size } != 0;
    if ip.version_ihl >> 4 != 4
        || hdr_len < 20
        || (!big_gso && (tot_len < hdr_len || ETH_HLEN + tot_len > ctx.len() as usize))
    {
        return Err(DropReason::MalformedIpv4);
    }
    let frag_off = u16::from_be(ip.frag_off);
    let frag = if frag_off & IP_OFFSET_MASK != 0 {
        FRAG_LATER
    } else if frag_off & IP_MF != 0 {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    Ok(Some(Ipv4Info {
        saddr: ip.saddr,
        daddr: ip.daddr,
        proto: ip.proto,
        id: ip.id,
        hdr_len,
        frag,
    }))
}

/// Reads the ports (and TCP flags). `None` when the header is truncated or, for TCP, its data
/// offset is impossible.
#[inline(always)]
pub(crate) fn parse_l4(ctx: &TcContext, ip: &Ipv4Info) -> Option<L4Info> {
    // The verifier needs the variable offset bounded: the IPv4 header is at most 60 bytes.
    let off = ip.l4_off();
    if off > ETH_HLEN + 60 {
        return None;
    }
    if ip.proto == IPPROTO_TCP {
        let tcp = header_at::<TcpHdr>(ctx, off)?;
        if tcp.doff_reserved >> 4 < 5 {
            return None;
        }
        Some(L4Info {
            sport: tcp.sport,
            dport: tcp.dport,
            tcp_flags: tcp.flags,
        })
    } else {
        let udp = header_at::<UdpHdr>(ctx, off)?;
        Some(L4Info {
            sport: udp.sport,
            dport: udp.dport,
            tcp_flags: 0,
        })
    }
}

/// Parses an ICMP error (destination unreachable, time exceeded, parameter problem) that quotes
/// a TCP or UDP packet with a plain 20-byte header. `None` for anything else.
#[inline(always)]
pub(crate) fn parse_icmp_error(ctx: &TcContext, ip: &Ipv4Info) -> Option<IcmpError> {
    let off = ip.l4_off();
    // Bounded for the verifier: the outer header is at most 60 bytes.
    if off > ETH_HLEN + 60 {
        return None;
    }
    let icmp = header_at::<IcmpHdr>(ctx, off)?;
    if !matches!(
        icmp.kind,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    ) {
        return None;
    }
    let inner = header_at::<Ipv4Hdr>(ctx, off + 8)?;
    if inner.version_ihl != 0x45
        || (inner.proto != IPPROTO_TCP && inner.proto != skiff_common::IPPROTO_UDP)
        || u16::from_be(inner.frag_off) & IP_OFFSET_MASK != 0
    {
        return None;
    }
    let ports = header_at::<Ports>(ctx, off + 8 + 20)?;
    Some(IcmpError {
        icmp_off: off,
        saddr: inner.saddr,
        daddr: inner.daddr,
        proto: inner.proto,
        sport: ports.sport,
        dport: ports.dport,
        check: inner.check,
    })
}

/// Which end of the quoted packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quoted {
    Source,
    Destination,
}

/// Translates an ICMP error as its flow is translated: rewrites one end of the quoted packet
/// (keeping the quoted IPv4 checksum and the ICMP checksum right) and, when given, one address
/// of the outer header. `e` follows the rewrite, so a second call can translate the other end
/// (a NodePort flow translated at both ends).
#[inline(always)]
pub(crate) fn rewrite_icmp_error(
    ctx: &TcContext,
    e: &mut IcmpError,
    end: Quoted,
    addr: u32,
    port: u16,
    outer: Option<(usize, u32, u32)>,
) -> Result<(), DropReason> {
    let err = |_| DropReason::RewriteFailed;
    let inner = e.icmp_off + 8;
    let (addr_off, old_addr, port_off, old_port) = match end {
        Quoted::Source => (inner + 12, e.saddr, inner + 20, e.sport),
        Quoted::Destination => (inner + 16, e.daddr, inner + 22, e.dport),
    };
    let icmp_csum = e.icmp_off + 2;
    // The quoted header's own checksum, updated in software (no helper reaches inside it).
    let new_check = csum::update32(
        u16::from_be(e.check),
        u32::from_be(old_addr),
        u32::from_be(addr),
    )
    .to_be();
    // The ICMP checksum covers the quoted bytes (no pseudo-header): account for all three.
    ctx.l4_csum_replace(icmp_csum, old_addr as u64, addr as u64, 4)
        .map_err(err)?;
    ctx.l4_csum_replace(icmp_csum, old_port as u64, port as u64, 2)
        .map_err(err)?;
    ctx.l4_csum_replace(icmp_csum, e.check as u64, new_check as u64, 2)
        .map_err(err)?;
    ctx.store(addr_off, &addr, 0).map_err(err)?;
    ctx.store(port_off, &port, 0).map_err(err)?;
    ctx.store(inner + 10, &new_check, 0).map_err(err)?;
    match end {
        Quoted::Source => (e.saddr, e.sport) = (addr, port),
        Quoted::Destination => (e.daddr, e.dport) = (addr, port),
    }
    e.check = new_check;
    if let Some((off, old, new)) = outer {
        rewrite_addr_only(ctx, off, old, new)?;
    }
    Ok(())
}

/// (segments, IPv4 bytes) of this skb, for the counters.
#[inline(always)]
pub(crate) fn size(ctx: &TcContext) -> (u64, u64) {
    // SAFETY: reading a field of the context the kernel passed in.
    let segs = unsafe { (*ctx.skb.skb).gso_segs }.max(1) as u64;
    let bytes = (ctx.len() as u64).saturating_sub(ETH_HLEN as u64);
    (segs, bytes)
}

/// Rewrites the destination address and port (DNAT), fixing the IPv4 and L4 checksums.
#[inline(always)]
pub(crate) fn rewrite_dst(
    ctx: &TcContext,
    ip: &Ipv4Info,
    l4: &L4Info,
    addr: u32,
    port: u16,
) -> Result<(), DropReason> {
    rewrite(ctx, ip, IP_DADDR_OFF, ip.daddr, addr, 2, l4.dport, port)
}

/// Rewrites the source address and port (reverse NAT), fixing the IPv4 and L4 checksums.
#[inline(always)]
pub(crate) fn rewrite_src(
    ctx: &TcContext,
    ip: &Ipv4Info,
    l4: &L4Info,
    addr: u32,
    port: u16,
) -> Result<(), DropReason> {
    rewrite(ctx, ip, IP_SADDR_OFF, ip.saddr, addr, 0, l4.sport, port)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one rewrite, both directions; the callers name the fields"
)]
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    ip: &Ipv4Info,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    port_off_in_l4: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), DropReason> {
    let l4_off = ip.l4_off();
    // TCP's checksum is at offset 16, UDP's at 6; a UDP checksum of zero means "none" and must
    // stay zero, which BPF_F_MARK_MANGLED_0 takes care of.
    let (csum_off, mangled) = if ip.proto == IPPROTO_TCP {
        (l4_off + 16, 0)
    } else {
        (l4_off + 6, BPF_F_MARK_MANGLED_0 as u64)
    };
    let err = |_| DropReason::RewriteFailed;
    if old_addr != new_addr {
        // The address is part of the L4 pseudo-header.
        ctx.l4_csum_replace(
            csum_off,
            old_addr as u64,
            new_addr as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .map_err(err)?;
        ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, new_addr as u64, 4)
            .map_err(err)?;
        ctx.store(addr_off, &new_addr, 0).map_err(err)?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(csum_off, old_port as u64, new_port as u64, mangled | 2)
            .map_err(err)?;
        ctx.store(l4_off + port_off_in_l4, &new_port, 0)
            .map_err(err)?;
    }
    Ok(())
}

/// Rewrites only an address of the IPv4 header (later fragments carry no L4 header; the L4
/// checksum was fixed in the first fragment).
#[inline(always)]
pub(crate) fn rewrite_addr_only(
    ctx: &TcContext,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
) -> Result<(), DropReason> {
    let err = |_| DropReason::RewriteFailed;
    ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, new_addr as u64, 4)
        .map_err(err)?;
    ctx.store(addr_off, &new_addr, 0).map_err(err)
}

/// Refuses a flow as kube-proxy's REJECT does: turns the packet into an ICMP port unreachable
/// from the VIP to the client and sends it back out of the interface it came in on. Counted
/// under `reason`; a failure to build the reply is counted as `RejectFailed` and dropped.
#[inline(always)]
pub(crate) fn reject(
    ctx: &TcContext,
    ip: &Ipv4Info,
    reason: DropReason,
) -> Result<i32, DropReason> {
    crate::programs::count_drop(reason);
    // The quoted header must be the whole original header; with options it would not fit the
    // fixed-size reply built here, and such requests are rare enough to just drop.
    if ip.hdr_len != 20 {
        return Err(DropReason::RejectFailed);
    }
    let err = |_| DropReason::RejectFailed;
    // The original IPv4 header and the first 8 bytes of its payload (parse_l4 has seen them).
    let quoted: [u8; 28] = ctx.load(ETH_HLEN).map_err(err)?;

    const REPLY_LEN: usize = 20 + 8 + 28;
    let mut out = [0u8; REPLY_LEN];
    out[0] = 0x45;
    out[1] = 0xc0; // precedence "internetwork control", as the kernel's own ICMP errors
    out[2..4].copy_from_slice(&(REPLY_LEN as u16).to_be_bytes());
    out[8] = 64; // TTL
    out[9] = IPPROTO_ICMP;
    out[12..16].copy_from_slice(&ip.daddr.to_ne_bytes());
    out[16..20].copy_from_slice(&ip.saddr.to_ne_bytes());
    let ip_csum = csum::finish(csum::add_bytes(0, &out[..20]));
    out[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    out[20] = ICMP_DEST_UNREACH;
    out[21] = 3; // port unreachable
    out[28..].copy_from_slice(&quoted);
    let icmp_csum = csum::finish(csum::add_bytes(0, &out[20..]));
    out[22..24].copy_from_slice(&icmp_csum.to_be_bytes());
    send_back(ctx, &out)
}

/// Ends a TCP connection the datapath can no longer carry (its backend was removed): turns the
/// client's segment into a reset from the address it was sent to, with the sequence number the
/// client expects next (the segment's acknowledgement number), so the client's socket closes at
/// once instead of retransmitting into a void. Counted under `reason`. A reset is never
/// answered with a reset, and a segment without ACK (only a SYN would be one, and SYNs choose
/// a new backend instead) is just dropped.
#[inline(always)]
pub(crate) fn reset_tcp(
    ctx: &TcContext,
    ip: &Ipv4Info,
    l4: &L4Info,
    reason: DropReason,
) -> Result<i32, DropReason> {
    crate::programs::count_drop(reason);
    if l4.tcp_flags & TCP_RST != 0 || l4.tcp_flags & TCP_ACK == 0 {
        return Ok(TC_ACT_SHOT);
    }
    send_reset(ctx, ip, l4)
}

/// Refuses a new flow to a service address that cannot take it (no such service port, no
/// backend), counted under `reason`. A TCP SYN gets a reset, as a closed port answers: the
/// client's connect() fails at once. An ICMP port unreachable would do the same only when the
/// client's socket is not busy; arriving while connect() still holds it (a reply made in the
/// same softirq as the SYN's transmission can), Linux takes it as a soft error and waits for the
/// SYN's retransmission, a second later. Everything else gets the ICMP error.
#[inline(always)]
pub(crate) fn refuse(
    ctx: &TcContext,
    ip: &Ipv4Info,
    l4: &L4Info,
    reason: DropReason,
) -> Result<i32, DropReason> {
    if ip.proto == IPPROTO_TCP && l4.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN {
        crate::programs::count_drop(reason);
        return send_reset(ctx, ip, l4);
    }
    reject(ctx, ip, reason)
}

/// Turns the TCP segment into a reset from its destination: for a segment with ACK, sequence
/// number = its acknowledgement number; for a SYN, RST+ACK acknowledging the SYN.
#[inline(always)]
fn send_reset(ctx: &TcContext, ip: &Ipv4Info, l4: &L4Info) -> Result<i32, DropReason> {
    let off = ip.l4_off();
    // Bounded for the verifier: the IPv4 header is at most 60 bytes.
    if off > ETH_HLEN + 60 {
        return Err(DropReason::RejectFailed);
    }
    let tcp = header_at::<TcpHdr>(ctx, off).ok_or(DropReason::RejectFailed)?;

    const REPLY_LEN: usize = 20 + 20;
    let mut out = [0u8; REPLY_LEN];
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(REPLY_LEN as u16).to_be_bytes());
    out[6] = 0x40; // don't fragment
    out[8] = 64; // TTL
    out[9] = IPPROTO_TCP;
    out[12..16].copy_from_slice(&ip.daddr.to_ne_bytes());
    out[16..20].copy_from_slice(&ip.saddr.to_ne_bytes());
    let ip_csum = csum::finish(csum::add_bytes(0, &out[..20]));
    out[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    out[20..22].copy_from_slice(&l4.dport.to_ne_bytes());
    out[22..24].copy_from_slice(&l4.sport.to_ne_bytes());
    out[32] = 5 << 4; // data offset: 20 bytes, no options
    if l4.tcp_flags & TCP_ACK != 0 {
        out[24..28].copy_from_slice(&tcp.ack.to_ne_bytes());
        out[33] = TCP_RST;
    } else {
        // A SYN: sequence number 0, acknowledging the SYN (RFC 9293, a closed port's reply).
        let ack = u32::from_be(tcp.seq).wrapping_add(1);
        out[28..32].copy_from_slice(&ack.to_be_bytes());
        out[33] = TCP_RST | TCP_ACK;
    }
    // Pseudo-header (addresses, protocol, TCP length), then the header itself.
    let mut sum = csum::add_bytes(0, &out[12..20]);
    sum += IPPROTO_TCP as u64 + 20;
    sum = csum::add_bytes(sum, &out[20..]);
    out[36..38].copy_from_slice(&csum::finish(sum).to_be_bytes());
    send_back(ctx, &out)
}

/// Replaces the packet by `out` (a whole IPv4 packet) and sends it back out of the interface it
/// came in on, Ethernet addresses swapped.
#[inline(always)]
fn send_back<const N: usize>(ctx: &TcContext, out: &[u8; N]) -> Result<i32, DropReason> {
    let err = |_| DropReason::RejectFailed;
    // SAFETY: the helper takes the context the kernel passed in.
    let ret = unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + N) as u32, 0) };
    if ret != 0 {
        return Err(DropReason::RejectFailed);
    }
    ctx.store(ETH_HLEN, out, 0).map_err(err)?;
    bounce(ctx).map_err(|_| DropReason::RejectFailed)
}

/// Sends the packet back out of the interface it came in on (to the pod that sent it), with the
/// Ethernet addresses swapped so the pod accepts it as addressed to it. Skips the node's
/// routing, which would refuse a hairpin packet (its source, the hairpin address, has no route).
#[inline(always)]
pub(crate) fn bounce(ctx: &TcContext) -> Result<i32, DropReason> {
    let err = |_| DropReason::RewriteFailed;
    let eth: EthHdr = ctx.load(0).map_err(err)?;
    let swapped = EthHdr {
        dst: eth.src,
        src: eth.dst,
        proto: eth.proto,
    };
    ctx.store(0, &swapped, 0).map_err(err)?;
    // SAFETY: reading a field of the context the kernel passed in; the helper takes plain
    // values. Egress of the interface the packet arrived on leads back to the pod.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let ret = unsafe { bpf_redirect(ifindex, 0) };
    if ret != TC_ACT_REDIRECT as i64 {
        return Err(DropReason::RewriteFailed);
    }
    Ok(TC_ACT_REDIRECT)
}

const AF_INET: u8 = 2;

/// The interface (index) and next hop (network byte order) through which the node routes
/// `daddr`, as the kernel would for a packet from `saddr` arriving where this one did. An error
/// (`NoRoute`) when the node has no usable route.
#[inline(always)]
pub(crate) fn route(ctx: &TcContext, saddr: u32, daddr: u32) -> Result<(u32, u32), DropReason> {
    // SAFETY: a plain C struct of integers, for which all zeroes is valid.
    let mut p: FibLookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.__bindgen_anon_3.ipv4_src = saddr;
    p.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: reading a field of the context the kernel passed in.
    p.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the helper gets the context and a pointer to a stack struct of the size given.
    let rc =
        unsafe { bpf_fib_lookup(ctx.skb.skb.cast(), &mut p, size_of::<FibLookup>() as i32, 0) };
    // A neighbour not resolved yet is fine: the redirect resolves it.
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Err(DropReason::NoRoute);
    }
    // SAFETY: after a lookup the destination field holds the next hop (the gateway, or the
    // destination itself when it is on a connected network).
    Ok((p.ifindex, unsafe { p.__bindgen_anon_4.ipv4_dst }))
}

/// Sends the packet (already translated) out the way the node routes `daddr`, with Ethernet
/// addresses from the neighbour table (resolved if needed). For packets whose source is the
/// node's own address, which the node's input path would drop as martians.
#[inline(always)]
pub(crate) fn redirect_routed(ctx: &TcContext, saddr: u32, daddr: u32) -> Result<i32, DropReason> {
    let (ifindex, next_hop) = route(ctx, saddr, daddr)?;
    // SAFETY: as above.
    let mut nh: RedirNeigh = unsafe { core::mem::zeroed() };
    nh.nh_family = AF_INET as u32;
    nh.__bindgen_anon_1.ipv4_nh = next_hop;
    // SAFETY: the helper reads the struct of the size given.
    let ret = unsafe { bpf_redirect_neigh(ifindex, &mut nh, size_of::<RedirNeigh>() as i32, 0) };
    if ret != TC_ACT_REDIRECT as i64 {
        return Err(DropReason::RewriteFailed);
    }
    Ok(TC_ACT_REDIRECT)
}
