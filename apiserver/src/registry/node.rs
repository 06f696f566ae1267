//! Nodes: their agent reports the status as it registers, so a new Node keeps it.

use skiff_api::{Kind, Object, ResourceInfo, kinds::Node};

use super::Strategy;

#[derive(Debug)]
pub(super) struct NodeStrategy;

impl Strategy for NodeStrategy {
    fn info(&self) -> &'static ResourceInfo {
        Node::INFO
    }

    /// Unlike every other kind's, a new Node's status is kept: its agent reports it as it
    /// registers.
    fn prepare_for_create(&self, _o: &mut Object) {}
}
