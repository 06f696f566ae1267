//! Manifests as users write them: YAML (several documents, `---` separated) or JSON, each document
//! an object, or a `v1` `List` of objects.

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, SeqAccess, Visitor},
};
use serde_json::{Map, Number, Value};

use crate::object::{DecodeError, Object};

/// Why a manifest was refused; nothing from it is applied.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The input is not UTF-8 text.
    #[error("the manifest is not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    /// One document is not an acceptable object.
    #[error("document {index}{name}: {source}")]
    Document {
        /// 1-based position in the file.
        index: usize,
        /// ` (Kind name)` when the document got that far.
        name: String,
        #[source]
        source: DecodeError,
    },
}

/// Parses every object in a manifest, in order. Empty documents are skipped (but counted, so
/// errors name a document by its position in the file).
pub fn parse(bytes: &[u8]) -> Result<Vec<Object>, ManifestError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ManifestError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let trimmed = text.trim_start();
    let mut documents: Vec<(usize, Value)> = Vec::new();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        for v in serde_json::Deserializer::from_str(text).into_iter::<Strict>() {
            let Strict(v) = v.map_err(|e| {
                document_error(documents.len() + 1, &Value::Null, syntax("JSON", e))
            })?;
            // Items of a JSON array count as documents of their own.
            match v {
                Value::Array(items) => {
                    for item in items {
                        documents.push((documents.len() + 1, item));
                    }
                }
                other => documents.push((documents.len() + 1, other)),
            }
        }
    } else {
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let Strict(v) = Strict::deserialize(doc)
                .map_err(|e| document_error(i + 1, &Value::Null, syntax("YAML", e)))?;
            if !v.is_null() {
                documents.push((i + 1, v));
            }
        }
    }
    let mut objects = Vec::new();
    for (index, v) in documents {
        if v.get("kind").and_then(Value::as_str) == Some("List") {
            match v.get("items") {
                Some(Value::Array(items)) => {
                    for item in items {
                        objects.push(decode(index, item.clone())?);
                    }
                }
                None | Some(Value::Null) => {}
                Some(other) => {
                    return Err(document_error(
                        index,
                        &v,
                        DecodeError::Field {
                            path: "items".into(),
                            message: format!(
                                "invalid type: {}, expected a list of objects",
                                crate::object::value_type(other)
                            ),
                        },
                    ));
                }
            }
        } else {
            objects.push(decode(index, v)?);
        }
    }
    Ok(objects)
}

/// A JSON value read from JSON or YAML that refuses duplicate keys in a mapping (serde_json's
/// own `Value` keeps the last, so `kind: Namespace` then `kind: Pod` would silently be a Pod).
#[derive(Debug)]
pub struct Strict(pub Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-compatible value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a number JSON can carry")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict::deserialize(d).map(|s| s.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key {key:?} in a mapping"
                )));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

fn decode(index: usize, value: Value) -> Result<Object, ManifestError> {
    let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(0);
    if size > crate::object::MAX_OBJECT_BYTES {
        return Err(document_error(
            index,
            &value,
            DecodeError::TooLarge {
                size,
                limit: crate::object::MAX_OBJECT_BYTES,
            },
        ));
    }
    let described = value.clone();
    Object::from_value(value).map_err(|e| document_error(index, &described, e))
}

fn syntax(format: &'static str, e: impl std::fmt::Display) -> DecodeError {
    DecodeError::Syntax {
        format,
        message: e.to_string(),
    }
}

fn document_error(index: usize, value: &Value, source: DecodeError) -> ManifestError {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty());
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let name = match (kind, name) {
        (Some(k), Some(n)) => format!(" ({k} {n})"),
        (Some(k), None) => format!(" ({k})"),
        _ => String::new(),
    };
    ManifestError::Document {
        index,
        name,
        source,
    }
}
