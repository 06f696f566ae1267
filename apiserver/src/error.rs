//! Errors of API calls, worded as Kubernetes words them, and their gRPC status codes.

use skiff_api::{DecodeError, FieldError};
use tonic::{Code, Status};

/// Why an API call failed. Every variant changes nothing in etcd.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request names no resource Skiff serves.
    #[error("the server could not find the requested resource {resource:?}")]
    UnknownResource { resource: String },
    /// The request itself is malformed (missing name, namespace on a cluster-scoped resource, ...).
    #[error("{0}")]
    BadRequest(String),
    /// The object could not be decoded.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// The object decoded but failed validation.
    #[error("{kind} {name:?} is invalid: {}", join(errors))]
    Invalid {
        kind: &'static str,
        name: String,
        errors: Vec<FieldError>,
    },
    /// No such object.
    #[error("{resource} {name:?} not found")]
    NotFound {
        resource: &'static str,
        name: String,
    },
    /// The namespace of a namespaced object does not exist.
    #[error("namespaces {namespace:?} not found")]
    NamespaceNotFound { namespace: String },
    /// A delete's uid precondition did not hold.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The namespace is being deleted.
    #[error(
        "{resource} {name:?} is forbidden: unable to create new content in namespace {namespace} because it is being terminated"
    )]
    NamespaceTerminating {
        resource: &'static str,
        name: String,
        namespace: String,
    },
    /// Create of a name that exists.
    #[error("{resource} {name:?} already exists")]
    AlreadyExists {
        resource: &'static str,
        name: String,
    },
    /// Compare-and-swap failed: the caller's resourceVersion is stale.
    #[error(
        "Operation cannot be fulfilled on {resource} {name:?}: the object has been modified (resourceVersion {given}, now {current}); please apply your changes to the latest version and try again"
    )]
    Conflict {
        resource: &'static str,
        name: String,
        given: i64,
        current: i64,
    },
    /// The watch or list asked for history etcd has compacted away.
    #[error(
        "too old resource version: {requested} (oldest available: {compacted}); list again and watch from the list's resourceVersion"
    )]
    Gone { requested: i64, compacted: i64 },
    /// No valid bearer token.
    #[error("Unauthorized: {0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{resource} {name:?} is forbidden: User {user:?} cannot {verb} {resource} {scope}")]
    Forbidden {
        user: String,
        verb: &'static str,
        resource: String,
        name: String,
        scope: String,
    },
    /// A watch could not be kept going.
    #[error("{0}")]
    Unavailable(String),
    /// A ClusterIP or NodePort range has nothing free.
    #[error("{0}")]
    RangeFull(String),
    /// etcd failed or could not be reached.
    #[error("storage error: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// Something stored in etcd does not decode (written by something else, or corrupted).
    #[error("stored object at {key} is unreadable: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: DecodeError,
    },
    /// A stored value no encryption provider could read.
    #[error("stored object at {key} is unreadable: {source}")]
    Transform {
        key: String,
        #[source]
        source: crate::encryption::TransformError,
    },
    /// An object the encryption provider could not encrypt for writing.
    #[error("encrypting the object for {key}: {source}")]
    Seal {
        key: String,
        #[source]
        source: crate::encryption::TransformError,
    },
}

fn join(errors: &[FieldError]) -> String {
    if errors.len() == 1 {
        return errors[0].to_string();
    }
    let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("[{}]", list.join(", "))
}

/// The `etcd_client::Error` was a request that never reached a server (no connection could be
/// made), so sending it again cannot apply it twice. A connection that broke or timed out with
/// the request on it does not count: the request may have been applied.
pub fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // tonic marks a failure to connect with `ConnectError` in the status's source chain;
        // a status sent by an etcd server has no source at all.
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == Code::Unavailable && in_chain::<tonic::ConnectError>(s)
        }
        _ => false,
    }
}

/// The error is one a CAS-guarded request may be sent again after: it never left the client;
/// etcd reported itself unavailable (no leader, leader changed, proposal timed out); or the
/// connection broke with the request on it (its member died). In the last two cases the first
/// attempt may have been applied; every write here is a compare-and-swap, so a repeat cannot
/// apply twice, and the caller checks whether the winner was its own first attempt. The
/// client's own request timeout is not retried (it would multiply the wait).
pub fn retriable(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(s) = e else {
        return never_sent(e);
    };
    let local = std::error::Error::source(s).is_some();
    match s.code() {
        Code::Unavailable => true,
        Code::Cancelled | Code::Unknown => local && !in_chain::<tonic::TimeoutExpired>(s),
        _ => false,
    }
}

