//! Pod volumes on the node, as kubelet lays them out: each pod's volumes live under
//! `<pods root>/<uid>/volumes/<plugin>/<name>`, subPath binds under
//! `<pods root>/<uid>/volume-subpaths/<volume>/<container>/<index>`. emptyDir (on disk, or a
//! tmpfs for `medium: Memory`), the file volumes (configMap, secret, downwardAPI, projected:
//! written atomically, Secrets on tmpfs), hostPath with its type checks, subPath resolved
//! without following a symlink out of its volume, and a teardown that unmounts everything
//! before it removes anything.
//!
//! Mounts go through [`Mounter`]; nothing from the API becomes a path here unchecked.

pub mod atomic;
pub mod mount;
pub mod pod;
pub mod projection;
#[cfg(test)]
pub(crate) mod testdir;

use std::{
    fs, io,
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd},
        unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    },
    path::{Component, Path, PathBuf},
    sync::Arc,
};

pub use atomic::File;
#[cfg(any(test, feature = "testing"))]
pub use mount::FakeMounter;
pub use mount::{HostMounter, Mounter};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use skiff_api::validate;

use crate::paths::{self, PodIds};

/// The directory of a pod's volumes under its pod directory.
const VOLUMES: &str = "volumes";
/// The directory of a pod's subPath binds under its pod directory.
const SUBPATHS: &str = "volume-subpaths";
/// The mode of the pods directory and of every directory between it and a volume (kubelet's
/// 0750, root's): no other host user reaches a pod's files, Secrets among them, whatever the
/// volume's own mode. Containers are not hindered: runc binds the volume as root, and a
/// container sees the volume's own directory, never these.
pub const PRIVATE_DIR_MODE: u32 = 0o750;

/// A volume plugin: the directory name kubelet gives its volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    /// `emptyDir`.
    EmptyDir,
    /// `configMap`.
    ConfigMap,
    /// `secret`.
    Secret,
    /// `downwardAPI`.
    DownwardApi,
    /// `projected`.
    Projected,
}

impl Plugin {
    /// The plugin's directory name.
    pub fn dir_name(self) -> &'static str {
        match self {
            Plugin::EmptyDir => "kubernetes.io~empty-dir",
            Plugin::ConfigMap => "kubernetes.io~configmap",
            Plugin::Secret => "kubernetes.io~secret",
            Plugin::DownwardApi => "kubernetes.io~downward-api",
            Plugin::Projected => "kubernetes.io~projected",
        }
    }
}

/// Why a volume could not be set up or torn down. The message is what the pod's event and
/// the container's waiting message show.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A volume, container or pod identifier cannot be part of a path.
    #[error(transparent)]
    Path(#[from] paths::PathError),
    /// A hostPath is not what its `type` says (kubelet's message).
    #[error("hostPath type check failed: {path} is not a {what}")]
    HostPathType { path: String, what: &'static str },
    /// A hostPath `type` Kubernetes does not have.
    #[error("{0} is an invalid volume type")]
    InvalidHostPathType(String),
    /// A hostPath path that is not absolute, or has a `..` element.
    #[error("hostPath {0:?}: must be an absolute path without '..'")]
    InvalidHostPath(String),
    /// An emptyDir medium the node does not offer.
    #[error("emptyDir medium {0:?} is not supported (use \"\" or \"Memory\")")]
    UnsupportedMedium(String),
    /// A subPath that is absolute or has a `..` element.
    #[error("invalid subPath {0:?}: must be a relative path without '..'")]
    InvalidSubPath(String),
    /// A subPath missing from a configMap, secret, downwardAPI or projected volume: made
    /// there, it would be a directory among the files the volume's updates replace.
    #[error(
        "subPath {0:?} does not exist in the volume (it is not made inside a configMap, secret, downwardAPI or projected volume)"
    )]
    SubPathMissing(String),
    /// A subPath that leads out of its volume (kubelet's message).
    #[error("subpath {sub_path:?} not within volume path {volume:?}")]
    SubPathOutsideVolume { sub_path: String, volume: String },
    /// The files of a configMap, secret, downwardAPI or projected volume.
    #[error(transparent)]
    Files(#[from] atomic::AtomicError),
    /// Mounts under the pod directory would not go away: nothing was removed.
    #[error("mounts remain under {}: {}", dir.display(), left.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    MountsRemain { dir: PathBuf, left: Vec<PathBuf> },
    /// A file or mount operation failed.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError + use<> {
    let path = path.to_owned();
    move |source| VolumeError::Io {
        action,
        path,
        source,
    }
}

/// The node's pod volumes under one directory (`<agent root>/pods`).
#[derive(Debug, Clone)]
pub struct Volumes {
    root: PathBuf,
    mounter: Arc<dyn Mounter>,
}

