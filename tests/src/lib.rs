//! Support for Skiff's privileged end-to-end tests and demo: network namespaces that clean up
//! after themselves, a node-with-pods topology, real servers in the pods, clients, and a guard
//! for the agent process.
//!
//! Safety rule (shared/DESIGN.md): all traffic starts inside namespaces made here, none of which
//! has a route off the machine, and the node namespace blackholes the Service CIDR.

pub mod agent;
pub mod client;
pub mod containerd;
pub mod control;
pub mod load;
pub mod loader;
pub mod localcheck;
pub mod nodes;
pub mod rawpkt;
pub mod servers;
pub mod topo;

use std::{
    env,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

/// A name prefix unique to this process and call, short enough for interface-free uses
/// (namespace names, pin directories).
pub fn unique_prefix(tag: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("skt-{tag}-{}-{seq}", std::process::id())
}

/// Whether this host can run privileged tests (root, bpffs mounted, iproute2 and nsenter). When
/// it cannot: under `CI=true` this panics, so nothing passes by not running; elsewhere it prints
/// why and returns false so the test can return early (counted as skipped by the message).
pub fn privileged(test: &str) -> bool {
    match missing_privilege() {
        None => true,
        Some(why) => {
            if env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test} cannot run here ({why}), and CI=true requires it to run");
            }
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

fn missing_privilege() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root".into());
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Some("bpffs is not mounted at /sys/fs/bpf (cargo xtask setup mounts it)".into());
    }
    for tool in ["ip", "nsenter", "setpriv", "ethtool", "nginx"] {
        if which(tool).is_none() {
            return Some(format!(
                "{tool} is not installed (cargo xtask setup installs it)"
            ));
        }
    }
    None
}

/// The first `tool` on `PATH`.
pub fn which(tool: &str) -> Option<PathBuf> {
    env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| PathBuf::from(d).join(tool))
        .find(|p| p.is_file())
}

/// Path of a binary of this workspace: `$SKIFF_BIN_DIR/<name>` (cargo xtask test sets it), or
/// next to the running program (a binary in `target/<profile>`), or in the target directory of
/// the running test (`target/<profile>/deps/<test>`).
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match env::var_os("SKIFF_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = env::current_exe().context("locating the running program")?;
            let own = exe
                .parent()
                .context("the running program has no directory")?;
            if own.join(name).is_file() {
                own.to_path_buf()
            } else {
                // target/debug/deps/<test> -> target/debug
                own.parent()
                    .map(PathBuf::from)
                    .context("the test binary has no target directory")?
            }
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --workspace --bins` (cargo xtask test does)",
            path.display()
        );
    }
    Ok(path)
}
