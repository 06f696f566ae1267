use super::{Errors, NameRule, Validate, metadata};
use crate::{kinds::Namespace, object::FieldError};

impl Validate for Namespace {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Label, &mut e);
        // Deleting a namespace does what Kubernetes' own `kubernetes` finalizer stands for (its
        // contents go first); any other finalizer would be ignored, the namespace going without
        // waiting for whoever set it.
        for (i, f) in self.spec.finalizers.iter().enumerate() {
            let path = format!("spec.finalizers[{i}]");
            if f.is_empty() {
                e.required(path, "");
            } else if f != "kubernetes" {
                let why = "Skiff deletes a namespace once its contents are gone and waits for no other finalizer";
                e.unsupported(path, f, &["kubernetes"], &[(f, why)]);
            }
        }
        e.0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::validate::test_util::*;

    #[test]
    fn namespace_finalizers_other_than_kubernetes_are_refused() {
        let ns = |finalizers: Value| {
            check::<Namespace>(json!({
                "metadata": {"name": "team-a"},
                "spec": {"finalizers": finalizers}
            }))
        };
        assert_eq!(ns(json!(["kubernetes"])), Vec::<String>::new());
        assert_only(
            &ns(json!(["kubernetes", "example.com/backup"])),
            "spec.finalizers[1]: Unsupported value: \"example.com/backup\": supported values: \"kubernetes\"; Skiff deletes a namespace once its contents are gone and waits for no other finalizer",
        );
        assert_only(&ns(json!([""])), "spec.finalizers[0]: Required value");
    }
}
