//! `v1` ConfigMap and Secret: configuration and credentials for pods, as keyed bags of text and
//! bytes.

use std::{collections::BTreeMap, fmt};

use base64::{
    Engine,
    alphabet::STANDARD,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::{defaults::Defaults, meta::ObjectMeta};

/// The most bytes a ConfigMap's or a Secret's data may hold in total (Kubernetes'
/// `MaxSecretSize`, which it applies to both).
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

/// The Secret type with no required keys, and the default.
pub const SECRET_TYPE_OPAQUE: &str = "Opaque";
/// A `~/.dockercfg` file under the key `.dockercfg`.
pub const SECRET_TYPE_DOCKERCFG: &str = "kubernetes.io/dockercfg";
/// A `~/.docker/config.json` file under the key `.dockerconfigjson`.
pub const SECRET_TYPE_DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// `username` and/or `password`.
pub const SECRET_TYPE_BASIC_AUTH: &str = "kubernetes.io/basic-auth";
/// `ssh-privatekey`.
pub const SECRET_TYPE_SSH_AUTH: &str = "kubernetes.io/ssh-auth";
/// `tls.crt` and `tls.key`.
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";
/// A ServiceAccount's token, filled in by Kubernetes' token controller.
pub const SECRET_TYPE_SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/service-account-token";
/// A bootstrap token for joining nodes.
pub const SECRET_TYPE_BOOTSTRAP_TOKEN: &str = "bootstrap.kubernetes.io/token";

/// The key of a `kubernetes.io/dockercfg` Secret.
pub const DOCKERCFG_KEY: &str = ".dockercfg";
/// The key of a `kubernetes.io/dockerconfigjson` Secret.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// The keys of a `kubernetes.io/basic-auth` Secret.
pub const BASIC_AUTH_USERNAME_KEY: &str = "username";
pub const BASIC_AUTH_PASSWORD_KEY: &str = "password";
/// The key of a `kubernetes.io/ssh-auth` Secret.
pub const SSH_AUTH_PRIVATE_KEY: &str = "ssh-privatekey";
/// The keys of a `kubernetes.io/tls` Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_PRIVATE_KEY_KEY: &str = "tls.key";

/// Configuration for pods: text under `data`, bytes under `binaryData`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConfigMap {
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, Bytes>,
    /// Once true, `data` and `binaryData` can never change (and neither can this).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl ConfigMap {
    /// Every key, of `data` and `binaryData`.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.data
            .keys()
            .chain(self.binary_data.keys())
            .map(String::as_str)
    }
}

/// Credentials for pods: bytes under `data`, of a `type` that says which keys it must have.
/// `Debug` shows the keys, never the values.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Secret {
    pub metadata: ObjectMeta,
    /// `Opaque` when left out; any string is accepted, the `kubernetes.io/` ones have required
    /// keys.
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, Bytes>,
    /// Write-only text, merged into `data` by the API server on create and update (winning over
    /// `data` for the same key); never stored nor returned.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    /// Once true, `data` can never change (and neither can this).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl Secret {
    /// Moves `stringData` into `data`, a key in both taking the `stringData` value, as the API
    /// server does before it validates and stores a Secret.
    pub fn merge_string_data(&mut self) {
        for (k, v) in std::mem::take(&mut self.string_data) {
            self.data.insert(k, Bytes(v.into_bytes()));
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type_", &self.type_)
            .field("data", &self.data)
            .field("string_data", &self.string_data.keys().collect::<Vec<_>>())
            .field("immutable", &self.immutable)
            .finish()
    }
}

impl Defaults for ConfigMap {
    fn apply_defaults(&mut self) {}
}

impl Defaults for Secret {
    fn apply_defaults(&mut self) {
        if self.type_.is_empty() {
            self.type_ = SECRET_TYPE_OPAQUE.to_owned();
        }
    }
}

/// Bytes, written in JSON and YAML as standard base64 with padding (Kubernetes' `[]byte`).
/// `Debug` shows only the length, so credentials do not end up in logs.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The standard base64 text of the bytes.
    pub fn to_base64(&self) -> String {
        BASE64.encode(&self.0)
    }

    /// Decodes standard base64 with padding; line breaks are skipped, as Go's decoder (and so
    /// Kubernetes) skips them.
    pub fn from_base64(text: &str) -> Result<Bytes, Base64Error> {
        let cleaned: Vec<u8> = text
            .bytes()
            .filter(|b| !matches!(b, b'\r' | b'\n'))
            .collect();
        BASE64.decode(&cleaned).map(Bytes).map_err(|e| {
            use base64::DecodeError as D;
            let offset = match e {
                D::InvalidByte(offset, _) | D::InvalidLastSymbol(offset, _) => offset,
                // The input ends where more was needed.
                D::InvalidLength(_) | D::InvalidPadding => cleaned.len(),
            };
            Base64Error { offset }
        })
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes(v)
    }
}

