//! ConfigMaps: nothing particular to them (no status, nothing allocated, deleted at once).

use skiff_api::{Kind, ResourceInfo, kinds::ConfigMap};

use super::Strategy;

#[derive(Debug)]
pub(super) struct ConfigMapStrategy;

impl Strategy for ConfigMapStrategy {
    fn info(&self) -> &'static ResourceInfo {
        ConfigMap::INFO
    }
}
