//! Where a datapath instance keeps its pins: `<bpffs>/skiff/<instance>/{maps,links,uplinks}/`
//! (`links` for pods' veths, `uplinks` for the node's uplink, kept apart so that tidying pod
//! links never touches the uplink's).

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{Direction, Error, Result};

/// Where the BPF filesystem is normally mounted.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// The pin paths of one datapath instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    dir: PathBuf,
}

impl PinLayout {
    /// The layout of `instance` under the bpffs mounted at `bpffs_root`. The name must be a
    /// plain directory name.
    pub fn new(bpffs_root: &Path, instance: &str) -> Result<Self> {
        validate_instance(instance)?;
        Ok(PinLayout {
            dir: bpffs_root.join("skiff").join(instance),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// The pin of the conntrack collector program (`skiff_ct_gc`).
    pub fn collector(&self) -> PathBuf {
        self.dir.join("ct_gc")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    /// The pin of `iface`'s link on `hook`. The name is checked as Linux checks interface names
    /// (which cannot contain ':' or '/'), so `<iface>:<hook>` is unambiguous and stays inside
    /// the links directory.
    pub fn link(&self, iface: &str, hook: Direction) -> Result<PathBuf> {
        validate_interface(iface)?;
        Ok(self
            .links_dir()
            .join(format!("{iface}:{}", hook.pin_suffix())))
    }

    pub fn uplinks_dir(&self) -> PathBuf {
        self.dir.join("uplinks")
    }

    /// The pin of the uplink `iface`'s NodePort link on `hook`.
    pub fn uplink(&self, iface: &str, hook: Direction) -> Result<PathBuf> {
        validate_interface(iface)?;
        Ok(self
            .uplinks_dir()
            .join(format!("{iface}:{}", hook.pin_suffix())))
    }

    /// Parses a link pin's file name back into (interface, hook).
    pub fn parse_link_name(name: &str) -> Option<(String, Direction)> {
        let (iface, hook) = name.rsplit_once(':')?;
        let hook = Direction::from_pin_suffix(hook)?;
        Some((iface.to_owned(), hook))
    }

    /// Checks that the parent is a bpffs and creates the instance's directories.
    pub fn create(&self) -> Result<()> {
        let root = self
            .dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/"));
        ensure_bpffs(root)?;
        for d in [self.maps_dir(), self.links_dir(), self.uplinks_dir()] {
            fs::create_dir_all(&d).map_err(|source| Error::Io {
                op: "creating pin directory",
                path: d.clone(),
                source,
            })?;
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.maps_dir().is_dir()
    }
}

/// Removes every pin of an instance: links detach, maps and programs are freed once nothing
/// else holds them. Traffic through the instance's interfaces is no longer translated.
/// Returns whether there was anything to remove.
pub(super) fn reset(layout: &PinLayout) -> Result<bool> {
    let dir = layout.dir();
    if !dir.exists() {
        return Ok(false);
    }
    ensure_bpffs(dir)?;
    fs::remove_dir_all(dir).map_err(|source| Error::Io {
        op: "removing pin directory",
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(true)
}

fn ensure_bpffs(path: &Path) -> Result<()> {
    match rustix::fs::statfs(path) {
        // f_type is a signed or unsigned word depending on the architecture.
        Ok(st) if st.f_type as u64 == BPF_FS_MAGIC => Ok(()),
        _ => Err(Error::BpffsMissing {
            path: path.to_path_buf(),
        }),
    }
}

fn validate_interface(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("Linux interface names have at most 15 bytes")
    } else if name == "." || name == ".." {
        Some("it is not a name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("interface names cannot contain '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidInterface {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_instance(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 64 {
        Some("it is longer than 64 characters")
    } else if name.starts_with('.') {
        Some("it starts with '.'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        Some("only letters, digits, '-', '_' and '.' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidInstance {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_that_could_escape_the_pin_directory_are_refused() {
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b", &"x".repeat(65)] {
            assert!(
                PinLayout::new(Path::new("/sys/fs/bpf"), bad).is_err(),
                "{bad:?}"
            );
        }
        assert!(PinLayout::new(Path::new("/sys/fs/bpf"), "node-1.test_a").is_ok());
    }

    #[test]
    fn link_pin_names_round_trip_even_for_dotted_interface_names() {
        let l = PinLayout::new(Path::new("/sys/fs/bpf"), "n1").unwrap();
        let p = l.link("eth0.100", Direction::Egress).unwrap();
        assert_eq!(p, Path::new("/sys/fs/bpf/skiff/n1/links/eth0.100:egress"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            PinLayout::parse_link_name(name),
            Some(("eth0.100".to_owned(), Direction::Egress))
        );
        assert_eq!(PinLayout::parse_link_name("junk"), None);
    }

    #[test]
    fn interface_names_that_are_not_linux_names_are_refused_before_any_path_is_made() {
        let l = PinLayout::new(Path::new("/sys/fs/bpf"), "n1").unwrap();
        for bad in ["", "..", "../maps", "a:b", "eth 0", "sixteen-chars-xx"] {
            let err = l.link(bad, Direction::Ingress).unwrap_err().to_string();
            assert!(err.contains("invalid interface name"), "{bad:?}: {err}");
        }
        assert!(l.link("vethd7a1c9e0f12", Direction::Ingress).is_ok());
    }

    #[test]
    fn a_directory_that_is_not_bpffs_is_refused_with_the_mount_command() {
        let err = ensure_bpffs(Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("mount -t bpf"), "{err}");
    }
}
