//! What the cluster leaves in the rest of the system while it runs, found and removed by name:
//! mounts under its directory, its cgroups, the runc shims of its containerd and their sockets,
//! runc's state, and entries named with the cluster's prefix (bpffs pins, datapath locks).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};
use skiff_testbed::cleanup;
/// The test bed's clean-up pieces, which `down` shares with the tests' containerd.
pub use skiff_testbed::cleanup::{children_of, mounts_under, shim_sockets_of, unmount_under};

use crate::{
    image::hex,
    layout::{CGROUP_TOP, Layout, SHIM_SOCKET_DIR},
    process::ProcInfo,
};

/// The cluster's cgroup directory in every hierarchy that has it: cgroup v2 at /sys/fs/cgroup,
/// and each v1 controller under /sys/fs/cgroup/<controller>.
pub fn cgroup_dirs(layout: &Layout) -> Vec<PathBuf> {
    cleanup::cgroup_dirs(&layout.cgroup_parent())
}

/// Every process in the cluster's cgroups (the pods' containers).
pub fn cgroup_processes(layout: &Layout) -> Vec<ProcInfo> {
    cleanup::cgroup_processes(&layout.cgroup_parent())
}

/// Removes the cluster's cgroup trees (deepest first) in every hierarchy, then the shared
/// `/skiff-local` level where it is empty.
pub fn remove_cgroups(layout: &Layout) -> Result<()> {
    let mut failures = Vec::new();
    for dir in cgroup_dirs(layout) {
        cleanup::remove_cgroup_tree(&dir, &mut failures);
    }
    for root in cleanup::cgroup_roots() {
        // Fails while another cluster's cgroups are in it; that is fine.
        let _ = fs::remove_dir(root.join(CGROUP_TOP));
    }
    if !failures.is_empty() {
        bail!("removing cgroups: {}", failures.join("; "));
    }
    Ok(())
}

/// The runc shims the cluster's containerd started: their command line names its socket as
/// `-address`.
pub fn shim_processes(layout: &Layout) -> Vec<ProcInfo> {
    cleanup::shim_processes(&layout.containerd_socket())
        .into_iter()
        .filter(|p| !p.is_zombie())
        .collect()
}

/// The shim sockets of every task containerd's state directory knows: containerd 1.6 names a
/// shim's socket `/run/containerd/s/<sha256 of "<containerd address>/<namespace>/<id>">`. This
/// finds the sockets of shims that died without removing them.
pub fn shim_sockets_of_tasks(layout: &Layout) -> Vec<PathBuf> {
    let address = layout.containerd_socket().display().to_string();
    let tasks = layout
        .containerd_dir()
        .join("state/io.containerd.runtime.v2.task");
    let mut out = Vec::new();
    let Ok(namespaces) = fs::read_dir(&tasks) else {
        return out;
    };
    for ns in namespaces.flatten() {
        let Ok(ids) = fs::read_dir(ns.path()) else {
            continue;
        };
        for id in ids.flatten() {
            let key = format!(
                "{address}/{}/{}",
                ns.file_name().to_string_lossy(),
                id.file_name().to_string_lossy()
            );
            out.push(Path::new(SHIM_SOCKET_DIR).join(hex(&Sha256::digest(key.as_bytes()))));
        }
    }
    out
}

/// Entries of `dir` whose name starts with `prefix`.
pub fn entries_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(d) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = d
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Removes a file or a directory tree; nothing to do when it is not there.
pub fn remove_path(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let r = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
