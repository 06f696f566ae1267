//! Waiting for a condition in tests: polling with a deadline, and a node's Ready condition.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use skiff_api::{
    client::Client,
    kinds::{Node, condition},
};

/// Waits until node `name` reports Ready (its Node may not exist yet).
pub async fn wait_node_ready(admin: &Client, name: &str, timeout: Duration) -> Result<()> {
    eventually(timeout, &format!("{name} Ready"), || async move {
        let node: Node = match admin.get("", name).await {
            Ok(n) => n,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(condition(&node.status.conditions, "Ready")
            .is_some_and(|c| c.status == "True")
            .then_some(()))
    })
    .await
}

/// Waits until `check` returns `Ok(Some(v))`, polling every 100 ms; fails with the last
/// reason after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "not yet".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
