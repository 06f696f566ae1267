//! Skiff's node agent. For now: the eBPF service datapath (loading, attaching, programming
//! services, operator listing) and the standalone loader that serves a services file.

pub mod cli;
pub mod datapath;
pub mod ipam;
pub mod netns;
pub mod runtime;
pub mod podnet;
pub mod standalone;
