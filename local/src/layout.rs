//! Where a local cluster keeps everything, and what every kernel object it makes is called: both
//! follow from the cluster's name and directory alone, so `down` finds them even after a partial
//! `up` or a crash.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// The default cluster name.
pub const DEFAULT_NAME: &str = "skiff";
/// Where clusters live unless `--dir` says otherwise: `<this>/<name>`.
pub const DEFAULT_PARENT: &str = "/var/lib/skiff-local";
/// The longest cluster name: it is part of namespace, cgroup and containerd namespace names.
pub const MAX_NAME_LEN: usize = 24;
/// The most nodes one cluster may have (node addresses are 10.250.0.10 and up, pod CIDRs
/// 10.244.<i>.0/24).
pub const MAX_NODES: usize = 100;
/// Node addresses: 10.250.0.0/24 (DESIGN.md).
pub const NODE_NETWORK_PREFIX: u8 = 24;
/// The Service CIDR, blackholed in every node namespace (DESIGN.md's safety rule).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The cluster's pod network, a /24 per node.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The bridge in the fabric namespace that every node's veth is enslaved to.
pub const BRIDGE: &str = skiff_testbed::fabric::BRIDGE;
/// The node's side of its veth, inside the node namespace.
pub const NODE_IFNAME: &str = "eth0";
/// Where bpffs pins of Skiff live; a cluster's are named with [`Layout::object_prefix`].
pub const BPF_PIN_ROOT: &str = "/sys/fs/bpf/skiff";
/// Where the agent keeps per-instance datapath locks.
pub const RUN_SKIFF: &str = "/run/skiff";
/// Where the runc shim keeps runc's state, one directory per containerd namespace.
pub const RUNC_ROOT: &str = "/run/containerd/runc";
/// Where every containerd shim puts its socket (whatever containerd started it).
pub const SHIM_SOCKET_DIR: &str = skiff_testbed::cleanup::SHIM_SOCKET_DIR;
/// Where `ip netns` binds named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// The first level of every cluster's cgroup parent (`/skiff-local/<name>`).
pub const CGROUP_TOP: &str = "skiff-local";
/// A Unix socket path must fit in `sun_path` (108 bytes with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Checks a cluster name: 1 to [`MAX_NAME_LEN`] characters of `[a-z0-9-]`, starting with a
/// letter and not ending with `-` (it becomes part of namespace and cgroup names).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-');
    if !ok {
        bail!(
            "invalid cluster name {name:?}: use 1 to {MAX_NAME_LEN} characters of lower-case letters, digits and '-', starting with a letter and not ending with '-'"
        );
    }
    Ok(())
}

/// The names and paths of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    name: String,
    dir: PathBuf,
}

impl Layout {
    /// The layout of cluster `name` in `dir` (default `/var/lib/skiff-local/<name>`); a relative
    /// `dir` is taken from the current directory.
    pub fn new(name: &str, dir: Option<&Path>) -> Result<Layout> {
        check_name(name)?;
        let dir = match dir {
            Some(d) if d.is_absolute() => d.to_path_buf(),
            Some(d) => std::env::current_dir()
                .context("finding the current directory")?
                .join(d),
            None => Path::new(DEFAULT_PARENT).join(name),
        };
        let dir = normalize(&dir);
        if dir.parent().is_none() {
            bail!("the cluster directory cannot be /");
        }
        if dir.to_str().is_none() {
            bail!("the cluster directory {} is not valid UTF-8", dir.display());
        }
        let layout = Layout {
            name: name.to_owned(),
            dir,
        };
        for socket in layout.sockets() {
            let len = socket.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                bail!(
                    "the cluster directory {} is too long: the socket {} would be {len} bytes, over the {MAX_SOCKET_PATH} a Unix socket path may have; choose a shorter --dir",
                    layout.dir.display(),
                    socket.display()
                );
            }
        }
        Ok(layout)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every Unix socket the cluster's processes listen on.
    fn sockets(&self) -> Vec<PathBuf> {
        vec![
            self.api_socket(),
            self.containerd_socket(),
            self.containerd_dir().join("containerd.sock.ttrpc"),
            self.containerd_dir().join("debug.sock"),
        ]
    }

