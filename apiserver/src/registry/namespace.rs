//! Namespaces: deleting one marks it Terminating (new contents are refused from then on),
//! empties it and then removes it; the system's own namespaces may not be deleted.

use skiff_api::{Kind, Object, ResourceInfo, kinds::Namespace, meta::time};

use super::{Deletion, Strategy};
use crate::{auth::NODE_LEASE_NAMESPACE, error::ApiError};

/// Namespaces the system itself uses; deleting them would break every node's heartbeat.
const PROTECTED: [&str; 3] = ["default", "skiff-system", NODE_LEASE_NAMESPACE];

const TERMINATING: &str = "Terminating";

#[derive(Debug)]
pub(super) struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    fn info(&self) -> &'static ResourceInfo {
        Namespace::INFO
    }

    fn check_delete(&self, o: &Object) -> Result<(), ApiError> {
        let name = &o.meta().name;
        if PROTECTED.contains(&name.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "namespace {name:?} is the system's and may not be deleted"
            )));
        }
        Ok(())
    }

    fn deletion(&self, _o: &Object, _requested_grace: Option<i64>) -> Deletion {
        Deletion::Contents
    }

    fn is_terminating(&self, o: &Object) -> bool {
        matches!(o, Object::Namespace(n) if n.status.phase == TERMINATING)
    }

    fn mark_terminating(&self, o: &mut Object) -> bool {
        let Object::Namespace(n) = o else {
            return false;
        };
        if n.status.phase == TERMINATING {
            return false;
        }
        n.status.phase = TERMINATING.into();
        n.metadata.deletion_timestamp = Some(time::now());
        true
    }
}

/// A new namespace named `name`, as the server creates its own at startup.
pub fn named(name: &str) -> Object {
    let mut ns = Namespace::default();
    ns.metadata.name = name.to_owned();
    ns.into_object()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_systems_namespaces_may_not_be_deleted_others_may() {
        for name in ["default", "skiff-system", NODE_LEASE_NAMESPACE] {
            let err = NamespaceStrategy.check_delete(&named(name));
            assert!(
                matches!(&err, Err(ApiError::BadRequest(m)) if m.contains("is the system's")),
                "{name}: {err:?}"
            );
        }
        assert!(NamespaceStrategy.check_delete(&named("web")).is_ok());
    }

    #[test]
    fn marking_a_namespace_terminating_happens_once_and_refuses_new_contents() {
        let mut ns = named("web");
        assert!(!NamespaceStrategy.is_terminating(&ns));
        assert!(NamespaceStrategy.mark_terminating(&mut ns));
        assert!(NamespaceStrategy.is_terminating(&ns));
        assert!(ns.meta().deletion_timestamp.is_some());
        assert!(!NamespaceStrategy.mark_terminating(&mut ns), "already");
        assert_eq!(
            NamespaceStrategy.deletion(&ns, Some(0)),
            Deletion::Contents,
            "whatever the grace period"
        );
    }
}
