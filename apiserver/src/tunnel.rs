//! Log tunnels. The API server never connects to nodes (in a local cluster they live in network
//! namespaces it cannot reach): each node agent keeps one bidirectional stream open to it
//! (`NodeTunnel`), and a `Logs` call is relayed as a stream inside the tunnel of the pod's node.
//! The agent sends at most [`LOG_WINDOW_CHUNKS`] chunks of a stream ahead of what its reader
//! has taken, so the tunnel's reader never waits on one slow client.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use skiff_api::{
    Kind as _, Object,
    kinds::Pod,
    logs::LOG_WINDOW_CHUNKS,
    proto::{
        LogAck, LogCancel, LogChunk, LogEnd, LogOpen, LogsRequest, TunnelDown, TunnelUp,
        tunnel_down, tunnel_up,
    },
};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_stream::{
    Stream,
    wrappers::{ReceiverStream, UnboundedReceiverStream},
};
use tonic::{Code, Status, Streaming};

use super::{
    auth::{Identity, Role},
    error::ApiError,
    objects::GenericStore,
};

/// How long a new tunnel has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunks buffered towards one `Logs` caller: the agent's window, and its end.
const STREAM_QUEUE: usize = LOG_WINDOW_CHUNKS as usize + 2;

/// The chunks of one `Logs` call.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;
/// What the API server sends down a node's tunnel.
pub type TunnelStream = Pin<Box<dyn Stream<Item = Result<TunnelDown, Status>> + Send>>;

/// The open tunnels, one per node (a newer tunnel from a node replaces its older one).
#[derive(Debug, Clone, Default)]
pub struct Tunnels(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    nodes: Mutex<HashMap<String, Arc<Tunnel>>>,
    /// Tunnel and stream ids.
    next_id: AtomicU64,
}

/// One node's open tunnel.
#[derive(Debug)]
struct Tunnel {
    id: u64,
    node: String,
    down: mpsc::UnboundedSender<Result<TunnelDown, Status>>,
    /// Stream id -> its `Logs` call; `None` once the tunnel has ended.
    streams: Mutex<Option<HashMap<u64, mpsc::Sender<Event>>>>,
}

/// What the agent sent for one stream.
#[derive(Debug)]
enum Event {
    Data(Vec<u8>),
    End(LogEnd),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tunnel {
    fn send(&self, msg: tunnel_down::Msg) {
        // A tunnel that is gone takes its streams with it; nothing is left to tell.
        let _ = self.down.send(Ok(TunnelDown { msg: Some(msg) }));
    }

    /// Hands one message from the agent to the stream it is for.
    fn route(&self, msg: tunnel_up::Msg) {
        let mut streams = lock(&self.streams);
        let Some(streams) = streams.as_mut() else {
            return;
        };
        match msg {
            tunnel_up::Msg::Hello(_) => {}
            tunnel_up::Msg::Data(d) => {
                let Some(tx) = streams.get(&d.stream_id) else {
                    return;
                };
                match tx.try_send(Event::Data(d.data)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        tracing::warn!(node = %self.node, stream = d.stream_id, "the node sent more than its window on a log stream; dropping the stream");
                        streams.remove(&d.stream_id);
                    }
                    Err(TrySendError::Closed(_)) => {
                        streams.remove(&d.stream_id);
                    }
                }
            }
            tunnel_up::Msg::End(e) => {
                if let Some(tx) = streams.remove(&e.stream_id) {
                    let _ = tx.try_send(Event::End(e));
                }
            }
        }
    }
}

