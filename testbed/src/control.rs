//! The control plane of a test: etcd, API servers in front of it, and the scheduler or
//! controller-manager. Every process dies with the test (PDEATHSIG) and is killed and cleaned up
//! on drop.

mod apiserver;
mod component;
mod etcd;

pub use self::{
    apiserver::{ApiOptions, ApiServer, Encryption, IDENTITIES, aesgcm_config, random_key},
    component::{Component, ComponentOptions},
    etcd::{Etcd, EtcdMember, MemberConfig, etcd_available, etcdctl, healthy as etcd_healthy},
};
pub use crate::process::free_ports;
