//! `skiffctl`: parses the command line, sets up logging, and runs the command.

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use skiff_ctl::{Cli, Env, Error, Io, error::message, run};
use tracing_subscriber::EnvFilter;

/// The conventional exit status after SIGINT.
const INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env = Env::from_process();
    let mut stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut err = std::io::stderr();
    let mut io = Io {
        stdin: &mut stdin,
        out: &mut out,
        err: &mut err,
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(cli, &env, &mut io) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let _ = io.out.flush();
    match result {
        Some(Ok(())) => ExitCode::SUCCESS,
        None => ExitCode::from(INTERRUPTED),
        Some(Err(e)) if e.already_reported() => ExitCode::FAILURE,
        // A closed pipe (`skiffctl get pods | head -1`) is the reader's choice, not an error.
        Some(Err(Error::Output(e))) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::FAILURE
        }
        Some(Err(e)) => {
            let _ = writeln!(io.err, "error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}