impl Volumes {
    /// Pod volumes under `root` (created when needed), mounting through `mounter`.
    pub fn new(root: PathBuf, mounter: Arc<dyn Mounter>) -> Volumes {
        Volumes { root, mounter }
    }

    /// `<root>/<uid>`.
    pub fn pod_dir(&self, pod: &PodIds) -> Result<PathBuf, VolumeError> {
        Ok(paths::child(&self.root, "metadata.uid", pod.uid())?)
    }

    /// `<root>/<uid>/volumes/<plugin>/<name>`, the name checked as the API checks a volume
    /// name (a DNS-1123 label).
    pub fn volume_dir(
        &self,
        pod: &PodIds,
        plugin: Plugin,
        name: &str,
    ) -> Result<PathBuf, VolumeError> {
        paths::volume_name("volumes[].name", name)?;
        let dir = self.pod_dir(pod)?.join(VOLUMES).join(plugin.dir_name());
        Ok(paths::child(&dir, "volumes[].name", name)?)
    }

    /// Makes the pods directory (0750, root's: [`PRIVATE_DIR_MODE`]) and puts right the
    /// directories an older agent made readable by every host user: each pod's directory, its
    /// `volumes`, plugin and `volume-subpaths` directories. Run once at start.
    pub fn secure(&self) -> Result<(), VolumeError> {
        fs::create_dir_all(&self.root).map_err(io_err("creating", &self.root))?;
        make_private(&self.root)?;
        for uid in self.pods_on_disk()? {
            let pod = self.root.join(uid);
            make_private(&pod)?;
            for sub in [SUBPATHS, VOLUMES] {
                let dir = pod.join(sub);
                if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                    make_private(&dir)?;
                }
            }
            // The plugin directories; never a volume's own (a mount point, or the files a
            // container reads).
            let Ok(plugins) = fs::read_dir(pod.join(VOLUMES)) else {
                continue;
            };
            for entry in plugins.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    make_private(&entry.path())?;
                }
            }
        }
        Ok(())
    }

    /// Makes each missing directory from the pods directory down to `dir` (inclusive) with
    /// [`PRIVATE_DIR_MODE`].
    fn private_dirs(&self, dir: &Path) -> Result<(), VolumeError> {
        let Ok(rel) = dir.strip_prefix(&self.root) else {
            return Err(io_err("creating", dir)(io::Error::from(
                io::ErrorKind::InvalidInput,
            )));
        };
        if fs::symlink_metadata(&self.root).is_err() {
            self.secure()?;
        }
        let mut cur = self.root.clone();
        for c in rel.components() {
            cur.push(c);
            match fs::create_dir(&cur) {
                Ok(()) => make_private(&cur)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("creating", &cur)(e)),
            }
        }
        Ok(())
    }

    /// Makes `dir` if it is missing (its parents private); whether it was made.
    fn new_dir(&self, dir: &Path) -> Result<bool, VolumeError> {
        if let Some(parent) = dir.parent() {
            self.private_dirs(parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("creating", dir)(e)),
        }
    }

    /// Sets up emptyDir `name`: a directory every user may write (mode 0777, as kubelet
    /// makes it), or for `medium: Memory` a tmpfs of `size_bytes` (the `sizeLimit`, else
    /// what the caller chose: the node's allocatable memory). Idempotent: the directory and
    /// its contents survive container restarts, and its mode and group are set only when it
    /// is made (an application's own chmod stays).
    pub fn empty_dir(
        &self,
        pod: &PodIds,
        name: &str,
        medium: &str,
        size_bytes: Option<u64>,
        fs_group: Option<u32>,
    ) -> Result<PathBuf, VolumeError> {
        let memory = match medium {
            "" => false,
            "Memory" => true,
            other => return Err(VolumeError::UnsupportedMedium(other.to_owned())),
        };
        let dir = self.volume_dir(pod, Plugin::EmptyDir, name)?;
        let mut fresh = self.new_dir(&dir)?;
        if memory && !self.is_mount_point(&dir)? {
            self.mounter
                .mount_tmpfs(&dir, size_bytes, 0o777)
                .map_err(io_err("mounting a tmpfs on", &dir))?;
            fresh = true;
        }
        if !fresh {
            return Ok(dir);
        }
        let mut mode = 0o777;
        if let Some(gid) = fs_group {
            std::os::unix::fs::chown(&dir, None, Some(gid)).map_err(io_err("chowning", &dir))?;
            mode |= 0o2000;
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .map_err(io_err("chmoding", &dir))?;
        Ok(dir)
    }

    /// Sets up or updates a file volume (configMap, secret, downwardAPI, projected) with
    /// `files`, atomically; on a tmpfs when `memory` (Secrets, and projected volumes holding
    /// one, as kubelet keeps them off the disk). Returns the volume's directory and whether the
    /// files changed.
    pub fn files(
        &self,
        pod: &PodIds,
        plugin: Plugin,
        name: &str,
        files: &[File],
        memory: bool,
        fs_group: Option<u32>,
    ) -> Result<(PathBuf, bool), VolumeError> {
        for f in files {
            atomic::validate_path(&f.path)?;
        }
        let dir = self.volume_dir(pod, plugin, name)?;
        self.new_dir(&dir)?;
        let mode = files_dir_mode(fs_group);
        if memory && !self.is_mount_point(&dir)? {
            self.mounter
                .mount_tmpfs(&dir, None, mode)
                .map_err(io_err("mounting a tmpfs on", &dir))?;
        }
        if let Some(gid) = fs_group {
            std::os::unix::fs::chown(&dir, None, Some(gid)).map_err(io_err("chowning", &dir))?;
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .map_err(io_err("chmoding", &dir))?;
        let changed = atomic::write(&dir, files, fs_group)?;
        Ok((dir, changed))
    }

    /// Binds `sub_path` of `volume` (a directory this agent set up, or a hostPath) for mount
    /// `index` of `container`, and returns the bind's path: the source of
    /// the container's mount. The path is opened one element at a time without following a
    /// symlink blindly, and checked to be inside the volume by what was really opened; a
    /// missing directory is made in a writable volume (emptyDir, hostPath), else the subPath
    /// is refused (configMap, secret, downwardAPI, projected volumes: a directory made there
    /// would sit among the files their updates replace). An existing bind is kept as it is (a running container's
    /// subPath does not follow later updates of its volume, as in Kubernetes) unless its
    /// source is gone.
    pub fn subpath(
        &self,
        pod: &PodIds,
        name: &str,
        volume: &pod::PodVolume,
        sub_path: &str,
        container: &str,
        index: usize,
    ) -> Result<PathBuf, VolumeError> {
        paths::volume_name("volumes[].name", name)?;
        paths::container_name("containers[].name", container)?;
        let base = self.pod_dir(pod)?.join(SUBPATHS);
        let target = paths::child(&base, "volumes[].name", name)?
            .join(container)
            .join(index.to_string());
        if self.is_mount_point(&target)? {
            // Kept while its source lives. A file or directory a ConfigMap update replaced is
            // gone (no links left), and a gone source cannot be mounted into a new container:
            // the subPath is bound again from what it is now (kubelet does the same on a
            // container restart).
            if fs::metadata(&target).is_ok_and(|m| m.nlink() > 0) {
                return Ok(target);
            }
            self.mounter
                .unmount(&target)
                .map_err(io_err("unmounting the stale subPath bind", &target))?;
        }
        let fd = open_inside(&volume.path, sub_path, !volume.read_only)?;
        let is_dir = rustix::fs::fstat(&fd)
            .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
            .map_err(|e| io_err("inspecting", &volume.path.join(sub_path))(e.into()))?;
        let parent = target.parent().unwrap_or(&base);
        self.private_dirs(parent)?;
        if is_dir {
            match fs::create_dir(&target) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(io_err("creating", &target)(e));
                }
                _ => {}
            }
        } else {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&target)
                .map_err(io_err("creating", &target))?;
        }
        let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()));
        self.mounter
            .bind(&source, &target)
            .map_err(io_err("bind-mounting the subPath onto", &target))?;
        drop(fd);
        Ok(target)
    }

    /// Removes everything of the pod: each mount under its directory is detached first
    /// (deepest first, repeated for stacked mounts); if any remains, nothing is removed.
    pub fn teardown(&self, pod: &PodIds) -> Result<(), VolumeError> {
        let dir = self.pod_dir(pod)?;
        self.teardown_dir(&dir)
    }

    /// [`Volumes::teardown`] by uid (a pod directory found on disk whose pod is gone).
    pub fn teardown_uid(&self, uid: &str) -> Result<(), VolumeError> {
        let dir = paths::child(&self.root, "metadata.uid", uid)?;
        self.teardown_dir(&dir)
    }

    fn teardown_dir(&self, dir: &Path) -> Result<(), VolumeError> {
        if fs::symlink_metadata(dir).is_err() {
            return Ok(());
        }
        for _ in 0..8 {
            let points = self
                .mounter
                .mounts_under(dir)
                .map_err(io_err("listing mounts under", dir))?;
            if points.is_empty() {
                break;
            }
            for p in points {
                if let Err(e) = self.mounter.unmount(&p) {
                    tracing::warn!(path = %p.display(), error = %e, "unmounting a pod volume");
                }
            }
        }
        let left = self
            .mounter
            .mounts_under(dir)
            .map_err(io_err("listing mounts under", dir))?;
        if !left.is_empty() {
            return Err(VolumeError::MountsRemain {
                dir: dir.to_owned(),
                left,
            });
        }
        fs::remove_dir_all(dir).map_err(io_err("removing", dir))
    }

    /// The uids of the pod directories on disk (to tear down those of pods that are gone).
    pub fn pods_on_disk(&self) -> Result<Vec<String>, VolumeError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("reading", &self.root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("reading", &self.root))?;
            if let Some(name) = entry.file_name().to_str()
                && validate::uid(name).is_ok()
            {
                out.push(name.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn is_mount_point(&self, path: &Path) -> Result<bool, VolumeError> {
        Ok(self
            .mounter
            .mounts_under(path)
            .map_err(io_err("listing mounts under", path))?
            .iter()
            .any(|p| p == path))
    }
}

/// The mode of a file volume's own directory (what the container sees at its mountPath):
/// with an fsGroup, 2750 and the group's (every container of the pod has that group);
/// without, 0755, as a container user of any id must read it. Host users are kept out by the
/// private directories above it.
fn files_dir_mode(fs_group: Option<u32>) -> u32 {
    if fs_group.is_some() { 0o2750 } else { 0o755 }
}

/// Gives `dir` [`PRIVATE_DIR_MODE`] and root as its owner, if it has not.
pub fn make_private(dir: &Path) -> Result<(), VolumeError> {
    let meta = fs::symlink_metadata(dir).map_err(io_err("inspecting", dir))?;
    if !meta.is_dir() {
        return Err(io_err("securing", dir)(io::Error::from(
            io::ErrorKind::NotADirectory,
        )));
    }
    if meta.uid() != 0 || meta.gid() != 0 {
        std::os::unix::fs::lchown(dir, Some(0), Some(0)).map_err(io_err("chowning", dir))?;
    }
    if meta.permissions().mode() & 0o7777 != PRIVATE_DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .map_err(io_err("chmoding", dir))?;
    }
    Ok(())
}

