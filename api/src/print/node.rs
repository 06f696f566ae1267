//! Nodes: readiness and cordon, the agent's version, and with `-o wide` what the node reports
//! about itself.

use std::time::SystemTime;

use super::{
    AGE, Cell, Column, ColumnType, NAME, NONE, Print, age_cell, name_cell, or_none, or_unknown,
};
use crate::kinds::{Node, condition};

impl Print for Node {
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new(
            "Status",
            ColumnType::String,
            "Ready, NotReady or Unknown from the Ready condition; SchedulingDisabled when cordoned.",
        ),
        AGE,
        Column::new(
            "Version",
            ColumnType::String,
            "The version of the node's agent.",
        ),
        Column::new(
            "Internal-IP",
            ColumnType::String,
            "The node's address inside the cluster.",
        )
        .wide(),
        Column::new(
            "OS-Image",
            ColumnType::String,
            "The operating system the node reports.",
        )
        .wide(),
        Column::new(
            "Kernel-Version",
            ColumnType::String,
            "The kernel version the node reports.",
        )
        .wide(),
        Column::new(
            "Container-Runtime",
            ColumnType::String,
            "The container runtime and its version.",
        )
        .wide(),
    ];

    fn cells(&self, now: SystemTime) -> Vec<Cell> {
        let info = &self.status.node_info;
        vec![
            name_cell(&self.metadata),
            status(self).into(),
            age_cell(&self.metadata, now),
            or_none(&info.kubelet_version).into(),
            internal_ip(self).into(),
            or_unknown(&info.os_image).into(),
            or_unknown(&info.kernel_version).into(),
            or_unknown(&info.container_runtime_version).into(),
        ]
    }
}

/// `Ready`, `NotReady` or `Unknown` from the Ready condition, plus `,SchedulingDisabled`.
pub fn status(n: &Node) -> String {
    let mut status = match condition(&n.status.conditions, "Ready") {
        Some(c) if c.status == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }
    .to_owned();
    if n.spec.unschedulable {
        status.push_str(",SchedulingDisabled");
    }
    status
}

/// The node's first InternalIP address, [`NONE`] without one.
fn internal_ip(n: &Node) -> String {
    n.status
        .addresses
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .map_or_else(|| NONE.to_owned(), |a| a.address.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::Condition;

    #[test]
    fn a_node_status_comes_from_its_ready_condition_and_cordon() {
        let mut n = Node::default();
        assert_eq!(status(&n), "Unknown");
        n.status.conditions.push(Condition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Condition::default()
        });
        assert_eq!(status(&n), "Ready");
        n.spec.unschedulable = true;
        assert_eq!(status(&n), "Ready,SchedulingDisabled");
        n.status.conditions[0].status = "Unknown".into();
        assert_eq!(status(&n), "NotReady,SchedulingDisabled");
        n.status.conditions.clear();
        assert_eq!(status(&n), "Unknown,SchedulingDisabled");
    }
}