impl Tunnels {
    fn next_id(&self) -> u64 {
        self.0.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// `NodeTunnel`: registers the caller's tunnel (the node is the caller's identity) and
    /// serves it until the node closes it.
    pub async fn open(
        &self,
        id: &Identity,
        mut up: Streaming<TunnelUp>,
    ) -> Result<TunnelStream, Status> {
        let Role::Node(node) = &id.role else {
            return Err(Status::permission_denied(format!(
                "only node agents open log tunnels; user {:?} is not a node",
                id.user
            )));
        };
        let first = tokio::time::timeout(HELLO_TIMEOUT, up.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("no hello within {HELLO_TIMEOUT:?}"))
            })??;
        if !matches!(
            first,
            Some(TunnelUp {
                msg: Some(tunnel_up::Msg::Hello(_))
            })
        ) {
            return Err(Status::invalid_argument(
                "the first message of a node tunnel must be a hello",
            ));
        }
        let (down, rx) = mpsc::unbounded_channel();
        let tunnel = Arc::new(Tunnel {
            id: self.next_id(),
            node: node.clone(),
            down,
            streams: Mutex::new(Some(HashMap::new())),
        });
        let replaced = lock(&self.0.nodes).insert(node.clone(), tunnel.clone());
        tracing::info!(
            node = %node,
            replaced = replaced.is_some(),
            "node log tunnel open"
        );
        tokio::spawn(self.clone().read_up(tunnel, up));
        Ok(Box::pin(UnboundedReceiverStream::new(rx)))
    }

    /// Routes what the agent sends until the tunnel ends; then ends its streams and
    /// unregisters it (unless a newer tunnel of the node has replaced it).
    async fn read_up(self, tunnel: Arc<Tunnel>, mut up: Streaming<TunnelUp>) {
        loop {
            match up.message().await {
                Ok(Some(TunnelUp { msg: Some(msg) })) => tunnel.route(msg),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(node = %tunnel.node, error = %e, "node log tunnel broke");
                    break;
                }
            }
        }
        // Dropping the senders ends every open `Logs` call on this tunnel.
        lock(&tunnel.streams).take();
        let mut nodes = lock(&self.0.nodes);
        if nodes.get(&tunnel.node).is_some_and(|t| t.id == tunnel.id) {
            nodes.remove(&tunnel.node);
        }
        tracing::info!(node = %tunnel.node, "node log tunnel closed");
    }

    /// `Logs`: finds the pod's node and relays the container's log from its tunnel.
    pub async fn logs(
        &self,
        reg: &GenericStore,
        id: &Identity,
        r: LogsRequest,
    ) -> Result<LogStream, Status> {
        may_read_logs(id, &r.namespace, &r.pod)?;
        if r.pod.is_empty() || r.namespace.is_empty() {
            return Err(Status::invalid_argument(
                "a logs request needs a namespace and a pod name",
            ));
        }
        if r.limit_bytes < 0 {
            return Err(Status::invalid_argument("limit_bytes must not be negative"));
        }
        let (object, _) = reg.get(Pod::INFO, &r.namespace, &r.pod).await?;
        let Object::Pod(pod) = object else {
            return Err(Status::internal(format!(
                "pods {:?} is stored as another kind",
                r.pod
            )));
        };
        let node = pod.spec.node_name.as_str();
        if node.is_empty() {
            return Err(Status::failed_precondition(format!(
                "pod {} is not bound to a node yet",
                r.pod
            )));
        }
        let container = pick_container(&pod, &r.container)?;
        let tunnel = lock(&self.0.nodes).get(node).cloned().ok_or_else(|| {
            Status::unavailable(format!(
                "node {node} has no log tunnel open (is its agent running?)"
            ))
        })?;
        let stream_id = self.next_id();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        match lock(&tunnel.streams).as_mut() {
            Some(streams) => streams.insert(stream_id, tx),
            None => {
                return Err(Status::unavailable(format!(
                    "the log tunnel of node {node} just closed"
                )));
            }
        };
        tunnel.send(tunnel_down::Msg::Open(LogOpen {
            stream_id,
            namespace: r.namespace,
            pod: r.pod,
            pod_uid: pod.metadata.uid.clone(),
            container,
            follow: r.follow,
            previous: r.previous,
            tail_lines: r.tail_lines,
            limit_bytes: r.limit_bytes,
        }));
        let (out, out_rx) = mpsc::channel(4);
        tokio::spawn(relay(tunnel, stream_id, rx, out));
        Ok(Box::pin(ReceiverStream::new(out_rx)))
    }
}

/// Admins, controllers and viewers read logs; nodes do not read each other's.
fn may_read_logs(id: &Identity, namespace: &str, pod: &str) -> Result<(), ApiError> {
    match id.role {
        Role::Admin | Role::Controller | Role::Viewer => Ok(()),
        Role::Node(_) => Err(ApiError::Forbidden {
            user: id.user.clone(),
            verb: "get",
            resource: "pods/log".into(),
            name: pod.into(),
            scope: format!("in the namespace {namespace:?}"),
        }),
    }
}

