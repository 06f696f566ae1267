//! Entering network namespaces (a node's, a pod's or a test's) by their bind-mounted path.

use std::{fs::File, io, os::fd::AsFd, path::Path, thread};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// Moves the calling thread into the network namespace bound at `path` (for example
/// `/run/netns/NAME`). Unlike `ip netns exec`, this leaves the mount namespace alone, so
/// `/sys/fs/bpf` stays visible.
pub fn enter(path: &Path) -> io::Result<()> {
    let ns = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network)).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("entering {}: {e}", path.display()),
        )
    })
}

/// Runs `f` on a new thread inside the network namespace at `path` and returns its result; the
/// calling thread's namespace is untouched.
pub fn run_in<T: Send, F: FnOnce() -> T + Send>(path: &Path, f: F) -> io::Result<T> {
    thread::scope(|s| {
        s.spawn(|| {
            enter(path)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("thread inside the namespace panicked")))
    })
}
