//! A small synchronous rtnetlink client: one request at a time over a `NETLINK_ROUTE` socket.
//!
//! A socket stays bound to the network namespace of the thread that opened it, so a
//! [`Netlink`] opened inside [`crate::netns::run_in`] talks to that namespace for its whole life.
//!
//! Requests carry `NLM_F_REQUEST | NLM_F_ACK`; an error ack becomes an [`io::Error`] whose inner
//! error is a [`NetlinkError`] (errno, what was attempted, and the kernel's extended-ack message
//! when it sent one). Dumps collect every part until `NLMSG_DONE` and are retried when the kernel
//! flags them as interrupted (`NLM_F_DUMP_INTR`: the table changed while it was being read).

use std::{fmt, io, net::Ipv4Addr, os::fd::RawFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressScope},
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use rustix::io::Errno;

/// `recv(2)` flags (Linux values; `libc` is not a direct dependency of the agent).
const MSG_PEEK: i32 = 0x02;
const MSG_TRUNC: i32 = 0x20;
/// Header flags of an ack: the echoed request is only its header, and TLVs follow it.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
/// Set on the parts of a dump that raced with a change of the table.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLMSGERR_ATTR_MSG`: the extended ack's human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
/// How often an interrupted dump is read again before giving up.
const DUMP_ATTEMPTS: usize = 5;

/// The main routing table.
pub(crate) const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// A request the kernel refused.
#[derive(Debug)]
pub(crate) struct NetlinkError {
    /// The positive errno of the error ack.
    pub(crate) errno: i32,
    /// What was attempted, for the person reading the error.
    pub(crate) what: String,
    /// The kernel's extended-ack message, if it sent one.
    pub(crate) kernel: Option<String>,
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.what,
            io::Error::from_raw_os_error(self.errno)
        )?;
        if let Some(msg) = &self.kernel {
            write!(f, " (kernel: {msg})")?;
        }
        Ok(())
    }
}

impl std::error::Error for NetlinkError {}

impl From<NetlinkError> for io::Error {
    fn from(e: NetlinkError) -> io::Error {
        io::Error::new(io::Error::from_raw_os_error(e.errno).kind(), e)
    }
}

/// The errno behind `e`: an OS error's, or a [`NetlinkError`]'s.
pub(crate) fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<NetlinkError>())
            .map(|n| n.errno)
    })
}

/// Whether `e` carries the errno `code`.
pub(crate) fn is(e: &io::Error, code: Errno) -> bool {
    errno(e) == Some(code.raw_os_error())
}

fn with_context(what: &str) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// What the agent needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) up: bool,
    pub(crate) mtu: Option<u32>,
    /// `IFLA_INFO_KIND` ("veth", ...), if the link has one.
    pub(crate) kind: Option<InfoKind>,
    /// `IFLA_LINK`: for a veth, the ifindex of its peer (in the peer's namespace).
    pub(crate) peer_index: Option<u32>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            up: msg.header.flags.contains(LinkFlags::Up),
            mtu: None,
            kind: None,
            peer_index: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::Link(peer) => link.peer_index = Some(*peer),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// Whether the link is a veth.
    pub(crate) fn is_veth(&self) -> bool {
        self.kind == Some(InfoKind::Veth)
    }
}

/// An IPv4 route as the agent reads and writes it (single next hop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) dst: Ipv4Addr,
    pub(crate) prefix: u8,
    pub(crate) gateway: Option<Ipv4Addr>,
    pub(crate) oif: Option<u32>,
    pub(crate) kind: RouteType,
    pub(crate) scope: RouteScope,
    pub(crate) protocol: RouteProtocol,
    pub(crate) table: u32,
    /// The route has several next hops (never one the agent made).
    pub(crate) multipath: bool,
}

impl Route {
    /// A unicast route in the main table.
    pub(crate) fn unicast(dst: Ipv4Addr, prefix: u8, protocol: RouteProtocol) -> Route {
        Route {
            dst,
            prefix,
            gateway: None,
            oif: None,
            kind: RouteType::Unicast,
            scope: RouteScope::Universe,
            protocol,
            table: RT_TABLE_MAIN,
            multipath: false,
        }
    }

    fn from_message(msg: &RouteMessage) -> Option<Route> {
        if msg.header.address_family != AddressFamily::Inet {
            return None;
        }
        let mut route = Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix: msg.header.destination_prefix_length,
            gateway: None,
            oif: None,
            kind: msg.header.kind,
            scope: msg.header.scope,
            protocol: msg.header.protocol,
            table: u32::from(msg.header.table),
            multipath: false,
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => route.dst = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some(*a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Table(t) => route.table = *t,
                RouteAttribute::MultiPath(_) => route.multipath = true,
                _ => {}
            }
        }
        Some(route)
    }

    fn to_message(&self) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = self.prefix;
        msg.header.protocol = self.protocol;
        msg.header.scope = self.scope;
        msg.header.kind = self.kind;
        // Tables above 255 only fit the attribute; the header says "see RTA_TABLE" then.
        msg.header.table = u8::try_from(self.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        msg.attributes.push(RouteAttribute::Table(self.table));
        if self.prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(self.dst)));
        }
        if let Some(gw) = self.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        msg
    }

    /// `10.0.0.0/24 via 10.1.0.1 dev #3`, for messages.
    pub(crate) fn describe(&self) -> String {
        let mut s = match self.kind {
            RouteType::BlackHole => format!("blackhole {}/{}", self.dst, self.prefix),
            _ => format!("{}/{}", self.dst, self.prefix),
        };
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(oif) = self.oif {
            s.push_str(&format!(" dev #{oif}"));
        }
        s
    }
}

