//! ConfigMaps: how many keys they hold.

use std::time::SystemTime;

use super::{AGE, Cell, Column, ColumnType, NAME, Print, age_cell, name_cell};
use crate::kinds::ConfigMap;

impl Print for ConfigMap {
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new(
            "Data",
            ColumnType::Integer,
            "The number of keys, in data and binaryData.",
        ),
        AGE,
    ];

    fn cells(&self, now: SystemTime) -> Vec<Cell> {
        vec![
            name_cell(&self.metadata),
            Cell::Integer(self.keys().count() as i64),
            age_cell(&self.metadata, now),
        ]
    }
}
