//! Secrets: keys and size as ConfigMaps, the keys each `kubernetes.io/` type requires, and what
//! `immutable` freezes.

use super::{
    Errors, NameRule, Validate,
    configmap::{FROZEN, check_key, too_big},
    metadata,
};
use crate::{
    kinds::{
        BASIC_AUTH_PASSWORD_KEY, BASIC_AUTH_USERNAME_KEY, DOCKER_CONFIG_JSON_KEY, DOCKERCFG_KEY,
        MAX_DATA_BYTES, SECRET_TYPE_BASIC_AUTH, SECRET_TYPE_BOOTSTRAP_TOKEN,
        SECRET_TYPE_DOCKER_CONFIG_JSON, SECRET_TYPE_DOCKERCFG, SECRET_TYPE_SERVICE_ACCOUNT_TOKEN,
        SECRET_TYPE_SSH_AUTH, SECRET_TYPE_TLS, SSH_AUTH_PRIVATE_KEY, Secret, TLS_CERT_KEY,
        TLS_PRIVATE_KEY_KEY,
    },
    object::FieldError,
};

/// What an invalid JSON key shows instead of the Secret's value (Kubernetes' words).
const REDACTED: &str = "<secret contents redacted>";

impl Secret {
    /// The value of `key`, from `stringData` (which wins once merged) or `data`. The API server
    /// merges before it validates; a client validating first sees the same answer.
    fn value(&self, key: &str) -> Option<&[u8]> {
        self.string_data
            .get(key)
            .map(String::as_bytes)
            .or_else(|| self.data.get(key).map(|b| b.as_slice()))
    }
}

impl Validate for Secret {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        metadata(&self.metadata, NameRule::Subdomain, &mut e);
        let mut total = 0;
        for (k, v) in &self.data {
            check_key(&mut e, "data", k);
            if !self.string_data.contains_key(k) {
                total += v.len();
            }
        }
        for (k, v) in &self.string_data {
            check_key(&mut e, "stringData", k);
            total += v.len();
        }
        if total > MAX_DATA_BYTES {
            too_big(&mut e, "data");
        }
        type_keys(self, &mut e);
        e.0
    }

    fn update_rules(&self, old: &Secret) -> Vec<FieldError> {
        let mut e = Errors::default();
        e.immutable("type", &self.type_, &old.type_, &self.type_);
        if old.immutable == Some(true) {
            if self.immutable != Some(true) {
                e.forbidden("immutable", FROZEN);
            }
            let mut merged = self.clone();
            merged.merge_string_data();
            if merged.data != old.data {
                e.forbidden("data", FROZEN);
            }
        }
        e.0
    }
}

