//! Processes as /proc shows them: pid, parent, state, start time and command line, so that a
//! process can be recognised later (a recycled pid has another start time) and found by what
//! it runs.

use std::fs;

use rustix::process::{Pid, Signal, kill_process};

/// What /proc says about one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// The state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    pub start_time: u64,
    pub argv: Vec<String>,
}

impl ProcInfo {
    /// Reads `/proc/<pid>`; `None` when there is no such process (or it vanished meanwhile).
    pub fn read(pid: u32) -> Option<ProcInfo> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may itself hold spaces and parentheses.
        let after = stat.get(stat.rfind(')')? + 1..)?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let state = fields.first()?.chars().next()?;
        let ppid = fields.get(1)?.parse().ok()?;
        let start_time = fields.get(19)?.parse().ok()?;
        let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some(ProcInfo {
            pid,
            ppid,
            state,
            start_time,
            argv: split_cmdline(&raw),
        })
    }

    /// A zombie has ended; only its parent's wait is missing.
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

fn split_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Every process on the machine, as /proc shows it now.
pub fn all_processes() -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        ProcInfo::read(pid)
    })
    .collect()
}

/// Whether process `pid` exists and has not ended (is no zombie).
pub fn running(pid: u32) -> bool {
    ProcInfo::read(pid).is_some_and(|p| !p.is_zombie())
}

/// Sends `sig` to process `pid` (errors ignored: it may be gone already).
pub fn signal(pid: u32, sig: Signal) {
    if let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(p, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_splits_on_nul_and_drops_the_trailing_one() {
        assert_eq!(
            split_cmdline(b"etcd\0--name\0m 0\0"),
            vec!["etcd", "--name", "m 0"]
        );
        assert!(split_cmdline(b"").is_empty());
    }

    #[test]
    fn this_process_is_found_running() {
        let me = ProcInfo::read(std::process::id()).expect("this process");
        assert!(!me.is_zombie());
        assert!(running(me.pid));
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
    }
}
