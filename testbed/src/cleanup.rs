//! Finding and removing what a cluster's containerd and its containers leave in the rest of the
//! system: mounts under a directory, cgroup trees in every hierarchy, the runc shims that name a
//! containerd socket, their containers, and the sockets they leave in /run/containerd/s. Shared
//! by a test's [`crate::containerd::Containerd`] and `skiff-local down`.

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{Result, bail};

use crate::procfs::{ProcInfo, all_processes};

/// Where the runc shims put their sockets, whichever containerd started them.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

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

/// The roots of every cgroup hierarchy: cgroup v2 at /sys/fs/cgroup, and each v1 controller
/// under `/sys/fs/cgroup/<controller>`.
pub fn cgroup_roots() -> Vec<PathBuf> {
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

/// The cgroup `parent` (`/skiff-local/dev`) in every hierarchy that has it.
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return Vec::new();
    }
    cgroup_roots()
        .into_iter()
        .map(|r| r.join(rel))
        .filter(|p| p.is_dir())
        .collect()
}

/// Every process in the cgroup `parent` and below, in every hierarchy.
pub fn cgroup_processes(parent: &str) -> Vec<ProcInfo> {
    let mut pids = Vec::new();
    for dir in cgroup_dirs(parent) {
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

/// Removes the cgroup tree at `dir` (deepest first), waiting a little for cgroups that stay
/// busy for a moment after their last process died; what could not be removed goes into
/// `failures`.
pub fn remove_cgroup_tree(dir: &Path, failures: &mut Vec<String>) {
    if let Ok(d) = fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path(), failures);
            }
        }
    }
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

/// The runc shims (zombies included) that the containerd serving `socket` started: their
/// command line names it as `-address`.
pub fn shim_processes(socket: &Path) -> Vec<ProcInfo> {
    let address = socket.display().to_string();
    all_processes()
        .into_iter()
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

/// The running processes whose parent is one of `parents` (a shim's containers).
pub fn children_of(parents: &[ProcInfo]) -> Vec<ProcInfo> {
    all_processes()
        .into_iter()
        .filter(|p| !p.is_zombie() && parents.iter().any(|s| s.pid == p.ppid))
        .collect()
}

/// Paths of the Unix sockets under [`SHIM_SOCKET_DIR`] that process `pid` holds open.
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
