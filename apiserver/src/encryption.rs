//! Encryption at rest (`--encryption-provider-config`), as Kubernetes' API server does it: an
//! `EncryptionConfiguration` file names, per resource, an ordered list of providers. The first
//! provider encrypts every write; any provider in the list may read a value back, chosen by the
//! value's prefix. Skiff offers the `aesgcm` and `identity` providers.
//!
//! An `aesgcm` value is stored as `k8s:enc:aesgcm:v1:<key name>:`, a random 12-byte nonce, and
//! the AES-GCM ciphertext with its 16-byte tag, the layout Kubernetes uses; the etcd key is
//! authenticated with it, so a value copied under another key does not decrypt. A value read
//! with anything but the first provider's first key is *stale*: an update rewrites it even when
//! nothing else changed, which is how keys are rotated.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use base64::Engine as _;
use ring::{
    aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};
use serde::Deserialize;
use skiff_api::{FieldError, ResourceInfo, object::RESOURCES};

/// Every encrypted value starts with this (Kubernetes' providers share it).
const ENCRYPTED: &[u8] = b"k8s:enc:";
/// An `aesgcm` value's prefix, before the key name.
const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";
const API_VERSION: &str = "apiserver.config.k8s.io/v1";
const KIND: &str = "EncryptionConfiguration";

/// A configuration file that cannot be used; the API server does not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("error reading encryption provider configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encryption provider configuration file {} is empty", path.display())]
    Empty { path: PathBuf },
    #[error("error decoding encryption provider configuration file {}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("encryption provider configuration file {} is invalid: {}", path.display(), join(errors))]
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
}

fn join(errors: &[FieldError]) -> String {
    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
    all.join("; ")
}

/// Why a stored value could not be read or written through the providers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    #[error(
        "no matching prefix found: the value is not encrypted, and identity is not among the providers configured for {resource}"
    )]
    NotEncrypted { resource: String },
    #[error(
        "no matching key was found for the provided AES transformer: the value was encrypted with aesgcm key {name:?}, which is not configured for {resource}"
    )]
    UnknownKey { resource: String, name: String },
    #[error(
        "no matching prefix found: the value was written by the {provider} provider, which Skiff does not offer (only aesgcm and identity)"
    )]
    UnsupportedProvider { provider: String },
    #[error(
        "the value is encrypted ({provider}), but no encryption providers are configured for {resource}"
    )]
    NotConfigured { resource: String, provider: String },
    #[error(
        "aesgcm key {name:?} could not decrypt the value: it was altered, moved from another etcd key, or encrypted by another key of that name"
    )]
    Decrypt { name: String },
    #[error("encrypting with aesgcm key {name:?} failed")]
    Encrypt { name: String },
}

/// The providers of every resource the configuration names (none: everything is stored as it
/// is, as without `--encryption-provider-config`).
#[derive(Default, Clone)]
pub struct Encryption {
    resources: BTreeMap<&'static str, Arc<Providers>>,
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.resources.iter()).finish()
    }
}

/// One resource's ordered provider list.
pub struct Providers {
    list: Vec<Provider>,
}

impl fmt::Debug for Providers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key names only: never the key material.
        let names: Vec<String> = self
            .list
            .iter()
            .map(|p| match p {
                Provider::Identity => "identity".to_owned(),
                Provider::AesGcm(keys) => {
                    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
                    format!("aesgcm[{}]", names.join(","))
                }
            })
            .collect();
        f.debug_list().entries(names).finish()
    }
}

enum Provider {
    Identity,
    AesGcm(Vec<AesKey>),
}

struct AesKey {
    name: String,
    key: LessSafeKey,
}

/// A value read back: the plaintext, and whether it should be rewritten with the current write
/// provider (it was read with another provider or key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plain {
    pub value: Vec<u8>,
    pub stale: bool,
}

