//! Removing a datapath instance's pins (and so detaching its programs): after a node agent of a
//! test, and for a datapath a test or benchmark loads itself. The removal is the agent's own
//! (`skiff-agent datapath reset`), so the test bed never has to know how pins are laid out.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::workspace_binary;

/// Removes every pin of the datapath instance `instance` (and its lock file) once no loader
/// holds it; nothing to do when nothing is pinned.
pub fn reset(instance: &str) -> Result<()> {
    let agent = workspace_binary("skiff-agent")?;
    let out = Command::new(&agent)
        .args(["datapath", "reset", "--instance", instance])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} datapath reset", agent.display()))?;
    if !out.status.success() {
        bail!(
            "skiff-agent datapath reset --instance {instance} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes an instance's pins (and so detaches it) and its lock file on drop, once no loader
/// holds it any more.
#[derive(Debug)]
pub struct PinsGuard {
    instance: String,
}

impl PinsGuard {
    /// A guard for `instance`. Fails when the `skiff-agent` binary that removes the pins is
    /// missing, before anything is pinned.
    pub fn new(instance: &str) -> Result<Self> {
        workspace_binary("skiff-agent")?;
        Ok(PinsGuard {
            instance: instance.to_owned(),
        })
    }

    /// The instance whose pins this guard removes.
    pub fn instance(&self) -> &str {
        &self.instance
    }
}

impl Drop for PinsGuard {
    fn drop(&mut self) {
        if let Err(e) = reset(&self.instance) {
            eprintln!("cleanup of {}: {e:#}", self.instance);
        }
    }
}
