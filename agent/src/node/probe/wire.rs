//! What a probe speaks over its connection into the pod besides plain HTTP: TLS for `scheme:
//! HTTPS` (the certificate is not verified, as kubelet does not verify it) and the gRPC health
//! checking protocol (`grpc.health.v1.Health/Check`).

use std::{
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::{Code, transport::Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::Failure;
use crate::podnet::Connection;

/// Wraps `conn` in TLS to `ip` without verifying the server's certificate.
pub(super) async fn tls(conn: Box<dyn Connection>, ip: IpAddr) -> Result<impl Connection, Failure> {
    connector()
        .map_err(|source| Failure::Tls { source })?
        .connect(ServerName::IpAddress(ip.into()), conn)
        .await
        .map_err(|source| Failure::Handshake { source })
}

/// The TLS client of every HTTPS probe (ring, safe default protocol versions, any
/// certificate), built by the first one.
fn connector() -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    static CONNECTOR: OnceLock<Result<tokio_rustls::TlsConnector, rustls::Error>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = crate::tls::any_certificate(&provider);
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
        })
        .clone()
}

/// One `grpc.health.v1.Health/Check` for `service` over `conn`; Ok when the answer is
/// `SERVING`. The messages are kubelet's.
pub(super) async fn grpc_check(
    conn: Box<dyn Connection>,
    service: &str,
    timeout: Duration,
) -> Result<(), Failure> {
    // tonic dials through a connector; this one hands over the connection already made inside
    // the pod's namespace, once.
    let conn = Arc::new(Mutex::new(Some(conn)));
    let connector = tower::service_fn(move |_| {
        let taken = conn.lock().unwrap_or_else(PoisonError::into_inner).take();
        async move {
            taken.map(TokioIo::new).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the probe's connection was used already",
                )
            })
        }
    });
    let channel = Endpoint::from_static("http://pod.invalid")
        .timeout(timeout)
        .connect_with_connector(connector)
        .await
        .map_err(|e| Failure::Grpc {
            message: format!("timeout: failed to connect service within {timeout:?}: {e}"),
        })?;
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let answer = HealthClient::new(channel)
        .check(request)
        .await
        .map_err(|status| Failure::Grpc {
            message: match status.code() {
                Code::Unimplemented => format!(
                    "this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                    status.message()
                ),
                Code::DeadlineExceeded | Code::Cancelled => {
                    format!("timeout: health rpc did not complete within {timeout:?}")
                }
                _ => format!(
                    "error: health rpc probe failed: {:?}: {}",
                    status.code(),
                    status.message()
                ),
            },
        })?;
    let status = answer.into_inner().status();
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(Failure::Grpc {
            message: format!(
                "service unhealthy (responded with {:?})",
                status.as_str_name()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use hyper_util::rt::TokioExecutor;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };
    use tonic::server::NamedService;
    use tower::ServiceExt as _;

    use super::*;

    /// Serves HTTP/2 on loopback with `service` behind every path (enough for one gRPC service).
    async fn serve<S>(service: S) -> SocketAddr
    where
        S: tower::Service<
                http::Request<hyper::body::Incoming>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send,
    {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let service = service.clone();
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(
                            TokioIo::new(tcp),
                            hyper::service::service_fn(move |req| service.clone().oneshot(req)),
                        ),
                );
            }
        });
        addr
    }

    /// A gRPC server on loopback with the standard health service, `app` set as `status`.
    async fn health_server(status: tonic_health::ServingStatus) -> SocketAddr {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("app", status).await;
        serve(service).await
    }

    async fn dial(addr: SocketAddr) -> Box<dyn Connection> {
        Box::new(TcpStream::connect(addr).await.unwrap())
    }

    #[tokio::test]
    async fn grpc_probe_passes_only_on_serving_and_says_why_in_kubelets_words() {
        let t = Duration::from_secs(2);
        let serving = health_server(tonic_health::ServingStatus::Serving).await;
        // "" is the server's overall health, which tonic's reporter reports as serving.
        grpc_check(dial(serving).await, "", t).await.unwrap();
        grpc_check(dial(serving).await, "app", t).await.unwrap();

        let down = health_server(tonic_health::ServingStatus::NotServing).await;
        let err = grpc_check(dial(down).await, "app", t).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "service unhealthy (responded with \"NOT_SERVING\")"
        );
        let err = grpc_check(dial(serving).await, "other", t)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("error: health rpc probe failed: NotFound"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn grpc_probe_of_a_server_without_the_health_service_names_the_protocol() {
        // What a gRPC server answers for a service it does not have.
        let unimplemented = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
            let name = <tonic_health::pb::health_server::HealthServer<
                tonic_health::server::HealthService,
            > as NamedService>::NAME;
            Ok(tonic::Status::unimplemented(format!("unknown service {name}")).into_http())
        });
        let addr = serve(unimplemented).await;
        let err = grpc_check(dial(addr).await, "", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "this server does not implement the grpc health protocol (grpc.health.v1.Health)"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn https_probe_talks_tls_to_a_self_signed_server_without_verifying_it() {
        let cert = rcgen::generate_simple_self_signed(vec!["pod.invalid".to_owned()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = [0u8; 1024];
            let n = tls.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /healthz HTTP/1.0\r\n"));
            tls.write_all(b"HTTP/1.0 204 No Content\r\n\r\n")
                .await
                .unwrap();
            tls.shutdown().await.unwrap();
        });
        let mut conn = tls(dial(addr).await, addr.ip()).await.unwrap();
        conn.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.0 204"), "{answer}");

        // Plain HTTP to a TLS port is a failed handshake, not a success.
        let plain = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let plain_addr = plain.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = plain.accept().await.unwrap();
            let _ = tcp.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
        });
        assert!(matches!(
            tls(dial(plain_addr).await, plain_addr.ip()).await,
            Err(Failure::Handshake { .. })
        ));
    }
}
