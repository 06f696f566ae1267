//! The gRPC service: authentication, metrics and tracing around each call of the registry.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use skiff_api::proto::{
    self, DeleteRequest, GetRequest, ListReply, ListRequest, LogsRequest, ObjectReply, TunnelUp,
    WatchEvent, WatchRequest, WhoAmIReply, WhoAmIRequest, WriteRequest,
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{
    auth::{Authenticator, Identity, Verb, authorize, node_references, relationship_needed},
    error::{ApiError, Chain, Result, detail},
    filter::Filter,
    objects::{DeleteOptions, GenericStore},
    registry::resource,
    tunnel::{self, LogStream, TunnelStream, Tunnels},
    watch::{self, WatchSpec},
};

/// The `skiff.v1.Api` implementation.
#[derive(Debug, Clone)]
pub struct ApiService {
    reg: Arc<GenericStore>,
    auth: Arc<Authenticator>,
    bookmark_interval: Duration,
    /// The node agents' log tunnels.
    tunnels: Tunnels,
}

impl ApiService {
    pub fn new(
        reg: Arc<GenericStore>,
        auth: Arc<Authenticator>,
        bookmark_interval: Duration,
    ) -> ApiService {
        ApiService {
            reg,
            auth,
            bookmark_interval,
            tunnels: Tunnels::default(),
        }
    }

    fn identity<T>(&self, req: &Request<T>) -> Result<Identity> {
        // Every listener authenticates a call from its headers before it reaches the service.
        if let Some(id) = req.extensions().get::<Identity>() {
            return Ok(id.clone());
        }
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.auth.authenticate(header)
    }