/// The keys a Secret's type requires, as Kubernetes checks them; a type it does not know is
/// opaque.
fn type_keys(s: &Secret, e: &mut Errors) {
    let required = |e: &mut Errors, key: &str| e.required(format!("data[{key}]"), "");
    match s.type_.as_str() {
        SECRET_TYPE_DOCKERCFG | SECRET_TYPE_DOCKER_CONFIG_JSON => {
            let key = if s.type_ == SECRET_TYPE_DOCKERCFG {
                DOCKERCFG_KEY
            } else {
                DOCKER_CONFIG_JSON_KEY
            };
            match s.value(key) {
                None => required(e, key),
                Some(v) => {
                    if let Err(err) =
                        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(v)
                    {
                        e.invalid(format!("data[{key}]"), REDACTED, err);
                    }
                }
            }
        }
        // Either may be empty, but one must be there.
        SECRET_TYPE_BASIC_AUTH
            if s.value(BASIC_AUTH_USERNAME_KEY).is_none()
                && s.value(BASIC_AUTH_PASSWORD_KEY).is_none() =>
        {
            required(e, BASIC_AUTH_USERNAME_KEY);
            required(e, BASIC_AUTH_PASSWORD_KEY);
        }
        SECRET_TYPE_SSH_AUTH if s.value(SSH_AUTH_PRIVATE_KEY).is_none_or(<[u8]>::is_empty) => {
            required(e, SSH_AUTH_PRIVATE_KEY);
        }
        SECRET_TYPE_TLS => {
            for key in [TLS_CERT_KEY, TLS_PRIVATE_KEY_KEY] {
                if s.value(key).is_none() {
                    required(e, key);
                }
            }
        }
        SECRET_TYPE_SERVICE_ACCOUNT_TOKEN => e.0.push(FieldError::new(
            "type",
            format!(
                "Unsupported value: {:?}: Skiff has no ServiceAccounts yet, so nothing would fill in or honour a service account token; use an Opaque Secret",
                s.type_
            ),
        )),
        SECRET_TYPE_BOOTSTRAP_TOKEN => e.0.push(FieldError::new(
            "type",
            format!(
                "Unsupported value: {:?}: Skiff nodes join with the tokens file of the API server, not bootstrap tokens; use an Opaque Secret",
                s.type_
            ),
        )),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::validate::test_util::*;

    fn secret(type_: &str, data: Value) -> Value {
        json!({"metadata": {"name": "creds", "namespace": "default"}, "type": type_, "data": data})
    }

    /// base64 of `s`.
    fn b64(s: &str) -> String {
        crate::kinds::Bytes::from(s).to_base64()
    }

    #[test]
    fn each_kubernetes_type_requires_its_keys() {
        let json_ok = b64(r#"{"auths":{}}"#);
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("Opaque", json!({}), vec![]),
            ("example.com/custom", json!({}), vec![]),
            (
                "kubernetes.io/dockerconfigjson",
                json!({}),
                vec!["data[.dockerconfigjson]: Required value"],
            ),
            (
                "kubernetes.io/dockerconfigjson",
                json!({".dockerconfigjson": json_ok}),
                vec![],
            ),
            (
                "kubernetes.io/dockercfg",
                json!({}),
                vec!["data[.dockercfg]: Required value"],
            ),
            (
                "kubernetes.io/basic-auth",
                json!({}),
                vec![
                    "data[username]: Required value",
                    "data[password]: Required value",
                ],
            ),
            ("kubernetes.io/basic-auth", json!({"password": ""}), vec![]),
            (
                "kubernetes.io/ssh-auth",
                json!({"ssh-privatekey": ""}),
                vec!["data[ssh-privatekey]: Required value"],
            ),
            (
                "kubernetes.io/tls",
                json!({"tls.crt": b64("c")}),
                vec!["data[tls.key]: Required value"],
            ),
            (
                "kubernetes.io/tls",
                json!({"tls.crt": b64("c"), "tls.key": b64("k")}),
                vec![],
            ),
        ];
        for (type_, data, want) in cases {
            assert_eq!(
                check::<Secret>(secret(type_, data.clone())),
                want,
                "{type_} {data}"
            );
        }
    }

    #[test]
    fn docker_config_must_be_a_json_object_and_its_value_is_never_shown() {
        let errors = check::<Secret>(secret(
            "kubernetes.io/dockerconfigjson",
            json!({".dockerconfigjson": b64("password=hunter2")}),
        ));
        assert_only(
            &errors,
            "data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\": ",
        );
        assert!(!errors[0].contains("hunter2"), "{errors:?}");
        assert_eq!(
            check::<Secret>(secret(
                "kubernetes.io/dockercfg",
                json!({".dockercfg": b64("[1]")})
            ))
            .len(),
            1,
            "a list is not a config"
        );
    }

    #[test]
    fn required_keys_may_come_from_string_data() {
        let mut v = secret("kubernetes.io/tls", json!({}));
        v["stringData"] = json!({"tls.crt": "c", "tls.key": "k"});
        assert_eq!(check::<Secret>(v), Vec::<String>::new());
    }

    #[test]
    fn service_account_and_bootstrap_token_secrets_are_refused_with_a_reason() {
        assert_only(
            &check::<Secret>(secret("kubernetes.io/service-account-token", json!({}))),
            "type: Unsupported value: \"kubernetes.io/service-account-token\": Skiff has no ServiceAccounts yet",
        );
        assert_only(
            &check::<Secret>(secret("bootstrap.kubernetes.io/token", json!({}))),
            "type: Unsupported value: \"bootstrap.kubernetes.io/token\": Skiff nodes join",
        );
    }

    #[test]
    fn secret_keys_and_total_size_are_checked() {
        assert_only(
            &check::<Secret>(secret("Opaque", json!({"a/b": "eA=="}))),
            "data[a/b]: Invalid value: \"a/b\": a valid config key must consist of alphanumeric characters",
        );
        let mut v = secret("Opaque", json!({}));
        v["stringData"] = json!({"..x": "y"});
        assert_only(
            &check::<Secret>(v),
            "stringData[..x]: Invalid value: \"..x\": must not start with '..'",
        );
        let big = crate::kinds::Bytes(vec![0; MAX_DATA_BYTES + 1]).to_base64();
        assert_only(
            &check::<Secret>(secret("Opaque", json!({"blob": big}))),
            "data: Too long: may not be more than 1048576 bytes",
        );
    }

    #[test]
    fn the_type_never_changes_and_an_immutable_secret_keeps_its_data() {
        let old = secret("Opaque", json!({"a": "eA=="}));
        assert_eq!(
            update_errors::<Secret>(
                secret("kubernetes.io/basic-auth", json!({"username": "eA=="})),
                old.clone()
            ),
            ["type: Invalid value: \"kubernetes.io/basic-auth\": field is immutable"]
        );
        let mut frozen = old.clone();
        frozen["immutable"] = json!(true);
        let mut changed = secret("Opaque", json!({"a": "eQ=="}));
        changed["immutable"] = json!(true);
        assert_eq!(
            update_errors::<Secret>(changed, frozen.clone()),
            ["data: Forbidden: field is immutable when `immutable` is set"]
        );
        let mut via_string_data = frozen.clone();
        via_string_data["stringData"] = json!({"b": "new"});
        assert_eq!(
            update_errors::<Secret>(via_string_data, frozen.clone()),
            ["data: Forbidden: field is immutable when `immutable` is set"]
        );
        assert_eq!(
            update_errors::<Secret>(old, frozen.clone()),
            ["immutable: Forbidden: field is immutable when `immutable` is set"]
        );
        let mut same = frozen.clone();
        same["metadata"]["annotations"] = json!({"note": "x"});
        assert_eq!(update_errors::<Secret>(same, frozen), Vec::<String>::new());
    }
}
