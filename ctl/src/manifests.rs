//! Manifests named by `-f`: files, directories and standard input, all read and parsed before
//! anything is sent, and put in the order they are applied or deleted in.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use skiff_api::{Kind, Object, kinds::Namespace};

use crate::error::{Error, Result};

/// How standard input is named in messages.
pub const STDIN_NAME: &str = "STDIN";

/// One object and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced {
    /// The file (or `STDIN`).
    pub source: String,
    pub object: Object,
}

/// One input named by `-f`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

/// Whether a directory entry is a manifest: `*.yaml`, `*.yml` or `*.json`.
fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["yaml", "yml", "json"].contains(&e.to_ascii_lowercase().as_str()))
}

/// The inputs one `-f` argument names: `-` is standard input, a directory is its manifests
/// (sorted by name, not recursive), anything else is a file.
pub fn expand(arg: &str) -> Result<Vec<Input>> {
    if arg == "-" {
        return Ok(vec![Input::Stdin]);
    }
    let path = PathBuf::from(arg);
    let read_err = |source| Error::ReadPath {
        path: path.clone(),
        source,
    };
    let meta = std::fs::metadata(&path).map_err(read_err)?;
    if !meta.is_dir() {
        return Ok(vec![Input::File(path)]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&path).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let p = entry.path();
        // Follows symlinks, so a linked manifest counts and a linked directory does not.
        if is_manifest(&p) && std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files.into_iter().map(Input::File).collect())
}

/// Reads and parses every input named by `args`, in order. Every problem is returned (not only
/// the first), so one run reports them all; on any problem nothing should be applied.
pub fn read_all(args: &[String], stdin: &mut dyn Read) -> Result<Vec<Sourced>, Vec<Error>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let mut stdin_read = false;
    for arg in args {
        let inputs = match expand(arg) {
            Ok(i) => i,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for input in inputs {
            let (name, bytes) = match &input {
                Input::Stdin => {
                    // Standard input can be read once; a second `-` adds nothing.
                    if stdin_read {
                        continue;
                    }
                    stdin_read = true;
                    let mut buf = Vec::new();
                    match stdin.read_to_end(&mut buf) {
                        Ok(_) => (STDIN_NAME.to_owned(), buf),
                        Err(e) => {
                            errors.push(Error::ReadStdin(e));
                            continue;
                        }
                    }
                }
                Input::File(p) => match std::fs::read(p) {
                    Ok(b) => (p.display().to_string(), b),
                    Err(source) => {
                        errors.push(Error::ReadPath {
                            path: p.clone(),
                            source,
                        });
                        continue;
                    }
                },
            };
            match skiff_api::manifest::parse(&bytes) {
                Ok(parsed) => objects.extend(parsed.into_iter().map(|object| Sourced {
                    source: name.clone(),
                    object,
                })),
                Err(source) => errors.push(Error::Manifest {
                    source_name: name,
                    source,
                }),
            }
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

fn is_namespace(s: &Sourced) -> bool {
    s.object.info() == Namespace::INFO
}

/// Namespaces first (everything else may live in them), then the rest in file order.
pub fn apply_order(mut objects: Vec<Sourced>) -> Vec<Sourced> {
    objects.sort_by_key(|s| !is_namespace(s));
    objects
}

/// Namespaces last: deleting one deletes everything in it, which would turn the deletes of the
/// objects named after it into "not found" errors.
pub fn delete_order(mut objects: Vec<Sourced>) -> Vec<Sourced> {
    objects.sort_by_key(is_namespace);
    objects
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers: [{name: c, image: nginx}]\n";
    const SVC_AND_NS: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n";

    fn names(objects: &[Sourced]) -> Vec<String> {
        objects
            .iter()
            .map(|s| crate::resource::name_of(&s.object))
            .collect()
    }

    #[test]
    fn a_directory_is_its_manifests_sorted_by_name_without_recursion() {
        let dir = TempDir::new("manifest_dir");
        let d = dir.path();
        std::fs::write(d.join("b-svc.yaml"), SVC_AND_NS).expect("write");
        std::fs::write(d.join("a-deploy.yml"), DEPLOY).expect("write");
        std::fs::write(
            d.join("c-ns.json"),
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"other"}}"#,
        )
        .expect("write");
        std::fs::write(d.join("README.md"), "not a manifest").expect("write");
        std::fs::create_dir(d.join("sub.yaml")).expect("mkdir");
        std::fs::write(d.join("sub.yaml").join("x.yaml"), "kind: Nonsense").expect("write");

        let arg = d.to_str().expect("utf-8").to_owned();
        let objects = read_all(&[arg], &mut std::io::empty()).expect("reads");
        assert_eq!(
            names(&objects),
            [
                "deployment.apps/web",
                "service/web",
                "namespace/team",
                "namespace/other"
            ]
        );
        assert!(objects[0].source.ends_with("a-deploy.yml"));

        let ordered = apply_order(objects.clone());
        assert_eq!(
            names(&ordered),
            [
                "namespace/team",
                "namespace/other",
                "deployment.apps/web",
                "service/web"
            ]
        );
        let ordered = delete_order(objects);
        assert_eq!(
            names(&ordered),
            [
                "deployment.apps/web",
                "service/web",
                "namespace/team",
                "namespace/other"
            ]
        );
    }

    #[test]
    fn stdin_is_read_for_a_dash() {
        let mut stdin = DEPLOY.as_bytes();
        let objects = read_all(&["-".to_owned()], &mut stdin).expect("reads");
        assert_eq!(names(&objects), ["deployment.apps/web"]);
        assert_eq!(objects[0].source, STDIN_NAME);
    }

    #[test]
    fn every_bad_input_is_reported_and_nothing_is_returned() {
        let dir = TempDir::new("manifest_errors");
        let good = dir.path().join("good.yaml");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&good, DEPLOY).expect("write");
        std::fs::write(
            &bad,
            "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {bogus: 1}\n",
        )
        .expect("write");
        let missing = dir.path().join("missing.yaml");
        let args: Vec<String> = [&good, &bad, &missing]
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let errors = read_all(&args, &mut std::io::empty()).expect_err("errors");
        assert_eq!(errors.len(), 2, "{errors:?}");
        let first = crate::error::message(&errors[0]);
        assert!(first.contains("bad.yaml"), "{first}");
        assert!(first.contains("document 2"), "{first}");
        assert!(matches!(errors[1], Error::ReadPath { .. }));
    }
}
