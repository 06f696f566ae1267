//! Secrets: their type and how many keys they hold (never what the keys hold).

use std::time::SystemTime;

use super::{AGE, Cell, Column, ColumnType, NAME, Print, age_cell, name_cell};
use crate::kinds::Secret;

impl Print for Secret {
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new("Type", ColumnType::String, "The type of the secret."),
        Column::new("Data", ColumnType::Integer, "The number of keys in data."),
        AGE,
    ];

    fn cells(&self, now: SystemTime) -> Vec<Cell> {
        vec![
            name_cell(&self.metadata),
            Cell::Text(self.type_.clone()),
            Cell::Integer(self.data.len() as i64),
            age_cell(&self.metadata, now),
        ]
    }
}
