//! Why a skiffctl command failed, worded for the person at the terminal.

use std::{io, path::PathBuf};

use skiff_api::{client::ClientError, manifest::ManifestError};

use crate::config::ConfigError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration (file, environment, flags) is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A call to the API server failed; its message is the server's own.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A resource name that names nothing Skiff serves.
    #[error("the server doesn't have a resource type {name:?}")]
    UnknownResource { name: String },
    /// A `TYPE/NAME` argument without one of its halves.
    #[error("arguments in resource/name form must have a single resource and name, not {arg:?}")]
    BadResourceName { arg: String },
    /// `TYPE/NAME` arguments mixed with a separate type argument.
    #[error(
        "there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'skiffctl get resource/<resource_name>' instead of 'skiffctl get resource resource/<resource_name>')"
    )]
    MixedResourceForms,
    /// A command that acts on named objects got only a type.
    #[error("resource(s) were provided, but no name was specified")]
    NoName,
    /// `delete` got neither resources nor files.
    #[error("you must provide one or more resources by argument or filename (-f)")]
    NothingToDelete,
    /// Names and a label selector together.
    #[error("name cannot be provided when a selector is specified")]
    NamesWithSelector,
    /// Names and `--all-namespaces` together.
    #[error("a resource cannot be retrieved by name across all namespaces")]
    NamesAcrossNamespaces,
    /// `get -w` with several names.
    #[error(
        "watch is only supported on individual resources and resource collections, but {count} resources were found"
    )]
    WatchMany { count: usize },
    /// `get -w` with several resource types.
    #[error("you may only specify a single resource type to watch")]
    WatchKinds,
    /// `scale` of a resource without replicas.
    #[error("cannot scale {resource}: only deployments and replicasets can be scaled")]
    NotScalable { resource: &'static str },
    /// A `-f` path that does not exist or cannot be read.
    #[error("the path {path:?} cannot be read: {source}")]
    ReadPath {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Standard input could not be read.
    #[error("reading standard input: {0}")]
    ReadStdin(#[source] io::Error),
    /// A manifest document is not an object Skiff accepts.
    #[error("{source_name}: {source}")]
    Manifest {
        /// The file (or `STDIN`).
        source_name: String,
        #[source]
        source: ManifestError,
    },
    /// `-f` named only empty files or directories without manifests.
    #[error("no objects passed to {command}")]
    NoObjects { command: &'static str },
    /// A manifest names another namespace than the one given with `-n`.
    #[error(
        "the namespace from the provided object {object:?} does not match the namespace {flag:?}. You must pass '--namespace={object}' to perform this operation."
    )]
    NamespaceMismatch { object: String, flag: String },
    /// `apply` of an object with only `generateName`.
    #[error("{kind}: apply needs metadata.name (generateName is only for create)")]
    ApplyWithoutName { kind: &'static str },
    /// Writes kept conflicting with other writers after several fresh reads.
    #[error("{what}: gave up after {attempts} attempts that conflicted with other writers")]
    TooManyConflicts { what: String, attempts: usize },
    /// An object could not be encoded as YAML.
    #[error("encoding YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    /// Writing the output failed (for example a closed pipe).
    #[error("writing output: {0}")]
    Output(#[from] io::Error),
    /// `delete -f` with resource arguments as well.
    #[error("when files or stdin are given with -f, resource arguments may not be given as well")]
    FilesAndResources,
    /// One object of a multi-object command failed.
    #[error("{context}: {source}")]
    Object {
        /// `applying deployment.apps/web from web.yaml`.
        context: String,
        #[source]
        source: Box<Error>,
    },
    /// `create`'s arguments do not make an object.
    #[error(transparent)]
    Create(#[from] crate::commands::create::CreateError),
    /// Some parts of a command failed; each failure was reported on stderr already.
    #[error("{count} error(s) reported above")]
    Reported { count: usize },
}

impl Error {
    /// Whether the failure was reported on stderr already (only the exit code is left to set).
    pub fn already_reported(&self) -> bool {
        matches!(self, Error::Reported { .. })
    }

    /// This error with the object it is about in front.
    pub fn about(self, context: impl Into<String>) -> Error {
        Error::Object {
            context: context.into(),
            source: Box::new(self),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error and its causes on one line, leaving out causes whose text the message already
/// contains (tonic's transport errors say "transport error" and keep the reason underneath).
pub fn message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}
