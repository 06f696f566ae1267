//! When each process of a cluster serves: what `up` waits for after starting it, and what
//! `restart` waits for after starting it again.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use skiff_agent::node::heartbeat::LEASE_NAMESPACE;
use skiff_api::{client::Client, kinds::Lease, meta::time};
use skiff_testbed::{containerd, control::etcd_healthy as healthy};

use crate::{layout::Layout, up::admin_config};

/// etcd answers a health check over mutual TLS, with the API server's client certificate.
pub fn etcd_healthy(layout: &Layout, client_url: &str) -> Result<bool> {
    healthy(&layout.pki(), &[client_url.to_owned()])
        .context("running etcdctl (Debian package etcd-client)")
}

/// containerd accepts connections on its socket.
pub fn containerd_serving(layout: &Layout) -> bool {
    containerd::serving(&layout.containerd_socket())
}

/// The API server answers an authenticated call over TLS on `addr`.
pub fn api_answers(
    layout: &Layout,
    addr: SocketAddr,
    rt: &tokio::runtime::Runtime,
) -> Result<bool> {
    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        return Ok(false);
    }
    let admin = admin_config(layout, addr)?;
    // Bounded: whatever listens there may never answer.
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), async {
            let c = Client::connect(&admin).await?;
            c.who_am_i().await?;
            anyhow::Ok(true)
        })
        .await
        .unwrap_or(Ok(false))
    })
}

/// The agent of `node` serves: it renewed its node's Lease after `since` (an agent renews at
/// start, once registered with the API server and running its node).
pub fn agent_renewed(
    layout: &Layout,
    api: SocketAddr,
    node: &str,
    since: SystemTime,
    rt: &tokio::runtime::Runtime,
) -> Result<bool> {
    let admin = admin_config(layout, api)?;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), async {
            let c = Client::connect(&admin).await?;
            let lease: Lease = c.get(LEASE_NAMESPACE, node).await?;
            Ok(renewed_after(&lease, since))
        })
        .await
        .unwrap_or(Ok(false))
    })
}

fn renewed_after(lease: &Lease, since: SystemTime) -> bool {
    lease
        .spec
        .renew_time
        .as_deref()
        .and_then(time::parse)
        .is_some_and(|t| t >= since)
}

/// A scheduler or controller-manager serves once it has said, after `offset` in its log, that
/// it reached the API server with its identity.
pub fn component_connected(log: &std::path::Path, offset: u64) -> bool {
    std::fs::read(log).is_ok_and(|bytes| {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).contains(CONNECTED_LINE)
    })
}

/// What `skiff-scheduler` and `skiff-controller-manager` log once they reached the API server
/// and it knew them (`control::runtime::CommonArgs::connect`).
pub const CONNECTED_LINE: &str = "connected to the API server";

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(renew: Option<&str>) -> Lease {
        let mut l = Lease::default();
        l.spec.renew_time = renew.map(str::to_owned);
        l
    }

    #[test]
    fn an_agent_serves_only_once_it_renewed_after_its_restart() {
        let since = time::parse("2026-12-07T05:00:00.500000Z").unwrap();
        assert!(!renewed_after(&lease(None), since));
        assert!(!renewed_after(
            &lease(Some("2026-12-07T05:00:00.499999Z")),
            since
        ));
        assert!(renewed_after(
            &lease(Some("2026-12-07T05:00:00.500000Z")),
            since
        ));
        assert!(renewed_after(&lease(Some("2026-12-07T05:00:03Z")), since));
        assert!(!renewed_after(&lease(Some("not a time")), since));
    }

    #[test]
    fn a_component_serves_once_its_log_says_so_after_the_restart() {
        let dir = std::env::temp_dir().join(format!("skiff-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("scheduler.log");
        std::fs::write(&log, format!("old run: {CONNECTED_LINE} as controller\n")).unwrap();
        let offset = std::fs::metadata(&log).unwrap().len();
        assert!(component_connected(&log, 0));
        assert!(!component_connected(&log, offset));
        std::fs::write(
            &log,
            format!("old run: {CONNECTED_LINE} as controller\nnew run: {CONNECTED_LINE}\n"),
        )
        .unwrap();
        assert!(component_connected(&log, offset));
        assert!(!component_connected(&dir.join("missing.log"), 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
