//! `skiff-agent`: parses the command line, enters the requested network namespace, sets up
//! logging, and hands over to the library.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use skiff_agent::{cli, netns};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // Before any other thread exists: setns only moves the calling thread.
    if let Some(path) = &args.netns
        && let Err(e) = netns::enter(path)
    {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
