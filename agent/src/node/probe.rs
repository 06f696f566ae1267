//! Startup, readiness and liveness probes and lifecycle hooks: exec inside the container, TCP connect,
//! HTTP(S) GET and gRPC health checks from inside the pod's own network namespace (so their
//! traffic never leaves the pod's namespace and needs no route from the node).

mod wire;

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use skiff_api::kinds::{
    Container, ExecAction, HttpGetAction, IntOrString, LifecycleHandler, Probe,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    podnet::{Connection, DialError, PodNetwork, PodNetworks},
    runtime::{self, ContainerRuntime},
};

/// Why a probe or a hook failed (its text is what the agent logs).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A numbered port that is not a TCP port.
    #[error("port {port} is out of range")]
    PortRange { port: i32 },
    /// A named port the container does not declare.
    #[error("the container has no port named {name:?}")]
    NoSuchPort { name: String },
    /// The probe's host is not an address.
    #[error("probe host {host:?} is not an IPv4 address")]
    Host { host: String },
    /// No connection could be made from inside the pod.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The command could not be run in the container (or ran past its time).
    #[error("exec {command:?}")]
    Exec {
        command: Vec<String>,
        #[source]
        source: Box<runtime::Error>,
    },
    /// The command ran and failed.
    #[error("command {command:?} exited with {code}")]
    ExitCode { command: Vec<String>, code: i32 },
    /// The probe's HTTP GET was answered with a failure status.
    #[error("HTTP probe failed with statuscode: {code}")]
    ProbeStatus { code: u16 },
    /// The hook's HTTP GET was answered with a failure status.
    #[error("HTTP GET answered with status {code}")]
    HookStatus { code: u16 },
    /// A scheme other than HTTP and HTTPS.
    #[error("scheme {scheme} is not supported (HTTP or HTTPS)")]
    Scheme { scheme: String },
    /// No TLS client could be made.
    #[error("setting up TLS")]
    Tls {
        #[source]
        source: rustls::Error,
    },
    /// The TLS handshake with the container failed.
    #[error("TLS handshake")]
    Handshake {
        #[source]
        source: io::Error,
    },
    /// The gRPC health check did not answer `SERVING` (kubelet's wording).
    #[error("{message}")]
    Grpc { message: String },
    /// The request could not be sent.
    #[error("sending the request")]
    Send {
        #[source]
        source: io::Error,
    },
    /// The response could not be read.
    #[error("reading the response")]
    Read {
        #[source]
        source: io::Error,
    },
    /// What came back is not HTTP.
    #[error("not an HTTP response: {line:?}")]
    NotHttp { line: String },
    /// No answer in time.
    #[error("timed out after {timeout:?}")]
    TimedOut { timeout: Duration },
    /// A probe without exec, tcpSocket, httpGet or grpc.
    #[error("the probe has no handler (exec, tcpSocket, httpGet or grpc)")]
    NoProbeHandler,
    /// A hook without exec, httpGet or sleep.
    #[error("the hook has no handler (exec, httpGet or sleep)")]
    NoHookHandler,
    /// A sleep hook longer than what was left of the grace period.
    #[error("sleep of {wanted:?} cut short by the grace period after {budget:?}")]
    SleepCut { wanted: Duration, budget: Duration },
}

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Readiness,
    Liveness,
    Startup,
}

/// A probe's timing with the Kubernetes defaults filled in.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    /// Defaults: period 10 s, timeout 1 s, thresholds 1 and 3 (zero or negative means default).
    pub fn of(p: &Probe) -> Timing {
        let secs = |v: i32, default: u64| {
            if v > 0 {
                Duration::from_secs(v as u64)
            } else {
                Duration::from_secs(default)
            }
        };
        Timing {
            initial_delay: Duration::from_secs(p.initial_delay_seconds.max(0) as u64),
            period: secs(p.period_seconds, 10),
            timeout: secs(p.timeout_seconds, 1),
            success_threshold: p.success_threshold.max(1) as u32,
            failure_threshold: if p.failure_threshold > 0 {
                p.failure_threshold as u32
            } else {
                3
            },
        }
    }
}

/// Where a probe or a hook runs: a container and its pod's network.
#[derive(Debug, Clone)]
pub struct Target {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub network: Arc<dyn PodNetworks>,
    pub container_id: String,
    pub net: PodNetwork,
}

/// A named or numbered port of `container`.
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, Failure> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or(Failure::PortRange { port: *n }),
        IntOrString::String(name) => container
            .ports
            .iter()
            .find(|p| &p.name == name)
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| Failure::NoSuchPort { name: name.clone() }),
    }
}

async fn connect(target: &Target, addr: SocketAddrV4) -> Result<Box<dyn Connection>, Failure> {
    Ok(target.network.connect(&target.net, addr).await?)
}

/// The host a probe names (default: the pod's IP).
fn probe_host(host: &str, pod_ip: Ipv4Addr) -> Result<Ipv4Addr, Failure> {
    if host.is_empty() {
        Ok(pod_ip)
    } else {
        host.parse().map_err(|_| Failure::Host {
            host: host.to_owned(),
        })
    }
}

