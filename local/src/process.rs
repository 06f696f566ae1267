//! The cluster's processes: started detached (their own session through util-linux `setsid`,
//! stdin from /dev/null, stdout and stderr to a log file) so that they outlive `up`, and
//! recognised later by pid, start time and command line together, so that a recycled pid is
//! never signalled.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rustix::process::Signal;
use skiff_testbed::procfs::signal;
/// What /proc says about a process (the test bed's, which skiff-local shares).
pub use skiff_testbed::procfs::{ProcInfo, all_processes};
/// The first tool of that name on `PATH` (the test bed's lookup, which skiff-local shares).
pub use skiff_testbed::which;

use crate::state::ProcessRecord;

/// Environment variables the Skiff binaries read as defaults for their flags: the user's must
/// not leak into the cluster's processes.
const SKIFF_ENV: [&str; 5] = [
    "SKIFF_SERVER",
    "SKIFF_TOKEN",
    "SKIFF_TOKEN_FILE",
    "SKIFF_CONFIG",
    "SKIFF_NAMESPACE",
];

/// A process `up` started: its record and, while `up` runs, its handle (to notice an early exit
/// and to reap it).
#[derive(Debug)]
pub struct Started {
    pub record: ProcessRecord,
    child: Child,
}

impl Started {
    /// Whether it exited (and with what), without waiting.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown status ({e})")),
        }
    }

    /// Lets the process run on its own: a thread reaps it when it ends, so that a long-lived
    /// caller (a test calling the library) is not left with a zombie. When the caller exits
    /// first, the process is re-parented as usual.
    pub fn detach(self) {
        let mut child = self.child;
        thread::spawn(move || {
            let _ = child.wait();
        });
    }
}

/// Starts `program args` detached, in its own session, with stdout and stderr appended to
/// `log`, and waits until the kernel shows it running `program` (after `setsid` exec'd it).
pub fn spawn_detached(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Started> {
    spawn(name, None, program, args, log)
}

/// [`spawn_detached`] inside the network namespace at `netns`: `nsenter --net=<netns>` execs
/// the program in place, so the pid and the recorded command line are the program's.
pub fn spawn_detached_in_netns(
    name: &str,
    netns: &Path,
    program: &Path,
    args: &[String],
    log: &Path,
) -> Result<Started> {
    spawn(name, Some(netns), program, args, log)
}

fn spawn(
    name: &str,
    netns: Option<&Path>,
    program: &Path,
    args: &[String],
    log: &Path,
) -> Result<Started> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("creating the log {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("opening the log {}", log.display()))?;
    let mut cmd = Command::new("setsid");
    // `setsid` forks only when it leads its process group, which a child of ours never does:
    // it calls setsid(2) and execs the program in place, so the pid is the program's.
    if let Some(ns) = netns {
        cmd.arg("nsenter")
            .arg(format!("--net={}", ns.display()))
            .arg("--");
    }
    cmd.arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for v in SKIFF_ENV {
        cmd.env_remove(v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {name} ({})", program.display()))?;
    let pid = child.id();
    let mut argv = vec![program.display().to_string()];
    argv.extend(args.iter().cloned());
    let deadline = Instant::now() + Duration::from_secs(5);
    let start_time = loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "{name} exited at once ({status}); its log {}:\n{}",
                log.display(),
                log_tail(log, 20)
            );
        }
        if let Some(info) = ProcInfo::read(pid)
            && info.argv == argv
        {
            break info.start_time;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{name} (pid {pid}) did not start running {} within 5 s",
                program.display()
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(Started {
        record: ProcessRecord {
            name: name.to_owned(),
            pid,
            start_time,
            argv,
            log: log.to_path_buf(),
        },
        child,
    })
}

/// Whether the recorded process is still alive: same pid, same start time, same command line,
/// not a zombie.
pub fn is_alive(record: &ProcessRecord) -> bool {
    ProcInfo::read(record.pid).is_some_and(|p| matches_record(&p, record))
}

fn matches_record(p: &ProcInfo, record: &ProcessRecord) -> bool {
    !p.is_zombie() && p.start_time == record.start_time && p.argv == record.argv
}

/// Whether the recorded pid now belongs to another process (the recorded one ended and its pid
/// was reused): said so in `down`'s output, and left alone.
pub fn pid_reused(record: &ProcessRecord) -> bool {
    ProcInfo::read(record.pid).is_some_and(|p| !p.is_zombie() && !matches_record(&p, record))
}

/// Sends `sig` to the process if and only if it is still the recorded one.
fn signal_record(record: &ProcessRecord, sig: Signal) -> bool {
    if is_alive(record) {
        signal(record.pid, sig);
        true
    } else {
        false
    }
}

/// Stops the recorded processes: SIGTERM, then SIGKILL to those still running after `grace`.
/// Only processes that still match their record are signalled. Returns the names of those that
/// needed SIGKILL, and fails naming any still alive afterwards.
pub fn stop(records: &[&ProcessRecord], grace: Duration) -> Result<Vec<String>> {
    let targets: Vec<&ProcessRecord> = records
        .iter()
        .copied()
        .filter(|r| signal_record(r, Signal::TERM))
        .collect();
    let deadline = Instant::now() + grace;
    while targets.iter().any(|r| is_alive(r)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(25));
    }
    let killed: Vec<String> = targets
        .iter()
        .filter(|r| signal_record(r, Signal::KILL))
        .map(|r| r.name.clone())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while targets.iter().any(|r| is_alive(r)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(25));
    }
    let alive: Vec<String> = targets
        .iter()
        .filter(|r| is_alive(r))
        .map(|r| format!("{} (pid {})", r.name, r.pid))
        .collect();
    if !alive.is_empty() {
        bail!("still running after SIGKILL: {}", alive.join(", "));
    }
    Ok(killed)
}