/// Whether an error of type `T` is somewhere in the status's source chain.
fn in_chain<T: std::error::Error + 'static>(s: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.downcast_ref::<T>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

impl ApiError {
    /// The gRPC code clients branch on.
    pub fn code(&self) -> Code {
        match self {
            ApiError::UnknownResource { .. }
            | ApiError::NotFound { .. }
            | ApiError::NamespaceNotFound { .. } => Code::NotFound,
            ApiError::BadRequest(_) | ApiError::Decode(_) | ApiError::Invalid { .. } => {
                Code::InvalidArgument
            }
            ApiError::Forbidden { .. } => Code::PermissionDenied,
            ApiError::AlreadyExists { .. } => Code::AlreadyExists,
            ApiError::Conflict { .. } | ApiError::PreconditionFailed(_) => Code::Aborted,
            ApiError::NamespaceTerminating { .. } => Code::FailedPrecondition,
            ApiError::Gone { .. } => Code::OutOfRange,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::RangeFull(_) => Code::ResourceExhausted,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Etcd(e) if retriable(e) => Code::Unavailable,
            ApiError::Etcd(_)
            | ApiError::Corrupt { .. }
            | ApiError::Transform { .. }
            | ApiError::Seal { .. } => Code::Internal,
        }
    }

    /// The message a client sees. A storage failure says only what the client can act on; its
    /// detail (etcd's address and port, the transport's own text) would show clients the
    /// cluster's insides, so it goes to the server's log alone ([`Chain`]).
    pub fn client_message(&self) -> String {
        match self {
            ApiError::Etcd(e) if retriable(e) => "etcd is unavailable; try again".into(),
            ApiError::Etcd(etcd_client::Error::GRpcStatus(s))
                if in_chain::<tonic::TimeoutExpired>(s) =>
            {
                "etcd did not answer in time; the request may or may not have been applied".into()
            }
            ApiError::Etcd(_) => {
                "storage error: etcd refused or failed the request; the API server's log has the details"
                    .into()
            }
            other => other.to_string(),
        }
    }

    /// A short label for metrics.
    pub fn code_label(&self) -> &'static str {
        match self.code() {
            Code::NotFound => "NotFound",
            Code::InvalidArgument => "Invalid",
            Code::PermissionDenied => "Forbidden",
            Code::AlreadyExists => "AlreadyExists",
            Code::Aborted => "Conflict",
            Code::FailedPrecondition => "Terminating",
            Code::OutOfRange => "Gone",
            Code::Unauthenticated => "Unauthorized",
            Code::ResourceExhausted => "RangeFull",
            Code::Unavailable => "Unavailable",
            _ => "Internal",
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut status = Status::new(e.code(), e.client_message());
        if matches!(e, ApiError::Etcd(_)) {
            // Never sent to the client; kept for the server's log (see `detail`).
            status.set_source(std::sync::Arc::new(e));
        }
        status
    }
}

/// What a status made from an [`ApiError`] left out of its message, for the server's log.
pub fn detail(status: &Status) -> String {
    std::error::Error::source(status).map_or_else(String::new, |e| Chain(e).to_string())
}

/// Shows an error with every error in its source chain (`a: b: c`), for the server's log: a
/// transport error's own text says only "transport error", and the reason is further down.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        // Bounded: a chain is short, but nothing stops a cycle through a custom source().
        for _ in 0..16 {
            let Some(e) = source else { break };
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_reach_clients_without_etcds_address_and_keep_it_for_the_log() {
        let unavailable = ApiError::Etcd(etcd_client::Error::GRpcStatus(Status::unavailable(
            "tcp connect error: 127.0.0.1:23790: Connection refused",
        )));
        let failed = ApiError::Etcd(etcd_client::Error::GRpcStatus(Status::internal(
            "dial tcp 10.1.2.3:2379: i/o timeout",
        )));
        for (e, code, says) in [
            (
                unavailable,
                Code::Unavailable,
                "etcd is unavailable; try again",
            ),
            (
                failed,
                Code::Internal,
                "the API server's log has the details",
            ),
        ] {
            let status = Status::from(e);
            assert_eq!(status.code(), code);
            assert!(status.message().contains(says), "{}", status.message());
            assert!(
                !status.message().contains(":2379") && !status.message().contains(":23790"),
                "{}",
                status.message()
            );
            assert!(detail(&status).contains(":2379"), "{}", detail(&status));
        }
    }

    #[test]
    fn other_errors_keep_their_own_words() {
        let e = ApiError::NotFound {
            resource: "pods",
            name: "web".into(),
        };
        assert_eq!(Status::from(e).message(), "pods \"web\" not found");
    }
}
