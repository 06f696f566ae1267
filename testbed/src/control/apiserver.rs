//! Real `skiff-apiserver` replicas in front of a test etcd, with tokens for a fixed set of
//! identities (and for nodes), killed and removed on drop.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Child,
    time::Duration,
};

use anyhow::{Context as _, Result};
use skiff_api::client::{Client, ClientConfig};

use super::Etcd;
use crate::{
    process::{free_ports, spawn_with_pdeathsig, stop, wait_port},
    unique_prefix, workspace_binary,
};

/// The identities every test API server knows, with their roles.
pub const IDENTITIES: [(&str, &str, Option<&str>); 6] = [
    ("admin", "admin", None),
    ("controller", "controller", None),
    ("viewer", "viewer", None),
    ("node-a", "node", Some("node-a")),
    ("node-b", "node", Some("node-b")),
    ("node-c", "node", Some("node-c")),
];

/// Options of a test API server.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// Serve TLS on TCP with the etcd cluster's `apiserver` certificate (for `localhost` and
    /// 127.0.0.1, signed by its cluster CA).
    pub tls: bool,
    /// Seconds between bookmarks (default 10).
    pub bookmark_interval: Option<f64>,
    /// Extra flags.
    pub extra: Vec<String>,
    /// Also tokens for nodes `node-0` .. `node-{nodes-1}` (user = node name, role node).
    pub nodes: usize,
    /// How the server encrypts what it stores in etcd (default: every resource, with a key
    /// generated for this server).
    pub encryption: Encryption,
}

/// How a test API server encrypts objects in etcd (`--encryption-provider-config`).
#[derive(Debug, Clone, Default)]
pub enum Encryption {
    /// Every resource (`*.*`) with `aesgcm` and a 32-byte key named `testbed`, then
    /// `identity`, so that what a test writes straight into etcd as JSON still reads. The key
    /// is generated once per etcd cluster, so every API server of the cluster shares it.
    #[default]
    Generated,
    /// Secrets and ConfigMaps only, as the local cluster and most production clusters encrypt:
    /// what the benchmarks use, so that their figures are a typical cluster's.
    SecretsAndConfigMaps,
    /// This `EncryptionConfiguration` (YAML).
    Config(String),
    /// No encryption: values are stored as plain JSON.
    Off,
}

/// The `EncryptionConfiguration` that encrypts `resources` with `aesgcm`, one key per
/// `(name, base64 secret)` in `keys` (the first encrypts, all decrypt), followed by `identity`
/// when `identity` is set (plaintext values still read).
pub fn aesgcm_config(resources: &[&str], keys: &[(&str, &str)], identity: bool) -> String {
    let mut yaml = String::from(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n",
    );
    for r in resources {
        yaml.push_str(&format!("  - {r:?}\n"));
    }
    yaml.push_str("  providers:\n  - aesgcm:\n      keys:\n");
    for (name, secret) in keys {
        yaml.push_str(&format!("      - name: {name}\n        secret: {secret}\n"));
    }
    if identity {
        yaml.push_str("  - identity: {}\n");
    }
    yaml
}

/// A new random 32-byte AES key, base64-encoded as an `EncryptionConfiguration` wants it.
pub fn random_key() -> Result<String> {
    let mut key = [0u8; 32];
    use std::io::Read as _;
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("reading /dev/urandom")?;
    Ok(base64(&key))
}

/// The test key of one etcd cluster, made by the first API server started against it and kept
/// with the cluster's certificates (removed with the cluster).
fn cluster_key(etcd: &Etcd) -> Result<String> {
    let path = etcd.pki.dir.join("testbed-encryption.key");
    if let Ok(key) = fs::read_to_string(&path) {
        return Ok(key);
    }
    // Written aside and linked into place, so a concurrent start reads a whole key or makes
    // its own attempt, and the first link wins.
    let tmp = etcd
        .pki
        .dir
        .join(format!("testbed-encryption.key.{}", unique_prefix("tmp")));
    write_private(&tmp, &random_key()?)?;
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
    }
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Where the server's `EncryptionConfiguration` is kept, in its directory.
const ENCRYPTION_FILE: &str = "encryption.yaml";

/// Writes a file only its owner can read (it holds keys).
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// A running `skiff-apiserver`.
#[derive(Debug)]
pub struct ApiServer {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    tokens: Vec<(String, String)>,
    /// The CA that signed the serving certificate, when the server serves TLS.
    pub(super) ca: Option<PathBuf>,
}

