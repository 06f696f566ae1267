//! Deployments: ready of desired, then up-to-date and available pods.

use std::time::SystemTime;

use super::{AGE, Cell, Column, ColumnType, NAME, Print, age_cell, name_cell, template};
use crate::kinds::Deployment;

impl Print for Deployment {
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new(
            "Ready",
            ColumnType::String,
            "Ready pods, of the number asked for.",
        ),
        Column::new(
            "Up-to-date",
            ColumnType::Integer,
            "Pods of the current template.",
        ),
        Column::new(
            "Available",
            ColumnType::Integer,
            "Pods ready for at least minReadySeconds.",
        ),
        AGE,
        template::COLUMNS[0],
        template::COLUMNS[1],
        template::COLUMNS[2],
    ];

    fn cells(&self, now: SystemTime) -> Vec<Cell> {
        let st = &self.status;
        let mut cells = vec![
            name_cell(&self.metadata),
            ready(self).into(),
            st.updated_replicas.into(),
            st.available_replicas.into(),
            age_cell(&self.metadata, now),
        ];
        cells.extend(template::cells(&self.spec.template, &self.spec.selector));
        cells
    }
}

/// `2/3`: ready pods of those asked for.
fn ready(d: &Deployment) -> String {
    format!(
        "{}/{}",
        d.status.ready_replicas,
        d.spec.replicas.unwrap_or(1)
    )
}
