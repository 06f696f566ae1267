//! Namespaces: their phase.

use std::time::SystemTime;

use super::{AGE, Cell, Column, ColumnType, NAME, Print, age_cell, name_cell, or_unknown};
use crate::kinds::Namespace;

impl Print for Namespace {
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new(
            "Status",
            ColumnType::String,
            "The namespace's phase: Active, or Terminating while it is emptied.",
        ),
        AGE,
    ];

    fn cells(&self, now: SystemTime) -> Vec<Cell> {
        vec![
            name_cell(&self.metadata),
            or_unknown(&self.status.phase).into(),
            age_cell(&self.metadata, now),
        ]
    }
}
