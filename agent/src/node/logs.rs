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
        let not_here = || {
            format!(
                "pod {pod} has no containers on node {} (not started yet, or already removed)",
                self.ctx.node
            )
        };
        // The request names the pod; the files are found from the worker's checked identity
        // of it, never from the request's words.
        let (ids, info) = {
            let attempts = self
                .ctx
                .attempts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let known = attempts.get(&t.pod_uid).ok_or_else(not_here)?;
            if known.pod.namespace() != t.namespace || known.pod.name() != t.pod {
                return Err(not_here());
            }
            let info = known
                .containers
                .iter()
                .find(|a| a.container == t.container)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "container {} of pod {pod} is not known on this node",
                        t.container
                    )
                })?;
            (known.pod.clone(), info)
        };
        let paths = &self.ctx.paths;
        let path = |attempt: u32| paths.log_path(&ids, &info.container, attempt);
        let path = |attempt: u32| path(attempt).map_err(|e| e.to_string());
        // The newest attempt whose log exists: a container waiting for its restart has its next
        // attempt number already, but no log for it yet.
        let current = (0..=info.attempt)
            .rev()
            .find(|a| path(*a).is_ok_and(|p| p.exists()))
            .ok_or_else(|| format!("container {} of pod {pod} has not started yet", t.container))?;
        if t.previous {
            return match current.checked_sub(1) {
                Some(prev) if path(prev).is_ok_and(|p| p.exists()) => {
                    Ok(LogFile::finished(path(prev)?))
                }
                _ => Err(format!(
                    "previous terminated container \"{}\" in pod \"{}\" not found",
                    t.container, t.pod
                )),
            };
        }
        let ctx = self.ctx.clone();
        let (uid, container) = (t.pod_uid.clone(), t.container.clone());
        Ok(LogFile::new(path(current)?, move || {
            ctx.attempts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&uid)
                .and_then(|l| l.containers.iter().find(|a| a.container == container))
                .is_some_and(|a| a.running && a.attempt == current)
        }))
    }
}
