//! List and watch filters: a label selector and a field selector, checked against the fields the
//! resource lets clients select on.

use skiff_api::{
    Object, ResourceInfo,
    object::selectable_fields,
    selector::{FieldSelector, Selector},
};

use super::error::{ApiError, Result};

/// A parsed list/watch filter.
#[derive(Debug, Clone)]
pub struct Filter {
    pub labels: Selector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn parse(info: &ResourceInfo, labels: &str, fields: &str) -> Result<Filter> {
        let labels = Selector::parse(labels).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let fields =
            FieldSelector::parse(fields).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let allowed = selectable_fields(info);
        for f in fields.fields() {
            if !allowed.contains(&f) {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {f:?} for {}: supported are {}",
                    info.plural,
                    allowed.join(", ")
                )));
            }
        }
        Ok(Filter { labels, fields })
    }

    /// Whether the filter lets everything through.
    pub fn is_everything(&self) -> bool {
        self.labels.is_everything() && self.fields.is_everything()
    }

    /// Matches every object.
    pub fn everything() -> Filter {
        Filter {
            labels: Selector::everything(),
            fields: FieldSelector::everything(),
        }
    }

    pub fn matches(&self, o: &Object) -> bool {
        self.labels.matches(&o.meta().labels) && self.fields.matches(|path| o.field(path))
    }
}
