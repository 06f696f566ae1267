//! `skiff-local down`: stops every process the cluster runs and removes everything it made, in
//! an order that leaves nothing busy: node agents (so nothing restarts pods), the scheduler and
//! controller-manager, the pods' containers, containerd and its shims, the API server, etcd;
//! then mounts, network namespaces, runc state, cgroups, pins, and the cluster's files.
//!
//! It works from the state file and from names alone, so it also cleans up after a partial
//! `up` or crashed processes, and it is idempotent. Processes are signalled only while they are
//! still the recorded ones (pid, start time and command line).

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, bail};

use crate::{
    Progress,
    layout::{BPF_PIN_ROOT, Layout, NETNS_DIR, RUN_SKIFF, RUNC_ROOT},
    net,
    process::{self, ProcInfo, all_processes, is_alive, kill_now, pid_reused},
    state::{ProcessRecord, State},
    sys,
    up::{SKIFF_BINARIES, remove_created_dirs},
};

/// What `down` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// There was no cluster of that name (no state file and nothing named for it).
    NothingToDo,
    /// The cluster was removed; nothing of it is left.
    Removed,
}

/// Takes the cluster in `layout` down. Fails, naming them, if anything is left afterwards.
pub fn down(layout: &Layout, grace: Duration, progress: &Progress) -> Result<Outcome> {
    let state = State::load(layout)?;
    if state.is_none() && leftovers(layout, None).is_empty() {
        return Ok(Outcome::NothingToDo);
    }
    if state.is_none() {
        progress.step(format!(
            "no state file in {}; removing what is named for the cluster {:?}",
            layout.dir().display(),
            layout.name()
        ));
    }
    teardown(layout, state.as_ref(), grace, progress)?;
    Ok(Outcome::Removed)
}

/// Everything of the cluster that still exists: live recorded processes, shims, containers,
/// mounts, network namespaces (by name, and by inode while a process or mount holds one), runc
/// state, cgroups, pins, locks, shim sockets and files. Empty after a successful `down`.
pub fn leftovers(layout: &Layout, state: Option<&State>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = state {
        for p in &s.processes {
            if is_alive(p) {
                out.push(format!("process {} (pid {})", p.name, p.pid));
            }
        }
    }
    for p in stray_processes(layout, state) {
        out.push(format!("process {} (pid {})", p.argv.join(" "), p.pid));
    }
    for p in sys::shim_processes(layout) {
        out.push(format!("containerd shim (pid {})", p.pid));
    }
    for p in sys::cgroup_processes(layout) {
        if !p.is_zombie() {
            out.push(format!(
                "container process {} (pid {})",
                p.argv.join(" "),
                p.pid
            ));
        }
    }
    for m in sys::mounts_under(layout.dir()) {
        out.push(format!("mount {}", m.display()));
    }
    for ns in net::netns_with_prefix(&layout.object_prefix()) {
        out.push(format!("network namespace {ns} ({NETNS_DIR}/{ns})"));
    }
    for d in sys::cgroup_dirs(layout) {
        out.push(format!("cgroup {}", d.display()));
    }
    for p in named_entries(layout) {
        out.push(format!("{}", p.display()));
    }
    for p in sys::shim_sockets_of_tasks(layout) {
        if p.exists() {
            out.push(format!("shim socket {}", p.display()));
        }
    }
    for p in own_paths(layout) {
        if p.exists() {
            out.push(format!("file {}", p.display()));
        }
    }
    if let Some(s) = state {
        for d in &s.created_dirs {
            if fs::read_dir(d).is_ok_and(|mut e| e.next().is_none()) {
                out.push(format!("directory {}", d.display()));
            }
        }
    }
    out
}

