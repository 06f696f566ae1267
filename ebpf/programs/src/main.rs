//! Skiff's service datapath: tc programs on the host side of each pod's veth.
//!
//! `skiff_from_pod` (TCX ingress: packets the pod sends) translates Service VIP:port to a backend
//! with conntrack; `skiff_to_pod` (TCX egress: packets about to enter the pod) translates replies
//! back so the client only ever sees the VIP.
//!
//! On other targets this crate is a stub, so host-side workspace commands (`cargo build
//! --workspace`, `cargo clippy --workspace`) pass over it; `cargo xtask build-ebpf` builds the
//! object and `cargo xtask lint` lints it for the BPF target.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target has no compare-and-swap, so core's atomic types offer no `fetch_or`; the
// intrinsic lowers to the BPF atomic OR instruction (kernel 5.12+), which needs none.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(internal_features, reason = "atomic OR on BPF")
)]

#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "skiff-ebpf is an eBPF object, not a host program: `cargo xtask build-ebpf` builds it"
    );
    std::process::exit(2);
}
