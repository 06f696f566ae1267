//! Skiff's network benchmark: the eBPF datapath against the direct path and kube-proxy-style
//! iptables and nftables rules, on one topology of network namespaces, with real load tools.

pub mod control;
pub mod ctpressure;
pub mod hollow;
pub mod kubeproxy;
pub mod load;
pub mod manifests;
pub mod meta;
pub mod model;
pub mod paths;
pub mod pods;
pub mod proxy;
pub mod pull;
pub mod report;
pub mod runner;
pub mod scale;
pub mod services;