impl Encryption {
    /// Reads and checks a configuration file.
    pub fn from_file(path: &Path) -> Result<Encryption, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Encryption::parse(&text, path)
    }

    /// Checks a configuration (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Encryption, ConfigError> {
        if text.trim().is_empty() {
            return Err(ConfigError::Empty {
                path: path.to_owned(),
            });
        }
        let file: FileConfig = serde_path_to_error::deserialize(
            serde_norway::Deserializer::from_str(text),
        )
        .map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: if e.path().to_string() == "." {
                e.inner().to_string()
            } else {
                format!("{}: {}", e.path(), e.inner())
            },
        })?;
        let mut errors = Vec::new();
        let encryption = build(file, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                errors,
            });
        }
        Ok(encryption)
    }

    /// The providers of a resource (by its plural), if the configuration names it.
    pub fn providers(&self, plural: &str) -> Option<&Providers> {
        self.resources.get(plural).map(|p| &**p)
    }

    /// Whether any resource is encrypted.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// The value to store for `plaintext` under the etcd key `key` of `resource`.
    pub fn seal(
        &self,
        resource: &str,
        key: &[u8],
        plaintext: Vec<u8>,
    ) -> Result<Vec<u8>, TransformError> {
        match self.providers(resource) {
            Some(p) => p.seal(key, plaintext),
            None => Ok(plaintext),
        }
    }

    /// The plaintext of a value stored under the etcd key `key` of `resource`.
    pub fn open(&self, resource: &str, key: &[u8], stored: &[u8]) -> Result<Plain, TransformError> {
        match self.providers(resource) {
            Some(p) => p.open(resource, key, stored),
            None if stored.starts_with(ENCRYPTED) => Err(TransformError::NotConfigured {
                resource: resource.to_owned(),
                provider: provider_of(stored),
            }),
            None => Ok(Plain {
                value: stored.to_vec(),
                stale: false,
            }),
        }
    }
}

/// `aesgcm`, `aescbc`, ... from an encrypted value's prefix.
fn provider_of(stored: &[u8]) -> String {
    let rest = &stored[ENCRYPTED.len().min(stored.len())..];
    let end = rest.iter().position(|b| *b == b':').unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end.min(32)]).into_owned()
}

impl Providers {
    /// Encrypts with the first provider (its first key), or stores as is when that is identity.
    fn seal(&self, aad: &[u8], mut plaintext: Vec<u8>) -> Result<Vec<u8>, TransformError> {
        let Some(Provider::AesGcm(keys)) = self.list.first() else {
            return Ok(plaintext);
        };
        // `build` refuses an aesgcm provider without keys.
        let Some(k) = keys.first() else {
            return Ok(plaintext);
        };
        let failed = || TransformError::Encrypt {
            name: k.name.clone(),
        };
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| failed())?;
        k.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut plaintext,
            )
            .map_err(|_| failed())?;
        let mut out = Vec::with_capacity(
            AESGCM_PREFIX.len() + k.name.len() + 1 + NONCE_LEN + plaintext.len(),
        );
        out.extend_from_slice(AESGCM_PREFIX.as_bytes());
        out.extend_from_slice(k.name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&plaintext);
        Ok(out)
    }

    /// Decrypts with the key the value names, from any aesgcm provider in the list; reads a
    /// value without a prefix only if identity is in the list.
    fn open(&self, resource: &str, aad: &[u8], stored: &[u8]) -> Result<Plain, TransformError> {
        if let Some(rest) = stored.strip_prefix(AESGCM_PREFIX.as_bytes()) {
            let end = rest.iter().position(|b| *b == b':');
            let name = String::from_utf8_lossy(&rest[..end.unwrap_or(rest.len())]).into_owned();
            let found = self.list.iter().enumerate().find_map(|(i, p)| match p {
                Provider::AesGcm(keys) => keys
                    .iter()
                    .position(|k| k.name == name)
                    .map(|j| (i == 0 && j == 0, &keys[j])),
                Provider::Identity => None,
            });
            let (Some(end), Some((current, k))) = (end, found) else {
                return Err(TransformError::UnknownKey {
                    resource: resource.to_owned(),
                    name,
                });
            };
            let sealed = &rest[end + 1..];
            let failed = || TransformError::Decrypt { name: name.clone() };
            if sealed.len() < NONCE_LEN {
                return Err(failed());
            }
            let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| failed())?;
            let mut buf = ciphertext.to_vec();
            let len = k
                .key
                .open_in_place(nonce, Aad::from(aad), &mut buf)
                .map_err(|_| failed())?
                .len();
            buf.truncate(len);
            return Ok(Plain {
                value: buf,
                stale: !current,
            });
        }
        if stored.starts_with(ENCRYPTED) {
            return Err(TransformError::UnsupportedProvider {
                provider: provider_of(stored),
            });
        }
        match self
            .list
            .iter()
            .position(|p| matches!(p, Provider::Identity))
        {
            Some(i) => Ok(Plain {
                value: stored.to_vec(),
                stale: i != 0,
            }),
            None => Err(TransformError::NotEncrypted {
                resource: resource.to_owned(),
            }),
        }
    }
}

