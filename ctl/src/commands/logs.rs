//! `logs`: print a container's log, relayed by the API server from the pod's node.

use clap::Args;
use skiff_api::proto::LogsRequest;
use tokio_stream::StreamExt as _;

use crate::{Context, Io, error::Result};

/// `skiffctl logs POD [-c CONTAINER] [-f] [-p] [--tail N] [--limit-bytes N]`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The pod (NAME or pod/NAME).
    #[arg(value_name = "POD")]
    pub pod: String,
    /// The container (needed when the pod has several).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep printing what the container writes until it exits.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The log of the container's previous attempt.
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "N")]
    pub tail: i64,
    /// Stop after this many bytes.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..), value_name = "N")]
    pub limit_bytes: Option<i64>,
}

/// The pod's name from `NAME`, `pod/NAME` or `pods/NAME`.
fn pod_name(arg: &str) -> &str {
    arg.strip_prefix("pod/")
        .or_else(|| arg.strip_prefix("pods/"))
        .or_else(|| arg.strip_prefix("po/"))
        .unwrap_or(arg)
}

/// The request `args` make in `namespace`.
fn request(args: &LogsArgs, namespace: &str) -> LogsRequest {
    LogsRequest {
        namespace: namespace.to_owned(),
        pod: pod_name(&args.pod).to_owned(),
        container: args.container.clone().unwrap_or_default(),
        follow: args.follow,
        previous: args.previous,
        tail_lines: (args.tail >= 0).then_some(args.tail),
        limit_bytes: args.limit_bytes.unwrap_or(0),
    }
}

/// Writes the log to standard output as it comes.
pub async fn run(ctx: Context<'_>, args: &LogsArgs, io: &mut Io<'_>) -> Result<()> {
    let (settings, client) = ctx.connect().await?;
    let mut chunks = client.logs(request(args, &settings.namespace)).await?;
    while let Some(chunk) = chunks.next().await {
        io.out.write_all(&chunk?)?;
        // As it comes: a followed log is read by a person (or a pipe) while it grows.
        io.out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> LogsArgs {
        match Cli::try_parse_from(std::iter::once("skiffctl").chain(args.iter().copied()))
            .expect("parses")
            .command
        {
            Command::Logs(a) => a,
            other => panic!("not logs: {other:?}"),
        }
    }

    #[test]
    fn flags_become_the_request() {
        let r = request(
            &parse(&["logs", "pod/web", "-c", "nginx", "-f", "--tail", "2"]),
            "team",
        );
        assert_eq!(
            (r.namespace.as_str(), r.pod.as_str(), r.container.as_str()),
            ("team", "web", "nginx")
        );
        assert!(r.follow && !r.previous);
        assert_eq!((r.tail_lines, r.limit_bytes), (Some(2), 0));
        let r = request(
            &parse(&["logs", "web", "-p", "--limit-bytes", "10"]),
            "default",
        );
        assert!(r.previous && !r.follow);
        assert_eq!((r.tail_lines, r.limit_bytes), (None, 10));
        assert!(Cli::try_parse_from(["skiffctl", "logs", "web", "--limit-bytes", "0"]).is_err());
        assert!(Cli::try_parse_from(["skiffctl", "logs"]).is_err());
    }
}