    /// The state file: what `up` made, so that `down` and `status` find it.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The log file of a process (`etcd`, `apiserver`, `agent-node-0`, ...).
    pub fn log(&self, process: &str) -> PathBuf {
        self.logs_dir().join(format!("{process}.log"))
    }

    /// The cluster's certificates (`skiff-pki`'s layout): the cluster CA and the API server's
    /// serving certificate, the etcd CA, etcd's and the API server's etcd client certificate.
    pub fn pki(&self) -> skiff_pki::Files {
        skiff_pki::Files::at(&self.dir.join("pki"))
    }

    pub fn etcd_dir(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    pub fn containerd_dir(&self) -> PathBuf {
        self.dir.join("containerd")
    }

    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd_dir().join("containerd.sock")
    }

    pub fn containerd_config(&self) -> PathBuf {
        self.containerd_dir().join("config.toml")
    }

    /// The API server's Unix socket (node agents in their namespaces reach it through this).
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// The API server's Unix socket as a `--server` URL.
    pub fn api_unix_url(&self) -> String {
        format!("unix://{}", self.api_socket().display())
    }

    pub fn apiserver_dir(&self) -> PathBuf {
        self.dir.join("apiserver")
    }

    /// The API server's token file (every identity's token; secret).
    pub fn tokens_file(&self) -> PathBuf {
        self.apiserver_dir().join("tokens.yaml")
    }

    pub fn tokens_dir(&self) -> PathBuf {
        self.dir.join("tokens")
    }

    /// The token of one identity (`admin`, `controller`, `node-0`, ...).
    pub fn token_file(&self, user: &str) -> PathBuf {
        self.tokens_dir().join(format!("{user}.token"))
    }

    /// A skiffctl config file for the admin (`SKIFF_CONFIG=<this>`).
    pub fn skiffctl_config(&self) -> PathBuf {
        self.dir.join("skiffctl.yaml")
    }

    pub fn nodes_dir(&self) -> PathBuf {
        self.dir.join("nodes")
    }

    /// Node `i`'s agent state (pod network namespaces, addresses, container logs).
    pub fn node_root(&self, i: usize) -> PathBuf {
        self.nodes_dir().join(node_name(i))
    }

    /// Where `up` builds the busybox image when no `--image-dir` is given.
    pub fn default_image_dir(&self) -> PathBuf {
        self.dir.join("images")
    }

    /// The registry's directory: its configuration, storage and the nodes' registry
    /// configuration directory.
    pub fn registry_dir(&self) -> PathBuf {
        self.dir.join("registry")
    }

    /// The registry's configuration file.
    pub fn registry_config(&self) -> PathBuf {
        self.registry_dir().join("config.yml")
    }

    /// The registry's blob storage.
    pub fn registry_storage(&self) -> PathBuf {
        self.registry_dir().join("storage")
    }

    /// The registry configuration directory every node's agent reads
    /// (`--registry-config-dir`, containerd's `hosts.toml` layout).
    pub fn registry_hosts_dir(&self) -> PathBuf {
        self.registry_dir().join("hosts.d")
    }

    /// Where `up` builds the server images (nginx, redis) it pushes into the registry.
    pub fn server_image_dir(&self) -> PathBuf {
        self.registry_dir().join("images")
    }

    /// The registry's network namespace.
    pub fn registry_netns(&self) -> String {
        format!("{}registry", self.object_prefix())
    }

    /// The prefix of every named kernel object of this cluster: network namespaces, containerd
    /// namespaces, bpffs pins and datapath locks.
    pub fn object_prefix(&self) -> String {
        format!("skiff-local-{}-", self.name)
    }