/// The name of a resource in an `EncryptionConfiguration`: `secrets` for the core group,
/// `deployments.apps` for the others.
pub fn config_name(info: &ResourceInfo) -> String {
    match info.api_version.rsplit_once('/') {
        Some((group, _)) => format!("{}.{group}", info.plural),
        None => info.plural.to_owned(),
    }
}

// The file as written: unknown fields are refused, not ignored.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileConfig {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    resources: Vec<ResourceConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceConfig {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<ProviderConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderConfig {
    aesgcm: Option<KeysConfig>,
    identity: Option<Empty>,
    // Kubernetes' other providers: recognised to be refused by name.
    aescbc: Option<serde::de::IgnoredAny>,
    secretbox: Option<serde::de::IgnoredAny>,
    kms: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysConfig {
    #[serde(default)]
    keys: Vec<KeyConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    #[serde(default)]
    name: String,
    #[serde(default)]
    secret: String,
}

/// Checks the file and builds the providers, adding what is wrong to `errors`.
fn build(file: FileConfig, errors: &mut Vec<FieldError>) -> Encryption {
    if file.api_version != API_VERSION {
        errors.push(if file.api_version.is_empty() {
            FieldError::new(
                "apiVersion",
                format!("Required value: must be {API_VERSION}"),
            )
        } else {
            FieldError::new(
                "apiVersion",
                format!(
                    "Unsupported value: {:?}: supported values: \"{API_VERSION}\"",
                    file.api_version
                ),
            )
        });
    }
    if file.kind != KIND {
        errors.push(if file.kind.is_empty() {
            FieldError::new("kind", format!("Required value: must be {KIND}"))
        } else {
            FieldError::new(
                "kind",
                format!(
                    "Unsupported value: {:?}: supported values: \"{KIND}\"",
                    file.kind
                ),
            )
        });
    }
    if file.resources.is_empty() {
        errors.push(FieldError::new(
            "resources",
            "Required value: at least one resources is required",
        ));
    }
    let mut out = Encryption::default();
    // Which entry claimed each resource (by a name or a wildcard).
    let mut claimed: BTreeMap<&'static str, String> = BTreeMap::new();
    // Key names across the whole file: a value names only its key, so one name must mean one key.
    let mut key_names: BTreeMap<String, String> = BTreeMap::new();
    for (i, entry) in file.resources.into_iter().enumerate() {
        let at = format!("resources[{i}]");
        if entry.resources.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.resources"),
                format!("Required value: at least one {at}.resources is required"),
            ));
        }
        if entry.providers.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.providers"),
                format!("Required value: at least one {at}.providers is required"),
            ));
        }
        let mut list = Vec::new();
        for (j, p) in entry.providers.into_iter().enumerate() {
            if let Some(provider) =
                provider(p, &format!("{at}.providers[{j}]"), &mut key_names, errors)
            {
                list.push(provider);
            }
        }
        let providers = Arc::new(Providers { list });
        for (j, name) in entry.resources.iter().enumerate() {
            let path = format!("{at}.resources[{j}]");
            let matched = match resolve(name) {
                Ok(m) => m,
                Err(message) => {
                    errors.push(FieldError::new(&path, message));
                    continue;
                }
            };
            let wildcard = name.starts_with('*');
            for info in matched {
                if let Some(first) = claimed.get(info.plural) {
                    // A wildcard fills in what earlier entries left; a name already covered
                    // would silently get another entry's providers.
                    if !wildcard {
                        errors.push(FieldError::new(
                            &path,
                            format!(
                                "Duplicate value: {name:?}: {} is already covered by {first}; a resource takes the providers of the first entry that names it",
                                info.plural
                            ),
                        ));
                    }
                    continue;
                }
                claimed.insert(info.plural, format!("{path} ({name:?})"));
                out.resources.insert(info.plural, providers.clone());
            }
        }
    }
    out
}

