//! Processes the test bed starts: each dies with the process that started it (PDEATHSIG
//! through util-linux `setpriv`, even when that process is killed outright), writes to a log
//! file of its own, and is killed and reaped by its guard's drop.

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// `n` distinct loopback ports nobody is listening on right now (all held open until all are
/// chosen, so the kernel cannot hand the same one out twice).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("finding a free loopback port"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Starts `program args` under `setpriv --pdeathsig KILL`, stdout and stderr to `log`.
pub(crate) fn spawn_with_pdeathsig(program: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// Kills and reaps the process, if it runs.
pub(crate) fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Waits up to 20 s until `addr` accepts a connection; fails early when `child` exits.
pub(crate) fn wait_port(addr: SocketAddr, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = fs::read_to_string(log).unwrap_or_default();
            bail!("{what} exited with {status} before listening on {addr}:\n{log}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 20 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
}
