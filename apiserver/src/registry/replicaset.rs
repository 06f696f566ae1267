//! ReplicaSets: own the pods they keep running (a delete cascades to them).

use skiff_api::{
    Kind, ResourceInfo,
    kinds::{Pod, ReplicaSet},
};

use super::Strategy;

#[derive(Debug)]
pub(super) struct ReplicaSetStrategy;

impl Strategy for ReplicaSetStrategy {
    fn info(&self) -> &'static ResourceInfo {
        ReplicaSet::INFO
    }

    fn dependents(&self) -> &'static [&'static ResourceInfo] {
        &[Pod::INFO]
    }
}
