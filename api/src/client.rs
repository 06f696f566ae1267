//! A typed client of the Skiff API, used by skiffctl, the controllers, the agent, the tests and
//! the benchmarks alike.

use std::{path::PathBuf, time::Duration};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio_stream::{Stream, StreamExt};
pub use tonic::Code;
use tonic::{
    Request, Status,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri},
};

use crate::{
    object::{DecodeError, Kind, Object, ResourceInfo},
    proto::{
        self, DeleteRequest, GetRequest, ListRequest, WatchRequest, WhoAmIRequest, WriteRequest,
        api_client::ApiClient,
    },
};

/// The largest response the client accepts (a list of every pod in a large cluster).
const MAX_RESPONSE_BYTES: usize = 512 << 20;

/// How to reach and authenticate to an API server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `http://127.0.0.1:6443`, `https://api.example:6443` or `unix:///run/skiff/api.sock`.
    pub server: String,
    pub token: String,
    /// PEM CA certificate to verify an `https://` server with.
    pub ca_cert: Option<PathBuf>,
    /// The name the server's certificate is for, when it is not the host in `server`.
    pub tls_server_name: Option<String>,
    pub connect_timeout: Duration,
}

impl ClientConfig {
    pub fn new(server: impl Into<String>, token: impl Into<String>) -> ClientConfig {
        ClientConfig {
            server: server.into(),
            token: token.into(),
            ca_cert: None,
            tls_server_name: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address or TLS material is unusable.
    #[error("{0}")]
    Config(String),
    /// The server could not be reached.
    #[error("cannot connect to the API server at {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered with an error (its message is meant for people).
    #[error("{}", .0.message())]
    Api(Status),
    /// The server sent an object this client cannot decode.
    #[error("the server sent an object this client cannot read: {0}")]
    Decode(#[from] DecodeError),
    /// A typed call got an object of another kind.
    #[error("the server sent a {got} where a {want} was expected")]
    WrongKind {
        got: &'static str,
        want: &'static str,
    },
}

impl ClientError {
    /// The gRPC code (`Unknown` for errors that never reached the server).
    pub fn code(&self) -> Code {
        match self {
            ClientError::Api(s) => s.code(),
            ClientError::Connect { .. } => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
    /// A compare-and-swap lost: read again and retry.
    pub fn is_conflict(&self) -> bool {
        self.code() == Code::Aborted
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == Code::NotFound
    }
    pub fn is_already_exists(&self) -> bool {
        self.code() == Code::AlreadyExists
    }
    /// The watch or list asked for history that is gone: list again.
    pub fn is_gone(&self) -> bool {
        self.code() == Code::OutOfRange
    }
    pub fn is_invalid(&self) -> bool {
        self.code() == Code::InvalidArgument
    }
}

impl From<Status> for ClientError {
    fn from(s: Status) -> ClientError {
        ClientError::Api(s)
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Adds the bearer token to every call.
#[derive(Debug, Clone)]
pub struct BearerToken(AsciiMetadataValue);

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// List and watch filters.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// `app=web,tier!=db`.
    pub label_selector: String,
    /// `spec.nodeName=node-1`.
    pub field_selector: String,
}

impl ListParams {
    pub fn labels(selector: impl Into<String>) -> ListParams {
        ListParams {
            label_selector: selector.into(),
            ..ListParams::default()
        }
    }
    pub fn fields(selector: impl Into<String>) -> ListParams {
        ListParams {
            field_selector: selector.into(),
            ..ListParams::default()
        }
    }
}

/// How a delete treats dependents and running pods.
#[derive(Debug, Clone, Default)]
pub struct DeleteParams {
    pub propagation: proto::Propagation,
    pub grace_period_seconds: Option<i64>,
    pub precondition_resource_version: i64,
    /// Delete only the object with this uid (empty: any).
    pub precondition_uid: String,
}

/// One watch event.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    Added(Object),
    Modified(Object),
    Deleted(Object),
    /// Nothing changed for this watch up to this revision.
    Bookmark(i64),
}

impl WatchEvent {
    /// The revision to resume from after this event.
    pub fn resource_version(&self) -> i64 {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                o.meta().revision()
            }
            WatchEvent::Bookmark(r) => *r,
        }
    }
}

/// A connection to an API server (cheap to clone; clones share the connection).
#[derive(Debug, Clone)]
pub struct Client {
    api: ApiClient<InterceptedService<Channel, BearerToken>>,
    channel: Channel,
}

impl Client {
    /// Connects (within `connect_timeout`) to the server in `config`.
    pub async fn connect(config: &ClientConfig) -> Result<Client> {
        let token = AsciiMetadataValue::try_from(format!("Bearer {}", config.token))
            .map_err(|_| ClientError::Config("the token must be printable ASCII".into()))?;
        let channel = if let Some(path) = config.server.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            let endpoint = Endpoint::from_static("http://skiff.invalid")
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true);
            endpoint
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
        } else {
            let mut endpoint = Endpoint::from_shared(config.server.clone())
                .map_err(|e| {
                    ClientError::Config(format!("invalid server address {:?}: {e}", config.server))
                })?
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30));
            if config.server.starts_with("https://") {
                let mut tls = ClientTlsConfig::new();
                if let Some(ca) = &config.ca_cert {
                    let pem = std::fs::read(ca).map_err(|e| {
                        ClientError::Config(format!("reading CA certificate {}: {e}", ca.display()))
                    })?;
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                if let Some(name) = &config.tls_server_name {
                    tls = tls.domain_name(name.clone());
                }
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|e| ClientError::Config(format!("TLS configuration: {e}")))?;
            }
            endpoint.connect().await
        }
        .map_err(|source| ClientError::Connect {
            server: config.server.clone(),
            source,
        })?;
        Ok(Client::over(channel, token))
    }

    fn over(channel: Channel, token: AsciiMetadataValue) -> Client {
        let api = ApiClient::with_interceptor(channel.clone(), BearerToken(token))
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES);
        Client { api, channel }
    }

    /// A client over the same connection that authenticates with another token (many simulated
    /// nodes can share one connection this way).
    pub fn with_token(&self, token: &str) -> Result<Client> {
        let token = AsciiMetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| ClientError::Config("the token must be printable ASCII".into()))?;
        Ok(Client::over(self.channel.clone(), token))
    }

    pub(crate) fn api(&self) -> ApiClient<InterceptedService<Channel, BearerToken>> {
        self.api.clone()
    }

    /// Creates any object; returns it as stored.
    pub async fn create_object(&self, o: &Object) -> Result<Object> {
        let reply = self.api().create(write_request(o)).await?.into_inner();
        Ok(Object::from_json(&reply.object)?)
    }

    /// Sends bytes as they are (for tools that forward a user's JSON, and for tests of the
    /// server's refusals).
    pub async fn create_raw(
        &self,
        resource: &str,
        namespace: &str,
        object: Vec<u8>,
    ) -> Result<Object> {
        let reply = self
            .api()
            .create(WriteRequest {
                resource: resource.into(),
                namespace: namespace.into(),
                object,
            })
            .await?
            .into_inner();
        Ok(Object::from_json(&reply.object)?)
    }

    pub async fn create<K: Kind>(&self, o: &K) -> Result<K> {
        typed(self.create_object(&o.clone().into_object()).await?)
    }

    pub async fn get_object(
        &self,
        info: &ResourceInfo,
        namespace: &str,
        name: &str,
    ) -> Result<Object> {
        let reply = self
            .api()
            .get(GetRequest {
                resource: info.plural.into(),
                namespace: namespace.into(),
                name: name.into(),
            })
            .await?
            .into_inner();
        Ok(Object::from_json(&reply.object)?)
    }

    pub async fn get<K: Kind>(&self, namespace: &str, name: &str) -> Result<K> {
        typed(self.get_object(K::INFO, namespace, name).await?)
    }

    /// Lists (namespace "" = all namespaces); returns the objects and the revision to watch from.
    pub async fn list_objects(
        &self,
        info: &ResourceInfo,
        namespace: &str,
        params: &ListParams,
    ) -> Result<(Vec<Object>, i64)> {
        let reply = self
            .api()
            .list(ListRequest {
                resource: info.plural.into(),
                namespace: namespace.into(),
                label_selector: params.label_selector.clone(),
                field_selector: params.field_selector.clone(),
            })
            .await?
            .into_inner();
        let items = reply
            .items
            .iter()
            .map(|b| Object::from_json(b))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((items, reply.resource_version))
    }

    pub async fn list<K: Kind>(
        &self,
        namespace: &str,
        params: &ListParams,
    ) -> Result<(Vec<K>, i64)> {
        let (items, rv) = self.list_objects(K::INFO, namespace, params).await?;
        Ok((
            items.into_iter().map(typed).collect::<Result<Vec<_>>>()?,
            rv,
        ))
    }

    /// Compare-and-swap on `metadata.resourceVersion` (unconditional when it is empty).
    pub async fn update_object(&self, o: &Object) -> Result<Object> {
        let reply = self.api().update(write_request(o)).await?.into_inner();
        Ok(Object::from_json(&reply.object)?)
    }

    pub async fn update<K: Kind>(&self, o: &K) -> Result<K> {
        typed(self.update_object(&o.clone().into_object()).await?)
    }

    /// Writes only `status` (compare-and-swap like update).
    pub async fn update_status_object(&self, o: &Object) -> Result<Object> {
        let reply = self
            .api()
            .update_status(write_request(o))
            .await?
            .into_inner();
        Ok(Object::from_json(&reply.object)?)
    }

    pub async fn update_status<K: Kind>(&self, o: &K) -> Result<K> {
        typed(self.update_status_object(&o.clone().into_object()).await?)
    }

    /// Deletes; returns the object's last state (or, for a pod given a grace period, the pod
    /// marked for deletion).
    pub async fn delete(
        &self,
        info: &ResourceInfo,
        namespace: &str,
        name: &str,
        params: DeleteParams,
    ) -> Result<Object> {
        let reply = self
            .api()
            .delete(DeleteRequest {
                resource: info.plural.into(),
                namespace: namespace.into(),
                name: name.into(),
                propagation: params.propagation.into(),
                grace_period_seconds: params.grace_period_seconds,
                precondition_resource_version: params.precondition_resource_version,
                precondition_uid: params.precondition_uid,
            })
            .await?
            .into_inner();
        Ok(Object::from_json(&reply.object)?)
    }

    /// Events after revision `after` (0: from now). The stream ends with an error when the
    /// server goes away or the history is compacted (`is_gone`).
    pub async fn watch(
        &self,
        info: &ResourceInfo,
        namespace: &str,
        params: &ListParams,
        after: i64,
        bookmarks: bool,
    ) -> Result<impl Stream<Item = Result<WatchEvent>> + Send + Unpin + use<>> {
        let stream = self
            .api()
            .watch(WatchRequest {
                resource: info.plural.into(),
                namespace: namespace.into(),
                label_selector: params.label_selector.clone(),
                field_selector: params.field_selector.clone(),
                resource_version: after,
                bookmarks,
            })
            .await?
            .into_inner();
        Ok(stream.map(|item| {
            let ev = item?;
            let object = || Object::from_json(&ev.object);
            Ok(match ev.r#type.as_str() {
                "ADDED" => WatchEvent::Added(object()?),
                "MODIFIED" => WatchEvent::Modified(object()?),
                "DELETED" => WatchEvent::Deleted(object()?),
                _ => WatchEvent::Bookmark(ev.resource_version),
            })
        }))
    }

    /// The caller's identity as the server sees it: (user, groups).
    pub async fn who_am_i(&self) -> Result<(String, Vec<String>)> {
        let r = self.api().who_am_i(WhoAmIRequest {}).await?.into_inner();
        Ok((r.user, r.groups))
    }
}

fn write_request(o: &Object) -> WriteRequest {
    WriteRequest {
        resource: o.info().plural.into(),
        namespace: o.meta().namespace.clone(),
        object: o.to_json(),
    }
}

fn typed<K: Kind>(o: Object) -> Result<K> {
    let got = o.info().kind;
    K::from_object(o).ok_or(ClientError::WrongKind {
        got,
        want: K::INFO.kind,
    })
}
