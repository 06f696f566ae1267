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
    /// namespaces, endpoints, configmaps, secrets, leases, or their short names).
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
    /// Create a ConfigMap from literal values, files, directories or env files.
    #[command(name = "configmap", visible_alias = "cm")]
    ConfigMap(CreateConfigMapArgs),
    /// Create a Secret.
    #[command(subcommand)]
    Secret(CreateSecretCommand),
}

/// Where a ConfigMap's or a generic Secret's keys come from, as kubectl takes them.
#[derive(Debug, Clone, Default, Args)]
pub struct DataSources {
    /// A key and its value, `KEY=VALUE` (the value may contain '='). Repeatable.
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    pub literals: Vec<String>,
    /// A file (its name is the key unless KEY= is given), or a directory (each regular file in
    /// it whose name is a valid key). Repeatable.
    #[arg(long = "from-file", value_name = "[KEY=]PATH")]
    pub files: Vec<String>,
    /// A file of `KEY=VALUE` lines (`#` comments and blank lines skipped; a line with only a
    /// key takes its value from the environment). Repeatable; not with --from-file or
    /// --from-literal.
    #[arg(long = "from-env-file", value_name = "PATH")]
    pub env_files: Vec<String>,
}

/// `--dry-run`: whether the object is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DryRun {
    /// Send it.
    #[default]
    None,
    /// Only print the object that would be sent.
    Client,
}

/// What `create` prints, and whether it creates.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct CreateOutput {
    /// `client`: print the object instead of creating it (a bare --dry-run means client).
    #[arg(long, value_enum, default_value = "none", num_args = 0..=1, default_missing_value = "client", require_equals = true)]
    pub dry_run: DryRun,
    /// Print the object as YAML or JSON, or its name (default: `kind/name created`).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
}

#[derive(Debug, Args)]
pub struct CreateConfigMapArgs {
    /// The ConfigMap's name.
    pub name: String,
    #[command(flatten)]
    pub sources: DataSources,
    #[command(flatten)]
    pub out: CreateOutput,
}

#[derive(Debug, Subcommand)]
pub enum CreateSecretCommand {
    /// A Secret from literal values, files, directories or env files.
    Generic(CreateSecretGenericArgs),
    /// A kubernetes.io/dockerconfigjson Secret for pulling images from a registry.
    DockerRegistry(CreateDockerRegistryArgs),
    /// A kubernetes.io/tls Secret from a PEM certificate and key.
    Tls(CreateTlsArgs),
}

#[derive(Debug, Args)]
pub struct CreateSecretGenericArgs {
    /// The Secret's name.
    pub name: String,
    #[command(flatten)]
    pub sources: DataSources,
    /// The Secret's type (default: Opaque).
    #[arg(long = "type", value_name = "TYPE")]
    pub type_: Option<String>,
    #[command(flatten)]
    pub out: CreateOutput,
}

/// Docker Hub's address, kubectl's default registry.
pub const DEFAULT_DOCKER_SERVER: &str = "https://index.docker.io/v1/";

#[derive(Debug, Args)]
pub struct CreateDockerRegistryArgs {
    /// The Secret's name.
    pub name: String,
    /// The registry's address.
    #[arg(long, default_value = DEFAULT_DOCKER_SERVER)]
    pub docker_server: String,
    /// The user name for the registry.
    #[arg(long)]
    pub docker_username: Option<String>,
    /// The password for the registry.
    #[arg(long)]
    pub docker_password: Option<String>,
    /// The email for the registry (optional).
    #[arg(long)]
    pub docker_email: Option<String>,
    #[command(flatten)]
    pub out: CreateOutput,
}

#[derive(Debug, Args)]
pub struct CreateTlsArgs {
    /// The Secret's name.
    pub name: String,
    /// A PEM file with the certificate (chain).
    #[arg(long, value_name = "PATH")]
    pub cert: Option<std::path::PathBuf>,
    /// A PEM file with the private key.
    #[arg(long, value_name = "PATH")]
    pub key: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub out: CreateOutput,
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
