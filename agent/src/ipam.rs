//! Pod address management on one node: addresses from the node's pod CIDR, one per pod, kept on
//! disk so that an agent that restarts (or two that race) never hands out an address twice.
//!
//! Each allocated address is a file named after it in the state directory, holding its owner
//! (the pod's uid), made by linking a finished file into place. Creating the link is the
//! allocation, so it is atomic across threads and processes; deleting it is the release. A cursor file remembers the
//! last address handed out, and the search starts after it, so an address just released is not
//! given to the next pod at once (a peer may still hold connections to the old one).

use std::{
    fs,
    io::{ErrorKind, Write as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use skiff_api::net::Ipv4Cidr;

/// Why an address could not be had.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("the pod CIDR {0} is not between /8 and /30")]
    BadPrefix(Ipv4Cidr),
    #[error(
        "the IPAM state in {dir} is for the pod CIDR {stored}, not {asked}: remove the directory only once no pod uses its addresses"
    )]
    OtherCidr {
        dir: PathBuf,
        stored: String,
        asked: String,
    },
    #[error("invalid address owner {0:?}: it must be 1 to 128 characters of [A-Za-z0-9._-]")]
    BadOwner(String),
    #[error("every address of {cidr} is in use ({used} pods)")]
    Exhausted { cidr: String, used: usize },
    #[error("IPAM state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, IpamError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The gateway pods route through: the network's first usable address, kept for the node.
pub fn gateway(cidr: &Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}

/// Addresses pods may get: after the gateway, before the broadcast address.
fn pod_range(cidr: &Ipv4Cidr) -> (u32, u32) {
    (u32::from(cidr.network()) + 2, u32::from(cidr.last()) - 1)
}

const CIDR_FILE: &str = "cidr";
const CURSOR_FILE: &str = "last";

/// The addresses of one node's pod CIDR, kept in a state directory.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Cidr,
    /// Allocations of this process one at a time, so the cursor only moves forward (two
    /// racing allocations could otherwise write it back, and a just-released address would
    /// come next). Addresses themselves are safe across processes without it.
    cursor_lock: std::sync::Mutex<()>,
}

fn check_owner(owner: &str) -> Result<()> {
    let ok = !owner.is_empty()
        && owner.len() <= 128
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && owner != "."
        && owner != "..";
    if ok {
        Ok(())
    } else {
        Err(IpamError::BadOwner(owner.to_owned()))
    }
}

impl Ipam {
    /// Opens (or starts) the state in `dir` for `cidr`. State written for another CIDR is
    /// refused rather than reinterpreted.
    pub fn open(dir: &Path, cidr: Ipv4Cidr) -> Result<Ipam> {
        if !(8..=30).contains(&cidr.prefix()) {
            return Err(IpamError::BadPrefix(cidr));
        }
        fs::create_dir_all(dir).map_err(io(dir))?;
        let marker = dir.join(CIDR_FILE);
        match fs::read_to_string(&marker) {
            Ok(stored) if stored.trim() == cidr.to_string() => {}
            Ok(stored) => {
                return Err(IpamError::OtherCidr {
                    dir: dir.to_owned(),
                    stored: stored.trim().to_owned(),
                    asked: cidr.to_string(),
                });
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                write_atomically(&marker, cidr.to_string().as_bytes())?;
            }
            Err(e) => return Err(io(&marker)(e)),
        }
        Ok(Ipam {
            dir: dir.to_owned(),
            cidr,
            cursor_lock: std::sync::Mutex::new(()),
        })
    }

    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    /// `owner`'s address: the one it already holds (so asking again after a restart is safe),
    /// or the next free one after the last handed out.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr> {
        check_owner(owner)?;
        if let Some(ip) = self.address_of(owner)? {
            return Ok(ip);
        }
        let _one_at_a_time = self
            .cursor_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (first, last) = pod_range(&self.cidr);
        let size = last - first + 1;
        let start = self
            .cursor()
            .filter(|c| (first..=last).contains(c))
            .map_or(first, |c| if c == last { first } else { c + 1 });
        // The owner is written to a private file first and linked into place: a link is created
        // whole or not at all, and fails if the address is taken, so even a crash never leaves
        // an address held by nobody.
        let tmp = temp_path(&self.dir);
        write_synced(&tmp, owner.as_bytes())?;
        let mut result = None;
        for i in 0..size {
            let candidate = first + (start - first + i) % size;
            let ip = Ipv4Addr::from(candidate);
            let path = self.dir.join(ip.to_string());
            match fs::hard_link(&tmp, &path) {
                Ok(()) => {
                    result = Some(Ok(ip));
                    break;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    result = Some(Err(io(&path)(e)));
                    break;
                }
            }
        }
        let _ = fs::remove_file(&tmp);
        if let Some(r) = result {
            let ip = r?;
            // Only where the next search starts: losing it costs nothing.
            let _ = write_atomically(&self.dir.join(CURSOR_FILE), ip.to_string().as_bytes());
            return Ok(ip);
        }
        Err(IpamError::Exhausted {
            cidr: self.cidr.to_string(),
            used: self.allocations()?.len(),
        })
    }

    /// Gives `owner`'s address back; returns it, or `None` if it held none.
    pub fn release(&self, owner: &str) -> Result<Option<Ipv4Addr>> {
        check_owner(owner)?;
        let Some(ip) = self.address_of(owner)? else {
            return Ok(None);
        };
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(Some(ip)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every address held, with its owner, in address order (for adopting pods after a restart
    /// and releasing what belongs to pods that are gone).
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            if !self.cidr.contains(ip) {
                continue;
            }
            let path = entry.path();
            let owner = match fs::read_to_string(&path) {
                Ok(o) => o,
                // Released meanwhile.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            out.push((ip, owner.trim().to_owned()));
        }
        out.sort();
        Ok(out)
    }

    /// The address `owner` holds, if any.
    pub fn address_of(&self, owner: &str) -> Result<Option<Ipv4Addr>> {
        Ok(self
            .allocations()?
            .into_iter()
            .find(|(_, o)| o == owner)
            .map(|(ip, _)| ip))
    }

    fn cursor(&self) -> Option<u32> {
        fs::read_to_string(self.dir.join(CURSOR_FILE))
            .ok()?
            .trim()
            .parse::<Ipv4Addr>()
            .ok()
            .map(u32::from)
    }
}

/// A name in `dir` no other writer uses (and that is not an address).
fn temp_path(dir: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(".tmp-{}-{n}", std::process::id()))
}

