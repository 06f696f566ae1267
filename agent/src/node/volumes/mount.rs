//! The mounts volumes need (tmpfs for memory-backed emptyDirs and Secrets, binds for
//! subPaths), behind a trait: the host's mount table for real, and a fake that keeps its own
//! table and checks every call against it.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use rustix::mount::{MountFlags, UnmountFlags};

/// The mount operations volumes use.
pub trait Mounter: std::fmt::Debug + Send + Sync {
    /// Mounts a tmpfs of `size_bytes` (`None`: the kernel's default, half of RAM) with the
    /// root directory mode `mode` on the existing directory `target`.
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>, mode: u32) -> io::Result<()>;
    /// Bind-mounts `source` (a path, or `/proc/self/fd/N` of a descriptor the caller holds)
    /// onto the existing `target`.
    fn bind(&self, source: &Path, target: &Path) -> io::Result<()>;
    /// Detaches the mount at `target` (lazily: a process still using it keeps it until done).
    fn unmount(&self, target: &Path) -> io::Result<()>;
    /// Mount points at or under `dir`, deepest first.
    fn mounts_under(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
}

/// The host's mount table.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostMounter;

impl Mounter for HostMounter {
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>, mode: u32) -> io::Result<()> {
        let mut data = format!("mode={mode:o}");
        if let Some(size) = size_bytes {
            data.push_str(&format!(",size={size}"));
        }
        let data = CString::new(data).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        rustix::mount::mount(
            "tmpfs",
            target,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some(data.as_c_str()),
        )?;
        Ok(())
    }

    fn bind(&self, source: &Path, target: &Path) -> io::Result<()> {
        rustix::mount::mount_bind(source, target)?;
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        rustix::mount::unmount(target, UnmountFlags::DETACH)?;
        Ok(())
    }

    fn mounts_under(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let info = fs::read_to_string("/proc/self/mountinfo")?;
        let mut points: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .map(unescape)
            .filter(|p| p.starts_with(dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        points.dedup();
        Ok(points)
    }
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

#[cfg(any(test, feature = "testing"))]
pub use fake::{FakeMount, FakeMounter};

/// The checking fake (the agent's tests, and the `testing` feature).
#[cfg(any(test, feature = "testing"))]
mod fake {
    use std::{
        collections::BTreeMap,
        fs, io,
        path::{Path, PathBuf},
        sync::{Mutex, PoisonError},
    };

    use super::Mounter;

    /// What the fake has mounted at a point.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum FakeMount {
        /// A tmpfs of this size.
        Tmpfs(Option<u64>),
        /// A bind of this source (as given; `/proc/self/fd/N` is resolved to what it names).
        Bind(PathBuf),
    }

    /// A mounter that mounts nothing and checks every call: a target must exist and be free, an
    /// unmount must name a mount point, and [`FakeMounter::assert_nothing_under`] says whether
    /// anything was left.
    #[derive(Debug, Default)]
    pub struct FakeMounter {
        table: Mutex<BTreeMap<PathBuf, FakeMount>>,
    }

    impl FakeMounter {
        /// Every mount point and what is mounted there.
        pub fn mounts(&self) -> BTreeMap<PathBuf, FakeMount> {
            self.table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        /// Panics if anything is mounted at or under `dir`.
        pub fn assert_nothing_under(&self, dir: &Path) {
            let left: Vec<PathBuf> = self
                .mounts()
                .into_keys()
                .filter(|p| p.starts_with(dir))
                .collect();
            assert!(
                left.is_empty(),
                "mounts left under {}: {left:?}",
                dir.display()
            );
        }

        fn add(&self, target: &Path, what: FakeMount) -> io::Result<()> {
            assert!(
                target.exists(),
                "mount on {}, which does not exist",
                target.display()
            );
            let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            assert!(
                !t.contains_key(target),
                "a second mount on {}",
                target.display()
            );
            t.insert(target.to_owned(), what);
            Ok(())
        }
    }

    impl Mounter for FakeMounter {
        fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>, mode: u32) -> io::Result<()> {
            use std::os::unix::fs::PermissionsExt as _;
            assert!(
                target.is_dir(),
                "tmpfs on {}, not a directory",
                target.display()
            );
            self.add(target, FakeMount::Tmpfs(size_bytes))?;
            // A fresh tmpfs's root has the mode asked for.
            fs::set_permissions(target, fs::Permissions::from_mode(mode))
        }

        fn bind(&self, source: &Path, target: &Path) -> io::Result<()> {
            let resolved = fs::canonicalize(source)?;
            let (s, t) = (fs::metadata(&resolved)?, fs::metadata(target)?);
            assert_eq!(
                s.is_dir(),
                t.is_dir(),
                "bind of {} onto {}: a directory and a file",
                resolved.display(),
                target.display()
            );
            self.add(target, FakeMount::Bind(resolved))
        }

        fn unmount(&self, target: &Path) -> io::Result<()> {
            let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            match t.remove(target) {
                Some(_) => Ok(()),
                None => Err(io::Error::from_raw_os_error(22)),
            }
        }

        fn mounts_under(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
            let mut points: Vec<PathBuf> = self
                .mounts()
                .into_keys()
                .filter(|p| p.starts_with(dir))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            Ok(points)
        }
    }
}
