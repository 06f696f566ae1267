//! Skiff's control plane: the API server over etcd, the scheduler and the controllers, which talk
//! to the cluster only through the API server.

pub mod apiserver;
pub mod controllers;
pub mod runtime;
pub mod scheduler;
