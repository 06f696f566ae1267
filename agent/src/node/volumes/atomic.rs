//! Files of a ConfigMap, Secret, downwardAPI or projected volume, written so that a reader
//! never sees half an update: each version goes into a new hidden directory `..<stamp>`, the
//! `..data` symlink is swapped to it with one rename, and the names users see are symlinks
//! through `..data` (`key -> ..data/key`). A payload equal to what is there writes nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _, symlink},
    path::{Component, Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// The symlink to the current version's directory.
pub const DATA_DIR: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
/// Kubernetes' longest path of a projected file.
const MAX_PATH: usize = 4096;
/// Linux's longest file name.
const MAX_NAME: usize = 255;

/// One file of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Relative path in the volume (`key`, or an item's `path`: `conf/app.yaml`).
    pub path: String,
    /// Contents.
    pub data: Vec<u8>,
    /// Permission bits (`mode` of the item, else `defaultMode`), 0..=0o777.
    pub mode: u32,
}

/// Why a payload could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    /// A file's path is not a safe relative path (kubelet's wording).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    /// Two files share a path, or one file's path is a directory of another.
    #[error("path {0:?} is given twice or is both a file and a directory")]
    Conflict(String),
    /// A file operation failed.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AtomicError + use<> {
    let path = path.to_owned();
    move |source| AtomicError::Io {
        action,
        path,
        source,
    }
}

/// Kubelet's checks of a projected file's path: relative, no `..` element, not starting
/// with `..` (the writer's own names), not too long.
pub fn validate_path(path: &str) -> Result<(), AtomicError> {
    let bad = |reason: &str| {
        Err(AtomicError::InvalidPath {
            path: path.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if path.is_empty() {
        return bad("must not be empty");
    }
    if path.len() > MAX_PATH {
        return bad(&format!(
            "length {} exceeds max length {MAX_PATH}",
            path.len()
        ));
    }
    if path.contains('\0') {
        return bad("must not contain a NUL byte");
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return bad("must not be absolute path");
    }
    for c in p.components() {
        match c {
            Component::ParentDir => return bad("must not contain '..'"),
            Component::Normal(n) if n.len() > MAX_NAME => {
                return bad(&format!(
                    "element {} exceeds max length {MAX_NAME}",
                    n.to_string_lossy()
                ));
            }
            Component::Normal(_) | Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return bad("must not be absolute path"),
        }
    }
    if path.starts_with("..") {
        return bad("must not start with '..'");
    }
    Ok(())
}

/// The payload's files by normalized path (`./a//b` is `a/b`), checked.
fn normalize(files: &[File]) -> Result<BTreeMap<PathBuf, &File>, AtomicError> {
    let mut out = BTreeMap::new();
    for f in files {
        validate_path(&f.path)?;
        let norm: PathBuf = Path::new(&f.path)
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        if norm.as_os_str().is_empty() {
            return Err(AtomicError::InvalidPath {
                path: f.path.clone(),
                reason: "must name a file".into(),
            });
        }
        if out.insert(norm, f).is_some() {
            return Err(AtomicError::Conflict(f.path.clone()));
        }
    }
    // A file may not also be a directory of another file.
    for p in out.keys() {
        let mut parent = p.parent();
        while let Some(d) = parent.filter(|d| !d.as_os_str().is_empty()) {
            if out.contains_key(d) {
                return Err(AtomicError::Conflict(d.to_string_lossy().into_owned()));
            }
            parent = d.parent();
        }
    }
    Ok(out)
}

/// Writes `files` into `dir` (which exists) atomically, as described at the top; with
/// `fs_group`, files and directories belong to that group and are group-readable. Returns
/// whether anything changed.
pub fn write(dir: &Path, files: &[File], fs_group: Option<u32>) -> Result<bool, AtomicError> {
    let payload = normalize(files)?;
    let data_link = dir.join(DATA_DIR);
    let current = fs::read_link(&data_link).ok();
    let unchanged = match &current {
        Some(old) => same_payload(&dir.join(old), &payload, fs_group)?,
        None => false,
    };
    if !unchanged {
        let stamp = new_stamp();
        let new_dir = dir.join(&stamp);
        fs::create_dir(&new_dir).map_err(io_err("creating", &new_dir))?;
        set_mode(&new_dir, 0o755, fs_group, true)?;
        for (rel, f) in &payload {
            let path = new_dir.join(rel);
            if let Some(parent) = path.parent() {
                make_dirs(&new_dir, parent, fs_group)?;
            }
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err("creating", &path))?;
            file.write_all(&f.data).map_err(io_err("writing", &path))?;
            file.sync_all().map_err(io_err("syncing", &path))?;
            set_mode(&path, f.mode & 0o777, fs_group, false)?;
        }
        let tmp = dir.join(DATA_TMP);
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("removing", &tmp)(e));
            }
            _ => {}
        }
        symlink(&stamp, &tmp).map_err(io_err("linking", &tmp))?;
        fs::rename(&tmp, &data_link).map_err(io_err("renaming onto", &data_link))?;
    }
    // The names users see: one symlink per top-level entry, through `..data`.
    let top: BTreeSet<PathBuf> = payload
        .keys()
        .filter_map(|p| p.components().next())
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    for name in &top {
        let link = dir.join(name);
        match fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => continue,
            // Not this writer's (an older agent made subPath directories here): the name is
            // the payload's.
            Ok(m) => remove_any(&link, m.is_dir())?,
            Err(_) => {}
        }
        symlink(Path::new(DATA_DIR).join(name), &link).map_err(io_err("linking", &link))?;
    }
    for entry in fs::read_dir(dir).map_err(io_err("reading", dir))? {
        let entry = entry.map_err(io_err("reading", dir))?;
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b"..") || top.contains(Path::new(&name)) {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        remove_any(&path, is_dir)?;
    }
    // Versions no longer current: the one just replaced, and any an interrupted write left.
    let live = fs::read_link(&data_link).map_err(io_err("reading", &data_link))?;
    for entry in fs::read_dir(dir).map_err(io_err("reading", dir))? {
        let entry = entry.map_err(io_err("reading", dir))?;
        let name = entry.file_name();
        let stale = name.as_encoded_bytes().starts_with(b"..")
            && name != DATA_DIR
            && name != DATA_TMP
            && Path::new(&name) != live
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if stale {
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
        }
    }
    Ok(!unchanged)
}