/// Checks hostPath `path` against its `type` as kubelet does, creating it for the
/// `...OrCreate` types (a directory 0755 with its parents; a file 0644, whose directory must
/// exist). `""` checks nothing. Returns the path.
pub fn host_path(path: &str, type_: &str) -> Result<PathBuf, VolumeError> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) || path.contains('\0')
    {
        return Err(VolumeError::InvalidHostPath(path.to_owned()));
    }
    let meta = fs::metadata(p).ok();
    let fail = |what| {
        Err(VolumeError::HostPathType {
            path: path.to_owned(),
            what,
        })
    };
    match type_ {
        "" => {}
        "DirectoryOrCreate" | "Directory" => {
            if meta.is_none() && type_ == "DirectoryOrCreate" {
                fs::create_dir_all(p).map_err(io_err("creating", p))?;
                fs::set_permissions(p, fs::Permissions::from_mode(0o755))
                    .map_err(io_err("chmoding", p))?;
            } else if !meta.is_some_and(|m| m.is_dir()) {
                return fail("directory");
            }
        }
        "FileOrCreate" | "File" => {
            if meta.is_none() && type_ == "FileOrCreate" {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(p)
                    .map_err(io_err("creating", p))?;
                fs::set_permissions(p, fs::Permissions::from_mode(0o644))
                    .map_err(io_err("chmoding", p))?;
            } else if !meta.is_some_and(|m| m.is_file()) {
                return fail("file");
            }
        }
        "Socket" => {
            if !meta.is_some_and(|m| m.file_type().is_socket()) {
                return fail("socket file");
            }
        }
        "CharDevice" => {
            if !meta.is_some_and(|m| m.file_type().is_char_device()) {
                return fail("character device");
            }
        }
        "BlockDevice" => {
            if !meta.is_some_and(|m| m.file_type().is_block_device()) {
                return fail("block device");
            }
        }
        other => return Err(VolumeError::InvalidHostPathType(other.to_owned())),
    }
    Ok(p.to_owned())
}

