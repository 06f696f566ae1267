//! Leases: node heartbeats and leader election; nothing particular to them.

use skiff_api::{Kind, ResourceInfo, kinds::Lease};

use super::Strategy;

#[derive(Debug)]
pub(super) struct LeaseStrategy;

impl Strategy for LeaseStrategy {
    fn info(&self) -> &'static ResourceInfo {
        Lease::INFO
    }
}
