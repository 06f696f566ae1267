//! What a test needs of the host (root, bpffs, tools, the workspace's binaries) and what it does
//! when the host lacks it: under `CI=true` the test fails, so nothing passes by not running;
//! elsewhere it says why and is counted as skipped.

use std::{env, ffi::OsString, path::PathBuf};

use anyhow::{Context as _, bail};

/// The tools [`privileged`] requires besides root and bpffs.
pub const PRIVILEGED_TOOLS: [&str; 5] = ["ip", "nsenter", "setpriv", "ethtool", "nginx"];

/// Whether this host can run privileged tests (root, bpffs mounted at /sys/fs/bpf, and
/// [`PRIVILEGED_TOOLS`]). When it cannot: under `CI=true` this panics, so nothing passes by not
/// running; elsewhere it prints why and returns false so the test can return early (counted as
/// skipped by the message).
pub fn privileged(test: &str) -> bool {
    let why = missing_root()
        .or_else(missing_bpffs)
        .or_else(|| missing_tool(&PRIVILEGED_TOOLS, "cargo xtask setup installs it"));
    runnable(test, why)
}

/// Like [`privileged`], for a test that needs root and only the given tools (no bpffs).
pub fn privileged_with_tools(test: &str, tools: &[&str]) -> bool {
    let why = missing_root().or_else(|| missing_tool(tools, "cargo xtask setup installs it"));
    runnable(test, why)
}

/// The verdict on a test whose requirement may be missing (`why`): true when nothing is
/// missing; else, under `CI=true`, a panic; elsewhere a `SKIPPED <test>: <why>` line and false.
pub fn runnable(test: &str, why: Option<String>) -> bool {
    let Some(why) = why else {
        return true;
    };
    if env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run here ({why}), and CI=true requires it to run");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// `Some("needs root")` unless this process runs as root.
pub fn missing_root() -> Option<String> {
    (!rustix::process::geteuid().is_root()).then(|| "needs root".to_owned())
}

fn missing_bpffs() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "));
    (!mounted)
        .then(|| "bpffs is not mounted at /sys/fs/bpf (cargo xtask setup mounts it)".to_owned())
}

/// The first of `tools` that is not on `PATH`, as a reason (`<tool> is not installed (<hint>)`).
pub fn missing_tool(tools: &[&str], hint: &str) -> Option<String> {
    tools
        .iter()
        .find(|t| which(t).is_none())
        .map(|t| format!("{t} is not installed ({hint})"))
}

/// The first `tool` on `PATH` (`/usr/sbin:/usr/bin` when `PATH` is not set).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/sbin:/usr/bin"));
    env::split_paths(&path)
        .map(|d| d.join(tool))
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
