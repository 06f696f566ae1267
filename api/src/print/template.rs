//! The wide columns of the kinds that run pods from a template (Deployments, ReplicaSets).

use super::{Cell, Column, ColumnType, format::or_none, selector};
use crate::{kinds::PodTemplateSpec, selector::LabelSelector};

/// CONTAINERS, IMAGES and SELECTOR, shown with `-o wide`.
pub(super) const COLUMNS: [Column; 3] = [
    Column::new(
        "Containers",
        ColumnType::String,
        "Names of each container in the pod template.",
    )
    .wide(),
    Column::new(
        "Images",
        ColumnType::String,
        "Images of each container in the pod template.",
    )
    .wide(),
    Column::new(
        "Selector",
        ColumnType::String,
        "The label selector of the pods it manages.",
    )
    .wide(),
];

/// The cells of [`COLUMNS`].
pub(super) fn cells(template: &PodTemplateSpec, sel: &LabelSelector) -> [Cell; 3] {
    let cs = &template.spec.containers;
    let names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = cs.iter().map(|c| c.image.as_str()).collect();
    [
        or_none(&names.join(",")).into(),
        or_none(&images.join(",")).into(),
        selector(sel).into(),
    ]
}