/// Runs `probe` once; Ok on success, Err with the reason on failure.
pub async fn run_once(
    probe: &Probe,
    container: &Container,
    target: &Target,
) -> Result<(), Failure> {
    let timing = Timing::of(probe);
    let attempt = async {
        if let Some(x) = &probe.exec {
            return exec(x, target, timing.timeout).await;
        }
        if let Some(tcp) = &probe.tcp_socket {
            let port = resolve_port(&tcp.port, container)?;
            let addr = SocketAddrV4::new(probe_host(&tcp.host, target.net.ip)?, port);
            connect(target, addr).await?;
            return Ok(());
        }
        if let Some(http) = &probe.http_get {
            let code = http_get(http, container, target, "skiff-probe").await?;
            return if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(Failure::ProbeStatus { code })
            };
        }
        if let Some(grpc) = &probe.grpc {
            let port = resolve_port(&IntOrString::Int(grpc.port), container)?;
            let conn = connect(target, SocketAddrV4::new(target.net.ip, port)).await?;
            let service = grpc.service.as_deref().unwrap_or_default();
            return wire::grpc_check(conn, service, timing.timeout).await;
        }
        Err(Failure::NoProbeHandler)
    };
    match tokio::time::timeout(timing.timeout + Duration::from_millis(50), attempt).await {
        Ok(r) => r,
        Err(_) => Err(Failure::TimedOut {
            timeout: timing.timeout,
        }),
    }
}

/// Runs a lifecycle hook (preStop, postStart) once, for at most `budget` (for preStop what is
/// left of the grace period): Ok when it finished in time and succeeded. `sleep` runs in the
/// agent, not in the container.
pub async fn run_hook(
    hook: &LifecycleHandler,
    container: &Container,
    target: &Target,
    budget: Duration,
) -> Result<(), Failure> {
    if let Some(x) = &hook.exec {
        // The runtime kills the command when the budget runs out.
        return exec(x, target, budget).await;
    }
    if let Some(http) = &hook.http_get {
        let get = http_get(http, container, target, "skiff-lifecycle");
        return match tokio::time::timeout(budget, get).await {
            Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
            Ok(Ok(code)) => Err(Failure::HookStatus { code }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Failure::TimedOut { timeout: budget }),
        };
    }
    if let Some(sleep) = &hook.sleep {
        let wanted = Duration::from_secs(sleep.seconds.max(0) as u64);
        tokio::time::sleep(wanted.min(budget)).await;
        return if wanted <= budget {
            Ok(())
        } else {
            Err(Failure::SleepCut { wanted, budget })
        };
    }
    Err(Failure::NoHookHandler)
}

/// Runs the command in the target's container; Ok when it exits 0 within `timeout`.
async fn exec(x: &ExecAction, target: &Target, timeout: Duration) -> Result<(), Failure> {
    let code = target
        .runtime
        .exec(&target.container_id, &x.command, timeout)
        .await
        .map_err(|source| Failure::Exec {
            command: x.command.clone(),
            source: Box::new(source),
        })?;
    if code == 0 {
        Ok(())
    } else {
        Err(Failure::ExitCode {
            command: x.command.clone(),
            code,
        })
    }
}

/// One HTTP/1.0 GET (over TLS for `scheme: HTTPS`) from inside the pod's namespace; the
/// response's status code.
async fn http_get(
    http: &HttpGetAction,
    container: &Container,
    target: &Target,
    agent: &str,
) -> Result<u16, Failure> {
    let tls = match http.scheme.as_str() {
        "" | "HTTP" => false,
        "HTTPS" => true,
        other => {
            return Err(Failure::Scheme {
                scheme: other.to_owned(),
            });
        }
    };
    let port = resolve_port(&http.port, container)?;
    let ip = probe_host(&http.host, target.net.ip)?;
    let conn = connect(target, SocketAddrV4::new(ip, port)).await?;
    let path = if http.path.is_empty() {
        "/"
    } else {
        http.path.as_str()
    };
    let mut req = format!(
        "GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: {agent}/{}\r\nAccept: */*\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    for h in &http.http_headers {
        req.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    req.push_str("\r\n");
    if tls {
        status_code(wire::tls(conn, ip.into()).await?, &req).await
    } else {
        status_code(conn, &req).await
    }
}

/// Sends `request` and reads the status code of the answer.
async fn status_code(mut conn: impl Connection, request: &str) -> Result<u16, Failure> {
    conn.write_all(request.as_bytes())
        .await
        .map_err(|source| Failure::Send { source })?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = conn
            .read(&mut buf)
            .await
            .map_err(|source| Failure::Read { source })?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Failure::NotHttp {
            line: line.to_owned(),
        })
}

/// Consecutive results of one probe against its thresholds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counter {
    successes: u32,
    failures: u32,
}

impl Counter {
    /// Records a result; `Some(verdict)` when a threshold is reached and the verdict is
    /// (re)established, `None` while in between.
    pub fn record(&mut self, ok: bool, timing: &Timing) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes >= timing.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= timing.failure_threshold).then_some(false)
        }
    }

    pub fn reset(&mut self) {
        *self = Counter::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_need_consecutive_results() {
        let timing = Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 3,
        };
        let mut c = Counter::default();
        assert_eq!(c.record(true, &timing), None);
        assert_eq!(c.record(true, &timing), Some(true));
        assert_eq!(c.record(false, &timing), None);
        assert_eq!(c.record(false, &timing), None);
        assert_eq!(c.record(true, &timing), None);
        assert_eq!(c.record(false, &timing), None);
        assert_eq!(c.record(false, &timing), None);
        assert_eq!(c.record(false, &timing), Some(false));
    }

    #[test]
    fn defaults_and_named_ports() {
        let t = Timing::of(&Probe::default());
        assert_eq!(
            (
                t.period,
                t.timeout,
                t.success_threshold,
                t.failure_threshold
            ),
            (Duration::from_secs(10), Duration::from_secs(1), 1, 3)
        );
        let c = Container {
            ports: vec![skiff_api::kinds::ContainerPort {
                name: "http".into(),
                container_port: 8080,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c).ok(),
            Some(8080)
        );
        assert!(resolve_port(&IntOrString::String("web".into()), &c).is_err());
        assert!(resolve_port(&IntOrString::Int(70000), &c).is_err());
    }
}
