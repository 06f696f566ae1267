//! Leases: who holds them.

use std::time::SystemTime;

use super::{AGE, Cell, Column, ColumnType, NAME, Print, age_cell, name_cell, or_none};
use crate::kinds::Lease;

impl Print for Lease {
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new(
            "Holder",
            ColumnType::String,
            "The identity holding the lease.",
        ),
        AGE,
    ];

    fn cells(&self, now: SystemTime) -> Vec<Cell> {
        let holder = self.spec.holder_identity.as_deref().unwrap_or_default();
        vec![
            name_cell(&self.metadata),
            or_none(holder).into(),
            age_cell(&self.metadata, now),
        ]
    }
}
