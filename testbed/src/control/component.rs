//! `skiff-scheduler` and `skiff-controller-manager` started against a test API server, with
//! leader election on short leases so a test sees a failover in seconds.

use std::{fs, path::PathBuf, process::Child};

use anyhow::{Context as _, Result};

use super::ApiServer;
use crate::{
    process::{spawn_with_pdeathsig, stop},
    unique_prefix, workspace_binary,
};

/// Options of a scheduler or controller-manager started for a test.
#[derive(Debug, Clone)]
pub struct ComponentOptions {
    /// Lease timing in seconds: (duration, renew deadline, retry period). Short, so a test sees
    /// a failover in a few seconds.
    pub lease: (f64, f64, f64),
    /// Extra flags.
    pub extra: Vec<String>,
}

impl Default for ComponentOptions {
    fn default() -> Self {
        ComponentOptions {
            lease: (3.0, 2.0, 0.4),
            extra: Vec::new(),
        }
    }
}

/// A running `skiff-scheduler` or `skiff-controller-manager`, authenticated as `controller`.
#[derive(Debug)]
pub struct Component {
    pub binary: String,
    /// Its name in the component's Lease (`holderIdentity`).
    pub identity: String,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl ApiServer {
    /// Starts `binary` (`skiff-scheduler`, `skiff-controller-manager`) against this server with
    /// leader election on and the identity `identity`.
    pub fn component(
        &self,
        binary: &str,
        identity: &str,
        opts: &ComponentOptions,
    ) -> Result<Component> {
        let dir = std::env::temp_dir().join(unique_prefix(identity));
        fs::create_dir_all(&dir)?;
        let token_file = dir.join("token");
        fs::write(&token_file, self.token("controller"))?;
        let (duration, deadline, retry) = opts.lease;
        let mut args = vec![
            "--server".into(),
            self.url(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--identity".into(),
            identity.into(),
            "--leader-elect-lease-duration".into(),
            duration.to_string(),
            "--leader-elect-renew-deadline".into(),
            deadline.to_string(),
            "--leader-elect-retry-period".into(),
            retry.to_string(),
        ];
        if let Some(ca) = &self.ca {
            args.extend(["--ca-cert".into(), ca.display().to_string()]);
        }
        args.extend(opts.extra.iter().cloned());
        let mut c = Component {
            binary: binary.into(),
            identity: identity.into(),
            dir,
            args,
            child: None,
        };
        c.launch()?;
        Ok(c)
    }
}

impl Component {
    fn launch(&mut self) -> Result<()> {
        let bin = workspace_binary(&self.binary)?;
        self.child = Some(spawn_with_pdeathsig(&bin, &self.args, &self.log_path())?);
        Ok(())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills it outright (SIGKILL): it cannot give its lease up.
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Freezes (SIGSTOP, `true`) or thaws (SIGCONT, `false`) the process: a leader cut off
    /// from the world without knowing it.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let child = self
            .child
            .as_ref()
            .context("the component is not running")?;
        let pid = rustix::process::Pid::from_raw(i32::try_from(child.id())?)
            .context("the component has no pid")?;
        let signal = if frozen {
            rustix::process::Signal::STOP
        } else {
            rustix::process::Signal::CONT
        };
        rustix::process::kill_process(pid, signal)?;
        Ok(())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        stop(&mut self.child);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