impl ApiServer {
    /// Starts an API server against every member of `etcd` (with its client certificate) and
    /// waits until it listens.
    pub fn start(etcd: &Etcd, opts: &ApiOptions) -> Result<ApiServer> {
        let prefix = unique_prefix("api");
        let dir = std::env::temp_dir().join(&prefix);
        fs::create_dir_all(&dir)?;
        let mut yaml = String::from("tokens:\n");
        let mut tokens = Vec::new();
        for (user, role, node) in IDENTITIES {
            let token = format!("{user}-{prefix}-secret");
            yaml.push_str(&format!(
                "- token: {token}\n  user: {user}\n  role: {role}\n"
            ));
            if let Some(n) = node {
                yaml.push_str(&format!("  node: {n}\n"));
            }
            tokens.push((user.to_owned(), token));
        }
        for i in 0..opts.nodes {
            let user = format!("node-{i}");
            let token = format!("{user}-{prefix}-secret");
            yaml.push_str(&format!(
                "- token: {token}\n  user: {user}\n  role: node\n  node: {user}\n"
            ));
            tokens.push((user, token));
        }
        let tokens_file = dir.join("tokens.yaml");
        fs::write(&tokens_file, yaml)?;
        let ports = free_ports(2)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse()?;
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse()?;
        let mut args = etcd.api_server_args();
        args.extend([
            "--listen".into(),
            addr.to_string(),
            // Node agents run in other network namespaces and reach the server over this.
            "--listen".into(),
            format!("unix://{}", dir.join("api.sock").display()),
            "--metrics-listen".into(),
            metrics_addr.to_string(),
            "--tokens".into(),
            tokens_file.display().to_string(),
        ]);
        if let Some(b) = opts.bookmark_interval {
            args.extend(["--bookmark-interval".into(), b.to_string()]);
        }
        if opts.tls {
            args.extend(etcd.pki.apiserver_tls_flags());
        }
        let encryption = match &opts.encryption {
            Encryption::Generated => Some(aesgcm_config(
                &["*.*"],
                &[("testbed", &cluster_key(etcd)?)],
                true,
            )),
            Encryption::SecretsAndConfigMaps => Some(aesgcm_config(
                &["secrets", "configmaps"],
                &[("testbed", &cluster_key(etcd)?)],
                true,
            )),
            Encryption::Config(yaml) => Some(yaml.clone()),
            Encryption::Off => None,
        };
        if let Some(yaml) = encryption {
            let file = dir.join(ENCRYPTION_FILE);
            write_private(&file, &yaml)?;
            args.extend([
                "--encryption-provider-config".into(),
                file.display().to_string(),
            ]);
        }
        args.extend(opts.extra.iter().cloned());
        let mut server = ApiServer {
            addr,
            metrics_addr,
            dir,
            args,
            child: None,
            tokens,
            ca: opts.tls.then(|| etcd.pki.ca.cert.clone()),
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<()> {
        let bin = workspace_binary("skiff-apiserver")?;
        let log = self.log_path();
        let mut child = spawn_with_pdeathsig(&bin, &self.args, &log)?;
        wait_port(self.addr, &mut child, "skiff-apiserver", &log)?;
        self.child = Some(child);
        Ok(())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("apiserver.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server outright (SIGKILL).
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// CPU time the server has used so far (user and system), from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Result<Duration> {
        let pid = self.pid().context("the API server is not running")?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command (which may hold spaces) start after its closing ')'.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed /proc/PID/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; here 12 and 13 (state is the first).
        let ticks: u64 = fields
            .get(11..13)
            .context("short /proc/PID/stat")?
            .iter()
            .map(|f| f.parse::<u64>())
            .sum::<Result<u64, _>>()?;
        let hz = rustix::param::clock_ticks_per_second();
        Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
    }

    /// Kills and starts it again on the same address.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }

    /// Kills it and starts it again with another `EncryptionConfiguration` (a key rotation
    /// step). The server must have been started with encryption on.
    pub fn restart_with_encryption(&mut self, yaml: &str) -> Result<()> {
        let file = self.dir.join(ENCRYPTION_FILE);
        let flag = file.display().to_string();
        if !self.args.contains(&flag) {
            anyhow::bail!("the API server was started without encryption");
        }
        self.kill();
        write_private(&file, yaml)?;
        self.launch()
    }

    pub fn token(&self, user: &str) -> &str {
        self.tokens
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, t)| t.as_str())
            .unwrap_or("no-such-identity-token")
    }

    pub fn url(&self) -> String {
        if self.ca.is_some() {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The server's Unix socket (reachable from any network namespace), as a `--server` URL.
    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.dir.join("api.sock").display())
    }

    /// Client settings for one of [`IDENTITIES`].
    pub fn config(&self, user: &str) -> ClientConfig {
        let mut c = ClientConfig::new(self.url(), self.token(user));
        c.ca_cert = self.ca.clone();
        c
    }

    pub async fn client(&self, user: &str) -> Result<Client> {
        Client::connect(&self.config(user))
            .await
            .with_context(|| format!("connecting to the API server as {user}"))
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(self.metrics_addr)?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        stop(&mut self.child);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn random_keys_are_32_bytes_and_differ() -> Result<()> {
        let (a, b) = (random_key()?, random_key()?);
        assert_eq!(a.len(), 44);
        assert_ne!(a, b);
        Ok(())
    }
}
