//! skiff-local: a multi-node Skiff cluster on one Linux machine (DESIGN.md, "One machine, many
//! nodes"). etcd, containerd, the API server, the scheduler and the controller-manager run as
//! the cluster's own processes with their data under the cluster's directory; each node is a
//! network namespace on a bridge in a fabric namespace, with its own `skiff-agent node`.
//!
//! - [`up::up`] starts a cluster and records what it made in a state file;
//! - [`status::status`] says whether every process runs and every node is Ready;
//! - [`down::down`] stops and removes everything, also after a partial `up` or a crash, and
//!   [`down::leftovers`] lists anything of a cluster that still exists;
//! - [`push::push`] copies an image into the cluster's registry (`up` runs one unless told
//!   not to, and pushes the busybox, nginx and redis images into it);
//! - [`demo::demo`] brings a cluster up, runs `examples/web.yaml` on it and calls its Service
//!   from a client pod, showing which pod on which node answered, then runs the two-tier
//!   application of `examples/app.yaml` ([`app`]) and edits its nginx configuration live.
//!
//! Safety rule (DESIGN.md): every namespace made here is new and has no route off the machine,
//! every node namespace blackholes the Service CIDR, and skiff-local itself only talks to
//! loopback and Unix sockets.
//!
//! The functions are blocking (they run their own short-lived async runtime for API calls):
//! call them from a plain thread, not from inside an async runtime.

pub mod app;
pub mod demo;
pub mod down;
pub mod encryption;
pub mod image;
pub mod layout;
pub mod net;
pub mod process;
pub mod push;
pub mod ready;
pub mod restart;
pub mod state;
pub mod status;
pub mod sys;
pub mod up;

use std::{fmt::Display, path::PathBuf, time::Instant};

use anyhow::{Context as _, Result};

pub use crate::{
    layout::Layout,
    state::State,
    up::{UpOptions, up},
};

/// Progress lines, each with the time since the command started.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    quiet: bool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            start: Instant::now(),
            quiet: false,
        }
    }

    /// Progress that prints nothing.
    pub fn quiet() -> Progress {
        Progress {
            start: Instant::now(),
            quiet: true,
        }
    }

    /// Prints one line.
    pub fn step(&self, message: impl Display) {
        if !self.quiet {
            println!("[{:>6.1}s] {message}", self.start.elapsed().as_secs_f64());
        }
    }

    /// Prints text as it is (tables, summaries), without a time.
    pub fn say(&self, text: impl Display) {
        if !self.quiet {
            println!("{text}");
        }
    }

    /// Seconds since the command started.
    pub fn elapsed_secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// Where the Skiff binaries are: `$SKIFF_BIN_DIR`, else the directory of the running program
/// (skiff-local is installed next to them).
pub fn default_bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("SKIFF_BIN_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("locating the running program")?;
    exe.parent()
        .map(PathBuf::from)
        .context("the running program has no directory")
}

/// What to tell people once the cluster is up: how to point skiffctl at it and how to take it
/// down.
pub fn instructions(layout: &Layout, state: &State) -> String {
    let api = state
        .api_addr
        .map(|a| format!("https://{a}"))
        .unwrap_or_else(|| "(no API server)".into());
    let default_dir = std::path::Path::new(layout::DEFAULT_PARENT).join(layout.name());
    let dir_flag = if layout.dir() == default_dir {
        String::new()
    } else {
        format!(" --dir {}", layout.dir().display())
    };
    let name_flag = if layout.name() == layout::DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {}", layout.name())
    };
    format!(
        "\
Cluster {name:?} is up: {nodes} node(s), API server at {api} (and {unix}).

Point skiffctl at it (SKIFF_SERVER and SKIFF_TOKEN, if set, override the file):
  export SKIFF_CONFIG={config}
  skiffctl get nodes
or with flags:
  skiffctl --server {api} --ca-cert {ca} --token-file {token} get nodes

{registry}
State, tokens and logs: {dir} (logs in {logs})
Status:    skiff-local status{name_flag}{dir_flag}
Tear down: skiff-local down{name_flag}{dir_flag}
",
        registry = push::how_to_push(state, &format!("{name_flag}{dir_flag}")).unwrap_or_default(),
        name = layout.name(),
        nodes = state.nodes,
        unix = layout.api_unix_url(),
        config = layout.skiffctl_config().display(),
        token = layout.token_file("admin").display(),
        ca = layout.pki().ca.cert.display(),
        dir = layout.dir().display(),
        logs = layout.logs_dir().display(),
    )
}
