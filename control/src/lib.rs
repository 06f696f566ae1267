//! Skiff's scheduler and controllers. They reach the cluster only through the API server's
//! client: this crate cannot see etcd.

pub mod controllers;
pub mod scheduler;