/// Processes of the cluster that the state file does not list (an `up` interrupted between
/// starting one and recording it): a Skiff, etcd or containerd binary whose command line names
/// a path in the cluster's directory.
fn stray_processes(layout: &Layout, state: Option<&State>) -> Vec<ProcInfo> {
    let dir = format!("{}/", layout.dir().display());
    let ours = |p: &ProcInfo| {
        p.argv.first().is_some_and(|a| {
            let base = Path::new(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            base == "etcd"
                || base == "containerd"
                || base == skiff_testbed::registry::PROGRAM
                || SKIFF_BINARIES.contains(&base.as_str())
        }) && p.argv.iter().any(|a| {
            a.starts_with(&dir)
                || a.strip_prefix("unix://")
                    .is_some_and(|x| x.starts_with(&dir))
        })
    };
    all_processes()
        .into_iter()
        .filter(|p| !p.is_zombie() && ours(p))
        .filter(|p| {
            !state.is_some_and(|s| {
                s.processes
                    .iter()
                    .any(|r| r.pid == p.pid && r.start_time == p.start_time)
            })
        })
        .collect()
}

/// Removes everything of the cluster (see the module's description). Every step is tried even
/// when an earlier one failed; the error lists what failed and what is left.
pub fn teardown(
    layout: &Layout,
    state: Option<&State>,
    grace: Duration,
    progress: &Progress,
) -> Result<()> {
    // Everything named for the cluster is this cluster's once it holds its name (its fabric
    // namespace; see `up`). An `up` that failed before that removes only what it recorded,
    // so that it never touches another cluster of the same name.
    let claimed = state.is_none_or(|s| s.netns.iter().any(|n| n.name == layout.fabric_netns()));
    let mut failures: Vec<String> = Vec::new();
    let mut check = |what: &str, r: Result<()>| {
        if let Err(e) = r {
            progress.step(format!("{what}: {e:#}"));
            failures.push(format!("{what}: {e:#}"));
        }
    };

    // Processes, grouped by role. Unrecorded ones join the group of their binary.
    let mut records: Vec<ProcessRecord> = state.map(|s| s.processes.clone()).unwrap_or_default();
    let strays = if claimed {
        stray_processes(layout, state)
    } else {
        Vec::new()
    };
    for p in strays {
        progress.step(format!(
            "found an unrecorded process of the cluster: pid {} {}",
            p.pid,
            p.argv.join(" ")
        ));
        records.push(ProcessRecord {
            name: stray_role(&p),
            pid: p.pid,
            start_time: p.start_time,
            argv: p.argv.clone(),
            log: Default::default(),
        });
    }
    for r in &records {
        if !is_alive(r) {
            let why = if pid_reused(r) {
                format!(
                    "{} is not running; its pid {} belongs to another process now, which is left alone",
                    r.name, r.pid
                )
            } else {
                format!("{} (pid {}) is not running", r.name, r.pid)
            };
            progress.step(why);
        }
    }
    let group = |f: &dyn Fn(&str) -> bool| -> Vec<&ProcessRecord> {
        records.iter().filter(|r| f(&r.name)).collect()
    };
    let stop = |what: &str, group: Vec<&ProcessRecord>, progress: &Progress| -> Result<()> {
        let live: Vec<&ProcessRecord> = group.into_iter().filter(|r| is_alive(r)).collect();
        if live.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = live.iter().map(|r| r.name.as_str()).collect();
        progress.step(format!("stopping {what}: {}", names.join(", ")));
        let killed = process::stop(&live, grace)?;
        if !killed.is_empty() {
            progress.step(format!(
                "{} did not stop within {grace:?} of SIGTERM: killed",
                killed.join(", ")
            ));
        }
        Ok(())
    };

    check(
        "stopping the node agents",
        stop("node agents", group(&|n| n.starts_with("agent-")), progress),
    );
    check(
        "stopping the registry",
        stop("registry", group(&|n| n == "registry"), progress),
    );
    check(
        "stopping the scheduler and controller-manager",
        stop(
            "controllers",
            group(&|n| n == "scheduler" || n == "controller-manager"),
            progress,
        ),
    );
    if claimed {
        check("stopping the containers", kill_containers(layout, progress));
    }
    check(
        "stopping containerd",
        stop("containerd", group(&|n| n == "containerd"), progress),
    );
    if claimed {
        check("stopping the shims", kill_shims(layout, progress));
    }
    check(
        "stopping the API server",
        stop("apiserver", group(&|n| n == "apiserver"), progress),
    );
    check(
        "stopping etcd",
        stop("etcd", group(&|n| n == "etcd"), progress),
    );

    // Processes still inside the cluster's network namespaces would keep them (and their
    // links) alive after their names and mounts are gone: look while the names and mounts
    // still say which namespaces are the cluster's (inodes are reused afterwards).
    let mut inodes: Vec<(String, u64)> = net::netns_mounts_under(layout.dir())
        .into_iter()
        .map(|(p, i)| (format!("pod namespace {}", p.display()), i))
        .collect();
    for n in state.map(|s| s.netns.as_slice()).unwrap_or_default() {
        if net::netns_inode(&n.name) == Some(n.inode) {
            inodes.push((format!("network namespace {}", n.name), n.inode));
        }
    }
    let all: Vec<u64> = inodes.iter().map(|(_, i)| *i).collect();
    for (inode, proc) in net::netns_processes(&all) {
        let what = inodes
            .iter()
            .find(|(_, i)| *i == inode)
            .map(|(w, _)| w.as_str())
            .unwrap_or("a namespace");
        check(
            "checking the namespaces",
            Err(anyhow::anyhow!("{what} still holds process {proc}")),
        );
    }

    check("unmounting", {
        let mounts = sys::mounts_under(layout.dir());
        if !mounts.is_empty() {
            progress.step(format!(
                "unmounting {} mount(s) under {}",
                mounts.len(),
                layout.dir().display()
            ));
        }
        sys::unmount_under(layout.dir())
    });

    // Network namespaces: the recorded ones (while the name is still bound to the namespace
    // `up` made) and any named for the cluster.
    let mut names: Vec<String> = Vec::new();
    for n in state.map(|s| s.netns.as_slice()).unwrap_or_default() {
        match net::netns_inode(&n.name) {
            Some(i) if i == n.inode => names.push(n.name.clone()),
            Some(_) if !claimed => progress.step(format!(
                "{} is not the namespace this up made: left alone",
                n.name
            )),
            _ => {}
        }
    }
    if claimed {
        for n in net::netns_with_prefix(&layout.object_prefix()) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    // Nodes first, the fabric (recorded first) last.
    names.reverse();
    for n in &names {
        if net::netns_path(n).exists() {
            progress.step(format!("deleting network namespace {n}"));
            check(
                &format!("deleting network namespace {n}"),
                net::delete_netns(n),
            );
        }
    }

    if claimed {
        for p in named_entries(layout) {
            progress.step(format!("removing {}", p.display()));
            check(&format!("removing {}", p.display()), sys::remove_path(&p));
        }
        if !sys::cgroup_dirs(layout).is_empty() {
            progress.step(format!("removing cgroups {}", layout.cgroup_parent()));
        }
        check("removing cgroups", sys::remove_cgroups(layout));
    }

    // Files: what `up` makes in the directory, the state file last; then the directories `up`
    // created, when empty.
    if layout.dir().exists() {
        progress.step(format!(
            "removing the cluster's files in {}",
            layout.dir().display()
        ));
        check("removing files", remove_files(layout, state, progress));
    }

    let left = if claimed {
        leftovers(layout, state)
    } else {
        // Only what this `up` recorded (the rest belongs to whoever holds the name).
        own_paths(layout)
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| format!("file {}", p.display()))
            .collect()
    };
    if !left.is_empty() {
        failures.push(format!("left behind: {}", left.join("; ")));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// Entries outside the cluster's directory named for it: runc's state of its containerd
/// namespaces, its agents' bpffs pins and datapath locks.
fn named_entries(layout: &Layout) -> Vec<PathBuf> {
    let prefix = layout.object_prefix();
    let mut v = sys::entries_with_prefix(Path::new(RUNC_ROOT), &prefix);
    v.extend(sys::entries_with_prefix(Path::new(BPF_PIN_ROOT), &prefix));
    v.extend(sys::entries_with_prefix(
        Path::new(RUN_SKIFF),
        &format!("datapath-{prefix}"),
    ));
    v
}

fn stray_role(p: &ProcInfo) -> String {
    let base = p
        .argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match base.as_str() {
        "skiff-agent" => format!("agent-unrecorded-{}", p.pid),
        "skiff-scheduler" => "scheduler".into(),
        "skiff-controller-manager" => "controller-manager".into(),
        "skiff-apiserver" => "apiserver".into(),
        skiff_testbed::registry::PROGRAM => "registry".into(),
        other => other.to_owned(),
    }
}

/// Kills the pods' containers: every process in the cluster's cgroups and every child of its
/// containerd's shims. They get SIGKILL at once: the whole cluster is going, and busybox as a
/// container's init ignores SIGTERM anyway.
fn kill_containers(layout: &Layout, progress: &Progress) -> Result<()> {
    let shims = sys::shim_processes(layout);
    let mut victims = sys::cgroup_processes(layout);
    for c in sys::children_of(&shims) {
        if !victims.iter().any(|v| v.pid == c.pid) {
            victims.push(c);
        }
    }
    victims.retain(|v| !v.is_zombie());
    if victims.is_empty() {
        return Ok(());
    }
    progress.step(format!("killing {} container process(es)", victims.len()));
    kill_now(&victims)
}

/// Kills the shims of the cluster's containerd (they outlive it) and removes their sockets.
fn kill_shims(layout: &Layout, progress: &Progress) -> Result<()> {
    let shims = sys::shim_processes(layout);
    let mut sockets: Vec<_> = shims
        .iter()
        .flat_map(|s| sys::shim_sockets_of(s.pid))
        .collect();
    sockets.extend(sys::shim_sockets_of_tasks(layout));
    sockets.sort();
    sockets.dedup();
    if !shims.is_empty() {
        progress.step(format!("stopping {} containerd shim(s)", shims.len()));
    }
    let result = kill_now(&shims);
    for s in sockets {
        sys::remove_path(&s)?;
    }
    result
}

/// The files and directories `up` makes in the cluster's directory, the state file last. The
/// image directory is always the cluster's own (`up` only uses an empty directory; a given
/// `--image-dir` is never in it).
fn own_paths(layout: &Layout) -> Vec<PathBuf> {
    vec![
        layout.nodes_dir(),
        layout.containerd_dir(),
        layout.etcd_dir(),
        layout.apiserver_dir(),
        layout.tokens_dir(),
        layout.pki().dir,
        layout.api_socket(),
        layout.skiffctl_config(),
        layout.default_image_dir(),
        layout.registry_dir(),
        layout.logs_dir(),
        layout.state_file().with_extension("json.tmp"),
        layout.state_file(),
    ]
}

/// Removes the files `up` makes, then the directories `up` created if they are empty (anything
/// someone else put there stays).
fn remove_files(layout: &Layout, state: Option<&State>, progress: &Progress) -> Result<()> {
    let mut failures = Vec::new();
    for p in own_paths(layout) {
        if let Err(e) = sys::remove_path(&p) {
            failures.push(format!("{e:#}"));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    match state {
        Some(s) => remove_created_dirs(&s.created_dirs),
        None => {
            let _ = fs::remove_dir(layout.dir());
        }
    }
    if layout.dir().exists() {
        let left: Vec<String> = fs::read_dir(layout.dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !left.is_empty() {
            progress.step(format!(
                "{} stays: it holds files skiff-local did not make ({})",
                layout.dir().display(),
                left.join(", ")
            ));
        }
    }
    Ok(())
}
