//! `scale`: set a Deployment's or ReplicaSet's replicas with a compare-and-swap update.

use skiff_api::{Object, ResourceInfo, client::Client};

use super::{Scope, WRITE_ATTEMPTS, finish, report};
use crate::{
    Context, Io,
    cli::ScaleArgs,
    error::{Error, Result},
    resource::{Targets, object_ref},
};

pub async fn run(ctx: Context<'_>, args: &ScaleArgs, io: &mut Io<'_>) -> Result<()> {
    let Targets::Named(named) = Targets::parse(&args.resources)? else {
        return Err(Error::NoName);
    };
    for (info, _) in &named {
        if !scalable(info) {
            return Err(Error::NotScalable {
                resource: info.plural,
            });
        }
    }
    let (settings, client) = ctx.connect().await?;
    let scope = Scope::new(&settings);
    let mut failed = 0;
    for (info, name) in named {
        match scale(
            &client,
            info,
            scope.for_resource(info),
            &name,
            args.replicas,
        )
        .await
        {
            Ok(_) => writeln!(io.out, "{} scaled", object_ref(info, &name))?,
            Err(e) => report(io, &mut failed, e)?,
        }
    }
    finish(failed)
}

fn scalable(info: &ResourceInfo) -> bool {
    matches!(info.plural, "deployments" | "replicasets")
}

/// Reads the object, sets `spec.replicas`, and writes it back conditionally on what was read,
/// reading again when another writer got in between. Returns the object as stored.
pub async fn scale(
    client: &Client,
    info: &'static ResourceInfo,
    namespace: &str,
    name: &str,
    replicas: i32,
) -> Result<Object> {
    for _ in 0..WRITE_ATTEMPTS {
        let mut object = client.get_object(info, namespace, name).await?;
        set_replicas(&mut object, replicas)?;
        match client.update_object(&object).await {
            Ok(stored) => return Ok(stored),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::TooManyConflicts {
        what: object_ref(info, name),
        attempts: WRITE_ATTEMPTS,
    })
}

/// Sets `spec.replicas` of a Deployment or ReplicaSet.
pub fn set_replicas(object: &mut Object, replicas: i32) -> Result<()> {
    match object {
        Object::Deployment(d) => d.spec.replicas = Some(replicas),
        Object::ReplicaSet(rs) => rs.spec.replicas = Some(replicas),
        other => {
            return Err(Error::NotScalable {
                resource: other.info().plural,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use skiff_api::{
        Kind,
        kinds::{Deployment, Pod},
    };

    use super::*;

    #[test]
    fn only_deployments_and_replica_sets_scale() {
        let mut d = Deployment::default().into_object();
        set_replicas(&mut d, 4).expect("scales");
        let Object::Deployment(d) = d else {
            panic!("kind changed")
        };
        assert_eq!(d.spec.replicas, Some(4));
        let err =
            set_replicas(&mut Pod::default().into_object(), 1).expect_err("pods do not scale");
        assert!(err.to_string().contains("cannot scale pods"), "{err}");
        assert!(!scalable(Pod::INFO));
    }
}
