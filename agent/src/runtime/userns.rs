//! User namespaces for pods with `hostUsers: false`: the per-pod id ranges and the root
//! filesystems owned by them.
//!
//! Ranges follow kubelet's user namespace manager: every such pod gets its own
//! [`UserNamespace::SIZE`] ids, a multiple of that size and above the host's first range, never
//! shared with another pod. A range is claimed by a file in [`CLAIMS_DIR`] named after its slot
//! and holding the agent and the pod uid: creating it exclusively makes the claim, so agents of
//! several nodes on one machine (the local cluster) never hand out one range twice; it outlives
//! an agent restart, so an adopted pod finds the range its containers and volumes were made
//! with; it goes when the pod goes ([`release`]), and a sweep drops the claims of pods that left
//! while the agent was down ([`retain`]). The pod uid is only ever file content, never a path.
//!
//! containerd 1.6 and runc 1.1 cannot idmap the root filesystem's mount, so the container's
//! root filesystem is made the way containerd's client `WithRemappedSnapshot` makes it: the
//! image's snapshot is copied up with every file's owner moved into the pod's range and
//! committed as a parent keyed by (image chain ID, first host id), on which the container's
//! snapshot is prepared. containerd's garbage collector removes that parent once no container
//! uses it.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fs,
    io::{self, ErrorKind},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use containerd_client::{
    services::v1::{
        AddResourceRequest, Resource,
        leases_client::LeasesClient,
        snapshots::{
            CommitSnapshotRequest, PrepareSnapshotRequest, StatSnapshotRequest,
            snapshots_client::SnapshotsClient,
        },
    },
    types::Mount,
};
use rustix::{
    fs::{AtFlags, CWD, Gid, Uid, XattrFlags},
    mount::{MountFlags, UnmountFlags},
};
use tonic::Code;

use super::{Error, Result, Runtime, SNAPSHOTTER, SecurityError, UserNamespace};

/// Where ranges are claimed, one file per claimed slot: on disk, not on a tmpfs, so a pod
/// keeps its range (and the owners of its volumes' files) across a reboot, as kubelet's
/// per-pod record under its root directory does.
pub const CLAIMS_DIR: &str = "/var/lib/skiff/userns";

/// How many ranges there are: slot `n` is [`UserNamespace::nth`]`(n)`, and the last slot's
/// range ends below `u32::MAX` (which means "no id").
pub const SLOTS: u32 = 65_534;

/// Claims of one process are made one at a time (files make them exclusive between
/// processes).
static CLAIMING: Mutex<()> = Mutex::new(());

/// Why a pod got no id range.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// The claims directory could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Every range is taken.
    #[error("no user namespace id range is free on this host ({SLOTS} in use)")]
    Exhausted,
}

impl From<UsernsError> for SecurityError {
    fn from(e: UsernsError) -> SecurityError {
        SecurityError::UserNamespaceRange(e.to_string())
    }
}

/// The range of a pod that asks for one (`hostUsers: false`), claimed now or found claimed
/// from before: what `Security::from_api` takes. `None` for a pod in the host's user namespace.
///
/// `agent` names the agent among the host's agents, the same across its restarts: its
/// directory of container logs, which no two agents share (node names do not tell apart two
/// local clusters on one machine).
pub fn pod_range(
    pod: &skiff_api::kinds::PodSpec,
    agent: &Path,
    pod_uid: &str,
) -> Result<Option<UserNamespace>, SecurityError> {
    if pod.host_users != Some(false) {
        return Ok(None);
    }
    Ok(Some(Claims::new(CLAIMS_DIR).claim(agent, pod_uid)?))
}

/// Gives back the range of a pod that has left the node (nothing if it had none).
pub fn release(agent: &Path, pod_uid: &str) {
    if let Err(e) = Claims::new(CLAIMS_DIR).release(agent, pod_uid) {
        tracing::warn!(pod = %pod_uid, error = %e, "releasing the pod's user namespace range");
    }
}

/// Gives back the ranges this agent's pods hold, except those of the pods in `known`: the
/// sweep's part, for pods removed while the agent was down.
pub fn retain(agent: &Path, known: &HashSet<String>) {
    if let Err(e) = Claims::new(CLAIMS_DIR).retain(agent, known) {
        tracing::warn!(error = %e, "releasing user namespace ranges of pods that are gone");
    }
}