    /// The fabric namespace (the bridge).
    pub fn fabric_netns(&self) -> String {
        format!("{}fabric", self.object_prefix())
    }

    /// Node `i`'s network namespace.
    pub fn node_netns(&self, i: usize) -> String {
        format!("{}{}", self.object_prefix(), node_name(i))
    }

    /// The containerd namespace of node `i`'s containers.
    pub fn containerd_namespace(&self, i: usize) -> String {
        format!("{}{}", self.object_prefix(), node_name(i))
    }

    /// The eBPF datapath instance of node `i`'s agent: its pins are
    /// `/sys/fs/bpf/skiff/<this>/`, its lock `/run/skiff/datapath-<this>.lock`.
    pub fn datapath_instance(&self, i: usize) -> String {
        format!("{}{}", self.object_prefix(), node_name(i))
    }

    /// The cgroup every pod of the cluster lives under (the agent adds `/<node>`).
    pub fn cgroup_parent(&self) -> String {
        format!("/{CGROUP_TOP}/{}", self.name)
    }
}

/// The name of node `i`.
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// The address of node `i` on the fabric: 10.250.0.(10+i).
pub fn node_ip(i: usize) -> Result<Ipv4Addr> {
    let last = u8::try_from(10 + i)
        .ok()
        .filter(|b| *b < 255)
        .with_context(|| format!("node index {i} is out of range"))?;
    Ok(Ipv4Addr::new(10, 250, 0, last))
}

/// The pod CIDR of node `i`: 10.244.i.0/24.
pub fn node_pod_cidr(i: usize) -> Result<String> {
    let third = u8::try_from(i).with_context(|| format!("node index {i} is out of range"))?;
    Ok(format!("10.244.{third}.0/24"))
}

/// The fabric-side veth of node `i` (inside the fabric namespace, so short names suffice).
pub fn fabric_ifname(i: usize) -> String {
    format!("n{i}")
}

/// `a/./b/../c` -> `a/c`, without touching the file system (the directory may not exist yet).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_short_lower_case_dns_labels() {
        for ok in ["skiff", "a", "dev-1", "t12345-0"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            "Skiff",
            "1abc",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "a/b",
            "abcdefghijklmnopqrstuvwxy",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn every_object_name_carries_the_cluster_name() {
        let l = Layout::new("dev", Some(Path::new("/tmp/x/../c"))).unwrap();
        assert_eq!(l.dir(), Path::new("/tmp/c"));
        assert_eq!(l.fabric_netns(), "skiff-local-dev-fabric");
        assert_eq!(l.node_netns(2), "skiff-local-dev-node-2");
        assert_eq!(l.containerd_namespace(0), "skiff-local-dev-node-0");
        assert_eq!(l.cgroup_parent(), "/skiff-local/dev");
        assert_eq!(l.api_unix_url(), "unix:///tmp/c/api.sock");
        let d = Layout::new("skiff", None).unwrap();
        assert_eq!(d.dir(), Path::new("/var/lib/skiff-local/skiff"));
    }

    #[test]
    fn a_directory_too_long_for_its_sockets_is_refused_up_front() {
        let long = format!("/tmp/{}", "d".repeat(90));
        let err = Layout::new("dev", Some(Path::new(&long))).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
        assert!(Layout::new("dev", Some(Path::new("/"))).is_err());
    }

    #[test]
    fn nodes_get_consecutive_addresses_and_pod_cidrs() {
        assert_eq!(node_ip(0).unwrap(), Ipv4Addr::new(10, 250, 0, 10));
        assert_eq!(node_ip(99).unwrap(), Ipv4Addr::new(10, 250, 0, 109));
        assert!(node_ip(245).is_err());
        assert_eq!(node_pod_cidr(3).unwrap(), "10.244.3.0/24");
        assert!(node_pod_cidr(256).is_err());
    }
}
