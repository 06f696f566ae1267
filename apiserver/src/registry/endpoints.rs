//! Endpoints: written by the Endpoints controller; nothing particular to them.

use skiff_api::{Kind, ResourceInfo, kinds::Endpoints};

use super::Strategy;

#[derive(Debug)]
pub(super) struct EndpointsStrategy;

impl Strategy for EndpointsStrategy {
    fn info(&self) -> &'static ResourceInfo {
        Endpoints::INFO
    }
}
