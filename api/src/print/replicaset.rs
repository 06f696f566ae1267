//! ReplicaSets: desired, current and ready pods.

use std::time::SystemTime;

use super::{AGE, Cell, Column, ColumnType, NAME, Print, age_cell, name_cell, template};
use crate::kinds::ReplicaSet;

impl Print for ReplicaSet {
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new(
            "Desired",
            ColumnType::Integer,
            "The number of pods asked for.",
        ),
        Column::new(
            "Current",
            ColumnType::Integer,
            "The number of pods it runs.",
        ),
        Column::new(
            "Ready",
            ColumnType::Integer,
            "The number of its pods that are ready.",
        ),
        AGE,
        template::COLUMNS[0],
        template::COLUMNS[1],
        template::COLUMNS[2],
    ];

    fn cells(&self, now: SystemTime) -> Vec<Cell> {
        let mut cells = vec![
            name_cell(&self.metadata),
            self.spec.replicas.unwrap_or(1).into(),
            self.status.replicas.into(),
            self.status.ready_replicas.into(),
            age_cell(&self.metadata, now),
        ];
        cells.extend(template::cells(&self.spec.template, &self.spec.selector));
        cells
    }
}