/// Opens `sub_path` inside `volume` (`O_PATH`), making missing directories (with the
/// volume's mode) when `make_missing`, never leaving the volume: a symlink on the way is
/// followed only to a place inside the volume, and the file really opened is checked to be
/// inside it.
fn open_inside(volume: &Path, sub_path: &str, make_missing: bool) -> Result<OwnedFd, VolumeError> {
    let invalid = || VolumeError::InvalidSubPath(sub_path.to_owned());
    let rel = Path::new(sub_path);
    if sub_path.is_empty()
        || sub_path.contains('\0')
        || !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(invalid());
    }
    let outside = || VolumeError::SubPathOutsideVolume {
        sub_path: volume.join(rel).to_string_lossy().into_owned(),
        volume: volume.to_string_lossy().into_owned(),
    };
    let root = fs::canonicalize(volume).map_err(io_err("resolving", volume))?;
    let mode = fs::metadata(&root)
        .map_err(io_err("inspecting", &root))?
        .permissions()
        .mode()
        & 0o7777;
    let path_flags = OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let ioe = |p: &Path| {
        let p = p.to_owned();
        move |e: rustix::io::Errno| VolumeError::Io {
            action: "opening",
            path: p,
            source: e.into(),
        }
    };
    let mut fd = rustix::fs::open(&root, path_flags | OFlags::DIRECTORY, Mode::empty())
        .map_err(ioe(&root))?;
    let mut cur = root.clone();
    for c in rel.components() {
        let Component::Normal(name) = c else {
            continue;
        };
        let next = cur.join(name);
        match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) if !make_missing => {
                return Err(VolumeError::SubPathMissing(sub_path.to_owned()));
            }
            Err(rustix::io::Errno::NOENT) => {
                match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(mode)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(ioe(&next)(e)),
                }
                fd = rustix::fs::openat(&fd, name, path_flags | OFlags::DIRECTORY, Mode::empty())
                    .map_err(ioe(&next))?;
                cur = next;
            }
            Err(e) => return Err(ioe(&next)(e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                let target = fs::canonicalize(&next).map_err(io_err("resolving", &next))?;
                if !target.starts_with(&root) {
                    return Err(outside());
                }
                fd = rustix::fs::open(&target, path_flags, Mode::empty()).map_err(ioe(&target))?;
                cur = target;
            }
            Ok(_) => {
                fd =
                    rustix::fs::openat(&fd, name, path_flags, Mode::empty()).map_err(ioe(&next))?;
                cur = next;
            }
        }
        // What was opened, whatever happened to the names meanwhile, must be in the volume.
        let real = fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
            .map_err(io_err("resolving", &cur))?;
        if !real.starts_with(&root) {
            return Err(outside());
        }
        let st = rustix::fs::fstat(&fd).map_err(ioe(&cur))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Err(outside());
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::{mount::FakeMount, *};
    use crate::node::volumes::testdir::TestDir;

    const UID: &str = "0b3cb1f4-3a0e-4a59-9c16-6c8c6f9f0b7e";

    fn rw(path: &Path) -> pod::PodVolume {
        pod::PodVolume {
            path: path.to_owned(),
            read_only: false,
        }
    }

    fn ro(path: &Path) -> pod::PodVolume {
        pod::PodVolume {
            path: path.to_owned(),
            read_only: true,
        }
    }

    fn setup(name: &str) -> (TestDir, Arc<FakeMounter>, Volumes, PodIds) {
        let t = TestDir::new(name);
        let m = Arc::new(FakeMounter::default());
        let v = Volumes::new(t.path().join("pods"), m.clone());
        let ids = PodIds::new("default", "web", UID).unwrap();
        (t, m, v, ids)
    }

    #[test]
    fn empty_dirs_live_under_the_pod_and_memory_ones_are_sized_tmpfs() {
        let (t, m, v, ids) = setup("vol-empty");
        let disk = v.empty_dir(&ids, "scratch", "", None, None).unwrap();
        assert_eq!(
            disk,
            t.path()
                .join("pods")
                .join(UID)
                .join("volumes/kubernetes.io~empty-dir/scratch")
        );
        assert_eq!(
            fs::metadata(&disk).unwrap().permissions().mode() & 0o7777,
            0o777
        );
        fs::write(disk.join("kept"), "x").unwrap();
        // Set up again (a container restart): the contents stay.
        v.empty_dir(&ids, "scratch", "", None, None).unwrap();
        assert!(disk.join("kept").exists());
        let mem = v
            .empty_dir(&ids, "cache", "Memory", Some(64 << 20), None)
            .unwrap();
        assert_eq!(m.mounts()[&mem], FakeMount::Tmpfs(Some(64 << 20)));
        // Idempotent: no second tmpfs.
        v.empty_dir(&ids, "cache", "Memory", Some(64 << 20), None)
            .unwrap();
        assert!(matches!(
            v.empty_dir(&ids, "huge", "HugePages", None, None),
            Err(VolumeError::UnsupportedMedium(_))
        ));
    }

    #[test]
    fn volume_names_that_are_not_dns_labels_never_become_paths() {
        let (_t, _m, v, ids) = setup("vol-names");
        for bad in ["..", "a/b", "", "A", "x/../../etc"] {
            assert!(v.empty_dir(&ids, bad, "", None, None).is_err(), "{bad:?}");
            assert!(
                v.files(&ids, Plugin::ConfigMap, bad, &[], false, None)
                    .is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn secrets_go_on_tmpfs_and_updates_replace_files() {
        let (_t, m, v, ids) = setup("vol-secret");
        let f = |data: &str| File {
            path: "password".into(),
            data: data.as_bytes().to_vec(),
            mode: 0o400,
        };
        let (dir, changed) = v
            .files(&ids, Plugin::Secret, "creds", &[f("a")], true, None)
            .unwrap();
        assert!(changed);
        assert_eq!(m.mounts()[&dir], FakeMount::Tmpfs(None));
        let (_, changed) = v
            .files(&ids, Plugin::Secret, "creds", &[f("a")], true, None)
            .unwrap();
        assert!(!changed);
        v.files(&ids, Plugin::Secret, "creds", &[f("b")], true, None)
            .unwrap();
        assert_eq!(fs::read_to_string(dir.join("password")).unwrap(), "b");
    }

    #[test]
    fn teardown_unmounts_everything_then_leaves_nothing_of_the_pod() {
        let (t, m, v, ids) = setup("vol-teardown");
        let scratch = v.empty_dir(&ids, "scratch", "", None, None).unwrap();
        fs::create_dir(scratch.join("sub")).unwrap();
        v.empty_dir(&ids, "cache", "Memory", None, None).unwrap();
        v.files(
            &ids,
            Plugin::Secret,
            "creds",
            &[File {
                path: "k".into(),
                data: b"v".to_vec(),
                mode: 0o400,
            }],
            true,
            None,
        )
        .unwrap();
        v.subpath(&ids, "scratch", &rw(&scratch), "sub", "app", 0)
            .unwrap();
        assert_eq!(m.mounts().len(), 3);
        assert_eq!(v.pods_on_disk().unwrap(), [UID]);
        v.teardown(&ids).unwrap();
        m.assert_nothing_under(t.path());
        assert!(!t.path().join("pods").join(UID).exists());
        assert!(v.pods_on_disk().unwrap().is_empty());
        // Twice is fine.
        v.teardown(&ids).unwrap();
    }

    #[test]
    fn teardown_removes_nothing_while_a_mount_stays() {
        #[derive(Debug, Default)]
        struct Stuck(FakeMounter);
        impl Mounter for Stuck {
            fn mount_tmpfs(&self, t: &Path, s: Option<u64>, m: u32) -> io::Result<()> {
                self.0.mount_tmpfs(t, s, m)
            }
            fn bind(&self, s: &Path, t: &Path) -> io::Result<()> {
                self.0.bind(s, t)
            }
            fn unmount(&self, _: &Path) -> io::Result<()> {
                Err(io::Error::from_raw_os_error(16))
            }
            fn mounts_under(&self, d: &Path) -> io::Result<Vec<PathBuf>> {
                self.0.mounts_under(d)
            }
        }
        let t = TestDir::new("vol-stuck");
        let v = Volumes::new(t.path().join("pods"), Arc::new(Stuck::default()));
        let ids = PodIds::new("default", "web", UID).unwrap();
        let mem = v.empty_dir(&ids, "cache", "Memory", None, None).unwrap();
        fs::write(mem.join("data"), "precious").unwrap();
        assert!(matches!(
            v.teardown(&ids),
            Err(VolumeError::MountsRemain { .. })
        ));
        assert!(mem.join("data").exists());
    }

    #[test]
    fn subpaths_are_bound_from_inside_the_volume_and_made_when_missing() {
        let (_t, m, v, ids) = setup("vol-subpath");
        let vol = v.empty_dir(&ids, "data", "", None, None).unwrap();
        fs::create_dir_all(vol.join("a/b")).unwrap();
        fs::write(vol.join("a/b/file"), "x").unwrap();
        symlink("b", vol.join("a/inner")).unwrap();
        let t1 = v
            .subpath(&ids, "data", &rw(&vol), "a/b/file", "app", 0)
            .unwrap();
        assert_eq!(
            m.mounts()[&t1],
            FakeMount::Bind(fs::canonicalize(vol.join("a/b/file")).unwrap())
        );
        assert!(t1.is_file());
        let t2 = v
            .subpath(&ids, "data", &rw(&vol), "a/inner", "app", 1)
            .unwrap();
        assert_eq!(
            m.mounts()[&t2],
            FakeMount::Bind(fs::canonicalize(vol.join("a/b")).unwrap())
        );
        let t3 = v
            .subpath(&ids, "data", &rw(&vol), "new/dir", "app", 2)
            .unwrap();
        assert!(vol.join("new/dir").is_dir());
        assert!(t3.is_dir());
        // Bound already: kept as it is.
        assert_eq!(
            v.subpath(&ids, "data", &rw(&vol), "a/b/file", "app", 0)
                .unwrap(),
            t1
        );
    }

    #[test]
    fn subpaths_never_lead_out_of_the_volume() {
        let (t, m, v, ids) = setup("vol-escape");
        let vol = v.empty_dir(&ids, "data", "", None, None).unwrap();
        let secret = t.path().join("outside");
        fs::create_dir(&secret).unwrap();
        symlink(&secret, vol.join("up")).unwrap();
        symlink("../../../../../..", vol.join("rel")).unwrap();
        for sub in ["up", "up/x", "rel", "rel/etc"] {
            let err = v
                .subpath(&ids, "data", &rw(&vol), sub, "app", 0)
                .unwrap_err();
            assert!(
                matches!(err, VolumeError::SubPathOutsideVolume { .. }),
                "{sub}: {err}"
            );
        }
        for sub in ["../x", "/etc", ""] {
            assert!(matches!(
                v.subpath(&ids, "data", &rw(&vol), sub, "app", 0),
                Err(VolumeError::InvalidSubPath(_))
            ));
        }
        assert!(!secret.join("x").exists());
        assert!(
            m.mounts()
                .keys()
                .all(|p| !p.to_string_lossy().contains("volume-subpaths"))
        );
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_pods_directory_and_every_directory_above_a_volume_are_private_to_root() {
        let (t, _m, v, ids) = setup("vol-private");
        let f = File {
            path: "password".into(),
            data: b"s3cret".to_vec(),
            mode: 0o644,
        };
        let (secret, _) = v
            .files(&ids, Plugin::Secret, "creds", &[f], true, None)
            .unwrap();
        let scratch = v.empty_dir(&ids, "scratch", "", None, None).unwrap();
        fs::create_dir(scratch.join("sub")).unwrap();
        let bind = v
            .subpath(&ids, "scratch", &rw(&scratch), "sub", "app", 0)
            .unwrap();
        let pods = t.path().join("pods");
        let pod = pods.join(UID);
        for dir in [
            pods.clone(),
            pod.clone(),
            pod.join("volumes"),
            pod.join("volumes/kubernetes.io~secret"),
            pod.join("volumes/kubernetes.io~empty-dir"),
            pod.join("volume-subpaths"),
            pod.join("volume-subpaths/scratch"),
            bind.parent().unwrap().to_owned(),
        ] {
            assert_eq!(mode(&dir), PRIVATE_DIR_MODE, "{}", dir.display());
            assert_eq!(fs::metadata(&dir).unwrap().uid(), 0, "{}", dir.display());
        }
        // What the container sees (the volume's own directory) stays readable by a
        // container user of any id: only the host side is closed.
        assert_eq!(mode(&secret), 0o755);
        assert_eq!(mode(&scratch), 0o777);
    }

    #[test]
    fn with_an_fs_group_a_file_volume_is_closed_to_others_and_open_to_the_group() {
        let (_t, _m, v, ids) = setup("vol-private-group");
        let f = File {
            path: "token".into(),
            data: b"t".to_vec(),
            mode: 0o440,
        };
        let (dir, _) = v
            .files(&ids, Plugin::Secret, "creds", &[f], true, Some(2000))
            .unwrap();
        assert_eq!(mode(&dir), 0o2750);
        assert_eq!(fs::metadata(&dir).unwrap().gid(), 2000);
    }

    #[test]
    fn a_restarted_agent_closes_the_world_readable_directories_an_older_one_made() {
        let (t, m, v, ids) = setup("vol-secure");
        let pods = t.path().join("pods");
        let pod = pods.join(UID);
        let plugin = pod.join("volumes/kubernetes.io~secret");
        let vol = plugin.join("creds");
        let subpaths = pod.join("volume-subpaths/cfg/app");
        fs::create_dir_all(&vol).unwrap();
        fs::create_dir_all(&subpaths).unwrap();
        m.mount_tmpfs(&vol, None, 0o755).unwrap();
        for d in [
            &pods,
            &pod,
            &pod.join("volumes"),
            &plugin,
            &pod.join("volume-subpaths"),
        ] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        v.secure().unwrap();
        for d in [
            &pods,
            &pod,
            &pod.join("volumes"),
            &plugin,
            &pod.join("volume-subpaths"),
        ] {
            assert_eq!(mode(d), PRIVATE_DIR_MODE, "{}", d.display());
        }
        assert_eq!(mode(&vol), 0o755, "a volume's own directory is left alone");
        v.teardown(&ids).unwrap();
        // A fresh node: the pods directory is made private.
        let (t2, _m2, v2, _) = setup("vol-secure-fresh");
        v2.secure().unwrap();
        assert_eq!(mode(&t2.path().join("pods")), PRIVATE_DIR_MODE);
    }

    #[test]
    fn an_empty_dirs_mode_is_set_when_made_and_an_applications_chmod_stays() {
        let (_t, _m, v, ids) = setup("vol-empty-chmod");
        let dir = v.empty_dir(&ids, "scratch", "", None, Some(2000)).unwrap();
        assert_eq!(mode(&dir), 0o2777);
        assert_eq!(fs::metadata(&dir).unwrap().gid(), 2000);
        // The application narrows it; a later set-up (refresh, container restart) keeps that.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&dir, None, Some(0)).unwrap();
        v.empty_dir(&ids, "scratch", "", None, Some(2000)).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(fs::metadata(&dir).unwrap().gid(), 0);
        let mem = v
            .empty_dir(&ids, "cache", "Memory", Some(1 << 20), None)
            .unwrap();
        fs::set_permissions(&mem, fs::Permissions::from_mode(0o750)).unwrap();
        v.empty_dir(&ids, "cache", "Memory", Some(1 << 20), None)
            .unwrap();
        assert_eq!(mode(&mem), 0o750);
    }

    #[test]
    fn a_missing_subpath_of_a_file_volume_is_refused_and_nothing_is_made_in_it() {
        let (_t, m, v, ids) = setup("vol-subpath-missing");
        let f = File {
            path: "app.conf".into(),
            data: b"a=1".to_vec(),
            mode: 0o644,
        };
        let (dir, _) = v
            .files(
                &ids,
                Plugin::ConfigMap,
                "cfg",
                std::slice::from_ref(&f),
                false,
                None,
            )
            .unwrap();
        for sub in ["nginx.conf", "conf/app.conf"] {
            let err = v
                .subpath(&ids, "cfg", &ro(&dir), sub, "app", 0)
                .unwrap_err();
            assert!(
                matches!(&err, VolumeError::SubPathMissing(s) if s == sub),
                "{sub}: {err}"
            );
        }
        assert!(!dir.join("nginx.conf").exists());
        assert!(!dir.join("conf").exists());
        assert!(
            m.mounts()
                .keys()
                .all(|p| !p.starts_with(v.pod_dir(&ids).unwrap().join("volume-subpaths")))
        );
        // The key that exists binds, and refreshes still work.
        v.subpath(&ids, "cfg", &ro(&dir), "app.conf", "app", 1)
            .unwrap();
        let g = File {
            path: "nginx.conf".into(),
            data: b"x".to_vec(),
            mode: 0o644,
        };
        let (_, changed) = v
            .files(&ids, Plugin::ConfigMap, "cfg", &[f, g], false, None)
            .unwrap();
        assert!(changed);
        assert_eq!(fs::read_to_string(dir.join("nginx.conf")).unwrap(), "x");
        v.teardown(&ids).unwrap();
    }

    #[test]
    fn host_path_types_are_checked_with_kubelets_messages() {
        let t = TestDir::new("vol-hostpath");
        let dir = t.path().join("d");
        let file = t.path().join("f");
        let s = |p: &Path| p.to_string_lossy().into_owned();
        assert!(host_path(&s(&dir), "Directory").is_err());
        host_path(&s(&dir), "DirectoryOrCreate").unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o755
        );
        host_path(&s(&dir), "Directory").unwrap();
        host_path(&s(&file), "FileOrCreate").unwrap();
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o644
        );
        host_path(&s(&file), "File").unwrap();
        for (path, type_, message) in [
            (
                s(&file),
                "Directory",
                format!(
                    "hostPath type check failed: {} is not a directory",
                    s(&file)
                ),
            ),
            (
                s(&file),
                "DirectoryOrCreate",
                format!(
                    "hostPath type check failed: {} is not a directory",
                    s(&file)
                ),
            ),
            (
                s(&dir),
                "File",
                format!("hostPath type check failed: {} is not a file", s(&dir)),
            ),
            (
                s(&dir),
                "Socket",
                format!(
                    "hostPath type check failed: {} is not a socket file",
                    s(&dir)
                ),
            ),
            (
                s(&dir),
                "CharDevice",
                format!(
                    "hostPath type check failed: {} is not a character device",
                    s(&dir)
                ),
            ),
            (
                s(&dir),
                "BlockDevice",
                format!(
                    "hostPath type check failed: {} is not a block device",
                    s(&dir)
                ),
            ),
            (
                s(&dir),
                "Weird",
                "Weird is an invalid volume type".to_owned(),
            ),
        ] {
            assert_eq!(host_path(&path, type_).unwrap_err().to_string(), message);
        }
        host_path("/dev/null", "CharDevice").unwrap();
        host_path(&s(&t.path().join("nothing")), "").unwrap();
        assert!(host_path("relative", "").is_err());
        assert!(host_path("/a/../etc", "").is_err());
    }
}
