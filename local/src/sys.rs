//! What the cluster leaves in the rest of the system while it runs, found and removed by name:
//! mounts under its directory, its cgroups, the runc shims of its containerd and their sockets,
//! runc's state, and entries named with the cluster's prefix (bpffs pins, datapath locks).

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::{
    image::hex,
    layout::{CGROUP_TOP, Layout, SHIM_SOCKET_DIR},
    process::{ProcInfo, all_processes},
};

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Unmounts (lazily) every mount point under `dir`, deepest first, and repeats while mounts
/// stacked on one point remain.
pub fn unmount_under(dir: &Path) -> Result<()> {
    let mut failures = Vec::new();
    for _ in 0..16 {
        let points = mounts_under(dir);
        if points.is_empty() {
            return Ok(());
        }
        failures.clear();
        for p in points {
            if let Err(e) = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH) {
                failures.push(format!("{}: {e}", p.display()));
            }
        }
    }
    if failures.is_empty() {
        bail!("mounts under {} keep coming back", dir.display());
    }
    bail!("unmounting {}", failures.join("; "))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
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

/// The cluster's cgroup directory in every hierarchy that has it: cgroup v2 at /sys/fs/cgroup,
/// and each v1 controller under /sys/fs/cgroup/<controller>.
pub fn cgroup_dirs(layout: &Layout) -> Vec<PathBuf> {
    let rel = layout.cgroup_parent();
    let rel = rel.trim_start_matches('/');
    cgroup_roots()
        .into_iter()
        .map(|r| r.join(rel))
        .filter(|p| p.is_dir())
        .collect()
}

fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(d) = fs::read_dir("/sys/fs/cgroup") {
        roots.extend(
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").is_file()),
        );
    }
    roots
}

/// Every process in the cluster's cgroups (the pods' containers).
pub fn cgroup_processes(layout: &Layout) -> Vec<ProcInfo> {
    let mut pids = Vec::new();
    for dir in cgroup_dirs(layout) {
        collect_cgroup_pids(&dir, &mut pids);
    }
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter().filter_map(ProcInfo::read).collect()
}

fn collect_cgroup_pids(dir: &Path, pids: &mut Vec<u32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(d) = fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_cgroup_pids(&e.path(), pids);
            }
        }
    }
}

/// Removes the cluster's cgroup trees (deepest first) in every hierarchy, then the shared
/// `/skiff-local` level where it is empty.
pub fn remove_cgroups(layout: &Layout) -> Result<()> {
    let mut failures = Vec::new();
    for dir in cgroup_dirs(layout) {
        remove_cgroup_tree(&dir, &mut failures);
    }
    for root in cgroup_roots() {
        // Fails while another cluster's cgroups are in it; that is fine.
        let _ = fs::remove_dir(root.join(CGROUP_TOP));
    }
    if !failures.is_empty() {
        bail!("removing cgroups: {}", failures.join("; "));
    }
    Ok(())
}

fn remove_cgroup_tree(dir: &Path, failures: &mut Vec<String>) {
    if let Ok(d) = fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path(), failures);
            }
        }
    }
    // A cgroup may stay busy for a moment after its last process died.
    let mut last = None;
    for _ in 0..100 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(20));
    }
    if let Some(e) = last {
        failures.push(format!("{}: {e}", dir.display()));
    }
}

/// The runc shims the cluster's containerd started: their command line names its socket as
/// `-address`.
pub fn shim_processes(layout: &Layout) -> Vec<ProcInfo> {
    let address = layout.containerd_socket().display().to_string();
    all_processes()
        .into_iter()
        .filter(|p| !p.is_zombie())
        .filter(|p| {
            p.argv.first().is_some_and(|a| {
                Path::new(a)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim"))
            }) && p
                .argv
                .windows(2)
                .any(|w| w[0] == "-address" && w[1] == address)
        })
        .collect()
}

/// The processes whose parent is one of `parents` (a shim's containers).
pub fn children_of(parents: &[ProcInfo]) -> Vec<ProcInfo> {
    all_processes()
        .into_iter()
        .filter(|p| !p.is_zombie() && parents.iter().any(|s| s.pid == p.ppid))
        .collect()
}

/// Paths of the Unix sockets under /run/containerd/s that process `pid` holds open.
pub fn shim_sockets_of(pid: u32) -> Vec<PathBuf> {
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
    let mut paths: Vec<PathBuf> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (inode, path) = (f.get(6)?, f.get(7)?);
            (inodes.iter().any(|i| i == inode) && path.starts_with(SHIM_SOCKET_DIR))
                .then(|| PathBuf::from(path))
        })
        .collect();
    paths.sort();
    paths.dedup();
    paths
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(
            unescape_mount_path(r"/var/lib/a\040b/c\134d"),
            PathBuf::from(r"/var/lib/a b/c\d")
        );
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }
}
