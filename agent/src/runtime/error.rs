//! What can go wrong talking to containerd, importing images and resolving them.

use std::{io, path::PathBuf, time::Duration};

use containerd_client::tonic::{Status, transport};

/// The container runtime's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of the container runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No containerd namespace was given.
    #[error("empty containerd namespace")]
    EmptyNamespace,
    /// The containerd namespace cannot travel as a gRPC header value.
    #[error("containerd namespace {namespace:?} is not a valid header")]
    InvalidNamespace { namespace: String },
    /// containerd's socket could not be connected to.
    #[error("connecting to containerd at {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: transport::Error,
    },
    /// A container id breaks containerd's rule.
    #[error("invalid container id {id:?}: [A-Za-z0-9][A-Za-z0-9._-]*, at most 76 characters")]
    InvalidId { id: String },
    /// The container to create exists already.
    #[error("container {id} exists already")]
    AlreadyExists { id: String },
    /// The container's spec cannot become a runtime spec.
    #[error("container {id}: {problem}")]
    InvalidSpec { id: String, problem: SpecProblem },
    /// A command to exec is empty.
    #[error("nothing to exec (empty argv)")]
    EmptyExec,
    /// A call to containerd failed: `action` says what was asked, `object` of what.
    #[error("{action}{}", if object.is_empty() { String::new() } else { format!(" {object}") })]
    Containerd {
        action: &'static str,
        object: String,
        #[source]
        source: Status,
    },
    /// A file or directory on the host (a log, an image archive) could not be read or made.
    #[error("{action} {}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// JSON the runtime reads or writes (a runtime spec, an image's manifest or config) is
    /// not what it should be.
    #[error("{what}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// An exec'd command ran past its timeout and was killed.
    #[error("{argv:?} in container {id} timed out after {timeout:?}")]
    ExecTimedOut {
        id: String,
        argv: Vec<String>,
        timeout: Duration,
    },
    /// A task was still there this long after SIGKILL.
    #[error("container {id} did not exit within {timeout:?} of SIGKILL")]
    KillTimedOut { id: String, timeout: Duration },
    /// containerd answered a get with no container record.
    #[error("containerd returned no container {id}")]
    NoRecord { id: String },
    /// The task that waited on containerd for an exit died.
    #[error("wait task")]
    WaitTask {
        #[source]
        source: tokio::task::JoinError,
    },
    /// An image reference is not a reference (the kubelet's `InvalidImageName`).
    #[error("couldn't parse image reference {reference:?}: {problem}")]
    InvalidReference {
        reference: String,
        problem: ReferenceProblem,
    },
    /// Pulling an image from its registry failed; the reason is the registry's own.
    #[error("{source}")]
    Pull {
        /// The normalized reference pulled.
        reference: String,
        source: super::registry::PullError,
    },
    /// The registry configuration (`--registry-config-dir`) is not usable.
    #[error("registry configuration")]
    Hosts {
        #[source]
        source: super::hosts::HostsError,
    },
    /// An image's record, manifest, config or archive is not usable.
    #[error("{context}")]
    Image {
        /// Which image or archive, and what was being done.
        context: String,
        #[source]
        source: Box<ImageError>,
    },
}

/// Why a container spec cannot become a runtime spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecProblem {
    /// There is no process to run.
    #[error("nothing to run (empty argv)")]
    EmptyArgv,
    /// The network namespace to join is a relative path.
    #[error("the network namespace path {} is not absolute", .0.display())]
    RelativeNetns(PathBuf),
    /// The log file is a relative path.
    #[error("log path {} is not absolute", .0.display())]
    RelativeLogPath(PathBuf),
    /// The log path has no file name.
    #[error("log path {} has no file name", .0.display())]
    LogPathWithoutName(PathBuf),
    /// The security settings cannot be honoured on this node (e.g. privileged where the node
    /// does not allow it).
    #[error(transparent)]
    Security(#[from] super::SecurityError),
}

/// Why an image reference breaks distribution's reference grammar, in its own words (the
/// kubelet shows them after "couldn't parse image reference").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceProblem {
    /// Outside the grammar (an empty reference, a bad character, component, tag or digest).
    #[error("invalid reference format")]
    Format,
    /// The repository path has upper-case letters.
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    Uppercase(String),
    /// Domain and path are longer than 255 characters.
    #[error("repository name must not be more than 255 characters")]
    NameTooLong,
    /// The whole reference is 64 hex digits (an image ID, not a name).
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexIdentifier(String),
    /// A digest algorithm Skiff does not pull (only sha256).
    #[error("unsupported digest algorithm")]
    DigestUnsupported,
    /// A sha256 digest whose encoding is not 64 characters.
    #[error("invalid checksum digest length")]
    DigestLength,
    /// A sha256 digest whose encoding is not lower-case hex.
    #[error("invalid checksum digest format")]
    DigestFormat,
}

/// What is wrong with an image archive or an image in containerd (the step at fault is in
/// [`Error::Image`]'s context).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A field of an index, manifest or config is missing or of the wrong type.
    #[error("{what}")]
    Missing { what: &'static str },
    /// A digest that is not a sha256 digest.
    #[error("unsupported digest {digest:?}")]
    Digest { digest: String },
    /// Layers and diff IDs do not pair up.
    #[error("the manifest has {layers} layers but the config {diff_ids} diff IDs")]
    LayerCount { layers: usize, diff_ids: usize },
    /// A file the index or manifest names is not in the archive.
    #[error("the archive has no {name}")]
    NotInArchive { name: String },
    /// Something is too large to read into memory.
    #[error("{size} bytes is too large to read into memory")]
    TooLarge { size: u64 },
    /// A blob's size in the archive and in its descriptor differ.
    #[error("blob {digest} has {actual} bytes in the archive, its descriptor says {declared}")]
    BlobSize {
        digest: String,
        actual: u64,
        declared: i64,
    },
    /// containerd's content store answered a write out of order, or committed something else.
    #[error("{what}")]
    ContentWrite { what: String },
    /// A layer did not unpack to the diff ID the config names.
    #[error("layer {layer} unpacks to {actual}, but the config says {expected}")]
    DiffId {
        layer: String,
        actual: String,
        expected: String,
    },
    /// An index has no image for this platform.
    #[error("no image for platform {platform} in the index")]
    Platform { platform: String },
    /// A blob's bytes do not hash to its digest.
    #[error("blob {digest}: digest mismatch: got {actual}")]
    DigestMismatch { digest: String, actual: String },
    /// The registry failed a pull.
    #[error(transparent)]
    Registry(#[from] super::registry::PullError),
    /// The archive is not a tar archive the importer reads.
    #[error("{what}")]
    Tar { what: String },
    /// A number that does not fit.
    #[error("a size or offset out of range")]
    Range {
        #[source]
        source: std::num::TryFromIntError,
    },
    /// The runtime failed underneath.
    #[error(transparent)]
    Runtime(#[from] Error),
    /// Reading the archive failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<std::num::TryFromIntError> for ImageError {
    fn from(source: std::num::TryFromIntError) -> ImageError {
        ImageError::Range { source }
    }
}

impl Error {
    /// A failed call to containerd.
    pub(crate) fn containerd(
        action: &'static str,
        object: impl Into<String>,
    ) -> impl FnOnce(Status) -> Error {
        let object = object.into();
        move |source| Error::Containerd {
            action,
            object,
            source,
        }
    }

    /// The gRPC status of a failed call to containerd, when that is what failed.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Containerd { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `e` and its sources, joined by ": " (how the agent has always shown runtime errors in logs
/// and pod statuses).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