/// One provider of a list, checked; `None` when it has errors (added to `errors`).
fn provider(
    p: ProviderConfig,
    at: &str,
    key_names: &mut BTreeMap<String, String>,
    errors: &mut Vec<FieldError>,
) -> Option<Provider> {
    let mut named: Vec<&str> = Vec::new();
    for (name, set) in [
        ("aesgcm", p.aesgcm.is_some()),
        ("identity", p.identity.is_some()),
        ("aescbc", p.aescbc.is_some()),
        ("secretbox", p.secretbox.is_some()),
        ("kms", p.kms.is_some()),
    ] {
        if set {
            named.push(name);
        }
    }
    match named.as_slice() {
        [] => {
            errors.push(FieldError::new(
                at,
                "Invalid value: provider does not contain any of the expected providers: AESGCM, Identity",
            ));
            return None;
        }
        [_] => {}
        _ => {
            errors.push(FieldError::new(
                at,
                format!(
                    "Invalid value: more than one provider specified in a single element ({}), should split into different list elements",
                    named.join(", ")
                ),
            ));
            return None;
        }
    }
    let refused = match named[0] {
        "aescbc" => Some(
            "aescbc is not offered: Kubernetes recommends against it (CBC is open to padding oracle attacks); use aesgcm",
        ),
        "secretbox" => Some("secretbox is not offered; use aesgcm"),
        "kms" => Some(
            "kms is not offered: Skiff has no KMS plugin client; use aesgcm with a key kept on the API server's host",
        ),
        _ => None,
    };
    if let Some(why) = refused {
        errors.push(FieldError::new(
            format!("{at}.{}", named[0]),
            format!("Unsupported value: {why}"),
        ));
        return None;
    }
    let Some(aes) = p.aesgcm else {
        return Some(Provider::Identity);
    };
    let at = format!("{at}.aesgcm.keys");
    if aes.keys.is_empty() {
        errors.push(FieldError::new(
            &at,
            "Required value: at least one keys is required",
        ));
        return None;
    }
    let mut keys = Vec::new();
    let before = errors.len();
    for (k, key) in aes.keys.into_iter().enumerate() {
        let at = format!("{at}[{k}]");
        if key.name.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.name"),
                "Required value: name is a mandatory field for a key",
            ));
        } else if key.name.contains(':') {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!(
                    "Invalid value: {:?}: must not contain ':' (stored values name their key before a ':')",
                    key.name
                ),
            ));
        } else if let Some(first) = key_names.get(&key.name) {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!(
                    "Duplicate value: {:?}: {first} has this name already; every key needs its own name, as stored values name the key that encrypted them",
                    key.name
                ),
            ));
        } else {
            key_names.insert(key.name.clone(), format!("{at}.name"));
        }
        if key.secret.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.secret"),
                "Required value: secret is a mandatory field for a key",
            ));
            continue;
        }
        let Ok(secret) = base64::engine::general_purpose::STANDARD.decode(key.secret.trim()) else {
            errors.push(FieldError::new(
                format!("{at}.secret"),
                "Invalid value: \"REDACTED\": secrets must be base64 encoded",
            ));
            continue;
        };
        let algorithm = match secret.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            24 => {
                errors.push(FieldError::new(
                    format!("{at}.secret"),
                    "Invalid value: \"REDACTED\": 24-byte (AES-192) keys are not offered; use a 32-byte key (head -c 32 /dev/urandom | base64)",
                ));
                continue;
            }
            n => {
                errors.push(FieldError::new(
                    format!("{at}.secret"),
                    format!(
                        "Invalid value: \"REDACTED\": secret is not of the expected length, got {n}, expected one of [16 32]"
                    ),
                ));
                continue;
            }
        };
        let Ok(unbound) = UnboundKey::new(algorithm, &secret) else {
            errors.push(FieldError::new(
                format!("{at}.secret"),
                "Invalid value: \"REDACTED\": not a usable AES key",
            ));
            continue;
        };
        keys.push(AesKey {
            name: key.name,
            key: LessSafeKey::new(unbound),
        });
    }
    (errors.len() == before).then_some(Provider::AesGcm(keys))
}

