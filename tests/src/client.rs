//! Clients that run in the client pod: HTTP over new or kept-alive connections, UDP requests,
//! TCP echo transfers, and the kernel's checksum error counters.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use skiff_testbed::netns::Netns;

pub const TIMEOUT: Duration = Duration::from_secs(3);

/// One HTTP/1.1 GET on a fresh connection; returns the body (the backend's name).
/// Must be called on a thread inside the client namespace.
pub fn http_get_once(addr: SocketAddrV4) -> Result<String> {
    let s = TcpStream::connect_timeout(&SocketAddr::V4(addr), TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    let mut c = HttpConn::from_stream(s)?;
    c.get_with("close")
}

/// A kept-alive HTTP connection (opened in a namespace, usable from any thread).
#[derive(Debug)]
pub struct HttpConn {
    reader: BufReader<TcpStream>,
}

impl HttpConn {
    /// Opens a connection from inside `ns`.
    pub fn open(ns: &Netns, addr: SocketAddrV4) -> Result<Self> {
        let s = ns
            .run(|| TcpStream::connect_timeout(&SocketAddr::V4(addr), TIMEOUT))
            .with_context(|| format!("connecting to {addr}"))?;
        Self::from_stream(s)
    }

    fn from_stream(s: TcpStream) -> Result<Self> {
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(HttpConn {
            reader: BufReader::new(s),
        })
    }

    pub fn local_port(&self) -> u16 {
        self.reader.get_ref().local_addr().map_or(0, |a| a.port())
    }

    /// GET / on this connection; returns the body.
    pub fn get(&mut self) -> Result<String> {
        self.get_with("keep-alive")
    }

    fn get_with(&mut self, connection: &str) -> Result<String> {
        write!(
            self.reader.get_mut(),
            "GET / HTTP/1.1\r\nHost: skiff-test\r\nConnection: {connection}\r\n\r\n"
        )
        .context("sending the request")?;
        let mut status = String::new();
        self.reader
            .read_line(&mut status)
            .context("reading the status line")?;
        if !status.starts_with("HTTP/1.1 200") {
            bail!("unexpected status line {status:?}");
        }
        let mut len = None;
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .context("reading headers")?;
            if n == 0 {
                bail!("connection closed inside the headers");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = Some(
                    v.trim()
                        .parse::<usize>()
                        .context("parsing Content-Length")?,
                );
            }
        }
        let mut body = vec![0u8; len.context("no Content-Length")?];
        self.reader
            .read_exact(&mut body)
            .context("reading the body")?;
        Ok(String::from_utf8_lossy(&body).trim().to_owned())
    }
}

/// A UDP socket opened in a namespace and connected to `addr`: one flow (one source port).
pub fn udp_flow(ns: &Netns, addr: SocketAddrV4) -> Result<UdpSocket> {
    let s = ns
        .run(|| -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(addr)?;
            Ok(s)
        })
        .with_context(|| format!("opening a UDP flow to {addr}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    Ok(s)
}

/// Sends `payload` on a connected UDP socket and returns (backend name, echoed payload).
pub fn udp_ask(s: &UdpSocket, payload: &[u8]) -> Result<(String, Vec<u8>)> {
    s.send(payload).context("sending a datagram")?;
    let mut buf = vec![0u8; 65536];
    let n = s.recv(&mut buf).context("waiting for the echo")?;
    let reply = &buf[..n];
    let bar = reply
        .iter()
        .position(|b| *b == b'|')
        .context("reply without a backend name")?;
    Ok((
        String::from_utf8_lossy(&reply[..bar]).into_owned(),
        reply[bar + 1..].to_vec(),
    ))
}

/// Sends `data` through a TCP echo server and returns what came back (same length).
pub fn tcp_echo(ns: &Netns, addr: SocketAddrV4, data: &[u8]) -> Result<Vec<u8>> {
    let s = ns
        .run(|| TcpStream::connect_timeout(&SocketAddr::V4(addr), TIMEOUT))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut writer = s.try_clone()?;
    let data_owned = data.to_vec();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&data_owned)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut back = Vec::with_capacity(data.len());
    let mut reader = s;
    reader.read_to_end(&mut back).context("reading the echo")?;
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
        .context("sending")?;
    Ok(back)
}

/// (TCP InCsumErrors, UDP InCsumErrors) of the namespace, from its /proc/net/snmp.
pub fn csum_errors(ns: &Netns) -> Result<(u64, u64)> {
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .context("reading /proc/net/snmp")?;
    Ok((
        snmp_field(&text, "Tcp:", "InCsumErrors")?,
        snmp_field(&text, "Udp:", "InCsumErrors")?,
    ))
}

fn snmp_field(text: &str, proto: &str, field: &str) -> Result<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(proto));
    let header = lines.next().context("no header line")?;
    let values = lines.next().context("no values line")?;
    let idx = header
        .split_whitespace()
        .position(|f| f == field)
        .with_context(|| format!("{proto} has no {field}"))?;
    values
        .split_whitespace()
        .nth(idx)
        .context("short values line")?
        .parse()
        .context("parsing a counter")
}

/// A deterministic pseudo-random payload (so a corrupted byte cannot go unnoticed).
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_fields_are_found_by_name() {
        let text =
            "Tcp: RtoAlgorithm InCsumErrors\nTcp: 1 7\nUdp: InDatagrams InCsumErrors\nUdp: 3 2\n";
        assert_eq!(snmp_field(text, "Tcp:", "InCsumErrors").unwrap(), 7);
        assert_eq!(snmp_field(text, "Udp:", "InCsumErrors").unwrap(), 2);
    }

    #[test]
    fn payloads_differ_by_seed_and_are_reproducible() {
        assert_eq!(payload(64, 1), payload(64, 1));
        assert_ne!(payload(64, 1), payload(64, 2));
    }
}