/// Removes a file, symlink or (with what is in it) directory.
fn remove_any(path: &Path, is_dir: bool) -> Result<(), AtomicError> {
    let removed = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.map_err(io_err("removing", path))
}

/// A name for the next version's directory: hidden, unique within this process and time.
fn new_stamp() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "..{}_{:09}.{}",
        now.as_secs(),
        now.subsec_nanos(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn make_dirs(root: &Path, dir: &Path, fs_group: Option<u32>) -> Result<(), AtomicError> {
    if dir == root || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        make_dirs(root, parent, fs_group)?;
    }
    fs::create_dir(dir).map_err(io_err("creating", dir))?;
    set_mode(dir, 0o755, fs_group, true)
}

/// The mode a file or directory ends with: its own, plus with an fsGroup kubelet's read-only
/// volume rule (group read, and for directories group search and setgid).
fn final_mode(mode: u32, fs_group: Option<u32>, is_dir: bool) -> u32 {
    match (fs_group, is_dir) {
        (None, _) => mode,
        (Some(_), false) => mode | 0o440,
        (Some(_), true) => mode | 0o2550,
    }
}

fn set_mode(
    path: &Path,
    mode: u32,
    fs_group: Option<u32>,
    is_dir: bool,
) -> Result<(), AtomicError> {
    if let Some(gid) = fs_group {
        std::os::unix::fs::lchown(path, None, Some(gid)).map_err(io_err("chowning", path))?;
    }
    fs::set_permissions(
        path,
        fs::Permissions::from_mode(final_mode(mode, fs_group, is_dir)),
    )
    .map_err(io_err("chmoding", path))
}