/// SIGKILLs the given live processes (found in /proc just before, checked again by start time)
/// and waits up to 5 s until they are gone.
pub fn kill_now(procs: &[ProcInfo]) -> Result<()> {
    let still = |p: &ProcInfo| {
        ProcInfo::read(p.pid).is_some_and(|q| !q.is_zombie() && q.start_time == p.start_time)
    };
    for p in procs {
        if still(p) {
            signal(p.pid, Signal::KILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while procs.iter().any(still) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let alive: Vec<String> = procs
        .iter()
        .filter(|p| still(p))
        .map(|p| p.pid.to_string())
        .collect();
    if !alive.is_empty() {
        bail!(
            "processes still running after SIGKILL: {}",
            alive.join(", ")
        );
    }
    Ok(())
}

/// What a log says about why its process ended (for error messages): from the last line where
/// a Skiff binary reports its error (`Error: ...`, then its causes) when there is one, so a
/// backtrace after it does not bury it; else the last `lines` lines.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all
        .iter()
        .rposition(|l| l.starts_with("Error: "))
        .unwrap_or(all.len().saturating_sub(lines));
    let end = all[start..]
        .iter()
        .position(|l| l.starts_with("Stack backtrace:"))
        .map_or(all.len(), |i| start + i)
        .min(start + lines);
    all[start..end].join("\n")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_log_excerpt_starts_at_the_error_a_binary_reports() {
        let dir = std::env::temp_dir().join(format!("skiff-local-log-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("x.log");
        fs::write(&log, "a\nb\nError: listening on 127.0.0.1:1\n\nCaused by:\n    in use\nStack backtrace:\n  0: x\n").unwrap();
        let tail = log_tail(&log, 20);
        assert!(tail.starts_with("Error: listening"), "{tail}");
        assert!(
            tail.contains("in use") && !tail.contains("backtrace"),
            "{tail}"
        );
        fs::write(&log, "1\n2\n3\n").unwrap();
        assert_eq!(log_tail(&log, 2), "2\n3");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_process_is_found_and_a_changed_record_no_longer_matches() {
        let me = ProcInfo::read(std::process::id()).unwrap();
        assert!(!me.is_zombie());
        let record = ProcessRecord {
            name: "me".into(),
            pid: me.pid,
            start_time: me.start_time,
            argv: me.argv.clone(),
            log: PathBuf::new(),
        };
        assert!(is_alive(&record));
        assert!(!pid_reused(&record));
        let recycled = ProcessRecord {
            start_time: me.start_time + 1,
            ..record.clone()
        };
        assert!(!is_alive(&recycled));
        assert!(pid_reused(&recycled));
        let other_command = ProcessRecord {
            argv: vec!["something-else".into()],
            ..record
        };
        assert!(!is_alive(&other_command));
    }

    #[test]
    fn a_detached_process_is_recorded_with_its_own_command_line_and_stopped_by_sigterm() {
        let dir = std::env::temp_dir().join(format!("skiff-local-proc-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("sleep.log");
        let sleep = which("sleep").unwrap();
        let started = spawn_detached("sleep", &sleep, &["30".into()], &log).unwrap();
        let record = started.record.clone();
        assert_eq!(record.argv, vec![sleep.display().to_string(), "30".into()]);
        assert!(is_alive(&record));
        // Its own session: it leads it.
        let stat = fs::read_to_string(format!("/proc/{}/stat", record.pid)).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        let session: u32 = after.split_whitespace().nth(3).unwrap().parse().unwrap();
        assert_eq!(session, record.pid);
        started.detach();
        let killed = stop(&[&record], Duration::from_secs(5)).unwrap();
        assert!(killed.is_empty(), "sleep ignores no SIGTERM: {killed:?}");
        assert!(!is_alive(&record));
        fs::remove_dir_all(&dir).unwrap();
    }
}
