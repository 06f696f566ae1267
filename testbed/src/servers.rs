//! Servers in backend pods: nginx for HTTP (a real server nobody here wrote), and small UDP and
//! TCP echo servers. Each identifies which backend answered.

use std::{
    fs,
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::Netns;

pub const HTTP_PORT: u16 = 8080;
pub const UDP_ECHO_PORT: u16 = 5353;
pub const TCP_ECHO_PORT: u16 = 9000;

/// nginx answering every request with `<name>\n`, run in a namespace; stopped on drop.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    pub fn start(ns: &Netns, name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-nginx", ns.name()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let d = dir.display();
        let conf = format!(
            "master_process off;\nuser root;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             keepalive_requests 1000000;\n  keepalive_timeout 600s;\n  \
             server {{ listen {HTTP_PORT} reuseport backlog=4096; \
             location / {{ default_type text/plain; return 200 \"{name}\\n\"; }} }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf).context("writing nginx.conf")?;
        // One process (no master, so no worker outlives it), and setpriv makes it die with
        // this process even when this process is killed outright.
        let child = ns
            .command("setpriv")
            .args(["--pdeathsig", "KILL", "--", "nginx"])
            .arg("-c")
            .arg(&conf_path)
            .args(["-e", "stderr", "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let mut nginx = Nginx { child, dir };
        // Ready when it accepts a connection inside its namespace.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = ns.run(|| TcpStream::connect(("127.0.0.1", HTTP_PORT)).is_ok());
            if up {
                return Ok(nginx);
            }
            if let Some(status) = nginx.child.try_wait()? {
                bail!("nginx in {} exited with {status}", ns.name());
            }
            if Instant::now() > deadline {
                bail!("nginx in {} did not start listening within 10 s", ns.name());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown.
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = fs::remove_dir_all(&self.dir);
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Echo servers in a namespace, stopped on drop: UDP replies `<name>|<payload>`; TCP echoes
/// everything back on each connection.
#[derive(Debug)]
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServers {
    pub fn start(ns: &Netns, name: &str) -> Result<Self> {
        let (udp, tcp) = ns
            .run(|| -> std::io::Result<(UdpSocket, TcpListener)> {
                Ok((
                    UdpSocket::bind(("0.0.0.0", UDP_ECHO_PORT))?,
                    TcpListener::bind(("0.0.0.0", TCP_ECHO_PORT))?,
                ))
            })
            .with_context(|| format!("binding echo servers in {}", ns.name()))?;
        let stop = Arc::new(AtomicBool::new(false));
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        tcp.set_nonblocking(true)?;
        let prefix = format!("{name}|").into_bytes();
        let s1 = stop.clone();
        let udp_thread = thread::spawn(move || udp_echo(udp, prefix, s1));
        let s2 = stop.clone();
        let tcp_thread = thread::spawn(move || tcp_echo(tcp, s2));
        Ok(EchoServers {
            stop,
            threads: vec![udp_thread, tcp_thread],
        })
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn udp_echo(sock: UdpSocket, prefix: Vec<u8>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 65536];
    let mut reply = Vec::with_capacity(65536 + prefix.len());
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                reply.clear();
                reply.extend_from_slice(&prefix);
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, from);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn tcp_echo(listener: TcpListener, stop: Arc<AtomicBool>) {
    let mut conns = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                let stop = stop.clone();
                conns.push(thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                    let mut buf = vec![0u8; 256 * 1024];
                    while !stop.load(Ordering::Relaxed) {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                }));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

/// nginx and the echo servers of one backend.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    _nginx: Nginx,
    _echo: EchoServers,
}

impl Backend {
    pub fn start(ns: &Netns, name: &str) -> Result<Self> {
        Ok(Backend {
            name: name.to_owned(),
            _nginx: Nginx::start(ns, name)?,
            _echo: EchoServers::start(ns, name)?,
        })
    }
}
