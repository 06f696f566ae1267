//! skiffctl, the command-line client of a Skiff cluster, as a library: `main.rs` parses the
//! command line and calls [`run`]; tests may call [`run`] or the command functions directly.

pub mod cli;
pub mod commands;
pub mod config;
pub mod describe;
pub mod error;
pub mod manifests;
pub mod output;
pub mod resource;
pub mod table;

use std::io::{Read, Write};

use skiff_api::client::Client;

pub use crate::{
    cli::Cli,
    config::Env,
    error::{Error, Result},
};
use crate::{cli::Command, config::Settings};

/// Where a command reads standard input from and writes its output and messages to.
pub struct Io<'a> {
    pub stdin: &'a mut (dyn Read + Send),
    pub out: &'a mut (dyn Write + Send),
    pub err: &'a mut (dyn Write + Send),
}

impl std::fmt::Debug for Io<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io").finish_non_exhaustive()
    }
}

impl Io<'_> {
    /// `error: <message>` on stderr, after what is already on stdout.
    pub fn report(&mut self, e: &Error) -> Result<()> {
        self.out.flush()?;
        writeln!(self.err, "error: {}", error::message(e))?;
        Ok(())
    }

    /// A message for people (not output) on stderr.
    pub fn note(&mut self, text: &str) -> Result<()> {
        self.out.flush()?;
        writeln!(self.err, "{text}")?;
        Ok(())
    }
}

/// How commands reach the cluster: configuration is read, and the server dialled, only when a
/// command gets that far (so `version` and argument mistakes need no server).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub flags: &'a config::ConfigFlags,
    pub env: &'a Env,
}

impl Context<'_> {
    /// The combined configuration.
    pub fn settings(&self) -> Result<Settings> {
        Ok(config::load(self.flags, self.env)?)
    }

    /// The configuration and a connected client.
    pub async fn connect(&self) -> Result<(Settings, Client)> {
        let settings = self.settings()?;
        tracing::debug!(server = %settings.client.server, "connecting");
        let client = Client::connect(&settings.client).await?;
        Ok((settings, client))
    }
}

/// Runs one command line. Failures already reported on stderr come back as
/// [`Error::Reported`]; any other error is for the caller to print.
pub async fn run(cli: Cli, env: &Env, io: &mut Io<'_>) -> Result<()> {
    let ctx = Context {
        flags: &cli.config,
        env,
    };
    let result = match &cli.command {
        Command::Apply(a) => commands::apply::run(ctx, a, io).await,
        Command::Get(a) => commands::get::run(ctx, a, io).await,
        Command::Describe(a) => commands::describe::run(ctx, a, io).await,
        Command::Delete(a) => commands::delete::run(ctx, a, io).await,
        Command::Scale(a) => commands::scale::run(ctx, a, io).await,
        Command::Logs(a) => commands::logs::run(ctx, a, io).await,
        Command::Rollout(c) => commands::rollout::run(ctx, c, io).await,
        Command::Create(c) => commands::misc::create(ctx, c, io).await,
        Command::Version => commands::misc::version(io),
        Command::Auth(c) => commands::misc::auth(ctx, c, io).await,
    };
    io.out.flush()?;
    result
}

#[cfg(test)]
mod testutil {
    //! Helpers shared by the unit tests.

    use std::{
        path::{Path, PathBuf},
        sync::atomic::{AtomicUsize, Ordering},
    };

    /// A directory under the system's temporary directory, unique per test and process, removed
    /// on drop.
    #[derive(Debug)]
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("skiffctl-test-{}-{name}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).expect("create temp dir");
            TempDir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
