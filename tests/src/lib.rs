//! Support for Skiff's privileged end-to-end tests and the datapath demo, on top of the test
//! bed (`skiff-testbed`: processes, namespaces, fabric, clean-up): clients and traffic from
//! inside pods, hand-made packets, the datapath loader as a process, containerd clients of a
//! test cluster's nodes, and local clusters (`skiff-local`) with their leftover checks.
//!
//! Safety rule (shared/DESIGN.md): all traffic starts inside namespaces the test bed made, none
//! of which has a route off the machine, and the node namespace blackholes the Service CIDR.

pub mod client;
pub mod load;
pub mod loader;
pub mod localcheck;
pub mod nodes;
pub mod rawpkt;
pub mod runtime_env;