/// An rtnetlink socket in the network namespace of the thread that opened it.
#[derive(Debug)]
pub(crate) struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<Netlink> {
        let what = "opening a NETLINK_ROUTE socket";
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(with_context(what))?;
        socket.bind_auto().map_err(with_context(what))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(with_context(what))?;
        // Best effort: both only make errors more readable and acks smaller.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Netlink { socket, seq: 0 })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16, what: &str) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        let sent = self.socket.send(&buf, 0).map_err(with_context(what))?;
        if sent != buf.len() {
            return Err(io::Error::other(format!(
                "{what}: sent {sent} of {} bytes",
                buf.len()
            )));
        }
        Ok(self.seq)
    }

    /// Reads one datagram, whatever its size.
    fn recv_datagram(&self, what: &str) -> io::Result<Vec<u8>> {
        let mut peek: Vec<u8> = Vec::with_capacity(64);
        let len = self
            .socket
            .recv(&mut peek, MSG_PEEK | MSG_TRUNC)
            .map_err(with_context(what))?;
        let mut buf = Vec::with_capacity(len.max(1));
        let got = self.socket.recv(&mut buf, 0).map_err(with_context(what))?;
        buf.truncate(got);
        Ok(buf)
    }

    /// Sends `msg` and reads the answer: for a dump, every part until `NLMSG_DONE`; otherwise
    /// any reply and then the ack. Returns the replies and whether a dump was interrupted.
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> io::Result<(Vec<RouteNetlinkMessage>, bool)> {
        let seq = self.send(msg, flags, what)?;
        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let buf = self.recv_datagram(what)?;
            let mut off = 0;
            while off + NLMSG_HDRLEN <= buf.len() {
                let part = &buf[off..];
                let len = u32_at(part, 0) as usize;
                if len < NLMSG_HDRLEN || len > part.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{what}: malformed netlink message (length {len})"),
                    ));
                }
                let part = &part[..len];
                off += (len + 3) & !3;
                let kind = u16_at(part, 4);
                let hflags = u16_at(part, 6);
                if u32_at(part, 8) != seq {
                    // An answer to an earlier request that was given up on.
                    continue;
                }
                if hflags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match kind {
                    NLMSG_NOOP => {}
                    NLMSG_ERROR => {
                        let (code, kernel) = parse_error(part, hflags);
                        if code == 0 {
                            return Ok((replies, interrupted));
                        }
                        return Err(NetlinkError {
                            errno: code.saturating_abs(),
                            what: what.to_owned(),
                            kernel,
                        }
                        .into());
                    }
                    NLMSG_DONE => {
                        // A dump that failed half way says so in its DONE message.
                        if part.len() >= NLMSG_HDRLEN + 4 {
                            let code = i32_at(part, NLMSG_HDRLEN);
                            if code < 0 {
                                let (_, kernel) = parse_error(part, hflags);
                                return Err(NetlinkError {
                                    errno: code.saturating_abs(),
                                    what: what.to_owned(),
                                    kernel,
                                }
                                .into());
                            }
                        }
                        return Ok((replies, interrupted));
                    }
                    NLMSG_OVERRUN => {
                        return Err(io::Error::other(format!(
                            "{what}: the kernel reported a netlink overrun"
                        )));
                    }
                    _ => {
                        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(part)
                            .map_err(|e| {
                                io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    format!("{what}: cannot parse the kernel's answer: {e}"),
                                )
                            })?;
                        if let NetlinkPayload::InnerMessage(inner) = parsed.payload {
                            replies.push(inner);
                        }
                    }
                }
            }
        }
    }

    /// Sends one request (`NLM_F_REQUEST | NLM_F_ACK | flags`) and waits for its ack; returns
    /// the replies that came before the ack (a GET's answer). `what` says what was attempted,
    /// for the error.
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        Ok(self.exchange(msg, NLM_F_ACK | flags, what)?.0)
    }

    /// Dumps (`NLM_F_DUMP`) and returns every part, reading the table again when the kernel
    /// says it changed during the dump.
    pub(crate) fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        what: &str,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        for _ in 0..DUMP_ATTEMPTS {
            let (replies, interrupted) = self.exchange(msg.clone(), NLM_F_DUMP, what)?;
            if !interrupted {
                return Ok(replies);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            format!("{what}: the table kept changing during {DUMP_ATTEMPTS} dumps"),
        ))
    }

    /// The link named `name`, or None.
    pub(crate) fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let what = format!("looking up link {name}");
        match self.request(RouteNetlinkMessage::GetLink(msg), 0, &what) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if is(&e, Errno::NODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link of the namespace.
    pub(crate) fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            "listing links",
        )?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a veth pair: `name` here, and its peer `peer_name` in the network namespace
    /// open as `peer_netns` (None: here too). Fails with EEXIST if either name is taken.
    pub(crate) fn add_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_netns: Option<RawFd>,
        mtu: Option<u32>,
    ) -> io::Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_owned()));
        if let Some(fd) = peer_netns {
            peer.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL,
            &format!("creating veth pair {name} / {peer_name}"),
        )?;
        Ok(())
    }

    /// Deletes the link named `name`; false if there was none.
    pub(crate) fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(
            RouteNetlinkMessage::DelLink(msg),
            0,
            &format!("deleting link {name}"),
        ) {
            Ok(_) => Ok(true),
            Err(e) if is(&e, Errno::NODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets the link administratively up and, if given, its MTU; does nothing if it already is
    /// so.
    pub(crate) fn ensure_up(&mut self, link: &Link, mtu: Option<u32>) -> io::Result<()> {
        let mtu_change = mtu.filter(|m| link.mtu != Some(*m));
        if link.up && mtu_change.is_none() {
            return Ok(());
        }
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if let Some(mtu) = mtu_change {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(
            RouteNetlinkMessage::SetLink(msg),
            0,
            &format!("setting link {} up", link.name),
        )?;
        Ok(())
    }

    /// The IPv4 addresses (address, prefix length) of the link with index `index`.
    pub(crate) fn ipv4_addresses(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let replies = self.dump(
            RouteNetlinkMessage::GetAddress(msg),
            "listing IPv4 addresses",
        )?;
        let mut out = Vec::new();
        for reply in &replies {
            let RouteNetlinkMessage::NewAddress(a) = reply else {
                continue;
            };
            if a.header.index != index || a.header.family != AddressFamily::Inet {
                continue;
            }
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
            // point-to-point links and the same as IFA_LOCAL otherwise.
            let local = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let address = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address) {
                out.push((ip, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Adds `ip/prefix` to the link `link` (EEXIST if it has it).
    pub(crate) fn add_ipv4_address(
        &mut self,
        link: &Link,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = link.index;
        msg.attributes
            .push(AddressAttribute::Local(std::net::IpAddr::V4(ip)));
        msg.attributes
            .push(AddressAttribute::Address(std::net::IpAddr::V4(ip)));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL,
            &format!("adding address {ip}/{prefix} to {}", link.name),
        )?;
        Ok(())
    }

    /// The IPv4 routes of table `table`.
    pub(crate) fn ipv4_routes(&mut self, table: u32) -> io::Result<Vec<Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let replies = self.dump(RouteNetlinkMessage::GetRoute(msg), "listing IPv4 routes")?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(m) => Route::from_message(m),
                _ => None,
            })
            .filter(|r| r.table == table)
            .collect())
    }

    /// Adds `route`; with `replace`, replaces a route with the same destination (and creates it
    /// if there is none), otherwise fails with EEXIST if there is one.
    pub(crate) fn add_route(&mut self, route: &Route, replace: bool) -> io::Result<()> {
        let flags = netlink_packet_core::NLM_F_CREATE
            | if replace {
                netlink_packet_core::NLM_F_REPLACE
            } else {
                netlink_packet_core::NLM_F_EXCL
            };
        self.request(
            RouteNetlinkMessage::NewRoute(route.to_message()),
            flags,
            &format!("adding route {}", route.describe()),
        )?;
        Ok(())
    }

    /// Deletes `route` (matched on destination, table, protocol, type and next hop); false if
    /// there was none.
    pub(crate) fn delete_route(&mut self, route: &Route) -> io::Result<bool> {
        match self.request(
            RouteNetlinkMessage::DelRoute(route.to_message()),
            0,
            &format!("deleting route {}", route.describe()),
        ) {
            Ok(_) => Ok(true),
            Err(e) if is(&e, Errno::SRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_ne_bytes)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, i32::from_ne_bytes)
}

/// The code and extended-ack message of an `NLMSG_ERROR` (or a failed `NLMSG_DONE`).
fn parse_error(msg: &[u8], flags: u16) -> (i32, Option<String>) {
    let code = i32_at(msg, NLMSG_HDRLEN);
    if flags & NLM_F_ACK_TLVS == 0 {
        return (code, None);
    }
    // After the code: the request's header (the whole request unless capped), then TLVs. A
    // DONE message has no echoed request.
    let mut off = NLMSG_HDRLEN + 4;
    if u16_at(msg, 4) == NLMSG_ERROR {
        let echoed = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            u32_at(msg, off) as usize
        };
        off += (echoed + 3) & !3;
    }
    while off + 4 <= msg.len() {
        let len = usize::from(u16_at(msg, off));
        let kind = u16_at(msg, off + 2) & 0x3fff;
        if len < 4 || off + len > msg.len() {
            break;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &msg[off + 4..off + len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return (code, Some(String::from_utf8_lossy(text).into_owned()));
        }
        off += (len + 3) & !3;
    }
    (code, None)
}