    /// Runs one call with its span, and records its result and latency.
    async fn call<T, R, F, Fut>(
        &self,
        verb: Verb,
        resource_name: &str,
        req: Request<T>,
        f: F,
    ) -> Result<Response<R>, Status>
    where
        F: FnOnce(Identity, T) -> Fut,
        Fut: std::future::Future<Output = Result<R>>,
    {
        let started = Instant::now();
        let span = tracing::info_span!(
            "api",
            verb = verb.as_str(),
            resource = resource_name,
            user = tracing::field::Empty
        );
        let result = async {
            let id = self.identity(&req)?;
            tracing::Span::current().record("user", id.user.as_str());
            f(id, req.into_inner()).await
        }
        .instrument(span.clone())
        .await;
        let code = match &result {
            Ok(_) => "OK",
            Err(e) => e.code_label(),
        };
        let took = started.elapsed();
        // Labels only from the known set, so junk resource names cannot grow the metrics.
        let label = match resource(resource_name) {
            Ok(info) => info.plural,
            Err(_) if resource_name == "whoami" => "whoami",
            Err(_) => "unknown",
        };
        self.reg.metrics.request(verb.as_str(), label, code, took);
        span.in_scope(|| match &result {
            Ok(_) => tracing::debug!(took_us = took.as_micros() as u64, "ok"),
            Err(e) => {
                tracing::info!(took_us = took.as_micros() as u64, code, error = %Chain(e), "refused")
            }
        });
        result.map(Response::new).map_err(Status::from)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl proto::api_server::Api for ApiService {
    async fn create(&self, req: Request<WriteRequest>) -> Result<Response<ObjectReply>, Status> {
        let res = req.get_ref().resource.clone();
        self.call(Verb::Create, &res, req, |id, r| async move {
            let info = resource(&r.resource)?;
            let o = self.reg.create(&id, info, &r.namespace, &r.object).await?;
            Ok(ObjectReply {
                object: o.to_json(),
            })
        })
        .await
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<ObjectReply>, Status> {
        let res = req.get_ref().resource.clone();
        self.call(Verb::Get, &res, req, |id, r| async move {
            let info = resource(&r.resource)?;
            let ns = if info.namespaced {
                r.namespace.as_str()
            } else {
                ""
            };
            let related = match relationship_needed(&id, Verb::Get, info, ns, &r.name) {
                Some(node) => node_references(&self.reg, node, info, ns, &r.name).await?,
                None => false,
            };
            if !related {
                authorize(&id, Verb::Get, info, ns, &r.name, None, None)?;
            }
            if r.name.is_empty() {
                return Err(ApiError::BadRequest("a get needs a name".into()));
            }
            if info.namespaced && ns.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "{} are namespaced: the request needs a namespace",
                    info.plural
                )));
            }
            let (o, _) = self.reg.get(info, ns, &r.name).await?;
            Ok(ObjectReply {
                object: o.to_json(),
            })
        })
        .await
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        let res = req.get_ref().resource.clone();
        self.call(Verb::List, &res, req, |id, r| async move {
            let info = resource(&r.resource)?;
            let ns = if info.namespaced {
                r.namespace.as_str()
            } else {
                ""
            };
            authorize(&id, Verb::List, info, ns, "", None, None)?;
            let filter = Filter::parse(info, &r.label_selector, &r.field_selector)?;
            let (items, revision) = self.reg.list(info, ns, &filter).await?;
            Ok(ListReply {
                resource_version: revision,
                items: items.iter().map(skiff_api::Object::to_json).collect(),
            })
        })
        .await
    }

    async fn update(&self, req: Request<WriteRequest>) -> Result<Response<ObjectReply>, Status> {
        let res = req.get_ref().resource.clone();
        self.call(Verb::Update, &res, req, |id, r| async move {
            let info = resource(&r.resource)?;
            let o = self
                .reg
                .update(&id, info, &r.namespace, &r.object, false)
                .await?;
            Ok(ObjectReply {
                object: o.to_json(),
            })
        })
        .await
    }

    async fn update_status(
        &self,
        req: Request<WriteRequest>,
    ) -> Result<Response<ObjectReply>, Status> {
        let res = req.get_ref().resource.clone();
        self.call(Verb::UpdateStatus, &res, req, |id, r| async move {
            let info = resource(&r.resource)?;
            let o = self
                .reg
                .update(&id, info, &r.namespace, &r.object, true)
                .await?;
            Ok(ObjectReply {
                object: o.to_json(),
            })
        })
        .await
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<ObjectReply>, Status> {
        let res = req.get_ref().resource.clone();
        self.call(Verb::Delete, &res, req, |id, r| async move {
            let info = resource(&r.resource)?;
            if r.name.is_empty() {
                return Err(ApiError::BadRequest("a delete needs a name".into()));
            }
            let propagation = proto::Propagation::try_from(r.propagation).map_err(|_| {
                ApiError::BadRequest(format!("unknown propagation policy {}", r.propagation))
            })?;
            if r.grace_period_seconds.is_some_and(|g| g < 0) {
                return Err(ApiError::BadRequest(
                    "grace_period_seconds must not be negative".into(),
                ));
            }
            let opts = DeleteOptions {
                propagation,
                grace_period_seconds: r.grace_period_seconds,
                precondition_revision: r.precondition_resource_version,
                precondition_uid: r.precondition_uid,
            };
            let o = self
                .reg
                .delete(&id, info, &r.namespace, &r.name, opts)
                .await?;
            Ok(ObjectReply {
                object: o.to_json(),
            })
        })
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let res = req.get_ref().resource.clone();
        let reg = self.reg.clone();
        let interval = self.bookmark_interval;
        self.call(Verb::Watch, &res, req, |id, r| async move {
            let info = resource(&r.resource)?;
            let ns = if info.namespaced {
                r.namespace.clone()
            } else {
                String::new()
            };
            authorize(&id, Verb::Watch, info, &ns, "", None, None)?;
            let filter = Filter::parse(info, &r.label_selector, &r.field_selector)?;
            if r.resource_version < 0 {
                return Err(ApiError::BadRequest(
                    "resource_version must not be negative".into(),
                ));
            }
            let spec = WatchSpec {
                info,
                namespace: ns,
                filter,
                after: r.resource_version,
                bookmarks: r.bookmarks,
                bookmark_interval: interval,
            };
            // Short: a watch's backlog is held by the watch cache, which moves a watcher that
            // falls too far behind to an etcd watch of its own.
            let (tx, rx) = mpsc::channel(32);
            let span = tracing::info_span!("watch", resource = info.plural, user = %id.user);
            tokio::spawn(watch::run(reg, spec, tx).instrument(span));
            Ok(Box::pin(ReceiverStream::new(rx)) as WatchStream)
        })
        .await
    }

    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<WhoAmIReply>, Status> {
        self.call(Verb::Get, "whoami", req, |id, _| async move {
            Ok(WhoAmIReply {
                groups: id.groups(),
                user: id.user,
            })
        })
        .await
    }

    type LogsStream = LogStream;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<LogStream>, Status> {
        let started = Instant::now();
        let span = tracing::info_span!(
            "api",
            verb = "get",
            resource = "pods/log",
            user = tracing::field::Empty
        );
        let result = async {
            let id = self.identity(&req)?;
            tracing::Span::current().record("user", id.user.as_str());
            self.tunnels.logs(&self.reg, &id, req.into_inner()).await
        }
        .instrument(span.clone())
        .await;
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.reg.metrics.request(
            "get",
            "pods/log",
            tunnel::code_label(code),
            started.elapsed(),
        );
        if let Err(e) = &result {
            span.in_scope(
                || tracing::info!(code = tunnel::code_label(code), error = %e.message(), detail = %detail(e), "refused"),
            );
        }
        result.map(Response::new)
    }

    type NodeTunnelStream = TunnelStream;

    async fn node_tunnel(
        &self,
        req: Request<Streaming<TunnelUp>>,
    ) -> Result<Response<TunnelStream>, Status> {
        let id = self.identity(&req)?;
        let result = self.tunnels.open(&id, req.into_inner()).await;
        if let Err(e) = &result {
            tracing::info!(user = %id.user, error = %e.message(), "node tunnel refused");
        }
        result.map(Response::new)
    }
}