/// Whether `dir` holds exactly the payload: the same files, contents and modes.
fn same_payload(
    dir: &Path,
    payload: &BTreeMap<PathBuf, &File>,
    fs_group: Option<u32>,
) -> Result<bool, AtomicError> {
    let mut found = Vec::new();
    if walk(dir, Path::new(""), &mut found).is_err() {
        return Ok(false);
    }
    if found.len() != payload.len() {
        return Ok(false);
    }
    for rel in found {
        let Some(f) = payload.get(&rel) else {
            return Ok(false);
        };
        let path = dir.join(&rel);
        let meta = fs::symlink_metadata(&path).map_err(io_err("reading", &path))?;
        if meta.permissions().mode() & 0o7777 != final_mode(f.mode & 0o777, fs_group, false) {
            return Ok(false);
        }
        if let Some(gid) = fs_group
            && std::os::unix::fs::MetadataExt::gid(&meta) != gid
        {
            return Ok(false);
        }
        if meta.len() != f.data.len() as u64 {
            return Ok(false);
        }
        let data = fs::read(&path).map_err(io_err("reading", &path))?;
        if data != f.data {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Regular files under `dir` (relative paths); symlinks and others count as a difference.
fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir.join(rel))? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let r = rel.join(entry.file_name());
        if ft.is_dir() {
            walk(dir, &r, out)?;
        } else if ft.is_file() {
            out.push(r);
        } else {
            return Err(io::Error::other("not a regular file"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::volumes::testdir::TestDir;

    fn file(path: &str, data: &str, mode: u32) -> File {
        File {
            path: path.into(),
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn files_are_reached_through_data_symlinks_and_nested_paths_work() {
        let t = TestDir::new("atomic-first");
        let changed = write(
            t.path(),
            &[file("a", "1", 0o644), file("conf/app.yaml", "x: 1", 0o400)],
            None,
        )
        .unwrap();
        assert!(changed);
        assert_eq!(fs::read_to_string(t.path().join("a")).unwrap(), "1");
        assert_eq!(
            fs::read_to_string(t.path().join("conf/app.yaml")).unwrap(),
            "x: 1"
        );
        assert_eq!(
            fs::read_link(t.path().join("a")).unwrap(),
            Path::new("..data/a")
        );
        assert_eq!(
            fs::read_link(t.path().join("conf")).unwrap(),
            Path::new("..data/conf")
        );
        let mode = fs::metadata(t.path().join("conf/app.yaml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
    }

    #[test]
    fn directories_an_older_agent_made_among_the_names_never_break_a_refresh() {
        let t = TestDir::new("atomic-stray");
        write(t.path(), &[file("a", "1", 0o644)], None).unwrap();
        // What an older agent's subPath made for keys that did not exist yet.
        fs::create_dir(t.path().join("later")).unwrap();
        fs::create_dir_all(t.path().join("gone/deep")).unwrap();
        assert!(
            write(
                t.path(),
                &[file("a", "1", 0o644), file("later", "2", 0o644)],
                None
            )
            .unwrap()
        );
        assert_eq!(fs::read_to_string(t.path().join("later")).unwrap(), "2");
        assert_eq!(
            fs::read_link(t.path().join("later")).unwrap(),
            Path::new("..data/later")
        );
        assert!(fs::symlink_metadata(t.path().join("gone")).is_err());
    }

    #[test]
    fn an_update_swaps_the_data_link_removes_gone_keys_and_the_old_version() {
        let t = TestDir::new("atomic-update");
        write(
            t.path(),
            &[file("a", "1", 0o644), file("b", "2", 0o644)],
            None,
        )
        .unwrap();
        let first = fs::read_link(t.path().join(DATA_DIR)).unwrap();
        assert!(write(t.path(), &[file("a", "one", 0o644)], None).unwrap());
        let second = fs::read_link(t.path().join(DATA_DIR)).unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read_to_string(t.path().join("a")).unwrap(), "one");
        assert!(fs::symlink_metadata(t.path().join("b")).is_err());
        assert!(!t.path().join(&first).exists());
        let names: BTreeSet<String> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            BTreeSet::from([
                "a".to_owned(),
                DATA_DIR.to_owned(),
                second.to_string_lossy().into_owned()
            ])
        );
    }

    #[test]
    fn versions_an_interrupted_write_left_are_swept_by_the_next_change() {
        let t = TestDir::new("atomic-sweep");
        write(t.path(), &[file("a", "1", 0o644)], None).unwrap();
        fs::create_dir(t.path().join("..1_000000001.99")).unwrap();
        write(t.path(), &[file("a", "2", 0o644)], None).unwrap();
        let hidden: Vec<String> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("..") && n != DATA_DIR)
            .collect();
        assert_eq!(hidden.len(), 1, "{hidden:?}");
    }

    #[test]
    fn an_unchanged_payload_writes_nothing_but_a_changed_mode_does() {
        let t = TestDir::new("atomic-same");
        write(t.path(), &[file("a", "1", 0o644)], None).unwrap();
        let first = fs::read_link(t.path().join(DATA_DIR)).unwrap();
        assert!(!write(t.path(), &[file("a", "1", 0o644)], None).unwrap());
        assert_eq!(fs::read_link(t.path().join(DATA_DIR)).unwrap(), first);
        assert!(write(t.path(), &[file("a", "1", 0o600)], None).unwrap());
    }

    #[test]
    fn unsafe_or_conflicting_paths_are_refused_with_kubelets_reasons() {
        for (path, reason) in [
            ("/etc/passwd", "must not be absolute path"),
            ("a/../../x", "must not contain '..'"),
            ("..data", "must not start with '..'"),
            ("..x", "must not start with '..'"),
            ("", "must not be empty"),
        ] {
            let err = validate_path(path).unwrap_err().to_string();
            assert!(err.contains(reason), "{path:?}: {err}");
        }
        assert!(validate_path("a/..b/c").is_ok());
        let t = TestDir::new("atomic-conflict");
        assert!(matches!(
            write(
                t.path(),
                &[file("a", "1", 0o644), file("a/b", "2", 0o644)],
                None
            ),
            Err(AtomicError::Conflict(_))
        ));
        assert!(matches!(
            write(
                t.path(),
                &[file("a", "1", 0o644), file("./a", "2", 0o644)],
                None
            ),
            Err(AtomicError::Conflict(_))
        ));
        assert!(fs::read_dir(t.path()).unwrap().next().is_none());
    }

    #[test]
    fn fs_group_makes_files_group_owned_and_group_readable() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: changing a file's group to any gid needs root");
            return;
        }
        let t = TestDir::new("atomic-fsgroup");
        write(t.path(), &[file("d/a", "1", 0o600)], Some(1234)).unwrap();
        let meta = fs::metadata(t.path().join("d/a")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 1234);
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        let dmeta = fs::metadata(t.path().join("d")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&dmeta), 1234);
        assert_eq!(dmeta.permissions().mode() & 0o7777, 0o2755);
        assert!(!write(t.path(), &[file("d/a", "1", 0o600)], Some(1234)).unwrap());
    }
}
