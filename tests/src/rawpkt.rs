//! Hand-made frames sent from a pod's `eth0` through an AF_PACKET socket: truncated headers,
//! IP options, fragments, zero UDP checksums, which normal sockets cannot produce.
#![expect(
    unsafe_code,
    reason = "AF_PACKET needs sockaddr_ll, which no safe wrapper in the dependency tree offers"
)]

use std::{
    ffi::CString,
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context as _, Result, bail};
use skiff_common::csum;
use skiff_testbed::{netns::Netns, topo::Pod};

const ETH_P_ALL: u16 = 0x0003;
pub const ETH_P_IP: u16 = 0x0800;

/// An AF_PACKET socket bound to a pod's `eth0`, with the MAC addresses of both veth ends.
#[derive(Debug)]
pub struct RawSender {
    fd: OwnedFd,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

impl RawSender {
    pub fn open(pod: &Pod, node: &Netns) -> Result<Self> {
        let src_mac = pod.ns.mac("eth0")?;
        let dst_mac = node.mac(&pod.host_if)?;
        let fd = pod
            .ns
            .run(|| -> io::Result<OwnedFd> {
                // SAFETY: plain syscalls with valid arguments; the fd is owned at once.
                unsafe {
                    let raw = libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                        i32::from(ETH_P_ALL.to_be()),
                    );
                    if raw < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let fd = OwnedFd::from_raw_fd(raw);
                    let name = CString::new("eth0").map_err(io::Error::other)?;
                    let ifindex = libc::if_nametoindex(name.as_ptr());
                    if ifindex == 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                    sll.sll_family = libc::AF_PACKET as u16;
                    sll.sll_protocol = ETH_P_ALL.to_be();
                    sll.sll_ifindex = ifindex as i32;
                    let rc = libc::bind(
                        fd.as_raw_fd(),
                        (&raw const sll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    );
                    if rc < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(fd)
                }
            })
            .context("opening an AF_PACKET socket on eth0")?;
        Ok(RawSender {
            fd,
            src_mac,
            dst_mac,
        })
    }

    /// Sends an Ethernet frame of `ethertype` carrying `l3` (to the node's side of the veth).
    pub fn send(&self, ethertype: u16, l3: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(14 + l3.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(l3);
        // SAFETY: the buffer is valid for its length; the fd is a bound packet socket.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("sending a raw frame");
        }
        if n as usize != frame.len() {
            bail!("short send: {n} of {} bytes", frame.len());
        }
        Ok(())
    }
}

/// Fields of a hand-made IPv4 header; `ipv4` fills in the length and checksum.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub id: u16,
    /// Flags and fragment offset (in 8-byte units), as on the wire.
    pub frag: u16,
    /// Options, a multiple of 4 bytes.
    pub options: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Ipv4 {
            src,
            dst,
            proto,
            id: 0x1234,
            frag: 0,
            options: Vec::new(),
        }
    }

    /// Header plus payload, with a correct total length and header checksum.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        let hlen = 20 + self.options.len();
        let mut p = vec![0u8; hlen];
        p[0] = 0x40 | (hlen / 4) as u8;
        p[2..4].copy_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&self.id.to_be_bytes());
        p[6..8].copy_from_slice(&self.frag.to_be_bytes());
        p[8] = 64;
        p[9] = self.proto;
        p[12..16].copy_from_slice(&self.src.octets());
        p[16..20].copy_from_slice(&self.dst.octets());
        p[20..].copy_from_slice(&self.options);
        let c = csum::finish(csum::add_bytes(0, &p));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u64 {
    let mut s = csum::add_bytes(0, &src.octets());
    s = csum::add_bytes(s, &dst.octets());
    s + proto as u64 + len as u64
}

/// A TCP segment with only the SYN flag, with a correct checksum.
pub fn tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let c = csum::finish(csum::add_bytes(pseudo_sum(src, dst, 6, t.len()), &t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A UDP datagram; with `checksum` false its checksum field is 0 ("none", legal in IPv4).
pub fn udp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    data: &[u8],
    checksum: bool,
) -> Vec<u8> {
    let len = 8 + data.len();
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(data);
    if checksum {
        let mut c = csum::finish(csum::add_bytes(pseudo_sum(src, dst, 17, len), &u));
        if c == 0 {
            c = 0xffff;
        }
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    u
}

/// An ICMP echo request.
pub fn icmp_echo(id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![8u8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(b"skiff-ping");
    let c = csum::finish(csum::add_bytes(0, &m));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_headers_carry_valid_checksums() {
        let src = Ipv4Addr::new(10, 244, 1, 10);
        let dst = Ipv4Addr::new(10, 96, 0, 10);
        let mut ip = Ipv4::new(src, dst, 6);
        ip.options = vec![1, 1, 1, 0];
        let p = ip.packet(&tcp_syn(src, dst, 40000, 80));
        assert_eq!(p[0], 0x46);
        assert_eq!(csum::finish(csum::add_bytes(0, &p[..24])), 0);
        let t = &p[24..];
        assert_eq!(
            csum::finish(csum::add_bytes(pseudo_sum(src, dst, 6, t.len()), t)),
            0
        );
        let u = udp(src, dst, 1, 53, b"abc", true);
        assert_eq!(
            csum::finish(csum::add_bytes(pseudo_sum(src, dst, 17, u.len()), &u)),
            0
        );
        assert_eq!(&udp(src, dst, 1, 53, b"abc", false)[6..8], &[0, 0]);
    }
}
