//! `apply -f`: create each object, or update it in place when it exists.

use std::fmt;

use skiff_api::{Object, client::Client};

use super::{Scope, WRITE_ATTEMPTS, finish, report};
use crate::{
    Context, Io,
    cli::ApplyArgs,
    error::{Error, Result},
    manifests::{self, Sourced},
    resource::name_of,
};

/// What applying one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// Updated, and the server stored a change.
    Configured,
    /// Updated, and the server found nothing to change.
    Unchanged,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        })
    }
}

pub async fn run(ctx: Context<'_>, args: &ApplyArgs, io: &mut Io<'_>) -> Result<()> {
    let objects = read_manifests(&args.files, io, "apply")?;
    let (settings, client) = ctx.connect().await?;
    let scope = Scope::new(&settings);
    let mut failed = 0;
    for Sourced { source, object } in manifests::apply_order(objects) {
        let what = name_of(&object);
        match apply_object(&client, &scope, object).await {
            Ok((stored, outcome)) => writeln!(io.out, "{} {outcome}", name_of(&stored))?,
            Err(e) => report(
                io,
                &mut failed,
                e.about(format!("applying {what} from {source}")),
            )?,
        }
    }
    finish(failed)
}

/// Reads every `-f` input; on any problem reports them all and fails, so nothing is sent.
pub(crate) fn read_manifests(
    files: &[String],
    io: &mut Io<'_>,
    command: &'static str,
) -> Result<Vec<Sourced>> {
    match manifests::read_all(files, io.stdin) {
        Ok(objects) if objects.is_empty() => Err(Error::NoObjects { command }),
        Ok(objects) => Ok(objects),
        Err(errors) => {
            for e in &errors {
                io.report(e)?;
            }
            Err(Error::Reported {
                count: errors.len(),
            })
        }
    }
}

/// Creates `object` or, when it exists, updates it to match (a few fresh reads when other
/// writers get in between). Returns the object as stored.
pub async fn apply_object(
    client: &Client,
    scope: &Scope,
    mut object: Object,
) -> Result<(Object, Outcome)> {
    scope.place(&mut object)?;
    if object.meta().name.is_empty() {
        return Err(Error::ApplyWithoutName {
            kind: object.info().kind,
        });
    }
    // A manifest may come from `get -o yaml`: its resourceVersion would make the update
    // conditional on a stale read.
    object.meta_mut().resource_version.clear();
    let (info, ns, name) = (
        object.info(),
        object.meta().namespace.clone(),
        object.meta().name.clone(),
    );
    for _ in 0..WRITE_ATTEMPTS {
        match client.create_object(&object).await {
            Ok(created) => return Ok((created, Outcome::Created)),
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
        let current = match client.get_object(info, &ns, &name).await {
            Ok(c) => c,
            // Deleted since the create failed: create again.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let desired = desired_update(&object, &current);
        match client.update_object(&desired).await {
            Ok(stored) => {
                let outcome = if stored.meta().resource_version == current.meta().resource_version {
                    Outcome::Unchanged
                } else {
                    Outcome::Configured
                };
                return Ok((stored, outcome));
            }
            Err(e) if e.is_conflict() || e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::TooManyConflicts {
        what: name_of(&object),
        attempts: WRITE_ATTEMPTS,
    })
}

/// The update that makes `current` match the manifest's `desired`, conditional on `current`'s
/// resourceVersion. What others own and the manifest leaves out is kept, as `kubectl apply`
/// keeps fields it never set: owner references, annotations written by controllers, the node a
/// pod was bound to. (The server keeps status, a Service's allocated address and node ports,
/// and fills defaults before it compares.)
pub fn desired_update(desired: &Object, current: &Object) -> Object {
    let mut update = desired.clone();
    let cur = current.meta();
    let meta = update.meta_mut();
    meta.resource_version = cur.resource_version.clone();
    if meta.owner_references.is_empty() {
        meta.owner_references = cur.owner_references.clone();
    }
    for (k, v) in &cur.annotations {
        meta.annotations
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
    if let (Object::Pod(new), Object::Pod(old)) = (&mut update, current)
        && new.spec.node_name.is_empty()
    {
        new.spec.node_name = old.spec.node_name.clone();
    }
    update
}

#[cfg(test)]
mod tests {
    use skiff_api::{
        Kind, ObjectMeta,
        kinds::{Pod, PodSpec},
        meta::OwnerReference,
    };

    use super::*;

    fn pod(annotations: &[(&str, &str)], node: &str) -> Object {
        Pod {
            metadata: ObjectMeta {
                name: "p".into(),
                namespace: "default".into(),
                annotations: annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..ObjectMeta::default()
            },
            spec: PodSpec {
                node_name: node.into(),
                ..PodSpec::default()
            },
            ..Pod::default()
        }
        .into_object()
    }

    #[test]
    fn an_update_keeps_what_others_own_and_the_manifest_leaves_out() {
        let desired = pod(&[("mine", "2")], "");
        let mut current = pod(&[("mine", "1"), ("controller/revision", "3")], "node-1");
        current.meta_mut().resource_version = "42".into();
        current.meta_mut().owner_references = vec![OwnerReference {
            kind: "ReplicaSet".into(),
            name: "rs".into(),
            ..OwnerReference::default()
        }];
        let update = desired_update(&desired, &current);
        let m = update.meta();
        assert_eq!(m.resource_version, "42");
        assert_eq!(m.annotations["mine"], "2");
        assert_eq!(m.annotations["controller/revision"], "3");
        assert_eq!(m.owner_references.len(), 1);
        let Object::Pod(p) = &update else {
            panic!("not a pod")
        };
        assert_eq!(p.spec.node_name, "node-1");
    }

    #[test]
    fn outcomes_print_as_kubectl_words() {
        assert_eq!(
            [Outcome::Created, Outcome::Configured, Outcome::Unchanged].map(|o| o.to_string()),
            ["created", "configured", "unchanged"]
        );
    }

    #[test]
    fn the_manifests_are_read_before_anything_is_sent() {
        // No server is configured: a parse error must be reported before one is needed.
        let mut stdin: &[u8] = b"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nope: 1}\n";
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut io = Io {
            stdin: &mut stdin,
            out: &mut out,
            err: &mut err,
        };
        let e = read_manifests(&["-".to_owned()], &mut io, "apply").expect_err("bad manifest");
        assert!(e.already_reported());
        let err = String::from_utf8(err).expect("utf-8");
        assert!(
            err.starts_with("error: STDIN: document 1 (Pod p): "),
            "{err}"
        );
    }
}
