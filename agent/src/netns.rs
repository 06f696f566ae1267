//! Entering network namespaces (a node's or a pod's) by their bind-mounted path.

pub use skiff_netns::{enter, run_in};
