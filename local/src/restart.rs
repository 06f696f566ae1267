//! `skiff-local restart`: stops processes of a cluster that is up (SIGTERM, then SIGKILL after
//! the grace period) and starts them again with the command line they had, their output
//! appended to the same log. The state file then records the new processes, so `status` and
//! `down` follow them. Restarting agents is how a node agent upgrade looks: the datapath they
//! pinned keeps forwarding while they are gone.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    Progress,
    layout::Layout,
    process::{log_tail, spawn_detached, spawn_detached_in_netns, stop},
    ready,
    state::{Phase, ProcessRecord, State},
    up::runtime,
};

/// What `restart` accepts besides a process name: every node agent.
pub const ALL_AGENTS: &str = "agents";

/// The recorded processes `names` stands for, in the state's order; fails naming what is
/// unknown (and what is known) before anything is touched.
pub fn select<'a>(state: &'a State, names: &[String]) -> Result<Vec<&'a ProcessRecord>> {
    if names.is_empty() {
        bail!("name the processes to restart (or {ALL_AGENTS:?} for every node agent)");
    }
    let known: Vec<&str> = state.processes.iter().map(|p| p.name.as_str()).collect();
    let unknown: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| *n != ALL_AGENTS && !known.contains(n))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "no process {} in cluster {:?}; its processes: {}, or {ALL_AGENTS:?}",
            unknown.join(", "),
            state.name,
            known.join(", ")
        );
    }
    Ok(state
        .processes
        .iter()
        .filter(|p| {
            names
                .iter()
                .any(|n| *n == p.name || (n == ALL_AGENTS && p.name.starts_with("agent-")))
        })
        .collect())
}

