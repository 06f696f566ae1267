//! Container logs for `skiffctl logs`: the agent answers log requests the API server sends
//! down the node's tunnel from the files the containers write.

use std::sync::{Arc, PoisonError};

use skiff_api::logs::{LogFile, LogSource, LogTarget};

use super::pods::Ctx;

/// The node's containers' logs, found from the attempts its pod workers publish.
#[derive(Debug)]
pub struct NodeLogs {
    pub ctx: Arc<Ctx>,
}

impl LogSource for NodeLogs {
    fn resolve(&self, t: &LogTarget) -> Result<LogFile, String> {
        let pod = format!("{}/{}", t.namespace, t.pod);
        let info = {
            let attempts = self
                .ctx
                .attempts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let list = attempts.get(&t.pod_uid).ok_or_else(|| {
                format!(
                    "pod {pod} has no containers on node {} (not started yet, or already removed)",
                    self.ctx.node
                )
            })?;
            list.iter()
                .find(|a| a.container == t.container)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "container {} of pod {pod} is not known on this node",
                        t.container
                    )
                })?
        };
        let path = |attempt: u32| {
            self.ctx
                .log_path(&t.namespace, &t.pod, &t.pod_uid, &t.container, attempt)
        };
        // The newest attempt whose log exists: a container waiting for its restart has its next
        // attempt number already, but no log for it yet.
        let current = (0..=info.attempt)
            .rev()
            .find(|a| path(*a).exists())
            .ok_or_else(|| format!("container {} of pod {pod} has not started yet", t.container))?;
        if t.previous {
            return match current.checked_sub(1) {
                Some(prev) if path(prev).exists() => Ok(LogFile::finished(path(prev))),
                _ => Err(format!(
                    "previous terminated container \"{}\" in pod \"{}\" not found",
                    t.container, t.pod
                )),
            };
        }
        let ctx = self.ctx.clone();
        let (uid, container) = (t.pod_uid.clone(), t.container.clone());
        Ok(LogFile::new(path(current), move || {
            ctx.attempts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&uid)
                .and_then(|l| l.iter().find(|a| a.container == container))
                .is_some_and(|a| a.running && a.attempt == current)
        }))
    }
}