/// The container a request names, or the pod's only one when it names none.
fn pick_container(pod: &Pod, name: &str) -> Result<String, Status> {
    let names: Vec<&str> = pod
        .spec
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let pod_name = &pod.metadata.name;
    match (name, names.as_slice()) {
        ("", [only]) => Ok((*only).to_owned()),
        ("", _) => Err(Status::invalid_argument(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            names.join(" ")
        ))),
        (name, _) if names.contains(&name) => Ok(name.to_owned()),
        (name, _) => Err(Status::invalid_argument(format!(
            "container {name} is not valid for pod {pod_name}, choose one of: [{}]",
            names.join(" ")
        ))),
    }
}

/// Passes one stream's chunks to its caller, acknowledging them to the agent as the caller
/// takes them; cancels the stream on the agent when the caller goes away first.
async fn relay(
    tunnel: Arc<Tunnel>,
    stream_id: u64,
    mut rx: mpsc::Receiver<Event>,
    out: mpsc::Sender<Result<LogChunk, Status>>,
) {
    let mut unacked = 0u32;
    let ended = loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(Event::Data(data)) => {
                    if out.send(Ok(LogChunk { data })).await.is_err() {
                        break false;
                    }
                    unacked += 1;
                    if unacked >= LOG_WINDOW_CHUNKS / 2 {
                        tunnel.send(tunnel_down::Msg::Ack(LogAck { stream_id, chunks: unacked }));
                        unacked = 0;
                    }
                }
                Some(Event::End(end)) => {
                    if !end.error.is_empty() {
                        let code = if end.not_found { Code::NotFound } else { Code::Unavailable };
                        let _ = out.send(Err(Status::new(code, end.error))).await;
                    }
                    break true;
                }
                None => {
                    let _ = out
                        .send(Err(Status::unavailable(format!(
                            "the log tunnel of node {} closed",
                            tunnel.node
                        ))))
                        .await;
                    break false;
                }
            },
            () = out.closed() => break false,
        }
    };
    if !ended {
        if let Some(streams) = lock(&tunnel.streams).as_mut() {
            streams.remove(&stream_id);
        }
        tunnel.send(tunnel_down::Msg::Cancel(LogCancel { stream_id }));
    }
}

/// The metrics label of a call's result.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::NotFound => "NotFound",
        Code::InvalidArgument => "Invalid",
        Code::PermissionDenied => "Forbidden",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Unauthenticated => "Unauthorized",
        Code::Unavailable => "Unavailable",
        _ => "Internal",
    }
}

#[cfg(test)]
mod tests {
    use skiff_api::kinds::Container;

    use super::*;

    fn pod(containers: &[&str]) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = "web".into();
        p.spec.containers = containers
            .iter()
            .map(|n| Container {
                name: (*n).into(),
                ..Container::default()
            })
            .collect();
        p
    }

    #[test]
    fn the_container_defaults_to_the_only_one_and_mistakes_list_the_names() {
        assert_eq!(pick_container(&pod(&["a"]), "").ok().as_deref(), Some("a"));
        assert_eq!(
            pick_container(&pod(&["a", "b"]), "b").ok().as_deref(),
            Some("b")
        );
        let e = pick_container(&pod(&["a", "b"]), "").expect_err("ambiguous");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("choose one of: [a b]"),
            "{}",
            e.message()
        );
        let e = pick_container(&pod(&["a", "b"]), "c").expect_err("unknown");
        assert!(
            e.message()
                .contains("container c is not valid for pod web, choose one of: [a b]"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn nodes_may_not_read_logs() {
        let id = |role| Identity {
            user: "u".into(),
            role,
        };
        for role in [Role::Admin, Role::Controller, Role::Viewer] {
            assert!(may_read_logs(&id(role), "default", "p").is_ok());
        }
        let e = may_read_logs(&id(Role::Node("n".into())), "default", "p").expect_err("node");
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.to_string().contains("cannot get pods/log"), "{e}");
    }
}
