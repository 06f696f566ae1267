//! `skiff-local restart`: stops processes of a cluster that is up (SIGTERM, then SIGKILL after
//! the grace period) and starts them again with the command line they had, their output
//! appended to the same log. The state file then records the new processes, so `status` and
//! `down` follow them. Restarting agents is how a node agent upgrade looks: the datapath they
//! pinned keeps forwarding while they are gone.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::{
    Progress,
    layout::Layout,
    process::{spawn_detached, stop},
    state::{Phase, ProcessRecord, State},
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
/// moment none of them runs. Returns the new records.
pub fn restart(
    layout: &Layout,
    names: &[String],
    grace: Duration,
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
    for old in &chosen {
        let (program, args) = old
            .argv
            .split_first()
            .with_context(|| format!("the state has no command line for {}", old.name))?;
        let s = spawn_detached(&old.name, program.as_ref(), args, &old.log)?;
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
    progress.step(format!(
        "restarted {} process(es) in {:.1} s",
        fresh.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(fresh)
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
