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
use rustix::process::Signal;

use crate::{
    cleanup,
    host::{missing_root, missing_tool, runnable},
    procfs, unique_prefix,
};

/// Whether this host can run a containerd test (root, containerd, runc, the runc v2 shim,
/// iproute2 for the tests' network namespaces). When it cannot: under `CI=true` this panics,
/// so nothing passes by not running; elsewhere it prints why and returns false.
pub fn containerd_available(test: &str) -> bool {
    let why = missing_root().or_else(|| {
        missing_tool(
            &["containerd", "runc", "containerd-shim-runc-v2", "ip"],
            "cargo xtask setup installs containerd, runc and iproute2",
        )
    });
    runnable(test, why)
}

/// containerd's configuration: root, state and every socket under `dir`, the CRI plugin and
/// the snapshotters this machine lacks off, no TCP.
pub fn config(dir: &Path) -> String {
    let d = dir.display();
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
    )
}

/// Whether containerd serves its gRPC socket (accepts a connection on it).
pub fn serving(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
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
        fs::write(&config, self::config(&dir))
            .with_context(|| format!("writing {}", config.display()))?;
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
            if serving(&self.socket) {
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
        cleanup::shim_processes(&self.socket)
            .into_iter()
            .map(|p| p.pid)
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let shims = cleanup::shim_processes(&self.socket);
        // The shims' listening sockets, which a killed shim leaves behind in /run/containerd/s.
        let shim_sockets: Vec<PathBuf> = shims
            .iter()
            .flat_map(|p| cleanup::shim_sockets_of(p.pid))
            .collect();
        // Container processes first (the shims' children; killing a container's init ends its
        // pid namespace), then containerd, then the shims.
        let children: Vec<u32> = cleanup::children_of(&shims).iter().map(|p| p.pid).collect();
        for &pid in &children {
            procfs::signal(pid, Signal::KILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in &shims {
            procfs::signal(p.pid, Signal::KILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while children
            .iter()
            .copied()
            .chain(shims.iter().map(|p| p.pid))
            .any(procfs::running)
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(20));
        }
        for s in shim_sockets {
            let _ = fs::remove_file(s);
        }
        if let Err(e) = cleanup::unmount_under(&self.dir) {
            eprintln!("cleanup: {e:#}");
        }
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

/// Removes a cgroup subtree (deepest first) in every hierarchy, then the shared first level
/// (`/skiff-test`) where it is empty.
fn remove_cgroups(parent: &str) {
    let mut failures = Vec::new();
    for dir in cleanup::cgroup_dirs(parent) {
        cleanup::remove_cgroup_tree(&dir, &mut failures);
    }
    for f in failures {
        eprintln!("cleanup: could not remove cgroup {f}");
    }
    if let Some(first) = parent.trim_start_matches('/').split('/').next()
        && !first.is_empty()
    {
        for root in cleanup::cgroup_roots() {
            let _ = fs::remove_dir(root.join(first));
        }
    }
}

/// The directory holding `busybox.tar` (`<target>/images`), built as `cargo xtask images` builds
/// it when missing (the `skiff-image` crate: deterministic, and in a directory of its own per
/// process, so tests that build it at the same time agree on the result).
pub fn busybox_image_dir() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the testbed crate has no parent directory")?
        .to_path_buf();
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("images");
    // What `cargo xtask images` does: a stamp keeps it from rebuilding needlessly, and an archive
    // made by an older recipe (say, one name fewer) is made again.
    skiff_image::build_busybox_if_stale(&dir).context("building the busybox image")?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_keeps_everything_under_its_directory() {
        let text = config(Path::new("/var/lib/skiff-local/dev/containerd"));
        for line in text.lines().filter(|l| l.contains('/')) {
            if line.contains("io.containerd.") {
                continue;
            }
            assert!(
                line.contains("/var/lib/skiff-local/dev/containerd/"),
                "{line}"
            );
        }
    }
}
