//! Named network namespaces (bound at `/run/netns/<name>`) that the run creates and deletes on
//! drop, and ways to work inside one: `ip -n`, commands under `nsenter`, and closures on a
//! thread that entered it.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Runs `ip` with arguments, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip -n <ns> ...` for a namespace known by name.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Creates the named network namespace (`ip netns add`) with `lo` up. Nothing deletes it: see
/// [`Netns`] for one that goes on drop.
pub fn add(name: &str) -> Result<()> {
    ip(&["netns", "add", name])?;
    ip_in(name, &["link", "set", "lo", "up"])
}

/// A network namespace bound at `/run/netns/<name>`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates the namespace (`ip netns add`) with `lo` up.
    pub fn create(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        // The guard exists from here on, so a failure next deletes the namespace.
        let ns = Netns {
            name: name.to_owned(),
            path: Path::new("/run/netns").join(name),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        ip_in(&self.name, args)
    }

    /// A command that runs inside this namespace (nsenter keeps the mount namespace, so bpffs
    /// stays visible, unlike `ip netns exec`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path.display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `f` on a thread inside this namespace. Sockets it creates stay in the namespace and
    /// may be used from any thread afterwards.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in(&self.path, f).unwrap_or_else(|e| panic!("entering namespace {}: {e}", self.name))
    }

    /// Sets a sysctl of this namespace (under /proc/sys/net, which is per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))
            .with_context(|| format!("setting {key}={value} in {}", self.name))
    }

    /// The MAC address of an interface in this namespace.
    pub fn mac(&self, iface: &str) -> Result<[u8; 6]> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j", "link", "show", "dev", iface])
            .output()
            .context("running ip link show")?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing ip -j link output")?;
        let text = v[0]["address"]
            .as_str()
            .with_context(|| format!("{iface} in {} has no address", self.name))?;
        let mut mac = [0u8; 6];
        for (i, part) in text.split(':').enumerate().take(6) {
            mac[i] = u8::from_str_radix(part, 16).context("parsing a MAC address")?;
        }
        Ok(mac)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

pub use skiff_netns::{enter, run_in};

/// Runs `program args` inside the network namespace at `netns` (nsenter), returning stdout;
/// fails with stderr.
pub fn run_in_netns(netns: &Path, program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} in {}", netns.display()))?;
    if !out.status.success() {
        bail!(
            "{program} {} in {} failed: {}{}",
            args.join(" "),
            netns.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
