//! The state file (`<dir>/state.json`): what `up` made, written after every step, so that
//! `down` can undo a partial `up` and `status` knows what should be running.

use std::{
    fs,
    io::{ErrorKind, Write as _},
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::layout::Layout;

/// Bumped when the file's meaning changes.
pub const STATE_VERSION: u32 = 1;

/// Where `up` got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// `up` is running, or stopped before the cluster was up.
    Starting,
    /// Every process runs and every node was Ready.
    Up,
}

/// One process `up` started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRecord {
    /// What it is: `etcd`, `containerd`, `apiserver`, `scheduler`, `controller-manager`,
    /// `agent-node-0`, ...
    pub name: String,
    pub pid: u32,
    /// Its start time (clock ticks after boot, `/proc/<pid>/stat` field 22): with the pid, this
    /// names the process uniquely, so a recycled pid is never mistaken for it.
    pub start_time: u64,
    /// Its command line as the kernel shows it (`/proc/<pid>/cmdline`).
    pub argv: Vec<String>,
    pub log: PathBuf,
}

/// A network namespace `up` made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetnsRecord {
    /// Its name under /run/netns.
    pub name: String,
    /// Its inode (`/proc/<pid>/ns/net` of its members shows `net:[<inode>]`): how `down`
    /// knows the name still means the namespace `up` made, and finds processes left inside it
    /// before it deletes the name (inodes are reused once a namespace is gone).
    pub inode: u64,
}

/// The cluster's registry (`docker-registry` in a namespace of its own on the fabric); its
/// process is in [`State::processes`] as `registry`, its namespace in [`State::netns`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryRecord {
    /// Its network namespace's name under /run/netns.
    pub netns: String,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its name in image references (`10.250.0.2:5000`).
    pub host: String,
    /// The images `up` pushed into it (`library/nginx:1.22`, ...).
    pub images: Vec<String>,
    /// The registry configuration directory every node's agent reads.
    pub hosts_dir: PathBuf,
}

/// The state file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct State {
    pub version: u32,
    pub name: String,
    pub dir: PathBuf,
    pub nodes: usize,
    pub phase: Phase,
    /// Directories `up` created, outermost first (the cluster directory and any parents that
    /// did not exist): `down` removes them if they are empty.
    pub created_dirs: Vec<PathBuf>,
    /// The image directory the agents import from.
    pub image_dir: Option<PathBuf>,
    /// Whether `up` built the image directory (then `down` removes it).
    pub image_built: bool,
    /// etcd's client URL.
    pub etcd_url: Option<String>,
    /// The API server's TCP address (loopback).
    pub api_addr: Option<SocketAddr>,
    pub processes: Vec<ProcessRecord>,
    pub netns: Vec<NetnsRecord>,
    /// The cluster's registry, once `up` started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryRecord>,
}

impl State {
    /// A new state for `layout`, nothing made yet.
    pub fn new(layout: &Layout, nodes: usize) -> State {
        State {
            version: STATE_VERSION,
            name: layout.name().to_owned(),
            dir: layout.dir().to_path_buf(),
            nodes,
            phase: Phase::Starting,
            created_dirs: Vec::new(),
            image_dir: None,
            image_built: false,
            etcd_url: None,
            api_addr: None,
            processes: Vec::new(),
            netns: Vec::new(),
            registry: None,
        }
    }

    /// Reads the state file of `layout`; `Ok(None)` when there is none.
    pub fn load(layout: &Layout) -> Result<Option<State>> {
        let path = layout.state_file();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a skiff-local state file", path.display()))?;
        if state.version != STATE_VERSION {
            bail!(
                "{} has state version {}, this skiff-local understands {STATE_VERSION}",
                path.display(),
                state.version
            );
        }
        if state.name != layout.name() {
            bail!(
                "{} belongs to the cluster {:?}, not {:?}: pass --name {}",
                layout.dir().display(),
                state.name,
                layout.name(),
                state.name
            );
        }
        Ok(Some(state))
    }

    /// Writes the state file for the first time; fails if one exists (another `up` got there).
    pub fn create(&self, layout: &Layout) -> Result<()> {
        let path = layout.state_file();
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(&self.to_json()?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Rewrites the state file atomically (a crash leaves the old or the new one, never half).
    pub fn save(&self, layout: &Layout) -> Result<()> {
        let path = layout.state_file();
        let tmp = path.with_extension("json.tmp");
        write_private(&tmp, &self.to_json()?)?;
        fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }

    fn to_json(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self).context("encoding the state")?;
        v.push(b'\n');
        Ok(v)
    }

    /// The record of the process called `name`.
    pub fn process(&self, name: &str) -> Option<&ProcessRecord> {
        self.processes.iter().find(|p| p.name == name)
    }
}

/// Writes a file readable by its owner only (tokens, the state).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_layout(tag: &str) -> (Layout, PathBuf) {
        let dir = std::env::temp_dir().join(format!("skiff-local-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        (Layout::new("unit", Some(&dir)).unwrap(), dir)
    }

    #[test]
    fn the_state_round_trips_and_a_second_create_fails() {
        let (layout, dir) = temp_layout("roundtrip");
        let mut s = State::new(&layout, 2);
        s.create(&layout).unwrap();
        assert!(s.create(&layout).is_err(), "a second create must fail");
        s.processes.push(ProcessRecord {
            name: "etcd".into(),
            pid: 42,
            start_time: 7,
            argv: vec!["etcd".into(), "--name".into(), "m0".into()],
            log: dir.join("logs/etcd.log"),
        });
        s.netns.push(NetnsRecord {
            name: layout.fabric_netns(),
            inode: 4026532000,
        });
        s.phase = Phase::Up;
        s.save(&layout).unwrap();
        assert_eq!(State::load(&layout).unwrap(), Some(s));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_state_file_of_another_cluster_name_is_refused() {
        let (layout, dir) = temp_layout("othername");
        State::new(&layout, 1).create(&layout).unwrap();
        let other = Layout::new("other", Some(&dir)).unwrap();
        let err = State::load(&other).unwrap_err();
        assert!(err.to_string().contains("--name unit"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_state_file_is_none() {
        let (layout, dir) = temp_layout("none");
        assert_eq!(State::load(&layout).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
