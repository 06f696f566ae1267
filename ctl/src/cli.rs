//! skiffctl's command line.

use clap::{Args, Parser, Subcommand, ValueEnum};
use skiff_api::proto::Propagation;

use crate::config::ConfigFlags;

/// skiffctl controls a Skiff cluster: it creates, reads, updates and deletes the cluster's
/// objects through the API server.
#[derive(Debug, Parser)]
#[command(name = "skiffctl", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigFlags,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update objects from manifests (files, directories, or - for stdin).
    Apply(ApplyArgs),
    /// List objects, or show named ones, as a table, YAML, JSON or names.
    Get(GetArgs),
    /// Show the details of objects.
    Describe(DescribeArgs),
    /// Delete objects by name, by label selector, or as named in manifests.
    Delete(DeleteArgs),
    /// Set the number of replicas of a Deployment or ReplicaSet.
    Scale(ScaleArgs),
    /// Print the log of a container in a pod.
    Logs(crate::commands::logs::LogsArgs),
    /// Follow, list, undo, pause or resume a Deployment's rollouts.
    #[command(subcommand)]
    Rollout(crate::commands::rollout::RolloutCommand),
    /// Create an object from arguments.
    #[command(subcommand)]
    Create(CreateCommand),
    /// Print the client version.
    Version,
    /// Inspect authentication.
    #[command(subcommand)]
    Auth(AuthCommand),
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A manifest, a directory of manifests (*.yaml, *.yml, *.json; not recursive), or - for
    /// standard input. Repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    pub files: Vec<String>,
}

/// `-o`: how `get` prints objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The objects as YAML (several: a List).
    Yaml,
    /// The objects as JSON (several: a List).
    Json,
    /// The table with more columns.
    Wide,
    /// `kind/name` per object.
    Name,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// TYPE [NAME...] or TYPE/NAME... (pods, services, deployments, replicasets, nodes,
    /// namespaces, endpoints, leases, or their short names).
    #[arg(required = true, value_name = "TYPE[/NAME]")]
    pub resources: Vec<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector: `app=web,tier!=db,env in (a,b)`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector: `spec.nodeName=node-1`, `status.phase=Running`.
    #[arg(long)]
    pub field_selector: Option<String>,
    /// Output format (default: a table).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
    /// After printing, watch for changes and print each one, until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Add a LABELS column to tables.
    #[arg(long)]
    pub show_labels: bool,
    /// Leave out the table header.
    #[arg(long)]
    pub no_headers: bool,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// TYPE [NAME...] or TYPE/NAME...; a TYPE alone describes every object of it.
    #[arg(required = true, value_name = "TYPE[/NAME]")]
    pub resources: Vec<String>,
    /// Label selector (with a TYPE alone).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

/// `--cascade`: what happens to the objects a deleted object owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cascade {
    /// Delete the owner now, its dependents afterwards.
    #[value(alias = "true")]
    Background,
    /// Delete the dependents first, then the owner.
    Foreground,
    /// Keep the dependents, without their owner reference.
    #[value(alias = "false")]
    Orphan,
}

impl From<Cascade> for Propagation {
    fn from(c: Cascade) -> Propagation {
        match c {
            Cascade::Background => Propagation::Background,
            Cascade::Foreground => Propagation::Foreground,
            Cascade::Orphan => Propagation::Orphan,
        }
    }
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// TYPE NAME... or TYPE/NAME... (or TYPE with -l or --all).
    #[arg(value_name = "TYPE[/NAME]")]
    pub resources: Vec<String>,
    /// Delete the objects in a manifest, a directory of manifests, or - for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<String>,
    /// Delete the objects of TYPE matching this label selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Delete every object of TYPE in the namespace.
    #[arg(long)]
    pub all: bool,
    /// What happens to the objects the deleted ones own.
    #[arg(long, value_enum, default_value = "background")]
    pub cascade: Cascade,
    /// Seconds a pod has to stop; -1 uses the pod's own terminationGracePeriodSeconds, 0
    /// removes it at once.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "SECONDS")]
    pub grace_period: i64,
    /// Objects that do not exist are not an error.
    #[arg(long)]
    pub ignore_not_found: bool,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// deployment NAME..., replicaset NAME..., or TYPE/NAME...
    #[arg(required = true, value_name = "TYPE[/NAME]")]
    pub resources: Vec<String>,
    /// The new number of replicas.
    #[arg(long, required = true, value_parser = clap::value_parser!(i32).range(0..))]
    pub replicas: i32,
}

#[derive(Debug, Subcommand)]
pub enum CreateCommand {
    /// Create a namespace.
    #[command(visible_alias = "ns")]
    Namespace {
        /// The namespace's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Print who the API server thinks you are.
    Whoami,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("skiffctl").chain(args.iter().copied()))
            .expect("parses")
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&[
            "get",
            "pods",
            "-n",
            "team",
            "--server",
            "http://x:1",
            "-o",
            "wide",
        ]);
        assert_eq!(cli.config.namespace.as_deref(), Some("team"));
        assert_eq!(cli.config.server.as_deref(), Some("http://x:1"));
        let Command::Get(get) = cli.command else {
            panic!("not get")
        };
        assert_eq!(get.output, Some(OutputFormat::Wide));
    }

    #[test]
    fn delete_takes_kubectl_style_flags() {
        let cli = parse(&[
            "delete",
            "deploy",
            "web",
            "--cascade=orphan",
            "--grace-period",
            "0",
            "--ignore-not-found",
        ]);
        let Command::Delete(d) = cli.command else {
            panic!("not delete")
        };
        assert_eq!(d.cascade, Cascade::Orphan);
        assert_eq!(d.grace_period, 0);
        assert!(d.ignore_not_found);
        assert_eq!(d.resources, ["deploy", "web"]);
    }

    #[test]
    fn scale_refuses_negative_replicas_and_create_knows_ns() {
        assert!(
            Cli::try_parse_from(["skiffctl", "scale", "deploy", "web", "--replicas", "-1"])
                .is_err()
        );
        let cli = parse(&["create", "ns", "team"]);
        assert!(matches!(
            cli.command,
            Command::Create(CreateCommand::Namespace { name }) if name == "team"
        ));
        assert!(matches!(
            parse(&["auth", "whoami"]).command,
            Command::Auth(AuthCommand::Whoami)
        ));
    }
}