/// The claim files in one directory.
#[derive(Debug, Clone)]
pub struct Claims {
    dir: PathBuf,
}

impl Claims {
    /// Claims kept in `dir` (made when the first range is claimed).
    pub fn new(dir: impl Into<PathBuf>) -> Claims {
        Claims { dir: dir.into() }
    }

    /// The pod's range: the one it holds, else the lowest free one, claimed for it.
    pub fn claim(&self, agent: &Path, pod_uid: &str) -> Result<UserNamespace, UsernsError> {
        let _one = CLAIMING.lock().unwrap_or_else(|p| p.into_inner());
        let owner = owner(agent, pod_uid);
        let held = self.read()?;
        if let Some((slot, _)) = held.iter().find(|(_, o)| **o == owner) {
            return UserNamespace::nth(*slot).ok_or(UsernsError::Exhausted);
        }
        fs::create_dir_all(&self.dir).map_err(self.io("making", &self.dir))?;
        for slot in (0..SLOTS).filter(|s| !held.contains_key(s)) {
            let path = self.dir.join(slot.to_string());
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path);
            match file {
                Ok(_) => {
                    // Written after the exclusive create: a reader that sees the file still
                    // empty counts the slot as taken, never as its own.
                    fs::write(&path, &owner).map_err(self.io("writing", &path))?;
                    let ns = UserNamespace::nth(slot).ok_or(UsernsError::Exhausted)?;
                    tracing::info!(pod = %pod_uid, host_id = ns.host_id, "claimed a user namespace range");
                    return Ok(ns);
                }
                // Another process claimed it since the directory was read.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.io("claiming", &path)(e)),
            }
        }
        Err(UsernsError::Exhausted)
    }

    /// Drops the pod's claim.
    pub fn release(&self, agent: &Path, pod_uid: &str) -> Result<(), UsernsError> {
        let owner = owner(agent, pod_uid);
        self.drop_where(|o| *o == owner)
    }

    /// Drops this agent's claims of pods not in `known`.
    pub fn retain(&self, agent: &Path, known: &HashSet<String>) -> Result<(), UsernsError> {
        let mine = owner(agent, "");
        self.drop_where(|o| {
            o.strip_prefix(mine.trim_end_matches('\n'))
                .and_then(|rest| rest.strip_prefix('\n'))
                .and_then(|rest| rest.strip_suffix('\n'))
                .is_some_and(|uid| !uid.contains('\n') && !known.contains(uid))
        })
    }

    fn drop_where(&self, gone: impl Fn(&str) -> bool) -> Result<(), UsernsError> {
        let _one = CLAIMING.lock().unwrap_or_else(|p| p.into_inner());
        for (slot, o) in self.read()? {
            if gone(&o) {
                let path = self.dir.join(slot.to_string());
                match fs::remove_file(&path) {
                    Ok(()) => tracing::info!(slot, "released a user namespace range"),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(self.io("removing", &path)(e)),
                }
            }
        }
        Ok(())
    }

    /// Every claimed slot with its owner; files whose name is not a slot are left alone.
    fn read(&self) -> Result<HashMap<u32, String>, UsernsError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(self.io("reading", &self.dir)(e)),
        };
        let mut held = HashMap::new();
        for entry in entries {
            let entry = entry.map_err(self.io("reading", &self.dir))?;
            let Some(slot) = entry
                .file_name()
                .to_str()
                .filter(|n| {
                    *n == "0"
                        || (!n.is_empty()
                            && !n.starts_with('0')
                            && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|s| *s < SLOTS)
            else {
                continue;
            };
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            held.insert(slot, text);
        }
        Ok(held)
    }

    fn io(&self, action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UsernsError {
        let path = path.to_path_buf();
        move |source| UsernsError::Io {
            action,
            path,
            source,
        }
    }
}

/// A claim file's content.
fn owner(agent: &Path, pod_uid: &str) -> String {
    format!("{}\n{pod_uid}\n", agent.display())
}

/// What the name of a remapped image snapshot has after the image's chain ID.
const REMAPPED: &str = "-userns-";

/// The name of the image snapshot `chain_id` remapped into `ns`.
fn remapped_key(chain_id: &str, ns: UserNamespace) -> String {
    format!("{chain_id}{REMAPPED}{}-{}", ns.host_id, ns.size)
}

impl Runtime {
    /// The snapshot a container of a pod in `ns` starts from: the image's snapshot
    /// `chain_id` with its files' owners moved into the range, made now unless it exists.
    /// `lease` must hold until the container's own snapshot is prepared on it.
    pub(super) async fn remapped_parent(
        &self,
        chain_id: &str,
        ns: UserNamespace,
        lease: &str,
    ) -> Result<String> {
        let key = remapped_key(chain_id, ns);
        // Held by the lease from here on, should it exist: no container may be using it, and
        // containerd's collector would take it before the container's snapshot is on it.
        if let Err(s) = LeasesClient::new(self.channel.clone())
            .add_resource(self.req(AddResourceRequest {
                id: lease.into(),
                resource: Some(Resource {
                    id: key.clone(),
                    r#type: format!("snapshots/{SNAPSHOTTER}"),
                }),
            }))
            .await
        {
            tracing::debug!(snapshot = %key, "adding a snapshot to a lease: {s}");
        }
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        match snapshots
            .stat(self.leased(
                StatSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                },
                lease,
            ))
            .await
        {
            Ok(_) => return Ok(key),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(Error::containerd("stat snapshot", &key)(s)),
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let work = format!(
            "{key}-remap-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mounts = snapshots
            .prepare(self.leased(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: work.clone(),
                    parent: chain_id.into(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
            .map_err(Error::containerd(
                "preparing snapshot",
                format!("{work} on {chain_id}"),
            ))?
            .into_inner()
            .mounts;
        let target = std::env::temp_dir().join(&work);
        let remap = tokio::task::spawn_blocking(move || {
            let result = with_mounted(&mounts, &target, |root| shift_tree(root, ns.host_id));
            let _ = fs::remove_dir(&target);
            result
        })
        .await
        .map_err(|e| Error::File {
            action: "remapping the root filesystem for a user namespace:",
            path: PathBuf::from(&work),
            source: io::Error::other(e.to_string()),
        })
        .and_then(|r| r);
        if let Err(e) = remap {
            self.remove_snapshot(&work).await.ok();
            return Err(e);
        }
        match snapshots
            .commit(self.leased(
                CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: key.clone(),
                    key: work.clone(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
        {
            Ok(_) => {
                tracing::info!(image = %chain_id, host_id = ns.host_id, "remapped the image's root filesystem");
                Ok(key)
            }
            // Made at the same time by another container of the pod: use that one.
            Err(s) if s.code() == Code::AlreadyExists => {
                self.remove_snapshot(&work).await.ok();
                Ok(key)
            }
            Err(s) => {
                self.remove_snapshot(&work).await.ok();
                Err(Error::containerd("committing snapshot", &key)(s))
            }
        }
    }
}

impl Runtime {
    /// The remapped image snapshot the snapshot `key` (a container's) is on, if it is on one.
    pub(super) async fn remapped_parent_of(&self, key: &str) -> Option<String> {
        let info = SnapshotsClient::new(self.channel.clone())
            .stat(self.req(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            }))
            .await
            .ok()?
            .into_inner()
            .info?;
        info.parent.contains(REMAPPED).then_some(info.parent)
    }

    /// Removes a remapped image snapshot unless another container's snapshot is still on it
    /// (containerd refuses then; the last container's removal takes it). Leaving it would be
    /// harmless: containerd's collector takes unused snapshots too, only later.
    pub(super) async fn remove_unused_remapped(&self, key: &str) {
        match self.remove_snapshot(key).await {
            Ok(()) => {
                tracing::debug!(snapshot = %key, "removed a remapped snapshot no container uses")
            }
            Err(Error::Containerd { source, .. }) if source.code() == Code::FailedPrecondition => {}
            Err(e) => tracing::debug!(snapshot = %key, error = %e, "removing a remapped snapshot"),
        }
    }
}

/// Mounts containerd's `mounts` (one overlay or bind mount) on `target`, runs `f` on it and
/// unmounts.
fn with_mounted(
    mounts: &[Mount],
    target: &Path,
    f: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let file_err = |action: &'static str| {
        let path = target.to_path_buf();
        move |source: io::Error| Error::File {
            action,
            path,
            source,
        }
    };
    let [m] = mounts else {
        return Err(file_err("mounting the snapshot (not one mount) on")(
            io::Error::other(format!("{} mounts", mounts.len())),
        ));
    };
    fs::create_dir_all(target).map_err(file_err("making"))?;
    let (flags, data) = mount_options(m);
    // mount(2) takes one page of options; containerd shortens long lowerdir lists with
    // relative paths, which this does not.
    if data.len() >= 4096 {
        return Err(file_err("mounting the snapshot on")(io::Error::other(
            format!(
                "the image has too many layers to remap for a user namespace ({} bytes of mount options)",
                data.len()
            ),
        )));
    }
    let data = CString::new(data)
        .map_err(|e| file_err("mounting the snapshot on")(io::Error::other(e)))?;
    let fstype = if m.r#type == "bind" {
        "none"
    } else {
        &m.r#type
    };
    rustix::mount::mount(m.source.as_str(), target, fstype, flags, data.as_c_str())
        .map_err(|e| file_err("mounting the snapshot on")(e.into()))?;
    let result = f(target);
    if let Err(e) = rustix::mount::unmount(target, UnmountFlags::empty()) {
        tracing::warn!(path = %target.display(), error = %e, "unmounting a remapped snapshot; detaching it");
        let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
    }
    result
}

/// The flags and the filesystem data of a containerd mount's options.
fn mount_options(m: &Mount) -> (MountFlags, String) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    if m.r#type == "bind" {
        flags |= MountFlags::BIND;
    }
    for o in &m.options {
        match o.as_str() {
            "rbind" => flags |= MountFlags::BIND | MountFlags::REC,
            "bind" => flags |= MountFlags::BIND,
            "ro" => flags |= MountFlags::RDONLY,
            "rw" => {}
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// The extended attribute that holds a file's capabilities.
const CAPS_XATTR: &str = "security.capability";

/// Moves every file's owner and group under `root` up by `offset`, as the pod's user
/// namespace maps them: symlinks themselves (never what they point at), hard links once,
/// setuid, setgid and sticky bits and file capabilities kept (a chown clears them).
///
/// A hard link may or may not still share its inode once another name of it was moved:
/// overlayfs without its index copies each name up on its own (and reports the lower inode
/// number for both), a plain directory shares it. So a name of an inode met before is moved
/// only when it does not show the owner already given to that inode.
pub(crate) fn shift_tree(root: &Path, offset: u32) -> Result<()> {
    let mut moved: HashMap<(u64, u64), (u32, u32)> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let file_err = |action: &'static str| {
            let path = path.clone();
            move |source: io::Error| Error::File {
                action,
                path,
                source,
            }
        };
        let meta = fs::symlink_metadata(&path).map_err(file_err("reading"))?;
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(file_err("reading"))? {
                stack.push(entry.map_err(file_err("reading"))?.path());
            }
        }
        let linked = meta.nlink() > 1 && !meta.is_dir();
        if linked && moved.get(&(meta.dev(), meta.ino())) == Some(&(meta.uid(), meta.gid())) {
            continue;
        }
        let shift = |id: u32| {
            id.checked_add(offset).ok_or_else(|| {
                file_err("remapping the owner of")(io::Error::other(format!(
                    "id {id} + {offset} is past the id space"
                )))
            })
        };
        let (uid, gid) = (shift(meta.uid())?, shift(meta.gid())?);
        if linked {
            moved.insert((meta.dev(), meta.ino()), (uid, gid));
        }
        let symlink = meta.file_type().is_symlink();
        let caps = if symlink {
            None
        } else {
            let mut buf = [0u8; 32];
            match rustix::fs::lgetxattr(&path, CAPS_XATTR, &mut buf) {
                Ok(n) => Some(buf[..n].to_vec()),
                Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => None,
                Err(e) => return Err(file_err("reading the capabilities of")(e.into())),
            }
        };
        rustix::fs::chownat(
            CWD,
            &path,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| file_err("changing the owner of")(e.into()))?;
        let mode = meta.permissions().mode();
        if !symlink && mode & 0o7000 != 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(file_err("restoring the mode of"))?;
        }
        if let Some(caps) = caps {
            let caps = caps_for_namespace(&caps, offset).ok_or_else(|| {
                file_err("remapping the capabilities of")(io::Error::other(
                    "not a capability set this kernel writes",
                ))
            })?;
            rustix::fs::lsetxattr(&path, CAPS_XATTR, &caps, XattrFlags::empty())
                .map_err(|e| file_err("restoring the capabilities of")(e.into()))?;
        }
    }
    Ok(())
}

/// A file capability set (`security.capability`, revision 1, 2 or 3) rewritten as revision 3
/// with its root id moved up by `offset`: the kernel honours file capabilities in a user
/// namespace only when their root id is the namespace's root, and revisions 1 and 2 mean the
/// host's root. `None` for what is not a capability set.
fn caps_for_namespace(caps: &[u8], offset: u32) -> Option<Vec<u8>> {
    const REVISION_MASK: u32 = 0xFF00_0000;
    const REVISION_1: u32 = 0x0100_0000;
    const REVISION_2: u32 = 0x0200_0000;
    const REVISION_3: u32 = 0x0300_0000;
    let word = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            caps.get(i * 4..i * 4 + 4)?.try_into().ok()?,
        ))
    };
    let magic = word(0)?;
    let flags = magic & !REVISION_MASK;
    // permitted, inheritable of the low and the high 32 capabilities; root id.
    let (data, root_id) = match (magic & REVISION_MASK, caps.len()) {
        (REVISION_1, 12) => ([word(1)?, word(2)?, 0, 0], 0),
        (REVISION_2, 20) => ([word(1)?, word(2)?, word(3)?, word(4)?], 0),
        (REVISION_3, 24) => ([word(1)?, word(2)?, word(3)?, word(4)?], word(5)?),
        _ => return None,
    };
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&(REVISION_3 | flags).to_le_bytes());
    for w in data {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&root_id.checked_add(offset)?.to_le_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "skiff-userns-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn each_pod_gets_its_own_range_above_the_hosts_and_keeps_it() {
        let dir = tempdir("claims");
        let claims = Claims::new(&dir);
        let a = claims.claim(Path::new("/a"), "uid-a").unwrap();
        let b = claims.claim(Path::new("/a"), "uid-b").unwrap();
        assert_eq!(a, UserNamespace::nth(0).unwrap());
        assert_eq!(a.host_id, 65_536);
        assert_eq!(b.host_id, 131_072);
        // Asked again (a restarted agent adopting the pod), the same range.
        assert_eq!(
            Claims::new(&dir).claim(Path::new("/a"), "uid-a").unwrap(),
            a
        );
        // Another agent's pod on the same machine does not get a taken range.
        let c = claims.claim(Path::new("/b"), "uid-a").unwrap();
        assert_eq!(c.host_id, 196_608);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_released_range_goes_to_the_next_pod() {
        let dir = tempdir("release");
        let claims = Claims::new(&dir);
        let a = claims.claim(Path::new("/n"), "uid-a").unwrap();
        claims.claim(Path::new("/n"), "uid-b").unwrap();
        claims.release(Path::new("/n"), "uid-a").unwrap();
        assert_eq!(claims.claim(Path::new("/n"), "uid-c").unwrap(), a);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn retain_drops_only_this_agents_claims_of_pods_that_are_gone() {
        let dir = tempdir("retain");
        let claims = Claims::new(&dir);
        let kept = claims.claim(Path::new("/n"), "uid-kept").unwrap();
        claims.claim(Path::new("/n"), "uid-gone").unwrap();
        let other = claims.claim(Path::new("/n/m"), "uid-gone").unwrap();
        claims
            .retain(Path::new("/n"), &HashSet::from(["uid-kept".to_owned()]))
            .unwrap();
        let held = claims.read().unwrap();
        assert_eq!(held.len(), 2, "{held:?}");
        assert_eq!(claims.claim(Path::new("/n"), "uid-kept").unwrap(), kept);
        assert_eq!(claims.claim(Path::new("/n/m"), "uid-gone").unwrap(), other);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_that_are_not_slots_are_not_claims() {
        let dir = tempdir("junk");
        for name in ["007", "65534", "x", "-1"] {
            fs::write(dir.join(name), "/n\nuid-a\n").unwrap();
        }
        let claims = Claims::new(&dir);
        assert!(claims.read().unwrap().is_empty());
        assert_eq!(
            claims.claim(Path::new("/n"), "uid-a").unwrap().host_id,
            65_536
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pod_in_the_hosts_user_namespace_claims_nothing() {
        let spec: skiff_api::kinds::PodSpec =
            serde_json::from_value(serde_json::json!({"containers": []})).unwrap();
        assert_eq!(pod_range(&spec, Path::new("/n"), "uid").unwrap(), None);
    }

    #[test]
    fn capabilities_are_rewritten_as_revision_3_rooted_in_the_range() {
        // Revision 2, effective, CAP_NET_RAW (13) permitted.
        let mut v2 = Vec::new();
        for w in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
            v2.extend_from_slice(&w.to_le_bytes());
        }
        let v3 = caps_for_namespace(&v2, 131_072).unwrap();
        let words: Vec<u32> = v3
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(words, [0x0300_0001, 1 << 13, 0, 0, 0, 131_072]);
        // A revision 3 set moves by the offset; garbage is refused.
        let again = caps_for_namespace(&v3, 65_536).unwrap();
        assert_eq!(&again[20..], &196_608u32.to_le_bytes());
        assert_eq!(caps_for_namespace(&v2[..19], 1), None);
        assert_eq!(caps_for_namespace(&[0u8; 20], 1), None);
    }

    #[test]
    fn on_overlayfs_both_names_of_a_hard_link_are_moved_once() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: needs root to mount");
            return;
        }
        let dir = tempdir("overlay");
        for d in ["lower", "upper", "work", "merged"] {
            fs::create_dir(dir.join(d)).unwrap();
        }
        fs::write(dir.join("lower/a"), "x").unwrap();
        fs::hard_link(dir.join("lower/a"), dir.join("lower/b")).unwrap();
        let d = |n: &str| dir.join(n).display().to_string();
        let mount = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("workdir={}", d("work")),
                format!("upperdir={}", d("upper")),
                format!("lowerdir={}", d("lower")),
            ],
            ..Default::default()
        };
        with_mounted(&[mount], &dir.join("merged"), |root| {
            shift_tree(root, 65_536)?;
            for name in ["a", "b"] {
                let m = fs::symlink_metadata(root.join(name)).unwrap();
                assert_eq!((m.uid(), m.gid()), (65_536, 65_536), "{name}");
            }
            Ok(())
        })
        .unwrap();
        // The lower layer (the image's snapshot) is left as it was.
        assert_eq!(fs::metadata(dir.join("lower/a")).unwrap().uid(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shifting_a_tree_moves_owners_keeps_setuid_and_never_follows_symlinks() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: needs root to chown");
            return;
        }
        let dir = tempdir("shift");
        let outside = tempdir("outside");
        fs::write(outside.join("host"), "").unwrap();
        fs::create_dir(dir.join("bin")).unwrap();
        fs::write(dir.join("bin/tool"), "x").unwrap();
        fs::hard_link(dir.join("bin/tool"), dir.join("bin/alias")).unwrap();
        std::os::unix::fs::symlink(outside.join("host"), dir.join("escape")).unwrap();
        rustix::fs::chownat(
            CWD,
            dir.join("bin/tool"),
            Some(Uid::from_raw(5)),
            Some(Gid::from_raw(6)),
            AtFlags::empty(),
        )
        .unwrap();
        // After the chown, which clears it.
        fs::set_permissions(dir.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        // `setcap cap_net_raw+ep`, as a layer of an image carries it.
        fs::write(dir.join("bin/ping"), "x").unwrap();
        let mut v2 = Vec::new();
        for w in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
            v2.extend_from_slice(&w.to_le_bytes());
        }
        rustix::fs::lsetxattr(dir.join("bin/ping"), CAPS_XATTR, &v2, XattrFlags::empty()).unwrap();
        shift_tree(&dir, 65_536).unwrap();
        let mut caps = [0u8; 32];
        let n = rustix::fs::lgetxattr(dir.join("bin/ping"), CAPS_XATTR, &mut caps).unwrap();
        assert_eq!(
            caps[..n],
            caps_for_namespace(&v2, 65_536).unwrap(),
            "the capabilities survive the chown, rooted in the range"
        );
        let tool = fs::metadata(dir.join("bin/tool")).unwrap();
        assert_eq!(
            (tool.uid(), tool.gid()),
            (65_541, 65_542),
            "hard link shifted once"
        );
        assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
        let link = fs::symlink_metadata(dir.join("escape")).unwrap();
        assert_eq!(link.uid(), 65_536);
        assert_eq!(fs::metadata(&dir).unwrap().uid(), 65_536);
        assert_eq!(fs::metadata(outside.join("host")).unwrap().uid(), 0);
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }
}
