//! Skiff's control plane: the API server over etcd (scheduler and controllers come next).

pub mod apiserver;