/// Restarts the named processes: all are stopped first, then all are started, so that for a
/// moment none of them runs. Returns the new records once every one of them serves again
/// (within `ready_timeout`).
pub fn restart(
    layout: &Layout,
    names: &[String],
    grace: Duration,
    ready_timeout: Duration,
    progress: &Progress,
) -> Result<Vec<ProcessRecord>> {
    let mut state = State::load(layout)?.with_context(|| {
        format!(
            "no cluster named {:?} in {}",
            layout.name(),
            layout.dir().display()
        )
    })?;
    if state.phase != Phase::Up {
        bail!(
            "cluster {:?} is not up (its `up` did not finish): run `skiff-local down` and `up` again",
            layout.name()
        );
    }
    if !layout.pki().ca.cert.exists() {
        bail!(
            "cluster {:?} was made by an older skiff-local (etcd without TLS, no {}): take it down and up again",
            layout.name(),
            layout.pki().dir.display()
        );
    }
    let chosen: Vec<ProcessRecord> = select(&state, names)?.into_iter().cloned().collect();
    // Only processes that still match their record are signalled (`stop` checks); one that
    // died, or whose pid now belongs to another process, is simply started again.
    let records: Vec<&ProcessRecord> = chosen.iter().collect();
    let started = Instant::now();
    progress.step(format!(
        "stopping {}",
        chosen
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let killed = stop(&records, grace)?;
    if !killed.is_empty() {
        progress.step(format!(
            "{} did not stop within {} s of SIGTERM: killed",
            killed.join(", "),
            grace.as_secs()
        ));
    }
    let mut fresh = Vec::new();
    let mut waits = Vec::new();
    for old in &chosen {
        let (program, args) = old
            .argv
            .split_first()
            .with_context(|| format!("the state has no command line for {}", old.name))?;
        waits.push(Serving::of(&old.name, &old.log, &state));
        // The registry runs inside its own network namespace.
        let netns = match (&state.registry, old.name.as_str()) {
            (Some(r), "registry") => Some(crate::net::netns_path(&r.netns)),
            _ => None,
        };
        let s = match &netns {
            Some(ns) => spawn_detached_in_netns(&old.name, ns, program.as_ref(), args, &old.log)?,
            None => spawn_detached(&old.name, program.as_ref(), args, &old.log)?,
        };
        progress.step(format!(
            "{}: started again (pid {}, log {})",
            old.name,
            s.record.pid,
            old.log.display()
        ));
        let record = s.record.clone();
        s.detach();
        if let Some(r) = state.processes.iter_mut().find(|p| p.name == old.name) {
            *r = record.clone();
        }
        // Saved after each start, so that `down` finds every process started so far even if
        // a later start fails.
        state.save(layout)?;
        fresh.push(record);
    }
    wait_serving(layout, &state, &waits, ready_timeout, progress)?;
    progress.step(format!(
        "restarted {} process(es) in {:.1} s, every one serving",
        fresh.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(fresh)
}

/// What shows that a restarted process serves again, taken just before it was started.
#[derive(Debug)]
enum Serving {
    /// etcd answers a health check at its client URL.
    Etcd(String),
    Containerd,
    ApiServer(SocketAddr),
    /// The agent of this node renewed its Lease after `since`.
    Agent {
        node: String,
        since: SystemTime,
    },
    /// The component logged that it reached the API server, after this offset of its log.
    Component {
        log: PathBuf,
        offset: u64,
    },
    /// The registry answers `GET /v2/` inside its namespace.
    Registry(PathBuf),
}

impl Serving {
    fn of(name: &str, log: &Path, state: &State) -> (String, Option<Serving>) {
        let serving = match name {
            "etcd" => state.etcd_url.clone().map(Serving::Etcd),
            "containerd" => Some(Serving::Containerd),
            "registry" => state
                .registry
                .as_ref()
                .map(|r| Serving::Registry(crate::net::netns_path(&r.netns))),
            "apiserver" => state.api_addr.map(Serving::ApiServer),
            "scheduler" | "controller-manager" => Some(Serving::Component {
                log: log.to_owned(),
                offset: std::fs::metadata(log).map(|m| m.len()).unwrap_or(0),
            }),
            _ => name.strip_prefix("agent-").map(|node| Serving::Agent {
                node: node.to_owned(),
                since: SystemTime::now(),
            }),
        };
        (name.to_owned(), serving)
    }
}

/// Waits until every restarted process serves (in the order they were started, which is the
/// order they depend on each other), or fails naming the first that did not within `timeout`.
fn wait_serving(
    layout: &Layout,
    state: &State,
    waits: &[(String, Option<Serving>)],
    timeout: Duration,
    progress: &Progress,
) -> Result<()> {
    let rt = runtime()?;
    let started = Instant::now();
    let deadline = started + timeout;
    for (name, serving) in waits {
        let Some(serving) = serving else {
            progress.step(format!(
                "{name}: no way to tell when it serves; not waiting"
            ));
            continue;
        };
        let mut last_error = None;
        loop {
            let ok = match serving {
                Serving::Etcd(url) => ready::etcd_healthy(layout, url),
                Serving::Containerd => Ok(ready::containerd_serving(layout)),
                Serving::ApiServer(addr) => ready::api_answers(layout, *addr, &rt),
                Serving::Agent { node, since } => match state.api_addr {
                    Some(api) => ready::agent_renewed(layout, api, node, *since, &rt),
                    None => Ok(false),
                },
                Serving::Component { log, offset } => Ok(ready::component_connected(log, *offset)),
                Serving::Registry(netns) => Ok(skiff_testbed::registry::answers(netns)),
            };
            match ok {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => last_error = Some(e),
            }
            if let Some(p) = state.process(name)
                && !crate::process::is_alive(p)
            {
                bail!(
                    "{name} exited after its restart; the end of its log ({}):\n{}",
                    p.log.display(),
                    log_tail(&p.log, 15)
                );
            }
            if Instant::now() > deadline {
                let why = last_error.map(|e| format!(" ({e:#})")).unwrap_or_default();
                bail!(
                    "{name} did not serve within {timeout:?} of its restart{why}; its log: {}",
                    state
                        .process(name)
                        .map(|p| p.log.display().to_string())
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        progress.step(format!(
            "{name}: serving {:.1} s after the restart",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn record(name: &str) -> ProcessRecord {
        ProcessRecord {
            name: name.into(),
            pid: 1,
            start_time: 1,
            argv: vec![format!("/bin/{name}")],
            log: PathBuf::from(format!("/tmp/{name}.log")),
        }
    }

    fn state() -> State {
        let layout = Layout::new("t", Some(std::path::Path::new("/tmp/t"))).unwrap();
        let mut s = State::new(&layout, 2);
        s.processes = ["etcd", "apiserver", "agent-node-0", "agent-node-1"]
            .into_iter()
            .map(record)
            .collect();
        s
    }

    fn names(v: &[&ProcessRecord]) -> Vec<String> {
        v.iter().map(|p| p.name.clone()).collect()
    }

    #[test]
    fn agents_stands_for_every_node_agent_and_names_pick_single_processes() {
        let s = state();
        assert_eq!(
            names(&select(&s, &["agents".into()]).unwrap()),
            ["agent-node-0", "agent-node-1"]
        );
        assert_eq!(
            names(&select(&s, &["agent-node-1".into(), "apiserver".into()]).unwrap()),
            ["apiserver", "agent-node-1"]
        );
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_known_ones() {
        let s = state();
        let e = select(&s, &["agent-node-7".into(), "etcd".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no process agent-node-7"), "{e}");
        assert!(
            e.contains("etcd, apiserver, agent-node-0, agent-node-1"),
            "{e}"
        );
        assert!(select(&s, &[]).is_err());
    }
}
