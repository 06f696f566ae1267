//! One module per command; this one holds what several share: where objects go (namespaces)
//! and how many fresh reads a write gets before giving up on conflicts.

pub mod apply;
pub mod create;
pub mod delete;
pub mod describe;
pub mod get;
pub mod logs;
pub mod misc;
pub mod rollout;
pub mod scale;

use skiff_api::{Object, ResourceInfo};

use crate::{
    Io,
    config::Settings,
    error::{Error, Result},
};

/// Read-modify-write attempts before a command gives up on conflicting writers.
pub const WRITE_ATTEMPTS: usize = 5;

/// The namespace commands work in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Where namespaced objects without a namespace go.
    pub namespace: String,
    /// Whether it was given with `-n`: manifests naming another namespace are then refused
    /// rather than silently sent elsewhere.
    pub enforce: bool,
}

impl Scope {
    pub fn new(settings: &Settings) -> Scope {
        Scope {
            namespace: settings.namespace.clone(),
            enforce: settings.namespace_from_flag,
        }
    }

    /// The namespace to address `info` objects in: none for cluster-scoped resources.
    pub fn for_resource(&self, info: &ResourceInfo) -> &str {
        if info.namespaced { &self.namespace } else { "" }
    }

    /// Puts a manifest's object in this scope's namespace, unless it names its own.
    pub fn place(&self, object: &mut Object) -> Result<()> {
        if !object.info().namespaced {
            return Ok(());
        }
        let meta = object.meta_mut();
        if meta.namespace.is_empty() {
            meta.namespace = self.namespace.clone();
        } else if self.enforce && meta.namespace != self.namespace {
            return Err(Error::NamespaceMismatch {
                object: meta.namespace.clone(),
                flag: self.namespace.clone(),
            });
        }
        Ok(())
    }
}

/// Ends a command that reported `failed` errors one by one.
pub(crate) fn finish(failed: usize) -> Result<()> {
    if failed == 0 {
        Ok(())
    } else {
        Err(Error::Reported { count: failed })
    }
}

/// Reports a per-object failure and counts it.
pub(crate) fn report(io: &mut Io<'_>, failed: &mut usize, e: Error) -> Result<()> {
    *failed += 1;
    io.report(&e)
}

#[cfg(test)]
mod tests {
    use skiff_api::{
        Kind, ObjectMeta,
        kinds::{Namespace, Pod},
    };

    use super::*;

    fn pod(ns: &str) -> Object {
        Pod {
            metadata: ObjectMeta {
                name: "p".into(),
                namespace: ns.into(),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
        .into_object()
    }

    #[test]
    fn objects_without_a_namespace_go_to_the_scope_and_others_keep_theirs() {
        let scope = Scope {
            namespace: "team".into(),
            enforce: false,
        };
        let mut o = pod("");
        scope.place(&mut o).expect("placed");
        assert_eq!(o.meta().namespace, "team");
        let mut o = pod("other");
        scope.place(&mut o).expect("placed");
        assert_eq!(o.meta().namespace, "other");

        let mut ns = Namespace {
            metadata: ObjectMeta {
                name: "n".into(),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
        .into_object();
        scope.place(&mut ns).expect("placed");
        assert_eq!(ns.meta().namespace, "");
    }

    #[test]
    fn a_namespace_given_with_the_flag_refuses_objects_naming_another() {
        let scope = Scope {
            namespace: "team".into(),
            enforce: true,
        };
        let err = scope.place(&mut pod("other")).expect_err("mismatch");
        assert!(err.to_string().contains("--namespace=other"), "{err}");
        scope
            .place(&mut pod("team"))
            .expect("same namespace is fine");
    }
}
