//! A real containerd for one test: its own root, state directory and socket under a unique
//! temporary directory, the CRI plugin off, no TCP. It dies with the test (PDEATHSIG), and on
//! drop everything it left is cleaned up: container processes and the runc shims it started
//! (found by its socket in their command line), the shims' sockets in /run/containerd/s, mounts
//! under its directories, runc's state for [`Containerd::namespace`], the cgroups under
//! [`Containerd::cgroup_parent`], the directory.
//!
//! Also the busybox OCI image archive the runtime tests import ([`busybox_image_dir`]).

use std::{
    env, fs,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::unique_prefix;

/// Whether this host can run a containerd test (root, containerd, runc, the runc v2 shim,
/// iproute2 for the tests' network namespaces). When it cannot: under `CI=true` this panics,
/// so nothing passes by not running; elsewhere it prints why and returns false.
pub fn containerd_available(test: &str) -> bool {
    let missing = if !rustix::process::geteuid().is_root() {
        Some("needs root".to_owned())
    } else {
        ["containerd", "runc", "containerd-shim-runc-v2", "ip"]
            .into_iter()
            .find(|t| crate::which(t).is_none())
            .map(|t| format!("{t} is not installed (cargo xtask setup installs containerd, runc and iproute2)"))
    };
    let Some(why) = missing else {
        return true;
    };
    if env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run here ({why}), and CI=true requires it to run");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// A containerd process of one test.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    namespace: String,
    cgroup_parent: String,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd and waits until its socket answers.
    pub fn start() -> Result<Containerd> {
        let prefix = unique_prefix("ctrd");
        let dir = env::temp_dir().join(&prefix);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        let d = dir.display();
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = "{d}/debug.sock"
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
            ),
        )?;
        let log = dir.join("containerd.log");
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "containerd", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting containerd")?;
        let mut c = Containerd {
            dir,
            socket,
            log,
            namespace: prefix.clone(),
            cgroup_parent: format!("/skiff-test/{prefix}"),
            child: Some(child),
        };
        c.wait_ready()?;
        Ok(c)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "containerd exited with {status} before serving {}:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not serve {} within 20 s",
                    self.socket.display()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its temporary directory (root, state, socket, log); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A containerd namespace unique to this containerd, for the test's containers. The runc
    /// shim keeps runc's state in `/run/containerd/runc/<namespace>` whichever containerd
    /// started it, so tests sharing a namespace would share (and trip over) that; it is
    /// removed on drop.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A cgroup parent unique to this containerd, for the containers a test creates; its
    /// cgroups (in every hierarchy) are removed on drop.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// What containerd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Pids of the runc shims this containerd started (their command line names its socket).
    pub fn shim_pids(&self) -> Vec<u32> {
        let address = self.socket.to_string_lossy().into_owned();
        processes()
            .into_iter()
            .filter(|(_, cmdline)| {
                cmdline
                    .first()
                    .is_some_and(|a| a.contains("containerd-shim"))
                    && cmdline.contains(&address)
            })
            .map(|(pid, _)| pid)
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let shims = self.shim_pids();
        // The shims' listening sockets, which a killed shim leaves behind in /run/containerd/s.
        let shim_sockets: Vec<PathBuf> = shims.iter().flat_map(|&p| shim_sockets(p)).collect();
        // Container processes first (the shims' children; killing a container's init ends its
        // pid namespace), then containerd, then the shims.
        let children: Vec<u32> = processes()
            .into_iter()
            .map(|(pid, _)| pid)
            .filter(|&pid| parent_pid(pid).is_some_and(|pp| shims.contains(&pp)))
            .collect();
        for &pid in &children {
            kill(pid);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for &pid in &shims {
            kill(pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while children
            .iter()
            .chain(&shims)
            .any(|&p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(p))
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(20));
        }
        for s in shim_sockets {
            let _ = fs::remove_file(s);
        }
        unmount_under(&self.dir);
        // runc's state of this containerd's namespace and of the namespaces named after it
        // (`<namespace>-node-0`, as the agent tests use).
        let prefix = format!("{}-", self.namespace);
        for e in fs::read_dir("/run/containerd/runc")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if (name == self.namespace || name.starts_with(&prefix))
                && let Err(err) = fs::remove_dir_all(e.path())
            {
                eprintln!("cleanup: removing {}: {err}", e.path().display());
            }
        }
        remove_cgroups(&self.cgroup_parent);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup: removing {}: {e}", self.dir.display());
        }
    }
}

fn kill(pid: u32) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// Every process with its command line.
fn processes() -> Vec<(u32, Vec<String>)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let raw = fs::read(e.path().join("cmdline")).ok()?;
        let args = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Some((pid, args))
    })
    .collect()
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 1..)?;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

fn parent_pid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s == "Z"))
}

/// Paths of the unix sockets under /run/containerd/s that process `pid` holds open.
fn shim_sockets(pid: u32) -> Vec<PathBuf> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| {
                let target = fs::read_link(e.ok()?.path()).ok()?;
                let t = target.to_str()?;
                Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
            })
            .collect()
        })
        .unwrap_or_default();
    let table = fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (inode, path) = (f.get(6)?, f.get(7)?);
            (inodes.iter().any(|i| i == inode) && path.starts_with("/run/containerd/s/"))
                .then(|| PathBuf::from(path))
        })
        .collect()
}

/// Unmounts (lazily) every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let mut points: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        if let Err(e) = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH) {
            eprintln!("cleanup: unmounting {}: {e}", p.display());
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mount_path(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

/// Removes a cgroup subtree (deepest first) in every hierarchy: cgroup v1 controllers under
/// /sys/fs/cgroup/*, and v2 at /sys/fs/cgroup itself.
fn remove_cgroups(parent: &str) {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(d) = fs::read_dir("/sys/fs/cgroup") {
        roots.extend(
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir()),
        );
    }
    for root in roots {
        let top = root.join(rel);
        if top.is_dir() {
            remove_cgroup_tree(&top);
        }
        // The shared first level (/skiff-test) goes too once empty.
        if let Some(first) = rel.split('/').next() {
            let _ = fs::remove_dir(root.join(first));
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(d) = fs::read_dir(dir) {
        for e in d.filter_map(|e| e.ok()) {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&p);
            }
        }
    }
    // A cgroup may stay busy for a moment after its last process died.
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
    eprintln!("cleanup: could not remove cgroup {}", dir.display());
}

/// The directory holding `busybox.tar` (`<target>/images`), built as `cargo xtask images` builds
/// it when missing (the `skiff-image` crate: deterministic, and in a directory of its own per
/// process, so tests that build it at the same time agree on the result).
pub fn busybox_image_dir() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate has no parent directory")?
        .to_path_buf();
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("images");
    if !dir.join(skiff_image::ARCHIVE).is_file() {
        // What `cargo xtask images` does (a stamp keeps it from rebuilding needlessly).
        skiff_image::build_busybox_if_stale(&dir).context("building the busybox image")?;
    }
    Ok(dir)
}