fn write_synced(path: &Path, content: &[u8]) -> Result<()> {
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(path)?;
        f.write_all(content)?;
        f.sync_all()
    };
    write().map_err(io(path))
}

/// Writes `path` whole or not at all: a temporary file, synced, renamed over it.
fn write_atomically(path: &Path, content: &[u8]) -> Result<()> {
    let tmp = temp_path(path.parent().unwrap_or(Path::new(".")));
    write_synced(&tmp, content)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(path)(e)
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, sync::Arc};

    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("skiff-ipam-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn cidr(s: &str) -> Ipv4Cidr {
        Ipv4Cidr::parse(s).unwrap()
    }

    #[test]
    fn pods_get_addresses_between_the_gateway_and_the_broadcast_address() {
        let c = cidr("10.244.3.0/24");
        assert_eq!(gateway(&c), Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(
            pod_range(&c),
            (
                u32::from(Ipv4Addr::new(10, 244, 3, 2)),
                u32::from(Ipv4Addr::new(10, 244, 3, 254))
            )
        );
        let e = Ipam::open(&dir("prefix"), cidr("10.0.0.0/31")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the pod CIDR 10.0.0.0/31 is not between /8 and /30"
        );
    }

    #[test]
    fn addresses_are_distinct_stable_per_owner_and_survive_a_restart() {
        let d = dir("restart");
        let net = cidr("10.244.7.0/24");
        let ipam = Ipam::open(&d, net).unwrap();
        let a = ipam.allocate("pod-a").unwrap();
        let b = ipam.allocate("pod-b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 7, 2));
        assert_eq!(b, Ipv4Addr::new(10, 244, 7, 3));
        // Asking again (an agent that restarted mid-setup) gets the same address.
        assert_eq!(ipam.allocate("pod-a").unwrap(), a);
        drop(ipam);
        let ipam = Ipam::open(&d, net).unwrap();
        assert_eq!(ipam.address_of("pod-b").unwrap(), Some(b));
        let c = ipam.allocate("pod-c").unwrap();
        assert_eq!(c, Ipv4Addr::new(10, 244, 7, 4));
        assert_eq!(
            ipam.allocations().unwrap(),
            vec![
                (a, "pod-a".into()),
                (b, "pod-b".into()),
                (c, "pod-c".into())
            ]
        );
        // State for another CIDR is refused.
        let other = Ipam::open(&d, cidr("10.244.8.0/24")).unwrap_err();
        assert!(other.to_string().contains("10.244.7.0/24"), "{other}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_released_address_is_not_handed_out_again_at_once_and_exhaustion_is_clear() {
        let d = dir("release");
        // A /29: .2 to .6 for pods.
        let ipam = Ipam::open(&d, cidr("10.1.0.0/29")).unwrap();
        let a = ipam.allocate("a").unwrap();
        ipam.allocate("b").unwrap();
        assert_eq!(ipam.release("a").unwrap(), Some(a));
        assert_eq!(ipam.release("a").unwrap(), None);
        // The next pod gets the next address, not the one just released.
        assert_eq!(ipam.allocate("c").unwrap(), Ipv4Addr::new(10, 1, 0, 4));
        ipam.allocate("d").unwrap();
        ipam.allocate("e").unwrap();
        // Wrapping around finds the released one.
        assert_eq!(ipam.allocate("f").unwrap(), a);
        let e = ipam.allocate("g").unwrap_err().to_string();
        assert_eq!(e, "every address of 10.1.0.0/29 is in use (5 pods)");
        assert!(ipam.allocate("../etc").is_err());
        assert!(ipam.allocate("").is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn two_allocators_racing_on_one_directory_never_share_an_address() {
        let d = dir("race");
        let net = cidr("10.2.0.0/24");
        Ipam::open(&d, net).unwrap();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (d, got) = (d.clone(), got.clone());
                std::thread::spawn(move || {
                    let ipam = Ipam::open(&d, net).unwrap();
                    for i in 0..50 {
                        let ip = ipam.allocate(&format!("t{t}-p{i}")).unwrap();
                        got.lock().unwrap().push(ip);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = got.lock().unwrap();
        let distinct: HashSet<_> = got.iter().collect();
        assert_eq!(got.len(), 200);
        assert_eq!(distinct.len(), 200);
        fs::remove_dir_all(&d).unwrap();
    }
}
