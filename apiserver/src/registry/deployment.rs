//! Deployments: own the ReplicaSets they roll out through (a delete cascades to them).

use skiff_api::{
    Kind, ResourceInfo,
    kinds::{Deployment, ReplicaSet},
};

use super::Strategy;

#[derive(Debug)]
pub(super) struct DeploymentStrategy;

impl Strategy for DeploymentStrategy {
    fn info(&self) -> &'static ResourceInfo {
        Deployment::INFO
    }

    fn dependents(&self) -> &'static [&'static ResourceInfo] {
        &[ReplicaSet::INFO]
    }
}
