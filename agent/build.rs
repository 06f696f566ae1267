//! Finds the eBPF object built by `cargo xtask build-ebpf` and hands its path to the crate.
//! Fails with instructions when it is missing or older than its sources.

use std::{
    env,
    path::{Path, PathBuf},
    time::SystemTime,
};

const OBJECT: &str = "bpfel-unknown-none/release/skiff-ebpf";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let ebpf_dir = manifest_dir.join("../ebpf");
    println!("cargo::rerun-if-env-changed=SKIFF_EBPF_OBJECT");
    println!("cargo::rerun-if-changed={}", ebpf_dir.display());

    let object = match env::var_os("SKIFF_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => match target_dir() {
            Some(t) => t.join(OBJECT),
            None => {
                println!("cargo::error=cannot locate the target directory from OUT_DIR");
                return;
            }
        },
    };
    println!("cargo::rerun-if-changed={}", object.display());
    let Some(built) = modified(&object) else {
        println!(
            "cargo::error=the eBPF object {} is missing: run `cargo xtask build-ebpf` first \
             (`cargo xtask test` and `cargo xtask demo` do it for you)",
            object.display()
        );
        return;
    };
    if let Some((newest, path)) = newest_source(&ebpf_dir)
        && newest > built
    {
        println!(
            "cargo::error=the eBPF object {} is older than {}: run `cargo xtask build-ebpf`",
            object.display(),
            path.display()
        );
        return;
    }
    println!("cargo::rustc-env=SKIFF_EBPF_OBJECT={}", object.display());
}

/// The target directory is the nearest ancestor of OUT_DIR that cargo tagged with CACHEDIR.TAG.
fn target_dir() -> Option<PathBuf> {
    let out = PathBuf::from(env::var_os("OUT_DIR")?);
    out.ancestors()
        .find(|p| p.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
}

fn modified(p: &Path) -> Option<SystemTime> {
    p.metadata().and_then(|m| m.modified()).ok()
}

/// The most recently modified `.rs` or `Cargo.toml` file of the eBPF crates.
fn newest_source(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = d.read_dir() else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if (p.extension().is_some_and(|x| x == "rs")
                || p.file_name().is_some_and(|n| n == "Cargo.toml"))
                && let Some(t) = modified(&p)
                && newest.as_ref().is_none_or(|(n, _)| t > *n)
            {
                newest = Some((t, p));
            }
        }
    }
    newest
}
