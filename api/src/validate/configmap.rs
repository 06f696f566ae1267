//! ConfigMaps: their keys, their size, and what `immutable` freezes; the key rule is shared with
//! Secrets.

use super::{Errors, NameRule, Validate, metadata};
use crate::{
    kinds::{ConfigMap, MAX_DATA_BYTES},
    object::FieldError,
};

/// Kubernetes' wording for a key that breaks the character rule.
const CONFIG_KEY_SYNTAX: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// What `immutable: true` forbids changing, in Kubernetes' words.
pub(super) const FROZEN: &str = "field is immutable when `immutable` is set";

/// Every problem with a ConfigMap or Secret key (Kubernetes' `IsConfigMapKey`): a file name a
/// volume can hold, so `[-._a-zA-Z0-9]+`, at most 253 characters, and not `.`, `..` or
/// anything starting with `..`.
pub fn config_key(key: &str) -> Vec<&'static str> {
    let mut problems = Vec::new();
    if key.len() > 253 {
        problems.push("must be no more than 253 characters");
    }
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    if !ok {
        problems.push(CONFIG_KEY_SYNTAX);
    }
    if key == "." {
        problems.push("must not be '.'");
    } else if key == ".." {
        problems.push("must not be '..'");
    } else if key.starts_with("..") {
        problems.push("must not start with '..'");
    }
    problems
}

/// Reports each problem of `key` under `bag[key]`.
pub(super) fn check_key(e: &mut Errors, bag: &str, key: &str) {
    for problem in config_key(key) {
        e.invalid(format!("{bag}[{key}]"), key, problem);
    }
}

/// The error for data over [`MAX_DATA_BYTES`], at `path`.
pub(super) fn too_big(e: &mut Errors, path: &str) {
    e.too_long(path, format!("may not be more than {MAX_DATA_BYTES} bytes"));
}

impl Validate for ConfigMap {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Subdomain, &mut e);
        let mut total = 0;
        for (k, v) in &self.data {
            check_key(&mut e, "data", k);
            if self.binary_data.contains_key(k) {
                e.invalid(
                    format!("data[{k}]"),
                    k,
                    "duplicate of key present in binaryData",
                );
            }
            total += v.len();
        }
        for (k, v) in &self.binary_data {
            check_key(&mut e, "binaryData", k);
            total += v.len();
        }
        if total > MAX_DATA_BYTES {
            // Kubernetes reports it on the empty path, which prints as `[]`.
            too_big(&mut e, "[]");
        }
        e.0
    }

    fn update_rules(&self, old: &ConfigMap) -> Vec<FieldError> {
        let mut e = Errors::default();
        if old.immutable == Some(true) {
            if self.immutable != Some(true) {
                e.forbidden("immutable", FROZEN);
            }
            if self.data != old.data {
                e.forbidden("data", FROZEN);
            }
            if self.binary_data != old.binary_data {
                e.forbidden("binaryData", FROZEN);
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

    fn cm(data: Value, binary: Value) -> Value {
        json!({"metadata": {"name": "app-config", "namespace": "default"}, "data": data, "binaryData": binary})
    }

    #[test]
    fn config_keys_follow_kubernetes_rules_with_its_messages() {
        let long = "a".repeat(254);
        let cases: &[(&str, &[&str])] = &[
            ("key.name", &[]),
            ("KEY_NAME", &[]),
            ("key-name", &[]),
            (".env", &[]),
            ("a..b", &[]),
            ("", &[CONFIG_KEY_SYNTAX]),
            ("a b", &[CONFIG_KEY_SYNTAX]),
            ("dir/file", &[CONFIG_KEY_SYNTAX]),
            (".", &["must not be '.'"]),
            ("..", &["must not be '..'"]),
            ("..data", &["must not start with '..'"]),
            (&long, &["must be no more than 253 characters"]),
        ];
        for (key, want) in cases {
            assert_eq!(config_key(key), *want, "{key:?}");
        }
        assert_eq!(config_key(&"a".repeat(253)), Vec::<&str>::new());
    }

    #[test]
    fn bad_keys_in_data_and_binary_data_are_reported_with_their_paths() {
        let errors = check::<ConfigMap>(cm(json!({"a b": "x"}), json!({"..x": "eA=="})));
        assert_eq!(
            errors,
            [
                "data[a b]: Invalid value: \"a b\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                "binaryData[..x]: Invalid value: \"..x\": must not start with '..'",
            ]
        );
    }

    #[test]
    fn a_key_in_both_data_and_binary_data_is_refused() {
        assert_only(
            &check::<ConfigMap>(cm(json!({"k": "v"}), json!({"k": "dg=="}))),
            "data[k]: Invalid value: \"k\": duplicate of key present in binaryData",
        );
    }

    #[test]
    fn data_over_one_mebibyte_in_total_is_too_long() {
        let half = "x".repeat(MAX_DATA_BYTES / 2);
        assert_eq!(
            check::<ConfigMap>(cm(json!({"a": half, "b": half}), json!({}))),
            Vec::<String>::new(),
            "exactly 1 MiB is fine"
        );
        assert_only(
            &check::<ConfigMap>(cm(json!({"a": half, "b": half}), json!({"c": "eA=="}))),
            "[]: Too long: may not be more than 1048576 bytes",
        );
    }

    #[test]
    fn an_immutable_config_map_keeps_its_data_and_stays_immutable() {
        let mut old = cm(json!({"k": "v"}), json!({}));
        old["immutable"] = json!(true);
        let mut changed = cm(json!({"k": "w"}), json!({"b": "eA=="}));
        changed["immutable"] = json!(true);
        assert_eq!(
            update_errors::<ConfigMap>(changed, old.clone()),
            [
                "data: Forbidden: field is immutable when `immutable` is set",
                "binaryData: Forbidden: field is immutable when `immutable` is set",
            ]
        );
        let unset = cm(json!({"k": "v"}), json!({}));
        assert_eq!(
            update_errors::<ConfigMap>(unset, old.clone()),
            ["immutable: Forbidden: field is immutable when `immutable` is set"]
        );
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"] = json!({"team": "a"});
        assert_eq!(
            update_errors::<ConfigMap>(relabelled, old),
            Vec::<String>::new(),
            "metadata may still change"
        );
        let mutable = cm(json!({"k": "v"}), json!({}));
        let mut frozen = cm(json!({"k": "w"}), json!({}));
        frozen["immutable"] = json!(true);
        assert_eq!(
            update_errors::<ConfigMap>(frozen, mutable),
            Vec::<String>::new(),
            "a mutable one may change its data as it becomes immutable"
        );
    }
}