/// The resources one name of a `resources` list stands for: `secrets`, `deployments.apps`,
/// `*.apps` (every resource of a group), `*.` (the core group) or `*.*` (everything).
fn resolve(name: &str) -> Result<Vec<&'static ResourceInfo>, String> {
    let group_of = |info: &ResourceInfo| {
        info.api_version
            .rsplit_once('/')
            .map_or("", |(g, _)| g)
            .to_owned()
    };
    if name.is_empty() {
        return Err("Required value: resource name must not be empty".into());
    }
    if name != name.to_ascii_lowercase() {
        return Err(format!(
            "Invalid value: {name:?}: resource names are lowercase plurals (secrets, deployments.apps)"
        ));
    }
    let (resource, group) = name.split_once('.').unwrap_or((name, ""));
    if resource == "*" {
        let matched: Vec<_> = RESOURCES
            .iter()
            .copied()
            .filter(|i| group == "*" || group_of(i) == group)
            .collect();
        if matched.is_empty() {
            return Err(format!(
                "Unsupported value: {name:?}: Skiff serves no resource in API group {group:?}"
            ));
        }
        return Ok(matched);
    }
    let Some(info) = RESOURCES.iter().copied().find(|i| i.plural == resource) else {
        let known: Vec<String> = RESOURCES.iter().map(|i| config_name(i)).collect();
        return Err(format!(
            "Unsupported value: {name:?}: not a resource Skiff serves; supported values: {}",
            known.join(", ")
        ));
    };
    if group_of(info) != group {
        return Err(if group.is_empty() {
            format!(
                "Invalid value: {name:?}: {} are in API group {}: write {}",
                info.plural,
                group_of(info),
                config_name(info)
            )
        } else {
            format!(
                "Invalid value: {name:?}: {} are not in API group {group}: write {}",
                info.plural,
                config_name(info)
            )
        });
    }
    Ok(vec![info])
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY1: &str = "c2VjcmV0IGlzIHNlY3VyZSwgSSB0aGluayBzbywgZm8="; // 32 bytes
    const KEY2: &str = "dGhpcyBpcyBhbm90aGVyIGtleSBvZiAzMiBieXRlcyE="; // 32 bytes
    const KEY16: &str = "MTIzNDU2Nzg5MDEyMzQ1Ng=="; // 16 bytes

    fn parse(yaml: &str) -> Result<Encryption, ConfigError> {
        Encryption::parse(yaml, Path::new("/etc/skiff/enc.yaml"))
    }

    fn config(providers: &str) -> String {
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [pods]\n  providers:\n{providers}"
        )
    }

    fn aes(keys: &[(&str, &str)]) -> String {
        let mut s = String::from("  - aesgcm:\n      keys:\n");
        for (name, secret) in keys {
            s.push_str(&format!("      - name: {name}\n        secret: {secret}\n"));
        }
        s
    }

    const IDENTITY: &str = "  - identity: {}\n";
    const KEY: &[u8] = b"/registry/pods/default/web";

    fn error_text(yaml: &str) -> String {
        match parse(yaml) {
            Ok(e) => panic!("accepted: {e:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_aesgcm_value_has_kubernetes_layout_hides_the_plaintext_and_round_trips() {
        let enc = parse(&config(&aes(&[("key1", KEY1)]))).expect("valid");
        let plain = br#"{"kind":"Pod","secret":"hunter2"}"#.to_vec();
        let sealed = enc.seal("pods", KEY, plain.clone()).expect("sealed");
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        // prefix + 12-byte nonce + ciphertext + 16-byte tag.
        assert_eq!(
            sealed.len(),
            "k8s:enc:aesgcm:v1:key1:".len() + 12 + plain.len() + 16
        );
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        let again = enc.seal("pods", KEY, plain.clone()).expect("sealed");
        assert_ne!(sealed, again, "every write gets a fresh nonce");
        let read = enc.open("pods", KEY, &sealed).expect("opened");
        assert_eq!(
            read,
            Plain {
                value: plain,
                stale: false
            }
        );
    }

    #[test]
    fn a_16_byte_key_works_as_aes_128() {
        let enc = parse(&config(&aes(&[("short", KEY16)]))).expect("valid");
        let sealed = enc.seal("pods", KEY, b"{}".to_vec()).expect("sealed");
        assert_eq!(enc.open("pods", KEY, &sealed).expect("opened").value, b"{}");
    }

    #[test]
    fn a_value_copied_under_another_etcd_key_does_not_decrypt() {
        let enc = parse(&config(&aes(&[("key1", KEY1)]))).expect("valid");
        let sealed = enc.seal("pods", KEY, b"{}".to_vec()).expect("sealed");
        let err = enc
            .open("pods", b"/registry/pods/default/other", &sealed)
            .expect_err("bound to its key");
        assert_eq!(
            err,
            TransformError::Decrypt {
                name: "key1".into()
            }
        );
    }

    #[test]
    fn a_tampered_value_or_a_different_key_of_the_same_name_fails() {
        let enc = parse(&config(&aes(&[("key1", KEY1)]))).expect("valid");
        let mut sealed = enc
            .seal("pods", KEY, b"{\"a\":1}".to_vec())
            .expect("sealed");
        let other = parse(&config(&aes(&[("key1", KEY2)]))).expect("valid");
        assert!(matches!(
            other.open("pods", KEY, &sealed),
            Err(TransformError::Decrypt { .. })
        ));
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(matches!(
            enc.open("pods", KEY, &sealed),
            Err(TransformError::Decrypt { .. })
        ));
        // Shorter than a nonce.
        assert!(matches!(
            enc.open("pods", KEY, b"k8s:enc:aesgcm:v1:key1:abc"),
            Err(TransformError::Decrypt { .. })
        ));
    }

    #[test]
    fn the_key_named_in_the_value_decrypts_it_from_any_provider_and_only_the_first_is_current() {
        let old = parse(&config(&aes(&[("old", KEY1)]))).expect("valid");
        let sealed_old = old
            .seal("pods", KEY, b"{\"v\":1}".to_vec())
            .expect("sealed");
        // Rotation step 1: new key first, old key second, in one provider.
        let both = parse(&config(&aes(&[("new", KEY2), ("old", KEY1)]))).expect("valid");
        let read = both
            .open("pods", KEY, &sealed_old)
            .expect("old key still reads");
        assert_eq!(
            read,
            Plain {
                value: b"{\"v\":1}".to_vec(),
                stale: true
            }
        );
        let sealed_new = both.seal("pods", KEY, read.value).expect("sealed");
        assert!(sealed_new.starts_with(b"k8s:enc:aesgcm:v1:new:"));
        assert!(!both.open("pods", KEY, &sealed_new).expect("read").stale);
        // The old key in a second aesgcm provider is found by name as well.
        let split = parse(&config(&format!(
            "{}{}",
            aes(&[("new", KEY2)]),
            aes(&[("old", KEY1)])
        )))
        .expect("valid");
        assert!(split.open("pods", KEY, &sealed_old).expect("read").stale);
        // Once the old key is gone, its values are unreadable, with a clear reason.
        let only_new = parse(&config(&aes(&[("new", KEY2)]))).expect("valid");
        let err = only_new
            .open("pods", KEY, &sealed_old)
            .expect_err("old key gone");
        assert_eq!(
            err,
            TransformError::UnknownKey {
                resource: "pods".into(),
                name: "old".into()
            }
        );
        assert!(
            err.to_string().contains("no matching key was found"),
            "{err}"
        );
        assert!(!only_new.open("pods", KEY, &sealed_new).expect("read").stale);
    }

    #[test]
    fn plaintext_reads_only_when_identity_is_listed_and_is_stale_unless_identity_is_first() {
        let plain = br#"{"kind":"Pod"}"#;
        let no_identity = parse(&config(&aes(&[("key1", KEY1)]))).expect("valid");
        let err = no_identity.open("pods", KEY, plain).expect_err("refused");
        assert!(
            err.to_string().starts_with("no matching prefix found"),
            "{err}"
        );
        let aes_first =
            parse(&config(&format!("{}{IDENTITY}", aes(&[("key1", KEY1)])))).expect("valid");
        assert_eq!(
            aes_first.open("pods", KEY, plain).expect("read"),
            Plain {
                value: plain.to_vec(),
                stale: true
            }
        );
        // Decrypting a cluster: identity first writes plaintext and still reads the old values.
        let identity_first =
            parse(&config(&format!("{IDENTITY}{}", aes(&[("key1", KEY1)])))).expect("valid");
        let sealed = aes_first.seal("pods", KEY, plain.to_vec()).expect("sealed");
        assert_eq!(
            identity_first.open("pods", KEY, &sealed).expect("read"),
            Plain {
                value: plain.to_vec(),
                stale: true
            }
        );
        assert_eq!(
            identity_first
                .seal("pods", KEY, plain.to_vec())
                .expect("stored"),
            plain
        );
        assert!(!identity_first.open("pods", KEY, plain).expect("read").stale);
    }

    #[test]
    fn values_of_other_providers_and_of_unconfigured_resources_are_refused_clearly() {
        let enc = parse(&config(&format!("{}{IDENTITY}", aes(&[("key1", KEY1)])))).expect("valid");
        let err = enc
            .open("pods", KEY, b"k8s:enc:aescbc:v1:key1:xxxxxxxxxxxxxxxx")
            .expect_err("refused");
        assert_eq!(
            err,
            TransformError::UnsupportedProvider {
                provider: "aescbc".into()
            }
        );
        let sealed = enc.seal("pods", KEY, b"{}".to_vec()).expect("sealed");
        // Services are not configured: stored as is, and an encrypted value is not passed on as
        // if it were JSON.
        assert_eq!(
            enc.seal("services", KEY, b"{}".to_vec()).expect("plain"),
            b"{}"
        );
        assert_eq!(
            enc.open("services", KEY, b"{}").expect("plain").value,
            b"{}"
        );
        let err = enc.open("services", KEY, &sealed).expect_err("refused");
        assert!(
            err.to_string()
                .contains("no encryption providers are configured for services"),
            "{err}"
        );
        // No configuration at all: everything as is.
        let none = Encryption::default();
        assert!(none.is_empty());
        assert_eq!(
            none.seal("pods", KEY, b"{}".to_vec()).expect("plain"),
            b"{}"
        );
    }

    #[test]
    fn resources_are_named_as_kubernetes_names_them_and_wildcards_fill_the_rest() {
        let yaml = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [pods, deployments.apps]\n  providers:\n{}\n- resources: ['*.*']\n  providers:\n{IDENTITY}",
            aes(&[("key1", KEY1)])
        );
        let enc = parse(&yaml).expect("valid");
        for plural in ["pods", "deployments"] {
            let sealed = enc.seal(plural, KEY, b"{}".to_vec()).expect("sealed");
            assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:key1:"), "{plural}");
        }
        for info in RESOURCES {
            assert!(
                enc.providers(info.plural).is_some(),
                "{} covered by *.*",
                info.plural
            );
        }
        assert_eq!(
            enc.seal("nodes", KEY, b"{}".to_vec()).expect("plain"),
            b"{}"
        );
        let apps =
            parse(&config(&aes(&[("k", KEY1)])).replace("[pods]", "['*.apps']")).expect("valid");
        assert!(apps.providers("replicasets").is_some());
        assert!(apps.providers("pods").is_none());
    }

    #[test]
    fn bad_resource_names_are_refused_with_the_field_and_the_fix() {
        let with = |r: &str| error_text(&config(&aes(&[("k", KEY1)])).replace("[pods]", r));
        let e = with("[deployments]");
        assert!(e.contains("resources[0].resources[0]: Invalid value: \"deployments\": deployments are in API group apps: write deployments.apps"), "{e}");
        let e = with("[widgets]");
        assert!(e.contains("resources[0].resources[0]: Unsupported value: \"widgets\": not a resource Skiff serves"), "{e}");
        assert!(e.contains("/etc/skiff/enc.yaml"), "{e}");
        let e = with("[pods, pods]");
        assert!(
            e.contains("resources[0].resources[1]: Duplicate value: \"pods\""),
            "{e}"
        );
        let e = with("['*.nope']");
        assert!(e.contains("no resource in API group \"nope\""), "{e}");
        let e = with("[Pods]");
        assert!(e.contains("lowercase"), "{e}");
        let e = with("[]");
        assert!(e.contains("resources[0].resources: Required value"), "{e}");
    }

    #[test]
    fn bad_providers_and_keys_are_refused_with_the_field() {
        let e = error_text(&config("  - aescbc:\n      keys: [{name: k, secret: x}]\n"));
        assert!(
            e.contains(
                "resources[0].providers[0].aescbc: Unsupported value: aescbc is not offered"
            ),
            "{e}"
        );
        let e = error_text(&config("  - kms:\n      name: vault\n"));
        assert!(
            e.contains("providers[0].kms: Unsupported value: kms is not offered"),
            "{e}"
        );
        let e = error_text(&config("  - secretbox:\n      keys: []\n"));
        assert!(
            e.contains("providers[0].secretbox: Unsupported value"),
            "{e}"
        );
        let e = error_text(&config(&format!(
            "  - identity: {{}}\n    aesgcm:\n      keys: [{{name: k, secret: {KEY1}}}]\n"
        )));
        assert!(
            e.contains("more than one provider specified in a single element"),
            "{e}"
        );
        let e = error_text(&config("  - {}\n"));
        assert!(
            e.contains("provider does not contain any of the expected providers"),
            "{e}"
        );
        let e = error_text(&config(&aes(&[("k", "bm90IDE2IGJ5dGVz")])));
        assert!(e.contains("resources[0].providers[0].aesgcm.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 12"), "{e}");
        let e = error_text(&config(&aes(&[("k", "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0")])));
        assert!(e.contains("24-byte (AES-192) keys are not offered"), "{e}");
        let e = error_text(&config(&aes(&[("k", "not_base64$$$")])));
        assert!(e.contains("secrets must be base64 encoded"), "{e}");
        assert!(!e.contains("not_base64"), "the secret is never echoed: {e}");
        let e = error_text(&config(&aes(&[("a:b", KEY1)])));
        assert!(
            e.contains("keys[0].name: Invalid value: \"a:b\": must not contain ':'"),
            "{e}"
        );
        let e = error_text(&config(&aes(&[("k", KEY1), ("k", KEY2)])));
        assert!(e.contains("keys[1].name: Duplicate value: \"k\""), "{e}");
        let e = error_text(&config(&aes(&[("", KEY1)])));
        assert!(
            e.contains("keys[0].name: Required value: name is a mandatory field for a key"),
            "{e}"
        );
        let e = error_text(&config("  - aesgcm:\n      keys: []\n"));
        assert!(
            e.contains("aesgcm.keys: Required value: at least one keys is required"),
            "{e}"
        );
        let e = error_text(&config(
            "  - aesgcm:\n      keys: [{name: k, secret: x, extra: 1}]\n",
        ));
        assert!(
            e.contains("resources[0].providers[0].aesgcm.keys[0]")
                && e.contains("unknown field `extra`"),
            "{e}"
        );
    }

    #[test]
    fn the_file_itself_must_be_an_encryption_configuration() {
        let e = error_text(&config(IDENTITY).replace("apiserver.config.k8s.io/v1", "v1"));
        assert!(e.contains("apiVersion: Unsupported value: \"v1\""), "{e}");
        let e = error_text(&config(IDENTITY).replace("kind: EncryptionConfiguration\n", ""));
        assert!(e.contains("kind: Required value"), "{e}");
        let e =
            error_text("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n");
        assert!(
            e.contains("resources: Required value: at least one resources is required"),
            "{e}"
        );
        assert!(matches!(parse("  \n"), Err(ConfigError::Empty { .. })));
        let e = error_text("resources: [");
        assert!(
            e.starts_with(
                "error decoding encryption provider configuration file /etc/skiff/enc.yaml"
            ),
            "{e}"
        );
        let missing =
            Encryption::from_file(Path::new("/nonexistent/enc.yaml")).expect_err("no file");
        assert!(
            missing.to_string().contains("/nonexistent/enc.yaml"),
            "{missing}"
        );
    }

    #[test]
    fn debug_output_names_keys_but_never_shows_them() {
        let enc = parse(&config(&aes(&[("key1", KEY1)]))).expect("valid");
        let shown = format!("{enc:?}");
        assert!(shown.contains("aesgcm[key1]"), "{shown}");
        assert!(!shown.contains(KEY1), "{shown}");
    }

    #[test]
    fn config_names_carry_the_group_of_non_core_resources() {
        for info in RESOURCES {
            let name = config_name(info);
            assert_eq!(
                resolve(&name).map(|v| v[0].plural),
                Ok(info.plural),
                "{name}"
            );
        }
    }
}