impl From<&str> for Bytes {
    fn from(s: &str) -> Bytes {
        Bytes(s.as_bytes().to_vec())
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// Text that is not standard base64: Go's wording, which Kubernetes passes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal base64 data at input byte {offset}")]
pub struct Base64Error {
    /// Where the decoder stopped, in the input without its line breaks.
    pub offset: usize,
}

/// Standard alphabet, padding required, stray bits after the last symbol accepted (Go's
/// `base64.StdEncoding`, which is what Kubernetes decodes `[]byte` fields with).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                Bytes::from_base64(v).map_err(E::custom)
            }
            // `null` is Go's nil slice: no bytes.
            fn visit_unit<E: de::Error>(self) -> Result<Bytes, E> {
                Ok(Bytes::default())
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn bytes_round_trip_as_padded_standard_base64() -> serde_json::Result<()> {
        let b = Bytes(vec![0xff, 0xfe, b'a']);
        assert_eq!(serde_json::to_value(&b)?, json!("//5h"));
        assert_eq!(serde_json::from_value::<Bytes>(json!("//5h"))?, b);
        assert_eq!(
            serde_json::from_value::<Bytes>(json!("aGk="))?,
            Bytes::from("hi")
        );
        assert_eq!(
            serde_json::from_value::<Bytes>(json!("aGVs\nbG8="))?,
            Bytes::from("hello"),
            "line breaks are skipped as Go does"
        );
        assert_eq!(
            serde_json::from_value::<Bytes>(json!(null))?,
            Bytes::default()
        );
        Ok(())
    }

    #[test]
    fn bad_base64_names_the_byte_where_decoding_stopped() {
        let err = |v: serde_json::Value| {
            serde_json::from_value::<Bytes>(v)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            err(json!("ab$d")),
            Err("illegal base64 data at input byte 2".into())
        );
        assert_eq!(
            err(json!("aGk")),
            Err("illegal base64 data at input byte 3".into()),
            "padding is required"
        );
        assert_eq!(
            err(json!("aGk_")),
            Err("illegal base64 data at input byte 3".into()),
            "the URL alphabet is not standard base64"
        );
        assert!(err(json!(3)).is_err());
    }

    #[test]
    fn a_manifest_with_bad_base64_is_refused_naming_the_key() {
        let err = crate::Object::from_json(
            br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"},"data":{"pw":"a$=="}}"#,
        )
        .map(|_| ())
        .map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err("data.pw: illegal base64 data at input byte 1".into())
        );
        let err = crate::Object::from_json(
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"binaryData":{"b":"eA"}}"#,
        )
        .map(|_| ())
        .map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err("binaryData.b: illegal base64 data at input byte 2".into())
        );
    }

    #[test]
    fn debug_never_shows_secret_bytes() {
        let s = Secret {
            data: [("password".into(), Bytes::from("hunter2"))].into(),
            string_data: [("token".into(), "s3cret".into())].into(),
            ..Secret::default()
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<7 bytes>"), "{shown}");
    }

    #[test]
    fn string_data_is_merged_into_data_and_wins_for_the_same_key() {
        let mut s = Secret {
            data: [
                ("user".into(), Bytes::from("old")),
                ("keep".into(), Bytes::from("k")),
            ]
            .into(),
            string_data: [("user".into(), "new".into()), ("extra".into(), "e".into())].into(),
            ..Secret::default()
        };
        s.merge_string_data();
        assert!(s.string_data.is_empty());
        assert_eq!(
            s.data,
            [
                ("extra".into(), Bytes::from("e")),
                ("keep".into(), Bytes::from("k")),
                ("user".into(), Bytes::from("new")),
            ]
            .into()
        );
    }

    #[test]
    fn a_secret_defaults_to_opaque_and_serializes_without_string_data() -> serde_json::Result<()> {
        let mut s: Secret = serde_json::from_value(json!({
            "metadata": {"name": "s"},
            "data": {"a": "YQ=="}
        }))?;
        s.apply_defaults();
        assert_eq!(s.type_, "Opaque");
        let v = serde_json::to_value(&s)?;
        assert_eq!(v["data"]["a"], "YQ==");
        assert!(v.get("stringData").is_none());
        Ok(())
    }
}
