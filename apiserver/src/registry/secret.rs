//! Secrets: `stringData` is write-only, merged into `data` on create and update (winning for a
//! key in both) before validation, and never stored.

use skiff_api::{DecodeError, Kind, Object, ResourceInfo, kinds::Secret};

use super::Strategy;

#[derive(Debug)]
pub(super) struct SecretStrategy;

impl Strategy for SecretStrategy {
    fn info(&self) -> &'static ResourceInfo {
        Secret::INFO
    }

    fn prepare_for_create(&self, o: &mut Object) {
        if let Object::Secret(s) = o {
            s.merge_string_data();
        }
    }

    /// The writer's object replaces the stored one (its `data` is the whole new data, as in
    /// Kubernetes), with its `stringData` merged in.
    fn prepare_for_update(&self, given: &Object, _old: &Object) -> Result<Object, DecodeError> {
        let mut new = given.clone();
        if let Object::Secret(s) = &mut new {
            s.merge_string_data();
        }
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use skiff_api::kinds::Bytes;

    use super::*;

    fn secret(data: &[(&str, &str)], string_data: &[(&str, &str)]) -> Object {
        Secret {
            data: data
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Bytes::from(*v)))
                .collect(),
            string_data: string_data
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Secret::default()
        }
        .into_object()
    }

    fn data(o: &Object) -> Vec<(String, Vec<u8>)> {
        match o {
            Object::Secret(s) => {
                assert!(s.string_data.is_empty(), "stringData is never kept");
                s.data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect()
            }
            _ => panic!("not a secret"),
        }
    }

    #[test]
    fn string_data_is_merged_on_create_winning_over_data_and_is_not_kept() {
        let mut o = secret(&[("user", "old"), ("keep", "k")], &[("user", "new")]);
        SecretStrategy.prepare_for_create(&mut o);
        assert_eq!(
            data(&o),
            [
                ("keep".into(), b"k".to_vec()),
                ("user".into(), b"new".to_vec())
            ]
        );
        let json = String::from_utf8(o.to_json()).unwrap_or_default();
        assert!(!json.contains("stringData"), "{json}");
    }

    #[test]
    fn an_update_takes_the_writers_data_with_its_string_data_merged() -> Result<(), DecodeError> {
        let old = secret(&[("a", "1"), ("b", "2")], &[]);
        let given = secret(&[("a", "1")], &[("c", "3")]);
        let new = SecretStrategy.prepare_for_update(&given, &old)?;
        assert_eq!(
            data(&new),
            [("a".into(), b"1".to_vec()), ("c".into(), b"3".to_vec())],
            "a key the writer left out is gone, as in Kubernetes"
        );
        Ok(())
    }
}
